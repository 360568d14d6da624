//! Privileged storage accounting: the real agent with its raw tracepoints,
//! a FUSE mount (bindfs) configured as watched storage and an unwatched
//! tmpfs. A process in a pod cgroup moves exactly known byte counts through
//! every read/write syscall family; the agent must report exactly those
//! bytes and calls for the watched mount, nothing for the tmpfs, and
//! nothing for another pod. A mount added while the agent runs is picked
//! up, and one that goes away leaves the filter.
#![forbid(unsafe_code)]

use std::{path::Path, time::Duration};

use tollgate_tests::{
    agent::{Agent, TestPinDir},
    cgroup::TestCgroup,
    privileged,
    storage::{Bindfs, ScratchDir, Tmpfs, dev_of, run_in},
    top::{CgroupRow, Io, Top},
};

const TOOL: &str = env!("CARGO_BIN_EXE_tg-storage");
const WAIT: Duration = Duration::from_secs(30);

fn config(extra: &str) -> String {
    format!("[agent]\ntick = \"200ms\"\n[storage]\nmountinfo = \"/proc/self/mountinfo\"\n{extra}\n")
}

fn top_until(pins: &TestPinDir, done: impl Fn(&Top) -> bool) -> Top {
    tollgate_tests::agent::top_until(pins.path(), WAIT, done)
}

fn row(t: &Top, id: u64) -> CgroupRow {
    t.row(id)
}

/// Runs tg-storage in the pod; returns the calls it made with a positive
/// result (it fails unless it moved exactly `bytes`).
fn io(pod: &TestCgroup, family: &str, path: &Path, from: Option<&Path>, bytes: u64) -> u64 {
    io_holding(pod, family, path, from, bytes, 0)
}

/// [`io`] by a process that first opens `hold_fds` extra fds.
fn io_holding(
    pod: &TestCgroup,
    family: &str,
    path: &Path,
    from: Option<&Path>,
    bytes: u64,
    hold_fds: usize,
) -> u64 {
    let mut argv = vec![
        TOOL.to_owned(),
        "io".into(),
        "--family".into(),
        family.into(),
        "--path".into(),
        path.display().to_string(),
        "--bytes".into(),
        bytes.to_string(),
        "--chunk".into(),
        "4096".into(),
        "--hold-fds".into(),
        hold_fds.to_string(),
    ];
    if let Some(f) = from {
        argv.extend(["--from".into(), f.display().to_string()]);
    }
    let out = run_in(pod, &argv, WAIT).unwrap_or_else(|e| panic!("{family}: {e}"));
    let mut it = out.stdout.split_whitespace();
    let moved: u64 = it.next().and_then(|s| s.parse().ok()).expect("bytes");
    assert_eq!(moved, bytes, "{family} moved");
    it.next().and_then(|s| s.parse().ok()).expect("calls")
}

