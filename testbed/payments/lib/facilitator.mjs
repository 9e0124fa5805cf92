// The reference x402 facilitator (@x402/core + @x402/evm exact scheme, v2 and v1) over anvil.
import express from "express";
import { createWalletClient, http, publicActions } from "viem";
import { privateKeyToAccount, nonceManager } from "viem/accounts";
import { x402Facilitator } from "@x402/core/facilitator";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { chainFor, CHAIN_ID } from "./chain.mjs";
import { listen } from "./http.mjs";

// One line of a (viem) error message: its "Details:" line when there is one.
const firstLine = (s) => {
  const lines = String(s ?? "").split("\n").filter((l) => l.trim());
  return lines.find((l) => l.startsWith("Details:")) ?? lines[0] ?? "";
};

export async function startFacilitator({ rpcUrl, key, log }) {
  const account = privateKeyToAccount(key, { nonceManager });
  const client = createWalletClient({
    account,
    chain: chainFor(rpcUrl),
    transport: http(rpcUrl),
    pollingInterval: 50,
  }).extend(publicActions);
  const signer = toFacilitatorEvmSigner(
    { ...client, address: account.address },
    { confirmationTimeoutMs: 30_000 },
  );
  const facilitator = new x402Facilitator();
  // v2 on eip155:84532; the helper also registers v1 for its fixed list of network names
  // (base-sepolia among them).
  registerExactEvmScheme(facilitator, { signer, networks: `eip155:${CHAIN_ID}` });

  const app = express();
  app.use(express.json({ limit: "1mb", type: () => true }));
  const parse = (req, res) => {
    const { paymentPayload, paymentRequirements } = req.body || {};
    if (!paymentPayload || !paymentRequirements) {
      res.status(400).json({ error: "body needs paymentPayload and paymentRequirements" });
      return null;
    }
    return { paymentPayload, paymentRequirements };
  };
  app.post("/verify", async (req, res) => {
    const p = parse(req, res);
    if (!p) return;
    try {
      const r = await facilitator.verify(p.paymentPayload, p.paymentRequirements);
      if (!r.isValid) log(`facilitator: verify rejected: ${r.invalidReason} ${firstLine(r.invalidMessage)}`);
      res.json(r);
    } catch (e) {
      log(`facilitator: verify error: ${firstLine(e.message)}`);
      res.status(500).json({ isValid: false, invalidReason: "unexpected_verify_error", invalidMessage: e.message });
    }
  });
  app.post("/settle", async (req, res) => {
    const p = parse(req, res);
    if (!p) return;
    try {
      const r = await facilitator.settle(p.paymentPayload, p.paymentRequirements);
      if (!r.success) log(`facilitator: settle failed: ${r.errorReason} ${firstLine(r.errorMessage)}`);
      res.json(r);
    } catch (e) {
      log(`facilitator: settle error: ${firstLine(e.message)}`);
      res.status(500).json({
        success: false,
        errorReason: "unexpected_settle_error",
        errorMessage: e.message,
        transaction: "",
        network: p.paymentRequirements.network ?? "",
      });
    }
  });
  app.get("/supported", (req, res) => res.json(facilitator.getSupported()));
  app.use((err, req, res, next) => res.status(400).json({ error: "invalid JSON body" }));

  const srv = await listen(app);
  return { url: srv.url, address: account.address, close: srv.close };
}
