//! Reading a price: the three shapes of an x402 `402 Payment Required`, and the choice of one
//! requirement under the caller's [`Policy`].
//!
//! Why not `x402_types::proto::{v1,v2}::PaymentRequired`: those types reject shapes real gates
//! send (v1 requirements without `description` or `mimeType`, `extra` without `name`), and they
//! re-serialise what they parse (checksummed addresses, dropped unknown fields). A v2 payment must
//! echo the chosen requirement *unchanged* in `accepted`, and obol-stack's verifier compares it
//! with its offer field by field, so the gate's JSON object is kept as it came
//! ([`Offer::requirement`]) and fields are read from it leniently here. Refusals are decided per
//! requirement and name the rule that failed.

use std::fmt;

use alloy::primitives::{Address, U256};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::eip712::{self, TokenDomain};
use crate::crd::Network;
use crate::usdc::Usdc;

/// Largest `PAYMENT-REQUIRED` header accepted (the base64 text).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most requirements read from one 402; a gate offering more is not a payment gate.
pub const MAX_ACCEPTS: usize = 64;

/// The x402 protocol version of a 402 and of the payment that answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum X402Version {
    /// Network names, `maxAmountRequired`, `X-PAYMENT`.
    V1,
    /// CAIP-2 networks, `amount`, `PAYMENT-SIGNATURE`, `accepted` echoed in the payload.
    V2,
}

impl From<X402Version> for u8 {
    fn from(v: X402Version) -> u8 {
        match v {
            X402Version::V1 => 1,
            X402Version::V2 => 2,
        }
    }
}

/// An `x402Version` this client does not speak.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported x402Version {0}")]
pub struct UnsupportedVersion(pub u8);

impl TryFrom<u8> for X402Version {
    type Error = UnsupportedVersion;
    fn try_from(v: u8) -> Result<Self, UnsupportedVersion> {
        match v {
            1 => Ok(X402Version::V1),
            2 => Ok(X402Version::V2),
            other => Err(UnsupportedVersion(other)),
        }
    }
}

impl fmt::Display for X402Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", u8::from(*self))
    }
}

/// Where the requirements were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The v2 `PAYMENT-REQUIRED` header (base64 JSON).
    Header,
    /// The JSON body (v1; obol-stack's verifier also puts v2 there).
    Body,
}

/// A parsed 402: what the gate offers, not yet judged.
#[derive(Clone, Debug, PartialEq)]
pub struct PaymentRequired {
    /// Protocol version.
    pub version: X402Version,
    /// Header or body.
    pub source: Source,
    /// v2 top-level `resource` (`{url, description?, mimeType?}`), as sent.
    pub resource: Option<Value>,
    /// The gate's `error` text: after a payment, why it was refused.
    pub error: Option<String>,
    /// The requirements, each the gate's JSON as sent.
    pub accepts: Vec<Value>,
}

/// Why a 402 could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Neither a header nor a JSON body with `x402Version`.
    #[error(
        "the 402 carries no payment requirements (no PAYMENT-REQUIRED header, no x402 JSON body)"
    )]
    Missing,
    /// The header is larger than [`MAX_HEADER_BYTES`].
    #[error("the PAYMENT-REQUIRED header is {0} bytes, more than the {MAX_HEADER_BYTES} accepted")]
    HeaderTooLarge(usize),
    /// The header is not standard base64.
    #[error("the PAYMENT-REQUIRED header is not base64: {0}")]
    NotBase64(String),
    /// Not JSON, or not an object.
    #[error("the payment requirements are not a JSON object: {0}")]
    NotJson(String),
    /// `x402Version` absent or not 1/2.
    #[error("unsupported x402Version {0}")]
    Version(String),
    /// `accepts` absent, not a list, empty, or too long.
    #[error("bad `accepts` list: {0}")]
    Accepts(String),
}

