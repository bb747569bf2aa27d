//! Device trees for QEMU runs: QEMU's own DTB for the machine, re-emitted
//! with the VM nodes of docs/interfaces.md under `/chosen`.

use fdt::Fdt;
use fdt::node::FdtNode;
use vm_fdt::{FdtReserveEntry, FdtWriter};

use crate::util::{Error, Result};

/// One `/chosen/vm@N` node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNode {
    pub label: String,
    pub hardware_domain: bool,
    pub memory: u64,
    pub memory_base: Option<u64>,
    pub cpus: u32,
    pub module_addr: u64,
    pub module_size: u64,
    /// The `multiboot,ramdisk` module's address and size, if any.
    pub ramdisk: Option<(u64, u64)>,
    pub bootargs: String,
    /// `phv,pci-devices` (omitted when empty) and `phv,pci-whole-units`.
    pub pci_devices: Vec<String>,
    pub pci_whole_units: bool,
    /// `phv,pci-reset-methods` (omitted when empty): "SSSS:BB:DD.F=m1,m2".
    pub pci_reset_methods: Vec<String>,
    /// `phv,aer-deadline-ms` (omitted when `None`).
    pub aer_deadline_ms: Option<u32>,
}

fn parse(dtb: &[u8]) -> Result<Fdt<'_>> {
    Fdt::new(dtb).map_err(|e| Error::Dtb(format!("{e:?}")))
}

fn werr(e: vm_fdt::Error) -> Error {
    Error::Dtb(e.to_string())
}

/// Base of the first RAM range of `/memory`.
pub fn ram_base(dtb: &[u8]) -> Result<(u64, u64)> {
    let fdt = parse(dtb)?;
    let node = fdt
        .all_nodes()
        .find(|n| {
            n.property("device_type")
                .and_then(|p| p.as_str())
                .is_some_and(|s| s == "memory")
        })
        .ok_or_else(|| Error::Dtb("no memory node".into()))?;
    let mut reg = node
        .reg()
        .ok_or_else(|| Error::Dtb("memory node without reg".into()))?;
    let r = reg
        .next()
        .ok_or_else(|| Error::Dtb("empty memory reg".into()))?;
    Ok((r.starting_address as u64, r.size.unwrap_or(0) as u64))
}

/// What a scenario adds to `/chosen` besides its VM nodes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chosen<'a> {
    /// `phv,exit`.
    pub exit: Option<&'a str>,
    /// `phv,aer-storm = <threshold window_ms>`.
    pub aer_storm: Option<[u32; 2]>,
    /// `phv,test-hypervisor-bugs` (empty property).
    pub test_hypervisor_bugs: bool,
}

/// `dtb` with the [`Chosen`] properties that are set and the VM nodes
/// added to `/chosen` (created if missing). Everything else, memreserve
/// entries included, is kept.
pub fn with_vms(dtb: &[u8], vms: &[VmNode], chosen: Chosen<'_>) -> Result<Vec<u8>> {
    let fdt = parse(dtb)?;
    let reserve: Vec<FdtReserveEntry> = fdt
        .memory_reservations()
        .map(|r| FdtReserveEntry::new(r.address() as u64, r.size() as u64))
        .collect::<std::result::Result<_, _>>()
        .map_err(werr)?;
    let mut w = FdtWriter::new_with_mem_reserv(&reserve).map_err(werr)?;
    let root = fdt
        .find_node("/")
        .ok_or_else(|| Error::Dtb("no root node".into()))?;
    let extra = Extra { vms, chosen };
    emit(&mut w, root, 0, &extra)?;
    w.finish().map_err(werr)
}

struct Extra<'a> {
    vms: &'a [VmNode],
    chosen: Chosen<'a>,
}

/// The `/chosen` properties we write: a source DTB's own are dropped.
const CHOSEN_PROPERTIES: [&str; 3] = ["phv,exit", "phv,aer-storm", "phv,test-hypervisor-bugs"];

fn emit(w: &mut FdtWriter, node: FdtNode<'_, '_>, depth: usize, extra: &Extra<'_>) -> Result<()> {
    let name = if depth == 0 { "" } else { node.name };
    let is_chosen = depth == 1 && name == "chosen";
    let h = w.begin_node(name).map_err(werr)?;
    for p in node.properties() {
        if is_chosen && CHOSEN_PROPERTIES.contains(&p.name) {
            continue;
        }
        w.property(p.name, p.value).map_err(werr)?;
    }
    if is_chosen {
        add_chosen(w, extra)?;
    }
    let mut saw_chosen = false;
    for child in node.children() {
        saw_chosen |= depth == 0 && child.name == "chosen";
        emit(w, child, depth + 1, extra)?;
    }
    if depth == 0 && !saw_chosen {
        let c = w.begin_node("chosen").map_err(werr)?;
        add_chosen(w, extra)?;
        w.end_node(c).map_err(werr)?;
    }
    w.end_node(h).map_err(werr)
}

