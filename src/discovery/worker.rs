//! The one worker type every source produces, and how lists of workers are merged.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use url::Url;

use super::document::{Registration, SkillFilter};
use crate::crd::{DiscoverySpec, StaticWorker};

/// Where a worker was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FoundIn {
    /// The 8004scan index.
    #[serde(rename = "8004scan")]
    Index,
    /// The 8004scan index, and the chain's tokenURI agrees.
    #[serde(rename = "8004scan+chain")]
    IndexConfirmed,
    /// The Identity Registry on chain.
    #[serde(rename = "chain")]
    Chain,
    /// Named in the campaign (`discovery.workers`).
    #[serde(rename = "static")]
    Static,
}

impl FoundIn {
    /// As shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Index => "8004scan",
            Self::IndexConfirmed => "8004scan+chain",
            Self::Chain => "chain",
            Self::Static => "static",
        }
    }
}

/// A GPU worker that can run experiments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    /// ERC-8004 agent (token) id.
    pub agent_id: Option<u64>,
    /// Chain the agent is registered on.
    pub chain_id: Option<u64>,
    /// Display name.
    pub name: String,
    /// Service URL; experiments go to `<endpoint>/experiment`. No trailing slash.
    pub endpoint: String,
    /// Whether it advertises x402 payments.
    pub x402: bool,
    /// The best val_bpb it publishes.
    pub best_val_bpb: Option<f64>,
    /// Experiments it says it has run.
    pub total_experiments: Option<u64>,
    /// GPU model it publishes.
    pub gpu: Option<String>,
    /// Where it was found.
    pub source: FoundIn,
    /// Matches a `prefer` entry: tried before other workers.
    pub preferred: bool,
}

/// Why a registration is not a worker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAWorker {
    /// `active: false`.
    #[error("the agent is marked inactive")]
    Inactive,
    /// The skill is not listed.
    #[error("the agent does not list the autoresearch skill")]
    NoSkill,
    /// No usable http(s) service endpoint.
    #[error("the document names no http(s) worker endpoint")]
    NoEndpoint,
}

impl Worker {
    /// Builds a worker from a registration, or says why it is not one.
    pub fn from_registration(
        reg: &Registration,
        filter: &SkillFilter,
        agent_id: Option<u64>,
        chain_id: Option<u64>,
        source: FoundIn,
    ) -> Result<Self, NotAWorker> {
        if !reg.active {
            return Err(NotAWorker::Inactive);
        }
        if !reg.has_skill(filter) {
            return Err(NotAWorker::NoSkill);
        }
        let endpoint = reg.worker_endpoint().ok_or(NotAWorker::NoEndpoint)?;
        let agent_id = agent_id.or_else(|| reg.agent_id_for(chain_id));
        Ok(Self {
            agent_id,
            chain_id,
            name: reg.name.clone().unwrap_or_else(|| {
                format!("agent {}", agent_id.map_or("?".into(), |a| a.to_string()))
            }),
            endpoint: normalise_endpoint(&endpoint),
            x402: reg.x402,
            best_val_bpb: reg.metadata.best_val_bpb,
            total_experiments: reg.metadata.total_experiments,
            gpu: reg.metadata.gpu.clone(),
            source,
            preferred: false,
        })
    }

    /// A worker named in the campaign.
    pub fn from_static(s: &StaticWorker) -> Option<Self> {
        let url = Url::parse(s.endpoint.trim()).ok()?;
        if !matches!(url.scheme(), "http" | "https") {
            return None;
        }
        Some(Self {
            agent_id: s.agent_id,
            chain_id: None,
            name: s.name.clone().unwrap_or_else(|| url.to_string()),
            endpoint: normalise_endpoint(&url),
            x402: true,
            best_val_bpb: None,
            total_experiments: None,
            gpu: None,
            source: FoundIn::Static,
            preferred: false,
        })
    }

    /// The endpoint as a URL.
    pub fn url(&self) -> Option<Url> {
        Url::parse(&self.endpoint).ok()
    }
}

