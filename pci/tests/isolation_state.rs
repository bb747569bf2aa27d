//! Isolation that must survive what the hardware domain does after the
//! units were computed: ACS turned off on a port that decides a guest's
//! unit (or on one that decides it before the assignment), bus numbers
//! that claim a protected bridge's bus, VF routing ids that land on a
//! bridge's buses, and reports that would join a guest's unit.

mod common;

use common::{b, config, track};
use pci::regs::*;
use pci::sim::{ACS_ENABLED, ACS_QEMU, Fabric, Spec, devfn};
use pci::vpci::{AssignError, Owner, Ownership, Refusal, ReportError};
use pci::{Bdf, ConfigPort, ReportOutcome, Topology, TopologyError, UnitId};

/// 00:01.0 root port ── 01:00.0 switch up ─┬─ 02:00.0 down ── 03:00.0 nvme
///                                         └─ 02:01.0 down ── 04:00.0 e1000e
/// 00:02.0 root port ── 05:00.0 e1000e
/// Every port with QEMU's ACS (the tracker enables it): each endpoint its own unit.
fn switch_fabric() -> Fabric {
    let switch = Spec::qemu_x3130_upstream()
        .child(
            0,
            0,
            Spec::qemu_x3130_downstream()
                .acs(Some(ACS_QEMU))
                .child(0, 0, Spec::qemu_nvme()),
        )
        .child(
            1,
            0,
            Spec::qemu_x3130_downstream()
                .acs(Some(ACS_QEMU))
                .child(0, 0, Spec::qemu_e1000e()),
        );
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), Spec::qemu_root_port().child(0, 0, switch)),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
            ),
        ],
    )
}

fn guest_has_nvme(fab: &mut Fabric) -> (Topology, Ownership) {
    let mut topo = track(fab);
    let mut own = Ownership::new();
    own.assign(&mut topo, fab, 1, &[b("03:00.0")], false)
        .unwrap();
    (topo, own)
}

/// Turning ACS off on the sibling downstream port would make the switch one
/// unit (rule 4), the guest's nvme with the hardware domain's e1000e: the
/// ACS Control of the sibling is kept.
#[test]
fn acs_of_a_sibling_downstream_port_is_protected() {
    let mut fab = switch_fabric();
    let (topo, own) = guest_has_nvme(&mut fab);
    let sibling = b("02:01.0");
    let acs = topo.function(sibling).unwrap().caps.acs;
    let before = fab.read16(sibling, acs + ACS_CTRL);
    assert_ne!(before & ACS_ISOLATION, 0);
    let out = own.hwdom_apply(&mut fab, sibling, acs + ACS_CTRL, 2, Some(0));
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
    assert_eq!(fab.read16(sibling, acs + ACS_CTRL), before);
    // A dword write over the capability register and the control, too.
    let out = own.hwdom_apply(&mut fab, sibling, acs + ACS_CAP, 4, Some(0));
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
    assert_eq!(fab.read16(sibling, acs + ACS_CTRL), before);
    // The other root port's ACS decides nothing about the guest's unit.
    let rp = b("00:02.0");
    let acs = topo.function(rp).unwrap().caps.acs;
    let out = own.hwdom_apply(&mut fab, rp, acs + ACS_CTRL, 2, Some(0));
    assert_eq!(out.refused, None);
    assert_eq!(fab.read16(rp, acs + ACS_CTRL), 0);
}

/// A function of the guest's multi-function device that the hardware
/// domain keeps (both isolated by ACS) may not turn its ACS off either.
#[test]
fn acs_of_a_slot_sibling_is_protected() {
    let ep = |d| Spec::endpoint(0x1234, d).acs(Some(ACS_ENABLED));
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, ep(1)).child(0, 1, ep(2)),
        )],
    );
    let mut topo = track(&mut fab);
    let mut own = Ownership::new();
    own.assign(&mut topo, &mut fab, 1, &[b("01:00.0")], false)
        .unwrap();
    let sibling = b("01:00.1");
    let acs = topo.function(sibling).unwrap().caps.acs;
    let before = fab.read16(sibling, acs + ACS_CTRL);
    let out = own.hwdom_apply(&mut fab, sibling, acs + ACS_CTRL, 2, Some(0));
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
    assert_eq!(fab.read16(sibling, acs + ACS_CTRL), before);
}

