//! Privileged end-to-end detection: the real agent with 1 s windows and a
//! short learning period. A pod in its own class sends a trickle of benign
//! datagrams to the internet host until the class has learned, then
//! uploads 40 MB over TCP: an exfil.volume finding naming that pod appears
//! in `GET /v1/findings`, and the learned baseline is on disk.
#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tollgate::{
    api,
    baseline::Baselines,
    detect::{DetectConfig, Detector, Finding, FindingState},
};
use tollgate_tests::{
    agent::{Agent, TestPinDir},
    cmd::wait_until,
    privileged,
    topology::Topology,
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(60);
const CLASS: &str = "exfiltest";
const UPLOAD: u64 = 40_000_000;

/// A state directory under the temp dir, removed on drop.
struct StateDir(PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn findings(socket: &Path) -> Vec<Finding> {
    api::fetch_findings(socket).unwrap_or_default()
}

#[test]
fn bulk_upload_raises_exfil_volume_for_the_pod() {
    privileged!("ip");
    let topo = Topology::builder().pod("exfil").build().expect("topology");
    let pod = topo.pod(0);
    let net = topo.internet().v4;
    let pins = TestPinDir::new().expect("pin dir");
    let state = StateDir(
        std::env::temp_dir().join(format!("tollgate-detect-state-{}", std::process::id())),
    );
    let config = format!(
        r#"
[agent]
tick = "200ms"
metrics_addr = "127.0.0.1:0"
state_dir = "{state}"
[network]
internal_cidrs = ["198.18.0.0/16", "2001:db8:c::/48"]
[inventory]
mode = "standalone"
[classes]
names = ["{CLASS}"]
[[classes.path_rules]]
glob = "{path}"
class = "{CLASS}"
[detect]
window = "1s"
learning_windows = 5
learning_duration = "5s"
save_interval = "1s"
resolve_after = 30
"#,
        state = state.0.display(),
        path = pod.cgroup.rel_path(),
    );
    let agent = Agent::start(pins.path(), &config).expect("agent starts");
    let socket = api::default_socket(pins.path());

    // Benign: 100-byte datagrams every 100 ms until the class has learned
    // (at least 5 windows and 5 s after its first window).
    let mut sink = Sink::start(topo.internet().command(&[
        TRAFFIC,
        "udp-sink",
        "--listen",
        &format!("{net}:9002"),
        "--count",
        "1000000",
        "--timeout-s",
        "120",
    ]))
    .expect("udp sink");
    let mut trickle = pod
        .spawn(&[
            TRAFFIC,
            "udp-send",
            "--to",
            &format!("{net}:9002"),
            "--count",
            "600",
            "--size",
            "100",
            "--interval-ms",
            "100",
            "--timeout-s",
            "90",
        ])
        .expect("benign sender");
    let learned = format!("class=\"{CLASS}\"");
    wait_until("the class to learn", WAIT, || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("class baseline learned") && l.contains(&learned))
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let before: Vec<Finding> = findings(&socket)
        .into_iter()
        .filter(|f| f.subject.cgroup_id == pod.cgroup.id())
        .collect();
    assert!(
        before.is_empty(),
        "benign traffic raised findings: {before:#?}"
    );

    // The upload.
    let mut tcp = Sink::start(topo.internet().command(&[
        TRAFFIC,
        "tcp-sink",
        "--listen",
        &format!("{net}:9100"),
        "--once",
    ]))
    .expect("tcp sink");
    pod.run(
        &[
            TRAFFIC,
            "tcp-send",
            "--to",
            &format!("{net}:9100"),
            "--bytes",
            &UPLOAD.to_string(),
        ],
        WAIT,
    )
    .expect("upload");
    let got = tcp.finish(WAIT).expect("tcp sink exits");
    assert_eq!(
        got.stdout.trim(),
        UPLOAD.to_string(),
        "sink received the upload"
    );

    let mut found = None;
    let waited = wait_until("an exfil.volume finding", WAIT, || {
        found = findings(&socket).into_iter().find(|f| {
            f.detector == Detector::ExfilVolume && f.subject.cgroup_id == pod.cgroup.id()
        });
        found.is_some()
    });
    let f = found.unwrap_or_else(|| {
        panic!(
            "{waited:?}; findings {:#?}; log:\n{}",
            findings(&socket),
            agent.log()
        )
    });
    assert_eq!(f.state, FindingState::Firing);
    assert_eq!(f.subject.class, CLASS);
    assert_eq!(
        f.subject.cgroup_path.as_deref(),
        Some(pod.cgroup.rel_path().as_str())
    );
    assert_eq!(f.destinations[0], format!("{net}:9100/tcp"));
    let ev = &f.evidence[0];
    assert_eq!(ev.name, "egress_external_bytes");
    assert!(
        ev.observed > 4.0 * ev.baseline.unwrap_or(0.0) && ev.observed >= 262_144.0,
        "{ev:?}"
    );
    // Other findings for this pod: none (no stratum, no pool port, ...).
    let other: Vec<Finding> = findings(&socket)
        .into_iter()
        .filter(|g| g.subject.cgroup_id == pod.cgroup.id() && g.detector != f.detector)
        .collect();
    assert!(
        other
            .iter()
            .all(|g| g.detector.as_str().starts_with("exfil.")),
        "{other:#?}"
    );

    // The learned baseline is on disk (saved every second) and loads.
    let b = Baselines::load_dir(&state.0, &DetectConfig::default()).expect("baselines load");
    assert!(b.learned(CLASS), "{CLASS} learned on disk");
    let _ = trickle.kill();
    let _ = trickle.wait();
    let _ = sink.finish(Duration::from_secs(1));
    drop(agent);
}

/// A stratum session from a pod: the kernel's marker reaches the engine in
/// the tick that drains it (the per-tick path, not the window), and a
/// critical mining.stratum finding names the pod and the pool, with no
/// learning period.
#[test]
fn stratum_session_is_critical_at_once() {
    privileged!("ip");
    const SIGNAL: &str = env!("CARGO_BIN_EXE_tg-signal");
    let topo = Topology::builder().pod("miner").build().expect("topology");
    let pod = topo.pod(0);
    let net = topo.internet().v4;
    let pins = TestPinDir::new().expect("pin dir");
    let state = StateDir(
        std::env::temp_dir().join(format!("tollgate-detect-stratum-{}", std::process::id())),
    );
    let config = format!(
        r#"
[agent]
tick = "200ms"
metrics_addr = "127.0.0.1:0"
state_dir = "{}"
[network]
internal_cidrs = ["198.18.0.0/16", "2001:db8:c::/48"]
[inventory]
mode = "standalone"
[detect]
window = "60s"
"#,
        state.0.display()
    );
    let agent = Agent::start(pins.path(), &config).expect("agent starts");
    let socket = api::default_socket(pins.path());
    let pool = format!("{net}:3333");
    let mut stub = Sink::start(topo.internet().command(&[
        TRAFFIC,
        "tcp-sink",
        "--listen",
        &pool,
        "--once",
        "--timeout-s",
        "30",
    ]))
    .expect("pool stub");
    pod.run(
        &[
            SIGNAL,
            "stratum-client",
            "--to",
            &pool,
            "--shares",
            "1",
            "--interval-ms",
            "10",
            "--no-wait",
        ],
        WAIT,
    )
    .expect("pod mines");
    stub.finish(WAIT).expect("pool stub exits");
    let mut found = None;
    let waited = wait_until("a mining.stratum finding", WAIT, || {
        found = findings(&socket).into_iter().find(|f| {
            f.detector == Detector::MiningStratum && f.subject.cgroup_id == pod.cgroup.id()
        });
        found.is_some()
    });
    let f = found.unwrap_or_else(|| {
        panic!(
            "{waited:?}; findings {:#?}; log:\n{}",
            findings(&socket),
            agent.log()
        )
    });
    assert_eq!(f.state, FindingState::Firing);
    assert_eq!(f.severity, tollgate::detect::Severity::Critical);
    assert_eq!(f.destinations, [format!("{pool}/tcp")]);
    // From a per-tick hit: the 60 s window has not closed yet.
    assert_eq!(f.window_start, f.window_end);
    assert!(f.summary.contains("mining."), "{}", f.summary);
    drop(agent);
}
