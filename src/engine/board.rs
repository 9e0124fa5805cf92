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
    /// The experiment signed ahead to run here next: the worker is kept for it.
    next: Option<String>,
    failures: u32,
    cool_until: Option<Instant>,
    price: Option<(Usdc, Instant)>,
    quote: Option<(PaymentRequired, Instant)>,
    /// When the worker last answered, until the next voucher is sent to it.
    answered_at: Option<Instant>,
}

/// Shared, in-memory worker state. Lost on restart on purpose: after a restart the ledgers in
/// campaign status say which workers are busy, and cooldowns start afresh.
pub struct WorkerBoard {
    workers: Mutex<HashMap<String, WorkerState>>,
    base_cooldown: Duration,
    /// Woken whenever a worker is released, for the experiments signed ahead that wait for it.
    freed: tokio::sync::Notify,
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
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Marks `endpoint` busy with `experiment_id` (a [`holder`]) unless it is busy, cooling down,
    /// or kept for another experiment signed ahead (which takes it through here too).
    pub fn try_claim(&self, endpoint: &str, experiment_id: &str) -> bool {
        let mut map = self.workers.lock().expect("board lock");
        let w = map.entry(endpoint.to_string()).or_default();
        let cooling = w.cool_until.is_some_and(|t| Instant::now() < t);
        let kept = w.next.as_deref().is_some_and(|n| n != experiment_id);
        match (&w.busy_with, cooling || kept) {
            (None, false) => {
                w.busy_with = Some(experiment_id.to_string());
                if w.next.is_some() {
                    w.next = None;
                }
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

    /// Keeps `endpoint` for `experiment_id`, signed ahead, unless another experiment is kept
    /// for it already. At most one experiment waits per worker.
    pub fn try_keep_next(&self, endpoint: &str, experiment_id: &str) -> bool {
        let mut map = self.workers.lock().expect("board lock");
        let w = map.entry(endpoint.to_string()).or_default();
        match &w.next {
            None => {
                w.next = Some(experiment_id.to_string());
                true
            }
            Some(id) => id == experiment_id,
        }
    }

    /// Whether an experiment is kept for `endpoint`.
    pub fn is_kept(&self, endpoint: &str) -> bool {
        let map = self.workers.lock().expect("board lock");
        map.get(endpoint).is_some_and(|w| w.next.is_some())
    }

    /// Gives up the keep of `experiment_id` on `endpoint`, if it still has one.
    pub fn forget_keep(&self, endpoint: &str, experiment_id: &str) {
        let mut map = self.workers.lock().expect("board lock");
        if let Some(w) = map.get_mut(endpoint)
            && w.next.as_deref() == Some(experiment_id)
        {
            w.next = None;
        }
    }

    /// Gives up whatever `experiment_id` holds on `endpoint` (kept or claimed), without
    /// touching its cooldown: nothing ran for it (its voucher was dropped unsent).
    pub fn unkeep(&self, endpoint: &str, experiment_id: &str) {
        let mut map = self.workers.lock().expect("board lock");
        if let Some(w) = map.get_mut(endpoint) {
            if w.next.as_deref() == Some(experiment_id) {
                w.next = None;
            }
            if w.busy_with.as_deref() == Some(experiment_id) {
                w.busy_with = None;
            }
        }
        drop(map);
        self.freed.notify_waiters();
    }

    /// Claims `endpoint` for `experiment_id` as soon as it is released, waiting at most
    /// `at_most`; returns whether it was claimed. The wake-up is registered before the check, so
    /// a release between the two is not missed.
    pub async fn claim_when_free(
        &self,
        endpoint: &str,
        experiment_id: &str,
        at_most: Duration,
    ) -> bool {
        let freed = self.freed.notified();
        let mut freed = std::pin::pin!(freed);
        freed.as_mut().enable();
        if self.try_claim(endpoint, experiment_id) {
            return true;
        }
        let _ = tokio::time::timeout(at_most, freed).await;
        self.try_claim(endpoint, experiment_id)
    }

    /// Frees `endpoint` as soon as it answered `experiment_id` well, before the answer is recorded,
    /// so that a voucher signed ahead for it goes out at once. Its cooldown is left to
    /// [`Self::release`], which follows.
    pub fn hand_over(&self, endpoint: &str, experiment_id: &str) {
        let mut map = self.workers.lock().expect("board lock");
        if let Some(w) = map.get_mut(endpoint)
            && w.busy_with.as_deref() == Some(experiment_id)
        {
            w.busy_with = None;
        }
        drop(map);
        self.freed.notify_waiters();
    }

    /// Marks `endpoint` busy with `experiment_id` unless another experiment holds it (one of this
    /// process's tasks runs there).
    pub fn hold_if_free(&self, endpoint: &str, experiment_id: &str) {
        let mut map = self.workers.lock().expect("board lock");
        let w = map.entry(endpoint.to_string()).or_default();
        if w.busy_with.is_none() {
            w.busy_with = Some(experiment_id.to_string());
        }
    }

    /// Frees `endpoint` after `experiment_id`; `failed` starts or extends its cooldown.
    pub fn release(&self, endpoint: &str, experiment_id: &str, failed: bool) {
        self.release_quietly(endpoint, experiment_id, failed);
        self.freed.notify_waiters();
    }

    fn release_quietly(&self, endpoint: &str, experiment_id: &str, failed: bool) {
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

    /// Notes that `endpoint` answered: it is free from now on, for the idle-gap metric.
    pub fn note_answered(&self, endpoint: &str) {
        let mut map = self.workers.lock().expect("board lock");
        map.entry(endpoint.to_string()).or_default().answered_at = Some(Instant::now());
    }

    /// How long `endpoint` sat free since its last answer (once per answer), as a voucher is
    /// about to be sent to it.
    pub fn take_idle(&self, endpoint: &str) -> Option<Duration> {
        let mut map = self.workers.lock().expect("board lock");
        Some(map.get_mut(endpoint)?.answered_at.take()?.elapsed())
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
    fn a_worker_kept_for_a_voucher_signed_ahead_goes_to_it_and_no_one_else() {
        let board = WorkerBoard::default();
        assert!(board.try_claim("w", "a"));
        assert!(board.try_keep_next("w", "b"));
        assert!(!board.try_keep_next("w", "c"), "one waits per worker");
        board.hand_over("w", "a");
        assert!(!board.try_claim("w", "c"), "kept for b");
        assert!(board.try_claim("w", "b"));
        assert!(!board.is_kept("w"), "b took it");
        board.release("w", "a", false);
        assert!(
            board.is_busy("w"),
            "a's late release does not free b's claim"
        );
        assert!(board.try_keep_next("w", "c"));
        board.unkeep("w", "c");
        board.release("w", "b", true);
        assert!(board.is_cooling("w"));
        assert!(
            !board.try_claim("w", "c"),
            "a cooling worker is not claimed"
        );
    }

    #[tokio::test]
    async fn a_waiting_voucher_claims_its_worker_when_it_is_handed_over() {
        let board = std::sync::Arc::new(WorkerBoard::default());
        assert!(board.try_claim("w", "a"));
        assert!(board.try_keep_next("w", "b"));
        let waiter = board.clone();
        let waiting = tokio::spawn(async move {
            waiter
                .claim_when_free("w", "b", Duration::from_secs(30))
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let at = Instant::now();
        board.hand_over("w", "a");
        assert!(waiting.await.unwrap());
        assert!(
            at.elapsed() < Duration::from_secs(5),
            "woken, not timed out"
        );
        assert!(
            !board
                .claim_when_free("w", "c", Duration::from_millis(10))
                .await
        );
    }

    #[test]
    fn prices_are_remembered() {
        let board = WorkerBoard::default();
        assert_eq!(board.price("w"), None);
        board.note_price("w", Usdc::from_atomic(5));
        assert_eq!(board.price("w"), Some(Usdc::from_atomic(5)));
    }
}
