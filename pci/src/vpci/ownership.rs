//! Who owns each function, assignment by unit, and the hardware domain's
//! filtered view of config space.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::addr::Bdf;
use crate::port::ConfigPort;
use crate::regs::*;
use crate::topology::{FunctionKind, ReportOutcome, Topology, TopologyError};
use crate::units::UnitId;

use super::placement::{PendingWrite, decoded_memory, dword_after};

/// The owner of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// The hardware domain: everything not given to a guest.
    Hwdom,
    /// A guest VM, by the shell's VM id.
    Guest(u16),
}

/// Why an assignment was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignError {
    /// The function is not in the tracked tree.
    NotTracked(Bdf),
    /// The request names part of a unit; `missing` are the other
    /// assignable members (bridges of the unit are never assigned).
    SplitsUnit { unit: UnitId, missing: Vec<Bdf> },
    /// A function (requested, or a member of a requested unit) already has
    /// an owner other than the hardware domain.
    AlreadyOwned { bdf: Bdf, owner: Owner },
    /// Bridges (root ports, switch ports, PCIe-to-PCI bridges) stay with the
    /// hardware domain.
    IsBridge(Bdf),
    /// A tracked function without a unit: the tree changed under the unit
    /// table (should not happen; [`Topology::units`] recomputes on demand).
    NoUnit(Bdf),
    /// A bridge's bus numbers in config space are not the tracked ones
    /// ([`Topology::renumbered_bridge`]): the tree, and so the units, no
    /// longer say what answers where. The hardware domain reports the
    /// bridge again (remove, add) first.
    BridgeRenumbered(Bdf),
}

/// Why a hardware-domain report was refused ([`Ownership::report_add`]).
/// Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// The tracker refused it: it contradicts config space or the tree.
    Topology(TopologyError),
    /// It would put `bdf` (the reported function, or an orphan it would
    /// adopt) in a unit holding a function of `owner`: its requests would
    /// reach that guest's device without passing the IOMMU.
    JoinsGuestUnit { bdf: Bdf, owner: Owner },
}

impl From<TopologyError> for ReportError {
    fn from(e: TopologyError) -> Self {
        Self::Topology(e)
    }
}

impl core::fmt::Display for ReportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Topology(e) => e.fmt(f),
            Self::JoinsGuestUnit { bdf, owner } => {
                write!(f, "{bdf} would join the assignment unit of {owner:?}")
            }
        }
    }
}

/// Why a hardware-domain config write was refused or trimmed. The shell
/// logs it with the function and register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A write to a function a guest owns.
    GuestFunction { owner: u16 },
    /// Primary/secondary/subordinate bus numbers of a bridge above a guest's
    /// function: renumbering would make the function unreachable.
    BusNumbersAboveGuest,
    /// I/O, memory or prefetchable window of a bridge above a guest's
    /// function: moving it would cut the guest's BARs off.
    WindowAboveGuest,
    /// Bridge Control bits that disturb what is below: Secondary Bus Reset
    /// and VGA Enable.
    BridgeControlAboveGuest,
    /// Command Memory / I/O / Bus Master of a bridge above a guest's
    /// function: clearing them stops the guest's MMIO and DMA.
    CommandAboveGuest,
    /// ACS Control of a bridge above a guest's function, or of another
    /// function whose ACS decides a guest's unit (a downstream port of the
    /// same switch, a function of the guest's multi-function device): the
    /// assignment units were computed with it. Also the power state and
    /// function resets (FLR, AF FLR) of such another function: D3hot→D0
    /// and FLR return ACS Control to its reset value.
    AcsControlAboveGuest,
    /// Link Disable of a port above a guest's function.
    LinkControlAboveGuest,
    /// Power state of a bridge above a guest's function (D3hot cuts the
    /// link; D3hot→D0 may reset the bridge and lose its bus numbers), or of
    /// the PF of a guest's VF.
    PowerStateAboveGuest,
    /// SR-IOV Control / NumVFs of the PF of a guest's VF (the VF would
    /// vanish), or a reset of that PF (FLR, AF FLR).
    PfOfGuestVf,
    /// Bus numbers of another bridge that would claim a bus of a guest's
    /// function or of a protected bridge, or buses such a bridge routes
    /// (config requests would be routed two ways).
    BusNumbersOverlapGuest,
    /// A memory window of another bridge that would claim a guest's BAR.
    WindowOverlapsGuest,
    /// A BAR or expansion ROM of a function the hardware domain keeps
    /// would decode over a guest's BAR (the write that moves it there while
    /// decoding, or the one that turns decoding on with it there).
    BarOverlapsGuest,
}

