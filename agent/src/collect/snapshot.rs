//! What one collection pass produces: the data behind `tollgate top`, its
//! JSON output and the agent's /v1/snapshot endpoint.

use std::{collections::BTreeMap, time::SystemTime};

use serde::{Deserialize, Serialize};
use tollgate_ebpf::{
    ByteCount, CONN_KIND_CONNECT, CgroupStats, ConnEvent, ScopeCounts, proto_name,
};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub bytes: u64,
    pub packets: u64,
}

impl From<&ByteCount> for Counts {
    fn from(c: &ByteCount) -> Self {
        Self {
            bytes: c.bytes,
            packets: c.packets,
        }
    }
}

/// Cumulative counters of one direction, by scope.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirCounts {
    pub internal: Counts,
    pub external: Counts,
}

impl From<&ScopeCounts> for DirCounts {
    fn from(s: &ScopeCounts) -> Self {
        Self {
            internal: Counts::from(&s.internal),
            external: Counts::from(&s.external),
        }
    }
}

impl DirCounts {
    pub fn total_bytes(&self) -> u64 {
        self.internal.bytes + self.external.bytes
    }
}

/// Per-second rates since the previous pass.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Rates {
    pub egress_internal_bytes: f64,
    pub egress_external_bytes: f64,
    pub ingress_bytes: f64,
    pub connects: f64,
    /// Bytes written to / read from watched storage per second.
    #[serde(default)]
    pub storage_write_bytes: f64,
    #[serde(default)]
    pub storage_read_bytes: f64,
}

impl Rates {
    pub fn between(prev: &CgroupStats, cur: &CgroupStats, dt: f64) -> Self {
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
        Self {
            egress_internal_bytes: d(prev.egress.internal.bytes, cur.egress.internal.bytes),
            egress_external_bytes: d(prev.egress.external.bytes, cur.egress.external.bytes),
            ingress_bytes: d(
                prev.ingress.internal.bytes + prev.ingress.external.bytes,
                cur.ingress.internal.bytes + cur.ingress.external.bytes,
            ),
            connects: d(prev.connects, cur.connects),
            storage_write_bytes: 0.0,
            storage_read_bytes: 0.0,
        }
    }

    pub fn egress_bytes_per_s(&self) -> f64 {
        self.egress_internal_bytes + self.egress_external_bytes
    }
}

/// One remote peer of a cgroup (from the flow table).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Destination {
    pub addr: String,
    pub port: u16,
    pub proto: String,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CgroupRow {
    pub cgroup_id: u64,
    /// Path relative to the cgroup v2 mount; None once the cgroup is gone.
    pub path: Option<String>,
    pub egress: DirCounts,
    pub ingress: DirCounts,
    pub connects: u64,
    pub new_peers: u64,
    pub malformed: u64,
    /// Connection events lost to a full ring buffer (counted, not silent).
    pub events_dropped: u64,
    /// Packets dropped because the cgroup is quarantined.
    #[serde(default)]
    pub quarantine_dropped: Counts,
    /// connect()/sendmsg() calls refused by quarantine.
    #[serde(default)]
    pub connects_denied: u64,
    pub rates: Rates,
    pub destinations: Vec<Destination>,
    /// Reads and writes on watched storage, per mount (device).
    #[serde(default)]
    pub storage: Vec<StorageUse>,
    /// Sums over `storage`.
    #[serde(default)]
    pub storage_written_bytes: u64,
    #[serde(default)]
    pub storage_read_bytes: u64,
    /// Bytes sent to external destinations per byte read from watched
    /// storage (None before the first storage read). Near or above 1 with
    /// large reads is the compute-to-data alarm: the pod ships out what
    /// it reads.
    #[serde(default)]
    pub out_per_storage_read: Option<f64>,
    /// Who the cgroup is (see inventory::Identity): "pod", "container",
    /// "unit" or "cgroup"; None when the inventory does not know it.
    #[serde(default)]
    pub kind: Option<String>,
    /// Kubernetes namespace, systemd slice or container group.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Pod name, systemd unit or short container id.
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// Container name (Kubernetes) or short id.
    #[serde(default)]
    pub container: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub runtime: Option<String>,
    /// Workload class.
    #[serde(default)]
    pub class: Option<String>,
    /// The cgroup was removed: these are its last counts, kept for the
    /// inventory's grace period.
    #[serde(default)]
    pub gone: bool,
    /// DNS queries sent (cumulative, counted in the kernel on port 53).
    #[serde(default)]
    pub dns_queries: u64,
    /// Stratum JSON-RPC markers seen at the start of outbound TCP streams
    /// (cumulative).
    #[serde(default)]
    pub stratum_markers: u64,
    /// The class whose `network = "deny"` egress policy applies to this
    /// cgroup (set by the agent once the kernel enforces it).
    #[serde(default)]
    pub egress_policy: Option<String>,
    /// Calls refused and packets dropped by the egress policy, summed
    /// over destinations (details in the snapshot's `denied`).
    #[serde(default)]
    pub policy_denied_calls: u64,
    #[serde(default)]
    pub policy_dropped: Counts,
}

