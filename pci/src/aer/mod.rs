//! Advanced Error Reporting: the pure part.
//!
//! The hypervisor owns AER on every physical root port. This module holds
//! everything that does not touch the hardware except through a
//! [`ConfigPort`]: servicing a root port's error interrupt, rate-limiting
//! error storms, the owner's virtual AER registers, the recovery state
//! machine with its deadline, and firmware-first CPER records. The shell
//! (the hypervisor) routes the physical interrupt to EL2, injects the
//! virtual interrupt through a GIC list register, and performs the resets.
//!
//! # Physical side: [`RootPortService`]
//!
//! - [`RootPortService::enable`] (once per physical root port, after
//!   enumeration, like Linux's AER probe): clears the port's Root Control
//!   system-error enables, clears Root Error Status and the AER status of
//!   the port and every function below, sets Device Control error
//!   reporting (bits 0-3) on them, then sets Root Error Command bits 0-2.
//!   The root port's MSI/MSI-X must stay the hypervisor's (the hwdom and
//!   guests never get them) so the interrupt is INTx routed to EL2.
//! - [`RootPortService::service`] (from the root port's interrupt handler;
//!   bounded work, no allocation once every function below was seen by
//!   `enable`): reads and clears (W1C) Root Error Status and Error Source
//!   ID, finds the sources (the Source ID first; when it is unusable — not a
//!   tracked function of this port's hierarchy — or a "multiple" bit is
//!   set, the port and its subtree are searched for functions with Device
//!   Control reporting enabled and `status & !mask != 0`, at most
//!   [`MAX_SOURCES`] per class like Linux), reads and clears each source's
//!   correctable / uncorrectable status and header log, classifies the
//!   severity by the source's Uncorrectable Severity register, and returns
//!   [`AerReport`]s: [`AerReport::Event`] ([`AerEvent`]),
//!   [`AerReport::StormMasked`], [`AerReport::SourceNotFound`].
//! - The storm limiter: per function and class (correctable, non-fatal), a
//!   window count. More than [`AerConfig::storm_threshold`] errors within
//!   [`AerConfig::storm_window_ns`] masks the offending bits in the
//!   function's physical Correctable / Uncorrectable Error Mask, reports
//!   [`AerReport::StormMasked`] once (log it), and suppresses the events.
//!   Fatal errors are never suppressed. [`RootPortService::unmask_storm`]
//!   restores the masks (e.g. after a reset, or when the function changes
//!   owner).
//!
//! # Routing and the owner's view
//!
//! Each [`AerEvent`] goes to the owner of `event.source`
//! (`vpci::Ownership::owner`). For a guest: [`crate::vpci::GuestBus::aer_deliver`]
//! sets the function's virtual AER status and header log (honouring the
//! virtual masks and severities the guest wrote) and the virtual root
//! port's Root Error Status (first / multiple, fatal / non-fatal,
//! correctable) and Error Source ID (the guest's *virtual* BDF), and says
//! whether the virtual root port's INTx must be raised (Root Error Command
//! enables that kind). The line is level: [`crate::vpci::GuestBus::aer_interrupt`]
//! says whether it is still asserted (call it after every guest write to
//! the root port, to lower it once the guest cleared Root Error Status).
//! The register logic lives in [`virtual_regs`]; the hardware domain's own
//! functions and root ports use the same logic through [`HwdomAer`], an
//! overlay of the physical root ports' and functions' AER registers.
//!
//! # Recovery: [`RecoveryTracker`]
//!
//! - Correctable and non-fatal: delivered; nothing else happens unless the
//!   owner asks for a reset.
//! - Fatal: the source is frozen ([`RecoveryState::FrozenAwaitingReset`])
//!   with a deadline ([`AerConfig::reset_deadline_ns`], from the VM
//!   config). When the owner writes SBR on its virtual root port the shell
//!   performs the narrowest real reset and calls
//!   [`RecoveryTracker::on_owner_reset`] then, when the reset engine is done,
//!   [`RecoveryTracker::on_reset_done`] → [`RecoveryState::Recovered`].
//! - Never rely on the guest: [`RecoveryTracker::poll`] returns
//!   [`ResetNeeded`] once the deadline passed; the shell resets the
//!   functions of [`recovery_functions`] with
//!   [`crate::reset_engine::narrowest_reset`], restores state, calls
//!   `on_reset_done`, logs, and marks the guest's view
//!   ([`crate::vpci::GuestBus::aer_mark_hypervisor_reset`]). A function that
//!   does not come back is [`RecoveryState::Quarantined`]: the shell puts it
//!   in the reset engine's quarantine and calls
//!   [`crate::vpci::GuestBus::aer_surprise_remove`] (its virtual config reads
//!   all-ones, the virtual root port's Presence Detect and link clear).
//!
//! # Firmware first: [`cper`]
//!
//! When ACPI HEST/GHES says the firmware owns AER, the hypervisor does not
//! touch AER registers: [`cper::parse_status_block`] decodes a Generic Error
//! Status Block and [`cper::PcieErrorSection::to_event`] turns its PCIe
//! sections into the same [`AerEvent`]s, delivered the same way.
//!
//! [`ConfigPort`]: crate::port::ConfigPort

