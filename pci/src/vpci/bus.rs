//! A guest's virtual PCI bus: the virtual ECAM, its root ports, the
//! assigned functions below them, BAR mapping and the MSI-X pages.

use alloc::vec::Vec;

use super::effects::{BarRefusal, Effect, Effects};
use super::function::{AssignedFn, BarKind, PAGE, REMAP_ALL, REMAP_ROM};
use super::ownership::width_ones;
use super::rootport::{RootPortTemplate, VirtualRootPort};
use super::{GuestLayout, VpciError};
use crate::addr::Bdf;
use crate::port::{ConfigPort, MemoryPort};
use crate::regs::*;
use crate::topology::Topology;

/// Most virtual root ports: devices 1..=31 of bus 0.
pub const MAX_UNITS: usize = 31;
/// Most functions of one unit: the function numbers of device 0.
pub const MAX_UNIT_FUNCTIONS: usize = 8;
const NO_PORT: u8 = u8::MAX;
/// In [`GuestBus::bus_port`]: the bus is the secondary bus of a root port
/// holding its Secondary Bus Reset (nothing below answers).
const HELD_IN_RESET: u8 = u8::MAX - 1;
const _: () = assert!(MAX_UNITS < HELD_IN_RESET as usize);
/// No function (more than any function index: at most
/// `MAX_UNITS * MAX_UNIT_FUNCTIONS` functions).
const NO_FN: u8 = u8::MAX;
const _: () = assert!(MAX_UNITS * MAX_UNIT_FUNCTIONS < NO_FN as usize);
/// Index used for the expansion ROM in [`Effect::BarRefused`].
pub const ROM_INDEX: u8 = 6;

/// A guest's virtual PCI bus. See the module docs of [`crate::vpci`].
#[derive(Debug)]
pub struct GuestBus {
    layout: GuestLayout,
    template: RootPortTemplate,
    ports: Vec<VirtualRootPort>,
    /// Per root port: function index by virtual function number (NO_FN:
    /// none), a fixed table (no length to check on a lookup).
    port_fns: [[u8; MAX_UNIT_FUNCTIONS]; MAX_UNITS],
    fns: Vec<AssignedFn>,
    /// Virtual bus number -> root port whose secondary bus it is
    /// ([`HELD_IN_RESET`] while that port holds its Secondary Bus Reset).
    /// Rebuilt whenever a port's bus numbers or reset state change.
    bus_port: [u8; 256],
}

/// `width` (1, 2 or 4) bytes at `at` of `buf`, naturally aligned, in one
/// load of the dword holding them. `None` if they are not inside `buf`.
#[inline]
pub(crate) fn dword_lanes(buf: &[u8], at: usize, width: u16) -> Option<u32> {
    let base = at & !3;
    let dword: [u8; 4] = buf.get(base..base + 4)?.try_into().ok()?;
    let value = u32::from_le_bytes(dword) >> (8 * (at & 3));
    Some(value & (((1u64 << (8 * u32::from(width.min(4)))) - 1) as u32))
}

/// A read of a virtual root port's config bytes, as
/// [`VirtualRootPort::read`] does, in one load where the bytes are there.
#[inline]
fn root_port_read(p: &VirtualRootPort, reg: u16, width: u16) -> u32 {
    match dword_lanes(&p.cfg, usize::from(reg), width) {
        Some(v) => v,
        None => p.read(reg, width),
    }
}

