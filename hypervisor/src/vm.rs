//! VMs and vCPUs: creation from the boot configuration, the per-CPU run
//! loop, and the handling of every trap from EL1.

use crate::arch::aarch64::cpu::{self, El1Context, Injected};
use crate::arch::aarch64::firmware;
use crate::arch::aarch64::head::{CPU_STACKS, MAX_CPUS, STACK_SIZE};
use crate::arch::aarch64::mmu::{self, Stage2Map};
use crate::arch::aarch64::trap::{TRAP_FRAME_SIZE, TrapFrame, enter_guest};
use crate::console;
use crate::guest_fdt::{self, GuestDescription, GuestPci};
use crate::log_limit::{RateLimit, Verdict};
use crate::memory::{FreeMemory, MemoryError};
use crate::mmio::{MmioAccess, MmioDevice, MmioMap, MmioRegion, esr, fault_ipa};
use crate::pci_calls::GuestStart;
use crate::pci_host::{self, PciState};
use crate::smccc::{
    self, CallError, CpuOnError, CpuSpeculation, HypercallHost, HypervisorBug, Outcome, PciCall,
    VcpuPower, VmState,
};
use crate::vuart::VirtualUart;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use pci::ConfigPort;
use platform::{ExitMethod, Platform, Region, VmConfig};
use spin::{Mutex, Once};

const MIB: u64 = 1 << 20;
/// The kernel goes 2 MiB into the VM's RAM; the VM's DTB at the start.
const KERNEL_OFFSET: u64 = 2 * MIB;
/// Size of the emulated UART window.
const UART_WINDOW: u64 = 0x1000;

/// One vCPU, pinned to a physical CPU.
#[derive(Debug)]
pub struct Vcpu {
    pub pcpu: usize,
    power: AtomicU8,
    /// Entry point and x0 for the next power-on.
    boot: Mutex<(u64, u64)>,
}

impl Vcpu {
    fn power(&self) -> VcpuPower {
        match self.power.load(Ordering::Acquire) {
            0 => VcpuPower::On,
            2 => VcpuPower::OnPending,
            _ => VcpuPower::Off,
        }
    }
    fn set_power(&self, p: VcpuPower) {
        self.power.store(p as u8, Ordering::Release);
    }
}

#[derive(Debug)]
pub struct Vm {
    /// Index in the system's VM table (the owner id `pci` knows it by).
    pub index: u16,
    pub name: String,
    /// "[name] ", printed before each console line (built at boot so the
    /// trap path formats nothing).
    prefix: Vec<u8>,
    pub hardware_domain: bool,
    pub ram: Region,
    /// Where the loader left the kernel image (kept for restarts).
    image: Region,
    entry: u64,
    /// The loader's ramdisk module and where it goes in the VM's RAM.
    ramdisk: Option<(Region, Region)>,
    /// The device tree the VM boots with (rebuilt when its PCI functions
    /// are assigned).
    dtb: Mutex<Vec<u8>>,
    bootargs: String,
    /// The virtual PCIe host bridge of a guest given PCI functions.
    pub guest_pci: Option<GuestPci>,
    vttbr: u64,
    /// Stage-2 tables, changed at run time when passed-through BARs move.
    pub stage2: Mutex<Stage2Map>,
    pub mmio: MmioMap,
    uart: Mutex<VirtualUart>,
    /// The VM's virtual GIC (distributor, banked interrupts, ready sets).
    pub vgic: Mutex<crate::vgic::VGic>,
    pub vcpus: Vec<Vcpu>,
    stopped: AtomicBool,
    /// The limit on the log lines this VM can cause (see
    /// `crate::log_limit`): a guest that faults or calls in a loop must not
    /// flood the console and slow everyone else down.
    log_limit: Mutex<RateLimit>,
}

/// Bus numbers of a guest's virtual ECAM (one root port per unit below).
const GUEST_PCI_BUSES: u8 = 16;
/// How long a guest waits for the hardware domain to report its functions.
const PCI_REPORT_TIMEOUT_MS: u64 = 10_000;

/// Everything the hypervisor runs with, fixed after boot.
#[derive(Debug)]
pub struct System {
    pub platform: Platform,
    pub vms: Vec<Vm>,
    /// For each physical CPU (index into `platform.cpus`): the vCPU pinned to
    /// it as (VM index, vCPU index).
    pub pins: Pins,
    pub boot_cpu: usize,
}

pub static SYSTEM: Once<System> = Once::new();
/// PCI state: one lock, held for one config access or one call.
pub static PCI: Once<Mutex<PciState>> = Once::new();
/// A VM reported a failure (TEST_FAIL) or had to be stopped.
static FAILED: AtomicBool = AtomicBool::new(false);

/// Physical CPU -> (VM index, vCPU index) pinned to it.
pub type Pins = Vec<Option<(usize, usize)>>;

/// Why a VM could not be built.
#[derive(Debug)]
pub enum VmError {
    Memory(MemoryError),
    /// The kernel image does not fit the VM's RAM.
    ImageTooLarge {
        image: u64,
        room: u64,
    },
    /// The ramdisk does not fit the VM's RAM above the kernel.
    RamdiskTooLarge {
        ramdisk: u64,
        room: u64,
    },
    Fdt(vm_fdt::Error),
    DtbTooLarge(usize),
    Stage2(mmu::MapError),
    /// More vCPUs than free physical CPUs.
    NotEnoughCpus {
        wanted: usize,
        free: usize,
    },
    NoUart,
    /// The virtual GIC's MMIO regions do not fit the VM's map.
    Gic,
    /// More emulated MMIO regions than a VM can have.
    TooManyRegions,
    /// PCI functions are configured but the platform has no ECAM host bridge.
    NoPciHostBridge,
    /// Its virtual PCI bus cannot be built.
    Vpci(pci::vpci::VpciError),
    /// A BAR of a function it is given is misplaced.
    Placement(pci::vpci::PlacementError),
}

impl core::fmt::Display for VmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Memory(MemoryError::Exhausted { size }) => {
                write!(f, "no free memory for {} MiB of RAM", size >> 20)
            }
            Self::Memory(MemoryError::NotFree { base, size }) => {
                write!(f, "memory {base:#x}+{size:#x} is not free RAM")
            }
            Self::ImageTooLarge { image, room } => {
                write!(
                    f,
                    "kernel image needs {image:#x} bytes, RAM has {room:#x} after the load address"
                )
            }
            Self::RamdiskTooLarge { ramdisk, room } => write!(
                f,
                "ramdisk needs {ramdisk:#x} bytes, RAM has {room:#x} above the kernel"
            ),
            Self::Fdt(e) => write!(f, "cannot build its device tree: {e:?}"),
            Self::DtbTooLarge(n) => write!(f, "its device tree is too large ({n} bytes)"),
            Self::Stage2(e) => write!(f, "cannot build stage-2 tables: {:?}", e.0),
            Self::NotEnoughCpus { wanted, free } => {
                write!(f, "needs {wanted} physical CPUs, the platform has {free}")
            }
            Self::NoUart => write!(f, "the platform has no console UART to emulate"),
            Self::Gic => write!(f, "cannot place its virtual GIC"),
            Self::TooManyRegions => write!(f, "too many emulated MMIO regions"),
            Self::Vpci(e) => write!(f, "cannot build its virtual PCI bus: {e:?}"),
            Self::Placement(e) => write!(
                f,
                "the hardware domain placed a BAR where no guest may have it: {e:?}"
            ),
            Self::NoPciHostBridge => {
                write!(
                    f,
                    "is given PCI functions but the platform has no ECAM host bridge"
                )
            }
        }
    }
}

/// Where an arm64 Image wants to be placed: (text_offset, image_size), or
/// None for a raw binary.
fn image_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if bytes.get(0x38..0x3c)? != b"ARM\x64" {
        return None;
    }
    Some((word(0x08)?, word(0x10)?))
}

/// Where a ramdisk of `source`'s size goes in `ram`: at the top, page
/// aligned, above `kernel_end` (the end of the kernel image with its BSS).
/// Returns the module and its place.
fn place_ramdisk(
    ram: Region,
    kernel_end: u64,
    source: Region,
) -> Result<(Region, Region), VmError> {
    const PAGE: u64 = 0x1000;
    let room = ram.end().saturating_sub(kernel_end);
    let base = ram
        .end()
        .checked_sub(source.size)
        .map(|b| b & !(PAGE - 1))
        .filter(|&b| b >= kernel_end)
        .ok_or(VmError::RamdiskTooLarge {
            ramdisk: source.size,
            room,
        })?;
    Ok((source, Region::new(base, source.size)))
}

