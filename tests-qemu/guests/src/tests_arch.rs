//! `pmu-debug`: what a guest sees of the PMU, the debug registers and the
//! ID registers (docs/interfaces.md, "PMU, debug and ID registers").

use core::arch::asm;

use test_guests::println;
use test_guests::rt::{self, Env, Test, call};
use test_guests::smccc::*;

/// Read a system register by name (may trap: run it under `expect_abort`).
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: a system register read; a trapped one is an undefined
        // instruction `expect_abort` catches and skips.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nostack)) };
        v
    }};
}

/// Write a system register by name, then `isb`.
macro_rules! msr {
    ($reg:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: the test's own PMU/debug state; a trapped write is an
        // undefined instruction `expect_abort` catches and skips.
        unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nostack)) };
    }};
}

/// Every encoding of the ID register space HCR_EL2.TID3 traps
/// (op0 3, op1 0, CRn 0, CRm 1..7, op2 0..7), as `(CRm << 3 | op2, read)`.
macro_rules! id_space {
    ($($crm:literal: [$($op2:literal),*]),*) => {
        [$($((
            ($crm << 3) | $op2,
            {
                fn read() -> u64 {
                    let v: u64;
                    // SAFETY: ID registers (allocated or RAZ) have no side effects.
                    unsafe {
                        asm!(concat!("mrs {}, s3_0_c0_c", $crm, "_", $op2), out(reg) v,
                            options(nomem, nostack))
                    };
                    v
                }
                read as fn() -> u64
            },
        )),*),*]
    };
}

const ID_SPACE: [(u8, fn() -> u64); 56] = id_space!(
    1: [0, 1, 2, 3, 4, 5, 6, 7],
    2: [0, 1, 2, 3, 4, 5, 6, 7],
    3: [0, 1, 2, 3, 4, 5, 6, 7],
    4: [0, 1, 2, 3, 4, 5, 6, 7],
    5: [0, 1, 2, 3, 4, 5, 6, 7],
    6: [0, 1, 2, 3, 4, 5, 6, 7],
    7: [0, 1, 2, 3, 4, 5, 6, 7]
);

core::arch::global_asm!(
    ".section .text.bp_target, \"ax\"",
    ".global bp_target",
    "bp_target:",
    "    nop",
    "    ret",
);

unsafe extern "C" {
    /// A `nop; ret` the breakpoint check puts its breakpoint on.
    fn bp_target();
}

fn field(v: u64, lsb: u32) -> u64 {
    (v >> lsb) & 0xf
}

/// Expect `f` (one system register access) to be an undefined instruction.
fn undefined(t: &mut Test, what: &str, f: impl FnOnce()) {
    match rt::expect_abort(f) {
        Err(a) if a.ec() == rt::EC_UNKNOWN => {}
        Err(a) => t.fail(format_args!(
            "{what}: exception EC {:#x} (ESR {:#x}), expected an undefined instruction",
            a.ec(),
            a.esr
        )),
        Ok(()) => t.fail(format_args!(
            "{what}: not trapped (the PMU is the hypervisor's and hidden)"
        )),
    }
}

/// Expect `f` to run without an exception.
fn runs<R>(t: &mut Test, what: &str, f: impl FnOnce() -> R) -> Option<R> {
    match rt::expect_abort(f) {
        Ok(r) => Some(r),
        Err(a) => {
            t.fail(format_args!(
                "{what}: exception EC {:#x} (ESR {:#x})",
                a.ec(),
                a.esr
            ));
            None
        }
    }
}

