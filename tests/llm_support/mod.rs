//! What the llm tests share: the real LiteLLM proxy (installed by `scripts/install-llm.sh`) in
//! front of the deterministic proposer of `testbed/llm/proposer.py`, both on loopback and each
//! in its own process group, so that a test can end a server with everything it started.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// LiteLLM's master key in every test config.
pub const MASTER_KEY: &str = "sk-test-master";
/// The key the proposer accepts from LiteLLM.
pub const UPSTREAM_KEY: &str = "upstream-key";

/// The repository.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `litellm` executable, installed (once, cached) by `scripts/install-llm.sh`.
pub fn install_litellm() -> String {
    let installed = Command::new("bash")
        .arg(repo().join("scripts/install-llm.sh"))
        .output()
        .expect("run scripts/install-llm.sh");
    assert!(
        installed.status.success(),
        "install-llm.sh: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    String::from_utf8(installed.stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// Starts the proposer on a free port, logging each request it gets to `log`; it and its
/// OpenAI-style base URL (`…/v1`).
pub fn start_proposer(log: &Path) -> (Child, String) {
    let mut proposer = Command::new("python3")
        .arg(repo().join("testbed/llm/proposer.py"))
        .args(["--port", "0", "--key", UPSTREAM_KEY, "--log"])
        .arg(log)
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("start the proposer");
    // Its first line ends with the port it listens on.
    let mut line = String::new();
    BufReader::new(proposer.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    (proposer, format!("http://127.0.0.1:{port}/v1"))
}

/// Starts LiteLLM with `config` on a free port, its stderr in `dir/litellm.log`; it and its base
/// URL. It takes seconds to listen: see [`wait_until_live`].
pub fn start_litellm(litellm: &str, config: &Path, dir: &Path) -> (Child, String) {
    let port = free_port();
    let server = Command::new(litellm)
        .arg("--config")
        .arg(config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("litellm.log")).unwrap())
        .process_group(0)
        .spawn()
        .expect("start litellm");
    (server, format!("http://127.0.0.1:{port}"))
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 90 s for LiteLLM at `url` to answer its liveness probe; else fails with its log.
pub fn wait_until_live(url: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let live = Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                &format!("{url}/health/liveliness"),
            ])
            .status()
            .is_ok_and(|s| s.success());
        if live {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = std::fs::read_to_string(dir.join("litellm.log")).unwrap_or_default();
    panic!("litellm did not start within 90 s:\n{log}");
}

/// Runs a train.py with python3 as a worker would, and reads `val_bpb: N` from its output.
pub fn run_train_py(source: &str) -> Option<f64> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.py"), source).unwrap();
    let out = Command::new("python3")
        .arg("train.py")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with("val_bpb: "))?;
    line["val_bpb: ".len()..].trim().parse().ok()
}