/// A bridge only sees the config requests its ancestors forward: the
/// switch below the hardware domain's root port 00:01.0 (not tracked) may
/// keep a range over the guest's bus 5 while 00:01.0 routes only 1..=4, and
/// 00:01.0 may move to buses far from 5 (the switch follows it there). The
/// root port's own range is what must not take bus 5.
#[test]
fn bus_numbers_are_judged_by_the_written_bridge_range() {
    let mut fab = switch_fabric();
    let switch = [b("01:00.0"), b("02:00.0"), b("02:01.0")];
    let mut topo = track_but(
        &mut fab,
        &[&switch[..], &[b("03:00.0"), b("04:00.0")]].concat(),
    );
    let up = switch[0];
    fab.write32(up, PRIMARY_BUS, 0x00_ea_02_01);
    let mut own = Ownership::new();
    own.assign(&mut topo, &mut fab, 1, &[b("05:00.0")], false)
        .unwrap();
    let rp = b("00:01.0");
    let out = own.hwdom_apply(&mut fab, rp, PRIMARY_BUS, 4, Some(0x00_dd_ba_00));
    assert_eq!(out.refused, None);
    assert_eq!(fab.read32(b("ba:00.0"), PRIMARY_BUS), 0x00_ea_02_01);
    assert_eq!(fab.read16(b("05:00.0"), VENDOR_ID), 0x8086);
    for v in [0x00_dd_05_00, 0x00_dd_01_00] {
        let out = own.hwdom_apply(&mut fab, rp, PRIMARY_BUS, 4, Some(v));
        assert_eq!(out.refused, Some(Refusal::BusNumbersOverlapGuest));
    }
    assert_eq!(fab.read32(rp, PRIMARY_BUS), 0x00_dd_ba_00);
}

/// A D3hot→D0 transition resets a function without No_Soft_Reset, ACS
/// Control included: the power state of the sibling downstream port is kept
/// too, whether it was put in D3hot before the assignment or not.
#[test]
fn power_state_of_a_sibling_downstream_port_is_protected() {
    let mut fab = switch_fabric();
    let sibling = b("02:01.0");
    let mut topo = track(&mut fab);
    let pm = topo.function(sibling).unwrap().caps.pm as u16;
    assert_ne!(pm, 0);
    fab.write16(sibling, pm + PM_CTRL, PM_CTRL_D3HOT);
    let mut own = Ownership::new();
    own.assign(&mut topo, &mut fab, 1, &[b("03:00.0")], false)
        .unwrap();
    let acs = topo.function(sibling).unwrap().caps.acs;
    let before = fab.read16(sibling, acs + ACS_CTRL);
    assert_ne!(before & ACS_ISOLATION, 0);
    let out = own.hwdom_apply(&mut fab, sibling, pm + PM_CTRL, 4, Some(0));
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
    assert_eq!(
        fab.read16(sibling, pm + PM_CTRL) & PM_CTRL_STATE_MASK,
        PM_CTRL_D3HOT
    );
    assert_eq!(fab.read16(sibling, acs + ACS_CTRL), before);
}

/// An FLR of a function of the guest's multi-function device that the
/// hardware domain keeps would clear its ACS Control: refused.
#[test]
fn function_reset_of_a_slot_sibling_is_refused() {
    let ep = |d| Spec::endpoint(0x1234, d).acs(Some(ACS_ENABLED)).flr(true);
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, ep(1)).child(0, 1, ep(2)),
        )],
    );
    let mut topo = track(&mut fab);
    let mut own = Ownership::new();
    own.assign(&mut topo, &mut fab, 1, &[b("01:00.0")], false)
        .unwrap();
    let sibling = b("01:00.1");
    let f = topo.function(sibling).unwrap();
    let (acs, pcie) = (f.caps.acs, f.caps.pcie as u16);
    let before = fab.read16(sibling, acs + ACS_CTRL);
    let devctl = fab.read16(sibling, pcie + PCIE_DEVCTL);
    let out = own.hwdom_apply(
        &mut fab,
        sibling,
        pcie + PCIE_DEVCTL,
        2,
        Some((devctl | PCIE_DEVCTL_BCR_FLR) as u32),
    );
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
    assert_eq!(fab.read16(sibling, acs + ACS_CTRL), before);
}

