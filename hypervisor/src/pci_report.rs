//! Machine-readable report of a PCI segment's tree, units and resets.
//!
//! On PCI_ENUMERATION_DONE the hypervisor logs each line of [`lines`]
//! prefixed `pci-json ` (so the console shows `phv: pci-json {...}`);
//! `cargo xtask pci-report` collects them into one JSON document. One JSON
//! object per line, in this order:
//!
//! ```text
//! {"type":"function","bdf":"0000:01:00.0","vendor":"1b36","device":"0010",
//!  "class":"010802","header_type":0,"multifunction":false,"kind":"endpoint",
//!  "parent":"0000:00:01.0","unit":"0000:01:00.0",
//!  "reset_methods":[{"method":"flr","scope":["0000:01:00.0"]},...],
//!  "quarantine":null}
//! {"type":"unit","id":"0000:04:00.0","members":["0000:04:00.0",...]}
//! {"type":"end","segment":"0000","functions":18,"units":13,"orphans":0,
//!  "quarantined":1}
//! ```
//!
//! `parent` is `null` on the root bus. `kind` is the function's
//! [`FunctionKind`] (PCIe port type, or conventional). `reset_methods` are
//! in the order they would be tried (the tracker's `reset_methods`), each
//! with the functions it would reset (`reset_scope`); a method whose scope
//! cannot be computed has `"scope":null` and an `"error"`. Functions and
//! units are in address order; the `end` line closes the segment's report.
//! `quarantine` is `null`, or why the function is never handed to a guest:
//! `"no-reset-method"` (no method can reset it; decided at enumeration) or
//! `"not-ready"` (it did not come back after a reset); `quarantined` counts
//! the segment's quarantined functions.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use pci::reset_engine::Quarantine;
use pci::{Bdf, ConfigPort, FunctionKind, Topology};

/// Name of a function kind in the report.
pub fn kind_name(k: FunctionKind) -> &'static str {
    match k {
        FunctionKind::Endpoint => "endpoint",
        FunctionKind::LegacyEndpoint => "legacy-endpoint",
        FunctionKind::Rciep => "rciep",
        FunctionKind::Rcec => "rcec",
        FunctionKind::RootPort => "root-port",
        FunctionKind::UpstreamPort => "upstream-port",
        FunctionKind::DownstreamPort => "downstream-port",
        FunctionKind::PcieToPciBridge => "pcie-to-pci-bridge",
        FunctionKind::PciToPcieBridge => "pci-to-pcie-bridge",
        FunctionKind::Conventional => "conventional",
        FunctionKind::ConventionalBridge => "conventional-bridge",
        FunctionKind::VirtualFunction => "virtual-function",
    }
}

fn bdf_list(out: &mut String, list: &[Bdf]) {
    out.push('[');
    for (i, b) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{b}\"");
    }
    out.push(']');
}

