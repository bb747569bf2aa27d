//! EL2 exception vectors and the trap frame.
//!
//! Each physical CPU's trap frame sits at the top of its stack: a trap from
//! EL1 stores the guest's general registers, ELR_EL2 and SPSR_EL2 there and
//! calls [`lower_el_sync`] / [`lower_el_irq`] with a pointer to it; on return
//! the registers are reloaded and `eret` resumes the guest. EL1 system
//! registers and FP/SIMD state are not touched by the hypervisor (it is built
//! soft-float), so they stay live in the CPU across traps and are saved only
//! when a physical CPU changes vCPU (see `vcpu::El1Context`).

use core::arch::global_asm;

/// Guest general registers as saved on a trap.
#[repr(C)]
#[derive(Clone, Debug, Default)]
pub struct TrapFrame {
    /// x0..x30.
    pub x: [u64; 31],
    /// Pad to keep the frame 16-byte aligned.
    pub _pad: u64,
    pub elr: u64,
    pub spsr: u64,
}

impl TrapFrame {
    /// Read general register `n` where 31 means xzr.
    #[inline]
    pub fn reg(&self, n: u8) -> u64 {
        match self.x.get(usize::from(n)) {
            Some(v) => *v,
            None => 0,
        }
    }

    /// Write general register `n`; writes to xzr (31) are dropped.
    #[inline]
    pub fn set_reg(&mut self, n: u8, value: u64) {
        if let Some(r) = self.x.get_mut(usize::from(n)) {
            *r = value;
        }
    }
}

pub const TRAP_FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const _: () = assert!(TRAP_FRAME_SIZE == 34 * 8);

macro_rules! save_frame {
    () => {
        r#"
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, elr_el2
    mrs     x2, spsr_el2
    stp     x30, xzr, [sp, #240]
    stp     x1, x2, [sp, #256]
    mov     x0, sp
"#
    };
}

global_asm!(
    concat!(
        r#"
.section .text.vectors, "ax"
.balign 2048
.global el2_vectors
el2_vectors:
    /* Current EL with SP_EL0: never used. */
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
    /* Current EL with SP_ELx: a fault in the hypervisor itself. */
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
    /* Lower EL, AArch64. */
.balign 0x80
    b       lower_sync_entry
.balign 0x80
    b       lower_irq_entry
.balign 0x80
    b       lower_irq_entry
.balign 0x80
    b       lower_serror_entry
    /* Lower EL, AArch32: refused (HCR_EL2.RW = 1), treated as a fault. */
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry
.balign 0x80
    b       hyp_fault_entry

lower_sync_entry:
"#,
        save_frame!(),
        r#"
    bl      lower_el_sync
    b       return_to_guest

lower_irq_entry:
"#,
        save_frame!(),
        r#"
    bl      lower_el_irq
    b       return_to_guest

lower_serror_entry:
"#,
        save_frame!(),
        r#"
    bl      lower_el_serror
    b       return_to_guest

hyp_fault_entry:
    /* Keep whatever stack we have; report and stop this CPU. */
    sub     sp, sp, #{frame_size}
"#,
        save_frame!(),
        r#"
    bl      hyp_fault
1:  wfe
    b       1b

/* enter_guest(frame: *const TrapFrame) -> !: sp becomes the frame. */
.global enter_guest
enter_guest:
    mov     sp, x0
return_to_guest:
    ldp     x1, x2, [sp, #256]
    msr     elr_el2, x1
    msr     spsr_el2, x2
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldr     x30, [sp, #240]
    eret
"#
    ),
    frame_size = const TRAP_FRAME_SIZE,
);

unsafe extern "C" {
    static el2_vectors: u8;
    /// Load the guest registers from `frame` (which must be the top of this
    /// CPU's stack) and `eret` to the guest.
    pub fn enter_guest(frame: *const TrapFrame) -> !;
}

/// Install the EL2 vector table on this CPU.
pub fn install_vectors() {
    use aarch64_cpu::registers::{VBAR_EL2, Writeable};
    VBAR_EL2.set(core::ptr::addr_of!(el2_vectors) as u64);
    aarch64_cpu::asm::barrier::isb(aarch64_cpu::asm::barrier::SY);
}
