//! The simulated fabric behaves like hardware where later issues rely on it.

mod common;
use common::*;

use pci::regs::*;
use pci::sim::{Fabric, NotReady, SimAerError, SimReadiness, Spec, devfn};
use pci::{Bdf, ConfigPort};

/// QEMU-like topology: root port -> x3130 switch -> e1000e, nvme; root port
/// -> pcie-pci-bridge -> conventional device.
fn qemu_fabric() -> Fabric {
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port().rrs_sv(true).child(
                    0,
                    0,
                    Spec::qemu_x3130_upstream()
                        .child(
                            0,
                            0,
                            Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_e1000e()),
                        )
                        .child(
                            1,
                            0,
                            Spec::qemu_x3130_downstream().child(
                                0,
                                0,
                                Spec::qemu_nvme().readiness(SimReadiness {
                                    delay_ns: 50_000_000,
                                    mode: NotReady::Rrs,
                                    never: false,
                                }),
                            ),
                        ),
                ),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(
                    0,
                    0,
                    Spec::qemu_pcie_pci_bridge().child(1, 0, Spec::conventional(0x8086, 0x100e)),
                ),
            ),
        ],
    )
}

#[test]
fn enumeration_assigns_buses_like_firmware() {
    let mut f = qemu_fabric();
    let all = f.enumerate();
    let names: Vec<String> = all.iter().map(|b| b.to_string()).collect();
    assert_eq!(
        names,
        [
            "0000:00:01.0",
            "0000:00:02.0",
            "0000:01:00.0",
            "0000:02:00.0",
            "0000:02:01.0",
            "0000:03:00.0",
            "0000:04:00.0",
            "0000:05:00.0",
            "0000:06:01.0"
        ]
    );
    let rp = b("00:01.0");
    assert_eq!(f.read32(rp, PRIMARY_BUS) & 0xffffff, 0x04_01_00);
    assert_eq!(f.read32(b("02:01.0"), PRIMARY_BUS) & 0xffffff, 0x04_04_02);
    // QEMU ids.
    assert_eq!(f.read32(rp, VENDOR_ID), 0x000c_1b36);
    assert_eq!(f.read32(b("01:00.0"), VENDOR_ID), 0x8232_104c);
    assert_eq!(f.read32(b("02:00.0"), VENDOR_ID), 0x8233_104c);
    assert_eq!(f.read32(b("03:00.0"), VENDOR_ID), 0x10d3_8086);
    assert_eq!(f.read32(b("04:00.0"), VENDOR_ID), 0x0010_1b36);
    assert_eq!(f.read32(b("05:00.0"), VENDOR_ID), 0x000e_1b36);
    // Nothing at an unused address.
    assert_eq!(f.read32(b("03:00.1"), VENDOR_ID), u32::MAX);
    assert_eq!(f.read32(b("09:00.0"), VENDOR_ID), u32::MAX);
}

#[test]
fn bar_sizing() {
    let mut f = qemu_fabric();
    f.enumerate();
    let nvme = b("04:00.0");
    f.write32(nvme, BAR0, u32::MAX);
    f.write32(nvme, BAR0 + 4, u32::MAX);
    assert_eq!(f.read32(nvme, BAR0), 0xffff_c004, "64-bit 16K");
    assert_eq!(f.read32(nvme, BAR0 + 4), u32::MAX);
    let e1000e = b("03:00.0");
    f.write32(e1000e, BAR0 + 8, u32::MAX);
    assert_eq!(f.read32(e1000e, BAR0 + 8), 0xffff_ffe1, "io 32");
    f.write32(e1000e, BAR0, 0x1000_0000);
    assert_eq!(f.read32(e1000e, BAR0), 0x1000_0000);
}

#[test]
fn bus_numbers_route_config_requests() {
    let mut f = qemu_fabric();
    f.enumerate();
    // Renumber the switch's first downstream port: its endpoint moves.
    let dp = b("02:00.0");
    f.write32(dp, PRIMARY_BUS, 0x00_03_03_02); // unchanged
    assert_eq!(f.read16(b("03:00.0"), VENDOR_ID), 0x8086);
    f.write8(dp, SECONDARY_BUS, 0);
    assert_eq!(f.read16(b("03:00.0"), VENDOR_ID), 0xffff);
    f.write8(dp, SECONDARY_BUS, 3);
    assert_eq!(f.read16(b("03:00.0"), VENDOR_ID), 0x8086);
    // A bridge range outside its parent's is not forwarded.
    f.write8(dp, SUBORDINATE_BUS, 9);
    f.write8(dp, SECONDARY_BUS, 9);
    assert_eq!(f.read16(b("09:00.0"), VENDOR_ID), 0xffff);
}

