//! THINK: choose the next experiments of a campaign.
//!
//! [`propose`] is called from the reconcile loop, so it is pure, deterministic and free of I/O:
//! its answer depends only on the spec, the train.py, the [`History`] of experiments and a small
//! string map of [`State`] that the controller keeps in `status.strategyState`.
//!
//! # Contract
//!
//! - A proposal carries what varies as `params` (each search parameter under its name, or a list
//!   entry), and what is really sent: the `train_py` and the `config`. With `applyTo: config`
//!   (the default) `config` is `baseConfig` with `params` layered on top key by key and
//!   `train_py` is the campaign's; with `applyTo: trainScript` `config` is `baseConfig` and each
//!   parameter rewrites the right-hand side of its top-level assignment in train.py
//!   ([`train_script`]). Floats are rounded to 6 significant digits, ints are integers, choices
//!   are one of `values`, and everything lies within `min..=max`.
//! - No proposal has an experiment id that is in `history`, and a batch has no duplicates, so the
//!   same (train.py, config) is never proposed twice (docs/design.md, invariant 4). Put every experiment in
//!   `history` as soon as it is started, and keep it there (in flight, succeeded or failed).
//! - `propose` is idempotent: called again with the same history it proposes the same experiments.
//!   Proposals the controller did not start (no worker, budget) are therefore not lost; they come
//!   back on the next call.
//! - `state` is a cache, not a source of truth: it holds a cursor so that a long campaign does not
//!   rescan its history, and a fingerprint of the search so that a changed spec starts over.
//!   Losing it costs time, never correctness; after a restart with `state` restored and `history`
//!   rebuilt the strategy continues exactly where it was.
//! - `hillClimb` replays `history` in order to find its incumbent, so history must list finished
//!   experiments in the order their results arrived (the order of results.jsonl); in-flight ones
//!   may be anywhere.
//!
//! # Strategies
//!
//! - `list`: `search.experiments` in order; exhausted after the last one.
//! - `grid`: every combination of the parameters' grid points (`gridPoints` per range, every
//!   value of a choice), the last parameter varying fastest; exhausted after the last one.
//! - `random`: independent uniform samples (log-uniform on a log scale), draw `k` derived from
//!   `(seed, k)` alone.
//! - `hillClimb`: see [`hill_climb`].
//! - `llm`: a language model edits train.py; [`llm::LlmProposer`] does it asynchronously, driven
//!   by the engine, and [`propose`] proposes nothing for it.

mod decision;
mod hill_climb;
mod history;
pub mod landscape;
pub mod llm;
pub(crate) mod rng;
mod space;
#[cfg(test)]
mod tests;
pub mod train_script;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::crd::{ApplyTo, ObjectiveSpec, SearchSpec, SpecError, Strategy};
use crate::experiment::experiment_id;
pub use decision::{Decision, decide};
pub use history::{Fingerprint, FinishedTrial, History};
use rng::SplitMix64;
use space::{Coord, Space};
use train_script::Template;

/// Strategy state persisted by the controller in `status.strategyState` (a few dozen bytes).
pub type State = BTreeMap<String, String>;

/// State key: name of the strategy that wrote the state.
pub const STATE_STRATEGY: &str = "strategy";
/// State key: fingerprint of (train.py, search, baseConfig); a different one resets the cursor.
pub const STATE_FINGERPRINT: &str = "fingerprint";
/// State key: list/grid/random cursor, the first entry not yet in history.
pub const STATE_NEXT: &str = "next";
/// State key (hillClimb, informational): experiment id of the incumbent, or of the start point.
pub const STATE_CENTER: &str = "center";
/// State key (hillClimb, informational): current step, in unit coordinates of each range.
pub const STATE_STEP: &str = "step";

/// Upper bound on candidates examined per call beyond those already in history, so a nearly
/// exhausted space costs milliseconds, not a hang.
const MAX_TRIES: usize = 4096;

