//! Privileged enforcement tests beyond the cgroup hooks: the tc programs
//! on pods' host-side interfaces (per-interface counts exact against
//! nftables, the quarantine drop for a workload outside the pod's cgroup
//! as in a VM sandbox, SIGKILL of the agent, detach next to a foreign
//! clsact filter), how fast a TCP stream stops, and a per-class egress
//! policy with an allowlist.
//!
//! The test topology puts each pod's host-side veth in the router
//! namespace, so the agent is pointed there with `tc.netns`.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use serde_json::Value;
use tollgate_tests::{
    agent::{Agent, TestPinDir, tollgate_bin, top_json},
    cgroup::TestCgroup,
    cmd,
    netns::Netns,
    nft::{self, Peer},
    pod::Pod,
    privileged,
    topology::Topology,
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);

/// Runs `tollgate <args> --config C --pin-dir P --state-dir S`; stdout.
fn tg(cfg: &Path, pins: &Path, state: &Path, args: &[&str]) -> String {
    let out = Command::new(tollgate_bin())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--pin-dir")
        .arg(pins)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("tollgate runs");
    assert!(
        out.status.success(),
        "tollgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "tollgate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Agent config and state dir for a test, removed on drop.
struct Setup {
    state: std::path::PathBuf,
    config_file: std::path::PathBuf,
    config: String,
}

impl Setup {
    fn new(router: &Netns, extra: &str) -> Setup {
        let suffix = tollgate_tests::unique_suffix();
        let state = std::env::temp_dir().join(format!("tg-enforce-state-{suffix}"));
        let config = format!(
            "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n\n[tc]\nnetns = \"/run/netns/{}\"\n{extra}",
            state.display(),
            router.name()
        );
        let config_file = std::env::temp_dir().join(format!("tg-enforce-{suffix}.toml"));
        std::fs::write(&config_file, &config).expect("config written");
        Setup {
            state,
            config_file,
            config,
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_file(&self.config_file);
    }
}

/// A command that joins cgroup `cg`, then runs `argv` in namespace `ns`:
/// a workload in the pod's network namespace but outside its cgroup, as
/// a VM sandbox's guest is.
fn outside_cgroup(cg: &TestCgroup, ns: &Netns, argv: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.args([
        "-c",
        r#"cg="$1"; ns="$2"; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#,
        "sh",
    ])
    .arg(cg.path())
    .arg(ns.name())
    .args(argv);
    c
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().expect("spawns");
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counters of every IPv4 packet leaving / delivered in `ns` (nft output
/// and input hooks): the reference for the tc counts.
fn install_all_counters(ns: &Netns) {
    let rules = "table inet tgqk\ndelete table inet tgqk\ntable inet tgqk {\n  chain o {\n    type filter hook output priority 0; policy accept;\n    meta nfproto ipv4 counter comment \"out\"\n  }\n  chain i {\n    type filter hook input priority 0; policy accept;\n    meta nfproto ipv4 counter comment \"in\"\n  }\n}\n";
    cmd::run_with_stdin("ip", ["netns", "exec", ns.name(), "nft", "-f", "-"], rules)
        .expect("nft ruleset");
}

/// (out packets, out bytes, in packets, in bytes) from `install_all_counters`.
fn all_counters(ns: &Netns) -> (u64, u64, u64, u64) {
    let out = ns
        .exec(&["nft", "-j", "list", "table", "inet", "tgqk"])
        .expect("nft list");
    let v: Value = serde_json::from_str(&out).expect("nft json");
    let mut r = (0, 0, 0, 0);
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let Some(c) = rule["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|e| e.get("counter"))
        else {
            continue;
        };
        let (p, b) = (
            c["packets"].as_u64().unwrap_or(0),
            c["bytes"].as_u64().unwrap_or(0),
        );
        match rule["comment"].as_str() {
            Some("out") => (r.0, r.1) = (p, b),
            Some("in") => (r.2, r.3) = (p, b),
            _ => {}
        }
    }
    r
}

fn mac(ns: &Netns, ifname: &str) -> String {
    let out = ns
        .exec(&["ip", "-j", "link", "show", ifname])
        .expect("ip link");
    let v: Value = serde_json::from_str(&out).expect("ip json");
    v[0]["address"].as_str().expect("mac").to_owned()
}

/// IPv4 only, and permanent neighbours on both ends of the pod's veth: no
/// IPv6 housekeeping and no ARP, so every frame on the veth is the test's.
fn quiet_pod_link(topo: &Topology, pod: &Pod, router_if: &str) {
    pod.netns
        .sysctls(&[
            ("net/ipv6/conf/all/disable_ipv6", "1"),
            ("net/ipv6/conf/eth0/disable_ipv6", "1"),
        ])
        .expect("sysctl");
    let gw = format!("198.18.{}.1", pod.v4.octets()[2]);
    pod.netns
        .ip([
            "neigh",
            "replace",
            &gw,
            "lladdr",
            &mac(&topo.router, router_if),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
        .expect("neigh");
    topo.router
        .ip([
            "neigh",
            "replace",
            &pod.v4.to_string(),
            "lladdr",
            &mac(&pod.netns, "eth0"),
            "dev",
            router_if,
            "nud",
            "permanent",
        ])
        .expect("neigh");
}

/// The snapshot's row for host interface `name`, once the agent lists it.
fn iface(pins: &Path, name: &str) -> Option<Value> {
    let v = top_json(pins).ok()?;
    v["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
}

fn wait_iface(pins: &Path, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let _ = cmd::wait_until("interface in snapshot", WAIT, || match iface(pins, name) {
        Some(v) => {
            let ok = done(&v);
            last = Some(v);
            ok
        }
        None => false,
    });
    last.unwrap_or_else(|| panic!("interface {name} never appeared in the snapshot"))
}

fn n(v: &Value, dir: &str, what: &str) -> u64 {
    v[dir][what].as_u64().unwrap_or(0)
}

fn filters(router: &Netns, ifname: &str, dir: &str) -> String {
    router
        .exec(&["tc", "filter", "show", "dev", ifname, dir])
        .unwrap_or_default()
}

/// Keeps a process in the pod's cgroup and namespace (the sandbox's
/// "pause"/shim process through which the agent finds the namespace).
fn sandbox_process(pod: &Pod) -> std::process::Child {
    pod.command(&["sleep", "120"]).spawn().expect("sleep runs")
}

/// The tc path alone: a workload in the pod's namespace but outside its
/// cgroup (a VM sandbox) is counted exactly per interface, and is cut off
/// by the quarantine of the pod's cgroup; the drop holds after a SIGKILL of
/// the agent; `detach` removes the tcx links and traffic flows again.
#[test]
fn tc_counts_exactly_and_cuts_off_a_vm_sandbox() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let a = topo.pod(0);
    quiet_pod_link(&topo, a, "p1");
    let setup = Setup::new(&topo.router, "");
    let pins = TestPinDir::new().expect("pin dir");
    let mut agent = Agent::start(pins.path(), &setup.config).expect("agent starts");
    let mut sandbox = sandbox_process(a);
    let vm = TestCgroup::new("vm").expect("cgroup");
    install_all_counters(&a.netns);
    nft::install(&topo.internet().netns, &[Peer::addr(IpAddr::V4(a.v4))]).expect("nft");
    let before = wait_iface(pins.path(), "p1", |_| true);
    assert!(
        agent.log().contains("tc programs attached"),
        "{}",
        agent.log()
    );
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 9).to_string();
    let send = |count: &str| {
        outside_cgroup(
            &vm,
            &a.netns,
            &[
                TRAFFIC, "udp-send", "--to", &to, "--count", count, "--size", "100",
            ],
        )
    };
    let (o0, ob0, i0, ib0) = all_counters(&a.netns);
    run_ok(send("50"), "udp-send from the VM workload");
    let (o1, ob1, i1, ib1) = all_counters(&a.netns);
    assert!(o1 - o0 >= 50, "nft saw the 50 datagrams");
    let b = (
        n(&before, "pod_egress", "packets"),
        n(&before, "pod_egress", "bytes"),
    );
    let bi = (
        n(&before, "pod_ingress", "packets"),
        n(&before, "pod_ingress", "bytes"),
    );
    let got = wait_iface(pins.path(), "p1", |v| {
        n(v, "pod_egress", "packets") - b.0 >= o1 - o0
            && n(v, "pod_ingress", "packets") - bi.0 >= i1 - i0
    });
    let eg = (
        n(&got, "pod_egress", "packets") - b.0,
        n(&got, "pod_egress", "bytes") - b.1,
    );
    let ing = (
        n(&got, "pod_ingress", "packets") - bi.0,
        n(&got, "pod_ingress", "bytes") - bi.1,
    );
    eprintln!(
        "tc p1: pod egress {eg:?} (nft {:?}), pod ingress {ing:?} (nft {:?})",
        (o1 - o0, ob1 - ob0),
        (i1 - i0, ib1 - ib0)
    );
    assert_eq!(
        eg,
        (o1 - o0, ob1 - ob0),
        "egress packets and L3 bytes exact"
    );
    assert_eq!(
        ing,
        (i1 - i0, ib1 - ib0),
        "ingress packets and L3 bytes exact"
    );

    let rel = a.cgroup.rel_path();
    tg(
        &setup.config_file,
        pins.path(),
        &setup.state,
        &["quarantine", "--cgroup", &rel, "--reason", "vm sandbox"],
    );
    let at_cut = nft::read(&topo.internet().netns)
        .expect("nft")
        .ingress(Peer::addr(IpAddr::V4(a.v4)));
    let (o2, ob2, _, _) = all_counters(&a.netns);
    // Not in the quarantined cgroup: the cgroup hooks let the send through.
    run_ok(
        send("20"),
        "udp-send from the VM workload while quarantined",
    );
    let (o3, ob3, _, _) = all_counters(&a.netns);
    assert_eq!(o3 - o2, 20, "the workload sent 20 datagrams");
    let q = wait_iface(pins.path(), "p1", |v| {
        v["quarantined"] == true && n(v, "dropped_egress", "packets") >= 20
    });
    assert_eq!(q["quarantined"], true, "{q}");
    assert_eq!(
        (
            n(&q, "dropped_egress", "packets"),
            n(&q, "dropped_egress", "bytes")
        ),
        (o3 - o2, ob3 - ob2),
        "every frame from the pod dropped and counted exactly"
    );
    assert_eq!(
        nft::read(&topo.internet().netns)
            .expect("nft")
            .ingress(Peer::addr(IpAddr::V4(a.v4))),
        at_cut,
        "nothing from the pod reached the internet host"
    );

    agent.kill9();
    run_ok(send("5"), "udp-send with the agent dead");
    assert_eq!(
        nft::read(&topo.internet().netns)
            .expect("nft")
            .ingress(Peer::addr(IpAddr::V4(a.v4))),
        at_cut,
        "the pinned tcx links keep dropping with no agent"
    );
    // A restart swaps its programs into the pinned links: still one of
    // ours per direction, still dropping.
    let agent2 = Agent::start(pins.path(), &setup.config).expect("agent restarts");
    wait_iface(pins.path(), "p1", |v| v["quarantined"] == true);
    for (kind, name) in [
        (TcAttachType::Ingress, "tg_tc_from_pod"),
        (TcAttachType::Egress, "tg_tc_to_pod"),
    ] {
        let router = Path::new("/run/netns").join(topo.router.name());
        let names: Vec<String> = tollgate::netdev::in_netns(&router, || {
            SchedClassifier::query_tcx("p1", kind).map(|(_, progs)| {
                progs
                    .iter()
                    .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                    .collect()
            })
        })
        .expect("setns")
        .expect("query tcx");
        assert_eq!(
            names.iter().filter(|n| n.as_str() == name).count(),
            1,
            "one {name} on p1: {names:?}"
        );
    }
    run_ok(send("5"), "udp-send after the restart");
    assert_eq!(
        nft::read(&topo.internet().netns)
            .expect("nft")
            .ingress(Peer::addr(IpAddr::V4(a.v4))),
        at_cut,
        "still dropped after the restart"
    );
    drop(agent2);

    tg(&setup.config_file, pins.path(), &setup.state, &["detach"]);
    assert!(!pins.path().join("v1/links/tc").exists());
    run_ok(send("5"), "udp-send after detach");
    let after = nft::read(&topo.internet().netns)
        .expect("nft")
        .ingress(Peer::addr(IpAddr::V4(a.v4)));
    assert_eq!(after.packets, at_cut.packets + 5, "detach removed the drop");
    let _ = sandbox.kill();
    let _ = sandbox.wait();
}

/// clsact mode: our filter sits next to a foreign one (the CNI's) at its
/// own priority; drops hold through a SIGKILL; detach deletes only ours.
#[test]
fn clsact_filters_survive_sigkill_and_detach_leaves_foreign_filters() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let a = topo.pod(0);
    // The "CNI" filter: classic BPF that never matches (continue).
    for dir in ["ingress", "egress"] {
        if dir == "ingress" {
            topo.router
                .exec(&["tc", "qdisc", "add", "dev", "p1", "clsact"])
                .expect("clsact");
        }
        topo.router
            .exec(&[
                "tc",
                "filter",
                "add",
                "dev",
                "p1",
                dir,
                "prio",
                "100",
                "handle",
                "1",
                "protocol",
                "all",
                "bpf",
                "bytecode",
                "1,6 0 0 0,",
            ])
            .expect("foreign filter");
    }
    let setup = Setup::new(&topo.router, "mode = \"clsact\"\npriority = 7\n");
    let pins = TestPinDir::new().expect("pin dir");
    let mut agent = Agent::start(pins.path(), &setup.config).expect("agent starts");
    let mut sandbox = sandbox_process(a);
    let vm = TestCgroup::new("vm").expect("cgroup");
    nft::install(&topo.internet().netns, &[Peer::addr(IpAddr::V4(a.v4))]).expect("nft");
    wait_iface(pins.path(), "p1", |_| true);
    for dir in ["ingress", "egress"] {
        let f = filters(&topo.router, "p1", dir);
        assert!(
            f.contains("pref 7 bpf") && f.contains("tg_tc_"),
            "ours on {dir}: {f}"
        );
        assert!(f.contains("pref 100 bpf"), "foreign kept on {dir}: {f}");
    }
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 9).to_string();
    let send = |count: &str| {
        outside_cgroup(
            &vm,
            &a.netns,
            &[
                TRAFFIC, "udp-send", "--to", &to, "--count", count, "--size", "64",
            ],
        )
    };
    let received = || {
        nft::read(&topo.internet().netns)
            .expect("nft")
            .ingress(Peer::addr(IpAddr::V4(a.v4)))
            .packets
    };
    run_ok(send("3"), "send");
    assert_eq!(received(), 3);
    tg(
        &setup.config_file,
        pins.path(),
        &setup.state,
        &[
            "quarantine",
            "--cgroup",
            &a.cgroup.rel_path(),
            "--reason",
            "clsact",
        ],
    );
    run_ok(send("3"), "send while quarantined");
    assert_eq!(received(), 3, "dropped by our clsact filter");
    agent.kill9();
    run_ok(send("3"), "send with the agent dead");
    assert_eq!(received(), 3, "netlink filters outlive the agent");
    // A restart finds its filters again (replaced in place, not doubled).
    let agent2 = Agent::start(pins.path(), &setup.config).expect("agent restarts");
    wait_iface(pins.path(), "p1", |v| v["quarantined"] == true);
    let f = filters(&topo.router, "p1", "ingress");
    assert_eq!(
        f.lines().filter(|l| l.contains("tg_tc_from_pod")).count(),
        1,
        "one filter of ours: {f}"
    );
    drop(agent2);
    tg(&setup.config_file, pins.path(), &setup.state, &["detach"]);
    for dir in ["ingress", "egress"] {
        let f = filters(&topo.router, "p1", dir);
        assert!(!f.contains("tg_tc_"), "ours gone from {dir}: {f}");
        assert!(
            f.contains("pref 100 bpf"),
            "foreign untouched on {dir}: {f}"
        );
    }
    run_ok(send("3"), "send after detach");
    assert_eq!(received(), 6, "traffic flows again");
    let _ = sandbox.kill();
    let _ = sandbox.wait();
}

/// A pod streaming TCP to the internet host stops within a round trip of
/// the quarantine: bytes that still arrive after the CLI returned are
/// measured and printed; none arrive later.
#[test]
fn tcp_stream_stops_within_a_round_trip() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let a = topo.pod(0);
    let setup = Setup::new(&topo.router, "");
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), &setup.config).expect("agent starts");
    let va = IpAddr::V4(a.v4);
    nft::install(&topo.internet().netns, &[Peer::addr(va)]).expect("nft");
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 9600).to_string();
    let mut sink = Sink::start(
        topo.internet()
            .command(&[TRAFFIC, "tcp-sink", "--listen", &to, "--once"]),
    )
    .expect("sink");
    let mut stream = a
        .command(&[TRAFFIC, "tcp-stream", "--to", &to, "--seconds", "8"])
        .spawn()
        .expect("stream");
    wait_iface(pins.path(), "p1", |v| n(v, "pod_egress", "bytes") > 100_000);
    let received = || {
        nft::read(&topo.internet().netns)
            .expect("nft")
            .ingress(Peer::addr(va))
            .bytes
    };
    let t0 = Instant::now();
    tg(
        &setup.config_file,
        pins.path(),
        &setup.state,
        &[
            "quarantine",
            "--cgroup",
            &a.cgroup.rel_path(),
            "--reason",
            "stream",
        ],
    );
    let cmd_ms = t0.elapsed().as_secs_f64() * 1e3;
    let at_cut = received();
    std::thread::sleep(Duration::from_millis(20));
    let after_20ms = received();
    std::thread::sleep(Duration::from_millis(1000));
    let after_1s = received();
    eprintln!(
        "quarantine CLI {cmd_ms:.1} ms; bytes at the internet host after the CLI returned: {} in the first 20 ms, {} in the next second",
        after_20ms - at_cut,
        after_1s - after_20ms
    );
    assert_eq!(
        after_1s, after_20ms,
        "nothing arrives once a round trip has passed"
    );
    let row = wait_iface(pins.path(), "p1", |v| n(v, "dropped_egress", "packets") > 0);
    assert!(row["quarantined"] == true);
    let _ = stream.kill();
    let _ = stream.wait();
    let _ = sink.finish(Duration::from_secs(1));
}

