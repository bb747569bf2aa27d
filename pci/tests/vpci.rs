//! Config-space virtualization against the simulated fabric: ownership, the
//! hardware domain's filter, and a guest's virtual bus driven the way a
//! Linux-like enumerator drives it.

mod common;
mod vpci_fixture;

use common::{b, track};
use pci::regs::*;
use pci::sim::{Fabric, Spec, devfn};
use pci::vpci::*;
use pci::{Bdf, ConfigPort, MemoryPort};
use vpci_fixture::*;

// ------------------------------------------------------------- ownership

#[test]
fn assignment_goes_by_unit() {
    let mut w = world();
    // Bridges are not assignable; untracked functions are refused.
    assert_eq!(
        w.own
            .assign(&mut w.topo, &mut w.fab, 1, &[b("00:01.0")], false),
        Err(AssignError::IsBridge(b("00:01.0")))
    );
    assert_eq!(
        w.own
            .assign(&mut w.topo, &mut w.fab, 1, &[b("09:00.0")], false),
        Err(AssignError::NotTracked(b("09:00.0")))
    );
    // Part of the switch unit: names the missing endpoint, not the ports.
    match w
        .own
        .assign(&mut w.topo, &mut w.fab, 1, &[b("05:00.0")], false)
    {
        Err(AssignError::SplitsUnit { unit, missing }) => {
            assert_eq!(unit.0, b("04:00.0"));
            assert_eq!(missing, vec![b("06:00.0")]);
        }
        other => panic!("{other:?}"),
    }
    // Part of a multi-function device without ACS.
    match w
        .own
        .assign(&mut w.topo, &mut w.fab, 1, &[b("07:00.1")], false)
    {
        Err(AssignError::SplitsUnit { missing, .. }) => assert_eq!(missing, vec![b("07:00.0")]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        w.own.owner(b("05:00.0")),
        Owner::Hwdom,
        "refusals change nothing"
    );
    // whole_units takes the rest of the unit.
    let units = w
        .own
        .assign(&mut w.topo, &mut w.fab, 1, &[b("05:00.0")], true)
        .unwrap();
    assert_eq!(units, vec![vec![b("05:00.0"), b("06:00.0")]]);
    assert_eq!(w.own.owner(b("06:00.0")), Owner::Guest(1));
    // Already owned, by this guest or another.
    assert_eq!(
        w.own
            .assign(&mut w.topo, &mut w.fab, 2, &[b("06:00.0")], true),
        Err(AssignError::AlreadyOwned {
            bdf: b("05:00.0"),
            owner: Owner::Guest(1)
        })
    );
    let units = w
        .own
        .assign(
            &mut w.topo,
            &mut w.fab,
            2,
            &[b("01:00.0"), b("07:00.1"), b("07:00.0")],
            false,
        )
        .unwrap();
    assert_eq!(
        units,
        vec![vec![b("01:00.0")], vec![b("07:00.0"), b("07:00.1")]]
    );
    // Bridges above guest functions are protected; others are not.
    for p in [
        "00:01.0", "00:03.0", "03:00.0", "04:00.0", "04:01.0", "00:04.0",
    ] {
        assert!(w.own.is_protected(b(p)), "{p}");
    }
    assert!(!w.own.is_protected(b("00:02.0")));
    assert_eq!(w.own.functions_of(1).count(), 2);
    // Release hands them back.
    assert_eq!(w.own.release(&w.topo, 1), vec![b("05:00.0"), b("06:00.0")]);
    assert!(!w.own.is_protected(b("04:00.0")));
    assert!(w.own.is_protected(b("00:01.0")));
}

// ------------------------------------------------------ hardware domain

#[test]
fn hwdom_sees_guest_functions_vanish_and_cannot_disturb_them() {
    let mut w = world();
    w.own
        .assign(&mut w.topo, &mut w.fab, 1, &[b("01:00.0")], false)
        .unwrap();
    let nvme = b("01:00.0");
    let rp = b("00:01.0");
    let free_rp = b("00:02.0");
    // The hwdom enabled the port (Linux does when a driver below enables
    // its device; GuestBus::new does it too).
    w.fab
        .write16(rp, COMMAND, COMMAND_MEMORY | COMMAND_BUS_MASTER);
    let (own, fab) = (&w.own, &mut w.fab);
    let mut apply = |bdf, reg, width, write| own.hwdom_apply(fab, bdf, reg, width, write);

    // Hidden function: all-ones at every width, writes refused.
    assert_eq!(apply(nvme, 0, 4, None).value, u32::MAX);
    assert_eq!(apply(nvme, 2, 2, None).value, 0xffff);
    assert_eq!(apply(nvme, 0x0e, 1, None).value, 0xff);
    let cmd_before = w.fab.read16(nvme, COMMAND);
    let (own, fab) = (&w.own, &mut w.fab);
    let out = own.hwdom_apply(fab, nvme, COMMAND, 2, Some(0));
    assert_eq!(out.refused, Some(Refusal::GuestFunction { owner: 1 }));
    assert_eq!(w.fab.read16(nvme, COMMAND), cmd_before);

    let (own, fab) = (&w.own, &mut w.fab);
    let mut apply = |bdf, reg, width, write| own.hwdom_apply(fab, bdf, reg, width, write);
    // Bus numbers: a change is refused, the same value passes silently.
    let buses = apply(rp, PRIMARY_BUS, 4, None).value;
    let out = apply(rp, PRIMARY_BUS, 4, Some(buses & !0xff_ff00 | 0x09_0900));
    assert_eq!(out.refused, Some(Refusal::BusNumbersAboveGuest));
    assert_eq!(apply(rp, PRIMARY_BUS, 4, None).value, buses);
    assert_eq!(
        apply(rp, SECONDARY_BUS, 1, Some(buses >> 8 & 0xff)).refused,
        None
    );
    // Secondary latency timer (same dword, not protected) still changes.
    let out = apply(rp, PRIMARY_BUS, 4, Some(buses & 0xff_ffff | 0x4000_0000));
    assert_eq!(out.refused, None);
    assert_eq!(
        apply(rp, PRIMARY_BUS, 4, None).value,
        buses & 0xff_ffff | 0x4000_0000
    );
    // Windows.
    let win = apply(rp, MEMORY_BASE, 4, None).value;
    assert_eq!(
        apply(rp, MEMORY_BASE, 4, Some(0x1230_1230)).refused,
        Some(Refusal::WindowAboveGuest)
    );
    assert_eq!(apply(rp, MEMORY_BASE, 4, None).value, win);
    assert_eq!(
        apply(rp, PREF_BASE_UPPER, 4, Some(0xdead)).refused,
        Some(Refusal::WindowAboveGuest)
    );
    // Bridge Control: SBR refused, harmless bits (SERR Enable) pass.
    let out = apply(rp, BRIDGE_CONTROL, 2, Some((BRIDGE_CONTROL_SBR | 2) as u32));
    assert_eq!(out.refused, Some(Refusal::BridgeControlAboveGuest));
    assert_eq!(apply(rp, BRIDGE_CONTROL, 2, None).value, 2);
    assert_eq!(apply(rp, BRIDGE_CONTROL, 2, Some(0)).refused, None);
    // Command: Memory/Bus Master kept, INTx Disable passes.
    let cmd = apply(rp, COMMAND, 2, None).value;
    let out = apply(rp, COMMAND, 2, Some(COMMAND_INTX_DISABLE as u32));
    assert_eq!(out.refused, Some(Refusal::CommandAboveGuest));
    assert_eq!(
        apply(rp, COMMAND, 2, None).value,
        cmd | COMMAND_INTX_DISABLE as u32
    );
    // ACS Control.
    let acs = w.topo.function(rp).unwrap().caps.acs;
    let ctrl = w.fab.read16(rp, acs + ACS_CTRL);
    assert_ne!(ctrl, 0, "the tracker enabled ACS");
    let out = w
        .own
        .hwdom_apply(&mut w.fab, rp, acs + ACS_CTRL, 2, Some(0));
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
    assert_eq!(w.fab.read16(rp, acs + ACS_CTRL), ctrl);
    // A 32-bit write over ACS Capability + Control: Control kept.
    let out = w.own.hwdom_apply(&mut w.fab, rp, acs + ACS_CAP, 4, Some(0));
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
    assert_eq!(w.fab.read16(rp, acs + ACS_CTRL), ctrl);
    // Link Disable.
    let pcie = w.topo.function(rp).unwrap().caps.pcie as u16;
    let out = w.own.hwdom_apply(
        &mut w.fab,
        rp,
        pcie + PCIE_LNKCTL,
        2,
        Some(PCIE_LNKCTL_LD as u32),
    );
    assert_eq!(out.refused, Some(Refusal::LinkControlAboveGuest));
    // The unprotected root port is the hwdom's to change.
    let d = w
        .own
        .hwdom_access(free_rp, BRIDGE_CONTROL, 2, Some(BRIDGE_CONTROL_SBR as u32));
    assert_eq!(d, HwdomDecision::PassThrough);
    assert_eq!(
        w.own.hwdom_access(free_rp, SECONDARY_BUS, 1, Some(9)),
        HwdomDecision::PassThrough
    );
    // Another bridge may not claim the guest's bus...
    let buses2 = w.fab.read32(free_rp, PRIMARY_BUS);
    let out = w
        .own
        .hwdom_apply(&mut w.fab, free_rp, PRIMARY_BUS, 4, Some(0x0001_0100));
    assert_eq!(out.refused, Some(Refusal::BusNumbersOverlapGuest));
    assert_eq!(w.fab.read32(free_rp, PRIMARY_BUS), buses2);
    let out = w
        .own
        .hwdom_apply(&mut w.fab, free_rp, SUBORDINATE_BUS, 1, Some(9));
    assert_eq!(out.refused, None);
    assert_eq!(w.fab.read8(free_rp, SUBORDINATE_BUS), 9);
    // ... nor open a window over its BARs, once the shell recorded them.
    let nvme_bar = (w.fab.read32(nvme, BAR0 + 4) as u64) << 32;
    assert_eq!(nvme_bar, 0x80_0000_0000);
    w.own.set_guest_memory(1, [(nvme_bar, 0x4000)]);
    let apply = |w: &mut World, reg, value| {
        w.own
            .hwdom_apply(&mut w.fab, free_rp, reg, 4, Some(value))
            .refused
    };
    assert_eq!(
        apply(&mut w, PREF_BASE_UPPER, 0x80),
        None,
        "window still empty"
    );
    assert_eq!(
        apply(&mut w, PREF_LIMIT_UPPER, 0x80),
        Some(Refusal::WindowOverlapsGuest)
    );
    assert_eq!(w.fab.read32(free_rp, PREF_LIMIT_UPPER), 0);
    assert_eq!(apply(&mut w, PREF_LIMIT_UPPER, 0x7f), None);
    assert_eq!(
        apply(&mut w, MEMORY_BASE, 0x1000_1000),
        None,
        "the 32-bit window holds no guest BAR"
    );
    // Decisions in lanes: byte 0x3e of a dword write at 0x3c.
    match w.own.hwdom_access(rp, INTERRUPT_LINE, 4, Some(0)) {
        HwdomDecision::WriteMasked { keep, reason } => {
            assert_eq!(
                keep,
                (BRIDGE_CONTROL_SBR as u32 | BRIDGE_CONTROL_VGA as u32) << 16
            );
            assert_eq!(reason, Refusal::BridgeControlAboveGuest);
        }
        d => panic!("{d:?}"),
    }
    // Reads of protected bridges pass.
    assert_eq!(
        w.own.hwdom_access(rp, PRIMARY_BUS, 4, None),
        HwdomDecision::PassThrough
    );
    // Nothing below the protected port changed: the guest's nvme still
    // answers at its address.
    assert_eq!(w.fab.read16(nvme, VENDOR_ID), 0x1b36);
    assert_eq!(w.fab.bad_accesses(), 0);
}

// ---------------------------------------------------------- guest bus

#[test]
fn guest_enumerates_root_ports_and_functions() {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    // Root ports at devices 1..=3 of bus 0, nothing else.
    for dev in 0..32u8 {
        let id = g.config_read(fab, off(0, dev, 0, 0), 4);
        if (1..=3).contains(&dev) {
            assert_eq!(id, 0x000c_1b36);
            assert_eq!(
                g.config_read(fab, off(0, dev, 0, CLASS_REVISION), 4) >> 8,
                0x060400
            );
            // PCIe capability: root port, link up, card present.
            assert_eq!(g.config_read(fab, off(0, dev, 0, CAP_PTR), 1), 0x40);
            let flags = g.config_read(fab, off(0, dev, 0, 0x42), 2);
            assert_eq!((flags >> 4) & 0xf, PCIE_TYPE_ROOT_PORT as u32);
            let lnksta = g.config_read(fab, off(0, dev, 0, 0x40 + PCIE_LNKSTA), 2) as u16;
            assert_ne!(lnksta & PCIE_LNKSTA_DLLLA, 0);
            let sltsta = g.config_read(fab, off(0, dev, 0, 0x40 + PCIE_SLTSTA), 2) as u16;
            assert_ne!(sltsta & PCIE_SLTSTA_PDS, 0);
            assert_eq!(
                g.config_read(fab, off(0, dev, 0, 0x100), 2),
                EXT_CAP_ID_AER as u32
            );
        } else {
            assert_eq!(id, u32::MAX, "device {dev}");
        }
        assert_eq!(g.config_read(fab, off(0, dev, 1, 0), 4), u32::MAX);
    }
    // Before bus numbers are programmed, nothing answers below.
    for bus in 1..16 {
        assert_eq!(g.config_read(fab, off(bus, 0, 0, 0), 4), u32::MAX);
    }
    assert_eq!(g.virtual_of(b("01:00.0")), None);
    let buses = program_root_ports(&mut g, fab);
    assert_eq!(buses, vec![1, 2, 3]);
    // nvme alone; the switch unit compacted to functions 0, 1 of one
    // multi-function device; the multi-function device as it is.
    assert_eq!(scan(&mut g, fab, 1), vec![(0, 0x0010_1b36)]);
    assert_eq!(
        scan(&mut g, fab, 2),
        vec![(0, 0x10d3_8086), (1, 0x0010_1b36)]
    );
    assert_eq!(
        scan(&mut g, fab, 3),
        vec![(0, 0x0001_1234), (1, 0x0002_1234)]
    );
    assert_eq!(g.config_read(fab, off(1, 0, 0, HEADER_TYPE), 1), 0);
    // Only device 0 below a root port; buses past the subordinate are empty.
    assert_eq!(g.config_read(fab, off(1, 1, 0, 0), 4), u32::MAX);
    assert_eq!(g.config_read(fab, off(4, 0, 0, 0), 4), u32::MAX);
    // Outside the virtual ECAM (16 buses).
    assert_eq!(g.config_read(fab, 16 << 20, 4), u32::MAX);
    assert_eq!(g.virtual_of(b("06:00.0")), Some(b("02:00.1")));
    assert_eq!(g.physical_of(b("02:00.1")), Some(b("06:00.0")));
    assert_eq!(g.physical_of(b("02:01.0")), None);
    let described: Vec<_> = g.describe().collect();
    assert_eq!(
        described,
        vec![
            (b("00:01.0"), 0, b("01:00.0")),
            (b("00:02.0"), 0, b("05:00.0")),
            (b("00:02.0"), 1, b("06:00.0")),
            (b("00:03.0"), 0, b("07:00.0")),
            (b("00:03.0"), 1, b("07:00.1")),
        ]
    );
    // Every register of every function and root port, at every width:
    // no misaligned or out-of-range physical access, odd widths masked.
    for (bus, func) in [(0u8, 0u8), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)] {
        let dev = if bus == 0 { 1 } else { 0 };
        for width in [1u16, 2, 4] {
            for reg in (0..0x1000u16).step_by(width as usize) {
                let v = g.config_read(fab, off(bus, dev, func, reg), width);
                assert!(width == 4 || v < 1 << (8 * width));
            }
        }
    }
    assert_eq!(fab.bad_accesses(), 0);
    // Reprogramming the bus numbers moves the functions.
    let mut e = Effects::new();
    g.config_write(fab, off(0, 1, 0, PRIMARY_BUS), 4, 0x0009_0900, &mut e);
    assert_eq!(g.config_read(fab, off(9, 0, 0, 0), 4), 0x0010_1b36);
    assert_eq!(g.config_read(fab, off(1, 0, 0, 0), 4), u32::MAX);
    assert_eq!(fab.bad_accesses(), 0);
}

