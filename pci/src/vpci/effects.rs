//! What a virtual config or MSI-X access asks the hypervisor shell to do.

use crate::addr::Bdf;

/// Why a guest BAR address was not mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarRefusal {
    /// Outside the guest's memory windows (`mem32`, or `mem32`/`mem64` for
    /// a 64-bit BAR).
    OutsideWindows,
    /// Overlaps a range of the guest's IPA map listed in
    /// [`super::GuestLayout::forbidden`] (RAM, UART, GIC, ...).
    OverlapsForbidden { base: u64, size: u64 },
    /// Overlaps the virtual ECAM window.
    OverlapsEcam,
    /// Overlaps another BAR of this guest that is mapped.
    OverlapsBar { vbdf: Bdf, bar: u8 },
    /// The physical BAR was never given an address by the hardware domain.
    NoPhysicalAddress,
    /// Smaller than a 4 KiB page (or not page aligned physically): mapping
    /// its page would expose whatever else shares that page.
    SmallerThanPage,
    /// The physical BAR address is not aligned to its size.
    PhysicalMisaligned,
    /// The expansion ROM is emulated as a register only and never mapped.
    RomNotMapped,
}

/// One thing the shell must do after an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Map `[pa, pa + size)` at `ipa` in the guest's stage-2 (device memory).
    Map { ipa: u64, pa: u64, size: u64 },
    /// Remove every mapping and every MSI-X trap emitted before inside
    /// `[ipa, ipa + size)` (one whole BAR).
    Unmap { ipa: u64, size: u64 },
    /// Leave `[ipa, ipa + size)` unmapped and send its accesses to
    /// [`super::GuestBus::msix_read`] / [`super::GuestBus::msix_write`]:
    /// pages holding an MSI-X table or PBA. Removed by the [`Effect::Unmap`]
    /// of the BAR.
    TrapMsix { ipa: u64, size: u64 },
    /// A guest BAR placement was refused; nothing of it is mapped. Log it.
    BarRefused {
        vbdf: Bdf,
        bar: u8,
        addr: u64,
        reason: BarRefusal,
    },
    /// The guest asserted then released Secondary Bus Reset on the virtual
    /// root port of its `unit`-th unit (index into the units given to
    /// [`super::GuestBus::new`]).
    SecondaryBusReset { unit: usize },
    /// The guest wrote Initiate FLR (PCIe Device Control) or AF FLR of this
    /// function. Its virtual state was reset already.
    FunctionLevelReset { physical: Bdf },
    /// The guest changed MSI-X Enable / Function Mask (virtual only).
    MsixControl {
        physical: Bdf,
        enabled: bool,
        function_mask: bool,
    },
    /// The guest wrote an MSI-X table entry (shadow only).
    MsixEntry { physical: Bdf, entry: u16 },
    /// The guest changed MSI Enable (virtual only: no vITS yet on ARM).
    MsiControl { physical: Bdf, enabled: bool },
}

/// Room for the effects of one access. A Command write that moves every BAR
/// of a function needs at most 6 unmaps, 6 maps and 4 more pieces around
/// MSI-X pages, or refusals instead: 32 is never reached in practice.
pub const EFFECTS_CAPACITY: usize = 32;

/// A fixed-capacity list of effects: no allocation on the access path.
#[derive(Clone, Debug)]
pub struct Effects {
    items: [Option<Effect>; EFFECTS_CAPACITY],
    len: usize,
    overflowed: bool,
}

impl Default for Effects {
    fn default() -> Self {
        Self::new()
    }
}

impl Effects {
    pub const fn new() -> Self {
        Self {
            items: [None; EFFECTS_CAPACITY],
            len: 0,
            overflowed: false,
        }
    }

    /// Adds an effect; sets the overflow flag if full (then the shell should
    /// treat the guest's mappings as unknown and stop it).
    pub fn push(&mut self, e: Effect) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(e);
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether an effect was lost because the list was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn iter(&self) -> impl Iterator<Item = &Effect> + '_ {
        self.items.iter().take(self.len).flatten()
    }

    pub fn clear(&mut self) {
        self.items = [None; EFFECTS_CAPACITY];
        self.len = 0;
        self.overflowed = false;
    }
}
