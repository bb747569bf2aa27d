//! Servicing a physical root port's AER interrupt, and the storm limiter.

use alloc::collections::BTreeMap;

use super::{
    AER_HEADER_LOG, AerConfig, AerError, AerEvent, CAP_CTRL_FEP_MASK, DEVCTL_REPORTING,
    ROOT_COMMAND_ENABLES, RTCTL_SERR, Severity,
};
use crate::addr::Bdf;
use crate::port::ConfigPort;
use crate::regs::*;
use crate::topology::{FunctionKind, Topology};

/// Most sources collected per class (correctable, uncorrectable) and
/// interrupt, like Linux's `AER_MAX_MULTI_ERR_DEVICES`.
pub const MAX_SOURCES: usize = 5;
/// Capacity of [`Reports`]: per class, an event or a storm report per
/// source, plus a "not found".
pub const MAX_REPORTS: usize = 2 * (MAX_SOURCES + 1);

/// What one [`RootPortService::service`] call found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AerReport {
    /// Deliver to the owner of `source`.
    Event(AerEvent),
    /// A storm: these bits were masked in the function's physical
    /// Correctable / Uncorrectable Error Mask. Log it; the events are
    /// suppressed until [`RootPortService::unmask_storm`].
    StormMasked {
        source: Bdf,
        severity: Severity,
        masked: u32,
        at_ns: u64,
    },
    /// Root Error Status flagged errors of this class but no function
    /// showed any (already cleared, or a function that is not tracked).
    /// Log it.
    SourceNotFound {
        root_port: Bdf,
        correctable: bool,
        source_id: u16,
        at_ns: u64,
    },
}

/// A bounded list of [`AerReport`]s (no allocation on the interrupt path).
#[derive(Clone, Debug)]
pub struct Reports {
    items: [Option<AerReport>; MAX_REPORTS],
    len: usize,
    /// Root Error Status as read (0: the interrupt was not this port's).
    pub root_status: u32,
    /// Error Source ID as read.
    pub source_id: u32,
    /// Events the storm limiter suppressed in this call.
    pub suppressed: u32,
}

impl Default for Reports {
    fn default() -> Self {
        Self::new()
    }
}

impl Reports {
    pub fn new() -> Self {
        Self {
            items: [None; MAX_REPORTS],
            len: 0,
            root_status: 0,
            source_id: 0,
            suppressed: 0,
        }
    }

