//! Where BARs may decode, against the simulated fabric: a guest is not
//! given a function whose BAR the hardware domain aimed at RAM, outside the
//! host bridge's windows or over memory its own devices decode; and the
//! hardware domain cannot move one of its BARs over a guest's afterwards.

mod common;
mod vpci_fixture;

use common::{b, track};
use pci::regs::*;
use pci::sim::{Fabric, Spec, devfn};
use pci::vpci::*;
use pci::{Bdf, ConfigPort};
use vpci_fixture::*;

/// QEMU virt's memory windows (32-bit, 64-bit).
const WINDOWS: [(u64, u64); 2] = [(0x1000_0000, 0x2eff_0000), (0x80_0000_0000, 0x80_0000_0000)];

/// Root ports at 00:01.0 (e1000e, for the guest: 32-bit BARs) and 00:02.0
/// (nvme with an expansion ROM, the hwdom's: a 64-bit BAR0 it can place
/// anywhere), BARs placed
/// like a hardware domain would.
fn setup() -> (Fabric, pci::Topology, Ownership, Bdf, Bdf) {
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme().rom(0x4_0000)),
            ),
        ],
    );
    let topo = track(&mut fab);
    let all = fab.present_functions();
    hwdom_programs_bars(&mut fab, &all);
    (fab, topo, Ownership::new(), b("01:00.0"), b("02:00.0"))
}

fn give(
    fab: &mut Fabric,
    topo: &mut pci::Topology,
    own: &mut Ownership,
    f: Bdf,
) -> Result<GuestBus, PlacementError> {
    let units = own.assign(topo, fab, 1, &[f], false).unwrap();
    let bus = GuestBus::new(&units, topo, fab, layout()).unwrap();
    let checked = check_guest_placement(&bus, 1, topo, own, fab, &WINDOWS);
    if checked.is_err() {
        own.release(topo, 1);
    }
    checked.map(|()| bus)
}

