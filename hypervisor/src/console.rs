//! The hypervisor's console and `log` backend.
//!
//! Everything printed (log lines, domains' console lines) is queued in a
//! fixed-size ring ([`crate::console_ring`]) under a short lock that never
//! waits for the UART: a producer may hold the PCI, vGIC or stage-2 locks.
//! [`drain`] feeds the UART only as far as its FIFO has room, without
//! waiting, and is called where no other lock is held: at the end of the
//! traps that may have queued output (console writes, PCI calls, config
//! writes, refused accesses: not the hot reads, which print nothing), of
//! each interrupt, before entering a guest, in the idle loop. Boot and halt
//! paths [`flush`] synchronously.
//!
//! Until the DTB names a UART nothing is printed; `init` installs the PL011
//! the platform description found.

use crate::console_ring::Ring;
use crate::drivers::pl011::Pl011;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use spin::Mutex;

/// Queue size: a burst of output (the PCI tree logged at the end of the
/// hardware domain's enumeration) is produced inside one trap and must fit.
const RING_SIZE: usize = 64 * 1024;

static RING: Mutex<Ring<RING_SIZE>> = Mutex::new(Ring::new());
/// The UART, taken by whoever drains.
static UART: Mutex<Option<Pl011>> = Mutex::new(None);
/// The UART's base address, for the bug path ([`print_on_bug`]), which
/// cannot wait for [`UART`]'s lock (0: no UART).
static UART_BASE: AtomicUsize = AtomicUsize::new(0);
/// The last byte the UART was given ended a line (set under the UART
/// lock): the bug path starts its lines on a fresh line.
static AT_LINE_START: AtomicBool = AtomicBool::new(true);
/// The ring may hold bytes (set under the ring lock): one load at the end
/// of a trap tells there is nothing to do.
static PENDING: AtomicBool = AtomicBool::new(false);

