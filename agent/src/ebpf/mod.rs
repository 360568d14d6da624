//! Loading, attaching and pinning the kernel programs, and typed access to
//! their maps. The only module of the agent allowed to use `unsafe` (in
//! `sys`, for the bpf(2) commands aya 0.14 does not wrap).
//!
//! Pin layout (`P` = `agent.pin_dir`, default /sys/fs/bpf/tollgate):
//! - `P/v{ABI}/maps/<MAP>`: every map, reused on restart so counters
//!   continue;
//! - `P/v{ABI}/links/<program>`: the cgroup links. On restart the agent
//!   swaps the new program into the pinned link (BPF_LINK_UPDATE): the hook
//!   is never empty and never runs twice, so nothing is lost or counted
//!   twice, and the kernel keeps counting while the agent is down.
//! - `P/v{ABI}/links/tg_sys_enter`, `tg_sys_exit`: the storage raw
//!   tracepoint links. Raw tracepoint links cannot swap programs
//!   (BPF_LINK_UPDATE is not implemented for them), so on restart the new
//!   program is attached first and its link renamed over the old pin,
//!   which detaches the old one. For the microseconds both run, sys_exit
//!   deduplicates: only the program that deletes a thread's pending entry
//!   counts it.

pub mod btf;
pub mod flowcache;
pub mod policy;
pub mod signals;
pub mod stale;
pub mod sys;
pub mod tc;

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap as _, LpmTrie, MapData, MapInfo, MapType, PerCpuArray,
        PerCpuHashMap, PerCpuValues, lpm_trie::Key,
    },
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, Program, RawTracePoint,
        links::FdLink,
    },
};
use ipnet::IpNet;
use tollgate_ebpf::{
    ABI_VERSION, CEPH_SUPER_MAGIC, CGROUP_OVERFLOW, COUNTER_SLOTS, CgroupStats, CidrInfo,
    ConnEvent, Counter, FlowStats, IoCount, KERNEL_OFFSETS_SYMBOL, KernelOffsets, LpmAddr,
    NFS_SUPER_MAGIC, PeerKey, PendingIo, SCOPE_EXTERNAL, SCOPE_INTERNAL, STORAGE_READ,
    STORAGE_WRITE, StorageKey, map, prog,
};

use crate::config::MapConfig;

/// The compiled kernel object, embedded at build time by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "{path} is not a bpf filesystem and mounting one there failed: {source}. Mount it (`mount -t bpf bpf /sys/fs/bpf`) or run the agent with CAP_SYS_ADMIN"
    )]
    Bpffs { path: PathBuf, source: io::Error },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "loading the Tollgate eBPF object failed: {0}. Run `tollgate check` to see which kernel feature is missing"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "pinned map {path} is a {found}, this agent expects a {expected}: it was left by an incompatible build. Remove {dir} (counters restart from zero) and start again"
    )]
    PinMismatch {
        path: PathBuf,
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("program {name} missing from the eBPF object (build mismatch)")]
    MissingProgram { name: &'static str },
    #[error("map {name} missing from the eBPF object (build mismatch)")]
    MissingMap { name: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning link {path}: {source}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
}

/// `BPF_NOEXIST` map update flag.
const BPF_NOEXIST: u64 = 1;

fn link_err(name: &'static str, e: aya::programs::links::LinkError) -> DataplaneError {
    DataplaneError::Io {
        what: "converting link of",
        path: PathBuf::from(name),
        source: io::Error::other(e.to_string()),
    }
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        name,
        source: Box::new(source),
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program {
        name,
        source: Box::new(source),
    }
}

/// Where the pins of this ABI version live.
#[derive(Debug, Clone)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{ABI_VERSION}"))
    }
    pub fn maps(&self) -> PathBuf {
        self.versioned().join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.versioned().join("links")
    }
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }
}

/// Which hook a program goes to.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Skb(CgroupSkbAttachType),
    SockAddr,
}

/// Every cgroup program, in attach order.
const PROGRAMS: [(&str, Hook); 6] = [
    (prog::SKB_EGRESS, Hook::Skb(CgroupSkbAttachType::Egress)),
    (prog::SKB_INGRESS, Hook::Skb(CgroupSkbAttachType::Ingress)),
    (prog::CONNECT4, Hook::SockAddr),
    (prog::CONNECT6, Hook::SockAddr),
    (prog::SENDMSG4, Hook::SockAddr),
    (prog::SENDMSG6, Hook::SockAddr),
];

/// Expected (type, key size, value size) of each map, to refuse pins left
/// by an incompatible build before the kernel is handed them.
fn expected_layout(name: &str) -> Option<(MapType, u32, u32)> {
    use std::mem::size_of;
    Some(match name {
        map::CGROUP_STATS => (MapType::PerCpuHash, 8, size_of::<CgroupStats>() as u32),
        map::FLOWS => (
            MapType::LruHash,
            size_of::<PeerKey>() as u32,
            size_of::<FlowStats>() as u32,
        ),
        map::CIDRS => (
            MapType::LpmTrie,
            4 + size_of::<LpmAddr>() as u32,
            size_of::<CidrInfo>() as u32,
        ),
        map::CONN_SEEN => (MapType::LruHash, size_of::<PeerKey>() as u32, 8),
        map::CONN_EVENTS => (MapType::RingBuf, 0, 0),
        map::COUNTERS => (MapType::PerCpuArray, 4, 8),
        map::STORAGE_STATS => (
            MapType::PerCpuHash,
            size_of::<StorageKey>() as u32,
            size_of::<IoCount>() as u32,
        ),
        map::STORAGE_DEVS => (MapType::Hash, 4, 4),
        map::STORAGE_MAGICS => (MapType::Hash, 8, 4),
        map::STORAGE_PENDING => (MapType::Hash, 8, size_of::<PendingIo>() as u32),
        map::QUARANTINE => (
            MapType::Hash,
            8,
            size_of::<tollgate_ebpf::QuarantineEntry>() as u32,
        ),
        map::QUARANTINE_GATE | map::FLOW_CACHE_GEN => (MapType::Array, 4, 4),
        map::FLOW_CACHE => (
            MapType::PerCpuArray,
            4,
            size_of::<tollgate_ebpf::FlowCacheSlot>() as u32,
        ),
        map::DNS_EVENTS | map::STRATUM_EVENTS => (MapType::RingBuf, 0, 0),
        map::JUMP => (MapType::ProgramArray, 4, 4),
        map::DNS_RATE => (
            MapType::LruPerCpuHash,
            8,
            size_of::<tollgate_ebpf::DnsRate>() as u32,
        ),
        map::IF_STATS => (
            MapType::PerCpuHash,
            4,
            size_of::<tollgate_ebpf::IfStats>() as u32,
        ),
        map::IF_QUARANTINE => (
            MapType::Hash,
            4,
            size_of::<tollgate_ebpf::IfQuarantine>() as u32,
        ),
        map::POLICY_CGROUPS => (MapType::Hash, 8, 4),
        map::POLICY_GATE => (MapType::Array, 4, 4),
        map::STORAGE_INFLIGHT => (MapType::Array, 4, 8),
        map::POLICY_ALLOW => (
            MapType::LpmTrie,
            4 + size_of::<tollgate_ebpf::PolicyAddr>() as u32,
            size_of::<tollgate_ebpf::AllowPorts>() as u32,
        ),
        map::DENIED => (
            MapType::LruHash,
            size_of::<PeerKey>() as u32,
            size_of::<tollgate_ebpf::DeniedStats>() as u32,
        ),
        _ => return None,
    })
}

