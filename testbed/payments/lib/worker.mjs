// Stand-in GPU worker (protocols.md section 3) with failure injection, behind a payment gate.
import { createHash, randomBytes } from "node:crypto";
import express from "express";
import { parseJsonKeepNumbers, plain, valBpb } from "./landscape.mjs";
import { listen } from "./http.mjs";
import { makeGate } from "./gates.mjs";

export const SERVICE_PATH = "/services/autoresearch-worker";
const ID_RE = /^[A-Za-z0-9_-]{1,128}$/;

// Reads the body as text, keeps the raw text, parses it leniently (the gate runs before the
// worker decides what a bad body means).
function rawJson(req, res, next) {
  if (req.method !== "POST") return next();
  const chunks = [];
  let size = 0;
  req.on("data", (c) => {
    size += c.length;
    if (size <= 4 * 1024 * 1024) chunks.push(c);
  });
  req.on("end", () => {
    req.rawBody = Buffer.concat(chunks).toString("utf8");
    req.tooLarge = size > 4 * 1024 * 1024;
    try {
      req.tree = req.rawBody.trim() === "" ? undefined : parseJsonKeepNumbers(req.rawBody);
      req.body = plain(req.tree);
    } catch {
      req.badJson = true;
    }
    next();
  });
  req.on("error", next);
}

// Outermost hook for a lost answer: the handler marks res.locals.loseAnswer, the gate settles as
// usual, and only then does this hook drop the connection or replace the answer.
function lostAnswerHook(req, res, next) {
  const origEnd = res.end.bind(res);
  const origWrite = res.write.bind(res);
  res.write = (...args) => (res.locals.loseAnswer ? true : origWrite(...args));
  res.end = (...args) => {
    const mode = res.locals.loseAnswer;
    if (!mode) return origEnd(...args);
    if (mode === "drop") {
      res.socket?.destroy();
      return res;
    }
    res.statusCode = 500;
    for (const h of ["content-length", "payment-response", "x-payment-response", "etag"]) res.removeHeader(h);
    res.setHeader("content-type", "application/json");
    return origEnd(JSON.stringify({ error: "injected failure after payment: answer lost" }));
  };
  next();
}

function sendRaw(res, status, text) {
  res.status(status).type("application/json").send(text);
}

