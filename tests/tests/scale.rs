//! The pieces `cargo xtask bench scale` made cheaper, checked for
//! exactness on the real kernel and cgroup tree: the batch drain reads
//! exactly what per-key iteration reads; the parent-listing liveness check
//! agrees with one stat per cgroup; CPU usage read after the ancestor
//! flush is the cgroup's own.
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap, os::unix::fs::MetadataExt, path::PathBuf, process::Command,
    time::Duration,
};

use tollgate::{
    collect::windower::{UsageReader, cpu_usage_usec},
    ebpf::{PinDir, PinnedMaps},
    inventory::alive,
};
use tollgate_tests::{
    agent::{Agent, TestPinDir, top_until},
    cgroup::{TestCgroup, v2_mount},
    privileged,
};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
const WAIT: Duration = Duration::from_secs(60);
const PODS: usize = 64;

fn hop(dirs: &[PathBuf], rounds: usize) {
    let list = std::env::temp_dir().join(format!(
        "tollgate-scale-{}.txt",
        tollgate_tests::unique_suffix()
    ));
    let text: String = dirs.iter().map(|d| format!("{}\n", d.display())).collect();
    std::fs::write(&list, text).expect("cgroup list");
    for _ in 0..rounds {
        let out = Command::new(TRAFFIC)
            .args(["hop", "--to", "127.0.0.1:9", "--size", "32"])
            .arg("--cgroups")
            .arg(&list)
            .output()
            .expect("tg-traffic hop runs");
        assert!(
            out.status.success(),
            "hop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_file(&list);
}

/// Runs a CPU-bound shell loop inside cgroup `dir`: the shell waits for
/// its stdin to close, by which time it has been moved there.
fn burn_in(dir: &std::path::Path) {
    use std::{io::Write as _, process::Stdio};
    let mut child = Command::new("sh")
        .args([
            "-c",
            "read _; i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh runs");
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("move burner");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "go").expect("start burner");
    drop(stdin);
    assert!(child.wait().expect("burner ends").success());
}

/// Batch lookups (values summed over CPUs in place) return the same
/// entries with the same counts as get_next_key + lookup per key, for the
/// cgroup and flow maps with the flow cache merged in (what a tick reads),
/// with several rounds of traffic on each cgroup.
#[test]
fn batch_drain_reads_exactly_what_per_key_reads() {
    privileged!();
    let parent = TestCgroup::new("scale-drain").expect("parent cgroup");
    let dirs: Vec<PathBuf> = (0..PODS)
        .map(|i| parent.child(&format!("pod-{i:03}")).expect("pod cgroup"))
        .collect();
    let ids: Vec<u64> = dirs
        .iter()
        .map(|d| std::fs::metadata(d).expect("cgroup dir").ino())
        .collect();
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), "[agent]\ntick = \"200ms\"\n").expect("agent starts");
    hop(&dirs, 3);
    top_until(pins.path(), WAIT, |t| {
        ids.iter().all(|id| {
            let r = t.row(*id);
            r.egress.internal.packets + r.egress.external.packets == 3
        })
    });
    let maps = PinnedMaps::open(&PinDir::new(pins.path())).expect("pinned maps");
    // Only the test's cgroups: others on the host may send meanwhile.
    let ours = |id: &u64| ids.contains(id);
    // What a tick reads (maps plus the per-CPU flow cache), both ways.
    let (cb, fb) = maps.counts(true).expect("batch");
    let (cp, fp) = maps.counts(false).expect("per key");
    let batch: BTreeMap<u64, _> = cb.into_iter().filter(|(id, _)| ours(id)).collect();
    let per_key: BTreeMap<u64, _> = cp.into_iter().filter(|(id, _)| ours(id)).collect();
    assert_eq!(batch.len(), PODS, "every pod has a cgroup entry");
    assert_eq!(batch, per_key);
    for s in batch.values() {
        let packets = s.egress.internal.packets + s.egress.external.packets;
        assert_eq!(packets, 3, "three 32-byte datagrams per pod: {s:?}");
        assert_eq!(
            s.egress.internal.bytes + s.egress.external.bytes,
            3 * (32 + 28)
        );
    }
    let flows = |v: Vec<(tollgate_ebpf::PeerKey, tollgate_ebpf::FlowStats)>| {
        let mut v: Vec<_> = v
            .into_iter()
            .filter(|(k, _)| ours(&k.cgroup_id))
            .map(|(k, f)| ((k.cgroup_id, k.addr, k.port, k.proto), (f.tx, f.rx)))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    };
    let (fb, fp) = (flows(fb), flows(fp));
    assert_eq!(fb.len(), PODS, "one flow (to 127.0.0.1:9) per pod");
    assert_eq!(fb, fp);
    for (_, (tx, _)) in &fb {
        assert_eq!((tx.bytes, tx.packets), (3 * (32 + 28), 3));
    }
}

