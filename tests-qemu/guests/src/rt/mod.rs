//! The test guests' runtime (bare metal, EL1).

pub mod call;
pub mod console;
pub mod head;

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, compiler_fence};

use crate::args::Args;
use crate::println;
use crate::smccc::*;
use call::hvc3;
use head::{Frame, MAX_CPUS};

pub use head::{image_range, rt_secondary_entry};

/// What a test knows about the VM it runs in.
#[derive(Debug, Clone, Copy)]
pub struct Env {
    /// IPA of the DTB (x0 at entry).
    pub dtb: usize,
    /// Where the image was loaded.
    pub load_addr: usize,
    pub bootargs: Args<'static>,
    /// `label=` (added by xtask), else "vm".
    pub label: &'static str,
    /// `role=hwdom`: this VM ends the run with SYSTEM_OFF.
    pub hwdom: bool,
    /// `native`: booted by QEMU directly (no hypervisor): no vendor calls.
    pub native: bool,
    /// First `/memory` range.
    pub mem_base: u64,
    pub mem_size: u64,
    /// Number of `/cpus/cpu@*` nodes.
    pub cpus: usize,
}

impl Env {
    /// The guest's device tree.
    pub fn fdt(&self) -> fdt::Fdt<'static> {
        // SAFETY: `dtb` was validated in `rt_primary_main` and the blob is
        // never written; it stays mapped (Normal memory) for the whole run.
        unsafe { fdt::Fdt::from_ptr(self.dtb as *const u8) }.unwrap_or_else(|_| park())
    }
}

static mut ENV: Option<Env> = None;
static ENV_READY: AtomicBool = AtomicBool::new(false);

/// The environment, once the boot vCPU has read the DTB.
pub fn env() -> Env {
    if !ENV_READY.load(Ordering::Acquire) {
        park();
    }
    // SAFETY: ENV is written once, before ENV_READY is set (Release).
    unsafe { (*core::ptr::addr_of!(ENV)).unwrap_or_else(|| park()) }
}

