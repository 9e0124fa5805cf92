//! Content-addressed train.py sources on the data volume: `$DATA_DIR/autoresearch/scripts/<hex>.py`.
//!
//! When THINK changes the code, an experiment *is* its train.py, and status must stay small
//! (a script can be hundreds of KiB). So status carries only the `sha256:` hash, and the source is
//! written here, flushed, before the proposal is stored: a resumed experiment re-sends exactly
//! the code its voucher paid for. A file whose content does not match its name is never served.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::experiment::train_hash;

/// The store.
#[derive(Clone, Debug)]
pub struct ScriptStore {
    dir: PathBuf,
}

/// `$DATA_DIR/autoresearch/scripts`.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("autoresearch").join("scripts")
}

/// Why a script could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// Not a `sha256:<64 hex>` hash.
    #[error("{0:?} is not a train.py hash (sha256:<64 hex digits>)")]
    BadHash(String),
    /// No script is stored under this hash.
    #[error("train.py {0} is not in the script store (was the data volume replaced?)")]
    Missing(String),
    /// The file exists but its content has another hash.
    #[error("stored train.py {0} does not match its hash; refusing to send it")]
    Corrupt(String),
    /// Reading or writing failed.
    #[error("train.py store at {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ScriptStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path_of(&self, hash: &str) -> Result<PathBuf, ScriptError> {
        let hex = hash
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| ScriptError::BadHash(hash.to_string()))?;
        Ok(self.dir.join(format!("{}.py", hex.to_ascii_lowercase())))
    }

    /// Stores `source` (once: the same content is the same file) and returns its hash.
    pub async fn put(&self, source: &str) -> Result<String, ScriptError> {
        let hash = train_hash(source);
        let path = self.path_of(&hash)?;
        let dir = self.dir.clone();
        let source = source.to_string();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &source))
            .await
            .map_err(|e| ScriptError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        Ok(hash)
    }

    /// The source with this hash, if stored.
    pub async fn get(&self, hash: &str) -> Result<Option<String>, ScriptError> {
        let path = self.path_of(hash)?;
        match tokio::fs::read_to_string(&path).await {
            Ok(source) if train_hash(&source) == hash.to_ascii_lowercase() => Ok(Some(source)),
            Ok(_) => Err(ScriptError::Corrupt(hash.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ScriptError::Io { path, source }),
        }
    }
}

/// Writes to a temporary file, flushes it, and renames it into place, so a reader never sees a
/// partial script and a crash leaves either nothing or the whole file.
fn write_atomically(dir: &Path, path: &Path, source: &str) -> Result<(), ScriptError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScriptError::Io { path, source }
    };
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension(format!("py.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(source.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_script_is_stored_once_under_its_hash_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ScriptStore::new(dir.path().join("scripts"));
        let hash = store.put("DEPTH = 8\n").await.unwrap();
        assert_eq!(hash, train_hash("DEPTH = 8\n"));
        assert_eq!(store.put("DEPTH = 8\n").await.unwrap(), hash);
        assert_eq!(
            std::fs::read_dir(dir.path().join("scripts"))
                .unwrap()
                .count(),
            1
        );
        assert_eq!(
            store.get(&hash).await.unwrap().as_deref(),
            Some("DEPTH = 8\n")
        );
        assert_eq!(store.get(&train_hash("other")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_tampered_file_or_a_malformed_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ScriptStore::new(dir.path());
        let hash = store.put("DEPTH = 8\n").await.unwrap();
        let file = dir
            .path()
            .join(format!("{}.py", hash.trim_start_matches("sha256:")));
        std::fs::write(&file, "DEPTH = 9\n").unwrap();
        assert!(matches!(
            store.get(&hash).await,
            Err(ScriptError::Corrupt(_))
        ));
        for bad in ["sha256:../../etc/passwd", "md5:abc", "sha256:zz"] {
            assert!(
                matches!(store.get(bad).await, Err(ScriptError::BadHash(_))),
                "{bad}"
            );
        }
    }
}