impl Vm {
    /// Build a VM: RAM, stage 2, kernel copied in, device tree written.
    fn new(
        index: usize,
        config: &VmConfig,
        platform: &Platform,
        free: &mut FreeMemory,
        pcpus: Vec<usize>,
        ecam: &[pci_host::EcamRegion],
    ) -> Result<Vm, VmError> {
        let ram = match config.memory_base {
            Some(base) => free.claim(base, config.memory_size),
            None => free.allocate(config.memory_size, 2 * MIB),
        }
        .map_err(VmError::Memory)?;

        // SAFETY: the module region is RAM the loader filled, identity
        // mapped, reserved from allocation; nothing writes it.
        let image = unsafe {
            core::slice::from_raw_parts(
                config.kernel.base as *const u8,
                config.kernel.size as usize,
            )
        };
        let (text_offset, image_size) = image_header(image).unwrap_or((0, 0));
        let load = ram.base + KERNEL_OFFSET + text_offset;
        let need = image_size.max(config.kernel.size);
        let room = ram.end().saturating_sub(load);
        if need > room {
            return Err(VmError::ImageTooLarge { image: need, room });
        }
        let ramdisk = config
            .ramdisk
            .map(|source| place_ramdisk(ram, load + need, source))
            .transpose()?;

        let uart = platform.uart.as_ref().ok_or(VmError::NoUart)?;
        let uart_window = Region::new(uart.region.base, UART_WINDOW);
        // The hardware domain enumerates the platform's (first) ECAM host
        // bridge itself, at its physical addresses.
        let host_pci = if config.hardware_domain {
            platform
                .pci_host_bridges
                .iter()
                .find(|b| b.access == platform::ConfigAccess::Ecam)
                .map(hwdom_pci)
        } else {
            None
        };
        // A guest given functions sees a virtual host bridge at the physical
        // bridge's addresses (which cannot collide with RAM).
        let guest_pci = if config.pci_devices.is_empty() || config.hardware_domain {
            None
        } else {
            let bridge = platform
                .pci_host_bridges
                .iter()
                .find(|b| b.access == platform::ConfigAccess::Ecam)
                .ok_or(VmError::NoPciHostBridge)?;
            let mut virtual_bridge = hwdom_pci(bridge);
            virtual_bridge.ecam.size = u64::from(GUEST_PCI_BUSES) << 20;
            virtual_bridge.bus_start = 0;
            virtual_bridge.bus_end = GUEST_PCI_BUSES - 1;
            virtual_bridge.intx_mask = (0x00ff_ff00, 7);
            virtual_bridge.intx.clear();
            Some(virtual_bridge)
        };
        let dtb = guest_fdt::build(&GuestDescription {
            memory: ram,
            vcpus: config.cpus,
            bootargs: &config.bootargs,
            initrd: ramdisk.map(|(_, at)| at),
            gic: &platform.gic,
            timer: &platform.timer,
            uart: uart_window,
            uart_irq: uart.irq,
            pci: host_pci.as_ref(),
        })
        .map_err(VmError::Fdt)?;
        if dtb.len() as u64 > KERNEL_OFFSET {
            return Err(VmError::DtbTooLarge(dtb.len()));
        }

        let mut stage2 = Stage2Map::new(index as u16 + 1);
        stage2.map_ram(ram).map_err(VmError::Stage2)?;
        let mut mmio = MmioMap::default();
        mmio.add(MmioRegion {
            base: uart_window.base,
            size: uart_window.size,
            device: MmioDevice::Uart,
        })
        .map_err(|_| VmError::NoUart)?;
        let gic = crate::irq::vm_gic(platform, config.cpus as usize);
        for region in gic.regions.into_iter().flatten() {
            mmio.add(region).map_err(|_| VmError::Gic)?;
        }
        if let Some((ipa, pa, size)) = gic.direct {
            stage2.map_device(ipa, pa, size).map_err(VmError::Stage2)?;
        }
        if config.hardware_domain {
            // The hardware domain sees the ECAM windows where they are, but
            // every access traps: nothing of config space is mapped.
            for (i, r) in ecam.iter().enumerate() {
                mmio.add(MmioRegion {
                    base: r.base,
                    size: r.window.size(),
                    device: MmioDevice::HostEcam(i as u8),
                })
                .map_err(|_| VmError::TooManyRegions)?;
            }
            if let Some(pci) = &host_pci {
                for window in [pci.mem32, pci.mem64].into_iter().filter(|w| w.size > 0) {
                    mmio.add(MmioRegion {
                        base: window.base,
                        size: window.size,
                        device: MmioDevice::HwdomPciWindow,
                    })
                    .map_err(|_| VmError::TooManyRegions)?;
                }
            }
        }
        if let Some(pci) = &guest_pci {
            mmio.add(MmioRegion {
                base: pci.ecam.base,
                size: pci.ecam.size,
                device: MmioDevice::VirtualEcam,
            })
            .map_err(|_| VmError::TooManyRegions)?;
            for window in [pci.mem32, pci.mem64].into_iter().filter(|w| w.size > 0) {
                mmio.add(MmioRegion {
                    base: window.base,
                    size: window.size,
                    device: MmioDevice::GuestPciWindow,
                })
                .map_err(|_| VmError::TooManyRegions)?;
            }
        }

        let mut prefix = Vec::with_capacity(config.name.len() + 3);
        prefix.push(b'[');
        prefix.extend_from_slice(config.name.as_bytes());
        prefix.extend_from_slice(b"] ");
        // Config space first, then the GIC: the lookup is linear.
        mmio.order_by(|d| match d {
            MmioDevice::HostEcam(_) | MmioDevice::VirtualEcam => 0,
            MmioDevice::Gicd | MmioDevice::Gicr => 1,
            MmioDevice::Uart => 2,
            MmioDevice::HwdomPciWindow | MmioDevice::GuestPciWindow => 3,
        });
        // Only now is the table live (no fallible step may drop it after).
        let vttbr = stage2.vttbr();
        let vm = Vm {
            index: index as u16,
            name: config.name.clone(),
            prefix,
            hardware_domain: config.hardware_domain,
            ram,
            image: config.kernel,
            entry: load,
            ramdisk,
            dtb: Mutex::new(dtb),
            bootargs: config.bootargs.clone(),
            guest_pci,
            vttbr,
            stage2: Mutex::new(stage2),
            mmio,
            uart: Mutex::new(VirtualUart::default()),
            vgic: Mutex::new(gic.state),
            vcpus: pcpus
                .into_iter()
                .map(|pcpu| Vcpu {
                    pcpu,
                    power: AtomicU8::new(VcpuPower::Off as u8),
                    boot: Mutex::new((0, 0)),
                })
                .collect(),
            stopped: AtomicBool::new(false),
            log_limit: Mutex::new(RateLimit::default()),
        };
        // A guest given PCI functions starts when they have been reported.
        if vm.guest_pci.is_none() {
            vm.load_images();
        }
        Ok(vm)
    }

    /// Rebuild the device tree with the guest's virtual PCIe host bridge
    /// (now that its functions are known) and start the VM.
    fn start_with_pci(&self, platform: &Platform, pci: &GuestPci) -> Result<(), VmError> {
        let uart = platform.uart.as_ref().ok_or(VmError::NoUart)?;
        let dtb = guest_fdt::build(&GuestDescription {
            memory: self.ram,
            vcpus: self.vcpus.len() as u32,
            bootargs: &self.bootargs,
            initrd: self.ramdisk.map(|(_, at)| at),
            gic: &platform.gic,
            timer: &platform.timer,
            uart: Region::new(uart.region.base, UART_WINDOW),
            uart_irq: uart.irq,
            pci: Some(pci),
        })
        .map_err(VmError::Fdt)?;
        if dtb.len() as u64 > KERNEL_OFFSET {
            return Err(VmError::DtbTooLarge(dtb.len()));
        }
        *self.dtb.lock() = dtb;
        self.load_images();
        Ok(())
    }

    /// Copy the kernel and the device tree into the VM's RAM (again, on a
    /// restart) and make vCPU 0 ready to start at the kernel entry.
    fn load_images(&self) {
        let dtb = self.dtb.lock();
        // SAFETY: `image` is the loader's module (reserved RAM), `entry` and
        // `ram.base` are inside this VM's RAM, which nothing else uses, and
        // `new` checked that both copies fit.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.image.base as *const u8,
                self.entry as *mut u8,
                self.image.size as usize,
            );
            core::ptr::copy_nonoverlapping(dtb.as_ptr(), self.ram.base as *mut u8, dtb.len());
        }
        mmu::clean_dcache_range(self.entry, self.image.size);
        mmu::clean_dcache_range(self.ram.base, dtb.len() as u64);
        if let Some((source, at)) = self.ramdisk {
            // SAFETY: `source` is the loader's module (reserved RAM, never
            // written); `at` is inside this VM's RAM above the kernel
            // (`place_ramdisk`), which nothing else uses.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    source.base as *const u8,
                    at.base as *mut u8,
                    source.size as usize,
                );
            }
            mmu::clean_dcache_range(at.base, at.size);
        }
        drop(dtb);
        if let Some(v0) = self.vcpus.first() {
            *v0.boot.lock() = (self.entry, self.ram.base);
            v0.set_power(VcpuPower::OnPending);
            crate::irq::wake(v0.pcpu);
        }
    }

    /// Whether to log one more line this VM caused (its faults, refused
    /// calls and accesses, its resets): the VM's rate limit, with the count
    /// of the lines it was refused logged before the next one let through.
    pub fn may_log(&self) -> bool {
        let verdict = self
            .log_limit
            .lock()
            .check(cpu::counter(), cpu::counter_frequency());
        match verdict {
            Verdict::Suppress => false,
            Verdict::Log { suppressed } => {
                if suppressed > 0 {
                    log::warn!("{}: {suppressed} lines suppressed", self.name);
                }
                true
            }
        }
    }

    /// Say how many of its lines were suppressed, if any (when it stops,
    /// and at system off).
    fn log_suppressed(&self) {
        let n = self.log_limit.lock().take_suppressed();
        if n > 0 {
            log::warn!("{}: {n} lines suppressed", self.name);
        }
    }

    /// Queue one console line of the VM (escaped, after its prefix) and
    /// send what the UART takes now: callers hold only the VM's own
    /// console buffer lock, never the PCI, vGIC or stage-2 locks.
    fn emit_line(&self, line: &[u8]) {
        console::write_line_and_drain(&self.prefix, line);
    }
}

/// The physical host bridge as the hardware domain's device tree shows it.
fn hwdom_pci(bridge: &platform::PciHostBridge) -> GuestPci {
    let window = |kind| {
        bridge
            .windows
            .iter()
            .find(|w| w.kind == kind && w.cpu_base == w.pci_base)
            .map_or(Region::new(0, 0), |w| Region::new(w.cpu_base, w.size))
    };
    GuestPci {
        ecam: bridge.config,
        bus_start: bridge.bus_start,
        bus_end: bridge.bus_end,
        mem32: window(platform::PciWindowKind::Mem32),
        mem64: window(platform::PciWindowKind::Mem64),
        intx_mask: bridge.intx_mask,
        intx: bridge
            .intx_map
            .iter()
            .map(|r| (r.child_addr_hi, r.pin, r.intid))
            .collect(),
    }
}

/// Build every configured VM and pin its vCPUs: the hardware domain's vCPU 0
/// on the boot CPU, then free CPUs in DTB order.
pub fn create_vms(
    platform: &Platform,
    free: &mut FreeMemory,
    boot_cpu: usize,
    ecam: &[pci_host::EcamRegion],
) -> Result<(Vec<Vm>, Pins), (String, VmError)> {
    let ncpus = platform.cpus.len();
    let mut pins: Pins = alloc::vec![None; ncpus];
    let mut order: Vec<usize> = (0..platform.vms.len()).collect();
    // The hardware domain first, so it gets the boot CPU.
    order.sort_by_key(|&i| !platform.vms[i].hardware_domain);
    let mut next_free = (0..ncpus).filter(|&c| c != boot_cpu);
    let mut vms: Vec<Option<Vm>> = (0..platform.vms.len()).map(|_| None).collect();
    for (rank, &i) in order.iter().enumerate() {
        let config = &platform.vms[i];
        let mut pcpus = Vec::new();
        for v in 0..config.cpus as usize {
            let pcpu = if rank == 0 && v == 0 {
                Some(boot_cpu)
            } else {
                next_free.next()
            };
            match pcpu {
                Some(p) => {
                    pins[p] = Some((i, v));
                    pcpus.push(p);
                }
                None => {
                    let used = pins.iter().flatten().count();
                    return Err((
                        config.name.clone(),
                        VmError::NotEnoughCpus {
                            wanted: used + config.cpus as usize - v,
                            free: ncpus,
                        },
                    ));
                }
            }
        }
        let vm = Vm::new(i, config, platform, free, pcpus, ecam)
            .map_err(|e| (config.name.clone(), e))?;
        vms[i] = Some(vm);
    }
    Ok((vms.into_iter().flatten().collect(), pins))
}

