//! `pci-aer`: AER errors injected into a passed-through function reach the
//! guest through its virtual root port, as Linux's AER driver sees them
//! without MSI: the root port's INTx (through the DT's `interrupt-map`),
//! Root Error Status / Error Source ID with the guest's virtual address,
//! and the function's own AER status registers.
//!
//! The guest asks the test harness for each error with a console line
//! `phv-hmp: pcie_aer_inject_error ...` (xtask sends it to QEMU's monitor)
//! and waits for the interrupt:
//! 1. correctable (Receiver Error): delivered, no reset;
//! 2. uncorrectable non-fatal (Poisoned TLP): delivered, the device
//!    keeps working;
//! 3. uncorrectable fatal (Malformed TLP): with `mode=recover` the guest
//!    recovers as Linux does (clears the status, SBR on its virtual root
//!    port) and the device answers with its BARs back; with `mode=ignore`
//!    it does nothing, and the hypervisor must reset the device itself after
//!    the VM's deadline, mark Root Error Status bit 7, and raise the line
//!    again.
//!
//! The hardware domain's side is [`hwdom_own_error`]: an error of one of
//! its own functions shows in its (overlaid) physical root port registers
//! and interrupt, and in no guest.
//!
//! Figures: the instruction counter at the handler's entry is printed; the
//! hypervisor logs the counter when the physical interrupt reached EL2.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use test_guests::pcienum::{Addr, CMD_BUS_MASTER, CMD_MEMORY, COMMAND, ConfigSpace, Func, Tree};
use test_guests::println;
use test_guests::rt::{self, Env, Test};

use crate::pci_tests::{self, Ecam, mmio_read32};
use crate::tests_gic;

/// Extended capability id of AER.
const EXT_CAP_AER: u32 = 0x0001;
const AER_UNCOR_STATUS: u16 = 0x04;
const AER_COR_STATUS: u16 = 0x10;
const AER_ROOT_COMMAND: u16 = 0x2c;
const AER_ROOT_STATUS: u16 = 0x30;
const AER_ERROR_SOURCE: u16 = 0x34;
const ROOT_COR: u32 = 1 << 0;
const ROOT_UNCOR: u32 = 1 << 2;
const ROOT_FIRST_FATAL: u32 = 1 << 4;
const ROOT_NONFATAL: u32 = 1 << 5;
const ROOT_FATAL: u32 = 1 << 6;
/// Set by the hypervisor when it performed the recovery reset itself.
const ROOT_HV_RESET: u32 = 1 << 7;
const BRIDGE_CONTROL: u16 = 0x3e;
const BRIDGE_CONTROL_SBR: u16 = 1 << 6;
const VENDOR_ID: u16 = 0x00;
const BAR0: u16 = 0x10;
const PCIE_DEVCTL: u16 = 0x08;
const CAP_ID_PCIE: u8 = 0x10;

/// Receiver Error (correctable bit 0).
const COR_RECEIVER: u32 = 1 << 0;
/// Poisoned TLP (uncorrectable bit 12, non-fatal by default).
const UNCOR_POISONED: u32 = 1 << 12;
/// Malformed TLP (uncorrectable bit 18, fatal by default).
const UNCOR_MALFORMED: u32 = 1 << 18;

/// The root port line's INTID (0 until set up).
static INTID: AtomicU32 = AtomicU32::new(0);
/// Address of the root port's Root Error Status in the ECAM window.
static ROOT_STATUS_ADDR: AtomicU64 = AtomicU64::new(0);
/// Interrupts of INTID, and what the handler read (and cleared).
static COUNT: AtomicU32 = AtomicU32::new(0);
static LAST_STATUS: AtomicU32 = AtomicU32::new(0);
static LAST_SOURCE: AtomicU32 = AtomicU32::new(0);
/// Every Root Error Status bit any interrupt showed.
static SEEN: AtomicU32 = AtomicU32::new(0);
static ENTRY: AtomicU64 = AtomicU64::new(0);
static OTHER: AtomicU32 = AtomicU32::new(0);

