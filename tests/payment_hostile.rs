//! Hostile or broken peers that the real testbed does not play: oversized bodies, redirects, job
//! URLs pointing elsewhere, a signer answering garbage. Small axum servers on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use autoresearch_coordinator::payment::{
    self, ExperimentRequest, RemoteSigner, SignerError, WorkerClient, WorkerError,
};
use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn request() -> ExperimentRequest {
    ExperimentRequest {
        experiment_id: "exp-1".into(),
        train_py: "print(1)".into(),
        config: json!({}),
    }
}

fn client(base: &str) -> WorkerClient {
    WorkerClient::new(&format!("{base}/svc"), Duration::from_secs(10))
        .unwrap()
        .with_poll_interval(Duration::from_millis(20))
}

const BIG: usize = 2 * 1024 * 1024;

#[tokio::test]
async fn oversized_bodies_are_refused_not_truncated() {
    let app = Router::new()
        .route(
            "/svc/experiment",
            post(|| async { (StatusCode::PAYMENT_REQUIRED, "x".repeat(BIG)) }),
        )
        .route(
            "/big/experiment",
            post(|| async {
                // Streamed without a Content-Length, so the cap must hold while reading.
                let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024]));
                axum::body::Body::from_stream(futures::stream::iter(chunks))
            }),
        );
    let base = serve(app).await;
    let err = client(&base).quote().await.unwrap_err();
    assert!(matches!(err, WorkerError::TooLarge(_)), "{err}");
    let big = WorkerClient::new(&format!("{base}/big"), Duration::from_secs(10)).unwrap();
    let err = big.run(None, &request()).await.unwrap_err();
    assert!(matches!(err, WorkerError::TooLarge(_)), "{err}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new()
        .route(
            "/svc/experiment",
            post(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/elsewhere")],
                )
            }),
        )
        .route(
            "/elsewhere",
            post(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                "followed"
            }),
        );
    let base = serve(app).await;
    let err = client(&base).run(None, &request()).await.unwrap_err();
    assert!(
        matches!(err, WorkerError::Http { status: 307, .. }),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_job_token_is_never_sent_to_another_origin() {
    // The decoy is another loopback port: a different origin, never a routable address.
    let leaked = Arc::new(AtomicUsize::new(0));
    let seen = leaked.clone();
    let decoy = serve(Router::new().fallback(move |h: HeaderMap| async move {
        if h.contains_key(header::AUTHORIZATION) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        json!({"status": "completed"}).to_string()
    }))
    .await;
    let app = Router::new().route(
        "/svc/experiment",
        post(move || {
            let decoy = decoy.clone();
            async move {
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"jobId": "j1", "statusUrl": format!("{decoy}/s"),
                        "resultUrl": format!("{decoy}/r"), "jobToken": "tok"})),
                )
            }
        }),
    );
    let base = serve(app).await;
    let err = client(&base).run(None, &request()).await.unwrap_err();
    assert!(matches!(err, WorkerError::Job(_)), "{err}");
    assert_eq!(leaked.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_same_origin_job_is_polled_with_relative_urls() {
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let app = Router::new()
        .route(
            "/svc/experiment",
            post(|| async {
                (
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"jobId": "j1", "statusUrl": "jobs/j1",
                        "resultUrl": "/svc/jobs/j1/result", "jobToken": "tok"})),
                )
            }),
        )
        .route(
            "/svc/jobs/j1",
            get(move || async move {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"status": if n < 2 { "running" } else { "completed" }}))
            }),
        )
        .route(
            "/svc/jobs/j1/result",
            get(|h: HeaderMap| async move {
                if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some("Bearer tok")
                {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                axum::Json(
                    json!({"experiment_id": "exp-1", "status": "completed", "val_bpb": 0.98}),
                )
                .into_response()
            }),
        );
    let base = serve(app).await;
    let outcome = client(&base).run(None, &request()).await.unwrap();
    assert_eq!(outcome.result.val_bpb, Some(0.98));
    assert_eq!(polls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn signer_garbage_and_errors_are_named() {
    let app = Router::new()
        .route("/a/api/v1/keys", get(|| async { "not json" }))
        .route(
            "/a/api/v1/sign/{address}/typed-data",
            post(|| async { axum::Json(json!({"signature": "0x1234"})) }),
        )
        .route(
            "/b/api/v1/keys",
            get(|| async { axum::Json(json!({"keys": []})) }),
        )
        .route(
            "/b/api/v1/sign/{address}/typed-data",
            post(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": "hsm offline", "code": "SIGNING_ERROR"})),
                )
            }),
        );
    let base = serve(app).await;
    let a = RemoteSigner::new(&format!("{base}/a"), None).unwrap();
    assert!(matches!(
        a.keys().await.unwrap_err(),
        SignerError::BadResponse(_)
    ));
    let addr = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        .parse()
        .unwrap();
    assert!(matches!(
        a.sign_typed_data(addr, &json!({})).await,
        Ok(bytes) if bytes.len() == 2
    ));
    let b = RemoteSigner::new(&format!("{base}/b"), None).unwrap();
    assert!(matches!(
        b.payer(None).await.unwrap_err(),
        SignerError::NoKeys
    ));
    let err = b.sign_typed_data(addr, &json!({})).await.unwrap_err();
    assert!(
        err.to_string().contains("SIGNING_ERROR") && err.to_string().contains("hsm offline"),
        "{err}"
    );
    let down = RemoteSigner::new("http://127.0.0.1:9", None).unwrap();
    let err = down.keys().await.unwrap_err();
    assert!(err.to_string().contains("REMOTE_SIGNER_URL"), "{err}");
    assert_eq!(
        payment::signer::DEFAULT_SIGNER_URL,
        "http://remote-signer:9000"
    );
}
