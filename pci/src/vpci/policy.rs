//! The per-register policy of an assigned function's virtual config space,
//! as data: tables of (offset, length, policy) for the type 0 header and each
//! capability the guest may see, relative to the capability's start. A
//! function's rule list is built from them once, at construction, and both
//! the read and the write path look a register up in it.
//!
//! Rules cover 1, 2 or 4 naturally aligned bytes, so a naturally aligned
//! access of at most 4 bytes meets at most 4 rules, and the part of an
//! access inside one rule is itself naturally aligned (it can be passed to
//! hardware as one access of that width).

use crate::regs::*;

/// How a register behaves for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Reads and writes reach the physical register.
    PassThrough,
    /// Reads reach the physical register; writes are dropped.
    ReadOnly,
    /// Reads reach the physical register; writes reach it only for the
    /// RW1C bits of `mask` (status bits of the function's own), other bits
    /// written as 0.
    W1c { mask: u32 },
    /// A virtual register in the function's shadow: `wmask` bits are
    /// writable, `w1c` bits are cleared by writing 1, `phys` bits are read
    /// live from the physical register (read-only). Other read-only bits
    /// hold what the physical register had at construction.
    Emulated { wmask: u32, w1c: u32, phys: u32 },
    /// Emulated with side effects, by dedicated code.
    Special(Special),
    /// Reads 0; writes are dropped.
    Hidden,
}

/// Emulated registers with side effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// Command: I/O, Memory, Bus Master, Parity, SERR, INTx Disable are
    /// virtual; Bus Master is mirrored to the physical register; Memory and
    /// I/O drive BAR mappings.
    Command,
    /// BAR n (a 64-bit BAR's upper half is its own slot, n + 1).
    Bar(u8),
    /// Expansion ROM BAR.
    Rom,
    /// PCIe Device Control: error reporting enables virtual, the rest read
    /// from hardware (read-only), Initiate FLR emits an effect and reads 0.
    DevCtl,
    /// Advanced Features Control: Initiate FLR emits an effect, reads 0.
    AfCtrl,
    /// MSI Message Control: Enable and Multiple Message Enable virtual.
    MsiControl,
    /// MSI-X Message Control: Enable and Function Mask virtual.
    MsixControl,
}

/// One register: `len` bytes (1, 2 or 4) at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub offset: u16,
    pub len: u16,
    pub policy: Policy,
}

const fn rule(offset: u16, len: u16, policy: Policy) -> Rule {
    Rule {
        offset,
        len,
        policy,
    }
}

const fn emu(wmask: u32) -> Policy {
    Policy::Emulated {
        wmask,
        w1c: 0,
        phys: 0,
    }
}

/// A capability's ID and Next bytes: virtual (the chain skips hidden ones).
pub const CAP_HEADER: Rule = rule(0, 2, emu(0));

/// Command bits the guest may set (virtual): I/O, Memory, Bus Master,
/// Parity Error Response, SERR# Enable, Interrupt Disable.
pub const COMMAND_VIRTUAL: u16 = 0x0547;
/// Status bits that are RW1C on hardware (parity, aborts, SERR).
pub const STATUS_W1C: u32 = 0xf900;

/// Type 0 header.
pub const HEADER: [Rule; 24] = [
    rule(VENDOR_ID, 4, Policy::ReadOnly), // vendor, device
    rule(COMMAND, 2, Policy::Special(Special::Command)),
    rule(STATUS, 2, Policy::W1c { mask: STATUS_W1C }),
    rule(CLASS_REVISION, 4, Policy::ReadOnly),
    rule(0x0c, 1, emu(0xff)),      // cache line size: storage
    rule(0x0d, 1, Policy::Hidden), // latency timer: 0 on PCIe
    rule(HEADER_TYPE, 1, emu(0)),  // multi-function bit of the virtual slot
    rule(0x0f, 1, Policy::Hidden), // BIST: a self test may reset the device
    rule(BAR0, 4, Policy::Special(Special::Bar(0))),
    rule(BAR0 + 4, 4, Policy::Special(Special::Bar(1))),
    rule(BAR0 + 8, 4, Policy::Special(Special::Bar(2))),
    rule(BAR0 + 12, 4, Policy::Special(Special::Bar(3))),
    rule(BAR0 + 16, 4, Policy::Special(Special::Bar(4))),
    rule(BAR0 + 20, 4, Policy::Special(Special::Bar(5))),
    rule(0x28, 4, Policy::ReadOnly), // CardBus CIS pointer
    rule(0x2c, 4, Policy::ReadOnly), // subsystem vendor and id
    rule(ROM_BAR, 4, Policy::Special(Special::Rom)),
    rule(CAP_PTR, 1, emu(0)), // first visible capability
    rule(0x35, 1, Policy::Hidden),
    rule(0x36, 2, Policy::Hidden),
    rule(0x38, 4, Policy::Hidden),
    rule(INTERRUPT_LINE, 1, emu(0xff)), // storage for the guest's OS
    rule(INTERRUPT_PIN, 1, Policy::ReadOnly),
    rule(0x3e, 2, Policy::ReadOnly), // min grant, max latency
];