/// A new experiment to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// The exact train.py the worker gets.
    pub train_py: Arc<str>,
    /// The config to send to the worker (`baseConfig`, plus the parameters with `applyTo: config`).
    pub config: Value,
    /// What varies: a JSON object of each searched parameter and its value, or the list entry.
    /// Small (never the whole `baseConfig`): it goes into status, results.jsonl and reports.
    pub params: Value,
    /// One line for humans, e.g. `DEPTH=6 MATRIX_LR=0.03`.
    pub description: String,
    /// `experiment_id(train_py, config)`.
    pub experiment_id: String,
}

/// What [`propose`] returns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// Up to `n` new experiments, in the order they should start.
    pub proposals: Vec<Proposal>,
    /// Nothing will be proposed beyond `proposals`: the campaign is complete once they and the
    /// experiments in flight have finished. `list` and `grid` set it when they reach their end;
    /// `random` when it finds no unseen point within its bounded number of tries; `hillClimb` when
    /// it finds no unseen neighbour at any step size and nothing is in flight that could move it.
    pub exhausted: bool,
}

/// How an experiment in [`History`] ended, if it has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Started, no result yet.
    InFlight,
    /// Finished with this `val_bpb`.
    Succeeded(f64),
    /// Finished without a usable result (worker error, timeout, invalid answer).
    Failed,
}

/// One experiment the campaign has started.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    /// Its experiment id.
    pub experiment_id: String,
    /// The config it ran with.
    pub config: Value,
    /// Its `params` (a JSON object; hillClimb moves around the incumbent's params, whichever
    /// `applyTo` is).
    pub params: Value,
    /// How it ended, if it has.
    pub outcome: Outcome,
}

/// Checks that a search can run on this train.py; [`propose`] returns the same errors. The
/// messages name the field (and, with `applyTo: trainScript`, the parameter that is not a
/// top-level assignment of train.py).
pub fn validate(
    search: &SearchSpec,
    base: Option<&Value>,
    train_py: &str,
) -> Result<(), SpecError> {
    Setup::new(search, base, train_py).map(|_| ())
}

/// Proposes up to `n` new experiments (fewer, possibly none, when the space is exhausted or every
/// nearby point is in flight). See the module documentation for the contract.
///
/// - `search`, `objective`, `base`: the campaign's `spec.search`, `spec.objective` (hillClimb
///   uses `noiseFloor`) and `spec.baseConfig`.
/// - `train_py`: the campaign's train.py; what is sent (and so every experiment id) is derived
///   from it.
/// - `history`: every experiment started so far (in flight, succeeded or failed).
/// - `state`: `status.strategyState`, read and rewritten (a few dozen bytes).
/// - `n`: how many experiments the controller can start now (free parallelism). `n = 0` only
///   updates `state` and reports exhaustion.
///
/// Errors when the search cannot run, naming the field (the same checks as [`validate`]).
/// Cost: a few hashes per proposal; at most a few thousand when the space is nearly used up,
/// plus one pass over `history` when `state` was lost.
pub fn propose(
    search: &SearchSpec,
    objective: &ObjectiveSpec,
    base: Option<&Value>,
    train_py: &str,
    history: &History,
    state: &mut State,
    n: usize,
) -> Result<Batch, SpecError> {
    let setup = Setup::new(search, base, train_py)?;
    let fingerprint = setup.fingerprint(search);
    let same_search = state.get(STATE_FINGERPRINT) == Some(&fingerprint)
        && state.get(STATE_STRATEGY).map(String::as_str) == Some(strategy_name(search.strategy));
    let cursor = if same_search {
        state
            .get(STATE_NEXT)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    } else {
        0
    };
    state.clear();
    state.insert(STATE_STRATEGY.into(), strategy_name(search.strategy).into());
    state.insert(STATE_FINGERPRINT.into(), fingerprint);

    let (batch, next) = match search.strategy {
        Strategy::HillClimb => {
            let climb = hill_climb::propose(&setup, search.seed, objective, history, n)?;
            state.insert(STATE_CENTER.into(), climb.center);
            state.insert(STATE_STEP.into(), format!("{:.6}", climb.step));
            return Ok(climb.batch);
        }
        Strategy::List => {
            let len = search.experiments.len() as u128;
            let item = |k: u128| setup.list_entry(&search.experiments[k as usize]);
            setup.walk(history, cursor, Some(len), n, item)?
        }
        Strategy::Grid => {
            let axes: Vec<Vec<Coord>> = setup.space.dims.iter().map(|d| d.grid()).collect();
            let len = axes
                .iter()
                .try_fold(1u128, |acc, a| acc.checked_mul(a.len() as u128));
            // A grid too large to count (over 2^128 points) is never exhausted in practice.
            let item = |k: u128| setup.grid_point(&axes, k);
            setup.walk(history, cursor, Some(len.unwrap_or(u128::MAX)), n, item)?
        }
        Strategy::Random => {
            let item = |k: u128| setup.random_point(search.seed, k);
            setup.walk(history, cursor, None, n, item)?
        }
        // The engine drives the model through `llm::LlmProposer`; nothing to propose here.
        Strategy::Llm => return Ok(Batch::default()),
    };
    state.insert(STATE_NEXT.into(), next.to_string());
    Ok(batch)
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::List => "list",
        Strategy::Grid => "grid",
        Strategy::Random => "random",
        Strategy::HillClimb => "hillClimb",
        Strategy::Llm => "llm",
    }
}

