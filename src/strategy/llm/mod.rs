//! `strategy: llm`: a language model proposes each edit of train.py, as in autoresearch.
//!
//! The engine runs at most one [`LlmProposer::propose`] per campaign at a time (reconcile never
//! waits on a model) and gives it the current base (the best kept train.py), the recent results
//! and the noise floor. `propose` asks the model over the OpenAI chat-completions API and checks
//! the reply before anything is paid:
//!
//! | reply | what happens |
//! |---|---|
//! | JSON edit (bare, fenced, or inside prose) or a whole file in a ```python block | applied |
//! | an `old` that matches 0 or several times | refused, re-asked with the reason |
//! | the result does not parse as Python | refused, re-asked with the line and message |
//! | the result equals the base or a train.py already tried | refused, re-asked |
//! | the result is larger than the size limit | refused, re-asked |
//! | no usable format, empty reply, not a chat completion | refused, re-asked |
//! | 429 | refused; waits `Retry-After` (up to a bound) then asks again; longer: gives up for now |
//! | 500..599, timeout, connection error | refused; waits with exponential backoff, asks again |
//! | 401, 403, LiteLLM's `400 no_db_connection` | stops: wrong API key ([`LlmError::WrongKey`]) |
//! | other 4xx (unknown model, bad request) | stops: asking again would get the same answer |
//!
//! Every call counts against the `calls_left` the engine passes (its `maxCalls` budget), and
//! every refusal is returned so the engine can emit an Event and count it.

mod client;
pub mod prompt;
pub mod reply;

use std::time::Duration;

use super::decision::Decision;
use super::train_script;
use crate::crd::LlmSpec;
use crate::experiment::train_hash;
pub use client::{ChatClient, ClientOptions, Message};

/// Limits of one proposer; the defaults suit a real model, tests shorten the waits.
#[derive(Clone, Debug)]
pub struct LlmLimits {
    /// Deadline of one model call.
    pub request_timeout: Duration,
    /// Largest answer body read.
    pub max_body_bytes: usize,
    /// Largest train.py accepted (the CRD's limit for an inline train.py).
    pub max_train_py_bytes: usize,
    /// Most model calls in one `propose`, whatever is left of the campaign's budget.
    pub max_calls_per_proposal: u32,
    /// Longest `Retry-After` waited for; a longer one ends this `propose` with the error.
    pub max_retry_after: Duration,
    /// First backoff after a server error or timeout; doubles each time.
    pub backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl Default for LlmLimits {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(300),
            max_body_bytes: 4 << 20,
            max_train_py_bytes: 1 << 20,
            max_calls_per_proposal: 6,
            max_retry_after: Duration::from_secs(60),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Why a model call or the proposer failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// 401/403, or LiteLLM's `400 no_db_connection` for a key other than its master key.
    #[error(
        "the LLM endpoint refused the API key (HTTP {status}: {message}); check search.llm.apiKeySecretRef (CLI: LLM_API_KEY)"
    )]
    WrongKey { status: u16, message: String },
    /// 429.
    #[error("the LLM endpoint is rate limiting (HTTP 429: {message}){}", retry_after.map(|d| format!("; retry after {} s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// 5xx.
    #[error("the LLM endpoint failed (HTTP {status}: {message})")]
    Server { status: u16, message: String },
    /// Another 4xx: unknown model, bad request. Asking again gets the same answer.
    #[error(
        "the LLM endpoint rejected the request (HTTP {status}: {message}); check search.llm.model and endpoint"
    )]
    Rejected { status: u16, message: String },
    /// No answer within the deadline.
    #[error("the model did not answer within {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// Connection refused, DNS, reset.
    #[error("cannot reach the LLM endpoint: {0}")]
    Transport(String),
    /// A 2xx answer that is not a usable chat completion.
    #[error("the LLM endpoint sent an unusable answer: {0}")]
    Garbage(String),
    /// `search.llm.endpoint` is not an http(s) URL.
    #[error("search.llm.endpoint: {0}")]
    InvalidEndpoint(String),
    /// The campaign's `maxCalls` is used up.
    #[error("no model calls left (search.llm.maxCalls)")]
    NoCallsLeft,
    /// Every reply of this round was refused.
    #[error("no usable proposal after {calls} model call(s); last refusal: {last}")]
    NoUsableProposal { calls: u32, last: String },
}

impl LlmError {
    /// Whether asking again (after a wait) can help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Server { .. }
                | LlmError::Timeout(_)
                | LlmError::Transport(_)
                | LlmError::Garbage(_)
        )
    }
}

/// Why a reply (or a call) was not turned into an experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// An `old` does not occur in train.py.
    NoMatch,
    /// An `old` occurs more than once.
    AmbiguousMatch,
    /// The edited train.py is not valid Python.
    SyntaxError,
    /// The edited train.py equals the base.
    Unchanged,
    /// The edited train.py was already tried in this campaign.
    AlreadyTried,
    /// The edited train.py exceeds the size limit.
    TooLarge,
    /// The reply has no usable format.
    Unparseable,
    /// The endpoint answered an error, timed out, or sent something that is not a completion.
    ModelError,
}

