//! Guests that try to outlive or outrun the hypervisor's isolation:
//! `pci-stop` (vCPU 1 keeps using the device while vCPU 0 powers the VM
//! off).

use core::sync::atomic::{AtomicU64, Ordering};

use test_guests::println;
use test_guests::rt::{self, Env, Test, call};
use test_guests::smccc::*;

use crate::pci_tests::{enumerate_bus, scratch_register};

/// The scratch register vCPU 1 writes, and how many times it has.
static SCRATCH: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);

/// `pci-stop`: vCPU 1 writes an ever-changing value into the scratch
/// register of our device and makes a hypercall between writes; vCPU 0
/// powers the VM off meanwhile. The hypervisor must stop vCPU 1 before the
/// device goes back to the hardware domain, whose `recheck` finds the
/// register still (no write from us reaches it any more).
pub fn pci_stop(env: &Env) -> ! {
    let mut t = Test::new("pci-stop");
    let Some((_br, _ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    let Some((addr, _mask)) = tree.funcs().iter().find_map(scratch_register) else {
        t.fail(format_args!("no device with a scratch register"));
        t.finish(env)
    };
    SCRATCH.store(addr, Ordering::SeqCst);
    rt::set_secondary_main(writer);
    let r = call::hvc3(PSCI_CPU_ON, 1, rt::secondary_entry_addr(), 1);
    t.check_eq("CPU_ON(vCPU 1)", r, SUCCESS);
    let running = rt::poll_ms(2000, || {
        (WRITES.load(Ordering::SeqCst) > 1000).then_some(())
    });
    t.check(
        running.is_some(),
        format_args!("vCPU 1 did not start writing"),
    );
    println!("pci-stop: vCPU 1 writes {addr:#x} without pause; vCPU 0 powers the VM off");
    // Not `finish`: this is the point, with vCPU 1 still running.
    if t.failures == 0 {
        println!("pci-stop: ok");
    }
    rt::power_off(false)
}

fn writer(_cpu: usize) -> ! {
    let addr = SCRATCH.load(Ordering::SeqCst);
    let mut n: u32 = 0;
    loop {
        n = n.wrapping_add(16);
        // SAFETY: the scratch register of a BAR our enumeration assigned.
        unsafe { core::ptr::write_volatile(addr as *mut u32, n) };
        // A trap each round: a stopped VM must not get its hypercalls served.
        let _ = call::hvc3(SMCCC_VERSION, 0, 0, 0);
        let done = WRITES.fetch_add(1, Ordering::SeqCst);
        if done > 0 && done.is_multiple_of(1 << 16) {
            println!("pci-stop: vCPU 1 still writing ({done} writes)");
        }
    }
}