#[test]
fn storage_bytes_per_family_are_exact() {
    privileged!("bindfs", "fusermount3", "mount", "umount");
    let scratch = ScratchDir::new().expect("scratch dir");
    let fuse = Bindfs::mount(
        &scratch.dir("backing").unwrap(),
        &scratch.path().join("watched"),
    )
    .expect("bindfs");
    let tmp = Tmpfs::mount(&scratch.path().join("tmpfs")).expect("tmpfs");
    let (w, u) = (fuse.path().to_owned(), tmp.path().to_owned());
    let (wdev, udev) = (dev_of(&w).unwrap(), dev_of(&u).unwrap());
    assert_ne!(wdev, udev);
    // Inputs, written by the test itself (its own cgroup, not asserted).
    const M: u64 = 300_000;
    std::fs::write(w.join("data"), vec![7u8; M as usize]).unwrap();
    std::fs::write(u.join("src"), vec![9u8; 200_000]).unwrap();

    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), &config("watch_fstypes = [\"fuse.bindfs\"]"))
        .expect("agent starts");
    // "unknown" until the agent's API answers (top then reads the pins).
    let t = top_until(&pins, |t| {
        t.storage.status == "active" && t.storage.watches(&w)
    });
    assert_eq!(t.storage.status, "active", "{:?}", t.storage);
    assert!(
        t.storage.watches(&w),
        "bindfs mount watched: {:?}",
        t.storage
    );
    assert!(!t.storage.watches(&u), "tmpfs not watched: {:?}", t.storage);

    let a = TestCgroup::new("storage-a").expect("pod a");
    let b = TestCgroup::new("storage-b").expect("pod b");
    let mut want_w = Io::default();
    let mut want_r = Io::default();
    let check = |what: &str, want_w: Io, want_r: Io| {
        let t = top_until(&pins, |t| {
            let s = row(t, a.id()).storage_on(&wdev);
            s.written == want_w && s.read == want_r
        });
        let r = row(&t, a.id());
        let s = r.storage_on(&wdev);
        assert_eq!(
            s.written, want_w,
            "after {what}: written to the watched mount"
        );
        assert_eq!(s.read, want_r, "after {what}: read from the watched mount");
        assert_eq!(s.mount_point.as_deref(), Some(w.to_str().unwrap()));
        assert_eq!(s.fstype.as_deref(), Some("fuse.bindfs"));
    };

    // Writes: a distinct size per family, so a miss names the family.
    for (i, family) in ["write", "pwrite64", "writev", "pwritev", "pwritev2"]
        .iter()
        .enumerate()
    {
        let n = 10_000 + 1_111 * i as u64;
        let calls = io(&a, family, &w.join(format!("out-{family}")), None, n);
        want_w.bytes += n;
        want_w.calls += calls;
        // The same on the tmpfs: must not count anywhere.
        io(&a, family, &u.join(format!("out-{family}")), None, n);
        check(family, want_w, want_r);
    }
    // Copies into the watched mount from the unwatched tmpfs: the out fd
    // is the written side.
    for (family, n) in [("sendfile", 23_456u64), ("splice", 34_567)] {
        let calls = io(
            &a,
            family,
            &w.join(format!("out-{family}")),
            Some(&u.join("src")),
            n,
        );
        want_w.bytes += n;
        want_w.calls += calls;
        check(family, want_w, want_r);
    }
    // copy_file_range across file systems is EXDEV: within the watched
    // mount it is both a write (out fd) and a read (in fd).
    let n = 45_678;
    let calls = io(
        &a,
        "copy-file-range",
        &w.join("out-cfr"),
        Some(&w.join("data")),
        n,
    );
    want_w.bytes += n;
    want_w.calls += calls;
    want_r.bytes += n;
    want_r.calls += calls;
    check("copy_file_range", want_w, want_r);

    // Reads.
    for (i, family) in ["read", "pread64", "readv", "preadv", "preadv2"]
        .iter()
        .enumerate()
    {
        let m = 20_000 + 2_222 * i as u64;
        let calls = io(&a, family, &w.join("data"), None, m);
        want_r.bytes += m;
        want_r.calls += calls;
        io(&a, family, &u.join("src"), None, m);
        check(family, want_w, want_r);
    }
    // A process with more than 64 fds open: its fd table is no longer the
    // one embedded in files_struct, which the kernel program reads another
    // way.
    let (n, m) = (17_171u64, 13_131u64);
    let calls = io_holding(&a, "write", &w.join("out-many-fds"), None, n, 100);
    want_w.bytes += n;
    want_w.calls += calls;
    io_holding(&a, "write", &u.join("out-many-fds"), None, n, 100);
    let calls = io_holding(&a, "read", &w.join("data"), None, m, 100);
    want_r.bytes += m;
    want_r.calls += calls;
    io_holding(&a, "read", &u.join("src"), None, m, 100);
    check("more than 64 fds", want_w, want_r);
    // Copies out of the watched mount into the tmpfs: the in fd is read.
    for (family, m) in [("sendfile", 12_345u64), ("splice", 54_321)] {
        let calls = io(
            &a,
            family,
            &u.join(format!("in-{family}")),
            Some(&w.join("data")),
            m,
        );
        want_r.bytes += m;
        want_r.calls += calls;
        check(family, want_w, want_r);
    }

    // Pod B only touches the tmpfs.
    io(&b, "write", &u.join("b-out"), None, 50_000);
    io(&b, "read", &u.join("src"), None, 50_000);
    // One more tick: anything B caused would be visible by now.
    std::thread::sleep(Duration::from_millis(600));
    let t = top_until(&pins, |_| true);
    let ra = row(&t, a.id());
    assert_eq!(
        ra.storage.len(),
        1,
        "pod A: only the watched device: {:?}",
        ra.storage
    );
    assert_eq!(
        ra.storage_on(&udev),
        Default::default(),
        "nothing for the tmpfs"
    );
    assert_eq!(ra.storage_written_bytes, want_w.bytes);
    assert_eq!(ra.storage_read_bytes, want_r.bytes);
    assert_eq!(ra.out_per_storage_read, Some(0.0), "no network egress");
    let rb = row(&t, b.id());
    assert!(rb.storage.is_empty(), "pod B: nothing: {:?}", rb.storage);
    eprintln!(
        "pod A on {}: written {:?}, read {:?}",
        w.display(),
        want_w,
        want_r
    );
}

