//! The x402 gate of [`super::FakeWorker`]: the offer it makes, and the checks a real gate and its
//! facilitator apply to a payment (docs/protocols.md §4), as pure functions.
//!
//! obol-stack's verifier compares `accepted` with its offer on scheme, network, amount, asset and
//! payTo (case-insensitive), then has the facilitator verify the ERC-3009 authorization: the
//! signature must recover to `from` in the token's real EIP-712 domain with v = 27/28 and low s
//! (the token contract's ecrecover refuses anything else), `to` must be the payee, `value` must
//! equal the price exactly (v2), the validity window must hold and the nonce must be unused.
//! Hashing and signature checks are the crate's own ([`crate::payment::eip712`],
//! [`crate::payment::signer::check_signature`]): the fake refuses exactly what our client would
//! refuse to send, plus what only the chain can know (a used nonce).

use alloy::primitives::{Address, B256, U256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use x402_chain_eip155::v1_eip155_exact::types::ExactEvmPayload;
use x402_types::proto::v2;

use crate::payment::eip712::{Authorization, TokenDomain, usdc_on};
use crate::payment::signer::check_signature;
use crate::usdc::Usdc;

/// Base Sepolia, the chain the fake gate asks to be paid on.
pub const CHAIN_ID: u64 = 84532;
/// Its CAIP-2 name, as v2 requirements carry it.
pub const NETWORK: &str = "eip155:84532";
/// Facilitators refuse a voucher that expires within this many seconds.
const MIN_VALIDITY_SECS: u64 = 6;
/// What the gate sells.
const DESCRIPTION: &str = "One autoresearch training experiment (train.py, fixed time budget)";

/// Circle's USDC on Base Sepolia: its address and EIP-712 domain ("USDC", "2").
pub fn usdc_domain() -> TokenDomain {
    let usdc = usdc_on(CHAIN_ID).expect("Base Sepolia USDC is in the known-USDC table");
    TokenDomain {
        name: usdc.name.into(),
        version: usdc.version.into(),
        chain_id: CHAIN_ID,
        verifying_contract: usdc.address,
    }
}

/// The v2 `exact` requirement the gate offers.
pub fn requirement(price: Usdc, pay_to: Address, max_timeout_seconds: u64) -> Value {
    json!({
        "scheme": "exact",
        "network": NETWORK,
        "amount": price.atomic().to_string(),
        "asset": usdc_domain().verifying_contract.to_checksum(None),
        "payTo": pay_to.to_checksum(None),
        "maxTimeoutSeconds": max_timeout_seconds,
        "extra": {"name": "USDC", "version": "2"},
    })
}

/// The v2 `PaymentRequired` object (sent in the `PAYMENT-REQUIRED` header and as the body).
pub fn payment_required(resource_url: &str, error: &str, requirement: &Value) -> Value {
    json!({
        "x402Version": 2,
        "error": error,
        "resource": {"url": resource_url, "description": DESCRIPTION, "mimeType": "application/json"},
        "accepts": [requirement],
    })
}

/// Standard base64 of a JSON value, as x402 headers carry it.
pub fn encode(value: &Value) -> String {
    B64.encode(value.to_string())
}

/// Why a payment was refused; nothing is forwarded and nothing settles.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    /// Not standard base64 of a JSON object: HTTP 400.
    #[error("Invalid payment header")]
    BadHeader,
    /// `accepted` differs from the offer on these fields: HTTP 402.
    #[error("Payment does not match the offer ({})", .0.join(", "))]
    Mismatch(Vec<&'static str>),
    /// The facilitator's verification failed: HTTP 402.
    #[error("Payment verification failed: {0}")]
    Invalid(String),
}

/// A payment that passed every check, not yet settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The payer.
    pub from: Address,
    /// The ERC-3009 nonce.
    pub nonce: B256,
    /// The amount authorised (equal to the price).
    pub amount: Usdc,
}

