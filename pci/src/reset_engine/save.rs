//! Config state saved before a reset and restored after it, in Linux's
//! order (`pci_save_state` / `pci_restore_state`, reference §2.5), and the
//! MSI-X table rewrite from the hypervisor's shadow (§5).
//!
//! Saved per function:
//! - config dwords 0..=15: BARs, Command, cache line / latency, interrupt
//!   line; bridges: bus numbers (0x18), I/O, memory and prefetchable windows
//!   (0x1C..=0x33), Bridge Control (0x3E, without the SBR bit);
//! - PCIe: Device, Link, Slot, Root Control and the "2" registers, each only
//!   when the capability has it (`pcie_capability_read` rules);
//! - ACS Control; AER Uncorrectable Mask and Severity, Correctable Mask,
//!   Capabilities and Control, Root Error Command (root ports and RCECs);
//! - MSI: control, address, data, mask bits; MSI-X: Message Control, and the
//!   table as hardware held it (used only when the caller has no shadow: a
//!   hardware domain that programs its own vectors);
//! - SR-IOV of a PF: NumVFs, System Page Size, VF BARs, Control (VF Enable
//!   is written last, so the VFs come back after the PF).
//!
//! Restore order (Linux): PCIe words; AER (status cleared first); header
//! (dwords 15..2 where they differ, bridges' 0x24..=0x2C always, Command
//! last); MSI; MSI-X (Enable + Function Mask, every entry rewritten from the
//! shadow, then the saved Message Control); ACS; SR-IOV.

use alloc::vec::Vec;

use crate::addr::Bdf;
use crate::port::{ConfigPort, MemoryPort};
use crate::regs::*;
use crate::topology::{FunctionKind, Topology};

/// PCIe Link Control: Retrain Link.
pub const PCIE_LNKCTL_RL: u16 = 1 << 5;
/// PCIe Link Capabilities: Data Link Layer Link Active Reporting Capable.
pub const PCIE_LNKCAP_DLLLARC: u32 = 1 << 20;
/// PCIe Slot Control: Presence Detect Changed Enable and DLL State Changed
/// Enable (masked during a slot reset, like pciehp).
pub const PCIE_SLTCTL_PDCE: u16 = 1 << 3;
pub const PCIE_SLTCTL_DLLSCE: u16 = 1 << 12;
/// PCIe Slot Status: Presence Detect Changed, DLL State Changed (RW1C).
pub const PCIE_SLTSTA_PDC: u16 = 1 << 3;
pub const PCIE_SLTSTA_DLLSC: u16 = 1 << 8;
pub const PCIE_LNKCTL2: u16 = 0x30;
pub const PCIE_SLTCTL2: u16 = 0x38;
/// MSI: per-vector masking capable.
pub const MSI_FLAGS_MASKBIT: u16 = 1 << 8;

/// Where the hypervisor keeps the MSI-X entries it programmed for a
/// function (address lo, address hi, data, vector control). The table is
/// rewritten from here after a reset; hardware is never read back for it.
pub trait MsixShadow {
    /// Entry `index` of `bdf`'s table, or `None` when the hypervisor holds
    /// no shadow for the function (then the table captured before the reset
    /// is used).
    fn msix_entry(&self, bdf: Bdf, index: u16) -> Option<[u32; 4]>;
}

impl<F: Fn(Bdf, u16) -> Option<[u32; 4]>> MsixShadow for F {
    fn msix_entry(&self, bdf: Bdf, index: u16) -> Option<[u32; 4]> {
        self(bdf, index)
    }
}

/// No shadow for anything: restores use the tables captured before reset.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoShadow;

impl MsixShadow for NoShadow {
    fn msix_entry(&self, _: Bdf, _: u16) -> Option<[u32; 4]> {
        None
    }
}

