//! Tollgate agent library: everything but the CLI wiring in main.rs.
#![deny(unsafe_code)]

pub mod api;
pub mod baseline;
pub mod bench;
pub mod caps;
pub mod cgroupfs;
pub mod check;
pub mod collect;
pub mod config;
pub mod config_text;
pub mod control;
pub mod demo;
pub mod detect;
#[allow(unsafe_code)]
pub mod ebpf;
pub mod egress;
pub mod enforce;
pub mod enforce_metrics;
pub mod health;
pub mod inventory;
pub mod kernel;
pub mod logfmt;
pub mod memory;
pub mod metrics;
pub mod netdev;
pub mod podnet;
pub mod podtc;
pub mod qbench;
pub mod quarantine;
pub mod respond;
pub mod run;
pub mod storage;
pub mod top;
