//! results.tsv in autoresearch's exact format: tab-separated, header `commit val_bpb memory_gb
//! status description` (tabs between), val_bpb with 6 decimals, memory in GB with one,
//! and 0 for what a crashed run (or this coordinator) cannot know, as autoresearch writes it.

use std::fmt::Write;

use super::history::{Decision, ResultHistory, RunKind, short_hash};

/// The header line.
pub const HEADER: &str = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n";

/// The whole file.
pub fn render(history: &ResultHistory) -> String {
    let mut out = String::from(HEADER);
    for e in &history.entries {
        let crashed = e.decision == Decision::Crash;
        let val_bpb = if crashed {
            0.0
        } else {
            e.value().unwrap_or(0.0)
        };
        let memory = if crashed {
            0.0
        } else {
            e.row.memory_gb.filter(|m| m.is_finite()).unwrap_or(0.0)
        };
        let description = match e.role {
            RunKind::Replication => format!(
                "replication of {}: {}",
                e.row.replicates.as_deref().unwrap_or("?"),
                e.label
            ),
            _ => e.label.clone(),
        };
        // A tab or newline in a description would break the columns.
        let description = description.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(
            out,
            "{}\t{val_bpb:.6}\t{memory:.1}\t{}\t{description}",
            short_hash(&e.row.train_hash),
            e.decision.as_str(),
        );
    }
    out
}
