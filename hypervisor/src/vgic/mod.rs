//! The virtual GIC of one VM: per-interrupt state (the virtual distributor
//! and, banked per vCPU, SGIs and PPIs), per-vCPU ready sets, and the list
//! register allocator. Pure logic: the hardware is reached through
//! [`lr::ListRegisters`] (ICH_* system registers, the GICH frame, or a fake
//! in tests), and what must happen on other physical CPUs is returned as a
//! mask of vCPUs to kick.
//!
//! Ownership of an interrupt's state: while an interrupt sits in a list
//! register of vCPU `v` ("resident"), the hardware owns its pending/active
//! state; `v` reads it back ([`VGic::sync`]) before anything decides on it
//! again. Otherwise the state here is authoritative.
//!
//! The guest's distributor and redistributor registers are emulated in
//! [`dist`]. Nothing a guest writes reaches the physical GIC: physical
//! interrupts are bound to virtual ones only by the hypervisor
//! ([`VGic::bind_hw`]).

pub mod dist;
pub mod lr;

use alloc::vec::Vec;
use lr::{ListRegisters, Lr, LrState};

/// SGIs 0-15 and PPIs 16-31 are banked per vCPU.
pub const PRIVATE: usize = 32;
/// Number of SPIs a VM's virtual distributor implements (INTIDs 32..288).
pub const SPIS: usize = 256;
pub const NR_IRQS: usize = PRIVATE + SPIS;
/// Most vCPUs per VM (GICv2 target masks are 8 bits).
pub const MAX_VCPUS: usize = 8;
/// Most list registers (GICv2 and GICv3 have at most 16... v2 up to 64, we
/// use the first 16).
pub const MAX_LRS: usize = 16;
const READY_WORDS: usize = NR_IRQS.div_ceil(64);
/// INTID read when no interrupt is pending.
#[cfg(test)]
pub const SPURIOUS: u32 = 1023;

/// Which GIC architecture the VM sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V2,
    V3,
}

/// State of one virtual interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irq {
    pub enabled: bool,
    /// Pending latch (edge, ISPENDR, an injected HW interrupt, SGI).
    pub pending: bool,
    /// Level input asserted (level-sensitive software interrupts).
    pub line: bool,
    /// Active while not in a list register (set through ISACTIVER).
    pub active: bool,
    /// ICFGR: level-sensitive (false: edge).
    pub level: bool,
    pub group1: bool,
    pub priority: u8,
    /// GICv2 SPIs: ITARGETSR CPU mask. GICv3 SPIs: IROUTER Aff0 (vCPU).
    pub target: u8,
    /// GICv3 IROUTER.Interrupt_Routing_Mode (any vCPU).
    pub route_any: bool,
    /// Physical interrupt backing this one (HW bit).
    pub hw: Option<u16>,
    /// Tell the hypervisor when the guest EOIs it (and drop the line: the
    /// owner re-asserts it if the source still needs service).
    pub notify_eoi: bool,
    /// In list register `.1` of vCPU `.0`.
    pub resident: Option<(u8, u8)>,
    /// State of the list register when last read back (for register reads).
    pub lr_state: LrState,
    /// GICv2 SGIs: vCPUs that requested it and are not yet delivered.
    pub sources: u8,
}

impl Irq {
    fn wants_delivery(&self) -> bool {
        self.pending || self.line || self.active || self.sources != 0
    }
    /// Pending as the guest's ISPENDR reads it.
    pub fn reads_pending(&self) -> bool {
        self.pending || self.line || self.sources != 0 || self.lr_state.pending()
    }
    pub fn reads_active(&self) -> bool {
        self.active || self.lr_state.active()
    }
}

