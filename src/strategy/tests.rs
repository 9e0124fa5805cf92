//! Strategy tests: validity of proposals, reproducibility, no repeats, exhaustion, restarts, and
//! hillClimb against random on the simulated landscape.

use std::collections::HashSet;

use proptest::prelude::{Just, ProptestConfig, any, prop, prop_assert_eq, prop_oneof, proptest};
use proptest::strategy::Strategy as Gen;
use serde_json::{Value, json};

use super::rng::SplitMix64;
use super::space::{Dim, DimKind, Space};
use super::*;
use crate::crd::{ApplyTo, Parameter, ParameterKind};

const TRAIN: &str = "print('val_bpb: 1.0')\n";

fn range(name: &str, kind: ParameterKind, min: f64, max: f64, log: bool) -> Parameter {
    Parameter {
        name: name.into(),
        kind,
        min: Some(min),
        max: Some(max),
        values: vec![],
        log_scale: log,
        grid_points: 3,
    }
}

fn choice(name: &str, values: Vec<Value>) -> Parameter {
    Parameter {
        name: name.into(),
        kind: ParameterKind::Choice,
        min: None,
        max: None,
        values,
        log_scale: false,
        grid_points: 3,
    }
}

/// The brief's space: lr, depth, warmup_ratio, batch_size.
fn params() -> Vec<Parameter> {
    vec![
        range("lr", ParameterKind::Float, 1e-4, 1e-1, true),
        range("depth", ParameterKind::Int, 2.0, 16.0, false),
        range("warmup_ratio", ParameterKind::Float, 0.0, 0.5, false),
        choice(
            "batch_size",
            [16, 32, 64, 128, 256].map(Value::from).to_vec(),
        ),
    ]
}

fn search(strategy: Strategy, seed: u64) -> SearchSpec {
    SearchSpec {
        strategy,
        parameters: params(),
        experiments: vec![],
        apply_to: ApplyTo::Config,
        llm: None,
        seed,
    }
}

fn base() -> Value {
    json!({"steps": 300, "depth": 8, "optimizer": {"name": "muon"}})
}

/// A simulated campaign: keeps `parallel` experiments in flight, finishes them in a seeded
/// random order (so arrival order differs from start order), scores them with the landscape.
struct Sim {
    search: SearchSpec,
    base: Value,
    history: History,
    /// What was recorded in `history`, in its order (a finished id recorded again moves to the
    /// end), so a restart can rebuild the history as results.jsonl and the ledger would.
    log: Vec<Trial>,
    state: State,
    in_flight: Vec<Trial>,
    started: Vec<String>,
    order: SplitMix64,
    /// Before every call, round-trip the state through JSON and rebuild the history from its
    /// trials, as a restarted controller would (from status, results.jsonl and the ledger).
    restart_every_call: bool,
    /// hillClimb's step after each call, consecutive repeats removed.
    steps: Vec<String>,
    /// The campaign's train.py.
    train_py: String,
}

impl Sim {
    fn new(search: SearchSpec, base: Value) -> Self {
        let order = SplitMix64::new(search.seed ^ 0x5eed);
        Self {
            search,
            base,
            history: History::new(),
            log: vec![],
            state: State::new(),
            in_flight: vec![],
            started: vec![],
            order,
            restart_every_call: false,
            steps: vec![],
            train_py: TRAIN.into(),
        }
    }

    fn propose(&mut self, n: usize) -> Batch {
        if self.restart_every_call {
            let saved = serde_json::to_string(&self.state).unwrap();
            assert!(saved.len() < 300, "state stays small: {saved}");
            self.state = serde_json::from_str(&saved).unwrap();
            self.history = self.log.iter().cloned().collect();
        }
        let batch = propose(
            &self.search,
            &ObjectiveSpec::default(),
            Some(&self.base),
            &self.train_py,
            &self.history,
            &mut self.state,
            n,
        )
        .unwrap();
        if let Some(step) = self.state.get(STATE_STEP)
            && self.steps.last() != Some(step)
        {
            self.steps.push(step.clone());
        }
        batch
    }

