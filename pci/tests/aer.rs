//! AER against the simulated fabric with a fake clock: the root
//! port service, the storm limiter, the owners' virtual registers, recovery
//! with its deadline, and firmware-first CPER records.

mod common;
mod vpci_fixture;

use common::{b, track};
use pci::aer::virtual_regs::{ROOT_STATUS_HV_RESET, VirtualAer};
use pci::aer::*;
use pci::regs::*;
use pci::reset_engine::{NoShadow, ResetOutcome, SavedState, Step, narrowest_reset};
use pci::sim::cper::{block, entry, pcie_section};
use pci::sim::{Fabric, NotReady, SimAerError, SimReadiness, Spec, devfn};
use pci::vpci::{Effect, Effects, GuestBus, Owner, Ownership};
use pci::{Bdf, ConfigPort, ResetJob, Topology};
use vpci_fixture::{layout, off, program_root_ports};

const MS: u64 = 1_000_000;

/// 00:01.0 → nvme 01:00.0 (the guest's); 00:02.0 → e1000e 02:00.0 (the
/// hwdom's); 00:03.0 → switch 03:00.0 → 04:00.0 → nvme 05:00.0,
/// 04:01.0 → e1000e 06:00.0.
fn fabric() -> (Fabric, Topology) {
    fabric_with(Spec::qemu_nvme())
}

fn fabric_with(nvme: Spec) -> (Fabric, Topology) {
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (devfn(1, 0), Spec::qemu_root_port().child(0, 0, nvme)),
            (
                devfn(2, 0),
                Spec::qemu_root_port().child(0, 0, Spec::qemu_e1000e()),
            ),
            (
                devfn(3, 0),
                Spec::qemu_root_port().child(
                    0,
                    0,
                    Spec::qemu_x3130_upstream()
                        .child(
                            0,
                            0,
                            Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_nvme()),
                        )
                        .child(
                            1,
                            0,
                            Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_e1000e()),
                        ),
                ),
            ),
        ],
    );
    let t = track(&mut f);
    (f, t)
}

fn enabled(config: AerConfig) -> (Fabric, Topology, RootPortService) {
    let (f, t) = fabric();
    enable_all(config, f, t)
}

fn enable_all(
    config: AerConfig,
    mut f: Fabric,
    t: Topology,
) -> (Fabric, Topology, RootPortService) {
    let mut s = RootPortService::new(config);
    for rp in ["00:01.0", "00:02.0", "00:03.0"] {
        s.enable(&mut f, &t, b(rp)).unwrap();
    }
    (f, t, s)
}

fn aer_of(t: &Topology, bdf: Bdf) -> u16 {
    t.function(bdf).unwrap().caps.aer
}

fn events(r: &Reports) -> Vec<AerEvent> {
    r.events().copied().collect()
}

/// The guest (VM 1) owns the nvme below 00:01.0; its virtual bus is
/// programmed and its virtual root port's Root Error Command enabled.
fn guest(f: &mut Fabric, t: &mut Topology) -> (Ownership, GuestBus) {
    let mut own = Ownership::new();
    let units = own.assign(t, f, 1, &[b("01:00.0")], false).unwrap();
    let mut g = GuestBus::new(&units, t, f, layout()).unwrap();
    program_root_ports(&mut g, f);
    let mut e = Effects::new();
    g.config_write(f, off(0, 1, 0, 0x100 + AER_ROOT_COMMAND), 4, 7, &mut e);
    (own, g)
}

fn run_reset(
    t: &Topology,
    f: &mut Fabric,
    owner_of: impl Fn(Bdf) -> Owner,
    fns: &[Bdf],
) -> ResetOutcome {
    let actions = narrowest_reset(t, owner_of, fns).unwrap();
    assert_eq!(actions.len(), 1);
    let scope = t.action_scope(actions[0]);
    let saved = SavedState::capture(t, f, &scope);
    let (mut job, mut step) = ResetJob::start(t, f, actions[0], f.now_ns(), saved).unwrap();
    for _ in 0..10_000 {
        match step {
            Step::Wait { until_ns } => {
                let now = f.now_ns();
                f.advance_ns(until_ns.saturating_sub(now));
                step = job.step(t, f, &NoShadow, until_ns);
            }
            Step::Done { outcome } => return outcome,
        }
    }
    panic!("reset never finished");
}

// ------------------------------------------------------------ physical side

#[test]
fn enable_takes_ownership_like_linux_probe() {
    let (mut f, t, _) = enabled(AerConfig::default());
    for rp in ["00:01.0", "00:02.0", "00:03.0"] {
        let a = aer_of(&t, b(rp));
        assert_eq!(f.read32(b(rp), a + AER_ROOT_COMMAND), 7);
        assert_eq!(f.read32(b(rp), a + AER_ROOT_STATUS), 0);
    }
    for bdf in ["01:00.0", "05:00.0", "06:00.0", "04:01.0"] {
        let fun = t.function(b(bdf)).unwrap();
        let ctl = f.read16(b(bdf), fun.caps.pcie as u16 + PCIE_DEVCTL);
        assert_eq!(ctl & 0xf, 0xf, "{bdf}");
    }
    assert_eq!(f.bad_accesses(), 0);
}

#[test]
fn errors_of_non_root_ports_are_refused() {
    let (mut f, t, mut s) = enabled(AerConfig::default());
    assert_eq!(
        s.service(&t, &mut f, b("01:00.0"), 0).err(),
        Some(AerError::NotRootPort(b("01:00.0")))
    );
    assert_eq!(
        s.service(&t, &mut f, b("09:00.0"), 0).err(),
        Some(AerError::NotTracked(b("09:00.0")))
    );
    // Nothing flagged: "not ours".
    let r = s.service(&t, &mut f, b("00:01.0"), 0).unwrap();
    assert!(r.is_empty());
    assert_eq!(r.root_status, 0);
}

