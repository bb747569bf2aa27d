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
            let mut too_big = None;
            let ext = walk_ext_caps(port, bdf, |c| {
                // Registers we access must stay inside the 4 KiB space: an
                // ECAM port would otherwise reach the next function's.
                let size = match c.id {
                    EXT_CAP_ID_AER => AER_CAP_SIZE_ROOT,
                    EXT_CAP_ID_ACS => ACS_CAP_SIZE,
                    EXT_CAP_ID_ARI => ARI_CAP_SIZE,
                    EXT_CAP_ID_SRIOV => SRIOV_CAP_SIZE,
                    _ => 4,
                };
                if c.offset + size > CONFIG_SPACE_SIZE {
                    too_big = Some(c.offset);
                    return true;
                }
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
            });
            match ext {
                // Like Linux: all-ones at 0x100 means no extended config
                // space (e.g. a host bridge that does not decode it), not a
                // vanished function (the standard list just answered).
                Err(CapError::AllOnes { at: EXT_CAP_START }) => {}
                other => {
                    other?;
                }
            }
            if let Some(pointer) = too_big {
                return Err(CapError::OutOfRange {
                    at: pointer,
                    pointer,
                });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One function's config space in an array; other addresses read all-ones.
    struct Array([u8; 4096]);

    impl ConfigPort for Array {
        fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
            if bdf != Bdf::new(0, 0, 0, 0) {
                return u32::MAX;
            }
            let o = offset as usize & 0xffc;
            u32::from_le_bytes([self.0[o], self.0[o + 1], self.0[o + 2], self.0[o + 3]])
        }
        fn write32(&mut self, _: Bdf, _: u16, _: u32) {}
        fn write16(&mut self, _: Bdf, _: u16, _: u16) {}
        fn write8(&mut self, _: Bdf, _: u16, _: u8) {}
    }

    fn space(caps: &[(u16, u8, u8)], ext: &[(u16, u32)]) -> Array {
        let mut a = [0u8; 4096];
        a[STATUS as usize] = STATUS_CAP_LIST as u8;
        a[CAP_PTR as usize] = caps.first().map_or(0, |c| c.0 as u8);
        for &(off, id, next) in caps {
            a[off as usize] = id;
            a[off as usize + 1] = next;
        }
        for &(off, v) in ext {
            a[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
        }
        Array(a)
    }

    const F: Bdf = Bdf::new(0, 0, 0, 0);

    #[test]
    fn finds_capabilities() {
        let mut p = space(
            &[
                (0x40, CAP_ID_PM, 0x50),
                (0x50, CAP_ID_PCIE, 0x60),
                (0x60, CAP_ID_MSIX, 0),
            ],
            &[(0x100, 0x0001 | (0x140 << 20)), (0x140, 0x000d)],
        );
        assert_eq!(find_cap(&mut p, F, CAP_ID_MSIX), Ok(Some(0x60)));
        assert_eq!(find_cap(&mut p, F, CAP_ID_MSI), Ok(None));
        assert_eq!(find_ext_cap(&mut p, F, EXT_CAP_ID_ACS), Ok(Some(0x140)));
        let offs = CapOffsets::scan(&mut p, F).unwrap();
        assert_eq!(
            (offs.pm, offs.pcie, offs.msix, offs.aer, offs.acs),
            (0x40, 0x50, 0x60, 0x100, 0x140)
        );
    }

    #[test]
    fn hostile_lists_end_with_errors() {
        let mut p = space(&[(0x40, 1, 0x50), (0x50, 2, 0x40)], &[]);
        assert_eq!(
            find_cap(&mut p, F, 9),
            Err(CapError::Loop {
                at: 0x51,
                pointer: 0x40
            })
        );
        let mut p = space(&[(0x40, 1, 0x3c)], &[]);
        assert_eq!(
            find_cap(&mut p, F, 9),
            Err(CapError::PointerInHeader {
                at: 0x41,
                pointer: 0x3c
            })
        );
        let mut p = space(&[(0x40, 1, 0x52)], &[]);
        assert_eq!(
            find_cap(&mut p, F, 9),
            Err(CapError::Misaligned {
                at: 0x41,
                pointer: 0x52
            })
        );
        let mut p = space(&[(0x40, 0xff, 0xff)], &[]);
        assert_eq!(find_cap(&mut p, F, 9), Err(CapError::AllOnes { at: 0x40 }));
        let mut p = space(&[], &[(0x100, 1 | (0x80 << 20))]);
        assert_eq!(
            find_ext_cap(&mut p, F, 9),
            Err(CapError::PointerInHeader {
                at: 0x100,
                pointer: 0x80
            })
        );
        let mut p = space(&[], &[(0x100, 1 | (0x142 << 20))]);
        assert_eq!(
            find_ext_cap(&mut p, F, 9),
            Err(CapError::Misaligned {
                at: 0x100,
                pointer: 0x142
            })
        );
        let mut p = space(
            &[],
            &[(0x100, 1 | (0x140 << 20)), (0x140, 2 | (0x100 << 20))],
        );
        assert_eq!(
            find_ext_cap(&mut p, F, 9),
            Err(CapError::Loop {
                at: 0x140,
                pointer: 0x100
            })
        );
        let mut p = space(&[], &[(0x100, 1 | (0x140 << 20)), (0x140, u32::MAX)]);
        assert_eq!(
            find_ext_cap(&mut p, F, 9),
            Err(CapError::AllOnes { at: 0x140 })
        );
        // An absent function.
        assert_eq!(
            find_cap(&mut p, Bdf::new(0, 1, 0, 0), 1),
            Err(CapError::AllOnes { at: STATUS })
        );
    }

    #[test]
    fn capability_past_the_end_of_config_space() {
        let mut p = space(
            &[(0x40, CAP_ID_PCIE, 0)],
            &[(0x100, 0x0010 | (0xfe0 << 20)), (0xfe0, 0x0010)],
        );
        assert_eq!(
            CapOffsets::scan(&mut p, F),
            Err(CapError::OutOfRange {
                at: 0xfe0,
                pointer: 0xfe0
            })
        );
    }

    #[test]
    fn all_ones_extended_space_means_none() {
        let mut p = space(&[(0x40, CAP_ID_PCIE, 0)], &[(0x100, u32::MAX)]);
        let offs = CapOffsets::scan(&mut p, F).unwrap();
        assert_eq!((offs.pcie, offs.aer), (0x40, 0));
    }
}
