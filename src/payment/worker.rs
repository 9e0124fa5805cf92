//! HTTP to one worker's x402 gate (docs/protocols.md §3): the unpaid probe, the paid run, the async job
//! broker, and the free reads. Every answer is size-capped and validated: an answer that is not a
//! plausible result for *this* experiment is an error, never a result.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use super::http::{self, BodyError, MAX_BODY_BYTES};
use super::voucher::Voucher;
use super::x402::{self, ParseError, PaymentRequired, Settlement};
use crate::experiment;

/// Default time an experiment may take: 5 minutes of training plus start-up and evaluation, with
/// room for a slow GPU.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// What to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRequest {
    /// The caller's id (`[A-Za-z0-9_-]+`); the worker stores the result under it.
    pub experiment_id: String,
    /// train.py source.
    pub train_py: String,
    /// Free-form config object.
    pub config: Value,
}

/// A worker's result, validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct ExperimentResult {
    /// Echo of the request's id.
    #[serde(alias = "experimentId")]
    pub experiment_id: String,
    /// `completed`, `failed` or `timeout`.
    pub status: String,
    /// train.py's exit code.
    #[serde(default, alias = "returnCode")]
    pub return_code: Option<i64>,
    /// Validation bits per byte; `None` when the run failed.
    #[serde(default, alias = "valBpb")]
    pub val_bpb: Option<f64>,
    /// `sha256:<hex>` of the train.py the worker ran.
    #[serde(default, alias = "trainHash")]
    pub train_hash: Option<String>,
    /// Worker-side run time.
    #[serde(default, alias = "durationSeconds")]
    pub duration_seconds: Option<f64>,
    /// The worker's note, if any.
    #[serde(default)]
    pub note: Option<String>,
    /// The whole answer as sent.
    #[serde(skip)]
    pub raw: Value,
}

/// Result statuses the worker API defines.
const STATUSES: [&str; 3] = ["completed", "failed", "timeout"];

impl ExperimentResult {
    /// Parses and validates a worker answer for `request`.
    pub fn parse(body: &[u8], request: &ExperimentRequest) -> Result<Self, WorkerError> {
        let invalid = |why: String| WorkerError::InvalidAnswer(why);
        let raw: Value = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("not JSON ({e}): {}", http::excerpt(body))))?;
        let mut result: ExperimentResult = serde_json::from_value(raw.clone())
            .map_err(|e| invalid(format!("not a result ({e})")))?;
        result.raw = raw;
        result.validate(request)?;
        Ok(result)
    }

    fn validate(&self, request: &ExperimentRequest) -> Result<(), WorkerError> {
        let invalid = |why: String| Err(WorkerError::InvalidAnswer(why));
        if self.experiment_id != request.experiment_id {
            return invalid(format!(
                "the answer is for experiment {:?}, not {:?}",
                x402::truncate(&self.experiment_id, 80),
                request.experiment_id
            ));
        }
        if !STATUSES.contains(&self.status.as_str()) {
            return invalid(format!(
                "status {:?} is not one of completed, failed, timeout",
                x402::truncate(&self.status, 40)
            ));
        }
        match self.val_bpb {
            Some(v) if !v.is_finite() || v < 0.0 => {
                return invalid(format!("val_bpb {v} is not a finite non-negative number"));
            }
            None if self.status == "completed" => {
                return invalid("a completed run reports no val_bpb".into());
            }
            _ => {}
        }
        if let Some(hash) = &self.train_hash {
            let expected = experiment::train_hash(&request.train_py);
            if !hash.eq_ignore_ascii_case(&expected) {
                return invalid(format!(
                    "the worker ran another train.py (train_hash {}, expected {expected})",
                    x402::truncate(hash, 80)
                ));
            }
        }
        Ok(())
    }
}

