//! Reset methods, their scopes, and the question a VMM asks: which reset
//! covers my functions, what else does it touch, and do I own all of it.
//!
//! Each function has an ordered list of supported methods, probed at report
//! time the way Linux fills `reset_method` (device specific, FLR from DevCap,
//! AF FLR, PM D3hot→D0 when NoSoftRst is clear, slot when the parent port is a
//! hot-plug slot, bus = Secondary Bus Reset of the parent bridge), minus what
//! the [`ResetQuirk`] table forbids. The hardware domain may replace the order
//! per function with a validated override list. A method's scope is exactly
//! the set of functions it resets: the function itself (plus a PF's VFs,
//! which an FLR or PM reset of the PF disables) for function-level methods;
//! everything below the parent bridge for slot and bus resets. A
//! function-level reset of a bridge also cuts off everything below it, so
//! its scope holds its subtree ([`Topology::action_scope`]).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::Bdf;
use crate::topology::{Function, FunctionKind, Topology};

/// A way to reset a function, in Linux's default order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResetMethod {
    /// A device-specific sequence from the quirk table.
    DeviceSpecific,
    /// PCIe Function Level Reset (DevCap FLR).
    Flr,
    /// Advanced Features FLR.
    AfFlr,
    /// D3hot→D0 transition of a function with NoSoftRst clear.
    Pm,
    /// Hot-plug slot reset of the parent port (an SBR with link events masked).
    Slot,
    /// Secondary Bus Reset of the parent bridge.
    Bus,
}

impl ResetMethod {
    /// All methods, in default probe order.
    pub const ALL: [Self; 6] = [
        Self::DeviceSpecific,
        Self::Flr,
        Self::AfFlr,
        Self::Pm,
        Self::Slot,
        Self::Bus,
    ];

    /// The name Linux's `reset_method` attribute uses.
    pub const fn name(self) -> &'static str {
        match self {
            Self::DeviceSpecific => "device_specific",
            Self::Flr => "flr",
            Self::AfFlr => "af_flr",
            Self::Pm => "pm",
            Self::Slot => "slot",
            Self::Bus => "bus",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Resets only the function (and a PF's VFs).
    pub const fn is_function_level(self) -> bool {
        !matches!(self, Self::Slot | Self::Bus)
    }
}

impl fmt::Display for ResetMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An ordered list of distinct methods, without allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MethodList {
    items: [ResetMethod; 6],
    len: u8,
}

impl Default for MethodList {
    fn default() -> Self {
        Self {
            items: [ResetMethod::Bus; 6],
            len: 0,
        }
    }
}

impl MethodList {
    pub fn as_slice(&self) -> &[ResetMethod] {
        &self.items[..self.len as usize]
    }
    pub fn contains(&self, m: ResetMethod) -> bool {
        self.as_slice().contains(&m)
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn first(&self) -> Option<ResetMethod> {
        self.as_slice().first().copied()
    }
    fn push(&mut self, m: ResetMethod) {
        if !self.contains(m)
            && let Some(slot) = self.items.get_mut(self.len as usize)
        {
            *slot = m;
            self.len += 1;
        }
    }
}

impl fmt::Debug for MethodList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// Quirk flags.
pub mod quirk {
    /// FLR and AF FLR are broken.
    pub const NO_FLR: u8 = 1 << 0;
    /// The device does not survive a bus or slot reset: forbids them for
    /// every function whose scope holds it.
    pub const NO_BUS_RESET: u8 = 1 << 1;
    /// D3hot→D0 does not reset it properly.
    pub const NO_PM_RESET: u8 = 1 << 2;
    /// A device-specific reset is known for it.
    pub const DEVICE_SPECIFIC: u8 = 1 << 3;
}

/// A reset quirk table entry, keyed by vendor and device id range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetQuirk {
    pub vendor: u16,
    pub device_first: u16,
    pub device_last: u16,
    pub flags: u8,
}

impl ResetQuirk {
    pub const fn new(vendor: u16, device_first: u16, device_last: u16, flags: u8) -> Self {
        Self {
            vendor,
            device_first,
            device_last,
            flags,
        }
    }
}

/// Default reset quirks (from Linux's quirks.c).
pub fn default_reset_quirks() -> Vec<ResetQuirk> {
    use quirk::*;
    alloc::vec![
        // Atheros wireless: SBR leaves them unusable.
        ResetQuirk::new(0x168c, 0x0030, 0x0030, NO_BUS_RESET),
        ResetQuirk::new(0x168c, 0x0032, 0x0034, NO_BUS_RESET),
        ResetQuirk::new(0x168c, 0x003c, 0x003c, NO_BUS_RESET),
        ResetQuirk::new(0x168c, 0x003e, 0x003e, NO_BUS_RESET),
        // AMD Matisse/Starship USB and audio: FLR hangs.
        ResetQuirk::new(0x1022, 0x1487, 0x1487, NO_FLR),
        ResetQuirk::new(0x1022, 0x149c, 0x149c, NO_FLR),
        ResetQuirk::new(0x1022, 0x7901, 0x7901, NO_FLR),
        // Intel 82579: FLR advertised but broken.
        ResetQuirk::new(0x8086, 0x1502, 0x1503, NO_FLR),
        // Intel 82599 VF and Chelsio T4: device-specific reset.
        ResetQuirk::new(0x8086, 0x10ed, 0x10ed, DEVICE_SPECIFIC),
        ResetQuirk::new(0x1425, 0x4000, 0x4fff, DEVICE_SPECIFIC),
    ]
}

/// Why a reset query or override was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetError {
    NotTracked {
        bdf: Bdf,
    },
    /// The method is not supported by the function.
    Unsupported {
        bdf: Bdf,
        method: ResetMethod,
    },
    /// An override list names a method twice.
    Duplicate {
        method: ResetMethod,
    },
    /// The query named no functions.
    EmptySet,
    /// The functions of a query have different owners.
    MixedOwners {
        bdf: Bdf,
    },
}

impl fmt::Display for ResetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotTracked { bdf } => write!(f, "{bdf}: not tracked"),
            Self::Unsupported { bdf, method } => {
                write!(f, "{bdf}: reset method {method} not supported")
            }
            Self::Duplicate { method } => write!(f, "reset method {method} listed twice"),
            Self::EmptySet => f.write_str("no functions given"),
            Self::MixedOwners { bdf } => {
                write!(f, "{bdf}: owned by another domain than the others")
            }
        }
    }
}

