//! `cargo xtask`: build, run, test and benchmark phv. See README.md.

mod cpio;
mod disk;
mod dtb;
mod host;
mod image;
mod linux;
mod pcireport;
mod prereq;
mod qemu;
mod qmp;
mod runner;
mod scenario;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use util::{Error, IoContext, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

  run [--gic 2|3]              build, then boot the demo scenario in QEMU (Ctrl-A x quits)
  test [--gic 2|3] [--scenario NAME] [--host-only|--qemu-only]
                               host tests, then every QEMU scenario; ends with `N passed, N failed`
  build                        build the hypervisor image and the test guests into build/
  dtb [--out DIR]              dump QEMU virt DTBs (GICv2, GICv3) [default: platform/tests/data]
  platform FILE.dtb            print the platform the hypervisor would discover, as JSON
  bench [pci|hyp|linux|all]    benchmarks (pci: the pci crate's tracker bench)
  pci-report [--gic 2|3] -- <QEMU args, e.g. -device pcie-root-port,id=rp1 -device nvme,bus=rp1,serial=x>
                               boot that topology, the hwdom enumerates it; print as JSON what the
                               hypervisor's pci tracker holds: functions, units, reset methods and scopes
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Small argument reader: `--flag`, `--opt VALUE`, positionals.
struct Args {
    rest: Vec<String>,
}

impl Args {
    fn new(a: &[String]) -> Self {
        Args { rest: a.to_vec() }
    }
    fn flag(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        before != self.rest.len()
    }
    fn opt(&mut self, name: &str) -> Result<Option<String>> {
        let Some(i) = self.rest.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.rest.len() {
            return Err(Error::Usage(format!("{name} needs a value")));
        }
        let v = self.rest.remove(i + 1);
        self.rest.remove(i);
        Ok(Some(v))
    }
    fn gic(&mut self) -> Result<Option<u8>> {
        match self.opt("--gic")?.as_deref() {
            None => Ok(None),
            Some("2") => Ok(Some(2)),
            Some("3") => Ok(Some(3)),
            Some(v) => Err(Error::Usage(format!("--gic takes 2 or 3, not {v}"))),
        }
    }
    fn positional(&mut self) -> Option<String> {
        let i = self.rest.iter().position(|a| !a.starts_with("--"))?;
        Some(self.rest.remove(i))
    }
    fn done(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "unexpected arguments: {}\n{USAGE}",
                self.rest.join(" ")
            )))
        }
    }
}