#[test]
fn capabilities_are_filtered() {
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e().af_flr(true).sriov(4, 0x10ca)),
        )],
    );
    let mut topo = track(&mut fab);
    let all = fab.present_functions();
    hwdom_programs_bars(&mut fab, &all);
    let mut own = Ownership::new();
    let units = own
        .assign(&mut topo, &mut fab, 1, &[b("01:00.0")], false)
        .unwrap();
    let mut g = GuestBus::new(&units, &topo, &mut fab, layout()).unwrap();
    program_root_ports(&mut g, &mut fab);
    let caps = guest_caps(&mut g, &mut fab, 1, 0);
    let ids: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(
        ids,
        vec![CAP_ID_PM, CAP_ID_MSI, CAP_ID_PCIE, CAP_ID_MSIX, CAP_ID_AF]
    );
    // Extended space: only a virtual AER at 0x100, the last one; SR-IOV,
    // ARI and the physical AER's own offset read 0 beyond it.
    let h = g.config_read(&mut fab, off(1, 0, 0, 0x100), 4);
    assert_eq!((h & 0xffff, h >> 20), (EXT_CAP_ID_AER as u32, 0));
    for reg in (0x130..0x1000).step_by(4) {
        assert_eq!(g.config_read(&mut fab, off(1, 0, 0, reg), 4), 0, "{reg:#x}");
    }
    // The physical device does have SR-IOV: the guest never sees it.
    assert!(
        pci::caps::find_ext_cap(&mut fab, b("01:00.0"), EXT_CAP_ID_SRIOV)
            .unwrap()
            .is_some()
    );
    // Virtual AER is storage with RW1C status.
    let sev = g.config_read(&mut fab, off(1, 0, 0, 0x100 + AER_UNCOR_SEVER), 4);
    assert_eq!(sev, 0x0046_2030);
    let mut e = Effects::new();
    g.config_write(
        &mut fab,
        off(1, 0, 0, 0x100 + AER_UNCOR_MASK),
        4,
        u32::MAX,
        &mut e,
    );
    assert_eq!(
        g.config_read(&mut fab, off(1, 0, 0, 0x100 + AER_UNCOR_MASK), 4),
        0x07ff_f030
    );
    assert_eq!(
        g.virtual_aer(b("01:00.0"), AER_UNCOR_MASK),
        Some(0x07ff_f030)
    );
    // AF FLR: effect, reads 0.
    let af = caps[4].1;
    g.config_write(&mut fab, off(1, 0, 0, af + AF_CTRL), 1, 1, &mut e);
    assert_eq!(
        effects_of(&e),
        vec![Effect::FunctionLevelReset {
            physical: b("01:00.0")
        }]
    );
    assert_eq!(g.config_read(&mut fab, off(1, 0, 0, af + AF_CTRL), 1), 0);
    // MSI: shadowed; the physical MSI capability is untouched.
    let msi = caps[1].1;
    let phys_msi: Vec<u32> = (0..4)
        .map(|i| fab.read32(b("01:00.0"), msi + 4 * i))
        .collect();
    e.clear();
    g.config_write(&mut fab, off(1, 0, 0, msi + 4), 4, 0x0800_0040, &mut e);
    g.config_write(&mut fab, off(1, 0, 0, msi + 8), 4, 0, &mut e);
    g.config_write(&mut fab, off(1, 0, 0, msi + 12), 2, 0x55, &mut e);
    g.config_write(&mut fab, off(1, 0, 0, msi + 2), 2, 1, &mut e);
    assert_eq!(
        effects_of(&e),
        vec![Effect::MsiControl {
            physical: b("01:00.0"),
            enabled: true
        }]
    );
    assert_eq!(
        g.config_read(&mut fab, off(1, 0, 0, msi + 4), 4),
        0x0800_0040
    );
    assert_eq!(
        g.config_read(&mut fab, off(1, 0, 0, msi + 2), 2) & 0x81,
        0x81
    );
    let now: Vec<u32> = (0..4)
        .map(|i| fab.read32(b("01:00.0"), msi + 4 * i))
        .collect();
    assert_eq!(now, phys_msi);
    // PM power state is virtual: the device stays in D0.
    let pm = caps[0].1;
    g.config_write(&mut fab, off(1, 0, 0, pm + PM_CTRL), 2, 3, &mut e);
    assert_eq!(
        g.config_read(&mut fab, off(1, 0, 0, pm + PM_CTRL), 2) & 3,
        3
    );
    assert_eq!(fab.read16(b("01:00.0"), pm + PM_CTRL) & 3, 0);
    assert_eq!(fab.bad_accesses(), 0);
}