/// The trap frame of physical CPU `cpu`: the top of its stack.
fn frame_of(cpu: usize) -> *mut TrapFrame {
    let stacks = core::ptr::addr_of_mut!(CPU_STACKS) as usize;
    (stacks + (cpu + 1) * STACK_SIZE - TRAP_FRAME_SIZE) as *mut TrapFrame
}

/// Whether VM `vm` may log one more line it caused (`Vm::may_log`).
pub fn domain_may_log(vm: u16) -> bool {
    SYSTEM
        .get()
        .and_then(|s| s.vms.get(usize::from(vm)))
        .is_none_or(Vm::may_log)
}

/// Whether the VM running on this CPU (whose trap this is) may log one
/// more line it caused.
pub fn caller_may_log() -> bool {
    let cpu = cpu::cpu_index();
    let vm = RUNNING_VM
        .get(cpu)
        .map_or(core::ptr::null_mut(), |p| p.load(Ordering::Relaxed));
    // SAFETY: `run_pcpu` stores pointers into `SYSTEM`'s VM table, which is
    // never changed or freed after boot.
    unsafe { vm.as_ref() }.is_none_or(Vm::may_log)
}

/// Whether the hardware domain may log one more line it caused.
pub fn hwdom_may_log() -> bool {
    SYSTEM
        .get()
        .and_then(|s| s.vms.iter().find(|v| v.hardware_domain))
        .is_none_or(Vm::may_log)
}

/// Boot path of physical CPU `cpu`: run its vCPU ([`run_pcpu`]) with the
/// trap frame at the top of its stack.
pub fn start_pcpu(cpu: usize) -> ! {
    // SAFETY: the frame area at the top of this CPU's stack is reserved
    // (the boot code starts the stack pointer below it), only this CPU uses
    // it, and no guest has run here yet, so no other reference to it exists.
    run_pcpu(cpu, unsafe { &mut *frame_of(cpu) })
}

/// Run whatever vCPU is pinned to this CPU, forever: wait until it is
/// powered on, then enter it. Called again (from a trap, with the trap's
/// `frame`: the same top-of-stack area) when the vCPU powers off. The
/// vCPU's initial registers are written through `frame` itself, so no
/// other reference to the frame is live while they are.
fn run_pcpu(cpu: usize, frame: &mut TrapFrame) -> ! {
    debug_assert_eq!(core::ptr::from_mut(frame), frame_of(cpu));
    let sys = system();
    let Some((vm_index, vcpu_index)) = sys.pins.get(cpu).copied().flatten() else {
        loop {
            console::drain();
            crate::irq::idle_wait();
        }
    };
    let vm = &sys.vms[vm_index];
    let vcpu = &vm.vcpus[vcpu_index];
    // A guest waiting for its PCI functions fails here, on its own CPU,
    // when its deadline passes.
    let mut waits_for_pci = vm.guest_pci.is_some() && vcpu_index == 0;
    while vcpu.power() != VcpuPower::OnPending || vm.stopped.load(Ordering::Acquire) {
        if waits_for_pci && let Some(pci) = PCI.get() {
            let mut pci = pci.lock();
            match pci.pending.iter().find(|g| usize::from(g.vm) == vm_index) {
                None => waits_for_pci = false,
                Some(g) if cpu::counter() < g.deadline => {
                    // Wake up for the deadline if nothing else comes first.
                    crate::irq::hyp_timer_arm(cpu, g.deadline, |_| {});
                }
                Some(_) => {
                    crate::pci_calls::expire_guest(&mut pci, vm_index as u16, cpu::counter());
                    FAILED.store(true, Ordering::Release);
                    waits_for_pci = false;
                }
            }
        }
        console::drain();
        crate::irq::idle_wait();
    }
    if let (Some(v), Some(n)) = (RUNNING_VM.get(cpu), RUNNING_VCPU.get(cpu)) {
        v.store(core::ptr::from_ref(vm).cast_mut(), Ordering::Relaxed);
        n.store(vcpu_index, Ordering::Relaxed);
    }
    let (entry, context) = *vcpu.boot.lock();
    vcpu.set_power(VcpuPower::On);
    cpu::load_vm(vm.vttbr, vcpu_index);
    crate::irq::vcpu_start(vm, vcpu_index);
    El1Context::reset().restore();
    *frame = TrapFrame {
        elr: entry,
        spsr: cpu::SPSR_EL1H_MASKED,
        ..TrapFrame::default()
    };
    frame.x[0] = context;
    // Once per boot of the VM, which a guest restarting in a loop repeats.
    if vcpu_index == 0 && vm.may_log() {
        log::info!(
            "entering {} vCPU 0 on CPU {cpu} at {entry:#x}, counter {}",
            vm.name,
            cpu::counter()
        );
    }
    console::drain();
    // SAFETY: the frame holds a complete initial register state, the VM's
    // stage 2 and EL1 state are loaded. `frame` is the top of this CPU's
    // stack: `enter_guest` makes it the stack pointer and never returns,
    // so the Rust frames below (the trap that led here) are abandoned and
    // none of their references is used again.
    unsafe { enter_guest(frame) }
}

pub fn system() -> &'static System {
    match SYSTEM.get() {
        Some(s) => s,
        None => bug("trap before the system was set up"),
    }
}

/// A state the hypervisor never reaches unless it is broken.
fn bug(why: &str) -> ! {
    console::print_on_bug(format_args!("phv: BUG: {why}\n"));
    stop_on_bug()
}

fn halt(why: &str) -> ! {
    console::print(format_args!("phv: halting: {why}\n"));
    loop {
        cpu::wait_for_event();
    }
}

/// The VM and vCPU running on this CPU.
#[inline]
fn current() -> (&'static Vm, usize) {
    let cpu = cpu::cpu_index();
    let vm = RUNNING_VM
        .get(cpu)
        .map_or(core::ptr::null_mut(), |p| p.load(Ordering::Relaxed));
    let vcpu = RUNNING_VCPU
        .get(cpu)
        .map_or(0, |v| v.load(Ordering::Relaxed));
    if vm.is_null() {
        bug("trap on a CPU without a vCPU");
    }
    // SAFETY: `run_pcpu` stores pointers into `SYSTEM`'s VM table, which is
    // never changed or freed after boot.
    (unsafe { &*vm }, vcpu)
}

/// The VM and vCPU each physical CPU runs, set before entering it: read on
/// every trap without going through the system table.
static RUNNING_VM: [AtomicPtr<Vm>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
static RUNNING_VCPU: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// The hypercall view of the calling vCPU's VM.
struct Caller<'a> {
    vm: &'a Vm,
}

impl HypercallHost for Caller<'_> {
    fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize> {
        // Our vCPUs have Aff0 = index and nothing above.
        let index = usize::try_from(mpidr).ok()?;
        (index < self.vm.vcpus.len()).then_some(index)
    }
    fn vcpu_power(&self, vcpu: usize) -> VcpuPower {
        self.vm.vcpus[vcpu].power()
    }
    fn cpu_on(&mut self, vcpu: usize, entry: u64, context_id: u64) -> Result<(), CpuOnError> {
        let target = self.vm.vcpus.get(vcpu).ok_or(CpuOnError::NoSuchCpu)?;
        if !self.vm.ram.contains(entry) || !entry.is_multiple_of(4) {
            return Err(CpuOnError::InvalidAddress);
        }
        let mut boot = target.boot.lock();
        match target.power() {
            VcpuPower::On => Err(CpuOnError::AlreadyOn),
            VcpuPower::OnPending => Err(CpuOnError::OnPending),
            VcpuPower::Off => {
                *boot = (entry, context_id);
                target.set_power(VcpuPower::OnPending);
                crate::irq::wake(target.pcpu);
                Ok(())
            }
        }
    }
    fn console_write(&mut self, bytes: &[u8]) {
        let mut uart = self.vm.uart.lock();
        for &b in bytes {
            uart.write(0, b.into(), &mut |line| self.vm.emit_line(line));
        }
    }
    fn vm_state(&self, index: u64) -> Result<VmState, u64> {
        if !self.vm.hardware_domain {
            return Err(smccc::DENIED);
        }
        let vm = usize::try_from(index)
            .ok()
            .and_then(|i| system().vms.get(i))
            .ok_or(smccc::NOT_FOUND)?;
        let all_off = vm.vcpus.iter().all(|v| v.power() == VcpuPower::Off);
        Ok(if vm.stopped.load(Ordering::Acquire) && all_off {
            VmState::Stopped
        } else if vm.guest_pci.is_some() && all_off {
            VmState::WaitingForPci
        } else {
            VmState::Running
        })
    }
    fn cpu_speculation(&self) -> CpuSpeculation {
        crate::arch::aarch64::sysregs::cpu_speculation()
    }
    fn test_hypervisor_bug(&mut self, bug: HypervisorBug) -> u64 {
        if !system().platform.test_hypervisor_bugs {
            return smccc::NOT_SUPPORTED;
        }
        if !self.vm.hardware_domain {
            return smccc::DENIED;
        }
        match bug {
            HypervisorBug::Fault => cpu::load_unmapped(),
            HypervisorBug::Panic => panic!("provoked by the hardware domain"),
            HypervisorBug::PanicHoldingLocks => {
                let _pci = PCI.get().map(Mutex::lock);
                let _queue = console::hold_queue();
                panic!("provoked by the hardware domain, console and PCI locks held")
            }
        }
    }
    fn test_fail(&mut self, code: u64) {
        FAILED.store(true, Ordering::Release);
        if self.vm.may_log() {
            log::error!("{} reports a failure (code {code})", self.vm.name);
        }
        console::drain();
    }
    fn pci(&mut self, call: PciCall) -> Result<[u64; 3], CallError> {
        let result = self.pci_locked(call);
        // The PCI lock is released: send what the call logged.
        console::drain();
        result
    }
}

impl Caller<'_> {
    fn pci_locked(&mut self, call: PciCall) -> Result<[u64; 3], CallError> {
        let Some(pci) = PCI.get() else {
            return Err(CallError {
                status: smccc::NOT_SUPPORTED,
                reason: 0,
            });
        };
        let who = crate::pci_calls::Caller {
            vm: self.vm.index,
            hwdom: self.vm.hardware_domain,
        };
        let mut to_start = Vec::new();
        let mut pci = pci.lock();
        crate::aer::flush_log(&mut pci);
        if let PciCall::MsixEntry { .. } = call {
            let windows = |pa: u64, len: u64| {
                self.vm.mmio.regions().any(|r| {
                    r.device == MmioDevice::HwdomPciWindow
                        && pa >= r.base
                        && pa.saturating_add(len) <= r.base.saturating_add(r.size)
                })
            };
            let mem = &mut pci_host::BarMemory;
            return crate::msix::inspect(&mut pci, mem, who.hwdom, &self.vm.name, call, windows);
        }
        let result = crate::pci_calls::handle(&mut pci, who, &self.vm.name, call, &mut to_start);
        // A function reported (or removed) on a guest's INTx line.
        if matches!(call, PciCall::Add { .. } | PciCall::Remove { .. }) && !pci.intx.is_empty() {
            pci.refresh_bystanders();
        }
        if let (PciCall::EnumerationDone { segment }, Ok(_)) = (call, result) {
            take_aer(&mut pci, segment);
        }
        // The hardware domain's reset call: one request.
        let request = crate::resets::new_request(&mut pci);
        for action in to_start {
            let then = crate::resets::AfterReset::Nothing;
            let _ = start_one(&mut pci, self.vm, action, then, request);
        }
        start_ready_guests(&mut pci);
        result
    }
}

