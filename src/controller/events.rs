//! Kubernetes Events on the campaign, for `kubectl describe`.

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::crd::ExperimentCampaign;
use crate::engine::{Notice, Severity};

/// Publishes the engine's notices as Events regarding one campaign.
pub struct EventSink {
    recorder: Recorder,
    reference: k8s_openapi::api::core::v1::ObjectReference,
}

impl EventSink {
    /// Events from this controller replica about `campaign`.
    pub fn new(client: Client, instance: &str, campaign: &ExperimentCampaign) -> Self {
        let reporter = Reporter {
            controller: "autoresearch-coordinator".into(),
            instance: Some(instance.into()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            reference: campaign.object_ref(&()),
        }
    }
}

impl crate::engine::Notify for EventSink {
    fn notify(&self, notice: Notice) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(self.publish(notice))
    }
}

impl EventSink {
    async fn publish(&self, notice: Notice) {
        let event = Event {
            type_: match notice.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: notice.reason.to_string(),
            note: Some(truncate(&notice.message, 1000)),
            action: notice.action.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &self.reference).await {
            // An event is a courtesy to the user; failing to publish one must not stop the work.
            tracing::warn!(error = %e, reason = notice.reason, "could not publish event");
        }
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
