//! Helpers for control API tests: a state directory guard, the CLI, the
//! audit log.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::agent::tollgate_bin;

/// Removes the state directory even when the test fails.
pub struct StateDir(pub PathBuf);

impl StateDir {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(std::env::temp_dir().join(format!("tg-ctl-{}", crate::unique_suffix())))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tollgate <args> --state-dir S [--pin-dir P]`.
pub fn tg(state: &Path, pins: &Path, args: &[&str]) -> Output {
    Command::new(tollgate_bin())
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--pin-dir")
        .arg(pins)
        .output()
        .expect("tollgate runs")
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "tollgate failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The audit log's lines as JSON.
pub fn audit(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}
