//! `cargo xtask bench dataplane`, throughput half: how much the attached
//! cgroup_skb programs cost real traffic. Two network namespaces joined by a
//! veth carry iperf3 traffic; runs alternate between "agent attached" and
//! "nothing attached" so drift on the host hits both sides equally.
//!
//! Every resource (namespaces, iperf3 server, agent process, pins) is owned by
//! a guard whose Drop releases it, so errors and panics leave nothing behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};

mod quarantine;
mod scale;
mod storage;
mod traffic;

use crate::{cmd, setup};
use traffic::{Netns, Server, tcp_bits_per_second, udp_packets_per_second, udp_run, wait_bounded};

#[derive(Subcommand)]
pub enum Bench {
    /// Data-plane overhead: TCP throughput and 64-byte UDP packet rate
    /// between two namespaces, without and with the agent attached.
    Dataplane(DataplaneArgs),
    /// Agent cost with 110, 1,000 and 10,000 cgroups carrying traffic:
    /// drain time (batch vs per key), CPU per tick, RSS, series.
    Scale(scale::ScaleArgs),
    /// Storage tracepoints: ns per write() to /dev/null and to a watched
    /// FUSE mount, without and with the agent attached.
    Storage(storage::StorageArgs),
    /// Quarantine latency: request -> first stopped packet, p50/p99 over
    /// 100 runs, cgroup path and tc path (target p99 <= 10 ms).
    Quarantine(quarantine::QuarantineArgs),
}

#[derive(Args)]
pub struct DataplaneArgs {
    /// Alternating without/with pairs per metric; medians need several.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(5..=50))]
    pairs: u32,
    /// Duration of each iperf3 run, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// Use this agent binary instead of building target/release/tollgate.
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Run the agent with storage accounting off, to see the network
    /// hooks' cost alone (the storage hooks tax every syscall).
    #[arg(long)]
    no_storage: bool,
}

const PIN_DIR: &str = "/sys/fs/bpf/tollgate-bench";
/// The first link the agent pins (the brief's readiness signal).
const LINK_PIN: &str = "v1/links/tg_skb_egress";
/// The agent binds its API socket only after every program is attached
/// (agent/src/run.rs), so link pin + socket = fully attached.
const SOCKET: &str = "/run/tollgate-bench.sock";
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Dataplane(args) => dataplane(&args),
        Bench::Scale(args) => scale::run(&args),
        Bench::Storage(args) => storage::run(&args),
        Bench::Quarantine(args) => quarantine::run(&args),
    }
}

