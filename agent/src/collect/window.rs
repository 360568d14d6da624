//! Per-pod windows of features: what the detectors see. The collector
//! turns cumulative kernel counters into one [`WindowSample`] per pod per
//! window (`detect.window`, default 10 s). Samples carry their own
//! timestamps, so recorded windows (JSON lines) replay through the
//! baselines and detectors without a clock.

use std::{net::IpAddr, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::detect::Subject;

/// Traffic with one remote peer during one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerWindow {
    pub addr: IpAddr,
    pub port: u16,
    /// "tcp", "udp", "icmp", ...
    pub proto: String,
    /// The peer is outside the cluster CIDRs.
    pub external: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    /// When the flow was first seen (kernel flow table), as wall time.
    #[serde(default, with = "humantime_serde")]
    pub first_seen: Option<SystemTime>,
}

/// Features of one pod over one window. Byte and count fields are deltas
/// over the window, not cumulative totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Features {
    pub egress_external_bytes: u64,
    pub egress_external_packets: u64,
    pub egress_internal_bytes: u64,
    pub egress_internal_packets: u64,
    pub ingress_bytes: u64,
    /// connect()/sendmsg() to a new (peer) pair, from connection events.
    pub new_connections: u64,
    /// Distinct remote peers with traffic in the window.
    pub distinct_destinations: u64,
    /// Destinations the pod's class has never used, and the bytes sent to
    /// them. Filled by the baseline stage (it owns the class's
    /// destination set), zero when the sample leaves the collector.
    pub new_class_destinations: u64,
    pub new_class_destination_bytes: u64,
    pub storage_write_bytes: u64,
    pub storage_read_bytes: u64,
    /// DNS queries sent (parsed in the kernel on port 53).
    pub dns_queries: u64,
    /// Mean query-name length in bytes, and mean Shannon entropy of the
    /// names' labels in bits per character, over the sampled names.
    pub dns_mean_name_len: f64,
    pub dns_label_entropy: f64,
    /// CPU time used in the window (cgroup cpu.stat usage_usec), seconds.
    pub cpu_seconds: f64,
    /// The cgroup's CPU limit in cores (cpu.max), None when unlimited.
    pub cpu_limit_cores: Option<f64>,
    /// Stratum JSON-RPC markers seen at the start of outbound TCP streams.
    pub stratum_markers: u64,
    /// Bytes the pod's network interface sent (tc on its host-side veth)
    /// beyond what its cgroup hooks counted to non-loopback peers: frames
    /// that bypass the socket layer (AF_PACKET, raw frames) or come from
    /// processes of the pod's namespace outside its cgroup. Already
    /// included in `egress_external_bytes` (their peer is unknown, so they
    /// are treated as leaving the cluster).
    pub unattributed_egress_bytes: u64,
}

/// One pod over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSample {
    pub subject: Subject,
    #[serde(with = "humantime_serde")]
    pub start: SystemTime,
    #[serde(with = "humantime_serde")]
    pub end: SystemTime,
    pub features: Features,
    /// Peers with traffic in the window, largest tx first (bounded).
    #[serde(default)]
    pub peers: Vec<PeerWindow>,
}
