//! Results you can trust: measured noise, replication before promotion, worker reputation.
//!
//! Workers are strangers that self-report `val_bpb`, and seed noise is as large as most real
//! improvements. So:
//! - the unmodified train.py runs `objective.baselineRuns` times first; the spread of those runs
//!   and of every agreeing replication gives σ, and every keep/discard decision uses the
//!   effective floor max(`noiseFloor`, `noiseMultiplier` × σ);
//! - a result that would become the new best is a *claim*: it is re-run with the same train.py
//!   and config on another worker (another endpoint and payee). Two runs that agree within the
//!   tolerance promote their mean; if they disagree a third run decides, and the worker whose
//!   value is out of line gets a disagreement;
//! - a worker with `objective.maxDisagreements` disagreements is excluded from the campaign.
//!
//! Everything here is a pure function of the campaign's results in arrival order (plus the
//! workers seen last), so a restart rebuilds it from results.jsonl. Replications and baseline
//! runs have derived ids (`<claim>-r<n>`, `<base>-b<n>`), so a decision replayed after a crash
//! proposes the same run again instead of paying for a second one.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::Severity;
use crate::crd::{
    ExperimentCampaignStatus, NoiseStatus, ObjectiveSpec, ResultSummary, Verification, WorkerRecord,
};
use crate::ledger;
use crate::results::ResultRecord;
use crate::strategy::{Decision, Outcome, decide};

/// Replication attempts per claim (failed runs included) before it is left unverified.
pub const MAX_REPLICATIONS: usize = 4;
/// Rows of the reputation table in status.
pub const TABLE_SIZE: usize = 32;

/// What a run is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunRole {
    /// A proposal of THINK.
    Experiment,
    /// The unmodified train.py, run to measure the noise.
    Baseline,
    /// A re-run of the experiment with this id.
    Replication(String),
}

impl RunRole {
    /// The role of an experiment id: replications are `<id>-r<n>`, baseline runs the campaign's
    /// own (train.py, baseConfig) id or `<that>-b<n>`.
    pub fn of(experiment_id: &str, base_id: &str) -> RunRole {
        if experiment_id == base_id
            || experiment_id
                .strip_prefix(base_id)
                .and_then(|rest| rest.strip_prefix("-b"))
                .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            return RunRole::Baseline;
        }
        match experiment_id.rsplit_once("-r") {
            Some((of, n)) if !of.is_empty() && n.parse::<u32>().is_ok() => {
                RunRole::Replication(of.to_string())
            }
            _ => RunRole::Experiment,
        }
    }

    /// The role as a result line records it (`role`), and the experiment it replicates.
    pub fn fields(&self) -> (Option<String>, Option<String>) {
        match self {
            RunRole::Experiment => (None, None),
            RunRole::Baseline => (Some("baseline".into()), None),
            RunRole::Replication(of) => (Some("replication".into()), Some(of.clone())),
        }
    }

    /// The role a result line records, falling back to its id.
    pub fn of_record(record: &ResultRecord, base_id: &str) -> RunRole {
        match (record.role.as_deref(), &record.replicates) {
            (Some("replication"), Some(of)) => RunRole::Replication(of.clone()),
            (Some("baseline"), _) => RunRole::Baseline,
            _ => RunRole::of(&record.experiment_id, base_id),
        }
    }
}

/// The id of baseline run `i` (0 is the campaign's own id, which an llm campaign runs first).
pub fn baseline_id(base_id: &str, i: u32) -> String {
    if i == 0 {
        base_id.to_string()
    } else {
        format!("{base_id}-b{i}")
    }
}

/// The id of the `n`th replication (from 1) of an experiment.
pub fn replication_id(of: &str, n: usize) -> String {
    format!("{of}-r{n}")
}

/// The objective's trust settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TrustSettings {
    /// `objective.noiseFloor`.
    pub noise_floor: f64,
    /// `objective.noiseMultiplier`.
    pub multiplier: f64,
    /// `objective.replicationTolerance` (none: the effective floor).
    pub tolerance: Option<f64>,
    /// `objective.maxDisagreements`.
    pub max_disagreements: u32,
    /// `objective.baselineRuns`.
    pub baseline_runs: u32,
    /// `objective.replicate` (none: when more than one worker is available).
    pub replicate: Option<bool>,
    /// The id of the campaign's own (train.py, baseConfig).
    pub base_id: String,
}

impl Default for TrustSettings {
    fn default() -> Self {
        Self::of(&ObjectiveSpec::default(), String::new())
    }
}

impl TrustSettings {
    /// From the spec's objective and the campaign's base id.
    pub fn of(objective: &ObjectiveSpec, base_id: String) -> Self {
        Self {
            noise_floor: objective.noise_floor,
            multiplier: objective.noise_multiplier,
            tolerance: objective.replication_tolerance,
            max_disagreements: objective.max_disagreements.max(1),
            baseline_runs: objective.baseline_runs,
            replicate: objective.replicate,
            base_id,
        }
    }
}

