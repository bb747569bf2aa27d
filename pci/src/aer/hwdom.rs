//! The hardware domain's view of AER on the physical root ports and its
//! own functions: the hypervisor reads and clears the physical status on
//! every interrupt, so the status the hardware domain sees is an overlay.

use alloc::collections::BTreeMap;

use super::AerEvent;
use super::virtual_regs::{AerStorage, Signalled, VirtualAer};
use crate::addr::Bdf;
use crate::regs::*;
use crate::topology::{FunctionKind, Topology};

/// Overlay of the AER registers the hypervisor owns, for the hardware
/// domain's config accesses.
///
/// - On its functions: Uncorrectable / Correctable Status (RW1C), the
///   Header Log and the First Error Pointer come from the overlay; masks,
///   severities and ECRC enables stay physical (the hardware domain
///   programs them; the shell keeps the storm limiter's masked bits).
/// - On physical root ports: Root Error Command, Root Error Status and
///   Error Source ID are virtual (the physical ones are the hypervisor's);
///   the hardware domain sees *physical* requester ids.
///
/// The shell calls [`HwdomAer::read`] before the physical read (an answer
/// replaces it) and [`HwdomAer::write`] before the physical write (`true`:
/// consumed, do not write the hardware).
#[derive(Clone, Debug, Default)]
pub struct HwdomAer {
    functions: BTreeMap<Bdf, VirtualAer>,
    ports: BTreeMap<Bdf, VirtualAer>,
}

/// The root port (or RCEC) that collects `bdf`'s errors: itself if it is
/// one, else its closest root port ancestor.
pub fn root_port_of(topo: &Topology, bdf: Bdf) -> Option<Bdf> {
    let is_root = |b: Bdf| {
        topo.function(b)
            .is_some_and(|f| matches!(f.kind, FunctionKind::RootPort | FunctionKind::Rcec))
    };
    if is_root(bdf) {
        return Some(bdf);
    }
    topo.ancestors(bdf).find(|&b| is_root(b))
}

impl HwdomAer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Delivers an event of one of the hardware domain's functions: status
    /// in the function's overlay, Root Error Status / Error Source ID in
    /// its root port's. Returns the root port and whether its interrupt is
    /// to be raised in the hardware domain (through its INTx, as Linux's
    /// AER driver uses it without MSI). `None` if no root port collects it.
    pub fn deliver(&mut self, topo: &Topology, event: &AerEvent) -> Option<(Bdf, bool)> {
        let rp = root_port_of(topo, event.source)?;
        let has_aer = topo.function(event.source).is_some_and(|f| f.caps.aer != 0);
        let sig = if has_aer {
            let f = self
                .functions
                .entry(event.source)
                .or_insert_with(VirtualAer::endpoint);
            // The physical masks and severities are the hardware domain's:
            // the event was already classified with them.
            f.set(AER_UNCOR_MASK, 0);
            f.set(AER_COR_MASK, 0);
            f.set(
                AER_UNCOR_SEVER,
                if event.severity == super::Severity::Fatal {
                    u32::MAX
                } else {
                    0
                },
            );
            f.record(event)
        } else {
            Signalled::from_severity(event.severity)
        };
        let port = self.ports.entry(rp).or_insert_with(VirtualAer::root_port);
        Some((rp, port.signal(sig, event.source.rid())))
    }

    /// Whether the hardware domain's view of `root_port` asserts its
    /// interrupt.
    pub fn interrupt_asserted(&self, root_port: Bdf) -> bool {
        self.ports
            .get(&root_port)
            .is_some_and(|p| p.interrupt_asserted())
    }

    /// Marks a hypervisor-performed recovery reset on the root port view.
    pub fn mark_hypervisor_reset(&mut self, root_port: Bdf) {
        let p = self
            .ports
            .entry(root_port)
            .or_insert_with(VirtualAer::root_port);
        super::virtual_regs::mark_hypervisor_reset(p);
    }

    /// The overlay's answer to a hardware-domain read of `width` bytes at
    /// config offset `reg` of `bdf`, or `None` to read the hardware.
    pub fn read(&self, topo: &Topology, bdf: Bdf, reg: u16, width: u16) -> Option<u32> {
        let aer = topo.function(bdf).map_or(0, |f| f.caps.aer);
        let off = reg.checked_sub(aer).filter(|_| aer != 0)?;
        let is_port = root_port_of(topo, bdf) == Some(bdf);
        let overlaid = matches!(off & !3, AER_UNCOR_STATUS | AER_COR_STATUS | 0x1c..=0x28)
            || (is_port
                && matches!(
                    off & !3,
                    AER_ROOT_COMMAND | AER_ROOT_STATUS | AER_ERROR_SOURCE
                ));
        if !overlaid {
            return None;
        }
        let view = if is_port && off >= AER_ROOT_COMMAND {
            self.ports.get(&bdf)
        } else {
            self.functions.get(&bdf)
        };
        Some(view.map_or(0, |v| v.read(off, width)))
    }

    /// A hardware-domain write at config offset `reg` of `bdf`: `true` if
    /// the overlay consumed it (status RW1C, root registers).
    pub fn write(&mut self, topo: &Topology, bdf: Bdf, reg: u16, width: u16, value: u32) -> bool {
        let aer = topo.function(bdf).map_or(0, |f| f.caps.aer);
        let Some(off) = reg.checked_sub(aer).filter(|_| aer != 0) else {
            return false;
        };
        let is_port = root_port_of(topo, bdf) == Some(bdf);
        match off & !3 {
            AER_UNCOR_STATUS | AER_COR_STATUS => {
                if let Some(v) = self.functions.get_mut(&bdf) {
                    v.write(off, width, value);
                }
                true
            }
            AER_ROOT_COMMAND | AER_ROOT_STATUS | AER_ERROR_SOURCE if is_port => {
                self.ports
                    .entry(bdf)
                    .or_insert_with(VirtualAer::root_port)
                    .write(off, width, value);
                true
            }
            _ => false,
        }
    }

    /// Forgets a function (removed, or given to a guest).
    pub fn forget(&mut self, bdf: Bdf) {
        self.functions.remove(&bdf);
        self.ports.remove(&bdf);
    }
}
