//! PCI hypercalls and the hardware domain's ECAM accesses, on top of the
//! `pci` tracker. Generic over the config port, so all of it is tested on
//! the host against `pci::sim`.

use crate::pci_host::{PciState, WindowPort, split_access};
use crate::smccc::{self, CallError, PciCall};
use alloc::vec::Vec;
use pci::vpci::Effects;
use pci::vpci::{Owner, ReportError};
use pci::{Bdf, ConfigPort, ReportOutcome, ResetAction, ResetMethod, TopologyError};

/// Reason codes returned in x1 with REJECTED / NOT_FOUND (docs/interfaces.md).
pub fn reason(e: &TopologyError) -> u64 {
    match e {
        TopologyError::UnknownSegment { .. } => 1,
        TopologyError::BusOutsideHostBridge { .. } => 2,
        TopologyError::NoFunction { .. } => 3,
        TopologyError::NotReady { .. } => 4,
        TopologyError::UnsupportedHeaderType { .. } => 5,
        TopologyError::HeaderTypeMismatch { .. } => 6,
        TopologyError::UnknownPortType { .. } => 7,
        TopologyError::Capability { .. } => 8,
        TopologyError::InvalidBusRange { .. } => 9,
        TopologyError::OutsideParentRange { .. } => 10,
        TopologyError::BusRangeOverlap { .. } => 11,
        TopologyError::NotAVirtualFunction { .. } => 12,
        TopologyError::NotTracked { .. } => 13,
        TopologyError::VfBusCollision { .. } => 14,
    }
}

fn refused(e: TopologyError) -> CallError {
    let status = match e {
        TopologyError::NoFunction { .. } | TopologyError::NotTracked { .. } => smccc::NOT_FOUND,
        TopologyError::UnknownSegment { .. } | TopologyError::BusOutsideHostBridge { .. } => {
            smccc::INVALID_PARAMETER
        }
        _ => smccc::REJECTED,
    };
    CallError {
        status,
        reason: reason(&e),
    }
}

const DENIED: CallError = CallError {
    status: smccc::DENIED,
    reason: 0,
};

/// Carry out a PCI call from a VM (`hwdom` says whether it is the hardware
/// domain). Reports are validated by the tracker; a refused one changes
/// nothing and is logged.
pub fn handle<P: ConfigPort>(
    pci: &mut PciState<P>,
    who: Caller,
    caller: &str,
    call: PciCall,
    start: &mut Vec<ResetAction>,
) -> Result<[u64; 3], CallError> {
    match call {
        PciCall::ResetInfo { .. } | PciCall::Reset { .. } | PciCall::ResetReserve { .. } => {
            return reset_call(pci, who, caller, call, start);
        }
        _ if !who.hwdom => {
            if crate::log_limit::domain_may_log(who.vm) {
                log::warn!(
                    "{caller}: PCI call {call:?} is reserved to the hardware domain: denied"
                );
            }
            return Err(DENIED);
        }
        _ => {}
    }
    match call {
        PciCall::ResetInfo { .. } | PciCall::Reset { .. } | PciCall::ResetReserve { .. } => {
            Err(DENIED)
        }
        // Reads BAR memory: the shell calls `crate::msix::inspect` instead.
        PciCall::MsixEntry { .. } => Err(CallError {
            status: smccc::NOT_SUPPORTED,
            reason: 0,
        }),
        PciCall::SetResetMethods {
            segment,
            rid,
            methods,
        } => {
            let bdf = Bdf::from_rid(segment, rid);
            // A guest's reset order is its configuration's, never the
            // hardware domain's: with "bus only" on a guest's nvme its FLR
            // would silently do nothing.
            if let Some(holder) = held_by_guest(pci, core::iter::once(bdf)) {
                if crate::log_limit::domain_may_log(who.vm) {
                    log::warn!("{caller}: reset methods of {bdf} ({holder}) refused: denied");
                }
                return Err(DENIED);
            }
            let mut list = Vec::new();
            for i in 0..16 {
                match (methods >> (4 * i)) & 0xf {
                    0 => break,
                    code => list.push(method_of(code).ok_or(INVALID)?),
                }
            }
            let result = if list.is_empty() {
                pci.topology.clear_reset_methods(bdf);
                Ok(())
            } else {
                pci.topology.set_reset_methods(bdf, &list)
            };
            match result {
                Ok(()) => {
                    if !pci.topology.is_default_reset_order(bdf) {
                        log::warn!("{bdf}: reset methods set to {list:?}, not the probed order");
                    }
                    Ok([list.len() as u64, 0, 0])
                }
                Err(e) => {
                    if crate::log_limit::domain_may_log(who.vm) {
                        log::warn!("{caller}: reset methods {list:?} of {bdf} refused: {e}");
                    }
                    Err(INVALID)
                }
            }
        }
        PciCall::Add { segment, rid } => {
            let bdf = Bdf::from_rid(segment, rid);
            let outcome = pci
                .ownership
                .report_add(&mut pci.topology, bdf, &mut pci.port);
            if outcome.is_ok() {
                crate::aer::reported(pci, bdf);
            }
            match outcome {
                Ok(ReportOutcome::Attached { adopted }) => Ok([0, adopted as u64, 0]),
                Ok(ReportOutcome::Orphaned) => Ok([1, 0, 0]),
                Ok(ReportOutcome::AlreadyTracked) => Ok([2, 0, 0]),
                Err(e @ ReportError::JoinsGuestUnit { .. }) => {
                    if crate::log_limit::domain_may_log(who.vm) {
                        log::warn!("{caller}: report of {bdf} refused: {e}");
                    }
                    Err(DENIED)
                }
                Err(ReportError::Topology(e)) => {
                    if crate::log_limit::domain_may_log(who.vm) {
                        log::warn!("{caller}: report of {bdf} refused: {e:?}");
                    }
                    Err(refused(e))
                }
            }
        }
        PciCall::Remove { segment, rid } => {
            let bdf = Bdf::from_rid(segment, rid);
            let gone: Vec<Bdf> = core::iter::once(bdf)
                .chain(pci.topology.subtree(bdf))
                .collect();
            // Forgetting a port above a guest's device would lose the
            // device: its resets and its return to the hardware domain go
            // through the tree.
            if let Some(holder) = held_by_guest(pci, gone.iter().copied()) {
                if crate::log_limit::domain_may_log(who.vm) {
                    log::warn!("{caller}: removal of {bdf} refused: {holder}");
                }
                return Err(DENIED);
            }
            match pci.topology.report_remove(bdf) {
                Ok(removed) => {
                    crate::aer::removed(pci, &gone);
                    Ok([removed as u64, 0, 0])
                }
                Err(e) => {
                    if crate::log_limit::domain_may_log(who.vm) {
                        log::warn!("{caller}: removal of {bdf} refused: {e:?}");
                    }
                    Err(refused(e))
                }
            }
        }
        PciCall::EnumerationDone { segment } => {
            if !pci.windows.iter().any(|w| w.segment == segment) {
                return Err(CallError {
                    status: smccc::INVALID_PARAMETER,
                    reason: 1,
                });
            }
            let first = !pci.enumerated.contains(&segment);
            if first {
                pci.enumerated.push(segment);
            }
            // The tree is logged in full the first time; again (a call a
            // domain can repeat in a loop) under the caller's log limit.
            let log = first || crate::log_limit::domain_may_log(who.vm);
            let (functions, units, orphans) = log_tree(pci, segment, log);
            Ok([functions, units, orphans])
        }
        PciCall::UnitOf { segment, rid } => {
            let bdf = Bdf::from_rid(segment, rid);
            if !pci.topology.contains(bdf) {
                return Err(refused(TopologyError::NotTracked { bdf }));
            }
            let members = pci.topology.unit_members(bdf);
            let id = members.first().copied().unwrap_or(bdf);
            Ok([u64::from(id.rid()), members.len() as u64, 0])
        }
    }
}