/// Per-vCPU part: banked interrupts, the ready set, what each list register
/// holds.
#[derive(Clone, Debug)]
pub struct VcpuGic {
    pub private: [Irq; PRIVATE],
    /// Interrupts deliverable to this vCPU and not yet in a list register.
    ready: [u64; READY_WORDS],
    /// INTID held by each list register.
    lrs: [Option<u16>; MAX_LRS],
    /// Private physical interrupts (HW) to deactivate on this vCPU's CPU at
    /// the next flush, because their virtual pending state was cleared.
    deactivate: u32,
    /// GICv3 GICR_WAKER.ProcessorSleep.
    pub asleep: bool,
}

impl VcpuGic {
    fn new(version: Version, index: usize) -> Self {
        let mut private = [Irq::default(); PRIVATE];
        for (i, irq) in private.iter_mut().enumerate() {
            // SGIs are always enabled on GICv2 (ISENABLER0[15:0] RAO/WI are
            // IMPLEMENTATION DEFINED; Linux expects them usable).
            irq.enabled = version == Version::V2 && i < 16;
            irq.level = false;
            irq.target = 1 << (index % 8);
        }
        Self {
            private,
            ready: [0; READY_WORDS],
            lrs: [None; MAX_LRS],
            deactivate: 0,
            asleep: version == Version::V3,
        }
    }
}

/// Events [`VGic::sync`] found: software interrupts with EOI notification
/// that the guest completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Eois {
    pub intids: [u16; MAX_LRS],
    pub len: usize,
}

impl Eois {
    fn push(&mut self, intid: u16) {
        if let Some(slot) = self.intids.get_mut(self.len) {
            *slot = intid;
            self.len += 1;
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.intids[..self.len].iter().map(|&i| u32::from(i))
    }
}

/// Mask of vCPUs whose physical CPU must re-examine its list registers.
pub type Kick = u64;

/// Why an injection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectError {
    /// No such INTID (or a private one for a vCPU the VM does not have).
    NoSuchInterrupt,
}

/// The virtual GIC of one VM.
#[derive(Clone, Debug)]
pub struct VGic {
    pub version: Version,
    /// GICD_CTLR: bit 0 EnableGrp0, bit 1 EnableGrp1 (v3: Grp1A).
    ctlr: u32,
    spis: Vec<Irq>,
    vcpus: Vec<VcpuGic>,
    /// Priority bits the virtual CPU interface implements, as a mask.
    prio_mask: u8,
    /// Physically backed interrupts go in as software interrupts with EOI
    /// maintenance, and the hypervisor deactivates the physical one when
    /// the guest EOIs (instead of the HW bit). For GIC models whose HW-bit
    /// deactivation does not re-evaluate the physical CPU interface (QEMU's
    /// GICv2: a level interrupt re-asserted while active then stays pending
    /// and is never signalled).
    hw_by_eoi: bool,
}

impl VGic {
    /// A VM's GIC with `nvcpus` vCPUs (1..=MAX_VCPUS) and a virtual CPU
    /// interface of `prio_bits` priority bits. Allocates; called at VM
    /// creation only.
    pub fn new(version: Version, nvcpus: usize, prio_bits: u32) -> Self {
        let nvcpus = nvcpus.clamp(1, MAX_VCPUS);
        let bits = prio_bits.clamp(4, 8);
        let prio_mask = (0xffu32 << (8 - bits)) as u8;
        Self {
            version,
            ctlr: 0,
            spis: alloc::vec![Irq::default(); SPIS],
            vcpus: (0..nvcpus).map(|i| VcpuGic::new(version, i)).collect(),
            prio_mask,
            hw_by_eoi: false,
        }
    }

    /// Deliver physically backed interrupts with EOI maintenance instead of
    /// the HW bit (see the field).
    pub fn set_hw_by_eoi(&mut self, on: bool) {
        self.hw_by_eoi = on;
    }

    pub fn nvcpus(&self) -> usize {
        self.vcpus.len()
    }

    /// The state of `intid` as seen from vCPU `bank` (private interrupts are
    /// banked).
    pub fn irq(&self, bank: usize, intid: u32) -> Option<&Irq> {
        let i = intid as usize;
        if i < PRIVATE {
            self.vcpus.get(bank).map(|v| &v.private[i])
        } else {
            self.spis.get(i - PRIVATE)
        }
    }

