//! The agent's minimal capability set, proven: `capsh` runs the agent as
//! root holding exactly CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (what the
//! DaemonSet adds after `drop: ALL` and the systemd unit's bounding set),
//! and it loads, attaches every program (storage raw tracepoints too),
//! counts a pod's traffic exactly (= nftables) and quarantines and releases
//! it with the CLI under the same set. With any one of the three removed it
//! stops with an error naming the missing capability, and with that
//! pre-check bypassed the kernel itself refuses: each one is needed.
#![forbid(unsafe_code)]

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, tollgate_bin, top_until},
    caps,
    nft::{self, Count, Peer},
    pod::Pod,
    privileged,
    topology::{Host, Topology},
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);
const CONFIG: &str = "[agent]\ntick = \"200ms\"\n[inventory]\nmode = \"standalone\"\n";
/// Every link `tollgate run` pins (v1/links), the storage raw tracepoints
/// included.
const LINKS: [&str; 8] = [
    "tg_connect4",
    "tg_connect6",
    "tg_sendmsg4",
    "tg_sendmsg6",
    "tg_skb_egress",
    "tg_skb_ingress",
    "tg_sys_enter",
    "tg_sys_exit",
];

fn sink(host: &Host, args: &[&str]) -> Sink {
    let mut argv = vec![TRAFFIC];
    argv.extend_from_slice(args);
    Sink::start(host.command(&argv)).expect("sink starts")
}

fn counts(c: &tollgate_tests::top::Count) -> Count {
    Count {
        packets: c.packets,
        bytes: c.bytes,
    }
}

