//! Deciding whether a privileged test may run.
//!
//! Developers run `cargo test` unprivileged and should see a clear SKIP line;
//! CI sets `TOLLGATE_REQUIRE_PRIVILEGED=1` so that a skip there (lost root,
//! missing tool) fails loudly instead of passing vacuously.

use crate::cmd::which;

/// Env var that turns every skip into a panic.
pub const REQUIRE_ENV: &str = "TOLLGATE_REQUIRE_PRIVILEGED";

/// Tools every privileged test needs; more can be asked for per test.
pub const BASE_TOOLS: &[&str] = &["ip", "kill", "sh"];

/// Effective uid from `/proc/self/status` ("Uid: real effective saved fs").
/// Read from procfs because `geteuid` would need `unsafe` or another crate.
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective_uid(&status)
}

fn parse_effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The running test's name: libtest names each test thread after its test.
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

fn require_privileged() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Skips (prints why, returns false) or, under `TOLLGATE_REQUIRE_PRIVILEGED=1`,
/// panics with the same reason.
pub fn skip(reason: &str) -> bool {
    let test = test_name();
    if require_privileged() {
        panic!("{test}: {reason}, and {REQUIRE_ENV}=1 forbids skipping");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// True when the test may run as root; otherwise see [`skip`].
pub fn require_root() -> bool {
    match effective_uid() {
        Some(0) => true,
        Some(uid) => skip(&format!(
            "needs root (euid {uid}); run as root or via `cargo xtask test`"
        )),
        None => skip("needs root (cannot read euid from /proc/self/status)"),
    }
}

/// True when root and every tool in [`BASE_TOOLS`] and `extra` is installed.
pub fn require(extra: &[&str]) -> bool {
    if !require_root() {
        return false;
    }
    let missing: Vec<&str> = BASE_TOOLS
        .iter()
        .chain(extra)
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        true
    } else {
        skip(&format!(
            "needs {} (install with `cargo xtask setup`)",
            missing.join(", ")
        ))
    }
}

/// First line of every privileged test: returns from the test (a skip) unless
/// it runs as root with the tools it names, e.g. `privileged!("nft");`.
#[macro_export]
macro_rules! privileged {
    ($($tool:expr),* $(,)?) => {
        if !$crate::privileged::require(&[$($tool),*]) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective_not_real_uid() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name: x\n"), None);
    }

    #[test]
    fn reads_own_euid() {
        assert!(effective_uid().is_some());
    }
}
