//! Report validation, orphans, removal, and order independence.

mod common;
use common::*;

use pci::caps::CapError;
use pci::regs::*;
use pci::sim::{Fabric, Spec, devfn};
use pci::{Bdf, ConfigPort, ReportOutcome, Topology, TopologyError};
use proptest::prelude::*;

/// Two root ports; the first has a switch with two downstream ports, one with
/// a multi-function endpoint; the second a pcie-pci-bridge with two
/// conventional devices. Plus an RCiEP and an SR-IOV PF with VFs.
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
                            Spec::qemu_x3130_downstream()
                                .acs(None)
                                .child(0, 0, Spec::endpoint(0x15b3, 1))
                                .child(0, 1, Spec::endpoint(0x15b3, 1)),
                        )
                        .child(
                            1,
                            0,
                            Spec::qemu_x3130_downstream()
                                .acs(None)
                                .child(0, 0, Spec::qemu_nvme()),
                        )
                        .child(
                            2,
                            0,
                            Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_e1000e()),
                        ),
                ),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(
                    0,
                    0,
                    Spec::qemu_pcie_pci_bridge()
                        .child(1, 0, Spec::conventional(0x8086, 0x100e))
                        .child(2, 0, Spec::conventional(0x8086, 0x100e)),
                ),
            ),
            (
                devfn(3, 0),
                Spec::qemu_root_port().acs(None).child(
                    0,
                    0,
                    Spec::endpoint(0x8086, 0x1521).sriov(4, 0x1520),
                ),
            ),
            (devfn(0x1f, 0), Spec::rciep(0x1234, 5)),
        ],
    )
}

fn fresh() -> Topology {
    Topology::new(config(&[(0, 0)]))
}

#[test]
fn reports_validate_against_config_space() {
    let mut f = fabric();
    f.enumerate();
    let mut t = fresh();
    assert_eq!(
        t.report_add(Bdf::new(1, 0, 1, 0), &mut f),
        Err(TopologyError::UnknownSegment { segment: 1 })
    );
    assert_eq!(
        t.report_add(b("00:05.0"), &mut f),
        Err(TopologyError::NoFunction { bdf: b("00:05.0") })
    );
    let mut narrow = Topology::new(pci::TopologyConfig::new(&[pci::HostBridge {
        segment: 0,
        bus_start: 0,
        bus_end: 3,
    }]));
    assert_eq!(
        narrow.report_add(b("04:00.0"), &mut f),
        Err(TopologyError::BusOutsideHostBridge { bdf: b("04:00.0") })
    );
    // Root port 00:01.0 spans buses 1..=5 which is more than the host bridge's 0..=3.
    assert!(matches!(
        narrow.report_add(b("00:01.0"), &mut f),
        Err(TopologyError::InvalidBusRange { .. })
    ));
    assert!(narrow.is_empty());
    assert_eq!(
        t.report_add(b("00:01.0"), &mut f),
        Ok(ReportOutcome::Attached { adopted: 0 })
    );
    assert_eq!(
        t.report_add(b("00:01.0"), &mut f),
        Ok(ReportOutcome::AlreadyTracked)
    );
    assert_eq!(t.len(), 1);
}

#[test]
fn header_type_must_match_port_type() {
    let mut f = fabric();
    f.enumerate();
    let mut t = fresh();
    // Make the root port claim a type 0 header.
    assert!(f.poke(b("00:02.0"), HEADER_TYPE, &[0]));
    assert_eq!(
        t.report_add(b("00:02.0"), &mut f),
        Err(TopologyError::HeaderTypeMismatch {
            bdf: b("00:02.0"),
            header_type: 0,
            port_type: PCIE_TYPE_ROOT_PORT
        })
    );
    assert!(f.poke(b("00:02.0"), HEADER_TYPE, &[2]));
    assert_eq!(
        t.report_add(b("00:02.0"), &mut f),
        Err(TopologyError::UnsupportedHeaderType {
            bdf: b("00:02.0"),
            header_type: 2
        })
    );
    assert!(t.is_empty());
}

#[test]
fn not_ready_function_is_refused() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().rrs_sv(true).child(
                0,
                0,
                Spec::qemu_nvme().readiness(pci::sim::SimReadiness {
                    delay_ns: 1_000_000,
                    ..Default::default()
                }),
            ),
        )],
    );
    f.enumerate();
    let nvme = b("01:00.0");
    let pcie = pci::caps::find_cap(&mut f, nvme, CAP_ID_PCIE)
        .unwrap()
        .unwrap();
    f.write16(nvme, pcie + PCIE_DEVCTL, PCIE_DEVCTL_BCR_FLR);
    let mut t = fresh();
    t.report_add(b("00:01.0"), &mut f).unwrap();
    assert_eq!(
        t.report_add(nvme, &mut f),
        Err(TopologyError::NotReady { bdf: nvme })
    );
    f.advance_ns(1_000_000);
    assert!(t.report_add(nvme, &mut f).is_ok());
}