/// The first of `functions` a guest owns or is configured for (a waiting
/// guest's function is its own from the moment it starts), said as "a
/// function of NAME".
fn held_by_guest<P>(
    pci: &PciState<P>,
    mut functions: impl Iterator<Item = Bdf>,
) -> Option<alloc::string::String> {
    functions.find_map(|b| {
        if let Owner::Guest(g) = pci.ownership.owner(b) {
            return Some(alloc::format!("{b} belongs to VM {g}"));
        }
        pci.pending
            .iter()
            .find(|g| g.requested.contains(&b))
            .map(|g| alloc::format!("{b} is configured for {}", g.name))
    })
}

/// Apply a VM configuration's reset-method orders to functions it was
/// given (`phv,pci-reset-methods`): only methods the function supports, no
/// repeats; a
/// non-default order is logged.
pub fn apply_reset_methods<P>(
    pci: &mut PciState<P>,
    vm: u16,
    config: &[(platform::PciFunctionAddress, Vec<alloc::string::String>)],
) -> Result<(), alloc::string::String> {
    for (addr, names) in config {
        let bdf = Bdf::new(addr.segment, addr.bus, addr.device, addr.function);
        if pci.ownership.owner(bdf) != Owner::Guest(vm) {
            return Err(alloc::format!(
                "phv,pci-reset-methods names {bdf}, not one of its functions"
            ));
        }
        let mut methods = Vec::new();
        for name in names {
            let m = ResetMethod::from_name(name).ok_or_else(|| {
                alloc::format!("phv,pci-reset-methods: no reset method \"{name}\"")
            })?;
            methods.push(m);
        }
        pci.topology
            .set_reset_methods(bdf, &methods)
            .map_err(|e| alloc::format!("phv,pci-reset-methods of {bdf}: {e}"))?;
        if !pci.topology.is_default_reset_order(bdf) {
            log::warn!(
                "{bdf}: reset methods {names:?} from the VM configuration, not the probed order"
            );
        }
    }
    Ok(())
}

/// Who makes a PCI call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub vm: u16,
    pub hwdom: bool,
}

const INVALID: CallError = CallError {
    status: smccc::INVALID_PARAMETER,
    reason: 0,
};

/// Method codes of the reset calls: 1 device specific, 2 FLR, 3 AF FLR,
/// 4 PM, 5 slot, 6 bus.
pub fn method_of(code: u64) -> Option<ResetMethod> {
    ResetMethod::ALL
        .get(usize::try_from(code).ok()?.checked_sub(1)?)
        .copied()
}

pub fn code_of(action: ResetAction) -> u64 {
    let method = match action {
        ResetAction::Function { method, .. } => method,
        ResetAction::Slot { .. } => ResetMethod::Slot,
        ResetAction::SecondaryBus { .. } => ResetMethod::Bus,
    };
    ResetMethod::ALL
        .iter()
        .position(|&m| m == method)
        .map_or(0, |i| i as u64 + 1)
}