    /// The 32 interrupts `first..first + 32` (`first` a multiple of 32) as
    /// seen from vCPU `bank`.
    fn irq_block(&self, bank: usize, first: u32) -> Option<&[Irq]> {
        let i = first as usize;
        if i < PRIVATE {
            self.vcpus.get(bank).map(|v| &v.private[..])
        } else {
            self.spis.get(i - PRIVATE..i - PRIVATE + 32)
        }
    }

    fn irq_mut(&mut self, bank: usize, intid: u32) -> Option<&mut Irq> {
        let i = intid as usize;
        if i < PRIVATE {
            self.vcpus.get_mut(bank).map(|v| &mut v.private[i])
        } else {
            self.spis.get_mut(i - PRIVATE)
        }
    }

    fn group_enabled(&self, group1: bool) -> bool {
        self.ctlr & if group1 { 2 } else { 1 } != 0
    }

    /// The vCPU an SPI goes to, if any.
    fn spi_target(&self, irq: &Irq) -> Option<usize> {
        let n = self.vcpus.len();
        match self.version {
            Version::V2 => {
                let mask = u32::from(irq.target) & ((1u32 << n) - 1);
                (mask != 0).then(|| mask.trailing_zeros() as usize)
            }
            Version::V3 if irq.route_any => Some(0),
            Version::V3 => Some(usize::from(irq.target)).filter(|&t| t < n),
        }
    }

    /// Recompute where `intid` (banked on `bank`) stands after a change to
    /// its state: in some vCPU's ready set, or nowhere. Returns the vCPUs to
    /// kick.
    fn update(&mut self, bank: usize, intid: u32) -> Kick {
        let i = intid as usize;
        let Some(irq) = self.irq(bank, intid).copied() else {
            return 0;
        };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if i < PRIVATE {
            self.vcpus[bank].ready[word] &= !bit;
        } else {
            for v in &mut self.vcpus {
                v.ready[word] &= !bit;
            }
        }
        if let Some((v, _)) = irq.resident {
            // The vCPU holding it reads it back and decides again.
            return 1 << v;
        }
        if !(irq.enabled && irq.wants_delivery() && self.group_enabled(irq.group1)) {
            return 0;
        }
        let target = if i < PRIVATE {
            Some(bank)
        } else {
            self.spi_target(&irq)
        };
        match target {
            Some(t) => {
                self.vcpus[t].ready[word] |= bit;
                1 << t
            }
            None => 0,
        }
    }

    /// Re-examine every interrupt (after GICD_CTLR changes).
    fn update_all(&mut self) -> Kick {
        let mut kick = 0;
        for bank in 0..self.vcpus.len() {
            for intid in 0..PRIVATE as u32 {
                kick |= self.update(bank, intid);
            }
        }
        for intid in PRIVATE as u32..NR_IRQS as u32 {
            kick |= self.update(0, intid);
        }
        kick
    }

    /// Make `intid` pending (edge): a software interrupt, or a physical one
    /// bound with [`bind_hw`](Self::bind_hw) that the hypervisor acknowledged
    /// with a priority drop only.
    pub fn inject(&mut self, bank: usize, intid: u32) -> Result<Kick, InjectError> {
        let irq = self
            .irq_mut(bank, intid)
            .ok_or(InjectError::NoSuchInterrupt)?;
        irq.pending = true;
        Ok(self.update(bank, intid))
    }

    /// Back virtual `intid` by physical `pintid` (HW bit): the guest's
    /// deactivation deactivates the physical interrupt.
    pub fn bind_hw(&mut self, bank: usize, intid: u32, pintid: u32) -> Result<(), InjectError> {
        let irq = self
            .irq_mut(bank, intid)
            .ok_or(InjectError::NoSuchInterrupt)?;
        irq.hw = u16::try_from(pintid).ok();
        irq.notify_eoi = false;
        Ok(())
    }

