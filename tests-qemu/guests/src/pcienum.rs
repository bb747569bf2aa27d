//! A PCI enumerator like an OS's, over any config-space accessor: used by
//! the hardware domain on the physical ECAM (through the hypervisor's trap)
//! and by guests on their virtual ECAM. Host-tested against `pci::sim`.
//!
//! What it does, the way Linux does it on a machine nobody enumerated
//! before: a depth-first walk from the root bus probing devices 0..31 (and
//! functions 1..7 of multi-function devices); each bridge gets primary =
//! its bus, secondary = the next free bus, subordinate = 0xff while the walk
//! is below it, then the last bus found below. Then BARs are sized (all-ones
//! written with decoding off, read back, restored) and given naturally
//! aligned addresses from the host bridge's 32-bit window, bridges' memory
//! windows (1 MiB granular) cover their children, prefetchable BARs go in
//! the non-prefetchable window (Linux does that when there is no
//! prefetchable window: ours stay closed), 64-bit BARs get addresses below
//! 4 GiB, I/O BARs are sized but not assigned (the DT has no I/O window),
//! and Memory Space + Bus Master are enabled in Command.

use core::fmt;

/// Config space of one segment, by (bus, devfn, register).
pub trait ConfigSpace {
    fn read8(&mut self, bus: u8, devfn: u8, off: u16) -> u8;
    fn read16(&mut self, bus: u8, devfn: u8, off: u16) -> u16;
    fn read32(&mut self, bus: u8, devfn: u8, off: u16) -> u32;
    fn write8(&mut self, bus: u8, devfn: u8, off: u16, v: u8);
    fn write16(&mut self, bus: u8, devfn: u8, off: u16, v: u16);
    fn write32(&mut self, bus: u8, devfn: u8, off: u16, v: u32);
}

/// Most functions one enumeration records.
pub const MAX_FUNCS: usize = 48;

pub const VENDOR_ID: u16 = 0x00;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const CLASS_REV: u16 = 0x08;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const BUS_NUMBERS: u16 = 0x18;
pub const IO_BASE: u16 = 0x1c;
pub const MEM_BASE: u16 = 0x20;
pub const MEM_LIMIT: u16 = 0x22;
pub const PREF_BASE: u16 = 0x24;
pub const PREF_LIMIT: u16 = 0x26;
pub const PREF_BASE_UPPER: u16 = 0x28;
pub const PREF_LIMIT_UPPER: u16 = 0x2c;
pub const CAP_PTR: u16 = 0x34;
pub const INTERRUPT_PIN: u16 = 0x3d;
pub const BRIDGE_CONTROL: u16 = 0x3e;

pub const CMD_IO: u16 = 1 << 0;
pub const CMD_MEMORY: u16 = 1 << 1;
pub const CMD_BUS_MASTER: u16 = 1 << 2;
const STATUS_CAP_LIST: u16 = 1 << 4;

pub const CAP_PCIE: u8 = 0x10;
pub const CAP_MSIX: u8 = 0x11;

/// Bridge windows are 1 MiB granular.
const WINDOW_ALIGN: u64 = 1 << 20;

pub const fn devfn(dev: u8, func: u8) -> u8 {
    (dev << 3) | (func & 7)
}

/// Kind of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BarKind {
    #[default]
    None,
    Io,
    Mem32,
    Mem64,
}

/// One BAR (a 64-bit BAR occupies its slot and the next, which stays None).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bar {
    pub kind: BarKind,
    pub prefetchable: bool,
    pub size: u64,
    /// Assigned address (0: unassigned).
    pub addr: u64,
}

impl Bar {
    pub fn is_mem(&self) -> bool {
        matches!(self.kind, BarKind::Mem32 | BarKind::Mem64)
    }
}

/// One function found by the walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Func {
    pub bus: u8,
    pub devfn: u8,
    pub vendor: u16,
    pub device: u16,
    /// Class code (24 bits: base, sub, prog-if).
    pub class: u32,
    pub header_type: u8,
    /// PCIe port type from the PCIe capability, if it has one.
    pub pcie_type: Option<u8>,
    /// Index of the parent bridge in the enumeration's list (None: root bus).
    pub parent: Option<usize>,
    pub bars: [Bar; 6],
    /// Bridges: secondary and subordinate bus.
    pub secondary: u8,
    pub subordinate: u8,
    /// Bridges: the memory window programmed (inclusive end), if any.
    pub window: Option<(u64, u64)>,
    /// MSI-X: (table BIR, table offset, table size).
    pub msix: Option<(u8, u32, u16)>,
    pub interrupt_pin: u8,
}

