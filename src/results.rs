//! PUBLISH: `results.jsonl`, one JSON object per finished experiment, on a persistent volume.
//!
//! The first seven fields are the seed format of obol-stack's coordinator (docs/protocols.md §6) and
//! keep their names; the rest are additions. Every append is flushed to disk before it returns,
//! so a result that was reported is never lost to a crash.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;

/// One line of results.jsonl.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ResultRecord {
    /// Experiment id sent to the worker.
    pub experiment_id: String,
    /// `sha256:<hex>` of train.py.
    pub train_hash: String,
    /// Validation bits per byte; `null` when the run failed.
    pub val_bpb: Option<f64>,
    /// Worker service URL.
    pub worker_endpoint: String,
    /// ERC-8004 agent id of the worker, if known.
    pub worker_agent_id: Option<u64>,
    /// When the result was recorded (RFC 3339, UTC).
    pub timestamp: String,
    /// Settlement transaction hash, if the gate reported one.
    pub payment_tx: Option<String>,
    /// Payment network (`base-sepolia`, `base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Amount paid in atomic USDC units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// How the run ended: `completed`, `failed`, `timeout` or `worker_failure` (see
    /// [`RunStatus`]). Kept as text so that a newer or hand-written value is still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Keep/discard, as autoresearch's results.tsv says it: `keep` (became the new base),
    /// `discard` (no improvement beyond the noise floor) or `crash` (no result). A separate field
    /// from `status` so that files written before it existed keep their meaning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// The config that was run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// The searched parameters and their values (what varies; small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// One line saying what this experiment changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `sha256:<hex>` of the train.py this experiment's code was derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_train_hash: Option<String>,
    /// Namespace of the campaign (controller only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_namespace: Option<String>,
    /// Name of the campaign (controller only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_name: Option<String>,
    /// The voucher's ERC-3009 nonce (0x + 32 bytes), for `audit` against the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The paying address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// The token contract paid in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// Unix time after which the voucher could no longer settle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before: Option<u64>,
    /// `baseline` (the unmodified train.py, run to measure the noise) or `replication` (a
    /// re-run of another experiment on another worker); absent for an experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// For a replication: the experiment id it re-runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicates: Option<String>,
    /// The address the worker was paid at (from the voucher): replications go to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_to: Option<String>,
}

/// How a run ended, as written in the `status` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// The worker ran train.py and reported a valid val_bpb.
    Completed,
    /// The run failed (train.py crashed, printed no val_bpb, or the answer was not a result).
    Failed,
    /// The run exceeded the worker's time limit.
    Timeout,
    /// The worker failed and the amount may have settled.
    WorkerFailure,
}

impl RunStatus {
    /// The text written to results.jsonl.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Timeout => "timeout",
            RunStatus::WorkerFailure => "worker_failure",
        }
    }
}

impl ResultRecord {
    /// Whether the run completed with a result (older lines without a status count when they
    /// carry a val_bpb).
    pub fn succeeded(&self) -> bool {
        match self.status.as_deref() {
            Some(s) => s == RunStatus::Completed.as_str(),
            None => self.val_bpb.is_some(),
        }
    }
}

/// `$DATA_DIR/autoresearch/results.jsonl`.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("autoresearch").join("results.jsonl")
}

/// An append-only results file shared by concurrent tasks, and by the processes that share its
/// volume: each line is written at most once per voucher nonce.
#[derive(Debug)]
pub struct ResultsLog {
    path: PathBuf,
    // Serialises this process's appends; the file lock (flock) serialises them with other
    // processes'. Holds what this process has read of the file so far.
    lock: Mutex<Seen>,
}

/// The nonces of the lines read so far, and how far the file was read.
#[derive(Debug, Default)]
struct Seen {
    offset: u64,
    /// As 32 bytes each ([`nonce_key`]), not text: one per result ever written.
    nonces: HashSet<[u8; 32]>,
}

/// A voucher nonce (`0x` + 32 bytes) as its bytes; anything else by its SHA-256.
fn nonce_key(nonce: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    let hex = nonce.strip_prefix("0x").unwrap_or(nonce);
    if hex::decode_to_slice(hex, &mut key).is_err() {
        use sha2::Digest;
        key = sha2::Sha256::digest(nonce.as_bytes()).into();
    }
    key
}

