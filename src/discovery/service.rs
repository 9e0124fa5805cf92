//! Discovery as one shared service: every campaign of the process asks the same [`Discovery`],
//! which caches what the index and the chain returned, so a hundred campaigns with the same
//! settings cost one index scan per refresh interval. With a cache folder (the CLI and the
//! controller use `$DATA_DIR/autoresearch/discovery/`), results outlive the process: a second
//! `discover` within the refresh interval sends no request at all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use super::cache::DiskCache;
use super::chain::{ChainConfig, ChainIndex, RegistryError};
use super::document::{NotADocument, SkillFilter, parse_registration};
use super::fetch::{DEFAULT_IPFS_GATEWAY, DocumentFetcher, FetchError};
use super::policy::{AddressPolicy, AllowEntryError, UrlRefusal};
use super::scan::{ApiKey, IndexEntry, Quota, ScanClient, ScanError, ScanResult, ScanSettings};
use super::worker::{FoundIn, NotAWorker, Worker, merge};
use crate::crd::{DiscoverySpec, OnChainMode};

/// A failed index scan is retried after at most this long, whatever the refresh interval.
const FAILURE_TTL: Duration = Duration::from_secs(60);

/// Documents and endpoints vetted at once.
const CONCURRENCY: usize = 8;

/// Cache file kinds.
const RESULTS: &str = "results";
const DOCUMENTS: &str = "documents";
const QUOTA: &str = "quota";

/// How long a refresh waits for another process refreshing the same settings.
const LOCK_WAIT: Duration = Duration::from_secs(120);

fn ttl_of(spec: &DiscoverySpec) -> Duration {
    Duration::from_secs(u64::from(spec.refresh_interval_seconds.max(1)))
}

/// Process-wide discovery settings (from the environment for the CLI and the controller).
#[derive(Clone, Debug)]
pub struct DiscoverySettings {
    /// Pacing and retries of the index.
    pub scan: ScanSettings,
    /// Most index rows read per refresh.
    pub index_limit: usize,
    /// Gateway for `ipfs://` URIs.
    pub ipfs_gateway: Url,
    /// The registry to read on chain. Its `rpc_url` is replaced by the campaign's
    /// `discovery.onChain.erpcUrl` when that is set.
    pub chain: Option<ChainConfig>,
    /// How long a result may be served after refreshes started failing.
    pub max_stale: Duration,
    /// Where results, documents and the index's quota are kept between runs; `None`: memory
    /// only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            scan: ScanSettings::default(),
            index_limit: 100,
            ipfs_gateway: Url::parse(DEFAULT_IPFS_GATEWAY).expect("constant URL"),
            chain: None,
            max_stale: Duration::from_secs(3600),
            cache_dir: None,
        }
    }
}

impl DiscoverySettings {
    /// Reads `SCAN_API_KEY` (sent as `X-API-Key`), `DATA_DIR` (default `/data`; the cache is
    /// `$DATA_DIR/autoresearch/discovery/`), `IPFS_GATEWAY`, `SCAN_RATE_LIMIT` (requests per
    /// minute while the index reports no limit), `ERPC_NETWORK` (`base` / `base-sepolia`,
    /// default `base-sepolia`), `ERPC_URL`, and the overrides `ERC8004_REGISTRY`,
    /// `ERC8004_START_BLOCK`, `ERPC_MAX_BLOCK_RANGE` (for a private chain).
    pub fn from_env() -> Result<Self, DiscoveryError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut s = Self::default();
        if let Some(k) = var("SCAN_API_KEY") {
            // The message never repeats the value: it is a secret.
            s.scan.api_key = Some(ApiKey::new(&k).ok_or_else(|| {
                DiscoveryError::Config(
                    "SCAN_API_KEY has characters an HTTP header cannot carry".into(),
                )
            })?);
        }
        let data_dir = var("DATA_DIR").unwrap_or_else(|| "/data".into());
        s.cache_dir = Some(
            DiskCache::under_data_dir(data_dir.as_ref())
                .dir()
                .to_path_buf(),
        );
        if let Some(g) = var("IPFS_GATEWAY") {
            s.ipfs_gateway = Url::parse(&g)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    DiscoveryError::Config(format!("IPFS_GATEWAY {g:?} is not an http(s) URL"))
                })?;
        }
        if let Some(r) = var("SCAN_RATE_LIMIT") {
            s.scan.requests_per_minute = r.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                DiscoveryError::Config(format!(
                    "SCAN_RATE_LIMIT {r:?} is not a positive number of requests per minute"
                ))
            })?;
        }
        let network = var("ERPC_NETWORK").unwrap_or_else(|| "base-sepolia".into());
        let rpc = var("ERPC_URL").unwrap_or_else(|| crate::crd::DEFAULT_ERPC_URL.into());
        let mut chain = ChainConfig::for_network(&network, &rpc)
            .map_err(|e| DiscoveryError::Config(e.to_string()))?;
        if let Some(a) = var("ERC8004_REGISTRY") {
            chain.registry = a.trim().parse().map_err(|_| {
                DiscoveryError::Config(format!("ERC8004_REGISTRY {a:?} is not an address"))
            })?;
        }
        let number = |k: &str| -> Result<Option<u64>, DiscoveryError> {
            var(k)
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        DiscoveryError::Config(format!("{k} {v:?} is not a block number"))
                    })
                })
                .transpose()
        };
        if let Some(b) = number("ERC8004_START_BLOCK")? {
            chain.start_block = b;
        }
        if let Some(r) = number("ERPC_MAX_BLOCK_RANGE")? {
            chain.max_block_range = r.max(1);
        }
        s.chain = Some(chain);
        Ok(s)
    }
}

