//! EL2 stage-1 translation (identity map of what the hypervisor touches) and
//! stage-2 translation of VMs (direct map: IPA == PA), both built with
//! aarch64-paging.

use super::head::{MAIR_EL2_VALUE, SCTLR_EL2_MMU_ON, SECONDARY_BOOT, SecondaryBoot};
use aarch64_paging::Mapping;
use aarch64_paging::descriptor::{El23Attributes, PhysicalAddress, Stage2Attributes};
use aarch64_paging::idmap::{IdMap, IdTranslation};
use aarch64_paging::paging::{Constraints, El2, MemoryRegion, Stage2};
use platform::Region;

/// Normal write-back memory (MAIR index 1), inner shareable.
const EL2_NORMAL: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ATTRIBUTE_INDEX_1)
    .union(El23Attributes::INNER_SHAREABLE)
    .union(El23Attributes::ACCESSED);
/// Device-nGnRE (MAIR index 0), never executable.
const EL2_DEVICE: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ATTRIBUTE_INDEX_0)
    .union(El23Attributes::ACCESSED)
    .union(El23Attributes::XN);

/// Root level 0: 48-bit input addresses.
const ROOT_LEVEL: usize = 0;
/// Largest physical address size we program (48 bits); 52-bit output needs
/// LPA2 descriptors, which we do not use.
const MAX_PA_BITS: u32 = 48;

/// Why a translation table could not be built.
#[derive(Clone, Debug)]
pub struct MapError(pub aarch64_paging::MapError);

fn region(r: Region) -> MemoryRegion {
    MemoryRegion::new(r.base as usize, r.end() as usize)
}

/// Physical address size of this CPU, as the PS/IPS encoding and in bits.
fn pa_range() -> (u64, u32) {
    use aarch64_cpu::registers::{ID_AA64MMFR0_EL1, Readable};
    let encoding = (ID_AA64MMFR0_EL1.get() & 0xf).min(5);
    let bits = [32, 36, 40, 42, 44, 48][encoding as usize];
    (encoding, bits.min(MAX_PA_BITS))
}

/// The hypervisor's own translation tables.
#[derive(Debug)]
pub struct El2Map {
    map: IdMap<El2>,
}

impl El2Map {
    pub fn new() -> Self {
        Self {
            map: IdMap::new(ROOT_LEVEL, El2),
        }
    }

    pub fn map_normal(&mut self, r: Region) -> Result<(), MapError> {
        self.map.map_range(&region(r), EL2_NORMAL).map_err(MapError)
    }

    pub fn map_device(&mut self, r: Region) -> Result<(), MapError> {
        self.map.map_range(&region(r), EL2_DEVICE).map_err(MapError)
    }

    /// Switch this CPU from the bootstrap tables to these, and record the
    /// settings for secondary CPUs.
    pub fn activate(&mut self) {
        let (ips, _) = pa_range();
        // T0SZ 16 (48-bit VA), WB WA inner/outer, inner shareable, 4K granule,
        // PS from PARange, RES1 bits 31 and 23.
        let tcr: u64 = 16 | (1 << 8) | (1 << 10) | (3 << 12) | (ips << 16) | (1 << 31) | (1 << 23);
        let ttbr = self.map.root_address().0 as u64;
        self.map.mark_active();
        // SAFETY: written once here by the boot CPU before secondaries start.
        unsafe {
            SECONDARY_BOOT = SecondaryBoot {
                mair: MAIR_EL2_VALUE,
                tcr,
                ttbr0: ttbr,
                sctlr: SCTLR_EL2_MMU_ON,
            };
        }
        // A secondary CPU reads these with its MMU off, i.e. non-cacheable,
        // straight from memory, while the write above may still sit in this
        // CPU's data cache: clean it to the point of coherency (completed
        // before this returns, so before any PSCI CPU_ON).
        let boot = core::ptr::addr_of!(SECONDARY_BOOT) as usize;
        super::cpu::clean_dcache_to_poc(boot, core::mem::size_of::<SecondaryBoot>());
        // SAFETY: the new tables identity-map the image, stack, heap and
        // devices with the same addresses as the bootstrap map. The MMU is off
        // only for the few instructions below, which touch no memory.
        unsafe {
            core::arch::asm!(
                "dsb ish",
                "mrs {tmp}, sctlr_el2",
                "bic {tmp}, {tmp}, #1",
                "msr sctlr_el2, {tmp}",
                "isb",
                "msr tcr_el2, {tcr}",
                "msr ttbr0_el2, {ttbr}",
                "isb",
                "tlbi alle2",
                "dsb ish",
                "isb",
                "orr {tmp}, {tmp}, #1",
                "msr sctlr_el2, {tmp}",
                "isb",
                tmp = out(reg) _,
                tcr = in(reg) tcr,
                ttbr = in(reg) ttbr,
            );
        }
    }
}

