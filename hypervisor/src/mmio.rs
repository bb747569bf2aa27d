//! Decoding stage-2 data aborts into typed MMIO accesses, and the per-VM map
//! of emulated MMIO regions.

/// Width of an MMIO access in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Byte = 1,
    Half = 2,
    Word = 4,
    Double = 8,
}

impl Width {
    pub const fn bytes(self) -> u64 {
        self as u64
    }
    /// Mask of the low `8 * bytes` bits.
    pub const fn mask(self) -> u64 {
        u64::MAX >> (64 - 8 * self.bytes())
    }
}

/// One trapped load or store, decoded from ESR_EL2/FAR_EL2/HPFAR_EL2: the
/// address and the syndrome it was checked against, whose fields the
/// accessors read (two registers to pass around, nothing to assemble).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// Intermediate physical address of the access.
    pub ipa: u64,
    /// ESR_EL2's low 32 bits (the syndrome, ISV set; the accessors read
    /// only their fields).
    iss: u32,
}

/// Why a data abort cannot be emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// ISV clear: e.g. a load/store pair or a post-indexed access.
    NoSyndrome,
    /// An external abort or a cache maintenance operation, not an access.
    NotAnAccess,
    /// The fault happened on a stage-1 table walk (S1PTW).
    StageOneWalk,
}

pub mod esr {
    pub const EC_SHIFT: u32 = 26;
    pub const EC_HVC64: u64 = 0x16;
    pub const EC_SMC64: u64 = 0x17;
    pub const EC_IABT_LOW: u64 = 0x20;
    pub const EC_DABT_LOW: u64 = 0x24;

    pub const ISV: u64 = 1 << 24;
    pub const SAS_SHIFT: u32 = 22;
    pub const SSE: u64 = 1 << 21;
    pub const SRT_SHIFT: u32 = 16;
    pub const SF: u64 = 1 << 15;
    pub const AR: u64 = 1 << 14;
    pub const EA: u64 = 1 << 9;
    pub const CM: u64 = 1 << 8;
    pub const S1PTW: u64 = 1 << 7;
    pub const WNR: u64 = 1 << 6;

    pub const fn class(esr: u64) -> u64 {
        (esr >> EC_SHIFT) & 0x3f
    }
}

/// Compute the faulting IPA from HPFAR_EL2 (IPA bits 55:12 in bits 43:4) and
/// the page offset from FAR_EL2.
pub const fn fault_ipa(hpfar: u64, far: u64) -> u64 {
    ((hpfar >> 4) << 12) & 0x00FF_FFFF_FFFF_F000 | (far & 0xfff)
}

impl MmioAccess {
    /// Decode a data abort syndrome (ESR_EL2.ISS) at `ipa`.
    pub fn decode(esr: u64, ipa: u64) -> Result<MmioAccess, DecodeError> {
        if esr & esr::ISV == 0 {
            return Err(DecodeError::NoSyndrome);
        }
        if esr & (esr::EA | esr::CM) != 0 {
            return Err(DecodeError::NotAnAccess);
        }
        if esr & esr::S1PTW != 0 {
            return Err(DecodeError::StageOneWalk);
        }
        Ok(MmioAccess {
            ipa,
            iss: esr as u32,
        })
    }

    /// Width of the access.
    #[inline]
    pub const fn width(&self) -> Width {
        match (self.iss >> esr::SAS_SHIFT) & 3 {
            0 => Width::Byte,
            1 => Width::Half,
            2 => Width::Word,
            _ => Width::Double,
        }
    }

    /// Width of the access in bytes (1, 2, 4 or 8), as a shift: the
    /// compiler then knows it for a power of two.
    #[inline]
    pub const fn bytes(&self) -> u64 {
        1 << ((self.iss >> esr::SAS_SHIFT) & 3)
    }

    /// A store (else a load).
    #[inline]
    pub const fn write(&self) -> bool {
        self.iss as u64 & esr::WNR != 0
    }

    /// Target (load) or source (store) register; 31 is xzr.
    #[inline]
    pub const fn reg(&self) -> u8 {
        ((self.iss >> esr::SRT_SHIFT) & 0x1f) as u8
    }

    /// Sign-extend a load to the register width.
    #[inline]
    pub const fn sign_extend(&self) -> bool {
        self.iss as u64 & esr::SSE != 0
    }

    /// The register is a 64-bit X register (else a W register).
    #[inline]
    pub const fn sixty_four(&self) -> bool {
        self.iss as u64 & esr::SF != 0
    }

    /// Load-acquire / store-release (no emulated device orders accesses
    /// differently: the trap itself is a barrier).
    #[inline]
    #[allow(dead_code)]
    pub const fn acquire_release(&self) -> bool {
        self.iss as u64 & esr::AR != 0
    }

