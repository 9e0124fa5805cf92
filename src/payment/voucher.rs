//! The signed voucher: an ERC-3009 authorization wrapped in an x402 payment payload, base64-encoded
//! once and then kept as is.
//!
//! Exactly-once payment (docs/design.md, invariant 1) rests on this value: the caller chooses the nonce,
//! persists the [`Voucher`] before sending it, and after a crash sends the *same* voucher again.
//! The token contract settles a nonce at most once, so a resend can never pay twice, and the
//! coordinator never needs to sign a second voucher for the same experiment.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, Signature};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use x402_chain_eip155::v1_eip155_exact::types::{ExactEvmPayload, ExactEvmPayloadAuthorization};
use x402_types::proto::{v1, v2};
use x402_types::timestamp::UnixTimestamp;

use super::eip712::Authorization;
use super::signer::{RemoteSigner, SignerError};
use super::x402::{Offer, X402Version, atomic, value_of};
use crate::crd::Network;
use crate::usdc::Usdc;

/// `validAfter`: 0, as `@x402/evm`'s v2 client signs. A chain whose last block lags wall time
/// (an idle test chain fell more than 10 minutes behind) refused `now − 600` with
/// "authorization is not yet valid"; the nonce, not `validAfter`, is what prevents a replay.
pub const VALID_AFTER: u64 = 0;
/// Margin added to the experiment's run time for `validBefore`: queueing, start-up, evaluation
/// and the gate's settlement after the upstream answers.
pub const VALID_BEFORE_MARGIN_SECS: u64 = 600;

/// The caller's choices for one voucher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoucherTerms {
    /// Experiment this voucher pays for (the caller's id, sent to the worker).
    pub experiment_id: String,
    /// ERC-3009 nonce, chosen and persisted by the caller ([`new_nonce`]).
    pub nonce: B256,
    /// Paying address; `None`: the signer's first key.
    pub from: Option<Address>,
    /// How long the experiment may run. Gates that settle after the upstream answers
    /// (obol-stack's) need `validBefore` beyond it.
    pub run_timeout: Duration,
}

