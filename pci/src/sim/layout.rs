//! Builds the reset-state config space of a simulated function, with the
//! masks that make it behave like hardware (read-only, writable, RW1C bits).

use alloc::boxed::Box;
use alloc::vec;

use super::spec::{FnSpec, SimBar, SimKind};
use crate::regs::*;

/// Offsets of the capabilities a template contains (0 = absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    pub pm: u16,
    pub msi: u16,
    pub pcie: u16,
    pub msix: u16,
    pub af: u16,
    pub aer: u16,
    pub acs: u16,
    pub ari: u16,
    pub sriov: u16,
}

/// Reset-state contents and masks of one kind of function; shared by every
/// function built from the same description, so a big fabric stays small.
#[derive(Debug)]
pub(crate) struct Template {
    pub spec: FnSpec,
    pub multifunction: bool,
    pub vf: bool,
    pub defaults: Box<[u8]>,
    pub wmask: Box<[u8]>,
    pub w1c: Box<[u8]>,
    pub layout: Layout,
    pub msix_entries: u16,
}

struct Builder {
    cfg: Box<[u8]>,
    wmask: Box<[u8]>,
    w1c: Box<[u8]>,
}

impl Builder {
    fn put(buf: &mut [u8], off: u16, bytes: &[u8]) {
        let off = off as usize;
        if let Some(dst) = buf.get_mut(off..off + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    fn v8(&mut self, off: u16, v: u8) {
        Self::put(&mut self.cfg, off, &[v]);
    }
    fn v16(&mut self, off: u16, v: u16) {
        Self::put(&mut self.cfg, off, &v.to_le_bytes());
    }
    fn v32(&mut self, off: u16, v: u32) {
        Self::put(&mut self.cfg, off, &v.to_le_bytes());
    }
    fn w16(&mut self, off: u16, m: u16) {
        Self::put(&mut self.wmask, off, &m.to_le_bytes());
    }
    fn w32(&mut self, off: u16, m: u32) {
        Self::put(&mut self.wmask, off, &m.to_le_bytes());
    }
    fn c16(&mut self, off: u16, m: u16) {
        Self::put(&mut self.w1c, off, &m.to_le_bytes());
    }
    fn c32(&mut self, off: u16, m: u32) {
        Self::put(&mut self.w1c, off, &m.to_le_bytes());
    }
}

const AER_UNCOR_BITS: u32 = 0x07ff_f030;
const AER_COR_BITS: u32 = 0xf1c1;

pub(crate) fn build(spec: &FnSpec, multifunction: bool, vf: bool) -> Template {
    let kind = spec.kind;
    let bridge = kind.is_bridge() && !vf;
    let pcie = kind.is_pcie() || vf;
    let port = matches!(kind, SimKind::RootPort | SimKind::SwitchDownstream) && !vf;

    // Plan the capability lists first so we know the size.
    let mut layout = Layout::default();
    let mut next = CAP_START;
    let mut std_caps: heapless_list::List = heapless_list::List::default();
    if spec.pm.is_some() && !vf {
        layout.pm = next;
        std_caps.push(CAP_ID_PM, next);
        next += PM_CAP_SIZE;
    }
    if spec.msi && !vf {
        layout.msi = next;
        std_caps.push(CAP_ID_MSI, next);
        next += 0x10;
    }
    if pcie {
        layout.pcie = next;
        std_caps.push(CAP_ID_PCIE, next);
        next += 0x40;
    }
    if spec.msix.is_some() {
        layout.msix = next;
        std_caps.push(CAP_ID_MSIX, next);
        next += MSIX_CAP_SIZE;
    }
    if spec.af_flr && !vf {
        layout.af = next;
        std_caps.push(CAP_ID_AF, next);
        next += 8;
    }
    let vendor_first = std_caps.len;
    if !vf {
        for body in &spec.vendor_caps {
            std_caps.push(CAP_ID_VENDOR, next);
            next += (2 + body.len() as u16).next_multiple_of(4);
        }
    }
    let _ = next;
    let mut ext = EXT_CAP_START;
    let mut ext_caps: heapless_list::List = heapless_list::List::default();
    if pcie && !vf {
        if spec.aer {
            layout.aer = ext;
            ext_caps.push(EXT_CAP_ID_AER as u8, ext);
            ext += 0x40;
        }
        if spec.acs.is_some() {
            layout.acs = ext;
            ext_caps.push(EXT_CAP_ID_ACS as u8, ext);
            ext += ACS_CAP_SIZE;
        }
        if spec.sriov.is_some() {
            layout.ari = ext;
            ext_caps.push(EXT_CAP_ID_ARI as u8, ext);
            ext += ARI_CAP_SIZE;
            layout.sriov = ext;
            ext_caps.push(EXT_CAP_ID_SRIOV as u8, ext);
            ext += SRIOV_CAP_SIZE;
        }
    }
    let len = if ext_caps.len == 0 {
        0x100
    } else {
        ext as usize
    };
    let mut b = Builder {
        cfg: vec![0u8; len].into_boxed_slice(),
        wmask: vec![0u8; len].into_boxed_slice(),
        w1c: vec![0u8; len].into_boxed_slice(),
    };

    // Header.
    if vf {
        b.v32(VENDOR_ID, u32::MAX);
    } else {
        b.v16(VENDOR_ID, spec.vendor);
        b.v16(DEVICE_ID, spec.device);
    }
    b.w16(
        COMMAND,
        if vf {
            COMMAND_BUS_MASTER
        } else {
            COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | 0x0140 | COMMAND_INTX_DISABLE
        },
    );
    if std_caps.len != 0 {
        b.v16(STATUS, STATUS_CAP_LIST);
    }
    b.c16(STATUS, 0xf900);
    b.v32(CLASS_REVISION, spec.class_rev);
    b.w16(0x0c, 0x00ff);
    let mut header = if bridge {
        HEADER_TYPE_BRIDGE
    } else {
        HEADER_TYPE_NORMAL
    };
    if multifunction {
        header |= HEADER_TYPE_MULTIFUNCTION;
    }
    b.v8(HEADER_TYPE, header);
    let nbars = if bridge { BARS_TYPE1 } else { BARS_TYPE0 };
    if !vf {
        let mut i = 0;
        while i < nbars {
            let off = BAR0 + 4 * i as u16;
            match spec.bars[i as usize] {
                SimBar::None => {}
                SimBar::Mem32(size) => b.w32(off, !(size.max(16) - 1)),
                SimBar::Io(size) => {
                    b.v32(off, BAR_IO);
                    b.w32(off, !(size.max(4) - 1));
                }
                SimBar::Mem64(size) => {
                    let mask = !(size.max(16) - 1);
                    b.v32(off, BAR_MEM_64);
                    b.w32(off, mask as u32 & !0xf);
                    if i + 1 < nbars {
                        b.w32(off + 4, (mask >> 32) as u32);
                    }
                    i += 1;
                }
            }
            i += 1;
        }
    }
    if bridge {
        b.w32(PRIMARY_BUS, 0xffff_ffff);
        b.w16(0x1c, 0xf0f0);
        b.c16(0x1e, 0xf900);
        b.w32(0x20, 0xfff0_fff0);
        b.v32(0x24, 0x0001_0001);
        b.w32(0x24, 0xfff0_fff0);
        b.w32(0x28, u32::MAX);
        b.w32(0x2c, u32::MAX);
        b.w16(BRIDGE_CONTROL, 0x0fff);
    } else {
        b.v16(0x2c, spec.vendor);
        b.v16(0x2e, spec.device);
        if !vf {
            b.v8(0x3d, 1);
        }
    }
    b.w16(INTERRUPT_LINE, 0x00ff);
    if let (Some(size), false, false) = (spec.rom, bridge, vf) {
        b.w32(
            ROM_BAR,
            (!(size.max(0x800) - 1) & ROM_ADDRESS_MASK) | ROM_ENABLE,
        );
    }
    b.v8(CAP_PTR, std_caps.first());

    // Standard capabilities.
    for i in 0..std_caps.len {
        let (id, off) = std_caps.items[i];
        let next = std_caps.items.get(i + 1).map_or(0, |n| n.1) as u8;
        b.v8(off, id);
        b.v8(off + 1, if i + 1 < std_caps.len { next } else { 0 });
        if id == CAP_ID_VENDOR
            && let Some(body) = i
                .checked_sub(vendor_first)
                .and_then(|v| spec.vendor_caps.get(v))
        {
            for (k, &byte) in body.iter().enumerate() {
                b.v8(off + 2 + k as u16, byte);
            }
        }
        match id {
            CAP_ID_PM => {
                b.v16(off + PM_PMC, 0x0003);
                let nsr = spec.pm == Some(true);
                b.v16(off + PM_CTRL, if nsr { PM_CTRL_NO_SOFT_RESET } else { 0 });
                b.w16(off + PM_CTRL, PM_CTRL_STATE_MASK | 0x0100);
                b.c16(off + PM_CTRL, 0x8000);
            }
            CAP_ID_MSI => {
                b.v16(off + MSI_FLAGS, MSI_FLAGS_64BIT);
                b.w16(off + MSI_FLAGS, MSI_FLAGS_ENABLE | 0x0070);
                b.w32(off + 4, 0xffff_fffc);
                b.w32(off + 8, u32::MAX);
                b.w16(off + 0x0c, 0xffff);
            }
            CAP_ID_PCIE => {
                let mut flags = 2 | ((kind.pcie_type() as u16) << PCIE_FLAGS_TYPE_SHIFT);
                if vf {
                    flags = 2;
                }
                if port && spec.hotplug_slot {
                    flags |= PCIE_FLAGS_SLOT;
                }
                b.v16(off + PCIE_FLAGS, flags);
                let mut devcap = 1 << 15;
                if spec.flr || vf {
                    devcap |= PCIE_DEVCAP_FLR;
                }
                b.v32(off + PCIE_DEVCAP, devcap);
                b.v16(off + PCIE_DEVCTL, 0x2810);
                b.w16(off + PCIE_DEVCTL, 0x7fff);
                b.c16(off + PCIE_DEVSTA, 0x000f);
                b.v32(off + PCIE_LNKCAP, 0x0010_0011);
                // Retrain Link (bit 5) always reads 0.
                b.w16(off + PCIE_LNKCTL, 0x0fdf);
                b.v16(
                    off + PCIE_LNKSTA,
                    0x0011 | if port { PCIE_LNKSTA_DLLLA } else { 0 },
                );
                if port && spec.hotplug_slot {
                    b.v32(off + PCIE_SLTCAP, PCIE_SLTCAP_HPC | 0x20);
                    b.w16(off + PCIE_SLTCTL, 0x1fff);
                    b.v16(off + PCIE_SLTCTL + 2, 0x0040);
                    b.c16(off + PCIE_SLTCTL + 2, 0x011f);
                }
                if kind == SimKind::RootPort && !vf {
                    b.w16(
                        off + PCIE_RTCTL,
                        0x000f | if spec.rrs_sv { PCIE_RTCTL_RRS_SVE } else { 0 },
                    );
                    if spec.rrs_sv {
                        b.v16(off + PCIE_RTCAP, PCIE_RTCAP_RRS_SV);
                    }
                    b.c32(off + 0x20, 1 << 16);
                }
                if port {
                    b.v32(off + PCIE_DEVCAP2, 1 << 5);
                }
                b.w16(off + PCIE_DEVCTL2, 0xffff);
                b.w16(off + 0x30, 0xffff);
            }
            CAP_ID_MSIX => {
                let entries = spec.msix.unwrap_or(1).clamp(1, 2048);
                b.v16(off + MSIX_FLAGS, entries - 1);
                b.w16(off + MSIX_FLAGS, MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL);
                let bir = (spec.msix_bar & 7) as u32;
                b.v32(off + MSIX_TABLE, bir);
                b.v32(off + MSIX_PBA, bir | 0x800);
            }
            CAP_ID_AF => {
                b.v8(off + 2, AF_CAP_SIZE as u8);
                b.v8(off + AF_CAP, AF_CAP_TP | AF_CAP_FLR);
            }
            _ => {}
        }
    }

    // Extended capabilities.
    for i in 0..ext_caps.len {
        let (id, off) = ext_caps.items[i];
        let next = if i + 1 < ext_caps.len {
            ext_caps.items[i + 1].1 as u32
        } else {
            0
        };
        let version = if id as u16 == EXT_CAP_ID_AER { 2 } else { 1 };
        b.v32(off, id as u32 | (version << 16) | (next << 20));
        match id as u16 {
            EXT_CAP_ID_AER => {
                b.c32(off + AER_UNCOR_STATUS, AER_UNCOR_BITS);
                b.w32(off + AER_UNCOR_MASK, AER_UNCOR_BITS);
                b.v32(off + AER_UNCOR_SEVER, 0x0046_2030);
                b.w32(off + AER_UNCOR_SEVER, AER_UNCOR_BITS);
                b.c32(off + AER_COR_STATUS, AER_COR_BITS);
                b.v32(off + AER_COR_MASK, 0x2000);
                b.w32(off + AER_COR_MASK, AER_COR_BITS);
                b.v32(off + AER_CAP_CTRL, 0xa0);
                b.w32(off + AER_CAP_CTRL, 0x140);
                if kind == SimKind::RootPort {
                    b.w32(off + AER_ROOT_COMMAND, 0x7);
                    b.c32(off + AER_ROOT_STATUS, 0x7f);
                }
            }
            EXT_CAP_ID_ACS => {
                let acs = spec.acs.unwrap_or(super::spec::ACS_NONE_ADVERTISED);
                b.v16(off + ACS_CAP, acs.cap);
                b.v16(off + ACS_CTRL, acs.ctrl & acs.cap);
                b.w16(off + ACS_CTRL, acs.cap & 0x7f);
            }
            EXT_CAP_ID_ARI => {}
            EXT_CAP_ID_SRIOV => {
                let s = spec.sriov.unwrap_or(super::spec::SimSriov {
                    total_vfs: 0,
                    vf_device: 0,
                    first_vf_offset: 1,
                    vf_stride: 1,
                });
                b.w16(off + SRIOV_CTRL, 0x001f);
                b.v16(off + SRIOV_INITIAL_VF, s.total_vfs);
                b.v16(off + SRIOV_TOTAL_VF, s.total_vfs);
                b.w16(off + SRIOV_NUM_VF, 0xffff);
                b.v16(off + SRIOV_VF_OFFSET, s.first_vf_offset);
                b.v16(off + SRIOV_VF_STRIDE, s.vf_stride);
                b.v16(off + SRIOV_VF_DID, s.vf_device);
                b.v32(off + SRIOV_SUP_PGSIZE, 0x553);
                b.v32(off + SRIOV_SYS_PGSIZE, 1);
                b.w32(off + SRIOV_SYS_PGSIZE, 0x553);
                b.w32(off + SRIOV_BAR0, !0xfff);
            }
            _ => {}
        }
    }

    Template {
        spec: spec.clone(),
        multifunction,
        vf,
        defaults: b.cfg,
        wmask: b.wmask,
        w1c: b.w1c,
        layout,
        msix_entries: spec.msix.map_or(0, |n| n.clamp(1, 2048)),
    }
}

/// A tiny fixed list, to plan capability chains without allocating.
mod heapless_list {
    #[derive(Default)]
    pub struct List {
        pub items: [(u8, u16); 16],
        pub len: usize,
    }
    impl List {
        pub fn push(&mut self, id: u8, off: u16) {
            if let Some(slot) = self.items.get_mut(self.len) {
                *slot = (id, off);
                self.len += 1;
            }
        }
        pub fn first(&self) -> u8 {
            if self.len == 0 {
                0
            } else {
                self.items[0].1 as u8
            }
        }
    }
}
