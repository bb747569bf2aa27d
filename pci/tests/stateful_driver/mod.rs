//! The stateful harness's driver, shared by `tests/stateful.rs` (a seeded
//! loop on stable) and the cargo-fuzz target in `fuzz/` (long campaigns on
//! nightly). It drives `pci` the way the hypervisor does, decoding one
//! operation after another from a byte string: the hardware domain's
//! reports, removals, filtered config writes and reset calls; assignment
//! of units to guests; the guests' config and MSI-X accesses with the
//! effects they return (stage-2 maps, resets); time, which steps the reset
//! jobs and the AER recovery deadlines; AER errors injected into the
//! simulated fabric and serviced. After every operation it checks the
//! invariants of [`Check`] and returns the first violation.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::common::config;
use crate::vpci_fixture::{Stage2, hwdom_programs_bars, layout, off, program_root_ports};
use pci::aer::{AerConfig, AerReport, RecoveryTracker, Reports, RootPortService, Severity};
use pci::regs::*;
use pci::reset_engine::{ResetJob, ResetOutcome, SavedState, Step, narrowest_reset};
use pci::sim::{ACS_ENABLED, ACS_QEMU, Fabric, SimAerError, Spec, devfn};
use pci::vpci::{Effect, Effects, GuestBus, Owner, Ownership, ReportError, check_guest_placement};
use pci::{
    AcsPolicy, Bdf, ConfigPort, FunctionKind, ResetAction, ResetMethod, Topology, TopologyConfig,
};

const MS: u64 = 1_000_000;
/// The shell's AER deadline for a fatal error's reset.
const AER_DEADLINE_NS: u64 = 500 * MS;
/// Host bridge memory windows (what `hwdom_programs_bars` uses).
const WINDOWS: [(u64, u64); 2] = [(0x1000_0000, 0x3000_0000), (0x80_0000_0000, 0x10_0000_0000)];
/// Config bytes compared by the snapshots (header, capabilities and the
/// first extended capabilities).
const SNAPSHOT_BYTES: u16 = 0x200;

/// The invariants, each checked after every operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// The tree is consistent; incremental units partition the tracked
    /// functions and equal [`Topology::compute_units`].
    Units,
    /// No unit mixes owners, both as the tracker has it and as the
    /// hardware now is (units of the current ACS registers, from scratch);
    /// every guest function stays tracked.
    UnitOwners,
    /// A guest's config and MSI-X accesses change only its own functions'
    /// config space (Bus Master mirrored from its virtual Command) and
    /// MSI-X tables.
    GuestContained,
    /// Stage-2 maps stay inside the windows, off the ECAM and forbidden
    /// ranges, over the guest's own BARs only.
    Stage2,
    /// A hardware-domain config write never changes a guest's function, a
    /// protected register of a bridge above it (bus numbers, windows, SBR,
    /// Command, ACS, Link Disable, power state), the SR-IOV control of the
    /// PF of a guest's VF, nor makes another bridge claim a guest's or a
    /// protected bridge's bus or a guest's BAR memory.
    HwdomContained,
    /// A reset the hardware domain starts touches no guest function and no
    /// bridge above one.
    HwdomReset,
    /// A reset started for a guest (its SBR, FLR, reset call, or the
    /// hypervisor's recovery) touches only that guest's functions.
    GuestReset,
    /// While resets run, physical devices outside every running reset's
    /// reach (its scope, and everything below the bridge of a bus reset)
    /// do not change, wherever renumbering makes them answer.
    ResetScope,
    /// AER events name only functions an error was injected into, and go
    /// to their owner only.
    AerSource,
    /// A fatal error is recovered: some reset covers its source, and no
    /// recovery waits past its deadline.
    Recovery,
    /// The code under test panicked (overflow checks are on in tests).
    Panic,
    /// A hardware-domain report does not add a function to a unit a guest
    /// owns (a function behind a guest's PCIe-to-PCI bridge, or below a
    /// switch without ACS, reported after the assignment), and a refused
    /// report changes neither the tree nor the function's config space.
    ReportJoinsGuestUnit,
    /// An assignment decides units with the ACS state the hardware has
    /// now, not the one of report time: the hardware domain may have turned
    /// ACS off on a port of its own that decides them (no guest was there
    /// to protect it yet). Else the hardware's units mix owners.
    StaleUnitsAtAssign,
}

/// Checks whose violations are fixed on the other branch of this issue
/// (reset policy, SR-IOV PF/VF ownership, AER recovery of bridge sources,
/// AER attribution): counted and reported, but not failed, until both
/// branches are merged. Empty it after the merge.
pub const AWAITING_MERGE: &[Check] = &[];

/// Checks that fail today and are fixed nowhere yet: counted and reported
/// like [`AWAITING_MERGE`], never failed. Empty it with the fix.
pub const KNOWN_OPEN: &[Check] = &[];

/// Whether to corrupt devices' MSI-X table locations (a table at or past
/// the end of its BAR) before assignment: this overflowed in the MSI-X
/// trapped-pages computation, fixed on the other branch. Turn on after
/// the merge.
pub const HOSTILE_MSIX_LAYOUT: bool = true;

/// A violation: which invariant, after which operation, and why.
#[derive(Clone, Debug)]
pub struct Violation {
    pub check: Check,
    pub step: usize,
    pub op: String,
    pub detail: String,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub ops: usize,
    pub reports: usize,
    pub hwdom_writes: usize,
    pub hwdom_refused: usize,
    pub assigned: usize,
    pub guest_accesses: usize,
    pub maps: usize,
    pub resets: usize,
    pub aer_events: usize,
    /// Violations of [`AWAITING_MERGE`] checks (the first of each run).
    pub awaiting: Vec<Violation>,
}

/// Reads operation bytes; zeros once exhausted.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let v = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.u8() as usize % from.len()])
    }
}

/// A reset job and who it is for.
struct Job {
    job: ResetJob,
    next_ns: u64,
    requester: Owner,
    /// Started for an AER recovery.
    recovery: bool,
}

struct Guest {
    id: u16,
    bus: GuestBus,
    s2: Stage2,
    /// Physical BARs of its functions.
    bars: Vec<(u64, u64)>,
    /// Next free guest-physical address in each window, for BAR placement.
    next: [u64; 2],
}

/// 00:01.0 root port ── 01:00.0 nvme
/// 00:02.0 root port ── 02:00.0 e1000e PF with 2 VFs
/// 00:03.0 root port ── switch, downstream ports with ACS ── nvme, e1000e
/// 00:04.0 root port ── switch, downstream ports without ACS ── e1000e, nvme
/// 00:05.0 root port without ACS ── 2-function endpoint with ACS
/// 00:06.0 root port ── pcie-pci-bridge ── 2 conventional functions
pub fn fabric() -> Fabric {
    let rp = Spec::qemu_root_port;
    let dp = |acs| Spec::qemu_x3130_downstream().acs(acs);
    let switch = |acs| {
        Spec::qemu_x3130_upstream()
            .child(0, 0, dp(acs).child(0, 0, Spec::qemu_nvme()))
            .child(1, 0, dp(acs).child(0, 0, Spec::qemu_e1000e()))
    };
    let ep = |d| Spec::endpoint(0x1234, d).acs(Some(ACS_ENABLED)).flr(true);
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), rp().child(0, 0, Spec::qemu_nvme())),
            (
                devfn(2, 0),
                rp().child(0, 0, Spec::qemu_e1000e().af_flr(true).sriov(2, 0x10ca)),
            ),
            (devfn(3, 0), rp().child(0, 0, switch(Some(ACS_QEMU)))),
            (devfn(4, 0), rp().child(0, 0, switch(None))),
            (
                devfn(5, 0),
                rp().acs(None).child(0, 0, ep(1)).child(0, 1, ep(2)),
            ),
            (
                devfn(6, 0),
                rp().child(
                    0,
                    0,
                    Spec::qemu_pcie_pci_bridge()
                        .child(1, 0, Spec::conventional(0x8086, 0x100e))
                        .child(2, 0, Spec::conventional(0x8086, 0x100e)),
                ),
            ),
        ],
    )
}

