//! Drains the kernel maps every tick (batch lookups) into a per-cgroup
//! table of totals and rates, and decodes connection events.

mod signals;
mod snapshot;
mod window;
pub mod windower;

pub use signals::decode_name;
pub use snapshot::DeniedRow;
pub use snapshot::{
    CgroupRow, Counts, Destination, DirCounts, DnsSample, EventRow, IoCounts, Rates, Snapshot,
    StorageSummary, StorageUse, StratumHit, WatchedMount,
};
pub use window::{Features, PeerWindow, WindowSample};
pub use windower::Windower;

use std::{
    collections::{HashMap, VecDeque},
    io,
    path::PathBuf,
    time::{Instant, SystemTime},
};

use tollgate_ebpf::{
    CGROUP_OVERFLOW, CgroupStats, Counter, FlowStats, IoCount, PeerKey, STORAGE_WRITE, StorageKey,
    proto_name,
};

use crate::{
    ebpf::{PinDir, PinnedMaps, signals::SignalMaps},
    inventory::Inventory,
    storage::{self, Mount},
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
    /// Overflow warnings, at most one per [`WARN_INTERVAL`].
    warned: Warned,
    /// Mount table followed for storage names.
    mountinfo: PathBuf,
    mounts: Vec<Mount>,
    /// Every device ever seen in the mount table, by dev: names devices
    /// that were unmounted after use.
    known_devs: HashMap<u32, Mount>,
    storage_status: String,
    /// (written, read) bytes per cgroup at the previous pass.
    prev_storage: HashMap<u64, (u64, u64)>,
    /// DNS-sample and stratum ring buffers (None with pins of a build
    /// that lacks them).
    signals: Option<SignalMaps>,
    /// DNS samples whose name did not decode in userspace (should stay 0:
    /// the kernel checks the label walk).
    dns_garbled: u64,
    recent_dns: VecDeque<DnsSample>,
    recent_stratum: VecDeque<StratumHit>,
}

/// How often a full map is logged while it stays full.
const WARN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Default)]
struct Warned {
    at: Option<Instant>,
    cgroup_full: u64,
    evictions: u64,
    ringbuf_drops: u64,
    storage_full: u64,
}

/// Overflow counters checked by [`Warned::check`].
struct Full {
    cgroup_full: u64,
    evictions: u64,
    ringbuf_drops: u64,
    storage_full: u64,
}

impl Warned {
    /// Logs growth of the overflow counters, once per interval.
    fn check(&mut self, now: Instant, full: Full) {
        let Full {
            cgroup_full,
            evictions,
            ringbuf_drops,
            storage_full,
        } = full;
        if self
            .at
            .is_some_and(|t| now.duration_since(t) < WARN_INTERVAL)
        {
            return;
        }
        let grew = cgroup_full > self.cgroup_full
            || evictions > self.evictions
            || ringbuf_drops > self.ringbuf_drops
            || storage_full > self.storage_full;
        if grew {
            tracing::warn!(
                cgroup_map_overflows = cgroup_full - self.cgroup_full,
                flow_evictions = evictions - self.evictions,
                ringbuf_drops = ringbuf_drops - self.ringbuf_drops,
                storage_overflows = storage_full - self.storage_full,
                "kernel maps are full: counts go to the overflow entries, flows are evicted, events are dropped (all counted); raise the [maps] sizes and storage.stats_entries"
            );
            self.at = Some(now);
        }
        (
            self.cgroup_full,
            self.evictions,
            self.ringbuf_drops,
            self.storage_full,
        ) = (cgroup_full, evictions, ringbuf_drops, storage_full);
    }
}