impl ResultsLog {
    /// A log at `path`; the file and its folder are created on first append.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            lock: Mutex::new(Seen::default()),
        }
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and flushes it to disk. A record whose voucher nonce already has a
    /// line (another process finished the same ledger entry: a frozen leader come back, a
    /// second controller) is not written again.
    pub async fn append(&self, record: &ResultRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let mut guard = self.lock.lock().await;
        let seen = std::mem::take(&mut *guard);
        let path = self.path.clone();
        let nonce = record.nonce.clone();
        let (seen, written) =
            tokio::task::spawn_blocking(move || append_line(&path, &line, nonce, seen))
                .await
                .map_err(std::io::Error::other)?;
        *guard = seen;
        written
    }

    /// Every record in the file, oldest first. Lines that do not parse (a torn last line after
    /// a power cut, a hand edit) are skipped with a warning rather than failing the whole read.
    pub fn read_all(&self) -> std::io::Result<Vec<ResultRecord>> {
        read_records(&self.path)
    }

    /// Calls `each` for every record, oldest first, without holding the file in memory.
    pub fn read_each(&self, each: impl FnMut(ResultRecord)) -> std::io::Result<()> {
        for_each_record(&self.path, each)
    }

    /// [`read_from`] on this log's file.
    pub fn read_from(&self, offset: u64, each: impl FnMut(ResultRecord)) -> std::io::Result<u64> {
        read_from(&self.path, offset, each)
    }
}

/// Streams the complete lines after byte `offset` (0: the whole file) to `each`, and returns
/// the offset after the last complete line, from which the next call goes on: a controller
/// picks up what another process (a second leader) appended since it last read. A last line
/// without its newline is not read yet; a file shorter than `offset` (replaced) is read from
/// the start. Lines that do not parse are skipped with a warning.
pub fn read_from(
    path: &Path,
    offset: u64,
    mut each: impl FnMut(ResultRecord),
) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut offset = if file.metadata()?.len() < offset {
        0
    } else {
        offset
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 || !line.ends_with('\n') {
            return Ok(offset);
        }
        offset += n as u64;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(record) => each(record),
            Err(e) => {
                tracing::warn!(path = %path.display(), offset, error = %e, "skipping unreadable result line")
            }
        }
    }
}

fn append_line(
    path: &Path,
    line: &str,
    nonce: Option<String>,
    mut seen: Seen,
) -> (Seen, std::io::Result<()>) {
    let written = append_locked(path, line, nonce.as_deref(), &mut seen);
    if written.is_err() {
        // Read again from the start next time: what was read may be out of date.
        seen = Seen::default();
    }
    (seen, written)
}

fn append_locked(
    path: &Path,
    line: &str,
    nonce: Option<&str>,
    seen: &mut Seen,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)?;
    // Released when `file` is dropped.
    file.lock()?;
    read_new_lines(&mut file, seen)?;
    if let Some(nonce) = nonce
        && seen.nonces.contains(&nonce_key(nonce))
    {
        tracing::info!(path = %path.display(), %nonce, "this voucher's result is already in results.jsonl; not written again");
        return Ok(());
    }
    // A crash mid-write (a power cut, a full disk) can leave a torn last line. Ending it first
    // keeps the new record on a line of its own, so it is readable; the torn one is skipped.
    if ends_torn(&mut file)? {
        tracing::warn!(path = %path.display(), "results.jsonl ended in a torn line; ending it before the next record");
        file.write_all(b"\n")?;
    }
    file.write_all(line.as_bytes())?;
    file.sync_data()?;
    seen.offset = file.metadata()?.len();
    seen.nonces.extend(nonce.map(nonce_key));
    Ok(())
}

/// Reads the complete lines added since `seen.offset` (by this process or another) and notes
/// their nonces. A file that shrank (replaced by hand) is read again from the start.
fn read_new_lines(file: &mut File, seen: &mut Seen) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let len = file.metadata()?.len();
    if len < seen.offset {
        *seen = Seen::default();
    }
    file.seek(SeekFrom::Start(seen.offset))?;
    let mut reader = BufReader::new(&*file);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        // A last line without its newline is torn (or being written): not read yet.
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        seen.offset += n as u64;
        if let Ok(record) = serde_json::from_str::<ResultRecord>(&line) {
            seen.nonces.extend(record.nonce.as_deref().map(nonce_key));
        }
    }
    Ok(())
}