/// The hardware domain's root port may not take the bus of the switch
/// (upstream port on bus 1, downstream port on bus 2) above the guest's
/// nvme on bus 3: config requests for those buses would reach its own side.
#[test]
fn bus_numbers_may_not_claim_a_protected_bridge_bus() {
    let mut fab = switch_fabric();
    let (_topo, own) = guest_has_nvme(&mut fab);
    let rp = b("00:02.0");
    let before = fab.read32(rp, PRIMARY_BUS);
    for (sec, sub) in [(2u32, 2u32), (1, 1), (2, 5), (5, 5)] {
        let v = sec << 8 | sub << 16;
        let out = own.hwdom_apply(&mut fab, rp, PRIMARY_BUS, 4, Some(v));
        if sec == 5 {
            // Bus 5 is its own: nothing protected there.
            assert_eq!(out.refused, None);
            fab.write32(rp, PRIMARY_BUS, before);
            continue;
        }
        assert_eq!(
            out.refused,
            Some(Refusal::BusNumbersOverlapGuest),
            "{sec}..{sub}"
        );
        assert_eq!(fab.read32(rp, PRIMARY_BUS), before);
        // Byte writes of secondary, then subordinate: the first one claims.
        let out = own.hwdom_apply(&mut fab, rp, SECONDARY_BUS, 1, Some(sec));
        assert_eq!(out.refused, Some(Refusal::BusNumbersOverlapGuest));
    }
    assert_eq!(fab.read32(rp, PRIMARY_BUS), before);
    assert_eq!(fab.read16(b("03:00.0"), VENDOR_ID), 0x1b36);
    // The sibling downstream port, inside the switch's range, rewrites its
    // own bus numbers (bus 4): that claims nothing protected.
    let sibling = b("02:01.0");
    let own_buses = fab.read32(sibling, PRIMARY_BUS);
    let out = own.hwdom_apply(&mut fab, sibling, PRIMARY_BUS, 4, Some(own_buses));
    assert_eq!(out.refused, None);
    // But it may not take the guest's side of the switch (bus 3).
    let v = (own_buses & 0xff) | 3 << 8 | 4 << 16;
    let out = own.hwdom_apply(&mut fab, sibling, PRIMARY_BUS, 4, Some(v));
    assert_eq!(out.refused, Some(Refusal::BusNumbersOverlapGuest));
}

/// 00:01.0 root port without ACS, secondary bus 1, nothing below;
/// 00:02.0 a PF whose first VF offset puts its VFs on bus 1.
fn vf_on_bridge_bus_fabric() -> Fabric {
    let mut pf = Spec::endpoint(0x8086, 0x10c9).sriov(2, 0x10ca);
    if let Some(s) = pf.f.sriov.as_mut() {
        // rid 00:02.0 is 0x10; 0x10 + 0xf0 = 0x100, i.e. 01:00.0.
        s.first_vf_offset = 0xf0;
    }
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), Spec::qemu_root_port().acs(None)),
            (devfn(2, 0), pf),
        ],
    )
}

fn units_agree(t: &mut Topology) {
    let reference = t.compute_units();
    let fns: Vec<Bdf> = t.functions().map(|(b, _)| b).collect();
    for f in fns {
        assert_eq!(t.unit_of(f), reference.unit_of(f).map(|u| u.id), "{f}");
    }
    assert_eq!(t.units(), &reference);
}

/// Whatever the order, the PF whose VFs land on the root port's secondary
/// bus and the root port are never both tracked, and the incremental units
/// equal the ones computed from scratch.
#[test]
fn vf_routing_ids_on_a_bridge_bus_are_refused() {
    let (rp, pf, vf) = (b("00:01.0"), b("00:02.0"), b("01:00.0"));
    // The PF and its VFs first, the root port last.
    let mut fab = vf_on_bridge_bus_fabric();
    let found = fab.enumerate();
    assert!(found.contains(&vf) && found.contains(&b("01:00.1")));
    let mut t = Topology::new(config(&[(0, 0)]));
    t.report_add(pf, &mut fab).unwrap();
    t.report_add(vf, &mut fab).unwrap();
    t.report_add(b("01:00.1"), &mut fab).unwrap();
    let r = t.report_add(rp, &mut fab);
    assert_eq!(r, Err(TopologyError::VfBusCollision { bdf: rp, other: pf }));
    units_agree(&mut t);
    // The root port first: the PF is refused, and so its VFs never attach.
    let mut fab = vf_on_bridge_bus_fabric();
    fab.enumerate();
    let mut t = Topology::new(config(&[(0, 0)]));
    t.report_add(rp, &mut fab).unwrap();
    assert_eq!(
        t.report_add(pf, &mut fab),
        Err(TopologyError::VfBusCollision { bdf: pf, other: rp })
    );
    assert!(
        t.report_add(vf, &mut fab)
            .is_ok_and(|o| o == pci::ReportOutcome::Orphaned)
    );
    units_agree(&mut t);
    t.check_invariants().unwrap();
}

