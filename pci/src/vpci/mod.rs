//! Config-space virtualization ("vPCI"): who owns each function, the
//! hardware domain's filtered view, and each guest's virtual PCI bus.
//!
//! Pure logic like the rest of the crate: physical config space through a
//! [`ConfigPort`], BAR memory through a [`MemoryPort`], and what the shell
//! must do (stage-2 maps, traps, resets) returned as [`Effect`]s.
//!
//! # Ownership and the hardware domain
//!
//! [`Ownership`] says who owns each function ([`Owner`]); everything not
//! given to a guest is the hardware domain's. [`Ownership::assign`] gives a
//! guest whole assignment units ([`crate::units`]): a request naming part of
//! a unit fails with [`AssignError::SplitsUnit`] listing the missing members,
//! unless `whole_units` takes them along. Bridges are never assigned; a
//! unit's bridges (a root port without ACS, a PCIe-to-PCI bridge) stay with
//! the hardware domain, protected like every bridge above a guest function.
//!
//! Every hardware-domain config access goes through
//! [`Ownership::hwdom_access`] (the decision, O(log n), no allocation) or
//! [`Ownership::hwdom_apply`] (decision and access through the port):
//! - guest functions read all-ones; writes to them are refused;
//! - on a bridge above a guest function (precomputed when ownership
//!   changes), writes keep these bits at their current value: bus numbers,
//!   I/O / memory / prefetchable windows, Bridge Control SBR and VGA Enable,
//!   Command I/O / Memory / Bus Master, ACS Control, Link Control Link
//!   Disable, PM power state; on the PF of a guest's VF: SR-IOV Control and
//!   NumVFs, Initiate FLR, AF FLR, PM power state. Everything else of those
//!   functions stays the hardware domain's (AER of root ports is the AER
//!   issue's). A write that leaves them unchanged passes silently (Linux
//!   rewrites these registers read-modify-write with the same values); one
//!   that would change them is applied with them kept, and a [`Refusal`] is
//!   returned for the log;
//! - on any other bridge, [`Ownership::hwdom_apply`] refuses bus numbers
//!   that would claim the bus of a guest's function, and memory windows
//!   that would claim a guest's BAR memory (recorded by the shell with
//!   [`Ownership::set_guest_memory`]).
//!
//! After a successful [`Ownership::assign`] (and before the guest starts)
//! the shell should reset the functions (every function is reset before it
//! changes owner), build the [`GuestBus`],
//! and record [`GuestBus::physical_bars`] with
//! [`Ownership::set_guest_memory`] and in its own hardware-domain stage-2.
//!
//! # A guest's virtual bus
//!
//! [`GuestBus::new`] takes the assigned units and a [`GuestLayout`]. The
//! virtual ECAM holds, on bus 0, one virtual root port per unit at device
//! `index + 1` (1b36:000c, type 1 header, PCIe Root Port capability with
//! link up and a present card, AER as storage). Each unit's functions sit on
//! device 0 of the root port's secondary bus, whatever bus numbers the guest
//! programs (a PCIe link has one device; Linux only scans device 0 below a
//! root port). Function numbers are kept for a unit that is one physical
//! device including its function 0, otherwise compacted 0, 1, ... in address
//! order. Functions below a root port without a valid secondary/subordinate
//! range, or while its Secondary Bus Reset is held, read all-ones.
//!
//! The shell calls [`GuestBus::config_read`] / [`GuestBus::config_write`]
//! with the offset into the virtual ECAM for each naturally aligned piece of
//! at most 4 bytes, and [`GuestBus::msix_read`] / [`GuestBus::msix_write`]
//! for accesses to pages it trapped after an [`Effect::TrapMsix`]. None of
//! them allocates; function lookup is O(1), register lookup O(log n) in the
//! function's rule list.
//!
//! # Register policy of an assigned function
//!
//! Explicit data in [`policy`]: a list of (offset, length, [`Policy`]) per
//! header and capability, used by both paths:
//!
//! | register | policy |
//! |---|---|
//! | vendor/device, class/revision, subsystem, CIS, interrupt pin | read-only (hardware) |
//! | Command | emulated: I/O, Memory, Bus Master, Parity, SERR, INTx Disable virtual; Bus Master mirrored to hardware; Memory drives BAR mappings |
//! | Status | hardware, error bits RW1C through |
//! | cache line, interrupt line | virtual storage |
//! | latency timer, BIST, reserved | hidden (0) |
//! | header type | virtual multi-function bit of the virtual device |
//! | BARs 0-5 | emulated: physical sizing mask, physical flag bits (I/O, 64-bit, prefetchable) kept on read-back; 64-bit pairs |
//! | expansion ROM | emulated register (sizing, enable); never mapped ([`BarRefusal::RomNotMapped`]) |
//! | capability pointer and each Next | virtual chain of the visible capabilities |
//! | PM | PMC read-only; power state and PME Enable virtual (the device stays in D0: a D3hot→D0 transition would reset it behind the hypervisor) |
//! | PCIe | read-only except Device Control (error reporting enables virtual; payload, Relaxed Ordering, No Snoop read-only; Initiate FLR → [`Effect::FunctionLevelReset`], reads 0) and Device Status (RW1C through) |
//! | MSI | all virtual (physical MSI stays disabled: no vITS on ARM yet) |
//! | MSI-X | Enable and Function Mask virtual; table/PBA location read-only; table entries shadowed, written to the physical table when used ([`GuestBus::msix_commit`]) |
//! | AF | FLR → effect; rest read-only |
//! | vendor-specific | read-only |
//! | other capabilities (VPD, PCI-X, EA, ...) | skipped by the chain, first dword hidden |
//! | device-specific registers in 0x40..0x100 outside capabilities | read-only |
//! | extended space | a virtual AER (storage, RW1C status) at 0x100 if the device has AER; everything else (ACS, SR-IOV, ARI, ATS, PASID, L1SS, LTR, DPC, Resizable BAR, ...) hidden |
//!
//! At construction the physical function's Memory decoding is turned on
//! (the hardware domain's BAR addresses stay), and Bus Master off; from then
//! on physical Bus Master follows the guest's. Physical INTx Disable is left
//! to the hypervisor's INTx handling.
//!
//! # BAR mapping
//!
//! When the guest's Memory bit is set and a memory BAR holds an address, the
//! BAR is placed if it lies inside `mem32` (or `mem64`, for a 64-bit BAR),
//! overlaps neither the virtual ECAM nor `forbidden` nor another mapped BAR
//! of this guest, is at least one page and has a physical address: then
//! [`Effect::Map`] for each piece that is not an MSI-X table/PBA page, and
//! [`Effect::TrapMsix`] for those pages. Otherwise [`Effect::BarRefused`].
//! When the address changes, the BAR resizes, or Memory goes off:
//! [`Effect::Unmap`] of the whole BAR first. A refused BAR is evaluated
//! again when the guest writes it (even with the same value) or toggles
//! Memory. I/O BARs are emulated
//! registers only.

