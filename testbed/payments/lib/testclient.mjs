// Test helpers: start up.mjs, a JS x402 client built from the reference client pieces that signs
// through the remote signer, and USDC balance reads.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { createPublicClient, http } from "viem";
import { x402Client } from "@x402/core/client";
import { x402HTTPClient } from "@x402/core/http";
import { ExactEvmScheme } from "@x402/evm/exact/client";
import { ExactEvmSchemeV1 } from "@x402/evm/v1";
import { ERC20_ABI, chainFor } from "./chain.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
export const UP = path.join(here, "..", "up.mjs");

// Spawns up.mjs; resolves { manifest, child, stop } once the manifest line arrives.
export function startTestbed(config) {
  const args = [UP];
  if (config) args.push("--config", JSON.stringify(config));
  const child = spawn(process.execPath, args, { stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; });
  const exited = new Promise((r) => child.on("exit", (code, signal) => r({ code, signal })));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`testbed not ready in 30 s:\n${stderr}`)), 30_000);
    const lines = createInterface({ input: child.stdout });
    let got = false;
    const extra = [];
    lines.on("line", (line) => {
      if (got) {
        extra.push(line);
        return;
      }
      got = true;
      clearTimeout(timer);
      const manifest = JSON.parse(line);
      const stop = async () => {
        child.stdin.end();
        return exited;
      };
      resolve({ manifest, child, stop, exited, stderr: () => stderr, extraStdout: () => extra });
    });
    child.on("exit", (code) => {
      if (!got) {
        clearTimeout(timer);
        reject(new Error(`testbed exited ${code} before the manifest:\n${stderr}`));
      }
    });
  });
}

const jsonSafe = (_k, v) => (typeof v === "bigint" ? v.toString() : v);

const DOMAIN_FIELDS = [
  ["name", "string"],
  ["version", "string"],
  ["chainId", "uint256"],
  ["verifyingContract", "address"],
  ["salt", "bytes32"],
];

// A ClientEvmSigner (address + signTypedData) backed by the remote signer's HTTP API.
export function remoteSigner({ url, token, address }) {
  return {
    address,
    async signTypedData({ domain, types, primaryType, message }) {
      const EIP712Domain = DOMAIN_FIELDS.filter(([n]) => domain[n] !== undefined).map(([name, type]) => ({ name, type }));
      const r = await fetch(`${url}/api/v1/sign/${address}/typed-data`, {
        method: "POST",
        headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: JSON.stringify({ types: { EIP712Domain, ...types }, primaryType, domain, message }, jsonSafe),
      });
      const body = await r.json();
      if (r.status !== 200) throw new Error(`remote signer ${r.status}: ${JSON.stringify(body)}`);
      return body.signature;
    },
  };
}

export function payingClient(signer) {
  const core = new x402Client()
    .register("eip155:*", new ExactEvmScheme(signer))
    .registerV1("base-sepolia", new ExactEvmSchemeV1(signer));
  return new x402HTTPClient(core);
}

// POSTs body to <endpoint>/experiment: first unpaid (expects 402), then with a payment in the
// header the gate kind reads. Returns { probe, response, text, settlement, payload }.
export async function payExperiment(client, worker, body, { fetchOptions = {} } = {}) {
  const url = `${worker.endpoint}/experiment`;
  const send = (headers = {}) =>
    fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      ...fetchOptions,
    });
  const probe = await send();
  const probeBody = await probe.json().catch(() => ({}));
  if (probe.status !== 402) return { probe, probeBody };
  const required = client.getPaymentRequiredResponse((n) => probe.headers.get(n), probeBody);
  const payload = await client.createPaymentPayload(required);
  let headers;
  if (worker.gate === "obol") {
    headers = { "X-PAYMENT": Buffer.from(JSON.stringify(payload)).toString("base64") };
  } else {
    headers = client.encodePaymentSignatureHeader(payload);
  }
  const response = await send(headers);
  const text = await response.text();
  let settlement = null;
  try {
    settlement = client.getPaymentSettleResponse((n) => response.headers.get(n));
  } catch {
    settlement = null;
  }
  return { probe, probeBody, required, payload, response, text, settlement, headers };
}

export function chainReader(manifest) {
  const pub = createPublicClient({ chain: chainFor(manifest.rpcUrl), transport: http(manifest.rpcUrl) });
  return {
    pub,
    balance: (address) =>
      pub.readContract({ address: manifest.usdc, abi: ERC20_ABI, functionName: "balanceOf", args: [address] }),
  };
}