/// Sizes a BAR like Linux: write all-ones, read back, restore.
fn size_bar(g: &mut GuestBus, fab: &mut Fabric, o: u64) -> u32 {
    let mut e = Effects::new();
    let orig = g.config_read(fab, o, 4);
    g.config_write(fab, o, 4, u32::MAX, &mut e);
    let rb = g.config_read(fab, o, 4);
    g.config_write(fab, o, 4, orig, &mut e);
    assert!(e.is_empty(), "decoding is off: {e:?}");
    rb
}

fn phys_bar(fab: &mut Fabric, bdf: Bdf, i: u16) -> u64 {
    let lo = fab.read32(bdf, BAR0 + 4 * i);
    let hi = if lo & 6 == 4 {
        fab.read32(bdf, BAR0 + 4 * i + 4)
    } else {
        0
    };
    ((hi as u64) << 32) | (lo & !0xf) as u64
}

#[test]
fn bars_size_program_and_map() {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let nvme = off(1, 0, 0, 0);
    let e1000e = off(2, 0, 0, 0);
    // Sizing keeps the physical flag bits: 64-bit nvme BAR0 16K, e1000e
    // BARs 128K, 128K, I/O 32, 16K.
    assert_eq!(
        g.config_read(fab, nvme + 0x10, 4),
        0x4,
        "64-bit flag before sizing"
    );
    assert_eq!(size_bar(&mut g, fab, nvme + 0x10), 0xffff_c004);
    assert_eq!(size_bar(&mut g, fab, nvme + 0x14), 0xffff_ffff);
    assert_eq!(size_bar(&mut g, fab, e1000e + 0x10), 0xfffe_0000);
    assert_eq!(size_bar(&mut g, fab, e1000e + 0x14), 0xfffe_0000);
    assert_eq!(size_bar(&mut g, fab, e1000e + 0x18), 0xffff_ffe1);
    assert_eq!(size_bar(&mut g, fab, e1000e + 0x1c), 0xffff_c000);
    assert_eq!(size_bar(&mut g, fab, e1000e + 0x20), 0);
    // Physical BARs never moved.
    let pa_nvme = phys_bar(fab, b("01:00.0"), 0);
    let pa_e = [0, 1, 3].map(|i| phys_bar(fab, b("05:00.0"), i));
    assert_ne!(pa_nvme, 0);

    // Program: nvme BAR0 64-bit in mem64, e1000e BARs in mem32.
    let mut e = Effects::new();
    g.config_write(fab, nvme + 0x10, 4, 0x0000_0000, &mut e);
    g.config_write(fab, nvme + 0x14, 4, 0x80, &mut e);
    assert_eq!(g.config_read(fab, nvme + 0x10, 4), 0x4);
    for (i, a) in [
        (0u64, 0x1000_0000u32),
        (1, 0x1002_0000),
        (2, 0x100),
        (3, 0x1004_0000),
    ] {
        g.config_write(fab, e1000e + 0x10 + 4 * i, 4, a, &mut e);
    }
    assert_eq!(g.config_read(fab, e1000e + 0x18, 4), 0x101, "I/O flag kept");
    assert!(e.is_empty());

    // Memory on: the whole BAR but the MSI-X page (table and PBA share the
    // first page of nvme BAR0).
    g.config_write(
        fab,
        nvme + COMMAND as u64,
        2,
        (COMMAND_MEMORY | COMMAND_BUS_MASTER) as u32,
        &mut e,
    );
    assert_eq!(
        effects_of(&e),
        vec![
            Effect::TrapMsix {
                ipa: 0x80_0000_0000,
                size: 0x1000
            },
            Effect::Map {
                ipa: 0x80_0000_1000,
                pa: pa_nvme + 0x1000,
                size: 0x3000
            },
        ]
    );
    // Bus Master reaches the device; Memory stays on physically.
    assert_ne!(w.fab.read16(b("01:00.0"), COMMAND) & COMMAND_BUS_MASTER, 0);
    let fab = &mut w.fab;
    e.clear();
    g.config_write(
        fab,
        e1000e + COMMAND as u64,
        2,
        (COMMAND_MEMORY | COMMAND_IO) as u32,
        &mut e,
    );
    assert_eq!(
        effects_of(&e),
        vec![
            Effect::Map {
                ipa: 0x1000_0000,
                pa: pa_e[0],
                size: 0x20000
            },
            Effect::Map {
                ipa: 0x1002_0000,
                pa: pa_e[1],
                size: 0x20000
            },
            Effect::TrapMsix {
                ipa: 0x1004_0000,
                size: 0x1000
            },
            Effect::Map {
                ipa: 0x1004_1000,
                pa: pa_e[2] + 0x1000,
                size: 0x3000
            },
        ]
    );
    // Rewriting Command with the same bits changes nothing.
    e.clear();
    g.config_write(
        fab,
        e1000e + COMMAND as u64,
        2,
        (COMMAND_MEMORY | COMMAND_IO) as u32,
        &mut e,
    );
    assert!(e.is_empty());
    // Moving a BAR while decoding: unmap the old place, map the new.
    g.config_write(fab, e1000e + 0x14, 4, 0x1010_0000, &mut e);
    assert_eq!(
        effects_of(&e),
        vec![
            Effect::Unmap {
                ipa: 0x1002_0000,
                size: 0x20000
            },
            Effect::Map {
                ipa: 0x1010_0000,
                pa: pa_e[1],
                size: 0x20000
            },
        ]
    );
    // Memory off: everything unmapped.
    e.clear();
    g.config_write(fab, e1000e + COMMAND as u64, 2, 0, &mut e);
    assert_eq!(
        effects_of(&e),
        vec![
            Effect::Unmap {
                ipa: 0x1000_0000,
                size: 0x20000
            },
            Effect::Unmap {
                ipa: 0x1010_0000,
                size: 0x20000
            },
            Effect::Unmap {
                ipa: 0x1004_0000,
                size: 0x4000
            },
        ]
    );
    // A stopping guest's DMA stops.
    assert_ne!(fab.read16(b("01:00.0"), COMMAND) & COMMAND_BUS_MASTER, 0);
    g.quiesce(fab);
    assert_eq!(fab.read16(b("01:00.0"), COMMAND) & COMMAND_BUS_MASTER, 0);
    // The physical device still decodes at the hwdom's addresses.
    assert_ne!(fab.read16(b("05:00.0"), COMMAND) & COMMAND_MEMORY, 0);
    assert_eq!(phys_bar(fab, b("05:00.0"), 1), pa_e[1]);
    assert_eq!(fab.bad_accesses(), 0);
}