export async function startWorker({ spec, facilitatorUrl, usdc, log }) {
  const faults = spec.faults || {};
  const state = {
    busy: false,
    current: null,
    results: new Map(),
    jobs: new Map(),
    calls: 0, // non-probe experiment requests that reached the worker
    runs: 0,
    paidCalls: 0,
  };
  const app = express();
  app.disable("x-powered-by");
  app.set("trust proxy", false);
  app.use(lostAnswerHook);
  app.use(rawJson);

  // Placeholder; the gate needs the endpoint URL, known once listening.
  let endpoint = "";
  let gateMw = (req, res, next) => next();
  app.use((req, res, next) => gateMw(req, res, next));

  const base = SERVICE_PATH;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  const runExperiment = async ({ trainPy, config, tree, id }) => {
    state.runs += 1;
    const runIndex = state.runs;
    const startedAt = new Date();
    state.busy = true;
    state.current = { experiment_id: id, startedAt: startedAt.toISOString() };
    try {
      await sleep(spec.durationMs);
    } finally {
      state.busy = false;
      state.current = null;
    }
    const finishedAt = new Date();
    const failed = runIndex <= (faults.runFails || 0);
    const result = {
      experiment_id: id,
      status: failed ? "failed" : "completed",
      return_code: failed ? 1 : 0,
      val_bpb: failed ? null : valBpb(tree ?? {}),
      train_hash: `sha256:${createHash("sha256").update(trainPy, "utf8").digest("hex")}`,
      artifact_path: `runs/${id}/train.py`,
      log_path: `runs/${id}/run.log`,
      startedAt: startedAt.toISOString(),
      finishedAt: finishedAt.toISOString(),
      durationSeconds: (finishedAt - startedAt) / 1000,
      config,
      ...(failed ? { note: "injected run failure" } : {}),
    };
    // A lying worker: the lie is what it stores and serves, too.
    if (!failed && faults.lie === "negative") result.val_bpb = -result.val_bpb;
    if (faults.lie === "wrongId") result.experiment_id = `${id}-other`;
    let text = JSON.stringify(result);
    if (!failed && faults.lie === "nan") {
      // What Python's json.dumps writes for float("nan"): not valid JSON.
      text = text.replace(/"val_bpb":[^,}]+/, '"val_bpb":NaN');
    }
    const stored = { result, text, finishedAt: finishedAt.toISOString() };
    state.results.set(id, stored);
    return stored;
  };

  app.post(`${base}/experiment`, async (req, res) => {
    if (req.tooLarge) return res.status(413).json({ error: "body too large" });
    if (req.badJson || !req.body || typeof req.body !== "object" || Array.isArray(req.body)) {
      return res.status(400).json({ error: "body must be a JSON object" });
    }
    const b = req.body;
    if (b.probe === true) {
      return res.json({ status: "ok", probe: true, busy: state.busy, worker: spec.name });
    }
    state.calls += 1;
    const call = state.calls;
    if (call <= (faults.failBeforePayment || 0)) {
      return res.status(500).json({ error: "injected failure before payment" });
    }
    if (faults.busy || state.busy) {
      return res.status(409).json({ error: "worker is busy with another experiment", status: "busy" });
    }
    const trainPy = b.train_py ?? b.trainPy;
    const id = b.experiment_id ?? b.experimentId ?? `exp-${randomBytes(8).toString("hex")}`;
    const tree = req.tree.config ?? {};
    const config = b.config ?? {};
    if (typeof trainPy !== "string" || trainPy.length === 0) {
      return res.status(400).json({ error: "train_py must be a non-empty string" });
    }
    if (typeof id !== "string" || !ID_RE.test(id)) {
      return res.status(400).json({ error: "experiment_id must match [A-Za-z0-9_-]+" });
    }
    if (typeof config !== "object" || config === null || Array.isArray(config)) {
      return res.status(400).json({ error: "config must be a JSON object" });
    }
    if (faults.hang) {
      // Accept and never answer; busy until the client gives up.
      state.busy = true;
      state.current = { experiment_id: id, startedAt: new Date().toISOString() };
      req.socket.on("close", () => { state.busy = false; state.current = null; });
      return;
    }
    if (faults.async) {
      const jobId = `job-${randomBytes(8).toString("hex")}`;
      const jobToken = randomBytes(24).toString("hex");
      const job = { jobId, jobToken, experimentId: id, status: "running", createdAt: new Date().toISOString() };
      state.jobs.set(jobId, job);
      runExperiment({ trainPy, config, tree, id }).then(
        (stored) => { job.status = stored.result.status === "completed" ? "completed" : "failed"; job.stored = stored; },
        (e) => { job.status = "failed"; job.error = String(e); },
      );
      return res.status(202).json({
        jobId,
        statusUrl: `${endpoint}/jobs/${jobId}`,
        resultUrl: `${endpoint}/jobs/${jobId}/result`,
        jobToken,
        expiresAt: new Date(Date.now() + 3600_000).toISOString(),
        message: "experiment accepted; poll statusUrl, fetch resultUrl with the job token",
      });
    }
    const lose = state.runs < (faults.failAfterPayment || 0);
    let stored;
    try {
      stored = await runExperiment({ trainPy, config, tree, id });
    } catch (e) {
      return res.status(500).json({ error: `worker error: ${e.message}` });
    }
    if (lose) res.locals.loseAnswer = faults.lostAnswer === "500" ? "500" : "drop";
    sendRaw(res, 200, stored.text);
  });

  app.get(`${base}/health`, (req, res) =>
    res.json({
      status: "ok",
      busy: state.busy || !!faults.busy,
      repo: "autoresearch (testbed stand-in)",
      timeoutSeconds: spec.timeoutSeconds,
    }));
  app.get(`${base}/status`, (req, res) =>
    res.json({
      worker: spec.name,
      busy: state.busy || !!faults.busy,
      current: state.current,
      experiments: state.results.size,
      requests: state.calls,
      runs: state.runs,
      gpu: "testbed-stand-in",
    }));
  app.get(`${base}/best`, (req, res) => {
    let best = null;
    for (const s of state.results.values()) {
      const v = s.result.val_bpb;
      if (typeof v === "number" && Number.isFinite(v) && (!best || v < best.result.val_bpb)) best = s;
    }
    if (!best) return res.status(404).json({ error: "no completed experiment yet" });
    sendRaw(res, 200, best.text);
  });
  app.get(`${base}/experiments/:id`, (req, res) => {
    const s = state.results.get(req.params.id);
    if (!s) return res.status(404).json({ error: `unknown experiment ${req.params.id}` });
    sendRaw(res, 200, s.text);
  });
  app.get(`${base}/jobs/:jobId`, (req, res) => {
    const j = state.jobs.get(req.params.jobId);
    if (!j) return res.status(404).json({ error: "unknown job" });
    res.json({
      jobId: j.jobId,
      status: j.status,
      experimentId: j.experimentId,
      createdAt: j.createdAt,
      resultUrl: `${endpoint}/jobs/${j.jobId}/result`,
    });
  });
  app.get(`${base}/jobs/:jobId/result`, (req, res) => {
    const j = state.jobs.get(req.params.jobId);
    if (!j) return res.status(404).json({ error: "unknown job" });
    if ((req.get("authorization") || "") !== `Bearer ${j.jobToken}`) {
      return res.status(401).json({ error: "job token required" });
    }
    if (j.status === "running") return res.status(202).json({ jobId: j.jobId, status: "running" });
    if (!j.stored) return res.status(500).json({ jobId: j.jobId, status: "failed", error: j.error });
    sendRaw(res, 200, j.stored.text);
  });
  app.use((req, res) => res.status(404).json({ error: `no route ${req.method} ${req.path}` }));
  app.use((err, req, res, next) => {
    if (res.headersSent) return next(err);
    log(`worker ${spec.name}: ${err.message}`);
    res.status(500).json({ error: String(err.message || err) });
  });

  const srv = await listen(app);
  endpoint = `${srv.url}${base}`;
  gateMw = await makeGate({
    kind: spec.gate,
    path: `${base}/experiment`,
    payTo: spec.payTo,
    price: spec.price,
    usdc,
    maxTimeoutSeconds: spec.maxTimeoutSeconds,
    facilitatorUrl,
    resourceUrl: `${endpoint}/experiment`,
    log: (m) => log(`gate ${spec.name}: ${m}`),
  });
  return { endpoint, state, close: srv.close };
}
