//! The 8004scan public API (docs/protocols.md §1): a seed source that is slow, rate-limited and
//! often answers 500, so every call is paced, retried and cached.
//!
//! The client sends `X-API-Key` when it has one, paces itself by the server's own
//! `x-ratelimit-*` headers (minute and day) where they are present, honours `Retry-After` on
//! 429, and keeps a reserve of the day's quota: once the index says only the reserve is left,
//! it sends nothing more and answers [`ScanError::DayQuota`], so discovery can fall back to the
//! chain.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use rand::Rng;
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use url::Url;

use super::document::{SkillFilter, parse_id};
use super::http::{BodyError, USER_AGENT, ensure_crypto_provider, read_capped, snippet};

/// A list page is at most 100 rows of a few KiB each.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// The public API's largest page.
const MAX_PAGE_SIZE: usize = 100;
/// Never page forever, whatever `hasMore` says.
const MAX_PAGES: u32 = 50;
/// An embedded document given as a JSON string is parsed only up to this size.
const MAX_EMBEDDED_BYTES: usize = 256 * 1024;

/// An 8004scan API key (`SCAN_API_KEY`). It is sent as `X-API-Key` and shown nowhere: its
/// `Debug` is redacted and no error or cache file contains it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key, if `raw` is a usable header value (visible ASCII).
    pub fn new(raw: &str) -> Option<Self> {
        let key = raw.trim();
        (!key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic())).then(|| Self(key.into()))
    }

    /// A one-way digest that tells keys apart without revealing them (cache keys use it).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(format!("autoresearch-coordinator/scan-api-key\n{}", self.0));
        format!("key-{}", hex::encode(&d[..8]))
    }

    fn header(&self) -> reqwest::header::HeaderValue {
        let mut v = reqwest::header::HeaderValue::from_str(&self.0)
            .expect("checked visible ASCII in ApiKey::new");
        v.set_sensitive(true);
        v
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// The index's own account of its limits, from the `x-ratelimit-*` headers of its last answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// `x-ratelimit-limit-minute`.
    pub minute_limit: Option<u64>,
    /// `x-ratelimit-remaining-minute`.
    pub minute_remaining: Option<u64>,
    /// `x-ratelimit-limit-day`.
    pub day_limit: Option<u64>,
    /// `x-ratelimit-remaining-day`.
    pub day_remaining: Option<u64>,
    /// When it was read (seconds since the Unix epoch).
    pub observed_at: u64,
}

impl Quota {
    fn from_headers(headers: &reqwest::header::HeaderMap) -> Option<Self> {
        let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        let q = Self {
            minute_limit: number("x-ratelimit-limit-minute"),
            minute_remaining: number("x-ratelimit-remaining-minute"),
            day_limit: number("x-ratelimit-limit-day"),
            day_remaining: number("x-ratelimit-remaining-day"),
            observed_at: unix_now(),
        };
        (q.minute_limit.is_some() || q.day_limit.is_some() || q.day_remaining.is_some())
            .then_some(q)
    }

    /// Requests of the day kept back: a tenth of the day's limit, at least 2 and at most 100.
    pub fn day_reserve(&self) -> u64 {
        self.day_limit.map_or(2, |l| (l / 10).clamp(2, 100))
    }