/// The reset calls (PCI_RESET_INFO, PCI_RESET, PCI_RESET_RESERVE), for the
/// hardware domain and for guests (who
/// name their functions by virtual address). A caller may only ask about,
/// reset or reserve what it owns.
fn reset_call<P: ConfigPort>(
    pci: &mut PciState<P>,
    who: Caller,
    caller: &str,
    call: PciCall,
    start: &mut Vec<ResetAction>,
) -> Result<[u64; 3], CallError> {
    let (PciCall::ResetInfo { segment, rid }
    | PciCall::Reset { segment, rid, .. }
    | PciCall::ResetReserve { segment, rid }) = call
    else {
        return Err(INVALID);
    };
    let named = Bdf::from_rid(segment, rid);
    let owner = if who.hwdom {
        Owner::Hwdom
    } else {
        Owner::Guest(who.vm)
    };
    let bdf = if who.hwdom {
        named
    } else {
        pci.guest_bus(who.vm)
            .and_then(|b| b.physical_of(named))
            .ok_or(refused(TopologyError::NotTracked { bdf: named }))?
    };
    if !pci.topology.contains(bdf) || pci.ownership.owner(bdf) != owner {
        if crate::log_limit::domain_may_log(who.vm) {
            log::warn!("{caller}: reset call on {named}, which it does not own: denied");
        }
        return Err(DENIED);
    }
    let action = match call {
        PciCall::Reset { method, .. } if method != 0 => {
            let m = method_of(method).ok_or(INVALID)?;
            pci.topology.reset_action(bdf, m).map_err(|_| INVALID)?
        }
        _ => match crate::resets::for_guest(pci, &[bdf]) {
            Ok(actions) if actions.len() == 1 => actions[0],
            // Every reset of it would touch another owner's function (a
            // root port above a guest's device, a PF with foreign VFs).
            Err(pci::reset_engine::EngineError::NotTheRequesters {
                bdf: other,
                owner: o,
            }) => {
                log::warn!("{caller}: any reset of {named} would touch {other} of {o:?}: denied");
                return Err(DENIED);
            }
            _ => {
                return Err(CallError {
                    status: smccc::NOT_SUPPORTED,
                    reason: 0,
                });
            }
        },
    };
    let scope = pci.topology.action_scope(action);
    // `pci`'s rule (a PM reset of a root port holds what is below it).
    let not_owned = pci::reset_engine::foreign_in_scope(&pci.topology, action, owner, |b| {
        pci.ownership.owner(b)
    })
    .len() as u64;
    match call {
        PciCall::ResetInfo { .. } => Ok([code_of(action), scope.len() as u64, not_owned]),
        PciCall::Reset { .. } => {
            if not_owned > 0 {
                if crate::log_limit::domain_may_log(who.vm) {
                    log::warn!(
                        "{caller}: {action:?} would touch functions it does not own: refused"
                    );
                }
                return Err(DENIED);
            }
            if let Some(b) =
                pci::reset_engine::renumbered_in_scope(&pci.topology, action, &mut pci.port)
            {
                if crate::log_limit::domain_may_log(who.vm) {
                    log::warn!(
                        "{caller}: {action:?} refused: {b} has bus numbers the tree does not (renumbered without a report)"
                    );
                }
                return Err(DENIED);
            }
            start.push(action);
            Ok([code_of(action), scope.len() as u64, 0])
        }
        _ => {
            // The hardware domain holds the functions configured for a guest
            // only until that guest starts: it may not keep them from it.
            if who.hwdom
                && let Some(g) = pci
                    .pending
                    .iter()
                    .find(|g| g.requested.iter().any(|b| scope.contains(b)))
            {
                if crate::log_limit::domain_may_log(who.vm) {
                    log::warn!(
                        "{caller}: reservation of {action:?} refused: it covers functions configured for {}",
                        g.name
                    );
                }
                return Err(DENIED);
            }
            let owner_of = |b| pci.ownership.owner(b);
            match pci
                .reservations
                .reserve(&pci.topology, owner, action, owner_of)
            {
                Ok(()) => Ok([code_of(action), scope.len() as u64, 0]),
                Err(c) => {
                    if crate::log_limit::domain_may_log(who.vm) {
                        log::warn!("{caller}: reservation of {action:?} refused: {c:?}");
                    }
                    Err(DENIED)
                }
            }
        }
    }
}

/// Log (if `log`) the tree of one segment and its assignment units; returns
/// (functions, units, orphans) of the segment.
fn log_tree<P: ConfigPort>(pci: &mut PciState<P>, segment: u16, log: bool) -> (u64, u64, u64) {
    let topo = &mut pci.topology;
    let functions: alloc::vec::Vec<Bdf> = topo
        .functions()
        .map(|(bdf, _)| bdf)
        .filter(|b| b.segment == segment)
        .collect();
    let orphans = topo.orphans().filter(|b| b.segment == segment).count() as u64;
    if log {
        log::info!(
            "PCI segment {segment:04x} enumerated: {} functions, {orphans} waiting for their bridge",
            functions.len()
        );
    }
    for &bdf in functions.iter().filter(|_| log) {
        if let Some(f) = topo.function(bdf) {
            let parent = topo.parent_bridge(bdf);
            log::info!(
                "  {bdf} {:04x}:{:04x} {:?} parent {}",
                f.vendor,
                f.device,
                f.kind,
                parent.map_or(
                    alloc::string::String::from("host bridge"),
                    |p| alloc::format!("{p}")
                )
            );
        }
    }
    let units = topo.units();
    let mut count = 0;
    for unit in units.iter() {
        if unit.members.first().is_some_and(|b| b.segment == segment) {
            count += 1;
            if log {
                log::info!("  unit {:?}: {:?}", unit.id.0, unit.members);
            }
        }
    }
    // A function no method can reset is never handed out (logged once).
    for b in crate::resets::quarantine_unresettable(pci, segment) {
        log::warn!("{b}: no reset method can reset it: quarantined (never given to a guest)");
    }
    // Machine-readable copy for `cargo xtask pci-report`.
    if log {
        for line in
            crate::pci_report::lines(&mut pci.topology, &mut pci.port, &pci.quarantine, segment)
        {
            log::info!("pci-json {line}");
        }
    }
    (functions.len() as u64, count, orphans)
}

/// A trapped ECAM access of the hardware domain: `offset` into ECAM window
/// `window`, `width` bytes, a write if `write` holds the value. Each aligned
/// piece goes through the ownership filter: guests' functions read as
/// absent, writes that would disturb a guest are refused (logged). Returns
/// the value read (all-ones where nothing answers).
#[inline(always)]
pub fn hwdom_ecam_access<P: WindowPort>(
    pci: &mut PciState<P>,
    index: usize,
    offset: u64,
    width: u64,
    write: Option<u64>,
) -> u64 {
    if index >= pci.windows.len() {
        return u64::MAX;
    }
    // The common case: one aligned register access, straight through.
    if matches!(width, 1 | 2 | 4) && offset & (width - 1) == 0 {
        let value = write.map(|v| (v & ((1u64 << (8 * width)) - 1)) as u32);
        // No guest owns a function and no reset runs: nothing to filter,
        // the access goes to the physical function as it is.
        if pci.resets.is_empty()
            && !pci.ownership.any_assigned()
            && !pci.aer.filters_hwdom(index, offset, value.is_some())
            && let Some(v) = pci.port.window_access(index, offset, width, value)
        {
            return u64::from(v);
        }
    }
    let Some(window) = pci.windows.get(index).copied() else {
        return u64::MAX;
    };
    if matches!(width, 1 | 2 | 4) && offset & (width - 1) == 0 {
        let value = write.map(|v| (v & ((1u64 << (8 * width)) - 1)) as u32);
        return u64::from(hwdom_piece(pci, window, offset, width, value));
    }
    hwdom_ecam_split(pci, window, offset, width, write)
}