impl Func {
    pub fn is_bridge(&self) -> bool {
        self.header_type & 0x7f == 1
    }
    pub fn dev(&self) -> u8 {
        self.devfn >> 3
    }
    pub fn func(&self) -> u8 {
        self.devfn & 7
    }
    /// Requester id: bus << 8 | devfn.
    pub fn rid(&self) -> u16 {
        (u16::from(self.bus) << 8) | u16::from(self.devfn)
    }
    pub fn nbars(&self) -> usize {
        if self.is_bridge() { 2 } else { 6 }
    }
    /// The first memory BAR, with its index.
    pub fn mem_bar(&self, index: usize) -> Option<Bar> {
        self.bars.get(index).copied().filter(|b| b.is_mem())
    }
}

/// `bb:dd.f` of a function.
#[derive(Debug, Clone, Copy)]
pub struct Addr(pub u8, pub u8);

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.0, self.1 >> 3, self.1 & 7)
    }
}

/// Why enumeration stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnumError {
    TooManyFunctions,
    OutOfBuses,
    /// The 32-bit window cannot hold the BARs: (wanted end, window end).
    OutOfMemory(u64, u64),
}

impl fmt::Display for EnumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyFunctions => write!(f, "more than {MAX_FUNCS} functions"),
            Self::OutOfBuses => write!(f, "ran out of bus numbers"),
            Self::OutOfMemory(w, e) => {
                write!(
                    f,
                    "BARs need memory up to {w:#x}, the window ends at {e:#x}"
                )
            }
        }
    }
}

/// The host bridge as the DT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBridge {
    pub bus_start: u8,
    pub bus_end: u8,
    /// 32-bit memory window [base, base + size) (PCI address == CPU address).
    pub mem32: (u64, u64),
}

/// The result of an enumeration.
#[derive(Clone, Debug)]
pub struct Tree {
    pub funcs: [Func; MAX_FUNCS],
    pub len: usize,
    /// Highest bus number in use.
    pub last_bus: u8,
    /// End (exclusive) of the memory assigned from the window.
    pub mem_end: u64,
}

impl Tree {
    pub fn funcs(&self) -> &[Func] {
        &self.funcs[..self.len]
    }
    pub fn find(&self, vendor: u16, device: u16) -> Option<&Func> {
        self.funcs()
            .iter()
            .find(|f| f.vendor == vendor && f.device == device)
    }
    pub fn find_all(&self, vendor: u16, device: u16) -> impl Iterator<Item = &Func> {
        self.funcs()
            .iter()
            .filter(move |f| f.vendor == vendor && f.device == device)
    }
    /// Depth in the tree (0: on the root bus).
    pub fn depth(&self, i: usize) -> usize {
        let mut d = 0;
        let mut p = self.funcs[i].parent;
        while let Some(j) = p {
            d += 1;
            p = self.funcs[j].parent;
        }
        d
    }
}

impl Tree {
    pub const fn new() -> Self {
        const EMPTY: Bar = Bar {
            kind: BarKind::None,
            prefetchable: false,
            size: 0,
            addr: 0,
        };
        const F: Func = Func {
            bus: 0,
            devfn: 0,
            vendor: 0,
            device: 0,
            class: 0,
            header_type: 0,
            pcie_type: None,
            parent: None,
            bars: [EMPTY; 6],
            secondary: 0,
            subordinate: 0,
            window: None,
            msix: None,
            interrupt_pin: 0,
        };
        Tree {
            funcs: [F; MAX_FUNCS],
            len: 0,
            last_bus: 0,
            mem_end: 0,
        }
    }
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// Walk and program the hierarchy below `hb`, into `tree` (big: the guests
/// keep it in a static, not on their 32 KiB stacks).
pub fn enumerate<C: ConfigSpace>(
    cfg: &mut C,
    hb: HostBridge,
    tree: &mut Tree,
) -> Result<(), EnumError> {
    *tree = Tree::new();
    tree.last_bus = hb.bus_start;
    tree.mem_end = hb.mem32.0;
    let mut e = Enum { cfg, tree, hb };
    e.scan_bus(hb.bus_start, None)?;
    for i in 0..e.tree.len {
        e.size_bars(i);
    }
    let end = e.assign(None, hb.mem32.0)?;
    e.tree.mem_end = end;
    for i in 0..e.tree.len {
        e.enable(i);
    }
    Ok(())
}

struct Enum<'a, C> {
    cfg: &'a mut C,
    tree: &'a mut Tree,
    hb: HostBridge,
}

