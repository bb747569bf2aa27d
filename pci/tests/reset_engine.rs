//! The reset engine against the simulated fabric, with a fake clock: every
//! method, its timing, save/restore, masking, MSI-X restore, backdoor
//! detection, narrowest reset, reservations, quarantine.

mod common;
use common::*;

use pci::regs::*;
use pci::reset_engine::*;
use pci::sim::{Fabric, NotReady, SimReadiness, Spec, devfn};
use pci::vpci::Owner;
use pci::{Bdf, ConfigPort, MemoryPort, ResetAction, ResetMethod, Topology};

const MS: u64 = 1_000_000;

fn ready_after(ms: u64, mode: NotReady) -> SimReadiness {
    SimReadiness {
        delay_ns: ms * MS,
        mode,
        never: false,
    }
}

const NEVER: SimReadiness = SimReadiness {
    delay_ns: 0,
    mode: NotReady::Rrs,
    never: true,
};

/// 00:01.0 root port (RRS SV) -> 01:00.0 switch up -> 02:00.0 down -> 03:00.0 nvme
///                                                 -> 02:01.0 down -> 04:00.0 e1000e
/// 00:02.0 root port (RRS SV, no slot) -> 05:00.0 nvme (readiness `nvme2`)
/// 00:03.0 root port -> 06:00.0 endpoint with AF FLR only, 06:00.1 PM only
fn fabric(nvme2: SimReadiness) -> Fabric {
    Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                Spec::qemu_root_port().rrs_sv(true).child(
                    0,
                    0,
                    Spec::qemu_x3130_upstream()
                        .child(
                            0,
                            0,
                            Spec::qemu_x3130_downstream().hotplug_slot(false).child(
                                0,
                                0,
                                Spec::qemu_nvme(),
                            ),
                        )
                        .child(
                            1,
                            0,
                            Spec::qemu_x3130_downstream().child(0, 0, Spec::qemu_e1000e()),
                        ),
                ),
            ),
            (
                devfn(2, 0),
                Spec::qemu_root_port()
                    .rrs_sv(true)
                    .hotplug_slot(false)
                    .child(0, 0, Spec::qemu_nvme().readiness(nvme2)),
            ),
            (
                devfn(3, 0),
                Spec::qemu_root_port()
                    .hotplug_slot(false)
                    .child(
                        0,
                        0,
                        Spec::endpoint(0x1234, 0x10)
                            .flr(false)
                            .af_flr(true)
                            .pm(None),
                    )
                    .child(
                        0,
                        1,
                        Spec::endpoint(0x1234, 0x11).flr(false).pm(Some(false)),
                    ),
            ),
        ],
    )
}

fn setup(nvme2: SimReadiness) -> (Fabric, Topology) {
    let mut f = fabric(nvme2);
    let t = track(&mut f);
    (f, t)
}

/// Programs an nvme at `bdf` like a driver: BAR0 at `pa`, memory + bus
/// master, MSI-X enabled with entries 0..4 programmed.
fn program_nvme(f: &mut Fabric, t: &Topology, bdf: Bdf, pa: u64) -> Vec<[u32; 4]> {
    f.write32(bdf, BAR0, pa as u32);
    f.write32(bdf, BAR0 + 4, (pa >> 32) as u32);
    f.write16(bdf, COMMAND, COMMAND_MEMORY | COMMAND_BUS_MASTER);
    let msix = t.function(bdf).unwrap().caps.msix as u16;
    f.write16(
        bdf,
        msix + MSIX_FLAGS,
        MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL,
    );
    let shadow: Vec<[u32; 4]> = (0..4u32)
        .map(|i| [0x0800_0040 + 4 * i, 0, 0x100 + i, 0])
        .collect();
    for (i, e) in shadow.iter().enumerate() {
        for (w, v) in e.iter().enumerate() {
            f.write(pa + i as u64 * 16 + w as u64 * 4, 4, *v as u64);
        }
    }
    f.write16(bdf, msix + MSIX_FLAGS, MSIX_FLAGS_ENABLE);
    shadow
}

struct Run {
    outcome: ResetOutcome,
    /// Every time the job asked to be woken.
    waits: Vec<u64>,
}

/// Drives a job to completion, advancing the sim's clock to each deadline.
fn drive(
    job: &mut ResetJob,
    t: &Topology,
    f: &mut Fabric,
    shadow: &dyn MsixShadow,
    mut step: Step,
) -> Run {
    let mut waits = Vec::new();
    for _ in 0..100_000 {
        match step {
            Step::Wait { until_ns } => {
                assert!(until_ns >= f.now_ns(), "deadline in the past");
                waits.push(until_ns);
                let now = f.now_ns();
                f.advance_ns(until_ns - now);
                step = job.step(t, f, shadow, until_ns);
            }
            Step::Done { outcome } => return Run { outcome, waits },
        }
    }
    panic!("job never finished");
}

fn start(t: &Topology, f: &mut Fabric, action: ResetAction) -> (ResetJob, Step) {
    let scope = t.action_scope(action);
    let saved = SavedState::capture(t, f, &scope);
    ResetJob::start(t, f, action, f.now_ns(), saved).unwrap()
}

