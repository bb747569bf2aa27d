//! AArch64 EL2 specifics.
pub mod cpu;
pub mod firmware;
pub mod gic;
pub mod head;
pub mod mmu;
pub mod sysregs;
pub mod trap;