impl GuestBus {
    /// Builds the virtual bus for the units given to a guest (as returned
    /// by [`super::Ownership::assign`]): one virtual root port per unit, at
    /// device `index + 1` of bus 0; the unit's functions on device 0 of its
    /// secondary bus. Function numbers are kept when the unit is one
    /// physical device with its function 0 (a multi-function device stays
    /// as it is); otherwise they are compacted 0, 1, ... in address order.
    ///
    /// Reads each physical function once (BAR sizing with decoding off,
    /// capabilities), then leaves its physical Memory decoding on and Bus
    /// Master off until the guest sets it. Enables Memory and Bus Master on
    /// every bridge above the functions (they must forward the guest's
    /// accesses and DMA; [`super::Ownership`] keeps them so).
    pub fn new<P: ConfigPort + ?Sized>(
        units: &[Vec<Bdf>],
        topo: &Topology,
        port: &mut P,
        layout: GuestLayout,
    ) -> Result<Self, VpciError> {
        if units.len() > MAX_UNITS {
            return Err(VpciError::TooManyUnits(units.len()));
        }
        let template = RootPortTemplate::new();
        let mut ports = Vec::with_capacity(units.len());
        let mut port_fns = [[NO_FN; MAX_UNIT_FUNCTIONS]; MAX_UNITS];
        let mut fns = Vec::new();
        for (u, members) in units.iter().enumerate() {
            let mut members = members.clone();
            members.sort_unstable();
            members.dedup();
            if members.is_empty() || members.len() > MAX_UNIT_FUNCTIONS {
                return Err(VpciError::UnitSize {
                    unit: u,
                    functions: members.len(),
                });
            }
            for &m in &members {
                let f = topo.function(m).ok_or(VpciError::NotTracked(m))?;
                // The bridges above must forward the guest's MMIO and DMA;
                // the hardware domain can no longer clear these bits.
                for a in topo.ancestors(m) {
                    let cmd = port.read16(a, COMMAND);
                    let want = cmd | COMMAND_MEMORY | COMMAND_BUS_MASTER;
                    if cmd != 0xffff && cmd != want {
                        port.write16(a, COMMAND, want);
                    }
                }
                if f.kind.is_bridge() {
                    return Err(VpciError::IsBridge(m));
                }
                if f.kind == crate::topology::FunctionKind::VirtualFunction {
                    return Err(VpciError::VirtualFunction(m));
                }
            }
            let first = members[0];
            let one_device = members.iter().all(|m| {
                (m.segment, m.bus, m.device()) == (first.segment, first.bus, first.device())
            });
            let keep_numbers = one_device && first.function() == 0;
            let mut slots = [NO_FN; MAX_UNIT_FUNCTIONS];
            let multifunction = members.len() > 1 || {
                // A lone function 0 of a multi-function device stays one.
                keep_numbers && port.read8(first, HEADER_TYPE) & HEADER_TYPE_MULTIFUNCTION != 0
            };
            for (k, &m) in members.iter().enumerate() {
                let vfn = if keep_numbers { m.function() } else { k as u8 };
                let f = AssignedFn::probe(port, m, u as u8, vfn, multifunction)?;
                if let Some(s) = slots.get_mut(vfn as usize) {
                    *s = fns.len() as u8;
                }
                fns.push(f);
            }
            ports.push(VirtualRootPort::new(&template));
            if let Some(p) = port_fns.get_mut(u) {
                *p = slots;
            }
        }
        Ok(Self {
            layout,
            template,
            ports,
            port_fns,
            fns,
            bus_port: [NO_PORT; 256],
        })
    }

    pub fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    /// Size in bytes of the virtual ECAM window.
    pub fn ecam_size(&self) -> u64 {
        (self.layout.ecam_buses as u64) << 20
    }

    /// The virtual root port of unit `unit`.
    pub fn root_port(unit: usize) -> Bdf {
        Bdf::new(0, 0, (unit as u8).wrapping_add(1), 0)
    }

