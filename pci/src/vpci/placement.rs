//! Where BARs may decode: the memory a function answers for, and the rule
//! that keeps a guest's BARs apart from everyone else's.
//!
//! The hardware domain places every BAR (it enumerates), including those of
//! the functions it reports for guests. It is not trusted with them: a
//! guest's BAR aimed at RAM (the hypervisor's image, the hardware domain's
//! memory) or at an address outside the host bridge's windows would let the
//! guest reach that memory through its stage 2, and the hypervisor would
//! write the guest's MSI-X table there itself. And a BAR of the hardware
//! domain's own device placed over a guest's BAR would answer the guest's
//! accesses. So a guest gets a function only if each of its BARs lies in a
//! host-bridge memory window and overlaps no memory another owner's
//! function decodes ([`check_guest_placement`]), and afterwards the hardware
//! domain cannot make one of its functions decode over a guest's BAR
//! ([`super::Ownership`], through [`decoded_memory`]).

use alloc::vec::Vec;

use super::function::{size_bars, size_rom};
use super::{GuestBus, Owner, Ownership};
use crate::addr::Bdf;
use crate::port::ConfigPort;
use crate::regs::*;
use crate::topology::Topology;

/// Why a guest may not have a function: one of its BARs (`bar` 0-5, 6 the
/// expansion ROM) is misplaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementError {
    /// Not inside any memory window of the host bridge (RAM, the
    /// hypervisor's image, an unassigned BAR at 0, ...).
    OutsideWindows {
        function: Bdf,
        bar: u8,
        pa: u64,
        size: u64,
    },
    /// It overlaps memory that `other`, a function of the hardware domain,
    /// decodes.
    Overlaps {
        function: Bdf,
        bar: u8,
        pa: u64,
        size: u64,
        other: Bdf,
    },
    /// It overlaps a BAR of a function of guest `guest`.
    OverlapsGuest {
        function: Bdf,
        bar: u8,
        pa: u64,
        size: u64,
        guest: u16,
    },
}

/// A config write not yet carried out: `width` bytes of `value` at `reg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    pub reg: u16,
    pub width: u16,
    pub value: u32,
}

impl PendingWrite {
    /// Whether it writes any of the bytes `[reg, reg + len)`.
    pub fn touches(&self, reg: u16, len: u16) -> bool {
        self.reg < reg.saturating_add(len) && reg < self.reg.saturating_add(self.width)
    }
}

/// The dword at `at` (aligned) as it reads after `pending` is done.
pub(crate) fn dword_after<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    at: u16,
    pending: Option<PendingWrite>,
) -> u32 {
    let mut v = port.read32(bdf, at);
    if let Some(w) = pending {
        for i in 0..w.width {
            let byte = w.reg.saturating_add(i);
            if byte & !3 == at {
                let shift = 8 * u32::from(byte & 3);
                let b = (w.value >> (8 * u32::from(i))) & 0xff;
                v = (v & !(0xff << shift)) | (b << shift);
            }
        }
    }
    v
}

/// The BAR registers and the ROM register of a header type: (number of
/// BARs, ROM BAR offset). `None` for other header types.
fn bar_layout(header_type: u8) -> Option<(usize, u16)> {
    match header_type & HEADER_TYPE_MASK {
        HEADER_TYPE_NORMAL => Some((6, ROM_BAR)),
        HEADER_TYPE_BRIDGE => Some((2, BRIDGE_ROM_BAR)),
        _ => None,
    }
}

/// The memory `bdf` decodes once `pending` is done (or now): each memory BAR
/// (index 0-5) and the expansion ROM (index 6) if enabled, as
/// `(index, base, size)`, while Memory Space is on; nothing when it is off.
///
/// Sizing needs decoding off: when Memory Space is on it is turned off for
/// the few accesses the sizing takes, then restored, as Linux does to size
/// BARs. Callers size only on rare events (a BAR write while decoding, the
/// write that turns decoding on, a guest's start).
pub fn decoded_memory<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    pending: Option<PendingWrite>,
) -> Vec<(u8, u64, u64)> {
    let mut out = Vec::new();
    let Some((count, rom_reg)) = bar_layout(port.read8(bdf, HEADER_TYPE)) else {
        return out;
    };
    let command_after = dword_after(port, bdf, COMMAND, pending) as u16;
    if command_after == u16::MAX || command_after & COMMAND_MEMORY == 0 {
        return out;
    }
    let command = port.read16(bdf, COMMAND);
    if command & COMMAND_MEMORY != 0 {
        port.write16(bdf, COMMAND, command & !COMMAND_MEMORY);
    }
    let bars = size_bars(port, bdf, count);
    let rom = size_rom(port, bdf, rom_reg);
    if command & COMMAND_MEMORY != 0 {
        port.write16(bdf, COMMAND, command);
    }
    for (i, bar) in bars.iter().enumerate() {
        if !bar.is_memory() || bar.size == 0 {
            continue;
        }
        let at = BAR0 + 4 * i as u16;
        let lo = dword_after(port, bdf, at, pending) & !BAR_MEM_FLAGS;
        let hi = if bar.kind == super::function::BarKind::Mem64 {
            dword_after(port, bdf, at + 4, pending)
        } else {
            0
        };
        let base = (u64::from(hi) << 32) | u64::from(lo);
        out.push((i as u8, base & !(bar.size - 1), bar.size));
    }
    let r = dword_after(port, bdf, rom_reg, pending);
    if rom.size != 0 && r & ROM_ENABLE != 0 {
        out.push((6, u64::from(r & ROM_ADDRESS_MASK), rom.size));
    }
    out
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Whether guest `guest` may have the functions of `bus`: every BAR the
/// hypervisor would map for it or touch (sized when the bus was built; see
/// [`GuestBus::bar_placements`]) lies in one of the host bridge's memory `windows` (base, size) and
/// overlaps no memory that a function of another owner decodes: another
/// guest's BARs ([`Ownership`] records them) and what the hardware domain's
/// functions decode now (sized here, [`decoded_memory`]).
pub fn check_guest_placement<P: ConfigPort + ?Sized>(
    bus: &GuestBus,
    guest: u16,
    topo: &Topology,
    ownership: &Ownership,
    port: &mut P,
    windows: &[(u64, u64)],
) -> Result<(), PlacementError> {
    let mine: Vec<(Bdf, u8, u64, u64)> = bus.bar_placements().collect();
    for &(function, bar, pa, size) in &mine {
        let inside = windows
            .iter()
            .any(|&(base, len)| pa >= base && pa.saturating_add(size) <= base.saturating_add(len));
        if !inside || pa.checked_add(size).is_none() {
            return Err(PlacementError::OutsideWindows {
                function,
                bar,
                pa,
                size,
            });
        }
        if let Some(other) = ownership
            .guest_memory_owner(pa, size)
            .filter(|&g| g != guest)
        {
            return Err(PlacementError::OverlapsGuest {
                function,
                bar,
                pa,
                size,
                guest: other,
            });
        }
    }
    let others = topo
        .functions()
        .map(|(b, _)| b)
        .filter(|&b| ownership.owner(b) == Owner::Hwdom);
    for other in others {
        for (_, base, len) in decoded_memory(port, other, None) {
            if let Some(&(function, bar, pa, size)) = mine
                .iter()
                .find(|&&(_, _, pa, size)| overlaps((pa, size), (base, len)))
            {
                return Err(PlacementError::Overlaps {
                    function,
                    bar,
                    pa,
                    size,
                    other,
                });
            }
        }
    }
    Ok(())
}