/// The whole state of one run.
pub struct Driver {
    fab: Fabric,
    topo: Topology,
    own: Ownership,
    /// Every function the fabric had after enumeration.
    all: Vec<Bdf>,
    root_ports: Vec<Bdf>,
    guests: Vec<Guest>,
    jobs: Vec<Job>,
    aer: RootPortService,
    recovery: RecoveryTracker,
    reports: Reports,
    injected: BTreeSet<Bdf>,
    last_was_report: bool,
    last_was_assign: bool,
    pub stats: Stats,
}

type Outcome = Result<(), (Check, String)>;

fn fail<T>(check: Check, detail: String) -> Result<T, (Check, String)> {
    Err((check, detail))
}

fn is_bridge(topo: &Topology, b: Bdf) -> bool {
    topo.function(b).is_some_and(|f| f.kind.is_bridge())
}

/// Config space (first [`SNAPSHOT_BYTES`]) and MSI-X table of a function.
type Snap = (Vec<u32>, Vec<[u32; 4]>);

/// Where `now` first differs from `before`: "at Some(offset) (old -> new)".
fn first_change(before: &Snap, now: &Snap) -> String {
    let at = before.0.iter().zip(&now.0).position(|(a, b)| a != b);
    format!(
        "at {:?} ({:x?} -> {:x?})",
        at.map(|i| i * 4),
        at.map(|i| before.0[i]),
        at.map(|i| now.0[i])
    )
}

fn snap(fab: &mut Fabric, f: Bdf) -> Snap {
    let cfg = (0..SNAPSHOT_BYTES)
        .step_by(4)
        .map(|r| fab.read32(f, r))
        .collect();
    let msix = (0..64u16).map_while(|i| fab.msix_entry(f, i)).collect();
    (cfg, msix)
}

