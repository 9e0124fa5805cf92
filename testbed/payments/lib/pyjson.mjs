// JSON the way obol-stack's worker (stdlib Python) reads and writes it: `json.loads` accepts
// NaN and Infinity, `json.dumps` writes floats with repr(), escapes non-ASCII, separates with
// ", " and ": ", and writes NaN/Infinity as bare tokens (allow_nan=True). Written here because
// the stand-in must answer byte for byte what the real worker would, quirks included.
import { Num, parseJsonKeepNumbers } from "./landscape.mjs";

// A Python float (JS numbers alone cannot tell 1.0 from 1).
export class Float {
  constructor(value) {
    this.value = value;
  }
}

// Python's repr(float): shortest round-trip digits, fixed notation for exponents -4..15,
// otherwise d.ddde±XX.
export function floatRepr(x) {
  if (Number.isNaN(x)) return "NaN";
  if (x === Infinity) return "Infinity";
  if (x === -Infinity) return "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mant, expStr] = Math.abs(x).toExponential().split("e");
  const digits = mant.replace(".", "");
  const e = Number(expStr);
  if (e >= -4 && e < 16) {
    if (e < 0) return `${sign}0.${"0".repeat(-e - 1)}${digits}`;
    const int = digits.slice(0, e + 1).padEnd(e + 1, "0");
    return `${sign}${int}.${digits.slice(e + 1) || "0"}`;
  }
  const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  const exp = String(Math.abs(e)).padStart(2, "0");
  return `${sign}${m}e${e < 0 ? "-" : "+"}${exp}`;
}

// Whether a JSON number text is an int for Python's json (no fraction, no exponent).
const isIntText = (text) => /^-?\d+$/.test(text);

// Python's float() of what json.loads produced for a number. An int too large for a double
// raises OverflowError in Python; it does here too.
export function numToFloat(n) {
  const x = Number(n.text);
  if (isIntText(n.text) && !Number.isFinite(x)) throw new RangeError("int too large to convert to float");
  return x;
}

function dumpString(s) {
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

function dumpNumber(v) {
  if (v instanceof Float) return floatRepr(v.value);
  if (v instanceof Num) return isIntText(v.text) ? BigInt(v.text).toString() : floatRepr(Number(v.text));
  return Number.isInteger(v) ? String(v) : floatRepr(v);
}

// json.dumps(value) (indent undefined) or json.dumps(value, indent=N).
export function dumps(value, indent) {
  const nl = (depth) => (indent === undefined ? "" : `\n${" ".repeat(indent * depth)}`);
  const sep = indent === undefined ? ", " : ",";
  const walk = (v, depth) => {
    if (v === null || v === undefined) return "null";
    if (v === true) return "true";
    if (v === false) return "false";
    if (typeof v === "string") return dumpString(v);
    if (typeof v === "number" || v instanceof Float || v instanceof Num) return dumpNumber(v);
    if (Array.isArray(v)) {
      if (v.length === 0) return "[]";
      const items = v.map((x) => nl(depth + 1) + walk(x, depth + 1));
      return `[${items.join(sep)}${nl(depth)}]`;
    }
    const entries = Object.entries(v).filter(([, x]) => x !== undefined);
    if (entries.length === 0) return "{}";
    const items = entries.map(([k, x]) => `${nl(depth + 1)}${dumpString(k)}: ${walk(x, depth + 1)}`);
    return `{${items.join(sep)}${nl(depth)}}`;
  };
  return walk(value, 0);
}

// json.loads(text) with numbers kept as Num (their text), NaN/Infinity accepted as Python does.
export function loads(text) {
  return parseJsonKeepNumbers(text, { nonFinite: true });
}