/// Makes sure `dir`'s filesystem is bpffs, mounting one at /sys/fs/bpf if
/// nothing is mounted there (some hosts do not mount it).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    // Walk up to the closest existing ancestor to ask its filesystem.
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    let on_bpffs = sys::is_bpffs(&probe).map_err(|source| DataplaneError::Io {
        what: "statfs",
        path: probe.clone(),
        source,
    })?;
    if on_bpffs {
        return Ok(());
    }
    if dir.starts_with(mount_point) && !sys::is_bpffs(mount_point).unwrap_or(false) {
        tracing::info!(path = %mount_point.display(), "bpffs not mounted; mounting it");
        sys::mount_bpffs(mount_point).map_err(|source| DataplaneError::Bpffs {
            path: mount_point.to_path_buf(),
            source,
        })?;
        return Ok(());
    }
    Err(DataplaneError::Bpffs {
        path: dir.to_path_buf(),
        source: io::Error::other("not on a bpf filesystem"),
    })
}

/// The cgroup directory programs are attached to.
fn open_cgroup(cgroup: &Path) -> Result<File> {
    File::open(cgroup).map_err(|source| DataplaneError::Io {
        what: "opening cgroup",
        path: cgroup.to_owned(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| DataplaneError::Io {
        what: "creating directory",
        path: path.to_owned(),
        source,
    })
}

/// Refuses pinned maps whose layout differs from this build's.
fn check_pins(pins: &PinDir) -> Result<()> {
    for name in map::ALL {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(map_err(map_name(name)))?;
        let (ty, k, v) = expected_layout(name).expect("every map has a layout");
        let found_ty = info.map_type().map_err(map_err(map_name(name)))?;
        let (fk, fv) = if ty == MapType::RingBuf {
            (0, 0)
        } else {
            (info.key_size(), info.value_size())
        };
        if found_ty != ty || fk != k || fv != v {
            return Err(DataplaneError::PinMismatch {
                path,
                dir: pins.versioned(),
                found: format!("{found_ty:?} key {fk} value {fv}"),
                expected: format!("{ty:?} key {k} value {v}"),
            });
        }
    }
    Ok(())
}

/// Static name for error messages.
fn map_name(name: &str) -> &'static str {
    map::ALL
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("unknown map")
}

/// Options for [`Dataplane::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub pins: PinDir,
    pub maps: MapConfig,
    /// (network, internal?) pairs for the scope trie.
    pub cidrs: Vec<(IpNet, bool)>,
    /// Load the storage programs (`storage.enabled`).
    pub storage: bool,
    /// `storage.stats_entries`.
    pub storage_stats_entries: u32,
    /// Kernel BTF for the storage programs' offsets.
    pub storage_btf: PathBuf,
}

impl LoadOptions {
    /// The options `config` asks for, with pins under `pins`.
    pub fn from_config(config: &crate::config::Config, pins: PinDir) -> Self {
        Self {
            pins,
            maps: config.maps.clone(),
            cidrs: config.cidr_table(),
            storage: config.storage.enabled,
            storage_stats_entries: config.storage.stats_entries,
            storage_btf: config.storage.btf.clone(),
        }
    }
}

/// Whether storage accounting runs, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageStatus {
    Active,
    /// Switched off in the config.
    Disabled,
    /// The kernel or architecture lacks what it needs; the reason.
    Unavailable(String),
}

impl std::fmt::Display for StorageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Active => f.write_str("active"),
            Self::Disabled => f.write_str("disabled (storage.enabled = false)"),
            Self::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// The storage programs' kernel offsets from the running kernel's BTF, or
/// why storage accounting cannot run here.
pub fn storage_offsets(btf_path: &Path) -> Result<KernelOffsets, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err(format!(
            "syscall argument decoding is implemented for x86_64 only (this is {})",
            std::env::consts::ARCH
        ));
    }
    btf::Btf::from_file(btf_path)
        .and_then(|b| b.kernel_offsets())
        .map_err(|e| e.to_string())
}

/// The loaded programs and their maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pub pins: PinDir,
    pub storage: StorageStatus,
    /// Program types switched off by `kernel.disable`.
    kernel: crate::kernel::KernelConfig,
}