/// What to do with one hardware-domain config access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwdomDecision {
    /// Pass the access to the physical function unchanged.
    PassThrough,
    /// A read of a function owned by a guest: answer all-ones (absent).
    ReadAllOnes,
    /// Drop the write and log the reason.
    DropWrite(Refusal),
    /// Write, but keep the bits of `keep` (in the access's own lanes: bit 0
    /// is the lowest bit of the accessed register bytes) at their current
    /// physical value. If that changed what the hwdom asked for, log
    /// `reason`. [`Ownership::hwdom_apply`] does exactly this.
    WriteMasked { keep: u32, reason: Refusal },
}

/// Result of [`Ownership::hwdom_apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwdomOutcome {
    /// The value read (0 for writes).
    pub value: u32,
    /// Set when (part of) a write was refused: log it.
    pub refused: Option<Refusal>,
}

/// A function the hardware domain keeps but may not use to disturb a
/// guest's: a bridge above a guest's function, or the PF of a guest's VF.
/// Capability offsets found once when ownership changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Protected {
    /// Above a guest's function (bus numbers, windows, Bridge Control...).
    bridge: bool,
    /// PF of a guest's VF (SR-IOV control, function resets).
    pf: bool,
    /// Its ACS Control decides a guest's unit without it being above the
    /// guest: a downstream port of a switch above the guest (rule 4 of
    /// [`crate::units`]), a function of the guest's slot (rule 1).
    unit_acs: bool,
    /// Capability offsets, 0 if absent.
    acs: u16,
    pcie: u16,
    pm: u16,
    af: u16,
    sriov: u16,
}

/// A protected field: `len` bytes at `offset`, bits `bits` of it.
#[derive(Clone, Copy)]
struct Field {
    offset: u16,
    len: u16,
    bits: u32,
    reason: Refusal,
}

/// Protected fields of every protected bridge, in offset order (the
/// capability ones are added per bridge).
const BRIDGE_FIELDS: [Field; 6] = [
    Field {
        offset: COMMAND,
        len: 2,
        bits: (COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER) as u32,
        reason: Refusal::CommandAboveGuest,
    },
    Field {
        offset: PRIMARY_BUS,
        len: 3,
        bits: 0xff_ffff,
        reason: Refusal::BusNumbersAboveGuest,
    },
    // I/O base and limit; the secondary status next to them is RW1C and free.
    Field {
        offset: 0x1c,
        len: 2,
        bits: 0xffff,
        reason: Refusal::WindowAboveGuest,
    },
    // Memory, prefetchable base/limit and its upper halves.
    Field {
        offset: 0x20,
        len: 0x10,
        bits: u32::MAX,
        reason: Refusal::WindowAboveGuest,
    },
    // I/O base/limit upper 16 bits.
    Field {
        offset: 0x30,
        len: 4,
        bits: u32::MAX,
        reason: Refusal::WindowAboveGuest,
    },
    Field {
        offset: BRIDGE_CONTROL,
        len: 2,
        bits: (BRIDGE_CONTROL_SBR | BRIDGE_CONTROL_VGA) as u32,
        reason: Refusal::BridgeControlAboveGuest,
    },
];

/// Bits of `field` that fall in the access `[reg, reg + width)`, expressed
/// in the access's lanes.
fn lanes_of(field: &Field, reg: u16, width: u16) -> u32 {
    let mut keep = 0u32;
    for i in 0..width {
        let at = reg.wrapping_add(i);
        if at < field.offset || at >= field.offset.saturating_add(field.len) {
            continue;
        }
        // Bits of the field's byte `at - field.offset`; fields longer than
        // 4 bytes are all-bits (the windows), so any byte index works.
        let byte = (at - field.offset) as u32;
        let bits = if byte < 4 {
            (field.bits >> (8 * byte)) & 0xff
        } else {
            0xff
        };
        keep |= bits << (8 * i);
    }
    keep
}

