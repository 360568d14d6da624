//! Tollgate's kernel programs. One module per hook; entry points are thin
//! (`try_x(ctx) -> Result`); every raw packet read goes through
//! `packet::load`. Built for the BPF target by agent/build.rs (aya-build); on
//! the host this file compiles to an empty binary so workspace-wide cargo
//! commands work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// atomic_xadd: the only atomic add available on the BPF target.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod kernel;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
