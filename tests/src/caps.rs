//! Linux capabilities for the least-privilege tests: the agent's minimal
//! set (`tollgate::caps::REQUIRED`, which the DaemonSet, the systemd unit
//! and the capsh tests are checked against) and a `capsh` wrapper that runs
//! the agent as root with nothing else, as a container with `drop: ALL`
//! does.

use std::path::Path;

use crate::cmd::{Error, Result};

/// What `tollgate run` needs (the agent's own definition), as numbers.
pub fn agent_caps() -> Vec<u32> {
    tollgate::caps::REQUIRED.iter().map(|c| c.0).collect()
}

/// Bit mask of capability numbers.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1u64 << c)
}

/// The highest capability number this kernel knows.
pub fn last_cap() -> Result<u32> {
    let path = "/proc/sys/kernel/cap_last_cap";
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.trim()
        .parse()
        .map_err(|e| Error::Invalid(format!("{path}: {text:?}: {e}")))
}

/// `capsh --drop=<every capability but keep> --no-new-privs
/// --shell=<program> --`: capsh shrinks the bounding set, sets
/// no_new_privs (the DaemonSet's `allowPrivilegeEscalation: false`, the
/// unit's `NoNewPrivileges=yes`) and execs `program` with the arguments
/// that follow. A root process's permitted and effective sets after exec
/// are its bounding set, so `program` runs as root holding exactly `keep`.
pub fn capsh_wrapper(keep: &[u32], program: &Path) -> Result<Vec<String>> {
    let drop: Vec<String> = (0..=last_cap()?)
        .filter(|c| !keep.contains(c))
        .map(|c| c.to_string())
        .collect();
    Ok(vec![
        "capsh".into(),
        format!("--drop={}", drop.join(",")),
        "--no-new-privs".into(),
        format!("--shell={}", program.display()),
        "--".into(),
    ])
}

/// (effective, permitted, bounding) capability masks of a process.
pub fn of_pid(pid: u32) -> Result<(u64, u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| Error::Invalid(format!("{path}: no {name} line")))
    };
    Ok((field("CapEff:")?, field("CapPrm:")?, field("CapBnd:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_mask() {
        assert_eq!(mask(&agent_caps()), 0x0000_00c0_0000_1000);
    }

    #[test]
    fn wrapper_drops_all_but_keep() {
        let w = capsh_wrapper(&[12, 39], Path::new("/bin/true")).unwrap();
        let drop = w[1].strip_prefix("--drop=").unwrap();
        assert!(drop.split(',').any(|c| c == "21"), "drops CAP_SYS_ADMIN");
        assert!(!drop.split(',').any(|c| c == "12" || c == "39"));
        assert_eq!(w[2], "--no-new-privs");
        assert_eq!(w[3], "--shell=/bin/true");
    }
}
