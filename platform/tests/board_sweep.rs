//! Parse every `*.dtb` under `$PHV_BOARD_DTBS` (e.g. the ~577 DTBs of Debian's
//! arm64 kernel package) and print what parsed and which errors the rest hit.
//! Only a panic fails: boards we cannot drive yet are expected to error.
//! `PHV_BOARD_DTBS_VERBOSE=1` also prints each description.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use platform::{ConfigAccess, Gic, Platform, PlatformError};

mod common;

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "dtb") {
            out.push(path);
        }
    }
}

/// The error with node-specific details removed, to group boards by cause.
fn error_class(error: &PlatformError) -> String {
    match error {
        PlatformError::InvalidBlob(e) => format!("InvalidBlob({e:?})"),
        PlatformError::MissingNode(n) => format!("MissingNode({n})"),
        PlatformError::MissingProperty(_, p) => format!("MissingProperty({p})"),
        PlatformError::BadProperty(_, p, why) => format!("BadProperty({p}: {why})"),
        PlatformError::Unsupported(what) => format!("Unsupported({what})"),
        PlatformError::BadVmConfig(_, why) => format!("BadVmConfig({why})"),
    }
}

/// Count what a parsed board has, so the summary shows what was found.
fn tally(stats: &mut BTreeMap<String, usize>, platform: &Platform) {
    let mut count = |what: String| *stats.entry(what).or_default() += 1;
    match &platform.gic {
        Gic::V2 { gich, gicv, .. } => count(format!(
            "GICv2 (GICH+GICV described: {})",
            gich.is_some() && gicv.is_some()
        )),
        Gic::V3 { its, gicv, .. } => count(format!(
            "GICv3 (ITS: {}, GICV: {})",
            !its.is_empty(),
            gicv.is_some()
        )),
    }
    count(match &platform.uart {
        Some(uart) if uart.compatible == "arm,pl011" => "console PL011".to_string(),
        Some(uart) => format!("console {}", uart.compatible),
        None => "no console".to_string(),
    });
    count(match &platform.psci {
        Some(psci) => format!("PSCI {:?}", psci.conduit),
        None => "no PSCI".to_string(),
    });
    count(format!(
        "timer hyp_phys described: {}",
        platform.timer.hyp_phys.is_some()
    ));
    for bridge in &platform.pci_host_bridges {
        count(match &bridge.access {
            ConfigAccess::Ecam => "PCIe host bridge, ECAM".to_string(),
            ConfigAccess::Controller(c) => format!("PCIe host bridge, controller {c}"),
        });
    }
    for refused in &platform.refused_host_bridges {
        count(format!(
            "PCIe host bridge refused: {}",
            error_class(&refused.reason)
        ));
    }
}

#[test]
fn sweep_board_dtbs() {
    let Some(dir) = std::env::var_os("PHV_BOARD_DTBS") else {
        eprintln!("PHV_BOARD_DTBS not set: skipping the board sweep");
        return;
    };
    let verbose = std::env::var_os("PHV_BOARD_DTBS_VERBOSE").is_some();
    let mut files = Vec::new();
    collect(Path::new(&dir), &mut files);
    files.sort();
    let mut stats: BTreeMap<String, usize> = BTreeMap::new();
    let mut ok = 0usize;
    let mut ok_with_memory = 0usize;
    let mut classes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let blob = std::fs::read(file).expect("read dtb");
        let name = file
            .strip_prefix(&dir)
            .unwrap_or(file)
            .display()
            .to_string();
        // A panic here fails the test with the file name in the message.
        match Platform::from_fdt(&blob) {
            Ok(platform) => {
                ok += 1;
                tally(&mut stats, &platform);
                if verbose {
                    println!("{name}: {platform:#?}");
                }
            }
            // Kernel-package DTBs leave /memory to the bootloader: try again
            // with one added as U-Boot would, to see what else the board needs.
            Err(PlatformError::MissingNode(node)) if node.starts_with("memory") => {
                let patched = common::with_memory(&blob, 0x8000_0000, 0x4000_0000);
                let class = match Platform::from_fdt(&patched) {
                    Ok(platform) => {
                        ok_with_memory += 1;
                        tally(&mut stats, &platform);
                        if verbose {
                            println!("{name} (with /memory added): {platform:#?}");
                        }
                        "MissingNode(memory) only: parses once a bootloader adds /memory"
                            .to_string()
                    }
                    Err(error) => format!("MissingNode(memory), then {}", error_class(&error)),
                };
                if verbose {
                    println!("{name}: {class}");
                }
                classes.entry(class).or_default().push(name);
            }
            Err(error) => {
                if verbose {
                    println!("{name}: ERROR {error}");
                }
                classes.entry(error_class(&error)).or_default().push(name);
            }
        }
    }
    println!(
        "board sweep: {ok} of {} DTBs parsed as they are, {} more once /memory is added",
        files.len(),
        ok_with_memory
    );
    println!("what the parsed boards have:");
    for (what, count) in &stats {
        println!("{count:4}  {what}");
    }
    println!("errors:");
    let mut by_count: Vec<_> = classes.into_iter().collect();
    by_count.sort_by_key(|(_, boards)| std::cmp::Reverse(boards.len()));
    for (class, boards) in by_count {
        println!("{:4}  {class}  e.g. {}", boards.len(), boards[0]);
    }
}
