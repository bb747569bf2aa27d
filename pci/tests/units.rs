//! Assignment units of hand-checked topologies (QEMU's topologies and harder ones).

mod common;
use common::*;

use pci::regs::*;
use pci::sim::{ACS_ENABLED, ACS_NONE_ADVERTISED, ACS_QEMU, Fabric, SimKind, Spec, devfn};
use pci::units::{AcsQuirk, AcsQuirkEffect};
use pci::vpci::{AssignError, Ownership};
use pci::{Bdf, ConfigPort, FunctionKind, Topology, UnitId};

fn ep(vendor: u16, device: u16) -> Spec {
    Spec::endpoint(vendor, device)
}

/// (1) Root ports with ACS, one endpoint each: every function alone.
#[test]
fn t1_root_ports_with_acs() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
            ),
        ],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[&["00:01.0"], &["00:02.0"], &["01:00.0"], &["02:00.0"]])
    );
    // The tracker enabled the controls QEMU's root port advertises but leaves off.
    let rp = b("00:01.0");
    let acs = t.function(rp).unwrap().caps.acs;
    assert_eq!(f.read16(rp, acs + ACS_CTRL), ACS_ISOLATION);
}

/// (2) A root port with `disable-acs`: it and its subtree are one unit.
#[test]
fn t2_root_port_disable_acs() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port()
                    .acs(None)
                    .child(0, 0, Spec::qemu_e1000e()),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
            ),
        ],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[&["00:01.0", "01:00.0"], &["00:02.0"], &["02:00.0"]])
    );
}

fn switch(dps: Vec<Spec>) -> Spec {
    let mut up = Spec::qemu_x3130_upstream();
    for (i, dp) in dps.into_iter().enumerate() {
        up = up.child(i as u8, 0, dp);
    }
    Spec::qemu_root_port().child(0, 0, up)
}

/// (3) A switch under an ACS root port, downstream ports without ACS, two
/// endpoints below different downstream ports: one unit for the switch's
/// downstream side (not Linux 6.1's one group per downstream port).
#[test]
fn t3_switch_downstream_ports_without_acs() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            switch(vec![
                Spec::qemu_x3130_downstream()
                    .acs(None)
                    .child(0, 0, Spec::qemu_e1000e()),
                Spec::qemu_x3130_downstream()
                    .acs(None)
                    .child(0, 0, Spec::qemu_nvme()),
            ]),
        )],
    );
    let mut t = track(&mut f);
    // 00:01.0 -> 01:00.0 up -> 02:00.0, 02:01.0 down -> 03:00.0, 04:00.0
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:01.0"],
            &["01:00.0"],
            &["02:00.0", "02:01.0", "03:00.0", "04:00.0"]
        ])
    );
}

/// (3b) Same switch, downstream ports with ACS: each endpoint alone.
#[test]
fn t3b_switch_downstream_ports_with_acs() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            switch(vec![
                Spec::qemu_x3130_downstream()
                    .acs(Some(ACS_QEMU))
                    .child(0, 0, Spec::qemu_e1000e()),
                Spec::qemu_x3130_downstream()
                    .acs(Some(ACS_QEMU))
                    .child(0, 0, Spec::qemu_nvme()),
            ]),
        )],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:01.0"],
            &["01:00.0"],
            &["02:00.0"],
            &["02:01.0"],
            &["03:00.0"],
            &["04:00.0"]
        ])
    );
}

/// (3c) One downstream port without ACS reaches its siblings' subtrees even
/// if they have ACS; an unpopulated port without ACS reaches nothing.
#[test]
fn t3c_switch_mixed_acs() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                switch(vec![
                    Spec::qemu_x3130_downstream()
                        .acs(None)
                        .child(0, 0, Spec::qemu_e1000e()),
                    Spec::qemu_x3130_downstream().acs(Some(ACS_QEMU)).child(
                        0,
                        0,
                        Spec::qemu_nvme(),
                    ),
                ]),
            ),
            (
                devfn(2, 0),
                switch(vec![
                    Spec::qemu_x3130_downstream().acs(None),
                    Spec::qemu_x3130_downstream().acs(Some(ACS_QEMU)).child(
                        0,
                        0,
                        Spec::qemu_nvme(),
                    ),
                ]),
            ),
        ],
    );
    let mut t = track(&mut f);
    // Second switch: 00:02.0 -> 05:00.0 up -> 06:00.0 (empty, no ACS), 06:01.0 -> 08:00.0
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:01.0"],
            &["00:02.0"],
            &["01:00.0"],
            &["02:00.0", "02:01.0", "03:00.0", "04:00.0"],
            &["05:00.0"],
            &["06:00.0"],
            &["06:01.0"],
            &["08:00.0"],
        ])
    );
}