#[test]
fn flr_returns_function_to_defaults_with_rrs_window() {
    let mut f = qemu_fabric();
    f.enumerate();
    let nvme = b("04:00.0");
    f.write32(nvme, BAR0, 0x1000_0000);
    f.write16(nvme, COMMAND, COMMAND_MEMORY | COMMAND_BUS_MASTER);
    let pcie = pci::caps::find_cap(&mut f, nvme, CAP_ID_PCIE)
        .unwrap()
        .unwrap();
    f.write16(nvme, pcie + PCIE_DEVCTL, PCIE_DEVCTL_BCR_FLR);
    // Not ready for 50 ms: the root port has RRS SV enabled, so vendor id reads 0x0001.
    assert_eq!(f.read16(nvme, VENDOR_ID), VENDOR_ID_RRS);
    assert_eq!(f.read32(nvme, COMMAND), u32::MAX);
    f.advance_ns(49_000_000);
    assert_eq!(f.is_ready(nvme), Some(false));
    f.advance_ns(1_000_000);
    assert_eq!(f.read16(nvme, VENDOR_ID), 0x1b36);
    assert_eq!(f.read16(nvme, COMMAND), 0);
    assert_eq!(f.read32(nvme, BAR0), BAR_MEM_64);
    // The FLR bit reads back 0.
    assert_eq!(f.read16(nvme, pcie + PCIE_DEVCTL) & PCIE_DEVCTL_BCR_FLR, 0);
}

#[test]
fn pm_reset_depends_on_no_soft_reset() {
    for (nsr, reset) in [(false, true), (true, false)] {
        let mut f = Fabric::new().with_root_complex(
            0,
            0,
            &[(
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e().pm(Some(nsr))),
            )],
        );
        f.enumerate();
        let e = b("01:00.0");
        f.write32(e, BAR0, 0x2000_0000);
        let pm = pci::caps::find_cap(&mut f, e, CAP_ID_PM).unwrap().unwrap();
        f.write16(e, pm + PM_CTRL, PM_CTRL_D3HOT);
        assert_eq!(f.read16(e, pm + PM_CTRL) & 3, 3);
        f.write16(e, pm + PM_CTRL, PM_CTRL_D0);
        let bar = f.read32(e, BAR0);
        assert_eq!(bar == 0, reset, "NoSoftRst={nsr}");
    }
}

/// A bridge reset (here D3hot→D0 without No_Soft_Reset) clears its bus
/// numbers: what was below it stops answering until they are written again.
#[test]
fn reset_bridge_routes_nothing_below() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port()
                .pm(Some(false))
                .child(0, 0, Spec::qemu_e1000e()),
        )],
    );
    f.enumerate();
    let (rp, e) = (b("00:01.0"), b("01:00.0"));
    assert_eq!(f.read16(e, VENDOR_ID), 0x8086);
    let buses = f.read32(rp, PRIMARY_BUS);
    let pm = pci::caps::find_cap(&mut f, rp, CAP_ID_PM).unwrap().unwrap();
    f.write16(rp, pm + PM_CTRL, PM_CTRL_D3HOT);
    f.write16(rp, pm + PM_CTRL, PM_CTRL_D0);
    assert_eq!(f.read32(rp, PRIMARY_BUS) & 0xff_ff00, 0);
    assert_eq!(f.read16(e, VENDOR_ID), 0xffff);
    f.write32(rp, PRIMARY_BUS, buses);
    assert_eq!(f.read16(e, VENDOR_ID), 0x8086);
}

