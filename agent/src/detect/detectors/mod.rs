//! The eight detectors, as pure functions of one window, its class
//! baseline and a little per-pod state the engine keeps. Each returns a
//! [`Candidate`] when it fires; the engine turns candidates into findings
//! with a lifecycle.

use std::collections::BTreeMap;

mod exfil;
mod mining;

pub use exfil::{dns_tunnel, new_destination, slow_drip, storage, volume};
pub use mining::{pool_port, profile, stratum};

use super::{DetectConfig, Detector, Evidence, Severity};
use crate::{
    baseline::{Baselines, Feature, features},
    collect::{PeerWindow, WindowSample},
};

/// What a detector says about one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub detector: Detector,
    pub severity: Severity,
    pub score: f64,
    pub summary: String,
    pub evidence: Vec<Evidence>,
    pub destinations: Vec<String>,
}

/// Everything a detector may look at.
pub struct Ctx<'a> {
    pub cfg: &'a DetectConfig,
    pub base: &'a Baselines,
    /// Annotated by the baselines (new_class_destinations filled).
    pub s: &'a WindowSample,
    /// The class finished learning: baseline detectors may fire.
    pub learned: bool,
    /// The pod's bytes per external prefix over the drip horizon.
    pub horizon_bytes: &'a BTreeMap<String, u64>,
    /// Consecutive windows (this one included) at or above
    /// `profile_cpu_fraction`.
    pub cpu_streak: u32,
    /// mining.profile or mining.stratum is firing for the pod.
    pub mining_firing: bool,
}

impl Ctx<'_> {
    pub(crate) fn secs(&self) -> f64 {
        features::window_secs(self.s)
    }

    pub(crate) fn class(&self) -> &str {
        &self.s.subject.class
    }

    pub(crate) fn q(&self, f: Feature) -> f64 {
        self.base.quantile(self.class(), f).unwrap_or(0.0)
    }

    pub(crate) fn ev(&self, f: Feature, observed: f64, baseline: Option<f64>) -> Evidence {
        Evidence {
            name: f.name().into(),
            observed,
            baseline,
            unit: f.unit().into(),
        }
    }

    /// The mixture's verdict, as evidence, when there is one.
    fn likelihood_evidence(&self) -> Option<Evidence> {
        let (ll, threshold) = self.base.likelihood(self.s)?;
        Some(Evidence {
            name: "log_likelihood".into(),
            observed: ll,
            baseline: Some(threshold),
            unit: "nats".into(),
        })
    }

    pub(crate) fn with_likelihood(&self, mut ev: Vec<Evidence>) -> Vec<Evidence> {
        ev.extend(self.likelihood_evidence());
        ev
    }
}

/// `addr:port/proto` (`[v6]:port/proto`).
pub fn peer_name(p: &PeerWindow) -> String {
    match p.addr {
        std::net::IpAddr::V4(a) => format!("{a}:{}/{}", p.port, p.proto),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}/{}", p.port, p.proto),
    }
}

/// The largest external destinations matching `keep`, largest tx first.
pub(crate) fn top(s: &WindowSample, keep: impl Fn(&PeerWindow) -> bool) -> Vec<String> {
    let mut v: Vec<&PeerWindow> = s.peers.iter().filter(|p| p.external && keep(p)).collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.tx_bytes));
    v.into_iter().take(5).map(peer_name).collect()
}

pub(crate) fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1_048_576.0)
}

/// Runs every window detector.
pub fn evaluate(c: &Ctx<'_>) -> Vec<Candidate> {
    let mut out = Vec::new();
    out.extend(stratum(c));
    out.extend(pool_port(c));
    if c.learned {
        out.extend(volume(c));
        out.extend(new_destination(c));
        out.extend(slow_drip(c));
        out.extend(storage(c));
        out.extend(dns_tunnel(c));
        out.extend(profile(c));
    }
    out
}
