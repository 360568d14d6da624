//! The one type every responder consumes: a finding about one pod.

use std::{fmt, time::SystemTime};

use serde::{Deserialize, Serialize};

/// Ordered: `a >= Severity::High` means "high or worse".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!("unknown severity {s:?}: use info, low, medium, high or critical")
            })
    }
}

/// Every detector Tollgate has. The string form (`exfil.volume`) is what
/// logs, metrics labels and alerts carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Detector {
    #[serde(rename = "exfil.volume")]
    ExfilVolume,
    #[serde(rename = "exfil.new_destination")]
    ExfilNewDestination,
    #[serde(rename = "exfil.slow_drip")]
    ExfilSlowDrip,
    #[serde(rename = "exfil.storage")]
    ExfilStorage,
    #[serde(rename = "exfil.dns_tunnel")]
    ExfilDnsTunnel,
    #[serde(rename = "mining.stratum")]
    MiningStratum,
    #[serde(rename = "mining.profile")]
    MiningProfile,
    #[serde(rename = "mining.pool_port")]
    MiningPoolPort,
    /// Not a detector of behaviour: a pod was quarantined (by an operator
    /// or automatically). Alerts use it for TollgateQuarantined.
    #[serde(rename = "response.quarantine")]
    Quarantine,
}

impl Detector {
    pub const ALL: [Detector; 9] = [
        Detector::ExfilVolume,
        Detector::ExfilNewDestination,
        Detector::ExfilSlowDrip,
        Detector::ExfilStorage,
        Detector::ExfilDnsTunnel,
        Detector::MiningStratum,
        Detector::MiningProfile,
        Detector::MiningPoolPort,
        Detector::Quarantine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Detector::ExfilVolume => "exfil.volume",
            Detector::ExfilNewDestination => "exfil.new_destination",
            Detector::ExfilSlowDrip => "exfil.slow_drip",
            Detector::ExfilStorage => "exfil.storage",
            Detector::ExfilDnsTunnel => "exfil.dns_tunnel",
            Detector::MiningStratum => "mining.stratum",
            Detector::MiningProfile => "mining.profile",
            Detector::MiningPoolPort => "mining.pool_port",
            Detector::Quarantine => "response.quarantine",
        }
    }

    /// The Alertmanager `alertname` of this detector's findings.
    pub fn alertname(self) -> &'static str {
        match self {
            Detector::ExfilVolume
            | Detector::ExfilNewDestination
            | Detector::ExfilSlowDrip
            | Detector::ExfilStorage
            | Detector::ExfilDnsTunnel => "TollgateExfiltration",
            Detector::MiningStratum | Detector::MiningProfile | Detector::MiningPoolPort => {
                "TollgateCryptomining"
            }
            Detector::Quarantine => "TollgateQuarantined",
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Detector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Detector::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown detector {s:?}"))
    }
}

/// Who a finding is about. Standalone hosts fill namespace/pod from the
/// cgroup path (slice/unit), as the inventory does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subject {
    pub cgroup_id: u64,
    /// Path relative to the cgroup v2 mount.
    pub cgroup_path: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub class: String,
}

/// One number behind a finding, next to what the class normally does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Feature name, e.g. `egress_external_bytes`.
    pub name: String,
    pub observed: f64,
    /// The class baseline it was compared with (e.g. its p99), if any.
    pub baseline: Option<f64>,
    /// Unit of both numbers: "bytes", "count", "seconds", "bits", ...
    pub unit: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingState {
    Firing,
    Resolved,
}

/// A detector's verdict about one pod. One finding per (detector,
/// subject) is firing at a time; updates keep `started_at`, a resolution
/// sets `state = Resolved` and `ended_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub detector: Detector,
    pub severity: Severity,
    /// Detector-specific strength, comparable within one detector (for
    /// example observed / baseline quantile).
    pub score: f64,
    pub subject: Subject,
    /// One line for humans.
    pub summary: String,
    pub evidence: Vec<Evidence>,
    /// Largest destinations involved, "addr:port/proto", largest first.
    pub destinations: Vec<String>,
    /// The window the evidence comes from.
    #[serde(with = "humantime_serde")]
    pub window_start: SystemTime,
    #[serde(with = "humantime_serde")]
    pub window_end: SystemTime,
    pub state: FindingState,
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    #[serde(default, with = "humantime_serde")]
    pub ended_at: Option<SystemTime>,
}

impl Finding {
    /// Deduplication key: detector and cgroup. Stable across restarts
    /// (cgroup ids are not reused while the cgroup exists).
    pub fn key(&self) -> (Detector, u64) {
        (self.detector, self.subject.cgroup_id)
    }

    /// `namespace/pod`, or the cgroup path on a plain host.
    pub fn target(&self) -> String {
        match (&self.subject.namespace, &self.subject.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => self
                .subject
                .cgroup_path
                .clone()
                .unwrap_or_else(|| format!("cgroup:{}", self.subject.cgroup_id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Detector::ALL {
            assert_eq!(d.as_str().parse::<Detector>(), Ok(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", d.as_str()));
        }
        for s in Severity::ALL {
            assert_eq!(s.as_str().parse::<Severity>(), Ok(s));
        }
        assert!(Severity::Critical > Severity::High);
    }
}
