//! The physical GIC at EL2: the distributor and redistributors through the
//! platform crate's driver, the CPU interface (GICv3 system registers or the
//! GICv2 GICC frame), the list registers (ICH_* system registers or the
//! GICH frame), cross-CPU kicks, and the EL2 physical timer (CNTHP).
//!
//! Interrupts the hypervisor owns are Group 1 (GICv3) at one priority; the
//! CPU interface runs with EOImode = 1, so acknowledging and the priority
//! drop are separate from deactivation. That lets a physical interrupt
//! backed by a virtual one (HW bit) stay active until the guest deactivates
//! the virtual one.

use super::head::MAX_CPUS;
use crate::vgic::lr::{ListRegisters, Lr};
use core::arch::asm;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use platform::gic_driver::{CpuInterface, Distributor, Redistributor, VirtualControl};
use platform::{Gic, Platform};
use spin::Once;

/// The SGI one CPU sends another to make it look at its vCPU's interrupts.
pub const KICK_SGI: u32 = 0;
/// INTIDs of the interrupts that are the same on every platform we know,
/// used when the DTB does not say.
const DEFAULT_MAINTENANCE: u32 = 25;
const DEFAULT_HYP_TIMER: u32 = 26;

/// Why the GIC cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicError {
    /// GICv2 without GICH/GICV frames: no virtualization support.
    NoVirtualInterface,
    /// No redistributor matches this CPU's affinity.
    NoRedistributor(u64),
}

#[derive(Debug)]
enum Kind {
    V2 {
        gicd: Distributor,
        gicc: CpuInterface,
        gich: VirtualControl,
    },
    V3 {
        gicd: Distributor,
    },
}

/// The physical GIC, after [`init`].
#[derive(Debug)]
pub struct PhysGic {
    kind: Kind,
    pub maintenance: u32,
    pub hyp_timer: u32,
    pub vtimer: u32,
    pub ptimer: u32,
    /// List registers per CPU interface.
    pub lrs: usize,
    /// Priority bits of the virtual CPU interface.
    pub prio_bits: u32,
    /// GICv3: active-priority registers per group (1, 2 or 4).
    apr_regs: usize,
    /// MPIDR of every CPU (index = logical CPU).
    mpidrs: [u64; MAX_CPUS],
    /// Let the guest deactivate physically backed interrupts through the
    /// list registers' HW bit. Off for GICv2: QEMU's GICv2 does not
    /// re-evaluate the physical CPU interface after such a deactivation (a
    /// level interrupt re-asserted meanwhile is never signalled), so there
    /// the hypervisor deactivates at the guest's EOI (EOI maintenance).
    pub hw_deactivation: bool,
}

static GIC: Once<PhysGic> = Once::new();
/// GICv2: CPU interface mask of each CPU.
static V2_MASK: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

pub fn get() -> &'static PhysGic {
    match GIC.get() {
        Some(g) => g,
        None => {
            crate::console::print(format_args!("phv: GIC used before init\n"));
            loop {
                super::cpu::wait_for_event();
            }
        }
    }
}

macro_rules! sysreg_read {
    ($name:expr) => {{
        let v: u64;
        // SAFETY: reading a GIC system register at EL2 has no memory effects.
        unsafe { asm!(concat!("mrs {}, ", $name), out(reg) v, options(nomem, nostack)) };
        v
    }};
}

macro_rules! sysreg_write {
    ($name:expr, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: GIC system registers of this CPU, owned by the hypervisor.
        unsafe { asm!(concat!("msr ", $name, ", {}"), in(reg) v, options(nomem, nostack)) };
    }};
}

