//! `/metrics`, `/healthz` and `/readyz` for the kubelet and Prometheus, and the live campaign
//! pages: `/campaigns`, `/campaigns/<namespace>/<name>` and its `results.tsv`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::Metrics;

mod pages;
pub use pages::CampaignPages;

/// What the probes report.
#[derive(Clone, Default)]
pub struct Health {
    /// Set once the controller can reach the API server; a standby replica is ready too, so
    /// that a rolling update does not wait for leadership.
    pub ready: Arc<AtomicBool>,
    /// Whether this replica holds the lease (reported on `/readyz` for humans).
    pub leader: Arc<AtomicBool>,
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
    pages: Option<CampaignPages>,
}

/// The router, separate from the listener so tests can call it without a socket. Without
/// `pages` (no API server) the campaign pages answer 404.
pub fn router(metrics: Metrics, health: Health, pages: Option<CampaignPages>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .route("/campaigns", get(index_handler))
        .route("/campaigns/{namespace}/{name}", get(campaign_handler))
        .route(
            "/campaigns/{namespace}/{name}/results.tsv",
            get(tsv_handler),
        )
        .with_state(AppState {
            metrics,
            health,
            pages,
        })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    // Spend per campaign lives in status, not in this replica's counters: it is read at
    // scrape time, so it is right on a standby and after a restart too.
    if let Some(pages) = &state.pages {
        pages.record_spend(&state.metrics).await;
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}

async fn index_handler(State(state): State<AppState>) -> axum::response::Response {
    match &state.pages {
        Some(pages) => pages.index().await,
        None => no_pages(),
    }
}

async fn campaign_handler(
    State(state): State<AppState>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    match &state.pages {
        Some(pages) => pages.campaign(&namespace, &name).await,
        None => no_pages(),
    }
}

async fn tsv_handler(
    State(state): State<AppState>,
    axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>,
) -> axum::response::Response {
    match &state.pages {
        Some(pages) => pages.results_tsv(&namespace, &name).await,
        None => no_pages(),
    }
}

fn no_pages() -> axum::response::Response {
    (
        StatusCode::NOT_FOUND,
        "campaign pages need the controller's API server connection",
    )
        .into_response()
}

async fn ready_handler(State(state): State<AppState>) -> impl IntoResponse {
    let role = if state.health.leader.load(Ordering::Relaxed) {
        "leader"
    } else {
        "standby"
    };
    if state.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready ({role})"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: API server not reached yet".to_string(),
        )
    }
}

/// Serves until `shutdown` resolves, without the campaign pages.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_pages(addr, metrics, health, None, shutdown).await
}

/// Serves until `shutdown` resolves; with `pages`, also `/campaigns`.
pub async fn serve_with_pages(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    pages: Option<CampaignPages>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics and probes: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz, /campaigns");
    axum::serve(listener, router(metrics, health, pages))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
