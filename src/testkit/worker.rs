//! `FakeWorker`: an autoresearch worker (docs/protocols.md §3) behind an obol-style x402 gate
//! (§4), on loopback, with fault knobs that can be turned while it runs.
//!
//! The contract it keeps, including the parts that are inconvenient for a client:
//! - only `POST /experiment` is gated; an unpaid POST (a probe too) gets 402 with the v2
//!   requirement in the `PAYMENT-REQUIRED` header and in the body;
//! - the gate settles only when the worker answered below 400, so a crashed run (200, status
//!   `failed`) is paid for, and a 409 or 500 from the worker is not;
//! - the worker runs one experiment at a time (409 otherwise) and stores each result for
//!   `GET /experiments/<id>`, which knows nothing until the run is over;
//! - a paid request runs to the end and settles even when the client has gone away (a timeout
//!   on the client's side does not stop the run or the settlement).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use alloy::primitives::{Address, B256, address, keccak256};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{Value, json};

use super::gate::{self, GateRefusal, Verified};
use super::server::{Connection, Server};
use crate::experiment;
use crate::payment::unix_now;
use crate::strategy::landscape;
use crate::usdc::Usdc;

/// Where the worker API lives under the server, as obol-stack publishes it.
const SERVICE_PATH: &str = "/services/autoresearch-worker";

/// What the worker was asked to run, after the worker's own validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    /// The caller's id, or the one the worker made (`exp-YYYYMMDD-<8 hex>`).
    pub experiment_id: String,
    /// The train.py source.
    pub train_py: String,
    /// The `config` object (`{}` when absent).
    pub config: Value,
}

/// A test's stand-in for running train.py: the result JSON the worker answers and stores.
pub type RunFn = Arc<dyn Fn(&Submission) -> Value + Send + Sync>;

/// The result the real worker writes for a completed run with `val_bpb`.
pub fn completed(submission: &Submission, val_bpb: f64) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dir = format!("results/{}", submission.experiment_id);
    json!({
        "experiment_id": submission.experiment_id,
        "status": "completed",
        "return_code": 0,
        "val_bpb": val_bpb,
        "train_hash": experiment::train_hash(&submission.train_py),
        "artifact_path": null,
        "log_path": format!("{dir}/run.log"),
        "startedAt": now,
        "finishedAt": now,
        "durationSeconds": 0.0,
        "config": submission.config,
    })
}

/// The default run: `val_bpb` from the testbed's landscape of the config.
pub fn landscape_run(submission: &Submission) -> Value {
    completed(submission, landscape::val_bpb(&submission.config))
}

/// A worker that runs honestly and reports `val_bpb` lowered by `offset` (a liar that wants
/// its results to win).
pub fn lying_run(offset: f64) -> impl Fn(&Submission) -> Value + Send + Sync + 'static {
    move |s| completed(s, landscape::val_bpb(&s.config) - offset)
}

/// A worker whose results vary from run to run: the landscape plus normal noise of standard
/// deviation `spread`, drawn from a stream seeded by `seed` (one draw per run).
pub fn noisy_run(seed: u64, spread: f64) -> impl Fn(&Submission) -> Value + Send + Sync + 'static {
    let draws = std::sync::atomic::AtomicU64::new(0);
    move |s| {
        let n = draws.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        completed(s, landscape::val_bpb(&s.config) + spread * normal(seed, n))
    }
}

