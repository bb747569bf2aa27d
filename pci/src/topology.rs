//! The PCIe tree, rebuilt from "function added / removed" reports.
//!
//! The hardware domain enumerates and reports functions one by one, in any
//! order. Each report is validated against config space through a
//! [`ConfigPort`]:
//! - the function must answer (vendor id not all-ones; an SR-IOV VF, whose
//!   vendor id reads all-ones, must answer its other registers and sit at a
//!   routing id its PF's SR-IOV capability gives);
//! - its header type must match what its PCIe capability says it is;
//! - a function on bus N needs a reported bridge whose secondary bus is N,
//!   or N must be the host bridge's root bus;
//! - a bridge's bus range must lie inside its parent's and not overlap its
//!   siblings'.
//!
//! A function whose parent has not been reported yet waits as an orphan and
//! is attached when the bridge (or PF) arrives. Removing a bridge removes its
//! subtree; removing a PF removes its VFs. An invalid report returns a
//! [`TopologyError`] and changes nothing (not even ACS controls). The tree
//! only depends on the set of valid reports, not on their order.
//!
//! Attached functions live in one ordered map keyed by [`Bdf`], so lookups
//! are O(log n) and the functions of a bus, or of a bridge's bus range (its
//! subtree), are one contiguous range of the map.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::RangeInclusive;

use crate::addr::Bdf;
use crate::caps::{CapError, CapOffsets};
use crate::fnmap::FnMap;
use crate::port::ConfigPort;
use crate::regs::*;
use crate::reset::{MethodList, ResetQuirk};
use crate::units::{AcsQuirk, IncrementalUnits, UnitTable};

/// A host bridge: the root bus of a segment and the buses it decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBridge {
    pub segment: u16,
    /// The root bus number.
    pub bus_start: u8,
    pub bus_end: u8,
}

/// Which ACS controls the tracker enables on functions that advertise them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcsPolicy {
    /// Controls to set (intersected with each function's ACS Capability).
    pub enable: u16,
}

impl Default for AcsPolicy {
    fn default() -> Self {
        Self {
            enable: ACS_ISOLATION,
        }
    }
}

/// Static configuration of a tracker.
#[derive(Clone, Debug)]
pub struct TopologyConfig {
    pub host_bridges: Vec<HostBridge>,
    pub acs_policy: AcsPolicy,
    pub acs_quirks: Vec<AcsQuirk>,
    pub reset_quirks: Vec<ResetQuirk>,
}

impl TopologyConfig {
    /// Host bridges with the default ACS policy and quirk tables.
    pub fn new(host_bridges: &[HostBridge]) -> Self {
        Self {
            host_bridges: host_bridges.to_vec(),
            acs_policy: AcsPolicy::default(),
            acs_quirks: crate::units::default_acs_quirks(),
            reset_quirks: crate::reset::default_reset_quirks(),
        }
    }
}

/// What a function is, from its PCIe capability (or header, if conventional).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FunctionKind {
    Endpoint,
    LegacyEndpoint,
    Rciep,
    Rcec,
    RootPort,
    UpstreamPort,
    DownstreamPort,
    PcieToPciBridge,
    PciToPcieBridge,
    /// Conventional PCI function (no PCIe capability).
    Conventional,
    /// Conventional PCI-to-PCI bridge (no PCIe capability).
    ConventionalBridge,
    /// SR-IOV virtual function.
    VirtualFunction,
}

impl FunctionKind {
    /// Has a type 1 header and a secondary bus.
    pub const fn is_bridge(self) -> bool {
        matches!(
            self,
            Self::RootPort
                | Self::UpstreamPort
                | Self::DownstreamPort
                | Self::PcieToPciBridge
                | Self::PciToPcieBridge
                | Self::ConventionalBridge
        )
    }

    pub const fn is_pcie(self) -> bool {
        !matches!(self, Self::Conventional | Self::ConventionalBridge)
    }

    fn from_pcie_type(t: u8) -> Option<Self> {
        Some(match t {
            PCIE_TYPE_ENDPOINT => Self::Endpoint,
            PCIE_TYPE_LEGACY_ENDPOINT => Self::LegacyEndpoint,
            PCIE_TYPE_ROOT_PORT => Self::RootPort,
            PCIE_TYPE_UPSTREAM => Self::UpstreamPort,
            PCIE_TYPE_DOWNSTREAM => Self::DownstreamPort,
            PCIE_TYPE_PCIE_TO_PCI => Self::PcieToPciBridge,
            PCIE_TYPE_PCI_TO_PCIE => Self::PciToPcieBridge,
            PCIE_TYPE_RCIEP => Self::Rciep,
            PCIE_TYPE_RCEC => Self::Rcec,
            _ => return None,
        })
    }
}

/// Facts about a function read from config space when it was reported.
pub(crate) mod flags {
    pub const MULTIFUNCTION: u16 = 1 << 0;
    pub const FLR: u16 = 1 << 1;
    pub const AF_FLR: u16 = 1 << 2;
    /// PM capability present and NoSoftRst clear: D3hot→D0 resets.
    pub const PM_RESET: u16 = 1 << 3;
    /// A port whose slot is hot-plug capable.
    pub const HOTPLUG_SLOT: u16 = 1 << 4;
    /// A PF with VF Enable set.
    pub const VFS_ENABLED: u16 = 1 << 5;
}

