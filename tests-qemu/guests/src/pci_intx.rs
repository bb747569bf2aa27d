//! `pci-intx`: legacy INTx of a passed-through e1000e, end to end.
//!
//! The guest enumerates its virtual bus, finds its e1000e, resolves the SPI
//! its Interrupt Pin reaches through its DT's `interrupt-map`, and sets up
//! its virtual GIC for it (level, priority, enabled, to vCPU 0). The device
//! raises INTx when a cause bit is set in ICR that IMS enables (a write to
//! ICS sets causes by hand; QEMU's e1000e uses INTx while neither MSI nor
//! MSI-X is enabled, which the guest never does). The handler reads ICR
//! (read-to-clear without MSI-X: the device drops INTx) and EOIs; the
//! hypervisor masked the function with the physical Command.INTx Disable
//! when the physical SPI fired and unmasks it on that EOI, so each of
//! `rounds` ICS writes must reach the handler exactly once. With the
//! guest's own (virtual) Command.INTx Disable set an ICS write must deliver
//! nothing within `quiet_ms`; clearing the bit delivers the pending cause.
//!
//! Figures (instructions under `-icount shift=0`): ICS write to the first
//! instruction of the guest's handler (physical SPI at EL2, demux by
//! Status.Interrupt Status, masking, virtual line, list register, guest
//! vector), against a null hypercall measured in the same run.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use test_guests::pcienum::{CMD_BUS_MASTER, CMD_MEMORY, COMMAND, ConfigSpace, STATUS};
use test_guests::println;
use test_guests::rt::{self, Env, Test, call};
use test_guests::smccc::SMCCC_VERSION;

use crate::pci_tests::{self, E1000E, mmio_read32, mmio_write32};
use crate::tests_gic;

/// e1000e registers (BAR0 offsets).
const ICR: u64 = 0xC0;
const ICS: u64 = 0xC8;
const IMS: u64 = 0xD0;
const IMC: u64 = 0xD8;
/// The cause used: TXDW (transmit descriptor written back); nothing
/// transmits, so only our ICS writes set it.
const CAUSE: u32 = 1 << 0;
const CMD_INTX_DISABLE: u16 = 1 << 10;
const STATUS_INTERRUPT: u16 = 1 << 3;

/// The SPI of the e1000e's pin (0 until set up).
static INTID: AtomicU32 = AtomicU32::new(0);
/// BAR0 address of ICR, read by the handler.
static ICR_ADDR: AtomicU64 = AtomicU64::new(0);
/// Interrupts of INTID the handler saw.
static COUNT: AtomicU32 = AtomicU32::new(0);
/// Counter at the handler's first instruction, for the last one.
static ENTRY: AtomicU64 = AtomicU64::new(0);
/// ICR as the handler read it, last time.
static LAST_ICR: AtomicU32 = AtomicU32::new(0);
/// Handler calls with an ICR without our cause.
static NO_CAUSE: AtomicU32 = AtomicU32::new(0);
static OTHER: AtomicU32 = AtomicU32::new(0);
static SPURIOUS: AtomicU32 = AtomicU32::new(0);

fn handler() {
    let entry = tests_gic::entry_counter();
    let iar = tests_gic::ack();
    let intid = iar & 0x3ff;
    if intid >= 1020 {
        SPURIOUS.fetch_add(1, Ordering::SeqCst);
        return;
    }
    if intid == INTID.load(Ordering::Relaxed) {
        let at = ICR_ADDR.load(Ordering::Relaxed);
        // SAFETY: ICR of the e1000e's BAR0, mapped by the hypervisor where
        // our enumeration put it; reading it clears the causes (INTx drops).
        let icr = unsafe { core::ptr::read_volatile(at as *const u32) };
        if icr & CAUSE == 0 {
            NO_CAUSE.fetch_add(1, Ordering::SeqCst);
        }
        LAST_ICR.store(icr, Ordering::SeqCst);
        ENTRY.store(entry, Ordering::SeqCst);
        COUNT.fetch_add(1, Ordering::SeqCst);
    } else {
        OTHER.fetch_add(1, Ordering::SeqCst);
    }
    tests_gic::eoi(iar);
}

