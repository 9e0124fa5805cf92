//! What a researcher looks at: the progress chart, results.tsv, a summary (text or JSON) and the
//! live campaign page, all made from a campaign's history in results.jsonl.

pub mod chart;
pub mod diff;
pub mod history;
pub mod page;
pub mod summary;
pub mod tsv;

pub use chart::ChartData;
pub use history::{Decision, Filter, ResultHistory, Row};
pub use summary::Summary;

use std::path::{Path, PathBuf};

/// Why the report's files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Creating the folder or writing a file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
}

/// The files a report wrote.
#[derive(serde::Serialize, Clone, Debug, PartialEq)]
pub struct Files {
    /// The chart as SVG.
    pub svg: PathBuf,
    /// The chart as PNG.
    pub png: PathBuf,
    /// results.tsv.
    pub tsv: PathBuf,
}

/// Writes `progress.svg`, `progress.png` and `results.tsv` into `dir` (created if missing).
pub fn write_files(history: &ResultHistory, dir: &Path) -> Result<Files, WriteError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let files = Files {
        svg: dir.join("progress.svg"),
        png: dir.join("progress.png"),
        tsv: dir.join("results.tsv"),
    };
    let data = ChartData::new(history);
    std::fs::write(&files.svg, chart::svg(&data)?).map_err(io(&files.svg))?;
    chart::png(&data, &files.png)?;
    std::fs::write(&files.tsv, tsv::render(history)).map_err(io(&files.tsv))?;
    Ok(files)
}

/// The diff of the best train.py against the baseline's, when they differ and both sources are
/// in the script store at `scripts`.
pub fn best_diff(history: &ResultHistory, scripts: &Path) -> Option<String> {
    let (best, baseline) = (history.best()?, history.baseline()?);
    if best.row.train_hash == baseline.row.train_hash {
        return None;
    }
    let old = diff::find_script(scripts, &baseline.row.train_hash)?;
    let new = diff::find_script(scripts, &best.row.train_hash)?;
    Some(diff::unified(&old, &new))
}
