//! `cargo xtask bench scale`: the agent with 110, 1,000 and 10,000 cgroups
//! carrying traffic. Synthetic cgroups get short bounded bursts: this
//! process hops through them (writes its pid to each cgroup.procs, opens a
//! UDP socket there, sends one datagram to 127.0.0.1:9) and returns to its
//! own cgroup. Reports drain time (batch vs per key), agent CPU per tick,
//! RSS, mean tick duration and exported series.

use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{Agent, cgroup2_mount};
use crate::{cmd, setup};

const PIN_DIR: &str = "/sys/fs/bpf/tollgate-bench-scale";
const SOCKET: &str = "/run/tollgate-bench-scale.sock";
const PARENT: &str = "tollgate-bench-scale";
/// Traffic target: loopback discard port (nothing needs to listen).
const TARGET: &str = "127.0.0.1:9";

/// Seconds of traffic before each measurement window.
const WARMUP_SECS: u64 = 5;

#[derive(Args)]
pub struct ScaleArgs {
    /// Cgroup counts to measure, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "110,1000,10000")]
    cgroups: Vec<usize>,
    /// Seconds of traffic per measurement window (bounded: 5..=120).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(5..=120))]
    window: u64,
    /// Short-lived pods for the churn phase (0: skip it).
    #[arg(long, default_value_t = 1000)]
    churn: usize,
}

