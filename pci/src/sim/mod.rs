//! A simulated PCIe fabric that answers config accesses like hardware.
//!
//! Build it from [`Spec`] descriptions (one root complex per segment), let
//! [`Fabric::enumerate`] assign bus numbers the way firmware or the hardware
//! domain would, then use it as a [`ConfigPort`]. Config requests are routed
//! by the bus numbers programmed into the bridges, exactly as a real
//! hierarchy routes type 1 requests: a bridge whose bus numbers are reset
//! hides everything below it.
//!
//! Modelled behaviour: BAR sizing, bus number registers, RW1C status bits,
//! FLR and AF FLR (the function returns to its reset state), PM D3hot→D0
//! (reset unless NoSoftRst), Secondary Bus Reset (everything below the bridge
//! returns to its reset state while the bit is held: BARs, command, bus
//! numbers, MSI-X tables), readiness after a reset (RRS or all-ones for a
//! configurable time, or never), SR-IOV VFs appearing with VF Enable, and AER
//! errors that set the source's status and the root port's Root Error Status
//! and Error Source ID.

pub mod cper;
mod layout;
mod memory;
pub mod qemu;
mod spec;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

pub use spec::{
    ACS_ENABLED, ACS_NONE_ADVERTISED, ACS_QEMU, FnSpec, NotReady, SimAcs, SimBar, SimKind,
    SimReadiness, SimSriov, Spec,
};

use crate::addr::Bdf;
use crate::port::ConfigPort;
use crate::regs::*;
use layout::Template;

const NONE: u32 = u32::MAX;

/// Builds `devfn` from device and function numbers.
pub const fn devfn(device: u8, function: u8) -> u8 {
    ((device & 0x1f) << 3) | (function & 7)
}

#[derive(Debug)]
struct SimFn {
    tpl: Arc<Template>,
    cfg: Box<[u8]>,
    /// MSI-X table, 4 dwords per entry.
    msix: Box<[u32]>,
    devfn: u8,
    /// Bridge above (NONE: on the root bus). A VF has its PF's parent.
    parent: u32,
    children: Vec<u32>,
    vfs: Vec<u32>,
    vf_of: u32,
    /// Address the function currently answers at, if routable.
    at: Option<Bdf>,
    /// Not ready before this time (ns).
    ready_at: u64,
    never_ready: bool,
    /// Held in reset by an asserted SBR above.
    held: bool,
    present: bool,
    /// Link retrains asked for (Retrain Link written; it reads 0).
    retrains: u32,
}

#[derive(Debug)]
struct SimSegment {
    segment: u16,
    root_bus: u8,
    root_fns: Vec<u32>,
    /// (bus << 8 | devfn) -> function index.
    table: Vec<u32>,
}

/// An AER message delivered to a root port by [`Fabric::inject_aer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimAerMessage {
    pub root_port: Bdf,
    pub source: Bdf,
    pub fatal: bool,
    pub correctable: bool,
    /// The root port's Root Error Command enables an interrupt for it.
    pub interrupt: bool,
}

/// An error to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimAerError {
    /// Correctable error status bit number.
    Correctable(u8),
    /// Uncorrectable error status bit number; severity comes from the
    /// function's Uncorrectable Severity register.
    Uncorrectable(u8),
}

/// The simulated fabric.
#[derive(Debug, Default)]
pub struct Fabric {
    fns: Vec<SimFn>,
    segments: Vec<SimSegment>,
    templates: Vec<Arc<Template>>,
    now_ns: u64,
    routes_dirty: bool,
    bad_accesses: u64,
    /// BAR memory outside MSI-X tables written through [`crate::MemoryPort`]:
    /// (function index, BAR, dword offset) -> value.
    bar_ram: alloc::collections::BTreeMap<(u32, u8, u32), u32>,
}

