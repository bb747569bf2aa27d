//! Compact descriptions of simulated functions and their children.

use alloc::vec::Vec;

use crate::regs::*;

/// What a simulated function is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimKind {
    Endpoint,
    LegacyEndpoint,
    /// Root-complex integrated endpoint (lives on a root bus).
    Rciep,
    /// Root complex event collector.
    Rcec,
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    PcieToPciBridge,
    /// Conventional PCI function (no PCIe capability).
    Conventional,
    /// Conventional PCI-to-PCI bridge (no PCIe capability).
    ConventionalBridge,
}

impl SimKind {
    pub const fn is_bridge(self) -> bool {
        matches!(
            self,
            Self::RootPort
                | Self::SwitchUpstream
                | Self::SwitchDownstream
                | Self::PcieToPciBridge
                | Self::ConventionalBridge
        )
    }

    pub const fn is_pcie(self) -> bool {
        !matches!(self, Self::Conventional | Self::ConventionalBridge)
    }

    /// PCIe Device/Port Type field value.
    pub(crate) const fn pcie_type(self) -> u8 {
        match self {
            Self::Endpoint | Self::Conventional | Self::ConventionalBridge => PCIE_TYPE_ENDPOINT,
            Self::LegacyEndpoint => PCIE_TYPE_LEGACY_ENDPOINT,
            Self::Rciep => PCIE_TYPE_RCIEP,
            Self::Rcec => PCIE_TYPE_RCEC,
            Self::RootPort => PCIE_TYPE_ROOT_PORT,
            Self::SwitchUpstream => PCIE_TYPE_UPSTREAM,
            Self::SwitchDownstream => PCIE_TYPE_DOWNSTREAM,
            Self::PcieToPciBridge => PCIE_TYPE_PCIE_TO_PCI,
        }
    }
}

/// A BAR of a simulated function. Sizes are powers of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SimBar {
    #[default]
    None,
    Mem32(u32),
    /// Takes two BAR slots.
    Mem64(u64),
    Io(u32),
}

/// ACS capability of a simulated function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimAcs {
    /// ACS Capability register.
    pub cap: u16,
    /// ACS Control register at reset.
    pub ctrl: u16,
}

/// How a function answers config reads while it is not ready after a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotReady {
    /// RRS completions: vendor id 0x0001 when the root port has RRS Software
    /// Visibility enabled, all-ones otherwise (what hardware does).
    Rrs,
    /// All-ones whatever the root port says.
    AllOnes,
}

/// Readiness of a function after a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimReadiness {
    /// Nanoseconds after the reset ends before the function answers.
    pub delay_ns: u64,
    pub mode: NotReady,
    /// Never answers again after a reset (fault tests).
    pub never: bool,
}

impl Default for SimReadiness {
    fn default() -> Self {
        Self {
            delay_ns: 0,
            mode: NotReady::Rrs,
            never: false,
        }
    }
}

/// SR-IOV capability of a physical function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimSriov {
    pub total_vfs: u16,
    pub vf_device: u16,
    pub first_vf_offset: u16,
    pub vf_stride: u16,
}

/// One function's own properties (everything but its children).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FnSpec {
    pub kind: SimKind,
    pub vendor: u16,
    pub device: u16,
    /// Class code (24 bits) << 8 | revision.
    pub class_rev: u32,
    pub bars: [SimBar; 6],
    pub acs: Option<SimAcs>,
    pub flr: bool,
    pub af_flr: bool,
    /// PM capability; `Some(no_soft_reset)`.
    pub pm: Option<bool>,
    pub msi: bool,
    /// MSI-X table size; the table lives at offset 0 of BAR `msix_bar`, the PBA at +0x800.
    pub msix: Option<u16>,
    pub msix_bar: u8,
    pub aer: bool,
    /// Ports: the slot is hot-plug capable.
    pub hotplug_slot: bool,
    /// Root ports: Configuration RRS Software Visibility capable.
    pub rrs_sv: bool,
    pub sriov: Option<SimSriov>,
    pub readiness: SimReadiness,
    /// Expansion ROM size (type 0 functions), a power of two >= 2 KiB.
    pub rom: Option<u32>,
    /// The Multi-Function bit of the header type. `None`: set on function 0
    /// of a slot that holds more functions, clear elsewhere (what QEMU gives
    /// `multifunction=on` on function 0 only, the usual command line; the
    /// spec defines the bit in function 0). `Some(on)`: exactly that (QEMU's
    /// `multifunction=` of this function, or hardware that sets the bit in
    /// every function, or a function 0 that leaves it clear).
    pub multifunction: Option<bool>,
    /// Vendor-specific capabilities (ID 9), after the others: each body
    /// from its length byte (offset 2) on, as the device has it (virtio's
    /// configuration structure pointers).
    pub vendor_caps: Vec<Vec<u8>>,
}

