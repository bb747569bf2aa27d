//! Device-tree semantics on top of the raw [`Tree`]: typed property reads,
//! `#address-cells`/`#size-cells`, `ranges` translation to CPU physical
//! addresses, phandles, paths and aliases, and interrupt resolution to GIC
//! INTIDs. Every helper reports what is missing or malformed as a
//! [`PlatformError`] naming the node and property.

use alloc::string::String;
use alloc::vec::Vec;

use crate::PlatformError;
use crate::Region;
use crate::blob::{Node, NodeId, Tree};

/// Defaults from the Devicetree Specification when a bus node omits them.
const DEFAULT_ADDRESS_CELLS: u32 = 2;
const DEFAULT_SIZE_CELLS: u32 = 1;
/// Addresses are carried as u128 while translating: 4 cells is the widest we accept.
const MAX_CELLS: u32 = 4;

/// A device tree ready for queries.
#[derive(Debug)]
pub struct DeviceTree<'a> {
    pub tree: Tree<'a>,
    /// (phandle, node), sorted by phandle.
    phandles: Vec<(u32, NodeId)>,
}

/// A decoded GIC interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicIrq {
    pub intid: u32,
    /// Level-sensitive (flags 4 or 8) rather than edge (1 or 2).
    pub level: bool,
}

