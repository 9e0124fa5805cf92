//! Kubernetes Events on the campaign, for `kubectl describe`.
//!
//! kube-runtime's `Recorder` folds events into a series by reason alone and keeps the first
//! note, so three *different* experiments starting showed as "ExperimentStarted (x3) experiment
//! exp-34dd…": it read like one experiment paid three times. This sink folds an event into a
//! series only when its reason *and* message repeat (a worker failing the same way again), so
//! every experiment's events stay distinct.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use tokio::sync::Mutex;

use crate::crd::ExperimentCampaign;
use crate::engine::{Notice, Severity};

/// The reporting controller's name, as Events show it.
const CONTROLLER: &str = "autoresearch-coordinator";
/// How long a repeated event is folded into its series.
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// Longest note the API server accepts (1 KiB).
const MAX_NOTE: usize = 1000;

/// One event already published, for folding repeats.
struct Published {
    name: String,
    count: i32,
    at: Instant,
}

/// Publishes the engine's notices as Events regarding one campaign. Built once per campaign by
/// the controller, so its series cache survives between reconciles.
pub struct EventSink {
    api: Api<Event>,
    instance: String,
    reference: ObjectReference,
    series: Mutex<HashMap<(String, String), Published>>,
}

impl EventSink {
    /// Events from this controller replica about `campaign`.
    pub fn new(client: Client, instance: &str, campaign: &ExperimentCampaign) -> Self {
        let namespace = campaign
            .meta()
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        Self {
            api: Api::namespaced(client, &namespace),
            instance: instance.to_string(),
            reference: campaign.object_ref(&()),
            series: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, notice: Notice) {
        let note = truncate(&notice.message, MAX_NOTE);
        let key = (notice.reason.to_string(), note.clone());
        let mut series = self.series.lock().await;
        series.retain(|_, p| p.at.elapsed() < SERIES_TTL);
        let result = match series.get_mut(&key) {
            Some(seen) => {
                seen.count += 1;
                seen.at = Instant::now();
                self.repeat(&seen.name, seen.count).await
            }
            None => match self.create(&notice, note).await {
                Ok(name) => {
                    series.insert(
                        key,
                        Published {
                            name,
                            count: 1,
                            at: Instant::now(),
                        },
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            // An event is a courtesy to the user; failing to publish one must not stop the work.
            tracing::warn!(error = %e, reason = notice.reason, "could not publish event");
        }
    }

    async fn create(&self, notice: &Notice, note: String) -> Result<String, kube::Error> {
        let event = Event {
            metadata: ObjectMeta {
                // `<campaign>.<random hex>`, as kubectl shows events; generateName would have to
                // be a valid name on its own, and a trailing '.' is not.
                name: Some(format!(
                    "{}.{:016x}",
                    self.reference.name.clone().unwrap_or_default(),
                    rand::random::<u64>()
                )),
                namespace: self.reference.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            type_: Some(
                match notice.severity {
                    Severity::Normal => "Normal",
                    Severity::Warning => "Warning",
                }
                .into(),
            ),
            reason: Some(notice.reason.into()),
            action: Some(notice.action.into()),
            note: Some(note),
            regarding: Some(self.reference.clone()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        let created = self.api.create(&PostParams::default(), &event).await?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    async fn repeat(&self, name: &str, count: i32) -> Result<(), kube::Error> {
        let patch = Event {
            series: Some(EventSeries {
                count,
                last_observed_time: MicroTime(k8s_openapi::jiff::Timestamp::now()),
            }),
            ..Event::default()
        };
        self.api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

impl crate::engine::Notify for EventSink {
    fn notify(&self, notice: Notice) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.publish(notice))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
