#!/usr/bin/env node
// Starts the payment testbed on loopback and prints one line of JSON (the manifest) to stdout.
// See README.md next to this file for the configuration, the manifest and the fault modes.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { keccak256, toHex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { startAnvil, deployUsdc, KEYS, CHAIN_ID } from "./lib/chain.mjs";
import { startFacilitator } from "./lib/facilitator.mjs";
import { startSigner, SIGNER_MODES } from "./lib/signer.mjs";
import { startWorker } from "./lib/worker.mjs";
import { GATE_KINDS, networkFor } from "./lib/gates.mjs";
import { startEdge } from "./lib/edge.mjs";

// stdout carries exactly one line, the manifest: everything else goes to stderr, including what
// the reference packages print with console.log.
const stdoutWrite = process.stdout.write.bind(process.stdout);
for (const k of ["log", "info", "warn", "debug"]) console[k] = (...a) => console.error(...a);
const log = (m) => process.stderr.write(`[testbed] ${m}\n`);

const DEFAULT_CONFIG = {
  payerFunds: "1000000000", // 1000 USDC
  workers: [
    { name: "w-v2", gate: "v2" },
    { name: "w-v1", gate: "v1" },
    { name: "w-obol", gate: "obol" },
  ],
  signer: { token: "testbed-token", mode: "normal" },
  extraSigners: [],
};
const FAULT_KEYS = ["failBeforePayment", "failAfterPayment", "lostAnswer", "busy", "hang", "lie", "async", "runFails", "liar", "noise"];
// The repo every worker copies into each run's work directory (AUTORESEARCH_REPO).
const DEFAULT_REPO = path.join(path.dirname(fileURLToPath(import.meta.url)), "worker-repo");