/// Parses a 402 from its `PAYMENT-REQUIRED` header (if any) and its body.
///
/// The header wins when it parses; a broken header falls back to the body, and if that fails too
/// the header's error is reported (it is what the gate meant to send).
pub fn parse_payment_required(
    header: Option<&[u8]>,
    body: &[u8],
) -> Result<PaymentRequired, ParseError> {
    let from_header = header.map(parse_header);
    match from_header {
        Some(Ok(required)) => Ok(required),
        Some(Err(header_error)) => parse_body(body).map_err(|_| header_error),
        None => parse_body(body),
    }
}

fn parse_header(raw: &[u8]) -> Result<PaymentRequired, ParseError> {
    if raw.len() > MAX_HEADER_BYTES {
        return Err(ParseError::HeaderTooLarge(raw.len()));
    }
    let decoded = B64
        .decode(raw.trim_ascii())
        .map_err(|e| ParseError::NotBase64(e.to_string()))?;
    parse_json(&decoded, Source::Header)
}

fn parse_body(body: &[u8]) -> Result<PaymentRequired, ParseError> {
    if body.trim_ascii().is_empty() {
        return Err(ParseError::Missing);
    }
    parse_json(body, Source::Body).map_err(|e| match e {
        // A 402 whose body is some other JSON (or HTML) carries no requirements.
        ParseError::Version(v) if v == "absent" => ParseError::Missing,
        other => other,
    })
}

fn parse_json(bytes: &[u8], source: Source) -> Result<PaymentRequired, ParseError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(mut object) = value else {
        return Err(ParseError::NotJson("not an object".into()));
    };
    let version = match object.get("x402Version") {
        None => return Err(ParseError::Version("absent".into())),
        Some(v) => v
            .as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .and_then(|n| X402Version::try_from(n).ok())
            .ok_or_else(|| ParseError::Version(v.to_string()))?,
    };
    let accepts = match object.remove("accepts") {
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(ParseError::Accepts("empty".into()));
        }
        Some(Value::Array(items)) if items.len() > MAX_ACCEPTS => {
            return Err(ParseError::Accepts(format!(
                "{} entries, more than {MAX_ACCEPTS}",
                items.len()
            )));
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ParseError::Accepts("not a list".into())),
        None => return Err(ParseError::Accepts("absent".into())),
    };
    Ok(PaymentRequired {
        version,
        source,
        resource: object.remove("resource").filter(|r| !r.is_null()),
        error: object
            .get("error")
            .and_then(Value::as_str)
            .map(|s| truncate(s, 500)),
        accepts,
    })
}

/// What the caller is willing to pay, whatever a worker asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Networks the payer may pay on.
    pub networks: Vec<Network>,
    /// Most atomic USDC units one experiment may cost.
    pub max_price: Usdc,
    /// Token contracts accepted besides the network's known USDC.
    pub extra_assets: Vec<Address>,
}

/// The rule a requirement failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// A field is missing or unreadable.
    Malformed,
    /// Scheme is not `exact`.
    Scheme,
    /// The network is unknown or not allowed by the policy.
    Network,
    /// The transfer is not ERC-3009 (e.g. Permit2).
    TransferMethod,
    /// The asset is neither the network's USDC nor explicitly allowed.
    Asset,
    /// The price is above the caller's cap.
    MaxPrice,
    /// The EIP-712 domain is unknown or contradicts the asset/network.
    Domain,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Malformed => "malformed requirement",
            Rule::Scheme => "scheme",
            Rule::Network => "network",
            Rule::TransferMethod => "transfer method",
            Rule::Asset => "asset",
            Rule::MaxPrice => "max price",
            Rule::Domain => "EIP-712 domain",
        })
    }
}

/// One requirement refused, with the rule and what the worker asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// 1-based position in `accepts`.
    pub option: usize,
    /// The rule that failed.
    pub rule: Rule,
    /// Why, and what to do about it.
    pub detail: String,
    /// What the worker asked, in one line.
    pub asked: String,
}

