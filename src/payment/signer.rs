//! The remote signer (obol-stack, docs/protocols.md §5): the coordinator never holds a key; it asks the
//! signer to sign EIP-712 typed data and checks what comes back before it spends anything.

use std::fmt;
use std::time::Duration;

use alloy::primitives::{Address, B256, Signature, U256};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::eip712::{Authorization, TokenDomain};
use super::http::{self, MAX_BODY_BYTES};

/// Default signer URL: the one obol-stack runs in each agent namespace.
pub const DEFAULT_SIGNER_URL: &str = "http://remote-signer:9000";

/// Half the secp256k1 group order: a signature with a larger `s` is malleable and refused by the
/// token contract (EIP-2).
const HALF_ORDER: U256 = U256::from_limbs([
    0xdfe92f46681b20a0,
    0x5d576e7357a4501d,
    0xffffffffffffffff,
    0x7fffffffffffffff,
]);

/// What went wrong with the signer, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// Could not connect, or timed out.
    #[error(
        "cannot reach the remote signer at {url}: {reason}; check REMOTE_SIGNER_URL and that the signer is running"
    )]
    Unreachable {
        /// Signer base URL.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// 401/403: the token is missing or wrong.
    #[error("the remote signer refused the request (HTTP {status}): {hint}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// What to do.
        hint: &'static str,
    },
    /// `SIGNER_NOT_FOUND`: the signer holds no key for this address.
    #[error(
        "the remote signer has no key for {address} (SIGNER_NOT_FOUND); use one of the addresses GET /api/v1/keys lists, or leave the address unset to use the first"
    )]
    KeyNotFound {
        /// The address asked for.
        address: String,
    },
    /// `GET /api/v1/keys` listed nothing.
    #[error("the remote signer lists no keys; import or create a key in the signer first")]
    NoKeys,
    /// Any other error answer.
    #[error("the remote signer answered HTTP {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The signer's `code` (`BAD_REQUEST`, `MISSING_FIELD`, `SIGNING_ERROR`, …).
        code: String,
        /// The signer's `error` text.
        message: String,
    },
    /// A 2xx answer that is not what the API promises.
    #[error("the remote signer's answer is unreadable: {0}")]
    BadResponse(String),
    /// Not a 65-byte `r||s||v` with v in {0, 1, 27, 28}.
    #[error("the remote signer returned a malformed signature: {0}")]
    BadSignature(String),
    /// `s` above half the curve order.
    #[error("the remote signer returned a high-s signature, which the token contract rejects")]
    HighS,
    /// The signature recovers to another address than the payer's.
    #[error(
        "the remote signer signed with {recovered}, not with the paying address {expected}: refusing to send a voucher that cannot settle; check which key the signer uses for {expected}"
    )]
    WrongSigner {
        /// `from` of the authorization.
        expected: Address,
        /// Who actually signed.
        recovered: Address,
    },
}

/// A client for one remote signer.
#[derive(Clone)]
pub struct RemoteSigner {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
    // The signer's first key, asked once: it does not change while the signer runs.
    first_key: tokio::sync::OnceCell<Address>,
}

impl fmt::Debug for RemoteSigner {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteSigner")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

#[derive(Deserialize)]
struct KeysResponse {
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct SignatureResponse {
    signature: String,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl RemoteSigner {
    /// A signer at `base_url` (e.g. `http://remote-signer:9000`), with an optional bearer token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Self, SignerError> {
        let base =
            Url::parse(base_url.trim_end_matches('/')).map_err(|e| SignerError::Unreachable {
                url: base_url.to_string(),
                reason: format!("not a URL ({e})"),
            })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(SignerError::Unreachable {
                url: base_url.into(),
                reason: "not an http(s) URL".into(),
            });
        }
        Ok(Self {
            base,
            token: token.filter(|t| !t.trim().is_empty()),
            http: http::client(Duration::from_secs(30)),
            first_key: tokio::sync::OnceCell::new(),
        })
    }

