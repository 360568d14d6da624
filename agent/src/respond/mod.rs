//! Responders: what happens to a finding. The run loop hands every
//! emitted finding (firing, updated, resolved) to each responder in turn.

use crate::detect::{Finding, FindingState};

/// Consumes findings. Must not block: enqueue and return (the run loop
/// calls it between collection ticks).
pub trait Responder: Send {
    fn on_finding(&mut self, f: &Finding);
}

/// Writes every finding as one JSON line to the log (target
/// `tollgate::finding`), for log shippers; the engine's own structured
/// events are for humans.
#[derive(Debug, Default)]
pub struct LogResponder {
    pub logged: u64,
}

impl Responder for LogResponder {
    fn on_finding(&mut self, f: &Finding) {
        self.logged += 1;
        let json = serde_json::to_string(f).unwrap_or_default();
        match f.state {
            FindingState::Firing => tracing::warn!(target: "tollgate::finding", finding = %json),
            FindingState::Resolved => tracing::info!(target: "tollgate::finding", finding = %json),
        }
    }
}
