//! Privileged quarantine through the cgroup hooks: a pod streaming TCP to
//! the internet host stops (measured at the receiving host), its new
//! connects fail with EPERM, another pod keeps working, release restores
//! it, a SIGKILL of the agent leaves the quarantine in force and a restart
//! reconciles; a cgroup-only "pod" in the host's network namespace (like
//! hostNetwork) is cut off through the cgroup path.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tg},
    cgroup::TestCgroup,
    nft::{self, Peer},
    privileged,
    topology::Topology,
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);
const CONFIG: &str = "[agent]\ntick = \"200ms\"\n";

/// Bytes the internet host has received from `from` (nft input counter in
/// its own namespace: what really got through).
fn received(topo: &Topology, from: IpAddr) -> u64 {
    nft::read(&topo.internet().netns)
        .expect("nft")
        .ingress(Peer::addr(from))
        .bytes
}

fn connect_output(pod: &tollgate_tests::pod::Pod, to: &str) -> String {
    let out = pod
        .run(&[TRAFFIC, "connect", "--to", to], WAIT)
        .expect("connect runs");
    format!("{}{}", out.stdout, out.stderr)
}

#[test]
fn quarantine_stops_a_pod_and_survives_agent_sigkill() {
    privileged!("nft");
    let topo = Topology::builder().pods(2).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let state = std::env::temp_dir().join(format!("tg-state-{}", tollgate_tests::unique_suffix()));
    let config = format!("{CONFIG}state_dir = \"{}\"\n", state.display());
    let mut agent = Agent::start(pins.path(), &config).expect("agent starts");
    let (a, b) = (topo.pod(0), topo.pod(1));
    let (va, vb) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    nft::install(&topo.internet().netns, &[Peer::addr(va), Peer::addr(vb)]).expect("nft");
    let net = IpAddr::V4(topo.internet().v4);
    let (to_a, to_b) = (
        SocketAddr::new(net, 9500).to_string(),
        SocketAddr::new(net, 9501).to_string(),
    );
    let mut sinks = [
        Sink::start(
            topo.internet()
                .command(&[TRAFFIC, "tcp-sink", "--listen", &to_a, "--once"]),
        )
        .unwrap(),
        Sink::start(
            topo.internet()
                .command(&[TRAFFIC, "tcp-sink", "--listen", &to_b, "--once"]),
        )
        .unwrap(),
    ];
    let mut streams = [
        a.command(&[TRAFFIC, "tcp-stream", "--to", &to_a, "--seconds", "6"])
            .spawn()
            .unwrap(),
        b.command(&[TRAFFIC, "tcp-stream", "--to", &to_b, "--seconds", "6"])
            .spawn()
            .unwrap(),
    ];
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        received(&topo, va) > 0,
        "pod A streams before the quarantine"
    );

    let rel = a.cgroup.rel_path();
    let t0 = Instant::now();
    tg(
        pins.path(),
        &state,
        &["quarantine", "--cgroup", &rel, "--reason", "test exfil"],
    );
    let cmd_ms = t0.elapsed().as_secs_f64() * 1e3;
    let at_cut = received(&topo, va);
    std::thread::sleep(Duration::from_millis(300));
    let after_300ms = received(&topo, va);
    let b_before = received(&topo, vb);
    std::thread::sleep(Duration::from_millis(700));
    let after_1s = received(&topo, va);
    eprintln!(
        "quarantine command took {cmd_ms:.1} ms; bytes from A after it returned: {} (first 300 ms), {} (next 700 ms)",
        after_300ms - at_cut,
        after_1s - after_300ms
    );
    assert_eq!(after_1s, after_300ms, "pod A's stream has stopped");
    assert!(received(&topo, vb) > b_before, "pod B keeps streaming");
    let out = connect_output(a, &to_a);
    assert!(
        out.contains("Operation not permitted") || out.contains("os error 1"),
        "EPERM: {out}"
    );
    assert!(tg(pins.path(), &state, &["quarantine", "list"]).contains(&rel));

    // SIGKILL: the pinned map keeps enforcing with no agent at all.
    agent.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let out = connect_output(a, &to_a);
    assert!(
        out.contains("Operation not permitted") || out.contains("os error 1"),
        "still EPERM: {out}"
    );
    assert_eq!(
        received(&topo, va),
        after_1s,
        "nothing from A while the agent is dead"
    );
    let _agent2 = Agent::start(pins.path(), &config).expect("agent restarts");
    assert!(
        tg(pins.path(), &state, &["quarantine", "list"]).contains("test exfil"),
        "state reconciled"
    );

    tg(pins.path(), &state, &["release", "--cgroup", &rel]);
    let out = connect_output(a, &to_a);
    assert!(
        !out.contains("not permitted"),
        "connects work again after release: {out}"
    );
    let audit = std::fs::read_to_string(state.join("audit.log")).expect("audit log");
    assert!(
        audit.contains("\"action\":\"quarantine\"") && audit.contains("\"action\":\"release\""),
        "{audit}"
    );
    assert!(audit.contains("test exfil"));
    for s in &mut streams {
        let _ = s.kill();
        let _ = s.wait();
    }
    for s in &mut sinks {
        let _ = s.finish(Duration::from_secs(1));
    }
    let _ = std::fs::remove_dir_all(&state);
}

