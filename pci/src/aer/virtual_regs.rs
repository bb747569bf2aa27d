//! The owner's view of AER: register logic shared by the guests' virtual
//! functions and root ports (`vpci` storage, through [`AerStorage`]) and the
//! standalone [`VirtualAer`] register files (the hardware domain's overlay,
//! [`super::HwdomAer`]).
//!
//! Offsets are relative to the AER capability. Semantics as on hardware:
//! - Uncorrectable / Correctable Status: RW1C; an error sets its bit even
//!   when masked, but a masked error is not signalled (no header log, no
//!   First Error Pointer, nothing in the root port);
//! - Uncorrectable Mask / Severity, Correctable Mask, ECRC enables, Root
//!   Error Command: read-write, honoured by [`record_function_error`]
//!   (severity decides fatal / non-fatal in the virtual view);
//! - Header Log and First Error Pointer: set by the first unmasked
//!   uncorrectable error, kept until the guest clears the status bit the
//!   pointer names;
//! - Root Error Status: first / multiple logic per class, fatal / non-fatal
//!   received, first uncorrectable fatal; RW1C. Bit 7
//!   ([`ROOT_STATUS_HV_RESET`], reserved in the spec) marks that the
//!   hypervisor reset the hierarchy itself because the owner did not; also
//!   RW1C;
//! - Error Source ID: the *virtual* requester id of the first source of each
//!   class, read-only.

use super::{AER_HEADER_LOG, AerEvent, CAP_CTRL_FEP_MASK, COR_BITS, Severity, UNCOR_BITS};
use crate::regs::*;

/// Root Error Status bit 7 (reserved by the spec): the hypervisor performed
/// the recovery reset itself after the deadline. RW1C.
pub const ROOT_STATUS_HV_RESET: u32 = 1 << 7;
/// Root Error Status bits a guest may clear.
pub const ROOT_STATUS_W1C: u32 = 0x7f | ROOT_STATUS_HV_RESET;
/// Default Uncorrectable Severity (spec: DLP, Surprise Down, FCP, Receiver
/// Overflow, Malformed TLP, Internal).
pub const UNCOR_SEVER_DEFAULT: u32 = 0x0046_2030;
/// Default Correctable Mask (Advisory Non-Fatal masked).
pub const COR_MASK_DEFAULT: u32 = 0x2000;
/// Capabilities and Control bits a guest may write (ECRC generation /
/// check enables).
pub const CAP_CTRL_WRITABLE: u32 = 0x140;

/// 32-bit access to the storage of one virtual AER capability, offsets
/// relative to the capability (dword aligned).
pub trait AerStorage {
    fn get(&self, offset: u16) -> u32;
    fn set(&mut self, offset: u16, value: u32);
}

/// An AER capability stored little-endian in a byte slice starting at the
/// capability (`vpci`'s shadows). Out-of-range accesses read 0 and are
/// dropped.
#[derive(Debug)]
pub struct AerBytes<'a> {
    bytes: &'a mut [u8],
}

impl<'a> AerBytes<'a> {
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self { bytes }
    }
}

impl AerStorage for AerBytes<'_> {
    fn get(&self, offset: u16) -> u32 {
        let o = offset as usize;
        self.bytes
            .get(o..o + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn set(&mut self, offset: u16, value: u32) {
        let o = offset as usize;
        if let Some(d) = self.bytes.get_mut(o..o + 4) {
            d.copy_from_slice(&value.to_le_bytes());
        }
    }
}

/// What a function signalled to its root port after the virtual masks and
/// severities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signalled {
    pub correctable: bool,
    pub nonfatal: bool,
    pub fatal: bool,
}

impl Signalled {
    pub const fn any(&self) -> bool {
        self.correctable || self.nonfatal || self.fatal
    }

    /// What the root port gets for an event of a function with no virtual
    /// AER: the physical classification.
    pub const fn from_severity(s: Severity) -> Self {
        Self {
            correctable: matches!(s, Severity::Correctable),
            nonfatal: matches!(s, Severity::NonFatal),
            fatal: matches!(s, Severity::Fatal),
        }
    }
}

