//! `autoresearch-coordinator controller`: reconciles every `ExperimentCampaign` in the cluster.
//!
//! One replica holds a Lease and does the work; the others wait. Reconcile hands each campaign to
//! the shared [`Engine`] (THINK, CLAIM, then RUN tasks); a task's status write is a watch event
//! that triggers the next reconcile. On SIGTERM or a lost lease the controller stops, aborting its
//! tasks: every payment in flight is in a campaign's ledger, and the next leader resumes it.

pub mod events;
pub mod server;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::crd::ExperimentCampaign;
use crate::engine::{CampaignHandle, Engine, Settings, WorkerSource};
use crate::payment::RemoteSigner;
use crate::results::{ResultsLog, default_path};
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
}

struct Context {
    client: Client,
    engine: Arc<Engine>,
    identity: String,
    default_token: Option<String>,
    default_signer_url: Option<String>,
    // One signer client (and its connection pool) per signer URL and token, shared by every
    // campaign and reconcile that uses it.
    signers: std::sync::Mutex<std::collections::HashMap<SignerKey, Arc<RemoteSigner>>>,
}

/// A signer URL and its token.
type SignerKey = (String, Option<String>);

impl Context {
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
        let signer = RemoteSigner::new(url, key.1.clone())
            .map_err(|e| ReconcileError::Input(format!("spec.payment.remoteSignerUrl: {e}")))?;
        let signer = Arc::new(signer);
        signers.insert(key, signer.clone());
        Ok(signer)
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

    let server = tokio::spawn(server::serve_with_pages(
        args.metrics_addr,
        metrics.clone(),
        health.clone(),
        Some(server::CampaignPages::new(
            client.clone(),
            default_path(&args.data_dir),
            args.namespace.clone(),
        )),
        shutdown.clone().cancelled_owned(),
    ));
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the Kubernetes API server: {e}"))?;
    health.ready.store(true, Ordering::Relaxed);

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("autoresearch-coordinator-{}", std::process::id()));
    let results = ResultsLog::new(default_path(&args.data_dir));
    let engine = Engine::new(workers, results, metrics, Settings::default());
    let ctx = Arc::new(Context {
        client: client.clone(),
        engine: engine.clone(),
        identity: identity.clone(),
        default_token: args.signer_token.clone(),
        default_signer_url: args.signer_url.clone(),
        signers: Default::default(),
    });

    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace(args.lease_seconds.min(15) / 3 + 1)
        .build()
        .await?;
    let (mut leader, lease_task) = lease.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting for leadership");

    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = leader.changed() => if changed.is_err() { anyhow::bail!("the leader election task stopped") },
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        tracing::info!(%identity, "became leader: reconciling campaigns");
        health.leader.store(true, Ordering::Relaxed);
        let stop = shutdown.child_token();
        let controller = tokio::spawn(run_controller(
            ctx.clone(),
            args.namespace.clone(),
            stop.clone(),
        ));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = leader.changed() => {
                    if changed.is_err() || !*leader.borrow_and_update() {
                        tracing::warn!(%identity, "lost leadership: stopping work; the next leader resumes it");
                        stop.cancel();
                        break;
                    }
                }
            }
        }
        let _ = controller.await;
        engine.abort_all();
        health.leader.store(false, Ordering::Relaxed);
    }
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
    Ok(())
}

async fn run_controller(ctx: Arc<Context>, namespace: Option<String>, stop: CancellationToken) {
    let api: Api<ExperimentCampaign> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    Controller::new(api, watcher::Config::default().any_semantic())
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
}

/// Errors reconcile can return; each is retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the campaign's inputs (train.py, token) failed.
    #[error("{0}")]
    Input(String),
    /// The engine failed to read or write status.
    #[error(transparent)]
    Engine(#[from] crate::engine::UpdateError),
}

async fn reconcile(
    campaign: Arc<ExperimentCampaign>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let namespace = campaign.namespace().unwrap_or_else(|| "default".into());
    let name = campaign.name_any();
    let handle = match handle_for(&ctx, &campaign, &namespace, &name).await {
        Ok(h) => h,
        Err(e) => {
            ctx.engine
                .metrics()
                .reconciles
                .with_label_values(&["error"])
                .inc();
            return Err(e);
        }
    };
    let step = ctx.engine.reconcile(&handle).await;
    let outcome = if step.is_ok() { "ok" } else { "error" };
    ctx.engine
        .metrics()
        .reconciles
        .with_label_values(&[outcome])
        .inc();
    Ok(Action::requeue(step?.requeue))
}

fn error_policy(
    campaign: Arc<ExperimentCampaign>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
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
            let data =
                named::<ConfigMap>(ctx, namespace, &r.name, "spec.trainScript.configMapKeyRef")
                    .await?
                    .data;
            data.and_then(|d| d.get(&r.key).cloned())
                .ok_or_else(|| missing_key("ConfigMap", &r.name, &r.key))?
        }
        (None, None) => String::new(),
    };
    let token = match &spec.payment.token_secret_ref {
        Some(r) => {
            let data = named::<Secret>(ctx, namespace, &r.name, "spec.payment.tokenSecretRef")
                .await?
                .data;
            let bytes = data
                .and_then(|d| d.get(&r.key).cloned())
                .ok_or_else(|| missing_key("Secret", &r.name, &r.key))?;
            let text = String::from_utf8(bytes.0).map_err(|_| {
                ReconcileError::Input(format!("Secret {} key {} is not text", r.name, r.key))
            })?;
            Some(text.trim().to_string())
        }
        None => ctx.default_token.clone(),
    };
    // A campaign that keeps the default signer URL uses the cluster's signer (REMOTE_SIGNER_URL).
    let url = match &ctx.default_signer_url {
        Some(url) if spec.payment.remote_signer_url == crate::crd::DEFAULT_REMOTE_SIGNER_URL => url,
        _ => &spec.payment.remote_signer_url,
    };
    let signer = ctx.signer(url, token)?;
    Ok(CampaignHandle {
        key: format!("{namespace}/{name}"),
        namespace: Some(namespace.to_string()),
        name: name.to_string(),
        store: Arc::new(store::StatusStore::new(ctx.client.clone(), namespace, name)),
        notify: Arc::new(events::EventSink::new(
            ctx.client.clone(),
            &ctx.identity,
            campaign,
        )),
        signer,
        train_py: train_py.into(),
    })
}

/// A ConfigMap or Secret a campaign names, in its namespace; `field` is the spec field naming it.
async fn named<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<K, ReconcileError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let kind = K::kind(&());
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| ReconcileError::Input(format!("reading {kind} {name}: {e}")))?
        .ok_or_else(|| ReconcileError::Input(format!("{kind} {name} ({field}) not found")))
}

fn missing_key(kind: &str, name: &str, key: &str) -> ReconcileError {
    ReconcileError::Input(format!("{kind} {name} has no key {key}"))
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
