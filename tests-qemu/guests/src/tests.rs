//! The tests a guest can run (`test=NAME`).

use core::sync::atomic::{AtomicBool, Ordering};

use test_guests::println;
use test_guests::rt::{self, Env, Test, call};
use test_guests::smccc::*;

#[unsafe(no_mangle)]
fn test_guest_main(env: Env) -> ! {
    match env.bootargs.get("test") {
        Some("hello") => hello(&env),
        Some("alive") => alive(&env),
        Some("isolation") => isolation(&env),
        Some("psci") => psci(&env),
        Some("badcalls") => badcalls(&env),
        Some("console-hostile") => console_hostile(&env),
        Some("pmu-debug") => crate::tests_arch::pmu_debug(&env),
        Some("hyp-bug") => hyp_bug(&env),
        Some(name) if name.starts_with("gic-") => crate::tests_gic::run(&env, name),
        Some("enumerate") => crate::pci_tests::enumerate(&env),
        Some("pci-guest") => crate::pci_tests::pci_guest(&env),
        Some("pci-hostile") => crate::pci_tests::pci_hostile(&env),
        Some("pci-stop") => crate::hostile::pci_stop(&env),
        Some("pci-sbr") => crate::pci_tests::pci_sbr(&env),
        Some("pci-reset") => crate::pci_tests::pci_reset(&env),
        Some("pci-reboot") => crate::pci_tests::pci_reboot(&env),
        Some("pci-bench") => crate::pci_bench::pci_bench(&env),
        Some("pci-intx") => crate::pci_intx::pci_intx(&env),
        Some("pci-aer") => crate::pci_aer::pci_aer(&env),
        other => {
            let mut t = Test::new("guest");
            t.fail(format_args!(
                "unknown test {other:?} (bootargs `{}`)",
                env.bootargs.0
            ));
            t.finish(&env)
        }
    }
}

/// Checks every test makes: EL1, the DTB and image inside /memory,
/// `expect_mem_base=` if given.
fn common_checks(t: &mut Test, env: &Env) {
    let el = rt::current_el();
    t.check(el == 1, format_args!("running at EL{el}, not EL1"));
    let mem = env.mem_base..env.mem_base.saturating_add(env.mem_size);
    t.check(env.mem_size > 0, format_args!("no /memory in the DTB"));
    t.check(
        mem.contains(&(env.dtb as u64)),
        format_args!("DTB {:#x} outside /memory {mem:#x?}", env.dtb),
    );
    let (start, end) = rt::image_range();
    t.check(
        mem.contains(&start) && end <= mem.end,
        format_args!("image {start:#x}..{end:#x} outside /memory {mem:#x?}"),
    );
    match env.bootargs.number("expect_mem_base") {
        Ok(Some(b)) => t.check(
            env.mem_base == b,
            format_args!("memory at {:#x}, expected {b:#x}", env.mem_base),
        ),
        Ok(None) => {}
        Err(v) => t.fail(format_args!("bad expect_mem_base `{v}`")),
    }
}

