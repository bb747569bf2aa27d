//! Resets the hypervisor performs, driven by its timer: a guest's Secondary
//! Bus Reset of its virtual root port (the narrowest real reset that covers
//! its functions), a guest's FLR, and the reset of every function when its
//! guest stops, before the hardware domain sees it again (never rely on
//! the guest to reset what it leaves). The state machines are `pci::reset_engine`'s; this
//! module keeps the running jobs, answers masked config reads while they run,
//! and says what to do when they end. Generic over the ports, so it is
//! host-tested against `pci::sim` with a fake clock.

use crate::pci_host::PciState;
use alloc::vec::Vec;
use pci::reset_engine::{
    EngineError, Hw, QuarantineReason, ResetJob, ResetOutcome, SavedState, Step, narrowest_reset,
};
use pci::vpci::MemoryPort;
use pci::{Bdf, ConfigPort, ResetAction, ResetMethod};

/// What happens when a job ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterReset {
    /// The owner asked for it: nothing more.
    Nothing,
    /// Guest `vm` stopped: once its last reset ends, its functions go back
    /// to the hardware domain.
    Release { vm: u16 },
    /// Guest `vm` was given its functions: once its last reset ends, it
    /// starts with them.
    Start { vm: u16 },
    /// Guest `vm` restarts: once its last reset ends, it boots again.
    Restart { vm: u16 },
}

/// A reset in progress.
#[derive(Debug)]
pub struct RunningReset {
    pub job: ResetJob,
    /// When the job wants to be stepped again (ns).
    pub next_ns: u64,
    pub then: AfterReset,
    /// The request it belongs to ([`new_request`]): the resets one request
    /// needs (a guest's SBR below a switch: one per downstream port) end
    /// together for the guest.
    pub request: u32,
    /// The job ended while others of its request still run: how it ended,
    /// reported when the last one ends. Its functions are back (restored,
    /// unmasked for the hardware and the MSI-X writes) but the guest still
    /// sees them resetting.
    pub held: Option<Finished>,
}

impl RunningReset {
    /// Whether the guest that owns `bdf` sees it as still resetting: the
    /// job covers it, running or held. One virtual reset (an SBR of a
    /// virtual root port) ends for all its functions at once, as a real
    /// one does: a driver that waits for the first function only (Linux
    /// after a bus reset) must not reprogram the others while their own
    /// physical reset runs and drops the writes.
    pub fn hides(&self, bdf: Bdf) -> bool {
        self.job.scope().binary_search(&bdf).is_ok()
    }
}

/// A new request id for [`start`]: the resets started with it end together.
pub fn new_request<P>(pci: &mut PciState<P>) -> u32 {
    pci.reset_requests = pci.reset_requests.wrapping_add(1);
    pci.reset_requests
}

/// A job that ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub action: ResetAction,
    pub outcome: ResetOutcome,
    pub then: AfterReset,
    /// From the reset's end (SBR deassert, FLR initiated) to the first
    /// function answering again, in ns.
    pub ready_after_ns: Option<u64>,
}

/// Start `action` at `now_ns`: capture the state of everything it touches,
/// then begin. If a running reset already covers the same functions, that
/// one stands for it (and takes over `then` if it had nothing to do after);
/// otherwise an overlapping reset is refused. `request` groups the resets
/// that end together ([`new_request`]).
pub fn start<P: ConfigPort, M: MemoryPort>(
    pci: &mut PciState<P>,
    mem: &mut M,
    action: ResetAction,
    now_ns: u64,
    then: AfterReset,
    request: u32,
) -> Result<(), EngineError> {
    let scope = pci.topology.action_scope(action);
    if let Some(running) = pci
        .resets
        .iter_mut()
        .find(|r| r.held.is_none() && r.job.overlaps(&scope))
    {
        let covers = scope.iter().all(|b| running.job.masks(*b));
        if covers && (running.then == AfterReset::Nothing || running.then == then) {
            running.then = then;
            return Ok(());
        }
        let bdf = scope
            .iter()
            .copied()
            .find(|b| running.job.masks(*b))
            .or(scope.first().copied())
            .unwrap_or(Bdf::new(0, 0, 0, 0));
        return Err(EngineError::Busy { bdf });
    }
    let mut hw = Hw {
        config: &mut pci.port,
        memory: mem,
    };
    let saved = SavedState::capture(&pci.topology, &mut hw, &scope);
    let (job, step) = ResetJob::start(&pci.topology, &mut hw, action, now_ns, saved)?;
    let next_ns = match step {
        Step::Wait { until_ns } => until_ns,
        Step::Done { .. } => now_ns,
    };
    pci.resets.push(RunningReset {
        job,
        next_ns,
        then,
        request,
        held: None,
    });
    Ok(())
}