#[test]
fn correctable_error_is_delivered_to_the_guest_without_reset() {
    let (mut f, mut t, mut s) = enabled(AerConfig::default());
    let (own, mut g) = guest(&mut f, &mut t);
    let nvme = b("01:00.0");
    let msg = f.inject_aer(nvme, SimAerError::Correctable(6)).unwrap();
    assert!(msg.interrupt);
    let r = s.service(&t, &mut f, msg.root_port, 5 * MS).unwrap();
    let ev = events(&r);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].source, nvme);
    assert_eq!(ev[0].severity, Severity::Correctable);
    assert_eq!(ev[0].correctable_status, 1 << 6);
    assert_eq!(ev[0].at_ns, 5 * MS);
    // Physical status and the root port's registers are cleared.
    let a = aer_of(&t, nvme);
    assert_eq!(f.read32(nvme, a + AER_COR_STATUS), 0);
    let ra = aer_of(&t, b("00:01.0"));
    assert_eq!(f.read32(b("00:01.0"), ra + AER_ROOT_STATUS), 0);

    // Routed to its owner; no recovery.
    assert_eq!(own.owner(nvme), Owner::Guest(1));
    let mut tr = RecoveryTracker::new(AerConfig::default().reset_deadline_ns);
    assert_eq!(
        tr.on_event(&ev[0], Owner::Guest(1)),
        RecoveryState::Delivered
    );
    assert_eq!(tr.next_deadline(), None);
    assert!(!tr.is_frozen(nvme));

    // The guest's view: status in the function, root port status and
    // the virtual source id (bus 1 as the guest programmed it).
    let d = g.aer_deliver(&ev[0]).unwrap();
    assert!(d.interrupt);
    assert_eq!(d.virtual_source, Bdf::new(0, 1, 0, 0));
    assert_eq!(d.root_port, Bdf::new(0, 0, 1, 0));
    let rs = off(0, 1, 0, 0x100 + AER_ROOT_STATUS);
    assert_eq!(g.config_read(&mut f, rs, 4), AER_ROOT_STATUS_COR);
    let src = g.config_read(&mut f, off(0, 1, 0, 0x100 + AER_ERROR_SOURCE), 4);
    assert_eq!(src & 0xffff, 0x0100);
    let cs = off(1, 0, 0, 0x100 + AER_COR_STATUS);
    assert_eq!(g.config_read(&mut f, cs, 4), 1 << 6);
    // Interrupt pin for Linux's port driver (INTx).
    assert_eq!(g.config_read(&mut f, off(0, 1, 0, INTERRUPT_PIN), 1), 1);
    // W1C: the guest clears the function, then the root port: INTx drops.
    let mut e = Effects::new();
    g.config_write(&mut f, cs, 4, 1 << 6, &mut e);
    assert_eq!(g.config_read(&mut f, cs, 4), 0);
    assert!(g.aer_interrupt(0));
    g.config_write(&mut f, rs, 4, AER_ROOT_STATUS_COR, &mut e);
    assert!(!g.aer_interrupt(0));
    assert!(e.is_empty());
    assert_eq!(f.bad_accesses(), 0);
}

#[test]
fn non_fatal_error_carries_header_log_and_needs_no_reset() {
    let (mut f, mut t, mut s) = enabled(AerConfig::default());
    let (_own, mut g) = guest(&mut f, &mut t);
    let nvme = b("01:00.0");
    let a = aer_of(&t, nvme);
    // Completion Timeout (14): non-fatal by default. The sim does not log
    // headers; put one there as hardware would.
    let mut hdr = Vec::new();
    for w in [0x4a00_0001u32, 0x0100_0004, 0x0000_0010, 0] {
        hdr.extend_from_slice(&w.to_le_bytes());
    }
    assert!(f.poke(nvme, a + 0x1c, &hdr));
    let msg = f.inject_aer(nvme, SimAerError::Uncorrectable(14)).unwrap();
    assert!(!msg.fatal);
    let r = s.service(&t, &mut f, msg.root_port, 0).unwrap();
    let ev = events(&r);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].severity, Severity::NonFatal);
    assert_eq!(ev[0].uncorrectable_status, 1 << 14);
    assert_eq!(ev[0].header_log, [0x4a00_0001, 0x0100_0004, 0x10, 0]);
    assert_eq!(f.read32(nvme, a + AER_UNCOR_STATUS), 0);
    let mut tr = RecoveryTracker::new(100 * MS);
    assert_eq!(
        tr.on_event(&ev[0], Owner::Guest(1)),
        RecoveryState::Delivered
    );
    assert_eq!(tr.poll(u64::MAX), None);
    assert_eq!(tr.log().count(), 1);

    let d = g.aer_deliver(&ev[0]).unwrap();
    assert!(d.interrupt);
    let st = g.config_read(&mut f, off(0, 1, 0, 0x100 + AER_ROOT_STATUS), 4);
    assert_eq!(st, AER_ROOT_STATUS_UNCOR | AER_ROOT_STATUS_NONFATAL);
    let src = g.config_read(&mut f, off(0, 1, 0, 0x100 + AER_ERROR_SOURCE), 4);
    assert_eq!(src >> 16, 0x0100);
    // Header log and First Error Pointer in the guest's view.
    assert_eq!(
        g.config_read(&mut f, off(1, 0, 0, 0x100 + 0x1c), 4),
        0x4a00_0001
    );
    assert_eq!(
        g.config_read(&mut f, off(1, 0, 0, 0x100 + AER_CAP_CTRL), 4) & 0x1f,
        14
    );
    // The device keeps working.
    assert_eq!(f.read16(nvme, VENDOR_ID), 0x1b36);
}