/// What every strategy needs: the validated space, the base config, the train.py, and with
/// `applyTo: trainScript` its parsed constants.
struct Setup<'a> {
    space: Space,
    base: Map<String, Value>,
    /// Where parameters start (hillClimb's first point): `baseConfig`, or train.py's constants.
    origin: Map<String, Value>,
    train_py: &'a str,
    /// The campaign's train.py, shared by every proposal that does not rewrite it.
    shared: Arc<str>,
    /// With `applyTo: trainScript`: the parsed train.py whose constants the parameters rewrite.
    script: Option<Template>,
}

impl<'a> Setup<'a> {
    fn new(
        search: &SearchSpec,
        base: Option<&Value>,
        train_py: &'a str,
    ) -> Result<Self, SpecError> {
        let base = match base {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => return Err(spec_error("baseConfig", "must be a JSON object")),
        };
        search.check_strategy_inputs()?;
        if let Some(i) = search.experiments.iter().position(|e| !e.is_object()) {
            return Err(spec_error(
                &format!("search.experiments[{i}]"),
                "must be a JSON object",
            ));
        }
        let space = Space::new(&search.parameters)?;
        let script = match (search.strategy, search.apply_to) {
            (Strategy::Llm, _) | (_, ApplyTo::TrainScript) => {
                Some(Template::new(train_py).map_err(|e| {
                    spec_error(
                        "trainScript",
                        &format!("train.py does not parse as Python: {e}"),
                    )
                })?)
            }
            _ => None,
        };
        let origin = match (&script, search.apply_to) {
            (Some(t), ApplyTo::TrainScript) => {
                check_script_names(t, search, &space)?;
                space
                    .dims
                    .iter()
                    .filter_map(|d| Some((d.name.clone(), t.constant(&d.name)?.clone())))
                    .collect()
            }
            _ => base.clone(),
        };
        let script = script.filter(|_| search.apply_to == ApplyTo::TrainScript);
        Ok(Self {
            space,
            base,
            origin,
            train_py,
            shared: Arc::from(train_py),
            script,
        })
    }

    /// Identifies the sequence a cursor points into: the same train.py, search and base config.
    fn fingerprint(&self, search: &SearchSpec) -> String {
        let key = serde_json::json!({
            "search": serde_json::to_value(search).unwrap_or(Value::Null),
            "base": Value::Object(self.base.clone()),
        });
        experiment_id(self.train_py, &key)["exp-".len()..].to_string()
    }

