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
        let prefix = format!("{key}=");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(v) = line.strip_prefix(&prefix) {
                    let _ = tx.send(v.trim().to_string());
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
                panic!("{program} {args:?} did not print {key}=… in {wait:?}; stderr:\n{err}");
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
    /// Starts the stand-in with extra flags (`--fail-every`, `--rate-limit`, `--rate-window-ms`).
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
}

async fn reqwest_get_json(url: &str) -> serde_json::Value {
    autoresearch_coordinator::discovery::http::ensure_crypto_provider();
    reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("stats request")
        .json()
        .await
        .expect("stats JSON")
}

/// The anvil binary from the testbed's npm packages.
pub fn anvil_bin() -> String {
    testbed()
        .join("node_modules/.bin/anvil")
        .to_string_lossy()
        .into_owned()
}
