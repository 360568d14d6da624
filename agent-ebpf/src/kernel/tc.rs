//! tc programs on a pod's host-side interface (tcx, or clsact on kernels
//! before 6.6): bytes and packets per interface, and the quarantine drop
//! for interfaces of quarantined pods. This is the enforcement point that
//! also sees pods whose workload runs outside the host's cgroups (VM
//! sandboxes such as Kata), where the cgroup hooks see nothing.
//!
//! Passing returns TC_ACT_UNSPEC (tcx: TCX_NEXT), never TC_ACT_OK, so the
//! programs after ours (a CNI's) still run: accounting never decides the
//! fate of a packet, only the quarantine drop does.

use aya_ebpf::{bindings::BPF_NOEXIST, macros::classifier, programs::TcContext};
use tollgate_ebpf::{ByteCount, Counter, ETH_HLEN, IfStats};

use super::{
    maps::{IF_QUAR, IF_STATS},
    stats::{add, bump},
};

/// TC_ACT_UNSPEC / TCX_NEXT: no verdict, the next program decides.
const NEXT: i32 = -1;
/// TC_ACT_SHOT / TCX_DROP.
const SHOT: i32 = 2;

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Host ingress: the pod sent it.
    FromPod,
    /// Host egress: the pod will receive it.
    ToPod,
}

#[classifier]
pub fn tg_tc_from_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, Side::FromPod)
}

#[classifier]
pub fn tg_tc_to_pod(ctx: TcContext) -> i32 {
    verdict(&ctx, Side::ToPod)
}

#[inline(always)]
fn verdict(ctx: &TcContext, side: Side) -> i32 {
    // SAFETY: plain read of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(s) = slot(ifindex) else {
        bump(Counter::IfStatsFull);
        return if IF_QUAR.get_ptr(&ifindex).is_some() {
            SHOT
        } else {
            NEXT
        };
    };
    let len = ctx.len();
    if IF_QUAR.get_ptr(&ifindex).is_some() {
        // SAFETY: `s` points to a live map value; field addresses only.
        let c = unsafe {
            match side {
                Side::FromPod => &raw mut (*s).dropped_egress,
                Side::ToPod => &raw mut (*s).dropped_ingress,
            }
        };
        count(c, len.saturating_sub(ETH_HLEN) as u64);
        return SHOT;
    }
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;
    // SAFETY: as above.
    unsafe {
        if proto == ETH_P_IP || proto == ETH_P_IPV6 {
            let c = match side {
                Side::FromPod => &raw mut (*s).pod_egress,
                Side::ToPod => &raw mut (*s).pod_ingress,
            };
            count(c, len.saturating_sub(ETH_HLEN) as u64);
        } else {
            add(&raw mut (*s).other_frames, 1);
        }
    }
    NEXT
}

#[inline(always)]
fn count(c: *mut ByteCount, bytes: u64) {
    // SAFETY: `c` points into a live map value; field addresses only.
    unsafe {
        add(&raw mut (*c).bytes, bytes);
        add(&raw mut (*c).packets, 1);
    }
}

/// The interface's counters, created on its first frame.
#[inline(always)]
fn slot(ifindex: u32) -> Option<*mut IfStats> {
    if let Some(p) = IF_STATS.get_ptr_mut(&ifindex) {
        return Some(p);
    }
    // EEXIST (another CPU won the race) is fine: look up again.
    let _ = IF_STATS.insert(&ifindex, &IfStats::default(), BPF_NOEXIST as u64);
    IF_STATS.get_ptr_mut(&ifindex)
}
