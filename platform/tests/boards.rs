//! Real boards' DTBs from Debian's linux-image-6.1.0-*-arm64 package
//! (usr/lib/linux-image-*/). Several leave `/memory` for the bootloader to
//! fill; those are checked after adding one as U-Boot would.

mod common;

use common::{data, parse, with_memory};
use platform::{
    ConfigAccess, Gic, PciIntxRoute, PciWindow, PciWindowKind, Platform, PlatformError,
    RefusedHostBridge, Region, Uart,
};

fn board(name: &str) -> Platform {
    parse(&data(&format!("boards/{name}")))
}

/// Boards whose DTB has no usable `/memory`: prove that is the only thing
/// missing, then parse with 1 GiB at 0x8000_0000 added.
fn board_after_bootloader(name: &str) -> Platform {
    let blob = data(&format!("boards/{name}"));
    assert!(
        matches!(Platform::from_fdt(&blob), Err(PlatformError::MissingNode(n)) if n.starts_with("memory")),
        "{name} should lack only /memory"
    );
    let platform = parse(&with_memory(&blob, 0x8000_0000, 0x4000_0000));
    assert_eq!(platform.memory, vec![Region::new(0x8000_0000, 0x4000_0000)]);
    platform
}

fn mpidrs(platform: &Platform) -> Vec<u64> {
    platform.cpus.iter().map(|c| c.mpidr).collect()
}

fn intx(pin_intids: [(u8, u32); 4]) -> Vec<PciIntxRoute> {
    pin_intids
        .iter()
        .map(|&(pin, intid)| PciIntxRoute {
            child_addr_hi: 0,
            pin,
            intid,
            level: true,
        })
        .collect()
}

#[test]
fn raspberry_pi_4_gic400_through_soc_ranges_and_brcmstb_pcie() {
    let p = board_after_bootloader("bcm2711-rpi-4-b.dtb");
    assert_eq!(p.model, "Raspberry Pi 4 Model B");
    assert_eq!(mpidrs(&p), [0, 1, 2, 3]);
    assert_eq!(p.cpus[0].enable_method.as_deref(), Some("spin-table"));
    // The GIC sits at 0x40041000 on the /soc bus, 0xff841000 for the CPU.
    let Gic::V2 {
        compatible,
        gicd,
        gicc,
        gich,
        gicv,
        maintenance_irq,
        v2m,
    } = p.gic
    else {
        panic!("GIC-400 is a GICv2: {:?}", p.gic)
    };
    assert_eq!(compatible, "arm,gic-400");
    assert_eq!(gicd, Region::new(0xff84_1000, 0x1000));
    assert_eq!(gicc, Region::new(0xff84_2000, 0x2000));
    assert_eq!(gich, Some(Region::new(0xff84_4000, 0x2000)));
    assert_eq!(gicv, Some(Region::new(0xff84_6000, 0x2000)));
    assert_eq!(maintenance_irq, Some(25));
    assert!(v2m.is_empty());
    // stdout-path = "serial1:115200n8" -> the mini UART, not a PL011.
    assert_eq!(
        p.uart,
        Some(Uart {
            compatible: "brcm,bcm2835-aux-uart".into(),
            region: Region::new(0xfe21_5040, 0x40),
            irq: Some(125)
        })
    );
    assert_eq!(p.psci, None);
    assert_eq!(
        p.reserved,
        vec![Region::new(0, 0x1000)],
        "the spin-table /memreserve/"
    );
    let [bridge] = &p.pci_host_bridges[..] else {
        panic!("{:?}", p.pci_host_bridges)
    };
    assert_eq!(
        bridge.access,
        ConfigAccess::Controller("brcm,bcm2711-pcie".into())
    );
    assert_eq!(bridge.config, Region::new(0xfd50_0000, 0x9310));
    assert_eq!(
        bridge.windows,
        [PciWindow {
            kind: PciWindowKind::Mem32,
            prefetchable: false,
            pci_base: 0xf800_0000,
            cpu_base: 0x6_0000_0000,
            size: 0x400_0000
        }]
    );
    assert_eq!(
        bridge.intx_map,
        intx([(1, 175), (2, 176), (3, 177), (4, 178)])
    );
}