#[test]
fn sbr_of_root_port_resets_and_restores_everything_below_top_down() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("03:00.0");
    let e1000e = b("04:00.0");
    let shadow = program_nvme(&mut f, &t, nvme, 0x1000_0000);
    f.write32(e1000e, BAR0, 0x1100_0000);
    f.write16(e1000e, COMMAND, COMMAND_MEMORY);
    // Windows of the downstream port above the nvme, as the hwdom set them.
    f.write32(b("02:00.0"), MEMORY_BASE, 0x1000_1000);
    let acs_dp = t.function(b("02:00.0")).unwrap().caps.acs;
    let acs_before = f.read16(b("02:00.0"), acs_dp + ACS_CTRL);
    assert_ne!(acs_before, 0, "the tracker enabled ACS");
    let before: Vec<u32> = (0..16).map(|i| f.read32(b("02:00.0"), i * 4)).collect();
    let rp = b("00:01.0");
    let action = ResetAction::SecondaryBus { bridge: rp };
    let (mut job, step) = start(&t, &mut f, action);
    assert_eq!(
        job.scope(),
        &[
            b("01:00.0"),
            b("02:00.0"),
            b("02:01.0"),
            b("03:00.0"),
            b("04:00.0")
        ]
    );
    assert_eq!(step, Step::Wait { until_ns: MS });
    // Asserted: everything below is gone, bus numbers included.
    assert_eq!(f.read32(b("01:00.0"), 0), u32::MAX);
    let sh = |bdf: Bdf, i: u16| (bdf == nvme).then(|| shadow[i as usize % 4]);
    let run = drive(&mut job, &t, &mut f, &sh, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    // 1 ms Trst, link up seen at deassert, 100 ms, first poll finds all.
    assert_eq!(job.reset_exit_ns(), Some(MS));
    assert_eq!(job.link_up_ns(), Some(MS));
    assert_eq!(job.first_ready_ns(), Some(101 * MS));
    assert_eq!(run.waits, vec![MS, 101 * MS]);
    // Restored top-down: the deep functions answer again with their state.
    let after: Vec<u32> = (0..16).map(|i| f.read32(b("02:00.0"), i * 4)).collect();
    assert_eq!(before, after);
    assert_eq!(f.read16(b("02:00.0"), acs_dp + ACS_CTRL), acs_before);
    assert_eq!(f.read32(nvme, BAR0), 0x1000_0004);
    assert_eq!(f.read16(nvme, COMMAND), COMMAND_MEMORY | COMMAND_BUS_MASTER);
    assert_eq!(f.read32(e1000e, BAR0), 0x1100_0000);
    // MSI-X table rewritten from the shadow, then Message Control restored.
    for i in 0..4 {
        assert_eq!(f.msix_entry(nvme, i), Some(shadow[i as usize]));
    }
    let msix = t.function(nvme).unwrap().caps.msix as u16;
    assert_eq!(
        f.read16(nvme, msix + MSIX_FLAGS) & 0xc000,
        MSIX_FLAGS_ENABLE
    );
    assert!(!job.masks(nvme));
    assert_eq!(f.bad_accesses(), 0);
}

#[test]
fn sbr_figure_is_within_5_percent_of_the_spec_floor() {
    let (mut f, t) = setup(SimReadiness::default());
    let (mut job, step) = start(
        &t,
        &mut f,
        ResetAction::SecondaryBus {
            bridge: b("00:02.0"),
        },
    );
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    let from_assert = job.first_ready_ns().unwrap() - job.started_ns();
    let from_deassert = job.first_ready_ns().unwrap() - job.reset_exit_ns().unwrap();
    println!(
        "figure: SBR assert -> device answers {} us (floor 101000 us, Linux 1002000 us); \
         deassert -> answers {} us (floor 100000 us)",
        from_assert / 1000,
        from_deassert / 1000
    );
    assert!(from_assert >= 101 * MS, "never earlier than the floor");
    assert!(from_assert * 100 <= 101 * MS * 105, "within 5% of 101 ms");
    assert_eq!(from_deassert, 100 * MS);
}

#[test]
fn masked_reads_during_the_job() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    let (mut job, step) = start(
        &t,
        &mut f,
        ResetAction::SecondaryBus {
            bridge: b("00:02.0"),
        },
    );
    assert!(job.masks(nvme));
    assert!(!job.masks(b("00:02.0")), "the bridge itself is not reset");
    assert!(!job.masks(b("03:00.0")));
    assert_eq!(job.masked_config_read(nvme, 0, 4, false), Some(u32::MAX));
    assert_eq!(job.masked_config_read(nvme, 0, 4, true), Some(0xffff_0001));
    assert_eq!(job.masked_config_read(nvme, 0, 2, true), Some(0x0001));
    assert_eq!(job.masked_config_read(nvme, 0, 1, true), Some(0xff));
    assert_eq!(job.masked_config_read(nvme, 4, 2, true), Some(0xffff));
    assert_eq!(job.masked_config_read(b("03:00.0"), 0, 4, true), None);
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert!(!job.masks(nvme));
    assert_eq!(job.phase(), Phase::Done);
}

#[test]
fn flr_timing_and_restore() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    let shadow = program_nvme(&mut f, &t, nvme, 0x2000_0000);
    // A backdoor-free baseline: the table is intact.
    assert!(!msix_table_lost(&mut f, 0x2000_0000, &shadow));
    let action = t.reset_action(nvme, ResetMethod::Flr).unwrap();
    let (mut job, step) = start(&t, &mut f, action);
    // Transactions Pending clear: FLR issued at once, 100 ms, then polled.
    assert_eq!(step, Step::Wait { until_ns: 0 });
    let sh = |bdf: Bdf, i: u16| {
        (bdf == nvme)
            .then(|| shadow.get(i as usize).copied())
            .flatten()
    };
    let run = drive(&mut job, &t, &mut f, &sh, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(job.reset_exit_ns(), Some(0));
    assert_eq!(job.first_ready_ns(), Some(100 * MS));
    assert_eq!(f.read32(nvme, BAR0), 0x2000_0004);
    assert!(!msix_table_lost(&mut f, 0x2000_0000, &shadow));
    for i in 0..4 {
        assert_eq!(f.msix_entry(nvme, i), Some(shadow[i as usize]));
    }
    // Entries the shadow does not hold were left in their reset state.
    assert_eq!(f.msix_entry(nvme, 4), Some([0, 0, 0, 1]));
}

