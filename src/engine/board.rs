//! The worker board: what this process knows about workers across every campaign. Workers are
//! single-flight (one experiment at a time), so a worker running any campaign's experiment is
//! busy for all; a worker that failed cools down; prices seen in 402s are remembered so that
//! CLAIM can pick the cheapest without probing everyone each time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::payment::PaymentRequired;
use crate::usdc::Usdc;

/// How long a failed worker is skipped, doubling per consecutive failure up to [`MAX_COOLDOWN`].
pub const BASE_COOLDOWN: Duration = Duration::from_secs(30);
/// Longest cooldown.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(15 * 60);
/// How long a price seen in a 402 is trusted for ordering workers.
pub const PRICE_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a worker's whole 402 is reused instead of asking again before each payment. A
/// stale one costs nothing: the gate refuses the voucher before running (nothing settles) and
/// the next attempt asks afresh.
pub const QUOTE_TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct WorkerState {
    busy_with: Option<String>,
    failures: u32,
    cool_until: Option<Instant>,
    price: Option<(Usdc, Instant)>,
    quote: Option<(PaymentRequired, Instant)>,
}

/// Shared, in-memory worker state. Lost on restart on purpose: after a restart the ledgers in
/// campaign status say which workers are busy, and cooldowns start afresh.
pub struct WorkerBoard {
    workers: Mutex<HashMap<String, WorkerState>>,
    base_cooldown: Duration,
}

impl Default for WorkerBoard {
    fn default() -> Self {
        Self::with_cooldown(BASE_COOLDOWN)
    }
}

/// Who holds a worker: one campaign's experiment. Experiment ids are content ids, so two
/// campaigns with the same train.py and config (a baseline run, say) share one; the campaign
/// tells their claims apart.
pub fn holder(campaign: &str, experiment_id: &str) -> String {
    format!("{campaign}/{experiment_id}")
}

impl WorkerBoard {
    /// A board whose first cooldown lasts `base` (it doubles per consecutive failure).
    pub fn with_cooldown(base: Duration) -> Self {
        Self {
            workers: Mutex::default(),
            base_cooldown: base,
        }
    }

    /// Marks `endpoint` busy with `experiment_id` (a [`holder`]) unless it is busy or cooling down.
    pub fn try_claim(&self, endpoint: &str, experiment_id: &str) -> bool {
        let mut map = self.workers.lock().expect("board lock");
        let w = map.entry(endpoint.to_string()).or_default();
        let cooling = w.cool_until.is_some_and(|t| Instant::now() < t);
        match (&w.busy_with, cooling) {
            (None, false) => {
                w.busy_with = Some(experiment_id.to_string());
                true
            }
            (Some(id), _) if id == experiment_id => true,
            _ => false,
        }
    }

    /// Marks `endpoint` busy with `experiment_id` whatever its state (a ledger entry found after
    /// a restart is running there, or was).
    pub fn hold(&self, endpoint: &str, experiment_id: &str) {
        let mut map = self.workers.lock().expect("board lock");
        map.entry(endpoint.to_string()).or_default().busy_with = Some(experiment_id.to_string());
    }

    /// Frees `endpoint` after `experiment_id`; `failed` starts or extends its cooldown.
    pub fn release(&self, endpoint: &str, experiment_id: &str, failed: bool) {
        let mut map = self.workers.lock().expect("board lock");
        let w = map.entry(endpoint.to_string()).or_default();
        if w.busy_with.as_deref() == Some(experiment_id) {
            w.busy_with = None;
        }
        if failed {
            // The worker may have changed its terms: ask again next time.
            w.quote = None;
            w.failures = w.failures.saturating_add(1);
            let factor = 2u32.saturating_pow(w.failures.saturating_sub(1).min(10));
            w.cool_until = Some(Instant::now() + (self.base_cooldown * factor).min(MAX_COOLDOWN));
        } else {
            w.failures = 0;
            w.cool_until = None;
        }
    }

