//! Builders of synthetic firmware-first records (UEFI CPER in an ACPI
//! Generic Error Status Block), for tests of [`crate::aer::cper`] and of
//! the shells that deliver their events.

use alloc::vec;
use alloc::vec::Vec;

use crate::addr::Bdf;
use crate::aer::cper;
use crate::regs::*;

/// A CPER PCIe Error Section of `bdf` with AER info: uncorrectable status
/// and severity, correctable status, validation bits `valid`.
pub fn pcie_section(bdf: Bdf, uncor: u32, sev: u32, cor: u32, valid: u64) -> Vec<u8> {
    let mut s = vec![0u8; cper::PCIE_SECTION_LEN];
    s[0..8].copy_from_slice(&valid.to_le_bytes());
    s[8..12].copy_from_slice(&0u32.to_le_bytes()); // endpoint
    s[12] = 0x10; // version 1.0
    s[13] = 0x01;
    s[24..26].copy_from_slice(&0x8086u16.to_le_bytes());
    s[26..28].copy_from_slice(&0x10d3u16.to_le_bytes());
    s[31] = bdf.function();
    s[32] = bdf.device();
    s[33..35].copy_from_slice(&bdf.segment.to_le_bytes());
    s[35] = bdf.bus;
    let aer = 112;
    let put = |s: &mut Vec<u8>, o: u16, v: u32| {
        s[aer + o as usize..aer + o as usize + 4].copy_from_slice(&v.to_le_bytes())
    };
    put(&mut s, 0, 0x0002_0001);
    put(&mut s, AER_UNCOR_STATUS, uncor);
    put(&mut s, AER_UNCOR_SEVER, sev);
    put(&mut s, AER_COR_STATUS, cor);
    put(&mut s, AER_CAP_CTRL, uncor.trailing_zeros() & 0x1f);
    put(&mut s, 0x1c, 0xdead_beef);
    s
}

/// A Generic Error Data Entry of section type `guid` around `data`
/// (revision 0x300 and later have the 72-byte header).
pub fn entry(guid: cper::Guid, severity: u32, flags: u8, revision: u16, data: &[u8]) -> Vec<u8> {
    let hdr = if revision >= 0x300 { 72 } else { 64 };
    let mut e = vec![0u8; hdr];
    e[0..16].copy_from_slice(&guid);
    e[16..20].copy_from_slice(&severity.to_le_bytes());
    e[20..22].copy_from_slice(&revision.to_le_bytes());
    e[23] = flags;
    e[24..28].copy_from_slice(&(data.len() as u32).to_le_bytes());
    e.extend_from_slice(data);
    e
}

/// A Generic Error Status Block of `severity` holding `entries`.
pub fn block(severity: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let data: Vec<u8> = entries.concat();
    let mut b = vec![0u8; 20];
    let status = 1u32 | ((entries.len() as u32) << 4);
    b[0..4].copy_from_slice(&status.to_le_bytes());
    b[12..16].copy_from_slice(&(data.len() as u32).to_le_bytes());
    b[16..20].copy_from_slice(&severity.to_le_bytes());
    b.extend_from_slice(&data);
    b
}