#[test]
fn flr_waits_for_transactions_pending_on_the_linux_schedule() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    let pcie = t.function(nvme).unwrap().caps.pcie as u16;
    // Transactions Pending stuck: reads at 0, 100, 300, 700 ms, FLR at 700.
    f.poke(nvme, pcie + PCIE_DEVSTA, &[PCIE_DEVSTA_TRPND as u8, 0]);
    let action = t.reset_action(nvme, ResetMethod::Flr).unwrap();
    let (mut job, step) = start(&t, &mut f, action);
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(&run.waits[..4], &[0, 100 * MS, 300 * MS, 700 * MS]);
    assert_eq!(job.reset_exit_ns(), Some(700 * MS));
    assert_eq!(job.first_ready_ns(), Some(800 * MS));

    // Cleared at 150 ms: seen at the 300 ms read.
    let (mut f, t) = setup(SimReadiness::default());
    f.poke(nvme, pcie + PCIE_DEVSTA, &[PCIE_DEVSTA_TRPND as u8, 0]);
    let (mut job, mut step) = start(&t, &mut f, action);
    loop {
        let Step::Wait { until_ns } = step else {
            panic!("finished early")
        };
        f.advance_ns(until_ns - f.now_ns());
        if until_ns >= 150 * MS {
            f.poke(nvme, pcie + PCIE_DEVSTA, &[0, 0]);
        }
        step = job.step(&t, &mut f, &NoShadow, until_ns);
        if job.reset_exit_ns().is_some() {
            break;
        }
    }
    assert_eq!(job.reset_exit_ns(), Some(300 * MS));
}

#[test]
fn flr_with_immediate_readiness_skips_the_100_ms() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    let st = f.read16(nvme, STATUS) | STATUS_IMMEDIATE_READINESS;
    f.poke(nvme, STATUS, &st.to_le_bytes());
    let action = t.reset_action(nvme, ResetMethod::Flr).unwrap();
    let (mut job, step) = start(&t, &mut f, action);
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(job.first_ready_ns(), Some(0));
}

#[test]
fn device_answering_rrs_for_300_ms_is_found_at_the_first_poll_after() {
    let (mut f, t) = setup(ready_after(300, NotReady::Rrs));
    let nvme = b("05:00.0");
    let action = t.reset_action(nvme, ResetMethod::Flr).unwrap();
    let (mut job, step) = start(&t, &mut f, action);
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    // Polls at 100, 101, 103, 107, 115, 131, 163, 227, 291 (cap 64), 355.
    let polls: Vec<u64> = run.waits.iter().skip(1).map(|w| w / MS).collect();
    assert_eq!(
        polls,
        vec![100, 101, 103, 107, 115, 131, 163, 227, 291, 355]
    );
    assert_eq!(job.first_ready_ns(), Some(355 * MS));
    assert!(!job.retrained());
}

#[test]
fn device_that_never_comes_back_times_out_after_60_s_with_one_retrain() {
    let (mut f, t) = setup(NEVER);
    let nvme = b("05:00.0");
    let rp = b("00:02.0");
    let rp_pcie = t.function(rp).unwrap().caps.pcie as u16;
    let (mut job, mut step) = start(&t, &mut f, ResetAction::SecondaryBus { bridge: rp });
    let mut retrain_at = None;
    let mut last = 0;
    while let Step::Wait { until_ns } = step {
        f.advance_ns(until_ns - f.now_ns());
        step = job.step(&t, &mut f, &NoShadow, until_ns);
        last = until_ns;
        if retrain_at.is_none() && job.retrained() {
            retrain_at = Some(until_ns);
            // The Retrain Link bit was written to the root port (it reads
            // 0, as on hardware).
            assert_eq!(f.link_retrains(rp), 1);
            assert_eq!(f.read16(rp, rp_pcie + PCIE_LNKCTL) & (1 << 5), 0);
        }
    }
    assert_eq!(
        step,
        Step::Done {
            outcome: ResetOutcome::TimedOut(vec![nvme])
        }
    );
    // Polling began at 101 ms; retrain once after 1 s of it; give up at 60 s.
    let r = retrain_at.unwrap();
    assert!(
        (1101 * MS..1101 * MS + READY_POLL_MAX_NS).contains(&r),
        "{r}"
    );
    assert_eq!(last, 101 * MS + READY_TIMEOUT_NS);
    assert_eq!(
        f.read16(rp, rp_pcie + PCIE_LNKCTL) & (1 << 5),
        0,
        "one retrain only"
    );
    assert!(!job.masks(nvme));
    // Done is sticky.
    assert_eq!(job.step(&t, &mut f, &NoShadow, last + MS), step);
    // The caller quarantines it.
    let mut q = Quarantine::new();
    assert!(q.add(nvme, QuarantineReason::NotReady));
    assert!(!q.add(nvme, QuarantineReason::NotReady));
    assert!(q.contains(nvme));
    assert_eq!(
        q.first_of(&[b("03:00.0"), nvme]),
        Some((nvme, QuarantineReason::NotReady))
    );
}