/// One reset operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ResetAction {
    /// A function-level method on `bdf`.
    Function { bdf: Bdf, method: ResetMethod },
    /// Hot-plug slot reset of the port's slot.
    Slot { port: Bdf },
    /// Secondary Bus Reset of the bridge.
    SecondaryBus { bridge: Bdf },
}

/// The answer to "reset these functions of mine".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetCoverage {
    /// The resets to perform, narrowest that work.
    pub actions: Vec<ResetAction>,
    /// Every function the actions reset, in address order.
    pub touched: Vec<Bdf>,
    /// Functions of `touched` the caller does not own.
    pub foreign: Vec<Bdf>,
    /// Functions of the query no available reset covers.
    pub uncovered: Vec<Bdf>,
}

impl ResetCoverage {
    /// Every function of the query is reset, and nothing the caller does not own.
    pub fn is_safe(&self) -> bool {
        self.foreign.is_empty() && self.uncovered.is_empty()
    }
}

fn quirk_flags(quirks: &[ResetQuirk], f: &Function) -> u8 {
    quirks
        .iter()
        .filter(|q| q.vendor == f.vendor && (q.device_first..=q.device_last).contains(&f.device))
        .fold(0, |acc, q| acc | q.flags)
}

impl Topology {
    fn tracked(&self, bdf: Bdf) -> Result<&Function, ResetError> {
        self.function(bdf).ok_or(ResetError::NotTracked { bdf })
    }

    /// Whether a bus reset of `bridge` is allowed: nothing below is NO_BUS_RESET.
    fn bus_resettable(&self, bridge: Bdf) -> bool {
        let quirks = &self.config.reset_quirks;
        self.subtree(bridge).all(|b| {
            self.function(b)
                .is_none_or(|f| quirk_flags(quirks, f) & quirk::NO_BUS_RESET == 0)
        })
    }

