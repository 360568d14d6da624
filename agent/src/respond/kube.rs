//! Telling Kubernetes about a quarantine: the pod gets the label
//! `tollgate.io/quarantined=true` (a JSON merge patch; NetworkPolicies of
//! the CNI can select on it) and an Event (reason TollgateQuarantined or
//! TollgateReleased, involvedObject the pod). The kernel-side quarantine
//! never waits for this: actions are queued ([`QUEUE`] at most; beyond,
//! they are dropped, logged and counted) and a task applies them in order,
//! retrying failures with backoff ([`ATTEMPTS`] tries).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use tokio::sync::mpsc;

/// The label a quarantined pod carries.
pub const LABEL: &str = "tollgate.io/quarantined";
pub const REASON_QUARANTINED: &str = "TollgateQuarantined";
pub const REASON_RELEASED: &str = "TollgateReleased";
/// Queued actions at most.
pub const QUEUE: usize = 1024;
/// Tries per action (label patch and Event each), 1 s doubling to 30 s.
pub const ATTEMPTS: u32 = 6;

/// A pod by name (and API uid, for the Event's involvedObject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl PodRef {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug)]
struct Action {
    quarantined: bool,
    pod: PodRef,
    message: String,
}

/// Counters of the Kubernetes side effects (for logs, metrics, tests).
#[derive(Debug, Default)]
pub struct PodEventStats {
    pub applied: AtomicU64,
    pub retries: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// Sender side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct PodEvents {
    tx: mpsc::Sender<Action>,
    pub stats: Arc<PodEventStats>,
}

impl PodEvents {
    /// Starts the task that applies actions with `client`; `node` goes
    /// into the Events' source.
    pub fn spawn(client: Client, node: String) -> Self {
        Self::spawn_with_backoff(client, node, Duration::from_secs(1))
    }

    pub fn spawn_with_backoff(client: Client, node: String, first: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(PodEventStats::default());
        tokio::spawn(apply_all(client, node, rx, stats.clone(), first));
        Self { tx, stats }
    }

    pub fn quarantined(&self, pod: PodRef, reason: &str, by: &str) {
        self.send(Action {
            quarantined: true,
            message: format!("quarantined by {by}: {reason}"),
            pod,
        });
    }

    pub fn released(&self, pod: PodRef, how: &str, by: &str) {
        self.send(Action {
            quarantined: false,
            message: format!("{how} by {by}"),
            pod,
        });
    }

    fn send(&self, a: Action) {
        if let Err(e) = self.tx.try_send(a) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "Kubernetes label/Event queue full or closed; the quarantine itself is in force, the pod label is not updated");
        }
    }
}

async fn apply_all(
    client: Client,
    node: String,
    mut rx: mpsc::Receiver<Action>,
    stats: Arc<PodEventStats>,
    first: Duration,
) {
    while let Some(a) = rx.recv().await {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &a.pod.namespace);
        let events: Api<Event> = Api::namespaced(client.clone(), &a.pod.namespace);
        let label = serde_json::json!({"metadata": {"labels": {
            LABEL: if a.quarantined { serde_json::json!("true") } else { serde_json::Value::Null }
        }}});
        let what = if a.quarantined { "label" } else { "unlabel" };
        retry(what, &a.pod, &stats, first, || async {
            pods.patch(&a.pod.name, &PatchParams::default(), &Patch::Merge(&label))
                .await
                .map(drop)
        })
        .await;
        let ev = event(&a, &node);
        retry("event", &a.pod, &stats, first, || async {
            events.create(&PostParams::default(), &ev).await.map(drop)
        })
        .await;
    }
}

/// Runs `f` until it succeeds, the pod is gone (404) or [`ATTEMPTS`] ran.
async fn retry<F, Fut>(
    what: &str,
    pod: &PodRef,
    stats: &PodEventStats,
    first: Duration,
    f: F,
) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut wait = first;
    for attempt in 1..=ATTEMPTS {
        match f().await {
            Ok(()) => {
                stats.applied.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(what, pod = %pod.key(), "Kubernetes updated");
                return true;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(what, pod = %pod.key(), "pod is gone; nothing to update");
                return false;
            }
            Err(e) if attempt < ATTEMPTS => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(what, pod = %pod.key(), attempt, error = %e, retry_in = ?wait, "updating Kubernetes failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(what, pod = %pod.key(), attempts = ATTEMPTS, error = %e, "updating Kubernetes failed; giving up (the kernel quarantine is unaffected)");
            }
        }
    }
    false
}

/// A core/v1 Event about the pod, named like kubectl's recorder does
/// (`<pod>.<hex nanoseconds>`).
fn event(a: &Action, node: &str) -> Event {
    let now = SystemTime::now();
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let ts = humantime::format_rfc3339_seconds(now).to_string();
    let (reason, kind, action) = if a.quarantined {
        (REASON_QUARANTINED, "Warning", "Quarantine")
    } else {
        (REASON_RELEASED, "Normal", "Release")
    };
    let v = serde_json::json!({
        "metadata": {"name": format!("{}.{nanos:x}", a.pod.name), "namespace": a.pod.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": a.pod.namespace,
            "name": a.pod.name, "uid": a.pod.uid},
        "reason": reason, "type": kind, "action": action, "message": a.message,
        "source": {"component": "tollgate", "host": node},
        "reportingComponent": "tollgate.io/agent", "reportingInstance": node,
        "firstTimestamp": ts, "lastTimestamp": ts, "count": 1,
    });
    serde_json::from_value(v).expect("the Event literal matches core/v1 Event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_the_pod() {
        let a = Action {
            quarantined: true,
            pod: PodRef {
                namespace: "ml".into(),
                name: "train-0".into(),
                uid: Some("u-1".into()),
            },
            message: "quarantined by cli: exfil".into(),
        };
        let e = event(&a, "node-1");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["reason"], REASON_QUARANTINED);
        assert_eq!(v["type"], "Warning");
        assert_eq!(v["involvedObject"]["kind"], "Pod");
        assert_eq!(v["involvedObject"]["name"], "train-0");
        assert_eq!(v["involvedObject"]["uid"], "u-1");
        assert_eq!(v["metadata"]["namespace"], "ml");
        assert!(v["firstTimestamp"].as_str().unwrap().ends_with('Z'));
    }
}
