//! Per-CPU EL2 configuration, the EL1 context of a vCPU, and injecting
//! exceptions into a VM.

use super::trap::TrapFrame;
use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::*;

/// HCR_EL2: EL1 is AArch64 (RW), stage 2 on (VM), set/way ops upgraded
/// (SWIO), physical IRQ/FIQ/SError to EL2 (IMO/FMO/AMO), SMC trapped (TSC),
/// broadcast TLB/cache maintenance inner shareable (FB, BSU=IS), pointer
/// authentication not trapped (API/APK: its keys are EL1 context), ID
/// register reads trapped (TID3: the guest sees them sanitized, see
/// `crate::sysreg`).
pub const HCR_EL2_GUEST: u64 = (1 << 31)
    | (1 << 18)
    | (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 19)
    | (1 << 9)
    | (1 << 10)
    | (1 << 41)
    | (1 << 40);

/// CPTR_EL2 (non-VHE): RES1 bits, FP/SIMD not trapped, SVE (TZ) and SME
/// (TSM) trapped; `sysregs::init_el2` adds the trace and activity monitor
/// traps.
const CPTR_EL2_VALUE: u64 = 0x33ff;
/// CNTHCTL_EL2: EL1 may read the physical counter and use the EL1 physical
/// timer; an event stream (bit 19 of the counter, about every 0.5 ms at
/// 1 GHz) wakes idle CPUs from WFE so they can check deadlines.
const CNTHCTL_EL2_VALUE: u64 = 0b11 | (1 << 2) | (19 << 4);
/// SCTLR_EL1 reset value for a vCPU: RES1 bits, MMU and caches off.
const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// SPSR for entering a vCPU: EL1h with D, A, I, F masked.
pub const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// Configure this CPU's EL2 controls for running VMs. Stage 2 settings
/// (VTTBR) are loaded per vCPU.
pub fn init_el2(vtcr: u64) {
    HCR_EL2.set(HCR_EL2_GUEST);
    CPTR_EL2.set(CPTR_EL2_VALUE | super::sysregs::init_el2());
    CNTHCTL_EL2.set(CNTHCTL_EL2_VALUE);
    CNTVOFF_EL2.set(0);
    VTCR_EL2.set(vtcr);
    barrier::isb(barrier::SY);
}

/// TPIDR_EL2 holds this CPU's logical index.
pub fn set_cpu_index(index: usize) {
    TPIDR_EL2.set(index as u64);
}

#[inline]
pub fn cpu_index() -> usize {
    TPIDR_EL2.get() as usize
}

/// This CPU's affinity fields (Aff3..Aff0).
pub fn mpidr() -> u64 {
    MPIDR_EL1.get() & 0xff_00ff_ffff
}

/// The counter (CNTPCT_EL0) after an ISB.
#[inline]
pub fn counter() -> u64 {
    barrier::isb(barrier::SY);
    CNTPCT_EL0.get()
}

pub fn counter_frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// Trap syndrome registers of the current exception.
#[derive(Clone, Copy, Debug)]
pub struct Syndrome {
    pub esr: u64,
    pub far: u64,
    pub hpfar: u64,
}

#[inline]
pub fn syndrome() -> Syndrome {
    Syndrome {
        esr: ESR_EL2.get(),
        far: FAR_EL2.get(),
        hpfar: HPFAR_EL2.get(),
    }
}

/// Load a VM's stage 2 and identity (VTTBR, VMPIDR, VPIDR) for one vCPU.
pub fn load_vm(vttbr: u64, vcpu_index: usize) {
    let midr: u64;
    // SAFETY: reading MIDR has no side effects.
    unsafe { core::arch::asm!("mrs {}, midr_el1", out(reg) midr) };
    // MPIDR: Aff0 = vCPU index, bit 31 RES1, U (bit 30) clear.
    let vmpidr = (1u64 << 31) | (vcpu_index as u64 & 0xff);
    // SAFETY: switching stage 2 while no VM code runs on this CPU; the TLB
    // entries of the VMID are invalidated so stale translations of a previous
    // run cannot be used.
    unsafe {
        core::arch::asm!(
            "msr vttbr_el2, {vttbr}",
            "msr vmpidr_el2, {vmpidr}",
            "msr vpidr_el2, {midr}",
            "isb",
            "tlbi vmalls12e1is",
            "dsb ish",
            "isb",
            vttbr = in(reg) vttbr,
            vmpidr = in(reg) vmpidr,
            midr = in(reg) midr,
        );
    }
}

