//! `tollgate demo`: four "pods" on this machine, in namespaces, watched by
//! a real agent. A training job and a notebook behave; an exfiltrator
//! disguised as a training job uploads a dataset to the internet, and a
//! miner disguised as a notebook speaks stratum to a pool. The demo shows
//! counts and findings live, quarantines the pods that get a high or
//! critical finding (as an operator would, with `tollgate quarantine`),
//! prints a summary and removes everything it made, on exit or Ctrl-C.
//!
//! Each pod is a cgroup (`/tollgate-demo.slice/<namespace>.slice/<pod>.scope`,
//! named the way the standalone inventory reads systemd units) plus a
//! network namespace behind a router namespace; the agent runs with its
//! own pins, socket and state directory, so it does not disturb an agent
//! already running on the host.

mod net;
pub mod worker;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    api,
    collect::{CgroupRow, Snapshot},
    detect::{Finding, FindingState, Severity},
};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "the demo needs root (it creates namespaces, cgroups and loads eBPF): run it with sudo"
    )]
    NotRoot,
    #[error("{0} failed: {1}")]
    Tool(String, String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("the demo agent did not start within 30 s; its log is {0}:\n{1}")]
    AgentStart(PathBuf, String),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroupfs::CgroupError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |e| DemoError::Io(what, e)
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Benign behaviour before the attacks start (the classes learn).
    pub learn: Duration,
    /// How long to keep watching after the attacks started.
    pub watch: Duration,
    /// Print the summary as JSON (for scripts and tests).
    pub json: bool,
}

const PIN_DIR: &str = "/sys/fs/bpf/tollgate-demo";
const SOCKET: &str = "/run/tollgate-demo.sock";
const SLICE: &str = "tollgate-demo.slice";

/// One demo pod.
struct Pod {
    namespace: &'static str,
    name: &'static str,
    class: &'static str,
    role: &'static str,
    attacker: bool,
    host: net::Host,
    cgroup: PathBuf,
}

impl Pod {
    fn rel(&self) -> String {
        format!("/{SLICE}/{}.slice/{}.scope", self.namespace, self.name)
    }

