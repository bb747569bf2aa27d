//! The reset engine: non-blocking state machines that perform a reset with
//! the spec's timing, save the state of every function it touches before,
//! and restore it after, function by function as each becomes ready.
//!
//! `pci` never sleeps: the caller gives the time (nanoseconds of a monotonic
//! clock) and gets back the next deadline.
//!
//! ```text
//! hw = Hw { config: ecam, memory: mmio };   // or anything ConfigPort + MemoryPort
//! saved = SavedState::capture(topo, hw, &topo.action_scope(action));
//! (job, step) = ResetJob::start(topo, hw, action, now, saved)?;
//! loop {
//!     match step {
//!         Step::Wait { until_ns } => arm a timer for until_ns; on expiry:
//!             step = job.step(topo, hw, &shadow, now),
//!         Step::Done { outcome } => break: Ready, or TimedOut(functions
//!             that never came back: quarantine them),
//!     }
//! }
//! ```
//! A `Wait` whose deadline is not in the future (FLR's first Transactions
//! Pending read is at the start time) means: step again at once. The
//! functions' BAR mappings in their owners' stage-2 stay as they are; the
//! device does not decode while Command is 0, so MMIO reads all-ones as on
//! hardware.
//!
//! Meanwhile, config accesses of the owners to `job.masks(bdf)` functions are
//! answered by [`masked_read`] (writes dropped): the owner sees what hardware
//! shows during a reset, and no vCPU stalls. Several jobs may run at once on
//! disjoint scopes ([`ResetJob::overlaps`]).
//!
//! Around the engine (the shell's part): choose the action with
//! [`Topology::reset_methods`] / [`narrowest_reset`] (guest SBR) /
//! [`check_reset`] (every request: nothing of another owner in the
//! scope); log a warning when
//! [`Topology::is_default_reset_order`] is false (a configured order);
//! put
//! `TimedOut` functions and `NoMethod` errors in the [`Quarantine`]; check
//! [`Reservations::breaks_reservation`] and the quarantine before every
//! assignment; on an MSI-X vector unmask, [`msix_table_lost`] then
//! [`repair_msix_table`] (a device that reset itself lost it;
//! `vpci::GuestBus::msix_commit` does it for guests' functions).
//!
//! # Sequences and timing
//!
//! - **FLR** (PCIe r6.0 §6.6.2; Linux `pcie_flr`): Transactions Pending
//!   (Device Status bit 5) read at 0, 100, 300 and 700 ms
//!   ([`FLR_TP_POLLS_NS`]); the FLR is initiated at the first read that
//!   shows it clear, or after the last one regardless. Then, unless Status
//!   reports Immediate Readiness, [`RESET_DELAY_NS`] (100 ms) before the
//!   first config request, then the readiness poll.
//! - **AF FLR**: the same through the Advanced Features capability (TP in AF
//!   Status bit 0, Initiate FLR in AF Control bit 0).
//! - **Device specific**: the devices of the quirk table (Intel 82599 VF,
//!   Chelsio T4) are reset by Linux with an FLR issued without checking
//!   DevCap: the same here.
//! - **PM** (PCI PM 1.2 §5.4): D0 → D3hot, [`D3HOT_DELAY_NS`] (10 ms), D3hot
//!   → D0, 10 ms, readiness poll. Only offered when NoSoftRst is clear (the
//!   probe checks). A function already in D3hot goes straight to D0 (that
//!   transition is the reset); D1/D2 is refused like Linux does.
//! - **Bus** (Secondary Bus Reset, PCIe §7.5.1.3.13) and **slot** (the same
//!   with the slot's Presence Detect / DLL State Changed events masked, as
//!   pciehp does): Bridge Control SBR held [`TRST_NS`] (1 ms, the spec's
//!   Trst; Linux holds 2 ms). After deassert, a port that reports Data Link
//!   Layer Link Active (LinkCap bit 20) is polled every 1 ms for DLLLA
//!   (Link Status bit 13), and the 100 ms start when the link is up; other
//!   bridges wait 100 ms from deassert. Linux does the DLLLA wait only above
//!   5 GT/s (§2.4); the spec's rule (no config request until 100 ms after
//!   link training completes, for ports supporting > 5 GT/s; 100 ms after
//!   reset exit otherwise) is satisfied by both, and waiting for the link
//!   when the port can tell never comes earlier than 100 ms after deassert.
//!   A link not up after [`LINK_UP_TIMEOUT_NS`] (1 s) gets one retrain
//!   attempt, then 1 s more; still down, the job ends TimedOut (nothing
//!   below can answer).
//! - **Readiness** (Linux `pci_dev_wait`): Vendor ID read; 0x0001 (RRS with
//!   Software Visibility) or all-ones means not ready. Polls back off 1, 2,
//!   4, ... ms, capped at [`READY_POLL_MAX_NS`] (64 ms: Linux's uncapped
//!   doubling can find a device up to twice late). After
//!   [`READY_RETRAIN_AFTER_NS`] (1 s) one Retrain Link on the parent port
//!   (once per job) and the backoff restarts; after [`READY_TIMEOUT_NS`]
//!   (60 s) the functions still not back are reported.
//!
//! Every function of the scope is polled, not only the first child (Linux):
//! a function whose parent bridge is in the scope is polled only after that
//! bridge is back and restored (its bus numbers route to it again); VFs only
//! [`VF_ENABLE_DELAY_NS`] after their PF's VF Enable was restored.
//!
//! Before the reset every function of the scope gets Command = INTx Disable
//! (no decoding, no bus mastering: `pci_dev_save_and_disable`).

