//! Attacks that hide their content or stay under per-window thresholds:
//! stratum inside TLS on port 443, a DNS tunnel (iodine), a slow drip.

use std::net::{IpAddr, SocketAddr};

use tollgate::detect::{Detector, Severity};
use tollgate_tests::{
    cmd,
    iodine::{self, Tunnel},
    nft::{self, Count, L4, Peer},
    pool::{self, PoolCerts},
    privileged,
    traffic::Sink,
};

use crate::lab::{Lab, Options, SIGNAL, TRAFFIC, TRICKLE_PORT, WAIT, count, row};

/// Case 5: A miner speaking stratum inside TLS to port 443. The kernel's
/// stratum matcher sees only ciphertext (no marker, no mining.stratum) and
/// 443 is no pool port; mining.profile catches the shape: CPU near the
/// limit for 3 windows, one long-lived low-volume external connection.
/// This host's cgroup v2 has no cpu controller (no cpu.max), so the pod is
/// measured against `profile_unlimited_cores` = 0.25.
#[test]
fn stratum_over_tls_on_443_is_caught_by_its_profile() {
    privileged!("nft", "openssl");
    const SHARES: u64 = 60;
    let lab = Lab::start(
        &["tlsminer"],
        Options {
            detect: "profile_windows = 3\nprofile_min_conn_age = \"2s\"\nprofile_unlimited_cores = 0.25\ngmm_refit_windows = 100000",
            learning_windows: 12,
            ..Options::default()
        },
    );
    let pod = lab.pod(0);
    let net = lab.net(false);
    let pool_addr = SocketAddr::new(net, 443);
    nft::install(&pod.netns, &[Peer::addr(net)]).expect("nft");
    let certs = PoolCerts::new(net).expect("pool certificates");
    lab.learn(pod, false);
    let stub =
        pool::start_tls_pool(lab.topo.internet(), SIGNAL, pool_addr, &certs, 90).expect("TLS pool");
    // One share every 300 ms of busy CPU: about 18 s of mining at most.
    let mut miner = pod
        .command(&[
            SIGNAL,
            "stratum-client",
            "--to",
            &pool_addr.to_string(),
            "--shares",
            &SHARES.to_string(),
            "--interval-ms",
            "300",
            "--timeout-s",
            "80",
            "--tls-ca",
            &certs.ca().display().to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("miner starts");
    let found = lab.wait_finding_or_none(pod.cgroup.id(), Detector::MiningProfile, &mut miner);
    let out = cmd::wait_timeout(miner, WAIT, "stratum-client over TLS").expect("miner exits");
    let out = cmd::check("stratum-client over TLS", out).expect("miner finished every share");
    let f = found.unwrap_or_else(|| {
        panic!(
            "no mining.profile finding for the TLS miner; findings {:#?}; log:\n{}",
            lab.findings(),
            lab.agent.log()
        )
    });
    assert!(
        out.stdout.contains(&format!("shares {SHARES}")),
        "{}",
        out.stdout
    );
    // The miner has closed its session; the stub would idle until its
    // own timeout, so it is stopped (killed by pid) here.
    drop(stub);
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.destinations, [format!("{pool_addr}/tcp")]);
    let (agent, reference) =
        lab.exact_external("TLS miner", pod.cgroup.id(), &pod.netns, &[Peer::addr(net)]);
    let r = lab.row_when(pod.cgroup.id(), |_| true);
    assert_eq!(r.stratum_markers, 0, "the payload is encrypted: no marker");
    let detected = lab.detectors_for(pod.cgroup.id());
    assert!(
        !detected.contains(&"mining.stratum") && !detected.contains(&"mining.pool_port"),
        "{detected:?}"
    );
    lab.report(
        "5 stratum over TLS :443",
        &format!(
            "1 TLS session, subscribe + authorize + {SHARES} shares, 300 ms busy CPU each (stratum markers seen: 0)"
        ),
        agent,
        reference,
        pod.cgroup.id(),
    );
}

/// Case 6: A DNS tunnel with iodine: iodined is the authoritative server of
/// the test domain in the internet namespace, iodine runs in the pod, and
/// a TCP upload goes through the tunnel. Every query is counted (the
/// agent's DNS query count equals nft's datagrams to port 53) and
/// exfil.dns_tunnel fires on rate, name length and entropy together.
#[test]
fn iodine_dns_tunnel_is_counted_and_detected() {
    privileged!("nft", "iodine", "iodined");
    if let Some(why) = iodine::missing() {
        panic!("{why}");
    }
    const BYTES: u64 = 40_000;
    let lab = Lab::start(&["iodine"], Options::default());
    let pod = lab.pod(0);
    let inet = lab.topo.internet();
    let net = lab.net(false);
    let dns = Peer::port(net, L4::Udp, 53);
    let trickle = Peer::port(net, L4::Udp, TRICKLE_PORT);
    let inner = Peer::addr(IpAddr::V4(iodine::SERVER_TUN));
    nft::install(&pod.netns, &[Peer::addr(net), dns, trickle, inner]).expect("nft");
    lab.learn(pod, false);
    let mut tunnel =
        Tunnel::start(inet, pod, WAIT, std::time::Duration::from_secs(200)).expect("iodine tunnel");
    let to = SocketAddr::new(IpAddr::V4(iodine::SERVER_TUN), 9400).to_string();
    let mut sink = Sink::start(inet.command(&[
        TRAFFIC,
        "tcp-sink",
        "--listen",
        &to,
        "--once",
        "--timeout-s",
        "175",
    ]))
    .expect("tcp sink behind the tunnel");
    let upload = pod
        .spawn(&[
            TRAFFIC,
            "tcp-send",
            "--to",
            &to,
            "--bytes",
            &BYTES.to_string(),
            "--timeout-s",
            "170",
        ])
        .expect("upload through the tunnel");
    let f = lab.wait_finding(pod.cgroup.id(), Detector::ExfilDnsTunnel);
    // The upload finishes (every byte acknowledged through the tunnel)
    // before the tunnel stops, so no packet is in flight when counting.
    let out = cmd::wait_timeout(upload, WAIT * 2, "upload through the tunnel").expect("upload");
    cmd::check("upload through the tunnel", out).expect("upload completes");
    assert_eq!(sink.finish(WAIT).expect("sink").last_number(), Some(BYTES));
    tunnel.stop();
    assert_eq!(f.destinations, [format!("{net}:53/udp")]);
    let reference = nft::read(&pod.netns).expect("nft");
    // By port, not by address: the ICMP errors of the tunnel's teardown
    // (see `Tunnel::stop`) come from namespaces' control sockets, not from
    // the pod's sockets, and the cgroup hooks rightly leave them out.
    let (agent, total) = lab.exact_external("iodine", pod.cgroup.id(), &pod.netns, &[dns, trickle]);
    let all = reference.egress(Peer::addr(net));
    let icmp = all.packets - total.packets;
    let r = lab.row_when(pod.cgroup.id(), |_| true);
    let queries = reference.egress(dns).packets;
    assert!(queries > 0);
    let d = r.destination(net, 53, "udp").expect("the 53/udp flow");
    assert_eq!(
        Count {
            packets: d.tx_packets,
            bytes: d.tx_bytes
        },
        reference.egress(dns),
        "queries to port 53, agent flow vs nft"
    );
    assert_eq!(
        r.dns_queries, queries,
        "every datagram to port 53 counted as a query"
    );
    assert_eq!(
        count(r.egress.internal),
        reference.egress(inner),
        "the tunnel's inner packets (dns0, internal)"
    );
    lab.report(
        "6 iodine DNS tunnel",
        &format!(
            "TCP upload of {BYTES} B through iodine: {queries} DNS queries, inner {} pkts ({icmp} ICMP error(s) of the netns not the pod's)",
            reference.egress(inner).packets
        ),
        agent,
        total,
        pod.cgroup.id(),
    );
}

/// Case 7: A slow drip: 2,000-byte datagrams every 100 ms (about 20 kB/s),
/// far below exfil.volume's per-window minimum (256 KiB/s), to the prefix
/// the class trickles to (so not a new destination). With a 30 s drip
/// horizon and a 150 kB floor the cumulative bytes per (pod, prefix)
/// cross the line after about 8 s: exfil.slow_drip, and nothing else.
#[test]
fn slow_drip_below_every_window_threshold_is_detected() {
    privileged!("nft");
    const DATAGRAMS: u64 = 250;
    const SIZE: u64 = 2000;
    let lab = Lab::start(
        &["drip"],
        Options {
            detect: "drip_horizon = \"30s\"\ndrip_min_bytes = 150000\ndrip_factor = 2.0",
            ..Options::default()
        },
    );
    let pod = lab.pod(0);
    let net = lab.net(false);
    nft::install(&pod.netns, &[Peer::addr(net)]).expect("nft");
    lab.learn(pod, false);
    let to = SocketAddr::new(net, 9700).to_string();
    let mut sink = Sink::start(lab.topo.internet().command(&[
        TRAFFIC,
        "udp-sink",
        "--listen",
        &to,
        "--count",
        &DATAGRAMS.to_string(),
        "--timeout-s",
        "60",
    ]))
    .expect("udp sink");
    let mut drip = pod
        .spawn(&[
            TRAFFIC,
            "udp-send",
            "--to",
            &to,
            "--count",
            &DATAGRAMS.to_string(),
            "--size",
            &SIZE.to_string(),
            "--interval-ms",
            "100",
            "--timeout-s",
            "60",
        ])
        .expect("drip");
    let found = lab.wait_finding_or_none(pod.cgroup.id(), Detector::ExfilSlowDrip, &mut drip);
    let out = cmd::wait_timeout(drip, WAIT, "drip").expect("drip exits");
    cmd::check("drip", out).expect("drip sent every datagram");
    assert_eq!(
        sink.finish(WAIT).expect("sink").last_number(),
        Some(DATAGRAMS)
    );
    let (agent, reference) =
        lab.exact_external("slow drip", pod.cgroup.id(), &pod.netns, &[Peer::addr(net)]);
    let detected = lab.detectors_for(pod.cgroup.id());
    row(
        "7 slow drip",
        &format!("{DATAGRAMS} datagrams of {SIZE} B every 100 ms to {to}/udp (~20 kB/s)"),
        agent,
        reference,
        &if detected.is_empty() {
            "NONE".to_string()
        } else {
            detected.join(",")
        },
    );
    crate::lab::summaries(&lab, pod.cgroup.id());
    assert!(
        !detected.contains(&"exfil.volume"),
        "the drip stays under the per-window volume threshold: {detected:?}"
    );
    let f = found.unwrap_or_else(|| {
        panic!(
            "exfil.slow_drip did not fire for the drip (detectors that did: {detected:?}); \
             findings {:#?}; log:\n{}",
            lab.findings(),
            lab.agent.log()
        )
    });
    assert_eq!(f.destinations, [format!("{to}/udp")]);
}
