//! What this process remembers of each campaign between reconciles, bounded by the work in flight
//! rather than by history:
//! - the running tasks (finished ones are dropped on the next reconcile);
//! - the finished experiments as a compact strategy [`History`] (an id fingerprint, the outcome
//!   and the params as JSON text: a few dozen bytes each), which THINK replays, and which makes
//!   a replayed append a no-op; baseline runs and replications are reserved ids in it;
//! - full result records only while their status write is unconfirmed (the crash window between
//!   the append to results.jsonl and the status write that removes the ledger entry).
//!
//! Everything here can be rebuilt from results.jsonl and status: a restart loses nothing. The
//! file is read once, then only the lines appended since (by this process or another leader).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;
use tokio::task::JoinHandle;

use super::claim::Candidate;
use super::trust::{Planned, RunRole, Told, Trust, TrustRun, TrustSettings};
use crate::crd::ExperimentCampaignStatus;
use crate::ledger;
use crate::results::{ResultRecord, ResultsLog};
use crate::strategy::llm::RecentResult;
use crate::strategy::{Decision, Fingerprint, History, Outcome, Trial};

/// Results a model is shown, newest last.
const RECENT: usize = 20;

/// One campaign's memory.
#[derive(Default)]
struct Campaign {
    tasks: HashMap<String, JoinHandle<()>>,
    /// THINK's experiments, for the strategy; baseline runs and replications are reserved ids
    /// (not trials).
    finished: History,
    unconfirmed: HashMap<String, ResultRecord>,
    lineage: Lineage,
    proposing: bool,
    /// results.jsonl has been read up to this byte (none: not read yet).
    read: Option<u64>,
    /// The best last announced with a NewBest event; at the first load, the one in status.
    announced: Option<String>,
}

/// Keep/discard as autoresearch does it: the best kept result is the base of what comes next.
/// What "kept" means is [`Trust`]'s: the verified best while claims are replicated.
#[derive(Default)]
struct Lineage {
    /// Noise, claims, replications, the verified best and each worker's record.
    trust: Trust,
    /// The last results, for a model's prompt.
    recent: std::collections::VecDeque<RecentResult>,
    /// Every train.py hash started or proposed (so a model is not paid to repeat one).
    tried: HashSet<Fingerprint>,
}

impl Lineage {
    /// The decision for a result (the one recorded, for rows that have it) and its role.
    fn add(&mut self, record: &ResultRecord) -> (Decision, RunRole) {
        let (decision, role) = self.trust.add_record(record);
        self.tried.insert(Fingerprint::of(&record.train_hash));
        let val = record
            .val_bpb
            .filter(|v| ledger::is_valid_val_bpb(*v) && record.succeeded());
        self.recent.push_back(RecentResult {
            description: record
                .description
                .clone()
                .unwrap_or_else(|| "the campaign's train.py".into()),
            val_bpb: val,
            decision,
        });
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        (decision, role)
    }
}

impl Campaign {
    fn add(&mut self, record: &ResultRecord) {
        let (_, role) = self.lineage.add(record);
        if role == RunRole::Experiment {
            self.finished.record(trial_of(record));
        } else {
            self.finished.reserve(&record.experiment_id);
        }
    }

    /// Adds the lines of results.jsonl after `read` that belong to the campaign and are not
    /// known yet (this process's own appends are). Records still in the ledger are kept whole:
    /// their status write may not have happened.
    fn catch_up(
        &mut self,
        path: &Path,
        belongs: &dyn Fn(&ResultRecord) -> bool,
        status: &ExperimentCampaignStatus,
    ) {
        let offset = self.read.unwrap_or(0);
        let read = crate::results::read_from(path, offset, |record| {
            if !belongs(&record) || self.finished.contains(&record.experiment_id) {
                return;
            }
            self.add(&record);
            if status
                .ledger
                .iter()
                .any(|e| e.experiment_id == record.experiment_id)
            {
                self.unconfirmed
                    .insert(record.experiment_id.clone(), record);
            }
        });
        match read {
            Ok(end) => self.read = Some(end),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot read results history")
            }
        }
    }
}