mod policy;
mod save;

use alloc::vec::Vec;
use core::fmt;

pub use policy::{
    Quarantine, QuarantineReason, Reservation, ReservationConflict, Reservations, check_reset,
    foreign_in_scope, narrowest_reset, renumbered_in_scope, sriov_in_use,
};
pub use save::{
    Hw, MsixShadow, NoShadow, SavedAer, SavedFunction, SavedMsi, SavedMsix, SavedPcie, SavedSriov,
    SavedState, msix_entry_address, msix_table_address, msix_table_lost, repair_msix_table,
    restore_function,
};

use crate::addr::Bdf;
use crate::port::{ConfigPort, MemoryPort};
use crate::regs::*;
use crate::reset::{ResetAction, ResetError, ResetMethod};
use crate::topology::{FunctionKind, Topology};
use save::{
    PCIE_LNKCAP_DLLLARC, PCIE_LNKCTL_RL, PCIE_SLTCTL_DLLSCE, PCIE_SLTCTL_PDCE, PCIE_SLTSTA_DLLSC,
    PCIE_SLTSTA_PDC,
};

const MS: u64 = 1_000_000;

/// Trst: Secondary Bus Reset held at least 1 ms (PCI-to-PCI Bridge 1.2
/// §3.2.5.17 / PCIe r6.0 §7.5.1.3.13). Linux holds it 2 ms.
pub const TRST_NS: u64 = MS;
/// No configuration request for 100 ms after a Conventional Reset exits
/// (PCIe r6.0 §6.6.1), after an FLR (§6.6.2), and from link-up for ports
/// that report DLLLA.
pub const RESET_DELAY_NS: u64 = 100 * MS;
/// D3hot → D0 recovery time (PCI PM 1.2 Table 5-6; Linux `d3hot_delay`).
pub const D3HOT_DELAY_NS: u64 = 10 * MS;
/// Transactions Pending reads before an FLR, from the start (Linux
/// `pci_wait_for_pending`: sleeps of 0, 100, 200, 400 ms).
pub const FLR_TP_POLLS_NS: [u64; 4] = [0, 100 * MS, 300 * MS, 700 * MS];
/// DLLLA poll period after SBR deassert.
pub const LINK_POLL_NS: u64 = MS;
/// How long to wait for the link before one retrain (and as long again after).
pub const LINK_UP_TIMEOUT_NS: u64 = 1000 * MS;
/// First readiness poll interval; doubles up to [`READY_POLL_MAX_NS`].
pub const READY_POLL_FIRST_NS: u64 = MS;
pub const READY_POLL_MAX_NS: u64 = 64 * MS;
/// Readiness polling time before one link retrain (Linux `PCI_RESET_WAIT`).
pub const READY_RETRAIN_AFTER_NS: u64 = 1000 * MS;
/// Readiness polling time after which a function is given up
/// (Linux `PCIE_RESET_READY_POLL_MS`).
pub const READY_TIMEOUT_NS: u64 = 60_000 * MS;
/// VFs answer 100 ms after VF Enable (SR-IOV 1.1 §3.3.3.1).
pub const VF_ENABLE_DELAY_NS: u64 = 100 * MS;