/// EL1 system registers, timer and FP/SIMD state of a vCPU. The hypervisor
/// does not touch these while a vCPU runs on a CPU (it is built soft-float
/// and uses no EL1 registers), so they are saved and restored only when a CPU
/// switches vCPU: on CPU_ON (reset values), CPU_OFF and VM restart.
#[repr(C, align(16))]
#[derive(Clone, Debug)]
pub struct El1Context {
    pub sys: [u64; EL1_SYSREGS],
    pub fp: [u128; 32],
    pub fpsr: u64,
    pub fpcr: u64,
}

/// Number of EL1 system registers in [`El1Context::sys`], in this order:
/// SCTLR, TTBR0, TTBR1, TCR, MAIR, AMAIR, VBAR, CONTEXTIDR, TPIDR_EL1,
/// TPIDR_EL0, TPIDRRO_EL0, SP_EL0, SP_EL1, ELR_EL1, SPSR_EL1, ESR_EL1,
/// FAR_EL1, AFSR0, AFSR1, PAR, CPACR, CSSELR, CNTKCTL, CNTV_CTL, CNTV_CVAL,
/// CNTP_CTL, CNTP_CVAL.
pub const EL1_SYSREGS: usize = 27;

impl El1Context {
    /// Architectural reset state for a vCPU entering at EL1 with the MMU off.
    pub fn reset() -> Self {
        let mut sys = [0u64; EL1_SYSREGS];
        sys[0] = SCTLR_EL1_RESET;
        Self {
            sys,
            fp: [0; 32],
            fpsr: 0,
            fpcr: 0,
        }
    }