/// Saved PCI Express capability registers (0 where absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedPcie {
    pub offset: u16,
    pub devctl: u16,
    pub lnkctl: Option<u16>,
    pub sltctl: Option<u16>,
    pub rtctl: Option<u16>,
    /// DevCtl2, LnkCtl2, SltCtl2 (capability version 2).
    pub v2: Option<[u16; 3]>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedAer {
    pub offset: u16,
    pub uncor_mask: u32,
    pub uncor_sever: u32,
    pub cor_mask: u32,
    pub cap_ctrl: u32,
    pub root_command: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedMsi {
    pub offset: u16,
    pub flags: u16,
    pub address_lo: u32,
    pub address_hi: u32,
    pub data: u16,
    pub mask: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedMsix {
    pub offset: u16,
    /// Message Control as saved.
    pub control: u16,
    /// Table Offset/BIR register.
    pub table: u32,
    /// The table as hardware held it at capture (empty when MSI-X was off
    /// or the BAR did not decode); fallback for functions without a shadow.
    pub captured: Vec<[u32; 4]>,
}

impl SavedMsix {
    pub fn entries(&self) -> u16 {
        (self.control & MSIX_FLAGS_QSIZE) + 1
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SavedSriov {
    pub offset: u16,
    pub ctrl: u16,
    pub num_vfs: u16,
    pub sys_pgsize: u32,
    pub vf_bars: [u32; 6],
}

/// One function's saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedFunction {
    pub bdf: Bdf,
    pub bridge: bool,
    pub header: [u32; 16],
    pub pcie: Option<SavedPcie>,
    pub aer: Option<SavedAer>,
    pub acs: Option<(u16, u16)>,
    pub msi: Option<SavedMsi>,
    pub msix: Option<SavedMsix>,
    pub sriov: Option<SavedSriov>,
}

impl SavedFunction {
    pub fn command(&self) -> u16 {
        self.header[1] as u16
    }

    /// Physical address of BAR `bar` as saved (64-bit BARs combined); `None`
    /// for an I/O BAR, an out-of-range index or the upper half of a 64-bit BAR.
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        let slots = if self.bridge { BARS_TYPE1 } else { BARS_TYPE0 };
        if bar >= slots {
            return None;
        }
        let lo = *self.header.get(4 + bar as usize)?;
        if lo & BAR_IO != 0 {
            return None;
        }
        let base = (lo & !BAR_MEM_FLAGS) as u64;
        if lo & BAR_MEM_TYPE_MASK == BAR_MEM_64 {
            let hi = if bar + 1 < slots {
                *self.header.get(5 + bar as usize)?
            } else {
                0
            };
            Some(base | ((hi as u64) << 32))
        } else {
            Some(base)
        }
    }

    /// Physical address of the MSI-X table, from the saved BAR.
    pub fn msix_table_address(&self) -> Option<u64> {
        let m = self.msix.as_ref()?;
        let base = self.bar_address((m.table & MSIX_BIR_MASK) as u8)?;
        (base != 0).then(|| base.wrapping_add((m.table & !MSIX_BIR_MASK) as u64))
    }
}

/// Saved state of every function a reset touches, in address order (which
/// puts bridges before the functions below them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedState {
    pub functions: Vec<SavedFunction>,
    /// Functions of the scope that did not answer at capture (all-ones):
    /// nothing saved, nothing waited for.
    pub absent: Vec<Bdf>,
}

impl SavedState {
    /// Reads the state of `scope`'s functions. Capability offsets come from
    /// the tracker (validated at report time); a function that does not
    /// answer is listed in `absent`. MSI-X tables that are enabled and
    /// decode are read through the [`MemoryPort`] (the fallback when no
    /// shadow exists).
    pub fn capture<H: ConfigPort + MemoryPort + ?Sized>(
        topo: &Topology,
        port: &mut H,
        scope: &[Bdf],
    ) -> Self {
        let mut out = Self::default();
        let mut sorted: Vec<Bdf> = scope.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for bdf in sorted {
            match capture_function(topo, port, bdf) {
                Some(f) => out.functions.push(f),
                None => out.absent.push(bdf),
            }
        }
        out
    }

    pub fn get(&self, bdf: Bdf) -> Option<&SavedFunction> {
        self.functions
            .binary_search_by_key(&bdf, |f| f.bdf)
            .ok()
            .and_then(|i| self.functions.get(i))
    }

    /// Restores every saved function, top-down (address order), with no
    /// readiness wait in between: for callers that waited themselves.
    pub fn restore_all<H: ConfigPort + MemoryPort + ?Sized>(
        &self,
        port: &mut H,
        shadow: &dyn MsixShadow,
    ) {
        for f in &self.functions {
            restore_function(port, f, shadow);
        }
    }
}

fn pcie_has_lnkctl(kind: FunctionKind, version: u16) -> bool {
    version > 1
        || matches!(
            kind,
            FunctionKind::RootPort
                | FunctionKind::Endpoint
                | FunctionKind::LegacyEndpoint
                | FunctionKind::UpstreamPort
                | FunctionKind::DownstreamPort
                | FunctionKind::PcieToPciBridge
                | FunctionKind::PciToPcieBridge
        )
}

fn capture_function<H: ConfigPort + MemoryPort + ?Sized>(
    topo: &Topology,
    port: &mut H,
    bdf: Bdf,
) -> Option<SavedFunction> {
    let f = topo.function(bdf)?;
    if !answers(port, bdf, f.physfn().is_some()) {
        return None;
    }
    let mut header = [0u32; 16];
    for (i, d) in header.iter_mut().enumerate() {
        *d = port.read32(bdf, (i as u16) * 4);
    }
    let bridge = f.kind.is_bridge();
    if bridge {
        // Never restore an asserted Secondary Bus Reset.
        header[15] &= !((BRIDGE_CONTROL_SBR as u32) << 16);
    }
    let caps = f.caps;
    let pcie = (caps.pcie != 0).then(|| {
        let off = caps.pcie as u16;
        let flags = port.read16(bdf, off + PCIE_FLAGS);
        let version = flags & 0xf;
        let slot = flags & PCIE_FLAGS_SLOT != 0;
        let kind = f.kind;
        let lnk = pcie_has_lnkctl(kind, version);
        let root = matches!(kind, FunctionKind::RootPort | FunctionKind::Rcec);
        let port_with_slot =
            slot && matches!(kind, FunctionKind::RootPort | FunctionKind::DownstreamPort);
        SavedPcie {
            offset: off,
            devctl: port.read16(bdf, off + PCIE_DEVCTL),
            lnkctl: lnk.then(|| port.read16(bdf, off + PCIE_LNKCTL)),
            sltctl: (port_with_slot || version > 1 && slot)
                .then(|| port.read16(bdf, off + PCIE_SLTCTL)),
            rtctl: (root || version > 1 && kind == FunctionKind::RootPort)
                .then(|| port.read16(bdf, off + PCIE_RTCTL)),
            v2: (version > 1).then(|| {
                [
                    port.read16(bdf, off + PCIE_DEVCTL2),
                    port.read16(bdf, off + PCIE_LNKCTL2),
                    port.read16(bdf, off + PCIE_SLTCTL2),
                ]
            }),
        }
    });
    let aer = (caps.aer != 0).then(|| {
        let off = caps.aer;
        SavedAer {
            offset: off,
            uncor_mask: port.read32(bdf, off + AER_UNCOR_MASK),
            uncor_sever: port.read32(bdf, off + AER_UNCOR_SEVER),
            cor_mask: port.read32(bdf, off + AER_COR_MASK),
            cap_ctrl: port.read32(bdf, off + AER_CAP_CTRL),
            root_command: matches!(f.kind, FunctionKind::RootPort | FunctionKind::Rcec)
                .then(|| port.read32(bdf, off + AER_ROOT_COMMAND)),
        }
    });
    let acs = (caps.acs != 0).then(|| (caps.acs, port.read16(bdf, caps.acs + ACS_CTRL)));
    let msi = (caps.msi != 0).then(|| {
        let off = caps.msi as u16;
        let flags = port.read16(bdf, off + MSI_FLAGS);
        let is64 = flags & MSI_FLAGS_64BIT != 0;
        let data_off = if is64 { 0x0c } else { 0x08 };
        SavedMsi {
            offset: off,
            flags,
            address_lo: port.read32(bdf, off + 4),
            address_hi: if is64 { port.read32(bdf, off + 8) } else { 0 },
            data: port.read16(bdf, off + data_off),
            mask: (flags & MSI_FLAGS_MASKBIT != 0).then(|| port.read32(bdf, off + data_off + 4)),
        }
    });
    let mut saved = SavedFunction {
        bdf,
        bridge,
        header,
        pcie,
        aer,
        acs,
        msi,
        msix: None,
        sriov: None,
    };
    if caps.msix != 0 {
        let off = caps.msix as u16;
        let mut m = SavedMsix {
            offset: off,
            control: port.read16(bdf, off + MSIX_FLAGS),
            table: port.read32(bdf, off + MSIX_TABLE),
            captured: Vec::new(),
        };
        let decoding = saved.command() & COMMAND_MEMORY != 0 || f.physfn().is_some();
        saved.msix = Some(m.clone());
        if m.control & MSIX_FLAGS_ENABLE != 0
            && decoding
            && let Some(pa) = saved.msix_table_address()
        {
            for i in 0..m.entries() {
                // A table whose end overflows the address space (BAR and
                // offset come from the device and the hardware domain) is
                // not captured: nothing there can be a table.
                let Some(e) = msix_entry_address(pa, i) else {
                    break;
                };
                m.captured.push([
                    port.read(e, 4) as u32,
                    port.read(e + 4, 4) as u32,
                    port.read(e + 8, 4) as u32,
                    port.read(e + 12, 4) as u32,
                ]);
            }
            saved.msix = Some(m);
        }
    }
    if caps.sriov != 0 {
        let off = caps.sriov;
        let mut vf_bars = [0u32; 6];
        for (i, v) in vf_bars.iter_mut().enumerate() {
            *v = port.read32(bdf, off + SRIOV_BAR0 + 4 * i as u16);
        }
        saved.sriov = Some(SavedSriov {
            offset: off,
            ctrl: port.read16(bdf, off + SRIOV_CTRL),
            num_vfs: port.read16(bdf, off + SRIOV_NUM_VF),
            sys_pgsize: port.read32(bdf, off + SRIOV_SYS_PGSIZE),
            vf_bars,
        });
    }
    Some(saved)
}

/// Whether a function answers config requests: Vendor ID neither RRS
/// (0x0001) nor all-ones (Linux `pci_dev_wait`). A VF's Vendor ID reads
/// 0xFFFF by definition (SR-IOV §3.4.1.1): its Command/Status dword is
/// checked instead.
pub fn answers<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, vf: bool) -> bool {
    if vf {
        return port.read32(bdf, COMMAND) != u32::MAX;
    }
    let id = port.read32(bdf, VENDOR_ID);
    id != u32::MAX && id as u16 != VENDOR_ID_RRS
}