#[test]
fn rockpro64_gicv3_with_legacy_frames_and_rockchip_pcie() {
    let p = board_after_bootloader("rk3399-rockpro64.dtb");
    assert_eq!(mpidrs(&p), [0, 1, 2, 3, 0x100, 0x101]);
    assert_eq!(
        p.gic,
        Gic::V3 {
            compatible: "arm,gic-v3".into(),
            gicd: Region::new(0xfee0_0000, 0x1_0000),
            gicr: vec![Region::new(0xfef0_0000, 0xc_0000)],
            gicc: Some(Region::new(0xfff0_0000, 0x1_0000)),
            gich: Some(Region::new(0xfff1_0000, 0x1_0000)),
            gicv: Some(Region::new(0xfff2_0000, 0x1_0000)),
            // interrupts = <1 9 4 0>: the GIC has 4 interrupt cells (PPI partitions).
            maintenance_irq: Some(25),
            its: vec![Region::new(0xfee2_0000, 0x2_0000)],
        }
    );
    // stdout-path = "serial2:1500000n8" through /aliases.
    assert_eq!(
        p.uart,
        Some(Uart {
            compatible: "rockchip,rk3399-uart".into(),
            region: Region::new(0xff1a_0000, 0x100),
            irq: Some(132)
        })
    );
    let [bridge] = &p.pci_host_bridges[..] else {
        panic!("{:?}", p.pci_host_bridges)
    };
    assert_eq!(
        bridge.access,
        ConfigAccess::Controller("rockchip,rk3399-pcie".into())
    );
    assert_eq!(
        bridge.config,
        Region::new(0xf800_0000, 0x200_0000),
        "reg-names \"axi-base\", \"apb-base\": reg[0]"
    );
    assert_eq!((bridge.bus_start, bridge.bus_end), (0, 31));
    // INTx goes to the controller's own interrupt demultiplexer, not to the GIC.
    assert!(bridge.intx_map.is_empty());
    assert!(bridge.has_msi);
}

#[test]
fn imx8mp_evk_gicv3_without_its_and_designware_pcie() {
    let p = board("imx8mp-evk.dtb");
    assert_eq!(p.model, "NXP i.MX8MPlus EVK board");
    assert_eq!(
        p.memory,
        vec![Region::new(0x4000_0000, 0x1_8000_0000)],
        "two reg entries, merged"
    );
    assert_eq!(p.reserved, vec![Region::new(0x9240_0000, 0x200_0000)]);
    assert_eq!(mpidrs(&p), [0, 1, 2, 3]);
    let Gic::V3 {
        gicd,
        gicr,
        its,
        gicv,
        ..
    } = &p.gic
    else {
        panic!("{:?}", p.gic)
    };
    assert_eq!(*gicd, Region::new(0x3880_0000, 0x1_0000));
    assert_eq!(*gicr, vec![Region::new(0x3888_0000, 0xc_0000)]);
    assert!(its.is_empty());
    assert_eq!(*gicv, None);
    // stdout-path is a full path through two nested buses.
    assert_eq!(
        p.uart,
        Some(Uart {
            compatible: "fsl,imx8mp-uart".into(),
            region: Region::new(0x3089_0000, 0x1_0000),
            irq: Some(59)
        })
    );
    assert_eq!(p.timer.frequency, Some(8_000_000));
    let [bridge] = &p.pci_host_bridges[..] else {
        panic!("{:?}", p.pci_host_bridges)
    };
    assert_eq!(
        bridge.access,
        ConfigAccess::Controller("fsl,imx8mp-pcie".into())
    );
    assert_eq!(
        bridge.config,
        Region::new(0x1ff0_0000, 0x8_0000),
        "reg-names \"dbi\", \"config\""
    );
    assert_eq!(
        bridge.intx_map,
        intx([(1, 158), (2, 157), (3, 156), (4, 155)])
    );
}