//!
//! # What the shell does
//!
//! - Hardware domain ECAM trap: split into naturally aligned pieces of at
//!   most 4 bytes, [`Ownership::hwdom_apply`] each, log any [`Refusal`].
//! - Giving functions to a guest: [`Ownership::assign`]; reset them;
//!   [`GuestBus::new`]; [`Ownership::set_guest_memory`] with
//!   [`GuestBus::physical_bars`], which also leave the hardware domain's
//!   stage-2; the guest's device tree from [`GuestBus::describe`].
//! - Guest ECAM trap: split likewise, [`GuestBus::config_read`] /
//!   [`GuestBus::config_write`], then apply the [`Effects`] in order (an
//!   [`Effect::Unmap`] always precedes the new [`Effect::Map`]s of a BAR).
//! - [`Effect::TrapMsix`] pages: leave unmapped, send their accesses to
//!   [`GuestBus::msix_read`] / [`GuestBus::msix_write`].
//! - [`Effect::FunctionLevelReset`] / [`Effect::SecondaryBusReset`]: perform
//!   the physical reset and restore what the hypervisor set: BARs
//!   as the hardware domain programmed them, Memory on, Bus Master as
//!   [`GuestBus::virtual_command`] says, the MSI-X table from the
//!   hypervisor's own copy. The virtual state was reset already.
//! - INTx: physical Interrupt Disable is the hypervisor's; the guest's is
//!   in [`GuestBus::virtual_command`]. MSI has no physical effect yet (no
//!   vITS): [`Effect::MsiControl`] tells what the guest asked for.
//! - [`Effect::MsixControl`] / [`Effect::MsixEntry`]: call
//!   [`GuestBus::msix_commit`]. While the guest's MSI-X is enabled and not
//!   function-masked, the entries it unmasked are written to the physical
//!   table (physical MSI-X Enable stays off until MSI delivery exists: the
//!   table is the state a reset loses); before that the physical
//!   table is checked against what the hypervisor last wrote, and a table
//!   lost to a reset the hypervisor did not do is rewritten and reported.
//!   During a reset of the function pass `hardware = false` and give the
//!   reset engine [`GuestBus::msix_programmed`] as its
//!   [`crate::reset_engine::MsixShadow`].
//! - Guest stops: [`GuestBus::quiesce`], then [`Ownership::release`].
//!
//! # Not done yet
//!
//! SR-IOV VFs in a guest (ids and BARs live in the PF): refused by
//! [`GuestBus::new`]. The virtual root ports' windows are storage only
//! (BARs are checked against the [`GuestLayout`] windows instead). The
//! virtual AER registers are plain storage until the AER issue drives them.