    /// From `REMOTE_SIGNER_URL` (default [`DEFAULT_SIGNER_URL`]) and `REMOTE_SIGNER_TOKEN`.
    pub fn from_env() -> Result<Self, SignerError> {
        let url = std::env::var("REMOTE_SIGNER_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_SIGNER_URL.to_string());
        Self::new(&url, std::env::var("REMOTE_SIGNER_TOKEN").ok())
    }

    /// The signer's base URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.base.as_str().trim_end_matches('/'), path)
    }

    /// `GET /api/v1/keys`: the addresses the signer can sign for.
    pub async fn keys(&self) -> Result<Vec<Address>, SignerError> {
        let body = self
            .call(self.http.get(self.endpoint("/api/v1/keys")), None)
            .await?;
        let keys: KeysResponse = serde_json::from_slice(&body)
            .map_err(|e| SignerError::BadResponse(format!("keys: {e}")))?;
        keys.keys
            .iter()
            .map(|k| {
                k.parse()
                    .map_err(|_| SignerError::BadResponse(format!("key {k:?} is not an address")))
            })
            .collect()
    }

    /// The paying address: `configured` if given, else the signer's first key.
    pub async fn payer(&self, configured: Option<Address>) -> Result<Address, SignerError> {
        match configured {
            Some(a) => Ok(a),
            None => self
                .first_key
                .get_or_try_init(|| async {
                    self.keys()
                        .await?
                        .first()
                        .copied()
                        .ok_or(SignerError::NoKeys)
                })
                .await
                .copied(),
        }
    }

    /// `POST /api/v1/sign/<address>/typed-data`: the raw signature bytes, unchecked.
    pub async fn sign_typed_data(
        &self,
        address: Address,
        typed_data: &Value,
    ) -> Result<Vec<u8>, SignerError> {
        let url = self.endpoint(&format!("/api/v1/sign/{address}/typed-data"));
        let body = self
            .call(self.http.post(url).json(typed_data), Some(address))
            .await?;
        let answer: SignatureResponse = serde_json::from_slice(&body)
            .map_err(|e| SignerError::BadResponse(format!("signature: {e}")))?;
        let hex_text = answer.signature.trim();
        alloy::primitives::hex::decode(hex_text)
            .map_err(|e| SignerError::BadSignature(format!("not hex ({e})")))
    }

    /// Signs an ERC-3009 authorization and returns a signature the chain will accept: 65 bytes,
    /// v = 27/28, low s, recovering to `authorization.from`.
    pub async fn sign_authorization(
        &self,
        domain: &TokenDomain,
        authorization: &Authorization,
    ) -> Result<Signature, SignerError> {
        let raw = self
            .sign_typed_data(authorization.from, &authorization.typed_data(domain))
            .await?;
        check_signature(&raw, authorization.signing_hash(domain), authorization.from)
    }

    /// Sends a request with the bearer token and maps error answers to [`SignerError`].
    async fn call(
        &self,
        mut request: reqwest::RequestBuilder,
        address: Option<Address>,
    ) -> Result<Vec<u8>, SignerError> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let unreachable = |e: &dyn fmt::Display| SignerError::Unreachable {
            url: self.base.to_string(),
            reason: e.to_string(),
        };
        let response = request.send().await.map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = http::read_capped(response, MAX_BODY_BYTES)
            .await
            .map_err(|e| unreachable(&e))?;
        if status.is_success() {
            return Ok(body);
        }
        let error: ErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
        let code = error.code.unwrap_or_default();
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(SignerError::Unauthorized {
                status: status.as_u16(),
                hint: if self.token.is_some() {
                    "REMOTE_SIGNER_TOKEN does not match the signer's token (Secret remote-signer-keystore, key authToken)"
                } else {
                    "REMOTE_SIGNER_TOKEN is not set; set it to the signer's token (Secret remote-signer-keystore, key authToken)"
                },
            });
        }
        // Only the signer's own code: a bare 404 is more likely a wrong REMOTE_SIGNER_URL path.
        if code == "SIGNER_NOT_FOUND" {
            return Err(SignerError::KeyNotFound {
                address: address.map(|a| a.to_string()).unwrap_or_default(),
            });
        }
        Err(SignerError::Api {
            status: status.as_u16(),
            code: if code.is_empty() { "-".into() } else { code },
            message: error.error.unwrap_or_else(|| http::excerpt(&body)),
        })
    }
}