/// A tracked function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub kind: FunctionKind,
    pub vendor: u16,
    pub device: u16,
    flags: u16,
    /// Bridges: secondary and subordinate bus numbers.
    pub secondary: u8,
    pub subordinate: u8,
    pub caps: CapOffsets,
    /// ACS Capability and Control (after the policy was applied).
    pub acs_cap: u16,
    pub acs_ctrl: u16,
    /// PF: first VF offset, VF stride and NumVFs. VF: unused.
    pub(crate) vf_offset: u16,
    pub(crate) vf_stride: u16,
    pub(crate) num_vfs: u16,
    /// PF: the VFs' device id.
    pub(crate) vf_device: u16,
    /// VF: its PF.
    pf: Option<Bdf>,
}

impl Function {
    pub fn is_multifunction(&self) -> bool {
        self.flags & flags::MULTIFUNCTION != 0
    }
    pub fn has_flr(&self) -> bool {
        self.flags & flags::FLR != 0
    }
    pub fn has_af_flr(&self) -> bool {
        self.flags & flags::AF_FLR != 0
    }
    /// D3hot→D0 performs a reset (PM capability with NoSoftRst clear).
    pub fn has_pm_reset(&self) -> bool {
        self.flags & flags::PM_RESET != 0
    }
    pub fn is_hotplug_slot(&self) -> bool {
        self.flags & flags::HOTPLUG_SLOT != 0
    }
    pub fn physfn(&self) -> Option<Bdf> {
        self.pf
    }
    /// The secondary..=subordinate bus range of a bridge.
    pub fn bus_range(&self) -> Option<RangeInclusive<u8>> {
        self.kind
            .is_bridge()
            .then_some(self.secondary..=self.subordinate)
    }
    /// Routing-id keys of this PF's enabled VFs: (first, last, stride).
    pub(crate) fn vf_keys(&self, pf: Bdf) -> Option<(u32, u32, u32)> {
        if self.flags & flags::VFS_ENABLED == 0 || self.num_vfs == 0 {
            return None;
        }
        let stride = self.vf_stride.max(1) as u32;
        let first = pf.rid() as u32 + self.vf_offset as u32;
        let last = stride
            .checked_mul(self.num_vfs as u32 - 1)
            .and_then(|span| first.checked_add(span))
            .filter(|&last| last <= 0xffff)?;
        let base = (pf.segment as u32) << 16;
        Some((base | first, base | last, stride))
    }
}

/// Why a report was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyError {
    /// No host bridge covers the segment.
    UnknownSegment { segment: u16 },
    /// The bus is outside the host bridge's bus range.
    BusOutsideHostBridge { bdf: Bdf },
    /// Nothing answers at this address.
    NoFunction { bdf: Bdf },
    /// The function answers "retry later" (RRS): not ready yet.
    NotReady { bdf: Bdf },
    /// Header type other than 0 (normal) or 1 (bridge).
    UnsupportedHeaderType { bdf: Bdf, header_type: u8 },
    /// The header type does not match the PCIe Device/Port Type.
    HeaderTypeMismatch {
        bdf: Bdf,
        header_type: u8,
        port_type: u8,
    },
    /// A PCIe Device/Port Type this tracker does not know.
    UnknownPortType { bdf: Bdf, port_type: u8 },
    /// A capability list is corrupt.
    Capability { bdf: Bdf, error: CapError },
    /// A bridge's bus numbers are unset or inconsistent (secondary must be
    /// above its own bus, subordinate at least secondary, inside the host bridge).
    InvalidBusRange {
        bdf: Bdf,
        secondary: u8,
        subordinate: u8,
    },
    /// A bridge's bus range is not inside its parent bridge's.
    OutsideParentRange { bdf: Bdf, parent: Bdf },
    /// A bridge's bus range overlaps another bridge's.
    BusRangeOverlap { bdf: Bdf, other: Bdf },
    /// A VF answers at an address no PF gives a VF.
    NotAVirtualFunction { bdf: Bdf },
    /// The function is not tracked.
    NotTracked { bdf: Bdf },
    /// The routing ids of a PF's VFs fall on buses a bridge routes, or
    /// outside the bus range of the PF's parent: requests for them would
    /// go two ways. `other` is the bridge, PF or parent it collides with.
    VfBusCollision { bdf: Bdf, other: Bdf },
}

