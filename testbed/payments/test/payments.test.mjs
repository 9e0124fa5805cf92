// Self-test: node --test testbed/payments/test/
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { recoverTypedDataAddress } from "viem";
import { startTestbed, remoteSigner, payingClient, payExperiment, chainReader } from "../lib/testclient.mjs";
import { valBpb, parseJsonKeepNumbers } from "../lib/landscape.mjs";

const CONFIG = {
  workers: [
    { name: "v2", gate: "v2", price: "10000", durationMs: 100 },
    { name: "v1", gate: "v1", price: "20000", durationMs: 100 },
    { name: "obol", gate: "obol", price: "30000", durationMs: 100 },
    { name: "obol-fail-before", gate: "obol", price: "10000", durationMs: 50, faults: { failBeforePayment: 1 } },
    { name: "v2-lost", gate: "v2", price: "10000", durationMs: 50, faults: { failAfterPayment: 1 } },
    { name: "obol-lost-500", gate: "obol", price: "10000", durationMs: 50, faults: { failAfterPayment: 1, lostAnswer: "500" } },
    { name: "obol-async", gate: "obol", price: "10000", durationMs: 300, faults: { async: true } },
    { name: "v1-busy", gate: "v1", price: "10000", faults: { busy: true } },
    { name: "v2-nan", gate: "v2", price: "10000", durationMs: 10, faults: { lie: "nan" } },
    { name: "v1-crash", gate: "v1", price: "10000", timeoutSeconds: 2 },
  ],
  signer: { token: "t0k", mode: "normal" },
  extraSigners: [
    { name: "v01", token: "t0k", mode: "vZeroOne" },
    { name: "wrong", token: "t0k", mode: "wrongKey" },
    { name: "unauth", token: "t0k", mode: "unauthorized" },
  ],
};

let tb;
let m;
let chain;
let client;
const worker = (name) => m.workers.find((w) => w.name === name);
// The worker runs what it is sent: this script scores its config on testbed/LANDSCAPE.md.
const TRAIN_PY = readFileSync(new URL("../../../examples/train_landscape.py", import.meta.url), "utf8");
const body = (id, config = { lr: 0.004, depth: 8 }) => ({ train_py: TRAIN_PY, config, experiment_id: id });

before(async () => {
  tb = await startTestbed(CONFIG);
  m = tb.manifest;
  chain = chainReader(m);
  client = payingClient(remoteSigner(m.signer));
});

after(async () => {
  if (!tb) return;
  const { anvil } = m.pids;
  const exit = await tb.stop();
  assert.equal(exit.code, 0, tb.stderr());
  assert.deepEqual(tb.extraStdout(), [], "stdout carries only the manifest line");
  await new Promise((r) => setTimeout(r, 300));
  assert.throws(() => process.kill(anvil, 0), "anvil must be gone after the testbed stops");
});

test("manifest shape", () => {
  assert.equal(m.chainId, 84532);
  assert.equal(m.usdc, "0x036CbD53842c5426634e7929541eC2318f3dCF7e");
  assert.equal(m.payer, "0x70997970C51812dc3A010C7d01b50e0d17dc79C8");
  assert.match(m.rpcUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(m.signer.address, m.payer);
  assert.equal(new Set(m.workers.map((w) => w.payTo)).size, m.workers.length);
  for (const w of m.workers) assert.match(w.endpoint, /^http:\/\/127\.0\.0\.1:\d+\/services\/autoresearch-worker$/);
});

for (const name of ["v2", "v1", "obol"]) {
  test(`pays one experiment through the ${name} gate, settled on chain exactly once`, async () => {
    const w = worker(name);
    const payerBefore = await chain.balance(m.payer);
    const payeeBefore = await chain.balance(w.payTo);
    const config = { lr: 0.004, depth: 8, batch_size: 64, tag: name };
    const r = await payExperiment(client, w, body(`exp-${name}-1`, config));
    assert.equal(r.probe.status, 402);
    assert.equal(r.response.status, 200, r.text);
    const result = JSON.parse(r.text);
    assert.equal(result.experiment_id, `exp-${name}-1`);
    assert.equal(result.status, "completed");
    assert.equal(result.return_code, 0);
    assert.equal(result.val_bpb, valBpb(parseJsonKeepNumbers(JSON.stringify(config))));
    assert.equal(result.train_hash, `sha256:${createHash("sha256").update(TRAIN_PY).digest("hex")}`);
    assert.deepEqual(result.config, config);
    assert.ok(r.settlement?.success, "settlement header");
    assert.match(r.settlement.transaction, /^0x[0-9a-f]{64}$/);
    const receipt = await chain.pub.getTransactionReceipt({ hash: r.settlement.transaction });
    assert.equal(receipt.status, "success");
    assert.equal(await chain.balance(w.payTo), payeeBefore + BigInt(w.price));
    assert.equal(await chain.balance(m.payer), payerBefore - BigInt(w.price));
    // The same voucher again: nothing moves a second time.
    const again = await fetch(`${w.endpoint}/experiment`, {
      method: "POST",
      headers: { "content-type": "application/json", ...r.headers },
      body: JSON.stringify(body(`exp-${name}-1`, config)),
    });
    assert.notEqual(again.status, 200);
    assert.equal(await chain.balance(w.payTo), payeeBefore + BigInt(w.price));
    // Free reads.
    const stored = await (await fetch(`${w.endpoint}/experiments/exp-${name}-1`)).json();
    assert.equal(stored.val_bpb, result.val_bpb);
    assert.equal((await fetch(`${w.endpoint}/experiments/nope`)).status, 404);
    const health = await (await fetch(`${w.endpoint}/health`)).json();
    assert.equal(health.status, "ok");
    assert.equal(health.busy, false);
    assert.equal((await fetch(`${w.endpoint}/best`)).status, 200);
  });
}

test("obol gate: bad X-PAYMENT is 400 Invalid payment header; v2 header name is ignored", async () => {
  const w = worker("obol");
  const r = await fetch(`${w.endpoint}/experiment`, {
    method: "POST",
    headers: { "content-type": "application/json", "X-PAYMENT": "{not base64}" },
    body: JSON.stringify(body("exp-bad")),
  });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error, "Invalid payment header");
});

