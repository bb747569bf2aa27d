//! SMCCC dispatcher for HVC and trapped SMC from VMs: PSCI emulated for the
//! VM's own vCPUs, SMCCC version/features, and our vendor hypervisor
//! service. Every argument is treated as hostile input; unknown calls return
//! NOT_SUPPORTED. The dispatcher is pure: it acts on the caller's VM through
//! [`HypercallHost`] and says what the trap handler must do next.

use smccc::psci;

/// SMCCC return codes.
pub const SUCCESS: u64 = 0;
pub const NOT_SUPPORTED: u64 = -1i64 as u64;
pub const INVALID_PARAMETER: u64 = -3i64 as u64;
/// Our vendor service: the caller may not make this call or touch this object.
pub const DENIED: u64 = -4i64 as u64;
/// Our vendor service: the named object does not exist (not tracked, nothing
/// answers at the address).
pub const NOT_FOUND: u64 = -5i64 as u64;
/// Our vendor service: the report is inconsistent with config space; x1 holds
/// the reason code (see `docs/interfaces.md`).
pub const REJECTED: u64 = -6i64 as u64;

/// PSCI return codes.
pub mod psci_ret {
    pub const SUCCESS: u64 = 0;
    pub const NOT_SUPPORTED: u64 = -1i64 as u64;
    pub const INVALID_PARAMETERS: u64 = -2i64 as u64;
    pub const ALREADY_ON: u64 = -4i64 as u64;
    pub const ON_PENDING: u64 = -5i64 as u64;
    pub const INVALID_ADDRESS: u64 = -9i64 as u64;
}

pub const SMCCC_VERSION: u32 = 0x8000_0000;
pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
pub const SMCCC_ARCH_WORKAROUND_1: u32 = 0x8000_8000;
pub const SMCCC_ARCH_WORKAROUND_2: u32 = 0x8000_7FFF;
pub const SMCCC_ARCH_WORKAROUND_3: u32 = 0x8000_3FFF;
/// SMCCC_ARCH_FEATURES of a workaround: this CPU is not affected.
pub const WORKAROUND_UNAFFECTED: u64 = 1;
/// SMCCC_ARCH_FEATURES of WORKAROUND_2: not required on this CPU.
pub const NOT_REQUIRED: u64 = -2i64 as u64;
/// We implement SMCCC 1.2 (x1..x17 arguments, x0..x17 results).
pub const SMCCC_VERSION_1_2: u64 = 0x1_0002;
/// PSCI 1.1.
pub const PSCI_VERSION_1_1: u64 = 0x1_0001;

/// Owner numbers (bits 29:24 of a function id).
pub const OWNER_ARCH: u32 = 0;
pub const OWNER_STANDARD_SECURE: u32 = 4;
pub const OWNER_VENDOR_HYP: u32 = 6;