fn dispatch(argv: &[String]) -> Result<ExitCode> {
    let Some(cmd) = argv.first() else {
        eprint!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let mut a = Args::new(&argv[1..]);
    match cmd.as_str() {
        "run" => {
            let gic = a.gic()?.unwrap_or(3);
            a.done()?;
            cmd_run(gic)
        }
        "test" => {
            let gic = a.gic()?;
            let only = a.opt("--scenario")?;
            let host_only = a.flag("--host-only");
            let qemu_only = a.flag("--qemu-only");
            a.done()?;
            if host_only && qemu_only {
                return Err(Error::Usage(
                    "--host-only and --qemu-only exclude each other".into(),
                ));
            }
            cmd_test(gic, only.as_deref(), !qemu_only, !host_only)
        }
        "build" => {
            a.done()?;
            prereq::ensure(false)?;
            let images = image::build_all()?;
            print_image("hypervisor", &images.hypervisor)?;
            for (name, p) in &images.guests {
                print_image(name, p)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        "dtb" => {
            let out = a
                .opt("--out")?
                .map(PathBuf::from)
                .unwrap_or_else(|| util::root().join("platform/tests/data"));
            a.done()?;
            cmd_dtb(&out)
        }
        "platform" => {
            let file = a
                .positional()
                .ok_or_else(|| Error::Usage(format!("platform needs a DTB file\n{USAGE}")))?;
            a.done()?;
            cmd_platform(&file)
        }
        "bench" => {
            let which = a.positional().unwrap_or_else(|| "all".into());
            a.done()?;
            cmd_bench(&which)
        }
        "pci-report" => {
            let rest = &argv[1..];
            let (mine, qemu) = match rest.iter().position(|a| a == "--") {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let mut a = Args::new(mine);
            let gic = a.gic()?.unwrap_or(3);
            a.done()?;
            cmd_pci_report(gic, qemu)
        }
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(Error::Usage(format!("unknown command `{other}`\n{USAGE}"))),
    }
}

fn print_image(name: &str, p: &std::path::Path) -> Result<()> {
    let size = std::fs::metadata(p)
        .ctx(|| format!("stat {}", p.display()))?
        .len();
    println!("{name}: {} ({size} bytes)", p.display());
    Ok(())
}

fn cmd_run(gic: u8) -> Result<ExitCode> {
    prereq::ensure(true)?;
    let s = scenario::load("demo")?;
    if !s.gic.contains(&gic) {
        return Err(Error::Usage(format!(
            "the demo scenario does not run on GICv{gic}"
        )));
    }
    let images = image::build_all()?;
    let code = runner::run_interactive(&s, gic, &images)?;
    eprintln!("xtask: QEMU exited with status {code}");
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn cmd_test(gic: Option<u8>, only: Option<&str>, host: bool, qemu: bool) -> Result<ExitCode> {
    prereq::ensure(qemu)?;
    let mut passed = 0u64;
    let mut failed = 0u64;
    // Pending scenarios (`pending = "reason"`): neither passed nor failed.
    let mut skipped = 0u64;
    let mut summary: Vec<String> = Vec::new();

    if host {
        for suite in host::SUITES {
            let c = host::run(suite)?;
            passed += c.passed;
            failed += c.failed;
            let verdict = if c.failed == 0 { "PASS" } else { "FAIL" };
            summary.push(format!(
                "{verdict} host:{} ({} passed, {} failed)",
                suite.name, c.passed, c.failed
            ));
        }
    }

    if qemu {
        let scenarios = match only {
            Some(n) => vec![scenario::load(n)?],
            None => scenario::load_all()?,
        };
        match image::build_all() {
            Ok(images) => {
                for s in &scenarios {
                    for &g in s.gic.iter().filter(|g| gic.is_none_or(|x| x == **g)) {
                        if let Some(why) = &s.pending {
                            skipped += 1;
                            let line = format!("SKIP {}-gic{g}: pending: {why}", s.name);
                            println!("{line}");
                            summary.push(line);
                            continue;
                        }
                        println!("==== {}-gic{g}: {}", s.name, s.description);
                        let line = match runner::run(s, g, &images) {
                            Ok(r) if r.passed() => {
                                passed += 1;
                                format!("PASS {} ({:.1} s)", r.name, r.duration.as_secs_f64())
                            }
                            Ok(r) => {
                                failed += 1;
                                println!(
                                    "---- console of {} ({}) ----",
                                    r.name,
                                    r.log_path.display()
                                );
                                println!("{}", runner::tail(&r.log, 300));
                                println!("---- end of {} ----", r.name);
                                format!("FAIL {}: {}", r.name, r.problems.join("; "))
                            }
                            Err(e) => {
                                failed += 1;
                                format!("FAIL {}-gic{g}: {e}", s.name)
                            }
                        };
                        println!("{line}");
                        summary.push(line);
                    }
                }
            }
            Err(e) => {
                // Nothing can boot: every run fails.
                let runs: usize = scenarios
                    .iter()
                    .filter(|s| s.pending.is_none())
                    .map(|s| {
                        s.gic
                            .iter()
                            .filter(|g| gic.is_none_or(|x| x == **g))
                            .count()
                    })
                    .sum();
                failed += runs as u64;
                summary.push(format!(
                    "FAIL build of the images: {e} ({runs} QEMU runs not started)"
                ));
            }
        }
    }

    println!("\n==== summary ====");
    for l in &summary {
        println!("{l}");
    }
    if skipped == 0 {
        println!("{passed} passed, {failed} failed");
    } else {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_pci_report(gic: u8, qemu_args: &[String]) -> Result<ExitCode> {
    prereq::ensure(true)?;
    let images = image::build_all()?;
    let s = pcireport::scenario(gic, qemu_args);
    let r = runner::run(&s, gic, &images)?;
    let enumerate_ok = r.log.lines().any(|l| l.contains("[hwdom] enumerate: ok"));
    let (doc, ok) = match pcireport::assemble(&r.log) {
        Ok(mut v) => {
            v["gic"] = serde_json::json!(gic);
            v["qemu_args"] = serde_json::json!(qemu_args);
            v["hwdom_enumerate_ok"] = serde_json::json!(enumerate_ok);
            v["log"] = serde_json::json!(r.log_path.display().to_string());
            (v, r.passed())
        }
        Err(e) => (
            serde_json::json!({ "error": e, "log": r.log_path.display().to_string() }),
            false,
        ),
    };
    if !ok {
        eprintln!("{}", runner::tail(&r.log, 60));
        eprintln!("xtask: pci-report run problems: {}", r.problems.join("; "));
    }
    let text =
        serde_json::to_string_pretty(&doc).map_err(|e| Error::Other(format!("JSON: {e}")))?;
    println!("{text}");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cmd_dtb(out: &std::path::Path) -> Result<ExitCode> {
    prereq::ensure(true)?;
    for gic in [2u8, 3] {
        let m = qemu::Machine {
            gic,
            smp: 2,
            memory_mib: 1024,
            virtualization: true,
            extra: Vec::new(),
        };
        let f = out.join(format!("qemu-virt-gicv{gic}.dtb"));
        m.dump_dtb(&f)?;
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_platform(file: &str) -> Result<ExitCode> {
    let bytes = std::fs::read(file).ctx(|| format!("read {file}"))?;
    let (text, code) = match platform::Platform::from_fdt(&bytes) {
        Ok(p) => (serde_json::to_string_pretty(&p), ExitCode::SUCCESS),
        Err(e) => (
            serde_json::to_string_pretty(&serde_json::json!({ "error": e.to_string() })),
            ExitCode::FAILURE,
        ),
    };
    println!("{}", text.map_err(|e| Error::Other(format!("JSON: {e}")))?);
    Ok(code)
}

/// The AER figure of a bench log: each guest line "aer: KIND: ... handler
/// entry at counter E" paired with the hypervisor's last "reached EL2 at
/// counter T" before it: (KIND, E - T).
fn aer_latencies(log: &str) -> Vec<(String, u64)> {
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    let mut at_el2 = None;
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(t) = number_after(line, "reached EL2 at counter ") {
            at_el2 = Some(t);
        } else if let (Some(e), Some(t)) = (number_after(line, "handler entry at counter "), at_el2)
            && e > t
        {
            let kind = line
                .split("aer: ")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .unwrap_or("?");
            out.push((kind.to_string(), e - t));
            at_el2 = None;
        }
    }
    out
}

/// What a Linux benchmark boot measured (instructions under `-icount
/// shift=0`): from the kernel's first instruction to the first line of
/// `/init`, and the buffered read of the whole nvme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinuxFigures {
    boot: u64,
    dd: u64,
}

/// The figures in a Linux benchmark run's log. The kernel's first
/// instruction: natively the counter is 0 then (QEMU's boot stub runs a
/// handful of instructions); under phv, the counter phv logs as it enters
/// the guest's vCPU 0 (a few thousand instructions of its own logging
/// early).
fn linux_figures(log: &str, label: &str) -> Option<LinuxFigures> {
    let number_after = |key: &str| -> Option<u64> {
        let line = log.lines().find(|l| l.contains(key))?;
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .find(|t| !t.is_empty())?
            .parse()
            .ok()
    };
    let entry = if label == "native" {
        0
    } else {
        let key = format!("entering {label} vCPU 0 on CPU ");
        let line = log.lines().find(|l| l.contains(&key))?;
        line.rsplit("counter ").next()?.trim().parse().ok()?
    };
    let init = number_after("phv-init: counter at /init ")?;
    let dd = number_after(" sectors in ")?;
    Some(LinuxFigures {
        boot: init.checked_sub(entry)?,
        dd,
    })
}

/// `bench linux`: the same Linux booted natively and under phv, three
/// times each, side by side (medians and their ratios). Returns whether
/// every run passed.
fn bench_linux() -> Result<bool> {
    let images = image::build_all()?;
    let mut ok = true;
    let mut medians = Vec::new();
    for (name, label) in [
        ("bench-linux-native", "native"),
        ("bench-linux-guest", "linux"),
    ] {
        let s = scenario::load(name)?;
        if let Some(why) = &s.pending {
            println!("{name}: not run, pending: {why}");
            ok = false;
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..3 {
            let r = runner::run(&s, 3, &images)?;
            match linux_figures(&r.log, label).filter(|_| r.passed()) {
                Some(f) => {
                    println!("{name}: boot to /init {} instructions, dd {}", f.boot, f.dd);
                    runs.push(f);
                }
                None => {
                    eprintln!("xtask: {}: {}", r.name, r.problems.join("; "));
                    ok = false;
                }
            }
        }
        if runs.len() == 3 {
            let median = |mut v: Vec<u64>| {
                v.sort_unstable();
                v[1]
            };
            let m = LinuxFigures {
                boot: median(runs.iter().map(|f| f.boot).collect()),
                dd: median(runs.iter().map(|f| f.dd).collect()),
            };
            println!("{name}: median of 3: boot {}, dd {}", m.boot, m.dd);
            medians.push(m);
        }
    }
    if let [native, guest] = medians[..] {
        println!(
            "Linux under phv / natively: boot to /init {:.4}, buffered read of the nvme {:.4}",
            guest.boot as f64 / native.boot as f64,
            guest.dd as f64 / native.dd as f64
        );
    }
    Ok(ok)
}

/// Benchmark suites. `hyp` (the hypervisor's own paths, timed in QEMU with
/// `-icount shift=0` so figures repeat exactly) is the place for the next ones.
fn cmd_bench(which: &str) -> Result<ExitCode> {
    let (pci, hyp, linux) = match which {
        "pci" => (true, false, false),
        "hyp" => (false, true, false),
        "linux" => (false, false, true),
        "all" => (true, true, true),
        other => {
            return Err(Error::Usage(format!(
                "unknown benchmark set `{other}` (pci, hyp, linux, all)"
            )));
        }
    };
    prereq::ensure(hyp || linux)?;
    if linux && !bench_linux()? {
        return Ok(ExitCode::FAILURE);
    }
    if pci {
        util::run(util::cargo().args([
            "bench",
            "-p",
            "pci",
            "--features",
            "sim",
            "--bench",
            "tracker",
        ]))?;
    }
    if hyp {
        // The hypervisor figures: every scenario run under `-icount shift=0`
        // (gic-bench, bench-*), where the guests' counter deltas are
        // instructions; their figure lines are the ones with "bench: " or
        // timing lines ("answers ... ms after", "ready ... ms after").
        let images = image::build_all()?;
        let mut failed = false;
        for name in [
            "gic-bench",
            "bench-pci-hwdom",
            "bench-pci-guest",
            "bench-pci-intx",
            "bench-pci-sbr",
            "bench-pci-reset",
            "bench-pci-aer",
            "bench-pci-aer-ignored",
        ] {
            let s = scenario::load(name)?;
            for &gic in &s.gic {
                let r = runner::run(&s, gic, &images)?;
                println!(
                    "{name} (GICv{gic}), instructions (1 tick = 1 instruction = 1 virtual ns):"
                );
                for line in r.log.lines().filter(|l| {
                    l.contains("bench: ") || l.contains(" ms after") || l.contains("pci-intx: ")
                }) {
                    println!("  {line}");
                }
                for (what, n) in aer_latencies(&r.log) {
                    println!("  AER {what}: root port interrupt at EL2 -> guest handler: {n}");
                }
                if !r.passed() {
                    eprintln!("xtask: {}: {}", r.name, r.problems.join("; "));
                    failed = true;
                }
            }
        }
        if failed {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn linux_figures_count_from_the_kernels_entry() {
        let guest = "phv: entering hwdom vCPU 0 on CPU 0 at 0x41600000, counter 5\n\
                     phv: entering linux vCPU 0 on CPU 1 at 0x48400000, counter 1000\n\
                     [linux] phv-init: counter at /init 9000\n\
                     [linux] phv-init: dd /dev/nvme0n1 131072 sectors in 700 ticks\n";
        assert_eq!(
            super::linux_figures(guest, "linux"),
            Some(super::LinuxFigures {
                boot: 8000,
                dd: 700
            })
        );
        let native =
            "phv-init: counter at /init 9000\nphv-init: dd /dev/nvme0n1 8 sectors in 70 ticks\n";
        assert_eq!(
            super::linux_figures(native, "native"),
            Some(super::LinuxFigures { boot: 9000, dd: 70 })
        );
        assert_eq!(super::linux_figures("nothing", "native"), None);
    }

    /// `cargo xtask platform` on Debian's ipq8074 DTB: both host bridges are
    /// listed as refused, each with its error's message.
    #[test]
    fn platform_json_lists_refused_host_bridges_with_their_reason() {
        let dtb = crate::util::root().join("platform/tests/data/boards/ipq8074-hk01.dtb");
        let p = platform::Platform::from_fdt(&std::fs::read(dtb).unwrap()).unwrap();
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["pci_host_bridges"], serde_json::json!([]));
        assert_eq!(
            v["refused_host_bridges"][1],
            serde_json::json!({
                "path": "/soc/pci@20000000",
                "reason": "/soc/pci@20000000: bad interrupt-map: phandle does not name any node",
            })
        );
    }

    /// The release profile (the hypervisor's) checks arithmetic overflow:
    /// values a domain or a device controls never wrap silently.
    #[test]
    fn release_builds_check_overflow() {
        let manifest = std::fs::read_to_string(crate::util::root().join("Cargo.toml")).unwrap();
        let release = manifest
            .split("[profile.release]")
            .nth(1)
            .map(|rest| rest.split("\n[").next().unwrap_or(rest))
            .expect("a [profile.release] table");
        let checks = release
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("overflow-checks"));
        assert_eq!(checks, Some("overflow-checks = true"), "{release}");
    }

    #[test]
    fn aer_latencies_pair_el2_and_guest_counters() {
        let log = "phv: AER: the root port interrupt ended by this EOI reached EL2 at counter 1000\n\
                   [guest] aer: correctable: Root Error Status 0x1, handler entry at counter 1900\n\
                   [guest] aer: non-fatal: Root Error Status 0x24, handler entry at counter 5000\n\
                   phv: AER: the root port interrupt ended by this EOI reached EL2 at counter 6000\n\
                   [guest] aer: fatal: Root Error Status 0x54, handler entry at counter 6850\n";
        assert_eq!(
            super::aer_latencies(log),
            [("correctable".to_string(), 900), ("fatal".to_string(), 850)]
        );
    }
}