fn bar0(fab: &mut Fabric, f: Bdf) -> u64 {
    let lo = fab.read32(f, BAR0) & !0xf;
    let hi = if fab.read32(f, BAR0) & 6 == 4 {
        fab.read32(f, BAR0 + 4)
    } else {
        0
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The hwdom writes a 64-bit BAR0 (both halves) the way Linux does.
fn set_bar0(fab: &mut Fabric, own: &Ownership, f: Bdf, addr: u64) -> Option<Refusal> {
    let flags = fab.read32(f, BAR0) & 0xf;
    let lo = own.hwdom_apply(fab, f, BAR0, 4, Some(addr as u32 | flags));
    let hi =
        (flags & 6 == 4).then(|| own.hwdom_apply(fab, f, BAR0 + 4, 4, Some((addr >> 32) as u32)));
    lo.refused.or(hi.and_then(|h| h.refused))
}

#[test]
fn well_placed_bars_pass() {
    let (mut fab, mut topo, mut own, mine, _) = setup();
    assert!(give(&mut fab, &mut topo, &mut own, mine).is_ok());
}

#[test]
fn a_guests_bar_aimed_at_ram_or_outside_the_windows_is_refused() {
    // The hypervisor's image, the hwdom's RAM, the UART.
    for addr in [0x4000_0000u64, 0x4800_0000, 0x0900_0000] {
        let (mut fab, mut topo, mut own, mine, _) = setup();
        assert_eq!(
            set_bar0(&mut fab, &own, mine, addr),
            None,
            "not a guest's yet"
        );
        assert_eq!(bar0(&mut fab, mine), addr);
        match give(&mut fab, &mut topo, &mut own, mine) {
            Err(PlacementError::OutsideWindows {
                function, bar, pa, ..
            }) => {
                assert_eq!((function, bar, pa), (mine, 0, addr));
            }
            other => panic!("{addr:#x}: {other:?}"),
        }
        assert_eq!(own.owner(mine), Owner::Hwdom, "refused: the hwdom keeps it");
    }
}

#[test]
fn a_guests_bar_over_memory_a_hwdom_device_decodes_is_refused() {
    let (mut fab, mut topo, mut own, mine, theirs) = setup();
    // The hwdom moves its nvme's BAR0 onto the guest's e1000e before
    // reporting it.
    let target = bar0(&mut fab, mine);
    fab.write32(theirs, BAR0, target as u32 | 4);
    fab.write32(theirs, BAR0 + 4, (target >> 32) as u32);
    match give(&mut fab, &mut topo, &mut own, mine) {
        Err(PlacementError::Overlaps {
            function, other, ..
        }) => {
            assert_eq!((function, other), (mine, theirs));
        }
        other => panic!("{other:?}"),
    }
    // Not decoding (Memory Space off): no overlap.
    let cmd = fab.read16(theirs, COMMAND);
    fab.write16(theirs, COMMAND, cmd & !COMMAND_MEMORY);
    assert!(give(&mut fab, &mut topo, &mut own, mine).is_ok());
    // The sizing left the nvme as it was.
    assert_eq!(fab.read32(theirs, BAR0) & !0xf, target as u32);
    assert_eq!(fab.read16(theirs, COMMAND), cmd & !COMMAND_MEMORY);
}

#[test]
fn the_hwdom_cannot_move_its_bar_over_a_guests() {
    let (mut fab, mut topo, mut own, mine, theirs) = setup();
    let bus = give(&mut fab, &mut topo, &mut own, mine).unwrap();
    own.set_guest_memory(1, bus.physical_bars());
    let target = bar0(&mut fab, mine);
    let before = bar0(&mut fab, theirs);
    let cmd = fab.read16(theirs, COMMAND);
    assert_ne!(cmd & COMMAND_MEMORY, 0);
    // While decoding: refused. Its low half moves (the BAR then decodes
    // high in the 64-bit window, over nothing of the guest's); the high
    // half that would complete the move is dropped.
    assert_eq!(
        set_bar0(&mut fab, &own, theirs, target),
        Some(Refusal::BarOverlapsGuest)
    );
    assert_eq!(bar0(&mut fab, theirs), (before & !0xffff_ffff) | target);
    assert_eq!(fab.read16(theirs, COMMAND), cmd, "decoding restored");
    // Elsewhere in the window: fine.
    let free = target + 0x10_0000;
    assert_eq!(set_bar0(&mut fab, &own, theirs, free), None);
    assert_eq!(bar0(&mut fab, theirs), free);
    // With decoding off the move is allowed, but turning decoding on over
    // the guest's BAR is not.
    own.hwdom_apply(
        &mut fab,
        theirs,
        COMMAND,
        2,
        Some(u32::from(cmd & !COMMAND_MEMORY)),
    );
    assert_eq!(set_bar0(&mut fab, &own, theirs, target), None);
    let on = own.hwdom_apply(&mut fab, theirs, COMMAND, 2, Some(u32::from(cmd)));
    assert_eq!(on.refused, Some(Refusal::BarOverlapsGuest));
    assert_eq!(fab.read16(theirs, COMMAND) & COMMAND_MEMORY, 0);
    // Its expansion ROM neither.
    let rom = own.hwdom_apply(
        &mut fab,
        theirs,
        ROM_BAR,
        4,
        Some(target as u32 | ROM_ENABLE),
    );
    assert_eq!(rom.refused, None, "not decoding");
    // Moved away and on again: decoding.
    assert_eq!(set_bar0(&mut fab, &own, theirs, free), None);
    own.hwdom_apply(&mut fab, theirs, ROM_BAR, 4, Some(0));
    let on = own.hwdom_apply(&mut fab, theirs, COMMAND, 2, Some(u32::from(cmd)));
    assert_eq!(on.refused, None);
    let rom = own.hwdom_apply(
        &mut fab,
        theirs,
        ROM_BAR,
        4,
        Some(target as u32 | ROM_ENABLE),
    );
    assert_eq!(rom.refused, Some(Refusal::BarOverlapsGuest));
    // The guest's BAR is where it was.
    assert_eq!(bar0(&mut fab, mine), target);
}
