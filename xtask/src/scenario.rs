//! QEMU scenarios: `tests-qemu/scenarios/*.toml` (format in tests-qemu/README.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::util::{self, Error, IoContext, Result};

fn default_gic() -> Vec<u8> {
    vec![2, 3]
}
fn default_smp() -> u32 {
    2
}
fn default_memory() -> u64 {
    1024
}
fn default_timeout() -> u64 {
    60
}
fn default_true() -> bool {
    true
}
fn default_cpus() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Set from the file name.
    #[serde(skip)]
    pub name: String,
    pub description: String,
    #[serde(default = "default_gic")]
    pub gic: Vec<u8>,
    #[serde(default = "default_smp")]
    pub smp: u32,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    #[serde(default)]
    pub qemu_args: Vec<String>,
    /// `false`: boot the (single) VM's image directly at EL1 under QEMU's own
    /// PSCI, without the hypervisor; checks the test guests themselves.
    #[serde(default = "default_true")]
    pub hypervisor: bool,
    #[serde(default)]
    pub vm: Vec<Vm>,
    /// Run QEMU with a QMP socket: the guests' `phv-hmp: <command>` console
    /// lines are sent to QEMU's monitor as they arrive (only
    /// `pcie_aer_inject_error`), the replies logged as `xtask: hmp ...` lines.
    #[serde(default)]
    pub qmp: bool,
    /// `/chosen/phv,aer-storm = <threshold window_ms>`: the AER storm
    /// limiter's setting (the hypervisor's default when absent).
    #[serde(default)]
    pub aer_storm: Option<[u32; 2]>,
    /// `/chosen/phv,test-hypervisor-bugs`: the hardware domain may make the
    /// hypervisor fault or panic on purpose (TEST_HYPERVISOR_BUG).
    #[serde(default)]
    pub test_hypervisor_bugs: bool,
    /// Disk images xtask writes (a known pattern) and gives QEMU as
    /// `-drive if=none,id=<id>,...`: a device names one with `drive=<id>`.
    /// `{md5:<id>}` in an expected line is the image's MD5.
    #[serde(default)]
    pub disk: Vec<Disk>,
    pub expect: Expect,
    /// Set while the scenario cannot pass yet (e.g. the hypervisor side it
    /// tests has not landed): the reason. `cargo xtask test` reports it as
    /// SKIP (neither passed nor failed) and does not boot it.
    #[serde(default)]
    pub pending: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub label: String,
    #[serde(default)]
    pub hardware_domain: bool,
    pub memory_mib: u64,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    pub image: String,
    #[serde(default)]
    pub bootargs: String,
    /// Fixed physical base of the VM's RAM (`phv,memory-base`).
    #[serde(default)]
    pub memory_base: Option<u64>,
    /// PCI functions passed through (`phv,pci-devices`), "SSSS:BB:DD.F" or
    /// "BB:DD.F". Bus numbers are the ones the hardware domain's enumeration
    /// assigns (depth-first: the first bridge's secondary bus is 1, ...).
    #[serde(default)]
    pub pci_devices: Vec<String>,
    /// Take whole assignment units (`phv,pci-whole-units`).
    #[serde(default)]
    pub pci_whole_units: bool,
    /// Reset-method orders (`phv,pci-reset-methods`), "SSSS:BB:DD.F=flr,pm".
    #[serde(default)]
    pub pci_reset_methods: Vec<String>,
    /// After a fatal AER error, how long the VM has to reset the function
    /// before the hypervisor does (`phv,aer-deadline-ms`).
    #[serde(default)]
    pub aer_deadline_ms: Option<u32>,
    /// An initramfs for the VM's kernel (a `multiboot,ramdisk` module):
    /// busybox, our `/init` and these kernel modules (see
    /// `xtask/src/linux.rs`). For `image = "debian-linux"`.
    #[serde(default)]
    pub initramfs: Option<Initramfs>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub id: String,
    pub size_mib: u64,
}

/// The image name of Debian's arm64 kernel (fetched into the cache).
pub const DEBIAN_LINUX: &str = "debian-linux";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// Kernel modules by name (`nvme`, `e1000e`, `virtio_blk`...): loaded by
    /// `/init` in dependency order.
    #[serde(default)]
    pub modules: Vec<String>,
}

impl Vm {
    /// The bootargs the guest gets: the scenario's, plus `label=` and `role=`
    /// so the test guest knows its name and whether it is the hardware domain.
    pub fn full_bootargs(&self) -> String {
        let role = if self.hardware_domain {
            "hwdom"
        } else {
            "guest"
        };
        let mut s = self.bootargs.trim().to_string();
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&format!("label={} role={role}", self.label));
        s
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub exit_code: i32,
    /// Substrings that must each appear on some console line.
    #[serde(default)]
    pub lines: Vec<String>,
    /// With `ordered`, `lines` must appear in this order.
    #[serde(default)]
    pub ordered: bool,
    /// Substrings that must appear on no line. Seeing one ends the run early.
    #[serde(default)]
    pub absent: Vec<String>,
    /// Pattern -> the most lines it may match (e.g. `{ "phv: WARN" = 80 }`:
    /// a domain's flood of log lines stays bounded).
    #[serde(default)]
    pub max_matching: BTreeMap<String, usize>,
}