/// Our vendor-specific hypervisor service (see docs/interfaces.md).
pub mod vendor {
    pub const CALL_COUNT: u32 = 0x8600_FF00;
    pub const UID: u32 = 0x8600_FF01;
    pub const REVISION: u32 = 0x8600_FF03;
    pub const CONSOLE_WRITE: u32 = 0xC600_0001;
    pub const TEST_FAIL: u32 = 0xC600_0002;
    /// hwdom: the state of VM x1 (its index under /chosen): x1 = 0 stopped,
    /// 1 running, 2 waiting for its PCI functions.
    pub const VM_STATE: u32 = 0xC600_0003;
    /// hwdom: a function was found at (x1 = segment, x2 = bus << 8 | devfn).
    pub const PCI_ADD: u32 = 0xC600_0010;
    /// hwdom: the function at (x1, x2) is gone.
    pub const PCI_REMOVE: u32 = 0xC600_0011;
    /// hwdom: enumeration of segment x1 is complete.
    pub const PCI_ENUMERATION_DONE: u32 = 0xC600_0012;
    /// The assignment unit of (x1, x2): x1 = the unit's id (its first
    /// member's bus << 8 | devfn), x2 = number of members.
    pub const PCI_UNIT_OF: u32 = 0xC600_0013;
    /// Which reset covers the caller's function (x1 = segment, x2 = bus << 8
    /// | devfn, virtual for a guest): x1 = method code, x2 = functions it
    /// touches, x3 = how many of those the caller does not own.
    pub const PCI_RESET_INFO: u32 = 0xC600_0020;
    /// Reset the caller's function (x3 = method code, 0 = the narrowest
    /// reset covering it). Asynchronous: the function answers like hardware
    /// (all-ones) until it is back.
    pub const PCI_RESET: u32 = 0xC600_0021;
    /// Keep the narrowest reset of the caller's function possible while it
    /// runs: assignments that would break it are refused.
    pub const PCI_RESET_RESERVE: u32 = 0xC600_0022;
    /// hwdom: the reset methods of a function, in order (x3: method codes,
    /// 4 bits each, lowest first, 0 ends; x3 = 0: back to the probed order).
    pub const PCI_SET_RESET_METHODS: u32 = 0xC600_0023;
    /// hwdom: entry x3 of the physical MSI-X table of (x1, x2), read from
    /// the device: x1 = address (high << 32 | low), x2 = data, x3 = vector
    /// control.
    pub const PCI_MSIX_ENTRY: u32 = 0xC600_0024;
    /// hwdom, only with `/chosen/phv,test-hypervisor-bugs`: make the
    /// hypervisor fault (x1 = 0), panic (1) or panic holding the console
    /// and PCI locks (2), to test that a hypervisor bug stops the system.
    pub const TEST_HYPERVISOR_BUG: u32 = 0xC600_00F0;
    /// Calls in the service, excluding the generic queries.
    pub const COUNT: u64 = 13;
    /// Most bytes one CONSOLE_WRITE carries (x2..x7).
    pub const CONSOLE_WRITE_MAX: usize = 48;
    /// UUID 7b3c9a1e-5d42-4f0b-9e61-2c8d0a4f1b37 as four little-endian words.
    pub const UID_WORDS: [u64; 4] = [0x1e9a_3c7b, 0x0b4f_425d, 0x8d2c_619e, 0x371b_4f0a];
    pub const REVISION_MAJOR: u64 = 0;
    pub const REVISION_MINOR: u64 = 1;
}

/// Power state of a vCPU as PSCI AFFINITY_INFO reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuPower {
    On = 0,
    Off = 1,
    OnPending = 2,
}

/// Why CPU_ON was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuOnError {
    NoSuchCpu,
    AlreadyOn,
    OnPending,
    InvalidAddress,
}

/// A PCI call, with its arguments range-checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciCall {
    Add {
        segment: u16,
        rid: u16,
    },
    Remove {
        segment: u16,
        rid: u16,
    },
    EnumerationDone {
        segment: u16,
    },
    UnitOf {
        segment: u16,
        rid: u16,
    },
    ResetInfo {
        segment: u16,
        rid: u16,
    },
    Reset {
        segment: u16,
        rid: u16,
        method: u64,
    },
    ResetReserve {
        segment: u16,
        rid: u16,
    },
    SetResetMethods {
        segment: u16,
        rid: u16,
        methods: u64,
    },
    MsixEntry {
        segment: u16,
        rid: u16,
        entry: u64,
    },
}

/// What VM_STATE says of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Every vCPU is off and it will not run again (its devices may still
    /// be resetting on their way back to the hardware domain).
    Stopped = 0,
    Running = 1,
    /// Built, waiting for the hardware domain to report its PCI functions.
    WaitingForPci = 2,
}

/// A hypervisor bug that TEST_HYPERVISOR_BUG provokes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypervisorBug {
    /// A load from an address EL2 does not map: a synchronous exception
    /// taken at EL2.
    Fault,
    /// A Rust panic.
    Panic,
    /// A panic while this CPU holds the console queue's and the PCI
    /// state's locks (the panic path must not wait for them).
    PanicHoldingLocks,
}

