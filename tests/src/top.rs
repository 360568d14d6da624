//! Typed view of `tollgate top --once --format json`.
//!
//! Every struct is `#[serde(default)]` and unknown fields are ignored: the
//! agent's JSON may grow fields (or still lack some while it is being built)
//! without breaking tests that do not look at them. A missing field reads as
//! zero/empty, which an exact-count assertion will then catch.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Top {
    pub cgroups: Vec<CgroupRow>,
    pub events: Vec<Event>,
    pub counters: Counters,
    pub storage: StorageSummary,
    pub recent_dns_samples: Vec<DnsSample>,
    pub recent_stratum_hits: Vec<StratumHit>,
}

/// A DNS query name sampled by the kernel.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DnsSample {
    pub cgroup_id: u64,
    pub name: String,
    pub qtype: u16,
    pub ts_ns: u64,
}

/// A stratum marker at the start of an outbound TCP stream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StratumHit {
    pub cgroup_id: u64,
    pub addr: String,
    pub port: u16,
    pub marker: String,
    pub ts_ns: u64,
}

/// Storage accounting status and the watched mounts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StorageSummary {
    /// "active", "unavailable: ...", ...
    pub status: String,
    pub mounts: Vec<WatchedMount>,
}

impl StorageSummary {
    pub fn watches(&self, mount_point: &std::path::Path) -> bool {
        self.mounts
            .iter()
            .any(|m| std::path::Path::new(&m.mount_point) == mount_point)
    }
}

/// A mount whose device the kernel counts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct WatchedMount {
    /// `major:minor`.
    pub dev: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// One cgroup's reads and writes on one device.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StorageUse {
    /// `major:minor`.
    pub dev: String,
    pub mount_point: Option<String>,
    pub fstype: Option<String>,
    pub written: Io,
    pub read: Io,
}

/// Sum of positive read/write results and the number of such calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Io {
    pub bytes: u64,
    pub calls: u64,
}

impl Top {
    /// Parses the JSON text printed by `tollgate top`.
    pub fn parse(json: &str) -> serde_json::Result<Top> {
        serde_json::from_str(json)
    }

    /// The row for cgroup `id` (see `cgroup::TestCgroup::id`), if present.
    /// The row of cgroup `id`, or an all-zero row if it has none yet.
    pub fn row(&self, id: u64) -> CgroupRow {
        self.find_cgroup(id).cloned().unwrap_or_default()
    }

    pub fn find_cgroup(&self, id: u64) -> Option<&CgroupRow> {
        self.cgroups.iter().find(|c| c.cgroup_id == id)
    }

    /// Connection events attributed to cgroup `id`, in report order.
    pub fn events_for(&self, id: u64) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.cgroup_id == id)
    }
}

/// Per-cgroup totals.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct CgroupRow {
    pub cgroup_id: u64,
    /// Relative to the cgroup v2 mount, with a leading `/`.
    pub path: Option<String>,
    pub egress: Direction,
    pub ingress: Direction,
    pub connects: u64,
    pub new_peers: u64,
    pub malformed: u64,
    pub events_dropped: u64,
    pub quarantine_dropped: Count,
    pub connects_denied: u64,
    pub destinations: Vec<Destination>,
    pub storage: Vec<StorageUse>,
    pub storage_written_bytes: u64,
    pub storage_read_bytes: u64,
    pub out_per_storage_read: Option<f64>,
    /// Identity from the agent's inventory ("pod", "container", "unit",
    /// "cgroup").
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub container: Option<String>,
    pub container_id: Option<String>,
    pub runtime: Option<String>,
    pub class: Option<String>,
    /// Removed cgroup whose last counts are still reported.
    pub gone: bool,
    pub dns_queries: u64,
    pub stratum_markers: u64,
}

impl CgroupRow {
    /// This cgroup's use of the device `dev` (`major:minor`), zero if none.
    pub fn storage_on(&self, dev: &str) -> StorageUse {
        self.storage
            .iter()
            .find(|u| u.dev == dev)
            .cloned()
            .unwrap_or_default()
    }

    /// The per-peer row for `addr`:`port`/`proto` (proto `"tcp"`/`"udp"`).
    pub fn destination(&self, addr: IpAddr, port: u16, proto: &str) -> Option<&Destination> {
        self.destinations
            .iter()
            .find(|d| d.ip() == Some(addr) && d.port == port && d.proto == proto)
    }
}

/// One direction split by where the peer is (cluster CIDRs vs the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Direction {
    pub internal: Count,
    pub external: Count,
}

impl Direction {
    pub fn total(&self) -> Count {
        Count {
            bytes: self.internal.bytes + self.external.bytes,
            packets: self.internal.packets + self.external.packets,
        }
    }
}

/// L3 bytes and packets, as cgroup_skb sees them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Count {
    pub bytes: u64,
    pub packets: u64,
}

/// Per-peer flow totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Destination {
    pub addr: String,
    pub port: u16,
    pub proto: String,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}

impl Destination {
    /// `addr` parsed; kept as text in the struct so an odd value is shown
    /// in assertion output rather than failing the whole parse.
    pub fn ip(&self) -> Option<IpAddr> {
        self.addr.parse().ok()
    }
}

/// A connect()/sendmsg() event from the sock_addr hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Event {
    pub cgroup_id: u64,
    pub addr: String,
    pub port: u16,
    pub proto: String,
    /// `"connect"` or `"sendmsg"`.
    pub kind: String,
}

impl Event {
    pub fn ip(&self) -> Option<IpAddr> {
        self.addr.parse().ok()
    }
}

/// Global dataplane counters; the ones tests do not name are kept in `other`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub ringbuf_drops: u64,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "cgroups": [{
        "cgroup_id": 42, "path": "/tollgate-test/a-1-0",
        "egress": {"internal": {"bytes": 10, "packets": 1}, "external": {"bytes": 1280, "packets": 10}},
        "ingress": {"internal": {"bytes": 0, "packets": 0}},
        "connects": 2, "new_peers": 1, "malformed": 0, "future_field": true,
        "destinations": [{"addr": "203.0.113.1", "port": 9000, "proto": "udp",
          "tx_bytes": 1280, "tx_packets": 10, "rx_bytes": 0, "rx_packets": 0}]
      }],
      "events": [{"cgroup_id": 42, "addr": "2001:db8:e::1", "port": 443, "proto": "tcp", "kind": "connect"}],
      "counters": {"ringbuf_drops": 3, "flows_full": 0}
    }"#;

    #[test]
    fn parses_schema_tolerantly() {
        let top = Top::parse(SAMPLE).unwrap();
        let row = top.find_cgroup(42).unwrap();
        assert_eq!(
            row.egress.external,
            Count {
                bytes: 1280,
                packets: 10
            }
        );
        assert_eq!(row.egress.total().packets, 11);
        // Missing "external" in ingress reads as zero.
        assert_eq!(row.ingress.external, Count::default());
        let d = row
            .destination("203.0.113.1".parse().unwrap(), 9000, "udp")
            .unwrap();
        assert_eq!(d.tx_packets, 10);
        assert!(
            row.destination("203.0.113.1".parse().unwrap(), 9000, "tcp")
                .is_none()
        );
        assert_eq!(top.events_for(42).count(), 1);
        assert_eq!(top.counters.ringbuf_drops, 3);
        assert_eq!(top.counters.other["flows_full"], 0);
        assert!(top.find_cgroup(7).is_none());
        assert_eq!(Top::parse("{}").unwrap(), Top::default());
    }
}