impl core::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::UnknownSegment { segment } => {
                write!(f, "no host bridge for segment {segment:04x}")
            }
            Self::BusOutsideHostBridge { bdf } => {
                write!(f, "{bdf}: bus outside the host bridge's range")
            }
            Self::NoFunction { bdf } => write!(f, "{bdf}: no function answers"),
            Self::NotReady { bdf } => write!(f, "{bdf}: not ready (RRS)"),
            Self::UnsupportedHeaderType { bdf, header_type } => {
                write!(f, "{bdf}: unsupported header type {header_type}")
            }
            Self::HeaderTypeMismatch {
                bdf,
                header_type,
                port_type,
            } => write!(
                f,
                "{bdf}: header type {header_type} does not match PCIe port type {port_type:#x}"
            ),
            Self::UnknownPortType { bdf, port_type } => {
                write!(f, "{bdf}: unknown PCIe port type {port_type:#x}")
            }
            Self::Capability { bdf, error } => {
                write!(f, "{bdf}: corrupt capability list: {error:?}")
            }
            Self::InvalidBusRange {
                bdf,
                secondary,
                subordinate,
            } => write!(
                f,
                "{bdf}: invalid bus numbers secondary {secondary:02x} subordinate {subordinate:02x}"
            ),
            Self::OutsideParentRange { bdf, parent } => {
                write!(f, "{bdf}: bus range outside its parent {parent}'s")
            }
            Self::BusRangeOverlap { bdf, other } => {
                write!(f, "{bdf}: bus range overlaps {other}'s")
            }
            Self::NotAVirtualFunction { bdf } => write!(f, "{bdf}: not a VF of any PF"),
            Self::NotTracked { bdf } => write!(f, "{bdf}: not tracked"),
            Self::VfBusCollision { bdf, other } => {
                write!(f, "{bdf}: VF routing ids collide with {other}'s buses")
            }
        }
    }
}

/// What a valid report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Attached to the tree, and `adopted` waiting orphans with it.
    Attached { adopted: usize },
    /// Valid, but its parent bridge (or PF) is not known yet.
    Orphaned,
    /// Already tracked (attached or orphan): nothing changed.
    AlreadyTracked,
}

/// What a report attached: the reported function, and the orphans it
/// adopted as they were before (in the order they were attached).
#[derive(Debug)]
pub(crate) struct ReportUndo {
    reported: Bdf,
    adopted: Vec<(Bdf, Function)>,
    /// (register, value) of the reported function's ACS Control before the
    /// policy changed it.
    acs_before: Option<(u16, u16)>,
}

impl ReportUndo {
    /// The functions the report put in the tree.
    pub(crate) fn attached(&self) -> impl Iterator<Item = Bdf> + '_ {
        core::iter::once(self.reported).chain(self.adopted.iter().map(|(b, _)| *b))
    }
}

enum Placement {
    Attached,
    Orphan,
}

/// The tracker.
#[derive(Debug)]
pub struct Topology {
    pub(crate) config: TopologyConfig,
    pub(crate) fns: FnMap<Function>,
    orphans: BTreeMap<Bdf, Function>,
    /// (segment << 8 | secondary bus) -> attached bridge.
    bus_owner: BusOwners,
    /// First VF routing-id key -> (PF, last VF key, stride), for attached PFs.
    vf_ranges: BTreeMap<u32, (Bdf, u32, u32)>,
    pub(crate) units: Option<UnitTable>,
    /// Units maintained report by report; `None` after a removal.
    pub(crate) inc: Option<IncrementalUnits>,
    pub(crate) reset_overrides: BTreeMap<Bdf, MethodList>,
}

/// (segment, bus) -> the attached bridge whose secondary bus it is: a
/// direct table per segment, since this is on every report's path.
#[derive(Debug, Default)]
struct BusOwners {
    segs: Vec<(u16, Box<[u32; 256]>)>,
}

impl BusOwners {
    const NONE: u32 = u32::MAX;

    fn get(&self, key: u32) -> Option<Bdf> {
        let seg = (key >> 8) as u16;
        let i = self.segs.binary_search_by_key(&seg, |s| s.0).ok()?;
        let v = self.segs[i].1[(key & 0xff) as usize];
        (v != Self::NONE).then(|| Bdf::from_key(v))
    }

    fn insert(&mut self, key: u32, bridge: Bdf) {
        let seg = (key >> 8) as u16;
        let i = match self.segs.binary_search_by_key(&seg, |s| s.0) {
            Ok(i) => i,
            Err(i) => {
                self.segs.insert(i, (seg, Box::new([Self::NONE; 256])));
                i
            }
        };
        self.segs[i].1[(key & 0xff) as usize] = bridge.key();
    }

    fn remove(&mut self, key: u32) {
        let seg = (key >> 8) as u16;
        if let Ok(i) = self.segs.binary_search_by_key(&seg, |s| s.0) {
            self.segs[i].1[(key & 0xff) as usize] = Self::NONE;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u32, Bdf)> + '_ {
        self.segs.iter().flat_map(|(seg, t)| {
            t.iter()
                .enumerate()
                .filter(|(_, v)| **v != Self::NONE)
                .map(move |(bus, v)| (((*seg as u32) << 8) | bus as u32, Bdf::from_key(*v)))
        })
    }
}

fn bus_key(segment: u16, bus: u8) -> u32 {
    ((segment as u32) << 8) | bus as u32
}

/// All addresses on buses `lo..=hi` of a segment.
pub(crate) fn bus_span(segment: u16, lo: u8, hi: u8) -> RangeInclusive<Bdf> {
    Bdf::from_devfn(segment, lo, 0)..=Bdf::from_devfn(segment, hi, 0xff)
}

