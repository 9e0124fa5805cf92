// A JSON-RPC proxy that refuses eth_getLogs ranges wider than --max-range blocks with -32005,
// as hosted providers do, and forwards everything else to --upstream.
//
//   node testbed/registry/range-proxy.mjs --upstream http://127.0.0.1:8545 --max-range 50
//
// Prints `RPC_URL=http://127.0.0.1:<port>` when ready. GET /__stats reports getLogs calls.
import { createServer } from "node:http";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1] : fallback;
}

const upstream = arg("upstream");
const maxRange = Number(arg("max-range", "50"));
const stats = { getLogs: 0, refused: 0 };

async function forward(body) {
  const res = await fetch(upstream, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return res.json();
}

async function blockOf(tag) {
  if (typeof tag === "string" && tag.startsWith("0x")) return Number(tag);
  if (tag === "earliest") return 0;
  const head = await forward({ jsonrpc: "2.0", id: 0, method: "eth_blockNumber", params: [] });
  return Number(head.result);
}

async function handle(call) {
  if (call.method === "eth_getLogs") {
    stats.getLogs += 1;
    const f = call.params?.[0] ?? {};
    const from = await blockOf(f.fromBlock ?? "latest");
    const to = await blockOf(f.toBlock ?? "latest");
    if (to - from + 1 > maxRange) {
      stats.refused += 1;
      return { jsonrpc: "2.0", id: call.id, error: { code: -32005, message: `query exceeds max block range ${maxRange}` } };
    }
  }
  return forward(call);
}

const server = createServer((req, res) => {
  if (req.method === "GET" && req.url === "/__stats") {
    res.setHeader("content-type", "application/json");
    return res.end(JSON.stringify(stats));
  }
  let data = "";
  req.on("data", (c) => (data += c));
  req.on("end", async () => {
    try {
      const body = JSON.parse(data);
      const answer = Array.isArray(body) ? await Promise.all(body.map(handle)) : await handle(body);
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(answer));
    } catch (e) {
      res.statusCode = 502;
      res.end(JSON.stringify({ jsonrpc: "2.0", id: null, error: { code: -32603, message: String(e) } }));
    }
  });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`RPC_URL=http://127.0.0.1:${server.address().port}\n`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