#[test]
fn af_flr_and_pm_resets() {
    let (mut f, t) = setup(SimReadiness::default());
    let af = b("06:00.0");
    let pm = b("06:00.1");
    assert_eq!(
        t.reset_methods(af).unwrap().first(),
        Some(ResetMethod::AfFlr)
    );
    assert_eq!(t.reset_methods(pm).unwrap().first(), Some(ResetMethod::Pm));
    for bdf in [af, pm] {
        f.write32(bdf, BAR0, 0x3000_0000 + bdf.devfn as u32 * 0x1000);
        f.write16(bdf, COMMAND, COMMAND_MEMORY);
    }
    // AF FLR: Transactions Pending via AF Status, 100 ms, poll.
    let (mut job, step) = start(&t, &mut f, t.reset_action(af, ResetMethod::AfFlr).unwrap());
    assert_eq!(job.scope(), &[af]);
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(job.first_ready_ns(), Some(100 * MS));
    assert_eq!(f.read32(af, BAR0), 0x3000_0000);
    assert_eq!(f.read16(af, COMMAND), COMMAND_MEMORY);

    // PM: D3hot, 10 ms, D0 (the sim resets here), 10 ms, poll.
    let t0 = f.now_ns();
    let (mut job, step) = start(&t, &mut f, t.reset_action(pm, ResetMethod::Pm).unwrap());
    let pmc = t.function(pm).unwrap().caps.pm as u16;
    assert_eq!(f.read16(pm, pmc + PM_CTRL) & 3, PM_CTRL_D3HOT);
    assert_eq!(
        step,
        Step::Wait {
            until_ns: t0 + D3HOT_DELAY_NS
        }
    );
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(job.reset_exit_ns(), Some(t0 + 10 * MS));
    assert_eq!(job.first_ready_ns(), Some(t0 + 20 * MS));
    assert_eq!(f.read16(pm, pmc + PM_CTRL) & 3, PM_CTRL_D0);
    assert_eq!(f.read32(pm, BAR0), 0x3000_1000);
    assert_eq!(f.bad_accesses(), 0);
}

#[test]
fn pm_reset_from_d3hot_and_refusals() {
    let (mut f, t) = setup(SimReadiness::default());
    let pm = b("06:00.1");
    let pmc = t.function(pm).unwrap().caps.pm as u16;
    f.write16(pm, pmc + PM_CTRL, PM_CTRL_D3HOT);
    let t0 = f.now_ns();
    let (mut job, step) = start(&t, &mut f, t.reset_action(pm, ResetMethod::Pm).unwrap());
    assert_eq!(job.reset_exit_ns(), Some(t0), "D3hot -> D0 at once");
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(job.first_ready_ns(), Some(t0 + 10 * MS));
    // D2: refused.
    f.write16(pm, pmc + PM_CTRL, 2);
    let saved = SavedState::capture(&t, &mut f, &[pm]);
    let action = ResetAction::Function {
        bdf: pm,
        method: ResetMethod::Pm,
    };
    assert_eq!(
        ResetJob::start(&t, &mut f, action, 0, saved).unwrap_err(),
        EngineError::NotInD0 { bdf: pm }
    );
    // Methods the function does not have, bus resets of non-bridges,
    // missing saved state.
    let nvme = b("05:00.0");
    let saved = SavedState::capture(&t, &mut f, &[nvme]);
    let bad = ResetAction::Function {
        bdf: nvme,
        method: ResetMethod::AfFlr,
    };
    assert!(matches!(
        ResetJob::start(&t, &mut f, bad, 0, saved.clone()),
        Err(EngineError::Reset(pci::ResetError::Unsupported { .. }))
    ));
    assert_eq!(
        ResetJob::start(
            &t,
            &mut f,
            ResetAction::SecondaryBus { bridge: nvme },
            0,
            saved
        )
        .unwrap_err(),
        EngineError::NotABridge { bdf: nvme }
    );
    let flr = ResetAction::Function {
        bdf: nvme,
        method: ResetMethod::Flr,
    };
    assert_eq!(
        ResetJob::start(&t, &mut f, flr, 0, SavedState::default()).unwrap_err(),
        EngineError::NotSaved { bdf: nvme }
    );
}

#[test]
fn sbr_waits_for_data_link_layer_link_active() {
    let (mut f, t) = setup(SimReadiness::default());
    let rp = b("00:02.0");
    let pcie = t.function(rp).unwrap().caps.pcie as u16;
    let lnksta = f.read16(rp, pcie + PCIE_LNKSTA);
    let (mut job, mut step) = start(&t, &mut f, ResetAction::SecondaryBus { bridge: rp });
    // The link goes down with the reset and trains 30 ms after deassert.
    f.poke(
        rp,
        pcie + PCIE_LNKSTA,
        &(lnksta & !PCIE_LNKSTA_DLLLA).to_le_bytes(),
    );
    let mut waits = vec![];
    while let Step::Wait { until_ns } = step {
        waits.push(until_ns);
        f.advance_ns(until_ns - f.now_ns());
        if until_ns >= 31 * MS {
            f.poke(rp, pcie + PCIE_LNKSTA, &lnksta.to_le_bytes());
        }
        step = job.step(&t, &mut f, &NoShadow, until_ns);
    }
    assert_eq!(
        step,
        Step::Done {
            outcome: ResetOutcome::Ready
        }
    );
    assert_eq!(job.reset_exit_ns(), Some(MS));
    assert_eq!(job.link_up_ns(), Some(31 * MS));
    assert_eq!(job.first_ready_ns(), Some(131 * MS));
    // Polled every 1 ms while down.
    assert_eq!(&waits[..3], &[MS, 2 * MS, 3 * MS]);
}

#[test]
fn sbr_link_never_up_gives_up_after_one_retrain() {
    let (mut f, t) = setup(SimReadiness::default());
    let rp = b("00:02.0");
    let pcie = t.function(rp).unwrap().caps.pcie as u16;
    let lnksta = f.read16(rp, pcie + PCIE_LNKSTA);
    let (mut job, step) = start(&t, &mut f, ResetAction::SecondaryBus { bridge: rp });
    f.poke(
        rp,
        pcie + PCIE_LNKSTA,
        &(lnksta & !PCIE_LNKSTA_DLLLA).to_le_bytes(),
    );
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::TimedOut(vec![b("05:00.0")]));
    assert!(job.retrained());
    assert_eq!(*run.waits.last().unwrap(), MS + 2 * LINK_UP_TIMEOUT_NS);
}