/// The report line of one tracked function (`None` if `bdf` is not
/// attached). Class and header type are read through `port`.
pub fn function_line<P: ConfigPort + ?Sized>(
    topo: &mut Topology,
    port: &mut P,
    quarantine: &Quarantine,
    bdf: Bdf,
) -> Option<String> {
    let f = topo.function(bdf)?.clone();
    let parent = topo.parent_bridge(bdf);
    let class = port.read32(bdf, 0x08) >> 8;
    let header = port.read8(bdf, 0x0e);
    let unit = topo.unit_of(bdf).map(|u| u.0);
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{{\"type\":\"function\",\"bdf\":\"{bdf}\",\"vendor\":\"{:04x}\",\"device\":\"{:04x}\",\
         \"class\":\"{class:06x}\",\"header_type\":{},\"multifunction\":{},\"kind\":\"{}\",",
        f.vendor,
        f.device,
        header & 0x7f,
        f.is_multifunction(),
        kind_name(f.kind),
    );
    match parent {
        Some(p) => {
            let _ = write!(s, "\"parent\":\"{p}\",");
        }
        None => s.push_str("\"parent\":null,"),
    }
    match unit {
        Some(u) => {
            let _ = write!(s, "\"unit\":\"{u}\",");
        }
        None => s.push_str("\"unit\":null,"),
    }
    s.push_str("\"reset_methods\":[");
    match topo.reset_methods(bdf) {
        Ok(methods) => {
            for (i, &m) in methods.as_slice().iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{{\"method\":\"{}\",\"scope\":", m.name());
                match topo.reset_scope(bdf, m) {
                    Ok(scope) => bdf_list(&mut s, &scope),
                    Err(e) => {
                        let _ = write!(s, "null,\"error\":\"{}\"", escape(&format!("{e}")));
                    }
                }
                s.push('}');
            }
            s.push(']');
        }
        Err(e) => {
            let _ = write!(s, "],\"reset_error\":\"{}\"", escape(&format!("{e}")));
        }
    }
    match quarantine.reason(bdf) {
        Some(r) => {
            let _ = write!(
                s,
                ",\"quarantine\":\"{}\"}}",
                crate::resets::quarantine_name(r)
            );
        }
        None => s.push_str(",\"quarantine\":null}"),
    }
    Some(s)
}

/// JSON string contents: quotes, backslashes and control characters escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Every report line of `segment`: its functions, its units, then `end`.
pub fn lines<P: ConfigPort + ?Sized>(
    topo: &mut Topology,
    port: &mut P,
    quarantine: &Quarantine,
    segment: u16,
) -> Vec<String> {
    let bdfs: Vec<Bdf> = topo
        .functions()
        .map(|(b, _)| b)
        .filter(|b| b.segment == segment)
        .collect();
    let mut out: Vec<String> = bdfs
        .iter()
        .filter_map(|&b| function_line(topo, port, quarantine, b))
        .collect();
    let mut units = 0;
    for unit in topo.units().iter() {
        if unit.members.first().is_some_and(|b| b.segment == segment) {
            units += 1;
            let mut s = format!("{{\"type\":\"unit\",\"id\":\"{}\",\"members\":", unit.id.0);
            bdf_list(&mut s, unit.members);
            s.push('}');
            out.push(s);
        }
    }
    let orphans = topo.orphans().filter(|b| b.segment == segment).count();
    let quarantined = bdfs.iter().filter(|&&b| quarantine.contains(b)).count();
    out.push(format!(
        "{{\"type\":\"end\",\"segment\":\"{segment:04x}\",\"functions\":{},\"units\":{units},\"orphans\":{orphans},\"quarantined\":{quarantined}}}",
        bdfs.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pci::sim::{Fabric, Spec, devfn};
    use pci::{HostBridge, TopologyConfig};

    fn tracked() -> (Topology, Fabric) {
        let mut fabric = Fabric::new().with_root_complex(
            0,
            0,
            &[
                (
                    devfn(1, 0),
                    Spec::qemu_root_port().child(0, 0, Spec::qemu_nvme()),
                ),
                (
                    devfn(2, 0),
                    Spec::qemu_root_port().child(
                        0,
                        0,
                        Spec::qemu_pcie_pci_bridge()
                            .child(1, 0, Spec::qemu_e1000e())
                            .child(2, 0, Spec::qemu_e1000e()),
                    ),
                ),
                // Like QEMU's pci-testdev on the root bus: no FLR, no PM,
                // no bridge above it to reset.
                (devfn(5, 0), Spec::conventional(0x1b36, 0x0005).pm(None)),
            ],
        );
        let found = fabric.enumerate();
        let mut topo = Topology::new(TopologyConfig::new(&[HostBridge {
            segment: 0,
            bus_start: 0,
            bus_end: 255,
        }]));
        for &b in found.iter().rev() {
            topo.report_add(b, &mut fabric).unwrap();
        }
        (topo, fabric)
    }

    #[test]
    fn lines_name_every_function_unit_and_reset() {
        let (mut topo, mut fabric) = tracked();
        let n = topo.len();
        let mut q = Quarantine::new();
        q.add(
            Bdf::new(0, 0, 5, 0),
            pci::reset_engine::QuarantineReason::NoResetMethod,
        );
        let out = lines(&mut topo, &mut fabric, &q, 0);
        let functions: Vec<&String> = out
            .iter()
            .filter(|l| l.starts_with("{\"type\":\"function\""))
            .collect();
        assert_eq!(functions.len(), n);
        let nvme = functions
            .iter()
            .find(|l| l.contains("\"vendor\":\"1b36\",\"device\":\"0010\""))
            .unwrap();
        assert!(nvme.contains("\"class\":\"010802\""), "{nvme}");
        assert!(nvme.contains("\"kind\":\"endpoint\""), "{nvme}");
        assert!(nvme.contains("\"parent\":\"0000:00:01.0\""), "{nvme}");
        // nvme: FLR, PM, slot and bus (hot-plug root port) in Linux's order,
        // FLR touching only itself, bus its parent's whole subtree.
        assert!(
            nvme.contains(
                "{\"method\":\"flr\",\"scope\":[\"0000:01:00.0\"]},{\"method\":\"pm\",\"scope\":[\"0000:01:00.0\"]}"
            ),
            "{nvme}"
        );
        assert!(
            nvme.contains("{\"method\":\"bus\",\"scope\":[\"0000:01:00.0\"]}"),
            "{nvme}"
        );
        let rp = functions
            .iter()
            .find(|l| l.contains("\"bdf\":\"0000:00:01.0\""))
            .unwrap();
        assert!(rp.contains("\"parent\":null") && rp.contains("\"header_type\":1"));
        assert!(rp.contains("\"kind\":\"root-port\""));
        assert!(rp.ends_with(",\"quarantine\":null}"), "{rp}");
        let testdev = functions
            .iter()
            .find(|l| l.contains("\"bdf\":\"0000:00:05.0\""))
            .unwrap();
        assert!(
            testdev.ends_with("\"reset_methods\":[],\"quarantine\":\"no-reset-method\"}"),
            "{testdev}"
        );
        // The conventional devices behind the PCIe-to-PCI bridge share a unit
        // with it (DMA aliasing).
        let unit_lines: Vec<&String> = out
            .iter()
            .filter(|l| l.starts_with("{\"type\":\"unit\""))
            .collect();
        let conv = unit_lines
            .iter()
            .find(|l| l.contains("\"id\":\"0000:02:00.0\""))
            .unwrap();
        assert_eq!(
            conv.as_str(),
            "{\"type\":\"unit\",\"id\":\"0000:02:00.0\",\"members\":[\"0000:02:00.0\",\"0000:03:01.0\",\"0000:03:02.0\"]}"
        );
        assert_eq!(
            out.last().unwrap().as_str(),
            format!(
                "{{\"type\":\"end\",\"segment\":\"0000\",\"functions\":{n},\"units\":{},\"orphans\":0,\"quarantined\":1}}",
                unit_lines.len()
            )
        );
        // Every line is one balanced JSON object without raw control characters.
        for l in &out {
            assert!(l.starts_with('{') && l.ends_with('}'));
            assert_eq!(l.matches('{').count(), l.matches('}').count(), "{l}");
            assert_eq!(l.matches('[').count(), l.matches(']').count(), "{l}");
            assert!(!l.chars().any(|c| c.is_control()));
        }
        assert!(
            lines(&mut topo, &mut fabric, &q, 1).len() == 1,
            "other segment: end only"
        );
    }

    #[test]
    fn escapes_json() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }
}