/// (4) A PCIe-to-PCI bridge with two conventional devices: they alias to
/// the bridge's requester id, so bridge and devices are one unit.
#[test]
fn t4_pcie_pci_bridge() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(
                0,
                0,
                Spec::qemu_pcie_pci_bridge()
                    .child(1, 0, Spec::conventional(0x8086, 0x100e))
                    .child(2, 0, Spec::conventional(0x1af4, 0x1000)),
            ),
        )],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[&["00:01.0"], &["01:00.0", "02:01.0", "02:02.0"]])
    );
}

/// (5) A multi-function endpoint without ACS (one unit), with ACS (tracker
/// enables it: one unit per function), and with an ACS capability that
/// advertises no control (nothing to enable: counts as isolated, as in Linux).
#[test]
fn t5_multifunction_endpoint() {
    let mf = |acs| {
        Spec::qemu_root_port()
            .child(0, 0, ep(0x15b3, 0x1017).acs(acs))
            .child(0, 1, ep(0x15b3, 0x1017).acs(acs))
    };
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), mf(None)),
            (devfn(2, 0), mf(Some(pci::sim::ACS_QEMU))),
            (devfn(3, 0), mf(Some(ACS_NONE_ADVERTISED))),
        ],
    );
    let mut t = track(&mut f);
    // As QEMU builds such a device: the Multi-Function bit in function 0.
    let mut mf = |x: &str| f.read8(b(x), HEADER_TYPE) & HEADER_TYPE_MULTIFUNCTION != 0;
    assert!(mf("01:00.0") && !mf("01:00.1"));
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:01.0"],
            &["00:02.0"],
            &["00:03.0"],
            &["01:00.0", "01:00.1"],
            &["02:00.0"],
            &["02:00.1"],
            &["03:00.0"],
            &["03:00.1"],
        ])
    );
}

/// (6) Two root ports that are functions of one slot: without ACS they and
/// their subtrees are one unit; with ACS each stands alone.
#[test]
fn t6_multifunction_root_ports() {
    let rp = |acs: bool| {
        let s = Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e());
        if acs { s } else { s.acs(None) }
    };
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), rp(false)),
            (devfn(1, 1), rp(false)),
            (devfn(2, 0), rp(true)),
            (devfn(2, 1), rp(true)),
        ],
    );
    let mut t = track(&mut f);
    assert!(t.function(b("00:01.0")).unwrap().is_multifunction());
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:01.0", "00:01.1", "01:00.0", "02:00.0"],
            &["00:02.0"],
            &["00:02.1"],
            &["03:00.0"],
            &["04:00.0"],
        ])
    );
}

/// (7) RCiEPs on the root bus: a single-function one is alone; functions of
/// a multi-function RCiEP without ACS share a unit; an RCEC never isolates,
/// so an RCiEP with ACS in its slot joins it; two RCiEPs with ACS stay apart.
#[test]
fn t7_rciep() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(0x1f, 0), Spec::rciep(0x1234, 0x0001)),
            (devfn(0x1e, 0), Spec::rciep(0x1234, 0x0002)),
            (devfn(0x1e, 1), Spec::rciep(0x1234, 0x0003)),
            (
                devfn(0x1d, 0),
                Spec::rciep(0x1234, 0x0004).acs(Some(ACS_ENABLED)),
            ),
            (devfn(0x1d, 1), Spec::rcec(0x1234, 0x0005)),
            (devfn(0x1c, 0), Spec::rcec(0x1234, 0x0006)),
            (
                devfn(0x1b, 0),
                Spec::rciep(0x1234, 0x0007).acs(Some(ACS_ENABLED)),
            ),
            (
                devfn(0x1b, 1),
                Spec::rciep(0x1234, 0x0008).acs(Some(ACS_ENABLED)),
            ),
        ],
    );
    let mut t = track(&mut f);
    assert_eq!(t.function(b("00:1c.0")).unwrap().kind, FunctionKind::Rcec);
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:1b.0"],
            &["00:1b.1"],
            &["00:1c.0"],
            &["00:1d.0", "00:1d.1"],
            &["00:1e.0", "00:1e.1"],
            &["00:1f.0"]
        ])
    );
}

