//! The chain as the judge of money: reads of the USDC contract (ERC-3009 `authorizationState`,
//! `balanceOf`, `AuthorizationUsed` logs) and of the latest block's time, through the JSON-RPC
//! endpoint the campaign already uses (`ERPC_URL`). Reads are free; nothing here sends a
//! transaction.
//!
//! Why raw JSON-RPC over the crate's own HTTP client rather than an alloy provider: the crate's
//! alloy is built without an HTTP transport (it would bring a second reqwest and TLS stack);
//! alloy's `sol!` types do the ABI encoding and decoding, so only the envelope is written here.

pub mod audit;
pub mod verdict;
pub mod wallet;

use crate::http::RpcFailure;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy::primitives::{Address, B256, U256, hex};
use alloy::sol_types::{SolCall, SolEvent};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use url::Url;

use crate::crd::Network;
use crate::usdc::Usdc;

alloy::sol! {
    /// The parts of FiatToken (Circle's USDC) that settle or show a voucher.
    interface IUsdc {
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
        function balanceOf(address account) external view returns (uint256);
        event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    }
}

/// Largest JSON-RPC answer read (a log query over a long range can be large).
const MAX_RPC_BYTES: usize = 8 * 1024 * 1024;
/// Blocks a log query looks back at most: providers cap `eth_getLogs` ranges, and a voucher
/// lives far less than this many blocks (Base makes one every 2 s).
pub const MAX_LOG_RANGE: u64 = 50_000;

/// Why the chain could not be read. The caller keeps what it does not know undecided.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The RPC URL is unusable.
    #[error("ERPC_URL {0:?} is not an http(s) URL")]
    Config(String),
    /// No answer, or an answer that is not JSON-RPC.
    #[error("{method} at {url}: {why}")]
    Transport {
        /// JSON-RPC method.
        method: String,
        /// Endpoint.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// A JSON-RPC error object.
    #[error("{method} at {url}: error {code}: {message}")]
    Provider {
        /// JSON-RPC method.
        method: String,
        /// Endpoint.
        url: String,
        /// JSON-RPC error code.
        code: i64,
        /// Its message (truncated).
        message: String,
    },
    /// A result of the wrong shape.
    #[error("{method}: unexpected answer: {why}")]
    Answer {
        /// JSON-RPC method.
        method: String,
        /// What is wrong with it.
        why: String,
    },
    /// The endpoint serves another chain than the payment's network.
    #[error("{url} serves chain {got}, but the payments are on chain {want}; check ERPC_URL")]
    WrongChain {
        /// Endpoint.
        url: String,
        /// The network's chain id.
        want: u64,
        /// The endpoint's.
        got: u64,
    },
}

impl ChainError {
    /// The `ChainReadable` reason it gives: `WrongChain`, `Unreachable` (no answer) or
    /// `Unreadable` (an answer that is an error or not what was asked).
    pub fn reason(&self) -> &'static str {
        match self {
            ChainError::WrongChain { .. } => "WrongChain",
            ChainError::Transport { .. } => "Unreachable",
            ChainError::Config(_) | ChainError::Provider { .. } | ChainError::Answer { .. } => {
                "Unreadable"
            }
        }
    }
}

/// One settled authorization, as the chain's logs show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedAuthorization {
    /// The ERC-3009 nonce.
    pub nonce: B256,
    /// The transaction that used it.
    pub tx: B256,
    /// Its block.
    pub block: u64,
}

/// A read-only view of one chain's USDC.
#[derive(Debug)]
pub struct UsdcChain {
    url: Url,
    http: reqwest::Client,
    ids: AtomicU64,
    chain_id: OnceCell<u64>,
}

impl UsdcChain {
    /// A reader for the JSON-RPC endpoint at `url`.
    pub fn new(url: &str) -> Result<Self, ChainError> {
        let parsed = Url::parse(url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| ChainError::Config(url.to_string()))?;
        Ok(Self {
            url: parsed,
            http: crate::payment::http::client(Duration::from_secs(15)),
            ids: AtomicU64::new(1),
            chain_id: OnceCell::new(),
        })
    }

