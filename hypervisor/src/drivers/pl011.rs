//! Arm PL011 UART: the hypervisor's console.

use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::register_bitfields;
use tock_registers::register_structs;
use tock_registers::registers::{ReadOnly, ReadWrite};

register_bitfields! [u32,
    FR [
        /// Transmit FIFO full.
        TXFF OFFSET(5) NUMBITS(1) [],
        /// UART busy transmitting.
        BUSY OFFSET(3) NUMBITS(1) [],
    ],
];

register_structs! {
    pub Pl011Registers {
        (0x000 => dr: ReadWrite<u32>),
        (0x004 => _reserved0),
        (0x018 => fr: ReadOnly<u32, FR::Register>),
        (0x01c => @END),
    }
}

/// A PL011 driven by polling. Firmware (or QEMU) has configured the baud
/// rate. Writes never wait: the console queues its output and feeds the
/// FIFO as it has room.
#[derive(Debug)]
pub struct Pl011 {
    regs: *const Pl011Registers,
}

// SAFETY: the register block is MMIO owned by the hypervisor; concurrent use
// is serialised by the console's UART lock.
unsafe impl Send for Pl011 {}

impl Pl011 {
    /// # Safety
    /// `base` must be the identity-mapped (Device memory) address of a PL011
    /// that nothing else drives.
    pub const unsafe fn new(base: usize) -> Self {
        Self {
            regs: base as *const Pl011Registers,
        }
    }

    fn regs(&self) -> &Pl011Registers {
        // SAFETY: `new`'s contract: `regs` points at a mapped PL011.
        unsafe { &*self.regs }
    }

    /// Put `byte` in the transmit FIFO if it has room (false: full, not
    /// written).
    #[inline]
    pub fn try_write(&mut self, byte: u8) -> bool {
        if self.regs().fr.is_set(FR::TXFF) {
            return false;
        }
        self.regs().dr.set(u32::from(byte));
        true
    }

    /// Put as many of `bytes` in the transmit FIFO as it has room for;
    /// returns how many.
    #[inline]
    pub fn write_some(&mut self, bytes: &[u8]) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            if !self.try_write(b) {
                return i;
            }
        }
        bytes.len()
    }

    /// Wait until everything written has left the UART.
    pub fn flush(&mut self) {
        while self.regs().fr.is_set(FR::BUSY) {
            core::hint::spin_loop();
        }
    }
}
