//! AER on the physical root ports (issue 7): the shell around `pci::aer`.
//!
//! When the hardware domain declares a segment enumerated, the hypervisor
//! takes AER on every root port of it that has the capability
//! ([`take_root_ports`]): the error path is enabled, the port's MSI / MSI-X
//! are hidden from the hardware domain, and the port's INTx (an SPI through
//! the host bridge's `interrupt-map`) is taken at EL2. When it fires,
//! [`service_line`] services every owned port on that line and routes each
//! error to the owner of its source: a guest's virtual AER registers and
//! virtual root port, or the hardware domain's overlay of the physical
//! ones. The virtual lines to raise are returned: they are raised outside
//! the PCI lock (the vGIC takes its own).
//!
//! Recovery: a fatal error freezes its source with the owner's deadline
//! (`phv,aer-deadline-ms`); the owner's own reset (SBR of its virtual root
//! port, FLR) ends it ([`owner_reset`], [`reset_done`]); past the deadline
//! [`deadlines_passed`] hands the reset to the hypervisor, which marks the
//! owner's view. A function that does not come back is quarantined and
//! surprise-removed from its guest's view.
//!
//! Generic over the config port so that it runs on the host against
//! `pci::sim`.

use alloc::vec::Vec;

use pci::aer::{AerConfig, AerEvent, AerReport, HwdomAer, RecoveryTracker, RootPortService};
use pci::vpci::Owner;
use pci::{Bdf, ConfigPort, Topology};

use crate::pci_host::PciState;

/// A root port whose AER the hypervisor owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedPort {
    pub bdf: Bdf,
    /// The SPI its INTx reaches (`None`: no route: its errors are only seen
    /// when another port's interrupt on the same service runs).
    pub pintid: Option<u32>,
}

/// The line of a guest's virtual root port (INTA through its
/// `interrupt-map`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLine {
    pub vm: u16,
    pub unit: usize,
    pub vintid: u32,
}

/// A virtual line to raise (VM index, virtual INTID).
pub type Raise = (u16, u32);

/// Virtual lines to raise, bounded (no allocation on the interrupt path).
#[derive(Clone, Copy, Debug, Default)]
pub struct Raises {
    items: [Raise; 8],
    len: usize,
}

impl Raises {
    pub fn push(&mut self, r: Raise) {
        if self.items[..self.len].contains(&r) {
            return;
        }
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = r;
            self.len += 1;
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = Raise> + '_ {
        self.items[..self.len].iter().copied()
    }
}

/// Events waiting to be logged: the interrupt path formats nothing; the
/// lines are written after the owner's EOI or by the PCI timer
/// ([`flush_log`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingLog {
    items: [Option<(AerEvent, Owner, pci::aer::RecoveryState)>; 8],
    len: usize,
    /// Events that found the queue full.
    dropped: u32,
}

/// The hypervisor's AER state.
#[derive(Debug)]
pub struct AerState {
    pub service: RootPortService,
    /// The hardware domain's view of the owned ports and its functions.
    pub hwdom: HwdomAer,
    pub recovery: RecoveryTracker,
    pub ports: Vec<OwnedPort>,
    /// The owned ports' config spaces as (ECAM window, offset >> 12).
    pub port_windows: Vec<(usize, u64)>,
    pub guest_lines: Vec<GuestLine>,
    /// The hardware domain's VM index.
    pub hwdom_vm: Option<u16>,
    /// Per VM index: its reset deadline after a fatal error (ns).
    pub deadlines: Vec<u64>,
    pub pending_log: PendingLog,
    /// The reports of the port being serviced (kept: no copy per interrupt).
    pub reports: pci::aer::Reports,
}