/// Discovery could not produce a single worker source.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    /// Bad allowlist.
    #[error(transparent)]
    Allowlist(#[from] AllowEntryError),
    /// Every configured source failed.
    #[error(
        "no worker source answered: {0}. Check SCAN_API_URL and ERPC_URL / ERPC_NETWORK (or the campaign's discovery settings), or name workers by hand"
    )]
    AllSourcesFailed(String),
    /// Nothing is cached yet and the first refresh did not finish in time; it goes on in the
    /// background.
    #[error(
        "discovery has found nothing yet: the first scan is still running after {0:?} (it goes on in the background)"
    )]
    Pending(Duration),
}

/// An agent that was found but not kept, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// `<chain>:<agent>` when known.
    pub agent: String,
    /// The endpoint or document URI concerned.
    pub target: String,
    /// Why.
    pub reason: String,
}

/// The outcome of a discovery.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerSet {
    /// Usable workers: static ones, then discovered ones; preferred first; excluded removed.
    pub workers: Vec<Worker>,
    /// Agents refused by the address policy.
    pub refused: Vec<Rejected>,
    /// Agents that are not workers (inactive, wrong skill, no endpoint, unreadable document).
    pub skipped: Vec<Rejected>,
    /// Sources that failed without failing the whole discovery.
    pub warnings: Vec<String>,
    /// When the discovered part was fetched.
    #[serde(with = "system_time_rfc3339")]
    pub fetched_at: SystemTime,
    /// The index's quota as it last reported it, when it does.
    pub index_quota: Option<Quota>,
}

impl WorkerSet {
    /// Whether the index's day quota is down to its reserve: discovery sends it nothing more
    /// today and reads the chain instead (when the campaign's on-chain mode allows).
    pub fn index_quota_low(&self) -> bool {
        self.index_quota.is_some_and(|q| q.day_reserve_reached())
    }
}

mod system_time_rfc3339 {
    pub fn serialize<S: serde::Serializer>(
        t: &std::time::SystemTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let t: chrono::DateTime<chrono::Utc> = (*t).into();
        s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    }
}

/// What the discovered part of a [`WorkerSet`] is cached as (in memory and on disk).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Findings {
    workers: Vec<Worker>,
    refused: Vec<Rejected>,
    skipped: Vec<Rejected>,
    warnings: Vec<String>,
    fetched_at: SystemTime,
    index_quota: Option<Quota>,
}

impl Findings {
    fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.fetched_at)
            .unwrap_or_default()
    }
}

struct Timed<T> {
    at: Instant,
    value: T,
}

type Slot<T> = Arc<Mutex<Option<Timed<T>>>>;

/// The last good discovery for a key, and the last failure since (so that an outage of every
/// source is not retried by every caller).
#[derive(Default)]
struct Resolved {
    good: Option<Arc<Findings>>,
    /// The message of [`DiscoveryError::AllSourcesFailed`], served again while it is fresh.
    failure: Option<Timed<String>>,
}

/// One key's cache. `state` is only held for a moment, never across an await, so a caller that
/// must not wait can always read it; `refresh` is held for as long as a refresh runs, so there
/// is one refresh at a time per key.
#[derive(Default)]
struct KeyCache {
    state: std::sync::Mutex<Resolved>,
    refresh: Arc<Mutex<()>>,
}

impl KeyCache {
    fn state(&self) -> std::sync::MutexGuard<'_, Resolved> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn good(&self) -> Option<Arc<Findings>> {
        self.state().good.clone()
    }
}

/// An index scan, or why it failed (failures are cached too, so an outage is not hammered; the
/// error is shared because every cached reader gets the same one).
type IndexOutcome = Result<Arc<ScanResult>, Arc<ScanError>>;

/// Everything that changes what is discovered, except the lists applied afterwards.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ResolveKey {
    scan_api_url: String,
    skill: SkillFilter,
    index_limit: usize,
    mode: OnChainModeKey,
    chain: Option<ChainConfig>,
    policy: AddressPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct OnChainModeKey(u8);

impl From<OnChainMode> for OnChainModeKey {
    fn from(m: OnChainMode) -> Self {
        Self(match m {
            OnChainMode::Fallback => 0,
            OnChainMode::Always => 1,
            OnChainMode::Confirm => 2,
            OnChainMode::Never => 3,
        })
    }
}

