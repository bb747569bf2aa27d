//! The device tree each VM boots with, built by the hypervisor from what the
//! VM was given: its memory, vCPUs, PSCI through HVC, the timer, the
//! interrupt controller of the platform's version, and its console.

use alloc::format;
use alloc::vec::Vec;
use platform::{Gic, Region, Timer};
use vm_fdt::{Error as FdtError, FdtWriter};

/// What goes into a VM's device tree.
#[derive(Debug)]
pub struct GuestDescription<'a> {
    pub memory: Region,
    pub vcpus: u32,
    pub bootargs: &'a str,
    /// Where the VM's initial ramdisk lies in its RAM, if it has one.
    pub initrd: Option<Region>,
    pub gic: &'a Gic,
    pub timer: &'a Timer,
    /// The console's IPA and SPI (INTID) if any.
    pub uart: Region,
    pub uart_irq: Option<u32>,
    /// The virtual PCIe host bridge, if the VM has passed-through functions.
    pub pci: Option<&'a GuestPci>,
}

/// A VM's virtual PCIe host bridge as its device tree describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPci {
    /// Virtual ECAM window (IPA) and its first and last bus.
    pub ecam: Region,
    pub bus_start: u8,
    pub bus_end: u8,
    /// 32-bit and 64-bit memory windows (IPA == PCI address).
    pub mem32: Region,
    pub mem64: Region,
    /// `interrupt-map-mask` (child address high cell, pin).
    pub intx_mask: (u32, u32),
    /// `interrupt-map`: (child address high cell, pin 1..=4, SPI INTID).
    pub intx: Vec<(u32, u8, u32)>,
}

/// The child address high cell of a PCI function.
pub const fn pci_child_hi(bus: u8, device: u8, function: u8) -> u32 {
    ((bus as u32) << 16) | (((device & 0x1f) as u32) << 11) | (((function & 7) as u32) << 8)
}

/// PCI address space codes of `ranges` (phys.hi bits 25:24).
const PCI_SPACE_MEM32: u32 = 0x0200_0000;
const PCI_SPACE_MEM64: u32 = 0x0300_0000;

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;
/// GIC interrupt specifier types.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_LEVEL_HIGH: u32 = 4;
/// Size of one GICv3 redistributor (RD + SGI frames).
const GICR_FRAME_SIZE: u64 = 0x2_0000;

fn cells(values: &[u64]) -> Vec<u32> {
    values
        .iter()
        .flat_map(|v| [(*v >> 32) as u32, *v as u32])
        .collect()
}

/// Build the VM's flattened device tree.
pub fn build(desc: &GuestDescription) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "phv virtual machine")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let uart_name = format!("pl011@{:x}", desc.uart.base);
    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", desc.bootargs)?;
    if let Some(initrd) = desc.initrd {
        // Linux reads either cell size; 64-bit says it for any RAM.
        fdt.property_u64("linux,initrd-start", initrd.base)?;
        fdt.property_u64("linux,initrd-end", initrd.end())?;
    }
    fdt.property_string("stdout-path", &format!("/{uart_name}"))?;
    fdt.end_node(chosen)?;

    let memory = fdt.begin_node(&format!("memory@{:x}", desc.memory.base))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u32("reg", &cells(&[desc.memory.base, desc.memory.size]))?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for i in 0..desc.vcpus {
        let cpu = fdt.begin_node(&format!("cpu@{i}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,armv8")?;
        fdt.property_u32("reg", i)?;
        fdt.property_string("enable-method", "psci")?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        ["arm,psci-1.0", "arm,psci-0.2"].map(Into::into).to_vec(),
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let ppi_flags = match desc.gic {
        // GICv2 PPIs carry a CPU mask in bits 15:8.
        Gic::V2 { .. } => (((1u32 << desc.vcpus.min(8)) - 1) << 8) | IRQ_LEVEL_HIGH,
        Gic::V3 { .. } => IRQ_LEVEL_HIGH,
    };
    let t = desc.timer;
    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let mut timer_irqs = Vec::new();
    for intid in [
        t.secure_phys.unwrap_or(29),
        t.nonsecure_phys,
        t.virt,
        t.hyp_phys.unwrap_or(26),
    ] {
        timer_irqs.extend_from_slice(&[GIC_PPI, intid.saturating_sub(16), ppi_flags]);
    }
    fdt.property_array_u32("interrupts", &timer_irqs)?;
    fdt.property_null("always-on")?;
    fdt.end_node(timer)?;

    match desc.gic {
        Gic::V2 { gicd, gicc, .. } => {
            let node = fdt.begin_node(&format!("intc@{:x}", gicd.base))?;
            fdt.property_string("compatible", "arm,cortex-a15-gic")?;
            fdt.property_array_u32("reg", &cells(&[gicd.base, gicd.size, gicc.base, gicc.size]))?;
            gic_common(&mut fdt)?;
            fdt.end_node(node)?;
        }
        Gic::V3 { gicd, gicr, .. } => {
            let node = fdt.begin_node(&format!("intc@{:x}", gicd.base))?;
            fdt.property_string("compatible", "arm,gic-v3")?;
            let gicr_base = gicr.first().map_or(gicd.end(), |r| r.base);
            let gicr_size = GICR_FRAME_SIZE * u64::from(desc.vcpus);
            fdt.property_array_u32("reg", &cells(&[gicd.base, gicd.size, gicr_base, gicr_size]))?;
            fdt.property_u32("#redistributor-regions", 1)?;
            gic_common(&mut fdt)?;
            fdt.end_node(node)?;
        }
    }

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&uart_name)?;
    fdt.property_string_list(
        "compatible",
        ["arm,pl011", "arm,primecell"].map(Into::into).to_vec(),
    )?;
    fdt.property_array_u32("reg", &cells(&[desc.uart.base, desc.uart.size]))?;
    if let Some(irq) = desc.uart_irq {
        fdt.property_array_u32(
            "interrupts",
            &[GIC_SPI, irq.saturating_sub(32), IRQ_LEVEL_HIGH],
        )?;
    }
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list(
        "clock-names",
        ["uartclk", "apb_pclk"].map(Into::into).to_vec(),
    )?;
    fdt.end_node(uart)?;

    if let Some(pci) = desc.pci {
        pci_node(&mut fdt, pci)?;
    }

    fdt.end_node(root)?;
    fdt.finish()
}

