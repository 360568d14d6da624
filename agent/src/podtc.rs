//! Keeps the tc programs attached to every pod's host-side interface:
//! every second, the network namespaces of all processes are listed
//! (/proc/<pid>/ns/net), each new one is entered once to find the peer of
//! its veths in the host namespace (`podnet::match_peers`), new interfaces
//! get the programs, and interfaces that disappeared are cleaned up (pins
//! and map entries). Processes, not cgroup traffic, are the source: a VM
//! sandbox's pod shows no cgroup traffic at all. Also the table of pod
//! interfaces shown in snapshots.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    collect::Counts,
    ebpf::{
        Dataplane,
        tc::{ClsactSlot, IfMaps, TcMode},
    },
    netdev::{self, HostNetns},
    podnet::{self, PodIface},
};

/// `[tc]`: programs on pods' host-side interfaces (per-interface counts,
/// and the quarantine drop that also covers VM-sandboxed pods).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcConfig {
    /// Attach to pod interfaces at all.
    pub enabled: bool,
    /// "auto" (tcx on Linux 6.6+, else clsact), "tcx" or "clsact".
    pub mode: TcMode,
    /// Network namespace holding the pods' host-side interfaces, as a
    /// file (e.g. /proc/1/ns/net when the agent does not run with
    /// hostNetwork, or /run/netns/<name>); "" = the agent's own.
    pub netns: PathBuf,
    /// clsact only: priority of our filters (lower runs first). Pick one
    /// the CNI does not use at the same handle.
    pub priority: u16,
    /// clsact only: handle of our filters at that priority.
    pub handle: u32,
}

impl Default for TcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: TcMode::Auto,
            netns: PathBuf::new(),
            priority: 1,
            handle: 0x7467,
        }
    }
}

impl TcConfig {
    pub fn host(&self) -> HostNetns {
        HostNetns::new(&self.netns)
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String, String)> {
        if self.priority == 0 {
            return Err((
                "tc.priority",
                "0".into(),
                "must be 1..65535 (0 lets the kernel pick, and we could not find our filter again)"
                    .into(),
            ));
        }
        if self.handle == 0 {
            return Err(("tc.handle", "0".into(), "must not be 0".into()));
        }
        if !self.netns.as_os_str().is_empty() && !self.netns.is_absolute() {
            return Err((
                "tc.netns",
                self.netns.display().to_string(),
                "must be an absolute path to a network namespace file, or \"\"".into(),
            ));
        }
        Ok(())
    }
}

/// One pod interface in a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceRow {
    pub ifindex: u32,
    /// Host-side name.
    pub name: String,
    /// Pod-side name.
    pub pod_name: String,
    /// The (shallowest) cgroup whose processes own the pod's namespace.
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub pod_egress: Counts,
    pub pod_ingress: Counts,
    pub dropped_egress: Counts,
    pub dropped_ingress: Counts,
    pub other_frames: u64,
    pub quarantined: bool,
}

/// How often /proc is rescanned for network namespaces.
const RESCAN: Duration = Duration::from_secs(1);

/// One pod network namespace and its host-side interfaces.
struct NsEntry {
    /// Cgroup (relative to the mount) of a process in the namespace.
    cgroup: String,
    ifaces: Vec<PodIface>,
    at: Instant,
}

/// Namespaces without a pod interface are looked at again this often:
/// the CNI moves the veth in after the sandbox process started.
const RETRY_EMPTY: Duration = Duration::from_secs(5);

pub struct PodTc {
    cfg: TcConfig,
    mode: TcMode,
    host: HostNetns,
    mount: PathBuf,
    /// Network namespace inode -> its pod interfaces.
    netns: HashMap<u64, NsEntry>,
    scanned_at: Option<Instant>,
    attached: BTreeSet<u32>,
    /// Interfaces whose attach failed, logged once each.
    failed: BTreeSet<u32>,
}

impl PodTc {
    pub fn new(cfg: &TcConfig, mount: PathBuf) -> Self {
        let mode = cfg.mode.resolve();
        Self {
            cfg: cfg.clone(),
            mode,
            host: cfg.host(),
            mount,
            netns: HashMap::new(),
            scanned_at: None,
            attached: BTreeSet::new(),
            failed: BTreeSet::new(),
        }
    }

    pub fn mode(&self) -> TcMode {
        self.mode
    }

