//! One OpenAI chat-completions call: `POST {endpoint}/chat/completions`, the reply's
//! `choices[0].message.content`, and every way the call can fail as a typed [`LlmError`].
//!
//! The endpoint is untrusted like any peer: the request has a deadline, the body a size cap, and
//! redirects are not followed (a redirect would carry the API key elsewhere).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LlmError;
use crate::http::{self, BodyError};

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// The model's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelAnswer {
    /// `choices[0].message.content`.
    pub content: String,
    /// `finish_reason == "length"`: the reply was cut at `max_tokens`.
    pub truncated: bool,
}

/// A chat-completions client for one endpoint and model.
#[derive(Clone, Debug)]
pub struct ChatClient {
    http: reqwest::Client,
    url: url::Url,
    model: String,
    api_key: Option<String>,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    timeout: Duration,
    max_body: usize,
}

/// How the client talks to the endpoint.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The model.
    pub model: String,
    /// Bearer key; `None` sends no Authorization header.
    pub api_key: Option<String>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Deadline of one call, connection to last byte.
    pub timeout: Duration,
    /// Largest answer body read.
    pub max_body: usize,
}

impl ChatClient {
    /// A client for `{endpoint}/chat/completions`.
    pub fn new(endpoint: &str, options: ClientOptions) -> Result<Self, LlmError> {
        let base = url::Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| LlmError::InvalidEndpoint(format!("{endpoint}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(LlmError::InvalidEndpoint(format!(
                "{endpoint}: must be http:// or https://"
            )));
        }
        let url = url::Url::parse(&format!(
            "{}/chat/completions",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| LlmError::InvalidEndpoint(format!("{endpoint}: {e}")))?;
        http::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .user_agent(http::USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.timeout)
            .build()
            .map_err(|e| LlmError::Transport(e.to_string()))?;
        Ok(Self {
            http,
            url,
            model: options.model,
            api_key: options.api_key.filter(|k| !k.is_empty()),
            temperature: options.temperature,
            max_tokens: options.max_tokens,
            timeout: options.timeout,
            max_body: options.max_body,
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// One call. Never retries: the caller counts calls and decides.
    pub async fn complete(&self, messages: &[Message]) -> Result<ModelAnswer, LlmError> {
        let body = Request {
            model: &self.model,
            messages,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
        };
        let mut request = self.http.post(self.url.clone()).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = http::read_capped(response, self.max_body)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(n) => {
                    LlmError::Garbage(format!("the answer is larger than {n} bytes"))
                }
                BodyError::Read(e) => self.transport(e),
            })?;
        if status.is_success() {
            return parse_completion(&body);
        }
        Err(status_error(status.as_u16(), &body, retry_after))
    }

    fn transport(&self, e: reqwest::Error) -> LlmError {
        if e.is_timeout() {
            LlmError::Timeout(self.timeout)
        } else {
            LlmError::Transport(error_chain(&e))
        }
    }
}

/// reqwest's message is "error sending request"; the cause (connection refused, DNS) is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn parse_completion(body: &[u8]) -> Result<ModelAnswer, LlmError> {
    let completion: Completion = serde_json::from_slice(body).map_err(|e| {
        LlmError::Garbage(format!(
            "not a chat completion ({e}): {}",
            http::snippet(body, 200)
        ))
    })?;
    let Some(choice) = completion.choices.into_iter().next() else {
        return Err(LlmError::Garbage("the completion has no choices".into()));
    };
    match choice.message.content {
        Some(content) if !content.trim().is_empty() => Ok(ModelAnswer {
            content,
            truncated: choice.finish_reason.as_deref() == Some("length"),
        }),
        _ => Err(LlmError::Garbage("the reply is empty".into())),
    }
}

/// An error answer, `{"error": {"message", "type", "code"}}` when the endpoint follows OpenAI.
fn status_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> LlmError {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let kind = detail
        .as_ref()
        .and_then(|d| d.kind.clone())
        .unwrap_or_default();
    let message = detail
        .and_then(|d| d.message)
        .unwrap_or_else(|| http::snippet(body, 200));
    match status {
        401 | 403 => LlmError::WrongKey { status, message },
        // LiteLLM without a database answers a key other than the master key this way
        // (protocols.md §8): it is a wrong key, not a bad request.
        400 if kind == "no_db_connection" || message.contains("No connected db") => {
            LlmError::WrongKey { status, message }
        }
        429 => LlmError::RateLimited {
            retry_after,
            message,
        },
        500..=599 => LlmError::Server { status, message },
        _ => LlmError::Rejected { status, message },
    }
}

/// LiteLLM relays a provider's `Retry-After` under this name, not as `Retry-After`.
const LITELLM_RETRY_AFTER: &str = "llm_provider-retry-after";

/// `Retry-After` (or LiteLLM's relay of it) in seconds; the HTTP-date form is rare for APIs and
/// is treated as absent.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)
        .or_else(|| headers.get(LITELLM_RETRY_AFTER))?
        .to_str()
        .ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_become_typed_errors() {
        let no_db = br#"{"error": {"message": "No connected db.", "type": "no_db_connection", "code": "400"}}"#;
        assert!(matches!(
            status_error(400, no_db, None),
            LlmError::WrongKey { status: 400, .. }
        ));
        assert!(matches!(
            status_error(401, b"{}", None),
            LlmError::WrongKey { status: 401, .. }
        ));
        let e = status_error(
            429,
            br#"{"error": {"message": "slow down"}}"#,
            Some(Duration::from_secs(2)),
        );
        assert_eq!(
            e,
            LlmError::RateLimited {
                retry_after: Some(Duration::from_secs(2)),
                message: "slow down".into()
            }
        );
        assert!(matches!(
            status_error(502, b"<html>", None),
            LlmError::Server { status: 502, .. }
        ));
        assert!(matches!(
            status_error(
                400,
                br#"{"error": {"message": "Invalid model name"}}"#,
                None
            ),
            LlmError::Rejected { status: 400, .. }
        ));
    }

    #[test]
    fn completions_are_read_from_the_first_choice() {
        let ok = br#"{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}]}"#;
        assert_eq!(
            parse_completion(ok).unwrap(),
            ModelAnswer {
                content: "hi".into(),
                truncated: true
            }
        );
        for garbage in [
            &b"not json"[..],
            br#"{"choices": []}"#,
            br#"{"choices": [{"message": {"content": null}}]}"#,
            br#"{"choices": [{"message": {"content": "  "}}]}"#,
        ] {
            assert!(matches!(
                parse_completion(garbage),
                Err(LlmError::Garbage(_))
            ));
        }
    }
}
