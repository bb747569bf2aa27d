//! BAR memory of the simulated fabric as a [`MemoryPort`]: physical
//! addresses are decoded against the BARs as programmed (with Memory Space
//! enabled), like a host bridge routes MMIO. MSI-X tables are the modelled
//! ones; other BAR memory is plain storage that reads 0 until written.

use super::{Fabric, NONE, SimBar, rd16, rd32};
use crate::addr::Bdf;
use crate::port::MemoryPort;
use crate::regs::*;

impl Fabric {
    /// The function, BAR and offset that decode physical address `pa`.
    fn decode_mmio(&mut self, pa: u64) -> Option<(Bdf, u32, u8, u32)> {
        self.rebuild_routes();
        for (idx, f) in self.fns.iter().enumerate() {
            let Some(at) = f.at else { continue };
            if !f.present || f.tpl.vf || f.vf_of != NONE {
                continue;
            }
            if rd16(&f.cfg, COMMAND) & COMMAND_MEMORY == 0 {
                continue;
            }
            let bridge = f.tpl.spec.kind.is_bridge();
            let slots = if bridge { BARS_TYPE1 } else { BARS_TYPE0 } as usize;
            for (i, bar) in f.tpl.spec.bars.iter().enumerate().take(slots) {
                let off = BAR0 + 4 * i as u16;
                let (base, size) = match *bar {
                    SimBar::Mem32(size) => ((rd32(&f.cfg, off) & !0xf) as u64, size.max(16) as u64),
                    SimBar::Mem64(size) => (
                        ((rd32(&f.cfg, off + 4) as u64) << 32) | (rd32(&f.cfg, off) & !0xf) as u64,
                        size.max(16),
                    ),
                    _ => continue,
                };
                if base != 0 && pa >= base && pa - base < size {
                    return Some((at, idx as u32, i as u8, (pa - base) as u32));
                }
            }
        }
        None
    }

    fn mmio_read32(&mut self, pa: u64) -> u32 {
        let Some((bdf, idx, bar, off)) = self.decode_mmio(pa & !3) else {
            return u32::MAX;
        };
        match self.msix_slot(bdf, bar, off) {
            Ok(Some((i, slot))) => self.fns[i].msix[slot],
            Ok(None) => self.bar_ram.get(&(idx, bar, off)).copied().unwrap_or(0),
            Err(()) => u32::MAX,
        }
    }

    fn mmio_write32(&mut self, pa: u64, value: u32) {
        let Some((bdf, idx, bar, off)) = self.decode_mmio(pa & !3) else {
            return;
        };
        match self.msix_slot(bdf, bar, off) {
            Ok(Some((i, slot))) => self.fns[i].msix[slot] = value,
            Ok(None) => {
                self.bar_ram.insert((idx, bar, off), value);
            }
            Err(()) => {}
        }
    }
}

impl MemoryPort for Fabric {
    fn read(&mut self, pa: u64, width: u16) -> u64 {
        match width {
            8 => self.mmio_read32(pa) as u64 | ((self.mmio_read32(pa + 4) as u64) << 32),
            1 | 2 | 4 => {
                let dword = self.mmio_read32(pa);
                let v = dword >> (8 * (pa & 3));
                (v as u64) & ((1u64 << (8 * width)) - 1)
            }
            _ => u64::MAX,
        }
    }

    fn write(&mut self, pa: u64, width: u16, value: u64) {
        match width {
            8 => {
                self.mmio_write32(pa, value as u32);
                self.mmio_write32(pa + 4, (value >> 32) as u32);
            }
            4 => self.mmio_write32(pa, value as u32),
            1 | 2 => {
                let shift = 8 * (pa & 3);
                let mask = (((1u64 << (8 * width)) - 1) as u32) << shift;
                let cur = self.mmio_read32(pa);
                self.mmio_write32(pa, (cur & !mask) | (((value as u32) << shift) & mask));
            }
            _ => {}
        }
    }
}
