//! VM configuration nodes under `/chosen` (dom0less style, `docs/interfaces.md`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::blob::NodeId;
use crate::dt::DeviceTree;
use crate::{ExitMethod, PciFunctionAddress, PlatformError, Region, VmConfig};

const VM_COMPATIBLE: &str = "phv,vm";
const KERNEL_COMPATIBLE: &str = "multiboot,kernel";
/// An initial ramdisk for the kernel (Xen dom0less's name for it).
const RAMDISK_COMPATIBLE: &str = "multiboot,ramdisk";
/// VM RAM is mapped with 2 MiB stage-2 blocks and the kernel goes at base + 2 MiB.
const VM_RAM_ALIGN: u64 = 2 << 20;

fn bad_vm(name: &str, why: impl Into<String>) -> PlatformError {
    PlatformError::BadVmConfig(String::from(name), why.into())
}

/// `/chosen/phv,exit`: "psci" (default) or "semihosting".
pub fn exit_method(dt: &DeviceTree, chosen: Option<NodeId>) -> Result<ExitMethod, PlatformError> {
    let Some(chosen) = chosen else {
        return Ok(ExitMethod::default());
    };
    match dt.prop_str(chosen, "phv,exit")? {
        None | Some("psci") => Ok(ExitMethod::Psci),
        Some("semihosting") => Ok(ExitMethod::Semihosting),
        Some(_) => Err(dt.bad(chosen, "phv,exit", "expected \"psci\" or \"semihosting\"")),
    }
}

/// `/chosen/phv,aer-storm = <threshold window_ms>`, both at least 1.
pub fn aer_storm(
    dt: &DeviceTree,
    chosen: Option<NodeId>,
) -> Result<Option<crate::AerStorm>, PlatformError> {
    let Some(chosen) = chosen else {
        return Ok(None);
    };
    match dt.prop_cells(chosen, "phv,aer-storm")?.as_deref() {
        None => Ok(None),
        Some(&[threshold, window_ms]) if threshold > 0 && window_ms > 0 => {
            Ok(Some(crate::AerStorm {
                threshold,
                window_ms,
            }))
        }
        Some(_) => Err(dt.bad(
            chosen,
            "phv,aer-storm",
            "expected <threshold window_ms>, both at least 1",
        )),
    }
}

/// Where a module (`what`: "kernel", "ramdisk") was loaded: the first
/// entry of its `reg`, nonempty and inside the 64-bit space. Module
/// addresses are physical: /chosen has no ranges to translate through.
fn module_region(
    dt: &DeviceTree,
    name: &str,
    module: NodeId,
    what: &str,
) -> Result<Region, PlatformError> {
    let reg = dt
        .raw_reg(module)
        .map_err(|e| bad_vm(name, format!("{what} module: {e}")))?;
    match reg.first() {
        Some(&(base, size)) => match (u64::try_from(base), u64::try_from(size)) {
            (Ok(base), Ok(size)) if size != 0 && base.checked_add(size).is_some() => {
                Ok(Region::new(base, size))
            }
            _ => Err(bad_vm(
                name,
                format!("{what} module reg is empty or outside the 64-bit address space"),
            )),
        },
        None => Err(bad_vm(name, format!("{what} module has an empty reg"))),
    }
}

/// Every `compatible = "phv,vm"` child of `/chosen`, validated against each
/// other and against the platform's CPUs and RAM.
pub fn vms(
    dt: &DeviceTree,
    chosen: Option<NodeId>,
    pcpus: usize,
    memory: &[Region],
) -> Result<Vec<VmConfig>, PlatformError> {
    let Some(chosen) = chosen else {
        return Ok(Vec::new());
    };
    let mut vms: Vec<VmConfig> = Vec::new();
    for id in dt.children(chosen) {
        if !dt.is_compatible(id, &[VM_COMPATIBLE]) {
            continue;
        }
        let vm = vm(dt, id)?;
        if vms.iter().any(|other| other.name == vm.name) {
            return Err(bad_vm(&vm.name, "name used by more than one VM"));
        }
        vms.push(vm);
    }
    if vms.is_empty() {
        return Ok(vms);
    }
    let hardware_domains: Vec<&str> = vms
        .iter()
        .filter(|v| v.hardware_domain)
        .map(|v| v.name.as_str())
        .collect();
    match hardware_domains[..] {
        [_] => {}
        [] => {
            return Err(bad_vm(
                "(all)",
                "no VM has phv,hardware-domain; exactly one must",
            ));
        }
        [first, ..] => {
            return Err(bad_vm(
                first,
                format!(
                    "{} VMs have phv,hardware-domain; exactly one may",
                    hardware_domains.len()
                ),
            ));
        }
    }
    // Each vCPU is pinned to its own pCPU.
    let vcpus: u64 = vms.iter().map(|v| u64::from(v.cpus)).sum();
    if vcpus > pcpus as u64 {
        let last = vms.last().map(|v| v.name.as_str()).unwrap_or_default();
        return Err(bad_vm(
            last,
            format!("VMs need {vcpus} pCPUs in total, the platform has {pcpus}"),
        ));
    }
    for (index, vm) in vms.iter().enumerate() {
        let Some(base) = vm.memory_base else { continue };
        let ram = Region::new(base, vm.memory_size);
        if base.checked_add(vm.memory_size).is_none()
            || !memory
                .iter()
                .any(|m| m.base <= ram.base && ram.end() <= m.end())
        {
            return Err(bad_vm(
                &vm.name,
                format!(
                    "phv,memory-base {base:#x} + {:#x} is not inside RAM",
                    vm.memory_size
                ),
            ));
        }
        for other in vms.iter().skip(index + 1) {
            if let Some(other_base) = other.memory_base
                && ram.overlaps(&Region::new(other_base, other.memory_size))
            {
                return Err(bad_vm(
                    &vm.name,
                    format!("RAM overlaps VM {}'s", other.name),
                ));
            }
        }
    }
    Ok(vms)
}

