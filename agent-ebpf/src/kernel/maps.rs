//! Map definitions. Names, layouts, sizes and the who-writes/who-reads table
//! are in the ABI crate (`tollgate_ebpf::map`); sizes here are defaults the
//! agent overrides from config at load time. All maps are pinned by name so
//! counters survive agent restarts.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tollgate_ebpf::{
    COUNTER_SLOTS, CgroupStats, CidrInfo, DnsRate, FlowStats, IoCount, LpmAddr, PeerKey, PendingIo,
    QuarantineEntry, Scratch, StorageKey,
    map::DEFAULT_QUARANTINE_ENTRIES,
    map::{
        DEFAULT_CGROUP_STATS_ENTRIES, DEFAULT_CIDR_ENTRIES, DEFAULT_CONN_EVENTS_BYTES,
        DEFAULT_CONN_SEEN_ENTRIES, DEFAULT_FLOW_ENTRIES, DEFAULT_STORAGE_DEV_ENTRIES,
        DEFAULT_STORAGE_MAGIC_ENTRIES, DEFAULT_STORAGE_PENDING_ENTRIES,
        DEFAULT_STORAGE_STATS_ENTRIES,
    },
    map::{DEFAULT_DNS_EVENTS_BYTES, DEFAULT_DNS_RATE_ENTRIES, DEFAULT_STRATUM_EVENTS_BYTES},
};

#[map(name = "TG_CG_STATS")]
pub static CG_STATS: PerCpuHashMap<u64, CgroupStats> =
    PerCpuHashMap::pinned(DEFAULT_CGROUP_STATS_ENTRIES, 0);

#[map(name = "TG_FLOWS")]
pub static FLOWS: LruHashMap<PeerKey, FlowStats> = LruHashMap::pinned(DEFAULT_FLOW_ENTRIES, 0);

#[map(name = "TG_CIDRS")]
pub static CIDRS: LpmTrie<LpmAddr, CidrInfo> = LpmTrie::pinned(DEFAULT_CIDR_ENTRIES, 0);

#[map(name = "TG_CONN_SEEN")]
pub static CONN_SEEN: LruHashMap<PeerKey, u64> = LruHashMap::pinned(DEFAULT_CONN_SEEN_ENTRIES, 0);

#[map(name = "TG_CONN_EVENTS")]
pub static CONN_EVENTS: RingBuf = RingBuf::pinned(DEFAULT_CONN_EVENTS_BYTES, 0);

#[map(name = "TG_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[map(name = "TG_ST_STATS")]
pub static ST_STATS: PerCpuHashMap<StorageKey, IoCount> =
    PerCpuHashMap::pinned(DEFAULT_STORAGE_STATS_ENTRIES, 0);

#[map(name = "TG_ST_DEVS")]
pub static ST_DEVS: HashMap<u32, u32> = HashMap::pinned(DEFAULT_STORAGE_DEV_ENTRIES, 0);

#[map(name = "TG_ST_MAGICS")]
pub static ST_MAGICS: HashMap<u64, u32> = HashMap::pinned(DEFAULT_STORAGE_MAGIC_ENTRIES, 0);

#[map(name = "TG_ST_INFLIGHT")]
pub static ST_INFLIGHT: aya_ebpf::maps::Array<u64> = aya_ebpf::maps::Array::pinned(1, 0);

#[map(name = "TG_ST_PENDING")]
pub static ST_PENDING: HashMap<u64, PendingIo> =
    HashMap::pinned(DEFAULT_STORAGE_PENDING_ENTRIES, 0);

/// Benchmark-only counter of `tg_bench_baseline` (not pinned).
#[map(name = "TG_BENCH")]
pub static BENCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "TG_QUARANTINE")]
pub static QUARANTINE: aya_ebpf::maps::HashMap<u64, QuarantineEntry> =
    aya_ebpf::maps::HashMap::pinned(DEFAULT_QUARANTINE_ENTRIES, 0);

#[map(name = "TG_QGATE")]
pub static QGATE: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::pinned(1, 0);

#[map(name = "TG_JUMP")]
pub static JUMP: aya_ebpf::maps::ProgramArray =
    aya_ebpf::maps::ProgramArray::pinned(tollgate_ebpf::JUMP_SLOTS, 0);

#[map(name = "TG_DNS_EVENTS")]
pub static DNS_EVENTS: RingBuf = RingBuf::pinned(DEFAULT_DNS_EVENTS_BYTES, 0);

#[map(name = "TG_DNS_RATE")]
pub static DNS_RATE: LruPerCpuHashMap<u64, DnsRate> =
    LruPerCpuHashMap::pinned(DEFAULT_DNS_RATE_ENTRIES, 0);

#[map(name = "TG_STRATUM_EV")]
pub static STRATUM_EVENTS: RingBuf = RingBuf::pinned(DEFAULT_STRATUM_EVENTS_BYTES, 0);

/// Per-CPU scratch for the stratum check's payload prefix (too large for
/// the BPF stack). Not pinned: nothing outside one program run reads it.
#[map(name = "TG_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "TG_IF_STATS")]
pub static IF_STATS: PerCpuHashMap<u32, tollgate_ebpf::IfStats> =
    PerCpuHashMap::pinned(tollgate_ebpf::map::DEFAULT_IF_ENTRIES, 0);

#[map(name = "TG_IF_QUAR")]
pub static IF_QUAR: HashMap<u32, tollgate_ebpf::IfQuarantine> =
    HashMap::pinned(tollgate_ebpf::map::DEFAULT_IF_ENTRIES, 0);

#[map(name = "TG_POL_CG")]
pub static POL_CG: HashMap<u64, u32> =
    HashMap::pinned(tollgate_ebpf::map::DEFAULT_POLICY_CGROUP_ENTRIES, 0);

#[map(name = "TG_POL_GATE")]
pub static POL_GATE: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::pinned(1, 0);

#[map(name = "TG_POL_ALLOW")]
pub static POL_ALLOW: LpmTrie<tollgate_ebpf::PolicyAddr, tollgate_ebpf::AllowPorts> =
    LpmTrie::pinned(tollgate_ebpf::map::DEFAULT_POLICY_ALLOW_ENTRIES, 0);

#[map(name = "TG_DENIED")]
pub static DENIED: LruHashMap<PeerKey, tollgate_ebpf::DeniedStats> =
    LruHashMap::pinned(tollgate_ebpf::map::DEFAULT_DENIED_ENTRIES, 0);

/// Per-CPU flow cache in front of `TG_FLOWS` and `TG_CG_STATS`; pinned:
/// its counts are part of the totals and must survive a restart.
#[map(name = "TG_FLOW_CACHE")]
pub static FLOW_CACHE: PerCpuArray<tollgate_ebpf::FlowCacheSlot> =
    PerCpuArray::pinned(tollgate_ebpf::FLOW_CACHE_SLOTS, 0);

#[map(name = "TG_FC_GEN")]
pub static FC_GEN: aya_ebpf::maps::Array<u32> = aya_ebpf::maps::Array::pinned(1, 0);
