//! DNS queries leaving a cgroup (UDP or TCP to port 53): counted per
//! cgroup, and their question names sampled to userspace at a bounded
//! rate per cgroup.
//!
//! A packet counts as a query when its DNS header says standard query
//! (QR 0, opcode 0) with exactly one question and no answer or authority
//! records; anything else on port 53 is left alone (responses, garbage,
//! TCP segments that do not start a message). Over TCP the message
//! follows a 2-byte length (RFC 1035 4.2.2); only segments that begin a
//! message are recognised.
//!
//! Every counted query is either sampled (one `DnsEvent`) or counted in
//! the cgroup's `dns_unsampled` with the reason in a kernel counter, so
//! `dns_queries == samples + dns_unsampled` holds exactly.

use aya_ebpf::programs::SkBuffContext;
use tollgate_ebpf::{Counter, DNS_MAX_LABELS, DNS_NAME_MAX, DnsEvent, DnsRate};

use super::{
    maps::{DNS_EVENTS, DNS_RATE},
    packet::{self, IPPROTO_TCP, IPPROTO_UDP},
    signals,
    stats::{add, bump, cgroup_slot, now_ns},
};

const DNS_HEADER: usize = 12;
const WINDOW_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn on_query(ctx: &SkBuffContext, proto: u8, payload_off: usize, cgroup_id: u64) {
    let off = match proto {
        IPPROTO_UDP => payload_off,
        IPPROTO_TCP => payload_off + 2,
        _ => return,
    };
    let Ok(d) = packet::load::<DNS_HEADER>(ctx, off) else {
        return;
    };
    let be = |i: usize| u16::from_be_bytes([d[i], d[i + 1]]);
    // Byte 2: QR (0x80) and opcode (0x78) must be zero.
    if d[2] & 0xf8 != 0 || be(4) != 1 || be(6) != 0 || be(8) != 0 {
        return;
    }
    bump(Counter::DnsQueries);
    let slot = cgroup_slot(cgroup_id);
    if let Some(s) = slot {
        // SAFETY: live map value; field address only.
        add(unsafe { &raw mut (*s).dns_queries }, 1);
    }
    if let Err(reason) = sample(ctx, cgroup_id, off + DNS_HEADER) {
        bump(reason);
        if let Some(s) = slot {
            // SAFETY: live map value; field address only.
            add(unsafe { &raw mut (*s).dns_unsampled }, 1);
        }
    }
}

/// Whether the cgroup may take one more sample on this CPU in the
/// current one-second window (and takes it).
#[inline(always)]
fn within_rate(cgroup_id: u64, limit: u32) -> bool {
    if limit == 0 {
        return false;
    }
    let now = now_ns();
    let Some(r) = DNS_RATE.get_ptr_mut(cgroup_id) else {
        let fresh = DnsRate {
            window_ns: now,
            taken: 1,
            _pad: 0,
        };
        // A failed insert (allocation failure) still lets this one through:
        // the next query tries again.
        let _ = DNS_RATE.insert(cgroup_id, fresh, 0);
        return true;
    };
    // SAFETY: `r` is this CPU's live value (per-CPU map): no other writer
    // runs on it concurrently except a nested softirq, where a lost
    // update only skews one window's count.
    unsafe {
        if now.wrapping_sub((*r).window_ns) >= WINDOW_NS {
            (*r).window_ns = now;
            (*r).taken = 0;
        }
        if (*r).taken >= limit {
            return false;
        }
        (*r).taken += 1;
    }
    true
}

/// Sends the question at `name_off` to userspace, or says why not.
#[inline(always)]
fn sample(ctx: &SkBuffContext, cgroup_id: u64, name_off: usize) -> Result<(), Counter> {
    if !within_rate(cgroup_id, signals::config().dns_samples_per_sec) {
        return Err(Counter::DnsSampleRateLimited);
    }
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsEvent>(0) else {
        return Err(Counter::DnsSampleDrops);
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to the reserved record (280 bytes, exclusively
    // ours until submit/discard); only field addresses are taken.
    let name = unsafe { &raw mut (*e).name };
    let qtype = match walk(ctx, name, name_off) {
        Some(v) => v,
        None => {
            entry.discard(0);
            return Err(Counter::DnsNameUndecoded);
        }
    };
    // SAFETY: as above; plain stores into the reserved record.
    unsafe {
        (*e).cgroup_id = cgroup_id;
        (*e).ts_ns = now_ns();
        (*e).qtype = (qtype >> 16) as u16;
        (*e).name_len = qtype as u16;
        (*e)._pad = 0;
    }
    entry.submit(0);
    Ok(())
}

/// Copies the question name into `name` and walks its labels (at most
/// [`DNS_MAX_LABELS`], within [`DNS_NAME_MAX`] bytes, no compression
/// pointers). Returns `qtype << 16 | wire length`, or None when the name
/// does not decode or the packet ends before the question type.
#[inline(always)]
fn walk(ctx: &SkBuffContext, name: *mut [u8; 256], name_off: usize) -> Option<u32> {
    let n = packet::load_prefix(ctx, name_off, name).ok()?;
    let mut pos = 0usize;
    let mut end = false;
    for _ in 0..DNS_MAX_LABELS {
        if pos >= n {
            break;
        }
        // SAFETY: `name` is the 256-byte record field; the mask keeps the
        // index inside it (and pos < n <= 256 already).
        let len = unsafe { (*name)[pos & 0xff] } as usize;
        if len == 0 {
            end = true;
            break;
        }
        // 0xc0: compression pointer; 0x40/0x80: obsolete label types.
        if len & 0xc0 != 0 {
            break;
        }
        pos += len + 1;
    }
    let wire_len = pos + 1;
    if !end || wire_len > DNS_NAME_MAX {
        return None;
    }
    let q = packet::load::<2>(ctx, name_off + wire_len).ok()?;
    Some((u16::from_be_bytes(q) as u32) << 16 | wire_len as u32)
}