/// Writes Command = INTx Disable only (no decoding, no bus mastering), as
/// `pci_dev_save_and_disable` does before a reset.
pub fn disable<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf) {
    port.write16(bdf, COMMAND, COMMAND_INTX_DISABLE);
}

fn restore_pcie<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, p: &SavedPcie) {
    let o = p.offset;
    port.write16(bdf, o + PCIE_DEVCTL, p.devctl & !PCIE_DEVCTL_BCR_FLR);
    if let Some(v) = p.lnkctl {
        port.write16(bdf, o + PCIE_LNKCTL, v & !PCIE_LNKCTL_RL);
    }
    if let Some(v) = p.sltctl {
        port.write16(bdf, o + PCIE_SLTCTL, v);
    }
    if let Some(v) = p.rtctl {
        port.write16(bdf, o + PCIE_RTCTL, v);
    }
    if let Some([d2, l2, s2]) = p.v2 {
        port.write16(bdf, o + PCIE_DEVCTL2, d2);
        port.write16(bdf, o + PCIE_LNKCTL2, l2);
        port.write16(bdf, o + PCIE_SLTCTL2, s2);
    }
}

fn restore_aer<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, a: &SavedAer) {
    let o = a.offset;
    // Clear what the reset may have logged (link down, surprise down).
    port.write32(bdf, o + AER_UNCOR_STATUS, u32::MAX);
    port.write32(bdf, o + AER_COR_STATUS, u32::MAX);
    port.write32(bdf, o + AER_UNCOR_MASK, a.uncor_mask);
    port.write32(bdf, o + AER_UNCOR_SEVER, a.uncor_sever);
    port.write32(bdf, o + AER_COR_MASK, a.cor_mask);
    port.write32(bdf, o + AER_CAP_CTRL, a.cap_ctrl);
    if let Some(c) = a.root_command {
        port.write32(bdf, o + AER_ROOT_STATUS, u32::MAX);
        port.write32(bdf, o + AER_ROOT_COMMAND, c);
    }
}