/// Why a reset could not start (or a policy query was refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// From the method tables (not tracked, method not supported, ...).
    Reset(ResetError),
    /// A bus or slot reset of something that is not a bridge / hot-plug port.
    NotABridge { bdf: Bdf },
    /// A function of the scope is neither saved nor listed absent.
    NotSaved { bdf: Bdf },
    /// PM reset of a function in D1 or D2.
    NotInD0 { bdf: Bdf },
    /// No reset method can reset the function (quarantine it).
    NoMethod { bdf: Bdf },
    /// The reset's scope holds a function of another owner than the
    /// requester ([`check_reset`]).
    NotTheRequesters { bdf: Bdf, owner: crate::vpci::Owner },
    /// A bus reset of this bridge is forbidden by a reset quirk below it.
    BusResetQuirk { bridge: Bdf },
    /// A running reset covers part of the scope (`bdf` among it) and cannot
    /// stand for this one: try again once it ended.
    Busy { bdf: Bdf },
}

impl From<ResetError> for EngineError {
    fn from(e: ResetError) -> Self {
        Self::Reset(e)
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset(e) => write!(f, "{e}"),
            Self::NotABridge { bdf } => write!(f, "{bdf}: not a bridge with a secondary bus"),
            Self::NotSaved { bdf } => write!(f, "{bdf}: state not saved before reset"),
            Self::NotInD0 { bdf } => write!(f, "{bdf}: PM reset needs D0 or D3hot"),
            Self::NoMethod { bdf } => write!(f, "{bdf}: no reset method"),
            Self::NotTheRequesters { bdf, owner } => {
                write!(f, "reset would touch {bdf} of {owner:?}")
            }
            Self::BusResetQuirk { bridge } => {
                write!(f, "{bridge}: bus reset forbidden by a quirk below")
            }
            Self::Busy { bdf } => write!(f, "{bdf}: another reset of it runs"),
        }
    }
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetOutcome {
    /// Every function of the scope answered and was restored.
    Ready,
    /// These functions never came back (in address order); the others were
    /// restored. Quarantine them.
    TimedOut(Vec<Bdf>),
}

/// What the caller does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Call [`ResetJob::step`] again at (or after) this time.
    Wait {
        until_ns: u64,
    },
    Done {
        outcome: ResetOutcome,
    },
}

/// Where a job is, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// FLR: waiting for Transactions Pending to clear (read `poll` of 4 next).
    PendingTransactions {
        poll: u8,
        next_ns: u64,
    },
    /// PM: in D3hot until.
    D3hot {
        until_ns: u64,
    },
    /// SBR asserted until.
    SbrAsserted {
        until_ns: u64,
    },
    /// Polling Data Link Layer Link Active.
    LinkUp {
        next_ns: u64,
        deadline_ns: u64,
    },
    /// The reset is over; no config request before `until_ns`.
    Settle {
        until_ns: u64,
    },
    /// Polling readiness; polling began at `since_ns`.
    Polling {
        next_ns: u64,
        delay_ns: u64,
        since_ns: u64,
    },
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// PCIe FLR through the capability at this offset.
    Flr {
        pcie: u16,
    },
    AfFlr {
        af: u16,
    },
    Pm {
        pm: u16,
    },
    Sbr {
        bridge: Bdf,
        /// Slot reset: (PCIe capability offset, saved Slot Control).
        slot: Option<(u16, u16)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// Index into `saved.functions`.
    saved: usize,
    /// Entry that must be restored before this one can be reached.
    gate: Option<usize>,
    not_before: u64,
    restored: bool,
}

/// One reset in progress. Drive it with [`ResetJob::step`].
#[derive(Clone, Debug)]
pub struct ResetJob {
    action: ResetAction,
    op: Op,
    scope: Vec<Bdf>,
    saved: SavedState,
    entries: Vec<Entry>,
    phase: Phase,
    /// The port whose link is retrained if readiness takes too long.
    retrain_port: Option<Bdf>,
    retrained: bool,
    immediate_ready: bool,
    started_ns: u64,
    /// When the reset itself ended (SBR deassert, FLR initiated, D0 written).
    reset_exit_ns: Option<u64>,
    link_up_ns: Option<u64>,
    first_ready_ns: Option<u64>,
    polls: u32,
    outcome: Option<ResetOutcome>,
}