#[test]
fn partial_accesses_behave_like_byte_lanes() {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let e1000e = off(2, 0, 0, 0);
    let mut e = Effects::new();
    // A byte in the middle of BAR0: only that lane changes, under the mask.
    g.config_write(fab, e1000e + 0x10, 4, 0x1000_0000, &mut e);
    g.config_write(fab, e1000e + 0x12, 1, 0xff, &mut e);
    assert_eq!(g.config_read(fab, e1000e + 0x10, 4), 0x10fe_0000);
    assert_eq!(g.config_read(fab, e1000e + 0x12, 2), 0x10fe);
    assert_eq!(g.config_read(fab, e1000e + 0x13, 1), 0x10);
    // 16-bit write to the upper half of the I/O BAR keeps the flag.
    g.config_write(fab, e1000e + 0x1a, 2, 0xffff, &mut e);
    assert_eq!(g.config_read(fab, e1000e + 0x18, 4), 0xffff_0001);
    // Command's upper byte (INTx Disable) leaves Memory alone.
    g.config_write(fab, e1000e + 0x04, 1, COMMAND_MEMORY as u32, &mut e);
    g.config_write(fab, e1000e + 0x05, 1, 0x04, &mut e);
    assert_eq!(g.config_read(fab, e1000e + 0x04, 2), 0x0402);
    assert_eq!(g.virtual_command(b("05:00.0")), Some(0x0402));
    assert_eq!(g.virtual_command(b("02:00.0")), None);
    // A 32-bit write over Command and Status: W1C status bits written as 1
    // reach hardware only as W1C; Command takes its lanes.
    g.config_write(fab, e1000e + 0x04, 4, 0xffff_0000, &mut e);
    assert_eq!(g.config_read(fab, e1000e + 0x04, 2), 0);
    assert_eq!(
        g.config_read(fab, e1000e + 0x06, 2),
        fab.read16(b("05:00.0"), STATUS) as u32
    );
    // Misaligned or odd widths: all-ones, writes ignored.
    assert_eq!(g.config_read(fab, e1000e + 0x11, 2), 0xffff);
    assert_eq!(g.config_read(fab, e1000e + 0x10, 3), 0xff_ffff);
    assert_eq!(g.config_read(fab, e1000e + 0x12, 4), u32::MAX);
    let before = g.config_read(fab, e1000e + 0x10, 4);
    g.config_write(fab, e1000e + 0x11, 2, 0, &mut e);
    g.config_write(fab, e1000e + 0x10, 8, 0, &mut e);
    assert_eq!(g.config_read(fab, e1000e + 0x10, 4), before);
    // Root port: byte writes to bus numbers.
    g.config_write(fab, off(0, 2, 0, SUBORDINATE_BUS), 1, 5, &mut e);
    assert_eq!(
        g.config_read(fab, off(0, 2, 0, PRIMARY_BUS), 4),
        0x0005_0200
    );
    assert_eq!(fab.bad_accesses(), 0);
}

