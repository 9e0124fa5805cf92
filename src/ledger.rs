//! The campaign's books: pure transitions of `ExperimentCampaignStatus` that enforce the money
//! invariants. Nothing here does I/O, so each rule is unit-tested directly; the controller and the
//! `loop` command apply these transitions to the status they persist.
//!
//! The life of an experiment in status:
//! `pending` (proposed) → `ledger` (voucher signed and reserved against the budget, written before
//! it is sent) → counted in `succeeded`/`failed`, `spent`, `leaderboard` (and removed from the
//! ledger in the same write, so it is counted exactly once). An attempt that fails on the worker's
//! side without paying goes back to `pending` to be tried on another worker.

use crate::crd::{
    ExperimentCampaignSpec, ExperimentCampaignStatus, LEADERBOARD_SIZE, LedgerEntry, PaymentState,
    PendingExperiment, Phase, ResultSummary, SpecError,
};
use crate::usdc::Usdc;

/// Attempts per experiment before it is recorded as failed.
pub const MAX_ATTEMPTS: u32 = 3;

/// The limits a campaign's spec sets, parsed once.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// `budget.total`.
    pub total: Usdc,
    /// `budget.maxPricePerExperiment`.
    pub max_price: Usdc,
    /// `maxExperiments`.
    pub max_experiments: u32,
    /// `parallelism`.
    pub parallelism: u32,
    /// `maxFailedExperiments`.
    pub max_failed: u32,
    /// `objective.goal`.
    pub goal: Option<f64>,
    /// `search.llm.maxCalls`, for an llm campaign.
    pub max_model_calls: Option<u32>,
}

impl Limits {
    /// Parses and checks the spec's limits.
    pub fn from_spec(spec: &ExperimentCampaignSpec) -> Result<Self, SpecError> {
        let (total, max_price) = spec.validate()?;
        Ok(Self {
            total,
            max_price,
            max_experiments: spec.max_experiments,
            parallelism: spec.parallelism,
            max_failed: spec.max_failed_experiments,
            goal: spec.objective.goal,
            max_model_calls: spec
                .search
                .llm
                .as_ref()
                .filter(|_| spec.search.strategy == crate::crd::Strategy::Llm)
                .map(|llm| llm.max_calls),
        })
    }
}

/// Why a reservation was refused. Each is a normal outcome, not a bug: the caller drops the
/// (unsent) voucher and tries again later or stops.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    /// The spec cannot be read (it changed under a running experiment).
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    /// The experiment is already in flight or finished.
    #[error("experiment {0} is already in flight or finished")]
    Duplicate(String),
    /// The price is above `maxPricePerExperiment`.
    #[error("price {asked} USDC is above maxPricePerExperiment {max} USDC")]
    OverMaxPrice {
        /// What the worker asked.
        asked: Usdc,
        /// The campaign's cap.
        max: Usdc,
    },
    /// Spent plus in flight plus this price would exceed the total.
    #[error("price {asked} USDC is more than the {left} USDC left in the budget")]
    OverBudget {
        /// What the worker asked.
        asked: Usdc,
        /// What is left after spent and in-flight amounts.
        left: Usdc,
    },
    /// `parallelism` experiments are already running.
    #[error("{0} experiments are already running (parallelism)")]
    NoSlot(u32),
    /// Finished plus running experiments already reach `maxExperiments`.
    #[error("maxExperiments {0} reached")]
    MaxExperiments(u32),
    /// `spec.suspend` is set: nothing new starts.
    #[error("the campaign is suspended")]
    Suspended,
    /// The campaign reached a stop reason (goal, maxExperiments, failures, budget).
    #[error("the campaign has stopped: {0}")]
    Stopped(Stop),
    /// The campaign is being deleted: only paid experiments finish.
    #[error("the campaign is being deleted")]
    Deleting,
    /// The campaign's signer (URL or token) changed since the voucher was signed ahead.
    #[error("the campaign's signer changed since the voucher was signed")]
    SignerChanged,
    /// A condition blocks the campaign (a signer failure, say): nothing new is sent.
    #[error("the campaign is blocked: {0}")]
    Blocked(String),
    /// The worker already has a voucher signed ahead for it.
    #[error("worker {0} already has a voucher signed ahead")]
    AheadTaken(String),
    /// The status carries an amount this version cannot read; spending stops rather than guess.
    #[error("status amount {0:?} is unreadable; refusing to spend")]
    Unreadable(String),
}

/// `status.strategyState` key of an llm campaign: model calls made so far.
pub const STATE_MODEL_CALLS: &str = "llmCalls";