/// Fill v0-v31, make a hypercall, check v0-v31 survived it.
fn fp_regs_survive_hvc() -> bool {
    let mut src = [0u64; 64];
    for (i, w) in src.iter_mut().enumerate() {
        *w = 0x0123_4567_89ab_cdef_u64.rotate_left(i as u32) ^ (i as u64);
    }
    let mut dst = [0u64; 64];
    // SAFETY: loads 512 bytes from `src` and stores 512 bytes to `dst`, both
    // live arrays of that size; the hypercall may change x0-x17 (declared).
    unsafe {
        core::arch::asm!(
            "ld1 {{v0.2d-v3.2d}}, [{s}], #64",
            "ld1 {{v4.2d-v7.2d}}, [{s}], #64",
            "ld1 {{v8.2d-v11.2d}}, [{s}], #64",
            "ld1 {{v12.2d-v15.2d}}, [{s}], #64",
            "ld1 {{v16.2d-v19.2d}}, [{s}], #64",
            "ld1 {{v20.2d-v23.2d}}, [{s}], #64",
            "ld1 {{v24.2d-v27.2d}}, [{s}], #64",
            "ld1 {{v28.2d-v31.2d}}, [{s}], #64",
            "mov x0, {id:x}",
            "hvc #0",
            "st1 {{v0.2d-v3.2d}}, [{d}], #64",
            "st1 {{v4.2d-v7.2d}}, [{d}], #64",
            "st1 {{v8.2d-v11.2d}}, [{d}], #64",
            "st1 {{v12.2d-v15.2d}}, [{d}], #64",
            "st1 {{v16.2d-v19.2d}}, [{d}], #64",
            "st1 {{v20.2d-v23.2d}}, [{d}], #64",
            "st1 {{v24.2d-v27.2d}}, [{d}], #64",
            "st1 {{v28.2d-v31.2d}}, [{d}], #64",
            s = inout(reg) src.as_ptr() => _,
            d = inout(reg) dst.as_mut_ptr() => _,
            id = in(reg) u64::from(PSCI_VERSION),
            out("x0") _, out("x1") _, out("x2") _, out("x3") _, out("x4") _, out("x5") _,
            out("x6") _, out("x7") _, out("x8") _, out("x9") _, out("x10") _, out("x11") _,
            out("x12") _, out("x13") _, out("x14") _, out("x15") _, out("x16") _, out("x17") _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
            options(nostack),
        );
    }
    src == dst
}

/// `hello`: say who we are, check the boot environment and that FP state
/// survives hypercalls.
fn hello(env: &Env) -> ! {
    let mut t = Test::new("hello");
    println!(
        "hello from {}: EL{}, dtb at {:#x}, memory {:#x}..{:#x}, image at {:#x}, {} cpu(s)",
        env.label,
        rt::current_el(),
        env.dtb,
        env.mem_base,
        env.mem_base + env.mem_size,
        env.load_addr,
        env.cpus
    );
    common_checks(&mut t, env);

    // /psci as the contract says: arm,psci-1.0 with method "hvc".
    let fdt = env.fdt();
    match fdt.find_node("/psci") {
        None => t.fail(format_args!("no /psci node")),
        Some(p) => {
            let method = p.property("method").and_then(|m| m.as_str());
            t.check(
                method == Some("hvc"),
                format_args!("/psci method {method:?}, expected \"hvc\""),
            );
            let compat = p
                .compatible()
                .is_some_and(|c| c.all().any(|s| s == "arm,psci-1.0"));
            t.check(
                compat,
                format_args!("/psci is not compatible with arm,psci-1.0"),
            );
        }
    }
    t.check(env.cpus >= 1, format_args!("no cpu nodes"));
    // (QEMU itself omits enable-method with a single CPU: native runs skip this.)
    for (i, cpu) in fdt.cpus().enumerate().filter(|_| !env.native) {
        let m = cpu.property("enable-method").and_then(|m| m.as_str());
        t.check(
            m == Some("psci"),
            format_args!("cpu node {i}: enable-method {m:?}, expected \"psci\""),
        );
    }
    let timer = fdt.find_compatible(&["arm,armv8-timer"]).is_some();
    t.check(timer, format_args!("no arm,armv8-timer node"));
    let gic = fdt
        .find_compatible(&["arm,gic-v3", "arm,cortex-a15-gic"])
        .is_some();
    t.check(
        gic,
        format_args!("no GIC node (arm,gic-v3 or arm,cortex-a15-gic)"),
    );
    let stdout = fdt
        .find_node("/chosen")
        .and_then(|c| c.property("stdout-path"))
        .is_some();
    t.check(stdout, format_args!("no /chosen/stdout-path"));
    // The emulated PL011: one line written to UARTDR byte by byte.
    let uart = rt::console::pl011_line(format_args!("hello via pl011 from {}", env.label));
    t.check(uart, format_args!("no arm,pl011 node"));

    // FP: a harmonic sum with a hypercall between terms, then the full
    // register file across one hypercall.
    let mut sum = 0.0f64;
    for i in 1..=10u32 {
        sum += 1.0 / core::hint::black_box(f64::from(i));
        let _ = call::hvc3(PSCI_VERSION, 0, 0, 0);
    }
    let want = 7381.0 / 2520.0; // H(10)
    t.check(
        (sum - want).abs() < 1e-12,
        format_args!("FP sum across hypercalls {sum} != {want}"),
    );
    t.check(
        fp_regs_survive_hvc(),
        format_args!("v0-v31 changed across a hypercall"),
    );
    println!("fp: H(10) = {sum:.6} across 10 hypercalls");
    t.finish(env)
}

