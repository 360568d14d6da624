//! BPF_PROG_TEST_RUN of the real cgroup_skb programs, for the
//! prog_test_run tests: each `Loaded` has its own pins, removed on drop.

use std::{net::IpAddr, os::unix::fs::MetadataExt as _};

use aya::programs::{TestRun as _, TestRunOptions};
use tollgate::{
    cgroupfs,
    ebpf::{Dataplane, LoadOptions, PinDir, PinnedMaps, remove_pins},
};
use tollgate_ebpf::{CgroupStats, PeerKey, addr_to_key};

/// The network config the tests load with.
pub const CONFIG: &str = "[network]\ninternal_cidrs = [\"198.18.0.0/16\", \"2001:db8:c::/48\"]\nexternal_cidrs = [\"198.18.99.0/24\"]\n";

/// Loads the programs with their own pins, removed on drop.
pub struct Loaded {
    pub dp: Dataplane,
    pub pins: PinDir,
}

impl Loaded {
    pub fn new(tag: &str) -> Self {
        Self::with_config(tag, "")
    }

    /// Loads with CONFIG plus `extra` TOML (e.g. a `[maps]` section).
    pub fn with_config(tag: &str, extra: &str) -> Self {
        let pins = PinDir::new(format!(
            "/sys/fs/bpf/tollgate-test-{}-{tag}",
            std::process::id()
        ));
        let cfg = tollgate::config::Config::parse(&format!("{CONFIG}{extra}")).unwrap();
        cfg.validate().expect("valid test config");
        let dp = Dataplane::load(&LoadOptions {
            storage: true,
            ..LoadOptions::from_config(&cfg, pins.clone())
        })
        .expect("load programs");
        Self { dp, pins }
    }

    /// Runs one packet (an Ethernet frame) through egress or ingress.
    pub fn run(&self, egress: bool, frame: &[u8]) -> u32 {
        self.run_n(egress, frame, 1)
    }

    /// Runs one frame through egress `repeat` times in one test run (the
    /// kernel reruns the program on the same packet: `repeat` packets).
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) {
        assert_eq!(self.run_n(true, frame, repeat), 1, "verdict must be pass");
    }

    /// One BPF_PROG_TEST_RUN of `frame`, `repeat` times; the verdict.
    fn run_n(&self, egress: bool, frame: &[u8], repeat: u32) -> u32 {
        let prog = self.dp.skb_program(egress).unwrap();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN ({repeat}x) on a {}-byte frame {:02x?}: {e}",
                    frame.len(),
                    &frame[..frame.len().min(40)]
                )
            });
        r.return_value
    }

    /// Counters of this process's cgroup in `TG_CG_STATS` alone, without
    /// the flow cache.
    pub fn my_map_stats(&self) -> CgroupStats {
        row(self.maps().cgroup_stats_batch().unwrap(), &my_cgroup_id()).unwrap_or_default()
    }

    pub fn maps(&self) -> PinnedMaps {
        PinnedMaps::open(&self.pins).unwrap()
    }

    /// Counters of this process's cgroup (the test-run socket belongs to it).
    pub fn my_stats(&self) -> CgroupStats {
        row(self.maps().counts(true).unwrap().0, &my_cgroup_id()).unwrap_or_default()
    }

    pub fn flow(&self, ip: IpAddr, port: u16, proto: u8) -> Option<tollgate_ebpf::FlowStats> {
        let (family, addr) = addr_to_key(ip);
        let key = PeerKey {
            cgroup_id: my_cgroup_id(),
            addr,
            port,
            proto,
            family,
            _pad: [0; 4],
        };
        row(self.maps().counts(true).unwrap().1, &key)
    }
}

/// The value of `key` among a map's (key, value) rows.
fn row<K: PartialEq, V>(rows: Vec<(K, V)>, key: &K) -> Option<V> {
    rows.into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = remove_pins(&self.pins);
    }
}

pub fn my_cgroup_id() -> u64 {
    let mount = cgroupfs::cgroup2_mount().unwrap();
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2 entry in /proc/self/cgroup");
    std::fs::metadata(mount.join(rel.trim_start_matches('/')))
        .unwrap()
        .ino()
}

/// Pins the calling thread to CPU 0 (util-linux `taskset` on this thread's
/// id), so every test run meets the same per-CPU state.
pub fn pin_this_thread_to_cpu0() {
    let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = me
        .file_name()
        .and_then(|t| t.to_str())
        .expect("thread id")
        .to_owned();
    let st = std::process::Command::new("taskset")
        .args(["-p", "-c", "0", &tid])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running taskset");
    assert!(st.success(), "taskset -p -c 0 {tid}: {st}");
}
