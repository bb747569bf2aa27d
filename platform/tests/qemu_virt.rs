//! QEMU `virt`'s own device trees (dumped by `qemu-system-aarch64 -M
//! virt,virtualization=on,gic-version=N,dumpdtb=FILE`), checked value by
//! value against what QEMU 10 places where (hw/arm/virt.c memmap).

use platform::{
    ConfigAccess, Cpu, ExitMethod, Gic, PciHostBridge, PciIntxRoute, PciWindow, PciWindowKind,
    Platform, Psci, PsciConduit, Region, Timer, Uart,
};

const GIB: u64 = 1 << 30;

fn parse(name: &str) -> Platform {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let blob = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Platform::from_fdt(&blob).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn psci_cpus(count: u64) -> Vec<Cpu> {
    (0..count)
        .map(|mpidr| Cpu {
            mpidr,
            enable_method: Some("psci".into()),
        })
        .collect()
}

/// QEMU virt routes INTx of slot `s`, pin `p` (1-based) to SPI 3 + (s + p - 1) % 4.
fn qemu_intx_routes() -> Vec<PciIntxRoute> {
    let mut routes = Vec::new();
    for slot in 0..4u32 {
        for pin in 1..=4u32 {
            routes.push(PciIntxRoute {
                child_addr_hi: slot << 11,
                pin: pin as u8,
                intid: 32 + 3 + (slot + pin - 1) % 4,
                level: true,
            });
        }
    }
    routes
}

fn qemu_host_bridge() -> PciHostBridge {
    PciHostBridge {
        path: "/pcie@10000000".into(),
        compatible: "pci-host-ecam-generic".into(),
        access: ConfigAccess::Ecam,
        config: Region::new(0x40_1000_0000, 0x1000_0000),
        segment: 0,
        bus_start: 0,
        bus_end: 255,
        windows: vec![
            PciWindow {
                kind: PciWindowKind::Io,
                prefetchable: false,
                pci_base: 0,
                cpu_base: 0x3eff_0000,
                size: 0x1_0000,
            },
            PciWindow {
                kind: PciWindowKind::Mem32,
                prefetchable: false,
                pci_base: 0x1000_0000,
                cpu_base: 0x1000_0000,
                size: 0x2eff_0000,
            },
            PciWindow {
                kind: PciWindowKind::Mem64,
                prefetchable: false,
                pci_base: 0x80_0000_0000,
                cpu_base: 0x80_0000_0000,
                size: 0x80_0000_0000,
            },
        ],
        intx_mask: (0x1800, 7),
        intx_map: qemu_intx_routes(),
        has_msi: true,
    }
}

fn qemu_common(gic: Gic, memory_size: u64, cpus: u64) -> Platform {
    Platform {
        model: "linux,dummy-virt".into(),
        memory: vec![Region::new(0x4000_0000, memory_size)],
        reserved: vec![],
        cpus: psci_cpus(cpus),
        gic,
        uart: Some(Uart {
            compatible: "arm,pl011".into(),
            region: Region::new(0x0900_0000, 0x1000),
            irq: Some(33),
        }),
        // PPIs 13, 14, 11, 10, 12.
        timer: Timer {
            secure_phys: Some(29),
            nonsecure_phys: 30,
            virt: 27,
            hyp_phys: Some(26),
            hyp_virt: Some(28),
            frequency: None,
        },
        psci: Some(Psci {
            compatible: "arm,psci-1.0".into(),
            conduit: PsciConduit::Smc,
        }),
        pci_host_bridges: vec![qemu_host_bridge()],
        refused_host_bridges: vec![],
        vms: vec![],
        exit_method: ExitMethod::Psci,
        aer_storm: None,
        test_hypervisor_bugs: false,
    }
}

fn qemu_gicv3() -> Gic {
    Gic::V3 {
        compatible: "arm,gic-v3".into(),
        gicd: Region::new(0x0800_0000, 0x1_0000),
        // QEMU describes one redistributor region sized for its 123-CPU maximum.
        gicr: vec![Region::new(0x080a_0000, 0xf6_0000)],
        gicc: None,
        gich: None,
        gicv: None,
        maintenance_irq: Some(25),
        its: vec![Region::new(0x0808_0000, 0x2_0000)],
    }
}

#[test]
fn qemu_virt_gicv3_matches_qemu_memory_map() {
    assert_eq!(
        parse("qemu-virt-gicv3.dtb"),
        qemu_common(qemu_gicv3(), GIB, 2)
    );
}

#[test]
fn qemu_virt_gicv2_has_virtualization_frames_and_v2m() {
    let gic = Gic::V2 {
        compatible: "arm,cortex-a15-gic".into(),
        gicd: Region::new(0x0800_0000, 0x1_0000),
        gicc: Region::new(0x0801_0000, 0x1_0000),
        gich: Some(Region::new(0x0803_0000, 0x1_0000)),
        gicv: Some(Region::new(0x0804_0000, 0x1_0000)),
        maintenance_irq: Some(25),
        v2m: vec![Region::new(0x0802_0000, 0x1000)],
    };
    assert_eq!(parse("qemu-virt-gicv2.dtb"), qemu_common(gic, GIB, 2));
}

#[test]
fn qemu_virt_with_pcie_devices_and_more_cpus_and_memory() {
    // -smp 4 -m 2G with root ports, nvme and e1000e: devices below the host
    // bridge are not in QEMU's DTB (they are enumerated), so the bridge is unchanged.
    assert_eq!(
        parse("qemu-virt-gicv3-pcie.dtb"),
        qemu_common(qemu_gicv3(), 2 * GIB, 4)
    );
}

#[cfg(feature = "serde")]
#[test]
fn qemu_virt_serialises() {
    // Serialize is derived for the xtask JSON report; make sure it covers every type.
    fn is_serialize<T: serde::Serialize>(_: &T) {}
    is_serialize(&parse("qemu-virt-gicv3.dtb"));
}
