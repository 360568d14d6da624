//! Egress payload signals for the detectors: DNS queries (port 53) and
//! stratum JSON-RPC at the start of TCP streams. The egress program
//! calls [`on_egress`] after accounting; the inspections themselves run
//! as tail-called programs (`tg_skb_dns`, `tg_skb_stratum`) that always
//! return pass, so they never change the verdict.
//!
//! Cost for ordinary traffic: a port compare, and for TCP a compare of
//! the flow's `tx_since_syn` against the stratum window (plus one payload
//! byte while inside it). Packets past the start of a stream do nothing
//! more.

use aya_ebpf::{
    helpers::generated::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext,
};
use tollgate_ebpf::{Counter, JUMP_DNS, JUMP_STRATUM, PeerKey, SignalConfig};

use super::{
    dns,
    maps::{JUMP, SCRATCH},
    packet::{self, Headers, IPPROTO_TCP},
    stats::bump,
    stratum,
};

const PASS: i32 = 1;

/// Set by the agent before loading (read-only .rodata); the defaults in
/// the object are the ABI crate's defaults.
#[unsafe(no_mangle)]
static TG_SIGCFG: SignalConfig = SignalConfig {
    dns_samples_per_sec: tollgate_ebpf::DEFAULT_DNS_SAMPLES_PER_SEC,
    stratum_packets: tollgate_ebpf::DEFAULT_STRATUM_PACKETS,
};

#[inline(always)]
pub fn config() -> SignalConfig {
    // SAFETY: a plain static; the volatile read keeps the compiler from
    // folding the object's defaults in place of the value the agent set.
    unsafe { core::ptr::read_volatile(&raw const TG_SIGCFG) }
}

const DNS_PORT: u16 = 53;

/// Hands one accounted egress packet to an inspection program when it
/// may carry a DNS query or a stratum message. Returns only when it does
/// not (or the tail call failed, which is counted); on success the
/// inspection program's verdict (pass) ends the run.
#[inline(always)]
pub fn on_egress(ctx: &SkBuffContext, h: &Headers, tx_since_syn: u32) {
    if h.payload_off == 0 {
        return;
    }
    let slot = if h.dport == DNS_PORT {
        JUMP_DNS
    } else if h.proto == IPPROTO_TCP
        && tx_since_syn <= config().stratum_packets
        // One byte decides for TLS, HTTP, SSH, ...: stratum is JSON.
        && packet::load_u8(ctx, h.payload_off) == b'{' as u32
    {
        JUMP_STRATUM
    } else {
        return;
    };
    // SAFETY: `ctx` is the program's own context; on success the call
    // does not return.
    unsafe { JUMP.tail_call(ctx, slot) };
    bump(Counter::SignalJumpFailed);
}

/// The packet's cgroup, headers and peer, parsed again in the tail-called
/// program (its verifier state starts from the context alone).
#[inline(always)]
fn reparse(ctx: &SkBuffContext) -> Option<(Headers, PeerKey)> {
    // SAFETY: `ctx.skb` is the program's context pointer.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let h = packet::parse(ctx).ok()?;
    let key = PeerKey {
        cgroup_id,
        addr: h.dst,
        port: h.dport,
        proto: h.proto,
        family: h.family,
        _pad: [0; 4],
    };
    Some((h, key))
}

/// `x` after a round trip through map memory, which the verifier cannot
/// see through: the many paths through the header parser (IPv4, IPv6
/// with up to eight extension headers) leave different ranges for the
/// payload offset, and without this merge point the verifier walks the
/// inspection code once per path, past its budget. None without the
/// scratch slot (never: a one-entry per-CPU array) or past 8 KiB.
#[inline(always)]
fn launder(x: usize) -> Option<usize> {
    let s = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: [PARK, PARK + 8) lies inside this CPU's 288-byte scratch
    // value; volatile so the store and load are not folded.
    unsafe {
        let p = (&raw mut (*s).buf as *mut u8).add(PARK) as *mut u64;
        core::ptr::write_volatile(p, x as u64);
        let v = core::ptr::read_volatile(p) as usize;
        // Bounded again for packet pointer arithmetic (header offsets
        // stay far below this).
        (v <= MAX_OFFSET).then_some(v & MAX_OFFSET)
    }
}

const MAX_OFFSET: usize = 0x1fff;

/// Where [`launder`] parks a value: past every byte a search reads.
pub const PARK: usize = tollgate_ebpf::STRATUM_PREFIX + 24;

#[cgroup_skb(egress)]
pub fn tg_skb_dns(ctx: SkBuffContext) -> i32 {
    if let Some((mut h, key)) = reparse(&ctx)
        && let Some(off) = launder(h.payload_off)
    {
        h.payload_off = off;
        dns::on_query(&ctx, h.proto, h.payload_off, key.cgroup_id);
    }
    PASS
}

#[cgroup_skb(egress)]
pub fn tg_skb_stratum(ctx: SkBuffContext) -> i32 {
    if let Some((h, key)) = reparse(&ctx)
        && h.payload_off != 0
        && let Some(off) = launder(h.payload_off)
    {
        stratum::check(&ctx, off, &key);
    }
    PASS
}
