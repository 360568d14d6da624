//! `cargo xtask bench storage`: what the storage raw tracepoints cost a
//! write() call. `tg-storage loop` times a tight loop of 1-byte write()s to
//! /dev/null (an unwatched file: the cost every process on the host pays
//! per write) and to a watched FUSE mount (bindfs; the counted path), and
//! of getppid() (what any other syscall pays), without and with the agent
//! attached, alternating (ABBA) so host drift hits both.
//!
//! Every name is unique to this run (pid suffix): pins, socket, scratch
//! directory, so it never clashes with another agent or benchmark on the
//! host. Guards unmount, stop and detach in Drop, also on error.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{median, traffic::wait_bounded};
use crate::cmd;

#[derive(Args)]
pub struct StorageArgs {
    /// Alternating without/with pairs.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    pairs: u32,
    /// write() calls per /dev/null sample.
    #[arg(long, default_value_t = 2_000_000)]
    null_calls: u64,
    /// write() calls per watched-mount sample (each is a FUSE round trip).
    #[arg(long, default_value_t = 50_000)]
    fuse_calls: u64,
    /// Use this agent binary instead of building target/release/tollgate.
    #[arg(long)]
    bin: Option<PathBuf>,
}

pub fn run(args: &StorageArgs) -> Result<()> {
    super::ensure_root()?;
    crate::setup::run()?;
    let bin = match &args.bin {
        Some(b) => b
            .canonicalize()
            .with_context(|| format!("--bin {}", b.display()))?,
        None => cmd::build_agent()?,
    };
    let tool = build_tool()?;
    let id = std::process::id();
    let scratch = Scratch::new(PathBuf::from(format!("/tmp/tollgate-bench-storage-{id}")))?;
    let fuse = Bindfs::mount(&scratch.0.join("backing"), &scratch.0.join("watched"))?;
    let pins = PathBuf::from(format!("/sys/fs/bpf/tollgate-bench-storage-{id}"));
    let socket = PathBuf::from(format!("/run/tollgate-bench-storage-{id}.sock"));

    let targets = [
        // A syscall outside the read/write family: what every other
        // syscall on the host pays for the two tracepoints.
        ("getppid()", PathBuf::from("-"), args.null_calls),
        ("/dev/null", PathBuf::from("/dev/null"), args.null_calls),
        ("watched FUSE", fuse.dir.join("bench"), args.fuse_calls),
    ];
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); targets.len()];
    let mut agent: Option<Agent> = None;
    // Watched-mount writes the running agent must have counted.
    let mut expected = 0u64;
    for pair in 0..args.pairs {
        let order = if pair % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attached in order {
            match (attached, agent.is_some()) {
                (true, false) => agent = Some(Agent::start(&bin, &pins, &socket)?),
                (false, true) => stop(agent.take(), &fuse.dir, &mut expected)?,
                _ => {}
            }
            for (i, (name, path, count)) in targets.iter().enumerate() {
                let ns = time_writes(&tool, path, *count)?;
                eprintln!(
                    "bench: pair {}/{} {:>7} {name:<13} {ns:>8.1} ns/write",
                    pair + 1,
                    args.pairs,
                    if attached { "with" } else { "without" }
                );
                if attached && path.starts_with(&fuse.dir) {
                    expected += count;
                }
                let s = &mut samples[i];
                if attached { &mut s.1 } else { &mut s.0 }.push(ns);
            }
        }
    }
    stop(agent.take(), &fuse.dir, &mut expected)?;
    println!(
        "\nstorage tracepoints: ns per call (1-byte write(), or getppid()), median of {} alternating runs\n",
        args.pairs
    );
    println!(
        "{:<14} | {:>8} | {:>12} | {:>12} | {:>9} | {:>6}",
        "target", "calls", "without ns", "with ns", "delta ns", "ratio"
    );
    println!(
        "{}",
        "-".repeat(14 + 3 + 8 + 3 + 12 + 3 + 12 + 3 + 9 + 3 + 6)
    );
    for ((name, _, count), (off, on)) in targets.iter().zip(&samples) {
        let (off, on) = (median(off), median(on));
        println!(
            "{name:<14} | {count:>8} | {off:>12.1} | {on:>12.1} | {:>9.1} | {:>6.3}",
            on - off,
            on / off
        );
    }
    Ok(())
}

/// Stops the agent after checking that it counted exactly the watched
/// writes made while it ran (1 byte each).
fn stop(agent: Option<Agent>, dir: &Path, expected: &mut u64) -> Result<()> {
    if let Some(a) = agent {
        // The agent drains every second; give it a few ticks.
        let mut counted = 0;
        for _ in 0..10 {
            counted = a.counted_writes(dir)?;
            if counted == *expected {
                break;
            }
            sleep(Duration::from_millis(300));
        }
        drop(a);
        eprintln!(
            "bench: the agent counted {counted} bytes written to the watched mount (expected {expected})"
        );
        if counted != *expected {
            bail!(
                "the agent counted {counted} of {expected} bytes written to {}",
                dir.display()
            );
        }
        *expected = 0;
    }
    Ok(())
}

