//! BPF_PROG_TEST_RUN of the real cgroup_skb programs on crafted and random
//! packets: exact counter values, verdict always pass. Privileged (loads
//! programs, pins maps on bpffs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use tollgate_tests::progrun::Loaded;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn v4(src: [u8; 4], dst: [u8; 4], kind: &str, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC, MAC).ipv4(src, dst, 64);
    let mut out = Vec::new();
    let p = vec![0xabu8; payload];
    match kind {
        "udp" => b.udp(40000, 53).write(&mut out, &p).unwrap(),
        "tcp" => b.tcp(40000, 443, 1, 1000).write(&mut out, &p).unwrap(),
        "icmp" => b.icmpv4_echo_request(7, 1).write(&mut out, &p).unwrap(),
        _ => unreachable!(),
    }
    out
}

fn v6(src: [u8; 16], dst: [u8; 16], kind: &str, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC, MAC).ipv6(src, dst, 64);
    let mut out = Vec::new();
    let p = vec![0xcdu8; payload];
    match kind {
        "udp" => b.udp(40000, 5353).write(&mut out, &p).unwrap(),
        "tcp" => b.tcp(40000, 8443, 1, 1000).write(&mut out, &p).unwrap(),
        "icmp" => b.icmpv6_echo_request(7, 1).write(&mut out, &p).unwrap(),
        _ => unreachable!(),
    }
    out
}

const POD: [u8; 4] = [198, 18, 1, 2];
const SVC: [u8; 4] = [198, 18, 250, 2];
const NET: [u8; 4] = [203, 0, 113, 1];
const CARVED: [u8; 4] = [198, 18, 99, 7];

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().unwrap().octets()
}

#[test]
fn crafted_ipv4_packets_are_counted_exactly() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    let t = Loaded::new("v4");
    let pkts = [
        (true, v4(POD, NET, "udp", 100)),   // egress external
        (true, v4(POD, SVC, "tcp", 1000)),  // egress internal
        (true, v4(POD, NET, "icmp", 56)),   // egress external, no ports
        (true, v4(POD, CARVED, "udp", 10)), // carve-out: external
        (false, v4(NET, POD, "udp", 300)),  // ingress external (source decides)
        (false, v4(SVC, POD, "tcp", 20)),   // ingress internal
    ];
    for (egress, p) in &pkts {
        assert_eq!(t.run(*egress, p), 1, "verdict must be pass");
    }
    let l3 = |p: &Vec<u8>| (p.len() - 14) as u64;
    let s = t.my_stats();
    assert_eq!(s.egress.external.packets, 3);
    assert_eq!(
        s.egress.external.bytes,
        l3(&pkts[0].1) + l3(&pkts[2].1) + l3(&pkts[3].1)
    );
    assert_eq!(s.egress.external.bytes, (28 + 100) + (28 + 56) + (28 + 10));
    assert_eq!(s.egress.internal.packets, 1);
    assert_eq!(s.egress.internal.bytes, 20 + 20 + 1000);
    assert_eq!(s.ingress.external.packets, 1);
    assert_eq!(s.ingress.external.bytes, 28 + 300);
    assert_eq!(s.ingress.internal.packets, 1);
    assert_eq!(s.ingress.internal.bytes, 40 + 20);
    assert_eq!(s.malformed, 0);

    let net = IpAddr::V4(Ipv4Addr::from(NET));
    let f = t.flow(net, 53, 17).expect("udp flow to the internet host");
    assert_eq!((f.tx.packets, f.tx.bytes, f.rx.packets), (1, 128, 0));
    // Ingress flows are keyed by the remote's source port.
    let f = t
        .flow(net, 40000, 17)
        .expect("udp flow from the internet host");
    assert_eq!((f.rx.packets, f.rx.bytes, f.tx.packets), (1, 328, 0));
    let f = t.flow(net, 0, 1).expect("icmp flow has port 0");
    assert_eq!(f.tx.bytes, 84);
    let f = t
        .flow(IpAddr::V4(Ipv4Addr::from(SVC)), 443, 6)
        .expect("tcp flow");
    assert_eq!(f.tx.bytes, 1040);
    assert!(f.first_seen_ns > 0 && f.last_seen_ns >= f.first_seen_ns);
}