pub mod cper;
mod hwdom;
mod recovery;
mod service;
pub mod virtual_regs;

pub use hwdom::{HwdomAer, root_port_of};
pub use recovery::{
    Recovery, RecoveryOutcome, RecoveryState, RecoveryTracker, ResetNeeded, TAKEOVER_RETRY_NS,
    recovered_by, recovery_functions, recovery_reset,
};
pub use service::{AerReport, MAX_REPORTS, MAX_SOURCES, Reports, RootPortService, ServiceStats};

use crate::addr::Bdf;

/// Uncorrectable error status bits defined by the spec (4, 5, 12-26).
pub const UNCOR_BITS: u32 = 0x07ff_f030;
/// Correctable error status bits defined by the spec.
pub const COR_BITS: u32 = 0xf1c1;
/// Device Control: correctable, non-fatal, fatal, unsupported request
/// reporting enables.
pub const DEVCTL_REPORTING: u16 = 0x000f;
/// Root Error Command: correctable, non-fatal, fatal interrupt enables.
pub const ROOT_COMMAND_ENABLES: u32 = 0x7;
/// PCIe Root Control: system error on correctable / non-fatal / fatal.
pub const RTCTL_SERR: u16 = 0x0007;
/// AER Capabilities and Control: First Error Pointer.
pub const CAP_CTRL_FEP_MASK: u32 = 0x1f;
/// AER Header Log (4 dwords) offset from the capability.
pub const AER_HEADER_LOG: u16 = 0x1c;
/// Uncorrectable status bit: Surprise Down.
pub const UNCOR_SURPRISE_DOWN: u32 = 1 << 5;

/// Severity of an error, as Linux classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Correctable,
    NonFatal,
    Fatal,
}

/// One error of one function, found by the root port service or decoded
/// from a CPER record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AerEvent {
    /// The physical function that reported it.
    pub source: Bdf,
    pub severity: Severity,
    /// Unmasked uncorrectable status bits (0 for a correctable event).
    pub uncorrectable_status: u32,
    /// Unmasked correctable status bits (0 for an uncorrectable event).
    pub correctable_status: u32,
    /// The TLP header of the first uncorrectable error (0 if none logged).
    pub header_log: [u32; 4],
    /// First Error Pointer (bit number) for uncorrectable errors.
    pub first_error_pointer: Option<u8>,
    /// The function answered all-ones (link down, removed): its status is
    /// unknown; the severity comes from the root port's status.
    pub function_unreachable: bool,
    /// From a firmware-first CPER record rather than registers.
    pub firmware_first: bool,
    /// When it was serviced (the caller's monotonic clock).
    pub at_ns: u64,
}

impl AerEvent {
    /// An event with no status, header or flags.
    pub const fn new(source: Bdf, severity: Severity, at_ns: u64) -> Self {
        Self {
            source,
            severity,
            uncorrectable_status: 0,
            correctable_status: 0,
            header_log: [0; 4],
            first_error_pointer: None,
            function_unreachable: false,
            firmware_first: false,
            at_ns,
        }
    }

    /// Correctable or uncorrectable status bits, by severity.
    pub const fn status(&self) -> u32 {
        match self.severity {
            Severity::Correctable => self.correctable_status,
            _ => self.uncorrectable_status,
        }
    }
}

/// Tunables (defaults from the VM config where it has them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AerConfig {
    /// More than this many correctable (or non-fatal) events of one function
    /// within [`Self::storm_window_ns`] is a storm: the bits are masked.
    pub storm_threshold: u32,
    pub storm_window_ns: u64,
    /// How long the owner has to reset after a fatal error before the
    /// hypervisor does it.
    pub reset_deadline_ns: u64,
}

impl AerConfig {
    pub const DEFAULT: Self = Self {
        storm_threshold: 32,
        storm_window_ns: 1_000_000_000,
        reset_deadline_ns: 5_000_000_000,
    };
}

impl Default for AerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why a root port cannot be serviced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AerError {
    /// Not a tracked function.
    NotTracked(Bdf),
    /// Tracked, but not a root port (or RCEC).
    NotRootPort(Bdf),
    /// The port has no AER capability.
    NoAer(Bdf),
}