impl<C: ConfigSpace> Enum<'_, C> {
    /// Probe devices 0..31 of `bus`; recurse into bridges as they are found.
    /// Returns the highest bus number below.
    fn scan_bus(&mut self, bus: u8, parent: Option<usize>) -> Result<u8, EnumError> {
        let mut last = bus;
        for dev in 0..32u8 {
            let h0 = self.cfg.read8(bus, devfn(dev, 0), HEADER_TYPE);
            if self.cfg.read16(bus, devfn(dev, 0), VENDOR_ID) == 0xffff {
                continue;
            }
            let nfuncs = if h0 & 0x80 != 0 { 8 } else { 1 };
            for func in 0..nfuncs {
                let df = devfn(dev, func);
                if self.cfg.read16(bus, df, VENDOR_ID) == 0xffff {
                    continue;
                }
                let i = self.probe(bus, df, parent)?;
                if self.tree.funcs[i].is_bridge() {
                    last = last.max(self.scan_bridge(i, last)?);
                }
            }
        }
        Ok(last)
    }

    /// Number the bridge `i` (secondary = the bus after `last`) and walk
    /// below it. Returns its subordinate bus.
    fn scan_bridge(&mut self, i: usize, last: u8) -> Result<u8, EnumError> {
        let (bus, df) = (self.tree.funcs[i].bus, self.tree.funcs[i].devfn);
        let secondary = last.max(self.tree.last_bus).checked_add(1);
        let secondary = match secondary {
            Some(s) if s <= self.hb.bus_end => s,
            _ => return Err(EnumError::OutOfBuses),
        };
        self.tree.last_bus = secondary;
        // Primary, secondary, subordinate = 0xff while we look below
        // (keep the secondary latency timer in the top byte).
        let old = self.cfg.read32(bus, df, BUS_NUMBERS);
        let numbers = |sub: u8| {
            (old & 0xff00_0000)
                | (u32::from(sub) << 16)
                | (u32::from(secondary) << 8)
                | u32::from(bus)
        };
        self.cfg
            .write32(bus, df, BUS_NUMBERS, numbers(self.hb.bus_end));
        let sub = self.scan_bus(secondary, Some(i))?;
        self.cfg.write32(bus, df, BUS_NUMBERS, numbers(sub));
        let f = &mut self.tree.funcs[i];
        f.secondary = secondary;
        f.subordinate = sub;
        self.tree.last_bus = self.tree.last_bus.max(sub);
        Ok(sub)
    }

    fn probe(&mut self, bus: u8, df: u8, parent: Option<usize>) -> Result<usize, EnumError> {
        if self.tree.len == MAX_FUNCS {
            return Err(EnumError::TooManyFunctions);
        }
        let c = &mut *self.cfg;
        let id = c.read32(bus, df, VENDOR_ID);
        let mut f = Func {
            bus,
            devfn: df,
            vendor: id as u16,
            device: (id >> 16) as u16,
            class: c.read32(bus, df, CLASS_REV) >> 8,
            header_type: c.read8(bus, df, HEADER_TYPE),
            parent,
            interrupt_pin: c.read8(bus, df, INTERRUPT_PIN),
            ..Func::default()
        };
        if let Some(p) = find_cap(c, bus, df, CAP_PCIE) {
            f.pcie_type = Some(((c.read16(bus, df, p + 2) >> 4) & 0xf) as u8);
        }
        if let Some(p) = find_cap(c, bus, df, CAP_MSIX) {
            let ctrl = c.read16(bus, df, p + 2);
            let table = c.read32(bus, df, p + 4);
            f.msix = Some(((table & 7) as u8, table & !7, (ctrl & 0x7ff) + 1));
        }
        let i = self.tree.len;
        self.tree.funcs[i] = f;
        self.tree.len += 1;
        Ok(i)
    }

    /// Size the BARs of function `i` with decoding off, as Linux does.
    fn size_bars(&mut self, i: usize) {
        let f = self.tree.funcs[i];
        let (bus, df) = (f.bus, f.devfn);
        let c = &mut *self.cfg;
        let cmd = c.read16(bus, df, COMMAND);
        c.write16(bus, df, COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
        let mut bars = [Bar::default(); 6];
        let mut n = 0;
        while n < f.nbars() {
            let off = BAR0 + 4 * n as u16;
            let orig = c.read32(bus, df, off);
            c.write32(bus, df, off, u32::MAX);
            let got = c.read32(bus, df, off);
            c.write32(bus, df, off, orig);
            if orig & 1 == 1 {
                let mask = u64::from(got & !3) | 0xffff_0000;
                if got & !3 != 0 {
                    bars[n] = Bar {
                        kind: BarKind::Io,
                        size: (!mask & 0xffff_ffff) + 1,
                        ..Bar::default()
                    };
                }
                n += 1;
                continue;
            }
            let is64 = (orig >> 1) & 3 == 2 && n + 1 < f.nbars();
            let mut mask = u64::from(got & !0xf);
            if is64 {
                let hi_off = off + 4;
                let orig_hi = c.read32(bus, df, hi_off);
                c.write32(bus, df, hi_off, u32::MAX);
                let got_hi = c.read32(bus, df, hi_off);
                c.write32(bus, df, hi_off, orig_hi);
                mask |= u64::from(got_hi) << 32;
            } else {
                mask |= 0xffff_ffff_0000_0000;
            }
            if mask & 0xffff_ffff != 0 || (is64 && mask != 0) {
                bars[n] = Bar {
                    kind: if is64 { BarKind::Mem64 } else { BarKind::Mem32 },
                    prefetchable: orig & 8 != 0,
                    size: (!mask).wrapping_add(1),
                    addr: 0,
                };
            }
            n += if is64 { 2 } else { 1 };
        }
        c.write16(bus, df, COMMAND, cmd);
        self.tree.funcs[i].bars = bars;
    }

    /// Give addresses to the memory BARs below `bridge` (None: the root
    /// bus) from `cursor` upward: child bridges first (1 MiB aligned
    /// windows), then BARs largest first. Returns the end of what was used.
    fn assign(&mut self, bridge: Option<usize>, mut cursor: u64) -> Result<u64, EnumError> {
        let limit = self.hb.mem32.0 + self.hb.mem32.1;
        for j in 0..self.tree.len {
            if self.tree.funcs[j].parent != bridge || !self.tree.funcs[j].is_bridge() {
                continue;
            }
            let start = cursor.next_multiple_of(WINDOW_ALIGN);
            let end = self.assign(Some(j), start)?;
            let end = end.next_multiple_of(WINDOW_ALIGN);
            if end > limit {
                return Err(EnumError::OutOfMemory(end, limit));
            }
            let f = self.tree.funcs[j];
            let (base16, limit16, window) = if end > start {
                (
                    ((start >> 16) & 0xfff0) as u16,
                    (((end - 1) >> 16) & 0xfff0) as u16,
                    Some((start, end - 1)),
                )
            } else {
                (0xfff0, 0, None)
            };
            let c = &mut *self.cfg;
            c.write16(f.bus, f.devfn, MEM_BASE, base16);
            c.write16(f.bus, f.devfn, MEM_LIMIT, limit16);
            // Prefetchable window and I/O window closed.
            c.write16(f.bus, f.devfn, PREF_BASE, 0xfff0);
            c.write16(f.bus, f.devfn, PREF_LIMIT, 0);
            c.write32(f.bus, f.devfn, PREF_BASE_UPPER, 0);
            c.write32(f.bus, f.devfn, PREF_LIMIT_UPPER, 0);
            c.write8(f.bus, f.devfn, IO_BASE, 0xf0);
            c.write8(f.bus, f.devfn, IO_BASE + 1, 0);
            self.tree.funcs[j].window = window;
            if window.is_some() {
                cursor = end;
            }
        }
        // BARs of functions on this bus (bridges' own BARs included), largest first.
        loop {
            let mut best: Option<(usize, usize, u64)> = None;
            for j in 0..self.tree.len {
                let f = &self.tree.funcs[j];
                let on_bus = f.parent == bridge;
                for (k, b) in f.bars.iter().enumerate() {
                    if on_bus && b.is_mem() && b.addr == 0 && best.is_none_or(|x| b.size > x.2) {
                        best = Some((j, k, b.size));
                    }
                }
            }
            let Some((j, k, size)) = best else { break };
            let addr = cursor.next_multiple_of(size.max(16));
            if addr + size > limit {
                return Err(EnumError::OutOfMemory(addr + size, limit));
            }
            cursor = addr + size;
            let f = &mut self.tree.funcs[j];
            f.bars[k].addr = addr;
            let (bus, df, kind) = (f.bus, f.devfn, f.bars[k].kind);
            let off = BAR0 + 4 * k as u16;
            let c = &mut *self.cfg;
            let low_flags = c.read32(bus, df, off) & 0xf;
            c.write32(bus, df, off, (addr as u32 & !0xf) | low_flags);
            if kind == BarKind::Mem64 {
                c.write32(bus, df, off + 4, (addr >> 32) as u32);
            }
        }
        Ok(cursor)
    }

    /// Memory Space (if it has memory BARs or is a bridge) and Bus Master.
    fn enable(&mut self, i: usize) {
        let f = self.tree.funcs[i];
        let mut cmd = self.cfg.read16(f.bus, f.devfn, COMMAND) & !CMD_IO;
        if f.is_bridge() || f.bars.iter().any(|b| b.is_mem() && b.addr != 0) {
            cmd |= CMD_MEMORY;
        }
        cmd |= CMD_BUS_MASTER;
        self.cfg.write16(f.bus, f.devfn, COMMAND, cmd);
    }
}

