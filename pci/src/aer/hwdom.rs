//! The hardware domain's view of AER on the physical root ports and its
//! own functions: the hypervisor reads and clears the physical status on
//! every interrupt, so the status the hardware domain sees is an overlay.

use alloc::collections::BTreeMap;

use super::virtual_regs::{AerStorage, Signalled, VirtualAer};
use super::{AerEvent, DEVCTL_REPORTING};
use crate::addr::Bdf;
use crate::port::ConfigPort;
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
    /// Root ports whose AER the hypervisor took ([`Self::own_port`]).
    owned: BTreeMap<Bdf, HiddenCaps>,
}

/// A root port's MSI and MSI-X capabilities, unlinked from the hardware
/// domain's view of its capability list: its AER interrupt must stay the
/// INTx the hypervisor takes at EL2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct HiddenCaps {
    /// (offset of a pointer byte, value the hardware domain reads there).
    patches: [(u8, u8); 2],
    patched: usize,
    /// (offset, length) of each hidden capability: writes there are dropped.
    hidden: [(u8, u8); 2],
    n_hidden: usize,
}

impl HiddenCaps {
    /// Walks `bdf`'s list (bounded, defensive), turns MSI and MSI-X off
    /// (the port must signal with INTx) and unlinks them.
    fn take<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf) -> Self {
        let mut h = Self::default();
        let status = port.read16(bdf, STATUS);
        if status == u16::MAX || status & STATUS_CAP_LIST == 0 {
            return h;
        }
        // The pointer byte that leads to the current capability, and the
        // value it should read (changes when capabilities are skipped).
        let mut at = CAP_PTR as u8;
        let mut pointer = port.read8(bdf, CAP_PTR) & 0xfc;
        let mut link_from = at;
        let mut skipping = false;
        for _ in 0..48 {
            if pointer < 0x40 {
                break;
            }
            let id = port.read8(bdf, u16::from(pointer));
            let next = port.read8(bdf, u16::from(pointer) + 1) & 0xfc;
            let control = u16::from(pointer) + 2;
            let (len, enable) = match id {
                CAP_ID_MSI => {
                    // 64-bit address (bit 7), per-vector masking (bit 8).
                    let ctl = port.read16(bdf, control);
                    let len = 10
                        + if ctl & (1 << 7) != 0 { 4 } else { 0 }
                        + if ctl & (1 << 8) != 0 { 10 } else { 0 };
                    (len, 1u16)
                }
                CAP_ID_MSIX => (12, 1 << 15),
                _ => (0, 0),
            };
            if enable != 0 {
                let ctl = port.read16(bdf, control);
                if ctl != u16::MAX && ctl & enable != 0 {
                    port.write16(bdf, control, ctl & !enable);
                }
            }
            if len != 0 {
                if let Some(slot) = h.hidden.get_mut(h.n_hidden) {
                    *slot = (pointer, len);
                    h.n_hidden += 1;
                }
                if !skipping {
                    link_from = at;
                    skipping = true;
                }
            } else if skipping {
                if let Some(slot) = h.patches.get_mut(h.patched) {
                    *slot = (link_from, pointer);
                    h.patched += 1;
                }
                skipping = false;
            }
            at = pointer + 1;
            pointer = next;
        }
        if skipping && let Some(slot) = h.patches.get_mut(h.patched) {
            *slot = (link_from, 0);
            h.patched += 1;
        }
        h
    }

    fn patch(&self, reg: u16, width: u16, mut value: u32) -> u32 {
        for &(at, v) in self.patches.iter().take(self.patched) {
            let at = u16::from(at);
            if (reg..reg + width).contains(&at) {
                let shift = 8 * u32::from(at - reg);
                value = (value & !(0xff << shift)) | (u32::from(v) << shift);
            }
        }
        value
    }

    fn hides(&self, reg: u16, width: u16) -> bool {
        self.hidden.iter().take(self.n_hidden).any(|&(start, len)| {
            let (start, end) = (u16::from(start), u16::from(start) + u16::from(len));
            reg < end && start < reg + width
        })
    }
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
        self.owned.remove(&bdf);
    }

    /// The hypervisor takes AER on `root_port`: its MSI / MSI-X are turned
    /// off (its AER interrupt is the INTx the shell takes) and from now on
    /// the hardware domain does not see them, and cannot clear the error
    /// reporting enables of the port and the functions below
    /// ([`Self::filter_write`]).
    pub fn own_port<P: ConfigPort + ?Sized>(&mut self, port: &mut P, root_port: Bdf) {
        let hidden = HiddenCaps::take(port, root_port);
        self.owned.insert(root_port, hidden);
    }

    /// Whether the hypervisor owns AER of `root_port`.
    pub fn owns_port(&self, root_port: Bdf) -> bool {
        self.owned.contains_key(&root_port)
    }

    /// The root ports the hypervisor owns AER of.
    pub fn owned_ports(&self) -> impl Iterator<Item = Bdf> + '_ {
        self.owned.keys().copied()
    }

    /// A hardware-domain read of `width` bytes at `reg` of `bdf` that
    /// returned `physical` from the hardware, as the hardware domain sees
    /// it: an owned root port's capability list skips MSI and MSI-X.
    pub fn patch_read(&self, bdf: Bdf, reg: u16, width: u16, physical: u32) -> u32 {
        match self.owned.get(&bdf) {
            Some(h) if reg < 0x100 => h.patch(reg, width, physical),
            _ => physical,
        }
    }

    /// A hardware-domain write of `value` (`width` bytes at `reg` of `bdf`)
    /// that the overlay did not consume ([`Self::write`]): what to write to
    /// the hardware, or `None` to drop it. Writes into an owned root port's
    /// hidden MSI / MSI-X are dropped; below an owned root port, SERR#
    /// Enable (Command, Bridge Control) and the Device Control reporting
    /// enables stay set, as the AER owner set them.
    pub fn filter_write(
        &self,
        topo: &Topology,
        bdf: Bdf,
        reg: u16,
        width: u16,
        value: u32,
    ) -> Option<u32> {
        if self.owned.is_empty() || reg >= 0x100 {
            return Some(value);
        }
        if let Some(h) = self.owned.get(&bdf)
            && h.hides(reg, width)
        {
            return None;
        }
        let Some(f) = topo.function(bdf) else {
            return Some(value);
        };
        if !root_port_of(topo, bdf).is_some_and(|rp| self.owned.contains_key(&rp)) {
            return Some(value);
        }
        let mut forced = [(COMMAND, COMMAND_SERR), (0, 0), (0, 0)];
        if f.kind.is_bridge() {
            forced[1] = (BRIDGE_CONTROL, BRIDGE_CONTROL_SERR);
        }
        if f.caps.pcie != 0 {
            forced[2] = (u16::from(f.caps.pcie) + PCIE_DEVCTL, DEVCTL_REPORTING);
        }
        let mut value = value;
        for (at, bits) in forced.into_iter().filter(|&(_, bits)| bits != 0) {
            // 16-bit registers: the bytes of `bits` inside this access.
            for (byte, b) in bits.to_le_bytes().into_iter().enumerate() {
                let at = at + byte as u16;
                if (reg..reg + width).contains(&at) {
                    value |= u32::from(b) << (8 * u32::from(at - reg));
                }
            }
        }
        Some(value)
    }
}