/// A finished run, as trust needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustRun {
    /// Experiment id.
    pub id: String,
    /// Worker endpoint.
    pub worker: String,
    /// Worker agent id.
    pub agent_id: Option<u64>,
    /// The payee, when known.
    pub pay_to: Option<String>,
    /// The valid val_bpb, if the run gave one.
    pub value: Option<f64>,
    /// Config sent.
    pub config: Option<Value>,
    /// Searched parameters.
    pub params: Option<Value>,
    /// `sha256:` of the train.py run.
    pub train_hash: String,
    /// Whether the code was THINK's (not the campaign's own train.py).
    pub changed_code: bool,
    /// What it changed.
    pub description: Option<String>,
    /// Price paid, atomic USDC units.
    pub amount: Option<String>,
}

impl TrustRun {
    /// From a result line.
    pub fn of(record: &ResultRecord) -> Self {
        Self {
            id: record.experiment_id.clone(),
            worker: record.worker_endpoint.clone(),
            agent_id: record.worker_agent_id,
            pay_to: record.pay_to.as_ref().map(|p| p.to_ascii_lowercase()),
            value: record
                .val_bpb
                .filter(|v| ledger::is_valid_val_bpb(*v) && record.succeeded()),
            config: record.config.clone(),
            params: record.params.clone(),
            train_hash: record.train_hash.clone(),
            changed_code: record.parent_train_hash.is_some(),
            description: record.description.clone(),
            amount: record.amount.clone(),
        }
    }

    fn summary(&self, value: f64, worker: &str) -> ResultSummary {
        ResultSummary {
            experiment_id: self.id.clone(),
            val_bpb: value,
            // Status keeps the params and a hash, not the config (results.jsonl has it).
            config: None,
            worker: worker.to_string(),
            train_hash: Some(self.train_hash.clone()),
            params: self.params.clone(),
            config_hash: self.config.as_ref().map(crate::experiment::config_hash),
            ..ResultSummary::default()
        }
    }
}

/// Where a claim stands.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimVerdict {
    /// Waiting for a replication (or a third run).
    Open,
    /// Another worker reproduced it; the value is the mean of the agreeing runs.
    Agreed(f64),
    /// Its value was out of line with two runs that agree; the value is theirs.
    Disputed(f64),
    /// No two runs agreed, or no replication could be had.
    Unresolved,
}

#[derive(Clone, Debug)]
struct Claim {
    run: TrustRun,
    replications: Vec<TrustRun>,
    verdict: ClaimVerdict,
}

impl Claim {
    /// Replications that are independent of the claim and of each other: another endpoint and,
    /// when both are known, another payee.
    fn independent(&self) -> Vec<&TrustRun> {
        let mut seen: Vec<&TrustRun> = vec![&self.run];
        let mut out = Vec::new();
        for r in &self.replications {
            if r.value.is_some() && seen.iter().all(|s| unrelated(s, r)) {
                seen.push(r);
                out.push(r);
            }
        }
        out
    }
}

/// Two runs on different workers that are not (as far as is known) paid to the same address.
fn unrelated(a: &TrustRun, b: &TrustRun) -> bool {
    a.worker != b.worker
        && !matches!((&a.pay_to, &b.pay_to), (Some(x), Some(y)) if x == y)
        && !matches!((a.agent_id, b.agent_id), (Some(x), Some(y)) if x == y)
}

/// The verified (or, without replication, the best kept) result.
#[derive(Clone, Debug, PartialEq)]
pub struct Best {
    /// The summary for status.
    pub summary: ResultSummary,
    /// Whether another worker reproduced it.
    pub verified: bool,
    /// The runs that reproduced it.
    pub replications: Vec<String>,
    /// Whether THINK changed the code (else the campaign's own train.py).
    pub changed_code: bool,
}

#[derive(Clone, Debug, Default)]
struct Record {
    agent_id: Option<u64>,
    pay_to: Option<String>,
    runs: u32,
    failures: u32,
    agreements: u32,
    disagreements: u32,
    deviation_sum: f64,
    deviations: u32,
    price: Option<String>,
}

/// Something the user should hear about (an Event).
#[derive(Clone, Debug, PartialEq)]
pub struct Told {
    /// Normal or warning.
    pub severity: Severity,
    /// PascalCase reason.
    pub reason: &'static str,
    /// Human text.
    pub message: String,
}

/// A replication or baseline run THINK should propose.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Its id.
    pub experiment_id: String,
    /// Config, params, code and description of the run it repeats.
    pub run: TrustRun,
    /// Workers it must not run on.
    pub avoid: Vec<String>,
    /// What it is.
    pub role: RunRole,
}

/// One campaign's trust state. Only undecided claims are kept whole (by arrival, with an index
/// by id); a decided one leaves its agreed value, and an unresolved one nothing: neither is
/// read again but for the strategy's outcome.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    settings: TrustSettings,
    baseline: Vec<TrustRun>,
    claims: BTreeMap<u64, Claim>,
    claim_ids: HashMap<String, u64>,
    next_claim: u64,
    /// The value two runs agreed on, for each claim decided that way.
    settled: HashMap<String, f64>,
    /// Baseline ids recorded, with or without a value (an id is never run twice).
    baseline_ids: Vec<String>,
    verified: Option<Best>,
    workers: BTreeMap<String, Record>,
    /// Sum of squared deviations from the group mean, and degrees of freedom, of the agreeing
    /// replication groups (the baseline group is added when σ is read).
    squares: f64,
    freedom: u32,
    told: Vec<Told>,
    /// Replaying history: nothing is told.
    pub quiet: bool,
    /// The endpoints of the last CLAIM's workers (after exclusions).
    candidates: Vec<String>,
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn squares(values: &[f64]) -> f64 {
    let m = mean(values);
    values.iter().map(|v| (v - m).powi(2)).sum()
}

