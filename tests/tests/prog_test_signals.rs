//! BPF_PROG_TEST_RUN of the egress program on crafted DNS queries and
//! stratum payloads: exact query and marker counts, the names and events
//! userspace receives, malformed input never crashes, verdict always
//! pass. Privileged (loads programs, pins maps on bpffs).

use std::{net::IpAddr, time::Instant};

use etherparse::PacketBuilder;
use tollgate::{collect::DnsSample, collect::StratumHit, ebpf::signals::SignalMaps};
use tollgate_ebpf::Counter;
use tollgate_tests::progrun::Loaded;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const POD: [u8; 4] = [198, 18, 1, 2];
const RESOLVER: [u8; 4] = [198, 18, 250, 10];
const POOL: [u8; 4] = [203, 0, 113, 5];

/// Wire-format name from labels.
fn wire(labels: &[&[u8]]) -> Vec<u8> {
    let mut w = Vec::new();
    for l in labels {
        w.push(l.len() as u8);
        w.extend_from_slice(l);
    }
    w.push(0);
    w
}

/// A DNS message: header fields as given, then `name` and `tail` (the
/// qtype and qclass, or whatever the case needs).
fn dns(flags: u16, qd: u16, an: u16, ns: u16, name: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x1234u16.to_be_bytes());
    m.extend_from_slice(&flags.to_be_bytes());
    for v in [qd, an, ns, 1] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(name);
    m.extend_from_slice(tail);
    m
}

fn query(name: &[u8], qtype: u16) -> Vec<u8> {
    let mut tail = qtype.to_be_bytes().to_vec();
    tail.extend_from_slice(&[0, 1]);
    // RD set, as stub resolvers send.
    dns(0x0100, 1, 0, 0, name, &tail)
}

