//! `phv-cntvct`: prints the virtual counter (CNTVCT_EL0) in decimal, for
//! the test initramfs's `/init` (Linux lets EL0 read it). Under QEMU's
//! `-icount shift=0` one tick is one instruction of the whole machine, so
//! two readings bracket what happened between them exactly. A static
//! Linux arm64 executable without libc, built by xtask with rustc for
//! `aarch64-unknown-none` (only PC-relative code and the stack: it needs
//! no relocation).
#![no_std]
#![no_main]

use core::arch::asm;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(1)
}

fn exit(code: u64) -> ! {
    // SAFETY: the exit_group system call (94) does not return.
    unsafe { asm!("svc #0", in("x8") 94u64, in("x0") code, options(noreturn)) }
}

fn write(bytes: &[u8]) {
    // SAFETY: write(2) (64) on stdout reads `bytes`, which outlive the
    // call; x0 is clobbered by the result.
    unsafe {
        asm!("svc #0", in("x8") 64u64, inout("x0") 1u64 => _, in("x1") bytes.as_ptr(),
             in("x2") bytes.len(), options(nostack));
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let ticks: u64;
    // SAFETY: reading the virtual counter has no side effect; the ISB
    // keeps it from being read early.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) ticks, options(nomem, nostack)) };
    let mut buf = [0u8; 21];
    let mut at = buf.len() - 1;
    buf[at] = b'\n';
    let mut n = ticks;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    write(&buf[at..]);
    exit(0)
}