mod bus;
mod effects;
mod function;
mod ownership;
pub mod placement;
pub mod policy;
mod rootport;

use alloc::vec::Vec;

pub use crate::port::{ConfigPort, MemoryPort};
pub use bus::{GuestBus, MAX_UNIT_FUNCTIONS, MAX_UNITS, ROM_INDEX};
pub use effects::{BarRefusal, EFFECTS_CAPACITY, Effect, Effects};
pub use function::MsixCommit;
pub use ownership::{
    AssignError, HwdomDecision, HwdomOutcome, Owner, Ownership, Refusal, ReportError,
};
pub use placement::{PendingWrite, PlacementError, check_guest_placement, decoded_memory};
pub use policy::{Policy, Rule, Special};
pub use rootport::{ROOT_PORT_DEVICE, ROOT_PORT_VENDOR};

use crate::addr::Bdf;
use crate::caps::CapError;

/// Whether `width` bytes at `offset` are one config access: 1, 2 or 4
/// naturally aligned bytes. [`GuestBus::config_read`] and
/// [`GuestBus::config_write`] take only these (the shell splits others);
/// the same test on both sides lets the compiler make it once.
#[inline(always)]
pub const fn single_access(offset: u64, width: u64) -> bool {
    // Bit `w` of 0x16: w is 1, 2 or 4.
    width <= 4 && (0x16u64 >> width) & 1 != 0 && offset & width.wrapping_sub(1) == 0
}

/// Where a guest's virtual PCI lives in its IPA space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// IPA of the virtual ECAM window.
    pub ecam_base: u64,
    /// Buses of the virtual ECAM (1 MiB each), bus 0 first.
    pub ecam_buses: u8,
    /// 32-bit memory window (base, size) for BARs.
    pub mem32: (u64, u64),
    /// 64-bit memory window (base, size) for 64-bit BARs.
    pub mem64: (u64, u64),
    /// IPA ranges (base, size) BARs must not overlap: RAM, UART, GIC, ...
    pub forbidden: Vec<(u64, u64)>,
}

/// Why a guest bus could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpciError {
    /// More units than root port slots on bus 0 ([`MAX_UNITS`]).
    TooManyUnits(usize),
    /// A unit is empty or has more functions than device 0 can hold.
    UnitSize {
        unit: usize,
        functions: usize,
    },
    NotTracked(Bdf),
    IsBridge(Bdf),
    /// SR-IOV VFs are not supported yet (their ids and BARs live in the PF).
    VirtualFunction(Bdf),
    /// The function does not answer.
    NoFunction(Bdf),
    /// Not a type 0 header.
    NotType0(Bdf),
    /// Its capability list is corrupt.
    Capability {
        bdf: Bdf,
        error: CapError,
    },
}