    /// Starts what the strategy proposes, checking every proposal on the way.
    fn start(&mut self, n: usize) -> Batch {
        let batch = self.propose(n);
        assert!(batch.proposals.len() <= n);
        let space = Space::new(&self.search.parameters).unwrap();
        for p in &batch.proposals {
            if self.search.strategy != Strategy::List {
                assert_valid(&space, &self.base, p);
            }
            assert_sent(&self.search, &self.base, &self.train_py, p);
            assert!(!self.history.contains(&p.experiment_id), "repeat {p:?}");
            let trial = Trial {
                experiment_id: p.experiment_id.clone(),
                config: p.config.clone(),
                params: p.params.clone(),
                outcome: Outcome::InFlight,
            };
            self.record(trial.clone());
            self.in_flight.push(trial);
            self.started.push(p.experiment_id.clone());
        }
        batch
    }

    /// Finishes one experiment in flight, if any.
    fn finish_one(&mut self) -> bool {
        if self.in_flight.is_empty() {
            return false;
        }
        let i = self.order.below(self.in_flight.len() as u64) as usize;
        let mut trial = self.in_flight.swap_remove(i);
        trial.outcome = Outcome::Succeeded(landscape::val_bpb(&scored(&trial)));
        self.record(trial);
        true
    }

    /// Records a trial in the history and in the log.
    fn record(&mut self, trial: Trial) {
        self.log.retain(|t| t.experiment_id != trial.experiment_id);
        self.log.push(trial.clone());
        self.history.record(trial);
    }

    /// Runs `budget` experiments with `parallel` in flight; returns the best val_bpb.
    fn run(&mut self, budget: usize, parallel: usize) -> f64 {
        loop {
            let room = parallel
                .saturating_sub(self.in_flight.len())
                .min(budget - self.started.len());
            if room > 0 {
                self.start(room);
            }
            if !self.finish_one() {
                break;
            }
        }
        self.history.best().unwrap_or(f64::INFINITY)
    }
}

/// What the landscape scores: the config with the params on top (with `applyTo: trainScript`
/// the params are what train.py's constants were rewritten to, which `assert_sent` checks).
fn scored(trial: &Trial) -> Value {
    let params = trial.params.as_object().cloned().unwrap_or_default();
    Value::Object(scored_config(&trial.config, &params))
}

/// What is sent matches the params: the id is that of (train_py, config); with `applyTo:
/// config` the params are in the config and train.py is the campaign's; with `trainScript`
/// the config is the base and train.py's constants read back as the params.
fn assert_sent(search: &SearchSpec, base: &Value, train_py: &str, p: &Proposal) {
    assert_eq!(
        p.experiment_id,
        crate::experiment::experiment_id(&p.train_py, &p.config)
    );
    let params = p.params.as_object().expect("params is an object");
    match search.apply_to {
        ApplyTo::Config => {
            assert_eq!(&*p.train_py, train_py);
            for (k, v) in params {
                assert_eq!(&p.config[k], v, "{k} is in the config");
            }
        }
        ApplyTo::TrainScript => {
            assert_eq!(&p.config, base, "the config is the base config");
            let sent = train_script::Template::new(&p.train_py).expect("parses");
            for (k, v) in params {
                assert_eq!(sent.constant(k), Some(v), "{k} in\n{}", p.train_py);
            }
        }
    }
}

/// A proposal has every parameter set to a valid value (List entries are checked by their own
/// test: they may set anything).
fn assert_valid(space: &Space, base: &Value, p: &Proposal) {
    let params = p.params.as_object().expect("params is an object");
    assert_eq!(
        params.len(),
        space.dims.len(),
        "params hold the searched parameters only"
    );
    let config = scored_config(&p.config, params);
    for dim in &space.dims {
        let v = &config[&dim.name];
        assert!(admits(dim, v), "{} = {v} is not valid", dim.name);
    }
    for (k, v) in base.as_object().unwrap() {
        if space.dims.iter().all(|d| &d.name != k) {
            assert_eq!(&config[k], v, "base key {k} kept");
        }
    }
}

fn scored_config(
    config: &Value,
    params: &serde_json::Map<String, Value>,
) -> serde_json::Map<String, Value> {
    let mut out = config.as_object().cloned().unwrap_or_default();
    out.extend(params.clone());
    out
}