/// What a config read of a masked function returns: Vendor ID 0x0001 with
/// the rest all-ones when the reader's (virtual) root port has RRS Software
/// Visibility enabled and the read covers the Vendor ID, all-ones otherwise
/// (PCIe r6.0 §2.3.2). `width` is 1, 2 or 4.
pub const fn masked_read(offset: u16, width: u8, rrs_sv: bool) -> u32 {
    let ones = match width {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    };
    if rrs_sv && offset == 0 && width >= 2 {
        (0xffff_0000 | VENDOR_ID_RRS as u32) & ones
    } else {
        ones
    }
}

fn is_link_port(kind: FunctionKind) -> bool {
    matches!(kind, FunctionKind::RootPort | FunctionKind::DownstreamPort)
}

impl ResetJob {
    /// Starts `action`: validates it, disables every function of its scope,
    /// performs the first step of the method at `now_ns`. `saved` must cover
    /// the scope (`SavedState::capture(topo, .., &topo.action_scope(action))`
    /// just before).
    pub fn start<P: ConfigPort + ?Sized>(
        topo: &Topology,
        port: &mut P,
        action: ResetAction,
        now_ns: u64,
        saved: SavedState,
    ) -> Result<(Self, Step), EngineError> {
        let op = Self::validate(topo, port, action)?;
        let scope = topo.action_scope(action);
        for &b in &scope {
            if saved.get(b).is_none() && !saved.absent.contains(&b) {
                return Err(EngineError::NotSaved { bdf: b });
            }
        }
        // Entries: the saved functions of the scope, in address order.
        let mut entries: Vec<Entry> = Vec::new();
        let mut immediate_ready = true;
        for (i, f) in saved.functions.iter().enumerate() {
            if scope.binary_search(&f.bdf).is_err() {
                continue;
            }
            immediate_ready &= (f.header[1] >> 16) as u16 & STATUS_IMMEDIATE_READINESS != 0;
            let tf = topo.function(f.bdf);
            let above = tf
                .and_then(|t| t.physfn())
                .or_else(|| topo.parent_bridge(f.bdf));
            let gate = above.and_then(|a| {
                entries
                    .iter()
                    .position(|e| saved.functions.get(e.saved).is_some_and(|s| s.bdf == a))
            });
            entries.push(Entry {
                saved: i,
                gate,
                not_before: 0,
                restored: false,
            });
        }
        let retrain_port = match action {
            ResetAction::SecondaryBus { bridge } | ResetAction::Slot { port: bridge } => {
                Some(bridge)
            }
            ResetAction::Function { bdf, .. } => topo
                .parent_bridge(bdf)
                .filter(|p| topo.function(*p).is_some_and(|f| is_link_port(f.kind))),
        };
        let mut job = Self {
            action,
            op,
            scope,
            saved,
            entries,
            phase: Phase::Done,
            retrain_port,
            retrained: false,
            immediate_ready: immediate_ready && !matches!(op, Op::Sbr { .. }),
            started_ns: now_ns,
            reset_exit_ns: None,
            link_up_ns: None,
            first_ready_ns: None,
            polls: 0,
            outcome: None,
        };
        for e in &job.entries {
            if let Some(f) = job.saved.functions.get(e.saved) {
                save::disable(port, f.bdf);
            }
        }
        match op {
            Op::Flr { .. } | Op::AfFlr { .. } => {
                job.phase = Phase::PendingTransactions {
                    poll: 0,
                    next_ns: now_ns,
                };
            }
            Op::Pm { pm } => {
                let bdf = job.target();
                let ctrl = port.read16(bdf, pm + PM_CTRL);
                // Keep PME Status (RW1C) untouched.
                let base = ctrl & !PM_CTRL_STATE_MASK & !0x8000;
                match ctrl & PM_CTRL_STATE_MASK {
                    PM_CTRL_D0 => {
                        port.write16(bdf, pm + PM_CTRL, base | PM_CTRL_D3HOT);
                        job.phase = Phase::D3hot {
                            until_ns: now_ns.saturating_add(D3HOT_DELAY_NS),
                        };
                    }
                    PM_CTRL_D3HOT => {
                        port.write16(bdf, pm + PM_CTRL, base | PM_CTRL_D0);
                        job.reset_exit_ns = Some(now_ns);
                        job.phase = Phase::Settle {
                            until_ns: now_ns.saturating_add(D3HOT_DELAY_NS),
                        };
                    }
                    _ => return Err(EngineError::NotInD0 { bdf }),
                }
            }
            Op::Sbr { bridge, slot } => {
                if let Some((pcie, sltctl)) = slot {
                    port.write16(
                        bridge,
                        pcie + PCIE_SLTCTL,
                        sltctl & !(PCIE_SLTCTL_PDCE | PCIE_SLTCTL_DLLSCE),
                    );
                }
                let bctl = port.read16(bridge, BRIDGE_CONTROL);
                port.write16(bridge, BRIDGE_CONTROL, bctl | BRIDGE_CONTROL_SBR);
                job.phase = Phase::SbrAsserted {
                    until_ns: now_ns.saturating_add(TRST_NS),
                };
            }
        }
        let until_ns = job.deadline().unwrap_or(now_ns);
        Ok((job, Step::Wait { until_ns }))
    }