/// A function and, for bridges, the functions on its secondary bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub f: FnSpec,
    /// (devfn on the secondary bus, child).
    pub children: Vec<(u8, Spec)>,
}

const CLASS_BRIDGE_PCI: u32 = 0x060400 << 8;
const CLASS_ETHERNET: u32 = 0x020000 << 8;
const CLASS_NVME: u32 = 0x010802 << 8;
const CLASS_OTHER: u32 = 0xff0000 << 8;
const CLASS_RCEC: u32 = 0x080700 << 8;

/// ACS as QEMU's root and downstream ports offer it (`pcie_acs_init`:
/// SV|TB|RR|CR|UF|DT), all controls off at reset.
pub const ACS_QEMU: SimAcs = SimAcs {
    cap: ACS_SV | ACS_TB | ACS_RR | ACS_CR | ACS_UF | ACS_DT,
    ctrl: 0,
};
/// ACS with every isolation control present and already enabled.
pub const ACS_ENABLED: SimAcs = SimAcs {
    cap: ACS_ISOLATION,
    ctrl: ACS_ISOLATION,
};
/// ACS present with its controls hard-wired to 0 (advertises nothing).
pub const ACS_NONE_ADVERTISED: SimAcs = SimAcs { cap: 0, ctrl: 0 };

impl Spec {
    /// A function of `kind` with ids and sensible defaults for its kind.
    pub fn new(kind: SimKind, vendor: u16, device: u16) -> Self {
        let class_rev = match kind {
            k if k.is_bridge() => CLASS_BRIDGE_PCI,
            SimKind::Rcec => CLASS_RCEC,
            _ => CLASS_OTHER,
        };
        let endpoint = !kind.is_bridge();
        Self {
            f: FnSpec {
                kind,
                vendor,
                device,
                class_rev,
                bars: if endpoint {
                    [
                        SimBar::Mem32(0x1000),
                        SimBar::None,
                        SimBar::None,
                        SimBar::None,
                        SimBar::None,
                        SimBar::None,
                    ]
                } else {
                    [SimBar::None; 6]
                },
                acs: None,
                flr: false,
                af_flr: false,
                pm: Some(false),
                msi: false,
                msix: None,
                msix_bar: 0,
                aer: kind.is_pcie(),
                hotplug_slot: false,
                rrs_sv: kind == SimKind::RootPort,
                sriov: None,
                readiness: SimReadiness::default(),
                rom: None,
                multifunction: None,
                vendor_caps: Vec::new(),
            },
            children: Vec::new(),
        }
    }

    pub fn endpoint(vendor: u16, device: u16) -> Self {
        Self::new(SimKind::Endpoint, vendor, device).flr(true)
    }
    pub fn rciep(vendor: u16, device: u16) -> Self {
        Self::new(SimKind::Rciep, vendor, device).flr(true)
    }
    pub fn rcec(vendor: u16, device: u16) -> Self {
        Self::new(SimKind::Rcec, vendor, device)
    }
    /// A root port; ACS present (QEMU style, disabled at reset).
    pub fn root_port() -> Self {
        Self::qemu_root_port()
    }
    pub fn conventional(vendor: u16, device: u16) -> Self {
        Self::new(SimKind::Conventional, vendor, device)
    }