/// An unaligned or 8-byte hardware domain ECAM access, piece by piece.
#[inline(never)]
fn hwdom_ecam_split<P: ConfigPort>(
    pci: &mut PciState<P>,
    window: pci::EcamWindow,
    offset: u64,
    width: u64,
    write: Option<u64>,
) -> u64 {
    split_access(offset, width).fold(0, |acc, (at, w)| {
        let shift = (at - offset) * 8;
        let value = write.map(|v| ((v >> shift) & ((1u64 << (8 * w)) - 1)) as u32);
        acc | u64::from(hwdom_piece(pci, window, at, w, value)) << shift
    })
}

/// One naturally aligned piece of at most 4 bytes at `at` of a hardware
/// domain ECAM access: the value read (all-ones of its width where nothing
/// answers; 0 for a write).
#[inline(always)]
fn hwdom_piece<P: ConfigPort>(
    pci: &mut PciState<P>,
    window: pci::EcamWindow,
    at: u64,
    w: u64,
    write: Option<u32>,
) -> u32 {
    let Some((bdf, reg)) = window.decode(at) else {
        return ((1u64 << (8 * w)) - 1) as u32;
    };
    // A function being reset answers like hardware does meanwhile.
    if !pci.resets.is_empty() && crate::resets::masks(pci, bdf) {
        return hwdom_masked(pci, bdf, reg, w, write.is_some());
    }
    let mut write = write;
    let overlaid = pci.aer.active() && pci.ownership.owner(bdf) == pci::vpci::Owner::Hwdom;
    if overlaid {
        // The hypervisor owns AER: the hardware domain sees (and clears) an
        // overlay of the error registers, and cannot undo the error path.
        let (topo, w16) = (&pci.topology, w as u16);
        match write {
            None => {
                if let Some(v) = pci.aer.hwdom.read(topo, bdf, reg, w16) {
                    return v;
                }
            }
            Some(v) => {
                if pci.aer.hwdom.write(topo, bdf, reg, w16, v) {
                    return 0;
                }
                match pci.aer.hwdom.filter_write(topo, bdf, reg, w16, v) {
                    Some(v) => write = Some(v),
                    None => return 0,
                }
            }
        }
    }
    let outcome = pci
        .ownership
        .hwdom_apply(&mut pci.port, bdf, reg, w as u16, write);
    if let Some(why) = outcome.refused {
        log_refused(bdf, reg, w, why);
    }
    if write.is_none() && overlaid {
        return pci.aer.hwdom.patch_read(bdf, reg, w as u16, outcome.value);
    }
    outcome.value
}

#[cold]
#[inline(never)]
fn hwdom_masked<P>(pci: &PciState<P>, bdf: Bdf, reg: u16, w: u64, write: bool) -> u32 {
    let read = crate::resets::masked_read(pci, bdf, reg, w as u16).unwrap_or(u32::MAX);
    if write { 0 } else { read }
}

#[cold]
#[inline(never)]
fn log_refused(bdf: Bdf, reg: u16, w: u64, why: pci::vpci::Refusal) {
    if crate::log_limit::hwdom_may_log() {
        log::warn!("hwdom: write of {w} bytes at {bdf} +{reg:#x} refused: {why:?}");
    }
}

/// A guest's trapped access to its virtual ECAM: `offset` into it, `width`
/// bytes, a write if `write` holds the value (its effects are appended to
/// `effects`). Returns the value read (all-ones where nothing answers).
pub fn guest_ecam_access<P: ConfigPort>(
    pci: &mut PciState<P>,
    vm: u16,
    offset: u64,
    width: u64,
    write: Option<u64>,
    effects: &mut Effects,
) -> u64 {
    match write {
        Some(v) => guest_ecam(pci, vm, offset, width, Some((v, effects))),
        None => guest_ecam(pci, vm, offset, width, None),
    }
}

/// A guest's trapped read of its virtual ECAM (reads have no effects).
#[inline]
pub fn guest_ecam_read<P: ConfigPort>(
    pci: &mut PciState<P>,
    vm: u16,
    offset: u64,
    width: u64,
) -> u64 {
    // The common case: one aligned register access while no reset runs,
    // straight through (the bus checks the access once).
    if pci.resets.is_empty()
        && let Some(bus) = pci.guests.get_mut(vm)
        && let Some(v) = bus.single_read(&mut pci.port, offset, width)
    {
        return u64::from(v);
    }
    guest_ecam(pci, vm, offset, width, None)
}

#[inline(always)]
fn guest_ecam<P: ConfigPort>(
    pci: &mut PciState<P>,
    vm: u16,
    offset: u64,
    width: u64,
    write: Option<(u64, &mut Effects)>,
) -> u64 {
    let PciState {
        port,
        guests,
        resets,
        ..
    } = pci;
    let Some(bus) = guests.get_mut(vm) else {
        return no_guest_bus(offset, width);
    };
    // The common case: one aligned register access, straight through.
    if pci::vpci::single_access(offset, width) {
        let write = write.map(|(v, e)| ((v & ((1u64 << (8 * width)) - 1)) as u32, e));
        return u64::from(guest_piece(bus, port, resets, offset, width, write));
    }
    guest_ecam_split(bus, port, resets, offset, width, write)
}

/// A guest without a virtual bus: all-ones, as where nothing answers.
#[cold]
#[inline(never)]
fn no_guest_bus(offset: u64, width: u64) -> u64 {
    split_access(offset, width).fold(0, |acc, (at, w)| {
        acc | (((1u64 << (8 * w)) - 1) << ((at - offset) * 8))
    })
}

/// An unaligned or 8-byte guest ECAM access, piece by piece.
#[inline(never)]
fn guest_ecam_split<P: ConfigPort>(
    bus: &mut pci::vpci::GuestBus,
    port: &mut P,
    resets: &[crate::resets::RunningReset],
    offset: u64,
    width: u64,
    mut write: Option<(u64, &mut Effects)>,
) -> u64 {
    let mut result = 0u64;
    for (at, w) in split_access(offset, width) {
        let shift = (at - offset) * 8;
        let piece = write
            .as_mut()
            .map(|(v, e)| (((*v >> shift) & ((1u64 << (8 * w)) - 1)) as u32, &mut **e));
        result |= u64::from(guest_piece(bus, port, resets, at, w, piece)) << shift;
    }
    result
}