    /// Finds the network namespaces of all processes (every pod, VM
    /// sandboxes included, has a process in its namespace: the pause
    /// container or the sandbox's shim), and the host-side interfaces of
    /// namespaces not seen before. Namespaces whose processes are gone
    /// are dropped.
    fn scan(&mut self, host_links: &[netdev::Link]) {
        let Ok(host_inode) = self.host.inode() else {
            return;
        };
        let mut seen: HashMap<u64, u32> = HashMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Ok(ino) = netdev::ns_inode(&e.path().join("ns/net"))
                    && ino != host_inode
                {
                    seen.entry(ino).or_insert(pid);
                }
            }
        }
        self.netns.retain(|ino, _| seen.contains_key(ino));
        for (ino, pid) in seen {
            if self.netns.contains_key(&ino) {
                continue;
            }
            let ns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            // The process may have exited since: try again next scan.
            let Ok(Ok(pod_links)) = netdev::in_netns(&ns, netdev::links) else {
                continue;
            };
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
                })
                .unwrap_or_default();
            self.netns.insert(
                ino,
                NsEntry {
                    cgroup,
                    ifaces: podnet::match_peers(&pod_links, host_links),
                    at: Instant::now(),
                },
            );
        }
    }

    /// One pass: new pod interfaces get the programs, removed ones are
    /// cleaned up.
    pub fn sync(&mut self, dp: &mut Dataplane) {
        if !self.cfg.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .scanned_at
            .is_some_and(|t| now.duration_since(t) < RESCAN)
        {
            return;
        }
        self.scanned_at = Some(now);
        let host_links = match self.host.run(netdev::links) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "listing host interfaces failed; tc attach retried next tick");
                return;
            }
        };
        let alive: BTreeSet<u32> = host_links.iter().map(|l| l.index).collect();
        // A namespace whose interface changed (recreated veth) is looked
        // at again.
        self.netns.retain(|_, e| {
            if e.ifaces.is_empty() {
                now.duration_since(e.at) < RETRY_EMPTY
            } else {
                e.ifaces.iter().all(|i| alive.contains(&i.ifindex))
            }
        });
        self.scan(&host_links);
        let wanted: BTreeMap<u32, String> = self
            .netns
            .values()
            .flat_map(|e| e.ifaces.iter().map(|i| (i.ifindex, i.name.clone())))
            .collect();
        let slot = ClsactSlot {
            priority: self.cfg.priority,
            handle: self.cfg.handle,
        };
        let mode = self.mode;
        for (ifindex, name) in &wanted {
            if self.attached.contains(ifindex) || !alive.contains(ifindex) {
                continue;
            }
            match self
                .host
                .run(|| dp.attach_tc(*ifindex, name, mode, slot))
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    tracing::info!(iface = %name, ifindex, mode = ?mode, "tc programs attached");
                    self.attached.insert(*ifindex);
                    self.failed.remove(ifindex);
                }
                Err(e) => {
                    if self.failed.insert(*ifindex) {
                        tracing::warn!(iface = %name, ifindex, error = %e, "attaching tc programs failed; retrying every tick");
                    }
                }
            }
        }
        self.attached.retain(|i| alive.contains(i));
        match dp.forget_ifaces(&alive) {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(ifindexes = ?gone, "pod interfaces removed: their tc links and counters cleaned up")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cleaning up removed interfaces failed"),
        }
    }

    /// The pod interfaces with their counters.
    pub fn rows(&self, maps: &IfMaps) -> Vec<IfaceRow> {
        use std::os::unix::fs::MetadataExt as _;
        let stats: HashMap<u32, tollgate_ebpf::IfStats> = maps.stats().into_iter().collect();
        let quarantined: BTreeSet<u32> = maps.quarantined().into_iter().map(|(i, _)| i).collect();
        let mut rows: Vec<IfaceRow> = self
            .netns
            .values()
            .flat_map(|e| e.ifaces.iter().map(move |i| (e, i)))
            .map(|(e, i)| {
                let s = stats.get(&i.ifindex).copied().unwrap_or_default();
                let cgroup_id =
                    std::fs::metadata(self.mount.join(e.cgroup.trim_start_matches('/')))
                        .map(|m| m.ino())
                        .unwrap_or(0);
                IfaceRow {
                    ifindex: i.ifindex,
                    name: i.name.clone(),
                    pod_name: i.pod_name.clone(),
                    cgroup_id,
                    cgroup: (!e.cgroup.is_empty()).then(|| e.cgroup.clone()),
                    pod_egress: Counts::from(&s.pod_egress),
                    pod_ingress: Counts::from(&s.pod_ingress),
                    dropped_egress: Counts::from(&s.dropped_egress),
                    dropped_ingress: Counts::from(&s.dropped_ingress),
                    other_frames: s.other_frames,
                    quarantined: quarantined.contains(&i.ifindex),
                }
            })
            .collect();
        rows.sort_by_key(|r| r.ifindex);
        rows.dedup_by_key(|r| r.ifindex);
        rows
    }
}

/// `tollgate detach`'s tc part: deletes our clsact filters from every
/// interface of the host namespace (tcx links go with the pins). Returns
/// how many filters were ours.
pub fn detach_all(cfg: &TcConfig) -> std::io::Result<usize> {
    let host = cfg.host();
    host.run(|| {
        let names: Vec<String> = netdev::links()?.into_iter().map(|l| l.name).collect();
        Ok(crate::ebpf::tc::detach_clsact(&names))
    })?
}