    /// Whether only the reserve is left of today's quota. An observation from an earlier UTC
    /// day says nothing about today.
    pub fn day_reserve_reached(&self) -> bool {
        let today = unix_now() / 86_400;
        self.observed_at / 86_400 == today
            && self.day_remaining.is_some_and(|r| r <= self.day_reserve())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How the client paces and retries.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanSettings {
    /// Requests per minute when the index reports no limit of its own (the documented
    /// anonymous limit is 10).
    pub requests_per_minute: u32,
    /// Sent as `X-API-Key`.
    pub api_key: Option<ApiKey>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// First retry delay; doubled each attempt, with jitter.
    pub backoff_base: Duration,
    /// Longest computed delay between attempts.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured (a hostile or broken server could ask for hours).
    pub retry_after_max: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Rows per page (at most 100).
    pub page_size: usize,
}

impl Default for ScanSettings {
    fn default() -> Self {
        Self {
            requests_per_minute: 10,
            api_key: None,
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            retry_after_max: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
            page_size: MAX_PAGE_SIZE,
        }
    }
}

/// Why the index could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The base URL is unusable.
    #[error("SCAN_API_URL {0:?} is not an http(s) URL")]
    BadBase(String),
    /// A non-retryable status.
    #[error("GET {url} answered {status}: {body}")]
    Status {
        /// URL.
        url: String,
        /// Status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// Retries ran out.
    #[error("GET {url} failed after {attempts} attempts; last error: {last}")]
    Exhausted {
        /// URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// A transport error that retrying will not fix.
    #[error("GET {url}: {source}")]
    Transport {
        /// URL.
        url: String,
        /// Error.
        source: reqwest::Error,
    },
    /// The body was too large or cut.
    #[error("GET {url}: {source}")]
    Body {
        /// URL.
        url: String,
        /// Error.
        source: BodyError,
    },
    /// Only the reserve of today's quota is left: nothing more is sent until the day turns.
    #[error(
        "the 8004scan day quota is nearly spent ({remaining} of {limit} requests left, {reserve} kept in reserve); set SCAN_API_KEY to raise it"
    )]
    DayQuota {
        /// Requests left today, as the index last said.
        remaining: u64,
        /// Today's limit.
        limit: u64,
        /// Requests never spent on refreshes.
        reserve: u64,
    },
    /// The index refused the API key.
    #[error(
        "GET {url} answered {status}: the index refused SCAN_API_KEY; check it, or unset it to read anonymously"
    )]
    BadKey {
        /// URL.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The answer is not what the API documents.
    #[error("GET {url}: unexpected answer: {why}")]
    Shape {
        /// URL.
        url: String,
        /// What was wrong.
        why: UnexpectedAnswer,
    },
}

/// What was wrong with an answer of the index.
#[derive(Debug, thiserror::Error)]
pub enum UnexpectedAnswer {
    /// The body is not JSON.
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    /// `success: false`, with the index's own message.
    #[error("success: false ({0})")]
    Refused(String),
    /// None of the envelopes the API has used.
    #[error("neither {{data, meta}} nor {{items, total}} nor a list")]
    Envelope,
    /// A row that names no agent (the start of the row).
    #[error("a row without chain and token ids: {0}")]
    RowWithoutIds(String),
}

/// One agent as the index knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexEntry {
    /// Chain id.
    pub chain_id: Option<u64>,
    /// Token (agent) id.
    pub token_id: Option<u64>,
    /// The registration document, when the index carries it.
    pub document: Option<Value>,
    /// Where the document lives, when the index does not carry it.
    pub document_uri: Option<String>,
    /// The index's own record (detail, else row): parsed as a last resort, since 8004scan
    /// flattens the document's services into it.
    pub record: Value,
}

/// What a scan found, and what went wrong on the way without failing it.
#[derive(Clone, Debug, Default)]
pub struct ScanResult {
    /// Agents, in index order, without duplicates.
    pub entries: Vec<IndexEntry>,
    /// Agents skipped (detail call failed...).
    pub problems: Vec<String>,
    /// Requests sent, retries included.
    pub requests: u64,
}

/// Paces requests: one every `60 s / rate`, first one immediately, where the rate is the
/// index's own `x-ratelimit-limit-minute` once it has said it, else the configured one. A steady
/// spacing rather than a burst keeps any 60-second window within the server's limit.
#[derive(Debug)]
struct Pacer {
    fallback: Duration,
    // tokio's clock, so that tests can run it paused.
    last: Mutex<Option<tokio::time::Instant>>,
    // Not held across an await: an answer is noted while another request waits for its slot.
    quota: std::sync::Mutex<Option<Quota>>,
}

impl Pacer {
    fn new(per_minute: u32) -> Self {
        Self {
            fallback: Duration::from_secs(60) / per_minute.max(1),
            last: Mutex::new(None),
            quota: std::sync::Mutex::new(None),
        }
    }

