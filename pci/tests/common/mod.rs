#![allow(dead_code)]

use pci::sim::Fabric;
use pci::{Bdf, HostBridge, Topology, TopologyConfig};

/// "bb:dd.f" on segment 0, or "ssss:bb:dd.f".
pub fn b(s: &str) -> Bdf {
    let parts: Vec<&str> = s.split(':').collect();
    let (seg, bus, df) = match parts.as_slice() {
        [bus, df] => (0, *bus, *df),
        [seg, bus, df] => (u16::from_str_radix(seg, 16).unwrap(), *bus, *df),
        _ => panic!("bad bdf {s}"),
    };
    let (d, f) = df.split_once('.').unwrap();
    Bdf::new(
        seg,
        u8::from_str_radix(bus, 16).unwrap(),
        u8::from_str_radix(d, 16).unwrap(),
        f.parse().unwrap(),
    )
}

pub fn config(segments: &[(u16, u8)]) -> TopologyConfig {
    let hbs: Vec<HostBridge> = segments
        .iter()
        .map(|&(segment, bus_start)| HostBridge {
            segment,
            bus_start,
            bus_end: 255,
        })
        .collect();
    TopologyConfig::new(&hbs)
}

/// Enumerates the fabric and reports every function in address order.
pub fn track(fabric: &mut Fabric) -> Topology {
    track_segments(fabric, &[(0, 0)])
}

pub fn track_segments(fabric: &mut Fabric, segments: &[(u16, u8)]) -> Topology {
    let bdfs = fabric.enumerate();
    let mut t = Topology::new(config(segments));
    for bdf in bdfs {
        t.report_add(bdf, fabric)
            .unwrap_or_else(|e| panic!("report {bdf}: {e:?}"));
    }
    assert_eq!(t.orphans().count(), 0);
    t.check_invariants().unwrap();
    t
}

/// Units as sorted lists of "bb:dd.f" strings (segment 0) for hand checks.
pub fn units(t: &mut Topology) -> Vec<Vec<String>> {
    t.units()
        .iter()
        .map(|u| {
            u.members
                .iter()
                .map(|m| {
                    if m.segment == 0 {
                        format!("{:02x}:{:02x}.{}", m.bus, m.device(), m.function())
                    } else {
                        format!("{m}")
                    }
                })
                .collect()
        })
        .collect()
}

pub fn set(units: &[&[&str]]) -> Vec<Vec<String>> {
    units
        .iter()
        .map(|u| u.iter().map(|s| s.to_string()).collect())
        .collect()
}
