//! Reset methods, overrides, quirks, scopes and the coverage query.

mod common;
use common::*;

use ResetMethod::*;
use pci::reset::{ResetQuirk, quirk};
use pci::sim::{Fabric, Spec, devfn};
use pci::{Bdf, ResetAction, ResetError, ResetMethod, Topology};

/// 00:01.0 root port (hot-plug slot) -> 01:00.0 switch up -> 02:00.0 down -> 03:00.0 e1000e
///                                                         -> 02:01.0 down -> 04:00.0 nvme
/// 00:02.0 root port -> 05:00.0 pcie-pci-bridge -> 06:01.0, 06:02.0 conventional
/// 00:03.0 root port -> 07:00.0 + 07:00.1 multi-function endpoint without FLR
/// 00:04.0 root port -> 08:00.0 PF (FLR) with 2 VFs
/// 00:1f.0 RCiEP with FLR and AF FLR; 00:1e.0 RCiEP, PM with NoSoftRst
fn fabric() -> Fabric {
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port().child(
                    0,
                    0,
                    Spec::qemu_x3130_upstream()
                        .child(
                            0,
                            0,
                            Spec::qemu_x3130_downstream().hotplug_slot(false).child(
                                0,
                                0,
                                Spec::qemu_e1000e(),
                            ),
                        )
                        .child(
                            1,
                            0,
                            Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_nvme()),
                        ),
                ),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port().hotplug_slot(false).child(
                    0,
                    0,
                    Spec::qemu_pcie_pci_bridge()
                        .child(1, 0, Spec::conventional(0x8086, 0x100e))
                        .child(2, 0, Spec::conventional(0x8086, 0x100e).pm(None)),
                ),
            ),
            (
                devfn(3, 0),
                Spec::qemu_root_port()
                    .hotplug_slot(false)
                    .child(0, 0, Spec::endpoint(0x15b3, 1).flr(false).pm(None))
                    .child(0, 1, Spec::endpoint(0x15b3, 1).flr(false).pm(None)),
            ),
            (
                devfn(4, 0),
                Spec::qemu_root_port().hotplug_slot(false).child(
                    0,
                    0,
                    Spec::endpoint(0x8086, 0x1521).sriov(2, 0x1520),
                ),
            ),
            (devfn(0x1f, 0), Spec::rciep(0x1234, 1).af_flr(true)),
            (
                devfn(0x1e, 0),
                Spec::rciep(0x1234, 2).flr(false).pm(Some(true)),
            ),
        ],
    )
}

fn methods(t: &Topology, s: &str) -> Vec<ResetMethod> {
    t.reset_methods(b(s)).unwrap().as_slice().to_vec()
}

#[test]
fn probed_methods_follow_linux_order() {
    let mut f = fabric();
    let t = track(&mut f);
    // nvme: FLR, PM (NoSoftRst clear), slot (QEMU downstream port has a hot-plug slot), bus.
    assert_eq!(methods(&t, "04:00.0"), [Flr, Pm, Slot, Bus]);
    // e1000e: no FLR in QEMU; parent without hot-plug slot.
    assert_eq!(methods(&t, "03:00.0"), [Pm, Bus]);
    // Conventional device behind the pcie-pci-bridge: bus reset of the bridge.
    assert_eq!(methods(&t, "06:01.0"), [Pm, Bus]);
    assert_eq!(methods(&t, "06:02.0"), [Bus]);
    // RCiEPs: no parent bridge, so no bus reset.
    assert_eq!(methods(&t, "00:1f.0"), [Flr, AfFlr, Pm]);
    assert_eq!(methods(&t, "00:1e.0"), Vec::<ResetMethod>::new());
    // VF: FLR only.
    assert_eq!(methods(&t, "08:00.1"), [Flr]);
    // A switch upstream port may be reset by its root port's SBR.
    assert_eq!(methods(&t, "01:00.0"), [Pm, Slot, Bus]);
}

#[test]
fn scopes() {
    let mut f = fabric();
    let t = track(&mut f);
    assert_eq!(t.reset_scope(b("04:00.0"), Flr).unwrap(), [b("04:00.0")]);
    assert_eq!(t.reset_scope(b("04:00.0"), Bus).unwrap(), [b("04:00.0")]);
    assert_eq!(
        t.reset_action(b("04:00.0"), Slot).unwrap(),
        ResetAction::Slot { port: b("02:01.0") }
    );
    assert_eq!(
        t.reset_scope(b("06:01.0"), Bus).unwrap(),
        [b("06:01.0"), b("06:02.0")]
    );
    assert_eq!(
        t.reset_scope(b("01:00.0"), Bus).unwrap(),
        ["01:00.0", "02:00.0", "02:01.0", "03:00.0", "04:00.0"].map(b)
    );
    // FLR of a PF disables its VFs: they are in its scope.
    assert_eq!(
        t.reset_scope(b("08:00.0"), Flr).unwrap(),
        ["08:00.0", "08:00.1", "08:00.2"].map(b)
    );
    assert_eq!(
        t.reset_scope(b("03:00.0"), Flr),
        Err(ResetError::Unsupported {
            bdf: b("03:00.0"),
            method: Flr
        })
    );
    assert_eq!(
        t.reset_scope(b("09:00.0"), Flr),
        Err(ResetError::NotTracked { bdf: b("09:00.0") })
    );
}

