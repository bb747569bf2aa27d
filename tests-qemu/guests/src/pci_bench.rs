//! `pci-bench`: the cost of trapped config accesses, under QEMU's
//! `-icount shift=0` (one counter tick is one instruction), against a null
//! hypercall and an untrapped load measured in the same run.
//!
//! Run by the hardware domain it measures the pass-through path (physical
//! ECAM, through the ownership filter): reads of the host bridge's vendor id
//! at 00:00.0 and a 32-bit write of a root port's Interrupt Line dword. Run by
//! a guest with passed-through functions it measures the emulated path: the
//! virtual root port at 00:01.0, and, once its secondary bus is programmed,
//! the assigned function below it.

use core::sync::atomic::{AtomicU32, Ordering};

use test_guests::println;
use test_guests::rt::{Env, Test, call};
use test_guests::smccc::SMCCC_VERSION;

/// Iterations per figure: the loop is short, so a few hundred make the
/// division exact enough while keeping the run brief.
const N: u64 = 256;

fn ticks() -> u64 {
    let v: u64;
    // SAFETY: reading the virtual counter after an ISB has no side effects.
    unsafe { core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) v) };
    v
}

/// Mean counter ticks of one call of `f`.
fn per_call(mut f: impl FnMut()) -> u64 {
    let start = ticks();
    for _ in 0..N {
        f();
    }
    (ticks() - start) / N
}

fn ecam_base(env: &Env) -> Option<u64> {
    let fdt = env.fdt();
    let node = fdt.find_compatible(&["pci-host-ecam-generic"])?;
    let reg = node.property("reg")?.value;
    let hi = u32::from_be_bytes(reg.get(0..4)?.try_into().ok()?);
    let lo = u32::from_be_bytes(reg.get(4..8)?.try_into().ok()?);
    Some((u64::from(hi) << 32) | u64::from(lo))
}

fn cfg(ecam: u64, bus: u8, dev: u8, func: u8, off: u64) -> u64 {
    ecam + (u64::from(bus) << 20) + (u64::from(dev) << 15) + (u64::from(func) << 12) + off
}

fn r32(a: u64) -> u32 {
    // SAFETY: an address of our ECAM window (Device memory in our map).
    unsafe { (a as *const u32).read_volatile() }
}

fn w32(a: u64, v: u32) {
    // SAFETY: as in `r32`.
    unsafe { (a as *mut u32).write_volatile(v) }
}

fn w8(a: u64, v: u8) {
    // SAFETY: as in `r32`.
    unsafe { (a as *mut u8).write_volatile(v) }
}

pub fn pci_bench(env: &Env) -> ! {
    static WORD: AtomicU32 = AtomicU32::new(0);
    let mut t = Test::new("pci-bench");
    let Some(ecam) = ecam_base(env) else {
        t.fail(format_args!("no pci-host-ecam-generic node in the DT"));
        t.finish(env)
    };
    let empty = per_call(|| core::hint::black_box(()));
    let load = per_call(|| {
        core::hint::black_box(WORD.load(Ordering::Relaxed));
    });
    let hvc = per_call(|| {
        core::hint::black_box(call::hvc3(SMCCC_VERSION, 0, 0, 0));
    });
    println!(
        "pci-bench: ticks per operation (= instructions under -icount shift=0), loop overhead {empty} included"
    );
    println!("pci-bench: untrapped load {load}");
    println!("pci-bench: null hypercall (SMCCC_VERSION) {hvc}");
    let path = if env.hwdom {
        "pass-through"
    } else {
        "emulated"
    };
    // Root bus: the host bridge (hwdom) or the first virtual root port (guest).
    let (dev, what) = if env.hwdom {
        (0, "host bridge 00:00.0")
    } else {
        (1, "virtual root port 00:01.0")
    };
    let id = r32(cfg(ecam, 0, dev, 0, 0));
    t.check(id != u32::MAX, format_args!("nothing answers at {what}"));
    let read = per_call(|| {
        core::hint::black_box(r32(cfg(ecam, 0, dev, 0, 0)));
    });
    println!("pci-bench: {path} config read ({what} vendor/device {id:#010x}) {read}");
    // A 32-bit write that changes nothing: the Interrupt Line dword of a
    // bridge (Interrupt Line is plain storage; pin and Bridge Control are
    // written back as read).
    let rp = cfg(ecam, 0, 1, 0, 0x3c);
    let dword = r32(rp);
    let write = per_call(|| w32(rp, dword));
    println!("pci-bench: {path} config write (00:01.0 +0x3c, 32-bit) {write}");
    t.check(
        r32(rp) == dword,
        format_args!("the write changed 00:01.0 +0x3c"),
    );
    if !env.hwdom {
        // Route bus 1 below the virtual root port, then read the function.
        w8(cfg(ecam, 0, 1, 0, 0x19), 1);
        w8(cfg(ecam, 0, 1, 0, 0x1a), 1);
        let fid = r32(cfg(ecam, 1, 0, 0, 0));
        t.check(
            fid != u32::MAX,
            format_args!("no function below the virtual root port"),
        );
        let fread = per_call(|| {
            core::hint::black_box(r32(cfg(ecam, 1, 0, 0, 0)));
        });
        println!(
            "pci-bench: emulated config read (assigned function 01:00.0 ids {fid:#010x}) {fread}"
        );
    }
    t.check(
        hvc > load,
        format_args!("a hypercall ({hvc}) is not dearer than a load ({load})"),
    );
    t.check(
        read > load,
        format_args!("a trapped read ({read}) is not dearer than a load ({load})"),
    );
    t.finish(env)
}