fn cell(value: &[u8], index: usize) -> Option<u32> {
    let start = index.checked_mul(4)?;
    let bytes: [u8; 4] = value.get(start..start.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Big-endian cells of a property value; None if the length is not a multiple of 4.
pub fn cells(value: &[u8]) -> Option<Vec<u32>> {
    if !value.len().is_multiple_of(4) {
        return None;
    }
    Some(
        value
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Combine `cells` (most significant first) into one number; None if wider than 128 bits.
pub fn cells_to_u128(cells: &[u32]) -> Option<u128> {
    if cells.len() > MAX_CELLS as usize {
        return None;
    }
    Some(
        cells
            .iter()
            .fold(0u128, |acc, &c| (acc << 32) | u128::from(c)),
    )
}

/// The strings of a NUL-separated string-list property; None if malformed.
pub fn string_list(value: &[u8]) -> Option<Vec<&str>> {
    let body = value.strip_suffix(&[0])?;
    body.split(|&b| b == 0)
        .map(|s| core::str::from_utf8(s).ok())
        .collect()
}

impl<'a> DeviceTree<'a> {
    pub fn new(tree: Tree<'a>) -> Self {
        let mut phandles: Vec<(u32, NodeId)> = Vec::new();
        for (id, node) in tree.nodes.iter().enumerate() {
            let handle = node.prop("phandle").or_else(|| node.prop("linux,phandle"));
            if let Some(handle) = handle.filter(|v| v.len() == 4).and_then(|v| cell(v, 0)) {
                phandles.push((handle, id));
            }
        }
        // Stable sort: with duplicate phandles the first node in blob order wins.
        phandles.sort_by_key(|&(handle, _)| handle);
        Self { tree, phandles }
    }

    pub fn root(&self) -> NodeId {
        self.tree.root()
    }

    /// Node by id. Ids come from this tree, so the fallback (root) is never
    /// taken; it keeps the lookup total rather than panicking.
    pub fn node(&self, id: NodeId) -> &Node<'a> {
        match self.tree.node(id) {
            Some(node) => node,
            None => &self.tree.nodes[0],
        }
    }

    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.tree.node(id).and_then(|n| n.parent)
    }

    pub fn children(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.node(id).children.iter().copied()
    }

    /// All node ids in blob order.
    pub fn all(&self) -> core::ops::Range<NodeId> {
        0..self.tree.nodes.len()
    }

    pub fn by_phandle(&self, handle: u32) -> Option<NodeId> {
        let index = self
            .phandles
            .binary_search_by_key(&handle, |&(h, _)| h)
            .ok()?;
        // binary_search may land on any duplicate; walk back to the first.
        let first = self.phandles[..=index]
            .iter()
            .rposition(|&(h, _)| h != handle)
            .map_or(0, |p| p + 1);
        self.phandles.get(first).map(|&(_, id)| id)
    }

    /// Full path of a node, for error messages and the JSON report.
    pub fn path(&self, id: NodeId) -> String {
        let mut chain = Vec::new();
        let mut cursor = Some(id);
        while let Some(current) = cursor {
            if current == self.root() {
                break;
            }
            chain.push(self.node(current).name);
            cursor = self.parent(current);
        }
        if chain.is_empty() {
            return String::from("/");
        }
        let mut path = String::new();
        for name in chain.iter().rev() {
            path.push('/');
            path.push_str(name);
        }
        path
    }

    /// Resolve an absolute path (`/soc/serial@7e215040`). A component without
    /// a unit address also matches a node that has one (`/pl011` finds
    /// `pl011@9000000`), as Linux does.
    pub fn find_path(&self, path: &str) -> Option<NodeId> {
        let mut current = self.root();
        for component in path.split('/').filter(|c| !c.is_empty()) {
            let exact = self
                .children(current)
                .find(|&c| self.node(c).name == component);
            let loose = || {
                if component.contains('@') {
                    None
                } else {
                    self.children(current)
                        .find(|&c| self.node(c).base_name() == component)
                }
            };
            current = exact.or_else(loose)?;
        }
        Some(current)
    }

    /// Resolve a path or an alias (`serial0`, `serial0/child`) to a node.
    pub fn resolve_path_or_alias(&self, spec: &str) -> Option<NodeId> {
        if spec.starts_with('/') {
            return self.find_path(spec);
        }
        let (alias, rest) = match spec.split_once('/') {
            Some((alias, rest)) => (alias, Some(rest)),
            None => (spec, None),
        };
        let aliases = self.find_path("/aliases")?;
        let target = self.node(aliases).prop(alias).and_then(string_list)?;
        let base = self.find_path(target.first()?)?;
        match rest {
            None => Some(base),
            Some(rest) => {
                let mut full = self.path(base);
                full.push('/');
                full.push_str(rest);
                self.find_path(&full)
            }
        }
    }

    pub fn prop(&self, id: NodeId, name: &str) -> Option<&'a [u8]> {
        self.node(id).prop(name)
    }

    pub fn has_prop(&self, id: NodeId, name: &str) -> bool {
        self.prop(id, name).is_some()
    }

    pub fn bad(&self, id: NodeId, prop: &'static str, why: &'static str) -> PlatformError {
        PlatformError::BadProperty(self.path(id), prop, why)
    }

    pub fn missing(&self, id: NodeId, prop: &'static str) -> PlatformError {
        PlatformError::MissingProperty(self.path(id), prop)
    }

    /// A one-cell property.
    pub fn prop_u32(&self, id: NodeId, name: &'static str) -> Result<Option<u32>, PlatformError> {
        match self.prop(id, name) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(cell(v, 0)),
            Some(_) => Err(self.bad(id, name, "expected one 32-bit cell")),
        }
    }

    /// A one- or two-cell number.
    pub fn prop_u64(&self, id: NodeId, name: &'static str) -> Result<Option<u64>, PlatformError> {
        match self.prop(id, name) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(cell(v, 0).map(u64::from)),
            Some(v) if v.len() == 8 => Ok(cell(v, 0)
                .zip(cell(v, 1))
                .map(|(hi, lo)| (u64::from(hi) << 32) | u64::from(lo))),
            Some(_) => Err(self.bad(id, name, "expected one or two 32-bit cells")),
        }
    }

    pub fn prop_cells(
        &self,
        id: NodeId,
        name: &'static str,
    ) -> Result<Option<Vec<u32>>, PlatformError> {
        match self.prop(id, name) {
            None => Ok(None),
            Some(v) => cells(v)
                .map(Some)
                .ok_or_else(|| self.bad(id, name, "length is not a multiple of 4")),
        }
    }

    pub fn prop_strings(
        &self,
        id: NodeId,
        name: &'static str,
    ) -> Result<Option<Vec<&'a str>>, PlatformError> {
        match self.prop(id, name) {
            None => Ok(None),
            Some(v) => string_list(v)
                .map(Some)
                .ok_or_else(|| self.bad(id, name, "not a list of NUL-terminated UTF-8 strings")),
        }
    }

    /// The first string of a string property.
    pub fn prop_str(
        &self,
        id: NodeId,
        name: &'static str,
    ) -> Result<Option<&'a str>, PlatformError> {
        Ok(self
            .prop_strings(id, name)?
            .and_then(|list| list.first().copied()))
    }

    /// `compatible` strings; a malformed list counts as none (the node then
    /// simply matches nothing, which is what an unknown device is to us).
    pub fn compatibles(&self, id: NodeId) -> Vec<&'a str> {
        self.prop(id, "compatible")
            .and_then(string_list)
            .unwrap_or_default()
    }

    pub fn is_compatible(&self, id: NodeId, any_of: &[&str]) -> bool {
        self.compatibles(id).iter().any(|c| any_of.contains(c))
    }

    pub fn first_compatible(&self, id: NodeId) -> String {
        self.compatibles(id)
            .first()
            .map(|s| String::from(*s))
            .unwrap_or_default()
    }

    /// `status` absent, "okay" or "ok".
    pub fn is_enabled(&self, id: NodeId) -> bool {
        match self.prop(id, "status").and_then(string_list) {
            None => true,
            Some(list) => matches!(list.first(), Some(&"okay") | Some(&"ok")),
        }
    }

    pub fn device_type(&self, id: NodeId) -> Option<&'a str> {
        self.prop(id, "device_type")
            .and_then(string_list)
            .and_then(|l| l.first().copied())
    }

    fn cells_prop(
        &self,
        id: NodeId,
        name: &'static str,
        default: u32,
    ) -> Result<u32, PlatformError> {
        let value = self.prop_u32(id, name)?.unwrap_or(default);
        if value > MAX_CELLS {
            return Err(self.bad(id, name, "more than 4 cells is not supported"));
        }
        Ok(value)
    }

    /// `#address-cells` of a bus node (for its children's addresses).
    pub fn address_cells(&self, bus: NodeId) -> Result<u32, PlatformError> {
        self.cells_prop(bus, "#address-cells", DEFAULT_ADDRESS_CELLS)
    }

    /// `#size-cells` of a bus node.
    pub fn size_cells(&self, bus: NodeId) -> Result<u32, PlatformError> {
        self.cells_prop(bus, "#size-cells", DEFAULT_SIZE_CELLS)
    }

    /// Raw `reg` entries (address, size) in the parent bus's address space.
    pub fn raw_reg(&self, id: NodeId) -> Result<Vec<(u128, u128)>, PlatformError> {
        let Some(parent) = self.parent(id) else {
            return Err(self.bad(id, "reg", "the root node has no parent bus"));
        };
        let address_cells = self.address_cells(parent)? as usize;
        let size_cells = self.size_cells(parent)? as usize;
        let reg = self
            .prop_cells(id, "reg")?
            .ok_or_else(|| self.missing(id, "reg"))?;
        let entry = address_cells + size_cells;
        if entry == 0 || reg.len() % entry != 0 {
            return Err(self.bad(
                id,
                "reg",
                "length does not match parent's #address-cells/#size-cells",
            ));
        }
        Ok(reg
            .chunks_exact(entry)
            .filter_map(|e| {
                Some((
                    cells_to_u128(&e[..address_cells])?,
                    cells_to_u128(&e[address_cells..])?,
                ))
            })
            .collect())
    }

    /// `reg` entries as CPU physical regions, translated through every
    /// ancestor's `ranges`.
    pub fn reg(&self, id: NodeId) -> Result<Vec<Region>, PlatformError> {
        let parent = self
            .parent(id)
            .ok_or_else(|| self.bad(id, "reg", "the root node has no parent bus"))?;
        self.raw_reg(id)?
            .into_iter()
            .map(|(address, size)| {
                let base = self.translate(parent, address)?;
                let size = u64::try_from(size)
                    .map_err(|_| self.bad(id, "reg", "size does not fit in 64 bits"))?;
                // A region may end exactly at 2^64 (Region::end saturates there);
                // one that would go beyond is a malformed tree.
                if u128::from(base) + u128::from(size) > 1u128 << 64 {
                    return Err(self.bad(
                        id,
                        "reg",
                        "region wraps past the end of the address space",
                    ));
                }
                Ok(Region::new(base, size))
            })
            .collect()
    }

    /// The `reg` entry whose `reg-names` name satisfies `wanted`, else None.
    pub fn reg_named(
        &self,
        id: NodeId,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Option<Region>, PlatformError> {
        let Some(names) = self.prop_strings(id, "reg-names")? else {
            return Ok(None);
        };
        let Some(index) = names.iter().position(|n| wanted(n)) else {
            return Ok(None);
        };
        Ok(self.reg(id)?.get(index).copied())
    }

    /// Translate `address`, expressed in the address space of the children of
    /// `bus`, to a CPU physical address.
    pub fn translate(&self, bus: NodeId, address: u128) -> Result<u64, PlatformError> {
        let mut address = address;
        let mut current = bus;
        // Bounded by tree depth: each step goes to the parent.
        while let Some(parent) = self.parent(current) {
            let Some(ranges) = self.prop_cells(current, "ranges")? else {
                return Err(self.bad(
                    current,
                    "ranges",
                    "absent: child addresses cannot be translated to CPU addresses",
                ));
            };
            if !ranges.is_empty() {
                let child_cells = self.address_cells(current)? as usize;
                let parent_cells = self.address_cells(parent)? as usize;
                let size_cells = self.size_cells(current)? as usize;
                let entry = child_cells + parent_cells + size_cells;
                if entry == 0 || ranges.len() % entry != 0 {
                    return Err(self.bad(
                        current,
                        "ranges",
                        "length does not match the #address-cells/#size-cells",
                    ));
                }
                let hit = ranges.chunks_exact(entry).find_map(|e| {
                    let child = cells_to_u128(&e[..child_cells])?;
                    let parent_base = cells_to_u128(&e[child_cells..child_cells + parent_cells])?;
                    let size = cells_to_u128(&e[child_cells + parent_cells..])?;
                    let offset = address.checked_sub(child)?;
                    (offset < size)
                        .then(|| parent_base.checked_add(offset))
                        .flatten()
                });
                address = hit.ok_or_else(|| {
                    self.bad(current, "ranges", "an address is not covered by any range")
                })?;
            }
            current = parent;
        }
        u64::try_from(address)
            .map_err(|_| self.bad(bus, "ranges", "translated address exceeds 64 bits"))
    }

    /// The node's interrupt parent, as Linux's `of_irq_find_parent`: follow
    /// `interrupt-parent` where present, else the tree parent, until a node
    /// with `#interrupt-cells` (a controller or an `interrupt-map` nexus).
    pub fn interrupt_parent(&self, id: NodeId) -> Result<Option<NodeId>, PlatformError> {
        let mut current = id;
        // Each hop visits a node; more hops than nodes means a phandle loop.
        for _ in self.all() {
            let next = match self.prop_u32(current, "interrupt-parent")? {
                Some(handle) => self.by_phandle(handle).ok_or_else(|| {
                    self.bad(
                        current,
                        "interrupt-parent",
                        "phandle does not name any node",
                    )
                })?,
                None => match self.parent(current) {
                    Some(parent) => parent,
                    None => return Ok(None),
                },
            };
            if self.has_prop(next, "#interrupt-cells") {
                return Ok(Some(next));
            }
            current = next;
        }
        Err(self.bad(id, "interrupt-parent", "interrupt-parent chain loops"))
    }

    pub fn interrupt_cells(&self, controller: NodeId) -> Result<u32, PlatformError> {
        let cells = self
            .prop_u32(controller, "#interrupt-cells")?
            .ok_or_else(|| self.missing(controller, "#interrupt-cells"))?;
        // Real controllers use 1 to 4. The bound also keeps a hostile value
        // from sizing an allocation (the default interrupt-map-mask).
        if cells > MAX_INTERRUPT_CELLS {
            return Err(self.bad(controller, "#interrupt-cells", "more than 8 cells"));
        }
        Ok(cells)
    }

    /// The node's interrupts as (interrupt parent, specifier) pairs, from
    /// `interrupts-extended` or `interrupts` + interrupt parent. The parent
    /// may be a nexus: see [`Self::resolve_interrupt`].
    pub fn interrupt_specs(&self, id: NodeId) -> Result<Vec<(NodeId, Vec<u32>)>, PlatformError> {
        let mut specs = Vec::new();
        if let Some(extended) = self.prop_cells(id, "interrupts-extended")? {
            let mut rest: &[u32] = &extended;
            while let Some((&handle, tail)) = rest.split_first() {
                let controller = self.by_phandle(handle).ok_or_else(|| {
                    self.bad(id, "interrupts-extended", "phandle does not name any node")
                })?;
                let count = self.interrupt_cells(controller)? as usize;
                let (spec, tail) = (tail.get(..count), tail.get(count..));
                let (Some(spec), Some(tail)) = (spec, tail) else {
                    return Err(self.bad(
                        id,
                        "interrupts-extended",
                        "truncated interrupt specifier",
                    ));
                };
                specs.push((controller, spec.to_vec()));
                rest = tail;
            }
            return Ok(specs);
        }
        let Some(interrupts) = self.prop_cells(id, "interrupts")? else {
            return Ok(specs);
        };
        let controller = self
            .interrupt_parent(id)?
            .ok_or_else(|| self.missing(id, "interrupt-parent"))?;
        let count = self.interrupt_cells(controller)? as usize;
        if count == 0 || interrupts.len() % count != 0 {
            return Err(self.bad(
                id,
                "interrupts",
                "length is not a multiple of the parent's #interrupt-cells",
            ));
        }
        for spec in interrupts.chunks_exact(count) {
            specs.push((controller, spec.to_vec()));
        }
        Ok(specs)
    }

    /// `#address-cells` used for the child unit address in `nexus`'s
    /// `interrupt-map`: the nexus's own or nearest ancestor's, default 2
    /// (Linux's `of_irq_parse_raw` does the same walk).
    fn nexus_address_cells(&self, nexus: NodeId) -> Result<u32, PlatformError> {
        let mut cursor = Some(nexus);
        while let Some(current) = cursor {
            if self.has_prop(current, "#address-cells") {
                return self.address_cells(current);
            }
            cursor = self.parent(current);
        }
        Ok(DEFAULT_ADDRESS_CELLS)
    }

    /// Parse `nexus`'s `interrupt-map` (and `interrupt-map-mask`, all ones if
    /// absent). Each entry: child unit address (`#address-cells`), child
    /// specifier (`#interrupt-cells`), parent phandle, parent unit address
    /// (the parent's `#address-cells`, 0 if absent, as Linux), parent specifier
    /// (the parent's `#interrupt-cells`).
    pub fn interrupt_map(&self, nexus: NodeId) -> Result<InterruptMap, PlatformError> {
        let address_cells = self.nexus_address_cells(nexus)? as usize;
        let interrupt_cells = self.interrupt_cells(nexus)? as usize;
        let child_cells = address_cells + interrupt_cells;
        let mask = match self.prop_cells(nexus, "interrupt-map-mask")? {
            Some(mask) if mask.len() == child_cells => mask,
            Some(_) => {
                return Err(self.bad(
                    nexus,
                    "interrupt-map-mask",
                    "length is not #address-cells + #interrupt-cells",
                ));
            }
            None => alloc::vec![u32::MAX; child_cells],
        };
        let map = self
            .prop_cells(nexus, "interrupt-map")?
            .ok_or_else(|| self.missing(nexus, "interrupt-map"))?;
        let truncated = || self.bad(nexus, "interrupt-map", "truncated entry");
        let mut entries = Vec::new();
        let mut rest: &[u32] = &map;
        while !rest.is_empty() {
            let child = rest.get(..child_cells).ok_or_else(truncated)?;
            let &handle = rest.get(child_cells).ok_or_else(truncated)?;
            let parent = self.by_phandle(handle).ok_or_else(|| {
                self.bad(nexus, "interrupt-map", "phandle does not name any node")
            })?;
            let parent_address_cells =
                self.prop_u32(parent, "#address-cells")?.unwrap_or(0) as usize;
            let parent_interrupt_cells = self.interrupt_cells(parent)? as usize;
            let address_start = child_cells + 1;
            let spec_start = address_start
                .checked_add(parent_address_cells)
                .ok_or_else(truncated)?;
            let spec_end = spec_start
                .checked_add(parent_interrupt_cells)
                .ok_or_else(truncated)?;
            let parent_address = rest.get(address_start..spec_start).ok_or_else(truncated)?;
            let parent_spec = rest.get(spec_start..spec_end).ok_or_else(truncated)?;
            entries.push(InterruptMapEntry {
                child_address: child.get(..address_cells).unwrap_or_default().to_vec(),
                child_spec: child.get(address_cells..).unwrap_or_default().to_vec(),
                parent,
                parent_address: parent_address.to_vec(),
                parent_spec: parent_spec.to_vec(),
            });
            rest = rest.get(spec_end..).ok_or_else(truncated)?;
        }
        Ok(InterruptMap {
            address_cells,
            mask,
            entries,
        })
    }

    /// Follow `interrupt-map` nexuses from an interrupt (`spec` at `parent`,
    /// raised by a device at unit `address`) to the interrupt controller that
    /// finally receives it. None if a nexus has no entry for it.
    pub fn resolve_interrupt(
        &self,
        parent: NodeId,
        address: &[u32],
        spec: &[u32],
    ) -> Result<Option<(NodeId, Vec<u32>)>, PlatformError> {
        let (mut parent, mut address, mut spec) = (parent, address.to_vec(), spec.to_vec());
        // Real trees have one or two nexus levels; the bound stops map loops.
        for _ in 0..MAX_NEXUS_HOPS {
            if self.has_prop(parent, "interrupt-controller")
                || !self.has_prop(parent, "interrupt-map")
            {
                return Ok(Some((parent, spec)));
            }
            let map = self.interrupt_map(parent)?;
            let (address_mask, spec_mask) =
                map.mask.split_at(map.address_cells.min(map.mask.len()));
            let masked = |cells: &[u32], mask: &[u32], width: usize| -> Vec<u32> {
                (0..width)
                    .map(|i| cells.get(i).copied().unwrap_or(0) & mask.get(i).copied().unwrap_or(0))
                    .collect()
            };
            let want_address = masked(&address, address_mask, map.address_cells);
            let want_spec = masked(&spec, spec_mask, spec_mask.len());
            let hit = map.entries.into_iter().find(|e| {
                masked(&e.child_address, address_mask, map.address_cells) == want_address
                    && masked(&e.child_spec, spec_mask, spec_mask.len()) == want_spec
            });
            let Some(entry) = hit else {
                return Ok(None);
            };
            (parent, address, spec) = (entry.parent, entry.parent_address, entry.parent_spec);
        }
        Err(self.bad(parent, "interrupt-map", "nexus chain too long or looping"))
    }

    /// The node's interrupts decoded as GIC INTIDs, through any nexus; None
    /// for an interrupt that ends at another controller (a GPIO block, a
    /// PCIe INTx demultiplexer...).
    pub fn gic_interrupts(
        &self,
        id: NodeId,
        gic: NodeId,
    ) -> Result<Vec<Option<GicIrq>>, PlatformError> {
        let specs = self.interrupt_specs(id)?;
        // A nexus matches on the device's unit address: its first reg address.
        let address = self
            .prop_cells(id, "reg")
            .ok()
            .flatten()
            .unwrap_or_default();
        specs
            .into_iter()
            .map(
                |(parent, spec)| match self.resolve_interrupt(parent, &address, &spec)? {
                    Some((controller, spec)) if controller == gic => {
                        decode_gic_spec(&spec).map(Some).ok_or_else(|| {
                            self.bad(id, "interrupts", "not a valid GIC interrupt specifier")
                        })
                    }
                    _ => Ok(None),
                },
            )
            .collect()
    }
}

