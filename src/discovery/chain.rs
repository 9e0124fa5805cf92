//! On-chain discovery: the ERC-8004 Identity Registry read through eRPC (or any JSON-RPC URL).
//!
//! `Registered` and `URIUpdated` logs give the set of agents and when their URI changed;
//! `tokenURI` gives each agent's current URI. The log scan is incremental (a [`ChainIndex`]
//! remembers where it stopped), and ranges are halved when a provider refuses them.

use crate::http::{RpcFailure, rpc_call};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::{SolCall, SolEvent};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use url::Url;

use super::http::{USER_AGENT, ensure_crypto_provider};

alloy::sol! {
    /// ERC-8004 Identity Registry events and the one view we call.
    event Registered(uint256 indexed agentId, string agentURI, address indexed owner);
    event URIUpdated(uint256 indexed agentId, string newURI, address indexed updatedBy);
    function tokenURI(uint256 tokenId) external view returns (string);
}

/// Identity Registry on Ethereum and Base mainnets.
pub const MAINNET_REGISTRY: Address =
    alloy::primitives::address!("0x8004A169FB4a3325136EB29fA0ceB6D2e539a432");
/// Identity Registry on Sepolia and Base Sepolia.
pub const TESTNET_REGISTRY: Address =
    alloy::primitives::address!("0x8004A818BFB912233c491871b3d84c89A494BD9e");

/// Blocks re-read on every refresh, so a shallow reorg cannot leave a stale URI behind.
const REORG_OVERLAP: u64 = 16;
/// A JSON-RPC answer larger than this is refused.
const MAX_RPC_BYTES: usize = 32 * 1024 * 1024;
/// tokenURI calls in flight at once.
const CALL_CONCURRENCY: usize = 8;

/// Where the registry is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChainConfig {
    /// JSON-RPC URL (eRPC).
    pub rpc_url: String,
    /// Expected chain id (checked against `eth_chainId`).
    pub chain_id: u64,
    /// Identity Registry address.
    pub registry: Address,
    /// First block worth scanning (the registry's deployment).
    pub start_block: u64,
    /// Largest `eth_getLogs` range tried; halved on provider refusals.
    pub max_block_range: u64,
}

impl ChainConfig {
    /// The registry of a named network: `base`, `base-sepolia` (or their chain ids / CAIP-2 names).
    pub fn for_network(network: &str, rpc_url: &str) -> Result<Self, RegistryError> {
        let (chain_id, registry, start_block) = match network.trim().to_ascii_lowercase().as_str() {
            "base" | "base-mainnet" | "8453" | "eip155:8453" => {
                (8453, MAINNET_REGISTRY, 41_663_799)
            }
            "base-sepolia" | "84532" | "eip155:84532" => (84532, TESTNET_REGISTRY, 37_174_254),
            other => {
                return Err(RegistryError::Config(format!(
                    "ERPC_NETWORK {other:?} is not known; use base or base-sepolia"
                )));
            }
        };
        Ok(Self {
            rpc_url: rpc_url.trim().to_string(),
            chain_id,
            registry,
            start_block,
            max_block_range: 10_000,
        })
    }
}

/// Why the identity registry could not be read on chain.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Bad configuration.
    #[error("{0}")]
    Config(String),
    /// The RPC endpoint answered with an error.
    #[error("{method} via {url}: provider error {code}: {message}")]
    Provider {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// JSON-RPC error code.
        code: i64,
        /// Message.
        message: String,
    },
    /// The RPC endpoint could not be reached or answered nonsense.
    #[error("{method} via {url}: {why}")]
    Transport {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// What went wrong.
        why: String,
        /// A timeout (treated like a range refusal by the log scan).
        timeout: bool,
    },
    /// Connected to the wrong chain.
    #[error(
        "{url} serves chain {got}, but discovery expects chain {want}; check ERPC_URL and ERPC_NETWORK"
    )]
    WrongChain {
        /// URL.
        url: String,
        /// Chain id served.
        got: u64,
        /// Chain id expected.
        want: u64,
    },
}

