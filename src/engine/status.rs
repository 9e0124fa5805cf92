//! The campaign's phase and conditions, decided from its status, limits and the last CLAIM.
//!
//! [`verdict`] is pure: the reconcile's status write applies it with [`apply`]. Each condition
//! is a [`ConditionUpdate`] with a typed [`ConditionType`], so a script can wait on it:
//! `kubectl wait --for=condition=Succeeded` means the campaign finished by its goal,
//! `maxExperiments` or an exhausted search, and nothing else.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ExperimentCampaign, ExperimentCampaignStatus, Phase};
use crate::ledger::{self, Limits, Stop};
use crate::usdc::Usdc;

/// The condition types the engine writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The spec can run.
    SpecValid,
    /// Discovery found at least one worker.
    WorkersAvailable,
    /// Experiments are being started or finished.
    Progressing,
    /// The campaign has stopped for good (success, failure or budget).
    Complete,
    /// The campaign finished successfully: goal, `maxExperiments` or an exhausted search.
    Succeeded,
    /// The 8004scan day quota is down to its reserve: discovery reads the chain meanwhile.
    IndexQuotaLow,
    /// The payer's USDC balance covers the next voucher (False: `InsufficientBalance`).
    WalletFunded,
    /// The best result was reproduced by another worker.
    Verified,
    /// The ConfigMaps and Secrets the spec names can be read.
    InputsReady,
    /// The remote signer signs for this campaign.
    SignerReady,
    /// results.jsonl can be appended to.
    ResultsWritable,
    /// The API server refused a status write as too large.
    StatusTooLarge,
    /// The payment chain (`ERPC_URL`) answers, and is the payment network's chain.
    ChainReadable,
}

impl ConditionType {
    /// The `type` field as Kubernetes shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::SpecValid => "SpecValid",
            ConditionType::WorkersAvailable => "WorkersAvailable",
            ConditionType::Progressing => "Progressing",
            ConditionType::Complete => "Complete",
            ConditionType::Succeeded => "Succeeded",
            ConditionType::IndexQuotaLow => "IndexQuotaLow",
            ConditionType::WalletFunded => "WalletFunded",
            ConditionType::Verified => "Verified",
            ConditionType::InputsReady => "InputsReady",
            ConditionType::SignerReady => "SignerReady",
            ConditionType::ResultsWritable => "ResultsWritable",
            ConditionType::StatusTooLarge => "StatusTooLarge",
            ConditionType::ChainReadable => "ChainReadable",
        }
    }
}

/// One condition to set.
#[derive(Clone, Debug, PartialEq)]
pub struct ConditionUpdate {
    /// Which condition.
    pub kind: ConditionType,
    /// True or False.
    pub ok: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human text: what is happening and what to do.
    pub message: String,
}

impl ConditionUpdate {
    fn new(
        kind: ConditionType,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            ok,
            reason,
            message: message.into(),
        }
    }
}

/// What the last CLAIM saw, as far as the verdict needs it.
#[derive(Clone, Debug, Default)]
pub struct Sighting<'a> {
    /// Workers found (after exclusions).
    pub workers: usize,
    /// The cheapest acceptable price seen, if any.
    pub cheapest: Option<Usdc>,
    /// Why discovery failed, if it did.
    pub discovery_error: Option<&'a str>,
    /// Whether discovery ran this time (a stopped campaign keeps its last counts).
    pub discovered: bool,
    /// What to say when the index's day quota is nearly spent.
    pub quota_low: Option<&'a str>,
}

/// The phase and conditions a campaign's status should show.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The phase.
    pub phase: Phase,
    /// Conditions to set.
    pub conditions: Vec<ConditionUpdate>,
}