impl Fabric {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a root complex: segment, root bus number and the functions on
    /// the root bus (root ports, RCiEPs, ...) as (devfn, spec).
    pub fn add_root_complex(&mut self, segment: u16, root_bus: u8, children: &[(u8, Spec)]) {
        let mut roots = Vec::new();
        self.add_children(NONE, children, &mut roots);
        self.segments.push(SimSegment {
            segment,
            root_bus,
            root_fns: roots,
            table: vec![NONE; 1 << 16],
        });
        self.routes_dirty = true;
    }

    /// Builder form of [`Fabric::add_root_complex`].
    pub fn with_root_complex(
        mut self,
        segment: u16,
        root_bus: u8,
        children: &[(u8, Spec)],
    ) -> Self {
        self.add_root_complex(segment, root_bus, children);
        self
    }

    fn template(&mut self, spec: &FnSpec, multifunction: bool, vf: bool) -> Arc<Template> {
        if let Some(t) = self
            .templates
            .iter()
            .find(|t| t.multifunction == multifunction && t.vf == vf && t.spec == *spec)
        {
            return t.clone();
        }
        let t = Arc::new(layout::build(spec, multifunction, vf));
        self.templates.push(t.clone());
        t
    }

    fn new_fn(&mut self, tpl: Arc<Template>, devfn: u8, parent: u32) -> u32 {
        let idx = self.fns.len() as u32;
        let entries = tpl.msix_entries as usize;
        let mut msix = vec![0u32; entries * 4].into_boxed_slice();
        for e in msix.chunks_mut(4) {
            e[3] = MSIX_ENTRY_VECTOR_CTRL_MASKED;
        }
        self.fns.push(SimFn {
            cfg: tpl.defaults.clone(),
            tpl,
            msix,
            devfn,
            parent,
            children: Vec::new(),
            vfs: Vec::new(),
            vf_of: NONE,
            at: None,
            ready_at: 0,
            never_ready: false,
            held: false,
            present: true,
            retrains: 0,
        });
        idx
    }

    fn add_children(&mut self, parent: u32, children: &[(u8, Spec)], out: &mut Vec<u32>) {
        for (devfn, spec) in children {
            let dev = devfn >> 3;
            // Like QEMU: the bit where the function asks for it; by default
            // only function 0 of a slot with more functions has it.
            let slot_has_more = children.iter().any(|(d, _)| d >> 3 == dev && d & 7 != 0);
            let multifunction = spec
                .f
                .multifunction
                .unwrap_or(devfn & 7 == 0 && slot_has_more);
            let tpl = self.template(&spec.f, multifunction, false);
            let idx = self.new_fn(tpl, *devfn, parent);
            out.push(idx);
            if let Some(sriov) = spec.f.sriov {
                let mut vf_spec = spec.f.clone();
                vf_spec.device = sriov.vf_device;
                vf_spec.sriov = None;
                vf_spec.acs = None;
                vf_spec.af_flr = false;
                vf_spec.pm = None;
                let vtpl = self.template(&vf_spec, false, true);
                for i in 0..sriov.total_vfs {
                    let v = self.new_fn(vtpl.clone(), i as u8, parent);
                    self.fns[v as usize].vf_of = idx;
                    self.fns[idx as usize].vfs.push(v);
                }
            }
            let mut kids = Vec::new();
            self.add_children(idx, &spec.children, &mut kids);
            self.fns[idx as usize].children = kids;
        }
    }

    // ---- time ----

    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn advance_ns(&mut self, ns: u64) {
        self.now_ns = self.now_ns.saturating_add(ns);
    }

    // ---- enumeration ----

    /// Assigns bus numbers depth first (like firmware or Linux), enables RRS
    /// Software Visibility on root ports that have it and all VFs of every PF,
    /// and returns the functions that now answer, in address order.
    pub fn enumerate(&mut self) -> Vec<Bdf> {
        for s in 0..self.segments.len() {
            let root_bus = self.segments[s].root_bus;
            let roots = self.segments[s].root_fns.clone();
            let mut next = root_bus as u16 + 1;
            for r in roots {
                self.assign(r, root_bus, &mut next);
            }
        }
        self.routes_dirty = true;
        self.present_functions()
    }

