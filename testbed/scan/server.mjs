// A stand-in for the 8004scan public API (protocols.md §1), for tests and the demo.
//
//   node testbed/scan/server.mjs [--port N] [--fail-every N] [--real-limits]
//     [--rate-limit N] [--rate-window-ms N] [--day-limit N]
//     [--api-key K] [--key-rate-limit N] [--key-day-limit N]
//     [--agents N] [--embedded-share F] [--workers JSON]
//
// Listens on 127.0.0.1 (port 0 by default: a free one) and prints one line,
// `SCAN_API_URL=http://127.0.0.1:<port>/api/v1/public`, once it is ready. It serves paging by
// `page`, both envelopes (odd pages `{success, data, meta}`, even pages `{items, total, limit,
// offset}`), HTTP 500 on every Nth request, and the real service's limits:
//
// - a sliding-window limit per caller (anonymous, or per API key sent as `X-API-Key`): N
//   requests per window (`--rate-limit`, `--key-rate-limit`; the window is a minute unless
//   `--rate-window-ms` shortens it for tests), answered over the limit with 429 and Retry-After;
// - a day quota per caller (`--day-limit`, `--key-day-limit`; 0 = none), counted from the UTC
//   day's start; over it: 429 with Retry-After until midnight UTC;
// - `x-ratelimit-limit-minute`, `x-ratelimit-remaining-minute` (per minute, scaled from the
//   window) and, with a day quota, `x-ratelimit-limit-day`, `x-ratelimit-remaining-day`, on
//   every API answer (429s and 500s included);
// - an unknown API key: 401.
//
// `--real-limits` sets the documented ones: anonymous 10 a minute and 100 a day, 600 a minute
// with a key. Without it the anonymous limit is 30 per 5 s and there is no day quota (what the
// older tests and the demo expect). The accepted key is `--api-key` (default `testbed-scan-key`).
//
// `--agents N` serves N generated workers instead of the fixtures; a share `--embedded-share F`
// (default 0.5) of them carry their document in the list row, the rest only in the detail
// record. `GET /__stats` reports what it served (requests per caller included; keys are never
// echoed). `/ipfs/<cid>/<path>` acts as the IPFS gateway, `/docs/<name>.json` hosts documents.
import express from "express";
import { agents, demoAgents, generatedAgents, CHAIN, REGISTRY } from "./fixtures.mjs";

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && process.argv[i + 1] !== undefined) return Number(process.argv[i + 1]);
  const env = process.env[name.toUpperCase().replaceAll("-", "_")];
  return env !== undefined ? Number(env) : fallback;
}

const port = option("port", 0);
// --workers '<json list of {name, endpoint, gpu?, bestValBpb?}>': serve these (and two decoys)
// instead of the test fixtures; used by the demo.
const workersArg = process.argv.indexOf("--workers");
const demoWorkers = workersArg >= 0 ? JSON.parse(process.argv[workersArg + 1]) : null;
const failEvery = option("fail-every", 4);
const real = process.argv.includes("--real-limits");
const rateWindowMs = option("rate-window-ms", real ? 60000 : 5000);
const rateLimit = option("rate-limit", real ? 10 : 30);
const dayLimit = option("day-limit", real ? 100 : 0);
const keyRateLimit = option("key-rate-limit", Math.round((600 * rateWindowMs) / 60000));
const keyDayLimit = option("key-day-limit", 0);
const keyArg = process.argv.indexOf("--api-key");
const apiKey = keyArg >= 0 ? process.argv[keyArg + 1] : "testbed-scan-key";
const generated = option("agents", 0);
const embeddedShare = option("embedded-share", 0.5);

const app = express();
const stats = { requests: 0, list: 0, detail: 0, docs: 0, ipfs: 0, served500: 0, served429: 0,
  served401: 0, refusedDay: 0, refusedMinute: 0, api: 0, anonymous: 0, keyed: 0, userAgents: [] };
// Per caller ("anonymous" or "key"): request times in the window, and today's count.
const callers = {
  anonymous: { recent: [], day: 0, dayStart: 0, limit: rateLimit, dayLimit },
  key: { recent: [], day: 0, dayStart: 0, limit: keyRateLimit, dayLimit: keyDayLimit },
};
let apiCount = 0;
let list = [];