    // QEMU's own devices, with the ids and capabilities QEMU gives them.

    /// `pcie-root-port` (1b36:000c): ACS unless `disable-acs` (use
    /// `.acs(None)` for that), AER, hot-plug slot, RRS SV not advertised.
    pub fn qemu_root_port() -> Self {
        let mut s = Self::new(SimKind::RootPort, 0x1b36, 0x000c);
        s.f.acs = Some(ACS_QEMU);
        s.f.hotplug_slot = true;
        s.f.msix = Some(1);
        s.f.bars[0] = SimBar::Mem32(0x1000);
        s.f.pm = Some(false);
        s.f.rrs_sv = false;
        s
    }
    /// `x3130-upstream` (104c:8232): an ACS capability that advertises no
    /// control (QEMU gives upstream ports an empty one unless `disable-acs`).
    pub fn qemu_x3130_upstream() -> Self {
        let mut s = Self::new(SimKind::SwitchUpstream, 0x104c, 0x8232);
        s.f.acs = Some(ACS_NONE_ADVERTISED);
        s.f.msi = true;
        s
    }
    /// `xio3130-downstream` (104c:8233): hot-plug slot and no ACS capability,
    /// as QEMU 10 has it (`cargo xtask pci-report` on a switch shows its
    /// downstream ports and everything below them as one unit). Tests that
    /// want a switch with ACS add it with [`Spec::acs`].
    pub fn qemu_x3130_downstream() -> Self {
        let mut s = Self::new(SimKind::SwitchDownstream, 0x104c, 0x8233);
        s.f.acs = None;
        s.f.hotplug_slot = true;
        s.f.msi = true;
        s
    }
    /// `pcie-pci-bridge` (1b36:000e).
    pub fn qemu_pcie_pci_bridge() -> Self {
        let mut s = Self::new(SimKind::PcieToPciBridge, 0x1b36, 0x000e);
        s.f.bars[0] = SimBar::Mem64(0x100);
        s.f.msi = true;
        s.f.aer = false;
        s
    }
    /// `e1000e` (8086:10d3): BARs 128K/128K/io 32/16K, MSI-X in BAR3, no FLR, PM.
    pub fn qemu_e1000e() -> Self {
        let mut s = Self::new(SimKind::Endpoint, 0x8086, 0x10d3);
        s.f.class_rev = CLASS_ETHERNET;
        s.f.bars = [
            SimBar::Mem32(0x20000),
            SimBar::Mem32(0x20000),
            SimBar::Io(0x20),
            SimBar::Mem32(0x4000),
            SimBar::None,
            SimBar::None,
        ];
        s.f.msix = Some(5);
        s.f.msix_bar = 3;
        s.f.msi = true;
        s.f.pm = Some(false);
        s
    }
    /// `nvme` (1b36:0010): 64-bit BAR0 16K with the MSI-X table, FLR, PM.
    pub fn qemu_nvme() -> Self {
        let mut s = Self::new(SimKind::Endpoint, 0x1b36, 0x0010);
        s.f.class_rev = CLASS_NVME | 2;
        s.f.bars = [
            SimBar::Mem64(0x4000),
            SimBar::None,
            SimBar::None,
            SimBar::None,
            SimBar::None,
            SimBar::None,
        ];
        s.f.msix = Some(65);
        s.f.flr = true;
        s.f.pm = Some(false);
        s
    }