/// Set up the distributor (boot CPU, once) and read the virtual interface's
/// parameters.
pub fn init(platform: &Platform) -> Result<&'static PhysGic, GicError> {
    let mut mpidrs = [0u64; MAX_CPUS];
    for (m, c) in mpidrs.iter_mut().zip(&platform.cpus) {
        *m = c.mpidr;
    }
    let t = &platform.timer;
    let (kind, maintenance, lrs, prio_bits, apr_regs) = match &platform.gic {
        Gic::V2 {
            gicd,
            gicc,
            gich,
            maintenance_irq,
            ..
        } => {
            let gich = gich.ok_or(GicError::NoVirtualInterface)?;
            // SAFETY: the frames come from the DTB and are mapped as Device
            // memory in the EL2 tables for the hypervisor's lifetime.
            let (d, c, h) = unsafe {
                (
                    Distributor::new(gicd.base as usize),
                    CpuInterface::new(gicc.base as usize),
                    VirtualControl::new(gich.base as usize),
                )
            };
            d.init(false);
            let vtr = h.vtr();
            let lrs = (vtr & 0x3f) as usize + 1;
            let prio = ((vtr >> 29) & 7) + 1;
            (
                Kind::V2 {
                    gicd: d,
                    gicc: c,
                    gich: h,
                },
                maintenance_irq.unwrap_or(DEFAULT_MAINTENANCE),
                lrs,
                prio,
                1,
            )
        }
        Gic::V3 {
            gicd,
            maintenance_irq,
            ..
        } => {
            // SAFETY: as above.
            let d = unsafe { Distributor::new(gicd.base as usize) };
            d.init(true);
            let vtr = sysreg_read!("ich_vtr_el2");
            let lrs = (vtr & 0x1f) as usize + 1;
            let prio = (((vtr >> 29) & 7) + 1) as u32;
            let pre = (((vtr >> 26) & 7) + 1) as u32;
            let apr = 1usize << pre.saturating_sub(5).min(2);
            (
                Kind::V3 { gicd: d },
                maintenance_irq.unwrap_or(DEFAULT_MAINTENANCE),
                lrs,
                prio,
                apr,
            )
        }
    };
    Ok(GIC.call_once(|| PhysGic {
        kind,
        maintenance,
        hyp_timer: t.hyp_phys.unwrap_or(DEFAULT_HYP_TIMER),
        vtimer: t.virt,
        ptimer: t.nonsecure_phys,
        lrs: lrs.min(crate::vgic::MAX_LRS),
        prio_bits,
        apr_regs,
        mpidrs,
        hw_deactivation: matches!(platform.gic, Gic::V3 { .. }),
    }))
}

/// Per-CPU setup: the CPU interface (and redistributor), the hypervisor's
/// PPIs and the kick SGI enabled, the virtual interface on.
pub fn init_cpu(platform: &Platform, cpu: usize) -> Result<(), GicError> {
    let g = get();
    let private = [KICK_SGI, g.maintenance, g.hyp_timer, g.vtimer, g.ptimer];
    match &g.kind {
        Kind::V2 { gicd, gicc, gich } => {
            if let Some(m) = V2_MASK.get(cpu) {
                m.store(gicd.own_mask_v2(), Ordering::Relaxed);
            }
            for intid in 0..32 {
                gicd.set_private_v2(intid, private.contains(&intid));
            }
            gicc.init();
            gich.set_vmcr(0);
            gich.set_hcr(1);
        }
        Kind::V3 { .. } => {
            // SRE | Enable: system registers at EL2, and EL1 may use them.
            sysreg_write!("icc_sre_el2", 0b1001);
            // SAFETY: barrier only.
            unsafe { asm!("isb", options(nomem, nostack)) };
            let mpidr = g.mpidrs.get(cpu).copied().unwrap_or(0);
            let Some(Gic::V3 { gicr, .. }) = Some(&platform.gic) else {
                return Err(GicError::NoRedistributor(mpidr));
            };
            let rd = gicr
                .iter()
                // SAFETY: redistributor regions from the DTB, mapped as
                // Device memory in the EL2 tables.
                .find_map(|r| unsafe {
                    Redistributor::find(r.base as usize, r.size as usize, mpidr)
                })
                .ok_or(GicError::NoRedistributor(mpidr))?;
            rd.init();
            for intid in private {
                rd.set_enabled(intid, true);
            }
            sysreg_write!("icc_pmr_el1", 0xff);
            sysreg_write!("icc_bpr1_el1", 0);
            // EOImode = 1: priority drop and deactivation split.
            sysreg_write!("icc_ctlr_el1", 1 << 1);
            sysreg_write!("icc_igrpen1_el1", 1);
            sysreg_write!("ich_vmcr_el2", 0);
            sysreg_write!("ich_hcr_el2", 1);
            // SAFETY: barrier only.
            unsafe { asm!("isb", options(nomem, nostack)) };
        }
    }
    reset_virtual_interface();
    Ok(())
}

/// An acknowledged physical interrupt.
#[derive(Clone, Copy, Debug)]
pub struct Acked {
    pub intid: u32,
    raw: u32,
}

/// Acknowledge the highest-priority pending interrupt, if any.
#[inline]
pub fn ack() -> Option<Acked> {
    let raw = match &get().kind {
        Kind::V2 { gicc, .. } => gicc.ack(),
        Kind::V3 { .. } => sysreg_read!("icc_iar1_el1") as u32,
    };
    let intid = raw & 0x3ff;
    (intid < 1020).then_some(Acked { intid, raw })
}