impl Topology {
    pub fn new(config: TopologyConfig) -> Self {
        Self {
            config,
            fns: FnMap::default(),
            orphans: BTreeMap::new(),
            bus_owner: BusOwners::default(),
            vf_ranges: BTreeMap::new(),
            units: None,
            inc: Some(IncrementalUnits::default()),
            reset_overrides: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &TopologyConfig {
        &self.config
    }

    /// The host bridge decoding the function's bus (a segment may have
    /// several, with disjoint bus ranges).
    fn host_bridge(&self, bdf: Bdf) -> Result<HostBridge, TopologyError> {
        let mut same_segment = self
            .config
            .host_bridges
            .iter()
            .filter(|h| h.segment == bdf.segment)
            .peekable();
        if same_segment.peek().is_none() {
            return Err(TopologyError::UnknownSegment {
                segment: bdf.segment,
            });
        }
        same_segment
            .find(|h| (h.bus_start..=h.bus_end).contains(&bdf.bus))
            .copied()
            .ok_or(TopologyError::BusOutsideHostBridge { bdf })
    }

    // ---- reports ----

    /// A function was added. See the module docs for the rules.
    pub fn report_add<P: ConfigPort + ?Sized>(
        &mut self,
        bdf: Bdf,
        port: &mut P,
    ) -> Result<ReportOutcome, TopologyError> {
        self.report(bdf, port, None)
    }

    /// [`Topology::report_add`], with what it attached recorded so that
    /// [`Topology::undo_report`] can take it back.
    pub(crate) fn report_add_undoable<P: ConfigPort + ?Sized>(
        &mut self,
        bdf: Bdf,
        port: &mut P,
    ) -> Result<(ReportOutcome, ReportUndo), TopologyError> {
        let mut undo = ReportUndo {
            reported: bdf,
            adopted: Vec::new(),
            acs_before: None,
        };
        let outcome = self.report(bdf, port, Some(&mut undo))?;
        Ok((outcome, undo))
    }

    fn report<P: ConfigPort + ?Sized>(
        &mut self,
        bdf: Bdf,
        port: &mut P,
        mut undo: Option<&mut ReportUndo>,
    ) -> Result<ReportOutcome, TopologyError> {
        let hb = self.host_bridge(bdf)?;
        if self.fns.contains_key(&bdf) || self.orphans.contains_key(&bdf) {
            return Ok(ReportOutcome::AlreadyTracked);
        }
        let mut f = probe(bdf, port, hb)?;
        let placement = self.place(bdf, &f, hb)?;
        let before = f.acs_ctrl;
        apply_acs_policy(self.config.acs_policy, bdf, &mut f, port);
        if let Some(u) = undo.as_deref_mut()
            && f.acs_ctrl != before
        {
            u.acs_before = Some((f.caps.acs + ACS_CTRL, before));
        }
        match placement {
            Placement::Orphan => {
                self.orphans.insert(bdf, f);
                Ok(ReportOutcome::Orphaned)
            }
            Placement::Attached => {
                self.attach(bdf, f);
                let adopted = self.adopt(bdf, hb, undo.map(|u| &mut u.adopted));
                Ok(ReportOutcome::Attached { adopted })
            }
        }
    }

    /// Takes back a report that attached its function
    /// ([`Topology::report_add_undoable`]): the function is forgotten, the
    /// orphans it adopted wait again as they were, and the ACS Control the
    /// policy changed on it is written back.
    pub(crate) fn undo_report<P: ConfigPort + ?Sized>(&mut self, undo: ReportUndo, port: &mut P) {
        for (b, _) in undo.adopted.iter().rev() {
            self.unlink(*b);
        }
        self.detach(undo.reported);
        for (b, f) in undo.adopted {
            self.orphans.insert(b, f);
        }
        if let Some((reg, value)) = undo.acs_before {
            port.write16(undo.reported, reg, value);
        }
    }

    /// The first attached bridge whose secondary or subordinate bus number
    /// in config space is not the tracked one: the hardware domain
    /// renumbered it without reporting the change, so addresses no longer
    /// name the functions the tree has there. A bridge that reads
    /// all-ones (gone, or in reset) is not judged.
    pub fn renumbered_bridge<P: ConfigPort + ?Sized>(&self, port: &mut P) -> Option<Bdf> {
        let bridges: Vec<Bdf> = self
            .fns
            .iter()
            .filter(|(_, f)| f.kind.is_bridge())
            .map(|(b, _)| *b)
            .collect();
        self.renumbered_among(bridges.into_iter(), port)
    }

    /// [`Self::renumbered_bridge`] among `candidates` (those that are not
    /// attached bridges are skipped).
    pub fn renumbered_among<P: ConfigPort + ?Sized>(
        &self,
        mut candidates: impl Iterator<Item = Bdf>,
        port: &mut P,
    ) -> Option<Bdf> {
        candidates.find(|b| {
            let Some(f) = self.fns.get(b).filter(|f| f.kind.is_bridge()) else {
                return false;
            };
            let v = port.read32(*b, PRIMARY_BUS);
            v != u32::MAX && ((v >> 8) as u8, (v >> 16) as u8) != (f.secondary, f.subordinate)
        })
    }

    /// Reads the ACS Capability and Control of every tracked function
    /// again, and applies the ACS policy to those `writable` allows, as
    /// when they were reported: the hardware domain may have changed ACS
    /// Control since, wherever no guest's unit depended on it. A function
    /// that reads all-ones (gone, or in reset) keeps what was read before.
    /// Units are recomputed at the next query if anything changed; returns
    /// whether it did.
    pub fn refresh_acs<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        writable: impl Fn(Bdf) -> bool,
    ) -> bool {
        let with_acs: Vec<(Bdf, u16)> = self
            .fns
            .iter()
            .filter(|(_, f)| f.caps.acs != 0)
            .map(|(b, f)| (*b, f.caps.acs))
            .collect();
        let policy = self.config.acs_policy;
        let mut changed = false;
        for (b, acs) in with_acs {
            let v = port.read32(b, acs + ACS_CAP);
            let Some(f) = self.fns.get_mut(&b) else {
                continue;
            };
            if v == u32::MAX {
                continue;
            }
            let was = (f.acs_cap, f.acs_ctrl);
            f.acs_cap = v as u16 & 0x7f;
            f.acs_ctrl = (v >> 16) as u16;
            if writable(b) {
                apply_acs_policy(policy, b, f, port);
            }
            changed |= (f.acs_cap, f.acs_ctrl) != was;
        }
        if changed {
            self.units_on_detach();
        }
        changed
    }

    /// A function was removed. Removing a bridge removes everything attached
    /// below it; removing a PF removes its VFs. Returns how many functions
    /// left the tree (or 1 for an orphan).
    pub fn report_remove(&mut self, bdf: Bdf) -> Result<usize, TopologyError> {
        if self.orphans.remove(&bdf).is_some() {
            self.reset_overrides.remove(&bdf);
            return Ok(1);
        }
        let Some(f) = self.fns.get(&bdf) else {
            return Err(TopologyError::NotTracked { bdf });
        };
        let mut doomed: Vec<Bdf> = Vec::new();
        if let Some(r) = f.bus_range() {
            doomed.extend(
                self.fns
                    .range(bus_span(bdf.segment, *r.start(), *r.end()))
                    .map(|(b, _)| *b),
            );
        }
        if let Some((first, last, _)) = f.vf_keys(bdf) {
            doomed.extend(
                self.fns
                    .range(Bdf::from_key(first)..=Bdf::from_key(last))
                    .filter(|(_, g)| g.pf == Some(bdf))
                    .map(|(b, _)| *b),
            );
        }
        doomed.push(bdf);
        let mut n = 0;
        for b in doomed {
            if self.detach(b) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn detach(&mut self, bdf: Bdf) -> bool {
        let gone = self.unlink(bdf).is_some();
        if gone {
            self.reset_overrides.remove(&bdf);
        }
        gone
    }

    /// Takes an attached function out of the tree (its reset methods stay).
    fn unlink(&mut self, bdf: Bdf) -> Option<Function> {
        let mut f = self.fns.remove(&bdf)?;
        if f.kind.is_bridge() && self.bus_owner.get(bus_key(bdf.segment, f.secondary)) == Some(bdf)
        {
            self.bus_owner.remove(bus_key(bdf.segment, f.secondary));
        }
        if let Some((first, ..)) = f.vf_keys(bdf) {
            self.vf_ranges.remove(&first);
        }
        self.units_on_detach();
        if f.kind == FunctionKind::VirtualFunction {
            // As probed: `attach` gives a VF its PF and the PF's ids.
            f.pf = None;
            f.vendor = 0xffff;
            f.device = 0xffff;
        }
        Some(f)
    }

    /// Where a valid function goes, or why it cannot go there.
    fn place(&self, bdf: Bdf, f: &Function, hb: HostBridge) -> Result<Placement, TopologyError> {
        if f.kind == FunctionKind::VirtualFunction {
            let key = bdf.key();
            return match self.vf_ranges.range(..=key).next_back() {
                Some((&first, &(_, last, stride)))
                    if key <= last && (key - first).is_multiple_of(stride) =>
                {
                    Ok(Placement::Attached)
                }
                _ => Ok(Placement::Orphan),
            };
        }
        let parent_range = if bdf.bus == hb.bus_start {
            (hb.bus_start, hb.bus_end)
        } else {
            match self
                .bus_owner
                .get(bus_key(bdf.segment, bdf.bus))
                .and_then(|p| self.fns.get(&p))
            {
                Some(pf) => (pf.secondary, pf.subordinate),
                None => return Ok(Placement::Orphan),
            }
        };
        let parent = self.bus_owner.get(bus_key(bdf.segment, bdf.bus));
        if let Some((first, last, _)) = f.vf_keys(bdf) {
            // VFs on buses after the PF's own must be inside the parent's
            // range and on no bridge's buses (a bridge there is on the PF's
            // bus, or below one that is).
            let (lo, hi) = ((first >> 8) as u8, (last >> 8) as u8);
            if hi > parent_range.1 {
                let other = parent.unwrap_or(bdf);
                return Err(TopologyError::VfBusCollision { bdf, other });
            }
            if hi > bdf.bus {
                let lo = lo.max(bdf.bus + 1);
                for (&other, g) in self.fns.range(bus_span(bdf.segment, bdf.bus, bdf.bus)) {
                    if let Some(gr) = g.bus_range()
                        && *gr.start() <= hi
                        && lo <= *gr.end()
                    {
                        return Err(TopologyError::VfBusCollision { bdf, other });
                    }
                }
            }
        }
        if let Some(r) = f.bus_range() {
            let (sec, sub) = (*r.start(), *r.end());
            // No attached PF may have VFs on these buses: the bridge is new,
            // so no such PF is below it.
            if let Some(other) = self.vf_pf_on_buses(bdf.segment, sec, sub) {
                return Err(TopologyError::VfBusCollision { bdf, other });
            }
            if sec <= parent_range.0 || sub > parent_range.1 {
                let parent = self
                    .bus_owner
                    .get(bus_key(bdf.segment, bdf.bus))
                    .unwrap_or(bdf);
                return Err(TopologyError::OutsideParentRange { bdf, parent });
            }
            if let Some(other) = self.bus_owner.get(bus_key(bdf.segment, sec)) {
                return Err(TopologyError::BusRangeOverlap { bdf, other });
            }
            // Bridge ranges form a laminar family: a new range can only
            // collide with a sibling's (anything deeper is inside a sibling).
            for (&other, g) in self.fns.range(bus_span(bdf.segment, bdf.bus, bdf.bus)) {
                if let Some(gr) = g.bus_range()
                    && *gr.start() <= sub
                    && sec <= *gr.end()
                {
                    return Err(TopologyError::BusRangeOverlap { bdf, other });
                }
            }
        }
        Ok(Placement::Attached)
    }

    /// An attached PF with a VF routing id on buses `lo..=hi`.
    fn vf_pf_on_buses(&self, segment: u16, lo: u8, hi: u8) -> Option<Bdf> {
        let span = bus_span(segment, lo, hi);
        let (start, end) = (span.start().key(), span.end().key());
        // A PF's VFs span at most 0x10000 routing ids.
        self.vf_ranges
            .range(start.saturating_sub(0xffff)..=end)
            .find(|(_, (_, last, _))| *last >= start)
            .map(|(_, (pf, ..))| *pf)
    }

    fn attach(&mut self, bdf: Bdf, mut f: Function) {
        if f.kind == FunctionKind::VirtualFunction {
            let key = bdf.key();
            if let Some((_, &(pf, ..))) = self.vf_ranges.range(..=key).next_back() {
                f.pf = Some(pf);
                if let Some(p) = self.fns.get(&pf) {
                    f.vendor = p.vendor;
                    f.device = p.vf_device;
                }
            }
        }
        if f.kind.is_bridge() {
            self.bus_owner
                .insert(bus_key(bdf.segment, f.secondary), bdf);
        }
        if let Some((first, last, stride)) = f.vf_keys(bdf) {
            self.vf_ranges.insert(first, (bdf, last, stride));
        }
        self.fns.insert(bdf, f);
        self.units_on_attach(bdf);
    }

    /// Attaches the orphans that `parent` (just attached) makes reachable.
    /// Parents always sort before their children (a bridge's secondary bus
    /// is above its own; a VF's routing id is above its PF's), so one pass in
    /// address order also attaches orphans below orphans.
    /// Each adopted orphan, as it was, goes to `record` if given.
    fn adopt(
        &mut self,
        parent: Bdf,
        hb: HostBridge,
        mut record: Option<&mut Vec<(Bdf, Function)>>,
    ) -> usize {
        if self.orphans.is_empty() {
            return 0;
        }
        let Some(f) = self.fns.get(&parent) else {
            return 0;
        };
        let mut spans: Vec<RangeInclusive<Bdf>> = Vec::new();
        if let Some(r) = f.bus_range() {
            spans.push(bus_span(parent.segment, *r.start(), *r.end()));
        }
        if let Some((first, last, _)) = f.vf_keys(parent) {
            spans.push(Bdf::from_key(first)..=Bdf::from_key(last));
        }
        let mut adopted = 0;
        for span in spans {
            let keys: Vec<Bdf> = self.orphans.range(span).map(|(b, _)| *b).collect();
            for b in keys {
                let Some(g) = self.orphans.remove(&b) else {
                    continue;
                };
                match self.place(b, &g, hb) {
                    Ok(Placement::Attached) => {
                        if let Some(r) = record.as_deref_mut() {
                            r.push((b, g.clone()));
                        }
                        self.attach(b, g);
                        adopted += 1;
                    }
                    _ => {
                        self.orphans.insert(b, g);
                    }
                }
            }
        }
        adopted
    }

    // ---- lookups ----

    /// An attached function.
    pub fn function(&self, bdf: Bdf) -> Option<&Function> {
        self.fns.get(&bdf)
    }

    pub fn contains(&self, bdf: Bdf) -> bool {
        self.fns.contains_key(&bdf)
    }

    /// Attached functions in address order.
    pub fn functions(&self) -> impl Iterator<Item = (Bdf, &Function)> + '_ {
        self.fns.iter().map(|(b, f)| (*b, f))
    }

    /// Number of attached functions.
    pub fn len(&self) -> usize {
        self.fns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fns.is_empty()
    }

    /// Valid reports still waiting for their parent.
    pub fn orphans(&self) -> impl Iterator<Item = Bdf> + '_ {
        self.orphans.keys().copied()
    }

    /// The bridge whose secondary bus the function is on (`None` on a root bus).
    /// A VF's is its PF's, whichever bus its routing id is on.
    pub fn parent_bridge(&self, bdf: Bdf) -> Option<Bdf> {
        let f = self.fns.get(&bdf)?;
        self.bus_parent(f.pf.unwrap_or(bdf))
    }

    /// The bridge owning `bdf`'s bus, for an attached function.
    pub(crate) fn bus_parent(&self, bdf: Bdf) -> Option<Bdf> {
        self.bus_owner.get(bus_key(bdf.segment, bdf.bus))
    }

    /// Functions on a bridge's secondary bus.
    pub fn children(&self, bridge: Bdf) -> impl Iterator<Item = Bdf> + '_ {
        let span = match self.fns.get(&bridge).and_then(|f| f.bus_range()) {
            Some(r) => bus_span(bridge.segment, *r.start(), *r.start()),
            None => bus_span(bridge.segment, 1, 0),
        };
        self.fns.range(span).map(|(b, _)| *b)
    }

