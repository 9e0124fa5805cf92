// Registers a worker with agent0-sdk (a real ERC-8004 client) on a dev chain, the way a worker
// operator would: A2A endpoint, OASF skill, x402, metadata, and `registerOnChain()`, which
// writes the SDK's own registration JSON as a data: URI.
//
//   node testbed/registry/agent0/register.mjs --rpc <url> --registry <address> --origin <url>
//
// A fresh key is generated and funded with anvil_setBalance (no key in this file). Prints
// `AGENT0_REGISTERED=<json>` with the agent id, URI and endpoint.
import { createPublicClient, http } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { SDK } from "./node_modules/agent0-sdk/dist/index.js";

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || !process.argv[i + 1]) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
}

const rpc = arg("rpc");
const registry = arg("registry");
const origin = arg("origin");

const pub = createPublicClient({ transport: http(rpc) });
const chainId = await pub.getChainId();
const key = generatePrivateKey();
const account = privateKeyToAccount(key);
await pub.request({ method: "anvil_setBalance", params: [account.address, "0x56BC75E2D63100000"] });

const sdk = new SDK({ chainId, rpcUrl: rpc, privateKey: key, registryOverrides: { [chainId]: { IDENTITY: registry } } });
const endpoint = `${origin}/services/agent0-worker`;
const agent = sdk.createAgent("Agent0 Worker", "Autoresearch GPU worker registered with agent0-sdk");
await agent.setA2A(endpoint, "0.3.0", false);
agent.addSkill("devops_mlops/model_versioning", true);
agent.setX402Support(true);
agent.setActive(true);
agent.setTrust(true);
agent.setMetadata({ gpu: "L4", best_val_bpb: "0.9690", total_experiments: "7" });
const handle = await agent.registerOnChain();
const mined = await handle.waitConfirmed();
const file = mined.result ?? mined;
const [, tokenId] = String(file.agentId).split(":");
process.stdout.write(`AGENT0_REGISTERED=${JSON.stringify({ agentId: Number(tokenId), uri: file.agentURI, endpoint })}\n`);