/// Priority drop only (EOImode = 1): the interrupt stays active.
#[inline]
pub fn priority_drop(a: Acked) {
    match &get().kind {
        Kind::V2 { gicc, .. } => gicc.eoi(a.raw),
        Kind::V3 { .. } => sysreg_write!("icc_eoir1_el1", u64::from(a.raw)),
    }
}

/// Deactivate an acknowledged interrupt on this CPU.
#[inline]
pub fn deactivate(a: Acked) {
    match &get().kind {
        Kind::V2 { gicc, .. } => gicc.deactivate(a.raw),
        Kind::V3 { .. } => sysreg_write!("icc_dir_el1", u64::from(a.raw)),
    }
}

/// Deactivate a physical interrupt by number: a PPI of this CPU or an SPI.
pub fn deactivate_intid(intid: u32) {
    match &get().kind {
        Kind::V2 { gicc, gicd, .. } => {
            if intid < 32 {
                gicc.deactivate(intid);
            } else {
                gicd.deactivate(intid);
            }
        }
        Kind::V3 { gicd } => {
            if intid < 32 {
                sysreg_write!("icc_dir_el1", u64::from(intid));
            } else {
                gicd.deactivate(intid);
            }
        }
    }
}

/// Make physical CPU `cpu` trap to EL2 soon.
pub fn kick(cpu: usize) {
    let g = get();
    match &g.kind {
        Kind::V2 { gicd, .. } => {
            let mask = V2_MASK.get(cpu).map_or(0, |m| m.load(Ordering::Relaxed));
            if mask != 0 {
                gicd.send_sgi_v2(KICK_SGI, mask);
            }
        }
        Kind::V3 { .. } => {
            let Some(&mpidr) = g.mpidrs.get(cpu) else {
                return;
            };
            let aff0 = mpidr & 0xff;
            let value = (1u64 << (aff0 & 0xf))
                | (((mpidr >> 8) & 0xff) << 16)
                | (u64::from(KICK_SGI) << 24)
                | (((mpidr >> 16) & 0xff) << 32)
                | ((aff0 >> 4) << 44)
                | (((mpidr >> 32) & 0xff) << 48);
            // SAFETY: barrier so the state written before the kick is
            // visible before the SGI.
            unsafe { asm!("dsb ishst", options(nostack)) };
            sysreg_write!("icc_sgi1r_el1", value);
            // SAFETY: barrier only.
            unsafe { asm!("isb", options(nomem, nostack)) };
        }
    }
}

#[allow(dead_code)]
/// Route SPI `intid` to physical CPU `cpu`, as level- or edge-triggered,
/// and enable it. For the owner of a passed-through device's interrupt.
pub fn route_spi(intid: u32, cpu: usize, level: bool) {
    let g = get();
    match &g.kind {
        Kind::V2 { gicd, .. } => {
            let mask = V2_MASK.get(cpu).map_or(0, |m| m.load(Ordering::Relaxed));
            gicd.set_level(intid, level);
            gicd.target_v2(intid, mask);
            gicd.set_enabled(intid, true);
        }
        Kind::V3 { gicd } => {
            gicd.set_level(intid, level);
            gicd.route_v3(intid, g.mpidrs.get(cpu).copied().unwrap_or(0));
            gicd.set_enabled(intid, true);
        }
    }
}

/// Disable SPI `intid`.
pub fn disable_spi(intid: u32) {
    match &get().kind {
        Kind::V2 { gicd, .. } | Kind::V3 { gicd } => gicd.set_enabled(intid, false),
    }
}

/// Empty list registers, active priorities and VMCR: the virtual CPU
/// interface as at a vCPU's reset. GICv3 EL1 also gets its system-register
/// interface (ICC_SRE_EL1.SRE).
pub fn reset_virtual_interface() {
    let g = get();
    let mut lrs = CpuLrs;
    for n in 0..g.lrs {
        lrs.write(n, Lr::EMPTY);
    }
    match &g.kind {
        Kind::V2 { gich, .. } => {
            gich.clear_apr();
            gich.set_vmcr(0);
            gich.set_hcr(1);
        }
        Kind::V3 { .. } => {
            sysreg_write!("ich_ap0r0_el2", 0);
            sysreg_write!("ich_ap1r0_el2", 0);
            if g.apr_regs > 1 {
                sysreg_write!("ich_ap0r1_el2", 0);
                sysreg_write!("ich_ap1r1_el2", 0);
            }
            if g.apr_regs > 2 {
                sysreg_write!("ich_ap0r2_el2", 0);
                sysreg_write!("ich_ap1r2_el2", 0);
                sysreg_write!("ich_ap0r3_el2", 0);
                sysreg_write!("ich_ap1r3_el2", 0);
            }
            sysreg_write!("ich_vmcr_el2", 0);
            sysreg_write!("ich_hcr_el2", 1);
            // SRE | DFB | DIB for the guest's EL1.
            sysreg_write!("icc_sre_el1", 0b111);
            // SAFETY: barrier only.
            unsafe { asm!("isb", options(nomem, nostack)) };
        }
    }
}

