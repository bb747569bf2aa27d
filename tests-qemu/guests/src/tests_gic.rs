//! Interrupt tests (`test=gic-*`) against the virtual GIC the guest's DT
//! describes (GICv3: GICD + GICR, system-register CPU interface; GICv2:
//! GICD + GICC):
//!
//! - `gic-timer`: EL1 virtual timer ticks arrive at the programmed rate
//!   (`ticks`, `period_us`), nothing else arrives, the timer stays quiet once
//!   disabled.
//! - `gic-sgi`: SGI ping-pong between vCPU 0 and vCPU 1 (`rounds`), source
//!   CPU reported (GICv2), broadcast to all-but-self.
//! - `gic-many`: 24 interrupts (SPIs and SGIs) made pending at once with
//!   distinct priorities, more than there are list registers: each arrives
//!   once, in priority order.
//! - `gic-spam`: hammer every distributor (and redistributor) register with
//!   junk and flood SGIs for `duration_ms`; the VM survives and its
//!   distributor still identifies itself. Run next to `gic-timer` in another
//!   VM, which must not notice.
//! - `gic-bench`: figures under `-icount shift=0` (1 counter tick = 1
//!   instruction): a null hypercall, a trapped GICD read and write, an
//!   untrapped load, virtual timer latency, SGI-to-self latency.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use test_guests::println;
use test_guests::rt::{self, Env, Test, call};
use test_guests::smccc::*;

const VTIMER: u32 = 27;
const SGI_PING: u32 = 1;
const SGI_PONG: u32 = 2;
const SGI_BCAST: u32 = 9;
const GICR_STRIDE: usize = 0x2_0000;
const LOG_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    V2,
    V3,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Gic {
    pub(crate) version: Version,
    pub(crate) gicd: usize,
    /// GICv3: first redistributor; GICv2: CPU interface.
    pub(crate) cpu: usize,
    cpu_size: usize,
}

static VERSION: AtomicU32 = AtomicU32::new(0);
static GICD: AtomicUsize = AtomicUsize::new(0);
static GICC: AtomicUsize = AtomicUsize::new(0);

// What the IRQ handler saw.
#[allow(clippy::declare_interior_mutable_const)]
const ZERO32: AtomicU32 = AtomicU32::new(0);
static COUNT: [AtomicU32; 64] = [ZERO32; 64];
static OTHER: AtomicU32 = AtomicU32::new(0);
static SPURIOUS: AtomicU32 = AtomicU32::new(0);
static LOG: [AtomicU32; LOG_LEN] = [ZERO32; LOG_LEN];
static LOG_N: AtomicUsize = AtomicUsize::new(0);
/// GICv2: SGIs whose IAR named an unexpected source CPU.
static BAD_SOURCE: AtomicU32 = AtomicU32::new(0);
// Timer.
static TICKS: AtomicU32 = AtomicU32::new(0);
static TICK_TARGET: AtomicU32 = AtomicU32::new(0);
static PERIOD: AtomicU64 = AtomicU64::new(0);
static FIRST_TICK: AtomicU64 = AtomicU64::new(0);
static LAST_TICK: AtomicU64 = AtomicU64::new(0);
static LATENCY_SUM: AtomicU64 = AtomicU64::new(0);
static LATENCY_MIN: AtomicU64 = AtomicU64::new(u64::MAX);
/// Counter at the handler's entry for the last interrupt.
static ENTRY: AtomicU64 = AtomicU64::new(0);
// SGI ping-pong.
static CPU1_READY: AtomicBool = AtomicBool::new(false);
static DONE: AtomicBool = AtomicBool::new(false);

pub fn run(env: &Env, name: &str) -> ! {
    let mut t = Test::new(match name {
        "gic-timer" => "gic-timer",
        "gic-sgi" => "gic-sgi",
        "gic-many" => "gic-many",
        "gic-spam" => "gic-spam",
        "gic-bench" => "gic-bench",
        _ => "gic",
    });
    let Some(gic) = find_gic(env) else {
        t.fail(format_args!(
            "no GICv2/GICv3 interrupt controller in the DT"
        ));
        t.finish(env)
    };
    select(&gic);
    println!(
        "{}: GIC{:?} GICD {:#x} {} {:#x}",
        t.name,
        gic.version,
        gic.gicd,
        if gic.version == Version::V3 {
            "GICR"
        } else {
            "GICC"
        },
        gic.cpu
    );
    rt::set_irq_handler(irq_handler);
    match name {
        "gic-timer" => timer(&mut t, env, &gic),
        "gic-sgi" => sgi(&mut t, env, &gic),
        "gic-many" => many(&mut t, env, &gic),
        "gic-spam" => spam(&mut t, env, &gic),
        "gic-bench" => bench(&mut t, &gic),
        _ => t.fail(format_args!("unknown GIC test {name}")),
    }
    mask_irqs();
    t.finish(env)
}

