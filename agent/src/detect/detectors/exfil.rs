//! The exfiltration detectors.

use std::collections::BTreeMap;

use super::{Candidate, Ctx, mib, top};
use crate::{
    baseline::{Feature, dests},
    detect::{Detector, Evidence, Severity},
};

/// exfil.volume: external egress far above the class's high quantile.
pub fn volume(c: &Ctx<'_>) -> Option<Candidate> {
    let rate = c.s.features.egress_external_bytes as f64 / c.secs();
    let q = c.q(Feature::EgressExternalBytes);
    let threshold = (q * c.cfg.volume_factor).max(c.cfg.volume_min_bytes_per_s);
    if rate <= threshold {
        return None;
    }
    let score = rate / q.max(1.0);
    Some(Candidate {
        detector: Detector::ExfilVolume,
        severity: if rate > 4.0 * threshold {
            Severity::High
        } else {
            Severity::Medium
        },
        score,
        summary: format!(
            "sent {}/s to external destinations, {:.0}x the class's p{:.0} ({}/s)",
            mib(rate),
            score,
            c.cfg.quantile * 100.0,
            mib(q)
        ),
        evidence: c.with_likelihood(vec![c.ev(Feature::EgressExternalBytes, rate, Some(q))]),
        destinations: top(c.s, |p| p.tx_bytes > 0),
    })
}