impl RegistryError {
    /// Whether a smaller `eth_getLogs` range could succeed.
    fn is_range_refusal(&self) -> bool {
        match self {
            Self::Provider { code, message, .. } => {
                let m = message.to_ascii_lowercase();
                matches!(code, -32005 | -32602 | -32603)
                    || ["range", "limit", "too many", "exceed", "too large"]
                        .iter()
                        .any(|w| m.contains(w))
            }
            Self::Transport { timeout, .. } => *timeout,
            _ => false,
        }
    }

    fn is_revert(&self) -> bool {
        matches!(self, Self::Provider { code, message, .. }
            if *code == 3 || message.to_ascii_lowercase().contains("revert"))
    }
}

/// An agent on chain and its current registration URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainAgent {
    /// Token id.
    pub agent_id: u64,
    /// Current URI (`tokenURI`; the latest event's URI if the call failed).
    pub uri: String,
}

#[derive(Clone, Debug, Default)]
struct AgentState {
    event_uri: String,
    /// (block, log index) of the latest event seen for the agent.
    position: (u64, u64),
    /// tokenURI as read, and the event position it was read after.
    token_uri: Option<(String, (u64, u64))>,
    burned: bool,
}

#[derive(Debug, Default)]
struct ScanState {
    next_block: Option<u64>,
    agents: BTreeMap<u64, AgentState>,
    chain_checked: bool,
}

/// Reads and remembers one registry. Share one per (RPC URL, registry): refreshes only read
/// the blocks since the last one.
#[derive(Debug)]
pub struct ChainIndex {
    cfg: ChainConfig,
    url: Url,
    http: reqwest::Client,
    ids: AtomicU64,
    state: Mutex<ScanState>,
    log_requests: AtomicU64,
}