/// Ownership of the functions of the tracked tree.
///
/// Everything not listed is the hardware domain's. Assignment goes by
/// assignment unit: the bridges of a unit (e.g. a root port without ACS and
/// the endpoint below it) stay with the hardware domain but become
/// protected, like every other bridge above a guest's function.
#[derive(Clone, Debug, Default)]
pub struct Ownership {
    guests: BTreeMap<Bdf, u16>,
    /// Bridges above guest-owned functions, with the capability offsets the
    /// filter needs, so the per-access path never walks the tree.
    protected: BTreeMap<Bdf, Protected>,
    /// (segment, bus) of every guest-owned function and every protected
    /// bridge: no other bridge may claim these buses.
    guarded_buses: Vec<(u16, u8)>,
    /// (segment, secondary, subordinate) of every protected bridge: no
    /// bridge outside that range may claim any of it (one inside it, a
    /// sibling of the guest's path, routes its own part of it).
    guarded_ranges: Vec<(u16, u8, u8)>,
    /// Physical memory of the guests' BARs (base, size, guest), given by
    /// the shell: no other bridge's window may claim it.
    guest_memory: Vec<(u64, u64, u16)>,
}

impl Ownership {
    pub fn new() -> Self {
        Self::default()
    }

    /// Owner of a function.
    pub fn owner(&self, bdf: Bdf) -> Owner {
        match self.guests.get(&bdf) {
            Some(&g) => Owner::Guest(g),
            None => Owner::Hwdom,
        }
    }

