//! Platform description discovered from the boot device tree.
#![no_std]

extern crate alloc;