/// Whether a JSON value is a valid value of a dimension: in range, ints as JSON integers.
fn admits(dim: &Dim, v: &Value) -> bool {
    match &dim.kind {
        DimKind::Float { lo, hi, .. } => v.as_f64().is_some_and(|x| *lo <= x && x <= *hi),
        DimKind::Int { lo, hi, .. } => v.as_i64().is_some_and(|x| *lo <= x && x <= *hi),
        DimKind::Choice { values } => values.contains(v),
    }
}

fn ids(batch: &Batch) -> Vec<String> {
    batch
        .proposals
        .iter()
        .map(|p| p.experiment_id.clone())
        .collect()
}

#[test]
fn proposals_are_valid_and_ints_are_ints() {
    for strategy in [Strategy::Grid, Strategy::Random, Strategy::HillClimb] {
        let mut sim = Sim::new(search(strategy, 3), base());
        sim.run(30, 3);
        assert_eq!(sim.started.len(), 30, "{strategy:?}");
        for t in sim.log {
            assert!(t.config["depth"].is_i64(), "{}", t.config["depth"]);
            assert_eq!(t.config["optimizer"], json!({"name": "muon"}));
        }
    }
}

#[test]
fn seeds_reproduce_and_differ() {
    for strategy in [Strategy::Random, Strategy::HillClimb] {
        let run = |seed| {
            let mut sim = Sim::new(search(strategy, seed), base());
            sim.run(25, 2);
            sim.started
        };
        assert_eq!(run(7), run(7), "{strategy:?} is reproducible");
        assert_ne!(run(7), run(8), "{strategy:?} depends on the seed");
    }
}

#[test]
fn propose_is_idempotent_until_history_changes() {
    for strategy in [
        Strategy::List,
        Strategy::Grid,
        Strategy::Random,
        Strategy::HillClimb,
    ] {
        let mut s = search(strategy, 1);
        s.experiments = vec![
            json!({"lr": 0.01}),
            json!({"lr": 0.02}),
            json!({"lr": 0.03}),
        ];
        let mut sim = Sim::new(s, base());
        sim.start(1);
        let first = sim.propose(2);
        let again = sim.propose(2);
        assert_eq!(first, again, "{strategy:?}");
        assert_eq!(first.proposals.len(), 2);
    }
}

#[test]
fn history_ids_are_never_proposed() {
    // Pre-seed history with the first proposals of each strategy, as if another controller had
    // started them; none of them may come back.
    for strategy in [Strategy::Grid, Strategy::Random, Strategy::HillClimb] {
        let mut sim = Sim::new(search(strategy, 11), base());
        let taken = ids(&sim.propose(5));
        for p in sim.propose(5).proposals {
            sim.record(Trial {
                experiment_id: p.experiment_id,
                params: p.params,
                config: p.config,
                outcome: Outcome::Failed,
            });
        }
        sim.state.clear();
        let next = ids(&sim.propose(20));
        assert_eq!(next.len(), 20);
        assert!(taken.iter().all(|id| !next.contains(id)), "{strategy:?}");
        let unique: HashSet<_> = next.iter().collect();
        assert_eq!(
            unique.len(),
            next.len(),
            "{strategy:?}: no duplicates in a batch"
        );
    }
}

#[test]
fn list_runs_entries_in_order_skips_duplicates_and_exhausts() {
    let mut s = search(Strategy::List, 0);
    s.parameters.clear();
    // The third entry is the first again (same config once layered on the base): skipped.
    s.experiments = vec![
        json!({"lr": 0.01}),
        json!({"lr": 0.02, "steps": 600}),
        json!({"lr": 0.01, "steps": 300}),
        json!({"lr": 0.03}),
    ];
    let mut sim = Sim::new(s, base());
    let first = sim.start(2);
    assert!(!first.exhausted);
    assert_eq!(first.proposals[0].config["lr"], json!(0.01));
    assert_eq!(first.proposals[1].config["steps"], json!(600));
    assert_eq!(first.proposals[1].config["depth"], json!(8), "base kept");
    let rest = sim.start(5);
    assert_eq!(rest.proposals.len(), 1);
    assert_eq!(rest.proposals[0].config["lr"], json!(0.03));
    assert!(rest.exhausted);
    assert!(sim.start(5).exhausted);
    // In flight counts as started: the cursor is past every entry.
    assert_eq!(sim.state[STATE_NEXT], "4");
    while sim.finish_one() {}
    let done = sim.start(5);
    assert!(done.proposals.is_empty() && done.exhausted);
}