/// Builds `tg-storage` (tests package) and returns its path.
fn build_tool() -> Result<PathBuf> {
    cmd::check(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "tollgate-tests",
        "--bin",
        "tg-storage",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::root().join("target"));
    Ok(target.join("release/tg-storage"))
}

fn time_writes(tool: &Path, path: &Path, count: u64) -> Result<f64> {
    let out = Command::new(tool)
        .args([
            "loop",
            "--count",
            &count.to_string(),
            "--size",
            "1",
            "--path",
        ])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "tg-storage loop on {} failed: {}",
            path.display(),
            out.status
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("parsing tg-storage output")
}

/// The scratch directory; removed on Drop (after the mount inside it).
struct Scratch(PathBuf);

impl Scratch {
    fn new(p: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("bench: removing {}: {e}", self.0.display());
        }
    }
}

/// `bindfs -f -o subtype=bindfs` (fs type `fuse.bindfs`), our child.
struct Bindfs {
    dir: PathBuf,
    child: Child,
}

fn mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .any(|m| Path::new(m) == dir)
}

impl Bindfs {
    fn mount(backing: &Path, dir: &Path) -> Result<Self> {
        for d in [backing, dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let child = Command::new("bindfs")
            .args(["-f", "-o", "subtype=bindfs"])
            .arg(backing)
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .context("starting bindfs (apt-get install bindfs fuse3)")?;
        let mut me = Self {
            dir: dir.to_owned(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mounted(dir) {
            if let Some(st) = me.child.try_wait()? {
                bail!("bindfs exited ({st}) before mounting {}", dir.display());
            }
            if Instant::now() > deadline {
                bail!("bindfs did not mount {} within 20 s", dir.display());
            }
            sleep(Duration::from_millis(50));
        }
        Ok(me)
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        if mounted(&self.dir)
            && cmd::probe(Command::new("fusermount3").args(["-u", &d]))
                .ok()
                .flatten()
                .is_none_or(|o| !o.status.success())
        {
            let _ = cmd::probe(Command::new("umount").args(["-l", &d]));
        }
        let _ = wait_bounded(&mut self.child, Duration::from_secs(5));
    }
}

/// `tollgate run` with its own pins and socket, watching fuse.bindfs.
/// Drop stops it (SIGTERM, then SIGKILL) and detaches.
struct Agent {
    child: Child,
    bin: PathBuf,
    pins: PathBuf,
    socket: PathBuf,
}

impl Agent {
    fn start(bin: &Path, pins: &Path, socket: &Path) -> Result<Self> {
        let log_path =
            bin.with_file_name(format!("tollgate-bench-storage-{}.log", std::process::id()));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let _ = std::fs::remove_file(socket);
        let child = Command::new(bin)
            .arg("run")
            .arg("--pin-dir")
            .arg(pins)
            .arg("--socket")
            .arg(socket)
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--watch-fstype",
                "fuse.bindfs",
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut a = Agent {
            child,
            bin: bin.to_owned(),
            pins: pins.to_owned(),
            socket: socket.to_owned(),
        };
        // The socket is bound after the storage links are attached.
        let enter = pins.join("v1/links/tg_sys_enter");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(enter.exists() && socket.exists()) {
            if let Some(st) = a.child.try_wait()? {
                bail!(
                    "tollgate exited ({st}) before attaching; see {}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "storage links not attached within 30 s (storage unavailable?); see {}",
                    log_path.display()
                );
            }
            sleep(Duration::from_millis(100));
        }
        Ok(a)
    }

    /// Bytes the agent counted as written to the mount at `dir` (all
    /// cgroups), as a sanity check that the "with" runs were counted.
    fn counted_writes(&self, dir: &Path) -> Result<u64> {
        let out = Command::new(&self.bin)
            .args(["top", "--once", "--format", "json", "--socket"])
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pins)
            .output()
            .context("tollgate top")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("top JSON")?;
        let dir = dir.display().to_string();
        Ok(v["cgroups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["storage"].as_array().into_iter().flatten())
            .filter(|u| u["mount_point"].as_str() == Some(dir.as_str()))
            .filter_map(|u| u["written"]["bytes"].as_u64())
            .sum())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = cmd::probe(Command::new("kill").args(["-s", "TERM", &self.child.id().to_string()]));
        let _ = wait_bounded(&mut self.child, Duration::from_secs(10));
        let _ = cmd::probe(
            Command::new(&self.bin)
                .arg("detach")
                .arg("--pin-dir")
                .arg(&self.pins),
        );
        let _ = std::fs::remove_file(&self.socket);
    }
}