    /// (virtual root port, virtual devfn on its secondary bus, physical
    /// function) for every assigned function: for the guest's device tree
    /// (`interrupt-map`: devices below a root port are device 0, so their
    /// INTx pins reach the host bridge unswizzled at the root port's devfn)
    /// and logs.
    pub fn describe(&self) -> impl Iterator<Item = (Bdf, u8, Bdf)> + '_ {
        self.fns
            .iter()
            .map(|f| (Self::root_port(f.unit as usize), f.vfn, f.physical))
    }

    /// The virtual address of an assigned function, once the guest has
    /// programmed its root port's secondary bus.
    pub fn virtual_of(&self, physical: Bdf) -> Option<Bdf> {
        let f = self.fns.iter().find(|f| f.physical == physical)?;
        let bus = self.ports.get(f.unit as usize)?.routed_bus()?;
        Some(Bdf::new(0, bus, 0, f.vfn))
    }

    /// Physical (address, size) of the assigned functions' memory BARs and
    /// expansion ROMs, as the hardware domain programmed them: what the
    /// hardware domain must no longer reach.
    pub fn physical_bars(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.fns.iter().flat_map(|f| {
            f.bars
                .iter()
                .filter(|b| b.is_memory() && b.size != 0 && b.pa != 0)
                .map(|b| (b.pa, b.size))
                .chain((f.rom.size != 0 && f.rom.pa != 0).then_some((f.rom.pa, f.rom.size)))
        })
    }

    /// Every physical BAR the hypervisor may map for the guest or touch
    /// itself, as (function, BAR index, address, size): the memory BARs the
    /// hardware domain placed (one left at 0 is never mapped), and the BARs
    /// holding an MSI-X table or PBA wherever they are. Expansion ROMs are
    /// never mapped for a guest.
    pub fn bar_placements(&self) -> impl Iterator<Item = (Bdf, u8, u64, u64)> + '_ {
        self.fns.iter().flat_map(|f| {
            let msix = f.msix.as_ref().map(|m| (m.table_bar, m.pba_bar));
            f.bars.iter().enumerate().filter_map(move |(i, b)| {
                let i = i as u8;
                let touched = msix.is_some_and(|(t, p)| t == i || p == i);
                (b.is_memory() && b.size != 0 && (b.pa != 0 || touched))
                    .then_some((f.physical, i, b.pa, b.size))
            })
        })
    }

    /// The physical function at a virtual address.
    pub fn physical_of(&self, vbdf: Bdf) -> Option<Bdf> {
        self.fn_at(vbdf.bus, vbdf.devfn)
            .and_then(|i| self.fns.get(i))
            .map(|f| f.physical)
    }

    fn vbdf_of(&self, f: &AssignedFn) -> Bdf {
        let bus = self.ports.get(f.unit as usize).map_or(0, |p| p.secondary());
        Bdf::new(0, bus, 0, f.vfn)
    }

    /// Function index at a virtual (bus, devfn), if routed and not held in
    /// reset. O(1).
    #[inline]
    fn fn_at(&self, bus: u8, devfn: u8) -> Option<usize> {
        if bus == 0 || devfn >> 3 != 0 {
            return None;
        }
        // NO_PORT and HELD_IN_RESET index no port, NO_FN no function.
        let p = self.bus_port[usize::from(bus)];
        let i = self.port_fns.get(usize::from(p))?[usize::from(devfn & 7)];
        (usize::from(i) < self.fns.len()).then_some(usize::from(i))
    }

    fn rebuild_routes(&mut self) {
        self.bus_port = [NO_PORT; 256];
        for (i, p) in self.ports.iter().enumerate() {
            if let Some(bus) = p.routed_bus()
                && let Some(slot) = self.bus_port.get_mut(bus as usize)
                && *slot == NO_PORT
            {
                *slot = if p.sbr() { HELD_IN_RESET } else { i as u8 };
            }
        }
    }

    /// Decodes a virtual ECAM offset: (bus, devfn, reg), or None if outside
    /// the window or not a naturally aligned 1/2/4-byte access.
    #[inline(always)]
    fn decode(&self, offset: u64, width: u16) -> Option<(u8, u8, u16)> {
        if !super::single_access(offset, u64::from(width)) {
            return None;
        }
        if offset >= self.ecam_size() {
            return None;
        }
        let bus = (offset >> 20) as u8;
        let devfn = (offset >> 12) as u8;
        let reg = (offset & 0xfff) as u16;
        Some((bus, devfn, reg))
    }

    /// A guest config read at `offset` into the virtual ECAM. Naturally
    /// aligned 1, 2 or 4 bytes (the shell splits others); anything else,
    /// and absent functions, read all-ones. No allocation.
    #[inline(always)]
    pub fn config_read<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        offset: u64,
        width: u16,
    ) -> u32 {
        match self.single_read(port, offset, u64::from(width)) {
            Some(v) => v,
            None => width_ones(width),
        }
    }

    /// [`GuestBus::config_read`] of a single access (see
    /// [`super::single_access`]); `None` for anything else, which the shell
    /// splits into single accesses.
    #[inline(always)]
    pub fn single_read<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        offset: u64,
        width: u64,
    ) -> Option<u32> {
        if !super::single_access(offset, width) {
            return None;
        }
        let width = width as u16;
        if offset >= self.ecam_size() {
            return Some(width_ones(width));
        }
        // As `decode` does, without packing the fields.
        let bus = (offset >> 20) as u8;
        let devfn = (offset >> 12) as u8;
        let reg = (offset & 0xfff) as u16;
        if bus == 0 {
            let d = devfn >> 3;
            return Some(
                match (devfn & 7, self.ports.get((d as usize).wrapping_sub(1))) {
                    (0, Some(p)) => root_port_read(p, reg, width),
                    _ => width_ones(width),
                },
            );
        }
        Some(match self.fn_at(bus, devfn).and_then(|i| self.fns.get(i)) {
            // `reg` and `width` as `decode` checked them.
            Some(f) => f.read(port, reg, width),
            None => width_ones(width),
        })
    }

    /// A guest config write. Effects (mappings, resets) are appended to
    /// `effects`. No allocation.
    pub fn config_write<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        offset: u64,
        width: u16,
        value: u32,
        effects: &mut Effects,
    ) {
        let Some((bus, devfn, reg)) = self.decode(offset, width) else {
            return;
        };
        if bus == 0 {
            let d = devfn >> 3;
            if devfn & 7 == 0 && d != 0 {
                self.root_port_write(port, d as usize - 1, reg, width, value, effects);
            }
            return;
        }
        let Some(i) = self.fn_at(bus, devfn) else {
            return;
        };
        let Some(f) = self.fns.get_mut(i) else {
            return;
        };
        let remap = f.write(port, reg, width, value, effects);
        if remap != 0 {
            self.remap(i, remap, effects);
        }
    }

    fn root_port_write<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        unit: usize,
        reg: u16,
        width: u16,
        value: u32,
        effects: &mut Effects,
    ) {
        let Some(rp) = self.ports.get_mut(unit) else {
            return;
        };
        let was_sbr = rp.sbr();
        rp.write(&self.template, reg, width, value);
        let is_sbr = rp.sbr();
        if (reg < SUBORDINATE_BUS + 1 && reg + width > PRIMARY_BUS) || is_sbr != was_sbr {
            self.rebuild_routes();
        }
        if is_sbr && !was_sbr {
            // Everything below returns to its reset state, as on hardware:
            // the virtual registers now, the physical ones when the shell
            // performs the reset on release.
            for i in 0..self.fns.len() {
                if self.fns.get(i).is_some_and(|f| f.unit as usize == unit) {
                    if let Some(f) = self.fns.get_mut(i) {
                        f.reset_virtual(port);
                    }
                    self.remap(i, REMAP_ALL, effects);
                }
            }
        } else if was_sbr && !is_sbr {
            effects.push(Effect::SecondaryBusReset { unit });
        }
    }

    /// Re-evaluates the mappings of function `i`'s BAR slots in `slots`.
    fn remap(&mut self, i: usize, slots: u8, effects: &mut Effects) {
        for slot in 0..6u8 {
            if slots & (1 << slot) != 0 {
                self.remap_bar(i, slot as usize, effects);
            }
        }
        if slots & REMAP_ROM != 0 {
            self.remap_rom(i, effects);
        }
    }

    fn remap_bar(&mut self, i: usize, slot: usize, effects: &mut Effects) {
        let Some(f) = self.fns.get(i) else {
            return;
        };
        let Some(&bar) = f.bars.get(slot) else {
            return;
        };
        if !bar.is_memory() {
            return;
        }
        let want = (f.command() & COMMAND_MEMORY != 0).then(|| f.bar_address(slot));
        // Unchanged and settled (mapped, or nothing wanted): nothing to do.
        // A refused placement is tried again.
        if want == bar.evaluated && (bar.mapped || want.is_none()) {
            return;
        }
        if bar.mapped
            && let Some(old) = bar.evaluated
        {
            effects.push(Effect::Unmap {
                ipa: old,
                size: bar.size,
            });
        }
        let vbdf = self.vbdf_of(f);
        let verdict = want.map(|addr| (addr, self.check_placement(i, slot, addr)));
        let mapped = match verdict {
            None => false,
            Some((addr, Err(reason))) => {
                effects.push(Effect::BarRefused {
                    vbdf,
                    bar: slot as u8,
                    addr,
                    reason,
                });
                false
            }
            Some((addr, Ok(()))) => {
                self.emit_map(i, slot, addr, effects);
                true
            }
        };
        if let Some(b) = self.fns.get_mut(i).and_then(|f| f.bars.get_mut(slot)) {
            b.evaluated = want;
            b.mapped = mapped;
        }
    }

    fn remap_rom(&mut self, i: usize, effects: &mut Effects) {
        let Some(f) = self.fns.get(i) else {
            return;
        };
        let reg = f.rom_register();
        let on = f.command() & COMMAND_MEMORY != 0 && reg & ROM_ENABLE != 0 && f.rom.size != 0;
        let want = on.then_some((reg & ROM_ADDRESS_MASK) as u64);
        if want == f.rom.evaluated {
            return;
        }
        if let Some(addr) = want {
            effects.push(Effect::BarRefused {
                vbdf: self.vbdf_of(f),
                bar: ROM_INDEX,
                addr,
                reason: BarRefusal::RomNotMapped,
            });
        }
        if let Some(f) = self.fns.get_mut(i) {
            f.rom.evaluated = want;
        }
    }

    /// Whether BAR `slot` of function `i` may be mapped at `addr`.
    fn check_placement(&self, i: usize, slot: usize, addr: u64) -> Result<(), BarRefusal> {
        let Some(bar) = self.fns.get(i).and_then(|f| f.bars.get(slot)) else {
            return Err(BarRefusal::OutsideWindows);
        };
        let size = bar.size;
        if size < PAGE || !bar.pa.is_multiple_of(PAGE) {
            return Err(BarRefusal::SmallerThanPage);
        }
        if bar.pa == 0 {
            return Err(BarRefusal::NoPhysicalAddress);
        }
        // A BAR decodes a naturally aligned range; anything else is a device
        // (or a hardware domain) not to be trusted with a mapping.
        if !bar.pa.is_multiple_of(size) || bar.pa.checked_add(size).is_none() {
            return Err(BarRefusal::PhysicalMisaligned);
        }
        let Some(end) = addr.checked_add(size) else {
            return Err(BarRefusal::OutsideWindows);
        };
        let inside = |(base, len): (u64, u64)| {
            base.checked_add(len)
                .is_some_and(|wend| addr >= base && end <= wend)
        };
        let in_window =
            inside(self.layout.mem32) || (bar.kind == BarKind::Mem64 && inside(self.layout.mem64));
        if !in_window {
            return Err(BarRefusal::OutsideWindows);
        }
        let overlaps = |base: u64, len: u64| addr < base.saturating_add(len) && base < end;
        if overlaps(self.layout.ecam_base, self.ecam_size()) {
            return Err(BarRefusal::OverlapsEcam);
        }
        if let Some(&(base, len)) = self.layout.forbidden.iter().find(|&&(b, l)| overlaps(b, l)) {
            return Err(BarRefusal::OverlapsForbidden { base, size: len });
        }
        for (j, g) in self.fns.iter().enumerate() {
            for (k, b) in g.bars.iter().enumerate() {
                if (j, k) == (i, slot) || !b.mapped {
                    continue;
                }
                if let Some(other) = b.evaluated
                    && overlaps(other, b.size)
                {
                    return Err(BarRefusal::OverlapsBar {
                        vbdf: self.vbdf_of(g),
                        bar: k as u8,
                    });
                }
            }
        }
        Ok(())
    }

    /// Map pieces of a placed BAR around its MSI-X pages.
    fn emit_map(&self, i: usize, slot: usize, addr: u64, effects: &mut Effects) {
        let Some(f) = self.fns.get(i) else {
            return;
        };
        let Some(bar) = f.bars.get(slot) else {
            return;
        };
        let traps = f
            .msix
            .as_ref()
            .map_or([None, None], |m| m.trapped_pages(slot as u8, bar.size));
        let mut at = 0u64;
        for (off, len) in traps.into_iter().flatten() {
            if off > at {
                effects.push(Effect::Map {
                    ipa: addr + at,
                    pa: bar.pa + at,
                    size: off - at,
                });
            }
            effects.push(Effect::TrapMsix {
                ipa: addr + off,
                size: len,
            });
            at = off + len;
        }
        if at < bar.size {
            effects.push(Effect::Map {
                ipa: addr + at,
                pa: bar.pa + at,
                size: bar.size - at,
            });
        }
    }

    /// Finds the trapped MSI-X page holding `ipa`: (function, BAR slot,
    /// offset into the BAR).
    fn msix_target(&self, ipa: u64) -> Option<(usize, usize, u64)> {
        for (i, f) in self.fns.iter().enumerate() {
            let Some(m) = f.msix.as_ref() else {
                continue;
            };
            for slot in [m.table_bar as usize, m.pba_bar as usize] {
                let Some(bar) = f.bars.get(slot) else {
                    continue;
                };
                let Some(base) = bar.evaluated.filter(|_| bar.mapped) else {
                    continue;
                };
                if ipa < base || ipa - base >= bar.size {
                    continue;
                }
                let off = ipa - base;
                let trapped = m
                    .trapped_pages(slot as u8, bar.size)
                    .into_iter()
                    .flatten()
                    .any(|(o, l)| off >= o && off - o < l);
                if trapped {
                    return Some((i, slot, off));
                }
            }
        }
        None
    }

    /// A guest read in a trapped MSI-X page (see [`Effect::TrapMsix`]).
    /// `None` if `ipa` is not in one of this guest's MSI-X pages. Table
    /// entries read from the shadow; the PBA and any other register sharing
    /// the pages read from the device. Widths 1, 2, 4, 8, naturally aligned;
    /// others read all-ones.
    pub fn msix_read<M: MemoryPort + ?Sized>(
        &mut self,
        mem: &mut M,
        ipa: u64,
        width: u16,
    ) -> Option<u64> {
        let (i, slot, off) = self.msix_target(ipa)?;
        let f = self.fns.get(i)?;
        let ones = if width >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * width)) - 1
        };
        if !matches!(width, 1 | 2 | 4 | 8) || !off.is_multiple_of(width as u64) {
            return Some(ones);
        }
        let m = f.msix.as_ref()?;
        let bar = f.bars.get(slot)?;
        if slot == m.table_bar as usize
            && let Some(t) = off.checked_sub(m.table_offset as u64)
            && t < m.table_len()
        {
            let mut v = 0u64;
            for k in 0..width as u64 {
                let byte = t + k;
                let dword = f.msix_dword(byte / 4).unwrap_or(u32::MAX);
                v |= (((dword >> (8 * (byte % 4))) & 0xff) as u64) << (8 * k);
            }
            return Some(v);
        }
        Some(mem.read(bar.pa.wrapping_add(off), width) & ones)
    }

    /// A guest write in a trapped MSI-X page. Returns false if `ipa` is not
    /// in one of this guest's MSI-X pages. Table entries go to the shadow
    /// only (the physical table is the hypervisor's); PBA writes are
    /// dropped; other registers sharing the pages are written to the device.
    pub fn msix_write<M: MemoryPort + ?Sized>(
        &mut self,
        mem: &mut M,
        ipa: u64,
        width: u16,
        value: u64,
        effects: &mut Effects,
    ) -> bool {
        let Some((i, slot, off)) = self.msix_target(ipa) else {
            return false;
        };
        if !matches!(width, 1 | 2 | 4 | 8) || !off.is_multiple_of(width as u64) {
            return true;
        }
        let Some(f) = self.fns.get_mut(i) else {
            return true;
        };
        let physical = f.physical;
        let Some(m) = f.msix.as_ref() else {
            return true;
        };
        let (table_bar, table_off, table_len) =
            (m.table_bar as usize, m.table_offset as u64, m.table_len());
        let (pba_bar, pba_off, pba_len) = (m.pba_bar as usize, m.pba_offset as u64, m.pba_len());
        let Some(&bar) = f.bars.get(slot) else {
            return true;
        };
        if slot == table_bar
            && let Some(t) = off.checked_sub(table_off)
            && t < table_len
        {
            let mut k = 0u64;
            while k < width as u64 {
                let byte = t + k;
                let lane_bytes = (4 - byte % 4).min(width as u64 - k);
                let lanes = (((1u64 << (8 * lane_bytes)) - 1) as u32) << (8 * (byte % 4));
                let part = ((value >> (8 * k)) as u32) << (8 * (byte % 4));
                f.set_msix_dword(byte / 4, part, lanes);
                k += lane_bytes;
            }
            effects.push(Effect::MsixEntry {
                physical,
                entry: (t / MSIX_ENTRY_SIZE as u64) as u16,
            });
            return true;
        }
        if slot == pba_bar && off >= pba_off && off - pba_off < pba_len {
            f.dropped_writes += 1;
            return true;
        }
        mem.write(bar.pa.wrapping_add(off), width, value);
        true
    }

    /// The guest's shadow of an MSI-X table entry (address low, address
    /// high, data, vector control), for the interrupt code.
    pub fn msix_entry(&self, physical: Bdf, entry: u16) -> Option<[u32; 4]> {
        let f = self.fns.iter().find(|f| f.physical == physical)?;
        let base = entry as u64 * 4;
        Some([
            f.msix_dword(base)?,
            f.msix_dword(base + 1)?,
            f.msix_dword(base + 2)?,
            f.msix_dword(base + 3)?,
        ])
    }

    /// Brings the physical MSI-X table of an assigned function in line with
    /// the guest's, and detects and repairs a table lost behind the
    /// hypervisor's back (a device that reset itself): see [`AssignedFn::msix_commit`]. The
    /// shell calls it after each [`Effect::MsixControl`] and
    /// [`Effect::MsixEntry`], with `hardware` false while a reset of the
    /// function runs. `None` if `physical` is not this guest's. No
    /// allocation.
    pub fn msix_commit<M: MemoryPort + ?Sized>(
        &mut self,
        mem: &mut M,
        physical: Bdf,
        hardware: bool,
    ) -> Option<super::MsixCommit> {
        let f = self.fns.iter_mut().find(|f| f.physical == physical)?;
        Some(f.msix_commit(mem, hardware))
    }

    /// Entry `entry` of the physical MSI-X table as the hypervisor wrote it
    /// (`None` if it wrote none since the function's last reset): the
    /// [`crate::reset_engine::MsixShadow`] the reset engine restores the
    /// table from after a reset the guest did not ask for.
    pub fn msix_programmed(&self, physical: Bdf, entry: u16) -> Option<[u32; 4]> {
        self.fns
            .iter()
            .find(|f| f.physical == physical)?
            .msix_programmed(entry)
    }

    /// Stops DMA of every assigned function (physical Bus Master off), e.g.
    /// when the guest stops; its virtual state is left as it is.
    pub fn quiesce<P: ConfigPort + ?Sized>(&mut self, port: &mut P) {
        for f in &self.fns {
            f.stop_bus_master(port);
        }
    }

    /// The guest's virtual Command register of an assigned function: the
    /// INTx handling reads Interrupt Disable (bit 10) here, the physical
    /// bit is the hypervisor's.
    pub fn virtual_command(&self, physical: Bdf) -> Option<u16> {
        Some(self.fns.iter().find(|f| f.physical == physical)?.command())
    }

    /// A virtual AER register (offset from the capability) of an assigned
    /// function, as the guest sees it; `None` if it has no AER.
    pub fn virtual_aer(&self, physical: Bdf, offset: u16) -> Option<u32> {
        self.fns
            .iter()
            .find(|f| f.physical == physical)?
            .virtual_aer(offset)
    }

    /// Writes the guest dropped by policy, over all its functions.
    pub fn dropped_writes(&self) -> u64 {
        self.fns.iter().map(|f| f.dropped_writes).sum()
    }

    /// Number of virtual root ports (= units).
    pub fn units(&self) -> usize {
        self.ports.len()
    }
}