impl Trust {
    /// The settings change with the spec.
    pub fn set_settings(&mut self, settings: TrustSettings) {
        self.settings = settings;
    }

    /// The settings.
    pub fn settings(&self) -> &TrustSettings {
        &self.settings
    }

    /// The workers the last CLAIM saw.
    pub fn set_candidates(&mut self, endpoints: Vec<String>) {
        self.candidates = endpoints;
    }

    /// Whether claims are replicated now: allowed by the spec and more than one worker.
    pub fn replicating(&self) -> bool {
        self.settings.replicate != Some(false) && self.candidates.len() > 1
    }

    /// σ pooled over the baseline runs and every agreeing replication group, with its degrees
    /// of freedom.
    pub fn sigma(&self) -> (Option<f64>, u32) {
        let base: Vec<f64> = self.baseline.iter().filter_map(|r| r.value).collect();
        let (mut ss, mut df) = (self.squares, self.freedom);
        if base.len() > 1 {
            ss += squares(&base);
            df += base.len() as u32 - 1;
        }
        ((df > 0).then(|| (ss / f64::from(df)).sqrt()), df)
    }

    /// max(noiseFloor, noiseMultiplier × σ).
    pub fn floor(&self) -> f64 {
        let sigma = self.sigma().0.unwrap_or(0.0);
        let floor = self
            .settings
            .noise_floor
            .max(self.settings.multiplier * sigma);
        if floor.is_finite() {
            floor.max(0.0)
        } else {
            0.0
        }
    }

    /// How close a replication must be to agree.
    pub fn tolerance(&self) -> f64 {
        self.settings.tolerance.unwrap_or_else(|| self.floor())
    }

    /// The result new ones are judged against: the verified best, or without replication the
    /// best unverified claim if lower.
    pub fn kept(&self) -> Option<Best> {
        let mut best = self.verified.clone();
        if !self.replicating() {
            for c in self.claims.values().filter(|c| self.wants_replication(c)) {
                let Some(v) = c.run.value else { continue };
                if best.as_ref().is_none_or(|b| v < b.summary.val_bpb) {
                    best = Some(Best {
                        summary: c.run.summary(v, &c.run.worker),
                        verified: false,
                        replications: Vec::new(),
                        changed_code: c.run.changed_code,
                    });
                }
            }
        }
        best
    }

    /// The keep/discard decision a new run would get now.
    pub fn decide(&self, run: &TrustRun, role: &RunRole) -> Decision {
        match (role, run.value) {
            (_, None) => Decision::Crash,
            (RunRole::Experiment, v) => {
                decide(self.kept().map(|b| b.summary.val_bpb), v, self.floor())
            }
            // A baseline run is the base; a replication is judged through its claim.
            (RunRole::Baseline, _) => Decision::Keep,
            (RunRole::Replication(_), _) => Decision::Discard,
        }
    }

    /// Adds a finished run (in arrival order). `recorded` is the decision its line carries.
    pub fn add(&mut self, run: TrustRun, role: RunRole, recorded: Option<Decision>) -> Decision {
        let decision = recorded.unwrap_or_else(|| self.decide(&run, &role));
        self.count(&run);
        match role {
            RunRole::Baseline => self.add_baseline(run),
            RunRole::Experiment if decision == Decision::Keep && run.value.is_some() => {
                // An excluded worker's last runs still finish; its claims are not checked.
                if !self.is_excluded(&run.worker) {
                    self.open_claim(run);
                }
            }
            RunRole::Experiment => {}
            RunRole::Replication(of) => {
                if let Some(&i) = self.claim_ids.get(&of) {
                    self.claim(i).replications.push(run);
                    self.resolve(i);
                    self.retire(i);
                }
            }
        }
        decision
    }

    /// Adds a result line (its recorded role and decision, if any); returns its decision and role.
    pub fn add_record(&mut self, record: &ResultRecord) -> (Decision, RunRole) {
        let role = RunRole::of_record(record, &self.settings.base_id);
        let recorded = record.decision.as_deref().and_then(Decision::from_status);
        (self.add(TrustRun::of(record), role.clone(), recorded), role)
    }

    fn open_claim(&mut self, run: TrustRun) {
        let i = self.next_claim;
        self.next_claim += 1;
        // A second line for an id (a re-created campaign) leaves the first claim in charge.
        self.claim_ids.entry(run.id.clone()).or_insert(i);
        self.claims.insert(
            i,
            Claim {
                run,
                replications: Vec::new(),
                verdict: ClaimVerdict::Open,
            },
        );
    }

    /// An open claim.
    fn claim(&mut self, i: u64) -> &mut Claim {
        self.claims.get_mut(&i).expect("an open claim")
    }