#[test]
fn slot_reset_masks_and_restores_slot_events() {
    let (mut f, t) = setup(SimReadiness::default());
    let dp = b("02:01.0");
    assert!(t.function(dp).unwrap().is_hotplug_slot());
    let pcie = t.function(dp).unwrap().caps.pcie as u16;
    f.write16(dp, pcie + PCIE_SLTCTL, 0x1008 | 0x0020);
    let action = t.reset_action(b("04:00.0"), ResetMethod::Slot).unwrap();
    assert_eq!(action, ResetAction::Slot { port: dp });
    let (mut job, step) = start(&t, &mut f, action);
    assert_eq!(
        f.read16(dp, pcie + PCIE_SLTCTL),
        0x0020,
        "PDCE and DLLSCE masked"
    );
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(f.read16(dp, pcie + PCIE_SLTCTL), 0x1028);
    assert_eq!(job.first_ready_ns(), Some(101 * MS));
}

/// Records the order of MSI-X Message Control writes and table writes.
struct Recorder<'a> {
    f: &'a mut Fabric,
    bdf: Bdf,
    msix: u16,
    log: Vec<(&'static str, u64)>,
}

impl ConfigPort for Recorder<'_> {
    fn read32(&mut self, bdf: Bdf, offset: u16) -> u32 {
        self.f.read32(bdf, offset)
    }
    fn write32(&mut self, bdf: Bdf, offset: u16, value: u32) {
        self.f.write32(bdf, offset, value)
    }
    fn write16(&mut self, bdf: Bdf, offset: u16, value: u16) {
        if bdf == self.bdf && offset == self.msix + MSIX_FLAGS {
            self.log.push(("ctrl", value as u64));
        }
        self.f.write16(bdf, offset, value)
    }
    fn write8(&mut self, bdf: Bdf, offset: u16, value: u8) {
        self.f.write8(bdf, offset, value)
    }
}

impl MemoryPort for Recorder<'_> {
    fn read(&mut self, pa: u64, width: u16) -> u64 {
        self.f.read(pa, width)
    }
    fn write(&mut self, pa: u64, width: u16, value: u64) {
        let ctrl = self.f.read16(self.bdf, self.msix + MSIX_FLAGS);
        assert_ne!(
            ctrl & MSIX_FLAGS_MASKALL,
            0,
            "table written with vectors live"
        );
        self.log.push(("table", pa));
        self.f.write(pa, width, value)
    }
}

#[test]
fn msix_table_is_rewritten_under_function_mask_before_control_is_restored() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    let shadow = program_nvme(&mut f, &t, nvme, 0x2000_0000);
    let msix = t.function(nvme).unwrap().caps.msix as u16;
    let action = t.reset_action(nvme, ResetMethod::Flr).unwrap();
    let mut rec = Recorder {
        f: &mut f,
        bdf: nvme,
        msix,
        log: vec![],
    };
    let saved = SavedState::capture(&t, &mut rec, &[nvme]);
    let (mut job, mut step) = ResetJob::start(&t, &mut rec, action, 0, saved).unwrap();
    let sh = |bdf: Bdf, i: u16| {
        (bdf == nvme)
            .then(|| shadow.get(i as usize).copied())
            .flatten()
    };
    while let Step::Wait { until_ns } = step {
        let now = rec.f.now_ns();
        rec.f.advance_ns(until_ns - now);
        step = job.step(&t, &mut rec, &sh, until_ns);
    }
    let log = rec.log;
    assert_eq!(
        log.first(),
        Some(&("ctrl", (MSIX_FLAGS_ENABLE | MSIX_FLAGS_MASKALL) as u64 | 64))
    );
    assert_eq!(log.last(), Some(&("ctrl", (MSIX_FLAGS_ENABLE as u64) | 64)));
    // 4 entries from the shadow, the other 61 from the table captured
    // before the reset; 5 writes each (mask, address lo/hi, data, control).
    assert_eq!(log.iter().filter(|e| e.0 == "table").count(), 65 * 5);
}

#[test]
fn msix_fallback_to_the_table_captured_before_reset_without_a_shadow() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    let table = program_nvme(&mut f, &t, nvme, 0x2000_0000);
    let (mut job, step) = start(&t, &mut f, t.reset_action(nvme, ResetMethod::Flr).unwrap());
    assert_eq!(
        job.saved()
            .get(nvme)
            .unwrap()
            .msix
            .as_ref()
            .unwrap()
            .captured
            .len(),
        65
    );
    drive(&mut job, &t, &mut f, &NoShadow, step);
    for i in 0..4 {
        assert_eq!(f.msix_entry(nvme, i), Some(table[i as usize]));
    }
}

#[test]
fn backdoor_reset_is_detected_and_repaired() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    let shadow = program_nvme(&mut f, &t, nvme, 0x2000_0000);
    let pa = msix_table_address(&t, &mut f, nvme).unwrap();
    assert_eq!(pa, 0x2000_0000);
    assert!(!msix_table_lost(&mut f, pa, &shadow));
    // A device-internal reset (BIST) clears the table behind everyone's back.
    for i in 0..4u64 {
        f.write(pa + i * 16, 4, 0);
        f.write(pa + i * 16 + 8, 4, 0);
    }
    assert!(msix_table_lost(&mut f, pa, &shadow));
    assert_eq!(repair_msix_table(&mut f, pa, &shadow), 4);
    assert!(!msix_table_lost(&mut f, pa, &shadow));
    for i in 0..4 {
        assert_eq!(f.msix_entry(nvme, i), Some(shadow[i as usize]));
    }
    // Entries the shadow holds as unprogrammed are not compared.
    assert!(!msix_table_lost(&mut f, pa, &[[0, 0, 0, 1]]));
}

