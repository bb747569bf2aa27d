//! Interrupt delivery at EL2: physical interrupts taken while a vCPU runs,
//! the VMs' virtual GICs reached through MMIO and system-register traps,
//! SGIs between vCPUs, and the injection API the rest of the hypervisor
//! (PCI INTx, the reset engine) uses.
//!
//! Every vCPU is pinned to its own physical CPU, and only that CPU writes
//! its list registers: an injection for a vCPU elsewhere updates the VM's
//! virtual GIC (under its lock) and kicks that CPU with an SGI, whose
//! interrupt makes it refill its list registers.

use crate::arch::aarch64::cpu;
use crate::arch::aarch64::gic::{self, CpuLrs, GicError, PhysGic};
use crate::arch::aarch64::head::MAX_CPUS;
use crate::arch::aarch64::trap::TrapFrame;
use crate::mmio::{MmioAccess, MmioDevice, MmioRegion};
use crate::vgic::dist::{Access, GICR_STRIDE};
use crate::vgic::{self, Eois, InjectError, Kick, VGic, Version};
use crate::vm::{Vm, system};
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use platform::{Gic, Platform};

/// Set up the physical distributor; call once on the boot CPU after the EL2
/// tables map the GIC.
pub fn init(platform: &Platform) -> Result<&'static PhysGic, GicError> {
    gic::init(platform)
}

/// Per-CPU GIC setup (CPU interface, redistributor, virtual interface).
/// The boot CPU also arms its hypervisor timer 1 ms ahead, as a check of
/// the CNTHP deadline path that reports once the first guest runs.
pub fn init_cpu(cpu: usize) -> Result<(), GicError> {
    gic::init_cpu(&system().platform, cpu)?;
    reroute_spis_of(cpu);
    if cpu == system().boot_cpu {
        let deadline = cpu::counter() + counter_hz() / 1000;
        CHECK_DEADLINE.store(deadline, Ordering::Relaxed);
        gic::hyp_timer_arm(cpu, deadline, hyp_timer_checked);
    }
    Ok(())
}

static CHECK_DEADLINE: AtomicU64 = AtomicU64::new(0);

fn counter_hz() -> u64 {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f) };
    f
}

fn hyp_timer_checked(now: u64) {
    let late = now.saturating_sub(CHECK_DEADLINE.load(Ordering::Relaxed));
    log::info!(
        "hypervisor timer (CNTHP) deadline reached on CPU {}, {late} ticks after it",
        cpu::cpu_index()
    );
}

/// What a VM's virtual GIC needs at creation: the state, the MMIO regions
/// to trap, and for GICv2 the GICV frame to map at the guest's GICC
/// address: (IPA, PA, size).
#[derive(Debug)]
pub struct VmGic {
    pub state: VGic,
    pub regions: [Option<MmioRegion>; 2],
    pub direct: Option<(u64, u64, u64)>,
}

pub fn vm_gic(platform: &Platform, nvcpus: usize) -> VmGic {
    let g = gic::get();
    let (version, regions, direct) = match &platform.gic {
        Gic::V2 {
            gicd, gicc, gicv, ..
        } => (
            Version::V2,
            [
                Some(MmioRegion {
                    base: gicd.base,
                    size: gicd.size.max(0x1000),
                    device: MmioDevice::Gicd,
                }),
                None,
            ],
            gicv.map(|v| (gicc.base, v.base, gicc.size.min(v.size))),
        ),
        Gic::V3 { gicd, gicr, .. } => (
            Version::V3,
            [
                Some(MmioRegion {
                    base: gicd.base,
                    size: gicd.size.max(0x1_0000),
                    device: MmioDevice::Gicd,
                }),
                gicr.first().map(|r| MmioRegion {
                    base: r.base,
                    size: GICR_STRIDE * nvcpus as u64,
                    device: MmioDevice::Gicr,
                }),
            ],
            None,
        ),
    };
    let mut state = VGic::new(version, nvcpus, g.prio_bits);
    state.set_hw_by_eoi(!g.hw_deactivation);
    for v in 0..state.nvcpus() {
        // The EL1 timers' interrupts arrive at EL2 physically and go in
        // with the HW bit: the guest's deactivation deactivates them.
        let _ = state.bind_hw(v, g.vtimer, g.vtimer);
        let _ = state.bind_hw(v, g.ptimer, g.ptimer);
    }
    VmGic {
        state,
        regions,
        direct,
    }
}