/// Quirk: a root port known to block peer-to-peer is isolated without ACS.
#[test]
fn quirk_isolated_root_port() {
    let rp = |vendor, device| {
        Spec::new(SimKind::RootPort, vendor, device).child(0, 0, Spec::qemu_e1000e())
    };
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), rp(0x17cb, 0x0400)),
            (devfn(2, 0), rp(0x17cb, 0x0999)),
        ],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[&["00:01.0"], &["00:02.0", "02:00.0"], &["01:00.0"]])
    );
    // A custom quirk table can do the opposite.
    let mut f2 = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
        )],
    );
    let bdfs = f2.enumerate();
    let mut cfg = config(&[(0, 0)]);
    cfg.acs_quirks.push(AcsQuirk::new(
        0x1b36,
        0x000c,
        0x000c,
        AcsQuirkEffect::NotIsolated,
    ));
    let mut t2 = Topology::new(cfg);
    for x in bdfs {
        t2.report_add(x, &mut f2).unwrap();
    }
    assert_eq!(units(&mut t2), set(&[&["00:01.0", "01:00.0"]]));
}

/// The ACS policy is configurable: enabling nothing leaves QEMU's ports open.
#[test]
fn acs_policy_off_keeps_ports_open() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
        )],
    );
    let bdfs = f.enumerate();
    let mut cfg = config(&[(0, 0)]);
    cfg.acs_policy.enable = 0;
    let mut t = Topology::new(cfg);
    for x in bdfs {
        t.report_add(x, &mut f).unwrap();
    }
    assert_eq!(units(&mut t), set(&[&["00:01.0", "01:00.0"]]));
}

/// SR-IOV: VFs below an ACS root port are units of their own.
#[test]
fn sriov_vfs_are_isolated() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, ep(0x8086, 0x1521).sriov(3, 0x1520)),
        )],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:01.0"],
            &["01:00.0"],
            &["01:00.1"],
            &["01:00.2"],
            &["01:00.3"]
        ])
    );
    let vf = t.function(b("01:00.2")).unwrap();
    assert_eq!((vf.vendor, vf.device), (0x8086, 0x1520));
    assert_eq!(vf.physfn(), Some(b("01:00.0")));
}

/// Unit ids are the lowest member and lookups agree with the table.
#[test]
fn unit_ids_and_lookup() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port()
                .acs(None)
                .child(0, 0, Spec::qemu_e1000e()),
        )],
    );
    let mut t = track(&mut f);
    assert_eq!(t.unit_of(b("01:00.0")), Some(pci::UnitId(b("00:01.0"))));
    assert_eq!(
        t.unit_members(b("01:00.0")),
        vec![b("00:01.0"), b("01:00.0")]
    );
    assert_eq!(t.unit_of(b("05:00.0")), None);
    let table = t.units();
    assert!(table.get(pci::UnitId(b("01:00.0"))).is_none());
}

/// QEMU's multi-function e1000e below one root port: `multifunction=on` is
/// given on function 0 only, so function 1's own header bit is clear, and
/// e1000e has no ACS.
const QEMU_MF_E1000E: [&str; 6] = [
    "-device",
    "pcie-root-port,id=rp1,chassis=1,slot=1,addr=1.0",
    "-device",
    "e1000e,bus=rp1,multifunction=on,addr=0.0",
    "-device",
    "e1000e,bus=rp1,addr=0.1",
];