    /// The value a load returns into its register, given the `width`-sized
    /// value read from the device: sign-extended if asked, truncated to 32
    /// bits for a W register.
    pub fn load_result(&self, raw: u64) -> u64 {
        let raw = raw & self.width().mask();
        let value = if self.sign_extend() && self.width() != Width::Double {
            let shift = 64 - 8 * self.width().bytes();
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        if self.sixty_four() {
            value
        } else {
            value & 0xffff_ffff
        }
    }

    /// The value a store writes, given the source register's content.
    pub fn store_value(&self, reg_value: u64) -> u64 {
        reg_value & self.width().mask()
    }
}

/// The emulated device behind an MMIO region of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioDevice {
    /// The VM's virtual PL011 console.
    Uart,
    /// The VM's virtual GIC distributor.
    Gicd,
    /// The VM's virtual GICv3 redistributors (RD and SGI frames per vCPU).
    Gicr,
    /// A physical ECAM window (index into the platform's ECAM regions),
    /// trapped for the hardware domain.
    HostEcam(u8),
    /// A physical PCI memory window of the hardware domain: its BAR pages
    /// are mapped on first touch, unless a guest owns them.
    HwdomPciWindow,
    /// A guest's virtual ECAM.
    VirtualEcam,
    /// A guest's PCI memory window: faults here are its trapped MSI-X pages
    /// (the rest of its BARs is mapped in stage 2).
    GuestPciWindow,
}

/// An emulated MMIO region of a VM's IPA space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioRegion {
    pub base: u64,
    pub size: u64,
    pub device: MmioDevice,
}

/// Most emulated regions one VM has.
pub const MAX_MMIO_REGIONS: usize = 8;

/// A VM's emulated MMIO regions, looked up on every data abort: a fixed
/// array, so the trap path allocates nothing.
#[derive(Clone, Debug)]
pub struct MmioMap {
    regions: [MmioRegion; MAX_MMIO_REGIONS],
    len: usize,
}

impl Default for MmioMap {
    fn default() -> Self {
        const EMPTY: MmioRegion = MmioRegion {
            base: 0,
            size: 0,
            device: MmioDevice::Uart,
        };
        Self {
            regions: [EMPTY; MAX_MMIO_REGIONS],
            len: 0,
        }
    }
}

/// The map is full or the new region overlaps one already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioMapError {
    Full,
    Overlap,
}

impl MmioMap {
    pub fn add(&mut self, region: MmioRegion) -> Result<(), MmioMapError> {
        // A region wrapping past the top of the address space would hold
        // address 0 too: refused like an overlap (`find` relies on it).
        let Some(end) = region.base.checked_add(region.size) else {
            return Err(MmioMapError::Overlap);
        };
        if self
            .regions()
            .any(|r| region.base < r.base.saturating_add(r.size) && r.base < end)
        {
            return Err(MmioMapError::Overlap);
        }
        let slot = self.regions.get_mut(self.len).ok_or(MmioMapError::Full)?;
        *slot = region;
        self.len += 1;
        Ok(())
    }

    /// Order the regions by `rank` (lowest first): the lookup is linear, so
    /// the most frequently trapped regions go first.
    pub fn order_by(&mut self, rank: impl Fn(MmioDevice) -> u8) {
        let n = self.len;
        self.regions[..n].sort_by_key(|r| rank(r.device));
    }

    pub fn regions(&self) -> impl Iterator<Item = &MmioRegion> {
        self.regions.iter().take(self.len)
    }