/// The shared discovery service. Cheap to clone; clones share caches.
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

struct Inner {
    settings: DiscoverySettings,
    scan_clients: Mutex<HashMap<String, Arc<ScanClient>>>,
    chains: Mutex<HashMap<ChainConfig, Arc<ChainIndex>>>,
    index: Mutex<HashMap<(String, SkillFilter), Slot<IndexOutcome>>>,
    resolved: Mutex<HashMap<ResolveKey, Arc<KeyCache>>>,
    disk: Option<DiskCache>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// A service with these settings.
    pub fn new(settings: DiscoverySettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                scan_clients: Mutex::default(),
                chains: Mutex::default(),
                index: Mutex::default(),
                resolved: Mutex::default(),
                disk: settings.cache_dir.clone().map(DiskCache::new),
                settings,
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &DiscoverySettings {
        &self.inner.settings
    }

    /// The workers for a campaign's discovery spec: cached for `refreshIntervalSeconds`, shared
    /// with every campaign whose spec discovers the same way; static workers and the
    /// `prefer` / `exclude` lists applied on top. Callers queue while one refresh runs. For a
    /// caller that must not wait, see [`Discovery::workers_now`].
    pub async fn workers(&self, spec: &DiscoverySpec) -> Result<WorkerSet, DiscoveryError> {
        self.workers_allowing(spec, &[]).await
    }

    /// As [`Discovery::workers`], with extra allowlist entries (the CLI's `--allow-private`).
    pub async fn workers_allowing(
        &self,
        spec: &DiscoverySpec,
        extra_allow: &[String],
    ) -> Result<WorkerSet, DiscoveryError> {
        self.lookup(spec, extra_allow, false).await
    }

    /// As [`Discovery::workers_allowing`], but scans again whatever is cached (`discover
    /// --refresh`). Still one refresh at a time per key, and still within the index's quota.
    pub async fn refresh_allowing(
        &self,
        spec: &DiscoverySpec,
        extra_allow: &[String],
    ) -> Result<WorkerSet, DiscoveryError> {
        self.lookup(spec, extra_allow, true).await
    }

    /// The workers for a spec **without waiting for a scan** whenever anything is known, for
    /// callers on the critical path (the engine's CLAIM, a fail-over to the next worker).
    ///
    /// - Something cached (in memory, or on disk from an earlier run or another process), fresh
    ///   or stale: answered at once. A stale result comes with a warning, and a refresh starts in
    ///   a background task unless one already runs for the same settings (one at a time per
    ///   key). The caller never waits for it; later calls see its result.
    /// - Nothing cached, but the spec names static workers (`loop --prefer`): the static
    ///   workers at once, the first refresh in the background.
    /// - Nothing cached at all: the caller waits up to `wait` for the first refresh, and gets
    ///   its result, its error, or [`DiscoveryError::Pending`] (the refresh goes on).
    ///
    /// Static workers and `prefer` / `exclude` apply as in [`Discovery::workers`]. Must be
    /// called within a tokio runtime (the refresh is spawned on it).
    pub async fn workers_now(
        &self,
        spec: &DiscoverySpec,
        wait: Duration,
    ) -> Result<WorkerSet, DiscoveryError> {
        let key = self.key(spec, &[])?;
        let ttl = ttl_of(spec);
        let entry = self.entry(&key).await;
        if let Some(found) = entry.good().or_else(|| self.load_disk(&key, &entry)) {
            let mut set = finish(spec, &found);
            if found.age() >= ttl {
                self.refresh_in_background(&key, ttl, &entry);
                set.warnings.push(format!(
                    "serving discovery results from {}s ago while a refresh runs",
                    found.age().as_secs()
                ));
            }
            if let Some(f) = &entry.state().failure {
                set.warnings
                    .push(format!("the last discovery refresh failed: {}", f.value));
            }
            return Ok(set);
        }
        self.refresh_in_background(&key, ttl, &entry);
        if !spec.workers.is_empty() {
            let mut set = finish(spec, &Findings::empty());
            set.warnings
                .push("discovery is still running; using the named workers meanwhile".into());
            return Ok(set);
        }
        // The background refresh holds this lock until it has stored its outcome.
        let done = tokio::time::timeout(wait, entry.refresh.clone().lock_owned()).await;
        let state = entry.state();
        match (&state.good, &state.failure, done) {
            (Some(found), _, _) => Ok(finish(spec, found)),
            (None, Some(f), Ok(_)) => Err(DiscoveryError::AllSourcesFailed(f.value.clone())),
            _ => Err(DiscoveryError::Pending(wait)),
        }
    }

    /// The cached result for a spec, without waiting or refreshing (for a reconcile loop that
    /// must not block).
    pub async fn peek(&self, spec: &DiscoverySpec) -> Option<WorkerSet> {
        let key = self.key(spec, &[]).ok()?;
        let entry = self.entry(&key).await;
        let found = entry.good().or_else(|| self.load_disk(&key, &entry))?;
        Some(finish(spec, &found))
    }

    async fn lookup(
        &self,
        spec: &DiscoverySpec,
        extra_allow: &[String],
        force: bool,
    ) -> Result<WorkerSet, DiscoveryError> {
        let key = self.key(spec, extra_allow)?;
        let entry = self.entry(&key).await;
        let guard = entry.refresh.clone().lock_owned().await;
        let outcome = self.resolve(&key, ttl_of(spec), &entry, force).await;
        drop(guard);
        let e = match outcome {
            Ok(found) => return Ok(finish(spec, &found)),
            Err(e) => e,
        };
        match entry.good() {
            // A source outage should not take every campaign's workers away at once.
            Some(c) if c.age() < self.inner.settings.max_stale => {
                let mut set = finish(spec, &c);
                set.warnings
                    .push(format!("serving the result of an earlier refresh: {e}"));
                Ok(set)
            }
            _ if !spec.workers.is_empty() => {
                let mut set = finish(spec, &Findings::empty());
                set.warnings.push(e.to_string());
                Ok(set)
            }
            _ => Err(e),
        }
    }

    /// Starts a refresh of `key` in a task, unless one runs already.
    fn refresh_in_background(&self, key: &ResolveKey, ttl: Duration, entry: &Arc<KeyCache>) {
        let Ok(guard) = entry.refresh.clone().try_lock_owned() else {
            return;
        };
        let (this, key, entry) = (self.clone(), key.clone(), entry.clone());
        tokio::spawn(async move {
            if let Err(e) = this.resolve(&key, ttl, &entry, false).await {
                tracing::warn!("background discovery refresh failed: {e}");
            }
            drop(guard);
        });
    }

    /// The result for `key`: cached when fresh (memory, then disk), else a refresh. The caller
    /// holds the key's refresh lock.
    async fn resolve(
        &self,
        key: &ResolveKey,
        ttl: Duration,
        entry: &KeyCache,
        force: bool,
    ) -> Result<Arc<Findings>, DiscoveryError> {
        let asked = SystemTime::now();
        let fresh = |d: &Arc<Findings>| !force && d.age() < ttl;
        if let Some(found) = entry.good().filter(fresh) {
            return Ok(found);
        }
        if let Some(found) = self.load_disk(key, entry).filter(fresh) {
            return Ok(found);
        }
        if !force
            && let Some(f) = &entry.state().failure
            && f.at.elapsed() < ttl.min(FAILURE_TTL)
        {
            return Err(DiscoveryError::AllSourcesFailed(f.value.clone()));
        }
        // Another process sharing the cache may be refreshing the same key: wait for it, then
        // use what it stored.
        let text = format!("{key:?}");
        let _lock = match &self.inner.disk {
            Some(disk) => disk.lock(RESULTS, &text, LOCK_WAIT).await,
            None => None,
        };
        if let Some(found) = self
            .load_disk(key, entry)
            .filter(|d| d.fetched_at >= asked || fresh(d))
        {
            return Ok(found);
        }
        let outcome = self.discover(key, ttl, force).await;
        self.remember(&text, entry, outcome, force)
    }

    /// Keeps a refresh's outcome: a result in memory and on disk, or the failure of every
    /// source (the first since the last good result, unless `force`d).
    fn remember(
        &self,
        text: &str,
        entry: &KeyCache,
        outcome: Result<Findings, DiscoveryError>,
        force: bool,
    ) -> Result<Arc<Findings>, DiscoveryError> {
        match outcome {
            Ok(found) => {
                let found = Arc::new(found);
                if let Some(disk) = &self.inner.disk
                    && let Err(e) = disk.save(RESULTS, text, &*found)
                {
                    tracing::warn!("{e}");
                }
                let mut state = entry.state();
                state.good = Some(found.clone());
                state.failure = None;
                Ok(found)
            }
            Err(e) => {
                if let DiscoveryError::AllSourcesFailed(msg) = &e {
                    let mut state = entry.state();
                    if state.failure.is_none() || force {
                        state.failure = Some(Timed {
                            at: Instant::now(),
                            value: msg.clone(),
                        });
                    }
                }
                Err(e)
            }
        }
    }

    /// The result stored on disk for `key`, if newer than memory's (it is then kept in memory).
    fn load_disk(&self, key: &ResolveKey, entry: &KeyCache) -> Option<Arc<Findings>> {
        let disk = self.inner.disk.as_ref()?;
        let stored = disk.load::<Findings>(RESULTS, &format!("{key:?}"))?;
        let mut state = entry.state();
        match &state.good {
            Some(mem) if mem.fetched_at >= stored.data.fetched_at => Some(mem.clone()),
            _ => {
                let found = Arc::new(stored.data);
                state.good = Some(found.clone());
                Some(found)
            }
        }
    }

    async fn entry(&self, key: &ResolveKey) -> Arc<KeyCache> {
        self.inner
            .resolved
            .lock()
            .await
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn key(
        &self,
        spec: &DiscoverySpec,
        extra_allow: &[String],
    ) -> Result<ResolveKey, DiscoveryError> {
        let allow: Vec<&str> = spec
            .allow_private
            .iter()
            .chain(extra_allow)
            .map(String::as_str)
            .collect();
        let chain = self.inner.settings.chain.clone().map(|mut c| {
            if !spec.on_chain.erpc_url.trim().is_empty() {
                c.rpc_url = spec.on_chain.erpc_url.trim().to_string();
            }
            c
        });
        Ok(ResolveKey {
            scan_api_url: spec.scan_api_url.trim().to_string(),
            skill: SkillFilter::new(&spec.skill),
            index_limit: self.inner.settings.index_limit,
            mode: spec.on_chain.mode.into(),
            chain,
            policy: AddressPolicy::with_allowlist(&allow)?,
        })
    }

    async fn discover(
        &self,
        key: &ResolveKey,
        ttl: Duration,
        force: bool,
    ) -> Result<Findings, DiscoveryError> {
        let fetcher =
            DocumentFetcher::new(key.policy.clone(), self.inner.settings.ipfs_gateway.clone())
                .map_err(|e| DiscoveryError::Config(format!("building the HTTP client: {e}")))?;
        let mode = mode_of(key.mode);
        let mut out = Findings::empty();
        // Text: each source's failure is shown to the user, as a warning or in the error.
        let mut failures = Vec::new();
        let index_tried = !key.scan_api_url.is_empty();
        let index_failed = !index_tried
            || !self
                .read_index(key, ttl, force, &fetcher, &mut out, &mut failures)
                .await;
        let read_chain = match mode {
            OnChainMode::Never => false,
            OnChainMode::Always => true,
            OnChainMode::Fallback | OnChainMode::Confirm => index_failed,
        };
        let confirm = mode == OnChainMode::Confirm && !index_failed;
        if mode != OnChainMode::Never {
            self.read_chain_source(key, read_chain, confirm, &fetcher, &mut out, &mut failures)
                .await;
        }
        let tried = usize::from(index_tried) + usize::from(read_chain);
        if tried > 0 && failures.len() >= tried {
            return Err(DiscoveryError::AllSourcesFailed(failures.join("; ")));
        }
        if tried == 0 {
            out.warnings
                .push("no discovery source is enabled (scanApiUrl empty, on-chain off)".into());
        }
        out.warnings.extend(failures);
        out.workers = dedupe_sources(std::mem::take(&mut out.workers));
        // Aged from the end of the refresh: an anonymous scan can outlast the interval itself.
        out.fetched_at = SystemTime::now();
        Ok(out)
    }

    /// Workers from the 8004scan index, into `out`. Returns whether the index answered.
    async fn read_index(
        &self,
        key: &ResolveKey,
        ttl: Duration,
        force: bool,
        fetcher: &DocumentFetcher,
        out: &mut Findings,
        failures: &mut Vec<String>,
    ) -> bool {
        let index = self.index(&key.scan_api_url, &key.skill, ttl, force).await;
        out.index_quota = self.index_quota(&key.scan_api_url).await;
        match index {
            Ok(scan) => {
                out.warnings
                    .extend(scan.problems.iter().map(|p| format!("8004scan: {p}")));
                let found = self.index_workers(&scan, &key.skill, fetcher, out).await;
                out.workers.extend(found);
                true
            }
            Err(e) => {
                failures.push(format!("8004scan ({}): {e}", key.scan_api_url));
                false
            }
        }
    }

    /// The registry on chain: read as a source (`read`), or used to `confirm` what the index
    /// found (workers it cannot confirm are dropped), or neither.
    async fn read_chain_source(
        &self,
        key: &ResolveKey,
        read: bool,
        confirm: bool,
        fetcher: &DocumentFetcher,
        out: &mut Findings,
        failures: &mut Vec<String>,
    ) {
        let chain = match &key.chain {
            Some(cfg) => self.chain(cfg).await,
            None if read => {
                failures.push("chain: no registry configured (set ERPC_NETWORK)".into());
                return;
            }
            None => return,
        };
        match (chain, read) {
            (Ok(chain), true) => match self.chain_workers(&chain, &key.skill, fetcher, out).await {
                Ok(found) => out.workers.extend(found),
                Err(e) => failures.push(format!("chain ({}): {e}", chain.config().rpc_url)),
            },
            (Err(e), true) => failures.push(format!("chain: {e}")),
            (Ok(chain), false) if confirm => self.confirm(&chain, &key.skill, fetcher, out).await,
            (Err(e), false) if confirm => {
                failures.push(format!("chain (to confirm index results): {e}"));
                out.workers.clear();
            }
            _ => {}
        }
    }

    /// The index scan, shared by every policy and campaign for `ttl`.
    async fn index(
        &self,
        base: &str,
        skill: &SkillFilter,
        ttl: Duration,
        force: bool,
    ) -> IndexOutcome {
        let slot = slot(&self.inner.index, (base.to_string(), skill.clone())).await;
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref().filter(|_| !force)
            && c.at.elapsed()
                < if c.value.is_ok() {
                    ttl
                } else {
                    ttl.min(FAILURE_TTL)
                }
        {
            return c.value.clone();
        }
        let result = match self.scan_client(base).await {
            Ok(client) => {
                let scanned = client.scan(skill, self.inner.settings.index_limit).await;
                self.save_index_state(base, &client).await;
                scanned.map(Arc::new).map_err(Arc::new)
            }
            Err(e) => Err(Arc::new(e)),
        };
        *cached = Some(Timed {
            at: Instant::now(),
            value: result.clone(),
        });
        result
    }

    async fn scan_client(&self, base: &str) -> Result<Arc<ScanClient>, ScanError> {
        let mut clients = self.inner.scan_clients.lock().await;
        if let Some(c) = clients.get(base) {
            return Ok(c.clone());
        }
        let client = Arc::new(ScanClient::new(base, self.inner.settings.scan.clone())?);
        if let Some(disk) = &self.inner.disk {
            if let Some(docs) = disk.load(DOCUMENTS, base) {
                client.remember(docs.data).await;
            }
            if let Some(quota) = disk.load::<Quota>(QUOTA, &self.quota_key(base)) {
                client.restore_quota(quota.data);
            }
        }
        clients.insert(base.to_string(), client.clone());
        Ok(client)
    }

    /// The quota belongs to the caller's identity at the index: anonymous, or one API key. The
    /// key is hashed into the file's key, never stored.
    fn quota_key(&self, base: &str) -> String {
        let who = match &self.inner.settings.scan.api_key {
            Some(k) => k.fingerprint(),
            None => "anonymous".into(),
        };
        format!("{base}\n{who}")
    }

    /// Keeps what a scan learnt (documents, quota) for the next run.
    async fn save_index_state(&self, base: &str, client: &ScanClient) {
        let Some(disk) = &self.inner.disk else {
            return;
        };
        let saved = disk.save(DOCUMENTS, base, &client.documents().await);
        let saved = saved.and_then(|()| match client.quota() {
            Some(q) => disk.save(QUOTA, &self.quota_key(base), &q),
            None => Ok(()),
        });
        if let Err(e) = saved {
            tracing::warn!("{e}");
        }
    }

    async fn index_quota(&self, base: &str) -> Option<Quota> {
        self.inner.scan_clients.lock().await.get(base)?.quota()
    }

    async fn chain(&self, cfg: &ChainConfig) -> Result<Arc<ChainIndex>, RegistryError> {
        let mut chains = self.inner.chains.lock().await;
        if let Some(c) = chains.get(cfg) {
            return Ok(c.clone());
        }
        let index = Arc::new(ChainIndex::new(cfg.clone())?);
        chains.insert(cfg.clone(), index.clone());
        Ok(index)
    }

    async fn index_workers(
        &self,
        scan: &ScanResult,
        skill: &SkillFilter,
        fetcher: &DocumentFetcher,
        out: &mut Findings,
    ) -> Vec<Worker> {
        // Owned entries: a stream of borrowed ones makes the future fail `tokio::spawn`'s
        // lifetime requirements.
        let outcomes: Vec<Vetted> = futures::stream::iter(scan.entries.clone())
            .map(|entry| async move { index_entry_worker(&entry, skill, fetcher).await })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        out.absorb(outcomes)
    }

    async fn chain_workers(
        &self,
        chain: &ChainIndex,
        skill: &SkillFilter,
        fetcher: &DocumentFetcher,
        out: &mut Findings,
    ) -> Result<Vec<Worker>, RegistryError> {
        let chain_id = chain.config().chain_id;
        let agents = chain.agents().await?;
        let outcomes: Vec<Vetted> = futures::stream::iter(agents)
            .map(|agent| async move {
                let label = format!("{chain_id}:{}", agent.agent_id);
                let doc = match fetcher.fetch(&agent.uri).await {
                    Ok(doc) => doc,
                    Err(e) => return fetch_failure(label, &agent.uri, e),
                };
                vet(
                    &doc,
                    skill,
                    Some(agent.agent_id),
                    Some(chain_id),
                    FoundIn::Chain,
                    fetcher,
                    label,
                )
                .await
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        Ok(out.absorb(outcomes))
    }

    /// Keeps only index workers whose on-chain registration names the same endpoint.
    async fn confirm(
        &self,
        chain: &ChainIndex,
        skill: &SkillFilter,
        fetcher: &DocumentFetcher,
        out: &mut Findings,
    ) {
        let chain_id = chain.config().chain_id;
        let candidates = std::mem::take(&mut out.workers);
        let checks: Vec<(Worker, Result<(), NotConfirmed>)> = futures::stream::iter(candidates)
            .map(|w| async move {
                let verdict = confirm_one(&w, chain, chain_id, skill, fetcher).await;
                (w, verdict)
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (mut w, verdict) in checks {
            match verdict {
                Ok(()) => {
                    w.source = FoundIn::IndexConfirmed;
                    out.workers.push(w);
                }
                Err(why) => out.skipped.push(Rejected {
                    agent: label_of(&w),
                    target: w.endpoint.clone(),
                    reason: format!("not confirmed: {why}"),
                }),
            }
        }
    }
}

/// Why the chain does not confirm a worker the index found.
#[derive(Debug, thiserror::Error)]
enum NotConfirmed {
    #[error("not an agent of chain {0}")]
    OtherChain(u64),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the agent does not exist on chain")]
    NoSuchAgent,
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Document(#[from] NotADocument),
    #[error("on chain, {0}")]
    NotAWorker(#[from] NotAWorker),
    #[error("the chain's registration names {0}")]
    OtherEndpoint(String),
}

async fn confirm_one(
    w: &Worker,
    chain: &ChainIndex,
    chain_id: u64,
    skill: &SkillFilter,
    fetcher: &DocumentFetcher,
) -> Result<(), NotConfirmed> {
    let agent = match (w.chain_id, w.agent_id) {
        (Some(c), Some(a)) if c == chain_id => a,
        _ => return Err(NotConfirmed::OtherChain(chain_id)),
    };
    let uri = chain
        .token_uri(agent)
        .await?
        .ok_or(NotConfirmed::NoSuchAgent)?;
    let doc = fetcher.fetch(&uri).await?;
    let reg = parse_registration(&doc)?;
    let onchain =
        Worker::from_registration(&reg, skill, Some(agent), Some(chain_id), FoundIn::Chain)?;
    if onchain.endpoint == w.endpoint {
        Ok(())
    } else {
        Err(NotConfirmed::OtherEndpoint(onchain.endpoint))
    }
}

/// Merges duplicates found by two sources: the same agent and endpoint from the index and the
/// chain is one worker, confirmed.
fn dedupe_sources(workers: Vec<Worker>) -> Vec<Worker> {
    let mut out: Vec<Worker> = Vec::with_capacity(workers.len());
    for w in workers {
        if let Some(existing) = out.iter_mut().find(|e| {
            e.endpoint == w.endpoint && e.agent_id == w.agent_id && e.chain_id == w.chain_id
        }) {
            if existing.source != w.source {
                existing.source = FoundIn::IndexConfirmed;
            }
            continue;
        }
        out.push(w);
    }
    out
}

fn mode_of(key: OnChainModeKey) -> OnChainMode {
    match key.0 {
        0 => OnChainMode::Fallback,
        1 => OnChainMode::Always,
        2 => OnChainMode::Confirm,
        _ => OnChainMode::Never,
    }
}

/// The shared entry for a key, created empty on first use.
async fn slot<K: std::hash::Hash + Eq, V: Default>(
    map: &Mutex<HashMap<K, Arc<Mutex<V>>>>,
    key: K,
) -> Arc<Mutex<V>> {
    map.lock().await.entry(key).or_default().clone()
}

fn finish(spec: &DiscoverySpec, found: &Findings) -> WorkerSet {
    WorkerSet {
        workers: merge(spec, &found.workers),
        refused: found.refused.clone(),
        skipped: found.skipped.clone(),
        warnings: found.warnings.clone(),
        fetched_at: found.fetched_at,
        index_quota: found.index_quota,
    }
}

/// What became of one agent.
enum Vetted {
    Worker(Worker),
    Refused(Rejected),
    Skipped(Rejected),
}

impl Findings {
    fn empty() -> Self {
        Self {
            workers: Vec::new(),
            refused: Vec::new(),
            skipped: Vec::new(),
            warnings: Vec::new(),
            fetched_at: SystemTime::now(),
            index_quota: None,
        }
    }

    fn absorb(&mut self, outcomes: Vec<Vetted>) -> Vec<Worker> {
        let mut workers = Vec::new();
        for o in outcomes {
            match o {
                Vetted::Worker(w) => workers.push(w),
                Vetted::Refused(r) => self.refused.push(r),
                Vetted::Skipped(r) => self.skipped.push(r),
            }
        }
        workers
    }
}

fn label(chain: Option<u64>, agent: Option<u64>) -> String {
    let part = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    format!("{}:{}", part(chain), part(agent))
}

fn label_of(w: &Worker) -> String {
    label(w.chain_id, w.agent_id)
}

fn fetch_failure(agent: String, uri: &str, e: FetchError) -> Vetted {
    let r = Rejected {
        agent,
        target: uri.chars().take(120).collect(),
        reason: e.to_string(),
    };
    if e.refusal().is_some() {
        Vetted::Refused(r)
    } else {
        Vetted::Skipped(r)
    }
}

/// The document of an index entry: embedded, else fetched, else the index's own record.
async fn index_entry_worker(
    entry: &IndexEntry,
    skill: &SkillFilter,
    fetcher: &DocumentFetcher,
) -> Vetted {
    let agent = label(entry.chain_id, entry.token_id);
    let doc: Value = match (&entry.document, &entry.document_uri) {
        (Some(doc), _) => doc.clone(),
        (None, Some(uri)) => match fetcher.fetch(uri).await {
            Ok(doc) => doc,
            // A refused document URI is a refused agent: the index's copy of a document we may
            // not read is no better.
            Err(e) if e.refusal().is_some() => return fetch_failure(agent, uri, e),
            Err(e) => {
                tracing::debug!(%agent, error = %e, "document unavailable; using the index record");
                entry.record.clone()
            }
        },
        (None, None) => entry.record.clone(),
    };
    vet(
        &doc,
        skill,
        entry.token_id,
        entry.chain_id,
        FoundIn::Index,
        fetcher,
        agent,
    )
    .await
}

/// Parses, applies the worker rules, and checks the endpoint against the policy (resolving it
/// once).
async fn vet(
    doc: &Value,
    skill: &SkillFilter,
    agent_id: Option<u64>,
    chain_id: Option<u64>,
    source: FoundIn,
    fetcher: &DocumentFetcher,
    agent: String,
) -> Vetted {
    let skipped = |target: String, reason: String| {
        Vetted::Skipped(Rejected {
            agent: agent.clone(),
            target,
            reason,
        })
    };
    let reg = match parse_registration(doc) {
        Ok(r) => r,
        Err(e) => return skipped(String::new(), e.to_string()),
    };
    let worker = match Worker::from_registration(&reg, skill, agent_id, chain_id, source) {
        Ok(w) => w,
        Err(e) => {
            return skipped(reg.name.unwrap_or_default(), e.to_string());
        }
    };
    let Some(url) = worker.url() else {
        return skipped(worker.endpoint, "unparsable endpoint".into());
    };
    match fetcher.policy().resolve_url(&url).await {
        Ok(_) => Vetted::Worker(worker),
        // Not a policy decision: the endpoint cannot be reached at all.
        Err(why @ UrlRefusal::Unresolvable { .. }) => skipped(worker.endpoint, why.to_string()),
        Err(refusal) => Vetted::Refused(Rejected {
            agent,
            target: worker.endpoint,
            reason: refusal.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::StaticWorker;

    /// An index that accepts connections and never answers: any scan hangs.
    async fn silent_index() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/public", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        (url, task)
    }

    fn spec(url: &str) -> DiscoverySpec {
        let mut spec = DiscoverySpec {
            scan_api_url: url.into(),
            refresh_interval_seconds: 10,
            ..DiscoverySpec::default()
        };
        spec.on_chain.mode = OnChainMode::Never;
        spec
    }

    fn worker(name: &str) -> Worker {
        Worker {
            agent_id: Some(1),
            chain_id: Some(84532),
            name: name.into(),
            endpoint: format!("https://{name}.example/services/w"),
            x402: true,
            best_val_bpb: None,
            total_experiments: None,
            gpu: None,
            source: FoundIn::Index,
            preferred: false,
        }
    }

    #[tokio::test]
    async fn workers_now_never_waits_when_anything_is_known() {
        let (url, _index) = silent_index().await;
        let dir = tempfile::tempdir().unwrap();
        let discovery = Discovery::new(DiscoverySettings {
            cache_dir: Some(dir.path().into()),
            ..DiscoverySettings::default()
        });
        let wait = Duration::from_millis(300);

        // Nothing known: a bounded wait, then Pending (the scan goes on).
        let t = Instant::now();
        let err = discovery.workers_now(&spec(&url), wait).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::Pending(_)), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));

        // Static workers: at once.
        let mut named = spec(&url);
        named.workers = vec![StaticWorker {
            endpoint: "https://mine.example/services/w".into(),
            name: None,
            agent_id: None,
        }];
        let t = Instant::now();
        let set = discovery.workers_now(&named, wait).await.unwrap();
        assert_eq!(set.workers.len(), 1);
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );

        // A stale result on disk (from another process): at once, with a warning, while the
        // refresh (hanging here) runs in the background, one at a time.
        let key = discovery.key(&spec(&url), &[]).unwrap();
        let stale = Findings {
            workers: vec![worker("cached")],
            fetched_at: SystemTime::now() - Duration::from_secs(60),
            ..Findings::empty()
        };
        DiskCache::new(dir.path())
            .save(RESULTS, &format!("{key:?}"), &stale)
            .unwrap();
        let fresh = Discovery::new(discovery.settings().clone());
        for _ in 0..3 {
            let t = Instant::now();
            let set = fresh.workers_now(&spec(&url), wait).await.unwrap();
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );
            assert_eq!(set.workers[0].name, "cached");
            assert!(set.warnings.iter().any(|w| w.contains("refresh runs")));
        }
        let entry = fresh.entry(&key).await;
        assert!(entry.refresh.try_lock().is_err(), "a refresh is running");
        assert!(fresh.peek(&spec(&url)).await.is_some());
    }
}
