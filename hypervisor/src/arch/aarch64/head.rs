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
    concat!(
        include_str!("../../../../linker/image_start.S"),
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

    relocate_image
    zero_bss
    /* Bootstrap L1 table: Device memory, except where the image and the DTB are. */
    fill_bootstrap_l1 BOOTSTRAP_L1, 0x0040000000000401, 0x0000000000000705

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
"#
    ),
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
