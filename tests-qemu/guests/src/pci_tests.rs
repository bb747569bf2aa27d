//! PCI tests: `enumerate` (the hardware domain enumerates the physical
//! hierarchy and reports it), `pci-guest` (a guest enumerates its virtual
//! bus and drives its devices), `pci-hostile` (a guest attacks its virtual
//! bus; the hardware domain checks it was not disturbed).

use test_guests::pcienum::{
    self, Addr, BAR0, BRIDGE_CONTROL, BUS_NUMBERS, BarKind, COMMAND, ConfigSpace, Func, HostBridge,
    Rng, Tree, VENDOR_ID, devfn,
};
use test_guests::println;
use test_guests::rt::{self, Env, Test, call};
use test_guests::smccc::*;

// ---- the host bridge in the DT and its ECAM -----------------------------------

/// The `pci-host-ecam-generic` node of our DT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bridge {
    ecam: u64,
    ecam_size: u64,
    hb: HostBridge,
    mem64: Option<(u64, u64)>,
    /// `interrupt-map-mask` (hi, pin) and the number of map entries.
    irq_mask: (u32, u32),
    irq_entries: usize,
}

fn be32(b: &[u8], i: usize) -> Option<u32> {
    b.get(4 * i..4 * i + 4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

fn cells64(b: &[u8], i: usize) -> Option<u64> {
    Some((u64::from(be32(b, i)?) << 32) | u64::from(be32(b, i + 1)?))
}

fn find_bridge(env: &Env) -> Result<Bridge, &'static str> {
    let fdt = env.fdt();
    let node = fdt
        .find_compatible(&["pci-host-ecam-generic"])
        .ok_or("no pci-host-ecam-generic node in the DT")?;
    // Root: #address-cells = #size-cells = 2 (as QEMU and phv write them).
    let reg = node.property("reg").ok_or("pcie node without reg")?.value;
    let (ecam, ecam_size) = (
        cells64(reg, 0).ok_or("short reg")?,
        cells64(reg, 2).ok_or("short reg")?,
    );
    let (bus_start, bus_end) = match node.property("bus-range") {
        Some(p) => (
            be32(p.value, 0).ok_or("short bus-range")?,
            be32(p.value, 1).ok_or("short bus-range")?,
        ),
        None => (0, (ecam_size >> 20).saturating_sub(1) as u32),
    };
    if bus_start > bus_end || bus_end > 255 {
        return Err("bad bus-range");
    }
    // ranges: PCI address (3 cells), CPU address (2), size (2).
    let ranges = node
        .property("ranges")
        .ok_or("pcie node without ranges")?
        .value;
    let (mut mem32, mut mem64) = (None, None);
    for e in 0..ranges.len() / 28 {
        let space = (be32(ranges, 7 * e).unwrap_or(0) >> 24) & 3;
        let pci = cells64(ranges, 7 * e + 1).unwrap_or(0);
        let cpu = cells64(ranges, 7 * e + 3).unwrap_or(0);
        let size = cells64(ranges, 7 * e + 5).unwrap_or(0);
        if space >= 2 && pci != cpu {
            return Err("a memory window is not identity mapped (PCI address != CPU address)");
        }
        match space {
            2 if mem32.is_none() => mem32 = Some((cpu, size)),
            3 if mem64.is_none() => mem64 = Some((cpu, size)),
            _ => {}
        }
    }
    let mem32 = mem32.ok_or("no 32-bit memory window in ranges")?;
    let irq_mask = node
        .property("interrupt-map-mask")
        .map(|p| (be32(p.value, 0).unwrap_or(0), be32(p.value, 3).unwrap_or(0)))
        .unwrap_or((0, 0));
    let irq_entries = node
        .property("interrupt-map")
        .zip(irq_map_layout(&fdt, node))
        .map_or(0, |(p, (cells, _))| p.value.len() / (4 * cells));
    Ok(Bridge {
        ecam,
        ecam_size,
        hb: HostBridge {
            bus_start: bus_start as u8,
            bus_end: bus_end as u8,
            mem32,
        },
        mem64,
        irq_mask,
        irq_entries,
    })
}

/// Layout of `interrupt-map` entries: child address (3) + pin (1) +
/// parent phandle (1) + the parent's #address-cells + its #interrupt-cells.
/// Returns (cells per entry, parent #address-cells).
fn irq_map_layout(fdt: &fdt::Fdt<'_>, node: fdt::node::FdtNode<'_, '_>) -> Option<(usize, usize)> {
    let map = node.property("interrupt-map")?.value;
    let parent = fdt.find_phandle(be32(map, 4)?)?;
    let cells = |name| {
        parent
            .property(name)
            .and_then(|p| be32(p.value, 0))
            .map(|v| v as usize)
    };
    let ac = cells("#address-cells").unwrap_or(0);
    let ic = cells("#interrupt-cells")?;
    Some((5 + ac + ic, ac))
}

/// The INTID legacy interrupt `pin` (1..4) of `f` is routed to, through
/// the bridges' swizzle and the host bridge's `interrupt-map`.
pub(crate) fn intx_route(env: &Env, tree: &Tree, f: &Func) -> Option<u32> {
    let mut pin = u32::from(f.interrupt_pin);
    if !(1..=4).contains(&pin) {
        return None;
    }
    let mut cur = *f;
    while let Some(p) = cur.parent {
        pin = ((pin - 1 + u32::from(cur.dev())) % 4) + 1;
        cur = tree.funcs[p];
    }
    let fdt = env.fdt();
    let node = fdt.find_compatible(&["pci-host-ecam-generic"])?;
    let mask = node.property("interrupt-map-mask")?.value;
    let (mhi, mpin) = (be32(mask, 0)?, be32(mask, 3)?);
    let hi = (u32::from(cur.bus) << 16) | (u32::from(cur.devfn) << 8);
    let map = node.property("interrupt-map")?.value;
    let (cells, ac) = irq_map_layout(&fdt, node)?;
    // GIC specifier: type (0 = SPI), number, flags.
    (0..map.len() / (4 * cells)).find_map(|e| {
        let w = |k| be32(map, cells * e + k);
        (w(0)? == hi & mhi && w(3)? == pin & mpin && w(5 + ac)? == 0)
            .then(|| w(6 + ac).map(|s| s + 32))?
    })
}

/// Config space through the ECAM window (each access traps to the hypervisor).
pub(crate) struct Ecam {
    base: u64,
    bus_start: u8,
}

impl Ecam {
    /// The address of register `off` of `bus`/`df` in the window.
    pub(crate) fn address(&self, bus: u8, df: u8, off: u16) -> u64 {
        self.addr(bus, df, off)
    }
    fn addr(&self, bus: u8, df: u8, off: u16) -> u64 {
        self.base
            + (u64::from(bus.wrapping_sub(self.bus_start)) << 20)
            + (u64::from(df) << 12)
            + u64::from(off & 0xfff)
    }
    /// A 64-bit access (config space has no 8-byte registers: the
    /// hypervisor must split it or refuse it).
    fn read64(&self, bus: u8, df: u8, off: u16) -> Result<u64, rt::Abort> {
        let a = self.addr(bus, df, off);
        // SAFETY: inside the ECAM window the DT gives us (Device memory in
        // the bootstrap map); an abort is caught.
        rt::expect_abort(|| unsafe { core::ptr::read_volatile(a as *const u64) })
    }
    /// A read at an address that may be unaligned.
    fn read32_at(&self, bus: u8, df: u8, off: u16) -> Result<u32, rt::Abort> {
        let a = self.addr(bus, df, off);
        // SAFETY: as above; an unaligned Device access takes an alignment
        // fault at EL1, which is caught.
        rt::expect_abort(|| unsafe { core::ptr::read_volatile(a as *const u32) })
    }
}

macro_rules! ecam_rw {
    ($read:ident, $write:ident, $t:ty) => {
        fn $read(&mut self, bus: u8, df: u8, off: u16) -> $t {
            let a = self.addr(bus, df, off);
            // SAFETY: an aligned access inside the ECAM window of our DT,
            // mapped as Device memory; it traps to the hypervisor.
            unsafe { core::ptr::read_volatile(a as *const $t) }
        }
        fn $write(&mut self, bus: u8, df: u8, off: u16, v: $t) {
            let a = self.addr(bus, df, off);
            // SAFETY: as for the read.
            unsafe { core::ptr::write_volatile(a as *mut $t, v) }
        }
    };
}

impl ConfigSpace for Ecam {
    ecam_rw!(read8, write8, u8);
    ecam_rw!(read16, write16, u16);
    ecam_rw!(read32, write32, u32);
}

pub(crate) fn mmio_read32(addr: u64) -> Result<u32, rt::Abort> {
    rt::probe_read32(addr)
}

pub(crate) fn mmio_write32(addr: u64, v: u32) -> Result<(), rt::Abort> {
    // SAFETY: a BAR address the enumeration assigned (or a probe of one that
    // must abort); an abort is caught and the store skipped.
    rt::expect_abort(|| unsafe { core::ptr::write_volatile(addr as *mut u32, v) })
}

/// Find the bridge, enumerate below it and print the tree.
pub(crate) fn enumerate_bus(t: &mut Test, env: &Env) -> Option<(Bridge, Ecam, &'static Tree)> {
    let br = match find_bridge(env) {
        Ok(b) => b,
        Err(e) => {
            t.fail(format_args!("{e}"));
            return None;
        }
    };
    println!(
        "host bridge: ECAM {:#x} ({:#x} bytes), buses {:#x}-{:#x}, mem32 {:#x}+{:#x}",
        br.ecam, br.ecam_size, br.hb.bus_start, br.hb.bus_end, br.hb.mem32.0, br.hb.mem32.1,
    );
    println!(
        "host bridge: mem64 {:x?}, interrupt-map {} entries (mask {:#x}/{})",
        br.mem64, br.irq_entries, br.irq_mask.0, br.irq_mask.1
    );
    let buses = u64::from(br.hb.bus_end - br.hb.bus_start) + 1;
    t.check(
        br.ecam_size >= buses << 20,
        format_args!("ECAM size {:#x} too small for {buses} buses", br.ecam_size),
    );
    let mut ecam = Ecam {
        base: br.ecam,
        bus_start: br.hb.bus_start,
    };
    static mut TREE: Tree = Tree::new();
    // SAFETY: only the boot vCPU enumerates, once per run: this is the
    // only reference to TREE ever made.
    let tree: &'static mut Tree = unsafe { &mut *core::ptr::addr_of_mut!(TREE) };
    if let Err(e) = pcienum::enumerate(&mut ecam, br.hb, tree) {
        t.fail(format_args!("enumeration failed: {e}"));
        return None;
    }
    print_tree(env, tree);
    verify_programming(t, &mut ecam, tree);
    for f in tree
        .funcs()
        .iter()
        .filter(|f| (1..=4).contains(&f.interrupt_pin))
    {
        t.check(
            intx_route(env, tree, f).is_some(),
            format_args!(
                "{}: INT{} has no route in the DT's interrupt-map",
                Addr(f.bus, f.devfn),
                (b'A' + f.interrupt_pin - 1) as char
            ),
        );
    }
    Some((br, ecam, tree))
}

fn print_tree(env: &Env, tree: &Tree) {
    println!(
        "{} functions, buses {:02x}-{:02x}, memory {:#x}..{:#x}",
        tree.len,
        tree.funcs[0].bus.min(tree.last_bus),
        tree.last_bus,
        tree.funcs()
            .iter()
            .flat_map(|f| f.bars)
            .filter(|b| b.is_mem())
            .map(|b| b.addr)
            .min()
            .unwrap_or(0),
        tree.mem_end
    );
    for (i, f) in tree.funcs().iter().enumerate() {
        let indent = "                "
            .get(..2 * tree.depth(i).min(8))
            .unwrap_or("");
        let mut line = Line::new();
        line.push(format_args!(
            "{indent}{} {:04x}:{:04x} class {:06x} {}",
            Addr(f.bus, f.devfn),
            f.vendor,
            f.device,
            f.class,
            pcienum::port_type_name(f.pcie_type)
        ));
        if f.is_bridge() {
            line.push(format_args!(
                " buses {:02x}-{:02x}",
                f.secondary, f.subordinate
            ));
            match f.window {
                Some((s, e)) => line.push(format_args!(" window {s:#x}-{e:#x}")),
                None => line.push(format_args!(" window closed")),
            }
        }
        for (k, b) in f.bars.iter().enumerate() {
            match b.kind {
                BarKind::None => {}
                BarKind::Io => line.push(format_args!(" bar{k}=io/{:#x}(unassigned)", b.size)),
                BarKind::Mem32 | BarKind::Mem64 => line.push(format_args!(
                    " bar{k}={:#x}/{:#x}{}{}",
                    b.addr,
                    b.size,
                    if b.kind == BarKind::Mem64 { ",64" } else { "" },
                    if b.prefetchable { ",pref" } else { "" }
                )),
            }
        }
        if let Some(spi) = intx_route(env, tree, f) {
            line.push(format_args!(
                " INT{} -> INTID {spi}",
                (b'A' + f.interrupt_pin - 1) as char
            ));
        }
        line.flush();
    }
}

/// Console lines assembled from pieces (no allocator), wrapped before the
/// hypervisor's 160-byte console line limit.
struct Line {
    buf: [u8; Line::MAX],
    len: usize,
}

impl Line {
    const MAX: usize = 120;
    fn new() -> Self {
        Line {
            buf: [0; Line::MAX],
            len: 0,
        }
    }
    /// Append a piece; print the line first (and continue indented) if the
    /// piece does not fit.
    fn push(&mut self, a: core::fmt::Arguments<'_>) {
        let mut piece = Line::new();
        let _ = core::fmt::Write::write_fmt(&mut piece, a);
        if self.len + piece.len > Line::MAX {
            self.flush();
            let _ = core::fmt::Write::write_str(self, "      ");
        }
        let _ = core::fmt::Write::write_str(self, piece.as_str());
    }
    fn flush(&mut self) {
        if self.len > 0 {
            println!("{}", self.as_str());
        }
        self.len = 0;
    }
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Read config space back: what the enumerator programmed must be there.
fn verify_programming(t: &mut Test, c: &mut Ecam, tree: &Tree) {
    for f in tree.funcs() {
        let a = Addr(f.bus, f.devfn);
        let id = c.read32(f.bus, f.devfn, VENDOR_ID);
        t.check(
            id == u32::from(f.vendor) | (u32::from(f.device) << 16),
            format_args!("{a}: id now {id:#x}"),
        );
        for (k, b) in f.bars.iter().enumerate().filter(|(_, b)| b.is_mem()) {
            let lo = c.read32(f.bus, f.devfn, BAR0 + 4 * k as u16) & !0xf;
            let hi = if b.kind == BarKind::Mem64 {
                c.read32(f.bus, f.devfn, BAR0 + 4 * k as u16 + 4)
            } else {
                0
            };
            let got = (u64::from(hi) << 32) | u64::from(lo);
            t.check(
                got == b.addr && b.addr % b.size == 0,
                format_args!(
                    "{a}: BAR{k} reads {got:#x}, assigned {:#x} (size {:#x})",
                    b.addr, b.size
                ),
            );
        }
        let cmd = c.read16(f.bus, f.devfn, COMMAND);
        t.check(
            cmd & pcienum::CMD_BUS_MASTER != 0,
            format_args!("{a}: Command {cmd:#x} without Bus Master"),
        );
        if f.is_bridge() {
            let n = c.read32(f.bus, f.devfn, BUS_NUMBERS);
            let want =
                u32::from(f.bus) | (u32::from(f.secondary) << 8) | (u32::from(f.subordinate) << 16);
            t.check(
                n & 0xff_ffff == want,
                format_args!(
                    "{a}: bus numbers {:#x}, programmed {want:#x}",
                    n & 0xff_ffff
                ),
            );
            // The window covers every BAR below.
            for g in tree.funcs() {
                let mut p = g.parent;
                let mut below = false;
                while let Some(j) = p {
                    below |= tree.funcs[j] == *f;
                    p = tree.funcs[j].parent;
                }
                for b in g.bars.iter().filter(|b| b.is_mem() && below) {
                    let inside = f
                        .window
                        .is_some_and(|(s, e)| b.addr >= s && b.addr + b.size - 1 <= e);
                    t.check(
                        inside,
                        format_args!(
                            "{a}: window {:x?} does not cover BAR {:#x}/{:#x} of {}",
                            f.window,
                            b.addr,
                            b.size,
                            Addr(g.bus, g.devfn)
                        ),
                    );
                }
            }
        }
    }
}

// ---- device registers through the BARs ---------------------------------------------

const NVME: (u16, u16) = (0x1b36, 0x0010);
pub(crate) const E1000E: (u16, u16) = (0x8086, 0x10d3);
/// The conventional PCI e1000 (82540EM): the same CTRL/STATUS/RDBAL.
const E1000: (u16, u16) = (0x8086, 0x100e);

/// Read real device registers through BAR0: nvme CAP/VS, e1000e STATUS/CTRL,
/// plus a write/read-back of a plain RW register (nvme ASQ, e1000e RDBAL).
/// Returns how many devices were driven.
fn drive_devices(t: &mut Test, tree: &Tree, skip: &[(u8, u8)]) -> usize {
    let mut n = 0;
    for f in tree.funcs() {
        if skip.contains(&(f.bus, f.devfn)) {
            continue;
        }
        let a = Addr(f.bus, f.devfn);
        let Some(bar) = f.mem_bar(0) else { continue };
        let id = (f.vendor, f.device);
        if id == NVME {
            n += 1;
            let r = |off| mmio_read32(bar.addr + off);
            match (r(0), r(4), r(8)) {
                (Ok(cap_lo), Ok(cap_hi), Ok(vs)) => {
                    let cap = (u64::from(cap_hi) << 32) | u64::from(cap_lo);
                    println!(
                        "{a} nvme: CAP {cap:#018x} (MQES {}, CSS {:#x}), VS {vs:#010x} ({}.{})",
                        (cap & 0xffff) + 1,
                        (cap >> 37) & 0xff,
                        vs >> 16,
                        (vs >> 8) & 0xff
                    );
                    t.check(
                        cap != u64::MAX && cap & 0xffff != 0 && (cap >> 37) & 1 == 1,
                        format_args!(
                            "{a}: nvme CAP {cap:#x} implausible (MQES 0 or no NVM command set)"
                        ),
                    );
                    t.check(
                        vs >> 16 == 1 && (vs >> 8) & 0xff >= 2,
                        format_args!("{a}: nvme VS {vs:#x}, expected 1.2 or later"),
                    );
                }
                e => t.fail(format_args!(
                    "{a}: nvme BAR0 {:#x} unreadable: {e:x?}",
                    bar.addr
                )),
            }
            // ASQ (0x28): 4 KiB aligned, read/write while the controller is disabled.
            check_rw(t, &a, "nvme ASQ", bar.addr + 0x28, 0x1234_5000, 0xffff_f000);
        } else if id == E1000E || id == E1000 {
            let name = if id == E1000 { "e1000" } else { "e1000e" };
            n += 1;
            let ctrl = mmio_read32(bar.addr);
            let status = mmio_read32(bar.addr + 8);
            match (ctrl, status) {
                (Ok(ctrl), Ok(status)) => {
                    println!(
                        "{a} {name}: CTRL {ctrl:#010x}, STATUS {status:#010x} (FD {}, LU {}, speed {})",
                        status & 1,
                        (status >> 1) & 1,
                        (status >> 6) & 3
                    );
                    t.check(
                        status != u32::MAX && ctrl != u32::MAX,
                        format_args!("{a}: {name} CTRL/STATUS read all-ones"),
                    );
                }
                e => t.fail(format_args!(
                    "{a}: {name} BAR0 {:#x} unreadable: {e:x?}",
                    bar.addr
                )),
            }
            // RDBAL (0x2800): 16-byte aligned, read/write.
            check_rw(t, &a, "RDBAL", bar.addr + 0x2800, 0x1234_5670, 0xffff_fff0);
        }
    }
    n
}

/// A read/write device register without side effects while the device is
/// idle, that a reset clears to 0, and its writable bits: nvme CC (only the
/// queue entry sizes IOSQES/IOCQES, Enable and Shutdown left 0; QEMU keeps
/// ASQ across a reset), e1000e RDBAL (16-byte aligned).
pub(crate) fn scratch_register(f: &Func) -> Option<(u64, u32)> {
    let bar = f.mem_bar(0)?;
    match (f.vendor, f.device) {
        NVME => Some((bar.addr + 0x14, 0x00ff_0000)),
        E1000E | E1000 => Some((bar.addr + 0x2800, 0xffff_fff0)),
        _ => None,
    }
}

/// A marker value for function `f` (distinct per function where the
/// register allows it).
fn marker(f: &Func, mask: u32) -> u32 {
    if (f.vendor, f.device) == NVME {
        // IOSQES = 6 (64-byte SQ entries), IOCQES = 4 (16-byte CQ entries).
        return (6 << 16) | (4 << 20);
    }
    (0x5a00_0000 | (u32::from(f.rid()) << 8) | 0xa0) & mask
}

/// Leave a marker in the scratch register of each of our devices: a reset
/// of the device (which clears it) shows at `recheck`.
fn leave_markers(tree: &Tree, given: &[(u8, u8)]) -> usize {
    let mut n = 0;
    for f in tree
        .funcs()
        .iter()
        .filter(|f| !given.contains(&(f.bus, f.devfn)))
    {
        if let Some((addr, mask)) = scratch_register(f)
            && mmio_write32(addr, marker(f, mask)).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Write `v` to a plain RW register, read it back under `mask`, restore it.
fn check_rw(t: &mut Test, a: &Addr, what: &str, addr: u64, v: u32, mask: u32) {
    let Ok(old) = mmio_read32(addr) else {
        t.fail(format_args!("{a}: {what} at {addr:#x} unreadable"));
        return;
    };
    let wrote = mmio_write32(addr, v);
    let back = mmio_read32(addr);
    let _ = mmio_write32(addr, old);
    t.check(
        wrote.is_ok() && back.is_ok_and(|b| b & mask == v & mask),
        format_args!("{a}: {what} at {addr:#x}: wrote {v:#x}, read back {back:x?}"),
    );
}

// ---- enumerate (hardware domain) -------------------------------------------------

fn pci_call(id: u32, segment: u64, rid: u64) -> call::Ret {
    call::hvc(id, [segment, rid, 0, 0, 0, 0, 0])
}

/// Parse `SSSS:BB:DD.F` or `BB:DD.F` (hex).
pub(crate) fn parse_bdf(s: &str) -> Option<(u8, u8)> {
    let mut parts = s.rsplitn(3, ':');
    let df = parts.next()?;
    let bus = parts.next()?;
    let (d, f) = df.split_once('.')?;
    let hex = |x: &str| u8::from_str_radix(x, 16).ok();
    let (bus, d, f) = (hex(bus)?, hex(d)?, f.parse::<u8>().ok()?);
    (d < 32 && f < 8).then_some((bus, devfn(d, f)))
}

/// `given=BDF,BDF`: functions the scenario gives to guests.
fn given(env: &Env) -> ([(u8, u8); 8], usize) {
    let mut out = [(0u8, 0u8); 8];
    let mut n = 0;
    for s in env
        .bootargs
        .get("given")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        if let Some(b) = parse_bdf(s)
            && n < out.len()
        {
            out[n] = b;
            n += 1;
        }
    }
    (out, n)
}

/// `enumerate`: the hardware domain's enumeration and its reports.
pub fn enumerate(env: &Env) -> ! {
    let mut t = Test::new("enumerate");
    let Some((_br, mut ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    if let Ok(Some(n)) = env.bootargs.number("expect_functions") {
        t.check(
            tree.len as u64 == n,
            format_args!("found {} functions, the topology has {n}", tree.len),
        );
    }
    let (given, ngiven) = given(env);
    let given = &given[..ngiven];

    // `aim_bar=BB:DD.F@ADDR`: a hostile hardware domain aims BAR0 of a
    // function it will report for a guest at ADDR (RAM, the hypervisor).
    if let Some(spec) = env.bootargs.get("aim_bar") {
        crate::hostile::aim_bar(&mut t, &mut ecam, tree, spec);
    }
    report(&mut t, env, tree);
    refused_reports(&mut t, &mut ecam, tree);
    // `overlay_bar=BB:DD.F`: it moves BAR0 of its own function there onto
    // BAR0 of the first function it gave away.
    if let Some(spec) = env.bootargs.get("overlay_bar") {
        crate::hostile::overlay_bar(&mut t, &mut ecam, tree, spec, given);
    }

    let driven = drive_devices(&mut t, tree, given);
    let want_driven = tree
        .funcs()
        .iter()
        .filter(|f| [NVME, E1000E, E1000].contains(&(f.vendor, f.device)))
        .filter(|f| !given.contains(&(f.bus, f.devfn)))
        .count();
    t.check(
        driven == want_driven,
        format_args!("drove {driven} devices of {want_driven}"),
    );

    // `aer_device=ID aer_bus=N`: an AER error of our own device (QEMU id
    // ID, on bus N) reaches us, and no guest.
    if let Some(id) = env.bootargs.get("aer_device") {
        crate::pci_aer::hwdom_own_error(&mut t, env, &mut ecam, tree, id);
    }
    // `stuck_intx`: a hostile hardware domain holds INTx of its own e1000e
    // asserted and never services it (on a line it may share with a
    // guest's device).
    if env.bootargs.flag("stuck_intx") {
        crate::hostile::assert_intx_forever(&mut t, tree, given);
    }
    if env.bootargs.flag("recheck") {
        let marked = leave_markers(tree, given);
        println!("left markers in {marked} devices");
        // Let the guests run their tests, then prove nothing of ours moved.
        let wait = env
            .bootargs
            .number("recheck_after_ms")
            .ok()
            .flatten()
            .unwrap_or(2000);
        // `try_sbr_after_ms`: while the guests own their devices, try to
        // reset them with an SBR of their root ports: the hypervisor must
        // keep the bit clear (it logs the refusal).
        let sbr_at = env.bootargs.number("try_sbr_after_ms").ok().flatten();
        if let Some(ms) = sbr_at.filter(|&ms| ms < wait) {
            rt::idle_ms(ms);
            try_sbr_above_given(&mut t, &mut ecam, tree, given);
            // idle_ms works once per run (see there): spin the rest.
            rt::delay_ms(wait - ms);
        } else {
            rt::idle_ms(wait);
        }
        check_msix(&mut t, env, tree);
        recheck(&mut t, &mut ecam, tree, given);
    }
    t.finish(env)
}

/// PCI_ADD of every function in the order `order=` (reverse by default),
/// checking each outcome against the tree; then ENUMERATION_DONE and
/// PCI_UNIT_OF.
///
/// `hide=BB:DD.F`: a hostile hardware domain keeps that function (an
/// endpoint) from the hypervisor: never reported, still driven by us.
fn report(t: &mut Test, env: &Env, tree: &Tree) {
    let hidden = env.bootargs.get("hide").and_then(parse_bdf);
    let is_hidden = |f: &Func| hidden == Some((f.bus, f.devfn));
    let shown = tree.funcs().iter().filter(|f| !is_hidden(f)).count();
    let order = env.bootargs.get("order").unwrap_or("reverse");
    let seed = env.bootargs.number("seed").ok().flatten().unwrap_or(1);
    let Some(idx) = pcienum::report_order(tree.len, order, seed) else {
        t.fail(format_args!(
            "bad order={order} (forward, reverse, shuffle)"
        ));
        return;
    };
    let mut reported = [false; pcienum::MAX_FUNCS];
    let (mut orphaned, mut adopted) = (0u64, 0u64);
    for &i in &idx[..tree.len] {
        let f = &tree.funcs[i];
        if is_hidden(f) {
            println!("{}: hidden from the hypervisor", Addr(f.bus, f.devfn));
            continue;
        }
        let r = pci_call(PHV_PCI_ADD, 0, u64::from(f.rid()));
        // Attached iff every bridge above it was reported before.
        let mut chain = true;
        let mut p = f.parent;
        while let Some(j) = p {
            chain &= reported[j];
            p = tree.funcs[j].parent;
        }
        reported[i] = true;
        let want = if chain { ADD_ATTACHED } else { ADD_ORPHANED };
        if r.status() != SUCCESS || r.0[1] != want {
            t.fail(format_args!(
                "PCI_ADD {}: x0 {} x1 {} x2 {}, expected 0 and x1 = {want}",
                Addr(f.bus, f.devfn),
                r.status(),
                r.0[1],
                r.0[2]
            ));
        }
        if want == ADD_ORPHANED {
            orphaned += 1;
        } else {
            adopted += r.0[2];
        }
    }
    println!(
        "reported {shown} functions ({order}): {orphaned} waited for their bridge, {adopted} adopted"
    );
    t.check(
        adopted == orphaned,
        format_args!("{orphaned} reports waited for their bridge but {adopted} were adopted"),
    );
    if let Some(f) = tree.funcs().first() {
        let r = pci_call(PHV_PCI_ADD, 0, u64::from(f.rid()));
        t.check(
            r.status() == SUCCESS && r.0[1] == ADD_ALREADY_TRACKED,
            format_args!(
                "second PCI_ADD of {}: {:x?}, expected 0 / already tracked (2)",
                Addr(f.bus, f.devfn),
                r.0
            ),
        );
    }
    let r = pci_call(PHV_PCI_ENUMERATION_DONE, 0, 0);
    println!(
        "PCI_ENUMERATION_DONE: status {}, {} functions, {} units, {} orphans",
        r.status(),
        r.0[1],
        r.0[2],
        r.0[3]
    );
    t.check(
        r.status() == SUCCESS && r.0[1] == shown as u64 && r.0[3] == 0,
        format_args!(
            "PCI_ENUMERATION_DONE returned {:x?}, expected 0, {shown} functions, 0 orphans",
            r.0
        ),
    );
    t.check(
        (1..=shown as u64).contains(&r.0[2]),
        format_args!("{} units for {shown} functions", r.0[2]),
    );
    // Units: every member of a unit names the same unit and the same size.
    let mut units = 0;
    for f in tree.funcs().iter().filter(|f| !is_hidden(f)) {
        let r = pci_call(PHV_PCI_UNIT_OF, 0, u64::from(f.rid()));
        if r.status() != SUCCESS {
            t.fail(format_args!(
                "PCI_UNIT_OF {}: {}",
                Addr(f.bus, f.devfn),
                r.status()
            ));
            continue;
        }
        let (id, members) = (r.0[1], r.0[2]);
        let same = tree
            .funcs()
            .iter()
            .filter(|g| pci_call(PHV_PCI_UNIT_OF, 0, u64::from(g.rid())).0[1] == id)
            .count() as u64;
        t.check(
            same == members && tree.funcs().iter().any(|g| u64::from(g.rid()) == id),
            format_args!(
                "PCI_UNIT_OF {}: unit {id:#x} with {members} members, but {same} functions name it",
                Addr(f.bus, f.devfn)
            ),
        );
        if u64::from(f.rid()) == id {
            units += 1;
        }
    }
    t.check(
        units == r.0[2],
        format_args!(
            "PCI_UNIT_OF shows {units} units, ENUMERATION_DONE {}",
            r.0[2]
        ),
    );
}

/// Reports the hypervisor must refuse, with the documented codes.
fn refused_reports(t: &mut Test, c: &mut Ecam, tree: &Tree) {
    let root = tree.funcs().first().map_or(0, |f| f.bus);
    let Some(empty) = (0..32u8)
        .rev()
        .find(|d| c.read16(root, devfn(*d, 0), VENDOR_ID) == 0xffff)
    else {
        t.fail(format_args!("no empty slot on bus {root:#x}"));
        return;
    };
    let rid = (u64::from(root) << 8) | u64::from(devfn(empty, 0));
    let mut expect = |what: &str, r: call::Ret, status: i64, reason: Option<u64>| {
        let ok = r.status() == status && reason.is_none_or(|x| r.0[1] == x);
        t.check(
            ok,
            format_args!(
                "{what}: x0 {} x1 {}, expected {status}{}",
                r.status(),
                r.0[1],
                if reason.is_some() {
                    " with a reason"
                } else {
                    ""
                }
            ),
        );
    };
    expect(
        "PCI_ADD of an empty slot",
        pci_call(PHV_PCI_ADD, 0, rid),
        NOT_FOUND,
        Some(REASON_NO_FUNCTION),
    );
    expect(
        "PCI_ADD on unknown segment 7",
        pci_call(PHV_PCI_ADD, 7, 0),
        INVALID_PARAMETER,
        None,
    );
    expect(
        "PCI_ADD with a requester id above 16 bits",
        pci_call(PHV_PCI_ADD, 0, 1 << 16),
        INVALID_PARAMETER,
        None,
    );
    expect(
        "PCI_REMOVE of an untracked function",
        pci_call(PHV_PCI_REMOVE, 0, rid),
        NOT_FOUND,
        Some(REASON_NOT_TRACKED),
    );
    expect(
        "PCI_UNIT_OF of an untracked function",
        pci_call(PHV_PCI_UNIT_OF, 0, rid),
        NOT_FOUND,
        Some(REASON_NOT_TRACKED),
    );
    expect(
        "PCI_ENUMERATION_DONE of unknown segment 7",
        pci_call(PHV_PCI_ENUMERATION_DONE, 7, 0),
        INVALID_PARAMETER,
        None,
    );
}

/// After the guests ran: our functions' ids, bus numbers, BARs and Command
/// are as we left them; functions given away are no longer ours.
fn recheck(t: &mut Test, c: &mut Ecam, tree: &Tree, given: &[(u8, u8)]) {
    let before = t.failures;
    for f in tree.funcs() {
        let a = Addr(f.bus, f.devfn);
        if given.contains(&(f.bus, f.devfn)) {
            // Either still its guest's (its BAR aborts for us), or its guest
            // stopped and the hypervisor reset it and gave it back: then it
            // answers with the BARs we programmed (restored after the reset).
            if let Some(b) = f.mem_bar(0)
                && mmio_read32(b.addr).is_ok()
            {
                let id = c.read32(f.bus, f.devfn, VENDOR_ID);
                let lo = c.read32(f.bus, f.devfn, BAR0) & !0xf;
                t.check(
                    id == u32::from(f.vendor) | (u32::from(f.device) << 16)
                        && u64::from(lo) == b.addr & 0xffff_ffff,
                    format_args!(
                        "{a} came back from its guest with id {id:#x}, BAR0 {lo:#x} (ours {:#x})",
                        b.addr
                    ),
                );
                println!("{a}: back from its guest, BAR0 {lo:#x} as we programmed it");
                // A stopped guest reaches it no more: nothing changes its
                // registers behind our back.
                if let Some((addr, _)) = scratch_register(f) {
                    let first = mmio_read32(addr);
                    rt::delay_ms(50);
                    let then = mmio_read32(addr);
                    t.check(
                        first.is_ok() && first == then,
                        format_args!(
                            "{a}: scratch register {addr:#x} changed from {first:x?} to {then:x?}: its stopped guest still writes it"
                        ),
                    );
                }
            }
            continue;
        }
        let id = c.read32(f.bus, f.devfn, VENDOR_ID);
        t.check(
            id == u32::from(f.vendor) | (u32::from(f.device) << 16),
            format_args!("{a}: id {id:#x} after the guests ran"),
        );
        if f.is_bridge() {
            let n = c.read32(f.bus, f.devfn, BUS_NUMBERS) & 0xff_ffff;
            let want =
                u32::from(f.bus) | (u32::from(f.secondary) << 8) | (u32::from(f.subordinate) << 16);
            t.check(
                n == want,
                format_args!("{a}: bus numbers {n:#x}, ours {want:#x}"),
            );
            let bc = c.read16(f.bus, f.devfn, BRIDGE_CONTROL);
            t.check(
                bc & 0x40 == 0,
                format_args!("{a}: Secondary Bus Reset held ({bc:#x})"),
            );
        }
        for (k, b) in f.bars.iter().enumerate().filter(|(_, b)| b.is_mem()) {
            let lo = c.read32(f.bus, f.devfn, BAR0 + 4 * k as u16) & !0xf;
            t.check(
                u64::from(lo) == b.addr & 0xffff_ffff,
                format_args!("{a}: BAR{k} {lo:#x}, ours {:#x}", b.addr),
            );
        }
        let cmd = c.read16(f.bus, f.devfn, COMMAND);
        t.check(
            cmd & pcienum::CMD_MEMORY != 0 || !f.bars.iter().any(|b| b.is_mem()),
            format_args!("{a}: Memory Space disabled ({cmd:#x})"),
        );
    }
    // Our devices were not reset: the markers are still there.
    for f in tree
        .funcs()
        .iter()
        .filter(|f| !given.contains(&(f.bus, f.devfn)))
    {
        if let Some((addr, mask)) = scratch_register(f) {
            let got = mmio_read32(addr);
            t.check(
                got.is_ok_and(|v| v & mask == marker(f, mask)),
                format_args!(
                    "{}: marker {:#x} at {addr:#x} now reads {got:x?}: the device was reset or moved",
                    Addr(f.bus, f.devfn),
                    marker(f, mask)
                ),
            );
        }
    }
    let driven = drive_devices(t, tree, given);
    if t.failures == before {
        println!(
            "hwdom unaffected: {} functions rechecked, {driven} devices still answer",
            tree.len
        );
    }
}

// ---- pci-guest ---------------------------------------------------------------------

/// `devices=VVVV:DDDD,...`: the endpoints the guest must find.
fn expected_devices(t: &mut Test, env: &Env) -> ([(u16, u16); 8], usize) {
    let mut out = [(0u16, 0u16); 8];
    let mut n = 0;
    for s in env
        .bootargs
        .get("devices")
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let id = s.split_once(':').and_then(|(v, d)| {
            Some((
                u16::from_str_radix(v, 16).ok()?,
                u16::from_str_radix(d, 16).ok()?,
            ))
        });
        match id {
            Some(id) if n < out.len() => {
                out[n] = id;
                n += 1;
            }
            _ => t.fail(format_args!("bad devices= entry `{s}`")),
        }
    }
    (out, n)
}

/// `pci-guest`: enumerate the virtual bus, drive the devices.
pub fn pci_guest(env: &Env) -> ! {
    let mut t = Test::new("pci-guest");
    let Some((_br, _ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    check_guest_view(&mut t, env, tree);
    let driven = drive_devices(&mut t, tree, &[]);
    t.check(driven > 0, format_args!("no device to drive"));
    t.finish(env)
}

/// The endpoints are the ones given (`devices=`), each below a root port.
pub(crate) fn check_guest_view(t: &mut Test, env: &Env, tree: &Tree) {
    let (want, n) = expected_devices(t, env);
    let endpoints = tree
        .funcs()
        .iter()
        .filter(|f| !f.is_bridge() && f.parent.is_some());
    let mut seen = 0;
    for f in endpoints {
        seen += 1;
        t.check(
            want[..n].contains(&(f.vendor, f.device)),
            format_args!(
                "{} {:04x}:{:04x} was not given to us",
                Addr(f.bus, f.devfn),
                f.vendor,
                f.device
            ),
        );
        let parent = f.parent.map(|p| tree.funcs[p].pcie_type);
        t.check(
            parent == Some(Some(4)),
            format_args!(
                "{} is not below a (virtual) root port",
                Addr(f.bus, f.devfn)
            ),
        );
    }
    t.check(
        seen == n,
        format_args!("found {seen} endpoints below root ports, given {n}"),
    );
    for id in &want[..n] {
        t.check(
            tree.find(id.0, id.1).is_some(),
            format_args!("device {:04x}:{:04x} not found", id.0, id.1),
        );
    }
}

// ---- pci-hostile -------------------------------------------------------------------

/// `pci-hostile`: a guest tries to escape its virtual bus.
pub fn pci_hostile(env: &Env) -> ! {
    let mut t = Test::new("pci-hostile");
    let Some((br, mut ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    check_guest_view(&mut t, env, tree);

    // 1. Functions we were not given read all-ones.
    let mut absent = 0;
    for bus in br.hb.bus_start..=tree.last_bus.saturating_add(2).min(br.hb.bus_end) {
        for dev in 0..32 {
            let df = devfn(dev, 0);
            if tree.funcs().iter().any(|f| f.bus == bus && f.dev() == dev) {
                continue;
            }
            let v = ecam.read32(bus, df, VENDOR_ID);
            absent += 1;
            t.check(
                v == u32::MAX,
                format_args!("absent {} reads {v:#x}, not all-ones", Addr(bus, df)),
            );
        }
    }
    let (first, last) = (br.hb.bus_start, br.hb.bus_end);
    for bus in [last / 2, last.saturating_sub(1), last] {
        if bus > tree.last_bus && bus >= first {
            let v = ecam.read32(bus, 0, VENDOR_ID);
            t.check(v == u32::MAX, format_args!("bus {bus:#x} reads {v:#x}"));
        }
    }
    println!("{absent} absent functions read all-ones");
    // Past the ECAM window of our DT: an abort, or all-ones; never a device.
    for bus in [last.saturating_add(1), 0x80, 0xff] {
        if bus > last && u64::from(bus - first) << 20 >= br.ecam_size {
            let r = ecam.read32_at(bus, 0, VENDOR_ID);
            t.check(
                r.is_err() || r == Ok(u32::MAX),
                format_args!("bus {bus:#x}, past the ECAM window, reads {r:x?}"),
            );
        }
    }

    // 2. Unaligned and 8-byte config accesses: a value or an abort, nothing else.
    if let Some(f) = tree
        .funcs()
        .iter()
        .find(|f| !f.is_bridge() && f.parent.is_some())
    {
        let id = ecam.read32(f.bus, f.devfn, VENDOR_ID);
        let next = ecam.read32(f.bus, f.devfn, 4);
        match ecam.read64(f.bus, f.devfn, 0) {
            Ok(v) => {
                println!("8-byte config read: {v:#x}");
                t.check(
                    v as u32 == id && (v >> 32) as u32 & 0xffff == next & 0xffff,
                    format_args!(
                        "8-byte read {v:#x} disagrees with 4-byte reads {id:#x} {next:#x}"
                    ),
                );
            }
            Err(a) => println!("8-byte config read aborted (ESR {:#x})", a.esr),
        }
        match ecam.read32_at(f.bus, f.devfn, 1) {
            Ok(v) => println!("unaligned config read: {v:#x}"),
            Err(a) => println!("unaligned config read aborted (DFSC {:#x})", a.dfsc()),
        }
        let _ = rt::expect_abort(|| {
            // SAFETY: a deliberately unaligned store into our ECAM window.
            unsafe {
                core::ptr::write_volatile(ecam.addr(f.bus, f.devfn, 0x3d) as *mut u16, 0xffff)
            }
        });
        let id2 = ecam.read32(f.bus, f.devfn, VENDOR_ID);
        t.check(id2 == id, format_args!("id {id:#x} became {id2:#x}"));
    }

    // 3. BARs moved over our RAM, over the ECAM, outside the window, over another BAR.
    bar_attacks(&mut t, env, &br, &mut ecam, tree);

    // 4. MSI-X table address words of every function (the hypervisor shadows them).
    for f in tree.funcs() {
        if let (Some((bir, off, n)), Some(bar)) = (f.msix, f.mem_bar(0)) {
            let Some(b) = f.mem_bar(usize::from(bir)) else {
                continue;
            };
            let _ = bar;
            for e in 0..u64::from(n.min(4)) {
                let at = b.addr + u64::from(off) + 16 * e;
                let _ = mmio_write32(at, 0xfeed_0000);
                let _ = mmio_write32(at + 4, 0x0000_00ff);
                let _ = mmio_write32(at + 8, 0x1234);
                let _ = mmio_write32(at + 12, 0);
            }
            println!(
                "{}: wrote {} MSI-X entries with a foreign address",
                Addr(f.bus, f.devfn),
                n.min(4)
            );
        }
    }

    // 5. Bus numbers and Bridge Control of our virtual root ports.
    root_port_attacks(&mut t, &br, &mut ecam, tree);

    // 6. Our devices still work after all that; hardware-domain-only calls
    //    are denied (not natively: there is no hypervisor to call).
    let driven = drive_devices(&mut t, tree, &[]);
    t.check(driven > 0, format_args!("no device to drive"));
    let calls: &[(&str, u32)] = if env.native {
        &[]
    } else {
        &[
            ("PCI_ADD", PHV_PCI_ADD),
            ("PCI_REMOVE", PHV_PCI_REMOVE),
            ("PCI_ENUMERATION_DONE", PHV_PCI_ENUMERATION_DONE),
            ("PCI_UNIT_OF", PHV_PCI_UNIT_OF),
        ]
    };
    for &(name, id) in calls {
        let rid = tree.funcs().first().map_or(0, |f| u64::from(f.rid()));
        t.check_eq(name, pci_call(id, 0, rid).status(), DENIED);
    }

    // 7. Random config writes (seeded), then we still run and our root bus is intact.
    let seed = env.bootargs.number("seed").ok().flatten().unwrap_or(0x5eed);
    let count = env.bootargs.number("fuzz").ok().flatten().unwrap_or(2000);
    let mut rng = Rng::new(seed);
    for _ in 0..count {
        // Any bus of our window (past it the ECAM is not ours: aborts).
        let bus = if rng.below(4) == 0 {
            br.hb.bus_start + rng.below(u64::from(br.hb.bus_end - br.hb.bus_start) + 1) as u8
        } else {
            br.hb.bus_start + rng.below(u64::from(tree.last_bus - br.hb.bus_start) + 1) as u8
        };
        let df = if rng.below(2) == 0 {
            tree.funcs[rng.below(tree.len as u64) as usize].devfn
        } else {
            rng.below(256) as u8
        };
        let v = rng.next_u64();
        match rng.below(3) {
            0 => {
                let off = (rng.below(0x1000) & !3) as u16;
                // (Secondary Bus Reset is tested on its own, not at random.)
                let v = if off == 0x3c {
                    v as u32 & !(0x40 << 16)
                } else {
                    v as u32
                };
                ecam.write32(bus, df, off, v);
            }
            1 => {
                let off = (rng.below(0x1000) & !1) as u16;
                let v = if off == BRIDGE_CONTROL {
                    v as u16 & !0x40
                } else {
                    v as u16
                };
                ecam.write16(bus, df, off, v);
            }
            _ => ecam.write8(bus, df, rng.below(0x1000) as u16, v as u8),
        }
    }
    let mut intact = true;
    for f in tree.funcs().iter().filter(|f| f.bus == br.hb.bus_start) {
        let id = ecam.read32(f.bus, f.devfn, VENDOR_ID);
        intact &= id == u32::from(f.vendor) | (u32::from(f.device) << 16);
    }
    t.check(intact, format_args!("root bus ids changed after fuzzing"));
    println!("fuzz: {count} random config writes (seed {seed:#x}), still running");
    t.finish(env)
}

/// Program BAR `k` of `f` (low dword; the high dword of a 64-bit BAR to 0).
/// Like a driver after a reset: every memory BAR and Memory + Bus Master back.
pub(crate) fn reprogram_after_reset(c: &mut Ecam, f: &Func) {
    let cmd = c.read16(f.bus, f.devfn, COMMAND);
    for (k, b) in f.bars.iter().enumerate().filter(|(_, b)| b.is_mem()) {
        set_bar(c, f, k, b.addr);
    }
    c.write16(
        f.bus,
        f.devfn,
        COMMAND,
        cmd | pcienum::CMD_MEMORY | pcienum::CMD_BUS_MASTER,
    );
}

pub(crate) fn set_bar(c: &mut Ecam, f: &Func, k: usize, addr: u64) {
    let off = BAR0 + 4 * k as u16;
    let flags = c.read32(f.bus, f.devfn, off) & 0xf;
    c.write32(f.bus, f.devfn, off, (addr as u32 & !0xf) | flags);
    if f.bars[k].kind == BarKind::Mem64 {
        c.write32(f.bus, f.devfn, off + 4, (addr >> 32) as u32);
    }
}

fn bar_attacks(t: &mut Test, env: &Env, br: &Bridge, c: &mut Ecam, tree: &Tree) {
    let Some(f) = tree
        .funcs()
        .iter()
        .find(|f| !f.is_bridge() && f.parent.is_some() && f.mem_bar(0).is_some())
    else {
        t.fail(format_args!("no endpoint with a memory BAR0"));
        return;
    };
    let a = Addr(f.bus, f.devfn);
    let bar = f.bars[0];
    let dev_word = mmio_read32(bar.addr);
    // A RAM page of ours, with a pattern: a BAR over it must not replace it.
    static mut PAGE: [u32; 2048] = [0; 2048];
    // Only this vCPU touches PAGE.
    let page = core::ptr::addr_of_mut!(PAGE) as *mut u32;
    let ram = (page as u64 + 4095) & !4095;
    // SAFETY: `ram` is a 4 KiB aligned page inside PAGE (8 KiB).
    unsafe { core::ptr::write_volatile(ram as *mut u32, 0xa5a5_5a5a) };
    set_bar(c, f, 0, ram);
    // SAFETY: as above.
    let still = unsafe { core::ptr::read_volatile(ram as *const u32) };
    t.check(
        still == 0xa5a5_5a5a,
        format_args!("{a}: BAR0 moved over our RAM {ram:#x}: RAM reads {still:#x}"),
    );
    // Over our ECAM: config space still answers as config space.
    let rp = tree.funcs()[0];
    set_bar(c, f, 0, br.ecam);
    let id = c.read32(rp.bus, rp.devfn, VENDOR_ID);
    t.check(
        id == u32::from(rp.vendor) | (u32::from(rp.device) << 16),
        format_args!(
            "{a}: BAR0 over the ECAM {:#x}: {} reads {id:#x}",
            br.ecam,
            Addr(rp.bus, rp.devfn)
        ),
    );
    // Outside every window (in no RAM either): reads must not reach the device.
    let outside = [0x0a00_0000u64, env.mem_base + env.mem_size];
    for x in outside {
        if (br.hb.mem32.0..br.hb.mem32.0 + br.hb.mem32.1).contains(&x) {
            continue;
        }
        set_bar(c, f, 0, x);
        let r = mmio_read32(x);
        t.check(
            r.is_err() || r != dev_word,
            format_args!("{a}: BAR0 at {x:#x} outside the window reads the device ({r:x?})"),
        );
    }
    // Over another BAR of ours (any overlap: one of them answers, or neither).
    if let Some(g) = tree
        .funcs()
        .iter()
        .find(|g| *g != f && g.mem_bar(0).is_some() && !g.is_bridge())
    {
        set_bar(c, f, 0, g.bars[0].addr);
        let r = mmio_read32(g.bars[0].addr);
        println!(
            "{a}: BAR0 over {}'s BAR0: reads {r:x?}",
            Addr(g.bus, g.devfn)
        );
    }
    // Back home: the device answers again.
    set_bar(c, f, 0, bar.addr);
    let back = mmio_read32(bar.addr);
    t.check(
        back.is_ok() && back == dev_word,
        format_args!(
            "{a}: BAR0 back at {:#x} reads {back:x?}, before {dev_word:x?}",
            bar.addr
        ),
    );
}

fn root_port_attacks(t: &mut Test, br: &Bridge, c: &mut Ecam, tree: &Tree) {
    for (i, rp) in tree
        .funcs()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_bridge())
    {
        let a = Addr(rp.bus, rp.devfn);
        let Some(child) = tree.funcs().iter().find(|g| g.parent == Some(i)).copied() else {
            continue;
        };
        let numbers = c.read32(rp.bus, rp.devfn, BUS_NUMBERS);
        // Secondary/subordinate moved to the last buses of our window, over
        // the other bridges' ranges, then back. Where the device shows up
        // meanwhile is the emulation's business (our bus numbers are ours);
        // it must come back.
        let (sec, sub) = (br.hb.bus_end.saturating_sub(1), br.hb.bus_end);
        c.write32(
            rp.bus,
            rp.devfn,
            BUS_NUMBERS,
            (numbers & 0xff00_0000)
                | (u32::from(sub) << 16)
                | (u32::from(sec) << 8)
                | u32::from(rp.bus),
        );
        let moved = c.read32_at(sec, child.devfn, VENDOR_ID);
        println!(
            "{a}: buses moved to {sec:02x}-{sub:02x}: {} reads {moved:x?}",
            Addr(sec, child.devfn)
        );
        c.write32(rp.bus, rp.devfn, BUS_NUMBERS, numbers);
        let id = c.read32(child.bus, child.devfn, VENDOR_ID);
        t.check(
            id == u32::from(child.vendor) | (u32::from(child.device) << 16),
            format_args!(
                "{a}: after restoring bus numbers {} reads {id:#x}",
                Addr(child.bus, child.devfn)
            ),
        );
        // Bridge Control: every bit but SBR, then back.
        let bc = c.read16(rp.bus, rp.devfn, BRIDGE_CONTROL);
        c.write16(rp.bus, rp.devfn, BRIDGE_CONTROL, 0xffbf);
        c.write16(rp.bus, rp.devfn, BRIDGE_CONTROL, bc);
        let id = c.read32(child.bus, child.devfn, VENDOR_ID);
        t.check(
            id == u32::from(child.vendor) | (u32::from(child.device) << 16),
            format_args!(
                "{a}: after Bridge Control writes {} reads {id:#x}",
                Addr(child.bus, child.devfn)
            ),
        );
    }
}

// ---- pci-sbr -----------------------------------------------------------------------

/// `pci-sbr`: the guest asks for a Secondary Bus Reset on the virtual root
/// port above each of its devices (as Linux does for recovery or
/// `reset_method=bus`); the hypervisor must perform a real reset covering
/// only the guest's functions: the device's scratch register (nvme ASQ,
/// e1000e RDBAL) is back to 0 afterwards, the device answers again, and its
/// BARs and Command are as the guest programmed them (or programmable again).
pub fn pci_sbr(env: &Env) -> ! {
    let mut t = Test::new("pci-sbr");
    let Some((_br, mut ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    check_guest_view(&mut t, env, tree);
    let mut done = 0;
    for (i, rp) in tree
        .funcs()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_bridge())
    {
        let a = Addr(rp.bus, rp.devfn);
        let kids = tree.funcs().iter().filter(|g| g.parent == Some(i));
        let Some(dev) = kids
            .clone()
            .find(|g| scratch_register(g).is_some())
            .copied()
        else {
            continue;
        };
        let d = Addr(dev.bus, dev.devfn);
        let Some((reg, mask)) = scratch_register(&dev) else {
            continue;
        };
        let msix = program_msix(&mut ecam, &dev);
        let mark = marker(&dev, mask);
        let _ = mmio_write32(reg, mark);
        let before = mmio_read32(reg);
        t.check(
            before.is_ok_and(|v| v & mask == mark),
            format_args!("{d}: scratch register reads {before:x?} after writing {mark:#x}"),
        );
        // Set SBR, hold it (Trst >= 1 ms), clear it.
        let bc = ecam.read16(rp.bus, rp.devfn, BRIDGE_CONTROL);
        ecam.write16(rp.bus, rp.devfn, BRIDGE_CONTROL, bc | 0x40);
        rt::delay_ms(2);
        ecam.write16(rp.bus, rp.devfn, BRIDGE_CONTROL, bc & !0x40);
        let deassert = rt::counter();
        // Config space answers again within 1 s (the hypervisor may hold the
        // accesses or return all-ones / RRS while the reset runs).
        let id = u32::from(dev.vendor) | (u32::from(dev.device) << 16);
        let back = rt::poll_ms(1000, || {
            (ecam.read32(dev.bus, dev.devfn, VENDOR_ID) == id).then_some(())
        });
        let us = (rt::counter() - deassert) * 1_000_000 / rt::counter_freq();
        println!(
            "{d}: answers {}.{:03} ms after the SBR deassert write",
            us / 1000,
            us % 1000
        );
        t.check(
            back.is_some(),
            format_args!("{d}: does not answer within 1 s of SBR on {a}"),
        );
        let bc_now = ecam.read16(rp.bus, rp.devfn, BRIDGE_CONTROL);
        t.check(
            bc_now & 0x40 == 0,
            format_args!("{a}: SBR still set ({bc_now:#x})"),
        );
        // Our virtual config is intact, or at least reprogrammable: make sure
        // BAR0 and Memory are ours again, then look at the device.
        let bar0 = ecam.read32(dev.bus, dev.devfn, BAR0) & !0xf;
        let cmd = ecam.read16(dev.bus, dev.devfn, COMMAND);
        println!("{d}: after SBR on {a}: BAR0 {bar0:#x}, Command {cmd:#x}");
        // Everything below the port was reset: restore each function, as
        // Linux does for the devices below a bridge it reset.
        for kid in kids.clone() {
            reprogram_after_reset(&mut ecam, kid);
        }
        // Linux's restore: the MSI-X vectors programmed and enabled again
        // (the hwdom's `msix_check` reads the physical table meanwhile).
        if msix && program_msix(&mut ecam, &dev) {
            println!("{d}: MSI-X vectors programmed again after the SBR");
        }
        let after = mmio_read32(reg);
        if after == Ok(0) {
            println!("{d}: reset by SBR on {a}: scratch register {mark:#x} -> 0");
        } else {
            t.fail(format_args!(
                "{d}: scratch register reads {after:x?} after SBR (was {mark:#x}): no reset happened"
            ));
        }
        done += 1;
    }
    t.check(
        done > 0,
        format_args!("no device below a root port to reset"),
    );
    let driven = drive_devices(&mut t, tree, &[]);
    t.check(
        driven > 0,
        format_args!("no device to drive after the resets"),
    );
    // The physical MSI-X table is for the hardware domain to inspect (not
    // natively: there is no hypervisor to call).
    if let Some(f) = tree
        .funcs()
        .iter()
        .find(|f| f.msix.is_some())
        .filter(|_| !env.native)
    {
        let r = call::hvc(
            PHV_PCI_MSIX_ENTRY,
            [0, u64::from(f.bus) << 8 | u64::from(f.devfn), 0, 0, 0, 0, 0],
        );
        t.check(
            r.status() == -4,
            format_args!(
                "PCI_MSIX_ENTRY from a guest returned {}, not DENIED",
                r.status()
            ),
        );
    }
    t.finish(env)
}

const PHV_PCI_MSIX_ENTRY: u32 = 0xC600_0024;
/// MSI-X entries `program_msix` programs (at most).
const MSIX_PATTERN_ENTRIES: u64 = 2;

/// Entry `e` as `program_msix` writes it: (address, data). The address is
/// never used (the hypervisor keeps physical MSI-X Enable off); the pattern
/// lets the hardware domain recognise the guest's entries in the physical
/// table.
const fn msix_pattern(e: u64) -> (u64, u32) {
    (0x0800_0040, 0x5000 | e as u32)
}

/// Programs the first MSI-X vectors of `f` like Linux: Enable with the
/// Function Mask, each entry (address, data, unmasked), Function Mask off.
/// False if `f` has no MSI-X table in a memory BAR.
fn program_msix(c: &mut Ecam, f: &Func) -> bool {
    let (Some((bir, off, n)), Some(cap)) = (
        f.msix,
        pcienum::find_cap(c, f.bus, f.devfn, pcienum::CAP_MSIX),
    ) else {
        return false;
    };
    let Some(bar) = f.mem_bar(usize::from(bir)) else {
        return false;
    };
    c.write16(f.bus, f.devfn, cap + 2, 0xc000);
    for e in 0..u64::from(n).min(MSIX_PATTERN_ENTRIES) {
        let at = bar.addr + u64::from(off) + 16 * e;
        let (addr, data) = msix_pattern(e);
        let _ = mmio_write32(at, addr as u32);
        let _ = mmio_write32(at + 4, (addr >> 32) as u32);
        let _ = mmio_write32(at + 8, data);
        let _ = mmio_write32(at + 12, 0);
    }
    c.write16(f.bus, f.devfn, cap + 2, 0x8000);
    true
}

/// `msix_check=BDF,...` (hwdom): while the guests still own these
/// functions, read their physical MSI-X entries with PCI_MSIX_ENTRY and
/// expect what `program_msix` wrote (a guest re-programmed them after its
/// SBR; the hypervisor must have written them to the device). Waits up to
/// `msix_check_ms` (default 3000) for them to appear.
fn check_msix(t: &mut Test, env: &Env, tree: &Tree) {
    let Some(list) = env.bootargs.get("msix_check") else {
        return;
    };
    let ms = env
        .bootargs
        .number("msix_check_ms")
        .ok()
        .flatten()
        .unwrap_or(3000);
    for (bus, df) in list.split(',').filter_map(parse_bdf) {
        let a = Addr(bus, df);
        let Some(f) = tree.funcs().iter().find(|f| (f.bus, f.devfn) == (bus, df)) else {
            t.fail(format_args!("msix_check: no function {a}"));
            continue;
        };
        let n = f
            .msix
            .map_or(0, |m| u64::from(m.2))
            .min(MSIX_PATTERN_ENTRIES);
        let rid = u64::from(bus) << 8 | u64::from(df);
        let read = |e: u64| call::hvc(PHV_PCI_MSIX_ENTRY, [0, rid, e, 0, 0, 0, 0]);
        let seen = rt::poll_ms(ms, || {
            (0..n)
                .all(|e| {
                    let r = read(e);
                    let (addr, data) = msix_pattern(e);
                    let [x0, x1, x2, x3] = r.0;
                    x0 == 0 && x1 == addr && x2 == u64::from(data) && x3 & 1 == 0
                })
                .then_some(())
        });
        let [x0, x1, x2, x3] = read(0).0;
        if n > 0 && seen.is_some() {
            println!(
                "{a}: physical MSI-X table holds the guest's {n} vectors (entry 0: address {x1:#x}, data {x2:#x}, control {x3:#x})"
            );
        } else {
            t.fail(format_args!(
                "{a}: physical MSI-X entry 0 reads status {x0:#x}: address {x1:#x}, data {x2:#x}, control {x3:#x} ({n} entries expected)"
            ));
        }
    }
}

const PHV_PCI_RESET_INFO: u32 = 0xC600_0020;
const PHV_PCI_RESET: u32 = 0xC600_0021;
/// PCIe capability: Device Capabilities FLR bit, Device Control Initiate FLR.
const PCIE_DEVCAP_FLR: u32 = 1 << 28;
const PCIE_DEVCTL_BCR_FLR: u16 = 1 << 15;

/// `pci-reset`: a guest resets its devices itself: an FLR through its
/// virtual Device Control where the device has one, the reset hypercall
/// otherwise; first it asks which reset covers each device (PCI_RESET_INFO)
/// and
/// expects one that touches nothing it does not own. Each reset must really
/// happen (a marker in a device register is gone) and the device must
/// answer again and work.
pub fn pci_reset(env: &Env) -> ! {
    let mut t = Test::new("pci-reset");
    let Some((_br, mut ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    check_guest_view(&mut t, env, tree);
    let mut done = 0;
    for dev in tree.funcs().iter().filter(|f| !f.is_bridge()) {
        let d = Addr(dev.bus, dev.devfn);
        let Some((reg, mask)) = scratch_register(dev) else {
            continue;
        };
        let rid = u64::from(dev.rid());
        let info = pci_call(PHV_PCI_RESET_INFO, 0, rid);
        t.check(
            info.status() == 0 && info.0[2] >= 1 && info.0[3] == 0,
            format_args!("{d}: PCI_RESET_INFO answered {:x?}", info.0),
        );
        println!(
            "{d}: covered by reset method {} touching {} function(s), {} not ours",
            info.0[1], info.0[2], info.0[3]
        );
        let mark = marker(dev, mask);
        let _ = mmio_write32(reg, mark);
        let pcie = pcienum::find_cap(&mut ecam, dev.bus, dev.devfn, 0x10);
        let flr = pcie.filter(|&p| ecam.read32(dev.bus, dev.devfn, p + 4) & PCIE_DEVCAP_FLR != 0);
        let started = rt::counter();
        let how = match flr {
            Some(p) => {
                let ctl = ecam.read16(dev.bus, dev.devfn, p + 8);
                ecam.write16(dev.bus, dev.devfn, p + 8, ctl | PCIE_DEVCTL_BCR_FLR);
                "FLR"
            }
            None => {
                let r = pci_call(PHV_PCI_RESET, 0, rid);
                t.check(
                    r.status() == 0,
                    format_args!("{d}: PCI_RESET answered {:x?}", r.0),
                );
                "PCI_RESET"
            }
        };
        let id = u32::from(dev.vendor) | (u32::from(dev.device) << 16);
        let back = rt::poll_ms(1000, || {
            (ecam.read32(dev.bus, dev.devfn, VENDOR_ID) == id).then_some(())
        });
        let us = (rt::counter() - started) * 1_000_000 / rt::counter_freq();
        println!(
            "{d}: answers {}.{:03} ms after its {how} was asked for",
            us / 1000,
            us % 1000
        );
        t.check(
            back.is_some(),
            format_args!("{d}: does not answer within 1 s of its {how}"),
        );
        if let Some(p) = flr {
            // Initiate FLR always reads 0.
            let now = ecam.read16(dev.bus, dev.devfn, p + 8);
            t.check(
                now & PCIE_DEVCTL_BCR_FLR == 0,
                format_args!("{d}: Initiate FLR reads back set ({now:#x})"),
            );
        }
        reprogram_after_reset(&mut ecam, dev);
        match mmio_read32(reg) {
            Ok(v) if v & mask == 0 => println!("{d}: reset by {how}: marker {mark:#x} -> 0"),
            other => t.fail(format_args!(
                "{d}: register reads {other:x?} after its {how} (was {mark:#x}): no reset happened"
            )),
        }
        done += 1;
    }
    t.check(done > 0, format_args!("no device to reset"));
    let driven = drive_devices(&mut t, tree, &[]);
    t.check(
        driven > 0,
        format_args!("no device to drive after the resets"),
    );
    t.finish(env)
}

/// The hardware domain tries a Secondary Bus Reset of the bridge above each
/// function it gave away: the write must not take (the bit reads back 0).
fn try_sbr_above_given(t: &mut Test, c: &mut Ecam, tree: &Tree, given: &[(u8, u8)]) {
    for (i, rp) in tree
        .funcs()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.is_bridge())
    {
        let below_given = tree
            .funcs()
            .iter()
            .any(|f| f.parent == Some(i) && given.contains(&(f.bus, f.devfn)));
        if !below_given {
            continue;
        }
        let a = Addr(rp.bus, rp.devfn);
        let bc = c.read16(rp.bus, rp.devfn, BRIDGE_CONTROL);
        c.write16(rp.bus, rp.devfn, BRIDGE_CONTROL, bc | 0x40);
        let now = c.read16(rp.bus, rp.devfn, BRIDGE_CONTROL);
        c.write16(rp.bus, rp.devfn, BRIDGE_CONTROL, bc & !0x40);
        t.check(
            now & 0x40 == 0,
            format_args!("{a}: our SBR above a guest's device took ({now:#x})"),
        );
        println!("{a}: SBR above a guest's device refused (Bridge Control {now:#x})");
    }
}

/// PSCI SYSTEM_RESET.
const PSCI_SYSTEM_RESET: u32 = 0x8400_0009;
/// "phvreboo": the word a `pci-reboot` guest leaves before restarting.
const REBOOTED: u64 = 0x7068_7672_6562_6f6f;

/// `pci-reboot`: a guest leaves a marker in each of its devices and restarts
/// itself (PSCI SYSTEM_RESET); after the restart the markers must be gone
/// (the hypervisor reset its devices: never rely on the guest) and the
/// devices must work after a fresh enumeration.
pub fn pci_reboot(env: &Env) -> ! {
    let mut t = Test::new("pci-reboot");
    // The last word of our RAM survives the restart: the hypervisor loads
    // the image and the DTB again, nothing else.
    let flag = (env.mem_base + env.mem_size - 8) as *mut u64;
    // SAFETY: inside our own RAM, used by nothing else.
    let restarted = unsafe { flag.read_volatile() } == REBOOTED;
    let Some((_br, _ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    let devices = tree
        .funcs()
        .iter()
        .filter(|f| !f.is_bridge() && scratch_register(f).is_some());
    if !restarted {
        for dev in devices {
            let Some((reg, mask)) = scratch_register(dev) else {
                continue;
            };
            let mark = marker(dev, mask);
            let _ = mmio_write32(reg, mark);
            let back = mmio_read32(reg);
            t.check(
                back.is_ok_and(|v| v & mask == mark),
                format_args!("{}: marker reads {back:x?}", Addr(dev.bus, dev.devfn)),
            );
        }
        // SAFETY: as above; cleaned to memory, the restart begins with the
        // MMU (and caches) off.
        unsafe {
            flag.write_volatile(REBOOTED);
            core::arch::asm!("dc civac, {}", "dsb sy", in(reg) flag);
        }
        println!("pci-reboot: markers left, restarting");
        let r = call::hvc(PSCI_SYSTEM_RESET, [0; 7]);
        t.fail(format_args!("SYSTEM_RESET returned {:x?}", r.0));
        t.finish(env)
    }
    // SAFETY: as above.
    unsafe { flag.write_volatile(0) };
    let mut seen = 0;
    for dev in devices {
        let Some((reg, mask)) = scratch_register(dev) else {
            continue;
        };
        let d = Addr(dev.bus, dev.devfn);
        match mmio_read32(reg) {
            Ok(v) if v & mask == 0 => println!("{d}: marker gone after the restart"),
            other => t.fail(format_args!(
                "{d}: marker reads {other:x?} after the restart: not reset"
            )),
        }
        seen += 1;
    }
    t.check(
        seen > 0,
        format_args!("no device to check after the restart"),
    );
    let driven = drive_devices(&mut t, tree, &[]);
    t.check(
        driven > 0,
        format_args!("no device to drive after the restart"),
    );
    t.finish(env)
}