/// `alive`: wait `wait_ms`, then show this VM still runs.
fn alive(env: &Env) -> ! {
    let mut t = Test::new("alive");
    common_checks(&mut t, env);
    let wait = env
        .bootargs
        .number("wait_ms")
        .ok()
        .flatten()
        .unwrap_or(1000);
    rt::delay_ms(wait);
    println!("{} still alive", env.label);
    t.finish_after(env, 0)
}

/// `hyp-bug`: TEST_HYPERVISOR_BUG with `kind=` (0 fault, 1 panic, 2 panic
/// holding locks). The hardware domain waits `after_ms=` and makes the
/// call, which must not return: the hypervisor stops the system. Any other
/// VM must be refused (DENIED) and keeps running until the system stops.
fn hyp_bug(env: &Env) -> ! {
    let mut t = Test::new("hyp-bug");
    common_checks(&mut t, env);
    let kind = env.bootargs.number("kind").ok().flatten().unwrap_or(0);
    if !env.hwdom {
        t.check_eq(
            "TEST_HYPERVISOR_BUG from a guest",
            call::hvc3(PHV_TEST_HYPERVISOR_BUG, kind, 0, 0),
            DENIED,
        );
        if t.failures == 0 {
            println!("hyp-bug: refused to a guest");
        }
        let mut ticks = 0u64;
        loop {
            rt::delay_ms(100);
            ticks += 1;
            println!("hyp-bug: guest still running ({ticks})");
        }
    }
    t.check_eq(
        "TEST_HYPERVISOR_BUG kind 3",
        call::hvc3(PHV_TEST_HYPERVISOR_BUG, 3, 0, 0),
        INVALID_PARAMETER,
    );
    rt::delay_ms(
        env.bootargs
            .number("after_ms")
            .ok()
            .flatten()
            .unwrap_or(300),
    );
    println!("hyp-bug: provoking kind {kind}");
    let got = call::hvc3(PHV_TEST_HYPERVISOR_BUG, kind, 0, 0);
    t.fail(format_args!("TEST_HYPERVISOR_BUG returned {got}"));
    t.finish(env)
}

/// `isolation`: reads of `probe=` (another VM's RAM) and `probe2=` (a device
/// this VM does not own) must abort instead of returning data.
fn isolation(env: &Env) -> ! {
    let mut t = Test::new("isolation");
    common_checks(&mut t, env);
    let own = env.mem_base..env.mem_base + env.mem_size;
    for (key, want_external) in [("probe", true), ("probe2", false)] {
        let addr = match env.bootargs.number(key) {
            Ok(Some(a)) => a,
            Ok(None) => {
                t.fail(format_args!("no {key}= in bootargs"));
                continue;
            }
            Err(v) => {
                t.fail(format_args!("bad {key}= `{v}`"));
                continue;
            }
        };
        if own.contains(&addr) {
            t.fail(format_args!(
                "{key} {addr:#x} is inside this VM's own memory {own:#x?}"
            ));
            continue;
        }
        match rt::probe_read32(addr) {
            Ok(v) => t.fail(format_args!(
                "read of {addr:#x} returned {v:#x} instead of aborting"
            )),
            Err(a) => {
                println!(
                    "read of {addr:#x} aborted with ESR {:#x} (EC {:#x}, DFSC {:#x}), FAR {:#x}",
                    a.esr,
                    a.ec(),
                    a.dfsc(),
                    a.far
                );
                t.check(
                    a.ec() == rt::EC_DATA_ABORT_SAME_EL,
                    format_args!("{key}: EC {:#x}, expected a data abort (0x25)", a.ec()),
                );
                if want_external {
                    t.check(
                        a.dfsc() == rt::DFSC_SYNC_EXTERNAL,
                        format_args!(
                            "{key}: DFSC {:#x}, expected a synchronous external abort (0x10)",
                            a.dfsc()
                        ),
                    );
                }
                t.check(
                    a.far == addr,
                    format_args!("{key}: FAR {:#x}, expected {addr:#x}", a.far),
                );
            }
        }
    }
    t.finish(env)
}