/// Model calls an llm campaign has made.
pub fn model_calls(status: &ExperimentCampaignStatus) -> u32 {
    status
        .strategy_state
        .get(STATE_MODEL_CALLS)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// USDC spent so far (settled or possibly settled).
pub fn spent(status: &ExperimentCampaignStatus) -> Result<Usdc, Refusal> {
    match &status.spent {
        None => Ok(Usdc::ZERO),
        Some(s) => s.parse().map_err(|_| Refusal::Unreadable(s.clone())),
    }
}

/// USDC of finished experiments whose payment the chain could neither confirm nor refute.
pub fn spent_uncertain(status: &ExperimentCampaignStatus) -> Result<Usdc, Refusal> {
    match &status.spent_uncertain {
        None => Ok(Usdc::ZERO),
        Some(s) => s.parse().map_err(|_| Refusal::Unreadable(s.clone())),
    }
}

/// Records where the chain's judgement of an in-flight voucher stands (shown in status).
/// Returns whether the entry was found.
pub fn mark_payment(
    status: &mut ExperimentCampaignStatus,
    experiment_id: &str,
    state: PaymentState,
) -> bool {
    match status
        .ledger
        .iter_mut()
        .find(|e| e.experiment_id == experiment_id)
    {
        Some(entry) => {
            entry.payment_state = Some(state);
            true
        }
        None => false,
    }
}

/// USDC reserved by experiments in flight.
pub fn in_flight(status: &ExperimentCampaignStatus) -> Result<Usdc, Refusal> {
    status.ledger.iter().try_fold(Usdc::ZERO, |sum, e| {
        let amount =
            Usdc::parse_atomic(&e.amount).map_err(|_| Refusal::Unreadable(e.amount.clone()))?;
        sum.checked_add(amount)
            .ok_or_else(|| Refusal::Unreadable(e.amount.clone()))
    })
}

/// What the budget still allows: total − spent − in flight.
pub fn budget_left(status: &ExperimentCampaignStatus, limits: &Limits) -> Result<Usdc, Refusal> {
    let flying = in_flight(status)?;
    let committed = spent(status)?
        .checked_add(spent_uncertain(status)?)
        .and_then(|c| c.checked_add(flying))
        .ok_or_else(|| Refusal::Unreadable("overflow".into()))?;
    Ok(limits.total.saturating_sub(committed))
}

/// Experiments with a final answer.
pub fn finished(status: &ExperimentCampaignStatus) -> u32 {
    status.succeeded + status.failed
}

/// Whether an experiment id is pending, in flight, or among the top results.
/// (The full history is in results.jsonl; the engine checks that too.)
pub fn knows(status: &ExperimentCampaignStatus, experiment_id: &str) -> bool {
    status
        .ledger
        .iter()
        .any(|e| e.experiment_id == experiment_id)
        || status
            .pending
            .iter()
            .any(|p| p.experiment_id == experiment_id)
}

/// Adds proposals to `pending`, skipping ids already known. Returns how many were added.
pub fn propose(status: &mut ExperimentCampaignStatus, proposals: Vec<PendingExperiment>) -> usize {
    let mut added = 0;
    for p in proposals {
        if !knows(status, &p.experiment_id) {
            status.pending.push(p);
            added += 1;
        }
    }
    added
}

/// Whether a ledger entry's voucher is signed ahead and not sent yet.
pub fn is_ahead(entry: &LedgerEntry) -> bool {
    entry.payment_state == Some(PaymentState::SignedAhead)
}

/// Ledger entries whose voucher was sent: the experiments running on workers.
pub fn running(status: &ExperimentCampaignStatus) -> u32 {
    status.ledger.iter().filter(|e| !is_ahead(e)).count() as u32
}

/// How many more experiments may be started now (parallelism and maxExperiments).
pub fn free_slots(status: &ExperimentCampaignStatus, limits: &Limits) -> u32 {
    let by_parallelism = limits.parallelism.saturating_sub(running(status));
    by_parallelism.min(unstarted(status, limits))
}

/// What `maxExperiments` still allows to be reserved: every ledger entry counts.
/// How many more experiments `maxExperiments` lets start.
pub fn unstarted(status: &ExperimentCampaignStatus, limits: &Limits) -> u32 {
    limits
        .max_experiments
        .saturating_sub(finished(status) + status.ledger.len() as u32)
}

/// Ledger entries signed ahead and not sent.
fn waiting(status: &ExperimentCampaignStatus) -> u32 {
    status.ledger.iter().filter(|e| is_ahead(e)).count() as u32
}

/// Reserves a signed voucher against the budget before it is sent (docs/design.md, invariants 1 and 2).
/// The entry's experiment leaves `pending`. Nothing is changed on refusal.
pub fn reserve(
    status: &mut ExperimentCampaignStatus,
    limits: &Limits,
    entry: LedgerEntry,
) -> Result<(), Refusal> {
    admissible(status, limits, &entry)?;
    let running = running(status);
    if running >= limits.parallelism {
        return Err(Refusal::NoSlot(running));
    }
    take_from_pending(status, limits, entry)
}

/// Checks shared by both reservations: not a duplicate, under the price cap, within the budget
/// (every ledger entry counts, sent or signed ahead).
fn admissible(
    status: &ExperimentCampaignStatus,
    limits: &Limits,
    entry: &LedgerEntry,
) -> Result<(), Refusal> {
    if status
        .ledger
        .iter()
        .any(|e| e.experiment_id == entry.experiment_id)
    {
        return Err(Refusal::Duplicate(entry.experiment_id.clone()));
    }
    let asked =
        Usdc::parse_atomic(&entry.amount).map_err(|_| Refusal::Unreadable(entry.amount.clone()))?;
    if asked > limits.max_price {
        return Err(Refusal::OverMaxPrice {
            asked,
            max: limits.max_price,
        });
    }
    let left = budget_left(status, limits)?;
    if asked > left {
        return Err(Refusal::OverBudget { asked, left });
    }
    Ok(())
}

/// Moves the experiment from `pending` to the ledger. `maxExperiments` counts every entry.
fn take_from_pending(
    status: &mut ExperimentCampaignStatus,
    limits: &Limits,
    entry: LedgerEntry,
) -> Result<(), Refusal> {
    if unstarted(status, limits) == 0 {
        return Err(Refusal::MaxExperiments(limits.max_experiments));
    }
    status
        .pending
        .retain(|p| p.experiment_id != entry.experiment_id);
    status.ledger.push(entry);
    status.submitted += 1;
    refresh_derived(status, limits);
    Ok(())
}

/// Experiments that may still be signed ahead: one per busy worker at most, so at most
/// `parallelism` in all, within `maxExperiments`.
pub fn ahead_slots(status: &ExperimentCampaignStatus, limits: &Limits) -> u32 {
    let by_parallelism = limits.parallelism.saturating_sub(waiting(status));
    by_parallelism.min(unstarted(status, limits))
}

/// Reserves a voucher signed ahead for `entry.worker`, to be sent when the experiment running
/// there answers (state `SignedAhead`). It counts against the budget and `maxExperiments` like
/// any entry; at most one per worker and `parallelism` in all.
pub fn reserve_ahead(
    status: &mut ExperimentCampaignStatus,
    limits: &Limits,
    mut entry: LedgerEntry,
) -> Result<(), Refusal> {
    admissible(status, limits, &entry)?;
    if status
        .ledger
        .iter()
        .any(|e| is_ahead(e) && e.worker == entry.worker)
    {
        return Err(Refusal::AheadTaken(entry.worker));
    }
    let ahead = waiting(status);
    if ahead >= limits.parallelism {
        return Err(Refusal::NoSlot(ahead));
    }
    entry.payment_state = Some(PaymentState::SignedAhead);
    take_from_pending(status, limits, entry)
}

/// Shows a signed-ahead voucher as sent (running). Its worker has answered its previous
/// experiment, whose entry may not be counted yet: `parallelism` is checked against the other
/// workers running one of the campaign's experiments.
pub fn promote(
    status: &mut ExperimentCampaignStatus,
    limits: &Limits,
    experiment_id: &str,
    nonce: &str,
) -> Result<(), Refusal> {
    let Some(at) = status
        .ledger
        .iter()
        .position(|e| e.experiment_id == experiment_id && e.nonce == nonce && is_ahead(e))
    else {
        return Err(Refusal::Duplicate(experiment_id.to_string()));
    };
    let worker = &status.ledger[at].worker;
    // Workers, not entries: another worker's answered entry may wait for its count beside the
    // one sent after it.
    let mut elsewhere: Vec<&str> = status
        .ledger
        .iter()
        .filter(|e| !is_ahead(e) && &e.worker != worker)
        .map(|e| e.worker.as_str())
        .collect();
    elsewhere.sort_unstable();
    elsewhere.dedup();
    let elsewhere = elsewhere.len() as u32;
    if elsewhere >= limits.parallelism {
        return Err(Refusal::NoSlot(elsewhere));
    }
    status.ledger[at].payment_state = None;
    refresh_derived(status, limits);
    Ok(())
}

/// Drops a signed-ahead voucher its task knows it never sent: the entry leaves the ledger
/// (releasing its amount) and the experiment is pending again, with no attempt counted. Returns
/// whether the entry was there. An entry shown as sent is never dropped here: only its answer
/// or the chain ends it.
pub fn drop_ahead(
    status: &mut ExperimentCampaignStatus,
    limits: &Limits,
    experiment_id: &str,
    nonce: &str,
) -> bool {
    let Some(at) = status
        .ledger
        .iter()
        .position(|e| e.experiment_id == experiment_id && e.nonce == nonce && is_ahead(e))
    else {
        return false;
    };
    let entry = status.ledger.remove(at);
    status.submitted = status.submitted.saturating_sub(1);
    let mut back = retry_of(entry);
    back.attempts = back.attempts.saturating_sub(1);
    back.avoid.clear();
    status.pending.insert(0, back);
    refresh_derived(status, limits);
    true
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// The worker ran the experiment and gave a valid answer: a finite, non-negative val_bpb
    /// for this experiment id (`result`), or a failed run (`None`: train.py crashed or timed out).
    Finished {
        /// The result, when the run succeeded.
        result: Option<ResultSummary>,
        /// What was paid for it.
        paid: Usdc,
    },
    /// The attempt failed on the worker's side (error, busy, timeout, dropped connection, an
    /// invalid answer). `paid` is what may have settled: zero only when the gate proved that it
    /// did not settle.
    WorkerFailed {
        /// Amount that settled or may have settled.
        paid: Usdc,
        /// What went wrong, for the event and the log.
        reason: String,
    },
}

impl Ending {
    /// What was paid (or may have been) for the attempt.
    pub fn paid(&self) -> Usdc {
        match self {
            Ending::Finished { paid, .. } | Ending::WorkerFailed { paid, .. } => *paid,
        }
    }

    /// The same ending with its result as status keeps it: named by the campaign's experiment id
    /// (the worker knows it under the campaign-unique id it was sent), with the entry's params
    /// and a hash of the config instead of the config, so status stays small whatever
    /// `baseConfig` holds.
    pub fn for_entry(mut self, entry: &LedgerEntry) -> Self {
        if let Ending::Finished {
            result: Some(r), ..
        } = &mut self
        {
            r.experiment_id = entry.experiment_id.clone();
            let config = r.config.take().or_else(|| entry.config.clone());
            r.config_hash = config.as_ref().map(crate::experiment::config_hash);
            r.params = entry.params.clone();
        }
        self
    }
}

/// What `complete` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Counted as a result (succeeded or failed experiment).
    Counted {
        /// Whether it succeeded.
        succeeded: bool,
        /// Whether it is the new best.
        new_best: bool,
    },
    /// The attempt failed without paying; the experiment is pending again for another worker.
    Retry,
    /// There was no ledger entry: it was already counted (a replayed completion).
    AlreadyCounted,
}