#[test]
fn narrowest_reset_for_a_guest_sbr() {
    let (_f, t) = setup(SimReadiness::default());
    let nvme = b("03:00.0");
    let e1000e = b("04:00.0");
    // Owns everything below its downstream port: a real SBR of it.
    let own = |g: u16, set: Vec<Bdf>| {
        move |x: Bdf| {
            if set.contains(&x) {
                Owner::Guest(g)
            } else {
                Owner::Hwdom
            }
        }
    };
    assert_eq!(
        narrowest_reset(&t, own(1, vec![nvme]), &[nvme]).unwrap(),
        vec![ResetAction::SecondaryBus {
            bridge: b("02:00.0")
        }]
    );
    // A hot-plug downstream port: its slot reset.
    assert_eq!(
        narrowest_reset(&t, own(1, vec![e1000e]), &[e1000e]).unwrap(),
        vec![ResetAction::Slot { port: b("02:01.0") }]
    );
    // Owns both ends of the switch: the lowest bridge above both (the
    // upstream port); the downstream ports do not count as foreign.
    assert_eq!(
        narrowest_reset(&t, own(1, vec![nvme, e1000e]), &[nvme, e1000e]).unwrap(),
        vec![ResetAction::SecondaryBus {
            bridge: b("01:00.0")
        }]
    );
    // Shares the bridge with another guest's function: function resets only.
    let mixed = |x: Bdf| match x {
        x if x == b("06:00.0") => Owner::Guest(1),
        x if x == b("06:00.1") => Owner::Guest(2),
        _ => Owner::Hwdom,
    };
    assert_eq!(
        narrowest_reset(&t, mixed, &[b("06:00.0")]).unwrap(),
        vec![ResetAction::Function {
            bdf: b("06:00.0"),
            method: ResetMethod::AfFlr
        }]
    );
    // With the hwdom owning the sibling, too.
    assert_eq!(
        narrowest_reset(&t, own(1, vec![b("06:00.1")]), &[b("06:00.1")]).unwrap(),
        vec![ResetAction::Function {
            bdf: b("06:00.1"),
            method: ResetMethod::Pm
        }]
    );
}

#[test]
fn narrowest_reset_without_a_method_is_an_error() {
    // 00:01.0 -> 01:00.0 (no FLR, no PM) + 01:00.1 of another guest.
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[(
            devfn(1, 0),
            Spec::qemu_root_port()
                .hotplug_slot(false)
                .child(0, 0, Spec::endpoint(0x15b3, 1).flr(false).pm(None))
                .child(0, 1, Spec::endpoint(0x15b3, 1).flr(false).pm(None)),
        )],
    );
    let t = track(&mut f);
    let a = b("01:00.0");
    let owners = |x: Bdf| {
        if x == a {
            Owner::Guest(1)
        } else {
            Owner::Guest(2)
        }
    };
    assert_eq!(
        narrowest_reset(&t, owners, &[a]),
        Err(EngineError::NoMethod { bdf: a })
    );
    let mut q = Quarantine::new();
    q.add(a, QuarantineReason::NoResetMethod);
    assert_eq!(q.reason(a), Some(QuarantineReason::NoResetMethod));
    assert_eq!(q.iter().count(), 1);
    // Owning both: the bus reset covers them.
    assert_eq!(
        narrowest_reset(&t, |_| Owner::Guest(1), &[a, b("01:00.1")]).unwrap(),
        vec![ResetAction::SecondaryBus {
            bridge: b("00:01.0")
        }]
    );
}

#[test]
fn hwdom_sbr_over_a_guest_function_is_refused() {
    let (_f, t) = setup(SimReadiness::default());
    let owner = |x: Bdf| {
        if x == b("04:00.0") {
            Owner::Guest(3)
        } else {
            Owner::Hwdom
        }
    };
    assert_eq!(
        check_reset(
            &t,
            ResetAction::SecondaryBus {
                bridge: b("00:01.0")
            },
            Owner::Hwdom,
            owner
        ),
        Err(EngineError::NotTheRequesters {
            bdf: b("04:00.0"),
            owner: Owner::Guest(3)
        })
    );
    assert_eq!(
        check_reset(
            &t,
            ResetAction::SecondaryBus {
                bridge: b("02:00.0")
            },
            Owner::Hwdom,
            owner
        ),
        Ok(())
    );
}

#[test]
fn reservations_block_assignments_that_would_break_them() {
    let (_f, t) = setup(SimReadiness::default());
    let nvme = b("03:00.0");
    let e1000e = b("04:00.0");
    let owner = |x: Bdf| {
        if x == nvme {
            Owner::Guest(1)
        } else if x == e1000e {
            Owner::Guest(2)
        } else {
            Owner::Hwdom
        }
    };
    let mut r = Reservations::new();
    // Guest 1 reserves the SBR of its downstream port: fine.
    let sbr = ResetAction::SecondaryBus {
        bridge: b("02:00.0"),
    };
    r.reserve(&t, Owner::Guest(1), sbr, owner).unwrap();
    r.reserve(&t, Owner::Guest(1), sbr, owner).unwrap();
    assert_eq!(r.of(Owner::Guest(1)).count(), 1);
    // The root port's SBR would touch guest 2's e1000e: refused.
    let wide = ResetAction::SecondaryBus {
        bridge: b("00:01.0"),
    };
    assert_eq!(
        r.reserve(&t, Owner::Guest(1), wide, owner).unwrap_err().bdf,
        e1000e
    );
    // Assigning the nvme to guest 2 (after guest 1 released it) would break it.
    let c = r.breaks_reservation(&[nvme], Owner::Guest(2)).unwrap();
    assert_eq!((c.bdf, c.holder, c.action), (nvme, Owner::Guest(1), sbr));
    assert_eq!(r.breaks_reservation(&[nvme], Owner::Guest(1)), None);
    assert_eq!(r.breaks_reservation(&[e1000e], Owner::Guest(2)), None);
    assert!(r.breaks_reservation(&[nvme], Owner::Hwdom).is_some());
    assert_eq!(r.release(Owner::Guest(1)), 1);
    assert_eq!(r.breaks_reservation(&[nvme], Owner::Guest(2)), None);
}

