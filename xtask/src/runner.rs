//! Turning a scenario into a QEMU command line, and running it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dtb::{self, VmNode};
use crate::image::Images;
use crate::qemu::{self, Machine};
use crate::scenario::{self, Scenario};
use crate::util::{self, Error, IoContext, Result};

const MIB: u64 = 1 << 20;
const MODULE_ALIGN: u64 = 2 * MIB;

/// Result of one (scenario, gic) run.
#[derive(Debug)]
pub struct RunResult {
    pub name: String,
    pub problems: Vec<String>,
    pub log: String,
    pub log_path: PathBuf,
    pub duration: Duration,
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

fn machine(s: &Scenario, gic: u8) -> Machine {
    Machine {
        gic,
        smp: s.smp,
        memory_mib: s.memory_mib,
        virtualization: s.hypervisor,
        extra: s.qemu_args.clone(),
    }
}

/// Where the VM images go: from the middle of RAM upward, 2 MiB aligned.
pub fn place_modules(ram_base: u64, ram_size: u64, sizes: &[u64]) -> Result<Vec<u64>> {
    let mut addr = ram_base + (ram_size / 2).next_multiple_of(MODULE_ALIGN);
    let mut out = Vec::new();
    for &size in sizes {
        out.push(addr);
        addr = (addr + size).next_multiple_of(MODULE_ALIGN);
    }
    if addr > ram_base + ram_size {
        return Err(Error::Usage(format!(
            "VM images do not fit in the upper half of RAM ({ram_size:#x} bytes)"
        )));
    }
    Ok(out)
}

/// The full QEMU argument list of a scenario on one GIC version (writes the DTB).
pub fn qemu_args(s: &Scenario, gic: u8, images: &Images) -> Result<Vec<String>> {
    let m = machine(s, gic);
    let mut args = m.args(None);
    args.push("-nographic".into());
    if !s.hypervisor {
        let vm = &s.vm[0];
        args.push("-kernel".into());
        args.push(images.guest(&vm.image)?.display().to_string());
        args.push("-append".into());
        args.push(vm.full_bootargs());
        return Ok(args);
    }
    let dir = util::build_dir().join("dtb");
    let qemu_dtb = dir.join(format!("{}-gic{gic}.qemu.dtb", s.name));
    m.dump_dtb(&qemu_dtb)?;
    let src = std::fs::read(&qemu_dtb).ctx(|| format!("read {}", qemu_dtb.display()))?;
    let (ram_base, ram_size) = dtb::ram_base(&src)?;
    let mut files = Vec::new();
    for vm in &s.vm {
        let f = images.guest(&vm.image)?.to_path_buf();
        let size = std::fs::metadata(&f)
            .ctx(|| format!("stat {}", f.display()))?
            .len();
        files.push((f, size));
    }
    let addrs = place_modules(
        ram_base,
        ram_size,
        &files.iter().map(|f| f.1).collect::<Vec<_>>(),
    )?;
    let nodes: Vec<VmNode> =
        s.vm.iter()
            .zip(files.iter().zip(&addrs))
            .map(|(vm, ((_, size), addr))| VmNode {
                label: vm.label.clone(),
                hardware_domain: vm.hardware_domain,
                memory: vm.memory_mib * MIB,
                memory_base: vm.memory_base,
                cpus: vm.cpus,
                module_addr: *addr,
                module_size: *size,
                bootargs: vm.full_bootargs(),
                pci_devices: vm.pci_devices.clone(),
                pci_whole_units: vm.pci_whole_units,
                pci_reset_methods: vm.pci_reset_methods.clone(),
                aer_deadline_ms: vm.aer_deadline_ms,
            })
            .collect();
    let out = dtb::with_vms(&src, &nodes, Some("semihosting"), s.aer_storm)?;
    let dtb_path = dir.join(format!("{}-gic{gic}.dtb", s.name));
    std::fs::write(&dtb_path, out).ctx(|| format!("write {}", dtb_path.display()))?;
    args.extend([
        "-semihosting-config".into(),
        "enable=on,target=native".into(),
        "-dtb".into(),
        dtb_path.display().to_string(),
        "-kernel".into(),
        images.hypervisor.display().to_string(),
    ]);
    for ((f, _), addr) in files.iter().zip(&addrs) {
        args.push("-device".into());
        args.push(format!(
            "loader,file={},addr={addr:#x},force-raw=on",
            f.display()
        ));
    }
    Ok(args)
}

/// The QMP socket of a run (`qmp = true`): `build/qmp/<scenario>-gic<N>.sock`.
fn qmp_socket(run: &str) -> Result<PathBuf> {
    let p = util::build_dir().join("qmp").join(format!("{run}.sock"));
    // sun_path holds 108 bytes with the terminating NUL.
    if p.as_os_str().len() >= 108 {
        return Err(Error::Usage(format!(
            "QMP socket path {} is too long for a Unix socket (move the checkout)",
            p.display()
        )));
    }
    Ok(p)
}

/// QEMU's arguments for a QMP server on `sock` that does not wait for us.
pub fn qmp_args(sock: &Path) -> [String; 2] {
    [
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]
}

/// Run a scenario on one GIC version and check its expectations.
pub fn run(s: &Scenario, gic: u8, images: &Images) -> Result<RunResult> {
    let name = format!("{}-gic{gic}", s.name);
    let log_path = util::build_dir().join("logs").join(format!("{name}.log"));
    let mut args = qemu_args(s, gic, images)?;
    let qmp = if s.qmp {
        let sock = qmp_socket(&name)?;
        args.extend(qmp_args(&sock));
        Some(sock)
    } else {
        None
    };
    let o = qemu::run_captured(
        &args,
        Duration::from_secs(s.timeout_s),
        &log_path,
        &s.expect.absent,
        qmp.as_deref(),
    )?;
    let mut problems = scenario::check(&s.expect, &o.log, o.exit_code);
    problems.extend(o.problems);
    if o.timed_out {
        problems.insert(0, format!("timed out after {} s", s.timeout_s));
    }
    if let Some(p) = &o.stopped_on {
        problems.insert(0, format!("stopped early on `{p}`"));
    }
    Ok(RunResult {
        name,
        problems,
        log: o.log,
        log_path,
        duration: o.duration,
    })
}

/// The last `max` lines of a log (all of it if shorter).
pub fn tail(log: &str, max: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() <= max {
        return log.to_string();
    }
    format!(
        "[... {} lines cut ...]\n{}",
        lines.len() - max,
        lines[lines.len() - max..].join("\n")
    )
}

/// `cargo xtask run`: the demo scenario on the terminal.
pub fn run_interactive(s: &Scenario, gic: u8, images: &Images) -> Result<i32> {
    let args = qemu_args(s, gic, images)?;
    qemu::run_interactive(&args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_go_to_upper_half_aligned() {
        let a = place_modules(0x4000_0000, 0x4000_0000, &[0x1000, 0x30_0001, 1]).unwrap();
        assert_eq!(a, vec![0x6000_0000, 0x6020_0000, 0x6060_0000]);
        assert!(place_modules(0x4000_0000, 0x40_0000, &[0x30_0000]).is_err());
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("a\nb\nc", 2), "[... 1 lines cut ...]\nb\nc");
    }
}
