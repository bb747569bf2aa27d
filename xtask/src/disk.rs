//! Disk images for the scenarios: a known pattern, written once per
//! scenario run into `build/disks/`, so that a guest reading the whole disk
//! can be checked against its MD5.

use crate::scenario::{Disk, Scenario};
use crate::util::{self, IoContext, Result};
use md5::{Digest, Md5};
use std::path::PathBuf;

/// The pattern of disk `id`: a xorshift stream seeded by the id's bytes
/// (every sector differs, so a misplaced or repeated block changes the sum).
pub fn pattern(id: &str, size: usize) -> Vec<u8> {
    let mut s = id.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Lowercase hexadecimal MD5, as `md5sum` prints it.
pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn path(s: &Scenario, id: &str) -> PathBuf {
    util::build_dir()
        .join("disks")
        .join(format!("{}-{id}.img", s.name))
}

/// The QEMU arguments that define a scenario's disks (`-drive if=none`).
pub fn args(s: &Scenario) -> Vec<String> {
    s.disk
        .iter()
        .flat_map(|d| {
            [
                "-drive".to_string(),
                format!(
                    "if=none,id={},file={},format=raw",
                    d.id,
                    path(s, &d.id).display()
                ),
            ]
        })
        .collect()
}

/// Write a scenario's disk images; the `{md5:<id>}` substitutions for its
/// expected lines.
pub fn write(s: &Scenario) -> Result<Vec<(String, String)>> {
    let mut substitutions = Vec::new();
    for Disk { id, size_mib } in &s.disk {
        let bytes = pattern(id, usize::try_from(size_mib << 20).unwrap_or(0));
        let path = path(s, id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(&path, &bytes).ctx(|| format!("write {}", path.display()))?;
        substitutions.push((format!("{{md5:{id}}}"), md5_hex(&bytes)));
    }
    Ok(substitutions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_the_reference_digests() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn patterns_differ_per_disk_and_per_sector() {
        let a = pattern("nvme", 4096);
        assert_eq!(a.len(), 4096);
        assert_ne!(a[..512], a[512..1024]);
        assert_ne!(pattern("nvme", 64), pattern("virtio", 64));
        assert_eq!(pattern("nvme", 64), pattern("nvme", 64));
    }
}