fn dataplane(args: &DataplaneArgs) -> Result<()> {
    ensure_root()?;
    setup::run()?;
    let bin = match &args.bin {
        Some(b) => b
            .canonicalize()
            .with_context(|| format!("--bin {}", b.display()))?,
        None => cmd::build_agent()?,
    };
    // Pins left by an interrupted run would keep the programs attached and
    // turn every "without" sample into a "with" sample.
    if Path::new(PIN_DIR).exists() {
        eprintln!("bench: removing pins left by an earlier run");
        detach(&bin, PIN_DIR)?;
    }

    per_packet(&bin)?;
    no_other_cgroup_programs()?;

    // Declaration order = reverse drop order: agent, then server, then namespaces.
    let _net = Netns::create()?;
    let _server = Server::start()?;
    let mut agent: Option<Agent> = None;

    let (mut tcp, mut udp) = (Samples::default(), Samples::default());
    for pair in 0..args.pairs {
        // ABBA order (off, floor, on / on, floor, off, ...) cancels order
        // effects such as a warm cache after the first run, and halves the
        // agent restarts.
        let order = if pair % 2 == 0 {
            [Side::Without, Side::Floor, Side::With]
        } else {
            [Side::With, Side::Floor, Side::Without]
        };
        for side in order {
            match (side, agent.is_some()) {
                (Side::With, false) => agent = Some(start(&bin, args.no_storage)?),
                (Side::Without | Side::Floor, true) => {
                    agent.take().expect("checked is_some").stop()?
                }
                _ => {}
            }
            let floor = match side {
                Side::Floor => Some(Floor::start(&bin)?),
                _ => None,
            };
            let bps = tcp_bits_per_second(args.seconds)?;
            let pps = udp_packets_per_second(args.seconds)?;
            if let Some(f) = floor {
                f.stop()?;
            }
            eprintln!(
                "bench: pair {}/{} {:>8}: TCP {:.2} Gbit/s, UDP 64 B {:.1} kpps",
                pair + 1,
                args.pairs,
                side.name(),
                bps / 1e9,
                pps / 1e3
            );
            tcp.push(side, bps);
            udp.push(side, pps);
        }
    }
    // Per-program cost on the live path, from one more "with" run (the
    // agent is still up when the last pair ended attached).
    let agent = match agent.take() {
        Some(a) => a,
        None => start(&bin, args.no_storage)?,
    };
    let costs = live_program_costs(args.seconds);
    agent.stop()?;

    println!(
        "\ndata-plane throughput, median of {} runs each ({} s per run), storage accounting {}\n",
        args.pairs,
        args.seconds,
        if args.no_storage { "off" } else { "on" }
    );
    println!(
        "{:<16} | {:>13} | {:>13} | {:>6} | {:>13} | {:>6} | target (with)",
        "metric", "without", "with", "ratio", "floor", "ratio"
    );
    println!(
        "{}",
        "-".repeat(16 + 3 + 13 + 3 + 13 + 3 + 6 + 3 + 13 + 3 + 6 + 3 + 14)
    );
    tcp.row("TCP throughput", |v| format!("{:.2} Gbit/s", v / 1e9), 0.99);
    udp.row("UDP 64 B rate", |v| format!("{:.1} kpps", v / 1e3), 0.97);
    println!(
        "(floor: only the baseline program (one per-CPU add) attached at the cgroup root, egress and ingress: what any program attached where Tollgate attaches costs this traffic)"
    );
    costs?.print();
    Ok(())
}

/// The bench agent, with or without storage accounting.
fn start(bin: &Path, no_storage: bool) -> Result<Agent> {
    if no_storage {
        Agent::start_with(bin, PIN_DIR, SOCKET, &["--config", &no_storage_config()?])
    } else {
        Agent::start(bin)
    }
}

/// What each loaded Tollgate program cost during one 64-byte UDP run, from
/// the kernel's BPF run-time statistics: runs per datagram sent and ns per
/// run. The statistics add two clock reads to every program run, so they
/// are on only for this extra run, never for the timed pairs.
struct ProgramCosts {
    /// (program, runs per datagram, ns per run)
    rows: Vec<(String, f64, f64)>,
    /// Wall-clock ns per datagram received in that run.
    ns_per_datagram: f64,
}

impl ProgramCosts {
    fn print(&self) {
        println!(
            "\nper-program cost on the live path (one more UDP 64 B run with kernel.bpf_stats_enabled=1; the statistics add ~2 clock reads per run)\n"
        );
        println!(
            "{:<18} | {:>10} | {:>9} | {:>10}",
            "program", "runs/dgram", "ns/run", "ns/dgram"
        );
        println!("{}", "-".repeat(18 + 3 + 10 + 3 + 9 + 3 + 10));
        let mut total = 0.0;
        for (name, runs, ns) in &self.rows {
            total += runs * ns;
            println!(
                "{name:<18} | {runs:>10.2} | {ns:>9.1} | {:>10.1}",
                runs * ns
            );
        }
        println!(
            "{:<18} | {:>10} | {:>9} | {total:>10.1}   (a datagram took {:.0} ns of wall clock)",
            "all", "", "", self.ns_per_datagram
        );
    }
}