impl Dataplane {
    /// Loads the object, creating or reusing the pinned maps, seeds the
    /// overflow slot and the CIDR trie. Nothing is attached yet.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        Self::load_with(opts, &crate::kernel::KernelConfig::default())
    }

    /// [`Dataplane::load`] without the program types `kernel` disables:
    /// they are neither loaded nor (in [`Dataplane::attach`]) attached.
    pub fn load_with(opts: &LoadOptions, kernel: &crate::kernel::KernelConfig) -> Result<Self> {
        use crate::kernel::ProgramType;
        ensure_bpffs(&opts.pins.root)?;
        crate::ebpf::stale::remove_stale_versions(&opts.pins.root);
        mkdir(&opts.pins.maps())?;
        mkdir(&opts.pins.links())?;
        check_pins(&opts.pins)?;
        let maps_dir = opts.pins.maps();
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(map::CGROUP_STATS, opts.maps.cgroup_stats_entries)
            .map_max_entries(map::FLOWS, opts.maps.flow_entries)
            .map_max_entries(map::CONN_SEEN, opts.maps.conn_seen_entries)
            .map_max_entries(map::CONN_EVENTS, opts.maps.conn_events_bytes)
            .map_max_entries(map::STORAGE_STATS, opts.storage_stats_entries)
            .map_max_entries(map::DNS_EVENTS, opts.maps.dns_events_bytes)
            .map_max_entries(map::DNS_RATE, opts.maps.dns_rate_entries)
            .map_max_entries(map::STRATUM_EVENTS, opts.maps.stratum_events_bytes);
        let signal_config = opts.maps.signal_config();
        loader.override_global(tollgate_ebpf::SIGNAL_CONFIG_SYMBOL, &signal_config, true);
        let jiffy_ns = sys::jiffy_ns();
        loader.override_global(tollgate_ebpf::JIFFY_NS_SYMBOL, &jiffy_ns, true);
        let mut storage = if kernel.disabled(ProgramType::RawTracepoint) {
            Err(StorageStatus::Unavailable(
                "program type raw_tracepoint disabled by kernel.disable".into(),
            ))
        } else if opts.storage {
            match storage_offsets(&opts.storage_btf) {
                Ok(o) => Ok(o),
                Err(why) => Err(StorageStatus::Unavailable(why)),
            }
        } else {
            Err(StorageStatus::Disabled)
        };
        if let Ok(o) = &storage {
            loader.override_global(KERNEL_OFFSETS_SYMBOL, o, true);
        }
        let ebpf = loader
            .load(OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let mut dp = Self {
            ebpf,
            pins: opts.pins.clone(),
            storage: StorageStatus::Disabled,
            kernel: kernel.clone(),
        };
        dp.seed_overflow()?;
        dp.set_cidrs(&opts.cidrs)?;
        for (name, hook) in PROGRAMS {
            if dp.hook_enabled(hook) {
                dp.load_program(name, hook)?;
            }
        }
        dp.load_signal_programs()?;
        if !kernel.disabled(ProgramType::SchedCls) {
            dp.load_tc()?;
        }
        if storage.is_ok()
            && let Err(e) = dp.load_storage()
        {
            storage = Err(StorageStatus::Unavailable(format!(
                "loading the raw tracepoint programs failed: {e}"
            )));
        }
        dp.storage = match storage {
            Ok(_) => StorageStatus::Active,
            Err(s) => s,
        };
        if let StorageStatus::Unavailable(why) = &dp.storage {
            tracing::warn!(reason = %why, "storage accounting unavailable; network accounting runs without it");
        }
        Ok(dp)
    }

    /// Loads sys_enter/sys_exit and fills the magic filter.
    fn load_storage(&mut self) -> Result<()> {
        for name in [prog::SYS_ENTER, prog::SYS_EXIT] {
            let p: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?
                .try_into()
                .map_err(prog_err(name))?;
            p.load().map_err(prog_err(name))?;
        }
        let mut magics: HashMap<_, u64, u32> =
            HashMap::try_from(self.map_mut(map::STORAGE_MAGICS)?)
                .map_err(map_err(map::STORAGE_MAGICS))?;
        for m in [CEPH_SUPER_MAGIC, NFS_SUPER_MAGIC] {
            magics
                .insert(m, 1, 0)
                .map_err(map_err(map::STORAGE_MAGICS))?;
        }
        self.seed_storage_inflight()?;
        self.seed_storage_overflow()
    }

    /// Stashes pinned by an agent whose programs predate `TG_ST_INFLIGHT`
    /// (or a count lost with its pin) would be skipped by sys_exit while
    /// the count reads 0: start it at the number of stashes found. One
    /// that never completes only keeps sys_exit on its slower path.
    fn seed_storage_inflight(&mut self) -> Result<()> {
        let pending = {
            let m: HashMap<_, u64, PendingIo> =
                HashMap::try_from(self.map_mut(map::STORAGE_PENDING)?)
                    .map_err(map_err(map::STORAGE_PENDING))?;
            m.keys().filter(|k| k.is_ok()).count() as u64
        };
        let mut gate: Array<_, u64> = Array::try_from(self.map_mut(map::STORAGE_INFLIGHT)?)
            .map_err(map_err(map::STORAGE_INFLIGHT))?;
        let now = gate.get(&0, 0).map_err(map_err(map::STORAGE_INFLIGHT))?;
        if now < pending {
            gate.set(0, pending, 0)
                .map_err(map_err(map::STORAGE_INFLIGHT))?;
        }
        Ok(())
    }

    /// The storage overflow entries (one per direction) must exist before
    /// the hooks run: a full map cannot create them.
    fn seed_storage_overflow(&mut self) -> Result<()> {
        let keys = [STORAGE_WRITE, STORAGE_READ].map(|dir| StorageKey {
            cgroup_id: CGROUP_OVERFLOW,
            dev: 0,
            dir,
        });
        self.seed_zero::<StorageKey, IoCount>(map::STORAGE_STATS, &keys)
    }

    /// Inserts all-zero per-CPU values under those of `keys` that the
    /// per-CPU hash map `name` lacks (kept when present: the pins carry
    /// counts across restarts).
    fn seed_zero<K: aya::Pod, V: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        keys: &[K],
    ) -> Result<()> {
        let ncpu = aya::util::nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: "reading possible CPUs",
            path: PathBuf::from(what),
            source,
        })?;
        let mut m: PerCpuHashMap<_, K, V> =
            PerCpuHashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for key in keys {
            if m.get(key, 0).is_ok() {
                continue;
            }
            let zero = PerCpuValues::try_from(vec![V::default(); ncpu]).map_err(|source| {
                DataplaneError::Io {
                    what: "per-CPU values",
                    path: PathBuf::new(),
                    source,
                }
            })?;
            m.insert(key, zero, BPF_NOEXIST).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Attaches the storage raw tracepoints (sys_exit first, so every
    /// pending entry sys_enter makes has its consumer) and pins their
    /// links, replacing links pinned by an earlier agent (see the module
    /// docs). No-op unless storage accounting is active.
    pub fn attach_storage(&mut self) -> Result<()> {
        if self.storage != StorageStatus::Active {
            return Ok(());
        }
        for (name, tp) in [(prog::SYS_EXIT, "sys_exit"), (prog::SYS_ENTER, "sys_enter")] {
            let p: &mut RawTracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?
                .try_into()
                .map_err(prog_err(name))?;
            let id = p.attach(tp).map_err(prog_err(name))?;
            let link: FdLink = p.take_link(id).map_err(prog_err(name))?.into();
            let pin = self.pins.links().join(name);
            // bpffs refuses names with dots.
            let tmp = self.pins.links().join(format!("{name}_new"));
            let _ = std::fs::remove_file(&tmp);
            let pinned = link.pin(&tmp).map_err(|source| DataplaneError::PinLink {
                path: tmp.clone(),
                source: Box::new(source),
            })?;
            let replaced = pin.exists();
            std::fs::rename(&tmp, &pin).map_err(|source| DataplaneError::Io {
                what: "renaming link pin to",
                path: pin.clone(),
                source,
            })?;
            // The pin (now at `pin`) keeps the link; dropping our fd is fine.
            drop(pinned);
            tracing::info!(program = name, tracepoint = tp, replaced, "attached");
        }
        Ok(())
    }

    /// Removes storage link pins left by an earlier agent (which detaches
    /// those programs) when storage accounting is not active now, e.g.
    /// switched off in the config: stale programs must not keep counting
    /// against a filter nobody maintains.
    pub fn detach_stale_storage(&self) {
        if self.storage == StorageStatus::Active {
            return;
        }
        for name in [prog::SYS_ENTER, prog::SYS_EXIT] {
            let pin = self.pins.links().join(name);
            if pin.exists() {
                match std::fs::remove_file(&pin) {
                    Ok(()) => tracing::info!(
                        program = name,
                        "detached storage program left by an earlier agent"
                    ),
                    Err(e) => {
                        tracing::warn!(program = name, link = %pin.display(), error = %e, "cannot remove stale storage link")
                    }
                }
            }
        }
    }

    /// Makes the kernel's device filter exactly `devs` (dev -> mount id).
    /// Returns (added, removed).
    pub fn set_storage_devs(
        &mut self,
        devs: &std::collections::BTreeMap<u32, u32>,
    ) -> Result<(usize, usize)> {
        let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(map::STORAGE_DEVS)?)
            .map_err(map_err(map::STORAGE_DEVS))?;
        let current: std::collections::BTreeMap<u32, u32> =
            m.iter().filter_map(|r| r.ok()).collect();
        let mut added = 0;
        for (dev, id) in devs {
            if current.get(dev) != Some(id) {
                m.insert(dev, id, 0).map_err(map_err(map::STORAGE_DEVS))?;
                added += 1;
            }
        }
        let mut removed = 0;
        for dev in current.keys().filter(|d| !devs.contains_key(d)) {
            m.remove(dev).map_err(map_err(map::STORAGE_DEVS))?;
            removed += 1;
        }
        Ok((added, removed))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })
    }

    /// The overflow slot must exist before any program runs: when the map
    /// is full, the kernel cannot create it.
    fn seed_overflow(&mut self) -> Result<()> {
        self.seed_zero::<u64, CgroupStats>(map::CGROUP_STATS, &[CGROUP_OVERFLOW])
    }

    /// Replaces the scope trie's contents with `cidrs`.
    pub fn set_cidrs(&mut self, cidrs: &[(IpNet, bool)]) -> Result<()> {
        let mut trie: LpmTrie<_, LpmAddr, CidrInfo> =
            LpmTrie::try_from(self.map_mut(map::CIDRS)?).map_err(map_err(map::CIDRS))?;
        let wanted: Vec<(Key<LpmAddr>, CidrInfo)> = cidrs
            .iter()
            .map(|(net, internal)| {
                let scope = if *internal {
                    SCOPE_INTERNAL
                } else {
                    SCOPE_EXTERNAL
                };
                (lpm_key(net), CidrInfo { scope, _pad: 0 })
            })
            .collect();
        let stale: Vec<Key<LpmAddr>> = trie
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                !wanted.iter().any(|(w, _)| {
                    w.prefix_len() == k.prefix_len() && w.data().addr == k.data().addr
                })
            })
            .collect();
        for (k, v) in &wanted {
            trie.insert(k, *v, 0).map_err(map_err(map::CIDRS))?;
        }
        for k in stale {
            trie.remove(&k).map_err(map_err(map::CIDRS))?;
        }
        self.drop_flows_with_stale_scope(cidrs)?;
        self.bump_flow_cache_generation()
    }

    /// Makes every CPU's flow-cache slots stale: each is flushed to the
    /// maps (in the scope it was counted under) and refilled with the new
    /// scope on its flow's next packet.
    fn bump_flow_cache_generation(&mut self) -> Result<()> {
        let mut gen_: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(self.map_mut(map::FLOW_CACHE_GEN)?)
                .map_err(map_err(map::FLOW_CACHE_GEN))?;
        let g = gen_.get(&0, 0).map_err(map_err(map::FLOW_CACHE_GEN))?;
        gen_.set(0, g.wrapping_add(1), 0)
            .map_err(map_err(map::FLOW_CACHE_GEN))
    }

    /// Flows cache their peer's scope; after a CIDR change, flows whose
    /// cached scope is now wrong are deleted (the kernel recreates them with
    /// the right scope on their next packet). A map update cannot rewrite
    /// one field without racing the kernel's counters, so deletion it is;
    /// per-cgroup totals are unaffected. Deletions are counted.
    fn drop_flows_with_stale_scope(&mut self, cidrs: &[(IpNet, bool)]) -> Result<()> {
        let mut flows: HashMap<_, PeerKey, FlowStats> =
            HashMap::try_from(self.map_mut(map::FLOWS)?).map_err(map_err(map::FLOWS))?;
        let stale: Vec<PeerKey> = flows
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, f)| {
                let internal = scope_of(cidrs, k.ip());
                (f.scope == SCOPE_INTERNAL) != internal
            })
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0u64;
        for k in &stale {
            if flows.remove(k).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                flows = removed,
                "dropped flows whose scope changed with the CIDR config"
            );
            self.add_counter(Counter::FlowsDeletedByAgent, removed)?;
        }
        Ok(())
    }

    /// Adds to a kernel health counter from userspace (CPU 0's slot).
    pub fn add_counter(&mut self, c: Counter, n: u64) -> Result<()> {
        let mut arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map_mut(map::COUNTERS)?).map_err(map_err(map::COUNTERS))?;
        add_to_counter(&mut arr, c, n)
    }

    fn load_program(&mut self, name: &'static str, hook: Hook) -> Result<()> {
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram { name })?;
        match hook {
            Hook::Skb(_) => {
                let p: &mut CgroupSkb = p.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))
            }
            Hook::SockAddr => {
                let p: &mut CgroupSockAddr = p.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))
            }
        }
    }

    /// Loads the DNS and stratum inspection programs and puts them in the
    /// egress program's tail-call slots (replacing an earlier agent's).
    fn load_signal_programs(&mut self) -> Result<()> {
        for (slot, name) in [
            (tollgate_ebpf::JUMP_DNS, prog::SKB_DNS),
            (tollgate_ebpf::JUMP_STRATUM, prog::SKB_STRATUM),
        ] {
            self.load_program(name, Hook::Skb(CgroupSkbAttachType::Egress))?;
            let p: &CgroupSkb = self
                .ebpf
                .program(name)
                .ok_or(DataplaneError::MissingProgram { name })?
                .try_into()
                .map_err(prog_err(name))?;
            let fd = p
                .fd()
                .map_err(prog_err(name))?
                .try_clone()
                .map_err(|source| DataplaneError::Io {
                    what: "duplicating program fd of",
                    path: PathBuf::from(name),
                    source,
                })?;
            let mut jump: aya::maps::ProgramArray<_> =
                aya::maps::ProgramArray::try_from(self.map_mut(map::JUMP)?)
                    .map_err(map_err(map::JUMP))?;
            jump.set(slot, &fd, 0).map_err(map_err(map::JUMP))?;
        }
        Ok(())
    }

    /// Whether programs of `hook`'s type run (`kernel.disable`).
    fn hook_enabled(&self, hook: Hook) -> bool {
        match hook {
            Hook::Skb(_) => true,
            Hook::SockAddr => !self
                .kernel
                .disabled(crate::kernel::ProgramType::CgroupSockAddr),
        }
    }

    /// Attaches every program to `cgroup` (normally the cgroup v2 root).
    /// Where a link is already pinned, the new program is swapped into it.
    /// A disabled program type's links from an earlier run are removed,
    /// which detaches them.
    pub fn attach(&mut self, cgroup: &Path) -> Result<()> {
        let cg = open_cgroup(cgroup)?;
        for (name, hook) in PROGRAMS {
            let link_pin = self.pins.links().join(name);
            if !self.hook_enabled(hook) {
                if link_pin.exists() {
                    match std::fs::remove_file(&link_pin) {
                        Ok(()) => {
                            tracing::info!(program = name, link = %link_pin.display(), "detached: program type disabled by kernel.disable")
                        }
                        Err(e) => {
                            tracing::warn!(program = name, link = %link_pin.display(), error = %e, "could not remove the link of a disabled program type; it keeps running")
                        }
                    }
                }
                continue;
            }
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?;
            if link_pin.exists() {
                match replace_in_link(&link_pin, program) {
                    Ok(()) => {
                        tracing::info!(program = name, link = %link_pin.display(), "updated pinned link");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(program = name, link = %link_pin.display(), error = %e, "pinned link unusable; attaching afresh");
                        let _ = std::fs::remove_file(&link_pin);
                    }
                }
            }
            let fd_link: FdLink = match hook {
                Hook::Skb(kind) => {
                    let p: &mut CgroupSkb = program.try_into().map_err(prog_err(name))?;
                    let id = p
                        .attach(&cg, kind, CgroupAttachMode::Single)
                        .map_err(prog_err(name))?;
                    let link = p.take_link(id).map_err(prog_err(name))?;
                    link.try_into()
                        .map_err(|e: aya::programs::links::LinkError| link_err(name, e))?
                }
                Hook::SockAddr => {
                    let p: &mut CgroupSockAddr = program.try_into().map_err(prog_err(name))?;
                    let id = p
                        .attach(&cg, CgroupAttachMode::Single)
                        .map_err(prog_err(name))?;
                    let link = p.take_link(id).map_err(prog_err(name))?;
                    link.try_into()
                        .map_err(|e: aya::programs::links::LinkError| link_err(name, e))?
                }
            };
            fd_link
                .pin(&link_pin)
                .map_err(|source| DataplaneError::PinLink {
                    path: link_pin.clone(),
                    source: Box::new(source),
                })?;
            tracing::info!(program = name, cgroup = %cgroup.display(), "attached");
        }
        Ok(())
    }

    /// The benchmark baseline program (egress, or its ingress twin),
    /// loaded on first use.
    pub fn bench_baseline(&mut self, egress: bool) -> Result<&mut CgroupSkb> {
        let name = if egress {
            prog::BENCH_BASELINE
        } else {
            prog::BENCH_BASELINE_IN
        };
        let p: &mut CgroupSkb = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram { name })?
            .try_into()
            .map_err(prog_err(name))?;
        if p.fd().is_err() {
            p.load().map_err(prog_err(name))?;
        }
        Ok(p)
    }

    /// Attaches the benchmark baseline programs at `cgroup`, egress and
    /// ingress, without pins: the links belong to this process and go
    /// when it exits, however it exits.
    pub fn attach_bench_baseline(&mut self, cgroup: &Path) -> Result<()> {
        let cg = open_cgroup(cgroup)?;
        for (egress, kind, name) in [
            (true, CgroupSkbAttachType::Egress, prog::BENCH_BASELINE),
            (false, CgroupSkbAttachType::Ingress, prog::BENCH_BASELINE_IN),
        ] {
            self.bench_baseline(egress)?
                .attach(&cg, kind, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
        }
        Ok(())
    }

    /// The cgroup_skb egress or ingress program, for BPF_PROG_TEST_RUN.
    pub fn skb_program(&self, egress: bool) -> Result<&CgroupSkb> {
        let name = if egress {
            prog::SKB_EGRESS
        } else {
            prog::SKB_INGRESS
        };
        let p = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram { name })?;
        p.try_into().map_err(prog_err(name))
    }
}