    /// Functions a guest owns, in address order.
    pub fn functions_of(&self, guest: u16) -> impl Iterator<Item = Bdf> + '_ {
        self.guests
            .iter()
            .filter(move |(_, g)| **g == guest)
            .map(|(b, _)| *b)
    }

    /// Whether any function is owned by a guest (else the hardware domain's
    /// accesses are never filtered).
    #[inline]
    pub fn any_assigned(&self) -> bool {
        !self.guests.is_empty()
    }

    /// Whether the hardware domain's writes to this function (a bridge
    /// above a guest's function, or the PF of a guest's VF) are filtered.
    pub fn is_protected(&self, bridge: Bdf) -> bool {
        self.protected.contains_key(&bridge)
    }

    /// Tracks a function the hardware domain reports
    /// ([`Topology::report_add`]), unless that puts a function new in the
    /// tree (the reported one, or an orphan it adopts) in a unit holding a
    /// guest's function: one behind a guest's PCIe-to-PCI bridge, a sibling
    /// of a guest's function without ACS, one below a switch without ACS.
    /// Reports only merge units, and every merge involves a new function,
    /// so checking those is enough. A refused report is undone: the tree,
    /// the orphans and the reported function's ACS Control are as before.
    pub fn report_add<P: ConfigPort + ?Sized>(
        &mut self,
        topo: &mut Topology,
        bdf: Bdf,
        port: &mut P,
    ) -> Result<ReportOutcome, ReportError> {
        if self.guests.is_empty() {
            return Ok(topo.report_add(bdf, port)?);
        }
        let (outcome, undo) = topo.report_add_undoable(bdf, port)?;
        if let ReportOutcome::Attached { .. } = outcome {
            let guest_units: BTreeMap<UnitId, u16> = self
                .guests
                .iter()
                .filter_map(|(&b, &g)| Some((topo.unit_of(b)?, g)))
                .collect();
            let joins = undo.attached().find_map(|b| {
                let unit = topo.unit_of(b)?;
                guest_units.get(&unit).map(|&g| (b, g))
            });
            if let Some((b, g)) = joins {
                topo.undo_report(undo, port);
                return Err(ReportError::JoinsGuestUnit {
                    bdf: b,
                    owner: Owner::Guest(g),
                });
            }
            // A new slot sibling or switch port may decide a guest's unit.
            self.refresh(topo);
        }
        Ok(outcome)
    }

    /// Brings the tracker's ACS state up to date before units are used for
    /// a decision: ACS Capability and Control of every tracked function
    /// read again, the ACS policy applied again to the hardware domain's
    /// (never written to a guest's function). The units of report time are
    /// stale if the hardware domain turned ACS off on a port no guest
    /// depended on yet. Returns whether anything changed.
    pub fn refresh_acs<P: ConfigPort + ?Sized>(&self, topo: &mut Topology, port: &mut P) -> bool {
        topo.refresh_acs(port, |b| !self.guests.contains_key(&b))
    }

    /// Gives `guest` the units of the `requested` functions.
    ///
    /// Units are decided on the ACS state config space has now
    /// ([`Ownership::refresh_acs`], done first, so the policy is applied
    /// again even if the assignment is then refused), and only while every
    /// tracked bridge has the bus numbers the tree has. Every requested
    /// function must be tracked and not a bridge. Each unit touched must be
    /// requested whole (its non-bridge members), unless `whole_units`,
    /// which takes the rest of the unit along. No member may be owned by a
    /// guest already. Returns the assigned units, each its non-bridge
    /// members in address order, units in id order.
    ///
    /// A function must be reset before it changes owner; the caller does
    /// that between a successful `assign` and starting the guest (and after
    /// [`Ownership::release`]).
    pub fn assign<P: ConfigPort + ?Sized>(
        &mut self,
        topo: &mut Topology,
        port: &mut P,
        guest: u16,
        requested: &[Bdf],
        whole_units: bool,
    ) -> Result<Vec<Vec<Bdf>>, AssignError> {
        self.refresh_acs(topo, port);
        if let Some(b) = topo.renumbered_bridge(port) {
            return Err(AssignError::BridgeRenumbered(b));
        }
        let mut unit_ids: BTreeSet<UnitId> = BTreeSet::new();
        for &bdf in requested {
            let f = topo.function(bdf).ok_or(AssignError::NotTracked(bdf))?;
            if f.kind.is_bridge() {
                return Err(AssignError::IsBridge(bdf));
            }
            let id = topo.unit_of(bdf).ok_or(AssignError::NoUnit(bdf))?;
            unit_ids.insert(id);
        }
        let mut out: Vec<Vec<Bdf>> = Vec::new();
        for id in unit_ids {
            let members = topo.units().get(id).map(|u| u.members.to_vec());
            let members = members.ok_or(AssignError::NoUnit(id.0))?;
            let assignable: Vec<Bdf> = members
                .into_iter()
                .filter(|m| topo.function(*m).is_some_and(|f| !f.kind.is_bridge()))
                .collect();
            let missing: Vec<Bdf> = assignable
                .iter()
                .filter(|m| !requested.contains(m))
                .copied()
                .collect();
            if !missing.is_empty() && !whole_units {
                return Err(AssignError::SplitsUnit { unit: id, missing });
            }
            for m in &assignable {
                if let Some(&g) = self.guests.get(m) {
                    return Err(AssignError::AlreadyOwned {
                        bdf: *m,
                        owner: Owner::Guest(g),
                    });
                }
            }
            out.push(assignable);
        }
        for m in out.iter().flatten() {
            self.guests.insert(*m, guest);
        }
        self.refresh(topo);
        Ok(out)
    }

    /// Takes every function back from `guest`; returns them (reset them
    /// before the hardware domain sees them again).
    pub fn release(&mut self, topo: &Topology, guest: u16) -> Vec<Bdf> {
        let gone: Vec<Bdf> = self.functions_of(guest).collect();
        for b in &gone {
            self.guests.remove(b);
        }
        self.guest_memory.retain(|m| m.2 != guest);
        self.refresh(topo);
        gone
    }

    /// Recomputes the protected bridges (after ownership or the tree changed).
    pub fn refresh(&mut self, topo: &Topology) {
        self.protected.clear();
        let offsets = |b: Bdf| {
            topo.function(b)
                .map_or(Protected::default(), |f| Protected {
                    acs: f.caps.acs,
                    pcie: f.caps.pcie as u16,
                    pm: f.caps.pm as u16,
                    af: f.caps.af as u16,
                    sriov: f.caps.sriov,
                    ..Protected::default()
                })
        };
        for &bdf in self.guests.keys() {
            if let Some(pf) = topo.function(bdf).and_then(|f| f.physfn()) {
                let entry = self.protected.entry(pf).or_insert_with(|| offsets(pf));
                entry.pf = true;
            }
            let mut unit_acs: Vec<Bdf> = Vec::new();
            // Rule 1: the other functions of its slot (VFs are in no slot).
            if topo.function(bdf).is_some_and(crate::units::slot_member) {
                let slot = |b: Bdf| (b.segment, b.bus, b.device());
                let on_bus: Vec<Bdf> = match topo.parent_bridge(bdf) {
                    Some(p) => topo.children(p).collect(),
                    None => topo
                        .functions()
                        .map(|(b, _)| b)
                        .filter(|b| (b.segment, b.bus) == (bdf.segment, bdf.bus))
                        .collect(),
                };
                unit_acs.extend(on_bus.into_iter().filter(|&b| {
                    b != bdf
                        && slot(b) == slot(bdf)
                        && topo.function(b).is_some_and(crate::units::slot_member)
                }));
            }
            for a in topo.ancestors(bdf) {
                let entry = self.protected.entry(a).or_insert_with(|| offsets(a));
                entry.bridge = true;
                // Rule 4: every downstream port of a switch above the guest.
                let kind = |b: Bdf| topo.function(b).map(|f| f.kind);
                if kind(a) == Some(FunctionKind::DownstreamPort)
                    && let Some(up) = topo.parent_bridge(a)
                {
                    unit_acs.extend(
                        topo.children(up)
                            .filter(|&s| kind(s) == Some(FunctionKind::DownstreamPort)),
                    );
                }
            }
            for b in unit_acs {
                if !self.guests.contains_key(&b) {
                    let entry = self.protected.entry(b).or_insert_with(|| offsets(b));
                    entry.unit_acs = true;
                }
            }
        }
        let mut buses: Vec<(u16, u8)> = self.guests.keys().map(|b| (b.segment, b.bus)).collect();
        let mut ranges = Vec::new();
        for (&b, p) in &self.protected {
            if p.bridge
                && let Some(r) = topo.function(b).and_then(|f| f.bus_range())
            {
                buses.push((b.segment, b.bus));
                ranges.push((b.segment, *r.start(), *r.end()));
            }
        }
        buses.sort_unstable();
        buses.dedup();
        self.guarded_buses = buses;
        self.guarded_ranges = ranges;
    }

    /// Records the physical memory of a guest's BARs (e.g.
    /// [`super::GuestBus::physical_bars`]), so that no bridge the hardware
    /// domain keeps may open a window over it. Replaces what was recorded
    /// for this guest; [`Ownership::release`] forgets it.
    pub fn set_guest_memory(&mut self, guest: u16, ranges: impl IntoIterator<Item = (u64, u64)>) {
        self.guest_memory.retain(|m| m.2 != guest);
        self.guest_memory
            .extend(ranges.into_iter().map(|(base, size)| (base, size, guest)));
    }

    /// The guest whose recorded BAR memory overlaps `[pa, pa + size)`.
    pub fn guest_memory_owner(&self, pa: u64, size: u64) -> Option<u16> {
        let end = pa.saturating_add(size);
        self.guest_memory
            .iter()
            .find(|&&(base, len, _)| pa < base.saturating_add(len) && base < end)
            .map(|&(_, _, g)| g)
    }

    /// Decides one hardware-domain config access (`write` is the value for
    /// a write). `reg` is naturally aligned for `width` (1, 2 or 4), as the
    /// shell splits accesses. O(log n), no allocation.
    ///
    /// Protected bits are handled by [`HwdomDecision::WriteMasked`]: Linux
    /// rewrites Bridge Control, Command and windows with read-modify-write
    /// cycles, so a write that leaves protected bits as they are passes, and
    /// one that would change them is applied with those bits kept.
    pub fn hwdom_access(
        &self,
        bdf: Bdf,
        reg: u16,
        width: u16,
        write: Option<u32>,
    ) -> HwdomDecision {
        if self.guests.is_empty() {
            return HwdomDecision::PassThrough;
        }
        if let Some(&g) = self.guests.get(&bdf) {
            return match write {
                None => HwdomDecision::ReadAllOnes,
                Some(_) => HwdomDecision::DropWrite(Refusal::GuestFunction { owner: g }),
            };
        }
        let (Some(_), Some(p)) = (write, self.protected.get(&bdf)) else {
            return HwdomDecision::PassThrough;
        };
        let mut keep = 0u32;
        let mut reason = None;
        let field = |present: bool, offset: u16, len: u16, bits: u32, reason: Refusal| {
            present.then_some(Field {
                offset,
                len,
                bits,
                reason,
            })
        };
        let (bridge, pf) = (p.bridge, p.pf);
        let cap_fields = [
            field(
                p.acs != 0 && (bridge || p.unit_acs),
                p.acs.saturating_add(ACS_CTRL),
                2,
                0xffff,
                Refusal::AcsControlAboveGuest,
            ),
            field(
                p.pcie != 0 && bridge,
                p.pcie.saturating_add(PCIE_LNKCTL),
                2,
                PCIE_LNKCTL_LD as u32,
                Refusal::LinkControlAboveGuest,
            ),
            field(
                p.pm != 0 && (bridge || pf),
                p.pm.saturating_add(PM_CTRL),
                2,
                PM_CTRL_STATE_MASK as u32,
                Refusal::PowerStateAboveGuest,
            ),
            // The resets that would clear the ACS Control kept above.
            field(
                p.pm != 0 && p.unit_acs,
                p.pm.saturating_add(PM_CTRL),
                2,
                PM_CTRL_STATE_MASK as u32,
                Refusal::AcsControlAboveGuest,
            ),
            field(
                p.pcie != 0 && p.unit_acs,
                p.pcie.saturating_add(PCIE_DEVCTL),
                2,
                PCIE_DEVCTL_BCR_FLR as u32,
                Refusal::AcsControlAboveGuest,
            ),
            field(
                p.af != 0 && p.unit_acs,
                p.af.saturating_add(AF_CTRL),
                1,
                AF_CTRL_FLR as u32,
                Refusal::AcsControlAboveGuest,
            ),
            field(
                p.sriov != 0 && pf,
                p.sriov.saturating_add(SRIOV_CTRL),
                2,
                0xffff,
                Refusal::PfOfGuestVf,
            ),
            field(
                p.sriov != 0 && pf,
                p.sriov.saturating_add(SRIOV_NUM_VF),
                2,
                0xffff,
                Refusal::PfOfGuestVf,
            ),
            field(
                p.pcie != 0 && pf,
                p.pcie.saturating_add(PCIE_DEVCTL),
                2,
                PCIE_DEVCTL_BCR_FLR as u32,
                Refusal::PfOfGuestVf,
            ),
            field(
                p.af != 0 && pf,
                p.af.saturating_add(AF_CTRL),
                1,
                AF_CTRL_FLR as u32,
                Refusal::PfOfGuestVf,
            ),
        ];
        let header_fields: &[Field] = if bridge { &BRIDGE_FIELDS } else { &[] };
        for field in header_fields.iter().chain(cap_fields.iter().flatten()) {
            let k = lanes_of(field, reg, width);
            if k != 0 {
                keep |= k;
                reason.get_or_insert(field.reason);
            }
        }
        match reason {
            Some(reason) => HwdomDecision::WriteMasked { keep, reason },
            None => HwdomDecision::PassThrough,
        }
    }

    /// Carries out one hardware-domain config access through `port`,
    /// filtered by [`Ownership::hwdom_access`]. Widths other than 1, 2, 4 or
    /// misaligned registers read all-ones and drop writes.
    #[inline]
    pub fn hwdom_apply<P: ConfigPort + ?Sized>(
        &self,
        port: &mut P,
        bdf: Bdf,
        reg: u16,
        width: u16,
        write: Option<u32>,
    ) -> HwdomOutcome {
        // Nothing is given to a guest: every well-formed access passes
        // through unfiltered (what the full path below decides too).
        if self.guests.is_empty()
            && matches!(width, 1 | 2 | 4)
            && reg & (width - 1) == 0
            && reg < CONFIG_SPACE_SIZE
        {
            let value = match write {
                None => read_width(port, bdf, reg, width),
                Some(v) => {
                    write_width(port, bdf, reg, width, v);
                    0
                }
            };
            return HwdomOutcome {
                value,
                refused: None,
            };
        }
        self.hwdom_apply_filtered(port, bdf, reg, width, write)
    }

    /// [`Ownership::hwdom_apply`] when guests own functions.
    #[inline(never)]
    fn hwdom_apply_filtered<P: ConfigPort + ?Sized>(
        &self,
        port: &mut P,
        bdf: Bdf,
        reg: u16,
        width: u16,
        write: Option<u32>,
    ) -> HwdomOutcome {
        let ones = width_ones(width);
        if !matches!(width, 1 | 2 | 4) || reg & (width - 1) != 0 || reg >= CONFIG_SPACE_SIZE {
            return HwdomOutcome {
                value: if write.is_some() { 0 } else { ones },
                refused: None,
            };
        }
        let pass = |port: &mut P, value: Option<u32>| match value {
            None => read_width(port, bdf, reg, width),
            Some(v) => {
                write_width(port, bdf, reg, width, v);
                0
            }
        };
        match self.hwdom_access(bdf, reg, width, write) {
            HwdomDecision::PassThrough => {
                if let Some(value) = write
                    && let Some(reason) = self.claims_guest_resources(port, bdf, reg, width, value)
                {
                    return HwdomOutcome {
                        value: 0,
                        refused: Some(reason),
                    };
                }
                HwdomOutcome {
                    value: pass(port, write),
                    refused: None,
                }
            }
            HwdomDecision::ReadAllOnes => HwdomOutcome {
                value: ones,
                refused: None,
            },
            HwdomDecision::DropWrite(r) => HwdomOutcome {
                value: 0,
                refused: Some(r),
            },
            HwdomDecision::WriteMasked { keep, reason } => {
                let value = write.unwrap_or(0);
                let current = read_width(port, bdf, reg, width);
                let merged = (value & !keep) | (current & keep);
                write_width(port, bdf, reg, width, merged);
                HwdomOutcome {
                    value: 0,
                    refused: ((value ^ current) & keep != 0).then_some(reason),
                }
            }
        }
    }
}

