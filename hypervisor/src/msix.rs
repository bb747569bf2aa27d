//! The physical MSI-X tables of guests' functions: written from the
//! guests' shadows when they are used, checked for a reset the hypervisor
//! did not do (a device that resets itself clears its table), and the
//! hardware domain's inspection call.
//!
//! Decisions are `pci::vpci`'s ([`pci::vpci::GuestBus::msix_commit`]); this
//! module picks the moment (no hardware access while a reset of the
//! function runs: the reset engine restores the record instead) and reads
//! a table entry for PCI_MSIX_ENTRY. Generic over the ports, host-tested
//! against `pci::sim`.

use crate::pci_host::PciState;
use crate::smccc::{self, CallError, PciCall};
use pci::regs::{COMMAND, COMMAND_MEMORY, MSIX_ENTRY_SIZE, MSIX_FLAGS, MSIX_FLAGS_QSIZE};
use pci::vpci::{MemoryPort, MsixCommit};
use pci::{Bdf, ConfigPort};

/// After a guest's MSI-X access (an `MsixControl` or `MsixEntry` effect
/// naming `physical`): bring the physical table in line with the guest's.
/// `None` if the function is not guest `vm`'s. A result with `repaired`
/// set means the table had been lost behind the hypervisor's back and was
/// rewritten: the caller logs it (rate-limited per VM).
pub fn commit<P: ConfigPort, M: MemoryPort>(
    pci: &mut PciState<P>,
    mem: &mut M,
    vm: u16,
    physical: Bdf,
) -> Option<MsixCommit> {
    let hardware = !crate::resets::masks(pci, physical);
    pci.guest_bus(vm)?.msix_commit(mem, physical, hardware)
}

fn error(status: u64, reason: u64) -> CallError {
    CallError { status, reason }
}