#[test]
fn fatal_error_freezes_until_the_owner_resets_through_sbr() {
    let (mut f, mut t, mut s) = enabled(AerConfig::default());
    let (own, mut g) = guest(&mut f, &mut t);
    let nvme = b("01:00.0");
    let msg = f.inject_aer(nvme, SimAerError::Uncorrectable(4)).unwrap();
    assert!(msg.fatal);
    let r = s.service(&t, &mut f, msg.root_port, 10 * MS).unwrap();
    let ev = events(&r)[0];
    assert_eq!(ev.severity, Severity::Fatal);
    let mut tr = RecoveryTracker::new(AerConfig::default().reset_deadline_ns);
    assert_eq!(
        tr.on_event(&ev, own.owner(nvme)),
        RecoveryState::FrozenAwaitingReset
    );
    assert_eq!(tr.next_deadline(), Some(10 * MS + AER_CONFIG_DEADLINE));
    assert!(tr.is_frozen(nvme));

    let d = g.aer_deliver(&ev).unwrap();
    assert!(d.interrupt);
    let st = g.config_read(&mut f, off(0, 1, 0, 0x100 + AER_ROOT_STATUS), 4);
    assert_eq!(
        st,
        AER_ROOT_STATUS_UNCOR | AER_ROOT_STATUS_FIRST_FATAL | AER_ROOT_STATUS_FATAL
    );
    // The guest reads its AER, then SBR on its virtual root port.
    assert_eq!(
        g.config_read(&mut f, off(1, 0, 0, 0x100 + AER_UNCOR_STATUS), 4),
        1 << 4
    );
    let mut e = Effects::new();
    let bc = off(0, 1, 0, BRIDGE_CONTROL);
    g.config_write(&mut f, bc, 2, BRIDGE_CONTROL_SBR as u32, &mut e);
    g.config_write(&mut f, bc, 2, 0, &mut e);
    assert!(
        e.iter()
            .any(|x| *x == Effect::SecondaryBusReset { unit: 0 })
    );
    // The shell: the narrowest real reset of the unit.
    let fns = recovery_functions(&t, |x| own.owner(x), nvme);
    assert_eq!(fns, vec![nvme]);
    assert_eq!(tr.on_owner_reset(&fns), 1);
    assert_eq!(
        tr.recovery(nvme).unwrap().state,
        RecoveryState::ResetByOwner
    );
    assert_eq!(
        tr.poll(u64::MAX),
        None,
        "no hypervisor reset once the owner asked"
    );
    let out = run_reset(&t, &mut f, |x| own.owner(x), &fns);
    assert_eq!(out, ResetOutcome::Ready);
    let done = tr.on_reset_done(&fns, &[], true);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].state, RecoveryState::Recovered);
    assert!(!done[0].by_hypervisor);
    assert!(!tr.is_frozen(nvme));
    // The device works again and the port still reports errors.
    assert_eq!(f.read16(nvme, VENDOR_ID), 0x1b36);
    let msg = f.inject_aer(nvme, SimAerError::Correctable(0)).unwrap();
    assert!(msg.interrupt);
    let now = f.now_ns();
    let r = s.service(&t, &mut f, msg.root_port, now).unwrap();
    assert_eq!(events(&r).len(), 1);
    assert_eq!(f.bad_accesses(), 0);
}

const AER_CONFIG_DEADLINE: u64 = AerConfig::DEFAULT.reset_deadline_ns;

#[test]
fn ignored_fatal_error_is_reset_by_the_hypervisor_after_the_deadline() {
    let (mut f, mut t, mut s) = enabled(AerConfig::default());
    let (own, mut g) = guest(&mut f, &mut t);
    let nvme = b("01:00.0");
    let msg = f.inject_aer(nvme, SimAerError::Uncorrectable(18)).unwrap();
    let ev = events(&s.service(&t, &mut f, msg.root_port, 0).unwrap())[0];
    assert_eq!(ev.severity, Severity::Fatal);
    let mut tr = RecoveryTracker::new(50 * MS);
    tr.on_event(&ev, own.owner(nvme));
    g.aer_deliver(&ev).unwrap();
    // A second fatal error while frozen is coalesced.
    assert_eq!(
        tr.on_event(&ev, own.owner(nvme)),
        RecoveryState::FrozenAwaitingReset
    );
    assert_eq!(tr.recovery(nvme).unwrap().coalesced, 1);
    assert_eq!(tr.poll(50 * MS - 1), None);
    let need = tr.poll(50 * MS).unwrap();
    assert_eq!((need.source, need.owner), (nvme, Owner::Guest(1)));
    assert_eq!(tr.poll(50 * MS), None, "returned once");
    assert_eq!(
        tr.recovery(nvme).unwrap().state,
        RecoveryState::ResetByHypervisor
    );
    let fns = recovery_functions(&t, |x| own.owner(x), need.source);
    assert_eq!(
        run_reset(&t, &mut f, |x| own.owner(x), &fns),
        ResetOutcome::Ready
    );
    let done = tr.on_reset_done(&fns, &[], true);
    assert_eq!(done[0].state, RecoveryState::Recovered);
    assert!(done[0].by_hypervisor);
    assert!(tr.log().last().unwrap().by_hypervisor);
    // Marked in the guest's view; RW1C.
    assert!(g.aer_mark_hypervisor_reset(&need.event));
    let rs = off(0, 1, 0, 0x100 + AER_ROOT_STATUS);
    let st = g.config_read(&mut f, rs, 4);
    assert_ne!(st & ROOT_STATUS_HV_RESET, 0);
    assert_ne!(st & AER_ROOT_STATUS_FATAL, 0);
    assert_eq!(
        g.config_read(&mut f, off(1, 0, 0, 0x100 + AER_UNCOR_STATUS), 4),
        1 << 18
    );
    let mut e = Effects::new();
    g.config_write(&mut f, rs, 4, st, &mut e);
    assert_eq!(g.config_read(&mut f, rs, 4), 0);
    assert_eq!(f.read16(nvme, VENDOR_ID), 0x1b36);
}