/// Power management: the power state is virtual (a physical D3hot→D0
/// transition would reset the device behind the hypervisor's back), PME
/// status reads 0.
pub const PM: [Rule; 4] = [
    CAP_HEADER,
    rule(PM_PMC, 2, Policy::ReadOnly),
    rule(
        PM_CTRL,
        2,
        Policy::Emulated {
            wmask: 0x0103,
            w1c: 0x8000,
            phys: PM_CTRL_NO_SOFT_RESET as u32,
        },
    ),
    rule(PM_CTRL + 2, 2, Policy::ReadOnly),
];

/// PCI Express capability: Device Control special, Device Status error bits
/// W1C through, everything else read-only from hardware (payload sizes,
/// ASPM, completion timeouts stay as the hardware domain set them).
pub const PCIE: [Rule; 3] = [
    CAP_HEADER,
    rule(PCIE_DEVCTL, 2, Policy::Special(Special::DevCtl)),
    rule(PCIE_DEVSTA, 2, Policy::W1c { mask: 0x000f }),
];

/// MSI-X capability: Message Control's Enable and Function Mask virtual;
/// table and PBA locations read-only.
pub const MSIX: [Rule; 4] = [
    CAP_HEADER,
    rule(MSIX_FLAGS, 2, Policy::Special(Special::MsixControl)),
    rule(MSIX_TABLE, 4, Policy::ReadOnly),
    rule(MSIX_PBA, 4, Policy::ReadOnly),
];

/// MSI Message Control bits the guest may write: Enable, Multiple Message
/// Enable.
pub const MSI_CONTROL_VIRTUAL: u16 = 0x0071;
/// MSI Message Control: per-vector masking capable.
pub const MSI_FLAGS_MASKBIT: u16 = 1 << 8;

/// MSI capability, all of it virtual (the physical MSI stays disabled).
/// Layout depends on 64-bit and per-vector masking: index with
/// `[is_64bit as usize][has_mask as usize]`.
pub const MSI: [[&[Rule]; 2]; 2] = [
    [
        &[
            CAP_HEADER,
            rule(MSI_FLAGS, 2, Policy::Special(Special::MsiControl)),
            rule(0x04, 4, emu(0xffff_fffc)),
            rule(0x08, 2, emu(0xffff)),
            rule(0x0a, 2, emu(0)),
        ],
        &[
            CAP_HEADER,
            rule(MSI_FLAGS, 2, Policy::Special(Special::MsiControl)),
            rule(0x04, 4, emu(0xffff_fffc)),
            rule(0x08, 2, emu(0xffff)),
            rule(0x0a, 2, emu(0)),
            rule(0x0c, 4, emu(u32::MAX)),
            rule(0x10, 4, Policy::Hidden), // pending bits
        ],
    ],
    [
        &[
            CAP_HEADER,
            rule(MSI_FLAGS, 2, Policy::Special(Special::MsiControl)),
            rule(0x04, 4, emu(0xffff_fffc)),
            rule(0x08, 4, emu(u32::MAX)),
            rule(0x0c, 2, emu(0xffff)),
            rule(0x0e, 2, emu(0)),
        ],
        &[
            CAP_HEADER,
            rule(MSI_FLAGS, 2, Policy::Special(Special::MsiControl)),
            rule(0x04, 4, emu(0xffff_fffc)),
            rule(0x08, 4, emu(u32::MAX)),
            rule(0x0c, 2, emu(0xffff)),
            rule(0x0e, 2, emu(0)),
            rule(0x10, 4, emu(u32::MAX)),
            rule(0x14, 4, Policy::Hidden),
        ],
    ],
];

