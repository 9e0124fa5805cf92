//! Keep or discard, as autoresearch's program.md does: one rule that hillClimb, the llm lineage,
//! the engine and the reports share.

use serde::{Deserialize, Serialize};

/// What became of a finished experiment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// It beat the best by more than the noise floor: its train.py (and params) is the new base.
    Keep,
    /// It ran, but did not improve enough to be trusted over noise.
    Discard,
    /// It produced no usable `val_bpb` (crashed, timed out, printed none, worker failure).
    Crash,
}

impl Decision {
    /// `keep`, `discard` or `crash`, as results.jsonl and results.tsv spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Keep => "keep",
            Decision::Discard => "discard",
            Decision::Crash => "crash",
        }
    }

    /// The decision a results.jsonl `status` records. Rows written before decisions existed say
    /// `completed` (the run worked; whether it was kept is unknown: `None`) or `failed` /
    /// `worker_failure` (a crash).
    pub fn from_status(status: &str) -> Option<Decision> {
        match status {
            "keep" => Some(Decision::Keep),
            "discard" => Some(Decision::Discard),
            "completed" => None,
            _ => Some(Decision::Crash),
        }
    }
}

/// The decision for a result: no finite `val_bpb` is a crash; the first result is kept; after
/// that a result is kept only if it is lower than the best so far by more than `noise_floor`
/// (a negative or non-finite floor counts as 0).
pub fn decide(best_so_far: Option<f64>, val_bpb: Option<f64>, noise_floor: f64) -> Decision {
    let floor = if noise_floor.is_finite() {
        noise_floor.max(0.0)
    } else {
        0.0
    };
    match (
        val_bpb.filter(|v| v.is_finite()),
        best_so_far.filter(|b| b.is_finite()),
    ) {
        (None, _) => Decision::Crash,
        (Some(_), None) => Decision::Keep,
        (Some(v), Some(best)) if v < best - floor => Decision::Keep,
        (Some(_), Some(_)) => Decision::Discard,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_improvements_beyond_the_noise_floor() {
        assert_eq!(decide(None, Some(1.0), 0.002), Decision::Keep);
        assert_eq!(decide(Some(1.0), Some(0.999), 0.002), Decision::Discard);
        assert_eq!(decide(Some(1.0), Some(0.997), 0.002), Decision::Keep);
        assert_eq!(decide(Some(1.0), Some(1.5), 0.002), Decision::Discard);
        assert_eq!(decide(Some(1.0), None, 0.002), Decision::Crash);
        assert_eq!(decide(Some(1.0), Some(f64::NAN), 0.002), Decision::Crash);
        assert_eq!(decide(Some(1.0), Some(0.9999), -1.0), Decision::Keep);
        assert_eq!(
            serde_json::to_string(&Decision::Discard).unwrap(),
            "\"discard\""
        );
    }

    #[test]
    fn statuses_of_old_and_new_rows_map_to_decisions() {
        assert_eq!(Decision::from_status("keep"), Some(Decision::Keep));
        assert_eq!(Decision::from_status("discard"), Some(Decision::Discard));
        assert_eq!(Decision::from_status("crash"), Some(Decision::Crash));
        assert_eq!(Decision::from_status("completed"), None);
        assert_eq!(
            Decision::from_status("worker_failure"),
            Some(Decision::Crash)
        );
    }
}
