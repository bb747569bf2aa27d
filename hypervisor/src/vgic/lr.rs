//! List registers: one decoded form, the GICv3 (ICH_LR<n>_EL2) and GICv2
//! (GICH_LR<n>) encodings, and the interface the allocator drives (real
//! registers on the target, a fake in tests).

/// State field of a list register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LrState {
    #[default]
    Invalid,
    Pending,
    Active,
    PendingActive,
}

impl LrState {
    const fn bits(self) -> u64 {
        match self {
            LrState::Invalid => 0,
            LrState::Pending => 1,
            LrState::Active => 2,
            LrState::PendingActive => 3,
        }
    }
    const fn from_bits(bits: u64) -> Self {
        match bits & 3 {
            0 => LrState::Invalid,
            1 => LrState::Pending,
            2 => LrState::Active,
            _ => LrState::PendingActive,
        }
    }
    pub const fn pending(self) -> bool {
        matches!(self, LrState::Pending | LrState::PendingActive)
    }
    pub const fn active(self) -> bool {
        matches!(self, LrState::Active | LrState::PendingActive)
    }
}

/// One list register, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lr {
    pub vintid: u32,
    /// Physical INTID the virtual one is backed by (HW bit): the guest's
    /// deactivation deactivates it.
    pub pintid: Option<u32>,
    pub priority: u8,
    pub group1: bool,
    pub state: LrState,
    /// Maintenance interrupt on the guest's EOI (software interrupts only).
    pub eoi: bool,
    /// GICv2 SGIs: the requesting vCPU (GICV_IAR.CPUID).
    pub source: u8,
}

impl Lr {
    pub const EMPTY: Lr = Lr {
        vintid: 0,
        pintid: None,
        priority: 0,
        group1: false,
        state: LrState::Invalid,
        eoi: false,
        source: 0,
    };

    /// ICH_LR<n>_EL2: vINTID 31:0, pINTID 44:32 (HW) or EOI 41 (!HW),
    /// Priority 55:48, Group 60, HW 61, State 63:62.
    pub fn encode_v3(&self) -> u64 {
        if self.state == LrState::Invalid {
            return 0;
        }
        let mut v = u64::from(self.vintid)
            | (u64::from(self.priority) << 48)
            | (u64::from(self.group1) << 60)
            | (self.state.bits() << 62);
        match self.pintid {
            Some(p) => v |= (1 << 61) | ((u64::from(p) & 0x1fff) << 32),
            None if self.eoi => v |= 1 << 41,
            None => {}
        }
        v
    }

    pub fn decode_v3(v: u64) -> Lr {
        let hw = v & (1 << 61) != 0;
        Lr {
            vintid: v as u32,
            pintid: hw.then_some(((v >> 32) & 0x1fff) as u32),
            priority: (v >> 48) as u8,
            group1: v & (1 << 60) != 0,
            state: LrState::from_bits(v >> 62),
            eoi: !hw && v & (1 << 41) != 0,
            source: 0,
        }
    }

    /// GICH_LR<n>: VirtualID 9:0, PhysicalID 19:10 (HW) or EOI 19 and
    /// CPUID 12:10 (!HW), Priority 27:23 (top 5 bits), State 29:28,
    /// Grp1 30, HW 31.
    pub fn encode_v2(&self) -> u32 {
        if self.state == LrState::Invalid {
            return 0;
        }
        let mut v = (self.vintid & 0x3ff)
            | (u32::from(self.priority >> 3) << 23)
            | ((self.state.bits() as u32) << 28)
            | (u32::from(self.group1) << 30);
        match self.pintid {
            Some(p) => v |= (1 << 31) | ((p & 0x3ff) << 10),
            None => {
                v |= (u32::from(self.source) & 7) << 10;
                if self.eoi {
                    v |= 1 << 19;
                }
            }
        }
        v
    }

    pub fn decode_v2(v: u32) -> Lr {
        let hw = v & (1 << 31) != 0;
        Lr {
            vintid: v & 0x3ff,
            pintid: hw.then_some((v >> 10) & 0x3ff),
            priority: (((v >> 23) & 0x1f) << 3) as u8,
            group1: v & (1 << 30) != 0,
            state: LrState::from_bits(u64::from(v >> 28)),
            eoi: !hw && v & (1 << 19) != 0,
            source: if hw { 0 } else { ((v >> 10) & 7) as u8 },
        }
    }
}

/// The list-register hardware of the CPU a vCPU runs on.
pub trait ListRegisters {
    /// Number of list registers (ICH_VTR_EL2.ListRegs + 1 / GICH_VTR).
    fn count(&self) -> usize;
    fn read(&mut self, n: usize) -> Lr;
    fn write(&mut self, n: usize, lr: Lr);
    /// Ask for a maintenance interrupt when no list register holds a
    /// pending interrupt (ICH_HCR_EL2.NPIE / GICH_HCR.NPIE): the allocator
    /// has more to deliver than fits.
    fn set_refill_irq(&mut self, on: bool);
    /// Deactivate a physical interrupt that a virtual one held active and
    /// that the guest will not deactivate any more (its pending state was
    /// cleared before delivery).
    fn deactivate_physical(&mut self, pintid: u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3_round_trip() {
        let lr = Lr {
            vintid: 27,
            pintid: Some(27),
            priority: 0xa0,
            group1: true,
            state: LrState::Pending,
            eoi: false,
            source: 0,
        };
        let v = lr.encode_v3();
        assert_eq!(v >> 62, 1, "pending");
        assert_ne!(v & (1 << 61), 0, "HW");
        assert_eq!((v >> 32) & 0x1fff, 27);
        assert_eq!((v >> 48) & 0xff, 0xa0);
        assert_eq!(Lr::decode_v3(v), lr);
        let sw = Lr {
            vintid: 40,
            pintid: None,
            eoi: true,
            state: LrState::PendingActive,
            ..lr
        };
        let v = sw.encode_v3();
        assert_eq!(v & (1 << 61), 0);
        assert_ne!(v & (1 << 41), 0, "EOI maintenance");
        assert_eq!(Lr::decode_v3(v), sw);
        assert_eq!(Lr::EMPTY.encode_v3(), 0);
    }

    #[test]
    fn v2_round_trip_and_priority_truncation() {
        let sgi = Lr {
            vintid: 3,
            pintid: None,
            priority: 0x88,
            group1: false,
            state: LrState::Pending,
            eoi: false,
            source: 5,
        };
        let v = sgi.encode_v2();
        assert_eq!(v & 0x3ff, 3);
        assert_eq!((v >> 10) & 7, 5, "source CPU");
        assert_eq!((v >> 23) & 0x1f, 0x88 >> 3);
        assert_eq!(Lr::decode_v2(v), sgi);
        let hw = Lr {
            vintid: 27,
            pintid: Some(27),
            priority: 0xa7,
            group1: true,
            state: LrState::Active,
            eoi: false,
            source: 0,
        };
        let back = Lr::decode_v2(hw.encode_v2());
        assert_eq!(back.priority, 0xa0, "5 priority bits");
        assert_eq!(back.pintid, Some(27));
        assert_eq!(back.state, LrState::Active);
        assert_eq!(back.source, 0);
    }
}
