//! Running external tools (`ip`, `nft`, `kill`, the agent) with bounded waits
//! and errors that name the exact command line and its stderr.
//!
//! The harness drives iproute2 and nftables through their CLIs rather than
//! netlink so that a failing step can be pasted into a shell and reproduced.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Everything the harness can fail with. Tests normally `.expect()` these;
/// the messages carry the command and its stderr so the failure is actionable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Renders a command line for error messages (no shell quoting: for humans).
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Output of a finished process (like `std::process::Output`, but produced by
/// [`wait_timeout`], which std has no equivalent of).
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Last non-empty stdout line parsed as a number; the tg-traffic sinks
    /// print their count there.
    pub fn last_number(&self) -> Option<u64> {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().parse().ok())
    }
}

/// Runs `program args...` to completion (bounded by `timeout`) and returns its
/// stdout, or an error carrying stderr if it exited non-zero.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_cmd(cmd, Duration::from_secs(30))
}

/// Like [`run`], but feeds `stdin` to the process (used for `nft -f -`).
pub fn run_with_stdin<I, S>(program: &str, args: I, stdin: &str) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args);
    let what = describe(&cmd);
    cmd.stdin(Stdio::piped());
    let mut child = spawn_piped(cmd)?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| Error::io(format!("writing stdin of `{what}`"), e))?;
    }
    let out = wait_timeout(child, Duration::from_secs(30), &what)?;
    check(&what, out).map(|o| o.stdout)
}

/// Runs a prepared command with a deadline, failing on a non-zero exit.
pub fn run_cmd(cmd: Command, timeout: Duration) -> Result<String> {
    let what = describe(&cmd);
    check(&what, output(cmd, timeout)?).map(|o| o.stdout)
}

/// Runs a prepared command (stdin from /dev/null) with a deadline and
/// returns its output, whatever its exit status.
pub fn output(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = describe(&cmd);
    cmd.stdin(Stdio::null());
    let child = spawn_piped(cmd)?;
    wait_timeout(child, timeout, &what)
}

fn spawn_piped(mut cmd: Command) -> Result<Child> {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn()
        .map_err(|e| Error::io(format!("spawning `{what}` (is it installed?)"), e))
}

/// Turns a non-zero exit into [`Error::Command`].
pub fn check(what: &str, out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            cmd: what.to_string(),
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_string(),
        })
    }
}

/// Waits for `child` at most `timeout`, collecting stdout/stderr if they were
/// piped. On timeout the child is SIGKILLed and reaped, so nothing outlives
/// the test. The pipes are drained on threads: a child that fills a pipe
/// buffer would otherwise block forever and turn into a spurious timeout.
pub fn wait_timeout(mut child: Child, timeout: Duration, what: &str) -> Result<Output> {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    what: format!("`{what}` to exit"),
                    after: timeout,
                });
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(Error::io(format!("waiting for `{what}`"), e)),
        }
    };
    let join = |h: Option<thread::JoinHandle<String>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Finds `tool` on `PATH` (plus the sbin directories, which a non-login root
/// shell may lack), so missing tools are reported up front, not mid-test.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}