#[test]
fn grid_is_the_product_of_points_exactly() {
    let mut s = search(Strategy::Grid, 0);
    s.parameters[1].grid_points = 4; // depth 2, 7, 11, 16
    s.parameters[2].grid_points = 2; // warmup 0, 0.5
    let mut sim = Sim::new(s, base());
    let mut batches = 0;
    loop {
        let batch = sim.start(7);
        while sim.finish_one() {}
        batches += 1;
        if batch.exhausted {
            break;
        }
        assert!(batches < 100);
    }
    // lr 3 × depth 4 × warmup 2 × batch_size 5.
    assert_eq!(sim.started.len(), 3 * 4 * 2 * 5);
    let lrs: HashSet<String> = sim.log.iter().map(|t| t.config["lr"].to_string()).collect();
    assert_eq!(
        lrs,
        HashSet::from(["0.0001", "0.00316228", "0.1"].map(String::from))
    );
    let depths: HashSet<String> = sim
        .log
        .iter()
        .map(|t| t.config["depth"].to_string())
        .collect();
    assert_eq!(
        depths,
        HashSet::from(["2", "7", "11", "16"].map(String::from))
    );
    let after = sim.start(3);
    assert!(after.proposals.is_empty() && after.exhausted);
}

#[test]
fn grid_collapses_int_points_that_round_together() {
    let s = SearchSpec {
        strategy: Strategy::Grid,
        parameters: vec![Parameter {
            grid_points: 10,
            ..range("n", ParameterKind::Int, 0.5, 2.5, false)
        }],
        experiments: vec![],
        apply_to: ApplyTo::Config,
        llm: None,
        seed: 0,
    };
    let mut sim = Sim::new(s, json!({}));
    let batch = sim.start(100);
    assert!(batch.exhausted);
    assert_eq!(
        batch
            .proposals
            .iter()
            .map(|p| p.config["n"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2)]
    );
}

#[test]
fn restart_with_saved_state_continues_without_repeats() {
    for strategy in [Strategy::Grid, Strategy::Random, Strategy::HillClimb] {
        // One uninterrupted campaign...
        let mut whole = Sim::new(search(strategy, 5), base());
        whole.run(30, 3);

        // ...and the same campaign with the controller restarted before every call.
        let mut sim = Sim::new(search(strategy, 5), base());
        sim.restart_every_call = true;
        sim.run(30, 3);
        assert_eq!(sim.started, whole.started, "{strategy:?}");
        let unique: HashSet<_> = sim.started.iter().collect();
        assert_eq!(unique.len(), 30);
    }
}

#[test]
fn lost_state_gives_the_same_proposals() {
    for strategy in [Strategy::Grid, Strategy::Random, Strategy::HillClimb] {
        let mut sim = Sim::new(search(strategy, 9), base());
        sim.run(20, 4);
        let with_state = sim.propose(4);
        sim.state.clear();
        assert_eq!(sim.propose(4), with_state, "{strategy:?}");
    }
}

#[test]
fn a_changed_search_starts_its_cursor_over() {
    let mut sim = Sim::new(search(Strategy::Grid, 0), base());
    sim.start(10);
    // The cursor moves past what is in history, on the next call.
    sim.propose(0);
    assert_eq!(sim.state[STATE_NEXT], "10");
    // A new train.py makes every experiment new again.
    let batch = propose(
        &sim.search,
        &ObjectiveSpec::default(),
        Some(&sim.base),
        "print('v2')",
        &sim.history,
        &mut sim.state,
        3,
    )
    .unwrap();
    assert_eq!(batch.proposals.len(), 3);
    assert_eq!(sim.state[STATE_NEXT], "0");
    assert_eq!(batch.proposals[0].config["lr"], json!(0.0001));
}

