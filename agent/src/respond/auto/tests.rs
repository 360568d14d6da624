use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::*;
use crate::detect::{Evidence, Subject};

fn finding(class: &str, ns: Option<&str>, sev: Severity) -> Finding {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    Finding {
        detector: Detector::ExfilVolume,
        severity: sev,
        score: 12.5,
        subject: Subject {
            cgroup_id: 4242,
            cgroup_path: Some("/kubepods.slice/pod-x".into()),
            namespace: ns.map(str::to_owned),
            pod: ns.map(|_| "train-0".to_owned()),
            container: None,
            class: class.into(),
        },
        summary: "sent 12.5x the class p99 to 203.0.113.9".into(),
        evidence: vec![Evidence {
            name: "egress_external_bytes".into(),
            observed: 125e6,
            baseline: Some(10e6),
            unit: "bytes".into(),
        }],
        destinations: vec!["203.0.113.9:443/tcp".into()],
        window_start: t0,
        window_end: t0 + Duration::from_secs(60),
        state: FindingState::Firing,
        started_at: t0,
        ended_at: None,
    }
}

fn config() -> AutoQuarantineConfig {
    let mut c = AutoQuarantineConfig::default();
    c.classes.insert(
        "training".into(),
        ClassPolicy {
            quarantine: Mode::Auto,
            min_severity: Severity::High,
            ttl: Some(Duration::from_secs(3600)),
        },
    );
    c.classes.insert(
        "notebook".into(),
        ClassPolicy {
            quarantine: Mode::Off,
            ..ClassPolicy::default()
        },
    );
    c
}

fn responder() -> (AutoQuarantine, mpsc::Receiver<Job>) {
    let (tx, rx) = mpsc::channel(8);
    (AutoQuarantine::new(config(), tx), rx)
}

#[test]
fn policy_per_class_and_severity() {
    let (mut a, _rx) = responder();
    assert_eq!(
        a.decide(&finding("training", Some("ml"), Severity::Medium)),
        Decision::BelowSeverity(Severity::High)
    );
    assert_eq!(
        a.decide(&finding("notebook", Some("lab"), Severity::Critical)),
        Decision::Off
    );
    // Classes without an entry get the default: alert only.
    assert_eq!(
        a.decide(&finding("service", Some("web"), Severity::Critical)),
        Decision::AlertOnly
    );
    assert_eq!(
        a.decide(&finding(
            "training",
            Some("kube-system"),
            Severity::Critical
        )),
        Decision::Protected("kube-system".into())
    );
    match a.decide(&finding("training", Some("ml"), Severity::High)) {
        Decision::Quarantine {
            target,
            fallback,
            ttl,
        } => {
            assert_eq!(target.to_string(), "ml/train-0");
            assert_eq!(
                fallback,
                Some(Target::Cgroup("/kubepods.slice/pod-x".into()))
            );
            assert_eq!(ttl, Some(Duration::from_secs(3600)));
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn one_action_per_episode_and_no_loops() {
    let (mut a, _rx) = responder();
    let f = finding("training", Some("ml"), Severity::Critical);
    assert!(matches!(a.decide(&f), Decision::Quarantine { .. }));
    // An update of the same firing finding: already acted.
    let mut upd = f.clone();
    upd.score = 20.0;
    assert_eq!(a.decide(&upd), Decision::Ignore);
    // Resolved, then a new episode: acts again.
    let mut res = f.clone();
    res.state = FindingState::Resolved;
    assert_eq!(a.decide(&res), Decision::Ignore);
    let mut again = f.clone();
    again.started_at += Duration::from_secs(600);
    assert!(matches!(a.decide(&again), Decision::Quarantine { .. }));
    // Quarantine notices never trigger quarantines.
    let mut q = finding("training", Some("ml"), Severity::Critical);
    q.detector = Detector::Quarantine;
    assert_eq!(a.decide(&q), Decision::Ignore);
}

#[test]
fn standalone_findings_use_the_cgroup_path() {
    let (mut a, _rx) = responder();
    let f = finding("training", None, Severity::Critical);
    match a.decide(&f) {
        Decision::Quarantine {
            target, fallback, ..
        } => {
            assert_eq!(target, Target::Cgroup("/kubepods.slice/pod-x".into()));
            assert_eq!(fallback, None);
        }
        d => panic!("{d:?}"),
    }
    let mut none = finding("training", None, Severity::Critical);
    none.subject.cgroup_path = None;
    none.subject.cgroup_id = 7;
    assert_eq!(a.decide(&none), Decision::NoTarget);
}

#[test]
fn on_finding_queues_the_finding_as_evidence() {
    let (mut a, mut rx) = responder();
    let f = finding("training", Some("ml"), Severity::Critical);
    a.on_finding(&f);
    let mut web = finding("service", Some("web"), Severity::Critical);
    web.subject.cgroup_id = 4343;
    a.on_finding(&web);
    let job = rx.try_recv().expect("one job");
    assert!(rx.try_recv().is_err(), "alert-only class queued nothing");
    assert_eq!(job.target.to_string(), "ml/train-0");
    assert_eq!(job.request.by, "agent:exfil.volume");
    assert!(
        job.request.reason.contains("12.5x"),
        "{}",
        job.request.reason
    );
    let ev = job.request.evidence.expect("evidence");
    let back: Finding = serde_json::from_value(ev).expect("the finding round-trips");
    assert_eq!(back, f);
    assert_eq!(a.stats.alert_only.load(Ordering::Relaxed), 1);
}

#[test]
fn full_queue_is_counted() {
    let (tx, _rx) = mpsc::channel(1);
    let mut a = AutoQuarantine::new(config(), tx);
    for i in 0..3 {
        let mut f = finding("training", Some("ml"), Severity::Critical);
        f.subject.cgroup_id = i;
        a.on_finding(&f);
    }
    assert_eq!(a.stats.dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn config_parses_and_names_unknown_classes() {
    let text = r#"
never_namespaces = ["kube-system", "monitoring"]
[default]
quarantine = "off"
[classes.training]
quarantine = "auto"
min_severity = "critical"
ttl = "2h"
"#;
    let c: AutoQuarantineConfig = toml::from_str(text).unwrap();
    assert_eq!(c.default.quarantine, Mode::Off);
    assert_eq!(c.policy("training").min_severity, Severity::Critical);
    assert_eq!(c.policy("training").ttl, Some(Duration::from_secs(7200)));
    c.validate(&ClassConfig::default()).unwrap();
    let bad: AutoQuarantineConfig =
        toml::from_str("[classes.trianing]\nquarantine = \"auto\"\n").unwrap();
    let e = bad
        .validate(&ClassConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("auto_quarantine.classes.trianing"), "{e}");
    assert!(toml::from_str::<AutoQuarantineConfig>("[default]\nquarantine = \"yes\"\n").is_err());
    assert!(toml::from_str::<AutoQuarantineConfig>("[default]\nmin_sev = \"high\"\n").is_err());
}