pub(crate) fn find_gic(env: &Env) -> Option<Gic> {
    let fdt = env.fdt();
    if let Some(node) = fdt.find_compatible(&["arm,gic-v3"]) {
        let mut reg = node.reg()?;
        let d = reg.next()?;
        let r = reg.next()?;
        return Some(Gic {
            version: Version::V3,
            gicd: d.starting_address as usize,
            cpu: r.starting_address as usize,
            cpu_size: r.size.unwrap_or(0),
        });
    }
    let node = fdt.find_compatible(&["arm,cortex-a15-gic", "arm,gic-400"])?;
    let mut reg = node.reg()?;
    let d = reg.next()?;
    let c = reg.next()?;
    Some(Gic {
        version: Version::V2,
        gicd: d.starting_address as usize,
        cpu: c.starting_address as usize,
        cpu_size: c.size.unwrap_or(0),
    })
}

/// Use `gic` for the helpers below (what `run` does for the gic-* tests).
pub(crate) fn select(gic: &Gic) {
    VERSION.store(
        if gic.version == Version::V3 { 3 } else { 2 },
        Ordering::SeqCst,
    );
    GICD.store(gic.gicd, Ordering::SeqCst);
    GICC.store(gic.cpu, Ordering::SeqCst);
}

// ---- register access ---------------------------------------------------------

fn r32(addr: usize) -> u32 {
    // SAFETY: an address inside the GIC frames the DT gave us (Device memory
    // in the runtime's map); trapped and emulated by the hypervisor or the
    // GICV frame it mapped.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}
fn w32(addr: usize, v: u32) {
    // SAFETY: as in `r32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
fn w8(addr: usize, v: u8) {
    // SAFETY: as in `r32`.
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}
fn r8(addr: usize) -> u8 {
    // SAFETY: as in `r32`.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}
fn w16(addr: usize, v: u16) {
    // SAFETY: as in `r32`.
    unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
}
fn w64(addr: usize, v: u64) {
    // SAFETY: as in `r32`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, v) }
}
fn r64(addr: usize) -> u64 {
    // SAFETY: as in `r32`.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn v3() -> bool {
    VERSION.load(Ordering::Relaxed) == 3
}
fn gicd() -> usize {
    GICD.load(Ordering::Relaxed)
}
fn gicc() -> usize {
    GICC.load(Ordering::Relaxed)
}
fn gicr_rd(cpu: usize) -> usize {
    gicc() + cpu * GICR_STRIDE
}
fn gicr_sgi(cpu: usize) -> usize {
    gicr_rd(cpu) + 0x1_0000
}

macro_rules! msr {
    ($reg:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: GIC CPU interface / timer system registers of this vCPU.
        unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nostack)) };
    }};
}
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading a system register of this vCPU.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nostack)) };
        v
    }};
}

pub(crate) fn mask_irqs() {
    // SAFETY: PSTATE.I of this vCPU.
    unsafe { asm!("msr daifset, #2", options(nostack)) };
}
pub(crate) fn unmask_irqs() {
    // SAFETY: PSTATE.I of this vCPU; the IRQ handler is installed.
    unsafe { asm!("msr daifclr, #2", options(nostack)) };
}

/// Distributor: enabled, all SPIs Group 1 (GICv3) or 0 (GICv2).
pub(crate) fn dist_init() {
    if v3() {
        for n in 1..9 {
            w32(gicd() + 0x80 + 4 * n, u32::MAX);
        }
        // ARE | EnableGrp1 | EnableGrp0.
        w32(gicd(), 0x13);
    } else {
        w32(gicd(), 1);
    }
}