    /// Methods the function supports, in default order.
    pub fn supported_reset_methods(&self, bdf: Bdf) -> Result<MethodList, ResetError> {
        let f = self.tracked(bdf)?;
        let q = quirk_flags(&self.config.reset_quirks, f);
        let mut list = MethodList::default();
        if q & quirk::DEVICE_SPECIFIC != 0 {
            list.push(ResetMethod::DeviceSpecific);
        }
        if f.has_flr() && q & quirk::NO_FLR == 0 {
            list.push(ResetMethod::Flr);
        }
        if f.has_af_flr() && q & quirk::NO_FLR == 0 {
            list.push(ResetMethod::AfFlr);
        }
        if f.has_pm_reset() && q & quirk::NO_PM_RESET == 0 {
            list.push(ResetMethod::Pm);
        }
        if f.kind != FunctionKind::VirtualFunction
            && let Some(parent) = self.parent_bridge(bdf)
            && self.bus_resettable(parent)
        {
            if self.function(parent).is_some_and(|p| p.is_hotplug_slot()) {
                list.push(ResetMethod::Slot);
            }
            list.push(ResetMethod::Bus);
        }
        Ok(list)
    }

    /// The methods in the order they will be tried: the override if one is
    /// set (restricted to what is still supported), else the default.
    pub fn reset_methods(&self, bdf: Bdf) -> Result<MethodList, ResetError> {
        let supported = self.supported_reset_methods(bdf)?;
        match self.reset_overrides.get(&bdf) {
            Some(o) => {
                let mut list = MethodList::default();
                for &m in o.as_slice() {
                    if supported.contains(m) {
                        list.push(m);
                    }
                }
                Ok(list)
            }
            None => Ok(supported),
        }
    }

    /// Sets the function's method order. Every method must be supported and
    /// appear once; an empty list disables reset. On error nothing changes.
    pub fn set_reset_methods(
        &mut self,
        bdf: Bdf,
        methods: &[ResetMethod],
    ) -> Result<(), ResetError> {
        let supported = self.supported_reset_methods(bdf)?;
        let mut list = MethodList::default();
        for &method in methods {
            if !supported.contains(method) {
                return Err(ResetError::Unsupported { bdf, method });
            }
            if list.contains(method) {
                return Err(ResetError::Duplicate { method });
            }
            list.push(method);
        }
        self.reset_overrides.insert(bdf, list);
        Ok(())
    }

    /// Back to the probed default order.
    pub fn clear_reset_methods(&mut self, bdf: Bdf) {
        self.reset_overrides.remove(&bdf);
    }

    /// The operation that performs `method` for `bdf`.
    pub fn reset_action(&self, bdf: Bdf, method: ResetMethod) -> Result<ResetAction, ResetError> {
        if !self.supported_reset_methods(bdf)?.contains(method) {
            return Err(ResetError::Unsupported { bdf, method });
        }
        let parent = || {
            self.parent_bridge(bdf)
                .ok_or(ResetError::Unsupported { bdf, method })
        };
        Ok(match method {
            ResetMethod::Slot => ResetAction::Slot { port: parent()? },
            ResetMethod::Bus => ResetAction::SecondaryBus { bridge: parent()? },
            _ => ResetAction::Function { bdf, method },
        })
    }