fn vm(dt: &DeviceTree, id: NodeId) -> Result<VmConfig, PlatformError> {
    let node_name = dt.node(id).name;
    // A malformed label is reported under the node name.
    let name = match dt.prop_str(id, "label") {
        Ok(Some(label)) if !label.is_empty() => label.to_string(),
        Ok(_) => node_name.to_string(),
        Err(_) => return Err(bad_vm(node_name, "label is not a string")),
    };
    let number = |prop: &'static str| {
        dt.prop_u64(id, prop)
            .map_err(|_| bad_vm(&name, format!("{prop} must be one or two 32-bit cells")))
    };
    let memory_size =
        number("memory")?.ok_or_else(|| bad_vm(&name, "missing memory (RAM size in bytes)"))?;
    if memory_size == 0 || !memory_size.is_multiple_of(VM_RAM_ALIGN) {
        return Err(bad_vm(
            &name,
            format!("memory size {memory_size:#x} must be a nonzero multiple of 2 MiB"),
        ));
    }
    let memory_base = number("phv,memory-base")?;
    if let Some(base) = memory_base
        && !base.is_multiple_of(VM_RAM_ALIGN)
    {
        return Err(bad_vm(
            &name,
            format!("phv,memory-base {base:#x} is not 2 MiB aligned"),
        ));
    }
    let cpus = dt
        .prop_u32(id, "cpus")
        .map_err(|_| bad_vm(&name, "cpus must be one 32-bit cell"))?
        .ok_or_else(|| bad_vm(&name, "missing cpus (number of vCPUs)"))?;
    if cpus == 0 {
        return Err(bad_vm(&name, "cpus must be at least 1"));
    }
    let modules: Vec<NodeId> = dt
        .children(id)
        .filter(|&c| dt.is_compatible(c, &[KERNEL_COMPATIBLE]))
        .collect();
    let module = match modules[..] {
        [module] => module,
        [] => {
            return Err(bad_vm(
                &name,
                "no module with compatible \"multiboot,kernel\"",
            ));
        }
        _ => return Err(bad_vm(&name, "more than one \"multiboot,kernel\" module")),
    };
    let kernel = module_region(dt, &name, module, "kernel")?;
    let ramdisks: Vec<NodeId> = dt
        .children(id)
        .filter(|&c| dt.is_compatible(c, &[RAMDISK_COMPATIBLE]))
        .collect();
    let ramdisk = match ramdisks[..] {
        [] => None,
        [ramdisk] => Some(module_region(dt, &name, ramdisk, "ramdisk")?),
        _ => return Err(bad_vm(&name, "more than one \"multiboot,ramdisk\" module")),
    };
    let string = |node: NodeId, prop: &'static str| {
        dt.prop_str(node, prop)
            .map_err(|_| bad_vm(&name, format!("{prop} is not a string")))
    };
    let bootargs = match string(module, "bootargs")? {
        Some(args) => args,
        None => string(id, "bootargs")?.unwrap_or_default(),
    };
    let mut pci_devices = Vec::new();
    for text in dt
        .prop_strings(id, "phv,pci-devices")
        .map_err(|_| bad_vm(&name, "phv,pci-devices is not a string list"))?
        .unwrap_or_default()
    {
        let Some(address) = PciFunctionAddress::parse(text) else {
            return Err(bad_vm(
                &name,
                format!("phv,pci-devices: \"{text}\" is not a function address SSSS:BB:DD.F"),
            ));
        };
        if pci_devices.contains(&address) {
            return Err(bad_vm(
                &name,
                format!("phv,pci-devices names {address} twice"),
            ));
        }
        pci_devices.push(address);
    }
    let mut pci_reset_methods = Vec::new();
    for text in dt
        .prop_strings(id, "phv,pci-reset-methods")
        .map_err(|_| bad_vm(&name, "phv,pci-reset-methods is not a string list"))?
        .unwrap_or_default()
    {
        let parsed = text.split_once('=').and_then(|(addr, methods)| {
            let addr = PciFunctionAddress::parse(addr)?;
            let methods: Vec<String> = methods
                .split(',')
                .map(|m| String::from(m.trim()))
                .filter(|m| !m.is_empty())
                .collect();
            (!methods.is_empty()).then_some((addr, methods))
        });
        match parsed {
            Some(entry) => pci_reset_methods.push(entry),
            None => {
                return Err(bad_vm(
                    &name,
                    format!(
                        "phv,pci-reset-methods: \"{text}\" is not SSSS:BB:DD.F=method[,method...]"
                    ),
                ));
            }
        }
    }
    let aer_deadline_ms = dt
        .prop_u32(id, "phv,aer-deadline-ms")
        .map_err(|_| bad_vm(&name, "phv,aer-deadline-ms must be one 32-bit cell"))?;
    if aer_deadline_ms == Some(0) {
        return Err(bad_vm(&name, "phv,aer-deadline-ms must be at least 1"));
    }
    Ok(VmConfig {
        aer_deadline_ms,
        hardware_domain: dt.has_prop(id, "phv,hardware-domain"),
        memory_size,
        memory_base,
        cpus,
        kernel,
        ramdisk,
        bootargs: String::from(bootargs),
        pci_devices,
        pci_whole_units: dt.has_prop(id, "phv,pci-whole-units"),
        pci_reset_methods,
        name,
    })
}
