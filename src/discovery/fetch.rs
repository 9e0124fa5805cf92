//! Resolving a registration URI to its JSON document: `data:` (base64 or percent-encoded),
//! `ipfs://` through a gateway, and http(s) through the address policy.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use url::Url;

use super::http::{BodyError, USER_AGENT, ensure_crypto_provider, read_capped, snippet};
use super::policy::{AddressPolicy, UrlRefusal};

/// Documents larger than this are refused (a registration is a few KiB).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Default public IPFS gateway.
pub const DEFAULT_IPFS_GATEWAY: &str = "https://ipfs.io";

/// Why a document could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI is not one we read.
    #[error("unsupported URI {0:?}: expected https://, http://, ipfs:// or data:application/json")]
    Unsupported(String),
    /// The address policy refused the URI.
    #[error("refused {uri}: {refusal}")]
    Refused {
        /// The URI.
        uri: String,
        /// Why.
        refusal: UrlRefusal,
    },
    /// A `data:` URI that does not decode.
    #[error("bad data: URI: {0}")]
    BadData(String),
    /// The server answered with an error status.
    #[error("GET {uri} answered {status}: {body}")]
    Status {
        /// The URL fetched.
        uri: String,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// Transport failure.
    #[error("GET {uri}: {source}")]
    Transport {
        /// The URL fetched.
        uri: String,
        /// The error.
        source: reqwest::Error,
    },
    /// Body too large or cut.
    #[error("GET {uri}: {source}")]
    Body {
        /// The URL fetched.
        uri: String,
        /// The error.
        source: BodyError,
    },
    /// Not JSON.
    #[error("{uri} is not JSON: {why}")]
    NotJson {
        /// The URI.
        uri: String,
        /// The parser's message.
        why: String,
    },
}

