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

/// DNS and stratum signal records and settings.
mod signals;
pub use signals::*;

#[cfg(feature = "user")]
#[allow(unsafe_code)]
mod user;
#[cfg(feature = "user")]
pub use user::{addr_of, addr_to_key, dev_parts, kernel_dev, proto_name};

/// Version of the layouts below. Pins live under
/// `/sys/fs/bpf/tollgate/v{ABI_VERSION}` so an agent never reuses a map whose
/// layout it does not know.
/// (Kept at 1 while nothing has been released: pins of a build with other
/// layouts are refused by the layout check with the fix, `tollgate
/// detach`.)
pub const ABI_VERSION: u32 = 1;

/// Map names, as the kernel sees them (at most 15 bytes: BPF_OBJ_NAME_LEN).
///
/// | map | type | key -> value | writer | reader | size (default) | when full |
/// |---|---|---|---|---|---|---|
/// | `TG_CG_STATS` | PERCPU_HASH | cgroup id (u64) -> [`CgroupStats`] | cgroup_skb, connect/sendmsg | collector (batch lookup) | 4096 | new cgroups are counted under [`CGROUP_OVERFLOW`] and [`Counter::CgroupStatsFull`] |
/// | `TG_FLOWS` | LRU_HASH | [`PeerKey`] -> [`FlowStats`] | cgroup_skb | collector | 16384 | least recently used flow evicted; evictions derived from [`Counter::FlowsCreated`] |
/// | `TG_CIDRS` | LPM_TRIE | [`LpmAddr`] -> [`CidrInfo`] | agent at start/config reload | cgroup_skb | 1024 | agent refuses the config |
/// | `TG_CONN_SEEN` | LRU_HASH | [`PeerKey`] -> first-seen ns (u64) | connect/sendmsg | nobody (dedup only) | 65536 | oldest pair forgotten: a later connect sends a new event |
/// | `TG_CONN_EVENTS` | RINGBUF | [`ConnEvent`] records | connect/sendmsg | collector | 256 KiB | event dropped, [`Counter::RingbufDrops`] += 1, pair forgotten so it is sent again |
/// | `TG_COUNTERS` | PERCPU_ARRAY | [`Counter`] index -> u64 | all programs | collector | [`COUNTER_SLOTS`] | fixed size |
/// | `TG_QUARANTINE` | HASH | cgroup id (u64) -> [`QuarantineEntry`] | `tollgate quarantine` / agent | cgroup_skb, connect/sendmsg (cgroup and its ancestors) | 4096 | the request fails with a clear error; nothing is dropped by mistake |
/// | `TG_QGATE` | ARRAY[1] | 0 -> number of entries in `TG_QUARANTINE` (u32) | same writers | every hook, first: 0 skips the ancestor walk | 1 | fixed |
/// | `TG_ST_STATS` | PERCPU_HASH | [`StorageKey`] -> [`IoCount`] | sys_exit | collector (batch lookup) | 4096 | counted under (`CGROUP_OVERFLOW`, dev 0, dir), seeded by the loader, and [`Counter::StorageStatsFull`] += 1 |
/// | `TG_ST_DEVS` | HASH | kernel dev_t (u32, `major << 20 \| minor`) -> mountinfo mount id (u32) | agent (every tick, from mountinfo) | sys_enter; collector (names) | 4096 | agent logs the mounts it could not watch |
/// | `TG_ST_MAGICS` | HASH | super block magic (u64) -> 1 (u32) | agent at start | sys_enter | 64 | fixed set (ceph, nfs) |
/// | `TG_DNS_EVENTS` | RINGBUF | [`DnsEvent`] records (sampled query names) | cgroup_skb egress (port 53) | collector | 256 KiB | sample dropped, [`Counter::DnsSampleDrops`] and the cgroup's `dns_unsampled` += 1 |
/// | `TG_DNS_RATE` | LRU_PERCPU_HASH | cgroup id (u64) -> [`DnsRate`] | cgroup_skb egress (port 53) | nobody | 16384 | least recently querying cgroup's window forgotten: it starts a fresh window |
/// | `TG_STRATUM_EV` | RINGBUF | [`StratumEvent`] records | cgroup_skb egress (TCP stream starts) | collector | 64 KiB | event dropped, [`Counter::StratumEventDrops`] and the cgroup's `stratum_dropped` += 1 (the marker is still counted) |
/// | `TG_JUMP` | PROG_ARRAY[2] | [`JUMP_DNS`], [`JUMP_STRATUM`] -> program | agent at load | cgroup_skb egress (tail call) | 2 | fixed. Pinned so the slots outlive the agent (the kernel empties a program array when its last user reference closes) |
/// | `TG_SCRATCH` | PERCPU_ARRAY[1] | 0 -> [`Scratch`] | cgroup_skb egress (TCP stream starts) | nobody | 1 | fixed; not pinned |
/// | `TG_IF_STATS` | PERCPU_HASH | host-side interface ifindex (u32) -> [`IfStats`] | tc ingress/egress | collector (batch lookup) | 4096 | not counted, [`Counter::IfStatsFull`] += 1 |
/// | `TG_IF_QUAR` | HASH | host-side interface ifindex (u32) -> [`IfQuarantine`] | `tollgate quarantine` / agent | tc ingress/egress (drop) | 4096 | the request fails with a clear error; the cgroup hooks still enforce |
/// | `TG_POL_CG` | HASH | cgroup id (u64, the pod's or any ancestor) -> egress policy id (u32) | agent every tick, from the classes' `egress` config | cgroup_skb egress, connect/sendmsg (ancestor walk) | 16384 | agent logs the cgroups it could not cover |
/// | `TG_POL_GATE` | ARRAY[1] | 0 -> number of entries in `TG_POL_CG` (u32) | agent | same readers, first: 0 skips the walk | 1 | fixed |
/// | `TG_POL_ALLOW` | LPM_TRIE | [`PolicyAddr`] (policy id, then address) -> [`AllowPorts`] | agent at start / config change | same readers | 4096 | agent refuses the config |
/// | `TG_DENIED` | LRU_HASH | [`PeerKey`] (cgroup, destination) -> [`DeniedStats`] | cgroup_skb egress, connect/sendmsg (policy denials) | collector | 16384 | least recently denied destination forgotten (its per-cgroup sum drops with it) |
/// | `TG_ST_INFLIGHT` | ARRAY[1] | 0 -> entries sys_enter put in `TG_ST_PENDING` and sys_exit has not taken yet (u64) | sys_enter (+1), sys_exit (-1) | sys_exit, first: 0 skips the syscall-number read and the stash lookup | 1 | fixed. A stash left by a thread that never reached sys_exit keeps it above 0, which only costs speed |
/// | `TG_FLOW_CACHE` | PERCPU_ARRAY[[`FLOW_CACHE_SLOTS`]] | slot -> [`FlowCacheSlot`] | cgroup_skb (each CPU its own slots) | collector, merged into `TG_CG_STATS`/`TG_FLOWS` (see [`FlowCacheSlot`]) | 64 per CPU | fixed; a slot taken by a busy flow sends other flows hashing to it down the map path |
/// | `TG_FC_GEN` | ARRAY[1] | 0 -> scope generation (u32) | agent, after a CIDR change | cgroup_skb: a slot cached under another generation is flushed and looked up again | 1 | fixed |
/// | `TG_ST_PENDING` | HASH | pid_tgid (u64) -> [`PendingIo`] | sys_enter (watched fds only) | sys_exit (lookup + delete) | 16384 (threads inside a watched read/write at once) | call not counted, [`Counter::StoragePendingFull`] += 1. A plain hash, not an LRU: the LRU's per-CPU free lists evict live entries under churn (measured: 0.5% of 100k tight-loop writes lost) |
pub mod map {
    pub const CGROUP_STATS: &str = "TG_CG_STATS";
    pub const FLOWS: &str = "TG_FLOWS";
    pub const CIDRS: &str = "TG_CIDRS";
    pub const CONN_SEEN: &str = "TG_CONN_SEEN";
    pub const CONN_EVENTS: &str = "TG_CONN_EVENTS";
    pub const COUNTERS: &str = "TG_COUNTERS";
    pub const STORAGE_STATS: &str = "TG_ST_STATS";
    pub const STORAGE_DEVS: &str = "TG_ST_DEVS";
    pub const STORAGE_MAGICS: &str = "TG_ST_MAGICS";
    pub const STORAGE_PENDING: &str = "TG_ST_PENDING";
    pub const QUARANTINE: &str = "TG_QUARANTINE";
    pub const QUARANTINE_GATE: &str = "TG_QGATE";
    pub const DNS_EVENTS: &str = "TG_DNS_EVENTS";
    pub const DNS_RATE: &str = "TG_DNS_RATE";
    pub const STRATUM_EVENTS: &str = "TG_STRATUM_EV";
    pub const JUMP: &str = "TG_JUMP";
    pub const IF_STATS: &str = "TG_IF_STATS";
    pub const IF_QUARANTINE: &str = "TG_IF_QUAR";
    pub const POLICY_CGROUPS: &str = "TG_POL_CG";
    pub const POLICY_GATE: &str = "TG_POL_GATE";
    pub const POLICY_ALLOW: &str = "TG_POL_ALLOW";
    pub const DENIED: &str = "TG_DENIED";
    pub const STORAGE_INFLIGHT: &str = "TG_ST_INFLIGHT";
    pub const FLOW_CACHE: &str = "TG_FLOW_CACHE";
    pub const FLOW_CACHE_GEN: &str = "TG_FC_GEN";