/// No requirement of a 402 passes the policy: nothing is signed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct NoAcceptableOffer {
    /// One entry per requirement.
    pub rejections: Vec<Rejection>,
}

impl NoAcceptableOffer {
    /// Whether some requirement failed `rule`.
    pub fn failed(&self, rule: Rule) -> bool {
        self.rejections.iter().any(|r| r.rule == rule)
    }
}

impl fmt::Display for NoAcceptableOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused to pay: no payment option passes the policy")?;
        for r in &self.rejections {
            write!(
                f,
                "; option {} ({}): rule `{}` failed: {}",
                r.option, r.asked, r.rule, r.detail
            )?;
        }
        Ok(())
    }
}

/// The requirement chosen: everything needed to sign and send a voucher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Offer {
    /// Protocol version of the 402 it came from.
    pub version: X402Version,
    /// Payment network.
    pub network: Network,
    /// Price in atomic USDC units (a decimal string on the wire and in status).
    #[serde(with = "atomic")]
    pub amount: Usdc,
    /// Token contract.
    pub asset: Address,
    /// Payee.
    pub pay_to: Address,
    /// The gate's `maxTimeoutSeconds`.
    pub max_timeout_seconds: u64,
    /// Domain the voucher is signed in.
    pub domain: TokenDomain,
    /// The requirement object exactly as the gate sent it (echoed as v2 `accepted`).
    pub requirement: Value,
    /// v2 top-level `resource`, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Value>,
}

/// Serde for [`Usdc`] as an atomic-unit decimal string.
pub(crate) mod atomic {
    use crate::usdc::Usdc;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Usdc, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.atomic().to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usdc, D::Error> {
        let s = String::deserialize(d)?;
        Usdc::parse_atomic(&s).map_err(serde::de::Error::custom)
    }
}

/// Chooses the cheapest requirement that passes every rule of `policy`.
pub fn choose(required: &PaymentRequired, policy: &Policy) -> Result<Offer, NoAcceptableOffer> {
    let mut offers = Vec::new();
    let mut rejections = Vec::new();
    for (i, requirement) in required.accepts.iter().enumerate() {
        match judge(required, requirement, policy) {
            Ok(offer) => offers.push(offer),
            Err((rule, detail)) => rejections.push(Rejection {
                option: i + 1,
                rule,
                detail,
                asked: describe(requirement),
            }),
        }
    }
    offers
        .into_iter()
        .min_by_key(|o| o.amount)
        .ok_or(NoAcceptableOffer { rejections })
}

/// A requirement judged: the value it offers, or the rule it breaks with a detail for the user.
type Judged<T> = Result<T, (Rule, String)>;

/// Applies the rules to one requirement, in the order a user would fix them.
fn judge(required: &PaymentRequired, requirement: &Value, policy: &Policy) -> Judged<Offer> {
    let Value::Object(fields) = requirement else {
        return Err((Rule::Malformed, "not a JSON object".into()));
    };
    let scheme = text(fields, "scheme")?;
    if scheme != "exact" {
        return Err((
            Rule::Scheme,
            format!("scheme {scheme:?} is not supported; only \"exact\" is"),
        ));
    }
    let network = judge_network(text(fields, "network")?, policy)?;
    let extra = fields.get("extra").and_then(Value::as_object);
    judge_transfer_method(extra)?;
    let asset = address(fields, "asset")?;
    judge_asset(network, asset, policy)?;
    let amount = judge_amount(fields, policy)?;
    let pay_to = address(fields, "payTo")?;
    let domain = domain_for(network, asset, extra)?;
    Ok(Offer {
        version: required.version,
        network,
        amount,
        asset,
        pay_to,
        max_timeout_seconds: fields
            .get("maxTimeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(60),
        domain,
        requirement: requirement.clone(),
        resource: required.resource.clone(),
    })
}

fn judge_network(name: &str, policy: &Policy) -> Judged<Network> {
    let allowed = || {
        policy
            .networks
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match Network::parse(name) {
        Some(n) if policy.networks.contains(&n) => Ok(n),
        Some(n) => Err((
            Rule::Network,
            format!(
                "network {n} is not allowed (allowed: {}); pass --network {n} to pay there",
                allowed()
            ),
        )),
        None => Err((
            Rule::Network,
            format!("unknown network {name:?} (allowed: {})", allowed()),
        )),
    }
}

fn judge_transfer_method(extra: Option<&Map<String, Value>>) -> Judged<()> {
    match extra.and_then(|e| e.get("assetTransferMethod")) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(m)) if m.eq_ignore_ascii_case("eip3009") => Ok(()),
        Some(other) => Err((
            Rule::TransferMethod,
            format!("transfer method {other} is not supported; only ERC-3009 (eip3009) is"),
        )),
    }
}

