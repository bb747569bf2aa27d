//! Prerequisites: the pinned Rust toolchain with its targets and llvm-tools,
//! and QEMU >= 10. Missing pieces are installed here (QEMU only as root, from
//! Debian bookworm-backports).

use std::path::Path;
use std::process::Command;

use crate::util::{self, Error, IoContext, Result};

/// Oldest QEMU the scenarios are written for.
pub const QEMU_MIN_MAJOR: u32 = 10;
const TARGETS: [&str; 2] = ["aarch64-unknown-none", "aarch64-unknown-none-softfloat"];
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";

/// Make sure everything the builds (and, with `qemu`, the runs) need is there.
pub fn ensure(qemu: bool) -> Result<()> {
    ensure_toolchain()?;
    if qemu {
        ensure_qemu()?;
    }
    Ok(())
}

fn ensure_toolchain() -> Result<()> {
    let root = util::root();
    let file = root.join("rust-toolchain.toml");
    let text = std::fs::read_to_string(&file).ctx(|| format!("read {}", file.display()))?;
    let channel = pinned_channel(&text).ok_or_else(|| {
        Error::Prerequisite(format!("no `channel = \"...\"` in {}", file.display()))
    })?;
    // xtask runs inside `cargo`, which sets RUSTUP_TOOLCHAIN: with it set, a
    // bare `rustup toolchain install` installs that toolchain without the
    // file's targets and components. Every call here names the pinned
    // channel itself, with the variable removed.
    let rustup = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.args(args)
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(&root);
        cmd
    };
    let targets = util::output(&mut rustup(&[
        "target",
        "list",
        "--installed",
        "--toolchain",
        &channel,
    ]))?;
    let components = util::output(&mut rustup(&[
        "component",
        "list",
        "--installed",
        "--toolchain",
        &channel,
    ]))?;
    let missing = missing_toolchain_parts(&targets, &components);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: adding to toolchain {channel} of rust-toolchain.toml: {}",
        missing.join(", ")
    );
    let (components, targets): (Vec<&str>, Vec<&str>) = missing
        .iter()
        .map(String::as_str)
        .partition(|m| *m == "llvm-tools");
    if !targets.is_empty() {
        let mut args = vec!["target", "add", "--toolchain", &channel];
        args.extend(targets);
        util::run(&mut rustup(&args))?;
    }
    if !components.is_empty() {
        let mut args = vec!["component", "add", "--toolchain", &channel];
        args.extend(components);
        util::run(&mut rustup(&args))?;
    }
    Ok(())
}

/// The `channel` of a rust-toolchain.toml's `[toolchain]` table.
pub fn pinned_channel(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "channel").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Which of the targets and the llvm-tools component the rustup listings lack.
pub fn missing_toolchain_parts(targets: &str, components: &str) -> Vec<String> {
    let mut missing: Vec<String> = TARGETS
        .iter()
        .filter(|t| !targets.lines().any(|l| l.trim() == **t))
        .map(|t| t.to_string())
        .collect();
    if !components
        .lines()
        .any(|l| l.trim().starts_with("llvm-tools"))
    {
        missing.push("llvm-tools".into());
    }
    missing
}

/// `(major, minor, micro)` from `qemu-system-aarch64 --version`.
pub fn parse_qemu_version(out: &str) -> Option<(u32, u32, u32)> {
    let rest = out.split("version ").nth(1)?;
    let ver = rest.split_whitespace().next()?;
    let mut it = ver.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = it.next()?.ok()?;
    let minor = it.next().and_then(|r| r.ok()).unwrap_or(0);
    let micro = it.next().and_then(|r| r.ok()).unwrap_or(0);
    Some((major, minor, micro))
}

fn qemu_version() -> Option<(u32, u32, u32)> {
    let out = Command::new("qemu-system-aarch64")
        .arg("--version")
        .output()
        .ok()?;
    parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The Debian codename of this machine (`VERSION_CODENAME` in /etc/os-release).
fn codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VERSION_CODENAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "bookworm".into())
}

