//! The unified diff of the best train.py against the baseline, for strategies that change the
//! code. Sources come from the engine's content-addressed script store
//! (`$DATA_DIR/autoresearch/scripts/`); a file is used only if its content has the hash asked for.

use std::path::Path;

use similar::TextDiff;

use crate::experiment::train_hash;

/// The source with `hash` (`sha256:<hex>`) in the store at `dir`, named `<hex>.py` or `<hex>`.
pub fn find_script(dir: &Path, hash: &str) -> Option<String> {
    let hex = hash.strip_prefix("sha256:")?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    [format!("{hex}.py"), hex.to_string()]
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok())
        .find(|text| train_hash(text) == hash)
}

/// A unified diff (3 lines of context); empty when the sources are equal.
pub fn unified(baseline: &str, best: &str) -> String {
    TextDiff::from_lines(baseline, best)
        .unified_diff()
        .context_radius(3)
        .header("baseline/train.py", "best/train.py")
        .to_string()
}
