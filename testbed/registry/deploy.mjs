// Deploys the Identity Registry stand-in to a dev chain (anvil) and registers test agents.
//
//   node testbed/registry/deploy.mjs --rpc http://127.0.0.1:8545 --origin http://127.0.0.1:<scan port>
//
// `--origin` is the 8004scan stand-in: it hosts the http document (/docs/gamma.json), acts as the
// IPFS gateway, and its address is where the real test workers are. Uses anvil's unlocked first
// account (no key in this file). Empty blocks are mined between registrations so that a log scan
// needs several ranges. Prints one line: `REGISTRY_DEPLOYED=<json>` with the address, the
// deployment block, and the agents a correct discovery must find (`workers`, by id → endpoint).
import { createPublicClient, createWalletClient, http } from "viem";
import { compileRegistry } from "./compile.mjs";

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || !process.argv[i + 1]) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
}

const rpc = arg("rpc");
const origin = arg("origin");
const SKILL = "devops_mlops/model_versioning";
const transport = http(rpc);
const pub = createPublicClient({ transport });
const chainId = await pub.getChainId();
const chain = { id: chainId, name: "dev", nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpc] } } };
const [account] = await pub.request({ method: "eth_accounts" });
const wallet = createWalletClient({ account, chain, transport });

const { abi, bytecode } = compileRegistry();
const deployHash = await wallet.deployContract({ abi, bytecode });
const deployed = await pub.waitForTransactionReceipt({ hash: deployHash });
const address = deployed.contractAddress;

const mine = (n) => pub.request({ method: "anvil_mine", params: [`0x${n.toString(16)}`] });
async function send(functionName, args) {
  const hash = await wallet.writeContract({ address, abi, functionName, args });
  const receipt = await pub.waitForTransactionReceipt({ hash });
  if (receipt.status !== "success") throw new Error(`${functionName} reverted`);
  return receipt;
}

const doc = (id, name, endpoint, extra = {}) => ({
  type: "https://eips.ethereum.org/EIPS/eip-8004#registration-v1",
  name,
  description: "autoresearch worker on the dev chain",
  services: [
    { name: "web", endpoint, version: "1.0.0" },
    { name: "OASF", endpoint: "https://github.com/agntcy/oasf/", version: "v0.8.0", skills: extra.skills ?? [SKILL] },
  ],
  x402Support: true,
  active: extra.active ?? true,
  registrations: [{ agentId: id, agentRegistry: `eip155:${chainId}:${address}` }],
  metadata: { best_val_bpb: extra.bpb ?? "0.9800", gpu: "H100" },
});
const b64 = (d) => `data:application/json;base64,${Buffer.from(JSON.stringify(d)).toString("base64")}`;
const pct = (d) => `data:application/json,${encodeURIComponent(JSON.stringify(d))}`;

const port = new URL(origin).port;
const plan = [
  // [uri, endpoint a correct discovery reports, or null for a decoy]
  [b64(doc(0, "Chain A", `${origin}/services/chain-a`, { bpb: 0.97 })), `${origin}/services/chain-a`],
  [pct(doc(1, "Chain B", `${origin}/services/chain-b-old`)), `${origin}/services/chain-b`],
  [`${origin}/docs/gamma.json`, `${origin}/services/gamma`],
  [b64(doc(3, "Inactive", `${origin}/services/inactive`, { active: false })), null],
  [b64(doc(4, "Wrong Skill", `${origin}/services/wrong`, { skills: ["natural_language_processing/summarization"] })), null],
  [b64(doc(5, "Cluster Name", "http://worker.autoresearch.svc.cluster.local:8080/services/w")), null],
  ["ipfs://bafyzetazetazeta/zeta.json", `${origin}/services/zeta`],
  [b64(doc(7, "Unspecified", `http://0.0.0.0:${port}/services/w`)), null],
];

const startBlock = Number(deployed.blockNumber);
const workers = {};
for (const [i, [uri, endpoint]] of plan.entries()) {
  await send("register", [uri]);
  if (endpoint) workers[i] = endpoint;
  await mine(40);
}
// Registered without a URI: tokenURI is "" and there is no document.
await send("register", []);
await mine(40);
// Agent 1 moves: only the new document counts.
await send("setAgentURI", [1n, b64(doc(1, "Chain B", `${origin}/services/chain-b`, { bpb: "0.9650" }))]);
await mine(5);
const head = Number(await pub.getBlockNumber());

process.stdout.write(`REGISTRY_DEPLOYED=${JSON.stringify({ address, chainId, startBlock, head, workers })}\n`);
