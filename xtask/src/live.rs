//! `cargo xtask live`, the README's main-job command: builds the agent,
//! runs it attached at the cgroup v2 root, shows `tollgate top` until you
//! quit, then stops the agent and removes its pins.

use std::{
    fs::File,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

const PIN_DIR: &str = "/sys/fs/bpf/tollgate";
const SOCKET: &str = "/run/tollgate/tollgate.sock";

/// The agent child; Drop stops it (SIGTERM by PID, then SIGKILL) and
/// removes its pins, so an error or a quit leaves nothing attached.
struct AgentGuard {
    child: Child,
    bin: PathBuf,
    keep: bool,
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = Command::new(&self.bin)
                .args(["detach", "--pin-dir", PIN_DIR])
                .status();
        }
    }
}

pub fn run(seconds: u64, keep: bool) -> Result<()> {
    setup::run()?;
    let bin = cmd::build_agent()?;
    let log_path = std::env::temp_dir().join("tollgate-live.log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let child = Command::new(&bin)
        .args(["run", "--pin-dir", PIN_DIR, "--socket", SOCKET])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut agent = AgentGuard {
        child,
        bin: bin.clone(),
        keep,
    };
    eprintln!(
        "live: agent pid {} (log {})",
        agent.child.id(),
        log_path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new(SOCKET).exists() {
        if let Some(status) = agent.child.try_wait()? {
            bail!(
                "the agent exited ({status}) before it was ready; log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the agent was not ready after 30 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let top = |extra: &[&str]| {
        Command::new(&bin)
            .args(["top", "--pin-dir", PIN_DIR, "--socket", SOCKET])
            .args(extra)
            .status()
    };
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        top(&[])?;
    } else {
        // No terminal (CI, a pipe): a bounded series of snapshots.
        let end = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < end {
            top(&["--once"])?;
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    drop(agent);
    if keep {
        eprintln!("live: agent stopped; pins kept under {PIN_DIR} (programs stay attached)");
    } else {
        eprintln!("live: agent stopped and detached");
    }
    Ok(())
}
