//! PCIe host bridges: config window, bus range, address windows, INTx routing.

use alloc::vec::Vec;

use crate::blob::NodeId;
use crate::dt::{DeviceTree, cells_to_u128, decode_gic_spec};
use crate::{
    ConfigAccess, PciHostBridge, PciIntxRoute, PciWindow, PciWindowKind, PlatformError,
    RefusedHostBridge,
};

/// Compatibles whose config space is plain ECAM, reachable with the generic accessor.
const ECAM_GENERIC: &[&str] = &["pci-host-ecam-generic"];

/// ECAM gives each bus 1 MiB of config space (32 devices x 8 functions x 4 KiB).
const ECAM_BYTES_PER_BUS: u64 = 1 << 20;

/// PCI `ranges` child address: phys.hi bits 25:24 = space code, bit 30 = prefetchable.
const SPACE_CODE_SHIFT: u32 = 24;
const SPACE_IO: u32 = 0b01;
const SPACE_MEM32: u32 = 0b10;
const SPACE_MEM64: u32 = 0b11;
const PREFETCHABLE: u32 = 1 << 30;

fn is_pci(dt: &DeviceTree, id: NodeId) -> bool {
    matches!(dt.device_type(id), Some("pci") | Some("pciex"))
}

/// Host bridges: enabled `device_type = "pci"` nodes with no PCI ancestor
/// (root ports and PCI-PCI bridges described below them are not host bridges).
///
/// A bridge whose node cannot be described (malformed `reg`, `bus-range`,
/// `ranges` or `interrupt-map`) is refused with its reason instead of failing
/// the whole platform: nothing maps it or describes it to a VM, so its
/// devices stay unused, and the rest of the machine boots. A refused bridge
/// keeps its place in the default segment numbering, so the others' segments
/// do not depend on it.
pub fn host_bridges(
    dt: &DeviceTree,
    gic: NodeId,
) -> Result<(Vec<PciHostBridge>, Vec<RefusedHostBridge>), PlatformError> {
    let mut bridges = Vec::new();
    let mut refused = Vec::new();
    let mut index = 0;
    for id in dt.all() {
        if !is_pci(dt, id) || !dt.is_enabled(id) {
            continue;
        }
        let mut ancestor = dt.parent(id);
        let mut nested = false;
        while let Some(a) = ancestor {
            nested |= is_pci(dt, a);
            ancestor = dt.parent(a);
        }
        if nested {
            continue;
        }
        match describe(dt, id, gic, index) {
            Ok(bridge) => bridges.push(bridge),
            Err(reason) => refused.push(RefusedHostBridge {
                path: dt.path(id),
                reason,
            }),
        }
        index += 1;
    }
    Ok((bridges, refused))
}

fn describe(
    dt: &DeviceTree,
    id: NodeId,
    gic: NodeId,
    index: usize,
) -> Result<PciHostBridge, PlatformError> {
    let compatible = dt.first_compatible(id);
    let access = if dt.is_compatible(id, ECAM_GENERIC) {
        ConfigAccess::Ecam
    } else {
        ConfigAccess::Controller(compatible.clone())
    };
    // DesignWare and most others name it "config"; Layerscape "config_axi_slave".
    let named_config = match dt.reg_named(id, |n| n == "config")? {
        Some(region) => Some(region),
        None => dt.reg_named(id, |n| n.starts_with("config"))?,
    };
    let config = match named_config {
        Some(region) => region,
        None => *dt
            .reg(id)?
            .first()
            .ok_or_else(|| dt.bad(id, "reg", "no config space region"))?,
    };
    let segment = match dt.prop_u32(id, "linux,pci-domain")? {
        Some(domain) => {
            u16::try_from(domain).map_err(|_| dt.bad(id, "linux,pci-domain", "above 65535"))?
        }
        None => u16::try_from(index)
            .map_err(|_| dt.bad(id, "device_type", "more than 65536 host bridges"))?,
    };
    let (bus_start, mut bus_end) = match dt.prop_cells(id, "bus-range")? {
        None => (0u8, 255u8),
        Some(range) => {
            let [start, end] = range[..] else {
                return Err(dt.bad(id, "bus-range", "expected two cells"));
            };
            let (Ok(start), Ok(end)) = (u8::try_from(start), u8::try_from(end)) else {
                return Err(dt.bad(id, "bus-range", "bus numbers above 255"));
            };
            if start > end {
                return Err(dt.bad(id, "bus-range", "start is above end"));
            }
            (start, end)
        }
    };
    if access == ConfigAccess::Ecam {
        // As Linux's pci-host-common: a window too small for the bus range
        // limits the range, so no ECAM access can fall outside the window.
        let buses = config.size / ECAM_BYTES_PER_BUS;
        if buses == 0 {
            return Err(dt.bad(id, "reg", "ECAM window smaller than one bus (1 MiB)"));
        }
        let last = u64::from(bus_start).saturating_add(buses - 1);
        bus_end = bus_end.min(u8::try_from(last).unwrap_or(u8::MAX));
    }
    let (intx_mask, intx_map) = interrupt_map(dt, id, gic)?;
    Ok(PciHostBridge {
        path: dt.path(id),
        compatible,
        access,
        config,
        segment,
        bus_start,
        bus_end,
        windows: windows(dt, id)?,
        intx_mask,
        intx_map,
        has_msi: dt.has_prop(id, "msi-map") || dt.has_prop(id, "msi-parent"),
    })
}