    /// Drive the input line of a level-sensitive software interrupt. With
    /// `notify_eoi`, the guest's EOI is reported by [`sync`](Self::sync) and
    /// drops the line (the owner re-asserts it if the source is still
    /// asserted: the vfio INTx scheme).
    #[allow(dead_code)] // the PCI INTx path is its only user
    pub fn set_line(
        &mut self,
        bank: usize,
        intid: u32,
        asserted: bool,
        notify_eoi: bool,
    ) -> Result<Kick, InjectError> {
        let irq = self
            .irq_mut(bank, intid)
            .ok_or(InjectError::NoSuchInterrupt)?;
        irq.line = asserted;
        irq.notify_eoi = notify_eoi;
        irq.hw = None;
        Ok(self.update(bank, intid))
    }

    /// Send SGI `intid` from vCPU `from` to each vCPU in `targets`.
    pub fn send_sgi(&mut self, from: usize, intid: u32, targets: u64) -> Kick {
        if intid >= 16 {
            return 0;
        }
        let mut kick = 0;
        for t in 0..self.vcpus.len() {
            if targets & (1 << t) == 0 {
                continue;
            }
            let v2 = self.version == Version::V2;
            let irq = &mut self.vcpus[t].private[intid as usize];
            if v2 {
                irq.sources |= 1 << (from % 8);
            } else {
                irq.pending = true;
            }
            kick |= self.update(t, intid);
        }
        kick
    }

    /// Reset vCPU `v`'s banked interrupts and forget its list registers
    /// (which the caller clears in hardware) for a CPU_ON or VM restart.
    /// Returns the physical interrupts that were held active for it.
    pub fn reset_vcpu(&mut self, v: usize) -> u32 {
        let version = self.version;
        let Some(vc) = self.vcpus.get_mut(v) else {
            return 0;
        };
        let mut held = vc.deactivate;
        for irq in &vc.private {
            if let Some(p) = irq.hw
                && (irq.resident.is_some() || irq.pending)
            {
                held |= 1u32.checked_shl(u32::from(p)).unwrap_or(0);
            }
        }
        let hw: [Option<u16>; PRIVATE] = core::array::from_fn(|i| vc.private[i].hw);
        *vc = VcpuGic::new(version, v);
        for (irq, hw) in vc.private.iter_mut().zip(hw) {
            irq.hw = hw;
        }
        // SPIs that sat in its list registers are pending again.
        for intid in PRIVATE as u32..NR_IRQS as u32 {
            if let Some(irq) = self.irq_mut(0, intid)
                && irq.resident.is_some_and(|(rv, _)| usize::from(rv) == v)
            {
                irq.resident = None;
                irq.pending |= irq.lr_state.pending();
                irq.lr_state = LrState::Invalid;
                self.update(0, intid);
            }
        }
        held
    }

    /// Read back vCPU `v`'s list registers: completed interrupts leave them
    /// (and may become ready again: the kick mask may name `v` itself),
    /// still-pending ones stay.
    pub fn sync(&mut self, v: usize, hw: &mut dyn ListRegisters) -> (Eois, Kick) {
        let mut eois = Eois::default();
        let kick = self.sync_into(v, hw, &mut eois);
        (eois, kick)
    }