/// IPv6 with a chain of extension headers before the transport header.
fn v6_with_ext(dst: [u8; 16], frag_offset: u16) -> Vec<u8> {
    let src = ip6("2001:db8:c:1::2");
    // hop-by-hop (8 bytes) -> destination options (16 bytes) -> fragment
    // (8 bytes) -> UDP (8 bytes header + 12 payload).
    let mut ext = Vec::new();
    ext.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]); // HBH: next=DSTOPTS, len 0 -> 8 bytes, PadN
    ext.extend_from_slice(&[44, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // DSTOPTS: next=FRAG, 16 bytes
    let off = (frag_offset << 3).to_be_bytes();
    ext.extend_from_slice(&[17, 0, off[0], off[1], 0, 0, 0, 1]); // FRAG: next=UDP
    let udp = [0x9c, 0x40, 0x00, 0x35, 0, 20, 0, 0]; // 40000 -> 53, len 20
    let payload = [0u8; 12];
    let plen = (ext.len() + udp.len() + payload.len()) as u16;
    let mut p = Vec::new();
    p.extend_from_slice(&MAC);
    p.extend_from_slice(&MAC);
    p.extend_from_slice(&[0x86, 0xdd]);
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&plen.to_be_bytes());
    p.extend_from_slice(&[0, 64]); // next header = hop-by-hop
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&ext);
    p.extend_from_slice(&udp);
    p.extend_from_slice(&payload);
    p
}

#[test]
fn crafted_ipv6_packets_and_extension_headers() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    let t = Loaded::new("v6");
    let pod = ip6("2001:db8:c:1::2");
    let svc = ip6("2001:db8:c:fa::2");
    let net = ip6("2001:db8:e::1");
    let a = v6(pod, net, "udp", 100);
    let b = v6(pod, svc, "tcp", 500);
    let c = v6(pod, net, "icmp", 32);
    let d = v6_with_ext(net, 0);
    let e = v6_with_ext(net, 100); // non-first fragment: no ports
    for p in [&a, &b, &c, &d, &e] {
        assert_eq!(t.run(true, p), 1);
    }
    let s = t.my_stats();
    assert_eq!(s.egress.internal.packets, 1);
    assert_eq!(s.egress.internal.bytes, 40 + 20 + 500);
    assert_eq!(s.egress.external.packets, 4);
    let ext_len = (d.len() - 14) as u64;
    assert_eq!(ext_len, 40 + 32 + 20);
    assert_eq!(
        s.egress.external.bytes,
        (48 + 100) + (48 + 32) + 2 * ext_len
    );
    assert_eq!(s.malformed, 0);
    let netip = IpAddr::V6(Ipv6Addr::from(net));
    // The extension-header walk reached UDP port 53 behind three headers.
    let f = t
        .flow(netip, 53, 17)
        .expect("udp/53 flow behind extension headers");
    assert_eq!((f.tx.packets, f.tx.bytes), (1, ext_len));
    let f = t
        .flow(netip, 0, 17)
        .expect("non-first fragment: udp without ports");
    assert_eq!((f.tx.packets, f.tx.bytes), (1, ext_len));
    let f = t.flow(netip, 5353, 17).expect("plain udp");
    assert_eq!(f.tx.bytes, 148);
    assert_eq!(t.flow(netip, 0, 58).expect("icmpv6").tx.bytes, 80);
}

