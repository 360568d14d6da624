//! Detectors on synthetic recorded windows: each fires on its attack and
//! names the attacked pod; benign windows of all four classes stay silent.

use std::time::Duration;

use super::{
    DetectConfig, Detector, Engine, Finding, FindingState, Severity, Subject, replay,
    synth::{self, Attack, AttackKind, Spec},
};
use crate::{baseline::Baselines, collect::StratumHit};

fn cfg() -> DetectConfig {
    DetectConfig::default()
}

fn run(spec: &Spec) -> (Engine, Vec<Finding>, replay::ReplaySummary) {
    let mut engine = Engine::new(&cfg(), Baselines::new(&cfg()));
    let mut out = Vec::new();
    let summary = replay::run(&mut engine, synth::generate(spec), |f| out.push(f.clone()));
    (engine, out, summary)
}

fn attack(kind: AttackKind, at_min: u64, minutes: u64, hours: u64) -> Spec {
    Spec {
        duration: Duration::from_secs(hours * 3600),
        attacks: vec![Attack {
            kind,
            class: kind.default_class().into(),
            at: Duration::from_secs(at_min * 60),
            duration: Duration::from_secs(minutes * 60),
        }],
        ..Spec::default()
    }
}

/// The attack fired `d` on the attacked pod, and nothing fired on any other
/// pod. Returns the first firing finding of `d`.
fn assert_detected(findings: &[Finding], kind: AttackKind, d: Detector) -> Finding {
    let victim = synth::cgroup_id(kind.default_class(), 0);
    let others: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.subject.cgroup_id != victim)
        .collect();
    assert!(
        others.is_empty(),
        "false alerts on benign pods: {others:#?}"
    );
    findings
        .iter()
        .find(|f| f.detector == d && f.state == FindingState::Firing)
        .unwrap_or_else(|| panic!("{kind:?}: no {d} finding; got {findings:#?}"))
        .clone()
}

#[test]
fn six_hours_of_benign_windows_are_silent() {
    let spec = Spec::default();
    let (engine, findings, summary) = run(&spec);
    // 6 h of 10 s windows, 4 classes x 3 pods.
    assert_eq!(summary.windows, 2160 * 12);
    assert!(findings.is_empty(), "false alerts: {findings:#?}");
    assert_eq!(
        summary.classes_learned,
        ["notebook", "pipeline", "service", "training"]
    );
    assert_eq!(engine.stats.trained, 2160 * 12);
    for class in synth::CLASSES {
        let c = engine.baselines().class(class).unwrap();
        assert!(c.gmm().is_some(), "{class} has no mixture");
    }
}

#[test]
fn volume_fires_and_resolves() {
    let (_, findings, _) = run(&attack(AttackKind::Volume, 120, 2, 3));
    let f = assert_detected(&findings, AttackKind::Volume, Detector::ExfilVolume);
    assert_eq!(f.subject.pod.as_deref(), Some("training-0"));
    assert!(f.severity >= Severity::Medium);
    assert_eq!(f.destinations[0], "203.0.113.200:443/tcp");
    let ev = &f.evidence[0];
    assert_eq!(ev.name, "egress_external_bytes");
    assert!(ev.observed > 19e6 && ev.baseline.unwrap() < 10e3, "{ev:?}");
    // First window of the attack: 2 h in.
    let start = Spec::default().start;
    assert_eq!(
        f.started_at.duration_since(start).unwrap(),
        Duration::from_secs(7200 + 10)
    );
    assert!(
        findings
            .iter()
            .any(|f| f.detector == Detector::ExfilVolume && f.state == FindingState::Resolved)
    );
}

#[test]
fn new_destination_fires() {
    let (_, findings, _) = run(&attack(AttackKind::NewDestination, 120, 5, 3));
    let f = assert_detected(
        &findings,
        AttackKind::NewDestination,
        Detector::ExfilNewDestination,
    );
    assert!(f.summary.contains("2001:db8:bad::/48"), "{}", f.summary);
}

#[test]
fn slow_drip_fires_on_a_known_prefix() {
    // The recording `tg-eval --replay` uses (synth --attack slow-drip
    // --attack-at 70m --attack-for 290m).
    let (_, findings, _) = run(&attack(AttackKind::SlowDrip, 70, 290, 6));
    let f = assert_detected(&findings, AttackKind::SlowDrip, Detector::ExfilSlowDrip);
    assert!(f.summary.contains("203.0.113.0/24"), "{}", f.summary);
    // Only the drip: not a volume or new-destination pattern, and the busy
    // training pod's extra egress is not read as a miner's profile (replay
    // once named this pod mining.profile instead).
    let detectors: std::collections::BTreeSet<Detector> =
        findings.iter().map(|f| f.detector).collect();
    assert_eq!(
        detectors.into_iter().collect::<Vec<_>>(),
        [Detector::ExfilSlowDrip],
        "{findings:#?}"
    );
}

#[test]
fn storage_copy_and_read_then_send_fire() {
    let (_, findings, _) = run(&attack(AttackKind::StorageCopy, 120, 2, 3));
    let f = assert_detected(&findings, AttackKind::StorageCopy, Detector::ExfilStorage);
    assert_eq!(f.evidence[0].name, "storage_write_bytes");
    let (_, findings, _) = run(&attack(AttackKind::ReadThenSend, 120, 2, 3));
    let f = assert_detected(&findings, AttackKind::ReadThenSend, Detector::ExfilStorage);
    assert!(f.summary.contains("read"), "{}", f.summary);
    assert_eq!(f.severity, Severity::High);
}

