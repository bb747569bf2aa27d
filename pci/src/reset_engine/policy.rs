//! Which reset a request gets, who may ask for it, what it keeps reserved,
//! and the functions that can no longer be handed out.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::EngineError;
use crate::addr::Bdf;
use crate::port::ConfigPort;
use crate::regs::{SRIOV_CTRL, SRIOV_CTRL_VFE};
use crate::reset::ResetAction;
use crate::topology::Topology;
use crate::vpci::Owner;

fn is_bridge(topo: &Topology, b: Bdf) -> bool {
    topo.function(b).is_some_and(|f| f.kind.is_bridge())
}

/// The narrowest real reset for a guest's Secondary Bus Reset of its
/// virtual root port, whose unit holds `functions` (all owned by the
/// requester, `ownership_of(functions[0])`):
/// - one SBR (or slot reset, for a hot-plug port) of the lowest physical
///   bridge above all of them, when every non-bridge function below that
///   bridge is the requester's and no bus-reset quirk forbids it. Bridges
///   below it (switch ports, PCIe-to-PCI bridges of the unit) are never
///   assigned; the engine saves and restores them, so they do not count;
/// - otherwise, per function, its first function-level method in its
///   (possibly overridden) order whose scope holds nothing of another
///   owner ([`check_reset`]); a function the scope of an earlier choice
///   covers (a VF with its PF) is not reset twice.
///
/// `NoMethod` names the first function no method can reset: the caller
/// quarantines it (and does not pretend the reset happened).
/// `NotTheRequesters` names a function of another owner that every
/// function-level method of a function of the set would touch.
pub fn narrowest_reset(
    topo: &Topology,
    ownership_of: impl Fn(Bdf) -> Owner,
    functions: &[Bdf],
) -> Result<Vec<ResetAction>, EngineError> {
    let first = *functions
        .first()
        .ok_or(EngineError::Reset(crate::reset::ResetError::EmptySet))?;
    let owner = ownership_of(first);
    for &b in functions {
        if topo.function(b).is_none() {
            return Err(crate::reset::ResetError::NotTracked { bdf: b }.into());
        }
        if ownership_of(b) != owner {
            return Err(crate::reset::ResetError::MixedOwners { bdf: b }.into());
        }
    }
    if let Some(bridge) = topo.bus_reset_bridge_for(functions) {
        let all_owned = topo
            .subtree(bridge)
            .all(|b| is_bridge(topo, b) || ownership_of(b) == owner);
        if all_owned {
            let slot = topo.function(bridge).is_some_and(|f| f.is_hotplug_slot());
            return Ok(alloc::vec![if slot {
                ResetAction::Slot { port: bridge }
            } else {
                ResetAction::SecondaryBus { bridge }
            }]);
        }
    }
    let mut out: Vec<ResetAction> = Vec::new();
    let mut covered: Vec<Bdf> = Vec::new();
    for &b in functions {
        // Reset already by an action chosen for another function of the
        // set (a VF with its PF, a function below a bridge of the set).
        if covered.contains(&b)
            || topo
                .function(b)
                .and_then(|f| f.physfn())
                .is_some_and(|pf| functions.contains(&pf))
        {
            continue;
        }
        let methods = topo.reset_methods(b)?;
        let mut level = methods
            .as_slice()
            .iter()
            .copied()
            .filter(|m| m.is_function_level())
            .peekable();
        if level.peek().is_none() {
            return Err(EngineError::NoMethod { bdf: b });
        }
        // The first method that touches nothing of another owner: an FLR
        // of a PF whose VFs are someone else's, or a PM reset of a bridge
        // above someone else's function, is not one.
        let mut refused = None;
        let mut chosen = None;
        for m in level {
            let action = ResetAction::Function { bdf: b, method: m };
            match check_reset(topo, action, owner, &ownership_of) {
                Ok(()) => {
                    chosen = Some(action);
                    break;
                }
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        let action = match (chosen, refused) {
            (Some(a), _) => a,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(EngineError::NoMethod { bdf: b }),
        };
        covered.extend(topo.action_scope(action));
        out.push(action);
    }
    Ok(out)
}

/// The functions of `action`'s scope ([`Topology::action_scope`]) that
/// `requester` does not own, in address order: the reset would touch them.
/// Bridges do not count: they are never assigned (they stay the hardware
/// domain's) and the engine saves and restores them; a bridge above another
/// owner's function brings that function into the scope (a PM reset of a
/// root port holds its subtree), so it is refused through it. The one rule
/// every caller applies: the reset hypercalls, the hardware domain's
/// requests, the reservations.
pub fn foreign_in_scope(
    topo: &Topology,
    action: ResetAction,
    requester: Owner,
    ownership_of: impl Fn(Bdf) -> Owner,
) -> Vec<Bdf> {
    topo.action_scope(action)
        .into_iter()
        .filter(|&b| !is_bridge(topo, b) && ownership_of(b) != requester)
        .collect()
}

/// A bridge `action` depends on whose bus numbers in config space are not
/// the tree's (the hardware domain renumbered it without a report): the
/// bridge it resets below, one above that (they route its addresses), or
/// one in its scope. The reset would run on
/// addresses that no longer name the functions the tree has there (what
/// it saves and restores, and what it reaches, would be other devices),
/// so it is refused until the tree is reported again.
pub fn renumbered_in_scope<P: ConfigPort + ?Sized>(
    topo: &Topology,
    action: ResetAction,
    port: &mut P,
) -> Option<Bdf> {
    let own = match action {
        ResetAction::SecondaryBus { bridge } => Some(bridge),
        ResetAction::Slot { port } => Some(port),
        ResetAction::Function { bdf, .. } => Some(bdf),
    };
    let scope = topo.action_scope(action);
    let mut path = Vec::new();
    let mut at = own.and_then(|b| topo.parent_bridge(b));
    while let Some(b) = at {
        path.push(b);
        at = topo.parent_bridge(b);
    }
    topo.renumbered_among(own.into_iter().chain(path).chain(scope), port)
}

/// Refuses a reset `requester` asks for when its scope holds a function
/// another owner holds ([`foreign_in_scope`]): for example an SBR, or a PM
/// reset, of a root port above a guest's device asked for by the hardware
/// domain, or a guest's FLR of a PF whose VFs are the hardware domain's.
pub fn check_reset(
    topo: &Topology,
    action: ResetAction,
    requester: Owner,
    ownership_of: impl Fn(Bdf) -> Owner,
) -> Result<(), EngineError> {
    match foreign_in_scope(topo, action, requester, &ownership_of).first() {
        Some(&bdf) => Err(EngineError::NotTheRequesters {
            bdf,
            owner: ownership_of(bdf),
        }),
        None => Ok(()),
    }
}

/// What owning an SR-IOV PF means for its VFs: a guest is given a PF only
/// while its SR-IOV is off (VF Enable clear, no VF of it tracked). VFs are
/// never given to a guest (`vpci::GuestBus::new` refuses them), so the VFs
/// of a guest's PF would stay the hardware domain's while the PF's FLR or
/// PM reset, and its VF Enable, reach them; a reset may touch only the
/// requester's functions. Once the PF is the guest's, nobody can turn VFs
/// on: the guest's view has no SR-IOV capability and the hardware domain
/// no longer reaches the PF's config space. [`check_reset`] refuses the
/// PF's function-level resets should VFs of another owner exist anyway.
///
/// Returns the PF's first tracked VF, or the PF itself when only VF Enable
/// is set; `None` when the function may be assigned as far as SR-IOV goes.
pub fn sriov_in_use<P: ConfigPort + ?Sized>(
    topo: &Topology,
    port: &mut P,
    bdf: Bdf,
) -> Option<Bdf> {
    let f = topo.function(bdf)?;
    if f.caps.sriov == 0 {
        return None;
    }
    if let Some(vf) = topo
        .functions()
        .find_map(|(b, g)| (g.physfn() == Some(bdf)).then_some(b))
    {
        return Some(vf);
    }
    let ctrl = port.read16(bdf, f.caps.sriov.saturating_add(SRIOV_CTRL));
    (ctrl != u16::MAX && ctrl & SRIOV_CTRL_VFE != 0).then_some(bdf)
}

/// Why a function may not be handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuarantineReason {
    /// No reset method can reset it.
    NoResetMethod,
    /// It did not come back after a reset.
    NotReady,
}

/// Functions that are never handed out: no method can reset them, or they
/// did not come back. The shell logs additions, `Ownership::assign` refuses
/// them, `pci-report` lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quarantine {
    set: BTreeMap<Bdf, QuarantineReason>,
}

