//! What a real guest driver reads of its function, `lspci -vvv` style:
//! the whole config space of the virtual function, dword by dword, against
//! the physical one. Every difference is one the policy makes on purpose;
//! the list below holds them, per device, so that a change of what a guest
//! sees shows here. And every capability a driver needs is in the virtual
//! list: virtio's five vendor capabilities with their bodies.

mod common;
mod vpci_fixture;

use common::{b, track};
use pci::regs::*;
use pci::sim::{Fabric, Spec, devfn};
use pci::vpci::{GuestBus, GuestLayout, Ownership};
use pci::{Bdf, ConfigPort};

/// Why a register reads differently in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    /// Command/Status: Memory, I/O and Bus Master are the guest's own
    /// (virtual), and so is Status' Capabilities List view.
    Command,
    /// A BAR: the guest's address, not the physical one.
    Bar,
    /// Expansion ROM: hidden (reads 0).
    Rom,
    /// Interrupt Line / Pin: the guest's virtual INTx routing.
    Interrupt,
    /// The Next pointer of a capability whose successor is hidden (the
    /// chain skips it), or the capability itself hidden.
    Chain,
    /// Message Control of MSI-X: Enable and Function Mask are virtual.
    MsixControl,
    /// PCIe Device Control/Status and Link Control: the guest's own virtual
    /// copy (error reporting, FLR).
    PcieControl,
    /// Extended space: only the virtual AER capability, at 0x100.
    ExtendedAer,
    /// Extended space past the virtual AER: hidden.
    ExtendedHidden,
}

/// A device, and the dwords its guest reads differently.
type Case = (&'static str, Spec, &'static [(u16, Why)]);

fn layout() -> GuestLayout {
    GuestLayout {
        ecam_base: 0x3000_0000,
        ecam_buses: 16,
        mem32: (0x1000_0000, 0x1000_0000),
        mem64: (0x80_0000_0000, 0x10_0000_0000),
        forbidden: vec![(0x4000_0000, 0x1000_0000)],
    }
}

/// A root port with `device` below it (01:00.0), its BARs programmed and
/// decoding on as a hardware domain leaves them; the function given to a
/// guest whose Linux-like enumerator numbered the root port's bus 1.
fn assigned(device: Spec) -> (Fabric, GuestBus, Bdf) {
    let mut fab = Fabric::new().with_root_complex(
        0,
        0,
        &[(devfn(1, 0), Spec::qemu_root_port().child(0, 0, device))],
    );
    let mut topo = track(&mut fab);
    let f = b("01:00.0");
    vpci_fixture::hwdom_programs_bars(&mut fab, &[f]);
    let mut own = Ownership::new();
    let units = own.assign(&mut topo, &mut fab, 1, &[f], false).unwrap();
    let mut g = GuestBus::new(&units, &topo, &mut fab, layout()).unwrap();
    let mut e = pci::vpci::Effects::new();
    g.config_write(&mut fab, vcfg(0, 1, PRIMARY_BUS), 4, 0x0001_0100, &mut e);
    (fab, g, f)
}

fn vcfg(bus: u8, dev: u8, reg: u16) -> u64 {
    ((bus as u64) << 20) | ((devfn(dev, 0) as u64) << 12) | reg as u64
}

/// The capability list as (offset, id) through a config reader.
fn chain(mut read: impl FnMut(u16) -> u32) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut at = (read(CAP_PTR) & 0xfc) as u16;
    while at != 0 && out.len() < 48 {
        let v = read(at);
        out.push((at, v as u8));
        at = ((v >> 8) & 0xfc) as u16;
    }
    out
}

/// The dwords of config space that read differently in the guest, with
/// why, given the physical capability offsets.
fn differences(fab: &mut Fabric, g: &mut GuestBus, f: Bdf) -> Vec<(u16, Why)> {
    let phys_caps = chain(|r| fab.read32(f, r));
    let cap_of = |reg: u16| {
        phys_caps
            .iter()
            .filter(|(o, _)| *o <= reg)
            .max_by_key(|(o, _)| *o)
            .copied()
    };
    let mut out = Vec::new();
    for reg in (0..0x1000u16).step_by(4) {
        let v = g.config_read(fab, vcfg(1, 0, reg), 4);
        let p = fab.read32(f, reg);
        if v == p {
            continue;
        }
        let why = match reg {
            0x04 => Why::Command,
            0x10..=0x27 => Why::Bar,
            0x30 => Why::Rom,
            0x3c => Why::Interrupt,
            0x100 => Why::ExtendedAer,
            r if r > 0x100 && r < 0x140 => Why::ExtendedAer,
            r if r >= 0x100 => Why::ExtendedHidden,
            r => match cap_of(r) {
                Some((o, CAP_ID_MSIX)) if r == o => Why::MsixControl,
                Some((o, CAP_ID_PCIE)) if r == o + 8 || r == o + 0x10 => Why::PcieControl,
                Some((o, _)) if r == o => Why::Chain,
                other => panic!(
                    "{f}: +{r:#x} reads {v:#010x} in the guest, {p:#010x} physically (in {other:x?}): a difference no policy makes"
                ),
            },
        };
        out.push((reg, why));
    }
    out
}

