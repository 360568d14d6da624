//! Cardinality budget: a deleted pod's series leave /metrics after the
//! inventory's grace period, not before.
#![forbid(unsafe_code)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use tollgate_tests::{
    agent::{Agent, TestPinDir},
    cmd::wait_until,
    http, privileged, servers,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(60);

/// Cardinality: a deleted pod's series leave /metrics once
/// `inventory.grace` has passed after its cgroup disappeared (and not
/// before: its last counts stay scrapeable for the grace period).
#[test]
fn deleted_pod_series_leave_metrics_after_grace() {
    privileged!();
    let pins = TestPinDir::new().expect("pin dir");
    let agent = Agent::start(
        pins.path(),
        "[agent]\ntick = \"200ms\"\n[inventory]\nmode = \"standalone\"\ngrace = \"3s\"\n",
    )
    .expect("agent starts");
    let addr = servers::agent_metrics_addr(&agent).unwrap();
    let cg = tollgate_tests::cgroup::TestCgroup::new("gone").expect("cgroup");
    let rel = cg.rel_path();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {TRAFFIC} udp-send --to 127.0.0.1:9 --count 3 --size 10",
            cg.path().display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let series = |m: &str| {
        m.lines()
            .filter(|l| l.contains(&format!("pod=\"{rel}\"")))
            .count()
    };
    let mut m = String::new();
    wait_until("the pod's series in /metrics", WAIT, || {
        m = http::get(&addr, "/metrics").unwrap_or_default();
        series(&m) > 0
    })
    .expect("series appear");
    let n = series(&m);
    drop(cg);
    let gone_at = Instant::now();
    // Still there during the grace period.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        series(&http::get(&addr, "/metrics").unwrap()),
        n,
        "kept during the grace period"
    );
    wait_until("the pod's series gone", WAIT, || {
        series(&http::get(&addr, "/metrics").unwrap_or_default()) == 0
    })
    .expect("series removed after the grace period");
    let after = gone_at.elapsed();
    eprintln!(
        "{n} series of a deleted cgroup left /metrics {:.1} s after it was removed (grace 3 s)",
        after.as_secs_f64()
    );
    assert!(
        after >= Duration::from_secs(3),
        "not before the grace period: {after:?}"
    );
}
