// The simulated val_bpb function of testbed/LANDSCAPE.md, with serde_json-compatible canonical JSON.
import { createHash } from "node:crypto";

// A JSON number kept with its source text, so canonical JSON can print it the way serde_json does.
export class Num {
  constructor(text) {
    this.text = text;
    this.value = Number(text);
  }
}

// Minimal JSON parser that keeps numbers as Num. Throws SyntaxError on bad input. With
// `nonFinite`, it also takes Python's NaN, Infinity and -Infinity tokens (as Num).
export function parseJsonKeepNumbers(text, { nonFinite = false } = {}) {
  let i = 0;
  const ws = () => { while (i < text.length && " \t\n\r".includes(text[i])) i++; };
  const err = (m) => { throw new SyntaxError(`${m} at ${i}`); };
  const value = () => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++; const o = {}; ws();
      if (text[i] === "}") { i++; return o; }
      for (;;) {
        ws(); if (text[i] !== '"') err("expected key");
        const k = str(); ws(); if (text[i] !== ":") err("expected :"); i++;
        o[k] = value(); ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "}") { i++; return o; }
        err("expected , or }");
      }
    }
    if (c === "[") {
      i++; const a = []; ws();
      if (text[i] === "]") { i++; return a; }
      for (;;) {
        a.push(value()); ws();
        if (text[i] === ",") { i++; continue; }
        if (text[i] === "]") { i++; return a; }
        err("expected , or ]");
      }
    }
    if (c === '"') return str();
    if (text.startsWith("true", i)) { i += 4; return true; }
    if (text.startsWith("false", i)) { i += 5; return false; }
    if (text.startsWith("null", i)) { i += 4; return null; }
    if (nonFinite) {
      for (const t of ["NaN", "Infinity", "-Infinity"]) {
        if (text.startsWith(t, i)) { i += t.length; return new Num(t); }
      }
    }
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m || m[0] === "" || m[0] === "-") err("unexpected token");
    i += m[0].length;
    return new Num(m[0]);
  };
  const str = () => {
    const m = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(text.slice(i));
    if (!m) err("bad string");
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const v = value();
  ws();
  if (i !== text.length) err("trailing data");
  return v;
}

// Plain JS value (numbers as numbers) from a Num-keeping tree.
export function plain(v) {
  if (v instanceof Num) return v.value;
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = plain(x);
    return o;
  }
  return v;
}

// f64 the way serde_json prints it (ryu-style: shortest digits, ".0" for integral values,
// scientific notation below 1e-5 and from 1e16).
function formatF64(x) {
  if (!Number.isFinite(x)) return "null";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const sign = x < 0 ? "-" : "";
  const [mant, expStr] = Math.abs(x).toExponential().split("e");
  const digits = mant.replace(".", "");
  const len = digits.length;
  const kk = Number(expStr) + 1; // position of the decimal point relative to the digits
  const k = kk - len;
  let out;
  if (k >= 0 && kk <= 16) out = digits + "0".repeat(k) + ".0";
  else if (kk > 0 && kk <= 16) out = digits.slice(0, kk) + "." + digits.slice(kk);
  else if (kk > -5 && kk <= 0) out = "0." + "0".repeat(-kk) + digits;
  else if (len === 1) out = `${digits}e${kk - 1}`;
  else out = `${digits[0]}.${digits.slice(1)}e${kk - 1}`;
  return sign + out;
}

function formatNum(n) {
  // serde_json keeps integers (fitting i64/u64) as integers and turns everything else into f64.
  if (/^-?\d+$/.test(n.text)) {
    const b = BigInt(n.text);
    if (b >= -(2n ** 63n) && b < 2n ** 64n) return b.toString();
  }
  return formatF64(n.value);
}

export function canonicalJson(v) {
  if (v instanceof Num) return formatNum(v);
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : formatF64(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v && typeof v === "object") {
    const keys = Object.keys(v).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

function num(v) {
  if (v instanceof Num) return v.value;
  if (typeof v === "number") return v;
  return undefined;
}

// config: a Num-keeping object (or plain object). Returns val_bpb rounded to 6 decimals.
export function valBpb(config) {
  const c = config && typeof config === "object" && !Array.isArray(config) ? config : {};
  const positive = (k, d) => { const x = num(c[k]); return x !== undefined && x > 0 ? x : d; };
  const any = (k, d) => { const x = num(c[k]); return x !== undefined && Number.isFinite(x) ? x : d; };
  const lr = positive("lr", 0.01);
  const depth = any("depth", 6);
  const warmup = any("warmup_ratio", 0.0);
  const batch = positive("batch_size", 32);
  const digest = createHash("sha256").update(canonicalJson(c)).digest();
  const u = digest.readBigUInt64BE(0);
  const noise = ((Number(u) / 2 ** 64) * 2 - 1) * 0.001;
  const v = 0.96
    + 0.05 * Math.log10(lr / 0.004) ** 2
    + 0.002 * (depth - 8) ** 2
    + 0.1 * (warmup - 0.1) ** 2
    + 0.02 * Math.log10(batch / 64) ** 2
    + noise;
  return Math.round(v * 1e6) / 1e6;
}