    /// Every map the agent pins, for pin management and `tollgate check`.
    pub const ALL: [&str; 25] = [
        CGROUP_STATS,
        FLOWS,
        CIDRS,
        CONN_SEEN,
        CONN_EVENTS,
        COUNTERS,
        STORAGE_STATS,
        STORAGE_DEVS,
        STORAGE_MAGICS,
        STORAGE_PENDING,
        QUARANTINE,
        QUARANTINE_GATE,
        DNS_EVENTS,
        DNS_RATE,
        STRATUM_EVENTS,
        JUMP,
        IF_STATS,
        IF_QUARANTINE,
        POLICY_CGROUPS,
        POLICY_GATE,
        POLICY_ALLOW,
        DENIED,
        STORAGE_INFLIGHT,
        FLOW_CACHE,
        FLOW_CACHE_GEN,
    ];

    pub const DEFAULT_CGROUP_STATS_ENTRIES: u32 = 4096;
    pub const DEFAULT_FLOW_ENTRIES: u32 = 16384;
    pub const DEFAULT_CIDR_ENTRIES: u32 = 1024;
    pub const DEFAULT_CONN_SEEN_ENTRIES: u32 = 65536;
    pub const DEFAULT_CONN_EVENTS_BYTES: u32 = 256 * 1024;
    pub const DEFAULT_STORAGE_STATS_ENTRIES: u32 = 4096;
    pub const DEFAULT_QUARANTINE_ENTRIES: u32 = 4096;
    pub const DEFAULT_STORAGE_DEV_ENTRIES: u32 = 4096;
    pub const DEFAULT_STORAGE_MAGIC_ENTRIES: u32 = 64;
    pub const DEFAULT_STORAGE_PENDING_ENTRIES: u32 = 16384;
    pub const DEFAULT_DNS_EVENTS_BYTES: u32 = 256 * 1024;
    pub const DEFAULT_DNS_RATE_ENTRIES: u32 = 16384;
    pub const DEFAULT_STRATUM_EVENTS_BYTES: u32 = 64 * 1024;
    pub const DEFAULT_IF_ENTRIES: u32 = 4096;
    pub const DEFAULT_POLICY_CGROUP_ENTRIES: u32 = 16384;
    pub const DEFAULT_POLICY_ALLOW_ENTRIES: u32 = 4096;
    pub const DEFAULT_DENIED_ENTRIES: u32 = 16384;
}

