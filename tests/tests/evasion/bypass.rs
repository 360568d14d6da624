//! Traffic the cgroup hooks cannot see or cannot tell apart by network
//! namespace: raw frames from an AF_PACKET socket, and a hostNetwork-style
//! pod that shares the node's namespace.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Command,
};

use tollgate::detect::Detector;
use tollgate_tests::{
    agent::top_json,
    cgroup::TestCgroup,
    cmd::{self, wait_until},
    netns::Netns,
    nft::{self, Count, L4, Peer},
    privileged, rawframe,
    traffic::Sink,
};

use crate::lab::{Lab, Options, TRAFFIC, WAIT, count, row};

/// The tc program's counts for host interface `name` (`pod_egress`: from
/// the pod), once the agent lists it.
fn iface_egress(pins: &Path, name: &str) -> Option<Count> {
    let v = top_json(pins).ok()?;
    let i = v["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)?
        .clone();
    let n = |k: &str| i["pod_egress"][k].as_u64().unwrap_or(0);
    Some(Count {
        packets: n("packets"),
        bytes: n("bytes"),
    })
}

fn wait_iface(pins: &Path, name: &str, done: impl Fn(Count) -> bool) -> Count {
    let mut last = None;
    let _ = wait_until("the pod interface's tc counts", WAIT, || {
        last = iface_egress(pins, name);
        last.is_some_and(&done)
    });
    last.unwrap_or_else(|| panic!("interface {name} never appeared in the agent's snapshot"))
}

/// Case 3: An AF_PACKET sender in a pod writes whole frames to eth0, under the
/// socket layer: the cgroup hooks see nothing (the pod's cgroup counters
/// stay at zero), the tc program on the host-side veth counts every frame,
/// exactly as nftables at the internet host counts what arrives. The
/// windower books what the veth carried beyond the cgroup's counts as the
/// pod's external egress (`unattributed_egress_bytes`), so the bulk send
/// is flagged by exfil.volume on the pod.
#[test]
fn af_packet_frames_bypass_cgroup_hooks_but_tc_counts_them() {
    privileged!("nft", "python3");
    const FRAMES: u32 = 20_000;
    const SIZE: u32 = 1000;
    let lab = Lab::start(
        &["rawpkt"],
        Options {
            tc: true,
            ..Options::default()
        },
    );
    let pod = lab.pod(0);
    rawframe::quiet_pod_link(&lab.topo, pod, "p1").expect("quiet link");
    // A process in the pod's namespace: how the agent finds its veth.
    let mut sandbox = pod.command(&["sleep", "120"]).spawn().expect("sleep runs");
    let inet = lab.topo.internet();
    // At the internet host: frames from the pod's address, source port 40000.
    let from_pod = Peer::port(IpAddr::V4(pod.v4), L4::Udp, 40000);
    nft::install(&inet.netns, &[from_pod]).expect("nft");
    // The class learns from ordinary (socket) traffic of the pod.
    lab.learn(pod, false);
    let before = wait_iface(lab.pins.path(), "p1", |_| true);
    let cg_before = lab.row_when(pod.cgroup.id(), |_| true).egress.total();
    let argv =
        rawframe::sender_argv(&lab.topo, pod, "p1", inet.v4, 9200, SIZE, FRAMES).expect("argv");
    let out = pod.run(&argv, WAIT).expect("AF_PACKET sender");
    assert_eq!(out.stdout.trim(), format!("sent {FRAMES}"));
    let expected = Count {
        packets: u64::from(FRAMES),
        bytes: u64::from(FRAMES) * u64::from(SIZE + 28),
    };
    let at_inet = nft::read(&inet.netns).expect("nft").ingress(from_pod);
    assert_eq!(at_inet, expected, "every frame reached the internet host");
    let after = wait_iface(lab.pins.path(), "p1", |c| {
        c.packets - before.packets >= expected.packets
    });
    let tc = Count {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
    };
    assert_eq!(
        tc, at_inet,
        "tc on the host-side veth vs nft at the internet host"
    );
    let cg = lab.row_when(pod.cgroup.id(), |_| true).egress.total();
    assert_eq!(
        (cg.bytes - cg_before.bytes, cg.packets - cg_before.packets),
        (0, 0),
        "the cgroup hooks never saw the raw frames"
    );
    let f = lab.wait_finding(pod.cgroup.id(), Detector::ExfilVolume);
    eprintln!(
        "AF_PACKET finding: {} {:?}",
        f.detector.as_str(),
        f.evidence
    );
    let detected = lab.detectors_for(pod.cgroup.id()).join(",");
    let _ = sandbox.kill();
    let _ = sandbox.wait();
    row(
        "3 AF_PACKET sender",
        &format!(
            "{FRAMES} raw UDP frames of {SIZE} B payload on eth0 (cgroup egress stays 0; counts are tc p1 vs nft at the internet host)"
        ),
        tc,
        at_inet,
        &detected,
    );
}

/// Runs `argv` in cgroup `cg` and network namespace `ns`: a process of a
/// hostNetwork pod (its own cgroup, the node's namespace).
fn in_cgroup_and_ns(cg: &TestCgroup, ns: &Netns, argv: &[&str]) -> Command {
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

/// Case 4: A hostNetwork-style pod: its own cgroup but the node's network
/// namespace (here the "node" pod's namespace, shared with the node's own
/// cgroup). No veth of its own to count on, but the cgroup hooks attribute
/// each packet to the socket's cgroup: both cgroups are counted exactly,
/// apart, against nftables rules by port in the shared namespace, and the
/// hostNetwork pod's 40 MB upload raises exfil.volume for it, not for the
/// node.
#[test]
fn host_network_pod_is_counted_by_its_cgroup() {
    privileged!("nft");
    const DATAGRAMS: u64 = 50;
    const TCP_BYTES: u64 = 40_000_000;
    let hostnet = TestCgroup::new("hostnet").expect("cgroup");
    let lab = Lab::start(
        &["node"],
        Options {
            more_cgroups: vec![hostnet.rel_path()],
            ..Options::default()
        },
    );
    let node = lab.pod(0);
    let net = lab.net(false);
    let inet = lab.topo.internet();
    let (node_udp, host_udp, host_tcp, host_trickle) = (
        Peer::port(net, L4::Udp, 9300),
        Peer::port(net, L4::Udp, 9301),
        Peer::port(net, L4::Tcp, 9302),
        Peer::port(net, L4::Udp, crate::lab::TRICKLE_PORT),
    );
    nft::install(&node.netns, &[node_udp, host_udp, host_tcp, host_trickle]).expect("nft");
    lab.learn_from(hostnet.id(), false, |argv| {
        in_cgroup_and_ns(&hostnet, &node.netns, argv)
    });
    let mut sinks = Vec::new();
    for port in [9300u16, 9301] {
        sinks.push(
            Sink::start(inet.command(&[
                TRAFFIC,
                "udp-sink",
                "--listen",
                &SocketAddr::new(net, port).to_string(),
                "--count",
                &DATAGRAMS.to_string(),
                "--timeout-s",
                "30",
            ]))
            .expect("udp sink"),
        );
    }
    let mut tcp = Sink::start(inet.command(&[
        TRAFFIC,
        "tcp-sink",
        "--listen",
        &SocketAddr::new(net, 9302).to_string(),
        "--once",
        "--timeout-s",
        "60",
    ]))
    .expect("tcp sink");
    let udp = |port: u16, size: &str| {
        vec![
            TRAFFIC.to_string(),
            "udp-send".into(),
            "--to".into(),
            SocketAddr::new(net, port).to_string(),
            "--count".into(),
            DATAGRAMS.to_string(),
            "--size".into(),
            size.into(),
        ]
    };
    node.run(&udp(9300, "100"), WAIT).expect("node sends");
    let argv = udp(9301, "300");
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    cmd::run_cmd(in_cgroup_and_ns(&hostnet, &node.netns, &argv), WAIT)
        .expect("hostNetwork pod sends UDP");
    let to = SocketAddr::new(net, 9302).to_string();
    cmd::run_cmd(
        in_cgroup_and_ns(
            &hostnet,
            &node.netns,
            &[
                TRAFFIC,
                "tcp-send",
                "--to",
                &to,
                "--bytes",
                &TCP_BYTES.to_string(),
                "--timeout-s",
                "60",
            ],
        ),
        WAIT,
    )
    .expect("hostNetwork pod uploads");
    for mut s in sinks {
        assert_eq!(
            s.finish(WAIT).expect("udp sink").last_number(),
            Some(DATAGRAMS)
        );
    }
    assert_eq!(
        tcp.finish(WAIT).expect("tcp sink").last_number(),
        Some(TCP_BYTES)
    );
    let reference = nft::read(&node.netns).expect("nft");
    let host_out = [host_udp, host_tcp, host_trickle]
        .iter()
        .map(|p| reference.egress(*p))
        .fold(Count::default(), |a, c| Count {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        });
    let host_in = reference.ingress(host_tcp);
    let node_out = reference.egress(node_udp);
    assert_eq!(
        node_out,
        Count {
            packets: DATAGRAMS,
            bytes: DATAGRAMS * 128
        }
    );
    let hrow = lab.row_when(hostnet.id(), |r| {
        count(r.egress.external) == host_out && count(r.ingress.external) == host_in
    });
    assert_eq!(
        count(hrow.egress.external),
        host_out,
        "hostNetwork pod egress"
    );
    assert_eq!(
        count(hrow.ingress.external),
        host_in,
        "hostNetwork pod ingress"
    );
    let nrow = lab.row_when(node.cgroup.id(), |r| count(r.egress.external) == node_out);
    assert_eq!(
        count(nrow.egress.external),
        node_out,
        "the node's own cgroup"
    );
    assert_eq!(hrow.class.as_deref(), Some(crate::lab::CLASS));
    let f = lab.wait_finding(hostnet.id(), Detector::ExfilVolume);
    assert_eq!(f.destinations[0], format!("{net}:9302/tcp"));
    let node_findings = lab.detectors_for(node.cgroup.id());
    assert!(
        node_findings.is_empty(),
        "the node's own cgroup is not blamed: {node_findings:?}"
    );
    lab.report(
        "4 hostNetwork-style pod",
        &format!(
            "{DATAGRAMS} datagrams + {TCP_BYTES} B TCP upload from a cgroup in the node's netns (node's own cgroup: {DATAGRAMS} datagrams, counted apart: {} B, no finding)",
            node_out.bytes
        ),
        count(hrow.egress.external),
        host_out,
        hostnet.id(),
    );
}
