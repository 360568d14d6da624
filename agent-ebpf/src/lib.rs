//! The one definition of everything the kernel programs and the userspace
//! agent share: map names, program names, key and value layouts, counter
//! indices. Every type is `#[repr(C)]` with explicit padding, no `bool`, and a
//! compile-time size assertion, so a layout change fails the build on both
//! sides at once.
//!
//! With the `user` feature the types also implement `aya::Pod` and get
//! userspace conveniences (conversions, Display).
#![no_std]
#![deny(unsafe_code)]

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod user;
#[cfg(feature = "user")]
pub use user::{addr_of, addr_to_key, proto_name};

/// Version of the layouts below. Pins live under
/// `/sys/fs/bpf/tollgate/v{ABI_VERSION}` so an agent never reuses a map whose
/// layout it does not know.
pub const ABI_VERSION: u32 = 1;

/// Map names, as the kernel sees them (at most 15 bytes: BPF_OBJ_NAME_LEN).
///
/// | map | type | key -> value | writer | reader | size (default) | when full |
/// |---|---|---|---|---|---|---|
/// | `TG_CG_STATS` | PERCPU_HASH | cgroup id (u64) -> [`CgroupStats`] | cgroup_skb, connect/sendmsg | collector (batch lookup) | 16384 | new cgroups are counted under [`CGROUP_OVERFLOW`] and [`Counter::CgroupStatsFull`] |
/// | `TG_FLOWS` | LRU_HASH | [`PeerKey`] -> [`FlowStats`] | cgroup_skb | collector | 65536 | least recently used flow evicted; evictions derived from [`Counter::FlowsCreated`] |
/// | `TG_CIDRS` | LPM_TRIE | [`LpmAddr`] -> [`CidrInfo`] | agent at start/config reload | cgroup_skb | 1024 | agent refuses the config |
/// | `TG_CONN_SEEN` | LRU_HASH | [`PeerKey`] -> first-seen ns (u64) | connect/sendmsg | nobody (dedup only) | 65536 | oldest pair forgotten: a later connect sends a new event |
/// | `TG_CONN_EVENTS` | RINGBUF | [`ConnEvent`] records | connect/sendmsg | collector | 256 KiB | event dropped, [`Counter::RingbufDrops`] += 1, pair forgotten so it is sent again |
/// | `TG_COUNTERS` | PERCPU_ARRAY | [`Counter`] index -> u64 | all programs | collector | [`COUNTER_SLOTS`] | fixed size |
pub mod map {
    pub const CGROUP_STATS: &str = "TG_CG_STATS";
    pub const FLOWS: &str = "TG_FLOWS";
    pub const CIDRS: &str = "TG_CIDRS";
    pub const CONN_SEEN: &str = "TG_CONN_SEEN";
    pub const CONN_EVENTS: &str = "TG_CONN_EVENTS";
    pub const COUNTERS: &str = "TG_COUNTERS";

    /// Every map the agent pins, for pin management and `tollgate check`.
    pub const ALL: [&str; 6] = [CGROUP_STATS, FLOWS, CIDRS, CONN_SEEN, CONN_EVENTS, COUNTERS];

    pub const DEFAULT_CGROUP_STATS_ENTRIES: u32 = 16384;
    pub const DEFAULT_FLOW_ENTRIES: u32 = 65536;
    pub const DEFAULT_CIDR_ENTRIES: u32 = 1024;
    pub const DEFAULT_CONN_SEEN_ENTRIES: u32 = 65536;
    pub const DEFAULT_CONN_EVENTS_BYTES: u32 = 256 * 1024;
}

/// Program (function) names in the object file.
pub mod prog {
    pub const SKB_EGRESS: &str = "tg_skb_egress";
    pub const SKB_INGRESS: &str = "tg_skb_ingress";
    pub const CONNECT4: &str = "tg_connect4";
    pub const CONNECT6: &str = "tg_connect6";
    pub const SENDMSG4: &str = "tg_sendmsg4";
    pub const SENDMSG6: &str = "tg_sendmsg6";
    /// Benchmark baseline (one per-CPU array increment); never attached.
    pub const BENCH_BASELINE: &str = "tg_bench_baseline";
}

/// Key of `TG_CG_STATS` under which cgroups are counted once the map is full.
pub const CGROUP_OVERFLOW: u64 = u64::MAX;

/// Bytes and packets. Bytes are L3 bytes (IP header onward) as the cgroup
/// hook sees them; a GSO/GRO super-packet counts as one packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteCount {
    pub bytes: u64,
    pub packets: u64,
}
const _: () = assert!(core::mem::size_of::<ByteCount>() == 16);

