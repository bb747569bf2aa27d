//! INTx of passed-through functions, the vfio way: a physical INTx line
//! (an SPI, shared by every function whose pin routes to it) is
//! demultiplexed by each function's Status.Interrupt Status; a function that
//! asserts is masked with Command.INTx Disable and its owner's virtual line
//! is raised; the owner's EOI unmasks it, and if the function still needs
//! service the physical line fires again. While the owner keeps its own
//! (virtual) Command.INTx Disable set, an asserting function is masked
//! without raising anything; the owner clearing that bit unmasks it
//! ([`command_written`]), and the line fires again if it still asserts.

use alloc::vec::Vec;
use pci::regs::{COMMAND, COMMAND_INTX_DISABLE, STATUS};
use pci::{Bdf, ConfigPort};

/// Status.Interrupt Status: the function asserts INTx.
pub const STATUS_INTERRUPT: u16 = 1 << 3;

/// One passed-through function on a physical INTx line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxSource {
    /// The physical SPI its pin routes to (also the guest's virtual SPI).
    pub pintid: u32,
    pub physical: Bdf,
    /// The owning VM.
    pub vm: u16,
    /// Masked by us (INTx Disable set) until the owner's EOI, or until
    /// the owner clears its own INTx Disable.
    pub masked: bool,
    /// The owner's virtual line was raised for it: unmasked on its EOI.
    pub raised: bool,
}

/// The physical line `pintid` fired: mask every function on it that
/// asserts and report its owner through `raise` (at most once per VM),
/// unless the owner keeps that function's INTx disabled itself
/// (`guest_disabled(vm, function)`): then it stays masked, unreported.
/// A function a reset covers (`resetting`) is left to the reset engine,
/// whose restore [`after_reset`] follows. Returns how many functions
/// claimed the interrupt.
pub fn demux<P: ConfigPort>(
    sources: &mut [IntxSource],
    port: &mut P,
    pintid: u32,
    guest_disabled: &dyn Fn(u16, Bdf) -> bool,
    resetting: &dyn Fn(Bdf) -> bool,
    raise: &mut dyn FnMut(u16),
) -> usize {
    let mut claimed = 0;
    let mut raised: u64 = 0;
    for s in sources
        .iter_mut()
        .filter(|s| s.pintid == pintid && !s.masked && !resetting(s.physical))
    {
        // All-ones: nothing answers (under reset, removed), not an assertion.
        let status = port.read16(s.physical, STATUS);
        if status == u16::MAX || status & STATUS_INTERRUPT == 0 {
            continue;
        }
        let command = port.read16(s.physical, COMMAND);
        port.write16(s.physical, COMMAND, command | COMMAND_INTX_DISABLE);
        s.masked = true;
        claimed += 1;
        if guest_disabled(s.vm, s.physical) {
            continue;
        }
        s.raised = true;
        let bit = 1u64 << (s.vm % 64);
        if raised & bit == 0 {
            raised |= bit;
            raise(s.vm);
        }
    }
    claimed
}

/// VM `vm` ended its interrupt `vintid`: unmask its functions on that line,
/// except those the guest itself keeps INTx-disabled (`guest_disabled`).
/// Returns how many were unmasked.
pub fn eoi<P: ConfigPort>(
    sources: &mut [IntxSource],
    port: &mut P,
    vm: u16,
    vintid: u32,
    guest_disabled: &dyn Fn(Bdf) -> bool,
) -> usize {
    let mut unmasked = 0;
    for s in sources
        .iter_mut()
        .filter(|s| s.vm == vm && s.pintid == vintid && s.masked)
    {
        s.raised = false;
        if guest_disabled(s.physical) {
            continue;
        }
        unmask(s, port);
        unmasked += 1;
    }
    unmasked
}

/// VM `vm` wrote the Command register of one of its functions: unmask its
/// functions held masked (not waiting for an EOI) that it no longer keeps
/// INTx-disabled. Returns how many were unmasked.
pub fn command_written<P: ConfigPort>(
    sources: &mut [IntxSource],
    port: &mut P,
    vm: u16,
    guest_disabled: &dyn Fn(Bdf) -> bool,
) -> usize {
    let mut unmasked = 0;
    for s in sources
        .iter_mut()
        .filter(|s| s.vm == vm && s.masked && !s.raised)
    {
        if guest_disabled(s.physical) {
            continue;
        }
        unmask(s, port);
        unmasked += 1;
    }
    unmasked
}