/// Decides phase and conditions. `exhausted`: the strategy has nothing left to propose.
pub fn verdict(
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    limits: &Limits,
    exhausted: bool,
    seen: &Sighting<'_>,
) -> Verdict {
    let idle = status.ledger.is_empty();
    let stop = stop_now(status, limits, seen.cheapest);
    let search_done = stop.is_none() && exhausted && idle && status.pending.is_empty();
    let workers = workers_condition(seen);
    let progressing = progressing(campaign, status, limits, stop, search_done, &workers);
    let phase = phase_of(
        status,
        stop,
        search_done,
        campaign.spec.suspend,
        seen.workers,
    );
    let done = phase.is_final();
    let (reason, message) = if done {
        (progressing.reason, progressing.message.clone())
    } else {
        ("InProgress", "not finished".to_string())
    };
    let succeeded = phase == Phase::Succeeded;
    let mut conditions = vec![
        ConditionUpdate::new(ConditionType::SpecValid, true, "Valid", "the spec is valid"),
        ConditionUpdate::new(
            ConditionType::Progressing,
            progressing.ok,
            progressing.reason,
            progressing.message,
        ),
        ConditionUpdate::new(ConditionType::Complete, done, reason, message.clone()),
        // False with the stop reason when the campaign ended otherwise (budget, failures).
        ConditionUpdate::new(ConditionType::Succeeded, succeeded, reason, message),
    ];
    if seen.discovered {
        conditions.insert(1, workers);
        conditions.push(match seen.quota_low {
            Some(message) => ConditionUpdate::new(
                ConditionType::IndexQuotaLow,
                true,
                "DayQuotaReserve",
                message,
            ),
            None => ConditionUpdate::new(
                ConditionType::IndexQuotaLow,
                false,
                "WithinQuota",
                "the index's quota is not a limit now",
            ),
        });
    }
    conditions.extend(verified(campaign, status, seen));
    Verdict { phase, conditions }
}

/// Condition `Verified`. Verification changes with each count, not only when discovery runs:
/// without a fresh sighting, the workers last counted say whether a check was possible.
fn verified(
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    seen: &Sighting<'_>,
) -> Option<ConditionUpdate> {
    let workers = match (seen.discovered, &status.workers) {
        (true, _) => seen.workers,
        (false, Some(counts)) => counts.discovered as usize,
        (false, None) => return None,
    };
    Some(super::trust::condition(campaign, status, workers))
}

/// The stop reason, including the budget judged against the cheapest price seen.
fn stop_now(
    status: &ExperimentCampaignStatus,
    limits: &Limits,
    cheapest: Option<Usdc>,
) -> Option<Stop> {
    ledger::stop_reason(status, limits).or_else(|| {
        (status.ledger.is_empty() && ledger::budget_stop(status, limits, cheapest))
            .then_some(Stop::BudgetExhausted)
    })
}

fn workers_condition(seen: &Sighting<'_>) -> ConditionUpdate {
    if seen.workers == 0 {
        let why = seen
            .discovery_error
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        ConditionUpdate::new(
            ConditionType::WorkersAvailable,
            false,
            "NoWorkers",
            format!("no worker found by discovery or in discovery.workers{why}; retrying"),
        )
    } else {
        ConditionUpdate::new(
            ConditionType::WorkersAvailable,
            true,
            "WorkersFound",
            format!("{} workers", seen.workers),
        )
    }
}

fn phase_of(
    status: &ExperimentCampaignStatus,
    stop: Option<Stop>,
    search_done: bool,
    suspend: bool,
    workers: usize,
) -> Phase {
    let idle = status.ledger.is_empty();
    match (stop, search_done, suspend) {
        (Some(stop), _, _) if idle => stop.phase(),
        (Some(_), _, _) => Phase::Running,
        (None, true, _) => Phase::Succeeded,
        (None, false, true) if idle => Phase::Suspended,
        (None, false, true) => Phase::Running,
        (None, false, false) if status.submitted == 0 && workers == 0 => Phase::Pending,
        (None, false, false) => Phase::Running,
    }
}

