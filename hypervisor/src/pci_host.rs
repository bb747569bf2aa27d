//! The hypervisor's side of PCIe: the physical ECAM windows as a
//! [`pci::ConfigPort`], the hardware domain's trapped ECAM accesses, and the
//! report hypercalls that build the `pci` tracker's tree.
//!
//! All decisions are `pci`'s; this module only moves bytes and holds the one
//! lock around the PCI state, for no longer than one access or call.

use alloc::string::String;
use alloc::vec::Vec;
#[cfg(target_os = "none")]
use pci::vpci::MemoryPort;
use pci::vpci::{GuestBus, Ownership};
use pci::{Bdf, ConfigPort, EcamWindow, HostBridge, Topology, TopologyConfig};

use platform::{ConfigAccess, Platform};

/// One ECAM window of the platform, identity mapped at EL2.
#[derive(Clone, Copy, Debug)]
pub struct EcamRegion {
    pub window: EcamWindow,
    pub base: u64,
}

/// Physical config space through the platform's ECAM windows.
#[derive(Debug, Default)]
pub struct EcamPort {
    regions: Vec<EcamRegion>,
    /// The regions as searched on every access: (segment, bus) as one key.
    lookup: Vec<EcamLookup>,
}

/// One ECAM window for [`EcamPort::address`]: keys `segment << 8 | bus`
/// from `first` to `first + span` are at `base + ((key - first) << 20)`.
#[derive(Clone, Copy, Debug)]
struct EcamLookup {
    first: u32,
    span: u32,
    base: u64,
}

/// The lookup key of `bdf`'s (segment, bus).
#[inline(always)]
fn ecam_key(bdf: Bdf) -> u32 {
    (u32::from(bdf.segment) << 8) | u32::from(bdf.bus)
}

impl EcamPort {
    pub fn from_platform(platform: &Platform) -> Self {
        let regions = platform
            .pci_host_bridges
            .iter()
            .filter(|b| b.access == ConfigAccess::Ecam)
            .map(|b| EcamRegion {
                window: EcamWindow {
                    segment: b.segment,
                    bus_start: b.bus_start,
                    bus_end: b.bus_end,
                },
                base: b.config.base,
            })
            .collect::<Vec<EcamRegion>>();
        let lookup = regions
            .iter()
            .filter(|r| r.window.bus_start <= r.window.bus_end)
            .map(|r| EcamLookup {
                first: ecam_key(Bdf::new(r.window.segment, r.window.bus_start, 0, 0)),
                span: u32::from(r.window.bus_end - r.window.bus_start),
                base: r.base,
            })
            .collect();
        Self { regions, lookup }
    }

    pub fn regions(&self) -> &[EcamRegion] {
        &self.regions
    }

    pub fn windows(&self) -> Vec<EcamWindow> {
        self.regions.iter().map(|r| r.window).collect()
    }

    /// Physical address of register `reg` of `bdf`, aligned for `width`
    /// (1, 2 or 4), in the ECAM window of `bdf`'s segment and bus.
    #[inline(always)]
    fn address(&self, bdf: Bdf, reg: u16, width: u16) -> Option<usize> {
        if reg & (width - 1) != 0 || reg > 0xfff {
            return None;
        }
        let key = ecam_key(bdf);
        for l in &self.lookup {
            let bus = key.wrapping_sub(l.first);
            if bus <= l.span {
                let off = (u64::from(bus) << 20) | (u64::from(bdf.devfn) << 12) | u64::from(reg);
                return Some((l.base + off) as usize);
            }
        }
        None
    }
}

/// Physical config space reached by hardware domain ECAM window and
/// offset, without going through a [`Bdf`]: the pass-through fast path of
/// [`crate::pci_calls::hwdom_ecam_access`]. Window `i` is the `i`th of
/// [`PciState::windows`].
pub trait WindowPort: ConfigPort {
    /// `width` (1, 2 or 4) naturally aligned bytes at `offset` into window
    /// `window`, written if `write` holds a value (then 0 is returned).
    /// `None`: not done, go through [`ConfigPort`].
    #[inline]
    fn window_access(
        &mut self,
        window: usize,
        offset: u64,
        width: u64,
        write: Option<u32>,
    ) -> Option<u32> {
        let _ = (window, offset, width, write);
        None
    }
}

#[cfg(test)]
impl WindowPort for pci::sim::Fabric {}