/// A reset of `scope` ended and the engine restored the registers it saved
/// at its start, Command among them, with whatever INTx Disable the
/// function had then (possibly ours, masking an interrupt that the reset
/// has since cleared). The reset ended every assertion and every
/// interrupt in flight: each passed-through function of `scope` gets the
/// INTx Disable its owner keeps in its virtual Command (`guest_disabled`,
/// held masked as [`demux`] holds it) and nothing stays raised, so the
/// mask and the device agree again. Returns how many sources it set.
pub fn after_reset<P: ConfigPort>(
    sources: &mut [IntxSource],
    port: &mut P,
    scope: &[Bdf],
    guest_disabled: &dyn Fn(u16, Bdf) -> bool,
) -> usize {
    let mut n = 0;
    for s in sources.iter_mut().filter(|s| scope.contains(&s.physical)) {
        let command = port.read16(s.physical, COMMAND);
        if command == u16::MAX {
            // Did not come back: nothing to write (it is quarantined).
            continue;
        }
        let disabled = guest_disabled(s.vm, s.physical);
        let want = if disabled {
            command | COMMAND_INTX_DISABLE
        } else {
            command & !COMMAND_INTX_DISABLE
        };
        if want != command {
            port.write16(s.physical, COMMAND, want);
        }
        s.masked = disabled;
        s.raised = false;
        n += 1;
    }
    n
}

/// A function the hardware domain keeps whose INTx pin routes to a physical
/// line taken at EL2 for a guest's function: its interrupt reaches nobody,
/// so while it asserts, the level line would fire again forever and starve
/// the CPU it is routed to (the guest's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bystander {
    pub pintid: u32,
    pub physical: Bdf,
    /// Masked at least once (its log line is written once).
    pub silenced: bool,
}

/// The bystanders of `sources`' lines: each of `functions` (the hardware
/// domain's endpoints) whose pin routes to one of those lines
/// (`route(function)`). Keeps the `silenced` mark of those already known.
pub fn bystanders(
    sources: &[IntxSource],
    known: &[Bystander],
    functions: impl Iterator<Item = Bdf>,
    mut route: impl FnMut(Bdf) -> Option<u32>,
) -> Vec<Bystander> {
    let taken = lines(sources);
    functions
        .filter_map(|physical| {
            let pintid = route(physical).filter(|l| taken.contains(l))?;
            let silenced = known
                .iter()
                .any(|b| b.physical == physical && b.pintid == pintid && b.silenced);
            Some(Bystander {
                pintid,
                physical,
                silenced,
            })
        })
        .collect()
}

/// Line `pintid` fired and no passed-through function claimed it: mask at
/// the source (Command.INTx Disable) every bystander on it that asserts.
/// `first(function)` is told of those masked for the first time (to be
/// logged once). Returns how many were masked. A hardware domain that
/// clears INTx Disable again gets it masked again on the next interrupt:
/// each round costs it a trapped config write, so it cannot storm the line.
pub fn silence_bystanders<P: ConfigPort>(
    bystanders: &mut [Bystander],
    port: &mut P,
    pintid: u32,
    first: &mut dyn FnMut(Bdf),
) -> usize {
    let mut masked = 0;
    for b in bystanders.iter_mut().filter(|b| b.pintid == pintid) {
        let status = port.read16(b.physical, STATUS);
        if status == u16::MAX || status & STATUS_INTERRUPT == 0 {
            continue;
        }
        let command = port.read16(b.physical, COMMAND);
        if command & COMMAND_INTX_DISABLE != 0 {
            continue;
        }
        port.write16(b.physical, COMMAND, command | COMMAND_INTX_DISABLE);
        masked += 1;
        if !b.silenced {
            b.silenced = true;
            first(b.physical);
        }
    }
    masked
}

fn unmask<P: ConfigPort>(s: &mut IntxSource, port: &mut P) {
    let command = port.read16(s.physical, COMMAND);
    port.write16(s.physical, COMMAND, command & !COMMAND_INTX_DISABLE);
    s.masked = false;
}

/// Fires in a row that nobody claims before a line is held.
pub const UNCLAIMED_LIMIT: u32 = 1000;
/// How long a held line stays disabled before it is tried again (ns).
pub const HOLD_NS: u64 = 20_000_000;

