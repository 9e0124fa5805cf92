//! Discovery's cache on disk, under `$DATA_DIR/autoresearch/discovery/`: what a refresh found,
//! the index's detail records by agent and `updated_at`, and the index's last word on its
//! quota. The CLI and the controller may share the folder, so a file is written whole (a temp
//! file renamed over it) and a refresh holds a lock file that the other process waits for.
//!
//! A file that cannot be read, is not JSON, or belongs to another schema, version or key is
//! ignored with a warning: the cache only ever saves requests, it never decides anything.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What every cache file says it is.
const SCHEMA: &str = "autoresearch-coordinator/discovery-cache";
/// Bumped whenever a stored shape changes; older files are then ignored.
const VERSION: u64 = 1;
/// Cache files larger than this are not read (a hundred agents' documents are well under 1 MiB).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A cache file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the discovery cache {path}: {source}")]
pub struct CacheError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// A value read back, with when it was saved.
#[derive(Debug)]
pub struct Stored<T> {
    /// When it was written.
    pub saved_at: SystemTime,
    /// The value.
    pub data: T,
}

impl<T> Stored<T> {
    /// How old it is (zero if the clock went back).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.saved_at)
            .unwrap_or_default()
    }
}

/// The cache folder.
#[derive(Clone, Debug)]
pub struct DiskCache {
    dir: PathBuf,
}

/// Held while this process refreshes a key; dropping it lets another process go on.
#[derive(Debug)]
pub struct RefreshLock {
    _file: File,
}

