//! Detection inside `tollgate run`: snapshots in, windows, findings,
//! responders and the findings list the local API serves. Baselines are
//! loaded from the state dir at start and saved every
//! `detect.save_interval` and on shutdown.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::{DetectConfig, Engine, Finding, FindingState};
use crate::{
    baseline::{Baselines, StoreError, store},
    collect::{Snapshot, Windower, windower::subject_of},
    respond::Responder,
};

/// Resolved findings kept for `GET /v1/findings` after they end.
const RECENT_RESOLVED: usize = 256;

/// What `GET /v1/findings` serves: firing findings, then recently
/// resolved ones (oldest first).
pub type FindingsRx = watch::Receiver<Arc<Vec<Finding>>>;

pub struct Live {
    windower: Windower,
    engine: Engine,
    responders: Vec<Box<dyn Responder>>,
    /// Findings emitted during the current tick, returned by [`Live::tick`].
    emitted: Vec<Finding>,
    state_dir: PathBuf,
    save_interval: Duration,
    last_save: Instant,
    resolved: VecDeque<Finding>,
    tx: watch::Sender<Arc<Vec<Finding>>>,
}

/// Loads the baselines; a file that fails verification is moved aside
/// (kept for inspection, named in the log) and the classes relearn.
fn load_baselines(dir: &Path, cfg: &DetectConfig) -> Baselines {
    match Baselines::load_dir(dir, cfg) {
        Ok(b) => {
            tracing::info!(
                dir = %dir.display(),
                classes = b.classes().count(),
                learned = b.classes().filter(|(_, c)| c.learned()).count(),
                "baselines loaded"
            );
            b
        }
        Err(e) => {
            let path = dir.join(store::FILE_NAME);
            let aside = dir.join(format!(
                "{}.rejected-{}",
                store::FILE_NAME,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            ));
            let moved = std::fs::rename(&path, &aside).is_ok();
            tracing::error!(error = %e, moved_to = %aside.display(), moved, "baselines rejected; every class relearns from scratch");
            Baselines::new(cfg)
        }
    }
}

impl Live {
    /// `cgroup_mount`: for cpu.stat/cpu.max; `cidrs`: the config's
    /// internal/external table.
    pub fn new(
        cfg: &DetectConfig,
        state_dir: &Path,
        cgroup_mount: PathBuf,
        cidrs: Vec<(ipnet::IpNet, bool)>,
    ) -> (Self, FindingsRx) {
        let (tx, rx) = watch::channel(Arc::new(Vec::new()));
        let engine = Engine::new(cfg, load_baselines(state_dir, cfg));
        let live = Self {
            windower: Windower::new(cfg.window, Some(cgroup_mount), cidrs),
            engine,
            responders: Vec::new(),
            emitted: Vec::new(),
            state_dir: state_dir.to_owned(),
            save_interval: cfg.save_interval,
            last_save: Instant::now(),
            resolved: VecDeque::new(),
            tx,
        };
        (live, rx)
    }

    /// Adds a responder (alerts, auto-quarantine, ...).
    pub fn add_responder(&mut self, r: Box<dyn Responder>) {
        self.responders.push(r);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn emit(&mut self, f: Finding) {
        for r in &mut self.responders {
            r.on_finding(&f);
        }
        self.emitted.push(f.clone());
        if f.state == FindingState::Resolved {
            if self.resolved.len() == RECENT_RESOLVED {
                self.resolved.pop_front();
            }
            self.resolved.push_back(f);
        }
    }

    /// One collection pass: stratum hits at once, windows when one closes.
    /// Returns the findings emitted (new, updated, resolved) for the
    /// agent's responders.
    pub fn tick(&mut self, snap: &Snapshot) -> Vec<Finding> {
        let mut changed = false;
        for hit in &snap.stratum_hits {
            let subject = match snap.cgroups.iter().find(|r| r.cgroup_id == hit.cgroup_id) {
                Some(r) => subject_of(r),
                None => crate::detect::Subject {
                    cgroup_id: hit.cgroup_id,
                    class: crate::inventory::classes::DEFAULT_CLASS.into(),
                    ..Default::default()
                },
            };
            if let Some(f) = self.engine.stratum(&subject, hit, snap.taken_at) {
                self.emit(f);
                changed = true;
            }
        }
        let samples = self.windower.push(snap);
        if let Some(end) = samples.first().map(|s| s.end) {
            for s in &samples {
                for f in self.engine.observe(s) {
                    self.emit(f);
                }
            }
            for f in self.engine.sweep(end) {
                self.emit(f);
            }
            changed = true;
            tracing::debug!(windows = samples.len(), stats = ?self.engine.stats, "windows closed");
        }
        if changed {
            let mut list: Vec<Finding> = self.engine.firing().cloned().collect();
            list.extend(self.resolved.iter().cloned());
            self.tx.send_replace(Arc::new(list));
        }
        if self.last_save.elapsed() >= self.save_interval {
            self.save();
        }
        std::mem::take(&mut self.emitted)
    }

    /// Writes the baselines (errors are logged; the next save retries).
    pub fn save(&mut self) {
        self.last_save = Instant::now();
        match self.engine.baselines().save_dir(&self.state_dir) {
            Ok(()) => tracing::debug!(dir = %self.state_dir.display(), "baselines saved"),
            Err(e) => log_save_error(&e),
        }
    }
}

fn log_save_error(e: &StoreError) {
    tracing::warn!(error = %e, "saving baselines failed; retrying at the next interval");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_baselines_file_is_moved_aside() {
        let dir = std::env::temp_dir().join(format!("tollgate-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(store::FILE_NAME), b"not a baselines file").unwrap();
        let cfg = DetectConfig::default();
        let (live, rx) = Live::new(&cfg, &dir, PathBuf::from("/nonexistent"), Vec::new());
        assert_eq!(live.engine().baselines().classes().count(), 0);
        assert!(rx.borrow().is_empty());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(names.len(), 1);
        assert!(
            names[0].starts_with("baselines.json.rejected-"),
            "{names:?}"
        );
    }
}
