"""A train.py that trains nothing: it scores its config on the landscape of testbed/LANDSCAPE.md.

For campaigns that search `config` (search.applyTo: config). The worker writes the request's
config to a file and passes its path in AUTORESEARCH_EXPERIMENT_CONFIG (obol-stack's worker
contract); this script reads it, computes val_bpb exactly as the coordinator's
strategy::landscape does, and prints it in the format autoresearch's train.py uses. Tests
submit it so that the worker really runs what it is sent and the expected values stay exact.
"""

import hashlib
import json
import math
import os


def serde_float(x):
    """A float the way serde_json prints it (shortest digits, ".0" when integral, exponent
    below 1e-5 and from 1e16), so the hashed text matches the coordinator's canonical JSON."""
    if x == 0:
        return "-0.0" if math.copysign(1, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    # repr() has the shortest round-trip digits; only their layout differs from serde_json's.
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    point = len(whole) + int(exp or 0) - (len(whole + frac) - len((whole + frac).lstrip("0")))
    digits = digits.rstrip("0")
    if len(digits) <= point <= 16:
        return sign + digits + "0" * (point - len(digits)) + ".0"
    if 0 < point <= 16:
        return sign + digits[:point] + "." + digits[point:]
    if -5 < point <= 0:
        return sign + "0." + "0" * -point + digits
    tail = "." + digits[1:] if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{tail}e{point - 1}"


def canonical_json(v):
    """serde_json's compact form with keys sorted at every level."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, int):
        # serde_json keeps integers that fit i64/u64; larger ones were f64 on the sender's side.
        return str(v) if -(2**63) <= v < 2**64 else serde_float(float(v))
    if isinstance(v, float):
        return serde_float(v) if math.isfinite(v) else "null"
    if isinstance(v, list):
        return "[" + ",".join(canonical_json(x) for x in v) + "]"
    items = sorted(v.items())
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical_json(x) for k, x in items) + "}"


def number(config, key):
    x = config.get(key)
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def positive(config, key):
    x = number(config, key)
    return x if x is not None and x > 0 else None


def or_default(x, default):
    return default if x is None else x


def round_half_away(x):
    """f64::round: halves away from zero (Python's round() rounds halves to even)."""
    whole = math.floor(x)
    return whole + 1 if x - whole >= 0.5 else whole


def val_bpb(config):
    lr = or_default(positive(config, "lr"), 0.01)
    depth = or_default(number(config, "depth"), 6.0)
    warmup = or_default(number(config, "warmup_ratio"), 0.0)
    batch = or_default(positive(config, "batch_size"), 32.0)
    digest = hashlib.sha256(canonical_json(config).encode()).digest()
    noise = (int.from_bytes(digest[:8], "big") / 2**64 * 2 - 1) * 0.001
    a = math.log10(lr / 0.004)
    b = math.log10(batch / 64)
    value = 0.960 + 0.050 * (a * a) + 0.002 * ((depth - 8) * (depth - 8)) + 0.100 * ((warmup - 0.1) * (warmup - 0.1))
    value = value + 0.020 * (b * b) + noise
    return round_half_away(value * 1e6) / 1e6


def main():
    path = os.environ.get("AUTORESEARCH_EXPERIMENT_CONFIG")
    config = {}
    if path:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    if not isinstance(config, dict):
        config = {}
    print("config:", canonical_json(config))
    print(f"val_bpb: {val_bpb(config):.6f}")


if __name__ == "__main__":
    main()