fn add_chosen(w: &mut FdtWriter, extra: &Extra<'_>) -> Result<()> {
    if let Some(exit) = extra.chosen.exit {
        w.property_string("phv,exit", exit).map_err(werr)?;
    }
    if let Some(storm) = extra.chosen.aer_storm {
        w.property_array_u32("phv,aer-storm", &storm)
            .map_err(werr)?;
    }
    if extra.chosen.test_hypervisor_bugs {
        w.property_null("phv,test-hypervisor-bugs").map_err(werr)?;
    }
    for (i, vm) in extra.vms.iter().enumerate() {
        let n = w.begin_node(&format!("vm@{i}")).map_err(werr)?;
        w.property_string("compatible", "phv,vm").map_err(werr)?;
        w.property_u32("#address-cells", 2).map_err(werr)?;
        w.property_u32("#size-cells", 2).map_err(werr)?;
        w.property_string("label", &vm.label).map_err(werr)?;
        if vm.hardware_domain {
            w.property_null("phv,hardware-domain").map_err(werr)?;
        }
        w.property_u64("memory", vm.memory).map_err(werr)?;
        if let Some(base) = vm.memory_base {
            w.property_u64("phv,memory-base", base).map_err(werr)?;
        }
        w.property_u32("cpus", vm.cpus).map_err(werr)?;
        if !vm.pci_devices.is_empty() {
            w.property_string_list("phv,pci-devices", vm.pci_devices.clone())
                .map_err(werr)?;
        }
        if vm.pci_whole_units {
            w.property_null("phv,pci-whole-units").map_err(werr)?;
        }
        if !vm.pci_reset_methods.is_empty() {
            w.property_string_list("phv,pci-reset-methods", vm.pci_reset_methods.clone())
                .map_err(werr)?;
        }
        if let Some(ms) = vm.aer_deadline_ms {
            w.property_u32("phv,aer-deadline-ms", ms).map_err(werr)?;
        }
        let m = w
            .begin_node(&format!("module@{:x}", vm.module_addr))
            .map_err(werr)?;
        w.property_string_list(
            "compatible",
            vec!["multiboot,kernel".into(), "multiboot,module".into()],
        )
        .map_err(werr)?;
        w.property_array_u64("reg", &[vm.module_addr, vm.module_size])
            .map_err(werr)?;
        w.property_string("bootargs", &vm.bootargs).map_err(werr)?;
        w.end_node(m).map_err(werr)?;
        if let Some((addr, size)) = vm.ramdisk {
            let r = w.begin_node(&format!("module@{addr:x}")).map_err(werr)?;
            w.property_string_list(
                "compatible",
                vec!["multiboot,ramdisk".into(), "multiboot,module".into()],
            )
            .map_err(werr)?;
            w.property_array_u64("reg", &[addr, size]).map_err(werr)?;
            w.end_node(r).map_err(werr)?;
        }
        w.end_node(n).map_err(werr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w =
            FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0x4000_0000, 0x1000).unwrap()])
                .unwrap();
        let r = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_string("compatible", "linux,dummy-virt").unwrap();
        let m = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000])
            .unwrap();
        w.end_node(m).unwrap();
        let c = w.begin_node("chosen").unwrap();
        w.property_string("stdout-path", "/pl011@9000000").unwrap();
        w.end_node(c).unwrap();
        let u = w.begin_node("pl011@9000000").unwrap();
        w.property_array_u64("reg", &[0x900_0000, 0x1000]).unwrap();
        w.property_u32("phandle", 0x8000).unwrap();
        w.end_node(u).unwrap();
        w.end_node(r).unwrap();
        w.finish().unwrap()
    }

    fn vm(i: u64, hw: bool) -> VmNode {
        VmNode {
            label: if hw { "hwdom".into() } else { "guest".into() },
            hardware_domain: hw,
            memory: 64 << 20,
            memory_base: hw.then_some(0x4800_0000),
            cpus: 1,
            module_addr: 0x6000_0000 + i * 0x20_0000,
            module_size: 0x1234,
            ramdisk: (!hw).then_some((0x6100_0000, 0x5678)),
            bootargs: "test=hello".into(),
            pci_devices: if hw {
                Vec::new()
            } else {
                vec!["0000:01:00.0".into(), "02:00.0".into()]
            },
            pci_whole_units: !hw,
            pci_reset_methods: Vec::new(),
            aer_deadline_ms: None,
        }
    }

    #[test]
    fn ram_base_of_sample() {
        assert_eq!(ram_base(&sample()).unwrap(), (0x4000_0000, 0x4000_0000));
    }

    #[test]
    fn adds_vm_nodes_and_keeps_the_rest() {
        let src = sample();
        let chosen = Chosen {
            exit: Some("semihosting"),
            aer_storm: Some([8, 10_000]),
            test_hypervisor_bugs: true,
        };
        let out = with_vms(&src, &[vm(0, true), vm(1, false)], chosen).unwrap();
        let fdt = Fdt::new(&out).unwrap();
        let res: Vec<_> = fdt
            .memory_reservations()
            .map(|r| (r.address() as u64, r.size()))
            .collect();
        assert_eq!(res, vec![(0x4000_0000, 0x1000)]);
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("stdout-path").unwrap().as_str(),
            Some("/pl011@9000000")
        );
        assert_eq!(
            chosen.property("phv,exit").unwrap().as_str(),
            Some("semihosting")
        );
        assert_eq!(
            chosen.property("phv,aer-storm").unwrap().value,
            [8u32.to_be_bytes(), 10_000u32.to_be_bytes()].concat()
        );
        assert!(
            chosen
                .property("phv,test-hypervisor-bugs")
                .unwrap()
                .value
                .is_empty()
        );
        let vm0 = fdt.find_node("/chosen/vm@0").unwrap();
        assert_eq!(vm0.property("label").unwrap().as_str(), Some("hwdom"));
        assert!(vm0.property("phv,hardware-domain").is_some());
        assert_eq!(
            vm0.property("memory").unwrap().value,
            (64u64 << 20).to_be_bytes()
        );
        assert_eq!(
            vm0.property("phv,memory-base").unwrap().value,
            0x4800_0000u64.to_be_bytes()
        );
        assert_eq!(vm0.property("cpus").unwrap().as_usize(), Some(1));
        let m = fdt.find_node("/chosen/vm@1/module@60200000").unwrap();
        let reg = m.reg().unwrap().next().unwrap();
        assert_eq!(
            (reg.starting_address as u64, reg.size),
            (0x6020_0000, Some(0x1234))
        );
        assert_eq!(m.property("bootargs").unwrap().as_str(), Some("test=hello"));
        let compat: Vec<_> = m.compatible().unwrap().all().collect();
        assert_eq!(compat, vec!["multiboot,kernel", "multiboot,module"]);
        let vm1 = fdt.find_node("/chosen/vm@1").unwrap();
        let rd = fdt.find_node("/chosen/vm@1/module@61000000").unwrap();
        let compat: Vec<_> = rd.compatible().unwrap().all().collect();
        assert_eq!(compat, vec!["multiboot,ramdisk", "multiboot,module"]);
        assert_eq!(
            rd.property("reg").unwrap().value,
            [0x6100_0000u64.to_be_bytes(), 0x5678u64.to_be_bytes()].concat()
        );
        assert!(
            fdt.find_node("/chosen/vm@0")
                .unwrap()
                .children()
                .all(|c| !c.name.starts_with("module@61"))
        );
        assert!(vm1.property("phv,hardware-domain").is_none());
        assert_eq!(
            vm1.property("phv,pci-devices").unwrap().value,
            b"0000:01:00.0\x0002:00.0\x00"
        );
        assert!(vm1.property("phv,pci-whole-units").is_some());
        assert!(vm0.property("phv,pci-devices").is_none());
        assert!(vm0.property("phv,pci-whole-units").is_none());
        // The rest is untouched.
        let uart = fdt.find_node("/pl011@9000000").unwrap();
        assert_eq!(uart.property("phandle").unwrap().as_usize(), Some(0x8000));
        assert_eq!(ram_base(&out).unwrap(), (0x4000_0000, 0x4000_0000));
    }

    #[test]
    fn qemu_dtbs_round_trip() {
        // The DTBs `cargo xtask dtb` dumps (checked in by the platform crate).
        let dir = crate::util::root().join("platform/tests/data");
        for f in ["qemu-virt-gicv2.dtb", "qemu-virt-gicv3.dtb"] {
            let Ok(src) = std::fs::read(dir.join(f)) else {
                continue;
            };
            let out = with_vms(&src, &[], Chosen::default()).unwrap();
            let (a, b) = (Fdt::new(&src).unwrap(), Fdt::new(&out).unwrap());
            assert_eq!(a.all_nodes().count(), b.all_nodes().count(), "{f}");
            for (x, y) in a.all_nodes().zip(b.all_nodes()) {
                assert_eq!(x.name, y.name);
                let px: Vec<_> = x.properties().map(|p| (p.name, p.value)).collect();
                let py: Vec<_> = y.properties().map(|p| (p.name, p.value)).collect();
                assert_eq!(px, py, "{f}: {}", x.name);
            }
        }
    }
}
