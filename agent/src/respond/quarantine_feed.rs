//! Quarantines as findings: a cgroup that becomes quarantined (by the CLI,
//! the control API or automatically: the state file is re-read every
//! tick) yields a firing [`Detector::Quarantine`] finding (severity high,
//! alert TollgateQuarantined); its release or expiry resolves it. The
//! evidence is the kernel's count of what the quarantine stopped.
//!
//! Also exports `tollgate_pod_quarantined` (1 per quarantined pod, with
//! the per-pod labels) for dashboards and rule-based alerts.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, gauge::ConstGauge},
};

use crate::{
    collect::CgroupRow,
    detect::{Detector, Evidence, Finding, FindingState, Severity, Subject},
    metrics::label,
    quarantine::Record,
};

/// Turns quarantine state changes into findings.
#[derive(Debug, Default)]
pub struct QuarantineFeed {
    firing: BTreeMap<u64, Finding>,
    exported: Arc<Mutex<Vec<Subject>>>,
}

impl QuarantineFeed {
    /// `firing`: quarantine findings reported as firing before (the
    /// alerter's persisted set), so releases that happened while the agent
    /// was down are resolved now.
    pub fn new<'a>(firing: impl IntoIterator<Item = &'a Finding>) -> Self {
        Self {
            firing: firing
                .into_iter()
                .filter(|f| f.detector == Detector::Quarantine)
                .map(|f| (f.subject.cgroup_id, f.clone()))
                .collect(),
            exported: Arc::default(),
        }
    }

    /// Compares the quarantine records with what was firing: new ones fire,
    /// gone ones resolve, changed identity or counts update.
    pub fn update(
        &mut self,
        records: &[Record],
        rows: &[CgroupRow],
        now: SystemTime,
    ) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut seen = Vec::with_capacity(records.len());
        for r in records {
            seen.push(r.cgroup_id);
            let row = rows.iter().find(|x| x.cgroup_id == r.cgroup_id);
            let f = finding(r, row, self.firing.get(&r.cgroup_id));
            if self.firing.get(&r.cgroup_id) != Some(&f) {
                self.firing.insert(r.cgroup_id, f.clone());
                out.push(f);
            }
        }
        let gone: Vec<u64> = self
            .firing
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        for id in gone {
            let mut f = self.firing.remove(&id).expect("listed");
            f.state = FindingState::Resolved;
            f.ended_at = Some(now);
            f.window_end = now;
            f.summary = format!("{} released from quarantine", f.target());
            out.push(f);
        }
        *self.exported.lock().expect("lock") =
            self.firing.values().map(|f| f.subject.clone()).collect();
        out
    }

    /// The `tollgate_pod_quarantined` collector.
    pub fn collector(&self, node: String) -> QuarantinedCollector {
        QuarantinedCollector {
            subjects: self.exported.clone(),
            node,
        }
    }
}

fn finding(r: &Record, row: Option<&CgroupRow>, prev: Option<&Finding>) -> Finding {
    let since = UNIX_EPOCH + Duration::from_secs(r.since_unix);
    let path = (!r.path.starts_with('(')).then(|| r.path.clone());
    let subject = Subject {
        cgroup_id: r.cgroup_id,
        cgroup_path: row.and_then(|x| x.path.clone()).or(path),
        namespace: row.and_then(|x| x.namespace.clone()),
        pod: row.and_then(|x| x.pod.clone()),
        container: row.and_then(|x| x.container.clone()),
        class: row
            .and_then(|x| x.class.clone())
            .unwrap_or_else(|| "default".into()),
    };
    // Once known, the identity is kept (the row may vanish with the cgroup).
    let subject = match prev {
        Some(p) if row.is_none() => p.subject.clone(),
        _ => subject,
    };
    let count = |name: &str, v: u64| Evidence {
        name: name.into(),
        observed: v as f64,
        baseline: None,
        unit: "count".into(),
    };
    let ttl = r
        .expires_unix
        .map(|t| {
            format!(
                ", until {}",
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t))
            )
        })
        .unwrap_or_default();
    let mut f = Finding {
        detector: Detector::Quarantine,
        severity: Severity::High,
        score: 1.0,
        subject,
        summary: String::new(),
        evidence: vec![
            count("connects_denied", row.map_or(0, |x| x.connects_denied)),
            count(
                "quarantine_dropped_packets",
                row.map_or(0, |x| x.quarantine_dropped.packets),
            ),
            Evidence {
                name: "quarantine_dropped_bytes".into(),
                observed: row.map_or(0, |x| x.quarantine_dropped.bytes) as f64,
                baseline: None,
                unit: "bytes".into(),
            },
        ],
        destinations: Vec::new(),
        window_start: since,
        window_end: since,
        state: FindingState::Firing,
        started_at: since,
        ended_at: None,
    };
    let why = if r.reason.is_empty() {
        "no reason given"
    } else {
        &r.reason
    };
    f.summary = format!("{} quarantined by {}: {why}{ttl}", f.target(), r.by);
    f
}