/// One naturally aligned piece of at most 4 bytes at `at` of a guest's
/// virtual ECAM access: the value read (0 for a write).
#[inline(always)]
fn guest_piece<P: ConfigPort>(
    bus: &mut pci::vpci::GuestBus,
    port: &mut P,
    resets: &[crate::resets::RunningReset],
    at: u64,
    w: u64,
    write: Option<(u32, &mut Effects)>,
) -> u32 {
    // A function being reset answers like hardware does meanwhile, until
    // every reset of the same request ended.
    if !resets.is_empty() {
        let vbdf = Bdf::from_devfn(0, (at >> 20) as u8, (at >> 12) as u8);
        if let Some(physical) = bus.physical_of(vbdf)
            && resets.iter().any(|r| r.hides(physical))
        {
            if write.is_some() {
                return 0;
            }
            let reg = (at & 0xfff) as u16;
            return pci::reset_engine::masked_read(reg, w as u8, false);
        }
    }
    match write {
        Some((v, effects)) => {
            bus.config_write(port, at, w as u16, v, effects);
            0
        }
        None => bus.config_read(port, at, w as u16),
    }
}

/// The host-bridge interrupt (INTID) of `pin` (1..=4) of function `bdf`:
/// the pin is swizzled at every bridge on the way up (PCI-to-PCI bridge
/// rule), then looked up in the host bridge's `interrupt-map` (entries
/// already masked with `mask`).
pub fn route_intx(
    topo: &pci::Topology,
    mask: (u32, u32),
    map: &[(u32, u8, u32)],
    bdf: Bdf,
    pin: u8,
) -> Option<u32> {
    if !(1..=4).contains(&pin) {
        return None;
    }
    let (mut at, mut pin) = (bdf, pin);
    while let Some(parent) = topo.parent_bridge(at) {
        pin = ((pin - 1 + at.device()) % 4) + 1;
        at = parent;
    }
    let hi = crate::guest_fdt::pci_child_hi(at.bus, at.device(), at.function()) & mask.0;
    let pin = u32::from(pin) & mask.1;
    map.iter()
        .find(|&&(h, p, _)| h == hi && u32::from(p) == pin)
        .map(|&(_, _, intid)| intid)
}

/// What to do with a guest that was waiting for its functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestStart {
    /// Its functions are assigned to it, unit by unit: start it.
    Start { vm: u16, units: Vec<Vec<Bdf>> },
    /// Its configuration cannot be satisfied (logged): never start it.
    Fail { vm: u16 },
}

/// After a report: assign the functions of every waiting guest whose
/// functions are all in the tree and whose segments are enumerated.
pub fn ready_guests<P: ConfigPort>(pci: &mut PciState<P>) -> Vec<GuestStart> {
    let mut decisions = Vec::new();
    let pending = core::mem::take(&mut pci.pending);
    for guest in pending {
        let complete = guest
            .requested
            .iter()
            .all(|b| pci.topology.contains(*b) && pci.enumerated.contains(&b.segment));
        if !complete {
            pci.pending.push(guest);
            continue;
        }
        // The units as the hardware has them now (`assign` does it too).
        pci.ownership.refresh_acs(&mut pci.topology, &mut pci.port);
        // A PF goes to a guest only with SR-IOV off (`pci::reset_engine::
        // sriov_in_use`): its VFs would stay here while its resets reach them.
        let members = guest
            .requested
            .iter()
            .flat_map(|&b| pci.topology.unit_members(b))
            .collect::<Vec<Bdf>>();
        if let Some((pf, vf)) = members.iter().find_map(|&b| {
            pci::reset_engine::sriov_in_use(&pci.topology, &mut pci.port, b).map(|v| (b, v))
        }) {
            log::error!(
                "{} cannot be given {pf}: its SR-IOV is on ({vf}); a PF is given with its VFs disabled",
                guest.name
            );
            decisions.push(GuestStart::Fail { vm: guest.vm });
            continue;
        }
        if let Some(c) = pci
            .reservations
            .breaks_reservation(&guest.requested, Owner::Guest(guest.vm))
        {
            log::error!("{} cannot be given {}: {c:?}", guest.name, c.bdf);
            decisions.push(GuestStart::Fail { vm: guest.vm });
            continue;
        }
        match pci.ownership.assign(
            &mut pci.topology,
            &mut pci.port,
            guest.vm,
            &guest.requested,
            guest.whole_units,
        ) {
            Ok(units) => {
                log::info!("{} gets {} unit(s): {units:?}", guest.name, units.len());
                decisions.push(GuestStart::Start {
                    vm: guest.vm,
                    units,
                });
            }
            Err(e) => {
                log::error!(
                    "{} cannot be given {:?}: {}",
                    guest.name,
                    guest.requested,
                    assign_error(&e)
                );
                decisions.push(GuestStart::Fail { vm: guest.vm });
            }
        }
    }
    decisions
}

fn assign_error(e: &pci::vpci::AssignError) -> alloc::string::String {
    use pci::vpci::AssignError;
    match e {
        AssignError::NotTracked(b) => alloc::format!("{b} was not reported by the hardware domain"),
        AssignError::SplitsUnit { unit, missing } => alloc::format!(
            "the configuration names part of assignment unit {:?}; it also needs {missing:?} \
             (name them, or set phv,pci-whole-units)",
            unit.0
        ),
        AssignError::AlreadyOwned { bdf, owner } => {
            alloc::format!("{bdf} already belongs to {owner:?}")
        }
        AssignError::IsBridge(b) => {
            alloc::format!("{b} is a bridge; bridges stay with the hardware domain")
        }
        AssignError::NoUnit(b) => alloc::format!("{b} has no assignment unit"),
        AssignError::BridgeRenumbered(b) => alloc::format!(
            "bridge {b} has bus numbers other than the ones it was reported with \
             (report it again)"
        ),
    }
}

