//! Exfiltration that hides in the shape of the traffic: IPv6 only, UDP
//! that looks like QUIC, many small destinations, and a destination the
//! class is allowed to use. Each is caught on volume.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use tollgate::detect::{Detector, FindingState};
use tollgate_tests::{
    nft::{self, Count, L4, Peer},
    privileged,
    traffic::Sink,
};

use crate::lab::{Lab, Options, TRAFFIC, TRICKLE_PORT, WAIT};

const UPLOAD: u64 = 40_000_000;

/// A TCP upload of `bytes` from pod 0 to `to` (a sink that takes one
/// connection); asserts the sink got every byte.
fn upload(lab: &Lab, to: SocketAddr, bytes: u64) {
    let mut sink = Sink::start(lab.topo.internet().command(&[
        TRAFFIC,
        "tcp-sink",
        "--listen",
        &to.to_string(),
        "--once",
        "--timeout-s",
        "60",
    ]))
    .expect("tcp sink");
    lab.pod(0)
        .run(
            &[
                TRAFFIC,
                "tcp-send",
                "--to",
                &to.to_string(),
                "--bytes",
                &bytes.to_string(),
                "--timeout-s",
                "60",
            ],
            WAIT,
        )
        .expect("upload");
    let got = sink.finish(WAIT).expect("tcp sink exits");
    assert_eq!(got.last_number(), Some(bytes), "the sink got the upload");
}

/// Case 1: IPv6 only: the pod has no IPv4 address at all; learning and the
/// 40 MB upload are both over IPv6.
#[test]
fn ipv6_only_exfiltration_is_counted_and_detected() {
    privileged!("nft");
    let lab = Lab::start(&["v6exfil"], Options::default());
    let pod = lab.pod(0);
    pod.netns
        .ip(["-4", "addr", "flush", "dev", "eth0"])
        .expect("IPv4 removed from the pod");
    let net = lab.net(true);
    nft::install(&pod.netns, &[Peer::addr(net)]).expect("nft");
    lab.learn(pod, true);
    upload(&lab, SocketAddr::new(net, 9100), UPLOAD);
    let f = lab.wait_finding(pod.cgroup.id(), Detector::ExfilVolume);
    assert_eq!(f.state, FindingState::Firing);
    assert_eq!(f.destinations[0], format!("[{net}]:9100/tcp"));
    let (agent, reference) = lab.exact_external(
        "IPv6 upload",
        pod.cgroup.id(),
        &pod.netns,
        &[Peer::addr(net)],
    );
    lab.report(
        "1 IPv6-only exfiltration",
        &format!("1 TCP upload of {UPLOAD} B to [{net}]:9100 after a v6 trickle"),
        agent,
        reference,
        pod.cgroup.id(),
    );
}

/// Case 2: UDP to port 443 with random payload (QUIC-like first byte): counted
/// per datagram exactly, exfil.volume on the bulk.
#[test]
fn quic_like_udp_is_counted_exactly_and_bulk_is_detected() {
    privileged!("nft");
    const DATAGRAMS: u64 = 8000;
    const SIZE: u64 = 1200;
    let lab = Lab::start(&["quic"], Options::default());
    let pod = lab.pod(0);
    let net = lab.net(false);
    let quic = Peer::port(net, L4::Udp, 443);
    nft::install(&pod.netns, &[Peer::addr(net), quic]).expect("nft");
    lab.learn(pod, false);
    let to = SocketAddr::new(net, 443).to_string();
    let mut sink = Sink::start(lab.topo.internet().command(&[
        TRAFFIC,
        "udp-sink",
        "--listen",
        &to,
        "--count",
        &DATAGRAMS.to_string(),
        "--timeout-s",
        "15",
    ]))
    .expect("udp sink");
    pod.run(
        &[
            TRAFFIC,
            "udp-send",
            "--to",
            &to,
            "--count",
            &DATAGRAMS.to_string(),
            "--size",
            &SIZE.to_string(),
            "--random",
        ],
        WAIT,
    )
    .expect("udp-send");
    // The receiver may drop datagrams when its socket buffer overflows
    // (that is the network, not accounting): reported, not asserted.
    let received = sink
        .finish(WAIT)
        .expect("udp sink exits")
        .last_number()
        .unwrap_or(0);
    let f = lab.wait_finding(pod.cgroup.id(), Detector::ExfilVolume);
    assert_eq!(f.destinations[0], format!("{net}:443/udp"));
    let reference = nft::read(&pod.netns).expect("nft");
    assert_eq!(
        reference.egress(quic),
        Count {
            packets: DATAGRAMS,
            bytes: DATAGRAMS * (SIZE + 28)
        },
        "nft saw every datagram leave the pod"
    );
    let (agent, total) = lab.exact_external(
        "QUIC-like UDP",
        pod.cgroup.id(),
        &pod.netns,
        &[Peer::addr(net)],
    );
    let snapshot = lab.row_when(pod.cgroup.id(), |_| true);
    let d = snapshot
        .destination(net, 443, "udp")
        .expect("the agent has the 443/udp flow");
    assert_eq!(
        (d.tx_packets, d.tx_bytes),
        (DATAGRAMS, DATAGRAMS * (SIZE + 28)),
        "per-flow counts of the 443/udp flow"
    );
    lab.report(
        "2 QUIC-like UDP 443",
        &format!(
            "{DATAGRAMS} random datagrams of {SIZE} B to {net}:443/udp ({received} reached the sink)"
        ),
        agent,
        total,
        pod.cgroup.id(),
    );
}

