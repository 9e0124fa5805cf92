//! Prometheus metrics, served on `/metrics` by the controller. Every metric is listed, with what
//! to do about it, in the README's "Metrics" section.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::usdc::Usdc;

/// The controller's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Finished attempts by result: `succeeded`, `failed`, `worker_failure`.
    pub experiments: IntCounterVec,
    /// Experiments in flight per campaign.
    pub in_flight: IntGaugeVec,
    /// Payments sent, by network.
    pub payments: IntCounterVec,
    /// USDC spent (settled or possibly settled), in atomic units, by network.
    pub usdc_spent_atomic: IntCounterVec,
    /// Wall time of an experiment from payment to answer.
    pub experiment_duration: HistogramVec,
    /// Best val_bpb per campaign.
    pub best_val_bpb: GaugeVec,
    /// Discovery failures by source (`scan`, `chain`).
    pub discovery_errors: IntCounterVec,
    /// Reconciles by outcome (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Model proposals refused before anything was paid, by reason.
    pub proposals_refused: IntCounterVec,
    /// USDC spent per campaign and network (from status, set at scrape time).
    pub campaign_spent_usdc: GaugeVec,
    /// `budget.total` per campaign and network (set at scrape time).
    pub campaign_budget_usdc: GaugeVec,
    /// Status writes that met a concurrent write (409 Conflict) and were applied again.
    pub status_conflicts: prometheus::IntCounter,
    /// Time spent in each step of RUN and PUBLISH ([`StepLabel`]), per experiment.
    pub step_seconds: HistogramVec,
    /// Time a worker sat free between its answer and the next voucher sent to it.
    pub worker_idle_seconds: prometheus::Histogram,
}

/// A step of an experiment's path whose time is observed in `autoresearch_step_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepLabel {
    /// Reading (or reusing) the worker's 402 and choosing an offer.
    Price,
    /// The balance check, the signing time and the remote signer.
    Sign,
    /// The ledger write before the voucher is sent.
    Reserve,
    /// The paid request, from sending to the worker's answer (includes the run).
    Send,
    /// The chain's judgement of the payment after the answer.
    Judge,
    /// The results.jsonl append.
    Record,
    /// The status write that counts the result.
    Status,
    /// The reconcile's decision write (proposals, counts, phase).
    Decide,
}

impl StepLabel {
    /// The `step` label.
    pub fn as_str(self) -> &'static str {
        match self {
            StepLabel::Price => "price",
            StepLabel::Sign => "sign",
            StepLabel::Reserve => "reserve",
            StepLabel::Send => "send",
            StepLabel::Judge => "judge",
            StepLabel::Record => "record",
            StepLabel::Status => "status",
            StepLabel::Decide => "decide",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric. (Long, but a flat list: one declaration per metric.)
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let campaign = &["namespace", "campaign"];
        let campaign_network = &["namespace", "campaign", "network"];
        let experiment_duration = HistogramVec::new(
            HistogramOpts::new(
                "autoresearch_experiment_duration_seconds",
                "Time from payment to the worker's answer",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 60.0, 180.0, 300.0, 420.0, 600.0, 900.0, 1800.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        let status_conflicts = prometheus::IntCounter::new(
            "autoresearch_status_conflicts_total",
            "Status writes that met a concurrent write (409 Conflict) and were applied again",
        )
        .expect("valid metric");
        let fine = prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets");
        let step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "autoresearch_step_seconds",
                "Time spent in each step of an experiment's RUN and PUBLISH path",
            )
            .buckets(fine.clone()),
            &["step"],
        );
        let worker_idle_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "autoresearch_worker_idle_seconds",
                "Time a worker sat free between its answer and the next voucher sent to it",
            )
            .buckets(fine),
        );
        Self {
            step_seconds: register(r, step_seconds),
            worker_idle_seconds: register(r, worker_idle_seconds),
            experiments: counters(
                r,
                "autoresearch_experiments_total",
                "Finished experiment attempts by result",
                &["result"],
            ),
            in_flight: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "autoresearch_experiments_in_flight",
                        "Experiments in flight per campaign",
                    ),
                    campaign,
                ),
            ),
            payments: counters(
                r,
                "autoresearch_payments_total",
                "x402 payments sent to workers",
                &["network"],
            ),
            usdc_spent_atomic: counters(
                r,
                "autoresearch_usdc_spent_atomic_total",
                "USDC spent (settled or possibly settled), in atomic units (1 USDC = 1e6)",
                &["network"],
            ),
            experiment_duration: register(r, Ok(experiment_duration)),
            best_val_bpb: gauges(
                r,
                "autoresearch_best_val_bpb",
                "Best val_bpb per campaign (lower is better)",
                campaign,
            ),
            discovery_errors: counters(
                r,
                "autoresearch_discovery_errors_total",
                "Worker discovery failures by source",
                &["source"],
            ),
            reconciles: counters(
                r,
                "autoresearch_reconciles_total",
                "Campaign reconciles by outcome",
                &["outcome"],
            ),
            proposals_refused: counters(
                r,
                "autoresearch_proposals_refused_total",
                "Model proposals refused before anything was paid, by reason",
                &["reason"],
            ),
            campaign_spent_usdc: gauges(
                r,
                "autoresearch_campaign_spent_usdc",
                "USDC spent per campaign (status.spent), by payment network",
                campaign_network,
            ),
            campaign_budget_usdc: gauges(
                r,
                "autoresearch_campaign_budget_usdc",
                "USDC budget per campaign (spec.budget.total), by payment network",
                campaign_network,
            ),
            status_conflicts: register(r, Ok(status_conflicts)),
            registry,
        }
    }

    /// Records a payment that settled or may have settled.
    pub fn paid(&self, network: &str, amount: Usdc) {
        self.payments.with_label_values(&[network]).inc();
        let atomic = u64::try_from(amount.atomic()).unwrap_or(u64::MAX);
        self.usdc_spent_atomic
            .with_label_values(&[network])
            .inc_by(atomic);
    }

    /// Observes the time one step took.
    pub fn step(&self, step: StepLabel, took: std::time::Duration) {
        self.step_seconds
            .with_label_values(&[step.as_str()])
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// Registers one collector; every name is unique, so a refusal is a programming error.
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    made: prometheus::Result<C>,
) -> C {
    let collector = made.expect("valid metric");
    registry
        .register(Box::new(collector.clone()))
        .expect("metric names are unique");
    collector
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, GaugeVec::new(Opts::new(name, help), labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_text_format() {
        let m = Metrics::new();
        m.experiments.with_label_values(&["succeeded"]).inc();
        m.paid("base-sepolia", Usdc::from_atomic(10_000));
        m.best_val_bpb.with_label_values(&["ns", "c"]).set(0.97);
        m.experiment_duration
            .with_label_values(&["succeeded"])
            .observe(2.0);
        let text = m.render();
        assert!(text.contains("autoresearch_experiments_total{result=\"succeeded\"} 1"));
        assert!(
            text.contains("autoresearch_usdc_spent_atomic_total{network=\"base-sepolia\"} 10000")
        );
        assert!(text.contains("autoresearch_best_val_bpb{campaign=\"c\",namespace=\"ns\"} 0.97"));
        // Every sample line parses as `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "unparseable sample: {line}");
        }
    }
}