/// One direction split by scope: internal (destination in a configured
/// cluster CIDR) or external (everything else, including packets whose
/// addresses could not be read).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeCounts {
    pub internal: ByteCount,
    pub external: ByteCount,
}
const _: () = assert!(core::mem::size_of::<ScopeCounts>() == 32);

/// Value of `TG_CG_STATS` (per CPU; userspace sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub egress: ScopeCounts,
    pub ingress: ScopeCounts,
    /// connect() calls on inet sockets (TCP and UDP).
    pub connects: u64,
    /// First-seen (cgroup, address, port, protocol) pairs from connect or
    /// sendmsg: one connection event each.
    pub new_peers: u64,
    /// Packets whose IP or transport header could not be read (truncated,
    /// garbage, unknown protocol). Also counted in bytes above.
    pub malformed: u64,
    /// Connection events of this cgroup that did not fit in the ring buffer
    /// (also in [`Counter::RingbufDrops`]); the pair is reported again on
    /// its next connect or sendmsg.
    pub events_dropped: u64,
}
const _: () = assert!(core::mem::size_of::<CgroupStats>() == 96);

/// Address family tags used in keys and events.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A remote peer as seen from a cgroup: key of `TG_FLOWS` and `TG_CONN_SEEN`.
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`). `port` is in host
/// byte order; 0 when the packet has no ports (ICMP, non-first fragments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<PeerKey>() == 32);

/// Value of `TG_FLOWS`. Counters are updated with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Sent by the cgroup to the peer.
    pub tx: ByteCount,
    /// Received by the cgroup from the peer.
    pub rx: ByteCount,
    /// CLOCK_MONOTONIC_COARSE nanoseconds.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// The peer's scope ([`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`]), looked
    /// up in `TG_CIDRS` when the flow is created so later packets skip the
    /// trie; the agent rewrites it when the CIDRs change.
    pub scope: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 56);

/// Data part of an LPM trie key (the kernel prepends the prefix length).
/// IPv4 CIDRs are stored IPv4-mapped with prefix length + 96.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LpmAddr {
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<LpmAddr>() == 16);

/// Value of `TG_CIDRS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrInfo {
    /// [`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`] (an explicit carve-out of a
    /// wider internal range).
    pub scope: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CidrInfo>() == 8);

pub const SCOPE_EXTERNAL: u32 = 0;
pub const SCOPE_INTERNAL: u32 = 1;

/// Which hook produced a [`ConnEvent`].
pub const CONN_KIND_CONNECT: u8 = 1;
pub const CONN_KIND_SENDMSG: u8 = 2;

/// Record of `TG_CONN_EVENTS`: a cgroup reached a peer for the first time
/// (first since the pair was last forgotten by the LRU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC_COARSE nanoseconds.
    pub ts_ns: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 40);

/// Slots of `TG_COUNTERS`, the kernel's own health counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connection events that did not fit in the ring buffer.
    RingbufDrops = 0,
    /// Flow entries created (evictions = created - live - deleted by agent).
    FlowsCreated = 1,
    /// Flow entries that could not be created (allocation failure).
    FlowCreateFailed = 2,
    /// Packets or connects counted under [`CGROUP_OVERFLOW`] because
    /// `TG_CG_STATS` was full.
    CgroupStatsFull = 3,
    /// Packets whose headers could not be parsed.
    Malformed = 4,
    /// Flow entries deleted by the agent (idle expiry); written by userspace
    /// on CPU 0 only.
    FlowsDeletedByAgent = 5,
}

impl Counter {
    pub const ALL: [Counter; 6] = [
        Counter::RingbufDrops,
        Counter::FlowsCreated,
        Counter::FlowCreateFailed,
        Counter::CgroupStatsFull,
        Counter::Malformed,
        Counter::FlowsDeletedByAgent,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::RingbufDrops => "ringbuf_drops",
            Counter::FlowsCreated => "flows_created",
            Counter::FlowCreateFailed => "flow_create_failed",
            Counter::CgroupStatsFull => "cgroup_stats_full",
            Counter::Malformed => "malformed_packets",
            Counter::FlowsDeletedByAgent => "flows_deleted_by_agent",
        }
    }
}

/// Size of `TG_COUNTERS`; room to grow without an ABI bump.
pub const COUNTER_SLOTS: u32 = 16;
const _: () = assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);

/// IPv4-mapped IPv6 address for an IPv4 address given as its 4 bytes.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}
