//! The reset engine against the simulated fabric, with a fake clock: every
//! method, its timing, save/restore, masking, MSI-X restore, backdoor
//! detection, narrowest reset, reservations, quarantine.

mod common;
use common::*;

use pci::regs::*;
use pci::reset_engine::*;
use pci::sim::{Fabric, NotReady, SimReadiness, Spec, devfn};
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
            // The Retrain Link bit was written to the root port (the sim
            // keeps it; hardware clears it).
            assert_ne!(f.read16(rp, rp_pcie + PCIE_LNKCTL) & (1 << 5), 0);
            f.write16(rp, rp_pcie + PCIE_LNKCTL, 0);
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
    assert!(r >= 1101 * MS && r < 1101 * MS + READY_POLL_MAX_NS, "{r}");
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