    fn assign(&mut self, idx: u32, bus: u8, next: &mut u16) {
        let f = &mut self.fns[idx as usize];
        let layout = f.tpl.layout;
        if f.tpl.spec.kind == SimKind::RootPort && f.tpl.spec.rrs_sv && layout.pcie != 0 {
            let o = (layout.pcie + PCIE_RTCTL) as usize;
            f.cfg[o] |= PCIE_RTCTL_RRS_SVE as u8;
        }
        if layout.sriov != 0 {
            let total = u16::from_le_bytes([
                f.cfg[(layout.sriov + SRIOV_TOTAL_VF) as usize],
                f.cfg[(layout.sriov + SRIOV_TOTAL_VF + 1) as usize],
            ]);
            let o = (layout.sriov + SRIOV_NUM_VF) as usize;
            f.cfg[o..o + 2].copy_from_slice(&total.to_le_bytes());
            f.cfg[(layout.sriov + SRIOV_CTRL) as usize] |= (SRIOV_CTRL_VFE | SRIOV_CTRL_MSE) as u8;
        }
        if !f.tpl.spec.kind.is_bridge() || f.tpl.vf {
            return;
        }
        if *next > 255 {
            f.cfg[PRIMARY_BUS as usize..PRIMARY_BUS as usize + 3].fill(0);
            return;
        }
        let secondary = *next as u8;
        *next += 1;
        f.cfg[PRIMARY_BUS as usize] = bus;
        f.cfg[SECONDARY_BUS as usize] = secondary;
        f.cfg[SUBORDINATE_BUS as usize] = 0xff;
        let mut kids = core::mem::take(&mut f.children);
        kids.sort_by_key(|&c| self.fns[c as usize].devfn);
        for &c in &kids {
            self.assign(c, secondary, next);
        }
        let f = &mut self.fns[idx as usize];
        f.children = kids;
        f.cfg[SUBORDINATE_BUS as usize] = (*next - 1).min(255) as u8;
    }

    /// Every function that currently answers at an address, in address order.
    pub fn present_functions(&mut self) -> Vec<Bdf> {
        self.rebuild_routes();
        let mut out: Vec<Bdf> = self
            .fns
            .iter()
            .filter(|f| f.present)
            .filter_map(|f| f.at)
            .collect();
        out.sort_unstable();
        out
    }

    // ---- routing ----

    fn rebuild_routes(&mut self) {
        if !self.routes_dirty {
            return;
        }
        self.routes_dirty = false;
        for f in &mut self.fns {
            f.at = None;
        }
        for s in 0..self.segments.len() {
            self.segments[s].table.fill(NONE);
            let roots = core::mem::take(&mut self.segments[s].root_fns);
            let root_bus = self.segments[s].root_bus;
            for &r in &roots {
                self.map(s, root_bus, r);
                self.descend(s, r, root_bus as u16 + 1, 255);
            }
            self.segments[s].root_fns = roots;
        }
    }

    fn map(&mut self, s: usize, bus: u8, idx: u32) {
        let f = &self.fns[idx as usize];
        let rid = ((bus as u16) << 8) | f.devfn as u16;
        let seg = self.segments[s].segment;
        if self.segments[s].table[rid as usize] == NONE {
            self.segments[s].table[rid as usize] = idx;
            self.fns[idx as usize].at = Some(Bdf::from_rid(seg, rid));
        }
        // VFs of a PF answer when VF Enable is set.
        let f = &self.fns[idx as usize];
        let sriov = f.tpl.layout.sriov;
        if sriov == 0 || f.vfs.is_empty() {
            return;
        }
        let ctrl = rd16(&f.cfg, sriov + SRIOV_CTRL);
        if ctrl & SRIOV_CTRL_VFE == 0 {
            return;
        }
        let num = rd16(&f.cfg, sriov + SRIOV_NUM_VF).min(f.vfs.len() as u16);
        let offset = rd16(&f.cfg, sriov + SRIOV_VF_OFFSET) as u32;
        let stride = rd16(&f.cfg, sriov + SRIOV_VF_STRIDE) as u32;
        let vfs = f.vfs.clone();
        for (i, &v) in vfs.iter().enumerate().take(num as usize) {
            let vrid = rid as u32 + offset + stride * i as u32;
            if vrid > 0xffff {
                break;
            }
            if self.segments[s].table[vrid as usize] == NONE {
                self.segments[s].table[vrid as usize] = v;
                self.fns[v as usize].at = Some(Bdf::from_rid(seg, vrid as u16));
            }
        }
    }