impl Driver {
    /// The fabric enumerated and reported in an order the bytes choose,
    /// BARs programmed, AER enabled on every root port.
    fn new(b: &mut Bytes) -> Self {
        let mut fab = fabric();
        let all = fab.enumerate();
        let mut order = all.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, b.u8() as usize % (i + 1));
        }
        let mut topo = Topology::new(config(&[(0, 0)]));
        for &f in &order {
            let _ = topo.report_add(f, &mut fab);
        }
        hwdom_programs_bars(&mut fab, &all);
        let root_ports: Vec<Bdf> = topo
            .functions()
            .filter(|(_, f)| f.kind == FunctionKind::RootPort)
            .map(|(b, _)| b)
            .collect();
        let mut aer = RootPortService::new(AerConfig::default());
        for &rp in &root_ports {
            let _ = aer.enable(&mut fab, &topo, rp);
        }
        Self {
            fab,
            topo,
            own: Ownership::new(),
            all,
            root_ports,
            guests: Vec::new(),
            jobs: Vec::new(),
            aer,
            recovery: RecoveryTracker::new(AER_DEADLINE_NS),
            reports: Reports::new(),
            injected: BTreeSet::new(),
            last_was_report: false,
            last_was_assign: false,
            stats: Stats::default(),
        }
    }

    fn guest_fns(&self) -> Vec<Bdf> {
        self.guests
            .iter()
            .flat_map(|g| self.own.functions_of(g.id))
            .collect()
    }

    fn snaps(&mut self, fns: &[Bdf]) -> Vec<(Bdf, Snap)> {
        fns.iter().map(|&f| (f, snap(&mut self.fab, f))).collect()
    }

    fn present(&mut self) -> Vec<Bdf> {
        self.fab.present_functions()
    }

    fn masked(&self, b: Bdf) -> bool {
        self.jobs.iter().any(|j| j.job.masks(b))
    }

    // ------------------------------------------------------------ checks

    fn check_units(&mut self) -> Outcome {
        if let Err(e) = self.topo.check_invariants() {
            return fail(Check::Units, e.into());
        }
        let reference = self.topo.compute_units();
        let fns: Vec<Bdf> = self.topo.functions().map(|(b, _)| b).collect();
        for &f in &fns {
            let inc = self.topo.unit_of(f);
            let scratch = reference.unit_of(f).map(|u| u.id);
            if inc != scratch {
                return fail(
                    Check::Units,
                    format!("unit of {f}: incremental {inc:?}, from scratch {scratch:?}"),
                );
            }
        }
        if self.topo.units() != &reference {
            return fail(Check::Units, "unit tables differ".into());
        }
        let mut seen: Vec<Bdf> = reference
            .iter()
            .flat_map(|u| u.members.iter().copied())
            .collect();
        seen.sort();
        if seen != fns {
            return fail(Check::Units, "units do not partition the functions".into());
        }
        Ok(())
    }

    /// Owners of the non-bridge members of each unit of `t`.
    fn mixed_unit(&self, t: &Topology, units: &pci::UnitTable) -> Option<String> {
        for u in units.iter() {
            let owners: BTreeSet<Owner> = u
                .members
                .iter()
                .filter(|&&m| !is_bridge(t, m))
                .map(|&m| self.own.owner(m))
                .collect();
            if owners.len() > 1 {
                return Some(format!("unit {:?} has owners {owners:?}", u.members));
            }
        }
        None
    }

    fn check_unit_owners(&mut self) -> Outcome {
        for f in self.guest_fns() {
            if !self.topo.contains(f) {
                return fail(Check::UnitOwners, format!("guest function {f} untracked"));
            }
        }
        if self.guests.is_empty() {
            return Ok(());
        }
        let units = self.topo.compute_units();
        if let Some(m) = self.mixed_unit(&self.topo, &units) {
            let check = if self.last_was_report {
                Check::ReportJoinsGuestUnit
            } else {
                Check::UnitOwners
            };
            return fail(check, format!("tracker: {m}"));
        }
        // The units the hardware's ACS registers give now: a tracker that
        // reports the tracked functions again, enabling nothing.
        let mut cfg: TopologyConfig = config(&[(0, 0)]);
        cfg.acs_policy = AcsPolicy { enable: 0 };
        let mut fresh = Topology::new(cfg);
        let fns: Vec<Bdf> = self.topo.functions().map(|(b, _)| b).collect();
        for f in fns {
            if !self.masked(f) {
                let _ = fresh.report_add(f, &mut self.fab);
            }
        }
        let units = fresh.compute_units();
        if let Some(m) = self.mixed_unit(&fresh, &units) {
            let check = if self.last_was_assign {
                Check::StaleUnitsAtAssign
            } else {
                Check::UnitOwners
            };
            return fail(check, format!("hardware now: {m}"));
        }
        Ok(())
    }

    /// Guest functions, the bridges above them, the PFs of guest VFs, and
    /// the functions whose ACS decides a guest's unit (computed here, not
    /// asked of the code under test).
    fn protected_sets(&self) -> (Vec<Bdf>, Vec<Bdf>, Vec<Bdf>, Vec<Bdf>) {
        let guest = self.guest_fns();
        let mut above = BTreeSet::new();
        let mut pfs = BTreeSet::new();
        let mut acs = BTreeSet::new();
        let kind = |b: Bdf| self.topo.function(b).map(|f| f.kind);
        for &g in &guest {
            if let Some(pf) = self.topo.function(g).and_then(|f| f.physfn()) {
                pfs.insert(pf);
            }
            for a in self.topo.ancestors(g) {
                above.insert(a);
                if kind(a) == Some(FunctionKind::DownstreamPort)
                    && let Some(up) = self.topo.parent_bridge(a)
                {
                    for s in self.topo.children(up) {
                        if kind(s) == Some(FunctionKind::DownstreamPort) {
                            acs.insert(s);
                        }
                    }
                }
            }
            if kind(g) != Some(FunctionKind::VirtualFunction) {
                for (b, f) in self.topo.functions() {
                    if (b.segment, b.bus, b.device()) == (g.segment, g.bus, g.device())
                        && f.kind != FunctionKind::VirtualFunction
                        && !guest.contains(&b)
                    {
                        acs.insert(b);
                    }
                }
            }
        }
        (
            guest,
            above.into_iter().collect(),
            pfs.into_iter()
                .filter(|p| !self.guest_fns().contains(p))
                .collect(),
            acs.into_iter().collect(),
        )
    }

    /// The registers of [`Check::HwdomContained`] of one function.
    fn protected_fields(&mut self, f: Bdf, above: bool, pf: bool, acs: bool) -> Vec<u32> {
        let Some(t) = self.topo.function(f).cloned() else {
            return Vec::new();
        };
        let fab = &mut self.fab;
        let mut v = Vec::new();
        if above {
            v.extend([
                fab.read16(f, COMMAND) as u32 & 7,
                fab.read32(f, PRIMARY_BUS) & 0xff_ffff,
                fab.read16(f, IO_BASE) as u32,
                fab.read32(f, 0x20),
                fab.read32(f, 0x24),
                fab.read32(f, 0x28),
                fab.read32(f, 0x2c),
                fab.read32(f, 0x30),
                fab.read16(f, BRIDGE_CONTROL) as u32 & 0x48,
            ]);
            if t.caps.pcie != 0 {
                v.push(fab.read16(f, t.caps.pcie as u16 + PCIE_LNKCTL) as u32 & 0x10);
            }
        }
        if (above || pf) && t.caps.pm != 0 {
            v.push(fab.read16(f, t.caps.pm as u16 + PM_CTRL) as u32 & 3);
        }
        if (above || acs) && t.caps.acs != 0 {
            v.push(fab.read16(f, t.caps.acs + ACS_CTRL) as u32);
        }
        if pf && t.caps.sriov != 0 {
            v.push(fab.read32(f, t.caps.sriov + SRIOV_CTRL));
            v.push(fab.read16(f, t.caps.sriov + SRIOV_NUM_VF) as u32);
        }
        v
    }

    fn all_protected_fields(&mut self) -> Vec<(Bdf, Vec<u32>)> {
        let (_, above, pfs, acs) = self.protected_sets();
        let mut fns: BTreeSet<Bdf> = above.iter().copied().collect();
        fns.extend(&pfs);
        fns.extend(&acs);
        fns.into_iter()
            .map(|f| {
                let v = self.protected_fields(
                    f,
                    above.contains(&f),
                    pfs.contains(&f),
                    acs.contains(&f),
                );
                (f, v)
            })
            .collect()
    }

    /// The buses a present bridge claims as hardware routes them: its own
    /// secondary..=subordinate clamped by every bridge physically above it,
    /// since a bridge only sees the config requests its ancestors forward
    /// past their secondary bus. `None` if that is empty.
    fn routed_buses(&mut self, f: Bdf) -> Option<(u8, u8)> {
        let buses = |fab: &mut Fabric, b: Bdf| {
            let v = fab.read32(b, PRIMARY_BUS);
            ((v >> 8) as u8, (v >> 16) as u8)
        };
        let (mut lo, mut hi) = buses(&mut self.fab, f);
        if lo == 0 || lo > hi {
            return None;
        }
        let present = self.present();
        let mut at = f;
        // Up the physical tree: the parent is the bridge whose secondary bus
        // `at` answers on and whose subtree holds it.
        while let Some(dev) = self.fab.device_at(at) {
            let parent = present.iter().copied().find(|&p| {
                p != at
                    && self.fab.read8(p, HEADER_TYPE) & 0x7f == 1
                    && buses(&mut self.fab, p).0 == at.bus
                    && self.fab.devices_below(p).contains(&dev)
            });
            let Some(p) = parent else { break };
            let (psec, psub) = buses(&mut self.fab, p);
            lo = lo.max(psec.saturating_add(1));
            hi = hi.min(psub);
            at = p;
        }
        (lo <= hi).then_some((lo, hi))
    }

    /// Bridges the hardware domain keeps (other than those above guest
    /// functions) that claim a guest's or protected bridge's bus, or a
    /// guest's BAR memory with their memory window. A hardware-domain write
    /// may add none. Each claim is keyed by the physical device and what it
    /// claims, so a bridge that only moves (its parent renumbered) or whose
    /// routed range only shrinks adds nothing.
    fn claims(&mut self) -> Vec<((Option<usize>, u64), String)> {
        let (guest, above, ..) = self.protected_sets();
        // Buses of guest functions and of bridges above them; the ranges
        // those bridges route, for bridges outside them.
        let mut points: Vec<u8> = guest.iter().map(|g| g.bus).collect();
        let mut ranges: Vec<(u8, u8)> = Vec::new();
        for &a in &above {
            if let Some(f) = self.topo.function(a) {
                points.push(a.bus);
                ranges.push((f.secondary, f.subordinate));
            }
        }
        let bars: Vec<(u64, u64)> = self.guests.iter().flat_map(|g| g.bars.clone()).collect();
        let mut out = Vec::new();
        for f in self.present() {
            if above.contains(&f) || guest.contains(&f) || self.masked(f) {
                continue;
            }
            if self.fab.read8(f, HEADER_TYPE) & 0x7f != 1 {
                continue;
            }
            if let Some((sec, sub)) = self.routed_buses(f) {
                let guarded = points.iter().map(|&p| (p, p)).chain(
                    ranges
                        .iter()
                        .copied()
                        .filter(|&(lo, hi)| !(lo..=hi).contains(&f.bus)),
                );
                if let Some((lo, hi)) = guarded.clone().find(|&(lo, hi)| lo <= sub && sec <= hi) {
                    out.push((
                        (self.fab.device_at(f), (lo as u64) << 8 | hi as u64),
                        format!("{f} claims buses {sec:#x}..={sub:#x} over {lo:#x}..={hi:#x}"),
                    ));
                }
            }
            let mem = self.fab.read32(f, MEMORY_BASE);
            let (lo, hi) = (
                ((mem & 0xfff0) as u64) << 16,
                ((mem & 0xfff0_0000) as u64) | 0xf_ffff,
            );
            if lo <= hi
                && let Some(&(base, _)) = bars.iter().find(|&&(b, s)| b <= hi && lo < b + s)
            {
                out.push((
                    (self.fab.device_at(f), base | 1 << 63),
                    format!("{f} window over {base:#x}"),
                ));
            }
        }
        out
    }

    /// Every function outside `touched` is as in `before`.
    fn unchanged(&mut self, before: &[(Bdf, Snap)], touched: &[Bdf], check: Check) -> Outcome {
        for (f, s) in before {
            // Not answering before (coming back from a reset of its own).
            let absent = s.0.first() == Some(&u32::MAX);
            if touched.contains(f) || self.masked(*f) || absent && check == Check::ResetScope {
                continue;
            }
            let now = snap(&mut self.fab, *f);
            if now != *s {
                return fail(check, format!("{f} changed {}", first_change(s, &now)));
            }
        }
        Ok(())
    }

    /// Every physical device of `before` (device, its address then, its
    /// snapshot) outside `touched` is unchanged, wherever it answers now:
    /// a reset that restores a bridge's bus numbers moves what is below it
    /// to other addresses without changing it.
    ///
    /// Only the hardware domain's resets may reach its own devices beyond
    /// their scope: the engine saves and restores by address, and after
    /// the hardware domain renumbered its bridges without a report (its
    /// reset calls over a renumbered bridge are refused, but a bridge
    /// outside the scope may now overlap one in it) a restored bridge can
    /// route an address to another of its devices. A guest's buses are
    /// guarded (`Check::HwdomContained`), so that never reaches a guest.
    fn devices_unchanged(
        &mut self,
        before: &[(usize, Bdf, Snap)],
        touched: &BTreeSet<usize>,
        requesters: &BTreeSet<Owner>,
    ) -> Outcome {
        let hwdom_only = requesters.iter().all(|&r| r == Owner::Hwdom);
        for (dev, was_at, s) in before {
            let absent = s.0.first() == Some(&u32::MAX);
            if touched.contains(dev) || absent {
                continue;
            }
            // What the hardware domain never reported or removed from the
            // tree, the hypervisor cannot keep out of a bus reset's reach:
            // it is the hardware domain's to keep elsewhere.
            let untracked = !self.topo.contains(*was_at);
            if (hwdom_only || untracked) && self.own.owner(*was_at) == Owner::Hwdom {
                continue;
            }
            let Some(at) = self.fab.address_of(*dev) else {
                return fail(
                    Check::ResetScope,
                    format!("the device at {was_at} is cut off"),
                );
            };
            if self.masked(at) {
                continue;
            }
            let now = snap(&mut self.fab, at);
            if now != *s {
                let change = first_change(s, &now);
                return fail(
                    Check::ResetScope,
                    format!("the device at {was_at} (now {at}) changed {change}"),
                );
            }
        }
        Ok(())
    }

    /// The physical devices the running jobs reach: those at their scope's
    /// addresses, and everything below the bridges of their bus resets
    /// (reachable or not).
    fn devices_touched_by_jobs(&mut self) -> BTreeSet<usize> {
        let addrs = self.touched_by_jobs();
        let bridges = self.bridges_of_jobs();
        let mut out: BTreeSet<usize> = addrs
            .into_iter()
            .filter_map(|a| self.fab.device_at(a))
            .collect();
        for b in bridges {
            out.extend(self.fab.devices_below(b));
        }
        out
    }

    // ------------------------------------------------------------ resets

    /// Starts `action` for `requester` the way the shell does (an
    /// overlapping running reset stands for it or refuses it), after
    /// checking whom its scope touches.
    fn start_reset(&mut self, action: ResetAction, requester: Owner, recovery: bool) -> Outcome {
        let scope = self.topo.action_scope(action);
        if self.jobs.iter().any(|j| j.job.overlaps(&scope)) {
            return Ok(());
        }
        let (guest, above, ..) = self.protected_sets();
        for &b in &scope {
            let bridge = is_bridge(&self.topo, b);
            match requester {
                Owner::Hwdom => {
                    if guest.contains(&b) || above.contains(&b) {
                        return fail(
                            Check::HwdomReset,
                            format!("{action:?} touches {b}, a guest's or above one"),
                        );
                    }
                }
                Owner::Guest(_) => {
                    if !bridge && self.own.owner(b) != requester {
                        return fail(
                            Check::GuestReset,
                            format!(
                                "{action:?} for {requester:?} touches {b} of {:?}",
                                self.own.owner(b)
                            ),
                        );
                    }
                }
            }
        }
        let now = self.fab.now_ns();
        let saved = SavedState::capture(&self.topo, &mut self.fab, &scope);
        if let Ok((job, step)) = ResetJob::start(&self.topo, &mut self.fab, action, now, saved) {
            let next_ns = match step {
                Step::Wait { until_ns } => until_ns,
                Step::Done { .. } => now,
            };
            self.stats.resets += 1;
            self.jobs.push(Job {
                job,
                next_ns,
                requester,
                recovery,
            });
        }
        Ok(())
    }

    /// The shell's reset call: the caller must own the function, and no
    /// non-bridge function of the scope may be another's.
    fn reset_call(&mut self, bdf: Bdf, method: Option<ResetMethod>, caller: Owner) -> Outcome {
        if !self.topo.contains(bdf) || self.own.owner(bdf) != caller {
            return Ok(());
        }
        let action = match method {
            Some(m) => match self.topo.reset_action(bdf, m) {
                Ok(a) => a,
                Err(_) => return Ok(()),
            },
            None => match narrowest_reset(&self.topo, |b| self.own.owner(b), &[bdf]) {
                Ok(a) if a.len() == 1 => a[0],
                _ => return Ok(()),
            },
        };
        let scope = self.topo.action_scope(action);
        let foreign = scope
            .iter()
            .any(|&b| !is_bridge(&self.topo, b) && self.own.owner(b) != caller);
        // The shell refuses a reset over a bridge renumbered without a report.
        if foreign
            || pci::reset_engine::renumbered_in_scope(&self.topo, action, &mut self.fab).is_some()
        {
            return Ok(());
        }
        self.start_reset(action, caller, false)
    }

    /// What the shell does with a guest's reset effects.
    fn guest_effects(&mut self, gi: usize, effects: &Effects) -> Outcome {
        let id = self.guests[gi].id;
        let mut requests: Vec<Vec<Bdf>> = Vec::new();
        for e in effects.iter() {
            match *e {
                Effect::SecondaryBusReset { unit } => {
                    let fns: Vec<Bdf> = self
                        .own
                        .functions_of(id)
                        .filter(|&f| self.guests[gi].bus.unit_of(f) == Some(unit))
                        .collect();
                    requests.push(fns);
                }
                Effect::FunctionLevelReset { physical } => requests.push(vec![physical]),
                Effect::Map { .. } => self.stats.maps += 1,
                _ => {}
            }
        }
        for fns in requests {
            if fns.is_empty() {
                continue;
            }
            // An FLR the function has, else the narrowest reset.
            let flr = (fns.len() == 1)
                .then(|| self.topo.reset_methods(fns[0]).ok())
                .flatten()
                .and_then(|m| {
                    m.as_slice()
                        .iter()
                        .copied()
                        .find(|m| matches!(m, ResetMethod::Flr | ResetMethod::AfFlr))
                })
                .map(|method| {
                    vec![ResetAction::Function {
                        bdf: fns[0],
                        method,
                    }]
                });
            let actions = match flr {
                Some(a) => a,
                None => match narrowest_reset(&self.topo, |b| self.own.owner(b), &fns) {
                    Ok(a) => a,
                    Err(_) => continue,
                },
            };
            for a in actions {
                let scope = self.topo.action_scope(a);
                self.recovery.on_owner_reset(&scope);
                self.start_reset(a, Owner::Guest(id), false)?;
            }
        }
        Ok(())
    }

    /// Advances time by `ns`, stepping the reset jobs and the recovery
    /// deadlines as the shell's timer does.
    fn advance(&mut self, ns: u64) -> Outcome {
        let end = self.fab.now_ns().saturating_add(ns);
        let mut touched = self.touched_by_jobs();
        let mut touched_devices = self.devices_touched_by_jobs();
        let mut requesters: BTreeSet<Owner> = self.jobs.iter().map(|j| j.requester).collect();
        let others: Vec<Bdf> = self
            .present()
            .into_iter()
            .filter(|f| !touched.contains(f))
            .collect();
        let before: Vec<(usize, Bdf, Snap)> = others
            .iter()
            .filter_map(|&f| {
                let dev = self.fab.device_at(f)?;
                Some((dev, f, snap(&mut self.fab, f)))
            })
            .collect();
        let mut done = Vec::new();
        for _ in 0..64 {
            let now = self.fab.now_ns();
            let next = self
                .jobs
                .iter()
                .map(|j| j.next_ns)
                .chain(self.recovery.next_deadline())
                .filter(|&t| t <= end)
                .min();
            let at = next.unwrap_or(end).max(now);
            self.fab.advance_ns(at - now);
            let mut i = 0;
            while i < self.jobs.len() {
                if self.jobs[i].next_ns > at {
                    i += 1;
                    continue;
                }
                let guests = &self.guests;
                let shadow = |bdf: Bdf, entry: u16| {
                    guests
                        .iter()
                        .find_map(|g| g.bus.msix_programmed(bdf, entry))
                };
                let step = self.jobs[i]
                    .job
                    .step(&self.topo, &mut self.fab, &shadow, at);
                match step {
                    Step::Wait { until_ns } => {
                        self.jobs[i].next_ns = until_ns.max(at + 1);
                        i += 1;
                    }
                    Step::Done { outcome } => {
                        let j = self.jobs.swap_remove(i);
                        done.push(j.job.action());
                        let scope = j.job.scope().to_vec();
                        let failed = match &outcome {
                            ResetOutcome::TimedOut(gone) => gone.clone(),
                            ResetOutcome::Ready => Vec::new(),
                        };
                        let ready: Vec<Bdf> = scope
                            .iter()
                            .copied()
                            .filter(|b| !failed.contains(b))
                            .collect();
                        let link = !matches!(j.job.action(), ResetAction::Function { .. });
                        let _ = (j.requester, j.recovery);
                        // As the shell does: a bus reset also ends the
                        // recovery of the bridge whose link it reset.
                        let mut ready = ready;
                        for b in pci::aer::recovered_by(&self.topo, j.job.action()) {
                            if !ready.contains(&b) && !failed.contains(&b) {
                                ready.push(b);
                            }
                        }
                        self.recovery.on_reset_done(&ready, &failed, link);
                    }
                }
            }
            while let Some(need) = self.recovery.poll(at) {
                // The shell's rule: the source's recovery reset, or, when
                // that would touch another owner's functions, none (given
                // up, never waiting forever).
                match pci::aer::recovery_reset(&self.topo, |b| self.own.owner(b), need.source) {
                    Err(pci::reset_engine::EngineError::NotTheRequesters { .. }) => {
                        self.recovery.give_up(need.source);
                    }
                    Ok(actions)
                        if actions.iter().any(|&a| {
                            pci::aer::recovered_by(&self.topo, a).contains(&need.source)
                        }) =>
                    {
                        // As the shell's resets::start: a running reset
                        // over part of its scope that does not cover it all
                        // refuses it (Busy), and the takeover is retried.
                        let busy = actions.iter().any(|&a| {
                            let scope = self.topo.action_scope(a);
                            self.jobs.iter().any(|j| {
                                j.job.overlaps(&scope) && !scope.iter().all(|b| j.job.masks(*b))
                            })
                        });
                        if busy {
                            let retry = at.saturating_add(pci::aer::TAKEOVER_RETRY_NS);
                            self.recovery.retry_at(need.source, retry);
                            continue;
                        }
                        for a in actions {
                            self.start_reset(a, need.owner, true)?;
                        }
                        touched.extend(self.touched_by_jobs());
                        touched_devices.extend(self.devices_touched_by_jobs());
                        requesters.extend(self.jobs.iter().map(|j| j.requester));
                    }
                    other => {
                        return fail(
                            Check::Recovery,
                            format!("no reset covers {} ({other:?})", need.source),
                        );
                    }
                }
            }
            if at >= end {
                break;
            }
        }
        for r in self.recovery.active() {
            // A running reset that covers the source ends it when it ends
            // (it may wait up to a minute for devices that are not ready).
            let covered = self.jobs.iter().any(|j| {
                j.job.masks(r.source)
                    || pci::aer::recovered_by(&self.topo, j.job.action()).contains(&r.source)
            });
            if !covered
                && r.deadline_ns
                    .is_some_and(|d| d.saturating_add(5_000 * MS) < end)
            {
                return fail(
                    Check::Recovery,
                    format!("recovery of {} stuck in {:?}", r.source, r.state),
                );
            }
        }
        let actions: Vec<ResetAction> = self.jobs.iter().map(|j| j.job.action()).collect();
        self.devices_unchanged(&before, &touched_devices, &requesters)
            .map_err(|(c, d)| (c, format!("{d}; running {actions:?}, done {done:?}")))
    }

    /// The functions the running jobs reset, and the bridges that perform
    /// their bus resets.
    /// A bus reset reaches everything physically below the bridge,
    /// tracked or not.
    fn touched_by_jobs(&mut self) -> Vec<Bdf> {
        let mut out: Vec<Bdf> = self
            .jobs
            .iter()
            .flat_map(|j| j.job.scope().iter().copied())
            .collect();
        for b in self.bridges_of_jobs() {
            out.push(b);
            out.extend(self.fab.below(b));
        }
        out
    }

    /// The bridges whose subtree the running jobs reach: those of bus and
    /// slot resets, and bridges under a function-level reset (a PM reset
    /// loses its bus numbers: what is below is cut off until they are
    /// restored).
    fn bridges_of_jobs(&self) -> Vec<Bdf> {
        self.jobs
            .iter()
            .filter_map(|j| match j.job.action() {
                ResetAction::SecondaryBus { bridge } => Some(bridge),
                ResetAction::Slot { port } => Some(port),
                ResetAction::Function { bdf, .. } if is_bridge(&self.topo, bdf) => Some(bdf),
                ResetAction::Function { .. } => None,
            })
            .collect()
    }

    // ------------------------------------------------------------ AER

    fn service(&mut self, rp: Bdf) -> Outcome {
        let now = self.fab.now_ns();
        let mut reports = core::mem::take(&mut self.reports);
        let r = self
            .aer
            .service_into(&self.topo, &mut self.fab, rp, now, &mut reports);
        let mut out = Ok(());
        if r.is_ok() {
            let events: Vec<_> = reports
                .iter()
                .filter_map(|r| match r {
                    AerReport::Event(e) => Some(*e),
                    _ => None,
                })
                .collect();
            for e in events {
                self.stats.aer_events += 1;
                if !self.injected.contains(&e.source) {
                    out = fail(
                        Check::AerSource,
                        format!("event of {} never injected", e.source),
                    );
                    break;
                }
                let owner = self.own.owner(e.source);
                for g in &mut self.guests {
                    let mine = Owner::Guest(g.id) == owner;
                    if mine && g.bus.aer_deliver(&e).is_none() {
                        out = fail(
                            Check::AerSource,
                            format!("{} not delivered to {owner:?}", e.source),
                        );
                    }
                    if !mine && g.bus.unit_of(e.source).is_some() {
                        out = fail(
                            Check::AerSource,
                            format!("{} of {owner:?} is on guest {}'s bus", e.source, g.id),
                        );
                    }
                }
                if e.severity == Severity::Fatal || out.is_ok() {
                    self.recovery.on_event(&e, owner);
                }
            }
        }
        self.reports = reports;
        out
    }

    // ------------------------------------------------------------ guests

    fn assign(&mut self, b: &mut Bytes) -> Result<String, (Check, String)> {
        let id = 1 + (b.u8() % 2) as u16;
        if self.guests.iter().any(|g| g.id == id) {
            return Ok(format!("assign to {id}: running"));
        }
        let candidates: Vec<Bdf> = self
            .topo
            .functions()
            .filter(|(_, f)| !f.kind.is_bridge())
            .map(|(b, _)| b)
            .collect();
        let mut want = Vec::new();
        for _ in 0..1 + b.u8() % 2 {
            if let Some(f) = b.pick(&candidates) {
                want.push(f);
            }
        }
        if HOSTILE_MSIX_LAYOUT && b.u8().is_multiple_of(4) {
            // A device whose MSI-X table sits at or past the end of its BAR.
            for &f in &want {
                if let Some(t) = self.topo.function(f)
                    && t.caps.msix != 0
                {
                    let v =
                        b.u32() & !7 | (self.fab.read32(f, t.caps.msix as u16 + MSIX_TABLE) & 7);
                    self.fab
                        .poke(f, t.caps.msix as u16 + MSIX_TABLE, &v.to_le_bytes());
                }
            }
        }
        let units = match self
            .own
            .assign(&mut self.topo, &mut self.fab, id, &want, true)
        {
            Ok(u) => u,
            Err(e) => return Ok(format!("assign {want:?} to {id}: {e:?}")),
        };
        let built = GuestBus::new(&units, &self.topo, &mut self.fab, layout());
        let Ok(mut bus) = built else {
            self.own.release(&self.topo, id);
            return Ok(format!("assign {want:?} to {id}: bus {:?}", built.err()));
        };
        let placed =
            check_guest_placement(&bus, id, &self.topo, &self.own, &mut self.fab, &WINDOWS);
        if placed.is_err() {
            self.own.release(&self.topo, id);
            return Ok(format!("assign {want:?} to {id}: {placed:?}"));
        }
        program_root_ports(&mut bus, &mut self.fab);
        let bars: Vec<(u64, u64)> = bus.physical_bars().collect();
        self.own.set_guest_memory(id, bars.iter().copied());
        let l = layout();
        self.guests.push(Guest {
            id,
            bus,
            s2: Stage2::default(),
            bars,
            next: [l.mem32.0, l.mem64.0],
        });
        // The shell's rule: a recovery owed by the previous owner ends with
        // the reset before the handover.
        for &f in units.iter().flatten() {
            self.recovery.forget(f);
        }
        self.stats.assigned += 1;
        Ok(format!("assign {want:?} to {id}: {units:?}"))
    }

    /// One guest config access, checked: only its own functions change.
    fn guest_access(&mut self, gi: usize, at: u64, width: u16, value: Option<u32>) -> Outcome {
        let present = self.present();
        let before = self.snaps(&present);
        let id = self.guests[gi].id;
        let mut e = Effects::new();
        let g = &mut self.guests[gi];
        match value {
            Some(v) => g.bus.config_write(&mut self.fab, at, width, v, &mut e),
            None => {
                let _ = g.bus.config_read(&mut self.fab, at, width);
            }
        }
        self.stats.guest_accesses += 1;
        let l = layout();
        if let Err(s) = g.s2.apply(&e, &l, &g.bars) {
            return fail(Check::Stage2, s);
        }
        // Its own functions: only Bus Master (mirrored) may change.
        for (f, s) in &before {
            if self.own.owner(*f) != Owner::Guest(id) || self.masked(*f) {
                continue;
            }
            let now = snap(&mut self.fab, *f);
            for (i, (a, b)) in s.0.iter().zip(&now.0).enumerate() {
                let mask = if i == 1 {
                    !(COMMAND_BUS_MASTER as u32)
                } else {
                    u32::MAX
                };
                if a & mask != b & mask {
                    return fail(
                        Check::GuestContained,
                        format!("its {f} +{:#x}: {a:#x} -> {b:#x}", i * 4),
                    );
                }
            }
        }
        let mine: Vec<Bdf> = self.own.functions_of(id).collect();
        self.unchanged(&before, &mine, Check::GuestContained)?;
        self.guest_effects(gi, &e)
    }

    /// Sizes and places every BAR of the guest's functions like Linux, then
    /// turns Memory and Bus Master on.
    fn guest_program_bars(&mut self, gi: usize) -> Outcome {
        for unit in 0..self.guests[gi].bus.units() {
            let bus = unit as u8 + 1;
            for func in 0..8u8 {
                let g = &mut self.guests[gi];
                if g.bus.config_read(&mut self.fab, off(bus, 0, func, 0), 4) == u32::MAX {
                    continue;
                }
                let mut i = 0u16;
                while i < 6 {
                    let reg = BAR0 + 4 * i;
                    let g = &mut self.guests[gi];
                    let orig = g.bus.config_read(&mut self.fab, off(bus, 0, func, reg), 4);
                    self.guest_access(gi, off(bus, 0, func, reg), 4, Some(u32::MAX))?;
                    let g = &mut self.guests[gi];
                    let rb = g.bus.config_read(&mut self.fab, off(bus, 0, func, reg), 4);
                    let is64 = orig & 7 == 4;
                    if rb == 0 || orig & 1 != 0 {
                        i += 1;
                        continue;
                    }
                    let size = (!(rb & !0xf) as u64).wrapping_add(1) & 0xffff_ffff;
                    let size = size.max(0x1000);
                    let w = usize::from(is64);
                    let addr = g.next[w].next_multiple_of(size);
                    g.next[w] = addr + size;
                    self.guest_access(gi, off(bus, 0, func, reg), 4, Some(addr as u32))?;
                    if is64 {
                        self.guest_access(
                            gi,
                            off(bus, 0, func, reg + 4),
                            4,
                            Some((addr >> 32) as u32),
                        )?;
                    }
                    i += if is64 { 2 } else { 1 };
                }
                self.guest_access(gi, off(bus, 0, func, COMMAND), 2, Some(6))?;
            }
        }
        Ok(())
    }

    fn msix_access(&mut self, gi: usize, b: &mut Bytes) -> Outcome {
        let traps: Vec<(u64, u64)> = self.guests[gi]
            .s2
            .regions
            .iter()
            .filter(|r| r.3)
            .map(|r| (r.0, r.1))
            .collect();
        let Some((ipa, size)) = b.pick(&traps) else {
            return Ok(());
        };
        let at = (ipa + (b.u16() as u64 % size)) & !3;
        let width = [4u16, 4, 8, 2][b.u8() as usize % 4];
        let present = self.present();
        let before = self.snaps(&present);
        let id = self.guests[gi].id;
        let mut e = Effects::new();
        let g = &mut self.guests[gi];
        if b.u8().is_multiple_of(3) {
            let _ = g.bus.msix_read(&mut self.fab, at, width);
        } else {
            let v = b.u32() as u64 | (b.u32() as u64) << 32;
            g.bus.msix_write(&mut self.fab, at, width, v, &mut e);
        }
        self.stats.guest_accesses += 1;
        let mine: Vec<Bdf> = self.own.functions_of(id).collect();
        self.unchanged(&before, &mine, Check::GuestContained)
    }

    // ------------------------------------------------------------ hwdom

    /// Registers the hardware domain aims at most.
    fn hwdom_reg(&self, f: Bdf, b: &mut Bytes) -> u16 {
        let t = self.topo.function(f);
        let cap = |o: u16, plus: u16| if o == 0 { 0 } else { o + plus };
        let (acs, pcie, pm, sriov, af, msix) = t.map_or((0, 0, 0, 0, 0, 0), |t| {
            (
                t.caps.acs,
                t.caps.pcie as u16,
                t.caps.pm as u16,
                t.caps.sriov,
                t.caps.af as u16,
                t.caps.msix as u16,
            )
        });
        let regs = [
            COMMAND,
            PRIMARY_BUS,
            SECONDARY_BUS,
            SUBORDINATE_BUS,
            IO_BASE,
            MEMORY_BASE,
            MEMORY_BASE + 2,
            PREF_MEMORY_BASE,
            PREF_BASE_UPPER,
            BRIDGE_CONTROL,
            BAR0,
            BAR0 + 4,
            BAR0 + 8,
            cap(acs, ACS_CTRL),
            cap(pcie, PCIE_DEVCTL),
            cap(pcie, PCIE_LNKCTL),
            cap(pm, PM_CTRL),
            cap(sriov, SRIOV_CTRL),
            cap(sriov, SRIOV_NUM_VF),
            cap(af, AF_CTRL),
            cap(msix, 2),
            b.u16() % 0x1000,
        ];
        regs[b.u8() as usize % regs.len()]
    }

    fn hwdom_value(&self, f: Bdf, reg: u16, b: &mut Bytes) -> u32 {
        match b.u8() % 6 {
            0 => 0,
            1 => u32::MAX,
            // Bus numbers that take another bridge's or a guest's bus.
            2 => {
                let bus = b.pick(&self.all).map_or(1, |x| x.bus) as u32;
                let sub = bus + (b.u8() % 3) as u32;
                (f.bus as u32) | bus << 8 | sub.min(255) << 16
            }
            // A guest BAR's address, as a memory window or a BAR.
            3 | 4 => {
                let bars: Vec<(u64, u64)> =
                    self.guests.iter().flat_map(|g| g.bars.clone()).collect();
                match b.pick(&bars) {
                    Some((base, _)) if (MEMORY_BASE..PREF_BASE_UPPER).contains(&reg) => {
                        let mb = (base >> 16) as u32 & 0xfff0;
                        mb | (mb << 16)
                    }
                    Some((base, _)) => base as u32,
                    None => b.u32(),
                }
            }
            _ => b.u32(),
        }
    }

    fn hwdom_write(&mut self, b: &mut Bytes) -> Result<String, (Check, String)> {
        let (guest, above, pfs, acs) = self.protected_sets();
        // Mostly functions that matter: the guests', those above them, and
        // their siblings; any present function too.
        let present = self.present();
        let pool: Vec<Bdf> = guest
            .iter()
            .chain(&above)
            .chain(&above)
            .chain(&pfs)
            .chain(&acs)
            .chain(&acs)
            .chain(&present)
            .copied()
            .collect();
        let Some(f) = b.pick(&pool) else {
            return Ok("hwdom write: nothing".into());
        };
        let width = [1u16, 2, 4, 4][b.u8() as usize % 4];
        let reg = self.hwdom_reg(f, b) & !(width - 1);
        let mut value = self.hwdom_value(f, reg, b);
        if b.u8().is_multiple_of(3) {
            // The current value with one bit flipped (read-modify-write).
            let cur = match width {
                1 => self.fab.read8(f, reg) as u32,
                2 => self.fab.read16(f, reg) as u32,
                _ => self.fab.read32(f, reg),
            };
            value = cur ^ (1 << (b.u8() % 32));
        }
        let value = match width {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        };
        let prot = self.all_protected_fields();
        let before = self.snaps(&guest);
        let claims = self.claims();
        let out = self
            .own
            .hwdom_apply(&mut self.fab, f, reg, width, Some(value));
        self.stats.hwdom_writes += 1;
        if out.refused.is_some() {
            self.stats.hwdom_refused += 1;
        }
        let op = format!(
            "hwdom write {f} +{reg:#x}/{width} = {value:#x}: {:?}",
            out.refused
        );
        let after = self.all_protected_fields();
        if let Some(((p, a), (_, z))) = prot.iter().zip(&after).find(|(x, y)| x != y) {
            return fail(
                Check::HwdomContained,
                format!("{op}: {p} protected {a:x?} -> {z:x?}"),
            );
        }
        self.unchanged(&before, &[], Check::HwdomContained)
            .map_err(|(c, d)| (c, format!("{op}: {d}")))?;
        let claims: Vec<_> = claims.into_iter().map(|(k, _)| k).collect();
        if let Some((_, c)) = self.claims().into_iter().find(|(k, _)| !claims.contains(k)) {
            return fail(Check::HwdomContained, format!("{op}: {c}"));
        }
        Ok(op)
    }

    // ------------------------------------------------------------ driver

    fn op(&mut self, b: &mut Bytes) -> Result<String, (Check, String)> {
        let kind = b.u8() % 20;
        self.last_was_report = kind == 0;
        self.last_was_assign = kind == 8;
        let gi = (!self.guests.is_empty()).then(|| b.u8() as usize % self.guests.len());
        match (kind, gi) {
            (0, _) => {
                let f = if b.u8().is_multiple_of(8) {
                    Bdf::from_devfn(0, b.u8() % 16, b.u8())
                } else {
                    b.pick(&self.all).unwrap_or(Bdf::new(0, 0, 0, 0))
                };
                let tree = |t: &Topology| {
                    let fns: Vec<Bdf> = t.functions().map(|(b, _)| b).collect();
                    (fns, t.orphans().collect::<Vec<Bdf>>())
                };
                let before = (tree(&self.topo), snap(&mut self.fab, f));
                // What the shell calls for PCI_ADD.
                let r = self.own.report_add(&mut self.topo, f, &mut self.fab);
                self.stats.reports += 1;
                if let Err(ReportError::JoinsGuestUnit { .. }) = r
                    && (tree(&self.topo), snap(&mut self.fab, f)) != before
                {
                    return fail(
                        Check::ReportJoinsGuestUnit,
                        format!("report {f}: {r:?}, but the tree or its config changed"),
                    );
                }
                Ok(format!("report {f}: {r:?}"))
            }
            (1, _) => {
                let Some(f) = b.pick(&self.all) else {
                    return Ok(String::new());
                };
                // The shell refuses removals that would take a guest's function.
                let gone: Vec<Bdf> = std::iter::once(f).chain(self.topo.subtree(f)).collect();
                if gone.iter().any(|&g| self.own.owner(g) != Owner::Hwdom) {
                    return Ok(format!("remove {f}: refused"));
                }
                let r = self.topo.report_remove(f);
                for g in gone {
                    self.recovery.forget(g);
                }
                self.own.refresh(&self.topo);
                Ok(format!("remove {f}: {r:?}"))
            }
            (2..=6, _) => self.hwdom_write(b),
            (7, _) => {
                let Some(f) = b.pick(&self.all) else {
                    return Ok(String::new());
                };
                let methods = [
                    None,
                    Some(ResetMethod::Flr),
                    Some(ResetMethod::AfFlr),
                    Some(ResetMethod::Pm),
                    Some(ResetMethod::Bus),
                    Some(ResetMethod::Slot),
                ];
                let m = methods[b.u8() as usize % methods.len()];
                self.reset_call(f, m, Owner::Hwdom)?;
                Ok(format!("hwdom reset {f} {m:?}"))
            }
            (8, _) => self.assign(b),
            (9, Some(gi)) if b.u8().is_multiple_of(4) => {
                let id = self.guests[gi].id;
                if self.jobs.iter().any(|j| j.requester == Owner::Guest(id)) {
                    return Ok(format!("release {id}: resets running"));
                }
                self.guests.remove(gi);
                // As the shell: its recovery ends with the handback reset.
                for f in self.own.release(&self.topo, id) {
                    self.recovery.forget(f);
                }
                Ok(format!("release {id}"))
            }
            (10..=13, Some(gi)) => {
                let bus = b.u8() % (self.guests[gi].bus.units() as u8 + 2);
                let (dev, func) = (b.u8() % 3, b.u8() % 2);
                let regs = [
                    COMMAND,
                    BAR0,
                    BAR0 + 4,
                    BAR0 + 12,
                    PRIMARY_BUS,
                    BRIDGE_CONTROL,
                    0x40 + b.u8() as u16 % 0xc0,
                    0x100 + b.u16() % 0x100,
                    b.u16() % 0x1000,
                ];
                let reg = regs[b.u8() as usize % regs.len()];
                let width = [1u16, 2, 4, 4, 8, 3][b.u8() as usize % 6];
                let reg = if width <= 4 { reg & !(width - 1) } else { reg };
                let value = match b.u8() % 4 {
                    0 => 0,
                    1 => u32::MAX,
                    // Bridge Control SBR, Device Control FLR, Command.
                    2 => [0x40, 0x8000, 6, 0x4000_0000][b.u8() as usize % 4],
                    _ => b.u32(),
                };
                let write = !b.u8().is_multiple_of(4);
                let at = off(bus, dev, func, reg);
                self.guest_access(gi, at, width, write.then_some(value))?;
                Ok(format!(
                    "guest {} {} +{at:#x}/{width} {value:#x}",
                    self.guests[gi].id,
                    if write { "write" } else { "read" }
                ))
            }
            (14, Some(gi)) => {
                self.guest_program_bars(gi)?;
                Ok(format!("guest {} programs its BARs", self.guests[gi].id))
            }
            (15, Some(gi)) => {
                self.msix_access(gi, b)?;
                Ok(format!("guest {} MSI-X access", self.guests[gi].id))
            }
            (16, _) => {
                let ns = match b.u8() % 4 {
                    0 => MS,
                    1 => 100 * MS,
                    2 => 1_000 * MS,
                    _ => (b.u8() as u64) * MS,
                };
                self.advance(ns)?;
                Ok(format!("advance {ns} ns"))
            }
            (17, _) => {
                let Some(f) = b.pick(&self.all) else {
                    return Ok(String::new());
                };
                let bit = b.u8();
                let err = if bit & 0x80 != 0 {
                    SimAerError::Correctable(bit % 16)
                } else {
                    SimAerError::Uncorrectable(bit % 26)
                };
                let msg = self.fab.inject_aer(f, err);
                // A masked error sends nothing but stays logged in the
                // function's status: once unmasked, a later search of the
                // root port's subtree reports it. Any attempt counts.
                self.injected.insert(f);
                if let Some(m) = msg
                    && m.interrupt
                {
                    self.service(m.root_port)?;
                }
                Ok(format!("inject {err:?} into {f}: {msg:?}"))
            }
            (18, _) => {
                let Some(rp) = b.pick(&self.root_ports) else {
                    return Ok(String::new());
                };
                self.service(rp)?;
                Ok(format!("service {rp}"))
            }
            (19, Some(gi)) => {
                // The guest's reset call on one of its functions.
                let id = self.guests[gi].id;
                let fns: Vec<Bdf> = self.own.functions_of(id).collect();
                let Some(f) = b.pick(&fns) else {
                    return Ok(String::new());
                };
                let methods = [
                    None,
                    Some(ResetMethod::Flr),
                    Some(ResetMethod::Pm),
                    Some(ResetMethod::Bus),
                ];
                let m = methods[b.u8() as usize % methods.len()];
                self.reset_call(f, m, Owner::Guest(id))?;
                Ok(format!("guest {id} reset {f} {m:?}"))
            }
            _ => Ok(String::new()),
        }
    }

    fn check_all(&mut self) -> Outcome {
        self.check_units()?;
        self.check_unit_owners()?;
        if self.fab.bad_accesses() != 0 {
            return fail(
                Check::HwdomContained,
                "misaligned or out-of-range config access".into(),
            );
        }
        Ok(())
    }
}