impl Collector {
    pub fn open(
        pins: &PinDir,
        inventory: Inventory,
        mountinfo: PathBuf,
    ) -> Result<Self, crate::ebpf::DataplaneError> {
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
            warned: Warned::default(),
            mountinfo,
            mounts: Vec::new(),
            known_devs: HashMap::new(),
            storage_status: "unknown".into(),
            prev_storage: HashMap::new(),
            signals: match SignalMaps::open(pins) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "DNS samples and stratum events unavailable");
                    None
                }
            },
            dns_garbled: 0,
            recent_dns: VecDeque::new(),
            recent_stratum: VecDeque::new(),
        })
    }

    /// What the agent says about storage accounting (shown in snapshots).
    pub fn set_storage_status(&mut self, status: String) {
        self.storage_status = status;
    }

    /// The mount table as of the last pass.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// Re-reads the mount table (kept as it was if unreadable).
    fn refresh_mounts(&mut self) {
        match storage::read_mountinfo(&self.mountinfo) {
            Ok(m) => {
                // Name each mounted device after its shortest mount point;
                // unmounted devices keep their last name.
                let mut current: HashMap<u32, &Mount> = HashMap::new();
                for mount in &m {
                    let e = current.entry(mount.dev).or_insert(mount);
                    if mount.mount_point.as_os_str().len() < e.mount_point.as_os_str().len() {
                        *e = mount;
                    }
                }
                for (dev, mount) in current {
                    self.known_devs.insert(dev, mount.clone());
                }
                self.mounts = m;
            }
            Err(e) => {
                tracing::warn!(path = %self.mountinfo.display(), error = %e, "cannot read mount table; storage names may be stale")
            }
        }
    }

    /// Storage counters grouped by cgroup.
    fn storage_by_cgroup(&self, rows: Vec<(StorageKey, IoCount)>) -> HashMap<u64, Vec<StorageUse>> {
        let mut by: HashMap<u64, Vec<StorageUse>> = HashMap::new();
        for (k, v) in rows {
            // The seeded overflow entries stay out of sight until used.
            if k.cgroup_id == CGROUP_OVERFLOW && v.calls == 0 {
                continue;
            }
            let uses = by.entry(k.cgroup_id).or_default();
            let dev = storage::dev_string(k.dev);
            let i = match uses.iter().position(|u| u.dev == dev) {
                Some(i) => i,
                None => {
                    let m = self.known_devs.get(&k.dev);
                    uses.push(StorageUse {
                        dev,
                        mount_point: m.map(|m| m.mount_point.display().to_string()),
                        fstype: m.map(|m| m.fstype.clone()),
                        ..StorageUse::default()
                    });
                    uses.len() - 1
                }
            };
            let c = IoCounts {
                bytes: v.bytes,
                calls: v.calls,
            };
            if k.dir == STORAGE_WRITE {
                uses[i].written = c;
            } else {
                uses[i].read = c;
            }
        }
        for uses in by.values_mut() {
            uses.sort_by(|a, b| a.dev.cmp(&b.dev));
        }
        by
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

    /// Reads the cgroup counters and flows, flow cache merged in.
    fn read_counts(&self) -> io::Result<crate::ebpf::Counts> {
        self.maps.counts(self.mode == DrainMode::Batch)
    }

    /// One collection pass: drains maps and events, computes rates since
    /// the previous pass, resolves cgroup paths.
    pub fn tick(&mut self) -> io::Result<Snapshot> {
        let now = Instant::now();
        self.refresh_mounts();
        let (cgroups, mut flows) = self.read_counts()?;
        let storage_rows = self.maps.storage_stats(self.mode == DrainMode::Batch)?;
        let storage_keys: Vec<StorageKey> = storage_rows.iter().map(|(k, _)| *k).collect();
        let mut storage = self.storage_by_cgroup(storage_rows);
        let watched: Vec<WatchedMount> = self
            .maps
            .storage_devs()
            .into_iter()
            .map(|(dev, _)| {
                let m = self.known_devs.get(&dev);
                WatchedMount {
                    dev: storage::dev_string(dev),
                    mount_point: m
                        .map(|m| m.mount_point.display().to_string())
                        .unwrap_or_default(),
                    fstype: m.map(|m| m.fstype.clone()).unwrap_or_default(),
                    source: m.map(|m| m.source.clone()).unwrap_or_default(),
                }
            })
            .collect();
        // Cgroups that only touched storage still get a row.
        let mut cgroups = cgroups;
        for id in storage.keys() {
            if !cgroups.iter().any(|(c, _)| c == id) {
                cgroups.push((*id, CgroupStats::default()));
            }
        }
        // Before forgotten cgroups' flows are deleted: the eviction
        // estimate pairs it with this tick's deletion counter.
        let live_flows = flows.len() as u64;
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
        if !forgotten.is_empty() {
            cgroups.retain(|(id, _)| !forgotten.contains(id));
            for id in &forgotten {
                self.prev.remove(id);
                self.prev_storage.remove(id);
                if self.delete_forgotten
                    && let Err(e) = self.maps.cgroup_stats.remove(id)
                {
                    tracing::debug!(cgroup_id = id, error = %e, "deleting counters of a forgotten cgroup");
                }
            }
            let gone = |id: &u64| forgotten.contains(id);
            if self.delete_forgotten {
                let dead_flows: Vec<PeerKey> = flows
                    .iter()
                    .filter(|(k, _)| gone(&k.cgroup_id))
                    .map(|(k, _)| *k)
                    .collect();
                let dead_storage: Vec<StorageKey> = storage_keys
                    .into_iter()
                    .filter(|k| gone(&k.cgroup_id))
                    .collect();
                if let Err(e) = self.maps.delete_gone(&dead_flows, &dead_storage) {
                    tracing::debug!(error = %e, "deleting flows of forgotten cgroups");
                }
            }
            flows.retain(|(k, _)| !gone(&k.cgroup_id));
            storage.retain(|id, _| !gone(id));
            if self.prev_storage.capacity() > 2 * self.prev_storage.len() + 64 {
                self.prev_storage.shrink_to_fit();
            }
        }
        let dt = self.prev_at.map(|t| now.duration_since(t).as_secs_f64());
        let mut by_cgroup: HashMap<u64, Vec<(PeerKey, FlowStats)>> = HashMap::new();
        for (k, v) in &flows {
            by_cgroup.entry(k.cgroup_id).or_default().push((*k, *v));
        }
        let storage_overflowed = storage.contains_key(&CGROUP_OVERFLOW);
        let mut rows: Vec<CgroupRow> = cgroups
            .iter()
            .filter(|(id, s)| {
                *id != CGROUP_OVERFLOW || *s != CgroupStats::default() || storage_overflowed
            })
            .map(|(id, s)| {
                let uses = storage.remove(id).unwrap_or_default();
                let written: u64 = uses.iter().map(|u| u.written.bytes).sum();
                let read: u64 = uses.iter().map(|u| u.read.bytes).sum();
                let mut rates = match (dt, self.prev.get(id)) {
                    (Some(dt), Some(p)) if dt > 0.0 => Rates::between(p, s, dt),
                    _ => Rates::default(),
                };
                if let (Some(dt), Some((pw, pr))) = (dt, self.prev_storage.get(id))
                    && dt > 0.0
                {
                    rates.storage_write_bytes = written.saturating_sub(*pw) as f64 / dt;
                    rates.storage_read_bytes = read.saturating_sub(*pr) as f64 / dt;
                }
                self.prev_storage.insert(*id, (written, read));
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
                    events_dropped: s.events_dropped,
                    quarantine_dropped: Counts::from(&s.quarantine_dropped),
                    connects_denied: s.connects_denied,
                    rates,
                    destinations: dests.iter().map(|(k, f)| Destination::new(k, f)).collect(),
                    out_per_storage_read: (read > 0)
                        .then(|| s.egress.external.bytes as f64 / read as f64),
                    storage: uses,
                    storage_written_bytes: written,
                    storage_read_bytes: read,
                    dns_queries: s.dns_queries,
                    stratum_markers: s.stratum_markers,
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
        let est = created.saturating_sub(deleted).saturating_sub(live_flows);
        self.evictions = self.evictions.max(est);
        self.warned.check(
            now,
            Full {
                cgroup_full: counters[Counter::CgroupStatsFull as usize],
                evictions: self.evictions,
                ringbuf_drops: counters[Counter::RingbufDrops as usize],
                storage_full: counters[Counter::StorageStatsFull as usize],
            },
        );
        let mut named: Vec<(String, u64)> = Counter::ALL
            .iter()
            .map(|c| (c.name().to_owned(), counters[*c as usize]))
            .collect();
        named.push(("flow_evictions".into(), self.evictions));
        named.push(("flows_live".into(), live_flows));
        let (dns_samples, stratum_hits) = self.drain_signals();
        named.push(("dns_samples_garbled".into(), self.dns_garbled));
        self.prev = cgroups.into_iter().collect();
        self.prev_at = Some(now);
        Ok(Snapshot {
            taken_at: SystemTime::now(),
            drain_mode: format!("{:?}", self.mode).to_lowercase(),
            cgroups: rows,
            events: self.events.iter().cloned().collect(),
            counters: named.into_iter().collect(),
            storage: StorageSummary {
                status: self.storage_status.clone(),
                mounts: watched,
            },
            recent_dns_samples: self.recent_dns.iter().cloned().collect(),
            recent_stratum_hits: self.recent_stratum.iter().cloned().collect(),
            dns_samples,
            stratum_hits,
            interfaces: Vec::new(),
            denied: Vec::new(),
        })
    }
}

impl Collector {
    /// DNS samples and stratum hits queued since the previous pass.
    fn drain_signals(&mut self) -> (Vec<DnsSample>, Vec<StratumHit>) {
        let Some(sig) = &mut self.signals else {
            return (Vec::new(), Vec::new());
        };
        let mut dns = Vec::new();
        for e in sig.drain_dns(signals::MAX_EVENTS_PER_PASS) {
            match DnsSample::from_event(&e) {
                Some(s) => dns.push(s),
                None => self.dns_garbled += 1,
            }
        }
        let hits: Vec<StratumHit> = sig
            .drain_stratum(signals::MAX_EVENTS_PER_PASS)
            .iter()
            .map(StratumHit::from)
            .collect();
        keep_recent(&mut self.recent_dns, &dns, RECENT_EVENTS);
        keep_recent(&mut self.recent_stratum, &hits, RECENT_EVENTS);
        (dns, hits)
    }
}

/// Appends `new` to `recent`, keeping the last `max`.
fn keep_recent<T: Clone>(recent: &mut VecDeque<T>, new: &[T], max: usize) {
    for x in new.iter().skip(new.len().saturating_sub(max)) {
        if recent.len() == max {
            recent.pop_front();
        }
        recent.push_back(x.clone());
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
