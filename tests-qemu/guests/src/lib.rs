//! Runtime and helpers of the EL1 test guests.
//!
//! `rt` (bare-metal only) is the guest's own start code: arm64 Image header,
//! self-relocation, an EL1 bootstrap identity map, exception vectors, per-vCPU
//! stacks, the console (CONSOLE_WRITE hypercall or PL011), SMCCC calls and the
//! pass/fail/power-off protocol of the scenarios (see tests-qemu/README.md).
#![cfg_attr(not(test), no_std)]

pub mod args;
pub mod pcienum;
pub mod smccc;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod rt;