/// Runs the operations `data` encodes (at most `max_ops`). Returns what it
/// did, or the first violation of a check not in [`AWAITING_MERGE`].
/// Panics of the code under test are caught and reported as
/// [`Check::Panic`].
pub fn run(data: &[u8], max_ops: usize) -> Result<Stats, Violation> {
    let mut b = Bytes { data, at: 0 };
    let mut d = match catch_unwind(AssertUnwindSafe(|| Driver::new(&mut b))) {
        Ok(d) => d,
        Err(p) => {
            return Err(Violation {
                check: Check::Panic,
                step: 0,
                op: "setup".into(),
                detail: panic_text(&p),
            });
        }
    };
    let mut awaiting: BTreeSet<Check> = BTreeSet::new();
    // Prints every operation (for replaying a failing sequence).
    let trace = std::env::var_os("PCI_STATEFUL_TRACE").is_some();
    for step in 0..max_ops {
        if b.done() {
            break;
        }
        let start = b.at;
        let r = catch_unwind(AssertUnwindSafe(|| {
            let op = d.op(&mut b);
            let op_text = match &op {
                Ok(s) => s.clone(),
                Err(_) => String::new(),
            };
            (op.and_then(|s| d.check_all().map(|()| s)), op_text)
        }));
        d.stats.ops += 1;
        if trace {
            eprintln!("{step}: {:?}", r.as_ref().map(|x| &x.1));
        }
        let (check, op, detail) = match r {
            Ok((Ok(_), _)) => continue,
            Ok((Err((c, detail)), op)) => (c, op, detail),
            Err(p) => (Check::Panic, String::new(), panic_text(&p)),
        };
        let v = Violation {
            check,
            step,
            op: if op.is_empty() {
                format!("bytes {:02x?}", &data[start..b.at.min(data.len())])
            } else {
                op
            },
            detail,
        };
        if AWAITING_MERGE.contains(&check) || KNOWN_OPEN.contains(&check) {
            if awaiting.insert(check) {
                d.stats.awaiting.push(v);
            }
            // The state may be broken past repair: stop this sequence.
            break;
        }
        return Err(v);
    }
    Ok(d.stats)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}