/// Records how an in-flight experiment ended, removing its ledger entry in the same change so
/// that it is counted exactly once (docs/design.md, invariant 3).
pub fn complete(
    status: &mut ExperimentCampaignStatus,
    limits: &Limits,
    experiment_id: &str,
    outcome: Ending,
) -> Result<Recorded, Refusal> {
    let Some(index) = status
        .ledger
        .iter()
        .position(|e| e.experiment_id == experiment_id)
    else {
        return Ok(Recorded::AlreadyCounted);
    };
    let paid = outcome.paid();
    // What the chain could not decide is counted apart from what it showed settled.
    let undecided = status.ledger[index].payment_state == Some(PaymentState::Undecided);
    let (counter, field) = if undecided {
        (spent_uncertain(status)?, &mut status.spent_uncertain)
    } else {
        (spent(status)?, &mut status.spent)
    };
    let total = counter
        .checked_add(paid)
        .ok_or_else(|| Refusal::Unreadable("overflow".into()))?;
    *field = Some(total.to_string());
    let entry = status.ledger.remove(index);
    let recorded = match outcome {
        Ending::Finished {
            result: Some(result),
            ..
        } if is_valid_val_bpb(result.val_bpb) => {
            status.succeeded += 1;
            let new_best = add_to_leaderboard(status, result);
            Recorded::Counted {
                succeeded: true,
                new_best,
            }
        }
        Ending::Finished { .. } => {
            status.failed += 1;
            Recorded::Counted {
                succeeded: false,
                new_best: false,
            }
        }
        Ending::WorkerFailed { paid, .. } => {
            status.worker_failures += 1;
            // Retrying after a payment that may have settled would pay twice for one
            // experiment: only an attempt that provably paid nothing goes to another worker.
            if paid == Usdc::ZERO && entry.attempt < MAX_ATTEMPTS {
                status.pending.insert(0, retry_of(entry));
                Recorded::Retry
            } else {
                status.failed += 1;
                Recorded::Counted {
                    succeeded: false,
                    new_best: false,
                }
            }
        }
    };
    refresh_derived(status, limits);
    Ok(recorded)
}

