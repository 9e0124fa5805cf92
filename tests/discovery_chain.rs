//! On-chain discovery on anvil: a registry with the real ERC-8004 events, agents registered
//! with data:, http and ipfs URIs, one URI updated later, and an RPC path that refuses wide
//! log ranges.

mod discovery_support;

use std::collections::BTreeMap;
use std::time::Duration;

use autoresearch_coordinator::crd::{DiscoverySpec, OnChainMode};
use autoresearch_coordinator::discovery::chain::{ChainConfig, ChainIndex, RegistryError};
use autoresearch_coordinator::discovery::scan::ScanSettings;
use autoresearch_coordinator::discovery::{Discovery, DiscoverySettings, FoundIn};
use discovery_support::{
    Deployed, Proc, ScanServer, anvil, deploy_registry, get_json, range_proxy,
};
use url::Url;

struct Chain {
    _anvil: Proc,
    proxy: Proc,
    scan: ScanServer,
    deployed: Deployed,
}

impl Chain {
    fn start() -> Self {
        let scan = ScanServer::start(&["--fail-every", "0"]);
        let anvil = anvil();
        let deployed = deploy_registry(&anvil.value, &scan.origin());
        // Ranges over 50 blocks are refused; the registrations span about 380 blocks.
        let proxy = range_proxy(&anvil.value, 50);
        Self {
            _anvil: anvil,
            proxy,
            scan,
            deployed,
        }
    }

    fn config(&self) -> ChainConfig {
        ChainConfig {
            rpc_url: self.proxy.value.clone(),
            chain_id: self.deployed.chain_id,
            registry: self.deployed.address.parse().unwrap(),
            start_block: self.deployed.start_block,
            max_block_range: 1000,
        }
    }

    fn discovery(&self) -> Discovery {
        Discovery::new(DiscoverySettings {
            scan: ScanSettings {
                requests_per_minute: 6000,
                backoff_base: Duration::from_millis(10),
                max_attempts: 2,
                ..ScanSettings::default()
            },
            ipfs_gateway: Url::parse(&self.scan.origin()).unwrap(),
            chain: Some(self.config()),
            ..DiscoverySettings::default()
        })
    }

    fn spec(&self, scan_api_url: &str, mode: OnChainMode) -> DiscoverySpec {
        let mut spec = DiscoverySpec {
            scan_api_url: scan_api_url.into(),
            allow_private: vec!["127.0.0.1/32".into()],
            ..DiscoverySpec::default()
        };
        spec.on_chain.mode = mode;
        spec.on_chain.erpc_url = String::new();
        spec
    }
}

#[tokio::test]
async fn chain_discovery_finds_exactly_the_current_set() {
    let chain = Chain::start();
    let discovery = chain.discovery();
    let set = discovery
        .workers(&chain.spec("", OnChainMode::Fallback))
        .await
        .expect("chain discovery");
    let found: BTreeMap<u64, String> = set
        .workers
        .iter()
        .map(|w| (w.agent_id.unwrap(), w.endpoint.clone()))
        .collect();
    assert_eq!(
        found, chain.deployed.workers,
        "refused: {:#?}\nskipped: {:#?}",
        set.refused, set.skipped
    );
    assert!(
        set.workers
            .iter()
            .all(|w| w.source == FoundIn::Chain && w.chain_id == Some(84532))
    );
    let b = set.workers.iter().find(|w| w.agent_id == Some(1)).unwrap();
    assert_eq!(
        b.best_val_bpb,
        Some(0.965),
        "the updated document, not the first one"
    );

    let refused: Vec<_> = set.refused.iter().map(|r| r.agent.as_str()).collect();
    assert!(
        refused.contains(&"84532:5") && refused.contains(&"84532:7"),
        "{refused:?}"
    );

    let stats = get_json(&format!("{}/__stats", chain.proxy.value)).await;
    assert!(
        stats["refused"].as_u64().unwrap() > 0,
        "ranges were split: {stats}"
    );
}

