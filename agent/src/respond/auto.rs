//! Auto-quarantine: a responder that quarantines a pod when a finding about
//! it is severe enough and its class's policy says so.
//!
//! Per class (`[auto_quarantine.classes.<class>]`, else
//! `[auto_quarantine.default]`): `quarantine = "off"` ignores findings,
//! `"alert"` leaves them to the alerting responders (logged here, no
//! action), `"auto"` quarantines at `min_severity` or worse. Pods in
//! `never_namespaces` (kube-system by default) are never quarantined
//! automatically. Each firing finding acts once (an operator's release
//! is not undone by the next update of the same finding); the quarantine
//! goes through the control API's path with the finding as evidence in
//! the audit log.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Responder;
use crate::{
    control::service::{ServiceError, SharedService, Target},
    detect::{Detector, Finding, FindingState, Severity},
    inventory::classes::{ClassConfig, ClassError, Classifier},
    quarantine::Request,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    #[default]
    Alert,
    Auto,
}

/// What a class does with findings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassPolicy {
    /// "off", "alert" (no action here) or "auto".
    pub quarantine: Mode,
    /// With "auto": quarantine on findings of this severity or worse
    /// (info, low, medium, high, critical).
    pub min_severity: Severity,
    /// Release automatically after this long (e.g. "1h"); none = until an
    /// operator releases it.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

impl Default for ClassPolicy {
    fn default() -> Self {
        Self {
            quarantine: Mode::Alert,
            min_severity: Severity::High,
            ttl: None,
        }
    }
}

/// `[auto_quarantine]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoQuarantineConfig {
    /// Namespaces (on plain hosts: slices) never quarantined automatically.
    pub never_namespaces: Vec<String>,
    /// Policy of classes without their own entry.
    pub default: ClassPolicy,
    /// Per class, by class name (see `[classes]`).
    pub classes: BTreeMap<String, ClassPolicy>,
}

impl Default for AutoQuarantineConfig {
    fn default() -> Self {
        Self {
            never_namespaces: vec!["kube-system".into()],
            default: ClassPolicy::default(),
            classes: BTreeMap::new(),
        }
    }
}