/// Every order of `items` (Heap's algorithm).
fn permutations(items: &[Bdf]) -> Vec<Vec<Bdf>> {
    fn go(k: usize, a: &mut Vec<Bdf>, out: &mut Vec<Vec<Bdf>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        for i in 0..k {
            go(k - 1, a, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            a.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    go(items.len(), &mut items.to_vec(), &mut out);
    out
}

/// The functions of a multi-function device without ACS are one unit even
/// where only function 0 carries the Multi-Function bit (as QEMU, PIIX-like
/// hardware and the spec have it), whatever order the reports come in:
/// function 1 before function 0, before its root port, ... The units kept up
/// to date as each report is attached agree with a computation from scratch
/// after every report.
#[test]
fn qemu_multifunction_e1000e_is_one_unit_in_any_report_order() {
    let mut f = Fabric::from_qemu_args(&QEMU_MF_E1000E).unwrap();
    let all = f.enumerate();
    assert_eq!(all.len(), 4);
    let mf = |f: &mut Fabric, x: &str| f.read8(b(x), HEADER_TYPE) & HEADER_TYPE_MULTIFUNCTION != 0;
    assert!(mf(&mut f, "01:00.0"), "QEMU sets the bit on function 0");
    assert!(!mf(&mut f, "01:00.1"), "and not on function 1");
    let expected = set(&[&["00:00.0"], &["00:01.0"], &["01:00.0", "01:00.1"]]);
    let orders = permutations(&all);
    assert_eq!(orders.len(), 24);
    for order in orders {
        let mut t = Topology::new(config(&[(0, 0)]));
        for &x in &order {
            t.report_add(x, &mut f).unwrap();
            // Querying after each report keeps the incremental sets alive
            // (no replay in address order).
            let reference = t.compute_units();
            let tracked: Vec<Bdf> = t.functions().map(|(y, _)| y).collect();
            for y in tracked {
                let want = reference.unit_of(y).map(|u| u.id);
                assert_eq!(t.unit_of(y), want, "{y} after {x}, order {order:?}");
            }
        }
        let reference = t.compute_units();
        assert_eq!(t.units(), &reference, "order {order:?}");
        assert_eq!(units(&mut t), expected, "order {order:?}");
        // The tracker sees function 1 as part of a multi-function device.
        assert!(t.function(b("01:00.1")).unwrap().is_multifunction());
    }
}

/// A configuration naming one function of that device is refused, naming the
/// other; asking for whole units gives both.
#[test]
fn assigning_one_function_of_a_multifunction_device_is_refused() {
    let mut f = Fabric::from_qemu_args(&QEMU_MF_E1000E).unwrap();
    let mut t = track(&mut f);
    let mut own = Ownership::new();
    for (asked, other) in [("01:00.1", "01:00.0"), ("01:00.0", "01:00.1")] {
        assert_eq!(
            own.assign(&mut t, &mut f, 1, &[b(asked)], false),
            Err(AssignError::SplitsUnit {
                unit: UnitId(b("01:00.0")),
                missing: vec![b(other)],
            })
        );
    }
    assert_eq!(
        own.assign(&mut t, &mut f, 1, &[b("01:00.1")], true),
        Ok(vec![vec![b("01:00.0"), b("01:00.1")]])
    );
}

/// Functions of one device share a unit unless every one of them has ACS
/// that isolates it: a function without ACS can reach its siblings inside
/// the device whether or not they redirect their own requests, and a
/// function 0 that leaves the Multi-Function bit clear while functions > 0
/// answer is a multi-function device all the same.
#[test]
fn multifunction_devices_need_acs_on_every_function() {
    let e = |acs: Option<pci::sim::SimAcs>| ep(0x15b3, 0x1017).acs(acs);
    let slot = |f0: Spec, f1: Spec| Spec::qemu_root_port().child(0, 0, f0).child(0, 1, f1);
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            // Function 0 claims single-function; neither has ACS.
            (devfn(1, 0), slot(e(None).multifunction(false), e(None))),
            // Only function 1 isolates its own requests.
            (devfn(2, 0), slot(e(None), e(Some(ACS_ENABLED)))),
            // Only function 0 does.
            (devfn(3, 0), slot(e(Some(ACS_ENABLED)), e(None))),
            // Function 0 claims single-function and lacks ACS; function 1 has it.
            (
                devfn(4, 0),
                slot(e(None).multifunction(false), e(Some(ACS_ENABLED))),
            ),
            // Every function sets the bit (as some hardware does), no ACS.
            (devfn(5, 0), slot(e(None), e(None).multifunction(true))),
            // Both isolate (the tracker enables what they advertise), even
            // with function 0's bit clear.
            (
                devfn(6, 0),
                slot(e(Some(ACS_QEMU)).multifunction(false), e(Some(ACS_QEMU))),
            ),
        ],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:01.0"],
            &["00:02.0"],
            &["00:03.0"],
            &["00:04.0"],
            &["00:05.0"],
            &["00:06.0"],
            &["01:00.0", "01:00.1"],
            &["02:00.0", "02:00.1"],
            &["03:00.0", "03:00.1"],
            &["04:00.0", "04:00.1"],
            &["05:00.0", "05:00.1"],
            &["06:00.0"],
            &["06:00.1"],
        ])
    );
    let reference = t.compute_units();
    assert_eq!(t.units(), &reference);
}
