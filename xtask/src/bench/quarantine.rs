//! `cargo xtask bench quarantine`: time from a quarantine request to the
//! first packet the kernel stops, p50/p99 over N runs, for both
//! enforcement paths:
//! - cgroup: the sender is in the pod's cgroup (connect/sendmsg EPERM and
//!   cgroup_skb drop);
//! - tc: the sender is outside the pod's cgroup in the pod's namespace (a
//!   VM sandbox); only the tc program on the host-side veth stops it.
//!
//! Topology: pod namespace --veth-- router namespace --veth-- internet
//! namespace (203.0.113.1); the router holds the pod's host-side end, so
//! the agent runs with `tc.netns` pointing at it. The sender is a bounded
//! UDP loop (python3) that ignores refusals, so it keeps sending through
//! every quarantine/release cycle. The measuring loop runs inside
//! `tollgate bench-quarantine` (the real request path, counters polled
//! without sleeping); the baseline is the sender's gap: a random instant
//! to its next packet, measured in the same run.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use super::{Agent, cgroup2_mount, ensure_root};
use crate::{cmd, setup};

#[derive(Args)]
pub struct QuarantineArgs {
    /// Quarantine/release cycles per path.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(10..=1000))]
    runs: u32,
    /// Use this agent binary instead of building target/release/tollgate.
    #[arg(long)]
    bin: Option<PathBuf>,
}

const PIN_DIR: &str = "/sys/fs/bpf/tollgate-bench-q";
const SOCKET: &str = "/run/tollgate-bench-q.sock";
/// Upper bound of a sender's life; it is killed when the bench ends.
const SENDER_SECONDS: u32 = 300;
const TARGET_P99_MS: f64 = 10.0;

/// Namespaces and cgroups of the bench; Drop removes them.
struct World {
    ns: [String; 3],
    cgroup_root: PathBuf,
    children: Vec<Child>,
}

impl World {
    fn router(&self) -> &str {
        &self.ns[0]
    }
    fn pod(&self) -> &str {
        &self.ns[1]
    }

