//! Turns consecutive collector snapshots (cumulative counters per cgroup)
//! into one [`WindowSample`] per pod per window.
//!
//! Deltas are taken tick by tick, so a counter that goes backwards (the
//! kernel entry was deleted and recreated, the programs were reloaded)
//! counts as restarted from zero rather than producing a huge wrap; each
//! such reset is counted in [`Windower::resets`]. Cgroups present in the
//! first snapshot start from their current counters (their history before
//! the agent started is not this window's traffic); cgroups that appear
//! later start from zero, since the kernel creates their entry with their
//! first packet. CPU time is the exception: a cgroup may have run for
//! hours before its first packet, so CPU always starts from the value read
//! when the cgroup is first seen. Cgroups that are gone or forgotten get a
//! last (partial) window and are then dropped.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use tollgate_ebpf::CGROUP_OVERFLOW;

mod cpu;
mod dns;

pub use cpu::{UsageReader, cpu_limit_cores, cpu_usage_usec};
pub use dns::{entropy, label_entropy};

use super::{CgroupRow, Features, PeerWindow, Snapshot, WindowSample};
use crate::detect::Subject;

/// Peers kept per sample (largest tx first).
pub const MAX_PEERS: usize = 32;

/// Cumulative counters of one cgroup.
#[derive(Debug, Clone, Copy, Default)]
struct Cum {
    ext_bytes: u64,
    ext_packets: u64,
    int_bytes: u64,
    int_packets: u64,
    ingress_bytes: u64,
    new_peers: u64,
    storage_write: u64,
    storage_read: u64,
    dns_queries: u64,
    stratum: u64,
}

impl Cum {
    fn of(r: &CgroupRow) -> Self {
        Self {
            ext_bytes: r.egress.external.bytes,
            ext_packets: r.egress.external.packets,
            int_bytes: r.egress.internal.bytes,
            int_packets: r.egress.internal.packets,
            ingress_bytes: r.ingress.total_bytes(),
            new_peers: r.new_peers,
            storage_write: r.storage_written_bytes,
            storage_read: r.storage_read_bytes,
            dns_queries: r.dns_queries,
            stratum: r.stratum_markers,
        }
    }

    fn fields(&self) -> [u64; 10] {
        [
            self.ext_bytes,
            self.ext_packets,
            self.int_bytes,
            self.int_packets,
            self.ingress_bytes,
            self.new_peers,
            self.storage_write,
            self.storage_read,
            self.dns_queries,
            self.stratum,
        ]
    }
}

type FlowKey = (IpAddr, u16, String);

#[derive(Debug, Clone, Copy, Default)]
struct FlowCum {
    tx: u64,
    rx: u64,
    txp: u64,
    rxp: u64,
}

#[derive(Debug)]
struct PodAcc {
    subject: Subject,
    prev: Cum,
    /// Window sums, in [`Cum::fields`] order.
    sums: [u64; 10],
    flows_prev: HashMap<FlowKey, FlowCum>,
    flows_sum: HashMap<FlowKey, FlowCum>,
    first_seen: HashMap<FlowKey, SystemTime>,
    dns_names: u64,
    dns_len_sum: f64,
    dns_entropy_sum: f64,
    cpu_prev_usec: Option<u64>,
    seen: bool,
    gone: bool,
    /// A gone cgroup whose last window was emitted: its rows (kept for the
    /// inventory's grace period) only advance `prev`.
    finished: bool,
    /// Egress of the window the cgroup hooks did not see (bytes, packets),
    /// from [`Windower::attribute_bypass`].
    bypass: (u64, u64),
}

/// One pod interface over the window (tc counts on its host-side end).
#[derive(Debug, Default)]
struct IfAcc {
    /// Cumulative pod egress at the last snapshot (bytes, packets).
    prev: (u64, u64),
    /// Window sums.
    sum: (u64, u64),
    /// The cgroup owning the pod's network namespace, and its path.
    cgroup_id: u64,
    cgroup: Option<String>,
    seen: bool,
}

pub struct Windower {
    window: Duration,
    cgroup_mount: Option<PathBuf>,
    cidrs: Vec<(IpNet, bool)>,
    start: Option<SystemTime>,
    pods: HashMap<u64, PodAcc>,
    ifaces: HashMap<u32, IfAcc>,
    /// Counters that went backwards (counted as restarted from zero).
    pub resets: u64,
    /// Peers left out of samples beyond [`MAX_PEERS`].
    pub peers_dropped: u64,
}

fn delta(prev: u64, cur: u64, resets: &mut u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        *resets += 1;
        cur
    }
}

