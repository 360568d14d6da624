//! Tollgate agent library.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod ebpf;
pub mod config;