/// The async job the obol-stack broker returns with `202` (payment settled at acceptance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTicket {
    /// Broker's job id.
    #[serde(default)]
    pub job_id: Option<String>,
    /// Free status URL (absolute, or relative to the endpoint).
    pub status_url: String,
    /// Result URL, read with the job token.
    pub result_url: String,
    /// Bearer token for `result_url`.
    pub job_token: String,
    /// When the broker forgets the job.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `GET <endpoint>/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerHealth {
    /// Worker's status text.
    #[serde(default)]
    pub status: Option<String>,
    /// Whether an experiment is running.
    #[serde(default)]
    pub busy: Option<bool>,
    /// Repository the worker runs.
    #[serde(default)]
    pub repo: Option<String>,
    /// The worker's experiment time limit.
    #[serde(default, alias = "timeout_seconds")]
    pub timeout_seconds: Option<u64>,
}

/// Answer to the unpaid probe.
#[derive(Clone, Debug, PartialEq)]
pub enum Quote {
    /// 402: the gate's price list.
    Priced(PaymentRequired),
    /// 200 without payment: there is no gate in front of this worker.
    Free,
}

/// A paid run that produced a result.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    /// The validated result.
    pub result: ExperimentResult,
    /// The gate's settlement report, if it sent one.
    pub settlement: Option<Settlement>,
    /// The async job, when the worker answered 202.
    pub job: Option<JobTicket>,
}

impl RunOutcome {
    /// Settlement transaction hash, if reported.
    pub fn transaction(&self) -> Option<&str> {
        self.settlement.as_ref()?.transaction.as_deref()
    }
}

/// What went wrong talking to a worker. Each variant says whether the voucher may have been spent,
/// since that decides what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Connection failed before an answer: the voucher was not spent; re-send the same one.
    #[error("cannot reach the worker at {url}: {reason}")]
    Unreachable {
        /// URL asked.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// The connection broke after the request was sent (reset, closed mid-answer): the gate may
    /// have accepted the voucher and the run may still happen and be paid. Recover with
    /// `GET <endpoint>/experiments/<id>` before anything else.
    #[error(
        "the connection to {url} broke after the request was sent ({reason}); the experiment may run and be paid: recover its result with GET <endpoint>/experiments/<id> rather than paying again"
    )]
    Interrupted {
        /// URL asked.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// No answer in time: the run may have happened and been paid. Recover with
    /// `GET <endpoint>/experiments/<id>` before anything else.
    #[error(
        "no answer from {url} within {secs} s; the experiment may have run and been paid: recover its result with GET <endpoint>/experiments/<id> rather than paying again"
    )]
    Timeout {
        /// URL asked.
        url: String,
        /// The limit.
        secs: u64,
    },
    /// 409: one experiment at a time; gates settle only answers below 400, so nothing was paid.
    #[error(
        "the worker is busy with another experiment (HTTP 409); nothing was paid; try again later or another worker"
    )]
    Busy,
    /// 402 in answer to a payment: the gate or its facilitator refused the voucher.
    #[error("the gate refused the payment (HTTP 402): {reason}")]
    PaymentRejected {
        /// The gate's `error` text.
        reason: String,
    },
    /// Any other error status.
    #[error(
        "the worker answered HTTP {status}: {body}; gates settle only answers below 400, so nothing should have been paid"
    )]
    Http {
        /// Status code.
        status: u16,
        /// Excerpt of the body.
        body: String,
    },
    /// 402 to the probe, but unreadable.
    #[error("the worker's price (402) is unreadable: {0}")]
    Price(#[from] ParseError),
    /// The probe got neither 402 nor 200.
    #[error("the worker did not answer the probe with a price (HTTP {status}): {body}")]
    NoPrice {
        /// Status code.
        status: u16,
        /// Excerpt of the body.
        body: String,
    },
    /// An answer that is not a valid result for this experiment.
    #[error("invalid answer from the worker: {0}")]
    InvalidAnswer(String),
    /// The body is over the cap.
    #[error("the worker's answer is too large: {0}")]
    TooLarge(String),
    /// The caller passed a voucher for another experiment.
    #[error("voucher is for experiment {voucher}, not {request}: refusing to send it")]
    VoucherMismatch {
        /// The voucher's experiment.
        voucher: String,
        /// The request's experiment.
        request: String,
    },
    /// The endpoint URL is unusable.
    #[error(
        "bad worker endpoint {0:?}: give an http(s) URL such as https://host/services/autoresearch-worker"
    )]
    BadEndpoint(String),
    /// The async job failed, expired or pointed elsewhere.
    #[error("async job: {0}")]
    Job(String),
}

