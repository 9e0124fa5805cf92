//! Discovery against the 8004scan stand-in: every document variant, paging, both envelopes,
//! injected 500s, a rate limit, decoys, the address policy and the shared cache.

mod discovery_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use autoresearch_coordinator::crd::{DiscoverySpec, OnChainMode, StaticWorker};
use autoresearch_coordinator::discovery::scan::ScanSettings;
use autoresearch_coordinator::discovery::{Discovery, DiscoverySettings, FoundIn, WorkerSet};
use discovery_support::ScanServer;
use url::Url;

const REAL: [&str; 8] = [
    "Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta", "Eta", "Theta",
];

fn settings(server: &ScanServer) -> DiscoverySettings {
    DiscoverySettings {
        scan: ScanSettings {
            requests_per_minute: 6000,
            backoff_base: Duration::from_millis(20),
            page_size: 3,
            ..ScanSettings::default()
        },
        index_limit: 100,
        ipfs_gateway: Url::parse(&server.origin()).unwrap(),
        chain: None,
        ..DiscoverySettings::default()
    }
}

fn spec(server: &ScanServer, allow: &[&str]) -> DiscoverySpec {
    let mut spec = DiscoverySpec {
        scan_api_url: server.api_url(),
        allow_private: allow.iter().map(|s| s.to_string()).collect(),
        ..DiscoverySpec::default()
    };
    spec.on_chain.mode = OnChainMode::Never;
    spec
}

fn names(set: &WorkerSet) -> BTreeSet<String> {
    set.workers.iter().map(|w| w.name.clone()).collect()
}

fn agents(list: &[autoresearch_coordinator::discovery::Rejected]) -> BTreeSet<String> {
    list.iter().map(|r| r.agent.clone()).collect()
}