static CPU1_UP: AtomicBool = AtomicBool::new(false);
static CPU1_BAD_MPIDR: AtomicBool = AtomicBool::new(false);

fn secondary(cpu: usize) -> ! {
    // The context id (x0) is the vCPU index we asked for; MPIDR must agree.
    let mpidr = rt::mpidr();
    if mpidr != cpu as u64 {
        CPU1_BAD_MPIDR.store(true, Ordering::SeqCst);
        println!("FAIL: psci: vCPU started with context {cpu} has MPIDR {mpidr:#x}");
    }
    println!("cpu{cpu} up");
    CPU1_UP.store(true, Ordering::SeqCst);
    rt::cpu_off()
}

/// CPU_ON vCPU 1, wait for it to say so, then for AFFINITY_INFO to show it off.
fn start_and_stop_cpu1(t: &mut Test, round: u32) {
    CPU1_UP.store(false, Ordering::SeqCst);
    let entry = rt::secondary_entry_addr();
    let r = call::hvc3(PSCI_CPU_ON, 1, entry, 1);
    t.check_eq("CPU_ON(vCPU 1)", r, SUCCESS);
    if r != SUCCESS {
        return;
    }
    let up = rt::poll_ms(2000, || CPU1_UP.load(Ordering::SeqCst).then_some(()));
    t.check(
        up.is_some(),
        format_args!("round {round}: vCPU 1 did not run within 2 s of CPU_ON"),
    );
    t.check(
        !CPU1_BAD_MPIDR.load(Ordering::SeqCst),
        format_args!("round {round}: vCPU 1 has the wrong MPIDR"),
    );
    let mut last = 0;
    let off = rt::poll_ms(2000, || {
        last = call::hvc3(PSCI_AFFINITY_INFO, 1, 0, 0);
        (last == AFF_OFF).then_some(())
    });
    t.check(
        off.is_some(),
        format_args!("round {round}: AFFINITY_INFO(vCPU 1) stayed {last} after its CPU_OFF"),
    );
}