    fn descend(&mut self, s: usize, idx: u32, lo: u16, hi: u16) {
        let f = &self.fns[idx as usize];
        if !f.tpl.spec.kind.is_bridge() || f.tpl.vf {
            return;
        }
        let sec = f.cfg[SECONDARY_BUS as usize] as u16;
        let sub = f.cfg[SUBORDINATE_BUS as usize] as u16;
        if sec == 0 || sec < lo || sub > hi || sec > sub {
            return;
        }
        let kids = core::mem::take(&mut self.fns[idx as usize].children);
        for &c in &kids {
            self.map(s, sec as u8, c);
            self.descend(s, c, sec + 1, sub);
        }
        self.fns[idx as usize].children = kids;
    }

    fn route(&mut self, bdf: Bdf) -> Option<usize> {
        self.rebuild_routes();
        let seg = self.segments.iter().find(|s| s.segment == bdf.segment)?;
        let idx = *seg.table.get(bdf.rid() as usize)?;
        if idx == NONE {
            return None;
        }
        let f = &self.fns[idx as usize];
        f.present.then_some(idx as usize)
    }

    fn ready(&self, idx: usize) -> bool {
        let f = &self.fns[idx];
        !f.held && !f.never_ready && self.now_ns >= f.ready_at
    }

    /// Whether the root port above `idx` has RRS Software Visibility enabled.
    fn rrs_visible(&self, mut idx: usize) -> bool {
        loop {
            let f = &self.fns[idx];
            if f.tpl.spec.kind == SimKind::RootPort && !f.tpl.vf && f.tpl.layout.pcie != 0 {
                return rd16(&f.cfg, f.tpl.layout.pcie + PCIE_RTCTL) & PCIE_RTCTL_RRS_SVE != 0;
            }
            if f.parent == NONE {
                return false;
            }
            idx = f.parent as usize;
        }
    }

    // ---- config access ----

    fn read(&mut self, bdf: Bdf, offset: u16, width: u16) -> u32 {
        let ones = if width == 4 {
            u32::MAX
        } else {
            (1u32 << (width * 8)) - 1
        };
        if offset >= CONFIG_SPACE_SIZE || !offset.is_multiple_of(width) {
            self.bad_accesses += 1;
            return ones;
        }
        let Some(idx) = self.route(bdf) else {
            return ones;
        };
        if !self.ready(idx) {
            let f = &self.fns[idx];
            // Held in reset, the link is down: unsupported request, all-ones.
            // Initialising after reset: RRS completions.
            if !f.held
                && offset == 0
                && f.tpl.spec.readiness.mode == NotReady::Rrs
                && self.rrs_visible(idx)
            {
                return (VENDOR_ID_RRS as u32 | 0xffff_0000) & ones;
            }
            return ones;
        }
        let cfg = &self.fns[idx].cfg;
        let mut v = 0u32;
        for i in 0..width {
            let b = cfg.get((offset + i) as usize).copied().unwrap_or(0);
            v |= (b as u32) << (8 * i);
        }
        v
    }