    /// Forgets a decided claim but for its agreed value.
    fn retire(&mut self, i: u64) {
        if self.claims[&i].verdict == ClaimVerdict::Open {
            return;
        }
        let claim = self.claims.remove(&i).expect("an open claim");
        self.claim_ids.remove(&claim.run.id);
        if let ClaimVerdict::Agreed(v) | ClaimVerdict::Disputed(v) = claim.verdict {
            self.settled.insert(claim.run.id, v);
        }
    }

    fn count(&mut self, run: &TrustRun) {
        let w = self.workers.entry(run.worker.clone()).or_default();
        w.runs += 1;
        w.failures += u32::from(run.value.is_none());
        w.agent_id = run.agent_id.or(w.agent_id);
        w.pay_to = run.pay_to.clone().or(w.pay_to.take());
        w.price = run
            .amount
            .as_deref()
            .and_then(|a| crate::usdc::Usdc::parse_atomic(a).ok())
            .map(|u| u.to_string())
            .or(w.price.take());
    }

    fn add_baseline(&mut self, run: TrustRun) {
        self.baseline_ids.push(run.id.clone());
        if run.value.is_none() {
            return;
        }
        self.baseline.push(run);
        if self
            .verified
            .as_ref()
            .is_some_and(|b| !self.is_baseline(&b.summary.experiment_id))
        {
            return;
        }
        let values: Vec<f64> = self.baseline.iter().filter_map(|r| r.value).collect();
        let first = &self.baseline[0];
        let others: Vec<&TrustRun> = self.baseline[1..]
            .iter()
            .filter(|r| unrelated(first, r))
            .collect();
        self.verified = Some(Best {
            summary: first.summary(mean(&values), &first.worker),
            verified: !others.is_empty(),
            replications: others.iter().map(|r| r.id.clone()).collect(),
            changed_code: false,
        });
    }

    fn is_baseline(&self, id: &str) -> bool {
        RunRole::of(id, &self.settings.base_id) == RunRole::Baseline
    }

    /// Decides a claim once its replications allow it.
    fn resolve(&mut self, i: u64) {
        if self.claims[&i].verdict != ClaimVerdict::Open {
            return;
        }
        let tol = self.tolerance();
        let claim = self.claims[&i].clone();
        let c = claim.run.value.unwrap_or(f64::NAN);
        let reps = claim.independent();
        match reps.as_slice() {
            [] if claim.replications.len() >= MAX_REPLICATIONS => {
                self.claim(i).verdict = ClaimVerdict::Unresolved;
            }
            [] => {}
            [r] if (val(r) - c).abs() <= tol => self.agree(i, &[&claim.run, r], None),
            [r] => {
                if claim.replications.len() >= MAX_REPLICATIONS {
                    self.claim(i).verdict = ClaimVerdict::Unresolved;
                }
                self.tell(
                    Severity::Warning,
                    "ReplicationDisagreed",
                    format!(
                        "experiment {} claimed val_bpb {c} on {}; {} measured {} on {}: a third run on another worker decides",
                        claim.run.id, claim.run.worker, r.id, val(r), r.worker
                    ),
                );
            }
            [r1, r2, ..] => {
                if (val(r2) - c).abs() <= tol {
                    self.agree(i, &[&claim.run, r2], Some(r1));
                } else if (val(r2) - val(r1)).abs() <= tol {
                    self.dispute(i, &[r1, r2]);
                } else {
                    self.claim(i).verdict = ClaimVerdict::Unresolved;
                    self.tell(
                        Severity::Warning,
                        "ReplicationUnresolved",
                        format!(
                            "experiment {}: {c}, {} and {} do not agree within {tol}; it is not promoted",
                            claim.run.id,
                            val(r1),
                            val(r2)
                        ),
                    );
                }
            }
        }
    }

    /// Runs that agree: their mean is the claim's value, and is promoted if it is the best.
    /// `outlier` (a replication that disagreed) gets the disagreement.
    fn agree(&mut self, i: u64, runs: &[&TrustRun], outlier: Option<&TrustRun>) {
        let values: Vec<f64> = runs.iter().map(|r| val(r)).collect();
        let m = mean(&values);
        self.group(runs, m);
        let claim = self.claims[&i].run.clone();
        self.claim(i).verdict = ClaimVerdict::Agreed(m);
        if let Some(o) = outlier {
            self.disagree(o, m);
        }
        let ids: Vec<String> = runs[1..].iter().map(|r| r.id.clone()).collect();
        let promoted = self.promote(&claim, m, &claim.worker, ids.clone());
        self.tell(
            Severity::Normal,
            if promoted {
                "Verified"
            } else {
                "ReplicationAgreed"
            },
            format!(
                "experiment {} (val_bpb {} on {}) reproduced by {}: {}{}",
                claim.id,
                val(&claim),
                claim.worker,
                ids.join(", "),
                m,
                if promoted {
                    ", the new verified best"
                } else {
                    "; not better than the verified best"
                }
            ),
        );
    }

