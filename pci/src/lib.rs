//! PCIe logic of the hypervisor. Pure state machine: no hardware access except
//! through [`ConfigPort`]-style ports, no unsafe code.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