/// VFs on a bus of their own inside the PF's parent range (more VFs than
/// one bus holds) belong below the PF's parent: the incremental units join
/// them to a root port without ACS like the computation from scratch does.
#[test]
fn vfs_on_the_next_bus_belong_to_the_pfs_parent() {
    let mut pf = Spec::endpoint(0x8086, 0x10c9).sriov(2, 0x10ca);
    if let Some(s) = pf.f.sriov.as_mut() {
        // rid 01:00.0 is 0x100; VFs at 0x200 = 02:00.0.
        s.first_vf_offset = 0x100;
    }
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().acs(None).child(0, 0, pf),
        )],
    );
    fab.enumerate();
    // Firmware reserved bus 2 for the VFs.
    fab.write8(b("00:01.0"), SUBORDINATE_BUS, 2);
    let mut t = Topology::new(config(&[(0, 0)]));
    for f in ["00:01.0", "01:00.0", "02:00.0", "02:00.1"] {
        t.report_add(b(f), &mut fab).unwrap();
    }
    assert_eq!(t.parent_bridge(b("02:00.0")), Some(b("00:01.0")));
    units_agree(&mut t);
    assert_eq!(t.unit_members(b("02:00.1")).len(), 4);
    // VFs past the parent's range are refused with their PF.
    fab.write8(b("00:01.0"), SUBORDINATE_BUS, 1);
    let mut t = Topology::new(config(&[(0, 0)]));
    t.report_add(b("00:01.0"), &mut fab).unwrap();
    assert_eq!(
        t.report_add(b("01:00.0"), &mut fab),
        Err(TopologyError::VfBusCollision {
            bdf: b("01:00.0"),
            other: b("00:01.0")
        })
    );
}

/// Config space of a function, to check that something left it alone.
fn config_dump(fab: &mut Fabric, f: Bdf) -> Vec<u32> {
    (0..0x400).step_by(4).map(|r| fab.read32(f, r)).collect()
}

/// The hardware domain turns ACS off on the sibling downstream port before
/// any guest depends on it: the assignment applies the tracker's ACS policy
/// again instead of deciding with the units of report time, so the guest's
/// nvme is alone on the hardware too.
#[test]
fn assignment_applies_the_acs_policy_again() {
    let mut fab = switch_fabric();
    let mut topo = track(&mut fab);
    let mut own = Ownership::new();
    let sibling = b("02:01.0");
    let acs = topo.function(sibling).unwrap().caps.acs;
    let out = own.hwdom_apply(&mut fab, sibling, acs + ACS_CTRL, 2, Some(0));
    assert_eq!(out.refused, None);
    let units = own
        .assign(&mut topo, &mut fab, 1, &[b("03:00.0")], false)
        .unwrap();
    assert_eq!(units, vec![vec![b("03:00.0")]]);
    let wanted = ACS_QEMU.cap & ACS_ISOLATION;
    assert_eq!(fab.read16(sibling, acs + ACS_CTRL) & wanted, wanted);
    assert_eq!(topo.function(sibling).unwrap().acs_ctrl & wanted, wanted);
    // And from then on the sibling's ACS is protected.
    let out = own.hwdom_apply(&mut fab, sibling, acs + ACS_CTRL, 2, Some(0));
    assert_eq!(out.refused, Some(Refusal::AcsControlAboveGuest));
}

