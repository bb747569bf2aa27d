//! libFuzzer drives the stateful harness's driver (`pci/tests/stateful_driver`):
//! each input is one operation sequence, every invariant checked after
//! every operation. A violation the harness does not tolerate (see its
//! `KNOWN_OPEN`) is a crash, kept by libFuzzer with its input.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../../tests/stateful_driver/mod.rs"]
mod stateful_driver;
#[allow(dead_code)]
#[path = "../../tests/vpci_fixture/mod.rs"]
mod vpci_fixture;

fuzz_target!(|data: &[u8]| {
    if let Err(v) = stateful_driver::run(data, usize::MAX) {
        panic!(
            "{:?} violated at operation {} ({}): {}",
            v.check, v.step, v.op, v.detail
        );
    }
});