impl Quarantine {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds `bdf`; returns true if it was not quarantined before (log it).
    pub fn add(&mut self, bdf: Bdf, reason: QuarantineReason) -> bool {
        self.set.insert(bdf, reason).is_none()
    }
    pub fn contains(&self, bdf: Bdf) -> bool {
        self.set.contains_key(&bdf)
    }
    pub fn reason(&self, bdf: Bdf) -> Option<QuarantineReason> {
        self.set.get(&bdf).copied()
    }
    /// The first quarantined function of `functions`, for assignment checks.
    pub fn first_of(&self, functions: &[Bdf]) -> Option<(Bdf, QuarantineReason)> {
        functions
            .iter()
            .find_map(|&b| self.set.get(&b).map(|&r| (b, r)))
    }
    /// Lifts the quarantine (the function was removed and re-reported, or
    /// an operator reset it successfully).
    pub fn remove(&mut self, bdf: Bdf) -> bool {
        self.set.remove(&bdf).is_some()
    }
    pub fn iter(&self) -> impl Iterator<Item = (Bdf, QuarantineReason)> + '_ {
        self.set.iter().map(|(&b, &r)| (b, r))
    }
    pub fn len(&self) -> usize {
        self.set.len()
    }
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// An owner's promise that a reset stays possible while it runs: a guest's,
/// or the hardware domain's for its own functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub holder: Owner,
    pub action: ResetAction,
    /// Every function the reset touches, sorted.
    pub scope: Vec<Bdf>,
}

