//! Shared fixtures of the vpci tests: a QEMU-like fabric, a hardware domain
//! that programs physical BARs, a guest layout, a Linux-like enumerator.
#![allow(dead_code)]

use crate::common::{b, track};
use pci::regs::*;
use pci::sim::{Fabric, Spec, devfn};
use pci::vpci::*;
use pci::{Bdf, ConfigPort, Topology};

// ---------------------------------------------------------------- fixtures

/// QEMU-like topology:
/// 00:01.0 root port ── 01:00.0 nvme
/// 00:02.0 root port ── 02:00.0 e1000e
/// 00:03.0 root port ── 03:00.0 x3130 up ─┬─ 04:00.0 down (no ACS) ── 05:00.0 e1000e
///                                        └─ 04:01.0 down (no ACS) ── 06:00.0 nvme
/// 00:04.0 root port ── 07:00.0 + 07:00.1 multi-function endpoint without ACS
pub fn fabric() -> Fabric {
    let rp = Spec::qemu_root_port;
    let switch = Spec::qemu_x3130_upstream()
        .child(
            0,
            0,
            Spec::qemu_x3130_downstream()
                .acs(None)
                .child(0, 0, Spec::qemu_e1000e()),
        )
        .child(
            1,
            0,
            Spec::qemu_x3130_downstream()
                .acs(None)
                .child(0, 0, Spec::qemu_nvme()),
        );
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), rp().child(0, 0, Spec::qemu_nvme())),
            (devfn(2, 0), rp().child(0, 0, Spec::qemu_e1000e())),
            (devfn(3, 0), rp().child(0, 0, switch)),
            (
                devfn(4, 0),
                rp().child(0, 0, Spec::endpoint(0x1234, 0x0001)).child(
                    0,
                    1,
                    Spec::endpoint(0x1234, 0x0002),
                ),
            ),
        ],
    )
}

/// Programs physical BARs of every endpoint like a hardware domain would
/// (32-bit from 0x1000_0000, 64-bit from 0x80_0000_0000, I/O from 0x1000)
/// and enables Memory + Bus Master.
pub fn hwdom_programs_bars(f: &mut Fabric, fns: &[Bdf]) {
    let (mut m32, mut m64, mut io) = (0x1000_0000u64, 0x80_0000_0000u64, 0x1000u64);
    for &bdf in fns {
        if f.read8(bdf, HEADER_TYPE) & 0x7f != 0 {
            continue;
        }
        let mut i = 0u16;
        while i < 6 {
            let off = BAR0 + 4 * i;
            let orig = f.read32(bdf, off);
            f.write32(bdf, off, u32::MAX);
            let rb = f.read32(bdf, off);
            if rb == 0 {
                i += 1;
                continue;
            }
            if orig & 1 != 0 {
                let size = (!(rb & !3) as u64 & 0xffff) + 1;
                io = io.next_multiple_of(size);
                f.write32(bdf, off, io as u32);
                io += size;
                i += 1;
            } else if orig & 6 == 4 {
                f.write32(bdf, off + 4, u32::MAX);
                let hi = f.read32(bdf, off + 4);
                let mask = ((hi as u64) << 32) | (rb & !0xf) as u64;
                let size = (!mask).wrapping_add(1);
                m64 = m64.next_multiple_of(size);
                f.write32(bdf, off, m64 as u32);
                f.write32(bdf, off + 4, (m64 >> 32) as u32);
                m64 += size;
                i += 2;
            } else {
                let size = (!(rb & !0xf)).wrapping_add(1) as u64;
                m32 = m32.next_multiple_of(size.max(0x1000));
                f.write32(bdf, off, m32 as u32);
                m32 += size.max(0x1000);
                i += 1;
            }
        }
        let cmd = f.read16(bdf, COMMAND);
        f.write16(
            bdf,
            COMMAND,
            cmd | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_IO,
        );
    }
}

pub struct World {
    pub fab: Fabric,
    pub topo: Topology,
    pub own: Ownership,
}

pub fn world() -> World {
    let mut fab = fabric();
    let topo = track(&mut fab);
    let all = fab.present_functions();
    hwdom_programs_bars(&mut fab, &all);
    World {
        fab,
        topo,
        own: Ownership::new(),
    }
}

pub const ECAM: u64 = 0x3000_0000;
pub const RAM: (u64, u64) = (0x4000_0000, 0x1000_0000);
pub const UART: (u64, u64) = (0x2000_0000, 0x1000);

pub fn layout() -> GuestLayout {
    GuestLayout {
        ecam_base: ECAM,
        ecam_buses: 16,
        // The window deliberately holds the ECAM and the "UART", so that
        // the overlap checks, not the window check, refuse them.
        mem32: (0x1000_0000, 0x3000_0000),
        mem64: (0x80_0000_0000, 0x10_0000_0000),
        forbidden: vec![RAM, UART],
    }
}

pub fn off(bus: u8, dev: u8, func: u8, reg: u16) -> u64 {
    ((bus as u64) << 20) | ((devfn(dev, func) as u64) << 12) | reg as u64
}

pub fn effects_of(e: &Effects) -> Vec<Effect> {
    assert!(!e.overflowed());
    e.iter().copied().collect()
}