#[test]
fn storage_mount_added_while_running_is_picked_up() {
    privileged!("bindfs", "fusermount3", "mount", "umount");
    let scratch = ScratchDir::new().expect("scratch dir");
    let late = scratch.path().join("late");
    // Watched by path: the agent starts before anything is mounted there.
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(
        pins.path(),
        &config(&format!("watch_paths = [\"{}\"]", late.display())),
    )
    .expect("agent starts");
    let t = top_until(&pins, |t| t.storage.status == "active");
    assert!(!t.storage.watches(&late));

    let mut fuse = Bindfs::mount(&scratch.dir("backing").unwrap(), &late).expect("bindfs");
    let dev = dev_of(&late).unwrap();
    let t = top_until(&pins, |t| t.storage.watches(&late));
    assert!(
        t.storage.watches(&late),
        "new mount picked up: {:?}",
        t.storage
    );

    let pod = TestCgroup::new("storage-late").expect("pod");
    const N: u64 = 77_777;
    let calls = io(&pod, "write", &late.join("f"), None, N);
    let t = top_until(&pins, |t| {
        row(t, pod.id()).storage_on(&dev).written.bytes == N
    });
    assert_eq!(
        row(&t, pod.id()).storage_on(&dev).written,
        Io { bytes: N, calls },
        "exact bytes on the mount added at run time"
    );

    // Unmounted: it leaves the filter; the counters stay, named as before.
    fuse.unmount();
    let t = top_until(&pins, |t| !t.storage.watches(&late));
    assert!(
        !t.storage.watches(&late),
        "unmounted mount dropped: {:?}",
        t.storage
    );
    let s = row(&t, pod.id()).storage_on(&dev);
    assert_eq!(s.written.bytes, N);
    assert_eq!(s.mount_point.as_deref(), Some(late.to_str().unwrap()));
}

/// SIGKILL the agent: the pinned raw tracepoint links keep counting while
/// it is down, and the restarted agent's link swap neither loses nor
/// doubles a call.
#[test]
fn storage_counts_survive_agent_sigkill() {
    privileged!("bindfs", "fusermount3", "mount", "umount");
    let scratch = ScratchDir::new().expect("scratch dir");
    let fuse = Bindfs::mount(
        &scratch.dir("backing").unwrap(),
        &scratch.path().join("watched"),
    )
    .expect("bindfs");
    let w = fuse.path().to_owned();
    let dev = dev_of(&w).unwrap();
    let cfg = config("watch_fstypes = [\"fuse.bindfs\"]");
    let pins = TestPinDir::new().expect("pin dir");
    let mut agent = Agent::start(pins.path(), &cfg).expect("agent starts");
    top_until(&pins, |t| t.storage.watches(&w));
    let pod = TestCgroup::new("storage-restart").expect("pod");
    let mut want = Io::default();
    for (i, n) in [11_111u64, 22_222, 33_333].into_iter().enumerate() {
        match i {
            1 => agent.kill9(),
            2 => {
                let _again = Agent::start(pins.path(), &cfg).expect("agent restarts");
                top_until(&pins, |t| t.storage.status == "active");
                want.calls += io(&pod, "write", &w.join(format!("f{i}")), None, n);
                want.bytes += n;
                let t = top_until(&pins, |t| row(t, pod.id()).storage_on(&dev).written == want);
                assert_eq!(
                    row(&t, pod.id()).storage_on(&dev).written,
                    want,
                    "before, during and after the restart, exactly once"
                );
                return;
            }
            _ => {}
        }
        want.calls += io(&pod, "write", &w.join(format!("f{i}")), None, n);
        want.bytes += n;
    }
}