impl CgroupRow {
    /// Fills the identity fields.
    pub fn set_identity(&mut self, id: &crate::inventory::Identity) {
        self.kind = Some(id.kind.clone());
        self.namespace = id.namespace.clone();
        self.pod = id.pod.clone();
        self.pod_uid = id.pod_uid.clone();
        self.container = id.container.clone();
        self.container_id = id.container_id.clone();
        self.runtime = id.runtime.clone();
        self.class = Some(id.class.clone());
    }
}

/// Positive results of read or write calls: their sum and how many.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IoCounts {
    pub bytes: u64,
    pub calls: u64,
}

/// One cgroup's use of one watched device.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorageUse {
    /// `major:minor` of the file system.
    pub dev: String,
    /// Where it is (or was last seen) mounted; None if never seen.
    pub mount_point: Option<String>,
    pub fstype: Option<String>,
    pub written: IoCounts,
    pub read: IoCounts,
}

/// A mount whose device is in the kernel's filter.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchedMount {
    pub dev: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// Storage accounting as a whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorageSummary {
    /// "active", "disabled ...", "unavailable: <why>", or "unknown" when
    /// read from pins without an agent.
    pub status: String,
    /// Watched mounts (one per device).
    pub mounts: Vec<WatchedMount>,
}

/// A decoded connection event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRow {
    pub cgroup_id: u64,
    pub addr: String,
    pub port: u16,
    pub proto: String,
    /// "connect" or "sendmsg".
    pub kind: String,
    /// Kernel CLOCK_MONOTONIC_COARSE nanoseconds.
    pub ts_ns: u64,
}

impl From<&ConnEvent> for EventRow {
    fn from(e: &ConnEvent) -> Self {
        Self {
            cgroup_id: e.cgroup_id,
            addr: e.ip().to_string(),
            port: e.port,
            proto: proto_name(e.proto).to_owned(),
            kind: if e.kind == CONN_KIND_CONNECT {
                "connect"
            } else {
                "sendmsg"
            }
            .to_owned(),
            ts_ns: e.ts_ns,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    #[serde(with = "humantime_serde")]
    pub taken_at: SystemTime,
    /// "batch" or "perkey".
    pub drain_mode: String,
    /// Sorted by egress rate, then cumulative egress bytes.
    pub cgroups: Vec<CgroupRow>,
    /// Most recent connection events, oldest first.
    pub events: Vec<EventRow>,
    /// Kernel health counters by name.
    pub counters: BTreeMap<String, u64>,
    #[serde(default)]
    pub storage: StorageSummary,
    /// DNS query names sampled by the kernel (bounded rate) since the
    /// previous pass.
    #[serde(default)]
    pub dns_samples: Vec<DnsSample>,
    /// Stratum markers matched by the kernel since the previous pass.
    #[serde(default)]
    pub stratum_hits: Vec<StratumHit>,
    /// The most recent DNS samples and stratum hits over many passes,
    /// oldest first, for display (`top`) and tests; detectors use the
    /// per-pass lists above.
    #[serde(default)]
    pub recent_dns_samples: Vec<DnsSample>,
    #[serde(default)]
    pub recent_stratum_hits: Vec<StratumHit>,
    /// Pods' host-side interfaces (tc), filled by the agent.
    #[serde(default)]
    pub interfaces: Vec<crate::podtc::IfaceRow>,
    /// Destinations refused by egress policies, filled by the agent.
    #[serde(default)]
    pub denied: Vec<DeniedRow>,
}

impl Snapshot {
    /// A pass that saw nothing (no cgroups, events, counters or storage),
    /// taken at `taken_at`, in batch mode: the base a test fills in.
    pub fn empty(taken_at: SystemTime) -> Self {
        Self {
            taken_at,
            drain_mode: "batch".into(),
            cgroups: Vec::new(),
            events: Vec::new(),
            counters: BTreeMap::new(),
            storage: StorageSummary::default(),
            dns_samples: Vec::new(),
            stratum_hits: Vec::new(),
            recent_dns_samples: Vec::new(),
            recent_stratum_hits: Vec::new(),
            interfaces: Vec::new(),
            denied: Vec::new(),
        }
    }
}

/// One DNS query name sampled by the kernel.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsSample {
    pub cgroup_id: u64,
    /// Dotted query name; bytes outside printable ASCII are escaped as
    /// `\DDD` (decimal, as in zone files), so a name is always one line.
    pub name: String,
    /// Query type (1 = A, 16 = TXT, 28 = AAAA, ...).
    pub qtype: u16,
    /// Kernel CLOCK_MONOTONIC_COARSE nanoseconds.
    pub ts_ns: u64,
}

/// A stratum JSON-RPC marker at the start of an outbound TCP stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StratumHit {
    pub cgroup_id: u64,
    /// The remote peer (pool) address and port.
    pub addr: String,
    pub port: u16,
    /// "mining.subscribe", "mining.authorize", "mining.submit" or "login".
    pub marker: String,
    /// Kernel CLOCK_MONOTONIC_COARSE nanoseconds.
    pub ts_ns: u64,
}

/// One (cgroup, destination) an egress policy refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeniedRow {
    pub cgroup_id: u64,
    pub addr: String,
    pub port: u16,
    pub proto: String,
    /// connect()/sendmsg() calls refused with EPERM.
    pub calls: u64,
    /// Packets dropped in the cgroup_skb egress hook.
    pub dropped: Counts,
}