const DAY_MS = 86400000;

function limitHeaders(res, c) {
  const perMinute = (n) => Math.floor((n * 60000) / rateWindowMs);
  res.set("x-ratelimit-limit-minute", String(perMinute(c.limit)));
  res.set("x-ratelimit-remaining-minute", String(perMinute(Math.max(0, c.limit - c.recent.length))));
  if (c.dayLimit > 0) {
    res.set("x-ratelimit-limit-day", String(c.dayLimit));
    res.set("x-ratelimit-remaining-day", String(Math.max(0, c.dayLimit - c.day)));
  }
}

// The caller's quotas: a refusal answered here, or null to go on.
function admit(req, res) {
  const key = req.get("x-api-key");
  if (key !== undefined && key !== apiKey) {
    stats.served401 += 1;
    res.status(401).json({ success: false, error: "invalid API key" });
    return false;
  }
  const c = key === undefined ? callers.anonymous : callers.key;
  const now = Date.now();
  const today = now - (now % DAY_MS);
  if (c.dayStart !== today) {
    c.dayStart = today;
    c.day = 0;
  }
  while (c.recent.length && c.recent[0] <= now - rateWindowMs) c.recent.shift();
  if (c.dayLimit > 0 && c.day >= c.dayLimit) {
    stats.served429 += 1;
    stats.refusedDay += 1;
    limitHeaders(res, c);
    res.set("Retry-After", String(Math.ceil((today + DAY_MS - now) / 1000)));
    res.status(429).json({ success: false, error: "daily quota exceeded" });
    return false;
  }
  if (c.recent.length >= c.limit) {
    stats.served429 += 1;
    stats.refusedMinute += 1;
    limitHeaders(res, c);
    res.set("Retry-After", String(Math.max(1, Math.ceil((c.recent[0] + rateWindowMs - now) / 1000))));
    res.status(429).json({ success: false, error: "rate limited" });
    return false;
  }
  c.recent.push(now);
  c.day += 1;
  stats.api += 1;
  if (key === undefined) stats.anonymous += 1;
  else stats.keyed += 1;
  limitHeaders(res, c);
  return true;
}

function summary(a) {
  const row = {
    agent_id: `${CHAIN}:${REGISTRY}:${a.token}`,
    token_id: String(a.token),
    chain_id: CHAIN,
    contract_address: REGISTRY,
    is_testnet: true,
    owner_address: "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    name: a.name,
    description: `agent ${a.name}`,
    image_url: null,
    supported_protocols: ["OASF"],
    x402_supported: true,
    total_score: 50 - a.token,
    rank: a.token,
    health_score: 90,
    created_at: "2026-03-01T00:00:00Z",
    updated_at: a.updatedAt ?? "2026-03-12T10:30:00Z",
  };
  if (a.how.rowContent) row.raw_metadata = { onchain: [], offchain_uri: null, offchain_content: a.how.rowContent };
  if (a.how.rowUri) row.raw_metadata = { onchain: [], offchain_uri: a.how.rowUri, offchain_content: null };
  return row;
}

function detail(a) {
  const rec = { ...summary(a) };
  delete rec.raw_metadata;
  const raw = { onchain: [{ key: "agentWallet", value: "0x", decoded: null }], offchain_uri: null, offchain_content: null };
  if (a.how.rowContent) raw.offchain_content = a.how.rowContent;
  if (a.how.contentString) raw.offchain_content = a.how.contentString;
  if (a.how.uri) raw.offchain_uri = a.how.uri;
  if (a.how.rowUri) raw.offchain_uri = a.how.rowUri;
  if (a.how.offchainAlias) {
    delete raw.offchain_content;
    raw.offchain = a.how.offchainAlias;
  }
  if (a.how.detailOnly) Object.assign(rec, a.how.detailOnly);
  rec.raw_metadata = raw;
  return rec;
}

// The text `search` matches: what the real index derives from names and skills.
function searchable(a) {
  const docText = JSON.stringify(a.how.rowContent ?? a.how.contentString ?? a.how.offchainAlias ?? a.how.detailOnly ?? "");
  const ipfs = JSON.stringify(a.ipfs ?? "");
  const uri = a.how.uri ?? a.how.rowUri;
  const data = uri?.startsWith("data:") ? decodeData(uri) : "";
  return [a.name, a.searchText ?? "", docText, ipfs, data].join(" ").toLowerCase();
}

