//! Privileged end-to-end accounting: the real agent attached at the cgroup
//! v2 root, two pods (cgroup + netns each), an "internet" host and a
//! cluster service host. Exact packet and L3 byte counts, the
//! internal/external split, connection events once per pair, and counters
//! that continue across a SIGKILL of the agent.
#![forbid(unsafe_code)]

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tollgate_tests::{
    agent::{Agent, TestPinDir, top},
    cmd::wait_until,
    nft::{self, Count, L4, Peer},
    privileged,
    top::{CgroupRow, Top},
    topology::{Host, Topology},
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(30);
const CONFIG: &str = r#"
[agent]
tick = "200ms"
metrics_addr = "127.0.0.1:0"
[network]
internal_cidrs = ["198.18.0.0/16", "2001:db8:c::/48"]
"#;

fn sink(host: &Host, args: &[&str]) -> Sink {
    let mut argv = vec![TRAFFIC];
    argv.extend_from_slice(args);
    Sink::start(host.command(&argv)).expect("sink starts")
}

fn udp_overhead(ip: IpAddr) -> u64 {
    if ip.is_ipv4() { 28 } else { 48 }
}

fn counts(c: &tollgate_tests::top::Count) -> Count {
    Count {
        packets: c.packets,
        bytes: c.bytes,
    }
}

fn top_until(pins: &TestPinDir, done: impl Fn(&Top) -> bool) -> Top {
    tollgate_tests::agent::top_until(pins.path(), WAIT, done)
}

fn row(t: &Top, id: u64) -> CgroupRow {
    t.row(id)
}

/// Pod A sends K datagrams of S bytes to the internet host and K2 of S2 to
/// the service host, and a TCP stream of N bytes to the internet host;
/// pod B sends its own few datagrams first. Run for one address family.
fn exact_accounting(v6: bool) {
    const K: u64 = 40;
    const S: u64 = 200;
    const K2: u64 = 25;
    const S2: u64 = 60;
    const KB: u64 = 7;
    const K3: u64 = 5;
    const S3: u64 = 3000;
    const N: u64 = 3_000_000;
    let topo = Topology::builder().pods(2).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), CONFIG).expect("agent starts");
    let (a, b) = (topo.pod(0), topo.pod(1));
    let pick = |h: &Host| {
        if v6 {
            IpAddr::V6(h.v6)
        } else {
            IpAddr::V4(h.v4)
        }
    };
    let net = pick(topo.internet());
    let svc = pick(topo.service());
    let tcp_peer = Peer::port(net, L4::Tcp, 9100);
    nft::install(&a.netns, &[Peer::addr(net), Peer::addr(svc), tcp_peer]).expect("nft");

    // Pod B first: its counters must not move while A sends.
    let mut s = sink(
        topo.internet(),
        &[
            "udp-sink",
            "--listen",
            &SocketAddr::new(net, 9002).to_string(),
            "--count",
            &KB.to_string(),
            "--timeout-s",
            "20",
        ],
    );
    b.run(
        &[
            TRAFFIC,
            "udp-send",
            "--to",
            &SocketAddr::new(net, 9002).to_string(),
            "--count",
            &KB.to_string(),
            "--size",
            "10",
        ],
        WAIT,
    )
    .expect("pod B sends");
    s.finish(WAIT).expect("sink B");
    let b_expected = KB * (10 + udp_overhead(net));
    let before = top_until(&pins, |t| {
        row(t, b.cgroup.id()).egress.external.bytes == b_expected
    });
    let b_before = row(&before, b.cgroup.id());
    assert_eq!(
        b_before.egress.external.bytes, b_expected,
        "pod B's own traffic"
    );
    assert_eq!(b_before.egress.external.packets, KB);

    // The 3000-byte datagrams are fragmented on the wire; the cgroup hook
    // (like nft's output hook) sees each one whole, before fragmentation.
    for (to, port, k, size) in [
        (net, 9000u16, K, S),
        (svc, 9001, K2, S2),
        (net, 9003, K3, S3),
    ] {
        let host = if to == net {
            topo.internet()
        } else {
            topo.service()
        };
        let addr = SocketAddr::new(to, port).to_string();
        let mut s = sink(
            host,
            &[
                "udp-sink",
                "--listen",
                &addr,
                "--count",
                &k.to_string(),
                "--timeout-s",
                "20",
            ],
        );
        a.run(
            &[
                TRAFFIC,
                "udp-send",
                "--to",
                &addr,
                "--count",
                &k.to_string(),
                "--size",
                &size.to_string(),
            ],
            WAIT,
        )
        .expect("udp-send");
        assert_eq!(s.finish(WAIT).expect("udp sink").last_number(), Some(k));
    }
    let tcp_to = SocketAddr::new(net, 9100).to_string();
    let mut s = sink(
        topo.internet(),
        &["tcp-sink", "--listen", &tcp_to, "--once"],
    );
    a.run(
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

    let reference = nft::read(&a.netns).expect("nft counters");
    let tcp_out = reference.egress(tcp_peer);
    let tcp_in = reference.ingress(tcp_peer);
    let ext_out = reference.egress(Peer::addr(net));
    let int_out = reference.egress(Peer::addr(svc));
    let ext_in = reference.ingress(Peer::addr(net));
    // The reference itself is what we expect from the traffic we made.
    assert_eq!(
        int_out,
        Count {
            packets: K2,
            bytes: K2 * (S2 + udp_overhead(svc))
        }
    );
    assert_eq!(ext_out.packets, K + K3 + tcp_out.packets);
    assert_eq!(
        ext_out.bytes,
        K * (S + udp_overhead(net)) + K3 * (S3 + udp_overhead(net)) + tcp_out.bytes
    );
    assert!(tcp_out.bytes > N, "TCP carried the payload: {tcp_out:?}");

    let id = a.cgroup.id();
    let t = top_until(&pins, |t| {
        let r = row(t, id);
        counts(&r.egress.external) == ext_out && counts(&r.ingress.external) == ext_in
    });
    let r = row(&t, id);
    assert_eq!(
        counts(&r.egress.external),
        ext_out,
        "pod A egress external (exact, = nft)"
    );
    assert_eq!(counts(&r.egress.internal), int_out, "pod A egress internal");
    assert_eq!(
        counts(&r.ingress.external),
        ext_in,
        "pod A ingress external (TCP ACKs, = nft)"
    );
    assert_eq!(
        counts(&r.ingress.internal),
        Count::default(),
        "UDP to the service got no answer"
    );
    assert_eq!(r.malformed, 0);

    // Flow table: per destination, both directions.
    let d = r
        .destination(net, 9000, "udp")
        .expect("udp flow to the internet host");
    assert_eq!((d.tx_packets, d.tx_bytes), (K, K * (S + udp_overhead(net))));
    let d = r.destination(net, 9100, "tcp").expect("tcp flow");
    assert_eq!((d.tx_packets, d.tx_bytes), (tcp_out.packets, tcp_out.bytes));
    assert_eq!((d.rx_packets, d.rx_bytes), (tcp_in.packets, tcp_in.bytes));
    let d = r
        .destination(svc, 9001, "udp")
        .expect("udp flow to the service");
    assert_eq!(
        (d.tx_packets, d.tx_bytes),
        (K2, K2 * (S2 + udp_overhead(svc)))
    );

    // Connection events: exactly one per (destination, port, protocol).
    let ev: Vec<_> = t.events_for(id).collect();
    for (ip, port, proto, kind) in [
        (net, 9000, "udp", "sendmsg"),
        (svc, 9001, "udp", "sendmsg"),
        (net, 9100, "tcp", "connect"),
    ] {
        let n = ev
            .iter()
            .filter(|e| e.ip() == Some(ip) && e.port == port && e.proto == proto)
            .count();
        assert_eq!(
            n, 1,
            "one {kind} event for {ip}:{port}/{proto}; events: {ev:?}"
        );
        assert!(
            ev.iter()
                .any(|e| e.ip() == Some(ip) && e.port == port && e.kind == kind)
        );
    }
    assert_eq!(ev.len(), 4, "no other events for pod A: {ev:?}");
    assert_eq!(r.connects, 1, "one connect() call");
    assert_eq!(r.new_peers, 4);
    assert_eq!(r.events_dropped, 0);

    // Pod B did not move.
    assert_eq!(
        row(&t, b.cgroup.id()),
        b_before,
        "pod B's counters did not move"
    );
}

