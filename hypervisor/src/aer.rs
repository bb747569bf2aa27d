//! AER on the physical root ports: the shell around `pci::aer`.
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
//! (`phv,aer-deadline-ms`); the owner's own link reset (SBR of its virtual
//! root port; an FLR alone is not one) ends it ([`owner_reset`],
//! [`reset_done`]); past the deadline
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
    items: [Option<LogEntry>; 8],
    len: usize,
    /// Events that found the queue full.
    dropped: u32,
}

/// What one queued log line says (not the whole event: queueing it copies
/// little).
#[derive(Clone, Copy, Debug)]
enum LogEntry {
    Event {
        source: Bdf,
        severity: pci::aer::Severity,
        status: u32,
        owner: Owner,
        state: pci::aer::RecoveryState,
    },
    Storm {
        source: Bdf,
        severity: pci::aer::Severity,
        masked: u32,
    },
    SourceNotFound {
        root_port: Bdf,
        correctable: bool,
        source_id: u16,
    },
    /// Not AER: a hardware-domain function held INTx asserted on a line
    /// taken for a guest (the same queue serves the PCI interrupt path).
    IntxSilenced { function: Bdf, pintid: u32 },
    /// Not AER: a physical PCI line nobody claimed fired too often in a
    /// row and is disabled for a while ([`crate::intx::LineGuard`]).
    LineHeld { pintid: u32, hold_ms: u64 },
}

/// Queue the line for a physical line held by [`crate::intx::LineGuard`].
pub fn queue_line_held<P>(pci: &mut PciState<P>, pintid: u32, hold_ms: u64) {
    pci.aer
        .pending_log
        .push(LogEntry::LineHeld { pintid, hold_ms });
}

/// Queue the line for a hardware-domain function masked on a guest's INTx
/// line (from the interrupt path, which formats nothing).
pub fn queue_intx_silenced<P>(pci: &mut PciState<P>, function: Bdf, pintid: u32) {
    pci.aer
        .pending_log
        .push(LogEntry::IntxSilenced { function, pintid });
}

impl PendingLog {
    fn push(&mut self, entry: LogEntry) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(entry);
                self.len += 1;
            }
            None => self.dropped = self.dropped.saturating_add(1),
        }
    }
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
        !self.port_windows.is_empty()
    }

    /// Whether a hardware-domain access at `offset` of ECAM window
    /// `window` must go through the AER overlay: writes, extended config
    /// space, and the owned root ports' own registers.
    #[inline]
    pub fn filters_hwdom(&self, window: usize, offset: u64, write: bool) -> bool {
        if self.port_windows.is_empty() {
            return false;
        }
        write || offset & 0xfff >= 0x100 || self.port_windows.contains(&(window, offset >> 12))
    }

    /// The line of the hardware domain's view of owned port `rp`.
    fn hwdom_line(&self, rp: Bdf) -> Option<Raise> {
        hwdom_line(self.hwdom_vm, &self.ports, rp)
    }

    fn guest_line(&self, vm: u16, unit: usize) -> Option<Raise> {
        guest_line(&self.guest_lines, vm, unit)
    }
}

/// The reset deadline of `owner` (its VM config's).
fn deadline_of(hwdom_vm: Option<u16>, deadlines: &[u64], owner: Owner) -> u64 {
    let vm = match owner {
        Owner::Guest(vm) => Some(vm),
        Owner::Hwdom => hwdom_vm,
    };
    vm.and_then(|v| deadlines.get(usize::from(v)).copied())
        .unwrap_or(AerConfig::DEFAULT.reset_deadline_ns)
}

fn hwdom_line(hwdom_vm: Option<u16>, ports: &[OwnedPort], rp: Bdf) -> Option<Raise> {
    let vm = hwdom_vm?;
    let pintid = ports.iter().find(|p| p.bdf == rp)?.pintid?;
    Some((vm, pintid))
}

fn guest_line(lines: &[GuestLine], vm: u16, unit: usize) -> Option<Raise> {
    lines
        .iter()
        .find(|l| l.vm == vm && l.unit == unit)
        .map(|l| (vm, l.vintid))
}

