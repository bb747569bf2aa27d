//! phv: a Type-1 hypervisor for ARM64 whose reason to exist is safe,
//! recoverable PCIe passthrough.
//!
//! Boot: `arch::aarch64::head` relocates the image and turns on a bootstrap
//! MMU, then [`primary_main`] discovers the platform from the DTB, builds
//! the real EL2 tables, creates the VMs described under `/chosen`, starts the
//! other CPUs and enters the hardware domain.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
// On the host only the pure modules are built, for their tests.
#![cfg_attr(not(target_os = "none"), allow(dead_code))]

extern crate alloc;

// Hardware-facing modules exist only on the target; the pure ones below
// are host-tested.
mod aer;
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod console;
mod console_ring;
#[cfg(target_os = "none")]
mod drivers;
mod guest_fdt;
#[cfg(target_os = "none")]
mod heap;
mod intx;
#[cfg(target_os = "none")]
mod irq;
mod log_limit;
mod memory;
mod mmio;
mod msix;
mod pci_calls;
mod pci_host;
mod pci_report;
mod resets;
mod smccc;
mod sysreg;
mod vgic;
#[cfg(target_os = "none")]
mod vm;
mod vuart;

#[cfg(target_os = "none")]
mod boot {
    use crate::arch::aarch64::{cpu, firmware, head, mmu, trap};
    use crate::memory::FreeMemory;
    use crate::vm::{self, System};
    use crate::{console, heap, pci_host};
    use alloc::vec::Vec;
    use platform::{Gic, Platform, Region};

    /// Largest boot DTB we accept.
    const DTB_MAX: usize = 2 << 20;
    const FDT_MAGIC: u32 = 0xd00d_feed;

    fn park() -> ! {
        console::flush();
        loop {
            cpu::wait_for_event();
        }
    }

