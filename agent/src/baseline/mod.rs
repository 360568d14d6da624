//! Per-class baselines: what each workload class normally does.
//!
//! Per class: robust per-feature quantiles over a sliding horizon
//! ([`quantiles`], hdrhistogram), a Gaussian mixture over log1p-scaled
//! features ([`gmm`], linfa), and the set of destination prefixes the
//! class uses with the most it sent there ([`dests`]). A class may alert
//! only after its learning period (`detect.learning_windows` windows and
//! `detect.learning_duration`). Baselines persist in the state directory
//! ([`store`]). Time always comes from the window samples.

pub mod dests;
pub mod features;
pub mod gmm;
pub mod quantiles;
pub mod store;

use std::{
    collections::{BTreeMap, VecDeque},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

pub use features::Feature;
use features::{N, Vector};
pub use store::StoreError;

use crate::{collect::WindowSample, detect::DetectConfig};

/// One class's model.
#[derive(Debug, Clone)]
pub struct ClassBaseline {
    /// Windows trained on.
    pub windows: u64,
    pub first_at: Option<SystemTime>,
    pub last_at: Option<SystemTime>,
    /// When the learning period ended; None while learning.
    pub learned_at: Option<SystemTime>,
    quantiles: quantiles::RingHist,
    reservoir: VecDeque<[f32; N]>,
    since_fit: u64,
    gmm: Option<gmm::Gmm>,
    pub dests: dests::DestSet,
    /// Mixture fits that failed (the class then alerts on quantiles only).
    pub fit_errors: u64,
}

/// Persisted form of a class (the mixture is refitted from the reservoir
/// on load, so the file does not depend on linfa's internals).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassState {
    pub windows: u64,
    #[serde(with = "humantime_serde")]
    pub first_at: Option<SystemTime>,
    #[serde(with = "humantime_serde")]
    pub last_at: Option<SystemTime>,
    #[serde(with = "humantime_serde")]
    pub learned_at: Option<SystemTime>,
    pub quantiles: quantiles::RingHistState,
    pub reservoir: Vec<[f32; N]>,
    pub dests: dests::DestSet,
}

/// Persisted form of all classes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BaselinesState {
    pub classes: BTreeMap<String, ClassState>,
}

/// All classes' baselines.
#[derive(Debug, Clone)]
pub struct Baselines {
    cfg: DetectConfig,
    classes: BTreeMap<String, ClassBaseline>,
}

impl ClassBaseline {
    fn new(cfg: &DetectConfig) -> Self {
        Self {
            windows: 0,
            first_at: None,
            last_at: None,
            learned_at: None,
            quantiles: quantiles::RingHist::new(cfg.horizon, cfg.horizon_buckets),
            reservoir: VecDeque::new(),
            since_fit: 0,
            gmm: None,
            dests: dests::DestSet::default(),
            fit_errors: 0,
        }
    }

    pub fn learned(&self) -> bool {
        self.learned_at.is_some()
    }

    /// The mixture, once fitted.
    pub fn gmm(&self) -> Option<&gmm::Gmm> {
        self.gmm.as_ref()
    }

    fn refit(&mut self, cfg: &DetectConfig, class: &str) {
        self.since_fit = 0;
        let data: Vec<[f32; N]> = self.reservoir.iter().copied().collect();
        match gmm::Gmm::fit(&data, cfg.gmm_components, cfg.gmm_quantile, cfg.gmm_margin) {
            Ok(g) => {
                tracing::debug!(
                    class,
                    windows = data.len(),
                    threshold = g.threshold,
                    "mixture refitted"
                );
                self.gmm = Some(g);
            }
            Err(e) => {
                self.fit_errors += 1;
                tracing::warn!(class, windows = data.len(), error = %e, "fitting the class mixture failed; the class alerts on quantiles only until the next refit");
            }
        }
    }

    fn state(&self) -> ClassState {
        ClassState {
            windows: self.windows,
            first_at: self.first_at,
            last_at: self.last_at,
            learned_at: self.learned_at,
            quantiles: self.quantiles.state(),
            reservoir: self.reservoir.iter().copied().collect(),
            dests: self.dests.clone(),
        }
    }

    fn from_state(s: &ClassState, cfg: &DetectConfig, class: &str) -> Result<Self, String> {
        let mut c = Self::new(cfg);
        c.windows = s.windows;
        c.first_at = s.first_at;
        c.last_at = s.last_at;
        c.learned_at = s.learned_at;
        c.quantiles =
            quantiles::RingHist::from_state(&s.quantiles, cfg.horizon, cfg.horizon_buckets)?;
        let skip = s.reservoir.len().saturating_sub(cfg.gmm_reservoir);
        c.reservoir = s.reservoir.iter().skip(skip).copied().collect();
        c.dests = s.dests.clone();
        if c.learned() {
            c.refit(cfg, class);
        }
        Ok(c)
    }
}

