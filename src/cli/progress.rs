//! The live progress of `loop`: a bar on a terminal (experiments done over the maximum, running,
//! best, spent over budget), one plain line per change otherwise, nothing with `--json` (stdout
//! stays machine-readable and stderr quiet).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::crd::{ExperimentCampaign, Phase};

/// The bar of the running loop, if one is drawn, so that notices print above it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a line on stderr, above the bar when one is drawn.
pub fn line(text: &str) {
    match BAR.lock().ok().as_deref().and_then(Option::as_ref) {
        Some(bar) => bar.println(text),
        None => eprintln!("{text}"),
    }
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// An indicatif bar on stderr.
    Bar,
    /// A line on stderr each time something changes.
    Lines,
    /// Nothing (`--json`).
    Quiet,
}

impl Mode {
    /// A bar when stderr is a terminal, lines when it is not, nothing for `--json`.
    pub fn detect(json: bool) -> Self {
        if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

/// What the display shows, read from the campaign.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Experiments finished.
    pub done: u64,
    /// maxExperiments.
    pub max: u64,
    /// Running now.
    pub running: u32,
    /// Best val_bpb and its experiment.
    pub best: Option<(f64, String)>,
    /// USDC spent.
    pub spent: String,
    /// budget.total.
    pub budget: String,
    /// The phase.
    pub phase: Phase,
}

impl Snapshot {
    /// Reads the campaign's spec and status.
    pub fn of(campaign: &ExperimentCampaign) -> Self {
        let s = campaign.status.clone().unwrap_or_default();
        Snapshot {
            done: u64::from(s.succeeded + s.failed),
            max: u64::from(campaign.spec.max_experiments),
            running: s.running,
            // An unverified best (one worker's word) says so.
            best: s.best.map(|b| {
                let unverified = s
                    .verification
                    .as_ref()
                    .is_some_and(|v| !v.verified && v.experiment_id == b.experiment_id);
                let id = if unverified {
                    format!("{}, unverified", b.experiment_id)
                } else {
                    b.experiment_id
                };
                (b.val_bpb, id)
            }),
            spent: s.spent.unwrap_or_else(|| "0".into()),
            budget: campaign.spec.budget.total.clone(),
            phase: s.phase.unwrap_or(Phase::Pending),
        }
    }

    /// Running, best and spend, for the bar's message.
    pub fn message(&self) -> String {
        let best = match &self.best {
            Some((v, id)) => format!("best {v:.6} ({id})"),
            None => "no result yet".into(),
        };
        format!(
            "{:?}: running {}, {best}, spent {}/{} USDC",
            self.phase, self.running, self.spent, self.budget
        )
    }

    /// The plain line.
    pub fn line(&self) -> String {
        format!("[{}/{}] {}", self.done, self.max, self.message())
    }
}

/// The progress display of one loop.
pub struct Progress {
    mode: Mode,
    last: Option<Snapshot>,
}

impl Progress {
    /// Starts showing progress in `mode`.
    pub fn start(mode: Mode) -> Self {
        if mode == Mode::Bar {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] [{bar:30.green/white}] {pos}/{len} {wide_msg}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            if let Ok(mut slot) = BAR.lock() {
                *slot = Some(bar);
            }
        }
        Progress { mode, last: None }
    }

    /// Shows the campaign's state if it changed.
    pub fn update(&mut self, campaign: &ExperimentCampaign) {
        let now = Snapshot::of(campaign);
        if self.last.as_ref() == Some(&now) {
            return;
        }
        match self.mode {
            Mode::Bar => {
                if let Some(bar) = BAR.lock().ok().as_deref().and_then(Option::as_ref) {
                    bar.set_length(now.max);
                    bar.set_position(now.done);
                    bar.set_message(now.message());
                }
            }
            Mode::Lines => eprintln!("{}", now.line()),
            Mode::Quiet => {}
        }
        self.last = Some(now);
    }
}

impl Drop for Progress {
    /// Leaves the final bar on screen and lets notices print plainly again.
    fn drop(&mut self) {
        if let Some(bar) = BAR.lock().ok().and_then(|mut slot| slot.take()) {
            bar.finish();
            // The bar's line has no newline of its own; what follows starts below it.
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_snapshot_reads_done_over_max_running_best_and_spend() {
        let mut c: ExperimentCampaign = serde_json::from_value(json!({
            "apiVersion": "autoresearch.obol.org/v1alpha1", "kind": "ExperimentCampaign",
            "metadata": {"name": "local"},
            "spec": {"trainScript": {"inline": "x"}, "search": {"strategy": "list", "experiments": [{}]},
                     "maxExperiments": 12, "budget": {"total": "0.12", "maxPricePerExperiment": "0.01"}}
        }))
        .unwrap();
        assert_eq!(
            Snapshot::of(&c).line(),
            "[0/12] Pending: running 0, no result yet, spent 0/0.12 USDC"
        );
        c.status = Some(
            serde_json::from_value(json!({"phase": "Running", "succeeded": 3, "failed": 1, "running": 2,
                "spent": "0.04", "best": {"experimentId": "exp-1", "valBpb": 0.9712, "worker": "w"}}))
            .unwrap(),
        );
        assert_eq!(
            Snapshot::of(&c).line(),
            "[4/12] Running: running 2, best 0.971200 (exp-1), spent 0.04/0.12 USDC"
        );
        assert_eq!(Mode::detect(true), Mode::Quiet);
    }
}