/// The root port's interrupt: read Root Error Status and Error Source ID,
/// clear the status (W1C, as Linux's `aer_irq`), EOI.
fn handler() {
    let entry = tests_gic::entry_counter();
    let iar = tests_gic::ack();
    let intid = iar & 0x3ff;
    if intid >= 1020 {
        return;
    }
    if intid == INTID.load(Ordering::Relaxed) {
        let at = ROOT_STATUS_ADDR.load(Ordering::Relaxed);
        // SAFETY: Root Error Status and Error Source ID of our root port in
        // the ECAM window of our DT (Device memory; each access traps).
        let (status, source) = unsafe {
            let s = core::ptr::read_volatile(at as *const u32);
            let id_at = at - u64::from(AER_ROOT_STATUS) + u64::from(AER_ERROR_SOURCE);
            let id = core::ptr::read_volatile(id_at as *const u32);
            core::ptr::write_volatile(at as *mut u32, s);
            (s, id)
        };
        LAST_STATUS.store(status, Ordering::SeqCst);
        LAST_SOURCE.store(source, Ordering::SeqCst);
        SEEN.fetch_or(status, Ordering::SeqCst);
        ENTRY.store(entry, Ordering::SeqCst);
        COUNT.fetch_add(1, Ordering::SeqCst);
    } else {
        OTHER.fetch_add(1, Ordering::SeqCst);
    }
    tests_gic::eoi(iar);
}

/// Offset of the AER extended capability of `f`.
fn find_aer(c: &mut Ecam, f: &Func) -> Option<u16> {
    let mut off = 0x100u16;
    for _ in 0..64 {
        let hdr = c.read32(f.bus, f.devfn, off);
        if hdr == 0 || hdr == u32::MAX {
            return None;
        }
        if hdr & 0xffff == EXT_CAP_AER {
            return Some(off);
        }
        let next = (hdr >> 20) as u16 & 0xffc;
        if next < 0x100 {
            return None;
        }
        off = next;
    }
    None
}

/// The error path as Linux's AER driver sets it up, in this VM's view:
/// the root port's line on the GIC, Root Error Command, the function's
/// Device Control reporting enables.
struct AerPath {
    rp: Func,
    f_aer: u16,
}

fn setup(t: &mut Test, env: &Env, c: &mut Ecam, tree: &Tree, f: Func) -> Option<AerPath> {
    let a = Addr(f.bus, f.devfn);
    let Some(rp) = f.parent.map(|p| tree.funcs()[p]) else {
        t.fail(format_args!("{a}: no root port above it"));
        return None;
    };
    let r = Addr(rp.bus, rp.devfn);
    let (Some(rp_aer), Some(f_aer)) = (find_aer(c, &rp), find_aer(c, &f)) else {
        t.fail(format_args!("{r} or {a}: no AER capability"));
        return None;
    };
    let Some(intid) = pci_tests::intx_route(env, tree, &rp) else {
        t.fail(format_args!(
            "{r}: Interrupt Pin {} has no interrupt-map entry",
            rp.interrupt_pin
        ));
        return None;
    };
    let Some(gic) = tests_gic::find_gic(env) else {
        t.fail(format_args!("no GICv2/GICv3 in the DT"));
        return None;
    };
    println!(
        "aer: {r} (AER at {rp_aer:#x}) INT{} -> INTID {intid}; source {a} (AER at {f_aer:#x})",
        (b'A' + rp.interrupt_pin.max(1) - 1) as char
    );
    tests_gic::level_spi_to_cpu0(&gic, intid);
    INTID.store(intid, Ordering::SeqCst);
    ROOT_STATUS_ADDR.store(
        c.address(rp.bus, rp.devfn, rp_aer + AER_ROOT_STATUS),
        Ordering::SeqCst,
    );
    rt::set_irq_handler(handler);
    // Stale status from before (none expected), then the enables.
    let stale = c.read32(rp.bus, rp.devfn, rp_aer + AER_ROOT_STATUS);
    t.check(
        stale == 0,
        format_args!("{r}: Root Error Status {stale:#x} before any error"),
    );
    c.write32(rp.bus, rp.devfn, rp_aer + AER_ROOT_STATUS, stale);
    if let Some(pcie) = test_guests::pcienum::find_cap(c, f.bus, f.devfn, CAP_ID_PCIE) {
        let ctl = c.read16(f.bus, f.devfn, pcie + PCIE_DEVCTL);
        c.write16(f.bus, f.devfn, pcie + PCIE_DEVCTL, (ctl | 0xf) & 0x7fff);
    }
    c.write32(rp.bus, rp.devfn, rp_aer + AER_ROOT_COMMAND, 0x7);
    tests_gic::unmask_irqs();
    Some(AerPath { rp, f_aer })
}

