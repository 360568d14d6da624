//! Emergency quarantine of a cgroup (a pod, a container, a systemd unit):
//! its packets are dropped in the cgroup_skb hooks and its connect() and
//! sendmsg() calls fail with EPERM, for it and everything below it.
//!
//! Enforcement state is the pinned kernel map, so quarantines hold while
//! the agent is down; `<state_dir>/quarantine.json` keeps who, why and the
//! TTL (written atomically), and `<state_dir>/audit.log` records every
//! quarantine, release and expiry as one JSON line. On start the agent
//! reconciles the two.

use std::{
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tollgate_ebpf::{QF_CONNECT, QF_NETWORK, QuarantineEntry};

use crate::{
    ebpf::{DataplaneError, PinDir, QuarantineMaps, tc::IfMaps},
    netdev::{self, HostNetns},
    podnet,
};

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error(transparent)]
    Maps(#[from] DataplaneError),
    #[error(
        "cgroup {0} does not exist under the cgroup v2 mount (give the path relative to it, e.g. /kubepods.slice/...)"
    )]
    NoCgroup(String),
    #[error("refusing to quarantine the cgroup root: that would cut off the whole node")]
    Root,
    #[error("{0} is not quarantined")]
    NotQuarantined(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One quarantine as the state file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub cgroup_id: u64,
    /// Path relative to the cgroup v2 mount.
    pub path: String,
    pub reason: String,
    /// Who asked: "cli:<user>", "api:<subject>", "agent:<detector>".
    pub by: String,
    pub since_unix: u64,
    /// Release automatically at this time.
    pub expires_unix: Option<u64>,
    /// `namespace/pod` when the target was a Kubernetes pod (or a
    /// standalone slice/unit) rather than a bare cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// Who, why and on what grounds: what a quarantine request carries into
/// the state file and the audit log.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub reason: String,
    /// "cli:<user>", "api:<identity>", "agent:<detector>".
    pub by: String,
    pub ttl: Option<Duration>,
    /// `namespace/pod`, when known.
    pub pod: Option<String>,
    /// The finding (JSON) behind an automatic quarantine.
    pub evidence: Option<serde_json::Value>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Quarantine state: kernel maps + state file + audit log.
pub struct Quarantine {
    maps: QuarantineMaps,
    cgroup_mount: PathBuf,
    state: PathBuf,
    /// `quarantine.lock`: serialises read-modify-writes of `state`.
    lock: PathBuf,
    audit: PathBuf,
    records: Vec<Record>,
    /// Where pods' host-side interfaces live (`tc.netns`).
    host: HostNetns,
    ifmaps: IfMaps,
}

impl Quarantine {
    pub fn open(
        pins: &PinDir,
        cgroup_mount: PathBuf,
        state_dir: &Path,
    ) -> Result<Self, QuarantineError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| QuarantineError::Io { what, path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io("creating", state_dir))?;
        let state = state_dir.join("quarantine.json");
        let lock = state_dir.join("quarantine.lock");
        let records = match std::fs::read(&state) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(file = %state.display(), error = %e, "unreadable quarantine state; the kernel map stays authoritative");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("reading", &state)(e)),
        };
        Ok(Self {
            maps: QuarantineMaps::open(pins)?,
            cgroup_mount,
            audit: state_dir.join("audit.log"),
            state,
            lock,
            records,
            host: HostNetns::new(Path::new("")),
            ifmaps: IfMaps::open(pins)?,
        })
    }

    /// Where pods' host-side interfaces live (`tc.netns`; default: the
    /// caller's own namespace).
    pub fn set_host_netns(&mut self, host: HostNetns) {
        self.host = host;
    }

    /// Quarantines the host-side interfaces of the pods in cgroup `id`
    /// (the tc drop, which also holds for workloads outside the cgroup,
    /// e.g. VM sandboxes). Returns the ifindexes now quarantined for it.
    fn quarantine_ifaces(&mut self, id: u64, rel: &str, since: u64) -> Vec<u32> {
        let dir = self.cgroup_mount.join(rel.trim_start_matches('/'));
        let found = self
            .host
            .run(netdev::links)
            .and_then(|r| r)
            .and_then(|links| podnet::host_ifaces(&dir, &self.host, &links));
        let ifs = match found {
            Ok(ifs) => ifs,
            Err(e) => {
                tracing::warn!(cgroup = rel, error = %e, "finding the pod's interfaces failed; the cgroup hooks still enforce");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for i in ifs {
            let e = tollgate_ebpf::IfQuarantine {
                cgroup_id: id,
                since_unix: since,
            };
            match self.ifmaps.quarantine(i.ifindex, e) {
                Ok(()) => out.push(i.ifindex),
                Err(e) => {
                    tracing::warn!(iface = %i.name, error = %e, "quarantining interface failed; the cgroup hooks still enforce")
                }
            }
        }
        out
    }

    /// Lifts the interface quarantines that belong to cgroup `id`.
    fn release_ifaces(&mut self, id: u64) {
        for (ifindex, e) in self.ifmaps.quarantined() {
            if e.cgroup_id == id
                && let Err(err) = self.ifmaps.release(ifindex)
            {
                tracing::warn!(ifindex, error = %err, "releasing interface failed");
            }
        }
    }

    /// Keeps the interface quarantines in line with the kernel's cgroup
    /// quarantines (run every tick by the agent): interfaces of
    /// quarantined pods that appeared since are added; entries whose
    /// cgroup is no longer quarantined are removed. The kernel map, not
    /// the state file, decides: the CLI writes the map first and the file
    /// after, and a tick in between must not undo it.
    pub fn sync_ifaces(&mut self) {
        let kernel: Vec<u64> = self.maps.list().into_iter().map(|(id, _)| id).collect();
        let records = self.records.clone();
        for r in &records {
            if r.path.starts_with('/') && kernel.contains(&r.cgroup_id) {
                self.quarantine_ifaces(r.cgroup_id, &r.path, r.since_unix);
            }
        }
        for (ifindex, e) in self.ifmaps.quarantined() {
            if !kernel.contains(&e.cgroup_id) {
                let _ = self.ifmaps.release(ifindex);
            }
        }
    }

    /// Interface ifindex -> the cgroup id it is quarantined for.
    pub fn quarantined_ifaces(&self) -> Vec<(u32, u64)> {
        self.ifmaps
            .quarantined()
            .into_iter()
            .map(|(i, e)| (i, e.cgroup_id))
            .collect()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    fn resolve(&self, path: &str) -> Result<(u64, String), QuarantineError> {
        let rel = format!("/{}", path.trim_matches('/'));
        if rel == "/" {
            return Err(QuarantineError::Root);
        }
        let meta = std::fs::metadata(self.cgroup_mount.join(rel.trim_start_matches('/')))
            .map_err(|_| QuarantineError::NoCgroup(rel.clone()))?;
        if !meta.is_dir() {
            return Err(QuarantineError::NoCgroup(rel));
        }
        Ok((meta.ino(), rel))
    }

    /// Cuts `path` off the network now; `ttl` releases it later.
    pub fn quarantine(
        &mut self,
        path: &str,
        reason: &str,
        by: &str,
        ttl: Option<Duration>,
    ) -> Result<Record, QuarantineError> {
        self.quarantine_with(
            path,
            &Request {
                reason: reason.to_owned(),
                by: by.to_owned(),
                ttl,
                ..Request::default()
            },
        )
    }

    /// [`Quarantine::quarantine`] with the pod name and evidence, which go
    /// to the state file and the audit log.
    pub fn quarantine_with(
        &mut self,
        path: &str,
        req: &Request,
    ) -> Result<Record, QuarantineError> {
        // The CLI (--cgroup) writes the state file too: start from it.
        let _lock = self.lock_state()?;
        self.reload();
        let (reason, by, ttl) = (req.reason.as_str(), req.by.as_str(), req.ttl);
        let (id, rel) = self.resolve(path)?;
        let since = now_unix();
        self.maps.insert(
            id,
            QuarantineEntry {
                since_unix: since,
                flags: QF_NETWORK | QF_CONNECT,
                _pad: 0,
            },
        )?;
        self.quarantine_ifaces(id, &rel, since);
        let rec = Record {
            cgroup_id: id,
            path: rel,
            reason: reason.to_owned(),
            by: by.to_owned(),
            since_unix: since,
            expires_unix: ttl.map(|t| since + t.as_secs().max(1)),
            pod: req.pod.clone(),
        };
        self.records.retain(|r| r.cgroup_id != id);
        self.records.push(rec.clone());
        self.save()?;
        self.log_with("quarantine", &rec, reason, by, req.evidence.as_ref());
        Ok(rec)
    }

    /// Lets `path` talk again.
    pub fn release(&mut self, path: &str, by: &str) -> Result<Record, QuarantineError> {
        let _lock = self.lock_state()?;
        self.reload();
        let rel = format!("/{}", path.trim_matches('/'));
        // The cgroup may be gone already: match the record by path first.
        let rec = self
            .records
            .iter()
            .find(|r| r.path == rel)
            .cloned()
            .or_else(|| {
                self.resolve(path).ok().map(|(id, rel)| Record {
                    cgroup_id: id,
                    path: rel,
                    reason: String::new(),
                    by: String::new(),
                    since_unix: 0,
                    expires_unix: None,
                    pod: None,
                })
            })
            .ok_or_else(|| QuarantineError::NotQuarantined(rel.clone()))?;
        // Cgroup entry first: the agent lifts interface entries whose
        // cgroup is no longer in the kernel map, never the other way round.
        let removed = self.maps.remove(rec.cgroup_id)?;
        self.release_ifaces(rec.cgroup_id);
        if !removed && !self.records.iter().any(|r| r.path == rel) {
            return Err(QuarantineError::NotQuarantined(rel));
        }
        self.records.retain(|r| r.cgroup_id != rec.cgroup_id);
        self.save()?;
        self.log("release", &rec, "", by);
        Ok(rec)
    }

    /// The record of a quarantined `namespace/pod`, if any.
    pub fn find_pod(&mut self, pod: &str) -> Option<Record> {
        self.reload();
        self.records
            .iter()
            .find(|r| r.pod.as_deref() == Some(pod))
            .cloned()
    }

    /// Re-reads the state file: the CLI writes it too.
    pub fn reload(&mut self) {
        if let Ok(b) = std::fs::read(&self.state)
            && let Ok(r) = serde_json::from_slice(&b)
        {
            self.records = r;
        }
    }

    /// Releases quarantines whose TTL has passed.
    pub fn expire(&mut self) -> Vec<Record> {
        let _lock = match self.lock_state() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "locking the quarantine state failed; expiring next tick");
                return Vec::new();
            }
        };
        self.reload();
        let now = now_unix();
        let due: Vec<Record> = self
            .records
            .iter()
            .filter(|r| r.expires_unix.is_some_and(|t| t <= now))
            .cloned()
            .collect();
        for r in &due {
            match self.maps.remove(r.cgroup_id) {
                Ok(_) => {
                    self.release_ifaces(r.cgroup_id);
                    self.records.retain(|x| x.cgroup_id != r.cgroup_id);
                    self.log("expire", r, "ttl passed", "agent");
                }
                Err(e) => {
                    tracing::warn!(path = %r.path, error = %e, "expiring a quarantine failed; retrying next tick")
                }
            }
        }
        if !due.is_empty()
            && let Err(e) = self.save()
        {
            tracing::warn!(error = %e, "writing the quarantine state failed");
        }
        due
    }

    /// Makes the kernel map and the state file agree after a restart: the
    /// kernel entries are the truth for what is blocked (they survived the
    /// agent); records whose entry vanished (pins removed, reboot) are put
    /// back if their cgroup still exists.
    pub fn reconcile(&mut self) -> Result<(), QuarantineError> {
        let _lock = self.lock_state()?;
        self.reload();
        let kernel = self.maps.list();
        for (id, e) in &kernel {
            if !self.records.iter().any(|r| r.cgroup_id == *id) {
                let rec = Record {
                    cgroup_id: *id,
                    path: format!("(cgroup id {id})"),
                    reason: "found in the kernel map without a state record".into(),
                    by: "agent:reconcile".into(),
                    since_unix: e.since_unix,
                    expires_unix: None,
                    pod: None,
                };
                self.log("adopt", &rec, &rec.reason.clone(), "agent");
                self.records.push(rec);
            }
        }
        let missing: Vec<Record> = self
            .records
            .iter()
            .filter(|r| !kernel.iter().any(|(id, _)| *id == r.cgroup_id))
            .cloned()
            .collect();
        for r in missing {
            match self.resolve(&r.path) {
                Ok((id, _)) => {
                    self.maps.insert(
                        id,
                        QuarantineEntry {
                            since_unix: r.since_unix,
                            flags: QF_NETWORK | QF_CONNECT,
                            _pad: 0,
                        },
                    )?;
                    self.records.retain(|x| x.cgroup_id != r.cgroup_id);
                    self.records.push(Record {
                        cgroup_id: id,
                        ..r.clone()
                    });
                    self.log("restore", &r, "state record without kernel entry", "agent");
                }
                Err(_) => {
                    self.records.retain(|x| x.cgroup_id != r.cgroup_id);
                    self.log("drop", &r, "cgroup no longer exists", "agent");
                }
            }
        }
        self.maps.sync_gate()?;
        self.save()
    }

    /// Takes the state lock (an exclusive flock on `quarantine.lock`,
    /// released when the returned file drops) for one read-modify-write:
    /// the agent and the CLI both write the state file, and without the
    /// lock a save by one could drop a record the other had just written.
    fn lock_state(&self) -> Result<std::fs::File, QuarantineError> {
        let io = |what| {
            let path = self.lock.clone();
            move |source| QuarantineError::Io { what, path, source }
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .map_err(io("opening"))?;
        f.lock().map_err(io("locking"))?;
        Ok(f)
    }

    fn save(&self) -> Result<(), QuarantineError> {
        // Per-process temporary name: the agent and the CLI both write the
        // file, and a shared name lets one rename the other's file away.
        let tmp = self
            .state
            .with_extension(format!("json.tmp.{}", std::process::id()));
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| QuarantineError::Io { what, path, source }
        };
        let body = serde_json::to_vec_pretty(&self.records).expect("records serialize");
        let mut f = std::fs::File::create(&tmp).map_err(io("writing", &tmp))?;
        f.write_all(&body).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &self.state).map_err(io("replacing", &self.state))
    }

    /// Appends one audit line; failures are logged, never fatal (the
    /// kernel already enforces).
    fn log(&self, action: &str, r: &Record, reason: &str, by: &str) {
        self.log_with(action, r, reason, by, None)
    }

    fn log_with(
        &self,
        action: &str,
        r: &Record,
        reason: &str,
        by: &str,
        evidence: Option<&serde_json::Value>,
    ) {
        let mut line = serde_json::json!({
            "ts_unix": now_unix(),
            "action": action,
            "cgroup": r.path,
            "cgroup_id": r.cgroup_id,
            "reason": if reason.is_empty() { &r.reason } else { reason },
            "by": if by.is_empty() { &r.by } else { by },
            "expires_unix": r.expires_unix,
        });
        if let Some(p) = &r.pod {
            line["pod"] = p.clone().into();
        }
        if let Some(e) = evidence {
            line["evidence"] = e.clone();
        }
        tracing::info!(action, cgroup = %r.path, reason, by, "quarantine audit");
        self.append_audit(&line);
    }

    /// Appends any audit event (e.g. a refused control API request) to the
    /// same log; `ts_unix` is added.
    pub fn audit(&self, mut event: serde_json::Value) {
        if let Some(o) = event.as_object_mut() {
            o.insert("ts_unix".into(), now_unix().into());
        }
        self.append_audit(&event);
    }

    fn append_audit(&self, line: &serde_json::Value) {
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.audit)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = res {
            tracing::warn!(file = %self.audit.display(), error = %e, "audit log write failed");
        }
    }
}

/// Who runs the CLI, for the audit log.
pub fn cli_user() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}
