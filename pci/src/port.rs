//! The port through which `pci` reaches physical config space.

use crate::addr::Bdf;

/// Config-space access to physical functions.
///
/// The hypervisor implements it over ECAM MMIO, tests with [`crate::sim`].
/// Callers pass offsets below 0x1000, naturally aligned for the width (`pci`
/// checks capability pointers so that it never computes a register past the
/// function's 4 KiB). An absent function reads all-ones and ignores writes,
/// as on hardware.
/// Implementations must not allocate: this is on the trap path.
pub trait ConfigPort {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32;
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32);
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16);
    fn write8(&mut self, bdf: Bdf, offset: u16, value: u8);

    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        let dword = self.read32(bdf, offset & !3);
        (dword >> ((offset & 2) * 8)) as u16
    }

    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        let dword = self.read32(bdf, offset & !3);
        (dword >> ((offset & 3) * 8)) as u8
    }
}

impl<P: ConfigPort + ?Sized> ConfigPort for &mut P {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        (**self).read32(bdf, offset)
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        (**self).write32(bdf, offset, value)
    }
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        (**self).write16(bdf, offset, value)
    }
    fn write8(&mut self, bdf: Bdf, offset: u16, value: u8) {
        (**self).write8(bdf, offset, value)
    }
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        (**self).read16(bdf, offset)
    }
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        (**self).read8(bdf, offset)
    }
}

/// Access to physical BAR memory (MMIO), for the registers that share an
/// MSI-X page with the table or PBA. The hypervisor implements it over its
/// device mappings, tests with `pci::sim`. `width` is 1, 2, 4 or 8 and
/// `pa` naturally aligned. Must not allocate.
pub trait MemoryPort {
    fn read(&mut self, pa: u64, width: u16) -> u64;
    fn write(&mut self, pa: u64, width: u16, value: u64);
}

impl<M: MemoryPort + ?Sized> MemoryPort for &mut M {
    fn read(&mut self, pa: u64, width: u16) -> u64 {
        (**self).read(pa, width)
    }
    fn write(&mut self, pa: u64, width: u16, value: u64) {
        (**self).write(pa, width, value)
    }
}