/// A finite, non-negative val_bpb: anything else is a lying or broken worker.
pub fn is_valid_val_bpb(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

/// A paid completion whose ledger entry another controller has already given up as unpaid (two
/// leaders at once: its resume re-sent the same voucher while this one's send met a busy worker,
/// or the other way round), so the experiment waits in `pending` for a retry. The payment is a
/// fact and its result is in results.jsonl: the experiment is counted now and leaves `pending`,
/// instead of being paid for again. Anything else is [`Recorded::AlreadyCounted`].
pub fn complete_given_up(
    status: &mut ExperimentCampaignStatus,
    limits: &Limits,
    entry: &LedgerEntry,
    outcome: Ending,
) -> Result<Recorded, Refusal> {
    let waiting = status
        .pending
        .iter()
        .position(|p| p.experiment_id == entry.experiment_id);
    let in_ledger = status
        .ledger
        .iter()
        .any(|e| e.experiment_id == entry.experiment_id);
    let (Some(i), false) = (waiting, in_ledger) else {
        return Ok(Recorded::AlreadyCounted);
    };
    if outcome.paid() == Usdc::ZERO {
        return Ok(Recorded::AlreadyCounted);
    }
    status.pending.remove(i);
    status.ledger.push(LedgerEntry {
        payment_state: None,
        ..entry.clone()
    });
    complete(status, limits, &entry.experiment_id, outcome)
}

fn retry_of(entry: LedgerEntry) -> PendingExperiment {
    PendingExperiment {
        experiment_id: entry.experiment_id,
        config: entry.config,
        config_hash: entry.config_hash,
        params: entry.params,
        train_hash: entry.train_hash,
        description: entry.description,
        attempts: entry.attempt,
        avoid: vec![entry.worker],
    }
}

/// Inserts a result into the bounded leaderboard; returns whether it is the new best.
fn add_to_leaderboard(status: &mut ExperimentCampaignStatus, result: ResultSummary) -> bool {
    let new_best = status
        .best
        .as_ref()
        .is_none_or(|b| result.val_bpb < b.val_bpb);
    if status
        .leaderboard
        .iter()
        .any(|r| r.experiment_id == result.experiment_id)
    {
        return false;
    }
    let at = status
        .leaderboard
        .partition_point(|r| r.val_bpb <= result.val_bpb);
    status.leaderboard.insert(at, result);
    status.leaderboard.truncate(LEADERBOARD_SIZE);
    if new_best {
        status.best = status.leaderboard.first().cloned();
    }
    new_best
}

/// Keeps the display fields (`running`, `progress`, `inFlight`) consistent with the books.
pub fn refresh_derived(status: &mut ExperimentCampaignStatus, limits: &Limits) {
    status.running = running(status);
    status.progress = Some(format!("{}/{}", finished(status), limits.max_experiments));
    status.in_flight = in_flight(status).ok().map(|u| u.to_string());
    if status.spent.is_none() {
        status.spent = Some(Usdc::ZERO.to_string());
    }
    status.budget_left = budget_left(status, limits).ok().map(|u| u.to_string());
}

/// Why a campaign stops starting experiments, if it does. Derived from the spec every time, so
/// raising a limit resumes the campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An experiment reached `objective.goal`.
    GoalReached,
    /// `maxExperiments` experiments finished.
    MaxExperimentsReached,
    /// `maxFailedExperiments` experiments failed.
    TooManyFailures,
    /// Nothing affordable is left in the budget.
    BudgetExhausted,
    /// An llm campaign used `search.llm.maxCalls` model calls and ran what they proposed.
    ProposerExhausted,
}

impl Stop {
    /// The phase the campaign ends in once nothing is in flight.
    pub fn phase(self) -> Phase {
        match self {
            Stop::GoalReached | Stop::MaxExperimentsReached | Stop::ProposerExhausted => {
                Phase::Succeeded
            }
            Stop::TooManyFailures => Phase::Failed,
            Stop::BudgetExhausted => Phase::BudgetExhausted,
        }
    }

