//! Calls out of the hypervisor: platform PSCI (through the conduit the DTB
//! names) and semihosting (to end a QEMU run with a status).

use platform::PsciConduit;
use smccc::psci;
use smccc::{Hvc, Smc};

/// Start physical CPU `mpidr` at `entry` with x0 = `context`.
pub fn cpu_on(
    conduit: PsciConduit,
    mpidr: u64,
    entry: u64,
    context: u64,
) -> Result<(), psci::Error> {
    match conduit {
        PsciConduit::Smc => psci::cpu_on::<Smc>(mpidr, entry, context),
        PsciConduit::Hvc => psci::cpu_on::<Hvc>(mpidr, entry, context),
    }
}

pub fn system_off(conduit: PsciConduit) -> Result<(), psci::Error> {
    match conduit {
        PsciConduit::Smc => psci::system_off::<Smc>(),
        PsciConduit::Hvc => psci::system_off::<Hvc>(),
    }
}

pub fn system_reset(conduit: PsciConduit) -> Result<(), psci::Error> {
    match conduit {
        PsciConduit::Smc => psci::system_reset::<Smc>(),
        PsciConduit::Hvc => psci::system_reset::<Hvc>(),
    }
}

/// Semihosting SYS_EXIT with ADP_Stopped_ApplicationExit and `status`
/// (QEMU exits with that status). Returns only if semihosting is absent...
/// which on most targets means an undefined-instruction fault instead, so it
/// is used only when the boot DTB asks for it (`phv,exit = "semihosting"`).
pub fn semihosting_exit(status: u32) {
    let block: [u64; 2] = [0x20026, u64::from(status)];
    // SAFETY: SYS_EXIT (0x18) reads the two-word parameter block and ends the
    // run; the block outlives the call.
    unsafe {
        core::arch::asm!(
            "hlt #0xf000",
            inout("x0") 0x18u64 => _,
            in("x1") block.as_ptr(),
        );
    }
}