    fn push(&mut self, r: AerReport) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = Some(r);
            self.len += 1;
        }
    }

    /// Starts an event in the next slot (built in place, not copied); it
    /// counts once [`Self::commit`]ted. `None` when the list is full.
    fn start_event(&mut self, ev: AerEvent) -> Option<&mut AerEvent> {
        let slot = self.items.get_mut(self.len)?;
        *slot = Some(AerReport::Event(ev));
        match slot {
            Some(AerReport::Event(e)) => Some(e),
            _ => None,
        }
    }

    /// Counts the started event.
    fn commit(&mut self) {
        if self.len < self.items.len() {
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Empties the list (the slots are overwritten as reports come).
    pub fn clear(&mut self) {
        self.len = 0;
        self.root_status = 0;
        self.source_id = 0;
        self.suppressed = 0;
    }

    /// The `i`th report.
    pub fn get(&self, i: usize) -> Option<&AerReport> {
        if i < self.len {
            self.items.get(i)?.as_ref()
        } else {
            None
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = &AerReport> + '_ {
        self.items.iter().take(self.len).flatten()
    }

    /// Only the events.
    pub fn events(&self) -> impl Iterator<Item = &AerEvent> + '_ {
        self.iter().filter_map(|r| match r {
            AerReport::Event(e) => Some(e),
            _ => None,
        })
    }
}

/// Per function, per class window count.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start_ns: u64,
    count: u32,
    /// Bits this limiter masked (to restore on unmask).
    masked: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Limiter {
    cor: Window,
    nonfatal: Window,
}

/// The hypervisor's AER service for physical root ports. One instance
/// serves all root ports (the limiter is keyed by function).
#[derive(Clone, Debug, Default)]
pub struct RootPortService {
    config: AerConfig,
    limiter: BTreeMap<Bdf, Limiter>,
    /// Events delivered, suppressed by the limiter, storms masked.
    pub stats: ServiceStats,
}

/// What one class (correctable / uncorrectable) of one service call works
/// on.
struct ClassCtx {
    root_port: Bdf,
    /// The port's bus range (its subtree).
    buses: Option<core::ops::RangeInclusive<u8>>,
    source_id: u16,
    multi: bool,
    correctable: bool,
    root_status: u32,
    now_ns: u64,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub interrupts: u64,
    pub events: u64,
    pub suppressed: u64,
    pub storms: u64,
    pub not_found: u64,
}

/// A source found by the search: its address and AER capability offset (0:
/// none).
#[derive(Clone, Copy)]
struct Source {
    bdf: Bdf,
    aer: u16,
}

impl RootPortService {
    pub fn new(config: AerConfig) -> Self {
        Self {
            config,
            limiter: BTreeMap::new(),
            stats: ServiceStats::default(),
        }
    }

    pub fn config(&self) -> &AerConfig {
        &self.config
    }

    fn check_port(topo: &Topology, root_port: Bdf) -> Result<u16, AerError> {
        Self::check_port_fn(topo, root_port).map(|f| f.caps.aer)
    }

    /// The root port's topology entry, if it can be serviced.
    fn check_port_fn(
        topo: &Topology,
        root_port: Bdf,
    ) -> Result<&crate::topology::Function, AerError> {
        let f = topo
            .function(root_port)
            .ok_or(AerError::NotTracked(root_port))?;
        if !matches!(f.kind, FunctionKind::RootPort | FunctionKind::Rcec) {
            return Err(AerError::NotRootPort(root_port));
        }
        if f.caps.aer == 0 {
            return Err(AerError::NoAer(root_port));
        }
        Ok(f)
    }

    /// Takes AER ownership of a root port as Linux's probe does: clears its
    /// Device Status and Root Control system-error enables, clears Root Error
    /// Status and the AER status of the port and every tracked function
    /// below, sets their Device Control reporting enables (bits 0-3), SERR#
    /// Enable in Command and, on bridges, in Bridge Control, then
    /// enables the Root Error Command interrupts (bits 0-2). Also prepares
    /// the storm limiter's entries so that [`Self::service`] does not
    /// allocate.
    pub fn enable<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        topo: &Topology,
        root_port: Bdf,
    ) -> Result<(), AerError> {
        let aer = Self::check_port(topo, root_port)?;
        if let Some(pcie) = topo
            .function(root_port)
            .map(|f| f.caps.pcie as u16)
            .filter(|&p| p != 0)
        {
            let devsta = port.read16(root_port, pcie + PCIE_DEVSTA);
            port.write16(root_port, pcie + PCIE_DEVSTA, devsta);
            let rtctl = port.read16(root_port, pcie + PCIE_RTCTL);
            port.write16(root_port, pcie + PCIE_RTCTL, rtctl & !RTCTL_SERR);
        }
        port.write32(root_port, aer + AER_ROOT_COMMAND, 0);
        let st = port.read32(root_port, aer + AER_ROOT_STATUS);
        port.write32(root_port, aer + AER_ROOT_STATUS, st);
        for bdf in core::iter::once(root_port).chain(topo.subtree(root_port)) {
            self.limiter.entry(bdf).or_default();
            let Some(f) = topo.function(bdf) else {
                continue;
            };
            // Error messages travel only where the path allows them: SERR#
            // Enable on each function (non-fatal / fatal reporting, and
            // QEMU's model requires it) and on each bridge's Bridge Control
            // (forwarding from its secondary side).
            let cmd = port.read16(bdf, COMMAND);
            if cmd != u16::MAX {
                port.write16(bdf, COMMAND, cmd | COMMAND_SERR);
            }
            if f.kind.is_bridge() {
                let bc = port.read16(bdf, BRIDGE_CONTROL);
                if bc != u16::MAX {
                    port.write16(
                        bdf,
                        BRIDGE_CONTROL,
                        (bc | BRIDGE_CONTROL_SERR) & !BRIDGE_CONTROL_SBR,
                    );
                }
            }
            let pcie = f.caps.pcie as u16;
            if pcie != 0 {
                let ctl = port.read16(bdf, pcie + PCIE_DEVCTL);
                if ctl != u16::MAX {
                    // Never write Initiate FLR back.
                    let ctl = (ctl | DEVCTL_REPORTING) & !PCIE_DEVCTL_BCR_FLR;
                    port.write16(bdf, pcie + PCIE_DEVCTL, ctl);
                }
            }
            let a = f.caps.aer;
            if a != 0 {
                let u = port.read32(bdf, a + AER_UNCOR_STATUS);
                let c = port.read32(bdf, a + AER_COR_STATUS);
                if u != u32::MAX {
                    port.write32(bdf, a + AER_UNCOR_STATUS, u);
                }
                if c != u32::MAX {
                    port.write32(bdf, a + AER_COR_STATUS, c);
                }
            }
        }
        port.write32(root_port, aer + AER_ROOT_COMMAND, ROOT_COMMAND_ENABLES);
        Ok(())
    }

    /// Services the root port's AER interrupt at time `now_ns`. Bounded:
    /// one read and clear of the root registers, at most [`MAX_SOURCES`]
    /// sources per class, a fixed number of accesses per source. A port
    /// whose Root Error Status has none of bits 0-3 set returns empty
    /// reports with `root_status` as read ("not ours" for a shared line).
    pub fn service<P: ConfigPort + ?Sized>(
        &mut self,
        topo: &Topology,
        port: &mut P,
        root_port: Bdf,
        now_ns: u64,
    ) -> Result<Reports, AerError> {
        let mut out = Reports::new();
        self.service_into(topo, port, root_port, now_ns, &mut out)?;
        Ok(out)
    }

    /// [`Self::service`] into reports the caller keeps (cleared first): the
    /// interrupt path then copies nothing large.
    pub fn service_into<P: ConfigPort + ?Sized>(
        &mut self,
        topo: &Topology,
        port: &mut P,
        root_port: Bdf,
        now_ns: u64,
        out: &mut Reports,
    ) -> Result<(), AerError> {
        // One topology lookup of the port for the whole service.
        let rp = Self::check_port_fn(topo, root_port)?;
        let (aer, buses) = (rp.caps.aer, rp.bus_range());
        out.clear();
        let st = port.read32(root_port, aer + AER_ROOT_STATUS);
        out.root_status = st;
        if st == u32::MAX || st & 0xf == 0 {
            return Ok(());
        }
        let id = port.read32(root_port, aer + AER_ERROR_SOURCE);
        out.source_id = id;
        // Clear what we read (W1C); errors arriving from now on raise a new
        // interrupt.
        port.write32(root_port, aer + AER_ROOT_STATUS, st);
        self.stats.interrupts += 1;

        if st & AER_ROOT_STATUS_COR != 0 {
            let multi = st & AER_ROOT_STATUS_MULTI_COR != 0;
            let ctx = ClassCtx {
                root_port,
                buses: buses.clone(),
                source_id: id as u16,
                multi,
                correctable: true,
                root_status: st,
                now_ns,
            };
            self.class(topo, port, &ctx, out);
        }
        if st & AER_ROOT_STATUS_UNCOR != 0 {
            let multi = st & AER_ROOT_STATUS_MULTI_UNCOR != 0;
            let ctx = ClassCtx {
                root_port,
                buses,
                source_id: (id >> 16) as u16,
                multi,
                correctable: false,
                root_status: st,
                now_ns,
            };
            self.class(topo, port, &ctx, out);
        }
        Ok(())
    }

    /// The Source ID's function when it is the port or a tracked function
    /// below it (one topology lookup).
    fn id_source(topo: &Topology, ctx: &ClassCtx) -> Option<Source> {
        let bdf = Bdf::from_rid(ctx.root_port.segment, ctx.source_id);
        if bdf != ctx.root_port
            && (bdf.segment != ctx.root_port.segment
                || !ctx.buses.as_ref().is_some_and(|r| r.contains(&bdf.bus)))
        {
            return None;
        }
        let f = topo.function(bdf)?;
        Some(Source {
            bdf,
            aer: f.caps.aer,
        })
    }

    /// Linux's `find_source_device` + `aer_process_err_devices` for one class.
    fn class<P: ConfigPort + ?Sized>(
        &mut self,
        topo: &Topology,
        port: &mut P,
        ctx: &ClassCtx,
        out: &mut Reports,
    ) {
        let mut found = [Source {
            bdf: ctx.root_port,
            aer: 0,
        }; MAX_SOURCES];
        let mut n = 0usize;
        let id_source = Self::id_source(topo, ctx);
        if let Some(s) = id_source {
            found[0] = s;
            n = 1;
        }
        if id_source.is_none() || ctx.multi {
            let id_bdf = id_source.map(|s| s.bdf);
            for bdf in core::iter::once(ctx.root_port).chain(topo.subtree(ctx.root_port)) {
                if n >= MAX_SOURCES {
                    break;
                }
                if id_bdf == Some(bdf) {
                    continue;
                }
                if let Some(aer) = Self::has_pending(topo, port, bdf, ctx.correctable)
                    && let Some(slot) = found.get_mut(n)
                {
                    *slot = Source { bdf, aer };
                    n += 1;
                }
            }
        }
        let mut reported = false;
        for s in found.iter().take(n) {
            reported |= self.process(topo, port, *s, ctx, out);
        }
        if !reported {
            self.stats.not_found += 1;
            out.push(AerReport::SourceNotFound {
                root_port: ctx.root_port,
                correctable: ctx.correctable,
                source_id: ctx.source_id,
                at_ns: ctx.now_ns,
            });
        }
    }

    /// Linux's `is_error_source` status test: reporting enabled in Device
    /// Control and unmasked status of the class.
    /// Returns the function's AER offset if it has errors pending.
    fn has_pending<P: ConfigPort + ?Sized>(
        topo: &Topology,
        port: &mut P,
        bdf: Bdf,
        correctable: bool,
    ) -> Option<u16> {
        let f = topo.function(bdf)?;
        let (pcie, aer) = (f.caps.pcie as u16, f.caps.aer);
        if pcie == 0 || aer == 0 {
            return None;
        }
        let ctl = port.read16(bdf, pcie + PCIE_DEVCTL);
        if ctl == u16::MAX || ctl & DEVCTL_REPORTING == 0 {
            return None;
        }
        let (sreg, mreg) = if correctable {
            (AER_COR_STATUS, AER_COR_MASK)
        } else {
            (AER_UNCOR_STATUS, AER_UNCOR_MASK)
        };
        let st = port.read32(bdf, aer + sreg);
        if st == u32::MAX {
            return None;
        }
        (st & !port.read32(bdf, aer + mreg) != 0).then_some(aer)
    }

    /// Reads, clears and classifies one source's errors of one class.
    /// Returns whether anything was reported for it. The event is built in
    /// its slot of `out` (no copy).
    fn process<P: ConfigPort + ?Sized>(
        &mut self,
        topo: &Topology,
        port: &mut P,
        source: Source,
        ctx: &ClassCtx,
        out: &mut Reports,
    ) -> bool {
        let Source { bdf, aer } = source;
        let correctable = ctx.correctable;
        let root_severity = if correctable {
            Severity::Correctable
        } else if ctx.root_status & (AER_ROOT_STATUS_FATAL | AER_ROOT_STATUS_FIRST_FATAL) != 0 {
            Severity::Fatal
        } else {
            Severity::NonFatal
        };
        let new = AerEvent::new(bdf, root_severity, ctx.now_ns);
        // A full list (cannot happen with MAX_REPORTS) still runs the
        // limiter; the event is then not reported.
        let mut spare;
        let ev = match out.start_event(new) {
            Some(e) => e,
            None => {
                spare = new;
                &mut spare
            }
        };
        // A source without AER (the Source ID named it): report what the
        // root port knows.
        if aer != 0 {
            if correctable {
                let st = port.read32(bdf, aer + AER_COR_STATUS);
                if st == u32::MAX {
                    ev.function_unreachable = true;
                } else {
                    let pending = st & !port.read32(bdf, aer + AER_COR_MASK);
                    if pending == 0 {
                        return false;
                    }
                    port.write32(bdf, aer + AER_COR_STATUS, pending);
                    ev.correctable_status = pending;
                }
            } else {
                let st = port.read32(bdf, aer + AER_UNCOR_STATUS);
                if st == u32::MAX {
                    ev.function_unreachable = true;
                } else {
                    let pending = st & !port.read32(bdf, aer + AER_UNCOR_MASK);
                    if pending == 0 {
                        return false;
                    }
                    let sev = port.read32(bdf, aer + AER_UNCOR_SEVER);
                    ev.severity = if pending & sev != 0 {
                        Severity::Fatal
                    } else {
                        Severity::NonFatal
                    };
                    let cap = port.read32(bdf, aer + AER_CAP_CTRL);
                    ev.first_error_pointer = Some((cap & CAP_CTRL_FEP_MASK) as u8);
                    for (i, h) in ev.header_log.iter_mut().enumerate() {
                        *h = port.read32(bdf, aer + AER_HEADER_LOG + 4 * i as u16);
                    }
                    port.write32(bdf, aer + AER_UNCOR_STATUS, pending);
                    ev.uncorrectable_status = pending;
                }
            }
        }
        let (severity, bits) = (ev.severity, ev.status());
        if self.emit(port, topo, bdf, severity, bits, ctx.now_ns, out) {
            out.commit();
        }
        true
    }

    /// Applies the storm limiter to an event of `source` (its severity and
    /// status bits); returns whether to report it (else it is suppressed,
    /// and a storm report may have been pushed).
    #[allow(clippy::too_many_arguments)]
    fn emit<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        topo: &Topology,
        source: Bdf,
        severity: Severity,
        bits: u32,
        at_ns: u64,
        out: &mut Reports,
    ) -> bool {
        let (threshold, window_ns) = (self.config.storm_threshold, self.config.storm_window_ns);
        if severity == Severity::Fatal {
            self.stats.events += 1;
            return true;
        }
        let lim = self.limiter.entry(source).or_default();
        let w = if severity == Severity::Correctable {
            &mut lim.cor
        } else {
            &mut lim.nonfatal
        };
        if at_ns.saturating_sub(w.start_ns) >= window_ns || w.count == 0 {
            w.start_ns = at_ns;
            w.count = 0;
        }
        w.count = w.count.saturating_add(1);
        if w.count <= threshold {
            self.stats.events += 1;
            return true;
        }
        // A storm: mask what fired (once per window), suppress the event.
        self.stats.suppressed += 1;
        out.suppressed += 1;
        let aer = topo.function(source).map_or(0, |f| f.caps.aer);
        if aer == 0 || bits == 0 || w.masked & bits == bits {
            return false;
        }
        let mreg = if severity == Severity::Correctable {
            AER_COR_MASK
        } else {
            AER_UNCOR_MASK
        };
        let cur = port.read32(source, aer + mreg);
        if cur == u32::MAX {
            return false;
        }
        let new = bits & !cur & !w.masked;
        port.write32(source, aer + mreg, cur | bits);
        w.masked |= new;
        self.stats.storms += 1;
        out.push(AerReport::StormMasked {
            source,
            severity,
            masked: bits,
            at_ns,
        });
        false
    }

    /// Bits the storm limiter masked on `bdf` (correctable, uncorrectable).
    pub fn storm_masked(&self, bdf: Bdf) -> (u32, u32) {
        self.limiter
            .get(&bdf)
            .map_or((0, 0), |l| (l.cor.masked, l.nonfatal.masked))
    }

    /// Unmasks what the storm limiter masked on `bdf` and restarts its
    /// windows: after a reset restored the function, when it changes owner,
    /// or when the shell decides the storm is over.
    pub fn unmask_storm<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        topo: &Topology,
        bdf: Bdf,
    ) {
        let Some(l) = self.limiter.get_mut(&bdf) else {
            return;
        };
        let aer = topo.function(bdf).map_or(0, |f| f.caps.aer);
        if aer != 0 {
            for (reg, bits) in [
                (AER_COR_MASK, l.cor.masked),
                (AER_UNCOR_MASK, l.nonfatal.masked),
            ] {
                if bits != 0 {
                    let cur = port.read32(bdf, aer + reg);
                    if cur != u32::MAX {
                        port.write32(bdf, aer + reg, cur & !bits);
                    }
                }
            }
        }
        *l = Limiter::default();
    }

    /// Forgets a function (removed from the topology).
    pub fn forget(&mut self, bdf: Bdf) {
        self.limiter.remove(&bdf);
    }
}
