//! Privileged end-to-end DNS and stratum signals: the real agent attached
//! at the cgroup v2 root, pods sending real DNS queries to a UDP sink on
//! port 53 and a stratum session to a TCP stub on the "internet" host.
//! Exact query and marker counts, the sampled names and the stratum hits
//! with the right peer, as `tollgate top` reports them.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, time::Duration};

use tollgate_tests::{
    agent::{Agent, TestPinDir},
    privileged,
    top::Top,
    topology::{Host, Topology},
    traffic::Sink,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const SIGNAL: &str = env!("CARGO_BIN_EXE_tg-signal");
const WAIT: Duration = Duration::from_secs(30);
const CONFIG: &str = r#"
[agent]
tick = "200ms"
metrics_addr = "127.0.0.1:0"
[network]
internal_cidrs = ["198.18.0.0/16", "2001:db8:c::/48"]
[maps]
dns_samples_per_sec = 1000
"#;

fn sink(host: &Host, bin: &str, args: &[&str]) -> Sink {
    let mut argv = vec![bin];
    argv.extend_from_slice(args);
    Sink::start(host.command(&argv)).expect("sink starts")
}

fn top_until(pins: &TestPinDir, done: impl Fn(&Top) -> bool) -> Top {
    tollgate_tests::agent::top_until(pins.path(), WAIT, done)
}

#[test]
fn dns_queries_and_stratum_sessions_from_real_pods() {
    if !privileged::require_root() {
        return;
    }
    const N: u64 = 20;
    const JUNK: u64 = 5;
    let topo = Topology::builder().pods(2).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), CONFIG).expect("agent starts");
    let (a, b) = (topo.pod(0), topo.pod(1));
    let net = topo.internet().v4;
    let dns_addr = SocketAddr::new(net.into(), 53).to_string();

    // Pod A: N real queries, then JUNK datagrams to port 53 that are not
    // DNS queries (tg-traffic's payload bytes 1, 2, 3, ...).
    let mut s = sink(
        topo.internet(),
        TRAFFIC,
        &[
            "udp-sink",
            "--listen",
            &dns_addr,
            "--count",
            &(N + JUNK).to_string(),
            "--timeout-s",
            "20",
        ],
    );
    a.run(
        &[
            SIGNAL,
            "dns",
            "--to",
            &dns_addr,
            "--count",
            &N.to_string(),
            "--prefix",
            "host",
            "--suffix",
            "corp.example",
            "--qtype",
            "16",
        ],
        WAIT,
    )
    .expect("pod A queries");
    a.run(
        &[
            TRAFFIC,
            "udp-send",
            "--to",
            &dns_addr,
            "--count",
            &JUNK.to_string(),
            "--size",
            "40",
        ],
        WAIT,
    )
    .expect("pod A junk");
    let out = s.finish(WAIT).expect("dns sink");
    assert_eq!(
        out.stdout.trim(),
        (N + JUNK).to_string(),
        "the sink got every datagram"
    );

    // Pod B: a stratum session against a plain TCP stub (no answers, so
    // the client's packets are exactly SYN, ACK, three requests, FIN).
    let pool = SocketAddr::new(net.into(), 3333).to_string();
    let mut p = sink(
        topo.internet(),
        TRAFFIC,
        &["tcp-sink", "--listen", &pool, "--once", "--timeout-s", "20"],
    );
    b.run(
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
    .expect("pod B mines");
    p.finish(WAIT).expect("pool stub");

    let t = top_until(&pins, |t| {
        t.row(a.cgroup.id()).dns_queries == N
            && t.row(b.cgroup.id()).stratum_markers == 3
            && t.recent_dns_samples
                .iter()
                .filter(|d| d.cgroup_id == a.cgroup.id())
                .count() as u64
                == N
            && t.recent_stratum_hits
                .iter()
                .filter(|h| h.cgroup_id == b.cgroup.id())
                .count()
                == 3
    });
    let ra = t.row(a.cgroup.id());
    let rb = t.row(b.cgroup.id());
    assert_eq!(ra.dns_queries, N, "junk on port 53 is not a query");
    assert_eq!(ra.stratum_markers, 0);
    assert_eq!((rb.dns_queries, rb.stratum_markers), (0, 3));
    let names: Vec<(String, u16)> = t
        .recent_dns_samples
        .iter()
        .filter(|d| d.cgroup_id == a.cgroup.id())
        .map(|d| (d.name.clone(), d.qtype))
        .collect();
    let want: Vec<(String, u16)> = (0..N)
        .map(|i| (format!("host{i}.corp.example"), 16))
        .collect();
    assert_eq!(names, want);
    let hits: Vec<(String, u16, String)> = t
        .recent_stratum_hits
        .iter()
        .filter(|h| h.cgroup_id == b.cgroup.id())
        .map(|h| (h.addr.clone(), h.port, h.marker.clone()))
        .collect();
    let ip = net.to_string();
    assert_eq!(
        hits,
        [
            (ip.clone(), 3333, "mining.subscribe".to_string()),
            (ip.clone(), 3333, "mining.authorize".to_string()),
            (ip, 3333, "mining.submit".to_string()),
        ]
    );
    // Nothing dropped or undecoded on the way.
    for c in [
        "dns_sample_drops",
        "dns_name_undecoded",
        "stratum_event_drops",
        "signal_jump_failed",
        "dns_samples_garbled",
    ] {
        assert_eq!(
            t.counters.other.get(c).and_then(|v| v.as_u64()),
            Some(0),
            "counter {c}"
        );
    }
}