/// Advanced Features: FLR through the effect, capabilities read-only.
pub const AF: [Rule; 4] = [
    CAP_HEADER,
    rule(0x02, 2, Policy::ReadOnly), // length, AF capabilities
    rule(AF_CTRL, 1, Policy::Special(Special::AfCtrl)),
    rule(AF_STATUS, 1, Policy::ReadOnly),
];

/// A vendor-specific capability: readable, not writable.
pub const VENDOR: [Rule; 1] = [CAP_HEADER];

pub use crate::regs::CAP_ID_VENDOR;

/// Standard capabilities the guest sees, with their rules. Every other one
/// (VPD, PCI-X, HyperTransport, Enhanced Allocation, ...) is skipped by the
/// virtual chain and its first dword hidden.
pub fn visible_cap_rules(id: u8, msi_flags: u16) -> Option<&'static [Rule]> {
    Some(match id {
        CAP_ID_PM => &PM,
        CAP_ID_PCIE => &PCIE,
        CAP_ID_MSIX => &MSIX,
        CAP_ID_AF => &AF,
        CAP_ID_VENDOR => &VENDOR,
        CAP_ID_MSI => {
            let is64 = msi_flags & MSI_FLAGS_64BIT != 0;
            let mask = msi_flags & MSI_FLAGS_MASKBIT != 0;
            MSI[is64 as usize][mask as usize]
        }
        _ => return None,
    })
}

/// Where the virtual AER capability lives: the only extended capability a
/// guest sees, at the start of extended space whatever its physical
/// offset, as plain virtual storage (the AER issue drives it).
pub const VAER: u16 = EXT_CAP_START;
pub const AER_UNCOR_BITS: u32 = 0x07ff_f030;
pub const AER_COR_BITS: u32 = 0xf1c1;
pub const AER_UNCOR_SEVER_DEFAULT: u32 = 0x0046_2030;
pub const AER_COR_MASK_DEFAULT: u32 = 0x2000;

/// Virtual AER of an endpoint (relative to [`VAER`]); the rest of extended
/// space is hidden.
pub const AER: [Rule; 11] = [
    rule(0x00, 4, emu(0)), // header: AER, version 2, last
    rule(
        AER_UNCOR_STATUS,
        4,
        Policy::Emulated {
            wmask: 0,
            w1c: AER_UNCOR_BITS,
            phys: 0,
        },
    ),
    rule(AER_UNCOR_MASK, 4, emu(AER_UNCOR_BITS)),
    rule(AER_UNCOR_SEVER, 4, emu(AER_UNCOR_BITS)),
    rule(
        AER_COR_STATUS,
        4,
        Policy::Emulated {
            wmask: 0,
            w1c: AER_COR_BITS,
            phys: 0,
        },
    ),
    rule(AER_COR_MASK, 4, emu(AER_COR_BITS)),
    rule(AER_CAP_CTRL, 4, emu(0x0000_0140)),
    rule(0x1c, 4, emu(0)), // header log
    rule(0x20, 4, emu(0)),
    rule(0x24, 4, emu(0)),
    rule(0x28, 4, emu(0)),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every table: rules of 1, 2 or 4 bytes, naturally aligned, sorted and
    /// disjoint (so an access meets each rule in one aligned piece).
    #[test]
    fn rules_are_aligned_sorted_and_disjoint() {
        let mut tables: alloc::vec::Vec<&[Rule]> =
            alloc::vec![&HEADER, &PM, &PCIE, &MSIX, &AF, &VENDOR, &AER];
        for row in MSI {
            tables.extend(row);
        }
        for t in tables {
            let mut end = 0;
            for r in t {
                assert!(matches!(r.len, 1 | 2 | 4), "{r:?}");
                assert!(r.offset.is_multiple_of(r.len), "{r:?}");
                assert!(r.offset >= end, "{r:?} overlaps");
                end = r.offset + r.len;
            }
        }
        // The header covers 0..0x40 without gaps.
        let covered: u16 = HEADER.iter().map(|r| r.len).sum();
        assert_eq!(covered, 0x40);
    }
}