/// Index of `vm` in the system's VM list.
fn vm_index(vm: &Vm) -> usize {
    system()
        .vms
        .iter()
        .position(|v| core::ptr::eq(v, vm))
        .unwrap_or(usize::MAX)
}

/// Read back and refill this CPU's list registers for `vcpu`, report EOIs,
/// kick the other vCPUs in `kick`.
fn refresh(vm: &Vm, vcpu: usize, kick: Kick) {
    let mut lrs = CpuLrs;
    let mut eois = Eois::default();
    let k = {
        let mut s = vm.vgic.lock();
        let k1 = s.sync_into(vcpu, &mut lrs, &mut eois);
        let k2 = s.flush(vcpu, &mut lrs);
        kick | k1 | k2
    };
    report_eois(vm, &eois);
    kick_others(vm, vcpu, k);
}

/// Tell the EOI hook about level-sensitive interrupts the guest completed.
fn report_eois(vm: &Vm, eois: &Eois) {
    if eois.len == 0 {
        return;
    }
    let hook = EOI_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: only `set_eoi_hook` stores non-zero values, from a
        // `fn(usize, u32)`.
        let f: fn(usize, u32) = unsafe { core::mem::transmute::<usize, fn(usize, u32)>(hook) };
        let index = vm_index(vm);
        for intid in eois.iter() {
            f(index, intid);
        }
    }
}

/// Kick every vCPU of `vm` in `kick` except `me` (which the caller
/// refreshes itself).
fn kick_others(vm: &Vm, me: usize, kick: Kick) {
    let mut bits = kick & !(1u64 << me);
    while bits != 0 {
        let v = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if let Some(target) = vm.vcpus.get(v) {
            gic::kick(target.pcpu);
        }
    }
}

/// After a trap changed `vm`'s virtual GIC: refresh this vCPU if it is
/// concerned, kick the others.
fn after_change(vm: &Vm, vcpu: usize, kick: Kick) {
    if kick & (1 << vcpu) != 0 {
        refresh(vm, vcpu, kick);
    } else if kick != 0 {
        kick_others(vm, vcpu, kick);
    }
}

#[allow(dead_code)]
/// Kick from outside a trap of the VM (another VM's trap, a physical SPI
/// handler): every target vCPU's CPU, this one included.
fn kick_all(vm: &Vm, kick: Kick) {
    let mut bits = kick;
    while bits != 0 {
        let v = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if let Some(target) = vm.vcpus.get(v) {
            gic::kick(target.pcpu);
        }
    }
}

/// Bring `vcpu`'s virtual interrupt state and this CPU's virtual interface
/// to reset, before the vCPU (re)starts here.
pub fn vcpu_start(vm: &Vm, vcpu: usize) {
    let g = gic::get();
    let held = vm.vgic.lock().reset_vcpu(vcpu);
    gic::reset_virtual_interface();
    let mut bits = held | (1 << g.vtimer) | (1 << g.ptimer);
    while bits != 0 {
        gic::deactivate_intid(bits.trailing_zeros());
        bits &= bits - 1;
    }
}

