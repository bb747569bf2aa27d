//! Physical memory handed out to VMs: the platform's RAM minus everything
//! reserved (the hypervisor image, the boot DTB, firmware reservations,
//! loaded modules) minus what VMs already have.

use alloc::vec::Vec;
use platform::Region;

/// Why memory could not be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// No free range of that size and alignment.
    Exhausted { size: u64 },
    /// A fixed range is not entirely free RAM.
    NotFree { base: u64, size: u64 },
}

/// Free physical ranges, sorted, non-overlapping.
#[derive(Clone, Debug, Default)]
pub struct FreeMemory {
    free: Vec<Region>,
}

impl FreeMemory {
    /// Start from the RAM ranges, then remove each reserved range.
    pub fn new(ram: &[Region], reserved: &[Region]) -> Self {
        let mut this = Self {
            free: ram.iter().copied().filter(|r| r.size > 0).collect(),
        };
        this.free.sort();
        for r in reserved {
            this.remove(*r);
        }
        this
    }

    /// Take `r` out of the free ranges (whatever part of it is free).
    pub fn remove(&mut self, r: Region) {
        let mut out = Vec::with_capacity(self.free.len() + 1);
        for f in &self.free {
            if !f.overlaps(&r) {
                out.push(*f);
                continue;
            }
            if f.base < r.base {
                out.push(Region::new(f.base, r.base - f.base));
            }
            if r.end() < f.end() {
                out.push(Region::new(r.end(), f.end() - r.end()));
            }
        }
        self.free = out;
    }

    /// Claim exactly `[base, base + size)`, which must be free.
    pub fn claim(&mut self, base: u64, size: u64) -> Result<Region, MemoryError> {
        let want = Region::new(base, size);
        let whole = self
            .free
            .iter()
            .any(|f| f.base <= base && base.checked_add(size).is_some_and(|e| e <= f.end()));
        if size == 0 || !whole {
            return Err(MemoryError::NotFree { base, size });
        }
        self.remove(want);
        Ok(want)
    }

    /// Allocate `size` bytes aligned to `align` (a power of two), from the
    /// lowest free address that fits.
    pub fn allocate(&mut self, size: u64, align: u64) -> Result<Region, MemoryError> {
        let found = self.free.iter().find_map(|f| {
            let base = f.base.checked_add(align - 1)? & !(align - 1);
            (base.checked_add(size)? <= f.end()).then_some(base)
        });
        match found {
            Some(base) if size > 0 => self.claim(base, size),
            _ => Err(MemoryError::Exhausted { size }),
        }
    }

    pub fn total(&self) -> u64 {
        self.free.iter().map(|r| r.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn reserved_ranges_are_carved_out() {
        let ram = [Region::new(0x4000_0000, 1024 * MIB)];
        let reserved = [
            Region::new(0x4020_0000, 4 * MIB),   // hypervisor
            Region::new(0x4800_0000, 0x10_0000), // DTB
        ];
        let free = FreeMemory::new(&ram, &reserved);
        assert_eq!(
            free.free,
            [
                Region::new(0x4000_0000, 2 * MIB),
                Region::new(0x4060_0000, 0x4800_0000 - 0x4060_0000),
                Region::new(0x4810_0000, 0x8000_0000 - 0x4810_0000),
            ]
        );
        assert_eq!(free.total(), 1024 * MIB - 5 * MIB);
    }

    #[test]
    fn allocation_respects_alignment_and_never_overlaps() {
        let ram = [Region::new(0x4000_0000, 256 * MIB)];
        let mut free = FreeMemory::new(&ram, &[Region::new(0x4000_0000, 3 * MIB)]);
        let a = free.allocate(64 * MIB, 2 * MIB).unwrap();
        assert_eq!(a.base, 0x4040_0000);
        let b = free.allocate(32 * MIB, 2 * MIB).unwrap();
        assert!(!a.overlaps(&b));
        assert_eq!(b.base % (2 * MIB), 0);
        assert_eq!(
            free.allocate(512 * MIB, 2 * MIB),
            Err(MemoryError::Exhausted { size: 512 * MIB })
        );
        assert_eq!(
            free.allocate(0, 2 * MIB),
            Err(MemoryError::Exhausted { size: 0 })
        );
    }

    #[test]
    fn fixed_claims_must_be_free() {
        let ram = [Region::new(0x4000_0000, 256 * MIB)];
        let mut free = FreeMemory::new(&ram, &[Region::new(0x4000_0000, 4 * MIB)]);
        assert_eq!(
            free.claim(0x4000_0000, 2 * MIB),
            Err(MemoryError::NotFree {
                base: 0x4000_0000,
                size: 2 * MIB
            })
        );
        assert!(free.claim(0x4800_0000, 16 * MIB).is_ok());
        assert!(free.claim(0x4800_0000, 2 * MIB).is_err(), "claimed twice");
        assert!(free.claim(0x4fe0_0000, 4 * MIB).is_err(), "runs past RAM");
        assert!(free.claim(u64::MAX - 10, 100).is_err(), "overflow");
    }
}