    /// The claim is out of line with two runs that agree: disputed, the honest mean stands.
    fn dispute(&mut self, i: u64, honest: &[&TrustRun]) {
        let values: Vec<f64> = honest.iter().map(|r| val(r)).collect();
        let m = mean(&values);
        self.group(honest, m);
        let claim = self.claims[&i].run.clone();
        self.claim(i).verdict = ClaimVerdict::Disputed(m);
        self.tell(
            Severity::Warning,
            "ClaimDisputed",
            format!(
                "experiment {}: {} claimed val_bpb {}, {} measured {m}; the claim is disputed",
                claim.id,
                claim.worker,
                val(&claim),
                honest
                    .iter()
                    .map(|r| r.worker.as_str())
                    .collect::<Vec<_>>()
                    .join(" and "),
            ),
        );
        self.disagree(&claim, m);
        let ids: Vec<String> = honest.iter().map(|r| r.id.clone()).collect();
        if self.promote(&claim, m, &honest[0].worker, ids) {
            self.tell(
                Severity::Normal,
                "Verified",
                format!(
                    "experiment {} at the value its replications measured, {m}: the new verified best",
                    claim.id
                ),
            );
        }
    }

    /// An agreeing group: its spread feeds σ, each worker gets an agreement and its deviation.
    fn group(&mut self, runs: &[&TrustRun], m: f64) {
        let values: Vec<f64> = runs.iter().map(|r| val(r)).collect();
        self.squares += squares(&values);
        self.freedom += values.len() as u32 - 1;
        for r in runs {
            let w = self.workers.entry(r.worker.clone()).or_default();
            w.agreements += 1;
            w.deviation_sum += (val(r) - m).abs();
            w.deviations += 1;
        }
    }

    fn disagree(&mut self, run: &TrustRun, agreed: f64) {
        let max = self.settings.max_disagreements;
        let w = self.workers.entry(run.worker.clone()).or_default();
        w.disagreements += 1;
        w.deviation_sum += (val(run) - agreed).abs();
        w.deviations += 1;
        if w.disagreements == max {
            let message = format!(
                "{} reported {} where other workers measured {agreed}: {max} disputed results, excluded for the rest of the campaign",
                run.worker,
                val(run)
            );
            self.tell(Severity::Warning, "WorkerExcluded", message);
        }
    }

    fn promote(&mut self, claim: &TrustRun, value: f64, worker: &str, ids: Vec<String>) -> bool {
        if self
            .verified
            .as_ref()
            .is_some_and(|b| value >= b.summary.val_bpb)
        {
            return false;
        }
        self.verified = Some(Best {
            summary: claim.summary(value, worker),
            verified: true,
            replications: ids,
            changed_code: claim.changed_code,
        });
        true
    }

    fn tell(&mut self, severity: Severity, reason: &'static str, message: String) {
        if !self.quiet {
            self.told.push(Told {
                severity,
                reason,
                message,
            });
        }
    }

    /// What happened since the last call, for Events.
    pub fn take_told(&mut self) -> Vec<Told> {
        std::mem::take(&mut self.told)
    }

    /// Whether a worker is excluded for the rest of the campaign.
    pub fn is_excluded(&self, endpoint: &str) -> bool {
        self.workers
            .get(endpoint)
            .is_some_and(|w| w.disagreements >= self.settings.max_disagreements)
    }

    /// Order among workers of equal price: fewer disagreements, then fewer failures, then more
    /// agreements.
    pub fn rank(&self, endpoint: &str) -> (u32, u32, std::cmp::Reverse<u32>) {
        self.workers
            .get(endpoint)
            .map_or((0, 0, std::cmp::Reverse(0)), |w| {
                (w.disagreements, w.failures, std::cmp::Reverse(w.agreements))
            })
    }

    /// The strategy's view of claims whose value is not what they reported: an open claim is
    /// not known yet (it is being replicated), a decided one has the agreed value.
    pub fn outcomes(&self) -> Vec<(String, Outcome)> {
        let replicating = self.replicating();
        let open = self
            .claims
            .values()
            .filter(|c| replicating && self.can_replicate(c))
            .map(|c| (c.run.id.clone(), Outcome::InFlight));
        let settled = self
            .settled
            .iter()
            .map(|(id, v)| (id.clone(), Outcome::Succeeded(*v)));
        open.chain(settled).collect()
    }

    /// Baseline runs recorded with a value, and their workers.
    fn baseline_workers(&self) -> Vec<String> {
        self.baseline.iter().map(|r| r.worker.clone()).collect()
    }

    /// Whether THINK must wait: baseline runs are missing.
    pub fn holds(&self) -> bool {
        (self.baseline.len() as u32) < self.settings.baseline_runs
    }

    /// The runs THINK should propose now, before anything else: the missing baseline runs,
    /// then the next replication of the best open claim that would be the new best. `known`
    /// says whether an id is already pending or in flight.
    pub fn plan(&self, base: &TrustRun, known: &dyn Fn(&str) -> bool) -> Vec<Planned> {
        if self.holds() {
            return self.plan_baseline(base, known);
        }
        if !self.replicating() {
            return Vec::new();
        }
        self.plan_replication(known).into_iter().collect()
    }