    fn write(&mut self, bdf: Bdf, offset: u16, width: u16, value: u32) {
        if offset >= CONFIG_SPACE_SIZE || !offset.is_multiple_of(width) {
            self.bad_accesses += 1;
            return;
        }
        let Some(idx) = self.route(bdf) else {
            return;
        };
        if !self.ready(idx) {
            return;
        }
        let tpl = self.fns[idx].tpl.clone();
        let layout = tpl.layout;
        let touches = |reg: u16, len: u16| reg != 0 && offset < reg + len && reg < offset + width;
        let byte_written = |reg: u16| -> Option<u8> {
            (reg >= offset && reg < offset + width).then(|| (value >> (8 * (reg - offset))) as u8)
        };
        let bridge = tpl.spec.kind.is_bridge() && !tpl.vf;
        let old_bctl = rd16(&self.fns[idx].cfg, BRIDGE_CONTROL);
        let old_pm = if layout.pm != 0 {
            rd16(&self.fns[idx].cfg, layout.pm + PM_CTRL)
        } else {
            0
        };
        {
            let f = &mut self.fns[idx];
            for i in 0..width {
                let o = (offset + i) as usize;
                let (Some(cur), Some(&wm), Some(&c)) =
                    (f.cfg.get(o).copied(), tpl.wmask.get(o), tpl.w1c.get(o))
                else {
                    continue;
                };
                let v = (value >> (8 * i)) as u8;
                f.cfg[o] = ((cur & !wm) | (v & wm)) & !(v & c);
            }
        }
        if bridge && touches(PRIMARY_BUS, 3) {
            self.routes_dirty = true;
        }
        if bridge && touches(BRIDGE_CONTROL, 2) {
            let new = rd16(&self.fns[idx].cfg, BRIDGE_CONTROL);
            let was = old_bctl & BRIDGE_CONTROL_SBR != 0;
            let is = new & BRIDGE_CONTROL_SBR != 0;
            if is && !was {
                self.sbr_assert(idx);
            } else if was && !is {
                self.sbr_release(idx);
            }
        }
        if layout.pcie != 0
            && (tpl.spec.flr || tpl.vf)
            && byte_written(layout.pcie + PCIE_DEVCTL + 1).is_some_and(|b| b & 0x80 != 0)
        {
            self.reset_function(idx);
            return;
        }
        if layout.pcie != 0
            && byte_written(layout.pcie + PCIE_LNKCTL).is_some_and(|b| b & (1 << 5) != 0)
        {
            self.fns[idx].retrains = self.fns[idx].retrains.saturating_add(1);
        }
        if layout.af != 0 && byte_written(layout.af + AF_CTRL).is_some_and(|b| b & AF_CTRL_FLR != 0)
        {
            self.reset_function(idx);
            return;
        }
        if layout.pm != 0 && touches(layout.pm + PM_CTRL, 2) {
            let new = rd16(&self.fns[idx].cfg, layout.pm + PM_CTRL);
            let from_d3 = old_pm & PM_CTRL_STATE_MASK == PM_CTRL_D3HOT;
            let to_d0 = new & PM_CTRL_STATE_MASK == PM_CTRL_D0;
            if from_d3 && to_d0 && old_pm & PM_CTRL_NO_SOFT_RESET == 0 {
                self.reset_function(idx);
                return;
            }
        }
        if layout.sriov != 0 && touches(layout.sriov + SRIOV_CTRL, 0x0a) {
            self.routes_dirty = true;
        }
    }

    /// Returns a function (and, for a PF, its VFs) to its reset state.
    fn reset_state(&mut self, idx: usize) {
        let now = self.now_ns;
        let f = &mut self.fns[idx];
        f.cfg.copy_from_slice(&f.tpl.defaults);
        for e in f.msix.chunks_mut(4) {
            e.copy_from_slice(&[0, 0, 0, MSIX_ENTRY_VECTOR_CTRL_MASKED]);
        }
        let r = f.tpl.spec.readiness;
        f.ready_at = now.saturating_add(r.delay_ns);
        f.never_ready |= r.never;
        // A bridge's bus numbers return to 0: it routes nothing below now.
        if f.tpl.spec.kind.is_bridge() && !f.tpl.vf {
            self.routes_dirty = true;
        }
        if !f.vfs.is_empty() {
            let vfs = f.vfs.clone();
            for v in vfs {
                self.reset_state(v as usize);
            }
            self.routes_dirty = true;
        }
    }

