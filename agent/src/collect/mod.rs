//! Drains the kernel maps every tick (batch lookups) into a per-cgroup
//! table of totals and rates, and decodes connection events.

mod snapshot;

pub use snapshot::{CgroupRow, Counts, Destination, DirCounts, EventRow, Rates, Snapshot};

use std::{
    collections::{HashMap, VecDeque},
    io,
    time::{Instant, SystemTime},
};

use tollgate_ebpf::{CGROUP_OVERFLOW, CgroupStats, Counter, FlowStats, PeerKey, proto_name};

use crate::{
    ebpf::{PinDir, PinnedMaps},
    inventory::Inventory,
};

/// How the maps are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainMode {
    /// BPF_MAP_LOOKUP_BATCH (Linux 5.6): one syscall per few hundred entries.
    Batch,
    /// get_next_key + lookup per entry: the fallback.
    PerKey,
}

/// Destinations kept per cgroup in a snapshot (largest first).
pub const TOP_DESTINATIONS: usize = 32;
/// Connection events kept for display.
const RECENT_EVENTS: usize = 1024;

pub struct Collector {
    maps: PinnedMaps,
    mode: DrainMode,
    inventory: Inventory,
    /// Delete the kernel counters of cgroups the inventory forgot (the
    /// agent does; a read-only `top` does not).
    delete_forgotten: bool,
    prev: HashMap<u64, CgroupStats>,
    prev_at: Option<Instant>,
    events: VecDeque<EventRow>,
    /// Highest flow-eviction estimate seen (the estimate can dip while
    /// entries are created during a drain).
    evictions: u64,
}

impl Collector {
    pub fn open(pins: &PinDir, inventory: Inventory) -> Result<Self, crate::ebpf::DataplaneError> {
        let maps = PinnedMaps::open(pins)?;
        let mode = if maps.cgroup_stats_batch().is_ok() {
            DrainMode::Batch
        } else {
            tracing::warn!("kernel lacks batch map lookups (Linux 5.6); draining per key");
            DrainMode::PerKey
        };
        Ok(Self {
            maps,
            mode,
            inventory,
            delete_forgotten: false,
            prev: HashMap::new(),
            prev_at: None,
            events: VecDeque::new(),
            evictions: 0,
        })
    }

    pub fn mode(&self) -> DrainMode {
        self.mode
    }

    pub fn set_mode(&mut self, mode: DrainMode) {
        self.mode = mode;
    }