/// Step every job that is due at `now_ns`. Returns the jobs that ended (all
/// of a request's at once, when its last one ends) and the next deadline of
/// those still running.
pub fn step<P: ConfigPort, M: MemoryPort>(
    pci: &mut PciState<P>,
    mem: &mut M,
    now_ns: u64,
) -> (Vec<Finished>, Option<u64>) {
    let mut finished = Vec::new();
    let PciState {
        port,
        topology,
        resets,
        quarantine,
        guests,
        intx,
        ..
    } = pci;
    let mut hw = Hw {
        config: port,
        memory: mem,
    };
    // The MSI-X tables come back as the hypervisor last wrote them for the
    // guests (a reset a guest asked for cleared that record with its
    // virtual state); functions without such a record get the table the
    // engine captured before the reset.
    let shadow = |bdf: Bdf, entry: u16| {
        guests
            .buses()
            .find_map(|bus| bus.msix_programmed(bdf, entry))
    };
    let mut i = 0;
    while i < resets.len() {
        let r = &mut resets[i];
        if r.held.is_some() || r.next_ns > now_ns {
            i += 1;
            continue;
        }
        // Steps with a deadline already passed are taken at once.
        let mut step = r.job.step(topology, &mut hw, &shadow, now_ns);
        for _ in 0..8 {
            match step {
                Step::Wait { until_ns } if until_ns <= now_ns => {
                    step = r.job.step(topology, &mut hw, &shadow, now_ns)
                }
                _ => break,
            }
        }
        match step {
            Step::Wait { until_ns } => {
                r.next_ns = until_ns;
                i += 1;
            }
            Step::Done { outcome } => {
                // The engine restored Command as it saved it: the INTx
                // masks follow the owners' virtual Command again.
                crate::intx::after_reset(intx, hw.config, r.job.scope(), &|vm, physical| {
                    guests.intx_disabled(vm, physical)
                });
                if let ResetOutcome::TimedOut(gone) = &outcome {
                    for &b in gone {
                        if quarantine.add(b, QuarantineReason::NotReady) {
                            log::error!("{b} did not come back after its reset: quarantined");
                        }
                    }
                }
                let ready_after_ns = r
                    .job
                    .first_ready_ns()
                    .zip(r.job.reset_exit_ns())
                    .map(|(ready, exit)| ready.saturating_sub(exit));
                r.held = Some(Finished {
                    action: r.job.action(),
                    outcome,
                    then: r.then,
                    ready_after_ns,
                });
                i += 1;
            }
        }
    }
    // Requests whose every job ended: report them, in the order started.
    let mut k = 0;
    while k < resets.len() {
        let request = resets[k].request;
        let ended = resets[k].held.is_some()
            && resets
                .iter()
                .all(|r| r.request != request || r.held.is_some());
        if !ended {
            k += 1;
            continue;
        }
        let mut j = k;
        while j < resets.len() {
            if resets[j].request == request {
                finished.extend(resets.remove(j).held);
            } else {
                j += 1;
            }
        }
    }
    let next = resets
        .iter()
        .filter(|r| r.held.is_none())
        .map(|r| r.next_ns)
        .min();
    (finished, next)
}