    /// Write this context into the CPU's EL1 registers.
    pub fn restore(&self) {
        let s = &self.sys;
        // SAFETY: EL1 registers of this CPU; no VM code runs on it now.
        unsafe {
            core::arch::asm!(
                "msr sctlr_el1, {0}", "msr ttbr0_el1, {1}", "msr ttbr1_el1, {2}",
                "msr tcr_el1, {3}", "msr mair_el1, {4}", "msr amair_el1, {5}",
                "msr vbar_el1, {6}", "msr contextidr_el1, {7}", "msr tpidr_el1, {8}",
                in(reg) s[0], in(reg) s[1], in(reg) s[2], in(reg) s[3], in(reg) s[4],
                in(reg) s[5], in(reg) s[6], in(reg) s[7], in(reg) s[8],
            );
            core::arch::asm!(
                "msr tpidr_el0, {0}", "msr tpidrro_el0, {1}", "msr sp_el0, {2}",
                "msr sp_el1, {3}", "msr elr_el1, {4}", "msr spsr_el1, {5}",
                "msr esr_el1, {6}", "msr far_el1, {7}", "msr afsr0_el1, {8}",
                in(reg) s[9], in(reg) s[10], in(reg) s[11], in(reg) s[12], in(reg) s[13],
                in(reg) s[14], in(reg) s[15], in(reg) s[16], in(reg) s[17],
            );
            core::arch::asm!(
                "msr afsr1_el1, {0}", "msr par_el1, {1}", "msr cpacr_el1, {2}",
                "msr csselr_el1, {3}", "msr cntkctl_el1, {4}", "msr cntv_ctl_el0, {5}",
                "msr cntv_cval_el0, {6}", "msr cntp_ctl_el0, {7}", "msr cntp_cval_el0, {8}",
                "isb",
                in(reg) s[18], in(reg) s[19], in(reg) s[20], in(reg) s[21], in(reg) s[22],
                in(reg) s[23], in(reg) s[24], in(reg) s[25], in(reg) s[26],
            );
            core::arch::asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "ldp q0, q1, [{fp}, #0]", "ldp q2, q3, [{fp}, #32]",
                "ldp q4, q5, [{fp}, #64]", "ldp q6, q7, [{fp}, #96]",
                "ldp q8, q9, [{fp}, #128]", "ldp q10, q11, [{fp}, #160]",
                "ldp q12, q13, [{fp}, #192]", "ldp q14, q15, [{fp}, #224]",
                "ldp q16, q17, [{fp}, #256]", "ldp q18, q19, [{fp}, #288]",
                "ldp q20, q21, [{fp}, #320]", "ldp q22, q23, [{fp}, #352]",
                "ldp q24, q25, [{fp}, #384]", "ldp q26, q27, [{fp}, #416]",
                "ldp q28, q29, [{fp}, #448]", "ldp q30, q31, [{fp}, #480]",
                "msr fpsr, {fpsr}",
                "msr fpcr, {fpcr}",
                fp = in(reg) self.fp.as_ptr(),
                fpsr = in(reg) self.fpsr,
                fpcr = in(reg) self.fpcr,
            );
        }
    }

    /// Read the CPU's EL1 registers into this context.
    pub fn save(&mut self) {
        let s = &mut self.sys;
        // SAFETY: reading EL1 registers has no side effects; the FP store
        // writes only into `self.fp`.
        unsafe {
            core::arch::asm!(
                "mrs {0}, sctlr_el1", "mrs {1}, ttbr0_el1", "mrs {2}, ttbr1_el1",
                "mrs {3}, tcr_el1", "mrs {4}, mair_el1", "mrs {5}, amair_el1",
                "mrs {6}, vbar_el1", "mrs {7}, contextidr_el1", "mrs {8}, tpidr_el1",
                out(reg) s[0], out(reg) s[1], out(reg) s[2], out(reg) s[3], out(reg) s[4],
                out(reg) s[5], out(reg) s[6], out(reg) s[7], out(reg) s[8],
            );
            core::arch::asm!(
                "mrs {0}, tpidr_el0", "mrs {1}, tpidrro_el0", "mrs {2}, sp_el0",
                "mrs {3}, sp_el1", "mrs {4}, elr_el1", "mrs {5}, spsr_el1",
                "mrs {6}, esr_el1", "mrs {7}, far_el1", "mrs {8}, afsr0_el1",
                out(reg) s[9], out(reg) s[10], out(reg) s[11], out(reg) s[12], out(reg) s[13],
                out(reg) s[14], out(reg) s[15], out(reg) s[16], out(reg) s[17],
            );
            core::arch::asm!(
                "mrs {0}, afsr1_el1", "mrs {1}, par_el1", "mrs {2}, cpacr_el1",
                "mrs {3}, csselr_el1", "mrs {4}, cntkctl_el1", "mrs {5}, cntv_ctl_el0",
                "mrs {6}, cntv_cval_el0", "mrs {7}, cntp_ctl_el0", "mrs {8}, cntp_cval_el0",
                out(reg) s[18], out(reg) s[19], out(reg) s[20], out(reg) s[21], out(reg) s[22],
                out(reg) s[23], out(reg) s[24], out(reg) s[25], out(reg) s[26],
            );
            core::arch::asm!(
                ".arch_extension fp",
                ".arch_extension simd",
                "stp q0, q1, [{fp}, #0]", "stp q2, q3, [{fp}, #32]",
                "stp q4, q5, [{fp}, #64]", "stp q6, q7, [{fp}, #96]",
                "stp q8, q9, [{fp}, #128]", "stp q10, q11, [{fp}, #160]",
                "stp q12, q13, [{fp}, #192]", "stp q14, q15, [{fp}, #224]",
                "stp q16, q17, [{fp}, #256]", "stp q18, q19, [{fp}, #288]",
                "stp q20, q21, [{fp}, #320]", "stp q22, q23, [{fp}, #352]",
                "stp q24, q25, [{fp}, #384]", "stp q26, q27, [{fp}, #416]",
                "stp q28, q29, [{fp}, #448]", "stp q30, q31, [{fp}, #480]",
                "mrs {fpsr}, fpsr",
                "mrs {fpcr}, fpcr",
                fp = in(reg) self.fp.as_mut_ptr(),
                fpsr = out(reg) self.fpsr,
                fpcr = out(reg) self.fpcr,
            );
        }
    }
}

