// How obol-stack's worker finds val_bpb in a run (protocols.md section 3, step 4), in its order:
// the whole log as one JSON object (val_bpb, else metrics.val_bpb), else the first match of each
// text pattern in turn, else the lowest val_bpb of work/results.tsv, else null. Python's
// semantics are kept where they show: str.strip(), float() of strings and booleans, \b and \s
// over Unicode, case-insensitive matching.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { Num } from "./landscape.mjs";
import { loads, numToFloat } from "./pyjson.mjs";

// Characters Python's str.isspace() (and so strip() and \s) takes as whitespace.
const PY_SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const STRIP_RE = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, "g");
// Python's \w for str patterns: letters, numbers, underscore.
const B_BEFORE = "(?<![\\p{L}\\p{N}_])";
const B_AFTER = "(?![\\p{L}\\p{N}_])";
const S = `[${PY_SPACE}]*`;
const NUMBER = "([0-9]+(?:\\.[0-9]+)?)";
const PATTERNS = [
  `${B_BEFORE}val_bpb${B_AFTER}${S}[:=]${S}${NUMBER}`,
  `${B_BEFORE}best[_ ]val[_ ]bpb${B_AFTER}${S}[:=]${S}${NUMBER}`,
  `"val_bpb"${S}:${S}${NUMBER}`,
].map((p) => new RegExp(p, "iu"));

export const pyStrip = (s) => s.replace(STRIP_RE, "");

// Python's float(x) for what json.loads can produce; throws where Python raises ValueError or
// TypeError (the caller falls through), RangeError where it raises OverflowError.
export function pyFloat(v) {
  if (v instanceof Num) return numToFloat(v);
  if (v === true) return 1;
  if (v === false) return 0;
  if (typeof v === "string") return floatFromString(v);
  throw new TypeError("float() argument must be a string or a real number");
}

const DIGITS = "\\d(?:_?\\d)*";
const FLOAT_RE = new RegExp(`^[+-]?(?:${DIGITS}(?:\\.(?:${DIGITS})?)?|\\.${DIGITS})(?:[eE][+-]?${DIGITS})?$`);
const SPECIAL_RE = /^([+-]?)(inf|infinity|nan)$/i;

function floatFromString(s) {
  const t = pyStrip(s);
  const special = SPECIAL_RE.exec(t);
  if (special) return special[2].toLowerCase() === "nan" ? NaN : special[1] === "-" ? -Infinity : Infinity;
  if (!FLOAT_RE.test(t)) throw new TypeError(`could not convert string to float: '${s}'`);
  return Number(t.replaceAll("_", ""));
}

function fromJsonObject(text) {
  let data;
  try {
    data = loads(text);
  } catch {
    return undefined;
  }
  if (!data || typeof data !== "object" || Array.isArray(data) || data instanceof Num) return undefined;
  const field = (o) => (Object.hasOwn(o, "val_bpb") && o.val_bpb !== null ? o.val_bpb : undefined);
  const tryFloat = (v) => {
    try {
      return pyFloat(v);
    } catch (e) {
      if (e instanceof RangeError) throw e; // OverflowError is not caught by the real worker
      return undefined;
    }
  };
  if (field(data) !== undefined) return tryFloat(field(data));
  const m = data.metrics;
  if (m && typeof m === "object" && !Array.isArray(m) && !(m instanceof Num) && field(m) !== undefined) {
    return tryFloat(field(m));
  }
  return undefined;
}

// The lowest val_bpb column value of a tab-separated results.tsv (header line first).
function fromResultsTsv(workdir) {
  const file = path.join(workdir, "results.tsv");
  if (!existsSync(file)) return null;
  const lines = readFileSync(file, "utf8").split(/\r?\n/).filter((l) => l !== "");
  if (lines.length === 0) return null;
  const header = lines[0].split("\t");
  const col = header.lastIndexOf("val_bpb");
  let best = null;
  for (const line of lines.slice(1)) {
    const value = col < 0 ? undefined : line.split("\t")[col];
    if (!value) continue;
    let parsed;
    try {
      parsed = floatFromString(value);
    } catch {
      continue;
    }
    if (best === null || parsed < best) best = parsed;
  }
  return best;
}

// val_bpb of a run from its log text (stdout, then stderr) and its work directory; null if none.
export function extractValBpb(logText, workdir) {
  const stripped = pyStrip(logText || "");
  if (stripped) {
    const fromJson = fromJsonObject(stripped);
    if (fromJson !== undefined) return fromJson;
    for (const re of PATTERNS) {
      const m = re.exec(stripped);
      if (m) return Number(m[1]);
    }
  }
  return workdir ? fromResultsTsv(workdir) : null;
}
