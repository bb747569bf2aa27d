//! Image header and the first instructions at EL2.
//!
//! The image is position independent: the start code applies its own
//! `R_AARCH64_RELATIVE` relocations, so QEMU `-kernel` or U-Boot `booti` may
//! load it at any 4 KiB aligned address. Before Rust code runs, the boot CPU
//! turns on a bootstrap identity map (Normal memory for the 1 GiB blocks
//! holding the image and the DTB, Device memory elsewhere) so that Rust code
//! may make unaligned and exclusive accesses; `mmu` replaces it with the real
//! tables once the DTB has been parsed.

use core::arch::global_asm;

/// Bytes of stack per physical CPU (the trap frame lives at its top).
pub const STACK_SIZE: usize = 64 * 1024;
/// Most physical CPUs the hypervisor drives.
pub const MAX_CPUS: usize = 8;

/// Everything a secondary CPU needs to turn its MMU on like the boot CPU did.
#[repr(C)]
#[derive(Debug)]
pub struct SecondaryBoot {
    pub mair: u64,
    pub tcr: u64,
    pub ttbr0: u64,
    pub sctlr: u64,
}

#[unsafe(no_mangle)]
pub static mut SECONDARY_BOOT: SecondaryBoot = SecondaryBoot {
    mair: 0,
    tcr: 0,
    ttbr0: 0,
    sctlr: 0,
};

#[repr(C, align(4096))]
pub struct Stacks(pub [[u8; STACK_SIZE]; MAX_CPUS]);

#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.noinit")]
pub static mut CPU_STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_CPUS]);

#[repr(C, align(4096))]
struct BootstrapTable([u64; 512]);

#[unsafe(no_mangle)]
static mut BOOTSTRAP_L1: BootstrapTable = BootstrapTable([0; 512]);

/// MAIR: index 0 Device-nGnRE, index 1 Normal write-back cacheable.
pub const MAIR_EL2_VALUE: u64 = 0xFF04;
/// SCTLR_EL2 RES1 bits with M, C and I set.
pub const SCTLR_EL2_MMU_ON: u64 = 0x30C5_0830 | 1 | (1 << 2) | (1 << 12);

global_asm!(
    r#"
.section .text.head, "ax"
.global _image_start_code
    /* arm64 Image header (Documentation/arch/arm64/booting.rst) */
    b       primary_entry              /* code0 */
    .long   0                          /* code1 */
    .quad   0                          /* text_offset */
    .quad   _image_size                /* image_size */
    .quad   0xA                        /* flags: LE, 4K pages, anywhere in RAM */
    .quad   0, 0, 0                    /* res2..res4 */
    .long   0x644D5241                 /* "ARM\x64" */
    .long   0                          /* res5 */

primary_entry:
    mov     x19, x0                    /* DTB */
    msr     daifset, #0xf
    mrs     x1, CurrentEL
    lsr     x1, x1, #2
    cmp     x1, #2
    b.ne    park

    /* Apply R_AARCH64_RELATIVE relocations: *(base + off) = base + addend. */
    adr     x20, _image_start
    adrp    x1, _rela_start
    add     x1, x1, :lo12:_rela_start
    adrp    x2, _rela_end
    add     x2, x2, :lo12:_rela_end
1:  cmp     x1, x2
    b.hs    2f
    ldp     x3, x4, [x1], #16          /* r_offset, r_info */
    ldr     x5, [x1], #8               /* r_addend */
    cmp     w4, #1027                  /* R_AARCH64_RELATIVE */
    b.ne    1b
    add     x5, x5, x20
    str     x5, [x20, x3]
    b       1b
2:
    /* Zero .bss (4 KiB aligned at both ends). */
    adrp    x1, _bss_start
    add     x1, x1, :lo12:_bss_start
    adrp    x2, _bss_end
    add     x2, x2, :lo12:_bss_end
3:  cmp     x1, x2
    b.hs    4f
    stp     xzr, xzr, [x1], #16
    b       3b
4:
    /* Bootstrap L1 table: 512 x 1 GiB blocks, Device-nGnRE + AF + XN ... */
    adrp    x1, BOOTSTRAP_L1
    add     x1, x1, :lo12:BOOTSTRAP_L1
    mov     x2, #0
    ldr     x4, =0x0040000000000401    /* XN | AF | AttrIndx 0 | block */
5:  lsl     x3, x2, #30
    orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
    add     x2, x2, #1
    cmp     x2, #512
    b.lo    5b
    /* ... except the blocks holding the image and the DTB: Normal WB, inner shareable. */
    ldr     x4, =0x0000000000000705    /* AF | SH inner | AttrIndx 1 | block */
    lsr     x2, x20, #30
    and     x2, x2, #511
    lsl     x3, x2, #30
    orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
    lsr     x2, x19, #30
    and     x2, x2, #511
    lsl     x3, x2, #30
    orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
    dsb     sy

    ldr     x2, ={mair}
    msr     mair_el2, x2
    /* T0SZ 25 (39-bit), start at L1, WB WA inner/outer, inner shareable, 4K, PS 40-bit */
    ldr     x2, =0x80823519
    msr     tcr_el2, x2
    msr     ttbr0_el2, x1
    isb
    tlbi    alle2
    dsb     sy
    isb
    ldr     x2, ={sctlr}
    msr     sctlr_el2, x2
    isb

    /* Stack of CPU 0. */
    adrp    x1, CPU_STACKS
    add     x1, x1, :lo12:CPU_STACKS
    add     x1, x1, #{stack_size}
    sub     x1, x1, #{frame_size}      /* the trap frame sits at the top */
    mov     sp, x1
    mov     x0, x19
    mov     x1, x20
    bl      primary_main
park:
    wfe
    b       park

/* Secondary CPUs come here from PSCI CPU_ON with x0 = logical CPU index. */
.global secondary_entry
secondary_entry:
    msr     daifset, #0xf
    mov     x19, x0
    adrp    x1, SECONDARY_BOOT
    add     x1, x1, :lo12:SECONDARY_BOOT
    ldp     x2, x3, [x1]               /* mair, tcr */
    ldp     x4, x5, [x1, #16]          /* ttbr0, sctlr */
    msr     mair_el2, x2
    msr     tcr_el2, x3
    msr     ttbr0_el2, x4
    isb
    tlbi    alle2
    dsb     sy
    isb
    msr     sctlr_el2, x5
    isb
    adrp    x1, CPU_STACKS
    add     x1, x1, :lo12:CPU_STACKS
    add     x2, x19, #1
    mov     x3, #{stack_size}
    madd    x1, x2, x3, x1
    sub     x1, x1, #{frame_size}
    mov     sp, x1
    mov     x0, x19
    bl      secondary_main
    b       park
.ltorg
"#,
    mair = const MAIR_EL2_VALUE,
    sctlr = const SCTLR_EL2_MMU_ON,
    stack_size = const STACK_SIZE,
    frame_size = const super::trap::TRAP_FRAME_SIZE,
);

unsafe extern "C" {
    static _image_start: u8;
    static _image_end: u8;
    /// Entry point for secondary CPUs, passed to PSCI CPU_ON.
    pub fn secondary_entry();
}

/// Physical range `[start, end)` of the loaded image including .bss.
pub fn image_range() -> (u64, u64) {
    // Identity mapped: addresses of linker symbols are physical addresses.
    (
        core::ptr::addr_of!(_image_start) as u64,
        core::ptr::addr_of!(_image_end) as u64,
    )
}