#[cfg(target_os = "none")]
impl WindowPort for EcamPort {
    #[inline(always)]
    fn window_access(
        &mut self,
        window: usize,
        offset: u64,
        width: u64,
        write: Option<u32>,
    ) -> Option<u32> {
        let r = self.regions.get(window)?;
        if offset >= r.window.size() {
            return None;
        }
        let a = (r.base + offset) as usize;
        // SAFETY: inside ECAM window `window`, which the EL2 map covers as
        // Device memory; naturally aligned (checked by the caller).
        unsafe {
            Some(match (width, write) {
                (1, None) => u32::from((a as *const u8).read_volatile()),
                (2, None) => u32::from((a as *const u16).read_volatile()),
                (_, None) => (a as *const u32).read_volatile(),
                (1, Some(v)) => {
                    (a as *mut u8).write_volatile(v as u8);
                    0
                }
                (2, Some(v)) => {
                    (a as *mut u16).write_volatile(v as u16);
                    0
                }
                (_, Some(v)) => {
                    (a as *mut u32).write_volatile(v);
                    0
                }
            })
        }
    }
}

#[cfg(target_os = "none")]
impl ConfigPort for EcamPort {
    #[inline(always)]
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        match self.address(bdf, offset, 4) {
            // SAFETY: inside an ECAM window the EL2 map covers as Device
            // memory, naturally aligned.
            Some(a) => unsafe { (a as *const u32).read_volatile() },
            None => u32::MAX,
        }
    }
    #[inline(always)]
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        match self.address(bdf, offset, 2) {
            // SAFETY: as in read32.
            Some(a) => unsafe { (a as *const u16).read_volatile() },
            None => u16::MAX,
        }
    }
    #[inline(always)]
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        match self.address(bdf, offset, 1) {
            // SAFETY: as in read32.
            Some(a) => unsafe { (a as *const u8).read_volatile() },
            None => u8::MAX,
        }
    }
    #[inline]
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(a) = self.address(bdf, offset, 4) {
            // SAFETY: as in read32.
            unsafe { (a as *mut u32).write_volatile(value) }
        }
    }
    #[inline]
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        if let Some(a) = self.address(bdf, offset, 2) {
            // SAFETY: as in read32.
            unsafe { (a as *mut u16).write_volatile(value) }
        }
    }
    #[inline]
    fn write8(&mut self, bdf: Bdf, offset: u16, value: u8) {
        if let Some(a) = self.address(bdf, offset, 1) {
            // SAFETY: as in read32.
            unsafe { (a as *mut u8).write_volatile(value) }
        }
    }
}

/// Split an access of `width` bytes at ECAM offset `offset` into naturally
/// aligned pieces of at most 4 bytes (config space has no 8-byte registers;
/// an unaligned access that reached us is served byte-exactly). Each piece
/// is decoded on its own, so one that crosses into the next function's
/// space reaches that function, as on hardware.
pub fn split_access(offset: u64, width: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset.saturating_add(width);
    let mut at = offset;
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let left = end - at;
        let w = [4u64, 2, 1]
            .into_iter()
            .find(|&w| w <= left && at.is_multiple_of(w))
            .unwrap_or(1);
        let piece = (at, w);
        at += w;
        Some(piece)
    })
}

/// The PCI state the hypervisor keeps: the tracked tree and the port to
/// physical config space (ECAM on hardware, `pci::sim` in tests).
#[derive(Debug)]
pub struct PciState<P = EcamPort> {
    /// The ECAM windows the hardware domain's accesses are decoded against,
    /// in the order of its `MmioDevice::HostEcam` regions.
    pub windows: Vec<EcamWindow>,
    pub port: P,
    pub topology: Topology,
    /// Segments whose enumeration the hardware domain declared complete.
    pub enumerated: Vec<u16>,
    /// Who owns each function.
    pub ownership: Ownership,
    /// Guests waiting for their functions to be reported.
    pub pending: Vec<PendingGuest>,
    /// Virtual PCI buses of the guests that got functions, by VM index.
    pub guests: GuestBuses,
    /// Passed-through functions on physical INTx lines.
    pub intx: Vec<crate::intx::IntxSource>,
    /// Resets in progress.
    pub resets: Vec<crate::resets::RunningReset>,
    /// The last reset request id given out (`resets::new_request`).
    pub reset_requests: u32,
    /// Functions never handed out again: no method resets them, or they did
    /// not come back from a reset.
    pub quarantine: pci::reset_engine::Quarantine,
    /// Guests given their functions, waiting for those to be reset before
    /// they start: the virtual host bridge their device tree will show.
    pub starting: Vec<(u16, crate::guest_fdt::GuestPci)>,
    /// Resets that guests reserved: the hardware domain may not make them
    /// impossible (PCI_RESET_RESERVE).
    pub reservations: pci::reset_engine::Reservations,
    /// AER of the physical root ports.
    pub aer: crate::aer::AerState,
    /// The host bridge's INTx routing.
    pub intx_routes: IntxRoutes,
    /// The hardware domain's functions on lines taken for guests.
    pub bystanders: Vec<crate::intx::Bystander>,
    /// The PCI lines that fire with nobody to service them.
    pub line_guard: crate::intx::LineGuard,
}

