//! The CLI's place for the best train.py: `$DATA_DIR/autoresearch/<campaign>/best_train.py`,
//! replaced atomically so a reader never sees half a script.

use std::path::PathBuf;

use crate::engine::KeepBest;

/// Writes the best train.py of one campaign to a file.
pub struct BestFile {
    path: PathBuf,
}

impl BestFile {
    /// The file for `campaign` under `data_dir`.
    pub fn new(data_dir: &std::path::Path, campaign: &str) -> Self {
        Self {
            path: data_dir
                .join("autoresearch")
                .join(campaign)
                .join("best_train.py"),
        }
    }

    fn write(&self, train_py: &str) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("py.tmp");
        std::fs::write(&tmp, train_py)?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl KeepBest for BestFile {
    fn keep<'a>(
        &'a self,
        train_py: &'a str,
        _train_hash: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<String>> {
        let written = self.write(train_py);
        Box::pin(async move {
            match written {
                Ok(()) => Some(self.path.display().to_string()),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "could not store the best train.py");
                    None
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_best_script_replaces_the_last_one_in_the_campaigns_folder() {
        let dir = tempfile::tempdir().unwrap();
        let best = BestFile::new(dir.path(), "c");
        let at = best.keep("DEPTH = 6\n", "sha256:00").await.unwrap();
        assert!(at.ends_with("autoresearch/c/best_train.py"), "{at}");
        best.keep("DEPTH = 4\n", "sha256:01").await.unwrap();
        assert_eq!(std::fs::read_to_string(&at).unwrap(), "DEPTH = 4\n");
    }
}