#[tokio::test]
async fn index_finds_every_variant_and_no_decoy() {
    // Six API requests per second at most (the client paces itself by the headers that say
    // so), and every fourth request a 500.
    let server = ScanServer::start(&[
        "--fail-every",
        "4",
        "--rate-limit",
        "6",
        "--rate-window-ms",
        "1000",
    ]);
    let discovery = Discovery::new(settings(&server));
    let set = discovery
        .workers(&spec(&server, &["127.0.0.1/32"]))
        .await
        .expect("discovery succeeds");

    let expected: BTreeSet<String> = REAL.iter().map(|s| s.to_string()).collect();
    assert_eq!(names(&set), expected, "workers: {:#?}", set.workers);

    assert_documents_read(&set, &server.origin());
    assert_decoys_kept_out(&set);

    let stats = server.stats().await;
    assert!(stats["served500"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["list"].as_u64().unwrap() > 3, "paged: {stats}");
    assert!(
        stats["userAgents"].as_array().unwrap().iter().any(|ua| ua
            .as_str()
            .unwrap()
            .starts_with("autoresearch-coordinator/")),
        "{stats}"
    );
}

/// The fields of each document variant, as the index and the documents give them.
fn assert_documents_read(set: &WorkerSet, origin: &str) {
    let by_name = |n: &str| set.workers.iter().find(|w| w.name == n).unwrap();
    let alpha = by_name("Alpha");
    assert_eq!((alpha.agent_id, alpha.chain_id), (Some(1), Some(84532)));
    assert_eq!(alpha.best_val_bpb, Some(0.9712));
    assert_eq!(alpha.total_experiments, Some(12));
    assert_eq!(alpha.gpu.as_deref(), Some("A100-80GB"));
    assert!(alpha.x402);
    assert_eq!(alpha.source, FoundIn::Index);
    assert_eq!(alpha.endpoint, format!("{origin}/services/alpha"));
    // `/experiment` stripped: the coordinator appends it.
    assert_eq!(by_name("Beta").endpoint, format!("{origin}/services/beta"));
    assert_eq!(by_name("Beta").best_val_bpb, Some(0.965));
    assert_eq!(by_name("Gamma").best_val_bpb, Some(0.9801));
    assert_eq!(by_name("Epsilon").best_val_bpb, None);
    assert!(by_name("Eta").x402, "x402_supported from the detail record");
}

/// Decoys: refused by the policy, or not workers.
fn assert_decoys_kept_out(set: &WorkerSet) {
    assert!(
        agents(&set.refused).is_superset(
            &["84532:22", "84532:23", "84532:24", "84532:25", "84532:27"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        ),
        "refused: {:#?}",
        set.refused
    );
    assert!(
        agents(&set.skipped).is_superset(
            &["84532:20", "84532:21", "84532:26"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        ),
        "skipped: {:#?}",
        set.skipped
    );
}

#[tokio::test]
async fn loopback_workers_are_refused_without_an_allowlist() {
    let server = ScanServer::start(&["--fail-every", "0"]);
    let discovery = Discovery::new(settings(&server));
    let set = discovery.workers(&spec(&server, &[])).await.unwrap();
    assert!(set.workers.is_empty(), "{:#?}", set.workers);
    let alpha = set.refused.iter().find(|r| r.agent == "84532:1").unwrap();
    assert!(
        alpha.reason.contains("--allow-private 127.0.0.1/32"),
        "{alpha:?}"
    );
    // The hosted document itself was not fetched: its URI is on loopback too.
    let gamma = set.refused.iter().find(|r| r.agent == "84532:3").unwrap();
    assert!(gamma.target.ends_with("/docs/gamma.json"), "{gamma:?}");
    assert_eq!(server.stats().await["docs"], 0);

    // Allowing all of 127.0.0.0/8 still refuses [::1], 0.0.0.0 and cluster names.
    let set = discovery
        .workers(&spec(&server, &["127.0.0.0/8"]))
        .await
        .unwrap();
    let refused = agents(&set.refused);
    for decoy in ["84532:22", "84532:23", "84532:24", "84532:27"] {
        assert!(refused.contains(decoy), "{decoy} in {refused:?}");
    }
    assert!(
        names(&set).contains("Other Loopback"),
        "127.0.0.2 is inside 127.0.0.0/8"
    );
}

#[tokio::test]
async fn one_index_scan_serves_many_campaigns() {
    let server = ScanServer::start(&["--fail-every", "0"]);
    let discovery = Discovery::new(settings(&server));
    let base = spec(&server, &["127.0.0.1/32"]);
    let first = discovery.workers(&base).await.unwrap();
    let after_first = server.stats().await;

    let campaigns: Vec<_> = (0..100)
        .map(|i| {
            let mut s = base.clone();
            s.prefer = vec![format!("{}/services/gamma", server.origin())];
            if i % 2 == 0 {
                s.exclude = vec!["84532:1".into()];
            }
            s.workers = vec![StaticWorker {
                endpoint: format!("http://10.0.0.{}:8080/services/mine", i % 5),
                name: Some(format!("static-{i}")),
                agent_id: None,
            }];
            let d = discovery.clone();
            tokio::spawn(async move { (i, d.workers(&s).await.unwrap()) })
        })
        .collect();
    for c in campaigns {
        let (i, set) = c.await.unwrap();
        assert_eq!(set.workers[0].name, "Gamma", "preferred first");
        assert!(set.workers[0].preferred);
        assert_eq!(
            set.workers[1].source,
            FoundIn::Static,
            "static workers are not filtered"
        );
        assert_eq!(
            names(&set).contains("Alpha"),
            i % 2 == 1,
            "exclude by agent id"
        );
        assert_eq!(
            set.workers.len(),
            first.workers.len() + 1 - usize::from(i % 2 == 0)
        );
    }
    // A campaign with another allowlist resolves on its own but shares the index scan.
    let other = discovery
        .workers(&spec(&server, &["127.0.0.1/32", "10.42.0.0/16"]))
        .await
        .unwrap();
    assert_eq!(names(&other), names(&first));
    let after_all = server.stats().await;
    assert_eq!(
        after_all["list"], after_first["list"],
        "no second index scan"
    );
    assert_eq!(after_all["detail"], after_first["detail"]);
}

fn cli(server: &ScanServer, args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autoresearch-coordinator"))
        .args(args)
        .env("SCAN_API_URL", server.api_url())
        .env("IPFS_GATEWAY", server.origin())
        .env("SCAN_RATE_LIMIT", "6000")
        .env("DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the CLI")
}

/// `command --json` on loopback workers, which must succeed.
fn cli_json(server: &ScanServer, command: &str, data_dir: &std::path::Path) -> serde_json::Value {
    let args = [command, "--on-chain", "never", "--json"];
    let out = cli(
        server,
        &[&args[..], &["--allow-private", "127.0.0.1/32"]].concat(),
        data_dir,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn cli_discover_and_leaderboard() {
    let server = ScanServer::start(&["--fail-every", "5"]);
    let dir = tempfile::tempdir().unwrap();
    discover_lists_refuses_and_tabulates(&server, dir.path());
    write_local_results(dir.path());
    leaderboard_ranks_by_published_bpb(&server, dir.path());

    let out = cli(
        &server,
        &["discover", "--allow-private", "10.0.0.0/33"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --allow-private"));
}

/// `discover`: every real worker as JSON; without the allowlist an error that names it; a table.
fn discover_lists_refuses_and_tabulates(server: &ScanServer, dir: &std::path::Path) {
    let json = cli_json(server, "discover", dir);
    assert_eq!(json["workers"].as_array().unwrap().len(), REAL.len());

    let out = cli(server, &["discover", "--on-chain", "never"], dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused by the address policy") && stderr.contains("--allow-private"),
        "{stderr}"
    );

    let table = cli(
        server,
        &[
            "discover",
            "--on-chain",
            "never",
            "--limit",
            "3",
            "--allow-private",
            "127.0.0.1/32",
        ],
        dir,
    );
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("AGENT") && text.contains("BEST VAL_BPB") && text.contains("8004scan"),
        "{text}"
    );
}

/// Three local results: exp-b (0.982) is the best, exp-c failed.
fn write_local_results(dir: &std::path::Path) {
    let results = dir.join("autoresearch/results.jsonl");
    std::fs::create_dir_all(results.parent().unwrap()).unwrap();
    std::fs::write(
        &results,
        concat!(
            r#"{"experiment_id":"exp-a","train_hash":"sha256:00","val_bpb":0.991,"worker_endpoint":"http://w","worker_agent_id":1,"timestamp":"2026-03-12T10:30:00Z","payment_tx":null}"#, "\n",
            r#"{"experiment_id":"exp-b","train_hash":"sha256:00","val_bpb":0.982,"worker_endpoint":"http://w","worker_agent_id":1,"timestamp":"2026-03-12T10:31:00Z","payment_tx":"0x1"}"#, "\n",
            r#"{"experiment_id":"exp-c","train_hash":"sha256:00","val_bpb":null,"worker_endpoint":"http://w","worker_agent_id":1,"timestamp":"2026-03-12T10:32:00Z","payment_tx":null}"#, "\n",
        ),
    )
    .unwrap();
}

/// `leaderboard`: ranked by the val_bpb each worker publishes, with the best local result.
fn leaderboard_ranks_by_published_bpb(server: &ScanServer, dir: &std::path::Path) {
    let json = cli_json(server, "leaderboard", dir);
    let ranked: Vec<&str> = json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(ranked[..3], ["Beta", "Alpha", "Delta"]);
    assert_eq!(*ranked.last().unwrap(), "Eta", "no published val_bpb: last");
    assert_eq!(json["local_best"]["experiment_id"], "exp-b");

    let out = cli(
        server,
        &[
            "leaderboard",
            "--on-chain",
            "never",
            "--limit",
            "2",
            "--allow-private",
            "127.0.0.1/32",
        ],
        dir,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("best local result: val_bpb 0.982000, experiment exp-b"),
        "{text}"
    );
    // --limit 2 shows two rows, ranked over the whole index.
    let rows: Vec<&str> = text.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].contains("Beta") && rows[1].contains("Alpha"),
        "{text}"
    );
}

#[tokio::test]
async fn redirects_and_oversized_documents_are_refused() {
    use autoresearch_coordinator::discovery::AddressPolicy;
    use autoresearch_coordinator::discovery::fetch::{DocumentFetcher, FetchError};

    let server = ScanServer::start(&["--fail-every", "0"]);
    let policy = AddressPolicy::with_allowlist(&["127.0.0.1/32"]).unwrap();
    let fetcher = DocumentFetcher::new(policy, Url::parse(&server.origin()).unwrap()).unwrap();
    let origin = server.origin();

    let doc = fetcher
        .fetch(&format!("{origin}/docs/gamma.json"))
        .await
        .unwrap();
    assert_eq!(doc["name"], "Gamma");

    // 127.0.0.1 is allowed, the [::1] it redirects to is not.
    let err = fetcher
        .fetch(&format!("{origin}/docs/redirect.json"))
        .await
        .unwrap_err();
    assert!(
        err.refusal().is_some() && err.to_string().contains("loopback address ::1"),
        "{err}"
    );

    let err = fetcher
        .fetch(&format!("{origin}/docs/huge.json"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Body { .. }), "{err}");

    // A name is resolved by the pinned resolver: `localhost` is a local name, refused although
    // it resolves to the allowed 127.0.0.1.
    let port = Url::parse(&origin).unwrap().port().unwrap();
    let err = fetcher
        .fetch(&format!("http://localhost:{port}/docs/gamma.json"))
        .await
        .unwrap_err();
    assert!(err.refusal().is_some(), "{err}");
}

#[tokio::test]
async fn a_minute_spent_by_another_client_is_waited_out_as_retry_after_says() {
    // Six anonymous requests per 2 s window (180 a minute in the headers).
    let server = ScanServer::start(&[
        "--fail-every",
        "0",
        "--rate-limit",
        "6",
        "--rate-window-ms",
        "2000",
    ]);
    // Another process sharing the anonymous quota (a controller, say) spends the window.
    let other = discovery_support::client();
    for _ in 0..6 {
        let r = other
            .get(format!("{}/agents?limit=1", server.api_url()))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let discovery = Discovery::new(settings(&server));
    let start = std::time::Instant::now();
    let set = discovery
        .workers(&spec(&server, &["127.0.0.1/32"]))
        .await
        .expect("discovery succeeds after waiting");
    assert_eq!(set.workers.len(), REAL.len());
    let stats = server.stats().await;
    assert!(stats["refusedMinute"].as_u64().unwrap() >= 1, "{stats}");
    // Retry-After is a whole second at least; the client waited it out rather than hammering.
    assert!(
        stats["refusedMinute"].as_u64().unwrap() <= 2,
        "one refusal per window at most: {stats}"
    );
    assert!(start.elapsed() >= Duration::from_secs(1));
}