fn live_program_costs(seconds: u32) -> Result<ProgramCosts> {
    let _on = BpfStats::enable()?;
    let before = program_stats()?;
    let run = udp_run(seconds)?;
    let after = program_stats()?;
    let mut rows = Vec::new();
    for (id, (name, cnt, ns)) in &after {
        let (c0, n0) = before.get(id).map(|b| (b.1, b.2)).unwrap_or((0, 0));
        let runs = cnt.saturating_sub(c0);
        if runs == 0 || run.sent <= 0.0 {
            continue;
        }
        rows.push((
            name.clone(),
            runs as f64 / run.sent,
            ns.saturating_sub(n0) as f64 / runs as f64,
        ));
    }
    rows.sort_by(|a, b| (b.1 * b.2).total_cmp(&(a.1 * a.2)));
    Ok(ProgramCosts {
        rows,
        ns_per_datagram: 1e9 / run.received_per_second,
    })
}

/// Loaded `tg_*` programs by id: (name, run_cnt, run_time_ns).
fn program_stats() -> Result<std::collections::BTreeMap<u64, (String, u64, u64)>> {
    Ok(bpftool_json(&["prog", "show"])?
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            name.starts_with("tg_").then(|| {
                (
                    p["id"].as_u64().unwrap_or(0),
                    (
                        name.to_owned(),
                        p["run_cnt"].as_u64().unwrap_or(0),
                        p["run_time_ns"].as_u64().unwrap_or(0),
                    ),
                )
            })
        })
        .collect())
}

/// kernel.bpf_stats_enabled on while held; Drop restores the old value.
struct BpfStats {
    old: String,
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let old = std::fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        std::fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("writing 1 to {BPF_STATS_SYSCTL}"))?;
        Ok(Self {
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS_SYSCTL, &self.old) {
            eprintln!("warning: restoring {BPF_STATS_SYSCTL} to {}: {e}", self.old);
        }
    }
}

/// The "without" runs are only without if nothing else is attached at the
/// cgroup root and no other Tollgate program (storage tracepoints, tc) is
/// loaded: pins left by a killed agent keep their programs running.
fn no_other_cgroup_programs() -> Result<()> {
    let root = cgroup2_mount()?;
    let mut found: Vec<String> = bpftool_json(&["cgroup", "show", &root.display().to_string()])?
        .iter()
        .map(|p| {
            format!(
                "{} ({})",
                p["name"].as_str().unwrap_or("?"),
                p["attach_type"].as_str().unwrap_or("?")
            )
        })
        .collect();
    for p in bpftool_json(&["prog", "show"])? {
        let name = p["name"].as_str().unwrap_or("");
        if name.starts_with("tg_") && !found.iter().any(|f| f.starts_with(name)) {
            found.push(format!("{name} ({})", p["type"].as_str().unwrap_or("?")));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    bail!(
        "other programs are attached at the cgroup root {} or loaded by another Tollgate: {}. \
         \"Without\" runs would carry them. Stop the agent that owns them, or remove leftover pins \
         with `tollgate detach --pin-dir DIR` (pin directories under /sys/fs/bpf), then run the \
         benchmark again",
        root.display(),
        found.join(", ")
    )
}

/// `bpftool -j ARGS` as a JSON array (empty output: none).
fn bpftool_json(args: &[&str]) -> Result<Vec<serde_json::Value>> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("parsing bpftool {}", args.join(" ")))
}

/// Where cgroup v2 is mounted (hybrid and unified hosts differ).
pub(crate) fn cgroup2_mount() -> Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount_point = pre.split_whitespace().nth(4)?;
            post.starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup v2 mount in /proc/self/mountinfo")
}

/// A config file that switches storage accounting off.
fn no_storage_config() -> Result<String> {
    let path = std::env::temp_dir().join("tollgate-bench-no-storage.toml");
    std::fs::write(&path, "[storage]\nenabled = false\n").context("writing the bench config")?;
    Ok(path.display().to_string())
}

