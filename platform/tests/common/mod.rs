//! Test helpers: a small FDT writer to build trees node by node, and a
//! rewriter that adds a `/memory` node to a board DTB the way a bootloader
//! would (kernel-package DTBs leave memory for U-Boot or the firmware to fill).
#![allow(dead_code)]

use platform::Platform;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_END: u32 = 9;

#[derive(Default)]
pub struct FdtBuilder {
    structure: Vec<u8>,
    strings: Vec<u8>,
    memreserve: Vec<(u64, u64)>,
}

impl FdtBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    fn word(&mut self, value: u32) {
        self.structure.extend_from_slice(&value.to_be_bytes());
    }

    fn pad(&mut self) {
        while !self.structure.len().is_multiple_of(4) {
            self.structure.push(0);
        }
    }

    pub fn begin(&mut self, name: &str) -> &mut Self {
        self.word(FDT_BEGIN_NODE);
        self.structure.extend_from_slice(name.as_bytes());
        self.structure.push(0);
        self.pad();
        self
    }

    pub fn end(&mut self) -> &mut Self {
        self.word(FDT_END_NODE);
        self
    }

    pub fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let mut needle = name.as_bytes().to_vec();
        needle.push(0);
        let offset = match self
            .strings
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        {
            Some(offset) => offset,
            None => {
                self.strings.extend_from_slice(&needle);
                self.strings.len() - needle.len()
            }
        };
        self.word(FDT_PROP);
        self.word(value.len() as u32);
        self.word(offset as u32);
        self.structure.extend_from_slice(value);
        self.pad();
        self
    }

    pub fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &bytes)
    }

    pub fn string(&mut self, name: &str, value: &str) -> &mut Self {
        self.strings_prop(name, &[value])
    }

    pub fn strings_prop(&mut self, name: &str, values: &[&str]) -> &mut Self {
        let mut bytes = Vec::new();
        for value in values {
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0);
        }
        self.prop(name, &bytes)
    }

    pub fn empty(&mut self, name: &str) -> &mut Self {
        self.prop(name, &[])
    }

    pub fn reserve(&mut self, base: u64, size: u64) -> &mut Self {
        self.memreserve.push((base, size));
        self
    }

    /// The blob: header, reservation map, structure block, strings block.
    pub fn finish(&self) -> Vec<u8> {
        let mut rsvmap = Vec::new();
        for &(base, size) in self.memreserve.iter().chain(std::iter::once(&(0, 0))) {
            rsvmap.extend_from_slice(&base.to_be_bytes());
            rsvmap.extend_from_slice(&size.to_be_bytes());
        }
        let mut structure = self.structure.clone();
        structure.extend_from_slice(&FDT_END.to_be_bytes());
        let off_rsvmap = 40u32;
        let off_struct = off_rsvmap + rsvmap.len() as u32;
        let off_strings = off_struct + structure.len() as u32;
        let totalsize = off_strings + self.strings.len() as u32;
        let header = [
            0xd00d_feed,
            totalsize,
            off_struct,
            off_strings,
            off_rsvmap,
            17,
            16,
            0,
            self.strings.len() as u32,
            structure.len() as u32,
        ];
        let mut blob: Vec<u8> = header.iter().flat_map(|w| w.to_be_bytes()).collect();
        blob.extend_from_slice(&rsvmap);
        blob.extend_from_slice(&structure);
        blob.extend_from_slice(&self.strings);
        blob
    }
}

fn be32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn cstr(bytes: &[u8], offset: usize) -> &str {
    let len = bytes[offset..].iter().position(|&b| b == 0).unwrap();
    std::str::from_utf8(&bytes[offset..offset + len]).unwrap()
}

/// Re-encode a well-formed `blob` with an extra root node
/// `memory@<base>` covering `[base, base + size)`, in the root's cells.
pub fn with_memory(blob: &[u8], base: u64, size: u64) -> Vec<u8> {
    let off_struct = be32(blob, 8) as usize;
    let off_strings = be32(blob, 12) as usize;
    let off_rsvmap = be32(blob, 16) as usize;
    let mut out = FdtBuilder::new();
    let mut offset = off_rsvmap;
    loop {
        let base = u64::from_be_bytes(blob[offset..offset + 8].try_into().unwrap());
        let size = u64::from_be_bytes(blob[offset + 8..offset + 16].try_into().unwrap());
        if base == 0 && size == 0 {
            break;
        }
        out.reserve(base, size);
        offset += 16;
    }
    let (mut root_address_cells, mut root_size_cells) = (2, 1);
    let mut depth = 0;
    let mut offset = off_struct;
    loop {
        let token = be32(blob, offset);
        offset += 4;
        match token {
            FDT_BEGIN_NODE => {
                let name = cstr(blob, offset);
                out.begin(name);
                depth += 1;
                offset = (offset + name.len() + 1 + 3) & !3;
            }
            FDT_END_NODE => {
                depth -= 1;
                if depth == 0 {
                    let cells = |value: u64, count: u32| -> Vec<u32> {
                        (0..count)
                            .rev()
                            .map(|i| (value >> (32 * i)) as u32)
                            .collect()
                    };
                    let mut reg = cells(base, root_address_cells);
                    reg.extend(cells(size, root_size_cells));
                    out.begin(&format!("memory@{base:x}"))
                        .string("device_type", "memory")
                        .cells("reg", &reg)
                        .end();
                }
                out.end();
            }
            FDT_PROP => {
                let len = be32(blob, offset) as usize;
                let name = cstr(blob, off_strings + be32(blob, offset + 4) as usize);
                let value = &blob[offset + 8..offset + 8 + len];
                if depth == 1 && name == "#address-cells" {
                    root_address_cells = be32(value, 0);
                }
                if depth == 1 && name == "#size-cells" {
                    root_size_cells = be32(value, 0);
                }
                out.prop(name, value);
                offset = (offset + 8 + len + 3) & !3;
            }
            FDT_END => break,
            _ => {}
        }
    }
    out.finish()
}

pub fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn parse(blob: &[u8]) -> Platform {
    Platform::from_fdt(blob).unwrap_or_else(|e| panic!("{e}"))
}