/// `psci`: the PSCI 1.x subset and SMCCC queries of docs/interfaces.md.
/// Needs 2 vCPUs (vCPU 1 is started and stopped).
fn psci(env: &Env) -> ! {
    let mut t = Test::new("psci");
    common_checks(&mut t, env);
    let hvc = call::hvc3;

    let v = hvc(PSCI_VERSION, 0, 0, 0);
    t.check(
        v == 0x1_0000 || v == 0x1_0001,
        format_args!("PSCI_VERSION {v:#x}, expected 1.0 or 1.1"),
    );
    t.check_eq(
        "PSCI_FEATURES(CPU_ON)",
        hvc(PSCI_FEATURES, u64::from(PSCI_CPU_ON), 0, 0),
        SUCCESS,
    );
    t.check_eq(
        "PSCI_FEATURES(unknown 0x8400001f)",
        hvc(PSCI_FEATURES, 0x8400_001F, 0, 0),
        NOT_SUPPORTED,
    );
    t.check_eq("MIGRATE_INFO_TYPE", hvc(PSCI_MIGRATE_INFO_TYPE, 0, 0, 0), 2);
    t.check_eq(
        "AFFINITY_INFO(vCPU 0)",
        hvc(PSCI_AFFINITY_INFO, 0, 0, 0),
        AFF_ON,
    );
    if env.cpus < 2 {
        t.fail(format_args!(
            "the psci test needs 2 vCPUs, the DT shows {}",
            env.cpus
        ));
    } else {
        t.check_eq(
            "AFFINITY_INFO(vCPU 1) before CPU_ON",
            hvc(PSCI_AFFINITY_INFO, 1, 0, 0),
            AFF_OFF,
        );
        rt::set_secondary_main(secondary);
        // Twice: a vCPU that did CPU_OFF can be started again.
        start_and_stop_cpu1(&mut t, 1);
        start_and_stop_cpu1(&mut t, 2);
    }
    t.check_eq(
        "CPU_ON(nonexistent MPIDR 0xfe)",
        hvc(PSCI_CPU_ON, 0xFE, rt::secondary_entry_addr(), 0),
        PSCI_INVALID_PARAMETERS,
    );
    t.check_eq(
        "CPU_ON(self)",
        hvc(PSCI_CPU_ON, rt::mpidr(), rt::secondary_entry_addr(), 0),
        PSCI_ALREADY_ON,
    );
    t.check_eq(
        "AFFINITY_INFO(vCPU 0) at the end",
        hvc(PSCI_AFFINITY_INFO, 0, 0, 0),
        AFF_ON,
    );

    if env.native {
        println!("native: SMCCC checks skipped");
    } else {
        let s = hvc(SMCCC_VERSION, 0, 0, 0);
        t.check(
            s >= 0x1_0001,
            format_args!("SMCCC_VERSION {s:#x}, expected >= 1.1"),
        );
        t.check_eq(
            "SMCCC_ARCH_FEATURES(unknown 0x80005555)",
            hvc(SMCCC_ARCH_FEATURES, 0x8000_5555, 0, 0),
            NOT_SUPPORTED,
        );
        // How Linux discovers SMCCC 1.1: PSCI_FEATURES(SMCCC_VERSION).
        t.check_eq(
            "PSCI_FEATURES(SMCCC_VERSION)",
            hvc(PSCI_FEATURES, u64::from(SMCCC_VERSION), 0, 0),
            0,
        );
        // QEMU's `-cpu max` says CSV2 3 and SSBS: not affected by Spectre
        // v2 and BHB, v4 mitigated by the guest itself.
        for (name, id, want) in [
            ("WORKAROUND_1", 0x8000_8000u64, 1),
            ("WORKAROUND_3", 0x8000_3FFF, 1),
            ("WORKAROUND_2", 0x8000_7FFF, -2),
        ] {
            let got = hvc(SMCCC_ARCH_FEATURES, id, 0, 0);
            t.check(
                got == want,
                format_args!("SMCCC_ARCH_FEATURES({name}) {got}, expected {want} on -cpu max"),
            );
        }
    }
    t.finish(env)
}