impl Ownership {
    /// Whether a write to a bridge the hardware domain keeps would make it
    /// claim a guest's bus or BAR memory. Reads the registers it changes
    /// (only for writes to bus numbers or memory windows of a bridge, while
    /// guests exist).
    fn claims_guest_resources<P: ConfigPort + ?Sized>(
        &self,
        port: &mut P,
        bdf: Bdf,
        reg: u16,
        width: u16,
        value: u32,
    ) -> Option<Refusal> {
        if self.guests.is_empty() {
            return None;
        }
        let pending = PendingWrite { reg, width, value };
        if let Some(r) = self.bar_claims_guest_memory(port, bdf, pending) {
            return Some(r);
        }
        let end = reg + width;
        let buses = reg < SUBORDINATE_BUS + 1 && end > SECONDARY_BUS;
        let windows = reg < PREF_LIMIT_UPPER + 4 && end > MEMORY_BASE;
        if !(buses || windows) {
            return None;
        }
        if port.read8(bdf, HEADER_TYPE) & HEADER_TYPE_MASK != HEADER_TYPE_BRIDGE {
            return None;
        }
        // The dword of the bridge header after the write.
        let mut after = |at: u16| dword_after(port, bdf, at, Some(pending));
        if buses {
            let v = after(PRIMARY_BUS);
            let (sec, sub) = ((v >> 8) as u8, (v >> 16) as u8);
            let seg = bdf.segment;
            let claims = sec != 0
                && sec <= sub
                && (self
                    .guarded_buses
                    .iter()
                    .any(|&(s, bus)| s == seg && (sec..=sub).contains(&bus))
                    || self.guarded_ranges.iter().any(|&(s, lo, hi)| {
                        s == seg && !(lo..=hi).contains(&bdf.bus) && lo <= sub && sec <= hi
                    }));
            if claims {
                return Some(Refusal::BusNumbersOverlapGuest);
            }
        }
        if windows && !self.guest_memory.is_empty() {
            let mem = after(MEMORY_BASE);
            let pref = after(PREF_MEMORY_BASE);
            let (pbase_hi, plimit_hi) = (after(PREF_BASE_UPPER), after(PREF_LIMIT_UPPER));
            let mem_window = (
                ((mem & 0xfff0) as u64) << 16,
                ((mem & 0xfff0_0000) as u64) | 0xf_ffff,
            );
            let pref_window = (
                (((pref & 0xfff0) as u64) << 16) | ((pbase_hi as u64) << 32),
                ((pref & 0xfff0_0000) as u64) | 0xf_ffff | ((plimit_hi as u64) << 32),
            );
            for (lo, hi) in [mem_window, pref_window] {
                if lo > hi {
                    continue;
                }
                let claims = self
                    .guest_memory
                    .iter()
                    .any(|&(base, size, _)| base <= hi && lo < base.saturating_add(size));
                if claims {
                    return Some(Refusal::WindowOverlapsGuest);
                }
            }
        }
        None
    }
}