impl El1Context {
    /// Check the save and restore sequences against each other on this CPU:
    /// restore a pattern, save it back, compare. Run once at boot, before any
    /// VM runs here. Returns the index of the first register that differs.
    pub fn self_test() -> Result<(), usize> {
        let mut pattern = Self::reset();
        // Registers that take arbitrary values without side effects while
        // EL2 runs (TTBRs, VBAR, thread ids, SP_EL0/1, ELR/SPSR/ESR/FAR_EL1).
        for i in [1, 2, 6, 8, 9, 10, 11, 12, 13, 15, 16] {
            pattern.sys[i] = 0x5a5a_0000_0000_1000 + ((i as u64) << 12);
        }
        pattern.sys[14] = 0x3c5;
        for (i, q) in pattern.fp.iter_mut().enumerate() {
            *q = 0x0123_4567_89ab_cdef_0000_0000_0000_0000 | i as u128;
        }
        pattern.fpcr = 0x0300_0000;
        pattern.restore();
        let mut back = Self::reset();
        back.save();
        if let Some(i) = (0..EL1_SYSREGS).find(|&i| {
            [1, 2, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16].contains(&i)
                && back.sys[i] != pattern.sys[i]
        }) {
            return Err(i);
        }
        if back.fp != pattern.fp || back.fpcr != pattern.fpcr {
            return Err(EL1_SYSREGS);
        }
        Ok(())
    }
}

/// Kinds of synchronous exception the hypervisor injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Synchronous external abort on a data access.
    DataAbort { write: bool },
    /// Synchronous external abort on an instruction fetch.
    InstructionAbort,
    /// Undefined instruction (e.g. a trapped system register access).
    Undefined,
}

/// Make the vCPU take a synchronous exception at EL1, as hardware would:
/// ELR_EL1/SPSR_EL1/ESR_EL1/FAR_EL1 set and execution resumed at the right
/// offset of VBAR_EL1 with interrupts masked.
pub fn inject_sync(frame: &mut TrapFrame, kind: Injected, far: u64) {
    let from_el0 = frame.spsr & 0xf == 0;
    const IL: u64 = 1 << 25;
    // DFSC/IFSC 0x10: synchronous external abort, not on a table walk.
    let esr = match kind {
        Injected::DataAbort { write } => {
            let ec: u64 = if from_el0 { 0x24 } else { 0x25 };
            (ec << 26) | IL | (u64::from(write) << 6) | 0x10
        }
        Injected::InstructionAbort => {
            let ec: u64 = if from_el0 { 0x20 } else { 0x21 };
            (ec << 26) | IL | 0x10
        }
        Injected::Undefined => IL,
    };
    let vbar = VBAR_EL1.get();
    let offset = match frame.spsr & 0xf {
        0b0000 => 0x400, // from EL0 (AArch64)
        0b0100 => 0x000, // EL1t
        _ => 0x200,      // EL1h
    };
    // The EL1 exception registers of the vCPU running on this CPU.
    ELR_EL1.set(frame.elr);
    SPSR_EL1.set(frame.spsr);
    ESR_EL1.set(esr);
    FAR_EL1.set(far);
    frame.elr = vbar + offset;
    frame.spsr = SPSR_EL1H_MASKED;
}

/// Clean the data cache lines holding `[start, start + len)` to the point
/// of coherency (DC CVAC), then DSB: memory holds what this CPU wrote, for
/// an observer that does not look in the caches (a CPU with its MMU off).
pub fn clean_dcache_to_poc(start: usize, len: usize) {
    // CTR_EL0.DminLine: log2 of the smallest data cache line in words.
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let line = 4usize << ((ctr >> 16) & 0xf);
    let mut at = start & !(line - 1);
    while at < start + len {
        // SAFETY: cleaning a line of mapped memory writes back its content
        // and changes no value a program can read.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) at, options(nostack)) };
        at += line;
    }
    // SAFETY: a barrier only.
    unsafe { core::arch::asm!("dsb sy", options(nostack)) };
}

/// Load from an address no translation regime of EL2 maps (the top page
/// of the 64-bit space, outside TTBR0_EL2's range): the synchronous
/// exception goes to `hyp_fault`, which stops the system. For the test
/// that a hypervisor fault does so.
pub fn load_unmapped() -> ! {
    // SAFETY: the load faults and the exception handler never returns
    // here, so nothing reads the register; the asm touches no Rust-visible
    // memory and clobbers only the output register.
    unsafe {
        core::arch::asm!(
            "ldr {tmp}, [{addr}]",
            addr = in(reg) 0xffff_ffff_ffff_f000u64,
            tmp = out(reg) _,
            options(nostack, readonly),
        );
    }
    unreachable!("a load from an unmapped address returned")
}

/// Wait for an event (another CPU's `sev`).
#[inline]
pub fn wait_for_event() {
    aarch64_cpu::asm::wfe();
}
