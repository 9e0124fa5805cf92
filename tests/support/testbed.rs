//! The payments testbed (`testbed/payments/up.mjs`): anvil with Circle's USDC, the reference
//! facilitator and gates, stand-in workers and remote signer. See testbed/payments/README.md.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::sol_types::SolCall;
use autoresearch_coordinator::payment::{self, RemoteSigner, WorkerClient};
use serde_json::{Value, json};

alloy::sol! {
    interface IERC20 {
        function balanceOf(address owner) external view returns (uint256);
    }
}

/// A running testbed; stops when dropped (its stdin closes).
pub struct Testbed {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The manifest.
    pub m: Value,
}

impl Testbed {
    /// Starts the testbed with `config` (see its README); panics if it is not installed.
    pub fn start(config: Value) -> Testbed {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert!(
            root.join("testbed/node_modules/@x402/express").exists(),
            "testbed/node_modules is missing: run scripts/testbed-install.sh (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(root.join("testbed/payments/up.mjs"))
            .arg("--config")
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs (Node.js 20 or later)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let m: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("testbed manifest ({e}): {line:?}"));
        Testbed {
            stdin: child.stdin.take(),
            child,
            m,
        }
    }

    pub fn worker(&self, name: &str) -> &Value {
        self.m["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no worker {name}"))
    }

    pub fn signer(&self, name: &str) -> RemoteSigner {
        let s = self.m["signers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no signer {name}"));
        RemoteSigner::new(
            s["url"].as_str().unwrap(),
            s["token"].as_str().map(str::to_string),
        )
        .unwrap()
    }

    pub fn payer(&self) -> Address {
        self.m["payer"].as_str().unwrap().parse().unwrap()
    }

    pub fn pay_to(&self, worker: &str) -> Address {
        self.worker(worker)["payTo"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn client(&self, worker: &str) -> WorkerClient {
        WorkerClient::new(
            self.worker(worker)["endpoint"].as_str().unwrap(),
            Duration::from_secs(60),
        )
        .unwrap()
        .with_poll_interval(Duration::from_millis(100))
    }

    /// A JSON-RPC call to anvil. (The crate's alloy has no HTTP transport feature; a raw
    /// `eth_call` through the payment module's HTTP client is enough here.)
    pub async fn rpc(&self, method: &str, params: Value) -> Value {
        let answer: Value = payment::http::client(Duration::from_secs(10))
            .post(self.m["rpcUrl"].as_str().unwrap())
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["result"].clone()
    }

    /// USDC `balanceOf(who)`.
    pub async fn balance(&self, who: Address) -> U256 {
        let data = IERC20::balanceOfCall { owner: who }.abi_encode();
        let call =
            json!({"to": self.m["usdc"], "data": alloy::primitives::hex::encode_prefixed(data)});
        let result = self.rpc("eth_call", json!([call, "latest"])).await;
        let bytes = alloy::primitives::hex::decode(result.as_str().unwrap()).unwrap();
        IERC20::balanceOfCall::abi_decode_returns(&bytes).unwrap()
    }

    /// Payer's and `worker`'s payee's balances.
    pub async fn balances(&self, worker: &str) -> (U256, U256) {
        (
            self.balance(self.payer()).await,
            self.balance(self.pay_to(worker)).await,
        )
    }

    pub async fn block_number(&self) -> u64 {
        let n = self.rpc("eth_blockNumber", json!([])).await;
        u64::from_str_radix(n.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Testbed {
    /// Transactions the facilitator has sent (its account nonce): each settlement is one. (The
    /// block number is no measure: the testbed mines an empty block every 2 s.)
    pub async fn facilitator_transactions(&self) -> u64 {
        let n = self
            .rpc(
                "eth_getTransactionCount",
                json!([self.m["facilitatorAddress"], "latest"]),
            )
            .await;
        u64::from_str_radix(n.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    /// Moves the chain's clock `secs` ahead and mines a block at the new time.
    pub async fn advance_chain_time(&self, secs: u64) {
        self.rpc("evm_increaseTime", json!([secs])).await;
        self.rpc("evm_mine", json!([])).await;
    }

    /// The latest block's timestamp.
    pub async fn chain_time(&self) -> u64 {
        let block = self
            .rpc("eth_getBlockByNumber", json!(["latest", false]))
            .await;
        let t = block["timestamp"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x");
        u64::from_str_radix(t, 16).unwrap()
    }

    /// `from` sends `amount` atomic USDC to `to`, impersonated by anvil (no key needed).
    pub async fn transfer_usdc(&self, from: Address, to: Address, amount: u64) {
        alloy::sol! {
            interface ITransfer {
                function transfer(address to, uint256 value) external returns (bool);
            }
        }
        let data = ITransfer::transferCall {
            to,
            value: U256::from(amount),
        }
        .abi_encode();
        self.rpc("anvil_setBalance", json!([from, "0xde0b6b3a7640000"]))
            .await;
        self.rpc("anvil_impersonateAccount", json!([from])).await;
        let tx = json!({"from": from, "to": self.m["usdc"],
            "data": alloy::primitives::hex::encode_prefixed(data)});
        let hash = self.rpc("eth_sendTransaction", json!([tx])).await;
        assert!(hash.is_string(), "transfer sent");
        self.rpc("anvil_stopImpersonatingAccount", json!([from]))
            .await;
    }

    /// A worker's `GET /status` (counts of requests and runs), read past any edge proxy.
    pub async fn worker_status(&self, worker: &str) -> Value {
        let w = self.worker(worker);
        let base = w
            .get("directEndpoint")
            .unwrap_or(&w["endpoint"])
            .as_str()
            .unwrap();
        payment::http::client(Duration::from_secs(10))
            .get(format!("{base}/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}
