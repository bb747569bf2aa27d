//! Assignment units: the sets of functions that must go to one owner together.
//!
//! # The rule
//!
//! Two functions share a unit when a transaction from one can reach the other
//! without passing a point that forces it up to the host bridge (and its
//! IOMMU). Such a point is a root or downstream port with ACS Source
//! Validation, P2P Request Redirect, P2P Completion Redirect and Upstream
//! Forwarding (SV|RR|CR|UF) enabled, or the host bridge itself. Concretely,
//! units are the smallest partition of the tracked functions such that:
//!
//! 1. **Multi-function devices.** The functions of one slot (segment, bus,
//!    device; VFs are not slot members) share a unit unless every one of
//!    them is ACS-isolated from its siblings: a function without ACS reaches
//!    its siblings inside the device whether or not they redirect their own
//!    requests (Linux keeps a function with ACS apart from siblings without;
//!    we do not). A slot where more than one function answers is
//!    multi-function whatever the header bits say: the spec defines the
//!    Multi-Function bit in function 0 only, QEMU sets it there only, and a
//!    function 0 that leaves it clear while siblings answer is not believed.
//!    A function is isolated from its siblings if a quirk says so, or when
//!    its ACS controls (among SV|RR|CR|UF, those it advertises) are all
//!    enabled (ports, endpoints, RCiEPs, upstream ports); VFs always;
//!    PCIe-to-PCI bridges, RCECs and conventional functions never.
//! 2. **DMA aliasing.** A PCIe-to-PCI bridge (or conventional bridge)
//!    shares a unit with everything below it: requests from conventional
//!    devices carry the bridge's requester id.
//! 3. **Ports without ACS.** A root or downstream port that is not
//!    ACS-isolated shares a unit with everything below it.
//! 4. **Switches.** If a downstream port of a switch is not ACS-isolated and
//!    has functions below it, every downstream port of that switch and
//!    everything below them share a unit: a request entering the switch
//!    through that port is routed across the switch's internal bus to any
//!    sibling's subtree, whether or not the sibling has ACS. (Linux up to at
//!    least 6.1 splits such a switch per downstream port, which is unsafe.)
//! 5. **Quirks.** [`AcsQuirk`] entries, keyed by vendor and device id range,
//!    declare functions isolated (e.g. root ports known not to forward
//!    peer-to-peer) or not isolated, overriding the register test.
//!
//! Before a function is tracked, the tracker enables the ACS controls it
//! advertises among [`crate::topology::AcsPolicy::enable`] (SV|RR|CR|UF by
//! default), so units reflect what the hypervisor enforced, not what
//! firmware left behind. An assignment reads ACS again and applies the
//! policy again first ([`crate::vpci::Ownership::assign`]): the hardware
//! domain may have changed ACS Control since, where no guest depended on it.
//!
//! A unit's id is its lowest address, so ids are stable while that function
//! stays, and units only depend on the tree, never on report order.
//!
//! Units are maintained as each report is attached (a union-find: the new
//! function's slot, the bridges above it, its switch), so
//! [`Topology::unit_of`] is always current and costs O(log n). A removal may
//! split a unit: the sets are then rebuilt at the next query by replaying the
//! tree in address order (O(n)). The full [`UnitTable`] is built on demand in
//! O(n). [`Topology::compute_units`] computes the same table from scratch
//! with interval merging; the property tests check the two always agree.
//!
//! # Examples
//!
//! ```text
//! 00:01.0 root port, ACS on ── 01:00.0 nvme          units {00:01.0} {01:00.0}
//! 00:02.0 root port, no ACS ── 02:00.0 e1000e        unit  {00:02.0, 02:00.0}
//! 00:03.0 root port, ACS on ── 03:00.0 switch up ─┬─ 04:00.0 down, no ACS ── 05:00.0 e1000e
//!                                                 └─ 04:01.0 down, no ACS ── 06:00.0 nvme
//!         units {00:03.0} {03:00.0} {04:00.0, 04:01.0, 05:00.0, 06:00.0}
//! 00:04.0 root port, ACS on ── 07:00.0 pcie-pci-bridge ─┬─ 08:01.0 conventional
//!                                                       └─ 08:02.0 conventional
//!         units {00:04.0} {07:00.0, 08:01.0, 08:02.0}
//! 00:1f.0 + 00:1f.1 RCiEP functions of one device without ACS: unit {00:1f.0, 00:1f.1}
//! 01:00.0 + 01:00.1 e1000e functions (Multi-Function bit in function 0 only),
//!         01:00.0 with ACS, 01:00.1 without:                unit {01:00.0, 01:00.1}
//! ```
//!
//! The tests in `tests/units.rs` check these and more by hand.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::addr::Bdf;
use crate::regs::*;
use crate::topology::{Function, FunctionKind, Topology, bus_span};