    fn reset_function(&mut self, idx: usize) {
        self.reset_state(idx);
    }

    fn subtree(&self, idx: usize, out: &mut Vec<usize>) {
        for &c in &self.fns[idx].children {
            out.push(c as usize);
            out.extend(self.fns[c as usize].vfs.iter().map(|&v| v as usize));
            self.subtree(c as usize, out);
        }
    }

    fn sbr_assert(&mut self, idx: usize) {
        let mut below = Vec::new();
        self.subtree(idx, &mut below);
        for &b in &below {
            self.reset_state(b);
            self.fns[b].held = true;
        }
        self.routes_dirty = true;
    }

    fn sbr_release(&mut self, idx: usize) {
        let mut below = Vec::new();
        self.subtree(idx, &mut below);
        let now = self.now_ns;
        for &b in &below {
            let f = &mut self.fns[b];
            f.held = false;
            f.ready_at = now.saturating_add(f.tpl.spec.readiness.delay_ns);
        }
    }

    // ---- test hooks ----

    /// Accesses with an offset past 4 KiB or misaligned for their width:
    /// never legitimate, so tests assert this stays 0.
    pub fn bad_accesses(&self) -> u64 {
        self.bad_accesses
    }

    fn index_of(&mut self, bdf: Bdf) -> Option<usize> {
        self.rebuild_routes();
        let seg = self.segments.iter().find(|s| s.segment == bdf.segment)?;
        let idx = *seg.table.get(bdf.rid() as usize)?;
        (idx != NONE).then_some(idx as usize)
    }

    /// How many link retrains the port at `bdf` was asked for (Retrain
    /// Link written, which reads 0 as on hardware).
    pub fn link_retrains(&mut self, bdf: Bdf) -> u32 {
        self.index_of(bdf).map_or(0, |i| self.fns[i].retrains)
    }

    /// Which physical function answers at `bdf` now (an index stable for
    /// the fabric's life, whatever bus numbers its bridges get): tests
    /// that follow a device across renumbering compare these.
    pub fn device_at(&mut self, bdf: Bdf) -> Option<usize> {
        self.index_of(bdf)
    }

    /// Where physical function `device` ([`Self::device_at`]) answers now
    /// (`None`: unreachable, its bridges do not route to it).
    pub fn address_of(&mut self, device: usize) -> Option<Bdf> {
        self.rebuild_routes();
        self.fns.get(device)?.at
    }

    /// Every physical function below the bridge at `bdf`, reachable or
    /// not ([`Self::device_at`] indices): what its Secondary Bus Reset
    /// reaches.
    pub fn devices_below(&mut self, bdf: Bdf) -> Vec<usize> {
        let Some(idx) = self.index_of(bdf) else {
            return Vec::new();
        };
        let mut below = Vec::new();
        self.subtree(idx, &mut below);
        below
    }

