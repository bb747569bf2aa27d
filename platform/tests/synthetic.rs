//! Device trees built node by node, for what QEMU's and the boards' DTBs do
//! not exercise: VM configuration under /chosen and its validation, nested
//! bus translation, interrupt nexuses, unusual GIC layouts, and the errors
//! a malformed tree must produce.

mod common;

use common::{FdtBuilder, parse};
use platform::{
    BlobError, ConfigAccess, ExitMethod, Gic, PciFunctionAddress, PciIntxRoute, Platform,
    PlatformError, Psci, PsciConduit, RefusedHostBridge, Region, Timer, Uart, VmConfig,
};

const GIC_PHANDLE: u32 = 1;

/// Root with 2/2 cells, 1 GiB of RAM at 0x4000_0000, two CPUs, a GICv3
/// (phandle 1), a timer and PSCI; `extra` adds root nodes, `chosen` fills /chosen.
fn tree(extra: impl FnOnce(&mut FdtBuilder), chosen: impl FnOnce(&mut FdtBuilder)) -> Vec<u8> {
    let mut b = FdtBuilder::new();
    b.begin("")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2])
        .cells("interrupt-parent", &[GIC_PHANDLE]);
    b.string("model", "synthetic");
    b.begin("memory@40000000")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x4000_0000])
        .end();
    b.begin("cpus")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[0]);
    for mpidr in 0..2 {
        b.begin(&format!("cpu@{mpidr}"))
            .string("device_type", "cpu")
            .cells("reg", &[mpidr]);
        b.string("enable-method", "psci").end();
    }
    b.end();
    b.begin("psci")
        .strings_prop("compatible", &["arm,psci-1.0", "arm,psci-0.2"])
        .string("method", "hvc")
        .end();
    b.begin("timer").string("compatible", "arm,armv8-timer");
    b.cells("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])
        .end();
    extra(&mut b);
    b.begin("chosen");
    chosen(&mut b);
    b.end();
    b.end();
    b.finish()
}

fn gic_v3(b: &mut FdtBuilder, address_cells: Option<u32>) {
    b.begin("interrupt-controller@8000000")
        .string("compatible", "arm,gic-v3")
        .empty("interrupt-controller");
    b.cells("#interrupt-cells", &[3])
        .cells("phandle", &[GIC_PHANDLE]);
    if let Some(cells) = address_cells {
        b.cells("#address-cells", &[cells])
            .cells("#size-cells", &[2])
            .empty("ranges");
    }
    b.cells(
        "reg",
        &[0, 0x800_0000, 0, 0x1_0000, 0, 0x80a_0000, 0, 0x4_0000],
    );
    b.cells("interrupts", &[1, 9, 4]).end();
}

fn with_gic(extra: impl FnOnce(&mut FdtBuilder)) -> impl FnOnce(&mut FdtBuilder) {
    move |b| {
        gic_v3(b, None);
        extra(b);
    }
}

/// A VM node; `tweak` may add or override properties and children.
fn vm(
    b: &mut FdtBuilder,
    node: &str,
    label: &str,
    hwdom: bool,
    tweak: impl FnOnce(&mut FdtBuilder),
) {
    b.begin(node)
        .string("compatible", "phv,vm")
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    b.string("label", label);
    if hwdom {
        b.empty("phv,hardware-domain");
    }
    tweak(b);
    b.end();
}

fn kernel(b: &mut FdtBuilder, base: u32, bootargs: &str) {
    b.begin(&format!("module@{base:x}"))
        .strings_prop("compatible", &["multiboot,kernel", "multiboot,module"]);
    b.cells("reg", &[0, base, 0, 0x10_0000])
        .string("bootargs", bootargs)
        .end();
}

fn standard_vm(b: &mut FdtBuilder) {
    b.cells("memory", &[0, 0x400_0000]).cells("cpus", &[1]);
    kernel(b, 0x4400_0000, "test=boot");
}

fn vm_error(chosen: impl FnOnce(&mut FdtBuilder)) -> (String, String) {
    match Platform::from_fdt(&tree(with_gic(|_| {}), chosen)) {
        Err(PlatformError::BadVmConfig(vm, why)) => (vm, why),
        other => panic!("expected BadVmConfig, got {other:?}"),
    }
}

#[test]
fn minimal_tree_parses_exactly() {
    let p = parse(&tree(with_gic(|_| {}), |_| {}));
    assert_eq!(p.model, "synthetic");
    assert_eq!(p.memory, [Region::new(0x4000_0000, 0x4000_0000)]);
    assert_eq!(p.cpus.len(), 2);
    assert_eq!(
        p.timer,
        Timer {
            secure_phys: Some(29),
            nonsecure_phys: 30,
            virt: 27,
            hyp_phys: Some(26),
            hyp_virt: None,
            frequency: None
        }
    );
    assert_eq!(
        p.psci,
        Some(Psci {
            compatible: "arm,psci-1.0".into(),
            conduit: PsciConduit::Hvc
        })
    );
    assert_eq!(p.uart, None);
    assert!(p.vms.is_empty());
    assert_eq!(p.exit_method, ExitMethod::Psci);
}

