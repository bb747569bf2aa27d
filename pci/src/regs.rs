//! Config-space register offsets and bits (PCI Local Bus 3.0, PCIe Base 6.x).

// Common header.
pub const VENDOR_ID: u16 = 0x00;
pub const DEVICE_ID: u16 = 0x02;
pub const COMMAND: u16 = 0x04;
pub const STATUS: u16 = 0x06;
pub const CLASS_REVISION: u16 = 0x08;
pub const HEADER_TYPE: u16 = 0x0e;
pub const BAR0: u16 = 0x10;
pub const CAP_PTR: u16 = 0x34;
pub const INTERRUPT_LINE: u16 = 0x3c;

pub const HEADER_TYPE_MASK: u8 = 0x7f;
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;
pub const HEADER_TYPE_NORMAL: u8 = 0;
pub const HEADER_TYPE_BRIDGE: u8 = 1;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
pub const COMMAND_SERR: u16 = 1 << 8;
pub const STATUS_IMMEDIATE_READINESS: u16 = 1 << 0;
pub const STATUS_CAP_LIST: u16 = 1 << 4;

/// Vendor id a function answers while it is not ready and Configuration RRS
/// Software Visibility is enabled.
pub const VENDOR_ID_RRS: u16 = 0x0001;
/// Vendor id (and whole read) of an absent function.
pub const VENDOR_ID_NONE: u16 = 0xffff;

// Type 1 (bridge) header.
pub const PRIMARY_BUS: u16 = 0x18;
pub const SECONDARY_BUS: u16 = 0x19;
pub const SUBORDINATE_BUS: u16 = 0x1a;
pub const BRIDGE_CONTROL: u16 = 0x3e;
pub const BRIDGE_CONTROL_SBR: u16 = 1 << 6;
/// Bridge Control SERR# Enable: forward error messages from the secondary side.
pub const BRIDGE_CONTROL_SERR: u16 = 1 << 1;

/// Number of BARs in a type 0 / type 1 header.
pub const BARS_TYPE0: u8 = 6;
pub const BARS_TYPE1: u8 = 2;
pub const BAR_IO: u32 = 1 << 0;
pub const BAR_MEM_64: u32 = 0b10 << 1;

// Standard capabilities start after the header and end before 0x100.
pub const CAP_START: u16 = 0x40;
pub const CAP_END: u16 = 0x100;
pub const EXT_CAP_START: u16 = 0x100;
pub const CONFIG_SPACE_SIZE: u16 = 0x1000;

// Capability ids.
pub const CAP_ID_PM: u8 = 0x01;
pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_PCIE: u8 = 0x10;
pub const CAP_ID_MSIX: u8 = 0x11;
pub const CAP_ID_AF: u8 = 0x13;
/// Vendor-specific capability (virtio uses one per configuration structure).
pub const CAP_ID_VENDOR: u8 = 0x09;
pub const CAP_ID_SSVID: u8 = 0x0d;

// Extended capability ids.
pub const EXT_CAP_ID_AER: u16 = 0x0001;
pub const EXT_CAP_ID_ACS: u16 = 0x000d;
pub const EXT_CAP_ID_ARI: u16 = 0x000e;
pub const EXT_CAP_ID_SRIOV: u16 = 0x0010;

// PCI Express capability (offsets from the capability).
pub const PCIE_FLAGS: u16 = 0x02;
pub const PCIE_FLAGS_TYPE_SHIFT: u16 = 4;
pub const PCIE_FLAGS_TYPE_MASK: u16 = 0xf << 4;
pub const PCIE_FLAGS_SLOT: u16 = 1 << 8;
pub const PCIE_DEVCAP: u16 = 0x04;
pub const PCIE_DEVCAP_FLR: u32 = 1 << 28;
pub const PCIE_DEVCTL: u16 = 0x08;
pub const PCIE_DEVCTL_BCR_FLR: u16 = 1 << 15;
pub const PCIE_DEVSTA: u16 = 0x0a;
pub const PCIE_DEVSTA_TRPND: u16 = 1 << 5;
pub const PCIE_LNKCAP: u16 = 0x0c;
pub const PCIE_LNKCTL: u16 = 0x10;
pub const PCIE_LNKSTA: u16 = 0x12;
pub const PCIE_LNKSTA_DLLLA: u16 = 1 << 13;
pub const PCIE_SLTCAP: u16 = 0x14;
pub const PCIE_SLTCAP_HPC: u32 = 1 << 6;
pub const PCIE_SLTCTL: u16 = 0x18;
pub const PCIE_RTCTL: u16 = 0x1c;
pub const PCIE_RTCTL_RRS_SVE: u16 = 1 << 4;
pub const PCIE_RTCAP: u16 = 0x1e;
pub const PCIE_RTCAP_RRS_SV: u16 = 1 << 0;
pub const PCIE_DEVCAP2: u16 = 0x24;
pub const PCIE_DEVCTL2: u16 = 0x28;
pub const PCIE_DEVCTL2_ARI: u16 = 1 << 5;
pub const PCIE_CAP_SIZE: u16 = 0x3c;