/// `ranges` of a host bridge: (PCI address 3 cells, CPU address, size 2 cells).
fn windows(dt: &DeviceTree, id: NodeId) -> Result<Vec<PciWindow>, PlatformError> {
    let Some(ranges) = dt.prop_cells(id, "ranges")? else {
        return Ok(Vec::new());
    };
    let parent = dt
        .parent(id)
        .ok_or_else(|| dt.bad(id, "ranges", "host bridge at the root"))?;
    let child_cells = dt.address_cells(id)? as usize;
    let size_cells = dt.size_cells(id)? as usize;
    if child_cells != 3 {
        return Err(dt.bad(id, "#address-cells", "a PCI bus has 3 address cells"));
    }
    let parent_cells = dt.address_cells(parent)? as usize;
    let entry = child_cells + parent_cells + size_cells;
    if ranges.len() % entry != 0 {
        return Err(dt.bad(
            id,
            "ranges",
            "length does not match the #address-cells/#size-cells",
        ));
    }
    let mut windows = Vec::new();
    for e in ranges.chunks_exact(entry) {
        let (hi, mid, lo) = (e[0], e[1], e[2]);
        let kind = match (hi >> SPACE_CODE_SHIFT) & 0b11 {
            SPACE_IO => PciWindowKind::Io,
            SPACE_MEM32 => PciWindowKind::Mem32,
            SPACE_MEM64 => PciWindowKind::Mem64,
            // Space code 0 is configuration space: not a window.
            _ => continue,
        };
        let parent_address = cells_to_u128(&e[child_cells..child_cells + parent_cells])
            .ok_or_else(|| dt.bad(id, "ranges", "CPU address wider than 128 bits"))?;
        let size = cells_to_u128(&e[child_cells + parent_cells..])
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| dt.bad(id, "ranges", "window size does not fit in 64 bits"))?;
        windows.push(PciWindow {
            kind,
            prefetchable: hi & PREFETCHABLE != 0,
            pci_base: (u64::from(mid) << 32) | u64::from(lo),
            cpu_base: dt.translate(parent, parent_address)?,
            size,
        });
    }
    Ok(windows)
}

/// `interrupt-map-mask` (address hi, pin) and the `interrupt-map` entries
/// that end at the GIC (followed through any further nexus). Entries routed
/// to another controller (e.g. a bridge's own INTx demultiplexer) are left
/// out: they have no GIC INTID.
fn interrupt_map(
    dt: &DeviceTree,
    id: NodeId,
    gic: NodeId,
) -> Result<((u32, u32), Vec<PciIntxRoute>), PlatformError> {
    if !dt.has_prop(id, "interrupt-map") {
        return Ok(((u32::MAX, u32::MAX), Vec::new()));
    }
    let map = dt.interrupt_map(id)?;
    let mask_hi = map.mask.first().copied().unwrap_or(0);
    let mask_pin = map.mask.get(map.address_cells).copied().unwrap_or(0);
    let mut routes = Vec::new();
    for entry in map.entries {
        let Some((controller, spec)) =
            dt.resolve_interrupt(entry.parent, &entry.parent_address, &entry.parent_spec)?
        else {
            continue;
        };
        if controller != gic {
            continue;
        }
        let irq = decode_gic_spec(&spec)
            .ok_or_else(|| dt.bad(id, "interrupt-map", "not a valid GIC interrupt specifier"))?;
        let pin = entry.child_spec.first().copied().unwrap_or(0) & mask_pin;
        routes.push(PciIntxRoute {
            child_addr_hi: entry.child_address.first().copied().unwrap_or(0) & mask_hi,
            pin: u8::try_from(pin)
                .map_err(|_| dt.bad(id, "interrupt-map", "INTx pin above 255"))?,
            intid: irq.intid,
            level: irq.level,
        });
    }
    Ok(((mask_hi, mask_pin), routes))
}