    fn interval(&self) -> Duration {
        match self.quota().and_then(|q| q.minute_limit) {
            Some(limit) if limit > 0 => Duration::from_secs(60) / limit.min(60_000) as u32,
            _ => self.fallback,
        }
    }

    /// Waits for the next slot, or refuses when only the day's reserve is left.
    async fn wait(&self) -> Result<(), ScanError> {
        // The lock is held across the sleep, so waiters queue in order (tokio's Mutex is fair).
        let mut last = self.last.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + self.interval()).await;
        }
        if let Some(q) = self.quota().filter(Quota::day_reserve_reached) {
            return Err(ScanError::DayQuota {
                remaining: q.day_remaining.unwrap_or(0),
                limit: q.day_limit.unwrap_or(0),
                reserve: q.day_reserve(),
            });
        }
        *last = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Takes in what the index said about its limits: the next request follows it.
    fn observe(&self, quota: Quota) {
        *self.quota.lock().unwrap_or_else(|p| p.into_inner()) = Some(quota);
    }

    fn quota(&self) -> Option<Quota> {
        *self.quota.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A detail record and the row `updated_at` it was read for.
type CachedDetail = (Option<String>, Value);

/// A detail record as the disk cache keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedDocument {
    /// Chain id.
    pub chain_id: u64,
    /// Token (agent) id.
    pub token_id: u64,
    /// The list row's `updated_at` the record was read for.
    pub updated_at: String,
    /// The detail record.
    pub record: Value,
}

/// The outcome of one request.
enum Attempt {
    Done(Value),
    Retry {
        after: Option<Duration>,
        why: String,
    },
}

/// A client for one 8004scan deployment. Share one per base URL: the pacing and the detail
/// cache are per client.
#[derive(Debug)]
pub struct ScanClient {
    base: Url,
    http: reqwest::Client,
    settings: ScanSettings,
    pacer: Pacer,
    requests: std::sync::atomic::AtomicU64,
    // Detail records by (chain, token), with the row's `updated_at` they were read for: an
    // unchanged agent costs no detail call on the next refresh.
    details: Mutex<HashMap<(u64, u64), CachedDetail>>,
}

impl ScanClient {
    /// A client for `base` (e.g. `https://www.8004scan.io/api/v1/public`).
    pub fn new(base: &str, settings: ScanSettings) -> Result<Self, ScanError> {
        ensure_crypto_provider();
        let mut base = Url::parse(base.trim()).map_err(|_| ScanError::BadBase(base.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ScanError::BadBase(base.to_string()));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.timeout)
            .build()
            .map_err(ScanError::Client)?;
        Ok(Self {
            base,
            http,
            pacer: Pacer::new(settings.requests_per_minute),
            settings,
            requests: Default::default(),
            details: Mutex::default(),
        })
    }

    /// Lists agents with the skill (every spelling), up to `limit`, with their documents or
    /// document URIs. If no spelling finds anything, lists without `search` and leaves the
    /// filtering to the caller, as the reference script does.
    pub async fn scan(&self, filter: &SkillFilter, limit: usize) -> Result<ScanResult, ScanError> {
        let start = self.request_count();
        let limit = limit.max(1);
        let mut rows: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for name in filter.names() {
            for row in self.list(Some(name), limit).await? {
                if seen.insert(row_key(&row)) {
                    rows.push(row);
                }
            }
        }
        if rows.is_empty() {
            rows = self.list(None, limit).await?;
        }
        rows.truncate(limit);
        let mut result = ScanResult::default();
        for row in rows {
            match self.entry(row).await {
                Ok(entry) => result.entries.push(entry),
                Err(e) => result.problems.push(e.to_string()),
            }
        }
        result.requests = self.request_count() - start;
        Ok(result)
    }

