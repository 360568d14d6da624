//! Reading the per-CPU flow cache (`TG_FLOW_CACHE`) and merging it into the
//! cgroup and flow counters: the maps alone miss whatever the cgroup_skb
//! programs counted in a CPU's slot since the slot was filled. The protocol
//! is documented on [`tollgate_ebpf::FlowCacheSlot`]: slots, then maps, then
//! slots again; a slot counts only if it was not refilled in between.

use std::{collections::HashMap, io};

use aya::maps::{IterableMap as _, MapData, PerCpuArray};
use tollgate_ebpf::{
    CgroupStats, FLOW_CACHE_SLOTS, FlowCacheSlot, FlowStats, PeerKey, SCOPE_INTERNAL,
};

use super::sys;

/// Attempts at a read during which no slot was refilled; after the last,
/// refilled slots are left out of that one read (their flushed counts are
/// in the maps or will be on the next read: a short undercount, never a
/// double count).
const ATTEMPTS: usize = 4;

/// Every CPU's slots, CPU-major.
pub fn read_slots(
    cache: &PerCpuArray<MapData, FlowCacheSlot>,
    ncpu: usize,
    batch: bool,
) -> io::Result<Vec<FlowCacheSlot>> {
    let mut by_cpu = vec![FlowCacheSlot::default(); ncpu * FLOW_CACHE_SLOTS as usize];
    let mut put = |i: u32, cpu: usize, s: FlowCacheSlot| {
        if let Some(x) = by_cpu.get_mut(cpu * FLOW_CACHE_SLOTS as usize + i as usize) {
            *x = s;
        }
    };
    if batch {
        use std::os::fd::AsFd as _;
        sys::lookup_batch_each::<u32, FlowCacheSlot>(
            cache.map().fd().as_fd(),
            sys::Values::PerCpu(ncpu),
            FLOW_CACHE_SLOTS,
            |i, per_cpu| {
                per_cpu
                    .iter()
                    .enumerate()
                    .for_each(|(cpu, s)| put(i, cpu, s))
            },
        )?;
    } else {
        for i in 0..FLOW_CACHE_SLOTS {
            let v = cache
                .get(&i, 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            v.iter().enumerate().for_each(|(cpu, s)| put(i, cpu, *s));
        }
    }
    Ok(by_cpu)
}

/// Reads with `read_maps` between two reads of the slots and merges the
/// slots that stayed put. Returns the merged maps' contents.
pub fn read_merged<T>(
    read_slots: impl Fn() -> io::Result<Vec<FlowCacheSlot>>,
    mut read_maps: impl FnMut() -> io::Result<T>,
    merge: impl Fn(&mut T, &[FlowCacheSlot]),
) -> io::Result<T> {
    for attempt in 1..=ATTEMPTS {
        let before = read_slots()?;
        let mut maps = read_maps()?;
        let after = read_slots()?;
        let mut unstable = 0;
        let kept: Vec<FlowCacheSlot> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| {
                let ok = b.seq_lo == b.seq_hi && a.seq_lo == a.seq_hi && b.seq_hi == a.seq_hi;
                unstable += usize::from(!ok);
                ok && a.key.cgroup_id != 0 && (a.tx.packets | a.rx.packets) != 0
            })
            .map(|(_, a)| *a)
            .collect();
        if unstable == 0 || attempt == ATTEMPTS {
            if unstable > 0 {
                tracing::debug!(
                    slots = unstable,
                    "flow-cache slots refilled during every read; left out of this one"
                );
            }
            merge(&mut maps, &kept);
            return Ok(maps);
        }
    }
    unreachable!("the last attempt returns")
}