#[test]
fn vms_under_chosen_parse_to_exact_configs() {
    let blob = tree(with_gic(|_| {}), |b| {
        b.string("phv,exit", "semihosting");
        vm(b, "vm@0", "hwdom", true, |b| {
            b.cells("memory", &[0, 0x400_0000])
                .cells("phv,memory-base", &[0, 0x4800_0000])
                .cells("cpus", &[1]);
            kernel(b, 0x4400_0000, "test=boot");
        });
        vm(b, "vm@1", "guest", false, |b| {
            b.cells("memory", &[0, 0x20_0000]).cells("cpus", &[1]);
            kernel(b, 0x4500_0000, "");
            b.begin("module@46000000")
                .strings_prop("compatible", &["multiboot,ramdisk", "multiboot,module"]);
            b.cells("reg", &[0, 0x4600_0000, 0, 0x12_3400]).end();
            b.strings_prop("phv,pci-devices", &["0000:01:00.0", "0000:02:00.0"]);
            b.strings_prop("phv,pci-reset-methods", &["0000:01:00.0=flr, pm"]);
            b.cells("phv,aer-deadline-ms", &[250]);
        });
    });
    let p = parse(&blob);
    assert_eq!(p.exit_method, ExitMethod::Semihosting);
    assert_eq!(
        p.vms,
        vec![
            VmConfig {
                name: "hwdom".into(),
                hardware_domain: true,
                memory_size: 0x400_0000,
                memory_base: Some(0x4800_0000),
                cpus: 1,
                kernel: Region::new(0x4400_0000, 0x10_0000),
                ramdisk: None,
                bootargs: "test=boot".into(),
                pci_devices: vec![],
                pci_whole_units: false,
                pci_reset_methods: vec![],
                aer_deadline_ms: None,
            },
            VmConfig {
                name: "guest".into(),
                hardware_domain: false,
                memory_size: 0x20_0000,
                memory_base: None,
                cpus: 1,
                kernel: Region::new(0x4500_0000, 0x10_0000),
                ramdisk: Some(Region::new(0x4600_0000, 0x12_3400)),
                bootargs: String::new(),
                pci_devices: vec![
                    PciFunctionAddress::parse("0000:01:00.0").unwrap(),
                    PciFunctionAddress::parse("02:00.0").unwrap(),
                ],
                pci_whole_units: false,
                pci_reset_methods: vec![(
                    PciFunctionAddress::parse("0000:01:00.0").unwrap(),
                    vec!["flr".into(), "pm".into()]
                )],
                aer_deadline_ms: Some(250),
            },
        ]
    );
}

#[test]
fn vm_without_label_is_named_after_its_node() {
    let blob = tree(with_gic(|_| {}), |b| {
        b.begin("vm@0")
            .string("compatible", "phv,vm")
            .empty("phv,hardware-domain");
        b.cells("#address-cells", &[2]).cells("#size-cells", &[2]);
        standard_vm(b);
        b.end();
    });
    assert_eq!(parse(&blob).vms[0].name, "vm@0");
}