#[test]
fn a_function_that_does_not_come_back_is_quarantined_and_surprise_removed() {
    let never = SimReadiness {
        delay_ns: 0,
        mode: NotReady::Rrs,
        never: true,
    };
    let (f, t) = fabric_with(Spec::qemu_nvme().readiness(never));
    let (mut f, mut t, mut s) = enable_all(AerConfig::default(), f, t);
    let (own, mut g) = guest(&mut f, &mut t);
    let nvme = b("01:00.0");
    let msg = f.inject_aer(nvme, SimAerError::Uncorrectable(4)).unwrap();
    let ev = events(&s.service(&t, &mut f, msg.root_port, 0).unwrap())[0];
    let mut tr = RecoveryTracker::new(MS);
    tr.on_event(&ev, own.owner(nvme));
    g.aer_deliver(&ev).unwrap();
    let need = tr.poll(MS).unwrap();
    let fns = recovery_functions(&t, |x| own.owner(x), need.source);
    let out = run_reset(&t, &mut f, |x| own.owner(x), &fns);
    let ResetOutcome::TimedOut(lost) = out else {
        panic!("{out:?}");
    };
    assert_eq!(lost, vec![nvme]);
    let done = tr.on_reset_done(&[], &lost, true);
    assert_eq!(done[0].state, RecoveryState::Quarantined);
    assert!(g.aer_surprise_remove(nvme));
    assert_eq!(g.config_read(&mut f, off(1, 0, 0, 0), 4), u32::MAX);
    let slt = g.config_read(&mut f, off(0, 1, 0, 0x40 + PCIE_SLTSTA), 2) as u16;
    assert_eq!(slt & PCIE_SLTSTA_PDS, 0);
    assert_ne!(slt & (1 << 3), 0, "presence detect changed");
    let lnk = g.config_read(&mut f, off(0, 1, 0, 0x40 + PCIE_LNKSTA), 2) as u16;
    assert_eq!(lnk & PCIE_LNKSTA_DLLLA, 0);
    let u = g.config_read(&mut f, off(0, 1, 0, 0x100 + AER_UNCOR_STATUS), 4);
    assert_eq!(u & UNCOR_SURPRISE_DOWN, UNCOR_SURPRISE_DOWN);
    // Reprogramming bus numbers does not bring it back.
    program_root_ports(&mut g, &mut f);
    assert_eq!(g.config_read(&mut f, off(1, 0, 0, 0), 4), u32::MAX);
}

#[test]
fn correctable_storm_is_masked_after_the_threshold_without_livelock() {
    let cfg = AerConfig {
        storm_threshold: 4,
        storm_window_ns: 1000 * MS,
        ..AerConfig::default()
    };
    let (mut f, t, mut s) = enabled(cfg);
    let nvme = b("01:00.0");
    let a = aer_of(&t, nvme);
    let (mut delivered, mut storms, mut interrupts) = (0, 0, 0);
    for i in 0..1000u64 {
        let Some(msg) = f.inject_aer(nvme, SimAerError::Correctable(0)) else {
            continue; // masked: no message, no interrupt
        };
        if !msg.interrupt {
            continue;
        }
        interrupts += 1;
        let r = s.service(&t, &mut f, msg.root_port, i * MS).unwrap();
        for rep in r.iter() {
            match rep {
                AerReport::Event(_) => delivered += 1,
                AerReport::StormMasked { source, masked, .. } => {
                    assert_eq!((*source, *masked), (nvme, 1));
                    storms += 1;
                }
                AerReport::SourceNotFound { .. } => panic!("{rep:?}"),
            }
        }
    }
    assert_eq!((delivered, storms, interrupts), (4, 1, 5));
    assert_eq!(f.read32(nvme, a + AER_COR_MASK) & 1, 1);
    assert_eq!(s.storm_masked(nvme), (1, 0));
    assert_eq!(s.stats.suppressed, 1);
    // Another bit still gets through; unmasking restores the mask.
    s.unmask_storm(&mut f, &t, nvme);
    assert_eq!(f.read32(nvme, a + AER_COR_MASK) & 1, 0);
    assert_eq!(
        f.read32(nvme, a + AER_COR_MASK) & 0x2000,
        0x2000,
        "other bits kept"
    );
    let msg = f.inject_aer(nvme, SimAerError::Correctable(0)).unwrap();
    let r = s.service(&t, &mut f, msg.root_port, 2000 * MS).unwrap();
    assert_eq!(events(&r).len(), 1);
}

#[test]
fn window_restarts_so_a_slow_trickle_is_never_masked() {
    let cfg = AerConfig {
        storm_threshold: 2,
        storm_window_ns: 10 * MS,
        ..AerConfig::default()
    };
    let (mut f, t, mut s) = enabled(cfg);
    let nvme = b("01:00.0");
    for i in 0..20u64 {
        let msg = f.inject_aer(nvme, SimAerError::Correctable(7)).unwrap();
        let r = s.service(&t, &mut f, msg.root_port, i * 20 * MS).unwrap();
        assert_eq!(events(&r).len(), 1);
    }
    assert_eq!(s.storm_masked(nvme), (0, 0));
}

#[test]
fn unusable_source_id_falls_back_to_the_status_search() {
    let (mut f, t, mut s) = enabled(AerConfig::default());
    let e1000e = b("06:00.0");
    let rp = b("00:03.0");
    let msg = f
        .inject_aer(e1000e, SimAerError::Uncorrectable(14))
        .unwrap();
    assert_eq!(msg.root_port, rp);
    // A bogus Source ID (a function of another hierarchy), then 0.
    let ra = aer_of(&t, rp);
    for bogus in [0x0100_0000u32, 0] {
        assert!(f.poke(rp, ra + AER_ERROR_SOURCE, &bogus.to_le_bytes()));
        let r = s.service(&t, &mut f, rp, 0).unwrap();
        let ev = events(&r);
        assert_eq!(ev.len(), 1, "{bogus:#x}");
        assert_eq!(ev[0].source, e1000e);
        assert_eq!(ev[0].severity, Severity::NonFatal);
        assert_eq!(f.read32(rp, ra + AER_ROOT_STATUS), 0);
        // Raise it again for the next round.
        f.inject_aer(e1000e, SimAerError::Uncorrectable(14))
            .unwrap();
    }
    // Root Error Status flagged but no function shows anything: logged.
    let r = s.service(&t, &mut f, rp, 0).unwrap();
    assert_eq!(events(&r).len(), 1);
    assert!(f.poke(rp, ra + AER_ROOT_STATUS, &AER_ROOT_STATUS_COR.to_le_bytes()));
    let r = s.service(&t, &mut f, rp, 0).unwrap();
    assert!(matches!(
        r.iter().collect::<Vec<_>>().as_slice(),
        [AerReport::SourceNotFound {
            correctable: true,
            ..
        }]
    ));
    assert_eq!(s.stats.not_found, 1);
}

