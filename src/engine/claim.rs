//! CLAIM: which workers a campaign may use, and which one runs each pending experiment.
//!
//! Workers come from a [`WorkerSource`] (discovery with its shared cache, or a fixed list),
//! filtered by the campaign's `exclude`, ordered by `prefer`; [`assign`] pairs pending
//! experiments with free workers using the [`WorkerBoard`] (busy, cooling down, last price).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::future::BoxFuture;

use super::board::WorkerBoard;
use crate::crd::{DiscoverySpec, PendingExperiment, WorkerCounts};
use crate::endpoint::Endpoint;
use crate::ledger::Limits;
use crate::usdc::Usdc;

/// A worker the engine may use.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// Service URL.
    pub endpoint: Endpoint,
    /// ERC-8004 agent id, if known.
    pub agent_id: Option<u64>,
    /// Display name.
    pub name: Option<String>,
}

/// Why a worker source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Discovery failed (index, chain, documents).
    #[error(transparent)]
    Discovery(#[from] crate::discovery::DiscoveryError),
    /// The discovery task panicked or was cancelled.
    #[error("discovery task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a worker source found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Found {
    /// The workers.
    pub candidates: Vec<Candidate>,
    /// Set when the index's day quota is down to its reserve (discovery then reads the chain):
    /// what to tell the user.
    pub quota_low: Option<String>,
}

impl From<Vec<Candidate>> for Found {
    fn from(candidates: Vec<Candidate>) -> Self {
        Self {
            candidates,
            quota_low: None,
        }
    }
}

/// Where workers come from (discovery, or a fixed list).
pub trait WorkerSource: Send + Sync {
    /// Workers for a campaign's discovery settings; the implementation caches across campaigns.
    fn workers<'a>(&'a self, spec: &'a DiscoverySpec) -> BoxFuture<'a, Result<Found, SourceError>>;
}

/// Only the campaign's static `discovery.workers`.
pub struct StaticWorkers;

impl WorkerSource for StaticWorkers {
    fn workers<'a>(&'a self, spec: &'a DiscoverySpec) -> BoxFuture<'a, Result<Found, SourceError>> {
        Box::pin(async move { Ok(static_candidates(spec).into()) })
    }
}

/// The campaign's static workers as candidates.
pub fn static_candidates(spec: &DiscoverySpec) -> Vec<Candidate> {
    spec.workers
        .iter()
        .map(|w| Candidate {
            endpoint: Endpoint::new(&w.endpoint),
            agent_id: w.agent_id,
            name: w.name.clone(),
        })
        .collect()
}

/// Whether the campaign names `endpoint` in `discovery.workers` (the user's choice: used as
/// given, without the address policy that discovered endpoints are held to).
pub fn is_named(spec: &DiscoverySpec, endpoint: &Endpoint) -> bool {
    spec.workers
        .iter()
        .any(|w| Endpoint::new(&w.endpoint) == *endpoint)
}

/// Whether a worker matches a `prefer` / `exclude` entry: an endpoint (or its prefix) or an
/// agent id.
pub fn matches_any(list: &[String], c: &Candidate) -> bool {
    list.iter()
        .any(|p| c.endpoint.matches_prefix(p) || c.agent_id.is_some_and(|id| id.to_string() == *p))
}

/// Drops excluded workers and duplicates; puts preferred ones first.
pub fn eligible(spec: &DiscoverySpec, candidates: Vec<Candidate>) -> Vec<Candidate> {
    let mut seen = HashSet::new();
    let mut out: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| !matches_any(&spec.exclude, c))
        .filter(|c| seen.insert(c.endpoint.clone()))
        .collect();
    out.sort_by_key(|c| !matches_any(&spec.prefer, c));
    out
}