/// Timeout of the requests around a run (the 402, health, a job's status, a stored result).
pub(super) const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

/// The service URL of `endpoint` (a trailing `/` or `/experiment` is dropped); http(s) only.
pub(super) fn service_url(endpoint: &str) -> Result<Url, WorkerError> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/experiment").unwrap_or(trimmed);
    let url = Url::parse(trimmed).map_err(|_| WorkerError::BadEndpoint(endpoint.into()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(WorkerError::BadEndpoint(endpoint.into()));
    }
    Ok(url)
}

/// A client for one worker endpoint.
#[derive(Clone, Debug)]
pub struct WorkerClient {
    endpoint: Url,
    quick: reqwest::Client,
    run: reqwest::Client,
    run_timeout: Duration,
    poll_interval: Duration,
}

impl WorkerClient {
    /// A client for `endpoint` (the service URL; a trailing `/experiment` is accepted too).
    /// A paid run, including the gate's settlement after it, may take `run_timeout`; after that
    /// the answer counts as lost and [`WorkerClient::recover`] is the way to find it.
    pub fn new(endpoint: &str, run_timeout: Duration) -> Result<Self, WorkerError> {
        Ok(Self::from_parts(
            service_url(endpoint)?,
            http::client(QUICK_TIMEOUT),
            http::client(run_timeout),
            run_timeout,
        ))
    }

    /// A client for `endpoint` over clients built elsewhere ([`super::clients::ClientPool`]).
    pub(super) fn from_parts(
        endpoint: Url,
        quick: reqwest::Client,
        run: reqwest::Client,
        run_timeout: Duration,
    ) -> Self {
        Self {
            endpoint,
            quick,
            run,
            run_timeout,
            poll_interval: Duration::from_secs(10),
        }
    }

