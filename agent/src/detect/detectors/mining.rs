//! The cryptomining detectors.

use super::{Candidate, Ctx, peer_name, top};
use crate::{
    baseline::{Feature, features},
    collect::PeerWindow,
    detect::{Detector, Evidence, Severity},
};

/// mining.stratum from the window's kernel counter (the per-tick path is
/// [`super::Engine::stratum`]): critical, no learning needed.
pub fn stratum(c: &Ctx<'_>) -> Option<Candidate> {
    let n = c.s.features.stratum_markers;
    (n > 0).then(|| Candidate {
        detector: Detector::MiningStratum,
        severity: Severity::Critical,
        score: n as f64,
        summary: format!(
            "{n} stratum mining protocol message(s) at the start of outbound TCP streams"
        ),
        evidence: vec![Evidence {
            name: "stratum_markers".into(),
            observed: n as f64,
            baseline: Some(0.0),
            unit: "count".into(),
        }],
        destinations: top(c.s, |p| p.proto == "tcp"),
    })
}

/// mining.profile: sustained CPU near the limit with few long-lived,
/// low-volume external connections, unlike the class.
pub fn profile(c: &Ctx<'_>) -> Option<Candidate> {
    let cfg = c.cfg;
    let s = c.s;
    let cpu = features::cpu_fraction(s, cfg.profile_unlimited_cores);
    if c.cpu_streak < cfg.profile_windows || cpu < cfg.profile_cpu_fraction {
        return None;
    }
    let ext: Vec<&PeerWindow> = s.peers.iter().filter(|p| p.external).collect();
    let rate = s.features.egress_external_bytes as f64 / c.secs();
    let long_lived = ext.iter().any(|p| {
        p.first_seen
            .and_then(|t| s.end.duration_since(t).ok())
            .is_some_and(|age| age >= cfg.profile_min_conn_age)
    });
    if ext.is_empty()
        || ext.len() as u64 > cfg.profile_max_peers
        || rate > cfg.profile_max_bytes_per_s
        || !long_lived
    {
        return None;
    }
    let class_cpu = c.q(Feature::CpuFraction);
    // Busy means the class's typical pod is CPU-bound: its median, not its
    // high quantile, which the miner itself lifts within a few windows
    // (its windows train the class until it is flagged; live eval missed
    // the TLS miner that way).
    let class_busy = c
        .base
        .quantile_at(c.class(), Feature::CpuFraction, 0.5)
        .is_some_and(|m| m >= 0.75 * cfg.profile_cpu_fraction);
    // In a class that is CPU-bound anyway, only an unlikely window can say
    // "miner". But the unlikeness must not come from sending more than the
    // class: a miner sends little, and a busy training pod that leaks a
    // few KB/s on top of its usual traffic is exfil.slow_drip's case, not
    // mining (replay once named such a drip mining.profile). The class's
    // median, not its high quantile: the drip pod is one of the class's
    // pods and keeps training it until it is flagged, which lifts the high
    // quantiles but not the median.
    let class_out = c
        .base
        .quantile_at(c.class(), Feature::EgressExternalBytes, 0.5)
        .unwrap_or(0.0);
    let unlike = c.base.likelihood(s).is_some_and(|(ll, t)| ll < t) && rate <= 2.0 * class_out;
    if class_busy && !unlike {
        return None;
    }
    Some(Candidate {
        detector: Detector::MiningProfile,
        severity: Severity::High,
        score: cpu,
        summary: format!(
            "CPU at {:.0}% of its limit for {} windows with {} long-lived low-volume external connection(s) ({:.0} bytes/s); the class's p{:.0} is {:.0}%",
            cpu * 100.0,
            c.cpu_streak,
            ext.len(),
            rate,
            cfg.quantile * 100.0,
            class_cpu * 100.0
        ),
        evidence: c.with_likelihood(vec![
            c.ev(Feature::CpuFraction, cpu, Some(class_cpu)),
            c.ev(
                Feature::EgressExternalBytes,
                rate,
                Some(c.q(Feature::EgressExternalBytes)),
            ),
            c.ev(
                Feature::DistinctDestinations,
                s.features.distinct_destinations as f64,
                Some(c.q(Feature::DistinctDestinations)),
            ),
        ]),
        destinations: top(s, |_| true),
    })
}

/// mining.pool_port: traffic with well-known pool ports; low severity
/// alone, medium with another mining finding for the pod.
pub fn pool_port(c: &Ctx<'_>) -> Option<Candidate> {
    let hits: Vec<&PeerWindow> = c
        .s
        .peers
        .iter()
        .filter(|p| p.external && c.cfg.pool_ports.contains(&p.port) && p.tx_bytes + p.rx_bytes > 0)
        .collect();
    if hits.is_empty() {
        return None;
    }
    let names: Vec<String> = hits.iter().map(|p| peer_name(p)).collect();
    Some(Candidate {
        detector: Detector::MiningPoolPort,
        severity: if c.mining_firing {
            Severity::Medium
        } else {
            Severity::Low
        },
        score: hits.len() as f64,
        summary: format!(
            "traffic with well-known mining pool port(s): {}",
            names.join(", ")
        ),
        evidence: vec![Evidence {
            name: "pool_port_peers".into(),
            observed: hits.len() as f64,
            baseline: None,
            unit: "count".into(),
        }],
        destinations: names,
    })
}
