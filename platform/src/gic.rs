//! The interrupt controller: which GIC, and its register frames.

use alloc::string::String;
use alloc::vec::Vec;

use crate::blob::NodeId;
use crate::dt::DeviceTree;
use crate::{Gic, PlatformError, Region};

/// GICv2-architecture compatibles (Linux `irq-gic.c`), whose `reg` is
/// GICD, GICC, then optionally GICH and GICV.
const GIC_V2: &[&str] = &[
    "arm,arm11mp-gic",
    "arm,cortex-a15-gic",
    "arm,cortex-a7-gic",
    "arm,cortex-a9-gic",
    "arm,eb11mp-gic",
    "arm,gic-400",
    "arm,pl390",
    "arm,tc11mp-gic",
    "brcm,brahma-b15-gic",
    "qcom,msm-8660-qgic",
    "qcom,msm-qgic2",
];

/// GICv3/v4 compatibles (Linux `irq-gic-v3.c`), whose `reg` is GICD, then
/// `#redistributor-regions` GICR regions, then optionally GICC, GICH, GICV.
const GIC_V3: &[&str] = &["arm,gic-v3", "qcom,msm8996-gic-v3"];

/// Find the GIC the CPUs take their interrupts from: the root's
/// `interrupt-parent` if it is a GIC we know, else the first enabled GIC.
pub fn find(dt: &DeviceTree) -> Result<NodeId, PlatformError> {
    let is_gic = |id: NodeId| dt.is_compatible(id, GIC_V2) || dt.is_compatible(id, GIC_V3);
    let root_parent = dt.interrupt_parent(dt.root())?;
    if let Some(id) = root_parent.filter(|&id| is_gic(id)) {
        return Ok(id);
    }
    if let Some(id) = dt
        .all()
        .find(|&id| is_gic(id) && dt.is_enabled(id) && dt.has_prop(id, "interrupt-controller"))
    {
        return Ok(id);
    }
    // Say what the board has instead, so a user knows what to add.
    let other = root_parent
        .or_else(|| dt.all().find(|&id| dt.has_prop(id, "interrupt-controller")))
        .map(|id| dt.first_compatible(id));
    match other {
        Some(compatible) => Err(PlatformError::Unsupported(alloc::format!(
            "interrupt controller {compatible}"
        ))),
        None => Err(PlatformError::MissingNode("interrupt-controller")),
    }
}

pub fn describe(dt: &DeviceTree, gic: NodeId) -> Result<Gic, PlatformError> {
    let compatible = dt.compatibles(gic);
    let first = compatible
        .first()
        .map(|s| String::from(*s))
        .unwrap_or_default();
    let reg = dt.reg(gic)?;
    let maintenance_irq = dt
        .gic_interrupts(gic, gic)?
        .first()
        .copied()
        .flatten()
        .map(|irq| irq.intid);
    if dt.is_compatible(gic, GIC_V3) {
        let redistributor_regions =
            dt.prop_u32(gic, "#redistributor-regions")?.unwrap_or(1) as usize;
        if redistributor_regions == 0 {
            return Err(dt.bad(
                gic,
                "#redistributor-regions",
                "a GICv3 needs at least one redistributor region",
            ));
        }
        let gicr_end = redistributor_regions.saturating_add(1);
        let (Some(&gicd), Some(gicr)) = (reg.first(), reg.get(1..gicr_end)) else {
            return Err(dt.bad(
                gic,
                "reg",
                "needs GICD and #redistributor-regions GICR regions",
            ));
        };
        let rest = reg.get(gicr_end..).unwrap_or_default();
        let its = frames_of_children(dt, gic, &["arm,gic-v3-its"])?;
        return Ok(Gic::V3 {
            compatible: first,
            gicd,
            gicr: gicr.to_vec(),
            gicc: rest.first().copied(),
            gich: rest.get(1).copied(),
            gicv: rest.get(2).copied(),
            maintenance_irq,
            its,
        });
    }
    let (Some(&gicd), Some(&gicc)) = (reg.first(), reg.get(1)) else {
        return Err(dt.bad(gic, "reg", "needs at least the GICD and GICC regions"));
    };
    Ok(Gic::V2 {
        compatible: first,
        gicd,
        gicc,
        gich: reg.get(2).copied(),
        gicv: reg.get(3).copied(),
        maintenance_irq,
        v2m: frames_of_children(dt, gic, &["arm,gic-v2m-frame"])?,
    })
}

/// First `reg` region of every enabled child of `gic` with one of `compatible`.
fn frames_of_children(
    dt: &DeviceTree,
    gic: NodeId,
    compatible: &[&str],
) -> Result<Vec<Region>, PlatformError> {
    let mut frames = Vec::new();
    for child in dt.children(gic) {
        if dt.is_compatible(child, compatible)
            && dt.is_enabled(child)
            && let Some(&frame) = dt.reg(child)?.first()
        {
            frames.push(frame);
        }
    }
    Ok(frames)
}