#[test]
fn multiple_errors_below_one_port_are_all_found() {
    let (mut f, t, mut s) = enabled(AerConfig::default());
    let (nvme, e1000e, rp) = (b("05:00.0"), b("06:00.0"), b("00:03.0"));
    f.inject_aer(nvme, SimAerError::Correctable(6)).unwrap();
    f.inject_aer(e1000e, SimAerError::Correctable(12)).unwrap();
    f.inject_aer(e1000e, SimAerError::Uncorrectable(4)).unwrap();
    f.inject_aer(nvme, SimAerError::Uncorrectable(14)).unwrap();
    let ra = aer_of(&t, rp);
    let st = f.read32(rp, ra + AER_ROOT_STATUS);
    assert_ne!(st & AER_ROOT_STATUS_MULTI_COR, 0);
    assert_ne!(st & AER_ROOT_STATUS_MULTI_UNCOR, 0);
    let r = s.service(&t, &mut f, rp, 0).unwrap();
    let mut got: Vec<(Bdf, Severity, u32)> = events(&r)
        .iter()
        .map(|e| (e.source, e.severity, e.status()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (nvme, Severity::Correctable, 1 << 6),
            (nvme, Severity::NonFatal, 1 << 14),
            (e1000e, Severity::Correctable, 1 << 12),
            (e1000e, Severity::Fatal, 1 << 4),
        ]
    );
    assert_eq!(f.read32(rp, ra + AER_ROOT_STATUS), 0);
    // The switch's fatal error resets the link above the e1000e: its
    // downstream port.
    let fns = recovery_functions(&t, |_| Owner::Hwdom, e1000e);
    assert_eq!(fns, vec![e1000e]);
}

#[test]
fn hwdom_source_is_routed_to_the_hwdom_view() {
    let (mut f, mut t, mut s) = enabled(AerConfig::default());
    let (own, _g) = guest(&mut f, &mut t);
    let (e1000e, rp) = (b("02:00.0"), b("00:02.0"));
    let msg = f.inject_aer(e1000e, SimAerError::Correctable(0)).unwrap();
    let ev = events(&s.service(&t, &mut f, msg.root_port, 0).unwrap())[0];
    assert_eq!(own.owner(ev.source), Owner::Hwdom);
    let mut h = HwdomAer::new();
    let ra = aer_of(&t, rp);
    let ea = aer_of(&t, e1000e);
    // Linux's probe in the hwdom: Root Error Command through the overlay;
    // the physical one stays the hypervisor's.
    assert!(h.write(&t, rp, ra + AER_ROOT_COMMAND, 4, 7));
    assert!(h.write(&t, rp, ra + AER_ROOT_COMMAND, 4, 7));
    assert_eq!(f.read32(rp, ra + AER_ROOT_COMMAND), 7);
    assert_eq!(h.deliver(&t, &ev), Some((rp, true)));
    assert_eq!(
        h.read(&t, rp, ra + AER_ROOT_STATUS, 4),
        Some(AER_ROOT_STATUS_COR)
    );
    assert_eq!(
        h.read(&t, rp, ra + AER_ERROR_SOURCE, 4),
        Some(e1000e.rid() as u32)
    );
    assert_eq!(h.read(&t, e1000e, ea + AER_COR_STATUS, 4), Some(1));
    assert_eq!(f.read32(e1000e, ea + AER_COR_STATUS), 0, "physical cleared");
    // Masks stay physical.
    assert_eq!(h.read(&t, e1000e, ea + AER_COR_MASK, 4), None);
    assert!(!h.write(&t, e1000e, ea + AER_COR_MASK, 4, 0));
    // W1C in the overlay.
    assert!(h.write(&t, e1000e, ea + AER_COR_STATUS, 4, 1));
    assert_eq!(h.read(&t, e1000e, ea + AER_COR_STATUS, 4), Some(0));
    assert!(h.interrupt_asserted(rp));
    assert!(h.write(&t, rp, ra + AER_ROOT_STATUS, 4, AER_ROOT_STATUS_COR));
    assert!(!h.interrupt_asserted(rp));
    assert_eq!(f.read32(rp, ra + AER_ROOT_COMMAND), 7);
}

// ------------------------------------------------------- virtual registers

fn ev(source: Bdf, severity: Severity, cor: u32, uncor: u32) -> AerEvent {
    let mut e = AerEvent::new(source, severity, 0);
    e.correctable_status = cor;
    e.uncorrectable_status = uncor;
    e
}