/// What routing an event uses: the PCI state but the config port and the
/// service's reports, borrowed apart so that the reports are read in
/// place (no copy per event).
struct Router<'a> {
    topology: &'a Topology,
    ownership: &'a pci::vpci::Ownership,
    guests: &'a mut crate::pci_host::GuestBuses,
    hwdom: &'a mut HwdomAer,
    recovery: &'a mut RecoveryTracker,
    ports: &'a [OwnedPort],
    guest_lines: &'a [GuestLine],
    hwdom_vm: Option<u16>,
    deadlines: &'a [u64],
    pending_log: &'a mut PendingLog,
}

/// Splits `pci` into the reports of the last service and a [`Router`].
fn router<P>(pci: &mut PciState<P>) -> (&pci::aer::Reports, Router<'_>) {
    let PciState {
        topology,
        ownership,
        guests,
        aer,
        ..
    } = pci;
    let AerState {
        reports,
        hwdom,
        recovery,
        ports,
        guest_lines,
        hwdom_vm,
        deadlines,
        pending_log,
        ..
    } = aer;
    (
        reports,
        Router {
            topology,
            ownership,
            guests,
            hwdom,
            recovery,
            ports,
            guest_lines,
            hwdom_vm: *hwdom_vm,
            deadlines,
            pending_log,
        },
    )
}

impl Router<'_> {
    /// Route one error to the owner of its source and track its recovery.
    fn deliver(&mut self, event: &AerEvent, raises: &mut Raises) {
        let owner = self.ownership.owner(event.source);
        let raise = match owner {
            Owner::Guest(vm) => self
                .guests
                .get_mut(vm)
                .and_then(|bus| bus.aer_deliver(event))
                .filter(|d| d.interrupt)
                .and_then(|d| guest_line(self.guest_lines, vm, d.unit)),
            Owner::Hwdom => self
                .hwdom
                .deliver(self.topology, event)
                .filter(|&(_, raise)| raise)
                .and_then(|(rp, _)| hwdom_line(self.hwdom_vm, self.ports, rp)),
        };
        if let Some(r) = raise {
            raises.push(r);
        }
        let deadline = deadline_of(self.hwdom_vm, self.deadlines, owner);
        let state = self.recovery.on_event_within(event, owner, deadline);
        self.pending_log.push(LogEntry::Event {
            source: event.source,
            severity: event.severity,
            status: event.status(),
            owner,
            state,
        });
    }
}

/// Whether the hypervisor takes AER of `f`: a root port with the capability.
fn takes_aer(f: &pci::Function) -> bool {
    matches!(f.kind, pci::FunctionKind::RootPort) && f.caps.aer != 0
}

/// The hardware domain reported `bdf`: a root port with AER is the
/// hypervisor's from now on, before any driver of the hardware domain binds
/// to it: its MSI / MSI-X are disabled and hidden from the hardware domain
/// (its AER interrupt must stay the INTx the hypervisor takes).
pub fn reported<P: ConfigPort>(pci: &mut PciState<P>, bdf: Bdf) {
    if !pci.topology.function(bdf).is_some_and(takes_aer) || pci.aer.hwdom.owns_port(bdf) {
        return;
    }
    pci.aer.hwdom.own_port(&mut pci.port, bdf);
    if let Some((i, off)) = pci
        .windows
        .iter()
        .enumerate()
        .find_map(|(i, w)| Some((i, w.offset_of(bdf, 0)?)))
    {
        pci.aer.port_windows.push((i, off >> 12));
    }
}