    fn plan_baseline(&self, base: &TrustRun, known: &dyn Fn(&str) -> bool) -> Vec<Planned> {
        let have = self.baseline.len() as u32;
        let mut avoid = self.baseline_workers();
        // With one worker the runs go where they can ("distinct where there are several").
        if self.candidates.iter().all(|c| avoid.contains(c)) {
            avoid.clear();
        }
        // Baseline runs that failed are run again under the next free index.
        let mut out = Vec::new();
        let mut i = 0;
        while (have + out.len() as u32) < self.settings.baseline_runs && i < 64 {
            let id = baseline_id(&self.settings.base_id, i);
            i += 1;
            if self.baseline_ids.contains(&id) {
                continue;
            }
            if known(&id) {
                // In flight: it counts against the runs still wanted.
                out.push(None);
                continue;
            }
            out.push(Some(Planned {
                experiment_id: id,
                run: TrustRun {
                    description: Some("baseline".into()),
                    ..base.clone()
                },
                avoid: avoid.clone(),
                role: RunRole::Baseline,
            }));
        }
        out.into_iter().flatten().collect()
    }

    fn plan_replication(&self, known: &dyn Fn(&str) -> bool) -> Option<Planned> {
        let claim = self
            .claims
            .values()
            .filter(|c| self.can_replicate(c))
            .min_by(|a, b| val(&a.run).total_cmp(&val(&b.run)))?;
        let n = claim.replications.len() + 1;
        let id = replication_id(&claim.run.id, n);
        let avoid = self.avoid_for(claim);
        (!known(&id)).then(|| Planned {
            experiment_id: id,
            run: TrustRun {
                description: Some(format!("replication of {}", claim.run.id)),
                ..claim.run.clone()
            },
            avoid,
            role: RunRole::Replication(claim.run.id.clone()),
        })
    }

    /// An open claim that would still be the new best, from a worker not excluded, with
    /// attempts left.
    fn wants_replication(&self, claim: &Claim) -> bool {
        let best = self.verified.as_ref().map(|b| b.summary.val_bpb);
        claim.verdict == ClaimVerdict::Open
            && claim.replications.len() < MAX_REPLICATIONS
            && best.is_none_or(|b| val(&claim.run) < b)
            && !self.is_excluded(&claim.run.worker)
    }

    /// Whether a pending id is still worth running: anything but a replication, or the next
    /// replication of a claim that wants one and has a worker left for it.
    fn still_wanted(&self, experiment_id: &str) -> bool {
        let RunRole::Replication(of) = RunRole::of(experiment_id, &self.settings.base_id) else {
            return true;
        };
        self.replicating()
            && self.claim_ids.get(&of).is_some_and(|i| {
                let c = &self.claims[i];
                replication_id(&c.run.id, c.replications.len() + 1) == experiment_id
                    && self.can_replicate(c)
            })
    }

    /// A claim that wants a replication and has a worker for it among the last CLAIM's.
    fn can_replicate(&self, claim: &Claim) -> bool {
        self.wants_replication(claim) && {
            let avoid = self.avoid_for(claim);
            self.candidates.iter().any(|w| !avoid.contains(w))
        }
    }

    /// Workers a replication of `claim` must not run on: the claim's and its replications'
    /// workers, workers paid at the same address, and excluded ones.
    fn avoid_for(&self, claim: &Claim) -> Vec<String> {
        let runs: Vec<&TrustRun> = std::iter::once(&claim.run)
            .chain(claim.replications.iter())
            .collect();
        let mut avoid: Vec<String> = runs.iter().map(|r| r.worker.clone()).collect();
        for (endpoint, w) in &self.workers {
            let same_payee = w
                .pay_to
                .as_ref()
                .is_some_and(|p| runs.iter().any(|r| r.pay_to.as_ref() == Some(p)));
            let same_agent = w
                .agent_id
                .is_some_and(|a| runs.iter().any(|r| r.agent_id == Some(a)));
            if same_payee || same_agent || self.is_excluded(endpoint) {
                avoid.push(endpoint.clone());
            }
        }
        avoid.sort();
        avoid.dedup();
        avoid
    }

    /// Workers each planned run must not use, by experiment id, for CLAIM: a replication never
    /// goes to one of them; a baseline run does only when nothing else is left.
    pub fn avoid_map(&self) -> BTreeMap<String, Vec<String>> {
        let mut map = BTreeMap::new();
        for c in self
            .claims
            .values()
            .filter(|c| c.verdict == ClaimVerdict::Open)
        {
            map.insert(
                replication_id(&c.run.id, c.replications.len() + 1),
                self.avoid_for(c),
            );
        }
        map
    }

    /// The reputation table: workers by runs, at most [`TABLE_SIZE`] (excluded ones first, so
    /// that an exclusion is never dropped from view).
    pub fn table(&self) -> Vec<WorkerRecord> {
        let mut rows: Vec<WorkerRecord> = self
            .workers
            .iter()
            .map(|(endpoint, w)| WorkerRecord {
                endpoint: endpoint.clone(),
                agent_id: w.agent_id,
                runs: w.runs,
                failures: w.failures,
                agreements: w.agreements,
                disagreements: w.disagreements,
                mean_deviation: (w.deviations > 0)
                    .then(|| w.deviation_sum / f64::from(w.deviations)),
                price: w.price.clone(),
                excluded: self.is_excluded(endpoint),
            })
            .collect();
        rows.sort_by(|a, b| {
            b.excluded
                .cmp(&a.excluded)
                .then(b.runs.cmp(&a.runs))
                .then(a.endpoint.cmp(&b.endpoint))
        });
        rows.truncate(TABLE_SIZE);
        rows
    }