impl DiskCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$DATA_DIR/autoresearch/discovery`.
    pub fn under_data_dir(data_dir: &Path) -> Self {
        Self::new(data_dir.join("autoresearch").join("discovery"))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file for `kind` and `key`. The key is hashed: file names and contents never carry
    /// it (it may hold URLs with credentials, or stand for an API key).
    pub fn path(&self, kind: &str, key: &str) -> PathBuf {
        self.dir
            .join(format!("{kind}-{}.json", &digest(kind, key)[..16]))
    }

    /// The value stored for `kind` and `key`, if there is a readable one.
    pub fn load<T: DeserializeOwned>(&self, kind: &str, key: &str) -> Option<Stored<T>> {
        let path = self.path(kind, key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return ignored(&path, e),
        };
        let mut text = Vec::new();
        if let Err(e) = std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_FILE_BYTES + 1),
            &mut text,
        ) {
            return ignored(&path, e);
        }
        if text.len() as u64 > MAX_FILE_BYTES {
            return ignored(&path, "larger than the cache ever writes");
        }
        match decode(&text, kind, &digest(kind, key)) {
            Ok(stored) => Some(stored),
            Err(why) => ignored(&path, why),
        }
    }

    /// Stores `data` for `kind` and `key`, replacing the file whole.
    pub fn save<T: Serialize>(&self, kind: &str, key: &str, data: &T) -> Result<(), CacheError> {
        let path = self.path(kind, key);
        let err = |source| CacheError {
            path: path.clone(),
            source,
        };
        let envelope = serde_json::json!({
            "schema": SCHEMA,
            "version": VERSION,
            "kind": kind,
            "key": digest(kind, key),
            "savedAt": unix(SystemTime::now()),
            "data": data,
        });
        let bytes = serde_json::to_vec(&envelope).map_err(|e| err(e.into()))?;
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        // A name no other writer uses, in the same folder so that the rename is atomic.
        let tmp = self.dir.join(format!(
            ".{}.{}-{:016x}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("cache"),
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(err)
    }

    /// Waits up to `wait` for the refresh lock of `kind` and `key`, so that two processes do
    /// not both spend the index's quota on the same refresh. `None` when the folder cannot be
    /// used or the other process takes longer (the caller refreshes anyway).
    pub async fn lock(&self, kind: &str, key: &str, wait: Duration) -> Option<RefreshLock> {
        let path = self.path(kind, key).with_extension("lock");
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "no discovery cache folder");
            return None;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Some(RefreshLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::debug!(lock = %path.display(), error = %e, "refreshing without the lock");
                    return None;
                }
            }
        }
    }
}

fn ignored<T>(path: &Path, why: impl std::fmt::Display) -> Option<T> {
    tracing::warn!(file = %path.display(), "ignoring the discovery cache file: {why}");
    None
}

fn digest(kind: &str, key: &str) -> String {
    hex::encode(Sha256::digest(format!("{SCHEMA}\n{kind}\n{key}")))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a cache file was ignored. Only logged: an ignored file costs a request, nothing else.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("not JSON ({0})")]
    NotJson(serde_json::Error),
    #[error("not a discovery cache file")]
    ForeignSchema,
    #[error("written by another version (format {0}, this is {VERSION})")]
    OtherVersion(Value),
    #[error("it belongs to other discovery settings")]
    OtherSettings,
    #[error("no savedAt")]
    NoSavedAt,
    #[error("saved in the future")]
    FromTheFuture,
    #[error("unexpected content ({0})")]
    Content(serde_json::Error),
}

/// Checks the envelope and decodes the data.
fn decode<T: DeserializeOwned>(
    text: &[u8],
    kind: &str,
    key: &str,
) -> Result<Stored<T>, Unreadable> {
    let v: Value = serde_json::from_slice(text).map_err(Unreadable::NotJson)?;
    if v.get("schema").and_then(Value::as_str) != Some(SCHEMA) {
        return Err(Unreadable::ForeignSchema);
    }
    if v.get("version").and_then(Value::as_u64) != Some(VERSION) {
        let found = v.get("version").cloned().unwrap_or(Value::Null);
        return Err(Unreadable::OtherVersion(found));
    }
    if v.get("kind").and_then(Value::as_str) != Some(kind)
        || v.get("key").and_then(Value::as_str) != Some(key)
    {
        return Err(Unreadable::OtherSettings);
    }
    let saved = v
        .get("savedAt")
        .and_then(Value::as_u64)
        .ok_or(Unreadable::NoSavedAt)?;
    let saved_at = SystemTime::UNIX_EPOCH + Duration::from_secs(saved);
    // A file from the future would never expire.
    if saved_at > SystemTime::now() + Duration::from_secs(300) {
        return Err(Unreadable::FromTheFuture);
    }
    let data = serde_json::from_value(v.get("data").cloned().unwrap_or(Value::Null))
        .map_err(Unreadable::Content)?;
    Ok(Stored { saved_at, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path().join("d"));
        assert!(cache.load::<Vec<u32>>("k", "a").is_none(), "nothing yet");
        cache.save("k", "a", &vec![1u32, 2]).unwrap();
        let got = cache.load::<Vec<u32>>("k", "a").unwrap();
        assert_eq!(got.data, vec![1, 2]);
        assert!(got.age() < Duration::from_secs(5));
        assert!(cache.load::<Vec<u32>>("k", "b").is_none(), "another key");

        // A file renamed to another key's name is foreign.
        std::fs::copy(cache.path("k", "a"), cache.path("k", "b")).unwrap();
        assert!(cache.load::<Vec<u32>>("k", "b").is_none());
        // Corrupt, wrong version, wrong shape: ignored.
        std::fs::write(cache.path("k", "a"), b"{\"schema\": tru").unwrap();
        assert!(cache.load::<Vec<u32>>("k", "a").is_none());
        let text = std::fs::read_to_string(cache.path("k", "b"))
            .unwrap()
            .replace("\"version\":1", "\"version\":99");
        std::fs::write(cache.path("k", "a"), text).unwrap();
        assert!(cache.load::<Vec<u32>>("k", "a").is_none());
        cache.save("k", "a", &"text").unwrap();
        assert!(cache.load::<Vec<u32>>("k", "a").is_none());
        // No temp files left behind, and the key is not in the file name or content.
        let names: Vec<String> = std::fs::read_dir(cache.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        cache.save("k", "secret-url-with-token", &1u32).unwrap();
        let text = std::fs::read_to_string(cache.path("k", "secret-url-with-token")).unwrap();
        assert!(!text.contains("secret-url-with-token"), "{text}");
    }

    #[test]
    fn each_foreign_file_is_named_for_what_is_wrong() {
        let envelope = |edit: &dyn Fn(&mut Value)| {
            let mut v = serde_json::json!({"schema": SCHEMA, "version": VERSION, "kind": "k",
                "key": "d", "savedAt": unix(SystemTime::now()), "data": [1]});
            edit(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        let read = |bytes: &[u8]| decode::<Vec<u32>>(bytes, "k", "d");
        assert_eq!(read(&envelope(&|_| {})).unwrap().data, vec![1]);
        assert!(matches!(read(b"{\"schema"), Err(Unreadable::NotJson(_))));
        let other = envelope(&|v| v["schema"] = "x".into());
        assert!(matches!(read(&other), Err(Unreadable::ForeignSchema)));
        let newer = envelope(&|v| v["version"] = 2.into());
        assert!(matches!(read(&newer), Err(Unreadable::OtherVersion(v)) if v == 2));
        let key = envelope(&|v| v["key"] = "e".into());
        assert!(matches!(read(&key), Err(Unreadable::OtherSettings)));
        let undated = envelope(&|v| v["savedAt"] = Value::Null);
        assert!(matches!(read(&undated), Err(Unreadable::NoSavedAt)));
        let future = envelope(&|v| v["savedAt"] = (unix(SystemTime::now()) + 3600).into());
        assert!(matches!(read(&future), Err(Unreadable::FromTheFuture)));
        let shape = envelope(&|v| v["data"] = "text".into());
        assert!(matches!(read(&shape), Err(Unreadable::Content(_))));
    }

    #[tokio::test]
    async fn the_refresh_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::new(dir.path());
        let held = cache.lock("k", "a", Duration::ZERO).await;
        assert!(held.is_some());
        // A second handle (as another process would open) waits, then gives up.
        assert!(
            cache
                .lock("k", "a", Duration::from_millis(250))
                .await
                .is_none()
        );
        drop(held);
        assert!(cache.lock("k", "a", Duration::ZERO).await.is_some());
    }
}