    /// The experiment for a set of parameter values: layered onto the config, or written into
    /// train.py.
    fn proposal(&self, params: Map<String, Value>) -> Result<Proposal, SpecError> {
        // Values as they appear where they go: Python literals in train.py, JSON in the config.
        let description = params
            .iter()
            .map(|(k, v)| match self.script {
                Some(_) => format!("{k}={}", train_script::python_literal(v)),
                None => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let (train_py, config) = match &self.script {
            Some(t) => {
                let source = t
                    .render(params.iter().map(|(k, v)| (k.as_str(), v)))
                    .map_err(|e| spec_error("search.parameters", &e.to_string()))?;
                (Arc::from(source), Value::Object(self.base.clone()))
            }
            None => {
                let mut config = self.base.clone();
                config.extend(params.iter().map(|(k, v)| (k.clone(), v.clone())));
                (self.shared.clone(), Value::Object(config))
            }
        };
        Ok(Proposal {
            experiment_id: experiment_id(&train_py, &config),
            train_py,
            config,
            params: Value::Object(params),
            description,
        })
    }

    /// A list entry's parameters (validated to be an object).
    fn list_entry(&self, entry: &Value) -> Map<String, Value> {
        entry.as_object().cloned().unwrap_or_default()
    }

    /// Grid point `k`: mixed-radix digits of `k`, the last parameter varying fastest.
    fn grid_point(&self, axes: &[Vec<Coord>], mut k: u128) -> Map<String, Value> {
        let mut coords = vec![Coord::Choice(0); axes.len()];
        for (slot, axis) in coords.iter_mut().zip(axes).rev() {
            let len = axis.len() as u128;
            *slot = axis[(k % len) as usize];
            k /= len;
        }
        self.space.params(&coords)
    }

    /// Random draw `k`, derived from `(seed, k)` alone so any draw can be recomputed.
    fn random_point(&self, seed: u64, k: u128) -> Map<String, Value> {
        let mut rng = SplitMix64::new(rng::key(&[seed, (k >> 64) as u64, k as u64]));
        let coords: Vec<Coord> = self.space.dims.iter().map(|d| d.sample(&mut rng)).collect();
        self.space.params(&coords)
    }

    /// Walks an indexed sequence from `cursor`, skipping what is in history, until `n` proposals,
    /// the end, or the try limit. Returns the batch and the new cursor: the first index not yet in
    /// history (proposals do not advance it, so an unstarted proposal is proposed again).
    fn walk(
        &self,
        history: &History,
        cursor: u128,
        end: Option<u128>,
        n: usize,
        item: impl Fn(u128) -> Map<String, Value>,
    ) -> Result<(Batch, u128), SpecError> {
        // After a lost state the cursor is 0 and everything in history must be skipped again.
        let max_tries = MAX_TRIES + history.len() + n;
        let mut proposals: Vec<Proposal> = Vec::new();
        let mut batch_ids = HashSet::new();
        let mut next = cursor;
        let mut k = cursor;
        let mut tries = 0;
        // Past `n` proposals, keep going only while the cursor can still advance (so that even
        // `n = 0` moves it past what has started, and reports exhaustion).
        while (proposals.len() < n || k == next) && end.is_none_or(|e| k < e) && tries < max_tries {
            let p = self.proposal(item(k))?;
            if history.contains(&p.experiment_id) {
                if next == k {
                    next = k + 1;
                }
            } else if batch_ids.insert(p.experiment_id.clone()) {
                proposals.push(p);
            }
            k += 1;
            tries += 1;
        }
        let at_end = end.is_some_and(|e| k >= e);
        let exhausted = match end {
            Some(_) => at_end,
            // An endless sequence is exhausted when a whole round of tries found nothing new.
            None => proposals.is_empty() && n > 0,
        };
        Ok((
            Batch {
                proposals,
                exhausted,
            },
            next,
        ))
    }
}

/// With `applyTo: trainScript` every parameter and every list key must be a top-level
/// assignment of train.py, assigned once.
fn check_script_names(t: &Template, search: &SearchSpec, space: &Space) -> Result<(), SpecError> {
    for (i, dim) in space.dims.iter().enumerate() {
        t.check(&dim.name)
            .map_err(|e| spec_error(&format!("search.parameters[{i}].name"), &e.to_string()))?;
    }
    for (i, entry) in search.experiments.iter().enumerate() {
        for key in entry.as_object().into_iter().flat_map(|m| m.keys()) {
            t.check(key)
                .map_err(|e| spec_error(&format!("search.experiments[{i}]"), &e.to_string()))?;
        }
    }
    Ok(())
}

fn spec_error(field: &str, message: &str) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}