/// Pairs pending experiments with free workers: preferred workers first, then by the last price
/// seen (cheapest first; unknown prices after known ones), then in the order given (the best
/// record first, see [`super::memory::Memory::screen`]), skipping busy and cooling workers,
/// those an experiment must avoid, and those whose last price is above `cap` (the price cap, or
/// what is left of the budget if less: a worker known to cost more is not even asked again).
/// A replication never goes to a worker in `forbidden` (by experiment id) or in its own `avoid`
/// list: a re-run on the claim's own worker or payee proves nothing. It waits instead.
pub fn assign(
    board: &WorkerBoard,
    pending: &[PendingExperiment],
    slots: usize,
    candidates: &[Candidate],
    cap: Usdc,
    prefer: &[String],
    forbidden: &BTreeMap<String, Vec<String>>,
) -> Vec<(PendingExperiment, Candidate)> {
    let mut free: Vec<(usize, &Candidate)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            !board.is_busy(c.endpoint.as_str()) && !board.is_cooling(c.endpoint.as_str())
        })
        .filter(|(_, c)| board.price(c.endpoint.as_str()).is_none_or(|p| p <= cap))
        .collect();
    free.sort_by_key(|(i, c)| {
        (
            !matches_any(prefer, c),
            board
                .price(c.endpoint.as_str())
                .map_or(u128::MAX, Usdc::atomic),
            *i,
        )
    });
    let mut out = Vec::new();
    for experiment in pending.iter().take(slots) {
        let avoids = |c: &Candidate| {
            experiment
                .avoid
                .iter()
                .any(|a| Endpoint::new(a) == c.endpoint)
        };
        let replication = matches!(
            super::trust::RunRole::of(&experiment.experiment_id, ""),
            super::trust::RunRole::Replication(_)
        );
        let forbids = |c: &Candidate| {
            (replication && avoids(c))
                || forbidden
                    .get(&experiment.experiment_id)
                    .is_some_and(|list| list.iter().any(|a| Endpoint::new(a) == c.endpoint))
        };
        // An experiment avoids the workers that failed it (and a baseline run those that ran
        // another), unless it has nowhere else to go; a busy worker is somewhere to go (it is
        // waited for), a cooling one is not (it just failed), so nothing waits out a cooldown
        // for the sake of avoiding a good worker. Attempts are bounded.
        let nowhere_else = candidates
            .iter()
            .filter(|c| !board.is_cooling(c.endpoint.as_str()))
            .all(avoids);
        if let Some(i) = free
            .iter()
            .position(|(_, c)| !forbids(c) && (nowhere_else || !avoids(c)))
        {
            out.push((experiment.clone(), free.remove(i).1.clone()));
        }
    }
    out
}

/// Worker counts for status, and the cheapest acceptable price seen.
pub fn count(
    board: &WorkerBoard,
    candidates: &[Candidate],
    limits: &Limits,
) -> (WorkerCounts, Option<Usdc>) {
    let price = |c: &Candidate| board.price(c.endpoint.as_str());
    let counts = WorkerCounts {
        discovered: candidates.len() as u32,
        eligible: candidates
            .iter()
            .filter(|c| price(c).is_none_or(|p| p <= limits.max_price))
            .count() as u32,
        busy: candidates
            .iter()
            .filter(|c| board.is_busy(c.endpoint.as_str()))
            .count() as u32,
        cooling_down: candidates
            .iter()
            .filter(|c| board.is_cooling(c.endpoint.as_str()))
            .count() as u32,
    };
    (counts, candidates.iter().filter_map(price).min())
}

/// Discovery (8004scan, the chain, static lists) as the engine's worker source. A scan is slow
/// (the public index allows about 10 anonymous requests a minute), so a reconcile never waits for
/// one when anything is cached or named: see [`crate::discovery::Discovery::workers_now`].
pub struct Discovered {
    discovery: crate::discovery::Discovery,
    wait: Duration,
}

impl Discovered {
    /// Wraps a discovery service; `wait` bounds how long a reconcile waits for a refresh.
    pub fn new(discovery: crate::discovery::Discovery, wait: Duration) -> Self {
        Self { discovery, wait }
    }
}

