//! Publishes Events whose notes stay true. kube-runtime's `Recorder` folds repeats of an Event
//! (same type, reason, action, object and related object) into one series and keeps the first
//! note, so a `CheckpointCompleted` would go on naming an old checkpoint; and the API server
//! refuses to change a note. Here only repeats with the same note form a series (its count
//! and last time move on); a new note is a new Event, as client-go's recorder does.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

/// A repeat later than this after the last starts a new Event, as kube-runtime's does.
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// What makes two occurrences one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    related: Option<(Option<String>, Option<String>)>,
    reason: String,
    action: String,
    warning: bool,
    note: Option<String>,
}

#[derive(Clone, Debug)]
struct Series {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events as `reporter`.
pub struct Events {
    client: Client,
    reporter: Reporter,
    series: Mutex<HashMap<Key, Series>>,
}

impl Events {
    /// A publisher for `client` as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Mutex::default(),
        }
    }

    /// Publishes `ev` about `regarding`: the next occurrence of the series with this note, or a
    /// new Event.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = Key {
            regarding: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            related: ev
                .secondary
                .as_ref()
                .map(|r| (r.kind.clone(), r.name.clone())),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            warning: ev.type_ == EventType::Warning,
            note: ev.note.clone(),
        };
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        // Never held across a request: every round publishes through here.
        let known = {
            let mut series = self.series.lock().await;
            series.retain(|_, s| s.last + SERIES_TTL > now);
            series.get(&key).cloned()
        };
        if let Some(s) = known {
            let count = s.count + 1;
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) },
            });
            match api
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    let next = Series {
                        count,
                        last: now,
                        ..s
                    };
                    self.series.lock().await.insert(key, next);
                    return Ok(());
                }
                // Gone (expired, or deleted): a new Event.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let created = api
            .create(&PostParams::default(), &self.event(ev, regarding, now))
            .await?;
        let first = Series {
            name: created.name_any(),
            count: 1,
            last: now,
        };
        self.series.lock().await.insert(key, first);
        Ok(())
    }

    fn event(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_ref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                if ev.type_ == EventType::Warning {
                    "Warning"
                } else {
                    "Normal"
                }
                .into(),
            ),
            ..Default::default()
        }
    }
}