    /// The boot DTB as a slice, if the header is sane.
    fn dtb_slice(dtb: usize) -> Option<&'static [u8]> {
        if dtb == 0 || !dtb.is_multiple_of(8) {
            return None;
        }
        // SAFETY: the bootstrap map covers the DTB's GiB as Normal memory;
        // the header is 8 bytes we only read.
        let (magic, size) = unsafe {
            let p = dtb as *const u32;
            (
                u32::from_be(p.read_volatile()),
                u32::from_be(p.add(1).read_volatile()) as usize,
            )
        };
        if magic != FDT_MAGIC || !(40..=DTB_MAX).contains(&size) {
            return None;
        }
        // SAFETY: `size` bytes from the header, bounded above; the loader
        // placed the blob in RAM and nothing writes it.
        Some(unsafe { core::slice::from_raw_parts(dtb as *const u8, size) })
    }

    fn el2_map(platform: &Platform, dtb: Region) -> Result<(), mmu::MapError> {
        let mut map = mmu::El2Map::new();
        for r in &platform.memory {
            map.map_normal(*r)?;
        }
        // The DTB and the image may lie outside /memory on odd boards.
        let (start, end) = head::image_range();
        map.map_normal(Region::new(start, end - start))?;
        map.map_normal(dtb)?;
        if let Some(uart) = &platform.uart {
            map.map_device(uart.region)?;
        }
        let gic_frames: Vec<Region> = match &platform.gic {
            Gic::V2 {
                gicd,
                gicc,
                gich,
                gicv,
                ..
            } => [Some(*gicd), Some(*gicc), *gich, *gicv]
                .into_iter()
                .flatten()
                .collect(),
            Gic::V3 {
                gicd,
                gicr,
                gicc,
                gich,
                gicv,
                ..
            } => [Some(*gicd), *gicc, *gich, *gicv]
                .into_iter()
                .flatten()
                .chain(gicr.iter().copied())
                .collect(),
        };
        for r in gic_frames {
            map.map_device(r)?;
        }
        for bridge in &platform.pci_host_bridges {
            map.map_device(bridge.config)?;
            // BAR memory: the hypervisor serves guests' trapped MSI-X pages.
            for w in bridge
                .windows
                .iter()
                .filter(|w| w.kind != platform::PciWindowKind::Io)
            {
                map.map_device(Region::new(w.cpu_base, w.size))?;
            }
        }
        map.activate();
        // The tables live as long as the hypervisor.
        core::mem::forget(map);
        Ok(())
    }

    fn report(sys: &System, image: (u64, u64), free: &FreeMemory) {
        let p = &sys.platform;
        log::info!("passthrough hypervisor {}", env!("CARGO_PKG_VERSION"));
        log::info!("platform: {}", p.model);
        for r in &p.memory {
            log::info!(
                "memory {:#x}..{:#x} ({} MiB)",
                r.base,
                r.end(),
                r.size >> 20
            );
        }
        for r in &p.reserved {
            log::info!("reserved {:#x}..{:#x}", r.base, r.end());
        }
        log::info!(
            "image {:#x}..{:#x} ({} KiB with bss)",
            image.0,
            image.1,
            (image.1 - image.0) >> 10
        );
        let mpidrs: Vec<u64> = p.cpus.iter().map(|c| c.mpidr).collect();
        log::info!(
            "{} CPUs, MPIDRs {:x?}, boot CPU {}",
            p.cpus.len(),
            mpidrs,
            sys.boot_cpu
        );
        match &p.gic {
            Gic::V2 {
                gicd,
                gicc,
                gich,
                gicv,
                maintenance_irq,
                ..
            } => log::info!(
                "GICv2 GICD {:#x} GICC {:#x} GICH {:x?} GICV {:x?} maintenance {:?}",
                gicd.base,
                gicc.base,
                gich.map(|r| r.base),
                gicv.map(|r| r.base),
                maintenance_irq
            ),
            Gic::V3 {
                gicd,
                gicr,
                its,
                maintenance_irq,
                ..
            } => log::info!(
                "GICv3 GICD {:#x} GICR {:x?} ITS {:x?} maintenance {:?}",
                gicd.base,
                gicr.iter().map(|r| r.base).collect::<Vec<_>>(),
                its.iter().map(|r| r.base).collect::<Vec<_>>(),
                maintenance_irq
            ),
        }
        if let Some(u) = &p.uart {
            log::info!(
                "UART {} at {:#x} irq {:?}",
                u.compatible,
                u.region.base,
                u.irq
            );
        }
        let t = &p.timer;
        log::info!(
            "timer INTIDs phys {} virt {} hyp {:?}, counter {} Hz",
            t.nonsecure_phys,
            t.virt,
            t.hyp_phys,
            cpu::counter_frequency()
        );
        if let Some(psci) = &p.psci {
            log::info!("PSCI {} via {:?}", psci.compatible, psci.conduit);
        }
        for b in &p.pci_host_bridges {
            log::info!(
                "PCIe {:04x} {} {:?} config {:#x} (+{:#x}) buses {}..={} windows {} INTx routes {}",
                b.segment,
                b.compatible,
                b.access,
                b.config.base,
                b.config.size,
                b.bus_start,
                b.bus_end,
                b.windows.len(),
                b.intx_map.len()
            );
            for w in &b.windows {
                log::info!(
                    "  {:?}{} cpu {:#x} pci {:#x} size {:#x}",
                    w.kind,
                    if w.prefetchable { " prefetchable" } else { "" },
                    w.cpu_base,
                    w.pci_base,
                    w.size
                );
            }
        }
        for r in &p.refused_host_bridges {
            log::warn!(
                "PCIe host bridge {} refused (not mapped, given to no VM): {}",
                r.path,
                r.reason
            );
        }
        for vm in &sys.vms {
            log::info!(
                "VM {}{}: RAM {:#x}..{:#x} ({} MiB), vCPUs on CPUs {:?}",
                vm.name,
                if vm.hardware_domain {
                    " (hardware domain)"
                } else {
                    ""
                },
                vm.ram.base,
                vm.ram.end(),
                vm.ram.size >> 20,
                vm.vcpus.iter().map(|v| v.pcpu).collect::<Vec<_>>()
            );
        }
        let (used, total) = heap::usage();
        log::info!(
            "free memory {} MiB, heap {} KiB of {} KiB used",
            free.total() >> 20,
            used >> 10,
            total >> 10
        );
    }

    #[unsafe(no_mangle)]
    extern "C" fn primary_main(dtb: usize, _load_addr: usize) -> ! {
        cpu::set_cpu_index(0);
        trap::install_vectors();
        heap::init();
        // Without a readable DTB there is no console to complain on.
        let Some(blob) = dtb_slice(dtb) else { park() };
        let platform = match Platform::from_fdt(blob) {
            Ok(p) => p,
            Err(_) => park(),
        };
        match &platform.uart {
            // SAFETY: the bootstrap map covers all devices as Device memory;
            // the hypervisor owns the console UART.
            Some(u) if u.compatible.contains("pl011") => unsafe {
                console::init(u.region.base as usize)
            },
            _ => park(),
        }
        let dtb_region = Region::new(dtb as u64, blob.len() as u64);
        if let Err(e) = el2_map(&platform, dtb_region) {
            log::error!("cannot build EL2 tables: {e:?}");
            park();
        }

        if let Err(e) = crate::irq::init(&platform) {
            log::error!("cannot use the GIC: {e:?}");
            park();
        }

        let me = cpu::mpidr();
        let Some(boot_cpu) = platform.cpus.iter().position(|c| c.mpidr == me) else {
            log::error!("boot CPU MPIDR {me:#x} is not in the DTB");
            park();
        };
        // The boot CPU is logical CPU `boot_cpu` from now on.
        cpu::set_cpu_index(boot_cpu);

        let image = head::image_range();
        let mut reserved = platform.reserved.clone();
        reserved.push(Region::new(image.0, image.1 - image.0));
        reserved.push(dtb_region);
        reserved.extend(platform.vms.iter().map(|v| v.kernel));
        reserved.extend(platform.vms.iter().filter_map(|v| v.ramdisk));
        let mut free = FreeMemory::new(&platform.memory, &reserved);

        if platform.vms.is_empty() {
            log::error!("no VMs under /chosen: nothing to run");
            park();
        }
        let ecam = pci_host::EcamPort::from_platform(&platform);
        let (vms, pins) = match vm::create_vms(&platform, &mut free, boot_cpu, ecam.regions()) {
            Ok(v) => v,
            Err((name, e)) => {
                log::error!("cannot create VM {name}: {e}");
                park();
            }
        };
        let mut pci = pci_host::PciState::new(ecam.windows(), ecam);
        if let Some(b) = platform
            .pci_host_bridges
            .iter()
            .find(|b| b.access == platform::ConfigAccess::Ecam)
        {
            pci.intx_routes = pci_host::IntxRoutes {
                mask: b.intx_mask,
                map: b
                    .intx_map
                    .iter()
                    .map(|r| (r.child_addr_hi, r.pin, r.intid))
                    .collect(),
            };
        }
        vm::register_pci_guests(&mut pci, &platform, &vms, cpu::counter_frequency());
        vm::PCI.call_once(|| spin::Mutex::new(pci));
        crate::irq::set_eoi_hook(vm::intx_eoi);
        let sys = vm::SYSTEM.call_once(|| System {
            platform,
            vms,
            pins,
            boot_cpu,
        });
        report(sys, image, &free);
        match cpu::El1Context::self_test() {
            Ok(()) => {
                log::info!("vCPU context save/restore checked: EL1 system registers and FP/SIMD")
            }
            Err(i) => {
                log::error!("vCPU context save/restore broken at register {i}");
                park();
            }
        }

        cpu::init_el2(mmu::vtcr());
        if let Err(e) = crate::irq::init_cpu(boot_cpu) {
            log::error!("GIC setup of CPU {boot_cpu} failed: {e:?}");
            park();
        }
        let conduit = sys.platform.psci.as_ref().map(|p| p.conduit);
        for (index, pin) in sys.pins.iter().enumerate() {
            if pin.is_none() || index == boot_cpu {
                continue;
            }
            let Some(conduit) = conduit else {
                log::error!("no PSCI to start CPU {index}");
                park();
            };
            let entry = head::secondary_entry as *const () as u64;
            if let Err(e) =
                firmware::cpu_on(conduit, sys.platform.cpus[index].mpidr, entry, index as u64)
            {
                log::error!("starting CPU {index} failed: {e:?}");
            }
        }
        console::flush();
        vm::start_pcpu(boot_cpu)
    }

    #[unsafe(no_mangle)]
    extern "C" fn secondary_main(cpu_index: usize) -> ! {
        cpu::set_cpu_index(cpu_index);
        trap::install_vectors();
        cpu::init_el2(mmu::vtcr());
        if let Err(e) = crate::irq::init_cpu(cpu_index) {
            log::error!("GIC setup of CPU {cpu_index} failed: {e:?}");
            park();
        }
        vm::start_pcpu(cpu_index)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor runs at EL2 on aarch64: build it with `cargo xtask build`");
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::print_on_bug(format_args!("phv: PANIC: {info}\n"));
    vm::stop_on_bug()
}
