//! Stratum JSON-RPC at the start of outbound TCP streams: the mining
//! pool protocol (`"method": "mining.subscribe"`, `mining.authorize`,
//! `mining.submit`, and xmrig's `"method": "login"`).
//!
//! Only the first [`SignalConfig::stratum_packets`] egress packets since
//! the flow's last SYN get here (see `signals`), and only payloads that
//! begin with `{` are searched, within their first [`STRATUM_PREFIX`]
//! bytes: one JSON-RPC message per line is how stratum clients write,
//! so the method of the first message sits near the start of a segment.
//! A message split before its method ends is not matched (the next
//! message, in a later packet of the window, usually is). A client that
//! splits every message inside its method evades this matcher; userspace
//! still names it by its pool port (mining.pool_port) or CPU profile
//! (mining.profile). tests/tests/stratum_split.rs pins both cases.
//!
//! [`SignalConfig::stratum_packets`]: tollgate_ebpf::SignalConfig

use aya_ebpf::programs::SkBuffContext;
use tollgate_ebpf::{
    Counter, PeerKey, STRATUM_AUTHORIZE, STRATUM_LOGIN, STRATUM_PREFIX, STRATUM_SUBMIT,
    STRATUM_SUBSCRIBE, StratumEvent,
};

use super::{
    maps::{SCRATCH, STRATUM_EVENTS},
    packet,
    signals::PARK,
    stats::{add, bump, cgroup_slot, now_ns},
};

/// `"method"`: eight bytes, compared as one u64.
const METHOD: u64 = u64::from_le_bytes(*b"\"method\"");
/// `"mining.`
const MINING: u64 = u64::from_le_bytes(*b"\"mining.");
/// Spaces, tabs and newlines allowed around the colon.
const MAX_SPACE: usize = 4;

#[inline(always)]
pub fn check(ctx: &SkBuffContext, payload_off: usize, key: &PeerKey) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: `s` is this CPU's scratch value (288 bytes); only its
    // address is taken. The first STRATUM_PREFIX bytes receive the load.
    let buf = unsafe { &raw mut (*s).buf };
    let Ok(n) = packet::load_prefix(ctx, payload_off, buf as *mut [u8; STRATUM_PREFIX]) else {
        return;
    };
    let marker = find(buf, n);
    if marker != 0 {
        report(key, marker);
    }
}

#[inline(always)]
fn byte(buf: *const [u8; STRATUM_PREFIX + 32], i: usize) -> u8 {
    // SAFETY: the mask keeps the index at most 255, inside the 288-byte
    // scratch value.
    unsafe { (*buf)[i & 0xff] }
}

#[inline(always)]
fn word(buf: *const [u8; STRATUM_PREFIX + 32], i: usize) -> u64 {
    let i = i & 0xff;
    // SAFETY: i <= 255, so [i, i + 8) lies inside the 288-byte value.
    unsafe { core::ptr::read_unaligned((buf as *const u8).add(i) as *const u64) }
}

/// Whether `pat` is at `i` (bounds against `n` checked by the caller).
#[inline(always)]
fn at(buf: *const [u8; STRATUM_PREFIX + 32], i: usize, pat: &[u8]) -> bool {
    let mut k = 0;
    while k < pat.len() {
        if byte(buf, i + k) != pat[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Returns `x` after a round trip through map memory, which the verifier
/// cannot see through. Without it the verifier knows the exact match
/// position on every path out of the search loop and verifies the code
/// after it once per position (past its 1M-instruction budget); with it
/// those paths become one state.
#[inline(always)]
fn launder(buf: *mut [u8; STRATUM_PREFIX + 32], x: usize) -> usize {
    // SAFETY: [PARK, PARK + 8) lies inside the 288-byte scratch value.
    unsafe {
        let p = (buf as *mut u8).add(PARK) as *mut u64;
        core::ptr::write_volatile(p, x as u64);
        core::ptr::read_volatile(p) as usize
    }
}

#[inline(always)]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// The marker id of the first `"method"` in `buf[..n]`, or 0.
#[inline(always)]
fn find(buf: *mut [u8; STRATUM_PREFIX + 32], n: usize) -> u8 {
    let mut i = 0usize;
    let mut found = false;
    for _ in 0..STRATUM_PREFIX - 8 {
        if i + 8 > n {
            return 0;
        }
        if word(buf, i) == METHOD {
            found = true;
            break;
        }
        i += 1;
    }
    if !found {
        return 0;
    }
    let mut p = launder(buf, i + 8);
    for _ in 0..MAX_SPACE {
        if p < n && is_space(byte(buf, p)) {
            p += 1;
        }
    }
    let p = launder(buf, p);
    if p >= n || byte(buf, p) != b':' {
        return 0;
    }
    let mut p = p + 1;
    for _ in 0..MAX_SPACE {
        if p < n && is_space(byte(buf, p)) {
            p += 1;
        }
    }
    let p = launder(buf, p);
    if p + 8 <= n && word(buf, p) == MINING {
        let q = p + 8;
        if q + 10 <= n && at(buf, q, b"subscribe\"") {
            return STRATUM_SUBSCRIBE;
        }
        if q + 10 <= n && at(buf, q, b"authorize\"") {
            return STRATUM_AUTHORIZE;
        }
        if q + 7 <= n && at(buf, q, b"submit\"") {
            return STRATUM_SUBMIT;
        }
        return 0;
    }
    if p + 7 <= n && at(buf, p, b"\"login\"") {
        return STRATUM_LOGIN;
    }
    0
}

#[inline(always)]
fn report(key: &PeerKey, marker: u8) {
    bump(Counter::StratumMarkers);
    let slot = cgroup_slot(key.cgroup_id);
    if let Some(s) = slot {
        // SAFETY: live map value; field address only.
        add(unsafe { &raw mut (*s).stratum_markers }, 1);
    }
    let Some(mut entry) = STRATUM_EVENTS.reserve::<StratumEvent>(0) else {
        bump(Counter::StratumEventDrops);
        if let Some(s) = slot {
            // SAFETY: live map value; field address only.
            add(unsafe { &raw mut (*s).stratum_dropped }, 1);
        }
        return;
    };
    entry.write(StratumEvent {
        cgroup_id: key.cgroup_id,
        ts_ns: now_ns(),
        addr: key.addr,
        port: key.port,
        family: key.family,
        marker,
        _pad: 0,
    });
    entry.submit(0);
}