    /// Remembers the price a worker asked.
    pub fn note_price(&self, endpoint: &str, price: Usdc) {
        let mut map = self.workers.lock().expect("board lock");
        map.entry(endpoint.to_string()).or_default().price = Some((price, Instant::now()));
    }

    /// The last price seen, if recent.
    pub fn price(&self, endpoint: &str) -> Option<Usdc> {
        let map = self.workers.lock().expect("board lock");
        let (price, at) = map.get(endpoint)?.price?;
        (at.elapsed() < PRICE_TTL).then_some(price)
    }

    /// Remembers a worker's 402.
    pub fn note_quote(&self, endpoint: &str, quote: PaymentRequired) {
        let mut map = self.workers.lock().expect("board lock");
        map.entry(endpoint.to_string()).or_default().quote = Some((quote, Instant::now()));
    }

    /// The worker's last 402, if recent.
    pub fn quote(&self, endpoint: &str) -> Option<PaymentRequired> {
        let map = self.workers.lock().expect("board lock");
        let (quote, at) = map.get(endpoint)?.quote.as_ref()?;
        (at.elapsed() < QUOTE_TTL).then(|| quote.clone())
    }

    /// Whether `endpoint` is running an experiment.
    pub fn is_busy(&self, endpoint: &str) -> bool {
        let map = self.workers.lock().expect("board lock");
        map.get(endpoint).is_some_and(|w| w.busy_with.is_some())
    }

    /// Whether `endpoint` is cooling down after a failure.
    pub fn is_cooling(&self, endpoint: &str) -> bool {
        let map = self.workers.lock().expect("board lock");
        map.get(endpoint)
            .and_then(|w| w.cool_until)
            .is_some_and(|t| Instant::now() < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_campaigns_with_one_experiment_id_never_both_hold_a_worker() {
        let board = WorkerBoard::default();
        let left = holder("ns/left", "exp-1");
        let right = holder("ns/right", "exp-1");
        assert!(board.try_claim("w", &left));
        assert!(
            !board.try_claim("w", &right),
            "the same content id in another campaign is another claim"
        );
        board.release("w", &right, false);
        assert!(board.is_busy("w"), "the other campaign cannot free it");
        board.release("w", &left, false);
        assert!(board.try_claim("w", &right));
    }

    #[test]
    fn a_worker_runs_one_experiment_at_a_time_and_cools_down_after_failing() {
        let board = WorkerBoard::default();
        assert!(board.try_claim("w", "a"));
        assert!(
            board.try_claim("w", "a"),
            "claiming again for the same experiment is idempotent"
        );
        assert!(!board.try_claim("w", "b"));
        board.release("w", "a", true);
        assert!(!board.is_busy("w"));
        assert!(board.is_cooling("w"));
        assert!(
            !board.try_claim("w", "b"),
            "a cooling worker is not claimed"
        );
        board.release("w", "x", false);
        assert!(!board.is_cooling("w"));
        assert!(board.try_claim("w", "b"));
    }

    #[test]
    fn a_quote_is_reused_until_the_worker_fails() {
        let board = WorkerBoard::default();
        let quote = PaymentRequired {
            version: crate::payment::X402Version::V2,
            source: crate::payment::x402::Source::Header,
            resource: None,
            error: None,
            accepts: Vec::new(),
        };
        assert_eq!(board.quote("w"), None);
        board.note_quote("w", quote.clone());
        assert_eq!(board.quote("w"), Some(quote));
        board.release("w", "x", false);
        assert!(board.quote("w").is_some(), "a success keeps it");
        board.release("w", "x", true);
        assert_eq!(board.quote("w"), None, "a failure forgets it");
    }

    #[test]
    fn prices_are_remembered() {
        let board = WorkerBoard::default();
        assert_eq!(board.price("w"), None);
        board.note_price("w", Usdc::from_atomic(5));
        assert_eq!(board.price("w"), Some(Usdc::from_atomic(5)));
    }
}