#[test]
fn hostile_bar_placements_are_refused() {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let e1000e = off(2, 0, 0, 0);
    let nvme = off(1, 0, 0, 0);
    let mut e = Effects::new();
    g.config_write(fab, nvme + 0x10, 4, 0x1800_0000, &mut e);
    g.config_write(fab, nvme + 0x14, 4, 0, &mut e);
    g.config_write(fab, nvme + 4, 2, COMMAND_MEMORY as u32, &mut e);
    assert_eq!(e.len(), 2, "nvme mapped in mem32: {e:?}");
    let cases: [(u32, BarRefusal); 4] = [
        (RAM.0 as u32, BarRefusal::OutsideWindows),
        (ECAM as u32 + 0x20000, BarRefusal::OverlapsEcam),
        (
            UART.0 as u32,
            BarRefusal::OverlapsForbidden {
                base: UART.0,
                size: UART.1,
            },
        ),
        (
            0x1800_0000,
            BarRefusal::OverlapsBar {
                vbdf: b("01:00.0"),
                bar: 0,
            },
        ),
    ];
    g.config_write(fab, e1000e + 4, 2, COMMAND_MEMORY as u32, &mut e);
    for (addr, reason) in cases {
        e.clear();
        g.config_write(fab, e1000e + 0x10, 4, addr, &mut e);
        let got = effects_of(&e);
        assert!(
            got.iter()
                .all(|x| !matches!(x, Effect::Map { .. } | Effect::TrapMsix { .. })),
            "{got:?}"
        );
        assert!(
            got.contains(&Effect::BarRefused {
                vbdf: b("02:00.0"),
                bar: 0,
                addr: addr as u64,
                reason
            }),
            "{addr:#x}: {got:?}"
        );
    }
    // The last refusal was the overlap with nvme's BAR. Once nvme's BAR
    // moves away, writing the same address again maps it.
    e.clear();
    g.config_write(fab, nvme + 0x10, 4, 0x1900_0000, &mut e);
    assert!(matches!(
        effects_of(&e).as_slice(),
        [
            Effect::Unmap { .. },
            Effect::TrapMsix { .. },
            Effect::Map { .. }
        ]
    ));
    e.clear();
    g.config_write(fab, e1000e + 4, 2, COMMAND_MEMORY as u32, &mut e);
    assert!(e.is_empty(), "a Command rewrite does not repeat refusals");
    g.config_write(fab, e1000e + 0x10, 4, 0x1800_0000, &mut e);
    assert!(matches!(
        effects_of(&e).as_slice(),
        [Effect::Map {
            ipa: 0x1800_0000,
            size: 0x20000,
            ..
        }]
    ));
    e.clear();
    g.config_write(fab, e1000e + 0x10, 4, 0x1800_0000, &mut e);
    assert!(e.is_empty(), "rewriting a mapped BAR changes nothing");
    // Sizing with decoding on: the all-ones address is refused, not mapped.
    e.clear();
    g.config_write(fab, e1000e + 0x14, 4, u32::MAX, &mut e);
    assert!(matches!(
        effects_of(&e).as_slice(),
        [Effect::BarRefused {
            bar: 1,
            addr: 0xfffe_0000,
            ..
        }]
    ));
    // The ROM is never mapped. nvme has none; the sim models none either,
    // so the register reads 0 and ignores writes.
    g.config_write(fab, e1000e + ROM_BAR as u64, 4, u32::MAX, &mut e);
    assert_eq!(g.config_read(fab, e1000e + ROM_BAR as u64, 4), 0);
}

