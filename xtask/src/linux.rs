//! A real Linux for the scenarios: Debian's arm64 kernel and busybox,
//! fetched with `apt-get download` into a cache outside the repository,
//! and an initramfs built here (our own cpio writer: the host may have no
//! `cpio`) whose `/init` the kernel command line drives.
//!
//! The cache is `$PHV_CACHE_DIR`, else `$XDG_CACHE_HOME/phv`, else
//! `~/.cache/phv`: `debian/` holds the downloaded packages and their
//! unpacked trees. Once unpacked, a package is reused and never fetched
//! again (delete the folder to refresh it).

use crate::cpio;
use crate::util::{self, Error, IoContext, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The metapackage that names Debian's current arm64 kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-arm64";
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// Debian's kernel and busybox, unpacked in the cache.
#[derive(Debug, Clone)]
pub struct DebianLinux {
    /// The kernel's uncompressed arm64 Image (`boot/vmlinuz-<release>`).
    pub image: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
    /// The static busybox binary.
    pub busybox: PathBuf,
}

/// The cache folder (created if missing).
pub fn cache_dir() -> Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    let dir = match (var("PHV_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME")) {
        (Some(d), _, _) => PathBuf::from(d),
        (None, Some(x), _) => PathBuf::from(x).join("phv"),
        (None, None, Some(h)) => PathBuf::from(h).join(".cache").join("phv"),
        (None, None, None) => {
            return Err(Error::Prerequisite(
                "no cache folder for Debian's packages: set PHV_CACHE_DIR or HOME".into(),
            ));
        }
    };
    let dir = dir.join("debian");
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// Debian's Linux, from the cache or fetched into it.
pub fn debian_linux() -> Result<DebianLinux> {
    let cache = cache_dir()?;
    let kernel_tree = unpacked(&cache, KERNEL_METAPACKAGE, true)?;
    let busybox_tree = unpacked(&cache, BUSYBOX_PACKAGE, false)?;
    let boot = kernel_tree.join("boot");
    let image = std::fs::read_dir(&boot)
        .ctx(|| format!("read {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| Error::Other(format!("no boot/vmlinuz-* in {}", boot.display())))?;
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let modules = kernel_tree.join("lib/modules").join(&release);
    let busybox = busybox_tree.join("bin/busybox");
    for p in [&image, &modules, &busybox] {
        if !p.exists() {
            return Err(Error::Other(format!(
                "{} missing from the unpacked packages",
                p.display()
            )));
        }
    }
    Ok(DebianLinux {
        image,
        modules,
        busybox,
    })
}

/// The unpacked tree of `package` (arm64) in `cache`, downloading and
/// unpacking it first if needed. `follow_depends`: the package is a
/// metapackage; unpack the one package it depends on instead (the
/// versioned kernel).
fn unpacked(cache: &Path, package: &str, follow_depends: bool) -> Result<PathBuf> {
    let tree = cache.join(package);
    let done = tree.join(".unpacked");
    if done.exists() {
        return Ok(tree);
    }
    let mut deb = download(cache, package)?;
    if follow_depends {
        let depends = util::output(Command::new("dpkg-deb").args([
            "-f",
            &deb.display().to_string(),
            "Depends",
        ]))?;
        let real = depends
            .split(',')
            .next()
            .and_then(|d| d.split_whitespace().next())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                Error::Other(format!("{package}: no dependency names the kernel package"))
            })?;
        deb = download(cache, real)?;
    }
    if tree.exists() {
        std::fs::remove_dir_all(&tree).ctx(|| format!("remove {}", tree.display()))?;
    }
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    std::fs::write(&done, deb.display().to_string()).ctx(|| format!("write {}", done.display()))?;
    Ok(tree)
}

/// `apt-get download <package>:arm64` into `cache`; the .deb's path.
fn download(cache: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    let find = || -> Result<Option<PathBuf>> {
        Ok(std::fs::read_dir(cache)
            .ctx(|| format!("read {}", cache.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with("_arm64.deb"))
            }))
    };
    if let Some(deb) = find()? {
        return Ok(deb);
    }
    ensure_arm64_packages()?;
    eprintln!(
        "xtask: downloading Debian's {package}:arm64 into {}",
        cache.display()
    );
    let fetched = util::run(
        Command::new("apt-get")
            .current_dir(cache)
            .args(["download", &format!("{package}:arm64")]),
    );
    if let Err(e) = fetched {
        return Err(Error::Prerequisite(format!(
            "the Linux scenarios need Debian's {package}:arm64 and `apt-get download` could \
             not fetch it ({e}); on Debian, as root: dpkg --add-architecture arm64 && \
             apt-get update"
        )));
    }
    find()?.ok_or_else(|| {
        Error::Other(format!(
            "apt-get download {package}:arm64 left no .deb in {}",
            cache.display()
        ))
    })
}