const MAX_INTERRUPT_CELLS: u32 = 8;

/// How many `interrupt-map` nexuses an interrupt may pass before we call it a loop.
const MAX_NEXUS_HOPS: usize = 8;

/// A parsed `interrupt-map`.
#[derive(Clone, Debug)]
pub struct InterruptMap {
    /// Child unit address cells of each entry (the rest of the child part is the specifier).
    pub address_cells: usize,
    /// `interrupt-map-mask`: address cells then specifier cells.
    pub mask: Vec<u32>,
    pub entries: Vec<InterruptMapEntry>,
}

#[derive(Clone, Debug)]
pub struct InterruptMapEntry {
    pub child_address: Vec<u32>,
    pub child_spec: Vec<u32>,
    pub parent: NodeId,
    pub parent_address: Vec<u32>,
    pub parent_spec: Vec<u32>,
}

/// Decode a GIC binding specifier `<type number flags [ppi-partition]>`:
/// type 0 SPI (INTID 32 + n), 1 PPI (16 + n), 2 extended SPI (4096 + n),
/// 3 extended PPI (1056 + n). Flags 4/8 are level, 1/2 edge.
pub fn decode_gic_spec(spec: &[u32]) -> Option<GicIrq> {
    let (&kind, rest) = spec.split_first()?;
    let (&number, rest) = rest.split_first()?;
    let flags = rest.first().copied().unwrap_or(0);
    // PPI numbers are not bounded to 0..16: like Linux we take 16 + n, as
    // some shipped trees (Cavium ThunderX) use PPI numbers above 15.
    let intid = match kind {
        0 if number < 988 => 32 + number,
        1 if number < 1004 => 16 + number,
        2 if number < 1024 => 4096 + number,
        3 if number < 64 => 1056 + number,
        _ => return None,
    };
    Some(GicIrq {
        intid,
        level: flags & 0xc != 0,
    })
}