/// Quarantine every function of `segment` that no reset method can reset
/// (its method list is empty): it is never handed to a guest (the
/// assignment checks the quarantine) and stays with the hardware domain.
/// Bridges are never handed out and are skipped. Returns the functions
/// newly quarantined, in address order, for the caller to log.
pub fn quarantine_unresettable<P>(pci: &mut PciState<P>, segment: u16) -> Vec<Bdf> {
    let PciState {
        topology,
        quarantine,
        ..
    } = pci;
    let mut added = Vec::new();
    for (bdf, f) in topology.functions() {
        if bdf.segment != segment || f.kind.is_bridge() {
            continue;
        }
        let none = topology
            .reset_methods(bdf)
            .map_or(true, |m| m.as_slice().is_empty());
        if none && quarantine.add(bdf, QuarantineReason::NoResetMethod) {
            added.push(bdf);
        }
    }
    added
}

/// The name of a quarantine reason in logs and the PCI report.
pub fn quarantine_name(reason: QuarantineReason) -> &'static str {
    match reason {
        QuarantineReason::NoResetMethod => "no-reset-method",
        QuarantineReason::NotReady => "not-ready",
    }
}

/// What an owner's config read of `bdf` returns while a reset covers it
/// (`None`: not masked, access the function).
pub fn masked_read<P>(pci: &PciState<P>, bdf: Bdf, reg: u16, width: u16) -> Option<u32> {
    pci.resets
        .iter()
        .find(|r| r.job.masks(bdf))
        .map(|_| pci::reset_engine::masked_read(reg, width as u8, false))
}

/// Whether writes to `bdf` are dropped because a running reset covers it
/// (the hardware's view: [`RunningReset::hides`] is its owner's).
pub fn masks<P>(pci: &PciState<P>, bdf: Bdf) -> bool {
    masked_by(&pci.resets, bdf)
}

/// [`masks`] for a caller that holds `resets` borrowed apart from the rest
/// of the state.
pub fn masked_by(resets: &[RunningReset], bdf: Bdf) -> bool {
    resets.iter().any(|r| r.job.masks(bdf))
}

/// The resets that cover `functions` (all of one guest) and touch nothing
/// the guest does not own.
pub fn for_guest<P>(pci: &PciState<P>, functions: &[Bdf]) -> Result<Vec<ResetAction>, EngineError> {
    narrowest_reset(&pci.topology, |b| pci.ownership.owner(b), functions)
}

/// The real reset behind a guest's FLR of `bdf`: its FLR (or AF FLR) when
/// its method order has one, else the narrowest reset that covers it and
/// touches only the guest's functions. The guest has already seen its
/// virtual function reset, so the device must be reset too: an FLR is never
/// dropped because the configured order leaves FLR out.
pub fn for_guest_flr<P>(pci: &PciState<P>, bdf: Bdf) -> Result<ResetAction, EngineError> {
    if let Some(action) = flr_of(pci, bdf) {
        return Ok(action);
    }
    let actions = for_guest(pci, &[bdf])?;
    match actions[..] {
        [action] => Ok(action),
        _ => Err(EngineError::Reset(pci::reset::ResetError::EmptySet)),
    }
}