    /// Seconds between polls of an async job's status.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The endpoint, normalised.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str().trim_end_matches('/')
    }

    /// The experiment time limit this client was built with.
    pub fn run_timeout(&self) -> Duration {
        self.run_timeout
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// POSTs `{"probe": true}` without payment: the gate answers 402 with its price.
    pub async fn quote(&self) -> Result<Quote, WorkerError> {
        let url = self.url("/experiment");
        let response = send(
            self.quick.post(&url).json(&json!({"probe": true})),
            &url,
            30,
        )
        .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = read(response).await?;
        match status {
            StatusCode::PAYMENT_REQUIRED => Ok(Quote::Priced(parse_402(&headers, &body)?)),
            s if s.is_success() => Ok(Quote::Free),
            s => Err(WorkerError::NoPrice {
                status: s.as_u16(),
                body: http::excerpt(&body),
            }),
        }
    }

    /// `GET <endpoint>/health` (free).
    pub async fn health(&self) -> Result<WorkerHealth, WorkerError> {
        let url = self.url("/health");
        let response = send(self.quick.get(&url), &url, 30).await?;
        let status = response.status();
        let body = read(response).await?;
        if !status.is_success() {
            return Err(WorkerError::Http {
                status: status.as_u16(),
                body: http::excerpt(&body),
            });
        }
        serde_json::from_slice(&body)
            .map_err(|e| WorkerError::InvalidAnswer(format!("health: {e}")))
    }

    /// RUN: sends the experiment with the voucher (or with none, to a worker without a gate) and
    /// returns its validated result. For a `202`, polls the job until it finishes.
    pub async fn run(
        &self,
        voucher: Option<&Voucher>,
        request: &ExperimentRequest,
    ) -> Result<RunOutcome, WorkerError> {
        if let Some(v) = voucher.filter(|v| v.experiment_id != request.experiment_id) {
            return Err(WorkerError::VoucherMismatch {
                voucher: v.experiment_id.clone(),
                request: request.experiment_id.clone(),
            });
        }
        let url = self.url("/experiment");
        let mut post = self.run.post(&url).json(request);
        for (name, value) in voucher.map(Voucher::headers).unwrap_or_default() {
            post = post.header(name, value);
        }
        let response = send(post, &url, self.run_timeout.as_secs()).await?;
        let status = response.status();
        let settlement = settlement(response.headers());
        let headers = response.headers().clone();
        let body = read(response).await?;
        match status {
            StatusCode::OK => Ok(RunOutcome {
                result: ExperimentResult::parse(&body, request)?,
                settlement,
                job: None,
            }),
            StatusCode::ACCEPTED => {
                let ticket: JobTicket = serde_json::from_slice(&body)
                    .map_err(|e| WorkerError::InvalidAnswer(format!("202 without a job ({e})")))?;
                let result = self.follow_job(&ticket, request).await?;
                Ok(RunOutcome {
                    result,
                    settlement,
                    job: Some(ticket),
                })
            }
            StatusCode::CONFLICT => Err(WorkerError::Busy),
            StatusCode::PAYMENT_REQUIRED => Err(WorkerError::PaymentRejected {
                reason: rejection_reason(&headers, &body),
            }),
            s => Err(WorkerError::Http {
                status: s.as_u16(),
                body: http::excerpt(&body),
            }),
        }
    }

    /// `GET <endpoint>/experiments/<id>`: the stored result of a run whose answer was lost, or
    /// `None` if the worker does not know the id (then the voucher was most likely not spent).
    pub async fn recover(
        &self,
        request: &ExperimentRequest,
    ) -> Result<Option<ExperimentResult>, WorkerError> {
        if !experiment::is_valid_id(&request.experiment_id) {
            return Err(WorkerError::InvalidAnswer(format!(
                "experiment id {:?} is not [A-Za-z0-9_-]+",
                request.experiment_id
            )));
        }
        let url = self.url(&format!("/experiments/{}", request.experiment_id));
        let response = send(self.quick.get(&url), &url, 30).await?;
        let status = response.status();
        let body = read(response).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => ExperimentResult::parse(&body, request).map(Some),
            s => Err(WorkerError::Http {
                status: s.as_u16(),
                body: http::excerpt(&body),
            }),
        }
    }

    /// Polls an async job's free status URL until it is finished, then reads its result with the
    /// job token. Both URLs must be on the endpoint's origin: the token is never sent elsewhere.
    async fn follow_job(
        &self,
        ticket: &JobTicket,
        request: &ExperimentRequest,
    ) -> Result<ExperimentResult, WorkerError> {
        let status_url = self.same_origin(&ticket.status_url)?;
        let result_url = self.same_origin(&ticket.result_url)?;
        self.wait_for_job(&status_url).await?;
        let get = self
            .quick
            .get(result_url.as_str())
            .bearer_auth(&ticket.job_token);
        let body = job_body(get, &result_url, "result").await?;
        // The broker may wrap the worker's answer as {"result": {...}}.
        let unwrapped = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("result").filter(|r| r.is_object()).cloned())
            .map(|r| r.to_string().into_bytes());
        ExperimentResult::parse(unwrapped.as_deref().unwrap_or(&body), request)
    }

    /// Polls the job's status until it has a result, for at most the run timeout.
    async fn wait_for_job(&self, status_url: &Url) -> Result<(), WorkerError> {
        let deadline = tokio::time::Instant::now() + self.run_timeout;
        loop {
            let body = job_body(self.quick.get(status_url.as_str()), status_url, "status").await?;
            match JobState::of(&body) {
                JobState::Finished => return Ok(()),
                JobState::Ended(state) => {
                    return Err(WorkerError::Job(format!("the job ended as {state:?}")));
                }
                JobState::Running => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WorkerError::Timeout {
                    url: status_url.to_string(),
                    secs: self.run_timeout.as_secs(),
                });
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    fn same_origin(&self, link: &str) -> Result<Url, WorkerError> {
        let base = Url::parse(&format!("{}/", self.endpoint()))
            .map_err(|_| WorkerError::BadEndpoint(self.endpoint().into()))?;
        let url = base.join(link).map_err(|_| {
            WorkerError::Job(format!("bad job URL {:?}", x402::truncate(link, 200)))
        })?;
        if url.origin() != base.origin() {
            return Err(WorkerError::Job(format!(
                "job URL {url} is not on the worker's origin {}; refusing to send the job token there",
                base.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }
}

/// The body of a GET on one of a job's URLs (`what`: "status" or "result"); any answer but a
/// success is the job's failure.
async fn job_body(
    get: reqwest::RequestBuilder,
    url: &Url,
    what: &str,
) -> Result<Vec<u8>, WorkerError> {
    let response = send(get, url.as_str(), 30).await?;
    let code = response.status();
    let body = read(response).await?;
    if !code.is_success() {
        return Err(WorkerError::Job(format!(
            "{what} answered HTTP {code}: {}",
            http::excerpt(&body)
        )));
    }
    Ok(body)
}

/// What an async job's status says. A run that failed or timed out on the worker still has a
/// result to read (it was paid for); a job that expired or was cancelled has none.
#[derive(Debug, PartialEq, Eq)]
enum JobState {
    /// Not finished, or a status this client does not know: polled again until the deadline.
    Running,
    /// A result can be read.
    Finished,
    /// The job ended without a result, in this state.
    Ended(String),
}

impl JobState {
    fn of(body: &[u8]) -> Self {
        let state = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| {
                v.get("status")
                    .and_then(Value::as_str)
                    .map(str::to_lowercase)
            })
            .unwrap_or_default();
        match state.as_str() {
            "expired" | "cancelled" | "canceled" | "error" => Self::Ended(state),
            "completed" | "complete" | "done" | "succeeded" | "failed" | "timeout" | "finished" => {
                Self::Finished
            }
            _ => Self::Running,
        }
    }
}

async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
    secs: u64,
) -> Result<reqwest::Response, WorkerError> {
    request.send().await.map_err(|e| {
        if e.is_timeout() {
            WorkerError::Timeout {
                url: url.into(),
                secs,
            }
        } else if e.is_connect() {
            WorkerError::Unreachable {
                url: url.into(),
                reason: e.to_string(),
            }
        } else {
            // Not a connection failure: the request may have reached the gate.
            WorkerError::Interrupted {
                url: url.into(),
                reason: error_chain(&e),
            }
        }
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read(response: reqwest::Response) -> Result<Vec<u8>, WorkerError> {
    let url = response.url().to_string();
    http::read_capped(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => WorkerError::TooLarge(e.to_string()),
            BodyError::Read(inner) if inner.is_timeout() => WorkerError::Timeout { url, secs: 0 },
            BodyError::Read(inner) => WorkerError::Interrupted {
                url,
                reason: inner.to_string(),
            },
        })
}

fn parse_402(headers: &HeaderMap, body: &[u8]) -> Result<PaymentRequired, ParseError> {
    let header = headers.get("payment-required").map(|v| v.as_bytes());
    x402::parse_payment_required(header, body)
}

/// The gate's reason for refusing a payment: the 402's `error`, else an excerpt of the body.
fn rejection_reason(headers: &HeaderMap, body: &[u8]) -> String {
    parse_402(headers, body)
        .ok()
        .and_then(|r| r.error)
        .unwrap_or_else(|| {
            let text = http::excerpt(body);
            if text.is_empty() {
                "no reason given".into()
            } else {
                text
            }
        })
}

/// Reads `PAYMENT-RESPONSE` (v2 reference) or `X-PAYMENT-RESPONSE` (v1, obol-stack).
fn settlement(headers: &HeaderMap) -> Option<Settlement> {
    ["payment-response", "x-payment-response"]
        .iter()
        .filter_map(|name| headers.get(*name))
        .find_map(|v| x402::parse_settlement(v.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_status_is_running_finished_or_ended() {
        assert_eq!(JobState::of(br#"{"status": "Queued"}"#), JobState::Running);
        assert_eq!(JobState::of(b"not json"), JobState::Running);
        // A failed run was paid for and has a result to read.
        assert_eq!(JobState::of(br#"{"status": "FAILED"}"#), JobState::Finished);
        assert_eq!(JobState::of(br#"{"status": "done"}"#), JobState::Finished);
        assert_eq!(
            JobState::of(br#"{"status": "Cancelled"}"#),
            JobState::Ended("cancelled".into())
        );
    }

    fn request() -> ExperimentRequest {
        ExperimentRequest {
            experiment_id: "exp-1".into(),
            train_py: "print(1)".into(),
            config: json!({}),
        }
    }

    fn answer(patch: Value) -> Vec<u8> {
        let mut v = json!({"experiment_id": "exp-1", "status": "completed", "return_code": 0,
            "val_bpb": 0.99, "train_hash": experiment::train_hash("print(1)")});
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn valid_results_parse() {
        let r = ExperimentResult::parse(&answer(json!({})), &request()).unwrap();
        assert_eq!(r.val_bpb, Some(0.99));
        let failed = answer(json!({"status": "failed", "val_bpb": null}));
        assert_eq!(
            ExperimentResult::parse(&failed, &request())
                .unwrap()
                .val_bpb,
            None
        );
        let camel = json!({"experimentId": "exp-1", "status": "timeout"}).to_string();
        assert!(ExperimentResult::parse(camel.as_bytes(), &request()).is_ok());
    }

    #[test]
    fn implausible_results_are_invalid_answers_never_results() {
        let bad: Vec<Vec<u8>> = vec![
            answer(json!({"experiment_id": "exp-2"})),
            answer(json!({"val_bpb": -0.5})),
            answer(json!({"val_bpb": null})),
            answer(json!({"val_bpb": "0.9"})),
            answer(json!({"status": "great"})),
            answer(json!({"train_hash": "sha256:00"})),
            br#"{"experiment_id": "exp-1", "status": "completed", "val_bpb": NaN}"#.to_vec(),
            br#"{"experiment_id": "exp-1", "status": "completed", "val_bpb": 1e999}"#.to_vec(),
            b"<html>ok</html>".to_vec(),
        ];
        for body in bad {
            let err = ExperimentResult::parse(&body, &request()).unwrap_err();
            assert!(
                matches!(err, WorkerError::InvalidAnswer(_)),
                "{}: {err}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn endpoints_are_normalised_and_checked() {
        let w = WorkerClient::new(
            "http://127.0.0.1:8080/services/w/experiment/",
            DEFAULT_RUN_TIMEOUT,
        )
        .unwrap();
        assert_eq!(w.endpoint(), "http://127.0.0.1:8080/services/w");
        assert!(WorkerClient::new("ftp://127.0.0.1/x", DEFAULT_RUN_TIMEOUT).is_err());
        assert!(WorkerClient::new("not a url", DEFAULT_RUN_TIMEOUT).is_err());
        assert!(w.same_origin("/jobs/1/status").is_ok());
        assert!(
            w.same_origin("jobs/1")
                .unwrap()
                .as_str()
                .starts_with("http://127.0.0.1:8080/services/w/")
        );
        assert!(w.same_origin("http://127.0.0.2:8080/jobs/1").is_err());
        assert!(w.same_origin("http://127.0.0.1:8081/jobs/1").is_err());
    }
}