/// The endpoint as a comparable string: parsed and re-serialised (lower-case scheme and host,
/// default port dropped), without a trailing slash.
pub fn normalise_endpoint(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

fn normalise_text(endpoint: &str) -> String {
    Url::parse(endpoint.trim())
        .map(|u| normalise_endpoint(&u))
        .unwrap_or_else(|_| endpoint.trim().trim_end_matches('/').to_string())
}

/// An entry of `prefer` / `exclude`: an endpoint (exact, or a prefix at a path boundary) or,
/// for `exclude`, an agent id (`42`, `84532:42`, or the index's `84532:0x…:42`).
fn entry_matches(entry: &str, worker: &Worker) -> bool {
    let entry = entry.trim();
    if entry.is_empty() {
        return false;
    }
    if !entry.contains("://") {
        let mut parts = entry.split(':');
        let (chain, id) = match (parts.next(), parts.next(), parts.next()) {
            (Some(id), None, None) => (None, id),
            (Some(chain), Some(id), None) | (Some(chain), Some(_), Some(id)) => (Some(chain), id),
            _ => return false,
        };
        let id_ok = id
            .parse::<u64>()
            .ok()
            .is_some_and(|id| worker.agent_id == Some(id));
        let chain_ok = chain.is_none_or(|c| c.parse::<u64>().ok() == worker.chain_id);
        return id_ok && chain_ok;
    }
    let entry = normalise_text(entry);
    let endpoint = worker.endpoint.as_str();
    endpoint == entry
        || endpoint
            .strip_prefix(entry.as_str())
            .is_some_and(|rest| rest.starts_with('/') || rest.starts_with('?'))
}

/// Merges static and discovered workers: static first (the user named them), then discovered;
/// duplicates by endpoint or by (chain, agent id) dropped, the first kept; excluded removed;
/// preferred moved to the front in `prefer` order, the rest keeping their order.
pub fn merge(spec: &DiscoverySpec, discovered: &[Worker]) -> Vec<Worker> {
    let mut seen_endpoints = HashSet::new();
    let mut seen_agents = HashSet::new();
    let mut out = Vec::new();
    let statics = spec.workers.iter().filter_map(Worker::from_static);
    for worker in statics.chain(discovered.iter().cloned()) {
        if spec.exclude.iter().any(|e| entry_matches(e, &worker)) {
            continue;
        }
        if !seen_endpoints.insert(worker.endpoint.clone()) {
            continue;
        }
        if let Some(id) = worker.agent_id
            && worker.source != FoundIn::Static
            && !seen_agents.insert((worker.chain_id, id))
        {
            continue;
        }
        out.push(worker);
    }
    let rank = |w: &Worker| {
        spec.prefer
            .iter()
            .position(|p| entry_matches(p, w))
            .unwrap_or(usize::MAX)
    };
    for w in &mut out {
        w.preferred = rank(w) != usize::MAX;
    }
    // A stable sort keeps the original order among equals.
    out.sort_by_key(rank);
    out
}

/// Workers ranked by the best val_bpb they publish, lowest first; those without one last.
pub fn rank_by_published_bpb(workers: &[Worker]) -> Vec<Worker> {
    let mut ranked = workers.to_vec();
    ranked.sort_by(|a, b| match (a.best_val_bpb, b.best_val_bpb) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(endpoint: &str, agent: Option<u64>, bpb: Option<f64>) -> Worker {
        Worker {
            agent_id: agent,
            chain_id: Some(84532),
            name: endpoint.into(),
            endpoint: normalise_text(endpoint),
            x402: true,
            best_val_bpb: bpb,
            total_experiments: None,
            gpu: None,
            source: FoundIn::Index,
            preferred: false,
        }
    }

    #[test]
    fn merges_without_duplicates_and_applies_lists() {
        let spec = DiscoverySpec {
            workers: vec![StaticWorker {
                endpoint: "https://mine.example.com/services/w/".into(),
                name: Some("mine".into()),
                agent_id: None,
            }],
            prefer: vec!["https://b.example.com".into()],
            exclude: vec!["84532:3".into(), "https://bad.example.com/services".into()],
            ..DiscoverySpec::default()
        };
        let discovered = vec![
            worker("https://a.example.com/services/w", Some(1), None),
            worker("https://mine.example.com/services/w", Some(9), None),
            worker("https://b.example.com/services/w", Some(2), None),
            worker("https://a.example.com/services/w/", Some(1), None),
            worker("https://other.example.com/services/w", Some(1), None),
            worker("https://c.example.com/services/w", Some(3), None),
            worker("https://bad.example.com/services/x", Some(4), None),
            worker("https://bad.example.comx/services/x", Some(5), None),
        ];
        let merged = merge(&spec, &discovered);
        let endpoints: Vec<_> = merged.iter().map(|w| w.endpoint.as_str()).collect();
        assert_eq!(
            endpoints,
            vec![
                "https://b.example.com/services/w",
                "https://mine.example.com/services/w",
                "https://a.example.com/services/w",
                "https://bad.example.comx/services/x",
            ]
        );
        assert!(merged[0].preferred && !merged[1].preferred);
        assert_eq!(merged[1].source, FoundIn::Static);
    }

    #[test]
    fn exclude_by_agent_forms() {
        let w = worker("https://a.example.com/services/w", Some(42), None);
        assert!(entry_matches("42", &w));
        assert!(entry_matches("84532:42", &w));
        assert!(entry_matches(
            "84532:0x8004A818BFB912233c491871b3d84c89A494BD9e:42",
            &w
        ));
        assert!(!entry_matches("8453:42", &w));
        assert!(!entry_matches("43", &w));
    }

    #[test]
    fn ranks_missing_last() {
        let ranked = rank_by_published_bpb(&[
            worker("https://a.example.com", None, None),
            worker("https://b.example.com", None, Some(0.99)),
            worker("https://c.example.com", None, Some(0.97)),
        ]);
        let names: Vec<_> = ranked.iter().map(|w| w.endpoint.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "https://c.example.com",
                "https://b.example.com",
                "https://a.example.com"
            ]
        );
    }
}
