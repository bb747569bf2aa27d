//! One assigned function's virtual config space: construction (BAR sizing,
//! capability filtering, the rule list) and the register-level read and
//! write paths. BAR mapping decisions need the whole guest's view and live
//! in [`super::bus`].

use alloc::vec;
use alloc::vec::Vec;

use super::VpciError;
use super::effects::{Effect, Effects};
use super::ownership::{read_width, write_width};
use super::policy::{self, Policy, Rule, Special};
use crate::addr::Bdf;
use crate::caps::walk_caps;
use crate::port::{ConfigPort, MemoryPort};
use crate::regs::*;
use crate::reset_engine::{msix_entry_address, msix_table_lost, repair_msix_table};

/// Bytes of virtual storage: the standard space, then the virtual AER.
pub(crate) const SHADOW_SIZE: usize = 0x130;

/// What a BAR slot is, from sizing the physical BAR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum BarKind {
    #[default]
    None,
    Io,
    Mem32,
    Mem64,
    /// Upper half of the 64-bit BAR in the slot before.
    Mem64High,
}

/// One BAR slot.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bar {
    pub kind: BarKind,
    /// Bits of this slot's register the guest can write (the physical
    /// sizing mask); the other bits are the physical flags.
    pub wmask: u32,
    /// The physical BAR's flag bits (I/O; memory type, prefetchable).
    pub flags: u32,
    pub size: u64,
    /// Physical address as the hardware domain programmed it.
    pub pa: u64,
    /// The guest address last evaluated for mapping (mapped or refused).
    pub evaluated: Option<u64>,
    /// Whether `evaluated` is mapped.
    pub mapped: bool,
}

impl Bar {
    pub fn is_memory(&self) -> bool {
        matches!(self.kind, BarKind::Mem32 | BarKind::Mem64)
    }
}

/// Expansion ROM BAR.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rom {
    pub size: u64,
    /// Physical address as the hardware domain programmed it.
    pub pa: u64,
    pub wmask: u32,
    pub evaluated: Option<u64>,
}

/// The MSI-X capability's table and PBA, the guest's shadow table, and what
/// the hypervisor last wrote to the physical table.
#[derive(Clone, Debug)]
pub(crate) struct Msix {
    /// Offset of the capability (its Message Control is at +2).
    pub cap: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
    pub entries: u16,
    /// Four dwords per entry: address low, address high, data, vector control.
    pub shadow: Vec<u32>,
    /// The physical table as the hypervisor last wrote it (or, during a
    /// reset, as the reset engine will restore it): address low, address
    /// high, data, vector control per entry.
    pub hw: Vec<[u32; 4]>,
    /// Whether `hw` holds anything the hypervisor wrote since the function
    /// was last reset (else the device's reset values are expected).
    pub hw_valid: bool,
}

/// What [`AssignedFn::msix_commit`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixCommit {
    /// Entries written to the physical table (or recorded for the reset
    /// engine to write, while a reset runs): they became live or changed.
    pub updated: u16,
    /// Entries rewritten because the physical table had lost what the
    /// hypervisor wrote (a reset it did not do); 0 if nothing
    /// was lost.
    pub repaired: u16,
}

pub(crate) const PAGE: u64 = 0x1000;

impl Msix {
    pub fn table_len(&self) -> u64 {
        self.entries as u64 * MSIX_ENTRY_SIZE as u64
    }

    pub fn pba_len(&self) -> u64 {
        (self.entries as u64).div_ceil(64) * 8
    }

    fn reset_hw(&mut self) {
        for e in self.hw.iter_mut() {
            *e = [0, 0, 0, MSIX_ENTRY_VECTOR_CTRL_MASKED];
        }
        self.hw_valid = false;
    }

    fn reset_shadow(&mut self) {
        for e in self.shadow.chunks_mut(4) {
            for (i, d) in e.iter_mut().enumerate() {
                *d = if i == 3 {
                    MSIX_ENTRY_VECTOR_CTRL_MASKED
                } else {
                    0
                };
            }
        }
    }

    /// Page-granular ranges (offset, length) of BAR `bar` (of `size` bytes)
    /// that hold the table or the PBA, merged when they overlap, clipped to
    /// the BAR.
    pub fn trapped_pages(&self, bar: u8, size: u64) -> [Option<(u64, u64)>; 2] {
        // The offsets come from the device's MSI-X capability: a table or
        // PBA at or past the end of its BAR traps nothing (and must not
        // underflow `end - start`).
        let page = |off: u32, len: u64| -> Option<(u64, u64)> {
            let start = u64::from(off) & !(PAGE - 1);
            let end = u64::from(off)
                .saturating_add(len)
                .div_ceil(PAGE)
                .saturating_mul(PAGE)
                .min(size);
            Some((start, end.checked_sub(start).filter(|&l| l != 0)?))
        };
        let t = (self.table_bar == bar)
            .then(|| page(self.table_offset, self.table_len()))
            .flatten();
        let p = (self.pba_bar == bar)
            .then(|| page(self.pba_offset, self.pba_len()))
            .flatten();
        match (t, p) {
            (Some(a), Some(b)) => {
                // Both ranges end within the BAR (`size`): no overflow.
                let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
                let first_end = first.0.saturating_add(first.1);
                if second.0 <= first_end {
                    let end = first_end.max(second.0.saturating_add(second.1));
                    [Some((first.0, end.saturating_sub(first.0))), None]
                } else {
                    [Some(first), Some(second)]
                }
            }
            (a, b) => [a.or(b), None],
        }
    }
}