/// Adds slot counts to the cgroups they belong to (cgroups absent from the
/// map are gone: the agent deleted them, and their slots are dropped).
pub fn merge_cgroups(cgroups: &mut [(u64, CgroupStats)], slots: &[FlowCacheSlot]) {
    if slots.is_empty() {
        return;
    }
    let mut add: HashMap<u64, CgroupStats> = HashMap::new();
    for s in slots {
        let c = add.entry(s.key.cgroup_id).or_default();
        let (e, i) = if s.scope == SCOPE_INTERNAL {
            (&mut c.egress.internal, &mut c.ingress.internal)
        } else {
            (&mut c.egress.external, &mut c.ingress.external)
        };
        *e += s.tx;
        *i += s.rx;
    }
    for (id, stats) in cgroups.iter_mut() {
        if let Some(a) = add.get(id) {
            *stats += *a;
        }
    }
}

/// Adds slot counts to their flows (a flow evicted from the map meanwhile
/// is left out of the flow view; its cgroup still has the counts).
pub fn merge_flows(flows: &mut [(PeerKey, FlowStats)], slots: &[FlowCacheSlot], jiffy_ns: u64) {
    if slots.is_empty() {
        return;
    }
    let mut add: HashMap<PeerKey, FlowStats> = HashMap::new();
    for s in slots {
        let f = add.entry(s.key).or_default();
        f.tx += s.tx;
        f.rx += s.rx;
        f.last_seen_ns = f.last_seen_ns.max(s.last_seen_ns(jiffy_ns));
    }
    for (k, f) in flows.iter_mut() {
        if let Some(a) = add.get(k) {
            f.tx += a.tx;
            f.rx += a.rx;
            f.last_seen_ns = f.last_seen_ns.max(a.last_seen_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use tollgate_ebpf::{ByteCount, SCOPE_EXTERNAL};

    use super::*;

    fn slot(cgroup_id: u64, seq: u64, tx: u64) -> FlowCacheSlot {
        FlowCacheSlot {
            seq_lo: seq,
            seq_hi: seq,
            key: PeerKey {
                cgroup_id,
                port: 443,
                ..PeerKey::default()
            },
            tx: ByteCount {
                bytes: tx * 100,
                packets: tx,
            },
            scope: SCOPE_EXTERNAL,
            ..FlowCacheSlot::default()
        }
    }

    fn merged(reads: Vec<Vec<FlowCacheSlot>>) -> (u64, usize) {
        let n = Cell::new(0usize);
        let maps_read = Cell::new(0usize);
        let out = read_merged(
            || {
                let i = n.get();
                n.set(i + 1);
                Ok(reads[i.min(reads.len() - 1)].clone())
            },
            || {
                maps_read.set(maps_read.get() + 1);
                Ok(vec![(7u64, CgroupStats::default())])
            },
            |c, s| merge_cgroups(c, s),
        )
        .unwrap();
        (out[0].1.egress.external.packets, maps_read.get())
    }

    #[test]
    fn stable_slots_are_added_once() {
        let (packets, reads) = merged(vec![vec![slot(7, 2, 3)], vec![slot(7, 2, 5)]]);
        // The second read's counts (packets counted between the reads are
        // not in the maps), one attempt.
        assert_eq!((packets, reads), (5, 1));
    }

    #[test]
    fn a_refilled_slot_makes_the_read_repeat() {
        let (packets, reads) = merged(vec![
            vec![slot(7, 2, 3)],
            vec![slot(7, 3, 1)],
            vec![slot(7, 3, 1)],
            vec![slot(7, 3, 4)],
        ]);
        assert_eq!((packets, reads), (4, 2));
    }

    #[test]
    fn a_slot_copied_mid_fill_never_counts() {
        let mut torn = slot(7, 2, 9);
        torn.seq_hi = 3;
        let (packets, reads) = merged(vec![vec![torn]; 2 * ATTEMPTS]);
        assert_eq!((packets, reads), (0, ATTEMPTS));
    }

    #[test]
    fn slots_of_gone_cgroups_are_dropped() {
        let (packets, _) = merged(vec![vec![slot(8, 2, 3)]; 2]);
        assert_eq!(packets, 0);
    }
}