#[test]
fn virtual_registers_w1c_masks_and_first_multiple_bits() {
    let src = b("01:00.0");
    let mut rp = VirtualAer::root_port();
    let mut fun = VirtualAer::endpoint();
    rp.write(AER_ROOT_COMMAND, 4, 7);
    assert_eq!(rp.read(AER_ROOT_COMMAND, 4), 7);
    // Read-only fields stay.
    rp.write(0, 4, 0);
    assert_eq!(rp.read(0, 2), EXT_CAP_ID_AER as u32);
    rp.write(AER_ERROR_SOURCE, 4, 0x1234_5678);
    assert_eq!(rp.read(AER_ERROR_SOURCE, 4), 0);

    // A masked correctable error: status set, nothing signalled.
    fun.write(AER_COR_MASK, 4, 1);
    assert!(!rp.deliver(
        &ev(src, Severity::Correctable, 1, 0),
        Some(&mut fun),
        0x0100
    ));
    assert_eq!(fun.read(AER_COR_STATUS, 4), 1);
    assert_eq!(rp.read(AER_ROOT_STATUS, 4), 0);
    assert!(!rp.interrupt_asserted());
    // Unmasked: first, then multiple; the first source is kept.
    assert!(rp.deliver(
        &ev(src, Severity::Correctable, 1 << 6, 0),
        Some(&mut fun),
        0x0100
    ));
    assert!(rp.deliver(
        &ev(src, Severity::Correctable, 1 << 7, 0),
        Some(&mut fun),
        0x0200
    ));
    assert_eq!(
        rp.read(AER_ROOT_STATUS, 4),
        AER_ROOT_STATUS_COR | AER_ROOT_STATUS_MULTI_COR
    );
    assert_eq!(rp.read(AER_ERROR_SOURCE, 2), 0x0100);
    // The guest's severity decides: Completion Timeout made fatal.
    fun.write(AER_UNCOR_SEVER, 4, 1 << 14);
    assert!(rp.deliver(
        &ev(src, Severity::NonFatal, 0, 1 << 14),
        Some(&mut fun),
        0x0100
    ));
    let st = rp.read(AER_ROOT_STATUS, 4);
    assert_eq!(
        st & 0x7c,
        AER_ROOT_STATUS_UNCOR | AER_ROOT_STATUS_FIRST_FATAL | AER_ROOT_STATUS_FATAL
    );
    assert_eq!(rp.read(AER_ERROR_SOURCE + 2, 2), 0x0100);
    // Byte-wide W1C of the low byte clears everything flagged.
    rp.write(AER_ROOT_STATUS, 1, 0xff);
    assert_eq!(rp.read(AER_ROOT_STATUS, 4), 0);
    assert!(!rp.interrupt_asserted());
    // Root Error Command disables the kind: status set, no interrupt.
    rp.write(AER_ROOT_COMMAND, 4, 0);
    assert!(!rp.deliver(&ev(src, Severity::Correctable, 1, 0), None, 0x0100));
    assert_eq!(rp.read(AER_ROOT_STATUS, 4), AER_ROOT_STATUS_COR);
    // Undefined bits are neither set nor writable.
    fun.write(AER_UNCOR_MASK, 4, u32::MAX);
    assert_eq!(fun.read(AER_UNCOR_MASK, 4), UNCOR_BITS);
    fun.write(AER_UNCOR_STATUS, 4, u32::MAX);
    assert_eq!(fun.read(AER_UNCOR_STATUS, 4), 0);
    // An endpoint has no root registers.
    assert_eq!(fun.read(AER_ROOT_STATUS, 4), 0);
}

#[test]
fn header_log_is_kept_until_the_pointed_error_is_cleared() {
    let src = b("01:00.0");
    let mut fun = VirtualAer::endpoint();
    let mut a = ev(src, Severity::NonFatal, 0, 1 << 14);
    a.header_log = [1, 2, 3, 4];
    fun.record(&a);
    let mut c = ev(src, Severity::NonFatal, 0, 1 << 16);
    c.header_log = [5, 6, 7, 8];
    fun.record(&c);
    assert_eq!(fun.read(AER_CAP_CTRL, 4) & 0x1f, 14);
    assert_eq!(fun.read(0x1c, 4), 1);
    fun.write(AER_UNCOR_STATUS, 4, 1 << 14);
    fun.record(&c);
    assert_eq!(fun.read(AER_CAP_CTRL, 4) & 0x1f, 16);
    assert_eq!(fun.read(0x28, 4), 8);
}

#[test]
fn guest_masks_are_honoured_in_the_virtual_root_status() {
    let (mut f, mut t, mut s) = enabled(AerConfig::default());
    let (_own, mut g) = guest(&mut f, &mut t);
    let nvme = b("01:00.0");
    let mut e = Effects::new();
    // The guest masks Bad TLP (6) in its virtual Correctable Mask.
    g.config_write(
        &mut f,
        off(1, 0, 0, 0x100 + AER_COR_MASK),
        4,
        1 << 6,
        &mut e,
    );
    let msg = f.inject_aer(nvme, SimAerError::Correctable(6)).unwrap();
    let ev = events(&s.service(&t, &mut f, msg.root_port, 0).unwrap())[0];
    let d = g.aer_deliver(&ev).unwrap();
    assert!(!d.interrupt);
    assert_eq!(
        g.config_read(&mut f, off(0, 1, 0, 0x100 + AER_ROOT_STATUS), 4),
        0
    );
    assert_eq!(
        g.config_read(&mut f, off(1, 0, 0, 0x100 + AER_COR_STATUS), 4),
        1 << 6
    );
    // The physical mask is untouched (the hypervisor still sees errors).
    let a = aer_of(&t, nvme);
    assert_eq!(f.read32(nvme, a + AER_COR_MASK) & (1 << 6), 0);
    // Not this guest's function.
    assert!(
        g.aer_deliver(&AerEvent::new(b("02:00.0"), Severity::Fatal, 0))
            .is_none()
    );
}

// ------------------------------------------------------------------- CPER

