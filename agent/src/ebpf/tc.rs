//! The tc programs on pods' host-side interfaces: loading, attaching
//! (tcx links, Linux 6.6, else clsact filters), re-finding them after a
//! restart, cleaning up after removed interfaces, detaching; and the
//! per-interface maps.
//!
//! tcx: one link per interface and direction, pinned at
//! `P/v{ABI}/links/tc/<ifindex>_from` / `_to`; on restart the new program
//! is swapped into the pinned link (BPF_LINK_UPDATE), as for the cgroup
//! links. Our links go first (BPF_F_BEFORE) so a CNI program that
//! redirects cannot hide packets from the quarantine drop; ours return
//! TCX_NEXT, so the CNI still runs.
//!
//! clsact: netlink filters cannot be pinned, and they outlive the agent by
//! themselves. Ours sit at a configured priority and handle, named after
//! our programs; a restart replaces the program in our filter in place.
//! The clsact qdisc is created when missing and never deleted (the CNI's
//! filters hang off it); detach deletes only filters carrying our
//! programs' names.
//!
//! Every call here must run in the host namespace (ifindexes and names
//! are per namespace): callers wrap them in `HostNetns::run`.

use std::{collections::BTreeSet, io, path::PathBuf};

use aya::{
    maps::{HashMap, MapData, PerCpuHashMap},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::FdLink,
        tc::{
            NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact,
            qdisc_detach_program,
        },
    },
};
use serde::{Deserialize, Serialize};
use tollgate_ebpf::{IfQuarantine, IfStats, map, prog};

use super::{Dataplane, DataplaneError, PinDir, Result, map_err, open_pinned, prog_err};

/// How programs are attached to pod interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// tcx where the kernel has it (6.6+), else clsact.
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl TcMode {
    /// `Auto` resolved for the running kernel.
    pub fn resolve(self) -> TcMode {
        match self {
            TcMode::Auto => {
                let tcx = aya::util::KernelVersion::current()
                    .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                    .unwrap_or(false);
                if tcx { TcMode::Tcx } else { TcMode::Clsact }
            }
            m => m,
        }
    }
}

/// Both programs, host ingress first.
pub const TC_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    (prog::TC_FROM_POD, TcAttachType::Ingress, "from"),
    (prog::TC_TO_POD, TcAttachType::Egress, "to"),
];

/// Where clsact filters go.
#[derive(Debug, Clone, Copy)]
pub struct ClsactSlot {
    pub priority: u16,
    pub handle: u32,
}

impl PinDir {
    /// Directory of the tcx link pins.
    pub fn tc_links(&self) -> PathBuf {
        self.links().join("tc")
    }
}

fn tc_pin(pins: &PinDir, ifindex: u32, suffix: &str) -> PathBuf {
    pins.tc_links().join(format!("{ifindex}_{suffix}"))
}

fn io_err(what: &'static str, name: &str, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Io {
        what,
        path: PathBuf::from(name),
        source: io::Error::other(e.to_string()),
    }
}

impl Dataplane {
    /// Loads the two tc programs (attached later, per interface).
    pub(super) fn load_tc(&mut self) -> Result<()> {
        for (name, _, _) in TC_PROGRAMS {
            let p: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?
                .try_into()
                .map_err(prog_err(name))?;
            p.load().map_err(prog_err(name))?;
        }
        Ok(())
    }

    /// Attaches both programs to host interface `ifname` (`ifindex`), or
    /// swaps the new programs into what an earlier agent left there.
    pub fn attach_tc(
        &mut self,
        ifindex: u32,
        ifname: &str,
        mode: TcMode,
        slot: ClsactSlot,
    ) -> Result<()> {
        std::fs::create_dir_all(self.pins.tc_links()).map_err(|source| DataplaneError::Io {
            what: "creating directory",
            path: self.pins.tc_links(),
            source,
        })?;
        for (name, kind, suffix) in TC_PROGRAMS {
            let pin = tc_pin(&self.pins, ifindex, suffix);
            let program = self
                .ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?;
            if mode == TcMode::Tcx && pin.exists() {
                match super::replace_in_link(&pin, program) {
                    Ok(()) => continue,
                    // Defunct (the interface went away and the index was
                    // reused): attach afresh.
                    Err(e) => {
                        tracing::debug!(iface = ifname, error = %e, "pinned tc link unusable; attaching afresh");
                        let _ = std::fs::remove_file(&pin);
                    }
                }
            }
            let p: &mut SchedClassifier = program.try_into().map_err(prog_err(name))?;
            match mode {
                TcMode::Tcx | TcMode::Auto => {
                    let id = p
                        .attach_with_options(
                            ifname,
                            kind,
                            TcAttachOptions::TcxOrder(LinkOrder::first()),
                        )
                        .map_err(prog_err(name))?;
                    let link = p.take_link(id).map_err(prog_err(name))?;
                    let fd: FdLink = link
                        .try_into()
                        .map_err(|e| io_err("converting tcx link of", name, e))?;
                    fd.pin(&pin).map_err(|source| DataplaneError::PinLink {
                        path: pin.clone(),
                        source: Box::new(source),
                    })?;
                }
                TcMode::Clsact => attach_clsact(p, name, ifname, kind, slot)?,
            }
        }
        Ok(())
    }