/// `tollgate <args>` through `capsh` holding only `keep`; returns stdout.
fn tg_with(keep: &[u32], pins: &Path, state: &Path, args: &[&str]) -> String {
    let w = caps::capsh_wrapper(keep, &tollgate_bin()).expect("capsh wrapper");
    let out = Command::new(&w[0])
        .args(&w[1..])
        .args(args)
        .arg("--pin-dir")
        .arg(pins)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("capsh runs");
    assert!(
        out.status.success(),
        "tollgate {args:?} with only {keep:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET /healthz on the metrics address the agent logged.
fn healthz(log: &str) -> String {
    let addr = log
        .lines()
        .find(|l| l.contains("serving /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    let mut s = TcpStream::connect(addr).expect("metrics endpoint");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("reply");
    reply
}

/// Sends `count` datagrams of `size` bytes; panics unless all were sent.
fn udp_send(pod: &Pod, to: &str, count: u64, size: u64) {
    pod.run(
        &[
            TRAFFIC,
            "udp-send",
            "--to",
            to,
            "--count",
            &count.to_string(),
            "--size",
            &size.to_string(),
        ],
        WAIT,
    )
    .expect("udp-send succeeds");
}

#[test]
fn agent_with_only_its_capabilities_counts_exactly_and_quarantines() {
    privileged!("nft", "capsh");
    const K: u64 = 30;
    const S: u64 = 300;
    const N: u64 = 500_000;
    let keep = caps::agent_caps();
    let wrapper = caps::capsh_wrapper(&keep, &tollgate_bin()).expect("capsh wrapper");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let state = std::env::temp_dir().join(format!("tg-state-{}", tollgate_tests::unique_suffix()));
    let config = format!(
        "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n[inventory]\nmode = \"standalone\"\n",
        state.display()
    );
    let agent = Agent::start_wrapped(pins.path(), &config, &[], &wrapper)
        .expect("agent starts with 3 caps");

    // The process holds exactly the three, in every set that matters, with
    // no_new_privs set.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("agent status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let m = caps::mask(&keep);
    assert_eq!(
        caps::of_pid(agent.pid()).expect("caps of the agent"),
        (m, m, m),
        "effective, permitted, bounding = CAP_BPF|CAP_NET_ADMIN|CAP_PERFMON"
    );

    // Everything attached, storage accounting included.
    let t = top_until(pins.path(), WAIT, |t| t.storage.status == "active");
    assert_eq!(t.storage.status, "active", "log:\n{}", agent.log());
    let links: Vec<String> = std::fs::read_dir(pins.path().join("v1/links"))
        .expect("links dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for l in LINKS {
        assert!(links.iter().any(|x| x == l), "{l} pinned: {links:?}");
    }
    assert!(
        healthz(&agent.log()).starts_with("HTTP/1.0 200"),
        "/healthz"
    );

    // Exact counts for a pod.
    let pod = topo.pod(0);
    let net = IpAddr::V4(topo.internet().v4);
    let from_pod = Peer::addr(IpAddr::V4(pod.v4));
    nft::install(&pod.netns, &[Peer::addr(net)]).expect("nft in the pod");
    nft::install(&topo.internet().netns, &[from_pod]).expect("nft on the internet host");
    let udp_to = SocketAddr::new(net, 9300).to_string();
    let mut s = sink(
        topo.internet(),
        &[
            "udp-sink",
            "--listen",
            &udp_to,
            "--count",
            &K.to_string(),
            "--timeout-s",
            "20",
        ],
    );
    udp_send(pod, &udp_to, K, S);
    assert_eq!(s.finish(WAIT).expect("udp sink").last_number(), Some(K));
    let tcp_to = SocketAddr::new(net, 9301).to_string();
    let mut s = sink(
        topo.internet(),
        &["tcp-sink", "--listen", &tcp_to, "--once"],
    );
    pod.run(
        &[
            TRAFFIC,
            "tcp-send",
            "--to",
            &tcp_to,
            "--bytes",
            &N.to_string(),
        ],
        WAIT,
    )
    .expect("tcp-send");
    assert_eq!(s.finish(WAIT).expect("tcp sink").last_number(), Some(N));
    let reference = nft::read(&pod.netns).expect("nft counters");
    let (out, inn) = (
        reference.egress(Peer::addr(net)),
        reference.ingress(Peer::addr(net)),
    );
    assert!(out.packets > K && out.bytes > K * (S + 28) + N, "{out:?}");
    let id = pod.cgroup.id();
    let t = top_until(pins.path(), WAIT, |t| {
        let r = t.row(id);
        counts(&r.egress.external) == out && counts(&r.ingress.external) == inn
    });
    let r = t.row(id);
    assert_eq!(counts(&r.egress.external), out, "egress = nft, exactly");
    assert_eq!(counts(&r.ingress.external), inn, "ingress = nft, exactly");
    eprintln!(
        "with only CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON: egress {} packets / {} bytes, ingress {} / {} (= nft)",
        out.packets, out.bytes, inn.packets, inn.bytes
    );

    // Quarantine with the CLI under the same three capabilities.
    let rel = pod.cgroup.rel_path();
    tg_with(
        &keep,
        pins.path(),
        &state,
        &["quarantine", "--cgroup", &rel, "--reason", "caps test"],
    );
    let received = || {
        nft::read(&topo.internet().netns)
            .expect("nft")
            .ingress(from_pod)
    };
    let before = received();
    for argv in [
        vec![
            TRAFFIC, "udp-send", "--to", &udp_to, "--count", "1", "--size", "10",
        ],
        vec![TRAFFIC, "connect", "--to", &tcp_to],
    ] {
        // udp-send fails; connect reports the error it got and exits 0.
        let out = pod.command(&argv).output().expect("runs in the pod");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("not permitted"), "{}: EPERM: {text}", argv[1]);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received(), before, "nothing from the pod got through");
    let t = top_until(pins.path(), WAIT, |t| t.row(id).connects_denied > 0);
    assert!(
        t.row(id).connects_denied > 0,
        "the agent counts the denials"
    );

    // Release, under the same set: exactly the next K datagrams arrive.
    tg_with(&keep, pins.path(), &state, &["release", "--cgroup", &rel]);
    let mut s = sink(
        topo.internet(),
        &[
            "udp-sink",
            "--listen",
            &udp_to,
            "--count",
            &K.to_string(),
            "--timeout-s",
            "20",
        ],
    );
    udp_send(pod, &udp_to, K, S);
    assert_eq!(s.finish(WAIT).expect("udp sink").last_number(), Some(K));
    let after = received();
    assert_eq!(
        (after.packets - before.packets, after.bytes - before.bytes),
        (K, K * (S + 28)),
        "after release exactly the K datagrams arrive"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&state);
}

/// Starts the agent holding `keep` (one required capability fewer) and
/// returns its error; `bypass` skips the agent's own capability check so
/// the kernel decides.
fn start_fails(keep: &[u32], bypass: bool) -> String {
    let pins = TestPinDir::new().expect("pin dir");
    let wrapper = caps::capsh_wrapper(keep, &tollgate_bin()).expect("capsh wrapper");
    let env: &[(&str, &str)] = if bypass {
        &[(tollgate::caps::SKIP_ENV, "1")]
    } else {
        &[]
    };
    match Agent::start_wrapped(pins.path(), CONFIG, env, &wrapper) {
        Ok(mut a) => {
            a.kill9();
            panic!("the agent started with only {keep:?}; log:\n{}", a.log())
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_capability_is_needed_and_its_absence_is_named() {
    privileged!("capsh");
    let all = caps::agent_caps();
    // What the kernel says without each one (the check bypassed).
    let kernel_says = [
        (
            "CAP_BPF",
            ["failed to create map", "Operation not permitted"],
        ),
        (
            "CAP_NET_ADMIN",
            ["BPF_PROG_LOAD", "Operation not permitted"],
        ),
        // The verifier rejects the egress program's pointer arithmetic.
        ("CAP_PERFMON", ["tg_skb_egress", "Permission denied"]),
    ];
    for (num, name) in tollgate::caps::REQUIRED {
        let keep: Vec<u32> = all.iter().copied().filter(|c| *c != num).collect();
        let err = start_fails(&keep, false);
        assert!(
            err.contains(&format!("missing capabilities {name}:")),
            "without {name} the agent names it: {err}"
        );
        let err = start_fails(&keep, true);
        let (_, needles) = kernel_says
            .iter()
            .find(|(n, _)| *n == name)
            .expect("expectation for each capability");
        for needle in needles {
            assert!(
                err.contains(needle),
                "without {name} the kernel refuses ({needle}): {err}"
            );
        }
        let first = err
            .lines()
            .find(|l| l.starts_with("tollgate:"))
            .unwrap_or_default();
        eprintln!("without {name}: {}", &first[..first.len().min(200)]);
    }
}