/// Start the guests whose functions have all been reported (called with the
/// PCI lock held, after each report of the hardware domain).
fn start_ready_guests(pci: &mut PciState) {
    let decisions = crate::pci_calls::ready_guests(pci);
    if decisions.is_empty() {
        return;
    }
    let sys = system();
    for decision in decisions {
        match decision {
            GuestStart::Start { vm, units } => {
                let Some(vm) = sys.vms.get(usize::from(vm)) else {
                    continue;
                };
                let Some(bridge) = &vm.guest_pci else {
                    continue;
                };
                if let Some((b, why)) = pci.quarantine.first_of(&units.concat()) {
                    log::error!("{} cannot be given {b}: quarantined ({why:?})", vm.name);
                    pci.ownership.release(&pci.topology, vm.index);
                    FAILED.store(true, Ordering::Release);
                    continue;
                }
                let config = sys.platform.vms.get(usize::from(vm.index));
                let methods = config.map_or(&[][..], |c| &c.pci_reset_methods[..]);
                if let Err(e) = crate::pci_calls::apply_reset_methods(pci, vm.index, methods) {
                    log::error!("{} cannot start: {e}", vm.name);
                    pci.ownership.release(&pci.topology, vm.index);
                    FAILED.store(true, Ordering::Release);
                    continue;
                }
                match give_pci_bus(pci, sys, vm, bridge, &units) {
                    Ok(bridge) => {
                        // Reset before the change of owner; the guest starts
                        // when the last reset is done.
                        pci.starting.push((vm.index, bridge));
                        let then = crate::resets::AfterReset::Start { vm: vm.index };
                        start_resets(pci, vm, &units.concat(), then);
                        if !pci.resets.iter().any(|r| r.then == then) {
                            finish_guest_start(pci, vm.index);
                        }
                    }
                    Err(e) => {
                        log::error!("{} cannot start: {e}", vm.name);
                        pci.ownership.release(&pci.topology, vm.index);
                        pci.guests.remove(vm.index);
                        FAILED.store(true, Ordering::Release);
                    }
                }
            }
            GuestStart::Fail { .. } => FAILED.store(true, Ordering::Release),
        }
    }
    pci.refresh_bystanders();
}

/// Build the virtual PCI bus of `vm` for its assigned `units`, take their
/// BARs out of the hardware domain's stage 2, and return the virtual host
/// bridge with the INTx routes for its device tree. Runs in a trap of the
/// hardware domain (its stage 2 is the one loaded).
fn give_pci_bus(
    pci: &mut PciState,
    sys: &System,
    vm: &Vm,
    bridge: &GuestPci,
    units: &[Vec<pci::Bdf>],
) -> Result<GuestPci, VmError> {
    let mut forbidden = alloc::vec![(vm.ram.base, vm.ram.size)];
    forbidden.extend(
        vm.mmio
            .regions()
            .filter(|r| {
                !matches!(
                    r.device,
                    MmioDevice::GuestPciWindow | MmioDevice::VirtualEcam
                )
            })
            .map(|r| (r.base, r.size)),
    );
    let layout = pci::vpci::GuestLayout {
        ecam_base: bridge.ecam.base,
        ecam_buses: GUEST_PCI_BUSES,
        mem32: (bridge.mem32.base, bridge.mem32.size),
        mem64: (bridge.mem64.base, bridge.mem64.size),
        forbidden,
    };
    let bus = pci::vpci::GuestBus::new(units, &pci.topology, &mut pci.port, layout)
        .map_err(VmError::Vpci)?;
    // The hardware domain placed these BARs: each must lie in a memory
    // window of the host bridge and over nothing another owner decodes.
    let windows: Vec<(u64, u64)> = sys
        .platform
        .pci_host_bridges
        .iter()
        .flat_map(|b| b.windows.iter())
        .filter(|w| w.kind != platform::PciWindowKind::Io && w.cpu_base == w.pci_base)
        .map(|w| (w.cpu_base, w.size))
        .collect();
    pci::vpci::check_guest_placement(
        &bus,
        vm.index,
        &pci.topology,
        &pci.ownership,
        &mut pci.port,
        &windows,
    )
    .map_err(VmError::Placement)?;
    // The hardware domain loses its first-touch pages of these BARs. Its
    // faults map pages under the PCI lock, which is held here, so none can
    // come back; an unmap that fails stops the handover.
    if let Some(hwdom) = sys.vms.iter().find(|v| v.hardware_domain) {
        let mut stage2 = hwdom.stage2.lock();
        for (pa, size) in bus.physical_bars() {
            let page = pa & !0xfff;
            let len = size.saturating_add(pa & 0xfff).saturating_add(0xfff) & !0xfff;
            stage2.unmap(page, len).map_err(VmError::Stage2)?;
        }
    }
    // INTx: the functions of a unit sit on device 0 below their root port,
    // so a pin reaches the virtual host bridge unswizzled at the root port.
    let host = sys
        .platform
        .pci_host_bridges
        .iter()
        .find(|b| b.access == platform::ConfigAccess::Ecam)
        .map(hwdom_pci);
    let mut routed = bridge.clone();
    for (root_port, _vfn, physical) in bus.describe() {
        let pin = pci.port.read8(physical, 0x3d);
        let intid = host.as_ref().and_then(|h| {
            crate::pci_calls::route_intx(&pci.topology, h.intx_mask, &h.intx, physical, pin)
        });
        if let Some(intid) = intid {
            let hi = guest_fdt::pci_child_hi(0, root_port.device(), 0);
            if !routed.intx.iter().any(|&(h, p, _)| h == hi && p == pin) {
                routed.intx.push((hi, pin, intid));
            }
            pci.intx.push(crate::intx::IntxSource {
                pintid: intid,
                physical,
                vm: vm.index,
                masked: false,
                raised: false,
            });
        }
    }
    // AER: each virtual root port raises its INTA, the same interrupt-map
    // entry as INTA of device 0 below it; where that has none, the line of
    // the physical root port above the unit.
    for unit in 0..bus.units() {
        let rp = pci::vpci::GuestBus::root_port(unit);
        let hi = guest_fdt::pci_child_hi(0, rp.device(), 0);
        let existing = routed
            .intx
            .iter()
            .find(|&&(h, p, _)| h == hi && p == 1)
            .map(|&(_, _, intid)| intid);
        let vintid = existing.or_else(|| {
            let (_, _, physical) = bus.describe().find(|&(r, _, _)| r == rp)?;
            let port = pci::aer::root_port_of(&pci.topology, physical)?;
            let h = host.as_ref()?;
            crate::pci_calls::route_intx(&pci.topology, h.intx_mask, &h.intx, port, 1)
        });
        if let Some(vintid) = vintid {
            if existing.is_none() {
                routed.intx.push((hi, 1, vintid));
            }
            pci.aer.guest_lines.push(crate::aer::GuestLine {
                vm: vm.index,
                unit,
                vintid,
            });
        }
    }
    // No bridge the hardware domain keeps may open a window over these.
    pci.ownership
        .set_guest_memory(vm.index, bus.physical_bars());
    // Errors the hardware domain saw on them stay its own history.
    for &f in units.iter().flatten() {
        if !pci.aer.hwdom.owns_port(f) {
            pci.aer.hwdom.forget(f);
        }
        // A recovery the hwdom owed it ends with the reset before the
        // handover: the hypervisor's deadline reset must not come later,
        // on the guest's device, for the hwdom's error.
        pci.aer.recovery.forget(f);
    }
    pci.guests.insert(vm.index, bus);
    // The functions come from their handover reset with the Command the
    // engine restored (the hardware domain's INTx Disable among it): their
    // INTx starts as the guest's virtual Command says.
    let PciState {
        port, intx, guests, ..
    } = &mut *pci;
    let given: Vec<pci::Bdf> = units.iter().flatten().copied().collect();
    crate::intx::after_reset(intx, port, &given, &|vm, physical| {
        guests.intx_disabled(vm, physical)
    });
    // The lines go to the CPU of the guest's first vCPU.
    let pcpu = vm.vcpus.first().map_or(0, |v| v.pcpu);
    for pintid in crate::intx::lines(&pci.intx) {
        if pci
            .intx
            .iter()
            .any(|s| s.pintid == pintid && s.vm == vm.index)
        {
            crate::irq::register_spi(pintid, pcpu, true, pci_line_interrupt);
        }
    }
    Ok(routed)
}