/// An assigned function.
#[derive(Clone, Debug)]
pub(crate) struct AssignedFn {
    pub physical: Bdf,
    /// Index of its unit (and virtual root port).
    pub unit: u8,
    /// Function number on device 0 of the root port's secondary bus.
    pub vfn: u8,
    /// The policy of every register the guest sees, absolute offsets, sorted
    /// and non-overlapping.
    pub rules: Vec<Rule>,
    /// For each dword `d` of the shadowed space, the index of the first
    /// rule ending after byte `4 * d`: [`AssignedFn::rule_at`] starts there.
    rule_index: [u16; SHADOW_SIZE / 4],
    /// For each dword of the shadowed space, how all its bytes read (one
    /// of the `READ_*` values): [`AssignedFn::read`] serves an access
    /// inside a dword whose bytes all read the same way without looking up
    /// its rules.
    read_kind: [u8; SHADOW_SIZE / 4],
    pub shadow: [u8; SHADOW_SIZE],
    reset_shadow: [u8; SHADOW_SIZE],
    pub bars: [Bar; 6],
    pub rom: Rom,
    pub msix: Option<Msix>,
    pcie: u16,
    flr: bool,
    /// The device has an AER capability of its own (else the guest's is
    /// only virtual and its errors carry no status bits).
    physical_aer: bool,
    /// Writes dropped by policy (read-only, hidden), for the shell's stats.
    pub dropped_writes: u64,
}

/// Result of a write: which BAR mappings must be re-evaluated (bits 0..5
/// BAR slots, bit 6 the ROM).
pub(crate) const REMAP_ROM: u8 = 1 << 6;
pub(crate) const REMAP_ALL: u8 = 0x7f;

/// [`AssignedFn::rule_index`] of sorted, non-overlapping `rules`.
fn rule_index_of(rules: &[Rule]) -> [u16; SHADOW_SIZE / 4] {
    core::array::from_fn(|d| {
        let reg = (4 * d) as u16;
        rules.partition_point(|r| r.offset + r.len <= reg) as u16
    })
}

/// A dword whose bytes read in different ways (or that holds a byte no
/// rule covers): each rule is applied on its own.
const READ_BY_RULE: u8 = 0;
/// Every byte of the dword reads the physical register (pass-through,
/// read-only, RW1C): an access inside it is one physical access.
const READ_HARDWARE: u8 = 1;
/// Every byte of the dword reads the shadow as it is (emulated without live
/// physical bits, or special registers kept in the shadow).
const READ_SHADOW: u8 = 2;

/// [`AssignedFn::read_kind`] of sorted, non-overlapping `rules`.
fn read_kind_of(rules: &[Rule]) -> [u8; SHADOW_SIZE / 4] {
    core::array::from_fn(|d| {
        let reg = (4 * d) as u16;
        let kind_of = |b: u16| {
            let r = rules
                .iter()
                .find(|r| r.offset <= b && b < r.offset + r.len)?;
            match r.policy {
                Policy::PassThrough | Policy::ReadOnly | Policy::W1c { .. } => Some(READ_HARDWARE),
                Policy::Emulated { phys: 0, .. }
                | Policy::Special(
                    Special::Command
                    | Special::Bar(_)
                    | Special::Rom
                    | Special::MsiControl
                    | Special::MsixControl,
                ) => Some(READ_SHADOW),
                _ => None,
            }
        };
        let first = kind_of(reg);
        if first.is_some() && (reg + 1..reg + 4).all(|b| kind_of(b) == first) {
            first.unwrap_or(READ_BY_RULE)
        } else {
            READ_BY_RULE
        }
    })
}

fn rd(buf: &[u8], off: u16, len: u16) -> u32 {
    let mut v = 0u32;
    for i in 0..len.min(4) {
        let b = buf.get((off + i) as usize).copied().unwrap_or(0);
        v |= (b as u32) << (8 * i);
    }
    v
}

fn wr(buf: &mut [u8], off: u16, len: u16, v: u32) {
    for i in 0..len.min(4) {
        if let Some(b) = buf.get_mut((off + i) as usize) {
            *b = (v >> (8 * i)) as u8;
        }
    }
}

/// Byte-lane merge of a register write: writable bits of the written lanes
/// take the new value, W1C bits written as 1 clear.
fn merge(cur: u32, value: u32, lanes: u32, wmask: u32, w1c: u32) -> u32 {
    let w = wmask & lanes;
    ((cur & !w) | (value & w)) & !(value & w1c & lanes)
}