/// A host bridge's INTx routing: `interrupt-map-mask` (hi, pin) and its
/// entries (child hi, pin, INTID).
#[derive(Clone, Debug, Default)]
pub struct IntxRoutes {
    pub mask: (u32, u32),
    pub map: Vec<(u32, u8, u32)>,
}

/// A guest that starts once the hardware domain has reported every function
/// it is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingGuest {
    /// The VM's index (its owner id in `pci`).
    pub vm: u16,
    pub name: String,
    pub requested: Vec<Bdf>,
    pub whole_units: bool,
    /// Counter value after which a missing function is an error.
    pub deadline: u64,
}

/// The virtual PCI buses of the guests, by VM index: found without a
/// search on every trapped access.
#[derive(Debug, Default)]
pub struct GuestBuses {
    /// Boxed: a lookup is one pointer load.
    slots: Vec<Option<alloc::boxed::Box<GuestBus>>>,
}

impl GuestBuses {
    #[inline]
    pub fn get(&self, vm: u16) -> Option<&GuestBus> {
        self.slots.get(usize::from(vm))?.as_deref()
    }

    /// Whether guest `vm` keeps INTx of its function `physical` disabled
    /// in its virtual Command register.
    pub fn intx_disabled(&self, vm: u16, physical: Bdf) -> bool {
        self.get(vm)
            .and_then(|b| b.virtual_command(physical))
            .is_some_and(|c| c & pci::regs::COMMAND_INTX_DISABLE != 0)
    }

    #[inline]
    pub fn get_mut(&mut self, vm: u16) -> Option<&mut GuestBus> {
        self.slots.get_mut(usize::from(vm))?.as_deref_mut()
    }

    /// Give VM `vm` its bus (replacing one it had).
    pub fn insert(&mut self, vm: u16, bus: GuestBus) {
        let i = usize::from(vm);
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some(alloc::boxed::Box::new(bus));
        }
    }

    pub fn remove(&mut self, vm: u16) -> Option<GuestBus> {
        self.slots.get_mut(usize::from(vm))?.take().map(|b| *b)
    }

    /// Every guest's bus.
    pub fn buses(&self) -> impl Iterator<Item = &GuestBus> {
        self.slots.iter().flatten().map(|b| &**b)
    }
}

impl<P> PciState<P> {
    /// Whether `[pa, pa + size)` overlaps a BAR of a function a guest owns.
    pub fn guest_owns_memory(&self, pa: u64, size: u64) -> bool {
        let end = pa.saturating_add(size);
        self.guests
            .buses()
            .flat_map(|bus| bus.physical_bars())
            .any(|(base, len)| pa < base.saturating_add(len) && base < end)
    }

    /// The hardware domain touched `page` of a PCI window for the first
    /// time: `map` it for the hwdom unless the page overlaps a guest's BAR.
    /// The check and the map are one step: they run under the one borrow
    /// of the PCI state (its lock), as does every handover of a function,
    /// which unmaps the hwdom's pages of it.
    pub fn hwdom_first_touch<E>(
        &self,
        page: u64,
        map: impl FnOnce(u64) -> Result<(), E>,
    ) -> FirstTouch {
        if self.guest_owns_memory(page, PAGE) {
            return FirstTouch::GuestOwned;
        }
        match map(page) {
            Ok(()) => FirstTouch::Mapped,
            Err(_) => FirstTouch::MapFailed,
        }
    }

    /// Recompute [`PciState::bystanders`] (after the guests' lines or the
    /// tree changed).
    pub fn refresh_bystanders(&mut self)
    where
        P: ConfigPort,
    {
        if self.intx.is_empty() {
            self.bystanders.clear();
            return;
        }
        let Self {
            topology,
            ownership,
            intx,
            bystanders,
            intx_routes: IntxRoutes { mask, map },
            port,
            ..
        } = self;
        let functions = topology
            .functions()
            .filter(|(b, f)| !f.kind.is_bridge() && ownership.owner(*b) == pci::vpci::Owner::Hwdom)
            .map(|(b, _)| b);
        let route = |b: Bdf| {
            let pin = port.read8(b, pci::regs::INTERRUPT_PIN);
            crate::pci_calls::route_intx(topology, *mask, map, b, pin)
        };
        let next = crate::intx::bystanders(intx, bystanders, functions, route);
        *bystanders = next;
    }