/// The cycle counter set to count EL2 only (PMCCFILTR_EL0: P, U, NSK, NSU
/// exclude EL1 and EL0, NSH includes EL2), around `calls` hypercalls.
/// `None` when the PMU cannot be programmed (its first access trapped).
fn el2_cycles(calls: u32) -> Option<u64> {
    const FILTER_EL2_ONLY: u64 = (1 << 31) | (1 << 30) | (1 << 29) | (1 << 28) | (1 << 27);
    const CYCLE_COUNTER: u64 = 1 << 31;
    rt::expect_abort(|| msr!("pmccfiltr_el0", FILTER_EL2_ONLY)).ok()?;
    // Reset the cycle counter (C) and enable the PMU (E).
    msr!("pmcr_el0", (1 << 2) | 1);
    msr!("pmcntenset_el0", CYCLE_COUNTER);
    for _ in 0..calls {
        let _ = call::hvc3(PSCI_VERSION, 0, 0, 0);
    }
    let n = mrs!("pmccntr_el0");
    msr!("pmcntenclr_el0", CYCLE_COUNTER);
    msr!("pmcr_el0", 0);
    Some(n)
}

/// `pmu-debug`: the PMU is hidden (PMUVer 0) and every PMU register access
/// is an undefined instruction, so nothing counts the hypervisor's cycles
/// and no PMU interrupt can be armed; the ID registers read without a fault
/// (TID3 emulation) and stable; self-hosted debug is the guest's (MDSCR_EL1,
/// the OS Lock, breakpoints fire at EL1), the powerdown and double-lock
/// controls are RAZ/WI, the debug ROM address reads as absent, and a
/// watchpoint over the hypervisor's addresses does not reach EL2.
pub fn pmu_debug(env: &Env) -> ! {
    let mut t = Test::new("pmu-debug");

    // ID registers: every encoding of the trapped space reads, twice alike.
    let mut ids = [0u64; 56];
    for (i, (enc, read)) in ID_SPACE.iter().enumerate() {
        let (crm, op2) = (enc >> 3, enc & 7);
        if let Some(v) = runs(&mut t, "ID register read", read) {
            ids[i] = v;
            let again = read();
            t.check(
                again == v,
                format_args!("ID register c0_c{crm}_{op2} read {v:#x} then {again:#x}"),
            );
        }
    }
    let id = |crm: u8, op2: u8| ids[usize::from(((crm - 1) << 3) | op2)];
    let (pfr0, dfr0, isar0, mmfr0) = (id(4, 0), id(5, 0), id(6, 0), id(7, 0));
    println!(
        "ID_AA64PFR0 {pfr0:#x} ID_AA64DFR0 {dfr0:#x} ID_AA64ISAR0 {isar0:#x} ID_AA64MMFR0 {mmfr0:#x} ID_DFR0 {:#x}",
        id(1, 2)
    );
    for crm in 1..=7u8 {
        println!(
            "ID space c0_c{crm}: {:x?}",
            &ids[usize::from(crm - 1) * 8..usize::from(crm) * 8]
        );
    }
    let pmuver = field(dfr0, 8);
    t.check(
        pmuver == 0,
        format_args!("ID_AA64DFR0_EL1.PMUVer {pmuver}: the PMU is visible"),
    );
    let perfmon = field(id(1, 2), 24);
    t.check(
        perfmon == 0,
        format_args!("ID_DFR0_EL1.PerfMon {perfmon}: the PMU is visible"),
    );
    // State the hypervisor traps and does not switch is not advertised:
    // SVE, MPAM (PFR0), MTE, SME, NMI, GCS (PFR1), SVE's and SME's feature
    // registers (ZFR0, SMFR0).
    let (pfr1, zfr0, smfr0) = (id(4, 1), id(4, 4), id(4, 5));
    for (reg, value, lsb, name) in [
        ("ID_AA64PFR0_EL1", pfr0, 32, "SVE"),
        ("ID_AA64PFR0_EL1", pfr0, 40, "MPAM"),
        ("ID_AA64PFR1_EL1", pfr1, 8, "MTE"),
        ("ID_AA64PFR1_EL1", pfr1, 24, "SME"),
        ("ID_AA64PFR1_EL1", pfr1, 36, "NMI"),
        ("ID_AA64PFR1_EL1", pfr1, 44, "GCS"),
    ] {
        let f = field(value, lsb);
        t.check(
            f == 0,
            format_args!("{reg}.{name} {f}: a trapped feature is advertised"),
        );
    }
    t.check(
        zfr0 == 0 && smfr0 == 0,
        format_args!(
            "ID_AA64ZFR0 {zfr0:#x} / ID_AA64SMFR0 {smfr0:#x}: SVE/SME features advertised"
        ),
    );
    let debugver = field(dfr0, 0);
    t.check(
        debugver >= 6,
        format_args!("ID_AA64DFR0_EL1.DebugVer {debugver}: self-hosted debug hidden"),
    );
    t.check(
        field(pfr0, 0) != 0 && field(mmfr0, 0) != 0,
        format_args!("ID_AA64PFR0 {pfr0:#x} / ID_AA64MMFR0 {mmfr0:#x} read as zero"),
    );

    // The hypervisor's cycles are not counted, whatever the PMU says.
    match el2_cycles(100) {
        Some(n) => t.check(
            n == 0,
            format_args!("the cycle counter counted {n} cycles at EL2 over 100 hypercalls"),
        ),
        None => println!("cycle counter not programmable: no EL2 cycles counted"),
    }
    // Every PMU register access traps: no counter, no overflow interrupt.
    undefined(&mut t, "PMCR_EL0 read", || {
        mrs!("pmcr_el0");
    });
    undefined(&mut t, "PMCR_EL0 write", || msr!("pmcr_el0", 1));
    undefined(&mut t, "PMCCNTR_EL0 read", || {
        mrs!("pmccntr_el0");
    });
    undefined(&mut t, "PMCCFILTR_EL0 write", || {
        msr!("pmccfiltr_el0", 1 << 27)
    });
    undefined(&mut t, "PMCNTENSET_EL0 write", || {
        msr!("pmcntenset_el0", 1 << 31)
    });
    undefined(&mut t, "PMINTENSET_EL1 write", || {
        msr!("pmintenset_el1", 1 << 31)
    });
    undefined(&mut t, "PMOVSSET_EL0 write", || {
        msr!("pmovsset_el0", 1 << 31)
    });
    undefined(&mut t, "PMUSERENR_EL0 write", || msr!("pmuserenr_el0", 0xf));
    undefined(&mut t, "PMSELR_EL0 write", || msr!("pmselr_el0", 0));
    undefined(&mut t, "PMEVTYPER0_EL0 write", || {
        msr!("pmevtyper0_el0", 0x11)
    });
    undefined(&mut t, "PMEVCNTR0_EL0 read", || {
        mrs!("pmevcntr0_el0");
    });

    // Debug: the OS Lock is the guest's (Linux clears it at boot).
    runs(&mut t, "OSLAR_EL1 write 1", || msr!("oslar_el1", 1));
    let locked = runs(&mut t, "OSLSR_EL1 read", || mrs!("oslsr_el1")).unwrap_or(0);
    runs(&mut t, "OSLAR_EL1 write 0", || msr!("oslar_el1", 0));
    let unlocked = runs(&mut t, "OSLSR_EL1 read", || mrs!("oslsr_el1")).unwrap_or(2);
    t.check(
        locked & 2 != 0 && unlocked & 2 == 0,
        format_args!("OS Lock: OSLSR_EL1 {locked:#x} after locking, {unlocked:#x} after unlocking"),
    );
    // The double lock and the powerdown request act on the physical core:
    // RAZ/WI.
    runs(&mut t, "OSDLR_EL1 write", || msr!("osdlr_el1", 1));
    let dlk = runs(&mut t, "OSDLR_EL1 read", || mrs!("osdlr_el1")).unwrap_or(0);
    runs(&mut t, "OSDLR_EL1 write 0", || msr!("osdlr_el1", 0));
    t.check(
        dlk == 0,
        format_args!(
            "OSDLR_EL1 reads {dlk:#x} after writing DLK: the guest double-locked the core"
        ),
    );
    // DBGPRCR_EL1: RAZ/WI, or undefined where the CPU lacks it (QEMU).
    match rt::expect_abort(|| msr!("dbgprcr_el1", 1)) {
        Ok(()) => {
            let prcr = runs(&mut t, "DBGPRCR_EL1 read", || mrs!("dbgprcr_el1")).unwrap_or(0);
            t.check(
                prcr == 0,
                format_args!("DBGPRCR_EL1 reads {prcr:#x} after writing CORENPDRQ"),
            );
        }
        Err(a) if a.ec() == rt::EC_UNKNOWN => println!("DBGPRCR_EL1 not implemented"),
        Err(a) => t.fail(format_args!(
            "DBGPRCR_EL1 write: exception EC {:#x}",
            a.ec()
        )),
    }
    let rom = runs(&mut t, "MDRAR_EL1 read", || mrs!("mdrar_el1")).unwrap_or(1);
    t.check(
        rom == 0,
        format_args!("MDRAR_EL1 {rom:#x}: the debug ROM address is visible"),
    );

    // MDSCR_EL1 is the guest's: MDE (bit 15) and KDE (bit 13) read back.
    let mde_kde = (1 << 15) | (1 << 13);
    runs(&mut t, "MDSCR_EL1 write", || msr!("mdscr_el1", mde_kde));
    let mdscr = runs(&mut t, "MDSCR_EL1 read", || mrs!("mdscr_el1")).unwrap_or(0);
    t.check(
        mdscr & mde_kde == mde_kde,
        format_args!("MDSCR_EL1 {mdscr:#x} after writing MDE|KDE"),
    );

    // A breakpoint on its own code fires at EL1.
    let target = bp_target as *const () as u64;
    // DBGBCR: E, PMC = EL1 and EL0, BAS = 0xf (A64), unlinked address match.
    let bcr = 1 | (0b11 << 1) | (0xf << 5);
    let hit = runs(&mut t, "breakpoint setup", || {
        msr!("dbgbvr0_el1", target);
        msr!("dbgbcr0_el1", bcr);
    })
    .and_then(|()| {
        let r = rt::expect_abort(|| {
            // SAFETY: unmasks debug exceptions, calls `bp_target` (its
            // breakpointed nop is skipped by the handler), masks them again.
            unsafe {
                asm!("msr daifclr, #8", "isb", "blr {}", "msr daifset, #8", "isb",
                    in(reg) target, out("x30") _, options(nostack))
            }
        });
        msr!("dbgbcr0_el1", 0);
        r.err()
    });
    match hit {
        Some(a) if a.ec() == rt::EC_BREAKPOINT_SAME_EL => {}
        Some(a) => t.fail(format_args!(
            "breakpoint: exception EC {:#x}, expected a breakpoint at EL1",
            a.ec()
        )),
        None => t.fail(format_args!(
            "a breakpoint on its own code at {target:#x} did not fire at EL1"
        )),
    }

    // A watchpoint on every access to the low 2 GiB (the hypervisor's
    // image, stacks and the GIC among them) at every EL (HMC=1, SSC=0,
    // PAC=0b11) while debug exceptions are enabled at EL1 (KDE off, so the
    // guest's own accesses do not take it): the hypervisor's accesses must
    // not take it at EL2 (debug exceptions go to EL1, the debug target).
    let wcr = 1 | (0b11 << 1) | (0b11 << 3) | (0xff << 5) | (1 << 13) | (31 << 24);
    let watched = runs(&mut t, "watchpoint setup", || {
        msr!("mdscr_el1", 1 << 15);
        msr!("dbgwvr0_el1", 0);
        msr!("dbgwcr0_el1", wcr);
    });
    if watched.is_some() {
        let mut bad = 0;
        for _ in 0..100 {
            if call::hvc3(PSCI_VERSION, 0, 0, 0) <= 0 {
                bad += 1;
            }
        }
        rt::delay_ms(20);
        msr!("dbgwcr0_el1", 0);
        t.check(
            bad == 0,
            format_args!("{bad} of 100 hypercalls failed under a watchpoint"),
        );
    }
    msr!("mdscr_el1", 0);
    t.finish(env)
}
