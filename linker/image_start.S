/*
 * Start-up steps shared by the position-independent images: the hypervisor
 * (at EL2) and the test guests (at EL1). Assembler macros, included by their
 * head.rs files. No braces here: the text goes through format_args.
 */

/* x20 := the load address; apply the R_AARCH64_RELATIVE relocations:
 * *(base + r_offset) = base + r_addend. Clobbers x1-x5. */
.macro relocate_image
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
.endm

/* Zero .bss (4 KiB aligned at both ends). Clobbers x1, x2. */
.macro zero_bss
    adrp    x1, _bss_start
    add     x1, x1, :lo12:_bss_start
    adrp    x2, _bss_end
    add     x2, x2, :lo12:_bss_end
1:  cmp     x1, x2
    b.hs    2f
    stp     xzr, xzr, [x1], #16
    b       1b
2:
.endm

/* Fill the 512-entry level-1 table `table` with 1 GiB blocks of attributes
 * `device`, except the blocks holding the image (x20) and the DTB (x19),
 * which get `normal`. Leaves x1 = the table. Clobbers x2-x4. */
.macro fill_bootstrap_l1 table, device, normal
    adrp    x1, \table
    add     x1, x1, :lo12:\table
    mov     x2, #0
    ldr     x4, =\device
1:  lsl     x3, x2, #30
    orr     x3, x3, x4
    str     x3, [x1, x2, lsl #3]
    add     x2, x2, #1
    cmp     x2, #512
    b.lo    1b
    ldr     x4, =\normal
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
.endm
