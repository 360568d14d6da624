//! Quarantine checks shared by the cgroup_skb and sock_addr hooks. A
//! quarantined cgroup covers everything below it (a pod-level cgroup
//! covers its containers), so the check walks the ancestors of the
//! packet's or caller's cgroup. The gate map keeps the walk off the fast
//! path while nothing is quarantined.

use aya_ebpf::helpers::generated::{
    bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id,
};
use aya_ebpf::{bindings::__sk_buff, programs::SkBuffContext};
use tollgate_ebpf::MAX_CGROUP_DEPTH;

use super::maps::{QGATE, QUARANTINE};

#[inline(always)]
fn any_quarantined() -> bool {
    matches!(QGATE.get(0), Some(n) if *n != 0)
}

/// Whether `ancestor(level)` of the cgroup is quarantined with `flag`, for
/// levels 1 (just below the root, which is never quarantined) down to the
/// cgroup itself.
#[inline(always)]
fn walk(flag: u32, ancestor: impl Fn(i32) -> u64) -> bool {
    if !any_quarantined() {
        return false;
    }
    for level in 1..=MAX_CGROUP_DEPTH as i32 {
        let id = ancestor(level);
        if id == 0 {
            // Deeper than the cgroup itself.
            return false;
        }
        // Read through a raw pointer: the entry may be rewritten by the
        // agent concurrently, and only `flags` (one aligned u32) is read.
        if let Some(e) = QUARANTINE.get_ptr(&id)
            // SAFETY: `e` points to a live map value for this program run.
            && unsafe { (*e).flags } & flag != 0
        {
            return true;
        }
    }
    false
}

/// For cgroup_skb programs.
#[inline(always)]
pub fn skb_quarantined(ctx: &SkBuffContext, flag: u32) -> bool {
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the program's context pointer; the helper only reads it.
    walk(flag, |level| unsafe {
        bpf_skb_ancestor_cgroup_id(skb, level)
    })
}

/// For sock_addr programs (the calling task's cgroup).
#[inline(always)]
pub fn current_quarantined(flag: u32) -> bool {
    // SAFETY: helper without pointer arguments.
    walk(flag, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
}