function decodeData(uri) {
  const [head, body] = uri.slice(5).split(/,(.*)/s);
  return head.includes(";base64") ? Buffer.from(body, "base64").toString() : decodeURIComponent(body);
}

app.use((req, res, next) => {
  stats.requests += 1;
  const ua = req.get("user-agent") ?? "";
  if (!stats.userAgents.includes(ua)) stats.userAgents.push(ua);
  next();
});

app.get("/__stats", (_req, res) => res.json(stats));
// The agent's registration changed: its rows carry a new `updated_at`.
app.post("/__touch/:token", (req, res) => {
  const a = list.find((x) => String(x.token) === req.params.token);
  if (!a) return res.status(404).json({ error: "no such agent" });
  a.updatedAt = new Date().toISOString();
  res.json({ token: a.token, updated_at: a.updatedAt });
});

// Limits and injected failures apply to the API only, as on the real service. An admitted
// request counts against the quotas even when it then fails with a 500.
app.use("/api/v1/public", (req, res, next) => {
  if (!admit(req, res)) return;
  apiCount += 1;
  if (failEvery > 0 && apiCount % failEvery === 0) {
    stats.served500 += 1;
    res.status(500).json({ success: false, error: "internal error" });
    return;
  }
  next();
});

app.get("/api/v1/public/agents", (req, res) => {
  stats.list += 1;
  const limit = Math.min(100, Math.max(1, Number(req.query.limit ?? 20)));
  const page = Math.max(1, Number(req.query.page ?? 1));
  const search = String(req.query.search ?? "").toLowerCase();
  const matching = list.filter((a) => !search || searchable(a).includes(search));
  const rows = matching.slice((page - 1) * limit, page * limit).map(summary);
  const total = matching.length;
  if (page % 2 === 1) {
    res.json({ success: true, data: rows,
      meta: { version: "v1", timestamp: new Date().toISOString(), requestId: `req-${stats.requests}`,
        pagination: { page, limit, total, hasMore: page * limit < total } } });
  } else {
    res.json({ items: rows, total, limit, offset: (page - 1) * limit });
  }
});

app.get("/api/v1/public/agents/:chain/:token", (req, res) => {
  stats.detail += 1;
  const a = list.find((x) => String(x.token) === req.params.token && String(CHAIN) === req.params.chain);
  if (!a) return res.status(404).json({ success: false, error: "agent not found" });
  res.json({ success: true, data: detail(a) });
});

// A document that redirects to a loopback address outside 127.0.0.1/32, and one too large to read.
app.get("/docs/redirect.json", (req, res) => {
  stats.docs += 1;
  res.redirect(302, `http://[::1]:${req.socket.localPort}/docs/gamma.json`);
});
app.get("/docs/huge.json", (_req, res) => {
  stats.docs += 1;
  res.json({ name: "Huge", padding: "x".repeat(400 * 1024) });
});

app.get("/docs/:name.json", (req, res) => {
  stats.docs += 1;
  const a = list.find((x) => x.hosted && x.name.toLowerCase() === req.params.name);
  if (!a) return res.status(404).json({ error: "no such document" });
  res.json(a.hosted);
});

app.get(/^\/ipfs\/(.+)$/, (req, res) => {
  stats.ipfs += 1;
  const a = list.find((x) => x.ipfs && x.how.uri === `ipfs://${req.params[0]}`);
  if (!a) return res.status(404).json({ error: "not pinned" });
  res.json(a.ipfs);
});

const server = app.listen(port, "127.0.0.1", () => {
  const origin = `http://127.0.0.1:${server.address().port}`;
  list = demoWorkers
    ? demoAgents(origin, demoWorkers)
    : generated > 0
      ? generatedAgents(origin, generated, embeddedShare)
      : agents(origin);
  process.stdout.write(`SCAN_API_URL=${origin}/api/v1/public\n`);
});

// Keep-alive connections of clients would hold `close` open: drop them.
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
