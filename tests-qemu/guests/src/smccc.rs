//! SMCCC / PSCI / phv function ids and return values (docs/interfaces.md).

pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;

pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const PSCI_CPU_OFF: u32 = 0x8400_0002;
pub const PSCI_CPU_ON: u32 = 0xC400_0003;
pub const PSCI_AFFINITY_INFO: u32 = 0xC400_0004;
pub const PSCI_MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
pub const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;
pub const PSCI_FEATURES: u32 = 0x8400_000A;

pub const PHV_CALL_COUNT: u32 = 0x8600_FF00;
pub const PHV_UID: u32 = 0x8600_FF01;
pub const PHV_REVISION: u32 = 0x8600_FF03;
pub const PHV_CONSOLE_WRITE: u32 = 0xC600_0001;
pub const PHV_TEST_FAIL: u32 = 0xC600_0002;
pub const PHV_VM_STATE: u32 = 0xC600_0003;
pub const PHV_TEST_HYPERVISOR_BUG: u32 = 0xC600_00F0;
/// PCI reports of the hardware domain: x1 = segment, x2 = bus << 8 | devfn.
pub const PHV_PCI_ADD: u32 = 0xC600_0010;
pub const PHV_PCI_REMOVE: u32 = 0xC600_0011;
pub const PHV_PCI_ENUMERATION_DONE: u32 = 0xC600_0012;
pub const PHV_PCI_UNIT_OF: u32 = 0xC600_0013;
/// PCI_ADD x1 on success.
pub const ADD_ATTACHED: u64 = 0;
pub const ADD_ORPHANED: u64 = 1;
pub const ADD_ALREADY_TRACKED: u64 = 2;
/// Reasons (x1) with NOT_FOUND / REJECTED.
pub const REASON_NO_FUNCTION: u64 = 3;
pub const REASON_NOT_TRACKED: u64 = 13;
/// Bytes one CONSOLE_WRITE carries (x2..x7).
pub const CONSOLE_CHUNK: usize = 48;

pub const SUCCESS: i64 = 0;
pub const NOT_SUPPORTED: i64 = -1;
pub const NOT_REQUIRED: i64 = -2;
pub const INVALID_PARAMETER: i64 = -3;
pub const DENIED: i64 = -4;
pub const NOT_FOUND: i64 = -5;
pub const REJECTED: i64 = -6;

pub const PSCI_INVALID_PARAMETERS: i64 = -2;
pub const PSCI_DENIED: i64 = -3;
pub const PSCI_ALREADY_ON: i64 = -4;

/// AFFINITY_INFO results.
pub const AFF_ON: i64 = 0;
pub const AFF_OFF: i64 = 1;
pub const AFF_ON_PENDING: i64 = 2;