/// The liveness check lists a parent with many children once; it must
/// agree with a stat of each: removed cgroups and a cgroup re-created at
/// the same path (a new id) are gone, the rest alive.
#[test]
fn parent_listing_liveness_matches_cgroup_ids() {
    privileged!();
    let mount = v2_mount().expect("cgroup v2");
    let parent = TestCgroup::new("scale-alive").expect("parent cgroup");
    let n = alive::READDIR_MIN * 3;
    let dirs: Vec<PathBuf> = (0..n)
        .map(|i| parent.child(&format!("c{i:03}")).expect("cgroup"))
        .collect();
    let rel = |d: &PathBuf| format!("/{}", d.strip_prefix(&mount).expect("below").display());
    let mut known: Vec<(u64, String)> = dirs
        .iter()
        .map(|d| (std::fs::metadata(d).expect("dir").ino(), rel(d)))
        .collect();
    // The parent itself and a small sibling group take the stat path.
    known.push((parent.id(), parent.rel_path()));
    let small = parent.child("small/only").expect("cgroup");
    known.push((std::fs::metadata(&small).expect("dir").ino(), rel(&small)));
    let gone = |k: &[(u64, String)]| {
        let mut g = alive::gone(&mount, k.iter().map(|(id, p)| (*id, p.as_str())));
        g.sort_unstable();
        g
    };
    assert_eq!(gone(&known), Vec::<u64>::new(), "all alive");

    let mut expect: Vec<u64> = Vec::new();
    for i in [0, 7, 19, 30] {
        std::fs::remove_dir(&dirs[i]).expect("rmdir");
        expect.push(known[i].0);
    }
    std::fs::remove_dir(&small).expect("rmdir");
    expect.push(known[known.len() - 1].0);
    // Same path, new cgroup: the old id is gone, the new one alive.
    std::fs::remove_dir(&dirs[11]).expect("rmdir");
    std::fs::create_dir(&dirs[11]).expect("mkdir");
    expect.push(known[11].0);
    known.push((
        std::fs::metadata(&dirs[11]).expect("dir").ino(),
        rel(&dirs[11]),
    ));
    expect.sort_unstable();
    assert_eq!(gone(&known), expect);
}

/// CPU usage read through the reader (which first flushes the top-level
/// ancestor) is the cgroup's own: between two plain reads of the same
/// cgroup, and None once the cgroup is removed.
#[test]
fn flushed_cpu_usage_is_the_cgroups_own() {
    privileged!();
    let mount = v2_mount().expect("cgroup v2");
    let parent = TestCgroup::new("scale-cpu").expect("parent cgroup");
    let dirs: Vec<PathBuf> = (0..PODS)
        .map(|i| parent.child(&format!("pod-{i:03}")).expect("pod cgroup"))
        .collect();
    hop(&dirs, 2);
    // Three pods also burn measurable CPU (a shell loop of 100,000 steps).
    const BURNERS: usize = 3;
    for d in &dirs[..BURNERS] {
        burn_in(d);
    }
    let before: Vec<u64> = dirs
        .iter()
        .map(|d| cpu_usage_usec(d).expect("cpu.stat"))
        .collect();
    let mut reader = UsageReader::new(&mount, dirs.iter().map(PathBuf::as_path));
    assert_eq!(
        reader.tops().len(),
        1,
        "one top-level ancestor: {:?}",
        reader.tops()
    );
    assert!(parent.path().starts_with(&reader.tops()[0]));
    let via: Vec<u64> = dirs
        .iter()
        .map(|d| reader.usage_usec(d).expect("cpu.stat"))
        .collect();
    let after: Vec<u64> = dirs
        .iter()
        .map(|d| cpu_usage_usec(d).expect("cpu.stat"))
        .collect();
    for i in 0..dirs.len() {
        assert!(
            before[i] <= via[i] && via[i] <= after[i],
            "{}: {} <= {} <= {}",
            dirs[i].display(),
            before[i],
            via[i],
            after[i]
        );
    }
    assert!(
        via[..BURNERS].iter().all(|u| *u >= 1000),
        "the burners ran >= 1 ms each: {:?}",
        &via[..BURNERS]
    );
    std::fs::remove_dir(&dirs[0]).expect("rmdir");
    assert_eq!(reader.usage_usec(&dirs[0]), None);
}