/// Every campaign's memory, by campaign key.
#[derive(Default)]
pub struct Memory {
    campaigns: Mutex<HashMap<String, Campaign>>,
}

/// The strategy's view of a finished record.
pub fn trial_of(record: &ResultRecord) -> Trial {
    let outcome = match record.val_bpb {
        Some(v) if ledger::is_valid_val_bpb(v) && record.succeeded() => Outcome::Succeeded(v),
        _ => Outcome::Failed,
    };
    Trial {
        experiment_id: record.experiment_id.clone(),
        // Strategies read `params`, never `config` (docs/design.md): a finished trial does not
        // keep a second JSON map, which would double what history costs per experiment.
        config: Value::Null,
        // Rows without `params` (older files) vary the config itself.
        params: record
            .params
            .clone()
            .or_else(|| record.config.clone())
            .unwrap_or(Value::Null),
        outcome,
    }
}

impl Memory {
    fn with<T>(&self, key: &str, f: impl FnOnce(&mut Campaign) -> T) -> T {
        let mut map = self.campaigns.lock().expect("memory lock");
        f(map.entry(key.to_string()).or_default())
    }

    /// Reads a campaign's past results: the whole of results.jsonl the first time (streamed),
    /// then the lines appended since, so results another leader recorded are known before THINK.
    pub fn load(
        &self,
        key: &str,
        belongs: impl Fn(&ResultRecord) -> bool,
        results: &ResultsLog,
        status: &ExperimentCampaignStatus,
        noise_floor: f64,
    ) {
        self.with(key, |c| {
            let first = c.read.is_none();
            if first {
                c.announced = status.best.as_ref().map(|b| b.experiment_id.clone());
                let settings = c.lineage.trust.settings().clone();
                c.lineage.trust.set_settings(TrustSettings {
                    noise_floor,
                    ..settings
                });
                c.lineage.trust.quiet = true;
            }
            c.catch_up(results.path(), &belongs, status);
            c.lineage.trust.quiet = false;
        })
    }