/// Whether console `line` matches scenario pattern `pattern` (in `lines`,
/// `absent` and `max_matching` alike). A pattern that starts like a line
/// only the hypervisor prints, `phv:` or a VM's `[label] ` prefix, matches
/// only at the start of a line: a domain's output always follows its own
/// prefix, so it cannot print a line that passes for the hypervisor's or
/// another VM's. Any other pattern matches anywhere in a line.
pub fn matches(pattern: &str, line: &str) -> bool {
    if is_anchored(pattern) {
        line.starts_with(pattern)
    } else {
        line.contains(pattern)
    }
}

/// `phv:...` or `[label]...` (a bracketed word without whitespace).
fn is_anchored(pattern: &str) -> bool {
    pattern.starts_with("phv:")
        || pattern.strip_prefix('[').is_some_and(|rest| {
            rest.find(']')
                .is_some_and(|end| end > 0 && !rest[..end].contains(char::is_whitespace))
        })
}

impl Scenario {
    pub fn parse(name: &str, text: &str) -> Result<Scenario> {
        let mut s: Scenario =
            toml::from_str(text).map_err(|e| Error::Usage(format!("scenario {name}: {e}")))?;
        s.name = name.to_string();
        s.validate()
            .map_err(|e| Error::Usage(format!("scenario {name}: {e}")))?;
        Ok(s)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.gic.is_empty() || self.gic.iter().any(|g| *g != 2 && *g != 3) {
            return Err(format!("gic must list 2 and/or 3, got {:?}", self.gic));
        }
        if self.vm.is_empty() {
            return Err("no [[vm]]".into());
        }
        let hwdoms = self.vm.iter().filter(|v| v.hardware_domain).count();
        if self.hypervisor && hwdoms != 1 {
            return Err(format!(
                "exactly one VM must be the hardware domain, found {hwdoms}"
            ));
        }
        if !self.hypervisor && self.vm.len() != 1 {
            return Err("hypervisor = false takes exactly one [[vm]]".into());
        }
        for (i, v) in self.vm.iter().enumerate() {
            if v.label.is_empty() || v.label.contains(char::is_whitespace) {
                return Err(format!("vm {i}: label must be one non-empty word"));
            }
            if self.vm[..i].iter().any(|w| w.label == v.label) {
                return Err(format!("vm label `{}` used twice", v.label));
            }
            if v.cpus == 0 || v.memory_mib == 0 {
                return Err(format!("vm {}: cpus and memory_mib must be > 0", v.label));
            }
            if v.memory_base.is_some_and(|b| b % (2 << 20) != 0) {
                return Err(format!("vm {}: memory_base must be 2 MiB aligned", v.label));
            }
            for (j, d) in v.pci_devices.iter().enumerate() {
                if !is_pci_address(d) {
                    return Err(format!(
                        "vm {}: pci_devices entry `{d}` is not SSSS:BB:DD.F or BB:DD.F (hex)",
                        v.label
                    ));
                }
                if v.pci_devices[..j].contains(d) {
                    return Err(format!("vm {}: pci_devices names `{d}` twice", v.label));
                }
            }
            if v.pci_whole_units && v.pci_devices.is_empty() {
                return Err(format!(
                    "vm {}: pci_whole_units without pci_devices",
                    v.label
                ));
            }
        }
        let cpus: u32 = self.vm.iter().map(|v| v.cpus).sum();
        if self.hypervisor && cpus > self.smp {
            return Err(format!("VMs need {cpus} CPUs but smp = {}", self.smp));
        }
        if self.pending.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err("pending needs a reason".into());
        }
        if self.expect.lines.is_empty() {
            return Err("expect.lines is empty: a scenario must check something".into());
        }
        Ok(())
    }
}

