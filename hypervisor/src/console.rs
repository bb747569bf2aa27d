//! The hypervisor's console and `log` backend.
//!
//! Until the DTB names a UART nothing is printed; `init` installs the PL011
//! the platform description found.

use crate::drivers::pl011::Pl011;
use core::fmt::Write;
use spin::Mutex;

static CONSOLE: Mutex<Option<Pl011>> = Mutex::new(None);

/// # Safety
/// `base` must be a mapped PL011 that nothing else drives.
pub unsafe fn init(base: usize) {
    // SAFETY: forwarded from the caller.
    let uart = unsafe { Pl011::new(base) };
    *CONSOLE.lock() = Some(uart);
    log::set_logger(&LOGGER).ok();
    log::set_max_level(log::LevelFilter::Info);
}

/// Write raw bytes (a guest's console line, already prefixed).
pub fn write_bytes(parts: &[&[u8]]) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        for part in parts {
            uart.write_bytes(part);
        }
    }
}

pub fn flush() {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        uart.flush();
    }
}

/// Print formatted text (boot and error paths only, never the trap fast path).
pub fn print(args: core::fmt::Arguments) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
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
        print(format_args!("phv: {level}{}\n", record.args()));
    }
    fn flush(&self) {}
}