/// With a policy that enables nothing, the assignment decides with the ACS
/// the hardware has now: the sibling port's ACS was turned off after the
/// report, so the switch is one unit (rule 4) and the nvme alone is part
/// of it.
#[test]
fn assignment_decides_with_the_acs_the_hardware_has_now() {
    let dp = || Spec::qemu_x3130_downstream().acs(Some(ACS_ENABLED));
    let switch = Spec::qemu_x3130_upstream()
        .child(0, 0, dp().child(0, 0, Spec::qemu_nvme()))
        .child(1, 0, dp().child(0, 0, Spec::qemu_e1000e()));
    let rp = Spec::qemu_root_port().acs(Some(ACS_ENABLED));
    let mut fab = Fabric::new().with_root_complex(0, 0, &[(devfn(1, 0), rp.child(0, 0, switch))]);
    let mut cfg = config(&[(0, 0)]);
    cfg.acs_policy = pci::AcsPolicy { enable: 0 };
    let mut topo = Topology::new(cfg);
    for f in fab.enumerate() {
        topo.report_add(f, &mut fab).unwrap();
    }
    let mut own = Ownership::new();
    let sibling = b("02:01.0");
    let acs = topo.function(sibling).unwrap().caps.acs;
    own.hwdom_apply(&mut fab, sibling, acs + ACS_CTRL, 2, Some(0));
    assert_eq!(
        own.assign(&mut topo, &mut fab, 1, &[b("03:00.0")], false),
        Err(AssignError::SplitsUnit {
            unit: UnitId(b("02:00.0")),
            missing: vec![b("04:00.0")],
        })
    );
    assert_eq!(fab.read16(sibling, acs + ACS_CTRL), 0);
}

/// 00:01.0 root port ── 01:00.0 pcie-pci-bridge ─┬─ 02:01.0 conventional
///                                               └─ 02:02.0 conventional
/// 00:02.0 root port ── 03:00.0 e1000e
fn pci_bridge_fabric() -> Fabric {
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port().child(
                    0,
                    0,
                    Spec::qemu_pcie_pci_bridge()
                        .child(1, 0, Spec::conventional(0x8086, 0x100e))
                        .child(2, 0, Spec::conventional(0x8086, 0x100e)),
                ),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
            ),
        ],
    )
}

/// Reports every function of `fab` but `later`.
fn track_but(fab: &mut Fabric, later: &[Bdf]) -> Topology {
    let mut topo = Topology::new(config(&[(0, 0)]));
    for f in fab.enumerate() {
        if !later.contains(&f) {
            topo.report_add(f, fab).unwrap();
        }
    }
    topo
}

/// A conventional function reported behind the guest's PCIe-to-PCI bridge
/// after the assignment would share the bridge's requester id with the
/// guest's (rule 2): refused, and nothing changed. A function elsewhere is
/// tracked as usual.
#[test]
fn a_report_joining_a_guest_unit_is_refused() {
    let mut fab = pci_bridge_fabric();
    let late = b("02:02.0");
    let mut topo = track_but(&mut fab, &[late, b("03:00.0")]);
    let mut own = Ownership::new();
    let units = own
        .assign(&mut topo, &mut fab, 1, &[b("02:01.0")], true)
        .unwrap();
    assert_eq!(units, vec![vec![b("02:01.0")]]);
    let before = config_dump(&mut fab, late);
    assert_eq!(
        own.report_add(&mut topo, late, &mut fab),
        Err(ReportError::JoinsGuestUnit {
            bdf: late,
            owner: Owner::Guest(1),
        })
    );
    assert!(!topo.contains(late));
    assert_eq!(topo.orphans().count(), 0);
    assert_eq!(config_dump(&mut fab, late), before);
    assert_eq!(
        topo.unit_members(b("02:01.0")),
        [b("01:00.0"), b("02:01.0")]
    );
    assert_eq!(
        own.report_add(&mut topo, b("03:00.0"), &mut fab),
        Ok(ReportOutcome::Attached { adopted: 0 })
    );
}