#[test]
fn sbr_resets_everything_below() {
    let mut f = qemu_fabric();
    f.enumerate();
    let (rp, up, nvme) = (b("00:01.0"), b("01:00.0"), b("04:00.0"));
    // Program the nvme: BAR, memory decode, an MSI-X entry (BAR0, table at 0).
    f.write32(nvme, BAR0, 0x1000_0000);
    f.write16(nvme, COMMAND, COMMAND_MEMORY);
    f.bar_write32(nvme, 0, 0, 0xfee0_0000);
    f.bar_write32(nvme, 0, 8, 0x41);
    f.bar_write32(nvme, 0, 12, 0);
    assert_eq!(f.msix_entry(nvme, 0), Some([0xfee0_0000, 0, 0x41, 0]));
    // Assert SBR on the root port.
    f.write16(rp, BRIDGE_CONTROL, BRIDGE_CONTROL_SBR);
    // The switch's upstream port is held in reset; its bus numbers are gone.
    assert_eq!(f.read32(up, VENDOR_ID), u32::MAX);
    f.write16(rp, BRIDGE_CONTROL, 0);
    assert_eq!(f.read16(up, VENDOR_ID), 0x104c);
    assert_eq!(f.read32(up, PRIMARY_BUS) & 0xffffff, 0, "bus numbers reset");
    assert_eq!(f.read32(nvme, VENDOR_ID), u32::MAX, "unreachable below");
    // Re-enumerate: the nvme is back in its reset state, table cleared,
    // once its 50 ms readiness delay is over.
    f.enumerate();
    assert_eq!(f.read16(nvme, VENDOR_ID), VENDOR_ID_RRS);
    f.advance_ns(100_000_000);
    assert_eq!(f.read32(nvme, BAR0), BAR_MEM_64);
    assert_eq!(f.read16(nvme, COMMAND), 0);
    assert_eq!(f.msix_entry(nvme, 0), Some([0, 0, 0, 1]));
    // The root port itself kept its state.
    assert_eq!(f.read32(rp, PRIMARY_BUS) & 0xffffff, 0x04_01_00);
}

#[test]
fn never_ready_after_reset() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(
                0,
                0,
                Spec::qemu_nvme().readiness(SimReadiness {
                    delay_ns: 0,
                    mode: NotReady::AllOnes,
                    never: true,
                }),
            ),
        )],
    );
    f.enumerate();
    let nvme = b("01:00.0");
    let pcie = pci::caps::find_cap(&mut f, nvme, CAP_ID_PCIE)
        .unwrap()
        .unwrap();
    f.write16(nvme, pcie + PCIE_DEVCTL, PCIE_DEVCTL_BCR_FLR);
    f.advance_ns(10_000_000_000);
    assert_eq!(f.read32(nvme, VENDOR_ID), u32::MAX);
}

#[test]
fn aer_propagates_to_root_port() {
    let mut f = qemu_fabric();
    f.enumerate();
    let (rp, e) = (b("00:01.0"), b("03:00.0"));
    let raer = pci::caps::find_ext_cap(&mut f, rp, EXT_CAP_ID_AER)
        .unwrap()
        .unwrap();
    f.write32(rp, raer + AER_ROOT_COMMAND, 0x7);
    // Surprise Down (bit 5) is fatal by default severity.
    let m = f.inject_aer(e, SimAerError::Uncorrectable(5)).unwrap();
    assert_eq!(
        (m.root_port, m.source, m.fatal, m.interrupt),
        (rp, e, true, true)
    );
    let st = f.read32(rp, raer + AER_ROOT_STATUS);
    assert_eq!(
        st,
        AER_ROOT_STATUS_UNCOR | AER_ROOT_STATUS_FIRST_FATAL | AER_ROOT_STATUS_FATAL
    );
    assert_eq!(f.read32(rp, raer + AER_ERROR_SOURCE) >> 16, e.rid() as u32);
    // A second one sets "multiple"; the source id keeps the first.
    f.inject_aer(b("04:00.0"), SimAerError::Uncorrectable(14))
        .unwrap();
    let st = f.read32(rp, raer + AER_ROOT_STATUS);
    assert_ne!(st & AER_ROOT_STATUS_MULTI_UNCOR, 0);
    assert_ne!(st & AER_ROOT_STATUS_NONFATAL, 0);
    assert_eq!(f.read32(rp, raer + AER_ERROR_SOURCE) >> 16, e.rid() as u32);
    // The endpoint's own status is set and RW1C.
    let eaer = pci::caps::find_ext_cap(&mut f, e, EXT_CAP_ID_AER)
        .unwrap()
        .unwrap();
    assert_eq!(f.read32(e, eaer + AER_UNCOR_STATUS), 1 << 5);
    f.write32(e, eaer + AER_UNCOR_STATUS, 1 << 5);
    assert_eq!(f.read32(e, eaer + AER_UNCOR_STATUS), 0);
    // Root Error Status is RW1C too.
    f.write32(rp, raer + AER_ROOT_STATUS, u32::MAX);
    assert_eq!(f.read32(rp, raer + AER_ROOT_STATUS), 0);
    // A correctable error, masked by default for Advisory Non-Fatal (bit 13), is not sent.
    assert!(f.inject_aer(e, SimAerError::Correctable(13)).is_none());
    let m = f.inject_aer(e, SimAerError::Correctable(0)).unwrap();
    assert!(m.correctable && m.interrupt);
    assert_eq!(
        f.read32(rp, raer + AER_ERROR_SOURCE) & 0xffff,
        e.rid() as u32
    );
}