    pub fn guest_bus(&mut self, vm: u16) -> Option<&mut GuestBus> {
        self.guests.get_mut(vm)
    }
}

const PAGE: u64 = 0x1000;

/// What became of the hardware domain's first touch of a page of a PCI
/// window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstTouch {
    Mapped,
    /// The page overlaps a BAR of a function a guest owns.
    GuestOwned,
    /// Its stage 2 could not map it.
    MapFailed,
}

/// Physical BAR memory, identity mapped at EL2 (Device memory): the MSI-X
/// pages the hypervisor traps for guests.
#[derive(Debug, Default)]
pub struct BarMemory;

#[cfg(target_os = "none")]
impl MemoryPort for BarMemory {
    fn read(&mut self, pa: u64, width: u16) -> u64 {
        let a = pa as usize;
        // SAFETY: `pa` is inside a BAR of a function the caller owns, in a
        // PCI window the EL2 map covers as Device memory; naturally aligned
        // (checked by `pci`).
        unsafe {
            match width {
                1 => u64::from((a as *const u8).read_volatile()),
                2 => u64::from((a as *const u16).read_volatile()),
                4 => u64::from((a as *const u32).read_volatile()),
                _ => (a as *const u64).read_volatile(),
            }
        }
    }
    fn write(&mut self, pa: u64, width: u16, value: u64) {
        let a = pa as usize;
        // SAFETY: as in `read`.
        unsafe {
            match width {
                1 => (a as *mut u8).write_volatile(value as u8),
                2 => (a as *mut u16).write_volatile(value as u16),
                4 => (a as *mut u32).write_volatile(value as u32),
                _ => (a as *mut u64).write_volatile(value),
            }
        }
    }
}

impl<P: ConfigPort> PciState<P> {
    pub fn new(windows: Vec<EcamWindow>, port: P) -> Self {
        let bridges: Vec<HostBridge> = windows
            .iter()
            .map(|w| HostBridge {
                segment: w.segment,
                bus_start: w.bus_start,
                bus_end: w.bus_end,
            })
            .collect();
        Self {
            windows,
            port,
            topology: Topology::new(TopologyConfig::new(&bridges)),
            enumerated: Vec::new(),
            ownership: Ownership::new(),
            pending: Vec::new(),
            guests: GuestBuses::default(),
            intx: Vec::new(),
            line_guard: crate::intx::LineGuard::default(),
            resets: Vec::new(),
            reset_requests: 0,
            quarantine: pci::reset_engine::Quarantine::new(),
            starting: Vec::new(),
            reservations: pci::reset_engine::Reservations::new(),
            aer: crate::aer::AerState::default(),
            intx_routes: IntxRoutes::default(),
            bystanders: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn the_hwdom_first_touch_never_maps_a_guests_bar() {
        // The nvme's BAR0 (16 KiB at BAR0) is guest 1's.
        let (pci, _hw, _nvme) = crate::msix::tests::state();
        let bar0 = crate::msix::tests::BAR0;
        let mut mapped = Vec::new();
        let mut map = |p: u64| -> Result<(), ()> {
            mapped.push(p);
            Ok(())
        };
        assert_eq!(
            pci.hwdom_first_touch(bar0 + 0x3000, &mut map),
            FirstTouch::GuestOwned
        );
        assert_eq!(
            pci.hwdom_first_touch(bar0 + 0x4000, &mut map),
            FirstTouch::Mapped
        );
        assert_eq!(mapped, [bar0 + 0x4000]);
        assert_eq!(
            pci.hwdom_first_touch(bar0 + 0x8000, |_| Err(())),
            FirstTouch::MapFailed
        );
    }

    #[test]
    fn accesses_split_into_aligned_pieces() {
        let pieces = |r, w| split_access(r, w).collect::<Vec<_>>();
        assert_eq!(pieces(0x10, 8), [(0x10, 4), (0x14, 4)]);
        assert_eq!(pieces(0x10, 4), [(0x10, 4)]);
        assert_eq!(pieces(0x12, 4), [(0x12, 2), (0x14, 2)]);
        assert_eq!(pieces(0x11, 4), [(0x11, 1), (0x12, 2), (0x14, 1)]);
        assert_eq!(pieces(0x13, 2), [(0x13, 1), (0x14, 1)]);
        assert_eq!(pieces(0xffe, 8), [(0xffe, 2), (0x1000, 4), (0x1004, 2)]);
    }
}