/// Program (function) names in the object file.
pub mod prog {
    pub const SKB_EGRESS: &str = "tg_skb_egress";
    pub const SKB_INGRESS: &str = "tg_skb_ingress";
    pub const CONNECT4: &str = "tg_connect4";
    pub const CONNECT6: &str = "tg_connect6";
    pub const SENDMSG4: &str = "tg_sendmsg4";
    pub const SENDMSG6: &str = "tg_sendmsg6";
    /// Benchmark baseline (one per-CPU array increment), egress and
    /// ingress. Attached only by `tollgate bench-floor`, for the
    /// benchmark's reference run, never by the agent.
    pub const BENCH_BASELINE: &str = "tg_bench_baseline";
    pub const BENCH_BASELINE_IN: &str = "tg_bench_baseline_in";
    /// Tail-called by the egress program (slot [`crate::JUMP_DNS`]):
    /// DNS query count and name sampling. Never attached.
    pub const SKB_DNS: &str = "tg_skb_dns";
    /// Tail-called by the egress program (slot [`crate::JUMP_STRATUM`]):
    /// stratum marker search. Never attached.
    pub const SKB_STRATUM: &str = "tg_skb_stratum";
    /// Raw tracepoint `sys_enter`: notes reads/writes on watched storage.
    pub const SYS_ENTER: &str = "tg_sys_enter";
    /// Raw tracepoint `sys_exit`: counts their results.
    pub const SYS_EXIT: &str = "tg_sys_exit";
    /// tc on a pod's host-side interface, host ingress: what the pod sends.
    pub const TC_FROM_POD: &str = "tg_tc_from_pod";
    /// tc on a pod's host-side interface, host egress: what the pod receives.
    pub const TC_TO_POD: &str = "tg_tc_to_pod";
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
    /// Packets dropped because the cgroup (or an ancestor) is quarantined;
    /// not counted in `egress`/`ingress`.
    pub quarantine_dropped: ByteCount,
    /// connect()/sendmsg() calls refused (EPERM) by quarantine or by the
    /// class's egress policy (details per destination in `TG_DENIED`).
    pub connects_denied: u64,
    /// DNS queries sent: egress UDP or TCP packets to port 53 whose DNS
    /// header is a standard query (QR 0, opcode 0, one question, no
    /// answers). Every query is either sampled (a [`DnsEvent`]) or counted
    /// in `dns_unsampled`.
    pub dns_queries: u64,
    /// Queries whose name was not sampled: over the rate limit, ring
    /// buffer full, or a question name the kernel does not decode
    /// (compression pointer, over-long, cut short).
    pub dns_unsampled: u64,
    /// Stratum JSON-RPC markers matched at the start of outbound TCP
    /// streams (one per matching packet).
    pub stratum_markers: u64,
    /// Stratum events that did not fit in the ring buffer (the markers are
    /// still counted above).
    pub stratum_dropped: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<CgroupStats>() == 160);

