//! Privileged: the auto-quarantine responder, fed a Finding, quarantines
//! through the same service as the control API (real pinned kernel map of
//! a running agent): the cgroup's sendmsg() fails with EPERM, the audit
//! log carries the finding as evidence; a finding about a kube-system pod
//! is never acted on; release restores traffic.
#![forbid(unsafe_code)]

use std::{
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use tollgate::{
    control::service::{QuarantineService, Target},
    detect::{Detector, Evidence, Finding, FindingState, Severity, Subject},
    ebpf::PinDir,
    quarantine::Quarantine,
    respond::{
        Responder as _,
        auto::{AutoQuarantine, AutoQuarantineConfig, ClassPolicy, Mode},
    },
};
use tollgate_tests::{
    agent::{Agent, TestPinDir},
    cgroup::{TestCgroup, v2_mount},
    cmd::wait_until,
    privileged,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");

fn finding(cg: &TestCgroup, ns: Option<&str>) -> Finding {
    let t0 = SystemTime::now();
    Finding {
        detector: Detector::ExfilVolume,
        severity: Severity::Critical,
        score: 40.0,
        subject: Subject {
            cgroup_id: cg.id(),
            cgroup_path: Some(cg.rel_path()),
            namespace: ns.map(str::to_owned),
            pod: ns.map(|_| "dns-0".to_owned()),
            container: None,
            class: "training".into(),
        },
        summary: "40x the class p99 of external bytes".into(),
        evidence: vec![Evidence {
            name: "egress_external_bytes".into(),
            observed: 4e8,
            baseline: Some(1e7),
            unit: "bytes".into(),
        }],
        destinations: vec!["203.0.113.9:443/tcp".into()],
        window_start: t0,
        window_end: t0,
        state: FindingState::Firing,
        started_at: t0,
        ended_at: None,
    }
}

#[test]
fn a_critical_finding_quarantines_through_the_service_with_evidence() {
    privileged!();
    let pins = TestPinDir::new().expect("pin dir");
    let state = std::env::temp_dir().join(format!("tg-auto-{}", tollgate_tests::unique_suffix()));
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n",
        state.display()
    );
    let agent = Agent::start(pins.path(), &config).expect("agent starts");
    // The control API comes up after the agent reconciled its state: from
    // then on it does not write the state file unprompted.
    agent.control_url().expect("agent fully started");
    let cg = TestCgroup::new("auto").expect("cgroup");
    let send = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {TRAFFIC} udp-send --to 127.0.0.1:9 --count 1 --size 10",
                cg.path().display()
            ))
            .output()
            .expect("send runs")
            .status
            .success()
    };
    assert!(send(), "sends before");

    let mount = v2_mount().expect("cgroup v2");
    let q = Quarantine::open(&PinDir::new(pins.path()), mount.clone(), &state)
        .expect("quarantine state");
    let svc = Arc::new(QuarantineService::new(q, mount, None, None));
    let mut cfg = AutoQuarantineConfig::default();
    cfg.classes.insert(
        "training".into(),
        ClassPolicy {
            quarantine: Mode::Auto,
            min_severity: Severity::High,
            ttl: None,
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut auto = AutoQuarantine::spawn(cfg, svc.clone());

    // kube-system: never.
    auto.on_finding(&finding(&cg, Some("kube-system")));
    assert_eq!(auto.stats.protected.load(Ordering::Relaxed), 1);
    let f = finding(&cg, None);
    auto.on_finding(&f);
    rt.block_on(async {
        for _ in 0..300 {
            if auto.stats.quarantined.load(Ordering::Relaxed)
                + auto.stats.failed.load(Ordering::Relaxed)
                > 0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(auto.stats.failed.load(Ordering::Relaxed), 0);
    assert_eq!(auto.stats.quarantined.load(Ordering::Relaxed), 1);
    assert!(!send(), "sendmsg refused after the automatic quarantine");
    let listed = svc.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].by, "agent:exfil.volume");
    assert_eq!(listed[0].cgroup_id, cg.id());

    let audit = std::fs::read_to_string(state.join("audit.log")).expect("audit log");
    let line: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["action"] == "quarantine")
        .expect("quarantine audited");
    assert_eq!(line["by"], "agent:exfil.volume");
    let evidence: Finding =
        serde_json::from_value(line["evidence"].clone()).expect("evidence is the finding");
    assert_eq!(evidence, f);

    // The same episode again: no second action.
    auto.on_finding(&f);
    if let Err(e) = svc.release(&Target::Cgroup(cg.rel_path()), "test") {
        panic!("release: {e}\nagent log:\n{}", agent.log());
    }
    let _ = wait_until("sends after release", Duration::from_secs(10), send);
    assert!(send(), "sends after release");
    assert_eq!(auto.stats.quarantined.load(Ordering::Relaxed), 1);
    assert!(
        svc.list().is_empty(),
        "the repeated finding did not re-quarantine"
    );
    let _ = std::fs::remove_dir_all(&state);
}
