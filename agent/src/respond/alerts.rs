//! Alertmanager responder: every finding becomes an alert posted to the
//! Alertmanager v2 API (`POST /api/v2/alerts`) of every configured URL.
//!
//! - Labels: alertname ([`Detector::alertname`]), severity, detector,
//!   namespace, pod (the cgroup path on a plain host), container, class,
//!   node. Annotations: summary, description, evidence (numbers next to
//!   the class baseline), destinations, runbook_url, dashboard_url.
//! - A firing alert is sent when it starts (or its labels change) and
//!   again every `alerts.resend_interval` while it fires; the resolution is
//!   sent with `endsAt`.
//! - Deliveries go through a bounded on-disk queue per URL (see
//!   [`queue`](crate::respond::queue)) and are retried with exponential
//!   backoff, so an Alertmanager outage or an agent restart loses nothing.
//!   The set of firing alerts is kept in `<state_dir>/alerts/firing.json`,
//!   so a restarted agent re-sends and later resolves them.

pub mod config;
mod deliver;
mod metrics;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use config::AlertsConfig;
pub use deliver::{ClientError, HttpClient, Target};
pub use metrics::AlertsCollector;

use crate::{
    detect::{Finding, FindingState},
    metrics::label,
    respond::{Responder, queue::DiskQueue},
};

/// Uid of the pod drill-down dashboard (dashboards/pod.json), which
/// `dashboard_url` links to.
pub const POD_DASHBOARD_UID: &str = "tollgate-pod";

/// One alert as the Alertmanager v2 API takes it (`postableAlert`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(
        rename = "generatorURL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub generator_url: String,
}

/// A queued delivery: the alert and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The alert's identity in Alertmanager: its label set.
    pub key: String,
    pub firing: bool,
    pub alert: PostableAlert,
}

fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).expect("labels serialize")
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Percent-encodes a URL query value.
fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Formats a number for humans: integers as such, others with 3 digits.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// A firing alert as remembered across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Firing {
    finding: Finding,
    alert: PostableAlert,
    #[serde(skip)]
    last_sent: Option<Instant>,
}

/// The Alertmanager responder.
pub struct Alerter {
    cfg: AlertsConfig,
    node: String,
    targets: Vec<Arc<Target>>,
    firing: BTreeMap<String, Firing>,
    firing_file: PathBuf,
    firing_count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Alerter {
    /// Opens the queues under `<state_dir>/alerts/` (reading back what a
    /// previous run left) and the firing set. Starts nothing yet.
    pub fn open(cfg: &AlertsConfig, state_dir: &Path, node: &str) -> Result<Self, ClientError> {
        let dir = state_dir.join("alerts");
        let mut targets = Vec::new();
        for url in &cfg.urls {
            let name: String = url
                .trim_end_matches('/')
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let queue = DiskQueue::open(&dir.join(format!("queue-{name}")), cfg.queue_max)?;
            if !queue.is_empty() {
                tracing::info!(alertmanager = %url, queued = queue.len(), "alerts queued by a previous run will be delivered");
            }
            targets.push(Arc::new(Target {
                url: url.clone(),
                stats: Default::default(),
                queue: Mutex::new(queue),
                notify: Notify::new(),
            }));
        }
        let firing_file = dir.join("firing.json");
        let firing: BTreeMap<String, Firing> = match std::fs::read(&firing_file) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %firing_file.display(), error = %e, "unreadable firing-alert state; starting empty (Alertmanager resolves stale alerts after its resolve_timeout)");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Ok(Self {
            cfg: cfg.clone(),
            node: node.to_owned(),
            targets,
            firing_count: Arc::new(AtomicU64::new(firing.len() as u64)),
            firing,
            firing_file,
            tasks: Vec::new(),
        })
    }

    /// Starts one delivery task per URL (needs a tokio runtime).
    pub fn start(&mut self) -> Result<(), ClientError> {
        let http = HttpClient::new(&self.cfg)?;
        for t in &self.targets {
            self.tasks.push(tokio::spawn(deliver::run_target(
                t.clone(),
                http.clone(),
                self.cfg.clone(),
            )));
        }
        Ok(())
    }

