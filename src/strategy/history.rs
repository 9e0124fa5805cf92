//! What a strategy knows of the experiments a campaign has started, in a few dozen bytes each.
//!
//! A campaign can run for 100,000 experiments and more, so [`History`] keeps per finished trial
//! only what a strategy reads: its outcome, in arrival order (hillClimb replays it), and its
//! params as compact JSON text (parsed again only for hillClimb's incumbent). Ids live in a set
//! of 128-bit fingerprints (the first 16 bytes of SHA-256 of the id): the odds that two of a
//! million ids share one are about 10^-27, far below those of two experiment ids colliding
//! (ids carry 64 bits). Every operation is O(1) but [`History::finished`], which a strategy walks
//! once per call.
//!
//! In-flight trials and outcome overrides (claims being replicated) are an overlay: THINK adds
//! them, proposes, and [`History::clear_overlay`] removes them, so the finished part is never
//! copied.

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Outcome, Trial};

/// An experiment id's fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// The fingerprint of an id (or of any other text, e.g. a train hash).
    pub fn of(id: &str) -> Self {
        let digest = Sha256::digest(id.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(bytes)
    }
}

/// Where an id stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    /// Finished, at this position of `finished`.
    Finished(u32),
    /// Started, no result yet (overlay).
    InFlight,
    /// Taken without a trial: a baseline run or a replication.
    Reserved,
}

/// A finished trial. `outcome` is `InFlight` for a slot whose id finished again later (its
/// newer result is further on): replay skips it like an in-flight trial.
#[derive(Clone, Debug)]
struct Finished {
    outcome: Outcome,
    params: Box<str>,
}

/// Every experiment the campaign has started: finished ones in the order their results arrived,
/// and those in flight.
#[derive(Clone, Debug, Default)]
pub struct History {
    finished: Vec<Finished>,
    index: HashMap<Fingerprint, Slot>,
    /// Finished trials not replaced by a later result.
    live: usize,
    /// Overlay: in-flight ids, and outcomes replacing finished ones (by position, sorted).
    in_flight: Vec<Fingerprint>,
    overrides: Vec<(u32, Outcome)>,
}

/// A finished trial as a strategy reads it.
#[derive(Clone, Copy, Debug)]
pub struct FinishedTrial<'h> {
    /// Its position in arrival order.
    pub position: u32,
    /// How it ended (an override, if THINK set one).
    pub outcome: Outcome,
    params: &'h str,
}

impl FinishedTrial<'_> {
    /// Its params (a JSON object, or null when the line had none).
    pub fn params(&self) -> Value {
        serde_json::from_str(self.params).unwrap_or(Value::Null)
    }
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a trial. A finished trial whose id is already present replaces it and moves to the
    /// end, so a result recorded for an in-flight experiment takes its place in arrival order.
    pub fn record(&mut self, trial: Trial) {
        if trial.outcome == Outcome::InFlight {
            self.start(&trial.experiment_id);
            return;
        }
        let key = Fingerprint::of(&trial.experiment_id);
        let position = u32::try_from(self.finished.len()).expect("under 2^32 trials");
        match self.index.insert(key, Slot::Finished(position)) {
            // The older result stays in its slot, skipped: removing it would be O(n).
            Some(Slot::Finished(old)) => self.finished[old as usize].outcome = Outcome::InFlight,
            Some(Slot::InFlight) => {
                self.in_flight.retain(|k| *k != key);
                self.live += 1;
            }
            _ => self.live += 1,
        }
        let params = serde_json::to_string(&trial.params).unwrap_or_else(|_| "null".into());
        self.finished.push(Finished {
            outcome: trial.outcome,
            params: params.into_boxed_str(),
        });
    }

    /// Adds an in-flight experiment until [`History::clear_overlay`]; one already known (a
    /// result recorded in the crash window before its ledger entry is removed) stays as it is.
    pub fn start(&mut self, experiment_id: &str) {
        let key = Fingerprint::of(experiment_id);
        if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(key) {
            slot.insert(Slot::InFlight);
            self.in_flight.push(key);
        }
    }

    /// Marks an id as taken without a trial: a baseline run or a replication, which the
    /// strategy must never propose again (it is the same code and config as another run).
    pub fn reserve(&mut self, experiment_id: &str) {
        self.index
            .entry(Fingerprint::of(experiment_id))
            .or_insert(Slot::Reserved);
    }

    /// Replaces a finished trial's outcome until [`History::clear_overlay`] (a replicated
    /// claim: in flight while it is checked, then its agreed value).
    pub fn set_outcome(&mut self, experiment_id: &str, outcome: Outcome) {
        if let Some(Slot::Finished(position)) = self.index.get(&Fingerprint::of(experiment_id)) {
            match self.overrides.binary_search_by_key(position, |(p, _)| *p) {
                Ok(i) => self.overrides[i].1 = outcome,
                Err(i) => self.overrides.insert(i, (*position, outcome)),
            }
        }
    }

    /// Removes the in-flight trials and outcome overrides.
    pub fn clear_overlay(&mut self) {
        for key in self.in_flight.drain(..) {
            self.index.remove(&key);
        }
        self.overrides.clear();
    }

    /// Whether an experiment id has been started (in flight, finished or reserved).
    pub fn contains(&self, experiment_id: &str) -> bool {
        self.index.contains_key(&Fingerprint::of(experiment_id))
    }

    /// Whether any id is known (a trial or a reservation).
    pub fn knows_any(&self) -> bool {
        !self.index.is_empty()
    }

    /// The finished trials in arrival order, with their overrides.
    pub fn finished(&self) -> impl Iterator<Item = FinishedTrial<'_>> {
        let mut overrides = self.overrides.iter().peekable();
        self.finished
            .iter()
            .zip(0u32..)
            .filter_map(move |(f, position)| {
                let outcome = match overrides.next_if(|(p, _)| *p == position) {
                    Some((_, o)) => *o,
                    None => f.outcome,
                };
                // A slot whose id finished again later: its newer result counts, further on.
                let replaced = f.outcome == Outcome::InFlight;
                (!replaced).then_some(FinishedTrial {
                    position,
                    outcome,
                    params: &f.params,
                })
            })
    }

    /// Number of trials (finished and in flight).
    pub fn len(&self) -> usize {
        self.live + self.in_flight.len()
    }

    /// Whether no experiment has been started.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any experiment is in flight (a claim being checked counts).
    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty() || self.overrides.iter().any(|(_, o)| *o == Outcome::InFlight)
    }

    /// The lowest finite `val_bpb` so far.
    pub fn best(&self) -> Option<f64> {
        self.finished()
            .filter_map(|t| match t.outcome {
                Outcome::Succeeded(v) if v.is_finite() => Some(v),
                _ => None,
            })
            .reduce(f64::min)
    }

    /// Bytes held, roughly (for tests of the bound).
    pub fn footprint(&self) -> usize {
        let params: usize = self.finished.iter().map(|f| f.params.len()).sum();
        self.finished.capacity() * std::mem::size_of::<Finished>()
            + params
            + self.index.capacity() * (std::mem::size_of::<(Fingerprint, Slot)>() + 1)
    }
}

impl FromIterator<Trial> for History {
    fn from_iter<I: IntoIterator<Item = Trial>>(iter: I) -> Self {
        let mut history = History::new();
        for trial in iter {
            history.record(trial);
        }
        history
    }
}
