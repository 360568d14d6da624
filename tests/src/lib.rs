//! Privileged test harness for Tollgate.
//!
//! Tests build their own little data centre out of network namespaces and
//! cgroup v2 directories ("pods"), drive real traffic with the `tg-traffic`
//! binary, count it independently with nftables, and compare with what the
//! agent reports. Every resource is an RAII guard whose `Drop` never panics,
//! so a failing assertion still leaves the host clean.
//!
//! Addresses come only from the ranges in DESIGN.md ("Test network"):
//! 198.18.0.0/16 + 2001:db8:c::/48 for the cluster, 203.0.113.0/24 +
//! 2001:db8:e::/48 for the internet, and only inside namespaces we made.
#![forbid(unsafe_code)]

pub mod agent;
pub mod alerting;
pub mod caps;
pub mod cgroup;
pub mod cmd;
pub mod control;
pub mod deploy;
pub mod http;
pub mod iodine;
pub mod kube_api;
pub mod mountns;
pub mod netns;
pub mod nft;
pub mod pod;
pub mod pool;
pub mod privileged;
pub mod progrun;
pub mod raw_http;
pub mod rawframe;
pub mod servers;
pub mod storage;
pub mod top;
pub mod topology;
pub mod traffic;

pub use cmd::{Error, Result};

use std::sync::atomic::{AtomicU32, Ordering};

/// `<pid>-<n>`: unique across the test threads of one process (the counter)
/// and across test processes running at once (the pid), so parallel tests
/// never share a namespace, cgroup or pin directory.
pub fn unique_suffix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}
