//! Defensive walkers for the capability and extended capability lists.
//!
//! Config space is hostile input: a list may loop, point back into the
//! header, be misaligned, or read all-ones because the function vanished.
//! Every such case ends the walk with a [`CapError`]; walks are bounded and
//! never allocate.

use crate::addr::Bdf;
use crate::port::ConfigPort;
use crate::regs::*;

/// Why a capability walk stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapError {
    /// A read returned all-ones: the function is gone or not ready.
    AllOnes { at: u16 },
    /// A pointer points into the header (standard: below 0x40; extended: below 0x100).
    PointerInHeader { at: u16, pointer: u16 },
    /// A pointer is not dword aligned.
    Misaligned { at: u16, pointer: u16 },
    /// A pointer points past the end of its config space area.
    OutOfRange { at: u16, pointer: u16 },
    /// A pointer points to a capability already visited.
    Loop { at: u16, pointer: u16 },
}

/// A capability found by a walk: its id and the offset of its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap<Id> {
    pub id: Id,
    pub offset: u16,
}

/// Walks the standard capability list, calling `visit` for each capability
/// until it returns `true` (found) or the list ends. Returns the capability
/// `visit` stopped at, if any.
pub fn walk_caps<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    mut visit: impl FnMut(Cap<u8>) -> bool,
) -> Result<Option<Cap<u8>>, CapError> {
    let status = port.read16(bdf, STATUS);
    if status == 0xffff {
        return Err(CapError::AllOnes { at: STATUS });
    }
    if status & STATUS_CAP_LIST == 0 {
        return Ok(None);
    }
    let mut at = CAP_PTR;
    let mut pointer = port.read8(bdf, CAP_PTR) as u16;
    // One bit per dword slot of 0x40..0x100: 48 slots.
    let mut seen: u64 = 0;
    while pointer != 0 {
        if pointer < CAP_START {
            return Err(CapError::PointerInHeader { at, pointer });
        }
        if pointer & 3 != 0 {
            return Err(CapError::Misaligned { at, pointer });
        }
        if pointer >= CAP_END {
            return Err(CapError::OutOfRange { at, pointer });
        }
        let slot = (pointer - CAP_START) / 4;
        if seen & (1 << slot) != 0 {
            return Err(CapError::Loop { at, pointer });
        }
        seen |= 1 << slot;
        let header = port.read16(bdf, pointer);
        if header == 0xffff {
            return Err(CapError::AllOnes { at: pointer });
        }
        let cap = Cap {
            id: header as u8,
            offset: pointer,
        };
        if visit(cap) {
            return Ok(Some(cap));
        }
        at = pointer + 1;
        pointer = header >> 8;
    }
    Ok(None)
}

/// Walks the extended capability list (PCIe functions only), like [`walk_caps`].
pub fn walk_ext_caps<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    mut visit: impl FnMut(Cap<u16>) -> bool,
) -> Result<Option<Cap<u16>>, CapError> {
    let mut at = EXT_CAP_START;
    let mut pointer = EXT_CAP_START;
    // One bit per dword slot of 0x100..0x1000: 960 slots.
    let mut seen = [0u64; 15];
    loop {
        let slot = ((pointer - EXT_CAP_START) / 4) as usize;
        let (word, bit) = (slot / 64, slot % 64);
        match seen.get_mut(word) {
            Some(w) if *w & (1 << bit) != 0 => return Err(CapError::Loop { at, pointer }),
            Some(w) => *w |= 1 << bit,
            None => return Err(CapError::OutOfRange { at, pointer }),
        }
        let header = port.read32(bdf, pointer);
        if header == u32::MAX {
            return Err(CapError::AllOnes { at: pointer });
        }
        // An empty first header means "no extended capabilities".
        if header == 0 && pointer == EXT_CAP_START {
            return Ok(None);
        }
        let cap = Cap {
            id: header as u16,
            offset: pointer,
        };
        if cap.id != 0 && visit(cap) {
            return Ok(Some(cap));
        }
        let next = (header >> 20) as u16;
        if next == 0 {
            return Ok(None);
        }
        if next < EXT_CAP_START {
            return Err(CapError::PointerInHeader {
                at: pointer,
                pointer: next,
            });
        }
        if next & 3 != 0 {
            return Err(CapError::Misaligned {
                at: pointer,
                pointer: next,
            });
        }
        at = pointer;
        pointer = next;
    }
}

/// Offset of the first standard capability with `id`.
pub fn find_cap<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    id: u8,
) -> Result<Option<u16>, CapError> {
    Ok(walk_caps(port, bdf, |c| c.id == id)?.map(|c| c.offset))
}

/// Offset of the first extended capability with `id`.
pub fn find_ext_cap<P: ConfigPort + ?Sized>(
    port: &mut P,
    bdf: Bdf,
    id: u16,
) -> Result<Option<u16>, CapError> {
    Ok(walk_ext_caps(port, bdf, |c| c.id == id)?.map(|c| c.offset))
}

/// Offsets of the capabilities the tracker cares about, from one walk of
/// each list. Zero means absent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapOffsets {
    pub pm: u8,
    pub msi: u8,
    pub pcie: u8,
    pub msix: u8,
    pub af: u8,
    pub aer: u16,
    pub acs: u16,
    pub ari: u16,
    pub sriov: u16,
}

impl CapOffsets {
    /// Walks both lists. The extended list is only walked for PCIe functions:
    /// conventional functions have no extended config space.
    pub fn scan<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf) -> Result<Self, CapError> {
        let mut found = Self::default();
        walk_caps(port, bdf, |c| {
            // Offsets are below 0x100 by construction of the walk.
            let off = c.offset as u8;
            let slot = match c.id {
                CAP_ID_PM => &mut found.pm,
                CAP_ID_MSI => &mut found.msi,
                CAP_ID_PCIE => &mut found.pcie,
                CAP_ID_MSIX => &mut found.msix,
                CAP_ID_AF => &mut found.af,
                _ => return false,
            };
            if *slot == 0 {
                *slot = off;
            }
            false
        })?;
        if found.pcie != 0 {
            walk_ext_caps(port, bdf, |c| {
                let slot = match c.id {
                    EXT_CAP_ID_AER => &mut found.aer,
                    EXT_CAP_ID_ACS => &mut found.acs,
                    EXT_CAP_ID_ARI => &mut found.ari,
                    EXT_CAP_ID_SRIOV => &mut found.sriov,
                    _ => return false,
                };
                if *slot == 0 {
                    *slot = c.offset;
                }
                false
            })?;
        }
        Ok(found)
    }
}