#[test]
fn cper_records_become_the_same_events() {
    let nvme = b("01:00.0");
    let all = cper::VALID_DEVICE_ID | cper::VALID_AER_INFO;
    // Fatal by the record's severity register.
    let fatal = entry(
        cper::PCIE_SECTION_GUID,
        cper::SEV_RECOVERABLE,
        0,
        0x300,
        &pcie_section(nvme, 1 << 4, 1 << 4, 0, all),
    );
    // Non-fatal.
    let nonfatal = entry(
        cper::PCIE_SECTION_GUID,
        cper::SEV_RECOVERABLE,
        0,
        0x201,
        &pcie_section(b("0001:02:03.1"), 1 << 14, 0x0046_2030, 0, all),
    );
    // A non-PCIe section (a processor error) is skipped.
    let other = entry([7; 16], cper::SEV_CORRECTED, 0, 0x300, &[1, 2, 3, 4]);
    // Corrected, no AER info.
    let cor = entry(
        cper::PCIE_SECTION_GUID,
        cper::SEV_CORRECTED,
        0,
        0x300,
        &pcie_section(nvme, 0, 0, 1, cper::VALID_DEVICE_ID),
    );
    // CPER_SEC_RESET makes a recoverable error fatal.
    let reset = entry(
        cper::PCIE_SECTION_GUID,
        cper::SEV_RECOVERABLE,
        cper::FLAG_RESET,
        0x300,
        &pcie_section(nvme, 1 << 14, 0, 0, all),
    );
    let blk = block(cper::SEV_FATAL, &[fatal, nonfatal, other, cor, reset]);
    let evs: Vec<AerEvent> = cper::events(&blk, 7).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(evs.len(), 4);
    assert_eq!(evs[0].source, nvme);
    assert_eq!(evs[0].severity, Severity::Fatal);
    assert_eq!(evs[0].uncorrectable_status, 1 << 4);
    assert_eq!(evs[0].header_log[0], 0xdead_beef);
    assert_eq!(evs[0].first_error_pointer, Some(4));
    assert!(evs[0].firmware_first);
    assert_eq!(evs[0].at_ns, 7);
    assert_eq!(evs[1].source, Bdf::new(1, 2, 3, 1));
    assert_eq!(evs[1].severity, Severity::NonFatal);
    assert_eq!(evs[2].severity, Severity::Correctable);
    assert_eq!(evs[2].correctable_status, 0, "AER info not valid");
    assert_eq!(evs[3].severity, Severity::Fatal);
    // Delivered the same way as a register-sourced event.
    let mut tr = RecoveryTracker::new(MS);
    assert_eq!(
        tr.on_event(&evs[0], Owner::Hwdom),
        RecoveryState::FrozenAwaitingReset
    );
    let mut rp = VirtualAer::root_port();
    rp.write(AER_ROOT_COMMAND, 4, 7);
    let mut fun = VirtualAer::endpoint();
    assert!(rp.deliver(&evs[0], Some(&mut fun), 0x0100));
    assert_eq!(fun.read(AER_UNCOR_STATUS, 4), 1 << 4);
    // Section details.
    let blk2 = block(
        0,
        &[entry(
            cper::PCIE_SECTION_GUID,
            0,
            0,
            0x300,
            &pcie_section(nvme, 0, 0, 0, cper::VALID_DEVICE_ID),
        )],
    );
    let sb = cper::parse_status_block(&blk2).unwrap();
    let e = sb.entries().next().unwrap().unwrap();
    let s = cper::PcieErrorSection::parse(e.data).unwrap();
    assert_eq!(
        (s.vendor_id, s.device_id, s.version),
        (0x8086, 0x10d3, (1, 0x10))
    );
    assert_eq!(s.aer_reg(AER_UNCOR_STATUS), None, "AER info not valid");
    // No device id: refused.
    let no_id = pcie_section(nvme, 1, 1, 0, cper::VALID_AER_INFO);
    assert_eq!(
        cper::PcieErrorSection::parse(&no_id)
            .unwrap()
            .to_event(0, 0, 0),
        Err(cper::CperError::NoDeviceId)
    );
}

#[test]
fn cper_truncated_and_garbage_records_are_errors_not_panics() {
    let nvme = b("01:00.0");
    let blk = block(
        cper::SEV_FATAL,
        &[entry(
            cper::PCIE_SECTION_GUID,
            cper::SEV_FATAL,
            0,
            0x300,
            &pcie_section(
                nvme,
                1 << 4,
                1 << 4,
                0,
                cper::VALID_DEVICE_ID | cper::VALID_AER_INFO,
            ),
        )],
    );
    assert_eq!(cper::events(&blk, 0).unwrap().count(), 1);
    // Every truncation: an error somewhere, never a panic nor an event.
    for len in 0..blk.len() {
        let cut = &blk[..len];
        if let Ok(it) = cper::events(cut, 0) {
            for e in it {
                assert!(e.is_err(), "len {len}");
            }
        }
    }
    assert_eq!(
        cper::parse_status_block(&[0; 20]).err(),
        Some(cper::CperError::Empty)
    );
    // Lengths pointing far outside.
    let mut bad = blk.clone();
    bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        cper::parse_status_block(&bad),
        Err(cper::CperError::Truncated { .. } | cper::CperError::BadLength)
    ));
    let mut bad = blk.clone();
    bad[20 + 24..20 + 28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(cper::events(&bad, 0).unwrap().all(|e| e.is_err()));
    // Pseudo-random garbage (deterministic): no panic, bounded output.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..2000 {
        let len = (round * 7) % 600;
        let mut buf = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(x as u8);
        }
        if round % 3 == 0 && buf.len() > 40 {
            // Plausible headers with garbage inside.
            buf[0] = 1;
            let dl = (len - 20) as u32;
            buf[12..16].copy_from_slice(&dl.to_le_bytes());
            buf[20..36].copy_from_slice(&cper::PCIE_SECTION_GUID);
        }
        if let Ok(it) = cper::events(&buf, 0) {
            assert!(it.take(1000).count() <= len / 64 + 1);
        }
        let _ = cper::PcieErrorSection::parse(&buf).map(|s| s.to_event(x as u32, x as u8, 0));
    }
}

// ------------------------------------------------------ hwdom ownership

/// The standard capability ids the hardware domain walks on `bdf`.
fn visible_cap_ids(h: &HwdomAer, f: &mut Fabric, bdf: Bdf) -> Vec<u8> {
    let mut ids = Vec::new();
    let mut p = h.patch_read(bdf, CAP_PTR, 1, f.read8(bdf, CAP_PTR) as u32) as u16;
    while p != 0 && ids.len() < 48 {
        ids.push(f.read8(bdf, p));
        // A dword read of the header, as Linux's walker does.
        let dw = h.patch_read(bdf, p, 4, f.read32(bdf, p));
        p = ((dw >> 8) & 0xfc) as u16;
    }
    ids
}