#[test]
fn juno_r2_gicv2_frames_v2m_and_ecam_pcie() {
    let p = board("juno-r2.dtb");
    assert_eq!(
        p.memory,
        vec![
            Region::new(0x8000_0000, 0x7f00_0000),
            Region::new(0x8_8000_0000, 0x1_8000_0000)
        ]
    );
    assert_eq!(mpidrs(&p), [0, 1, 0x100, 0x101, 0x102, 0x103]);
    let Gic::V2 {
        gicd,
        gicc,
        gich,
        gicv,
        v2m,
        ..
    } = &p.gic
    else {
        panic!("{:?}", p.gic)
    };
    assert_eq!(*gicd, Region::new(0x2c01_0000, 0x1000));
    assert_eq!(*gicc, Region::new(0x2c02_f000, 0x2000));
    assert_eq!(*gich, Some(Region::new(0x2c04_f000, 0x2000)));
    assert_eq!(*gicv, Some(Region::new(0x2c06_f000, 0x2000)));
    // v2m frames sit on the GIC node's own `ranges`.
    assert_eq!(v2m.first(), Some(&Region::new(0x2c1c_0000, 0x1_0000)));
    assert_eq!(v2m.len(), 4);
    assert_eq!(
        p.uart,
        Some(Uart {
            compatible: "arm,pl011".into(),
            region: Region::new(0x7ff8_0000, 0x1000),
            irq: Some(115)
        })
    );
    let [bridge] = &p.pci_host_bridges[..] else {
        panic!("{:?}", p.pci_host_bridges)
    };
    // "arm,juno-r1-pcie", "plda,xpressrich3-axi", "pci-host-ecam-generic": plain ECAM.
    assert_eq!(bridge.compatible, "arm,juno-r1-pcie");
    assert_eq!(bridge.access, ConfigAccess::Ecam);
    assert_eq!(bridge.config, Region::new(0x4000_0000, 0x1000_0000));
    assert_eq!((bridge.bus_start, bridge.bus_end), (0, 255));
    assert_eq!(
        bridge.windows,
        [
            PciWindow {
                kind: PciWindowKind::Io,
                prefetchable: false,
                pci_base: 0,
                cpu_base: 0x5f80_0000,
                size: 0x80_0000
            },
            PciWindow {
                kind: PciWindowKind::Mem32,
                prefetchable: false,
                pci_base: 0x5000_0000,
                cpu_base: 0x5000_0000,
                size: 0x800_0000
            },
            // 0x42000000: the DT marks this 64-bit-addressed window as 32-bit space; reported as written.
            PciWindow {
                kind: PciWindowKind::Mem32,
                prefetchable: true,
                pci_base: 0x40_0000_0000,
                cpu_base: 0x40_0000_0000,
                size: 0x1_0000_0000
            },
        ]
    );
    assert_eq!(bridge.intx_mask, (0, 7));
    assert_eq!(
        bridge.intx_map,
        intx([(1, 168), (2, 169), (3, 170), (4, 171)])
    );
}

#[test]
fn lx2160a_rdb_gicv3_with_its_and_sixteen_cpus() {
    let p = board("fsl-lx2160a-rdb.dtb");
    assert_eq!(p.cpus.len(), 16);
    assert_eq!(p.cpus[15].mpidr, 0x701);
    let Gic::V3 {
        gicd,
        gicr,
        its,
        gicc,
        gich,
        gicv,
        ..
    } = &p.gic
    else {
        panic!("{:?}", p.gic)
    };
    assert_eq!(*gicd, Region::new(0x600_0000, 0x1_0000));
    assert_eq!(*gicr, vec![Region::new(0x620_0000, 0x20_0000)]);
    assert_eq!(*its, vec![Region::new(0x602_0000, 0x2_0000)]);
    assert_eq!(*gicc, Some(Region::new(0xc0c_0000, 0x2000)));
    assert_eq!(*gich, Some(Region::new(0xc0d_0000, 0x1000)));
    assert_eq!(*gicv, Some(Region::new(0xc0e_0000, 0x2_0000)));
    assert_eq!(
        p.uart
            .as_ref()
            .map(|u| (u.compatible.as_str(), u.region.base)),
        Some(("arm,sbsa-uart", 0x21c_0000))
    );
    // All six PCIe controllers are status = "disabled" in this DTB (firmware enables them).
    assert!(p.pci_host_bridges.is_empty());
}