/// Physical interrupt while `vcpu` of `vm` ran.
pub fn lower_el_irq(vm: &Vm, vcpu: usize) {
    let g = gic::get();
    let mut kick: Kick = 0;
    let mut maintenance = None;
    // A few per trap; more pending ones trap again at once.
    for _ in 0..4 {
        let Some(a) = gic::ack() else { break };
        let intid = a.intid;
        gic::priority_drop(a);
        if intid == g.vtimer || intid == g.ptimer {
            // Stays active until the guest deactivates the virtual one.
            kick |= vm.vgic.lock().inject(vcpu, intid).unwrap_or(0);
        } else if intid == g.maintenance {
            // Level: deactivate once the conditions are cleared below.
            maintenance = Some(a);
        } else if intid == g.hyp_timer {
            gic::deactivate(a);
            gic::hyp_timer_fired(cpu::cpu_index(), cpu::counter());
        } else if intid >= 32 {
            if dispatch_spi(intid) {
                gic::deactivate(a);
            }
        } else {
            // The kick SGI: the refresh below is what it asks for.
            gic::deactivate(a);
        }
    }
    refresh(vm, vcpu, kick);
    if let Some(a) = maintenance {
        gic::deactivate(a);
    }
}

/// Wait on a CPU with no vCPU running: WFI (on QEMU an idle CPU then
/// really halts, so `-icount` figures of other CPUs stay exact), then handle
/// what woke it with interrupts still masked at EL2: kick SGIs (the reason
/// to look again), the hypervisor timer, SPIs routed here.
pub fn idle_wait() {
    let g = gic::get();
    aarch64_cpu::asm::wfi();
    for _ in 0..4 {
        let Some(a) = gic::ack() else { break };
        gic::priority_drop(a);
        if a.intid == g.hyp_timer {
            gic::deactivate(a);
            gic::hyp_timer_fired(cpu::cpu_index(), cpu::counter());
        } else if a.intid >= 32 {
            if dispatch_spi(a.intid) {
                gic::deactivate(a);
            }
        } else {
            // A kick, or a timer of a vCPU that is off: nothing to do.
            gic::deactivate(a);
        }
    }
}

/// Wake the idle physical CPU `pcpu` (it waits in [`idle_wait`]).
pub fn wake(pcpu: usize) {
    gic::kick(pcpu);
}

/// A trapped access to the VM's distributor (`redist` false) or
/// redistributor region.
pub fn gic_mmio(
    vm: &Vm,
    vcpu: usize,
    redist: bool,
    offset: u64,
    access: MmioAccess,
    frame: &mut TrapFrame,
) {
    emulate(vm, vcpu, vm.vgic.lock(), redist, offset, access, frame);
}

fn emulate(
    vm: &Vm,
    vcpu: usize,
    mut s: spin::MutexGuard<'_, VGic>,
    redist: bool,
    offset: u64,
    access: MmioAccess,
    frame: &mut TrapFrame,
) {
    let a = Access {
        offset,
        width: access.width().bytes(),
        write: access
            .write()
            .then(|| access.store_value(frame.reg(access.reg()))),
    };
    // Reads of pending/active state (ISPENDR..ICACTIVER, in GICD and in
    // the SGI frames) see what the guest did to the list registers since
    // the last look.
    if !access.write() && (0x200..0x400).contains(&(offset & 0xffff)) {
        let (eois, synced) = s.sync(vcpu, &mut CpuLrs);
        let out = if redist {
            s.redist_access(a)
        } else {
            s.dist_access(vcpu, a)
        };
        drop(s);
        frame.set_reg(access.reg(), access.load_result(out.value));
        report_eois(vm, &eois);
        let kick = out.kick | synced;
        if kick != 0 {
            after_change(vm, vcpu, kick);
        }
        return;
    }
    let out = if redist {
        s.redist_access(a)
    } else {
        s.dist_access(vcpu, a)
    };
    drop(s);
    if !access.write() {
        frame.set_reg(access.reg(), access.load_result(out.value));
    }
    if out.kick != 0 {
        after_change(vm, vcpu, out.kick);
    }
}

/// ESR_EL2.EC for a trapped MSR/MRS.
pub const EC_SYSREG: u64 = 0x18;