/// AER delivery into the guest's view (logic in
/// [`crate::aer::virtual_regs`]).
impl GuestBus {
    /// The unit (virtual root port index) of an assigned function.
    pub fn unit_of(&self, physical: Bdf) -> Option<usize> {
        Some(self.fns.iter().find(|f| f.physical == physical)?.unit as usize)
    }

    /// Delivers an AER event of an assigned function: its virtual AER
    /// status (masks and severities as the guest wrote them) and its virtual
    /// root port's Root Error Status / Error Source ID (virtual BDF).
    /// `None` if the function is not this guest's.
    pub fn aer_deliver(
        &mut self,
        event: &crate::aer::AerEvent,
    ) -> Option<crate::aer::virtual_regs::GuestDelivery> {
        use crate::aer::virtual_regs::{Signalled, record_function_error, signal_root};
        let i = self.fns.iter().position(|f| f.physical == event.source)?;
        let f = self.fns.get_mut(i)?;
        let physical_aer = f.has_physical_aer();
        let synthesized;
        let event = if physical_aer {
            event
        } else {
            synthesized = crate::aer::virtual_regs::synthesize_status(event);
            &synthesized
        };
        let sig = match f.virtual_aer_mut() {
            // The status bit of a device without AER is ours: signal what
            // the root port was told, whatever the guest's severities.
            Some(mut a) if !physical_aer => {
                record_function_error(&mut a, event);
                Signalled::from_severity(event.severity)
            }
            Some(mut a) => record_function_error(&mut a, event),
            None => Signalled::from_severity(event.severity),
        };
        let unit = f.unit as usize;
        let vsource = self.vbdf_of(self.fns.get(i)?);
        let rp = self.ports.get_mut(unit)?;
        let interrupt = signal_root(&mut rp.aer_mut(), sig, vsource.rid());
        Some(crate::aer::virtual_regs::GuestDelivery {
            unit,
            root_port: Self::root_port(unit),
            virtual_source: vsource,
            interrupt,
        })
    }