/// Mean counter ticks of one call of `f` over `n`.
fn per_call(n: u64, mut f: impl FnMut()) -> u64 {
    let start = rt::counter();
    for _ in 0..n {
        f();
    }
    (rt::counter() - start) / n
}

pub fn pci_intx(env: &Env) -> ! {
    let mut t = Test::new("pci-intx");
    let Some((_br, mut ecam, tree)) = pci_tests::enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    pci_tests::check_guest_view(&mut t, env, tree);
    let rounds = env.bootargs.number("rounds").ok().flatten().unwrap_or(20) as u32;
    let quiet_ms = env.bootargs.number("quiet_ms").ok().flatten().unwrap_or(50);

    let Some(f) = tree.find(E1000E.0, E1000E.1).copied() else {
        t.fail(format_args!("no e1000e on the virtual bus"));
        t.finish(env)
    };
    let a = test_guests::pcienum::Addr(f.bus, f.devfn);
    let Some(bar) = f.mem_bar(0) else {
        t.fail(format_args!("{a}: e1000e without a memory BAR0"));
        t.finish(env)
    };
    if !(1..=4).contains(&f.interrupt_pin) {
        t.fail(format_args!(
            "{a}: e1000e Interrupt Pin {} (no INTx)",
            f.interrupt_pin
        ));
        t.finish(env)
    }
    let Some(intid) = pci_tests::intx_route(env, tree, &f) else {
        t.fail(format_args!("{a}: no interrupt-map entry for its pin"));
        t.finish(env)
    };
    t.check(
        (32..1020).contains(&intid),
        format_args!("{a}: routed to INTID {intid}, not an SPI"),
    );
    let Some(gic) = tests_gic::find_gic(env) else {
        t.fail(format_args!("no GICv2/GICv3 in the DT"));
        t.finish(env)
    };
    println!(
        "pci-intx: {a} e1000e INT{} -> INTID {intid}, GIC{:?}",
        (b'A' + f.interrupt_pin - 1) as char,
        gic.version
    );

    // The virtual GIC: level-sensitive SPI to vCPU 0.
    tests_gic::level_spi_to_cpu0(&gic, intid);
    INTID.store(intid, Ordering::SeqCst);
    ICR_ADDR.store(bar.addr + ICR, Ordering::SeqCst);
    rt::set_irq_handler(handler);

    // The device: Memory + Bus Master, INTx enabled (virtual Command),
    // no cause pending, ours enabled.
    let cmd = ecam.read16(f.bus, f.devfn, COMMAND);
    let cmd = (cmd | CMD_MEMORY | CMD_BUS_MASTER) & !CMD_INTX_DISABLE;
    ecam.write16(f.bus, f.devfn, COMMAND, cmd);
    let reg = |off| bar.addr + off;
    let wr = |off, v| {
        let _ = mmio_write32(reg(off), v);
    };
    wr(IMC, u32::MAX);
    let stale = mmio_read32(reg(ICR));
    println!("pci-intx: ICR before the test {stale:x?}");
    t.check(stale.is_ok(), format_args!("{a}: ICR unreadable"));
    wr(IMS, CAUSE);
    tests_gic::unmask_irqs();

    // Nothing arrives before we ask.
    rt::delay_ms(10);
    let early = COUNT.load(Ordering::SeqCst);
    t.check(
        early == 0,
        format_args!("{early} interrupts before any cause was set"),
    );

    // `rounds` causes, each delivered once: the line is re-armed after
    // every EOI.
    let mut lat_min = u64::MAX;
    let mut lat_sum = 0u64;
    let mut lat_max = (0u64, 0u32);
    let mut delivered = 0u32;
    for i in 0..rounds {
        // QEMU's e1000e throttles its interrupts (ITR, at least 500 x 256 ns
        // = 128 us): a cause set sooner after the last interrupt is held
        // until then. Space the rounds so the figure is the delivery path.
        let gap = rt::counter() + rt::counter_freq() / 4000;
        while rt::counter() < gap {
            core::hint::spin_loop();
        }
        let before = COUNT.load(Ordering::SeqCst);
        let start = rt::counter();
        wr(ICS, CAUSE);
        let got = rt::poll_ms(100, || {
            (COUNT.load(Ordering::SeqCst) > before).then_some(())
        });
        if got.is_none() {
            t.fail(format_args!(
                "round {i}: no interrupt within 100 ms of the ICS write (Status {:#x}, ICR {:x?})",
                ecam.read16(f.bus, f.devfn, STATUS),
                mmio_read32(reg(ICR))
            ));
            break;
        }
        let lat = ENTRY.load(Ordering::SeqCst).saturating_sub(start);
        lat_min = lat_min.min(lat);
        lat_sum += lat;
        if lat > lat_max.0 {
            lat_max = (lat, i);
        }
        delivered += 1;
    }
    rt::delay_ms(10);
    let count = COUNT.load(Ordering::SeqCst);
    t.check(
        count == delivered,
        format_args!("{count} interrupts for {delivered} causes (a storm, or a lost EOI)"),
    );
    let no_cause = NO_CAUSE.load(Ordering::SeqCst);
    t.check(
        no_cause == 0,
        format_args!(
            "{no_cause} interrupts without the cause in ICR (last ICR {:#x})",
            LAST_ICR.load(Ordering::SeqCst)
        ),
    );
    if delivered == rounds {
        println!(
            "pci-intx: {rounds} INTx interrupts delivered once each, line re-armed after each EOI"
        );
    }

    // The guest's own INTx Disable holds the interrupt back; clearing it
    // delivers the pending cause.
    ecam.write16(f.bus, f.devfn, COMMAND, cmd | CMD_INTX_DISABLE);
    let before = COUNT.load(Ordering::SeqCst);
    wr(ICS, CAUSE);
    rt::delay_ms(quiet_ms);
    let leaked = COUNT.load(Ordering::SeqCst) - before;
    t.check(
        leaked == 0,
        format_args!(
            "{leaked} interrupts within {quiet_ms} ms while the guest's Command.INTx Disable is set"
        ),
    );
    let status = ecam.read16(f.bus, f.devfn, STATUS);
    println!(
        "pci-intx: with INTx Disable set: Status {status:#x} (Interrupt Status {})",
        u16::from(status & STATUS_INTERRUPT != 0)
    );
    t.check(
        status & STATUS_INTERRUPT != 0,
        format_args!("Status {status:#x}: Interrupt Status clear while the device asserts"),
    );
    ecam.write16(f.bus, f.devfn, COMMAND, cmd);
    let got = rt::poll_ms(100, || {
        (COUNT.load(Ordering::SeqCst) > before).then_some(())
    });
    t.check(
        got.is_some(),
        format_args!("the pending cause was not delivered within 100 ms of clearing INTx Disable"),
    );
    if got.is_some() && leaked == 0 {
        println!("pci-intx: held back while INTx Disable was set, delivered once cleared");
    }
    rt::delay_ms(10);
    let extra = COUNT.load(Ordering::SeqCst) - before;
    t.check(
        extra <= 1,
        format_args!("{extra} interrupts for one cause after clearing INTx Disable"),
    );

    // Quiet again: causes off, interrupts masked.
    wr(IMC, u32::MAX);
    let _ = mmio_read32(reg(ICR));
    tests_gic::mask_irqs();
    let (other, spurious) = (
        OTHER.load(Ordering::SeqCst),
        SPURIOUS.load(Ordering::SeqCst),
    );
    t.check(
        other == 0,
        format_args!("{other} interrupts of other INTIDs"),
    );
    if spurious != 0 {
        println!("pci-intx: {spurious} spurious acknowledges");
    }

    // Figures.
    let hvc = per_call(256, || {
        core::hint::black_box(call::hvc3(SMCCC_VERSION, 0, 0, 0));
    });
    if delivered > 0 {
        println!(
            "pci-intx: counter ticks (= instructions under -icount shift=0), {delivered} interrupts:"
        );
        println!(
            "pci-intx: ICS write -> guest handler: min {lat_min} mean {}",
            lat_sum / u64::from(delivered)
        );
        println!("pci-intx: slowest: {} (round {})", lat_max.0, lat_max.1);
        println!("pci-intx: null hypercall {hvc}");
    }
    t.finish(env)
}