/// The storage programs pass the verifier with this kernel's BTF offsets
/// (loaded, not attached), and `tollgate check` reports them available.
#[test]
fn storage_programs_load_and_check_reports_them() {
    privileged!();
    use tollgate::ebpf::{Dataplane, LoadOptions, PinDir, StorageStatus, remove_pins};
    let cfg = tollgate::config::Config::default();
    let pins = PinDir::new(format!(
        "/sys/fs/bpf/tollgate-test-{}",
        tollgate_tests::unique_suffix()
    ));
    let dp = Dataplane::load(&LoadOptions {
        storage: true,
        ..LoadOptions::from_config(&cfg, pins.clone())
    });
    let status = dp.map(|d| d.storage.clone());
    let _ = remove_pins(&pins);
    assert_eq!(status.expect("load"), StorageStatus::Active);
    let row = tollgate::check::probe_all()
        .into_iter()
        .find(|p| p.feature.starts_with("storage accounting"))
        .expect("check has a storage row");
    assert!(row.available && !row.required, "{row:?}");
}

/// The compute-to-data ratio: a pod reads M bytes from watched storage and
/// sends K datagrams of S bytes to an external host; the agent reports
/// exactly (K * (S + 28)) / M as bytes out per byte read.
#[test]
fn storage_out_per_read_ratio_is_exact() {
    use std::net::{IpAddr, SocketAddr};
    use tollgate_tests::{topology::Topology, traffic::Sink};
    privileged!("bindfs", "fusermount3", "mount", "umount");
    const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
    const M: u64 = 64_000;
    const K: u64 = 20;
    const S: u64 = 1000;
    let scratch = ScratchDir::new().expect("scratch dir");
    let fuse = Bindfs::mount(
        &scratch.dir("backing").unwrap(),
        &scratch.path().join("watched"),
    )
    .expect("bindfs");
    let w = fuse.path().to_owned();
    std::fs::write(w.join("dataset"), vec![1u8; M as usize]).unwrap();
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(
        pins.path(),
        &format!(
            "{}[network]\ninternal_cidrs = [\"198.18.0.0/16\"]\n",
            config("watch_fstypes = [\"fuse.bindfs\"]")
        ),
    )
    .expect("agent starts");
    top_until(&pins, |t| {
        t.storage.status == "active" && t.storage.watches(&w)
    });
    let pod = topo.pod(0);
    // The pod (cgroup + netns) reads the dataset...
    let out = pod
        .run(
            &[
                TOOL,
                "io",
                "--family",
                "read",
                "--path",
                w.join("dataset").to_str().unwrap(),
                "--bytes",
                &M.to_string(),
            ],
            WAIT,
        )
        .expect("pod reads the dataset");
    assert!(out.stdout.starts_with(&M.to_string()), "{}", out.stdout);
    // ... and ships it out.
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 9300).to_string();
    let mut sink = Sink::start(topo.internet().command(&[
        TRAFFIC,
        "udp-sink",
        "--listen",
        &to,
        "--count",
        &K.to_string(),
        "--timeout-s",
        "20",
    ]))
    .expect("sink");
    tollgate_tests::traffic::udp_send(pod, TRAFFIC, &to, K, S, WAIT).expect("udp-send");
    assert_eq!(sink.finish(WAIT).expect("sink").last_number(), Some(K));
    let out_bytes = K * (S + 28);
    let id = pod.cgroup.id();
    let t = top_until(&pins, |t| {
        let r = row(t, id);
        r.storage_read_bytes == M && r.egress.external.bytes == out_bytes
    });
    let r = row(&t, id);
    assert_eq!(r.storage_read_bytes, M);
    assert_eq!(r.egress.external.bytes, out_bytes);
    assert_eq!(
        r.out_per_storage_read,
        Some(out_bytes as f64 / M as f64),
        "bytes out per byte read"
    );
}