fn judge_asset(network: Network, asset: Address, policy: &Policy) -> Judged<()> {
    if eip712::known_usdc(network.chain_id(), asset).is_some()
        || policy.extra_assets.contains(&asset)
    {
        return Ok(());
    }
    let usdc = eip712::usdc_on(network.chain_id())
        .map(|u| u.address.to_checksum(None))
        .unwrap_or_default();
    Err((
        Rule::Asset,
        format!(
            "asset {asset} is not USDC on {network} ({usdc}); allow it explicitly (payment.extraAssets) if it is a token you mean to pay with"
        ),
    ))
}

fn judge_amount(fields: &Map<String, Value>, policy: &Policy) -> Judged<Usdc> {
    // v2 says `amount`, v1 `maxAmountRequired`; some gates mix them.
    let raw = fields
        .get("amount")
        .or_else(|| fields.get("maxAmountRequired"))
        .ok_or((Rule::Malformed, "no amount".to_string()))?;
    let text = match raw {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        other => {
            return Err((
                Rule::Malformed,
                format!("amount {other} is not atomic units"),
            ));
        }
    };
    let amount = Usdc::parse_atomic(&text)
        .map_err(|e| (Rule::Malformed, format!("amount {text:?}: {e}")))?;
    if amount > policy.max_price {
        return Err((
            Rule::MaxPrice,
            format!(
                "price {amount} USDC ({} atomic) is above the cap of {} USDC; raise --max-price (or budget.maxPricePerExperiment) if you mean to pay it",
                amount.atomic(),
                policy.max_price
            ),
        ));
    }
    Ok(amount)
}

/// The domain to sign in.
///
/// Name and version come from `extra.eip712Domain`, else the known-USDC table, else `extra.name`
/// / `extra.version` (docs/protocols.md §4). Chain id and verifying contract are never taken from the
/// gate: they are the network's and the asset's. A gate that names another contract there is
/// refused, since a voucher signed for another token contract would move that token.
fn domain_for(
    network: Network,
    asset: Address,
    extra: Option<&Map<String, Value>>,
) -> Judged<TokenDomain> {
    let chain_id = network.chain_id();
    let explicit = extra
        .and_then(|e| e.get("eip712Domain"))
        .and_then(Value::as_object);
    if let Some(d) = explicit {
        check_explicit_domain(d, chain_id, asset)?;
    }
    let name_version = |m: &Map<String, Value>| {
        Some((
            m.get("name")?.as_str()?.to_string(),
            m.get("version")?.as_str()?.to_string(),
        ))
    };
    let known = eip712::known_usdc(chain_id, asset).map(|u| (u.name.into(), u.version.into()));
    let (name, version) = explicit
        .and_then(name_version)
        .or(known)
        .or_else(|| extra.and_then(name_version))
        .ok_or((
            Rule::Domain,
            format!("no EIP-712 name/version for token {asset}: the gate sent no extra.name/extra.version"),
        ))?;
    Ok(TokenDomain {
        name,
        version,
        chain_id,
        verifying_contract: asset,
    })
}

