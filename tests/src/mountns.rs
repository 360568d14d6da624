//! The agent in a private mount namespace (`unshare -m`), for tests that
//! take things away from it (bpffs, BTF, cgroup v2) without touching the
//! host's mounts.
//!
//! The setup script runs inside the new namespace before the agent is
//! exec'd (same pid: `unshare` and `sh` exec). Setups normally mount a
//! fresh bpffs over /sys/fs/bpf, so the pins are private too: when the
//! agent dies the namespace, its bpffs and therefore its links go away,
//! and the programs detach without any cleanup step.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use crate::agent::{RunFiles, tollgate_bin};
use crate::cmd::{self, Error, Result};
use crate::top::Top;

/// Setup line: a fresh, private bpffs at /sys/fs/bpf.
pub const FRESH_BPFFS: &str = "mount -t bpf bpf /sys/fs/bpf";

/// A `tollgate run` in its own mount namespace. Drop SIGKILLs it.
#[derive(Debug)]
pub struct Confined {
    child: Child,
    pin_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Confined {
    /// Runs `setup` (shell, `set -e`) in a new private mount namespace,
    /// then execs `tollgate run` there with `config_toml`.
    pub fn spawn(setup: &str, pin_dir: &Path, config_toml: &str) -> Result<Confined> {
        let files = RunFiles::new("tollgate-ns", config_toml)?;
        let script = format!("set -e\n{setup}\nexec \"$@\"");
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(tollgate_bin());
        let (config, log) = files.run(&mut cmd, pin_dir)?;
        let child = cmd.spawn().map_err(|e| Error::io("starting unshare", e))?;
        Ok(Confined {
            child,
            pin_dir: pin_dir.to_path_buf(),
            config,
            log,
        })
    }

    /// Waits (30 s at most) for the agent's "tollgate running" line.
    pub fn wait_running(&mut self) -> Result<()> {
        let mut exited = None;
        let log = self.log.clone();
        let child = &mut self.child;
        let waited = cmd::wait_until("agent running", Duration::from_secs(30), || {
            if let Ok(Some(s)) = child.try_wait() {
                exited = Some(s);
                return true;
            }
            fs::read_to_string(&log).is_ok_and(|l| l.contains("tollgate running"))
        });
        match (waited, exited) {
            (Ok(()), None) => Ok(()),
            (_, Some(s)) => Err(Error::Invalid(format!(
                "the confined agent exited ({s}); log:\n{}",
                self.log()
            ))),
            (Err(e), None) => Err(Error::Invalid(format!("{e}; log:\n{}", self.log()))),
        }
    }

    /// Waits for the agent to exit by itself (it is killed after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut status = None;
        let child = &mut self.child;
        let _ = cmd::wait_until("agent exit", timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status.ok_or_else(|| {
            Error::Invalid(format!(
                "the agent did not exit within {timeout:?}; log:\n{}",
                self.log()
            ))
        })
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `path` as the agent sees it (through /proc/<pid>/root, which
    /// resolves in the agent's mount namespace).
    pub fn path(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.child.id()))
            .join(path.strip_prefix("/").unwrap_or(path))
    }

    /// The pin directory as the agent sees it.
    pub fn pins(&self) -> PathBuf {
        self.path(&self.pin_dir)
    }

    /// Runs `tollgate <args>` inside the agent's mount namespace; returns
    /// (success, stdout + stderr).
    pub fn tollgate(&self, args: &[&str]) -> Result<(bool, String)> {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.child.id().to_string())
            .arg("-m")
            .arg(tollgate_bin())
            .args(args);
        let out = cmd::output(c, Duration::from_secs(30))?;
        Ok((
            out.status.success(),
            format!("{}{}", out.stdout, out.stderr),
        ))
    }

    /// `tollgate top --once --format json` inside the namespace.
    pub fn top(&self) -> Result<Top> {
        let pins = self.pin_dir.display().to_string();
        let (ok, out) =
            self.tollgate(&["top", "--once", "--format", "json", "--pin-dir", &pins])?;
        if !ok {
            return Err(Error::Invalid(format!("tollgate top failed: {out}")));
        }
        Top::parse(&out).map_err(|e| Error::Invalid(format!("tollgate top JSON ({e}): {out}")))
    }

    /// Polls [`Confined::top`] until `done` holds (at most `timeout`);
    /// returns the last snapshot.
    pub fn top_until(&self, timeout: Duration, done: impl Fn(&Top) -> bool) -> Result<Top> {
        let mut last = None;
        let _ = cmd::wait_until("confined agent snapshot", timeout, || match self.top() {
            Ok(t) => {
                let ok = done(&t);
                last = Some(t);
                ok
            }
            Err(_) => false,
        });
        last.ok_or_else(|| Error::Invalid(format!("top never answered; log:\n{}", self.log())))
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.config);
        if std::thread::panicking() {
            eprintln!(
                "confined agent log kept at {}:\n{}",
                self.log.display(),
                self.log()
            );
        } else {
            let _ = fs::remove_file(&self.log);
        }
    }
}
