//! Responders: what happens to a [`Finding`] once a detector emitted it
//! (Alertmanager, auto-quarantine, Kubernetes events). The run loop hands
//! every emitted finding to every responder.

pub mod auto;
pub mod kube;

use crate::detect::Finding;

/// A consumer of findings. `on_finding` runs on the collection path: it
/// must not block (enqueue and return).
pub trait Responder {
    fn on_finding(&mut self, f: &Finding);
}