fn check_explicit_domain(d: &Map<String, Value>, chain_id: u64, asset: Address) -> Judged<()> {
    if let Some(c) = d.get("chainId") {
        let c_num = c
            .as_u64()
            .or_else(|| c.as_str().and_then(|s| s.parse().ok()));
        if c_num != Some(chain_id) {
            return Err((
                Rule::Domain,
                format!("extra.eip712Domain.chainId {c} is not the network's chain {chain_id}"),
            ));
        }
    }
    if let Some(v) = d.get("verifyingContract") {
        let parsed = v.as_str().and_then(|s| s.parse::<Address>().ok());
        if parsed != Some(asset) {
            return Err((
                Rule::Domain,
                format!("extra.eip712Domain.verifyingContract {v} is not the asset {asset}"),
            ));
        }
    }
    Ok(())
}

fn text<'a>(fields: &'a Map<String, Value>, key: &str) -> Judged<&'a str> {
    fields
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| (Rule::Malformed, format!("no {key}")))
}

fn address(fields: &Map<String, Value>, key: &str) -> Judged<Address> {
    let s = text(fields, key)?;
    s.parse()
        .map_err(|_| (Rule::Malformed, format!("{key} {s:?} is not an address")))
}

/// One line for a requirement: scheme, network, amount, asset, payee.
pub fn describe(requirement: &Value) -> String {
    let field = |k: &str| {
        requirement
            .get(k)
            .map(|v| match v {
                Value::String(s) => truncate(s, 80),
                other => truncate(&other.to_string(), 80),
            })
            .unwrap_or_else(|| "?".into())
    };
    let amount = requirement
        .get("amount")
        .or_else(|| requirement.get("maxAmountRequired"))
        .and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_u64().map(|n| n.to_string()))
        });
    let price = match amount.as_deref().map(Usdc::parse_atomic) {
        Some(Ok(a)) => format!("{a} USDC ({} atomic)", a.atomic()),
        _ => format!("amount {}", amount.unwrap_or_else(|| "?".into())),
    };
    format!(
        "{} on {}: {price} of asset {} to {}",
        field("scheme"),
        field("network"),
        field("asset"),
        field("payTo")
    )
}

/// At most `max` characters of untrusted text, for messages.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// What a gate reports about settlement (`PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`, base64 JSON).
///
/// Own type rather than `x402_types::proto::v1::SettleResponse`, whose failure branch expects the
/// field `error_reason` where gates send `errorReason`, and which refuses a success without
/// `payer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settlement {
    /// Whether the transfer was settled.
    pub success: bool,
    /// On-chain transaction hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
    /// Network as the gate names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Payer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Why settlement failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
}

/// Decodes a settlement header; `None` if it is not base64 JSON of the expected shape.
pub fn parse_settlement(raw: &[u8]) -> Option<Settlement> {
    if raw.len() > MAX_HEADER_BYTES {
        return None;
    }
    let decoded = B64.decode(raw.trim_ascii()).ok()?;
    let mut s: Settlement = serde_json::from_slice(&decoded).ok()?;
    // A hash is 0x + 64 hex digits; anything else is not shown or recorded as one.
    s.transaction = s.transaction.filter(|t| {
        t.len() == 66 && t.starts_with("0x") && t[2..].bytes().all(|b| b.is_ascii_hexdigit())
    });
    Some(s)
}

