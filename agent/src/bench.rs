//! `tollgate bench-prog` (driven by `cargo xtask bench dataplane`): ns per
//! packet of the egress program via BPF_PROG_TEST_RUN next to a baseline
//! program that only increments a per-CPU array.

use aya::programs::{TestRun as _, TestRunOptions};
use serde::Serialize;

use crate::{
    config::Config,
    ebpf::{Dataplane, DataplaneError, LoadOptions, PinDir, remove_pins},
};

#[derive(Debug, Serialize)]
pub struct ProgBenchRow {
    pub frame_bytes: usize,
    pub repeat: u32,
    pub rounds: usize,
    /// Medians over the rounds.
    pub baseline_ns: f64,
    pub egress_ns: f64,
    pub ratio: f64,
    /// Minima over the rounds: the least disturbed runs on a shared machine.
    pub baseline_min_ns: f64,
    pub egress_min_ns: f64,
}

/// An Ethernet + IPv4 + UDP frame of exactly `len` bytes (>= 42) from a
/// cluster address to an external one: the common egress case.
pub fn udp_frame(len: usize) -> Vec<u8> {
    let len = len.max(42);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[198, 18, 1, 2]);
    f[30..34].copy_from_slice(&[203, 0, 113, 1]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&443u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the comparison; programs are loaded with their own pins under
/// `pin_root`, removed afterwards.
pub fn prog_bench(
    pin_root: &str,
    repeat: u32,
    rounds: usize,
) -> Result<Vec<ProgBenchRow>, DataplaneError> {
    with_dataplane(pin_root, |dp| {
        let mut rows = Vec::new();
        for size in [64usize, 1500] {
            let frame = udp_frame(size);
            let (mut base, mut egress) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                // Alternate so drift on a shared machine hits both alike.
                base.push(run(dp.bench_baseline(true)?, &frame, repeat)?);
                egress.push(run(dp.skb_program(true)?, &frame, repeat)?);
            }
            let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let (bmin, emin) = (min(&base), min(&egress));
            let (b, e) = (median(base), median(egress));
            rows.push(ProgBenchRow {
                frame_bytes: size,
                repeat,
                rounds,
                baseline_ns: b,
                egress_ns: e,
                ratio: e / b,
                baseline_min_ns: bmin,
                egress_min_ns: emin,
            });
        }
        Ok(rows)
    })
}

/// Runs `f` on the programs loaded with the default config, storage
/// off, under their own pins in `pin_root`, removed afterwards.
fn with_dataplane<T>(
    pin_root: &str,
    f: impl FnOnce(&mut Dataplane) -> Result<T, DataplaneError>,
) -> Result<T, DataplaneError> {
    let pins = PinDir::new(pin_root);
    let opts = LoadOptions {
        storage: false,
        ..LoadOptions::from_config(&Config::default(), pins.clone())
    };
    let res = Dataplane::load(&opts).and_then(|mut dp| f(&mut dp));
    let _ = remove_pins(&pins);
    res
}

fn run(p: &aya::programs::CgroupSkb, frame: &[u8], repeat: u32) -> Result<f64, DataplaneError> {
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|e| DataplaneError::Program {
            name: "bench",
            source: Box::new(e),
        })?;
    // The kernel reports the mean duration of one run.
    Ok(r.duration.as_nanos() as f64)
}