/// PCI_MSIX_ENTRY (hardware domain only): entry `entry` of the physical
/// MSI-X table of a tracked function, read from the device (of any owner:
/// the hardware domain checks what the hypervisor programmed for a guest).
/// Returns x1 = address (high << 32 | low), x2 = data, x3 = vector control.
///
/// Refused: DENIED for any other caller; NOT_FOUND reason 13 for an
/// untracked function; INVALID_PARAMETER for a function without MSI-X or
/// an entry past its table; NOT_FOUND reason 4 while the table cannot be
/// read (a reset of the function runs, its memory decoding is off, its
/// table BAR has no address or lies outside the PCI windows `in_windows`
/// accepts).
pub fn inspect<P: ConfigPort, M: MemoryPort>(
    pci: &mut PciState<P>,
    mem: &mut M,
    hwdom: bool,
    caller: &str,
    call: PciCall,
    in_windows: impl Fn(u64, u64) -> bool,
) -> Result<[u64; 3], CallError> {
    let PciCall::MsixEntry {
        segment,
        rid,
        entry,
    } = call
    else {
        return Err(error(smccc::NOT_SUPPORTED, 0));
    };
    if !hwdom {
        if crate::log_limit::caller_may_log() {
            log::warn!("{caller}: PCI call {call:?} is reserved to the hardware domain: denied");
        }
        return Err(error(smccc::DENIED, 0));
    }
    let bdf = Bdf::from_rid(segment, rid);
    let Some(cap) = pci.topology.function(bdf).map(|f| f.caps.msix as u16) else {
        return Err(error(smccc::NOT_FOUND, 13));
    };
    if cap == 0 {
        return Err(error(smccc::INVALID_PARAMETER, 0));
    }
    if crate::resets::masks(pci, bdf) {
        return Err(error(smccc::NOT_FOUND, 4));
    }
    let entries = u64::from(pci.port.read16(bdf, cap + MSIX_FLAGS) & MSIX_FLAGS_QSIZE) + 1;
    if entry >= entries {
        return Err(error(smccc::INVALID_PARAMETER, 0));
    }
    if pci.port.read16(bdf, COMMAND) & COMMAND_MEMORY == 0 {
        return Err(error(smccc::NOT_FOUND, 4));
    }
    let size = u64::from(MSIX_ENTRY_SIZE);
    let at = pci::reset_engine::msix_table_address(&pci.topology, &mut pci.port, bdf)
        .and_then(|pa| pa.checked_add(entry * size))
        .filter(|&at| at.is_multiple_of(size) && in_windows(at, size))
        .ok_or(error(smccc::NOT_FOUND, 4))?;
    let dword = |mem: &mut M, k: u64| mem.read(at + 4 * k, 4) & 0xffff_ffff;
    let address = dword(mem, 0) | dword(mem, 1) << 32;
    Ok([address, dword(mem, 2), dword(mem, 3)])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::resets::{self, AfterReset};
    use core::cell::RefCell;
    use pci::EcamWindow;
    use pci::ResetAction;
    use pci::regs::*;
    use pci::sim::{Fabric, Spec, devfn};
    use pci::vpci::{Effect, Effects, GuestBus, GuestLayout};
    use std::rc::Rc;
    use std::vec::Vec;

    const MS: u64 = 1_000_000;
    /// Where the hardware domain put the nvme's BAR0 (its MSI-X table at 0).
    pub(crate) const BAR0: u64 = 0x1000_0000;
    /// Where the guest puts it.
    const GUEST_BAR0: u64 = 0x2000_0000;

    /// The simulated fabric as both config space and BAR memory, as the
    /// hypervisor has ECAM and its BAR mappings.
    #[derive(Clone)]
    pub(crate) struct Hw(Rc<RefCell<Fabric>>);
    impl ConfigPort for Hw {
        fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
            self.0.borrow_mut().read32(bdf, offset)
        }
        fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
            self.0.borrow_mut().write32(bdf, offset, value)
        }
        fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
            self.0.borrow_mut().read16(bdf, offset)
        }
        fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
            self.0.borrow_mut().write16(bdf, offset, value)
        }
        fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
            self.0.borrow_mut().read8(bdf, offset)
        }
        fn write8(&mut self, bdf: Bdf, offset: u16, value: u8) {
            self.0.borrow_mut().write8(bdf, offset, value)
        }
    }
    impl MemoryPort for Hw {
        fn read(&mut self, pa: u64, width: u16) -> u64 {
            MemoryPort::read(&mut *self.0.borrow_mut(), pa, width)
        }
        fn write(&mut self, pa: u64, width: u16, value: u64) {
            MemoryPort::write(&mut *self.0.borrow_mut(), pa, width, value)
        }
    }
    impl Hw {
        fn entry(&self, bdf: Bdf, i: u16) -> Option<[u32; 4]> {
            self.0.borrow_mut().msix_entry(bdf, i)
        }
    }

    /// A root port with an nvme given to guest 1, whose virtual root port
    /// routes bus 1, BAR0 programmed and Memory on.
    pub(crate) fn state() -> (PciState<Hw>, Hw, Bdf) {
        let mut fabric = Fabric::new().with_root_complex(
            0,
            0,
            &[(
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
            )],
        );
        let found = fabric.enumerate();
        let nvme = Bdf::new(0, 1, 0, 0);
        // The hardware domain's programming of the BAR.
        fabric.write32(nvme, 0x10, BAR0 as u32 | 4);
        fabric.write32(nvme, 0x14, 0);
        fabric.write16(nvme, COMMAND, COMMAND_MEMORY | COMMAND_BUS_MASTER);
        let window = EcamWindow {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
        };
        let hw = Hw(Rc::new(RefCell::new(fabric)));
        let mut pci = PciState::new(std::vec![window], hw.clone());
        for b in &found {
            pci.topology.report_add(*b, &mut pci.port).unwrap();
        }
        let units = pci
            .ownership
            .assign(&mut pci.topology, &mut pci.port, 1, &[nvme], false)
            .unwrap();
        let layout = GuestLayout {
            ecam_base: 0x3f00_0000,
            ecam_buses: 16,
            mem32: (0x1000_0000, 0x2eff_0000),
            mem64: (0x80_0000_0000, 0x80_0000_0000),
            forbidden: Vec::new(),
        };
        let mut bus = GuestBus::new(&units, &pci.topology, &mut pci.port, layout).unwrap();
        let mut e = Effects::new();
        let rp = 1 << 15;
        bus.config_write(&mut pci.port, rp + 0x18, 4, 0x0001_0100, &mut e);
        let f = 1 << 20;
        bus.config_write(&mut pci.port, f + 0x10, 4, GUEST_BAR0 as u32, &mut e);
        bus.config_write(&mut pci.port, f + 0x14, 4, 0, &mut e);
        bus.config_write(&mut pci.port, f + 4, 2, COMMAND_MEMORY as u32, &mut e);
        pci.guests.insert(1, bus);
        (pci, hw, nvme)
    }

    /// The guest programs vector 0 and turns MSI-X on (Enable with the
    /// Function Mask, the entry, unmask, Function Mask off), the shell
    /// committing after each access.
    fn guest_programs_vector0(
        pci: &mut PciState<Hw>,
        hw: &mut Hw,
        nvme: Bdf,
        data: u64,
    ) -> MsixCommit {
        let cap = pci.topology.function(nvme).unwrap().caps.msix as u64;
        let ctl = (1 << 20) + cap + 2;
        let mut e = Effects::new();
        let bus = pci.guest_bus(1).unwrap();
        bus.config_write(hw, ctl, 2, 0xc000, &mut e);
        assert!(bus.msix_write(hw, GUEST_BAR0, 8, 0x0800_0040, &mut e));
        assert!(bus.msix_write(hw, GUEST_BAR0 + 8, 4, data, &mut e));
        assert!(bus.msix_write(hw, GUEST_BAR0 + 12, 4, 0, &mut e));
        bus.config_write(hw, ctl, 2, 0x8000, &mut e);
        let mut total = MsixCommit::default();
        for eff in e.iter() {
            if let Effect::MsixControl { physical, .. } | Effect::MsixEntry { physical, .. } = *eff
            {
                let c = commit(pci, hw, 1, physical).unwrap();
                total.updated += c.updated;
                total.repaired += c.repaired;
            }
        }
        total
    }

    fn inspect_entry(
        pci: &mut PciState<Hw>,
        hw: &mut Hw,
        hwdom: bool,
        bdf: Bdf,
        entry: u64,
    ) -> Result<[u64; 3], CallError> {
        let call = PciCall::MsixEntry {
            segment: 0,
            rid: bdf.rid(),
            entry,
        };
        let windows = |pa: u64, len: u64| pa >= 0x1000_0000 && pa + len <= 0x3eff_0000;
        inspect(pci, hw, hwdom, "test", call, windows)
    }

    #[test]
    fn the_table_is_written_when_used_and_restored_after_a_reset_the_guest_did_not_ask_for() {
        let (mut pci, mut hw, nvme) = state();
        let c = guest_programs_vector0(&mut pci, &mut hw, nvme, 0x40);
        assert_eq!((c.updated, c.repaired), (1, 0));
        assert_eq!(hw.entry(nvme, 0), Some([0x0800_0040, 0, 0x40, 0]));
        // The hardware domain sees it through PCI_MSIX_ENTRY; a guest may not ask.
        let ok = |a: u64, d: u64, c: u64| Ok([a, d, c]);
        assert_eq!(
            inspect_entry(&mut pci, &mut hw, true, nvme, 0),
            ok(0x0800_0040, 0x40, 0)
        );
        assert_eq!(inspect_entry(&mut pci, &mut hw, true, nvme, 1), ok(0, 0, 1));
        let denied = Err(error(smccc::DENIED, 0));
        assert_eq!(inspect_entry(&mut pci, &mut hw, false, nvme, 0), denied);
        let invalid = Err(error(smccc::INVALID_PARAMETER, 0));
        assert_eq!(inspect_entry(&mut pci, &mut hw, true, nvme, 65), invalid);
        // QEMU's root port has an MSI-X table in a BAR nobody programmed.
        let rp = Bdf::new(0, 0, 1, 0);
        let unreadable = Err(error(smccc::NOT_FOUND, 4));
        assert_eq!(inspect_entry(&mut pci, &mut hw, true, rp, 0), unreadable);
        let absent = Bdf::new(0, 9, 0, 0);
        let untracked = Err(error(smccc::NOT_FOUND, 13));
        assert_eq!(inspect_entry(&mut pci, &mut hw, true, absent, 0), untracked);
        // A reset the hypervisor does on its own (the guest's virtual state
        // stays, e.g. an AER recovery): the table comes back from the record.
        let flr = resets::flr_of(&pci, nvme).unwrap();
        assert!(matches!(flr, ResetAction::Function { .. }));
        resets::start(&mut pci, &mut hw, flr, 0, AfterReset::Nothing, 1).unwrap();
        assert_eq!(inspect_entry(&mut pci, &mut hw, true, nvme, 0), unreadable);
        // The guest rewrites vector 0 meanwhile: recorded, not written.
        let c = guest_programs_vector0(&mut pci, &mut hw, nvme, 0x42);
        assert_eq!((c.updated, c.repaired), (1, 0));
        let mut now = 0;
        for _ in 0..64 {
            let (_, next) = resets::step(&mut pci, &mut hw, now);
            match next {
                Some(n) => now = n.max(now),
                None => break,
            }
        }
        assert!(pci.resets.is_empty());
        assert!(now >= 100 * MS);
        assert_eq!(hw.entry(nvme, 0), Some([0x0800_0040, 0, 0x42, 0]));
        // Nothing lost since: the next use finds the table as written.
        let c = guest_programs_vector0(&mut pci, &mut hw, nvme, 0x42);
        assert_eq!(c, MsixCommit::default());
    }

    #[test]
    fn a_backdoor_reset_is_found_when_the_guest_unmasks_and_repaired() {
        let (mut pci, mut hw, nvme) = state();
        guest_programs_vector0(&mut pci, &mut hw, nvme, 0x40);
        assert!(hw.0.borrow_mut().backdoor_msix_reset(nvme));
        let cleared = Ok([0, 0, 1]);
        assert_eq!(inspect_entry(&mut pci, &mut hw, true, nvme, 0), cleared);
        // Linux's restore after its own device reset: the same vector again.
        let c = guest_programs_vector0(&mut pci, &mut hw, nvme, 0x40);
        assert_eq!((c.updated, c.repaired), (0, 65));
        assert_eq!(hw.entry(nvme, 0), Some([0x0800_0040, 0, 0x40, 0]));
        assert_eq!(commit(&mut pci, &mut hw, 2, nvme), None, "not guest 2's");
    }
}
