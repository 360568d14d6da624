//! Counter updates shared by all hooks. Every add is atomic: per-CPU values
//! can still be updated from process context and from softirq on the same
//! CPU, and exact counts are the point.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key,
};
use tollgate_ebpf::{
    ByteCount, CGROUP_OVERFLOW, CgroupStats, Counter, FlowStats, LpmAddr, PeerKey, SCOPE_EXTERNAL,
    SCOPE_INTERNAL,
};

use super::maps::{CG_STATS, CIDRS, COUNTERS, FLOWS};

/// Atomically adds `v` to the u64 at `p`.
#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value returned by a successful lookup;
    // map values are 8-byte aligned and live for the whole program run.
    // (core::sync::atomic has no fetch_add on the BPF target: the
    // intrinsic lowers to BPF_ATOMIC | BPF_ADD.)
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
}

#[inline(always)]
fn add_count(c: *mut ByteCount, bytes: u64) {
    // SAFETY: `c` points into a live map value (see `add`); only field
    // addresses are taken, nothing is read or written through a reference.
    unsafe {
        add(&raw mut (*c).bytes, bytes);
        add(&raw mut (*c).packets, 1);
    }
}

/// Adds one to a kernel health counter.
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        add(p, 1);
    }
}

/// Coarse monotonic clock (CLOCK_MONOTONIC_COARSE, a few ms resolution):
/// cheap enough for every packet (bpf_ktime_get_coarse_ns, Linux 5.11).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments or side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Whether `addr` (IPv4-mapped for IPv4) lies in a configured internal CIDR.
#[inline(always)]
pub fn is_internal(addr: &[u8; 16]) -> bool {
    let key = Key::new(128, LpmAddr { addr: *addr });
    matches!(CIDRS.get(&key), Some(info) if info.scope == SCOPE_INTERNAL)
}

/// What a new `TG_CG_STATS` entry starts from. A static (read-only data),
/// not a stack value: zeroing 160 bytes of stack compiles to a byte loop
/// that the verifier walks again on every path that reaches it.
// SAFETY: CgroupStats is plain integers; all-zero is a valid value.
static ZERO_STATS: CgroupStats = unsafe { core::mem::zeroed() };

/// Returns the stats slot of `cgroup_id`, creating it; when the map is full
/// the overflow slot (created by the agent before attaching) is returned and
/// the overflow counted.
#[inline(always)]
pub fn cgroup_slot(cgroup_id: u64) -> Option<*mut CgroupStats> {
    cgroup_slot_owned(cgroup_id).map(|(p, _)| p)
}

/// As [`cgroup_slot`], and whether the slot is the cgroup's own (false:
/// the overflow slot).
#[inline(always)]
fn cgroup_slot_owned(cgroup_id: u64) -> Option<(*mut CgroupStats, bool)> {
    if let Some(p) = CG_STATS.get_ptr_mut(cgroup_id) {
        return Some((p, true));
    }
    // Insert zeroes and count through the pointer: one code path for the
    // first packet and the rest. EEXIST (another CPU won the race) is fine.
    let _ = CG_STATS.insert(cgroup_id, &ZERO_STATS, BPF_NOEXIST as u64);
    if let Some(p) = CG_STATS.get_ptr_mut(cgroup_id) {
        return Some((p, true));
    }
    bump(Counter::CgroupStatsFull);
    CG_STATS.get_ptr_mut(CGROUP_OVERFLOW).map(|p| (p, false))
}

/// Direction of a packet relative to the cgroup.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Egress,
    Ingress,
}

/// Counts one packet of `bytes` for the cgroup. Returns whether it went
/// to the cgroup's own entry (false: the overflow entry, or none).
#[inline(always)]
pub fn count_packet(cgroup_id: u64, dir: Dir, internal: bool, malformed: bool, bytes: u64) -> bool {
    let Some((s, own)) = cgroup_slot_owned(cgroup_id) else {
        return false;
    };
    // SAFETY: `s` points to a live map value; only field addresses are taken.
    unsafe {
        let scope = match dir {
            Dir::Egress => &raw mut (*s).egress,
            Dir::Ingress => &raw mut (*s).ingress,
        };
        let c = if internal {
            &raw mut (*scope).internal
        } else {
            &raw mut (*scope).external
        };
        add_count(c, bytes);
        if malformed {
            add(&raw mut (*s).malformed, 1);
        }
    }
    own
}