/// A class with `network = "deny"` reaches only its allowlist: the
/// allowed CIDR and port works, other connects fail with EPERM, raw sends
/// are dropped; every denial is reported with its destination.
#[test]
fn deny_policy_class_reaches_only_its_allowlist() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let a = topo.pod(0);
    let svc = topo.service().v4;
    let inet = topo.internet().v4;
    let extra = format!(
        "\n[[classes.path_rules]]\nglob = \"{}\"\nclass = \"sandbox\"\n\n[classes.egress.sandbox]\nnetwork = \"deny\"\nallow = [{{ cidr = \"{svc}/32\", ports = [9700] }}]\n",
        a.cgroup.rel_path()
    );
    let setup = Setup::new(&topo.router, &extra);
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), &setup.config).expect("agent starts");
    nft::install(&topo.internet().netns, &[Peer::addr(IpAddr::V4(a.v4))]).expect("nft");
    let allowed = SocketAddr::new(IpAddr::V4(svc), 9700).to_string();
    // The pod's first datagram makes the agent see (and classify) it.
    run_ok(
        a.command(&[
            TRAFFIC, "udp-send", "--to", &allowed, "--count", "1", "--size", "8",
        ]),
        "allowed udp",
    );
    let id = a.cgroup.id();
    let mut applied = false;
    let _ = cmd::wait_until("policy applied", WAIT, || {
        let Ok(v) = top_json(pins.path()) else {
            return false;
        };
        applied = v["cgroups"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["cgroup_id"] == id && r["egress_policy"] == "sandbox");
        applied
    });
    assert!(applied, "the agent applied the sandbox policy to the pod");

    let mut sink = Sink::start(
        topo.service()
            .command(&[TRAFFIC, "tcp-sink", "--listen", &allowed, "--once"]),
    )
    .expect("sink");
    let out = run_ok(
        a.command(&[TRAFFIC, "tcp-send", "--to", &allowed, "--bytes", "10000"]),
        "allowed tcp",
    );
    let got = sink.finish(WAIT).expect("sink finishes");
    assert!(
        got.stdout.contains("10000"),
        "sink got it all: {} / {out}",
        got.stdout
    );

    let eperm = |to: &str, proto: &str| {
        let out = a
            .run(&[TRAFFIC, "connect", "--to", to, "--proto", proto], WAIT)
            .expect("connect runs");
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("Operation not permitted") || text.contains("os error 1"),
            "{proto} {to} refused with EPERM: {text}"
        );
    };
    let inet_tcp = SocketAddr::new(IpAddr::V4(inet), 9700).to_string();
    let other_port = SocketAddr::new(IpAddr::V4(svc), 9701).to_string();
    let inet_udp = SocketAddr::new(IpAddr::V4(inet), 53).to_string();
    eperm(&inet_tcp, "tcp");
    eperm(&other_port, "tcp");
    eperm(&inet_udp, "udp");
    // Raw sends bypass connect/sendmsg: dropped in cgroup_skb egress.
    let raw = a
        .run(
            &[
                "python3",
                "-c",
                &format!(
                    "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\nn=0\nfor i in range(3):\n  try:\n    s.sendto(b'\\x08\\x00\\xf7\\xff\\x00\\x00\\x00\\x00', ('{inet}', 0))\n  except OSError as e:\n    n+=1\nprint('refused', n)\n"
                ),
            ],
            WAIT,
        )
        .expect("raw send runs");
    eprintln!("raw ICMP sends: {}", raw.stdout.trim());
    assert_eq!(
        nft::read(&topo.internet().netns)
            .expect("nft")
            .ingress(Peer::addr(IpAddr::V4(a.v4)))
            .packets,
        0,
        "nothing reached the internet host"
    );
    let denied = |v: &Value, addr: &str, port: u64, proto: &str| -> Option<Value> {
        v["denied"]
            .as_array()?
            .iter()
            .find(|d| {
                d["cgroup_id"] == id
                    && d["addr"] == addr
                    && d["port"] == port
                    && d["proto"] == proto
            })
            .cloned()
    };
    let inet_s = inet.to_string();
    let svc_s = svc.to_string();
    let mut last = Value::Null;
    let _ = cmd::wait_until("denials reported", WAIT, || {
        let Ok(v) = top_json(pins.path()) else {
            return false;
        };
        let ok = denied(&v, &inet_s, 0, "icmp").is_some_and(|d| d["dropped"]["packets"] == 3);
        last = v;
        ok
    });
    let d = denied(&last, &inet_s, 9700, "tcp").expect("tcp to the internet reported");
    assert_eq!(d["calls"], 1, "{d}");
    let d = denied(&last, &svc_s, 9701, "tcp").expect("other port reported");
    assert_eq!(d["calls"], 1, "{d}");
    let d = denied(&last, &inet_s, 53, "udp").expect("udp reported");
    assert_eq!(d["calls"], 1, "{d}");
    let d = denied(&last, &inet_s, 0, "icmp").expect("raw icmp reported");
    assert_eq!(d["dropped"]["packets"], 3, "{d}");
    assert_eq!(
        d["dropped"]["bytes"],
        3 * 28,
        "20-byte IP + 8-byte ICMP each: {d}"
    );
    let row = last["cgroups"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["cgroup_id"] == id)
        .cloned()
        .expect("row");
    assert_eq!(row["connects_denied"], 3, "{row}");
    assert_eq!(row["policy_denied_calls"], 3, "{row}");
    assert_eq!(row["policy_dropped"]["packets"], 3, "{row}");
}

