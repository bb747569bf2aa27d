//! Build a [`Platform`] from a device tree: memory, CPUs, console, timer, PSCI,
//! plus the GIC ([`crate::gic`]), PCIe ([`crate::pcie`]) and VMs ([`crate::vm`]).

use alloc::string::String;
use alloc::vec::Vec;

use crate::blob::{NodeId, Tree};
use crate::dt::DeviceTree;
use crate::{Cpu, Platform, PlatformError, Psci, PsciConduit, Region, Timer, Uart, gic, pcie, vm};

pub fn platform(blob: &[u8]) -> Result<Platform, PlatformError> {
    let dt = DeviceTree::new(Tree::parse(blob)?);
    let gic_node = gic::find(&dt)?;
    let gic = gic::describe(&dt, gic_node)?;
    let memory = memory(&dt)?;
    let cpus = cpus(&dt)?;
    let chosen = dt.find_path("/chosen");
    let (pci_host_bridges, refused_host_bridges) = pcie::host_bridges(&dt, gic_node)?;
    Ok(Platform {
        model: model(&dt),
        reserved: reserved(&dt)?,
        gic,
        uart: uart(&dt, chosen, gic_node)?,
        timer: timer(&dt, gic_node)?,
        psci: psci(&dt)?,
        pci_host_bridges,
        refused_host_bridges,
        vms: vm::vms(&dt, chosen, cpus.len(), &memory)?,
        exit_method: vm::exit_method(&dt, chosen)?,
        aer_storm: vm::aer_storm(&dt, chosen)?,
        test_hypervisor_bugs: chosen.is_some_and(|c| dt.has_prop(c, "phv,test-hypervisor-bugs")),
        memory,
        cpus,
    })
}

fn model(dt: &DeviceTree) -> String {
    let root = dt.root();
    match dt.prop_str(root, "model") {
        Ok(Some(model)) => String::from(model),
        _ => dt.first_compatible(root),
    }
}

/// Sort by base and merge overlapping or touching regions; drop empty ones.
fn sort_and_merge(mut regions: Vec<Region>) -> Vec<Region> {
    regions.retain(|r| r.size != 0);
    regions.sort();
    let mut merged: Vec<Region> = Vec::with_capacity(regions.len());
    for region in regions {
        match merged.last_mut() {
            Some(last) if region.base <= last.end() => {
                let end = last.end().max(region.end());
                last.size = end - last.base;
            }
            _ => merged.push(region),
        }
    }
    merged
}

fn memory(dt: &DeviceTree) -> Result<Vec<Region>, PlatformError> {
    let mut regions = Vec::new();
    for id in dt.all() {
        if dt.device_type(id) == Some("memory") && dt.is_enabled(id) {
            regions.extend(dt.reg(id)?);
        }
    }
    let merged = sort_and_merge(regions);
    if merged.is_empty() {
        return Err(PlatformError::MissingNode(
            "memory node with device_type = \"memory\" and a nonzero size (bootloaders usually add it)",
        ));
    }
    Ok(merged)
}

/// `/memreserve/` entries and every enabled `/reserved-memory` child with a
/// `reg` (children with only `size` are allocated by the OS: not reserved yet).
fn reserved(dt: &DeviceTree) -> Result<Vec<Region>, PlatformError> {
    let mut regions = dt.tree.memreserve.clone();
    if let Some(parent) = dt.find_path("/reserved-memory") {
        for child in dt.children(parent) {
            if dt.is_enabled(child) && dt.has_prop(child, "reg") {
                regions.extend(dt.reg(child)?);
            }
        }
    }
    Ok(sort_and_merge(regions))
}

/// CPU nodes under `/cpus`, in DT order. As Linux, only `status = "fail"`
/// excludes a CPU: a "disabled" CPU may still be started through PSCI.
fn cpus(dt: &DeviceTree) -> Result<Vec<Cpu>, PlatformError> {
    let parent = dt
        .find_path("/cpus")
        .ok_or(PlatformError::MissingNode("/cpus"))?;
    let mut cpus = Vec::new();
    for id in dt.children(parent) {
        let is_cpu = dt.device_type(id) == Some("cpu") || dt.node(id).base_name() == "cpu";
        let failed = matches!(dt.prop_str(id, "status"), Ok(Some(s)) if s.starts_with("fail"));
        if !is_cpu || failed {
            continue;
        }
        let (mpidr, _) = *dt
            .raw_reg(id)?
            .first()
            .ok_or_else(|| dt.bad(id, "reg", "empty"))?;
        let mpidr =
            u64::try_from(mpidr).map_err(|_| dt.bad(id, "reg", "MPIDR wider than 64 bits"))?;
        let enable_method = dt.prop_str(id, "enable-method")?.map(String::from);
        cpus.push(Cpu {
            mpidr,
            enable_method,
        });
    }
    if cpus.is_empty() {
        return Err(PlatformError::MissingNode("/cpus/cpu"));
    }
    Ok(cpus)
}