fn progressing(
    campaign: &ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    limits: &Limits,
    stop: Option<Stop>,
    search_done: bool,
    workers: &ConditionUpdate,
) -> ConditionUpdate {
    let idle = status.ledger.is_empty();
    let update = |ok, reason, message: String| {
        ConditionUpdate::new(ConditionType::Progressing, ok, reason, message)
    };
    match (stop, search_done, campaign.spec.suspend) {
        (Some(stop), _, _) if idle => {
            update(false, stop.reason(), stop_message(stop, status, limits))
        }
        (Some(stop), _, _) => update(
            true,
            "Draining",
            format!(
                "{}; waiting for {} experiments in flight",
                stop_message(stop, status, limits),
                status.ledger.len()
            ),
        ),
        (None, true, _) => update(
            false,
            "SearchExhausted",
            "the strategy has no experiment left to propose".into(),
        ),
        (None, false, true) if idle => update(false, "Suspended", "spec.suspend is set".into()),
        (None, false, true) => update(
            true,
            "Suspending",
            "spec.suspend is set; experiments in flight finish".into(),
        ),
        (None, false, false) if status.submitted == 0 && !workers.ok => {
            update(false, "NoWorkers", workers.message.clone())
        }
        (None, false, false) if blocked(status).is_some() => {
            let (reason, message) = blocked(status).unwrap_or_default();
            update(false, reason, message)
        }
        (None, false, false) => update(true, "Running", format!("{} running", status.ledger.len())),
    }
}

/// The conditions that stop a campaign from progressing when they are in their bad state, and
/// the Progressing reason each one gives: (type, status meaning "blocked", reason).
const BLOCKERS: [(ConditionType, &str, &str); 6] = [
    (ConditionType::InputsReady, "False", "InputMissing"),
    (ConditionType::SignerReady, "False", "SignerFailed"),
    (ConditionType::ResultsWritable, "False", "ResultsUnwritable"),
    (ConditionType::StatusTooLarge, "True", "StatusTooLarge"),
    (ConditionType::WalletFunded, "False", "InsufficientBalance"),
    (ConditionType::ChainReadable, "False", "ChainUnreadable"),
];

/// Why the campaign cannot progress, if a blocking condition says so: Progressing's reason and
/// the blocking condition's message.
pub fn blocked(status: &ExperimentCampaignStatus) -> Option<(&'static str, String)> {
    BLOCKERS.iter().find_map(|(kind, bad, reason)| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == kind.as_str() && c.status == *bad)
            .map(|c| (*reason, c.message.clone()))
    })
}

/// Whether `campaign`'s status has condition `kind` with status False.
pub fn is_false(campaign: &ExperimentCampaign, kind: ConditionType) -> bool {
    campaign.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == kind.as_str() && c.status == "False")
    })
}

/// Why the campaign stopped, in words.
pub fn stop_message(stop: Stop, status: &ExperimentCampaignStatus, limits: &Limits) -> String {
    match stop {
        Stop::GoalReached => format!(
            "val_bpb {} reached the goal {}",
            status.best.as_ref().map_or(f64::NAN, |b| b.val_bpb),
            limits.goal.unwrap_or_default()
        ),
        Stop::MaxExperimentsReached => format!(
            "{} experiments finished (maxExperiments)",
            ledger::finished(status)
        ),
        Stop::TooManyFailures => format!(
            "{} experiments failed (maxFailedExperiments {})",
            status.failed, limits.max_failed
        ),
        Stop::ProposerExhausted => format!(
            "the model was called {} times (search.llm.maxCalls); raise it to go on",
            ledger::model_calls(status)
        ),
        Stop::BudgetExhausted => format!(
            "{} of {} USDC spent; what is left pays no acceptable worker",
            status.spent.as_deref().unwrap_or("0"),
            limits.total
        ),
    }
}

/// Writes a verdict into the status.
pub fn apply(status: &mut ExperimentCampaignStatus, verdict: Verdict, generation: Option<i64>) {
    status.phase = Some(verdict.phase);
    for update in verdict.conditions {
        set_condition(&mut status.conditions, condition(&update, generation));
    }
}

