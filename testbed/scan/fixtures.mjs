// Agents served by the 8004scan stand-in: one of every registration-document variant from
// protocols.md §2, and decoys that must never come back as workers.
//
// `origin` is the stand-in's own http://127.0.0.1:<port>: real test workers and hosted documents
// live there, so they are found only with --allow-private 127.0.0.1/32. Decoys use names under
// .invalid or .svc.cluster.local, 0.0.0.0, [::1] or 127.0.0.2: never a routable address.

const CHAIN = 84532;
const REGISTRY = "0x8004A818BFB912233c491871b3d84c89A494BD9e";
const SKILL = "devops_mlops/model_versioning";
const SKILL_11 = "ai_ml_engineering/ml_lifecycle/model_versioning";
const SKILL_OLD = "machine_learning/model_optimization";

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64");
const pct = (obj) => encodeURIComponent(JSON.stringify(obj));

function doc(origin, token, name, opts = {}) {
  const endpoint = opts.endpoint ?? `${origin}/services/${name.toLowerCase().replace(/\s+/g, "-")}`;
  return {
    type: "https://eips.ethereum.org/EIPS/eip-8004#registration-v1",
    name,
    description: opts.description ?? `Autoresearch GPU worker (${SKILL})`,
    image: "https://example.invalid/worker.png",
    services: [
      { name: "web", endpoint, version: "1.0.0" },
      { name: "OASF", endpoint: "https://github.com/agntcy/oasf/", version: "v0.8.0",
        skills: opts.skills ?? [SKILL], domains: ["research_and_development/scientific_research"] },
    ],
    x402Support: true,
    active: opts.active ?? true,
    registrations: [{ agentId: token, agentRegistry: `eip155:${CHAIN}:${REGISTRY}` }],
    supportedTrust: ["reputation"],
    metadata: { gpu: "A100-80GB", best_val_bpb: "bpb" in opts ? opts.bpb : "0.9900", total_experiments: "12",
      updated: "2026-03-12T10:30:00Z" },
  };
}