#[test]
fn corrupt_capability_list_is_refused_without_side_effects() {
    let mut f = fabric();
    f.enumerate();
    let mut t = fresh();
    let rp = b("00:01.0");
    let first = f.read8(rp, CAP_PTR);
    let second = f.read8(rp, first as u16 + 1);
    // Make the first capability point back at itself.
    assert!(f.poke(rp, first as u16 + 1, &[first]));
    let acs_before = f.read32(rp, 0x100 + 0x40 + 4);
    let e = t.report_add(rp, &mut f);
    assert!(
        matches!(
            e,
            Err(TopologyError::Capability {
                error: CapError::Loop { .. },
                ..
            })
        ),
        "{e:?}"
    );
    assert_eq!(f.read32(rp, 0x100 + 0x40 + 4), acs_before);
    assert!(t.is_empty() && t.orphans().count() == 0);
    // A pointer into the header.
    assert!(f.poke(rp, first as u16 + 1, &[0x10]));
    assert!(matches!(
        t.report_add(rp, &mut f),
        Err(TopologyError::Capability {
            error: CapError::PointerInHeader { .. },
            ..
        })
    ));
    // Misaligned.
    assert!(f.poke(rp, first as u16 + 1, &[0x41]));
    assert!(matches!(
        t.report_add(rp, &mut f),
        Err(TopologyError::Capability {
            error: CapError::Misaligned { .. },
            ..
        })
    ));
    // An extended list that loops.
    assert!(f.poke(rp, first as u16 + 1, &[second]));
    assert!(f.poke(rp, 0x100, &[0x01, 0x00, 0x02, 0x10]));
    assert!(matches!(
        t.report_add(rp, &mut f),
        Err(TopologyError::Capability {
            error: CapError::Loop { .. },
            ..
        })
    ));
}

#[test]
fn bridge_ranges_must_nest_and_not_overlap() {
    let mut f = fabric();
    let all = f.enumerate();
    let mut t = fresh();
    for &x in &all {
        if x != b("02:02.0") && x != b("05:00.0") {
            t.report_add(x, &mut f).unwrap();
        }
    }
    // Downstream port 02:02.0 normally owns bus 5; claim bus 3 (a sibling's).
    let dp = b("02:02.0");
    f.write32(dp, PRIMARY_BUS, 0x0003_0302);
    assert_eq!(
        t.report_add(dp, &mut f),
        Err(TopologyError::BusRangeOverlap {
            bdf: dp,
            other: b("02:00.0")
        })
    );
    // Bus 5 with subordinate beyond the upstream port's range (2..=5).
    f.write32(dp, PRIMARY_BUS, 0x0006_0502);
    assert_eq!(
        t.report_add(dp, &mut f),
        Err(TopologyError::OutsideParentRange {
            bdf: dp,
            parent: b("01:00.0")
        })
    );
    // Overlapping a sibling's range without sharing its secondary bus.
    f.write32(dp, PRIMARY_BUS, 0x0005_0502);
    f.write32(b("02:01.0"), PRIMARY_BUS, 0x0005_0402);
    let mut t2 = fresh();
    for &x in &all {
        if x != dp && x != b("05:00.0") {
            t2.report_add(x, &mut f).unwrap();
        }
    }
    assert_eq!(
        t2.report_add(dp, &mut f),
        Err(TopologyError::BusRangeOverlap {
            bdf: dp,
            other: b("02:01.0")
        })
    );
    // Secondary not above the bridge's own bus.
    f.write32(dp, PRIMARY_BUS, 0x0005_0202);
    assert!(matches!(
        t.report_add(dp, &mut f),
        Err(TopologyError::InvalidBusRange { .. })
    ));
    t.check_invariants().unwrap();
}

