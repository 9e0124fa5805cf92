// Stand-in GPU worker (protocols.md section 3) with failure injection, behind a payment gate.
// It runs the submitted train.py as obol-stack's worker does (lib/run.mjs); the faults change
// what happens around the run, or what it reports.
import { createHash, randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import express from "express";
import { Num, plain } from "./landscape.mjs";
import { listen } from "./http.mjs";
import { makeGate } from "./gates.mjs";
import { Float, dumps, loads } from "./pyjson.mjs";
import { pyStrip } from "./valbpb.mjs";
import { runTrain, splitCommand, trainHash, utcNow } from "./run.mjs";

export const SERVICE_PATH = "/services/autoresearch-worker";
const ID_RE = /^[A-Za-z0-9_-]+$/;
export const DEFAULT_TRAIN_COMMAND = "python3 train.py";

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
      req.tree = req.rawBody.trim() === "" ? {} : loads(req.rawBody);
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

// payload.get(name, payload.get(alias)): the alias counts only when the name is absent.
const field = (o, name, alias) => (Object.hasOwn(o, name) ? o[name] : o[alias]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const round6 = (x) => Number(x.toFixed(6));

// exp-YYYYMMDD-<8 hex>, as the real worker names a run without an id.
const generatedId = () => `exp-${new Date().toISOString().slice(0, 10).replaceAll("-", "")}-${randomBytes(4).toString("hex")}`;

// Seeded noise in [-spread, spread] for one experiment id: the same id on the same seed always
// measures the same, as a replayable stand-in for run-to-run variance.
export function seededNoise(seed, id, spread) {
  const u = createHash("sha256").update(`${seed}:${id}`).digest().readBigUInt64BE(0);
  return ((Number(u) / 2 ** 64) * 2 - 1) * spread;
}

// What a faulty worker reports instead of what it measured (it also stores the lie).
function applyFaults(result, faults, { id, seed }) {
  const measured = result.val_bpb?.value;
  if (typeof measured === "number" && Number.isFinite(measured)) {
    let v = measured;
    if (faults.noise) v = round6(v + seededNoise(faults.noise.seed ?? seed, id, faults.noise.spread));
    if (faults.liar) v = round6(v - faults.liar);
    if (faults.lie === "negative") v = -v;
    if (v !== measured) result.val_bpb = new Float(v);
  }
  if (result.status === "completed" && faults.lie === "nan") result.val_bpb = new Float(NaN);
  if (faults.lie === "wrongId") result.experiment_id = `${id}-other`;
  return result;
}

// Settings of one worker, with the real worker's defaults where the testbed has no reason to
// differ (the timeout; the command runs python3 instead of `uv run`).
export function workerSettings(spec) {
  const base = path.join(spec.dataDir, "autoresearch-worker");
  return {
    base,
    resultsDir: path.join(base, "results"),
    repo: spec.repo,
    command: splitCommand(spec.trainCommand ?? DEFAULT_TRAIN_COMMAND),
    timeoutSeconds: spec.timeoutSeconds ?? 300,
    minDurationMs: spec.durationMs ?? 0,
  };
}

// The worker API without a gate: obol-stack's worker_api.py as a stand-in. `ctx.gate` is the
// middleware in front of POST /experiment (none by default), `ctx.endpoint` the public URL.
export function workerApp({ spec, log = () => {} }) {
  const faults = spec.faults || {};
  const settings = workerSettings(spec);
  mkdirSync(settings.resultsDir, { recursive: true });
  const state = {
    busy: false,
    current: null,
    last: null,
    results: new Map(),
    jobs: new Map(),
    calls: 0, // non-probe experiment requests that reached the worker
    runs: 0,
  };
  const ctx = { endpoint: "", gate: (req, res, next) => next() };
  const app = express();
  app.disable("x-powered-by");
  app.set("trust proxy", false);
  app.use(lostAnswerHook);
  app.use(rawJson);
  app.use((req, res, next) => ctx.gate(req, res, next));
  const base = SERVICE_PATH;

  const injectedFailure = async ({ trainPy, config, id }) => {
    const startedAt = utcNow();
    await sleep(settings.minDurationMs);
    return {
      experiment_id: id, status: "failed", return_code: 1, val_bpb: null, train_hash: trainHash(trainPy),
      artifact_path: null, log_path: null, startedAt, finishedAt: utcNow(), durationSeconds: new Float(settings.minDurationMs / 1000),
      config, note: "injected run failure",
    };
  };

  // Stores a result as the real worker does: result.json, results.jsonl, best.json.
  const record = (id, result) => {
    const expDir = path.join(settings.resultsDir, id);
    mkdirSync(expDir, { recursive: true });
    writeFileSync(path.join(expDir, "result.json"), dumps(result, 2));
    const text = dumps(result);
    appendFileSync(path.join(settings.base, "results.jsonl"), `${text}\n`);
    const stored = { result, text, value: result.val_bpb?.value ?? null };
    state.results.set(id, stored);
    const best = bestStored();
    if (best === stored) writeFileSync(path.join(settings.base, "best.json"), dumps(result, 2));
    state.last = stored;
    return stored;
  };

  const bestStored = () => {
    let best = null;
    for (const s of state.results.values()) {
      if (typeof s.value === "number" && Number.isFinite(s.value) && (!best || s.value < best.value)) best = s;
    }
    return best;
  };

  // Single flight: busy is set before the first await, so a second request sees it.
  const runExperiment = async ({ trainPy, config, id }) => {
    state.runs += 1;
    const runIndex = state.runs;
    state.busy = true;
    state.current = { experiment_id: id, startedAt: utcNow() };
    try {
      const result = runIndex <= (faults.runFails || 0)
        ? await injectedFailure({ trainPy, config, id })
        : (await runTrain(settings, { id, trainPy, config })).result;
      return record(id, applyFaults(result, faults, { id, seed: spec.name }));
    } finally {
      state.busy = false;
      state.current = null;
    }
  };

  app.post(`${base}/experiment`, async (req, res) => {
    if (req.tooLarge) return res.status(413).json({ error: "body too large" });
    if (req.badJson) return res.status(400).json({ error: "invalid JSON body" });
    const b = req.body;
    if (!b || typeof b !== "object" || Array.isArray(b)) return res.status(400).json({ error: "JSON body must be an object" });
    if (b.probe === true) {
      return res.json({ status: "ok", probe: true, busy: state.busy, timeoutSeconds: settings.timeoutSeconds, worker: spec.name });
    }
    state.calls += 1;
    if (state.calls <= (faults.failBeforePayment || 0)) {
      return res.status(500).json({ error: "injected failure before payment" });
    }
    const trainPy = field(b, "train_py", "trainPy");
    if (typeof trainPy !== "string" || pyStrip(trainPy) === "") return res.status(400).json({ error: "train_py string is required" });
    const config = req.tree.config ?? {};
    if (typeof config !== "object" || Array.isArray(config) || config instanceof Num) {
      return res.status(400).json({ error: "config must be a JSON object when provided" });
    }
    const given = field(b, "experiment_id", "experimentId");
    if (given !== undefined && given !== null && typeof given !== "string") {
      return res.status(400).json({ error: "experiment_id must be a string when provided" });
    }
    if (typeof given === "string" && !ID_RE.test(given)) {
      return res.status(400).json({ error: "experiment_id must contain only alphanumeric characters, hyphens, or underscores" });
    }
    if (faults.busy || state.busy) {
      return res.status(409).json({ error: "worker is already running an experiment", status: "busy" });
    }
    const id = given ?? generatedId();
    if (faults.hang) {
      // Accept and never answer; busy until the client gives up.
      state.busy = true;
      state.current = { experiment_id: id, startedAt: utcNow() };
      req.socket.on("close", () => { state.busy = false; state.current = null; });
      return;
    }
    if (faults.async) return acceptJob(res, runExperiment({ trainPy, config, id }), id);
    const lose = state.runs < (faults.failAfterPayment || 0);
    let stored;
    try {
      stored = await runExperiment({ trainPy, config, id });
    } catch (e) {
      return res.status(500).json({ error: `internal worker error: ${e.message}` });
    }
    if (lose) res.locals.loseAnswer = faults.lostAnswer === "500" ? "500" : "drop";
    sendRaw(res, 200, stored.text);
  });

  const acceptJob = (res, running, id) => {
    const jobId = `job-${randomBytes(8).toString("hex")}`;
    const jobToken = randomBytes(24).toString("hex");
    const job = { jobId, jobToken, experimentId: id, status: "running", createdAt: new Date().toISOString() };
    state.jobs.set(jobId, job);
    running.then(
      (stored) => { job.status = stored.result.status === "completed" ? "completed" : "failed"; job.stored = stored; },
      (e) => { job.status = "failed"; job.error = String(e); },
    );
    res.status(202).json({
      jobId,
      statusUrl: `${ctx.endpoint}/jobs/${jobId}`,
      resultUrl: `${ctx.endpoint}/jobs/${jobId}/result`,
      jobToken,
      expiresAt: new Date(Date.now() + 3600_000).toISOString(),
      message: "experiment accepted; poll statusUrl, fetch resultUrl with the job token",
    });
  };

  app.get([`${base}/health`, `${base}/healthz`], (req, res) =>
    res.json({ status: "ok", busy: state.busy || !!faults.busy, repo: settings.repo ?? null, timeoutSeconds: settings.timeoutSeconds }));
  app.get(`${base}/status`, (req, res) =>
    res.json({
      status: state.busy || faults.busy ? "busy" : "idle",
      current: state.current,
      last: state.last?.result ?? null,
      best: bestStored()?.result ?? null,
      repo: settings.repo ?? null,
      command: settings.command,
      timeoutSeconds: settings.timeoutSeconds,
      worker: spec.name,
      busy: state.busy || !!faults.busy,
      experiments: state.results.size,
      requests: state.calls,
      runs: state.runs,
    }));
  app.get(`${base}/best`, (req, res) => {
    const best = bestStored();
    if (!best) return res.status(404).json({ error: "no completed experiments yet" });
    sendRaw(res, 200, best.text);
  });
  app.get(`${base}/experiments/:id`, (req, res) => {
    if (!ID_RE.test(req.params.id)) return res.status(400).json({ error: "invalid experiment id" });
    const s = state.results.get(req.params.id);
    if (!s) return res.status(404).json({ error: `experiment ${req.params.id} not found` });
    sendRaw(res, 200, s.text);
  });
  app.get(`${base}/jobs/:jobId`, (req, res) => {
    const j = state.jobs.get(req.params.jobId);
    if (!j) return res.status(404).json({ error: "unknown job" });
    res.json({ jobId: j.jobId, status: j.status, experimentId: j.experimentId, createdAt: j.createdAt, resultUrl: `${ctx.endpoint}/jobs/${j.jobId}/result` });
  });
  app.get(`${base}/jobs/:jobId/result`, (req, res) => {
    const j = state.jobs.get(req.params.jobId);
    if (!j) return res.status(404).json({ error: "unknown job" });
    if ((req.get("authorization") || "") !== `Bearer ${j.jobToken}`) return res.status(401).json({ error: "job token required" });
    if (j.status === "running") return res.status(202).json({ jobId: j.jobId, status: "running" });
    if (!j.stored) return res.status(500).json({ jobId: j.jobId, status: "failed", error: j.error });
    sendRaw(res, 200, j.stored.text);
  });
  app.use((req, res) => res.status(404).json({ error: `unknown endpoint: ${req.path}` }));
  app.use((err, req, res, next) => {
    if (res.headersSent) return next(err);
    log(`worker ${spec.name}: ${err.message}`);
    res.status(500).json({ error: String(err.message || err) });
  });
  return { app, state, ctx, settings };
}

// A worker behind its payment gate, listening on loopback.
export async function startWorker({ spec, facilitatorUrl, usdc, log }) {
  const { app, state, ctx, settings } = workerApp({ spec, log });
  const srv = await listen(app);
  ctx.endpoint = `${srv.url}${SERVICE_PATH}`;
  ctx.gate = await makeGate({
    kind: spec.gate,
    path: `${SERVICE_PATH}/experiment`,
    payTo: spec.payTo,
    price: spec.price,
    usdc,
    maxTimeoutSeconds: spec.maxTimeoutSeconds,
    facilitatorUrl,
    resourceUrl: `${ctx.endpoint}/experiment`,
    log: (m) => log(`gate ${spec.name}: ${m}`),
  });
  return { endpoint: ctx.endpoint, state, settings, close: srv.close };
}
