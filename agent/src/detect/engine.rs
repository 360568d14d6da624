//! The detection engine: window samples in, findings out, with a
//! lifecycle. One finding per (detector, cgroup) fires at a time; it is
//! updated while the detector keeps firing (emitted again when its
//! severity changes) and resolved after `detect.resolve_after` quiet
//! windows. Baselines train on a pod's window only while none of the
//! pod's findings fire, so an attack does not become the norm. Time comes
//! from the samples (and from the caller for stratum hits), never from the
//! clock.

use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use serde::Serialize;

use super::{
    DetectConfig, Detector, Evidence, Finding, FindingState, Severity, Subject,
    detectors::{self, Candidate, Ctx},
    drip::Drip,
};
use crate::{
    baseline::{Baselines, features},
    collect::{StratumHit, WindowSample},
};

/// Detectors evaluated on every window (all but response.quarantine).
const WINDOW_DETECTORS: [Detector; 8] = [
    Detector::ExfilVolume,
    Detector::ExfilNewDestination,
    Detector::ExfilSlowDrip,
    Detector::ExfilStorage,
    Detector::ExfilDnsTunnel,
    Detector::MiningStratum,
    Detector::MiningProfile,
    Detector::MiningPoolPort,
];

#[derive(Debug, Clone)]
struct Active {
    finding: Finding,
    quiet: u32,
}

/// Counters of what the engine did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct EngineStats {
    pub windows: u64,
    /// Windows the baselines trained on.
    pub trained: u64,
    /// Windows not trained on because a medium-or-worse finding of the
    /// pod was firing.
    pub not_trained: u64,
    pub fired: u64,
    pub resolved: u64,
    pub stratum_hits: u64,
}

pub struct Engine {
    cfg: DetectConfig,
    baselines: Baselines,
    active: BTreeMap<(Detector, u64), Active>,
    drip: Drip,
    cpu_streak: HashMap<u64, u32>,
    last_seen: HashMap<u64, SystemTime>,
    last_stratum: HashMap<u64, SystemTime>,
    pub stats: EngineStats,
}

/// One structured event per lifecycle step.
fn log(f: &Finding, step: &str) {
    let dest = f.destinations.first().map(String::as_str).unwrap_or("");
    match f.state {
        FindingState::Firing => tracing::warn!(
            detector = %f.detector,
            severity = %f.severity,
            score = f.score,
            target = %f.target(),
            class = %f.subject.class,
            cgroup_id = f.subject.cgroup_id,
            destination = dest,
            step,
            summary = %f.summary,
            "finding"
        ),
        FindingState::Resolved => tracing::info!(
            detector = %f.detector,
            severity = %f.severity,
            target = %f.target(),
            class = %f.subject.class,
            cgroup_id = f.subject.cgroup_id,
            step,
            "finding"
        ),
    }
}

impl Engine {
    pub fn new(cfg: &DetectConfig, baselines: Baselines) -> Engine {
        Engine {
            cfg: cfg.clone(),
            baselines,
            active: BTreeMap::new(),
            drip: Drip::new(cfg.drip_horizon),
            cpu_streak: HashMap::new(),
            last_seen: HashMap::new(),
            last_stratum: HashMap::new(),
            stats: EngineStats::default(),
        }
    }

