//! Detectors: per-pod window samples in, findings out (see [`Finding`]).
//!
//! Data flow (DESIGN.md): collect/ builds [`crate::collect::WindowSample`]s,
//! baseline/ keeps per-class models, the detectors here compare a sample
//! with its class baseline and emit findings, respond/ (alerts, quarantine,
//! Kubernetes events, audit log) consumes them. Time is a parameter
//! everywhere, never read from the clock here, so recorded windows replay
//! in seconds ([`replay`], [`synth`]).

mod config;
pub mod detectors;
mod drip;
mod engine;
mod finding;
pub mod live;
pub mod replay;
pub mod synth;

pub use config::{DetectConfig, DetectConfigError};
pub use engine::{Engine, EngineStats};
pub use finding::{Detector, Evidence, Finding, FindingState, Severity, Subject};

#[cfg(test)]
mod tests;
