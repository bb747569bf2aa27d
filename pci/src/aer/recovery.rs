//! The recovery state machine: fatal errors freeze the source until a link
//! reset; the owner has a deadline to ask for it, then the hypervisor does
//! it (never rely on the guest).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::{AerEvent, Severity};
use crate::addr::Bdf;
use crate::reset::{ResetAction, ResetError};
use crate::reset_engine::{EngineError, check_reset, narrowest_reset};
use crate::topology::{FunctionKind, Topology};
use crate::vpci::Owner;

/// Finished recoveries kept for the log.
const LOG_LEN: usize = 64;

/// Where a recovery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryState {
    /// Correctable or non-fatal: delivered, the device keeps working.
    Delivered,
    /// Fatal: frozen until a link reset; the owner has until the deadline.
    FrozenAwaitingReset,
    /// The owner asked (SBR on its virtual root port); the reset runs.
    ResetByOwner,
    /// The deadline passed; the hypervisor's reset runs.
    ResetByHypervisor,
    /// Reset done, the function answered and was restored.
    Recovered,
    /// It did not come back: quarantined, surprise-removed for its owner.
    Quarantined,
    /// No reset may recover it: its link reset would touch another owner's
    /// functions (a bridge above a guest's device). Given up, logged.
    Unrecoverable,
}

/// One error's recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub source: Bdf,
    pub owner: Owner,
    pub severity: Severity,
    /// The (first) event; later fatal events of a frozen source are
    /// coalesced into `coalesced`.
    pub event: AerEvent,
    pub coalesced: u32,
    /// For fatal errors: when the hypervisor resets if the owner has not.
    pub deadline_ns: Option<u64>,
    pub state: RecoveryState,
    /// The hypervisor performed the reset (the owner ignored the error).
    pub by_hypervisor: bool,
    /// The hypervisor's reset could not start (another reset of those
    /// functions ran): when to try again ([`RecoveryTracker::retry_at`]).
    pub retry_ns: Option<u64>,
}

/// The deadline passed: the shell resets [`recovery_functions`] of `source`
/// with [`crate::reset_engine::narrowest_reset`], then calls
/// [`RecoveryTracker::on_reset_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetNeeded {
    pub source: Bdf,
    pub owner: Owner,
    pub event: AerEvent,
    /// A retry of a takeover that could not start: the owner was told
    /// already.
    pub retry: bool,
}

/// How a recovery ended ([`RecoveryTracker::on_reset_done`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryOutcome {
    pub source: Bdf,
    pub owner: Owner,
    /// [`RecoveryState::Recovered`] or [`RecoveryState::Quarantined`].
    pub state: RecoveryState,
    pub by_hypervisor: bool,
}

/// How long a takeover that could not start waits before it is tried
/// again.
pub const TAKEOVER_RETRY_NS: u64 = 10_000_000;

/// Tracks fatal errors until their link reset, and logs every event.
#[derive(Clone, Debug)]
pub struct RecoveryTracker {
    deadline_ns: u64,
    active: Vec<Recovery>,
    log: VecDeque<Recovery>,
}

impl RecoveryTracker {
    /// `deadline_ns`: how long an owner has to reset after a fatal error
    /// (the VM config's, [`super::AerConfig::reset_deadline_ns`]).
    pub fn new(deadline_ns: u64) -> Self {
        Self {
            deadline_ns,
            active: Vec::new(),
            // Its full size at once: logging an event never allocates.
            log: VecDeque::with_capacity(LOG_LEN),
        }
    }

    fn log_push(&mut self, r: Recovery) {
        if self.log.len() >= LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(r);
    }

    /// Records an event delivered to `owner` and returns the source's state:
    /// `Delivered` for correctable / non-fatal; for fatal, a new
    /// `FrozenAwaitingReset` with the deadline counted from the event, or
    /// the running recovery's state (the event is coalesced into it).
    pub fn on_event(&mut self, event: &AerEvent, owner: Owner) -> RecoveryState {
        self.on_event_within(event, owner, self.deadline_ns)
    }

    /// [`Self::on_event`] with the owner's own deadline (its VM config's).
    pub fn on_event_within(
        &mut self,
        event: &AerEvent,
        owner: Owner,
        deadline_ns: u64,
    ) -> RecoveryState {
        if let Some(r) = self.active.iter_mut().find(|r| r.source == event.source) {
            if event.severity == Severity::Fatal {
                r.coalesced = r.coalesced.saturating_add(1);
            }
            return r.state;
        }
        let mut r = Recovery {
            source: event.source,
            owner,
            severity: event.severity,
            event: *event,
            coalesced: 0,
            deadline_ns: None,
            state: RecoveryState::Delivered,
            by_hypervisor: false,
            retry_ns: None,
        };
        if event.severity != Severity::Fatal {
            self.log_push(r);
            return RecoveryState::Delivered;
        }
        r.deadline_ns = Some(event.at_ns.saturating_add(deadline_ns));
        r.state = RecoveryState::FrozenAwaitingReset;
        self.active.push(r);
        r.state
    }