#[test]
fn pine_h64_allwinner_gic400() {
    let p = board_after_bootloader("sun50i-h6-pine-h64.dtb");
    assert_eq!(mpidrs(&p), [0, 1, 2, 3]);
    let Gic::V2 { gicd, gich, .. } = &p.gic else {
        panic!("{:?}", p.gic)
    };
    assert_eq!(*gicd, Region::new(0x302_1000, 0x1000));
    assert_eq!(*gich, Some(Region::new(0x302_4000, 0x2000)));
    assert_eq!(
        p.uart,
        Some(Uart {
            compatible: "snps,dw-apb-uart".into(),
            region: Region::new(0x500_0000, 0x400),
            irq: Some(32)
        })
    );
    assert!(p.pci_host_bridges.is_empty());
}

#[test]
fn macchiatobin_nested_config_space_buses_and_armada_pcie() {
    let p = board("armada-8040-mcbin.dtb");
    assert_eq!(p.memory, vec![Region::new(0, 0x8000_0000)]);
    assert_eq!(p.reserved, vec![Region::new(0x400_0000, 0x20_0000)]);
    let Gic::V2 { gicd, gicv, .. } = &p.gic else {
        panic!("{:?}", p.gic)
    };
    // /ap806/config-space@f0000000 { ranges = <0 0 0xf0000000 0x1000000> }.
    assert_eq!(*gicd, Region::new(0xf021_0000, 0x1_0000));
    assert_eq!(*gicv, Some(Region::new(0xf026_0000, 0x2_0000)));
    // Only CP0's x4 port is enabled on this board.
    let [bridge] = &p.pci_host_bridges[..] else {
        panic!("{:?}", p.pci_host_bridges)
    };
    assert_eq!(bridge.path, "/cp0/pcie@f2600000");
    assert_eq!(
        bridge.access,
        ConfigAccess::Controller("marvell,armada8k-pcie".into())
    );
    assert_eq!(bridge.config, Region::new(0xf6f0_0000, 0x8_0000));
}

/// Both host bridges of the IPQ8074 (6.1's qcom/ipq8074.dtsi) write their
/// `interrupt-map` entries without the GIC's parent unit address, though the
/// GIC node has `#address-cells = <1>`: the entries do not parse (the second
/// one's "phandle" is a cell of the first). Each bridge is refused with that
/// reason; the rest of the board is described.
#[test]
fn ipq8074_hk01_bridges_with_malformed_interrupt_map_are_refused_not_fatal() {
    let p = board("ipq8074-hk01.dtb");
    assert_eq!(p.model, "Qualcomm Technologies, Inc. IPQ8074-HK01");
    assert_eq!(p.memory, vec![Region::new(0x4000_0000, 0x2000_0000)]);
    assert_eq!(mpidrs(&p), [0, 1, 2, 3]);
    let Gic::V2 {
        compatible,
        gicd,
        gicc,
        ..
    } = &p.gic
    else {
        panic!("{:?}", p.gic)
    };
    assert_eq!(compatible, "qcom,msm-qgic2");
    assert_eq!(*gicd, Region::new(0x0b00_0000, 0x1000));
    assert_eq!(*gicc, Region::new(0x0b00_2000, 0x1000));
    // stdout-path = "serial0" -> /soc/serial@78b3000.
    assert_eq!(
        p.uart,
        Some(Uart {
            compatible: "qcom,msm-uartdm-v1.4".into(),
            region: Region::new(0x078b_3000, 0x200),
            irq: Some(32 + 0x134)
        })
    );
    assert!(p.pci_host_bridges.is_empty(), "{:?}", p.pci_host_bridges);
    let refused = |path: &str| RefusedHostBridge {
        path: path.into(),
        reason: PlatformError::BadProperty(
            path.into(),
            "interrupt-map",
            "phandle does not name any node",
        ),
    };
    assert_eq!(
        p.refused_host_bridges,
        [refused("/soc/pci@10000000"), refused("/soc/pci@20000000")]
    );
}
