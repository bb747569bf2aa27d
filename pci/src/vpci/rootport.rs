//! The virtual root port above each assigned unit: a type 1 header whose
//! every register is virtual storage with hardware-like masks. The physical
//! bridges are never touched by a guest.
//!
//! Layout: header; PCIe capability (Root Port, slot implemented with a
//! present card, link up) at 0x40; AER at 0x100 as plain storage for now.

use crate::regs::*;

/// Vendor/device of the virtual root port: QEMU's `pcie-root-port`, which
/// Linux drives with the generic port driver.
pub const ROOT_PORT_VENDOR: u16 = 0x1b36;
pub const ROOT_PORT_DEVICE: u16 = 0x000c;
const CLASS_BRIDGE_PCI: u32 = 0x060400 << 8;

/// Offset of the PCIe capability in the virtual root port.
pub const RP_PCIE: u16 = 0x40;
/// Offset of the AER capability in the virtual root port.
pub const RP_AER: u16 = 0x100;
/// Bytes of modelled config space; beyond reads 0.
pub const RP_SIZE: usize = 0x140;

const AER_UNCOR_BITS: u32 = 0x07ff_f030;
const AER_COR_BITS: u32 = 0xf1c1;

/// Reset contents and masks, shared by every root port of a bus.
#[derive(Debug)]
pub(crate) struct RootPortTemplate {
    pub init: [u8; RP_SIZE],
    pub wmask: [u8; RP_SIZE],
    pub w1c: [u8; RP_SIZE],
}