impl AutoQuarantineConfig {
    /// Every class named must exist in the class configuration.
    pub fn validate(&self, classes: &ClassConfig) -> Result<(), ClassError> {
        let known = Classifier::new(classes)?;
        for name in self.classes.keys() {
            if !known.classes().contains(name) {
                return Err(ClassError::Invalid {
                    key: format!("auto_quarantine.classes.{name}"),
                    why: format!(
                        "no such class; classes are: {} (add it to classes.names or a rule)",
                        known
                            .classes()
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn policy(&self, class: &str) -> &ClassPolicy {
        self.classes.get(class).unwrap_or(&self.default)
    }
}

/// What the policy says about one finding.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Resolved findings, quarantine notices, episodes already acted on.
    Ignore,
    Off,
    AlertOnly,
    Protected(String),
    BelowSeverity(Severity),
    /// No pod name and no cgroup path to act on.
    NoTarget,
    Quarantine {
        target: Target,
        /// The cgroup path, when the pod cannot be resolved by name.
        fallback: Option<Target>,
        ttl: Option<Duration>,
    },
}

/// One queued quarantine.
#[derive(Debug, Clone)]
pub struct Job {
    pub target: Target,
    pub fallback: Option<Target>,
    pub request: Request,
}

#[derive(Debug, Default)]
pub struct AutoStats {
    pub quarantined: AtomicU64,
    pub alert_only: AtomicU64,
    pub protected: AtomicU64,
    pub below_severity: AtomicU64,
    pub no_target: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

/// Bound on remembered finding episodes; past it the memory restarts
/// (an old episode could then act once more, which is the safe side).
const MAX_EPISODES: usize = 100_000;
/// Queued quarantines at most.
pub const QUEUE: usize = 256;

pub struct AutoQuarantine {
    cfg: AutoQuarantineConfig,
    acted: HashSet<(Detector, u64, SystemTime)>,
    tx: mpsc::Sender<Job>,
    pub stats: Arc<AutoStats>,
}

impl AutoQuarantine {
    /// A responder queueing into `tx`; [`run_jobs`] (or a test) drains it.
    pub fn new(cfg: AutoQuarantineConfig, tx: mpsc::Sender<Job>) -> Self {
        Self {
            cfg,
            acted: HashSet::new(),
            tx,
            stats: Arc::new(AutoStats::default()),
        }
    }

    /// The responder and its worker on the current runtime.
    pub fn spawn(cfg: AutoQuarantineConfig, svc: SharedService) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let me = Self::new(cfg, tx);
        tokio::spawn(run_jobs(rx, svc, me.stats.clone()));
        me
    }

    /// The policy's verdict; pure apart from remembering acted episodes.
    pub fn decide(&mut self, f: &Finding) -> Decision {
        let key = (f.detector, f.subject.cgroup_id, f.started_at);
        if f.state == FindingState::Resolved {
            self.acted
                .retain(|(d, id, _)| (*d, *id) != (f.detector, f.subject.cgroup_id));
            return Decision::Ignore;
        }
        if f.detector == Detector::Quarantine || self.acted.contains(&key) {
            return Decision::Ignore;
        }
        let policy = self.cfg.policy(&f.subject.class);
        match policy.quarantine {
            Mode::Off => return Decision::Off,
            Mode::Alert => return Decision::AlertOnly,
            Mode::Auto => {}
        }
        if let Some(ns) = &f.subject.namespace
            && self.cfg.never_namespaces.iter().any(|n| n == ns)
        {
            return Decision::Protected(ns.clone());
        }
        if f.severity < policy.min_severity {
            return Decision::BelowSeverity(policy.min_severity);
        }
        let by_path = f
            .subject
            .cgroup_path
            .as_ref()
            .map(|p| Target::Cgroup(format!("/{}", p.trim_start_matches('/'))));
        let by_name = match (&f.subject.namespace, &f.subject.pod) {
            (Some(ns), Some(pod)) => Target::parse(&format!("{ns}/{pod}")).ok(),
            _ => None,
        };
        let (target, fallback) = match (by_name, by_path) {
            (Some(n), p) => (n, p),
            (None, Some(p)) => (p, None),
            (None, None) => return Decision::NoTarget,
        };
        if self.acted.len() >= MAX_EPISODES {
            self.acted.clear();
        }
        self.acted.insert(key);
        Decision::Quarantine {
            target,
            fallback,
            ttl: policy.ttl,
        }
    }
}

impl Responder for AutoQuarantine {
    fn on_finding(&mut self, f: &Finding) {
        let decision = self.decide(f);
        let s = &self.stats;
        match decision {
            Decision::Ignore | Decision::Off => {}
            Decision::AlertOnly => {
                s.alert_only.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target = %f.target(), detector = %f.detector, class = %f.subject.class, "finding not auto-quarantined: class policy is alert");
            }
            Decision::Protected(ns) => {
                s.protected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target = %f.target(), namespace = %ns, detector = %f.detector, "finding not auto-quarantined: namespace is in auto_quarantine.never_namespaces");
            }
            Decision::BelowSeverity(min) => {
                s.below_severity.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target = %f.target(), severity = %f.severity, min = %min, "finding below the auto-quarantine severity");
            }
            Decision::NoTarget => {
                s.no_target.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    cgroup_id = f.subject.cgroup_id,
                    "finding names no pod and no cgroup path; cannot quarantine it"
                );
            }
            Decision::Quarantine {
                target,
                fallback,
                ttl,
            } => {
                let job = Job {
                    target,
                    fallback,
                    request: Request {
                        reason: format!("{}: {}", f.detector, f.summary),
                        by: format!("agent:{}", f.detector),
                        ttl,
                        pod: None,
                        evidence: serde_json::to_value(f).ok(),
                    },
                };
                if let Err(e) = self.tx.try_send(job) {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(target = %f.target(), error = %e, "auto-quarantine queue full; this finding was not acted on");
                }
            }
        }
    }
}

/// Applies queued quarantines through the service (the control API's path).
pub async fn run_jobs(mut rx: mpsc::Receiver<Job>, svc: SharedService, stats: Arc<AutoStats>) {
    while let Some(job) = rx.recv().await {
        let svc = svc.clone();
        let res = tokio::task::spawn_blocking(move || {
            match svc.quarantine(&job.target, job.request.clone()) {
                Err(ServiceError::NoPod(_)) if job.fallback.is_some() => {
                    let fb = job.fallback.as_ref().expect("checked");
                    svc.quarantine(fb, job.request.clone())
                }
                r => r,
            }
        })
        .await;
        match res {
            Ok(Ok(rec)) => {
                stats.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(cgroup = %rec.path, pod = ?rec.pod, reason = %rec.reason, "auto-quarantined");
            }
            Ok(Err(e)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "auto-quarantine failed");
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "auto-quarantine task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests;
