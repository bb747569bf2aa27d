//! Register blocks of the physical GIC (layouts compile-checked with
//! tock-registers) and the small driver the hypervisor uses at EL2: the
//! distributor (GICv2/GICv3), the GICv3 redistributors, and the GICv2 CPU
//! interface (GICC) and virtual interface control (GICH) frames. The GICv3
//! CPU interface is system registers and lives with the hypervisor's
//! architecture code.
//!
//! Every function that touches a frame takes it from a `&'static` block the
//! caller created with an `unsafe` constructor promising the address is the
//! device, mapped as Device memory.

pub mod regs;

use regs::{GiccRegs, GicdRegs, GichRegs, GicrRegs};
use tock_registers::interfaces::{Readable, Writeable};

/// Debug output of a frame wrapper: its address.
macro_rules! debug_by_address {
    ($($t:ident),*) => {$(
        impl core::fmt::Debug for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}@{:#x}", stringify!($t), self.regs as *const _ as usize)
            }
        }
    )*};
}
debug_by_address!(Distributor, Redistributor, CpuInterface, VirtualControl);

/// Shared between CPUs like the device itself.
macro_rules! shared_device {
    ($($t:ident),*) => {$(
        // SAFETY: the wrapper only performs volatile accesses to device
        // registers; the GIC arbitrates concurrent accesses (set/clear
        // registers, banked per-CPU frames), there is no Rust-visible state.
        unsafe impl Sync for $t {}
        // SAFETY: as above; the frame is not tied to a thread.
        unsafe impl Send for $t {}
    )*};
}
shared_device!(Distributor, Redistributor, CpuInterface, VirtualControl);

/// Serializes the distributor's ICFGR read-modify-writes (one distributor
/// per system). Held for two register accesses, never across anything
/// that could wait.
struct IcfgrLock;

static ICFGR_BUSY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

impl IcfgrLock {
    fn take() -> Self {
        use core::sync::atomic::Ordering;
        while ICFGR_BUSY
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        IcfgrLock
    }
}

impl Drop for IcfgrLock {
    fn drop(&mut self) {
        ICFGR_BUSY.store(false, core::sync::atomic::Ordering::Release);
    }
}

/// Highest INTID of an SPI (1019).
pub const MAX_SPI: u32 = 1019;
/// Priority the hypervisor gives its own interrupts (and everything).
pub const DEFAULT_PRIORITY: u8 = 0xa0;

/// GICD_CTLR bits (GICv3, as seen from Non-secure or with DS=1).
const CTLR_ENABLE_G0: u32 = 1 << 0;
const CTLR_ENABLE_G1: u32 = 1 << 1;
const CTLR_ARE_NS: u32 = 1 << 4;
const CTLR_RWP: u32 = 1 << 31;

/// The distributor.
#[derive(Clone, Copy)]
pub struct Distributor {
    regs: &'static GicdRegs,
}