    /// Findings currently firing (as last reported), e.g. to resolve those
    /// whose cause disappeared while the agent was down.
    pub fn firing(&self) -> impl Iterator<Item = &Finding> {
        self.firing.values().map(|f| &f.finding)
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// The alert for a finding.
    pub fn alert(&self, f: &Finding) -> PostableAlert {
        let s = &f.subject;
        let pod = s
            .pod
            .clone()
            .or_else(|| s.cgroup_path.clone())
            .unwrap_or_else(|| format!("cgroup:{}", s.cgroup_id));
        let mut labels = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            if !v.is_empty() {
                labels.insert(k.to_owned(), label(v));
            }
        };
        put("alertname", f.detector.alertname());
        put("severity", f.severity.as_str());
        put("detector", f.detector.as_str());
        put("namespace", s.namespace.as_deref().unwrap_or(""));
        put("pod", &pod);
        put("container", s.container.as_deref().unwrap_or(""));
        put(
            "class",
            if s.class.is_empty() {
                "default"
            } else {
                &s.class
            },
        );
        put("node", &self.node);

        let mut ann = BTreeMap::new();
        let cut = |v: String| {
            if v.len() > 2048 {
                label(&v[..v.floor_char_boundary(2048)])
            } else {
                v
            }
        };
        ann.insert("summary".into(), cut(f.summary.clone()));
        ann.insert(
            "description".into(),
            cut(format!(
                "{} (class {}) on node {}: {} (score {})",
                f.target(),
                labels["class"],
                self.node,
                f.detector,
                num(f.score)
            )),
        );
        if !f.evidence.is_empty() {
            let ev: Vec<String> = f
                .evidence
                .iter()
                .map(|e| match e.baseline {
                    Some(b) => format!(
                        "{}={} {} (baseline {})",
                        e.name,
                        num(e.observed),
                        e.unit,
                        num(b)
                    ),
                    None => format!("{}={} {}", e.name, num(e.observed), e.unit),
                })
                .collect();
            ann.insert("evidence".into(), cut(ev.join("; ")));
        }
        if !f.destinations.is_empty() {
            ann.insert("destinations".into(), cut(f.destinations.join(", ")));
        }
        if !self.cfg.runbook_base_url.is_empty() {
            ann.insert(
                "runbook_url".into(),
                format!(
                    "{}/{}",
                    self.cfg.runbook_base_url.trim_end_matches('/'),
                    f.detector.alertname()
                ),
            );
        }
        let mut generator_url = String::new();
        if !self.cfg.dashboard_base_url.is_empty() {
            let from = f
                .started_at
                .checked_sub(Duration::from_secs(3600))
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis());
            let url = format!(
                "{}/d/{POD_DASHBOARD_UID}/tollgate-pod?var-node={}&var-namespace={}&var-pod={}&from={from}&to=now",
                self.cfg.dashboard_base_url.trim_end_matches('/'),
                query_escape(&self.node),
                query_escape(labels.get("namespace").map_or("", String::as_str)),
                query_escape(&labels["pod"]),
            );
            ann.insert("dashboard_url".into(), url.clone());
            generator_url = url;
        }
        PostableAlert {
            labels,
            annotations: ann,
            starts_at: rfc3339(f.started_at),
            ends_at: None,
            generator_url,
        }
    }

    fn enqueue(&self, firing: bool, alert: &PostableAlert) {
        let p = Pending {
            key: fingerprint(&alert.labels),
            firing,
            alert: alert.clone(),
        };
        for t in &self.targets {
            t.enqueue(&p);
        }
    }

    fn save(&self) {
        self.firing_count
            .store(self.firing.len() as u64, Ordering::Relaxed);
        let tmp = self.firing_file.with_extension("json.tmp");
        let body = serde_json::to_vec(&self.firing).expect("firing alerts serialize");
        let res =
            std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &self.firing_file));
        if let Err(e) = res {
            tracing::warn!(file = %self.firing_file.display(), error = %e, "could not save the firing alerts; after a restart they are re-sent only when found again");
        }
    }

    /// Re-sends firing alerts whose last send is `resend_interval` ago;
    /// call every tick.
    pub fn tick(&mut self) {
        let every = self.cfg.resend_interval;
        let due: Vec<String> = self
            .firing
            .iter()
            .filter(|(_, f)| f.last_sent.is_none_or(|t| t.elapsed() >= every))
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            let f = self.firing.get_mut(&k).expect("listed");
            f.last_sent = Some(Instant::now());
            let alert = f.alert.clone();
            self.enqueue(true, &alert);
        }
    }

    /// The collector for the alert metrics (register it in the registry).
    pub fn collector(&self) -> AlertsCollector {
        AlertsCollector {
            targets: self.targets.clone(),
            firing: self.firing_count.clone(),
        }
    }
}

impl Drop for Alerter {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn finding_key(f: &Finding) -> String {
    format!("{}/{}", f.detector, f.subject.cgroup_id)
}

impl Responder for Alerter {
    fn on_finding(&mut self, f: &Finding) {
        let key = finding_key(f);
        match f.state {
            FindingState::Firing => {
                if f.severity < self.cfg.min_severity {
                    return;
                }
                let alert = self.alert(f);
                match self.firing.get_mut(&key) {
                    Some(old) if old.alert.labels == alert.labels => {
                        // An update: newer numbers go out with the next re-send.
                        old.alert.annotations = alert.annotations;
                        old.finding = f.clone();
                        self.save();
                        return;
                    }
                    Some(old) => {
                        // Labels changed (severity): a different alert for
                        // Alertmanager; resolve the old one.
                        let mut gone = old.alert.clone();
                        gone.ends_at = Some(rfc3339(SystemTime::now()));
                        self.enqueue(false, &gone);
                    }
                    None => {}
                }
                self.enqueue(true, &alert);
                self.firing.insert(
                    key,
                    Firing {
                        finding: f.clone(),
                        alert,
                        last_sent: Some(Instant::now()),
                    },
                );
                self.save();
            }
            FindingState::Resolved => {
                let Some(old) = self.firing.remove(&key) else {
                    return; // never sent (below min_severity) or resolved already
                };
                let mut alert = self.alert(f);
                alert.labels = old.alert.labels;
                alert.starts_at = old.alert.starts_at;
                alert.ends_at = Some(rfc3339(f.ended_at.unwrap_or_else(SystemTime::now)));
                self.enqueue(false, &alert);
                self.save();
            }
        }
    }
}

#[cfg(test)]
mod tests;