/// A cgroup in the host's own network namespace (hostNetwork-like, no
/// veth): quarantine cuts it off through the cgroup hooks alone, and a TTL
/// releases it.
#[test]
fn cgroup_only_pod_is_quarantined_and_ttl_expires() {
    privileged!();
    let pins = TestPinDir::new().expect("pin dir");
    let state = std::env::temp_dir().join(format!("tg-state-{}", tollgate_tests::unique_suffix()));
    let config = format!("{CONFIG}state_dir = \"{}\"\n", state.display());
    let _agent = Agent::start(pins.path(), &config).expect("agent starts");
    let cg = TestCgroup::new("hostnet").expect("cgroup");
    let send = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {TRAFFIC} udp-send --to 127.0.0.1:9 --count 1 --size 10",
                cg.path().display()
            ))
            .output()
            .expect("send runs")
    };
    assert!(send().status.success(), "sends before the quarantine");
    tg(
        pins.path(),
        &state,
        &[
            "quarantine",
            "--cgroup",
            &cg.rel_path(),
            "--reason",
            "ttl test",
            "--ttl",
            "2s",
        ],
    );
    let out = send();
    assert!(!out.status.success(), "sendmsg refused while quarantined");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted")
            || String::from_utf8_lossy(&out.stdout).contains("not permitted")
    );
    let deadline = Instant::now() + WAIT;
    while !send().status.success() {
        assert!(
            Instant::now() < deadline,
            "the 2 s TTL expired and the agent released it"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let audit = std::fs::read_to_string(state.join("audit.log")).expect("audit log");
    assert!(audit.contains("\"action\":\"expire\""), "{audit}");
    let _ = std::fs::remove_dir_all(&state);
}

/// The CLI and the agent both rewrite the state file. Twelve CLI processes
/// quarantining (then releasing) twelve cgroups at once, next to a running
/// agent that expires and reconciles, must leave exactly the twelve records
/// (then none): the state lock keeps one writer from saving over another's
/// record.
#[test]
fn concurrent_writers_keep_every_record() {
    privileged!();
    const N: usize = 12;
    let pins = TestPinDir::new().expect("pin dir");
    let state = std::env::temp_dir().join(format!("tg-state-{}", tollgate_tests::unique_suffix()));
    let config = format!("{CONFIG}state_dir = \"{}\"\n", state.display());
    let _agent = Agent::start(pins.path(), &config).expect("agent starts");
    let cgs: Vec<TestCgroup> = (0..N)
        .map(|i| TestCgroup::new(&format!("conc{i}")).expect("cgroup"))
        .collect();
    let run_all = |args: &dyn Fn(usize, &str) -> Vec<String>| {
        let children: Vec<_> = cgs
            .iter()
            .enumerate()
            .map(|(i, cg)| {
                Command::new(tollgate_tests::agent::tollgate_bin())
                    .args(args(i, &cg.rel_path()))
                    .arg("--pin-dir")
                    .arg(pins.path())
                    .arg("--state-dir")
                    .arg(&state)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("tollgate spawns")
            })
            .collect();
        for (i, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output().expect("tollgate runs");
            assert!(
                out.status.success(),
                "writer {i} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    let records = || -> Vec<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(state.join("quarantine.json")).expect("state file"))
            .expect("state JSON")
    };

    run_all(&|i, rel| {
        ["quarantine", "--cgroup", rel, "--reason"]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("writer {i}")])
            .collect()
    });
    let recs = records();
    let mut reasons: Vec<String> = recs
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    reasons.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("writer {i}")).collect();
    want.sort();
    assert_eq!(reasons, want, "every concurrent quarantine kept its record");
    let list = tg(pins.path(), &state, &["quarantine", "list"]);
    for cg in &cgs {
        assert!(
            list.contains(&cg.rel_path()),
            "{} listed: {list}",
            cg.rel_path()
        );
    }

    run_all(&|_, rel| vec!["release".into(), "--cgroup".into(), rel.into()]);
    assert_eq!(records().len(), 0, "every concurrent release took effect");
}
