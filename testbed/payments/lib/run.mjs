// One experiment run as obol-stack's worker does it (protocols.md section 3, steps 2 to 4): copy
// the repo into a fresh work directory, write train.py and config.json, run the train command
// there with a timeout and the AUTORESEARCH_EXPERIMENT_* environment, keep stdout and stderr in
// run.log, and read val_bpb from them.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { constants, cpSync, existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import path from "node:path";
import { Float, dumps } from "./pyjson.mjs";
import { extractValBpb } from "./valbpb.mjs";

// Names the real worker does not copy from its repo (shutil.ignore_patterns, at any depth).
const COPY_IGNORE = new Set([".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", "worktrees", "queue", "results"]);
const CHECKPOINT_EXTENSIONS = [".gguf", ".safetensors", ".pt", ".pth", ".bin"];
// The real worker keeps all output; a cap keeps a runaway script from filling the testbed's memory.
const OUTPUT_CAP = 32 * 1024 * 1024;

// Process groups of runs in progress: killed when the testbed exits, so no train.py outlives it.
const running = new Set();
process.on("exit", () => {
  for (const pid of running) {
    try {
      process.kill(-pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});

export const trainHash = (source) => `sha256:${createHash("sha256").update(source, "utf8").digest("hex")}`;

// datetime.now(timezone.utc).isoformat()
export const utcNow = () => new Date().toISOString().replace("Z", "000+00:00");

// shlex.split for the usual cases (whitespace, single and double quotes); an array is taken as is.
export function splitCommand(command) {
  if (Array.isArray(command)) return command.map(String);
  const words = [];
  const re = /"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g;
  for (const m of String(command).matchAll(re)) words.push(m[1]?.replace(/\\(.)/g, "$1") ?? m[2] ?? m[3]);
  return words;
}

// Creates <expDir>/work: a copy of the repo, or an empty directory when there is no repo. Like
// shutil.copytree, it fails when the work directory exists (an id that already ran).
function prepareWorkdir(repo, workdir) {
  if (repo && existsSync(repo)) {
    if (existsSync(workdir)) throw new Error(`[Errno 17] File exists: '${workdir}'`);
    cpSync(repo, workdir, { recursive: true, filter: (src) => src === repo || !COPY_IGNORE.has(path.basename(src)) });
  } else {
    mkdirSync(workdir, { recursive: true });
  }
}

function newestArtifact(root) {
  let best = null;
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== ".git") walk(p);
      } else if (e.isFile() && CHECKPOINT_EXTENSIONS.some((x) => e.name.endsWith(x))) {
        const mtime = statSync(p).mtimeMs;
        if (!best || mtime > best.mtime) best = { p, mtime };
      }
    }
  };
  walk(root);
  return best ? best.p : null;
}

// Runs argv in cwd; resolves {stdout, stderr, returnCode, status, note}. A timeout kills the whole
// process group (the real worker kills the child only; a group kill also stops what it started).
function execute(argv, { cwd, env, timeoutMs }) {
  return new Promise((resolve) => {
    const out = { stdout: [], stderr: [], size: { stdout: 0, stderr: 0 } };
    let child;
    try {
      child = spawn(argv[0], argv.slice(1), { cwd, env, detached: true, stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      resolve({ stdout: "", stderr: String(e.message), returnCode: -1, status: "failed", note: `failed to execute command: ${e.message}` });
      return;
    }
    if (child.pid) running.add(child.pid);
    for (const k of ["stdout", "stderr"]) {
      child[k].on("data", (d) => {
        if (out.size[k] < OUTPUT_CAP) out[k].push(d);
        out.size[k] += d.length;
      });
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        child.kill("SIGKILL");
      }
    }, timeoutMs);
    let spawnError = null;
    child.on("error", (e) => { spawnError = e; });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      running.delete(child.pid);
      const text = (k) => Buffer.concat(out[k]).toString("utf8");
      if (spawnError) {
        const desc = { ENOENT: "No such file or directory", EACCES: "Permission denied" }[spawnError.code] ?? spawnError.code;
        const why = `[Errno ${Math.abs(spawnError.errno ?? 2)}] ${desc}: '${argv[0]}'`;
        resolve({ stdout: "", stderr: why, returnCode: -1, status: "failed", note: `failed to execute command: ${why}` });
        return;
      }
      const res = { stdout: text("stdout"), stderr: text("stderr") };
      if (timedOut) return resolve({ ...res, returnCode: -1, status: "timeout", note: `experiment exceeded timeout of ${timeoutMs / 1000}s` });
      // Python reports death by signal N as return code -N.
      const returnCode = code ?? -(constants.signals[signal] ?? 1);
      if (returnCode !== 0) return resolve({ ...res, returnCode, status: "failed", note: `command exited with status ${returnCode}` });
      resolve({ ...res, returnCode: 0, status: "completed", note: null });
    });
  });
}

// Runs one experiment. `config` is the request's config (a Num-keeping tree, written as Python
// would write it). `minDurationMs` stands in for GPU time: the run takes at least that long.
export async function runTrain({ resultsDir, repo, command, timeoutSeconds, minDurationMs = 0 }, { id, trainPy, config }) {
  const expDir = path.join(resultsDir, id);
  const workdir = path.join(expDir, "work");
  mkdirSync(expDir, { recursive: true });
  const started = Date.now();
  const startedAt = utcNow();
  prepareWorkdir(repo, workdir);
  writeFileSync(path.join(workdir, "train.py"), trainPy, "utf8");
  writeFileSync(path.join(expDir, "train.py"), trainPy, "utf8");
  const configPath = path.join(expDir, "config.json");
  writeFileSync(configPath, dumps(config, 2), "utf8");
  const env = {
    ...process.env,
    PYTHONUNBUFFERED: process.env.PYTHONUNBUFFERED ?? "1",
    AUTORESEARCH_EXPERIMENT_ID: id,
    AUTORESEARCH_EXPERIMENT_DIR: expDir,
    AUTORESEARCH_EXPERIMENT_CONFIG: configPath,
  };
  const run = await execute(splitCommand(command), { cwd: workdir, env, timeoutMs: timeoutSeconds * 1000 });
  const pad = minDurationMs - (Date.now() - started);
  if (pad > 0) await new Promise((r) => setTimeout(r, pad));
  let logText = run.stdout;
  if (run.stderr) logText += (logText ? "\n--- stderr ---\n" : "") + run.stderr;
  const logPath = path.join(expDir, "run.log");
  writeFileSync(logPath, logText, "utf8");
  const valBpb = extractValBpb(logText, workdir);
  const result = {
    experiment_id: id,
    status: run.status,
    return_code: run.returnCode,
    val_bpb: valBpb === null ? null : new Float(valBpb),
    train_hash: trainHash(trainPy),
    artifact_path: newestArtifact(workdir),
    log_path: logPath,
    startedAt,
    finishedAt: utcNow(),
    durationSeconds: new Float(Math.round(Date.now() - started) / 1000),
    config,
  };
  if (run.note) result.note = run.note;
  return { result, expDir };
}