/// The hardware domain removed `gone` (a function and its subtree): forget
/// their AER state (an owned root port among them is no longer serviced).
pub fn removed<P>(pci: &mut PciState<P>, gone: &[Bdf]) {
    let aer = &mut pci.aer;
    for &b in gone {
        aer.hwdom.forget(b);
        aer.service.forget(b);
        aer.recovery.forget(b);
    }
    aer.ports.retain(|p| !gone.contains(&p.bdf));
    let windows = &pci.windows;
    aer.port_windows.retain(|&(i, key)| {
        !gone.iter().any(|&b| {
            windows
                .get(i)
                .and_then(|w| w.offset_of(b, 0))
                .is_some_and(|off| off >> 12 == key)
        })
    });
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
        .filter(|(b, f)| b.segment == segment && takes_aer(f))
        .map(|(b, _)| b)
        .collect();
    let mut taken = Vec::new();
    for rp in candidates {
        if pci.aer.ports.iter().any(|p| p.bdf == rp) {
            continue;
        }
        reported(pci, rp);
        if let Err(e) = pci.aer.service.enable(&mut pci.port, &pci.topology, rp) {
            log::warn!("AER of {rp} not taken: {e:?}");
            continue;
        }
        let pin = pci.port.read8(rp, pci::regs::INTERRUPT_PIN);
        let port = OwnedPort {
            bdf: rp,
            pintid: route(&pci.topology, rp, pin),
        };
        pci.aer.ports.push(port);
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
        let (reports, mut router) = router(pci);
        for report in reports.iter() {
            match *report {
                AerReport::Event(ref event) => router.deliver(event, raises),
                AerReport::StormMasked {
                    source,
                    severity,
                    masked,
                    ..
                } => router.pending_log.push(LogEntry::Storm {
                    source,
                    severity,
                    masked,
                }),
                AerReport::SourceNotFound {
                    root_port,
                    correctable,
                    source_id,
                    ..
                } => router.pending_log.push(LogEntry::SourceNotFound {
                    root_port,
                    correctable,
                    source_id,
                }),
            }
        }
    }
    claimed
}

/// Route one error to the owner of its source and track its recovery.
pub fn deliver<P: ConfigPort>(pci: &mut PciState<P>, event: &AerEvent, raises: &mut Raises) {
    router(pci).1.deliver(event, raises);
}

/// Write the log lines of the events delivered since the last call.
pub fn flush_log<P>(pci: &mut PciState<P>) {
    if pci.aer.pending_log.len == 0 && pci.aer.pending_log.dropped == 0 {
        return;
    }
    let q = core::mem::take(&mut pci.aer.pending_log);
    for e in q.items.iter().take(q.len).flatten() {
        match *e {
            LogEntry::Event {
                source,
                severity,
                status,
                owner,
                state,
            } => log::warn!(
                "AER: {severity:?} error of {source} (status {status:#x}) for {owner:?}: {state:?}"
            ),
            LogEntry::Storm {
                source,
                severity,
                masked,
            } => log::warn!(
                "AER: {severity:?} error storm of {source}: status bits {masked:#x} masked until its next reset"
            ),
            LogEntry::SourceNotFound {
                root_port,
                correctable,
                source_id,
            } => log::warn!(
                "AER: {root_port} reported {} errors (source id {source_id:#06x}) but no function shows one",
                if correctable {
                    "correctable"
                } else {
                    "uncorrectable"
                }
            ),
            LogEntry::LineHeld { pintid, hold_ms } => log::warn!(
                "INTID {pintid} fired {} times in a row and nobody we serve asserted it: disabled for {hold_ms} ms at a time while it stays so (its devices' interrupts wait meanwhile)",
                crate::intx::UNCLAIMED_LIMIT
            ),
            LogEntry::IntxSilenced { function, pintid } => log::warn!(
                "{function} of the hardware domain holds INTx asserted on INTID {pintid}, a line taken for a guest: masked at the source (Command.INTx Disable)"
            ),
        }
    }
    if q.dropped > 0 {
        log::warn!("AER: {} more events not logged", q.dropped);
    }
}