    fn validate<P: ConfigPort + ?Sized>(
        topo: &Topology,
        port: &mut P,
        action: ResetAction,
    ) -> Result<Op, EngineError> {
        match action {
            ResetAction::Function { bdf, method } => {
                let f = topo.function(bdf).ok_or(ResetError::NotTracked { bdf })?;
                if !topo.supported_reset_methods(bdf)?.contains(method) {
                    return Err(ResetError::Unsupported { bdf, method }.into());
                }
                let unsupported = EngineError::Reset(ResetError::Unsupported { bdf, method });
                match method {
                    ResetMethod::Flr | ResetMethod::DeviceSpecific if f.caps.pcie != 0 => {
                        Ok(Op::Flr {
                            pcie: f.caps.pcie as u16,
                        })
                    }
                    ResetMethod::AfFlr if f.caps.af != 0 => Ok(Op::AfFlr {
                        af: f.caps.af as u16,
                    }),
                    ResetMethod::Pm if f.caps.pm != 0 => Ok(Op::Pm {
                        pm: f.caps.pm as u16,
                    }),
                    _ => Err(unsupported),
                }
            }
            ResetAction::SecondaryBus { bridge } => {
                let f = topo
                    .function(bridge)
                    .ok_or(ResetError::NotTracked { bdf: bridge })?;
                if !f.kind.is_bridge() {
                    return Err(EngineError::NotABridge { bdf: bridge });
                }
                if !topo.bus_reset_allowed(bridge) {
                    return Err(EngineError::BusResetQuirk { bridge });
                }
                Ok(Op::Sbr { bridge, slot: None })
            }
            ResetAction::Slot { port: bridge } => {
                let f = topo
                    .function(bridge)
                    .ok_or(ResetError::NotTracked { bdf: bridge })?;
                if !f.kind.is_bridge() || !f.is_hotplug_slot() || f.caps.pcie == 0 {
                    return Err(EngineError::NotABridge { bdf: bridge });
                }
                if !topo.bus_reset_allowed(bridge) {
                    return Err(EngineError::BusResetQuirk { bridge });
                }
                let pcie = f.caps.pcie as u16;
                let sltctl = port.read16(bridge, pcie + PCIE_SLTCTL);
                Ok(Op::Sbr {
                    bridge,
                    slot: Some((pcie, sltctl)),
                })
            }
        }
    }

    fn target(&self) -> Bdf {
        match self.action {
            ResetAction::Function { bdf, .. } => bdf,
            ResetAction::SecondaryBus { bridge } | ResetAction::Slot { port: bridge } => bridge,
        }
    }

    fn deadline(&self) -> Option<u64> {
        match self.phase {
            Phase::PendingTransactions { next_ns, .. } => Some(next_ns),
            Phase::D3hot { until_ns }
            | Phase::SbrAsserted { until_ns }
            | Phase::Settle { until_ns } => Some(until_ns),
            Phase::LinkUp { next_ns, .. } | Phase::Polling { next_ns, .. } => Some(next_ns),
            Phase::Done => None,
        }
    }

