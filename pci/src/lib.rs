//! PCIe logic of the hypervisor. Pure state machine: no hardware access except
//! through [`ConfigPort`]-style ports, no unsafe code.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod addr;
pub mod caps;
mod fnmap;
pub mod port;
pub mod regs;
#[cfg(feature = "sim")]
pub mod sim;

pub use addr::{Bdf, EcamWindow};
pub use port::ConfigPort;
pub mod reset;
pub mod topology;
pub mod units;

pub use reset::{ResetAction, ResetCoverage, ResetError, ResetMethod};
pub use topology::{
    AcsPolicy, Function, FunctionKind, HostBridge, ReportOutcome, Topology, TopologyConfig,
    TopologyError,
};
pub use units::{Unit, UnitId, UnitTable};