/// Longest-prefix match of `addr` in the CIDR table: true when external.
fn is_external(cidrs: &[(IpNet, bool)], addr: IpAddr) -> bool {
    cidrs
        .iter()
        .filter(|(n, _)| n.contains(&addr))
        .max_by_key(|(n, _)| n.prefix_len())
        .is_none_or(|(_, internal)| !internal)
}

/// Whether `s` already names `r` as [`subject_of`] would.
fn same_subject(s: &Subject, r: &CgroupRow) -> bool {
    s.cgroup_id == r.cgroup_id
        && s.cgroup_path == r.path
        && s.namespace == r.namespace
        && s.pod == r.pod
        && s.container == r.container
        && match &r.class {
            Some(c) => s.class == *c,
            None => s.class == crate::inventory::classes::DEFAULT_CLASS,
        }
}

/// Who a cgroup row is, as findings name it.
pub fn subject_of(r: &CgroupRow) -> Subject {
    Subject {
        cgroup_id: r.cgroup_id,
        cgroup_path: r.path.clone(),
        namespace: r.namespace.clone(),
        pod: r.pod.clone(),
        container: r.container.clone(),
        class: r
            .class
            .clone()
            .unwrap_or_else(|| crate::inventory::classes::DEFAULT_CLASS.to_owned()),
    }
}

impl Windower {
    /// `cgroup_mount`: where cpu.stat and cpu.max are read (None: no CPU
    /// features, as in replay). `cidrs`: the internal/external table
    /// ([`crate::config::Config::cidr_table`]) for peers.
    pub fn new(window: Duration, cgroup_mount: Option<PathBuf>, cidrs: Vec<(IpNet, bool)>) -> Self {
        Self {
            window,
            cgroup_mount,
            cidrs,
            start: None,
            pods: HashMap::new(),
            ifaces: HashMap::new(),
            resets: 0,
            peers_dropped: 0,
        }
    }

    fn cgroup_dir(&self, path: Option<&str>) -> Option<PathBuf> {
        let m = self.cgroup_mount.as_ref()?;
        Some(m.join(path?.trim_start_matches('/')))
    }