#[test]
fn vm_validation_errors_name_the_vm_and_the_problem() {
    let (vm_name, why) = vm_error(|b| vm(b, "vm@0", "a", false, standard_vm));
    assert_eq!(
        (vm_name.as_str(), why.as_str()),
        ("(all)", "no VM has phv,hardware-domain; exactly one must")
    );

    let (vm_name, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, standard_vm);
        vm(b, "vm@1", "b", true, standard_vm);
    });
    assert_eq!(
        (vm_name.as_str(), why.as_str()),
        ("a", "2 VMs have phv,hardware-domain; exactly one may")
    );

    let (vm_name, why) = vm_error(|b| {
        vm(b, "vm@0", "same", true, standard_vm);
        vm(b, "vm@1", "same", false, standard_vm);
    });
    assert_eq!(
        (vm_name.as_str(), why.as_str()),
        ("same", "name used by more than one VM")
    );

    let (vm_name, why) = vm_error(|b| {
        vm(b, "vm@0", "two-initrds", true, |b| {
            standard_vm(b);
            for base in [0x4600_0000u32, 0x4700_0000] {
                b.begin(&format!("module@{base:x}"))
                    .strings_prop("compatible", &["multiboot,ramdisk"]);
                b.cells("reg", &[0, base, 0, 0x1000]).end();
            }
        });
    });
    assert_eq!(
        (vm_name.as_str(), why.as_str()),
        ("two-initrds", "more than one \"multiboot,ramdisk\" module")
    );

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            b.cells("memory", &[0, 0]).cells("cpus", &[1]);
            kernel(b, 0x4400_0000, "");
        })
    });
    assert_eq!(why, "memory size 0x0 must be a nonzero multiple of 2 MiB");

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            standard_vm(b);
            b.cells("phv,aer-deadline-ms", &[0]);
        })
    });
    assert_eq!(why, "phv,aer-deadline-ms must be at least 1");
    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            standard_vm(b);
            b.cells("phv,aer-deadline-ms", &[0, 1, 2]);
        })
    });
    assert_eq!(why, "phv,aer-deadline-ms must be one 32-bit cell");

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            b.cells("memory", &[0, 0x30_0000]).cells("cpus", &[1]);
            kernel(b, 0x4400_0000, "");
        })
    });
    assert_eq!(
        why,
        "memory size 0x300000 must be a nonzero multiple of 2 MiB"
    );

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            b.cells("cpus", &[1]);
            kernel(b, 0x4400_0000, "");
        })
    });
    assert_eq!(why, "missing memory (RAM size in bytes)");

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            b.cells("memory", &[0, 0x400_0000]).cells("cpus", &[0]);
            kernel(b, 0x4400_0000, "");
        })
    });
    assert_eq!(why, "cpus must be at least 1");

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            b.cells("memory", &[0, 0x400_0000]).cells("cpus", &[1]);
        })
    });
    assert_eq!(why, "no module with compatible \"multiboot,kernel\"");

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            b.cells("memory", &[0, 0x400_0000]).cells("cpus", &[1]);
            b.begin("module@0")
                .string("compatible", "multiboot,kernel")
                .end();
        })
    });
    assert_eq!(
        why,
        "kernel module: /chosen/vm@0/module@0: missing property reg"
    );

    let (vm_name, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, standard_vm);
        vm(b, "vm@1", "b", false, |b| {
            b.cells("memory", &[0, 0x400_0000]).cells("cpus", &[2]);
            kernel(b, 0x4500_0000, "");
        });
    });
    assert_eq!(
        (vm_name.as_str(), why.as_str()),
        ("b", "VMs need 3 pCPUs in total, the platform has 2")
    );

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            standard_vm(b);
            b.cells("phv,memory-base", &[0, 0x4810_0000]);
        })
    });
    assert_eq!(why, "phv,memory-base 0x48100000 is not 2 MiB aligned");

    let (_, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            standard_vm(b);
            b.cells("phv,memory-base", &[0, 0x7e00_0000]);
        })
    });
    assert_eq!(
        why,
        "phv,memory-base 0x7e000000 + 0x4000000 is not inside RAM"
    );

    let (vm_name, why) = vm_error(|b| {
        vm(b, "vm@0", "a", true, |b| {
            standard_vm(b);
            b.cells("phv,memory-base", &[0, 0x4800_0000]);
        });
        vm(b, "vm@1", "b", false, |b| {
            b.cells("memory", &[0, 0x20_0000])
                .cells("cpus", &[1])
                .cells("phv,memory-base", &[0, 0x4a00_0000]);
            kernel(b, 0x4500_0000, "");
        });
    });
    assert_eq!(
        (vm_name.as_str(), why.as_str()),
        ("a", "RAM overlaps VM b's")
    );
}

#[test]
fn bad_exit_method_is_a_property_error() {
    let err = Platform::from_fdt(&tree(with_gic(|_| {}), |b| {
        b.string("phv,exit", "reboot");
    }))
    .unwrap_err();
    assert_eq!(
        err,
        PlatformError::BadProperty(
            "/chosen".into(),
            "phv,exit",
            "expected \"psci\" or \"semihosting\""
        )
    );
}