/// Counts a packet dropped by quarantine.
#[inline(always)]
pub fn count_dropped(cgroup_id: u64, bytes: u64) {
    if let Some(s) = cgroup_slot(cgroup_id) {
        // SAFETY: live map value; field address only.
        add_count(unsafe { &raw mut (*s).quarantine_dropped }, bytes);
    }
}

/// What the flow table says about a packet's flow.
pub struct FlowSeen {
    /// The peer is internal (cached in the flow: the trie is consulted
    /// once per flow, not per packet).
    pub internal: bool,
    /// Egress packets since the last SYN to the peer, this one included
    /// (0 on ingress).
    pub tx_since_syn: u32,
}

/// `tx_since_syn` stops counting here, so long streams stop dirtying the
/// field once they are past any start-of-stream window.
const TX_SINCE_SYN_CAP: u32 = 1024;

/// Steps a flow's `tx_since_syn` (at `field`, in a map value or a
/// flow-cache slot) for one egress packet, restarting at 1 on a SYN;
/// returns the new count. The stored value stops at [`TX_SINCE_SYN_CAP`].
#[inline(always)]
pub fn step_tx_since_syn(field: *mut u32, syn: bool) -> u32 {
    // SAFETY: `field` points to an aligned u32 in a live map value; a
    // plain load and store (last writer wins).
    unsafe {
        let n = if syn { 1 } else { *field + 1 };
        if n <= TX_SINCE_SYN_CAP {
            *field = n;
        }
        n
    }
}

/// Counts one packet in the flow table, creating the flow. `syn`: an
/// egress TCP SYN, which restarts the flow's start-of-stream window.
#[inline(always)]
pub fn count_flow(key: &PeerKey, dir: Dir, bytes: u64, syn: bool, now: u64) -> FlowSeen {
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        // SAFETY: `f` points to a live map value; only field addresses are
        // taken, `last_seen_ns` and `tx_since_syn` are plain aligned
        // stores (last writer wins).
        unsafe {
            add_flow(f, dir, bytes);
            (*f).last_seen_ns = now;
            let mut tx_since_syn = 0;
            if dir == Dir::Egress {
                tx_since_syn = step_tx_since_syn(&raw mut (*f).tx_since_syn, syn);
            }
            return FlowSeen {
                internal: (*f).scope == SCOPE_INTERNAL,
                tx_since_syn,
            };
        }
    }
    let internal = is_internal(&key.addr);
    let one = ByteCount { bytes, packets: 1 };
    let mut value = FlowStats {
        first_seen_ns: now,
        last_seen_ns: now,
        scope: if internal {
            SCOPE_INTERNAL
        } else {
            SCOPE_EXTERNAL
        },
        ..FlowStats::default()
    };
    match dir {
        Dir::Egress => {
            value.tx = one;
            value.tx_since_syn = 1;
        }
        Dir::Ingress => value.rx = one,
    }
    create_flow(key, &value);
    FlowSeen {
        internal,
        tx_since_syn: value.tx_since_syn,
    }
}

#[inline(always)]
fn add_flow(f: *mut FlowStats, dir: Dir, bytes: u64) {
    // SAFETY: `f` points to a live map value; field addresses only.
    unsafe {
        match dir {
            Dir::Egress => add_count(&raw mut (*f).tx, bytes),
            Dir::Ingress => add_count(&raw mut (*f).rx, bytes),
        }
    }
}

/// Creates the flow `key` with `value`. A CPU that lost the race
/// (EEXIST) adds `value`'s counts to the winner's entry instead.
#[inline(always)]
pub fn create_flow(key: &PeerKey, value: &FlowStats) {
    match FLOWS.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => bump(Counter::FlowsCreated),
        Err(_) => match FLOWS.get_ptr_mut(key) {
            Some(f) => add_flow_counts(f, value),
            None => bump(Counter::FlowCreateFailed),
        },
    }
}

/// Adds `v`'s sent and received counts to the flow entry at `f`.
#[inline(always)]
pub fn add_flow_counts(f: *mut FlowStats, v: &FlowStats) {
    // SAFETY: `f` points to a live map value; field addresses only.
    unsafe {
        add_pair(&raw mut (*f).tx, &v.tx);
        add_pair(&raw mut (*f).rx, &v.rx);
    }
}

/// Adds a (bytes, packets) pair; nothing for an empty one.
#[inline(always)]
pub fn add_pair(c: *mut ByteCount, v: &ByteCount) {
    if v.packets == 0 {
        return;
    }
    // SAFETY: `c` points into a live map value; field addresses only.
    unsafe {
        add(&raw mut (*c).bytes, v.bytes);
        add(&raw mut (*c).packets, v.packets);
    }
}
