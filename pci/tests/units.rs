//! Assignment units of hand-checked topologies (issue 3's list, and more).

mod common;
use common::*;

use pci::regs::*;
use pci::sim::{ACS_ENABLED, ACS_NONE_ADVERTISED, ACS_QEMU, Fabric, SimKind, Spec, devfn};
use pci::units::{AcsQuirk, AcsQuirkEffect};
use pci::{ConfigPort, Topology};

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
/// a multi-function RCiEP without ACS share a unit; an RCEC never isolates.
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
        ],
    );
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:1d.0"],
            &["00:1d.1"],
            &["00:1e.0", "00:1e.1"],
            &["00:1f.0"]
        ])
    );
    // An RCEC alone in its slot is still a unit of its own.
    let _ = SimKind::Rcec;
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