#[test]
fn aer_storm_setting_is_two_positive_cells() {
    let p = Platform::from_fdt(&tree(with_gic(|_| {}), |b| {
        b.cells("phv,aer-storm", &[8, 10_000]);
    }))
    .unwrap();
    assert_eq!(
        p.aer_storm,
        Some(platform::AerStorm {
            threshold: 8,
            window_ms: 10_000
        })
    );
    for bad in [&[8u32][..], &[0, 10], &[8, 0], &[1, 2, 3]] {
        let err = Platform::from_fdt(&tree(with_gic(|_| {}), |b| {
            b.cells("phv,aer-storm", bad);
        }))
        .unwrap_err();
        assert_eq!(
            err,
            PlatformError::BadProperty(
                "/chosen".into(),
                "phv,aer-storm",
                "expected <threshold window_ms>, both at least 1"
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn gicv3_with_two_redistributor_regions_and_legacy_frames() {
    let blob = tree(
        |b| {
            b.begin("intc@2f000000")
                .string("compatible", "arm,gic-v3")
                .empty("interrupt-controller");
            b.cells("#interrupt-cells", &[3])
                .cells("phandle", &[GIC_PHANDLE])
                .cells("#redistributor-regions", &[2]);
            b.cells(
                "reg",
                &[
                    0,
                    0x2f00_0000,
                    0,
                    0x1_0000, // GICD
                    0,
                    0x2f10_0000,
                    0,
                    0x10_0000, // GICR 0
                    0,
                    0x3f10_0000,
                    0,
                    0x10_0000, // GICR 1
                    0,
                    0x2c00_0000,
                    0,
                    0x2000, // GICC
                    0,
                    0x2c01_0000,
                    0,
                    0x2000, // GICH
                    0,
                    0x2c02_f000,
                    0,
                    0x2000, // GICV
                ],
            );
            b.cells("interrupts", &[1, 9, 8]).end();
        },
        |_| {},
    );
    assert_eq!(
        parse(&blob).gic,
        Gic::V3 {
            compatible: "arm,gic-v3".into(),
            gicd: Region::new(0x2f00_0000, 0x1_0000),
            gicr: vec![
                Region::new(0x2f10_0000, 0x10_0000),
                Region::new(0x3f10_0000, 0x10_0000)
            ],
            gicc: Some(Region::new(0x2c00_0000, 0x2000)),
            gich: Some(Region::new(0x2c01_0000, 0x2000)),
            gicv: Some(Region::new(0x2c02_f000, 0x2000)),
            maintenance_irq: Some(25),
            its: vec![],
        }
    );
}

#[test]
fn unknown_or_missing_interrupt_controller_is_reported() {
    let blob = tree(
        |b| {
            b.begin("intc@40000000")
                .string("compatible", "brcm,bcm2836-armctrl-ic")
                .empty("interrupt-controller");
            b.cells("#interrupt-cells", &[2])
                .cells("phandle", &[GIC_PHANDLE])
                .cells("reg", &[0, 0x4000_0000, 0, 0x100]);
            b.end();
        },
        |_| {},
    );
    assert_eq!(
        Platform::from_fdt(&blob),
        Err(PlatformError::Unsupported(
            "interrupt controller brcm,bcm2836-armctrl-ic".into()
        ))
    );

    let mut b = FdtBuilder::new();
    b.begin("")
        .begin("memory")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0x1000])
        .end()
        .end();
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::MissingNode("interrupt-controller"))
    );
}

#[test]
fn gicv2_needs_gicd_and_gicc() {
    let blob = tree(
        |b| {
            b.begin("intc")
                .string("compatible", "arm,gic-400")
                .empty("interrupt-controller");
            b.cells("#interrupt-cells", &[3])
                .cells("phandle", &[GIC_PHANDLE])
                .cells("reg", &[0, 0x2c01_0000, 0, 0x1000]);
            b.end();
        },
        |_| {},
    );
    assert_eq!(
        Platform::from_fdt(&blob),
        Err(PlatformError::BadProperty(
            "/intc".into(),
            "reg",
            "needs at least the GICD and GICC regions"
        ))
    );
}

/// An ECAM host bridge whose interrupt-map goes to the GIC, with the GIC's
/// `#address-cells` = `gic_address_cells` (QEMU: 2; many boards: 0 or absent).
fn ecam_bridge(b: &mut FdtBuilder, gic_address_cells: Option<u32>) {
    b.begin("pcie@10000000")
        .string("compatible", "pci-host-ecam-generic")
        .string("device_type", "pci");
    b.cells("#address-cells", &[3])
        .cells("#size-cells", &[2])
        .cells("#interrupt-cells", &[1]);
    // 16 MiB of ECAM: room for 16 buses, though bus-range claims 0-255.
    b.cells("reg", &[0x40, 0x1000_0000, 0, 0x100_0000])
        .cells("bus-range", &[0, 0xff]);
    b.cells(
        "ranges",
        &[
            0x0300_0000,
            0x80,
            0,
            0x80,
            0,
            0x80,
            0,
            0x4200_0000,
            0,
            0x2000_0000,
            0,
            0x2000_0000,
            0,
            0x1000_0000,
        ],
    );
    b.cells("interrupt-map-mask", &[0x1800, 0, 0, 7]);
    let parent_address = vec![0; gic_address_cells.unwrap_or(0) as usize];
    let mut map = Vec::new();
    for slot in 0..2u32 {
        for pin in 1..=4u32 {
            map.extend([slot << 11, 0, 0, pin, GIC_PHANDLE]);
            map.extend(&parent_address);
            map.extend([0, 3 + (slot + pin - 1) % 4, 4]);
        }
    }
    b.cells("interrupt-map", &map).end();
}

