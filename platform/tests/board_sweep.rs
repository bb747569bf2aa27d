//! Parse every `*.dtb` under `$PHV_BOARD_DTBS` (e.g. the ~577 DTBs of Debian's
//! arm64 kernel package) and print what parsed and which errors the rest hit.
//! Only a panic fails: boards we cannot drive yet are expected to error.
//! `PHV_BOARD_DTBS_VERBOSE=1` also prints each description.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use platform::{Platform, PlatformError};

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
    let mut ok = 0usize;
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
                if verbose {
                    println!("{name}: {platform:#?}");
                }
            }
            Err(error) => {
                if verbose {
                    println!("{name}: ERROR {error}");
                }
                classes.entry(error_class(&error)).or_default().push(name);
            }
        }
    }
    println!("board sweep: {ok} of {} DTBs parsed", files.len());
    let mut by_count: Vec<_> = classes.into_iter().collect();
    by_count.sort_by_key(|(_, boards)| std::cmp::Reverse(boards.len()));
    for (class, boards) in by_count {
        println!("{:4}  {class}  e.g. {}", boards.len(), boards[0]);
    }
}