    /// The region holding the whole access `[ipa, ipa + width)`, and the
    /// offset into it. A plain loop over a handful of regions: this runs on
    /// every data abort.
    /// Slots past `len` are empty (size 0) and never match, so the loop
    /// runs over the whole array without a count check.
    #[inline]
    pub fn find(&self, ipa: u64, width: Width) -> Option<(MmioRegion, u64)> {
        for r in &self.regions {
            let offset = ipa.wrapping_sub(r.base);
            // No region wraps (`add`): `offset < size` implies `ipa >= base`.
            if offset < r.size && width.bytes() <= r.size - offset {
                return Some((*r, offset));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iss(sas: u64, srt: u64, write: bool, sse: bool, sf: bool) -> u64 {
        esr::ISV
            | (sas << esr::SAS_SHIFT)
            | (srt << esr::SRT_SHIFT)
            | if write { esr::WNR } else { 0 }
            | if sse { esr::SSE } else { 0 }
            | if sf { esr::SF } else { 0 }
            | (esr::EC_DABT_LOW << esr::EC_SHIFT)
            | (1 << 25)
    }

    #[test]
    fn decodes_width_register_direction() {
        let a = MmioAccess::decode(iss(2, 3, true, false, false), 0x900_0000).unwrap();
        assert_eq!(a.width(), Width::Word);
        assert_eq!(a.reg(), 3);
        assert!(a.write());
        assert!(!a.sixty_four());
        let b = MmioAccess::decode(iss(3, 31, false, false, true), 0x10).unwrap();
        assert_eq!(b.width(), Width::Double);
        assert_eq!(b.reg(), 31, "xzr is register 31");
        assert!(!b.write());
        assert!(b.sixty_four());
        let c = MmioAccess::decode(iss(0, 0, false, false, false) | esr::AR, 0).unwrap();
        assert_eq!(c.width(), Width::Byte);
        assert!(c.acquire_release());
    }

    #[test]
    fn refuses_without_syndrome_or_on_walks() {
        assert_eq!(
            MmioAccess::decode(iss(2, 1, false, false, false) & !esr::ISV, 0),
            Err(DecodeError::NoSyndrome)
        );
        assert_eq!(
            MmioAccess::decode(iss(2, 1, false, false, false) | esr::S1PTW, 0),
            Err(DecodeError::StageOneWalk)
        );
        assert_eq!(
            MmioAccess::decode(iss(2, 1, false, false, false) | esr::EA, 0),
            Err(DecodeError::NotAnAccess)
        );
    }

    #[test]
    fn sign_extension_and_register_width() {
        // ldrsb x1: byte 0x80 -> 0xffff_ffff_ffff_ff80
        let a = MmioAccess::decode(iss(0, 1, false, true, true), 0).unwrap();
        assert_eq!(a.load_result(0x80), 0xffff_ffff_ffff_ff80);
        // ldrsh w1: half 0x8001 -> 0xffff_8001 (upper word zero for W registers)
        let b = MmioAccess::decode(iss(1, 1, false, true, false), 0).unwrap();
        assert_eq!(b.load_result(0x8001), 0xffff_8001);
        // ldrh w1 (no sign extension) of a value with junk above 16 bits
        let c = MmioAccess::decode(iss(1, 1, false, false, false), 0).unwrap();
        assert_eq!(c.load_result(0xdead_8001), 0x8001);
        // store of a byte keeps only the low byte
        let d = MmioAccess::decode(iss(0, 2, true, false, false), 0).unwrap();
        assert_eq!(d.store_value(0x1234_5678), 0x78);
    }

    #[test]
    fn fault_ipa_combines_hpfar_and_far() {
        // IPA 0x40_1000_0abc: HPFAR holds bits 55:12 at 43:4.
        let ipa = 0x40_1000_0abc_u64;
        let hpfar = (ipa >> 12) << 4;
        assert_eq!(fault_ipa(hpfar, 0xffff_0000_0000_0abc), ipa);
    }

    #[test]
    fn regions_can_be_ordered_for_the_linear_lookup() {
        let mut map = MmioMap::default();
        for (base, device) in [
            (0x900_0000, MmioDevice::Uart),
            (0x4010_0000, MmioDevice::VirtualEcam),
        ] {
            map.add(MmioRegion {
                base,
                size: 0x1000,
                device,
            })
            .unwrap();
        }
        map.order_by(|d| u8::from(d != MmioDevice::VirtualEcam));
        let order: std::vec::Vec<MmioDevice> = map.regions().map(|r| r.device).collect();
        assert_eq!(order, [MmioDevice::VirtualEcam, MmioDevice::Uart]);
        assert_eq!(
            map.find(0x900_0004, Width::Word)
                .map(|(r, o)| (r.device, o)),
            Some((MmioDevice::Uart, 4))
        );
    }

    #[test]
    fn map_finds_whole_accesses_only_and_refuses_overlaps() {
        let mut map = MmioMap::default();
        let uart = MmioRegion {
            base: 0x900_0000,
            size: 0x1000,
            device: MmioDevice::Uart,
        };
        map.add(uart).unwrap();
        assert_eq!(map.add(uart), Err(MmioMapError::Overlap));
        assert_eq!(map.find(0x900_0018, Width::Word), Some((uart, 0x18)));
        assert_eq!(
            map.find(0x900_0ffc, Width::Double),
            None,
            "straddles the end"
        );
        assert_eq!(map.find(0x8ff_fffc, Width::Word), None);
        for i in 1..MAX_MMIO_REGIONS as u64 {
            map.add(MmioRegion {
                base: i * 0x10_0000,
                size: 0x1000,
                device: MmioDevice::Uart,
            })
            .unwrap();
        }
        assert_eq!(
            map.add(MmioRegion {
                base: 0x7000_0000,
                size: 1,
                device: MmioDevice::Uart
            }),
            Err(MmioMapError::Full)
        );
    }
}