    fn label(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Processes the demo started; killed by pid on drop.
#[derive(Default)]
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The demo's cgroup tree; on drop every process in it is killed and the
/// directories removed.
struct Cgroups {
    root: PathBuf,
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        remove_cgroup_tree(&self.root);
    }
}

fn remove_cgroup_tree(root: &Path) {
    if !root.exists() {
        return;
    }
    let _ = std::fs::write(root.join("cgroup.kill"), "1");
    let mut dirs = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        dirs.push(d);
    }
    dirs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The demo agent: stopped and detached (its pins, links and quarantine
/// entries removed) on drop.
struct AgentGuard {
    child: Child,
    exe: PathBuf,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        detach(&self.exe);
        let _ = std::fs::remove_file(SOCKET);
    }
}

fn detach(exe: &Path) {
    if Path::new(PIN_DIR).exists() {
        let _ = Command::new(exe)
            .args(["detach", "--pin-dir", PIN_DIR])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Temp directory for config, logs and agent state; removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PodSummary {
    pub pod: String,
    pub class: String,
    pub attacker: bool,
    pub egress_external_bytes: u64,
    pub egress_internal_bytes: u64,
    pub ingress_bytes: u64,
    /// Detectors that fired, with the seconds from the attack start.
    pub findings: BTreeMap<String, f64>,
    pub quarantined_after_s: Option<f64>,
    pub packets_dropped_by_quarantine: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pods: Vec<PodSummary>,
    /// Every attacker got a finding and was quarantined; no benign pod got
    /// a high or critical finding.
    pub ok: bool,
    pub interrupted: bool,
}

fn effective_uid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

pub async fn run(opts: &DemoOptions) -> Result<Summary, DemoError> {
    if effective_uid() != Some(0) {
        return Err(DemoError::NotRoot);
    }
    let exe = std::env::current_exe().map_err(io("finding the tollgate binary"))?;
    let mount = crate::cgroupfs::cgroup2_mount()?;
    // Leftovers of a demo that was killed.
    net::remove_stale();
    remove_cgroup_tree(&mount.join(SLICE));
    detach(&exe);

    let tmp = TempDir(std::env::temp_dir().join(format!("tollgate-demo-{}", std::process::id())));
    std::fs::create_dir_all(tmp.0.join("state")).map_err(io("creating the demo's temp dir"))?;

    say(
        "building the demo network: router, service host 198.18.250.2, internet host 203.0.113.1, four pods",
    );
    let mut network = net::Network::new()?;
    let svc = network.host("svc", "198.18.250", 2)?;
    let inet = network.host("inet", "203.0.113", 1)?;
    let specs = [
        ("ml-research", "train-resnet", "training", "train", false),
        ("ds-team", "notebook-alice", "notebook", "notebook", false),
        ("ml-research", "train-llm", "training", "train", true),
        ("ds-team", "notebook-bob", "notebook", "notebook", true),
    ];
    let cgroups = Cgroups {
        root: mount.join(SLICE),
    };
    let mut pods = Vec::new();
    for (i, (namespace, name, class, role, attacker)) in specs.into_iter().enumerate() {
        let host = network.host(&format!("p{i}"), &format!("198.18.{}", 10 + i), 2)?;
        let cgroup = cgroups
            .root
            .join(format!("{namespace}.slice"))
            .join(format!("{name}.scope"));
        std::fs::create_dir_all(&cgroup).map_err(io(format!("creating {}", cgroup.display())))?;
        pods.push(Pod {
            namespace,
            name,
            class,
            role,
            attacker,
            host,
            cgroup,
        });
    }

    let config = tmp.0.join("config.toml");
    std::fs::write(&config, config_text(&tmp.0.join("state")))
        .map_err(io("writing the demo config"))?;
    let log = tmp.0.join("agent.log");
    let agent = start_agent(&exe, &config, &log)?;
    say(&format!(
        "agent running (pins {PIN_DIR}, socket {SOCKET}, log {})",
        log.display()
    ));

    let mut procs = Procs::default();
    for h in [&svc, &inet] {
        procs.0.push(spawn_in(&exe, None, &h.netns, &["serve"])?);
    }
    for p in &pods {
        let args: Vec<&str> = match p.role {
            "train" => vec!["train", "--svc", net::SERVICE_ADDR],
            _ => vec!["notebook", "--inet", net::INTERNET_ADDR],
        };
        procs
            .0
            .push(spawn_in(&exe, Some(&p.cgroup), &p.host.netns, &args)?);
    }
    say(&format!(
        "four pods running; the classes learn for {} s before the attacks",
        opts.learn.as_secs()
    ));

    let started = Instant::now();
    let mut attack_at: Option<Instant> = None;
    let mut detected: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut quarantined: BTreeMap<String, f64> = BTreeMap::new();
    let mut interrupted = false;
    let mut last: Option<Snapshot> = None;
    let end = opts.learn + opts.watch;
    let tty = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => {
                interrupted = true;
                break;
            }
        }
        let now = Instant::now();
        if attack_at.is_none() && now.duration_since(started) >= opts.learn {
            let exfil = format!("{}:{}", net::INTERNET_ADDR, worker::UPLOAD_PORT);
            let pool = format!("{}:{}", net::INTERNET_ADDR, worker::POOL_PORT);
            for p in pods.iter().filter(|p| p.attacker) {
                let args: Vec<&str> = if p.role == "train" {
                    vec!["upload", "--to", &exfil, "--bytes", "200000000"]
                } else {
                    vec!["stratum", "--to", &pool]
                };
                procs
                    .0
                    .push(spawn_in(&exe, Some(&p.cgroup), &p.host.netns, &args)?);
            }
            attack_at = Some(now);
            say(
                "attacks started: train-llm uploads the dataset to 203.0.113.1:443, notebook-bob mines on 203.0.113.1:3333",
            );
        }
        let snap = api::fetch_snapshot(Path::new(SOCKET)).ok();
        let findings = api::fetch_findings(Path::new(SOCKET)).unwrap_or_default();
        for f in findings.iter().filter(|f| f.state == FindingState::Firing) {
            let Some(p) = pods
                .iter()
                .find(|p| f.subject.cgroup_path.as_deref() == Some(&p.rel()))
            else {
                continue;
            };
            let since = attack_at.map_or(0.0, |a| now.duration_since(a).as_secs_f64());
            detected
                .entry((p.label(), f.detector.to_string()))
                .or_insert(since);
            if f.severity >= Severity::High && !quarantined.contains_key(&p.label()) {
                quarantine(&exe, &config, p, f)?;
                quarantined.insert(p.label(), since);
            }
        }
        if let Some(s) = &snap {
            let view = render(
                s,
                &pods,
                &detected,
                &quarantined,
                now.duration_since(started),
                attack_at.is_some(),
            );
            if tty {
                print!("\x1b[2J\x1b[H{view}");
            } else {
                print!("{view}");
            }
            last = snap;
        }
        let all_caught = pods
            .iter()
            .filter(|p| p.attacker)
            .all(|p| quarantined.contains_key(&p.label()));
        let elapsed = now.duration_since(started);
        if elapsed >= end
            || (all_caught
                && attack_at.is_some_and(|a| now.duration_since(a) >= Duration::from_secs(10)))
        {
            break;
        }
    }
    let summary = summarize(&pods, last.as_ref(), &detected, &quarantined, interrupted);
    say("cleaning up: stopping the pods and the agent, removing namespaces, cgroups and pins");
    drop(procs);
    drop(agent);
    drop(cgroups);
    drop(network);
    drop(tmp);
    Ok(summary)
}

fn say(msg: &str) {
    eprintln!("demo: {msg}");
}

fn config_text(state: &Path) -> String {
    format!(
        r#"# tollgate demo: pods are cgroups under /{SLICE}
[agent]
tick = "1s"
state_dir = "{}"

[network]
internal_cidrs = ["198.18.0.0/16"]

[inventory]
mode = "standalone"
grace = "5s"

[detect]
window = "2s"
learning_windows = 8
learning_duration = "16s"

[[classes.path_rules]]
glob = "/{SLICE}/*/train-*.scope"
class = "training"

[[classes.path_rules]]
glob = "/{SLICE}/*/notebook-*.scope"
class = "notebook"
"#,
        state.display()
    )
}

fn start_agent(exe: &Path, config: &Path, log: &Path) -> Result<AgentGuard, DemoError> {
    let out = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(io("duplicating the log fd"))?;
    let _ = std::fs::remove_file(SOCKET);
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config)
        .args([
            "--pin-dir",
            PIN_DIR,
            "--socket",
            SOCKET,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io(format!("starting {}", exe.display())))?;
    let mut guard = AgentGuard {
        child,
        exe: exe.to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while api::fetch_snapshot(Path::new(SOCKET)).is_err() {
        let exited = guard.child.try_wait().ok().flatten().is_some();
        if exited || Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(DemoError::AgentStart(log.to_owned(), text));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(guard)
}

/// `tollgate demo-worker ARGS` in `netns`, moved into `cgroup` first.
fn spawn_in(
    exe: &Path,
    cgroup: Option<&Path>,
    netns: &str,
    args: &[&str],
) -> Result<Child, DemoError> {
    let procs = cgroup.map(|c| c.join("cgroup.procs"));
    let script = match &procs {
        Some(p) => format!("echo $$ > '{}' && exec \"$@\"", p.display()),
        None => "exec \"$@\"".into(),
    };
    Command::new("sh")
        .args(["-c", &script, "sh", "ip", "netns", "exec", netns])
        .arg(exe)
        .arg("demo-worker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io(format!(
            "starting demo-worker {} in {netns}",
            args.join(" ")
        )))
}

/// What an operator would type: `tollgate quarantine --cgroup ...`.
fn quarantine(exe: &Path, config: &Path, p: &Pod, f: &Finding) -> Result<(), DemoError> {
    let reason = format!("{}: {}", f.detector, f.summary);
    say(&format!(
        "quarantining {} ({} {}): tollgate quarantine --cgroup {} --reason {reason:?}",
        p.label(),
        f.severity,
        f.detector,
        p.rel()
    ));
    let out = Command::new(exe)
        .arg("quarantine")
        .arg("--config")
        .arg(config)
        .args([
            "--pin-dir",
            PIN_DIR,
            "--cgroup",
            &p.rel(),
            "--reason",
            &reason,
        ])
        .output()
        .map_err(io("running tollgate quarantine"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DemoError::Tool(
            "tollgate quarantine".into(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

fn row<'a>(s: &'a Snapshot, p: &Pod) -> Option<&'a CgroupRow> {
    s.cgroups
        .iter()
        .find(|r| r.path.as_deref() == Some(&p.rel()))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn render(
    s: &Snapshot,
    pods: &[Pod],
    detected: &BTreeMap<(String, String), f64>,
    quarantined: &BTreeMap<String, f64>,
    elapsed: Duration,
    attacking: bool,
) -> String {
    let mut out = String::new();
    let phase = if attacking {
        "attacks running"
    } else {
        "learning"
    };
    let _ = writeln!(
        out,
        "tollgate demo  t={:>3}s  phase: {phase}  (Ctrl-C ends)\n",
        elapsed.as_secs()
    );
    let _ = writeln!(
        out,
        "{:<28} {:<9} {:>10} {:>10} {:>10} {:>11}  {:<12} findings",
        "pod", "class", "out ext/s", "out int/s", "in/s", "out ext", "state"
    );
    for p in pods {
        let r = row(s, p);
        let rate = |f: fn(&CgroupRow) -> f64| r.map_or("-".into(), |r| crate::top::human(f(r)));
        let found: Vec<String> = detected
            .keys()
            .filter(|(pod, _)| *pod == p.label())
            .map(|(_, d)| d.clone())
            .collect();
        let _ = writeln!(
            out,
            "{:<28} {:<9} {:>10} {:>10} {:>10} {:>11}  {:<12} {}",
            p.label(),
            r.and_then(|r| r.class.clone())
                .unwrap_or_else(|| p.class.into()),
            rate(|r| r.rates.egress_external_bytes),
            rate(|r| r.rates.egress_internal_bytes),
            rate(|r| r.rates.ingress_bytes),
            r.map_or("-".into(), |r| mib(r.egress.external.bytes)),
            if quarantined.contains_key(&p.label()) {
                "QUARANTINED"
            } else {
                "running"
            },
            found.join(", ")
        );
    }
    out.push('\n');
    out
}

fn summarize(
    pods: &[Pod],
    s: Option<&Snapshot>,
    detected: &BTreeMap<(String, String), f64>,
    quarantined: &BTreeMap<String, f64>,
    interrupted: bool,
) -> Summary {
    let rows: Vec<PodSummary> = pods
        .iter()
        .map(|p| {
            let r = s.and_then(|s| row(s, p));
            PodSummary {
                pod: p.label(),
                class: p.class.into(),
                attacker: p.attacker,
                egress_external_bytes: r.map_or(0, |r| r.egress.external.bytes),
                egress_internal_bytes: r.map_or(0, |r| r.egress.internal.bytes),
                ingress_bytes: r.map_or(0, |r| r.ingress.total_bytes()),
                findings: detected
                    .iter()
                    .filter(|((pod, _), _)| *pod == p.label())
                    .map(|((_, d), t)| (d.clone(), *t))
                    .collect(),
                quarantined_after_s: quarantined.get(&p.label()).copied(),
                packets_dropped_by_quarantine: r.map_or(0, |r| r.quarantine_dropped.packets),
            }
        })
        .collect();
    let ok = !interrupted
        && rows.iter().all(|r| {
            if r.attacker {
                !r.findings.is_empty() && r.quarantined_after_s.is_some()
            } else {
                r.quarantined_after_s.is_none()
            }
        });
    Summary {
        pods: rows,
        ok,
        interrupted,
    }
}

/// The summary as a table.
pub fn print_summary(s: &Summary) {
    println!("\nsummary");
    println!(
        "{:<28} {:<9} {:<8} {:>11} {:>11} {:>10}  {:<14} detected (s after attack start)",
        "pod", "class", "role", "out ext", "out int", "in", "quarantined"
    );
    for r in &s.pods {
        let found: Vec<String> = r
            .findings
            .iter()
            .map(|(d, t)| format!("{d} {t:.0}s"))
            .collect();
        println!(
            "{:<28} {:<9} {:<8} {:>11} {:>11} {:>10}  {:<14} {}",
            r.pod,
            r.class,
            if r.attacker { "attacker" } else { "benign" },
            mib(r.egress_external_bytes),
            mib(r.egress_internal_bytes),
            mib(r.ingress_bytes),
            r.quarantined_after_s.map_or("no".into(), |t| format!(
                "after {t:.0}s ({} pkts dropped)",
                r.packets_dropped_by_quarantine
            )),
            if found.is_empty() {
                "-".into()
            } else {
                found.join(", ")
            }
        );
    }
    println!(
        "\n{}",
        if s.interrupted {
            "interrupted: cleaned up"
        } else if s.ok {
            "every attacker was detected and quarantined; the benign pods kept running"
        } else {
            "NOT every attacker was caught, or a benign pod was quarantined (see above)"
        }
    );
}