    /// Whether the virtual root port of `unit` asserts its (level) AER
    /// interrupt: check after each guest write to lower the INTx.
    pub fn aer_interrupt(&mut self, unit: usize) -> bool {
        self.ports
            .get_mut(unit)
            .is_some_and(|p| crate::aer::virtual_regs::root_interrupt_asserted(&p.aer_mut()))
    }

    /// After a recovery reset the hypervisor performed itself: the event
    /// shows again in the function's virtual AER and the virtual root port
    /// keeps Root Error Status fatal set with
    /// [`crate::aer::virtual_regs::ROOT_STATUS_HV_RESET`].
    pub fn aer_mark_hypervisor_reset(&mut self, event: &crate::aer::AerEvent) -> bool {
        let Some(f) = self.fns.iter_mut().find(|f| f.physical == event.source) else {
            return false;
        };
        if let Some(mut a) = f.virtual_aer_mut() {
            crate::aer::virtual_regs::record_function_error(&mut a, event);
        }
        let unit = f.unit as usize;
        match self.ports.get_mut(unit) {
            Some(p) => {
                crate::aer::virtual_regs::mark_hypervisor_reset(&mut p.aer_mut());
                true
            }
            None => false,
        }
    }

    /// A function did not come back from its recovery reset: the guest sees
    /// the card below its virtual root port surprise-removed (Presence
    /// Detect and link down, Surprise Down; everything below reads
    /// all-ones).
    pub fn aer_surprise_remove(&mut self, physical: Bdf) -> bool {
        let Some(unit) = self.unit_of(physical) else {
            return false;
        };
        let Some(p) = self.ports.get_mut(unit) else {
            return false;
        };
        p.surprise_remove();
        self.rebuild_routes();
        true
    }
}