/// Swaps `program` into the link pinned at `pin`.
fn replace_in_link(pin: &Path, program: &mut Program) -> io::Result<()> {
    let link = sys::obj_get(pin)?;
    let fd = program.fd().map_err(|e| io::Error::other(e.to_string()))?;
    sys::link_update(link.as_fd(), fd.as_fd())
}

/// Removes every pin under `pins` (links first, which detaches the
/// programs once no process holds them). Used by `tollgate detach` and by
/// tests' guards.
pub fn remove_pins(pins: &PinDir) -> io::Result<()> {
    match std::fs::remove_dir_all(pins.versioned()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Remove the root too if nothing else (another ABI version) is in it.
    let _ = std::fs::remove_dir(&pins.root);
    Ok(())
}

/// Userspace longest-prefix match over the CIDR table, as the kernel trie
/// does it: whether `ip` is internal.
pub fn scope_of(cidrs: &[(IpNet, bool)], ip: std::net::IpAddr) -> bool {
    cidrs
        .iter()
        .filter(|(n, _)| n.contains(&ip))
        .max_by_key(|(n, _)| n.prefix_len())
        .is_some_and(|(_, internal)| *internal)
}

/// LPM trie key of a network (IPv4 as IPv4-mapped, prefix + 96).
pub fn lpm_key(net: &IpNet) -> Key<LpmAddr> {
    match net {
        IpNet::V4(n) => Key::new(
            96 + u32::from(n.prefix_len()),
            LpmAddr {
                addr: tollgate_ebpf::v4_mapped(n.network().octets()),
            },
        ),
        IpNet::V6(n) => Key::new(
            u32::from(n.prefix_len()),
            LpmAddr {
                addr: n.network().octets(),
            },
        ),
    }
}

/// Opens one pinned map of this ABI version, naming the fix when the agent
/// never ran (nothing pinned yet).
fn open_pinned(pins: &PinDir, name: &'static str) -> Result<MapData> {
    let path = pins.map(name);
    if !path.exists() {
        return Err(DataplaneError::Io {
            what: "no pinned map (start the agent once: `tollgate run`)",
            path,
            source: io::Error::from(io::ErrorKind::NotFound),
        });
    }
    MapData::from_pin(&path).map_err(map_err(name))
}

/// Cgroup counters and flows as read by [`PinnedMaps::counts`].
pub type Counts = (Vec<(u64, CgroupStats)>, Vec<(PeerKey, FlowStats)>);

/// Maps opened from their pins, for readers (collector, `tollgate top`).
pub struct PinnedMaps {
    pub cgroup_stats: PerCpuHashMap<MapData, u64, CgroupStats>,
    pub storage_stats: PerCpuHashMap<MapData, StorageKey, IoCount>,
    pub storage_devs: HashMap<MapData, u32, u32>,
    pub flows: HashMap<MapData, PeerKey, FlowStats>,
    pub counters: PerCpuArray<MapData, u64>,
    pub conn_events: aya::maps::RingBuf<MapData>,
    pub flow_cache: PerCpuArray<MapData, tollgate_ebpf::FlowCacheSlot>,
    /// ns per jiffy, as the programs were told (see `flowcache`).
    pub jiffy_ns: u64,
    pub ncpu: usize,
    /// Output capacity for the next batch drain of the cgroup, storage
    /// and flow maps (their previous size, see [`capacity_hint`]).
    hints: [std::cell::Cell<usize>; 3],
}

impl PinnedMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        use aya::maps::Map;
        let open = |name: &'static str| open_pinned(pins, name);
        check_pins(pins)?;
        let ncpu = aya::util::nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: "reading possible CPUs",
            path: PathBuf::from(what),
            source,
        })?;
        Ok(Self {
            cgroup_stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(map::CGROUP_STATS)?))
                .map_err(map_err(map::CGROUP_STATS))?,
            storage_stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(map::STORAGE_STATS)?))
                .map_err(map_err(map::STORAGE_STATS))?,
            storage_devs: HashMap::try_from(Map::HashMap(open(map::STORAGE_DEVS)?))
                .map_err(map_err(map::STORAGE_DEVS))?,
            flows: HashMap::try_from(Map::LruHashMap(open(map::FLOWS)?))
                .map_err(map_err(map::FLOWS))?,
            counters: PerCpuArray::try_from(Map::PerCpuArray(open(map::COUNTERS)?))
                .map_err(map_err(map::COUNTERS))?,
            conn_events: aya::maps::RingBuf::try_from(Map::RingBuf(open(map::CONN_EVENTS)?))
                .map_err(map_err(map::CONN_EVENTS))?,
            flow_cache: PerCpuArray::try_from(Map::PerCpuArray(open(map::FLOW_CACHE)?))
                .map_err(map_err(map::FLOW_CACHE))?,
            jiffy_ns: sys::jiffy_ns(),
            ncpu,
            hints: Default::default(),
        })
    }

    /// Every entry of a per-CPU hash, summed over CPUs, by batch lookup:
    /// each entry's per-CPU values are added up where the kernel put them
    /// (no copy or allocation per entry), into a vector sized from the
    /// previous drain (`hint`) so it is not regrown entry by entry.
    fn summed_batch<K: aya::Pod, V: aya::Pod + Default + std::ops::AddAssign>(
        &self,
        map: &PerCpuHashMap<MapData, K, V>,
        hint: &std::cell::Cell<usize>,
    ) -> io::Result<Vec<(K, V)>> {
        let mut out = Vec::with_capacity(hint.get());
        sys::lookup_batch_each::<K, V>(
            map.map().fd().as_fd(),
            sys::Values::PerCpu(self.ncpu),
            BATCH,
            |k, per_cpu| out.push((k, per_cpu.sum())),
        )?;
        hint.set(capacity_hint(out.len()));
        Ok(out)
    }

    /// The same by per-key iteration (fallback for kernels without batch
    /// operations, and the benchmark's baseline).
    fn summed_per_key<K: aya::Pod, V: aya::Pod + Default + std::ops::AddAssign>(
        map: &PerCpuHashMap<MapData, K, V>,
    ) -> io::Result<Vec<(K, V)>> {
        map.iter()
            .map(|r| {
                r.map(|(k, v)| (k, sum(&v)))
                    .map_err(|e| io::Error::other(e.to_string()))
            })
            .collect()
    }

    /// All cgroup counters, summed over CPUs, by batch lookup.
    pub fn cgroup_stats_batch(&self) -> io::Result<Vec<(u64, CgroupStats)>> {
        self.summed_batch(&self.cgroup_stats, &self.hints[0])
    }

    /// The same by per-key iteration.
    pub fn cgroup_stats_per_key(&self) -> io::Result<Vec<(u64, CgroupStats)>> {
        Self::summed_per_key(&self.cgroup_stats)
    }

    /// Storage counters, summed over CPUs: batch lookup, else per key.
    pub fn storage_stats(&self, batch: bool) -> io::Result<Vec<(StorageKey, IoCount)>> {
        if batch {
            self.summed_batch(&self.storage_stats, &self.hints[1])
        } else {
            Self::summed_per_key(&self.storage_stats)
        }
    }

    /// The kernel's device filter: watched dev -> mount id.
    pub fn storage_devs(&self) -> Vec<(u32, u32)> {
        self.storage_devs.iter().filter_map(|r| r.ok()).collect()
    }

    /// All flows by batch lookup.
    pub fn flows_batch(&self) -> io::Result<Vec<(PeerKey, FlowStats)>> {
        let mut out = Vec::with_capacity(self.hints[2].get());
        sys::lookup_batch_each::<PeerKey, FlowStats>(
            self.flows.map().fd().as_fd(),
            sys::Values::Single,
            BATCH,
            |k, v| out.push((k, v.first())),
        )?;
        self.hints[2].set(capacity_hint(out.len()));
        Ok(out)
    }

    /// All flows by per-key iteration.
    pub fn flows_per_key(&self) -> io::Result<Vec<(PeerKey, FlowStats)>> {
        self.flows
            .iter()
            .map(|r| r.map_err(|e| io::Error::other(e.to_string())))
            .collect()
    }

    /// Cgroup counters and flows with every CPU's flow-cache slots merged
    /// in (see [`flowcache`]): what a tick reads. `batch`: batch lookups,
    /// else per-key iteration.
    pub fn counts(&self, batch: bool) -> io::Result<Counts> {
        flowcache::read_merged(
            || flowcache::read_slots(&self.flow_cache, self.ncpu, batch),
            || {
                Ok(if batch {
                    (self.cgroup_stats_batch()?, self.flows_batch()?)
                } else {
                    (self.cgroup_stats_per_key()?, self.flows_per_key()?)
                })
            },
            |(cgroups, flows), slots| {
                flowcache::merge_cgroups(cgroups, slots);
                flowcache::merge_flows(flows, slots, self.jiffy_ns);
            },
        )
    }

    /// Every CPU's flow-cache slots, read twice as [`Self::counts`] does
    /// (for the drain benchmark).
    pub fn flow_cache_slots(&self, batch: bool) -> io::Result<Vec<tollgate_ebpf::FlowCacheSlot>> {
        flowcache::read_slots(&self.flow_cache, self.ncpu, batch)?;
        flowcache::read_slots(&self.flow_cache, self.ncpu, batch)
    }

    /// One cgroup's counters, flow cache merged in.
    pub fn cgroup_totals(&self, id: u64) -> io::Result<CgroupStats> {
        let mut one = flowcache::read_merged(
            || flowcache::read_slots(&self.flow_cache, self.ncpu, true),
            || {
                let s = match self.cgroup_stats.get(&id, 0) {
                    Ok(v) => sum(&v),
                    Err(aya::maps::MapError::KeyNotFound) => CgroupStats::default(),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                };
                Ok(vec![(id, s)])
            },
            |c, slots| flowcache::merge_cgroups(c, slots),
        )?;
        Ok(one.pop().map(|(_, s)| s).unwrap_or_default())
    }

    /// Kernel health counters, summed over CPUs, by slot.
    pub fn counters(&self) -> io::Result<[u64; COUNTER_SLOTS as usize]> {
        // One batch syscall for all slots (read every tick).
        let mut out = [0u64; COUNTER_SLOTS as usize];
        sys::lookup_batch_each::<u32, u64>(
            self.counters.map().fd().as_fd(),
            sys::Values::PerCpu(self.ncpu),
            COUNTER_SLOTS,
            |k, per_cpu| {
                if let Some(slot) = out.get_mut(k as usize) {
                    *slot = per_cpu.iter().fold(0, u64::wrapping_add);
                }
            },
        )?;
        Ok(out)
    }

    /// Deletes what the kernel keeps for cgroups that are gone (after the
    /// inventory's grace): their flows and storage counters. Without this
    /// the flow table would fill with dead pods' flows until LRU eviction,
    /// and every drain would carry them. Returns the flows deleted, which
    /// are also added to [`Counter::FlowsDeletedByAgent`] so the eviction
    /// estimate stays right.
    pub fn delete_gone(&mut self, flows: &[PeerKey], storage: &[StorageKey]) -> Result<u64> {
        let removed = flows
            .iter()
            .filter(|k| self.flows.remove(k).is_ok())
            .count() as u64;
        for k in storage {
            let _ = self.storage_stats.remove(k);
        }
        if removed > 0 {
            add_to_counter(&mut self.counters, Counter::FlowsDeletedByAgent, removed)?;
        }
        Ok(removed)
    }

    /// Drains up to `max` pending connection events.
    pub fn drain_events(&mut self, max: usize) -> Vec<ConnEvent> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.conn_events.next() else {
                break;
            };
            if let Some(e) = sys::read_pod::<ConnEvent>(&item) {
                out.push(e);
            }
        }
        out
    }
}