    fn request_count(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pages through `/agents` until `hasMore` is false or `limit` rows are in hand.
    async fn list(&self, search: Option<&str>, limit: usize) -> Result<Vec<Value>, ScanError> {
        let page_size = limit.min(self.settings.page_size).clamp(1, MAX_PAGE_SIZE);
        let mut rows = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut url = self.base.join("agents").expect("static path joins");
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("protocol", "OASF");
                if let Some(s) = search {
                    q.append_pair("search", s);
                }
                q.append_pair("limit", &page_size.to_string());
                q.append_pair("page", &page.to_string());
            }
            let body = self.get_json(&url).await?;
            let (page_rows, has_more) =
                parse_page(&body, page, page_size).map_err(|why| ScanError::Shape {
                    url: url.to_string(),
                    why,
                })?;
            let empty = page_rows.is_empty();
            rows.extend(page_rows);
            if !has_more || empty || rows.len() >= limit {
                break;
            }
        }
        rows.truncate(limit);
        Ok(rows)
    }

    /// A row with its document: embedded, or from the detail call.
    async fn entry(&self, row: Value) -> Result<IndexEntry, ScanError> {
        let (chain_id, token_id) = ids(&row);
        let (document, document_uri) = embedded(&row);
        if document.is_some() || document_uri.is_some() {
            return Ok(IndexEntry {
                chain_id,
                token_id,
                document,
                document_uri,
                record: row,
            });
        }
        let (Some(chain), Some(token)) = (chain_id, token_id) else {
            return Err(ScanError::Shape {
                url: self.base.to_string(),
                why: UnexpectedAnswer::RowWithoutIds(snippet(row.to_string().as_bytes(), 120)),
            });
        };
        let detail = self
            .detail(chain, token, text_field(&row, "updated_at"))
            .await?;
        let (document, document_uri) = embedded(&detail);
        Ok(IndexEntry {
            chain_id,
            token_id,
            document,
            document_uri,
            record: detail,
        })
    }

    async fn detail(
        &self,
        chain: u64,
        token: u64,
        updated: Option<String>,
    ) -> Result<Value, ScanError> {
        if let Some((seen, record)) = self.details.lock().await.get(&(chain, token))
            && updated.is_some()
            && *seen == updated
        {
            return Ok(record.clone());
        }
        let url = self
            .base
            .join(&format!("agents/{chain}/{token}"))
            .expect("numeric path joins");
        let body = self.get_json(&url).await?;
        let record = match body.get("data") {
            Some(d @ Value::Object(_)) => d.clone(),
            _ if body.get("success") == Some(&Value::Bool(false)) => {
                return Err(ScanError::Shape {
                    url: url.to_string(),
                    why: UnexpectedAnswer::Refused(api_message(&body)),
                });
            }
            _ => body,
        };
        self.details
            .lock()
            .await
            .insert((chain, token), (updated, record.clone()));
        Ok(record)
    }

    /// GET with pacing, and retries with backoff and jitter on 429, 5xx and transient
    /// transport errors; `Retry-After` is honoured (capped). Stops at the day's reserve.
    async fn get_json(&self, url: &Url) -> Result<Value, ScanError> {
        let attempts = self.settings.max_attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            self.pacer.wait().await?;
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let delay = match self.attempt(url).await? {
                Attempt::Done(value) => return Ok(value),
                Attempt::Retry { after, why } => {
                    last = why;
                    after.unwrap_or_else(|| self.backoff(attempt))
                }
            };
            if let Some(q) = self.pacer.quota().filter(Quota::day_reserve_reached) {
                // Waiting for tomorrow is not a retry: the caller falls back now.
                return Err(ScanError::DayQuota {
                    remaining: q.day_remaining.unwrap_or(0),
                    limit: q.day_limit.unwrap_or(0),
                    reserve: q.day_reserve(),
                });
            }
            if attempt < attempts {
                tracing::debug!(%url, attempt, ?delay, error = %last, "8004scan request failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
        Err(ScanError::Exhausted {
            url: url.to_string(),
            attempts,
            last,
        })
    }

    /// One request: the answer, a retryable failure, or an error.
    async fn attempt(&self, url: &Url) -> Result<Attempt, ScanError> {
        let mut request = self.http.get(url.clone());
        if let Some(key) = &self.settings.api_key {
            request = request.header("x-api-key", key.header());
        }
        let resp = match request.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => {
                return Ok(Attempt::Retry {
                    after: None,
                    why: e.without_url().to_string(),
                });
            }
            Err(source) => {
                return Err(ScanError::Transport {
                    url: url.to_string(),
                    source: source.without_url(),
                });
            }
        };
        let status = resp.status();
        if let Some(quota) = Quota::from_headers(resp.headers()) {
            self.pacer.observe(quota);
        }
        let retry_after = retry_after(resp.headers()).map(|d| d.min(self.settings.retry_after_max));
        let body = read_capped(resp, MAX_PAGE_BYTES)
            .await
            .map_err(|source| ScanError::Body {
                url: url.to_string(),
                source,
            })?;
        let url = url.to_string();
        match status.as_u16() {
            200..=299 => serde_json::from_slice(&body)
                .map(Attempt::Done)
                .map_err(|e| ScanError::Shape {
                    url,
                    why: UnexpectedAnswer::NotJson(e),
                }),
            status @ (401 | 403) if self.settings.api_key.is_some() => {
                Err(ScanError::BadKey { url, status })
            }
            429 | 500..=599 => Ok(Attempt::Retry {
                after: retry_after,
                why: format!("{status}: {}", snippet(&body, 120)),
            }),
            status => Err(ScanError::Status {
                url,
                status,
                body: snippet(&body, 200),
            }),
        }
    }

    /// What the index last said about its limits.
    pub fn quota(&self) -> Option<Quota> {
        self.pacer.quota()
    }

    /// Starts from a limit observed earlier (by another process sharing the cache), unless this
    /// client has heard from the index since.
    pub fn restore_quota(&self, quota: Quota) {
        if self
            .pacer
            .quota()
            .is_none_or(|q| q.observed_at < quota.observed_at)
        {
            self.pacer.observe(quota);
        }
    }

    /// The detail records read so far, by agent and the row `updated_at` they were read for.
    pub async fn documents(&self) -> Vec<CachedDocument> {
        self.details
            .lock()
            .await
            .iter()
            .filter_map(|((chain_id, token_id), (updated_at, record))| {
                Some(CachedDocument {
                    chain_id: *chain_id,
                    token_id: *token_id,
                    updated_at: updated_at.clone()?,
                    record: record.clone(),
                })
            })
            .collect()
    }

    /// Detail records read earlier (from the disk cache): an agent whose row still has the same
    /// `updated_at` is not fetched again.
    pub async fn remember(&self, documents: Vec<CachedDocument>) {
        let mut details = self.details.lock().await;
        for d in documents {
            details
                .entry((d.chain_id, d.token_id))
                .or_insert((Some(d.updated_at), d.record));
        }
    }

    /// Exponential backoff with jitter: a random delay between half and all of
    /// `base * 2^(attempt-1)`, capped, so that many clients do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .settings
            .backoff_base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.settings.backoff_max);
        exp.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Rows and whether another page exists, from either envelope.