fn restore_header<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, f: &SavedFunction) {
    let h = &f.header;
    // Dwords 15..=4, highest first (BARs after the ROM and windows, Linux's
    // order), each only when it differs, except a bridge's prefetchable
    // window (0x24..=0x2C), always rewritten: its upper halves only take
    // effect with the base/limit dword.
    for i in (4..16usize).rev() {
        let off = (i as u16) * 4;
        let want = h[i];
        let always = f.bridge && (9..=11).contains(&i);
        if f.bridge && i == 7 {
            // I/O base and limit; Secondary Status (upper half) is RW1C.
            if port.read16(bdf, off) != want as u16 {
                port.write16(bdf, off, want as u16);
            }
            continue;
        }
        if f.bridge && i == 15 {
            // Interrupt line/pin, then Bridge Control (SBR already cleared).
            port.write8(bdf, INTERRUPT_LINE, want as u8);
            port.write16(bdf, BRIDGE_CONTROL, (want >> 16) as u16);
            continue;
        }
        if always || port.read32(bdf, off) != want {
            port.write32(bdf, off, want);
        }
    }
    // Cache line size and latency timer; never BIST.
    port.write16(bdf, 0x0c, h[3] as u16);
    // Command last, as 16 bits (Status is RW1C).
    port.write16(bdf, COMMAND, h[1] as u16);
}

