//! The guest's distributor (GICv2/GICv3) and redistributors (GICv3),
//! emulated from trapped accesses. Every access is checked: unaligned,
//! wrongly sized, out-of-range or reserved accesses read as zero and their
//! writes are ignored; a guest reaches only its own VM's virtual state.

use super::{Kick, NR_IRQS, PRIVATE, VGic, Version};

// Distributor registers.
const CTLR: u64 = 0x000;
const TYPER: u64 = 0x004;
const IIDR: u64 = 0x008;
const IGROUPR: u64 = 0x080;
const ISENABLER: u64 = 0x100;
const ICENABLER: u64 = 0x180;
const ISPENDR: u64 = 0x200;
const ICPENDR: u64 = 0x280;
const ISACTIVER: u64 = 0x300;
const BIT_REGS_END: u64 = 0x400;
const IPRIORITYR: u64 = 0x400;
const IPRIORITYR_END: u64 = 0x800;
const ITARGETSR: u64 = 0x800;
const ITARGETSR_END: u64 = 0xC00;
const ICFGR: u64 = 0xC00;
const ICFGR_END: u64 = 0xD00;
const SGIR: u64 = 0xF00;
const CPENDSGIR: u64 = 0xF10;
const SPENDSGIR: u64 = 0xF20;
const SGI_BYTES_END: u64 = 0xF30;
const PIDR2_V2: u64 = 0xFE8;
const IROUTER: u64 = 0x6000;
const IROUTER_END: u64 = 0x7FE0;
const PIDR2_V3: u64 = 0xFFE8;

// Redistributor RD_base registers (GICv3).
const GICR_CTLR: u64 = 0x0000;
const GICR_IIDR: u64 = 0x0004;
const GICR_TYPER: u64 = 0x0008;
const GICR_WAKER: u64 = 0x0014;
/// Size of one redistributor (RD_base + SGI_base frames).
pub const GICR_STRIDE: u64 = 0x2_0000;
const SGI_BASE: u64 = 0x1_0000;

/// ARM as implementer (JEP106 0x43B).
const IIDR_VALUE: u32 = 0x0000_043B;
const CTLR_ARE: u32 = 1 << 4;
const CTLR_DS: u32 = 1 << 6;

/// One trapped access to an emulated GIC region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Offset into the region.
    pub offset: u64,
    /// Bytes: 1, 2, 4 or 8.
    pub width: u64,
    /// The value written, or None for a read.
    pub write: Option<u64>,
}

/// Result of an emulated access: the value a read returns (0 for writes),
/// and the vCPUs to kick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub value: u64,
    pub kick: Kick,
}

impl Outcome {
    const fn value(value: u64) -> Self {
        Outcome { value, kick: 0 }
    }
    const fn kick(kick: Kick) -> Self {
        Outcome { value: 0, kick }
    }
}