    /// A modern-only virtio-pci device as QEMU 10 builds it
    /// (`disable-legacy=on`): BAR1 (4K) holds the MSI-X table, BAR4 (16K,
    /// 64-bit) the virtio structures, which five vendor capabilities
    /// point to (common, ISR, device, notify, PCI config access), in
    /// QEMU's order.
    fn qemu_virtio(device: u16, class: u32, vectors: u16) -> Self {
        let mut s = Self::new(SimKind::Endpoint, 0x1af4, device);
        s.f.class_rev = class << 8 | 1;
        s.f.bars = [
            SimBar::None,
            SimBar::Mem32(0x1000),
            SimBar::None,
            SimBar::None,
            SimBar::Mem64(0x4000),
            SimBar::None,
        ];
        s.f.msix = Some(vectors);
        s.f.msix_bar = 1;
        s.f.pm = Some(false);
        // struct virtio_pci_cap from its cap_len: cap_len, cfg_type, bar,
        // id, padding[2], offset, length (+ notify_off_multiplier).
        let cap = |cfg_type: u8, bar: u8, offset: u32, length: u32, extra: Option<u32>| {
            let mut v = Vec::from([
                if extra.is_some() { 20 } else { 16 },
                cfg_type,
                bar,
                0,
                0,
                0,
            ]);
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(&length.to_le_bytes());
            if let Some(x) = extra {
                v.extend_from_slice(&x.to_le_bytes());
            }
            v
        };
        s.f.vendor_caps = Vec::from([
            cap(1, 4, 0x0000, 0x1000, None),
            cap(3, 4, 0x1000, 0x1000, None),
            cap(4, 4, 0x2000, 0x1000, None),
            cap(2, 4, 0x3000, 0x1000, Some(4)),
            cap(5, 0, 0, 0, Some(0)),
        ]);
        s
    }
    /// `virtio-blk-pci,disable-legacy=on` (1af4:1042).
    pub fn qemu_virtio_blk() -> Self {
        Self::qemu_virtio(0x1042, 0x010000, 2)
    }
    /// `virtio-net-pci,disable-legacy=on` (1af4:1041).
    pub fn qemu_virtio_net() -> Self {
        Self::qemu_virtio(0x1041, 0x020000, 3)
    }

    // Builder helpers.

    pub fn acs(mut self, acs: Option<SimAcs>) -> Self {
        self.f.acs = acs;
        self
    }
    pub fn flr(mut self, on: bool) -> Self {
        self.f.flr = on;
        self
    }
    pub fn af_flr(mut self, on: bool) -> Self {
        self.f.af_flr = on;
        self
    }
    /// PM capability: `None` absent, `Some(no_soft_reset)`.
    pub fn pm(mut self, pm: Option<bool>) -> Self {
        self.f.pm = pm;
        self
    }
    pub fn msix(mut self, entries: Option<u16>, bar: u8) -> Self {
        self.f.msix = entries;
        self.f.msix_bar = bar;
        self
    }
    pub fn bars(mut self, bars: [SimBar; 6]) -> Self {
        self.f.bars = bars;
        self
    }
    pub fn hotplug_slot(mut self, on: bool) -> Self {
        self.f.hotplug_slot = on;
        self
    }
    pub fn rrs_sv(mut self, on: bool) -> Self {
        self.f.rrs_sv = on;
        self
    }
    pub fn aer(mut self, on: bool) -> Self {
        self.f.aer = on;
        self
    }
    pub fn sriov(mut self, total_vfs: u16, vf_device: u16) -> Self {
        self.f.sriov = Some(SimSriov {
            total_vfs,
            vf_device,
            first_vf_offset: 1,
            vf_stride: 1,
        });
        self
    }
    /// An expansion ROM of `size` bytes.
    pub fn rom(mut self, size: u32) -> Self {
        self.f.rom = Some(size);
        self
    }
    pub fn readiness(mut self, readiness: SimReadiness) -> Self {
        self.f.readiness = readiness;
        self
    }
    /// Sets or clears this function's Multi-Function header bit, whatever
    /// its slot holds (see [`FnSpec::multifunction`]).
    pub fn multifunction(mut self, on: bool) -> Self {
        self.f.multifunction = Some(on);
        self
    }
    /// Adds a child at `device.function` of this bridge's secondary bus.
    pub fn child(mut self, device: u8, function: u8, child: Spec) -> Self {
        self.children
            .push((((device & 0x1f) << 3) | (function & 7), child));
        self
    }
}