/// The reset for a guest's FLR of `bdf`: its FLR (or AF FLR), if it has one
/// that touches only the owner's functions (a PF's FLR also resets its VFs).
pub fn flr_of<P>(pci: &PciState<P>, bdf: Bdf) -> Option<ResetAction> {
    let methods = pci.topology.reset_methods(bdf).ok()?;
    let owner = pci.ownership.owner(bdf);
    methods
        .as_slice()
        .iter()
        .copied()
        .filter(|m| matches!(m, ResetMethod::Flr | ResetMethod::AfFlr))
        .map(|method| ResetAction::Function { bdf, method })
        .find(|&a| {
            pci::reset_engine::check_reset(&pci.topology, a, owner, |b| pci.ownership.owner(b))
                .is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::EcamWindow;
    use pci::sim::{Fabric, Spec, devfn};
    use pci::vpci::Owner;

    const MS: u64 = 1_000_000;

    /// Two root ports with an nvme each; the second nvme belongs to guest 1.
    fn state() -> (PciState<Fabric>, Vec<Bdf>) {
        let mut fabric = Fabric::new().with_root_complex(
            0,
            0,
            &[
                (
                    devfn(1, 0),
                    Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
                ),
                (
                    devfn(2, 0),
                    Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
                ),
            ],
        );
        let found = fabric.enumerate();
        let window = EcamWindow {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
        };
        let mut pci = PciState::new(std::vec![window], fabric);
        for b in &found {
            pci.topology.report_add(*b, &mut pci.port).unwrap();
        }
        (pci, found)
    }

    /// The sim's BAR memory is part of the fabric; a separate memory port
    /// only has to exist for the MSI-X restore of functions without a table.
    struct NoMemory;
    impl MemoryPort for NoMemory {
        fn read(&mut self, _: u64, _: u16) -> u64 {
            u64::MAX
        }
        fn write(&mut self, _: u64, _: u16, _: u64) {}
    }

    #[test]
    fn a_guest_owning_everything_below_its_port_gets_a_real_sbr_that_ends_at_the_floor() {
        let (mut pci, found) = state();
        let nvme = *found.iter().find(|b| b.bus == 2).unwrap();
        pci.ownership
            .assign(&mut pci.topology, &mut pci.port, 1, &[nvme], false)
            .unwrap();
        assert_eq!(pci.ownership.owner(nvme), Owner::Guest(1));
        let actions = for_guest(&pci, &[nvme]).unwrap();
        assert_eq!(actions.len(), 1);
        assert!(matches!(
            actions[0],
            ResetAction::SecondaryBus { .. } | ResetAction::Slot { .. }
        ));
        // The guest's BAR and Command as they were.
        let bar0 = pci.port.read32(nvme, 0x10);
        let cmd = pci.port.read16(nvme, 0x04);
        start(
            &mut pci,
            &mut NoMemory,
            actions[0],
            0,
            AfterReset::Release { vm: 1 },
            1,
        )
        .unwrap();
        assert!(masks(&pci, nvme));
        assert_eq!(masked_read(&pci, nvme, 0, 4), Some(u32::MAX));
        assert_eq!(masked_read(&pci, found[0], 0, 4), None, "not in the scope");
        // Step as a timer would: at each deadline.
        let mut now = 0;
        let mut done = Vec::new();
        for _ in 0..64 {
            let (f, next) = step(&mut pci, &mut NoMemory, now);
            done.extend(f);
            match next {
                Some(n) => now = n.max(now),
                None => break,
            }
        }
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, ResetOutcome::Ready);
        assert_eq!(done[0].then, AfterReset::Release { vm: 1 });
        // Ready at the first poll 100 ms after deassert (1 ms Trst before).
        let after = done[0].ready_after_ns.unwrap();
        assert!((100 * MS..=101 * MS).contains(&after), "{after}");
        assert!(!masks(&pci, nvme));
        assert_eq!(pci.port.read32(nvme, 0x10), bar0, "BAR restored");
        assert_eq!(pci.port.read16(nvme, 0x04), cmd, "Command restored");
    }

    #[test]
    fn functions_no_method_can_reset_are_quarantined_at_enumeration() {
        // A root port with an nvme, and a device on the root bus with no
        // FLR, no PM and no bridge above it (like QEMU's pci-testdev).
        let mut fabric = Fabric::new().with_root_complex(
            0,
            0,
            &[
                (
                    devfn(1, 0),
                    Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
                ),
                (devfn(5, 0), Spec::conventional(0x1b36, 0x0005).pm(None)),
            ],
        );
        let found = fabric.enumerate();
        let window = EcamWindow {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
        };
        let mut pci = PciState::new(std::vec![window], fabric);
        for b in &found {
            pci.topology.report_add(*b, &mut pci.port).unwrap();
        }
        let testdev = Bdf::new(0, 0, 5, 0);
        // The root port has no method either, but bridges are never given.
        assert_eq!(quarantine_unresettable(&mut pci, 0), std::vec![testdev]);
        assert_eq!(
            pci.quarantine.reason(testdev),
            Some(QuarantineReason::NoResetMethod)
        );
        assert_eq!(
            quarantine_name(QuarantineReason::NoResetMethod),
            "no-reset-method"
        );
        // Reported once: a second enumeration adds nothing new.
        assert!(quarantine_unresettable(&mut pci, 0).is_empty());
        assert!(quarantine_unresettable(&mut pci, 1).is_empty());
        assert_eq!(pci.quarantine.len(), 1);
    }

    #[test]
    fn flr_is_chosen_for_a_guests_flr_and_overlapping_resets_are_refused() {
        let (mut pci, found) = state();
        let nvme = *found.iter().find(|b| b.bus == 1).unwrap();
        let flr = flr_of(&pci, nvme).unwrap();
        assert_eq!(
            flr,
            ResetAction::Function {
                bdf: nvme,
                method: ResetMethod::Flr
            }
        );
        start(&mut pci, &mut NoMemory, flr, 0, AfterReset::Nothing, 1).unwrap();
        // The same reset again: the running one stands for it and takes
        // over what to do after.
        let release = AfterReset::Release { vm: 1 };
        start(&mut pci, &mut NoMemory, flr, 0, release, 2).unwrap();
        assert_eq!(pci.resets.len(), 1);
        assert_eq!(pci.resets[0].then, release);
        // A wider reset overlapping it is refused.
        let sbr = ResetAction::SecondaryBus { bridge: found[0] };
        assert!(start(&mut pci, &mut NoMemory, sbr, 0, AfterReset::Nothing, 3).is_err());
        assert_eq!(flr_of(&pci, found[0]), None, "a root port has no FLR");
    }

    /// Both nvmes reset in one request, the second 30 ms later: the first
    /// is back for the hardware when its own reset ends, but its guest sees
    /// it resetting until the second ends too, and both are reported then.
    #[test]
    fn the_resets_of_one_request_end_together_for_the_guest() {
        let (mut pci, found) = state();
        let nvmes: Vec<Bdf> = found.iter().copied().filter(|b| b.bus != 0).collect();
        assert_eq!(nvmes.len(), 2);
        let request = new_request(&mut pci);
        let then = AfterReset::Nothing;
        for (k, &b) in nvmes.iter().enumerate() {
            let action = flr_of(&pci, b).unwrap();
            start(
                &mut pci,
                &mut NoMemory,
                action,
                30 * MS * k as u64,
                then,
                request,
            )
            .unwrap();
        }
        let hidden = |pci: &PciState<Fabric>, b: Bdf| pci.resets.iter().any(|r| r.hides(b));
        let mut now = 0;
        let mut done = Vec::new();
        let mut seen_first_back_but_hidden = false;
        for _ in 0..256 {
            let (f, next) = step(&mut pci, &mut NoMemory, now);
            done.extend(f);
            if !masks(&pci, nvmes[0]) && masks(&pci, nvmes[1]) {
                assert!(
                    hidden(&pci, nvmes[0]),
                    "the first shown before the second ended"
                );
                assert!(done.is_empty(), "reported before the request ended");
                seen_first_back_but_hidden = true;
            }
            match next {
                Some(n) => now = n.max(now),
                None => break,
            }
        }
        assert!(seen_first_back_but_hidden);
        assert_eq!(done.len(), 2);
        assert!(pci.resets.is_empty());
        assert!(!hidden(&pci, nvmes[0]) && !hidden(&pci, nvmes[1]));
    }

    #[test]
    fn a_guests_flr_is_a_real_reset_whatever_the_method_order() {
        let (mut pci, found) = state();
        let nvme = *found.iter().find(|b| b.bus == 1).unwrap();
        let flr = ResetAction::Function {
            bdf: nvme,
            method: ResetMethod::Flr,
        };
        assert_eq!(for_guest_flr(&pci, nvme), Ok(flr));
        // Its configuration orders "bus" only: the FLR becomes the bus
        // reset of its own root port, not nothing.
        pci.topology
            .set_reset_methods(nvme, &[ResetMethod::Bus])
            .unwrap();
        assert_eq!(flr_of(&pci, nvme), None);
        let wider = for_guest_flr(&pci, nvme).unwrap();
        assert!(pci.topology.action_scope(wider).contains(&nvme));
        assert!(matches!(
            wider,
            ResetAction::SecondaryBus { .. } | ResetAction::Slot { .. }
        ));
    }
}