/// Offset of capability `id` in the standard list, if present.
pub fn find_cap<C: ConfigSpace + ?Sized>(c: &mut C, bus: u8, df: u8, id: u8) -> Option<u16> {
    if c.read16(bus, df, STATUS) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut p = c.read8(bus, df, CAP_PTR) & 0xfc;
    for _ in 0..48 {
        if p < 0x40 {
            return None;
        }
        let hdr = c.read16(bus, df, u16::from(p));
        if hdr as u8 == id {
            return Some(u16::from(p));
        }
        p = (hdr >> 8) as u8 & 0xfc;
    }
    None
}

/// Name of a PCIe port type.
pub fn port_type_name(t: Option<u8>) -> &'static str {
    match t {
        None => "conventional",
        Some(0) => "endpoint",
        Some(1) => "legacy-endpoint",
        Some(4) => "root-port",
        Some(5) => "upstream-port",
        Some(6) => "downstream-port",
        Some(7) => "pcie-to-pci-bridge",
        Some(8) => "pci-to-pcie-bridge",
        Some(9) => "rciep",
        Some(10) => "rcec",
        Some(_) => "unknown",
    }
}

/// A small deterministic PRNG (xorshift64*) for shuffles and fuzzing.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The order in which functions are reported: indices into the tree.
pub fn report_order(len: usize, order: &str, seed: u64) -> Option<[usize; MAX_FUNCS]> {
    let mut idx = [0usize; MAX_FUNCS];
    for (i, x) in idx.iter_mut().enumerate().take(len) {
        *x = i;
    }
    match order {
        "forward" => {}
        "reverse" => idx[..len].reverse(),
        "shuffle" => {
            let mut r = Rng::new(seed);
            for i in (1..len).rev() {
                let j = r.below(i as u64 + 1) as usize;
                idx.swap(i, j);
            }
        }
        _ => return None,
    }
    Some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::sim::{Fabric, Spec, devfn as sdevfn};
    use pci::{Bdf, ConfigPort};

    struct Sim(Fabric);

    impl ConfigSpace for Sim {
        fn read8(&mut self, bus: u8, df: u8, off: u16) -> u8 {
            self.0.read8(Bdf::new(0, bus, df >> 3, df & 7), off)
        }
        fn read16(&mut self, bus: u8, df: u8, off: u16) -> u16 {
            self.0.read16(Bdf::new(0, bus, df >> 3, df & 7), off)
        }
        fn read32(&mut self, bus: u8, df: u8, off: u16) -> u32 {
            self.0.read32(Bdf::new(0, bus, df >> 3, df & 7), off)
        }
        fn write8(&mut self, bus: u8, df: u8, off: u16, v: u8) {
            self.0.write8(Bdf::new(0, bus, df >> 3, df & 7), off, v)
        }
        fn write16(&mut self, bus: u8, df: u8, off: u16, v: u16) {
            self.0.write16(Bdf::new(0, bus, df >> 3, df & 7), off, v)
        }
        fn write32(&mut self, bus: u8, df: u8, off: u16, v: u32) {
            self.0.write32(Bdf::new(0, bus, df >> 3, df & 7), off, v)
        }
    }

    const HB: HostBridge = HostBridge {
        bus_start: 0,
        bus_end: 255,
        mem32: (0x1000_0000, 0x2eff_0000),
    };

    fn fabric() -> Fabric {
        Fabric::new().with_root_complex(
            0,
            0,
            &[
                (
                    sdevfn(1, 0),
                    Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
                ),
                (
                    sdevfn(2, 0),
                    Spec::qemu_root_port().child(
                        0,
                        0,
                        Spec::qemu_x3130_upstream()
                            .child(
                                0,
                                0,
                                Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_e1000e()),
                            )
                            .child(
                                1,
                                0,
                                Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_nvme()),
                            ),
                    ),
                ),
            ],
        )
    }

    #[test]
    fn numbers_buses_depth_first_and_assigns_bars() {
        let mut sim = Sim(fabric());
        let mut t = Tree::new();
        enumerate(&mut sim, HB, &mut t).unwrap();
        let addrs: Vec<_> = t.funcs().iter().map(|f| (f.bus, f.devfn)).collect();
        // rp1 (00:01.0) -> bus 1 (nvme); rp2 (00:02.0) -> bus 2 (upstream)
        // -> bus 3 (upstream's secondary), dn0 -> 4 (e1000e), dn1 -> 5 (nvme).
        assert_eq!(
            addrs,
            vec![
                (0, devfn(1, 0)),
                (1, 0),
                (0, devfn(2, 0)),
                (2, 0),
                (3, 0),
                (4, 0),
                (3, devfn(1, 0)),
                (5, 0)
            ]
        );
        let rp2 = t.funcs()[2];
        assert_eq!((rp2.secondary, rp2.subordinate), (2, 5));
        assert_eq!(t.last_bus, 5);
        // Bus numbers really programmed.
        assert_eq!(
            sim.read32(0, devfn(2, 0), BUS_NUMBERS) & 0xff_ffff,
            0x05_02_00
        );
        assert_eq!(
            sim.read32(3, devfn(1, 0), BUS_NUMBERS) & 0xff_ffff,
            0x05_05_03
        );
        // Every memory BAR assigned, naturally aligned, inside its parents' windows,
        // no two overlapping, and programmed into the function.
        let mut spans = Vec::new();
        for (i, f) in t.funcs().iter().enumerate() {
            for (k, b) in f.bars.iter().enumerate().filter(|(_, b)| b.is_mem()) {
                assert!(b.addr != 0 && b.addr % b.size == 0, "{f:?}");
                let lo = sim.read32(f.bus, f.devfn, BAR0 + 4 * k as u16) & !0xf;
                assert_eq!(u64::from(lo), b.addr & 0xffff_ffff);
                let mut p = f.parent;
                while let Some(j) = p {
                    let (ws, we) = t.funcs()[j].window.unwrap();
                    assert!(b.addr >= ws && b.addr + b.size - 1 <= we, "{i} {k}");
                    p = t.funcs()[j].parent;
                }
                spans.push((b.addr, b.addr + b.size));
            }
            let cmd = sim.read16(f.bus, f.devfn, COMMAND);
            assert_eq!(
                cmd & (CMD_MEMORY | CMD_BUS_MASTER),
                CMD_MEMORY | CMD_BUS_MASTER
            );
        }
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?}");
        }
        let e = t.find(0x8086, 0x10d3).unwrap();
        assert_eq!(e.bars[0].size, 0x20000);
        assert_eq!(e.bars[2].kind, BarKind::Io);
        assert_eq!(e.bars[2].size, 0x20);
        assert_eq!(e.bars[3].size, 0x4000);
        assert_eq!(e.msix.map(|m| m.0), Some(3));
        let n = t.find(0x1b36, 0x0010).unwrap();
        assert_eq!((n.bars[0].kind, n.bars[0].size), (BarKind::Mem64, 0x4000));
        assert_eq!(n.pcie_type, Some(0));
        assert_eq!(t.funcs()[0].pcie_type, Some(4));
    }

    #[test]
    fn too_many_buses_is_an_error() {
        let mut sim = Sim(fabric());
        let hb = HostBridge { bus_end: 3, ..HB };
        let mut t = Tree::new();
        assert_eq!(
            enumerate(&mut sim, hb, &mut t).unwrap_err(),
            EnumError::OutOfBuses
        );
    }

    #[test]
    fn report_orders_are_permutations() {
        for o in ["forward", "reverse", "shuffle"] {
            let mut v = report_order(10, o, 7).unwrap()[..10].to_vec();
            v.sort();
            assert_eq!(v, (0..10).collect::<Vec<_>>());
        }
        assert_eq!(report_order(3, "reverse", 0).unwrap()[..3], [2, 1, 0]);
        assert!(report_order(3, "sideways", 0).is_none());
    }
}