#[test]
fn hill_climb_starts_from_base_and_middles() {
    let mut sim = Sim::new(search(Strategy::HillClimb, 0), base());
    let first = &sim.start(1).proposals[0];
    // depth from the base; lr the geometric middle of 1e-4..1e-1; warmup the middle; batch_size
    // the middle value.
    assert_eq!(first.config["depth"], json!(8));
    assert_eq!(first.config["lr"], json!(0.00316228));
    assert_eq!(first.config["warmup_ratio"], json!(0.25));
    assert_eq!(first.config["batch_size"], json!(64));
}

#[test]
fn hill_climb_keeps_only_improvements_beyond_the_noise_floor() {
    let mut sim = Sim::new(search(Strategy::HillClimb, 2), base());
    let start = sim.start(1).proposals[0].clone();
    let record = |sim: &mut Sim, p: &Proposal, v: f64| {
        sim.record(Trial {
            experiment_id: p.experiment_id.clone(),
            config: p.config.clone(),
            params: p.params.clone(),
            outcome: Outcome::Succeeded(v),
        });
    };
    record(&mut sim, &start, 1.000);
    let near = sim.propose(1).proposals[0].clone();
    // 0.0015 better: within the default noise floor of 0.002, discarded.
    record(&mut sim, &near, 0.9985);
    sim.propose(1);
    assert_eq!(sim.state[STATE_CENTER], start.experiment_id);
    let far = sim.propose(1).proposals[0].clone();
    record(&mut sim, &far, 0.990);
    sim.propose(1);
    assert_eq!(sim.state[STATE_CENTER], far.experiment_id);
}

#[test]
fn hill_climb_shrinks_its_step_after_failures() {
    let mut sim = Sim::new(search(Strategy::HillClimb, 4), base());
    sim.propose(1);
    assert_eq!(sim.state[STATE_STEP], "0.250000");
    let start = sim.start(1).proposals[0].clone();
    sim.finish_one();
    let _ = start;
    // Every neighbour fails (worker errors): after patience(4) = 6 failures the step halves.
    for _ in 0..6 {
        let p = sim.propose(1).proposals[0].clone();
        sim.record(Trial {
            experiment_id: p.experiment_id,
            params: p.params,
            config: p.config,
            outcome: Outcome::Failed,
        });
    }
    sim.propose(1);
    assert_eq!(sim.state[STATE_STEP], "0.125000");
}

#[test]
fn hill_climb_keeps_going_in_a_long_campaign() {
    // Far beyond the point where it has converged and every step size has failed many times.
    let mut sim = Sim::new(search(Strategy::HillClimb, 8), base());
    sim.run(600, 4);
    assert_eq!(sim.started.len(), 600);
    assert!(!sim.propose(4).exhausted);
    // The step went round: 0.25 halving down to 0.25 / 64, then starting over.
    let smallest = sim.steps.iter().position(|s| s == "0.003906").unwrap();
    assert_eq!(sim.steps[smallest + 1], "0.250000", "{:?}", sim.steps);
    assert_eq!(sim.steps[smallest - 1], "0.007812");
}

#[test]
fn hill_climb_in_parallel_proposes_distinct_points() {
    let mut sim = Sim::new(search(Strategy::HillClimb, 6), base());
    let batch = sim.start(8);
    assert_eq!(batch.proposals.len(), 8);
    // Nothing finished: the next call must avoid all eight in flight.
    let more = sim.start(8);
    assert_eq!(more.proposals.len(), 8);
    let all: HashSet<_> = sim.started.iter().collect();
    assert_eq!(all.len(), 16);
}

#[test]
fn small_discrete_spaces_exhaust() {
    let s = SearchSpec {
        strategy: Strategy::Random,
        parameters: vec![
            choice("a", vec![json!(1), json!(2), json!(3)]),
            range("b", ParameterKind::Int, 1.0, 2.0, false),
        ],
        experiments: vec![],
        apply_to: ApplyTo::Config,
        llm: None,
        seed: 0,
    };
    for strategy in [Strategy::Random, Strategy::HillClimb] {
        let mut sim = Sim::new(
            SearchSpec {
                strategy,
                ..s.clone()
            },
            json!({}),
        );
        sim.run(100, 2);
        assert_eq!(
            sim.started.len(),
            6,
            "{strategy:?} visits all 3 × 2 points once"
        );
        assert!(sim.propose(2).exhausted, "{strategy:?}");
    }
}