impl Distributor {
    /// # Safety
    /// `base` is the GICD frame (64 KiB), mapped as Device memory for as
    /// long as the value lives, and only the hypervisor programs it.
    pub unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: per the contract, `base` is a live, mapped GICD frame.
            regs: unsafe { &*(base as *const GicdRegs) },
        }
    }

    /// Number of INTIDs the distributor implements (32 * (ITLinesNumber+1),
    /// at most 1020).
    pub fn lines(&self) -> u32 {
        (32 * ((self.regs.typer.get() & 0x1f) + 1)).min(MAX_SPI + 1)
    }

    fn wait_rwp(&self) {
        for _ in 0..1_000_000 {
            if self.regs.ctlr.get() & CTLR_RWP == 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Reset every SPI to disabled, inactive, not pending, level, priority
    /// [`DEFAULT_PRIORITY`], Group 1 (v3), and enable the distributor. SPIs
    /// are enabled one by one for their owners.
    pub fn init(&self, v3: bool) {
        let r = self.regs;
        r.ctlr.set(0);
        if v3 {
            self.wait_rwp();
        }
        let lines = self.lines();
        for n in 1..(lines / 32) as usize {
            r.icenabler[n].set(u32::MAX);
            r.icpendr[n].set(u32::MAX);
            r.icactiver[n].set(u32::MAX);
            if v3 {
                // On a GICv2 with security, group registers are Secure
                // only; without, Group 0 is what the GICC signals as IRQ.
                r.igroupr[n].set(u32::MAX);
            }
        }
        for intid in 32..lines as usize {
            r.ipriorityr[intid].set(DEFAULT_PRIORITY);
        }
        if v3 {
            self.wait_rwp();
            r.ctlr.set(CTLR_ARE_NS | CTLR_ENABLE_G1 | CTLR_ENABLE_G0);
            self.wait_rwp();
        } else {
            r.ctlr.set(CTLR_ENABLE_G0 | CTLR_ENABLE_G1);
        }
    }

    /// Enable or disable an SPI.
    pub fn set_enabled(&self, intid: u32, on: bool) {
        let (n, bit) = ((intid / 32) as usize, 1u32 << (intid % 32));
        if intid < 32 || intid >= self.lines() {
            return;
        }
        if on {
            self.regs.isenabler[n].set(bit);
        } else {
            self.regs.icenabler[n].set(bit);
        }
    }

    /// Level (true) or edge configuration of an SPI. ICFGR has no set or
    /// clear form and sixteen SPIs share a register: the read-modify-write
    /// is serialized, since CPUs configure SPIs concurrently (a guest's
    /// line on one, the hardware domain's on another).
    pub fn set_level(&self, intid: u32, level: bool) {
        if intid < 32 || intid >= self.lines() {
            return;
        }
        let n = (intid / 16) as usize;
        let shift = 2 * (intid % 16) + 1;
        let _held = IcfgrLock::take();
        let v = self.regs.icfgr[n].get();
        let v = if level {
            v & !(1 << shift)
        } else {
            v | (1 << shift)
        };
        self.regs.icfgr[n].set(v);
    }

    /// GICv3: route an SPI to the CPU with affinity `mpidr`.
    pub fn route_v3(&self, intid: u32, mpidr: u64) {
        if intid < 32 || intid >= self.lines() {
            return;
        }
        // Aff3 moves from 39:32 of MPIDR to 39:32 of IROUTER, Aff2..0 stay.
        self.regs.irouter[intid as usize].set(mpidr & 0xff_00ff_ffff);
    }

    /// GICv2: target an SPI at the CPU interfaces in `mask`.
    pub fn target_v2(&self, intid: u32, mask: u8) {
        if intid < 32 || intid >= self.lines() {
            return;
        }
        self.regs.itargetsr[intid as usize].set(mask);
    }

    /// GICv2: the calling CPU's interface mask (ITARGETSR0 is banked).
    pub fn own_mask_v2(&self) -> u8 {
        self.regs.itargetsr[0].get()
    }

    /// GICv2: send SGI `intid` to the CPU interfaces in `mask`.
    pub fn send_sgi_v2(&self, intid: u32, mask: u8) {
        self.regs.sgir.set((u32::from(mask) << 16) | (intid & 0xf));
    }

    /// Deactivate an SPI (from any CPU).
    pub fn deactivate(&self, intid: u32) {
        if intid < 32 || intid >= self.lines() {
            return;
        }
        self.regs.icactiver[(intid / 32) as usize].set(1 << (intid % 32));
    }

    /// GICv2: enable/disable and set the priority of a banked SGI/PPI on
    /// the calling CPU.
    pub fn set_private_v2(&self, intid: u32, on: bool) {
        if intid >= 32 {
            return;
        }
        self.regs.ipriorityr[intid as usize].set(DEFAULT_PRIORITY);
        if on {
            self.regs.isenabler[0].set(1 << intid);
        } else {
            self.regs.icenabler[0].set(1 << intid);
        }
    }
}

/// GICR_WAKER bits.
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// GICR_TYPER bits.
const TYPER_LAST: u64 = 1 << 4;
const TYPER_VLPIS: u64 = 1 << 1;

/// One GICv3 redistributor.
#[derive(Clone, Copy)]
pub struct Redistributor {
    regs: &'static GicrRegs,
}

impl Redistributor {
    /// Find the redistributor of the CPU with affinity `mpidr` in a
    /// redistributor region.
    ///
    /// # Safety
    /// `base..base+size` is a GICR region, mapped as Device memory for as
    /// long as the result lives.
    pub unsafe fn find(base: usize, size: usize, mpidr: u64) -> Option<Self> {
        let want = ((mpidr >> 8) & 0xff00_0000) | (mpidr & 0xff_ffff);
        let mut at = base;
        while at + core::mem::size_of::<GicrRegs>() <= base + size {
            // SAFETY: `at` is inside the region (checked above), at a frame
            // boundary the previous frame's TYPER told us.
            let regs: &'static GicrRegs = unsafe { &*(at as *const GicrRegs) };
            let typer = regs.rd.typer.get();
            if typer >> 32 == want {
                return Some(Self { regs });
            }
            if typer & TYPER_LAST != 0 {
                return None;
            }
            at += if typer & TYPER_VLPIS != 0 {
                0x4_0000
            } else {
                0x2_0000
            };
        }
        None
    }

    /// Wake the redistributor and reset the CPU's SGIs and PPIs: all
    /// disabled, Group 1, [`DEFAULT_PRIORITY`].
    pub fn init(&self) {
        let rd = &self.regs.rd;
        rd.waker.set(rd.waker.get() & !WAKER_PROCESSOR_SLEEP);
        for _ in 0..1_000_000 {
            if rd.waker.get() & WAKER_CHILDREN_ASLEEP == 0 {
                break;
            }
            core::hint::spin_loop();
        }
        let sgi = &self.regs.sgi;
        sgi.icenabler0.set(u32::MAX);
        sgi.icpendr0.set(u32::MAX);
        sgi.icactiver0.set(u32::MAX);
        sgi.igroupr0.set(u32::MAX);
        for p in sgi.ipriorityr.iter() {
            p.set(DEFAULT_PRIORITY);
        }
        self.wait_rwp();
    }

    fn wait_rwp(&self) {
        for _ in 0..1_000_000 {
            if self.regs.rd.ctlr.get() & (1 << 3) == 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Enable or disable an SGI/PPI of this CPU.
    pub fn set_enabled(&self, intid: u32, on: bool) {
        if intid >= 32 {
            return;
        }
        if on {
            self.regs.sgi.isenabler0.set(1 << intid);
        } else {
            self.regs.sgi.icenabler0.set(1 << intid);
        }
    }

    /// Deactivate an SGI/PPI of this CPU.
    pub fn deactivate(&self, intid: u32) {
        if intid < 32 {
            self.regs.sgi.icactiver0.set(1 << intid);
        }
    }
}

/// GICv2 CPU interface (GICC) of the calling CPU (the frame is banked).
#[derive(Clone, Copy)]
pub struct CpuInterface {
    regs: &'static GiccRegs,
}

/// GICC_CTLR: EnableGrp0 / EnableGrp1 (Enable in the Non-secure view) and
/// EOImode (bit 9: EOImodeS without security, EOImodeNS in the Non-secure
/// view): priority drop and deactivation split.
const GICC_CTLR_VALUE: u32 = 0b11 | (1 << 9);

impl CpuInterface {
    /// # Safety
    /// `base` is the GICC frame (8 KiB at least), mapped as Device memory.
    pub unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: per the contract, `base` is a live, mapped frame.
            regs: unsafe { &*(base as *const GiccRegs) },
        }
    }

    /// Accept every priority, no preemption grouping, EOImode split.
    pub fn init(&self) {
        self.regs.pmr.set(0xff);
        self.regs.bpr.set(0);
        self.regs.ctlr.set(GICC_CTLR_VALUE);
    }

    /// Acknowledge: the raw IAR (INTID in 9:0, source CPU 12:10 for SGIs).
    pub fn ack(&self) -> u32 {
        self.regs.iar.get()
    }

    /// Priority drop of an acknowledged interrupt (pass the raw IAR value).
    pub fn eoi(&self, iar: u32) {
        self.regs.eoir.set(iar);
    }

    /// Deactivate (pass the raw IAR value).
    pub fn deactivate(&self, iar: u32) {
        self.regs.dir.set(iar);
    }
}

/// GICv2 virtual interface control (GICH) of the calling CPU (banked).
#[derive(Clone, Copy)]
pub struct VirtualControl {
    regs: &'static GichRegs,
}

impl VirtualControl {
    /// # Safety
    /// `base` is the GICH frame (4 KiB at least), mapped as Device memory.
    pub unsafe fn new(base: usize) -> Self {
        Self {
            // SAFETY: per the contract, `base` is a live, mapped frame.
            regs: unsafe { &*(base as *const GichRegs) },
        }
    }
    /// GICH_VTR: list registers (count - 1 in 5:0), PRIbits - 1 in 31:29.
    pub fn vtr(&self) -> u32 {
        self.regs.vtr.get()
    }
    pub fn hcr(&self) -> u32 {
        self.regs.hcr.get()
    }
    pub fn set_hcr(&self, v: u32) {
        self.regs.hcr.set(v);
    }
    pub fn set_vmcr(&self, v: u32) {
        self.regs.vmcr.set(v);
    }
    pub fn lr(&self, n: usize) -> u32 {
        self.regs.lr.get(n).map_or(0, Readable::get)
    }
    pub fn set_lr(&self, n: usize, v: u32) {
        if let Some(r) = self.regs.lr.get(n) {
            r.set(v);
        }
    }
    /// Clear the active-priority register (vCPU reset).
    pub fn clear_apr(&self) {
        self.regs.apr.set(0);
    }
    pub fn misr(&self) -> u32 {
        self.regs.misr.get()
    }
}
