//! `autoresearch-coordinator controller`: reconciles every `ExperimentCampaign` in the cluster.
//!
//! One replica holds a Lease and does the work; the others wait. Reconcile hands each campaign to
//! the shared [`Engine`] (THINK, CLAIM, then RUN tasks); a task's status write is a watch event
//! that triggers the next reconcile. On SIGTERM or a lost lease the controller stops, aborting its
//! tasks: every payment in flight is in a campaign's ledger, and the next leader resumes it.

pub mod best;
mod chain;
pub mod delete;
pub mod events;
#[cfg(test)]
mod fixtures;
pub mod server;
pub mod stall;
pub mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::crd::ExperimentCampaign;
use crate::engine::{CampaignHandle, Engine, Settings, WorkerSource};
use crate::payment::RemoteSigner;
use crate::results::{ResultsLog, default_path};
use crate::strategy::llm::LlmProposer;
use crate::telemetry::Metrics;

/// Controller settings (flags and environment of the `controller` command).
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Folder holding autoresearch/results.jsonl (a persistent volume in the cluster).
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,
    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "autoresearch-coordinator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, env = "LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Only reconcile campaigns in this namespace (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Remote signer used by campaigns that keep the default `spec.payment.remoteSignerUrl`.
    #[arg(long, env = "REMOTE_SIGNER_URL")]
    pub signer_url: Option<String>,
    /// Remote signer token when a campaign names no Secret (obol-stack mounts it as env).
    #[arg(long, env = "REMOTE_SIGNER_TOKEN", hide_env_values = true)]
    pub signer_token: Option<String>,
    /// Keep a deleted campaign (a finalizer) until its paid experiments in flight are recorded.
    /// Needs `patch` on experimentcampaigns.
    #[arg(long, env = "CAMPAIGN_FINALIZER", default_value_t = false)]
    pub finalizer: bool,
    /// Milliseconds between polls of a worker's running job or stored result.
    #[arg(long, env = "JOB_POLL_MS", default_value_t = 10_000, hide = true)]
    pub job_poll_ms: u64,
}

struct Context {
    client: Client,
    engine: Arc<Engine>,
    identity: String,
    default_token: Option<String>,
    default_signer_url: Option<String>,
    /// Whether campaigns carry the finalizer of [`delete`].
    finalizer: bool,
    // One signer client (and its connection pool) per signer URL and token, shared by every
    // campaign and reconcile that uses it.
    signers: Mutex<HashMap<SignerKey, Arc<RemoteSigner>>>,
    // Per campaign, built once: its status store (whose lock serialises this process's writes)
    // and its event sink (whose series cache folds repeats). Dropped when the campaign is gone.
    campaigns: Mutex<HashMap<String, Arc<CampaignParts>>>,
}

/// What a campaign keeps between reconciles.
struct CampaignParts {
    uid: Option<String>,
    store: Arc<store::StatusStore>,
    notify: Arc<events::EventSink>,
    /// The event sink as RUN uses it: signer failures also raise SignerReady=False.
    signer_watch: Arc<stall::SignerWatch>,
    best: Arc<best::BestConfigMap>,
    /// The llm proposer and the fingerprint of what it was built from.
    proposer: Mutex<Option<(String, Arc<LlmProposer>)>>,
}

/// A signer URL and its token.
type SignerKey = (String, Option<String>);

impl Context {
    /// The context of a controller talking to the API server through `client`, as `identity`.
    fn new(client: Client, engine: Arc<Engine>, args: &ControllerArgs, identity: &str) -> Self {
        Self {
            client,
            engine,
            identity: identity.to_string(),
            default_token: args.signer_token.clone(),
            default_signer_url: args.signer_url.clone(),
            finalizer: args.finalizer,
            signers: Default::default(),
            campaigns: Default::default(),
        }
    }

    fn signer(
        &self,
        url: &str,
        token: Option<String>,
    ) -> Result<Arc<RemoteSigner>, ReconcileError> {
        let mut signers = self.signers.lock().expect("signers lock");
        let key = (url.to_string(), token);
        if let Some(signer) = signers.get(&key) {
            return Ok(signer.clone());
        }
        let signer = RemoteSigner::new(url, key.1.clone()).map_err(ReconcileError::SignerUrl)?;
        let signer = Arc::new(signer);
        signers.insert(key, signer.clone());
        Ok(signer)
    }