#[test]
fn an_owned_root_port_hides_msi_x_and_keeps_error_reporting_enabled() {
    let (mut f, t, _s) = enabled(AerConfig::default());
    let rp = b("00:01.0");
    let nvme = b("01:00.0");
    let mut h = HwdomAer::new();
    let before = visible_cap_ids(&h, &mut f, rp);
    assert!(before.contains(&CAP_ID_MSIX), "{before:?}");
    // A hwdom driver had turned the port's MSI-X on: taking it turns it off.
    let msix_ctl = t.function(rp).unwrap().caps.msix as u16 + 2;
    f.write16(rp, msix_ctl, 0x8000);
    assert_ne!(f.read16(rp, msix_ctl) & 0x8000, 0);
    h.own_port(&mut f, rp);
    assert_eq!(f.read16(rp, msix_ctl) & 0x8000, 0, "MSI-X off");
    assert!(h.owns_port(rp) && !h.owns_port(b("00:02.0")));
    let after = visible_cap_ids(&h, &mut f, rp);
    let expected: Vec<u8> = before
        .iter()
        .copied()
        .filter(|&id| id != CAP_ID_MSIX)
        .collect();
    assert_eq!(after, expected);
    // Enabling the hidden MSI-X is dropped.
    let msix = t.function(rp).unwrap().caps.msix as u16;
    assert_eq!(h.filter_write(&t, rp, msix + 2, 2, 0x8000), None);
    // enable() set the reporting path; the hwdom's writes cannot clear it.
    assert_ne!(f.read16(nvme, COMMAND) & COMMAND_SERR, 0);
    assert_ne!(f.read16(rp, BRIDGE_CONTROL) & BRIDGE_CONTROL_SERR, 0);
    assert_eq!(
        h.filter_write(&t, nvme, COMMAND, 2, 0x0006),
        Some(0x0006 | COMMAND_SERR as u32)
    );
    assert_eq!(
        h.filter_write(&t, nvme, COMMAND, 1, 0x06),
        Some(0x06),
        "the low byte holds no forced bit"
    );
    assert_eq!(
        h.filter_write(&t, nvme, COMMAND + 1, 1, 0),
        Some(u32::from(COMMAND_SERR >> 8))
    );
    assert_eq!(
        h.filter_write(&t, rp, 0x3c, 4, 0x0040_0000),
        Some(0x0040_0000 | (u32::from(BRIDGE_CONTROL_SERR) << 16)),
        "an SBR write keeps SERR# Enable"
    );
    let pcie = u16::from(t.function(nvme).unwrap().caps.pcie);
    assert_eq!(
        h.filter_write(&t, nvme, pcie + PCIE_DEVCTL, 2, 0x2000),
        Some(0x2000 | u32::from(DEVCTL_REPORTING))
    );
    // Nothing changes for a function below a port the hypervisor does not own.
    let e1000e = b("02:00.0");
    assert_eq!(h.filter_write(&t, e1000e, COMMAND, 2, 6), Some(6));
    assert_eq!(h.patch_read(b("00:02.0"), CAP_PTR, 1, 0x40), 0x40);
}

#[test]
fn an_flr_alone_leaves_a_fatal_error_waiting_for_its_link_reset() {
    let src = b("01:00.0");
    let mut r = RecoveryTracker::new(5_000 * MS);
    r.on_event(&AerEvent::new(src, Severity::Fatal, 0), Owner::Guest(1));
    assert!(r.on_reset_done(&[src], &[], false).is_empty());
    assert!(r.is_frozen(src));
    // Once the owner asked for the recovery, any reset it needed ends it.
    assert_eq!(r.on_owner_reset(&[src]), 1);
    let done = r.on_reset_done(&[src], &[], false);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].state, RecoveryState::Recovered);
}

#[test]
fn an_owner_deadline_overrides_the_default() {
    let mut r = RecoveryTracker::new(5_000 * MS);
    let e = AerEvent::new(b("01:00.0"), Severity::Fatal, 10 * MS);
    r.on_event_within(&e, Owner::Guest(1), 200 * MS);
    assert_eq!(r.next_deadline(), Some(210 * MS));
    assert_eq!(r.poll(209 * MS), None);
    assert_eq!(r.poll(210 * MS).map(|n| n.source), Some(b("01:00.0")));
}

#[test]
fn a_takeover_that_cannot_start_is_tried_again() {
    const MS: u64 = 1_000_000;
    let port = b("00:01.0");
    let mut tr = RecoveryTracker::new(100 * MS);
    let ev = AerEvent::new(port, Severity::Fatal, 0);
    assert_eq!(
        tr.on_event(&ev, Owner::Hwdom),
        RecoveryState::FrozenAwaitingReset
    );
    let need = tr.poll(100 * MS).unwrap();
    assert!(!need.retry);
    // Another reset over part of its functions runs: the takeover is
    // refused and retried; nothing is due before then.
    assert!(tr.retry_at(port, 110 * MS));
    assert_eq!(tr.next_deadline(), Some(110 * MS));
    assert_eq!(tr.poll(109 * MS), None);
    let again = tr.poll(110 * MS).unwrap();
    assert!(again.retry && again.source == port);
    assert_eq!(tr.poll(u64::MAX), None, "once per retry");
    assert_eq!(tr.next_deadline(), None);
    // The reset that then runs ends it.
    let out = tr.on_reset_done(&[port], &[], true);
    assert_eq!(out[0].state, RecoveryState::Recovered);
    assert!(!tr.retry_at(port, 0), "nothing waits any more");
}

#[test]
fn an_error_logged_while_masked_is_reported_once_unmasked_and_searched() {
    // A masked error still sets its status bit (no message). Unmasked, it
    // is pending like any other: when a later message makes the service
    // search the root port's subtree (several errors before it ran), the
    // function is a source though no message named it. Not a
    // misattribution: it had that error.
    let (mut f, t, mut s) = enabled(AerConfig::default());
    let (nvme, e1000e) = (b("05:00.0"), b("06:00.0"));
    let a = aer_of(&t, nvme);
    f.write32(nvme, a + AER_COR_MASK, 1);
    assert_eq!(f.inject_aer(nvme, SimAerError::Correctable(0)), None);
    assert_eq!(f.read32(nvme, a + AER_COR_STATUS) & 1, 1, "logged");
    f.write32(nvme, a + AER_COR_MASK, 0);
    let first = f.inject_aer(e1000e, SimAerError::Correctable(6)).unwrap();
    f.inject_aer(e1000e, SimAerError::Correctable(7)).unwrap();
    let r = s.service(&t, &mut f, first.root_port, 0).unwrap();
    let mut sources: Vec<Bdf> = events(&r).iter().map(|e| e.source).collect();
    sources.sort();
    assert_eq!(sources, [nvme, e1000e]);
    assert_eq!(f.read32(nvme, a + AER_COR_STATUS), 0, "cleared");
}
