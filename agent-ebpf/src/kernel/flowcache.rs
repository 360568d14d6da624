//! The per-CPU flow cache in front of `TG_FLOWS` and `TG_CG_STATS` (layout
//! and the reader's protocol: `tollgate_ebpf::FlowCacheSlot`).
//!
//! Why: a packet on the map path costs an LRU hash update (32-byte key)
//! and a per-CPU hash update; most packets belong to a flow that sent the
//! packet before on the same CPU, and for those the cache costs a
//! per-CPU array slot, a 32-byte compare and plain adds.
//!
//! Only this CPU's programs write its slots. A program nested on the same
//! CPU (softirq over process context) finds `busy` set on a slot being
//! written and takes the map path, so plain (non-atomic) adds are exact.

use core::sync::atomic::{Ordering, compiler_fence};

use tollgate_ebpf::{
    ByteCount, Counter, FLOW_CACHE_SLOTS, FlowCacheSlot, FlowStats, PeerKey, SCOPE_INTERNAL,
};

use super::{
    maps::{FC_GEN, FLOW_CACHE, FLOWS},
    stats::{
        Dir, FlowSeen, add_flow_counts, add_pair, bump, cgroup_slot, create_flow, step_tx_since_syn,
    },
};
use aya_ebpf::helpers::generated::bpf_jiffies64;

/// A slot whose flow counted nothing for this many jiffies (1-10 ms each,
/// by HZ) may be taken by another flow: two busy flows that hash to one
/// slot do not evict each other on every packet.
const IDLE_JIFFIES: u64 = 2;

/// Set by the agent before loading (read-only .rodata): ns per jiffy.
#[unsafe(no_mangle)]
static TG_JIFFY_NS: u64 = tollgate_ebpf::DEFAULT_JIFFY_NS;

#[inline(always)]
fn jiffy_ns() -> u64 {
    // SAFETY: a plain static; the volatile read keeps the compiler from
    // folding the object's default in place of the value the agent set.
    unsafe { core::ptr::read_volatile(&raw const TG_JIFFY_NS) }
}

#[inline(always)]
fn jiffies() -> u64 {
    // SAFETY: helper without arguments or side effects.
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
fn words(k: &PeerKey) -> [u64; 4] {
    // SAFETY: PeerKey is #[repr(C)], 32 bytes, 8-byte aligned, with its
    // padding zeroed by every constructor: four plain u64 reads.
    unsafe { core::ptr::read(k as *const PeerKey as *const [u64; 4]) }
}

/// Word by word: comparing the arrays whole compiles to a byte-wise
/// memcmp loop.
#[inline(always)]
fn same(a: &[u64; 4], b: &[u64; 4]) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}

/// Slot index of a flow: a multiplicative hash of the key's words.
#[inline(always)]
fn index(w: &[u64; 4]) -> u32 {
    let h = (w[0] ^ w[1].rotate_left(17) ^ w[2].rotate_left(31) ^ w[3])
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as u32
}

#[inline(always)]
fn generation() -> u32 {
    match FC_GEN.get(0) {
        Some(g) => *g,
        None => 0,
    }
}

/// Counts the packet in this CPU's slot when its flow owns the slot.
/// `None`: count it on the map path, then offer the slot with [`fill`].
#[inline(always)]
pub fn hit(key: &PeerKey, dir: Dir, bytes: u64, syn: bool) -> Option<FlowSeen> {
    let w = words(key);
    let s = FLOW_CACHE.get_ptr_mut(index(&w))?;
    // SAFETY: `s` is this CPU's value of a per-CPU array slot, live for
    // the whole run; only this CPU writes it (nesting excluded by `busy`).
    unsafe {
        // Take the slot before reading it: a program nesting between the
        // check and the store would otherwise refill it under our feet.
        if (*s).busy != 0 {
            return None;
        }
        (*s).busy = 1;
        compiler_fence(Ordering::SeqCst);
        if !same(&words(&(*s).key), &w) || (*s).gen_ != generation() {
            compiler_fence(Ordering::SeqCst);
            (*s).busy = 0;
            return None;
        }
        let c = match dir {
            Dir::Egress => &raw mut (*s).tx,
            Dir::Ingress => &raw mut (*s).rx,
        };
        (*c).bytes += bytes;
        (*c).packets += 1;
        (*s).last_jiffies = jiffies();
        let mut tx_since_syn = 0;
        if dir == Dir::Egress {
            tx_since_syn = step_tx_since_syn(&raw mut (*s).tx_since_syn, syn);
        }
        let internal = (*s).scope == SCOPE_INTERNAL;
        compiler_fence(Ordering::SeqCst);
        (*s).busy = 0;
        Some(FlowSeen {
            internal,
            tx_since_syn,
        })
    }
}