    /// The campaign's store and event sink, built on first sight (and again for a campaign
    /// re-created under the same name).
    fn parts(
        &self,
        key: &str,
        campaign: &ExperimentCampaign,
        namespace: &str,
        name: &str,
    ) -> Arc<CampaignParts> {
        let mut map = self.campaigns.lock().expect("campaigns lock");
        let uid = campaign.metadata.uid.clone();
        if let Some(parts) = map.get(key).filter(|p| p.uid == uid) {
            return parts.clone();
        }
        let store = Arc::new(
            store::StatusStore::new(self.client.clone(), namespace, name)
                .counting_conflicts(self.engine.metrics().status_conflicts.clone()),
        );
        let notify = Arc::new(events::EventSink::new(
            self.client.clone(),
            &self.identity,
            campaign,
        ));
        let parts = Arc::new(CampaignParts {
            uid,
            signer_watch: Arc::new(stall::SignerWatch::new(
                notify.clone(),
                store.clone(),
                campaign,
            )),
            store,
            notify,
            best: Arc::new(best::BestConfigMap::new(self.client.clone(), campaign)),
            proposer: Mutex::new(None),
        });
        map.insert(key.to_string(), parts.clone());
        parts
    }

    /// Drops what this process keeps of campaigns that no longer exist.
    fn forget_missing(&self, exists: impl Fn(&str) -> bool) {
        self.campaigns
            .lock()
            .expect("campaigns lock")
            .retain(|key, _| exists(key));
        self.engine.forget_missing(exists);
    }
}

/// Campaigns reconciled at once; the work itself runs in tasks, so a few suffice.
const RECONCILE_CONCURRENCY: u16 = 8;

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs, workers: Arc<dyn WorkerSource>) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot configure a Kubernetes client (in cluster or from KUBECONFIG): {e}")
    })?;
    let metrics = Metrics::new();
    let health = server::Health::default();
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let server = spawn_server(&args, &client, &metrics, &health, &shutdown);
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API server: {e}"))?;
    health.ready.store(true, Ordering::Relaxed);

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("autoresearch-coordinator-{}", std::process::id()));
    let engine = engine_for(&args, workers, metrics);
    chain::check_at_start(&engine).await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        engine.clone(),
        &args,
        &identity,
    ));
    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace(args.lease_seconds.min(15) / 3 + 1)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting for leadership");
    let led = lead_while_elected(&ctx, &args, &health, &shutdown, &mut leader).await;
    engine.abort_all();
    // Dropping the receiver ends the lease task; releasing lets a standby take over at once.
    drop(leader);
    if let Ok(Ok(manager)) = lease_task.await
        && let Err(e) = manager.release().await
    {
        tracing::warn!(error = %e, "could not release the lease; a standby takes over when it expires");
    }
    shutdown.cancel();
    server.await??;
    led
}

/// The /metrics, /healthz, /readyz and campaign pages server, until `shutdown`.
fn spawn_server(
    args: &ControllerArgs,
    client: &Client,
    metrics: &Metrics,
    health: &server::Health,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(server::serve_with_pages(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        Some(server::CampaignPages::new(
            client.clone(),
            default_path(&args.data_dir),
            args.namespace.clone(),
        )),
        shutdown.clone().cancelled_owned(),
    ))
}

/// The engine, appending to the data volume's results.jsonl.
fn engine_for(
    args: &ControllerArgs,
    workers: Arc<dyn WorkerSource>,
    metrics: Metrics,
) -> Arc<Engine> {
    let results = ResultsLog::new(default_path(&args.data_dir));
    let settings = Settings {
        job_poll: Duration::from_millis(args.job_poll_ms),
        ..Settings::default()
    };
    Engine::new(workers, results, metrics, settings)
}

/// Reconciles campaigns whenever this replica holds the lease, until `shutdown`. Fails only when
/// the leader election task stops.
async fn lead_while_elected(
    ctx: &Arc<Context>,
    args: &ControllerArgs,
    health: &server::Health,
    shutdown: &CancellationToken,
    leader: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leader.changed() => if changed.is_err() { anyhow::bail!("the leader election task stopped") },
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        tracing::info!(identity = %ctx.identity, "became leader: reconciling campaigns");
        health.leader.store(true, Ordering::Relaxed);
        let stop = shutdown.child_token();
        let controller = tokio::spawn(run_controller(
            ctx.clone(),
            args.namespace.clone(),
            stop.clone(),
        ));
        until_leadership_lost(&ctx.identity, &stop, leader).await;
        let _ = controller.await;
        ctx.engine.abort_all();
        health.leader.store(false, Ordering::Relaxed);
    }
    Ok(())
}

