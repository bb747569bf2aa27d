//! Platform description discovered from the boot device tree.
//!
//! [`Platform::from_fdt`] turns a flattened device tree into a [`Platform`]:
//! what the hypervisor needs to know about the machine, with nothing assumed.
//! [`VmConfig`]s come from the dom0less-style nodes under `/chosen`
//! (see `docs/interfaces.md`).
//!
//! The blob is parsed by our own bounds-checked reader (`src/blob.rs`) rather than
//! the `fdt` crate, which panics on malformed input: the boot DTB is input
//! this crate must survive whatever it contains.
#![no_std]
// Hostile input must never panic: keep the panicking shortcuts out of the
// library code (tests may use them).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

extern crate alloc;

mod blob;
mod discover;
mod dt;
mod gic;
pub mod gic_driver;
mod pcie;
mod vm;

use alloc::string::String;
use alloc::vec::Vec;

pub use blob::BlobError;

/// JSON shows addresses, sizes and MPIDRs as "0x..." strings: what a user
/// compares against a datasheet or a DTS (JSON numbers have no hex form).
#[cfg(feature = "serde")]
mod hex {
    use core::fmt::LowerHex;

    use serde::Serializer;

    pub fn serialize<S: Serializer, T: LowerHex>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{value:#x}"))
    }

    pub fn serialize_option<S: Serializer, T: LowerHex>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// Not hex: a value shown as its message (errors).
    pub fn serialize_display<S: Serializer, T: core::fmt::Display>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn serialize_pair<S: Serializer, T: LowerHex>(
        value: &(T, T),
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&format_args!("{:#x}", value.0))?;
        tuple.serialize_element(&format_args!("{:#x}", value.1))?;
        tuple.end()
    }
}

/// A physical address range `[base, base + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Region {
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub base: u64,
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub size: u64,
}

impl Region {
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }
    /// One past the last byte (saturating).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }
    pub const fn overlaps(&self, other: &Region) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

/// Everything the hypervisor discovered about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Platform {
    /// `/model` or `/compatible[0]`, for the boot report.
    pub model: String,
    /// RAM ranges from every `device_type = "memory"` node, sorted, merged.
    pub memory: Vec<Region>,
    /// `/memreserve/` entries and `/reserved-memory` children with a `reg`.
    pub reserved: Vec<Region>,
    /// CPUs in DTB order.
    pub cpus: Vec<Cpu>,
    pub gic: Gic,
    /// The console UART (from `/chosen/stdout-path`, else the first PL011).
    pub uart: Option<Uart>,
    pub timer: Timer,
    pub psci: Option<Psci>,
    pub pci_host_bridges: Vec<PciHostBridge>,
    /// Host bridge nodes that could not be described (e.g. an
    /// `interrupt-map` whose entries do not parse, as in Debian's ipq8074
    /// DTBs), each with its reason. The hypervisor maps none of them and
    /// describes none to a VM, so their devices stay unused; the rest of the
    /// machine boots.
    pub refused_host_bridges: Vec<RefusedHostBridge>,
    /// VMs described under `/chosen` (empty if none).
    pub vms: Vec<VmConfig>,
    /// `/chosen/phv,exit`.
    pub exit_method: ExitMethod,
    /// `/chosen/phv,aer-storm = <threshold window_ms>`: more than
    /// `threshold` correctable (or non-fatal) AER errors of one function
    /// within `window_ms` are a storm, masked until its next reset (`None`:
    /// the hypervisor's default, 32 within 1000 ms).
    pub aer_storm: Option<AerStorm>,
    /// `/chosen/phv,test-hypervisor-bugs`: the hardware domain may make the
    /// hypervisor fault or panic on purpose (TEST_HYPERVISOR_BUG), so that
    /// tests can check that a hypervisor bug stops the whole system. Only a
    /// test's boot DTB has it: whoever writes the boot DTB is as trusted as
    /// the hypervisor image.
    pub test_hypervisor_bugs: bool,
}

/// The AER storm limiter's setting (`/chosen/phv,aer-storm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AerStorm {
    pub threshold: u32,
    pub window_ms: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Cpu {
    /// MPIDR affinity bits from the cpu node's `reg`.
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub mpidr: u64,
    /// `enable-method` (e.g. "psci", "spin-table"), if present.
    pub enable_method: Option<String>,
}