test("failBeforePayment: upstream 500, nothing settles", async () => {
  const w = worker("obol-fail-before");
  const before = await chain.balance(w.payTo);
  const r = await payExperiment(client, w, body("exp-fb"));
  assert.equal(r.response.status, 500);
  assert.equal(await chain.balance(w.payTo), before);
});

test("failAfterPayment (drop): paid, connection lost, result recoverable", async () => {
  const w = worker("v2-lost");
  const before = await chain.balance(w.payTo);
  await assert.rejects(payExperiment(client, w, body("exp-lost")));
  assert.equal(await chain.balance(w.payTo), before + BigInt(w.price));
  const r = await fetch(`${w.endpoint}/experiments/exp-lost`);
  assert.equal(r.status, 200);
  assert.equal((await r.json()).status, "completed");
});

test("failAfterPayment (500): paid, answer replaced by 500, result recoverable", async () => {
  const w = worker("obol-lost-500");
  const before = await chain.balance(w.payTo);
  const r = await payExperiment(client, w, body("exp-lost5"));
  assert.equal(r.response.status, 500);
  assert.equal(await chain.balance(w.payTo), before + BigInt(w.price));
  assert.equal((await fetch(`${w.endpoint}/experiments/exp-lost5`)).status, 200);
});

test("async: 202 job, settled at acceptance, result needs the job token", async () => {
  const w = worker("obol-async");
  const before = await chain.balance(w.payTo);
  const r = await payExperiment(client, w, body("exp-async"));
  assert.equal(r.response.status, 202, r.text);
  const job = JSON.parse(r.text);
  for (const k of ["jobId", "statusUrl", "resultUrl", "jobToken", "expiresAt", "message"]) assert.ok(job[k], k);
  assert.equal(await chain.balance(w.payTo), before + BigInt(w.price));
  assert.equal((await fetch(job.resultUrl)).status, 401);
  let status;
  for (let i = 0; i < 50; i++) {
    status = await (await fetch(job.statusUrl)).json();
    if (status.status !== "running") break;
    await new Promise((res) => setTimeout(res, 50));
  }
  assert.equal(status.status, "completed");
  const res = await fetch(job.resultUrl, { headers: { authorization: `Bearer ${job.jobToken}` } });
  assert.equal(res.status, 200);
  assert.equal((await res.json()).experiment_id, "exp-async");
});

test("busy worker: 409, nothing settles", async () => {
  const w = worker("v1-busy");
  const before = await chain.balance(w.payTo);
  const r = await payExperiment(client, w, body("exp-busy"));
  assert.equal(r.response.status, 409);
  assert.equal(JSON.parse(r.text).status, "busy");
  assert.equal(await chain.balance(w.payTo), before);
});

test("lie nan: the body carries a bare NaN as Python would", async () => {
  const w = worker("v2-nan");
  const r = await payExperiment(client, w, body("exp-nan"));
  assert.equal(r.response.status, 200);
  assert.match(r.text, /"val_bpb": NaN/);
});