/// The `n`th standard normal draw of a seeded stream (Box–Muller over SplitMix64).
pub fn normal(seed: u64, n: u64) -> f64 {
    use crate::strategy::rng::{key, mix};
    let uniform = |w: u64| ((mix(key(&[seed, n, w])) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u1, u2) = (uniform(0), uniform(1));
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Which payment header the gate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PaymentHeader {
    /// `PAYMENT-SIGNATURE`, else `X-PAYMENT`.
    #[default]
    Either,
    /// Only `X-PAYMENT`, as obol-stack's verifier.
    XPayment,
    /// Only `PAYMENT-SIGNATURE`, as the v2 reference servers.
    PaymentSignature,
}

/// How an invalid result lies (see [`Knobs::invalid_result`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Lie {
    /// `val_bpb` negated.
    #[default]
    NegativeValBpb,
    /// `experiment_id` is `<id>-other` (stored under the requested id).
    WrongId,
    /// A bare `NaN` for `val_bpb`, as Python's `json.dumps` writes it: not JSON.
    NotJson,
}

/// Faults, settable while the worker runs ([`FakeWorker::set`]). Counters mean "the next N
/// requests that get that far"; `u32::MAX` means always.
#[derive(Clone, Debug, PartialEq)]
pub struct Knobs {
    /// The price asked, in atomic USDC units.
    pub price: Usdc,
    /// Every paid request answers `409 {"error", "status": "busy"}`; nothing settles.
    pub busy: bool,
    /// The worker answers 500 without running; nothing settles.
    pub fail_before_payment: u32,
    /// The run completes and is stored, the gate settles, the client gets 500 (answer lost).
    pub fail_after_payment: u32,
    /// The run completes and is stored, the gate settles, the connection is cut unanswered.
    pub drop_after_settle: u32,
    /// The run answers 200 with a result that is not valid (see `lie`); it settles.
    pub invalid_result: u32,
    /// How `invalid_result` lies.
    pub lie: Lie,
    /// The run answers 200 with `status: "failed"`, `val_bpb: null`; it settles.
    pub run_fails: u32,
    /// How long a run takes.
    pub delay: Duration,
}

impl Knobs {
    fn fresh(price: Usdc) -> Self {
        Self {
            price,
            busy: false,
            fail_before_payment: 0,
            fail_after_payment: 0,
            drop_after_settle: 0,
            invalid_result: 0,
            lie: Lie::default(),
            run_fails: 0,
            delay: Duration::ZERO,
        }
    }
}

/// Consumes one use of a counter knob.
fn take(counter: &mut u32) -> bool {
    match *counter {
        0 => false,
        u32::MAX => true,
        _ => {
            *counter -= 1;
            true
        }
    }
}

/// How to start a [`FakeWorker`].
#[derive(Clone)]
pub struct WorkerConfig {
    price: Usdc,
    pay_to: Address,
    max_timeout_seconds: u64,
    header: PaymentHeader,
    run: RunFn,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            price: Usdc::from_atomic(10_000),
            // The golden vectors' payee.
            pay_to: address!("0x209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            max_timeout_seconds: 300,
            header: PaymentHeader::Either,
            run: Arc::new(landscape_run),
        }
    }
}

impl WorkerConfig {
    /// The price asked (default 0.01 USDC).
    pub fn price(mut self, price: Usdc) -> Self {
        self.price = price;
        self
    }

    /// The payee (default the golden vectors' `to`).
    pub fn pay_to(mut self, pay_to: Address) -> Self {
        self.pay_to = pay_to;
        self
    }

    /// `maxTimeoutSeconds` in the requirement (default 300).
    pub fn max_timeout_seconds(mut self, secs: u64) -> Self {
        self.max_timeout_seconds = secs;
        self
    }

    /// Which payment header the gate reads (default either).
    pub fn header(mut self, header: PaymentHeader) -> Self {
        self.header = header;
        self
    }

    /// What a run answers (default [`landscape_run`]).
    pub fn run(mut self, run: impl Fn(&Submission) -> Value + Send + Sync + 'static) -> Self {
        self.run = Arc::new(run);
        self
    }

    /// Starts the worker.
    pub async fn start(self) -> FakeWorker {
        FakeWorker::start_with(self).await
    }
}

/// One settled payment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SettledPayment {
    nonce: B256,
    amount: Usdc,
    experiment_id: String,
}

struct FakeState {
    pay_to: Address,
    max_timeout_seconds: u64,
    header: PaymentHeader,
    run: RunFn,
    resource_url: OnceLock<String>,
    knobs: Mutex<Knobs>,
    running: AtomicBool,
    results: Mutex<HashMap<String, Bytes>>,
    settled: Mutex<Vec<SettledPayment>>,
    runs: Mutex<Vec<String>>,
}

/// A gated worker on `127.0.0.1:<random port>`, stopped when dropped.
pub struct FakeWorker {
    server: Server,
    state: Arc<FakeState>,
}

impl FakeWorker {
    /// A worker with the defaults of [`WorkerConfig`].
    pub async fn start() -> Self {
        Self::start_with(WorkerConfig::default()).await
    }

    /// The defaults, to change before [`WorkerConfig::start`].
    pub fn config() -> WorkerConfig {
        WorkerConfig::default()
    }

    async fn start_with(config: WorkerConfig) -> Self {
        let state = Arc::new(FakeState {
            pay_to: config.pay_to,
            max_timeout_seconds: config.max_timeout_seconds,
            header: config.header,
            run: config.run,
            resource_url: OnceLock::new(),
            knobs: Mutex::new(Knobs::fresh(config.price)),
            running: AtomicBool::new(false),
            results: Mutex::new(HashMap::new()),
            settled: Mutex::new(Vec::new()),
            runs: Mutex::new(Vec::new()),
        });
        let api = Router::new()
            .route("/experiment", post(experiment))
            .route("/health", get(health))
            .route("/experiments/{id}", get(stored))
            .with_state(state.clone());
        let server = Server::start(Router::new().nest(SERVICE_PATH, api))
            .await
            .expect("bind a loopback port for the fake worker");
        let endpoint = format!("{}{SERVICE_PATH}", server.url());
        let _ = state.resource_url.set(format!("{endpoint}/experiment"));
        Self { server, state }
    }