    /// The action this job performs.
    pub fn action(&self) -> ResetAction {
        self.action
    }

    /// Every function the reset touches, in address order.
    pub fn scope(&self) -> &[Bdf] {
        &self.scope
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The state saved before the reset.
    pub fn saved(&self) -> &SavedState {
        &self.saved
    }

    /// Whether owners' config accesses to `bdf` must be masked now (answer
    /// reads with [`masked_read`], drop writes): the function is in the
    /// scope and the job is not done.
    pub fn masks(&self, bdf: Bdf) -> bool {
        self.outcome.is_none() && self.scope.binary_search(&bdf).is_ok()
    }

    /// [`masked_read`] for a masked function, `None` for any other.
    pub fn masked_config_read(
        &self,
        bdf: Bdf,
        offset: u16,
        width: u8,
        rrs_sv: bool,
    ) -> Option<u32> {
        self.masks(bdf).then(|| masked_read(offset, width, rrs_sv))
    }

    /// Whether the two jobs' scopes share a function (or one resets the
    /// other's bridge): such jobs must not run at once.
    pub fn overlaps(&self, scope: &[Bdf]) -> bool {
        let hit = |b: &Bdf| self.scope.binary_search(b).is_ok() || *b == self.target();
        scope.iter().any(hit)
    }

    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }
    /// When the reset proper ended (SBR deassert, FLR issued, D0 written).
    pub fn reset_exit_ns(&self) -> Option<u64> {
        self.reset_exit_ns
    }
    /// When DLLLA was first seen after an SBR.
    pub fn link_up_ns(&self) -> Option<u64> {
        self.link_up_ns
    }
    /// When the first function answered.
    pub fn first_ready_ns(&self) -> Option<u64> {
        self.first_ready_ns
    }
    /// Whether the one link retrain was used.
    pub fn retrained(&self) -> bool {
        self.retrained
    }
    /// Readiness polls made (each reads every pollable function).
    pub fn polls(&self) -> u32 {
        self.polls
    }

    fn finish(&mut self, outcome: ResetOutcome) -> Step {
        self.phase = Phase::Done;
        self.outcome = Some(outcome.clone());
        Step::Done { outcome }
    }

    fn not_restored(&self) -> Vec<Bdf> {
        self.entries
            .iter()
            .filter(|e| !e.restored)
            .filter_map(|e| self.saved.functions.get(e.saved).map(|f| f.bdf))
            .collect()
    }

    fn end_slot<P: ConfigPort + ?Sized>(&self, port: &mut P) {
        if let Op::Sbr {
            bridge,
            slot: Some((pcie, sltctl)),
        } = self.op
        {
            port.write16(
                bridge,
                pcie + PCIE_SLTCTL + 2,
                PCIE_SLTSTA_PDC | PCIE_SLTSTA_DLLSC,
            );
            port.write16(bridge, pcie + PCIE_SLTCTL, sltctl);
        }
    }

    fn retrain<P: ConfigPort + ?Sized>(&mut self, topo_pcie: Option<u16>, port: &mut P) {
        self.retrained = true;
        if let (Some(p), Some(off)) = (self.retrain_port, topo_pcie) {
            let ctl = port.read16(p, off + PCIE_LNKCTL);
            port.write16(p, off + PCIE_LNKCTL, ctl | PCIE_LNKCTL_RL);
        }
    }