#[test]
fn interrupt_map_honours_the_gic_address_cells() {
    let expected: Vec<PciIntxRoute> = (0..2u32)
        .flat_map(|slot| {
            (1..=4u32).map(move |pin| PciIntxRoute {
                child_addr_hi: slot << 11,
                pin: pin as u8,
                intid: 35 + (slot + pin - 1) % 4,
                level: true,
            })
        })
        .collect();
    for cells in [None, Some(0), Some(2)] {
        let blob = tree(
            |b| {
                gic_v3(b, cells);
                ecam_bridge(b, cells);
            },
            |_| {},
        );
        let p = parse(&blob);
        let [bridge] = &p.pci_host_bridges[..] else {
            panic!()
        };
        assert_eq!(bridge.intx_map, expected, "GIC #address-cells {cells:?}");
        assert_eq!(bridge.access, ConfigAccess::Ecam);
        // The ECAM window holds 16 buses: the bus range is limited to it.
        assert_eq!((bridge.bus_start, bridge.bus_end), (0, 15));
        assert_eq!(bridge.windows.len(), 2);
        assert!(bridge.windows[1].prefetchable);
    }
}

/// A host bridge node with what a bridge needs, then `broken` properties.
fn broken_bridge(b: &mut FdtBuilder, node: &str, broken: impl FnOnce(&mut FdtBuilder)) {
    b.begin(node)
        .string("compatible", "pci-host-ecam-generic")
        .string("device_type", "pci");
    b.cells("#address-cells", &[3])
        .cells("#size-cells", &[2])
        .cells("#interrupt-cells", &[1]);
    b.cells("reg", &[0x40, 0x2000_0000, 0, 0x100_0000]);
    broken(b);
    b.end();
}

/// Host bridges whose nodes cannot be described are refused, each with its
/// reason, and the platform (with its good bridge) is still described; the
/// good bridge keeps the segment its place gives it.
#[test]
fn malformed_host_bridges_are_refused_and_the_rest_boots() {
    let blob = tree(
        |b| {
            gic_v3(b, Some(2));
            // Entries written without the GIC's two parent unit address
            // cells (as Debian's ipq8074 DTBs do with one): the first entry
            // swallows part of the second, whose "phandle" names nothing.
            broken_bridge(b, "pcie@20000000", |b| {
                b.cells("interrupt-map-mask", &[0, 0, 0, 7]);
                b.cells(
                    "interrupt-map",
                    &[
                        0,
                        0,
                        0,
                        1,
                        GIC_PHANDLE,
                        0,
                        3,
                        4,
                        0,
                        0,
                        0,
                        2,
                        GIC_PHANDLE,
                        0,
                        4,
                        4,
                    ],
                );
            });
            broken_bridge(b, "pcie@30000000", |b| {
                b.cells("bus-range", &[5, 1]);
            });
            ecam_bridge(b, Some(2));
        },
        |_| {},
    );
    let p = parse(&blob);
    let [bridge] = &p.pci_host_bridges[..] else {
        panic!("{:?}", p.pci_host_bridges)
    };
    assert_eq!(bridge.path, "/pcie@10000000");
    assert_eq!(bridge.segment, 2);
    assert_eq!(bridge.intx_map.len(), 8);
    let refused = |path: &str, prop, why| RefusedHostBridge {
        path: path.into(),
        reason: PlatformError::BadProperty(path.into(), prop, why),
    };
    assert_eq!(
        p.refused_host_bridges,
        [
            refused(
                "/pcie@20000000",
                "interrupt-map",
                "phandle does not name any node"
            ),
            refused("/pcie@30000000", "bus-range", "start is above end"),
        ]
    );
    // A well-formed tree refuses nothing.
    let good = parse(&tree(
        |b| {
            gic_v3(b, Some(2));
            ecam_bridge(b, Some(2));
        },
        |_| {},
    ));
    assert!(good.refused_host_bridges.is_empty());
    assert_eq!(good.pci_host_bridges.len(), 1);
}

#[test]
fn nested_bus_ranges_translate_to_cpu_addresses() {
    let blob = tree(
        with_gic(|b| {
            b.begin("soc")
                .string("compatible", "simple-bus")
                .cells("#address-cells", &[1])
                .cells("#size-cells", &[1]);
            b.cells("ranges", &[0x7e00_0000, 0, 0xfe00_0000, 0x180_0000]);
            b.begin("bus@200000")
                .string("compatible", "simple-bus")
                .cells("#address-cells", &[1])
                .cells("#size-cells", &[1]);
            b.cells("ranges", &[0, 0x7e20_0000, 0x1_0000]);
            b.begin("serial@1000")
                .strings_prop("compatible", &["arm,pl011", "arm,primecell"]);
            b.cells("reg", &[0x1000, 0x200])
                .cells("interrupts", &[0, 57, 4])
                .end();
            b.end().end();
        }),
        |_| {},
    );
    assert_eq!(
        parse(&blob).uart,
        Some(Uart {
            compatible: "arm,pl011".into(),
            region: Region::new(0xfe20_1000, 0x200),
            irq: Some(89)
        })
    );
}