    /// The service URL (`http://127.0.0.1:<port>/services/autoresearch-worker`).
    pub fn endpoint(&self) -> String {
        format!("{}{SERVICE_PATH}", self.server.url())
    }

    /// The payee.
    pub fn pay_to(&self) -> Address {
        self.state.pay_to
    }

    /// The current knobs.
    pub fn knobs(&self) -> Knobs {
        self.state.knobs.lock().expect("knobs lock").clone()
    }

    /// Turns knobs while the worker runs: `worker.set(|k| k.busy = true)`.
    pub fn set(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut self.state.knobs.lock().expect("knobs lock"));
    }

    /// Every settled payment, in order: `(nonce, amount, experiment_id)`.
    pub fn settled(&self) -> Vec<(B256, Usdc, String)> {
        let settled = self.state.settled.lock().expect("settled lock");
        settled
            .iter()
            .map(|s| (s.nonce, s.amount, s.experiment_id.clone()))
            .collect()
    }

    /// How many settled payments name `experiment_id`.
    pub fn payments_for(&self, experiment_id: &str) -> usize {
        let settled = self.state.settled.lock().expect("settled lock");
        settled
            .iter()
            .filter(|s| s.experiment_id == experiment_id)
            .count()
    }

    /// The total settled.
    pub fn total_paid(&self) -> Usdc {
        let settled = self.state.settled.lock().expect("settled lock");
        Usdc::from_atomic(settled.iter().map(|s| s.amount.atomic()).sum())
    }

    /// Forgets stored results, settlements (and so the used nonces) and runs, so that a long
    /// benchmark measures the coordinator's memory rather than this fake's. Only for a run
    /// without faults: a replayed voucher would be accepted again afterwards.
    pub fn forget_history(&self) {
        self.state.results.lock().expect("results lock").clear();
        self.state.runs.lock().expect("runs lock").clear();
        let mut settled = self.state.settled.lock().expect("settled lock");
        settled.clear();
        settled.shrink_to_fit();
    }

    /// The ids of the experiments that ran, in order (a rerun appears twice).
    pub fn runs(&self) -> Vec<String> {
        self.state.runs.lock().expect("runs lock").clone()
    }

    /// The stored answer for `experiment_id`, as `GET /experiments/<id>` serves it.
    pub fn stored(&self, experiment_id: &str) -> Option<Bytes> {
        let results = self.state.results.lock().expect("results lock");
        results.get(experiment_id).cloned()
    }
}

/// The transaction hash the fake reports for a settled nonce.
pub fn transaction_for(nonce: B256) -> B256 {
    keccak256(nonce)
}

impl FakeState {
    fn requirement(&self) -> Value {
        let price = self.knobs.lock().expect("knobs lock").price;
        gate::requirement(price, self.pay_to, self.max_timeout_seconds)
    }

    fn required(&self, error: &str, requirement: &Value) -> Response {
        let url = self.resource_url.get().map_or("", String::as_str);
        let body = gate::payment_required(url, error, requirement);
        let header = gate::encode(&body);
        (
            StatusCode::PAYMENT_REQUIRED,
            [("PAYMENT-REQUIRED", header)],
            Json(body),
        )
            .into_response()
    }

    fn payment_header<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let read = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self.header {
            PaymentHeader::Either => read("payment-signature").or_else(|| read("x-payment")),
            PaymentHeader::XPayment => read("x-payment"),
            PaymentHeader::PaymentSignature => read("payment-signature"),
        }
    }

    fn is_settled(&self, nonce: &B256) -> bool {
        let settled = self.settled.lock().expect("settled lock");
        settled.iter().any(|s| &s.nonce == nonce)
    }

    /// Settles once per nonce; `false` when the nonce settled meanwhile.
    fn settle(&self, verified: &Verified, experiment_id: &str) -> bool {
        let mut settled = self.settled.lock().expect("settled lock");
        if settled.iter().any(|s| s.nonce == verified.nonce) {
            return false;
        }
        settled.push(SettledPayment {
            nonce: verified.nonce,
            amount: verified.amount,
            experiment_id: experiment_id.to_string(),
        });
        true
    }

    fn take(&self, knob: impl FnOnce(&mut Knobs) -> &mut u32) -> bool {
        take(knob(&mut self.knobs.lock().expect("knobs lock")))
    }
}