/// Value of `TG_QUARANTINE`: what is cut off for a cgroup and everything
/// below it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// Unix seconds when the quarantine began (for display and audit).
    pub since_unix: u64,
    /// [`QF_NETWORK`] | [`QF_CONNECT`].
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<QuarantineEntry>() == 16);

/// Drop every packet of the cgroup in the cgroup_skb hooks.
pub const QF_NETWORK: u32 = 1;
/// Refuse connect()/sendmsg() with EPERM so applications fail fast.
pub const QF_CONNECT: u32 = 2;

/// Deepest cgroup level the quarantine check walks (kubelet's deepest
/// layout is 4-5 levels below the root).
pub const MAX_CGROUP_DEPTH: u32 = 16;

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
    /// Egress packets since the cgroup last sent a TCP SYN to the peer
    /// (or since the flow was created): limits the stratum check to the
    /// start of a stream. Plain store, not atomic: an approximate count
    /// is enough for a window.
    pub tx_since_syn: u32,
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 56);

/// Slots per CPU in `TG_FLOW_CACHE` (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 64;
const _: () = assert!(FLOW_CACHE_SLOTS.is_power_of_two());

/// One slot of the per-CPU flow cache (`TG_FLOW_CACHE`): the counts of
/// one flow's recent packets on one CPU, not yet added to `TG_FLOWS` and
/// `TG_CG_STATS`. A packet whose flow owns its slot on the running CPU
/// costs a few plain adds instead of two hash updates; the first packet
/// of a flow (and any packet whose slot is taken by another recently
/// active flow) takes the map path, and the flow then takes the slot if
/// it is free or idle, adding the previous owner's counts to the maps.
///
/// True totals are the maps plus every CPU's slots. The collector reads
/// the slots, then the maps, then the slots again, and keeps a slot's
/// counts only if the slot was not reassigned in between
/// (`seq_lo == seq_hi` and unchanged in both reads); otherwise it reads
/// again. The writer bumps `seq_hi` (copied last by the kernel's
/// ascending copy) before it touches a slot's owner and sets `seq_lo`
/// (copied first) after, so a copy taken mid-change never matches.
/// Counting in place needs no seq change: each counter is one aligned
/// 8-byte store. `busy` keeps a program nested on the same CPU (softirq
/// over process context) off a slot that is being written: it takes the
/// map path instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot {
    pub seq_lo: u64,
    /// The flow; `cgroup_id` 0 for a slot never used.
    pub key: PeerKey,
    /// Counts not yet in the maps: sent (cgroup egress) and received
    /// (cgroup ingress), in the flow's scope.
    pub tx: ByteCount,
    pub rx: ByteCount,
    /// Jiffies of the last packet counted here (bpf_jiffies64: reading
    /// the coarse clock on every packet costs more than the rest of the
    /// cache hit). Its CLOCK_MONOTONIC_COARSE time is `base_ns +
    /// (last_jiffies - base_jiffies) * ns per jiffy` ([`JIFFY_NS_SYMBOL`]).
    pub last_jiffies: u64,
    /// Both clocks read together when the slot was filled.
    pub base_ns: u64,
    pub base_jiffies: u64,
    /// [`SCOPE_INTERNAL`] or [`SCOPE_EXTERNAL`].
    pub scope: u32,
    /// As [`FlowStats::tx_since_syn`], for packets counted here.
    pub tx_since_syn: u32,
    /// `TG_FC_GEN` when the slot was filled.
    pub gen_: u32,
    pub busy: u32,
    pub seq_hi: u64,
}
const _: () = assert!(core::mem::size_of::<FlowCacheSlot>() == 120);