fn lanes(len: u16) -> u32 {
    match len {
        1 => 0xff,
        2 => 0xffff,
        3 => 0xff_ffff,
        _ => u32::MAX,
    }
}

impl AssignedFn {
    /// Reads the physical function once: sizes its BARs (with decoding off),
    /// walks its capabilities, builds the rules and the initial shadow.
    /// Leaves physical Memory decoding on (the hardware domain's BAR
    /// addresses stay) and Bus Master off until the guest sets it.
    pub fn probe<P: ConfigPort + ?Sized>(
        port: &mut P,
        physical: Bdf,
        unit: u8,
        vfn: u8,
        multifunction: bool,
    ) -> Result<Self, VpciError> {
        if port.read16(physical, VENDOR_ID) == VENDOR_ID_NONE {
            return Err(VpciError::NoFunction(physical));
        }
        let header = port.read8(physical, HEADER_TYPE);
        if header & HEADER_TYPE_MASK != HEADER_TYPE_NORMAL {
            return Err(VpciError::NotType0(physical));
        }
        let cmd = port.read16(physical, COMMAND);
        port.write16(physical, COMMAND, cmd & !(COMMAND_IO | COMMAND_MEMORY));
        let bars = size_bars(port, physical, 6);
        let rom = size_rom(port, physical, ROM_BAR);
        port.write16(
            physical,
            COMMAND,
            (cmd | COMMAND_MEMORY) & !COMMAND_BUS_MASTER,
        );

        // Capabilities, in list order.
        let mut caps: Vec<(u8, u16)> = Vec::new();
        walk_caps(port, physical, |c| {
            caps.push((c.id, c.offset));
            false
        })
        .map_err(|error| VpciError::Capability {
            bdf: physical,
            error,
        })?;

        let mut rules: Vec<Rule> = policy::HEADER.to_vec();
        let mut visible: Vec<u16> = Vec::new();
        let mut seen_ids: Vec<u8> = Vec::new();
        let (mut pcie, mut msi, mut msix_cap) = (0u16, 0u16, 0u16);
        for &(id, off) in &caps {
            let msi_flags = port.read16(physical, off + MSI_FLAGS);
            // Vendor-specific capabilities repeat by design (virtio has one
            // per configuration structure); any other ID is shown once.
            let shown = (id == policy::CAP_ID_VENDOR || !seen_ids.contains(&id))
                .then(|| policy::visible_cap_rules(id, msi_flags))
                .flatten();
            match shown {
                Some(cap_rules) => {
                    seen_ids.push(id);
                    visible.push(off);
                    rules.extend(cap_rules.iter().map(|r| Rule {
                        offset: off + r.offset,
                        ..*r
                    }));
                    if id == policy::CAP_ID_VENDOR {
                        // Its body, as long as its length byte says (inside
                        // the capability area), read-only: a driver reads
                        // where its structures are; writes would reach
                        // device-defined registers (virtio's PCI config
                        // access window) that no driver needs.
                        let len = u16::from(port.read8(physical, off + 2));
                        let body = len.min(CAP_END.saturating_sub(off)).saturating_sub(2);
                        // Rules are at most a dword and never cross one.
                        let (mut at, end) = (off + 2, off + 2 + body);
                        while at < end {
                            let len = (at | 3).saturating_add(1).min(end) - at;
                            rules.push(Rule {
                                offset: at,
                                len,
                                policy: Policy::ReadOnly,
                            });
                            at += len;
                        }
                    }
                    match id {
                        CAP_ID_PCIE => pcie = off,
                        CAP_ID_MSI => msi = off,
                        CAP_ID_MSIX => msix_cap = off,
                        _ => {}
                    }
                }
                None => rules.push(Rule {
                    offset: off,
                    len: 4,
                    policy: Policy::Hidden,
                }),
            }
        }
        let _ = msi;
        // Every PCIe function a guest gets shows a (virtual) AER
        // capability, whether or not the device has one: Linux handles an
        // error only for a source with AER (its `aer_get_device_error_info`
        // reads nothing otherwise), so a device without one (QEMU's nvme)
        // could never be recovered by the guest. For such a device the
        // hypervisor fills in a generic status bit ([`synthesize_status`]).
        let has_aer = pcie != 0;
        let physical_aer = has_aer
            && crate::caps::find_ext_cap(port, physical, EXT_CAP_ID_AER)
                .ok()
                .flatten()
                .is_some();
        if has_aer {
            rules.extend(policy::AER.iter().map(|r| Rule {
                offset: policy::VAER + r.offset,
                ..*r
            }));
        }
        // Sorted, non-overlapping, inside their area: a hostile list may
        // make capabilities overlap; the first one wins.
        rules.sort_by_key(|r| r.offset);
        let mut clean: Vec<Rule> = Vec::with_capacity(rules.len());
        for r in rules {
            let limit = if r.offset < CAP_END {
                CAP_END
            } else {
                SHADOW_SIZE as u16
            };
            if r.offset + r.len > limit {
                continue;
            }
            if clean.last().is_some_and(|p| p.offset + p.len > r.offset) {
                continue;
            }
            clean.push(r);
        }

        let flr = pcie != 0 && port.read32(physical, pcie + PCIE_DEVCAP) & PCIE_DEVCAP_FLR != 0;
        let msix = (msix_cap != 0).then(|| {
            let entries = (port.read16(physical, msix_cap + MSIX_FLAGS) & MSIX_FLAGS_QSIZE) + 1;
            let table = port.read32(physical, msix_cap + MSIX_TABLE);
            let pba = port.read32(physical, msix_cap + MSIX_PBA);
            let mut m = Msix {
                cap: msix_cap,
                table_bar: (table & MSIX_BIR_MASK) as u8,
                table_offset: table & !MSIX_BIR_MASK,
                pba_bar: (pba & MSIX_BIR_MASK) as u8,
                pba_offset: pba & !MSIX_BIR_MASK,
                entries,
                shadow: vec![0; entries as usize * 4],
                hw: vec![[0; 4]; entries as usize],
                hw_valid: false,
            };
            m.reset_shadow();
            m.reset_hw();
            m
        });

        let mut f = Self {
            physical,
            unit,
            vfn,
            rule_index: rule_index_of(&clean),
            read_kind: read_kind_of(&clean),
            rules: clean,
            shadow: [0; SHADOW_SIZE],
            reset_shadow: [0; SHADOW_SIZE],
            bars,
            rom,
            msix,
            pcie,
            flr,
            physical_aer,
            dropped_writes: 0,
        };
        f.init_shadow(port, header, multifunction, &visible, has_aer);
        Ok(f)
    }