#[test]
fn sriov_vfs_appear_with_vf_enable() {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port().child(0, 0, Spec::endpoint(0x8086, 0x1521).sriov(2, 0x1520)),
        )],
    );
    let all = f.enumerate();
    assert_eq!(all.len(), 4);
    let (pf, vf) = (b("01:00.0"), b("01:00.1"));
    // A VF's vendor and device ids read all-ones; the rest answers.
    assert_eq!(f.read32(vf, VENDOR_ID), u32::MAX);
    assert_ne!(f.read32(vf, COMMAND), u32::MAX);
    let sriov = pci::caps::find_ext_cap(&mut f, pf, EXT_CAP_ID_SRIOV)
        .unwrap()
        .unwrap();
    f.write16(pf, sriov + SRIOV_CTRL, 0);
    assert_eq!(f.read32(vf, COMMAND), u32::MAX);
    assert_eq!(f.present_functions().len(), 2);
}

#[test]
fn multi_segment_fabric() {
    let mut f = Fabric::new()
        .with_root_complex(
            0,
            0,
            &[(
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
            )],
        )
        .with_root_complex(
            1,
            0x80,
            &[(
                devfn(1, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
            )],
        );
    let all = f.enumerate();
    assert_eq!(all.len(), 4);
    assert_eq!(f.read16(Bdf::new(1, 0x81, 0, 0), VENDOR_ID), 0x8086);
    assert_eq!(f.read16(Bdf::new(0, 0x01, 0, 0), VENDOR_ID), 0x1b36);
    assert_eq!(f.read16(Bdf::new(1, 0x01, 0, 0), VENDOR_ID), 0xffff);
}

#[test]
fn mirrors_qemu_device_arguments() {
    let args = [
        "-M",
        "virt",
        "-device",
        "pcie-root-port,id=rp0,chassis=1",
        "-device",
        "pcie-root-port,id=rp1,chassis=2,disable-acs=on",
        "-device",
        "x3130-upstream,id=up,bus=rp0",
        "-device",
        "xio3130-downstream,id=dn0,bus=up,chassis=3,slot=0",
        "-device",
        "xio3130-downstream,id=dn1,bus=up,chassis=4,slot=1",
        "-device",
        "e1000e,bus=dn0",
        "-device",
        "nvme,bus=dn1,serial=x,drive=d",
        "-device",
        "pcie-pci-bridge,id=br,bus=rp1",
        "-device",
        "e1000,bus=br,addr=1",
        "-device",
        "e1000,bus=br,addr=2",
    ];
    let mut f = Fabric::from_qemu_args(&args).unwrap();
    let mut t = track(&mut f);
    assert_eq!(
        units(&mut t),
        set(&[
            &["00:00.0"],
            &["00:01.0"],
            &["00:02.0", "05:00.0", "06:01.0", "06:02.0"],
            &["01:00.0"],
            // QEMU's downstream ports have no ACS: the switch below the
            // upstream port is one unit (as `cargo xtask pci-report` shows).
            &["02:00.0", "02:01.0", "03:00.0", "04:00.0"],
        ])
    );
    assert_eq!(f.read32(b("00:00.0"), VENDOR_ID), 0x0008_1b36);
    assert!(matches!(
        Fabric::from_qemu_args(&["-device", "virtio-gpu-pci"]),
        Err(pci::sim::qemu::QemuArgsError::UnknownDriver(_))
    ));
    assert!(matches!(
        Fabric::from_qemu_args(&["-device", "e1000e,bus=nope"]),
        Err(pci::sim::qemu::QemuArgsError::UnknownBus(_))
    ));
}

#[test]
fn qemu_igb_vfs_follow_offset_and_stride() {
    let mut f =
        Fabric::from_qemu_args(&["-device", "pcie-root-port,id=rp", "-device", "igb,bus=rp"])
            .unwrap();
    let mut t = track(&mut f);
    let vfs: Vec<String> = t
        .functions()
        .filter(|(_, g)| g.physfn().is_some())
        .map(|(x, _)| x.to_string())
        .collect();
    assert_eq!(vfs.len(), 8);
    assert_eq!(vfs[0], "0000:01:10.0");
    assert_eq!(vfs[1], "0000:01:10.2");
    assert_eq!(vfs[7], "0000:01:11.6");
    assert_eq!(t.function(b("01:10.2")).unwrap().device, 0x10ca);
    assert_eq!(t.units().len(), 3 + 8);
}
