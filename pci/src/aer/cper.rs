//! Firmware-first AER: ACPI GHES Generic Error Status Blocks and the UEFI
//! CPER PCI Express Error Section (UEFI 2.10 §N.2.7), decoded with bounds
//! checks (garbage gives an error, never a panic) into [`AerEvent`]s.
//!
//! Generic Error Status Block (ACPI 6.5 §18.3.2.7.1): Block Status (u32:
//! bit 0 uncorrectable valid, 1 correctable valid, 2/3 multiple, 13:4 entry
//! count), Raw Data Offset, Raw Data Length, Data Length, Error Severity
//! (u32 each), then Data Length bytes of Generic Error Data Entries: Section
//! Type (GUID), Error Severity (u32), Revision (u16), Validation Bits (u8:
//! 0 FRU id, 1 FRU text, 2 timestamp), Flags (u8: bit 2 = reset,
//! `CPER_SEC_RESET`), Error Data Length (u32), FRU Id (16), FRU Text (20),
//! then, for revision ≥ 0x300, a Timestamp (u64), then the section.

use super::{AerEvent, Severity};
use crate::addr::Bdf;
use crate::regs::*;

/// A GUID as stored in ACPI/UEFI tables (first three fields little endian).
pub type Guid = [u8; 16];

/// CPER PCI Express Error Section type d995e954-bbc1-430f-ad91-b44dcb3c6f35.
pub const PCIE_SECTION_GUID: Guid = [
    0x54, 0xe9, 0x95, 0xd9, 0xc1, 0xbb, 0x0f, 0x43, 0xad, 0x91, 0xb4, 0x4d, 0xcb, 0x3c, 0x6f, 0x35,
];

/// GHES / CPER error severities.
pub const SEV_RECOVERABLE: u32 = 0;
pub const SEV_FATAL: u32 = 1;
pub const SEV_CORRECTED: u32 = 2;
pub const SEV_INFORMATIONAL: u32 = 3;
/// Generic Error Data Entry flag: the error caused a reset; treat as fatal.
pub const FLAG_RESET: u8 = 1 << 2;

/// Size of the Generic Error Status Block header.
pub const STATUS_BLOCK_HEADER: usize = 20;
/// Size of a Generic Error Data Entry header before revision 0x300.
pub const ENTRY_HEADER: usize = 64;
/// ... and from revision 0x300 (with the timestamp).
pub const ENTRY_HEADER_V3: usize = 72;
/// Size of the PCI Express Error Section.
pub const PCIE_SECTION_LEN: usize = 208;

/// PCIe section validation bits.
pub const VALID_PORT_TYPE: u64 = 1 << 0;
pub const VALID_VERSION: u64 = 1 << 1;
pub const VALID_COMMAND_STATUS: u64 = 1 << 2;
pub const VALID_DEVICE_ID: u64 = 1 << 3;
pub const VALID_SERIAL: u64 = 1 << 4;
pub const VALID_BRIDGE: u64 = 1 << 5;
pub const VALID_CAPABILITY: u64 = 1 << 6;
pub const VALID_AER_INFO: u64 = 1 << 7;

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CperError {
    /// The buffer ends before the structure does.
    Truncated { needed: usize, have: usize },
    /// Block Status is 0: no valid error (the firmware has not filled it).
    Empty,
    /// A length field points outside the block.
    BadLength,
    /// The section is not a PCI Express Error Section.
    NotPcie,
    /// The section does not say which function (device id not valid).
    NoDeviceId,
}

fn u8_at(b: &[u8], o: usize) -> Option<u8> {
    b.get(o).copied()
}
fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    let s = b.get(o..o.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    let s = b.get(o..o.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u32_at(b, o)? as u64 | (u32_at(b, o.checked_add(4)?)? as u64) << 32)
}