#[test]
fn orphans_wait_for_their_bridge() {
    let mut f = fabric();
    f.enumerate();
    let mut t = fresh();
    assert_eq!(
        t.report_add(b("03:00.1"), &mut f),
        Ok(ReportOutcome::Orphaned)
    );
    assert_eq!(
        t.report_add(b("03:00.0"), &mut f),
        Ok(ReportOutcome::Orphaned)
    );
    assert_eq!(
        t.report_add(b("02:00.0"), &mut f),
        Ok(ReportOutcome::Orphaned)
    );
    assert_eq!(
        t.report_add(b("01:00.0"), &mut f),
        Ok(ReportOutcome::Orphaned)
    );
    assert!(t.is_empty());
    assert_eq!(
        t.report_add(b("00:01.0"), &mut f),
        Ok(ReportOutcome::Attached { adopted: 4 })
    );
    assert_eq!(t.len(), 5);
    assert_eq!(t.orphans().count(), 0);
    assert_eq!(t.parent_bridge(b("03:00.1")), Some(b("02:00.0")));
    assert_eq!(
        t.ancestors(b("03:00.1")).collect::<Vec<_>>(),
        vec![b("02:00.0"), b("01:00.0"), b("00:01.0")]
    );
    // VFs before their PF.
    assert_eq!(
        t.report_add(b("08:00.2"), &mut f),
        Ok(ReportOutcome::Orphaned)
    );
    t.report_add(b("00:03.0"), &mut f).unwrap();
    assert_eq!(
        t.report_add(b("08:00.0"), &mut f),
        Ok(ReportOutcome::Attached { adopted: 1 })
    );
    t.check_invariants().unwrap();
}

#[test]
fn removing_a_bridge_removes_its_subtree() {
    let mut f = fabric();
    let mut t = track(&mut f);
    let n = t.len();
    assert_eq!(t.report_remove(b("01:00.0")), Ok(8));
    assert_eq!(t.len(), n - 8);
    assert!(!t.contains(b("03:00.0")) && !t.contains(b("05:00.0")));
    assert_eq!(
        t.report_remove(b("01:00.0")),
        Err(TopologyError::NotTracked { bdf: b("01:00.0") })
    );
    // Removing a PF removes its VFs.
    assert_eq!(t.report_remove(b("08:00.0")), Ok(5));
    t.check_invariants().unwrap();
    assert_eq!(
        t.units().iter().map(|u| u.members.len()).sum::<usize>(),
        t.len()
    );
}

/// Canonical result: functions and units after in-order reports.
fn canonical() -> (Vec<Bdf>, Vec<Vec<Bdf>>) {
    let mut f = fabric();
    let mut t = track(&mut f);
    snapshot(&mut t)
}

fn snapshot(t: &mut Topology) -> (Vec<Bdf>, Vec<Vec<Bdf>>) {
    let fns = t.functions().map(|(b, _)| b).collect();
    let units = t.units().iter().map(|u| u.members.to_vec()).collect();
    (fns, units)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any order, duplicates, and removals followed by re-reports give the same tree and units.
    #[test]
    fn order_does_not_matter(
        perm in Just((0..20usize).collect::<Vec<_>>()).prop_shuffle(),
        dups in proptest::collection::vec((0..20usize, 0..40usize), 0..10),
        removes in proptest::collection::vec((0..20usize, 0..40usize), 0..4),
    ) {
        let mut f = fabric();
        let all = f.enumerate();
        prop_assert_eq!(all.len(), 20);
        // Build the op sequence: adds in `perm` order, duplicates inserted.
        let mut ops: Vec<(bool, Bdf)> = perm.iter().map(|&i| (true, all[i])).collect();
        for &(i, pos) in &dups {
            ops.insert(pos.min(ops.len()), (true, all[i]));
        }
        for &(i, pos) in &removes {
            ops.insert(pos.min(ops.len()), (false, all[i]));
        }
        let mut t = fresh();
        for &(add, x) in &ops {
            if add {
                prop_assert!(t.report_add(x, &mut f).is_ok());
            } else {
                let _ = t.report_remove(x);
            }
            prop_assert!(t.check_invariants().is_ok());
            // Units kept report by report equal a from-scratch computation.
            let reference = t.compute_units();
            for (b, _) in reference.iter().flat_map(|u| u.members.iter().map(move |m| (*m, u.id))) {
                prop_assert_eq!(t.unit_of(b), reference.unit_of(b).map(|u| u.id));
            }
        }
        // Re-report everything that may have been removed (with its subtree).
        let mut again: Vec<Bdf> = all.clone();
        again.reverse();
        for x in again {
            prop_assert!(t.report_add(x, &mut f).is_ok());
        }
        prop_assert_eq!(t.orphans().count(), 0);
        prop_assert_eq!(snapshot(&mut t), canonical());
    }
}

#[test]
fn several_host_bridges_in_one_segment() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
        )],
    );
    let all = f.enumerate();
    let cfg = pci::TopologyConfig::new(&[
        pci::HostBridge {
            segment: 0,
            bus_start: 0x80,
            bus_end: 0xff,
        },
        pci::HostBridge {
            segment: 0,
            bus_start: 0,
            bus_end: 0x7f,
        },
    ]);
    let mut t = Topology::new(cfg);
    for x in all {
        t.report_add(x, &mut f).unwrap();
    }
    assert_eq!(t.len(), 2);
    let e = TopologyError::NoFunction { bdf: b("00:05.0") };
    assert_eq!(e.to_string(), "0000:00:05.0: no function answers");
}