impl WorkerSource for Discovered {
    fn workers<'a>(&'a self, spec: &'a DiscoverySpec) -> BoxFuture<'a, Result<Found, SourceError>> {
        Box::pin(async move {
            // Answers from the cache at once (a stale result refreshes in the background); waits
            // up to `wait` only when nothing at all is known and no worker is named.
            let set = self.discovery.workers_now(spec, self.wait).await?;
            let quota_low = set
                .index_quota_low()
                .then(|| quota_message(set.index_quota.as_ref()));
            let candidates = set
                .workers
                .into_iter()
                .map(|w| Candidate {
                    endpoint: Endpoint::new(&w.endpoint),
                    agent_id: w.agent_id,
                    name: Some(w.name),
                })
                .collect();
            Ok(Found {
                candidates,
                quota_low,
            })
        })
    }
}

fn quota_message(quota: Option<&crate::discovery::scan::Quota>) -> String {
    let left = quota
        .and_then(|q| Some((q.day_remaining?, q.day_limit?)))
        .map(|(left, limit)| format!(" ({left} of {limit} requests left today)"))
        .unwrap_or_default();
    format!(
        "the 8004scan day quota is nearly spent{left}; the last requests are kept in reserve and \
         workers are discovered on chain through eRPC until it resets; set SCAN_API_KEY (chart: \
         scanApiKeySecret) to raise the limits"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(endpoint: &str, agent_id: Option<u64>) -> Candidate {
        Candidate {
            endpoint: Endpoint::new(endpoint),
            agent_id,
            name: None,
        }
    }

    fn pending(id: &str, avoid: &[&str]) -> PendingExperiment {
        PendingExperiment {
            experiment_id: id.into(),
            avoid: avoid.iter().map(|s| s.to_string()).collect(),
            ..PendingExperiment::default()
        }
    }

    fn limits(max_price: u128) -> Limits {
        Limits {
            total: Usdc::from_atomic(100),
            max_price: Usdc::from_atomic(max_price),
            max_experiments: 10,
            parallelism: 3,
            max_failed: 3,
            goal: None,
            max_model_calls: None,
        }
    }

    #[test]
    fn an_avoided_worker_is_used_rather_than_waiting_out_the_cooldown_of_the_only_other() {
        let board = WorkerBoard::default();
        let candidates = vec![
            candidate("http://failed.invalid/w", None),
            candidate("http://ran-the-baseline.invalid/w", None),
        ];
        board.try_claim("http://failed.invalid/w", "x");
        board.release("http://failed.invalid/w", "x", true);
        let second_baseline = pending("exp-1-b1", &["http://ran-the-baseline.invalid/w"]);
        let assign_one = |p: &PendingExperiment| {
            let picked = assign(
                &board,
                std::slice::from_ref(p),
                1,
                &candidates,
                Usdc::from_atomic(100),
                &[],
                &BTreeMap::new(),
            );
            picked.first().map(|(_, c)| c.endpoint.to_string())
        };
        assert_eq!(
            assign_one(&second_baseline).as_deref(),
            Some("http://ran-the-baseline.invalid/w"),
            "the other worker is cooling down: nothing is gained by waiting"
        );
        // A replication never runs where the claim ran, cooling or not: it waits.
        let replication = pending("exp-1-r1", &["http://ran-the-baseline.invalid/w"]);
        assert_eq!(assign_one(&replication), None);
    }

    #[test]
    fn claim_prefers_then_picks_the_cheapest_free_worker_and_skips_excluded_busy_and_avoided() {
        let board = WorkerBoard::default();
        let spec = DiscoverySpec {
            prefer: vec!["http://pricey.invalid".into()],
            exclude: vec!["7".into()],
            ..DiscoverySpec::default()
        };
        let all = vec![
            candidate("http://cheap.invalid/w", None),
            candidate("http://pricey.invalid/w", None),
            candidate("http://mid.invalid/w", None),
            candidate("http://excluded.invalid/w", Some(7)),
            candidate("http://busy.invalid/w", None),
            candidate("http://cheap.invalid/w/", None),
        ];
        board.note_price("http://cheap.invalid/w", Usdc::from_atomic(1));
        board.note_price("http://mid.invalid/w", Usdc::from_atomic(3));
        board.note_price("http://pricey.invalid/w", Usdc::from_atomic(5));
        assert!(board.try_claim("http://busy.invalid/w", "other"));
        let candidates = eligible(&spec, all);
        assert_eq!(candidates.len(), 4, "excluded by agent id and deduplicated");
        let work = [
            pending("a", &[]),
            pending("b", &[]),
            pending("c", &["http://mid.invalid/w/"]),
        ];
        let picked: Vec<_> = assign(
            &board,
            &work,
            3,
            &candidates,
            Usdc::from_atomic(10),
            &spec.prefer,
            &BTreeMap::new(),
        )
        .into_iter()
        .map(|(p, c)| (p.experiment_id, c.endpoint.to_string()))
        .collect();
        assert_eq!(
            picked,
            [
                ("a".to_string(), "http://pricey.invalid/w".to_string()),
                ("b".to_string(), "http://cheap.invalid/w".to_string()),
            ],
            "c avoids the only worker left"
        );
    }

    #[test]
    fn workers_above_the_price_cap_or_cooling_down_are_not_claimed_and_slots_bound_the_batch() {
        let board = WorkerBoard::default();
        let candidates = vec![
            candidate("http://a.invalid/w", None),
            candidate("http://b.invalid/w", None),
            candidate("http://c.invalid/w", None),
            candidate("http://d.invalid/w", None),
        ];
        board.note_price("http://a.invalid/w", Usdc::from_atomic(11));
        board.try_claim("http://b.invalid/w", "x");
        board.release("http://b.invalid/w", "x", true);
        let work = [pending("1", &[]), pending("2", &[]), pending("3", &[])];
        let picked: Vec<_> = assign(
            &board,
            &work,
            1,
            &candidates,
            Usdc::from_atomic(10),
            &[],
            &BTreeMap::new(),
        )
        .into_iter()
        .map(|(p, c)| (p.experiment_id, c.endpoint.to_string()))
        .collect();
        assert_eq!(
            picked,
            [("1".to_string(), "http://c.invalid/w".to_string())]
        );
        let (counts, cheapest) = count(&board, &candidates, &limits(10));
        assert_eq!(
            (
                counts.discovered,
                counts.eligible,
                counts.busy,
                counts.cooling_down
            ),
            (4, 3, 0, 1)
        );
        assert_eq!(
            cheapest,
            Some(Usdc::from_atomic(11)),
            "the cheapest price seen, acceptable or not"
        );
    }

    #[test]
    fn an_experiment_that_failed_on_every_worker_may_go_back_to_one() {
        let board = WorkerBoard::default();
        let candidates = vec![candidate("http://a.invalid/w", None)];
        let work = [pending("1", &["http://a.invalid/w"])];
        let picked = assign(
            &board,
            &work,
            1,
            &candidates,
            Usdc::from_atomic(10),
            &[],
            &BTreeMap::new(),
        );
        assert_eq!(picked.len(), 1, "with no other worker it is not stuck");
    }

    #[test]
    fn named_workers_are_recognised_whatever_their_trailing_slash() {
        let spec: DiscoverySpec = serde_json::from_value(serde_json::json!({
            "workers": [{"endpoint": "http://w.invalid/s/"}]
        }))
        .unwrap();
        assert!(is_named(&spec, &Endpoint::new("http://w.invalid/s")));
        assert!(!is_named(&spec, &Endpoint::new("http://w.invalid/t")));
    }
}