fn pci_node(fdt: &mut FdtWriter, pci: &GuestPci) -> Result<(), FdtError> {
    let node = fdt.begin_node(&format!("pcie@{:x}", pci.ecam.base))?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("#interrupt-cells", 1)?;
    fdt.property_array_u32("reg", &cells(&[pci.ecam.base, pci.ecam.size]))?;
    fdt.property_array_u32(
        "bus-range",
        &[u32::from(pci.bus_start), u32::from(pci.bus_end)],
    )?;
    fdt.property_u32("linux,pci-domain", 0)?;
    fdt.property_null("dma-coherent")?;
    let mut ranges = Vec::new();
    for (space, w) in [(PCI_SPACE_MEM32, pci.mem32), (PCI_SPACE_MEM64, pci.mem64)] {
        if w.size == 0 {
            continue;
        }
        // PCI address (3 cells), CPU address (2), size (2): identity.
        ranges.extend_from_slice(&[space, (w.base >> 32) as u32, w.base as u32]);
        ranges.extend_from_slice(&cells(&[w.base, w.size]));
    }
    fdt.property_array_u32("ranges", &ranges)?;
    fdt.property_array_u32(
        "interrupt-map-mask",
        &[pci.intx_mask.0, 0, 0, pci.intx_mask.1],
    )?;
    let mut map = Vec::new();
    for &(hi, pin, intid) in &pci.intx {
        map.extend_from_slice(&[hi, 0, 0, u32::from(pin), GIC_PHANDLE]);
        map.extend_from_slice(&[GIC_SPI, intid.saturating_sub(32), IRQ_LEVEL_HIGH]);
    }
    if !map.is_empty() {
        fdt.property_array_u32("interrupt-map", &map)?;
    }
    fdt.end_node(node)
}