impl Default for AerState {
    fn default() -> Self {
        Self {
            service: RootPortService::new(AerConfig::DEFAULT),
            hwdom: HwdomAer::new(),
            recovery: RecoveryTracker::new(AerConfig::DEFAULT.reset_deadline_ns),
            ports: Vec::new(),
            port_windows: Vec::new(),
            guest_lines: Vec::new(),
            hwdom_vm: None,
            deadlines: Vec::new(),
            pending_log: PendingLog::default(),
            reports: pci::aer::Reports::new(),
        }
    }
}

impl AerState {
    /// Whether the hypervisor owns AER of any port (the hardware domain's
    /// config accesses then go through the overlay).
    pub fn active(&self) -> bool {
        !self.ports.is_empty()
    }

    /// Whether a hardware-domain access at `offset` of ECAM window
    /// `window` must go through the AER overlay: writes, extended config
    /// space, and the owned root ports' own registers.
    #[inline]
    pub fn filters_hwdom(&self, window: usize, offset: u64, write: bool) -> bool {
        if self.ports.is_empty() {
            return false;
        }
        write || offset & 0xfff >= 0x100 || self.port_windows.contains(&(window, offset >> 12))
    }

    /// The deadline of `owner`.
    pub fn deadline_of(&self, owner: Owner) -> u64 {
        let vm = match owner {
            Owner::Guest(vm) => Some(vm),
            Owner::Hwdom => self.hwdom_vm,
        };
        vm.and_then(|v| self.deadlines.get(usize::from(v)).copied())
            .unwrap_or(AerConfig::DEFAULT.reset_deadline_ns)
    }

    /// The line of the hardware domain's view of owned port `rp`.
    fn hwdom_line(&self, rp: Bdf) -> Option<Raise> {
        let vm = self.hwdom_vm?;
        let pintid = self.ports.iter().find(|p| p.bdf == rp)?.pintid?;
        Some((vm, pintid))
    }

    fn guest_line(&self, vm: u16, unit: usize) -> Option<Raise> {
        self.guest_lines
            .iter()
            .find(|l| l.vm == vm && l.unit == unit)
            .map(|l| (vm, l.vintid))
    }
}

/// Take AER on every root port of `segment` with the capability that is
/// not owned yet; `route(topology, bdf, pin)` finds the SPI of a pin.
/// Returns the ports taken.
pub fn take_root_ports<P: ConfigPort>(
    pci: &mut PciState<P>,
    segment: u16,
    route: impl Fn(&Topology, Bdf, u8) -> Option<u32>,
) -> Vec<OwnedPort> {
    let candidates: Vec<Bdf> = pci
        .topology
        .functions()
        .filter(|(b, f)| {
            b.segment == segment && matches!(f.kind, pci::FunctionKind::RootPort) && f.caps.aer != 0
        })
        .map(|(b, _)| b)
        .collect();
    let mut taken = Vec::new();
    for rp in candidates {
        if pci.aer.ports.iter().any(|p| p.bdf == rp) {
            continue;
        }
        if let Err(e) = pci.aer.service.enable(&mut pci.port, &pci.topology, rp) {
            log::warn!("AER of {rp} not taken: {e:?}");
            continue;
        }
        pci.aer.hwdom.own_port(&mut pci.port, rp);
        let pin = pci.port.read8(rp, pci::regs::INTERRUPT_PIN);
        let port = OwnedPort {
            bdf: rp,
            pintid: route(&pci.topology, rp, pin),
        };
        pci.aer.ports.push(port);
        if let Some((i, w)) = pci
            .windows
            .iter()
            .enumerate()
            .find(|(_, w)| w.offset_of(rp, 0).is_some())
            && let Some(off) = w.offset_of(rp, 0)
        {
            pci.aer.port_windows.push((i, off >> 12));
        }
        taken.push(port);
    }
    taken
}