/// exfil.new_destination: substantial bytes to prefixes the class never used.
pub fn new_destination(c: &Ctx<'_>) -> Option<Candidate> {
    let class = c.base.class(c.class())?;
    let mut window: BTreeMap<String, u64> = BTreeMap::new();
    for p in c.s.peers.iter().filter(|p| p.external && p.tx_bytes > 0) {
        *window.entry(dests::prefix(p.addr)).or_default() += p.tx_bytes;
    }
    let mut hits: Vec<(String, u64)> = window
        .keys()
        .filter(|p| !class.dests.is_known(p))
        .map(|p| (p.clone(), c.horizon_bytes.get(p).copied().unwrap_or(0)))
        .filter(|(_, b)| *b >= c.cfg.new_destination_min_bytes)
        .collect();
    if hits.is_empty() {
        return None;
    }
    hits.sort_by_key(|h| std::cmp::Reverse(h.1));
    let total: u64 = hits.iter().map(|h| h.1).sum();
    let score = total as f64 / c.cfg.new_destination_min_bytes.max(1) as f64;
    let evidence = hits
        .iter()
        .take(3)
        .map(|(p, b)| Evidence {
            name: format!("bytes_to_new_prefix {p}"),
            observed: *b as f64,
            baseline: Some(0.0),
            unit: "bytes".into(),
        })
        .collect();
    let prefixes: Vec<&String> = hits.iter().map(|h| &h.0).collect();
    Some(Candidate {
        detector: Detector::ExfilNewDestination,
        severity: if score >= 8.0 {
            Severity::High
        } else {
            Severity::Medium
        },
        score,
        summary: format!(
            "sent {} to {} prefix(es) the class never used ({})",
            mib(total as f64),
            hits.len(),
            prefixes
                .iter()
                .take(3)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        evidence: c.with_likelihood(evidence),
        destinations: top(c.s, |p| prefixes.contains(&&dests::prefix(p.addr))),
    })
}

/// exfil.slow_drip: cumulative bytes per (pod, prefix) over the drip
/// horizon above what the class ever sent there. Only prefixes the pod
/// sends to in this window count, so the finding resolves when it stops.
pub fn slow_drip(c: &Ctx<'_>) -> Option<Candidate> {
    let class = c.base.class(c.class())?;
    let pod = c.s.subject.cgroup_id;
    let active: Vec<String> =
        c.s.peers
            .iter()
            .filter(|p| p.external && p.tx_bytes > 0)
            .map(|p| dests::prefix(p.addr))
            .collect();
    let mut hits: Vec<(String, u64, u64)> = Vec::new();
    for (p, cum) in c.horizon_bytes {
        if !active.contains(p) {
            continue;
        }
        let ever = class
            .dests
            .get(p)
            .map(|s| s.horizon_bytes.for_pod(pod))
            .unwrap_or(0);
        let threshold = ((ever as f64 * c.cfg.drip_factor) as u64).max(c.cfg.drip_min_bytes);
        if *cum > threshold {
            hits.push((p.clone(), *cum, ever));
        }
    }
    let (p, cum, ever) = hits.into_iter().max_by_key(|h| h.1)?;
    let score = cum as f64 / (ever.max(1) as f64);
    Some(Candidate {
        detector: Detector::ExfilSlowDrip,
        severity: if ever == 0 {
            Severity::High
        } else {
            Severity::Medium
        },
        score,
        summary: format!(
            "sent {} to {p} over the last {}, the class never sent more than {} there",
            mib(cum as f64),
            humantime::format_duration(c.cfg.drip_horizon),
            mib(ever as f64)
        ),
        evidence: vec![Evidence {
            name: format!("horizon_bytes {p}"),
            observed: cum as f64,
            baseline: Some(ever as f64),
            unit: "bytes".into(),
        }],
        destinations: top(c.s, |peer| dests::prefix(peer.addr) == p),
    })
}

/// exfil.storage: shared-storage writes far above the class, or
/// read-then-send (bytes read from storage about equal to bytes sent out,
/// while external egress is above the class quantile).
pub fn storage(c: &Ctx<'_>) -> Option<Candidate> {
    let f = &c.s.features;
    let secs = c.secs();
    let w = f.storage_write_bytes as f64 / secs;
    let qw = c.q(Feature::StorageWriteBytes);
    let w_threshold = (qw * c.cfg.storage_factor).max(c.cfg.storage_min_bytes_per_s);
    let writes = w > w_threshold;
    // Reads beyond what the class usually reads (its median): a training
    // pod that also uploads the dataset reads for both.
    let read_median = c
        .base
        .quantile_at(c.class(), Feature::StorageReadBytes, 0.5)
        .unwrap_or(0.0);
    let extra_read = (f.storage_read_bytes as f64 - read_median * secs).max(0.0);
    let ratio = f.egress_external_bytes as f64 / extra_read.max(1.0);
    let out_rate = f.egress_external_bytes as f64 / secs;
    let qout = c.q(Feature::EgressExternalBytes);
    let read_send = extra_read >= c.cfg.read_send_min_bytes as f64
        && (c.cfg.read_send_min_ratio..=c.cfg.read_send_max_ratio).contains(&ratio)
        && out_rate > qout;
    if !writes && !read_send {
        return None;
    }
    let mut evidence = Vec::new();
    let mut parts = Vec::new();
    if writes {
        evidence.push(c.ev(Feature::StorageWriteBytes, w, Some(qw)));
        parts.push(format!(
            "wrote {}/s to shared storage, class p{:.0} {}/s",
            mib(w),
            c.cfg.quantile * 100.0,
            mib(qw)
        ));
    }
    if read_send {
        evidence.push(c.ev(
            Feature::StorageReadBytes,
            f.storage_read_bytes as f64 / secs,
            Some(read_median),
        ));
        evidence.push(c.ev(Feature::EgressExternalBytes, out_rate, Some(qout)));
        evidence.push(Evidence {
            name: "external_out_per_storage_read".into(),
            observed: ratio,
            baseline: None,
            unit: "ratio".into(),
        });
        parts.push(format!(
            "read {} from storage beyond the class median and sent {:.2}x that out",
            mib(extra_read),
            ratio
        ));
    }
    Some(Candidate {
        detector: Detector::ExfilStorage,
        severity: if read_send || w > 4.0 * w_threshold {
            Severity::High
        } else {
            Severity::Medium
        },
        score: if writes { w / qw.max(1.0) } else { ratio },
        summary: parts.join("; "),
        evidence: c.with_likelihood(evidence),
        destinations: if read_send {
            top(c.s, |p| p.tx_bytes > 0)
        } else {
            Vec::new()
        },
    })
}

/// exfil.dns_tunnel: query rate, name length and label entropy together.
pub fn dns_tunnel(c: &Ctx<'_>) -> Option<Candidate> {
    let f = &c.s.features;
    let qps = f.dns_queries as f64 / c.secs();
    let q_rate = c.q(Feature::DnsQueries);
    let rate_threshold = (q_rate * c.cfg.dns_factor).max(c.cfg.dns_min_queries_per_s);
    let q_len = c.q(Feature::DnsMeanNameLen);
    let len_threshold = q_len.max(c.cfg.dns_min_name_len);
    if qps <= rate_threshold
        || f.dns_mean_name_len <= len_threshold
        || f.dns_label_entropy < c.cfg.dns_min_entropy
    {
        return None;
    }
    Some(Candidate {
        detector: Detector::ExfilDnsTunnel,
        severity: Severity::High,
        score: qps / rate_threshold * (f.dns_mean_name_len / len_threshold),
        summary: format!(
            "{qps:.1} DNS queries/s with names of {:.0} bytes and {:.2} bits/char label entropy (class p{:.0}: {q_rate:.1}/s, {q_len:.0} bytes)",
            f.dns_mean_name_len,
            f.dns_label_entropy,
            c.cfg.quantile * 100.0
        ),
        evidence: vec![
            c.ev(Feature::DnsQueries, qps, Some(q_rate)),
            c.ev(Feature::DnsMeanNameLen, f.dns_mean_name_len, Some(q_len)),
            c.ev(
                Feature::DnsLabelEntropy,
                f.dns_label_entropy,
                Some(c.q(Feature::DnsLabelEntropy)),
            ),
        ],
        destinations: top(c.s, |p| p.port == 53),
    })
}
