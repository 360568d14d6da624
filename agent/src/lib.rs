//! Tollgate agent library: everything but the CLI wiring in main.rs.
#![deny(unsafe_code)]

pub mod api;
pub mod bench;
pub mod cgroupfs;
pub mod check;
pub mod collect;
pub mod config;
pub mod control;
pub mod detect;
#[allow(unsafe_code)]
pub mod ebpf;
pub mod inventory;
pub mod metrics;
pub mod quarantine;
pub mod respond;
pub mod run;
pub mod storage;
pub mod top;