/// Physical line `pintid` fired: service every owned port on it and route
/// the errors. Returns whether a port claimed it; `raises` gets the virtual
/// lines to raise.
pub fn service_line<P: ConfigPort>(
    pci: &mut PciState<P>,
    pintid: u32,
    now_ns: u64,
    raises: &mut Raises,
) -> bool {
    let mut claimed = false;
    for i in 0..pci.aer.ports.len() {
        let Some(port) = pci.aer.ports.get(i).copied() else {
            break;
        };
        if port.pintid != Some(pintid) {
            continue;
        }
        let aer = &mut pci.aer;
        if aer
            .service
            .service_into(
                &pci.topology,
                &mut pci.port,
                port.bdf,
                now_ns,
                &mut aer.reports,
            )
            .is_err()
        {
            continue;
        }
        let root_status = aer.reports.root_status;
        if root_status == u32::MAX || root_status & 0xf == 0 {
            continue;
        }
        claimed = true;
        for k in 0..pci.aer.reports.len() {
            let Some(report) = pci.aer.reports.get(k).copied() else {
                break;
            };
            match report {
                AerReport::Event(ref event) => deliver(pci, event, raises),
                AerReport::StormMasked {
                    source,
                    severity,
                    masked,
                    ..
                } => log::warn!(
                    "AER: {severity:?} error storm of {source}: status bits {masked:#x} masked until its next reset"
                ),
                AerReport::SourceNotFound {
                    root_port,
                    correctable,
                    source_id,
                    ..
                } => log::warn!(
                    "AER: {root_port} reported {} errors (source id {source_id:#06x}) but no function shows one",
                    if correctable {
                        "correctable"
                    } else {
                        "uncorrectable"
                    }
                ),
            }
        }
    }
    claimed
}

/// Route one error to the owner of its source and track its recovery.
pub fn deliver<P: ConfigPort>(pci: &mut PciState<P>, event: &AerEvent, raises: &mut Raises) {
    let owner = pci.ownership.owner(event.source);
    let raise = match owner {
        Owner::Guest(vm) => pci
            .guests
            .get_mut(vm)
            .and_then(|bus| bus.aer_deliver(event))
            .filter(|d| d.interrupt)
            .and_then(|d| pci.aer.guest_line(vm, d.unit)),
        Owner::Hwdom => pci
            .aer
            .hwdom
            .deliver(&pci.topology, event)
            .filter(|&(_, raise)| raise)
            .and_then(|(rp, _)| pci.aer.hwdom_line(rp)),
    };
    if let Some(r) = raise {
        raises.push(r);
    }
    let deadline = pci.aer.deadline_of(owner);
    let state = pci.aer.recovery.on_event_within(event, owner, deadline);
    let q = &mut pci.aer.pending_log;
    match q.items.get_mut(q.len) {
        Some(slot) => {
            *slot = Some((*event, owner, state));
            q.len += 1;
        }
        None => q.dropped = q.dropped.saturating_add(1),
    }
}

/// Write the log lines of the events delivered since the last call.
pub fn flush_log<P>(pci: &mut PciState<P>) {
    if pci.aer.pending_log.len == 0 && pci.aer.pending_log.dropped == 0 {
        return;
    }
    let q = core::mem::take(&mut pci.aer.pending_log);
    for (event, owner, state) in q.items.iter().take(q.len).flatten() {
        log::warn!(
            "AER: {:?} error of {} (status {:#x}) for {:?}: {:?}",
            event.severity,
            event.source,
            event.status(),
            owner,
            state
        );
    }
    if q.dropped > 0 {
        log::warn!("AER: {} more events not logged", q.dropped);
    }
}