fn restore_msi<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, m: &SavedMsi) {
    let o = m.offset;
    port.write16(bdf, o + MSI_FLAGS, m.flags & !MSI_FLAGS_ENABLE);
    port.write32(bdf, o + 4, m.address_lo);
    let is64 = m.flags & MSI_FLAGS_64BIT != 0;
    let data_off = if is64 {
        port.write32(bdf, o + 8, m.address_hi);
        0x0c
    } else {
        0x08
    };
    port.write16(bdf, o + data_off, m.data);
    if let Some(mask) = m.mask {
        port.write32(bdf, o + data_off + 4, mask);
    }
    port.write16(bdf, o + MSI_FLAGS, m.flags);
}

/// Writes one MSI-X entry the way Linux rewrites a live one: masked while
/// address and data change, then its own Vector Control.
/// The address of entry `i` of an MSI-X table at `table_pa`, if the whole
/// entry (16 bytes) lies below the end of the address space: the table's
/// BAR and offset come from the device and the hardware domain, so the
/// sum may not fit.
pub fn msix_entry_address(table_pa: u64, i: u16) -> Option<u64> {
    let e = table_pa.checked_add(u64::from(i) * u64::from(MSIX_ENTRY_SIZE))?;
    e.checked_add(u64::from(MSIX_ENTRY_SIZE) - 1).map(|_| e)
}

