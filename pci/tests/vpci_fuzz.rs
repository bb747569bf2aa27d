//! Hostile guests and a hostile hardware domain, by property tests: random
//! config writes and MSI-X page accesses never panic, never change physical
//! config space beyond what the policy passes through, never map anything
//! outside the guest's windows or over its forbidden ranges, and never let
//! the hardware domain disturb a guest's functions.

mod common;
mod vpci_fixture;

use common::b;
use pci::regs::*;
use pci::sim::Fabric;
use pci::vpci::*;
use pci::{Bdf, ConfigPort};
use proptest::prelude::*;
use vpci_fixture::*;

/// Physical config space (first 0x200 bytes) and MSI-X tables of every
/// function.
fn snapshot(fab: &mut Fabric, fns: &[Bdf]) -> Vec<(Bdf, Vec<u32>, Vec<[u32; 4]>)> {
    fns.iter()
        .map(|&f| {
            let cfg = (0..0x200u16).step_by(4).map(|r| fab.read32(f, r)).collect();
            let msix = (0..2048u16).map_while(|i| fab.msix_entry(f, i)).collect();
            (f, cfg, msix)
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Write { at: u64, width: u16, value: u32 },
    Read { at: u64, width: u16 },
    MsixWrite { at: u64, width: u16, value: u64 },
    MsixRead { at: u64, width: u16 },
}

fn width() -> impl Strategy<Value = u16> {
    prop_oneof![Just(1u16), Just(2), Just(4), Just(4), Just(8), Just(3)]
}

fn value() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>(), 0u32..0x100]
}

/// A config offset: mostly registers of the root ports and functions the
/// guest has (buses 0..=3, devices 0..=3, functions 0..=1), mostly aligned.
fn config_at() -> impl Strategy<Value = u64> {
    let reg = prop_oneof![0u16..0x40, 0x40u16..0x100, 0x100u16..0x140, 0u16..0x1000];
    (0u8..4, 0u8..4, 0u8..2, reg, any::<bool>(), 0u64..(32 << 20)).prop_map(
        |(bus, dev, func, reg, raw, anywhere)| {
            if raw && reg == 0 {
                anywhere
            } else {
                off(bus, dev, func, reg)
            }
        },
    )
}

/// An IPA in or near the MSI-X pages the guest maps in `setup`.
fn msix_at() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..0x2000).prop_map(|o| 0x80_0000_0000 + o),
        (0u64..0x2000).prop_map(|o| 0x1004_0000 + o),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (config_at(), width(), value()).prop_map(|(at, width, value)| Op::Write { at, width, value }),
        2 => (config_at(), width()).prop_map(|(at, width)| Op::Read { at, width }),
        1 => (msix_at(), width(), any::<u64>()).prop_map(|(at, width, value)| Op::MsixWrite { at, width, value }),
        1 => (msix_at(), width()).prop_map(|(at, width)| Op::MsixRead { at, width }),
    ]
}

/// The guest of the fixture, enumerated, BARs programmed and decoding on:
/// nvme BAR0 at 0x80_0000_0000, e1000e BARs at 0x1000_0000.. (MSI-X BAR3 at
/// 0x1004_0000).
fn setup() -> (World, GuestBus) {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let mut e = Effects::new();
    let nvme = off(1, 0, 0, 0);
    let e1000e = off(2, 0, 0, 0);
    g.config_write(fab, nvme + 0x10, 4, 0, &mut e);
    g.config_write(fab, nvme + 0x14, 4, 0x80, &mut e);
    g.config_write(fab, nvme + 4, 2, 6, &mut e);
    for (i, a) in [(0u64, 0x1000_0000u32), (1, 0x1002_0000), (3, 0x1004_0000)] {
        g.config_write(fab, e1000e + 0x10 + 4 * i, 4, a, &mut e);
    }
    g.config_write(fab, e1000e + 4, 2, 6, &mut e);
    (w, g)
}