/// After an EOI of `vintid` by `vm`, or a write of its virtual root ports:
/// the AER lines of `vm` on `vintid` (any, if `None`) that still assert.
pub fn resample<P>(pci: &mut PciState<P>, vm: u16, vintid: Option<u32>, raises: &mut Raises) {
    let on_line = |l: u32| vintid.is_none_or(|v| v == l);
    if pci.aer.hwdom_vm == Some(vm) {
        for p in &pci.aer.ports {
            if let Some(l) = p.pintid
                && on_line(l)
                && pci.aer.hwdom.interrupt_asserted(p.bdf)
            {
                raises.push((vm, l));
            }
        }
        return;
    }
    let Some(bus) = pci.guests.get_mut(vm) else {
        return;
    };
    for l in pci.aer.guest_lines.iter().filter(|l| l.vm == vm) {
        if on_line(l.vintid) && bus.aer_interrupt(l.unit) {
            raises.push((vm, l.vintid));
        }
    }
}

/// The owner started a reset covering `functions`: their frozen recoveries
/// are the owner's now.
pub fn owner_reset<P>(pci: &mut PciState<P>, functions: &[Bdf]) {
    let n = pci.aer.recovery.on_owner_reset(functions);
    if n > 0 {
        log::info!("AER: the owner resets {functions:?} to recover");
    }
}

/// A reset covering `scope` ended; `gone` did not come back. Ends the
/// recoveries it covers: restores the storm limiter's masks of those that
/// answered, surprise-removes the others from their guest's view.
pub fn reset_done<P: ConfigPort>(pci: &mut PciState<P>, scope: &[Bdf], gone: &[Bdf]) {
    let ready: Vec<Bdf> = scope
        .iter()
        .copied()
        .filter(|b| !gone.contains(b))
        .collect();
    for &b in &ready {
        pci.aer
            .service
            .unmask_storm(&mut pci.port, &pci.topology, b);
    }
    for o in pci.aer.recovery.on_reset_done(&ready, gone) {
        let who = if o.by_hypervisor {
            "the hypervisor"
        } else {
            "its owner"
        };
        log::info!(
            "AER: {} {:?} after the reset by {who} ({:?})",
            o.source,
            o.state,
            o.owner
        );
        if o.state == pci::aer::RecoveryState::Quarantined
            && let Owner::Guest(vm) = o.owner
            && let Some(bus) = pci.guests.get_mut(vm)
        {
            bus.aer_surprise_remove(o.source);
        }
    }
}

/// A recovery the hypervisor takes over: the owner did not reset in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    pub owner: Owner,
    pub source: Bdf,
    /// What the reset must cover (the source first).
    pub functions: Vec<Bdf>,
}

/// At `now_ns`: the recoveries whose deadline passed. Their owners' views
/// are marked (the virtual root port says the hypervisor reset it); the
/// caller starts the resets and raises `raises`.
pub fn deadlines_passed<P>(
    pci: &mut PciState<P>,
    now_ns: u64,
    raises: &mut Raises,
) -> Vec<Takeover> {
    let mut out = Vec::new();
    while let Some(need) = pci.aer.recovery.poll(now_ns) {
        let functions =
            pci::aer::recovery_functions(&pci.topology, |b| pci.ownership.owner(b), need.source);
        match need.owner {
            Owner::Guest(vm) => {
                if let Some(bus) = pci.guests.get_mut(vm)
                    && bus.aer_mark_hypervisor_reset(&need.event)
                    && let Some(unit) = bus.unit_of(need.source)
                    && bus.aer_interrupt(unit)
                    && let Some(r) = pci.aer.guest_line(vm, unit)
                {
                    raises.push(r);
                }
            }
            Owner::Hwdom => {
                if let Some(rp) = pci::aer::root_port_of(&pci.topology, need.source) {
                    pci.aer.hwdom.mark_hypervisor_reset(rp);
                    if pci.aer.hwdom.interrupt_asserted(rp)
                        && let Some(r) = pci.aer.hwdom_line(rp)
                    {
                        raises.push(r);
                    }
                }
            }
        }
        log::warn!(
            "AER: {:?} did not reset {} within its deadline: the hypervisor resets {functions:?}",
            need.owner,
            need.source
        );
        out.push(Takeover {
            owner: need.owner,
            source: need.source,
            functions,
        });
    }
    out
}
