//! `hillClimb`: greedy keep/discard around an incumbent, as autoresearch itself works.
//!
//! 1. Start from `baseConfig` (with `applyTo: trainScript`, from train.py's constants), each
//!    parameter snapped into its range (absent ones take the middle of their range; the geometric
//!    middle on a log scale).
//! 2. Propose neighbours of the incumbent: one parameter (sometimes more) moved by about `step`
//!    in unit coordinates, up or down, at least one whole number or one choice.
//! 3. A result that beats the incumbent by more than `objective.noiseFloor` becomes the incumbent
//!    (keep, [`decide`]); anything else, including a failed experiment, is discarded and counts
//!    as a failure.
//! 4. After [`patience`] failures in a row the step halves; after the smallest step has failed
//!    as often, it starts over at the first step (a restart: small steps cannot leave a local
//!    minimum, and a fresh round of neighbours keeps a long campaign from running dry).
//!
//! Nothing of this is stored: the incumbent, step and failure count are recomputed by replaying
//! the history in arrival order, and neighbour `j` of an incumbent in shrink round `r` is derived
//! from `(seed, incumbent id, r, j)`. So the strategy is idempotent, restarts exactly where it
//! was, and with experiments in flight simply takes the next neighbour that is not in history.
//! Each round has its own neighbours, so a call skips only the few of the current round that
//! have already started (about `patience` plus those in flight), however long the campaign.

use std::collections::HashSet;

use super::rng::{self, SplitMix64};
use super::space::{Coord, Space};
use serde_json::Value;

use super::{Batch, Decision, FinishedTrial, History, Outcome, Proposal, Setup, decide};
use crate::crd::{ObjectiveSpec, SpecError};

/// First step: a quarter of each range.
const INITIAL_STEP: f64 = 0.25;
/// Step sizes before starting over: 0.25 down to 0.25 / 2^6 ≈ 0.4 % of a range.
const LEVELS: u64 = 7;
/// Neighbours examined per round and call before trying the next round.
const TRIES_PER_ROUND: usize = 256;

/// What a hill-climbing call decided.
pub(super) struct Climb {
    pub batch: Batch,
    /// Experiment id of the point proposals are centred on (incumbent or start point).
    pub center: String,
    /// The current step in unit coordinates.
    pub step: f64,
}

/// Failures in a row before the step shrinks: more parameters need more tries to cover their
/// directions before concluding that the step is too large.
fn patience(dims: usize) -> u32 {
    (dims as u32).clamp(2, 8) + 2
}

/// The step in shrink round `round`.
fn step_at(round: u64) -> f64 {
    INITIAL_STEP / (1u64 << (round % LEVELS)) as f64
}

/// The incumbent and shrink round after replaying every finished trial in arrival order.
struct Replay {
    /// The incumbent's params and value.
    incumbent: Option<(Value, f64)>,
    /// How often the step has shrunk (or started over) since the campaign began.
    round: u64,
}

fn replay(history: &History, noise_floor: f64, patience: u32) -> Replay {
    let mut incumbent: Option<(FinishedTrial<'_>, f64)> = None;
    let mut round = 0;
    let mut failures = 0;
    for trial in history.finished() {
        let val_bpb = match trial.outcome {
            Outcome::InFlight => continue,
            Outcome::Succeeded(v) => Some(v),
            Outcome::Failed => None,
        };
        let best = incumbent.map(|(_, b)| b);
        if let (Decision::Keep, Some(v)) = (decide(best, val_bpb, noise_floor), val_bpb) {
            incumbent = Some((trial, v));
            failures = 0;
        } else {
            failures += 1;
            if failures >= patience {
                round += 1;
                failures = 0;
            }
        }
    }
    Replay {
        // Only the incumbent's params are parsed: once per call, not once per trial.
        incumbent: incumbent.map(|(t, v)| (t.params(), v)),
        round,
    }
}

pub(super) fn propose(
    setup: &Setup<'_>,
    seed: u64,
    objective: &ObjectiveSpec,
    history: &History,
    n: usize,
) -> Result<Climb, SpecError> {
    let space = &setup.space;
    let state = replay(history, objective.noise_floor, patience(space.dims.len()));
    let center_params = state
        .incumbent
        .as_ref()
        .and_then(|(params, _)| params.as_object())
        .unwrap_or(&setup.origin);
    let center = space.read(center_params);
    let center_proposal = setup.proposal(space.params(&center))?;

    let mut proposals: Vec<Proposal> = Vec::new();
    let mut batch_ids = HashSet::new();
    let mut offer = |p: Proposal, proposals: &mut Vec<Proposal>| {
        if !history.contains(&p.experiment_id) && batch_ids.insert(p.experiment_id.clone()) {
            proposals.push(p);
        }
    };
    if n > 0 {
        // Only the start point can be unseen: an incumbent is in history by definition.
        offer(center_proposal.clone(), &mut proposals);
    }
    let center_key = rng::hash_str(&center_proposal.experiment_id);
    // The current round first, then the next ones (every step size once), so a neighbourhood
    // that is used up (small discrete spaces, many experiments in flight) does not stall.
    for round in state.round..state.round + LEVELS {
        let mut j = 0;
        while proposals.len() < n && j < TRIES_PER_ROUND {
            let mut rng = SplitMix64::new(rng::key(&[seed, center_key, round, j as u64]));
            let coords = neighbour(space, &center, step_at(round), &mut rng);
            offer(setup.proposal(space.params(&coords))?, &mut proposals);
            j += 1;
        }
    }
    let exhausted = n > 0 && proposals.is_empty() && !history.has_in_flight();
    Ok(Climb {
        batch: Batch {
            proposals,
            exhausted,
        },
        center: center_proposal.experiment_id,
        step: step_at(state.round),
    })
}

/// Moves one random parameter, and each other one with probability 1/d, by 0.5 to 1.5 steps in a
/// random direction.
fn neighbour(space: &Space, center: &[Coord], step: f64, rng: &mut SplitMix64) -> Vec<Coord> {
    let d = center.len() as u64;
    let first = rng.below(d);
    let mut coords = center.to_vec();
    for (i, (slot, dim)) in coords.iter_mut().zip(&space.dims).enumerate() {
        let extra = rng.below(d) == 0;
        let size = step * (0.5 + rng.unit());
        let up = rng.coin();
        if i as u64 == first || extra {
            *slot = dim.nudge(*slot, size, up);
        }
    }
    coords
}