fn put(buf: &mut [u8; RP_SIZE], off: u16, bytes: &[u8]) {
    let off = off as usize;
    if let Some(dst) = buf.get_mut(off..off + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

impl RootPortTemplate {
    pub fn new() -> Self {
        let mut t = Self {
            init: [0; RP_SIZE],
            wmask: [0; RP_SIZE],
            w1c: [0; RP_SIZE],
        };
        let v16 = |b: &mut [u8; RP_SIZE], o: u16, v: u16| put(b, o, &v.to_le_bytes());
        let v32 = |b: &mut [u8; RP_SIZE], o: u16, v: u32| put(b, o, &v.to_le_bytes());
        // Header.
        v16(&mut t.init, VENDOR_ID, ROOT_PORT_VENDOR);
        v16(&mut t.init, DEVICE_ID, ROOT_PORT_DEVICE);
        v16(&mut t.wmask, COMMAND, 0x0547);
        v16(&mut t.init, STATUS, STATUS_CAP_LIST);
        v16(&mut t.w1c, STATUS, 0xf900);
        v32(&mut t.init, CLASS_REVISION, CLASS_BRIDGE_PCI);
        t.wmask[0x0c] = 0xff; // cache line size
        t.init[HEADER_TYPE as usize] = HEADER_TYPE_BRIDGE;
        // BARs: none. Bus numbers and secondary latency timer: writable.
        v32(&mut t.wmask, PRIMARY_BUS, u32::MAX);
        // No I/O window (ARM guests have no I/O space): base/limit read 0.
        v16(&mut t.w1c, SECONDARY_STATUS, 0xf900);
        v32(&mut t.wmask, MEMORY_BASE, 0xfff0_fff0);
        // Prefetchable window: 64-bit capable.
        v32(&mut t.init, PREF_MEMORY_BASE, 0x0001_0001);
        v32(&mut t.wmask, PREF_MEMORY_BASE, 0xfff0_fff0);
        v32(&mut t.wmask, PREF_BASE_UPPER, u32::MAX);
        v32(&mut t.wmask, PREF_LIMIT_UPPER, u32::MAX);
        t.init[CAP_PTR as usize] = RP_PCIE as u8;
        t.wmask[INTERRUPT_LINE as usize] = 0xff;
        // INTA: the AER interrupt (Linux's port driver without MSI).
        t.init[INTERRUPT_PIN as usize] = 1;
        // Parity, SERR, ISA, VGA, VGA16, master abort mode, SBR.
        v16(&mut t.wmask, BRIDGE_CONTROL, 0x007f);

        // PCIe capability, version 2, Root Port, slot implemented.
        let p = RP_PCIE;
        v16(&mut t.init, p, CAP_ID_PCIE as u16);
        v16(
            &mut t.init,
            p + PCIE_FLAGS,
            2 | ((PCIE_TYPE_ROOT_PORT as u16) << PCIE_FLAGS_TYPE_SHIFT) | PCIE_FLAGS_SLOT,
        );
        // Device capabilities: role-based error reporting, 128-byte payload.
        v32(&mut t.init, p + PCIE_DEVCAP, 1 << 15);
        v16(&mut t.init, p + PCIE_DEVCTL, 0x0010);
        v16(&mut t.wmask, p + PCIE_DEVCTL, 0x7fff);
        v16(&mut t.w1c, p + PCIE_DEVSTA, 0x000f);
        // Link: x1 2.5 GT/s, Data Link Layer Link Active Reporting capable,
        // link up.
        v32(&mut t.init, p + PCIE_LNKCAP, 0x0010_0011);
        // Link Control: ASPM, RCB, Common Clock, Extended Synch, ...;
        // Retrain Link (bit 5) always reads 0, so it is not stored.
        v16(&mut t.wmask, p + PCIE_LNKCTL, 0x0fdb);
        v16(&mut t.init, p + PCIE_LNKSTA, 0x0011 | PCIE_LNKSTA_DLLLA);
        // Slot: no hot-plug; a card is present.
        v16(&mut t.init, p + PCIE_SLTSTA, PCIE_SLTSTA_PDS);
        v16(&mut t.w1c, p + PCIE_SLTSTA, 0x011f);
        // Root control: error reporting enables, PME interrupt enable.
        v16(&mut t.wmask, p + PCIE_RTCTL, 0x000f);
        v32(&mut t.w1c, p + PCIE_RTSTA, 1 << 16);
        v16(&mut t.wmask, p + PCIE_DEVCTL2, 0x041f);
        v32(&mut t.init, p + 0x2c, 0x2); // link capabilities 2: 2.5 GT/s
        v16(&mut t.init, p + 0x30, 0x1); // link control 2: target 2.5 GT/s
        v16(&mut t.wmask, p + 0x30, 0x000f);

        // AER, version 2, last extended capability.
        let a = RP_AER;
        v32(&mut t.init, a, EXT_CAP_ID_AER as u32 | (2 << 16));
        v32(&mut t.w1c, a + AER_UNCOR_STATUS, AER_UNCOR_BITS);
        v32(&mut t.wmask, a + AER_UNCOR_MASK, AER_UNCOR_BITS);
        v32(&mut t.init, a + AER_UNCOR_SEVER, 0x0046_2030);
        v32(&mut t.wmask, a + AER_UNCOR_SEVER, AER_UNCOR_BITS);
        v32(&mut t.w1c, a + AER_COR_STATUS, AER_COR_BITS);
        v32(&mut t.init, a + AER_COR_MASK, 0x2000);
        v32(&mut t.wmask, a + AER_COR_MASK, AER_COR_BITS);
        v32(&mut t.wmask, a + AER_CAP_CTRL, 0x140);
        v32(&mut t.wmask, a + AER_ROOT_COMMAND, 0x7);
        v32(
            &mut t.w1c,
            a + AER_ROOT_STATUS,
            crate::aer::virtual_regs::ROOT_STATUS_W1C,
        );
        t
    }
}

/// One virtual root port's registers.
#[derive(Clone, Debug)]
pub(crate) struct VirtualRootPort {
    pub cfg: [u8; RP_SIZE],
    /// Surprise-removed by the AER recovery: nothing routes below.
    pub removed: bool,
}

impl VirtualRootPort {
    pub fn new(t: &RootPortTemplate) -> Self {
        Self {
            cfg: t.init,
            removed: false,
        }
    }

    pub fn read(&self, reg: u16, width: u16) -> u32 {
        let mut v = 0u32;
        for i in 0..width {
            let b = self
                .cfg
                .get(reg.saturating_add(i) as usize)
                .copied()
                .unwrap_or(0);
            v |= (b as u32) << (8 * i);
        }
        v
    }

    /// Byte-lane write with the template's masks.
    pub fn write(&mut self, t: &RootPortTemplate, reg: u16, width: u16, value: u32) {
        for i in 0..width {
            let o = reg.saturating_add(i) as usize;
            let (Some(cur), Some(&wm), Some(&c)) =
                (self.cfg.get(o).copied(), t.wmask.get(o), t.w1c.get(o))
            else {
                continue;
            };
            let v = (value >> (8 * i)) as u8;
            if let Some(slot) = self.cfg.get_mut(o) {
                *slot = ((cur & !wm) | (v & wm)) & !(v & c);
            }
        }
    }

    pub fn secondary(&self) -> u8 {
        self.cfg[SECONDARY_BUS as usize]
    }

    pub fn subordinate(&self) -> u8 {
        self.cfg[SUBORDINATE_BUS as usize]
    }

    pub fn sbr(&self) -> bool {
        self.read(BRIDGE_CONTROL, 2) as u16 & BRIDGE_CONTROL_SBR != 0
    }

    /// The secondary bus, if the guest programmed a usable range.
    pub fn routed_bus(&self) -> Option<u8> {
        let (sec, sub) = (self.secondary(), self.subordinate());
        (sec != 0 && sec <= sub && !self.removed).then_some(sec)
    }

    /// The virtual AER capability's storage (`crate::aer::virtual_regs`).
    pub fn aer_mut(&mut self) -> crate::aer::virtual_regs::AerBytes<'_> {
        crate::aer::virtual_regs::AerBytes::new(
            self.cfg.get_mut(RP_AER as usize..).unwrap_or_default(),
        )
    }

    /// Surprise removal of the card below: Presence Detect and Data Link
    /// Layer Link Active clear, their change bits set, Surprise Down in the
    /// port's own uncorrectable status; nothing below routes any more.
    pub fn surprise_remove(&mut self) {
        self.removed = true;
        let slt = RP_PCIE + PCIE_SLTSTA;
        let v = self.read(slt, 2) as u16;
        // Presence Detect Changed (3), Data Link Layer State Changed (8).
        put(
            &mut self.cfg,
            slt,
            &((v & !PCIE_SLTSTA_PDS) | (1 << 3) | (1 << 8)).to_le_bytes(),
        );
        let lnk = RP_PCIE + PCIE_LNKSTA;
        let v = self.read(lnk, 2) as u16;
        put(&mut self.cfg, lnk, &(v & !PCIE_LNKSTA_DLLLA).to_le_bytes());
        use crate::aer::virtual_regs::AerStorage;
        let mut a = self.aer_mut();
        let u = a.get(AER_UNCOR_STATUS);
        a.set(AER_UNCOR_STATUS, u | crate::aer::UNCOR_SURPRISE_DOWN);
    }
}