/// Which bank a one-bit-per-interrupt register addresses.
#[derive(Clone, Copy)]
enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl VGic {
    /// A guest access to its distributor, made by vCPU `vcpu`.
    pub fn dist_access(&mut self, vcpu: usize, a: Access) -> Outcome {
        if vcpu >= self.nvcpus() || a.width == 0 || !a.offset.is_multiple_of(a.width) {
            return Outcome::default();
        }
        let off = a.offset;
        let v3 = self.version == Version::V3;
        match off {
            CTLR if a.width == 4 => match a.write {
                None => Outcome::value(u64::from(
                    (self.ctlr & 3) | if v3 { CTLR_ARE | CTLR_DS } else { 0 },
                )),
                Some(v) => {
                    self.ctlr = v as u32 & 3;
                    Outcome::kick(self.update_all())
                }
            },
            TYPER if a.width == 4 && a.write.is_none() => {
                let lines = (NR_IRQS / 32 - 1) as u64;
                let cpus = ((self.nvcpus() - 1) as u64) << 5;
                // GICv3: IDbits = 9 (10-bit INTIDs), no LPIs.
                Outcome::value(lines | if v3 { 9 << 19 } else { cpus })
            }
            IIDR if a.width == 4 => {
                Outcome::value(u64::from(IIDR_VALUE) * u64::from(a.write.is_none()))
            }
            IGROUPR..BIT_REGS_END => {
                if a.width != 4 {
                    return Outcome::default();
                }
                let reg = bit_reg(off);
                let first = ((off % 0x80) / 4) as u32 * 32;
                // With affinity routing the distributor's banked registers
                // are reserved: SGIs and PPIs live in the redistributors.
                if first as usize >= NR_IRQS || (v3 && first < PRIVATE as u32) {
                    return Outcome::default();
                }
                self.bit_access(vcpu, first, reg, a.write)
            }
            IPRIORITYR..IPRIORITYR_END => {
                if !(a.width == 1 || a.width == 4) {
                    return Outcome::default();
                }
                let first = (off - IPRIORITYR) as u32;
                if v3 && first < PRIVATE as u32 {
                    return Outcome::default();
                }
                self.priority_access(vcpu, first, a.width, a.write)
            }
            ITARGETSR..ITARGETSR_END if !v3 => {
                if !(a.width == 1 || a.width == 4) {
                    return Outcome::default();
                }
                self.target_access(vcpu, (off - ITARGETSR) as u32, a.width, a.write)
            }
            ICFGR..ICFGR_END => {
                if a.width != 4 {
                    return Outcome::default();
                }
                let first = ((off - ICFGR) / 4) as u32 * 16;
                if v3 && first < PRIVATE as u32 {
                    return Outcome::default();
                }
                self.config_access(vcpu, first, a.write)
            }
            SGIR if !v3 && a.width == 4 => match a.write {
                Some(v) => Outcome::kick(self.sgir_write(vcpu, v as u32)),
                None => Outcome::default(),
            },
            CPENDSGIR..SGI_BYTES_END if !v3 => {
                if !(a.width == 1 || a.width == 4) {
                    return Outcome::default();
                }
                let set = off >= SPENDSGIR;
                let first = (off - if set { SPENDSGIR } else { CPENDSGIR }) as u32;
                self.sgi_pending_access(vcpu, first, a.width, set, a.write)
            }
            PIDR2_V2 if !v3 && a.width == 4 => Outcome::value(0x2 << 4),
            IROUTER..IROUTER_END if v3 => self.irouter_access(off - IROUTER, a),
            PIDR2_V3 if v3 && a.width == 4 => Outcome::value(0x3 << 4),
            _ => Outcome::default(),
        }
    }

    /// A guest access to its redistributor region (GICv3): one RD_base and
    /// one SGI_base frame per vCPU, in vCPU order.
    pub fn redist_access(&mut self, a: Access) -> Outcome {
        if self.version != Version::V3 || a.width == 0 || !a.offset.is_multiple_of(a.width) {
            return Outcome::default();
        }
        let frame = (a.offset / GICR_STRIDE) as usize;
        let off = a.offset % GICR_STRIDE;
        if frame >= self.nvcpus() {
            return Outcome::default();
        }
        if off >= SGI_BASE {
            let off = off - SGI_BASE;
            return match off {
                IGROUPR..BIT_REGS_END if off.is_multiple_of(0x80) && a.width == 4 => {
                    self.bit_access(frame, 0, bit_reg(off), a.write)
                }
                IPRIORITYR..0x420 if a.width == 1 || a.width == 4 => {
                    self.priority_access(frame, (off - IPRIORITYR) as u32, a.width, a.write)
                }
                0xC00 | 0xC04 if a.width == 4 => {
                    self.config_access(frame, ((off - ICFGR) / 4) as u32 * 16, a.write)
                }
                _ => Outcome::default(),
            };
        }
        let last = frame + 1 == self.nvcpus();
        match (off, a.width, a.write) {
            (GICR_CTLR, 4, _) => Outcome::default(),
            (GICR_IIDR, 4, None) => Outcome::value(u64::from(IIDR_VALUE)),
            (GICR_TYPER, 8 | 4, None) | (0x000C, 4, None) => {
                // Affinity = vCPU index in Aff0; Processor_Number; Last.
                let typer = ((frame as u64) << 32) | ((frame as u64) << 8) | (u64::from(last) << 4);
                let shift = if off == 0x000C { 32 } else { 0 };
                let v = typer >> shift;
                Outcome::value(if a.width == 4 { v & 0xffff_ffff } else { v })
            }
            (GICR_WAKER, 4, None) => {
                let asleep = self.vcpus[frame].asleep;
                Outcome::value((u64::from(asleep) << 1) | (u64::from(asleep) << 2))
            }
            (GICR_WAKER, 4, Some(v)) => {
                self.vcpus[frame].asleep = v & 2 != 0;
                Outcome::default()
            }
            (PIDR2_V3, 4, None) => Outcome::value(0x3 << 4),
            _ => Outcome::default(),
        }
    }

    /// IGROUPR/IS|ICENABLER/IS|ICPENDR/IS|ICACTIVER for INTIDs
    /// `first..first+32` as banked for `bank`.
    fn bit_access(&mut self, bank: usize, first: u32, reg: BitReg, write: Option<u64>) -> Outcome {
        let v2 = self.version == Version::V2;
        let Some(value) = write else {
            let Some(irqs) = self.irq_block(bank, first) else {
                return Outcome::default();
            };
            // One tight loop per register kind: this is the hot read.
            let gather = |f: fn(&super::Irq) -> bool| {
                irqs.iter()
                    .enumerate()
                    .fold(0u64, |acc, (b, irq)| acc | (u64::from(f(irq)) << b))
            };
            let out = match reg {
                BitReg::Group => gather(|i| i.group1),
                BitReg::SetEnable | BitReg::ClearEnable => gather(|i| i.enabled),
                BitReg::SetPending | BitReg::ClearPending => gather(super::Irq::reads_pending),
                BitReg::SetActive | BitReg::ClearActive => gather(super::Irq::reads_active),
            };
            return Outcome::value(out);
        };
        let mut kick = 0;
        for b in 0..32u32 {
            let set = value & (1 << b) != 0;
            let intid = first + b;
            if !set && !matches!(reg, BitReg::Group) {
                continue;
            }
            // GICv2: SGI enables are fixed; SGI pending goes through
            // S|CPENDSGIR.
            if v2
                && intid < 16
                && !matches!(reg, BitReg::Group | BitReg::SetActive | BitReg::ClearActive)
            {
                continue;
            }
            let mut deactivate = None;
            let Some(irq) = self.irq_mut(bank, intid) else {
                continue;
            };
            match reg {
                BitReg::Group => irq.group1 = set,
                BitReg::SetEnable => irq.enabled = true,
                BitReg::ClearEnable => irq.enabled = false,
                BitReg::SetPending => irq.pending = true,
                BitReg::ClearPending => match irq.hw {
                    // A backed SPI keeps its pending state: dropping it would
                    // leave the physical interrupt active for good.
                    Some(_) if intid as usize >= PRIVATE => {}
                    Some(p) => {
                        if irq.pending && irq.resident.is_none() {
                            irq.pending = false;
                            deactivate = Some(p);
                        }
                    }
                    None => {
                        irq.pending = false;
                        irq.sources = 0;
                    }
                },
                BitReg::SetActive if irq.hw.is_none() && irq.resident.is_none() => {
                    irq.active = true
                }
                BitReg::ClearActive if irq.hw.is_none() && irq.resident.is_none() => {
                    irq.active = false
                }
                BitReg::SetActive | BitReg::ClearActive => {}
            }
            if let Some(p) = deactivate
                && p < 32
                && let Some(vc) = self.vcpus.get_mut(bank)
            {
                vc.deactivate |= 1 << p;
                kick |= 1 << bank;
            }
            kick |= self.update(bank, intid);
        }
        Outcome::kick(kick)
    }

    fn priority_access(
        &mut self,
        bank: usize,
        first: u32,
        width: u64,
        write: Option<u64>,
    ) -> Outcome {
        let mask = self.prio_mask;
        let mut out = 0u64;
        let mut kick = 0;
        for b in 0..width as u32 {
            let intid = first + b;
            match write {
                None => {
                    if let Some(irq) = self.irq(bank, intid) {
                        out |= u64::from(irq.priority) << (8 * b);
                    }
                }
                Some(v) => {
                    if let Some(irq) = self.irq_mut(bank, intid) {
                        let new = (v >> (8 * b)) as u8 & mask;
                        let changed = irq.priority != new;
                        irq.priority = new;
                        if changed && irq.resident.is_none() {
                            kick |= self.update(bank, intid);
                        }
                    }
                }
            }
        }
        Outcome { value: out, kick }
    }

    /// GICv2 ITARGETSR: SGIs and PPIs read as the accessing vCPU's own
    /// mask; SPIs take a mask of this VM's vCPUs.
    fn target_access(
        &mut self,
        vcpu: usize,
        first: u32,
        width: u64,
        write: Option<u64>,
    ) -> Outcome {
        let valid = ((1u32 << self.nvcpus()) - 1) as u8;
        let mut out = 0u64;
        let mut kick = 0;
        for b in 0..width as u32 {
            let intid = first + b;
            if intid as usize >= NR_IRQS {
                continue;
            }
            if (intid as usize) < PRIVATE {
                out |= u64::from(1u8 << (vcpu % 8)) << (8 * b);
                continue;
            }
            match write {
                None => {
                    if let Some(irq) = self.irq(vcpu, intid) {
                        out |= u64::from(irq.target) << (8 * b);
                    }
                }
                Some(v) => {
                    if let Some(irq) = self.irq_mut(vcpu, intid) {
                        irq.target = (v >> (8 * b)) as u8 & valid;
                        kick |= self.update(vcpu, intid);
                    }
                }
            }
        }
        Outcome { value: out, kick }
    }

    /// ICFGR: two bits per interrupt, bit 1 set = edge. SGIs are edge only.
    fn config_access(&mut self, bank: usize, first: u32, write: Option<u64>) -> Outcome {
        let mut out = 0u64;
        for f in 0..16u32 {
            let intid = first + f;
            let Some(irq) = self.irq_mut(bank, intid) else {
                continue;
            };
            if intid < 16 {
                out |= 2 << (2 * f);
                continue;
            }
            match write {
                None => out |= u64::from(!irq.level) << (2 * f + 1),
                Some(v) => irq.level = v & (2 << (2 * f)) == 0,
            }
        }
        Outcome::value(if write.is_some() { 0 } else { out })
    }

    /// GICv2 GICD_SGIR.
    fn sgir_write(&mut self, vcpu: usize, v: u32) -> Kick {
        let all = (1u64 << self.nvcpus()) - 1;
        let targets = match (v >> 24) & 3 {
            0 => u64::from((v >> 16) & 0xff),
            1 => all & !(1 << vcpu),
            2 => 1 << vcpu,
            _ => 0,
        } & all;
        self.send_sgi(vcpu, v & 0xf, targets)
    }

    /// GICv2 CPENDSGIR/SPENDSGIR: one byte per SGI, one bit per source.
    fn sgi_pending_access(
        &mut self,
        vcpu: usize,
        first: u32,
        width: u64,
        set: bool,
        write: Option<u64>,
    ) -> Outcome {
        let valid = ((1u32 << self.nvcpus()) - 1) as u8;
        let mut out = 0u64;
        let mut kick = 0;
        for b in 0..width as u32 {
            let sgi = first + b;
            if sgi >= 16 {
                continue;
            }
            let Some(irq) = self.irq_mut(vcpu, sgi) else {
                continue;
            };
            match write {
                None => out |= u64::from(irq.sources) << (8 * b),
                Some(v) => {
                    let bits = (v >> (8 * b)) as u8 & valid;
                    if set {
                        irq.sources |= bits;
                    } else {
                        irq.sources &= !bits;
                    }
                    kick |= self.update(vcpu, sgi);
                }
            }
        }
        Outcome { value: out, kick }
    }

    /// GICv3 GICD_IROUTER<n> (64-bit, or 32-bit halves). Our vCPUs have
    /// affinity Aff0 = index; anything else is unroutable.
    fn irouter_access(&mut self, off: u64, a: Access) -> Outcome {
        let intid = (off / 8) as u32;
        let high = off % 8 == 4;
        if (intid as usize) < PRIVATE || !(a.width == 8 || (a.width == 4)) {
            return Outcome::default();
        }
        let Some(irq) = self.irq(0, intid).copied() else {
            return Outcome::default();
        };
        let current = u64::from(irq.target) | (u64::from(irq.route_any) << 31);
        match a.write {
            None => {
                let v = if high { current >> 32 } else { current };
                Outcome::value(if a.width == 4 { v & 0xffff_ffff } else { v })
            }
            Some(v) => {
                let new = match (a.width, high) {
                    (8, _) => v,
                    (_, false) => (current & !0xffff_ffff) | (v & 0xffff_ffff),
                    (_, true) => (current & 0xffff_ffff) | (v << 32),
                };
                // Aff1..Aff3 must be 0 for our vCPUs.
                let aff_hi = ((new >> 8) & 0xffff) | ((new >> 32) & 0xff);
                let Some(irq) = self.irq_mut(0, intid) else {
                    return Outcome::default();
                };
                irq.route_any = new & (1 << 31) != 0;
                irq.target = if aff_hi == 0 { new as u8 } else { 0xff };
                Outcome::kick(self.update(0, intid))
            }
        }
    }
}

fn bit_reg(off: u64) -> BitReg {
    match off & !0x7f {
        IGROUPR => BitReg::Group,
        ISENABLER => BitReg::SetEnable,
        ICENABLER => BitReg::ClearEnable,
        ISPENDR => BitReg::SetPending,
        ICPENDR => BitReg::ClearPending,
        ISACTIVER => BitReg::SetActive,
        // ICACTIVER: the callers pass offsets below BIT_REGS_END only.
        _ => BitReg::ClearActive,
    }
}