/// Per-packet half: `tollgate bench-prog` runs the egress program and a
/// baseline (one per-CPU array increment) through BPF_PROG_TEST_RUN, 1e6
/// repeats per round, alternating, and reports medians.
fn per_packet(bin: &Path) -> Result<()> {
    let out = Command::new(bin)
        .args(["bench-prog", "--repeat", "1000000", "--rounds", "11"])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} bench-prog", bin.display()))?;
    if !out.status.success() {
        bail!("{} bench-prog failed: {}", bin.display(), out.status);
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("parsing bench-prog output")?;
    println!(
        "
per-packet cost (BPF_PROG_TEST_RUN, repeat 1e6, median of 11 alternating rounds)
"
    );
    println!(
        "{:<12} | {:>12} | {:>12} | {:>6} | {:>16} | target",
        "frame", "baseline ns", "egress ns", "ratio", "min base/egress"
    );
    println!(
        "{}",
        "-".repeat(12 + 3 + 12 + 3 + 12 + 3 + 6 + 3 + 16 + 3 + 8)
    );
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let ratio = f("ratio");
        println!(
            "{:<12} | {:>12.1} | {:>12.1} | {:>6.2} | {:>16} | <= 1.5{}",
            format!("{} B", f("frame_bytes")),
            f("baseline_ns"),
            f("egress_ns"),
            ratio,
            format!("{:.0}/{:.0}", f("baseline_min_ns"), f("egress_min_ns")),
            if ratio <= 1.5 { "" } else { " BELOW" }
        );
    }
    Ok(())
}

/// What is attached during a throughput run.
#[derive(Clone, Copy)]
enum Side {
    Without,
    /// Only the baseline program ([`Floor`]).
    Floor,
    With,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Without => "without",
            Side::Floor => "floor",
            Side::With => "with",
        }
    }
}

#[derive(Default)]
struct Samples {
    without: Vec<f64>,
    floor: Vec<f64>,
    with: Vec<f64>,
}

impl Samples {
    fn push(&mut self, side: Side, v: f64) {
        match side {
            Side::Without => &mut self.without,
            Side::Floor => &mut self.floor,
            Side::With => &mut self.with,
        }
        .push(v);
    }

    fn row(&self, name: &str, fmt: impl Fn(f64) -> String, target: f64) {
        let (off, floor, on) = (
            median(&self.without),
            median(&self.floor),
            median(&self.with),
        );
        let ratio = on / off;
        let verdict = if ratio >= target { "ok" } else { "BELOW" };
        println!(
            "{name:<16} | {:>13} | {:>13} | {ratio:>6.3} | {:>13} | {:>6.3} | >= {target} {verdict}",
            fmt(off),
            fmt(on),
            fmt(floor),
            floor / off
        );
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn ensure_root() -> Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("benchmarks create namespaces or mounts and attach BPF programs: run them as root");
    }
    Ok(())
}

/// A running `tollgate run` attached at the cgroup v2 root. Stopping it is
/// not enough to detach: its links are pinned, so `tollgate detach` removes
/// the pins too. Drop does both if `stop` was not reached.
pub(crate) struct Agent {
    child: Child,
    bin: PathBuf,
    pin_dir: &'static str,
    stopped: bool,
    log_path: PathBuf,
}

impl Agent {
    fn start(bin: &Path) -> Result<Self> {
        Self::start_with(bin, PIN_DIR, SOCKET, &[])
    }