/// PCIe Device/Port Type (PCIe capability flags bits 7:4).
pub const PCIE_TYPE_ENDPOINT: u8 = 0x0;
pub const PCIE_TYPE_LEGACY_ENDPOINT: u8 = 0x1;
pub const PCIE_TYPE_ROOT_PORT: u8 = 0x4;
pub const PCIE_TYPE_UPSTREAM: u8 = 0x5;
pub const PCIE_TYPE_DOWNSTREAM: u8 = 0x6;
pub const PCIE_TYPE_PCIE_TO_PCI: u8 = 0x7;
pub const PCIE_TYPE_PCI_TO_PCIE: u8 = 0x8;
pub const PCIE_TYPE_RCIEP: u8 = 0x9;
pub const PCIE_TYPE_RCEC: u8 = 0xa;

// Power management capability.
pub const PM_PMC: u16 = 0x02;
pub const PM_CTRL: u16 = 0x04;
pub const PM_CTRL_STATE_MASK: u16 = 0x3;
pub const PM_CTRL_D0: u16 = 0x0;
pub const PM_CTRL_D3HOT: u16 = 0x3;
pub const PM_CTRL_NO_SOFT_RESET: u16 = 1 << 3;
pub const PM_CAP_SIZE: u16 = 8;

// MSI capability.
pub const MSI_FLAGS: u16 = 0x02;
pub const MSI_FLAGS_ENABLE: u16 = 1 << 0;
pub const MSI_FLAGS_64BIT: u16 = 1 << 7;
pub const MSI_CAP_SIZE_64: u16 = 0x0e;

// MSI-X capability.
pub const MSIX_FLAGS: u16 = 0x02;
pub const MSIX_FLAGS_QSIZE: u16 = 0x07ff;
pub const MSIX_FLAGS_MASKALL: u16 = 1 << 14;
pub const MSIX_FLAGS_ENABLE: u16 = 1 << 15;
pub const MSIX_TABLE: u16 = 0x04;
pub const MSIX_PBA: u16 = 0x08;
pub const MSIX_BIR_MASK: u32 = 0x7;
pub const MSIX_CAP_SIZE: u16 = 0x0c;
pub const MSIX_ENTRY_SIZE: u32 = 16;
pub const MSIX_ENTRY_VECTOR_CTRL_MASKED: u32 = 1;

// Advanced Features capability.
pub const AF_CAP: u16 = 0x03;
pub const AF_CAP_TP: u8 = 1 << 0;
pub const AF_CAP_FLR: u8 = 1 << 1;
pub const AF_CTRL: u16 = 0x04;
pub const AF_CTRL_FLR: u8 = 1 << 0;
pub const AF_STATUS: u16 = 0x05;
pub const AF_CAP_SIZE: u16 = 6;

// ACS extended capability.
pub const ACS_CAP: u16 = 0x04;
pub const ACS_CTRL: u16 = 0x06;
pub const ACS_SV: u16 = 0x01;
pub const ACS_TB: u16 = 0x02;
pub const ACS_RR: u16 = 0x04;
pub const ACS_CR: u16 = 0x08;
pub const ACS_UF: u16 = 0x10;
pub const ACS_EC: u16 = 0x20;
pub const ACS_DT: u16 = 0x40;
/// The controls that make a port or function isolating.
pub const ACS_ISOLATION: u16 = ACS_SV | ACS_RR | ACS_CR | ACS_UF;
pub const ACS_CAP_SIZE: u16 = 8;