    /// Writes raw bytes into a function's config space, bypassing the
    /// register semantics: for corrupting capability lists in fault tests.
    /// Returns false if no function answers at `bdf` or the range is outside
    /// its modelled space.
    pub fn poke(&mut self, bdf: Bdf, offset: u16, bytes: &[u8]) -> bool {
        let Some(idx) = self.index_of(bdf) else {
            return false;
        };
        let o = offset as usize;
        match self.fns[idx].cfg.get_mut(o..o + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.routes_dirty = true;
                true
            }
            None => false,
        }
    }

    /// Surprise removal (false) or return (true) of a function.
    pub fn set_present(&mut self, bdf: Bdf, present: bool) -> bool {
        match self.index_of(bdf) {
            Some(idx) => {
                self.fns[idx].present = present;
                true
            }
            None => false,
        }
    }

    /// The addresses of every function physically below the bridge at
    /// `bdf` (its secondary side, whatever bus numbers they were given):
    /// what its Secondary Bus Reset reaches.
    pub fn below(&mut self, bdf: Bdf) -> Vec<Bdf> {
        let Some(idx) = self.index_of(bdf) else {
            return Vec::new();
        };
        let mut below = Vec::new();
        self.subtree(idx, &mut below);
        below.iter().filter_map(|&i| self.fns[i].at).collect()
    }

    /// Whether the function at `bdf` is in its post-reset not-ready window.
    pub fn is_ready(&mut self, bdf: Bdf) -> Option<bool> {
        let idx = self.index_of(bdf)?;
        Some(self.ready(idx))
    }

    /// A reset the device does on its own, through its own registers (a
    /// BIST, a controller reset that reinitialises the MSI-X logic: seed
    /// 001): the MSI-X table returns to its reset values (every entry zero
    /// and masked) while config space is untouched. False if nothing is at
    /// `bdf`.
    pub fn backdoor_msix_reset(&mut self, bdf: Bdf) -> bool {
        let Some(idx) = self.index_of(bdf) else {
            return false;
        };
        for e in self.fns[idx].msix.chunks_mut(4) {
            e.copy_from_slice(&[0, 0, 0, MSIX_ENTRY_VECTOR_CTRL_MASKED]);
        }
        true
    }

    /// Reads MSI-X table entry `entry` (address lo, address hi, data, vector control).
    pub fn msix_entry(&mut self, bdf: Bdf, entry: u16) -> Option<[u32; 4]> {
        let idx = self.index_of(bdf)?;
        let e = self.fns[idx]
            .msix
            .get(entry as usize * 4..entry as usize * 4 + 4)?;
        Some([e[0], e[1], e[2], e[3]])
    }

    /// Reads a dword of BAR memory. Only the MSI-X table is modelled; other
    /// BAR memory reads as zero. All-ones if the function does not answer or
    /// its memory decoding is off.
    pub fn bar_read32(&mut self, bdf: Bdf, bar: u8, offset: u32) -> u32 {
        match self.msix_slot(bdf, bar, offset) {
            Ok(Some((idx, slot))) => self.fns[idx].msix[slot],
            Ok(None) => 0,
            Err(()) => u32::MAX,
        }
    }

    /// Writes a dword of BAR memory (see [`Fabric::bar_read32`]).
    pub fn bar_write32(&mut self, bdf: Bdf, bar: u8, offset: u32, value: u32) {
        if let Ok(Some((idx, slot))) = self.msix_slot(bdf, bar, offset) {
            self.fns[idx].msix[slot] = value;
        }
    }

    fn msix_slot(&mut self, bdf: Bdf, bar: u8, offset: u32) -> Result<Option<(usize, usize)>, ()> {
        let idx = self.route(bdf).ok_or(())?;
        if !self.ready(idx) {
            return Err(());
        }
        let f = &self.fns[idx];
        let vf_mse = f.vf_of != NONE;
        if !vf_mse && rd16(&f.cfg, COMMAND) & COMMAND_MEMORY == 0 {
            return Err(());
        }
        let l = f.tpl.layout;
        if l.msix == 0 || !offset.is_multiple_of(4) {
            return Ok(None);
        }
        let table = rd32(&f.cfg, l.msix + MSIX_TABLE);
        if table & MSIX_BIR_MASK != bar as u32 {
            return Ok(None);
        }
        let start = table & !MSIX_BIR_MASK;
        let slot = offset.wrapping_sub(start) / 4;
        if offset < start || slot as usize >= f.msix.len() {
            return Ok(None);
        }
        Ok(Some((idx, slot as usize)))
    }

    /// Raises an AER error at `bdf`: sets its status bit and, unless masked,
    /// delivers the message to the root port above (Root Error Status and
    /// Error Source ID, like hardware). Returns the delivered message.
    pub fn inject_aer(&mut self, bdf: Bdf, err: SimAerError) -> Option<SimAerMessage> {
        let idx = self.route(bdf)?;
        let aer = self.fns[idx].tpl.layout.aer;
        if aer == 0 {
            return None;
        }
        let (correctable, bit) = match err {
            SimAerError::Correctable(b) => (true, b),
            SimAerError::Uncorrectable(b) => (false, b),
        };
        if bit > 31 {
            return None;
        }
        let m = 1u32 << bit;
        let f = &mut self.fns[idx];
        let (status, mask) = if correctable {
            (aer + AER_COR_STATUS, aer + AER_COR_MASK)
        } else {
            (aer + AER_UNCOR_STATUS, aer + AER_UNCOR_MASK)
        };
        if f.tpl
            .w1c
            .get(status as usize..status as usize + 4)
            .map_or(0, rd32_slice)
            & m
            == 0
        {
            return None;
        }
        let cur = rd32(&f.cfg, status);
        wr32(&mut f.cfg, status, cur | m);
        if rd32(&f.cfg, mask) & m != 0 {
            return None;
        }
        let fatal = !correctable && rd32(&f.cfg, aer + AER_UNCOR_SEVER) & m != 0;
        // Find the root port above (or the function itself).
        let mut rp = idx;
        loop {
            let g = &self.fns[rp];
            if g.tpl.spec.kind == SimKind::RootPort && !g.tpl.vf {
                break;
            }
            if g.parent == NONE {
                return None;
            }
            rp = g.parent as usize;
        }
        let root_port = self.fns[rp].at?;
        let raer = self.fns[rp].tpl.layout.aer;
        if raer == 0 {
            return None;
        }
        let g = &mut self.fns[rp];
        let mut st = rd32(&g.cfg, raer + AER_ROOT_STATUS);
        let mut src = rd32(&g.cfg, raer + AER_ERROR_SOURCE);
        let rid = bdf.rid() as u32;
        if correctable {
            if st & AER_ROOT_STATUS_COR != 0 {
                st |= AER_ROOT_STATUS_MULTI_COR;
            } else {
                st |= AER_ROOT_STATUS_COR;
                src = (src & 0xffff_0000) | rid;
            }
        } else {
            if st & AER_ROOT_STATUS_UNCOR != 0 {
                st |= AER_ROOT_STATUS_MULTI_UNCOR;
            } else {
                st |= AER_ROOT_STATUS_UNCOR;
                src = (src & 0xffff) | (rid << 16);
                if fatal {
                    st |= AER_ROOT_STATUS_FIRST_FATAL;
                }
            }
            st |= if fatal {
                AER_ROOT_STATUS_FATAL
            } else {
                AER_ROOT_STATUS_NONFATAL
            };
        }
        wr32(&mut g.cfg, raer + AER_ROOT_STATUS, st);
        wr32(&mut g.cfg, raer + AER_ERROR_SOURCE, src);
        let cmd = rd32(&g.cfg, raer + AER_ROOT_COMMAND);
        let interrupt =
            cmd & if correctable {
                1
            } else if fatal {
                4
            } else {
                2
            } != 0;
        Some(SimAerMessage {
            root_port,
            source: bdf,
            fatal,
            correctable,
            interrupt,
        })
    }
}

fn rd16(cfg: &[u8], off: u16) -> u16 {
    let o = off as usize;
    match cfg.get(o..o + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn rd32(cfg: &[u8], off: u16) -> u32 {
    let o = off as usize;
    cfg.get(o..o + 4).map_or(0, rd32_slice)
}

fn rd32_slice(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn wr32(cfg: &mut [u8], off: u16, v: u32) {
    let o = off as usize;
    if let Some(d) = cfg.get_mut(o..o + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

impl ConfigPort for Fabric {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        self.read(bdf, offset, 4)
    }
    fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
        self.read(bdf, offset, 2) as u16
    }
    fn read8(&mut self, bdf: Bdf, offset: u16) -> u8 {
        self.read(bdf, offset, 1) as u8
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        self.write(bdf, offset, 4, value)
    }
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        self.write(bdf, offset, 2, value as u32)
    }
    fn write8(&mut self, bdf: Bdf, offset: u16, value: u8) {
        self.write(bdf, offset, 1, value as u32)
    }
}
