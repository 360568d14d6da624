//! `[kernel]`: program types an operator switches off (a kernel that lacks
//! one, a distribution that forbids one, or a test simulating either). The
//! agent then neither loads nor attaches programs of that type, removes
//! links an earlier run pinned for them, and says in its log and in
//! `tollgate check --config` what stops working. Network accounting
//! (`cgroup_skb`) is the product's core and cannot be switched off.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// A BPF program type Tollgate uses, named as the kernel names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramType {
    /// cgroup_skb ingress/egress: per-pod bytes and packets (required).
    CgroupSkb,
    /// cgroup connect4/6 and sendmsg4/6: connection events and the EPERM of
    /// quarantines and deny policies.
    CgroupSockAddr,
    /// sys_enter/sys_exit raw tracepoints: shared-storage accounting.
    RawTracepoint,
    /// tc (tcx or clsact) on pod host-side interfaces: per-interface
    /// counts and the interface drop of quarantines.
    SchedCls,
}

impl ProgramType {
    pub const ALL: [ProgramType; 4] = [
        ProgramType::CgroupSkb,
        ProgramType::CgroupSockAddr,
        ProgramType::RawTracepoint,
        ProgramType::SchedCls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CgroupSkb => "cgroup_skb",
            Self::CgroupSockAddr => "cgroup_sock_addr",
            Self::RawTracepoint => "raw_tracepoint",
            Self::SchedCls => "sched_cls",
        }
    }

    /// What the agent loses without this program type.
    pub fn what_is_off(self) -> &'static str {
        match self {
            Self::CgroupSkb => "everything (required)",
            Self::CgroupSockAddr => {
                "connection events (connects, new peers) and the immediate EPERM of quarantines and deny policies (their packets are still dropped)"
            }
            Self::RawTracepoint => "shared-storage accounting",
            Self::SchedCls => {
                "per-interface counts and the interface drop of quarantines (the cgroup drop still holds)"
            }
        }
    }
}

impl std::fmt::Display for ProgramType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[kernel]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelConfig {
    /// Program types not to load or attach (`cgroup_sock_addr`,
    /// `raw_tracepoint`, `sched_cls`).
    pub disable: Vec<ProgramType>,
}

impl KernelConfig {
    pub fn disabled(&self, t: ProgramType) -> bool {
        self.disable.contains(&t)
    }

    /// (key, value, why) when the section is invalid.
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        if self.disabled(ProgramType::CgroupSkb) {
            return Err((
                "kernel.disable",
                "cgroup_skb".into(),
                "cgroup_skb is required (it is the network accounting); remove it from the list"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Logs one warning per disabled type, naming what stops working.
    pub fn log(&self) {
        for t in &self.disable {
            tracing::warn!(program_type = %t, off = t.what_is_off(), "program type disabled by kernel.disable");
        }
    }
}

/// Rows for `tollgate check --config`: each disabled type as an
/// unavailable optional feature, saying what is off.
pub fn check_rows(cfg: &KernelConfig) -> Vec<crate::check::Probe> {
    cfg.disable
        .iter()
        .map(|t| crate::check::Probe {
            feature: format!("{t} programs (kernel.disable)"),
            available: false,
            required: false,
            used_for: format!("disabled by config; off: {}", t.what_is_off()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_refuses_unknown_and_required() {
        let c: KernelConfig =
            toml::from_str("disable = [\"cgroup_sock_addr\", \"sched_cls\"]").unwrap();
        assert!(c.disabled(ProgramType::CgroupSockAddr));
        assert!(c.disabled(ProgramType::SchedCls));
        assert!(!c.disabled(ProgramType::RawTracepoint));
        assert!(c.validate().is_ok());
        let e = toml::from_str::<KernelConfig>("disable = [\"kprobe\"]").unwrap_err();
        assert!(e.to_string().contains("cgroup_sock_addr"), "{e}");
        let c: KernelConfig = toml::from_str("disable = [\"cgroup_skb\"]").unwrap();
        let (key, _, why) = c.validate().unwrap_err();
        assert_eq!(key, "kernel.disable");
        assert!(why.contains("required"));
    }
}