#[test]
fn bus_without_ranges_cannot_be_translated() {
    let blob = tree(
        with_gic(|b| {
            b.begin("soc")
                .cells("#address-cells", &[1])
                .cells("#size-cells", &[1]);
            b.begin("serial@1000")
                .string("compatible", "arm,pl011")
                .cells("reg", &[0x1000, 0x200])
                .end();
            b.end();
        }),
        |_| {},
    );
    assert_eq!(
        Platform::from_fdt(&blob),
        Err(PlatformError::BadProperty(
            "/soc".into(),
            "ranges",
            "absent: child addresses cannot be translated to CPU addresses"
        ))
    );
}

#[test]
fn stdout_path_alias_with_options_beats_the_first_pl011() {
    let blob = tree(
        with_gic(|b| {
            b.begin("serial@9000000")
                .string("compatible", "arm,pl011")
                .cells("reg", &[0, 0x900_0000, 0, 0x1000])
                .end();
            b.begin("serial@9100000")
                .string("compatible", "snps,dw-apb-uart")
                .cells("reg", &[0, 0x910_0000, 0, 0x100]);
            b.cells("interrupts-extended", &[GIC_PHANDLE, 0, 7, 4])
                .end();
            b.begin("aliases")
                .string("serial2", "/serial@9100000")
                .end();
        }),
        |b| {
            b.string("stdout-path", "serial2:115200n8");
        },
    );
    assert_eq!(
        parse(&blob).uart,
        Some(Uart {
            compatible: "snps,dw-apb-uart".into(),
            region: Region::new(0x910_0000, 0x100),
            irq: Some(39)
        })
    );
}

#[test]
fn without_stdout_path_the_first_enabled_pl011_is_the_console() {
    let blob = tree(
        with_gic(|b| {
            b.begin("serial@9000000")
                .string("compatible", "arm,pl011")
                .string("status", "disabled");
            b.cells("reg", &[0, 0x900_0000, 0, 0x1000]).end();
            b.begin("serial@9040000")
                .string("compatible", "arm,pl011")
                .cells("reg", &[0, 0x904_0000, 0, 0x1000])
                .end();
        }),
        |_| {},
    );
    assert_eq!(parse(&blob).uart.map(|u| u.region.base), Some(0x904_0000));
}

#[test]
fn device_behind_an_interrupt_nexus_resolves_to_the_gic() {
    // As Arm's vexpress/FVP motherboard: a bus maps its devices' 1-cell
    // interrupts onto GIC SPIs with interrupt-map.
    let blob = tree(
        with_gic(|b| {
            b.begin("bus@8000000")
                .string("compatible", "simple-bus")
                .cells("#address-cells", &[1])
                .cells("#size-cells", &[1]);
            b.cells("ranges", &[0, 0, 0x1c00_0000, 0x100_0000])
                .cells("#interrupt-cells", &[1]);
            b.cells("interrupt-map-mask", &[0, 63]);
            b.cells(
                "interrupt-map",
                &[0, 5, GIC_PHANDLE, 0, 5, 4, 0, 6, GIC_PHANDLE, 0, 6, 4],
            );
            b.begin("serial@90000")
                .string("compatible", "arm,pl011")
                .cells("reg", &[0x9_0000, 0x1000]);
            b.cells("interrupts", &[5]).end();
            b.end();
        }),
        |_| {},
    );
    assert_eq!(
        parse(&blob).uart,
        Some(Uart {
            compatible: "arm,pl011".into(),
            region: Region::new(0x1c09_0000, 0x1000),
            irq: Some(37)
        })
    );
}

#[test]
fn absurd_interrupt_cells_are_refused_not_allocated() {
    let blob = tree(
        with_gic(|b| {
            b.begin("bus")
                .cells("#address-cells", &[1])
                .cells("#size-cells", &[1])
                .empty("ranges");
            b.cells("#interrupt-cells", &[u32::MAX])
                .cells("interrupt-map", &[0, 5, GIC_PHANDLE, 0, 5, 4]);
            b.begin("serial@90000")
                .string("compatible", "arm,pl011")
                .cells("reg", &[0x9_0000, 0x1000]);
            b.cells("interrupts", &[5]).end();
            b.end();
        }),
        |_| {},
    );
    assert_eq!(
        Platform::from_fdt(&blob),
        Err(PlatformError::BadProperty(
            "/bus".into(),
            "#interrupt-cells",
            "more than 8 cells"
        ))
    );
}