    /// Feeds one snapshot; returns the samples of the window it closes
    /// (empty while the window is open).
    pub fn push(&mut self, snap: &Snapshot) -> Vec<WindowSample> {
        let at = snap.taken_at;
        let first = self.start.is_none();
        let start = *self.start.get_or_insert(at);
        let rows = || {
            snap.cgroups
                .iter()
                .filter(|r| r.cgroup_id != CGROUP_OVERFLOW)
        };
        // CPU time of cgroups seen for the first time, read in one sweep.
        let new_dirs: Vec<PathBuf> = rows()
            .filter(|r| !self.pods.contains_key(&r.cgroup_id))
            .filter_map(|r| self.cgroup_dir(r.path.as_deref()))
            .collect();
        let mut cpu = self
            .cgroup_mount
            .as_deref()
            .map(|m| UsageReader::new(m, new_dirs.iter().map(PathBuf::as_path)));
        for row in rows() {
            self.add_row(row, at, first, &mut cpu);
        }
        for i in &snap.interfaces {
            let now = (i.pod_egress.bytes, i.pod_egress.packets);
            let acc = match self.ifaces.entry(i.ifindex) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                // First sight: its counters so far are history.
                std::collections::hash_map::Entry::Vacant(e) => e.insert(IfAcc {
                    prev: now,
                    ..IfAcc::default()
                }),
            };
            acc.sum.0 += delta(acc.prev.0, now.0, &mut self.resets);
            acc.sum.1 += delta(acc.prev.1, now.1, &mut self.resets);
            acc.prev = now;
            acc.cgroup_id = i.cgroup_id;
            acc.cgroup = i.cgroup.clone();
            acc.seen = true;
        }
        for s in &snap.dns_samples {
            if let Some(p) = self.pods.get_mut(&s.cgroup_id) {
                p.dns_names += 1;
                p.dns_len_sum += s.name.trim_end_matches('.').len() as f64;
                p.dns_entropy_sum += label_entropy(&s.name);
            }
        }
        if at.duration_since(start).unwrap_or_default() < self.window {
            return Vec::new();
        }
        self.start = Some(at);
        self.close(start, at)
    }

    fn add_row(
        &mut self,
        row: &CgroupRow,
        at: SystemTime,
        first: bool,
        cpu: &mut Option<UsageReader>,
    ) {
        let mount = self.cgroup_mount.as_deref();
        let acc = self.pods.entry(row.cgroup_id).or_insert_with(|| PodAcc {
            subject: subject_of(row),
            prev: if first { Cum::of(row) } else { Cum::default() },
            sums: [0; 10],
            flows_prev: HashMap::new(),
            flows_sum: HashMap::new(),
            first_seen: HashMap::new(),
            dns_names: 0,
            dns_len_sum: 0.0,
            dns_entropy_sum: 0.0,
            cpu_prev_usec: mount
                .zip(row.path.as_deref())
                .and_then(|(m, p)| cpu.as_mut()?.usage_usec(&m.join(p.trim_start_matches('/')))),
            seen: false,
            gone: false,
            finished: false,
            bypass: (0, 0),
        });
        // Rebuilt only when the identity changed: every row, every tick.
        if !same_subject(&acc.subject, row) {
            acc.subject = subject_of(row);
        }
        acc.seen = true;
        acc.gone = row.gone;
        let cur = Cum::of(row);
        if acc.finished {
            acc.prev = cur;
            return;
        }
        for (i, (p, c)) in acc.prev.fields().iter().zip(cur.fields()).enumerate() {
            acc.sums[i] += delta(*p, c, &mut self.resets);
        }
        acc.prev = cur;
        for d in &row.destinations {
            let Ok(addr) = d.addr.parse::<IpAddr>() else {
                continue;
            };
            let key = (addr, d.port, d.proto.clone());
            let now = FlowCum {
                tx: d.tx_bytes,
                rx: d.rx_bytes,
                txp: d.tx_packets,
                rxp: d.rx_packets,
            };
            // Known flows are updated in place: no key clone per tick.
            let prev = match acc.flows_prev.get_mut(&key) {
                Some(p) => std::mem::replace(p, now),
                None => {
                    acc.flows_prev.insert(key.clone(), now);
                    // Flows already there at start are history; later
                    // ones are new flows whose counters started at zero.
                    if first { now } else { FlowCum::default() }
                }
            };
            if !acc.first_seen.contains_key(&key) {
                acc.first_seen.insert(key.clone(), at);
            }
            let s = match acc.flows_sum.get_mut(&key) {
                Some(s) => s,
                None => acc.flows_sum.entry(key).or_default(),
            };
            s.tx += delta(prev.tx, now.tx, &mut self.resets);
            s.rx += delta(prev.rx, now.rx, &mut self.resets);
            s.txp += delta(prev.txp, now.txp, &mut self.resets);
            s.rxp += delta(prev.rxp, now.rxp, &mut self.resets);
        }
    }

    /// Compares each pod interface's egress over the window with what the
    /// cgroup hooks counted for the cgroups of its namespace (the owning
    /// cgroup and those below it, loopback peers left out) and books the
    /// excess on the owning cgroup, or on the first cgroup below it.
    fn attribute_bypass(&mut self) {
        for acc in self.ifaces.values_mut() {
            let (if_bytes, if_packets) = std::mem::take(&mut acc.sum);
            let root = acc.cgroup.as_deref().map(|p| p.trim_end_matches('/'));
            let mut members: Vec<u64> = self
                .pods
                .iter()
                .filter(|(id, p)| {
                    **id == acc.cgroup_id
                        || match (root, p.subject.cgroup_path.as_deref()) {
                            (Some(r), Some(path)) => {
                                path == r
                                    || path.strip_prefix(r).is_some_and(|t| t.starts_with('/'))
                            }
                            _ => false,
                        }
                })
                .map(|(id, _)| *id)
                .collect();
            if members.is_empty() {
                continue;
            }
            members.sort_unstable();
            let (mut cg_bytes, mut cg_packets) = (0u64, 0u64);
            for id in &members {
                let p = &self.pods[id];
                let (lo_bytes, lo_packets) = p
                    .flows_sum
                    .iter()
                    .filter(|((addr, _, _), _)| addr.is_loopback())
                    .fold((0, 0), |(b, n), (_, f)| (b + f.tx, n + f.txp));
                cg_bytes += (p.sums[0] + p.sums[2]).saturating_sub(lo_bytes);
                cg_packets += (p.sums[1] + p.sums[3]).saturating_sub(lo_packets);
            }
            let extra = (
                if_bytes.saturating_sub(cg_bytes),
                if_packets.saturating_sub(cg_packets),
            );
            if extra.0 == 0 {
                continue;
            }
            let owner = if members.contains(&acc.cgroup_id) {
                acc.cgroup_id
            } else {
                members[0]
            };
            let p = self.pods.get_mut(&owner).expect("member of pods");
            p.bypass.0 += extra.0;
            p.bypass.1 += extra.1;
        }
        self.ifaces.retain(|_, i| std::mem::take(&mut i.seen));
    }

    /// Emits every pod's sample for [start, end) and resets the sums.
    fn close(&mut self, start: SystemTime, end: SystemTime) -> Vec<WindowSample> {
        self.attribute_bypass();
        let mut out = Vec::new();
        let ids: Vec<u64> = self
            .pods
            .iter()
            .filter(|(_, p)| !p.finished)
            .map(|(id, _)| *id)
            .collect();
        let dirs: Vec<Option<PathBuf>> = ids
            .iter()
            .map(|id| self.cgroup_dir(self.pods[id].subject.cgroup_path.as_deref()))
            .collect();
        let mut cpu = self
            .cgroup_mount
            .as_deref()
            .map(|m| UsageReader::new(m, dirs.iter().flatten().map(PathBuf::as_path)));
        for (id, dir) in ids.into_iter().zip(dirs) {
            let usage = if self.pods[&id].gone {
                None
            } else {
                dir.as_deref().and_then(|d| cpu.as_mut()?.usage_usec(d))
            };
            let limit = dir.as_deref().and_then(cpu_limit_cores);
            let acc = self.pods.get_mut(&id).expect("id from keys");
            let cpu_seconds = match (acc.cpu_prev_usec, usage) {
                (Some(p), Some(u)) => delta(p, u, &mut self.resets) as f64 / 1e6,
                _ => 0.0,
            };
            if usage.is_some() {
                acc.cpu_prev_usec = usage;
            }
            let mut peers: Vec<PeerWindow> = acc
                .flows_sum
                .iter()
                .filter(|(_, s)| s.tx + s.rx > 0)
                .map(|((addr, port, proto), s)| PeerWindow {
                    addr: *addr,
                    port: *port,
                    proto: proto.clone(),
                    external: is_external(&self.cidrs, *addr),
                    tx_bytes: s.tx,
                    rx_bytes: s.rx,
                    tx_packets: s.txp,
                    rx_packets: s.rxp,
                    first_seen: acc.first_seen.get(&(*addr, *port, proto.clone())).copied(),
                })
                .collect();
            peers.sort_by(|a, b| {
                b.tx_bytes
                    .cmp(&a.tx_bytes)
                    .then(b.rx_bytes.cmp(&a.rx_bytes))
            });
            let distinct = peers.len() as u64;
            if peers.len() > MAX_PEERS {
                self.peers_dropped += (peers.len() - MAX_PEERS) as u64;
                peers.truncate(MAX_PEERS);
            }
            let s = acc.sums;
            let names = acc.dns_names.max(1) as f64;
            out.push(WindowSample {
                subject: acc.subject.clone(),
                start,
                end,
                features: Features {
                    egress_external_bytes: s[0] + acc.bypass.0,
                    egress_external_packets: s[1] + acc.bypass.1,
                    egress_internal_bytes: s[2],
                    egress_internal_packets: s[3],
                    ingress_bytes: s[4],
                    new_connections: s[5],
                    distinct_destinations: distinct,
                    new_class_destinations: 0,
                    new_class_destination_bytes: 0,
                    storage_write_bytes: s[6],
                    storage_read_bytes: s[7],
                    dns_queries: s[8],
                    dns_mean_name_len: acc.dns_len_sum / names,
                    dns_label_entropy: acc.dns_entropy_sum / names,
                    cpu_seconds,
                    cpu_limit_cores: limit,
                    stratum_markers: s[9],
                    unattributed_egress_bytes: acc.bypass.0,
                },
                peers,
            });
            // Forget flows that were not seen in the window (evicted or
            // out of the top list); keep the rest for first_seen.
            let live: Vec<FlowKey> = acc.flows_sum.keys().cloned().collect();
            acc.first_seen.retain(|k, _| live.contains(k));
            acc.flows_prev.retain(|k, _| live.contains(k));
            acc.flows_sum.clear();
            acc.sums = [0; 10];
            acc.bypass = (0, 0);
            acc.dns_names = 0;
            acc.dns_len_sum = 0.0;
            acc.dns_entropy_sum = 0.0;
            acc.finished = acc.gone;
        }
        // Cgroups missing from every snapshot of the window were forgotten
        // by the inventory (their kernel counters deleted).
        self.pods.retain(|_, p| p.seen);
        for p in self.pods.values_mut() {
            p.seen = false;
        }
        out.sort_by_key(|s| s.subject.cgroup_id);
        out
    }
}

#[cfg(test)]
mod tests;