    /// Removes the tcx pins of interfaces not in `alive` (which detaches
    /// them) and the interfaces' map entries. Returns the ifindexes
    /// cleaned up.
    pub fn forget_ifaces(&mut self, alive: &BTreeSet<u32>) -> Result<Vec<u32>> {
        let mut gone = BTreeSet::new();
        if let Ok(rd) = std::fs::read_dir(self.pins.tc_links()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(ifindex) = name.split('_').next().and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if !alive.contains(&ifindex) {
                    let _ = std::fs::remove_file(e.path());
                    gone.insert(ifindex);
                }
            }
        }
        let mut maps = IfMaps::open(&self.pins)?;
        for i in maps.stats_ifindexes() {
            if !alive.contains(&i) {
                gone.insert(i);
            }
        }
        for i in &gone {
            maps.forget(*i);
        }
        Ok(gone.into_iter().collect())
    }
}

/// One clsact filter: created at our slot, or, when a filter is there
/// already (ours, from an earlier agent), its program replaced in place.
fn attach_clsact(
    p: &mut SchedClassifier,
    name: &'static str,
    ifname: &str,
    kind: TcAttachType,
    slot: ClsactSlot,
) -> Result<()> {
    // EEXIST when the qdisc is there (the CNI's or ours): fine.
    let _ = qdisc_add_clsact(ifname);
    let opts = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: slot.priority,
            handle: TcHandle::from(slot.handle),
            classid: None,
        })
    };
    let id = match p.attach_with_options(ifname, kind, opts()) {
        Ok(id) => id,
        Err(create_err) => {
            let existing = SchedClassifierLink::attached(
                ifname,
                kind,
                slot.priority,
                TcHandle::from(slot.handle),
                None,
            )
            .map_err(|e| io_err("finding clsact filter on", ifname, e))?;
            p.attach_to_link(existing).map_err(|e| {
                io_err(
                    "attaching clsact filter on",
                    ifname,
                    format!("{create_err}; replacing: {e}"),
                )
            })?
        }
    };
    // The filter must outlive this process (like a pinned link): forget
    // the handle, whose drop would delete the filter.
    let link = p.take_link(id).map_err(prog_err(name))?;
    std::mem::forget(link);
    Ok(())
}

/// Deletes our clsact filters (by program name) from every interface in
/// `ifnames`; other filters and the qdisc stay. Returns how many
/// (interface, direction) pairs had ours.
pub fn detach_clsact(ifnames: &[String]) -> usize {
    let mut n = 0;
    for ifname in ifnames {
        for (name, kind, _) in TC_PROGRAMS {
            if qdisc_detach_program(ifname, kind, name).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// The pinned per-interface maps, for the agent, the CLI and readers.
pub struct IfMaps {
    stats: PerCpuHashMap<MapData, u32, IfStats>,
    quarantine: HashMap<MapData, u32, IfQuarantine>,
}

impl IfMaps {
    pub fn open(pins: &PinDir) -> Result<Self> {
        use aya::maps::Map;
        Ok(Self {
            stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(open_pinned(pins, map::IF_STATS)?))
                .map_err(map_err(map::IF_STATS))?,
            quarantine: HashMap::try_from(Map::HashMap(open_pinned(pins, map::IF_QUARANTINE)?))
                .map_err(map_err(map::IF_QUARANTINE))?,
        })
    }

    /// Counters of every interface, summed over CPUs.
    pub fn stats(&self) -> Vec<(u32, IfStats)> {
        self.stats
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| (k, super::sum(&v)))
            .collect()
    }

    fn stats_ifindexes(&self) -> Vec<u32> {
        self.stats.keys().filter_map(|r| r.ok()).collect()
    }

    pub fn quarantined(&self) -> Vec<(u32, IfQuarantine)> {
        self.quarantine.iter().filter_map(|r| r.ok()).collect()
    }

    /// Cuts interface `ifindex` off (both directions).
    pub fn quarantine(&mut self, ifindex: u32, e: IfQuarantine) -> Result<()> {
        self.quarantine
            .insert(ifindex, e, 0)
            .map_err(map_err(map::IF_QUARANTINE))
    }

    pub fn release(&mut self, ifindex: u32) -> Result<bool> {
        match self.quarantine.remove(&ifindex) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(map::IF_QUARANTINE)(e)),
        }
    }

    /// Drops everything known about a removed interface.
    fn forget(&mut self, ifindex: u32) {
        let _ = self.stats.remove(&ifindex);
        let _ = self.quarantine.remove(&ifindex);
    }
}

impl Dataplane {
    /// The tc program for frames from the pod (`true`) or to it, for
    /// BPF_PROG_TEST_RUN.
    pub fn tc_program(&self, from_pod: bool) -> Result<&SchedClassifier> {
        let name = if from_pod {
            prog::TC_FROM_POD
        } else {
            prog::TC_TO_POD
        };
        self.ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram { name })?
            .try_into()
            .map_err(prog_err(name))
    }
}