function parseArgs(argv) {
  const out = { config: null, manifest: null, watchStdin: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--config") out.config = val();
    else if (a.startsWith("--config=")) out.config = a.slice(9);
    else if (a === "--manifest") out.manifest = val();
    else if (a.startsWith("--manifest=")) out.manifest = a.slice(11);
    else if (a === "--no-stdin") out.watchStdin = false;
    else if (a === "--help" || a === "-h") {
      process.stderr.write("usage: node up.mjs [--config JSON|FILE] [--manifest FILE] [--no-stdin]\n");
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return out;
}

function loadConfig(arg) {
  if (!arg) return {};
  const text = arg.trim().startsWith("{") ? arg : readFileSync(arg, "utf8");
  const c = JSON.parse(text);
  if (!c || typeof c !== "object" || Array.isArray(c)) throw new Error("config must be a JSON object");
  return c;
}

function normalize(raw) {
  const known = ["payerFunds", "workers", "signer", "extraSigners", "dataDir"];
  for (const k of Object.keys(raw)) if (!known.includes(k)) throw new Error(`unknown config key ${k}`);
  const cfg = {
    payerFunds: String(raw.payerFunds ?? DEFAULT_CONFIG.payerFunds),
    signer: { ...DEFAULT_CONFIG.signer, ...(raw.signer || {}) },
    extraSigners: raw.extraSigners ?? DEFAULT_CONFIG.extraSigners,
    workers: raw.workers ?? DEFAULT_CONFIG.workers,
    dataDir: raw.dataDir ?? null,
  };
  if (cfg.dataDir !== null && typeof cfg.dataDir !== "string") throw new Error("dataDir must be a path");
  if (!/^\d+$/.test(cfg.payerFunds)) throw new Error("payerFunds must be atomic USDC digits");
  if (!Array.isArray(cfg.workers)) throw new Error("workers must be an array");
  const names = new Set();
  cfg.workers = cfg.workers.map((w, i) => {
    const name = w.name ?? `w${i + 1}`;
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new Error(`bad worker name ${name}`);
    if (names.has(name)) throw new Error(`duplicate worker name ${name}`);
    names.add(name);
    const gate = w.gate ?? "v2";
    if (!GATE_KINDS.includes(gate)) throw new Error(`worker ${name}: gate must be one of ${GATE_KINDS}`);
    const price = String(w.price ?? "10000");
    if (!/^[1-9]\d*$/.test(price)) throw new Error(`worker ${name}: price must be positive atomic USDC digits`);
    const durationMs = Number(w.durationMs ?? 0);
    if (!Number.isFinite(durationMs) || durationMs < 0) throw new Error(`worker ${name}: bad durationMs`);
    const faults = { ...(w.faults || {}) };
    for (const k of Object.keys(faults)) {
      if (!FAULT_KEYS.includes(k)) throw new Error(`worker ${name}: unknown fault ${k}`);
    }
    if (faults.lie !== undefined && !["nan", "negative", "wrongId"].includes(faults.lie)) {
      throw new Error(`worker ${name}: lie must be nan, negative or wrongId`);
    }
    if (faults.lostAnswer !== undefined && !["drop", "500"].includes(String(faults.lostAnswer))) {
      throw new Error(`worker ${name}: lostAnswer must be drop or 500`);
    }
    for (const k of ["failBeforePayment", "failAfterPayment", "runFails"]) {
      if (faults[k] === true) faults[k] = Number.MAX_SAFE_INTEGER;
      if (faults[k] !== undefined && !(Number.isInteger(faults[k]) && faults[k] >= 0)) {
        throw new Error(`worker ${name}: ${k} must be a count (or true for always)`);
      }
    }
    if (faults.lostAnswer !== undefined) faults.lostAnswer = String(faults.lostAnswer);
    checkTrustFaults(name, faults);
    const maxTimeoutSeconds = Number(w.maxTimeoutSeconds ?? Math.max(300, Math.ceil(durationMs / 1000) + 120));
    const timeoutSeconds = Number(w.timeoutSeconds ?? 300);
    if (!(timeoutSeconds > 0)) throw new Error(`worker ${name}: timeoutSeconds must be a positive number`);
    const trainCommand = w.trainCommand ?? "python3 train.py";
    const isWords = Array.isArray(trainCommand) && trainCommand.length > 0 && trainCommand.every((x) => typeof x === "string");
    if (!isWords && !(typeof trainCommand === "string" && trainCommand.trim())) {
      throw new Error(`worker ${name}: trainCommand must be a command line or an array of words`);
    }
    const repo = w.repo === undefined ? DEFAULT_REPO : w.repo;
    if (repo !== null && typeof repo !== "string") throw new Error(`worker ${name}: repo must be a path or null`);
    // A fresh payee per worker name: nothing else ever holds funds there.
    const payTo = w.payTo ?? privateKeyToAccount(keccak256(toHex(`autoresearch-testbed-payee:${name}`))).address;
    const edge = w.edge === undefined || w.edge === null ? null : { timeoutMs: Number(w.edge.timeoutMs ?? 1000), status: Number(w.edge.status ?? 504) };
    if (edge && !(edge.timeoutMs > 0 && edge.status >= 500 && edge.status < 600)) {
      throw new Error(`worker ${name}: edge needs timeoutMs > 0 and a 5xx status`);
    }
    return { name, gate, price, durationMs, faults, maxTimeoutSeconds, timeoutSeconds, payTo, trainCommand, repo, edge };
  });
  const signers = [{ name: "default", ...cfg.signer }, ...cfg.extraSigners.map((s, i) => ({ name: s.name ?? `signer${i + 2}`, ...s }))];
  for (const s of signers) {
    if (!SIGNER_MODES.includes(s.mode ?? "normal")) throw new Error(`signer ${s.name}: mode must be one of ${SIGNER_MODES}`);
  }
  cfg.signers = signers;
  return cfg;
}

// liar: a positive amount subtracted from what was measured; noise: {spread, seed?}.
function checkTrustFaults(name, faults) {
  if (faults.liar !== undefined && !(typeof faults.liar === "number" && faults.liar > 0)) {
    throw new Error(`worker ${name}: liar must be a positive number (how much lower it reports)`);
  }
  if (faults.noise !== undefined) {
    const n = faults.noise;
    const ok = n && typeof n === "object" && typeof n.spread === "number" && n.spread > 0
      && Object.keys(n).every((k) => ["spread", "seed"].includes(k));
    if (!ok) throw new Error(`worker ${name}: noise must be {"spread": positive number, "seed": optional}`);
  }
}

async function waitReady(url, init, okStatus) {
  const deadline = Date.now() + 10_000;
  let last;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(url, init);
      await r.arrayBuffer();
      if (r.status === okStatus) return;
      last = `status ${r.status}`;
    } catch (e) {
      last = e.message;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} not ready: ${last}`);
}

async function main() {
  let args;
  let cfg;
  try {
    args = parseArgs(process.argv.slice(2));
    cfg = normalize(loadConfig(args.config));
  } catch (e) {
    log(`bad arguments or config: ${e.message}`);
    process.exit(2);
  }
  const t0 = Date.now();
  const closers = [];
  // Each worker keeps its runs under <dataDir>/<name>/autoresearch-worker/ (its DATA_DIR).
  const ownData = cfg.dataDir === null;
  const dataDir = ownData ? mkdtempSync(path.join(os.tmpdir(), "autoresearch-testbed-")) : path.resolve(cfg.dataDir);
  let anvil = null;
  let stopping = false;

  const shutdown = async (why, code = 0) => {
    if (stopping) return;
    stopping = true;
    log(`stopping (${why})`);
    const force = setTimeout(() => { anvil?.stop(); process.exit(code); }, 3000);
    force.unref();
    await Promise.allSettled(closers.map((c) => c()));
    await anvil?.stop();
    if (ownData) rmSync(dataDir, { recursive: true, force: true });
    process.exit(code);
  };
  process.on("SIGTERM", () => shutdown("SIGTERM"));
  process.on("SIGINT", () => shutdown("SIGINT"));
  process.on("SIGHUP", () => shutdown("SIGHUP"));
  if (args.watchStdin) {
    process.stdin.on("end", () => shutdown("stdin closed"));
    process.stdin.on("close", () => shutdown("stdin closed"));
    process.stdin.on("error", () => shutdown("stdin error"));
    process.stdin.resume();
  }
  const ppid = process.ppid;
  setInterval(() => { if (process.ppid !== ppid) shutdown("parent exited"); }, 500).unref();

  try {
    anvil = await startAnvil({ log });
    const payer = privateKeyToAccount(KEYS.payer).address;
    const { usdc } = await deployUsdc({ rpcUrl: anvil.rpcUrl, payer, payerFunds: cfg.payerFunds, log });

    // anvil mines only on transactions, so an idle chain's last block falls behind wall time
    // (more than 10 minutes was measured); an empty block every 2 s keeps the chain's clock near
    // wall time, as a live chain's is.
    const mine = () => fetch(anvil.rpcUrl, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "evm_mine", params: [] }),
    }).catch(() => {});
    const miner = setInterval(mine, 2000);
    miner.unref();
    closers.push(async () => clearInterval(miner));

    const fac = await startFacilitator({ rpcUrl: anvil.rpcUrl, key: KEYS.facilitator, log });
    closers.push(fac.close);

    const signers = [];
    for (const s of cfg.signers) {
      const inst = await startSigner({ key: KEYS.payer, wrongKey: KEYS.wrongSigner, token: s.token || null, mode: s.mode ?? "normal" });
      closers.push(inst.close);
      signers.push({ name: s.name, url: inst.url, token: inst.token, address: inst.address, mode: inst.mode });
    }

    const workers = [];
    for (const spec of cfg.workers) {
      const w = await startWorker({ spec: { ...spec, dataDir: path.join(dataDir, spec.name) }, facilitatorUrl: fac.url, usdc, log });
      closers.push(w.close);
      const edge = spec.edge ? await startEdge({ upstream: w.endpoint, ...spec.edge, log }) : null;
      if (edge) closers.push(edge.close);
      workers.push({
        name: spec.name,
        endpoint: edge ? edge.endpoint : w.endpoint,
        directEndpoint: w.endpoint,
        gate: spec.gate,
        payTo: spec.payTo,
        price: spec.price,
        network: networkFor(spec.gate),
        asset: usdc,
        maxTimeoutSeconds: spec.maxTimeoutSeconds,
        durationMs: spec.durationMs,
        timeoutSeconds: spec.timeoutSeconds,
        trainCommand: spec.trainCommand,
        dataDir: w.settings.base,
        faults: spec.faults,
      });
    }

    // Readiness: every server answers; every gate asks for payment (this also makes the v2
    // middleware fetch /supported from the facilitator before the first real request).
    await waitReady(`${fac.url}/supported`, {}, 200);
    for (const s of signers) await waitReady(`${s.url}/healthz`, {}, 200);
    for (const w of workers) {
      await waitReady(`${w.endpoint}/health`, {}, 200);
      await waitReady(`${w.endpoint}/experiment`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ probe: true }),
      }, 402);
    }

    const manifest = {
      rpcUrl: anvil.rpcUrl,
      chainId: CHAIN_ID,
      usdc,
      payer,
      payerPrivateKey: KEYS.payer,
      facilitatorUrl: fac.url,
      facilitatorAddress: fac.address,
      signer: (({ url, token, address, mode }) => ({ url, token, address, mode }))(signers[0]),
      signers,
      workers,
      pids: { testbed: process.pid, anvil: anvil.pid, anvilWatchdog: anvil.watchdogPid },
    };
    const line = JSON.stringify(manifest);
    if (args.manifest) writeFileSync(args.manifest, `${line}\n`);
    stdoutWrite(`${line}\n`);
    log(`ready in ${Date.now() - t0} ms: ${workers.length} workers, anvil ${anvil.rpcUrl}`);
  } catch (e) {
    log(`startup failed: ${e.stack || e.message}`);
    await shutdown("startup failure", 1);
  }
}

main();