#[test]
fn invalid_specs_are_errors_naming_the_field() {
    let mut s = search(Strategy::Random, 0);
    s.parameters[1] = range("depth", ParameterKind::Int, 2.2, 2.8, false);
    assert_eq!(
        validate(&s, None, TRAIN).unwrap_err().field,
        "search.parameters[1]"
    );
    let mut s = search(Strategy::Random, 0);
    s.parameters[2].name = "lr".into();
    assert_eq!(
        validate(&s, None, TRAIN).unwrap_err().field,
        "search.parameters[2]"
    );
    let s = search(Strategy::Random, 0);
    assert_eq!(
        validate(&s, Some(&json!([1])), TRAIN).unwrap_err().field,
        "baseConfig"
    );
    let mut s = search(Strategy::List, 0);
    s.experiments = vec![json!(3)];
    assert_eq!(
        validate(&s, None, TRAIN).unwrap_err().field,
        "search.experiments[0]"
    );
}

/// Mean best val_bpb over 20 seeds for a strategy on the simulated landscape.
fn mean_best(strategy: Strategy, parallel: usize) -> f64 {
    let seeds = 0..20u64;
    let total: f64 = seeds
        .clone()
        .map(|seed| {
            let mut sim = Sim::new(search(strategy, seed * 7919 + 1), json!({"steps": 300}));
            sim.run(40, parallel)
        })
        .sum();
    total / seeds.count() as f64
}

#[test]
fn hill_climb_beats_random_on_the_landscape() {
    for parallel in [1, 4] {
        let hill = mean_best(Strategy::HillClimb, parallel);
        let random = mean_best(Strategy::Random, parallel);
        eprintln!("parallel {parallel}: hillClimb {hill:.6}, random {random:.6}");
        // More than the noise floor apart, averaged over 20 seeds.
        assert!(
            hill + 0.002 < random,
            "parallel {parallel}: hillClimb {hill} vs random {random}"
        );
        assert!(
            hill < 0.9645,
            "hillClimb gets close to the optimum 0.960: {hill}"
        );
    }
}

/// A train.py with the brief's parameters as top-level constants, commented.
const SCRIPT: &str = "\
import json

lr = 0.01  # learning rate
depth = 6  # layers
warmup_ratio = 0.0
batch_size: int = 32  # sequences per step