/// `tollgate bench-floor`: attaches the benchmark baseline program at the
/// cgroup v2 root (egress and ingress), says `attached` on stdout, and
/// holds it until stdin closes; then the links go with the process. The
/// benchmark's reference run: what the cheapest program attached where
/// Tollgate attaches costs the traffic.
pub fn floor(pin_root: &str) -> Result<(), DataplaneError> {
    with_dataplane(pin_root, |dp| {
        let root = crate::cgroupfs::cgroup2_mount().map_err(|e| DataplaneError::Io {
            what: "finding the cgroup v2 mount",
            path: "/proc/self/mountinfo".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        dp.attach_bench_baseline(&root)?;
        println!("attached");
        let io = |source| DataplaneError::Io {
            what: "waiting for stdin to close",
            path: "stdin".into(),
            source,
        };
        std::io::Write::flush(&mut std::io::stdout()).map_err(io)?;
        std::io::copy(&mut std::io::stdin(), &mut std::io::sink()).map_err(io)?;
        Ok(())
    })
}

#[derive(Debug, Serialize)]
pub struct DrainBenchRow {
    pub cgroups: usize,
    pub flows: usize,
    pub storage: usize,
    pub rounds: usize,
    /// Median time to read every cgroup entry, flow and storage counter (what
    /// one tick drains), milliseconds.
    pub batch_ms: f64,
    pub per_key_ms: f64,
    /// per_key / batch.
    pub speedup: f64,
    /// Medians per map (cgroups, flows, storage, the flow cache read
    /// twice), milliseconds: where the time goes.
    pub batch_by_map_ms: [f64; MAPS],
    pub per_key_by_map_ms: [f64; MAPS],
    /// Batch time per entry read, nanoseconds.
    pub batch_ns_per_entry: f64,
    /// Minima over the rounds (the least disturbed runs on a shared
    /// machine) and their ratio.
    pub batch_min_ms: f64,
    pub per_key_min_ms: f64,
    pub speedup_min: f64,
    /// Share of the batch and per-key rounds' CPU time spent in the kernel
    /// (the calling thread's system time over user + system).
    pub batch_kernel_share: f64,
    pub per_key_kernel_share: f64,
}

/// Maps a drain reads (see [`DrainBenchRow::batch_by_map_ms`]).
const MAPS: usize = 4;

/// `tollgate bench-drain`: reads the pinned cgroup, flow and storage maps of a
/// running agent with batch lookups and with per-key iteration,
/// alternating, and reports medians.
pub fn drain_bench(pins: &PinDir, rounds: usize) -> Result<DrainBenchRow, DataplaneError> {
    let maps = crate::ebpf::PinnedMaps::open(pins)?;
    let io = |e: std::io::Error| DataplaneError::Io {
        what: "draining",
        path: pins.versioned(),
        source: e,
    };
    // CPU seconds (user, system) of the batch and the per-key reads.
    let cpu = std::cell::Cell::new([(0.0, 0.0); 2]);
    let timed = |mode: usize, f: &mut dyn FnMut() -> std::io::Result<usize>| {
        let c0 = crate::ebpf::sys::thread_cpu().map_err(io)?;
        let t = std::time::Instant::now();
        let n = f().map_err(io)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let c1 = crate::ebpf::sys::thread_cpu().map_err(io)?;
        let mut sum = cpu.get();
        sum[mode].0 += c1.0 - c0.0;
        sum[mode].1 += c1.1 - c0.1;
        cpu.set(sum);
        Ok::<_, DataplaneError>((ms, n))
    };
    // [round][map] (ms, entries)
    let (mut batch, mut per_key) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        // The pieces of what a tick reads (`PinnedMaps::counts`: flow-cache
        // slots, cgroups, flows, slots again; then storage), each timed.
        batch.push([
            timed(0, &mut || maps.cgroup_stats_batch().map(|v| v.len()))?,
            timed(0, &mut || maps.flows_batch().map(|v| v.len()))?,
            timed(0, &mut || maps.storage_stats(true).map(|v| v.len()))?,
            timed(0, &mut || maps.flow_cache_slots(true).map(|v| 2 * v.len()))?,
        ]);
        per_key.push([
            timed(1, &mut || maps.cgroup_stats_per_key().map(|v| v.len()))?,
            timed(1, &mut || maps.flows_per_key().map(|v| v.len()))?,
            timed(1, &mut || maps.storage_stats(false).map(|v| v.len()))?,
            timed(1, &mut || maps.flow_cache_slots(false).map(|v| 2 * v.len()))?,
        ]);
    }
    let total = |v: &[[(f64, usize); MAPS]]| {
        median(v.iter().map(|r| r.iter().map(|m| m.0).sum()).collect())
    };
    let by_map = |v: &[[(f64, usize); MAPS]]| {
        [0, 1, 2, 3].map(|i| median(v.iter().map(|r| r[i].0).collect()))
    };
    let last = batch.last().expect("at least one round");
    let (cgroups, flows, storage, slots) = (last[0].1, last[1].1, last[2].1, last[3].1);
    let (b, p) = (total(&batch), total(&per_key));
    let min = |v: &[[(f64, usize); MAPS]]| {
        v.iter()
            .map(|r| r.iter().map(|m| m.0).sum::<f64>())
            .fold(f64::INFINITY, f64::min)
    };
    let (bmin, pmin) = (min(&batch), min(&per_key));
    Ok(DrainBenchRow {
        cgroups,
        flows,
        storage,
        rounds,
        batch_ms: b,
        per_key_ms: p,
        speedup: p / b,
        batch_by_map_ms: by_map(&batch),
        per_key_by_map_ms: by_map(&per_key),
        batch_ns_per_entry: b * 1e6 / (cgroups + flows + storage + slots).max(1) as f64,
        batch_min_ms: bmin,
        per_key_min_ms: pmin,
        speedup_min: pmin / bmin,
        batch_kernel_share: kernel_share(cpu.get()[0]),
        per_key_kernel_share: kernel_share(cpu.get()[1]),
    })
}

/// system / (user + system); NaN without CPU time.
fn kernel_share((user, sys): (f64, f64)) -> f64 {
    sys / (user + sys)
}
