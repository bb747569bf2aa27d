//! Builds a fabric from QEMU `-device` arguments, so a host test can mirror
//! the topology a QEMU scenario boots (`qemu_args` of a scenario file).
//!
//! Understood drivers: `pcie-root-port`, `x3130-upstream`,
//! `xio3130-downstream`, `pcie-pci-bridge`, `e1000e`, `nvme`, `igb` (SR-IOV
//! PF, 8 VFs at offset 0x80 stride 2, as QEMU's) and `e1000` (conventional).
//! Understood properties: `id`, `bus` (`pcie.0` or the id of a port or
//! bridge), `addr` (`S` or `S.F`, hex), `disable-acs`, `hotplug`,
//! `multifunction`; others are ignored. Like QEMU's `virt` machine, the root
//! bus holds the host bridge (1b36:0008) at 00.0 and devices without `addr`
//! take the first free slot.

use alloc::string::String;
use alloc::vec::Vec;

use super::spec::{SimKind, SimSriov, Spec};
use super::{Fabric, devfn};

/// Why QEMU arguments could not be mirrored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QemuArgsError {
    UnknownDriver(String),
    UnknownBus(String),
    BadAddr(String),
    AddressInUse { bus: String, devfn: u8 },
}

struct Dev {
    id: Option<String>,
    driver: String,
    bus: String,
    addr: Option<u8>,
    disable_acs: bool,
    hotplug: bool,
    multifunction: bool,
}

fn flag(v: &str) -> bool {
    matches!(v, "on" | "true" | "yes" | "1")
}

fn parse_addr(v: &str) -> Option<u8> {
    let num = |s: &str| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let (slot, func) = match v.split_once('.') {
        Some((s, f)) => (num(s)?, num(f)?),
        None => (num(v)?, 0),
    };
    (slot < 32 && func < 8).then_some(devfn(slot, func))
}

fn spec_for(d: &Dev) -> Result<Spec, QemuArgsError> {
    let acs = |s: Spec| if d.disable_acs { s.acs(None) } else { s };
    Ok(match d.driver.as_str() {
        "pcie-root-port" => acs(Spec::qemu_root_port()).hotplug_slot(d.hotplug),
        "x3130-upstream" => acs(Spec::qemu_x3130_upstream()),
        "xio3130-downstream" => acs(Spec::qemu_x3130_downstream()).hotplug_slot(d.hotplug),
        "pcie-pci-bridge" => Spec::qemu_pcie_pci_bridge(),
        "e1000e" => Spec::qemu_e1000e(),
        "nvme" => Spec::qemu_nvme(),
        "e1000" => Spec::conventional(0x8086, 0x100e),
        "igb" => {
            let mut s = Spec::qemu_e1000e();
            s.f.device = 0x10c9;
            s.f.flr = true;
            s.f.sriov = Some(SimSriov {
                total_vfs: 8,
                vf_device: 0x10ca,
                first_vf_offset: 0x80,
                vf_stride: 2,
            });
            s
        }
        other => return Err(QemuArgsError::UnknownDriver(other.into())),
    })
}

/// Root-bus children described by the `-device` arguments in `args`.
pub fn root_bus_from_args(args: &[&str]) -> Result<Vec<(u8, Spec)>, QemuArgsError> {
    let mut devs: Vec<Dev> = Vec::new();
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        if a != "-device" {
            continue;
        }
        let Some(&spec) = it.next() else { break };
        let mut parts = spec.split(',');
        let driver = parts.next().unwrap_or_default().into();
        let mut d = Dev {
            id: None,
            driver,
            bus: "pcie.0".into(),
            addr: None,
            disable_acs: false,
            hotplug: true,
            multifunction: false,
        };
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, "on"));
            match k {
                "id" => d.id = Some(v.into()),
                "bus" => d.bus = v.into(),
                "addr" => {
                    d.addr = Some(parse_addr(v).ok_or_else(|| QemuArgsError::BadAddr(v.into()))?)
                }
                "disable-acs" => d.disable_acs = flag(v),
                "hotplug" => d.hotplug = flag(v),
                "multifunction" => d.multifunction = flag(v),
                _ => {}
            }
        }
        devs.push(d);
    }
    for d in &devs {
        if d.bus != "pcie.0" && !devs.iter().any(|p| p.id.as_deref() == Some(d.bus.as_str())) {
            return Err(QemuArgsError::UnknownBus(d.bus.clone()));
        }
    }
    let mut host = Spec::new(SimKind::Conventional, 0x1b36, 0x0008);
    host.f.class_rev = 0x060000 << 8;
    host.f.bars = Default::default();
    host.f.pm = None;
    host.f.aer = false;
    let mut root = alloc::vec![(0u8, host)];
    children(&devs, "pcie.0", 1, &mut root)?;
    Ok(root)
}

/// Places the devices on `bus` into `out` (which may already hold some), in
/// argument order, then builds each one's own children.
fn children(
    devs: &[Dev],
    bus: &str,
    first_slot: u8,
    out: &mut Vec<(u8, Spec)>,
) -> Result<(), QemuArgsError> {
    for d in devs.iter().filter(|d| d.bus == bus) {
        let at = match d.addr {
            Some(a) => a,
            None => (first_slot..32)
                .map(|s| devfn(s, 0))
                .find(|a| !out.iter().any(|(o, _)| o >> 3 == a >> 3))
                .unwrap_or(0xff),
        };
        if out.iter().any(|(o, _)| *o == at) {
            return Err(QemuArgsError::AddressInUse {
                bus: bus.into(),
                devfn: at,
            });
        }
        // QEMU sets the header's Multi-Function bit exactly where
        // `multifunction=on` is given (it refuses functions > 0 unless
        // function 0 has it; functions > 0 may leave it off).
        let mut spec = spec_for(d)?.multifunction(d.multifunction);
        if let Some(id) = &d.id {
            let mut kids = Vec::new();
            children(devs, id, 0, &mut kids)?;
            spec.children = kids;
        }
        out.push((at, spec));
    }
    Ok(())
}

impl Fabric {
    /// A one-segment fabric (root bus 0) mirroring QEMU `-device` arguments.
    pub fn from_qemu_args(args: &[&str]) -> Result<Self, QemuArgsError> {
        Ok(Fabric::new().with_root_complex(0, 0, &root_bus_from_args(args)?))
    }
}