/// # Safety
/// `base` must be a mapped PL011 that nothing else drives.
pub unsafe fn init(base: usize) {
    // SAFETY: forwarded from the caller.
    let uart = unsafe { Pl011::new(base) };
    *UART.lock() = Some(uart);
    UART_BASE.store(base, Ordering::Release);
    log::set_logger(&LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
}

/// Queue a domain's console line: `prefix` (its `[label] `) as it is,
/// `line` escaped (see [`crate::console_ring::escape`]), then a newline. Never
/// waits for the UART.
pub fn write_line(prefix: &[u8], line: &[u8]) {
    let mut ring = RING.lock();
    ring.push_line(&[(prefix, false), (line, true), (b"\n", false)]);
    PENDING.store(true, Ordering::Release);
}

/// Queue a domain's line as [`write_line`] does and send what fits in the
/// UART's FIFO at once (the caller holds no lock but the VM's own console
/// line buffer).
pub fn write_line_and_drain(prefix: &[u8], line: &[u8]) {
    write_line(prefix, line);
    drain_some();
}

/// Feed the UART from the queue without waiting (a no-op when nothing is
/// queued). Call only with no other lock held.
#[inline]
pub fn drain() {
    if PENDING.load(Ordering::Acquire) {
        drain_some();
    }
}

#[cold]
#[inline(never)]
fn drain_some() {
    // Another CPU draining is as good.
    let Some(mut uart) = UART.try_lock() else {
        return;
    };
    let Some(uart) = uart.as_mut() else { return };
    let mut ring = RING.lock();
    loop {
        let chunk = ring.readable();
        if chunk.is_empty() {
            break;
        }
        let (n, all) = (uart.write_some(chunk), chunk.len());
        if let Some(&last) = n.checked_sub(1).and_then(|i| chunk.get(i)) {
            AT_LINE_START.store(last == b'\n', Ordering::Relaxed);
        }
        ring.consume(n);
        if n < all {
            break;
        }
    }
    PENDING.store(!ring.is_empty(), Ordering::Release);
}

/// Send everything queued and wait until it has left the UART (boot, halt
/// and system-off paths).
pub fn flush() {
    let mut uart = UART.lock();
    let Some(uart) = uart.as_mut() else { return };
    // What is queued now, and a drop notice: a domain producing on another
    // CPU meanwhile must not keep this CPU here.
    let mut budget = RING.lock().len() + 64;
    while budget > 0 {
        let mut ring = RING.lock();
        let Some(b) = ring.peek() else { break };
        if uart.try_write(b) {
            ring.pop();
            budget -= 1;
            AT_LINE_START.store(b == b'\n', Ordering::Relaxed);
        } else {
            drop(ring);
            core::hint::spin_loop();
        }
    }
    let ring = RING.lock();
    PENDING.store(!ring.is_empty(), Ordering::Release);
    drop(ring);
    uart.flush();
}

/// Print the reason of a hypervisor bug (a fault at EL2, a panic) and what
/// is queued, waiting for nothing that may never come: this CPU may hold
/// the queue's or the UART's lock (the bug may be inside a print), and
/// another CPU may hold them for ever. Each lock is waited for a moment
/// (another CPU's short critical section); the UART is then written
/// through the console's own handle (no other CPU writes meanwhile) or,
/// if its lock did not come free, through a handle of our own (another
/// CPU's output may interleave: the system stops right after).
#[cold]
pub fn print_on_bug(args: core::fmt::Arguments) {
    let base = UART_BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    let mut held = patiently(|| UART.try_lock());
    // SAFETY: `base` is the mapped PL011 that `init` was given. `Pl011::new`
    // asks that nothing else drive it; only used when the UART lock could
    // not be had, so a CPU holding it may still be writing: both only push
    // bytes into the transmit FIFO, so the worst outcome is interleaved
    // output on the way down.
    let mut own = unsafe { Pl011::new(base) };
    let uart = match held.as_deref_mut() {
        Some(Some(console)) => console,
        _ => &mut own,
    };
    if let Some(mut ring) = patiently(|| RING.try_lock()) {
        while let Some(b) = ring.peek() {
            put_waiting(uart, b);
            ring.pop();
        }
        PENDING.store(false, Ordering::Release);
    }
    if !AT_LINE_START.load(Ordering::Relaxed) {
        put_waiting(uart, b'\n');
    }
    struct Direct<'a>(&'a mut Pl011);
    impl Write for Direct<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            s.bytes().for_each(|b| put_waiting(self.0, b));
            Ok(())
        }
    }
    let _ = Direct(uart).write_fmt(args);
    AT_LINE_START.store(true, Ordering::Relaxed);
    uart.flush();
}

/// `try_lock` again for about a millisecond under QEMU: long enough for
/// another CPU's short critical section, short enough not to matter if
/// this CPU holds the lock.
fn patiently<G>(mut try_lock: impl FnMut() -> Option<G>) -> Option<G> {
    for _ in 0..1_000_000u32 {
        if let Some(g) = try_lock() {
            return Some(g);
        }
        core::hint::spin_loop();
    }
    None
}

fn put_waiting(uart: &mut Pl011, b: u8) {
    while !uart.try_write(b) {
        core::hint::spin_loop();
    }
}

/// Hold the console queue's lock for as long as the returned guard lives:
/// for the test that a panic inside a print does not hang the system.
pub fn hold_queue() -> impl Sized {
    RING.lock()
}

/// Print formatted text and flush (boot, halt and error paths only, never
/// the trap fast path).
pub fn print(args: core::fmt::Arguments) {
    queue_fmt(args);
    flush();
}

/// Queue formatted text (all of it, or nothing if it does not fit).
fn queue_fmt(args: core::fmt::Arguments) {
    let mut ring = RING.lock();
    let mut w = ring.writer();
    let _ = w.write_fmt(args);
    w.finish();
    PENDING.store(true, Ordering::Release);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct Logger;
static LOGGER: Logger = Logger;

impl log::Log for Logger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => "ERROR ",
            log::Level::Warn => "WARN  ",
            log::Level::Info => "",
            log::Level::Debug => "debug ",
            log::Level::Trace => "trace ",
        };
        queue_fmt(format_args!("phv: {level}{}\n", record.args()));
    }
    fn flush(&self) {}
}