/// `SSSS:BB:DD.F` or `BB:DD.F`, hexadecimal, device < 32, function < 8.
pub fn is_pci_address(s: &str) -> bool {
    let hex = |x: &str, len: usize| x.len() == len && x.chars().all(|c| c.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split(':').collect();
    let (seg, bus, df) = match parts.as_slice() {
        [seg, bus, df] => (Some(*seg), *bus, *df),
        [bus, df] => (None, *bus, *df),
        _ => return false,
    };
    let Some((dev, func)) = df.split_once('.') else {
        return false;
    };
    seg.is_none_or(|s| hex(s, 4))
        && hex(bus, 2)
        && hex(dev, 2)
        && u8::from_str_radix(dev, 16).is_ok_and(|d| d < 32)
        && func.len() == 1
        && func.parse::<u8>().is_ok_and(|f| f < 8)
}

pub fn dir() -> PathBuf {
    util::root().join("tests-qemu/scenarios")
}

/// Load one scenario by name (file stem) from the scenarios directory.
pub fn load(name: &str) -> Result<Scenario> {
    load_file(&dir().join(format!("{name}.toml")))
}

pub fn load_file(path: &Path) -> Result<Scenario> {
    let text = std::fs::read_to_string(path).ctx(|| format!("read {}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Scenario::parse(&name, &text)
}

/// All scenarios, sorted by name.
pub fn load_all() -> Result<Vec<Scenario>> {
    let d = dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&d)
        .ctx(|| format!("read {}", d.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_file(p)).collect()
}

/// What was wrong with a run's console log and exit status (empty: pass).
pub fn check(expect: &Expect, log: &str, exit_code: Option<i32>) -> Vec<String> {
    let mut problems = Vec::new();
    match exit_code {
        Some(c) if c == expect.exit_code => {}
        Some(c) => problems.push(format!("exit status {c}, expected {}", expect.exit_code)),
        None => problems.push(format!(
            "no exit status (killed), expected {}",
            expect.exit_code
        )),
    }
    let lines: Vec<&str> = log.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut from = 0;
    for want in &expect.lines {
        let start = if expect.ordered { from } else { 0 };
        match lines[start..].iter().position(|l| matches(want, l)) {
            Some(i) => from = start + i + 1,
            None if expect.ordered && lines.iter().any(|l| matches(want, l)) => {
                problems.push(format!("line `{want}` out of order"))
            }
            None => problems.push(format!("missing line `{want}`")),
        }
    }
    for bad in &expect.absent {
        if let Some(l) = lines.iter().find(|l| matches(bad, l)) {
            problems.push(format!("unexpected `{bad}` in line `{}`", l.escape_debug()));
        }
    }
    for (pattern, &max) in &expect.max_matching {
        let n = lines.iter().filter(|l| matches(pattern, l)).count();
        if n > max {
            problems.push(format!(
                "{n} lines match `{pattern}`, at most {max} expected"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
description = "two"
gic = [3]
timeout_s = 10
[[vm]]
label = "hwdom"
hardware_domain = true
memory_mib = 64
image = "test-guest"
bootargs = "test=hello"
memory_base = 0x48000000
[[vm]]
label = "guest"
memory_mib = 32
image = "test-guest"
[expect]
lines = ["[hwdom] hello: ok", "phv: system off, status 0"]
absent = ["PANIC"]
"#;

    #[test]
    fn parses_with_defaults() {
        let s = Scenario::parse("two", TWO).unwrap();
        assert_eq!(s.gic, vec![3]);
        assert_eq!((s.smp, s.memory_mib, s.timeout_s), (2, 1024, 10));
        assert!(s.hypervisor && !s.qmp);
        assert_eq!(s.vm[0].memory_base, Some(0x4800_0000));
        assert_eq!(s.vm[1].cpus, 1);
        assert_eq!(s.vm[0].full_bootargs(), "test=hello label=hwdom role=hwdom");
        assert_eq!(s.vm[1].full_bootargs(), "label=guest role=guest");
        assert_eq!(s.expect.exit_code, 0);
        assert!(s.pending.is_none());
        assert!(s.vm[1].pci_devices.is_empty() && !s.vm[1].pci_whole_units);
    }

    #[test]
    fn pci_devices_and_pending() {
        let t = TWO.replace(
            "memory_mib = 32",
            "memory_mib = 32\npci_devices = [\"0000:01:00.0\", \"02:00.1\"]\npci_whole_units = true",
        );
        let t = t.replace(
            "timeout_s = 10",
            "timeout_s = 10\npending = \"vPCI not there yet\"",
        );
        let s = Scenario::parse("p", &t).unwrap();
        assert_eq!(s.vm[1].pci_devices, ["0000:01:00.0", "02:00.1"]);
        assert!(s.vm[1].pci_whole_units);
        assert_eq!(s.pending.as_deref(), Some("vPCI not there yet"));
        for bad in [
            "0000:01:20.0",
            "1:00.0",
            "01:00.8",
            "0000:01:00",
            "x0:00.0",
            "0:0:01:00.0",
        ] {
            let b = TWO.replace(
                "memory_mib = 32",
                &format!("memory_mib = 32\npci_devices = [\"{bad}\"]"),
            );
            assert!(Scenario::parse("p", &b).is_err(), "{bad}");
        }
        let twice = TWO.replace(
            "memory_mib = 32",
            "memory_mib = 32\npci_devices = [\"01:00.0\", \"01:00.0\"]",
        );
        assert!(Scenario::parse("p", &twice).is_err());
        let units_alone = TWO.replace("memory_mib = 32", "memory_mib = 32\npci_whole_units = true");
        assert!(Scenario::parse("p", &units_alone).is_err());
        let empty = TWO.replace("timeout_s = 10", "timeout_s = 10\npending = \" \"");
        assert!(Scenario::parse("p", &empty).is_err());
    }

    #[test]
    fn rejects_bad_scenarios() {
        let no_hwdom = TWO.replace("hardware_domain = true", "");
        assert!(Scenario::parse("x", &no_hwdom).is_err());
        assert!(Scenario::parse("x", &TWO.replace("gic = [3]", "gic = [4]")).is_err());
        assert!(
            Scenario::parse("x", &TWO.replace("label = \"guest\"", "label = \"hwdom\"")).is_err()
        );
        assert!(Scenario::parse("x", &TWO.replace("timeout_s", "timeout")).is_err());
        assert!(Scenario::parse("x", &TWO.replace("timeout_s = 10", "smp = 1")).is_err());
    }

    fn expect(ordered: bool) -> Expect {
        Expect {
            exit_code: 0,
            lines: vec!["a: ok".into(), "b: ok".into()],
            ordered,
            absent: vec!["FAIL".into()],
            max_matching: BTreeMap::new(),
        }
    }

    #[test]
    fn hypervisor_and_label_patterns_match_only_at_the_start_of_a_line() {
        // What a guest can print after its prefix does not pass.
        assert!(matches(
            "phv: system off, status 0",
            "phv: system off, status 0"
        ));
        assert!(!matches(
            "phv: system off, status 0",
            "[evil] phv: system off, status 0"
        ));
        assert!(!matches("phv: PANIC", " phv: PANIC: x"));
        assert!(matches("[hwdom] hello: ok", "[hwdom] hello: ok"));
        assert!(!matches("[hwdom] hello: ok", "[evil] [hwdom] hello: ok"));
        // Anything else anywhere in a line.
        assert!(matches("hello: ok", "[hwdom] hello: ok"));
        assert!(matches("FAIL", "[g] FAIL: x"));
        assert!(matches("[not a label] x", "y [not a label] x"));
        assert!(matches("[] x", "y [] x"));
        let e = Expect {
            lines: vec!["phv: system off, status 0".into(), "[hwdom] done".into()],
            absent: vec!["phv: PANIC".into()],
            ..expect(false)
        };
        let log = "[evil] phv: system off, status 0\n[evil] [hwdom] done\n[evil] phv: PANIC\n";
        assert_eq!(
            check(&e, log, Some(0)),
            vec![
                "missing line `phv: system off, status 0`",
                "missing line `[hwdom] done`"
            ]
        );
        let log = "phv: PANIC: real\n[hwdom] done\nphv: system off, status 0\n";
        assert_eq!(check(&e, log, Some(0)).len(), 1);
    }

    #[test]
    fn max_matching_bounds_lines() {
        let t = TWO.replace(
            "absent = [\"PANIC\"]",
            "absent = [\"PANIC\"]\nmax_matching = { \"phv: WARN\" = 2, \"phv: system off\" = 1 }",
        );
        let s = Scenario::parse("m", &t).unwrap();
        assert_eq!(s.expect.max_matching.len(), 2);
        let e = Expect {
            max_matching: s.expect.max_matching.clone(),
            ..expect(false)
        };
        let ok = "a: ok\nb: ok\nphv: WARN  x\n[g] phv: WARN  y\n[g] phv: WARN  z\n\
                  phv: WARN  w\n[g] phv: system off\nphv: system off, status 0\n";
        assert!(
            check(&e, ok, Some(0)).is_empty(),
            "{:?}",
            check(&e, ok, Some(0))
        );
        let flood = format!("a: ok\nb: ok\n{}", "phv: WARN  x\n".repeat(3));
        assert_eq!(
            check(&e, &flood, Some(0)),
            vec!["3 lines match `phv: WARN`, at most 2 expected"]
        );
    }

    #[test]
    fn checks_lines_exit_and_absent() {
        assert!(check(&expect(false), "x\r\nb: ok\r\na: ok\r\n", Some(0)).is_empty());
        assert_eq!(
            check(&expect(true), "b: ok\na: ok\n", Some(0)),
            vec!["line `b: ok` out of order"]
        );
        assert!(check(&expect(true), "a: ok\nb: ok\n", Some(0)).is_empty());
        let p = check(&expect(false), "a: ok\nFAIL: x\n", Some(1));
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(check(&expect(false), "a: ok\nb: ok", None).len(), 1);
    }
}
