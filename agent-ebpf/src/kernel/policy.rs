//! Per-class egress policy ("network = deny" plus an allowlist): which
//! destinations a cgroup under a policy may reach. The agent maps each
//! pod's cgroup to its class's policy id (`TG_POL_CG`); the check walks the
//! ancestors of the packet's or caller's cgroup like the quarantine check,
//! behind its own gate, so cgroups without a policy pay one array lookup.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id},
    maps::lpm_trie::Key,
    programs::SkBuffContext,
};
use tollgate_ebpf::{
    ByteCount, DeniedStats, MAX_ALLOW_PORTS, MAX_CGROUP_DEPTH, POLICY_ID_BITS, PeerKey, PolicyAddr,
};

use super::{
    maps::{DENIED, POL_ALLOW, POL_CG, POL_GATE},
    stats::{add, now_ns},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// The policy id of the nearest ancestor (or the cgroup itself) that has
/// one; 0 = no policy.
#[inline(always)]
fn walk(ancestor: impl Fn(i32) -> u64) -> u32 {
    if !matches!(POL_GATE.get(0), Some(n) if *n != 0) {
        return 0;
    }
    let mut found = 0;
    // Deepest match wins: walk from level 1 down and keep the last.
    for level in 1..=MAX_CGROUP_DEPTH as i32 {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        if let Some(p) = POL_CG.get_ptr(&id) {
            // SAFETY: live map value; one aligned u32 read.
            found = unsafe { *p };
        }
    }
    found
}

/// Policy of the packet's cgroup (cgroup_skb programs).
#[inline(always)]
pub fn skb_policy(ctx: &SkBuffContext) -> u32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context pointer; the helper only reads it.
    walk(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) })
}

/// Policy of the calling task's cgroup (sock_addr programs).
#[inline(always)]
pub fn current_policy() -> u32 {
    // SAFETY: helper without pointer arguments.
    walk(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
}

/// Whether policy `policy` allows (address, port, protocol). IPv4 as
/// IPv4-mapped.
#[inline(always)]
pub fn allowed(policy: u32, addr: &[u8; 16], port: u16, proto: u8) -> bool {
    let key = Key::new(
        POLICY_ID_BITS + 128,
        PolicyAddr {
            policy: policy.to_be_bytes(),
            addr: *addr,
        },
    );
    let Some(a) = POL_ALLOW.get(&key) else {
        return false;
    };
    if a.count == 0 {
        return true;
    }
    if !matches!(
        proto,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE
    ) {
        return false;
    }
    for i in 0..MAX_ALLOW_PORTS {
        if i as u32 >= a.count {
            break;
        }
        let r = a.ranges[i];
        if port >= r.lo && port <= r.hi {
            return true;
        }
    }
    false
}

/// Records a denial for (cgroup, destination): a refused call, or a dropped
/// packet of `bytes`.
#[inline(always)]
pub fn record_denied(key: &PeerKey, dropped_bytes: Option<u64>) {
    let now = now_ns();
    let mut p = DENIED.get_ptr_mut(key);
    if p.is_none() {
        let first = DeniedStats {
            calls: 0,
            dropped: ByteCount::default(),
            first_ns: now,
            last_ns: now,
        };
        // EEXIST (another CPU won the race) is fine: look up again.
        let _ = DENIED.insert(key, &first, BPF_NOEXIST as u64);
        p = DENIED.get_ptr_mut(key);
    }
    let Some(d) = p else {
        return;
    };
    // SAFETY: live map value; field addresses only; `last_ns` is a plain
    // aligned store (last writer wins).
    unsafe {
        match dropped_bytes {
            Some(b) => {
                add(&raw mut (*d).dropped.bytes, b);
                add(&raw mut (*d).dropped.packets, 1);
            }
            None => add(&raw mut (*d).calls, 1),
        }
        (*d).last_ns = now;
    }
}