/// A trapped system register access (EC 0x18): the GICv3 SGI generation
/// registers (ICC_SGI1R_EL1, ICC_ASGI1R_EL1, ICC_SGI0R_EL1) trap to EL2
/// with HCR_EL2.IMO/FMO set. Returns false for anything else (the caller
/// injects an undefined instruction).
pub fn sysreg_trap(vm: &Vm, vcpu: usize, esr: u64, frame: &mut TrapFrame) -> bool {
    let iss = esr & 0x1ff_ffff;
    let read = iss & 1 != 0;
    let rt = ((iss >> 5) & 0x1f) as u8;
    let crm = (iss >> 1) & 0xf;
    let crn = (iss >> 10) & 0xf;
    let op1 = (iss >> 14) & 7;
    let op2 = (iss >> 17) & 7;
    let op0 = (iss >> 20) & 3;
    if read || (op0, op1, crn, crm) != (3, 0, 12, 11) || !(5..=7).contains(&op2) {
        return false;
    }
    let value = frame.reg(rt);
    let kick = {
        let mut s = vm.vgic.lock();
        if s.version != Version::V3 {
            return false;
        }
        let targets = vgic::sgi1r_targets(value, vcpu, s.nvcpus());
        s.send_sgi(vcpu, ((value >> 24) & 0xf) as u32, targets)
    };
    frame.elr += 4;
    after_change(vm, vcpu, kick);
    true
}

// ---- API for other parts of the hypervisor ------------------------------------
// PCI INTx and the reset engine use these; some are unused in some
// configurations.

/// Physical SPI handlers: `fn(intid) -> bool` (true: deactivate the
/// physical interrupt now; false: it stays active, e.g. because a virtual
/// interrupt with the HW bit will deactivate it), indexed by INTID.
static SPI_HANDLERS: [AtomicUsize; 1020] = [const { AtomicUsize::new(0) }; 1020];
/// Called with (VM index, virtual INTID) when a guest EOIs a level-sensitive
/// virtual interrupt injected with [`set_spi_line`].
static EOI_HOOK: AtomicUsize = AtomicUsize::new(0);

fn dispatch_spi(intid: u32) -> bool {
    let h = SPI_HANDLERS
        .get(intid as usize)
        .map_or(0, |h| h.load(Ordering::Acquire));
    if h == 0 {
        // Nobody owns it: keep it from firing again.
        gic::disable_spi(intid);
        return true;
    }
    // SAFETY: only `register_spi` stores non-zero values, from a `fn(u32) -> bool`.
    let f: fn(u32) -> bool = unsafe { core::mem::transmute::<usize, fn(u32) -> bool>(h) };
    f(intid)
}

#[allow(dead_code)]
/// Take physical SPI `pintid`: route it to physical CPU `pcpu` (the pCPU of
/// the owning VM's vCPU that should handle it), level- or edge-triggered,
/// enable it, and call `handler(pintid)` at EL2 on that CPU when it fires
/// (the handler returns whether to deactivate it now).
pub fn register_spi(pintid: u32, pcpu: usize, level: bool, handler: fn(u32) -> bool) {
    if !(32..1020).contains(&pintid) || pcpu >= MAX_CPUS.min(127) {
        return;
    }
    SPI_HANDLERS[pintid as usize].store(handler as usize, Ordering::Release);
    SPI_ROUTE[pintid as usize].store((pcpu as u8 + 1) | (u8::from(level) << 7), Ordering::Release);
    gic::route_spi(pintid, pcpu, level);
}

/// Where each registered SPI goes: pCPU + 1 in bits 6:0 (0 = none), level
/// in bit 7. Replayed when a CPU comes up (a GICv2 CPU interface mask is
/// only known once that CPU has read its banked ITARGETSR0).
static SPI_ROUTE: [AtomicU8; 1020] = [const { AtomicU8::new(0) }; 1020];