#[test]
fn virtio_vendor_capabilities_are_all_visible_with_their_bodies() {
    for (name, spec) in [
        ("virtio-blk", Spec::qemu_virtio_blk()),
        ("virtio-net", Spec::qemu_virtio_net()),
    ] {
        let (mut fab, mut g, f) = assigned(spec);
        let phys = chain(|r| fab.read32(f, r));
        let virt = chain(|r| g.config_read(&mut fab, vcfg(1, 0, r), 4));
        let vendor = |c: &[(u16, u8)]| -> Vec<u16> {
            c.iter()
                .filter(|(_, id)| *id == CAP_ID_VENDOR)
                .map(|(o, _)| *o)
                .collect()
        };
        assert_eq!(vendor(&phys).len(), 5, "{name}: the model has five");
        assert_eq!(
            vendor(&virt),
            vendor(&phys),
            "{name}: every vendor capability"
        );
        for off in vendor(&phys) {
            let len = fab.read8(f, off + 2) as u16;
            for r in (off + 2)..(off + len) {
                assert_eq!(
                    g.config_read(&mut fab, vcfg(1, 0, r), 1),
                    fab.read8(f, r) as u32,
                    "{name}: vendor capability at {off:#x}, byte +{:#x}",
                    r - off
                );
            }
            // Read-only: a write does not reach the device.
            let before = fab.read32(f, off + 8);
            let mut e = pci::vpci::Effects::new();
            g.config_write(&mut fab, vcfg(1, 0, off + 8), 4, !before, &mut e);
            assert_eq!(fab.read32(f, off + 8), before, "{name}: body is read-only");
        }
        // Every capability a driver uses is there, in the device's order.
        let ids = |c: &[(u16, u8)]| c.iter().map(|(_, id)| *id).collect::<Vec<_>>();
        assert_eq!(ids(&virt), ids(&phys), "{name}");
    }
}

#[test]
fn what_real_drivers_read_differs_from_the_device_only_where_the_policy_says() {
    use Why::*;
    // Before the guest programs anything: its BARs read unassigned (the
    // upper halves of 64-bit BARs, and 32-bit and I/O BARs, differ from the
    // hardware domain's addresses; a 64-bit BAR's lower half keeps only its
    // flags, as the physical one at a 4 GiB-aligned address), Command reads
    // decoding off, and extended space holds the virtual AER: synthesized
    // whole for nvme (the device has none), with the virtual Capabilities
    // and Control register elsewhere (no ECRC, First Error Pointer of its
    // own).
    let cases: [Case; 4] = [
        (
            // QEMU's nvme has no AER capability (the sim's model has one,
            // for the AER tests that inject errors into it).
            "nvme",
            Spec::qemu_nvme().aer(false),
            &[
                (0x04, Command),
                (0x14, Bar),
                (0x100, ExtendedAer),
                (0x10c, ExtendedAer),
                (0x114, ExtendedAer),
            ],
        ),
        (
            "e1000e",
            Spec::qemu_e1000e(),
            &[
                (0x04, Command),
                (0x10, Bar),
                (0x14, Bar),
                (0x18, Bar),
                (0x1c, Bar),
                (0x118, ExtendedAer),
            ],
        ),
        (
            "virtio-blk",
            Spec::qemu_virtio_blk(),
            &[
                (0x04, Command),
                (0x14, Bar),
                (0x24, Bar),
                (0x118, ExtendedAer),
            ],
        ),
        (
            "virtio-net",
            Spec::qemu_virtio_net(),
            &[
                (0x04, Command),
                (0x14, Bar),
                (0x24, Bar),
                (0x118, ExtendedAer),
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (name, spec, want) in cases {
        let (mut fab, mut g, f) = assigned(spec);
        let got = differences(&mut fab, &mut g, f);
        if got != want {
            eprintln!("{name}: the guest reads differently at {got:x?}");
        }
        if got != want {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "differences not as listed: {failed:?}");
}

#[test]
fn an_error_of_a_device_without_aer_shows_in_its_virtual_aer() {
    use pci::aer::virtual_regs::{COR_INTERNAL, UNCOR_INTERNAL};
    use pci::aer::{AerEvent, Severity};
    let (mut fab, mut g, f) = assigned(Spec::qemu_nvme().aer(false));
    let aer = g.config_read(&mut fab, vcfg(1, 0, 0x100), 4);
    assert_eq!(aer & 0xffff, EXT_CAP_ID_AER as u32, "a virtual AER");
    for (severity, status_reg, bit) in [
        (Severity::Correctable, AER_COR_STATUS, COR_INTERNAL),
        (Severity::Fatal, AER_UNCOR_STATUS, UNCOR_INTERNAL),
    ] {
        let d = g
            .aer_deliver(&AerEvent::new(f, severity, 0))
            .expect("the guest's function");
        assert_eq!(d.virtual_source, b("01:00.0"));
        let status = g.config_read(&mut fab, vcfg(1, 0, 0x100 + status_reg), 4);
        assert_eq!(
            status & bit,
            bit,
            "{severity:?}: the internal-error bit of its class"
        );
    }
}
