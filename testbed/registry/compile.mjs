// Compiles IdentityRegistry.sol with the npm solc pinned in testbed/package.json.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const solc = require("solc");
const here = dirname(fileURLToPath(import.meta.url));

export function compileRegistry() {
  const input = {
    language: "Solidity",
    sources: { "IdentityRegistry.sol": { content: readFileSync(join(here, "IdentityRegistry.sol"), "utf8") } },
    settings: { optimizer: { enabled: true, runs: 200 }, outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } } },
  };
  const out = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (out.errors ?? []).filter((e) => e.severity === "error");
  if (errors.length) throw new Error(errors.map((e) => e.formattedMessage).join("\n"));
  const c = out.contracts["IdentityRegistry.sol"].IdentityRegistry;
  return { abi: c.abi, bytecode: `0x${c.evm.bytecode.object}` };
}