impl RefusalKind {
    /// A stable camelCase name for Events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::NoMatch => "noMatch",
            RefusalKind::AmbiguousMatch => "ambiguousMatch",
            RefusalKind::SyntaxError => "syntaxError",
            RefusalKind::Unchanged => "unchanged",
            RefusalKind::AlreadyTried => "alreadyTried",
            RefusalKind::TooLarge => "tooLarge",
            RefusalKind::Unparseable => "unparseable",
            RefusalKind::ModelError => "modelError",
        }
    }
}

/// A refused reply or call: the engine turns each into an Event and a metric increment.
#[derive(Clone, Debug, PartialEq)]
pub struct Refused {
    /// What kind.
    pub kind: RefusalKind,
    /// What was wrong, as told to the model.
    pub message: String,
}

impl Refused {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// One finished experiment as the model sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecentResult {
    /// Its description.
    pub description: String,
    /// Its val_bpb, if it produced one.
    pub val_bpb: Option<f64>,
    /// Keep, discard or crash.
    pub decision: Decision,
}

/// What a proposal starts from.
pub struct ProposalContext<'a> {
    /// The current base: the best kept train.py (the campaign's own at first).
    pub base_train_py: &'a str,
    /// Finished experiments, newest last; only the last [`prompt::MAX_RECENT`] are sent.
    pub recent: &'a [RecentResult],
    /// `objective.noiseFloor`.
    pub noise_floor: f64,
    /// Whether a train_hash (`sha256:<hex>`) was already tried in this campaign.
    /// `Sync` so that the engine can run `propose` in a spawned task.
    pub tried: &'a (dyn Fn(&str) -> bool + Sync),
}

/// A usable proposal: nothing is paid before one exists.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmProposal {
    /// The model's one-line description.
    pub description: String,
    /// The edited train.py; it parses, differs from the base and from everything tried.
    pub train_py: String,
}

/// What one [`LlmProposer::propose`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProposeOutcome {
    /// The proposal, if a reply was usable.
    pub proposal: Option<LlmProposal>,
    /// Model calls made (each counts against `maxCalls`).
    pub calls: u32,
    /// Every refused reply or failed call, in order.
    pub refusals: Vec<Refused>,
    /// Why there is no proposal.
    pub error: Option<LlmError>,
}

/// Asks a model for edits of train.py.
#[derive(Clone, Debug)]
pub struct LlmProposer {
    client: ChatClient,
    program: String,
    limits: LlmLimits,
}

impl LlmProposer {
    /// A proposer for `spec`, with the API key (from the Secret or `LLM_API_KEY`; `None`: no
    /// Authorization header) and the program text ([`program_or_default`]).
    pub fn new(spec: &LlmSpec, api_key: Option<String>, program: String) -> Result<Self, LlmError> {
        Self::with_limits(spec, api_key, program, LlmLimits::default())
    }

    /// [`LlmProposer::new`] with other limits.
    pub fn with_limits(
        spec: &LlmSpec,
        api_key: Option<String>,
        program: String,
        limits: LlmLimits,
    ) -> Result<Self, LlmError> {
        let client = ChatClient::new(
            &spec.endpoint,
            ClientOptions {
                model: spec.model.clone(),
                api_key,
                temperature: spec.temperature,
                max_tokens: spec.max_tokens,
                timeout: limits.request_timeout,
                max_body: limits.max_body_bytes,
            },
        )?;
        Ok(Self {
            client,
            program,
            limits,
        })
    }

    /// Asks for one usable proposal. A refused reply is re-asked with the reason; a transient
    /// failure is retried after a bounded wait; at most `calls_left` (and the per-proposal
    /// limit) calls in total. Never panics; a fatal error ends it at once.
    pub async fn propose(&self, ctx: &ProposalContext<'_>, calls_left: u32) -> ProposeOutcome {
        let mut outcome = ProposeOutcome::default();
        let budget = calls_left.min(self.limits.max_calls_per_proposal);
        if budget == 0 {
            outcome.error = Some(LlmError::NoCallsLeft);
            return outcome;
        }
        let mut conversation = Conversation::new(&self.program, prompt::user_message(ctx));
        let mut failures = 0u32;
        while outcome.calls < budget {
            outcome.calls += 1;
            match self.client.complete(conversation.messages()).await {
                Ok(reply) => match self.check(ctx, &reply) {
                    Ok(proposal) => {
                        outcome.proposal = Some(proposal);
                        outcome.error = None;
                        return outcome;
                    }
                    Err(refused) => {
                        conversation.refused(&reply.content, &refused.message);
                        outcome.refusals.push(refused);
                        // The endpoint works again; what is left to report is the refusal.
                        outcome.error = None;
                    }
                },
                Err(e) if !e.is_transient() => {
                    outcome.error = Some(e);
                    return outcome;
                }
                Err(e) => {
                    outcome
                        .refusals
                        .push(Refused::new(RefusalKind::ModelError, e.to_string()));
                    let wait = self.wait_after(&e, failures);
                    outcome.error = Some(e);
                    match wait {
                        Some(wait) if outcome.calls < budget => tokio::time::sleep(wait).await,
                        Some(_) => {}
                        None => return outcome,
                    }
                    failures += 1;
                }
            }
        }
        if outcome.error.is_none() {
            outcome.error = Some(LlmError::NoUsableProposal {
                calls: outcome.calls,
                last: outcome
                    .refusals
                    .last()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            });
        }
        outcome
    }