    /// Every function below a bridge (its bus range), in address order.
    pub fn subtree(&self, bridge: Bdf) -> impl Iterator<Item = Bdf> + '_ {
        let span = match self.fns.get(&bridge).and_then(|f| f.bus_range()) {
            Some(r) => bus_span(bridge.segment, *r.start(), *r.end()),
            None => bus_span(bridge.segment, 1, 0),
        };
        self.fns.range(span).map(|(b, _)| *b)
    }

    /// Bridges from the function's parent up to the root bus.
    pub fn ancestors(&self, bdf: Bdf) -> impl Iterator<Item = Bdf> + '_ {
        let mut cur = self.parent_bridge(bdf);
        core::iter::from_fn(move || {
            let b = cur?;
            cur = self.parent_bridge(b);
            Some(b)
        })
    }

    /// Checks the tree's structural invariants; returns the first violation.
    /// Used by tests and the fuzzer.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        for (&b, f) in self.fns.iter() {
            let hb = self
                .host_bridge(b)
                .map_err(|_| "function outside host bridges")?;
            let (lo, hi) = if b.bus == hb.bus_start {
                (hb.bus_start, hb.bus_end)
            } else if f.kind == FunctionKind::VirtualFunction {
                let pf = f.pf.ok_or("VF without PF")?;
                if !self.fns.contains_key(&pf) {
                    return Err("VF's PF not attached");
                }
                continue;
            } else {
                let p = self
                    .bus_owner
                    .get(bus_key(b.segment, b.bus))
                    .ok_or("function without parent bridge")?;
                let pf = self.fns.get(&p).ok_or("parent bridge not attached")?;
                (pf.secondary, pf.subordinate)
            };
            if let Some(r) = f.bus_range() {
                if *r.start() <= lo.max(b.bus) || *r.end() > hi || r.start() > r.end() {
                    return Err("bridge range not nested in parent's");
                }
                if self.bus_owner.get(bus_key(b.segment, *r.start())) != Some(b) {
                    return Err("bridge not owner of its secondary bus");
                }
            }
        }
        for (k, b) in self.bus_owner.iter() {
            let f = self.fns.get(&b).ok_or("bus owner not attached")?;
            if bus_key(b.segment, f.secondary) != k {
                return Err("bus owner index stale");
            }
        }
        for f in self.orphans.keys() {
            if self.fns.contains_key(f) {
                return Err("function both orphan and attached");
            }
        }
        Ok(())
    }
}