    /// Whether `bdf` is frozen by a fatal error (awaiting or under reset).
    pub fn is_frozen(&self, bdf: Bdf) -> bool {
        self.active.iter().any(|r| r.source == bdf)
    }

    /// The running recovery of `bdf`.
    pub fn recovery(&self, bdf: Bdf) -> Option<&Recovery> {
        self.active.iter().find(|r| r.source == bdf)
    }

    /// Running recoveries.
    pub fn active(&self) -> impl Iterator<Item = &Recovery> + '_ {
        self.active.iter()
    }

    /// Finished recoveries and delivered events, oldest first (the last 64).
    pub fn log(&self) -> impl Iterator<Item = &Recovery> + '_ {
        self.log.iter()
    }

    /// The owner asked for a reset (SBR on its virtual root port, FLR, a
    /// reset hypercall) and the shell started one covering `functions`:
    /// their frozen recoveries become `ResetByOwner` (the deadline no longer
    /// applies). Returns how many.
    pub fn on_owner_reset(&mut self, functions: &[Bdf]) -> usize {
        let mut n = 0;
        for r in &mut self.active {
            if r.state == RecoveryState::FrozenAwaitingReset && functions.contains(&r.source) {
                r.state = RecoveryState::ResetByOwner;
                n += 1;
            }
        }
        n
    }

    /// The earliest pending deadline, to arm a timer.
    pub fn next_deadline(&self) -> Option<u64> {
        self.active
            .iter()
            .filter_map(|r| match r.state {
                RecoveryState::FrozenAwaitingReset => r.deadline_ns,
                RecoveryState::ResetByHypervisor => r.retry_ns,
                _ => None,
            })
            .min()
    }

    /// At time `now_ns`: the first frozen source whose deadline passed
    /// becomes `ResetByHypervisor` and is returned. Call again until `None`.
    /// Also returns, as `retry`, a takeover whose retry is due.
    pub fn poll(&mut self, now_ns: u64) -> Option<ResetNeeded> {
        let r = self.active.iter_mut().find(|r| {
            let due = |t: Option<u64>| t.is_some_and(|d| d <= now_ns);
            (r.state == RecoveryState::FrozenAwaitingReset && due(r.deadline_ns))
                || (r.state == RecoveryState::ResetByHypervisor && due(r.retry_ns))
        })?;
        let retry = r.state == RecoveryState::ResetByHypervisor;
        r.state = RecoveryState::ResetByHypervisor;
        r.by_hypervisor = true;
        r.retry_ns = None;
        Some(ResetNeeded {
            source: r.source,
            owner: r.owner,
            event: r.event,
            retry,
        })
    }

    /// The hypervisor's reset for `source` ([`Self::poll`]) could not start
    /// because another reset of part of its functions runs (and does not
    /// cover them all): try again at `at_ns` rather than wait for a reset
    /// that may never come. A reset that ends meanwhile and covers the
    /// source still ends the recovery. Returns whether `source` was
    /// waiting for that reset.
    pub fn retry_at(&mut self, source: Bdf, at_ns: u64) -> bool {
        match self
            .active
            .iter_mut()
            .find(|r| r.source == source && r.state == RecoveryState::ResetByHypervisor)
        {
            Some(r) => {
                r.retry_ns = Some(at_ns);
                true
            }
            None => false,
        }
    }

    /// A reset finished: `ready` functions answered and were restored,
    /// `failed` did not come back (quarantine them). A running recovery
    /// whose source is in either list ends — whoever asked — if the reset
    /// was a link reset (`link_reset`: SBR, slot) or was started for the
    /// recovery (the owner's SBR or the hypervisor's takeover, whatever
    /// reset they needed); a function-level reset the owner asked for on
    /// its own (an FLR) leaves a fatal error waiting for its link reset.
    /// Returns the outcomes.
    pub fn on_reset_done(
        &mut self,
        ready: &[Bdf],
        failed: &[Bdf],
        link_reset: bool,
    ) -> Vec<RecoveryOutcome> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.active.len() {
            let Some(r) = self.active.get(i).copied() else {
                break;
            };
            let still_waits = !link_reset && r.state == RecoveryState::FrozenAwaitingReset;
            let state = if still_waits {
                i += 1;
                continue;
            } else if failed.contains(&r.source) {
                RecoveryState::Quarantined
            } else if ready.contains(&r.source) {
                RecoveryState::Recovered
            } else {
                i += 1;
                continue;
            };
            self.active.swap_remove(i);
            let done = Recovery { state, ..r };
            self.log_push(done);
            out.push(RecoveryOutcome {
                source: r.source,
                owner: r.owner,
                state,
                by_hypervisor: r.by_hypervisor,
            });
        }
        out
    }

    /// Ends the running recovery of `source` as [`RecoveryState::Unrecoverable`]
    /// (no reset may be made for it, see [`recovery_reset`]), so it does
    /// not wait for a reset that never comes.
    pub fn give_up(&mut self, source: Bdf) -> Option<RecoveryOutcome> {
        let i = self.active.iter().position(|r| r.source == source)?;
        let r = self.active.swap_remove(i);
        let state = RecoveryState::Unrecoverable;
        self.log_push(Recovery { state, ..r });
        Some(RecoveryOutcome {
            source,
            owner: r.owner,
            state,
            by_hypervisor: r.by_hypervisor,
        })
    }

    /// Drops a function's running recovery (removed from the topology).
    pub fn forget(&mut self, bdf: Bdf) {
        self.active.retain(|r| r.source != bdf);
    }
}

