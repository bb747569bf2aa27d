//! AArch64 EL2 specifics.
pub mod head;
pub mod trap;
