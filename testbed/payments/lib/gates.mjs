// Payment gates in front of a worker's POST .../experiment:
//   v2   the reference @x402/express middleware (PAYMENT-SIGNATURE, eip155:84532)
//   v1   the reference x402-express v1 middleware (X-PAYMENT, base-sepolia)
//   obol a stand-in of obol-stack's verifier, written from protocols.md section 4
import { paymentMiddleware as paymentMiddlewareV2, x402ResourceServer } from "@x402/express";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { ExactEvmScheme as ExactEvmServerScheme } from "@x402/evm/exact/server";
import { paymentMiddleware as paymentMiddlewareV1 } from "x402-express";
import { getAddress } from "viem";
import { CHAIN_ID } from "./chain.mjs";

export const GATE_KINDS = ["v2", "v1", "obol"];
export const NETWORK_V2 = `eip155:${CHAIN_ID}`;
export const NETWORK_V1 = "base-sepolia";
export const networkFor = (kind) => (kind === "v1" ? NETWORK_V1 : NETWORK_V2);

const DESCRIPTION = "One autoresearch training experiment (train.py, fixed time budget)";

export async function makeGate(opts) {
  switch (opts.kind) {
    case "v2": return gateV2(opts);
    case "v1": return gateV1(opts);
    case "obol": return gateObol(opts);
    default: throw new Error(`unknown gate kind ${opts.kind}`);
  }
}

function gateV2({ path, payTo, price, usdc, maxTimeoutSeconds, facilitatorUrl }) {
  const server = new x402ResourceServer(new HTTPFacilitatorClient({ url: facilitatorUrl }))
    .register(NETWORK_V2, new ExactEvmServerScheme());
  const routes = {
    [`POST ${path}`]: {
      accepts: {
        scheme: "exact",
        network: NETWORK_V2,
        payTo,
        price: { amount: String(price), asset: usdc, extra: { name: "USDC", version: "2" } },
        maxTimeoutSeconds,
      },
      description: DESCRIPTION,
      mimeType: "application/json",
    },
  };
  return paymentMiddlewareV2(routes, server);
}

function gateV1({ path, payTo, price, usdc, maxTimeoutSeconds, facilitatorUrl }) {
  const routes = {
    [`POST ${path}`]: {
      price: {
        amount: String(price),
        asset: { address: usdc, decimals: 6, eip712: { name: "USDC", version: "2" } },
      },
      network: NETWORK_V1,
      config: { description: DESCRIPTION, mimeType: "application/json", maxTimeoutSeconds },
    },
  };
  return paymentMiddlewareV1(payTo, routes, { url: facilitatorUrl });
}

const b64json = (o) => Buffer.from(JSON.stringify(o), "utf8").toString("base64");

function gateObol({ path, payTo, price, usdc, maxTimeoutSeconds, facilitatorUrl, resourceUrl, log }) {
  const offer = {
    scheme: "exact",
    network: NETWORK_V2,
    amount: String(price),
    asset: getAddress(usdc),
    payTo: getAddress(payTo),
    maxTimeoutSeconds,
    extra: { name: "USDC", version: "2" },
  };
  const resource = { url: resourceUrl, description: DESCRIPTION, mimeType: "application/json" };
  const required = (error) => ({ x402Version: 2, error, resource, accepts: [offer] });
  const send402 = (res, error) => {
    const body = required(error);
    res.setHeader("PAYMENT-REQUIRED", b64json(body));
    res.status(402).json(body);
  };
  const same = (a, b) => String(a ?? "").toLowerCase() === String(b ?? "").toLowerCase();

  const facilitator = async (op, paymentPayload) => {
    const r = await fetch(`${facilitatorUrl}/${op}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ x402Version: 2, paymentPayload, paymentRequirements: offer }),
    });
    const text = await r.text();
    try {
      return JSON.parse(text);
    } catch {
      throw new Error(`facilitator ${op} answered ${r.status}: ${text.slice(0, 200)}`);
    }
  };

  return async (req, res, next) => {
    if (req.method !== "POST" || req.path !== path) return next();
    const header = req.get("x-payment");
    if (!header) return send402(res, "Payment required");
    let payload;
    try {
      if (!/^[A-Za-z0-9+/]+={0,2}$/.test(header.trim())) throw new Error("not base64");
      payload = JSON.parse(Buffer.from(header.trim(), "base64").toString("utf8"));
      if (!payload || typeof payload !== "object") throw new Error("not an object");
    } catch {
      return res.status(400).json({ error: "Invalid payment header" });
    }
    const acc = payload.accepted || {};
    const mismatch = ["scheme", "network", "amount", "asset", "payTo"].filter((k) => !same(acc[k], offer[k]));
    if (mismatch.length) {
      return send402(res, `Payment does not match the offer (${mismatch.join(", ")})`);
    }
    let verified;
    try {
      verified = await facilitator("verify", payload);
    } catch (e) {
      log(`verify: ${e.message}`);
      return send402(res, `Payment verification failed: ${e.message}`);
    }
    if (!verified.isValid) {
      return send402(res, `Payment verification failed: ${verified.invalidReason ?? "invalid"}`);
    }

    // Forward to the worker, holding its answer until the settlement outcome is known.
    const origWriteHead = res.writeHead.bind(res);
    const origWrite = res.write.bind(res);
    const origEnd = res.end.bind(res);
    const buffered = [];
    let ended;
    const endP = new Promise((r) => { ended = r; });
    res.writeHead = (...a) => { buffered.push(["writeHead", a]); return res; };
    res.write = (...a) => { buffered.push(["write", a]); return true; };
    res.end = (...a) => { buffered.push(["end", a]); ended(); return res; };
    const restore = () => {
      res.writeHead = origWriteHead;
      res.write = origWrite;
      res.end = origEnd;
    };
    const replay = () => {
      for (const [m, a] of buffered) {
        if (m === "writeHead") origWriteHead(...a);
        else if (m === "write") origWrite(...a);
        else origEnd(...a);
      }
    };
    next();
    await endP;
    restore();
    if (res.statusCode >= 400) return replay();
    let settled;
    try {
      settled = await facilitator("settle", payload);
    } catch (e) {
      settled = { success: false, errorReason: e.message };
    }
    if (!settled.success) {
      log(`settle failed: ${settled.errorReason}`);
      for (const h of res.getHeaderNames()) res.removeHeader(h);
      return send402(res, `Payment settlement failed: ${settled.errorReason ?? "unknown"}`);
    }
    res.setHeader("X-PAYMENT-RESPONSE", b64json({
      success: true,
      payer: settled.payer,
      transaction: settled.transaction,
      network: settled.network,
    }));
    replay();
  };
}
