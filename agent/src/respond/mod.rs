//! Responders: what the agent does with findings (see DESIGN.md, data
//! flow). Each responder gets every emitted [`Finding`] (new, updated and
//! resolved) from the run loop, synchronously; it must not block (enqueue
//! and return), because the run loop also drains the kernel maps.

pub mod alerts;
pub mod auto;
pub mod findings;
pub mod kube;
pub mod quarantine_feed;
pub mod queue;

use crate::detect::Finding;

/// A consumer of findings (Alertmanager, auto-quarantine, metrics, log).
pub trait Responder {
    fn on_finding(&mut self, f: &Finding);
}

use std::time::SystemTime;

use crate::{
    collect::Snapshot,
    config::Config,
    metrics::Metrics,
    quarantine::Record,
    respond::{
        alerts::{Alerter, ClientError},
        findings::FindingMetrics,
        quarantine_feed::QuarantineFeed,
    },
};

/// Every responder the agent runs, fed from one place in the run loop.
pub struct Responders {
    /// Firing findings by key: updates are logged at debug, starts and
    /// resolutions at info.
    logged: std::collections::HashSet<(crate::detect::Detector, u64)>,
    alerter: Option<Alerter>,
    findings: FindingMetrics,
    quarantine: QuarantineFeed,
}

impl Responders {
    /// Opens the alert queues (when `[alerts]` has URLs) and starts their
    /// delivery tasks; registers the responders' metrics.
    pub fn start(cfg: &Config, metrics: &mut Metrics, node: &str) -> Result<Self, ClientError> {
        let alerter = if cfg.alerts.enabled() {
            let mut a = Alerter::open(&cfg.alerts, &cfg.agent.state_dir, node)?;
            a.start()?;
            metrics
                .registry_mut()
                .register_collector(Box::new(a.collector()));
            tracing::info!(urls = ?cfg.alerts.urls, firing = a.firing().count(), "sending findings to Alertmanager");
            Some(a)
        } else {
            None
        };
        let findings = FindingMetrics::register(metrics.registry_mut());
        let quarantine = QuarantineFeed::new(alerter.iter().flat_map(|a| a.firing()));
        metrics
            .registry_mut()
            .register_collector(Box::new(quarantine.collector(node.to_owned())));
        Ok(Self {
            logged: Default::default(),
            alerter,
            findings,
            quarantine,
        })
    }

    /// Once per tick: quarantine changes become findings (`records` is
    /// None when the quarantine state is unavailable: nothing changes
    /// then), firing alerts are re-sent when due.
    pub fn tick(&mut self, records: Option<&[Record]>, snap: &Snapshot, now: SystemTime) {
        if let Some(records) = records {
            for f in self.quarantine.update(records, &snap.cgroups, now) {
                self.on_finding(&f);
            }
        }
        if let Some(a) = self.alerter.as_mut() {
            a.tick();
        }
    }
}

impl Responder for Responders {
    fn on_finding(&mut self, f: &Finding) {
        let news = match f.state {
            crate::detect::FindingState::Firing => self.logged.insert(f.key()),
            crate::detect::FindingState::Resolved => self.logged.remove(&f.key()),
        };
        if news {
            tracing::info!(
                detector = %f.detector,
                severity = %f.severity,
                state = ?f.state,
                target = %f.target(),
                summary = %f.summary,
                "finding"
            );
        } else {
            tracing::debug!(detector = %f.detector, target = %f.target(), summary = %f.summary, "finding updated");
        }
        self.findings.on_finding(f);
        if let Some(a) = self.alerter.as_mut() {
            a.on_finding(f);
        }
    }
}