#[test]
fn ipv4_accounting_is_exact() {
    privileged!("nft");
    exact_accounting(false);
}

#[test]
fn ipv6_accounting_is_exact() {
    privileged!("nft");
    exact_accounting(true);
}

/// SIGKILL the agent in the middle of a TCP stream and start it again: the
/// pinned links keep counting while it is down, the pinned maps carry the
/// counters over, and the totals still equal the reference exactly.
#[test]
fn counters_survive_agent_sigkill() {
    privileged!("nft");
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let mut agent = Agent::start(pins.path(), CONFIG).expect("agent starts");
    let pod = topo.pod(0);
    let net = IpAddr::V4(topo.internet().v4);
    nft::install(&pod.netns, &[Peer::addr(net)]).expect("nft");
    let to = SocketAddr::new(net, 9200).to_string();
    let mut s = sink(topo.internet(), &["tcp-sink", "--listen", &to, "--once"]);
    let mut stream = pod
        .command(&[TRAFFIC, "tcp-stream", "--to", &to, "--seconds", "4"])
        .spawn()
        .expect("stream starts");
    let id = pod.cgroup.id();
    let mut seen = Vec::new();
    let sample = |seen: &mut Vec<u64>| {
        if let Ok(t) = top(pins.path()) {
            seen.push(row(&t, id).egress.external.bytes);
        }
    };
    std::thread::sleep(Duration::from_millis(1000));
    sample(&mut seen);
    agent.kill9();
    // Agent down: top reads the pins directly, and the kernel still counts.
    std::thread::sleep(Duration::from_millis(500));
    sample(&mut seen);
    std::thread::sleep(Duration::from_millis(500));
    sample(&mut seen);
    let _agent2 = Agent::start(pins.path(), CONFIG).expect("agent restarts");
    sample(&mut seen);
    let status = stream.wait().expect("stream ends");
    assert!(status.success(), "tcp-stream failed: {status}");
    s.finish(WAIT).expect("sink");
    let reference = nft::read(&pod.netns).expect("nft").egress(Peer::addr(net));
    let t = top_until(&pins, |t| counts(&row(t, id).egress.external) == reference);
    seen.push(row(&t, id).egress.external.bytes);
    assert_eq!(
        counts(&row(&t, id).egress.external),
        reference,
        "nothing lost or doubled across the restart"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "monotonic: {seen:?}");
    assert!(
        seen[1] > seen[0] && seen[2] > seen[1],
        "kernel counted while the agent was down: {seen:?}"
    );
}