/// Records `event` in a function's virtual AER: sets the status bits,
/// logs the header and First Error Pointer for the first unmasked
/// uncorrectable error, and returns what the function signals (unmasked
/// bits, fatal by the *virtual* severity).
pub fn record_function_error(s: &mut impl AerStorage, event: &AerEvent) -> Signalled {
    let mut sig = Signalled::default();
    let cor = event.correctable_status & COR_BITS;
    if cor != 0 {
        s.set(AER_COR_STATUS, s.get(AER_COR_STATUS) | cor);
        sig.correctable = cor & !s.get(AER_COR_MASK) != 0;
    }
    let uncor = event.uncorrectable_status & UNCOR_BITS;
    if cor == 0 && uncor == 0 {
        // Status unknown (an unreachable function, a CPER record without
        // AER info): signal the physical classification, set no bits.
        return Signalled::from_severity(event.severity);
    }
    if event.severity != Severity::Correctable && uncor != 0 {
        let before = s.get(AER_UNCOR_STATUS);
        s.set(AER_UNCOR_STATUS, before | uncor);
        let unmasked = uncor & !s.get(AER_UNCOR_MASK);
        if unmasked != 0 {
            let sev = s.get(AER_UNCOR_SEVER);
            sig.fatal = unmasked & sev != 0;
            sig.nonfatal = unmasked & !sev != 0;
            // Header log: only if no logged error is still pending.
            let cap = s.get(AER_CAP_CTRL);
            let fep = cap & CAP_CTRL_FEP_MASK;
            let logged_pending = before & !s.get(AER_UNCOR_MASK) & (1 << fep) != 0;
            if !logged_pending {
                let first = match event.first_error_pointer {
                    Some(p) if (p as u32) < 32 && unmasked & (1 << p) != 0 => p as u32,
                    _ => unmasked.trailing_zeros(),
                };
                s.set(AER_CAP_CTRL, (cap & !CAP_CTRL_FEP_MASK) | first);
                for (i, h) in event.header_log.iter().enumerate() {
                    s.set(AER_HEADER_LOG + 4 * i as u16, *h);
                }
            }
        }
    }
    sig
}

/// Correctable Internal Error (AER correctable status bit 14).
pub const COR_INTERNAL: u32 = 1 << 14;
/// Uncorrectable Internal Error (AER uncorrectable status bit 22).
pub const UNCOR_INTERNAL: u32 = 1 << 22;

/// The event a guest sees of an error from a device without an AER
/// capability (its virtual one is ours): the root port knows only the
/// class, so the status says "internal error" of that class, the one bit
/// that claims no particular cause.
pub fn synthesize_status(event: &AerEvent) -> AerEvent {
    let mut e = *event;
    if e.correctable_status == 0 && e.uncorrectable_status == 0 {
        match e.severity {
            Severity::Correctable => e.correctable_status = COR_INTERNAL,
            Severity::NonFatal | Severity::Fatal => {
                e.uncorrectable_status = UNCOR_INTERNAL;
                e.first_error_pointer = Some(22);
            }
        }
    }
    e
}

/// Signals a function's error to a root port's virtual AER: Root Error
/// Status with first / multiple logic, the Error Source ID (the source's
/// *virtual* requester id). Returns whether the root port's interrupt is to
/// be raised (Root Error Command enables one of the signalled kinds).
pub fn signal_root(s: &mut impl AerStorage, sig: Signalled, virtual_source: u16) -> bool {
    let mut st = s.get(AER_ROOT_STATUS);
    let mut src = s.get(AER_ERROR_SOURCE);
    let rid = virtual_source as u32;
    if sig.correctable {
        if st & AER_ROOT_STATUS_COR != 0 {
            st |= AER_ROOT_STATUS_MULTI_COR;
        } else {
            st |= AER_ROOT_STATUS_COR;
            src = (src & 0xffff_0000) | rid;
        }
    }
    if sig.fatal || sig.nonfatal {
        if st & AER_ROOT_STATUS_UNCOR != 0 {
            st |= AER_ROOT_STATUS_MULTI_UNCOR;
        } else {
            st |= AER_ROOT_STATUS_UNCOR;
            src = (src & 0xffff) | (rid << 16);
            if sig.fatal {
                st |= AER_ROOT_STATUS_FIRST_FATAL;
            }
        }
        if sig.fatal {
            st |= AER_ROOT_STATUS_FATAL;
        }
        if sig.nonfatal {
            st |= AER_ROOT_STATUS_NONFATAL;
        }
    }
    s.set(AER_ROOT_STATUS, st);
    s.set(AER_ERROR_SOURCE, src);
    let cmd = s.get(AER_ROOT_COMMAND);
    (sig.correctable && cmd & 1 != 0)
        || (sig.nonfatal && cmd & 2 != 0)
        || (sig.fatal && cmd & 4 != 0)
}

/// Whether the root port's (level) interrupt is asserted: a status bit of
/// a kind whose Root Error Command enable is set. The shell lowers the
/// virtual INTx when this turns false (the guest cleared Root Error Status
/// or the enables).
pub fn root_interrupt_asserted(s: &impl AerStorage) -> bool {
    let st = s.get(AER_ROOT_STATUS);
    let cmd = s.get(AER_ROOT_COMMAND);
    (st & AER_ROOT_STATUS_COR != 0 && cmd & 1 != 0)
        || (st & AER_ROOT_STATUS_NONFATAL != 0 && cmd & 2 != 0)
        || (st & AER_ROOT_STATUS_FATAL != 0 && cmd & 4 != 0)
}

/// Marks a hypervisor-performed recovery reset on a root port's virtual
/// AER: [`ROOT_STATUS_HV_RESET`] and the fatal bits stay set until the
/// guest clears them.
pub fn mark_hypervisor_reset(s: &mut impl AerStorage) {
    let st = s.get(AER_ROOT_STATUS);
    s.set(
        AER_ROOT_STATUS,
        st | ROOT_STATUS_HV_RESET | AER_ROOT_STATUS_UNCOR | AER_ROOT_STATUS_FATAL,
    );
}

/// Dwords of a root port's AER capability (0x00..0x3c).
const DWORDS: usize = 15;