test("a crashed and a timed-out run are answered 200, so the gate settles and the run is paid", async () => {
  const w = worker("v1-crash");
  const cases = [
    ["exp-crash", "raise SystemExit(2)\n", "failed", 2],
    ["exp-timeout", "import time\ntime.sleep(20)\n", "timeout", -1],
  ];
  for (const [id, src, status, code] of cases) {
    const before = await chain.balance(w.payTo);
    const r = await payExperiment(client, w, { train_py: src, config: {}, experiment_id: id });
    assert.equal(r.response.status, 200, r.text);
    const result = JSON.parse(r.text);
    assert.deepEqual([result.status, result.return_code, result.val_bpb], [status, code, null]);
    assert.ok(r.settlement?.success, "settled");
    assert.equal(await chain.balance(w.payTo), before + BigInt(w.price));
  }
});

test("signer modes", async () => {
  const typed = {
    types: {
      EIP712Domain: [
        { name: "name", type: "string" }, { name: "version", type: "string" },
        { name: "chainId", type: "uint256" }, { name: "verifyingContract", type: "address" },
      ],
      TransferWithAuthorization: [
        { name: "from", type: "address" }, { name: "to", type: "address" },
        { name: "value", type: "uint256" }, { name: "validAfter", type: "uint256" },
        { name: "validBefore", type: "uint256" }, { name: "nonce", type: "bytes32" },
      ],
    },
    primaryType: "TransferWithAuthorization",
    domain: { name: "USDC", version: "2", chainId: 84532, verifyingContract: m.usdc },
    message: {
      from: m.payer, to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", value: "10000",
      validAfter: "0", validBefore: "1900000000", nonce: `0x${"11".repeat(32)}`,
    },
  };
  const GOLDEN = "0x4c906a47a947ae0d3352d162c153374ae5a94ef8f09a948307cff212aaf893707462a82325b84e3a6fe23cd64944aa1cfd6fbb0addc004e4b369708ab0da17581c";
  const sign = async (s, token = s.token, address = s.address, payload = typed) => {
    const r = await fetch(`${s.url}/api/v1/sign/${address}/typed-data`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(payload),
    });
    return { status: r.status, body: await r.json() };
  };
  const by = (n) => m.signers.find((s) => s.name === n);
  assert.deepEqual(await (await fetch(`${m.signer.url}/healthz`)).json(), { status: "ok" });
  const keys = await (await fetch(`${m.signer.url}/api/v1/keys`, { headers: { authorization: "Bearer t0k" } })).json();
  assert.deepEqual(keys, { keys: [m.payer] });

  assert.deepEqual(await sign(by("default")), { status: 200, body: { signature: GOLDEN } });
  assert.equal((await sign(by("default"), null)).status, 401);
  const nf = await sign(by("default"), "t0k", "0x209693Bc6afc0C5328bA36FaF03C514EF312287C");
  assert.equal(nf.status, 404);
  assert.equal(nf.body.code, "SIGNER_NOT_FOUND");
  const mf = await sign(by("default"), "t0k", m.payer, { types: typed.types });
  assert.equal(mf.status, 422);
  assert.equal(mf.body.code, "MISSING_FIELD");

  const v01 = await sign(by("v01"));
  assert.equal(v01.status, 200);
  assert.equal(v01.body.signature, `${GOLDEN.slice(0, 130)}01`);

  const wrong = await sign(by("wrong"));
  assert.equal(wrong.status, 200);
  const recovered = await recoverTypedDataAddress({ ...typed, signature: wrong.body.signature });
  assert.notEqual(recovered, m.payer);

  const un = await sign(by("unauth"));
  assert.equal(un.status, 401);

  // A wrong-key voucher does not pay: the gate refuses it and nothing moves.
  const w = worker("v2");
  const before = await chain.balance(w.payTo);
  const bad = payingClient(remoteSigner(by("wrong")));
  const r = await payExperiment(bad, w, body("exp-wrongkey"));
  assert.equal(r.response.status, 402);
  assert.equal(await chain.balance(w.payTo), before);

  // A v = 0/1 voucher passes viem's signature check but not FiatToken's: refused, nothing moves.
  const o = worker("obol");
  const obolBefore = await chain.balance(o.payTo);
  const r01 = await payExperiment(payingClient(remoteSigner(by("v01"))), o, body("exp-v01"));
  assert.equal(r01.response.status, 402);
  assert.match(JSON.parse(r01.text).error, /simulation_failed/);
  assert.equal(await chain.balance(o.payTo), obolBefore);
});