fn udp4(dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4(POD, dst, 64)
        .udp(40000, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn udp6(payload: &[u8]) -> Vec<u8> {
    let src = "2001:db8:c:1::2".parse::<std::net::Ipv6Addr>().unwrap();
    let dst = "2001:db8:c:fa::53".parse::<std::net::Ipv6Addr>().unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(40001, 53)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// TCP from the pod: a bare SYN when `syn`, else a PSH+ACK data segment.
fn tcp(dst: IpAddr, dport: u16, syn: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(MAC, MAC);
    let b = match dst {
        IpAddr::V4(d) => b.ipv4(POD, d.octets(), 64),
        IpAddr::V6(d) => b.ipv6(
            "2001:db8:c:1::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
            d.octets(),
            64,
        ),
    };
    let t = b.tcp(40100, dport, 1000, 64240);
    let t = if syn { t.syn() } else { t.ack(1).psh() };
    t.write(&mut out, payload).unwrap();
    out
}

fn drain_dns(t: &Loaded) -> Vec<DnsSample> {
    let mut s = SignalMaps::open(&t.pins).unwrap();
    s.drain_dns(usize::MAX)
        .iter()
        .map(|e| DnsSample::from_event(e).expect("kernel-checked names decode"))
        .collect()
}

fn drain_stratum(t: &Loaded) -> Vec<StratumHit> {
    let mut s = SignalMaps::open(&t.pins).unwrap();
    s.drain_stratum(usize::MAX)
        .iter()
        .map(StratumHit::from)
        .collect()
}

fn counter(t: &Loaded, c: Counter) -> u64 {
    t.maps().counters().unwrap()[c as usize]
}

#[test]
fn dns_queries_are_counted_and_names_sampled() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    // A rate no test run reaches: every decodable name is sampled.
    let t = Loaded::with_config("dns", "[maps]\ndns_samples_per_sec = 100000\n");
    let long = wire(&[&[b'a'; 63], &[b'b'; 63], &[b'c'; 63], &[b'd'; 61]]);
    assert_eq!(long.len(), 255, "the longest legal name");
    let mut tcp_msg = Vec::new();
    let q = query(&wire(&[b"tcp", b"example"]), 16);
    tcp_msg.extend_from_slice(&(q.len() as u16).to_be_bytes());
    tcp_msg.extend_from_slice(&q);
    let sampled = [
        udp4(
            RESOLVER,
            53,
            &query(&wire(&[b"www", b"example", b"com"]), 1),
        ),
        udp4(RESOLVER, 53, &query(&wire(&[b"a\x00b", b"x y"]), 16)),
        udp6(&query(&wire(&[b"v6", b"test"]), 28)),
        tcp(IpAddr::V4(RESOLVER.into()), 53, false, &tcp_msg),
        udp4(RESOLVER, 53, &query(&long, 1)),
        udp4(RESOLVER, 53, &query(&[0], 2)), // the root
    ];
    let want = [
        ("www.example.com", 1),
        ("a\\000b.x\\032y", 16),
        ("v6.test", 28),
        ("tcp.example", 16),
        ("", 1),
        (".", 2),
    ];
    // Queries whose name the kernel does not decode: counted, unsampled.
    let mut too_long = Vec::new();
    for _ in 0..5 {
        too_long.push(63u8);
        too_long.extend_from_slice(&[b'z'; 63]);
    }
    too_long.push(0);
    let undecoded = [
        udp4(RESOLVER, 53, &query(&[0xc0, 0x0c], 1)), // compression pointer
        udp4(RESOLVER, 53, &query(&[0x41, b'x', 0], 1)), // extended label type
        udp4(RESOLVER, 53, &dns(0x0100, 1, 0, 0, &[3, b'w', b'w'], &[])), // cut in a label
        udp4(
            RESOLVER,
            53,
            &dns(0x0100, 1, 0, 0, &wire(&[b"no", b"qtype"]), &[]),
        ),
        udp4(RESOLVER, 53, &dns(0x0100, 1, 0, 0, &wire(&[b"half"]), &[0])),
        udp4(RESOLVER, 53, &query(&too_long, 1)),
    ];
    // Not queries at all: not counted.
    let ignored = [
        udp4(
            RESOLVER,
            53,
            &dns(0x8180, 1, 1, 0, &wire(&[b"resp"]), &[0, 1, 0, 1]),
        ), // response
        udp4(
            RESOLVER,
            53,
            &dns(0x2800, 1, 0, 0, &wire(&[b"upd"]), &[0, 6, 0, 1]),
        ), // opcode UPDATE
        udp4(
            RESOLVER,
            53,
            &dns(0x0100, 2, 0, 0, &wire(&[b"two"]), &[0, 1, 0, 1]),
        ), // two questions
        udp4(
            RESOLVER,
            53,
            &dns(0x0100, 1, 0, 1, &wire(&[b"ns"]), &[0, 1, 0, 1]),
        ), // authority
        udp4(RESOLVER, 53, &[0x12, 0x34, 0x01, 0x00, 0, 1]), // header cut short
        udp4(RESOLVER, 53, &[]),
        udp4(RESOLVER, 5353, &query(&wire(&[b"mdns"]), 1)), // other port
        tcp(IpAddr::V4(RESOLVER.into()), 53, true, &[]),    // handshake
    ];
    for p in sampled.iter().chain(&undecoded).chain(&ignored) {
        assert_eq!(t.run(true, p), 1, "verdict must be pass");
    }
    let s = t.my_stats();
    assert_eq!(s.dns_queries, (sampled.len() + undecoded.len()) as u64);
    assert_eq!(s.dns_unsampled, undecoded.len() as u64);
    assert_eq!(
        counter(&t, Counter::DnsNameUndecoded),
        undecoded.len() as u64
    );
    assert_eq!(counter(&t, Counter::DnsSampleRateLimited), 0);
    assert_eq!(counter(&t, Counter::SignalJumpFailed), 0);
    let got = drain_dns(&t);
    let names: Vec<(String, u16)> = got.iter().map(|d| (d.name.clone(), d.qtype)).collect();
    let long_text = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    let want: Vec<(String, u16)> = want
        .iter()
        .map(|(n, q)| {
            let n = if n.is_empty() {
                long_text.clone()
            } else {
                n.to_string()
            };
            (n, *q)
        })
        .collect();
    assert_eq!(names, want);
    let me = tollgate_tests::progrun::my_cgroup_id();
    assert!(got.iter().all(|d| d.cgroup_id == me && d.ts_ns > 0));
    // Accounting is unchanged by the inspection: every packet counted.
    let n = (sampled.len() + undecoded.len() + ignored.len()) as u64;
    assert_eq!(s.egress.internal.packets + s.egress.external.packets, n);
}

#[test]
fn random_dns_names_never_crash_and_always_balance() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    let t = Loaded::with_config("dnsfuzz", "[maps]\ndns_samples_per_sec = 100000\n");
    let mut rng = Lcg(0xd115);
    const N: u64 = 3000;
    // Drained as we go, as the agent does each tick: the ring buffer
    // (256 KiB, ~900 samples) never fills.
    let mut got = Vec::new();
    for i in 0..N {
        if i % 200 == 0 {
            got.extend(drain_dns(&t));
        }
        // A query header, then random name bytes of random length; every
        // fourth one uses small label lengths so many decode.
        let len = rng.next() as usize % 300;
        let mut name: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 4 == 0 {
            for b in name.iter_mut().step_by(3) {
                *b %= 4;
            }
        }
        let p = udp4(RESOLVER, 53, &dns(0x0100, 1, 0, 0, &name, &[]));
        assert_eq!(t.run(true, &p), 1, "random query {i} must pass");
    }
    let s = t.my_stats();
    assert_eq!(s.dns_queries, N);
    got.extend(drain_dns(&t));
    assert_eq!(
        got.len() as u64 + s.dns_unsampled,
        N,
        "sampled + unsampled = queries"
    );
    assert!(got.len() > 100, "many random names decode: {}", got.len());
    assert_eq!(counter(&t, Counter::DnsSampleDrops), 0);
    assert_eq!(counter(&t, Counter::DnsNameUndecoded), s.dns_unsampled);
}

#[test]
fn dns_sampling_is_rate_limited_and_counted() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    const N: u64 = 200;
    const RATE: u64 = 5;
    let t = Loaded::with_config(
        "dnsrate",
        &format!("[maps]\ndns_samples_per_sec = {RATE}\n"),
    );
    let start = Instant::now();
    for i in 0..N {
        let name = format!("q{i}");
        let p = udp4(
            RESOLVER,
            53,
            &query(&wire(&[name.as_bytes(), b"example"]), 1),
        );
        assert_eq!(t.run(true, &p), 1);
    }
    let elapsed = start.elapsed().as_secs();
    let s = t.my_stats();
    let got = drain_dns(&t);
    assert_eq!(s.dns_queries, N);
    assert_eq!(got.len() as u64 + s.dns_unsampled, N);
    assert_eq!(counter(&t, Counter::DnsSampleRateLimited), s.dns_unsampled);
    // Per CPU and one-second window: the first window gives RATE samples;
    // the bound allows for CPU migration and slow runs.
    let ncpu = t.maps().ncpu as u64;
    assert!(got.len() as u64 >= RATE, "{} samples", got.len());
    assert!(
        got.len() as u64 <= RATE * ncpu * (elapsed + 2),
        "{} samples in {elapsed}s on {ncpu} CPUs",
        got.len()
    );
    // The first samples are the first queries, in order.
    assert_eq!(got[0].name, "q0.example");

    // Rate 0: counted, never sampled.
    let t = Loaded::with_config("dnsoff", "[maps]\ndns_samples_per_sec = 0\n");
    for _ in 0..10 {
        t.run(true, &udp4(RESOLVER, 53, &query(&wire(&[b"off"]), 1)));
    }
    let s = t.my_stats();
    assert_eq!((s.dns_queries, s.dns_unsampled), (10, 10));
    assert!(drain_dns(&t).is_empty());
}