    fn init_shadow<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        header: u8,
        multifunction: bool,
        visible: &[u16],
        has_aer: bool,
    ) {
        let mut s = [0u8; SHADOW_SIZE];
        for r in &self.rules {
            if r.offset >= CAP_END {
                continue;
            }
            // Read-only bits of virtual registers keep the physical value.
            let keep = match r.policy {
                Policy::Emulated { wmask, w1c, phys } => !(wmask | w1c | phys),
                Policy::Special(Special::MsiControl) => !(policy::MSI_CONTROL_VIRTUAL as u32),
                Policy::Special(Special::MsixControl) => MSIX_FLAGS_QSIZE as u32,
                _ => continue,
            };
            let v = read_width(port, self.physical, r.offset, r.len.min(4)) & keep;
            wr(&mut s, r.offset, r.len, v);
        }
        let mf = if multifunction {
            HEADER_TYPE_MULTIFUNCTION
        } else {
            0
        };
        wr(
            &mut s,
            HEADER_TYPE,
            1,
            ((header & HEADER_TYPE_MASK) | mf) as u32,
        );
        wr(
            &mut s,
            CAP_PTR,
            1,
            visible.first().copied().unwrap_or(0) as u32,
        );
        for (i, &off) in visible.iter().enumerate() {
            let next = visible.get(i + 1).copied().unwrap_or(0);
            wr(&mut s, off + 1, 1, next as u32);
        }
        for (i, bar) in self.bars.iter().enumerate() {
            wr(&mut s, BAR0 + 4 * i as u16, 4, bar.flags);
        }
        if has_aer {
            let a = policy::VAER;
            wr(&mut s, a, 4, EXT_CAP_ID_AER as u32 | (2 << 16));
            wr(
                &mut s,
                a + AER_UNCOR_SEVER,
                4,
                policy::AER_UNCOR_SEVER_DEFAULT,
            );
            wr(&mut s, a + AER_COR_MASK, 4, policy::AER_COR_MASK_DEFAULT);
        }
        self.shadow = s;
        self.reset_shadow = s;
    }

    /// The rule covering `reg`, if any: O(1) by the dword index (at most 3
    /// rules end inside a dword), O(log n) past the shadowed space.
    #[inline]
    fn rule_at(&self, reg: u16) -> Option<&Rule> {
        let mut i = match self.rule_index.get(usize::from(reg / 4)) {
            Some(&i) => usize::from(i),
            None => self.rules.partition_point(|r| r.offset + r.len <= reg),
        };
        while self.rules.get(i).is_some_and(|r| r.offset + r.len <= reg) {
            i += 1;
        }
        self.rules.get(i).filter(|r| r.offset <= reg)
    }

    pub fn command(&self) -> u16 {
        rd(&self.shadow, COMMAND, 2) as u16
    }

    /// The guest address programmed in BAR slot `i` (a 64-bit BAR's low slot).
    pub fn bar_address(&self, i: usize) -> u64 {
        let off = BAR0 + 4 * i as u16;
        let lo = (rd(&self.shadow, off, 4) & !BAR_MEM_FLAGS) as u64;
        match self.bars.get(i).map(|b| b.kind) {
            Some(BarKind::Mem64) => ((rd(&self.shadow, off + 4, 4) as u64) << 32) | lo,
            _ => lo,
        }
    }

    pub fn rom_register(&self) -> u32 {
        rd(&self.shadow, ROM_BAR, 4)
    }

    /// A naturally aligned read of `width` (1, 2, 4) bytes at `reg` < 0x1000
    /// (as [`super::GuestBus`] decodes accesses: the fast path relies on it
    /// to stay inside one dword).
    #[inline(always)]
    pub fn read<P: ConfigPort + ?Sized>(&self, port: &mut P, reg: u16, width: u16) -> u32 {
        debug_assert!(matches!(width, 1 | 2 | 4) && reg & (width - 1) == 0);
        // Inside one dword whose bytes all read the same way (the rules
        // would give the same bytes, one access per rule).
        match self.read_kind.get(usize::from(reg / 4)) {
            Some(&READ_HARDWARE) => return read_width(port, self.physical, reg, width),
            Some(&READ_SHADOW) => {
                if let Some(v) = super::bus::dword_lanes(&self.shadow, usize::from(reg), width) {
                    return v;
                }
            }
            _ => {}
        }
        self.read_by_rule(port, reg, width)
    }

    /// [`AssignedFn::read`], rule by rule.
    #[inline(never)]
    fn read_by_rule<P: ConfigPort + ?Sized>(&self, port: &mut P, reg: u16, width: u16) -> u32 {
        let end = reg + width;
        let mut value = 0u32;
        let mut at = reg;
        while at < end {
            let (chunk_end, part) = match self.rule_at(at) {
                Some(r) => {
                    let e = (r.offset + r.len).min(end);
                    (e, self.read_rule(port, r, at, e - at))
                }
                None => {
                    // Outside every rule: read-only hardware in the
                    // standard area (device-specific registers), hidden in
                    // extended space. Byte by byte: rare.
                    let v = if at < CAP_END {
                        port.read8(self.physical, at) as u32
                    } else {
                        0
                    };
                    (at + 1, v)
                }
            };
            value |= part << (8 * (at - reg));
            at = chunk_end;
        }
        value
    }

    /// `len` bytes at `at` of rule `r`'s register.
    fn read_rule<P: ConfigPort + ?Sized>(&self, port: &mut P, r: &Rule, at: u16, len: u16) -> u32 {
        let shift = 8 * (at - r.offset) as u32;
        let full = match r.policy {
            Policy::PassThrough | Policy::ReadOnly | Policy::W1c { .. } => {
                return read_width(port, self.physical, at, len);
            }
            Policy::Hidden => return 0,
            Policy::Emulated { phys, .. } => {
                let v = rd(&self.shadow, r.offset, r.len);
                if phys == 0 {
                    v
                } else {
                    (v & !phys) | (read_width(port, self.physical, r.offset, r.len) & phys)
                }
            }
            Policy::Special(Special::DevCtl) => {
                let v = rd(&self.shadow, r.offset, 2) & 0x000f;
                v | (read_width(port, self.physical, r.offset, 2) & 0x7ff0)
            }
            Policy::Special(Special::AfCtrl) => 0,
            Policy::Special(_) => rd(&self.shadow, r.offset, r.len),
        };
        (full >> shift) & lanes(len)
    }

    /// A naturally aligned write. Returns the BAR slots to re-evaluate.
    pub fn write<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        reg: u16,
        width: u16,
        value: u32,
        effects: &mut Effects,
    ) -> u8 {
        let end = reg + width;
        let mut at = reg;
        let mut remap = 0u8;
        while at < end {
            let part = value >> (8 * (at - reg));
            match self.rule_at(at).copied() {
                Some(r) => {
                    let e = (r.offset + r.len).min(end);
                    remap |= self.write_rule(port, &r, at, e - at, part, effects);
                    at = e;
                }
                None => {
                    self.dropped_writes += 1;
                    at += 1;
                }
            }
        }
        remap
    }

    fn write_rule<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        r: &Rule,
        at: u16,
        len: u16,
        part: u32,
        effects: &mut Effects,
    ) -> u8 {
        let part = part & lanes(len);
        let shift = 8 * (at - r.offset) as u32;
        let value = part << shift;
        let lane = lanes(len) << shift;
        let cur = rd(&self.shadow, r.offset, r.len);
        match r.policy {
            Policy::PassThrough => write_width(port, self.physical, at, len, part),
            Policy::ReadOnly | Policy::Hidden => self.dropped_writes += 1,
            Policy::W1c { mask } => {
                let bits = part & (mask >> shift);
                if bits != 0 {
                    write_width(port, self.physical, at, len, bits);
                }
            }
            Policy::Emulated { wmask, w1c, .. } => {
                wr(
                    &mut self.shadow,
                    r.offset,
                    r.len,
                    merge(cur, value, lane, wmask, w1c),
                );
            }
            Policy::Special(s) => return self.write_special(port, s, r, cur, value, lane, effects),
        }
        0
    }

    #[allow(clippy::too_many_arguments)]
    fn write_special<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        s: Special,
        r: &Rule,
        cur: u32,
        value: u32,
        lane: u32,
        effects: &mut Effects,
    ) -> u8 {
        match s {
            Special::Command => {
                let new = merge(cur, value, lane, policy::COMMAND_VIRTUAL as u32, 0);
                wr(&mut self.shadow, COMMAND, 2, new);
                let changed = (cur ^ new) as u16;
                if changed & COMMAND_BUS_MASTER != 0 {
                    self.mirror_bus_master(port, new as u16);
                }
                if changed & (COMMAND_MEMORY | COMMAND_IO) != 0 {
                    return REMAP_ALL;
                }
                0
            }
            Special::Bar(i) => {
                let Some(bar) = self.bars.get(i as usize) else {
                    return 0;
                };
                let new = merge(cur, value, lane, bar.wmask, 0);
                wr(&mut self.shadow, r.offset, 4, new);
                // Even an unchanged value is re-evaluated: a placement
                // refused earlier may be fine now (the bus skips it if it
                // is mapped already).
                // A 64-bit BAR's upper half re-evaluates its low slot.
                let slot = if bar.kind == BarKind::Mem64High {
                    i.saturating_sub(1)
                } else {
                    i
                };
                1 << slot
            }
            Special::Rom => {
                let new = merge(cur, value, lane, self.rom.wmask, 0);
                wr(&mut self.shadow, ROM_BAR, 4, new);
                if new != cur { REMAP_ROM } else { 0 }
            }
            Special::DevCtl => {
                let new = merge(cur, value, lane, 0x000f, 0);
                wr(&mut self.shadow, r.offset, 2, new);
                if value & lane & PCIE_DEVCTL_BCR_FLR as u32 != 0 && self.flr {
                    return self.function_reset(port, effects);
                }
                0
            }
            Special::AfCtrl => {
                if value & lane & AF_CTRL_FLR as u32 != 0 {
                    return self.function_reset(port, effects);
                }
                0
            }
            Special::MsiControl => {
                let new = merge(cur, value, lane, policy::MSI_CONTROL_VIRTUAL as u32, 0);
                wr(&mut self.shadow, r.offset, 2, new);
                if (cur ^ new) & MSI_FLAGS_ENABLE as u32 != 0 {
                    effects.push(Effect::MsiControl {
                        physical: self.physical,
                        enabled: new & MSI_FLAGS_ENABLE as u32 != 0,
                    });
                }
                0
            }
            Special::MsixControl => {
                let bits = (MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL) as u32;
                let new = merge(cur, value, lane, bits, 0);
                wr(&mut self.shadow, r.offset, 2, new);
                if (cur ^ new) & bits != 0 {
                    effects.push(Effect::MsixControl {
                        physical: self.physical,
                        enabled: new & MSIX_FLAGS_ENABLE as u32 != 0,
                        function_mask: new & MSIX_FLAGS_MASKALL as u32 != 0,
                    });
                }
                0
            }
        }
    }

    fn mirror_bus_master<P: ConfigPort + ?Sized>(&self, port: &mut P, virtual_cmd: u16) {
        let phys = port.read16(self.physical, COMMAND);
        let want = (phys & !COMMAND_BUS_MASTER) | (virtual_cmd & COMMAND_BUS_MASTER);
        if want != phys {
            port.write16(self.physical, COMMAND, want);
        }
    }

    pub fn stop_bus_master<P: ConfigPort + ?Sized>(&self, port: &mut P) {
        self.mirror_bus_master(port, 0);
    }

    /// A guest-requested FLR: the virtual state returns to its reset values
    /// (so every BAR gets unmapped), physical Bus Master goes off, and the
    /// shell is asked to reset the physical function.
    fn function_reset<P: ConfigPort + ?Sized>(
        &mut self,
        port: &mut P,
        effects: &mut Effects,
    ) -> u8 {
        self.reset_virtual(port);
        effects.push(Effect::FunctionLevelReset {
            physical: self.physical,
        });
        REMAP_ALL
    }

    /// Virtual state back to reset (FLR, or SBR of the virtual root port).
    pub fn reset_virtual<P: ConfigPort + ?Sized>(&mut self, port: &mut P) {
        self.shadow = self.reset_shadow;
        if let Some(m) = self.msix.as_mut() {
            m.reset_shadow();
            // The physical reset that follows clears the table.
            m.reset_hw();
        }
        self.mirror_bus_master(port, 0);
    }

    /// The shadow table entry dword at `index` (entry * 4 + word).
    pub fn msix_dword(&self, index: u64) -> Option<u32> {
        let m = self.msix.as_ref()?;
        m.shadow.get(usize::try_from(index).ok()?).copied()
    }

    pub fn set_msix_dword(&mut self, index: u64, value: u32, lanes: u32) -> bool {
        let Some(m) = self.msix.as_mut() else {
            return false;
        };
        let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| m.shadow.get_mut(i))
        else {
            return false;
        };
        // Vector Control: only the mask bit is writable here.
        let wmask = if index % 4 == 3 {
            MSIX_ENTRY_VECTOR_CTRL_MASKED
        } else {
            u32::MAX
        };
        *slot = merge(*slot, value, lanes, wmask, 0);
        true
    }

    /// Physical address of the MSI-X table, in the BAR as the hardware
    /// domain programmed it (`None`: no MSI-X, or the BAR has no address).
    pub fn msix_table_pa(&self) -> Option<u64> {
        let m = self.msix.as_ref()?;
        let bar = self.bars.get(m.table_bar as usize)?;
        (bar.is_memory() && bar.pa != 0).then(|| bar.pa.wrapping_add(m.table_offset as u64))
    }

    /// Brings the physical MSI-X table in line with the guest's, at the
    /// moments the table would be used: the guest set Enable, cleared the
    /// Function Mask, unmasked a vector, or rewrote a live one.
    ///
    /// While the guest's MSI-X is enabled and not function-masked, every
    /// entry it has unmasked ("live") is written to the physical table
    /// (masked while address and data change, then its Vector Control)
    /// unless the hypervisor wrote exactly that already; an entry the guest
    /// masked again gets its physical mask bit set. Before that, the
    /// physical table is compared with what the hypervisor last wrote
    /// ([`msix_table_lost`]): a device that reset itself behind the
    /// hypervisor's back gets its table rewritten from that copy
    /// ([`repair_msix_table`]) and the caller is told (`repaired`).
    ///
    /// With `hardware` false (a reset of the function is running) nothing
    /// is read or written: only the record is updated, and the reset engine
    /// writes it when it restores the function
    /// ([`super::GuestBus::msix_programmed`]).
    pub fn msix_commit<M: MemoryPort + ?Sized>(
        &mut self,
        mem: &mut M,
        hardware: bool,
    ) -> MsixCommit {
        let mut out = MsixCommit::default();
        let table = self.msix_table_pa();
        let Some(m) = self.msix.as_mut() else {
            return out;
        };
        let Some(pa) = table else {
            return out;
        };
        let ctl = rd(&self.shadow, m.cap + MSIX_FLAGS, 2) as u16;
        if ctl & MSIX_FLAGS_ENABLE == 0 || ctl & MSIX_FLAGS_MASKALL != 0 {
            return out;
        }
        let guest = |m: &Msix, i: usize| -> [u32; 4] {
            let mut e = [0u32; 4];
            for (k, d) in e.iter_mut().enumerate() {
                *d = m.shadow.get(4 * i + k).copied().unwrap_or(0);
            }
            e
        };
        let live = |e: &[u32; 4]| e[3] & MSIX_ENTRY_VECTOR_CTRL_MASKED == 0;
        let entries = m.hw.len();
        if !(0..entries).any(|i| live(&guest(m, i))) {
            return out;
        }
        // A table that does not answer (all-ones) is not checked: there is
        // nothing to compare with.
        if hardware
            && m.hw_valid
            && mem.read(pa, 4) as u32 != u32::MAX
            && msix_table_lost(mem, pa, &m.hw)
        {
            out.repaired = repair_msix_table(mem, pa, &m.hw) as u16;
        }
        for i in 0..entries {
            let want = guest(m, i);
            // None: the entry would end past the address space (the BAR and
            // the table offset come from the device and the hardware
            // domain); nothing is written there.
            let at = u16::try_from(i)
                .ok()
                .and_then(|i| msix_entry_address(pa, i));
            let Some(have) = m.hw.get_mut(i) else {
                continue;
            };
            if live(&want) {
                if *have != want {
                    if hardware && let Some(at) = at {
                        repair_msix_table(mem, at, &[want]);
                    }
                    *have = want;
                    m.hw_valid = true;
                    out.updated += 1;
                }
            } else if live(have) {
                have[3] |= MSIX_ENTRY_VECTOR_CTRL_MASKED;
                if hardware && let Some(at) = at {
                    mem.write(at + 12, 4, have[3] as u64);
                }
            }
        }
        out
    }

    /// Entry `index` of the physical table as the hypervisor wrote it, when
    /// it wrote any since the function was last reset.
    pub fn msix_programmed(&self, index: u16) -> Option<[u32; 4]> {
        let m = self.msix.as_ref()?;
        if !m.hw_valid {
            return None;
        }
        m.hw.get(index as usize).copied()
    }

    /// Read-only access to the virtual AER registers (offset from the
    /// capability) for the AER issue.
    pub fn virtual_aer(&self, offset: u16) -> Option<u32> {
        let at = policy::VAER.checked_add(offset)?;
        (self.pcie != 0 && self.rule_at(at).is_some()).then(|| rd(&self.shadow, at, 4))
    }

    /// Whether the device has an AER capability of its own.
    pub fn has_physical_aer(&self) -> bool {
        self.physical_aer
    }

    /// The virtual AER capability's storage, for the AER issue's event
    /// delivery (`crate::aer::virtual_regs`); `None` if it has no AER.
    pub fn virtual_aer_mut(&mut self) -> Option<crate::aer::virtual_regs::AerBytes<'_>> {
        if self.pcie == 0 || self.rule_at(policy::VAER).is_none() {
            return None;
        }
        let bytes = self.shadow.get_mut(policy::VAER as usize..)?;
        Some(crate::aer::virtual_regs::AerBytes::new(bytes))
    }
}