/// A Kubernetes condition from an update, stamped now.
pub fn condition(update: &ConditionUpdate, generation: Option<i64>) -> Condition {
    Condition {
        type_: update.kind.as_str().to_string(),
        status: if update.ok { "True" } else { "False" }.to_string(),
        reason: update.reason.to_string(),
        message: update.message.clone(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Replaces the condition of the same type, keeping its transition time when its status did not
/// change (so that an unchanged condition does not cause a write).
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time: time,
                ..new
            };
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LedgerEntry, ResultSummary};

    fn campaign(suspend: bool) -> ExperimentCampaign {
        let spec = serde_json::from_value(serde_json::json!({
            "trainScript": {"inline": "x"},
            "search": {"strategy": "list", "experiments": [{}]},
            "maxExperiments": 3,
            "maxFailedExperiments": 2,
            "objective": {"goal": 0.9},
            "budget": {"total": "0.03", "maxPricePerExperiment": "0.01"},
            "suspend": suspend
        }))
        .unwrap();
        ExperimentCampaign::new("c", spec)
    }

    fn limits(c: &ExperimentCampaign) -> Limits {
        Limits::from_spec(&c.spec).unwrap()
    }

    fn seen(workers: usize) -> Sighting<'static> {
        Sighting {
            workers,
            cheapest: Some(Usdc::from_atomic(10_000)),
            discovery_error: None,
            discovered: true,
            quota_low: None,
        }
    }

    fn get(v: &Verdict, kind: ConditionType) -> (bool, &'static str) {
        let c = v.conditions.iter().find(|c| c.kind == kind).unwrap();
        (c.ok, c.reason)
    }

    fn best(v: f64) -> Option<ResultSummary> {
        Some(ResultSummary {
            val_bpb: v,
            ..ResultSummary::default()
        })
    }

    #[test]
    fn each_stop_reason_sets_phase_complete_and_succeeded() {
        let c = campaign(false);
        let cases = [
            // (status, phase, Complete reason, Succeeded)
            (
                ExperimentCampaignStatus {
                    succeeded: 1,
                    best: best(0.85),
                    ..Default::default()
                },
                Phase::Succeeded,
                "GoalReached",
                true,
            ),
            (
                ExperimentCampaignStatus {
                    succeeded: 3,
                    best: best(1.0),
                    spent: Some("0.03".into()),
                    ..Default::default()
                },
                Phase::Succeeded,
                "MaxExperimentsReached",
                true,
            ),
            (
                ExperimentCampaignStatus {
                    failed: 2,
                    ..Default::default()
                },
                Phase::Failed,
                "TooManyFailures",
                false,
            ),
            (
                ExperimentCampaignStatus {
                    succeeded: 0,
                    spent: Some("0.025".into()),
                    ..Default::default()
                },
                Phase::BudgetExhausted,
                "BudgetExhausted",
                false,
            ),
        ];
        for (status, phase, reason, succeeded) in cases {
            let v = verdict(&c, &status, &limits(&c), false, &seen(2));
            assert_eq!(v.phase, phase, "{reason}");
            assert_eq!(get(&v, ConditionType::Complete), (true, reason));
            assert_eq!(get(&v, ConditionType::Succeeded), (succeeded, reason));
            assert_eq!(get(&v, ConditionType::Progressing), (false, reason));
        }
    }

    #[test]
    fn an_exhausted_search_succeeds_and_a_running_one_is_in_progress() {
        let c = campaign(false);
        let idle = ExperimentCampaignStatus {
            succeeded: 1,
            ..Default::default()
        };
        let v = verdict(&c, &idle, &limits(&c), true, &seen(1));
        assert_eq!(v.phase, Phase::Succeeded);
        assert_eq!(get(&v, ConditionType::Succeeded), (true, "SearchExhausted"));
        let running = ExperimentCampaignStatus {
            submitted: 1,
            ledger: vec![LedgerEntry::default()],
            ..Default::default()
        };
        let v = verdict(&c, &running, &limits(&c), false, &seen(1));
        assert_eq!(v.phase, Phase::Running);
        assert_eq!(get(&v, ConditionType::Progressing), (true, "Running"));
        assert_eq!(get(&v, ConditionType::Succeeded), (false, "InProgress"));
    }

    #[test]
    fn a_stop_with_experiments_in_flight_drains_before_it_is_final() {
        let c = campaign(false);
        let status = ExperimentCampaignStatus {
            failed: 2,
            ledger: vec![LedgerEntry::default()],
            ..Default::default()
        };
        let v = verdict(&c, &status, &limits(&c), false, &seen(1));
        assert_eq!(v.phase, Phase::Running);
        assert_eq!(get(&v, ConditionType::Progressing), (true, "Draining"));
        assert!(!get(&v, ConditionType::Complete).0);
    }

    #[test]
    fn verified_follows_the_verification_also_when_discovery_did_not_run() {
        let c = campaign(false);
        let mut status = ExperimentCampaignStatus {
            verification: Some(crate::crd::Verification {
                experiment_id: "exp-1".into(),
                verified: true,
                replications: vec!["exp-1-r1".into()],
            }),
            ..Default::default()
        };
        let mut quiet = seen(3);
        quiet.discovered = false;
        let v = verdict(&c, &status, &limits(&c), false, &quiet);
        assert!(
            v.conditions
                .iter()
                .all(|c| c.kind != ConditionType::Verified),
            "no workers ever counted: nothing to say"
        );
        status.workers = Some(crate::crd::WorkerCounts {
            discovered: 3,
            ..Default::default()
        });
        let v = verdict(&c, &status, &limits(&c), false, &quiet);
        assert_eq!(get(&v, ConditionType::Verified), (true, "Replicated"));
    }

    #[test]
    fn suspend_and_no_workers_are_said_and_workers_is_only_set_when_discovery_ran() {
        let v = verdict(
            &campaign(true),
            &Default::default(),
            &limits(&campaign(true)),
            false,
            &seen(1),
        );
        assert_eq!(v.phase, Phase::Suspended);
        assert_eq!(get(&v, ConditionType::Progressing), (false, "Suspended"));
        let c = campaign(false);
        let mut none = seen(0);
        none.discovery_error = Some("index down");
        let v = verdict(&c, &Default::default(), &limits(&c), false, &none);
        assert_eq!(v.phase, Phase::Pending);
        assert_eq!(
            get(&v, ConditionType::WorkersAvailable),
            (false, "NoWorkers")
        );
        let message = &v
            .conditions
            .iter()
            .find(|c| c.kind == ConditionType::WorkersAvailable)
            .unwrap()
            .message;
        assert!(message.contains("index down"), "{message}");
        none.quota_low = Some("the 8004scan day quota is nearly spent");
        let v = verdict(&c, &Default::default(), &limits(&c), false, &none);
        assert_eq!(
            get(&v, ConditionType::IndexQuotaLow),
            (true, "DayQuotaReserve")
        );
        none.discovered = false;
        let v = verdict(&c, &Default::default(), &limits(&c), false, &none);
        assert!(
            v.conditions
                .iter()
                .all(|c| c.kind != ConditionType::IndexQuotaLow)
        );
        assert!(
            v.conditions
                .iter()
                .all(|c| c.kind != ConditionType::WorkersAvailable)
        );
    }

    #[test]
    fn an_unchanged_condition_keeps_its_transition_time() {
        let mut conditions = Vec::new();
        let update = ConditionUpdate::new(ConditionType::Progressing, true, "Running", "1 running");
        set_condition(&mut conditions, condition(&update, Some(1)));
        let first = conditions[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = ConditionUpdate {
            message: "2 running".into(),
            ..update.clone()
        };
        set_condition(&mut conditions, condition(&again, Some(1)));
        assert_eq!(conditions[0].last_transition_time, first);
        assert_eq!(conditions[0].message, "2 running");
        let flipped = ConditionUpdate {
            ok: false,
            ..update
        };
        set_condition(&mut conditions, condition(&flipped, Some(1)));
        assert_ne!(conditions[0].last_transition_time, first);
        assert_eq!(conditions.len(), 1);
    }
}