    /// Condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Stop::GoalReached => "GoalReached",
            Stop::MaxExperimentsReached => "MaxExperimentsReached",
            Stop::TooManyFailures => "TooManyFailures",
            Stop::BudgetExhausted => "BudgetExhausted",
            Stop::ProposerExhausted => "ProposerExhausted",
        }
    }
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Whether the campaign is done by its counters (the budget is judged against real prices by
/// the scheduler, which calls [`budget_stop`]).
pub fn stop_reason(status: &ExperimentCampaignStatus, limits: &Limits) -> Option<Stop> {
    if let (Some(goal), Some(best)) = (limits.goal, &status.best)
        && best.val_bpb <= goal
    {
        return Some(Stop::GoalReached);
    }
    if status.failed >= limits.max_failed {
        return Some(Stop::TooManyFailures);
    }
    if finished(status) >= limits.max_experiments {
        return Some(Stop::MaxExperimentsReached);
    }
    // What the last calls proposed still runs.
    if limits
        .max_model_calls
        .is_some_and(|max| model_calls(status) >= max && status.pending.is_empty())
    {
        return Some(Stop::ProposerExhausted);
    }
    None
}

/// The budget stop: nothing in flight and the cheapest acceptable price no longer fits.
pub fn budget_stop(
    status: &ExperimentCampaignStatus,
    limits: &Limits,
    cheapest: Option<Usdc>,
) -> bool {
    let Ok(left) = budget_left(status, limits) else {
        return true;
    };
    let floor = cheapest.unwrap_or(Usdc::from_atomic(1));
    status.ledger.is_empty() && left < floor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ExperimentCampaignStatus;

    #[test]
    fn what_the_chain_cannot_decide_is_spent_uncertain_and_still_counts_against_the_budget() {
        let l = limits();
        let mut s = ExperimentCampaignStatus::default();
        reserve(&mut s, &l, entry("a", 20_000, 1)).unwrap();
        reserve(&mut s, &l, entry("b", 20_000, 1)).unwrap();
        assert!(mark_payment(&mut s, "a", PaymentState::Undecided));
        assert!(!mark_payment(&mut s, "zz", PaymentState::Undecided));
        for id in ["a", "b"] {
            let paid = Ending::WorkerFailed {
                paid: Usdc::from_atomic(20_000),
                reason: "lost".into(),
            };
            complete(&mut s, &l, id, paid).unwrap();
        }
        assert_eq!(s.spent.as_deref(), Some("0.02"), "only b is known paid");
        assert_eq!(s.spent_uncertain.as_deref(), Some("0.02"));
        assert_eq!(budget_left(&s, &l).unwrap(), Usdc::from_atomic(10_000));
        assert_eq!(
            reserve(&mut s, &l, entry("c", 10_001, 1)),
            Err(Refusal::OverBudget {
                asked: Usdc::from_atomic(10_001),
                left: Usdc::from_atomic(10_000)
            })
        );
    }

    #[test]
    fn a_paid_completion_of_an_attempt_given_up_counts_the_experiment_waiting_for_its_retry() {
        let l = limits();
        let mut s = ExperimentCampaignStatus::default();
        let first = entry("a", 10_000, 1);
        reserve(&mut s, &l, first.clone()).unwrap();
        let unpaid = Ending::WorkerFailed {
            paid: Usdc::ZERO,
            reason: "409".into(),
        };
        assert_eq!(
            complete(&mut s, &l, "a", unpaid.clone()),
            Ok(Recorded::Retry)
        );
        assert_eq!(s.pending.len(), 1);
        // Nothing paid: nothing to count.
        let replay = complete_given_up(&mut s, &l, &first, unpaid);
        assert_eq!(replay, Ok(Recorded::AlreadyCounted));
        let paid = Ending::Finished {
            paid: Usdc::from_atomic(10_000),
            result: Some(result("a", 0.99)),
        };
        assert_eq!(
            complete_given_up(&mut s, &l, &first, paid.clone()),
            Ok(Recorded::Counted {
                succeeded: true,
                new_best: true
            })
        );
        assert!(s.pending.is_empty() && s.ledger.is_empty());
        assert_eq!((s.succeeded, s.spent.as_deref()), (1, Some("0.01")));
        // Counted once: a replay of the same completion changes nothing.
        assert_eq!(
            complete_given_up(&mut s, &l, &first, paid.clone()),
            Ok(Recorded::AlreadyCounted)
        );
        // Retried and reserved again with another voucher: that entry's own completion counts it.
        let mut t = ExperimentCampaignStatus::default();
        reserve(&mut t, &l, first.clone()).unwrap();
        complete(
            &mut t,
            &l,
            "a",
            Ending::WorkerFailed {
                paid: Usdc::ZERO,
                reason: "409".into(),
            },
        )
        .unwrap();
        let retried = t.pending.remove(0);
        assert_eq!(retried.experiment_id, "a");
        reserve(&mut t, &l, entry("a", 20_000, 2)).unwrap();
        assert_eq!(
            complete_given_up(&mut t, &l, &first, paid),
            Ok(Recorded::AlreadyCounted)
        );
        assert_eq!(t.succeeded, 0);
    }

    fn limits() -> Limits {
        Limits {
            total: "0.05".parse().unwrap(),
            max_price: "0.02".parse().unwrap(),
            max_experiments: 4,
            parallelism: 2,
            max_failed: 2,
            goal: Some(0.97),
            max_model_calls: None,
        }
    }

    fn entry(id: &str, amount: u128, attempt: u32) -> LedgerEntry {
        LedgerEntry {
            experiment_id: id.into(),
            worker: format!("http://127.0.0.1:9/{id}"),
            amount: amount.to_string(),
            nonce: format!("0x{:064x}", amount),
            payment: "e30=".into(),
            valid_before: 1,
            attempt,
            ..Default::default()
        }
    }

    fn result(id: &str, v: f64) -> ResultSummary {
        ResultSummary {
            experiment_id: id.into(),
            val_bpb: v,
            worker: "w".into(),
            ..Default::default()
        }
    }

    fn ahead(id: &str, amount: u128, worker: &str) -> LedgerEntry {
        LedgerEntry {
            worker: worker.into(),
            ..entry(id, amount, 1)
        }
    }

    #[test]
    fn a_voucher_signed_ahead_counts_against_budget_and_max_experiments_not_parallelism() {
        let l = limits(); // total 0.05, parallelism 2, maxExperiments 4
        let mut s = ExperimentCampaignStatus::default();
        reserve(&mut s, &l, ahead("a", 20_000, "w1")).unwrap();
        reserve(&mut s, &l, ahead("b", 10_000, "w2")).unwrap();
        assert_eq!(free_slots(&s, &l), 0);
        assert_eq!(ahead_slots(&s, &l), 2);
        reserve_ahead(&mut s, &l, ahead("c", 10_000, "w1")).unwrap();
        assert_eq!(s.running, 2, "an unsent voucher is not running");
        assert_eq!(
            s.in_flight.as_deref(),
            Some("0.04"),
            "but its amount is reserved"
        );
        assert_eq!(
            reserve_ahead(&mut s, &l, ahead("d", 10_000, "w1")),
            Err(Refusal::AheadTaken("w1".into())),
            "one per worker"
        );
        assert_eq!(
            reserve_ahead(&mut s, &l, ahead("d", 10_001, "w2")),
            Err(Refusal::OverBudget {
                asked: Usdc::from_atomic(10_001),
                left: Usdc::from_atomic(10_000)
            })
        );
        assert_eq!(
            reserve_ahead(&mut s, &l, ahead("c", 1, "w2")),
            Err(Refusal::Duplicate("c".into()))
        );
        reserve_ahead(&mut s, &l, ahead("d", 1, "w2")).unwrap();
        assert_eq!(ahead_slots(&s, &l), 0, "a, b, c, d reach maxExperiments 4");
        assert_eq!(
            reserve_ahead(&mut s, &l, ahead("e", 1, "w3")),
            Err(Refusal::NoSlot(2)),
            "at most parallelism signed ahead"
        );
        let l5 = Limits {
            parallelism: 3,
            ..l.clone()
        };
        assert_eq!(
            reserve_ahead(&mut s, &l5, ahead("e", 1, "w3")),
            Err(Refusal::MaxExperiments(4))
        );
    }

    #[test]
    fn promoting_needs_its_worker_free_of_others_and_happens_once() {
        let l = limits();
        let mut s = ExperimentCampaignStatus::default();
        reserve(&mut s, &l, ahead("a", 1, "w1")).unwrap();
        reserve(&mut s, &l, ahead("b", 1, "w2")).unwrap();
        reserve_ahead(&mut s, &l, ahead("c", 1, "w1")).unwrap();
        let nonce = s.ledger[2].nonce.clone();
        assert_eq!(
            promote(&mut s, &l, "c", "0xother"),
            Err(Refusal::Duplicate("c".into())),
            "another voucher's nonce does not promote it"
        );
        // w1 answered a (not counted yet): c may go, b runs elsewhere.
        promote(&mut s, &l, "c", &nonce).unwrap();
        assert!(!is_ahead(&s.ledger[2]));
        assert_eq!(s.running, 3);
        assert_eq!(
            promote(&mut s, &l, "c", &nonce),
            Err(Refusal::Duplicate("c".into())),
            "a sent voucher is not promoted again"
        );
        assert!(
            !drop_ahead(&mut s, &l, "c", &nonce),
            "a sent voucher is never dropped"
        );
        // Two workers busy (w1's two entries count once): a third worker's voucher waits.
        reserve_ahead(&mut s, &l, ahead("d", 1, "w3")).unwrap();
        let nonce = s.ledger[3].nonce.clone();
        assert_eq!(promote(&mut s, &l, "d", &nonce), Err(Refusal::NoSlot(2)));
    }

    #[test]
    fn dropping_an_unsent_voucher_frees_its_amount_and_pends_the_experiment_as_it_was() {
        let l = limits();
        let mut s = ExperimentCampaignStatus::default();
        s.pending.push(PendingExperiment {
            experiment_id: "c".into(),
            attempts: 1,
            ..Default::default()
        });
        reserve(&mut s, &l, ahead("a", 20_000, "w1")).unwrap();
        reserve_ahead(&mut s, &l, entry("c", 20_000, 2)).unwrap();
        assert!(s.pending.is_empty());
        let submitted = s.submitted;
        let nonce = s.ledger[1].nonce.clone();
        assert!(drop_ahead(&mut s, &l, "c", &nonce));
        assert!(!drop_ahead(&mut s, &l, "c", &nonce), "once");
        assert_eq!(s.ledger.len(), 1);
        assert_eq!(s.in_flight.as_deref(), Some("0.02"));
        assert_eq!(s.submitted, submitted - 1);
        assert_eq!((s.failed, s.worker_failures), (0, 0), "nothing ran");
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.pending[0].experiment_id, "c");
        assert_eq!(s.pending[0].attempts, 1, "no attempt is counted");
        assert!(s.pending[0].avoid.is_empty(), "its worker is not blamed");
        assert_eq!(spent(&s).unwrap(), Usdc::ZERO);
    }

    #[test]
    fn reserve_enforces_price_budget_slots_and_duplicates() {
        let l = limits();
        let mut s = ExperimentCampaignStatus::default();
        assert_eq!(
            reserve(&mut s, &l, entry("a", 20_001, 1)),
            Err(Refusal::OverMaxPrice {
                asked: Usdc::from_atomic(20_001),
                max: Usdc::from_atomic(20_000)
            })
        );
        reserve(&mut s, &l, entry("a", 20_000, 1)).unwrap();
        assert_eq!(
            reserve(&mut s, &l, entry("a", 10, 1)),
            Err(Refusal::Duplicate("a".into()))
        );
        reserve(&mut s, &l, entry("b", 20_000, 1)).unwrap();
        assert_eq!(s.running, 2);
        assert_eq!(s.in_flight.as_deref(), Some("0.04"));
        // Budget: 0.05 − 0.04 in flight leaves 0.01, and in-flight amounts count.
        assert_eq!(
            reserve(&mut s, &l, entry("c", 10_001, 1)),
            Err(Refusal::OverBudget {
                asked: Usdc::from_atomic(10_001),
                left: Usdc::from_atomic(10_000)
            })
        );
        assert_eq!(
            reserve(&mut s, &l, entry("c", 10_000, 1)),
            Err(Refusal::NoSlot(2))
        );
    }

    #[test]
    fn completion_is_counted_once_and_moves_money_from_in_flight_to_spent() {
        let l = limits();
        let mut s = ExperimentCampaignStatus::default();
        reserve(&mut s, &l, entry("a", 20_000, 1)).unwrap();
        let done = Ending::Finished {
            result: Some(result("a", 0.99)),
            paid: Usdc::from_atomic(20_000),
        };
        assert_eq!(
            complete(&mut s, &l, "a", done.clone()),
            Ok(Recorded::Counted {
                succeeded: true,
                new_best: true
            })
        );
        assert_eq!(
            complete(&mut s, &l, "a", done),
            Ok(Recorded::AlreadyCounted)
        );
        assert_eq!(s.succeeded, 1);
        assert_eq!(s.spent.as_deref(), Some("0.02"));
        assert_eq!(s.in_flight.as_deref(), Some("0"));
        assert_eq!(s.progress.as_deref(), Some("1/4"));
        assert_eq!(s.best.as_ref().unwrap().experiment_id, "a");
    }

    /// One random step of the books: reserve a new experiment at a random price, or finish a
    /// random in-flight one (out of order) in a random way. Returns what the ending paid.
    fn random_step(
        rng: &mut rand::rngs::StdRng,
        s: &mut ExperimentCampaignStatus,
        l: &Limits,
        next: &mut u32,
    ) -> Usdc {
        use rand::Rng;
        if s.ledger.is_empty() || rng.random_bool(0.5) {
            let pending = s.pending.first().map(|p| p.experiment_id.clone());
            let id = pending.unwrap_or_else(|| {
                *next += 1;
                format!("e{next}")
            });
            let attempt = s.pending.first().map_or(1, |p| p.attempts + 1);
            let price = rng.random_range(1..=40u128);
            let mut e = entry(&id, price, attempt);
            e.worker = format!("w{}", rng.random_range(0..6));
            let _ = if rng.random_bool(0.5) {
                reserve(s, l, e)
            } else {
                reserve_ahead(s, l, e)
            };
            return Usdc::ZERO;
        }
        let at = rng.random_range(0..s.ledger.len());
        let (id, amount) = (
            s.ledger[at].experiment_id.clone(),
            Usdc::parse_atomic(&s.ledger[at].amount).unwrap(),
        );
        if is_ahead(&s.ledger[at]) {
            // Never sent: it is promoted (then runs and ends later) or dropped; nothing is paid.
            let nonce = s.ledger[at].nonce.clone();
            if rng.random_bool(0.5) {
                let _ = promote(s, l, &id, &nonce);
            } else {
                assert!(drop_ahead(s, l, &id, &nonce));
            }
            return Usdc::ZERO;
        }
        if rng.random_bool(0.2) {
            mark_payment(s, &id, PaymentState::Undecided);
        }
        let ending = match rng.random_range(0..4) {
            0 => Ending::Finished {
                result: Some(result(&id, rng.random_range(0.9..1.1))),
                paid: amount,
            },
            1 => Ending::Finished {
                result: None,
                paid: amount,
            },
            2 => Ending::WorkerFailed {
                paid: Usdc::ZERO,
                reason: "refused".into(),
            },
            _ => Ending::WorkerFailed {
                paid: amount,
                reason: "paid, no result".into(),
            },
        };
        let paid = ending.paid();
        assert_ne!(
            complete(s, l, &id, ending).unwrap(),
            Recorded::AlreadyCounted
        );
        paid
    }

    #[test]
    fn random_sequences_keep_the_books_within_budget_and_count_each_payment_once() {
        use rand::SeedableRng;
        let l = Limits {
            total: Usdc::from_atomic(500),
            max_price: Usdc::from_atomic(40),
            max_experiments: 1000,
            parallelism: 4,
            max_failed: 1000,
            goal: None,
            max_model_calls: None,
        };
        for seed in 0..64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut s = ExperimentCampaignStatus::default();
            let (mut next, mut paid) = (0, Usdc::ZERO);
            for step in 0..300 {
                paid = paid
                    .checked_add(random_step(&mut rng, &mut s, &l, &mut next))
                    .unwrap();
                let settled = spent(&s)
                    .unwrap()
                    .checked_add(spent_uncertain(&s).unwrap())
                    .unwrap();
                let committed = settled.checked_add(in_flight(&s).unwrap()).unwrap();
                let at = format!("seed {seed}, step {step}");
                assert!(committed <= l.total, "{at}: {committed} > {}", l.total);
                assert_eq!(settled, paid, "{at}: every payment is counted once");
                assert_eq!(s.running, running(&s), "{at}");
                // A voucher goes out only when its worker answered: a worker's earlier entry may
                // wait to be counted, but the workers running stay within parallelism.
                let busy: std::collections::HashSet<_> = s
                    .ledger
                    .iter()
                    .filter(|e| !is_ahead(e))
                    .map(|e| &e.worker)
                    .collect();
                assert!(busy.len() as u32 <= l.parallelism, "{at}: parallelism");
                let waiting: Vec<_> = s.ledger.iter().filter(|e| is_ahead(e)).collect();
                assert!(waiting.len() as u32 <= l.parallelism, "{at}");
                let workers: std::collections::HashSet<_> =
                    waiting.iter().map(|e| &e.worker).collect();
                assert_eq!(workers.len(), waiting.len(), "{at}: one ahead per worker");
                assert!(
                    finished(&s) + s.ledger.len() as u32 <= l.max_experiments,
                    "{at}: maxExperiments"
                );
                let ids: std::collections::HashSet<_> =
                    s.ledger.iter().map(|e| &e.experiment_id).collect();
                assert_eq!(ids.len(), s.ledger.len(), "{at}: one entry per experiment");
            }
        }
    }

    #[test]
    fn the_leaderboard_keeps_params_and_a_config_hash_so_status_stays_small() {
        let l = Limits {
            max_experiments: 100,
            parallelism: 100,
            total: Usdc::from_atomic(1_000_000),
            ..limits()
        };
        let big = serde_json::json!({"notes": "x".repeat(40 * 1024)});
        let mut s = ExperimentCampaignStatus::default();
        for i in 0..30 {
            let id = format!("e{i}");
            let mut config = big.clone();
            config["lr"] = serde_json::json!(i);
            let e = LedgerEntry {
                config: Some(config.clone()),
                params: Some(serde_json::json!({"lr": i})),
                ..entry(&id, 1, 1)
            };
            reserve(&mut s, &l, e.clone()).unwrap();
            let echoed = ResultSummary {
                config: Some(config.clone()),
                ..result(&id, 1.0 + f64::from(i) / 100.0)
            };
            let done = Ending::Finished {
                result: Some(echoed),
                paid: Usdc::from_atomic(1),
            };
            complete(&mut s, &l, &id, done.for_entry(&e)).unwrap();
            let best = s.best.as_ref().unwrap();
            assert_eq!(best.config, None);
            assert_eq!(best.params, Some(serde_json::json!({"lr": 0})));
        }
        let first = &s.leaderboard[0];
        let mut config = big.clone();
        config["lr"] = serde_json::json!(0);
        assert_eq!(
            first.config_hash.as_deref(),
            Some(crate::experiment::config_hash(&config).as_str())
        );
        let size = serde_json::to_vec(&s).unwrap().len();
        assert!(
            size < 8 * 1024,
            "status is {size} bytes with a 40 KiB config"
        );
    }

    #[test]
    fn a_failed_attempt_that_paid_nothing_is_retried_elsewhere_and_one_that_may_have_paid_is_not() {
        let l = limits();
        let mut s = ExperimentCampaignStatus::default();
        reserve(&mut s, &l, entry("a", 10_000, 1)).unwrap();
        let unpaid = Ending::WorkerFailed {
            paid: Usdc::ZERO,
            reason: "500".into(),
        };
        assert_eq!(complete(&mut s, &l, "a", unpaid), Ok(Recorded::Retry));
        assert_eq!(s.pending[0].attempts, 1);
        assert_eq!(s.pending[0].avoid, vec!["http://127.0.0.1:9/a".to_string()]);
        assert_eq!(s.worker_failures, 1);
        assert_eq!(s.failed, 0);

        reserve(&mut s, &l, entry("a", 10_000, 2)).unwrap();
        assert!(s.pending.is_empty());
        let maybe_paid = Ending::WorkerFailed {
            paid: Usdc::from_atomic(10_000),
            reason: "connection dropped".into(),
        };
        assert_eq!(
            complete(&mut s, &l, "a", maybe_paid),
            Ok(Recorded::Counted {
                succeeded: false,
                new_best: false
            })
        );
        assert!(
            s.pending.is_empty(),
            "an experiment that may have been paid is not paid again"
        );
        assert_eq!(s.spent.as_deref(), Some("0.01"));
        assert_eq!(s.failed, 1);
    }

    #[test]
    fn attempts_are_bounded() {
        let l = Limits {
            max_failed: 10,
            ..limits()
        };
        let mut s = ExperimentCampaignStatus::default();
        for attempt in 1..=MAX_ATTEMPTS {
            reserve(&mut s, &l, entry("a", 1, attempt)).unwrap();
            complete(
                &mut s,
                &l,
                "a",
                Ending::WorkerFailed {
                    paid: Usdc::ZERO,
                    reason: "busy".into(),
                },
            )
            .unwrap();
        }
        assert!(s.pending.is_empty());
        assert_eq!(s.failed, 1);
        assert_eq!(s.worker_failures, MAX_ATTEMPTS);
    }

    #[test]
    fn invalid_val_bpb_is_not_a_result() {
        let l = limits();
        for bad in [f64::NAN, -0.5, f64::INFINITY] {
            let mut s = ExperimentCampaignStatus::default();
            reserve(&mut s, &l, entry("a", 1, 1)).unwrap();
            complete(
                &mut s,
                &l,
                "a",
                Ending::Finished {
                    result: Some(result("a", bad)),
                    paid: Usdc::from_atomic(1),
                },
            )
            .unwrap();
            assert_eq!((s.succeeded, s.failed), (0, 1));
            assert!(s.best.is_none() && s.leaderboard.is_empty());
        }
    }

    #[test]
    fn leaderboard_is_sorted_bounded_and_best_is_first() {
        let l = Limits {
            max_experiments: 100,
            parallelism: 100,
            total: Usdc::from_atomic(1_000_000),
            ..limits()
        };
        let mut s = ExperimentCampaignStatus::default();
        for i in 0..25 {
            let id = format!("e{i}");
            reserve(&mut s, &l, entry(&id, 1, 1)).unwrap();
            let v = 1.0 + ((i * 7) % 25) as f64 / 100.0;
            complete(
                &mut s,
                &l,
                &id,
                Ending::Finished {
                    result: Some(result(&id, v)),
                    paid: Usdc::from_atomic(1),
                },
            )
            .unwrap();
        }
        assert_eq!(s.leaderboard.len(), LEADERBOARD_SIZE);
        assert!(
            s.leaderboard
                .windows(2)
                .all(|w| w[0].val_bpb <= w[1].val_bpb)
        );
        assert_eq!(s.best.as_ref().unwrap().val_bpb, 1.0);
    }

    #[test]
    fn stop_reasons_follow_the_spec_so_raising_a_limit_resumes() {
        let mut l = limits();
        let mut s = ExperimentCampaignStatus {
            succeeded: 4,
            ..Default::default()
        };
        assert_eq!(stop_reason(&s, &l), Some(Stop::MaxExperimentsReached));
        l.max_experiments = 10;
        assert_eq!(stop_reason(&s, &l), None);
        assert_eq!(free_slots(&s, &l), 2);
        s.best = Some(result("x", 0.965));
        assert_eq!(stop_reason(&s, &l), Some(Stop::GoalReached));
        s.best = None;
        s.failed = 2;
        assert_eq!(stop_reason(&s, &l), Some(Stop::TooManyFailures));
        assert_eq!(Stop::TooManyFailures.phase(), Phase::Failed);
    }

    #[test]
    fn unreadable_amounts_stop_spending() {
        let l = limits();
        let mut s = ExperimentCampaignStatus {
            spent: Some("lots".into()),
            ..Default::default()
        };
        assert!(matches!(
            reserve(&mut s, &l, entry("a", 1, 1)),
            Err(Refusal::Unreadable(_))
        ));
        assert!(budget_stop(&s, &l, None));
    }
}
