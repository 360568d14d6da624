//! Tests of the harness itself: the topology routes, pods really run in
//! their cgroup and namespace, nft reference counters are exact for UDP,
//! and everything is gone after Drop. No agent involved.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tollgate_tests::cgroup::TestCgroup;
use tollgate_tests::netns::Netns;
use tollgate_tests::nft::{self, Count, L4, Peer};
use tollgate_tests::privileged;
use tollgate_tests::topology::{Host, Topology};
use tollgate_tests::traffic::Sink;

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(20);

/// L3 + L4 header bytes added to each UDP payload.
fn udp_overhead(addr: IpAddr) -> u64 {
    if addr.is_ipv4() { 20 + 8 } else { 40 + 8 }
}

fn udp_sink(host: &Host, addr: IpAddr, port: u16, count: u64) -> Sink {
    let listen = SocketAddr::new(addr, port).to_string();
    let c = host.command(&[
        TRAFFIC,
        "udp-sink",
        "--listen",
        &listen,
        "--count",
        &count.to_string(),
        "--timeout-s",
        "10",
    ]);
    Sink::start(c).expect("udp sink starts")
}

#[test]
fn udp_counts_are_exact_and_everything_is_torn_down() {
    privileged!("nft");
    const K: u64 = 10;
    const S: u64 = 100;
    const PORT: u16 = 9000;

    let topo = Topology::builder().pods(2).build().expect("topology");
    let pod = topo.pod(0);
    let targets = [
        (topo.internet(), IpAddr::V4(topo.internet().v4)),
        (topo.internet(), IpAddr::V6(topo.internet().v6)),
        (topo.service(), IpAddr::V4(topo.service().v4)),
        (topo.service(), IpAddr::V6(topo.service().v6)),
    ];
    let peers: Vec<Peer> = targets.iter().map(|(_, a)| Peer::addr(*a)).collect();
    nft::install(&pod.netns, &peers).expect("nft counters");

    for (host, addr) in targets {
        let mut sink = udp_sink(host, addr, PORT, K);
        let to = SocketAddr::new(addr, PORT).to_string();
        pod.run(
            &[
                TRAFFIC,
                "udp-send",
                "--to",
                &to,
                "--count",
                &K.to_string(),
                "--size",
                &S.to_string(),
            ],
            WAIT,
        )
        .expect("udp-send succeeds");
        let out = sink.finish(WAIT).expect("sink exits");
        assert_eq!(out.last_number(), Some(K), "sink for {addr}: {out:?}");
    }

    let counters = nft::read(&pod.netns).expect("read nft counters");
    for (_, addr) in targets {
        let want = Count {
            packets: K,
            bytes: K * (S + udp_overhead(addr)),
        };
        assert_eq!(counters.egress(Peer::addr(addr)), want, "egress to {addr}");
        // UDP is one-way: nothing may come back from the sinks.
        assert_eq!(
            counters.ingress(Peer::addr(addr)),
            Count::default(),
            "ingress from {addr}"
        );
    }

    // The second pod sent nothing and has no table: reading must fail, not
    // report zeros from someone else's namespace.
    assert!(nft::read(&topo.pod(1).netns).is_err());

    let names = topo.netns_names();
    let cgroups: Vec<PathBuf> = topo
        .pods
        .iter()
        .map(|p| p.cgroup.path().to_path_buf())
        .collect();
    drop(topo);
    let left = Netns::list().expect("ip netns list");
    for n in &names {
        assert!(!left.contains(n), "netns {n} leaked: {left:?}");
    }
    for c in &cgroups {
        assert!(!c.exists(), "cgroup {} leaked", c.display());
    }
}

#[test]
fn pod_processes_run_in_pod_cgroup_and_netns() {
    privileged!();
    let topo = Topology::builder().pod("solo").build().expect("topology");
    let pod = topo.pod(0);

    let cg = pod
        .run(&["cat", "/proc/self/cgroup"], WAIT)
        .expect("cat runs");
    let v2_line = cg
        .stdout
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_default();
    assert_eq!(v2_line, format!("0::{}", pod.cgroup.rel_path()), "{cg:?}");
    assert_ne!(pod.cgroup.id(), 0);

    let addrs = pod
        .run(&["ip", "-o", "addr", "show", "dev", "eth0"], WAIT)
        .expect("ip addr");
    assert!(addrs.stdout.contains("198.18.1.2/24"), "{addrs:?}");
    assert!(addrs.stdout.contains("2001:db8:c:1::2/64"), "{addrs:?}");
    // The workload exited, so the cgroup is empty again.
    assert!(pod.cgroup.pids().is_empty());
}

#[test]
fn tcp_transfer_is_seen_by_sink_and_nft() {
    privileged!("nft");
    const N: u64 = 300_000;
    const PORT: u16 = 8080;
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pod = topo.pod(0);
    let svc = topo.service();
    let peer = Peer::port(svc.v6, L4::Tcp, PORT);
    nft::install(&pod.netns, &[peer]).expect("nft counters");

    let listen = SocketAddr::new(IpAddr::V6(svc.v6), PORT).to_string();
    let mut sink = Sink::start(svc.command(&[
        TRAFFIC,
        "tcp-sink",
        "--listen",
        &listen,
        "--once",
        "--timeout-s",
        "10",
    ]))
    .expect("tcp sink starts");
    pod.run(
        &[
            TRAFFIC,
            "tcp-send",
            "--to",
            &listen,
            "--bytes",
            &N.to_string(),
        ],
        WAIT,
    )
    .expect("tcp-send succeeds");
    let out = sink.finish(WAIT).expect("sink exits");
    assert_eq!(out.last_number(), Some(N), "{out:?}");

    let c = nft::read(&pod.netns).expect("read nft counters");
    let (tx, rx) = (c.egress(peer), c.ingress(peer));
    // Segmentation is unpredictable, but every payload byte went out with
    // at least one 60-byte IPv6+TCP header per skb, and ACKs came back.
    assert!(tx.bytes >= N + 60 * tx.packets, "{tx:?}");
    assert!(tx.packets >= 3 && rx.packets >= 2, "tx {tx:?} rx {rx:?}");
}

#[test]
fn standalone_guards_clean_up() {
    privileged!();
    let ns = Netns::new("tgh").expect("netns");
    let cg = TestCgroup::new("guard").expect("cgroup");
    let (ns_name, cg_path) = (ns.name().to_string(), cg.path().to_path_buf());
    // A long-running process inside the cgroup must not block removal.
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && exec sleep 30"#,
            "sh",
        ])
        .arg(cg.path())
        .spawn()
        .expect("spawn sleeper");
    tollgate_tests::cmd::wait_until("sleeper in cgroup", WAIT, || {
        cg.pids().contains(&child.id())
    })
    .expect("sleeper joined the cgroup");
    drop(cg);
    drop(ns);
    assert!(!cg_path.exists(), "cgroup {} leaked", cg_path.display());
    assert!(!Netns::list().expect("ip netns list").contains(&ns_name));
    let mut child = child;
    let _ = child.wait();
}