/// Make apt know arm64 packages (`dpkg --add-architecture arm64`, then
/// `apt-get update`), as root; otherwise say what to run.
fn ensure_arm64_packages() -> Result<()> {
    let foreign =
        util::output(Command::new("dpkg").arg("--print-foreign-architectures")).map_err(|_| {
            Error::Prerequisite(
                "the Linux scenarios fetch Debian packages: dpkg and apt-get are needed".into(),
            )
        })?;
    if foreign.split_whitespace().any(|a| a == "arm64") {
        return Ok(());
    }
    if !crate::prereq::is_root() {
        return Err(Error::Prerequisite(
            "the Linux scenarios download Debian's arm64 kernel and busybox; run as root:\n  \
             dpkg --add-architecture arm64\n  apt-get update"
                .into(),
        ));
    }
    eprintln!("xtask: adding the arm64 architecture to dpkg for Debian's kernel and busybox");
    util::run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    util::run(Command::new("apt-get").arg("update"))
}

/// The kernel modules whose names (`nvme`, `e1000e`, `virtio_blk`...) a
/// scenario asks for, with what they depend on, in an order `insmod` can
/// load them: paths relative to `modules`.
pub fn module_load_order(modules: &Path, wanted: &[String]) -> Result<Vec<PathBuf>> {
    let mut by_name = BTreeMap::new();
    index_modules(modules, modules, &mut by_name)?;
    let mut order = Vec::new();
    for name in wanted {
        visit(
            modules,
            &by_name,
            &normal(name),
            &mut order,
            &mut Vec::new(),
        )?;
    }
    Ok(order)
}

/// Module names treat `-` and `_` alike.
fn normal(name: &str) -> String {
    name.replace('-', "_")
}

fn index_modules(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).ctx(|| format!("read {}", dir.display()))? {
        let path = e.ctx(|| format!("read {}", dir.display()))?.path();
        if path.is_dir() {
            index_modules(root, &path, out)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            out.insert(normal(stem), rel);
        }
    }
    Ok(())
}

fn visit(
    root: &Path,
    by_name: &BTreeMap<String, PathBuf>,
    name: &str,
    order: &mut Vec<PathBuf>,
    path: &mut Vec<String>,
) -> Result<()> {
    let rel = by_name
        .get(name)
        .ok_or_else(|| Error::Usage(format!("no kernel module `{name}` in {}", root.display())))?;
    if order.contains(rel) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        return Err(Error::Other(format!(
            "module dependency cycle through {name}"
        )));
    }
    path.push(name.to_string());
    let file = root.join(rel);
    let bytes = std::fs::read(&file).ctx(|| format!("read {}", file.display()))?;
    for dep in modinfo(&bytes, "depends")
        .ok_or_else(|| Error::Other(format!("{}: no .modinfo section", file.display())))?
        .split(',')
        .filter(|d| !d.is_empty())
    {
        visit(root, by_name, &normal(dep), order, path)?;
    }
    path.pop();
    order.push(rel.clone());
    Ok(())
}

/// The value of `key` in a kernel module's `.modinfo` section (NUL
/// separated `key=value` strings); `Some("")` if the section lacks it,
/// `None` if the file is not an ELF64 little-endian object with one.
pub fn modinfo<'a>(elf: &'a [u8], key: &str) -> Option<&'a str> {
    let section = elf_section(elf, ".modinfo")?;
    let prefix = format!("{key}=");
    Some(
        section
            .split(|&b| b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .find_map(|s| s.strip_prefix(prefix.as_str()))
            .unwrap_or(""),
    )
}

/// The bytes of the ELF64 (little-endian) section called `name`.
fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let (shentsize, shnum, shstrndx) = (
        usize::from(u16_at(0x3a)?),
        usize::from(u16_at(0x3c)?),
        usize::from(u16_at(0x3e)?),
    );
    let section = |i: usize| -> Option<(u32, &'a [u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let offset = usize::try_from(u64_at(h + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(h + 0x20)?).ok()?;
        Some((u32_at(h)?, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name_at, bytes) = section(i)?;
        let rest = names.get(usize::try_from(name_at).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        (&rest[..end] == name.as_bytes()).then_some(bytes)
    })
}