/// The console: `/chosen/stdout-path` (options after ':' stripped, aliases
/// resolved), else the first enabled PL011.
fn uart(
    dt: &DeviceTree,
    chosen: Option<NodeId>,
    gic: NodeId,
) -> Result<Option<Uart>, PlatformError> {
    let stdout = match chosen {
        Some(chosen) => dt
            .prop_str(chosen, "stdout-path")?
            .or(dt.prop_str(chosen, "linux,stdout-path")?)
            .and_then(|path| dt.resolve_path_or_alias(path.split(':').next().unwrap_or(path)))
            .filter(|&id| dt.has_prop(id, "reg")),
        None => None,
    };
    let console = stdout.or_else(|| {
        dt.all().find(|&id| {
            dt.is_compatible(id, &["arm,pl011"]) && dt.is_enabled(id) && dt.has_prop(id, "reg")
        })
    });
    let Some(id) = console else {
        return Ok(None);
    };
    let region = *dt
        .reg(id)?
        .first()
        .ok_or_else(|| dt.bad(id, "reg", "empty"))?;
    let irq = dt
        .gic_interrupts(id, gic)?
        .first()
        .copied()
        .flatten()
        .map(|irq| irq.intid);
    Ok(Some(Uart {
        compatible: dt.first_compatible(id),
        region,
        irq,
    }))
}

/// Generic timer PPIs. Positional order is secure phys, non-secure phys,
/// virt, hyp phys, hyp virt; `interrupt-names` overrides it when present.
fn timer(dt: &DeviceTree, gic: NodeId) -> Result<Timer, PlatformError> {
    let id = dt
        .all()
        .find(|&id| {
            dt.is_compatible(id, &["arm,armv8-timer", "arm,armv7-timer"]) && dt.is_enabled(id)
        })
        .ok_or(PlatformError::MissingNode(
            "timer (compatible \"arm,armv8-timer\")",
        ))?;
    let irqs = dt.gic_interrupts(id, gic)?;
    const POSITIONAL: [&str; 5] = ["sec-phys", "phys", "virt", "hyp-phys", "hyp-virt"];
    let names = dt.prop_strings(id, "interrupt-names")?;
    let find = |wanted: &str| -> Option<u32> {
        let index = match &names {
            Some(names) => names.iter().position(|n| *n == wanted)?,
            None => POSITIONAL.iter().position(|n| *n == wanted)?,
        };
        irqs.get(index).copied().flatten().map(|irq| irq.intid)
    };
    Ok(Timer {
        secure_phys: find("sec-phys"),
        nonsecure_phys: find("phys").ok_or_else(|| {
            dt.bad(
                id,
                "interrupts",
                "no non-secure physical timer PPI on the GIC",
            )
        })?,
        virt: find("virt")
            .ok_or_else(|| dt.bad(id, "interrupts", "no virtual timer PPI on the GIC"))?,
        hyp_phys: find("hyp-phys"),
        hyp_virt: find("hyp-virt"),
        frequency: dt.prop_u32(id, "clock-frequency")?,
    })
}

/// The first enabled `arm,psci*` node (normally `/psci`).
fn psci(dt: &DeviceTree) -> Result<Option<Psci>, PlatformError> {
    let Some(id) = dt.all().find(|&id| {
        dt.is_enabled(id) && dt.compatibles(id).iter().any(|c| c.starts_with("arm,psci"))
    }) else {
        return Ok(None);
    };
    let conduit = match dt.prop_str(id, "method")? {
        Some("smc") => PsciConduit::Smc,
        Some("hvc") => PsciConduit::Hvc,
        Some(_) => return Err(dt.bad(id, "method", "expected \"smc\" or \"hvc\"")),
        None => return Err(dt.missing(id, "method")),
    };
    Ok(Some(Psci {
        compatible: dt.first_compatible(id),
        conduit,
    }))
}