    /// Runs `think` on the finished trials with the experiments in flight added (`in_flight`:
    /// ids from the ledger and pending). A claim being replicated is in flight for the strategy;
    /// a decided one has its agreed value. Nothing is copied: the additions are removed after.
    pub fn with_history<'i, T>(
        &self,
        key: &str,
        in_flight: impl Iterator<Item = &'i str>,
        think: impl FnOnce(&History) -> T,
    ) -> T {
        self.with(key, |c| {
            let history = &mut c.finished;
            history.clear_overlay();
            for (id, outcome) in c.lineage.trust.outcomes() {
                history.set_outcome(&id, outcome);
            }
            for id in in_flight {
                history.start(id);
            }
            let thought = think(history);
            history.clear_overlay();
            thought
        })
    }

    /// Whether results.jsonl has this experiment.
    pub fn is_recorded(&self, key: &str, experiment_id: &str) -> bool {
        // Only finished experiments are in `finished` outside THINK, which removes what it adds.
        self.with(key, |c| {
            c.unconfirmed.contains_key(experiment_id) || c.finished.contains(experiment_id)
        })
    }

    /// The record of an experiment whose status write is not confirmed yet.
    pub fn unconfirmed(&self, key: &str, experiment_id: &str) -> Option<ResultRecord> {
        self.with(key, |c| c.unconfirmed.get(experiment_id).cloned())
    }

    /// Notes a record appended to results.jsonl; it stays whole until [`Memory::confirm`].
    pub fn recorded(&self, key: &str, record: ResultRecord) {
        self.with(key, |c| {
            // A reconcile may have read the line back from results.jsonl already.
            if !c.finished.contains(&record.experiment_id) {
                c.add(&record);
            }
            c.unconfirmed.insert(record.experiment_id.clone(), record);
        })
    }

    /// The keep/discard decision a new result would get now.
    pub fn decide(&self, key: &str, record: &ResultRecord) -> Decision {
        self.with(key, |c| {
            let role = RunRole::of_record(record, &c.lineage.trust.settings().base_id);
            c.lineage.trust.decide(&TrustRun::of(record), &role)
        })
    }

    /// The best kept train hash (none: the campaign's own) and the recent results.
    pub fn lineage(&self, key: &str) -> (Option<String>, Vec<RecentResult>) {
        self.with(key, |c| {
            (
                c.lineage
                    .trust
                    .kept()
                    .and_then(|b| b.summary.train_hash.filter(|_| b.changed_code)),
                c.lineage.recent.iter().cloned().collect(),
            )
        })
    }

    /// Whether the campaign has any result.
    pub fn has_results(&self, key: &str) -> bool {
        self.with(key, |c| c.finished.knows_any())
    }

    /// The noise floor keep/discard decisions use (the spec may change it).
    pub fn set_noise_floor(&self, key: &str, noise_floor: f64) {
        self.with(key, |c| {
            let settings = c.lineage.trust.settings().clone();
            c.lineage.trust.set_settings(TrustSettings {
                noise_floor,
                ..settings
            });
        })
    }

    /// The campaign's trust settings (from its spec); call before [`Memory::load`].
    pub fn configure(&self, key: &str, settings: TrustSettings) {
        self.with(key, |c| c.lineage.trust.set_settings(settings))
    }

    /// The effective noise floor: max(noiseFloor, noiseMultiplier × σ).
    pub fn noise_floor(&self, key: &str) -> f64 {
        self.with(key, |c| c.lineage.trust.floor())
    }

    /// The role of an experiment id in the campaign.
    pub fn role(&self, key: &str, experiment_id: &str) -> RunRole {
        self.with(key, |c| {
            RunRole::of(experiment_id, &c.lineage.trust.settings().base_id)
        })
    }

    /// CLAIM's workers without excluded ones, good records first (a stable sort: price still
    /// decides first in [`super::claim::assign`]). `seen` says whether discovery ran now; only
    /// then do the workers count for whether claims can be replicated.
    pub fn screen(&self, key: &str, candidates: Vec<Candidate>, seen: bool) -> Vec<Candidate> {
        self.with(key, |c| {
            let trust = &mut c.lineage.trust;
            let mut kept: Vec<Candidate> = candidates
                .into_iter()
                .filter(|w| !trust.is_excluded(w.endpoint.as_str()))
                .collect();
            kept.sort_by_key(|w| trust.rank(w.endpoint.as_str()));
            if seen {
                trust.set_candidates(kept.iter().map(|w| w.endpoint.to_string()).collect());
            }
            kept
        })
    }

    /// Baseline runs and replications to propose first, and whether the strategy must wait.
    pub fn plan(
        &self,
        key: &str,
        base: &TrustRun,
        known: &dyn Fn(&str) -> bool,
    ) -> (Vec<Planned>, bool) {
        self.with(key, |c| {
            let trust = &c.lineage.trust;
            (trust.plan(base, known), trust.holds())
        })
    }

    /// Whether baseline runs are still missing: a result judged now would have no baseline.
    pub fn holds(&self, key: &str) -> bool {
        self.with(key, |c| c.lineage.trust.holds())
    }

    /// Whether one of the campaign's baseline runs is in flight in this process.
    pub fn baseline_running(&self, key: &str) -> bool {
        self.with(key, |c| {
            let base = &c.lineage.trust.settings().base_id;
            c.tasks
                .iter()
                .any(|(id, t)| !t.is_finished() && RunRole::of(id, base) == RunRole::Baseline)
        })
    }

    /// Workers each replication must not use.
    pub fn avoid_map(&self, key: &str) -> BTreeMap<String, Vec<String>> {
        self.with(key, |c| c.lineage.trust.avoid_map())
    }

    /// Replication outcomes since the last call.
    pub fn take_told(&self, key: &str) -> Vec<Told> {
        self.with(key, |c| c.lineage.trust.take_told())
    }

    /// Writes noise, reputation and the verified best into status; whether `best` changed.
    pub fn publish(
        &self,
        key: &str,
        status: &mut ExperimentCampaignStatus,
        before: Option<&str>,
    ) -> bool {
        self.with(key, |c| c.lineage.trust.publish(status, before))
    }

    /// The best last announced with a NewBest event (see [`Self::announce_best`]).
    pub fn announced_best(&self, key: &str) -> Option<String> {
        self.with(key, |c| c.announced.clone())
    }

    /// Takes `now` as the announced best if `before` still is: true for exactly one of the
    /// writers that saw the best change. (A reconcile's decision write publishes trust's best
    /// too, so "status changed" would miss the change when it wrote first.)
    pub fn announce_best(&self, key: &str, before: Option<&str>, now: Option<&str>) -> bool {
        self.with(key, |c| {
            let won = c.announced.as_deref() == before && before != now;
            if won {
                c.announced = now.map(str::to_string);
            }
            won
        })
    }

    /// Whether results can be verified now (replication on and more than one worker).
    pub fn replicating(&self, key: &str) -> bool {
        self.with(key, |c| c.lineage.trust.replicating())
    }

    /// Whether this train hash was already started or proposed in the campaign.
    pub fn tried(&self, key: &str, train_hash: &str) -> bool {
        self.with(key, |c| {
            c.lineage.tried.contains(&Fingerprint::of(train_hash))
        })
    }

    /// Notes a proposed train hash.
    pub fn note_tried(&self, key: &str, train_hash: &str) {
        self.with(key, |c| {
            c.lineage.tried.insert(Fingerprint::of(train_hash));
        })
    }

    /// Marks the campaign's proposer as running; false when one already runs.
    pub fn start_proposing(&self, key: &str) -> bool {
        self.with(key, |c| !std::mem::replace(&mut c.proposing, true))
    }

    /// The campaign's proposer has ended.
    pub fn stop_proposing(&self, key: &str) {
        self.with(key, |c| c.proposing = false)
    }

    /// The status write for `experiment_id` succeeded: its full record is no longer needed.
    pub fn confirm(&self, key: &str, experiment_id: &str) {
        self.with(key, |c| {
            c.unconfirmed.remove(experiment_id);
        })
    }

    /// Whether a task for this experiment is running in this process.
    pub fn has_live_task(&self, key: &str, experiment_id: &str) -> bool {
        self.with(key, |c| {
            c.tasks.get(experiment_id).is_some_and(|t| !t.is_finished())
        })
    }

    /// Running tasks of a campaign; finished ones are dropped.
    pub fn running_tasks(&self, key: &str) -> usize {
        self.with(key, |c| {
            c.tasks.retain(|_, t| !t.is_finished());
            c.tasks.len()
        })
    }

    /// Registers a spawned task.
    pub fn add_task(&self, key: &str, experiment_id: String, task: JoinHandle<()>) {
        self.with(key, |c| {
            c.tasks.insert(experiment_id, task);
        })
    }

    /// Forgets a task that has ended.
    pub fn remove_task(&self, key: &str, experiment_id: &str) {
        let mut map = self.campaigns.lock().expect("memory lock");
        if let Some(c) = map.get_mut(key) {
            c.tasks.remove(experiment_id);
        }
    }

    /// Aborts every task of every campaign and forgets everything.
    pub fn abort_all(&self) {
        let mut map = self.campaigns.lock().expect("memory lock");
        for campaign in map.values_mut() {
            for (_, task) in campaign.tasks.drain() {
                task.abort();
            }
        }
        map.clear();
    }

    /// Forgets a deleted campaign. Its running tasks are not aborted: they are paid experiments
    /// that finish and append their results.
    pub fn forget(&self, key: &str) {
        self.campaigns.lock().expect("memory lock").remove(key);
    }

    /// Forgets every campaign for which `keep` is false.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.campaigns
            .lock()
            .expect("memory lock")
            .retain(|key, _| keep(key));
    }

    /// Campaigns remembered.
    pub fn len(&self) -> usize {
        self.campaigns.lock().expect("memory lock").len()
    }

    /// Whether no campaign is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::*;
    use crate::crd::{ObjectiveSpec, SearchSpec};
    use crate::strategy::{self, STATE_CENTER, State};

    /// Counts the bytes this thread holds on the heap, so a test can weigh what a structure
    /// keeps (other tests run on other threads). A thread-local `Cell` with a const initialiser
    /// never allocates, so the allocator can use it.
    struct Counting;

    thread_local! {
        static HELD: Cell<isize> = const { Cell::new(0) };
    }

    fn note(delta: isize) {
        let _ = HELD.try_with(|h| h.set(h.get() + delta));
    }

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl std::alloc::GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            note(layout.size() as isize);
            // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            note(-(layout.size() as isize));
            // SAFETY: `ptr` came from `alloc` with this layout.
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn held() -> isize {
        HELD.with(Cell::get)
    }

    const KEY: &str = "ns/c";

    fn record(i: usize, value: Option<f64>) -> ResultRecord {
        ResultRecord {
            experiment_id: format!("exp-{i:016x}"),
            train_hash: "sha256:00".into(),
            val_bpb: value,
            status: Some(
                if value.is_some() {
                    "completed"
                } else {
                    "failed"
                }
                .into(),
            ),
            worker_endpoint: format!("http://127.0.0.1:9/w{}", i % 8),
            timestamp: "2026-12-01T00:00:00Z".into(),
            config: Some(json!({"steps": 300, "depth": 8, "optimizer": {"name": "muon"}})),
            params: Some(json!({"lr": 0.0001 * (i % 977) as f64, "depth": i % 64})),
            nonce: Some(format!("0x{i:064x}")),
            campaign_namespace: Some("ns".into()),
            campaign_name: Some("c".into()),
            ..ResultRecord::default()
        }
    }

    /// Mostly worse results, one in 500 a new best, one in 10 failed.
    fn value(i: usize) -> Option<f64> {
        let v = if i.is_multiple_of(500) {
            1.0 - i as f64 * 1e-6
        } else {
            1.1 + (i % 13) as f64 * 1e-3
        };
        (i % 10 != 3).then_some(v)
    }

    #[test]
    fn twenty_thousand_results_keep_about_a_hundred_bytes_each() {
        let before = held();
        let memory = Memory::default();
        let n = 20_000;
        for i in 0..n {
            let r = record(i, value(i));
            let id = r.experiment_id.clone();
            memory.recorded(KEY, r);
            memory.confirm(KEY, &id);
        }
        let kept = held() - before;
        // A full record is about 600 bytes of JSON; the strategy's history used to keep the
        // id twice and the params as a JSON map (about 1 KB a result).
        let per_result = kept / n as isize;
        assert!(per_result < 160, "{per_result} bytes kept per result");
        assert!(memory.is_recorded(KEY, "exp-0000000000000000"));
        assert!(memory.unconfirmed(KEY, "exp-0000000000000001").is_none());
        drop(memory);
        assert!(held() - before < 4096, "forgetting frees it all");
    }

    fn hill_climb() -> SearchSpec {
        serde_json::from_value(json!({"strategy": "hillClimb", "seed": 5, "parameters": [
            {"name": "lr", "type": "float", "min": 0.001, "max": 0.1, "logScale": true},
            {"name": "depth", "type": "int", "min": 2, "max": 16}]}))
        .unwrap()
    }

    /// THINK as the engine does it: `n` proposals from the memory's history plus `in_flight`.
    fn think(memory: &Memory, state: &mut State, in_flight: &[&str], n: usize) -> strategy::Batch {
        memory.with_history(KEY, in_flight.iter().copied(), |h| {
            let objective = ObjectiveSpec::default();
            strategy::propose(&hill_climb(), &objective, None, "x = 1\n", h, state, n).unwrap()
        })
    }

    fn result_of(p: &strategy::Proposal, value: f64) -> ResultRecord {
        ResultRecord {
            experiment_id: p.experiment_id.clone(),
            val_bpb: Some(value),
            status: Some("completed".into()),
            params: Some(p.params.clone()),
            campaign_namespace: Some("ns".into()),
            campaign_name: Some("c".into()),
            ..ResultRecord::default()
        }
    }

    #[tokio::test]
    async fn a_restart_rebuilds_dedup_and_the_hill_climb_incumbent_from_results() {
        let dir = tempfile::tempdir().unwrap();
        let log = ResultsLog::new(dir.path().join("results.jsonl"));
        let memory = Memory::default();
        let mut state = State::new();
        let mut started = HashSet::new();
        // 40 results; the 10th is the last improvement by more than the noise floor.
        for i in 0..40 {
            let p = think(&memory, &mut state, &[], 1).proposals.remove(0);
            assert!(
                started.insert(p.experiment_id.clone()),
                "{p:?} proposed twice"
            );
            let v = if i < 10 { 1.0 - i as f64 * 0.01 } else { 1.0 };
            let r = result_of(&p, v);
            log.append(&r).await.unwrap();
            memory.recorded(KEY, r);
        }
        let before = think(&memory, &mut state, &["exp-in-flight"], 4);
        assert_eq!(
            memory.with_history(KEY, std::iter::empty(), |h| h.len()),
            40,
            "THINK's in-flight additions are gone after it"
        );
        let restarted = Memory::default();
        let status = ExperimentCampaignStatus::default();
        let belongs = |_: &ResultRecord| true;
        restarted.load(KEY, belongs, &log, &status, 0.002);
        let mut lost = State::new();
        let after = think(&restarted, &mut lost, &["exp-in-flight"], 4);
        assert_eq!(
            after, before,
            "the same proposals after a restart, state lost"
        );
        assert_eq!(lost[STATE_CENTER], state[STATE_CENTER]);
        for p in &after.proposals {
            assert!(!started.contains(&p.experiment_id));
        }
        for id in &started {
            assert!(restarted.is_recorded(KEY, id));
        }
    }

    #[tokio::test]
    async fn results_another_leader_appended_are_known_before_the_next_think() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let (log_a, log_b) = (ResultsLog::new(&path), ResultsLog::new(&path));
        let (a, b) = (Memory::default(), Memory::default());
        let status = ExperimentCampaignStatus::default();
        let belongs = |r: &ResultRecord| r.campaign_name.as_deref() == Some("c");
        b.load(KEY, belongs, &log_b, &status, 0.002);
        let first = think(&b, &mut State::new(), &[], 1).proposals.remove(0);
        // Leader a runs what b would propose, and records it.
        let r = result_of(&first, 0.9);
        log_a.append(&r).await.unwrap();
        a.recorded(KEY, r);
        // So does b, for one of its own: read back from the file, it is not added twice.
        let own = result_of(
            &think(&b, &mut State::new(), &[&first.experiment_id], 1).proposals[0],
            1.2,
        );
        log_b.append(&own).await.unwrap();
        b.recorded(KEY, own.clone());
        b.load(KEY, belongs, &log_b, &status, 0.002);
        assert!(b.is_recorded(KEY, &first.experiment_id));
        let next = think(&b, &mut State::new(), &[], 8);
        assert!(next.proposals.iter().all(
            |p| p.experiment_id != first.experiment_id && p.experiment_id != own.experiment_id
        ));
        assert_eq!(b.with_history(KEY, std::iter::empty(), |h| h.len()), 2);
    }

    #[test]
    fn a_new_best_is_announced_by_exactly_one_of_the_writers_that_saw_it() {
        let memory = Memory::default();
        let status = ExperimentCampaignStatus {
            best: Some(crate::crd::ResultSummary {
                experiment_id: "exp-a".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let results = ResultsLog::new(dir.path().join("results.jsonl"));
        memory.load("k", |_| true, &results, &status, 0.0);
        assert_eq!(memory.announced_best("k").as_deref(), Some("exp-a"));
        // Two counts both saw exp-a, then exp-b, as the best (the reconcile published it first).
        let before = memory.announced_best("k");
        assert!(memory.announce_best("k", before.as_deref(), Some("exp-b")));
        assert!(!memory.announce_best("k", before.as_deref(), Some("exp-b")));
        assert!(
            !memory.announce_best("k", Some("exp-b"), Some("exp-b")),
            "no change"
        );
    }
}