impl HypervisorBug {
    fn from_code(code: u64) -> Option<Self> {
        match code {
            0 => Some(Self::Fault),
            1 => Some(Self::Panic),
            2 => Some(Self::PanicHoldingLocks),
            _ => None,
        }
    }
}

/// Why a PCI call failed: the SMCCC status and a reason code for x1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallError {
    pub status: u64,
    pub reason: u64,
}

/// What the dispatcher needs from the calling VM.
pub trait HypercallHost {
    /// The vCPU with this MPIDR affinity value, if the VM has one.
    fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize>;
    fn vcpu_power(&self, vcpu: usize) -> VcpuPower;
    /// Start `vcpu` at `entry` (an IPA) with x0 = `context_id`.
    fn cpu_on(&mut self, vcpu: usize, entry: u64, context_id: u64) -> Result<(), CpuOnError>;
    fn console_write(&mut self, bytes: &[u8]);
    fn test_fail(&mut self, code: u64);
    /// The state of VM `index`, if the caller may know it: `Err` is the
    /// SMCCC status (DENIED to a guest, NOT_FOUND for no such VM).
    fn vm_state(&self, index: u64) -> Result<VmState, u64>;
    /// The speculation properties of the CPU the caller runs on.
    fn cpu_speculation(&self) -> CpuSpeculation;
    /// Provoke `bug` if this VM may (never returns then); otherwise the
    /// SMCCC status of the refusal.
    fn test_hypervisor_bug(&mut self, bug: HypervisorBug) -> u64;
    /// A PCI call; the host checks who may make it. Returns x1..x3.
    fn pci(&mut self, call: PciCall) -> Result<[u64; 3], CallError>;
}

/// What the trap handler does after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Write x0..x3 and resume the caller.
    Return([u64; 4]),
    /// The calling vCPU powers off (PSCI CPU_OFF).
    CpuOff,
    /// PSCI SYSTEM_OFF from the calling VM.
    SystemOff,
    /// PSCI SYSTEM_RESET from the calling VM.
    SystemReset,
}

fn ret(x0: u64) -> Outcome {
    Outcome::Return([x0, 0, 0, 0])
}

/// What the CPU's ID registers say about speculative side channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSpeculation {
    /// ID_AA64PFR0_EL1.CSV2 (59:56): 1 or more, branch targets trained in
    /// one context do not steer another (Spectre v2); 3, nor the branch
    /// history (Spectre-BHB).
    pub csv2: u8,
    /// ID_AA64PFR1_EL1.SSBS (7:4) is not 0: the speculative store bypass
    /// safe bit exists, so the guest mitigates Spectre v4 itself.
    pub ssbs: bool,
}

impl CpuSpeculation {
    pub fn from_id_registers(pfr0: u64, pfr1: u64) -> Self {
        Self {
            csv2: ((pfr0 >> 56) & 0xf) as u8,
            ssbs: (pfr1 >> 4) & 0xf != 0,
        }
    }
}

/// SMCCC_ARCH_FEATURES of a Spectre workaround call. The hypervisor offers
/// no firmware mitigation of its own (it does not forward the calls to
/// EL3): it answers "not affected" (WORKAROUND_1, 3) or "not required"
/// (WORKAROUND_2) where the CPU says so, and NOT_SUPPORTED otherwise, so
/// that the guest reports the vulnerability instead of believing a call
/// that does nothing mitigates it.
fn workaround_feature(id: u32, cpu: CpuSpeculation) -> u64 {
    let unaffected = match id {
        SMCCC_ARCH_WORKAROUND_1 => cpu.csv2 >= 1,
        SMCCC_ARCH_WORKAROUND_3 => cpu.csv2 >= 3,
        SMCCC_ARCH_WORKAROUND_2 => {
            return if cpu.ssbs {
                NOT_REQUIRED
            } else {
                NOT_SUPPORTED
            };
        }
        _ => false,
    };
    if unaffected {
        WORKAROUND_UNAFFECTED
    } else {
        NOT_SUPPORTED
    }
}