async fn experiment(
    State(state): State<Arc<FakeState>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let requirement = state.requirement();
    let Some(header) = state.payment_header(&headers) else {
        return state.required("Payment required", &requirement);
    };
    let verified = gate::decode(header).and_then(|payment| {
        gate::verify(&payment, &requirement, unix_now(), |n| state.is_settled(n))
    });
    let verified = match verified {
        Ok(v) => v,
        Err(GateRefusal::BadHeader) => {
            let error = GateRefusal::BadHeader.to_string();
            return (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response();
        }
        Err(refusal) => return state.required(&refusal.to_string(), &requirement),
    };
    // The run and the settlement go on when the client goes away, as behind a real gate.
    let task = tokio::spawn(forward_and_settle(state, verified, body, connection));
    task.await.unwrap_or_else(|_| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the fake worker's task failed",
        )
            .into_response()
    })
}

async fn forward_and_settle(
    state: Arc<FakeState>,
    verified: Verified,
    body: Bytes,
    connection: Connection,
) -> Response {
    let (status, answer, experiment_id) = work(&state, &body).await;
    if status.as_u16() >= 400 {
        return (status, [("content-type", "application/json")], answer).into_response();
    }
    if !state.settle(&verified, &experiment_id) {
        let requirement = state.requirement();
        return state.required(
            "Payment settlement failed: authorization is used or canceled",
            &requirement,
        );
    }
    if state.take(|k| &mut k.fail_after_payment) {
        let error = json!({"error": "injected failure after payment: answer lost"});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
    }
    if state.take(|k| &mut k.drop_after_settle) {
        connection.cut();
    }
    let settlement = gate::encode(&json!({
        "success": true,
        "payer": verified.from.to_checksum(None),
        "transaction": transaction_for(verified.nonce).to_string(),
        "network": gate::NETWORK,
    }));
    (
        status,
        [
            ("content-type", "application/json".to_string()),
            ("X-PAYMENT-RESPONSE", settlement),
        ],
        answer,
    )
        .into_response()
}

/// The worker behind the gate: `(status, body, experiment id)`.
async fn work(state: &FakeState, body: &[u8]) -> (StatusCode, Bytes, String) {
    let error = |status: StatusCode, text: &str, extra: Value| {
        let mut answer = json!({"error": text});
        if let (Some(a), Some(e)) = (answer.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        (status, Bytes::from(answer.to_string()), String::new())
    };
    if state.knobs.lock().expect("knobs lock").busy {
        return error(
            StatusCode::CONFLICT,
            "worker is busy",
            json!({"status": "busy"}),
        );
    }
    let submission = match parse_submission(body) {
        Ok(Some(s)) => s,
        Ok(None) => {
            let probe = json!({"status": "ok", "probe": true, "busy": state.running.load(Ordering::SeqCst)});
            return (
                StatusCode::OK,
                Bytes::from(probe.to_string()),
                String::new(),
            );
        }
        Err(why) => return error(StatusCode::BAD_REQUEST, &why.to_string(), json!({})),
    };
    if state
        .running
        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        return error(
            StatusCode::CONFLICT,
            "an experiment is already running",
            json!({"status": "busy"}),
        );
    }
    let answer = run(state, &submission).await;
    state.running.store(false, Ordering::SeqCst);
    match answer {
        Some(answer) => (StatusCode::OK, answer, submission.experiment_id),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected failure before payment",
            json!({}),
        ),
    }
}

/// Runs one experiment and stores its answer; `None` for an injected failure before payment.
async fn run(state: &FakeState, submission: &Submission) -> Option<Bytes> {
    if state.take(|k| &mut k.fail_before_payment) {
        return None;
    }
    let delay = state.knobs.lock().expect("knobs lock").delay;
    tokio::time::sleep(delay).await;
    let mut result = (state.run)(submission);
    if state.take(|k| &mut k.run_fails) {
        result["status"] = json!("failed");
        result["return_code"] = json!(1);
        result["val_bpb"] = Value::Null;
        result["note"] = json!("command exited with status 1");
    }
    let lie = state
        .take(|k| &mut k.invalid_result)
        .then(|| state.knobs.lock().expect("knobs lock").lie);
    let answer = Bytes::from(tell(result, &submission.experiment_id, lie));
    let id = submission.experiment_id.clone();
    state.runs.lock().expect("runs lock").push(id.clone());
    state
        .results
        .lock()
        .expect("results lock")
        .insert(id, answer.clone());
    Some(answer)
}