/// Global (u64) the agent sets at load: nanoseconds per jiffy, the
/// resolution of CLOCK_MONOTONIC_COARSE (clock_getres). Converts
/// [`FlowCacheSlot::last_jiffies`] back to the flow's `last_seen_ns`.
pub const JIFFY_NS_SYMBOL: &str = "TG_JIFFY_NS";
/// Its value in the object (HZ = 250) until the agent sets it.
pub const DEFAULT_JIFFY_NS: u64 = 4_000_000;

impl FlowCacheSlot {
    /// CLOCK_MONOTONIC_COARSE ns of the last packet counted in the slot.
    pub const fn last_seen_ns(&self, jiffy_ns: u64) -> u64 {
        self.base_ns.wrapping_add(
            self.last_jiffies
                .wrapping_sub(self.base_jiffies)
                .wrapping_mul(jiffy_ns),
        )
    }
}

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
    /// Storage reads/writes counted under the overflow entry because
    /// `TG_ST_STATS` was full.
    StorageStatsFull = 6,
    /// Reads/writes whose fd could not be resolved to a super block
    /// (bpf_probe_read_kernel failed): not counted.
    StorageResolveFailed = 7,
    /// Reads/writes not counted because `TG_ST_PENDING` was full.
    StoragePendingFull = 8,
    /// DNS queries sent (all cgroups).
    DnsQueries = 9,
    /// DNS query names not sampled because the cgroup was over its rate.
    DnsSampleRateLimited = 10,
    /// DNS samples that did not fit in `TG_DNS_EVENTS`.
    DnsSampleDrops = 11,
    /// DNS queries whose question name the kernel did not decode
    /// (compression pointer, more than [`DNS_MAX_LABELS`] labels, longer
    /// than [`DNS_NAME_MAX`], or cut short).
    DnsNameUndecoded = 12,
    /// Stratum markers matched (all cgroups).
    StratumMarkers = 13,
    /// Stratum events that did not fit in `TG_STRATUM_EV`.
    StratumEventDrops = 14,
    /// Packets that should have been inspected for DNS or stratum but
    /// whose tail call failed (empty `TG_JUMP` slot): not inspected.
    SignalJumpFailed = 15,
    /// Frames on pod interfaces not counted because `TG_IF_STATS` was full.
    IfStatsFull = 16,
    /// Flow-cache slots (re)assigned to a flow; the previous flow's
    /// cached counts were added to the maps.
    FlowCacheFills = 17,
}