/// Enables the controls of `policy` that `f` advertises, and keeps what its
/// ACS Control then reads.
fn apply_acs_policy<P: ConfigPort + ?Sized>(
    policy: AcsPolicy,
    bdf: Bdf,
    f: &mut Function,
    port: &mut P,
) {
    if f.caps.acs == 0 {
        return;
    }
    let want = f.acs_ctrl | (f.acs_cap & policy.enable);
    if want != f.acs_ctrl {
        port.write16(bdf, f.caps.acs + ACS_CTRL, want);
        let now = port.read16(bdf, f.caps.acs + ACS_CTRL);
        // A function that vanished meanwhile reads all-ones: keep the old value.
        if now != 0xffff {
            f.acs_ctrl = now;
        }
    }
}

/// Reads and checks what a report needs from config space. No writes.
fn probe<P: ConfigPort + ?Sized>(
    bdf: Bdf,
    port: &mut P,
    hb: HostBridge,
) -> Result<Function, TopologyError> {
    let id = port.read32(bdf, VENDOR_ID);
    let vendor = id as u16;
    let mut vf = false;
    if vendor == VENDOR_ID_NONE {
        // VFs read all-ones in Vendor and Device ID but answer the rest.
        if port.read32(bdf, COMMAND) == u32::MAX {
            return Err(TopologyError::NoFunction { bdf });
        }
        vf = true;
    } else if vendor == VENDOR_ID_RRS {
        return Err(TopologyError::NotReady { bdf });
    } else if vendor == 0 {
        return Err(TopologyError::NoFunction { bdf });
    }
    let header = port.read8(bdf, HEADER_TYPE);
    let header_type = header & HEADER_TYPE_MASK;
    if header_type > HEADER_TYPE_BRIDGE {
        return Err(TopologyError::UnsupportedHeaderType { bdf, header_type });
    }
    let caps =
        CapOffsets::scan(port, bdf).map_err(|error| TopologyError::Capability { bdf, error })?;
    let mut fl = 0;
    // The spec defines the Multi-Function bit in function 0 only; functions
    // > 0 may leave theirs clear (QEMU does, unless told otherwise). A
    // function > 0 that answers is part of a multi-function device, as Linux
    // has it (pci_scan_slot). VFs are not: their routing ids are not slots.
    if header & HEADER_TYPE_MULTIFUNCTION != 0 || (!vf && bdf.function() != 0) {
        fl |= flags::MULTIFUNCTION;
    }
    let kind = if caps.pcie != 0 {
        let pflags = port.read16(bdf, caps.pcie as u16 + PCIE_FLAGS);
        let port_type = ((pflags & PCIE_FLAGS_TYPE_MASK) >> PCIE_FLAGS_TYPE_SHIFT) as u8;
        let kind = FunctionKind::from_pcie_type(port_type)
            .ok_or(TopologyError::UnknownPortType { bdf, port_type })?;
        if kind.is_bridge() != (header_type == HEADER_TYPE_BRIDGE)
            || (vf && kind != FunctionKind::Endpoint)
        {
            return Err(TopologyError::HeaderTypeMismatch {
                bdf,
                header_type,
                port_type,
            });
        }
        let devcap = port.read32(bdf, caps.pcie as u16 + PCIE_DEVCAP);
        if devcap & PCIE_DEVCAP_FLR != 0 && devcap != u32::MAX {
            fl |= flags::FLR;
        }
        if matches!(kind, FunctionKind::RootPort | FunctionKind::DownstreamPort)
            && pflags & PCIE_FLAGS_SLOT != 0
            && port.read32(bdf, caps.pcie as u16 + PCIE_SLTCAP) & PCIE_SLTCAP_HPC != 0
        {
            fl |= flags::HOTPLUG_SLOT;
        }
        if vf {
            FunctionKind::VirtualFunction
        } else {
            kind
        }
    } else if vf {
        return Err(TopologyError::NoFunction { bdf });
    } else if header_type == HEADER_TYPE_BRIDGE {
        FunctionKind::ConventionalBridge
    } else {
        FunctionKind::Conventional
    };
    if caps.af != 0 {
        let af = port.read8(bdf, caps.af as u16 + AF_CAP);
        if af & (AF_CAP_TP | AF_CAP_FLR) == AF_CAP_TP | AF_CAP_FLR {
            fl |= flags::AF_FLR;
        }
    }
    if caps.pm != 0 && port.read16(bdf, caps.pm as u16 + PM_CTRL) & PM_CTRL_NO_SOFT_RESET == 0 {
        fl |= flags::PM_RESET;
    }
    let (mut secondary, mut subordinate) = (0, 0);
    if kind.is_bridge() {
        let buses = port.read32(bdf, PRIMARY_BUS);
        secondary = (buses >> 8) as u8;
        subordinate = (buses >> 16) as u8;
        if buses == u32::MAX
            || secondary <= bdf.bus
            || subordinate < secondary
            || subordinate > hb.bus_end
        {
            return Err(TopologyError::InvalidBusRange {
                bdf,
                secondary,
                subordinate,
            });
        }
    }
    let (mut acs_cap, mut acs_ctrl) = (0, 0);
    if caps.acs != 0 {
        let v = port.read32(bdf, caps.acs + ACS_CAP);
        acs_cap = v as u16 & 0x7f;
        acs_ctrl = (v >> 16) as u16;
    }
    let (mut vf_offset, mut vf_stride, mut num_vfs, mut vf_device) = (0, 0, 0, 0);
    if caps.sriov != 0 {
        let ctrl = port.read16(bdf, caps.sriov + SRIOV_CTRL);
        if ctrl != 0xffff && ctrl & SRIOV_CTRL_VFE != 0 {
            fl |= flags::VFS_ENABLED;
            num_vfs = port.read16(bdf, caps.sriov + SRIOV_NUM_VF);
            vf_offset = port.read16(bdf, caps.sriov + SRIOV_VF_OFFSET);
            vf_stride = port.read16(bdf, caps.sriov + SRIOV_VF_STRIDE);
            vf_device = port.read16(bdf, caps.sriov + SRIOV_VF_DID);
        }
    }
    Ok(Function {
        kind,
        vendor: if vf { 0xffff } else { vendor },
        device: if vf { 0xffff } else { (id >> 16) as u16 },
        flags: fl,
        secondary,
        subordinate,
        caps,
        acs_cap,
        acs_ctrl,
        vf_offset,
        vf_stride,
        num_vfs,
        vf_device,
        pf: None,
    })
}