#[test]
fn timer_interrupt_names_override_the_positional_order() {
    let mut b = FdtBuilder::new();
    b.begin("")
        .cells("interrupt-parent", &[GIC_PHANDLE])
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    b.begin("memory")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
        .end();
    b.begin("cpus")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[0]);
    b.begin("cpu@0")
        .string("device_type", "cpu")
        .cells("reg", &[0])
        .end()
        .end();
    gic_v3(&mut b, None);
    b.begin("timer")
        .string("compatible", "arm,armv8-timer")
        .cells("clock-frequency", &[24_000_000]);
    b.cells("interrupts", &[1, 11, 4, 1, 14, 4])
        .strings_prop("interrupt-names", &["virt", "phys"])
        .end();
    b.end();
    assert_eq!(
        parse(&b.finish()).timer,
        Timer {
            secure_phys: None,
            nonsecure_phys: 30,
            virt: 27,
            hyp_phys: None,
            hyp_virt: None,
            frequency: Some(24_000_000)
        }
    );
}

#[test]
fn memory_and_reservations_are_sorted_and_merged() {
    let blob = tree(
        with_gic(|b| {
            b.begin("memory@80000000").string("device_type", "memory");
            b.cells(
                "reg",
                &[
                    0,
                    0x8000_0000,
                    0,
                    0x1000_0000,
                    0,
                    0x9000_0000,
                    0,
                    0,
                    1,
                    0,
                    0,
                    0x1000,
                ],
            )
            .end();
            b.begin("memory@7ff00000")
                .string("device_type", "memory")
                .cells("reg", &[0, 0x7ff0_0000, 0, 0x20_0000])
                .end();
            b.begin("reserved-memory")
                .cells("#address-cells", &[2])
                .cells("#size-cells", &[2])
                .empty("ranges");
            b.begin("tfa@4e000000")
                .cells("reg", &[0, 0x4e00_0000, 0, 0x20_0000])
                .empty("no-map")
                .end();
            b.begin("cma").cells("size", &[0, 0x100_0000]).end();
            b.begin("off@4f000000")
                .cells("reg", &[0, 0x4f00_0000, 0, 0x1000])
                .string("status", "disabled")
                .end();
            b.end();
            b.reserve(0x4000_0000, 0x1000);
        }),
        |_| {},
    );
    let p = parse(&blob);
    assert_eq!(
        p.memory,
        // 0x4000_0000..0x8000_0000, 0x7ff0_0000..0x8010_0000 and 0x8000_0000..0x9000_0000
        // overlap or touch; the empty 0x9000_0000 entry is dropped.
        [
            Region::new(0x4000_0000, 0x5000_0000),
            Region::new(0x1_0000_0000, 0x1000)
        ]
    );
    assert_eq!(
        p.reserved,
        [
            Region::new(0x4000_0000, 0x1000),
            Region::new(0x4e00_0000, 0x20_0000)
        ]
    );
}

#[test]
fn missing_pieces_are_named() {
    let mut b = FdtBuilder::new();
    b.begin("")
        .cells("interrupt-parent", &[GIC_PHANDLE])
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    b.begin("memory")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
        .end();
    gic_v3(&mut b, None);
    b.end();
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::MissingNode("/cpus"))
    );

    let blob = tree(
        with_gic(|b| {
            b.begin("firmware")
                .begin("psci")
                .string("compatible", "arm,psci-0.2")
                .end()
                .end();
        }),
        |_| {},
    );
    // The root-level /psci (method hvc) comes first in the tree and is taken.
    assert_eq!(parse(&blob).psci.map(|p| p.conduit), Some(PsciConduit::Hvc));

    let mut b = FdtBuilder::new();
    b.begin("")
        .cells("interrupt-parent", &[GIC_PHANDLE])
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    b.begin("memory")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
        .end();
    b.begin("cpus")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[0]);
    b.begin("cpu@0")
        .string("device_type", "cpu")
        .cells("reg", &[0])
        .end()
        .end();
    gic_v3(&mut b, None);
    b.begin("timer")
        .string("compatible", "arm,armv8-timer")
        .cells("interrupts", &[1, 13, 4, 1, 14, 4, 1, 11, 4])
        .end();
    b.begin("psci")
        .string("compatible", "arm,psci-1.0")
        .string("method", "svc")
        .end();
    b.end();
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::BadProperty(
            "/psci".into(),
            "method",
            "expected \"smc\" or \"hvc\""
        ))
    );
}