    /// Every tracked function an action resets or cuts off, in address
    /// order. A function-level reset of a bridge (PM D3hot→D0, an FLR)
    /// reaches everything below it: in D3hot it forwards nothing, and the
    /// reset clears its bus numbers and windows, so nothing below answers
    /// until it is restored. Its scope is the bridge and its subtree, like
    /// a bus reset's, whatever the method's name says.
    pub fn action_scope(&self, action: ResetAction) -> Vec<Bdf> {
        match action {
            ResetAction::Function { bdf, .. }
                if self.function(bdf).is_some_and(|f| f.kind.is_bridge()) =>
            {
                let mut v: Vec<Bdf> = core::iter::once(bdf).chain(self.subtree(bdf)).collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            ResetAction::Function { bdf, .. } => {
                let mut v = alloc::vec![bdf];
                if let Some(f) = self.function(bdf)
                    && let Some((first, last, _)) = f.vf_keys(bdf)
                {
                    v.extend(
                        self.functions()
                            .filter(|(b, g)| {
                                b.key() >= first && b.key() <= last && g.physfn() == Some(bdf)
                            })
                            .map(|(b, _)| b),
                    );
                }
                v.sort_unstable();
                v
            }
            ResetAction::Slot { port: bridge } | ResetAction::SecondaryBus { bridge } => {
                self.subtree(bridge).collect()
            }
        }
    }

    /// Every tracked function `method` touches when used on `bdf`.
    pub fn reset_scope(&self, bdf: Bdf, method: ResetMethod) -> Result<Vec<Bdf>, ResetError> {
        Ok(self.action_scope(self.reset_action(bdf, method)?))
    }

    /// For functions owned by one domain: the narrowest resets that cover them
    /// (per function, the first method in its order whose scope the domain
    /// owns; failing that, one Secondary Bus Reset of the lowest bridge above
    /// all of them), what those resets touch, and what of that the domain
    /// does not own.
    pub fn reset_coverage<O: PartialEq>(
        &self,
        set: &[Bdf],
        owner_of: impl Fn(Bdf) -> O,
    ) -> Result<ResetCoverage, ResetError> {
        let first = *set.first().ok_or(ResetError::EmptySet)?;
        let owner = owner_of(first);
        for &b in set {
            self.tracked(b)?;
            if owner_of(b) != owner {
                return Err(ResetError::MixedOwners { bdf: b });
            }
        }
        let wanted: BTreeSet<Bdf> = set.iter().copied().collect();
        let owned = |scope: &[Bdf]| scope.iter().all(|&b| owner_of(b) == owner);

        let mut actions: Vec<ResetAction> = Vec::new();
        let mut touched: BTreeSet<Bdf> = BTreeSet::new();
        let mut uncovered: Vec<Bdf> = Vec::new();
        for &b in &wanted {
            if touched.contains(&b) {
                continue;
            }
            let methods = self.reset_methods(b)?;
            let mut chosen: Option<(ResetAction, Vec<Bdf>)> = None;
            for &m in methods.as_slice() {
                let action = self.reset_action(b, m)?;
                let scope = self.action_scope(action);
                let ok = owned(&scope);
                if chosen.is_none() || ok {
                    chosen = Some((action, scope));
                }
                if ok {
                    break;
                }
            }
            match chosen {
                Some((action, scope)) => {
                    if !actions.contains(&action) {
                        actions.push(action);
                    }
                    touched.extend(scope);
                }
                None => uncovered.push(b),
            }
        }
        let foreign_of = |touched: &BTreeSet<Bdf>| -> Vec<Bdf> {
            touched
                .iter()
                .copied()
                .filter(|&b| owner_of(b) != owner)
                .collect()
        };
        let mut foreign = foreign_of(&touched);
        if (!foreign.is_empty() || !uncovered.is_empty())
            && let Some(bridge) = self.common_resettable_bridge(&wanted)
        {
            let scope = self.action_scope(ResetAction::SecondaryBus { bridge });
            if owned(&scope) {
                actions = alloc::vec![ResetAction::SecondaryBus { bridge }];
                touched = scope.into_iter().collect();
                uncovered.clear();
                foreign = Vec::new();
            }
        }
        Ok(ResetCoverage {
            actions,
            touched: touched.into_iter().collect(),
            foreign,
            uncovered,
        })
    }

    /// Whether a Secondary Bus Reset of `bridge` is allowed: no function
    /// below it is flagged `NO_BUS_RESET` by the quirk table.
    pub fn bus_reset_allowed(&self, bridge: Bdf) -> bool {
        self.bus_resettable(bridge)
    }

    /// The lowest bridge above every function of `set` that may be
    /// bus-reset (`None` if there is none, or a quirk forbids the lowest).
    pub fn bus_reset_bridge_for(&self, set: &[Bdf]) -> Option<Bdf> {
        let set: BTreeSet<Bdf> = set.iter().copied().collect();
        self.common_resettable_bridge(&set)
    }

    /// Whether the function uses its probed default method order (no
    /// override, or an override equal to it). The shell logs a warning when
    /// a reset runs with a non-default order (a configured one).
    pub fn is_default_reset_order(&self, bdf: Bdf) -> bool {
        match (
            self.reset_overrides.get(&bdf),
            self.supported_reset_methods(bdf),
        ) {
            (None, _) => true,
            (Some(o), Ok(s)) => o.as_slice() == s.as_slice(),
            (Some(_), Err(_)) => false,
        }
    }

    /// The lowest bridge whose subtree holds every function of `set` and that
    /// may be bus-reset.
    fn common_resettable_bridge(&self, set: &BTreeSet<Bdf>) -> Option<Bdf> {
        let first = *set.first()?;
        let last = *set.last()?;
        let mut cur = self.parent_bridge(first);
        while let Some(b) = cur {
            let f = self.function(b)?;
            if first.segment == last.segment
                && f.secondary <= first.bus
                && last.bus <= f.subordinate
                && set.iter().all(|x| {
                    x.segment == b.segment && x.bus >= f.secondary && x.bus <= f.subordinate
                })
            {
                return self.bus_resettable(b).then_some(b);
            }
            cur = self.parent_bridge(b);
        }
        None
    }
}