#[test]
fn override_is_validated() {
    let mut f = fabric();
    let mut t = track(&mut f);
    let nvme = b("04:00.0");
    t.set_reset_methods(nvme, &[Bus, Flr]).unwrap();
    assert_eq!(methods(&t, "04:00.0"), [Bus, Flr]);
    assert_eq!(
        t.set_reset_methods(nvme, &[Flr, Flr]),
        Err(ResetError::Duplicate { method: Flr })
    );
    assert_eq!(
        t.set_reset_methods(nvme, &[AfFlr]),
        Err(ResetError::Unsupported {
            bdf: nvme,
            method: AfFlr
        })
    );
    // A refused override keeps the old one.
    assert_eq!(methods(&t, "04:00.0"), [Bus, Flr]);
    t.set_reset_methods(nvme, &[]).unwrap();
    assert!(methods(&t, "04:00.0").is_empty());
    t.clear_reset_methods(nvme);
    assert_eq!(methods(&t, "04:00.0"), [Flr, Pm, Slot, Bus]);
    assert_eq!(ResetMethod::from_name("af_flr"), Some(AfFlr));
    assert_eq!(Slot.to_string(), "slot");
}

#[test]
fn quirks_remove_methods() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port().hotplug_slot(false).child(
                    0,
                    0,
                    Spec::endpoint(0x8086, 0x1502).af_flr(true),
                ),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port()
                    .hotplug_slot(false)
                    .child(0, 0, Spec::endpoint(0x168c, 0x0030))
                    .child(0, 1, Spec::endpoint(0x1234, 0x0001)),
            ),
            (
                devfn(3, 0),
                Spec::qemu_root_port().hotplug_slot(false).child(
                    0,
                    0,
                    Spec::endpoint(0x1234, 0x0002),
                ),
            ),
        ],
    );
    let bdfs = f.enumerate();
    let mut cfg = config(&[(0, 0)]);
    cfg.reset_quirks.push(ResetQuirk::new(
        0x1234,
        0x0002,
        0x0002,
        quirk::NO_PM_RESET | quirk::DEVICE_SPECIFIC,
    ));
    let mut t = Topology::new(cfg);
    for x in bdfs {
        t.report_add(x, &mut f).unwrap();
    }
    // 82579: FLR and AF FLR advertised but quirked off.
    assert_eq!(methods(&t, "01:00.0"), [Pm, Bus]);
    // Atheros: no bus reset, for it and for its sibling function (same scope).
    assert_eq!(methods(&t, "02:00.0"), [Flr, Pm]);
    assert_eq!(methods(&t, "02:00.1"), [Flr, Pm]);
    // Custom quirk: device specific first, no PM.
    assert_eq!(methods(&t, "03:00.0"), [DeviceSpecific, Flr, Bus]);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Hw,
    A,
    B,
}

#[test]
fn coverage_prefers_function_resets_the_owner_can_do() {
    let mut f = fabric();
    let t = track(&mut f);
    // Guest A owns the nvme: FLR covers it, touches nothing else.
    let owner = |x: Bdf| {
        if x == b("04:00.0") {
            Owner::A
        } else {
            Owner::Hw
        }
    };
    let c = t.reset_coverage(&[b("04:00.0")], owner).unwrap();
    assert_eq!(
        c.actions,
        [ResetAction::Function {
            bdf: b("04:00.0"),
            method: Flr
        }]
    );
    assert_eq!(c.touched, [b("04:00.0")]);
    assert!(c.is_safe());
}

#[test]
fn coverage_of_a_multifunction_device_without_flr() {
    let mut f = fabric();
    let t = track(&mut f);
    let (f0, f1) = (b("07:00.0"), b("07:00.1"));
    // A owns both functions: one SBR of the root port covers them.
    let both = |x: Bdf| {
        if x == f0 || x == f1 {
            Owner::A
        } else {
            Owner::Hw
        }
    };
    let c = t.reset_coverage(&[f0, f1], both).unwrap();
    assert_eq!(
        c.actions,
        [ResetAction::SecondaryBus {
            bridge: b("00:03.0")
        }]
    );
    assert_eq!(c.touched, [f0, f1]);
    assert!(c.is_safe());
    // A owns one, B the other: the only reset touches B's function.
    let split = |x: Bdf| match x {
        x if x == f0 => Owner::A,
        x if x == f1 => Owner::B,
        _ => Owner::Hw,
    };
    let c = t.reset_coverage(&[f0], split).unwrap();
    assert_eq!(c.foreign, [f1]);
    assert!(!c.is_safe());
    assert_eq!(
        t.reset_coverage(&[f0, f1], split),
        Err(ResetError::MixedOwners { bdf: f1 })
    );
    assert_eq!(t.reset_coverage(&[], split), Err(ResetError::EmptySet));
}

#[test]
fn coverage_falls_back_to_a_common_bridge() {
    let mut f = fabric();
    let mut t = track(&mut f);
    // The e1000e's and nvme's own resets are disabled by override; guest A
    // owns the whole switch: one SBR of the root port covers both.
    t.set_reset_methods(b("03:00.0"), &[]).unwrap();
    t.set_reset_methods(b("04:00.0"), &[]).unwrap();
    let owner = |x: Bdf| {
        if x.bus >= 1 && x.bus <= 4 {
            Owner::A
        } else {
            Owner::Hw
        }
    };
    let c = t
        .reset_coverage(&[b("03:00.0"), b("04:00.0")], owner)
        .unwrap();
    assert_eq!(
        c.actions,
        [ResetAction::SecondaryBus {
            bridge: b("01:00.0")
        }]
    );
    assert_eq!(c.touched.len(), 4);
    assert!(c.is_safe());
    // If the switch ports belong to the hardware domain, nothing safe exists.
    let owner = |x: Bdf| {
        if x.bus == 3 || x.bus == 4 {
            Owner::A
        } else {
            Owner::Hw
        }
    };
    let c = t
        .reset_coverage(&[b("03:00.0"), b("04:00.0")], owner)
        .unwrap();
    assert_eq!(c.uncovered, [b("03:00.0"), b("04:00.0")]);
    assert!(!c.is_safe());
}