    /// The reader `ERPC_URL` names; `None` when it is not set (the chain is then not asked, and
    /// payments are judged by the gates' answers alone, as docs/money.md describes).
    pub fn from_env() -> Option<Result<Self, ChainError>> {
        let url = std::env::var("ERPC_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())?;
        Some(Self::new(&url))
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The endpoint's `eth_chainId` (asked until it answers once, then kept).
    pub async fn chain_id(&self) -> Result<u64, ChainError> {
        self.chain_id
            .get_or_try_init(|| async {
                let id = self.rpc("eth_chainId", json!([])).await?;
                quantity(&id, "eth_chainId")
            })
            .await
            .copied()
    }

    /// Fails unless the endpoint serves `network`'s chain (asked once).
    pub async fn check_network(&self, network: Network) -> Result<(), ChainError> {
        let got = self.chain_id().await?;
        let want = network.chain_id();
        if got != want {
            return Err(ChainError::WrongChain {
                url: self.url.to_string(),
                want,
                got,
            });
        }
        Ok(())
    }

    /// ERC-3009 `authorizationState(authorizer, nonce)`: whether the nonce was used (or
    /// cancelled). Once true it stays true.
    pub async fn authorization_used(
        &self,
        asset: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<bool, ChainError> {
        self.authorization_used_at(asset, authorizer, nonce, None)
            .await
    }

    /// [`UsdcChain::authorization_used`] as of block `at` (`None`: the latest). Asking at the
    /// block whose time was read means a lagging upstream behind a load balancer errors instead
    /// of answering from an older state.
    pub async fn authorization_used_at(
        &self,
        asset: Address,
        authorizer: Address,
        nonce: B256,
        at: Option<u64>,
    ) -> Result<bool, ChainError> {
        let call = IUsdc::authorizationStateCall { authorizer, nonce };
        let bytes = self.eth_call_at(asset, call.abi_encode(), at).await?;
        IUsdc::authorizationStateCall::abi_decode_returns(&bytes).map_err(|e| ChainError::Answer {
            method: "authorizationState".into(),
            why: e.to_string(),
        })
    }

    /// USDC `balanceOf(account)`.
    pub async fn balance(&self, asset: Address, account: Address) -> Result<Usdc, ChainError> {
        let bytes = self
            .eth_call(asset, IUsdc::balanceOfCall { account }.abi_encode())
            .await?;
        let wei: U256 =
            IUsdc::balanceOfCall::abi_decode_returns(&bytes).map_err(|e| ChainError::Answer {
                method: "balanceOf".into(),
                why: e.to_string(),
            })?;
        Ok(Usdc::from_atomic(u128::try_from(wei).unwrap_or(u128::MAX)))
    }

    /// The latest block's number and timestamp. Any later block has a timestamp at least this
    /// one's, so a voucher whose `validBefore` is at or below it can never settle.
    pub async fn head(&self) -> Result<(u64, u64), ChainError> {
        let block = self
            .rpc("eth_getBlockByNumber", json!(["latest", false]))
            .await?;
        let field = |name: &str| {
            quantity(&block[name], "eth_getBlockByNumber").map_err(|_| ChainError::Answer {
                method: "eth_getBlockByNumber".into(),
                why: format!("no {name}"),
            })
        };
        Ok((field("number")?, field("timestamp")?))
    }

    /// `AuthorizationUsed` logs of `authorizer` from block `from_block` to the latest, for one
    /// nonce or (with `None`) all of them.
    pub async fn used_authorizations(
        &self,
        asset: Address,
        authorizer: Address,
        nonce: Option<B256>,
        from_block: u64,
    ) -> Result<Vec<UsedAuthorization>, ChainError> {
        let topic = |b: B256| Value::String(b.to_string());
        let filter = json!({
            "address": asset.to_string(),
            "fromBlock": format!("0x{from_block:x}"),
            "toBlock": "latest",
            "topics": [
                topic(IUsdc::AuthorizationUsed::SIGNATURE_HASH),
                topic(authorizer.into_word()),
                nonce.map_or(Value::Null, topic),
            ],
        });
        let logs = self.rpc("eth_getLogs", json!([filter])).await?;
        let bad = |why: &str| ChainError::Answer {
            method: "eth_getLogs".into(),
            why: why.into(),
        };
        let logs = logs.as_array().ok_or_else(|| bad("not an array"))?;
        logs.iter()
            .map(|log| {
                let word = |v: &Value| v.as_str().and_then(|s| s.parse::<B256>().ok());
                Ok(UsedAuthorization {
                    nonce: word(&log["topics"][2]).ok_or_else(|| bad("no nonce topic"))?,
                    tx: word(&log["transactionHash"]).ok_or_else(|| bad("no transaction"))?,
                    block: quantity(&log["blockNumber"], "eth_getLogs")?,
                })
            })
            .collect()
    }

    /// The transaction that used `nonce`, looking back over the blocks a voucher can live.
    pub async fn settlement_tx(
        &self,
        asset: Address,
        authorizer: Address,
        nonce: B256,
    ) -> Result<Option<B256>, ChainError> {
        let (latest, _) = self.head().await?;
        let logs = self
            .used_authorizations(
                asset,
                authorizer,
                Some(nonce),
                latest.saturating_sub(MAX_LOG_RANGE),
            )
            .await?;
        Ok(logs.first().map(|l| l.tx))
    }

    async fn eth_call(&self, to: Address, data: Vec<u8>) -> Result<Vec<u8>, ChainError> {
        self.eth_call_at(to, data, None).await
    }

    async fn eth_call_at(
        &self,
        to: Address,
        data: Vec<u8>,
        at: Option<u64>,
    ) -> Result<Vec<u8>, ChainError> {
        let call = json!({"to": to.to_string(), "data": hex::encode_prefixed(data)});
        let block = at.map_or_else(|| "latest".to_string(), |n| format!("0x{n:x}"));
        let answer = self.rpc("eth_call", json!([call, block])).await?;
        answer
            .as_str()
            .and_then(|s| hex::decode(s).ok())
            .ok_or_else(|| ChainError::Answer {
                method: "eth_call".into(),
                why: "not hex".into(),
            })
    }

    /// One JSON-RPC call; error objects are read whatever the HTTP status.
    async fn rpc(&self, method: &str, params: Value) -> Result<Value, ChainError> {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        crate::http::rpc_call(&self.http, &self.url, id, method, params, MAX_RPC_BYTES)
            .await
            .map_err(|failure| match failure {
                RpcFailure::Transport { why, .. } => ChainError::Transport {
                    method: method.to_string(),
                    url: self.url.to_string(),
                    why,
                },
                RpcFailure::Provider { code, message } => ChainError::Provider {
                    method: method.to_string(),
                    url: self.url.to_string(),
                    code,
                    message,
                },
            })
    }
}

/// [`UsdcChain::from_env`], with a bad URL logged and ignored (the engine then judges by the
/// gates' answers, as without one).
pub fn from_env_logged() -> Option<std::sync::Arc<UsdcChain>> {
    match UsdcChain::from_env()? {
        Ok(chain) => Some(std::sync::Arc::new(chain)),
        Err(e) => {
            tracing::error!(error = %e, "payments are not checked on chain");
            None
        }
    }
}

/// A JSON-RPC quantity (`"0x1a"`).
fn quantity(v: &Value, method: &str) -> Result<u64, ChainError> {
    v.as_str()
        .and_then(|s| s.strip_prefix("0x"))
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or_else(|| ChainError::Answer {
            method: method.into(),
            why: format!("{v} is not a quantity"),
        })
}