#[test]
fn msix_table_is_shadowed_and_pages_trapped() {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let nvme = off(1, 0, 0, 0);
    let mut e = Effects::new();
    g.config_write(fab, nvme + 0x10, 4, 0, &mut e);
    g.config_write(fab, nvme + 0x14, 4, 0x80, &mut e);
    g.config_write(fab, nvme + 4, 2, COMMAND_MEMORY as u32, &mut e);
    let base = 0x80_0000_0000u64;
    let phys = b("01:00.0");
    let before: Vec<_> = (0..65).map(|i| fab.msix_entry(phys, i).unwrap()).collect();
    // Enable MSI-X (virtual) and program entry 3 like Linux: 32-bit and
    // 64-bit writes of address and data, then unmask.
    let caps = guest_caps(&mut g, fab, 1, 0);
    let msix = caps.iter().find(|c| c.0 == CAP_ID_MSIX).unwrap().1;
    e.clear();
    g.config_write(fab, nvme + msix as u64 + 2, 2, 0xc000, &mut e);
    assert_eq!(
        effects_of(&e),
        vec![Effect::MsixControl {
            physical: phys,
            enabled: true,
            function_mask: true
        }]
    );
    assert_eq!(g.config_read(fab, nvme + msix as u64 + 2, 2), 0xc000 | 64);
    let entry = base + 3 * 16;
    e.clear();
    assert!(g.msix_write(fab, entry, 8, 0x0000_0000_0800_0040, &mut e));
    assert!(g.msix_write(fab, entry + 8, 4, 0x21, &mut e));
    assert!(g.msix_write(fab, entry + 12, 4, 0xffff_fffe, &mut e));
    assert_eq!(e.len(), 3);
    assert_eq!(g.msix_read(fab, entry, 4), Some(0x0800_0040));
    assert_eq!(g.msix_read(fab, entry, 8), Some(0x0800_0040));
    assert_eq!(g.msix_read(fab, entry + 8, 2), Some(0x21));
    assert_eq!(
        g.msix_read(fab, entry + 12, 4),
        Some(0),
        "only the mask bit is writable"
    );
    assert_eq!(g.msix_entry(phys, 3), Some([0x0800_0040, 0, 0x21, 0]));
    // A byte write into the middle of the address.
    assert!(g.msix_write(fab, entry + 1, 1, 0xab, &mut e));
    assert_eq!(g.msix_read(fab, entry, 4), Some(0x0800_ab40));
    // The physical table is untouched.
    let after: Vec<_> = (0..65).map(|i| fab.msix_entry(phys, i).unwrap()).collect();
    assert_eq!(before, after);
    // The PBA (offset 0x800 in the same page) reads from the device; writes
    // are dropped. Other registers in the page pass through.
    assert_eq!(g.msix_read(fab, base + 0x800, 8), Some(0));
    assert!(g.msix_write(fab, base + 0x800, 8, u64::MAX, &mut e));
    let pa = phys_bar(fab, phys, 0);
    assert_eq!(MemoryPort::read(fab, pa + 0x800, 8), 0);
    assert!(g.msix_write(fab, base + 0xf00, 4, 0x1234_5678, &mut e));
    assert_eq!(MemoryPort::read(fab, pa + 0xf00, 4), 0x1234_5678);
    assert_eq!(g.msix_read(fab, base + 0xf00, 2), Some(0x5678));
    // Outside the trapped page, or before mapping: not ours.
    assert_eq!(g.msix_read(fab, base + 0x1000, 4), None);
    assert!(!g.msix_write(fab, base + 0x1000, 4, 0, &mut e));
    // Misaligned inside the page: all-ones, dropped.
    assert_eq!(g.msix_read(fab, entry + 2, 4), Some(0xffff_ffff));
    e.clear();
    g.config_write(fab, nvme + 4, 2, 0, &mut e);
    assert_eq!(g.msix_read(fab, entry, 4), None, "unmapped with Memory off");
}

/// What the shell does after a guest access: commit the MSI-X table of
/// every function an MSI-X effect names (hardware as it is: no reset runs).
fn commit_msix(g: &mut GuestBus, fab: &mut Fabric, e: &Effects) -> MsixCommit {
    let mut total = MsixCommit::default();
    for eff in e.iter() {
        if let Effect::MsixControl { physical, .. } | Effect::MsixEntry { physical, .. } = *eff {
            let c = g.msix_commit(fab, physical, true).unwrap();
            total.updated += c.updated;
            total.repaired += c.repaired;
        }
    }
    total
}

#[test]
fn msix_table_is_written_when_used_and_a_backdoor_reset_is_repaired() {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let nvme = off(1, 0, 0, 0);
    let phys = b("01:00.0");
    let mut e = Effects::new();
    g.config_write(fab, nvme + 0x10, 4, 0, &mut e);
    g.config_write(fab, nvme + 0x14, 4, 0x80, &mut e);
    g.config_write(fab, nvme + 4, 2, COMMAND_MEMORY as u32, &mut e);
    let base = 0x80_0000_0000u64;
    let caps = guest_caps(&mut g, fab, 1, 0);
    let msix = nvme + caps.iter().find(|c| c.0 == CAP_ID_MSIX).unwrap().1 as u64 + 2;
    let reset_entry = [0, 0, 0, MSIX_ENTRY_VECTOR_CTRL_MASKED];
    // Linux: Enable + Function Mask, program two vectors, unmask vector 0
    // only, clear the Function Mask.
    e.clear();
    g.config_write(fab, msix, 2, 0xc000, &mut e);
    for (i, data) in [(0u64, 0x40u64), (1, 0x41)] {
        assert!(g.msix_write(fab, base + 16 * i, 8, 0x0800_0040, &mut e));
        assert!(g.msix_write(fab, base + 16 * i + 8, 4, data, &mut e));
    }
    assert!(g.msix_write(fab, base + 12, 4, 0, &mut e));
    assert_eq!(commit_msix(&mut g, fab, &e), MsixCommit::default());
    assert_eq!(
        fab.msix_entry(phys, 0),
        Some(reset_entry),
        "function masked: unused"
    );
    e.clear();
    g.config_write(fab, msix, 2, 0x8000, &mut e);
    let c = commit_msix(&mut g, fab, &e);
    assert_eq!((c.updated, c.repaired), (1, 0));
    assert_eq!(fab.msix_entry(phys, 0), Some([0x0800_0040, 0, 0x40, 0]));
    assert_eq!(fab.msix_entry(phys, 1), Some(reset_entry), "still masked");
    assert_eq!(g.msix_programmed(phys, 0), Some([0x0800_0040, 0, 0x40, 0]));
    // Nothing changed: nothing written, nothing lost.
    e.clear();
    g.config_write(fab, msix, 2, 0x8000, &mut e);
    assert!(g.msix_write(fab, base + 12, 4, 0, &mut e));
    assert_eq!(commit_msix(&mut g, fab, &e), MsixCommit::default());

    // The device resets itself: its table is gone, the
    // hypervisor did not see it happen.
    assert!(fab.backdoor_msix_reset(phys));
    assert_eq!(fab.msix_entry(phys, 0), Some(reset_entry));
    // The guest unmasks vector 1: the loss is found, the table rewritten
    // from what the hypervisor wrote, and vector 1 written too.
    e.clear();
    assert!(g.msix_write(fab, base + 16 + 12, 4, 0, &mut e));
    let c = commit_msix(&mut g, fab, &e);
    assert_eq!((c.updated, c.repaired), (1, 65), "{c:?}");
    assert_eq!(fab.msix_entry(phys, 0), Some([0x0800_0040, 0, 0x40, 0]));
    assert_eq!(fab.msix_entry(phys, 1), Some([0x0800_0040, 0, 0x41, 0]));
    assert_eq!(fab.msix_entry(phys, 2), Some(reset_entry));
    // The guest masks vector 0 again: its physical mask bit follows.
    e.clear();
    assert!(g.msix_write(fab, base + 12, 4, 1, &mut e));
    assert_eq!(commit_msix(&mut g, fab, &e), MsixCommit::default());
    assert_eq!(fab.msix_entry(phys, 0), Some([0x0800_0040, 0, 0x40, 1]));

    // While a reset runs the shell commits without hardware: the record
    // changes (for the reset engine to restore), the device is untouched.
    assert!(g.msix_write(fab, base + 8, 4, 0x50, &mut e));
    assert!(g.msix_write(fab, base + 12, 4, 0, &mut e));
    let c = g.msix_commit(fab, phys, false).unwrap();
    assert_eq!((c.updated, c.repaired), (1, 0));
    assert_eq!(fab.msix_entry(phys, 0), Some([0x0800_0040, 0, 0x40, 1]));
    assert_eq!(g.msix_programmed(phys, 0), Some([0x0800_0040, 0, 0x50, 0]));
    // A reset the guest asks for (FLR) clears the record with the table.
    e.clear();
    let devctl = nvme + caps.iter().find(|c| c.0 == CAP_ID_PCIE).unwrap().1 as u64 + 8;
    g.config_write(fab, devctl, 2, PCIE_DEVCTL_BCR_FLR as u32, &mut e);
    assert_eq!(g.msix_programmed(phys, 0), None);
    assert_eq!(
        g.msix_commit(fab, b("03:00.0"), true),
        None,
        "not the guest's"
    );
}