fn reroute_spis_of(cpu: usize) {
    for (pintid, r) in SPI_ROUTE.iter().enumerate() {
        let r = r.load(Ordering::Acquire);
        if r & 0x7f == cpu as u8 + 1 {
            gic::route_spi(pintid as u32, cpu, r & 0x80 != 0);
        }
    }
}

/// Stop taking registered SPI `pintid` for now (its handler stays).
pub fn hold_spi(pintid: u32) {
    if (32..1020).contains(&pintid) {
        gic::disable_spi(pintid);
    }
}

/// Take registered SPI `pintid` again after [`hold_spi`], as registered.
pub fn release_spi(pintid: u32) {
    let Some(r) = SPI_ROUTE.get(pintid as usize) else {
        return;
    };
    let r = r.load(Ordering::Acquire);
    if r & 0x7f != 0 {
        gic::route_spi(pintid, usize::from(r & 0x7f) - 1, r & 0x80 != 0);
    }
}

#[allow(dead_code)]
/// Give physical SPI `pintid` back: disabled, no handler.
pub fn unregister_spi(pintid: u32) {
    if let Some(h) = SPI_HANDLERS.get(pintid as usize) {
        gic::disable_spi(pintid);
        h.store(0, Ordering::Release);
        SPI_ROUTE[pintid as usize].store(0, Ordering::Release);
    }
}

#[allow(dead_code)]
/// Be told (VM index, virtual INTID) when a guest EOIs a level-sensitive
/// interrupt injected with [`set_spi_line`] (the vfio INTx scheme: unmask
/// the device's INTx then).
pub fn set_eoi_hook(hook: fn(usize, u32)) {
    EOI_HOOK.store(hook as usize, Ordering::Release);
}

#[allow(dead_code)]
/// Drive virtual SPI `vintid` of VM `vm` as a level-sensitive line with
/// EOI notification. The guest's EOI drops the line and calls the EOI hook;
/// assert it again if the source still needs service.
pub fn set_spi_line(vm: usize, vintid: u32, asserted: bool) -> Result<(), InjectError> {
    let vm = system().vms.get(vm).ok_or(InjectError::NoSuchInterrupt)?;
    if vintid < 32 {
        return Err(InjectError::NoSuchInterrupt);
    }
    let kick = vm.vgic.lock().set_line(0, vintid, asserted, true)?;
    kick_all(vm, kick);
    Ok(())
}

#[allow(dead_code)]
/// Inject virtual SPI `vintid` of VM `vm` backed by physical `pintid` (HW
/// bit): the physical interrupt must be left active by its handler (return
/// false); the guest's deactivation deactivates it.
pub fn inject_hw_spi(vm: usize, vintid: u32, pintid: u32) -> Result<(), InjectError> {
    let vm = system().vms.get(vm).ok_or(InjectError::NoSuchInterrupt)?;
    if vintid < 32 {
        return Err(InjectError::NoSuchInterrupt);
    }
    let kick = {
        let mut s = vm.vgic.lock();
        s.bind_hw(0, vintid, pintid)?;
        s.inject(0, vintid)?
    };
    kick_all(vm, kick);
    Ok(())
}

#[allow(dead_code)]
/// Make virtual interrupt `vintid` pending (edge) on VM `vm` (`vcpu` for
/// SGIs/PPIs).
pub fn inject(vm: usize, vcpu: usize, vintid: u32) -> Result<(), InjectError> {
    let vm = system().vms.get(vm).ok_or(InjectError::NoSuchInterrupt)?;
    let kick = vm.vgic.lock().inject(vcpu, vintid)?;
    kick_all(vm, kick);
    Ok(())
}

/// The hypervisor timer (CNTHP) deadline API, for the reset engine.
#[allow(unused_imports)]
pub use gic::{hyp_timer_arm, hyp_timer_cancel, hyp_timer_poll};