/// Sizes the first `count` BARs (six of a type 0 header, two of a bridge's;
/// decoding must be off) and restores them.
pub(crate) fn size_bars<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, count: usize) -> [Bar; 6] {
    let mut bars = [Bar::default(); 6];
    let count = count.min(6);
    let mut i = 0usize;
    while i < count {
        let off = BAR0 + 4 * i as u16;
        let orig = port.read32(bdf, off);
        port.write32(bdf, off, u32::MAX);
        let rb = port.read32(bdf, off);
        port.write32(bdf, off, orig);
        if orig & BAR_IO != 0 {
            let mask = rb & !BAR_IO_FLAGS;
            if mask != 0 {
                // 16-bit I/O decoders leave the upper half 0.
                let full = if mask & 0xffff_0000 == 0 {
                    mask | 0xffff_0000
                } else {
                    mask
                };
                if let Some(b) = bars.get_mut(i) {
                    *b = Bar {
                        kind: BarKind::Io,
                        wmask: mask,
                        flags: rb & BAR_IO_FLAGS,
                        size: (!full).wrapping_add(1) as u64,
                        pa: (orig & !BAR_IO_FLAGS) as u64,
                        ..Bar::default()
                    };
                }
            }
            i += 1;
            continue;
        }
        let is64 = orig & BAR_MEM_TYPE_MASK == BAR_MEM_64 && i + 1 < count;
        let (rb_hi, orig_hi) = if is64 {
            let orig_hi = port.read32(bdf, off + 4);
            port.write32(bdf, off + 4, u32::MAX);
            let rb_hi = port.read32(bdf, off + 4);
            port.write32(bdf, off + 4, orig_hi);
            (rb_hi, orig_hi)
        } else {
            (u32::MAX, 0)
        };
        let lo_mask = rb & !BAR_MEM_FLAGS;
        let mask = ((rb_hi as u64) << 32) | lo_mask as u64;
        let size = (!mask).wrapping_add(1);
        let valid = lo_mask != 0 || (is64 && rb_hi != 0);
        if valid && size.is_power_of_two() {
            if let Some(b) = bars.get_mut(i) {
                *b = Bar {
                    kind: if is64 { BarKind::Mem64 } else { BarKind::Mem32 },
                    wmask: lo_mask,
                    flags: rb & BAR_MEM_FLAGS,
                    size,
                    pa: ((orig_hi as u64) << 32) | (orig & !BAR_MEM_FLAGS) as u64,
                    ..Bar::default()
                };
            }
            if is64 && let Some(b) = bars.get_mut(i + 1) {
                *b = Bar {
                    kind: BarKind::Mem64High,
                    wmask: rb_hi,
                    ..Bar::default()
                };
            }
        }
        i += if is64 { 2 } else { 1 };
    }
    bars
}