/// Ask the harness to inject an error into QEMU device `id`, wait for the
/// next interrupt. Returns (Root Error Status, Error Source ID) as the
/// handler read them.
fn inject(
    t: &mut Test,
    id: &str,
    args: core::fmt::Arguments<'_>,
    wait_ms: u64,
) -> Option<(u32, u32)> {
    let before = COUNT.load(Ordering::SeqCst);
    println!("phv-hmp: pcie_aer_inject_error {args}");
    let got = rt::poll_ms(wait_ms, || {
        (COUNT.load(Ordering::SeqCst) > before).then_some(())
    });
    if got.is_none() {
        t.fail(format_args!(
            "{id}: no AER interrupt within {wait_ms} ms of the injection"
        ));
        return None;
    }
    Some((
        LAST_STATUS.load(Ordering::SeqCst),
        LAST_SOURCE.load(Ordering::SeqCst),
    ))
}

/// The function answers config reads.
fn device_answers(c: &mut Ecam, f: &Func) -> bool {
    let id = u32::from(f.vendor) | (u32::from(f.device) << 16);
    c.read32(f.bus, f.devfn, VENDOR_ID) == id
}

pub fn pci_aer(env: &Env) -> ! {
    let mut t = Test::new("pci-aer");
    let Some((_br, mut ecam, tree)) = pci_tests::enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    let id = env.bootargs.get("aer_device").unwrap_or("nvme1");
    let ignore = env.bootargs.get("mode") == Some("ignore");
    let storm = env.bootargs.number("storm").ok().flatten().unwrap_or(0) as u32;
    let storm_threshold = env
        .bootargs
        .number("storm_threshold")
        .ok()
        .flatten()
        .unwrap_or(32) as u32;
    let storm_wait_ms = env
        .bootargs
        .number("storm_wait_ms")
        .ok()
        .flatten()
        .unwrap_or(2000);
    let deadline_ms = env
        .bootargs
        .number("deadline_ms")
        .ok()
        .flatten()
        .unwrap_or(5000);
    let Some(f) = tree
        .funcs()
        .iter()
        .find(|f| !f.is_bridge() && f.parent.is_some())
        .copied()
    else {
        t.fail(format_args!("no device below a root port"));
        t.finish(env)
    };
    let Some(p) = setup(&mut t, env, &mut ecam, tree, f) else {
        t.finish(env)
    };
    let (a, r) = (Addr(f.bus, f.devfn), Addr(p.rp.bus, p.rp.devfn));
    let rid = u32::from(f.rid());
    // The device works: Memory on, its first BAR register read.
    let cmd = ecam.read16(f.bus, f.devfn, COMMAND);
    ecam.write16(f.bus, f.devfn, COMMAND, cmd | CMD_MEMORY | CMD_BUS_MASTER);
    let bars: [u32; 6] = core::array::from_fn(|k| ecam.read32(f.bus, f.devfn, BAR0 + 4 * k as u16));
    let bar = (0..6).find_map(|k| f.mem_bar(k));
    let word = bar.map(|b| mmio_read32(b.addr));
    println!("aer: {a} BARs {bars:#x?}, first register of its first memory BAR {word:x?}");
    t.check(
        word.is_some_and(|w| w.is_ok()),
        format_args!("{a}: no readable memory BAR"),
    );

    // 1. Correctable.
    if let Some((st, src)) = inject(&mut t, id, format_args!("-c {id} {COR_RECEIVER:#x}"), 3000) {
        let entry = ENTRY.load(Ordering::SeqCst);
        let cor = ecam.read32(f.bus, f.devfn, p.f_aer + AER_COR_STATUS);
        println!(
            "aer: correctable: Root Error Status {st:#x}, source {src:#x}, {a} Correctable Status {cor:#x}, handler entry at counter {entry}"
        );
        t.check(
            st & ROOT_COR != 0 && st & ROOT_UNCOR == 0,
            format_args!("{r}: Root Error Status {st:#x} for a correctable error"),
        );
        t.check(
            src & 0xffff == rid,
            format_args!("{r}: Error Source ID {src:#x}, expected {rid:#x} (our virtual {a})"),
        );
        t.check(
            cor & COR_RECEIVER != 0,
            format_args!("{a}: Correctable Status {cor:#x}"),
        );
        ecam.write32(f.bus, f.devfn, p.f_aer + AER_COR_STATUS, cor);
        let cleared = ecam.read32(f.bus, f.devfn, p.f_aer + AER_COR_STATUS);
        t.check(
            cleared == 0,
            format_args!("{a}: Correctable Status {cleared:#x} after W1C"),
        );
    }

    // 2. Non-fatal: delivered, the device keeps working without a reset.
    if let Some((st, src)) = inject(&mut t, id, format_args!("{id} {UNCOR_POISONED:#x}"), 3000) {
        let unc = ecam.read32(f.bus, f.devfn, p.f_aer + AER_UNCOR_STATUS);
        println!(
            "aer: non-fatal: Root Error Status {st:#x}, source {src:#x}, {a} Uncorrectable Status {unc:#x}, handler entry at counter {}",
            ENTRY.load(Ordering::SeqCst)
        );
        t.check(
            st & ROOT_UNCOR != 0 && st & ROOT_NONFATAL != 0 && st & ROOT_FATAL == 0,
            format_args!("{r}: Root Error Status {st:#x} for a non-fatal error"),
        );
        t.check(
            (src >> 16) == rid,
            format_args!("{r}: Error Source ID {src:#x}, expected {rid:#x} in bits 31:16"),
        );
        t.check(
            unc & UNCOR_POISONED != 0,
            format_args!("{a}: Uncorrectable Status {unc:#x}"),
        );
        ecam.write32(f.bus, f.devfn, p.f_aer + AER_UNCOR_STATUS, unc);
        let again = bar.map(|b| mmio_read32(b.addr));
        t.check(
            again == word,
            format_args!(
                "{a}: after a non-fatal error its first register reads {again:x?}, before {word:x?}"
            ),
        );
        t.check(
            device_answers(&mut ecam, &f),
            format_args!("{a}: does not answer after a non-fatal error"),
        );
    }

    // A storm of correctable errors: the hypervisor masks them after its
    // threshold (32 within 1 s) instead of interrupting us for each; the
    // device keeps working.
    let mut storm_irqs = 0;
    if storm > 0 {
        let before = COUNT.load(Ordering::SeqCst);
        // One error at a time, each waited for: errors injected while the
        // root port still shows the last one merge into it ("multiple
        // ERR_COR received", one interrupt), so a burst would count the
        // host's pace, not the hypervisor's limit. The first error that
        // raises no interrupt within `storm_wait_ms` is the masked one.
        for _ in 0..storm {
            let last = COUNT.load(Ordering::SeqCst);
            println!("phv-hmp: pcie_aer_inject_error -c {id} {COR_RECEIVER:#x}");
            let delivered = rt::poll_ms(storm_wait_ms, || {
                (COUNT.load(Ordering::SeqCst) > last).then_some(())
            });
            if delivered.is_none() {
                break;
            }
        }
        storm_irqs = COUNT.load(Ordering::SeqCst) - before;
        println!("aer: storm: {storm} correctable errors asked for, {storm_irqs} interrupts");
        t.check(
            (1..=storm_threshold + 1).contains(&storm_irqs),
            format_args!(
                "{storm_irqs} interrupts for a storm of {storm} errors (threshold {storm_threshold})"
            ),
        );
        let cor = ecam.read32(f.bus, f.devfn, p.f_aer + AER_COR_STATUS);
        ecam.write32(f.bus, f.devfn, p.f_aer + AER_COR_STATUS, cor);
        let again = bar.map(|b| mmio_read32(b.addr));
        t.check(
            again == word,
            format_args!("{a}: after the storm its first register reads {again:x?}"),
        );
    }

    // 3. Fatal.
    if let Some((st, src)) = inject(&mut t, id, format_args!("{id} {UNCOR_MALFORMED:#x}"), 3000) {
        let unc = ecam.read32(f.bus, f.devfn, p.f_aer + AER_UNCOR_STATUS);
        println!(
            "aer: fatal: Root Error Status {st:#x}, source {src:#x}, {a} Uncorrectable Status {unc:#x}, handler entry at counter {}",
            ENTRY.load(Ordering::SeqCst)
        );
        t.check(
            st & ROOT_UNCOR != 0 && st & ROOT_FATAL != 0 && st & ROOT_FIRST_FATAL != 0,
            format_args!("{r}: Root Error Status {st:#x} for a fatal error"),
        );
        t.check(
            (src >> 16) == rid,
            format_args!("{r}: Error Source ID {src:#x}"),
        );
        t.check(
            unc & UNCOR_MALFORMED != 0,
            format_args!("{a}: Uncorrectable Status {unc:#x}"),
        );
        // Times from the fatal interrupt's handler entry.
        let injected_at = ENTRY.load(Ordering::SeqCst);
        if ignore {
            // The guest does nothing: the hypervisor must reset the device
            // after our deadline and say so in Root Error Status (bit 7,
            // raising the line again).
            let before = COUNT.load(Ordering::SeqCst);
            let got = rt::poll_ms(deadline_ms + 3000, || {
                (COUNT.load(Ordering::SeqCst) > before
                    && SEEN.load(Ordering::SeqCst) & ROOT_HV_RESET != 0)
                    .then_some(())
            });
            let ms = (rt::counter() - injected_at) * 1000 / rt::counter_freq();
            t.check(
                got.is_some(),
                format_args!(
                    "{r}: no hypervisor reset signalled within {} ms",
                    deadline_ms + 3000
                ),
            );
            if got.is_some() {
                println!(
                    "aer: the hypervisor reset {a} itself {ms} ms after the fatal error (deadline {deadline_ms} ms): Root Error Status {:#x}",
                    LAST_STATUS.load(Ordering::SeqCst)
                );
            }
            let back = rt::poll_ms(2000, || device_answers(&mut ecam, &f).then_some(()));
            t.check(
                back.is_some(),
                format_args!("{a}: does not answer after the hypervisor's reset"),
            );
            let total_us = (rt::counter() - injected_at) * 1_000_000 / rt::counter_freq();
            println!(
                "aer: {a} answers again {}.{:03} ms after the fatal interrupt (deadline {deadline_ms} ms + the reset)",
                total_us / 1000,
                total_us % 1000
            );
        } else {
            // Linux's recovery for a fatal error: reset the link (SBR on the
            // root port above), then the device answers again.
            ecam.write32(f.bus, f.devfn, p.f_aer + AER_UNCOR_STATUS, unc);
            let bc = ecam.read16(p.rp.bus, p.rp.devfn, BRIDGE_CONTROL);
            ecam.write16(
                p.rp.bus,
                p.rp.devfn,
                BRIDGE_CONTROL,
                bc | BRIDGE_CONTROL_SBR,
            );
            rt::delay_ms(2);
            ecam.write16(
                p.rp.bus,
                p.rp.devfn,
                BRIDGE_CONTROL,
                bc & !BRIDGE_CONTROL_SBR,
            );
            let deassert = rt::counter();
            let back = rt::poll_ms(2000, || device_answers(&mut ecam, &f).then_some(()));
            let us = (rt::counter() - deassert) * 1_000_000 / rt::counter_freq();
            let total_us = (rt::counter() - injected_at) * 1_000_000 / rt::counter_freq();
            t.check(
                back.is_some(),
                format_args!("{a}: does not answer within 2 s of SBR on {r}"),
            );
            println!(
                "aer: recovered by SBR on {r}: {a} answers {}.{:03} ms after the deassert write, {}.{:03} ms after the fatal interrupt",
                us / 1000,
                us % 1000,
                total_us / 1000,
                total_us % 1000
            );
        }
        // Like Linux after a link reset (`pci_restore_state`): the BARs and
        // Command back, for an owner reset (the virtual device was reset
        // too); the hypervisor's own reset restores them itself.
        if !ignore {
            pci_tests::reprogram_after_reset(&mut ecam, &f);
        }
        let bars_after: [u32; 6] =
            core::array::from_fn(|k| ecam.read32(f.bus, f.devfn, BAR0 + 4 * k as u16));
        t.check(
            bars_after == bars,
            format_args!("{a}: BARs {bars_after:#x?} after recovery, were {bars:#x?}"),
        );
        let cmd = ecam.read16(f.bus, f.devfn, COMMAND);
        ecam.write16(f.bus, f.devfn, COMMAND, cmd | CMD_MEMORY | CMD_BUS_MASTER);
        let after = bar.map(|b| mmio_read32(b.addr));
        t.check(
            after == word,
            format_args!(
                "{a}: after recovery its first register reads {after:x?}, before {word:x?}"
            ),
        );
        if after == word {
            println!("aer: {a} works again after the fatal error");
        }
    }

    // After the recovery reset the storm mask is gone: a correctable error
    // reaches us again.
    if storm > 0
        && let Some((st, _)) = inject(&mut t, id, format_args!("-c {id} {COR_RECEIVER:#x}"), 3000)
    {
        t.check(
            st & ROOT_COR != 0,
            format_args!("{r}: Root Error Status {st:#x} after the storm mask was lifted"),
        );
        println!("aer: after the reset, correctable errors are delivered again");
    }

    // Nothing else arrived (the hardware domain's errors are not ours).
    rt::delay_ms(200);
    let count = COUNT.load(Ordering::SeqCst);
    let want = if ignore { 4 } else { 3 } + storm_irqs + u32::from(storm > 0);
    t.check(
        count == want,
        format_args!("{count} AER interrupts, expected {want}"),
    );
    let other = OTHER.load(Ordering::SeqCst);
    t.check(
        other == 0,
        format_args!("{other} interrupts of other INTIDs"),
    );
    tests_gic::mask_irqs();
    t.finish(env)
}