/// A pod interface that disappears is cleaned up: its tcx link pins and
/// its counters go, and it leaves the snapshot.
#[test]
fn removed_interfaces_are_cleaned_up() {
    privileged!();
    let topo = Topology::builder().pods(1).build().expect("topology");
    let a = topo.pod(0);
    let setup = Setup::new(&topo.router, "");
    let pins = TestPinDir::new().expect("pin dir");
    let agent = Agent::start(pins.path(), &setup.config).expect("agent starts");
    let mut sandbox = sandbox_process(a);
    let row = wait_iface(pins.path(), "p1", |_| true);
    let ifindex = row["ifindex"].as_u64().expect("ifindex");
    let pin = pins.path().join(format!("v1/links/tc/{ifindex}_from"));
    cmd::wait_until("tcx link pinned", WAIT, || pin.exists()).expect("pinned");
    topo.router
        .ip(["link", "del", "p1"])
        .expect("deleting the pod's veth");
    let gone = cmd::wait_until("cleanup", WAIT, || {
        !pin.exists()
            && !pins
                .path()
                .join(format!("v1/links/tc/{ifindex}_to"))
                .exists()
            && iface(pins.path(), "p1").is_none()
    });
    assert!(
        gone.is_ok(),
        "pins and snapshot row gone; log:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("pod interfaces removed"),
        "{}",
        agent.log()
    );
    let _ = sandbox.kill();
    let _ = sandbox.wait();
}