/// A fresh random 32-byte nonce.
pub fn new_nonce() -> B256 {
    B256::from(rand::random::<[u8; 32]>())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `(validAfter, validBefore)` for a voucher signed at `now` (the later of wall time and the
/// chain's, when known): `validAfter = 0`, `validBefore = now + max(maxTimeoutSeconds, run
/// timeout + margin)`, so a gate that settles after a long run still can.
pub fn validity_window(now: u64, offer: &Offer, run_timeout: Duration) -> (u64, u64) {
    let lifetime = offer
        .max_timeout_seconds
        .max(run_timeout.as_secs() + VALID_BEFORE_MARGIN_SECS);
    (VALID_AFTER, now + lifetime)
}

/// A signed, encoded payment for one experiment: serialisable, and re-sendable as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Voucher {
    /// The experiment it pays for.
    pub experiment_id: String,
    /// x402 version of the payload (decides the headers).
    pub version: X402Version,
    /// Payment network.
    pub network: Network,
    /// Atomic USDC units.
    #[serde(with = "atomic")]
    pub amount: Usdc,
    /// Token contract.
    pub asset: Address,
    /// Payer.
    pub from: Address,
    /// Payee.
    pub pay_to: Address,
    /// ERC-3009 nonce.
    pub nonce: B256,
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds; after this the voucher can no longer settle.
    pub valid_before: u64,
    /// The payment payload, standard base64 of its JSON: the header value sent.
    pub header: String,
}

impl Voucher {
    /// Header names and values to send: v1 in `X-PAYMENT`; v2 in `PAYMENT-SIGNATURE` (reference
    /// servers) and `X-PAYMENT` (obol-stack's verifier reads only that one).
    pub fn headers(&self) -> Vec<(&'static str, &str)> {
        match self.version {
            X402Version::V1 => vec![("X-PAYMENT", self.header.as_str())],
            X402Version::V2 => vec![
                ("PAYMENT-SIGNATURE", self.header.as_str()),
                ("X-PAYMENT", self.header.as_str()),
            ],
        }
    }

    /// Whether the voucher can still settle at `now` (with a few seconds' margin, since
    /// facilitators reject `validBefore < now + 6`).
    pub fn is_live(&self, now: u64) -> bool {
        now + 6 < self.valid_before
    }

    /// The decoded payload JSON.
    pub fn payload(&self) -> Option<Value> {
        serde_json::from_slice(&B64.decode(&self.header).ok()?).ok()
    }
}

/// Signs a voucher for `offer` through the remote signer, checking the signature before
/// returning it (see [`super::signer::check_signature`]).
pub async fn sign_voucher(
    signer: &RemoteSigner,
    offer: &Offer,
    terms: &VoucherTerms,
    now: u64,
) -> Result<Voucher, SignerError> {
    let from = signer.payer(terms.from).await?;
    let (valid_after, valid_before) = validity_window(now, offer, terms.run_timeout);
    let authorization = Authorization {
        from,
        to: offer.pay_to,
        value: value_of(offer),
        valid_after,
        valid_before,
        nonce: terms.nonce,
    };
    let signature = signer
        .sign_authorization(&offer.domain, &authorization)
        .await?;
    Ok(Voucher {
        experiment_id: terms.experiment_id.clone(),
        version: offer.version,
        network: offer.network,
        amount: offer.amount,
        asset: offer.asset,
        from,
        pay_to: offer.pay_to,
        nonce: terms.nonce,
        valid_after,
        valid_before,
        header: encode_payload(offer, &authorization, &signature),
    })
}

/// The x402 payment payload for a signed authorization, base64 of its JSON.
pub fn encode_payload(offer: &Offer, auth: &Authorization, signature: &Signature) -> String {
    let payload = ExactEvmPayload {
        signature: signature.as_bytes().to_vec().into(),
        authorization: ExactEvmPayloadAuthorization {
            from: auth.from,
            to: auth.to,
            value: auth.value,
            valid_after: UnixTimestamp::from_secs(auth.valid_after),
            valid_before: UnixTimestamp::from_secs(auth.valid_before),
            nonce: auth.nonce,
        },
    };
    let json = match offer.version {
        X402Version::V1 => serde_json::to_vec(&v1::PaymentPayload {
            x402_version: v1::X402Version1,
            scheme: "exact".to_string(),
            // Echo the gate's own spelling of the network.
            network: offer
                .requirement
                .get("network")
                .and_then(Value::as_str)
                .map_or_else(|| offer.network.v1_name().to_string(), str::to_string),
            payload,
        }),
        X402Version::V2 => serde_json::to_vec(&v2::PaymentPayload {
            accepted: offer.requirement.clone(),
            payload,
            resource: offer
                .resource
                .clone()
                .and_then(|r| serde_json::from_value::<v2::ResourceInfo>(r).ok()),
            x402_version: v2::X402Version2,
            extensions: v2::ExtensionsJson::new(),
        }),
    };
    B64.encode(json.expect("payment payloads are plain JSON and always serialise"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::eip712::TokenDomain;
    use alloy::primitives::{U256, address};
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;
    use serde_json::json;

    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

    fn offer(version: X402Version) -> Offer {
        let requirement = match version {
            X402Version::V1 => json!({"scheme": "exact", "network": "base-sepolia",
                "maxAmountRequired": "10000", "payTo": "0x209693bc6afc0c5328ba36faf03c514ef312287c",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "maxTimeoutSeconds": 60}),
            X402Version::V2 => json!({"scheme": "exact", "network": "eip155:84532",
                "amount": "10000", "payTo": "0x209693bc6afc0c5328ba36faf03c514ef312287c",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "maxTimeoutSeconds": 60,
                "extra": {"name": "USDC", "version": "2", "custom": [1, 2]}}),
        };
        Offer {
            version,
            network: Network::BaseSepolia,
            amount: Usdc::from_atomic(10_000),
            asset: address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
            pay_to: address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            max_timeout_seconds: 60,
            domain: TokenDomain {
                name: "USDC".into(),
                version: "2".into(),
                chain_id: 84532,
                verifying_contract: address!("0x036CbD53842c5426634e7929541eC2318f3dCF7e"),
            },
            requirement,
            resource: Some(json!({"url": "http://127.0.0.1:1/experiment"})),
        }
    }

    fn signed(version: X402Version) -> (Offer, Authorization, String) {
        let offer = offer(version);
        let signer: PrivateKeySigner = KEY.parse().unwrap();
        let auth = Authorization {
            from: signer.address(),
            to: offer.pay_to,
            value: U256::from(10_000u64),
            valid_after: 100,
            valid_before: 2_000,
            nonce: B256::repeat_byte(0x22),
        };
        let sig = signer
            .sign_hash_sync(&auth.signing_hash(&offer.domain))
            .unwrap();
        let header = encode_payload(&offer, &auth, &sig);
        (offer, auth, header)
    }

    fn decode(header: &str) -> Value {
        serde_json::from_slice(&B64.decode(header).unwrap()).unwrap()
    }

    #[test]
    fn v2_payload_echoes_the_requirement_unchanged() {
        let (offer, _, header) = signed(X402Version::V2);
        let p = decode(&header);
        assert_eq!(p["x402Version"], 2);
        assert_eq!(p["accepted"], offer.requirement);
        assert_eq!(p["resource"]["url"], "http://127.0.0.1:1/experiment");
        let a = &p["payload"]["authorization"];
        assert_eq!(a["value"], "10000");
        assert_eq!(a["validAfter"], "100");
        assert_eq!(a["validBefore"], "2000");
        assert_eq!(a["nonce"], format!("0x{}", "22".repeat(32)));
        let sig = p["payload"]["signature"].as_str().unwrap();
        assert_eq!(sig.len(), 2 + 130);
        assert!(sig.ends_with("1b") || sig.ends_with("1c"));
    }

    #[test]
    fn v1_payload_has_scheme_and_network_and_no_accepted() {
        let (_, auth, header) = signed(X402Version::V1);
        let p = decode(&header);
        assert_eq!(p["x402Version"], 1);
        assert_eq!(p["scheme"], "exact");
        assert_eq!(p["network"], "base-sepolia");
        assert!(p.get("accepted").is_none());
        let from: Address = p["payload"]["authorization"]["from"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(from, auth.from);
    }

    #[test]
    fn voucher_round_trips_and_names_its_headers() {
        let (offer, auth, header) = signed(X402Version::V2);
        let voucher = Voucher {
            experiment_id: "exp-1".into(),
            version: offer.version,
            network: offer.network,
            amount: offer.amount,
            asset: offer.asset,
            from: auth.from,
            pay_to: offer.pay_to,
            nonce: auth.nonce,
            valid_after: auth.valid_after,
            valid_before: auth.valid_before,
            header,
        };
        let json = serde_json::to_string(&voucher).unwrap();
        let back: Voucher = serde_json::from_str(&json).unwrap();
        assert_eq!(back, voucher);
        let names: Vec<_> = voucher.headers().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["PAYMENT-SIGNATURE", "X-PAYMENT"]);
        assert!(voucher.is_live(1_000) && !voucher.is_live(1_995));
        assert!(voucher.payload().is_some());
    }

    #[test]
    fn validity_outlasts_the_experiment() {
        let o = offer(X402Version::V2);
        let (after, before) = validity_window(10_000, &o, Duration::from_secs(900));
        assert_eq!(
            after, 0,
            "a lagging chain clock cannot make it not yet valid"
        );
        assert_eq!(before, 10_000 + 900 + VALID_BEFORE_MARGIN_SECS);
        let mut long = o.clone();
        long.max_timeout_seconds = 86_400;
        assert_eq!(
            validity_window(10_000, &long, Duration::ZERO).1,
            10_000 + 86_400
        );
        assert_ne!(new_nonce(), new_nonce());
    }
}
