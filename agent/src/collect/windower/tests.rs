use super::*;
use crate::collect::{Counts, Destination, DirCounts, DnsSample};

const T0: u64 = 1_767_225_600;

fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + s)
}

fn row(id: u64, path: Option<&str>, ext: u64, dests: &[(&str, u64)]) -> CgroupRow {
    CgroupRow {
        cgroup_id: id,
        path: path.map(str::to_owned),
        egress: DirCounts {
            internal: Counts::default(),
            external: Counts {
                bytes: ext,
                packets: ext / 100,
            },
        },
        class: Some("training".into()),
        pod: Some(format!("pod-{id}")),
        destinations: dests
            .iter()
            .map(|(a, tx)| Destination {
                addr: (*a).into(),
                port: 443,
                proto: "tcp".into(),
                tx_bytes: *tx,
                tx_packets: tx / 100,
                ..Destination::default()
            })
            .collect(),
        ..CgroupRow::default()
    }
}

fn snap(t: u64, rows: Vec<CgroupRow>) -> Snapshot {
    Snapshot {
        cgroups: rows,
        ..Snapshot::empty(at(t))
    }
}

fn windower() -> Windower {
    Windower::new(
        Duration::from_secs(10),
        None,
        vec![("198.18.0.0/16".parse().unwrap(), true)],
    )
}

#[test]
fn cumulative_counters_become_window_deltas() {
    let mut w = windower();
    let ext = "203.0.113.5";
    let int = "198.18.0.9";
    assert!(
        w.push(&snap(
            0,
            vec![row(42, None, 1000, &[(ext, 1000), (int, 50)])]
        ))
        .is_empty()
    );
    // A cgroup first seen after the start counts from zero.
    assert!(
        w.push(&snap(
            5,
            vec![
                row(42, None, 3000, &[(ext, 3000), (int, 50)]),
                row(43, None, 700, &[(ext, 700)]),
            ]
        ))
        .is_empty()
    );
    let out = w.push(&snap(
        10,
        vec![
            row(42, None, 6000, &[(ext, 6000), (int, 80)]),
            row(43, None, 900, &[(ext, 900)]),
        ],
    ));
    assert_eq!(out.len(), 2);
    let a = &out[0];
    assert_eq!((a.subject.cgroup_id, a.start, a.end), (42, at(0), at(10)));
    assert_eq!(a.subject.class, "training");
    assert_eq!(a.features.egress_external_bytes, 5000);
    assert_eq!(a.features.egress_external_packets, 50);
    assert_eq!(a.features.distinct_destinations, 2);
    assert_eq!(a.peers[0].tx_bytes, 5000);
    assert!(a.peers[0].external);
    assert_eq!((a.peers[1].tx_bytes, a.peers[1].external), (30, false));
    assert_eq!(a.peers[0].first_seen, Some(at(0)));
    let b = &out[1];
    assert_eq!(b.features.egress_external_bytes, 900);
    assert_eq!(b.peers[0].tx_bytes, 900);
    assert_eq!(b.peers[0].first_seen, Some(at(5)));
    assert_eq!(w.resets, 0);
}

#[test]
fn resets_count_from_zero_and_gone_cgroups_end() {
    let mut w = windower();
    w.push(&snap(0, vec![row(42, None, 6000, &[])]));
    // The kernel entry was recreated: 6000 -> 100 means 100 new bytes.
    w.push(&snap(5, vec![row(42, None, 100, &[])]));
    let out = w.push(&snap(10, vec![row(42, None, 400, &[])]));
    assert_eq!(out[0].features.egress_external_bytes, 400);
    // Bytes and packets both went backwards.
    assert_eq!(w.resets, 2);
    // Gone: one last window with its final counts, then nothing more
    // while the inventory keeps its row for the grace period.
    let mut gone = row(42, None, 500, &[]);
    gone.gone = true;
    let out = w.push(&snap(20, vec![gone.clone()]));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].features.egress_external_bytes, 100);
    assert!(w.push(&snap(30, vec![gone.clone()])).is_empty());
    assert!(w.push(&snap(40, vec![])).is_empty());
    // An idle cgroup still gets (empty) windows; a forgotten one stops.
    let out = w.push(&snap(50, vec![row(44, None, 0, &[])]));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].features.egress_external_bytes, 0);
    assert!(w.push(&snap(60, vec![])).len() == 1);
    assert!(w.push(&snap(70, vec![])).is_empty());
}