    /// Starts `tollgate run` with its own pins, socket and extra flags.
    pub(crate) fn start_with(
        bin: &Path,
        pin_dir: &'static str,
        socket: &'static str,
        extra: &[&str],
    ) -> Result<Self> {
        let link = Path::new(pin_dir).join(LINK_PIN);
        if link.exists() {
            bail!(
                "{} exists before the agent started; `tollgate detach` did not detach",
                link.display()
            );
        }
        // The agent's logs would break up the progress lines; keep them in a
        // file next to the binary and point at it when something goes wrong.
        let name = Path::new(pin_dir)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let log_path = bin.with_file_name(format!("{}.log", name.unwrap_or_default()));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        // A socket left by a killed agent would look like readiness.
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing stale {socket}"));
            }
            _ => {}
        }
        let mut c = Command::new(bin);
        // Own socket and an ephemeral loopback metrics port, so the bench
        // agent cannot collide with an agent already running on this host.
        c.args(["run", "--pin-dir", pin_dir, "--socket", socket])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .env("NO_COLOR", "1"); // plain text in the log file
        eprintln!("+ {c:?} > {}", log_path.display());
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = Agent {
            child,
            bin: bin.to_owned(),
            pin_dir,
            stopped: false,
            log_path: log_path.clone(),
        };
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        while !(link.exists() && Path::new(socket).exists()) {
            if let Some(st) = agent.child.try_wait()? {
                bail!(
                    "tollgate exited with {st} before attaching; see {}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} and {socket} did not both appear within {ATTACH_TIMEOUT:?}; see {}",
                    link.display(),
                    log_path.display()
                );
            }
            sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub(crate) fn stop(mut self) -> Result<()> {
        let r = self.shutdown();
        // On failure Drop tries once more, which is all cleanup can do.
        self.stopped = r.is_ok();
        r
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            // SIGTERM first: the agent's graceful path is what production uses.
            cmd::check(Command::new("kill").args(["-s", "TERM", &self.child.id().to_string()]))?;
            if wait_bounded(&mut self.child, STOP_TIMEOUT)?.is_none() {
                eprintln!("bench: tollgate ignored SIGTERM for {STOP_TIMEOUT:?}; killed it");
            }
        }
        detach(&self.bin, self.pin_dir)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped
            && let Err(e) = self.shutdown()
        {
            eprintln!("bench: cleanup: {e:#}");
        }
    }
}

/// `tollgate bench-floor`: the baseline program attached at the cgroup
/// root until stdin closes. Its links are not pinned, so they go with the
/// process however it ends; Drop closes stdin and waits.
struct Floor {
    child: Child,
    bin: PathBuf,
}

const FLOOR_PIN_DIR: &str = "/sys/fs/bpf/tollgate-bench-floor";

impl Floor {
    fn start(bin: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["bench-floor", "--pin-dir", FLOOR_PIN_DIR])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} bench-floor", bin.display()))?;
        let out = child.stdout.take().expect("piped");
        // Read on a thread so a hung child cannot hang the bench.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
            let _ = tx.send(r.map(|_| line));
        });
        let floor = Floor {
            child,
            bin: bin.to_owned(),
        };
        let line = match rx.recv_timeout(ATTACH_TIMEOUT) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => bail!("reading bench-floor's stdout: {e}"),
            Err(_) => bail!("bench-floor did not attach within {ATTACH_TIMEOUT:?}"),
        };
        if line.trim() != "attached" {
            bail!("bench-floor failed to attach (said {:?})", line.trim());
        }
        Ok(floor)
    }

    fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        drop(self.child.stdin.take());
        if wait_bounded(&mut self.child, STOP_TIMEOUT)?.is_none() {
            // Killed: its links went with it, its map pins did not.
            detach(&self.bin, FLOOR_PIN_DIR)?;
            bail!("bench-floor did not exit within {STOP_TIMEOUT:?} of stdin closing; killed it");
        }
        Ok(())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("bench: cleanup: {e:#}");
        }
    }
}

/// Removes the bench pins (and so detaches the programs), then checks that
/// the link pin is really gone.
pub(crate) fn detach(bin: &Path, pin_dir: &str) -> Result<()> {
    cmd::check(Command::new(bin).args(["detach", "--pin-dir", pin_dir]))?;
    let link = Path::new(pin_dir).join(LINK_PIN);
    if link.exists() {
        bail!("{} still exists after `tollgate detach`", link.display());
    }
    Ok(())
}