/// The `/init` of the initramfs: mounts the pseudo file systems, loads
/// the modules listed in `/etc/modules`, then runs the steps that
/// `phv.run=a,b,...` on the kernel command line names, and powers off.
/// Every line it prints starts with `phv-init: ` so the scenarios can tell
/// it from the kernel's.
pub const INIT: &str = r#"#!/bin/sh
# phv's test initramfs (built by xtask, see xtask/src/linux.rs).
# The counter first: under -icount it says how long the boot took.
at_init=$(/bin/phv-cntvct)
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
say() { echo "phv-init: $*"; }
say "/init reached after $(cut -d' ' -f1 /proc/uptime) s"
say "counter at /init $at_init"
for m in $(cat /etc/modules); do
    insmod "/lib/modules/$m" || say "FAIL: insmod $m"
done
steps=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^phv\.run=//p' | tr ',' ' ')
for step in $steps; do
    case "$step" in
    cpu)
        say "cpus online $(cat /sys/devices/system/cpu/online)"
        say "features $(grep -m1 Features /proc/cpuinfo | sed 's/^[^:]*: *//')"
        for f in sve sme mte; do
            if grep -m1 Features /proc/cpuinfo | grep -qw $f; then
                say "cpu has $f"
            else
                say "cpu without $f"
            fi
        done
        ;;
    interrupts)
        while read -r line; do say "irq $line"; done < /proc/interrupts
        ;;
    pci)
        for d in /sys/bus/pci/devices/*; do
            [ -e "$d" ] || continue
            drv=none
            [ -e "$d/driver" ] && drv=$(basename "$(readlink "$d/driver")")
            say "pci $(basename "$d") $(cat "$d/vendor"):$(cat "$d/device") class $(cat "$d/class") driver $drv"
        done
        ;;
    disk-sum)
        for b in /sys/block/nvme* /sys/block/vd*; do
            [ -e "$b" ] || continue
            dev=/dev/$(basename "$b")
            # A multipath path (nvme0c0n1) has no device node of its own.
            [ -b "$dev" ] || continue
            sum=$(md5sum "$dev" | cut -d' ' -f1)
            say "disk $dev $(cat "$b/size") sectors md5 $sum"
        done
        ;;
    dd)
        # A buffered read of each nvme disk, whole, timed by the counter.
        for b in /sys/block/nvme*; do
            [ -e "$b" ] || continue
            dev=/dev/$(basename "$b")
            [ -b "$dev" ] || continue
            c0=$(phv-cntvct)
            dd if="$dev" of=/dev/null bs=1M 2>/dev/null
            c1=$(phv-cntvct)
            say "dd $dev $(cat "$b/size") sectors in $((c1 - c0)) ticks"
        done
        ;;
    net)
        for n in /sys/class/net/*; do
            i=$(basename "$n")
            [ "$i" = lo ] && continue
            ip link set "$i" up
            tries=0
            while [ "$(cat "$n/operstate")" != up ] && [ $tries -lt 50 ]; do
                sleep 0.1; tries=$((tries + 1))
            done
            say "net $i $(cat "$n/operstate") driver $(basename "$(readlink "$n/device/driver")")"
        done
        ;;
    aer)
        # Errors through QEMU's monitor (the scenario has qmp = true), as
        # phv.aer=<device id>:<kind>+... names them: cor (Receiver Error),
        # nonfatal (Completion Timeout), fatal (Malformed TLP); each given
        # time for Linux's AER driver and its recovery.
        list=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^phv\.aer=//p' | tr '+' ' ')
        for e in $list; do
            id=${e%%:*}
            case "${e#*:}" in
            cor) args="-c $id 0x1" ;;
            nonfatal) args="$id 0x4000" ;;
            fatal) args="$id 0x40000" ;;
            *) say "FAIL: unknown error kind in $e"; continue ;;
            esac
            say "inject $args"
            echo "phv-hmp: pcie_aer_inject_error $args"
            sleep 4
        done
        ;;
    *)
        say "FAIL: unknown step $step"
        ;;
    esac
done
say "done, powering off"
poweroff -f
"#;

/// `phv-cntvct` (tests-qemu/linux/cntvct.rs), the initramfs's reader of
/// the virtual counter: a static arm64 Linux executable rustc builds for
/// `aarch64-unknown-none` (no libc), into `build/linux/`, rebuilt when its
/// source is newer.
pub fn cntvct_tool() -> Result<Vec<u8>> {
    let src = util::root().join("tests-qemu/linux/cntvct.rs");
    let dir = util::build_dir().join("linux");
    std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
    let out = dir.join("phv-cntvct");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&out).is_none() || modified(&out) < modified(&src) {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        util::run(
            Command::new(rustc)
                .current_dir(util::root())
                .args([
                    "--edition",
                    "2024",
                    "--target",
                    "aarch64-unknown-none",
                    "-C",
                    "opt-level=s",
                    "-C",
                    "panic=abort",
                    "-C",
                    "relocation-model=static",
                    "-C",
                    "strip=symbols",
                    "-C",
                    "link-arg=--image-base=0x400000",
                    "-o",
                ])
                .arg(&out)
                .arg(&src),
        )?;
    }
    std::fs::read(&out).ctx(|| format!("read {}", out.display()))
}

/// An initramfs: busybox (its applets installed by `/init`), [`INIT`],
/// `phv-cntvct` ([`cntvct_tool`]) and `modules` (paths under
/// `linux.modules`, in load order).
pub fn initramfs(linux: &DebianLinux, modules: &[PathBuf]) -> Result<Vec<u8>> {
    let mut a = cpio::Archive::new();
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
    ] {
        a.dir(d);
    }
    let busybox =
        std::fs::read(&linux.busybox).ctx(|| format!("read {}", linux.busybox.display()))?;
    a.file("bin/busybox", 0o755, &busybox);
    a.symlink("bin/sh", "busybox");
    a.file("init", 0o755, INIT.as_bytes());
    a.file("bin/phv-cntvct", 0o755, &cntvct_tool()?);
    let mut list = String::new();
    for rel in modules {
        let file = linux.modules.join(rel);
        let bytes = std::fs::read(&file).ctx(|| format!("read {}", file.display()))?;
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Other(format!("bad module path {}", rel.display())))?;
        a.file(&format!("lib/modules/{name}"), 0o644, &bytes);
        list.push_str(name);
        list.push('\n');
    }
    a.file("etc/modules", 0o644, list.as_bytes());
    Ok(a.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE object with sections: null, `.modinfo`,
    /// `.shstrtab`.
    fn elf(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut f = vec![0u8; 0x40];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let modinfo_at = f.len();
        f.extend_from_slice(modinfo);
        let shstrtab_at = f.len();
        f.extend_from_slice(shstrtab);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        let mut sh = |name: u32, offset: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, modinfo_at, modinfo.len());
        sh(10, shstrtab_at, shstrtab.len());
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn modinfo_reads_a_key_of_the_section() {
        let f = elf(b"license=GPL\0depends=nvme-core,crc32\0vermagic=6.1\0");
        assert_eq!(modinfo(&f, "depends"), Some("nvme-core,crc32"));
        assert_eq!(modinfo(&f, "license"), Some("GPL"));
        assert_eq!(modinfo(&f, "alias"), Some(""));
        assert_eq!(modinfo(b"not an elf", "depends"), None);
        let mut truncated = f.clone();
        truncated.truncate(0x50);
        assert_eq!(modinfo(&truncated, "depends"), None);
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("phv-modules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("kernel/nvme")).unwrap();
        let write = |rel: &str, depends: &str| {
            let info = format!("license=GPL\0depends={depends}\0");
            std::fs::write(dir.join(rel), elf(info.as_bytes())).unwrap();
        };
        write("kernel/nvme/nvme.ko", "nvme-core");
        write("kernel/nvme/nvme-core.ko", "crc64");
        write("kernel/crc64.ko", "");
        write("kernel/e1000e.ko", "");
        let order =
            module_load_order(&dir, &["nvme".into(), "e1000e".into(), "nvme_core".into()]).unwrap();
        let names: Vec<_> = order.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            [
                "kernel/crc64.ko",
                "kernel/nvme/nvme-core.ko",
                "kernel/nvme/nvme.ko",
                "kernel/e1000e.ko"
            ]
        );
        assert!(module_load_order(&dir, &["missing".into()]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
