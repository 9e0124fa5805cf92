//! Spawns the testbed's Node processes (8004scan stand-in, registry deployer, RPC proxy) and
//! kills them when the test is done.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The testbed folder.
pub fn testbed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testbed")
}

/// A child process killed on drop.
pub struct Proc {
    child: Child,
    /// The value after `KEY=` on the line the process printed when ready.
    pub value: String,
}

impl Proc {
    /// Runs `program args` in the testbed folder and waits (up to `wait`) for a stdout line
    /// `KEY=<value>`.
    pub fn spawn(program: &str, args: &[&str], key: &str, wait: Duration) -> Self {
        let prefix = format!("{key}=");
        Self::spawn_until(program, args, wait, move |line| {
            line.strip_prefix(&prefix).map(|v| v.trim().to_string())
        })
    }

    /// Runs `program args` in the testbed folder and waits for a stdout line that `ready`
    /// turns into a value.
    pub fn spawn_until(
        program: &str,
        args: &[&str],
        wait: Duration,
        ready: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(testbed())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} {args:?}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        // Keeps reading after the ready line, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = ready(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        match rx.recv_timeout(wait) {
            Ok(value) => Self { child, value },
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{program} {args:?} was not ready in {wait:?}; stderr:\n{err}");
            }
        }
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The 8004scan stand-in.
pub struct ScanServer {
    proc: Proc,
}

impl ScanServer {
    /// Starts the stand-in with extra flags (`--fail-every`, `--real-limits`, `--rate-limit`,
    /// `--rate-window-ms`, `--day-limit`, `--agents`...: see testbed/scan/server.mjs).
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["scan/server.mjs", "--port", "0"];
        all.extend_from_slice(args);
        Self {
            proc: Proc::spawn("node", &all, "SCAN_API_URL", Duration::from_secs(20)),
        }
    }

    /// `SCAN_API_URL`.
    pub fn api_url(&self) -> String {
        self.proc.value.clone()
    }

    /// `http://127.0.0.1:<port>`: where its documents, IPFS gateway and workers are.
    pub fn origin(&self) -> String {
        self.proc
            .value
            .trim_end_matches("/api/v1/public")
            .to_string()
    }

    /// What it served so far.
    pub async fn stats(&self) -> serde_json::Value {
        reqwest_get_json(&format!("{}/__stats", self.origin())).await
    }

    /// Gives agent `token` a new `updated_at`, as a changed registration would.
    pub async fn touch(&self, token: u64) {
        let r = client()
            .post(format!("{}/__touch/{token}", self.origin()))
            .send()
            .await
            .expect("touch request");
        assert!(r.status().is_success(), "touch {token}: {}", r.status());
    }
}

/// A plain HTTP client (the crate's TLS provider installed).
pub fn client() -> reqwest::Client {
    autoresearch_coordinator::discovery::http::ensure_crypto_provider();
    reqwest::Client::new()
}

async fn reqwest_get_json(url: &str) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .expect("stats request")
        .json()
        .await
        .expect("stats JSON")
}

/// anvil (from the testbed's npm packages) on a free loopback port, chain id 84532.
pub fn anvil() -> Proc {
    let bin = testbed().join("node_modules/.bin/anvil");
    Proc::spawn_until(
        bin.to_str().expect("utf-8 path"),
        &["--port", "0", "--host", "127.0.0.1", "--chain-id", "84532"],
        Duration::from_secs(30),
        |line| {
            line.strip_prefix("Listening on ")
                .map(|addr| format!("http://{}", addr.trim()))
        },
    )
}

/// What `testbed/registry/deploy.mjs` reports.
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    /// Registry address.
    pub address: String,
    /// Chain id.
    pub chain_id: u64,
    /// Deployment block.
    pub start_block: u64,
    /// Head after the last registration.
    pub head: u64,
    /// Agent id → endpoint of every real worker.
    pub workers: std::collections::BTreeMap<u64, String>,
}

/// Deploys the registry stand-in and registers the test agents.
pub fn deploy_registry(rpc: &str, origin: &str) -> Deployed {
    let out = Command::new("node")
        .args(["registry/deploy.mjs", "--rpc", rpc, "--origin", origin])
        .current_dir(testbed())
        .output()
        .expect("run deploy.mjs");
    assert!(
        out.status.success(),
        "deploy.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REGISTRY_DEPLOYED="))
        .expect("deploy.mjs prints REGISTRY_DEPLOYED=");
    serde_json::from_str(line).expect("deployment JSON")
}

/// The JSON-RPC proxy that refuses `eth_getLogs` ranges wider than `max_range`.
pub fn range_proxy(upstream: &str, max_range: u64) -> Proc {
    Proc::spawn(
        "node",
        &[
            "registry/range-proxy.mjs",
            "--upstream",
            upstream,
            "--max-range",
            &max_range.to_string(),
        ],
        "RPC_URL",
        Duration::from_secs(20),
    )
}

/// GET a JSON document (stats endpoints of the stand-ins).
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest_get_json(url).await
}