#[tokio::test]
async fn log_scan_is_incremental_and_reads_current_uris() {
    let chain = Chain::start();
    let index = ChainIndex::new(chain.config()).unwrap();
    let agents = index.agents().await.unwrap();
    assert_eq!(
        agents.iter().map(|a| a.agent_id).collect::<Vec<_>>(),
        (0..=8).collect::<Vec<_>>()
    );
    let b = &agents[1].uri;
    assert!(
        b.starts_with("data:application/json;base64,"),
        "tokenURI after setAgentURI: {b}"
    );
    assert_eq!(agents[8].uri, "", "registered without a URI");
    let first = index.log_requests();
    // Every range of at most 50 blocks, after the refusals.
    let blocks = chain.deployed.head - chain.deployed.start_block + 1;
    assert!(
        first > blocks / 50,
        "{first} getLogs calls for {blocks} blocks"
    );

    index.agents().await.unwrap();
    assert!(
        index.log_requests() - first <= 1,
        "second refresh reads only new blocks"
    );

    assert_eq!(
        index.token_uri(99).await.unwrap(),
        None,
        "unknown agent reverts"
    );
}

#[tokio::test]
async fn index_failure_falls_back_to_the_chain() {
    let chain = Chain::start();
    let discovery = chain.discovery();
    // Nothing listens on port 1: the index fails, the chain answers.
    let set = discovery
        .workers(&chain.spec("http://127.0.0.1:1/api/v1/public", OnChainMode::Fallback))
        .await
        .unwrap();
    assert_eq!(set.workers.len(), chain.deployed.workers.len());
    assert!(
        set.warnings.iter().any(|w| w.contains("8004scan")),
        "{:?}",
        set.warnings
    );

    let err = discovery
        .workers(&chain.spec("http://127.0.0.1:1/api/v1/public", OnChainMode::Never))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("8004scan"), "{err}");
}

#[tokio::test]
async fn confirm_and_always_modes() {
    let chain = Chain::start();
    let discovery = chain.discovery();
    let api = chain.scan.api_url();

    // The index says agent 6 is Zeta at /services/zeta; so does the chain. The index's other
    // agents have different documents on chain, so they are not confirmed.
    let set = discovery
        .workers(&chain.spec(&api, OnChainMode::Confirm))
        .await
        .unwrap();
    let names: Vec<_> = set
        .workers
        .iter()
        .map(|w| (w.name.as_str(), w.source))
        .collect();
    assert_eq!(
        names,
        vec![("Zeta", FoundIn::IndexConfirmed)],
        "skipped: {:#?}",
        set.skipped
    );
    assert!(
        set.skipped
            .iter()
            .any(|s| s.agent == "84532:1" && s.reason.contains("not confirmed"))
    );

    // Always: both sources, merged; the agent both agree on appears once.
    let set = discovery
        .workers(&chain.spec(&api, OnChainMode::Always))
        .await
        .unwrap();
    let zeta: Vec<_> = set.workers.iter().filter(|w| w.name == "Zeta").collect();
    assert_eq!(zeta.len(), 1);
    assert_eq!(zeta[0].source, FoundIn::IndexConfirmed);
    assert!(
        set.workers
            .iter()
            .any(|w| w.name == "Chain A" && w.source == FoundIn::Chain)
    );
    assert!(
        set.workers
            .iter()
            .any(|w| w.name == "Alpha" && w.source == FoundIn::Index)
    );
    let endpoints: std::collections::BTreeSet<_> =
        set.workers.iter().map(|w| &w.endpoint).collect();
    assert_eq!(endpoints.len(), set.workers.len(), "no duplicate endpoints");
}

#[tokio::test]
async fn wrong_chain_is_named() {
    let chain = Chain::start();
    let mut cfg = chain.config();
    cfg.chain_id = 8453;
    let err = ChainIndex::new(cfg).unwrap().agents().await.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::WrongChain {
                got: 84532,
                want: 8453,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("ERPC_NETWORK"));
}