    pub fn baselines(&self) -> &Baselines {
        &self.baselines
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    /// Findings firing now.
    pub fn firing(&self) -> impl Iterator<Item = &Finding> {
        self.active.values().map(|a| &a.finding)
    }

    fn is_firing(&self, d: Detector, id: u64) -> bool {
        self.active.contains_key(&(d, id))
    }

    /// One window of one pod: new, updated and resolved findings.
    pub fn observe(&mut self, sample: &WindowSample) -> Vec<Finding> {
        self.stats.windows += 1;
        let mut s = sample.clone();
        self.baselines.annotate(&mut s);
        let id = s.subject.cgroup_id;
        self.drip.add(&s);
        let horizon_bytes = self.drip.cumulative(id, s.end);
        self.last_seen.insert(id, s.end);
        let cpu = features::cpu_fraction(&s, self.cfg.profile_unlimited_cores);
        let streak = self.cpu_streak.entry(id).or_default();
        *streak = if cpu >= self.cfg.profile_cpu_fraction {
            *streak + 1
        } else {
            0
        };
        let cpu_streak = *streak;
        let mut cands = detectors::evaluate(&Ctx {
            cfg: &self.cfg,
            base: &self.baselines,
            s: &s,
            learned: self.baselines.learned(&s.subject.class),
            horizon_bytes: &horizon_bytes,
            cpu_streak,
            mining_firing: self.is_firing(Detector::MiningProfile, id)
                || self.is_firing(Detector::MiningStratum, id),
        });
        // The kernel matches stratum only at the start of a stream, so a
        // stratum finding stays alive while the pod talks to the pool it
        // named, or got a per-tick hit during this window.
        if !cands.iter().any(|c| c.detector == Detector::MiningStratum)
            && let Some(a) = self.active.get(&(Detector::MiningStratum, id))
            && (self.last_stratum.get(&id).is_some_and(|t| *t >= s.start)
                || s.peers.iter().any(|p| {
                    p.tx_bytes + p.rx_bytes > 0
                        && a.finding.destinations.contains(&detectors::peer_name(p))
                }))
        {
            let f = &a.finding;
            cands.push(Candidate {
                detector: f.detector,
                severity: f.severity,
                score: f.score,
                summary: f.summary.clone(),
                evidence: f.evidence.clone(),
                destinations: f.destinations.clone(),
            });
        }
        let mut out = Vec::new();
        for d in WINDOW_DETECTORS {
            let cand = cands.iter().find(|c| c.detector == d);
            out.extend(self.step(d, &s, cand));
        }
        // An attack must not become the norm: no training on a pod with a
        // finding of medium or worse. A low finding alone (a pool port a
        // workload legitimately uses) does not stop its class learning.
        if self
            .active
            .iter()
            .any(|((_, c), a)| *c == id && a.finding.severity >= Severity::Medium)
        {
            self.stats.not_trained += 1;
        } else {
            self.baselines.train(&s, &horizon_bytes);
            self.stats.trained += 1;
        }
        out
    }

    /// Lifecycle of one (detector, pod) for one window.
    fn step(&mut self, d: Detector, s: &WindowSample, cand: Option<&Candidate>) -> Option<Finding> {
        let key = (d, s.subject.cgroup_id);
        match (cand, self.active.get_mut(&key)) {
            (Some(c), None) => {
                let f = Finding {
                    detector: d,
                    severity: c.severity,
                    score: c.score,
                    subject: s.subject.clone(),
                    summary: c.summary.clone(),
                    evidence: c.evidence.clone(),
                    destinations: c.destinations.clone(),
                    window_start: s.start,
                    window_end: s.end,
                    state: FindingState::Firing,
                    started_at: s.end,
                    ended_at: None,
                };
                self.stats.fired += 1;
                log(&f, "firing");
                self.active.insert(
                    key,
                    Active {
                        finding: f.clone(),
                        quiet: 0,
                    },
                );
                Some(f)
            }
            (Some(c), Some(a)) => {
                a.quiet = 0;
                let changed = a.finding.severity != c.severity;
                let f = &mut a.finding;
                f.severity = c.severity;
                f.score = c.score;
                f.summary = c.summary.clone();
                f.evidence = c.evidence.clone();
                f.destinations = c.destinations.clone();
                f.subject = s.subject.clone();
                f.window_start = s.start;
                f.window_end = s.end;
                if changed {
                    log(f, "updated");
                    return Some(f.clone());
                }
                None
            }
            (None, Some(a)) => {
                a.quiet += 1;
                if a.quiet < self.cfg.resolve_after {
                    return None;
                }
                let mut f = self.active.remove(&key).expect("present").finding;
                f.state = FindingState::Resolved;
                f.ended_at = Some(s.end);
                self.stats.resolved += 1;
                log(&f, "resolved");
                Some(f)
            }
            (None, None) => None,
        }
    }

    /// A stratum marker seen by the kernel (delivered every tick, not at
    /// window end): critical at once, no learning needed. Returns the new
    /// finding, or None when one is already firing for the pod.
    pub fn stratum(
        &mut self,
        subject: &Subject,
        hit: &StratumHit,
        at: SystemTime,
    ) -> Option<Finding> {
        self.stats.stratum_hits += 1;
        self.last_stratum.insert(subject.cgroup_id, at);
        let key = (Detector::MiningStratum, subject.cgroup_id);
        let dest = if hit.addr.contains(':') {
            format!("[{}]:{}/tcp", hit.addr, hit.port)
        } else {
            format!("{}:{}/tcp", hit.addr, hit.port)
        };
        if let Some(a) = self.active.get_mut(&key) {
            a.quiet = 0;
            if !a.finding.destinations.contains(&dest) {
                a.finding.destinations.push(dest);
            }
            return None;
        }
        let f = Finding {
            detector: Detector::MiningStratum,
            severity: Severity::Critical,
            score: 1.0,
            subject: subject.clone(),
            summary: format!("stratum {:?} sent to {dest}", hit.marker),
            evidence: vec![Evidence {
                name: format!("stratum_marker {}", hit.marker),
                observed: 1.0,
                baseline: Some(0.0),
                unit: "count".into(),
            }],
            destinations: vec![dest],
            window_start: at,
            window_end: at,
            state: FindingState::Firing,
            started_at: at,
            ended_at: None,
        };
        self.stats.fired += 1;
        log(&f, "firing");
        self.active.insert(
            key,
            Active {
                finding: f.clone(),
                quiet: 0,
            },
        );
        Some(f)
    }

    /// Resolves the findings of pods without a window for
    /// `resolve_after + 1` windows (their cgroup is gone) and forgets
    /// their per-pod state. Call once per closed window with its end.
    pub fn sweep(&mut self, now: SystemTime) -> Vec<Finding> {
        let stale = self.cfg.window * (self.cfg.resolve_after + 1);
        let gone = |t: Option<&SystemTime>| {
            t.is_none_or(|t| now.duration_since(*t).is_ok_and(|d| d >= stale))
        };
        let keys: Vec<(Detector, u64)> = self
            .active
            .keys()
            .filter(|(_, id)| gone(self.last_seen.get(id).or(self.last_stratum.get(id))))
            .copied()
            .collect();
        let mut out = Vec::new();
        for k in keys {
            let mut f = self.active.remove(&k).expect("key from map").finding;
            f.state = FindingState::Resolved;
            f.ended_at = Some(now);
            self.stats.resolved += 1;
            log(&f, "resolved (pod gone)");
            out.push(f);
        }
        self.last_seen.retain(|_, t| !gone(Some(t)));
        let seen = &self.last_seen;
        self.cpu_streak.retain(|id, _| seen.contains_key(id));
        self.last_stratum
            .retain(|_, t| now.duration_since(*t).map_or(true, |d| d < stale));
        self.drip.sweep(now);
        out
    }
}