/// Waits until `stop` (shutdown) or the lease is lost; a lost lease cancels `stop`.
async fn until_leadership_lost(
    identity: &str,
    stop: &CancellationToken,
    leader: &mut tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = leader.changed() => {
                if changed.is_err() || !*leader.borrow_and_update() {
                    tracing::warn!(%identity, "lost leadership: stopping work; the next leader resumes it");
                    stop.cancel();
                    return;
                }
            }
        }
    }
}

async fn run_controller(ctx: Arc<Context>, namespace: Option<String>, stop: CancellationToken) {
    let (campaigns, config_maps): (Api<ExperimentCampaign>, Api<ConfigMap>) = match &namespace {
        Some(ns) => (
            Api::namespaced(ctx.client.clone(), ns),
            Api::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let controller = Controller::new(campaigns, watcher::Config::default().any_semantic());
    let store = controller.store();
    // An edited train.py (or llm program) in a ConfigMap reconciles the campaigns that use it at
    // once. Secrets are not watched: that would need list/watch on every Secret, and the chart
    // grants `get` by name only; a token change is read on the next reconcile.
    let users = store.clone();
    let controller = controller.watches(config_maps, watcher::Config::default(), move |cm| {
        campaigns_using(&users, &cm)
    });
    let sweep = tokio::spawn(sweep_deleted(ctx.clone(), store, stop.clone()));
    controller
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
    sweep.abort();
}

/// The campaigns that name `object` (a ConfigMap or a Secret) in their spec.
fn campaigns_using<K>(
    store: &reflector::Store<ExperimentCampaign>,
    object: &K,
) -> Vec<ObjectRef<ExperimentCampaign>>
where
    K: kube::Resource<DynamicType = ()>,
{
    let kind = kind_of::<K>();
    let meta = object.meta();
    let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|c| c.namespace().as_deref() == Some(ns))
        .filter(|c| references(c).contains(&(kind, name)))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The ConfigMaps and Secrets a campaign's spec names, as (kind, name).
fn references(campaign: &ExperimentCampaign) -> Vec<(&'static str, &str)> {
    let spec = &campaign.spec;
    let llm = spec.search.llm.as_ref();
    let named = [
        (
            "ConfigMap",
            spec.train_script
                .config_map_key_ref
                .as_ref()
                .map(|r| &r.name),
        ),
        (
            "ConfigMap",
            llm.and_then(|l| l.program_config_map_key_ref.as_ref())
                .map(|r| &r.name),
        ),
        (
            "Secret",
            spec.payment.token_secret_ref.as_ref().map(|r| &r.name),
        ),
        (
            "Secret",
            llm.and_then(|l| l.api_key_secret_ref.as_ref())
                .map(|r| &r.name),
        ),
    ];
    named
        .into_iter()
        .filter_map(|(kind, name)| Some((kind, name?.as_str())))
        .collect()
}

/// kube-runtime does not reconcile a deleted object, so what this process keeps of deleted
/// campaigns is dropped here, every minute, by comparing with the watch's cache.
async fn sweep_deleted(
    ctx: Arc<Context>,
    store: reflector::Store<ExperimentCampaign>,
    stop: CancellationToken,
) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let live: std::collections::HashSet<String> = store
            .state()
            .iter()
            .map(|c| campaign_key(&c.namespace().unwrap_or_default(), &c.name_any()))
            .collect();
        ctx.forget_missing(|key| live.contains(key));
    }
}