#[test]
fn flr_and_sbr_are_effects_and_reset_the_virtual_state() {
    let (mut w, mut g, _) = guest();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let nvme = off(1, 0, 0, 0);
    let mut e = Effects::new();
    g.config_write(fab, nvme + 0x10, 4, 0, &mut e);
    g.config_write(fab, nvme + 0x14, 4, 0x80, &mut e);
    g.config_write(
        fab,
        nvme + 4,
        2,
        (COMMAND_MEMORY | COMMAND_BUS_MASTER) as u32,
        &mut e,
    );
    let caps = guest_caps(&mut g, fab, 1, 0);
    let pcie = caps.iter().find(|c| c.0 == CAP_ID_PCIE).unwrap().1 as u64;
    // Error reporting enables are virtual; payload bits read from hardware.
    e.clear();
    g.config_write(fab, nvme + pcie + 8, 2, 0x000f, &mut e);
    let phys_devctl = fab.read16(b("01:00.0"), pcie as u16 + 8);
    assert_eq!(phys_devctl & 0xf, 0);
    assert_eq!(
        g.config_read(fab, nvme + pcie + 8, 2),
        (phys_devctl & 0x7ff0) as u32 | 0xf
    );
    // Initiate FLR: effect, virtual state back to reset (unmapped), Bus
    // Master off on the device, bit reads 0.
    g.config_write(fab, nvme + pcie + 9, 1, 0x80, &mut e);
    assert_eq!(
        effects_of(&e),
        vec![
            Effect::FunctionLevelReset {
                physical: b("01:00.0")
            },
            Effect::Unmap {
                ipa: 0x80_0000_0000,
                size: 0x4000
            },
        ]
    );
    assert_eq!(g.config_read(fab, nvme + pcie + 8, 2) & 0x800f, 0);
    assert_eq!(g.config_read(fab, nvme + 4, 2), 0);
    assert_eq!(g.config_read(fab, nvme + 0x10, 4), 4);
    assert_eq!(fab.read16(b("01:00.0"), COMMAND) & COMMAND_BUS_MASTER, 0);
    // e1000e has no FLR: nothing happens.
    e.clear();
    g.config_write(fab, off(2, 0, 0, 0) + pcie + 9, 1, 0x80, &mut e);
    assert!(e.is_empty());
    // SBR on the switch unit's virtual root port: functions vanish while it
    // is held; the effect comes on release. The physical bridges never see it.
    let phys_bctl = fab.read16(b("00:03.0"), BRIDGE_CONTROL);
    g.config_write(
        fab,
        off(0, 2, 0, BRIDGE_CONTROL),
        2,
        BRIDGE_CONTROL_SBR as u32,
        &mut e,
    );
    assert_eq!(g.config_read(fab, off(2, 0, 0, 0), 4), u32::MAX);
    assert_eq!(
        g.config_read(fab, off(0, 2, 0, BRIDGE_CONTROL), 2),
        BRIDGE_CONTROL_SBR as u32
    );
    assert!(e.is_empty());
    g.config_write(fab, off(0, 2, 0, BRIDGE_CONTROL), 2, 0, &mut e);
    assert_eq!(effects_of(&e), vec![Effect::SecondaryBusReset { unit: 1 }]);
    assert_eq!(g.config_read(fab, off(2, 0, 0, 0), 4), 0x10d3_8086);
    assert_eq!(fab.read16(b("00:03.0"), BRIDGE_CONTROL), phys_bctl);
    assert_eq!(fab.read16(b("04:00.0"), BRIDGE_CONTROL), 0);
}

#[test]
fn expansion_rom_is_emulated_never_mapped() {
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e().rom(0x40000)),
        )],
    );
    let mut topo = track(&mut fab);
    let all = fab.present_functions();
    hwdom_programs_bars(&mut fab, &all);
    fab.write32(b("01:00.0"), ROM_BAR, 0x1800_0000);
    let mut own = Ownership::new();
    let units = own
        .assign(&mut topo, &mut fab, 1, &[b("01:00.0")], false)
        .unwrap();
    let mut g = GuestBus::new(&units, &topo, &mut fab, layout()).unwrap();
    program_root_ports(&mut g, &mut fab);
    let rom = off(1, 0, 0, ROM_BAR);
    let mut e = Effects::new();
    // Linux sizes with all-ones but the enable bit.
    assert_eq!(g.config_read(&mut fab, rom, 4), 0, "starts unprogrammed");
    g.config_write(&mut fab, rom, 4, !ROM_ENABLE, &mut e);
    assert_eq!(g.config_read(&mut fab, rom, 4), 0xfffc_0000);
    g.config_write(&mut fab, rom, 4, 0x1100_0000 | ROM_ENABLE, &mut e);
    assert_eq!(g.config_read(&mut fab, rom, 4), 0x1100_0001);
    assert!(e.is_empty(), "decoding off");
    g.config_write(
        &mut fab,
        off(1, 0, 0, COMMAND),
        2,
        COMMAND_MEMORY as u32,
        &mut e,
    );
    let refused = Effect::BarRefused {
        vbdf: b("01:00.0"),
        bar: ROM_INDEX,
        addr: 0x1100_0000,
        reason: BarRefusal::RomNotMapped,
    };
    assert!(effects_of(&e).contains(&refused), "{e:?}");
    assert!(
        effects_of(&e)
            .iter()
            .all(|x| !matches!(x, Effect::Map { ipa, .. } if *ipa == 0x1100_0000))
    );
    // Said once, not on every Command rewrite.
    e.clear();
    g.config_write(
        &mut fab,
        off(1, 0, 0, COMMAND),
        2,
        COMMAND_MEMORY as u32,
        &mut e,
    );
    assert!(e.is_empty());
    // The physical ROM BAR is the hwdom's, untouched.
    assert_eq!(fab.read32(b("01:00.0"), ROM_BAR), 0x1800_0000);
    // What the hardware domain must not reach any more.
    let mut bars: Vec<(u64, u64)> = g.physical_bars().collect();
    bars.sort_unstable();
    assert_eq!(
        bars,
        vec![
            (0x1000_0000, 0x20000),
            (0x1002_0000, 0x20000),
            (0x1004_0000, 0x4000),
            (0x1800_0000, 0x40000)
        ]
    );
}

