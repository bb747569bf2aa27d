//! Turning a scenario into a QEMU command line, and running it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dtb::{self, VmNode};
use crate::image::Images;
use crate::linux;
use crate::qemu::{self, Machine};
use crate::scenario::{self, DEBIAN_LINUX, Scenario, Vm};
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
        extra: crate::disk::args(s)
            .into_iter()
            .chain(s.qemu_args.iter().cloned())
            .collect(),
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

/// A VM's kernel image and its initramfs, if it has one (built now, into
/// `build/initramfs/`).
fn vm_files(s: &Scenario, vm: &Vm, gic: u8, images: &Images) -> Result<(PathBuf, Option<PathBuf>)> {
    let kernel = if vm.image == DEBIAN_LINUX {
        linux::debian_linux()?.image
    } else {
        images.guest(&vm.image)?.to_path_buf()
    };
    let Some(spec) = &vm.initramfs else {
        return Ok((kernel, None));
    };
    let linux = linux::debian_linux()?;
    let order = linux::module_load_order(&linux.modules, &spec.modules)?;
    let bytes = linux::initramfs(&linux, &order)?;
    let dir = util::build_dir().join("initramfs");
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{}-gic{gic}-{}.cpio", s.name, vm.label));
    std::fs::write(&path, bytes).ctx(|| format!("write {}", path.display()))?;
    Ok((kernel, Some(path)))
}

/// The full QEMU argument list of a scenario on one GIC version (writes the DTB).
pub fn qemu_args(s: &Scenario, gic: u8, images: &Images) -> Result<Vec<String>> {
    let m = machine(s, gic);
    let mut args = m.args(None);
    args.push("-nographic".into());
    if !s.hypervisor {
        let vm = &s.vm[0];
        let (kernel, initrd) = vm_files(s, vm, gic, images)?;
        args.push("-kernel".into());
        args.push(kernel.display().to_string());
        if let Some(initrd) = initrd {
            args.push("-initrd".into());
            args.push(initrd.display().to_string());
        }
        args.push("-append".into());
        args.push(vm.full_bootargs());
        return Ok(args);
    }
    let dir = util::build_dir().join("dtb");
    let qemu_dtb = dir.join(format!("{}-gic{gic}.qemu.dtb", s.name));
    m.dump_dtb(&qemu_dtb)?;
    let src = std::fs::read(&qemu_dtb).ctx(|| format!("read {}", qemu_dtb.display()))?;
    let (ram_base, ram_size) = dtb::ram_base(&src)?;
    // Every module: each VM's kernel, then its ramdisk if it has one.
    let mut files = Vec::new();
    let mut has_ramdisk = Vec::new();
    for vm in &s.vm {
        let (kernel, initrd) = vm_files(s, vm, gic, images)?;
        has_ramdisk.push(initrd.is_some());
        for f in std::iter::once(kernel).chain(initrd) {
            let size = std::fs::metadata(&f)
                .ctx(|| format!("stat {}", f.display()))?
                .len();
            files.push((f, size));
        }
    }
    let addrs = place_modules(
        ram_base,
        ram_size,
        &files.iter().map(|f| f.1).collect::<Vec<_>>(),
    )?;
    let mut placed = files.iter().map(|f| f.1).zip(addrs.iter().copied());
    let mut nodes: Vec<VmNode> = Vec::new();
    for (vm, ramdisk) in s.vm.iter().zip(has_ramdisk) {
        let (size, addr) = placed.next().unwrap_or_default();
        let ramdisk = if ramdisk {
            placed.next().map(|(size, addr)| (addr, size))
        } else {
            None
        };
        nodes.push(VmNode {
            label: vm.label.clone(),
            hardware_domain: vm.hardware_domain,
            memory: vm.memory_mib * MIB,
            memory_base: vm.memory_base,
            cpus: vm.cpus,
            module_addr: addr,
            module_size: size,
            ramdisk,
            bootargs: vm.full_bootargs(),
            pci_devices: vm.pci_devices.clone(),
            pci_whole_units: vm.pci_whole_units,
            pci_reset_methods: vm.pci_reset_methods.clone(),
            aer_deadline_ms: vm.aer_deadline_ms,
        });
    }
    let out = dtb::with_vms(
        &src,
        &nodes,
        dtb::Chosen {
            exit: Some("semihosting"),
            aer_storm: s.aer_storm,
            test_hypervisor_bugs: s.test_hypervisor_bugs,
        },
    )?;
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
    let substitutions = crate::disk::write(s)?;
    let mut args = qemu_args(s, gic, images)?;
    let mut expect = s.expect.clone();
    for line in &mut expect.lines {
        for (from, to) in &substitutions {
            *line = line.replace(from.as_str(), to);
        }
    }
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
    let mut problems = scenario::check(&expect, &o.log, o.exit_code);
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
    crate::disk::write(s)?;
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
