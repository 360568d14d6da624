//! cgroup connect4/connect6 and sendmsg4/sendmsg6: per-cgroup connect
//! counters and one ring-buffer event per new (cgroup, peer) pair. Always
//! allows the call (returns 1).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_sock_addr},
    helpers::generated::bpf_get_current_cgroup_id,
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use tollgate_ebpf::{
    CONN_KIND_CONNECT, CONN_KIND_SENDMSG, ConnEvent, Counter, FAMILY_V4, FAMILY_V6, PeerKey,
    QF_CONNECT, v4_mapped,
};

use super::{
    maps::{CONN_EVENTS, CONN_SEEN},
    policy, quarantine,
    stats::{add, bump, cgroup_slot, now_ns},
};

const ALLOW: i32 = 1;
/// Makes connect()/sendmsg() fail with EPERM.
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn tg_connect4(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, false, CONN_KIND_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn tg_connect6(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, true, CONN_KIND_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn tg_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, false, CONN_KIND_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn tg_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_addr(&ctx, true, CONN_KIND_SENDMSG)
}

/// Destination of the call, IPv4-mapped for IPv4 and for IPv4-mapped IPv6.
#[inline(always)]
fn peer(sa: &bpf_sock_addr, v6: bool) -> (u8, [u8; 16]) {
    if !v6 {
        return (FAMILY_V4, v4_mapped(sa.user_ip4.to_ne_bytes()));
    }
    // One 4-byte context load per word: the verifier refuses a wider copy
    // of bpf_sock_addr.user_ip6.
    let w = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&w[0].to_ne_bytes());
    a[4..8].copy_from_slice(&w[1].to_ne_bytes());
    a[8..12].copy_from_slice(&w[2].to_ne_bytes());
    a[12..16].copy_from_slice(&w[3].to_ne_bytes());
    let mapped = w[0] == 0 && w[1] == 0 && a[10] == 0xff && a[11] == 0xff;
    (if mapped { FAMILY_V4 } else { FAMILY_V6 }, a)
}

/// Refuses the call for quarantined cgroups and for destinations the
/// cgroup's egress policy does not allow, else records it and allows it.
#[inline(always)]
fn on_addr(ctx: &SockAddrContext, v6: bool, kind: u8) -> i32 {
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if quarantine::current_quarantined(QF_CONNECT) {
        count_denied(cgroup_id);
        return DENY;
    }
    let policy = policy::current_policy();
    if policy != 0 {
        let key = peer_key(ctx, v6, cgroup_id);
        if !policy::allowed(policy, &key.addr, key.port, key.proto) {
            count_denied(cgroup_id);
            policy::record_denied(&key, None);
            return DENY;
        }
    }
    record(ctx, v6, kind, cgroup_id);
    ALLOW
}

#[inline(always)]
fn count_denied(cgroup_id: u64) {
    if let Some(s) = cgroup_slot(cgroup_id) {
        // SAFETY: live map value; field address only.
        add(unsafe { &raw mut (*s).connects_denied }, 1);
    }
}

/// (cgroup, destination address, port, protocol) of the call.
#[inline(always)]
fn peer_key(ctx: &SockAddrContext, v6: bool, cgroup_id: u64) -> PeerKey {
    // SAFETY: the context pointer of a cgroup_sock_addr program.
    let sa = unsafe { &*ctx.sock_addr };
    let (family, addr) = peer(sa, v6);
    PeerKey {
        cgroup_id,
        addr,
        port: u16::from_be(sa.user_port as u16),
        proto: sa.protocol as u8,
        family,
        _pad: [0; 4],
    }
}

#[inline(always)]
fn record(ctx: &SockAddrContext, v6: bool, kind: u8, cgroup_id: u64) {
    let key = peer_key(ctx, v6, cgroup_id);
    let (family, addr) = (key.family, key.addr);
    let slot = cgroup_slot(cgroup_id);
    if kind == CONN_KIND_CONNECT
        && let Some(s) = slot
    {
        // SAFETY: live map value; field address only.
        add(unsafe { &raw mut (*s).connects }, 1);
    }
    if CONN_SEEN.get_ptr(&key).is_some() {
        return;
    }
    let now = now_ns();
    if CONN_SEEN.insert(&key, now, BPF_NOEXIST as u64).is_err() {
        // Another CPU is reporting the same pair.
        return;
    }
    let Some(mut entry) = CONN_EVENTS.reserve::<ConnEvent>(0) else {
        bump(Counter::RingbufDrops);
        if let Some(s) = slot {
            // SAFETY: live map value; field address only.
            add(unsafe { &raw mut (*s).events_dropped }, 1);
        }
        // Forget the pair so the next call reports it again.
        let _ = CONN_SEEN.remove(&key);
        return;
    };
    entry.write(ConnEvent {
        cgroup_id,
        ts_ns: now,
        addr,
        port: key.port,
        proto: key.proto,
        family,
        kind,
        _pad: [0; 3],
    });
    entry.submit(0);
    if let Some(s) = slot {
        // SAFETY: live map value; field address only.
        add(unsafe { &raw mut (*s).new_peers }, 1);
    }
}