fn gic_common(fdt: &mut FdtWriter) -> Result<(), FdtError> {
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_u32("#address-cells", 0)?;
    fdt.property_phandle(GIC_PHANDLE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn timer() -> Timer {
        Timer {
            secure_phys: Some(29),
            nonsecure_phys: 30,
            virt: 27,
            hyp_phys: Some(26),
            hyp_virt: Some(28),
            frequency: None,
        }
    }

    fn parse(blob: &[u8]) -> fdt::Fdt<'_> {
        fdt::Fdt::new(blob).expect("the writer produced a valid FDT")
    }

    #[test]
    fn guest_tree_describes_what_the_vm_has() {
        let gic = Gic::V3 {
            compatible: String::from("arm,gic-v3"),
            gicd: Region::new(0x800_0000, 0x1_0000),
            gicr: alloc::vec![Region::new(0x80a_0000, 0xf6_0000)],
            gicc: None,
            gich: None,
            gicv: None,
            maintenance_irq: Some(25),
            its: Vec::new(),
        };
        let desc = GuestDescription {
            memory: Region::new(0x4800_0000, 0x400_0000),
            vcpus: 2,
            bootargs: "test=hello",
            initrd: Some(Region::new(0x4b00_0000, 0x12_3456)),
            gic: &gic,
            timer: &timer(),
            uart: Region::new(0x900_0000, 0x1000),
            uart_irq: Some(33),
            pci: None,
        };
        let blob = build(&desc).unwrap();
        let tree = parse(&blob);
        assert_eq!(tree.chosen().bootargs(), Some("test=hello"));
        let chosen = tree.find_node("/chosen").unwrap();
        let u64_prop = |name| {
            let v = chosen.property(name).unwrap().value;
            u64::from_be_bytes(v.try_into().unwrap())
        };
        assert_eq!(u64_prop("linux,initrd-start"), 0x4b00_0000);
        assert_eq!(u64_prop("linux,initrd-end"), 0x4b12_3456);
        let mem: Vec<_> = tree.memory().regions().collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].starting_address as u64, 0x4800_0000);
        assert_eq!(mem[0].size, Some(0x400_0000));
        assert_eq!(tree.cpus().count(), 2);
        let psci = tree.find_node("/psci").unwrap();
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
        let gic = tree.find_compatible(&["arm,gic-v3"]).unwrap();
        let regs: Vec<_> = gic.reg().unwrap().collect();
        assert_eq!(regs[1].starting_address as u64, 0x80a_0000);
        assert_eq!(
            regs[1].size,
            Some(2 * 0x2_0000),
            "one redistributor per vCPU"
        );
        let uart = tree.find_compatible(&["arm,pl011"]).unwrap();
        assert_eq!(
            uart.reg().unwrap().next().unwrap().starting_address as u64,
            0x900_0000
        );
        assert_eq!(tree.chosen().stdout().unwrap().name, "pl011@9000000");
    }

    #[test]
    fn gicv2_ppis_carry_the_cpu_mask() {
        let gic = Gic::V2 {
            compatible: String::from("arm,cortex-a15-gic"),
            gicd: Region::new(0x800_0000, 0x1_0000),
            gicc: Region::new(0x801_0000, 0x1_0000),
            gich: Some(Region::new(0x803_0000, 0x1_0000)),
            gicv: Some(Region::new(0x804_0000, 0x1_0000)),
            maintenance_irq: Some(25),
            v2m: Vec::new(),
        };
        let desc = GuestDescription {
            memory: Region::new(0x4800_0000, 0x200_0000),
            vcpus: 1,
            bootargs: "",
            initrd: None,
            gic: &gic,
            timer: &timer(),
            uart: Region::new(0x900_0000, 0x1000),
            uart_irq: None,
            pci: Some(&GuestPci {
                ecam: Region::new(0x40_1000_0000, 16 << 20),
                bus_start: 0,
                bus_end: 15,
                mem32: Region::new(0x1000_0000, 0x2eff_0000),
                mem64: Region::new(0x80_0000_0000, 0x80_0000_0000),
                intx_mask: (0xffff00, 7),
                intx: alloc::vec![
                    (pci_child_hi(1, 0, 0), 1, 35),
                    (pci_child_hi(2, 0, 0), 1, 36)
                ],
            }),
        };
        let blob = build(&desc).unwrap();
        let tree = parse(&blob);
        let timer = tree.find_node("/timer").unwrap();
        let irqs: Vec<u32> = timer
            .property("interrupts")
            .unwrap()
            .value
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            irqs[6..9],
            [GIC_PPI, 11, 0x104],
            "virtual timer PPI 11, cpu mask 1"
        );
        assert!(tree.find_compatible(&["arm,cortex-a15-gic"]).is_some());
        let pci = tree.find_compatible(&["pci-host-ecam-generic"]).unwrap();
        let words = |name: &str| -> Vec<u32> {
            pci.property(name)
                .unwrap()
                .value
                .chunks(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        assert_eq!(words("bus-range"), [0, 15]);
        assert_eq!(words("reg"), [0x40, 0x1000_0000, 0, 16 << 20]);
        assert_eq!(
            words("ranges"),
            [
                0x0200_0000,
                0,
                0x1000_0000,
                0,
                0x1000_0000,
                0,
                0x2eff_0000,
                0x0300_0000,
                0x80,
                0,
                0x80,
                0,
                0x80,
                0
            ]
        );
        let map = words("interrupt-map");
        assert_eq!(map.len(), 16, "two entries of 8 cells");
        assert_eq!(
            map[..8],
            [0x1_0000, 0, 0, 1, GIC_PHANDLE, GIC_SPI, 3, IRQ_LEVEL_HIGH]
        );
        assert_eq!(
            map[8..],
            [0x2_0000, 0, 0, 1, GIC_PHANDLE, GIC_SPI, 4, IRQ_LEVEL_HIGH]
        );
    }
}