/// Physical (address, size) of the guest functions' memory BARs.
fn guest_bars(fab: &mut Fabric, fns: &[Bdf]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &f in fns {
        let mut i = 0u16;
        while i < 6 {
            let o = BAR0 + 4 * i;
            let lo = fab.read32(f, o);
            let is64 = lo & 7 == 4;
            let hi = if is64 { fab.read32(f, o + 4) } else { 0 };
            fab.write32(f, o, u32::MAX);
            let mut mask = (fab.read32(f, o) & !0xf) as u64 | 0xffff_ffff_0000_0000;
            fab.write32(f, o, lo);
            if is64 {
                fab.write32(f, o + 4, u32::MAX);
                mask = (mask & 0xffff_ffff) | ((fab.read32(f, o + 4) as u64) << 32);
                fab.write32(f, o + 4, hi);
            }
            if lo & 1 == 0 && (lo & !0xf != 0 || hi != 0) {
                out.push((
                    ((hi as u64) << 32) | (lo & !0xf) as u64,
                    (!mask).wrapping_add(1),
                ));
            }
            i += if is64 { 2 } else { 1 };
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn hostile_guest_is_contained(ops in proptest::collection::vec(op(), 1..120)) {
        let (mut w, mut g) = setup();
        // Another guest, with the e1000e at 02:00.0: what it sees must not
        // change whatever guest 1 does.
        let units2 = w.own.assign(&mut w.topo, &mut w.fab, 2, &[b("02:00.0")], false).unwrap();
        let mut g2 = GuestBus::new(&units2, &w.topo, &mut w.fab, layout()).unwrap();
        program_root_ports(&mut g2, &mut w.fab);
        let mut e2 = Effects::new();
        g2.config_write(&mut w.fab, off(1, 0, 0, 0x10), 4, 0x1000_0000, &mut e2);
        g2.config_write(&mut w.fab, off(1, 0, 0, COMMAND), 2, 6, &mut e2);
        let view = |g2: &mut GuestBus, fab: &mut Fabric| -> Vec<u32> {
            let mut v: Vec<u32> = (0..0x200u16).step_by(4).map(|r| g2.config_read(fab, off(1, 0, 0, r), 4)).collect();
            v.extend((0..0x140u16).step_by(4).map(|r| g2.config_read(fab, off(0, 1, 0, r), 4)));
            v
        };
        let g2_before = view(&mut g2, &mut w.fab);
        let all = w.fab.present_functions();
        let guest_fns: Vec<Bdf> = w.own.functions_of(1).collect();
        let bars = guest_bars(&mut w.fab, &guest_fns);
        let before = snapshot(&mut w.fab, &all);
        let layout = g.layout().clone();
        // The mappings `setup` made.
        let mut s2 = Stage2::default();
        let mut e = Effects::new();
        // Replay setup's mappings by toggling Memory off and on.
        for bus in [1u8, 2] {
            g.config_write(&mut w.fab, off(bus, 0, 0, COMMAND), 2, 0, &mut e);
            e.clear();
            g.config_write(&mut w.fab, off(bus, 0, 0, COMMAND), 2, 6, &mut e);
            s2.apply(&e, &layout, &bars).map_err(TestCaseError::fail)?;
            e.clear();
        }
        for op in ops {
            e.clear();
            match op {
                Op::Write { at, width, value } => g.config_write(&mut w.fab, at, width, value, &mut e),
                Op::Read { at, width } => {
                    let v = g.config_read(&mut w.fab, at, width);
                    if width < 4 {
                        prop_assert!(v < 1 << (8 * width));
                    }
                }
                Op::MsixWrite { at, width, value } => {
                    g.msix_write(&mut w.fab, at, width, value, &mut e);
                }
                Op::MsixRead { at, width } => {
                    let _ = g.msix_read(&mut w.fab, at, width);
                }
            }
            s2.apply(&e, &layout, &bars).map_err(TestCaseError::fail)?;
        }
        // Physical config space: only Bus Master of the guest's functions
        // may differ (mirrored from the guest's Command).
        let after = snapshot(&mut w.fab, &all);
        for ((f, cfg0, msix0), (_, cfg1, msix1)) in before.iter().zip(&after) {
            let guest = guest_fns.contains(f);
            for (i, (a, b)) in cfg0.iter().zip(cfg1).enumerate() {
                let mask = if guest && i == 1 { !(COMMAND_BUS_MASTER as u32) } else { u32::MAX };
                prop_assert_eq!(a & mask, b & mask, "{} +{:#x}", f, i * 4);
            }
            prop_assert_eq!(msix0, msix1, "MSI-X table of {}", f);
        }
        prop_assert_eq!(view(&mut g2, &mut w.fab), g2_before);
        prop_assert_eq!(w.fab.bad_accesses(), 0);
    }

    #[test]
    fn hostile_hwdom_cannot_disturb_guest(
        writes in proptest::collection::vec((0usize..64, 0u16..0x200, width(), value()), 1..150)
    ) {
        let (mut w, mut g) = setup();
        let guest_fns: Vec<Bdf> = w.own.functions_of(1).collect();
        let protected: Vec<Bdf> = w.fab.present_functions().into_iter().filter(|f| w.own.is_protected(*f)).collect();
        // Mostly the guest's functions and the bridges above them, and
        // every other function too (its own bridges may not claim the
        // guest's buses or BAR memory).
        let others: Vec<Bdf> = w.fab.present_functions();
        let targets: Vec<Bdf> = guest_fns.iter().chain(&protected).chain(&protected).chain(&others).copied().collect();
        let guest_bars = guest_bars(&mut w.fab, &guest_fns);
        w.own.set_guest_memory(1, guest_bars.iter().copied());
        let guest_before = snapshot(&mut w.fab, &guest_fns);
        // Protected registers of the protected bridges.
        let fields = |fab: &mut Fabric, f: Bdf| -> Vec<u32> {
            let mut v = vec![
                fab.read16(f, COMMAND) as u32 & 7,
                fab.read32(f, PRIMARY_BUS) & 0xff_ffff,
                fab.read16(f, IO_BASE) as u32,
                fab.read32(f, 0x20),
                fab.read32(f, 0x24),
                fab.read32(f, 0x28),
                fab.read32(f, 0x2c),
                fab.read32(f, 0x30),
                fab.read16(f, BRIDGE_CONTROL) as u32 & 0x48,
            ];
            let t = w.topo.function(f).unwrap();
            if t.caps.acs != 0 {
                v.push(fab.read16(f, t.caps.acs + ACS_CTRL) as u32);
            }
            if t.caps.pm != 0 {
                v.push(fab.read16(f, t.caps.pm as u16 + PM_CTRL) as u32 & 3);
            }
            v
        };
        let prot_before: Vec<Vec<u32>> = protected.iter().map(|&f| fields(&mut w.fab, f)).collect();
        for (i, reg, width, value) in writes {
            let f = targets[i % targets.len()];
            let reg = if width <= 4 { reg & !(width - 1) } else { reg };
            let out = w.own.hwdom_apply(&mut w.fab, f, reg, width, Some(value));
            prop_assert_eq!(out.value, 0);
            if guest_fns.contains(&f) && matches!(width, 1 | 2 | 4) {
                let expected = Some(Refusal::GuestFunction { owner: 1 });
                prop_assert_eq!(out.refused, expected);
            }
        }
        prop_assert_eq!(snapshot(&mut w.fab, &guest_fns), guest_before);
        let prot_after: Vec<Vec<u32>> = protected.iter().map(|&f| fields(&mut w.fab, f)).collect();
        prop_assert_eq!(prot_before, prot_after);
        // No bridge the hwdom keeps claims a guest bus or guest BAR memory.
        for &f in &others {
            if protected.contains(&f) || guest_fns.contains(&f) || w.fab.read8(f, HEADER_TYPE) & 0x7f != 1 {
                continue;
            }
            let v = w.fab.read32(f, PRIMARY_BUS);
            let (sec, sub) = ((v >> 8) as u8, (v >> 16) as u8);
            for g in &guest_fns {
                prop_assert!(sec == 0 || sec > sub || !(sec..=sub).contains(&g.bus), "{} claims bus {}", f, g.bus);
            }
            let mem = w.fab.read32(f, MEMORY_BASE);
            let (lo, hi) = (((mem & 0xfff0) as u64) << 16, ((mem & 0xfff0_0000) as u64) | 0xf_ffff);
            for &(base, size) in &guest_bars {
                prop_assert!(lo > hi || base > hi || base + size <= lo, "{} window over {:#x}", f, base);
            }
        }
        // The guest still sees its functions.
        prop_assert_eq!(g.config_read(&mut w.fab, off(1, 0, 0, 0), 4), 0x0010_1b36);
        prop_assert_eq!(g.config_read(&mut w.fab, off(2, 0, 1, 0), 4), 0x0010_1b36);
        prop_assert_eq!(w.fab.read16(b("01:00.0"), VENDOR_ID), 0x1b36);
        prop_assert_eq!(w.fab.bad_accesses(), 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A device with a corrupt config space (capability lists, BAR flags,
    /// MSI-X locations) never makes construction or accesses panic, nor
    /// reach outside its 4 KiB.
    #[test]
    fn hostile_device_config_space(
        pokes in proptest::collection::vec((0u16..0x150, any::<u8>()), 1..24),
        writes in proptest::collection::vec((0u16..0x1000, width(), value()), 0..40),
    ) {
        let mut w = world();
        let nvme = b("01:00.0");
        for (at, v) in pokes {
            w.fab.poke(nvme, at, &[v]);
        }
        let units = vec![vec![nvme]];
        let Ok(mut g) = GuestBus::new(&units, &w.topo, &mut w.fab, layout()) else {
            return Ok(());
        };
        program_root_ports(&mut g, &mut w.fab);
        let mut e = Effects::new();
        for (reg, width, value) in writes {
            let reg = if width <= 4 { reg & !(width - 1) } else { reg };
            g.config_write(&mut w.fab, off(1, 0, 0, reg), width, value, &mut e);
            prop_assert!(!e.overflowed());
            let _ = g.msix_read(&mut w.fab, 0x1000_0000 + reg as u64, 4);
            e.clear();
        }
        for reg in (0..0x1000u16).step_by(4) {
            let _ = g.config_read(&mut w.fab, off(1, 0, 0, reg), 4);
        }
        prop_assert_eq!(w.fab.bad_accesses(), 0);
    }
}