impl Counter {
    pub const ALL: [Counter; 18] = [
        Counter::RingbufDrops,
        Counter::FlowsCreated,
        Counter::FlowCreateFailed,
        Counter::CgroupStatsFull,
        Counter::Malformed,
        Counter::FlowsDeletedByAgent,
        Counter::StorageStatsFull,
        Counter::StorageResolveFailed,
        Counter::StoragePendingFull,
        Counter::DnsQueries,
        Counter::DnsSampleRateLimited,
        Counter::DnsSampleDrops,
        Counter::DnsNameUndecoded,
        Counter::StratumMarkers,
        Counter::StratumEventDrops,
        Counter::SignalJumpFailed,
        Counter::IfStatsFull,
        Counter::FlowCacheFills,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Counter::RingbufDrops => "ringbuf_drops",
            Counter::FlowsCreated => "flows_created",
            Counter::FlowCreateFailed => "flow_create_failed",
            Counter::CgroupStatsFull => "cgroup_stats_full",
            Counter::Malformed => "malformed_packets",
            Counter::FlowsDeletedByAgent => "flows_deleted_by_agent",
            Counter::StorageStatsFull => "storage_stats_full",
            Counter::StorageResolveFailed => "storage_resolve_failed",
            Counter::StoragePendingFull => "storage_pending_full",
            Counter::DnsQueries => "dns_queries",
            Counter::DnsSampleRateLimited => "dns_sample_rate_limited",
            Counter::DnsSampleDrops => "dns_sample_drops",
            Counter::DnsNameUndecoded => "dns_name_undecoded",
            Counter::StratumMarkers => "stratum_markers",
            Counter::StratumEventDrops => "stratum_event_drops",
            Counter::SignalJumpFailed => "signal_jump_failed",
            Counter::IfStatsFull => "if_stats_full",
            Counter::FlowCacheFills => "flow_cache_fills",
        }
    }
}

/// Size of `TG_COUNTERS`; room to grow without an ABI bump.
pub const COUNTER_SLOTS: u32 = 32;
const _: () = assert!(Counter::ALL.len() as u32 <= COUNTER_SLOTS);

/// Direction of a storage key: bytes the cgroup wrote to the file system.
pub const STORAGE_WRITE: u32 = 0;
/// Direction of a storage key: bytes the cgroup read from the file system.
pub const STORAGE_READ: u32 = 1;