/// A standalone virtual AER capability with guest-write semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualAer {
    regs: [u32; DWORDS],
    root: bool,
}

impl AerStorage for VirtualAer {
    fn get(&self, offset: u16) -> u32 {
        self.regs.get(offset as usize / 4).copied().unwrap_or(0)
    }
    fn set(&mut self, offset: u16, value: u32) {
        if let Some(r) = self.regs.get_mut(offset as usize / 4) {
            *r = value;
        }
    }
}

impl VirtualAer {
    /// An endpoint's AER (registers 0x00..0x2c), at reset.
    pub fn endpoint() -> Self {
        let mut v = Self {
            regs: [0; DWORDS],
            root: false,
        };
        v.set(0, EXT_CAP_ID_AER as u32 | (2 << 16));
        v.set(AER_UNCOR_SEVER, UNCOR_SEVER_DEFAULT);
        v.set(AER_COR_MASK, COR_MASK_DEFAULT);
        v
    }

    /// A root port's AER (with Root Error Command / Status, Error Source
    /// ID), at reset.
    pub fn root_port() -> Self {
        let mut v = Self::endpoint();
        v.root = true;
        v
    }

    pub fn is_root_port(&self) -> bool {
        self.root
    }

    /// Size in bytes of the capability.
    pub fn size(&self) -> u16 {
        if self.root {
            AER_CAP_SIZE_ROOT
        } else {
            AER_CAP_SIZE
        }
    }

    /// (writable, write-1-to-clear) bits of the dword at `offset`.
    fn masks(&self, offset: u16) -> (u32, u32) {
        match offset {
            AER_UNCOR_STATUS => (0, UNCOR_BITS),
            AER_UNCOR_MASK | AER_UNCOR_SEVER => (UNCOR_BITS, 0),
            AER_COR_STATUS => (0, COR_BITS),
            AER_COR_MASK => (COR_BITS, 0),
            AER_CAP_CTRL => (CAP_CTRL_WRITABLE, 0),
            AER_ROOT_COMMAND if self.root => (super::ROOT_COMMAND_ENABLES, 0),
            AER_ROOT_STATUS if self.root => (0, ROOT_STATUS_W1C),
            _ => (0, 0),
        }
    }

    /// A read of `width` (1, 2, 4) bytes at `offset` from the capability;
    /// outside the capability reads 0.
    pub fn read(&self, offset: u16, width: u16) -> u32 {
        if offset >= self.size() {
            return 0;
        }
        let dword = self.get(offset & !3);
        let shift = (offset & 3) * 8;
        match width {
            1 => (dword >> shift) & 0xff,
            2 => (dword >> shift) & 0xffff,
            _ => dword,
        }
    }

    /// A guest write of `width` bytes at `offset`: read-write bits take the
    /// value, RW1C bits clear where 1 is written, the rest is read-only.
    pub fn write(&mut self, offset: u16, width: u16, value: u32) {
        if offset >= self.size() {
            return;
        }
        let base = offset & !3;
        let shift = (offset & 3) * 8;
        let lanes = match width {
            1 => 0xffu32,
            2 => 0xffff,
            _ => u32::MAX,
        }
        .checked_shl(shift as u32)
        .unwrap_or(0);
        let v = value.checked_shl(shift as u32).unwrap_or(0) & lanes;
        let (wm, w1c) = self.masks(base);
        let cur = self.get(base);
        let new = ((cur & !(wm & lanes)) | (v & wm)) & !(v & w1c);
        self.set(base, new);
    }

    /// Records an event of this function ([`record_function_error`]).
    pub fn record(&mut self, event: &AerEvent) -> Signalled {
        record_function_error(self, event)
    }

    /// Root port only: signals `sig` from the function at `virtual_source`
    /// ([`signal_root`]); returns whether to raise the interrupt.
    pub fn signal(&mut self, sig: Signalled, virtual_source: u16) -> bool {
        self.root && signal_root(self, sig, virtual_source)
    }

    /// Root port only: records `event` in `function` (if it has a virtual
    /// AER; otherwise the physical classification is used) and signals it
    /// with the function's virtual requester id. Returns whether to raise
    /// the root port's interrupt.
    pub fn deliver(
        &mut self,
        event: &AerEvent,
        function: Option<&mut VirtualAer>,
        virtual_source: u16,
    ) -> bool {
        let sig = match function {
            Some(f) => f.record(event),
            None => Signalled::from_severity(event.severity),
        };
        self.signal(sig, virtual_source)
    }

    /// Root port only: whether its interrupt is asserted.
    pub fn interrupt_asserted(&self) -> bool {
        self.root && root_interrupt_asserted(self)
    }
}

/// Where [`crate::vpci::GuestBus::aer_deliver`] put an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestDelivery {
    /// The unit, i.e. the virtual root port's index.
    pub unit: usize,
    /// The virtual root port (bus 0, device `unit + 1`).
    pub root_port: crate::addr::Bdf,
    /// The source's virtual address, as in the virtual Error Source ID.
    pub virtual_source: crate::addr::Bdf,
    /// Raise the virtual root port's INTx now.
    pub interrupt: bool,
}