/// 00:01.0 root port ── 01:00.0 switch up ─┬─ 02:00.0 down, no ACS ── 03:00.0 nvme
///                                         └─ 02:01.0 down, ACS ───── 04:00.0 e1000e
/// The guest has the nvme when the second downstream port is reported,
/// its e1000e waiting as an orphan: the port would join the switch's unit
/// (rule 4) and bring the e1000e along. Refused: the port is not tracked,
/// the e1000e waits again, and the ACS Control the tracker enabled on the
/// port is back as it was.
#[test]
fn a_report_whose_adopted_orphans_join_a_guest_unit_is_refused() {
    let switch = Spec::qemu_x3130_upstream()
        .child(
            0,
            0,
            Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_nvme()),
        )
        .child(
            1,
            0,
            Spec::qemu_x3130_downstream()
                .acs(Some(ACS_QEMU))
                .child(0, 0, Spec::qemu_e1000e()),
        );
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(devfn(1, 0), Spec::qemu_root_port().child(0, 0, switch))],
    );
    let (port, e1000e) = (b("02:01.0"), b("04:00.0"));
    let mut topo = track_but(&mut fab, &[port, e1000e]);
    let mut own = Ownership::new();
    assert_eq!(
        own.assign(&mut topo, &mut fab, 1, &[b("03:00.0")], true),
        Ok(vec![vec![b("03:00.0")]])
    );
    assert_eq!(
        own.report_add(&mut topo, e1000e, &mut fab),
        Ok(ReportOutcome::Orphaned)
    );
    let before = config_dump(&mut fab, port);
    assert_eq!(
        own.report_add(&mut topo, port, &mut fab),
        Err(ReportError::JoinsGuestUnit {
            bdf: port,
            owner: Owner::Guest(1),
        })
    );
    assert!(!topo.contains(port) && !topo.contains(e1000e));
    assert_eq!(topo.orphans().collect::<Vec<_>>(), [e1000e]);
    assert_eq!(config_dump(&mut fab, port), before);
    topo.check_invariants().unwrap();
    let reference = topo.compute_units();
    assert_eq!(topo.units(), &reference);
    // Once the guest is gone the same report is tracked, orphan and all.
    own.release(&topo, 1);
    assert_eq!(
        own.report_add(&mut topo, port, &mut fab),
        Ok(ReportOutcome::Attached { adopted: 1 })
    );
}

/// The hardware domain renumbers a root port no guest depends on so that it
/// claims the bus of the other root port's e1000e, without reporting it:
/// 05:00.0 would name whatever answers there now. The assignment is
/// refused until the tree says what the hardware has again.
#[test]
fn assignment_is_refused_while_a_bridge_is_renumbered() {
    let mut fab = switch_fabric();
    let mut topo = track(&mut fab);
    let mut own = Ownership::new();
    let (rp, other) = (b("00:01.0"), b("00:02.0"));
    let buses = fab.read32(other, PRIMARY_BUS);
    own.hwdom_apply(&mut fab, other, PRIMARY_BUS, 4, Some(0x0007_0700));
    own.hwdom_apply(&mut fab, rp, PRIMARY_BUS, 4, Some(0x0005_0500));
    assert_eq!(
        own.assign(&mut topo, &mut fab, 1, &[b("05:00.0")], false),
        Err(AssignError::BridgeRenumbered(rp))
    );
    assert_eq!(topo.renumbered_bridge(&mut fab), Some(rp));
    own.hwdom_apply(&mut fab, rp, PRIMARY_BUS, 4, Some(0x0004_0100));
    own.hwdom_apply(&mut fab, other, PRIMARY_BUS, 4, Some(buses));
    assert_eq!(
        own.assign(&mut topo, &mut fab, 1, &[b("05:00.0")], false),
        Ok(vec![vec![b("05:00.0")]])
    );
}

#[test]
fn a_reset_over_a_renumbered_bridge_is_refused() {
    // The hardware domain renumbers a bridge without reporting it: a reset
    // whose bridge or scope holds it would save, reset and restore by
    // addresses that now name other functions.
    let mut fab = switch_fabric();
    let topo = track(&mut fab);
    let own = Ownership::new();
    let (rp, other) = (b("00:01.0"), b("00:02.0"));
    let sbr = pci::ResetAction::SecondaryBus { bridge: rp };
    let elsewhere = pci::ResetAction::SecondaryBus { bridge: other };
    assert_eq!(
        pci::reset_engine::renumbered_in_scope(&topo, sbr, &mut fab),
        None
    );
    let buses = fab.read32(rp, PRIMARY_BUS);
    own.hwdom_apply(&mut fab, rp, PRIMARY_BUS, 4, Some(0x0005_0500));
    assert_eq!(
        pci::reset_engine::renumbered_in_scope(&topo, sbr, &mut fab),
        Some(rp)
    );
    assert_eq!(
        pci::reset_engine::renumbered_in_scope(&topo, elsewhere, &mut fab),
        None,
        "a reset that does not depend on it"
    );
    own.hwdom_apply(&mut fab, rp, PRIMARY_BUS, 4, Some(buses));
    assert_eq!(
        pci::reset_engine::renumbered_in_scope(&topo, sbr, &mut fab),
        None
    );
}
