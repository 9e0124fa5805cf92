//! HTTP plumbing shared by every client of untrusted peers (workers, gates, the signer, the
//! index, registration documents, JSON-RPC): the TLS provider, the User-Agent, and body reads
//! that stop at a size cap so that a peer can neither stall nor flood the coordinator.

use std::sync::Once;

use futures::StreamExt;

/// The User-Agent every request sends (8004scan asks clients to identify themselves).
pub const USER_AGENT: &str = concat!("autoresearch-coordinator/", env!("CARGO_PKG_VERSION"));

/// Installs ring as rustls' process-wide crypto provider. reqwest is built without one (the crate
/// uses ring through kube), so no client can be built before this runs; idempotent and cheap.
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
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed or timed out mid-body.
    #[error("reading the response failed: {0}")]
    Read(#[from] reqwest::Error),
}

/// Reads at most `cap` bytes of a body; more is an error rather than a truncation, so a
/// half-read JSON is never mistaken for a whole one.
pub async fn read_capped(response: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > cap {
            return Err(BodyError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first `n` characters of an untrusted body, for error messages.
pub fn snippet(body: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(n).collect();
    if text.chars().count() > n {
        s.push('…');
    }
    s
}

/// A JSON-RPC answer, read whatever the HTTP status: its `result`, or the provider's error.
pub enum RpcAnswer {
    Result(serde_json::Value),
    /// The `error` object's code and message (at most 300 characters: it is the peer's text).
    Error {
        code: i64,
        message: String,
    },
    /// Neither `result` nor `error`.
    Empty,
}

/// Reads a JSON-RPC answer; both chain clients (the USDC reads, the registry scan) share it.
pub fn rpc_answer(answer: &serde_json::Value) -> RpcAnswer {
    use serde_json::Value;
    if let Some(err) = answer.get("error") {
        return RpcAnswer::Error {
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(300)
                .collect(),
        };
    }
    answer
        .get("result")
        .cloned()
        .map_or(RpcAnswer::Empty, RpcAnswer::Result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_bounded() {
        assert_eq!(snippet(b"hello", 10), "hello");
        assert_eq!(snippet("héllo wörld".as_bytes(), 5), "héllo…");
    }
}