/// Writes one entry at `pa` (from [`msix_entry_address`]: `pa + 12` fits).
fn write_msix_entry<M: MemoryPort + ?Sized>(mem: &mut M, pa: u64, e: [u32; 4]) {
    mem.write(pa + 12, 4, (e[3] | MSIX_ENTRY_VECTOR_CTRL_MASKED) as u64);
    mem.write(pa, 4, e[0] as u64);
    mem.write(pa + 4, 4, e[1] as u64);
    mem.write(pa + 8, 4, e[2] as u64);
    mem.write(pa + 12, 4, e[3] as u64);
}

fn restore_msix<H: ConfigPort + MemoryPort + ?Sized>(
    port: &mut H,
    f: &SavedFunction,
    m: &SavedMsix,
    shadow: &dyn MsixShadow,
) {
    let bdf = f.bdf;
    let o = m.offset;
    // Enable + Function Mask: no vector can fire while the table is rewritten.
    port.write16(
        bdf,
        o + MSIX_FLAGS,
        m.control | MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL,
    );
    if let Some(pa) = f.msix_table_address() {
        // The table is BAR memory: decode it for the rewrite if the owner
        // had Memory Space off (vfio does the same).
        let cmd = f.command();
        let need_mse = cmd & COMMAND_MEMORY == 0;
        if need_mse {
            port.write16(bdf, COMMAND, cmd | COMMAND_MEMORY);
        }
        for i in 0..m.entries() {
            let entry = shadow
                .msix_entry(bdf, i)
                .or_else(|| m.captured.get(i as usize).copied());
            if let (Some(e), Some(at)) = (entry, msix_entry_address(pa, i)) {
                write_msix_entry(port, at, e);
            }
        }
        if need_mse {
            port.write16(bdf, COMMAND, cmd);
        }
    }
    port.write16(bdf, o + MSIX_FLAGS, m.control);
}

fn restore_sriov<P: ConfigPort + ?Sized>(port: &mut P, bdf: Bdf, s: &SavedSriov) {
    let o = s.offset;
    port.write16(bdf, o + SRIOV_NUM_VF, s.num_vfs);
    port.write32(bdf, o + SRIOV_SYS_PGSIZE, s.sys_pgsize);
    for (i, v) in s.vf_bars.iter().enumerate() {
        port.write32(bdf, o + SRIOV_BAR0 + 4 * i as u16, *v);
    }
    port.write16(bdf, o + SRIOV_CTRL, s.ctrl);
}

/// Restores one function (it must answer config requests), in Linux's order.
pub fn restore_function<H: ConfigPort + MemoryPort + ?Sized>(
    port: &mut H,
    f: &SavedFunction,
    shadow: &dyn MsixShadow,
) {
    let bdf = f.bdf;
    if let Some(p) = &f.pcie {
        restore_pcie(port, bdf, p);
    }
    if let Some(a) = &f.aer {
        restore_aer(port, bdf, a);
    }
    restore_header(port, bdf, f);
    if let Some(m) = &f.msi {
        restore_msi(port, bdf, m);
    }
    if let Some(m) = &f.msix {
        restore_msix(port, f, m, shadow);
    }
    if let Some((off, ctrl)) = f.acs {
        port.write16(bdf, off + ACS_CTRL, ctrl);
    }
    if let Some(s) = &f.sriov {
        restore_sriov(port, bdf, s);
    }
}

