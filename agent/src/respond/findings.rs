//! Findings as metrics: `tollgate_findings_total{detector,severity}`
//! counts findings that started firing, `tollgate_findings_firing` those
//! firing now. Every (detector, severity) pair is exported from the start
//! (45 series), so "no findings" reads as 0, not as a missing series.

use std::collections::HashMap;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    detect::{Detector, Finding, FindingState, Severity},
    respond::Responder,
};

type Labels = Vec<(&'static str, &'static str)>;

fn labels(d: Detector, s: Severity) -> Labels {
    vec![("detector", d.as_str()), ("severity", s.as_str())]
}

/// The findings responder for metrics.
#[derive(Debug)]
pub struct FindingMetrics {
    total: Family<Labels, Counter>,
    firing: Family<Labels, Gauge>,
    /// Firing findings by key, with the severity they are counted under.
    current: HashMap<(Detector, u64), Severity>,
}

impl FindingMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let total = Family::<Labels, Counter>::default();
        let firing = Family::<Labels, Gauge>::default();
        for d in Detector::ALL {
            for s in Severity::ALL {
                let _ = total.get_or_create(&labels(d, s));
                let _ = firing.get_or_create(&labels(d, s));
            }
        }
        registry.register(
            "tollgate_findings",
            "Findings that started firing, by detector and severity",
            total.clone(),
        );
        registry.register(
            "tollgate_findings_firing",
            "Findings firing now, by detector and severity",
            firing.clone(),
        );
        Self {
            total,
            firing,
            current: HashMap::new(),
        }
    }
}

impl Responder for FindingMetrics {
    fn on_finding(&mut self, f: &Finding) {
        let key = f.key();
        let prev = self.current.get(&key).copied();
        match (f.state, prev) {
            (FindingState::Firing, None) => {
                self.total
                    .get_or_create(&labels(f.detector, f.severity))
                    .inc();
                self.firing
                    .get_or_create(&labels(f.detector, f.severity))
                    .inc();
                self.current.insert(key, f.severity);
            }
            (FindingState::Firing, Some(s)) if s != f.severity => {
                // Escalation: counted once more under the new severity.
                self.firing.get_or_create(&labels(f.detector, s)).dec();
                self.total
                    .get_or_create(&labels(f.detector, f.severity))
                    .inc();
                self.firing
                    .get_or_create(&labels(f.detector, f.severity))
                    .inc();
                self.current.insert(key, f.severity);
            }
            (FindingState::Firing, Some(_)) => {}
            (FindingState::Resolved, Some(s)) => {
                self.firing.get_or_create(&labels(f.detector, s)).dec();
                self.current.remove(&key);
            }
            (FindingState::Resolved, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::detect::Subject;

    fn f(id: u64, sev: Severity, state: FindingState) -> Finding {
        Finding {
            detector: Detector::MiningStratum,
            severity: sev,
            score: 1.0,
            subject: Subject {
                cgroup_id: id,
                ..Subject::default()
            },
            summary: String::new(),
            evidence: vec![],
            destinations: vec![],
            window_start: SystemTime::UNIX_EPOCH,
            window_end: SystemTime::UNIX_EPOCH,
            state,
            started_at: SystemTime::UNIX_EPOCH,
            ended_at: None,
        }
    }

    #[test]
    fn counts_starts_not_updates() {
        let mut reg = Registry::default();
        let mut m = FindingMetrics::register(&mut reg);
        use FindingState::*;
        for x in [
            f(1, Severity::High, Firing),
            f(1, Severity::High, Firing),
            f(2, Severity::High, Firing),
            f(1, Severity::Critical, Firing),
            f(2, Severity::High, Resolved),
            f(3, Severity::Low, Resolved),
        ] {
            m.on_finding(&x);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let get = |name: &str, sev: &str| -> String {
            let pre = format!("{name}{{detector=\"mining.stratum\",severity=\"{sev}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&pre))
                .unwrap_or_else(|| panic!("{pre} missing in {text}"))
                .to_owned()
        };
        assert_eq!(get("tollgate_findings_total", "high"), "2");
        assert_eq!(get("tollgate_findings_total", "critical"), "1");
        assert_eq!(get("tollgate_findings_firing", "high"), "0");
        assert_eq!(get("tollgate_findings_firing", "critical"), "1");
        assert_eq!(get("tollgate_findings_total", "low"), "0");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("tollgate_findings_total{"))
                .count(),
            45
        );
    }
}
