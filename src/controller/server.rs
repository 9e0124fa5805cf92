//! `/metrics`, `/healthz` and `/readyz` for the kubelet and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::telemetry::Metrics;

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
}

/// The router, separate from the listener so tests can call it without a socket.
pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
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

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics and probes: {e}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