    /// [`Self::sync`] into the caller's `eois` (appended to): the trap
    /// path then copies no [`Eois`] around.
    pub fn sync_into(&mut self, v: usize, hw: &mut dyn ListRegisters, eois: &mut Eois) -> Kick {
        let mut kick = 0;
        let hw_by_eoi = self.hw_by_eoi;
        let n = hw.count().min(MAX_LRS);
        for slot in 0..n {
            let Some(intid) = self.vcpus.get(v).and_then(|vc| vc.lrs[slot]) else {
                continue;
            };
            let lr = hw.read(slot);
            let intid32 = u32::from(intid);
            let Some(irq) = self.irq_mut(v, intid32) else {
                continue;
            };
            irq.lr_state = lr.state;
            if lr.state != LrState::Invalid && lr.vintid == intid32 {
                // Still held. A new edge since it was placed merges into the
                // list register (pending again once the guest completes it);
                // what cannot merge (a GICv2 SGI from another source) asks
                // for EOI maintenance so the completion is seen.
                let v2_sgi = self.version == Version::V2 && intid32 < 16;
                let Some(irq) = self.irq_mut(v, intid32) else {
                    continue;
                };
                let mut new = lr;
                if irq.pending && !v2_sgi {
                    irq.pending = false;
                    new.state = match lr.state {
                        LrState::Active | LrState::PendingActive => LrState::PendingActive,
                        _ => LrState::Pending,
                    };
                    irq.lr_state = new.state;
                }
                if (irq.sources != 0 || irq.pending) && lr.pintid.is_none() {
                    new.eoi = true;
                }
                if new != lr {
                    hw.write(slot, new);
                }
                continue;
            }
            // Completed: the guest deactivated it.
            if hw_by_eoi && let Some(p) = irq.hw {
                hw.deactivate_physical(u32::from(p));
            }
            irq.resident = None;
            irq.lr_state = LrState::Invalid;
            if irq.notify_eoi {
                irq.line = false;
                eois.push(intid);
            }
            self.vcpus[v].lrs[slot] = None;
            if lr.eoi {
                // Clear the EOI bit so the maintenance interrupt deasserts.
                hw.write(slot, Lr::EMPTY);
            }
            kick |= self.update(v, intid32);
        }
        kick
    }

