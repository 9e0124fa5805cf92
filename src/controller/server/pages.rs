//! The live campaign pages, served by the controller: campaigns from the API server, history
//! from results.jsonl, events from the Events API. HTML is made by `report::page`.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::crd::ExperimentCampaign;
use crate::report::history::{Filter, ResultHistory, read_rows};
use crate::report::page::{self, EventLine};
use crate::report::tsv;
use crate::telemetry::Metrics;
use crate::usdc::Usdc;

/// API reads of a page give up after this, so a slow API server cannot pile up requests.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Events shown on a campaign page.
const RECENT_EVENTS: usize = 15;

/// What the campaign pages read: the API server (through the controller's client) and the
/// results file.
#[derive(Clone)]
pub struct CampaignPages {
    client: Client,
    results: PathBuf,
    namespace: Option<String>,
}

/// Why a page could not be made.
#[derive(Debug, thiserror::Error)]
enum PageError {
    #[error("campaign {0} not found")]
    NotFound(String),
    #[error("the API server did not answer: {0}")]
    Api(String),
    #[error("{0}")]
    History(#[from] crate::report::history::HistoryError),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let code = match self {
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::Api(_) => StatusCode::BAD_GATEWAY,
            PageError::History(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, self.to_string()).into_response()
    }
}

fn html(body: String) -> Response {
    ([("content-type", "text/html; charset=utf-8")], body).into_response()
}

impl CampaignPages {
    /// Pages over the campaigns `client` sees (in `namespace` only, if set), with the history
    /// in the results file at `results`.
    pub fn new(client: Client, results: PathBuf, namespace: Option<String>) -> Self {
        Self {
            client,
            results,
            namespace,
        }
    }

    fn api(&self) -> Api<ExperimentCampaign> {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    async fn list(&self) -> Result<Vec<ExperimentCampaign>, PageError> {
        let list = tokio::time::timeout(API_TIMEOUT, self.api().list(&ListParams::default()))
            .await
            .map_err(|_| PageError::Api("timed out".into()))?
            .map_err(|e| PageError::Api(e.to_string()))?;
        Ok(list.items)
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<ExperimentCampaign, PageError> {
        let key = format!("{namespace}/{name}");
        if self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Err(PageError::NotFound(key));
        }
        let api = Api::<ExperimentCampaign>::namespaced(self.client.clone(), namespace);
        tokio::time::timeout(API_TIMEOUT, api.get_opt(name))
            .await
            .map_err(|_| PageError::Api("timed out".into()))?
            .map_err(|e| PageError::Api(e.to_string()))?
            .ok_or(PageError::NotFound(key))
    }

    async fn history(&self, campaign: &ExperimentCampaign) -> Result<ResultHistory, PageError> {
        let namespace = campaign.namespace().unwrap_or_default();
        let name = campaign.name_any();
        let filter = Filter {
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
        };
        let path = self.results.clone();
        // Reading the file is blocking I/O; keep it off the async workers.
        let rows = tokio::task::spawn_blocking(move || read_rows(&path, &filter))
            .await
            .map_err(|e| PageError::Api(e.to_string()))??;
        Ok(ResultHistory::new(
            Some(format!("{namespace}/{name}")),
            rows,
            crate::crd::effective_floor(campaign),
        ))
    }

    /// The newest events regarding the campaign. Reading events needs `list` on events; without
    /// it the page says so in place of the events.
    async fn events(&self, namespace: &str, name: &str) -> Vec<EventLine> {
        let api = Api::<Event>::namespaced(self.client.clone(), namespace);
        let params = ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind=ExperimentCampaign"
        ));
        let list = match tokio::time::timeout(API_TIMEOUT, api.list(&params)).await {
            Ok(Ok(list)) => list.items,
            Ok(Err(e)) => return vec![unavailable(e.to_string())],
            Err(_) => return vec![unavailable("timed out".into())],
        };
        let mut lines: Vec<EventLine> = list.into_iter().map(event_line).collect();
        lines.sort_by(|a, b| b.time.cmp(&a.time));
        lines.truncate(RECENT_EVENTS);
        lines
    }

    /// `/campaigns`.
    pub async fn index(&self) -> Response {
        match self.list().await {
            Ok(mut campaigns) => {
                campaigns.sort_by_key(|c| (c.namespace(), c.name_any()));
                html(page::index(&campaigns))
            }
            Err(e) => e.into_response(),
        }
    }

    /// `/campaigns/<namespace>/<name>`.
    pub async fn campaign(&self, namespace: &str, name: &str) -> Response {
        let result = async {
            let campaign = self.get(namespace, name).await?;
            let history = self.history(&campaign).await?;
            let events = self.events(namespace, name).await;
            Ok::<_, PageError>(page::campaign(&campaign, &history, &events))
        };
        match result.await {
            Ok(body) => html(body),
            Err(e) => e.into_response(),
        }
    }

    /// `/campaigns/<namespace>/<name>/results.tsv`.
    pub async fn results_tsv(&self, namespace: &str, name: &str) -> Response {
        let result = async {
            let campaign = self.get(namespace, name).await?;
            Ok::<_, PageError>(tsv::render(&self.history(&campaign).await?))
        };
        match result.await {
            Ok(body) => (
                [
                    ("content-type", "text/tab-separated-values; charset=utf-8"),
                    (
                        "content-disposition",
                        "attachment; filename=\"results.tsv\"",
                    ),
                ],
                body,
            )
                .into_response(),
            Err(e) => e.into_response(),
        }
    }

    /// Sets `autoresearch_campaign_spent_usdc` and `autoresearch_campaign_budget_usdc` from every
    /// campaign's status; a campaign that is gone drops out.
    pub async fn record_spend(&self, metrics: &Metrics) {
        let Ok(campaigns) = self.list().await else {
            return;
        };
        metrics.campaign_spent_usdc.reset();
        metrics.campaign_budget_usdc.reset();
        for c in &campaigns {
            let (ns, name) = (c.namespace().unwrap_or_default(), c.name_any());
            let network = c.spec.payment.network.to_string();
            let labels = [ns.as_str(), name.as_str(), network.as_str()];
            let usdc = |s: Option<&str>| s.and_then(|s| s.parse::<Usdc>().ok());
            if let Some(spent) = usdc(c.status.as_ref().and_then(|s| s.spent.as_deref())) {
                metrics
                    .campaign_spent_usdc
                    .with_label_values(&labels)
                    .set(spent.atomic() as f64 / 1e6);
            }
            if let Some(total) = usdc(Some(&c.spec.budget.total)) {
                metrics
                    .campaign_budget_usdc
                    .with_label_values(&labels)
                    .set(total.atomic() as f64 / 1e6);
            }
        }
    }
}

fn unavailable(why: String) -> EventLine {
    EventLine {
        reason: "EventsUnavailable".into(),
        note: format!("events could not be read ({why}); see kubectl describe campaign"),
        ..Default::default()
    }
}

fn event_line(e: Event) -> EventLine {
    let time = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
        .unwrap_or_default();
    EventLine {
        time,
        kind: e.type_.unwrap_or_default(),
        reason: e.reason.unwrap_or_default(),
        note: e.message.unwrap_or_default(),
    }
}