#[test]
fn truncated_and_garbage_packets_pass_and_are_counted() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    let t = Loaded::new("junk");
    let full = v4(POD, NET, "tcp", 0);
    let mut sent = 0u64;
    let mut bytes = 0u64;
    // IPv4 cut inside the TCP ports. (BPF_PROG_TEST_RUN itself refuses
    // IPv4 frames shorter than a full IP header, as ip_rcv would.)
    for cut in [14 + 20, 14 + 21, 14 + 23] {
        assert_eq!(t.run(true, &full[..cut]), 1);
        sent += 1;
        bytes += (cut - 14) as u64;
    }
    // IPv4 header claiming 60 bytes of options that are not there.
    let mut lie = full[..14 + 24].to_vec();
    lie[14] = 0x4f;
    assert_eq!(t.run(true, &lie), 1);
    sent += 1;
    bytes += 24;
    // IPv6 header claiming a hop-by-hop header that is not there.
    let mut v6t = v6(ip6("2001:db8:c:1::2"), ip6("2001:db8:e::1"), "udp", 0);
    v6t[14 + 6] = 0;
    v6t.truncate(14 + 40);
    assert_eq!(t.run(true, &v6t), 1);
    sent += 1;
    bytes += 40;
    // Random frames, some with IPv4/IPv6 ethertypes so the parser runs.
    let mut rng = Lcg(0x5eed);
    for i in 0..2000u32 {
        // Frames with an IP ethertype need a full IP header to be accepted
        // by BPF_PROG_TEST_RUN; others may be as short as an Ethernet header.
        let min = if i % 3 == 2 { 14 } else { 14 + 40 };
        let len = min + (rng.next() as usize % (1514 - min + 1));
        let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        match i % 3 {
            0 => f[12..14].copy_from_slice(&[0x08, 0x00]),
            1 => f[12..14].copy_from_slice(&[0x86, 0xdd]),
            _ => {}
        }
        assert_eq!(t.run(true, &f), 1, "random frame {i} must pass");
        sent += 1;
        bytes += (len - 14) as u64;
    }
    let s = t.my_stats();
    let total = s.egress.internal.packets + s.egress.external.packets;
    assert_eq!(total, sent, "every packet counted once");
    assert_eq!(
        s.egress.internal.bytes + s.egress.external.bytes,
        bytes,
        "bytes equal packet lengths"
    );
    assert!(
        s.malformed >= 4,
        "the four truncated packets are malformed: {}",
        s.malformed
    );
    assert!(s.malformed <= sent);
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

/// A DNS query for `name` (UDP to port 53) in an IPv4 frame.
fn dns_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4(POD, NET, 64)
        .udp(40000, 53)
        .write(&mut out, &q)
        .unwrap();
    out
}

/// The start of a stratum session in a TCP segment.
fn stratum_segment() -> Vec<u8> {
    let p = b"{\"id\":1,\"method\":\"mining.subscribe\",\"params\":[\"x/1.0\"]}\n";
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC, MAC)
        .ipv4(POD, NET, 64)
        .tcp(40000, 3333, 1, 1000)
        .write(&mut out, p)
        .unwrap();
    out
}

/// At least a million random and mutated packets through both programs:
/// every verdict is pass, and per direction the packet and byte totals
/// equal what was sent (bytes = frame length minus the Ethernet header).
/// Mutations start from valid IPv4/IPv6 TCP, UDP, ICMP, extension-header,
/// DNS and stratum packets, flip 1-8 random bytes and cut the tail at a
/// random length; a quarter of the packets are random bytes with an IP
/// ethertype.
#[test]
fn a_million_random_and_mutated_packets_pass_and_are_counted() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    const PACKETS: u32 = 1_000_000;
    let t = Loaded::new("fuzz");
    let templates = [
        v4(POD, NET, "udp", 100),
        v4(POD, SVC, "tcp", 600),
        v4(POD, CARVED, "icmp", 56),
        v6(ip6("2001:db8:c:1::2"), ip6("2001:db8:e::1"), "udp", 300),
        v6(ip6("2001:db8:c:1::2"), ip6("2001:db8:e::1"), "tcp", 1200),
        v6(ip6("2001:db8:c:1::2"), ip6("2001:db8:c:fa::2"), "icmp", 40),
        v6_with_ext(ip6("2001:db8:e::1"), 0),
        v6_with_ext(ip6("2001:db8:e::1"), 185),
        dns_query("aGVsbG8gd29ybGQ.t.example.com"),
        stratum_segment(),
    ];
    let mut rng = Lcg(0xf022);
    let (mut sent, mut refused) = ([0u64; 2], 0u64);
    let mut bytes = [0u64; 2];
    for i in 0..PACKETS {
        let mut f = if i % 4 == 3 {
            let len = 54 + rng.next() as usize % (1514 - 54 + 1);
            let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let et: &[u8] = if rng.next().is_multiple_of(2) {
                &[0x08, 0x00]
            } else {
                &[0x86, 0xdd]
            };
            f[12..14].copy_from_slice(et);
            f
        } else {
            let mut f = templates[rng.next() as usize % templates.len()].clone();
            for _ in 0..1 + rng.next() % 8 {
                // Never the Ethernet header: BPF_PROG_TEST_RUN needs it.
                let at = 14 + rng.next() as usize % (f.len() - 14);
                f[at] = rng.next() as u8;
            }
            let min = 54.min(f.len());
            let cut = min + rng.next() as usize % (f.len() - min + 1);
            f.truncate(cut);
            f
        };
        // The kernel's test-run refuses IP frames shorter than the IP
        // header (as ip_rcv would); keep them long enough to be accepted.
        if f.len() < 54 {
            f.resize(54, 0);
        }
        let egress = i % 2 == 0;
        let prog = t.dp.skb_program(egress).unwrap();
        match prog.test_run(TestRunOptions {
            data_in: Some(&f),
            ..TestRunOptions::default()
        }) {
            Ok(r) => {
                assert_eq!(
                    r.return_value,
                    1,
                    "packet {i} ({} bytes, {:02x?}) must pass",
                    f.len(),
                    &f[..f.len().min(64)]
                );
                sent[egress as usize] += 1;
                bytes[egress as usize] += (f.len() - 14) as u64;
            }
            Err(_) => refused += 1,
        }
    }
    let s = t.my_stats();
    let dirs = [(&s.ingress, "ingress"), (&s.egress, "egress")];
    for (d, (c, name)) in dirs.iter().enumerate() {
        assert_eq!(
            c.internal.packets + c.external.packets,
            sent[d],
            "{name}: every packet counted once"
        );
        assert_eq!(
            c.internal.bytes + c.external.bytes,
            bytes[d],
            "{name}: bytes equal packet lengths"
        );
    }
    eprintln!(
        "fuzz: {} packets passed and counted exactly ({} egress, {} ingress), {refused} refused by BPF_PROG_TEST_RUN itself, {} flagged malformed",
        sent[0] + sent[1],
        sent[1],
        sent[0],
        s.malformed
    );
    assert_eq!(refused, 0, "every frame was accepted by the test-run");
}