fn need(b: &[u8], n: usize) -> Result<(), CperError> {
    if b.len() < n {
        Err(CperError::Truncated {
            needed: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

/// The Generic Error Status Block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusBlock<'a> {
    pub block_status: u32,
    pub raw_data_offset: u32,
    pub raw_data_length: u32,
    pub data_length: u32,
    pub severity: u32,
    /// The Generic Error Data Entries (`data_length` bytes).
    data: &'a [u8],
}

/// One Generic Error Data Entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataEntry<'a> {
    pub section_type: Guid,
    pub severity: u32,
    pub revision: u16,
    pub validation: u8,
    pub flags: u8,
    pub fru_id: Guid,
    pub fru_text: [u8; 20],
    pub timestamp: Option<u64>,
    /// The section (Error Data Length bytes).
    pub data: &'a [u8],
}

/// Decodes a Generic Error Status Block. `block` is the memory the
/// firmware's Error Status Address points to (the block length from HEST).
pub fn parse_status_block(block: &[u8]) -> Result<StatusBlock<'_>, CperError> {
    need(block, STATUS_BLOCK_HEADER)?;
    let rd = |o| u32_at(block, o).unwrap_or(0);
    let block_status = rd(0);
    if block_status == 0 {
        return Err(CperError::Empty);
    }
    let data_length = rd(12);
    let end = STATUS_BLOCK_HEADER
        .checked_add(data_length as usize)
        .ok_or(CperError::BadLength)?;
    let data = block
        .get(STATUS_BLOCK_HEADER..end)
        .ok_or(CperError::Truncated {
            needed: end,
            have: block.len(),
        })?;
    Ok(StatusBlock {
        block_status,
        raw_data_offset: rd(4),
        raw_data_length: rd(8),
        data_length,
        severity: rd(16),
        data,
    })
}

impl<'a> StatusBlock<'a> {
    /// The data entries; a malformed one ends the iteration with its error.
    pub fn entries(&self) -> Entries<'a> {
        Entries {
            rest: self.data,
            failed: false,
        }
    }
}

