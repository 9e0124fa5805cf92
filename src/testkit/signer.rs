//! `FakeSigner`: obol-stack's remote-signer API (docs/protocols.md §5) on loopback, signing
//! EIP-712 typed data for real with a local key.
//!
//! What it shares with the real signer, including the inconvenient parts: `/api/v1/*` needs the
//! bearer token when one is set (401 otherwise), errors are `{error, code, address}` with the
//! codes `BAD_REQUEST` (400), `SIGNER_NOT_FOUND` (404), `MISSING_FIELD` (422) and `SIGNING_ERROR`
//! (500), and the typed data is hashed as sent: a wrong domain gives a signature that recovers to
//! someone else for the intended domain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use alloy::dyn_abi::TypedData;
use alloy::primitives::{Address, hex};
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};

use super::server::Server;
use super::{PAYER_KEY, TOKEN};
use crate::payment::RemoteSigner;

struct SignerState {
    key: PrivateKeySigner,
    token: Option<String>,
    unauthorized: AtomicBool,
    key_calls: AtomicUsize,
    sign_calls: AtomicUsize,
}

/// A remote signer on `127.0.0.1:<random port>`, stopped when dropped.
pub struct FakeSigner {
    server: Server,
    state: Arc<SignerState>,
}

impl FakeSigner {
    /// A signer holding the golden-vector key ([`PAYER_KEY`]) and requiring the token [`TOKEN`].
    pub async fn start() -> Self {
        Self::with(PAYER_KEY, Some(TOKEN)).await
    }

    /// A signer holding `key` (hex private key); `token: None` accepts requests without one.
    pub async fn with(key: &str, token: Option<&str>) -> Self {
        let state = Arc::new(SignerState {
            key: key.parse().expect("a hex secp256k1 private key"),
            token: token.map(str::to_string),
            unauthorized: AtomicBool::new(false),
            key_calls: AtomicUsize::new(0),
            sign_calls: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/api/v1/keys", get(keys))
            .route("/api/v1/sign/{address}/typed-data", post(sign_typed_data))
            .with_state(state.clone());
        let server = Server::start(router)
            .await
            .expect("bind a loopback port for the fake signer");
        Self { server, state }
    }

    /// Base URL, as `REMOTE_SIGNER_URL` takes it.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The address of the key it holds.
    pub fn address(&self) -> Address {
        self.state.key.address()
    }

    /// The crate's real client, pointed here with the right token.
    pub fn client(&self) -> RemoteSigner {
        RemoteSigner::new(&self.url(), self.state.token.clone()).expect("a loopback URL")
    }

    /// The crate's real client, pointed here with `token`.
    pub fn client_with_token(&self, token: Option<&str>) -> RemoteSigner {
        RemoteSigner::new(&self.url(), token.map(str::to_string)).expect("a loopback URL")
    }

    /// Knob: answer every `/api/v1/*` request with 401, whatever the token.
    pub fn set_unauthorized(&self, on: bool) {
        self.state.unauthorized.store(on, Ordering::SeqCst);
    }

    /// Knob: the port refuses connections (and open connections are cut) until [`Self::up`].
    pub fn down(&self) {
        self.server.down();
    }

    /// Back on the same port after [`Self::down`].
    pub async fn up(&self) {
        self.server
            .up()
            .await
            .expect("rebind the fake signer's port");
    }

    /// `GET /api/v1/keys` requests answered (any status).
    pub fn key_calls(&self) -> usize {
        self.state.key_calls.load(Ordering::SeqCst)
    }

    /// `POST /api/v1/sign/.../typed-data` requests answered (any status).
    pub fn sign_calls(&self) -> usize {
        self.state.sign_calls.load(Ordering::SeqCst)
    }
}

fn fail(status: StatusCode, code: &str, error: String, address: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "code": code, "address": address})),
    )
        .into_response()
}

impl SignerState {
    /// The bearer-token check of `/api/v1/*`.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let sent = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token_ok = match &self.token {
            None => true,
            Some(t) => sent == Some(format!("Bearer {t}").as_str()),
        };
        token_ok && !self.unauthorized.load(Ordering::SeqCst)
    }
}

fn unauthorized() -> Response {
    fail(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "unauthorized".into(),
        "",
    )
}

async fn keys(State(state): State<Arc<SignerState>>, headers: HeaderMap) -> Response {
    state.key_calls.fetch_add(1, Ordering::SeqCst);
    if !state.authorized(&headers) {
        return unauthorized();
    }
    Json(json!({"keys": [state.key.address().to_checksum(None)]})).into_response()
}

async fn sign_typed_data(
    State(state): State<Arc<SignerState>>,
    Path(address): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.sign_calls.fetch_add(1, Ordering::SeqCst);
    if !state.authorized(&headers) {
        return unauthorized();
    }
    let Ok(parsed) = address.parse::<Address>() else {
        let error = format!("invalid address: {address}");
        return fail(StatusCode::BAD_REQUEST, "BAD_REQUEST", error, &address);
    };
    if parsed != state.key.address() {
        let error = format!("no key for address {parsed}");
        return fail(StatusCode::NOT_FOUND, "SIGNER_NOT_FOUND", error, &address);
    }
    match sign(&state.key, &body) {
        Ok(signature) => Json(json!({"signature": signature})).into_response(),
        Err((status, code, error)) => fail(status, code, error, &address),
    }
}

type SignFailure = (StatusCode, &'static str, String);

/// Hashes the typed data as sent and signs the digest: `0x` + r‖s‖v with v = 27/28.
fn sign(key: &PrivateKeySigner, body: &[u8]) -> Result<String, SignFailure> {
    let bad = |e: String| (StatusCode::BAD_REQUEST, "BAD_REQUEST", e);
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("invalid JSON body".into()))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("body must be a JSON object".into()))?;
    for field in ["types", "primaryType", "domain", "message"] {
        if object.get(field).is_none_or(Value::is_null) {
            let error = format!("missing field: {field}");
            return Err((StatusCode::UNPROCESSABLE_ENTITY, "MISSING_FIELD", error));
        }
    }
    let signing_error = |e: String| {
        let error = format!("signing failed: {e}");
        (StatusCode::INTERNAL_SERVER_ERROR, "SIGNING_ERROR", error)
    };
    let typed: TypedData =
        serde_json::from_value(value).map_err(|e| signing_error(e.to_string()))?;
    let digest = typed
        .eip712_signing_hash()
        .map_err(|e| signing_error(e.to_string()))?;
    let signature = key
        .sign_hash_sync(&digest)
        .map_err(|e| signing_error(e.to_string()))?;
    Ok(hex::encode_prefixed(signature.as_bytes()))
}