impl FetchError {
    /// The refusal, when the policy was the reason.
    pub fn refusal(&self) -> Option<&UrlRefusal> {
        match self {
            Self::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }
}

/// Fetches registration documents. Discovered http(s) URIs go through the policy; the IPFS
/// gateway is configuration, so it is dialled as configured.
#[derive(Clone, Debug)]
pub struct DocumentFetcher {
    policy: AddressPolicy,
    discovered: reqwest::Client,
    gateway_client: reqwest::Client,
    gateway: Url,
}

impl DocumentFetcher {
    /// A fetcher enforcing `policy`, reading `ipfs://` through `gateway`.
    pub fn new(policy: AddressPolicy, gateway: Url) -> Result<Self, reqwest::Error> {
        ensure_crypto_provider();
        let timeout = Duration::from_secs(15);
        Ok(Self {
            discovered: policy
                .client_builder()
                .user_agent(USER_AGENT)
                .timeout(timeout)
                .build()?,
            gateway_client: reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .timeout(timeout)
                .build()?,
            policy,
            gateway,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// The document at `uri`.
    pub async fn fetch(&self, uri: &str) -> Result<Value, FetchError> {
        let uri = uri.trim();
        let lower = uri.get(..8).unwrap_or(uri).to_ascii_lowercase();
        if lower.starts_with("data:") {
            let bytes = decode_data_uri(uri)?;
            return parse_json(uri, &bytes);
        }
        if lower.starts_with("ipfs://") {
            let url = self.gateway_url(uri)?;
            return self.get(&self.gateway_client, url, uri).await;
        }
        let url = Url::parse(uri).map_err(|_| FetchError::Unsupported(short(uri)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Unsupported(short(uri)));
        }
        // Literal addresses never reach the resolver, so check them (and names) here too.
        self.policy
            .check_url(&url)
            .map_err(|refusal| FetchError::Refused {
                uri: short(uri),
                refusal,
            })?;
        self.get(&self.discovered, url, uri).await
    }

    /// `ipfs://<cid>/<path>` (or `ipfs://ipfs/<cid>`) as `<gateway>/ipfs/<cid>/<path>`.
    pub fn gateway_url(&self, uri: &str) -> Result<Url, FetchError> {
        let rest = &uri["ipfs://".len()..];
        let rest = rest.strip_prefix("ipfs/").unwrap_or(rest);
        if rest.is_empty()
            || !rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
            || rest.split('/').any(|seg| seg == ".." || seg == ".")
        {
            return Err(FetchError::Unsupported(short(uri)));
        }
        let base = self.gateway.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}/ipfs/{rest}")).map_err(|_| FetchError::Unsupported(short(uri)))
    }

    async fn get(
        &self,
        client: &reqwest::Client,
        url: Url,
        uri: &str,
    ) -> Result<Value, FetchError> {
        let shown = short(uri);
        let resp = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|source| match refusal_in(&source) {
                Some(refusal) => FetchError::Refused {
                    uri: shown.clone(),
                    refusal,
                },
                None => FetchError::Transport {
                    uri: shown.clone(),
                    source,
                },
            })?;
        let status = resp.status();
        let body = read_capped(resp, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|source| FetchError::Body {
                uri: shown.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(FetchError::Status {
                uri: shown,
                status: status.as_u16(),
                body: snippet(&body, 200),
            });
        }
        parse_json(uri, &body)
    }
}

/// Finds a policy refusal inside a reqwest error (from the resolver or the redirect check).
fn refusal_in(err: &reqwest::Error) -> Option<UrlRefusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<UrlRefusal>() {
            return Some(r.clone());
        }
        source = e.source();
    }
    None
}

fn short(uri: &str) -> String {
    // data: URIs can be long; messages keep the start.
    if uri.len() > 120 {
        let cut = (0..=120)
            .rev()
            .find(|i| uri.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &uri[..cut])
    } else {
        uri.to_string()
    }
}

fn parse_json(uri: &str, bytes: &[u8]) -> Result<Value, FetchError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(FetchError::BadData(format!(
            "document is larger than {MAX_DOCUMENT_BYTES} bytes"
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| FetchError::NotJson {
        uri: short(uri),
        why: e.to_string(),
    })
}

/// Decodes `data:[<mediatype>][;base64],<data>`.
pub fn decode_data_uri(uri: &str) -> Result<Vec<u8>, FetchError> {
    let body = &uri["data:".len()..];
    let (header, data) = body
        .split_once(',')
        .ok_or_else(|| FetchError::BadData("no comma after the media type".into()))?;
    if data.len() > MAX_DOCUMENT_BYTES * 2 {
        return Err(FetchError::BadData("too large".into()));
    }
    let mut params = header.split(';').map(|p| p.trim().to_ascii_lowercase());
    let media = params.next().unwrap_or_default();
    if !(media.is_empty()
        || media == "application/json"
        || media.ends_with("+json")
        || media == "text/plain")
    {
        return Err(FetchError::BadData(format!(
            "media type {media:?} is not JSON"
        )));
    }
    if params.any(|p| p == "base64") {
        let compact: String = percent_decode(data)?
            .into_iter()
            .map(char::from)
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let engines = [
            base64::engine::general_purpose::STANDARD,
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|e| e.decode(compact.as_bytes()).ok())
            .ok_or_else(|| FetchError::BadData("invalid base64".into()))
    } else {
        percent_decode(data)
    }
}

fn percent_decode(s: &str) -> Result<Vec<u8>, FetchError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| FetchError::BadData("bad percent escape".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fetcher() -> DocumentFetcher {
        DocumentFetcher::new(
            AddressPolicy::strict(),
            Url::parse("https://gateway.example/").unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn data_uris_in_both_encodings() {
        let doc = json!({"name": "x", "services": []});
        let b64 = base64::engine::general_purpose::STANDARD.encode(doc.to_string());
        let f = fetcher();
        assert_eq!(
            f.fetch(&format!("data:application/json;base64,{b64}"))
                .await
                .unwrap(),
            doc
        );
        assert_eq!(
            f.fetch("data:application/json,%7B%22name%22%3A%22x%22%2C%22services%22%3A%5B%5D%7D")
                .await
                .unwrap(),
            doc
        );
        assert_eq!(
            f.fetch(r#"data:application/json;charset=utf-8,{"name":"x","services":[]}"#)
                .await
                .unwrap(),
            doc
        );
        assert!(f.fetch("data:image/png;base64,AAAA").await.is_err());
        assert!(f.fetch("data:application/json;base64,@@@").await.is_err());
    }

    #[tokio::test]
    async fn private_and_odd_uris_are_refused_without_dialling() {
        let f = fetcher();
        for uri in [
            "http://127.0.0.1:9/doc.json",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/x",
            "http://worker.autoresearch.svc.cluster.local/doc.json",
        ] {
            let err = f.fetch(uri).await.unwrap_err();
            assert!(err.refusal().is_some(), "{uri}: {err}");
        }
        assert!(matches!(
            f.fetch("file:///etc/passwd").await,
            Err(FetchError::Unsupported(_))
        ));
    }

    #[test]
    fn ipfs_through_the_gateway() {
        let f = fetcher();
        assert_eq!(
            f.gateway_url("ipfs://bafyabc/agent.json").unwrap().as_str(),
            "https://gateway.example/ipfs/bafyabc/agent.json"
        );
        assert_eq!(
            f.gateway_url("ipfs://ipfs/Qm123").unwrap().as_str(),
            "https://gateway.example/ipfs/Qm123"
        );
        assert!(f.gateway_url("ipfs://../../etc?x").is_err());
        assert!(f.gateway_url("ipfs://cid/../../admin").is_err());
    }
}