/// A ring buffer far too small for a burst of new peers: every pair is
/// either delivered as an event or counted as dropped, per cgroup.
#[test]
fn connection_event_drops_are_counted_not_silent() {
    privileged!("nft");
    const PORTS: u64 = 600;
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let config = format!("{CONFIG}\n[maps]\nconn_events_bytes = 4096\n");
    let _agent = Agent::start(pins.path(), &config).expect("agent starts");
    let pod = topo.pod(0);
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 20000).to_string();
    pod.run(
        &[
            TRAFFIC,
            "udp-send",
            "--to",
            &to,
            "--count",
            "1",
            "--size",
            "8",
            "--ports",
            &PORTS.to_string(),
        ],
        WAIT,
    )
    .expect("udp-send to many ports");
    let id = pod.cgroup.id();
    let t = top_until(&pins, |t| {
        let r = row(t, id);
        r.new_peers + r.events_dropped == PORTS && t.events_for(id).count() as u64 == r.new_peers
    });
    let r = row(&t, id);
    assert_eq!(
        r.new_peers + r.events_dropped,
        PORTS,
        "every new peer is an event or a counted drop"
    );
    assert!(
        r.events_dropped > 0,
        "a 4 KiB ring cannot hold {PORTS} events between drains"
    );
    assert_eq!(
        t.events_for(id).count() as u64,
        r.new_peers,
        "every reserved event reached the agent"
    );
    assert!(t.counters.ringbuf_drops >= r.events_dropped);
    assert_eq!(
        r.egress.external.packets, PORTS,
        "and every datagram was counted"
    );
}

/// `tollgate check` finds every required feature on this kernel and says so.
#[test]
fn check_reports_required_features() {
    privileged!();
    let out = std::process::Command::new(tollgate_tests::agent::tollgate_bin())
        .args(["check", "--json"])
        .output()
        .expect("tollgate check runs");
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let probes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let required: Vec<_> = probes.iter().filter(|p| p["required"] == true).collect();
    assert!(required.len() >= 10, "{probes:?}");
    assert!(
        required.iter().all(|p| p["available"] == true),
        "{probes:?}"
    );
    assert!(
        probes
            .iter()
            .any(|p| p["feature"].as_str().is_some_and(|f| f.contains("batch")))
    );
}

/// /metrics carries the same exact counts as `tollgate top`, per pod.
#[test]
fn metrics_endpoint_exports_exact_pod_counters() {
    privileged!();
    const K: u64 = 12;
    const S: u64 = 90;
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let agent = Agent::start(pins.path(), CONFIG).expect("agent starts");
    let pod = topo.pod(0);
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 9300).to_string();
    tollgate_tests::traffic::udp_send(pod, TRAFFIC, &to, K, S, WAIT).expect("udp-send");
    assert!(agent.http_get("/healthz").unwrap().ends_with("ok\n"));
    // The labels are the inventory's names for the pod's cgroup.
    let id = pod.cgroup.id();
    let t = top_until(&pins, |t| {
        t.find_cgroup(id).is_some_and(|r| r.class.is_some())
    });
    let r = row(&t, id);
    let want = format!(
        "pod=\"{}\",container=\"{}\",class=\"{}\",node=\"{}\",direction=\"egress\",scope=\"external\"}} {}",
        r.pod.clone().or(r.path.clone()).unwrap_or_default(),
        r.container.clone().unwrap_or_default(),
        r.class.clone().unwrap_or_else(|| "default".into()),
        tollgate::run::node_name(),
        K * (S + 28)
    );
    let mut body = String::new();
    let _ = wait_until("pod bytes in /metrics", WAIT, || {
        body = agent.http_get("/metrics").expect("GET /metrics");
        body.lines()
            .any(|l| l.starts_with("tollgate_pod_network_bytes_total{") && l.ends_with(&want))
    });
    assert!(
        body.lines()
            .any(|l| l.starts_with("tollgate_pod_network_bytes_total{") && l.ends_with(&want)),
        "no line ending with {want:?} in:\n{body}"
    );
    assert!(body.contains("# TYPE tollgate_agent_tick_duration_seconds histogram"));
    assert!(body.contains("tollgate_map_fill_ratio{map=\"cgroup_stats\"}"));
}