/// Iterator over Generic Error Data Entries.
#[derive(Clone, Debug)]
pub struct Entries<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<DataEntry<'a>, CperError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = parse_entry(self.rest);
        match r {
            Ok((e, used)) => {
                self.rest = self.rest.get(used..).unwrap_or(&[]);
                Some(Ok(e))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn guid_at(b: &[u8], o: usize) -> Guid {
    let mut g = [0u8; 16];
    if let Some(s) = b.get(o..o + 16) {
        g.copy_from_slice(s);
    }
    g
}

/// Decodes one entry at the start of `b`; returns it and the bytes used.
pub fn parse_entry(b: &[u8]) -> Result<(DataEntry<'_>, usize), CperError> {
    need(b, ENTRY_HEADER)?;
    let revision = u16_at(b, 20).unwrap_or(0);
    let header = if revision >= 0x300 {
        ENTRY_HEADER_V3
    } else {
        ENTRY_HEADER
    };
    need(b, header)?;
    let validation = u8_at(b, 22).unwrap_or(0);
    let len = u32_at(b, 24).unwrap_or(0) as usize;
    let end = header.checked_add(len).ok_or(CperError::BadLength)?;
    let data = b.get(header..end).ok_or(CperError::Truncated {
        needed: end,
        have: b.len(),
    })?;
    let mut fru_text = [0u8; 20];
    if let Some(s) = b.get(44..64) {
        fru_text.copy_from_slice(s);
    }
    Ok((
        DataEntry {
            section_type: guid_at(b, 0),
            severity: u32_at(b, 16).unwrap_or(0),
            revision,
            validation,
            flags: u8_at(b, 23).unwrap_or(0),
            fru_id: guid_at(b, 28),
            fru_text,
            timestamp: (header == ENTRY_HEADER_V3 && validation & 4 != 0)
                .then(|| u64_at(b, 64).unwrap_or(0)),
            data,
        },
        end,
    ))
}

/// The PCI Express Error Section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PcieErrorSection {
    pub validation: u64,
    pub port_type: u32,
    /// (major, minor) BCD.
    pub version: (u8, u8),
    pub command: u16,
    pub status: u16,
    pub vendor_id: u16,
    pub device_id: u16,
    pub class_code: [u8; 3],
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
    pub secondary_bus: u8,
    pub slot: u16,
    pub serial: u64,
    pub bridge_secondary_status: u16,
    pub bridge_control: u16,
    /// The PCIe capability structure (60 bytes).
    pub capability: [u8; 60],
    /// The AER extended capability registers (96 bytes; offsets as in
    /// config space from the capability).
    pub aer: [u8; 96],
}

impl PcieErrorSection {
    /// Decodes a section (the entry's data).
    pub fn parse(b: &[u8]) -> Result<Self, CperError> {
        need(b, PCIE_SECTION_LEN)?;
        let r16 = |o| u16_at(b, o).unwrap_or(0);
        let r8 = |o| u8_at(b, o).unwrap_or(0);
        let mut capability = [0u8; 60];
        if let Some(s) = b.get(52..112) {
            capability.copy_from_slice(s);
        }
        let mut aer = [0u8; 96];
        if let Some(s) = b.get(112..208) {
            aer.copy_from_slice(s);
        }
        Ok(Self {
            validation: u64_at(b, 0).unwrap_or(0),
            port_type: u32_at(b, 8).unwrap_or(0),
            version: (r8(13), r8(12)),
            command: r16(16),
            status: r16(18),
            vendor_id: r16(24),
            device_id: r16(26),
            class_code: [r8(28), r8(29), r8(30)],
            function: r8(31),
            device: r8(32),
            segment: r16(33),
            bus: r8(35),
            secondary_bus: r8(36),
            slot: r16(37) >> 3,
            serial: u64_at(b, 40).unwrap_or(0),
            bridge_secondary_status: r16(48),
            bridge_control: r16(50),
            capability,
            aer,
        })
    }

    /// The function the error is about, if the record says.
    pub fn source(&self) -> Option<Bdf> {
        (self.validation & VALID_DEVICE_ID != 0).then(|| {
            Bdf::new(
                self.segment,
                self.bus,
                self.device & 0x1f,
                self.function & 7,
            )
        })
    }

    /// An AER register from the record (offset from the capability), if
    /// the AER info is valid.
    pub fn aer_reg(&self, offset: u16) -> Option<u32> {
        if self.validation & VALID_AER_INFO == 0 {
            return None;
        }
        u32_at(&self.aer, offset as usize)
    }

    /// The event this section describes, under an entry of `entry_severity`
    /// and `entry_flags`. Severity: fatal if the entry says fatal or
    /// [`FLAG_RESET`], or the record's unmasked uncorrectable status has a
    /// bit its severity register makes fatal; corrected if the entry says so
    /// (or the AER info shows only correctable status); otherwise
    /// non-fatal.
    pub fn to_event(
        &self,
        entry_severity: u32,
        entry_flags: u8,
        at_ns: u64,
    ) -> Result<AerEvent, CperError> {
        let source = self.source().ok_or(CperError::NoDeviceId)?;
        let mut ev = AerEvent::new(source, Severity::NonFatal, at_ns);
        ev.firmware_first = true;
        let mut aer_fatal = false;
        let mut aer_uncor = false;
        let mut aer_cor = false;
        if self.validation & VALID_AER_INFO != 0 {
            let r = |o| self.aer_reg(o).unwrap_or(0);
            let uncor = r(AER_UNCOR_STATUS) & !r(AER_UNCOR_MASK);
            let cor = r(AER_COR_STATUS) & !r(AER_COR_MASK);
            aer_uncor = uncor != 0;
            aer_cor = cor != 0;
            aer_fatal = uncor & r(AER_UNCOR_SEVER) != 0;
            ev.uncorrectable_status = uncor;
            ev.correctable_status = cor;
            if aer_uncor {
                ev.first_error_pointer = Some((r(AER_CAP_CTRL) & super::CAP_CTRL_FEP_MASK) as u8);
                for (i, h) in ev.header_log.iter_mut().enumerate() {
                    *h = r(super::AER_HEADER_LOG + 4 * i as u16);
                }
            }
        }
        ev.severity = if entry_severity == SEV_FATAL || entry_flags & FLAG_RESET != 0 || aer_fatal {
            Severity::Fatal
        } else if entry_severity == SEV_CORRECTED || (aer_cor && !aer_uncor) {
            Severity::Correctable
        } else {
            Severity::NonFatal
        };
        match ev.severity {
            Severity::Correctable => ev.uncorrectable_status = 0,
            _ => ev.correctable_status = 0,
        }
        if ev.severity == Severity::Correctable {
            ev.first_error_pointer = None;
            ev.header_log = [0; 4];
        }
        Ok(ev)
    }
}

/// Every PCIe event of a Generic Error Status Block, in order: `Ok` events
/// and `Err` for entries that could not be decoded (log them); other
/// section types are skipped. Bounded by the block's size.
pub fn events(
    block: &[u8],
    at_ns: u64,
) -> Result<impl Iterator<Item = Result<AerEvent, CperError>> + '_, CperError> {
    let sb = parse_status_block(block)?;
    Ok(sb.entries().filter_map(move |e| match e {
        Err(e) => Some(Err(e)),
        Ok(e) if e.section_type != PCIE_SECTION_GUID => None,
        Ok(e) => Some(
            PcieErrorSection::parse(e.data).and_then(|s| s.to_event(e.severity, e.flags, at_ns)),
        ),
    }))
}