/// This vCPU's redistributor / banked registers and CPU interface.
pub(crate) fn cpu_init(cpu: usize) {
    if v3() {
        w32(gicr_rd(cpu) + 0x14, 0);
        for _ in 0..1000 {
            if r32(gicr_rd(cpu) + 0x14) & 4 == 0 {
                break;
            }
        }
        w32(gicr_sgi(cpu) + 0x80, u32::MAX);
        for i in 0..32 {
            w8(gicr_sgi(cpu) + 0x400 + i, 0x80);
        }
        let sre = mrs!("icc_sre_el1");
        msr!("icc_sre_el1", sre | 1);
        msr!("icc_pmr_el1", 0xff);
        msr!("icc_bpr1_el1", 0);
        msr!("icc_igrpen1_el1", 1);
    } else {
        for i in 0..32 {
            w8(gicd() + 0x400 + i, 0x80);
        }
        w32(gicc() + 0x4, 0xff);
        w32(gicc() + 0x8, 0);
        w32(gicc(), 1);
    }
}

pub(crate) fn enable(intid: u32, cpu: usize) {
    let bit = 1u32 << (intid % 32);
    if v3() && intid < 32 {
        w32(gicr_sgi(cpu) + 0x100, bit);
    } else {
        w32(gicd() + 0x100 + 4 * (intid as usize / 32), bit);
    }
}

pub(crate) fn set_priority(intid: u32, cpu: usize, prio: u8) {
    if v3() && intid < 32 {
        w8(gicr_sgi(cpu) + 0x400 + intid as usize, prio);
    } else {
        w8(gicd() + 0x400 + intid as usize, prio);
    }
}

/// SPI `intid` to vCPU 0.
pub(crate) fn route_to_cpu0(intid: u32) {
    if v3() {
        w64(gicd() + 0x6000 + 8 * intid as usize, 0);
    } else {
        w8(gicd() + 0x800 + intid as usize, 1);
    }
}

fn set_pending(intid: u32) {
    w32(
        gicd() + 0x200 + 4 * (intid as usize / 32),
        1 << (intid % 32),
    );
}

/// SPI `intid` level-sensitive (GICD_ICFGR: 0b0x).
pub(crate) fn set_level(intid: u32) {
    let reg = gicd() + 0xC00 + 4 * (intid as usize / 16);
    w32(reg, r32(reg) & !(2 << (2 * (intid % 16))));
}

/// Set the virtual GIC of `gic` up for one level-sensitive SPI `intid` to
/// vCPU 0, as a driver of a device on a PCI INTx line does (IRQs stay
/// masked: the caller unmasks once its handler is set).
pub(crate) fn level_spi_to_cpu0(gic: &Gic, intid: u32) {
    select(gic);
    mask_irqs();
    dist_init();
    cpu_init(0);
    set_level(intid);
    set_priority(intid, 0, 0x80);
    route_to_cpu0(intid);
    enable(intid, 0);
}