/// Backdoor-reset detection (a device that reset itself): whether the hardware table of a
/// function lost what the hypervisor programmed. Compares address and data
/// of every entry the shadow holds as programmed (a non-zero address); the
/// Vector Control word belongs to the owner and is not compared. `table_pa`
/// is the table's physical address (see [`SavedFunction::msix_table_address`]
/// or [`msix_table_address`]); the BAR must decode.
pub fn msix_table_lost<M: MemoryPort + ?Sized>(
    mem: &mut M,
    table_pa: u64,
    shadow: &[[u32; 4]],
) -> bool {
    shadow.iter().enumerate().any(|(i, e)| {
        if e[0] == 0 && e[1] == 0 {
            return false;
        }
        // An entry past the end of the address space was never written.
        let Some(pa) = u16::try_from(i)
            .ok()
            .and_then(|i| msix_entry_address(table_pa, i))
        else {
            return false;
        };
        mem.read(pa, 4) as u32 != e[0]
            || mem.read(pa + 4, 4) as u32 != e[1]
            || mem.read(pa + 8, 4) as u32 != e[2]
    })
}

/// Rewrites every entry of the table from the shadow (masked while address
/// and data change, then the shadow's Vector Control). Returns how many
/// entries were written.
pub fn repair_msix_table<M: MemoryPort + ?Sized>(
    mem: &mut M,
    table_pa: u64,
    shadow: &[[u32; 4]],
) -> usize {
    let mut written = 0;
    for (i, e) in shadow.iter().enumerate() {
        if let Some(at) = u16::try_from(i)
            .ok()
            .and_then(|i| msix_entry_address(table_pa, i))
        {
            write_msix_entry(mem, at, *e);
            written += 1;
        }
    }
    written
}

/// The physical address of `bdf`'s MSI-X table as currently programmed in
/// hardware (`None`: no MSI-X, an I/O or unprogrammed BAR).
pub fn msix_table_address<P: ConfigPort + ?Sized>(
    topo: &Topology,
    port: &mut P,
    bdf: Bdf,
) -> Option<u64> {
    let f = topo.function(bdf)?;
    if f.caps.msix == 0 {
        return None;
    }
    let table = port.read32(bdf, f.caps.msix as u16 + MSIX_TABLE);
    let bar = (table & MSIX_BIR_MASK) as u8;
    let slots = if f.kind.is_bridge() {
        BARS_TYPE1
    } else {
        BARS_TYPE0
    };
    if bar >= slots {
        return None;
    }
    let lo = port.read32(bdf, BAR0 + 4 * bar as u16);
    if lo == u32::MAX || lo & BAR_IO != 0 {
        return None;
    }
    let mut base = (lo & !BAR_MEM_FLAGS) as u64;
    if lo & BAR_MEM_TYPE_MASK == BAR_MEM_64 && bar + 1 < slots {
        base |= (port.read32(bdf, BAR0 + 4 * (bar as u16 + 1)) as u64) << 32;
    }
    (base != 0).then(|| base.wrapping_add((table & !MSIX_BIR_MASK) as u64))
}

/// Config space and BAR memory as one object, for callers that hold them
/// separately (the hypervisor's ECAM and its device mappings).
#[derive(Debug)]
pub struct Hw<'a, P: ?Sized, M: ?Sized> {
    pub config: &'a mut P,
    pub memory: &'a mut M,
}

impl<P: ConfigPort + ?Sized, M: ?Sized> ConfigPort for Hw<'_, P, M> {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        self.config.read32(bdf, offset)
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        self.config.write32(bdf, offset, value)
    }
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        self.config.write16(bdf, offset, value)
    }
    fn write8(&mut self, bdf: Bdf, offset: u16, value: u8) {
        self.config.write8(bdf, offset, value)
    }
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        self.config.read16(bdf, offset)
    }
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        self.config.read8(bdf, offset)
    }
}

impl<P: ?Sized, M: MemoryPort + ?Sized> MemoryPort for Hw<'_, P, M> {
    fn read(&mut self, pa: u64, width: u16) -> u64 {
        self.memory.read(pa, width)
    }
    fn write(&mut self, pa: u64, width: u16, value: u64) {
        self.memory.write(pa, width, value)
    }
}