fn campaign_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Errors reconcile can return; each is retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A ConfigMap or Secret the spec names does not exist.
    #[error("{kind} {name} ({field}) not found in the campaign's namespace")]
    Missing {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The spec field naming it.
        field: &'static str,
    },
    /// The ConfigMap or Secret exists but lacks the key.
    #[error("{kind} {name} has no key {key}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A Secret's value is not UTF-8 text.
    #[error("Secret {name} key {key} is not text")]
    NotText {
        /// Secret name.
        name: String,
        /// The key.
        key: String,
    },
    /// Reading an input from the API server failed (transient, or RBAC).
    #[error("reading {kind} {name}: {source}")]
    Read {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// `spec.search.llm` cannot make a model client (the endpoint is not a URL).
    #[error("spec.search.llm: {0}")]
    Proposer(#[source] crate::strategy::llm::LlmError),
    /// `spec.payment.remoteSignerUrl` is not a usable URL.
    #[error("spec.payment.remoteSignerUrl: {0}")]
    SignerUrl(#[source] crate::payment::SignerError),
    /// The engine failed to read or write status.
    #[error(transparent)]
    Engine(#[from] crate::engine::UpdateError),
    /// A deleted campaign still has paid experiments in flight: it is kept until they are
    /// recorded (not an error: the finalizer waits).
    #[error("deleted; waiting for {0} paid experiments in flight to be recorded")]
    Draining(usize),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<ReconcileError>>),
}

async fn reconcile(
    campaign: Arc<ExperimentCampaign>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    if ctx.finalizer {
        return delete::with_finalizer(campaign, ctx).await;
    }
    reconcile_live(campaign, ctx).await
}

/// One step of a campaign that is not being deleted.
async fn reconcile_live(
    campaign: Arc<ExperimentCampaign>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = campaign.namespace().unwrap_or_else(|| "default".into());
    let name = campaign.name_any();
    let parts = ctx.parts(
        &campaign_key(&namespace, &name),
        &campaign,
        &namespace,
        &name,
    );
    let handle = match handle_for(&ctx, &campaign, &namespace, &name).await {
        Ok(h) => h,
        Err(e) => {
            count_reconcile(&ctx, false);
            stall::inputs_failed(&parts.store, &parts.notify, &e).await;
            return Err(e);
        }
    };
    stall::inputs_ok(&parts.store, &campaign).await;
    let chain = ctx.engine.check_chain(&handle, &campaign).await;
    let step = ctx.engine.reconcile(&handle).await;
    count_reconcile(&ctx, step.is_ok());
    match step {
        Ok(step) => Ok(Action::requeue(chain::requeue(step.requeue, &chain))),
        Err(e) => {
            let e = ReconcileError::from(e);
            stall::status_too_large(&parts.store, &parts.notify, &e).await;
            Err(e)
        }
    }
}

fn count_reconcile(ctx: &Context, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    ctx.engine
        .metrics()
        .reconciles
        .with_label_values(&[outcome])
        .inc();
}

fn error_policy(
    campaign: Arc<ExperimentCampaign>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    if let Some(wait) = delete::retry_after(error) {
        return Action::requeue(wait);
    }
    tracing::warn!(campaign = %campaign.name_any(), error = %error, "reconcile failed; retrying in 15 s");
    Action::requeue(Duration::from_secs(15))
}

/// Resolves what the engine needs that lives in the cluster: train.py from a ConfigMap and the
/// signer token from a Secret.
async fn handle_for(
    ctx: &Context,
    campaign: &ExperimentCampaign,
    namespace: &str,
    name: &str,
) -> Result<CampaignHandle, ReconcileError> {
    let spec = &campaign.spec;
    let train_py = match (
        &spec.train_script.inline,
        &spec.train_script.config_map_key_ref,
    ) {
        (Some(inline), _) => inline.clone(),
        (None, Some(r)) => {
            config_map_text(
                ctx,
                namespace,
                &r.name,
                &r.key,
                "spec.trainScript.configMapKeyRef",
            )
            .await?
        }
        (None, None) => String::new(),
    };
    let token = match &spec.payment.token_secret_ref {
        Some(r) => Some(
            secret_text(
                ctx,
                namespace,
                &r.name,
                &r.key,
                "spec.payment.tokenSecretRef",
            )
            .await?,
        ),
        None => ctx.default_token.clone(),
    };
    // A campaign that keeps the default signer URL uses the cluster's signer (REMOTE_SIGNER_URL).
    let url = match &ctx.default_signer_url {
        Some(url) if spec.payment.remote_signer_url == crate::crd::DEFAULT_REMOTE_SIGNER_URL => url,
        _ => &spec.payment.remote_signer_url,
    };
    let signer = ctx.signer(url, token)?;
    let key = campaign_key(namespace, name);
    let parts = ctx.parts(&key, campaign, namespace, name);
    let proposer = proposer_for(ctx, &parts, campaign, namespace).await?;
    Ok(CampaignHandle {
        key,
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
        store: parts.store.clone(),
        notify: parts.signer_watch.clone(),
        signer,
        train_py: train_py.into(),
        best: Some(parts.best.clone()),
        proposer,
    })
}

/// A ConfigMap's value.
async fn config_map_text(
    ctx: &Context,
    namespace: &str,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<String, ReconcileError> {
    let data = named::<ConfigMap>(ctx, namespace, name, field).await?.data;
    value_of(data, "ConfigMap", name, key)
}

/// A Secret's value as text (trimmed).
async fn secret_text(
    ctx: &Context,
    namespace: &str,
    name: &str,
    key: &str,
    field: &'static str,
) -> Result<String, ReconcileError> {
    let data = named::<Secret>(ctx, namespace, name, field).await?.data;
    let bytes = value_of(data, "Secret", name, key)?;
    let text = String::from_utf8(bytes.0).map_err(|_| ReconcileError::NotText {
        name: name.to_string(),
        key: key.to_string(),
    })?;
    Ok(text.trim().to_string())
}

/// The model proposer of an `llm` campaign, built once per (spec, key, program): its API key
/// from `search.llm.apiKeySecretRef`, its program inline, from a ConfigMap, or the default.
async fn proposer_for(
    ctx: &Context,
    parts: &CampaignParts,
    campaign: &ExperimentCampaign,
    namespace: &str,
) -> Result<Option<Arc<LlmProposer>>, ReconcileError> {
    let Some(llm) = campaign.spec.search.llm.as_ref() else {
        return Ok(None);
    };
    if campaign.spec.search.strategy != crate::crd::Strategy::Llm {
        return Ok(None);
    }
    let key = match &llm.api_key_secret_ref {
        Some(r) => Some(
            secret_text(
                ctx,
                namespace,
                &r.name,
                &r.key,
                "spec.search.llm.apiKeySecretRef",
            )
            .await?,
        ),
        None => None,
    };
    let program = match &llm.program_config_map_key_ref {
        Some(r) => {
            config_map_text(
                ctx,
                namespace,
                &r.name,
                &r.key,
                "spec.search.llm.programConfigMapKeyRef",
            )
            .await?
        }
        None => crate::strategy::llm::program_or_default(llm.program.as_deref()),
    };
    let fingerprint = crate::experiment::train_hash(&format!(
        "{}\n{key:?}\n{program}",
        serde_json::to_string(llm).unwrap_or_default()
    ));
    let mut cached = parts.proposer.lock().expect("proposer lock");
    if let Some((seen, proposer)) = cached.as_ref()
        && *seen == fingerprint
    {
        return Ok(Some(proposer.clone()));
    }
    let proposer = Arc::new(LlmProposer::new(llm, key, program).map_err(ReconcileError::Proposer)?);
    *cached = Some((fingerprint, proposer.clone()));
    Ok(Some(proposer))
}

/// A ConfigMap or Secret a campaign names, in its namespace; `field` is the spec field naming it.
async fn named<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    field: &'static str,
) -> Result<K, ReconcileError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let kind = kind_of::<K>();
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| ReconcileError::Read {
            kind,
            name: name.to_string(),
            source,
        })?
        .ok_or_else(|| ReconcileError::Missing {
            kind,
            name: name.to_string(),
            field,
        })
}

/// `ConfigMap` or `Secret`, as a static name for errors.
fn kind_of<K: kube::Resource<DynamicType = ()>>() -> &'static str {
    if K::kind(&()) == "Secret" {
        "Secret"
    } else {
        "ConfigMap"
    }
}

/// The value under `key` of a ConfigMap's or Secret's data.
fn value_of<V: Clone>(
    data: Option<std::collections::BTreeMap<String, V>>,
    kind: &'static str,
    name: &str,
    key: &str,
) -> Result<V, ReconcileError> {
    data.and_then(|d| d.get(key).cloned())
        .ok_or_else(|| ReconcileError::MissingKey {
            kind,
            name: name.to_string(),
            key: key.to_string(),
        })
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping new work"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping new work"),
        }
        shutdown.cancel();
    });
}

#[cfg(test)]
mod tests;