/// Sizes the expansion ROM BAR at `reg` (0x30 in a type 0 header, 0x38 in
/// a bridge's; decoding must be off) and restores it.
pub(crate) fn size_rom<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, reg: u16) -> Rom {
    let orig = port.read32(bdf, reg);
    port.write32(bdf, reg, ROM_ADDRESS_MASK);
    let rb = port.read32(bdf, reg);
    port.write32(bdf, reg, orig);
    let mask = rb & ROM_ADDRESS_MASK;
    if mask == 0 || rb == u32::MAX {
        return Rom::default();
    }
    Rom {
        size: (!mask).wrapping_add(1) as u64,
        pa: (orig & ROM_ADDRESS_MASK) as u64,
        wmask: mask | ROM_ENABLE,
        evaluated: None,
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::{Fabric, Spec, devfn};

    /// The uniform-dword fast path of `read` gives what the rules give, at
    /// every offset and width of the shadowed space.
    #[test]
    fn uniform_dword_reads_match_the_rules() {
        for spec in [Spec::qemu_nvme(), Spec::qemu_e1000e()] {
            let mut port = Fabric::new().with_root_complex(
                0,
                0,
                &[(devfn(1, 0), Spec::qemu_root_port().child(0, 0, spec))],
            );
            let rp = Bdf::new(0, 0, 1, 0);
            port.write8(rp, SECONDARY_BUS, 1);
            port.write8(rp, SUBORDINATE_BUS, 1);
            let bdf = Bdf::new(0, 1, 0, 0);
            let f = AssignedFn::probe(&mut port, bdf, 0, 0, false).unwrap();
            assert!(f.read_kind.contains(&READ_HARDWARE));
            assert!(f.read_kind.contains(&READ_SHADOW));
            for width in [1u16, 2, 4] {
                for reg in (0..SHADOW_SIZE as u16).step_by(usize::from(width)) {
                    assert_eq!(
                        f.read(&mut port, reg, width),
                        f.read_by_rule(&mut port, reg, width),
                        "{bdf} +{reg:#x}, {width} bytes"
                    );
                }
            }
        }
    }
}
