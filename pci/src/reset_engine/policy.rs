//! Which reset a request gets, who may ask for it, what it keeps reserved,
//! and the functions that can no longer be handed out.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::EngineError;
use crate::addr::Bdf;
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
///   (possibly overridden) order: an FLR of a function the requester owns
///   touches nothing else.
///
/// `NoMethod` names the first function no method can reset: the caller
/// quarantines it (and does not pretend the reset happened).
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
    let mut out = Vec::new();
    for &b in functions {
        if is_bridge(topo, b) {
            continue;
        }
        // A VF is reset with its PF when the PF is in the set.
        if let Some(pf) = topo.function(b).and_then(|f| f.physfn())
            && functions.contains(&pf)
        {
            continue;
        }
        let methods = topo.reset_methods(b)?;
        let m = methods
            .as_slice()
            .iter()
            .copied()
            .find(|m| m.is_function_level())
            .ok_or(EngineError::NoMethod { bdf: b })?;
        out.push(ResetAction::Function { bdf: b, method: m });
    }
    Ok(out)
}

/// Refuses a reset the hardware domain asks for when its scope holds a
/// function a guest owns (for example an SBR of a root port above a guest's
/// device).
pub fn check_hwdom_reset(
    topo: &Topology,
    action: ResetAction,
    ownership_of: impl Fn(Bdf) -> Owner,
) -> Result<(), EngineError> {
    for b in topo.action_scope(action) {
        if let Owner::Guest(guest) = ownership_of(b) {
            return Err(EngineError::GuestFunctionInScope { bdf: b, guest });
        }
    }
    Ok(())
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