    /// Advances the job at `now_ns` (`topo` must be the one it started
    /// with). `shadow` gives the MSI-X entries the
    /// hypervisor programmed (see [`MsixShadow`]). Called before the last
    /// deadline it just returns it again; after Done it returns Done again.
    pub fn step<H: ConfigPort + MemoryPort + ?Sized>(
        &mut self,
        topo: &Topology,
        port: &mut H,
        shadow: &dyn MsixShadow,
        now_ns: u64,
    ) -> Step {
        if let Some(o) = &self.outcome {
            return Step::Done { outcome: o.clone() };
        }
        let retrain_pcie = self
            .retrain_port
            .and_then(|p| topo.function(p))
            .map(|f| f.caps.pcie as u16)
            .filter(|&o| o != 0);
        // Each iteration either waits or moves to a later phase; the bound
        // only guards against a bug looping forever.
        for _ in 0..16 {
            match self.phase {
                Phase::Done => {
                    let o = self.outcome.clone().unwrap_or(ResetOutcome::Ready);
                    return Step::Done { outcome: o };
                }
                Phase::PendingTransactions { poll, next_ns } => {
                    if now_ns < next_ns {
                        return Step::Wait { until_ns: next_ns };
                    }
                    let bdf = self.target();
                    let pending = match self.op {
                        Op::Flr { pcie } => {
                            port.read16(bdf, pcie + PCIE_DEVSTA) & PCIE_DEVSTA_TRPND != 0
                        }
                        Op::AfFlr { af } => port.read8(bdf, af + AF_STATUS) & AF_CAP_TP != 0,
                        _ => false,
                    };
                    let next = FLR_TP_POLLS_NS.get(poll as usize + 1);
                    match (pending, next) {
                        (true, Some(&at)) => {
                            self.phase = Phase::PendingTransactions {
                                poll: poll + 1,
                                next_ns: self.started_ns.saturating_add(at),
                            };
                        }
                        _ => {
                            match self.op {
                                Op::Flr { pcie } => {
                                    let ctl = port.read16(bdf, pcie + PCIE_DEVCTL);
                                    port.write16(
                                        bdf,
                                        pcie + PCIE_DEVCTL,
                                        ctl | PCIE_DEVCTL_BCR_FLR,
                                    );
                                }
                                Op::AfFlr { af } => port.write8(bdf, af + AF_CTRL, AF_CTRL_FLR),
                                _ => {}
                            }
                            self.reset_exit_ns = Some(now_ns);
                            self.phase = if self.immediate_ready {
                                Phase::Settle { until_ns: now_ns }
                            } else {
                                Phase::Settle {
                                    until_ns: now_ns.saturating_add(RESET_DELAY_NS),
                                }
                            };
                        }
                    }
                }
                Phase::D3hot { until_ns } => {
                    if now_ns < until_ns {
                        return Step::Wait { until_ns };
                    }
                    if let Op::Pm { pm } = self.op {
                        let bdf = self.target();
                        let ctrl = port.read16(bdf, pm + PM_CTRL);
                        let base = ctrl & !PM_CTRL_STATE_MASK & !0x8000;
                        port.write16(bdf, pm + PM_CTRL, base | PM_CTRL_D0);
                    }
                    self.reset_exit_ns = Some(now_ns);
                    self.phase = Phase::Settle {
                        until_ns: now_ns.saturating_add(D3HOT_DELAY_NS),
                    };
                }
                Phase::SbrAsserted { until_ns } => {
                    if now_ns < until_ns {
                        return Step::Wait { until_ns };
                    }
                    let bridge = self.target();
                    let bctl = port.read16(bridge, BRIDGE_CONTROL);
                    port.write16(bridge, BRIDGE_CONTROL, bctl & !BRIDGE_CONTROL_SBR);
                    self.reset_exit_ns = Some(now_ns);
                    let dllla = topo
                        .function(bridge)
                        .filter(|f| is_link_port(f.kind) && f.caps.pcie != 0)
                        .map(|f| f.caps.pcie as u16)
                        .filter(|&o| {
                            port.read32(bridge, o + PCIE_LNKCAP) & PCIE_LNKCAP_DLLLARC != 0
                        });
                    self.phase = if dllla.is_some() {
                        Phase::LinkUp {
                            next_ns: now_ns,
                            deadline_ns: now_ns.saturating_add(LINK_UP_TIMEOUT_NS),
                        }
                    } else {
                        Phase::Settle {
                            until_ns: now_ns.saturating_add(RESET_DELAY_NS),
                        }
                    };
                }
                Phase::LinkUp {
                    next_ns,
                    deadline_ns,
                } => {
                    if now_ns < next_ns {
                        return Step::Wait { until_ns: next_ns };
                    }
                    let bridge = self.target();
                    let up = retrain_pcie.is_some_and(|o| {
                        port.read16(bridge, o + PCIE_LNKSTA) & PCIE_LNKSTA_DLLLA != 0
                    });
                    if up {
                        self.link_up_ns = Some(now_ns);
                        self.phase = Phase::Settle {
                            until_ns: now_ns.saturating_add(RESET_DELAY_NS),
                        };
                    } else if now_ns >= deadline_ns {
                        if self.retrained {
                            self.end_slot(port);
                            let missing = self.not_restored();
                            return self.finish(ResetOutcome::TimedOut(missing));
                        }
                        self.retrain(retrain_pcie, port);
                        self.phase = Phase::LinkUp {
                            next_ns: now_ns.saturating_add(LINK_POLL_NS),
                            deadline_ns: now_ns.saturating_add(LINK_UP_TIMEOUT_NS),
                        };
                    } else {
                        self.phase = Phase::LinkUp {
                            next_ns: now_ns.saturating_add(LINK_POLL_NS),
                            deadline_ns,
                        };
                    }
                }
                Phase::Settle { until_ns } => {
                    if now_ns < until_ns {
                        return Step::Wait { until_ns };
                    }
                    self.end_slot(port);
                    self.phase = Phase::Polling {
                        next_ns: until_ns,
                        delay_ns: READY_POLL_FIRST_NS,
                        since_ns: until_ns,
                    };
                }
                Phase::Polling {
                    next_ns,
                    delay_ns,
                    since_ns,
                } => {
                    if now_ns < next_ns {
                        return Step::Wait { until_ns: next_ns };
                    }
                    self.polls = self.polls.saturating_add(1);
                    let mut earliest_gated: Option<u64> = None;
                    let mut all = true;
                    for i in 0..self.entries.len() {
                        let e = self.entries[i];
                        if e.restored {
                            continue;
                        }
                        all = false;
                        if e.gate
                            .is_some_and(|g| !self.entries.get(g).is_some_and(|x| x.restored))
                        {
                            continue;
                        }
                        if now_ns < e.not_before {
                            earliest_gated =
                                Some(earliest_gated.map_or(e.not_before, |t| t.min(e.not_before)));
                            continue;
                        }
                        let Some(f) = self.saved.functions.get(e.saved) else {
                            continue;
                        };
                        let vf = topo.function(f.bdf).is_some_and(|t| t.physfn().is_some());
                        if !save::answers(port, f.bdf, vf) {
                            continue;
                        }
                        self.first_ready_ns.get_or_insert(now_ns);
                        save::restore_function(port, f, shadow);
                        let vfs_on = f
                            .sriov
                            .is_some_and(|s| s.ctrl & SRIOV_CTRL_VFE != 0 && s.num_vfs != 0);
                        if let Some(x) = self.entries.get_mut(i) {
                            x.restored = true;
                        }
                        // Children (and VFs) later in address order can be
                        // polled in this same pass.
                        for x in self.entries.iter_mut().skip(i + 1) {
                            if x.gate == Some(i) && vfs_on {
                                let t = now_ns.saturating_add(VF_ENABLE_DELAY_NS);
                                if self.saved.functions.get(x.saved).is_some_and(|s| {
                                    topo.function(s.bdf).is_some_and(|t| t.physfn().is_some())
                                }) {
                                    x.not_before = t;
                                }
                            }
                        }
                    }
                    if all || self.entries.iter().all(|e| e.restored) {
                        return self.finish(ResetOutcome::Ready);
                    }
                    let elapsed = now_ns.saturating_sub(since_ns);
                    if elapsed >= READY_TIMEOUT_NS {
                        let missing = self.not_restored();
                        return self.finish(ResetOutcome::TimedOut(missing));
                    }
                    let mut delay = delay_ns;
                    if !self.retrained && elapsed >= READY_RETRAIN_AFTER_NS {
                        self.retrain(retrain_pcie, port);
                        delay = READY_POLL_FIRST_NS;
                    }
                    let mut next = now_ns.saturating_add(delay);
                    if let Some(t) = earliest_gated {
                        next = next.min(t);
                    }
                    // Never poll past the overall timeout.
                    next = next.min(since_ns.saturating_add(READY_TIMEOUT_NS));
                    self.phase = Phase::Polling {
                        next_ns: next,
                        delay_ns: delay.saturating_mul(2).min(READY_POLL_MAX_NS),
                        since_ns,
                    };
                    return Step::Wait { until_ns: next };
                }
            }
        }
        Step::Wait {
            until_ns: self.deadline().unwrap_or(now_ns),
        }
    }
}
