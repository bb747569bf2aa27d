//! Console: CONSOLE_WRITE hypercall (default) or the PL011 the guest DT shows.
//!
//! A `println!` formats into a line buffer under a lock, so lines of vCPUs do
//! not interleave, then sends it: by hypercall in chunks of 48 bytes, or byte
//! by byte to the PL011.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use super::call::hvc;
use crate::smccc::{CONSOLE_CHUNK, PHV_CONSOLE_WRITE};

/// Where output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Backend {
    /// CONSOLE_WRITE hypercall; falls back to the PL011 if it is refused.
    Hvc = 0,
    Pl011 = 1,
}

static BACKEND: AtomicU8 = AtomicU8::new(Backend::Hvc as u8);
static PL011: AtomicUsize = AtomicUsize::new(0);
static LOCK: AtomicBool = AtomicBool::new(false);

pub fn set_backend(b: Backend) {
    BACKEND.store(b as u8, Ordering::SeqCst);
}

pub fn backend() -> Backend {
    if BACKEND.load(Ordering::SeqCst) == Backend::Pl011 as u8 {
        Backend::Pl011
    } else {
        Backend::Hvc
    }
}

/// Address of the PL011 (0: none known).
pub fn set_pl011(addr: usize) {
    PL011.store(addr, Ordering::SeqCst);
}

/// Address of the PL011 the DT shows (0: none).
pub fn pl011_base() -> usize {
    PL011.load(Ordering::SeqCst)
}

fn pl011_write(bytes: &[u8]) {
    let base = PL011.load(Ordering::SeqCst);
    if base == 0 {
        return;
    }
    for &b in bytes {
        for _ in 0..1_000_000 {
            // SAFETY: `base` is the PL011 from the DTB, mapped as Device
            // memory by the bootstrap map; FR is at 0x18 (TXFF bit 5).
            if unsafe { core::ptr::read_volatile((base + 0x18) as *const u32) } & (1 << 5) == 0 {
                break;
            }
        }
        // SAFETY: as above; UARTDR at offset 0.
        unsafe { core::ptr::write_volatile(base as *mut u32, u32::from(b)) };
    }
}

/// Print one line straight to the PL011 (the emulated UART under phv),
/// whatever the console backend is. Returns false if no PL011 is known.
pub fn pl011_line(args: fmt::Arguments<'_>) -> bool {
    if PL011.load(Ordering::SeqCst) == 0 {
        return false;
    }
    let locked = lock();
    let mut w = LineBuf::new();
    let _ = w.write_fmt(args);
    let _ = w.write_str("\n");
    pl011_write(w.as_bytes());
    if locked {
        LOCK.store(false, Ordering::Release);
    }
    true
}

/// One CONSOLE_WRITE of at most 48 bytes; returns x0.
pub fn console_write_raw(len: u64, bytes: &[u8]) -> i64 {
    let mut regs = [0u64; 6];
    for (i, b) in bytes.iter().take(CONSOLE_CHUNK).enumerate() {
        regs[i / 8] |= u64::from(*b) << (8 * (i % 8));
    }
    hvc(
        PHV_CONSOLE_WRITE,
        [len, regs[0], regs[1], regs[2], regs[3], regs[4], regs[5]],
    )
    .status()
}

fn send(bytes: &[u8]) {
    if backend() == Backend::Hvc {
        for chunk in bytes.chunks(CONSOLE_CHUNK) {
            let r = console_write_raw(chunk.len() as u64, chunk);
            if r != chunk.len() as i64 {
                // Refused: use the UART from now on, and say so.
                set_backend(Backend::Pl011);
                pl011_write(chunk);
                let mut w = LineBuf::new();
                let _ = write!(
                    w,
                    "\n(console: CONSOLE_WRITE returned {r}, using the PL011)\n"
                );
                pl011_write(w.as_bytes());
            }
        }
    } else {
        pl011_write(bytes);
    }
}

/// A fixed line buffer that flushes when full.
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    const fn new() -> Self {
        LineBuf {
            buf: [0; 256],
            len: 0,
        }
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    fn flush(&mut self) {
        send(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Take the console lock (bounded: a vCPU that died holding it does not
/// silence the others forever).
fn lock() -> bool {
    for _ in 0..50_000_000u32 {
        if LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

#[doc(hidden)]
pub fn _print_line(args: fmt::Arguments<'_>) {
    let locked = lock();
    let mut w = LineBuf::new();
    let _ = w.write_fmt(args);
    let _ = w.write_str("\n");
    w.flush();
    if locked {
        LOCK.store(false, Ordering::Release);
    }
}

/// Print a line on the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::rt::console::_print_line(format_args!($($arg)*))
    };
}
