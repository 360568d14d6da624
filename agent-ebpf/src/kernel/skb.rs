//! cgroup_skb ingress and egress, attached at the cgroup v2 root: bytes and
//! packets per cgroup, direction and scope, and the per-peer flow table.
//! Returns 1 (pass) for everything but the packets of a quarantined
//! cgroup: accounting itself never drops.

use aya_ebpf::{
    helpers::generated::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext,
};
use tollgate_ebpf::{PeerKey, QF_NETWORK};

use super::{
    flowcache,
    packet::{self, IPPROTO_TCP, TCP_ACK, TCP_SYN},
    policy, quarantine, signals,
    stats::{Dir, count_dropped, count_flow, count_packet, now_ns},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(egress)]
pub fn tg_skb_egress(ctx: SkBuffContext) -> i32 {
    verdict(&ctx, Dir::Egress)
}

#[cgroup_skb(ingress)]
pub fn tg_skb_ingress(ctx: SkBuffContext) -> i32 {
    verdict(&ctx, Dir::Ingress)
}

/// Drops (and counts as dropped) the packets of quarantined cgroups and,
/// on egress, packets to destinations the cgroup's egress policy does not
/// allow; accounts and passes everything else.
#[inline(always)]
fn verdict(ctx: &SkBuffContext, dir: Dir) -> i32 {
    // SAFETY: `ctx.skb` is the program's context pointer.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let bytes = ctx.len() as u64;
    if quarantine::skb_quarantined(ctx, QF_NETWORK) {
        count_dropped(cgroup_id, bytes);
        return DROP;
    }
    // Plain values, not a Result held across the checks: LLVM may leave
    // the payload of an Err uninitialised, which the verifier refuses.
    let (ok, h) = match packet::parse(ctx) {
        Ok(h) => (true, h),
        Err(()) => (false, packet::Headers::ZERO),
    };
    if dir == Dir::Egress {
        let policy = policy::skb_policy(ctx);
        // Unreadable headers cannot be checked: denied.
        if policy != 0 && (!ok || !policy::allowed(policy, &h.dst, h.dport, h.proto)) {
            let key = PeerKey {
                cgroup_id,
                addr: h.dst,
                port: h.dport,
                proto: h.proto,
                family: h.family,
                _pad: [0; 4],
            };
            policy::record_denied(&key, Some(bytes));
            return DROP;
        }
    }
    if !ok {
        // Unreadable headers: counted as external bytes and as malformed.
        let _ = count_packet(cgroup_id, dir, false, true, bytes);
        return PASS;
    }
    account(ctx, dir, cgroup_id, bytes, &h);
    PASS
}

#[inline(always)]
fn account(ctx: &SkBuffContext, dir: Dir, cgroup_id: u64, bytes: u64, h: &packet::Headers) {
    let (addr, port) = match dir {
        Dir::Egress => (h.dst, h.dport),
        Dir::Ingress => (h.src, h.sport),
    };
    let key = PeerKey {
        cgroup_id,
        addr,
        port,
        proto: h.proto,
        family: h.family,
        _pad: [0; 4],
    };
    // A bare SYN (no ACK) from the cgroup starts a new outbound stream.
    let syn = dir == Dir::Egress
        && h.proto == IPPROTO_TCP
        && h.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let flow = match flowcache::hit(&key, dir, bytes, syn) {
        Some(flow) => flow,
        None => {
            let now = now_ns();
            let flow = count_flow(&key, dir, bytes, syn, now);
            // Packets counted under the overflow entry stay off the
            // cache: its slots are merged into the cgroup's own entry.
            if count_packet(cgroup_id, dir, flow.internal, false, bytes) {
                flowcache::fill(&key, &flow, now);
            }
            flow
        }
    };
    if dir == Dir::Egress {
        signals::on_egress(ctx, h, flow.tx_since_syn);
    }
}

/// Benchmark baseline: the cheapest useful cgroup_skb program (one
/// per-CPU array increment), measured next to the real egress program by
/// `cargo xtask bench dataplane`, and attached at the root (egress and
/// ingress) for its reference throughput run. The agent never attaches it.
#[cgroup_skb(egress)]
pub fn tg_bench_baseline(ctx: SkBuffContext) -> i32 {
    bench_count(&ctx)
}

/// The same for ingress.
#[cgroup_skb(ingress)]
pub fn tg_bench_baseline_in(ctx: SkBuffContext) -> i32 {
    bench_count(&ctx)
}

#[inline(always)]
fn bench_count(ctx: &SkBuffContext) -> i32 {
    if let Some(p) = super::maps::BENCH.get_ptr_mut(0) {
        super::stats::add(p, ctx.len() as u64);
    }
    PASS
}