    /// The noise as status shows it.
    pub fn noise(&self) -> NoiseStatus {
        let (sigma, samples) = self.sigma();
        NoiseStatus {
            sigma,
            samples,
            effective_floor: self.floor(),
            tolerance: self.tolerance(),
        }
    }

    /// Writes what trust knows into status: noise, the reputation table, and, while claims are
    /// replicated, the verified best as `best` (the lowest claim as `bestClaimed`). Without
    /// replication `best` stays the lowest result, marked unverified. Returns whether `best`
    /// changed to another experiment.
    pub fn publish(&self, status: &mut ExperimentCampaignStatus, before: Option<&str>) -> bool {
        // A replication that can no longer run (its claim was decided, its only other workers
        // were excluded or went away) would hold a slot for ever.
        status
            .pending
            .retain(|p| self.still_wanted(&p.experiment_id));
        status.noise = Some(self.noise());
        status.reputation = self.table();
        let verified = self.verified.as_ref().filter(|b| b.verified);
        if self.replicating() {
            status.best = self.verified.as_ref().map(|b| b.summary.clone());
        } else if let (Some(v), Some(best)) = (verified, &status.best)
            && v.summary.val_bpb <= best.val_bpb
        {
            status.best = Some(v.summary.clone());
        }
        status.verification = status.best.as_ref().map(|b| {
            let same = verified.filter(|v| v.summary.experiment_id == b.experiment_id);
            Verification {
                experiment_id: b.experiment_id.clone(),
                verified: same.is_some(),
                replications: same.map(|v| v.replications.clone()).unwrap_or_default(),
            }
        });
        if let (Some(best), Some(v)) = (status.best.as_mut(), &status.verification) {
            best.verified = Some(v.verified);
            best.replications = v.replications.clone();
        }
        let best_id = status.best.as_ref().map(|b| b.experiment_id.clone());
        status.best_claimed = status
            .leaderboard
            .first()
            .filter(|c| Some(&c.experiment_id) != best_id.as_ref())
            .filter(|c| status.best.as_ref().is_none_or(|b| c.val_bpb < b.val_bpb))
            .cloned();
        best_id.as_deref() != before
    }
}

fn val(run: &TrustRun) -> f64 {
    run.value.unwrap_or(f64::NAN)
}

/// Publishes what replications decided since the last call as Events.
pub async fn announce(engine: &super::Engine, handle: &super::CampaignHandle) {
    for told in engine.memory.take_told(&handle.key) {
        handle
            .notify
            .notify(super::Notice {
                severity: told.severity,
                reason: told.reason,
                action: "Verify",
                message: told.message,
            })
            .await;
    }
}