/// Stop this vCPU for good.
pub fn park() -> ! {
    loop {
        // SAFETY: waiting for an event has no memory effects.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

unsafe extern "Rust" {
    /// The guest program's entry, defined by the bin.
    safe fn test_guest_main(env: Env) -> !;
}

#[unsafe(no_mangle)]
extern "C" fn rt_primary_main(dtb: usize, load_addr: usize) -> ! {
    // SAFETY: x0 from the boot protocol; `from_ptr` checks magic and sizes.
    let fdt = match unsafe { fdt::Fdt::from_ptr(dtb as *const u8) } {
        Ok(f) => f,
        Err(_) => {
            // No DTB, no UART address: say it through the hypercall only.
            crate::rt::console::set_backend(console::Backend::Hvc);
            println!("FAIL: no valid DTB at {dtb:#x}");
            fail_code(1);
            power_off(false)
        }
    };
    let bootargs = match fdt.find_node("/chosen") {
        Some(_) => fdt.chosen().bootargs().unwrap_or(""),
        None => "",
    };
    let args = Args(bootargs);
    if let Some(r) = fdt
        .find_compatible(&["arm,pl011"])
        .and_then(|uart| uart.reg())
        .and_then(|mut r| r.next())
    {
        console::set_pl011(r.starting_address as usize);
    }
    let native = args.flag("native");
    if native || args.get("console") == Some("pl011") {
        console::set_backend(console::Backend::Pl011);
    }
    let (mem_base, mem_size) = fdt
        .memory()
        .regions()
        .next()
        .map(|r| (r.starting_address as u64, r.size.unwrap_or(0) as u64))
        .unwrap_or((0, 0));
    let env = Env {
        dtb,
        load_addr,
        bootargs: args,
        label: args.get("label").unwrap_or("vm"),
        hwdom: args.get("role") == Some("hwdom"),
        native,
        mem_base,
        mem_size,
        cpus: fdt.cpus().count(),
    };
    // SAFETY: only the boot vCPU runs here, before any secondary is started.
    unsafe { *core::ptr::addr_of_mut!(ENV) = Some(env) };
    ENV_READY.store(true, Ordering::Release);
    test_guest_main(env)
}

/// What a secondary vCPU runs: `fn(cpu index)`, set before CPU_ON.
static SECONDARY_FN: AtomicUsize = AtomicUsize::new(0);

/// Set the function secondary vCPUs run after `rt_secondary_entry`.
pub fn set_secondary_main(f: fn(usize) -> !) {
    SECONDARY_FN.store(f as usize, Ordering::SeqCst);
}

/// IPA of the secondary entry point for PSCI CPU_ON.
pub fn secondary_entry_addr() -> u64 {
    rt_secondary_entry as *const () as usize as u64
}

#[unsafe(no_mangle)]
extern "C" fn rt_secondary_main(cpu: usize) -> ! {
    let f = SECONDARY_FN.load(Ordering::SeqCst);
    if f == 0 {
        println!("cpu{cpu} up (no secondary main)");
        cpu_off();
    }
    // SAFETY: only `set_secondary_main` stores non-zero values, from a `fn(usize) -> !`.
    let f: fn(usize) -> ! = unsafe { core::mem::transmute::<usize, fn(usize) -> !>(f) };
    f(cpu)
}

/// This vCPU's index (MPIDR_EL1 Aff0; the hypervisor sets affinity = vCPU index).
pub fn cpu_index() -> usize {
    (mpidr() & 0xff) as usize
}

/// MPIDR_EL1 affinity fields (Aff3..Aff0).
pub fn mpidr() -> u64 {
    let v: u64;
    // SAFETY: reading an ID register.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) v, options(nomem, nostack)) };
    v & 0xff_00ff_ffff
}

/// The current exception level (1 expected).
pub fn current_el() -> u64 {
    let v: u64;
    // SAFETY: reading CurrentEL.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) v, options(nomem, nostack)) };
    (v >> 2) & 3
}

/// Counter ticks per second (CNTFRQ_EL0; 1 GHz if unset).
pub fn counter_freq() -> u64 {
    let v: u64;
    // SAFETY: reading the counter frequency.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack)) };
    if v == 0 { 1_000_000_000 } else { v }
}

/// The virtual counter.
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: reading CNTVCT_EL0 (isb orders it after earlier instructions).
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Deadline `ms` milliseconds from now, in counter ticks.
pub fn deadline_ms(ms: u64) -> u64 {
    counter().saturating_add(ms.saturating_mul(counter_freq()) / 1000)
}

/// Spin for `ms` milliseconds of counter time.
pub fn delay_ms(ms: u64) {
    let end = deadline_ms(ms);
    while counter() < end {
        core::hint::spin_loop();
    }
}

/// Wait `ms` milliseconds of counter time in WFE: woken by the event
/// stream (the hypervisor's, about every 0.5 ms) or any event, never for
/// long. QEMU's TCG does not halt in WFE but yields to the other CPUs:
/// under `-icount`, where CPUs run in turn, a CPU waiting this way gives
/// its turn back at once instead of spinning a whole time slice.
pub fn yield_ms(ms: u64) {
    let end = deadline_ms(ms);
    while counter() < end {
        // SAFETY: WFE only waits for an event.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}

/// Wait `ms` milliseconds of counter time with the CPU idle: the virtual
/// timer is armed for the deadline and the CPU waits in WFI (its interrupt
/// wakes the CPU even while masked here; under the hypervisor it arrives at
/// EL2 and is left pending for us). An idle CPU executes nothing, so
/// instruction counts measured on other CPUs meanwhile stay exact
/// (`-icount`). Takes over the virtual timer: for the end of a test only,
/// and once per run: under the hypervisor the timer's physical interrupt
/// stays active (HW-bound to our virtual one, which we never enable or
/// acknowledge), so it cannot wake us a second time.
pub fn idle_ms(ms: u64) {
    let end = deadline_ms(ms);
    // SAFETY: programming our own virtual timer (enabled, unmasked).
    unsafe {
        asm!("msr cntv_cval_el0, {}", "msr cntv_ctl_el0, {}", "isb", in(reg) end, in(reg) 1u64)
    };
    while counter() < end {
        // SAFETY: WFI only waits.
        unsafe { asm!("wfi") };
    }
    // SAFETY: disarm the timer again.
    unsafe { asm!("msr cntv_ctl_el0, xzr", "isb") };
}

/// Poll `f` until it returns `Some` or `ms` milliseconds pass.
pub fn poll_ms<T>(ms: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = deadline_ms(ms);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if counter() >= end {
            return None;
        }
        core::hint::spin_loop();
    }
}

// ---- synchronous exceptions ------------------------------------------------

/// A synchronous exception a test provoked on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abort {
    pub esr: u64,
    pub far: u64,
}

impl Abort {
    /// Exception class (ESR_EL1[31:26]).
    pub fn ec(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }
    /// Data/instruction fault status code (ESR_EL1[5:0]).
    pub fn dfsc(&self) -> u64 {
        self.esr & 0x3f
    }
}

pub const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// Unknown reason: an undefined instruction (e.g. a trapped system register).
pub const EC_UNKNOWN: u64 = 0x00;
/// Breakpoint and watchpoint exceptions taken at the current EL.
pub const EC_BREAKPOINT_SAME_EL: u64 = 0x31;
pub const EC_WATCHPOINT_SAME_EL: u64 = 0x35;
/// The synchronous exceptions [`expect_abort`] catches.
const CAUGHT: [u64; 4] = [
    EC_DATA_ABORT_SAME_EL,
    EC_UNKNOWN,
    EC_BREAKPOINT_SAME_EL,
    EC_WATCHPOINT_SAME_EL,
];
pub const DFSC_SYNC_EXTERNAL: u64 = 0x10;

const NOT_ARMED: u64 = 0;
const ARMED: u64 = 1;
const TAKEN: u64 = 2;

#[allow(clippy::declare_interior_mutable_const)]
const STATE_INIT: AtomicU64 = AtomicU64::new(NOT_ARMED);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static ABORT_STATE: [AtomicU64; MAX_CPUS] = [STATE_INIT; MAX_CPUS];
static ABORT_ESR: [AtomicU64; MAX_CPUS] = [ZERO; MAX_CPUS];
static ABORT_FAR: [AtomicU64; MAX_CPUS] = [ZERO; MAX_CPUS];

/// Run `f`, which is expected to take a data abort (or an undefined
/// instruction, a breakpoint or a watchpoint): the first one from `f` is
/// recorded and the faulting instruction skipped (`ELR_EL1 += 4`), so `f`
/// goes on (the load's destination keeps a stale value). `Err` carries the
/// abort, `Ok` the value `f` returned when nothing aborted.
pub fn expect_abort<R>(f: impl FnOnce() -> R) -> Result<R, Abort> {
    let cpu = cpu_index() % MAX_CPUS;
    ABORT_STATE[cpu].store(ARMED, Ordering::SeqCst);
    compiler_fence(Ordering::SeqCst);
    let r = f();
    compiler_fence(Ordering::SeqCst);
    let state = ABORT_STATE[cpu].swap(NOT_ARMED, Ordering::SeqCst);
    if state == TAKEN {
        Err(Abort {
            esr: ABORT_ESR[cpu].load(Ordering::SeqCst),
            far: ABORT_FAR[cpu].load(Ordering::SeqCst),
        })
    } else {
        Ok(r)
    }
}

/// A 32-bit read that may abort.
pub fn probe_read32(addr: u64) -> Result<u32, Abort> {
    // SAFETY: the address may be unmapped or forbidden: that is the point of
    // the probe; an abort is caught by `expect_abort` and the load skipped.
    expect_abort(|| unsafe { core::ptr::read_volatile(addr as *const u32) })
}

// ---- interrupts ---------------------------------------------------------------

/// The IRQ handler of the guest program (`fn()` as usize; 0 = none).
static IRQ_HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Install the function IRQs (vector 5: current EL with SP_ELx) call. It
/// acknowledges and EOIs at the interrupt controller itself.
pub fn set_irq_handler(f: fn()) {
    IRQ_HANDLER.store(f as usize, Ordering::SeqCst);
}

#[unsafe(no_mangle)]
extern "C" fn rt_exception(kind: u64, frame: &mut Frame) {
    let irq = IRQ_HANDLER.load(Ordering::Relaxed);
    if kind == 5 && irq != 0 {
        // SAFETY: only `set_irq_handler` stores non-zero values, from a `fn()`.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(irq) };
        f();
        return;
    }
    let (esr, far): (u64, u64);
    // SAFETY: reading the syndrome registers of the exception being handled.
    unsafe {
        asm!("mrs {}, esr_el1", out(reg) esr, options(nomem, nostack));
        asm!("mrs {}, far_el1", out(reg) far, options(nomem, nostack));
    }
    let cpu = cpu_index() % MAX_CPUS;
    // kind 4: synchronous, current EL with SP_ELx.
    if kind == 4
        && CAUGHT.contains(&((esr >> 26) & 0x3f))
        && ABORT_STATE[cpu].load(Ordering::SeqCst) == ARMED
    {
        ABORT_ESR[cpu].store(esr, Ordering::SeqCst);
        ABORT_FAR[cpu].store(far, Ordering::SeqCst);
        ABORT_STATE[cpu].store(TAKEN, Ordering::SeqCst);
        frame.elr += 4;
        return;
    }
    println!(
        "FAIL: unexpected exception (vector {kind}) on cpu{cpu}: ESR_EL1 {esr:#x} FAR_EL1 {far:#x} ELR_EL1 {:#x}",
        frame.elr
    );
    fail_code(0xE);
    stop_after_failure()
}

// ---- end of a test -----------------------------------------------------------

/// TEST_FAIL hypercall (not in native mode, where QEMU would UNDEF it).
pub fn fail_code(code: u64) {
    let native = ENV_READY.load(Ordering::Acquire) && env().native;
    if !native {
        let _ = hvc3(PHV_TEST_FAIL, code, 0, 0);
    }
}

fn stop_after_failure() -> ! {
    if cpu_index() == 0 {
        let hw = ENV_READY.load(Ordering::Acquire) && env().hwdom;
        power_off(hw)
    } else {
        cpu_off()
    }
}

/// PSCI CPU_OFF for this vCPU.
pub fn cpu_off() -> ! {
    let r = hvc3(PSCI_CPU_OFF, 0, 0, 0);
    println!("FAIL: CPU_OFF returned {r}");
    park()
}

/// End of the VM: the hardware domain powers the system off after waiting
/// `wait_ms` (so other VMs can finish); a guest powers itself off.
pub fn power_off(hwdom: bool) -> ! {
    let r = hvc3(PSCI_SYSTEM_OFF, 0, 0, 0);
    println!("FAIL: SYSTEM_OFF (hwdom: {hwdom}) returned {r}");
    park()
}

/// Wait until every VM but the first (the hardware domain) is stopped
/// (VM_STATE), at most `ms` milliseconds; false on timeout.
pub fn wait_for_vms(ms: u64) -> bool {
    const STOPPED: u64 = 0;
    let end = deadline_ms(ms);
    let mut next = 1u64;
    loop {
        let r = call::hvc(PHV_VM_STATE, [next, 0, 0, 0, 0, 0, 0]);
        match (r.status(), r.0[1]) {
            // Past the last VM: all stopped.
            (NOT_FOUND, _) => return true,
            (0, STOPPED) => {
                println!("VM {next} stopped");
                next += 1;
            }
            _ if counter() >= end => return false,
            _ => yield_ms(10),
        }
    }
}

/// Pass/fail bookkeeping of one test.
#[derive(Debug)]
pub struct Test {
    pub name: &'static str,
    pub failures: u32,
}

impl Test {
    pub fn new(name: &'static str) -> Self {
        Test { name, failures: 0 }
    }

    /// Record a failure: `FAIL: <test>: <what>` and TEST_FAIL.
    pub fn fail(&mut self, what: core::fmt::Arguments<'_>) {
        self.failures += 1;
        println!("FAIL: {}: {what}", self.name);
        fail_code(u64::from(self.failures));
    }

    /// Fail unless `ok`.
    pub fn check(&mut self, ok: bool, what: core::fmt::Arguments<'_>) {
        if !ok {
            self.fail(what);
        }
    }

    /// Fail unless `got == want`, naming both.
    pub fn check_eq(&mut self, what: &str, got: i64, want: i64) {
        if got != want {
            self.fail(format_args!(
                "{what}: got {got} ({got:#x}), expected {want} ({want:#x})"
            ));
        }
    }

    /// Print `<test>: ok` if nothing failed, then end the VM (the hwdom
    /// waits `wait_ms` from its bootargs first).
    pub fn finish(mut self, env: &Env) -> ! {
        // `wait_vms=<ms>` (hwdom): first wait until every other VM has
        // stopped (VM_STATE), at most that long.
        if let Ok(Some(patience)) = env.bootargs.number("wait_vms")
            && env.hwdom
            && !wait_for_vms(patience)
        {
            self.fail(format_args!(
                "the other VMs did not stop within {patience} ms"
            ));
        }
        self.finish_after(
            env,
            env.bootargs.number("wait_ms").ok().flatten().unwrap_or(0),
        )
    }

    /// Like `finish`, waiting `wait_ms` (hwdom only) before SYSTEM_OFF.
    pub fn finish_after(self, env: &Env, wait_ms: u64) -> ! {
        if self.failures == 0 {
            println!("{}: ok", self.name);
        }
        // The hwdom waits for the guests; a guest may linger with its
        // devices (another VM's test needs them owned meanwhile).
        if wait_ms > 0 {
            idle_ms(wait_ms);
        }
        power_off(env.hwdom)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("FAIL: panic on cpu{}: {info}", cpu_index());
    fail_code(0xF);
    stop_after_failure()
}
