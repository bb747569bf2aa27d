//! PCIe logic of the hypervisor. A pure state machine: `no_std` + `alloc`, no
//! unsafe code, no hardware access except through [`ConfigPort`].
//!
//! - [`addr`]: function addresses ([`Bdf`]) and ECAM window decoding.
//! - [`regs`]: config-space offsets and bits.
//! - [`port`]: the [`ConfigPort`] trait the hypervisor implements over ECAM.
//! - [`caps`]: bounded, defensive capability-list walkers.
//! - [`topology`]: the [`Topology`] tracker: validates "function added /
//!   removed" reports from the hardware domain, in any order, and keeps the
//!   tree (orphans wait for their bridge).
//! - [`units`]: assignment units (ACS, DMA aliases, multi-function devices,
//!   switches, quirks); the rules with examples are in that module's docs.
//! - [`reset`]: per-function reset methods (probed like Linux's
//!   `reset_method`, overridable, quirked), their scopes, and the coverage
//!   query a VMM asks before relying on reset.
//! - [`reset_engine`]: performs resets as non-blocking state machines with
//!   the spec's timing, saving and restoring config state (MSI-X from the
//!   hypervisor's shadow); guest SBR → narrowest reset, reservations,
//!   quarantine.
//! - [`aer`]: Advanced Error Reporting: the root port service (source
//!   search, classification, storm limiter), the owners' virtual AER
//!   registers, fatal-error recovery with a deadline, firmware-first CPER.
//! - `sim` (feature `sim`): a simulated fabric that answers config accesses
//!   like hardware, for tests, fuzzing and benchmarks.
//!
//! ```
//! # #[cfg(feature = "sim")] {
//! use pci::sim::{Fabric, Spec, devfn};
//! use pci::{HostBridge, Topology, TopologyConfig};
//!
//! let mut fabric = Fabric::new().with_root_complex(
//!     0,
//!     0,
//!     &[(devfn(1, 0), Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()))],
//! );
//! let found = fabric.enumerate();
//! let mut topo = Topology::new(TopologyConfig::new(&[HostBridge {
//!     segment: 0,
//!     bus_start: 0,
//!     bus_end: 255,
//! }]));
//! for bdf in found.iter().rev() {
//!     topo.report_add(*bdf, &mut fabric).unwrap(); // any order
//! }
//! assert_eq!(topo.units().len(), 2); // root port, nvme: ACS enabled by the tracker
//! # }
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod addr;
pub mod aer;
pub mod caps;
mod fnmap;
pub mod port;
pub mod regs;
pub mod reset;
pub mod reset_engine;
#[cfg(feature = "sim")]
pub mod sim;
pub mod topology;
pub mod units;
pub mod vpci;

pub use addr::{Bdf, EcamWindow};
pub use aer::{AerConfig, AerEvent, AerReport, RecoveryTracker, RootPortService, Severity};
pub use port::{ConfigPort, MemoryPort};
pub use reset::{ResetAction, ResetCoverage, ResetError, ResetMethod};
pub use reset_engine::{EngineError, ResetJob, ResetOutcome, SavedState, Step};
pub use topology::{
    AcsPolicy, Function, FunctionKind, HostBridge, ReportOutcome, Topology, TopologyConfig,
    TopologyError,
};
pub use units::{Unit, UnitId, UnitTable};