impl ChainIndex {
    /// An index of the registry described by `cfg`.
    pub fn new(cfg: ChainConfig) -> Result<Self, RegistryError> {
        ensure_crypto_provider();
        let url = Url::parse(&cfg.rpc_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                RegistryError::Config(format!("ERPC_URL {:?} is not an http(s) URL", cfg.rpc_url))
            })?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| RegistryError::Config(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            cfg,
            url,
            http,
            ids: AtomicU64::new(1),
            state: Mutex::default(),
            log_requests: AtomicU64::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ChainConfig {
        &self.cfg
    }

    /// `eth_getLogs` calls made so far (for tests of range splitting).
    pub fn log_requests(&self) -> u64 {
        self.log_requests.load(Ordering::Relaxed)
    }

    /// Every live agent and its current URI, reading only the blocks since the last call.
    pub async fn agents(&self) -> Result<Vec<ChainAgent>, RegistryError> {
        // One refresh at a time per registry; callers queue and then see fresh state.
        let mut state = self.state.lock().await;
        if !state.chain_checked {
            let got = self.chain_id().await?;
            if got != self.cfg.chain_id {
                return Err(RegistryError::WrongChain {
                    url: self.cfg.rpc_url.clone(),
                    got,
                    want: self.cfg.chain_id,
                });
            }
            state.chain_checked = true;
        }
        let head = quantity(
            &self.rpc("eth_blockNumber", json!([])).await?,
            "eth_blockNumber",
        )?;
        let from = state
            .next_block
            .map(|n| n.saturating_sub(REORG_OVERLAP).max(self.cfg.start_block))
            .unwrap_or(self.cfg.start_block);
        if from <= head {
            for (agent_id, uri, position) in self.scan_logs(from, head).await? {
                let agent = state.agents.entry(agent_id).or_default();
                if position >= agent.position {
                    agent.event_uri = uri;
                    agent.position = position;
                }
            }
        }
        state.next_block = Some(head + 1);
        self.refresh_token_uris(&mut state).await;
        Ok(state
            .agents
            .iter()
            .filter(|(_, a)| !a.burned)
            .map(|(id, a)| ChainAgent {
                agent_id: *id,
                uri: a
                    .token_uri
                    .as_ref()
                    .map(|(uri, _)| uri.clone())
                    .unwrap_or_else(|| a.event_uri.clone()),
            })
            .collect())
    }

    /// tokenURI for agents whose latest event is newer than the last read.
    async fn refresh_token_uris(&self, state: &mut ScanState) {
        let stale: Vec<u64> = state
            .agents
            .iter()
            .filter(|(_, a)| a.token_uri.as_ref().map(|(_, p)| *p) != Some(a.position))
            .map(|(id, _)| *id)
            .collect();
        let results: Vec<(u64, Result<Option<String>, RegistryError>)> =
            futures::stream::iter(stale)
                .map(|id| async move { (id, self.token_uri(id).await) })
                .buffer_unordered(CALL_CONCURRENCY)
                .collect()
                .await;
        for (id, result) in results {
            let agent = state
                .agents
                .get_mut(&id)
                .expect("stale ids come from the map");
            match result {
                Ok(Some(uri)) => {
                    agent.token_uri = Some((uri, agent.position));
                    agent.burned = false;
                }
                Ok(None) => agent.burned = true,
                // Keep the event's URI and try again next refresh.
                Err(e) => {
                    tracing::warn!(agent = id, error = %e, "tokenURI failed; using the URI from the latest event")
                }
            }
        }
    }

    /// `tokenURI(agentId)`; `None` when the call reverts (no such token, or burned).
    pub async fn token_uri(&self, agent_id: u64) -> Result<Option<String>, RegistryError> {
        let data = Bytes::from(
            tokenURICall {
                tokenId: U256::from(agent_id),
            }
            .abi_encode(),
        );
        let call = json!([{"to": self.cfg.registry, "data": data}, "latest"]);
        match self.rpc("eth_call", call).await {
            Ok(Value::String(hex)) => {
                let bytes = alloy::hex::decode(&hex).map_err(|e| self.shape("eth_call", e))?;
                if bytes.is_empty() {
                    // No contract at the address, or a call that returned nothing.
                    return Ok(None);
                }
                tokenURICall::abi_decode_returns(&bytes)
                    .map(Some)
                    .map_err(|e| self.shape("eth_call", e))
            }
            Ok(other) => Err(self.shape("eth_call", format!("result is {other}"))),
            Err(e) if e.is_revert() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Registered / URIUpdated logs in `[from, to]`, split into ranges the provider accepts.
    async fn scan_logs(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String, (u64, u64))>, RegistryError> {
        let mut out = Vec::new();
        let mut span = self.cfg.max_block_range.max(1);
        let mut start = from;
        while start <= to {
            let end = start.saturating_add(span - 1).min(to);
            match self.get_logs(start, end).await {
                Ok(logs) => {
                    out.extend(logs);
                    start = end + 1;
                }
                Err(e) if e.is_range_refusal() && end > start => {
                    // Halve and stay smaller: a provider that refused once will refuse again.
                    // Half of the refused range's end - start + 1 blocks.
                    span = (end - start).div_ceil(2).max(1);
                    tracing::debug!(from = start, span, error = %e, "eth_getLogs range refused; halving");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|(_, _, pos)| *pos);
        Ok(out)
    }

    async fn get_logs(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, String, (u64, u64))>, RegistryError> {
        self.log_requests.fetch_add(1, Ordering::Relaxed);
        let filter = json!([{
            "address": self.cfg.registry,
            "fromBlock": format!("{from:#x}"),
            "toBlock": format!("{to:#x}"),
            "topics": [[Registered::SIGNATURE_HASH, URIUpdated::SIGNATURE_HASH]],
        }]);
        let result = self.rpc("eth_getLogs", filter).await?;
        let logs = result
            .as_array()
            .ok_or_else(|| self.shape("eth_getLogs", "result is not a list"))?;
        Ok(logs.iter().filter_map(|log| self.decode_log(log)).collect())
    }

    /// One log as (agent id, URI, position); logs that do not decode are skipped with a warning.
    fn decode_log(&self, log: &Value) -> Option<(u64, String, (u64, u64))> {
        if log.get("removed").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let topics: Vec<B256> = serde_json::from_value(log.get("topics")?.clone()).ok()?;
        let data: Bytes = serde_json::from_value(log.get("data")?.clone()).ok()?;
        let position = (
            quantity(log.get("blockNumber")?, "blockNumber").ok()?,
            quantity(log.get("logIndex")?, "logIndex").ok()?,
        );
        let decoded = match topics.first() {
            Some(t) if *t == Registered::SIGNATURE_HASH => {
                Registered::decode_raw_log(topics.iter().copied(), &data)
                    .map(|e| (e.agentId, e.agentURI))
            }
            Some(t) if *t == URIUpdated::SIGNATURE_HASH => {
                URIUpdated::decode_raw_log(topics.iter().copied(), &data)
                    .map(|e| (e.agentId, e.newURI))
            }
            _ => return None,
        };
        match decoded {
            Ok((id, uri)) => match u64::try_from(id) {
                Ok(id) => Some((id, uri, position)),
                Err(_) => {
                    tracing::warn!(agent = %id, "agent id does not fit in 64 bits; skipped");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "undecodable registry log skipped");
                None
            }
        }
    }

    async fn chain_id(&self) -> Result<u64, RegistryError> {
        quantity(&self.rpc("eth_chainId", json!([])).await?, "eth_chainId")
    }

    /// One JSON-RPC call (see [`crate::http::rpc_call`]).
    async fn rpc(&self, method: &str, params: Value) -> Result<Value, RegistryError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        rpc_call(&self.http, &self.url, id, method, params, MAX_RPC_BYTES)
            .await
            .map_err(|failure| match failure {
                RpcFailure::Transport { why, timeout } => RegistryError::Transport {
                    method: method.to_string(),
                    url: self.cfg.rpc_url.clone(),
                    why,
                    timeout,
                },
                RpcFailure::Provider { code, message } => RegistryError::Provider {
                    method: method.to_string(),
                    url: self.cfg.rpc_url.clone(),
                    code,
                    message,
                },
            })
    }

    fn shape(&self, method: &str, why: impl std::fmt::Display) -> RegistryError {
        RegistryError::Transport {
            method: method.to_string(),
            url: self.cfg.rpc_url.clone(),
            why: why.to_string(),
            timeout: false,
        }
    }
}

/// A `0x`-hex quantity.
fn quantity(v: &Value, what: &str) -> Result<u64, RegistryError> {
    v.as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| RegistryError::Transport {
            method: what.to_string(),
            url: String::new(),
            why: format!("{v} is not a hex quantity"),
            timeout: false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_signatures_are_the_erc8004_ones() {
        assert_eq!(Registered::SIGNATURE, "Registered(uint256,string,address)");
        assert_eq!(URIUpdated::SIGNATURE, "URIUpdated(uint256,string,address)");
        assert_eq!(tokenURICall::SIGNATURE, "tokenURI(uint256)");
    }

    #[test]
    fn networks() {
        let c = ChainConfig::for_network("base-sepolia", "http://x").unwrap();
        assert_eq!(
            (c.chain_id, c.registry, c.start_block),
            (84532, TESTNET_REGISTRY, 37_174_254)
        );
        let c = ChainConfig::for_network("base", "http://x").unwrap();
        assert_eq!(
            (c.chain_id, c.registry, c.start_block),
            (8453, MAINNET_REGISTRY, 41_663_799)
        );
        assert!(ChainConfig::for_network("mainnet", "http://x").is_err());
    }

    #[test]
    fn range_refusals() {
        let e = |code, message: &str| RegistryError::Provider {
            method: "eth_getLogs".into(),
            url: String::new(),
            code,
            message: message.into(),
        };
        assert!(e(-32005, "query returned more than 10000 results").is_range_refusal());
        assert!(e(-32000, "block range too large").is_range_refusal());
        assert!(!e(-32000, "header not found").is_range_refusal());
        assert!(e(3, "execution reverted").is_revert());
    }
}
