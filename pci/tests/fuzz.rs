//! Hostile input: random reports and random config-space contents (all-ones,
//! capability loops, absurd bus numbers) must never panic the tracker, and
//! its invariants must hold: a consistent tree, every function in exactly
//! one unit. (Runs as a proptest in `cargo test`; no nightly needed.)

mod common;
use common::*;

use pci::sim::{Fabric, Spec, devfn};
use pci::{Bdf, ConfigPort, Topology};
use proptest::prelude::*;

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
                            Spec::qemu_x3130_downstream().acs(None).child(
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
                Spec::qemu_root_port().child(
                    0,
                    0,
                    Spec::qemu_pcie_pci_bridge()
                        .child(1, 0, Spec::conventional(0x8086, 0x100e))
                        .child(2, 0, Spec::conventional(0x8086, 0x100e)),
                ),
            ),
            (
                devfn(2, 1),
                Spec::qemu_root_port()
                    .acs(None)
                    .child(0, 0, Spec::endpoint(1, 2).sriov(3, 4)),
            ),
            (devfn(0x1f, 0), Spec::rciep(0x1234, 5)),
            (devfn(0x1f, 1), Spec::rciep(0x1234, 6)),
        ],
    )
}

#[derive(Clone, Debug)]
enum Op {
    Add(usize),
    AddRandom(u8, u8),
    Remove(usize),
    /// Poke bytes into a function's config space.
    Poke(usize, u16, Vec<u8>),
    /// Write through the port (register semantics apply: resets, bus numbers).
    Write(usize, u16, u32),
    Units,
}

fn op() -> impl Strategy<Value = Op> {
    // Offsets that matter most: header, bus numbers, capability pointers, caps, ext caps.
    let offset = prop_oneof![
        0u16..0x40,
        Just(0x34u16),
        0x40u16..0x100,
        0x100u16..0x180,
        Just(0x18u16),
        Just(0x19u16),
        Just(0x1au16),
    ];
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..4),
        Just(vec![0xff, 0xff, 0xff, 0xff]),
        Just(vec![0x40]),
        Just(vec![0x00]),
    ];
    prop_oneof![
        4 => (0..16usize).prop_map(Op::Add),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(b, d)| Op::AddRandom(b, d)),
        2 => (0..16usize).prop_map(Op::Remove),
        2 => (0..16usize, offset.clone(), bytes).prop_map(|(i, o, b)| Op::Poke(i, o, b)),
        1 => (0..16usize, offset, any::<u32>()).prop_map(|(i, o, v)| Op::Write(i, o & !3, v)),
        1 => Just(Op::Units),
    ]
}

fn check(t: &mut Topology) -> Result<(), TestCaseError> {
    prop_assert_eq!(t.check_invariants(), Ok(()));
    let n = t.len();
    let fns: Vec<Bdf> = t.functions().map(|(b, _)| b).collect();
    // Incrementally maintained units equal a from-scratch computation.
    let reference = t.compute_units();
    for x in &fns {
        prop_assert_eq!(t.unit_of(*x), reference.unit_of(*x).map(|u| u.id));
    }
    prop_assert_eq!(t.units(), &reference);
    let table = t.units();
    let mut seen: Vec<Bdf> = table
        .iter()
        .flat_map(|u| u.members.iter().copied())
        .collect();
    seen.sort();
    prop_assert_eq!(seen.len(), n, "every function in exactly one unit");
    prop_assert_eq!(&seen, &fns);
    for x in &fns {
        let u = table.unit_of(*x).unwrap();
        prop_assert!(u.members.contains(x));
        prop_assert_eq!(u.id.0, u.members[0]);
    }
    // Reset queries never panic either.
    for &x in &fns {
        if let Ok(ms) = t.reset_methods(x) {
            for &m in ms.as_slice() {
                let scope = t.reset_scope(x, m).unwrap();
                prop_assert!(scope.contains(&x) || !m.is_function_level());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn hostile_reports_and_config(ops in proptest::collection::vec(op(), 1..60)) {
        let mut f = fabric();
        let all = f.enumerate();
        let mut t = Topology::new(config(&[(0, 0)]));
        for op in ops {
            match op {
                Op::Add(i) => {
                    let _ = t.report_add(all[i % all.len()], &mut f);
                }
                Op::AddRandom(bus, df) => {
                    let _ = t.report_add(Bdf::from_devfn(0, bus, df), &mut f);
                }
                Op::Remove(i) => {
                    let _ = t.report_remove(all[i % all.len()]);
                }
                Op::Poke(i, o, bytes) => {
                    f.poke(all[i % all.len()], o, &bytes);
                }
                Op::Write(i, o, v) => {
                    f.write32(all[i % all.len()], o, v);
                    f.advance_ns(1_000_000_000);
                }
                Op::Units => check(&mut t)?,
            }
        }
        check(&mut t)?;
        prop_assert_eq!(f.bad_accesses(), 0, "out-of-range or misaligned config access");
    }
}

/// Reads that are all-ones everywhere: nothing is accepted.
#[test]
fn all_ones_port() {
    struct Dead;
    impl ConfigPort for Dead {
        fn read32(&mut self, _: Bdf, _: u16) -> u32 {
            u32::MAX
        }
        fn write32(&mut self, _: Bdf, _: u16, _: u32) {}
        fn write16(&mut self, _: Bdf, _: u16, _: u16) {}
        fn write8(&mut self, _: Bdf, _: u16, _: u8) {}
    }
    let mut t = Topology::new(config(&[(0, 0)]));
    for bus in [0u8, 1, 255] {
        assert!(
            t.report_add(Bdf::new(0, bus, 0, 0), &mut Dead as &mut dyn ConfigPort)
                .is_err()
        );
    }
    assert!(t.is_empty());
}