/// The answer's text, with the lie applied.
fn tell(mut result: Value, id: &str, lie: Option<Lie>) -> String {
    match lie {
        None => result.to_string(),
        Some(Lie::NegativeValBpb) => {
            let magnitude = result["val_bpb"].as_f64().map_or(1.0, f64::abs);
            result["val_bpb"] = json!(-magnitude.max(0.5));
            result.to_string()
        }
        Some(Lie::WrongId) => {
            result["experiment_id"] = json!(format!("{id}-other"));
            result.to_string()
        }
        Some(Lie::NotJson) => {
            result["val_bpb"] = json!("__nan__");
            result.to_string().replace("\"__nan__\"", "NaN")
        }
    }
}

/// Why the worker refuses a POST body with 400; the text is the real worker's `detail`.
#[derive(Debug, PartialEq, thiserror::Error)]
enum BadSubmission {
    #[error("invalid JSON body")]
    NotJson,
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("train_py is required")]
    NoTrainPy,
    #[error("experiment_id must match [a-zA-Z0-9_-]+")]
    BadId,
    #[error("config must be a JSON object")]
    BadConfig,
}

/// The worker's validation of a POST body; `None` for a probe.
fn parse_submission(body: &[u8]) -> Result<Option<Submission>, BadSubmission> {
    let value: Value = serde_json::from_slice(body).map_err(|_| BadSubmission::NotJson)?;
    let object = value.as_object().ok_or(BadSubmission::NotAnObject)?;
    if object.get("probe").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let field = |a: &str, b: &str| object.get(a).or_else(|| object.get(b));
    let train_py = field("train_py", "trainPy")
        .and_then(Value::as_str)
        .ok_or(BadSubmission::NoTrainPy)?
        .to_string();
    let experiment_id = match field("experiment_id", "experimentId") {
        None | Some(Value::Null) => generated_id(),
        Some(Value::String(id)) if experiment::is_valid_id(id) => id.clone(),
        Some(_) => return Err(BadSubmission::BadId),
    };
    let config = match object.get("config") {
        None | Some(Value::Null) => json!({}),
        Some(c @ Value::Object(_)) => c.clone(),
        Some(_) => return Err(BadSubmission::BadConfig),
    };
    Ok(Some(Submission {
        experiment_id,
        train_py,
        config,
    }))
}

/// `exp-YYYYMMDD-<8 hex>`, as the real worker names an experiment sent without an id.
fn generated_id() -> String {
    let day = chrono::Utc::now().format("%Y%m%d");
    format!("exp-{day}-{:08x}", rand::random::<u32>())
}

async fn health(State(state): State<Arc<FakeState>>) -> Json<Value> {
    let busy = state.running.load(Ordering::SeqCst) || state.knobs.lock().expect("knobs lock").busy;
    Json(json!({"status": "ok", "busy": busy, "repo": "autoresearch", "timeoutSeconds": 300}))
}

async fn stored(State(state): State<Arc<FakeState>>, Path(id): Path<String>) -> Response {
    let found = state
        .results
        .lock()
        .expect("results lock")
        .get(&id)
        .cloned();
    match found {
        Some(answer) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            answer,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("unknown experiment {id}")})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod submission_tests {
    use super::*;

    #[test]
    fn the_body_is_validated_as_the_real_worker_does() {
        let read = |body: &str| parse_submission(body.as_bytes());
        assert_eq!(read("{"), Err(BadSubmission::NotJson));
        assert_eq!(read("[1]"), Err(BadSubmission::NotAnObject));
        assert!(matches!(read(r#"{"probe": true}"#), Ok(None)));
        assert_eq!(read(r#"{"config": {}}"#), Err(BadSubmission::NoTrainPy));
        let bad_id = r#"{"train_py": "x", "experiment_id": "a/b"}"#;
        assert_eq!(read(bad_id), Err(BadSubmission::BadId));
        let bad_config = r#"{"trainPy": "x", "config": [1]}"#;
        assert_eq!(read(bad_config), Err(BadSubmission::BadConfig));
        let ok = read(r#"{"trainPy": "x", "experimentId": "e-1", "config": {"a": 1}}"#);
        let got = ok.unwrap().unwrap();
        assert_eq!(
            (got.experiment_id.as_str(), got.train_py.as_str()),
            ("e-1", "x")
        );
        assert_eq!(got.config, json!({"a": 1}));
        let unnamed = read(r#"{"train_py": "x"}"#).unwrap().unwrap();
        assert!(
            experiment::is_valid_id(&unnamed.experiment_id),
            "{}",
            unnamed.experiment_id
        );
        assert!(unnamed.experiment_id.starts_with("exp-"));
    }
}