#[test]
fn missing_timer_is_named() {
    let mut b = FdtBuilder::new();
    b.begin("")
        .cells("interrupt-parent", &[GIC_PHANDLE])
        .cells("#address-cells", &[2])
        .cells("#size-cells", &[2]);
    b.begin("memory")
        .string("device_type", "memory")
        .cells("reg", &[0, 0x4000_0000, 0, 0x1000_0000])
        .end();
    b.begin("cpus")
        .cells("#address-cells", &[1])
        .cells("#size-cells", &[0]);
    b.begin("cpu@0")
        .string("device_type", "cpu")
        .cells("reg", &[0])
        .end()
        .end();
    gic_v3(&mut b, None);
    b.end();
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::MissingNode(
            "timer (compatible \"arm,armv8-timer\")"
        ))
    );
}

#[test]
fn broken_headers_are_invalid_blobs() {
    let good = tree(with_gic(|_| {}), |_| {});
    assert_eq!(
        Platform::from_fdt(&good[..3]),
        Err(PlatformError::InvalidBlob(BlobError::TooShort { len: 3 }))
    );
    let mut bad = good.clone();
    bad[0] = 0;
    assert_eq!(
        Platform::from_fdt(&bad),
        Err(PlatformError::InvalidBlob(BlobError::BadMagic(0x000d_feed)))
    );
    let mut bad = good.clone();
    bad[20..24].copy_from_slice(&15u32.to_be_bytes());
    assert_eq!(
        Platform::from_fdt(&bad),
        Err(PlatformError::InvalidBlob(BlobError::UnsupportedVersion {
            version: 15,
            last_compatible: 16
        }))
    );
    assert_eq!(
        Platform::from_fdt(&good[..good.len() - 1]),
        Err(PlatformError::InvalidBlob(BlobError::BadTotalSize {
            totalsize: good.len() as u32,
            available: good.len() - 1
        }))
    );
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&(good.len() as u32).to_be_bytes());
    assert_eq!(
        Platform::from_fdt(&bad),
        Err(PlatformError::InvalidBlob(BlobError::BlockOutOfBounds(
            "structure"
        )))
    );
    // The first structure token (after the 40-byte header and the 16-byte empty reservation map).
    let mut bad = good.clone();
    bad[56..60].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        Platform::from_fdt(&bad),
        Err(PlatformError::InvalidBlob(BlobError::BadToken {
            offset: 0,
            token: 7
        }))
    );
}

#[test]
fn version_16_blobs_without_size_dt_struct_parse() {
    let mut blob = tree(with_gic(|_| {}), |_| {});
    blob[20..24].copy_from_slice(&16u32.to_be_bytes());
    // A v16 header ends before size_dt_struct: whatever is there is ignored.
    blob[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(parse(&blob).model, "synthetic");
}

#[test]
fn malformed_structure_blocks_are_invalid_blobs() {
    let mut b = FdtBuilder::new();
    for _ in 0..65 {
        b.begin("n");
    }
    for _ in 0..65 {
        b.end();
    }
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::InvalidBlob(BlobError::TooDeep))
    );

    let mut b = FdtBuilder::new();
    b.string("model", "outside any node");
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::InvalidBlob(BlobError::Misplaced {
            offset: 0
        }))
    );

    let mut b = FdtBuilder::new();
    b.begin("").end().end();
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::InvalidBlob(BlobError::UnbalancedEnd {
            offset: 12
        }))
    );

    let mut b = FdtBuilder::new();
    b.begin("").begin("unclosed").end();
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::InvalidBlob(BlobError::Truncated {
            offset: 28
        }))
    );

    let mut b = FdtBuilder::new();
    b.begin("").end().begin("second-root").end();
    assert_eq!(
        Platform::from_fdt(&b.finish()),
        Err(PlatformError::InvalidBlob(BlobError::Misplaced {
            offset: 12
        }))
    );
}

#[test]
fn errors_display_what_is_wrong() {
    let err =
        PlatformError::BadProperty("/pcie@10000000".into(), "bus-range", "start is above end");
    assert_eq!(
        err.to_string(),
        "/pcie@10000000: bad bus-range: start is above end"
    );
    let err = PlatformError::InvalidBlob(BlobError::BadMagic(0x1234));
    assert_eq!(
        err.to_string(),
        "not a valid device tree: bad magic 0x00001234 (expected 0xd00dfeed)"
    );
}

#[test]
fn pci_function_addresses_parse_strictly() {
    let a = PciFunctionAddress::parse("0001:02:1f.7").unwrap();
    assert_eq!((a.segment, a.bus, a.device, a.function), (1, 2, 0x1f, 7));
    assert_eq!(a.to_string(), "0001:02:1f.7");
    let b = PciFunctionAddress::parse("03:00.1").unwrap();
    assert_eq!((b.segment, b.bus, b.device, b.function), (0, 3, 0, 1));
    for bad in [
        "",
        "0000:01:00",
        "01:20.0",
        "01:00.8",
        "x:01:00.0",
        "0:0:01:00.0",
        "01:00.-1",
    ] {
        assert_eq!(PciFunctionAddress::parse(bad), None, "{bad}");
    }
}