/// What a quirk says about a function's isolation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcsQuirkEffect {
    /// Behaves as if ACS SV|RR|CR|UF were enabled (no peer-to-peer path).
    Isolated,
    /// Never isolating, whatever its registers say.
    NotIsolated,
}

/// A quirk table entry, keyed by vendor and an inclusive device id range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcsQuirk {
    pub vendor: u16,
    pub device_first: u16,
    pub device_last: u16,
    pub effect: AcsQuirkEffect,
}

impl AcsQuirk {
    pub const fn new(
        vendor: u16,
        device_first: u16,
        device_last: u16,
        effect: AcsQuirkEffect,
    ) -> Self {
        Self {
            vendor,
            device_first,
            device_last,
            effect,
        }
    }

    fn matches(&self, f: &Function) -> bool {
        f.vendor == self.vendor && (self.device_first..=self.device_last).contains(&f.device)
    }
}

/// Default quirks: root ports known not to forward peer-to-peer, and
/// multi-function endpoints known to have no internal peer-to-peer path
/// (a subset of Linux's `pci_dev_acs_enabled[]`).
pub fn default_acs_quirks() -> Vec<AcsQuirk> {
    use AcsQuirkEffect::Isolated;
    alloc::vec![
        // Qualcomm root ports.
        AcsQuirk::new(0x17cb, 0x0400, 0x0401, Isolated),
        AcsQuirk::new(0x17cb, 0x0111, 0x0111, Isolated),
        AcsQuirk::new(0x17cb, 0x0115, 0x0115, Isolated),
        AcsQuirk::new(0x17cb, 0x0120, 0x0120, Isolated),
        // HXT root port.
        AcsQuirk::new(0x1dbf, 0x0401, 0x0401, Isolated),
        // Cavium ThunderX1 root ports.
        AcsQuirk::new(0x177d, 0xa000, 0xa7ff, Isolated),
        AcsQuirk::new(0x177d, 0xaf84, 0xaf84, Isolated),
        AcsQuirk::new(0x177d, 0xb884, 0xb884, Isolated),
        // Applied Micro X-Gene / Ampere root ports.
        AcsQuirk::new(0x10e8, 0xe004, 0xe00c, Isolated),
        // NXP Layerscape LX2 root ports.
        AcsQuirk::new(0x1957, 0x8d00, 0x8dff, Isolated),
        // Amazon Annapurna root port.
        AcsQuirk::new(0x1c36, 0x0031, 0x0031, Isolated),
        // Broadcom root port.
        AcsQuirk::new(0x14e4, 0xd714, 0xd714, Isolated),
        // Solarflare multi-function NICs.
        AcsQuirk::new(0x1924, 0x0000, 0xffff, Isolated),
    ]
}

/// Whether a function counts as ACS-isolated on its own: a root or
/// downstream port with its ACS controls enabled isolates its subtree
/// (rules 3 and 4); a single-function endpoint has no sibling to reach.
pub fn acs_isolated(f: &Function, quirks: &[AcsQuirk]) -> bool {
    isolated(f, quirks, f.is_multifunction())
}

/// Whether a function of a slot with several functions keeps its requests
/// from its siblings (rule 1 above). The function is judged as part of a
/// multi-function device, whatever its own header bit says: it has a
/// sibling.
pub fn isolated_from_siblings(f: &Function, quirks: &[AcsQuirk]) -> bool {
    isolated(f, quirks, true)
}

