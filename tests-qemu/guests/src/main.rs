//! The test guest: one image, the test chosen by `test=NAME` in its bootargs.
//! See tests-qemu/README.md for the tests and their arguments.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod hostile;
#[cfg(target_os = "none")]
mod pci_aer;
#[cfg(target_os = "none")]
mod pci_bench;
#[cfg(target_os = "none")]
mod pci_intx;
#[cfg(target_os = "none")]
mod pci_tests;
#[cfg(target_os = "none")]
mod tests;
#[cfg(target_os = "none")]
mod tests_arch;
#[cfg(target_os = "none")]
mod tests_gic;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("test-guest is a bare-metal image: build it with --target aarch64-unknown-none");
}
