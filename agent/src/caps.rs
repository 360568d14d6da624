//! The Linux capabilities `tollgate run` needs, checked before anything
//! touches the kernel, so a container or unit started with too few gets one
//! clear error naming what is missing instead of a verifier log.
//!
//! The minimal set (proven by tests/tests/capabilities.rs, which runs the
//! agent with exactly these and with each one removed):
//! - CAP_BPF: create maps, load programs, pin them;
//! - CAP_NET_ADMIN: load and attach cgroup_skb and cgroup sock_addr
//!   programs (the kernel's "net admin" program types);
//! - CAP_PERFMON: the verifier allows pointer arithmetic on packet and map
//!   data only to perfmon-capable loaders, and the storage raw tracepoints
//!   use bpf_probe_read_kernel.
//!
//! Before Linux 5.8 (no CAP_BPF, CAP_PERFMON) CAP_SYS_ADMIN covered all of
//! it; it still does, so a process holding it passes.

/// (number, name) from linux/capability.h.
pub const REQUIRED: [(u32, &str); 3] =
    [(39, "CAP_BPF"), (12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON")];

const CAP_SYS_ADMIN: u32 = 21;

/// Set to 1 to skip the check and let the kernel decide (for a kernel or
/// security module that grants BPF by other means; the tests use it to show
/// the kernel refuses without each capability).
pub const SKIP_ENV: &str = "TOLLGATE_SKIP_CAPS_CHECK";

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error(
        "missing capabilities {}: `tollgate run` needs CAP_BPF (maps, programs), CAP_NET_ADMIN (cgroup network programs) and CAP_PERFMON (verifier pointer arithmetic, kernel reads). Run it as root with them: Kubernetes securityContext.capabilities.add [BPF, NET_ADMIN, PERFMON] (deploy/daemonset.yaml), systemd AmbientCapabilities= (deploy/systemd/tollgate.service)",
        .0.join(", ")
    )]
    Missing(Vec<&'static str>),
}

/// The effective capability mask from `/proc/self/status` text ("CapEff:
/// <hex>"); None if the line is absent or malformed.
pub fn effective_in(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// The required capabilities missing from `effective`.
pub fn missing_from(effective: u64) -> Vec<&'static str> {
    let has = |c: u32| effective & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    REQUIRED
        .iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| *n)
        .collect()
}

/// Checks this process (unless `TOLLGATE_SKIP_CAPS_CHECK=1`). If
/// `/proc/self/status` cannot be read or parsed the check passes: the
/// kernel still refuses what is not allowed.
pub fn check() -> Result<(), CapsError> {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let Some(eff) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(effective_in)
    else {
        return Ok(());
    };
    let missing = missing_from(eff);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective() {
        let s = "Name:\tx\nCapPrm:\t0000000000000000\nCapEff:\t000000c000001000\n";
        assert_eq!(effective_in(s), Some(0xc0_0000_1000));
        assert_eq!(effective_in("Name: x\n"), None);
    }

    #[test]
    fn names_what_is_missing() {
        assert!(missing_from(0xc0_0000_1000).is_empty());
        assert_eq!(missing_from(0x80_0000_1000), ["CAP_PERFMON"]);
        assert_eq!(missing_from(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        // CAP_SYS_ADMIN alone: pre-5.8 kernels, and it still implies all three.
        assert!(missing_from(1 << 21).is_empty());
        let e = CapsError::Missing(missing_from(0x40_0000_1000)).to_string();
        assert!(e.contains("missing capabilities CAP_BPF:"), "{e}");
    }
}