/// A waiting guest whose deadline passed: drop it and log which functions
/// never arrived. Returns whether `vm` was waiting and has now failed.
pub fn expire_guest<P>(pci: &mut PciState<P>, vm: u16, now: u64) -> bool {
    let Some(i) = pci
        .pending
        .iter()
        .position(|g| g.vm == vm && now >= g.deadline)
    else {
        return false;
    };
    let guest = pci.pending.remove(i);
    let missing: Vec<Bdf> = guest
        .requested
        .iter()
        .filter(|b| !pci.topology.contains(**b))
        .copied()
        .collect();
    let unenumerated: Vec<u16> = guest
        .requested
        .iter()
        .map(|b| b.segment)
        .filter(|s| !pci.enumerated.contains(s))
        .collect();
    log::error!(
        "{} not started: functions {missing:?} were not reported by the hardware domain \
         (segments not declared enumerated: {unenumerated:?}) before the deadline",
        guest.name
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci_host::PendingGuest;

    /// A call from the hwdom (`true`, VM 0) or from guest VM 1.
    fn hv<P: ConfigPort>(
        pci: &mut PciState<P>,
        hwdom: bool,
        name: &str,
        call: PciCall,
    ) -> Result<[u64; 3], CallError> {
        let who = Caller {
            vm: u16::from(!hwdom),
            hwdom,
        };
        handle(pci, who, name, call, &mut Vec::new())
    }
    use pci::EcamWindow;
    use pci::sim::{Fabric, Spec, devfn};
    use std::vec::Vec;

    fn state() -> (PciState<Fabric>, Vec<Bdf>) {
        state_of(Fabric::new().with_root_complex(
            0,
            0,
            &[(
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
            )],
        ))
    }

    /// The state over `fabric` (segment 0, all buses), and its functions.
    fn state_of(mut fabric: Fabric) -> (PciState<Fabric>, Vec<Bdf>) {
        let found = fabric.enumerate();
        let window = EcamWindow {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
        };
        (PciState::new(std::vec![window], fabric), found)
    }

    #[test]
    fn hwdom_reports_build_the_tree_in_any_order() {
        let (mut pci, found) = state();
        assert_eq!(found.len(), 2);
        // Child first: it waits as an orphan.
        let child = found[1];
        let r = hv(
            &mut pci,
            true,
            "hwdom",
            PciCall::Add {
                segment: 0,
                rid: child.rid(),
            },
        );
        assert_eq!(r, Ok([1, 0, 0]));
        let r = hv(
            &mut pci,
            true,
            "hwdom",
            PciCall::Add {
                segment: 0,
                rid: found[0].rid(),
            },
        );
        assert_eq!(r, Ok([0, 1, 0]), "attached, adopting the orphan");
        let r = hv(
            &mut pci,
            true,
            "hwdom",
            PciCall::EnumerationDone { segment: 0 },
        );
        assert_eq!(
            r,
            Ok([2, 2, 0]),
            "two functions, two units (ACS root port), no orphans"
        );
        let r = hv(
            &mut pci,
            true,
            "hwdom",
            PciCall::UnitOf {
                segment: 0,
                rid: child.rid(),
            },
        );
        assert_eq!(r, Ok([u64::from(child.rid()), 1, 0]));
    }

    #[test]
    fn reports_are_validated_and_reserved_to_the_hwdom() {
        let (mut pci, _) = state();
        let nothing = Bdf::new(0, 0, 7, 0);
        let r = hv(
            &mut pci,
            true,
            "hwdom",
            PciCall::Add {
                segment: 0,
                rid: nothing.rid(),
            },
        );
        assert_eq!(
            r,
            Err(CallError {
                status: smccc::NOT_FOUND,
                reason: 3
            })
        );
        let r = hv(&mut pci, true, "hwdom", PciCall::Add { segment: 3, rid: 0 });
        assert_eq!(r.map_err(|e| e.status), Err(smccc::INVALID_PARAMETER));
        let r = hv(
            &mut pci,
            false,
            "guest",
            PciCall::Add { segment: 0, rid: 8 },
        );
        assert_eq!(r, Err(DENIED));
        let r = hv(
            &mut pci,
            true,
            "hwdom",
            PciCall::EnumerationDone { segment: 9 },
        );
        assert_eq!(r.map_err(|e| e.status), Err(smccc::INVALID_PARAMETER));
        assert!(pci.topology.is_empty(), "refused reports change nothing");
    }

    /// A function reported behind a guest's PCIe-to-PCI bridge would share
    /// the guest's unit: denied, and not tracked.
    #[test]
    fn a_report_joining_a_guests_unit_is_denied() {
        let fabric = Fabric::new().with_root_complex(
            0,
            0,
            &[(
                devfn(1, 0),
                Spec::qemu_root_port().child(
                    0,
                    0,
                    Spec::qemu_pcie_pci_bridge()
                        .child(1, 0, Spec::conventional(0x8086, 0x100e))
                        .child(2, 0, Spec::conventional(0x8086, 0x100e)),
                ),
            )],
        );
        let (mut pci, found) = state_of(fabric);
        let (guest_fn, late) = (Bdf::new(0, 2, 1, 0), Bdf::new(0, 2, 2, 0));
        let early: Vec<Bdf> = found.iter().copied().filter(|&b| b != late).collect();
        report_all(&mut pci, &early);
        pci.ownership
            .assign(&mut pci.topology, &mut pci.port, 1, &[guest_fn], true)
            .unwrap();
        let add = PciCall::Add {
            segment: 0,
            rid: late.rid(),
        };
        assert_eq!(hv(&mut pci, true, "hwdom", add), Err(DENIED));
        assert!(!pci.topology.contains(late));
        assert_eq!(pci.topology.orphans().count(), 0);
    }

    fn report_all(pci: &mut PciState<Fabric>, found: &[Bdf]) {
        for b in found {
            hv(
                pci,
                true,
                "hwdom",
                PciCall::Add {
                    segment: b.segment,
                    rid: b.rid(),
                },
            )
            .unwrap();
        }
        hv(pci, true, "hwdom", PciCall::EnumerationDone { segment: 0 }).unwrap();
    }

    fn pending(vm: u16, requested: &[Bdf], whole_units: bool) -> PendingGuest {
        PendingGuest {
            vm,
            name: std::format!("vm{vm}"),
            requested: requested.to_vec(),
            whole_units,
            deadline: 100,
        }
    }

    #[test]
    fn a_guest_starts_once_its_functions_are_reported_and_assigned() {
        let (mut pci, found) = state();
        let nvme = found[1];
        pci.pending.push(pending(1, &[nvme], false));
        assert_eq!(ready_guests(&mut pci), [], "nothing reported yet");
        report_all(&mut pci, &found);
        assert_eq!(
            ready_guests(&mut pci),
            [GuestStart::Start {
                vm: 1,
                units: std::vec![std::vec![nvme]]
            }]
        );
        assert!(pci.pending.is_empty());
        // The nvme is gone from the hwdom's view; writes to it are dropped.
        let at = (u64::from(nvme.bus) << 20) | (u64::from(nvme.devfn) << 12);
        assert_eq!(hwdom_ecam_access(&mut pci, 0, at, 4, None), 0xffff_ffff);
        let before = pci.port.read32(nvme, 0x10);
        hwdom_ecam_access(&mut pci, 0, at + 0x10, 4, Some(0x1234_0000));
        assert_eq!(pci.port.read32(nvme, 0x10), before);
        // Its root port's bus numbers are protected.
        let rp = found[0];
        let rp_at = (u64::from(rp.bus) << 20) | (u64::from(rp.devfn) << 12);
        let buses = pci.port.read32(rp, 0x18);
        hwdom_ecam_access(&mut pci, 0, rp_at + 0x18, 4, Some(0x0020_2000));
        assert_eq!(pci.port.read32(rp, 0x18), buses);
    }

    #[test]
    fn a_guest_whose_functions_never_come_fails_after_its_deadline() {
        let (mut pci, found) = state();
        let absent = Bdf::new(0, 9, 0, 0);
        pci.pending.push(pending(2, &[absent], false));
        report_all(&mut pci, &found);
        assert_eq!(ready_guests(&mut pci), []);
        assert!(!expire_guest(&mut pci, 2, 99), "before the deadline");
        assert!(expire_guest(&mut pci, 2, 100));
        assert!(pci.pending.is_empty());
        assert!(!expire_guest(&mut pci, 2, 200), "only once");
    }

    #[test]
    fn a_guest_naming_a_bridge_fails() {
        let (mut pci, found) = state();
        pci.pending.push(pending(3, &[found[0]], false));
        report_all(&mut pci, &found);
        assert_eq!(ready_guests(&mut pci), [GuestStart::Fail { vm: 3 }]);
    }

    #[test]
    fn vm_config_reset_methods_are_validated() {
        let (mut pci, found) = state();
        report_all(&mut pci, &found);
        let nvme = found[1];
        pci.pending.push(pending(1, &[nvme], false));
        assert!(matches!(
            ready_guests(&mut pci)[..],
            [GuestStart::Start { .. }]
        ));
        let addr = platform::PciFunctionAddress::parse("0000:01:00.0").unwrap();
        assert_eq!(Bdf::new(0, 1, 0, 0), nvme);
        let names = |n: &[&str]| n.iter().map(|s| std::string::String::from(*s)).collect();
        assert!(apply_reset_methods(&mut pci, 1, &[(addr, names(&["flr"]))]).is_ok());
        assert_eq!(
            pci.topology.reset_methods(nvme).unwrap().as_slice(),
            [ResetMethod::Flr]
        );
        assert!(apply_reset_methods(&mut pci, 1, &[(addr, names(&["warp"]))]).is_err());
        assert!(apply_reset_methods(&mut pci, 1, &[(addr, names(&["device_specific"]))]).is_err());
        assert!(
            apply_reset_methods(&mut pci, 2, &[(addr, names(&["flr"]))]).is_err(),
            "not its own"
        );
    }

    #[test]
    fn reset_calls_answer_seed_002_and_check_ownership() {
        let (mut pci, found) = state();
        report_all(&mut pci, &found);
        let nvme = found[1];
        let call = |segment, rid| PciCall::ResetInfo { segment, rid };
        // The hwdom owns everything below the root port: one bus-level
        // reset touching the nvme only, nothing it does not own.
        let [code, touched, not_owned] = hv(&mut pci, true, "hwdom", call(0, nvme.rid())).unwrap();
        assert!(matches!(
            method_of(code),
            Some(ResetMethod::Bus | ResetMethod::Slot)
        ));
        assert_eq!((touched, not_owned), (1, 0));
        // A specific method, started through `start`.
        let mut start = Vec::new();
        let who = Caller { vm: 0, hwdom: true };
        let r = handle(
            &mut pci,
            who,
            "hwdom",
            PciCall::Reset {
                segment: 0,
                rid: nvme.rid(),
                method: 2,
            },
            &mut start,
        );
        assert_eq!(r.map(|v| v[0]), Ok(2));
        assert_eq!(
            start,
            [ResetAction::Function {
                bdf: nvme,
                method: ResetMethod::Flr
            }]
        );
        // The hwdom may reorder the reset methods of its own functions,
        // only to supported ones.
        let set = |methods| PciCall::SetResetMethods {
            segment: 0,
            rid: nvme.rid(),
            methods,
        };
        assert_eq!(hv(&mut pci, true, "hwdom", set(0x2)), Ok([1, 0, 0]));
        assert_eq!(
            hv(&mut pci, true, "hwdom", set(0x1)),
            Err(INVALID),
            "no device-specific reset"
        );
        assert_eq!(
            hv(&mut pci, true, "hwdom", set(0x22)),
            Err(INVALID),
            "duplicate"
        );
        assert_eq!(
            hv(&mut pci, true, "hwdom", set(0x9)),
            Err(INVALID),
            "no method 9"
        );
        assert_eq!(hv(&mut pci, true, "hwdom", set(0)), Ok([0, 0, 0]));
        assert_eq!(hv(&mut pci, false, "guest", set(0x2)), Err(DENIED));
        // Once the nvme is configured for a guest, and once it is the
        // guest's, the hwdom may neither reorder its methods nor remove it
        // or the port above it; once it is the guest's, the hwdom may not
        // reset or query it.
        pci.pending.push(pending(1, &[nvme], false));
        assert_eq!(hv(&mut pci, true, "hwdom", set(0x6)), Err(DENIED));
        let remove = |bdf: Bdf| PciCall::Remove {
            segment: 0,
            rid: bdf.rid(),
        };
        assert_eq!(hv(&mut pci, true, "hwdom", remove(found[0])), Err(DENIED));
        assert!(matches!(
            ready_guests(&mut pci)[..],
            [GuestStart::Start { .. }]
        ));
        assert_eq!(
            hv(&mut pci, true, "hwdom", call(0, nvme.rid())),
            Err(DENIED)
        );
        assert_eq!(hv(&mut pci, true, "hwdom", set(0x6)), Err(DENIED));
        assert_eq!(hv(&mut pci, true, "hwdom", remove(found[0])), Err(DENIED));
        assert_eq!(hv(&mut pci, true, "hwdom", remove(nvme)), Err(DENIED));
        assert!(pci.topology.contains(found[0]) && pci.topology.contains(nvme));
    }

    #[test]
    fn the_hwdom_cannot_reset_the_root_port_above_a_guests_device() {
        let (mut pci, found) = state();
        report_all(&mut pci, &found);
        let (rp, nvme) = (found[0], found[1]);
        pci.pending.push(pending(1, &[nvme], false));
        assert!(matches!(
            ready_guests(&mut pci)[..],
            [GuestStart::Start { .. }]
        ));
        // The port's PM reset (D3hot cuts the nvme off, D0 clears the
        // port's bus numbers) touches the guest's nvme whatever its name.
        let pm = ResetMethod::ALL
            .iter()
            .position(|&m| m == ResetMethod::Pm)
            .unwrap() as u64
            + 1;
        assert!(
            pci.topology
                .reset_methods(rp)
                .unwrap()
                .contains(ResetMethod::Pm)
        );
        let reset = |method| PciCall::Reset {
            segment: 0,
            rid: rp.rid(),
            method,
        };
        let mut start = Vec::new();
        let who = Caller { vm: 0, hwdom: true };
        for method in [0, pm] {
            assert_eq!(
                handle(&mut pci, who, "hwdom", reset(method), &mut start),
                Err(DENIED)
            );
        }
        assert!(start.is_empty());
        let reserve = PciCall::ResetReserve {
            segment: 0,
            rid: rp.rid(),
        };
        assert_eq!(hv(&mut pci, true, "hwdom", reserve), Err(DENIED));
    }

    #[test]
    fn a_pf_goes_to_a_guest_only_with_its_sriov_off() {
        let fabric = Fabric::new().with_root_complex(
            0,
            0,
            &[(
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::endpoint(0x8086, 0x1521).sriov(2, 0x1520)),
            )],
        );
        let (mut pci, found) = state_of(fabric);
        report_all(&mut pci, &found);
        pci.enumerated.push(0);
        let pf = Bdf::new(0, 1, 0, 0);
        assert!(
            pci.topology.contains(Bdf::new(0, 1, 0, 1)),
            "a VF is tracked"
        );
        // Its VFs would stay the hwdom's while the PF's FLR resets them.
        pci.pending.push(pending(1, &[pf], false));
        assert_eq!(ready_guests(&mut pci), [GuestStart::Fail { vm: 1 }]);
        assert_eq!(pci.ownership.owner(pf), Owner::Hwdom);
        // VFs off and removed: the PF may go.
        let sriov = pci.topology.function(pf).unwrap().caps.sriov;
        pci.port.write16(pf, sriov + pci::regs::SRIOV_CTRL, 0);
        for vf in [Bdf::new(0, 1, 0, 1), Bdf::new(0, 1, 0, 2)] {
            pci.topology.report_remove(vf).unwrap();
        }
        pci.pending.push(pending(1, &[pf], false));
        assert!(matches!(
            ready_guests(&mut pci)[..],
            [GuestStart::Start { .. }]
        ));
    }

    #[test]
    fn the_hwdom_reserves_only_its_own_resets() {
        let (mut pci, found) = state();
        report_all(&mut pci, &found);
        let nvme = found[1];
        let reserve = PciCall::ResetReserve {
            segment: 0,
            rid: nvme.rid(),
        };
        // Its own function: granted, held by the hwdom (not by "no one").
        assert!(hv(&mut pci, true, "hwdom", reserve).is_ok());
        assert_eq!(pci.reservations.of(Owner::Hwdom).count(), 1);
        assert!(hv(&mut pci, true, "hwdom", reserve).is_ok(), "again: no-op");
        pci.reservations.release(Owner::Hwdom);
        // A function configured for a guest: the hwdom cannot keep it.
        pci.pending.push(pending(1, &[nvme], false));
        assert_eq!(hv(&mut pci, true, "hwdom", reserve), Err(DENIED));
        assert!(matches!(
            ready_guests(&mut pci)[..],
            [GuestStart::Start { .. }]
        ));
        assert_eq!(hv(&mut pci, true, "hwdom", reserve), Err(DENIED));
    }

    #[test]
    fn hwdom_ecam_reads_and_writes_pass_through_with_any_width() {
        let (mut pci, found) = state();
        let rp = found[0];
        let at = |reg: u64| (u64::from(rp.bus) << 20) | (u64::from(rp.devfn) << 12) | reg;
        // Vendor/device as one 32-bit, two 16-bit and one 64-bit read.
        let id = hwdom_ecam_access(&mut pci, 0, at(0), 4, None);
        assert_eq!(id, 0x000c_1b36);
        assert_eq!(hwdom_ecam_access(&mut pci, 0, at(2), 2, None), 0x000c);
        let both = hwdom_ecam_access(&mut pci, 0, at(0), 8, None);
        assert_eq!(both & 0xffff_ffff, id);
        assert_eq!(both >> 32, u64::from(pci.port.read32(rp, 4)));
        // An unaligned 32-bit read is served byte-exactly.
        let odd = hwdom_ecam_access(&mut pci, 0, at(1), 4, None);
        assert_eq!(
            odd,
            u64::from(pci.port.read32(rp, 0) >> 8) | (u64::from(pci.port.read8(rp, 4)) << 24)
        );
        // A write of the bridge's subordinate bus lands.
        hwdom_ecam_access(&mut pci, 0, at(0x1a), 1, Some(0x7));
        assert_eq!(pci.port.read8(rp, 0x1a), 0x7);
        // Nothing there: all-ones; a bad window index too.
        assert_eq!(
            hwdom_ecam_access(&mut pci, 0, 0x7 << 15, 4, None),
            0xffff_ffff
        );
        assert_eq!(hwdom_ecam_access(&mut pci, 5, 0, 4, None), u64::MAX);
    }
}