fn parse_page(
    body: &Value,
    page: u32,
    page_size: usize,
) -> Result<(Vec<Value>, bool), UnexpectedAnswer> {
    if body.get("success") == Some(&Value::Bool(false)) {
        return Err(UnexpectedAnswer::Refused(api_message(body)));
    }
    if let Some(rows) = body.get("data").and_then(Value::as_array) {
        let pagination = body.pointer("/meta/pagination");
        let has_more = match pagination
            .and_then(|p| p.get("hasMore"))
            .and_then(Value::as_bool)
        {
            Some(b) => b,
            None => pagination
                .and_then(|p| p.get("total"))
                .and_then(parse_id)
                .is_some_and(|total| (page as u64) * (page_size as u64) < total),
        };
        return Ok((rows.clone(), has_more));
    }
    if let Some(rows) = body.get("items").and_then(Value::as_array) {
        let offset = body.get("offset").and_then(parse_id).unwrap_or(0);
        let total = body.get("total").and_then(parse_id).unwrap_or(0);
        return Ok((rows.clone(), offset + (rows.len() as u64) < total));
    }
    if let Some(rows) = body.as_array() {
        return Ok((rows.clone(), rows.len() >= page_size));
    }
    Err(UnexpectedAnswer::Envelope)
}

fn api_message(body: &Value) -> String {
    ["error", "message"]
        .iter()
        .find_map(|k| body.get(*k))
        .map(|v| snippet(v.to_string().as_bytes(), 200))
        .unwrap_or_else(|| "no message".into())
}