#[test]
fn guest_bus_refuses_what_it_cannot_present() {
    let mut w = world();
    let units = vec![vec![b("01:00.0")]];
    let bridge = vec![vec![b("00:01.0")]];
    assert_eq!(
        GuestBus::new(&bridge, &w.topo, &mut w.fab, layout()).err(),
        Some(VpciError::IsBridge(b("00:01.0")))
    );
    let untracked = vec![vec![b("0a:00.0")]];
    assert_eq!(
        GuestBus::new(&untracked, &w.topo, &mut w.fab, layout()).err(),
        Some(VpciError::NotTracked(b("0a:00.0")))
    );
    let many: Vec<Vec<Bdf>> = (0..32).map(|_| units[0].clone()).collect();
    assert_eq!(
        GuestBus::new(&many, &w.topo, &mut w.fab, layout()).err(),
        Some(VpciError::TooManyUnits(32))
    );
    assert_eq!(
        GuestBus::new(&[vec![]], &w.topo, &mut w.fab, layout()).err(),
        Some(VpciError::UnitSize {
            unit: 0,
            functions: 0
        })
    );
    // A corrupt capability list.
    w.fab.poke(b("01:00.0"), CAP_PTR, &[0x3c]);
    assert!(matches!(
        GuestBus::new(&units, &w.topo, &mut w.fab, layout()),
        Err(VpciError::Capability { .. })
    ));
}

#[test]
fn pf_of_a_guest_vf_is_protected() {
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, Spec::endpoint(0x8086, 0x10c9).sriov(2, 0x10ca)),
        )],
    );
    let mut topo = track(&mut fab);
    let (pf, vf) = (b("01:00.0"), b("01:00.1"));
    assert!(topo.contains(vf));
    let mut own = Ownership::new();
    let units = own.assign(&mut topo, &mut fab, 1, &[vf], false).unwrap();
    assert_eq!(units, vec![vec![vf]]);
    assert!(own.is_protected(pf) && own.is_protected(b("00:01.0")));
    let f = topo.function(pf).unwrap();
    let (sriov, pcie) = (f.caps.sriov, f.caps.pcie as u16);
    let ctrl = fab.read16(pf, sriov + SRIOV_CTRL);
    assert_ne!(ctrl & SRIOV_CTRL_VFE, 0);
    let out = own.hwdom_apply(&mut fab, pf, sriov + SRIOV_CTRL, 2, Some(0));
    assert_eq!(out.refused, Some(Refusal::PfOfGuestVf));
    assert_eq!(fab.read16(pf, sriov + SRIOV_CTRL), ctrl);
    let out = own.hwdom_apply(&mut fab, pf, sriov + SRIOV_NUM_VF, 2, Some(0));
    assert_eq!(out.refused, Some(Refusal::PfOfGuestVf));
    let out = own.hwdom_apply(&mut fab, pf, pcie + PCIE_DEVCTL, 2, Some(0x8000));
    assert_eq!(out.refused, Some(Refusal::PfOfGuestVf));
    // VF ids read all-ones by design; its class code tells it is there.
    assert_ne!(fab.read32(vf, CLASS_REVISION), u32::MAX, "the VF is gone");
    // The PF's own registers stay the hwdom's: bus numbers etc. are not a
    // PF's, and its Command passes.
    let out = own.hwdom_apply(&mut fab, pf, COMMAND, 2, Some(COMMAND_MEMORY as u32));
    assert_eq!(out.refused, None);
    // The VF reads all-ones to the hwdom.
    assert_eq!(own.hwdom_apply(&mut fab, vf, 0, 4, None).value, u32::MAX);
    // Presenting VFs to a guest is not supported yet: a typed error.
    assert_eq!(
        GuestBus::new(&units, &topo, &mut fab, layout()).err(),
        Some(VpciError::VirtualFunction(vf))
    );
}

/// The MSI-X Table Offset and PBA Offset come from the device: a table or
/// PBA placed at or past the end of its BAR traps nothing and maps the
/// whole BAR, without an arithmetic overflow (a panic under overflow
/// checks, a wrapped trap size without).
#[test]
fn msix_table_past_the_end_of_its_bar_traps_nothing_and_does_not_overflow() {
    let mut w = world();
    let nvme = b("01:00.0");
    let cap = pci::caps::find_cap(&mut w.fab, nvme, CAP_ID_MSIX)
        .unwrap()
        .unwrap() as u16;
    // BAR0 (BIR 0) is 16 KiB: the table at 16 KiB, the PBA far beyond.
    assert!(w.fab.poke(nvme, cap + MSIX_TABLE, &0x4000u32.to_le_bytes()));
    assert!(
        w.fab
            .poke(nvme, cap + MSIX_PBA, &0xffff_f000u32.to_le_bytes())
    );
    let units = w
        .own
        .assign(&mut w.topo, &mut w.fab, 1, &[nvme], false)
        .unwrap();
    let mut g = GuestBus::new(&units, &w.topo, &mut w.fab, layout()).unwrap();
    let fab = &mut w.fab;
    program_root_ports(&mut g, fab);
    let o = off(1, 0, 0, 0);
    let mut e = Effects::new();
    g.config_write(fab, o + 0x10, 4, 0, &mut e);
    g.config_write(fab, o + 0x14, 4, 0x80, &mut e);
    g.config_write(fab, o + COMMAND as u64, 2, COMMAND_MEMORY as u32, &mut e);
    assert_eq!(
        effects_of(&e),
        vec![Effect::Map {
            ipa: 0x80_0000_0000,
            pa: phys_bar(fab, nvme, 0),
            size: 0x4000
        }]
    );
}