/// Why an assignment (or reservation) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationConflict {
    /// The function in question.
    pub bdf: Bdf,
    /// Who owns it, or whose reservation covers it.
    pub holder: Owner,
    pub action: ResetAction,
}

/// Reservations of every owner.
///
/// A reservation of owner O for a reset R with scope S means: no function of
/// S may go to another owner while O runs (bridges stay with the hardware
/// domain, where they live anyway). The lead calls
/// [`Reservations::breaks_reservation`] before every assignment and
/// [`Reservations::release`] when a guest shuts down.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservations {
    list: Vec<Reservation>,
}

impl Reservations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves `action` for `holder`. Refused when a non-bridge function of
    /// the scope is not the holder's, or another owner's reservation covers
    /// part of the scope. Reserving the same action twice is a no-op.
    pub fn reserve(
        &mut self,
        topo: &Topology,
        holder: Owner,
        action: ResetAction,
        ownership_of: impl Fn(Bdf) -> Owner,
    ) -> Result<(), ReservationConflict> {
        let mut scope = topo.action_scope(action);
        scope.sort_unstable();
        for &b in &scope {
            let owner = ownership_of(b);
            if !is_bridge(topo, b) && owner != holder {
                return Err(ReservationConflict {
                    bdf: b,
                    holder: owner,
                    action,
                });
            }
            if let Some(r) = self
                .list
                .iter()
                .find(|r| r.holder != holder && r.scope.binary_search(&b).is_ok())
            {
                return Err(ReservationConflict {
                    bdf: b,
                    holder: r.holder,
                    action: r.action,
                });
            }
        }
        if !self
            .list
            .iter()
            .any(|r| r.holder == holder && r.action == action)
        {
            self.list.push(Reservation {
                holder,
                action,
                scope,
            });
        }
        Ok(())
    }

    /// Whether assigning `assignment` to `new_owner` would break a
    /// reservation: a function of it lies in the scope of another owner's
    /// reservation.
    pub fn breaks_reservation(
        &self,
        assignment: &[Bdf],
        new_owner: Owner,
    ) -> Option<ReservationConflict> {
        assignment.iter().find_map(|&b| {
            self.list
                .iter()
                .find(|r| r.holder != new_owner && r.scope.binary_search(&b).is_ok())
                .map(|r| ReservationConflict {
                    bdf: b,
                    holder: r.holder,
                    action: r.action,
                })
        })
    }

    /// Drops every reservation of `holder` (a guest shut down or was
    /// destroyed); returns how many.
    pub fn release(&mut self, holder: Owner) -> usize {
        let before = self.list.len();
        self.list.retain(|r| r.holder != holder);
        before - self.list.len()
    }

    pub fn of(&self, holder: Owner) -> impl Iterator<Item = &Reservation> + '_ {
        self.list.iter().filter(move |r| r.holder == holder)
    }
}
