//! Driving the real `tollgate` binary: start, SIGKILL, detach, `top`.
//!
//! Tests run the release binary as a separate process (not the library in
//! process) because what is under test includes the process boundary: pinned
//! maps and links must keep counting after `kill -9`, and `top`/`detach`
//! must work from a fresh process that only knows the pin directory.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cmd::{self, Error, Result};
use crate::top::Top;

/// Overrides the binary location (CI points it at the built artifact).
pub const BIN_ENV: &str = "TOLLGATE_BIN";

/// The pin that shows the agent has loaded and attached (under `v1/links`).
pub const READY_LINK: &str = "tg_skb_egress";

/// How long `Agent::start` waits for `READY_LINK`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `$TOLLGATE_BIN`, else `<target>/release/tollgate` where `<target>` is
/// `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn tollgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(BIN_ENV) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/tollgate")
}

fn bin_checked() -> Result<PathBuf> {
    let bin = tollgate_bin();
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(Error::Invalid(format!(
            "tollgate binary not found at {}: run `cargo build --release -p tollgate` or set {BIN_ENV}",
            bin.display()
        )))
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it already is bpffs there.
pub fn ensure_bpffs() -> Result<()> {
    let fstype = cmd::run("stat", ["-f", "-c", "%T", "/sys/fs/bpf"]).unwrap_or_default();
    if fstype.trim() == "bpf_fs" {
        return Ok(());
    }
    fs::create_dir_all("/sys/fs/bpf").map_err(|e| Error::io("creating /sys/fs/bpf", e))?;
    cmd::run("mount", ["-t", "bpf", "bpf", "/sys/fs/bpf"]).map(drop)
}

/// RAII name for `/sys/fs/bpf/tollgate-test-<pid>-<n>` (not created: the
/// agent creates its own layout). Drop detaches whatever is pinned there and
/// removes the directory, so a test that dies mid-way leaves no programs
/// attached to the cgroup root.
#[derive(Debug)]
pub struct TestPinDir {
    path: PathBuf,
}

impl TestPinDir {
    pub fn new() -> Result<TestPinDir> {
        ensure_bpffs()?;
        Ok(TestPinDir {
            path: PathBuf::from(format!(
                "/sys/fs/bpf/tollgate-test-{}",
                crate::unique_suffix()
            )),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestPinDir {
    fn drop(&mut self) {
        cleanup_pins(&self.path);
    }
}

/// `tollgate detach` (removing links detaches the programs), then remove
/// anything left. Never panics: runs from Drop.
fn cleanup_pins(pin_dir: &Path) {
    if !pin_dir.exists() {
        return;
    }
    if let Err(e) = detach(pin_dir) {
        eprintln!("warning: {e}");
    }
    if pin_dir.exists()
        && let Err(e) = fs::remove_dir_all(pin_dir)
    {
        eprintln!("warning: removing {}: {e}", pin_dir.display());
    }
}

/// `tollgate detach --pin-dir <pin_dir>`.
pub fn detach(pin_dir: &Path) -> Result<()> {
    let mut c = Command::new(bin_checked()?);
    c.arg("detach").arg("--pin-dir").arg(pin_dir);
    cmd::run_cmd(c, Duration::from_secs(30)).map(drop)
}

/// `tollgate top --once --format json --pin-dir <pin_dir>` as raw JSON.
pub fn top_json(pin_dir: &Path) -> Result<serde_json::Value> {
    let mut c = Command::new(bin_checked()?);
    c.args(["top", "--once", "--format", "json", "--pin-dir"])
        .arg(pin_dir);
    let out = cmd::run_cmd(c, Duration::from_secs(30))?;
    serde_json::from_str(&out)
        .map_err(|e| Error::Invalid(format!("`tollgate top` printed invalid JSON ({e}): {out}")))
}

/// [`top_json`] parsed into the typed schema.
pub fn top(pin_dir: &Path) -> Result<Top> {
    let v = top_json(pin_dir)?;
    serde_json::from_value(v).map_err(|e| Error::Invalid(format!("`tollgate top` schema: {e}")))
}

/// A running `tollgate run`. Drop SIGKILLs it, detaches and removes the pin
/// directory. After [`Agent::kill9`] keep the guard alive until the test
/// ends (a restarted agent declared later is dropped first); dropping it
/// early would detach the pins the test wants to survive.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    pin_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Writes `config_toml` to a temp file, starts the agent with output
    /// going to a log file, and waits (30 s at most) until it is ready
    /// (see [`Agent::wait_ready`]).
    pub fn start(pin_dir: &Path, config_toml: &str) -> Result<Agent> {
        Self::start_with_env(pin_dir, config_toml, &[])
    }

    /// [`Agent::start`] with extra environment variables (e.g. KUBECONFIG
    /// pointing at a replay server).
    pub fn start_with_env(
        pin_dir: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        Self::start_wrapped(pin_dir, config_toml, env, &[])
    }

    /// [`Agent::start_with_env`] through `wrapper`, a command line that
    /// execs the agent with the arguments appended to it, e.g. `capsh
    /// --drop=... --shell=<tollgate> --` (see [`crate::caps`]). It stands in
    /// for the binary's path, and must exec so the child's pid is the
    /// agent's. Empty: the binary itself.
    pub fn start_wrapped(
        pin_dir: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
        wrapper: &[String],
    ) -> Result<Agent> {
        let mut agent = Self::spawn_wrapped(pin_dir, config_toml, env, wrapper)?;
        agent.wait_ready()?;
        Ok(agent)
    }

    fn spawn_wrapped(
        pin_dir: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
        wrapper: &[String],
    ) -> Result<Agent> {
        let bin = bin_checked()?;
        let files = RunFiles::new("tollgate-test", config_toml)?;
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            None => Command::new(&bin),
        };
        cmd.envs(env.iter().copied());
        let (config, log) = files.run(&mut cmd, pin_dir)?;
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", bin.display()), e))?;
        Ok(Agent {
            child,
            pin_dir: pin_dir.to_path_buf(),
            config,
            log,
        })
    }

    /// [`Agent::start_with_env`] without waiting for the agent to be ready
    /// (see [`Agent::wait_ready`]): the crash-loop test kills it at random
    /// moments, start-up included.
    pub fn spawn(pin_dir: &Path, config_toml: &str, env: &[(&str, &str)]) -> Result<Agent> {
        Self::spawn_wrapped(pin_dir, config_toml, env, &[])
    }

    /// Waits (30 s at most) for the ready link pin and the agent's first
    /// snapshot on its socket; an error if the agent exits first or never
    /// gets there (with its log).
    pub fn wait_ready(&mut self) -> Result<()> {
        let agent = self;
        let pin_dir = agent.pin_dir.clone();
        let ready = pin_dir.join("v1/links").join(READY_LINK);
        let mut exited = None;
        let waited = cmd::wait_until("agent ready", START_TIMEOUT, || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                exited = Some(status);
                return true;
            }
            // Ready is the link pinned and the first snapshot served: a
            // `top` before that would read the pins without the agent
            // (no identities, storage status "unknown").
            ready.exists()
                && tollgate::api::fetch_snapshot(&tollgate::api::default_socket(&pin_dir)).is_ok()
        });
        match (waited, exited) {
            (Ok(()), None) => Ok(()),
            (_, Some(status)) => Err(Error::Invalid(format!(
                "tollgate run exited ({status}) before pinning {}; log:\n{}",
                ready.display(),
                agent.log()
            ))),
            (Err(e), None) => Err(Error::Invalid(format!(
                "{e}: {}; log:\n{}",
                ready.display(),
                agent.log()
            ))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// SIGKILL (what `Child::kill` sends) and reap: simulates a crash, no
    /// cleanup code in the agent runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The control API's URL, from the agent's log (it binds an ephemeral
    /// port in tests); waits for the line (30 s at most).
    pub fn control_url(&self) -> Result<String> {
        let mut url = None;
        cmd::wait_until("control API URL in the agent log", START_TIMEOUT, || {
            url = self
                .log()
                .lines()
                .find(|l| l.contains("serving the control API"))
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("url=")))
                .map(str::to_owned);
            url.is_some()
        })
        .map_err(|e| Error::Invalid(format!("{e}; log:\n{}", self.log())))?;
        Ok(url.unwrap_or_default())
    }

    /// Everything the agent printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address /metrics is served on, from the agent's log line (tests
    /// bind port 0). Waits up to 30 s for the line.
    pub fn metrics_addr(&self) -> Result<String> {
        let mut addr = None;
        let _ = cmd::wait_until("metrics address in the log", START_TIMEOUT, || {
            addr = self
                .log()
                .lines()
                .find(|l| l.contains("serving /metrics"))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .map(str::to_owned);
            addr.is_some()
        });
        addr.ok_or_else(|| {
            Error::Invalid(format!(
                "the agent did not log its metrics address; log:\n{}",
                self.log()
            ))
        })
    }

    /// GET `path` from the metrics server; the whole HTTP/1.0 response.
    pub fn http_get(&self, path: &str) -> Result<String> {
        use std::io::{Read as _, Write as _};
        let addr = self.metrics_addr()?;
        let io = |e| Error::io(format!("GET http://{addr}{path}"), e);
        let mut s = std::net::TcpStream::connect(&addr).map_err(io)?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").map_err(io)?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(io)?;
        Ok(out)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        cleanup_pins(&self.pin_dir);
        let _ = fs::remove_file(&self.config);
        if std::thread::panicking() {
            // Keep the evidence for a failing test (libtest shows stderr).
            eprintln!(
                "agent log kept at {}:\n{}",
                self.log.display(),
                tail(&self.log(), 60)
            );
        } else {
            let _ = fs::remove_file(&self.log);
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `tollgate top` until `done` holds or `timeout` passes; returns the
/// last snapshot either way, so the caller's assertions show the
/// difference. Panics only if top never answered.
pub fn top_until(pin_dir: &Path, timeout: Duration, done: impl Fn(&Top) -> bool) -> Top {
    let mut last = None;
    // Failures after the last answer: a condition that never held because
    // `top` kept failing reads differently from one that saw wrong counts.
    let mut failures: Vec<String> = Vec::new();
    let met = cmd::wait_until("agent snapshot", timeout, || match top(pin_dir) {
        Ok(t) => {
            let ok = done(&t);
            last = Some(t);
            failures.clear();
            ok
        }
        Err(e) => {
            failures.push(format!("{e:#}"));
            false
        }
    });
    if met.is_err() && !failures.is_empty() {
        eprintln!(
            "tollgate top failed {} time(s) after its last answer; last error: {}",
            failures.len(),
            failures.last().map(String::as_str).unwrap_or("")
        );
    }
    last.unwrap_or_else(|| {
        panic!(
            "tollgate top never answered: {}",
            failures.last().map(String::as_str).unwrap_or("no attempt")
        )
    })
}

/// Runs `tollgate <args> --pin-dir P --state-dir S`; returns stdout.
pub fn tg(pins: &Path, state: &Path, args: &[&str]) -> String {
    let out = Command::new(tollgate_bin())
        .args(args)
        .arg("--pin-dir")
        .arg(pins)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("tollgate runs");
    assert!(
        out.status.success(),
        "tollgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The config file and log of an agent a test starts: `PREFIX-N.toml` and
/// `PREFIX-N.log` in the temp dir.
pub(crate) struct RunFiles {
    config: PathBuf,
    log: PathBuf,
}

impl RunFiles {
    pub(crate) fn new(prefix: &str, config_toml: &str) -> Result<Self> {
        let base = std::env::temp_dir().join(format!("{prefix}-{}", crate::unique_suffix()));
        let files = RunFiles {
            config: base.with_extension("toml"),
            log: base.with_extension("log"),
        };
        fs::write(&files.config, config_toml)
            .map_err(|e| Error::io(format!("writing {}", files.config.display()), e))?;
        Ok(files)
    }

    /// Appends `run --config C --pin-dir P` with ephemeral loopback ports
    /// (tests run agents side by side; the agent logs the address it got)
    /// to `cmd`, stdin from /dev/null, stdout and stderr to the log.
    /// Returns the (config, log) paths.
    pub(crate) fn run(self, cmd: &mut Command, pin_dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let out = File::create(&self.log)
            .map_err(|e| Error::io(format!("creating {}", self.log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating log fd", e))?;
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--control-addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        Ok((self.config, self.log))
    }
}
