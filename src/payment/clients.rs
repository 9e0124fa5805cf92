//! HTTP clients shared by every [`WorkerClient`] with the same run timeout and address policy.
//!
//! Building a `reqwest::Client` decodes the system's root certificates: with a client built per
//! experiment (four for a discovered worker) that was about a fifth of a fast campaign's CPU,
//! measured with `perf` on the memory benchmark. A shared client also keeps its connection pool,
//! so the 402, the paid request and the job polls to one worker reuse connections.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::http;
use super::worker::{QUICK_TIMEOUT, WorkerClient, WorkerError, service_url};
use crate::discovery::AddressPolicy;

/// Different (timeout, policy) pairs kept at most: one per campaign spec in practice; past this
/// the pool starts over rather than grow.
const MAX_KINDS: usize = 64;

type Kind = (Duration, Option<AddressPolicy>);

/// The paid request's timeout through an address policy: the run's, plus a minute for the
/// policy's pinned DNS and the gate's settlement.
fn policed_run_timeout(run_timeout: Duration) -> Duration {
    run_timeout + Duration::from_secs(60)
}

/// The quick and the run client, for one kind.
#[derive(Clone)]
struct Pair {
    quick: reqwest::Client,
    run: reqwest::Client,
}

/// The shared clients, built on first use.
#[derive(Default)]
pub struct ClientPool {
    pairs: Mutex<HashMap<Kind, Pair>>,
}

impl ClientPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client for `endpoint` whose paid request may take `run_timeout`. With a `policy`, the
    /// endpoint must pass it now and every connection is checked against it too (a discovered
    /// endpoint must not become a request to a cluster-internal or metadata address through DNS
    /// that changed since discovery).
    pub fn worker(
        &self,
        endpoint: &str,
        run_timeout: Duration,
        policy: Option<&AddressPolicy>,
    ) -> Result<WorkerClient, WorkerError> {
        let url = service_url(endpoint)?;
        if let Some(policy) = policy {
            policy
                .check_url(&url)
                .map_err(|e| WorkerError::BadEndpoint(format!("{url}: {e}")))?;
        }
        let pair = self.pair(run_timeout, policy);
        Ok(WorkerClient::from_parts(
            url,
            pair.quick,
            pair.run,
            run_timeout,
        ))
    }

    /// Number of client pairs built and kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client was built yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pair(&self, run_timeout: Duration, policy: Option<&AddressPolicy>) -> Pair {
        let kind = (run_timeout, policy.cloned());
        let mut pairs = self.lock();
        if let Some(pair) = pairs.get(&kind) {
            return pair.clone();
        }
        let pair = match policy {
            None => Pair {
                quick: http::client(QUICK_TIMEOUT),
                run: http::client(run_timeout),
            },
            Some(policy) => Pair {
                quick: http::client_from(policy.client_builder(), QUICK_TIMEOUT),
                run: http::client_from(policy.client_builder(), policed_run_timeout(run_timeout)),
            },
        };
        if pairs.len() >= MAX_KINDS {
            pairs.clear();
        }
        pairs.insert(kind, pair.clone());
        pair
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Kind, Pair>> {
        // A panic while holding the lock leaves a usable map: clients are immutable.
        self.pairs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pair_per_timeout_and_policy_whatever_the_endpoint() {
        let pool = ClientPool::new();
        let strict = AddressPolicy::strict();
        let a = pool.worker("http://a.example/", Duration::from_secs(60), None);
        let b = pool.worker("http://b.example/experiment", Duration::from_secs(60), None);
        assert_eq!(a.unwrap().endpoint(), "http://a.example");
        assert_eq!(b.unwrap().endpoint(), "http://b.example");
        assert_eq!(pool.len(), 1);
        pool.worker("http://a.example", Duration::from_secs(90), None)
            .unwrap();
        pool.worker("https://a.example", Duration::from_secs(60), Some(&strict))
            .unwrap();
        assert_eq!(pool.len(), 3);
    }

    #[test]
    fn an_endpoint_the_policy_refuses_gets_no_client() {
        let pool = ClientPool::new();
        let strict = AddressPolicy::strict();
        for refused in ["http://127.0.0.1:9/", "http://[::1]:9/", "http://0.0.0.0/"] {
            let e = pool
                .worker(refused, Duration::from_secs(60), Some(&strict))
                .unwrap_err();
            assert!(matches!(e, WorkerError::BadEndpoint(_)), "{refused}: {e}");
        }
        assert!(
            pool.worker("ftp://a.example/", Duration::from_secs(60), None)
                .is_err()
        );
        assert!(pool.is_empty(), "nothing built for refused endpoints");
    }
}