/// The PSCI functions we emulate, for PSCI_FEATURES (with SMCCC_VERSION,
/// which PSCI_FEATURES also answers: Linux asks it before using SMCCC 1.1).
const PSCI_SUPPORTED: [u32; 11] = [
    SMCCC_VERSION,
    psci::PSCI_VERSION,
    psci::PSCI_CPU_OFF,
    psci::PSCI_CPU_ON_32,
    psci::PSCI_CPU_ON_64,
    psci::PSCI_AFFINITY_INFO_32,
    psci::PSCI_AFFINITY_INFO_64,
    psci::PSCI_MIGRATE_INFO_TYPE,
    psci::PSCI_SYSTEM_OFF,
    psci::PSCI_SYSTEM_RESET,
    psci::PSCI_FEATURES,
];

/// Dispatch one SMCCC call. `regs` are x0..x7 of the caller.
pub fn dispatch(host: &mut dyn HypercallHost, regs: &[u64; 8]) -> Outcome {
    let function_id = regs[0] as u32;
    // Bits 63:32 of x0 are ignored by SMCCC; yielding calls are not offered.
    if function_id & 0x8000_0000 == 0 {
        return ret(NOT_SUPPORTED);
    }
    // SMC32/HVC32 calls take W registers: upper halves are ignored.
    let is_64 = function_id & 0x4000_0000 != 0;
    let arg = |i: usize| {
        let v = regs[i];
        if is_64 { v } else { v & 0xffff_ffff }
    };
    match (function_id >> 24) & 0x3f {
        OWNER_ARCH => match function_id {
            SMCCC_VERSION => ret(SMCCC_VERSION_1_2),
            SMCCC_ARCH_FEATURES => match arg(1) as u32 {
                SMCCC_VERSION | SMCCC_ARCH_FEATURES => ret(SUCCESS),
                id @ (SMCCC_ARCH_WORKAROUND_1
                | SMCCC_ARCH_WORKAROUND_2
                | SMCCC_ARCH_WORKAROUND_3) => ret(workaround_feature(id, host.cpu_speculation())),
                _ => ret(NOT_SUPPORTED),
            },
            _ => ret(NOT_SUPPORTED),
        },
        OWNER_STANDARD_SECURE => psci_call(host, function_id, arg(1), arg(2), arg(3)),
        OWNER_VENDOR_HYP => vendor_call(host, function_id, regs),
        _ => ret(NOT_SUPPORTED),
    }
}

#[inline(never)]
fn psci_call(host: &mut dyn HypercallHost, id: u32, a1: u64, a2: u64, a3: u64) -> Outcome {
    match id {
        psci::PSCI_VERSION => ret(PSCI_VERSION_1_1),
        psci::PSCI_FEATURES => {
            if PSCI_SUPPORTED.contains(&(a1 as u32)) && a1 >> 32 == 0 {
                ret(psci_ret::SUCCESS)
            } else {
                ret(psci_ret::NOT_SUPPORTED)
            }
        }
        // Migration not required: the trusted OS (if any) is MP.
        psci::PSCI_MIGRATE_INFO_TYPE => ret(2),
        psci::PSCI_CPU_ON_32 | psci::PSCI_CPU_ON_64 => {
            let Some(vcpu) = host.vcpu_by_mpidr(a1) else {
                return ret(psci_ret::INVALID_PARAMETERS);
            };
            match host.cpu_on(vcpu, a2, a3) {
                Ok(()) => ret(psci_ret::SUCCESS),
                Err(CpuOnError::NoSuchCpu) => ret(psci_ret::INVALID_PARAMETERS),
                Err(CpuOnError::AlreadyOn) => ret(psci_ret::ALREADY_ON),
                Err(CpuOnError::OnPending) => ret(psci_ret::ON_PENDING),
                Err(CpuOnError::InvalidAddress) => ret(psci_ret::INVALID_ADDRESS),
            }
        }
        psci::PSCI_AFFINITY_INFO_32 | psci::PSCI_AFFINITY_INFO_64 => {
            // Only affinity level 0 (a single vCPU) is meaningful here.
            if a2 != 0 {
                return ret(psci_ret::INVALID_PARAMETERS);
            }
            match host.vcpu_by_mpidr(a1) {
                Some(vcpu) => ret(host.vcpu_power(vcpu) as u64),
                None => ret(psci_ret::INVALID_PARAMETERS),
            }
        }
        psci::PSCI_CPU_OFF => Outcome::CpuOff,
        psci::PSCI_SYSTEM_OFF => Outcome::SystemOff,
        psci::PSCI_SYSTEM_RESET => Outcome::SystemReset,
        _ => ret(psci_ret::NOT_SUPPORTED),
    }
}