/// Condition `Verified`: whether the best was reproduced, and if not, why.
pub fn condition(
    campaign: &crate::crd::ExperimentCampaign,
    status: &ExperimentCampaignStatus,
    workers: usize,
) -> super::status::ConditionUpdate {
    use super::status::{ConditionType, ConditionUpdate};
    let (ok, reason, message) = match (&status.verification, campaign.spec.objective.replicate) {
        (_, Some(false)) => (
            false,
            "ReplicationOff",
            "objective.replicate is false: bests are what one worker reported".to_string(),
        ),
        (Some(v), _) if v.verified => (
            true,
            "Replicated",
            format!(
                "the best, {}, was reproduced by {}",
                v.experiment_id,
                v.replications.join(", ")
            ),
        ),
        _ if workers <= 1 => (
            false,
            "SingleWorker",
            "only one worker is available: no result can be checked by another, bests are unverified"
                .to_string(),
        ),
        (Some(v), _) => (
            false,
            "NotReplicated",
            format!("the best, {}, is not reproduced yet", v.experiment_id),
        ),
        (None, _) => (false, "NoResult", "no result yet".to_string()),
    };
    ConditionUpdate {
        kind: ConditionType::Verified,
        ok,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "exp-base";

    fn trust(workers: &[&str]) -> Trust {
        let mut t = Trust::default();
        t.set_settings(TrustSettings {
            base_id: BASE.into(),
            ..TrustSettings::default()
        });
        t.set_candidates(workers.iter().map(|w| w.to_string()).collect());
        t
    }

    fn run(id: &str, worker: &str, value: f64) -> TrustRun {
        TrustRun {
            id: id.into(),
            worker: worker.into(),
            pay_to: Some(format!("0x{worker}")),
            value: Some(value),
            ..TrustRun::default()
        }
    }

    fn add(t: &mut Trust, r: TrustRun) -> Decision {
        let role = RunRole::of(&r.id, BASE);
        t.add(r, role, None)
    }

    fn record(t: &Trust, worker: &str) -> WorkerRecord {
        t.table()
            .into_iter()
            .find(|w| w.endpoint == worker)
            .unwrap()
    }

    #[test]
    fn roles_are_read_from_ids() {
        assert_eq!(RunRole::of(BASE, BASE), RunRole::Baseline);
        assert_eq!(RunRole::of("exp-base-b3", BASE), RunRole::Baseline);
        assert_eq!(
            RunRole::of("exp-1a-r2", BASE),
            RunRole::Replication("exp-1a".into())
        );
        assert_eq!(RunRole::of("exp-1a", BASE), RunRole::Experiment);
        assert_eq!(RunRole::of("exp-1a-rx", BASE), RunRole::Experiment);
    }

    #[test]
    fn a_third_run_that_agrees_with_the_claim_disputes_the_replication() {
        let mut t = trust(&["a", "b", "c"]);
        add(&mut t, run(BASE, "a", 1.0));
        add(&mut t, run("exp-base-b1", "b", 1.0));
        assert_eq!(add(&mut t, run("exp-x", "a", 0.9)), Decision::Keep);
        let known = |_: &str| false;
        let planned = t.plan(&TrustRun::default(), &known);
        assert_eq!(planned[0].experiment_id, "exp-x-r1");
        assert_eq!(planned[0].avoid, ["a"]);
        add(&mut t, run("exp-x-r1", "b", 0.8));
        assert!(t.verified.as_ref().unwrap().summary.experiment_id == BASE);
        let planned = t.plan(&TrustRun::default(), &known);
        assert_eq!(planned[0].experiment_id, "exp-x-r2");
        assert_eq!(planned[0].avoid, ["a", "b"]);
        add(&mut t, run("exp-x-r2", "c", 0.901));
        let best = t.verified.clone().unwrap();
        assert_eq!(best.summary.experiment_id, "exp-x");
        assert!((best.summary.val_bpb - 0.9005).abs() < 1e-12);
        assert_eq!(best.replications, ["exp-x-r2"]);
        assert_eq!(record(&t, "b").disagreements, 1);
        assert_eq!(record(&t, "a").disagreements, 0);
        assert_eq!(record(&t, "c").agreements, 1);
        let told: Vec<_> = t.take_told().iter().map(|t| t.reason).collect();
        assert_eq!(told, ["ReplicationDisagreed", "Verified"]);
    }

    #[test]
    fn sigma_pools_the_baseline_and_agreeing_groups_and_sets_the_floor() {
        let mut t = trust(&["a", "b"]);
        assert_eq!(t.sigma(), (None, 0));
        add(&mut t, run(BASE, "a", 1.000));
        add(&mut t, run("exp-base-b1", "b", 1.004));
        // One degree of freedom: σ² = (0.002² + 0.002²) / 1.
        let (sigma, df) = t.sigma();
        assert_eq!(df, 1);
        assert!((sigma.unwrap() - 8e-6f64.sqrt()).abs() < 1e-12);
        assert!((t.floor() - 2.0 * sigma.unwrap()).abs() < 1e-12);
        add(&mut t, run("exp-x", "a", 0.98));
        add(&mut t, run("exp-x-r1", "b", 0.982));
        assert_eq!(t.sigma().1, 2);
        assert!(t.verified.as_ref().unwrap().verified);
    }

    #[test]
    fn a_replication_paid_to_the_claims_payee_proves_nothing() {
        let mut t = trust(&["a", "b", "c"]);
        t.settings.baseline_runs = 0;
        add(&mut t, run("exp-x", "a", 0.9));
        let mut twin = run("exp-other", "b", 1.0);
        twin.pay_to = Some("0xa".into());
        add(&mut t, twin);
        let planned = t.plan(&TrustRun::default(), &|_| false);
        assert_eq!(planned[0].avoid, ["a", "b"], "b is paid at a's address");
        let mut same_payee = run("exp-x-r1", "b", 0.9);
        same_payee.pay_to = Some("0xa".into());
        add(&mut t, same_payee);
        assert!(t.verified.is_none(), "not independent: nothing is promoted");
        assert_eq!(
            t.plan(&TrustRun::default(), &|_| false)[0].experiment_id,
            "exp-x-r2"
        );
    }

    #[test]
    fn with_no_third_worker_a_disagreement_promotes_nothing_and_stops_asking() {
        let mut t = trust(&["a", "b"]);
        t.settings.baseline_runs = 0;
        add(&mut t, run("exp-x", "a", 0.9));
        assert_eq!(t.outcomes(), [("exp-x".to_string(), Outcome::InFlight)]);
        add(&mut t, run("exp-x-r1", "b", 0.95));
        assert!(t.verified.is_none());
        assert!(
            t.plan(&TrustRun::default(), &|_| false).is_empty(),
            "no worker is left"
        );
        assert!(t.outcomes().is_empty(), "the strategy is not kept waiting");
        assert_eq!(
            record(&t, "a").disagreements,
            0,
            "two runs cannot say who lied"
        );
    }

    #[test]
    fn without_a_second_worker_claims_are_kept_unverified_and_nothing_is_replicated() {
        let mut t = trust(&["a"]);
        t.settings.baseline_runs = 0;
        add(&mut t, run("exp-x", "a", 0.9));
        assert!(t.plan(&TrustRun::default(), &|_| false).is_empty());
        let kept = t.kept().unwrap();
        assert!(!kept.verified);
        assert_eq!(kept.summary.experiment_id, "exp-x");
        assert_eq!(add(&mut t, run("exp-y", "a", 0.899)), Decision::Discard);
    }
}