/// What to do with a physical line after one of its interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineVerdict {
    /// Keep taking it.
    Take,
    /// Nobody claimed it [`UNCLAIMED_LIMIT`] times in a row: something we
    /// do not serve holds the level line (a hardware-domain port whose own
    /// interrupt is not ours to clear, a device gone wrong), and it would
    /// fire forever on the CPU of a guest's vCPU. Disable it until
    /// `until_ns`; `first` is this line's first hold (logged).
    Hold { until_ns: u64, first: bool },
}

/// Lines [`LineGuard`] follows at once (those that fired unclaimed): PCI
/// INTx lines are few (four per host bridge on most boards).
const GUARDED_LINES: usize = 32;

/// One line [`LineGuard`] follows.
#[derive(Clone, Copy, Debug, Default)]
struct Guarded {
    pintid: u32,
    /// Fires in a row nobody claimed.
    unclaimed: u32,
    /// Held until then (ns); 0: not held.
    until_ns: u64,
    /// Held at least once (logged once).
    held_before: bool,
}

/// Per physical PCI line: how many interrupts in a row nobody claimed, and
/// the lines held (disabled at the distributor) until a deadline. Holding
/// costs the line's honest sources up to [`HOLD_NS`] of latency per round;
/// a storm costs the CPU at most [`UNCLAIMED_LIMIT`] interrupts per round.
/// Fixed-size: the interrupt path allocates nothing. With every slot
/// taken, a slot whose line is not held and was last claimed is reused.
#[derive(Clone, Debug, Default)]
pub struct LineGuard {
    lines: [Option<Guarded>; GUARDED_LINES],
}

impl LineGuard {
    /// Line `pintid` fired at `now_ns`; `claimed`: someone serviced it.
    pub fn fired(&mut self, pintid: u32, claimed: bool, now_ns: u64) -> LineVerdict {
        let known = self
            .lines
            .iter()
            .position(|l| l.is_some_and(|l| l.pintid == pintid));
        let slot = match known {
            Some(i) => i,
            None if claimed => return LineVerdict::Take,
            None => {
                let free = self
                    .lines
                    .iter()
                    .position(|l| l.is_none_or(|l| l.until_ns == 0 && l.unclaimed == 0));
                let Some(i) = free else {
                    return LineVerdict::Take;
                };
                self.lines[i] = Some(Guarded {
                    pintid,
                    ..Guarded::default()
                });
                i
            }
        };
        let Some(l) = self.lines[slot].as_mut() else {
            return LineVerdict::Take;
        };
        if claimed {
            l.unclaimed = 0;
            return LineVerdict::Take;
        }
        l.unclaimed = l.unclaimed.saturating_add(1);
        if l.unclaimed < UNCLAIMED_LIMIT {
            return LineVerdict::Take;
        }
        l.unclaimed = 0;
        l.until_ns = now_ns.saturating_add(HOLD_NS).max(1);
        let first = !l.held_before;
        l.held_before = true;
        LineVerdict::Hold {
            until_ns: l.until_ns,
            first,
        }
    }

    /// Calls `release` with each held line whose hold ended by `now_ns`;
    /// they are no longer held, to be enabled again by the caller.
    pub fn release_due(&mut self, now_ns: u64, mut release: impl FnMut(u32)) {
        for l in self.lines.iter_mut().flatten() {
            if l.until_ns != 0 && l.until_ns <= now_ns {
                l.until_ns = 0;
                release(l.pintid);
            }
        }
    }

    /// When the next hold ends.
    pub fn next_release(&self) -> Option<u64> {
        self.lines
            .iter()
            .flatten()
            .map(|l| l.until_ns)
            .filter(|&t| t != 0)
            .min()
    }

    /// Forget line `pintid` (given back): a hold on it ends without a
    /// release.
    pub fn forget(&mut self, pintid: u32) {
        for l in self.lines.iter_mut() {
            if l.is_some_and(|g| g.pintid == pintid) {
                *l = None;
            }
        }
    }
}