/// `tollgate_pod_quarantined`.
#[derive(Debug)]
pub struct QuarantinedCollector {
    subjects: Arc<Mutex<Vec<Subject>>>,
    node: String,
}

impl Collector for QuarantinedCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let subjects = self.subjects.lock().expect("lock").clone();
        let mut fam = enc.encode_descriptor(
            "tollgate_pod_quarantined",
            "1 while the pod (cgroup) is quarantined: its packets are dropped and its connects refused",
            None,
            MetricType::Gauge,
        )?;
        // Same label set as the other per-pod series, so they join.
        let mut seen = std::collections::BTreeSet::new();
        for s in &subjects {
            let pod = s
                .pod
                .clone()
                .or_else(|| s.cgroup_path.clone())
                .unwrap_or_else(|| format!("cgroup:{}", s.cgroup_id));
            let labels = [
                ("namespace", label(s.namespace.as_deref().unwrap_or(""))),
                ("pod", label(&pod)),
                ("container", label(s.container.as_deref().unwrap_or(""))),
                ("class", label(&s.class)),
                ("node", label(&self.node)),
            ];
            if seen.insert(labels.clone()) {
                ConstGauge::new(1i64).encode(fam.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, path: &str) -> Record {
        Record {
            cgroup_id: id,
            path: path.into(),
            reason: "test".into(),
            by: "cli:root".into(),
            since_unix: 1_800_000_000,
            expires_unix: None,
            pod: None,
        }
    }

    #[test]
    fn quarantine_fires_updates_and_resolves() {
        let mut feed = QuarantineFeed::new([]);
        let now = SystemTime::now();
        let out = feed.update(&[rec(7, "/pods/a")], &[], now);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!(f.detector, Detector::Quarantine);
        assert_eq!(f.detector.alertname(), "TollgateQuarantined");
        assert_eq!(f.severity, Severity::High);
        assert_eq!(f.state, FindingState::Firing);
        assert_eq!(f.target(), "/pods/a");
        assert_eq!(f.summary, "/pods/a quarantined by cli:root: test");
        assert!(
            feed.update(&[rec(7, "/pods/a")], &[], now).is_empty(),
            "no change, no finding"
        );
        // The kernel counts what it stopped: an update.
        let row = CgroupRow {
            cgroup_id: 7,
            path: Some("/pods/a".into()),
            connects_denied: 3,
            ..CgroupRow::default()
        };
        let out = feed.update(&[rec(7, "/pods/a")], std::slice::from_ref(&row), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence[0].observed, 3.0);
        assert_eq!(out[0].state, FindingState::Firing);
        let out = feed.update(&[], &[], now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].state, FindingState::Resolved);
        assert_eq!(out[0].ended_at, Some(now));
        assert!(feed.update(&[], &[], now).is_empty());
    }

    #[test]
    fn releases_while_down_are_resolved_on_start() {
        let mut first = QuarantineFeed::new([]);
        let f = first
            .update(&[rec(9, "/x")], &[], SystemTime::now())
            .remove(0);
        let mut feed = QuarantineFeed::new([&f]);
        let out = feed.update(&[], &[], SystemTime::now());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].state, FindingState::Resolved);
        assert_eq!(out[0].subject.cgroup_id, 9);
    }

    #[test]
    fn exported_gauge_has_pod_labels() {
        let mut feed = QuarantineFeed::new([]);
        let row = CgroupRow {
            cgroup_id: 7,
            path: Some("/kubepods/p".into()),
            namespace: Some("ml".into()),
            pod: Some("trainer\"0".into()),
            class: Some("training".into()),
            ..CgroupRow::default()
        };
        feed.update(&[rec(7, "/kubepods/p")], &[row], SystemTime::now());
        let mut reg = prometheus_client::registry::Registry::default();
        reg.register_collector(Box::new(feed.collector("n1".into())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains(r#"tollgate_pod_quarantined{namespace="ml",pod="trainer\"0",container="",class="training",node="n1"} 1"#),
            "{text}"
        );
    }
}