const SUBSCRIBE: &str =
    "{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cpuminer/2.5.1\"]}\n";
const AUTHORIZE: &str =
    "{\"params\": [\"wallet.worker1\", \"x\"], \"id\": 2, \"method\":\"mining.authorize\"}\n";
const SUBMIT: &str = "{\"params\":[\"w\",\"job1\",\"00000000\",\"5f5e1000\",\"1a2b3c4d\"],\"id\":4,\"method\" :\t\"mining.submit\"}\n";
const LOGIN: &str = "{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"login\":\"44AFFq5kSiGBoZ\",\"pass\":\"x\",\"agent\":\"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0\",\"algo\":[\"rx/0\"]}}\n";

#[test]
fn stratum_markers_are_matched_at_stream_start() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    let t = Loaded::new("stratum");
    let pool = IpAddr::V4(POOL.into());
    let pool6: IpAddr = "2001:db8:e::5".parse().unwrap();
    // Each marker on its own connection (SYN, then the message).
    let cases: [(IpAddr, u16, &str, &str); 5] = [
        (pool, 3333, SUBSCRIBE, "mining.subscribe"),
        (pool, 3334, AUTHORIZE, "mining.authorize"),
        (pool, 3335, SUBMIT, "mining.submit"),
        (pool, 3336, LOGIN, "login"),
        (pool6, 443, LOGIN, "login"),
    ];
    for (ip, port, msg, _) in &cases {
        assert_eq!(t.run(true, &tcp(*ip, *port, true, &[])), 1);
        assert_eq!(t.run(true, &tcp(*ip, *port, false, msg.as_bytes())), 1);
    }
    let mut hits = drain_stratum(&t);
    let got: Vec<(String, u16, String)> = hits
        .iter()
        .map(|h| (h.addr.clone(), h.port, h.marker.clone()))
        .collect();
    let want: Vec<(String, u16, String)> = cases
        .iter()
        .map(|(ip, port, _, m)| (ip.to_string(), *port, m.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(t.my_stats().stratum_markers, cases.len() as u64);

    // Not stratum: no marker.
    let mut padded = String::from("{\"pad\":\"");
    padded.push_str(&"p".repeat(300));
    padded.push_str("\",\"method\":\"mining.subscribe\"}\n");
    let not_stratum = [
        "{\"login\":\"alice\",\"password\":\"hunter2\"}\n",
        "{\"jsonrpc\":\"2.0\",\"method\":\"eth_getBalance\",\"params\":[]}\n",
        "{\"method\":\"mining.subscribed\"}\n",
        "{\"method\":\"loginx\"}\n",
        "{\"method\":\"mining.subs",            // cut mid-marker
        "{\"id\":1,\"meth",                     // cut before the marker
        "{",                                    // one byte
        "{\"method\"",                          // no value
        "{\"method\"      :      \"login\"}\n", // too much space
        "POST / HTTP/1.1\r\n\r\n{\"method\":\"mining.subscribe\"}", // not JSON first
        " {\"method\":\"mining.subscribe\"}",   // leading space
        padded.as_str(),                        // past the prefix
    ];
    for (i, msg) in not_stratum.iter().enumerate() {
        let port = 4000 + i as u16;
        assert_eq!(t.run(true, &tcp(pool, port, true, &[])), 1);
        assert_eq!(t.run(true, &tcp(pool, port, false, msg.as_bytes())), 1);
    }
    assert_eq!(t.my_stats().stratum_markers, cases.len() as u64);
    assert!(drain_stratum(&t).is_empty());

    // Only the start of a stream is searched: after the SYN and 7 more
    // packets (the default window of 8), a marker is not seen; a new SYN
    // opens the window again.
    assert_eq!(t.run(true, &tcp(pool, 5000, true, &[])), 1);
    for _ in 0..7 {
        t.run(
            true,
            &tcp(pool, 5000, false, b"{\"id\":9,\"result\":true}\n"),
        );
    }
    t.run(true, &tcp(pool, 5000, false, SUBSCRIBE.as_bytes()));
    assert_eq!(t.my_stats().stratum_markers, cases.len() as u64);
    t.run(true, &tcp(pool, 5000, true, &[]));
    t.run(true, &tcp(pool, 5000, false, SUBMIT.as_bytes()));
    // A flow first seen mid-stream (agent started late) counts from there.
    t.run(true, &tcp(pool, 5001, false, AUTHORIZE.as_bytes()));
    assert_eq!(t.my_stats().stratum_markers, cases.len() as u64 + 2);
    hits = drain_stratum(&t);
    let got: Vec<(u16, &str)> = hits.iter().map(|h| (h.port, h.marker.as_str())).collect();
    assert_eq!(got, [(5000, "mining.submit"), (5001, "mining.authorize")]);
    assert_eq!(counter(&t, Counter::StratumMarkers), cases.len() as u64 + 2);
    assert_eq!(counter(&t, Counter::SignalJumpFailed), 0);
}

#[test]
fn random_json_payloads_never_crash() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    let t = Loaded::new("stratumfuzz");
    let pool = IpAddr::V4(POOL.into());
    let mut rng = Lcg(0x57a7);
    let alphabet = b"{}\":, \tmethodlginsubcrazt.";
    for i in 0..2000u32 {
        let len = 1 + rng.next() as usize % 400;
        let mut p: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.next() as usize % alphabet.len()])
            .collect();
        p[0] = b'{';
        let port = 6000 + (i % 50) as u16;
        if i % 8 == 0 {
            assert_eq!(t.run(true, &tcp(pool, port, true, &[])), 1);
        }
        assert_eq!(t.run(true, &tcp(pool, port, false, &p)), 1, "payload {i}");
    }
    let s = t.my_stats();
    assert_eq!(s.stratum_markers, drain_stratum(&t).len() as u64);
    assert_eq!(s.stratum_dropped, 0);
}

/// Small deterministic generator: reproducible failures.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}
