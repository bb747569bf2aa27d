//! Building the hypervisor and the test guests into flat images in `build/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, Error, IoContext, Result};

pub const HYP_TARGET: &str = "aarch64-unknown-none-softfloat";
pub const GUEST_TARGET: &str = "aarch64-unknown-none";

/// Flat binaries ready for QEMU.
#[derive(Debug)]
pub struct Images {
    pub hypervisor: PathBuf,
    /// Guest bin name -> flat image.
    pub guests: BTreeMap<String, PathBuf>,
}

impl Images {
    pub fn guest(&self, name: &str) -> Result<&Path> {
        self.guests.get(name).map(PathBuf::as_path).ok_or_else(|| {
            Error::Usage(format!(
                "no test guest image named `{name}` (have: {})",
                self.guests.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Build everything a QEMU run needs.
pub fn build_all() -> Result<Images> {
    let hypervisor = build_hypervisor()?;
    let guests = build_guests()?;
    Ok(Images { hypervisor, guests })
}

pub fn build_hypervisor() -> Result<PathBuf> {
    util::run(util::cargo().args([
        "build",
        "-p",
        "hypervisor",
        "--target",
        HYP_TARGET,
        "--release",
    ]))?;
    let elf = util::target_dir()
        .join(HYP_TARGET)
        .join("release")
        .join("hypervisor");
    let bin = util::build_dir().join("phv.bin");
    objcopy(&elf, &bin)?;
    Ok(bin)
}

pub fn build_guests() -> Result<BTreeMap<String, PathBuf>> {
    util::run(util::cargo().args([
        "build",
        "-p",
        "test-guests",
        "--target",
        GUEST_TARGET,
        "--release",
    ]))?;
    let mut out = BTreeMap::new();
    for name in guest_bins()? {
        let elf = util::target_dir()
            .join(GUEST_TARGET)
            .join("release")
            .join(&name);
        let bin = util::build_dir().join(format!("{name}.bin"));
        objcopy(&elf, &bin)?;
        out.insert(name, bin);
    }
    Ok(out)
}

/// The `[[bin]]` names of the test-guests crate.
fn guest_bins() -> Result<Vec<String>> {
    let path = util::root().join("tests-qemu/guests/Cargo.toml");
    let text = std::fs::read_to_string(&path).ctx(|| format!("read {}", path.display()))?;
    bins_of_manifest(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

pub fn bins_of_manifest(text: &str) -> std::result::Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        bin: Vec<Bin>,
    }
    #[derive(serde::Deserialize)]
    struct Bin {
        name: String,
    }
    let m: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
    if m.bin.is_empty() {
        return Err("no [[bin]] sections".into());
    }
    Ok(m.bin.into_iter().map(|b| b.name).collect())
}

/// `llvm-objcopy` of the rustup llvm-tools component.
fn llvm_objcopy() -> Result<PathBuf> {
    let sysroot = util::output(
        Command::new("rustc")
            .args(["--print", "sysroot"])
            .current_dir(util::root()),
    )?;
    let vv = util::output(Command::new("rustc").arg("-vV").current_dir(util::root()))?;
    let host = vv
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .ok_or_else(|| Error::Other("rustc -vV printed no host".into()))?;
    let p = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host.trim())
        .join("bin/llvm-objcopy");
    if p.exists() {
        Ok(p)
    } else {
        Err(Error::Prerequisite(format!(
            "{} (rustup component llvm-tools)",
            p.display()
        )))
    }
}

fn objcopy(elf: &Path, bin: &Path) -> Result<()> {
    if let Some(dir) = bin.parent() {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    }
    let tool = llvm_objcopy()?;
    util::run(Command::new(tool).args(["-O", "binary"]).arg(elf).arg(bin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_bins() {
        let m = "[package]\nname = \"x\"\n[[bin]]\nname = \"a\"\npath = \"src/a.rs\"\n[[bin]]\nname = \"b\"\n";
        assert_eq!(bins_of_manifest(m).unwrap(), vec!["a", "b"]);
        assert!(bins_of_manifest("[package]\nname = \"x\"\n").is_err());
    }
}