#[test]
fn dns_names_give_mean_length_and_label_entropy() {
    assert_eq!(entropy("aaaa"), 0.0);
    assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    // Only labels below the registered domain count.
    assert!((label_entropy("abcd.example.com") - 2.0).abs() < 1e-9);
    assert!((label_entropy("example.com.") - entropy("examplecom")).abs() < 1e-9);
    let mut w = windower();
    w.push(&snap(0, vec![row(42, None, 0, &[])]));
    let mut s = snap(10, vec![row(42, None, 0, &[])]);
    s.cgroups[0].dns_queries = 2;
    s.dns_samples = vec![
        DnsSample {
            cgroup_id: 42,
            name: "abcd.example.com".into(),
            qtype: 1,
            ts_ns: 1,
        },
        DnsSample {
            cgroup_id: 42,
            name: "aaaa.example.com".into(),
            qtype: 1,
            ts_ns: 2,
        },
        // Unknown cgroup: ignored.
        DnsSample {
            cgroup_id: 99,
            name: "x".into(),
            qtype: 1,
            ts_ns: 3,
        },
    ];
    let out = w.push(&s);
    let f = &out[0].features;
    assert_eq!(f.dns_queries, 2);
    assert!((f.dns_mean_name_len - 16.0).abs() < 1e-9);
    assert!((f.dns_label_entropy - 1.0).abs() < 1e-9);
}

#[test]
fn cpu_from_cpu_stat_and_cpu_max() {
    let root = std::env::temp_dir().join(format!("tollgate-windower-cpu-{}", std::process::id()));
    let dir = root.join("kubepods/pod-a");
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _c = Cleanup(root.clone());
    std::fs::write(dir.join("cpu.stat"), "usage_usec 1000000\nuser_usec 5\n").unwrap();
    std::fs::write(dir.join("cpu.max"), "50000 100000\n").unwrap();
    let mut w = Windower::new(Duration::from_secs(10), Some(root.clone()), Vec::new());
    w.push(&snap(0, vec![row(42, Some("/kubepods/pod-a"), 0, &[])]));
    std::fs::write(dir.join("cpu.stat"), "usage_usec 5500000\n").unwrap();
    let out = w.push(&snap(10, vec![row(42, Some("/kubepods/pod-a"), 0, &[])]));
    assert!((out[0].features.cpu_seconds - 4.5).abs() < 1e-9);
    assert_eq!(out[0].features.cpu_limit_cores, Some(0.5));
    std::fs::write(dir.join("cpu.max"), "max 100000\n").unwrap();
    let out = w.push(&snap(20, vec![row(42, Some("/kubepods/pod-a"), 0, &[])]));
    assert_eq!(out[0].features.cpu_seconds, 0.0);
    assert_eq!(out[0].features.cpu_limit_cores, None);
}

fn iface(ifindex: u32, cgroup_id: u64, cgroup: &str, bytes: u64) -> crate::podtc::IfaceRow {
    crate::podtc::IfaceRow {
        ifindex,
        cgroup_id,
        cgroup: Some(cgroup.into()),
        pod_egress: Counts {
            bytes,
            packets: bytes / 1000,
        },
        ..crate::podtc::IfaceRow::default()
    }
}

/// Frames the cgroup hooks never saw (an AF_PACKET sender) but the pod's
/// veth did are booked as external egress of the pod, and named; traffic
/// the cgroup counted to loopback (which never crosses the veth) does not
/// hide them.
#[test]
fn interface_egress_beyond_the_cgroup_counts_is_external_and_named() {
    let mut w = windower();
    let ext = "203.0.113.5";
    let lo = "127.0.0.1";
    let pod = |t: u64, cg_ext: u64, lo_tx: u64, if_bytes: u64| {
        let mut r = row(42, Some("/pods/a"), cg_ext, &[(ext, cg_ext), (lo, lo_tx)]);
        // Loopback is counted by the cgroup hooks as internal egress.
        r.egress.internal = Counts {
            bytes: lo_tx,
            packets: lo_tx / 100,
        };
        let mut s = snap(t, vec![r, row(43, Some("/pods/b"), 0, &[])]);
        s.interfaces = vec![
            iface(7, 42, "/pods/a", if_bytes),
            iface(8, 43, "/pods/b", 0),
        ];
        s
    };
    // History before the first snapshot is not booked.
    w.push(&pod(0, 1000, 0, 900_000));
    w.push(&pod(5, 3000, 40_000, 952_000));
    let out = w.push(&pod(10, 6000, 80_000, 1_005_000));
    let a = &out[0];
    // veth: 105,000 B; cgroup to non-loopback peers: 5,000 B; loopback
    // 80,000 B does not offset the difference.
    assert_eq!(a.features.unattributed_egress_bytes, 100_000);
    assert_eq!(a.features.egress_external_bytes, 5000 + 100_000);
    assert_eq!(a.features.egress_external_packets, 50 + (105 - 50));
    assert_eq!(out[1].features.unattributed_egress_bytes, 0);
    // Next window: the veth saw exactly what the cgroup counted.
    w.push(&pod(15, 8000, 80_000, 1_007_000));
    let out = w.push(&pod(20, 9000, 80_000, 1_008_000));
    assert_eq!(out[0].features.unattributed_egress_bytes, 0);
    assert_eq!(out[0].features.egress_external_bytes, 3000);
}