    /// Makes the collector delete the kernel counters of cgroups that were
    /// removed longer than the grace period ago, so the map does not fill
    /// with dead cgroups. Only the agent (the map's owner) does this.
    pub fn delete_forgotten(&mut self, yes: bool) {
        self.delete_forgotten = yes;
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Reads the cgroup counters only (what the benchmark times).
    pub fn read_cgroups(&self) -> io::Result<Vec<(u64, CgroupStats)>> {
        match self.mode {
            DrainMode::Batch => self.maps.cgroup_stats_batch(),
            DrainMode::PerKey => self.maps.cgroup_stats_per_key(),
        }
    }

    fn read_flows(&self) -> io::Result<Vec<(PeerKey, FlowStats)>> {
        match self.mode {
            DrainMode::Batch => self.maps.flows_batch(),
            DrainMode::PerKey => self.maps.flows_per_key(),
        }
    }

    /// One collection pass: drains maps and events, computes rates since
    /// the previous pass, resolves cgroup paths.
    pub fn tick(&mut self) -> io::Result<Snapshot> {
        let now = Instant::now();
        let cgroups = self.read_cgroups()?;
        let flows = self.read_flows()?;
        let counters = self.maps.counters()?;
        for e in self.maps.drain_events(usize::MAX) {
            if self.events.len() == RECENT_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(EventRow::from(&e));
        }
        // New ids make the inventory rescan the tree, so a new cgroup is
        // named in the tick that first sees its traffic.
        let ids: Vec<u64> = cgroups.iter().map(|(id, _)| *id).collect();
        let forgotten = self.inventory.refresh(&ids, now);
        let mut cgroups = cgroups;
        if !forgotten.is_empty() {
            cgroups.retain(|(id, _)| !forgotten.contains(id));
            for id in &forgotten {
                self.prev.remove(id);
                if self.delete_forgotten
                    && let Err(e) = self.maps.cgroup_stats.remove(id)
                {
                    tracing::debug!(cgroup_id = id, error = %e, "deleting counters of a forgotten cgroup");
                }
            }
        }
        let dt = self.prev_at.map(|t| now.duration_since(t).as_secs_f64());
        let mut by_cgroup: HashMap<u64, Vec<(PeerKey, FlowStats)>> = HashMap::new();
        for (k, v) in &flows {
            by_cgroup.entry(k.cgroup_id).or_default().push((*k, *v));
        }
        let mut rows: Vec<CgroupRow> = cgroups
            .iter()
            .filter(|(id, s)| *id != CGROUP_OVERFLOW || *s != CgroupStats::default())
            .map(|(id, s)| {
                let rates = match (dt, self.prev.get(id)) {
                    (Some(dt), Some(p)) if dt > 0.0 => Rates::between(p, s, dt),
                    _ => Rates::default(),
                };
                let mut dests = by_cgroup.remove(id).unwrap_or_default();
                dests.sort_by_key(|(_, f)| std::cmp::Reverse(f.tx.bytes + f.rx.bytes));
                dests.truncate(TOP_DESTINATIONS);
                let known = self.inventory.get(*id);
                let mut row = CgroupRow {
                    cgroup_id: *id,
                    path: if *id == CGROUP_OVERFLOW {
                        Some("(overflow: map full)".into())
                    } else {
                        known.and_then(|k| k.path).map(str::to_owned)
                    },
                    egress: DirCounts::from(&s.egress),
                    ingress: DirCounts::from(&s.ingress),
                    connects: s.connects,
                    new_peers: s.new_peers,
                    malformed: s.malformed,
                    rates,
                    destinations: dests.iter().map(|(k, f)| Destination::new(k, f)).collect(),
                    ..CgroupRow::default()
                };
                if let Some(k) = known {
                    row.set_identity(k.identity);
                    row.gone = k.gone;
                }
                row
            })
            .collect();
        rows.sort_by(|a, b| {
            b.rates
                .egress_bytes_per_s()
                .total_cmp(&a.rates.egress_bytes_per_s())
                .then(b.egress.total_bytes().cmp(&a.egress.total_bytes()))
        });
        let created = counters[Counter::FlowsCreated as usize];
        let deleted = counters[Counter::FlowsDeletedByAgent as usize];
        let est = created
            .saturating_sub(deleted)
            .saturating_sub(flows.len() as u64);
        self.evictions = self.evictions.max(est);
        let mut named: Vec<(String, u64)> = Counter::ALL
            .iter()
            .map(|c| (c.name().to_owned(), counters[*c as usize]))
            .collect();
        named.push(("flow_evictions".into(), self.evictions));
        named.push(("flows_live".into(), flows.len() as u64));
        self.prev = cgroups.into_iter().collect();
        self.prev_at = Some(now);
        Ok(Snapshot {
            taken_at: SystemTime::now(),
            drain_mode: format!("{:?}", self.mode).to_lowercase(),
            cgroups: rows,
            events: self.events.iter().cloned().collect(),
            counters: named.into_iter().collect(),
        })
    }
}

impl Destination {
    fn new(k: &PeerKey, f: &FlowStats) -> Self {
        Self {
            addr: k.ip().to_string(),
            port: k.port,
            proto: proto_name(k.proto).to_owned(),
            tx_bytes: f.tx.bytes,
            tx_packets: f.tx.packets,
            rx_bytes: f.rx.bytes,
            rx_packets: f.rx.packets,
        }
    }
}