fn ensure_qemu() -> Result<()> {
    match qemu_version() {
        Some((major, ..)) if major >= QEMU_MIN_MAJOR => return Ok(()),
        Some((a, b, c)) => {
            eprintln!("xtask: QEMU {a}.{b}.{c} is too old (need >= {QEMU_MIN_MAJOR})")
        }
        None => eprintln!("xtask: qemu-system-aarch64 not found"),
    }
    let base = codename();
    let backports = format!("{base}-backports");
    let file = Path::new(SOURCES_DIR).join(format!("{backports}.sources"));
    let commands = [
        format!(
            "# add a deb822 entry for {backports} to {} (a copy of the {base} entry)",
            file.display()
        ),
        "apt-get update".to_string(),
        format!("apt-get install -y -t {backports} qemu-system-arm"),
    ];
    if !is_root() {
        return Err(Error::Prerequisite(format!(
            "QEMU >= {QEMU_MIN_MAJOR}; run as root:\n  {}",
            commands.join("\n  ")
        )));
    }
    if !backports_configured(&backports) {
        let debian = Path::new(SOURCES_DIR).join("debian.sources");
        let sources =
            std::fs::read_to_string(&debian).ctx(|| format!("read {}", debian.display()))?;
        let entry = backports_entry(&sources, &base).ok_or_else(|| {
            Error::Prerequisite(format!("no entry for suite {base} in {}", debian.display()))
        })?;
        eprintln!("xtask: writing {}", file.display());
        std::fs::write(&file, entry).ctx(|| format!("write {}", file.display()))?;
    }
    eprintln!("xtask: installing qemu-system-arm from {backports}");
    util::run(Command::new("apt-get").arg("update"))?;
    util::run(Command::new("apt-get").args([
        "install",
        "-y",
        "-t",
        &backports,
        "qemu-system-arm",
    ]))?;
    match qemu_version() {
        Some((major, ..)) if major >= QEMU_MIN_MAJOR => Ok(()),
        v => Err(Error::Prerequisite(format!(
            "QEMU >= {QEMU_MIN_MAJOR} still not available after install (found {v:?})"
        ))),
    }
}

/// Whether some apt source already names the suite.
fn backports_configured(suite: &str) -> bool {
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir(SOURCES_DIR) {
        for e in dir.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                texts.push(t);
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    texts.iter().any(|t| names_suite(t, suite))
}

/// Whether a sources text (deb822 or one-line) enables `suite`.
pub fn names_suite(text: &str, suite: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return false;
        }
        if let Some(s) = l.strip_prefix("Suites:") {
            return s.split_whitespace().any(|w| w == suite);
        }
        l.starts_with("deb ") && l.split_whitespace().any(|w| w == suite)
    })
}

/// From a deb822 sources file, a copy of the first entry whose `Suites:` list
/// contains `base`, with only its `Suites:` line changed to `<base>-backports`.
pub fn backports_entry(sources: &str, base: &str) -> Option<String> {
    let mut para: Vec<&str> = Vec::new();
    let mut paras: Vec<Vec<&str>> = Vec::new();
    for line in sources.lines() {
        if line.trim().is_empty() {
            if !para.is_empty() {
                paras.push(std::mem::take(&mut para));
            }
        } else {
            para.push(line);
        }
    }
    if !para.is_empty() {
        paras.push(para);
    }
    let entry = paras.into_iter().find(|p| {
        p.iter().any(|l| {
            l.strip_prefix("Suites:")
                .is_some_and(|s| s.split_whitespace().any(|w| w == base))
        })
    })?;
    let mut out = String::new();
    for l in entry {
        if l.starts_with("Suites:") {
            out.push_str(&format!("Suites: {base}-backports"));
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Types: deb\n# snapshot comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn backports_copies_base_entry_changing_only_suites() {
        let e = backports_entry(SAMPLE, "bookworm").unwrap();
        assert_eq!(
            e,
            "Types: deb\n# snapshot comment\nURIs: http://mirror.example/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        assert!(names_suite(&e, "bookworm-backports"));
        assert!(!names_suite(SAMPLE, "bookworm-backports"));
    }

    #[test]
    fn backports_needs_base_suite() {
        assert_eq!(backports_entry(SAMPLE, "trixie"), None);
        // "bookworm-security" alone does not count as "bookworm".
        let only_security = "Types: deb\nURIs: x\nSuites: bookworm-security\n";
        assert_eq!(backports_entry(only_security, "bookworm"), None);
    }

    #[test]
    fn one_line_sources() {
        assert!(names_suite(
            "deb http://x/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
        assert!(!names_suite(
            "# deb http://x/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
    }

    #[test]
    fn qemu_versions() {
        let v = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright";
        assert_eq!(parse_qemu_version(v), Some((10, 0, 2)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15 (Debian)"),
            Some((7, 2, 15))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.1"),
            Some((9, 1, 0))
        );
        assert_eq!(parse_qemu_version("garbage"), None);
    }

    #[test]
    fn pinned_channel_from_file() {
        let file = std::fs::read_to_string(util::root().join("rust-toolchain.toml")).unwrap();
        let channel = pinned_channel(&file).unwrap();
        assert!(channel.starts_with("1."), "{channel}");
        assert_eq!(
            pinned_channel("[toolchain]\nchannel = \"1.95.0\"\n").as_deref(),
            Some("1.95.0")
        );
        assert_eq!(pinned_channel("[toolchain]\n"), None);
    }

    #[test]
    fn toolchain_listing() {
        let t = "aarch64-unknown-none\naarch64-unknown-none-softfloat\nx86_64-unknown-linux-gnu\n";
        let c = "cargo-x86_64-unknown-linux-gnu\nllvm-tools-x86_64-unknown-linux-gnu\n";
        assert!(missing_toolchain_parts(t, c).is_empty());
        assert_eq!(
            missing_toolchain_parts("aarch64-unknown-none\n", "cargo\n"),
            vec![
                "aarch64-unknown-none-softfloat".to_string(),
                "llvm-tools".to_string()
            ]
        );
    }
}