/// Normal memory for VM RAM: RW, executable, write-back, inner shareable.
const S2_RAM: Stage2Attributes = Stage2Attributes::VALID
    .union(Stage2Attributes::MEMATTR_NORMAL_INNER_WB)
    .union(Stage2Attributes::MEMATTR_NORMAL_OUTER_WB)
    .union(Stage2Attributes::S2AP_ACCESS_RW)
    .union(Stage2Attributes::SH_INNER)
    .union(Stage2Attributes::ACCESS_FLAG);
/// Device memory passed through to a VM (a BAR): never executable.
const S2_DEVICE: Stage2Attributes = Stage2Attributes::VALID
    .union(Stage2Attributes::MEMATTR_DEVICE_nGnRE)
    .union(Stage2Attributes::S2AP_ACCESS_RW)
    .union(Stage2Attributes::ACCESS_FLAG)
    .union(Stage2Attributes::XN);

/// A VM's stage-2 tables. Everything not mapped faults to EL2. RAM is
/// direct mapped (IPA == PA); passed-through device memory goes wherever
/// the guest placed it.
#[derive(Debug)]
pub struct Stage2Map {
    map: Mapping<IdTranslation<Stage2Attributes>, Stage2>,
    vmid: u16,
}

// SAFETY: the tables are owned by this value alone (heap pages), and every
// change is made under the VM's lock; the raw pointers inside do not alias
// anything another thread uses.
unsafe impl Send for Stage2Map {}

impl Stage2Map {
    pub fn new(vmid: u16) -> Self {
        Self {
            map: Mapping::new(IdTranslation::new(), ROOT_LEVEL, Stage2),
            vmid,
        }
    }

    pub fn map_ram(&mut self, r: Region) -> Result<(), MapError> {
        self.map
            .map_range(
                &region(r),
                PhysicalAddress(r.base as usize),
                S2_RAM,
                Constraints::empty(),
            )
            .map_err(MapError)
    }

    /// Map device memory `pa` at `ipa`, page granular.
    pub fn map_device(&mut self, ipa: u64, pa: u64, size: u64) -> Result<(), MapError> {
        let range = region(Region::new(ipa, size));
        self.map
            .map_range(
                &range,
                PhysicalAddress(pa as usize),
                S2_DEVICE,
                Constraints::NO_BLOCK_MAPPINGS,
            )
            .map_err(MapError)
    }

    /// Remove `[ipa, ipa + size)` and invalidate the TLBs of this VM. Must
    /// run with this VM's VTTBR loaded (from one of its traps).
    pub fn unmap(&mut self, ipa: u64, size: u64) -> Result<(), MapError> {
        let range = region(Region::new(ipa, size));
        let result = self
            .map
            .map_range(
                &range,
                PhysicalAddress(0),
                Stage2Attributes::empty(),
                Constraints::NO_BLOCK_MAPPINGS,
            )
            .map_err(MapError);
        // SAFETY: TLB maintenance for the current VMID has no memory effects.
        unsafe { core::arch::asm!("dsb ishst", "tlbi vmalls12e1is", "dsb ish", "isb") };
        result
    }

    /// VTTBR_EL2 value: table base and VMID.
    pub fn vttbr(&mut self) -> u64 {
        self.map.mark_active();
        let PhysicalAddress(base) = self.map.root_address();
        base as u64 | (u64::from(self.vmid) << 48)
    }
}

/// VTCR_EL2 for our stage-2 tables: 48-bit IPA (T0SZ 16) starting at level
/// 0 (SL0 2), write-back inner shareable walks, 4K granule, PS from PARange.
pub fn vtcr() -> u64 {
    let (ps, _) = pa_range();
    16 | (2 << 6) | (1 << 8) | (1 << 10) | (3 << 12) | (ps << 16) | (1 << 31)
}

/// Clean the data cache to the point of coherency over `[start, start+len)`,
/// so a VM starting with its MMU off sees what the hypervisor wrote.
pub fn clean_dcache_range(start: u64, len: u64) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr) };
    let line = 4u64 << ((ctr >> 16) & 0xf);
    let mut addr = start & !(line - 1);
    while addr < start.saturating_add(len) {
        // SAFETY: cache maintenance by address on mapped memory.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) addr) };
        addr += line;
    }
    // SAFETY: barriers and I-cache invalidation have no memory effects.
    unsafe { core::arch::asm!("dsb ish", "ic ialluis", "dsb ish", "isb") };
}
