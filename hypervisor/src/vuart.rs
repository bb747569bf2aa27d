//! A VM's virtual PL011: enough of the register file for a polling console
//! driver (and Linux's amba probe), with output line-buffered and printed
//! with the VM's label as prefix.

/// Register offsets.
const UARTDR: u64 = 0x000;
const UARTFR: u64 = 0x018;
const UARTIBRD: u64 = 0x024;
const UARTFBRD: u64 = 0x028;
const UARTLCR_H: u64 = 0x02c;
const UARTCR: u64 = 0x030;
const UARTIFLS: u64 = 0x034;
const UARTIMSC: u64 = 0x038;
const UARTRIS: u64 = 0x03c;
const UARTMIS: u64 = 0x040;
const UARTICR: u64 = 0x044;
/// Flag register: receive FIFO empty, transmit FIFO empty.
const FR_RXFE: u32 = 1 << 4;
const FR_TXFE: u32 = 1 << 7;
/// PeriphID0..3 and PCellID0..3 at 0xFE0..0xFFC (PL011 r1p5).
const ID_REGS: [u32; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// Longest line held before it is printed anyway: Linux's longest printk
/// record (its `PRINTK_MESSAGE_MAX`, 1024 bytes with the timestamp), so
/// that a kernel's line is never split.
pub const LINE_MAX: usize = 1024;

#[derive(Clone, Debug)]
pub struct VirtualUart {
    line: [u8; LINE_MAX],
    len: usize,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
}

impl Default for VirtualUart {
    fn default() -> Self {
        Self {
            line: [0; LINE_MAX],
            len: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            // Reset value: TXE | RXE.
            cr: 0x300,
            ifls: 0x12,
            imsc: 0,
        }
    }
}

impl VirtualUart {
    /// A guest read at `offset`. Unknown registers read as zero.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            UARTFR => FR_TXFE | FR_RXFE,
            UARTIBRD => self.ibrd,
            UARTFBRD => self.fbrd,
            UARTLCR_H => self.lcr_h,
            UARTCR => self.cr,
            UARTIFLS => self.ifls,
            UARTIMSC => self.imsc,
            UARTDR | UARTRIS | UARTMIS => 0,
            0xfe0..=0xffc if offset.is_multiple_of(4) => ID_REGS[((offset - 0xfe0) / 4) as usize],
            _ => 0,
        }
    }

    /// A guest write. `emit` receives each complete line (without the
    /// newline); writes to read-only or unknown registers are ignored.
    pub fn write(&mut self, offset: u64, value: u32, emit: &mut dyn FnMut(&[u8])) {
        match offset {
            UARTDR => self.put(value as u8, emit),
            UARTIBRD => self.ibrd = value & 0xffff,
            UARTFBRD => self.fbrd = value & 0x3f,
            UARTLCR_H => self.lcr_h = value & 0xff,
            UARTCR => self.cr = value & 0xff87,
            UARTIFLS => self.ifls = value & 0x3f,
            UARTIMSC => self.imsc = value & 0x7ff,
            UARTICR => {}
            _ => {}
        }
    }

    fn put(&mut self, byte: u8, emit: &mut dyn FnMut(&[u8])) {
        match byte {
            b'\n' => {
                // CRLF ends a line; any other carriage return stays in it
                // (the console shows it escaped: it must not go back over
                // the VM's prefix).
                if self.len > 0 && self.line[self.len - 1] == b'\r' {
                    self.len -= 1;
                }
                self.flush(emit)
            }
            _ => {
                if self.len == LINE_MAX {
                    self.flush(emit);
                }
                self.line[self.len] = byte;
                self.len += 1;
            }
        }
    }

    /// Print what is buffered as a line.
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) {
        emit(&self.line[..self.len]);
        self.len = 0;
    }

    /// Bytes buffered and not yet printed.
    pub fn pending(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn write_str(uart: &mut VirtualUart, s: &str, out: &mut Vec<String>) {
        for b in s.bytes() {
            uart.write(0, b.into(), &mut |line| {
                out.push(String::from_utf8_lossy(line).into_owned())
            });
        }
    }

    #[test]
    fn lines_are_emitted_on_newline_without_cr() {
        let mut uart = VirtualUart::default();
        let mut out = Vec::new();
        write_str(&mut uart, "hello\r\nwor", &mut out);
        assert_eq!(out, ["hello"]);
        assert_eq!(uart.pending(), 3);
        write_str(&mut uart, "ld\n", &mut out);
        assert_eq!(out, ["hello", "world"]);
    }

    #[test]
    fn a_lone_carriage_return_stays_in_the_line() {
        let mut uart = VirtualUart::default();
        let mut out = Vec::new();
        write_str(&mut uart, "abc\rphv: x\r\n\r\r\n", &mut out);
        assert_eq!(out, ["abc\rphv: x", "\r"]);
    }

    #[test]
    fn long_lines_are_split_not_dropped() {
        let mut uart = VirtualUart::default();
        let mut out = Vec::new();
        let long: String = core::iter::repeat_n('x', LINE_MAX + 5).collect();
        write_str(&mut uart, &long, &mut out);
        write_str(&mut uart, "\n", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), LINE_MAX);
        assert_eq!(out[1].len(), 5);
    }

    #[test]
    fn registers_read_back_and_ids_match_a_pl011() {
        let mut uart = VirtualUart::default();
        let mut sink = |_: &[u8]| {};
        assert_eq!(uart.read(UARTFR), FR_TXFE | FR_RXFE);
        uart.write(UARTCR, 0x301, &mut sink);
        uart.write(UARTLCR_H, 0x70, &mut sink);
        uart.write(UARTFR, 0xffff, &mut sink);
        assert_eq!(uart.read(UARTCR), 0x301);
        assert_eq!(uart.read(UARTLCR_H), 0x70);
        assert_eq!(uart.read(UARTFR), FR_TXFE | FR_RXFE, "FR is read-only");
        let ids: Vec<u32> = (0..8).map(|i| uart.read(0xfe0 + 4 * i)).collect();
        assert_eq!(ids, ID_REGS);
        assert_eq!(uart.read(0xfe1), 0, "misaligned id read");
        assert_eq!(uart.read(0x5000), 0);
    }
}