/// Decodes a payment header value into its JSON object.
pub fn decode(header: &str) -> Result<Value, GateRefusal> {
    let bytes = B64
        .decode(header.trim())
        .map_err(|_| GateRefusal::BadHeader)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(GateRefusal::BadHeader),
    }
}

/// Checks a decoded payment against the offered `requirement` at time `now`; `used` says
/// whether a nonce has settled already.
pub fn verify(
    payment: &Value,
    requirement: &Value,
    now: u64,
    used: impl Fn(&B256) -> bool,
) -> Result<Verified, GateRefusal> {
    check_accepted(payment, requirement)?;
    let invalid = |why: &str| GateRefusal::Invalid(why.to_string());
    let parsed: v2::PaymentPayload<Value, ExactEvmPayload> =
        serde_json::from_value(payment.clone())
            .map_err(|e| GateRefusal::Invalid(format!("invalid_payload: {e}")))?;
    let auth = parsed.payload.authorization;
    let price = requirement["amount"].as_str().unwrap_or_default();
    let pay_to: Address = requirement["payTo"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|_| invalid("offer"))?;
    if auth.to != pay_to {
        return Err(invalid("invalid_exact_evm_payload_recipient_mismatch"));
    }
    if auth.value.to_string() != price {
        return Err(invalid(
            "invalid_exact_evm_payload_authorization_value_mismatch",
        ));
    }
    if auth.valid_after.as_secs() > now {
        return Err(invalid(
            "invalid_exact_evm_payload_authorization_valid_after",
        ));
    }
    if auth.valid_before.as_secs() < now + MIN_VALIDITY_SECS {
        return Err(invalid(
            "invalid_exact_evm_payload_authorization_valid_before",
        ));
    }
    let authorization = Authorization {
        from: auth.from,
        to: auth.to,
        value: auth.value,
        valid_after: auth.valid_after.as_secs(),
        valid_before: auth.valid_before.as_secs(),
        nonce: auth.nonce,
    };
    check_signature_as_the_chain_does(&parsed.payload.signature, &authorization)?;
    if used(&auth.nonce) {
        return Err(invalid("authorization is used or canceled"));
    }
    Ok(Verified {
        from: auth.from,
        nonce: auth.nonce,
        amount: Usdc::from_atomic(u256_to_u128(auth.value)?),
    })
}

/// The token contract's ecrecover takes only v = 27/28; [`check_signature`] also refuses a high
/// s and a signature that recovers to another address than `from`.
fn check_signature_as_the_chain_does(raw: &[u8], auth: &Authorization) -> Result<(), GateRefusal> {
    if raw.len() == 65 && !matches!(raw[64], 27 | 28) {
        return Err(GateRefusal::Invalid(
            "invalid_exact_evm_transaction_simulation_failed: v must be 27 or 28".into(),
        ));
    }
    check_signature(raw, auth.signing_hash(&usdc_domain()), auth.from)
        .map(|_| ())
        .map_err(|e| GateRefusal::Invalid(format!("invalid_exact_evm_signature: {e}")))
}

fn u256_to_u128(value: U256) -> Result<u128, GateRefusal> {
    u128::try_from(value).map_err(|_| GateRefusal::Invalid("value out of range".into()))
}

/// obol-stack's comparison of `accepted` with the offer.
fn check_accepted(payment: &Value, requirement: &Value) -> Result<(), GateRefusal> {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.to_lowercase(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string().to_lowercase(),
    };
    let accepted = payment.get("accepted");
    let mismatched: Vec<&'static str> = ["scheme", "network", "amount", "asset", "payTo"]
        .into_iter()
        .filter(|k| text(accepted.and_then(|a| a.get(k))) != text(requirement.get(k)))
        .collect();
    if mismatched.is_empty() {
        Ok(())
    } else {
        Err(GateRefusal::Mismatch(mismatched))
    }
}