/// Whether a non-empty file's last byte is not a newline.
fn ends_torn(file: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Reads records from a results file; a missing file is an empty history.
pub fn read_records(path: &Path) -> std::io::Result<Vec<ResultRecord>> {
    let mut records = Vec::new();
    for_each_record(path, |r| records.push(r))?;
    Ok(records)
}

/// Streams the records of a results file; a missing file has none. Lines that do not parse are
/// skipped with a warning.
pub fn for_each_record(path: &Path, mut each: impl FnMut(ResultRecord)) -> std::io::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(record) => each(record),
            Err(e) => {
                tracing::warn!(path = %path.display(), line = n + 1, error = %e, "skipping unreadable result line")
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, val_bpb: Option<f64>) -> ResultRecord {
        ResultRecord {
            experiment_id: id.into(),
            train_hash: "sha256:00".into(),
            val_bpb,
            worker_endpoint: "http://127.0.0.1:1/services/w".into(),
            worker_agent_id: Some(42),
            timestamp: "2026-03-12T10:30:00Z".into(),
            payment_tx: Some("0xabc".into()),
            network: None,
            amount: None,
            status: None,
            decision: None,
            config: None,
            params: None,
            description: None,
            parent_train_hash: None,
            campaign_namespace: None,
            campaign_name: None,
            nonce: None,
            payer: None,
            asset: None,
            valid_before: None,
            role: None,
            replicates: None,
            pay_to: None,
        }
    }

    #[tokio::test]
    async fn appends_survive_and_keep_seed_field_names() {
        let dir = tempfile::tempdir().unwrap();
        let log = ResultsLog::new(default_path(dir.path()));
        log.append(&record("exp-1", Some(0.99))).await.unwrap();
        log.append(&record("exp-2", None)).await.unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        for key in [
            "experiment_id",
            "train_hash",
            "val_bpb",
            "worker_endpoint",
            "worker_agent_id",
            "timestamp",
            "payment_tx",
        ] {
            assert!(first.get(key).is_some(), "seed field {key} missing");
        }
        assert!(
            first.get("network").is_none(),
            "unset additions are omitted"
        );
        let all = log.read_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].val_bpb, None);
    }

    #[tokio::test]
    async fn a_voucher_is_recorded_once_whichever_process_appends_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        // Two logs on one file: two processes sharing the volume.
        let (a, b) = (ResultsLog::new(&path), ResultsLog::new(&path));
        let paid = |id: &str, nonce: &str| ResultRecord {
            nonce: Some(nonce.into()),
            ..record(id, Some(1.0))
        };
        a.append(&paid("exp-1", "0x01")).await.unwrap();
        b.append(&paid("exp-1", "0x01")).await.unwrap();
        b.append(&paid("exp-2", "0x02")).await.unwrap();
        a.append(&paid("exp-2", "0x02")).await.unwrap();
        // The same experiment paid with another voucher (a re-created campaign) is a new line.
        a.append(&paid("exp-1", "0x03")).await.unwrap();
        let ids: Vec<String> = read_records(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.experiment_id)
            .collect();
        assert_eq!(ids, ["exp-1", "exp-2", "exp-1"]);
    }

    #[tokio::test]
    async fn concurrent_appends_never_interleave_and_a_torn_line_is_ended_before_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let log = std::sync::Arc::new(ResultsLog::new(dir.path().join("r.jsonl")));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(
                    async move { log.append(&record(&format!("exp-{i}"), Some(1.0))).await },
                )
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(log.path())
            .unwrap()
            .write_all(b"{\"experiment_id\": \"tor")
            .unwrap();
        assert_eq!(log.read_all().unwrap().len(), 20);
        // The next append ends the torn line first: the new record is not glued to it.
        log.append(&record("exp-after", Some(0.5))).await.unwrap();
        let all = log.read_all().unwrap();
        assert_eq!(all.len(), 21);
        assert_eq!(all[20].experiment_id, "exp-after");
        assert!(
            read_records(&dir.path().join("missing.jsonl"))
                .unwrap()
                .is_empty()
        );
    }
}