/// `badcalls`: bad and unknown calls get SMCCC errors, SMC works like HVC,
/// the vendor service answers its queries.
fn badcalls(env: &Env) -> ! {
    let mut t = Test::new("badcalls");
    common_checks(&mut t, env);
    let hvc = call::hvc3;

    t.check_eq(
        "unknown vendor call 0xc60000ff",
        hvc(0xC600_00FF, 0, 0, 0),
        NOT_SUPPORTED,
    );
    t.check_eq(
        "TEST_HYPERVISOR_BUG without phv,test-hypervisor-bugs",
        hvc(PHV_TEST_HYPERVISOR_BUG, 1, 0, 0),
        NOT_SUPPORTED,
    );
    t.check_eq(
        "unknown PSCI id 0x8400001f",
        hvc(0x8400_001F, 0, 0, 0),
        NOT_SUPPORTED,
    );
    t.check_eq(
        "unknown standard hypervisor service id 0xc5000001",
        hvc(0xC500_0001, 0, 0, 0),
        NOT_SUPPORTED,
    );
    t.check_eq(
        "unknown Arm architecture id 0x80005555",
        hvc(0x8000_5555, 0, 0, 0),
        NOT_SUPPORTED,
    );
    let big = [b'x'; 48];
    t.check_eq(
        "CONSOLE_WRITE length 49",
        rt::console::console_write_raw(49, &big),
        INVALID_PARAMETER,
    );
    t.check_eq(
        "CONSOLE_WRITE length u64::MAX",
        rt::console::console_write_raw(u64::MAX, &big),
        INVALID_PARAMETER,
    );
    t.check_eq(
        "CONSOLE_WRITE length 0",
        rt::console::console_write_raw(0, &[]),
        0,
    );

    let via_hvc = hvc(PSCI_VERSION, 0, 0, 0);
    let via_smc = call::smc(PSCI_VERSION, [0; 7]).status();
    t.check(
        via_hvc > 0,
        format_args!("PSCI_VERSION via HVC returned {via_hvc}"),
    );
    t.check_eq("PSCI_VERSION via SMC (vs HVC)", via_smc, via_hvc);
    t.check_eq(
        "unknown vendor call via SMC",
        call::smc(0xC600_00FF, [0; 7]).status(),
        NOT_SUPPORTED,
    );

    let count = hvc(PHV_CALL_COUNT, 0, 0, 0);
    t.check(
        count >= 2,
        format_args!("vendor call count {count}, expected >= 2"),
    );
    let uid = call::hvc(PHV_UID, [0; 7]);
    t.check(
        uid.0[0] as u32 != u32::MAX && uid.0 != [0; 4],
        format_args!("vendor UID {:#x?} is NOT_SUPPORTED or zero", uid.0),
    );
    let rev = hvc(PHV_REVISION, 0, 0, 0);
    t.check(rev >= 0, format_args!("vendor revision returned {rev}"));
    println!(
        "vendor service: {count} calls, UID {:08x}-{:08x}-{:08x}-{:08x}, revision {rev}",
        uid.0[0] as u32, uid.0[1] as u32, uid.0[2] as u32, uid.0[3] as u32
    );
    t.finish(env)
}

/// `console-hostile`: `flood` junk PCI calls (unknown segments: each one
/// refused, and the hypervisor has a reason to log for every one), with
/// PCI_ENUMERATION_DONE (which logs the tree) every 100th; then escape
/// sequences, a carriage return and a bell through CONSOLE_WRITE and
/// through the PL011, and a line that imitates the hypervisor's last one.
/// What the console shows is the scenario's to check.
fn console_hostile(env: &Env) -> ! {
    let mut t = Test::new("console-hostile");
    common_checks(&mut t, env);
    let flood = match env.bootargs.number("flood") {
        Ok(n) => n.unwrap_or(20_000),
        Err(v) => {
            t.fail(format_args!("bad flood `{v}`"));
            0
        }
    };
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..flood {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Segment 0 is the only one QEMU's virt machine has.
        let segment = 1 + (x & 0xfffe);
        let rid = (x >> 16) & 0xffff;
        if i % 100 == 99 {
            let r = call::hvc3(PHV_PCI_ENUMERATION_DONE, 0, 0, 0);
            let expected = if env.hwdom { SUCCESS } else { DENIED };
            t.check_eq("PCI_ENUMERATION_DONE(0)", r, expected);
            continue;
        }
        let id = if i % 2 == 0 {
            PHV_PCI_ADD
        } else {
            PHV_PCI_REMOVE
        };
        let r = call::hvc3(id, segment, rid, 0);
        // The hardware domain's: an unknown segment (INVALID_PARAMETER) or
        // an untracked function (NOT_FOUND); a guest's: not its call.
        let refused = if env.hwdom {
            r == INVALID_PARAMETER || r == NOT_FOUND
        } else {
            r == DENIED
        };
        if !refused {
            t.fail(format_args!(
                "junk PCI call {id:#x} segment {segment:#x} rid {rid:#x} returned {r}"
            ));
            break;
        }
    }
    println!("flood of {flood} calls done");
    println!("esc-hvc: \x1b[2K\x1b[1Gclobbered\rphv: fake\x07 end");
    if !rt::console::pl011_line(format_args!(
        "esc-pl011: \x1b[2K\x1b[1Gclobbered\rphv: fake\x07 end"
    )) {
        t.fail(format_args!("no PL011 in the device tree"));
    }
    println!("phv: system off, status 0");
    t.finish(env)
}
