//! `discover` at the index's real limits: the persistent cache, the API key, and the requests a
//! refresh costs, against the 8004scan stand-in started with `--real-limits` (anonymous 10 a
//! minute and 100 a day, 600 a minute with a key).

mod discovery_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use discovery_support::ScanServer;
use serde_json::Value;

/// The key the stand-in accepts.
const KEY: &str = "testbed-scan-key";

/// Runs `discover` (JSON, on-chain off, loopback allowed) with `env`; panics if it takes longer
/// than `deadline`.
fn discover(
    server: &ScanServer,
    data_dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"));
    cmd.args([
        "discover",
        "--json",
        "--on-chain",
        "never",
        "--limit",
        "100",
    ])
    .args(["--allow-private", "127.0.0.1/32"])
    .args(extra)
    .env("SCAN_API_URL", server.api_url())
    .env("IPFS_GATEWAY", server.origin())
    .env("DATA_DIR", data_dir)
    .env("RUST_LOG", "info")
    .env_remove("SCAN_API_KEY")
    .env_remove("SCAN_RATE_LIMIT")
    .envs(env.iter().copied())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run the CLI");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "discover took more than {deadline:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn ok_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn workers(json: &Value) -> usize {
    json["workers"].as_array().unwrap().len()
}

fn count(stats: &Value, field: &str) -> u64 {
    stats[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {stats}"))
}

#[tokio::test]
async fn a_second_discover_within_the_ttl_sends_no_request() {
    let server = ScanServer::start(&["--real-limits", "--fail-every", "0", "--agents", "20"]);
    let dir = tempfile::tempdir().unwrap();
    let key = [("SCAN_API_KEY", KEY)];
    let minute = Duration::from_secs(60);

    let first = ok_json(&discover(&server, dir.path(), &[], &key, minute));
    assert_eq!(workers(&first), 20);
    let cold = server.stats().await;
    // Three skill spellings, one page of 100 each, and a detail call for each of the ten
    // agents whose row carries no document.
    assert_eq!(count(&cold, "list"), 3, "{cold}");
    assert_eq!(count(&cold, "detail"), 10, "{cold}");

    let second = discover(&server, dir.path(), &[], &key, minute);
    assert_eq!(workers(&ok_json(&second)), 20);
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("from the cache"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let warm = server.stats().await;
    assert_eq!(
        count(&warm, "api"),
        count(&cold, "api"),
        "no request: {warm}"
    );

    // --refresh scans again, but unchanged agents are not fetched again; a changed one is.
    server.touch(1002).await;
    let third = discover(&server, dir.path(), &["--refresh"], &key, minute);
    assert_eq!(workers(&ok_json(&third)), 20);
    let refreshed = server.stats().await;
    assert_eq!(count(&refreshed, "list"), 6, "{refreshed}");
    assert_eq!(
        count(&refreshed, "detail"),
        11,
        "only the touched agent: {refreshed}"
    );
}

#[tokio::test]
async fn with_a_key_a_hundred_agents_take_seconds() {
    let server = ScanServer::start(&["--real-limits", "--fail-every", "0", "--agents", "100"]);
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    // Anonymously this is 53 requests at 10 a minute: over five minutes.
    let out = discover(
        &server,
        dir.path(),
        &[],
        &[("SCAN_API_KEY", KEY)],
        Duration::from_secs(20),
    );
    let elapsed = start.elapsed();
    assert_eq!(workers(&ok_json(&out)), 100);
    let stats = server.stats().await;
    assert_eq!(count(&stats, "keyed"), 53, "{stats}");
    assert_eq!(count(&stats, "anonymous"), 0, "{stats}");
    assert_eq!(
        count(&stats, "served429"),
        0,
        "paced by the headers: {stats}"
    );
    assert!(elapsed < Duration::from_secs(12), "{elapsed:?}");
}

#[tokio::test]
async fn the_key_is_never_shown_and_a_wrong_one_is_named() {
    let server = ScanServer::start(&["--real-limits", "--fail-every", "0", "--agents", "4"]);
    let dir = tempfile::tempdir().unwrap();
    let minute = Duration::from_secs(60);
    let debug = ("RUST_LOG", "debug");
    let out = discover(
        &server,
        dir.path(),
        &[],
        &[("SCAN_API_KEY", KEY), debug],
        minute,
    );
    assert_eq!(workers(&ok_json(&out)), 4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(KEY), "the key in the log: {stderr}");
    let cache = dir.path().join("autoresearch/discovery");
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert!(files.len() >= 3, "results, documents, quota: {files:?}");
    for f in files {
        let path = f.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!text.contains(KEY), "the key in {}", path.display());
    }

    let wrong = "not-the-testbed-key-0123";
    let out = discover(
        &server,
        dir.path(),
        &["--refresh"],
        &[("SCAN_API_KEY", wrong), debug],
        minute,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused SCAN_API_KEY"),
        "the refusal is named: {stderr}"
    );
    assert!(!stderr.contains(wrong), "the key in the output: {stderr}");
    assert_eq!(count(&server.stats().await, "served401"), 1, "not retried");
}

#[tokio::test]
async fn a_corrupt_or_foreign_cache_is_ignored_with_a_warning() {
    let server = ScanServer::start(&["--real-limits", "--fail-every", "0", "--agents", "6"]);
    let dir = tempfile::tempdir().unwrap();
    let key = [("SCAN_API_KEY", KEY)];
    let minute = Duration::from_secs(60);
    ok_json(&discover(&server, dir.path(), &[], &key, minute));
    let cold = count(&server.stats().await, "api");

    let cache = dir.path().join("autoresearch/discovery");
    let mut files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    // One file cut short, the others from a future format.
    for (i, path) in files.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap();
        let bad = if i == 0 {
            text[..text.len() / 2].to_string()
        } else {
            text.replace("\"version\":1", "\"version\":2")
        };
        std::fs::write(path, bad).unwrap();
    }
    let out = discover(&server, dir.path(), &[], &key, minute);
    assert_eq!(workers(&ok_json(&out)), 6, "discovered again");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ignoring the discovery cache file"),
        "{stderr}"
    );
    let after = count(&server.stats().await, "api");
    assert_eq!(after - cold, cold, "a full scan again, details included");
    // The files were rewritten: the next run is warm again.
    ok_json(&discover(&server, dir.path(), &[], &key, minute));
    assert_eq!(count(&server.stats().await, "api"), after);
}

#[tokio::test]
async fn two_processes_sharing_the_cache_refresh_once() {
    let server = ScanServer::start(&["--real-limits", "--fail-every", "0", "--agents", "20"]);
    let dir = tempfile::tempdir().unwrap();
    let key = [("SCAN_API_KEY", KEY)];
    let minute = Duration::from_secs(60);
    // A CLI and a controller, say, starting the same refresh at once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| discover(&server, dir.path(), &[], &key, minute));
        let b = s.spawn(|| discover(&server, dir.path(), &[], &key, minute));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(workers(&ok_json(&a)), 20);
    assert_eq!(workers(&ok_json(&b)), 20);
    let stats = server.stats().await;
    assert_eq!(count(&stats, "api"), 13, "one refresh, not two: {stats}");
}