/// The resets that recover a fatal error of `source` (the hypervisor's
/// takeover past the deadline):
/// - a function: [`crate::reset_engine::narrowest_reset`] of its
///   [`recovery_functions`];
/// - a bridge: the link reset Linux does for it — the Secondary Bus (or
///   slot) Reset of the source itself when it is a root or downstream port
///   (its link is the one below), else of its parent bridge. The
///   narrowest-reset search does not cover bridges, so without this a
///   bridge's fatal error would wait forever. Like every reset, it may touch
///   only the owner's functions ([`crate::reset_engine::check_reset`]): a
///   port above another owner's device gets `NotTheRequesters`, and the
///   caller ends the recovery with [`RecoveryTracker::give_up`].
///
/// [`recovered_by`] says which recoveries a finished reset ends.
pub fn recovery_reset(
    topo: &Topology,
    ownership_of: impl Fn(Bdf) -> Owner,
    source: Bdf,
) -> Result<Vec<ResetAction>, EngineError> {
    let f = topo
        .function(source)
        .ok_or(ResetError::NotTracked { bdf: source })?;
    if !f.kind.is_bridge() {
        let functions = recovery_functions(topo, &ownership_of, source);
        return narrowest_reset(topo, &ownership_of, &functions);
    }
    let link = match f.kind {
        FunctionKind::RootPort | FunctionKind::DownstreamPort => source,
        _ => topo.parent_bridge(source).unwrap_or(source),
    };
    if !topo.bus_reset_allowed(link) {
        return Err(EngineError::BusResetQuirk { bridge: link });
    }
    let action = if topo.function(link).is_some_and(|p| p.is_hotplug_slot()) {
        ResetAction::Slot { port: link }
    } else {
        ResetAction::SecondaryBus { bridge: link }
    };
    check_reset(topo, action, ownership_of(source), &ownership_of)?;
    Ok(alloc::vec![action])
}

/// The functions whose fatal-error recovery a finished `action` ends (for
/// [`RecoveryTracker::on_reset_done`]'s `ready` / `failed`): its scope, and
/// for a bus or slot reset the bridge itself, whose link it reset.
pub fn recovered_by(topo: &Topology, action: ResetAction) -> Vec<Bdf> {
    let mut v = topo.action_scope(action);
    if let ResetAction::SecondaryBus { bridge } | ResetAction::Slot { port: bridge } = action
        && !v.contains(&bridge)
    {
        v.insert(0, bridge);
    }
    v
}

/// The functions a fatal error's link reset covers, for
/// [`crate::reset_engine::narrowest_reset`]: the non-bridge functions below
/// the source's parent bridge (the link) that `source`'s owner owns, the
/// source first. A source on a root bus (an RCiEP) is alone.
pub fn recovery_functions(
    topo: &Topology,
    ownership_of: impl Fn(Bdf) -> Owner,
    source: Bdf,
) -> Vec<Bdf> {
    let mut out = alloc::vec![source];
    let owner = ownership_of(source);
    if let Some(parent) = topo.parent_bridge(source) {
        for b in topo.subtree(parent) {
            let bridge = topo.function(b).is_some_and(|f| f.kind.is_bridge());
            if b != source && !bridge && ownership_of(b) == owner {
                out.push(b);
            }
        }
    }
    out
}