fn text_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(|s| match s {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// `(chain_id, token_id)` from `chain_id`/`token_id`, or from `agent_id` `"<chain>:<registry>:<token>"`.
fn ids(row: &Value) -> (Option<u64>, Option<u64>) {
    let agent = row.get("agent_id").and_then(Value::as_str).unwrap_or("");
    let mut parts = agent.split(':');
    let from_agent_chain = parts.next().and_then(|c| c.parse().ok());
    let from_agent_token = parts.next_back().and_then(|t| t.parse().ok());
    let chain = ["chain_id", "chainId"]
        .iter()
        .find_map(|k| row.get(*k).and_then(parse_id))
        .or(from_agent_chain);
    let token = ["token_id", "tokenId"]
        .iter()
        .find_map(|k| row.get(*k).and_then(parse_id))
        .or(from_agent_token);
    (chain, token)
}

fn row_key(row: &Value) -> String {
    match ids(row) {
        (Some(c), Some(t)) => format!("{c}:{t}"),
        _ => row.to_string(),
    }
}

/// The document and/or its URI from `raw_metadata` (`offchain_content`, `offchain_uri`, or
/// `offchain` as either).
fn embedded(record: &Value) -> (Option<Value>, Option<String>) {
    let Some(raw) = record.get("raw_metadata").and_then(Value::as_object) else {
        return (None, None);
    };
    let mut doc = raw.get("offchain_content").and_then(as_document);
    let mut uri = raw.get("offchain_uri").and_then(as_uri);
    match raw.get("offchain") {
        Some(Value::Object(o)) if o.contains_key("content") || o.contains_key("uri") => {
            doc = doc.or_else(|| o.get("content").and_then(as_document));
            uri = uri.or_else(|| o.get("uri").and_then(as_uri));
        }
        Some(other) => {
            doc = doc.or_else(|| as_document(other));
            uri = uri.or_else(|| as_uri(other));
        }
        None => {}
    }
    if uri.is_none() {
        uri = onchain_uri(raw);
    }
    (doc, uri)
}

/// A document given as an object or as a JSON string.
fn as_document(v: &Value) -> Option<Value> {
    match v {
        Value::Object(o) if !o.is_empty() => Some(v.clone()),
        Value::String(s) if s.trim_start().starts_with('{') && s.len() <= MAX_EMBEDDED_BYTES => {
            serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
        }
        _ => None,
    }
}

fn as_uri(v: &Value) -> Option<String> {
    let s = v.as_str()?.trim();
    (!s.is_empty() && !s.starts_with('{')).then(|| s.to_string())
}

/// The registration URI among the on-chain metadata entries, if the index lists it there.
fn onchain_uri(raw: &Map<String, Value>) -> Option<String> {
    raw.get("onchain")?.as_array()?.iter().find_map(|entry| {
        let key = entry.get("key")?.as_str()?.to_ascii_lowercase();
        if !matches!(key.as_str(), "agenturi" | "tokenuri" | "uri" | "agent_uri") {
            return None;
        }
        entry
            .get("decoded")
            .and_then(as_uri)
            .or_else(|| entry.get("value").and_then(as_uri))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn both_envelopes() {
        let a = json!({"success": true, "data": [{"token_id": "1"}],
            "meta": {"pagination": {"page": 1, "limit": 1, "total": 2, "hasMore": true}}});
        assert!(parse_page(&a, 1, 1).unwrap().1);
        let b = json!({"items": [{"token_id": "2"}], "total": 2, "limit": 1, "offset": 1});
        assert_eq!(
            parse_page(&b, 2, 1).unwrap(),
            (vec![json!({"token_id": "2"})], false)
        );
        assert!(matches!(
            parse_page(&json!({"success": false, "error": "boom"}), 1, 1),
            Err(UnexpectedAnswer::Refused(m)) if m.contains("boom")
        ));
        assert!(matches!(
            parse_page(&json!({"weird": 1}), 1, 1),
            Err(UnexpectedAnswer::Envelope)
        ));
    }

    #[test]
    fn ids_and_embedded_documents() {
        let row = json!({"agent_id": "84532:0x8004A818BFB912233c491871b3d84c89A494BD9e:42"});
        assert_eq!(ids(&row), (Some(84532), Some(42)));
        let row = json!({"chain_id": 8453, "token_id": "7"});
        assert_eq!(ids(&row), (Some(8453), Some(7)));
        let detail = json!({"raw_metadata": {"offchain_uri": "ipfs://cid",
            "offchain_content": "{\"name\": \"x\"}"}});
        assert_eq!(
            embedded(&detail),
            (Some(json!({"name": "x"})), Some("ipfs://cid".into()))
        );
        let alt = json!({"raw_metadata": {"offchain": {"name": "y"}}});
        assert_eq!(embedded(&alt).0, Some(json!({"name": "y"})));
        let alt = json!({"raw_metadata": {"offchain": "https://h/doc.json"}});
        assert_eq!(embedded(&alt), (None, Some("https://h/doc.json".into())));
        let onchain = json!({"raw_metadata": {"onchain": [{"key": "agentURI", "value": "0x", "decoded": "data:application/json,{}"}]}});
        assert_eq!(
            embedded(&onchain).1.as_deref(),
            Some("data:application/json,{}")
        );
    }

    #[tokio::test]
    async fn pacing_spaces_requests_evenly() {
        // 1200 a minute: one every 50 ms, the first at once.
        let pacer = Pacer::new(1200);
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            pacer.wait().await.unwrap();
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
        assert_eq!(Pacer::new(10).interval(), Duration::from_secs(6));
    }

    #[tokio::test]
    async fn the_pace_and_the_reserve_follow_the_headers() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(Quota::from_headers(&h), None);
        for (k, v) in [
            ("x-ratelimit-limit-minute", "1200"),
            ("x-ratelimit-remaining-minute", "1199"),
            ("x-ratelimit-limit-day", "100"),
            ("x-ratelimit-remaining-day", "11"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        let quota = Quota::from_headers(&h).unwrap();
        assert_eq!(quota.day_reserve(), 10);
        assert!(!quota.day_reserve_reached());

        // Configured for 10 a minute; the index says 1200.
        let pacer = Pacer::new(10);
        pacer.observe(quota);
        assert_eq!(pacer.interval(), Duration::from_millis(50));
        pacer.wait().await.unwrap();
        pacer.observe(Quota {
            day_remaining: Some(10),
            ..quota
        });
        assert!(matches!(
            pacer.wait().await,
            Err(ScanError::DayQuota {
                remaining: 10,
                limit: 100,
                reserve: 10
            })
        ));
        // Yesterday's count says nothing about today.
        let yesterday = Quota {
            day_remaining: Some(0),
            observed_at: unix_now() - 86_400,
            ..quota
        };
        assert!(!yesterday.day_reserve_reached());
        let big = Quota {
            day_limit: Some(100_000),
            ..quota
        };
        assert_eq!(big.day_reserve(), 100);
    }

    #[test]
    fn the_key_is_redacted() {
        let key = ApiKey::new(" abc-123 ").unwrap();
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        assert!(!key.fingerprint().contains("abc-123"));
        assert!(key.header().is_sensitive());
        assert!(ApiKey::new("two words").is_none());
        assert!(ApiKey::new("").is_none());
    }

    #[test]
    fn retry_after_forms() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
    }
}