/// Interrupt controller, with the register frames for its version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "version"))]
pub enum Gic {
    V2 {
        /// `compatible[0]` of the node.
        compatible: String,
        gicd: Region,
        gicc: Region,
        /// Virtual interface control frame; absent when the firmware
        /// did not describe virtualization support.
        gich: Option<Region>,
        /// Virtual CPU interface frame.
        gicv: Option<Region>,
        /// Maintenance interrupt (INTID), if described.
        maintenance_irq: Option<u32>,
        /// GICv2m MSI frames (`arm,gic-v2m-frame` children).
        v2m: Vec<Region>,
    },
    V3 {
        compatible: String,
        gicd: Region,
        /// Redistributor regions: the `#redistributor-regions` (default 1)
        /// `reg` entries after GICD.
        gicr: Vec<Region>,
        /// Legacy GICv2-compatible CPU interface frames, listed after the
        /// redistributors when the GIC supports them (optional in the binding).
        gicc: Option<Region>,
        gich: Option<Region>,
        gicv: Option<Region>,
        /// Maintenance interrupt (INTID), if described.
        maintenance_irq: Option<u32>,
        /// ITS frames (`arm,gic-v3-its` children).
        its: Vec<Region>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Uart {
    pub compatible: String,
    pub region: Region,
    /// INTID, if the node has an interrupt on the GIC.
    pub irq: Option<u32>,
}

/// Generic timer PPIs as INTIDs (PPI n = INTID 16 + n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Timer {
    pub secure_phys: Option<u32>,
    pub nonsecure_phys: u32,
    pub virt: u32,
    pub hyp_phys: Option<u32>,
    pub hyp_virt: Option<u32>,
    /// `clock-frequency` if the node overrides CNTFRQ.
    pub frequency: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum PsciConduit {
    Smc,
    Hvc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Psci {
    pub compatible: String,
    pub conduit: PsciConduit,
}

/// How configuration space of a host bridge is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum ConfigAccess {
    /// `pci-host-ecam-generic` (and compatibles known to be plain ECAM).
    Ecam,
    /// A controller that needs its own accessor (DesignWare, Rockchip, brcmstb,...).
    /// Carries the compatible string so a user sees what is missing.
    Controller(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum PciWindowKind {
    Io,
    Mem32,
    Mem64,
}

/// One entry of a host bridge's `ranges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PciWindow {
    pub kind: PciWindowKind,
    pub prefetchable: bool,
    /// Address on the PCI side.
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub pci_base: u64,
    /// Address on the CPU side.
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub cpu_base: u64,
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub size: u64,
}

/// One `interrupt-map` entry resolved to a GIC interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PciIntxRoute {
    /// Child unit address high cell (bus/device/function bits), already masked.
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub child_addr_hi: u32,
    /// INTx pin 1..=4 (A..D), already masked.
    pub pin: u8,
    /// GIC INTID.
    pub intid: u32,
    /// True for level-triggered.
    pub level: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PciHostBridge {
    /// Node path, so a user can tell bridges apart.
    pub path: String,
    /// `compatible[0]`.
    pub compatible: String,
    pub access: ConfigAccess,
    /// Config space window: the `reg` entry named "config" in `reg-names`
    /// (else the first name starting with "config"), else `reg[0]`.
    pub config: Region,
    /// `linux,pci-domain`, else the index of the host bridge.
    pub segment: u16,
    /// `bus-range` (default 0..=255). For ECAM, limited to the buses the
    /// config window can hold (1 MiB per bus), as Linux does.
    pub bus_start: u8,
    pub bus_end: u8,
    pub windows: Vec<PciWindow>,
    /// `interrupt-map-mask` cells: (child addr hi, pin); all ones if absent.
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize_pair"))]
    pub intx_mask: (u32, u32),
    /// `interrupt-map` entries that go to the GIC (entries routed to another
    /// interrupt controller, e.g. a bridge's own INTx demultiplexer, are omitted).
    pub intx_map: Vec<PciIntxRoute>,
    /// `msi-map` / `msi-parent` present.
    pub has_msi: bool,
}

/// A host bridge node left out of the platform, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RefusedHostBridge {
    /// Node path.
    pub path: String,
    /// What is wrong with it (JSON: the error's message).
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize_display"))]
    pub reason: PlatformError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum ExitMethod {
    /// PSCI SYSTEM_OFF of the platform firmware.
    #[default]
    Psci,
    /// Semihosting SYS_EXIT_EXTENDED carrying the status (QEMU `-semihosting`).
    Semihosting,
}

/// A VM described under `/chosen` (see `docs/interfaces.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VmConfig {
    /// Node name (`vm@0`) if no `label`.
    pub name: String,
    pub hardware_domain: bool,
    /// RAM size in bytes.
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize"))]
    pub memory_size: u64,
    /// Fixed physical base (`phv,memory-base`).
    #[cfg_attr(feature = "serde", serde(serialize_with = "hex::serialize_option"))]
    pub memory_base: Option<u64>,
    pub cpus: u32,
    /// Where the kernel image was placed by the loader.
    pub kernel: Region,
    /// Where the loader placed the kernel's initial ramdisk (a
    /// `multiboot,ramdisk` module), if any.
    pub ramdisk: Option<Region>,
    pub bootargs: String,
    /// `phv,pci-devices`: the functions to pass through ("SSSS:BB:DD.F" or
    /// "BB:DD.F").
    pub pci_devices: Vec<PciFunctionAddress>,
    /// `phv,pci-whole-units`: take every member of the assignment units of
    /// `pci_devices` instead of failing when a unit is named only in part.
    pub pci_whole_units: bool,
    /// `phv,pci-reset-methods`: per function, the reset methods to use, in
    /// order ("SSSS:BB:DD.F=flr,pm"; Linux's `reset_method` names). Checked
    /// against what the function supports when it is assigned.
    pub pci_reset_methods: Vec<(PciFunctionAddress, Vec<String>)>,
    /// `phv,aer-deadline-ms`: after a fatal AER error of one of its
    /// functions, how long the VM has to reset it before the hypervisor
    /// does (`None`: the hypervisor's default).
    pub aer_deadline_ms: Option<u32>,
}

/// A PCI function address as a VM configuration names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PciFunctionAddress {
    pub segment: u16,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl PciFunctionAddress {
    /// Parse "SSSS:BB:DD.F" or "BB:DD.F" (hexadecimal, function 0..=7,
    /// device 0..=0x1f).
    pub fn parse(s: &str) -> Option<Self> {
        let (rest, function) = s.rsplit_once('.')?;
        let mut parts = rest.split(':').rev();
        let device = u8::from_str_radix(parts.next()?, 16).ok()?;
        let bus = u8::from_str_radix(parts.next()?, 16).ok()?;
        let segment = match parts.next() {
            Some(seg) => u16::from_str_radix(seg, 16).ok()?,
            None => 0,
        };
        let function = u8::from_str_radix(function, 16).ok()?;
        if parts.next().is_some() || device > 0x1f || function > 7 {
            return None;
        }
        Some(Self {
            segment,
            bus,
            device,
            function,
        })
    }
}

impl core::fmt::Display for PciFunctionAddress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// What is missing or wrong in a device tree. Never a panic.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum PlatformError {
    /// The blob is not a valid FDT (bad magic, truncated, bad offsets).
    InvalidBlob(BlobError),
    /// A node the hypervisor needs is absent (e.g. "/cpus", "interrupt-controller").
    MissingNode(&'static str),
    /// A node lacks a property it needs: (node path, property).
    MissingProperty(String, &'static str),
    /// A property is present but malformed: (node path, property, why).
    BadProperty(String, &'static str, &'static str),
    /// Nothing the hypervisor can drive (e.g. an unknown GIC compatible).
    Unsupported(String),
    /// The VM configuration under `/chosen` is inconsistent: (vm, why).
    BadVmConfig(String, String),
}

impl core::fmt::Display for PlatformError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::InvalidBlob(why) => write!(f, "not a valid device tree: {why}"),
            Self::MissingNode(node) => write!(f, "device tree has no {node}"),
            Self::MissingProperty(node, prop) => write!(f, "{node}: missing property {prop}"),
            Self::BadProperty(node, prop, why) => write!(f, "{node}: bad {prop}: {why}"),
            Self::Unsupported(what) => write!(f, "unsupported: {what}"),
            Self::BadVmConfig(vm, why) => write!(f, "VM {vm}: {why}"),
        }
    }
}

impl From<BlobError> for PlatformError {
    fn from(error: BlobError) -> Self {
        Self::InvalidBlob(error)
    }
}

impl Platform {
    /// Parse a flattened device tree. Never panics, whatever the bytes.
    pub fn from_fdt(blob: &[u8]) -> Result<Platform, PlatformError> {
        discover::platform(blob)
    }
}