/// `value` in the authorization: exactly the price (v2 requires equality; v1 accepts ≥).
pub(crate) fn value_of(offer: &Offer) -> U256 {
    U256::from(offer.amount.atomic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEPOLIA_USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
    const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

    fn policy() -> Policy {
        Policy {
            networks: vec![Network::BaseSepolia],
            max_price: "0.1".parse().unwrap(),
            extra_assets: vec![],
        }
    }

    fn v2_requirement(amount: &str) -> Value {
        json!({
            "scheme": "exact", "network": "eip155:84532", "amount": amount,
            "asset": SEPOLIA_USDC, "payTo": PAY_TO, "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2"}
        })
    }

    fn v2_required(accepts: Vec<Value>) -> Value {
        json!({
            "x402Version": 2, "error": "Payment required",
            "resource": {"url": "http://127.0.0.1:1/experiment", "mimeType": "application/json"},
            "accepts": accepts
        })
    }

    fn v1_body() -> Value {
        json!({
            "x402Version": 1, "error": "X-PAYMENT header is required",
            "accepts": [{
                "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "50000",
                "resource": "http://127.0.0.1:1/experiment", "description": "",
                "payTo": PAY_TO, "maxTimeoutSeconds": 60, "asset": SEPOLIA_USDC,
                "extra": {"name": "USDC", "version": "2"}
            }]
        })
    }

    fn b64(v: &Value) -> Vec<u8> {
        B64.encode(v.to_string()).into_bytes()
    }

    #[test]
    fn reads_v1_body() {
        let body = v1_body().to_string();
        let r = parse_payment_required(None, body.as_bytes()).unwrap();
        assert_eq!((r.version, r.source), (X402Version::V1, Source::Body));
        let offer = choose(&r, &policy()).unwrap();
        assert_eq!(offer.amount.atomic(), 50_000);
        assert_eq!(offer.network, Network::BaseSepolia);
        assert_eq!(offer.domain.name, "USDC");
        assert_eq!(offer.pay_to, PAY_TO.parse::<Address>().unwrap());
    }

    #[test]
    fn reads_v2_header_and_prefers_it_over_the_body() {
        let header = b64(&v2_required(vec![v2_requirement("10000")]));
        let r = parse_payment_required(Some(&header), b"{}").unwrap();
        assert_eq!((r.version, r.source), (X402Version::V2, Source::Header));
        assert_eq!(
            r.resource.as_ref().unwrap()["url"],
            "http://127.0.0.1:1/experiment"
        );
        let offer = choose(&r, &policy()).unwrap();
        assert_eq!(offer.amount.atomic(), 10_000);
        assert_eq!(
            offer.requirement,
            v2_requirement("10000"),
            "echoed unchanged"
        );
    }

    #[test]
    fn reads_v2_body_as_obol_sends_it() {
        let body = v2_required(vec![v2_requirement("20000")]).to_string();
        let r = parse_payment_required(None, body.as_bytes()).unwrap();
        assert_eq!((r.version, r.source), (X402Version::V2, Source::Body));
        assert_eq!(choose(&r, &policy()).unwrap().amount.atomic(), 20_000);
    }

    #[test]
    fn broken_header_falls_back_to_body_or_reports_the_header() {
        let body = v1_body().to_string();
        let r = parse_payment_required(Some(b"%%%not base64"), body.as_bytes()).unwrap();
        assert_eq!(r.version, X402Version::V1);
        let err = parse_payment_required(Some(b"%%%"), b"<html>").unwrap_err();
        assert!(matches!(err, ParseError::NotBase64(_)), "{err}");
    }

    #[test]
    fn malformed_and_oversized_402s_are_errors() {
        let cases: Vec<(Option<Vec<u8>>, Vec<u8>)> = vec![
            (None, b"".to_vec()),
            (None, b"<html>402</html>".to_vec()),
            (None, b"{\"error\": \"pay\"}".to_vec()),
            (None, b"[1,2]".to_vec()),
            (
                None,
                json!({"x402Version": 3, "accepts": [{}]})
                    .to_string()
                    .into_bytes(),
            ),
            (
                None,
                json!({"x402Version": "2", "accepts": [{}]})
                    .to_string()
                    .into_bytes(),
            ),
            (
                None,
                json!({"x402Version": 2, "accepts": []})
                    .to_string()
                    .into_bytes(),
            ),
            (
                None,
                json!({"x402Version": 2, "accepts": {}})
                    .to_string()
                    .into_bytes(),
            ),
            (None, json!({"x402Version": 2}).to_string().into_bytes()),
            (Some(b64(&json!("a string"))), vec![]),
            (Some(vec![b'A'; MAX_HEADER_BYTES + 4]), vec![]),
        ];
        for (header, body) in cases {
            let r = parse_payment_required(header.as_deref(), &body);
            assert!(
                r.is_err(),
                "{:?} / {:?} parsed",
                header,
                String::from_utf8_lossy(&body)
            );
        }
        let many = json!({"x402Version": 2, "accepts": vec![v2_requirement("1"); MAX_ACCEPTS + 1]});
        assert!(matches!(
            parse_payment_required(None, many.to_string().as_bytes()),
            Err(ParseError::Accepts(_))
        ));
        let huge = vec![b'A'; MAX_HEADER_BYTES + 1];
        assert!(matches!(
            parse_payment_required(Some(&huge), b""),
            Err(ParseError::HeaderTooLarge(_))
        ));
    }

    fn refusal(requirement: Value, policy: &Policy) -> NoAcceptableOffer {
        let body = v2_required(vec![requirement]).to_string();
        let r = parse_payment_required(None, body.as_bytes()).unwrap();
        choose(&r, policy).unwrap_err()
    }

    #[test]
    fn price_above_the_cap_is_refused_naming_the_cap_and_the_price() {
        let err = refusal(v2_requirement("100001"), &policy());
        assert!(err.failed(Rule::MaxPrice));
        let msg = err.to_string();
        assert!(msg.contains("max price"), "{msg}");
        assert!(msg.contains("0.100001 USDC"), "{msg}");
        assert!(msg.contains("0.1 USDC"), "{msg}");
        assert!(msg.contains("--max-price"), "{msg}");
        // At the cap is fine.
        let body = v2_required(vec![v2_requirement("100000")]).to_string();
        let r = parse_payment_required(None, body.as_bytes()).unwrap();
        assert!(choose(&r, &policy()).is_ok());
    }

    #[test]
    fn unknown_asset_is_refused_unless_allowed() {
        let other = "0x1111111111111111111111111111111111111111";
        let mut req = v2_requirement("10000");
        req["asset"] = json!(other);
        let err = refusal(req.clone(), &policy());
        assert!(err.failed(Rule::Asset), "{err}");
        assert!(err.to_string().contains(other) || err.to_string().to_lowercase().contains(other));
        // Base's USDC on Base Sepolia is not USDC there.
        let mut wrong_chain = v2_requirement("10000");
        wrong_chain["asset"] = json!("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913");
        assert!(refusal(wrong_chain, &policy()).failed(Rule::Asset));
        // Explicitly allowed: signed with the gate's extra.name/version.
        let mut allowing = policy();
        allowing.extra_assets.push(other.parse().unwrap());
        let body = v2_required(vec![req]).to_string();
        let r = parse_payment_required(None, body.as_bytes()).unwrap();
        let offer = choose(&r, &allowing).unwrap();
        assert_eq!(offer.domain.name, "USDC");
        assert_eq!(
            offer.domain.verifying_contract,
            other.parse::<Address>().unwrap()
        );
    }

    #[test]
    fn network_not_allowed_is_refused() {
        let mut req = v2_requirement("10000");
        req["network"] = json!("eip155:8453");
        req["asset"] = json!("0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913");
        let err = refusal(req, &policy());
        assert!(err.failed(Rule::Network));
        assert!(err.to_string().contains("--network base"), "{err}");
        let mut unknown = v2_requirement("10000");
        unknown["network"] = json!("solana:mainnet");
        assert!(refusal(unknown, &policy()).failed(Rule::Network));
    }

    #[test]
    fn other_schemes_methods_and_malformed_fields_are_refused() {
        let mut upto = v2_requirement("10000");
        upto["scheme"] = json!("upto");
        assert!(refusal(upto, &policy()).failed(Rule::Scheme));
        let mut permit2 = v2_requirement("10000");
        permit2["extra"]["assetTransferMethod"] = json!("permit2");
        assert!(refusal(permit2, &policy()).failed(Rule::TransferMethod));
        for (key, bad) in [
            ("amount", json!("-1")),
            ("amount", json!("1.5")),
            ("amount", json!(null)),
            ("payTo", json!("nobody")),
            ("asset", json!(7)),
        ] {
            let mut req = v2_requirement("10000");
            req[key] = bad;
            assert!(refusal(req, &policy()).failed(Rule::Malformed), "{key}");
        }
        assert!(refusal(json!("exact"), &policy()).failed(Rule::Malformed));
    }

    #[test]
    fn domain_comes_from_eip712domain_then_table_then_extra() {
        let mut req = v2_requirement("10000");
        req["extra"] = json!({"name": "Wrong", "version": "9"});
        let body = v2_required(vec![req.clone()]).to_string();
        let offer = choose(
            &parse_payment_required(None, body.as_bytes()).unwrap(),
            &policy(),
        )
        .unwrap();
        assert_eq!(
            (offer.domain.name.as_str(), offer.domain.version.as_str()),
            ("USDC", "2")
        );
        req["extra"]["eip712Domain"] = json!({"name": "USDC", "version": "2", "chainId": 84532});
        let body = v2_required(vec![req.clone()]).to_string();
        assert!(
            choose(
                &parse_payment_required(None, body.as_bytes()).unwrap(),
                &policy()
            )
            .is_ok()
        );
        req["extra"]["eip712Domain"]["verifyingContract"] =
            json!("0x2222222222222222222222222222222222222222");
        assert!(refusal(req, &policy()).failed(Rule::Domain));
        let mut no_name = v2_requirement("10000");
        no_name["asset"] = json!("0x3333333333333333333333333333333333333333");
        no_name["extra"] = json!({});
        let mut allowing = policy();
        allowing.extra_assets.push(
            "0x3333333333333333333333333333333333333333"
                .parse()
                .unwrap(),
        );
        assert!(refusal(no_name, &allowing).failed(Rule::Domain));
    }

    #[test]
    fn cheapest_acceptable_option_wins() {
        let mut mainnet = v2_requirement("1");
        mainnet["network"] = json!("eip155:8453");
        let body = v2_required(vec![
            v2_requirement("30000"),
            mainnet,
            v2_requirement("20000"),
        ])
        .to_string();
        let offer = choose(
            &parse_payment_required(None, body.as_bytes()).unwrap(),
            &policy(),
        )
        .unwrap();
        assert_eq!(offer.amount.atomic(), 20_000);
    }

    #[test]
    fn offer_round_trips_through_serde() {
        let body = v2_required(vec![v2_requirement("10000")]).to_string();
        let offer = choose(
            &parse_payment_required(None, body.as_bytes()).unwrap(),
            &policy(),
        )
        .unwrap();
        let json = serde_json::to_value(&offer).unwrap();
        assert_eq!(json["amount"], "10000");
        assert_eq!(json["version"], 2);
        assert_eq!(serde_json::from_value::<Offer>(json).unwrap(), offer);
    }

    #[test]
    fn settlement_headers() {
        let hash = format!("0x{}", "ab".repeat(32));
        let ok = B64.encode(
            json!({"success": true, "transaction": hash, "network": "eip155:84532", "payer": "0x1"})
                .to_string(),
        );
        let s = parse_settlement(ok.as_bytes()).unwrap();
        assert!(s.success);
        assert_eq!(s.transaction.as_deref(), Some(hash.as_str()));
        let failed = B64.encode(
            json!({"success": false, "errorReason": "insufficient_funds", "transaction": ""})
                .to_string(),
        );
        let s = parse_settlement(failed.as_bytes()).unwrap();
        assert_eq!((s.success, s.transaction), (false, None));
        assert_eq!(s.error_reason.as_deref(), Some("insufficient_funds"));
        assert!(parse_settlement(b"not base64!").is_none());
    }
}
