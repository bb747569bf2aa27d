//! Domains that try to outlive or outrun the hypervisor's isolation:
//! `pci-stop` (vCPU 1 keeps using the device while vCPU 0 powers the VM
//! off), and the hardware domain's `stuck_intx` (an INTx line held
//! asserted, never serviced; with `hide`, by a function the hypervisor
//! was never told of), `aim_bar` (a guest's BAR aimed at RAM) and
//! `overlay_bar` (its own BAR moved over a guest's).

use core::sync::atomic::{AtomicU64, Ordering};

use test_guests::println;
use test_guests::rt::{self, Env, Test, call};
use test_guests::smccc::*;

use test_guests::pcienum::{Addr, BAR0, ConfigSpace, Func, Tree};

use crate::pci_tests::{
    E1000E, Ecam, enumerate_bus, mmio_write32, parse_bdf, scratch_register, set_bar,
};

/// The scratch register vCPU 1 writes, and how many times it has.
static SCRATCH: AtomicU64 = AtomicU64::new(0);
static WRITES: AtomicU64 = AtomicU64::new(0);

/// `pci-stop`: vCPU 1 writes an ever-changing value into the scratch
/// register of our device and makes a hypercall between writes; vCPU 0
/// powers the VM off meanwhile. The hypervisor must stop vCPU 1 before the
/// device goes back to the hardware domain, whose `recheck` finds the
/// register still (no write from us reaches it any more).
pub fn pci_stop(env: &Env) -> ! {
    let mut t = Test::new("pci-stop");
    let Some((_br, _ecam, tree)) = enumerate_bus(&mut t, env) else {
        t.finish(env)
    };
    let Some((addr, _mask)) = tree.funcs().iter().find_map(scratch_register) else {
        t.fail(format_args!("no device with a scratch register"));
        t.finish(env)
    };
    SCRATCH.store(addr, Ordering::SeqCst);
    rt::set_secondary_main(writer);
    let r = call::hvc3(PSCI_CPU_ON, 1, rt::secondary_entry_addr(), 1);
    t.check_eq("CPU_ON(vCPU 1)", r, SUCCESS);
    let running = rt::poll_ms(2000, || {
        (WRITES.load(Ordering::SeqCst) > 1000).then_some(())
    });
    t.check(
        running.is_some(),
        format_args!("vCPU 1 did not start writing"),
    );
    println!("pci-stop: vCPU 1 writes {addr:#x} without pause; vCPU 0 powers the VM off");
    // Not `finish`: this is the point, with vCPU 1 still running.
    if t.failures == 0 {
        println!("pci-stop: ok");
    }
    rt::power_off(false)
}

fn writer(_cpu: usize) -> ! {
    let addr = SCRATCH.load(Ordering::SeqCst);
    let mut n: u32 = 0;
    loop {
        n = n.wrapping_add(16);
        // SAFETY: the scratch register of a BAR our enumeration assigned.
        unsafe { core::ptr::write_volatile(addr as *mut u32, n) };
        // A trap each round: a stopped VM must not get its hypercalls served.
        let _ = call::hvc3(SMCCC_VERSION, 0, 0, 0);
        let done = WRITES.fetch_add(1, Ordering::SeqCst);
        if done > 0 && done.is_multiple_of(1 << 16) {
            println!("pci-stop: vCPU 1 still writing ({done} writes)");
        }
    }
}

/// Make every e1000e of ours (not `given` away) assert INTx and leave it so:
/// a cause set through ICS that IMS enables, ICR never read.
pub fn assert_intx_forever(t: &mut Test, tree: &Tree, given: &[(u8, u8)]) {
    const ICS: u64 = 0xC8;
    const IMS: u64 = 0xD0;
    const CAUSE: u32 = 1 << 0;
    for f in tree
        .funcs()
        .iter()
        .filter(|f| (f.vendor, f.device) == E1000E && !given.contains(&(f.bus, f.devfn)))
    {
        let Some(bar) = f.mem_bar(0) else { continue };
        let ok = mmio_write32(bar.addr + IMS, CAUSE).is_ok()
            && mmio_write32(bar.addr + ICS, CAUSE).is_ok();
        t.check(
            ok,
            format_args!("{}: cannot set an interrupt cause", Addr(f.bus, f.devfn)),
        );
        println!(
            "{}: INTx asserted, never to be serviced",
            Addr(f.bus, f.devfn)
        );
    }
}

fn find<'a>(t: &mut Test, tree: &'a Tree, bdf: &str) -> Option<&'a Func> {
    let found = parse_bdf(bdf).and_then(|(bus, devfn)| {
        tree.funcs()
            .iter()
            .find(|f| (f.bus, f.devfn) == (bus, devfn))
    });
    if found.is_none() {
        t.fail(format_args!("no function {bdf} in the tree"));
    }
    found
}

fn bar0(c: &mut Ecam, f: &Func) -> u64 {
    let lo = c.read32(f.bus, f.devfn, BAR0);
    let hi = if lo & 6 == 4 {
        c.read32(f.bus, f.devfn, BAR0 + 4)
    } else {
        0
    };
    (u64::from(hi) << 32) | u64::from(lo & !0xf)
}

/// `BB:DD.F@ADDR`: aim BAR0 of that function at ADDR before reporting it.
pub fn aim_bar(t: &mut Test, c: &mut Ecam, tree: &Tree, spec: &str) {
    let Some((bdf, addr)) = spec.split_once('@') else {
        t.fail(format_args!("aim_bar={spec}: want BB:DD.F@ADDR"));
        return;
    };
    let Some(addr) = test_guests::args::parse_u64(addr) else {
        t.fail(format_args!("aim_bar={spec}: bad address"));
        return;
    };
    let Some(f) = find(t, tree, bdf) else { return };
    set_bar(c, f, 0, addr);
    println!(
        "{}: BAR0 aimed at {:#x} before it is reported",
        Addr(f.bus, f.devfn),
        bar0(c, f)
    );
}

/// Move BAR0 of our function `spec` onto BAR0 of the first function we
/// gave away: the write must be refused (BAR0 reads as before).
pub fn overlay_bar(t: &mut Test, c: &mut Ecam, tree: &Tree, spec: &str, given: &[(u8, u8)]) {
    let Some(mine) = find(t, tree, spec) else {
        return;
    };
    let Some(&(bus, devfn)) = given.first() else {
        t.fail(format_args!("overlay_bar: nothing given away"));
        return;
    };
    let Some(victim) = tree
        .funcs()
        .iter()
        .find(|f| (f.bus, f.devfn) == (bus, devfn))
    else {
        t.fail(format_args!(
            "overlay_bar: the given function is not in the tree"
        ));
        return;
    };
    let Some(target) = victim.mem_bar(0).map(|b| b.addr) else {
        t.fail(format_args!("overlay_bar: the given function has no BAR0"));
        return;
    };
    let before = bar0(c, mine);
    set_bar(c, mine, 0, target);
    let after = bar0(c, mine);
    let a = Addr(mine.bus, mine.devfn);
    t.check(
        after == before,
        format_args!(
            "{a}: BAR0 moved from {before:#x} to {after:#x}, over the guest's {target:#x}"
        ),
    );
    if after == before {
        println!("{a}: BAR0 move over the guest's at {target:#x} refused");
    }
}
