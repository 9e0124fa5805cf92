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
enum RpcAnswer {
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
fn rpc_answer(answer: &serde_json::Value) -> RpcAnswer {
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

/// Why a JSON-RPC call has no result.
#[derive(Debug, PartialEq)]
pub enum RpcFailure {
    /// Not sent, not read, or not a JSON-RPC answer: what happened, and whether it timed out.
    Transport { why: String, timeout: bool },
    /// The provider's error object.
    Provider { code: i64, message: String },
}

/// Posts one JSON-RPC call to `url` and reads the answer (at most `cap` bytes) whatever the HTTP
/// status: providers such as eRPC send their error objects with a 4xx or 5xx. Each chain client
/// puts its own method and URL around the failure.
pub async fn rpc_call(
    http: &reqwest::Client,
    url: &url::Url,
    id: u64,
    method: &str,
    params: serde_json::Value,
    cap: usize,
) -> Result<serde_json::Value, RpcFailure> {
    let transport = |why: String, timeout: bool| RpcFailure::Transport { why, timeout };
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let resp = http
        .post(url.clone())
        .json(&body)
        .send()
        .await
        .map_err(|e| transport(e.to_string(), e.is_timeout()))?;
    let status = resp.status();
    let bytes = read_capped(resp, cap)
        .await
        .map_err(|e| transport(e.to_string(), false))?;
    let answer: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| {
        let why = format!("HTTP {status}: not JSON-RPC: {}", snippet(&bytes, 200));
        transport(why, false)
    })?;
    match rpc_answer(&answer) {
        RpcAnswer::Result(result) => Ok(result),
        RpcAnswer::Error { code, message } => Err(RpcFailure::Provider { code, message }),
        RpcAnswer::Empty => Err(transport(format!("HTTP {status}: no result"), false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_json_rpc_answer_is_read_whatever_the_http_status() {
        use axum::http::StatusCode;
        use axum::routing::post;
        let answer =
            |status: StatusCode, body: &'static str| post(move || async move { (status, body) });
        let app = axum::Router::new()
            .route("/ok", answer(StatusCode::OK, r#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#))
            .route(
                "/refused",
                answer(
                    StatusCode::BAD_REQUEST,
                    r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"range too large"}}"#,
                ),
            )
            .route("/html", answer(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>"))
            .route("/empty", answer(StatusCode::OK, r#"{"jsonrpc":"2.0","id":1}"#));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        ensure_crypto_provider();
        let http = reqwest::Client::new();
        let call = |path: &str| {
            let url = url::Url::parse(&format!("{base}{path}")).unwrap();
            let http = http.clone();
            async move { rpc_call(&http, &url, 1, "eth_chainId", serde_json::json!([]), 4096).await }
        };
        assert_eq!(call("/ok").await, Ok(serde_json::json!("0x1")));
        assert_eq!(
            call("/refused").await,
            Err(RpcFailure::Provider {
                code: -32005,
                message: "range too large".into()
            })
        );
        let Err(RpcFailure::Transport {
            why,
            timeout: false,
        }) = call("/html").await
        else {
            panic!("an HTML page is not an answer")
        };
        assert!(why.contains("502") && why.contains("bad gateway"), "{why}");
        let Err(RpcFailure::Transport { why, .. }) = call("/empty").await else {
            panic!("an answer without result or error is not a result")
        };
        assert!(why.contains("no result"), "{why}");
    }

    #[test]
    fn snippets_are_bounded() {
        assert_eq!(snippet(b"hello", 10), "hello");
        assert_eq!(snippet("héllo wörld".as_bytes(), 5), "héllo…");
    }
}