/// The list registers of the calling CPU.
#[derive(Debug)]
pub struct CpuLrs;

macro_rules! lr_access {
    ($n:expr, $write:expr, $($i:literal),*) => {
        match $n {
            $($i => match $write {
                Some(v) => { sysreg_write!(concat!("ich_lr", $i, "_el2"), v); 0 }
                None => sysreg_read!(concat!("ich_lr", $i, "_el2")),
            },)*
            _ => 0,
        }
    };
}

fn v3_lr(n: usize, write: Option<u64>) -> u64 {
    lr_access!(
        n, write, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    )
}

/// ICH_HCR_EL2 / GICH_HCR bits.
const HCR_EN: u64 = 1;
const HCR_NPIE: u64 = 1 << 3;

impl ListRegisters for CpuLrs {
    fn count(&self) -> usize {
        get().lrs
    }
    fn read(&mut self, n: usize) -> Lr {
        match &get().kind {
            Kind::V2 { gich, .. } => Lr::decode_v2(gich.lr(n)),
            Kind::V3 { .. } => Lr::decode_v3(v3_lr(n, None)),
        }
    }
    fn write(&mut self, n: usize, lr: Lr) {
        match &get().kind {
            Kind::V2 { gich, .. } => gich.set_lr(n, lr.encode_v2()),
            Kind::V3 { .. } => {
                v3_lr(n, Some(lr.encode_v3()));
            }
        }
    }
    fn set_refill_irq(&mut self, on: bool) {
        let v = HCR_EN | if on { HCR_NPIE } else { 0 };
        match &get().kind {
            Kind::V2 { gich, .. } => {
                if u64::from(gich.hcr()) != v {
                    gich.set_hcr(v as u32);
                }
            }
            Kind::V3 { .. } => sysreg_write!("ich_hcr_el2", v),
        }
    }
    fn deactivate_physical(&mut self, pintid: u32) {
        deactivate_intid(pintid);
    }
}

// ---- the EL2 physical timer (CNTHP) -----------------------------------------

/// Callback of each CPU's armed deadline (a `fn(u64)` as usize; 0 = none).
static HYP_TIMER_FN: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

#[allow(dead_code)]
/// Arm this CPU's hypervisor timer: `callback(now)` runs at EL2 when the
/// counter (CNTPCT) reaches `deadline`, from the interrupt taken while this
/// CPU's vCPU runs. Replaces a deadline armed before.
pub fn hyp_timer_arm(cpu: usize, deadline: u64, callback: fn(u64)) {
    let Some(slot) = HYP_TIMER_FN.get(cpu) else {
        return;
    };
    slot.store(callback as usize, Ordering::Release);
    sysreg_write!("cnthp_cval_el2", deadline);
    sysreg_write!("cnthp_ctl_el2", 1);
    // SAFETY: barrier only.
    unsafe { asm!("isb", options(nomem, nostack)) };
}

#[allow(dead_code)]
/// Disarm this CPU's hypervisor timer.
pub fn hyp_timer_cancel(cpu: usize) {
    sysreg_write!("cnthp_ctl_el2", 0);
    if let Some(slot) = HYP_TIMER_FN.get(cpu) {
        slot.store(0, Ordering::Release);
    }
}

/// For loops that wait at EL2 with interrupts masked (an idle CPU): run
/// this CPU's hypervisor-timer callback if its deadline has passed
/// (CNTHP_CTL_EL2.ISTATUS with the timer enabled).
#[allow(dead_code)]
pub fn hyp_timer_poll(cpu: usize, now: u64) {
    let ctl = sysreg_read!("cnthp_ctl_el2");
    if ctl & 0b101 == 0b101 {
        hyp_timer_fired(cpu, now);
    }
}

/// The hypervisor timer fired on `cpu`: disarm it and run the callback.
pub fn hyp_timer_fired(cpu: usize, now: u64) {
    sysreg_write!("cnthp_ctl_el2", 0);
    let f = HYP_TIMER_FN
        .get(cpu)
        .map_or(0, |s| s.swap(0, Ordering::AcqRel));
    if f != 0 {
        // SAFETY: only `hyp_timer_arm` stores non-zero values, from a `fn(u64)`.
        let f: fn(u64) = unsafe { core::mem::transmute::<usize, fn(u64)>(f) };
        f(now);
    }
}