// AER extended capability.
pub const AER_UNCOR_STATUS: u16 = 0x04;
pub const AER_UNCOR_MASK: u16 = 0x08;
pub const AER_UNCOR_SEVER: u16 = 0x0c;
pub const AER_COR_STATUS: u16 = 0x10;
pub const AER_COR_MASK: u16 = 0x14;
pub const AER_CAP_CTRL: u16 = 0x18;
pub const AER_ROOT_COMMAND: u16 = 0x2c;
pub const AER_ROOT_STATUS: u16 = 0x30;
pub const AER_ERROR_SOURCE: u16 = 0x34;
pub const AER_ROOT_STATUS_COR: u32 = 1 << 0;
pub const AER_ROOT_STATUS_MULTI_COR: u32 = 1 << 1;
pub const AER_ROOT_STATUS_UNCOR: u32 = 1 << 2;
pub const AER_ROOT_STATUS_MULTI_UNCOR: u32 = 1 << 3;
pub const AER_ROOT_STATUS_FIRST_FATAL: u32 = 1 << 4;
pub const AER_ROOT_STATUS_NONFATAL: u32 = 1 << 5;
pub const AER_ROOT_STATUS_FATAL: u32 = 1 << 6;
pub const AER_CAP_SIZE_ROOT: u16 = 0x38;
pub const AER_CAP_SIZE: u16 = 0x2c;

// ARI extended capability.
pub const ARI_CAP: u16 = 0x04;
pub const ARI_CAP_SIZE: u16 = 8;

// SR-IOV extended capability.
pub const SRIOV_CAP: u16 = 0x04;
pub const SRIOV_CTRL: u16 = 0x08;
pub const SRIOV_CTRL_VFE: u16 = 1 << 0;
pub const SRIOV_CTRL_MSE: u16 = 1 << 3;
pub const SRIOV_CTRL_ARI: u16 = 1 << 4;
pub const SRIOV_STATUS: u16 = 0x0a;
pub const SRIOV_INITIAL_VF: u16 = 0x0c;
pub const SRIOV_TOTAL_VF: u16 = 0x0e;
pub const SRIOV_NUM_VF: u16 = 0x10;
pub const SRIOV_FDL: u16 = 0x12;
pub const SRIOV_VF_OFFSET: u16 = 0x14;
pub const SRIOV_VF_STRIDE: u16 = 0x16;
pub const SRIOV_VF_DID: u16 = 0x1a;
pub const SRIOV_SUP_PGSIZE: u16 = 0x1c;
pub const SRIOV_SYS_PGSIZE: u16 = 0x20;
pub const SRIOV_BAR0: u16 = 0x24;
pub const SRIOV_CAP_SIZE: u16 = 0x40;

// Used by the config-space virtualization (vpci).
pub const INTERRUPT_PIN: u16 = 0x3d;
/// Type 0 header: Expansion ROM BAR.
pub const ROM_BAR: u16 = 0x30;
/// Expansion ROM BAR of a type 1 (bridge) header.
pub const BRIDGE_ROM_BAR: u16 = 0x38;
pub const ROM_ENABLE: u32 = 1 << 0;
pub const ROM_ADDRESS_MASK: u32 = 0xffff_f800;
pub const BAR_MEM_PREFETCH: u32 = 1 << 3;
pub const BAR_MEM_TYPE_MASK: u32 = 0b11 << 1;
/// Low bits of a memory BAR that are flags, not address.
pub const BAR_MEM_FLAGS: u32 = 0xf;
pub const BAR_IO_FLAGS: u32 = 0x3;
// Type 1 header windows.
pub const IO_BASE: u16 = 0x1c;
pub const SECONDARY_STATUS: u16 = 0x1e;
pub const MEMORY_BASE: u16 = 0x20;
pub const PREF_MEMORY_BASE: u16 = 0x24;
pub const PREF_BASE_UPPER: u16 = 0x28;
pub const PREF_LIMIT_UPPER: u16 = 0x2c;
pub const IO_BASE_UPPER: u16 = 0x30;
pub const BRIDGE_CONTROL_VGA: u16 = 1 << 3;
pub const PCIE_LNKCTL_LD: u16 = 1 << 4;
pub const PCIE_SLTSTA: u16 = 0x1a;
pub const PCIE_SLTSTA_PDS: u16 = 1 << 6;
pub const PCIE_RTSTA: u16 = 0x20;
