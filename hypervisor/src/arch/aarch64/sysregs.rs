//! The hardware side of [`crate::sysreg`]: the EL2 trap controls of the
//! PMU, debug and ID registers, and emulating the accesses they trap.

use super::cpu::{Injected, inject_sync};
use super::trap::TrapFrame;
use crate::sysreg::{Access, Action, classify, has_amu, has_pmuv3, mdcr_el2, sanitize_id};
use core::arch::asm;

/// Read the hardware's ID register `S3_0_C0_C<crm>_<op2>` (CRm 1..7):
/// one `mrs` per encoding, the name is part of the instruction.
macro_rules! id_read {
    ($crm_v:expr, $op2_v:expr; $($crm:literal: [$($op2:literal),*]),*) => {
        match ($crm_v, $op2_v) {
            $($(($crm, $op2) => {
                let v: u64;
                // SAFETY: reading an ID register (allocated or, in this
                // space, RAZ) has no side effects.
                unsafe {
                    asm!(concat!("mrs {}, s3_0_c0_c", $crm, "_", $op2), out(reg) v,
                        options(nomem, nostack, preserves_flags))
                };
                v
            })*)*
            _ => 0,
        }
    };
}

fn read_id(crm: u8, op2: u8) -> u64 {
    id_read!(crm, op2;
        1: [0, 1, 2, 3, 4, 5, 6, 7],
        2: [0, 1, 2, 3, 4, 5, 6, 7],
        3: [0, 1, 2, 3, 4, 5, 6, 7],
        4: [0, 1, 2, 3, 4, 5, 6, 7],
        5: [0, 1, 2, 3, 4, 5, 6, 7],
        6: [0, 1, 2, 3, 4, 5, 6, 7],
        7: [0, 1, 2, 3, 4, 5, 6, 7]
    )
}

/// What this CPU's ID registers say about speculation (for the Spectre
/// workaround queries of SMCCC_ARCH_FEATURES).
pub fn cpu_speculation() -> crate::smccc::CpuSpeculation {
    crate::smccc::CpuSpeculation::from_id_registers(read_id(4, 0), read_id(4, 1))
}

/// CPTR_EL2 bits: trace registers (TTA) and activity monitors (TAM) trapped.
const CPTR_TTA: u64 = 1 << 20;
const CPTR_TAM: u64 = 1 << 30;

/// Program this CPU's MDCR_EL2 and quiet its PMU; returns the CPTR_EL2
/// bits to add (the caller writes CPTR_EL2).
pub fn init_el2() -> u64 {
    let dfr0 = read_id(5, 0);
    let pfr0 = read_id(4, 0);
    let mut counters = 0;
    if has_pmuv3(dfr0) {
        let pmcr: u64;
        // SAFETY: EL2 owns the PMU; no counter is used by the hypervisor.
        // Counting off, every counter and overflow interrupt disabled, and
        // EL0 access off, so nothing firmware left running can count or
        // interrupt.
        unsafe {
            asm!("mrs {}, pmcr_el0", out(reg) pmcr, options(nomem, nostack));
            asm!(
                "msr pmcr_el0, xzr",
                "msr pmcntenclr_el0, {all}",
                "msr pmintenclr_el1, {all}",
                "msr pmovsclr_el0, {all}",
                "msr pmuserenr_el0, xzr",
                "isb",
                all = in(reg) u64::from(u32::MAX),
                options(nostack),
            );
        }
        counters = (pmcr >> 11) & 0x1f;
    }
    let mdcr = mdcr_el2(dfr0, counters);
    // SAFETY: trap controls of this CPU; no guest runs on it yet.
    unsafe { asm!("msr mdcr_el2, {}", "isb", in(reg) mdcr, options(nostack)) };
    CPTR_TTA | if has_amu(pfr0) { CPTR_TAM } else { 0 }
}

/// Emulate a trapped MRS/MSR of the PMU, debug or ID registers. Returns
/// false for an access that is none of those (the caller's business).
pub fn emulate(frame: &mut TrapFrame, esr: u64) -> bool {
    let a = Access::decode(esr);
    let Some(action) = classify(&a) else {
        return false;
    };
    match action {
        Action::IdRead { crm, op2 } => {
            frame.set_reg(a.rt, sanitize_id(crm, op2, read_id(crm, op2)))
        }
        Action::OsLock => {
            let lock = frame.reg(a.rt) & 1;
            // SAFETY: the OS Lock of this CPU, whose only vCPU is the caller.
            unsafe { asm!("msr oslar_el1, {}", "isb", in(reg) lock, options(nostack)) };
        }
        Action::OsLockStatus => {
            let v: u64;
            // SAFETY: reading OSLSR_EL1 has no side effects.
            unsafe { asm!("mrs {}, oslsr_el1", out(reg) v, options(nomem, nostack)) };
            frame.set_reg(a.rt, v);
        }
        Action::RazWi => {
            if a.read {
                frame.set_reg(a.rt, 0);
            }
        }
        Action::Undefined => {
            inject_sync(frame, Injected::Undefined, 0);
            return true;
        }
    }
    frame.elr += 4;
    true
}