#[test]
fn default_order_flag_for_the_non_default_warning() {
    let (_f, mut t) = setup(SimReadiness::default());
    let nvme = b("05:00.0");
    assert!(t.is_default_reset_order(nvme));
    let default: Vec<ResetMethod> = t.reset_methods(nvme).unwrap().as_slice().to_vec();
    t.set_reset_methods(nvme, &default).unwrap();
    assert!(t.is_default_reset_order(nvme));
    t.set_reset_methods(nvme, &[ResetMethod::Bus, ResetMethod::Flr])
        .unwrap();
    assert!(!t.is_default_reset_order(nvme));
    t.clear_reset_methods(nvme);
    assert!(t.is_default_reset_order(nvme));
}

/// 00:01.0 -> 01:00.0 PF (FLR) with 2 VFs; 00:02.0 -> 02:00.0 Chelsio T4
/// (device-specific quirk); 00:03.0 -> 03:00.0 Atheros (NO_BUS_RESET).
fn quirky() -> (Fabric, Topology) {
    let rp = || Spec::qemu_root_port().hotplug_slot(false);
    let mut f = Fabric::new().with_root_complex(
        0,
        0,
        &[
            (
                devfn(1, 0),
                rp().child(0, 0, Spec::endpoint(0x8086, 0x1521).sriov(2, 0x1520)),
            ),
            (
                devfn(2, 0),
                rp().child(0, 0, Spec::endpoint(0x1425, 0x4001)),
            ),
            (
                devfn(3, 0),
                rp().child(0, 0, Spec::endpoint(0x168c, 0x0030)),
            ),
        ],
    );
    let t = track(&mut f);
    (f, t)
}

#[test]
fn pf_flr_brings_its_vfs_back_after_vf_enable() {
    let (mut f, t) = quirky();
    let pf = b("01:00.0");
    let action = t.reset_action(pf, ResetMethod::Flr).unwrap();
    let (mut job, step) = start(&t, &mut f, action);
    assert_eq!(job.scope(), &[pf, b("01:00.1"), b("01:00.2")]);
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    // PF back at 100 ms, VF Enable restored then; VFs polled 100 ms later.
    assert_eq!(job.first_ready_ns(), Some(100 * MS));
    assert_eq!(*run.waits.last().unwrap(), 200 * MS);
    assert_ne!(f.read32(b("01:00.2"), COMMAND), u32::MAX);
}

#[test]
fn device_specific_reset_and_bus_reset_quirk() {
    let (mut f, t) = quirky();
    let chelsio = b("02:00.0");
    assert_eq!(
        t.reset_methods(chelsio).unwrap().first(),
        Some(ResetMethod::DeviceSpecific)
    );
    f.write32(chelsio, BAR0, 0x4000_0000);
    let action = t
        .reset_action(chelsio, ResetMethod::DeviceSpecific)
        .unwrap();
    let (mut job, step) = start(&t, &mut f, action);
    assert_eq!(
        f.read32(chelsio, BAR0),
        0x4000_0000,
        "not reset before TP check"
    );
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(job.reset_exit_ns(), Some(0));
    assert_eq!(f.read32(chelsio, BAR0), 0x4000_0000);

    let atheros = b("03:00.0");
    let rp = b("00:03.0");
    let saved = SavedState::capture(&t, &mut f, &[atheros]);
    assert_eq!(
        ResetJob::start(
            &t,
            &mut f,
            ResetAction::SecondaryBus { bridge: rp },
            0,
            saved
        )
        .unwrap_err(),
        EngineError::BusResetQuirk { bridge: rp }
    );
    // A guest owning it gets its FLR instead of an SBR.
    assert_eq!(
        narrowest_reset(&t, |_| Owner::Guest(1), &[atheros]).unwrap(),
        vec![ResetAction::Function {
            bdf: atheros,
            method: ResetMethod::Flr
        }]
    );
}

#[test]
fn pcie_aer_acs_and_msi_state_survive_an_sbr() {
    let (mut f, t) = setup(SimReadiness::default());
    let e = b("04:00.0"); // e1000e: MSI + MSI-X + AER
    let dp = b("02:01.0");
    let fe = t.function(e).unwrap().clone();
    let (pcie, aer, msi) = (fe.caps.pcie as u16, fe.caps.aer, fe.caps.msi as u16);
    f.write16(e, pcie + PCIE_DEVCTL, 0x201f);
    f.write16(e, pcie + PCIE_LNKCTL, 0x0040);
    f.write16(e, pcie + PCIE_DEVCTL2, 0x0010);
    f.write32(e, aer + AER_UNCOR_MASK, 0x0040_0000);
    f.write32(e, aer + AER_UNCOR_SEVER, 0x0000_1000);
    f.write32(e, aer + AER_COR_MASK, 0x0000_0001);
    f.write32(e, msi + 4, 0x0800_0040);
    f.write32(e, msi + 8, 0);
    f.write16(e, msi + 0x0c, 0x55);
    f.write16(e, msi + MSI_FLAGS, MSI_FLAGS_ENABLE);
    let regs = |f: &mut Fabric| {
        vec![
            f.read16(e, pcie + PCIE_DEVCTL) as u32,
            f.read16(e, pcie + PCIE_LNKCTL) as u32,
            f.read16(e, pcie + PCIE_DEVCTL2) as u32,
            f.read32(e, aer + AER_UNCOR_MASK),
            f.read32(e, aer + AER_UNCOR_SEVER),
            f.read32(e, aer + AER_COR_MASK),
            f.read32(e, msi + 4),
            f.read16(e, msi + 0x0c) as u32,
            f.read16(e, msi + MSI_FLAGS) as u32,
        ]
    };
    let before = regs(&mut f);
    let (mut job, step) = start(&t, &mut f, ResetAction::Slot { port: dp });
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(regs(&mut f), before);
    assert_eq!(before[8] as u16 & MSI_FLAGS_ENABLE, MSI_FLAGS_ENABLE);
}