fn isolated(f: &Function, quirks: &[AcsQuirk], multifunction: bool) -> bool {
    if let Some(q) = quirks.iter().find(|q| q.matches(f)) {
        return q.effect == AcsQuirkEffect::Isolated;
    }
    match f.kind {
        FunctionKind::VirtualFunction => true,
        FunctionKind::Conventional
        | FunctionKind::ConventionalBridge
        | FunctionKind::PcieToPciBridge
        | FunctionKind::PciToPcieBridge
        | FunctionKind::Rcec => false,
        FunctionKind::RootPort | FunctionKind::DownstreamPort => acs_flags_enabled(f),
        FunctionKind::Endpoint
        | FunctionKind::LegacyEndpoint
        | FunctionKind::Rciep
        | FunctionKind::UpstreamPort => !multifunction || acs_flags_enabled(f),
    }
}

/// Whether rule 1 counts a function as a member of its slot. VFs are not:
/// their routing ids follow the PF's offset and stride, not slots.
pub fn slot_member(f: &Function) -> bool {
    f.kind != FunctionKind::VirtualFunction
}

/// ACS present and every isolation control it advertises enabled. Controls
/// it does not advertise count as hard-wired on (as in Linux): a device
/// without e.g. a peer-to-peer path need not implement its redirect.
pub fn acs_flags_enabled(f: &Function) -> bool {
    if f.caps.acs == 0 {
        return false;
    }
    let required = ACS_ISOLATION & f.acs_cap;
    f.acs_ctrl & required == required
}

/// Identifies a unit: its lowest function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitId(pub Bdf);

/// One assignment unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit<'a> {
    pub id: UnitId,
    /// Members in address order.
    pub members: &'a [Bdf],
}

/// All units of a tree. Compact: about 16 bytes per function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnitTable {
    /// Attached functions in address order.
    keys: Vec<Bdf>,
    /// Unit index of each function of `keys`.
    unit_of: Vec<u32>,
    /// Members of all units, unit after unit, units in id order.
    members: Vec<Bdf>,
    /// Start of each unit in `members`, plus the end.
    starts: Vec<u32>,
}

impl UnitTable {
    /// Number of units.
    pub fn len(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn unit(&self, i: usize) -> Option<Unit<'_>> {
        let s = *self.starts.get(i)? as usize;
        let e = *self.starts.get(i + 1)? as usize;
        let members = self.members.get(s..e)?;
        Some(Unit {
            id: UnitId(*members.first()?),
            members,
        })
    }

    /// Units in id order.
    pub fn iter(&self) -> impl Iterator<Item = Unit<'_>> + '_ {
        (0..self.len()).filter_map(|i| self.unit(i))
    }

