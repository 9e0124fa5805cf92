//! HTTP plumbing shared by the signer and worker clients: one client configuration, and body reads
//! that stop at a size cap, so an untrusted peer can neither stall nor flood the coordinator.

use std::time::Duration;

pub use crate::http::{BodyError, read_capped};

/// Largest response body read from a worker, a gate or the signer.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An HTTP client for untrusted peers: no redirects (a redirect could point a paid request, or a
/// bearer token, at another host), connect and overall timeouts, an explicit User-Agent.
pub fn client(timeout: Duration) -> reqwest::Client {
    client_from(reqwest::Client::builder(), timeout)
}

/// [`client`]'s settings on top of `builder` (for example one whose DNS resolution is pinned to
/// checked addresses: `discovery::AddressPolicy::client_builder`).
pub fn client_from(builder: reqwest::ClientBuilder, timeout: Duration) -> reqwest::Client {
    // reqwest is built without a TLS provider (the crate uses ring through kube).
    crate::http::ensure_crypto_provider();
    builder
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .user_agent(crate::http::USER_AGENT)
        .build()
        .expect("a client with a TLS provider and no custom certificates always builds")
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