    /// Best (lowest priority value, then lowest INTID) ready interrupt of
    /// vCPU `v`.
    fn best_ready(&self, v: usize) -> Option<(u32, u8)> {
        let vc = self.vcpus.get(v)?;
        let mut best: Option<(u32, u8)> = None;
        for (w, &word) in vc.ready.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let intid = (w * 64) as u32 + bits.trailing_zeros();
                bits &= bits - 1;
                let prio = self.irq(v, intid).map_or(u8::MAX, |i| i.priority);
                if best.is_none_or(|(_, p)| prio < p) {
                    best = Some((intid, prio));
                }
            }
        }
        best
    }

    /// Fill vCPU `v`'s free list registers from its ready set by priority,
    /// evicting lower-priority pending ones if a better one waits, and ask
    /// for a refill interrupt if anything is left over. Call on `v`'s CPU
    /// after [`sync`](Self::sync).
    pub fn flush(&mut self, v: usize, hw: &mut dyn ListRegisters) -> Kick {
        let mut kick = 0;
        if v >= self.vcpus.len() {
            return 0;
        }
        let deactivate = core::mem::take(&mut self.vcpus[v].deactivate);
        let mut bits = deactivate;
        while bits != 0 {
            hw.deactivate_physical(bits.trailing_zeros());
            bits &= bits - 1;
        }
        let n = hw.count().min(MAX_LRS);
        while let Some((intid, prio)) = self.best_ready(v) {
            let slot = match self.vcpus[v].lrs[..n].iter().position(Option::is_none) {
                Some(s) => s,
                None => match self.evict(v, prio, hw) {
                    Some((s, k)) => {
                        kick |= k;
                        s
                    }
                    None => break,
                },
            };
            self.place(v, intid, slot, hw);
        }
        let leftover = self.vcpus[v].ready.iter().any(|&w| w != 0);
        hw.set_refill_irq(leftover);
        kick & !(1 << v)
    }

    /// Free the list register holding the worst pending-only interrupt if it
    /// is worse than `prio`.
    fn evict(&mut self, v: usize, prio: u8, hw: &mut dyn ListRegisters) -> Option<(usize, Kick)> {
        let n = hw.count().min(MAX_LRS);
        let mut victim: Option<(usize, u8)> = None;
        for slot in 0..n {
            let intid = u32::from(self.vcpus[v].lrs[slot]?);
            let irq = self.irq(v, intid)?;
            if irq.lr_state == LrState::Pending
                && irq.priority > prio
                && victim.is_none_or(|(_, p)| irq.priority > p)
            {
                victim = Some((slot, irq.priority));
            }
        }
        let (slot, _) = victim?;
        let lr = hw.read(slot);
        if lr.state != LrState::Pending {
            // Taken by the guest since the last read: not evictable now.
            let intid = u32::from(self.vcpus[v].lrs[slot]?);
            if let Some(irq) = self.irq_mut(v, intid) {
                irq.lr_state = lr.state;
            }
            return None;
        }
        hw.write(slot, Lr::EMPTY);
        let intid = u32::from(self.vcpus[v].lrs[slot].take()?);
        let irq = self.irq_mut(v, intid)?;
        irq.resident = None;
        irq.lr_state = LrState::Invalid;
        if !irq.level || irq.hw.is_some() {
            irq.pending = true;
        }
        if self.version == Version::V2 && intid < 16 {
            let irq = self.irq_mut(v, intid)?;
            irq.pending = false;
            irq.sources |= 1 << (lr.source & 7);
        }
        let kick = self.update(v, intid);
        Some((slot, kick))
    }

    fn place(&mut self, v: usize, intid: u32, slot: usize, hw: &mut dyn ListRegisters) {
        let version = self.version;
        let hw_by_eoi = self.hw_by_eoi;
        let Some(irq) = self.irq_mut(v, intid) else {
            return;
        };
        let mut source = 0;
        let pending = if version == Version::V2 && intid < 16 && irq.sources != 0 {
            source = irq.sources.trailing_zeros() as u8;
            irq.sources &= !(1 << source);
            true
        } else {
            irq.pending || irq.line
        };
        let state = match (pending, irq.active) {
            (true, true) => LrState::PendingActive,
            (true, false) => LrState::Pending,
            (false, _) => LrState::Active,
        };
        let (pintid, eoi) = match irq.hw {
            Some(_) if hw_by_eoi => (None, true),
            Some(p) => (Some(u32::from(p)), false),
            None => (None, irq.notify_eoi),
        };
        let lr = Lr {
            vintid: intid,
            pintid,
            priority: irq.priority,
            group1: irq.group1,
            state,
            eoi,
            source,
        };
        irq.pending = false;
        irq.active = false;
        irq.resident = Some((v as u8, slot as u8));
        irq.lr_state = state;
        hw.write(slot, lr);
        let i = intid as usize;
        self.vcpus[v].ready[i / 64] &= !(1u64 << (i % 64));
        self.vcpus[v].lrs[slot] = Some(intid as u16);
    }

    /// Whether vCPU `v` has anything to deliver or held in list registers.
    #[cfg(test)]
    pub fn has_work(&self, v: usize) -> bool {
        self.vcpus.get(v).is_some_and(|vc| {
            vc.ready.iter().any(|&w| w != 0) || vc.lrs.iter().any(Option::is_some)
        })
    }
}

/// The vCPUs an ICC_SGI1R_EL1 write from vCPU `from` addresses, as a mask.
/// Our vCPUs have affinity Aff0 = index and Aff1..Aff3 = 0.
pub fn sgi1r_targets(value: u64, from: usize, nvcpus: usize) -> u64 {
    let all = if nvcpus >= 64 {
        u64::MAX
    } else {
        (1u64 << nvcpus) - 1
    };
    if value & (1 << 40) != 0 {
        return all & !(1u64 << (from % 64));
    }
    let aff_hi = ((value >> 16) & 0xff) | ((value >> 32) & 0xff) | ((value >> 48) & 0xff);
    if aff_hi != 0 {
        return 0;
    }
    let rs = (value >> 44) & 0xf;
    let list = value & 0xffff;
    if rs * 16 >= 64 {
        return 0;
    }
    (list << (rs * 16)) & all
}

#[cfg(test)]
mod tests;