/// The synthetic cgroups; Drop moves this process home and removes them.
struct Cgroups {
    mount: PathBuf,
    home: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    fn new() -> Result<Self> {
        let mount = cgroup2_mount()?;
        let own = std::fs::read_to_string("/proc/self/cgroup").context("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let home = mount.join(rel.trim_start_matches('/'));
        let parent = mount.join(PARENT);
        remove_tree(&parent);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        Ok(Self {
            mount,
            home,
            dirs: Vec::new(),
        })
    }

    fn grow(&mut self, n: usize) -> Result<()> {
        while self.dirs.len() < n {
            let d = self
                .mount
                .join(PARENT)
                .join(format!("cg-{:05}", self.dirs.len()));
            std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            self.dirs.push(d);
        }
        Ok(())
    }

    /// One burst per cgroup: move in, new socket, one datagram.
    fn hop_round(&self) -> Result<()> {
        let pid = std::process::id().to_string();
        let payload = [0u8; 32];
        for d in &self.dirs {
            std::fs::write(d.join("cgroup.procs"), &pid)
                .with_context(|| format!("moving into {}", d.display()))?;
            // The socket belongs to the cgroup it was created in.
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.send_to(&payload, TARGET)?;
        }
        self.go_home()
    }

    /// Removes the cgroups past the first `n` (they are empty: the hops
    /// end at home).
    fn shrink(&mut self, n: usize) -> Result<()> {
        for d in self.dirs.drain(n.min(self.dirs.len())..) {
            std::fs::remove_dir(&d).with_context(|| format!("removing {}", d.display()))?;
        }
        Ok(())
    }

    fn go_home(&self) -> Result<()> {
        std::fs::write(
            self.home.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .with_context(|| format!("returning to {}", self.home.display()))
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        let _ = self.go_home();
        remove_tree(&self.mount.join(PARENT));
    }
}

fn remove_tree(parent: &Path) {
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(parent);
}

/// CPU time of every thread of a process, in seconds, from schedstat
/// (nanoseconds; utime/stime in /proc/PID/stat only resolve 10 ms).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = t?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(&path) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(ns as f64 / 1e9)
}

/// The 1, 5 and 15 minute load averages: how busy the machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

struct Row {
    cgroups: usize,
    /// Ticks the agent's loop completed per second of the window: a slow
    /// pass after the timed part of the tick (detection) shows here, not
    /// in `tick_ms`.
    ticks_per_s: f64,
    load: String,
    drain: serde_json::Value,
    cpu_pct: f64,
    cpu_ms_per_tick: f64,
    tick_ms: f64,
    rss: f64,
    series: usize,
}

/// Map sizes for a node with `n` cgroups: the defaults (a dense node of
/// ~110 pods) or twice the cgroup count, whichever is larger. The control
/// API listens on a free port: an agent of a concurrent test run may hold
/// the default one. This is the
/// sizing the README recommends; the bench uses it so that each scale is
/// measured on maps an operator would configure for it.
fn sized_config(n: usize, grace: &str) -> String {
    let fit = |default: u32| default.max(((2 * n) as u32).next_power_of_two());
    format!(
        "[agent]\ntick = \"1s\"\n[control]\nlisten = \"127.0.0.1:0\"\n[inventory]\ngrace = \"{grace}\"\n[maps]\ncgroup_stats_entries = {}\nflow_entries = {}\n[storage]\nstats_entries = {}\n",
        fit(tollgate_ebpf_defaults::CGROUP_STATS),
        fit(tollgate_ebpf_defaults::FLOWS),
        fit(tollgate_ebpf_defaults::STORAGE_STATS),
    )
}

/// The agent's defaults (agent-ebpf `map::DEFAULT_*`), repeated here
/// because xtask does not build the agent crates.
mod tollgate_ebpf_defaults {
    pub const CGROUP_STATS: u32 = 4096;
    pub const FLOWS: u32 = 16384;
    pub const STORAGE_STATS: u32 = 4096;
}

/// Starts an agent for one measurement with `config` and returns it with
/// its metrics address.
fn start_agent(bin: &Path, config: &Path) -> Result<(Agent, String)> {
    if Path::new(PIN_DIR).exists() {
        super::detach(bin, PIN_DIR)?;
    }
    let cfg = config.to_string_lossy().into_owned();
    let agent = Agent::start_with(bin, PIN_DIR, SOCKET, &["--config", &cfg])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.log();
        if let Some(a) = log
            .lines()
            .find(|l| l.contains("serving /metrics"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
        {
            return Ok((agent, a.to_owned()));
        }
        if Instant::now() > deadline {
            bail!("the agent did not log its metrics address:\n{log}");
        }
        sleep(Duration::from_millis(100));
    }
}

/// Per-pod series in a /metrics body.
fn pod_series(body: &str) -> usize {
    body.lines()
        .filter(|l| l.starts_with("tollgate_pod_"))
        .count()
}

pub fn run(args: &ScaleArgs) -> Result<()> {
    super::ensure_root()?;
    setup::run()?;
    let bin = cmd::build_agent()?;
    let config = std::env::temp_dir().join("tollgate-bench-scale.toml");
    let mut cgs = Cgroups::new()?;
    let mut rows = Vec::new();
    for &n in &args.cgroups {
        std::fs::write(&config, sized_config(n, "60s"))?;
        let (agent, addr) = start_agent(&bin, &config)?;
        cgs.grow(n)?;
        // Warm-up, not measured: the first ticks name every new cgroup and
        // create its series and windows once (a start-up cost, not a
        // per-tick one).
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_secs(WARMUP_SECS) {
            cgs.hop_round()?;
            sleep(Duration::from_millis(200));
        }
        let before = http_get(&addr, "/metrics")?;
        let cpu0 = cpu_seconds(agent.pid())?;
        let t0 = Instant::now();
        let window = Duration::from_secs(args.window);
        let mut rounds = 0u32;
        while t0.elapsed() < window && rounds < 10_000 {
            cgs.hop_round()?;
            rounds += 1;
            sleep(Duration::from_millis(200));
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(agent.pid())? - cpu0;
        let after = http_get(&addr, "/metrics")?;
        let ticks = metric(&after, "tollgate_agent_tick_duration_seconds_count")
            - metric(&before, "tollgate_agent_tick_duration_seconds_count");
        let tick_s = (metric(&after, "tollgate_agent_tick_duration_seconds_sum")
            - metric(&before, "tollgate_agent_tick_duration_seconds_sum"))
            / ticks;
        let series = pod_series(&after);
        // The agent is paused while the drains are timed: its own ticks
        // (a drain and more, every second) would compete for the two
        // cores with both sides of the comparison.
        let pid = agent.pid().to_string();
        cmd::check(Command::new("kill").args(["-s", "STOP", &pid]))?;
        let out = Command::new(&bin)
            .args(["bench-drain", "--pin-dir", PIN_DIR, "--rounds", "31"])
            .output();
        cmd::check(Command::new("kill").args(["-s", "CONT", &pid]))?;
        let out = out.context("tollgate bench-drain")?;
        if !out.status.success() {
            bail!(
                "bench-drain failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let drain: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        eprintln!("bench: {n} cgroups measured ({rounds} traffic rounds, {ticks} ticks)");
        rows.push(Row {
            cgroups: n,
            ticks_per_s: ticks / elapsed,
            load: loadavg(),
            drain,
            cpu_pct: cpu / elapsed * 100.0,
            cpu_ms_per_tick: cpu * 1e3 / ticks.max(1.0),
            tick_ms: tick_s * 1e3,
            rss: rss_mib(agent.pid())?,
            series,
        });
        agent.stop()?;
    }
    let churn = match args.churn {
        0 => None,
        pods => Some(churn(&bin, &config, &mut cgs, pods)?),
    };
    drop(cgs);
    let _ = std::fs::remove_file(&config);

    println!(
        "\nscale: agent at a 1 s tick, {} s traffic windows\n",
        args.window
    );
    println!(
        "{:>8} | {:>7} | {:>7} | {:>9} | {:>11} | {:>7} | {:>9} | {:>10} | {:>10} | {:>8} | {:>6} | {:>8} | load (1/5/15 min)",
        "cgroups",
        "in map",
        "flows",
        "batch ms",
        "per-key ms",
        "speedup",
        "(minima)",
        "CPU %core",
        "CPU ms/tk",
        "tick ms",
        "tick/s",
        "RSS MiB",
    );
    for r in &rows {
        let d = &r.drain;
        let f = |k: &str| d[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>8} | {:>7} | {:>7} | {:>9.2} | {:>11.2} | {:>6.1}x | {:>8.1}x | {:>10.3} | {:>10.2} | {:>8.2} | {:>6.2} | {:>8.1} | {}",
            r.cgroups,
            d["cgroups"],
            d["flows"],
            f("batch_ms"),
            f("per_key_ms"),
            f("speedup"),
            f("speedup_min"),
            r.cpu_pct,
            r.cpu_ms_per_tick,
            r.tick_ms,
            r.ticks_per_s,
            r.rss,
            r.load
        );
    }
    let each = |k: &str, scale: f64| {
        rows.iter()
            .map(|r| format!("{:.0}", r.drain[k].as_f64().unwrap_or(f64::NAN) * scale))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "(drain: medians of 31 alternating rounds after the traffic window, agent paused; minima = least disturbed rounds. Batch ns per entry: {}; share of the drain's CPU time in the kernel, batch: {} %, per key: {} %)",
        each("batch_ns_per_entry", 1.0),
        each("batch_kernel_share", 100.0),
        each("per_key_kernel_share", 100.0),
    );
    for r in &rows {
        let ms = |k: &str| {
            r.drain[k]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|x| format!("{:.3}", x.as_f64().unwrap_or(f64::NAN)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_default()
        };
        println!(
            "  {} cgroups, ms by map (cgroups / flows / storage / flow cache twice): batch {}, per key {}",
            r.cgroups,
            ms("batch_by_map_ms"),
            ms("per_key_by_map_ms")
        );
    }
    println!(
        "\nexported per-pod series: {}",
        rows.iter()
            .map(|r| format!("{} cgroups -> {}", r.cgroups, r.series))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "targets: batch >= 10x per-key; 110 pods <= 0.5% of a core and <= 48 MiB RSS; 10,000 keeps the 1 s tick (tick ms < 1000)"
    );
    if let Some(c) = churn {
        println!(
            "\nchurn: {} short-lived pods (cgroup created, one datagram, removed), 2 s grace",
            c.pods
        );
        println!(
            "  RSS before {:.1} MiB | same span without churn {:.1} MiB | with all pods shown {:.1} MiB | after grace {:.1} MiB ({:+.1} MiB vs before, {:+.1} MiB vs no churn)",
            c.rss_before,
            c.rss_control,
            c.rss_peak,
            c.rss_after,
            c.rss_after - c.rss_before,
            c.rss_after - c.rss_control
        );
        println!(
            "  per-pod series before {} | with the pods {} | after grace {} ({} stale)",
            c.series_before,
            c.series_peak,
            c.series_after,
            c.series_after.saturating_sub(c.series_before)
        );
    }
    Ok(())
}

struct Churn {
    pods: usize,
    rss_before: f64,
    /// After as long again with the resident pods only: the agent's own
    /// growth (windows filling, baselines learning), which churn must not
    /// add to.
    rss_control: f64,
    rss_peak: f64,
    rss_after: f64,
    series_before: usize,
    series_peak: usize,
    series_after: usize,
}

/// Pod churn: `pods` cgroups created next to the existing ones, one burst
/// each, shown by the agent, then removed; RSS and series after the grace
/// period against the level before.
fn churn(bin: &Path, config: &Path, cgs: &mut Cgroups, pods: usize) -> Result<Churn> {
    let base = 110.min(cgs.dirs.len());
    cgs.shrink(base)?;
    std::fs::write(config, sized_config(base + pods, "2s"))?;
    let (agent, addr) = start_agent(bin, config)?;
    // Warm up on the resident pods first (past the first 10 s window):
    // the level churn must return to.
    for _ in 0..12 {
        cgs.hop_round()?;
        sleep(Duration::from_secs(1));
    }
    let rss_before = rss_mib(agent.pid())?;
    let series_before = pod_series(&http_get(&addr, "/metrics")?);
    // The same span as the churn phase below, without churn.
    for _ in 0..9 {
        cgs.hop_round()?;
        sleep(Duration::from_secs(1));
    }
    let rss_control = rss_mib(agent.pid())?;
    cgs.grow(base + pods)?;
    cgs.hop_round()?;
    sleep(Duration::from_secs(3));
    let rss_peak = rss_mib(agent.pid())?;
    let series_peak = pod_series(&http_get(&addr, "/metrics")?);
    cgs.shrink(base)?;
    // Grace (2 s) plus a few ticks, with the resident pods still busy.
    for _ in 0..6 {
        cgs.hop_round()?;
        sleep(Duration::from_secs(1));
    }
    let rss_after = rss_mib(agent.pid())?;
    let series_after = pod_series(&http_get(&addr, "/metrics")?);
    agent.stop()?;
    Ok(Churn {
        pods,
        rss_before,
        rss_control,
        rss_peak,
        rss_after,
        series_before,
        series_peak,
        series_after,
    })
}