/// Checks a raw signature against the digest it must sign and the address it must come from.
///
/// v = 0/1 is normalised to 27/28 (some signers return the raw recovery id; the chain and one of
/// the facilitators reject it). High s is refused rather than flipped: a signer that produces it
/// is broken, and a silent fix would hide that.
pub fn check_signature(raw: &[u8], digest: B256, from: Address) -> Result<Signature, SignerError> {
    if raw.len() != 65 {
        return Err(SignerError::BadSignature(format!(
            "{} bytes instead of 65",
            raw.len()
        )));
    }
    if !matches!(raw[64], 0 | 1 | 27 | 28) {
        return Err(SignerError::BadSignature(format!("v = {}", raw[64])));
    }
    let signature =
        Signature::from_raw(raw).map_err(|e| SignerError::BadSignature(e.to_string()))?;
    if signature.s() > HALF_ORDER {
        return Err(SignerError::HighS);
    }
    let recovered = signature
        .recover_address_from_prehash(&digest)
        .map_err(|e| SignerError::BadSignature(format!("does not recover ({e})")))?;
    if recovered != from {
        return Err(SignerError::WrongSigner {
            expected: from,
            recovered,
        });
    }
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::SignerSync;
    use alloy::signers::local::PrivateKeySigner;

    // Anvil's well-known test keys 1 and 2.
    const KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
    const OTHER_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

    #[test]
    fn half_order_constant_is_n_over_two() {
        let n = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .unwrap();
        assert_eq!(HALF_ORDER, n >> 1);
    }

    #[test]
    fn v_zero_one_is_normalised_and_high_s_wrong_key_refused() {
        let signer: PrivateKeySigner = KEY.parse().unwrap();
        let digest = B256::repeat_byte(7);
        let good = signer.sign_hash_sync(&digest).unwrap();
        let mut raw = good.as_bytes();
        raw[64] -= 27;
        let fixed = check_signature(&raw, digest, signer.address()).unwrap();
        assert_eq!(fixed.as_bytes(), good.as_bytes());
        assert!(matches!(fixed.as_bytes()[64], 27 | 28));

        let n = HALF_ORDER * U256::from(2) + U256::from(1);
        let high = Signature::new(good.r(), n - good.s(), !good.v());
        assert!(matches!(
            check_signature(&high.as_bytes(), digest, signer.address()),
            Err(SignerError::HighS)
        ));

        let other: PrivateKeySigner = OTHER_KEY.parse().unwrap();
        let wrong = other.sign_hash_sync(&digest).unwrap();
        let err = check_signature(&wrong.as_bytes(), digest, signer.address()).unwrap_err();
        assert!(matches!(err, SignerError::WrongSigner { .. }));
        assert!(err.to_string().contains(&signer.address().to_string()));

        assert!(matches!(
            check_signature(&raw[..64], digest, signer.address()),
            Err(SignerError::BadSignature(_))
        ));
        raw[64] = 35;
        assert!(matches!(
            check_signature(&raw, digest, signer.address()),
            Err(SignerError::BadSignature(_))
        ));
    }

    #[test]
    fn debug_hides_the_token() {
        let s = RemoteSigner::new("http://127.0.0.1:9", Some("s3cret".into())).unwrap();
        assert!(!format!("{s:?}").contains("s3cret"));
        assert!(RemoteSigner::new("file:///x", None).is_err());
    }
}