/// The extra internet prefixes of case 8: 2001:db8:1NN::1, one /48 each.
fn spread_addr(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x100 + i, 0, 0, 0, 0, 1)
}

/// Case 8: Exfiltration spread over many destinations (24 /48 prefixes the
/// class never used, 800 kB each, below exfil.new_destination's per-prefix
/// minimum): caught by exfil.volume on the total.
#[test]
fn exfiltration_spread_over_many_destinations_is_detected_on_the_total() {
    privileged!("nft");
    const DESTS: u16 = 24;
    const EACH: u64 = 800_000;
    let lab = Lab::start(&["spread"], Options::default());
    let pod = lab.pod(0);
    let inet = lab.topo.internet();
    let net = lab.net(true);
    // The router sends 2001:db8:100::/40 to the internet host, which owns
    // one address in each /48.
    lab.topo
        .router
        .ip([
            "-6",
            "route",
            "add",
            "2001:db8:100::/40",
            "via",
            &inet.v6.to_string(),
        ])
        .expect("route");
    let mut peers = vec![Peer::addr(net)];
    for i in 0..DESTS {
        let a = spread_addr(i);
        inet.netns
            .ip([
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "eth0",
                "nodad",
            ])
            .expect("address");
        peers.push(Peer::addr(IpAddr::V6(a)));
    }
    nft::install(&pod.netns, &peers).expect("nft");
    lab.learn(pod, true);
    // One sink on the wildcard address takes the uploads one by one.
    let _sink = Sink::start(inet.command(&[
        TRAFFIC,
        "tcp-sink",
        "--listen",
        "[::]:9500",
        "--timeout-s",
        "120",
    ]))
    .expect("tcp sink");
    for i in 0..DESTS {
        let to = SocketAddr::new(IpAddr::V6(spread_addr(i)), 9500).to_string();
        pod.run(
            &[
                TRAFFIC,
                "tcp-send",
                "--to",
                &to,
                "--bytes",
                &EACH.to_string(),
                "--timeout-s",
                "30",
            ],
            WAIT,
        )
        .expect("upload to one destination");
    }
    let f = lab.wait_finding(pod.cgroup.id(), Detector::ExfilVolume);
    assert!(
        f.destinations
            .iter()
            .all(|d| d.starts_with("[2001:db8:1") && d.ends_with(":9500/tcp")),
        "{:?}",
        f.destinations
    );
    let (agent, reference) =
        lab.exact_external("spread uploads", pod.cgroup.id(), &pod.netns, &peers);
    // Per destination too: each /48's flow against nft's rule for it.
    let snapshot = lab.row_when(pod.cgroup.id(), |_| true);
    let counters = nft::read(&pod.netns).expect("nft");
    for i in 0..DESTS {
        let a = IpAddr::V6(spread_addr(i));
        let d = snapshot
            .destination(a, 9500, "tcp")
            .unwrap_or_else(|| panic!("no flow to [{a}]:9500 in {:?}", snapshot.destinations));
        let n = counters.egress(Peer::addr(a));
        assert_eq!(
            (d.tx_packets, d.tx_bytes),
            (n.packets, n.bytes),
            "flow to [{a}]:9500, agent vs nft"
        );
    }
    lab.report(
        "8 many destinations",
        &format!("{DESTS} TCP uploads of {EACH} B, one per new /48 (each flow exact too)"),
        agent,
        reference,
        pod.cgroup.id(),
    );
}

/// Case 9: Exfiltration to a destination the class uses and its egress policy
/// allows (deny everything else): the policy lets it through, exfil.volume
/// catches it.
#[test]
fn exfiltration_to_an_allowed_destination_is_detected() {
    privileged!("nft");
    let extra = format!(
        "[classes.egress.{c}]\nnetwork = \"deny\"\nallow = [{{ cidr = \"203.0.113.1/32\", ports = [{TRICKLE_PORT}] }}]\n",
        c = crate::lab::CLASS
    );
    let lab = Lab::start(
        &["allowed"],
        Options {
            extra: &extra,
            ..Options::default()
        },
    );
    let pod = lab.pod(0);
    let net = lab.net(false);
    nft::install(&pod.netns, &[Peer::addr(net)]).expect("nft");
    lab.learn(pod, false);
    // The same address and port the class trickles to, over TCP.
    upload(&lab, SocketAddr::new(net, TRICKLE_PORT), UPLOAD);
    let f = lab.wait_finding(pod.cgroup.id(), Detector::ExfilVolume);
    assert_eq!(f.destinations[0], format!("{net}:{TRICKLE_PORT}/tcp"));
    // Another port on the same host is denied by the policy (EPERM at
    // connect()): the allowlist is really in force.
    let out = pod
        .run(&[TRAFFIC, "connect", "--to", &format!("{net}:9999")], WAIT)
        .expect("connect runs");
    assert!(
        out.stdout.contains("ermission") || out.stdout.contains("not permitted"),
        "a denied destination: {}",
        out.stdout
    );
    let (agent, reference) = lab.exact_external(
        "allowed upload",
        pod.cgroup.id(),
        &pod.netns,
        &[Peer::addr(net)],
    );
    lab.report(
        "9 allowed destination",
        &format!(
            "1 TCP upload of {UPLOAD} B to {net}:{TRICKLE_PORT} (class trickles there; policy deny + allow it)"
        ),
        agent,
        reference,
        pod.cgroup.id(),
    );
}