impl Ownership {
    /// Whether a write to a function the hardware domain keeps would make a
    /// BAR or ROM of it decode over a guest's BAR: a write to a BAR or ROM
    /// register while Memory Space is on, or the Command write that turns
    /// Memory Space on. Only those writes size the function (see
    /// [`decoded_memory`]); every other write costs nothing here.
    fn bar_claims_guest_memory<P: ConfigPort + ?Sized>(
        &self,
        port: &mut P,
        bdf: Bdf,
        pending: PendingWrite,
    ) -> Option<Refusal> {
        if self.guest_memory.is_empty() {
            return None;
        }
        let rom = match port.read8(bdf, HEADER_TYPE) & HEADER_TYPE_MASK {
            HEADER_TYPE_NORMAL => ROM_BAR,
            HEADER_TYPE_BRIDGE => BRIDGE_ROM_BAR,
            _ => return None,
        };
        let bars_end = if rom == ROM_BAR { 0x28 } else { 0x18 };
        let memory_now = port.read16(bdf, COMMAND) & COMMAND_MEMORY != 0;
        let memory_after =
            dword_after(port, bdf, COMMAND, Some(pending)) as u16 & COMMAND_MEMORY != 0;
        let moves = pending.touches(BAR0, bars_end - BAR0) || pending.touches(rom, 4);
        let turns_on = pending.touches(COMMAND, 2) && !memory_now && memory_after;
        if !(turns_on || moves && memory_after) {
            return None;
        }
        decoded_memory(port, bdf, Some(pending))
            .iter()
            .any(|&(_, base, size)| self.guest_memory_owner(base, size).is_some())
            .then_some(Refusal::BarOverlapsGuest)
    }
}

pub(crate) const fn width_ones(width: u16) -> u32 {
    match width {
        1 => 0xff,
        2 => 0xffff,
        3 => 0xff_ffff,
        _ => u32::MAX,
    }
}

#[inline]
pub(crate) fn read_width<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    reg: u16,
    width: u16,
) -> u32 {
    match width {
        1 => port.read8(bdf, reg) as u32,
        2 => port.read16(bdf, reg) as u32,
        _ => port.read32(bdf, reg),
    }
}

#[inline]
pub(crate) fn write_width<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    reg: u16,
    width: u16,
    value: u32,
) {
    match width {
        1 => port.write8(bdf, reg, value as u8),
        2 => port.write16(bdf, reg, value as u16),
        _ => port.write32(bdf, reg, value),
    }
}