/// Entries per BPF_MAP_LOOKUP_BATCH call. The kernel's cost is per entry
/// (and per non-empty bucket), not per call, so this only bounds the
/// syscalls per drain (10 for 10,000 entries) and the reused buffer (320
/// KiB for the cgroup map's 2 x 160-byte per-CPU values).
///
/// Why `CgroupStats` stays one per-CPU value: measured here, a batch
/// lookup costs ~190 ns per entry whatever its size plus ~0.3 ns per value
/// byte copied (per-CPU 2 x 160 B: ~300 ns; 2 x 8 B: ~200 ns). Moving the
/// rarely written fields (connect/sendmsg counts, DNS, stratum) to a
/// second map would shave the bytes but add a second entry per cgroup
/// that connects, i.e. every workload: more drain time, not less.
const BATCH: u32 = 1024;

/// Capacity for the next drain of a map that returned `n` entries: room
/// for some growth, so a drain rarely reallocates.
fn capacity_hint(n: usize) -> usize {
    n + n / 8 + 16
}

/// Adds `n` to CPU 0's slot of a health counter. Only userspace writes
/// the counters it adds to, so the read-modify-write does not race the
/// kernel.
fn add_to_counter<T: std::borrow::BorrowMut<MapData>>(
    arr: &mut PerCpuArray<T, u64>,
    c: Counter,
    n: u64,
) -> Result<()> {
    let cur = arr.get(&(c as u32), 0).map_err(map_err(map::COUNTERS))?;
    let mut v: Vec<u64> = cur.iter().copied().collect();
    v[0] = v[0].wrapping_add(n);
    let vals = PerCpuValues::try_from(v).map_err(|source| DataplaneError::Io {
        what: "per-CPU values",
        path: PathBuf::new(),
        source,
    })?;
    arr.set(c as u32, vals, 0).map_err(map_err(map::COUNTERS))
}

