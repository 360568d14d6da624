//! `tollgate check`: what the running kernel offers, what Tollgate uses,
//! and what is missing. Exits non-zero when a required feature is absent.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
    util::KernelVersion,
};

use crate::{cgroupfs, ebpf::sys};

/// One probed feature.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    pub feature: String,
    pub available: bool,
    /// Needed for the agent to run at all.
    pub required: bool,
    /// What Tollgate does with it (or instead of it).
    pub used_for: String,
}

fn probe(feature: &str, available: bool, required: bool, used_for: &str) -> Probe {
    Probe {
        feature: feature.into(),
        available,
        required,
        used_for: used_for.into(),
    }
}

fn prog(t: ProgramType) -> bool {
    is_program_supported(t).unwrap_or(false)
}

fn map(t: MapType) -> bool {
    is_map_supported(t).unwrap_or(false)
}

fn helper(t: ProgramType, h: BpfHelper) -> bool {
    is_helper_supported(t, h).unwrap_or(false)
}

/// Probes everything Tollgate can use.
pub fn probe_all() -> Vec<Probe> {
    probe_all_with(Path::new(crate::ebpf::btf::VMLINUX_BTF))
}

/// Probes everything, reading kernel BTF from `btf` (see `storage.btf`).
pub fn probe_all_with(btf: &Path) -> Vec<Probe> {
    let kv = KernelVersion::current().ok();
    let at_least = |a, b, c| kv.is_some_and(|v| v >= KernelVersion::new(a, b, c));
    let cg = cgroupfs::cgroup2_mount();
    let bpffs = sys::is_bpffs(Path::new("/sys/fs/bpf")).unwrap_or(false);
    vec![
        probe(
            &format!(
                "cgroup v2{}",
                cg.as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default()
            ),
            cg.is_ok(),
            true,
            "pod identity; hook attach point",
        ),
        probe(
            "bpffs at /sys/fs/bpf",
            true,
            true,
            if bpffs {
                "pins (mounted)"
            } else {
                "pins (not mounted: the agent mounts it)"
            },
        ),
        probe(
            "program cgroup_skb",
            prog(ProgramType::CgroupSkb),
            true,
            "per-pod byte/packet accounting",
        ),
        probe(
            "program cgroup_sock_addr",
            prog(ProgramType::CgroupSockAddr),
            true,
            "connection events (connect4/6, sendmsg4/6)",
        ),
        probe(
            "cgroup bpf_link (Linux 5.7)",
            at_least(5, 7, 0),
            true,
            "pinned links survive agent restarts",
        ),
        probe(
            "helper bpf_skb_cgroup_id",
            helper(ProgramType::CgroupSkb, BpfHelper::BPF_FUNC_skb_cgroup_id),
            true,
            "cgroup of each packet",
        ),
        probe(
            "helper bpf_ktime_get_coarse_ns (Linux 5.11)",
            helper(
                ProgramType::CgroupSkb,
                BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
            ),
            true,
            "flow first/last seen",
        ),
        probe(
            "map percpu_hash",
            map(MapType::PerCpuHash),
            true,
            "per-cgroup counters",
        ),
        probe(
            "map lru_hash",
            map(MapType::LruHash),
            true,
            "flow table, connection dedup",
        ),
        probe(
            "map lpm_trie",
            map(MapType::LpmTrie),
            true,
            "internal/external CIDRs",
        ),
        probe(
            "map ringbuf (Linux 5.8)",
            map(MapType::RingBuf),
            true,
            "connection events",
        ),
        probe(
            "map percpu_array",
            map(MapType::PerCpuArray),
            true,
            "kernel health counters",
        ),
        probe(
            "batch map lookups (Linux 5.6)",
            sys::probe_batch(),
            false,
            "draining maps (else per-key iteration)",
        ),
        probe(
            &format!("BTF ({})", btf.display()),
            btf.exists(),
            false,
            "kernel struct offsets for storage accounting",
        ),
        probe(
            "program raw_tracepoint",
            prog(ProgramType::RawTracePoint),
            false,
            "syscall hooks (storage)",
        ),
        storage_probe(btf),
        probe(
            "program tracepoint",
            prog(ProgramType::TracePoint),
            false,
            "syscall hooks fallback",
        ),
        probe(
            "program sched_cls (tc)",
            prog(ProgramType::SchedClassifier),
            false,
            "per-veth counting, quarantine",
        ),
        probe(
            "tcx (Linux 6.6)",
            at_least(6, 6, 0),
            false,
            "tc attach without touching the CNI's qdisc",
        ),
        probe(
            "program kprobe",
            prog(ProgramType::KProbe),
            false,
            "not used (tracepoints preferred)",
        ),
        probe(
            "kernel BPF stats (kernel.bpf_stats_enabled)",
            std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .is_ok_and(|s| s.trim() == "1"),
            false,
            "program run time metrics",
        ),
    ]
}

/// Storage accounting as a whole: kernel BTF with every struct member the
/// programs read, raw tracepoints, x86_64. Optional: without it the agent
/// runs network accounting only.
fn storage_probe(btf: &Path) -> Probe {
    let raw_tp = prog(ProgramType::RawTracePoint);
    let (available, used_for) = match (crate::ebpf::storage_offsets(btf), raw_tp) {
        (Ok(_), true) => (
            true,
            "per-pod bytes written to/read from CephFS, NFS, FUSE (sys_enter/sys_exit)".to_owned(),
        ),
        (Err(why), _) => (
            false,
            format!("storage accounting is unavailable ({why}); everything else runs"),
        ),
        (Ok(_), false) => (
            false,
            "storage accounting is unavailable (no raw tracepoint programs); everything else runs"
                .to_owned(),
        ),
    };
    Probe {
        feature: "storage accounting (BTF offsets + raw_tracepoint)".into(),
        available,
        required: false,
        used_for,
    }
}

/// Prints the probe table; returns whether every required feature is there.
pub fn print(probes: &[Probe], json: bool) -> bool {
    let ok = probes.iter().all(|p| p.available || !p.required);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(probes).unwrap_or_default()
        );
        return ok;
    }
    if let Ok(v) = KernelVersion::current() {
        println!("kernel {v}");
    }
    println!("{:<48} {:<9} {:<9} used for", "feature", "status", "need");
    for p in probes {
        println!(
            "{:<48} {:<9} {:<9} {}",
            p.feature,
            if p.available { "yes" } else { "MISSING" },
            if p.required { "required" } else { "optional" },
            p.used_for
        );
    }
    let missing: Vec<&str> = probes
        .iter()
        .filter(|p| p.required && !p.available)
        .map(|p| p.feature.as_str())
        .collect();
    if missing.is_empty() {
        println!("\nall required features present");
    } else {
        println!("\nmissing required features: {}", missing.join(", "));
    }
    ok
}