    /// The unit holding `bdf` (O(log n)).
    pub fn unit_of(&self, bdf: Bdf) -> Option<Unit<'_>> {
        let i = self.keys.binary_search(&bdf).ok()?;
        self.unit(*self.unit_of.get(i)? as usize)
    }

    /// The unit with this id.
    pub fn get(&self, id: UnitId) -> Option<Unit<'_>> {
        self.unit_of(id.0).filter(|u| u.id == id)
    }

    /// From functions in address order and their unit numbers (numbered in
    /// order of each unit's lowest member).
    fn build(keys: Vec<Bdf>, unit_of: Vec<u32>, count: u32) -> Self {
        let mut starts = alloc::vec![0u32; count as usize + 1];
        for &u in &unit_of {
            starts[u as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut fill: Vec<u32> = starts.clone();
        let mut members = alloc::vec![Bdf::from_key(0); keys.len()];
        for (j, &u) in unit_of.iter().enumerate() {
            let slot = &mut fill[u as usize];
            members[*slot as usize] = keys[j];
            *slot += 1;
        }
        UnitTable {
            keys,
            unit_of,
            members,
            starts,
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        4 * (self.keys.capacity()
            + self.unit_of.capacity()
            + self.members.capacity()
            + self.starts.capacity())
    }
}

struct UnionFind(Vec<u32>);

impl UnionFind {
    fn find(&mut self, mut x: u32) -> u32 {
        while self.0[x as usize] != x {
            let p = self.0[x as usize];
            self.0[x as usize] = self.0[p as usize];
            x = p;
        }
        x
    }
    /// The smaller root wins, so a set's root is its lowest index.
    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra < rb {
            self.0[rb as usize] = ra;
        } else if rb < ra {
            self.0[ra as usize] = rb;
        }
    }
}

impl Topology {
    /// Computes the units of the current tree from scratch, in O(n log n),
    /// independently of the incremental sets (a reference for tests).
    pub fn compute_units(&self) -> UnitTable {
        let quirks = &self.config.acs_quirks;
        let mut keys: Vec<Bdf> = Vec::with_capacity(self.fns.len());
        // Per function: kind, bus range, ACS-isolated, and for rule 1:
        // a slot member, isolated from its siblings.
        let mut info: Vec<(FunctionKind, u8, u8, bool)> = Vec::with_capacity(self.fns.len());
        let mut slot_info: Vec<(bool, bool)> = Vec::with_capacity(self.fns.len());
        for (&b, f) in self.fns.iter() {
            keys.push(b);
            info.push((f.kind, f.secondary, f.subordinate, acs_isolated(f, quirks)));
            slot_info.push((slot_member(f), isolated_from_siblings(f, quirks)));
        }
        let n = keys.len();
        let mut uf = UnionFind((0..n as u32).collect());
        // Index range of the functions on buses lo..=hi of a segment.
        let span = |seg: u16, lo: u8, hi: u8| -> (u32, u32) {
            let r = bus_span(seg, lo, hi);
            let a = keys.partition_point(|k| k < r.start());
            let b = keys.partition_point(|k| k <= r.end());
            (a as u32, b as u32)
        };
        // (first, end, anchor): union the anchor with everything in first..end.
        let mut intervals: Vec<(u32, u32, u32)> = Vec::new();
        let mut slot_start = 0usize;
        let mut bus_start = 0usize;
        for i in 0..n {
            let b = keys[i];
            let (kind, sec, sub, iso) = info[i];
            // Rule 1, at the last function of each slot: its members are one
            // unit unless each is isolated from its siblings.
            let slot = |k: Bdf| (k.segment, k.bus, k.device());
            if i > 0 && slot(keys[i - 1]) != slot(b) {
                slot_start = i;
            }
            if i + 1 == n || slot(keys[i + 1]) != slot(b) {
                let members = || (slot_start..=i).filter(|&j| slot_info[j].0);
                let open = members().any(|j| !slot_info[j].1);
                if open && let Some(first) = members().next() {
                    for j in members() {
                        uf.union(first as u32, j as u32);
                    }
                }
            }
            // Rules 2 and 3: a bridge that does not isolate its subtree.
            let merges_below = match kind {
                FunctionKind::PcieToPciBridge
                | FunctionKind::PciToPcieBridge
                | FunctionKind::ConventionalBridge => true,
                FunctionKind::RootPort | FunctionKind::DownstreamPort => !iso,
                _ => false,
            };
            if merges_below {
                let (a, e) = span(b.segment, sec, sub);
                intervals.push((a, e, i as u32));
            }
            // Rule 4, at the last function of each bus: a switch with a
            // non-isolated, populated downstream port.
            if i > 0 && (keys[i - 1].segment, keys[i - 1].bus) != (b.segment, b.bus) {
                bus_start = i;
            }
            let bus_ends =
                i + 1 == n || (keys[i + 1].segment, keys[i + 1].bus) != (b.segment, b.bus);
            if bus_ends {
                let ports =
                    || (bus_start..=i).filter(|&j| info[j].0 == FunctionKind::DownstreamPort);
                let leaky = ports().any(|j| {
                    let (sa, se) = span(keys[j].segment, info[j].1, info[j].2);
                    !info[j].3 && se > sa
                });
                if leaky && let Some(anchor) = ports().next() {
                    for j in ports() {
                        uf.union(anchor as u32, j as u32);
                        let (sa, se) = span(keys[j].segment, info[j].1, info[j].2);
                        intervals.push((sa, se, anchor as u32));
                    }
                }
            }
        }
        // Union the intervals in O(n): merge overlapping ones first.
        intervals.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for &(a, e, anchor) in &intervals {
            if a < e {
                uf.union(anchor, a);
                match merged.last_mut() {
                    Some(last) if a < last.1 => last.1 = last.1.max(e),
                    _ => merged.push((a, e)),
                }
            }
        }
        for (a, e) in merged {
            for j in a + 1..e {
                uf.union(a, j);
            }
        }
        // Number units by their lowest member (the set's root).
        let mut unit_of = alloc::vec![u32::MAX; n];
        let mut count = 0u32;
        for j in 0..n as u32 {
            let r = uf.find(j);
            if r == j {
                unit_of[j as usize] = count;
                count += 1;
            } else {
                unit_of[j as usize] = unit_of[r as usize];
            }
        }
        UnitTable::build(keys, unit_of, count)
    }

    /// All units. The table is rebuilt (O(n)) on the first call after a
    /// change, from the incrementally maintained sets.
    pub fn units(&mut self) -> &UnitTable {
        if self.units.is_none() {
            self.ensure_incremental();
            let mut inc = self.inc.take().unwrap_or_default();
            let n = self.fns.len();
            let mut keys = Vec::with_capacity(n);
            let mut unit_of = Vec::with_capacity(n);
            let mut number = alloc::vec![u32::MAX; n];
            let mut count = 0u32;
            for j in self.fns.indices() {
                let Some((b, _)) = self.fns.at(j) else {
                    continue;
                };
                let r = inc.find(j as u32) as usize;
                if number[r] == u32::MAX {
                    number[r] = count;
                    count += 1;
                }
                keys.push(b);
                unit_of.push(number[r]);
            }
            self.inc = Some(inc);
            self.units = Some(UnitTable::build(keys, unit_of, count));
        }
        self.units.get_or_insert_with(UnitTable::default)
    }

    /// The units if the table is up to date (no change since the last
    /// [`Topology::units`]), for callers that only hold `&self`.
    pub fn units_if_fresh(&self) -> Option<&UnitTable> {
        self.units.as_ref()
    }

    /// The unit of an attached function, always current: units are updated
    /// as each report is attached (O(depth) unions), so this is O(log n).
    pub fn unit_of(&mut self, bdf: Bdf) -> Option<UnitId> {
        self.ensure_incremental();
        let i = self.fns.index(bdf)?;
        let inc = self.inc.as_mut()?;
        let r = inc.find(i as u32) as usize;
        inc.min.get(r).copied().map(UnitId)
    }

    /// Members of the unit of `bdf`.
    pub fn unit_members(&mut self, bdf: Bdf) -> Vec<Bdf> {
        self.units()
            .unit_of(bdf)
            .map(|u| u.members.to_vec())
            .unwrap_or_default()
    }
}

/// Union-find over the tracker's function slots, updated as each function is
/// attached. Additions only merge sets; a removal may split one, so it drops
/// this state and the next query replays every function in address order.
#[derive(Debug, Default)]
pub(crate) struct IncrementalUnits {
    parent: Vec<u32>,
    /// Lowest member of each set, valid at its root.
    min: Vec<Bdf>,
    /// Internal buses of switches that rule 4 merged: (segment << 8 | bus).
    leaky: BTreeSet<u32>,
}

impl IncrementalUnits {
    fn find(&mut self, mut x: u32) -> u32 {
        while let Some(&p) = self.parent.get(x as usize) {
            if p == x {
                break;
            }
            let gp = self.parent.get(p as usize).copied().unwrap_or(p);
            self.parent[x as usize] = gp;
            x = p;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb || ra as usize >= self.parent.len() || rb as usize >= self.parent.len() {
            return;
        }
        let (root, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[child as usize] = root;
        self.min[root as usize] = self.min[root as usize].min(self.min[child as usize]);
    }
}

fn merges_below(kind: FunctionKind, isolated: bool) -> bool {
    match kind {
        FunctionKind::PcieToPciBridge
        | FunctionKind::PciToPcieBridge
        | FunctionKind::ConventionalBridge => true,
        FunctionKind::RootPort | FunctionKind::DownstreamPort => !isolated,
        _ => false,
    }
}

impl Topology {
    /// Updates the units for a function just attached (its parent bridge,
    /// or PF, is attached already).
    pub(crate) fn units_on_attach(&mut self, bdf: Bdf) {
        self.units = None;
        if let Some(mut inc) = self.inc.take() {
            let ok = self.units_add(&mut inc, bdf, true);
            // On any inconsistency fall back to a replay at the next query.
            self.inc = ok.then_some(inc);
        }
    }

    /// After a removal: sets may split, replay at the next query.
    pub(crate) fn units_on_detach(&mut self) {
        self.units = None;
        self.inc = None;
    }

    fn ensure_incremental(&mut self) {
        if self.inc.is_some() {
            return;
        }
        let n = self.fns.len();
        let mut inc = IncrementalUnits {
            parent: (0..n as u32).collect(),
            min: (0..n)
                .map(|i| self.fns.at(i).map_or(Bdf::from_key(0), |(b, _)| b))
                .collect(),
            leaky: BTreeSet::new(),
        };
        let order: Vec<Bdf> = self.fns.iter().map(|(b, _)| *b).collect();
        for b in order {
            self.units_add(&mut inc, b, false);
        }
        self.inc = Some(inc);
    }

    /// Applies the rules between `bdf` and the functions already attached.
    fn units_add(&self, inc: &mut IncrementalUnits, bdf: Bdf, push: bool) -> bool {
        let quirks = &self.config.acs_quirks;
        let Some((i, f)) = self.fns.get_indexed(bdf) else {
            return false;
        };
        if push {
            if i != inc.parent.len() {
                return false;
            }
            inc.parent.push(i as u32);
            inc.min.push(bdf);
        }
        let i = i as u32;
        // Rule 1: joins each sibling unless both are isolated from their
        // siblings. Whatever the order of arrival, once one member of a
        // slot is not isolated every member is joined to it.
        if slot_member(f) {
            let open = !isolated_from_siblings(f, quirks);
            let base = bdf.devfn & !7;
            let slot = Bdf::from_devfn(bdf.segment, bdf.bus, base)
                ..=Bdf::from_devfn(bdf.segment, bdf.bus, base | 7);
            for j in self.fns.range_indices(slot) {
                if j as u32 != i
                    && let Some((_, g)) = self.fns.at(j)
                    && slot_member(g)
                    && (open || !isolated_from_siblings(g, quirks))
                {
                    inc.union(i, j as u32);
                }
            }
        }
        // Rule 4 for a downstream port joining a merged switch.
        if f.kind == FunctionKind::DownstreamPort
            && inc.leaky.contains(&bus_key(bdf.segment, bdf.bus))
            && let Some(j) = self
                .fns
                .range_indices(bus_span(bdf.segment, bdf.bus, bdf.bus))
                .find(|&j| {
                    j as u32 != i
                        && self
                            .fns
                            .at(j)
                            .is_some_and(|(_, g)| g.kind == FunctionKind::DownstreamPort)
                })
        {
            inc.union(i, j as u32);
        }
        // Rules 2-4 from the bridges above (a VF's are its PF's: its
        // routing id may be on a later bus of the PF's parent's range).
        let mut cur = self.bus_parent(f.physfn().unwrap_or(bdf));
        while let Some(a) = cur {
            let Some((ai, fa)) = self.fns.get_indexed(a) else {
                return false;
            };
            let a_isolated = acs_isolated(fa, quirks);
            if merges_below(fa.kind, a_isolated) {
                inc.union(i, ai as u32);
            }
            if fa.kind == FunctionKind::DownstreamPort {
                let key = bus_key(a.segment, a.bus);
                if inc.leaky.contains(&key) {
                    inc.union(i, ai as u32);
                } else if !a_isolated {
                    // First function below a port without ACS: the switch merges.
                    self.merge_switch(inc, a.segment, a.bus);
                    inc.leaky.insert(key);
                }
            }
            cur = self.bus_parent(a);
        }
        true
    }

    /// Rule 4: every downstream port on a switch's internal bus and
    /// everything below them become one set.
    fn merge_switch(&self, inc: &mut IncrementalUnits, segment: u16, bus: u8) {
        let mut anchor = None;
        for j in self.fns.range_indices(bus_span(segment, bus, bus)) {
            let Some((_, g)) = self.fns.at(j) else {
                continue;
            };
            if g.kind != FunctionKind::DownstreamPort {
                continue;
            }
            let a = *anchor.get_or_insert(j as u32);
            inc.union(a, j as u32);
            for k in self
                .fns
                .range_indices(bus_span(segment, g.secondary, g.subordinate))
            {
                inc.union(a, k as u32);
            }
        }
    }
}

fn bus_key(segment: u16, bus: u8) -> u32 {
    ((segment as u32) << 8) | bus as u32
}
