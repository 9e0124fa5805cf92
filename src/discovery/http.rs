//! Small HTTP helpers shared by the index client, the document fetcher and the chain reader.

use std::sync::Once;

use futures::StreamExt;

/// The User-Agent every discovery request sends (8004scan asks clients to identify themselves).
pub const USER_AGENT: &str = concat!("autoresearch-coordinator/", env!("CARGO_PKG_VERSION"));

/// Installs ring as rustls' process-wide crypto provider. reqwest is built without one, so a
/// client cannot be built before this runs; it is idempotent and cheap.
pub fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another part of the program installed one first, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A body larger than the cap, or a transport error while reading it.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body exceeded the cap.
    #[error("response body is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed while reading.
    #[error("reading the response body: {0}")]
    Read(#[from] reqwest::Error),
}

/// Reads a response body, refusing to buffer more than `cap` bytes: answers from strangers
/// are size-capped before they are parsed.
pub async fn read_capped(resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|len| len > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first `n` characters of a body, for error messages.
pub fn snippet(body: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(n).collect();
    if text.chars().count() > n {
        s.push('…');
    }
    s
}