/// Key of `TG_ST_STATS`: one cgroup, one watched device, one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey {
    pub cgroup_id: u64,
    /// Kernel dev_t of the super block (`major << 20 | minor`, as
    /// `super_block.s_dev` holds it).
    pub dev: u32,
    /// [`STORAGE_WRITE`] or [`STORAGE_READ`].
    pub dir: u32,
}
const _: () = assert!(core::mem::size_of::<StorageKey>() == 16);

/// Value of `TG_ST_STATS` (per CPU; userspace sums the CPUs): the sum of
/// the positive results of the calls, and the number of such calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCount {
    pub bytes: u64,
    pub calls: u64,
}
const _: () = assert!(core::mem::size_of::<IoCount>() == 16);

/// [`PendingIo::flags`]: `write_dev` is set.
pub const PENDING_WRITE: u32 = 1;
/// [`PendingIo::flags`]: `read_dev` is set.
pub const PENDING_READ: u32 = 2;

/// Value of `TG_ST_PENDING`: what sys_enter found for a thread's call on
/// a watched device, consumed by the same thread's sys_exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingIo {
    /// Device written to (the out fd of copy_file_range/sendfile/splice).
    pub write_dev: u32,
    /// Device read from (the in fd of copy_file_range/sendfile/splice).
    pub read_dev: u32,
    /// Syscall number at entry; sys_exit counts only when it matches.
    pub syscall: u32,
    /// [`PENDING_WRITE`] | [`PENDING_READ`].
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<PendingIo>() == 16);

/// Kernel struct offsets, read by the agent from the running kernel's BTF
/// (/sys/kernel/btf/vmlinux) and set as the read-only global
/// [`KERNEL_OFFSETS_SYMBOL`] before loading. `enabled == 0` (the default
/// in the object) turns the storage programs into no-ops. All offsets in
/// bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub enabled: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `inode.i_mode` (u16): only regular files are storage I/O.
    pub inode_mode: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `super_block.s_magic`
    pub sb_magic: u32,
    /// `pt_regs` fields holding syscall arguments 0..6 (x86_64: di, si,
    /// dx, r10, r8, r9).
    pub regs_arg: [u32; 6],
    /// `pt_regs.orig_ax`: the syscall number at sys_exit.
    pub regs_syscall: u32,
    /// `files_struct.fdtab`: the fd table embedded in `files_struct`,
    /// used until a process has more fds than it holds (64). When it
    /// directly follows `files_struct.fdt`, one read fetches the table
    /// pointer and the embedded table together.
    pub files_fdtab: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 72);

/// Symbol of the [`KernelOffsets`] global in the object.
pub const KERNEL_OFFSETS_SYMBOL: &str = "TG_KOFFS";

/// x86_64 syscall numbers the storage programs follow (arch/x86/entry/
/// syscalls/syscall_64.tbl; stable ABI). Other architectures: storage
/// accounting is off.
pub mod syscall {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const PREAD64: u64 = 17;
    pub const PWRITE64: u64 = 18;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SPLICE: u64 = 275;
    pub const PREADV: u64 = 295;
    pub const PWRITEV: u64 = 296;
    pub const COPY_FILE_RANGE: u64 = 326;
    pub const PREADV2: u64 = 327;
    pub const PWRITEV2: u64 = 328;

    /// Which arguments hold the fd written to and the fd read from, as
    /// `(write_arg + 1) | (read_arg + 1) << 8` (0 in a byte: none); 0 when
    /// `nr` is not followed. (Plain integers: LLVM may leave the payload
    /// of a `None` uninitialised, which the verifier rejects.)
    #[inline(always)]
    pub const fn fd_args(nr: u64) -> u32 {
        const W0: u32 = 1;
        const R0: u32 = 1 << 8;
        match nr {
            WRITE | PWRITE64 | WRITEV | PWRITEV | PWRITEV2 => W0,
            READ | PREAD64 | READV | PREADV | PREADV2 => R0,
            // copy_file_range(fd_in, off_in, fd_out, ...), splice likewise.
            COPY_FILE_RANGE | SPLICE => 3 | R0,
            // sendfile(out_fd, in_fd, ...)
            SENDFILE => W0 | 2 << 8,
            _ => 0,
        }
    }
}