#[test]
fn dns_tunnel_fires() {
    let (_, findings, _) = run(&attack(AttackKind::DnsTunnel, 120, 5, 3));
    let f = assert_detected(&findings, AttackKind::DnsTunnel, Detector::ExfilDnsTunnel);
    assert_eq!(f.evidence.len(), 3);
}

#[test]
fn stratum_marker_in_a_window_is_critical_even_while_learning() {
    // At 10 minutes, long before the class has learned.
    let (_, findings, _) = run(&attack(AttackKind::Stratum, 10, 10, 1));
    let f = assert_detected(&findings, AttackKind::Stratum, Detector::MiningStratum);
    assert_eq!(f.severity, Severity::Critical);
    let p = assert_detected(&findings, AttackKind::Stratum, Detector::MiningPoolPort);
    assert!(p.severity <= Severity::Medium);
    // Baseline detectors stay quiet during learning.
    assert!(
        !findings
            .iter()
            .any(|f| f.detector == Detector::MiningProfile)
    );
}

#[test]
fn cpu_miner_behind_tls_fires_profile() {
    let (_, findings, _) = run(&attack(AttackKind::CpuMiner, 120, 30, 3));
    let f = assert_detected(&findings, AttackKind::CpuMiner, Detector::MiningProfile);
    assert!(f.evidence[0].observed >= 0.9);
    assert!(
        !findings
            .iter()
            .any(|f| f.detector == Detector::MiningPoolPort)
    );
}

#[test]
fn pool_port_alone_is_low() {
    let (_, findings, _) = run(&attack(AttackKind::PoolPort, 120, 5, 3));
    let f = assert_detected(&findings, AttackKind::PoolPort, Detector::MiningPoolPort);
    assert_eq!(f.severity, Severity::Low);
    assert_eq!(f.destinations, ["203.0.113.77:3333/tcp"]);
}

#[test]
fn no_baseline_alerts_while_learning() {
    // A bulk upload 10 minutes in: the class has not learned yet.
    let (engine, findings, _) = run(&attack(AttackKind::Volume, 10, 2, 1));
    assert!(findings.is_empty(), "{findings:#?}");
    assert!(!engine.baselines().learned("training"));
}

#[test]
fn stratum_hit_per_tick_is_deduplicated() {
    let mut e = Engine::new(&cfg(), Baselines::new(&cfg()));
    let subject = Subject {
        cgroup_id: 7,
        class: "default".into(),
        ..Subject::default()
    };
    let hit = StratumHit {
        cgroup_id: 7,
        addr: "203.0.113.77".into(),
        port: 3333,
        marker: "mining.subscribe".into(),
        ts_ns: 1,
    };
    let at = Spec::default().start;
    let f = e.stratum(&subject, &hit, at).unwrap();
    assert_eq!(
        (f.detector, f.severity),
        (Detector::MiningStratum, Severity::Critical)
    );
    assert_eq!(f.started_at, at);
    assert!(
        e.stratum(&subject, &hit, at + Duration::from_secs(1))
            .is_none()
    );
    assert_eq!(e.firing().count(), 1);
    // The pod disappears: swept and resolved.
    let gone = e.sweep(at + Duration::from_secs(3600));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].state, FindingState::Resolved);
    assert_eq!(e.firing().count(), 0);
}

#[test]
fn recorded_windows_round_trip_and_bad_lines_are_named() {
    let spec = Spec {
        duration: Duration::from_secs(600),
        pods_per_class: 1,
        ..Spec::default()
    };
    let samples = synth::generate(&spec);
    let path = std::env::temp_dir().join(format!("tollgate-replay-{}.jsonl", std::process::id()));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(path.clone());
    replay::write_jsonl(std::fs::File::create(&path).unwrap(), &samples).unwrap();
    assert_eq!(replay::read_jsonl(&path).unwrap(), samples);
    let mut text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().take(2).collect();
    text = format!("{}\n\n{}\n{{\"subject\": 1}}\n", lines[0], lines[1]);
    std::fs::write(&path, text).unwrap();
    let e = replay::read_jsonl(&path).unwrap_err().to_string();
    assert!(e.contains("line 4") && e.contains("WindowSample"), "{e}");
}

#[test]
fn a_low_pool_port_finding_does_not_stop_learning() {
    // Every service pod talks to port 7777 all along (a legitimate use).
    let spec = Spec {
        duration: Duration::from_secs(2 * 3600),
        pods_per_class: 2,
        ..Spec::default()
    };
    let mut samples = synth::generate(&spec);
    for s in samples.iter_mut().filter(|s| s.subject.class == "service") {
        s.peers.push(crate::collect::PeerWindow {
            addr: "203.0.113.9".parse().unwrap(),
            port: 7777,
            proto: "tcp".into(),
            external: true,
            tx_bytes: 100,
            rx_bytes: 100,
            tx_packets: 1,
            rx_packets: 1,
            first_seen: Some(spec.start),
        });
    }
    let n = samples.len() as u64;
    let mut engine = Engine::new(&cfg(), Baselines::new(&cfg()));
    let mut out = Vec::new();
    replay::run(&mut engine, samples, |f| out.push(f.clone()));
    assert_eq!(out.len(), 2, "{out:#?}");
    assert!(out.iter().all(|f| f.detector == Detector::MiningPoolPort
        && f.severity == Severity::Low
        && f.subject.class == "service"));
    assert_eq!((engine.stats.trained, engine.stats.not_trained), (n, 0));
    assert!(engine.baselines().learned("service"));
}