impl Baselines {
    pub fn new(cfg: &DetectConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            classes: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    pub fn class(&self, name: &str) -> Option<&ClassBaseline> {
        self.classes.get(name)
    }

    pub fn classes(&self) -> impl Iterator<Item = (&String, &ClassBaseline)> {
        self.classes.iter()
    }

    /// The class finished its learning period.
    pub fn learned(&self, class: &str) -> bool {
        self.classes.get(class).is_some_and(|c| c.learned())
    }

    /// The class's `detect.quantile` of a feature; None before any window.
    pub fn quantile(&self, class: &str, f: Feature) -> Option<f64> {
        self.quantile_at(class, f, self.cfg.quantile)
    }

    pub fn quantile_at(&self, class: &str, f: Feature, q: f64) -> Option<f64> {
        self.classes.get(class)?.quantiles.quantile(f, q)
    }

    /// The window's log-likelihood under the class mixture and the class's
    /// threshold; None without a fitted mixture.
    pub fn likelihood(&self, s: &WindowSample) -> Option<(f64, f64)> {
        let g = self.classes.get(&s.subject.class)?.gmm.as_ref()?;
        let v = features::vector(s, self.cfg.profile_unlimited_cores);
        Some((g.loglik(&features::log_scaled(&v)), g.threshold))
    }

    /// Fills `new_class_destinations` and `new_class_destination_bytes`:
    /// external prefixes the class does not know, and the bytes sent there.
    pub fn annotate(&self, s: &mut WindowSample) {
        let known = |p: &str| {
            self.classes
                .get(&s.subject.class)
                .is_some_and(|c| c.dests.is_known(p))
        };
        let mut new: BTreeMap<String, u64> = BTreeMap::new();
        for peer in s.peers.iter().filter(|p| p.external) {
            let p = dests::prefix(peer.addr);
            if !known(&p) {
                *new.entry(p).or_default() += peer.tx_bytes;
            }
        }
        s.features.new_class_destinations = new.len() as u64;
        s.features.new_class_destination_bytes = new.values().sum();
    }

    /// Trains the class of `s` on it. `horizon_bytes` gives the pod's
    /// cumulative bytes per prefix over the drip horizon.
    pub fn train(&mut self, s: &WindowSample, horizon_bytes: &BTreeMap<String, u64>) {
        let cfg = &self.cfg;
        let class = s.subject.class.as_str();
        let c = self
            .classes
            .entry(class.to_owned())
            .or_insert_with(|| ClassBaseline::new(cfg));
        let at = s.end;
        c.first_at.get_or_insert(at);
        c.last_at = Some(c.last_at.map_or(at, |t| t.max(at)));
        c.windows += 1;
        let learning = !c.learned();
        let v: Vector = features::vector(s, cfg.profile_unlimited_cores);
        c.quantiles.record(at, &v);
        c.reservoir.push_back(features::log_scaled(&v));
        while c.reservoir.len() > cfg.gmm_reservoir {
            c.reservoir.pop_front();
        }
        c.since_fit += 1;
        let mut window: BTreeMap<String, u64> = BTreeMap::new();
        for peer in s.peers.iter().filter(|p| p.external) {
            *window.entry(dests::prefix(peer.addr)).or_default() += peer.tx_bytes;
        }
        for (p, bytes) in &window {
            let horizon = horizon_bytes.get(p).copied().unwrap_or(*bytes);
            c.dests.observe(
                p,
                s.subject.cgroup_id,
                *bytes,
                horizon,
                at,
                learning,
                cfg.promote_pods,
                cfg.max_prefixes,
            );
        }
        let old_enough = c
            .first_at
            .is_some_and(|f| at.duration_since(f).unwrap_or_default() >= cfg.learning_duration);
        if learning && c.windows >= cfg.learning_windows && old_enough {
            c.learned_at = Some(at);
            c.refit(cfg, class);
            tracing::info!(
                class,
                windows = c.windows,
                prefixes = c.dests.prefixes.len(),
                mixture = c.gmm.is_some(),
                "class baseline learned; its pods may now alert"
            );
        } else if !learning && c.since_fit >= cfg.gmm_refit_windows {
            c.refit(cfg, class);
        }
    }

    pub fn state(&self) -> BaselinesState {
        BaselinesState {
            classes: self
                .classes
                .iter()
                .map(|(k, c)| (k.clone(), c.state()))
                .collect(),
        }
    }

    /// Rebuilds baselines from a persisted state under the current config.
    pub fn from_state(s: &BaselinesState, cfg: &DetectConfig) -> Result<Self, String> {
        let mut b = Self::new(cfg);
        for (name, c) in &s.classes {
            let class = ClassBaseline::from_state(c, cfg, name)
                .map_err(|e| format!("class {name:?}: {e}"))?;
            b.classes.insert(name.clone(), class);
        }
        Ok(b)
    }

    /// Loads `<dir>/baselines.json`; a missing file gives empty baselines
    /// (every class learns from scratch).
    pub fn load_dir(dir: &std::path::Path, cfg: &DetectConfig) -> Result<Self, StoreError> {
        let path = dir.join(store::FILE_NAME);
        match store::load(&path) {
            Ok(state) => Self::from_state(&state, cfg).map_err(|why| StoreError::Decode {
                path: path.clone(),
                why,
            }),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::new(cfg))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `<dir>/baselines.json` atomically.
    pub fn save_dir(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        store::save(&dir.join(store::FILE_NAME), &self.state())
    }
}

#[cfg(test)]
mod tests;
