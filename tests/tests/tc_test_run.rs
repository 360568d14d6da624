//! BPF_PROG_TEST_RUN of the real tc programs on crafted frames: exact
//! per-interface counts (L3 bytes of IP frames, non-IP frames apart), the
//! verdict "no opinion" (TC_ACT_UNSPEC) for accounting and TC_ACT_SHOT only
//! for a quarantined interface, counted as dropped. Privileged.
//!
//! The kernel runs test frames on the loopback device of the caller's
//! namespace, so the interface is ifindex 1 here.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;
use tollgate::ebpf::{Dataplane, LoadOptions, PinDir, remove_pins, tc::IfMaps};
use tollgate_ebpf::{IfQuarantine, IfStats};
use tollgate_tests::privileged;

const LO: u32 = 1;
/// TC_ACT_UNSPEC as the test run returns it.
const NEXT: u32 = u32::MAX;
const SHOT: u32 = 2;

struct Loaded {
    dp: Dataplane,
    pins: PinDir,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pins);
    }
}

fn load() -> Loaded {
    let pins = PinDir::new(format!(
        "/sys/fs/bpf/tollgate-test-{}-tc",
        std::process::id()
    ));
    let cfg = tollgate::config::Config::default();
    let dp = Dataplane::load(&LoadOptions {
        storage: false,
        ..LoadOptions::from_config(&cfg, pins.clone())
    })
    .expect("load programs");
    Loaded { dp, pins }
}

fn udp_frame(payload: usize) -> Vec<u8> {
    let mac = [2, 0, 0, 0, 0, 1];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac, mac)
        .ipv4(Ipv4Addr::new(198, 18, 1, 2).octets(), [203, 0, 113, 1], 64)
        .udp(40000, 9)
        .write(&mut out, &vec![0u8; payload])
        .unwrap();
    out
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xffu8; 6];
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    f.extend_from_slice(&[0u8; 28]);
    f
}

fn run(l: &Loaded, from_pod: bool, frame: &[u8]) -> u32 {
    l.dp.tc_program(from_pod)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN")
        .return_value
}

fn stats(l: &Loaded) -> IfStats {
    IfMaps::open(&l.pins)
        .unwrap()
        .stats()
        .into_iter()
        .find(|(i, _)| *i == LO)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

#[test]
fn tc_counts_ip_frames_exactly_and_drops_only_quarantined_interfaces() {
    privileged!();
    let l = load();
    let frame = udp_frame(100);
    let l3 = (frame.len() - 14) as u64;
    assert_eq!(l3, 128, "20 IP + 8 UDP + 100 payload");
    for _ in 0..3 {
        assert_eq!(run(&l, true, &frame), NEXT, "accounting has no opinion");
    }
    assert_eq!(run(&l, false, &frame), NEXT);
    assert_eq!(run(&l, true, &arp_frame()), NEXT, "ARP passes");
    let s = stats(&l);
    assert_eq!((s.pod_egress.packets, s.pod_egress.bytes), (3, 3 * l3));
    assert_eq!((s.pod_ingress.packets, s.pod_ingress.bytes), (1, l3));
    assert_eq!(s.other_frames, 1, "non-IP frames apart");
    assert_eq!(s.dropped_egress.packets + s.dropped_ingress.packets, 0);

    let mut maps = IfMaps::open(&l.pins).unwrap();
    maps.quarantine(
        LO,
        IfQuarantine {
            cgroup_id: 42,
            since_unix: 1,
        },
    )
    .unwrap();
    assert_eq!(run(&l, true, &frame), SHOT);
    assert_eq!(
        run(&l, true, &arp_frame()),
        SHOT,
        "everything stops, ARP too"
    );
    assert_eq!(run(&l, false, &frame), SHOT);
    let q = stats(&l);
    assert_eq!(q.pod_egress, s.pod_egress, "dropped frames are not traffic");
    assert_eq!(
        (q.dropped_egress.packets, q.dropped_egress.bytes),
        (2, l3 + 28),
        "ARP's 28 bytes after the Ethernet header"
    );
    assert_eq!(
        (q.dropped_ingress.packets, q.dropped_ingress.bytes),
        (1, l3)
    );

    assert!(maps.release(LO).unwrap());
    assert_eq!(run(&l, true, &frame), NEXT, "released");
}