/// The distinct physical lines of `sources`.
pub fn lines(sources: &[IntxSource]) -> Vec<u32> {
    let mut l: Vec<u32> = sources.iter().map(|s| s.pintid).collect();
    l.sort_unstable();
    l.dedup();
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::vec;

    /// Config space as a map of 16-bit registers.
    #[derive(Default)]
    struct Regs(BTreeMap<(Bdf, u16), u16>);

    impl ConfigPort for Regs {
        fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
            u32::from(self.read16(bdf, offset)) | (u32::from(self.read16(bdf, offset + 2)) << 16)
        }
        fn read16(&mut self, bdf: Bdf, offset: u16) -> u16 {
            self.0.get(&(bdf, offset)).copied().unwrap_or(0)
        }
        fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
            self.write16(bdf, offset, value as u16);
            self.write16(bdf, offset + 2, (value >> 16) as u16);
        }
        fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
            self.0.insert((bdf, offset), value);
        }
        fn write8(&mut self, _: Bdf, _: u16, _: u8) {}
    }

    const A: Bdf = Bdf::new(0, 1, 0, 0);
    const B: Bdf = Bdf::new(0, 2, 0, 0);

    fn sources() -> Vec<IntxSource> {
        vec![
            IntxSource {
                pintid: 36,
                physical: A,
                vm: 1,
                masked: false,
                raised: false,
            },
            IntxSource {
                pintid: 36,
                physical: B,
                vm: 2,
                masked: false,
                raised: false,
            },
        ]
    }

    /// Line `pintid` fires; the guests keep INTx disabled iff `disabled`.
    fn fire(
        s: &mut [IntxSource],
        port: &mut Regs,
        pintid: u32,
        disabled: bool,
        raised: &mut Vec<u16>,
    ) -> usize {
        demux(s, port, pintid, &|_, _| disabled, &|_| false, &mut |vm| {
            raised.push(vm)
        })
    }

    #[test]
    fn only_the_asserting_function_is_masked_and_its_owner_raised() {
        let mut port = Regs::default();
        port.write16(A, COMMAND, 0x0006);
        port.write16(B, COMMAND, 0x0006);
        port.write16(B, STATUS, STATUS_INTERRUPT);
        let mut s = sources();
        let mut raised = vec![];
        assert_eq!(fire(&mut s, &mut port, 36, false, &mut raised), 1);
        assert_eq!(raised, [2]);
        assert_eq!(port.read16(B, COMMAND), 0x0406, "INTx Disable set");
        assert_eq!(
            port.read16(A, COMMAND),
            0x0006,
            "the other function untouched"
        );
        assert!(s[1].masked && !s[0].masked);
        // Another interrupt on the line while B is masked: B is not raised twice.
        raised.clear();
        assert_eq!(fire(&mut s, &mut port, 36, false, &mut raised), 0);
        assert!(raised.is_empty());
        // A different line claims nothing.
        assert_eq!(fire(&mut s, &mut port, 37, false, &mut raised), 0);
    }

    #[test]
    fn a_hwdom_function_stuck_on_a_guests_line_is_masked_at_the_source() {
        // C is the hwdom's, on line 36 with the guests' A and B; D is on
        // another line.
        const C: Bdf = Bdf::new(0, 3, 0, 0);
        const D: Bdf = Bdf::new(0, 4, 0, 0);
        let mut port = Regs::default();
        for f in [A, B, C, D] {
            port.write16(f, COMMAND, 0x0006);
        }
        port.write16(C, STATUS, STATUS_INTERRUPT);
        port.write16(D, STATUS, STATUS_INTERRUPT);
        let mut s = sources();
        let route = |f: Bdf| Some(if f == D { 37 } else { 36 });
        let mut by = bystanders(&s, &[], [C, D].into_iter(), route);
        assert_eq!(by.len(), 1, "D's line carries no guest's function");
        // The line fires: no guest function claims it; C is masked, once
        // reported.
        assert_eq!(fire(&mut s, &mut port, 36, false, &mut vec![]), 0);
        let mut first = vec![];
        assert_eq!(
            silence_bystanders(&mut by, &mut port, 36, &mut |f| first.push(f)),
            1
        );
        assert_eq!(first, [C]);
        assert_eq!(port.read16(C, COMMAND), 0x0406);
        assert_eq!(port.read16(D, COMMAND), 0x0006, "its own line: untouched");
        assert_eq!(port.read16(A, COMMAND), 0x0006);
        // The hwdom clears INTx Disable: masked again, not reported again.
        port.write16(C, COMMAND, 0x0006);
        first.clear();
        assert_eq!(
            silence_bystanders(&mut by, &mut port, 36, &mut |f| first.push(f)),
            1
        );
        assert!(first.is_empty());
        // A refresh keeps what was reported.
        let by = bystanders(&s, &by, [C, D].into_iter(), route);
        assert!(by[0].silenced);
    }

    #[test]
    fn a_function_that_reads_all_ones_is_not_claimed() {
        let mut port = Regs::default();
        port.write16(A, COMMAND, 0xffff);
        port.write16(A, STATUS, 0xffff);
        let mut s = sources();
        let mut raised = vec![];
        assert_eq!(fire(&mut s, &mut port, 36, false, &mut raised), 0);
        assert!(raised.is_empty() && !s[0].masked);
        assert_eq!(port.read16(A, COMMAND), 0xffff, "not written");
    }

    #[test]
    fn eoi_unmasks_the_owners_functions_unless_the_guest_disabled_intx() {
        let mut port = Regs::default();
        port.write16(B, COMMAND, 0x0006);
        port.write16(B, STATUS, STATUS_INTERRUPT);
        let mut s = sources();
        demux(
            &mut s,
            &mut port,
            36,
            &|_, _| false,
            &|_| false,
            &mut |_| {},
        );
        assert_eq!(eoi(&mut s, &mut port, 1, 36, &|_| false), 0, "not vm 1's");
        assert_eq!(
            eoi(&mut s, &mut port, 2, 36, &|_| true),
            0,
            "guest keeps it disabled"
        );
        assert!(s[1].masked);
        assert_eq!(eoi(&mut s, &mut port, 2, 36, &|_| false), 1);
        assert_eq!(port.read16(B, COMMAND), 0x0006);
        assert!(!s[1].masked);
        assert_eq!(lines(&s), [36]);
    }

    #[test]
    fn a_function_the_guest_disabled_is_held_until_it_clears_intx_disable() {
        let mut port = Regs::default();
        port.write16(B, COMMAND, 0x0006);
        port.write16(B, STATUS, STATUS_INTERRUPT);
        let mut s = sources();
        let mut raised = vec![];
        // The guest keeps INTx disabled: masked, nothing raised.
        let n = fire(&mut s, &mut port, 36, true, &mut raised);
        assert_eq!(n, 1);
        assert!(raised.is_empty());
        assert!(s[1].masked && !s[1].raised);
        assert_eq!(port.read16(B, COMMAND), 0x0406);
        // A Command write that keeps it disabled changes nothing; another
        // VM's write neither.
        assert_eq!(command_written(&mut s, &mut port, 2, &|_| true), 0);
        assert_eq!(command_written(&mut s, &mut port, 1, &|_| false), 0);
        assert!(s[1].masked);
        // Cleared: unmasked (the line fires again while it asserts).
        assert_eq!(command_written(&mut s, &mut port, 2, &|_| false), 1);
        assert_eq!(port.read16(B, COMMAND), 0x0006);
        assert!(!s[1].masked);
        // Raised now; a Command write before the EOI does not unmask early.
        fire(&mut s, &mut port, 36, false, &mut raised);
        assert_eq!(raised, [2]);
        assert!(s[1].masked && s[1].raised);
        assert_eq!(command_written(&mut s, &mut port, 2, &|_| false), 0);
        assert!(s[1].masked);
        // EOI while the guest has disabled INTx meanwhile: held, then
        // released by the Command write that clears it.
        assert_eq!(eoi(&mut s, &mut port, 2, 36, &|_| true), 0);
        assert!(s[1].masked && !s[1].raised);
        assert_eq!(command_written(&mut s, &mut port, 2, &|_| false), 1);
        assert!(!s[1].masked);
    }

    #[test]
    fn a_reset_leaves_the_mask_and_the_device_in_agreement() {
        let mut port = Regs::default();
        port.write16(A, COMMAND, 0x0006);
        port.write16(B, COMMAND, 0x0006);
        port.write16(A, STATUS, STATUS_INTERRUPT);
        port.write16(B, STATUS, STATUS_INTERRUPT);
        let mut s = sources();
        let mut raised = vec![];
        // Both assert; A's reset runs: A is the engine's, B is masked.
        let resetting = |f: Bdf| f == A;
        let n = demux(
            &mut s,
            &mut port,
            36,
            &|_, _| false,
            &resetting,
            &mut |vm| raised.push(vm),
        );
        assert_eq!((n, raised.as_slice()), (1, [2].as_slice()));
        assert_eq!(port.read16(A, COMMAND), 0x0006, "not written under reset");
        assert!(!s[0].masked);
        // B's reset: the engine saved Command with our INTx Disable and
        // restores it; the reset cleared B's assertion. Without the
        // resync B would stay disabled while we count it unmasked after
        // the guest's EOI, or masked while the device interrupts.
        port.write16(B, STATUS, 0);
        port.write16(B, COMMAND, 0x0406);
        assert_eq!(after_reset(&mut s, &mut port, &[B], &|_, _| false), 1);
        assert_eq!(port.read16(B, COMMAND), 0x0006, "INTx enabled again");
        assert!(!s[1].masked && !s[1].raised);
        // The guest's EOI of the interrupt it had in flight changes nothing.
        assert_eq!(eoi(&mut s, &mut port, 2, 36, &|_| false), 0);
        // B asserts again (A's reset has ended and cleared A): it fires
        // and is raised.
        port.write16(A, STATUS, 0);
        port.write16(B, STATUS, STATUS_INTERRUPT);
        raised.clear();
        assert_eq!(fire(&mut s, &mut port, 36, false, &mut raised), 1);
        assert_eq!(raised, [2]);
        // A guest that keeps INTx disabled gets it held after the reset.
        port.write16(B, STATUS, 0);
        assert_eq!(after_reset(&mut s, &mut port, &[B], &|_, _| true), 1);
        assert_eq!(port.read16(B, COMMAND), 0x0406);
        assert!(s[1].masked && !s[1].raised);
        // One that did not come back is left alone.
        port.write16(A, COMMAND, 0xffff);
        assert_eq!(after_reset(&mut s, &mut port, &[A], &|_, _| false), 0);
        assert_eq!(port.read16(A, COMMAND), 0xffff);
    }

    #[test]
    fn a_line_nobody_claims_is_held_then_tried_again() {
        let mut g = LineGuard::default();
        assert_eq!(g.fired(36, true, 0), LineVerdict::Take);
        // Unclaimed fires, interrupted by a claimed one: never held.
        for _ in 0..UNCLAIMED_LIMIT - 1 {
            assert_eq!(g.fired(36, false, 10), LineVerdict::Take);
        }
        assert_eq!(g.fired(36, true, 10), LineVerdict::Take);
        for _ in 0..UNCLAIMED_LIMIT - 1 {
            assert_eq!(g.fired(36, false, 20), LineVerdict::Take);
        }
        // Another line is counted apart.
        assert_eq!(g.fired(37, false, 20), LineVerdict::Take);
        let held = LineVerdict::Hold {
            until_ns: 20 + HOLD_NS,
            first: true,
        };
        assert_eq!(g.fired(36, false, 20), held);
        assert_eq!(g.next_release(), Some(20 + HOLD_NS));
        let mut released = vec![];
        g.release_due(19 + HOLD_NS, |l| released.push(l));
        assert!(released.is_empty());
        g.release_due(20 + HOLD_NS, |l| released.push(l));
        assert_eq!(released, [36]);
        assert_eq!(g.next_release(), None);
        // Still stuck after the release: held again, not logged again.
        for _ in 0..UNCLAIMED_LIMIT - 1 {
            g.fired(36, false, 30 + HOLD_NS);
        }
        assert_eq!(
            g.fired(36, false, 30 + HOLD_NS),
            LineVerdict::Hold {
                until_ns: 30 + 2 * HOLD_NS,
                first: false
            }
        );
        g.forget(36);
        assert_eq!(g.next_release(), None);
    }

    #[test]
    fn the_line_guard_is_fixed_size_and_reuses_quiet_slots() {
        let mut g = LineGuard::default();
        // More lines than slots fire unclaimed once, then are claimed: the
        // quiet slots are reused, a new storm is still followed and held.
        for line in 32..32 + 2 * GUARDED_LINES as u32 {
            assert_eq!(g.fired(line, false, 0), LineVerdict::Take);
            assert_eq!(g.fired(line, true, 0), LineVerdict::Take);
        }
        for _ in 0..UNCLAIMED_LIMIT - 1 {
            g.fired(500, false, 0);
        }
        assert!(matches!(g.fired(500, false, 0), LineVerdict::Hold { .. }));
    }
}