    /// How long to wait before asking again; `None`: not within this `propose`.
    fn wait_after(&self, e: &LlmError, failures: u32) -> Option<Duration> {
        match e {
            LlmError::RateLimited {
                retry_after: Some(d),
                ..
            } => (*d <= self.limits.max_retry_after).then_some(*d),
            _ => Some(
                self.limits
                    .backoff
                    .saturating_mul(1 << failures.min(16))
                    .min(self.limits.max_backoff),
            ),
        }
    }

    /// Turns a reply into a proposal, or says why not.
    fn check(
        &self,
        ctx: &ProposalContext<'_>,
        reply: &client::ModelAnswer,
    ) -> Result<LlmProposal, Refused> {
        let parsed = reply::parse(&reply.content).map_err(|mut r| {
            if reply.truncated {
                r.message
                    .push_str(" (the reply was cut off at max_tokens: answer shorter)");
            }
            r
        })?;
        let (description, train_py) = match parsed {
            reply::Reply::Changes {
                description,
                changes,
            } => (description, reply::apply(ctx.base_train_py, &changes)?),
            reply::Reply::WholeFile {
                description,
                train_py,
            } => (description, train_py),
        };
        self.check_source(ctx, &train_py)?;
        Ok(LlmProposal {
            description,
            train_py,
        })
    }

    fn check_source(&self, ctx: &ProposalContext<'_>, train_py: &str) -> Result<(), Refused> {
        if train_py.len() > self.limits.max_train_py_bytes {
            return Err(Refused::new(
                RefusalKind::TooLarge,
                format!(
                    "the new train.py has {} bytes, more than the limit of {}",
                    train_py.len(),
                    self.limits.max_train_py_bytes
                ),
            ));
        }
        if train_py == ctx.base_train_py {
            return Err(Refused::new(
                RefusalKind::Unchanged,
                "the edit leaves train.py unchanged; propose an actual change",
            ));
        }
        train_script::parses(train_py).map_err(|e| {
            Refused::new(
                RefusalKind::SyntaxError,
                format!("the new train.py is not valid Python: {e}"),
            )
        })?;
        if (ctx.tried)(&train_hash(train_py)) {
            return Err(Refused::new(
                RefusalKind::AlreadyTried,
                "this exact train.py was already run in this campaign; propose something new",
            ));
        }
        Ok(())
    }
}

/// Where the CLI reads the API key from (the controller reads `apiKeySecretRef`).
pub const API_KEY_ENV: &str = "LLM_API_KEY";

/// The CLI's API key: `LLM_API_KEY` if set and not empty.
pub fn api_key_from_env() -> Option<String> {
    std::env::var(API_KEY_ENV)
        .ok()
        .filter(|k| !k.trim().is_empty())
}

/// The program to use: the campaign's, or the built-in default.
pub fn program_or_default(program: Option<&str>) -> String {
    program
        .filter(|p| !p.trim().is_empty())
        .unwrap_or(prompt::DEFAULT_PROGRAM)
        .to_string()
}

/// The messages of one `propose`: system, the request, and the last few refused replies with
/// their reasons (bounded, so a stubborn model does not grow the prompt without end).
struct Conversation {
    messages: Vec<Message>,
}

/// Refused exchanges kept in the conversation.
const KEPT_EXCHANGES: usize = 2;
/// Characters of a refused reply repeated back to the model.
const MAX_ECHO: usize = 8_000;

impl Conversation {
    fn new(program: &str, request: String) -> Self {
        Self {
            messages: vec![
                Message {
                    role: "system",
                    content: program.to_string(),
                },
                Message {
                    role: "user",
                    content: request,
                },
            ],
        }
    }

    fn messages(&self) -> &[Message] {
        &self.messages
    }

    fn refused(&mut self, reply: &str, reason: &str) {
        if self.messages.len() >= 2 + 2 * KEPT_EXCHANGES {
            self.messages.drain(2..4);
        }
        self.messages.push(Message {
            role: "assistant",
            content: reply.chars().take(MAX_ECHO).collect(),
        });
        self.messages.push(Message {
            role: "user",
            content: prompt::retry_message(reason),
        });
    }
}

#[cfg(test)]
mod tests;