/// Assigns nvme (01:00.0), the switch unit and the multi-function unit to
/// guest 1 and builds its bus.
pub fn guest() -> (World, GuestBus, Vec<Vec<Bdf>>) {
    let mut w = world();
    let mut units = w
        .own
        .assign(&mut w.topo, &mut w.fab, 1, &[b("01:00.0")], false)
        .unwrap();
    units.extend(
        w.own
            .assign(&mut w.topo, &mut w.fab, 1, &[b("05:00.0")], true)
            .unwrap(),
    );
    units.extend(
        w.own
            .assign(
                &mut w.topo,
                &mut w.fab,
                1,
                &[b("07:00.0"), b("07:00.1")],
                false,
            )
            .unwrap(),
    );
    let bus = GuestBus::new(&units, &w.topo, &mut w.fab, layout()).unwrap();
    (w, bus, units)
}

/// What a Linux-like enumerator does on bus 0: program each root port's
/// bus numbers (1, 2, ...).
pub fn program_root_ports(g: &mut GuestBus, fab: &mut Fabric) -> Vec<u8> {
    let mut e = Effects::new();
    let mut next = 1u8;
    let mut buses = Vec::new();
    for dev in 0..32 {
        if g.config_read(fab, off(0, dev, 0, 0), 4) == u32::MAX {
            continue;
        }
        assert_eq!(g.config_read(fab, off(0, dev, 0, HEADER_TYPE), 1), 1);
        let v = (next as u32) << 8 | (next as u32) << 16;
        g.config_write(fab, off(0, dev, 0, PRIMARY_BUS), 4, v, &mut e);
        buses.push(next);
        next += 1;
    }
    assert!(e.is_empty());
    buses
}

/// Scans a secondary bus like Linux below a PCIe port (device 0 only).
pub fn scan(g: &mut GuestBus, fab: &mut Fabric, bus: u8) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    let mf = g.config_read(fab, off(bus, 0, 0, HEADER_TYPE), 1) & 0x80 != 0;
    for func in 0..if mf { 8 } else { 1 } {
        let id = g.config_read(fab, off(bus, 0, func, 0), 4);
        if id != u32::MAX {
            out.push((func, id));
        }
    }
    out
}

/// Capabilities a guest sees: (id, offset) by following its chain.
pub fn guest_caps(g: &mut GuestBus, fab: &mut Fabric, bus: u8, func: u8) -> Vec<(u8, u16)> {
    let mut out = Vec::new();
    let mut p = g.config_read(fab, off(bus, 0, func, CAP_PTR), 1) as u16;
    while p != 0 && out.len() < 48 {
        let h = g.config_read(fab, off(bus, 0, func, p), 2);
        out.push((h as u8, p));
        p = (h >> 8) as u16;
    }
    out
}

// ------------------------------------------------------------ stage 2

/// What the guest's stage-2 holds, from the effects applied so far.
#[derive(Default)]
pub struct Stage2 {
    /// (ipa, size, pa, trapped)
    pub regions: Vec<(u64, u64, u64, bool)>,
}

pub fn overlaps(a: u64, al: u64, b: u64, bl: u64) -> bool {
    a < b.saturating_add(bl) && b < a.saturating_add(al)
}

impl Stage2 {
    /// Applies the Map / TrapMsix / Unmap effects, checking each: inside
    /// the windows, off the ECAM and forbidden ranges, over no other
    /// region, onto the guest's own BARs (`bars`, physical).
    pub fn apply(
        &mut self,
        effects: &Effects,
        layout: &GuestLayout,
        bars: &[(u64, u64)],
    ) -> Result<(), String> {
        if effects.overflowed() {
            return Err("effects overflowed".into());
        }
        for e in effects.iter() {
            match *e {
                Effect::Map { ipa, size, pa } => self.add(ipa, size, pa, false, layout, bars)?,
                Effect::TrapMsix { ipa, size } => self.add(ipa, size, 0, true, layout, bars)?,
                Effect::Unmap { ipa, size } => {
                    let before = self.regions.len();
                    self.regions
                        .retain(|&(a, l, ..)| !(a >= ipa && a + l <= ipa + size));
                    if self.regions.len() == before {
                        return Err(format!("unmap of nothing at {ipa:#x}"));
                    }
                    if self
                        .regions
                        .iter()
                        .any(|&(a, l, ..)| overlaps(a, l, ipa, size))
                    {
                        return Err(format!("unmap at {ipa:#x} splits a region"));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn add(
        &mut self,
        ipa: u64,
        size: u64,
        pa: u64,
        trap: bool,
        layout: &GuestLayout,
        bars: &[(u64, u64)],
    ) -> Result<(), String> {
        let fail = |what: &str| Err(format!("{ipa:#x}+{size:#x} (pa {pa:#x}): {what}"));
        if size == 0 || !ipa.is_multiple_of(0x1000) || !size.is_multiple_of(0x1000) {
            return fail("not whole pages");
        }
        let end = ipa.checked_add(size).ok_or(String::from("wraps"))?;
        let inside = |(b, l): (u64, u64)| ipa >= b && end <= b.saturating_add(l);
        if !(inside(layout.mem32) || inside(layout.mem64)) {
            return fail("outside the windows");
        }
        if overlaps(
            ipa,
            size,
            layout.ecam_base,
            (layout.ecam_buses as u64) << 20,
        ) {
            return fail("over the ECAM");
        }
        if layout
            .forbidden
            .iter()
            .any(|&(b, l)| overlaps(ipa, size, b, l))
        {
            return fail("over a forbidden range");
        }
        if self
            .regions
            .iter()
            .any(|&(a, l, ..)| overlaps(ipa, size, a, l))
        {
            return fail("over another region");
        }
        // The physical range is inside one physical BAR of the guest.
        if !trap
            && !bars
                .iter()
                .any(|&(b, l)| pa >= b && pa.saturating_add(size) <= b.saturating_add(l))
        {
            return fail("no BAR of the guest");
        }
        self.regions.push((ipa, size, pa, trap));
        Ok(())
    }
}