/// The per-CPU flow cache: repeated packets of one flow are counted in a
/// CPU's slot, not the maps; the merged read is exact, and when the slot is
/// refilled (here: a scope-generation bump, as after a CIDR change) its
/// counts land in the maps exactly once.
#[test]
fn flow_cache_keeps_counts_exact_across_hits_and_refills() {
    if !tollgate_tests::privileged::require_root() {
        return;
    }
    // One CPU, so every run meets the same slot and the map-path counts
    // are exact too.
    tollgate_tests::progrun::pin_this_thread_to_cpu0();
    let mut t = Loaded::new("fcache");
    let frame = v4(POD, NET, "udp", 100);
    const R: u64 = 5000;
    t.run_repeat(&frame, R as u32);
    let merged = t.my_stats();
    assert_eq!(merged.egress.external.packets, R);
    assert_eq!(merged.egress.external.bytes, R * 128);
    // The first packet takes the map path; the rest are cache hits,
    // invisible in the maps alone.
    let raw = t.my_map_stats();
    assert_eq!(raw.egress.external.packets, 1, "{raw:?}");
    let net = IpAddr::V4(Ipv4Addr::from(NET));
    let f = t.flow(net, 53, 17).expect("flow");
    assert_eq!((f.tx.packets, f.tx.bytes), (R, R * 128));

    // Same CIDRs, new generation: every slot is stale, so the next packet
    // takes the map path and refills its slot, flushing the old counts.
    let cidrs = tollgate::config::Config::parse(tollgate_tests::progrun::CONFIG)
        .unwrap()
        .cidr_table();
    t.dp.set_cidrs(&cidrs).expect("set cidrs");
    t.run(true, &frame);
    let merged = t.my_stats();
    assert_eq!(merged.egress.external.packets, R + 1);
    assert_eq!(merged.egress.external.bytes, (R + 1) * 128);
    // The refill flushed the R - 1 cached packets; the new one took the
    // map path.
    let raw = t.my_map_stats();
    assert_eq!(raw.egress.external.packets, R + 1, "{raw:?}");
    let f = t.flow(net, 53, 17).expect("flow");
    assert_eq!((f.tx.packets, f.tx.bytes), (R + 1, (R + 1) * 128));
    let fills = t.maps().counters().unwrap()[tollgate_ebpf::Counter::FlowCacheFills as usize];
    assert!(
        fills >= 2,
        "at least the first fill and the refill: {fills}"
    );
}