print(json.dumps({\"val_bpb\": 1.0}))
";

fn script_sim(strategy: Strategy, seed: u64) -> Sim {
    let mut s = search(strategy, seed);
    s.apply_to = ApplyTo::TrainScript;
    let mut sim = Sim::new(s, json!({"steps": 300}));
    sim.train_py = SCRIPT.into();
    sim
}

#[test]
fn every_strategy_rewrites_train_py_with_apply_to_train_script() {
    for strategy in [Strategy::Grid, Strategy::Random, Strategy::HillClimb] {
        let mut sim = script_sim(strategy, 3);
        // Sim::start checks each proposal: config unchanged, constants read back as params.
        sim.run(30, 3);
        let scripts: HashSet<String> = sim.log.iter().map(|t| t.experiment_id.clone()).collect();
        assert_eq!(scripts.len(), 30, "{strategy:?}");
    }
    let p = &script_sim(Strategy::Grid, 0).start(1).proposals[0];
    assert!(
        p.train_py.contains("depth = 2  # layers\n"),
        "{}",
        p.train_py
    );
    assert!(
        p.train_py
            .contains("batch_size: int = 16  # sequences per step\n")
    );
    assert!(p.train_py.contains("lr = 0.0001  # learning rate\n"));
    assert_eq!(
        p.description,
        "batch_size=16 depth=2 lr=0.0001 warmup_ratio=0.0"
    );
}

#[test]
fn list_entries_rewrite_train_py_constants() {
    let mut s = search(Strategy::List, 0);
    s.apply_to = ApplyTo::TrainScript;
    s.parameters.clear();
    s.experiments = vec![json!({"lr": 0.02, "depth": 8}), json!({"lr": 0.03})];
    let mut sim = Sim::new(s, json!({"steps": 300}));
    sim.train_py = SCRIPT.into();
    let batch = sim.start(5);
    assert!(batch.exhausted);
    assert_eq!(batch.proposals.len(), 2);
    assert!(
        batch.proposals[0]
            .train_py
            .contains("lr = 0.02  # learning rate\ndepth = 8  # layers")
    );
    assert!(
        batch.proposals[1]
            .train_py
            .contains("lr = 0.03  # learning rate\ndepth = 6  # layers")
    );
    assert_eq!(batch.proposals[1].params, json!({"lr": 0.03}));
}

#[test]
fn hill_climb_starts_from_train_py_constants() {
    let first = script_sim(Strategy::HillClimb, 0).start(1).proposals[0].clone();
    // lr 0.01, depth 6, warmup 0.0 from train.py; batch_size 32 is one of the choices.
    assert_eq!(
        first.params,
        json!({"lr": 0.01, "depth": 6, "warmup_ratio": 0.0, "batch_size": 32})
    );
    assert_eq!(
        &*first.train_py, SCRIPT,
        "the start point is train.py as it is"
    );
}

#[test]
fn hill_climb_on_train_py_climbs_as_well_as_on_config() {
    // The same search from the same start point, once on the config and once on train.py's
    // constants (ids differ, so the neighbours drawn differ): both get as close to the optimum.
    let seeds = 0..10u64;
    let mean = |on_script: bool| {
        seeds.clone().map(|seed| {
            let mut sim = if on_script {
                script_sim(Strategy::HillClimb, seed)
            } else {
                Sim::new(
                    search(Strategy::HillClimb, seed),
                    json!({"steps": 300, "lr": 0.01, "depth": 6, "warmup_ratio": 0.0, "batch_size": 32}),
                )
            };
            sim.run(40, 2)
        }).sum::<f64>() / 10.0
    };
    let (on_config, on_script) = (mean(false), mean(true));
    eprintln!(
        "hillClimb, mean best of 10 seeds: config {on_config:.6}, trainScript {on_script:.6}"
    );
    assert!(on_script < 0.966, "it climbs from 0.978: {on_script}");
    assert!(
        (on_config - on_script).abs() < 0.003,
        "{on_config} vs {on_script}"
    );
}

#[test]
fn a_parameter_that_is_not_a_constant_is_a_spec_error_naming_it() {
    let mut s = search(Strategy::Random, 0);
    s.apply_to = ApplyTo::TrainScript;
    s.parameters[2].name = "WARMUP".into();
    let e = validate(&s, None, SCRIPT).unwrap_err();
    assert_eq!(e.field, "search.parameters[2].name");
    assert!(
        e.message.contains("WARMUP is not a top-level assignment"),
        "{e}"
    );
    // The same name is fine with applyTo: config (it is a config key).
    s.apply_to = ApplyTo::Config;
    validate(&s, None, SCRIPT).unwrap();
    // A list entry naming an unknown constant, and a train.py that is not Python.
    let mut s = search(Strategy::List, 0);
    s.apply_to = ApplyTo::TrainScript;
    s.experiments = vec![json!({"lr": 0.1}), json!({"momentum": 0.9})];
    assert_eq!(
        validate(&s, None, SCRIPT).unwrap_err().field,
        "search.experiments[1]"
    );
    let e = validate(&s, None, "lr = (\n").unwrap_err();
    assert_eq!(e.field, "trainScript");
}

#[test]
fn llm_campaigns_propose_nothing_synchronously() {
    let mut s = search(Strategy::Llm, 0);
    s.parameters.clear();
    assert_eq!(validate(&s, None, SCRIPT).unwrap_err().field, "search.llm");
    s.llm = Some(serde_json::from_value(json!({"model": "m"})).unwrap());
    validate(&s, None, SCRIPT).unwrap();
    let mut sim = Sim::new(s, json!({}));
    sim.train_py = SCRIPT.into();
    assert_eq!(sim.propose(3), Batch::default());
}

fn arb_parameter(i: usize) -> impl Gen<Value = Parameter> {
    let name = format!("p{i}");
    prop_oneof![
        // Float ranges, possibly huge, tiny or negative; log scale only above zero.
        (-1e12f64..1e12, 1e-9f64..1e12, any::<bool>(), 2u32..6).prop_map({
            let name = name.clone();
            move |(min, width, log, grid)| {
                let min = if log { min.abs().max(1e-12) } else { min };
                Parameter {
                    grid_points: grid,
                    ..range(&name, ParameterKind::Float, min, min + width, log)
                }
            }
        }),
        // Int ranges with fractional bounds that still hold a whole number.
        (
            -1000i64..1000,
            0i64..50,
            0.0f64..0.49,
            any::<bool>(),
            2u32..6
        )
            .prop_map({
                let name = name.clone();
                move |(lo, span, frac, log, grid)| {
                    let lo = if log { lo.abs() + 1 } else { lo };
                    Parameter {
                        grid_points: grid,
                        ..range(
                            &name,
                            ParameterKind::Int,
                            lo as f64 - frac,
                            (lo + span) as f64 + frac + 0.01,
                            log,
                        )
                    }
                }
            }),
        prop::collection::vec(
            prop_oneof![
                any::<i32>().prop_map(Value::from),
                "[a-z]{0,3}".prop_map(Value::from),
                Just(Value::Null),
            ],
            1..5
        )
        .prop_map(move |values| choice(&name, values)),
    ]
}

fn arb_search() -> impl Gen<Value = SearchSpec> {
    let strategies = prop_oneof![
        Just(Strategy::Grid),
        Just(Strategy::Random),
        Just(Strategy::HillClimb),
    ];
    (1usize..5, strategies, any::<u64>()).prop_flat_map(|(d, strategy, seed)| {
        let params: Vec<_> = (0..d).map(arb_parameter).collect();
        params.prop_map(move |parameters| SearchSpec {
            strategy,
            parameters,
            experiments: vec![],
            apply_to: ApplyTo::Config,
            llm: None,
            seed,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn propose_stays_in_range_and_never_repeats(
        mut s in arb_search(),
        parallel in 1usize..5,
        failing in any::<bool>(),
        on_script in any::<bool>(),
    ) {
        if on_script {
            s.apply_to = ApplyTo::TrainScript;
        }
        let mut sim = Sim::new(s, json!({"p0": "base value", "keep": true}));
        if on_script {
            sim.train_py = (0..5).map(|i| format!("p{i} = 0  # p{i}\n")).collect();
        }
        // Sim::start asserts validity and no repeats for every proposal.
        for _ in 0..12 {
            let room = parallel - sim.in_flight.len();
            sim.start(room);
            if failing && sim.in_flight.len() > 1 {
                let mut t = sim.in_flight.remove(0);
                t.outcome = Outcome::Failed;
                sim.record(t);
            }
            sim.finish_one();
        }
        let unique: HashSet<_> = sim.started.iter().collect();
        prop_assert_eq!(unique.len(), sim.started.len());
    }
}

#[test]
fn history_keeps_arrival_order_and_drops_what_think_added() {
    let trial = |id: &str, outcome| Trial {
        experiment_id: id.into(),
        config: Value::Null,
        params: json!({"lr": id}),
        outcome,
    };
    let mut h: History = [
        trial("a", Outcome::Succeeded(1.0)),
        trial("b", Outcome::InFlight),
        trial("c", Outcome::Failed),
    ]
    .into_iter()
    .collect();
    assert_eq!((h.len(), h.has_in_flight()), (3, true));
    // b's result arrives, then a second line for a: both move to the end.
    h.record(trial("b", Outcome::Succeeded(0.5)));
    h.record(trial("a", Outcome::Succeeded(0.7)));
    let order: Vec<Value> = h.finished().map(|t| t.params()["lr"].clone()).collect();
    assert_eq!(order, [json!("c"), json!("b"), json!("a")]);
    assert_eq!(
        (h.len(), h.has_in_flight(), h.best()),
        (3, false, Some(0.5))
    );
    // THINK's overlay: an experiment in flight and a claim being checked.
    h.start("d");
    h.set_outcome("b", Outcome::InFlight);
    assert!(h.contains("d") && h.has_in_flight());
    assert_eq!(h.best(), Some(0.7));
    h.clear_overlay();
    assert!(!h.contains("d") && !h.has_in_flight());
    assert_eq!((h.len(), h.best()), (3, Some(0.5)));
    h.reserve("a-r1");
    assert!(h.contains("a-r1"));
    assert_eq!(h.len(), 3, "a reserved id is not a trial");
}
