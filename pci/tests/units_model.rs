//! Units of random topologies against a naive model of the same rules
//! (pairwise relation + closure), to check the interval/union-find machinery.

mod common;
use common::*;

use pci::sim::{ACS_ENABLED, ACS_NONE_ADVERTISED, ACS_QEMU, Fabric, SimAcs, Spec, devfn};
use pci::units::{acs_isolated, isolated_from_siblings};
use pci::{Bdf, FunctionKind, Topology};
use proptest::prelude::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Usually the header bit QEMU gives (function 0 of a multi-function
    /// slot only), sometimes forced on or off.
    fn header_bit(&mut self, s: Spec) -> Spec {
        match self.below(4) {
            0 => s.multifunction(true),
            1 => s.multifunction(false),
            _ => s,
        }
    }
    fn acs(&mut self) -> Option<SimAcs> {
        match self.below(4) {
            0 => None,
            1 => Some(ACS_QEMU),
            2 => Some(ACS_NONE_ADVERTISED),
            _ => Some(ACS_ENABLED),
        }
    }
}

/// Children of a port or switch downstream port.
fn below_port(r: &mut Rng, depth: u32, spec: Spec) -> Spec {
    match r.below(6) {
        0 => spec,
        1 | 2 => {
            let n = 1 + r.below(3) as u8;
            let mut s = spec;
            for f in 0..n {
                let acs = r.acs();
                let e = r.header_bit(Spec::endpoint(0x1000, f as u16).acs(acs));
                s = s.child(0, f, e);
            }
            s
        }
        3 if depth < 2 => {
            let mut up = Spec::qemu_x3130_upstream();
            for d in 0..1 + r.below(3) as u8 {
                let dp = Spec::qemu_x3130_downstream().acs(r.acs());
                up = up.child(d, 0, below_port(r, depth + 1, dp));
            }
            spec.child(0, 0, up)
        }
        4 => {
            let mut br = Spec::qemu_pcie_pci_bridge();
            for d in 0..1 + r.below(3) as u8 {
                br = br.child(d + 1, 0, Spec::conventional(0x8086, 0x100e));
            }
            spec.child(0, 0, br)
        }
        _ => spec.child(
            0,
            0,
            Spec::endpoint(0x8086, 0x1521).sriov(r.below(3) as u16, 0x1520),
        ),
    }
}

fn random_fabric(seed: u64) -> Fabric {
    let mut r = Rng(seed | 1);
    let mut roots = Vec::new();
    for dev in 0..1 + r.below(5) as u8 {
        if r.below(4) == 0 {
            for f in 0..1 + r.below(2) as u8 {
                let acs = r.acs();
                let e = r.header_bit(Spec::rciep(0x1234, f as u16).acs(acs));
                roots.push((devfn(dev, f), e));
            }
        } else {
            for f in 0..1 + r.below(2) as u8 {
                let acs = r.acs();
                let rp = r.header_bit(Spec::qemu_root_port().acs(acs));
                roots.push((devfn(dev, f), below_port(&mut r, 0, rp)));
            }
        }
    }
    Fabric::new().with_root_complex(0, 0, &roots)
}

/// The rules of `pci::units`, written naively.
fn model(t: &Topology) -> Vec<Vec<Bdf>> {
    let fns: Vec<Bdf> = t.functions().map(|(b, _)| b).collect();
    let quirks = &t.config().acs_quirks;
    let iso = |b: Bdf| acs_isolated(t.function(b).unwrap(), quirks);
    let iso_sibling = |b: Bdf| isolated_from_siblings(t.function(b).unwrap(), quirks);
    let kind = |b: Bdf| t.function(b).unwrap().kind;
    let mut pairs: Vec<(Bdf, Bdf)> = Vec::new();
    for &a in &fns {
        // Two functions of one slot (VFs are no slot's members) are apart
        // only if both are isolated from their siblings.
        for &b in &fns {
            let same_slot = (a.segment, a.bus, a.device()) == (b.segment, b.bus, b.device());
            let members = ![a, b]
                .iter()
                .any(|&x| kind(x) == FunctionKind::VirtualFunction);
            if a != b && same_slot && members && !(iso_sibling(a) && iso_sibling(b)) {
                pairs.push((a, b));
            }
        }
        let merges = match kind(a) {
            FunctionKind::PcieToPciBridge | FunctionKind::ConventionalBridge => true,
            FunctionKind::RootPort | FunctionKind::DownstreamPort => !iso(a),
            _ => false,
        };
        if merges {
            for b in t.subtree(a) {
                pairs.push((a, b));
            }
        }
        // A leaky downstream port joins all its siblings and their subtrees.
        if kind(a) == FunctionKind::DownstreamPort && !iso(a) && t.subtree(a).next().is_some() {
            for &s in &fns {
                if s.bus == a.bus
                    && s.segment == a.segment
                    && kind(s) == FunctionKind::DownstreamPort
                {
                    pairs.push((a, s));
                    for b in t.subtree(s) {
                        pairs.push((a, b));
                    }
                }
            }
        }
    }
    // Closure by relabelling.
    let mut label: Vec<usize> = (0..fns.len()).collect();
    let pos = |b: Bdf| fns.binary_search(&b).unwrap();
    loop {
        let mut changed = false;
        for &(a, b) in &pairs {
            let (la, lb) = (label[pos(a)], label[pos(b)]);
            if la != lb {
                let (keep, drop) = (la.min(lb), la.max(lb));
                for l in label.iter_mut() {
                    if *l == drop {
                        *l = keep;
                    }
                }
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut units: Vec<Vec<Bdf>> = Vec::new();
    for (i, &b) in fns.iter().enumerate() {
        match units.iter_mut().find(|u| label[pos(u[0])] == label[i]) {
            Some(u) => u.push(b),
            None => units.push(vec![b]),
        }
    }
    units
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Reports in a random order: incremental units match the others too.
    #[test]
    fn incremental_units_in_any_order(seed in any::<u64>()) {
        let mut f = random_fabric(seed);
        let mut all = f.enumerate();
        let mut r = Rng(seed.rotate_left(17) | 1);
        for i in (1..all.len()).rev() {
            all.swap(i, r.below(i as u64 + 1) as usize);
        }
        let mut t = Topology::new(config(&[(0, 0)]));
        for (n, &x) in all.iter().enumerate() {
            prop_assert!(t.report_add(x, &mut f).is_ok());
            if n % 7 == 0 {
                let reference = t.compute_units();
                let fns: Vec<Bdf> = t.functions().map(|(b, _)| b).collect();
                for b in fns {
                    prop_assert_eq!(t.unit_of(b), reference.unit_of(b).map(|u| u.id));
                }
            }
        }
        let reference = t.compute_units();
        prop_assert_eq!(t.units(), &reference);
        prop_assert_eq!(reference.iter().map(|u| u.members.to_vec()).collect::<Vec<_>>(), model(&t));
    }

    #[test]
    fn units_match_naive_model(seed in any::<u64>()) {
        let mut f = random_fabric(seed);
        let mut t = track(&mut f);
        let got: Vec<Vec<Bdf>> = t.units().iter().map(|u| u.members.to_vec()).collect();
        prop_assert_eq!(got, model(&t));
        let reference = t.compute_units();
        prop_assert_eq!(t.units(), &reference);
    }
}
