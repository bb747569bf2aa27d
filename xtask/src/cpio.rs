//! A writer of cpio "newc" archives, the format Linux unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//! Written here because a fresh host may have no `cpio`.
//!
//! Each entry is a 110-byte ASCII header (`070701`, then thirteen 8-digit
//! hexadecimal fields), the NUL-terminated name padded to a multiple of
//! four bytes (counting the header), then the data padded the same way.
//! The archive ends with an entry named `TRAILER!!!`.

/// File type bits of `mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// An archive being written, in memory.
#[derive(Debug, Default)]
pub struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self {
            bytes: Vec::new(),
            next_ino: 1,
        }
    }

    /// A directory (`path` without a leading slash, e.g. `lib/modules`).
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, &[]);
    }

    /// A regular file with permission bits `perm` (e.g. 0o755).
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data);
    }

    /// A symbolic link at `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes());
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 1, 0);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len()).expect("a cpio newc entry holds less than 4 GiB");
        self.header(path, ino, mode, nlink, size);
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32) {
        let namesize = u32::try_from(name.len() + 1).expect("a short name");
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check.
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, namesize, 0];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the entries back: (name, mode, data).
    fn entries(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at offset {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, size, namesize) = (field(1) as u32, field(6), field(11));
            let name = std::str::from_utf8(&b[110..110 + namesize - 1]).unwrap();
            assert_eq!(b[110 + namesize - 1], 0, "name NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            at += next;
            if name == "TRAILER!!!" {
                assert_eq!(next, b.len(), "nothing after the trailer");
                return out;
            }
            out.push((name.to_string(), mode, data));
            b = &b[next..];
        }
    }

    #[test]
    fn entries_round_trip_with_their_padding() {
        let mut a = Archive::new();
        a.dir("bin");
        a.file("bin/busybox", 0o755, b"\x7fELF....");
        a.symlink("bin/sh", "busybox");
        a.file("init", 0o755, b"#!/bin/sh\n");
        a.file("empty", 0o644, b"");
        let bytes = a.finish();
        assert!(bytes.len().is_multiple_of(4));
        assert_eq!(
            entries(&bytes),
            vec![
                ("bin".into(), 0o040_755, vec![]),
                ("bin/busybox".into(), 0o100_755, b"\x7fELF....".to_vec()),
                ("bin/sh".into(), 0o120_777, b"busybox".to_vec()),
                ("init".into(), 0o100_755, b"#!/bin/sh\n".to_vec()),
                ("empty".into(), 0o100_644, vec![]),
            ]
        );
    }

    #[test]
    fn header_is_the_newc_layout() {
        let mut a = Archive::new();
        a.file("a", 0o644, b"xyz");
        let b = a.finish();
        // magic, ino 1, mode 0o100644 = 0x81a4.
        assert_eq!(&b[..22], b"07070100000001000081a4");
        // filesize (field 6) 3, namesize (field 11) 2.
        assert_eq!(&b[6 + 6 * 8..6 + 7 * 8], b"00000003");
        assert_eq!(&b[6 + 11 * 8..6 + 12 * 8], b"00000002");
        // Name "a\0" at 110, padded to 112; data at 112, padded to 116.
        assert_eq!(&b[110..116], b"a\0xyz\0");
        assert_eq!(&b[116..122], b"070701");
    }
}