// Each agent: token id, the row's summary, how its document is reachable, and whether a
// correct client keeps it (`worker: true`) with --allow-private 127.0.0.1/32.
export function agents(origin) {
  const list = [];
  const add = (token, name, how, worker, extra = {}) => list.push({ token, name, how, worker, ...extra });

  // Current document embedded in the list row itself (no detail call needed).
  add(1, "Alpha", { rowContent: doc(origin, 1, "Alpha", { bpb: "0.9712" }) }, true);
  // Detail with offchain_content as a JSON string; variant spellings throughout.
  add(2, "Beta", {
    contentString: JSON.stringify({
      name: "Beta",
      description: "worker",
      endpoints: [
        { name: "A2A", endpoint: "https://beta.example.invalid/.well-known/agent-card.json" },
        { name: "worker", endpoint: `${origin}/services/beta/experiment` },
        { name: "oasf", version: "0.8", skills: [{ name: SKILL_11, id: 99 }] },
      ],
      x402support: { enabled: true },
      supportedTrusts: ["crypto-economic"],
      registrations: [{ agentId: "2", agentRegistry: `eip155:${CHAIN}:${REGISTRY}` }],
      metadata: { best_val_bpb: 0.965, total_experiments: 30, gpu: "H100" },
    }),
  }, true, { searchText: SKILL_11 });
  // Hosted document over http on the stand-in; legacy skill spelling, trustModels, number id.
  add(3, "Gamma", { uri: `${origin}/docs/gamma.json` }, true, {
    hosted: {
      name: "Gamma",
      services: [
        { name: "web", endpoint: `${origin}/services/gamma` },
        { name: "OASF", version: "0.8.0", skills: [SKILL_OLD] },
      ],
      trustModels: ["reputation"],
      x402Support: "true",
      registrations: [{ agentId: 3, agentRegistry: `eip155:${CHAIN}:${REGISTRY}` }],
      metadata: { best_val_bpb: "0.9801" },
    },
    searchText: SKILL_OLD,
  });
  // data: URI, base64.
  add(4, "Delta", { uri: `data:application/json;base64,${b64(doc(origin, 4, "Delta", { bpb: 0.9755 }))}` }, true);
  // data: URI, percent-encoded; skills as {name, id} objects.
  add(5, "Epsilon", {
    uri: `data:application/json,${pct(doc(origin, 5, "Epsilon", { skills: [{ name: SKILL, id: 1204 }], bpb: null }))}`,
  }, true);
  // ipfs:// through the configured gateway (the stand-in serves /ipfs/<cid>).
  add(6, "Zeta", { uri: "ipfs://bafyzetazetazeta/zeta.json" }, true, {
    ipfs: doc(origin, 6, "Zeta", { bpb: "0.9850" }),
  });
  // No document at all: the detail record flattens services into an object.
  add(7, "Eta", {
    detailOnly: {
      services: { web: { endpoint: `${origin}/services/eta` },
                  oasf: { version: "v0.8.0", skills: [SKILL] }, ens: "eta.eth" },
      x402_supported: true,
    },
  }, true);
  // `raw_metadata.offchain` instead of `offchain_content`.
  add(8, "Theta", { offchainAlias: doc(origin, 8, "Theta", { bpb: "0.9790" }) }, true);

  // Decoys.
  add(20, "Wrong Skill", { rowContent: doc(origin, 20, "Wrong Skill", {
    skills: ["natural_language_processing/summarization"],
    description: `summariser, not ${SKILL}` }) }, false);
  add(21, "Inactive", { rowContent: doc(origin, 21, "Inactive", { active: false }) }, false);
  add(22, "Cluster Name", { rowContent: doc(origin, 22, "Cluster Name", {
    endpoint: "http://worker.autoresearch.svc.cluster.local:8080/services/w" }) }, false);
  add(23, "Unspecified", { uri: `data:application/json;base64,${b64(doc(origin, 23, "Unspecified", {
    endpoint: `http://0.0.0.0:${new URL(origin).port}/services/w` }))}` }, false);
  add(24, "Loopback Six", { rowContent: doc(origin, 24, "Loopback Six", {
    endpoint: `http://[::1]:${new URL(origin).port}/services/w` }) }, false);
  add(25, "Other Loopback", { rowContent: doc(origin, 25, "Other Loopback", {
    endpoint: `http://127.0.0.2:${new URL(origin).port}/services/w` }) }, false);
  add(26, "Unresolvable", { rowContent: doc(origin, 26, "Unresolvable", {
    endpoint: "https://worker.decoy.invalid/services/w" }) }, false);
  add(27, "Cluster Document", { uri: "http://docs.autoresearch.svc.cluster.local/agent.json" }, false,
    { searchText: SKILL });
  return list;
}

export { CHAIN, REGISTRY, SKILL };

// For the demo: the given workers (name, endpoint, gpu, bestValBpb) as current registrations
// embedded in list rows, plus two decoys a correct client refuses (inactive, cluster-internal).
export function demoAgents(origin, workers) {
  const list = workers.map((w, i) => ({
    token: 100 + i,
    name: w.name,
    how: { rowContent: doc(origin, 100 + i, w.name, { endpoint: w.endpoint, bpb: w.bestValBpb ?? null }) },
    worker: true,
  }));
  list.push({ token: 190, name: "Retired", how: { rowContent: doc(origin, 190, "Retired", { active: false }) }, worker: false });
  list.push({
    token: 191,
    name: "Internal",
    how: { rowContent: doc(origin, 191, "Internal", { endpoint: "http://worker.autoresearch.svc.cluster.local/services/w" }) },
    worker: false,
  });
  return list;
}

// `n` generated workers at `<origin>/services/gen-<i>`: a share `embedded` of them carry their
// document in the list row (every third of those as a data: URI, the others as content); the
// rest only in the detail record, as most rows of the real index.
export function generatedAgents(origin, n, embedded) {
  const list = [];
  for (let i = 0; i < n; i += 1) {
    const token = 1000 + i;
    const name = `Gen ${i}`;
    const d = doc(origin, token, name, { endpoint: `${origin}/services/gen-${i}`, bpb: (0.95 + i / 10000).toFixed(4) });
    const inRow = Math.floor((i + 1) * embedded) > Math.floor(i * embedded);
    const how = !inRow
      ? { contentString: JSON.stringify(d) }
      : i % 3 === 0
        ? { rowUri: `data:application/json;base64,${b64(d)}` }
        : { rowContent: d };
    list.push({ token, name, how, worker: true });
  }
  return list;
}