    fn create() -> Result<World> {
        let pid = std::process::id();
        let ns = [
            format!("tgqb-r-{pid}"),
            format!("tgqb-p-{pid}"),
            format!("tgqb-i-{pid}"),
        ];
        let mount = cgroup2_mount()?;
        let mut w = World {
            ns: ns.clone(),
            cgroup_root: mount.join(format!("tollgate-bench-q-{pid}")),
            children: Vec::new(),
        };
        for n in &ns {
            ip(&["netns", "add", n])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        let (r, p, i) = (&ns[0], &ns[1], &ns[2]);
        ip(&[
            "-n", r, "link", "add", "qbpod", "type", "veth", "peer", "name", "eth0", "netns", p,
        ])?;
        ip(&[
            "-n", r, "link", "add", "qbinet", "type", "veth", "peer", "name", "eth0", "netns", i,
        ])?;
        ip(&["-n", r, "addr", "add", "198.18.1.1/24", "dev", "qbpod"])?;
        ip(&["-n", r, "addr", "add", "203.0.113.254/24", "dev", "qbinet"])?;
        ip(&["-n", p, "addr", "add", "198.18.1.2/24", "dev", "eth0"])?;
        ip(&["-n", i, "addr", "add", "203.0.113.1/24", "dev", "eth0"])?;
        for (n, dev) in [(r, "qbpod"), (r, "qbinet"), (p, "eth0"), (i, "eth0")] {
            ip(&["-n", n, "link", "set", dev, "up"])?;
        }
        ip(&["-n", p, "route", "add", "default", "via", "198.18.1.1"])?;
        ip(&["-n", i, "route", "add", "default", "via", "203.0.113.254"])?;
        cmd::check(Command::new("ip").args([
            "netns",
            "exec",
            r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]))?;
        for sub in ["pod", "vm"] {
            std::fs::create_dir_all(w.cgroup_root.join(sub))
                .with_context(|| format!("creating cgroup {}", w.cgroup_root.display()))?;
        }
        // The pod's "pause" process: how the agent finds its namespace.
        let pause = w.spawn_in("pod", &["sleep", &SENDER_SECONDS.to_string()])?;
        w.children.push(pause);
        Ok(w)
    }

    /// Starts `argv` in cgroup `sub` and the pod's namespace.
    fn spawn_in(&self, sub: &str, argv: &[&str]) -> Result<Child> {
        let cg = self.cgroup_root.join(sub);
        Command::new("sh")
            .args([
                "-c",
                r#"cg="$1"; ns="$2"; shift 2; echo $$ > "$cg/cgroup.procs" && exec ip netns exec "$ns" "$@""#,
                "sh",
            ])
            .arg(&cg)
            .arg(self.pod())
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a process in the pod")
    }

    /// A UDP sender to the internet host that ignores refusals (bounded).
    fn sender(&self, sub: &str) -> Result<Child> {
        let script = format!(
            "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nend=time.time()+{SENDER_SECONDS}\nwhile time.time()<end:\n  try:\n    s.sendto(b'x'*64,('203.0.113.1',9))\n  except OSError:\n    pass\n  time.sleep(0.0002)\n"
        );
        self.spawn_in(sub, &["python3", "-c", &script])
    }

    fn host_ifindex(&self) -> Result<u32> {
        let out =
            output(Command::new("ip").args(["-n", self.router(), "-j", "link", "show", "qbpod"]))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        v[0]["ifindex"]
            .as_u64()
            .map(|i| i as u32)
            .context("ifindex of qbpod")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for sub in ["pod", "vm"] {
            let _ = std::fs::write(self.cgroup_root.join(sub).join("cgroup.kill"), "1");
        }
        std::thread::sleep(Duration::from_millis(200));
        for sub in ["pod", "vm"] {
            let _ = std::fs::remove_dir(self.cgroup_root.join(sub));
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `c` to completion; stdout, or an error with stderr.
fn output(c: &mut Command) -> Result<String> {
    eprintln!("+ {c:?}");
    let out = c.output().with_context(|| format!("starting {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::check(Command::new("ip").args(args))
}

pub fn run(args: &QuarantineArgs) -> Result<()> {
    ensure_root()?;
    setup::run()?;
    let bin = match &args.bin {
        Some(b) => b
            .canonicalize()
            .with_context(|| format!("--bin {}", b.display()))?,
        None => cmd::build_agent()?,
    };
    if Path::new(PIN_DIR).exists() {
        super::detach(&bin, PIN_DIR)?;
    }
    let mut world = World::create()?;
    let state = std::env::temp_dir().join(format!("tollgate-bench-q-{}", std::process::id()));
    let config = state.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ntick = \"200ms\"\nstate_dir = \"{}\"\n\n[tc]\nnetns = \"/run/netns/{}\"\n",
            state.display(),
            world.router()
        ),
    )
    .context("writing the bench config")?;
    let config_s = config.display().to_string();
    let agent = Agent::start_with(&bin, PIN_DIR, SOCKET, &["--config", &config_s])?;
    let ifindex = world.host_ifindex()?;
    let pin = Path::new(PIN_DIR).join(format!("v1/links/tc/{ifindex}_from"));
    let mut waited = 0;
    while !pin.exists() {
        if waited > 300 {
            bail!(
                "the agent did not attach tc to the pod's veth within 30 s; log:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    let rel = format!(
        "/{}/pod",
        world
            .cgroup_root
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );
    let mut rows = Vec::new();
    for (watch, sub) in [("cgroup", "pod"), ("tc", "vm")] {
        let sender = world.sender(sub)?;
        world.children.push(sender);
        std::thread::sleep(Duration::from_millis(500));
        eprintln!(
            "bench: {} runs, sender in the {sub} cgroup, watching the {watch} counters",
            args.runs
        );
        let out = output(Command::new(&bin).args([
            "bench-quarantine",
            "--config",
            &config_s,
            "--pin-dir",
            PIN_DIR,
            "--state-dir",
            &state.display().to_string(),
            "--cgroup",
            &rel,
            "--ifindex",
            &ifindex.to_string(),
            "--watch",
            watch,
            "--runs",
            &args.runs.to_string(),
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&out).context("bench-quarantine output")?;
        rows.push(v);
        if let Some(mut s) = world.children.pop() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
    agent.stop()?;
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&config);
    println!(
        "\nquarantine request -> first stopped packet, {} runs per path (sender gap = baseline)\n",
        args.runs
    );
    println!(
        "{:<7} | {:>9} | {:>9} | {:>9} | {:>11} | {:>12} | {:>6} | {:>6} | target",
        "path", "p50 ms", "p99 ms", "max ms", "request p50", "baseline p50", "ratio", "missed"
    );
    println!("{}", "-".repeat(100));
    for v in &rows {
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let p99 = f("p99_ms");
        let ok = p99 <= TARGET_P99_MS && v["missed"].as_u64() == Some(0);
        println!(
            "{:<7} | {:>9.3} | {:>9.3} | {:>9.3} | {:>11.3} | {:>12.3} | {:>6.1} | {:>6} | p99 <= {TARGET_P99_MS} ms {}",
            v["watch"].as_str().unwrap_or("?"),
            f("p50_ms"),
            p99,
            f("max_ms"),
            f("request_p50_ms"),
            f("baseline_p50_ms"),
            f("p50_ms") / f("baseline_p50_ms"),
            v["missed"],
            if ok { "ok" } else { "MISSED" }
        );
    }
    Ok(())
}
