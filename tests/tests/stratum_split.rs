//! The documented limit of the kernel's stratum matcher: a message split
//! across two TCP segments inside its method is not matched (each segment
//! is searched alone, and only segments that start with `{`). Real pods
//! against the real agent with detection on:
//! - pod A splits only `mining.subscribe` (after 24 bytes, inside
//!   `"mining.`): the kernel misses it and matches the whole authorize and
//!   submit that follow, so mining.stratum still fires (exactly 2 markers);
//! - pod B splits every message: the kernel matches nothing (exactly 0
//!   markers), and userspace still names the session by its pool port
//!   (mining.pool_port, low severity), the catch for this evasion.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, time::Duration};

use tollgate::api;
use tollgate_tests::{
    agent::{Agent, TestPinDir},
    privileged,
    topology::Topology,
    traffic::Sink,
};

const SIGNAL: &str = env!("CARGO_BIN_EXE_tg-signal");
const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_stratum_message_split_inside_its_method_is_caught_by_the_next_message_or_the_pool_port() {
    if !privileged::require_root() {
        return;
    }
    let topo = Topology::builder().pods(2).build().expect("topology");
    let (a, b) = (topo.pod(0), topo.pod(1));
    let mut rules = String::new();
    for p in [a, b] {
        rules.push_str(&format!(
            "[[classes.path_rules]]\nglob = \"{}\"\nclass = \"training\"\n",
            p.cgroup.rel_path()
        ));
    }
    let state = std::env::temp_dir().join(format!("tollgate-split-{}", std::process::id()));
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[network]\ninternal_cidrs = [\"198.18.0.0/16\", \"2001:db8:c::/48\"]\n[inventory]\nmode = \"standalone\"\n[classes]\nnames = [\"training\"]\n{rules}[detect]\nwindow = \"1s\"\n",
        state.display()
    );
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), &config).expect("agent starts");
    let socket = api::default_socket(pins.path());
    let pool = SocketAddr::new(topo.internet().v4.into(), 3333).to_string();
    for (pod, extra) in [(a, vec!["--split-first-only"]), (b, vec![])] {
        let mut sink = Sink::start(topo.internet().command(&[
            TRAFFIC,
            "tcp-sink",
            "--listen",
            &pool,
            "--once",
            "--timeout-s",
            "20",
        ]))
        .expect("pool stub");
        let mut argv = vec![
            SIGNAL,
            "stratum-client",
            "--to",
            &pool,
            "--shares",
            "1",
            "--interval-ms",
            "10",
            "--no-wait",
            "--split-at",
            "24",
        ];
        argv.extend(extra);
        pod.run(&argv, WAIT).expect("stratum session");
        sink.finish(WAIT).expect("pool stub ends");
    }
    // Both pods' findings, in one bounded wait.
    let want = |f: &tollgate::detect::Finding, id: u64, d: &str| {
        f.subject.cgroup_id == id && f.detector.as_str() == d
    };
    let mut findings = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        findings = api::fetch_findings(&socket).unwrap_or_default();
        if findings
            .iter()
            .any(|f| want(f, a.cgroup.id(), "mining.stratum"))
            && findings
                .iter()
                .any(|f| want(f, b.cgroup.id(), "mining.pool_port"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = tollgate_tests::agent::top(pins.path()).expect("snapshot");
    let _ = std::fs::remove_dir_all(&state);
    assert_eq!(
        t.row(a.cgroup.id()).stratum_markers,
        2,
        "split subscribe missed, authorize and submit matched"
    );
    assert_eq!(
        t.row(b.cgroup.id()).stratum_markers,
        0,
        "every message split: nothing matched in the kernel"
    );
    let hits: Vec<String> = t
        .recent_stratum_hits
        .iter()
        .filter(|h| h.cgroup_id == a.cgroup.id())
        .map(|h| h.marker.clone())
        .collect();
    assert_eq!(hits, ["mining.authorize", "mining.submit"]);
    assert!(
        findings
            .iter()
            .any(|f| want(f, a.cgroup.id(), "mining.stratum")),
        "{findings:#?}"
    );
    let p = findings
        .iter()
        .find(|f| want(f, b.cgroup.id(), "mining.pool_port"))
        .unwrap_or_else(|| panic!("no pool-port finding for the split session: {findings:#?}"));
    assert_eq!(p.destinations, [format!("{pool}/tcp")]);
    assert!(
        !findings
            .iter()
            .any(|f| want(f, b.cgroup.id(), "mining.stratum")),
        "{findings:#?}"
    );
}