/// A physical INTx line fired (at EL2): mask the passed-through functions
/// that assert it and raise their owners' virtual lines (not for a function
/// its owner keeps INTx-disabled: it stays masked until the owner clears the
/// bit); if none did, service the AER of the root ports on it (their errors
/// go to their owners' views). The physical interrupt is deactivated at
/// once: the line dropped when its sources were masked or cleared, and a
/// level line still asserted by the other kind of source fires again.
fn pci_line_interrupt(pintid: u32) -> bool {
    let mut raises = crate::aer::Raises::default();
    if let Some(pci) = PCI.get() {
        let mut pci = pci.lock();
        let PciState {
            port,
            intx,
            guests,
            resets,
            ..
        } = &mut *pci;
        let disabled = |vm, physical| guests.intx_disabled(vm, physical);
        let resetting = |physical| crate::resets::masked_by(resets, physical);
        let claimed = crate::intx::demux(intx, port, pintid, &disabled, &resetting, &mut |vm| {
            raises.push((vm, pintid));
        });
        let mut serviced = claimed > 0;
        if claimed == 0
            && pci.aer.ports.iter().any(|p| p.pintid == Some(pintid))
            && crate::aer::service_line(&mut pci, pintid, now_ns(), &mut raises)
        {
            serviced = true;
            if let Some(at) = IRQ_AT.get(cpu::cpu_index()) {
                AER_IRQ_AT.store(at.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            // A fatal error starts a recovery deadline.
            arm_pci_timer(&pci);
        } else if claimed == 0 && !pci.bystanders.is_empty() {
            // Nobody we serve asserts: a hardware-domain function holding
            // the level line would make it fire forever.
            let PciState {
                port, bystanders, ..
            } = &mut *pci;
            let mut first = [None; 4];
            let mut n = 0;
            crate::intx::silence_bystanders(bystanders, port, pintid, &mut |f| {
                if let Some(slot) = first.get_mut(n) {
                    *slot = Some(f);
                }
                n += 1;
            });
            for f in first.into_iter().flatten() {
                crate::aer::queue_intx_silenced(&mut pci, f, pintid);
            }
            if n > 0 {
                serviced = true;
                arm_pci_timer(&pci);
            }
        }
        // A level line that nobody we serve holds fires again at once:
        // forever, on the CPU of a guest's vCPU, unless held.
        if let crate::intx::LineVerdict::Hold { first, .. } =
            pci.line_guard.fired(pintid, serviced, now_ns())
        {
            crate::irq::hold_spi(pintid);
            if first {
                crate::aer::queue_line_held(&mut pci, pintid, crate::intx::HOLD_NS / 1_000_000);
            }
            arm_pci_timer(&pci);
        }
    }
    raise_lines(&raises);
    true
}

/// Per CPU: the counter when the last interrupt from a lower EL reached EL2.
static IRQ_AT: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// When the last AER interrupt of a root port reached EL2 (logged at the
/// owner's EOI, off the measured path; 0: none pending).
static AER_IRQ_AT: AtomicU64 = AtomicU64::new(0);

/// The hardware domain wrote extended config space (its view of AER
/// among it): Root Error Command may now enable an interrupt for a status
/// already set in its view of a root port.
#[cold]
#[inline(never)]
fn hwdom_extended_config_written(vm: &Vm) {
    let Some(pci) = PCI.get() else { return };
    let mut raises = crate::aer::Raises::default();
    crate::aer::resample(&mut pci.lock(), vm.index, None, &mut raises);
    raise_lines(&raises);
}

/// Raise virtual lines (outside the PCI lock: the vGIC takes its own).
fn raise_lines(raises: &crate::aer::Raises) {
    for (vm, vintid) in raises.iter() {
        let _ = crate::irq::set_spi_line(usize::from(vm), vintid, true);
    }
}

/// The hardware domain declared `segment` enumerated: take AER on its root
/// ports, their INTx at EL2 on the CPU of the hardware domain's first vCPU.
fn take_aer(pci: &mut PciState, segment: u16) {
    let sys = system();
    let Some(host) = sys
        .platform
        .pci_host_bridges
        .iter()
        .find(|b| b.access == platform::ConfigAccess::Ecam && b.segment == segment)
        .map(hwdom_pci)
    else {
        return;
    };
    let route = |topo: &pci::Topology, bdf, pin| {
        crate::pci_calls::route_intx(topo, host.intx_mask, &host.intx, bdf, pin)
    };
    let taken = crate::aer::take_root_ports(pci, segment, route);
    let pcpu = sys
        .vms
        .iter()
        .find(|v| v.hardware_domain)
        .and_then(|v| v.vcpus.first())
        .map_or(0, |v| v.pcpu);
    for port in &taken {
        match port.pintid {
            Some(pintid) => {
                // A line a guest's function shares stays on the guest's CPU.
                if !pci.intx.iter().any(|s| s.pintid == pintid) {
                    crate::irq::register_spi(pintid, pcpu, true, pci_line_interrupt);
                }
                log::info!(
                    "AER of root port {} taken, its INTx on SPI {pintid}",
                    port.bdf
                );
            }
            None => log::warn!(
                "AER of root port {} taken, but its INTx routes nowhere",
                port.bdf
            ),
        }
    }
}

/// A guest ended a level-triggered virtual SPI: unmask its functions on
/// that line (unless it keeps their INTx disabled itself).
pub fn intx_eoi(vm: usize, vintid: u32) {
    let Some(pci) = PCI.get() else { return };
    let at = AER_IRQ_AT.swap(0, Ordering::Relaxed);
    if at != 0 {
        log::info!("AER: the root port interrupt ended by this EOI reached EL2 at counter {at}");
    }
    let mut raises = crate::aer::Raises::default();
    {
        let mut pci = pci.lock();
        crate::aer::flush_log(&mut pci);
        // A virtual root port whose AER status the handler did not clear
        // asserts its line again.
        crate::aer::resample(&mut pci, vm as u16, Some(vintid), &mut raises);
        let PciState {
            port,
            intx,
            guests,
            resets,
            ..
        } = &mut *pci;
        // A function under reset is held like one its owner disabled: the
        // reset's end sets its mask ([`crate::intx::after_reset`]).
        let held = |physical| {
            guests.intx_disabled(vm as u16, physical) || crate::resets::masked_by(resets, physical)
        };
        crate::intx::eoi(intx, port, vm as u16, vintid, &held);
    }
    raise_lines(&raises);
}

/// Guest `vm` wrote a Command register of its virtual bus: unmask its
/// functions held masked while it kept their INTx disabled, now that it
/// does not (a function still asserting fires its line again).
fn intx_command_written(vm: u16) {
    let Some(pci) = PCI.get() else { return };
    let mut pci = pci.lock();
    let PciState {
        port,
        intx,
        guests,
        resets,
        ..
    } = &mut *pci;
    if !intx.iter().any(|s| s.vm == vm && s.masked) {
        return;
    }
    let held =
        |physical| guests.intx_disabled(vm, physical) || crate::resets::masked_by(resets, physical);
    crate::intx::command_written(intx, port, vm, &held);
}

/// Register the guests that wait for PCI functions (at boot, before any VM
/// runs).
pub fn register_pci_guests(pci: &mut PciState, platform: &Platform, vms: &[Vm], frequency: u64) {
    let timeout = PCI_REPORT_TIMEOUT_MS.saturating_mul(frequency) / 1000;
    // AER: the platform's storm setting, each VM's recovery deadline, and
    // who sees the physical root ports.
    if let Some(storm) = platform.aer_storm {
        pci.aer.service = pci::aer::RootPortService::new(pci::aer::AerConfig {
            storm_threshold: storm.threshold,
            storm_window_ns: u64::from(storm.window_ms) * 1_000_000,
            ..pci::aer::AerConfig::DEFAULT
        });
    }
    pci.aer.hwdom_vm = vms.iter().position(|v| v.hardware_domain).map(|i| i as u16);
    pci.aer.deadlines = platform
        .vms
        .iter()
        .map(|c| {
            c.aer_deadline_ms
                .map_or(pci::aer::AerConfig::DEFAULT.reset_deadline_ns, |ms| {
                    u64::from(ms) * 1_000_000
                })
        })
        .collect();
    for (index, (vm, config)) in vms.iter().zip(&platform.vms).enumerate() {
        if vm.guest_pci.is_none() {
            continue;
        }
        let requested = config
            .pci_devices
            .iter()
            .map(|a| pci::Bdf::new(a.segment, a.bus, a.device, a.function))
            .collect();
        pci.pending.push(pci_host::PendingGuest {
            vm: index as u16,
            name: vm.name.clone(),
            requested,
            whole_units: config.pci_whole_units,
            deadline: cpu::counter().saturating_add(timeout),
        });
    }
}

/// Synchronous exception from EL1.
#[unsafe(no_mangle)]
extern "C" fn lower_el_sync(frame: &mut TrapFrame) {
    let (vm, vcpu) = current();
    let syn = cpu::syndrome();
    match esr::class(syn.esr) {
        esr::EC_HVC64 => hypercall(vm, vcpu, frame),
        esr::EC_SMC64 => {
            // A trapped SMC leaves ELR at the instruction itself.
            frame.elr += 4;
            hypercall(vm, vcpu, frame);
        }
        esr::EC_DABT_LOW => data_abort(vm, vcpu, frame, syn.esr, syn.far, syn.hpfar),
        crate::irq::EC_SYSREG if crate::irq::sysreg_trap(vm, vcpu, syn.esr, frame) => {}
        _ => other_trap(vm, vcpu, frame, syn.esr, syn.far, syn.hpfar),
    }
}

/// Instruction aborts and anything unexpected: rare, kept out of the hot
/// path's frame.
#[cold]
#[inline(never)]
fn other_trap(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, esr: u64, far: u64, hpfar: u64) {
    let ec = esr::class(esr);
    // PMU, debug and ID registers (trapped by MDCR_EL2, CPTR_EL2, TID3).
    if ec == crate::irq::EC_SYSREG && crate::arch::aarch64::sysregs::emulate(frame, esr) {
        return;
    }
    if ec == esr::EC_IABT_LOW {
        let ipa = fault_ipa(hpfar, far);
        if vm.may_log() {
            log::warn!(
                "{} vCPU {vcpu}: instruction fetch from IPA {ipa:#x} outside its memory at {:#x}; external abort injected",
                vm.name,
                frame.elr
            );
        }
        cpu::inject_sync(frame, Injected::InstructionAbort, far);
        console::drain();
        return;
    }
    if vm.may_log() {
        log::warn!(
            "{} vCPU {vcpu}: unexpected trap EC {ec:#x} (ESR {:#x}) at {:#x}; undefined instruction injected",
            vm.name,
            esr,
            frame.elr
        );
    }
    cpu::inject_sync(frame, Injected::Undefined, 0);
    console::drain();
}

fn hypercall(vm: &'static Vm, vcpu: usize, frame: &mut TrapFrame) {
    let mut regs = [0u64; 8];
    regs.copy_from_slice(&frame.x[..8]);
    match smccc::dispatch(&mut Caller { vm }, &regs) {
        Outcome::Return(values) => frame.x[..4].copy_from_slice(&values),
        Outcome::CpuOff => {
            vm.vcpus[vcpu].set_power(VcpuPower::Off);
            run_pcpu(cpu::cpu_index(), frame);
        }
        Outcome::SystemOff if vm.hardware_domain => system_off(),
        Outcome::SystemOff => {
            if vm.may_log() {
                log::info!("{} powered off", vm.name);
            }
            stop_vm(vm, vcpu, frame);
        }
        Outcome::SystemReset if vm.hardware_domain => {
            log::info!("{} asked for a system reset", vm.name);
            console::flush();
            let _ = firmware::system_reset(psci_conduit());
            halt("system reset failed");
        }
        Outcome::SystemReset => {
            let others_on = vm
                .vcpus
                .iter()
                .enumerate()
                .any(|(i, v)| i != vcpu && v.power() != VcpuPower::Off);
            if others_on {
                if vm.may_log() {
                    log::warn!(
                        "{} reset with other vCPUs running: powered off instead",
                        vm.name
                    );
                }
                stop_vm(vm, vcpu, frame);
            }
            if vm.may_log() {
                log::info!("{} restarts", vm.name);
            }
            vm.vcpus[vcpu].set_power(VcpuPower::Off);
            // With PCI functions it boots again once they are reset.
            if !reset_pci_for_restart(vm) {
                vm.load_images();
            }
            run_pcpu(cpu::cpu_index(), frame);
        }
    }
}

/// A guest restarts: its devices are reset (never rely on the guest) and its
/// virtual bus loses what it programmed, as on a machine reset: a Secondary
/// Bus Reset of every virtual root port resets the virtual functions and
/// unmaps their BARs, and the physical functions are reset by the narrowest
/// resets. Returns whether the VM must wait for them before it boots again.
fn reset_pci_for_restart(vm: &Vm) -> bool {
    let Some(pci) = PCI.get() else { return false };
    let mut pci = pci.lock();
    if !reset_virtual_bus(&mut pci, vm) {
        return true;
    }
    let functions: Vec<pci::Bdf> = pci
        .guest_bus(vm.index)
        .map(|b| b.describe().map(|(_, _, p)| p).collect())
        .unwrap_or_default();
    let then = crate::resets::AfterReset::Restart { vm: vm.index };
    start_resets(&mut pci, vm, &functions, then);
    pci.resets.iter().any(|r| r.then == then)
}

/// A Secondary Bus Reset of every virtual root port of `vm`: its virtual
/// functions forget what it programmed and their BARs leave its stage 2.
/// Returns false (logged) if a BAR could not be unmapped: the caller must
/// not hand the device to anyone else.
fn reset_virtual_bus(pci: &mut PciState, vm: &Vm) -> bool {
    const BRIDGE_CONTROL: u64 = 0x3e;
    const SBR: u64 = 1 << 6;
    let mut effects = pci::vpci::Effects::default();
    let units = pci.guest_bus(vm.index).map_or(0, |b| b.units());
    for unit in 0..units {
        let rp = pci::vpci::GuestBus::root_port(unit);
        let at = (u64::from(rp.devfn) << 12) | BRIDGE_CONTROL;
        let bc = crate::pci_calls::guest_ecam_access(pci, vm.index, at, 2, None, &mut effects);
        for value in [bc | SBR, bc & !SBR] {
            crate::pci_calls::guest_ecam_access(pci, vm.index, at, 2, Some(value), &mut effects);
        }
    }
    let mut unmapped = !effects.overflowed();
    for effect in effects.iter() {
        if let pci::vpci::Effect::Unmap { ipa, size } = *effect
            && vm.stage2.lock().unmap(ipa, size).is_err()
        {
            unmapped = false;
        }
    }
    if !unmapped {
        log::error!(
            "{}: its BARs could not all be unmapped: its devices stay with it",
            vm.name
        );
        FAILED.store(true, Ordering::Release);
    }
    unmapped
}

/// Stop a VM: every vCPU, then its devices. The first vCPU to get here
/// kicks the others and waits until they are off, so that none of them
/// touches a device after it has been reset and handed back; only then are
/// its BARs unmapped and its devices reset (they go back to the hardware
/// domain when that is done).
fn stop_vm(vm: &Vm, vcpu: usize, frame: &mut TrapFrame) -> ! {
    if vm.stopped.swap(true, Ordering::AcqRel) {
        // Another vCPU is stopping it already.
        stop_this_vcpu(vm, vcpu, frame);
    }
    vm.vcpus[vcpu].set_power(VcpuPower::Off);
    if !stop_other_vcpus(vm) {
        log::error!(
            "{}: a vCPU did not stop: its devices stay with it, hidden",
            vm.name
        );
        FAILED.store(true, Ordering::Release);
    } else if let Some(pci) = PCI.get() {
        let mut pci = pci.lock();
        if reset_virtual_bus(&mut pci, vm) {
            let PciState { port, guests, .. } = &mut *pci;
            if let Some(bus) = guests.get_mut(vm.index) {
                // Its devices stop DMA at once. They stay its own (hidden
                // from the hardware domain) until they have been reset;
                // then they go back.
                bus.quiesce(port);
                let functions: Vec<pci::Bdf> = bus.describe().map(|(_, _, p)| p).collect();
                start_resets(
                    &mut pci,
                    vm,
                    &functions,
                    crate::resets::AfterReset::Release { vm: vm.index },
                );
            }
        }
    }
    let mut uart = vm.uart.lock();
    if uart.pending() > 0 {
        uart.flush(&mut |line| vm.emit_line(line));
    }
    drop(uart);
    vm.log_suppressed();
    run_pcpu(cpu::cpu_index(), frame)
}

/// Kick every other vCPU of a stopped VM out of the guest and wait until
/// each is off: the kick is a physical interrupt, taken at EL2 as soon as
/// the vCPU is back in the guest (or at once), and that exit stops it.
/// Holds no lock while it waits. False if one is still on after a second.
fn stop_other_vcpus(vm: &Vm) -> bool {
    const PATIENCE_NS: u64 = 1_000_000_000;
    let freq = cpu::counter_frequency().max(1);
    let deadline = cpu::counter().saturating_add(
        u64::try_from(u128::from(PATIENCE_NS) * u128::from(freq) / 1_000_000_000)
            .unwrap_or(u64::MAX),
    );
    let mut kicked = false;
    loop {
        let running = vm.vcpus.iter().filter(|v| v.power() == VcpuPower::On);
        let mut any = false;
        for v in running {
            any = true;
            if !kicked {
                crate::irq::wake(v.pcpu);
            }
        }
        if !any {
            return true;
        }
        kicked = true;
        if cpu::counter() >= deadline {
            return false;
        }
        core::hint::spin_loop();
    }
}

fn psci_conduit() -> platform::PsciConduit {
    system()
        .platform
        .psci
        .as_ref()
        .map_or(platform::PsciConduit::Smc, |p| p.conduit)
}

/// A bug in the hypervisor (a fault at EL2, a panic): stop the whole
/// system with a failure status, the way the hardware domain's SYSTEM_OFF
/// does (PSCI SYSTEM_OFF or semihosting exit stops every CPU), instead of
/// parking this CPU with whatever locks it holds. The reason is on the
/// console already. Touches no VM state: it may be what is broken.
pub fn stop_on_bug() -> ! {
    FAILED.store(true, Ordering::Release);
    console::print_on_bug(format_args!("phv: stopping the system: hypervisor bug\n"));
    let Some(sys) = SYSTEM.get() else {
        // Before the platform is known there is no way to power off.
        loop {
            cpu::wait_for_event();
        }
    };
    match sys.platform.exit_method {
        ExitMethod::Semihosting => firmware::semihosting_exit(1),
        ExitMethod::Psci => {
            let _ = firmware::system_off(psci_conduit());
        }
    }
    halt("system off failed")
}

/// The hardware domain powered off: end the run with a status.
fn system_off() -> ! {
    let sys = system();
    for vm in &sys.vms {
        let mut uart = vm.uart.lock();
        if uart.pending() > 0 {
            uart.flush(&mut |line| vm.emit_line(line));
        }
        drop(uart);
        vm.log_suppressed();
    }
    let status = u32::from(FAILED.load(Ordering::Acquire));
    console::print(format_args!("phv: system off, status {status}\n"));
    console::flush();
    match sys.platform.exit_method {
        ExitMethod::Semihosting => firmware::semihosting_exit(status),
        ExitMethod::Psci => {
            let _ = firmware::system_off(psci_conduit());
        }
    }
    halt("system off failed")
}

fn data_abort(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, esr: u64, far: u64, hpfar: u64) {
    let ipa = fault_ipa(hpfar, far);
    // The whole access must fit one region. Anything else (no syndrome,
    // nothing there, a page of the hardware domain's PCI windows) is rare.
    let Ok(access) = MmioAccess::decode(esr, ipa) else {
        return data_abort_slow(vm, vcpu, frame, esr, far, ipa);
    };
    let Some((region, offset)) = vm.mmio.find(ipa, access.width()) else {
        return data_abort_slow(vm, vcpu, frame, esr, far, ipa);
    };
    // The config spaces first: the most frequent (and measured) traps.
    if region.device == MmioDevice::VirtualEcam {
        if access.write() {
            let value = access.store_value(frame.reg(access.reg()));
            virtual_ecam_write(vm, offset, access.bytes(), value);
            console::drain();
        } else {
            let result = virtual_ecam_read(vm.index, offset, access);
            frame.set_reg(access.reg(), access.load_result(result));
        }
    } else if let MmioDevice::HostEcam(index) = region.device {
        let write = access
            .write()
            .then(|| access.store_value(frame.reg(access.reg())));
        let result = match PCI.get() {
            Some(pci) => crate::pci_calls::hwdom_ecam_access(
                &mut pci.lock(),
                usize::from(index),
                offset,
                access.bytes(),
                write,
            ),
            None => u64::MAX,
        };
        if !access.write() {
            frame.set_reg(access.reg(), access.load_result(result));
        } else {
            if offset & 0xfff >= 0x100 {
                hwdom_extended_config_written(vm);
            }
            // A refused write is logged: send it (the PCI lock is released).
            console::drain();
        }
    } else {
        match region.device {
            MmioDevice::Gicd => crate::irq::gic_mmio(vm, vcpu, false, offset, access, frame),
            MmioDevice::Gicr => crate::irq::gic_mmio(vm, vcpu, true, offset, access, frame),
            MmioDevice::GuestPciWindow => {
                if !guest_pci_window(vm, access, frame) {
                    return refuse_access(vm, vcpu, frame, esr, far, ipa);
                }
                console::drain();
            }
            MmioDevice::Uart => uart_access(vm, offset, access, frame),
            MmioDevice::HwdomPciWindow => {
                return hwdom_bar_fault(vm, vcpu, frame, esr, far, ipa);
            }
            // Handled above.
            MmioDevice::VirtualEcam | MmioDevice::HostEcam(_) => {}
        }
    }
    frame.elr += 4;
}

#[cold]
#[inline(never)]
fn stop_this_vcpu(vm: &Vm, vcpu: usize, frame: &mut TrapFrame) -> ! {
    vm.vcpus[vcpu].set_power(VcpuPower::Off);
    run_pcpu(cpu::cpu_index(), frame);
}

/// A data abort without a syndrome, or whose access does not fit a region
/// of the VM's map: a first touch of a page of the hardware domain's PCI
/// windows (whatever the syndrome), or a refused access.
#[cold]
#[inline(never)]
fn data_abort_slow(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, esr: u64, far: u64, ipa: u64) {
    // Device memory of the hardware domain: map the page and retry the
    // access, whatever its syndrome.
    if let Some((region, _)) = vm.mmio.find(ipa, crate::mmio::Width::Byte)
        && region.device == MmioDevice::HwdomPciWindow
    {
        return hwdom_bar_fault(vm, vcpu, frame, esr, far, ipa);
    }
    refuse_access(vm, vcpu, frame, esr, far, ipa);
}

/// A data abort that cannot be emulated: its syndrome does not describe
/// the access, or the access hits nothing the VM owns (a region of its map
/// it does not fit, or, in its PCI memory window, no trapped MSI-X page).
/// Logged (under the VM's limit), an external abort injected.
#[cold]
#[inline(never)]
fn refuse_access(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, esr: u64, far: u64, ipa: u64) {
    let access = match MmioAccess::decode(esr, ipa) {
        Ok(a) => a,
        Err(why) => {
            if vm.may_log() {
                log::warn!(
                    "{} vCPU {vcpu}: data abort at IPA {ipa:#x} (pc {:#x}) cannot be emulated ({why:?}); external abort injected",
                    vm.name,
                    frame.elr
                );
            }
            let write = esr & esr::WNR != 0;
            cpu::inject_sync(frame, Injected::DataAbort { write }, far);
            console::drain();
            return;
        }
    };
    let window = vm
        .mmio
        .find(ipa, crate::mmio::Width::Byte)
        .is_some_and(|(r, offset)| {
            r.device == MmioDevice::GuestPciWindow && access.width().bytes() <= r.size - offset
        });
    if vm.may_log() {
        if window {
            log::warn!(
                "{} vCPU {vcpu}: access to PCI memory {ipa:#x} (pc {:#x}) outside its mapped BARs; external abort injected",
                vm.name,
                frame.elr
            );
        } else {
            log::warn!(
                "{} vCPU {vcpu}: {} of {} bytes at IPA {ipa:#x} (pc {:#x}) hits nothing it owns; external abort injected",
                vm.name,
                if access.write() { "write" } else { "read" },
                access.width().bytes(),
                frame.elr
            );
        }
    }
    cpu::inject_sync(
        frame,
        Injected::DataAbort {
            write: access.write(),
        },
        far,
    );
    console::drain();
}

/// A guest's access to its PCI memory window outside the BAR pages mapped
/// in stage 2: one of its trapped MSI-X pages, emulated (true), or nothing.
#[inline(never)]
fn guest_pci_window(vm: &Vm, access: MmioAccess, frame: &mut TrapFrame) -> bool {
    let mut effects = pci::vpci::Effects::default();
    let handled = PCI.get().is_some_and(|pci| {
        let mut pci = pci.lock();
        let Some(bus) = pci.guest_bus(vm.index) else {
            return false;
        };
        let width = access.width().bytes() as u16;
        if access.write() {
            let value = access.store_value(frame.reg(access.reg()));
            bus.msix_write(
                &mut pci_host::BarMemory,
                access.ipa,
                width,
                value,
                &mut effects,
            )
        } else {
            match bus.msix_read(&mut pci_host::BarMemory, access.ipa, width) {
                Some(v) => {
                    frame.set_reg(access.reg(), access.load_result(v));
                    true
                }
                None => false,
            }
        }
    });
    apply_pci_effects(vm, &effects);
    handled
}

/// The VM's virtual PL011.
#[inline(never)]
fn uart_access(vm: &Vm, offset: u64, access: MmioAccess, frame: &mut TrapFrame) {
    let mut uart = vm.uart.lock();
    if access.write() {
        let value = access.store_value(frame.reg(access.reg())) as u32;
        uart.write(offset, value, &mut |line| vm.emit_line(line));
    } else {
        let value = access.load_result(u64::from(uart.read(offset)));
        frame.set_reg(access.reg(), value);
    }
}

/// A guest's read of its virtual ECAM (reads have no effects: nothing to
/// build or apply). Out of line: little is live across it.
#[inline(never)]
fn virtual_ecam_read(vm: u16, offset: u64, access: MmioAccess) -> u64 {
    match PCI.get() {
        Some(pci) => crate::pci_calls::guest_ecam_read(&mut pci.lock(), vm, offset, access.bytes()),
        None => u64::MAX,
    }
}

/// A guest's write to its virtual ECAM, with the effects it has (kept out
/// of line: the effect list is large, and reads never need it).
#[inline(never)]
fn virtual_ecam_write(vm: &Vm, offset: u64, width: u64, value: u64) {
    let mut effects = pci::vpci::Effects::default();
    let _ = PCI.get().map(|pci| {
        crate::pci_calls::guest_ecam_access(
            &mut pci.lock(),
            vm.index,
            offset,
            width,
            Some(value),
            &mut effects,
        )
    });
    // A write over Command (0x04..0x06 of a function) may clear
    // the guest's INTx Disable.
    let reg = offset & 0xfff;
    if reg < 0x06 && reg + width > 0x04 {
        intx_command_written(vm.index);
    }
    // The AER capability of its virtual root ports (bus 0, extended config
    // space): Root Error Command may now enable an interrupt for a status
    // already set.
    if offset >> 20 == 0
        && offset & 0xfff >= 0x100
        && let Some(pci) = PCI.get()
    {
        let mut raises = crate::aer::Raises::default();
        crate::aer::resample(&mut pci.lock(), vm.index, None, &mut raises);
        raise_lines(&raises);
    }
    apply_pci_effects(vm, &effects);
}

/// A reset a guest asked for.
#[derive(Clone, Copy, Debug)]
enum ResetRequest {
    /// Secondary Bus Reset of the virtual root port of its `n`th unit.
    Unit(usize),
    /// Initiate FLR of one of its functions.
    Flr(pci::Bdf),
}

/// Perform the reset a guest asked for: the narrowest real reset covering
/// the unit behind its virtual root port (an SBR when it owns everything
/// below the physical bridge, else function resets), or the FLR.
fn guest_reset(vm: &Vm, request: ResetRequest) {
    let Some(pci) = PCI.get() else { return };
    let mut pci = pci.lock();
    match request {
        ResetRequest::Unit(unit) => {
            let root_port = pci::vpci::GuestBus::root_port(unit);
            let functions: Vec<pci::Bdf> = pci
                .guest_bus(vm.index)
                .map(|bus| {
                    bus.describe()
                        .filter(|&(rp, _, _)| rp == root_port)
                        .map(|(_, _, p)| p)
                        .collect()
                })
                .unwrap_or_default();
            crate::aer::owner_reset(&mut pci, &functions);
            start_resets(&mut pci, vm, &functions, crate::resets::AfterReset::Nothing);
        }
        // An FLR is not a link reset: a fatal error of `bdf` still waits for
        // one (unless the FLR had to become one).
        ResetRequest::Flr(bdf) => match crate::resets::for_guest_flr(&pci, bdf) {
            Ok(action) => {
                let request = crate::resets::new_request(&mut pci);
                let then = crate::resets::AfterReset::Nothing;
                // Logged; the guest may ask again.
                let _ = start_one(&mut pci, vm, action, then, request);
            }
            Err(e) => {
                // Its virtual state is reset already; the device cannot be.
                if vm.may_log() {
                    log::error!(
                        "{}: no reset performs the FLR of {bdf}: {e}; quarantined",
                        vm.name
                    );
                }
                pci.quarantine
                    .add(bdf, pci::reset_engine::QuarantineReason::NoResetMethod);
            }
        },
    }
}

/// Start the resets covering `functions` of guest `vm`, as one request.
fn start_resets(
    pci: &mut PciState,
    vm: &Vm,
    functions: &[pci::Bdf],
    then: crate::resets::AfterReset,
) {
    // One narrowest reset per parent bridge: a unit the guest owns entirely
    // gets the bus (or slot) reset of its bridge, the strongest reset that
    // touches nothing else; functions spread over bridges are not lumped.
    let mut groups: Vec<(Option<pci::Bdf>, Vec<pci::Bdf>)> = Vec::new();
    for &b in functions {
        let parent = pci.topology.parent_bridge(b);
        match groups.iter_mut().find(|(p, _)| *p == parent) {
            Some((_, g)) => g.push(b),
            None => groups.push((parent, alloc::vec![b])),
        }
    }
    let request = crate::resets::new_request(pci);
    for (_, group) in groups {
        match crate::resets::for_guest(pci, &group) {
            Ok(actions) => {
                for action in actions {
                    let _ = start_one(pci, vm, action, then, request);
                }
            }
            Err(e) => {
                log::error!("{}: no reset covers {group:?}: {e}; quarantined", vm.name);
                for &b in &group {
                    pci.quarantine
                        .add(b, pci::reset_engine::QuarantineReason::NoResetMethod);
                }
            }
        }
    }
}

fn start_one(
    pci: &mut PciState,
    vm: &Vm,
    action: pci::ResetAction,
    then: crate::resets::AfterReset,
    request: u32,
) -> Result<(), pci::reset_engine::EngineError> {
    let now = now_ns();
    match crate::resets::start(pci, &mut pci_host::BarMemory, action, now, then, request) {
        Ok(()) => {
            if vm.may_log() {
                log::info!("{}: {action:?} started", vm.name);
            }
            arm_pci_timer(pci);
            Ok(())
        }
        // A guest asking again and again while its reset runs must not
        // flood the console: counted like its faults.
        Err(e) => {
            if vm.may_log() {
                log::warn!("{}: {action:?} not started: {e}", vm.name);
            }
            Err(e)
        }
    }
}

/// The counter in nanoseconds.
fn now_ns() -> u64 {
    let freq = cpu::counter_frequency().max(1);
    let ticks = cpu::counter();
    // The common frequencies divide 1 GHz (QEMU virt: 1 GHz, boards 25,
    // 50, 100 MHz...): a multiplication instead of a 128-bit division.
    if 1_000_000_000 % freq == 0 {
        return ticks.saturating_mul(1_000_000_000 / freq);
    }
    (u128::from(ticks) * 1_000_000_000 / u128::from(freq)) as u64
}

/// Arm this CPU's hypervisor timer for the next step of a reset or the
/// next AER recovery deadline, whichever comes first.
fn arm_pci_timer(pci: &PciState) {
    let next = pci
        .resets
        .iter()
        .filter(|r| r.held.is_none())
        .map(|r| r.next_ns)
        .chain(pci.aer.recovery.next_deadline())
        .chain(pci.line_guard.next_release())
        .min();
    if let Some(deadline_ns) = next {
        let freq = u128::from(cpu::counter_frequency().max(1));
        let ticks = (u128::from(deadline_ns) * freq).div_ceil(1_000_000_000) as u64;
        crate::irq::hyp_timer_arm(cpu::cpu_index(), ticks, pci_timer);
    }
}

/// The hypervisor timer of PCI: step the resets, finish those that ended;
/// take over the AER recoveries whose owner did not reset in time.
fn pci_timer(_ticks: u64) {
    let Some(pci) = PCI.get() else { return };
    let mut raises = crate::aer::Raises::default();
    {
        let mut pci = pci.lock();
        crate::aer::flush_log(&mut pci);
        step_resets(&mut pci);
        let now = now_ns();
        pci.line_guard.release_due(now, crate::irq::release_spi);
        for t in crate::aer::deadlines_passed(&mut pci, now, &mut raises) {
            let vm = match t.owner {
                pci::vpci::Owner::Guest(vm) => Some(vm),
                pci::vpci::Owner::Hwdom => pci.aer.hwdom_vm,
            };
            let Some(vm) = vm.and_then(|v| system().vms.get(usize::from(v))) else {
                continue;
            };
            match t.actions {
                Ok(actions) => {
                    let request = crate::resets::new_request(&mut pci);
                    for action in actions {
                        let then = crate::resets::AfterReset::Nothing;
                        if let Err(pci::reset_engine::EngineError::Busy { .. }) =
                            start_one(&mut pci, vm, action, then, request)
                        {
                            // Another reset runs over part of it: again soon,
                            // never waiting for a reset that may not come.
                            let at = now.saturating_add(pci::aer::TAKEOVER_RETRY_NS);
                            pci.aer.recovery.retry_at(t.source, at);
                        }
                    }
                }
                Err(e) => {
                    log::error!(
                        "{}: no reset covers {:?}: {e}; quarantined",
                        vm.name,
                        t.functions
                    );
                    for &b in &t.functions {
                        pci.quarantine
                            .add(b, pci::reset_engine::QuarantineReason::NoResetMethod);
                    }
                }
            }
            if pci.quarantine.first_of(&t.functions).is_some() {
                // No reset could start: it never comes back.
                crate::aer::reset_done(&mut pci, &t.functions, &t.functions, true);
            }
        }
        arm_pci_timer(&pci);
    }
    raise_lines(&raises);
}

/// Step the resets that are due; finish those that ended.
fn step_resets(pci: &mut PciState) {
    let (finished, _) = crate::resets::step(pci, &mut pci_host::BarMemory, now_ns());
    for f in finished {
        // A bus reset also ends the recovery of the bridge whose link it
        // reset.
        let scope = pci::aer::recovered_by(&pci.topology, f.action);
        let gone: &[pci::Bdf] = match &f.outcome {
            pci::reset_engine::ResetOutcome::TimedOut(gone) => gone,
            _ => &[],
        };
        let link = !matches!(f.action, pci::ResetAction::Function { .. });
        crate::aer::reset_done(pci, &scope, gone, link);
        match f.ready_after_ns {
            Some(ns) => log::info!(
                "{:?} done: {:?}, ready {}.{:03} ms after the reset ended",
                f.action,
                f.outcome,
                ns / 1_000_000,
                (ns / 1000) % 1000
            ),
            None => log::info!("{:?} done: {:?}", f.action, f.outcome),
        }
        if pci.resets.iter().any(|r| r.then == f.then) {
            continue;
        }
        match f.then {
            crate::resets::AfterReset::Release { vm } => release_guest_functions(pci, vm),
            crate::resets::AfterReset::Start { vm } => finish_guest_start(pci, vm),
            crate::resets::AfterReset::Restart { vm } => {
                if let Some(vm) = system().vms.get(usize::from(vm)) {
                    vm.load_images();
                }
            }
            crate::resets::AfterReset::Nothing => {}
        }
    }
}

/// A guest's functions were reset for it: start it, unless one of them is
/// quarantined (did not come back).
fn finish_guest_start(pci: &mut PciState, vm: u16) {
    let Some(i) = pci.starting.iter().position(|(v, _)| *v == vm) else {
        return;
    };
    let (_, bridge) = pci.starting.swap_remove(i);
    let sys = system();
    let Some(vm) = sys.vms.get(usize::from(vm)) else {
        return;
    };
    let given: Vec<pci::Bdf> = pci.ownership.functions_of(vm.index).collect();
    let started = match pci.quarantine.first_of(&given) {
        Some((b, why)) => Err(alloc::format!("{b} is quarantined ({why:?})")),
        None => vm
            .start_with_pci(&sys.platform, &bridge)
            .map_err(|e| alloc::format!("{e}")),
    };
    match started {
        Ok(()) => log::info!("{} starts with its PCI functions {given:?}, reset", vm.name),
        Err(e) => {
            log::error!("{} cannot start: {e}", vm.name);
            FAILED.store(true, Ordering::Release);
        }
    }
}

/// A stopped guest's functions, reset, go back to the hardware domain
/// (except quarantined ones, which stay hidden).
fn release_guest_functions(pci: &mut PciState, vm: u16) {
    let PciState {
        ownership,
        topology,
        guests,
        intx,
        quarantine,
        reservations,
        aer,
        line_guard,
        ..
    } = pci;
    let given: Vec<pci::Bdf> = ownership.functions_of(vm).collect();
    if let Some((b, why)) = quarantine.first_of(&given) {
        // Never handed out again: it stays hidden with the stopped guest.
        log::error!("{b} is quarantined ({why:?}): the functions of its guest stay hidden");
        return;
    }
    for &f in &given {
        // Its recovery ended with the reset before the handback.
        aer.recovery.forget(f);
    }
    ownership.release(topology, vm);
    reservations.release(pci::vpci::Owner::Guest(vm));
    guests.remove(vm);
    let lines = crate::intx::lines(intx);
    intx.retain(|s| s.vm != vm);
    aer.guest_lines.retain(|l| l.vm != vm);
    for line in lines {
        if !intx.iter().any(|s| s.pintid == line)
            && !aer.ports.iter().any(|p| p.pintid == Some(line))
        {
            crate::irq::unregister_spi(line);
            line_guard.forget(line);
        }
    }
    pci.refresh_bystanders();
    log::info!("functions {given:?} reset and back with the hardware domain");
}

/// Carry out what a guest's config or MSI-X access asks for: stage-2
/// changes for its BARs, and log lines for what was refused.
fn apply_pci_effects(vm: &Vm, effects: &pci::vpci::Effects) {
    use pci::vpci::Effect;
    if effects.is_empty() {
        return;
    }
    if effects.overflowed() && vm.may_log() {
        log::error!(
            "{}: too many PCI effects of one access; some were lost",
            vm.name
        );
    }
    for effect in effects.iter() {
        match *effect {
            Effect::Map { ipa, pa, size } => {
                if let Err(e) = vm.stage2.lock().map_device(ipa, pa, size)
                    && vm.may_log()
                {
                    log::error!("{}: cannot map BAR {pa:#x} at {ipa:#x}: {:?}", vm.name, e.0);
                }
            }
            Effect::Unmap { ipa, size } => {
                // Its own BAR at its old address: it keeps reaching its own
                // device there, nothing else.
                if let Err(e) = vm.stage2.lock().unmap(ipa, size)
                    && vm.may_log()
                {
                    log::error!("{}: cannot unmap a BAR at {ipa:#x}: {:?}", vm.name, e.0);
                }
            }
            Effect::TrapMsix { .. } => {}
            Effect::MsixEntry { physical, .. } | Effect::MsixControl { physical, .. } => {
                guest_msix_commit(vm, physical)
            }
            Effect::BarRefused {
                vbdf,
                bar,
                addr,
                reason,
            } => {
                if vm.may_log() {
                    log::warn!(
                        "{}: BAR {bar} of {vbdf} at {addr:#x} not mapped: {reason:?}",
                        vm.name
                    );
                }
            }
            Effect::SecondaryBusReset { unit } => guest_reset(vm, ResetRequest::Unit(unit)),
            Effect::FunctionLevelReset { physical } => guest_reset(vm, ResetRequest::Flr(physical)),
            Effect::MsiControl { physical, enabled } => {
                if enabled && vm.may_log() {
                    log::warn!(
                        "{}: MSI enabled on {physical}: no virtual ITS, use INTx",
                        vm.name
                    );
                }
            }
        }
    }
}

/// A guest's MSI-X access: its physical table follows its shadow where it
/// is used; a table lost to a reset the hypervisor did not do is rewritten
/// and logged (a device reset of its own, behind our back, clears it).
fn guest_msix_commit(vm: &Vm, physical: pci::Bdf) {
    let Some(pci) = PCI.get() else {
        return;
    };
    let done = crate::msix::commit(
        &mut pci.lock(),
        &mut pci_host::BarMemory,
        vm.index,
        physical,
    );
    if let Some(c) = done.filter(|c| c.repaired != 0)
        && vm.may_log()
    {
        log::warn!(
            "{}: MSI-X table of {physical} lost behind the hypervisor's back (device reset?): {} entries rewritten",
            vm.name,
            c.repaired
        );
    }
}

/// The hardware domain touched a page of a PCI window for the first time:
/// map it (IPA == PA) unless it belongs to a function given to a guest.
#[cold]
#[inline(never)]
fn hwdom_bar_fault(vm: &Vm, vcpu: usize, frame: &mut TrapFrame, esr: u64, far: u64, ipa: u64) {
    let page = ipa & !0xfff;
    let touch = match PCI.get() {
        Some(pci) => pci
            .lock()
            .hwdom_first_touch(page, |p| vm.stage2.lock().map_device(p, p, 0x1000)),
        None => pci_host::FirstTouch::MapFailed,
    };
    let guest_owned = touch == pci_host::FirstTouch::GuestOwned;
    let mapped = touch == pci_host::FirstTouch::Mapped;
    if !mapped {
        if vm.may_log() {
            log::warn!(
                "{} vCPU {vcpu}: access to PCI memory {ipa:#x} (pc {:#x}) {}; external abort injected",
                vm.name,
                frame.elr,
                if guest_owned {
                    "of a function given to a guest"
                } else {
                    "cannot be mapped"
                }
            );
        }
        let write = esr & esr::WNR != 0;
        cpu::inject_sync(frame, Injected::DataAbort { write }, far);
        console::drain();
    }
}

/// IRQ or FIQ while a vCPU ran: physical interrupts are the hypervisor's.
#[unsafe(no_mangle)]
extern "C" fn lower_el_irq(frame: &mut TrapFrame) {
    // For the AER figure: when the interrupt reached EL2.
    if let Some(at) = IRQ_AT.get(cpu::cpu_index()) {
        at.store(cpu::counter(), Ordering::Relaxed);
    }
    let (vm, vcpu) = current();
    crate::irq::lower_el_irq(vm, vcpu);
    console::drain();
    // The kick of `stop_other_vcpus` lands here: a physical interrupt
    // always exits to EL2, so no other exit needs to look (the hot
    // synchronous traps stay as fast as they were).
    if vm.stopped.load(Ordering::Acquire) {
        stop_this_vcpu(vm, vcpu, frame);
    }
}

#[unsafe(no_mangle)]
extern "C" fn lower_el_serror(frame: &mut TrapFrame) {
    let (vm, vcpu) = current();
    let syn = cpu::syndrome();
    if vm.may_log() {
        log::error!(
            "{} vCPU {vcpu}: SError (ESR {:#x}) at {:#x}",
            vm.name,
            syn.esr,
            frame.elr
        );
    }
    console::drain();
}

/// A fault in the hypervisor itself: report and stop this CPU.
#[unsafe(no_mangle)]
extern "C" fn hyp_fault(frame: &mut TrapFrame) {
    let syn = cpu::syndrome();
    console::print_on_bug(format_args!(
        "phv: FAULT in the hypervisor on CPU {}: ESR {:#x} FAR {:#x} ELR {:#x}\n",
        cpu::cpu_index(),
        syn.esr,
        syn.far,
        frame.elr
    ));
    stop_on_bug()
}