/// An MSI-X table address comes from a BAR and an offset the device and the
/// hardware domain chose: entries that would end past the address space
/// are neither compared nor written (no overflow, no wrap to low memory).
#[test]
fn msix_table_at_the_end_of_the_address_space_is_not_touched() {
    struct Mem(Vec<u64>);
    impl MemoryPort for Mem {
        fn read(&mut self, pa: u64, _: u16) -> u64 {
            self.0.push(pa);
            0
        }
        fn write(&mut self, pa: u64, _: u16, _: u64) {
            self.0.push(pa);
        }
    }
    let mut mem = Mem(Vec::new());
    let top = u64::MAX - 0x17; // entry 0 fits (ends at MAX - 8), entry 1 does not
    let shadow = [[0xfee0_0000, 0, 0x41, 0]; 2];
    assert_eq!(msix_entry_address(top, 0), Some(top));
    assert_eq!(msix_entry_address(top, 1), None);
    assert!(msix_table_lost(&mut mem, top, &shadow));
    assert_eq!(repair_msix_table(&mut mem, top, &shadow), 1);
    assert!(mem.0.iter().all(|&pa| pa >= top), "{:x?}", mem.0);
}

/// A function-level reset of a bridge cuts off everything below it (in
/// D3hot it forwards nothing, D0 clears its bus numbers): its scope holds
/// its subtree, and the hardware domain may not PM-reset the root port or
/// the downstream port above a guest's device, whatever the method's name.
#[test]
fn a_pm_reset_of_a_bridge_above_a_guests_function_is_refused() {
    let (mut f, t) = setup(SimReadiness::default());
    let nvme = b("03:00.0");
    let owner = |x: Bdf| {
        if x == nvme {
            Owner::Guest(1)
        } else {
            Owner::Hwdom
        }
    };
    for port in [b("00:01.0"), b("02:00.0")] {
        assert!(
            t.reset_methods(port).unwrap().contains(ResetMethod::Pm),
            "{port}"
        );
        let pm = ResetAction::Function {
            bdf: port,
            method: ResetMethod::Pm,
        };
        assert!(t.action_scope(pm).contains(&nvme), "{port}");
        assert_eq!(foreign_in_scope(&t, pm, Owner::Hwdom, owner), vec![nvme]);
        assert_eq!(
            check_reset(&t, pm, Owner::Hwdom, owner),
            Err(EngineError::NotTheRequesters {
                bdf: nvme,
                owner: Owner::Guest(1)
            })
        );
        // The narrowest reset of the port alone does not pick it either.
        assert!(narrowest_reset(&t, owner, &[port]).is_err(), "{port}");
    }
    // The other downstream port holds only the hwdom's e1000e: its PM
    // reset is the hwdom's to make, and the engine brings the e1000e back
    // behind it (saved, gated on the port, restored).
    let port = b("02:01.0");
    let pm = ResetAction::Function {
        bdf: port,
        method: ResetMethod::Pm,
    };
    assert_eq!(check_reset(&t, pm, Owner::Hwdom, owner), Ok(()));
    let e1000e = b("04:00.0");
    let bar0 = f.read32(e1000e, BAR0);
    let (mut job, step) = start(&t, &mut f, pm);
    assert_eq!(job.scope(), &[port, e1000e]);
    let run = drive(&mut job, &t, &mut f, &NoShadow, step);
    assert_eq!(run.outcome, ResetOutcome::Ready);
    assert_eq!(f.read32(e1000e, BAR0), bar0);
}

/// A guest given an SR-IOV PF while the hardware domain holds its VFs: the
/// PF's FLR (whose scope holds the VFs) is not the guest's to make, and
/// such a PF is not given out (`sriov_in_use`).
#[test]
fn a_guests_pf_reset_never_touches_the_hwdoms_vfs() {
    let (mut f, t) = quirky();
    let pf = b("01:00.0");
    let owner = |x: Bdf| {
        if x == pf {
            Owner::Guest(1)
        } else {
            Owner::Hwdom
        }
    };
    let flr = ResetAction::Function {
        bdf: pf,
        method: ResetMethod::Flr,
    };
    assert_eq!(
        check_reset(&t, flr, Owner::Guest(1), owner),
        Err(EngineError::NotTheRequesters {
            bdf: b("01:00.1"),
            owner: Owner::Hwdom
        })
    );
    match narrowest_reset(&t, owner, &[pf]) {
        Err(EngineError::NotTheRequesters { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(sriov_in_use(&t, &mut f, pf), Some(b("01:00.1")));
    assert_eq!(sriov_in_use(&t, &mut f, b("02:00.0")), None);
    // With VF Enable off and no VF tracked, the PF may go to a guest.
    let sriov = t.function(pf).unwrap().caps.sriov;
    f.write16(pf, sriov + SRIOV_CTRL, 0);
    let mut t = t;
    for vf in [b("01:00.1"), b("01:00.2")] {
        t.report_remove(vf).unwrap();
    }
    assert_eq!(sriov_in_use(&t, &mut f, pf), None);
    f.write16(pf, sriov + SRIOV_CTRL, SRIOV_CTRL_VFE);
    assert_eq!(sriov_in_use(&t, &mut f, pf), Some(pf), "VF Enable alone");
}