/// Without readable kernel BTF (here: `storage.btf` pointing nowhere, as on
/// a kernel built without /sys/kernel/btf), storage accounting is off and
/// says why, `tollgate check` reports it unavailable but still succeeds,
/// and network accounting runs exactly as before.
#[test]
fn without_btf_storage_is_off_and_everything_else_runs() {
    use std::net::{IpAddr, SocketAddr};
    use tollgate_tests::topology::Topology;
    privileged!();
    const TRAFFIC: &str = env!("CARGO_BIN_EXE_tg-traffic");
    const K: u64 = 9;
    const S: u64 = 111;
    let missing = "/nonexistent/tollgate-test/vmlinux";
    let topo = Topology::builder().pods(1).build().expect("topology");
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(pins.path(), &config(&format!("btf = \"{missing}\"")))
        .expect("agent starts without BTF");
    let pod = topo.pod(0);
    let to = SocketAddr::new(IpAddr::V4(topo.internet().v4), 9400).to_string();
    tollgate_tests::traffic::udp_send(pod, TRAFFIC, &to, K, S, WAIT).expect("udp-send");
    let id = pod.cgroup.id();
    let t = top_until(&pins, |t| row(t, id).egress.external.bytes == K * (S + 28));
    assert_eq!(
        row(&t, id).egress.external.bytes,
        K * (S + 28),
        "network accounting unaffected"
    );
    assert_eq!(row(&t, id).egress.external.packets, K);
    assert!(
        t.storage.status.starts_with("unavailable") && t.storage.status.contains(missing),
        "status names the cause: {:?}",
        t.storage.status
    );
    let out = std::process::Command::new(tollgate_tests::agent::tollgate_bin())
        .args(["check", "--json", "--btf", missing])
        .output()
        .expect("tollgate check");
    assert!(out.status.success(), "storage is optional: check succeeds");
    let probes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = probes
        .iter()
        .find(|p| {
            p["feature"]
                .as_str()
                .is_some_and(|f| f.starts_with("storage accounting"))
        })
        .expect("storage row");
    assert_eq!(row["available"], false, "{row}");
    assert!(
        row["used_for"]
            .as_str()
            .unwrap()
            .contains("everything else runs"),
        "{row}"
    );
}

/// A full storage map loses nothing: once every (cgroup, device,
/// direction) slot is taken, further writes are counted exactly under the
/// overflow entry (cgroup id `u64::MAX`, device 0:0) and in the
/// `storage_stats_full` counter.
#[test]
fn full_storage_map_counts_into_the_overflow_entry() {
    privileged!("bindfs", "fusermount3", "mount", "umount");
    const ENTRIES: usize = 64;
    const OVERFLOW: u64 = u64::MAX;
    let scratch = ScratchDir::new().expect("scratch dir");
    let fuse = Bindfs::mount(
        &scratch.dir("backing").unwrap(),
        &scratch.path().join("watched"),
    )
    .expect("bindfs");
    let w = fuse.path().to_owned();
    let wdev = dev_of(&w).unwrap();
    let pins = TestPinDir::new().expect("pin dir");
    let _agent = Agent::start(
        pins.path(),
        // Only this test's mount: other storage tests running alongside
        // write on bindfs mounts of their own, which must not spill into
        // this agent's (deliberately tiny) map.
        &config(&format!(
            "watch_paths = [{:?}]\nstats_entries = {ENTRIES}",
            w.display().to_string()
        )),
    )
    .expect("agent starts");
    top_until(&pins, |t| t.storage.watches(&w));

    // The loader seeded two overflow entries (write, read): the rest of
    // the map is filled by one write per filler cgroup.
    let fillers: Vec<TestCgroup> = (0..ENTRIES - 2)
        .map(|i| TestCgroup::new(&format!("st-fill{i}")).expect("filler cgroup"))
        .collect();
    for (i, cg) in fillers.iter().enumerate() {
        io(cg, "write", &w.join(format!("fill-{i}")), None, 100);
    }
    let last = fillers.last().unwrap().id();
    top_until(&pins, |t| {
        t.row(last).storage_on(&wdev).written.bytes == 100
    });

    let late = TestCgroup::new("st-late").expect("late cgroup");
    const BYTES: u64 = 50_000;
    let calls = io(&late, "write", &w.join("late"), None, BYTES);
    let t = top_until(&pins, |t| {
        t.row(OVERFLOW).storage_on("0:0").written.bytes >= BYTES
    });
    let over = t.row(OVERFLOW).storage_on("0:0");
    assert_eq!(
        over.written,
        Io {
            bytes: BYTES,
            calls
        },
        "the late cgroup's writes are all in the overflow entry; late: {:?}, counters: {:?}, rows: {:?}",
        t.row(late.id()).storage,
        t.counters,
        t.cgroups
            .iter()
            .map(|r| (r.cgroup_id, r.path.clone(), r.storage.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        t.row(late.id()).storage,
        vec![],
        "no slot for the late cgroup"
    );
    assert_eq!(
        t.counters.other["storage_stats_full"],
        serde_json::json!(calls),
        "every overflowed call is counted"
    );
    for cg in &fillers {
        assert_eq!(t.row(cg.id()).storage_on(&wdev).written.bytes, 100);
    }
}
