//! Image header, EL1 start code for the boot vCPU and secondaries, vectors.
//!
//! Like the hypervisor's `arch/aarch64/head.rs`, one level down: the image is
//! position independent and relocates itself, then turns on a bootstrap
//! identity map of 1 GiB blocks (Normal memory for the blocks holding the image
//! and the DTB, Device elsewhere) so Rust code may use unaligned and exclusive
//! accesses, enables FP/SIMD (the aarch64-unknown-none target uses it), sets a
//! stack and VBAR_EL1, and calls Rust.

use core::arch::global_asm;

/// Most vCPUs a test guest drives.
pub const MAX_CPUS: usize = 4;
/// Bytes of stack per vCPU.
pub const STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(4096))]
struct Stacks([[u8; STACK_SIZE]; MAX_CPUS]);

#[unsafe(no_mangle)]
static mut RT_STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_CPUS]);

#[repr(C, align(4096))]
struct Table([u64; 512]);

#[unsafe(no_mangle)]
static mut RT_L1: Table = Table([0; 512]);

/// MAIR: index 0 Device-nGnRE, index 1 Normal write-back cacheable.
pub const MAIR_EL1_VALUE: u64 = 0xFF04;
/// T0SZ 25 (39-bit VA, walk starts at L1), inner/outer WB WA, inner shareable,
/// 4 KiB granule, EPD1 (no TTBR1 walks), IPS 40-bit.
pub const TCR_EL1_VALUE: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);
/// SCTLR_EL1 RES1 bits (29, 28, 23, 22, 20, 11) with M, C and I.
pub const SCTLR_EL1_MMU_ON: u64 = 0x30D0_0800 | 1 | (1 << 2) | (1 << 12);
/// Device-nGnRE block: PXN | UXN | AF | AttrIndx 0 | block.
const DEVICE_BLOCK: u64 = (1 << 54) | (1 << 53) | (1 << 10) | 1;
/// Normal block: AF | inner shareable | AttrIndx 1 | block.
const NORMAL_BLOCK: u64 = (1 << 10) | (3 << 8) | (1 << 2) | 1;

global_asm!(
    concat!(
        include_str!("../../../../linker/image_start.S"),
        r#"
.section .text.head, "ax"
    /* arm64 Image header (Documentation/arch/arm64/booting.rst) */
    b       rt_primary_entry           /* code0 */
    .long   0                          /* code1 */
    .quad   0                          /* text_offset */
    .quad   _image_size                /* image_size */
    .quad   0xA                        /* flags: LE, 4K pages, anywhere in RAM */
    .quad   0, 0, 0                    /* res2..res4 */
    .long   0x644D5241                 /* "ARM\x64" */
    .long   0                          /* res5 */

rt_primary_entry:
    mov     x19, x0                    /* DTB */
    msr     daifset, #0xf
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #1
    b.ne    rt_park

    relocate_image
    zero_bss
    /* Bootstrap L1 table: Device memory, except where the image and the DTB are. */
    fill_bootstrap_l1 RT_L1, {device}, {normal}

    bl      rt_cpu_setup
    adrp    x1, RT_STACKS
    add     x1, x1, :lo12:RT_STACKS
    add     x1, x1, #{stack_size}
    mov     sp, x1
    mov     x0, x19
    mov     x1, x20
    bl      rt_primary_main
.global rt_park
rt_park:
    wfe
    b       rt_park

/* Secondary vCPUs: PSCI CPU_ON entry, x0 = context id = vCPU index. */
.global rt_secondary_entry
rt_secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0
    cmp     x19, #{max_cpus}
    b.hs    rt_park
    bl      rt_cpu_setup
    adrp    x1, RT_STACKS
    add     x1, x1, :lo12:RT_STACKS
    add     x2, x19, #1
    mov     x3, #{stack_size}
    madd    x1, x2, x3, x1
    mov     sp, x1
    mov     x0, x19
    bl      rt_secondary_main
    b       rt_park

/* FP/SIMD on, MMU on with RT_L1, VBAR_EL1. No stack; clobbers x1. */
rt_cpu_setup:
    mov     x1, #(3 << 20)             /* CPACR_EL1.FPEN = 0b11 */
    msr     cpacr_el1, x1
    ldr     x1, ={mair}
    msr     mair_el1, x1
    ldr     x1, ={tcr}
    msr     tcr_el1, x1
    adrp    x1, RT_L1
    add     x1, x1, :lo12:RT_L1
    msr     ttbr0_el1, x1
    adrp    x1, rt_vectors
    add     x1, x1, :lo12:rt_vectors
    msr     vbar_el1, x1
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x1, ={sctlr}
    msr     sctlr_el1, x1
    isb
    ret
.ltorg

/* Exception vectors: save x0-x30, ELR, SPSR; rt_exception(kind, frame) may
   change the saved ELR; restore and return. */
.macro RT_VECTOR kind
.balign 0x80
    sub     sp, sp, #{frame_size}
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       rt_exception_common
.endm

.balign 2048
.global rt_vectors
rt_vectors:
    RT_VECTOR 0
    RT_VECTOR 1
    RT_VECTOR 2
    RT_VECTOR 3
    RT_VECTOR 4
    RT_VECTOR 5
    RT_VECTOR 6
    RT_VECTOR 7
    RT_VECTOR 8
    RT_VECTOR 9
    RT_VECTOR 10
    RT_VECTOR 11
    RT_VECTOR 12
    RT_VECTOR 13
    RT_VECTOR 14
    RT_VECTOR 15

rt_exception_common:
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
    mrs     x1, elr_el1
    mrs     x2, spsr_el1
    stp     x30, x1, [sp, #240]
    str     x2, [sp, #256]
    mov     x1, sp
    bl      rt_exception
    ldp     x30, x1, [sp, #240]
    ldr     x2, [sp, #256]
    msr     elr_el1, x1
    msr     spsr_el1, x2
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
    add     sp, sp, #{frame_size}
    eret
"#
    ),
    device = const DEVICE_BLOCK,
    normal = const NORMAL_BLOCK,
    mair = const MAIR_EL1_VALUE,
    tcr = const TCR_EL1_VALUE,
    sctlr = const SCTLR_EL1_MMU_ON,
    stack_size = const STACK_SIZE,
    max_cpus = const MAX_CPUS,
    frame_size = const core::mem::size_of::<Frame>(),
);

/// Registers saved by the vectors.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub x: [u64; 31],
    pub elr: u64,
    pub spsr: u64,
    _pad: u64,
}

unsafe extern "C" {
    static _image_start: u8;
    static _image_end: u8;
    /// PSCI CPU_ON entry point for secondary vCPUs (context id = vCPU index).
    pub fn rt_secondary_entry();
}

/// `[start, end)` of the loaded image including .bss (identity mapped: VA == IPA).
pub fn image_range() -> (u64, u64) {
    (
        core::ptr::addr_of!(_image_start) as u64,
        core::ptr::addr_of!(_image_end) as u64,
    )
}