/// Gives the slot of `key` (just counted on the map path at coarse time
/// `now`, `seen` being what that said) to its flow when the slot is free,
/// idle or from an older scope generation; the previous flow's counts go
/// to the maps.
#[inline(always)]
pub fn fill(key: &PeerKey, seen: &FlowSeen, now: u64) {
    let w = words(key);
    let Some(s) = FLOW_CACHE.get_ptr_mut(index(&w)) else {
        return;
    };
    let gen_ = generation();
    let j = jiffies();
    // SAFETY: as in `hit`.
    unsafe {
        if (*s).busy != 0 {
            return;
        }
        (*s).busy = 1;
        compiler_fence(Ordering::SeqCst);
        let used = (*s).key.cgroup_id != 0;
        if used && (*s).gen_ == gen_ && j.wrapping_sub((*s).last_jiffies) < IDLE_JIFFIES {
            compiler_fence(Ordering::SeqCst);
            (*s).busy = 0;
            return;
        }
        let seq = (*s).seq_hi + 1;
        (*s).seq_hi = seq;
        compiler_fence(Ordering::SeqCst);
        if used {
            flush(s, (*s).gen_ == gen_);
        }
        (*s).key = *key;
        (*s).tx = ByteCount::default();
        (*s).rx = ByteCount::default();
        (*s).last_jiffies = j;
        (*s).base_jiffies = j;
        (*s).base_ns = now;
        (*s).scope = if seen.internal {
            SCOPE_INTERNAL
        } else {
            tollgate_ebpf::SCOPE_EXTERNAL
        };
        (*s).tx_since_syn = seen.tx_since_syn;
        (*s).gen_ = gen_;
        compiler_fence(Ordering::SeqCst);
        (*s).seq_lo = seq;
        (*s).busy = 0;
    }
    bump(Counter::FlowCacheFills);
}

/// Adds a slot's counts to `TG_CG_STATS` and `TG_FLOWS`. A flow evicted
/// meanwhile is recreated when `current` (the slot is of this scope
/// generation); after a CIDR change the agent deleted the flows whose
/// scope changed, and recreating one would bring the old scope back.
#[inline(always)]
unsafe fn flush(s: *mut FlowCacheSlot, current: bool) {
    // SAFETY: the caller holds the slot (`busy`); field addresses only.
    unsafe {
        let (tx, rx) = ((*s).tx, (*s).rx);
        if tx.packets == 0 && rx.packets == 0 {
            return;
        }
        let internal = (*s).scope == SCOPE_INTERNAL;
        if let Some(c) = cgroup_slot((*s).key.cgroup_id) {
            let (e, i) = if internal {
                (
                    &raw mut (*c).egress.internal,
                    &raw mut (*c).ingress.internal,
                )
            } else {
                (
                    &raw mut (*c).egress.external,
                    &raw mut (*c).ingress.external,
                )
            };
            add_pair(e, &tx);
            add_pair(i, &rx);
        }
        let key = (*s).key;
        let value = FlowStats {
            tx,
            rx,
            first_seen_ns: (*s).base_ns,
            last_seen_ns: (*s).last_seen_ns(jiffy_ns()),
            scope: (*s).scope,
            tx_since_syn: (*s).tx_since_syn,
        };
        if let Some(f) = FLOWS.get_ptr_mut(&key) {
            add_flow_counts(f, &value);
            if (*f).last_seen_ns < value.last_seen_ns {
                (*f).last_seen_ns = value.last_seen_ns;
            }
        } else if current {
            create_flow(&key, &value);
        }
    }
}