/// Firmware first: the firmware owns AER (ACPI HEST lists a GHES for PCIe
/// errors) and hands errors over as CPER records in a Generic Error Status
/// Block; they go to the same owners' views as the errors the hypervisor
/// services itself. Returns how many events were delivered; an entry that
/// cannot be decoded is logged and skipped.
///
/// Nothing calls it on the target yet: the hypervisor boots from a device
/// tree, which has no HEST / GHES (QEMU virt's GHES, with `ras=on` and
/// ACPI, carries memory errors only); an ACPI platform's GHES notification
/// is where it would be called from.
#[cfg_attr(target_os = "none", allow(dead_code))]
pub fn deliver_firmware_first<P: ConfigPort>(
    pci: &mut PciState<P>,
    block: &[u8],
    now_ns: u64,
    raises: &mut Raises,
) -> Result<usize, pci::aer::cper::CperError> {
    let mut n = 0;
    for event in pci::aer::cper::events(block, now_ns)? {
        match event {
            Ok(event) => {
                deliver(pci, &event, raises);
                n += 1;
            }
            Err(e) => log::warn!("AER: a firmware error record could not be decoded: {e:?}"),
        }
    }
    Ok(n)
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
/// answered, surprise-removes the others from their guest's view (which
/// resets end a fatal error's wait: `RecoveryTracker::on_reset_done`).
pub fn reset_done<P: ConfigPort>(
    pci: &mut PciState<P>,
    scope: &[Bdf],
    gone: &[Bdf],
    link_reset: bool,
) {
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
    for o in pci.aer.recovery.on_reset_done(&ready, gone, link_reset) {
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
    /// The resets to start (`pci::aer::recovery_reset`); an error (no
    /// method) quarantines `functions`.
    pub actions: Result<Vec<pci::ResetAction>, pci::reset_engine::EngineError>,
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
        let owner_of = |b| pci.ownership.owner(b);
        let functions = pci::aer::recovery_functions(&pci.topology, owner_of, need.source);
        let actions = pci::aer::recovery_reset(&pci.topology, owner_of, need.source);
        // Its link reset would touch another owner's functions (a port
        // above a guest's device): nothing may be reset for it.
        if let Err(pci::reset_engine::EngineError::NotTheRequesters { bdf, owner }) = actions {
            pci.aer.recovery.give_up(need.source);
            log::warn!(
                "AER: {} cannot be recovered: its link reset would touch {bdf} of {owner:?}; given up",
                need.source
            );
            continue;
        }
        if need.retry {
            // Its owner was told when the deadline passed.
            out.push(Takeover {
                owner: need.owner,
                source: need.source,
                functions,
                actions,
            });
            continue;
        }
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
            actions,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::EcamWindow;
    use pci::aer::RecoveryState;
    use pci::aer::virtual_regs::ROOT_STATUS_HV_RESET;
    use pci::regs::*;
    use pci::sim::{Fabric, SimAerError, Spec, devfn};
    use pci::vpci::{Effects, GuestBus, GuestLayout};
    use std::vec;

    const MS: u64 = 1_000_000;
    /// SPIs of the two root ports' INTA (as QEMU virt's swizzle gives them).
    const LINE1: u32 = 36;
    const LINE2: u32 = 37;

    /// 00:01.0 → e1000e 01:00.0 (guest 1's); 00:02.0 → e1000e 02:00.0 (the
    /// hwdom's). AER taken on both ports; the guest's virtual root port
    /// routes bus 1 and enables Root Error Command; VM 0 is the hwdom.
    fn state() -> (PciState<Fabric>, Bdf, Bdf) {
        let mut fabric = Fabric::new().with_root_complex(
            0,
            0,
            &[
                (
                    devfn(1, 0),
                    Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
                ),
                (
                    devfn(2, 0),
                    Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
                ),
            ],
        );
        let found = fabric.enumerate();
        let window = EcamWindow {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
        };
        let mut pci = PciState::new(vec![window], fabric);
        for b in &found {
            pci.topology.report_add(*b, &mut pci.port).unwrap();
        }
        let (guest_fn, hwdom_fn) = (Bdf::new(0, 1, 0, 0), Bdf::new(0, 2, 0, 0));
        let units = pci
            .ownership
            .assign(&mut pci.topology, &mut pci.port, 1, &[guest_fn], false)
            .unwrap();
        pci.aer.hwdom_vm = Some(0);
        pci.aer.deadlines = vec![5_000 * MS, 200 * MS];
        let taken = take_root_ports(&mut pci, 0, |_, bdf, _| {
            Some(if bdf.device() == 1 { LINE1 } else { LINE2 })
        });
        assert_eq!(taken.len(), 2);
        let layout = GuestLayout {
            ecam_base: 0x3f00_0000,
            ecam_buses: 16,
            mem32: (0x1000_0000, 0x2eff_0000),
            mem64: (0x80_0000_0000, 0x80_0000_0000),
            forbidden: Vec::new(),
        };
        let mut bus = GuestBus::new(&units, &pci.topology, &mut pci.port, layout).unwrap();
        let mut e = Effects::new();
        let rp = 1 << 15;
        bus.config_write(&mut pci.port, rp + 0x18, 4, 0x0001_0100, &mut e);
        bus.config_write(&mut pci.port, rp + 0x100 + 0x2c, 4, 7, &mut e);
        pci.guests.insert(1, bus);
        pci.aer.guest_lines.push(GuestLine {
            vm: 1,
            unit: 0,
            vintid: LINE1,
        });
        (pci, guest_fn, hwdom_fn)
    }

    fn inject(pci: &mut PciState<Fabric>, bdf: Bdf, err: SimAerError) {
        pci.port
            .inject_aer(bdf, err)
            .expect("the error reaches a root port");
    }

    fn fire(pci: &mut PciState<Fabric>, line: u32, now: u64) -> Vec<Raise> {
        let mut raises = Raises::default();
        service_line(pci, line, now, &mut raises);
        raises.iter().collect()
    }

    fn guest_root_status(pci: &mut PciState<Fabric>) -> u32 {
        let at = (1 << 15) + 0x100 + u64::from(AER_ROOT_STATUS);
        let PciState { guests, port, .. } = pci;
        guests.get_mut(1).unwrap().config_read(port, at, 4)
    }

    #[test]
    fn taking_a_port_sets_the_error_path_and_hides_its_msix_from_the_hwdom() {
        let (mut pci, guest_fn, _) = state();
        let rp = Bdf::new(0, 0, 1, 0);
        assert!(pci.aer.active());
        assert_ne!(pci.port.read16(guest_fn, COMMAND) & COMMAND_SERR, 0);
        assert_ne!(pci.port.read16(rp, BRIDGE_CONTROL) & BRIDGE_CONTROL_SERR, 0);
        let aer = pci.topology.function(rp).unwrap().caps.aer;
        assert_eq!(pci.port.read32(rp, aer + AER_ROOT_COMMAND), 7);
        assert!(pci.aer.hwdom.owns_port(rp));
        // The hwdom's accesses to the port's config space, any write and
        // extended config space take the overlay path; plain reads of its
        // other functions do not.
        let off = |b: Bdf, reg: u64| (u64::from(b.bus) << 20) | (u64::from(b.devfn) << 12) | reg;
        assert!(pci.aer.filters_hwdom(0, off(rp, 0x34), false));
        assert!(pci.aer.filters_hwdom(0, off(guest_fn, 0x04), true));
        assert!(pci.aer.filters_hwdom(0, off(guest_fn, 0x100), false));
        assert!(!pci.aer.filters_hwdom(0, off(guest_fn, 0x10), false));
        // Taking again changes nothing.
        assert!(take_root_ports(&mut pci, 0, |_, _, _| Some(99)).is_empty());
    }

    #[test]
    fn errors_go_to_their_owner_only() {
        let (mut pci, guest_fn, hwdom_fn) = state();
        // The guest's function: its virtual root port, its line.
        inject(&mut pci, guest_fn, SimAerError::Correctable(0));
        assert_eq!(fire(&mut pci, LINE1, 0), [(1, LINE1)]);
        assert_eq!(guest_root_status(&mut pci) & 1, 1);
        // A line with no error of an owned port claims nothing.
        assert!(!service_line(&mut pci, LINE2, 0, &mut Raises::default()));
        // The hwdom's function: the overlay of the physical port, the
        // hwdom's line (after it enabled Root Error Command in its view).
        let rp2 = Bdf::new(0, 0, 2, 0);
        let aer = pci.topology.function(rp2).unwrap().caps.aer;
        assert!(
            pci.aer
                .hwdom
                .write(&pci.topology, rp2, aer + AER_ROOT_COMMAND, 4, 7)
        );
        inject(&mut pci, hwdom_fn, SimAerError::Correctable(6));
        assert_eq!(fire(&mut pci, LINE2, 0), [(0, LINE2)]);
        assert_eq!(
            pci.aer
                .hwdom
                .read(&pci.topology, rp2, aer + AER_ROOT_STATUS, 4),
            Some(AER_ROOT_STATUS_COR)
        );
        // Nothing more in the guest's view.
        let mut raises = Raises::default();
        resample(&mut pci, 1, None, &mut raises);
        assert_eq!(raises.iter().count(), 1, "the guest's status is still set");
        // The guest clears its status: its line no longer asserts.
        let at = (1 << 15) + 0x100 + u64::from(AER_ROOT_STATUS);
        let PciState { guests, port, .. } = &mut pci;
        guests
            .get_mut(1)
            .unwrap()
            .config_write(port, at, 4, 0x7f, &mut Effects::new());
        let mut raises = Raises::default();
        resample(&mut pci, 1, Some(LINE1), &mut raises);
        assert_eq!(raises.iter().count(), 0);
        // The events wait to be logged off the interrupt path.
        assert_eq!(pci.aer.pending_log.len, 2);
        flush_log(&mut pci);
        assert_eq!(pci.aer.pending_log.len, 0);
    }

    #[test]
    fn firmware_first_records_reach_the_same_owners() {
        use pci::aer::cper::{
            PCIE_SECTION_GUID, SEV_CORRECTED, SEV_FATAL, VALID_AER_INFO, VALID_DEVICE_ID,
        };
        use pci::sim::cper::{block, entry, pcie_section};
        let (mut pci, guest_fn, hwdom_fn) = state();
        let valid = VALID_DEVICE_ID | VALID_AER_INFO;
        let records = block(
            SEV_FATAL,
            &[
                entry(
                    PCIE_SECTION_GUID,
                    SEV_FATAL,
                    0,
                    0x300,
                    &pcie_section(guest_fn, 1 << 4, 1 << 4, 0, valid),
                ),
                entry(
                    PCIE_SECTION_GUID,
                    SEV_CORRECTED,
                    0,
                    0x300,
                    &pcie_section(hwdom_fn, 0, 0, 1, valid),
                ),
            ],
        );
        let rp2 = Bdf::new(0, 0, 2, 0);
        let aer = pci.topology.function(rp2).unwrap().caps.aer;
        pci.aer
            .hwdom
            .write(&pci.topology, rp2, aer + AER_ROOT_COMMAND, 4, 7);
        let mut raises = Raises::default();
        assert_eq!(
            deliver_firmware_first(&mut pci, &records, 0, &mut raises),
            Ok(2)
        );
        assert_eq!(raises.iter().collect::<Vec<_>>(), [(1, LINE1), (0, LINE2)]);
        let st = guest_root_status(&mut pci);
        assert_ne!(st & AER_ROOT_STATUS_FATAL, 0, "{st:#x}");
        assert!(pci.aer.recovery.is_frozen(guest_fn));
        assert_eq!(
            pci.aer
                .hwdom
                .read(&pci.topology, rp2, aer + AER_ROOT_STATUS, 4),
            Some(AER_ROOT_STATUS_COR)
        );
        // A truncated block is an error, nothing delivered.
        let mut raises = Raises::default();
        assert!(deliver_firmware_first(&mut pci, &records[..10], 0, &mut raises).is_err());
        assert_eq!(raises.iter().count(), 0);
    }

    #[test]
    fn a_removed_root_port_is_no_longer_serviced_or_overlaid() {
        let (mut pci, _, hwdom_fn) = state();
        let rp2 = Bdf::new(0, 0, 2, 0);
        removed(&mut pci, &[rp2, hwdom_fn]);
        assert_eq!(pci.aer.ports.len(), 1);
        assert_eq!(pci.aer.port_windows.len(), 1);
        assert!(!pci.aer.hwdom.owns_port(rp2));
        assert!(!service_line(&mut pci, LINE2, 0, &mut Raises::default()));
    }

    #[test]
    fn an_flr_alone_does_not_end_a_fatal_errors_wait_for_a_link_reset() {
        let (mut pci, guest_fn, _) = state();
        inject(&mut pci, guest_fn, SimAerError::Uncorrectable(4));
        fire(&mut pci, LINE1, 0);
        reset_done(&mut pci, &[guest_fn], &[], false);
        assert_eq!(
            pci.aer.recovery.recovery(guest_fn).map(|r| r.state),
            Some(RecoveryState::FrozenAwaitingReset)
        );
        reset_done(&mut pci, &[guest_fn], &[], true);
        assert!(!pci.aer.recovery.is_frozen(guest_fn));
    }

    #[test]
    fn a_fatal_error_the_guest_resets_ends_its_recovery() {
        let (mut pci, guest_fn, _) = state();
        inject(&mut pci, guest_fn, SimAerError::Uncorrectable(4));
        fire(&mut pci, LINE1, 10 * MS);
        let r = pci.aer.recovery.recovery(guest_fn).copied().unwrap();
        assert_eq!(r.state, RecoveryState::FrozenAwaitingReset);
        assert_eq!(r.deadline_ns, Some(210 * MS), "the guest's own deadline");
        owner_reset(&mut pci, &[guest_fn]);
        assert_eq!(pci.aer.recovery.next_deadline(), None);
        reset_done(&mut pci, &[guest_fn], &[], true);
        assert!(!pci.aer.recovery.is_frozen(guest_fn));
        assert_eq!(
            pci.aer.recovery.log().last().map(|r| r.state),
            Some(RecoveryState::Recovered)
        );
    }

    /// A fatal error whose source is a root port: its recovery is the
    /// port's own link reset (nothing else covers a bridge), or, when that
    /// would reset a guest's device, it is given up; it never waits forever.
    #[test]
    fn a_fatal_error_of_a_root_port_is_recovered_by_its_link_reset() {
        let (mut pci, _, _) = state();
        let (guest_rp, hwdom_rp) = (Bdf::new(0, 0, 1, 0), Bdf::new(0, 0, 2, 0));
        for (rp, line) in [(hwdom_rp, LINE2), (guest_rp, LINE1)] {
            inject(&mut pci, rp, SimAerError::Uncorrectable(4));
            fire(&mut pci, line, 0);
            let r = pci.aer.recovery.recovery(rp).copied().unwrap();
            assert_eq!(
                (r.owner, r.state),
                (Owner::Hwdom, RecoveryState::FrozenAwaitingReset)
            );
        }
        let mut raises = Raises::default();
        let taken = deadlines_passed(&mut pci, 5_000 * MS, &mut raises);
        let link = pci::ResetAction::Slot { port: hwdom_rp };
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert_eq!(
            (taken[0].source, &taken[0].actions),
            (hwdom_rp, &Ok(vec![link]))
        );
        // The port above the guest's e1000e: given up, not left waiting.
        assert!(!pci.aer.recovery.is_frozen(guest_rp));
        assert!(
            pci.aer
                .recovery
                .log()
                .any(|r| r.source == guest_rp && r.state == RecoveryState::Unrecoverable)
        );
        // The slot reset of the hwdom's port ends its recovery.
        let scope = pci::aer::recovered_by(&pci.topology, link);
        reset_done(&mut pci, &scope, &[], true);
        assert!(!pci.aer.recovery.is_frozen(hwdom_rp));
        assert_eq!(pci.aer.recovery.active().count(), 0);
    }

    #[test]
    fn past_the_deadline_the_hypervisor_takes_over_and_marks_the_guest_view() {
        let (mut pci, guest_fn, _) = state();
        inject(&mut pci, guest_fn, SimAerError::Uncorrectable(4));
        fire(&mut pci, LINE1, 0);
        let mut raises = Raises::default();
        assert!(deadlines_passed(&mut pci, 199 * MS, &mut raises).is_empty());
        let taken = deadlines_passed(&mut pci, 200 * MS, &mut raises);
        assert_eq!(
            taken,
            [Takeover {
                owner: Owner::Guest(1),
                source: guest_fn,
                functions: vec![guest_fn],
                actions: Ok(vec![pci::ResetAction::Slot {
                    port: Bdf::new(0, 0, 1, 0)
                }]),
            }]
        );
        assert_ne!(guest_root_status(&mut pci) & ROOT_STATUS_HV_RESET, 0);
        assert_eq!(raises.iter().collect::<Vec<_>>(), [(1, LINE1)]);
        // The reset does not bring it back: quarantined, surprise-removed.
        reset_done(&mut pci, &taken[0].functions, &[guest_fn], true);
        let last = pci.aer.recovery.log().last().copied().unwrap();
        assert_eq!(last.state, RecoveryState::Quarantined);
        assert!(last.by_hypervisor);
        let vendor = {
            let PciState { guests, port, .. } = &mut pci;
            guests.get_mut(1).unwrap().config_read(port, 1 << 20, 4)
        };
        assert_eq!(vendor, u32::MAX, "the guest sees it removed");
    }
}
