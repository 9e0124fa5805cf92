// Stand-in for obol-stack's remote signer (protocols.md section 5).
import express from "express";
import { getAddress, isAddress, isHex } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { listen } from "./http.mjs";

export const SIGNER_MODES = ["normal", "vZeroOne", "wrongKey", "unauthorized"];

// key: the key whose address is served; wrongKey: used instead in mode "wrongKey".
export async function startSigner({ key, wrongKey, token, mode = "normal" }) {
  if (!SIGNER_MODES.includes(mode)) throw new Error(`unknown signer mode ${mode}`);
  const account = privateKeyToAccount(key);
  const signing = mode === "wrongKey" ? privateKeyToAccount(wrongKey) : account;
  const app = express();

  const fail = (res, status, code, error, address) =>
    res.status(status).json({ error, code, address: address ?? "" });

  const finish = (sig) => {
    if (mode !== "vZeroOne") return sig;
    const v = parseInt(sig.slice(130, 132), 16);
    const v01 = v >= 27 ? v - 27 : v;
    return sig.slice(0, 130) + v01.toString(16).padStart(2, "0");
  };

  app.get("/healthz", (req, res) => res.json({ status: "ok" }));

  app.use("/api/v1", (req, res, next) => {
    if (mode === "unauthorized") return fail(res, 401, "UNAUTHORIZED", "unauthorized");
    if (token) {
      const auth = req.get("authorization") || "";
      if (auth !== `Bearer ${token}`) return fail(res, 401, "UNAUTHORIZED", "unauthorized");
    }
    next();
  });
  app.use("/api/v1", express.json({ limit: "1mb", type: () => true }));
  app.use("/api/v1", (err, req, res, next) => fail(res, 400, "BAD_REQUEST", "invalid JSON body"));

  app.get("/api/v1/keys", (req, res) => res.json({ keys: [account.address] }));

  // Resolves {address} or answers an error; returns the canonical address or null.
  const resolve = (req, res) => {
    const raw = req.params.address;
    if (!isAddress(raw, { strict: false })) {
      fail(res, 400, "BAD_REQUEST", `invalid address: ${raw}`, raw);
      return null;
    }
    const addr = getAddress(raw);
    if (addr !== account.address) {
      fail(res, 404, "SIGNER_NOT_FOUND", `no key for address ${addr}`, addr);
      return null;
    }
    if (!req.body || typeof req.body !== "object" || Array.isArray(req.body)) {
      fail(res, 400, "BAD_REQUEST", "body must be a JSON object", addr);
      return null;
    }
    return addr;
  };

  app.post("/api/v1/sign/:address/typed-data", async (req, res) => {
    const addr = resolve(req, res);
    if (!addr) return;
    const body = req.body;
    for (const f of ["types", "primaryType", "domain", "message"]) {
      if (body[f] === undefined || body[f] === null) {
        return fail(res, 422, "MISSING_FIELD", `missing field: ${f}`, addr);
      }
    }
    if (typeof body.types !== "object" || !body.types[body.primaryType]) {
      return fail(res, 400, "BAD_REQUEST", `types has no entry for primaryType ${body.primaryType}`, addr);
    }
    // Quirk kept on purpose: without an EIP712Domain entry in types, the domain is hashed as an
    // empty struct, as some signers do. The signature is then valid-looking but wrong.
    const types = { ...body.types };
    let domain = body.domain;
    if (!types.EIP712Domain) {
      types.EIP712Domain = [];
      domain = {};
    }
    try {
      const sig = await signing.signTypedData({
        domain,
        types,
        primaryType: body.primaryType,
        message: body.message,
      });
      res.json({ signature: finish(sig) });
    } catch (e) {
      fail(res, 500, "SIGNING_ERROR", `signing failed: ${e.shortMessage || e.message}`, addr);
    }
  });

  app.post("/api/v1/sign/:address/hash", async (req, res) => {
    const addr = resolve(req, res);
    if (!addr) return;
    const { hash } = req.body;
    if (hash === undefined || hash === null) return fail(res, 422, "MISSING_FIELD", "missing field: hash", addr);
    if (!isHex(hash) || hash.length !== 66) return fail(res, 400, "BAD_REQUEST", "hash must be 32 bytes of 0x hex", addr);
    try {
      res.json({ signature: finish(await signing.sign({ hash })) });
    } catch (e) {
      fail(res, 500, "SIGNING_ERROR", `signing failed: ${e.shortMessage || e.message}`, addr);
    }
  });

  app.post("/api/v1/sign/:address/message", async (req, res) => {
    const addr = resolve(req, res);
    if (!addr) return;
    const { message } = req.body;
    if (message === undefined || message === null) return fail(res, 422, "MISSING_FIELD", "missing field: message", addr);
    if (typeof message !== "string") return fail(res, 400, "BAD_REQUEST", "message must be a string", addr);
    try {
      const msg = isHex(message) ? { raw: message } : message;
      res.json({ signature: finish(await signing.signMessage({ message: msg })) });
    } catch (e) {
      fail(res, 500, "SIGNING_ERROR", `signing failed: ${e.shortMessage || e.message}`, addr);
    }
  });

  app.post("/api/v1/sign/:address/transaction", (req, res) => {
    const addr = resolve(req, res);
    if (!addr) return;
    fail(res, 400, "BAD_REQUEST", "transaction signing is not implemented by the testbed signer", addr);
  });

  app.use((req, res) => fail(res, 404, "NOT_FOUND", `no route ${req.method} ${req.path}`));

  const srv = await listen(app);
  return { url: srv.url, token: token ?? null, address: account.address, mode, close: srv.close };
}