/// The virtual counter without a barrier: the first instruction of a
/// handler whose entry time is measured.
pub(crate) fn entry_counter() -> u64 {
    let v: u64;
    // SAFETY: reading the virtual counter has no side effects.
    unsafe { core::arch::asm!("mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Acknowledge the highest-priority pending interrupt: the IAR value.
pub(crate) fn ack() -> u32 {
    if v3() {
        mrs!("icc_iar1_el1") as u32
    } else {
        r32(gicc() + 0xC)
    }
}

/// End (priority drop and deactivate) the interrupt `iar` acknowledged.
pub(crate) fn eoi(iar: u32) {
    if v3() {
        msr!("icc_eoir1_el1", u64::from(iar));
    } else {
        w32(gicc() + 0x10, iar);
    }
}

fn send_sgi(intid: u32, target: usize) {
    if v3() {
        msr!("icc_sgi1r_el1", (u64::from(intid) << 24) | (1 << target));
    } else {
        w32(gicd() + 0xF00, (1 << (16 + target)) | intid);
    }
}

/// SGI to every vCPU but this one.
fn send_sgi_others(intid: u32) {
    if v3() {
        msr!("icc_sgi1r_el1", (u64::from(intid) << 24) | (1 << 40));
    } else {
        w32(gicd() + 0xF00, (1 << 24) | intid);
    }
}

fn counter_now() -> u64 {
    mrs!("cntvct_el0")
}

// ---- the IRQ handler -------------------------------------------------------------

fn irq_handler() {
    let entry = counter_now();
    ENTRY.store(entry, Ordering::SeqCst);
    let iar = ack();
    let intid = iar & 0x3ff;
    if intid >= 1020 {
        SPURIOUS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let cpu = rt::cpu_index();
    match COUNT.get(intid as usize) {
        Some(c) => {
            c.fetch_add(1, Ordering::SeqCst);
        }
        None => {
            OTHER.fetch_add(1, Ordering::SeqCst);
        }
    }
    let n = LOG_N.fetch_add(1, Ordering::SeqCst);
    if let Some(slot) = LOG.get(n) {
        slot.store(intid, Ordering::SeqCst);
    }
    if !v3() && intid < 16 {
        // The sender: the other vCPU for ping/pong/broadcast, self otherwise.
        let source = ((iar >> 10) & 7) as usize;
        let want = if matches!(intid, SGI_PING | SGI_PONG | SGI_BCAST) {
            1 - cpu.min(1)
        } else {
            cpu
        };
        if source != want {
            BAD_SOURCE.fetch_add(1, Ordering::SeqCst);
        }
    }
    if intid == VTIMER {
        timer_tick(entry);
    }
    if intid == SGI_PING && cpu == 1 {
        send_sgi(SGI_PONG, 0);
    }
    eoi(iar);
}

fn timer_tick(now: u64) {
    let cval = mrs!("cntv_cval_el0");
    let lat = now.saturating_sub(cval);
    LATENCY_SUM.fetch_add(lat, Ordering::SeqCst);
    LATENCY_MIN.fetch_min(lat, Ordering::SeqCst);
    let n = TICKS.fetch_add(1, Ordering::SeqCst) + 1;
    if n == 1 {
        // The first deadline, not its arrival: a late first tick (a loaded
        // host) must not shorten the span the rate is checked over.
        FIRST_TICK.store(cval, Ordering::SeqCst);
    }
    LAST_TICK.store(now, Ordering::SeqCst);
    if n < TICK_TARGET.load(Ordering::SeqCst) {
        // Next deadline one period after this one: the mean rate is exact.
        msr!("cntv_cval_el0", cval + PERIOD.load(Ordering::SeqCst));
    } else {
        msr!("cntv_ctl_el0", 0);
    }
}

/// Program `ticks` virtual timer interrupts `period` counter ticks apart.
fn start_timer(ticks: u32, period: u64) {
    TICKS.store(0, Ordering::SeqCst);
    TICK_TARGET.store(ticks, Ordering::SeqCst);
    PERIOD.store(period, Ordering::SeqCst);
    msr!("cntv_cval_el0", counter_now() + period);
    msr!("cntv_ctl_el0", 1);
}

// ---- tests ---------------------------------------------------------------------------

fn timer(t: &mut Test, env: &Env, _gic: &Gic) {
    let ticks = env.bootargs.number("ticks").ok().flatten().unwrap_or(50) as u32;
    let period_us = env
        .bootargs
        .number("period_us")
        .ok()
        .flatten()
        .unwrap_or(1000);
    let period = period_us * rt::counter_freq() / 1_000_000;
    dist_init();
    cpu_init(0);
    set_priority(VTIMER, 0, 0x80);
    enable(VTIMER, 0);
    unmask_irqs();
    start_timer(ticks, period);
    let limit_ms = (u64::from(ticks) * period_us / 1000) * 4 + 2000;
    let done = rt::poll_ms(limit_ms, || {
        (TICKS.load(Ordering::SeqCst) >= ticks).then_some(())
    });
    t.check(
        done.is_some(),
        format_args!(
            "{} of {ticks} timer ticks within {limit_ms} ms",
            TICKS.load(Ordering::SeqCst)
        ),
    );
    // Quiet once disabled.
    rt::delay_ms(20);
    let got = TICKS.load(Ordering::SeqCst);
    t.check(
        got == ticks,
        format_args!("{got} ticks, programmed {ticks}"),
    );
    let elapsed = LAST_TICK.load(Ordering::SeqCst) - FIRST_TICK.load(Ordering::SeqCst);
    let want = u64::from(ticks.saturating_sub(1)) * period;
    // From the first deadline to the last arrival: never shorter than
    // programmed (no tick early), and not much longer (a loaded host delays
    // the last one a little).
    t.check(
        elapsed >= want && elapsed - want <= want / 2,
        format_args!("{ticks} ticks took {elapsed} counter ticks, programmed {want}"),
    );
    let others: u32 = COUNT
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != VTIMER as usize)
        .map(|(_, c)| c.load(Ordering::SeqCst))
        .sum::<u32>()
        + OTHER.load(Ordering::SeqCst);
    t.check(
        others == 0,
        format_args!("{others} interrupts besides the timer"),
    );
    // The timer PPI is neither pending nor active any more.
    let (pend, act) = if v3() {
        (r32(gicr_sgi(0) + 0x200), r32(gicr_sgi(0) + 0x300))
    } else {
        (r32(gicd() + 0x200), r32(gicd() + 0x300))
    };
    t.check(
        (pend | act) & (1 << VTIMER) == 0,
        format_args!("PPI 27 pending {pend:#x} active {act:#x} after the last tick"),
    );
    println!(
        "gic-timer: {got} ticks every {period_us} us: {elapsed} counter ticks (want {want}), latency min {} mean {}",
        LATENCY_MIN.load(Ordering::SeqCst),
        LATENCY_SUM.load(Ordering::SeqCst) / u64::from(got.max(1))
    );
}

fn secondary(cpu: usize) -> ! {
    cpu_init(cpu);
    if v3() {
        enable(SGI_PING, cpu);
        enable(SGI_BCAST, cpu);
    }
    unmask_irqs();
    CPU1_READY.store(true, Ordering::SeqCst);
    while !DONE.load(Ordering::SeqCst) {
        core::hint::spin_loop();
    }
    mask_irqs();
    rt::cpu_off()
}

fn sgi(t: &mut Test, env: &Env, _gic: &Gic) {
    let rounds = env.bootargs.number("rounds").ok().flatten().unwrap_or(100) as u32;
    if env.cpus < 2 {
        t.fail(format_args!("needs 2 vCPUs, has {}", env.cpus));
        return;
    }
    dist_init();
    cpu_init(0);
    if v3() {
        enable(SGI_PONG, 0);
    }
    rt::set_secondary_main(secondary);
    let r = call::hvc3(PSCI_CPU_ON, 1, rt::secondary_entry_addr(), 1);
    t.check_eq("CPU_ON(vCPU 1)", r, SUCCESS);
    if rt::poll_ms(2000, || CPU1_READY.load(Ordering::SeqCst).then_some(())).is_none() {
        t.fail(format_args!("vCPU 1 did not come up"));
        return;
    }
    unmask_irqs();
    let start = counter_now();
    for i in 0..rounds {
        send_sgi(SGI_PING, 1);
        let ok = rt::poll_ms(1000, || {
            (COUNT[SGI_PONG as usize].load(Ordering::SeqCst) > i).then_some(())
        });
        if ok.is_none() {
            t.fail(format_args!("round {i}: no pong within 1 s"));
            break;
        }
    }
    let elapsed = counter_now() - start;
    send_sgi_others(SGI_BCAST);
    let bcast = rt::poll_ms(1000, || {
        (COUNT[SGI_BCAST as usize].load(Ordering::SeqCst) >= 1).then_some(())
    });
    t.check(bcast.is_some(), format_args!("broadcast SGI not received"));
    DONE.store(true, Ordering::SeqCst);
    rt::delay_ms(10);
    let (ping, pong) = (
        COUNT[SGI_PING as usize].load(Ordering::SeqCst),
        COUNT[SGI_PONG as usize].load(Ordering::SeqCst),
    );
    t.check(
        ping == rounds,
        format_args!("vCPU 1 got {ping} pings, sent {rounds}"),
    );
    t.check(
        pong == rounds,
        format_args!("vCPU 0 got {pong} pongs, expected {rounds}"),
    );
    t.check_eq(
        "broadcast deliveries",
        i64::from(COUNT[SGI_BCAST as usize].load(Ordering::SeqCst)),
        1,
    );
    let bad = BAD_SOURCE.load(Ordering::SeqCst);
    t.check(bad == 0, format_args!("{bad} SGIs with a wrong source CPU"));
    println!(
        "gic-sgi: {rounds} round trips, {} counter ticks each",
        elapsed / u64::from(rounds.max(1))
    );
}

fn many(t: &mut Test, _env: &Env, _gic: &Gic) {
    const SPIS: u32 = 20;
    const SGIS: u32 = 4;
    let total = SPIS + SGIS;
    dist_init();
    cpu_init(0);
    mask_irqs();
    // Distinct priorities in a scrambled order; INTIDs 40.. and SGIs 3..
    let prio = |k: u32| (((k * 7) % total) * 8 + 8) as u8;
    let mut want: [(u8, u32); 24] = [(0, 0); 24];
    for k in 0..total {
        let intid = if k < SPIS { 40 + k } else { 3 + (k - SPIS) };
        set_priority(intid, 0, prio(k));
        if intid >= 32 {
            route_to_cpu0(intid);
        }
        enable(intid, 0);
        want[k as usize] = (prio(k), intid);
    }
    // All pending while the vCPU cannot take them.
    for k in 0..total {
        let intid = want[k as usize].1;
        if intid >= 32 {
            set_pending(intid);
        } else if v3() {
            msr!("icc_sgi1r_el1", (u64::from(intid) << 24) | 1);
        } else {
            w32(gicd() + 0xF00, (2 << 24) | intid);
        }
    }
    want.sort_unstable();
    unmask_irqs();
    let got = rt::poll_ms(2000, || {
        (LOG_N.load(Ordering::SeqCst) >= total as usize).then_some(())
    });
    rt::delay_ms(10);
    mask_irqs();
    let n = LOG_N.load(Ordering::SeqCst);
    t.check(
        got.is_some() && n == total as usize,
        format_args!("{n} interrupts delivered, {total} pending"),
    );
    let mut in_order = true;
    for (i, &(p, intid)) in want.iter().enumerate() {
        let seen = LOG[i].load(Ordering::SeqCst);
        if seen != intid {
            in_order = false;
            t.fail(format_args!(
                "delivery {i}: INTID {seen}, expected {intid} (priority {p:#x})"
            ));
            break;
        }
    }
    for &(_, intid) in &want {
        let c = COUNT[intid as usize].load(Ordering::SeqCst);
        t.check(c == 1, format_args!("INTID {intid} delivered {c} times"));
    }
    if in_order {
        println!("gic-many: {total} interrupts delivered once each, in priority order");
    }
}

/// A cheap pseudo-random sequence.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn spam(t: &mut Test, env: &Env, gic: &Gic) {
    let duration = env
        .bootargs
        .number("duration_ms")
        .ok()
        .flatten()
        .unwrap_or(300);
    mask_irqs();
    dist_init();
    let typer = r32(gicd() + 4);
    let end = rt::deadline_ms(duration);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut accesses = 0u64;
    let mut passes = 0u32;
    while rt::counter() < end {
        for off in (0..0x1_0000usize).step_by(4) {
            let v = next(&mut seed);
            match v & 7 {
                0 => w32(gicd() + off, u32::MAX),
                1 => w32(gicd() + off, v as u32),
                2 => w8(gicd() + off + (v as usize >> 8 & 3), v as u8),
                3 => w16(gicd() + off + (v as usize >> 8 & 2), v as u16),
                4 if off % 8 == 0 => w64(gicd() + off, v),
                5 => {
                    let _ = r32(gicd() + off);
                }
                6 => {
                    let _ = r8(gicd() + off + 1);
                }
                _ => {
                    let _ = if off % 8 == 0 { r64(gicd() + off) } else { 0 };
                }
            }
            accesses += 1;
            if off % 256 == 0 {
                // SGI floods: to everyone, to ourselves.
                send_sgi_others(v as u32 & 0xf);
                send_sgi(v as u32 & 0xf, 0);
                accesses += 2;
            }
            if rt::counter() >= end {
                break;
            }
        }
        if v3() {
            // Our redistributor frames (every vCPU's).
            let span = gic.cpu_size;
            for off in (0..span).step_by(0x40) {
                let v = next(&mut seed);
                w32(gic.cpu + off, v as u32);
                let _ = r32(gic.cpu + off + 4);
                accesses += 2;
            }
        }
        passes += 1;
    }
    // Still our own distributor, identifying itself as before.
    let pidr2 = if v3() {
        r32(gicd() + 0xFFE8)
    } else {
        r32(gicd() + 0xFE8)
    };
    t.check(
        pidr2 >> 4 & 0xf == if v3() { 3 } else { 2 },
        format_args!("GICD_PIDR2 {pidr2:#x} after the spam"),
    );
    t.check_eq(
        "GICD_TYPER after the spam",
        i64::from(r32(gicd() + 4)),
        i64::from(typer),
    );
    println!("gic-spam: {accesses} junk accesses in {passes} passes over {duration} ms");
}

/// Mean counter ticks of `f` over `n` runs.
fn per_call(n: u64, mut f: impl FnMut()) -> u64 {
    let start = counter_now();
    for _ in 0..n {
        f();
    }
    (counter_now() - start) / n
}

fn bench(t: &mut Test, gic: &Gic) {
    static WORD: AtomicU32 = AtomicU32::new(0);
    dist_init();
    cpu_init(0);
    set_priority(40, 0, 0x80);
    let n = 200;
    let empty = per_call(n, || core::hint::black_box(()));
    let load = per_call(n, || {
        core::hint::black_box(WORD.load(Ordering::Relaxed));
    });
    let hvc = per_call(n, || {
        core::hint::black_box(call::hvc3(SMCCC_VERSION, 0, 0, 0));
    });
    let gicd_read = per_call(n, || {
        core::hint::black_box(r32(gicd() + 0x104));
    });
    let gicd_typer = per_call(n, || {
        core::hint::black_box(r32(gicd() + 0x4));
    });
    let gicd_write = per_call(n, || w8(gicd() + 0x400 + 40, 0x80));
    // The trapped PL011: one character (160 fill the line without
    // printing it), then a line of 40 characters with its newline, per
    // character (the line's printing included).
    let uart = rt::console::pl011_base();
    let (uart_char, uart_line) = if uart == 0 {
        t.fail(format_args!("no PL011 in the device tree"));
        (0, 0)
    } else {
        let c = per_call(160, || w32(uart, u32::from(b'c')));
        w32(uart, u32::from(b'\n'));
        let start = counter_now();
        for i in 0..41 {
            w32(uart, u32::from(if i == 40 { b'\n' } else { b'l' }));
        }
        (c, (counter_now() - start) / 41)
    };
    t.check(
        hvc > load,
        format_args!("a hypercall ({hvc}) is not dearer than a load ({load})"),
    );
    t.check(
        gicd_read > load,
        format_args!("a trapped read ({gicd_read}) is not dearer than a load ({load})"),
    );
    // Timer interrupt latency: deadline to the handler's entry.
    set_priority(VTIMER, 0, 0x80);
    enable(VTIMER, 0);
    if v3() {
        enable(4, 0);
    }
    unmask_irqs();
    let mut lat = [0u64; 16];
    for l in lat.iter_mut() {
        start_timer(1, 20_000);
        let before = TICKS.load(Ordering::SeqCst);
        let _ = rt::poll_ms(100, || {
            (TICKS.load(Ordering::SeqCst) > before).then_some(())
        });
        *l = ENTRY.load(Ordering::SeqCst) - mrs!("cntv_cval_el0");
    }
    // SGI to ourselves: the write (trapped on GICv3 / GICv2) to the handler.
    let mut sgi_lat = [0u64; 16];
    for l in sgi_lat.iter_mut() {
        let before = COUNT[4].load(Ordering::SeqCst);
        let start = counter_now();
        if v3() {
            msr!("icc_sgi1r_el1", (4 << 24) | 1);
        } else {
            w32(gicd() + 0xF00, (2 << 24) | 4);
        }
        let _ = rt::poll_ms(100, || {
            (COUNT[4].load(Ordering::SeqCst) > before).then_some(())
        });
        *l = ENTRY.load(Ordering::SeqCst) - start;
    }
    mask_irqs();
    let min = |a: &[u64]| a.iter().copied().min().unwrap_or(0);
    let mean = |a: &[u64]| a.iter().sum::<u64>() / a.len() as u64;
    println!(
        "gic-bench: GIC{:?}, mean counter ticks per operation (= instructions under -icount shift=0):",
        gic.version
    );
    println!("gic-bench: loop overhead {empty}");
    println!("gic-bench: untrapped load {load}");
    println!("gic-bench: null hypercall (SMCCC_VERSION) {hvc}");
    println!("gic-bench: trapped GICD read (ISENABLER1) {gicd_read}");
    println!("gic-bench: trapped GICD read (TYPER) {gicd_typer}");
    println!("gic-bench: trapped GICD write (IPRIORITYR byte) {gicd_write}");
    println!("gic-bench: trapped PL011 character {uart_char}");
    println!("gic-bench: trapped PL011 line of 40 characters, per character {uart_line}");
    println!(
        "gic-bench: vtimer deadline -> guest IRQ handler: min {} mean {}",
        min(&lat),
        mean(&lat)
    );
    println!(
        "gic-bench: SGI to self, write -> handler: min {} mean {}",
        min(&sgi_lat),
        mean(&sgi_lat)
    );
}