/// Sum of per-CPU values.
fn sum<T: Default + Copy + std::ops::AddAssign>(v: &[T]) -> T {
    let mut t = T::default();
    for s in v {
        t += *s;
    }
    t
}

/// The pinned quarantine maps (`TG_QUARANTINE` and its gate), for the CLI
/// and the agent. Usable while no agent runs: the kernel enforces what is
/// in the pinned map.
pub struct QuarantineMaps {
    entries: HashMap<MapData, u64, tollgate_ebpf::QuarantineEntry>,
    gate: aya::maps::Array<MapData, u32>,
}

impl QuarantineMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        use aya::maps::Map;
        let open = |name: &'static str| open_pinned(pins, name);
        check_pins(pins)?;
        Ok(Self {
            entries: HashMap::try_from(Map::HashMap(open(map::QUARANTINE)?))
                .map_err(map_err(map::QUARANTINE))?,
            gate: aya::maps::Array::try_from(Map::Array(open(map::QUARANTINE_GATE)?))
                .map_err(map_err(map::QUARANTINE_GATE))?,
        })
    }

    /// Every quarantined cgroup id with its entry.
    pub fn list(&self) -> Vec<(u64, tollgate_ebpf::QuarantineEntry)> {
        self.entries.iter().filter_map(|r| r.ok()).collect()
    }

    /// Quarantines `cgroup_id` (and everything below it). The gate is
    /// raised after the entry exists, so no packet sees the gate without
    /// the entry it guards.
    pub fn insert(&mut self, cgroup_id: u64, e: tollgate_ebpf::QuarantineEntry) -> Result<()> {
        self.entries
            .insert(cgroup_id, e, 0)
            .map_err(map_err(map::QUARANTINE))?;
        self.sync_gate()
    }

    pub fn remove(&mut self, cgroup_id: u64) -> Result<bool> {
        let removed = match self.entries.remove(&cgroup_id) {
            Ok(()) => true,
            Err(aya::maps::MapError::KeyNotFound) => false,
            // aya reports a missing key on delete as the syscall's ENOENT.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                false
            }
            Err(e) => return Err(map_err(map::QUARANTINE)(e)),
        };
        self.sync_gate()?;
        Ok(removed)
    }

    /// Sets the gate to the number of entries (0 lets the hooks skip the
    /// ancestor walk).
    pub fn sync_gate(&mut self) -> Result<()> {
        let n = self.entries.keys().filter(|k| k.is_ok()).count() as u32;
        self.gate
            .set(0, n, 0)
            .map_err(map_err(map::QUARANTINE_GATE))
    }
}

/// Kernel run statistics of one loaded program (`bpf_prog_info`
/// run_time_ns / run_cnt; they only advance while BPF statistics are on).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgStat {
    pub name: String,
    pub run_time: std::time::Duration,
    pub run_count: u64,
}

impl Dataplane {
    /// Run statistics of every program this agent loaded (unloaded ones,
    /// such as the bench baseline, are skipped).
    pub fn program_stats(&self) -> Vec<ProgStat> {
        let mut v: Vec<ProgStat> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some(ProgStat {
                    name: name.to_owned(),
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Turns on the kernel's BPF run-time statistics for as long as the
/// returned descriptor lives (BPF_ENABLE_STATS, kernel 5.8), without
/// touching the `kernel.bpf_stats_enabled` sysctl.
pub fn enable_program_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| DataplaneError::Io {
        what: "BPF_ENABLE_STATS (needs kernel 5.8 and CAP_SYS_ADMIN; or set metrics.program_stats = false)",
        path: PathBuf::from("bpf(2)"),
        source: io::Error::other(e.to_string()),
    })
}
