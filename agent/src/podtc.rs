//! Keeps the tc programs attached to every pod's host-side interface:
//! each tick, cgroups not yet resolved are mapped to their interfaces
//! (`podnet`), new interfaces get the programs, and interfaces that
//! disappeared are cleaned up (pins and map entries). Also the table of
//! pod interfaces shown in snapshots.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
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

/// Retry cgroups that had no pod interface this often (the pod may not
/// have started its processes yet).
const RETRY_EMPTY: Duration = Duration::from_secs(10);

pub struct PodTc {
    cfg: TcConfig,
    mode: TcMode,
    host: HostNetns,
    /// cgroup id -> (path, interfaces, when resolved).
    by_cgroup: HashMap<u64, (String, Vec<PodIface>, Instant)>,
    attached: BTreeSet<u32>,
    /// Interfaces whose attach failed, logged once each.
    failed: BTreeSet<u32>,
}

impl PodTc {
    pub fn new(cfg: &TcConfig) -> Self {
        let mode = cfg.mode.resolve();
        Self {
            cfg: cfg.clone(),
            mode,
            host: cfg.host(),
            by_cgroup: HashMap::new(),
            attached: BTreeSet::new(),
            failed: BTreeSet::new(),
        }
    }

    pub fn mode(&self) -> TcMode {
        self.mode
    }

    /// One pass over the cgroups `(id, path relative to mount)` the agent
    /// knows.
    pub fn sync(&mut self, dp: &mut Dataplane, mount: &Path, cgroups: &[(u64, String)]) {
        if !self.cfg.enabled {
            return;
        }
        let host_links = match self.host.run(netdev::links) {
            Ok(Ok(l)) => l,
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "listing host interfaces failed; tc attach retried next tick");
                return;
            }
        };
        let alive: BTreeSet<u32> = host_links.iter().map(|l| l.index).collect();
        let now = Instant::now();
        let live: BTreeSet<u64> = cgroups.iter().map(|(id, _)| *id).collect();
        self.by_cgroup.retain(|id, _| live.contains(id));
        for (id, path) in cgroups {
            let stale = match self.by_cgroup.get(id) {
                None => true,
                Some((_, ifs, at)) => {
                    ifs.iter().any(|i| !alive.contains(&i.ifindex))
                        || (ifs.is_empty() && now.duration_since(*at) >= RETRY_EMPTY)
                }
            };
            if !stale {
                continue;
            }
            let dir = mount.join(path.trim_start_matches('/'));
            let ifs = podnet::host_ifaces(&dir, &self.host, &host_links).unwrap_or_default();
            self.by_cgroup.insert(*id, (path.clone(), ifs, now));
        }
        let wanted: BTreeMap<u32, String> = self
            .by_cgroup
            .values()
            .flat_map(|(_, ifs, _)| ifs.iter().map(|i| (i.ifindex, i.name.clone())))
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
        let stats: HashMap<u32, tollgate_ebpf::IfStats> = maps.stats().into_iter().collect();
        let quarantined: BTreeSet<u32> = maps.quarantined().into_iter().map(|(i, _)| i).collect();
        let mut owner: BTreeMap<u32, (u64, &str, &PodIface)> = BTreeMap::new();
        for (id, (path, ifs, _)) in &self.by_cgroup {
            for i in ifs {
                let better = owner
                    .get(&i.ifindex)
                    .is_none_or(|(_, p, _)| path.len() < p.len());
                if better {
                    owner.insert(i.ifindex, (*id, path.as_str(), i));
                }
            }
        }
        owner
            .into_iter()
            .map(|(ifindex, (cgroup_id, path, i))| {
                let s = stats.get(&ifindex).copied().unwrap_or_default();
                IfaceRow {
                    ifindex,
                    name: i.name.clone(),
                    pod_name: i.pod_name.clone(),
                    cgroup_id,
                    cgroup: Some(path.to_owned()),
                    pod_egress: Counts::from(&s.pod_egress),
                    pod_ingress: Counts::from(&s.pod_ingress),
                    dropped_egress: Counts::from(&s.dropped_egress),
                    dropped_ingress: Counts::from(&s.dropped_ingress),
                    other_frames: s.other_frames,
                    quarantined: quarantined.contains(&ifindex),
                }
            })
            .collect()
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