#[tokio::test]
async fn documents_written_by_agent0_sdk_are_read() {
    let chain = Chain::start();
    let install = std::process::Command::new("bash")
        .arg("registry/agent0/install.sh")
        .current_dir(discovery_support::testbed())
        .output()
        .expect("run install.sh");
    assert!(
        install.status.success(),
        "installing agent0-sdk failed: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    let out = std::process::Command::new("node")
        .args([
            "registry/agent0/register.mjs",
            "--rpc",
            &chain.proxy.value,
            "--registry",
            &chain.deployed.address,
            "--origin",
            &chain.scan.origin(),
        ])
        .current_dir(discovery_support::testbed())
        .output()
        .expect("run register.mjs");
    assert!(
        out.status.success(),
        "agent0-sdk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("AGENT0_REGISTERED="))
        .expect("register.mjs prints AGENT0_REGISTERED=");
    let registered: serde_json::Value = serde_json::from_str(line).unwrap();
    let agent_id = registered["agentId"].as_u64().unwrap();

    let set = chain
        .discovery()
        .workers(&chain.spec("", OnChainMode::Always))
        .await
        .unwrap();
    let w = set
        .workers
        .iter()
        .find(|w| w.agent_id == Some(agent_id))
        .unwrap_or_else(|| panic!("agent0 worker not found; skipped: {:#?}", set.skipped));
    assert_eq!(w.name, "Agent0 Worker");
    assert_eq!(w.endpoint, registered["endpoint"].as_str().unwrap());
    assert!(w.x402);
    assert_eq!(w.best_val_bpb, Some(0.969));
    assert_eq!(w.gpu.as_deref(), Some("L4"));
    assert_eq!(w.total_experiments, Some(7));
    assert_eq!(set.workers.len(), chain.deployed.workers.len() + 1);
}

#[tokio::test]
async fn without_a_key_the_day_quota_is_kept_and_the_chain_takes_over() {
    let chain = Chain::start();
    // An index with a day quota of 20 anonymous requests (a reserve of 2 kept back), fast
    // enough per minute not to slow the test.
    let index = ScanServer::start(&[
        "--fail-every",
        "0",
        "--rate-limit",
        "600",
        "--rate-window-ms",
        "60000",
        "--day-limit",
        "20",
    ]);
    let mut settings = chain.discovery().settings().clone();
    // Over the quota the stand-in asks to come back tomorrow: a client that kept asking would
    // be refused at once rather than wait.
    settings.scan.retry_after_max = Duration::from_millis(50);
    settings.scan.max_attempts = 2;
    let discovery = Discovery::new(settings);
    let spec = chain.spec(&index.api_url(), OnChainMode::Fallback);

    // The first refresh costs 12 requests (3 lists, 9 details); later ones 3 lists, details
    // being cached by `updated_at`. Eight refreshes would need 33.
    let mut sources = Vec::new();
    for _ in 0..8 {
        let set = discovery.refresh_allowing(&spec, &[]).await.unwrap();
        sources.push((set.workers[0].source, set.index_quota_low()));
        if set.index_quota_low() && set.workers[0].source == FoundIn::Chain {
            let found: BTreeMap<u64, String> = set
                .workers
                .iter()
                .map(|w| (w.agent_id.unwrap(), w.endpoint.clone()))
                .collect();
            assert_eq!(found, chain.deployed.workers);
            assert!(
                set.warnings.iter().any(|w| w.contains("day quota")),
                "{:?}",
                set.warnings
            );
        }
    }
    assert_eq!(sources[0], (FoundIn::Index, false));
    assert_eq!(
        sources.last(),
        Some(&(FoundIn::Chain, true)),
        "the chain took over: {sources:?}"
    );
    let stats = get_json(&format!("{}/__stats", index.origin())).await;
    assert_eq!(stats["refusedDay"], 0, "never over the quota: {stats}");
    assert_eq!(stats["anonymous"], 18, "the reserve is kept: {stats}");
}