/// Super block magics (include/uapi/linux/magic.h) counted even before the
/// agent has seen the mount in mountinfo: the default watched types whose
/// magic is theirs alone. (FUSE types share FUSE_SUPER_MAGIC, so they are
/// watched by device only.)
pub const CEPH_SUPER_MAGIC: u64 = 0x00c3_6400;
pub const NFS_SUPER_MAGIC: u64 = 0x6969;

/// IPv4-mapped IPv6 address for an IPv4 address given as its 4 bytes.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Value of `TG_IF_STATS` (per CPU; userspace sums the CPUs): traffic of
/// one pod interface as the tc programs on its host-side end see it, named
/// from the pod's side. Bytes are L3 bytes (frame length minus the 14-byte
/// Ethernet header) of IPv4/IPv6 frames, comparable with the cgroup
/// counters; a GSO super-packet counts as one packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfStats {
    /// Sent by the pod (tc ingress of the host-side end).
    pub pod_egress: ByteCount,
    /// Received by the pod (tc egress of the host-side end).
    pub pod_ingress: ByteCount,
    /// Frames from the pod dropped because the interface is quarantined
    /// (any protocol; not in `pod_egress`).
    pub dropped_egress: ByteCount,
    /// Frames to the pod dropped because the interface is quarantined.
    pub dropped_ingress: ByteCount,
    /// Non-IP frames (ARP, ...) passed, either direction: packets only.
    pub other_frames: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<IfStats>() == 80);

/// Value of `TG_IF_QUAR`: a quarantined pod interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfQuarantine {
    /// The quarantined cgroup whose pod owns the interface.
    pub cgroup_id: u64,
    /// Unix seconds when the quarantine began.
    pub since_unix: u64,
}
const _: () = assert!(core::mem::size_of::<IfQuarantine>() == 16);

/// Ethernet header length: tc sees frames, the counters hold L3 bytes.
pub const ETH_HLEN: u32 = 14;

/// Data part of a `TG_POL_ALLOW` key (the kernel prepends the prefix
/// length): the policy id (big endian, always matched in full: prefix
/// length = 32 + the address prefix) then the address, IPv4 as
/// IPv4-mapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyAddr {
    pub policy: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PolicyAddr>() == 20);

/// Prefix bits of the policy id in a [`PolicyAddr`] key.
pub const POLICY_ID_BITS: u32 = 32;

/// Inclusive destination port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}
const _: () = assert!(core::mem::size_of::<PortRange>() == 4);

/// Most port ranges per allowlist entry.
pub const MAX_ALLOW_PORTS: usize = 8;

/// Value of `TG_POL_ALLOW`: what the longest matching prefix allows.
/// `count == 0`: every port and protocol. Otherwise only TCP/UDP/SCTP/
/// UDP-Lite destinations whose port is in one of the first `count`
/// ranges. The agent folds the ports of shorter covering prefixes into
/// each entry, because the trie returns only the longest match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowPorts {
    pub ranges: [PortRange; MAX_ALLOW_PORTS],
    pub count: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AllowPorts>() == 40);

/// Value of `TG_DENIED`: what an egress policy refused for one (cgroup,
/// destination address, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedStats {
    /// connect()/sendmsg() calls refused with EPERM.
    pub calls: u64,
    /// Packets dropped in cgroup_skb egress (raw and ICMP sockets,
    /// sockets connected before the policy applied).
    pub dropped: ByteCount,
    /// CLOCK_MONOTONIC_COARSE nanoseconds.
    pub first_ns: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<DeniedStats>() == 40);
