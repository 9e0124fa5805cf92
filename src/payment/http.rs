//! HTTP plumbing shared by the signer and worker clients: one client configuration, and body reads
//! that stop at a size cap, so an untrusted peer can neither stall nor flood the coordinator.

use std::time::Duration;

use futures::StreamExt;

/// Largest response body read from a worker, a gate or the signer.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a response body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than the cap.
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed or timed out mid-body.
    #[error("reading the response failed: {0}")]
    Read(#[source] reqwest::Error),
}

/// An HTTP client for untrusted peers: no redirects (a redirect could point a paid request, or a
/// bearer token, at another host), connect and overall timeouts, an explicit User-Agent.
pub fn client(timeout: Duration) -> reqwest::Client {
    client_from(reqwest::Client::builder(), timeout)
}

/// [`client`]'s settings on top of `builder` (for example one whose DNS resolution is pinned to
/// checked addresses: `discovery::AddressPolicy::client_builder`).
pub fn client_from(builder: reqwest::ClientBuilder, timeout: Duration) -> reqwest::Client {
    // reqwest is built without a TLS provider (the crate uses ring through kube).
    crate::discovery::http::ensure_crypto_provider();
    builder
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .user_agent(concat!(
            "autoresearch-coordinator/",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .expect("a client with a TLS provider and no custom certificates always builds")
}

/// Reads at most `max` bytes of a body; more is an error rather than a truncation, so a
/// half-read JSON is never mistaken for a whole one.
pub async fn read_capped(response: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A short, printable excerpt of an untrusted body for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]);
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clean.trim().to_string()
}