/// The hardware domain: an error of its own function `id` (QEMU device id)
/// at `(bus, devfn)` shows in its view of the physical root port: the
/// interrupt, Root Error Status and the *physical* requester id.
pub(crate) fn hwdom_own_error(t: &mut Test, env: &Env, c: &mut Ecam, tree: &Tree, id: &str) {
    let Some(f) = tree
        .funcs()
        .iter()
        .find(|f| {
            !f.is_bridge()
                && f.parent.is_some()
                && f.bus == env.bootargs.number("aer_bus").ok().flatten().unwrap_or(0) as u8
        })
        .copied()
    else {
        t.fail(format_args!(
            "aer: no device on bus aer_bus= to inject into"
        ));
        return;
    };
    let Some(p) = setup(t, env, c, tree, f) else {
        return;
    };
    let a = Addr(f.bus, f.devfn);
    // The root port's MSI / MSI-X are the hypervisor's business: its AER
    // interrupt must stay INTx, so the hardware domain does not see them.
    let r = Addr(p.rp.bus, p.rp.devfn);
    let msi = test_guests::pcienum::find_cap(c, p.rp.bus, p.rp.devfn, 0x05);
    let msix = test_guests::pcienum::find_cap(c, p.rp.bus, p.rp.devfn, 0x11);
    t.check(
        msi.is_none() && msix.is_none(),
        format_args!("{r}: MSI at {msi:?}, MSI-X at {msix:?} visible to the hardware domain"),
    );
    if msi.is_none() && msix.is_none() {
        println!("aer: {r}: its MSI / MSI-X are hidden from the hardware domain");
    }
    if let Some((st, src)) = inject(t, id, format_args!("-c {id} {COR_RECEIVER:#x}"), 3000) {
        let cor = c.read32(f.bus, f.devfn, p.f_aer + AER_COR_STATUS);
        t.check(
            st & ROOT_COR != 0,
            format_args!("Root Error Status {st:#x}"),
        );
        t.check(
            src & 0xffff == u32::from(f.rid()),
            format_args!("Error Source ID {src:#x}, expected {a}"),
        );
        t.check(
            cor & COR_RECEIVER != 0,
            format_args!("{a}: Correctable Status {cor:#x}"),
        );
        c.write32(f.bus, f.devfn, p.f_aer + AER_COR_STATUS, cor);
        println!(
            "aer: correctable error of its own {a} delivered to the hardware domain (source {src:#x})"
        );
    }
    tests_gic::mask_irqs();
}