#[inline(never)]
fn vendor_call(host: &mut dyn HypercallHost, id: u32, regs: &[u64; 8]) -> Outcome {
    match id {
        vendor::CALL_COUNT => ret(vendor::COUNT),
        vendor::UID => Outcome::Return(vendor::UID_WORDS),
        vendor::REVISION => Outcome::Return([vendor::REVISION_MAJOR, vendor::REVISION_MINOR, 0, 0]),
        vendor::CONSOLE_WRITE => {
            let len = regs[1];
            if len > vendor::CONSOLE_WRITE_MAX as u64 {
                return ret(INVALID_PARAMETER);
            }
            let mut bytes = [0u8; vendor::CONSOLE_WRITE_MAX];
            for (chunk, reg) in bytes.chunks_mut(8).zip(&regs[2..8]) {
                chunk.copy_from_slice(&reg.to_le_bytes());
            }
            host.console_write(&bytes[..len as usize]);
            ret(len)
        }
        vendor::TEST_FAIL => {
            host.test_fail(regs[1]);
            ret(SUCCESS)
        }
        vendor::VM_STATE => match host.vm_state(regs[1]) {
            Ok(state) => Outcome::Return([SUCCESS, state as u64, 0, 0]),
            Err(status) => ret(status),
        },
        vendor::TEST_HYPERVISOR_BUG => match HypervisorBug::from_code(regs[1]) {
            Some(bug) => ret(host.test_hypervisor_bug(bug)),
            None => ret(INVALID_PARAMETER),
        },
        vendor::PCI_ADD
        | vendor::PCI_REMOVE
        | vendor::PCI_UNIT_OF
        | vendor::PCI_ENUMERATION_DONE
        | vendor::PCI_RESET_INFO
        | vendor::PCI_RESET
        | vendor::PCI_RESET_RESERVE
        | vendor::PCI_SET_RESET_METHODS
        | vendor::PCI_MSIX_ENTRY => {
            let (Ok(segment), Ok(rid)) = (u16::try_from(regs[1]), u16::try_from(regs[2])) else {
                return ret(INVALID_PARAMETER);
            };
            let call = match id {
                vendor::PCI_ADD => PciCall::Add { segment, rid },
                vendor::PCI_REMOVE => PciCall::Remove { segment, rid },
                vendor::PCI_UNIT_OF => PciCall::UnitOf { segment, rid },
                vendor::PCI_RESET_INFO => PciCall::ResetInfo { segment, rid },
                vendor::PCI_RESET => PciCall::Reset {
                    segment,
                    rid,
                    method: regs[3],
                },
                vendor::PCI_RESET_RESERVE => PciCall::ResetReserve { segment, rid },
                vendor::PCI_SET_RESET_METHODS => PciCall::SetResetMethods {
                    segment,
                    rid,
                    methods: regs[3],
                },
                vendor::PCI_MSIX_ENTRY => PciCall::MsixEntry {
                    segment,
                    rid,
                    entry: regs[3],
                },
                _ => PciCall::EnumerationDone { segment },
            };
            match host.pci(call) {
                Ok([a, b, c]) => Outcome::Return([SUCCESS, a, b, c]),
                Err(e) => Outcome::Return([e.status, e.reason, 0, 0]),
            }
        }
        _ => ret(NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[derive(Default)]
    struct FakeVm {
        power: Vec<VcpuPower>,
        console: Vec<u8>,
        failed: Option<u64>,
        started: Vec<(usize, u64, u64)>,
        pci_calls: Vec<PciCall>,
        bugs: Vec<HypervisorBug>,
        speculation: CpuSpeculation,
    }

    impl HypercallHost for FakeVm {
        fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize> {
            (mpidr < self.power.len() as u64).then_some(mpidr as usize)
        }
        fn vcpu_power(&self, vcpu: usize) -> VcpuPower {
            self.power[vcpu]
        }
        fn cpu_on(&mut self, vcpu: usize, entry: u64, ctx: u64) -> Result<(), CpuOnError> {
            match self.power[vcpu] {
                VcpuPower::On => Err(CpuOnError::AlreadyOn),
                VcpuPower::OnPending => Err(CpuOnError::OnPending),
                VcpuPower::Off if !entry.is_multiple_of(4) => Err(CpuOnError::InvalidAddress),
                VcpuPower::Off => {
                    self.power[vcpu] = VcpuPower::OnPending;
                    self.started.push((vcpu, entry, ctx));
                    Ok(())
                }
            }
        }
        fn console_write(&mut self, bytes: &[u8]) {
            self.console.extend_from_slice(bytes);
        }
        fn test_fail(&mut self, code: u64) {
            self.failed = Some(code);
        }
        fn cpu_speculation(&self) -> CpuSpeculation {
            self.speculation
        }
        fn vm_state(&self, index: u64) -> Result<VmState, u64> {
            match index {
                0 => Ok(VmState::Running),
                1 => Ok(VmState::Stopped),
                _ => Err(NOT_FOUND),
            }
        }
        fn test_hypervisor_bug(&mut self, bug: HypervisorBug) -> u64 {
            self.bugs.push(bug);
            DENIED
        }
        fn pci(&mut self, call: PciCall) -> Result<[u64; 3], CallError> {
            self.pci_calls.push(call);
            match call {
                PciCall::Add { rid: 0xffff, .. } => Err(CallError {
                    status: NOT_FOUND,
                    reason: 3,
                }),
                _ => Ok([1, 2, 3]),
            }
        }
    }

    fn call(vm: &mut FakeVm, regs: &[u64]) -> Outcome {
        let mut r = [0u64; 8];
        r[..regs.len()].copy_from_slice(regs);
        dispatch(vm, &r)
    }

    fn two_vcpus() -> FakeVm {
        FakeVm {
            power: std::vec![VcpuPower::On, VcpuPower::Off],
            ..Default::default()
        }
    }

    #[test]
    fn versions_and_features() {
        let mut vm = two_vcpus();
        assert_eq!(call(&mut vm, &[0x8000_0000]), ret(0x1_0002));
        assert_eq!(call(&mut vm, &[0x8400_0000]), ret(0x1_0001));
        assert_eq!(call(&mut vm, &[0x8400_000A, 0xC400_0003]), ret(0));
        assert_eq!(
            call(&mut vm, &[0x8400_000A, 0xC400_0001]),
            ret(NOT_SUPPORTED)
        );
        assert_eq!(
            call(&mut vm, &[0x8000_0001, 0x8000_8000]),
            ret(NOT_SUPPORTED)
        );
        assert_eq!(call(&mut vm, &[0x8400_0006]), ret(2));
    }

    #[test]
    fn smccc_1_1_discovery_and_spectre_workarounds() {
        let mut vm = two_vcpus();
        // Linux asks PSCI_FEATURES(SMCCC_VERSION) before SMCCC_VERSION.
        assert_eq!(call(&mut vm, &[0x8400_000A, 0x8000_0000]), ret(0));
        assert_eq!(call(&mut vm, &[0x8000_0001, 0x8000_0001]), ret(0));
        // A CPU that says nothing: no workaround offered.
        for w in [0x8000_8000, 0x8000_7FFF, 0x8000_3FFF] {
            assert_eq!(call(&mut vm, &[0x8000_0001, w]), ret(NOT_SUPPORTED));
        }
        // QEMU's `-cpu max`: ID_AA64PFR0_EL1 0x1301_0010_2111_0222 (CSV2
        // 3), ID_AA64PFR1_EL1 with SSBS 2.
        vm.speculation = CpuSpeculation::from_id_registers(0x1301_0010_2111_0222, 0x21);
        assert_eq!(
            call(&mut vm, &[0x8000_0001, 0x8000_8000]),
            ret(WORKAROUND_UNAFFECTED)
        );
        assert_eq!(
            call(&mut vm, &[0x8000_0001, 0x8000_3FFF]),
            ret(WORKAROUND_UNAFFECTED)
        );
        assert_eq!(
            call(&mut vm, &[0x8000_0001, 0x8000_7FFF]),
            ret(NOT_REQUIRED)
        );
        // CSV2 1 only: Spectre v2 unaffected, BHB not known to be.
        vm.speculation = CpuSpeculation::from_id_registers(1 << 56, 0);
        assert_eq!(
            call(&mut vm, &[0x8000_0001, 0x8000_8000]),
            ret(WORKAROUND_UNAFFECTED)
        );
        assert_eq!(
            call(&mut vm, &[0x8000_0001, 0x8000_3FFF]),
            ret(NOT_SUPPORTED)
        );
        assert_eq!(
            call(&mut vm, &[0x8000_0001, 0x8000_7FFF]),
            ret(NOT_SUPPORTED)
        );
    }

    #[test]
    fn cpu_on_and_affinity_info() {
        let mut vm = two_vcpus();
        assert_eq!(call(&mut vm, &[0xC400_0004, 1, 0]), ret(1), "vCPU 1 off");
        assert_eq!(call(&mut vm, &[0xC400_0004, 0, 0]), ret(0), "vCPU 0 on");
        assert_eq!(
            call(&mut vm, &[0xC400_0004, 0, 1]),
            ret(psci_ret::INVALID_PARAMETERS)
        );
        assert_eq!(
            call(&mut vm, &[0xC400_0003, 7, 0x4000, 0]),
            ret(psci_ret::INVALID_PARAMETERS)
        );
        assert_eq!(
            call(&mut vm, &[0xC400_0003, 0, 0x4000, 0]),
            ret(psci_ret::ALREADY_ON)
        );
        assert_eq!(
            call(&mut vm, &[0xC400_0003, 1, 0x4002, 0]),
            ret(psci_ret::INVALID_ADDRESS)
        );
        assert_eq!(call(&mut vm, &[0xC400_0003, 1, 0x4000, 0x55]), ret(0));
        assert_eq!(vm.started, std::vec![(1, 0x4000, 0x55)]);
        assert_eq!(
            call(&mut vm, &[0xC400_0003, 1, 0x4000, 0]),
            ret(psci_ret::ON_PENDING)
        );
        assert_eq!(call(&mut vm, &[0xC400_0004, 1, 0]), ret(2));
    }

    #[test]
    fn smc32_ignores_upper_argument_bits() {
        let mut vm = two_vcpus();
        // CPU_ON_32 with junk in the upper half of the target and entry.
        let junk = 0xdead_beef_0000_0000;
        assert_eq!(
            call(&mut vm, &[0x8400_0003, junk | 1, junk | 0x4000, 0]),
            ret(0)
        );
        assert_eq!(vm.started, std::vec![(1, 0x4000, 0)]);
    }

    #[test]
    fn power_calls_end_the_vcpu_or_system() {
        let mut vm = two_vcpus();
        assert_eq!(call(&mut vm, &[0x8400_0002]), Outcome::CpuOff);
        assert_eq!(call(&mut vm, &[0x8400_0008]), Outcome::SystemOff);
        assert_eq!(call(&mut vm, &[0x8400_0009]), Outcome::SystemReset);
    }

    #[test]
    fn console_write_checks_length() {
        let mut vm = two_vcpus();
        let word = u64::from_le_bytes(*b"hello, w");
        assert_eq!(call(&mut vm, &[0xC600_0001, 5, word]), ret(5));
        assert_eq!(vm.console, b"hello");
        assert_eq!(
            call(&mut vm, &[0xC600_0001, 49, word]),
            ret(INVALID_PARAMETER)
        );
        assert_eq!(
            call(&mut vm, &[0xC600_0001, u64::MAX]),
            ret(INVALID_PARAMETER)
        );
        assert_eq!(vm.console, b"hello", "rejected calls print nothing");
        assert_eq!(
            call(
                &mut vm,
                &[0xC600_0001, 48, word, word, word, word, word, word]
            ),
            ret(48)
        );
        assert_eq!(vm.console.len(), 53);
    }

    #[test]
    fn unknown_and_yielding_calls_are_not_supported() {
        let mut vm = two_vcpus();
        assert_eq!(call(&mut vm, &[0xC600_00FF]), ret(NOT_SUPPORTED));
        assert_eq!(call(&mut vm, &[0x8500_FF01]), ret(NOT_SUPPORTED));
        assert_eq!(
            call(&mut vm, &[0x0400_0000]),
            ret(NOT_SUPPORTED),
            "yielding call"
        );
        assert_eq!(call(&mut vm, &[0x8400_00FF]), ret(psci_ret::NOT_SUPPORTED));
        assert_eq!(call(&mut vm, &[0xBF00_0000]), ret(NOT_SUPPORTED));
    }

    #[test]
    fn pci_calls_are_range_checked_then_passed_on() {
        let mut vm = two_vcpus();
        assert_eq!(
            call(&mut vm, &[0xC600_0010, 0, 0x0108]),
            Outcome::Return([0, 1, 2, 3])
        );
        assert_eq!(
            call(&mut vm, &[0xC600_0010, 0x1_0000, 0x0108]),
            ret(INVALID_PARAMETER)
        );
        assert_eq!(
            call(&mut vm, &[0xC600_0013, 0, 0x1_0000]),
            ret(INVALID_PARAMETER)
        );
        assert_eq!(
            call(&mut vm, &[0xC600_0010, 0, 0xffff]),
            Outcome::Return([NOT_FOUND, 3, 0, 0])
        );
        assert_eq!(
            call(&mut vm, &[0xC600_0012, 1, 0]),
            Outcome::Return([0, 1, 2, 3])
        );
        assert_eq!(
            vm.pci_calls,
            [
                PciCall::Add {
                    segment: 0,
                    rid: 0x108
                },
                PciCall::Add {
                    segment: 0,
                    rid: 0xffff
                },
                PciCall::EnumerationDone { segment: 1 }
            ]
        );
    }

    #[test]
    fn vendor_queries_and_test_fail() {
        let mut vm = two_vcpus();
        assert_eq!(
            call(&mut vm, &[0x8600_FF01]),
            Outcome::Return(vendor::UID_WORDS)
        );
        assert_eq!(call(&mut vm, &[0x8600_FF00]), ret(vendor::COUNT));
        assert_eq!(call(&mut vm, &[0xC600_0002, 7]), ret(0));
        assert_eq!(vm.failed, Some(7));
    }

    #[test]
    fn vm_state_returns_the_state_in_x1() {
        let mut vm = two_vcpus();
        assert_eq!(
            call(&mut vm, &[0xC600_0003, 0]),
            Outcome::Return([0, 1, 0, 0])
        );
        assert_eq!(
            call(&mut vm, &[0xC600_0003, 1]),
            Outcome::Return([0, 0, 0, 0])
        );
        assert_eq!(call(&mut vm, &[0xC600_0003, 9]), ret(NOT_FOUND));
    }

    #[test]
    fn test_hypervisor_bug_decodes_its_kind_and_returns_the_refusal() {
        let mut vm = two_vcpus();
        assert_eq!(call(&mut vm, &[0xC600_00F0, 0]), ret(DENIED));
        assert_eq!(call(&mut vm, &[0xC600_00F0, 2]), ret(DENIED));
        assert_eq!(call(&mut vm, &[0xC600_00F0, 3]), ret(INVALID_PARAMETER));
        assert_eq!(
            vm.bugs,
            [HypervisorBug::Fault, HypervisorBug::PanicHoldingLocks]
        );
    }
}
