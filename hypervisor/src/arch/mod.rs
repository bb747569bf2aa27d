//! Architecture-specific code.
pub mod aarch64;
