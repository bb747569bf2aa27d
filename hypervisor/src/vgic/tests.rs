//! Host tests of the allocator, the pending sets and the register emulation
//! against fake list registers.

use super::dist::{Access, GICR_STRIDE};
use super::lr::{ListRegisters, Lr, LrState};
use super::*;

/// List registers in memory, with what the hardware would do on the
/// guest's acknowledge and EOI.
#[derive(Debug)]
struct FakeLrs {
    lrs: Vec<Lr>,
    refill: bool,
    deactivated: Vec<u32>,
    /// Store in the GICv2 format (else GICv3).
    v2: bool,
}

impl FakeLrs {
    fn new(n: usize) -> Self {
        Self {
            lrs: alloc::vec![Lr::EMPTY; n],
            refill: false,
            deactivated: Vec::new(),
            v2: false,
        }
    }
    /// The guest acknowledges: the highest-priority pending LR becomes
    /// active. Returns its INTID (SPURIOUS if none).
    fn ack(&mut self) -> u32 {
        let best = self
            .lrs
            .iter_mut()
            .filter(|l| l.state == LrState::Pending)
            .min_by_key(|l| (l.priority, l.vintid));
        match best {
            Some(l) => {
                l.state = LrState::Active;
                l.vintid
            }
            None => SPURIOUS,
        }
    }
    /// The guest EOIs `intid` (priority drop and deactivation).
    fn eoi(&mut self, intid: u32) -> bool {
        match self
            .lrs
            .iter_mut()
            .find(|l| l.vintid == intid && l.state.active())
        {
            Some(l) => {
                l.state = if l.state == LrState::PendingActive {
                    LrState::Pending
                } else {
                    LrState::Invalid
                };
                if l.state == LrState::Invalid
                    && let Some(p) = l.pintid
                {
                    self.deactivated.push(p);
                }
                true
            }
            None => false,
        }
    }
    fn valid(&self) -> usize {
        self.lrs
            .iter()
            .filter(|l| l.state != LrState::Invalid)
            .count()
    }
    /// What a maintenance interrupt would see as pending: NP condition.
    fn no_pending(&self) -> bool {
        !self.lrs.iter().any(|l| l.state.pending())
    }
}

impl ListRegisters for FakeLrs {
    fn count(&self) -> usize {
        self.lrs.len()
    }
    fn read(&mut self, n: usize) -> Lr {
        self.lrs[n]
    }
    fn write(&mut self, n: usize, lr: Lr) {
        // Round trip through the real encoding, as the hardware stores it.
        self.lrs[n] = if self.v2 {
            Lr::decode_v2(lr.encode_v2())
        } else {
            Lr::decode_v3(lr.encode_v3())
        };
    }
    fn set_refill_irq(&mut self, on: bool) {
        self.refill = on;
    }
    fn deactivate_physical(&mut self, pintid: u32) {
        self.deactivated.push(pintid);
    }
}

fn gic(version: Version, nvcpus: usize) -> VGic {
    let mut g = VGic::new(version, nvcpus, 5);
    let out = g.dist_access(
        0,
        Access {
            offset: 0,
            width: 4,
            write: Some(3),
        },
    );
    assert_eq!(out.kick, 0);
    g
}

fn w(g: &mut VGic, vcpu: usize, offset: u64, width: u64, value: u64) -> Kick {
    g.dist_access(
        vcpu,
        Access {
            offset,
            width,
            write: Some(value),
        },
    )
    .kick
}

fn r(g: &mut VGic, vcpu: usize, offset: u64, width: u64) -> u64 {
    g.dist_access(
        vcpu,
        Access {
            offset,
            width,
            write: None,
        },
    )
    .value
}

fn rw(g: &mut VGic, offset: u64, width: u64, write: Option<u64>) -> u64 {
    g.redist_access(Access {
        offset,
        width,
        write,
    })
    .value
}

/// Enable SPI `intid` with `prio`, routed to vCPU 0 (GICv3 route 0).
fn spi(g: &mut VGic, intid: u32, prio: u8) {
    w(g, 0, 0x400 + u64::from(intid), 1, u64::from(prio));
    w(
        g,
        0,
        0x100 + u64::from(intid / 32) * 4,
        4,
        1 << (intid % 32),
    );
}

/// Deliver everything: ack/EOI in the order the fake CPU interface
/// presents interrupts, with maintenance refills. Returns the order.
fn drain(g: &mut VGic, v: usize, lrs: &mut FakeLrs) -> Vec<u32> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let (_, _) = g.sync(v, lrs);
        g.flush(v, lrs);
        let intid = lrs.ack();
        if intid == SPURIOUS {
            break;
        }
        seen.push(intid);
        // Maintenance on "no pending" while the handler runs.
        if lrs.refill && lrs.no_pending() {
            g.sync(v, lrs);
            g.flush(v, lrs);
        }
        assert!(lrs.eoi(intid));
    }
    seen
}

#[test]
fn more_pending_than_lrs_arrive_by_priority() {
    for version in [Version::V2, Version::V3] {
        let mut g = gic(version, 1);
        let mut lrs = FakeLrs::new(4);
        // 12 SPIs, priorities scrambled.
        let prios = [
            0x80u8, 0x10, 0x70, 0x20, 0x60, 0x30, 0x50, 0x40, 0x90, 0x08, 0xa0, 0x18,
        ];
        for (k, &p) in prios.iter().enumerate() {
            let intid = 40 + k as u32;
            spi(&mut g, intid, p);
            if version == Version::V2 {
                w(&mut g, 0, 0x800 + u64::from(intid), 1, 1);
            }
            g.inject(0, intid).unwrap();
        }
        g.flush(0, &mut lrs);
        assert_eq!(lrs.valid(), 4, "all LRs used");
        assert!(lrs.refill, "the rest waits for a maintenance interrupt");
        let seen = drain(&mut g, 0, &mut lrs);
        let mut want: Vec<(u8, u32)> = prios
            .iter()
            .enumerate()
            .map(|(k, &p)| (p, 40 + k as u32))
            .collect();
        want.sort();
        let want: Vec<u32> = want.into_iter().map(|(_, i)| i).collect();
        assert_eq!(seen, want, "{version:?}: every interrupt once, by priority");
        assert!(!g.has_work(0));
        assert!(!lrs.refill);
    }
}

#[test]
fn higher_priority_arrival_evicts_a_pending_lr() {
    let mut g = gic(Version::V3, 1);
    let mut lrs = FakeLrs::new(2);
    for intid in [40, 41, 42] {
        spi(&mut g, intid, 0x80);
        g.inject(0, intid).unwrap();
    }
    g.flush(0, &mut lrs);
    assert_eq!(lrs.valid(), 2);
    spi(&mut g, 43, 0x10);
    g.inject(0, 43).unwrap();
    g.sync(0, &mut lrs);
    g.flush(0, &mut lrs);
    assert_eq!(lrs.ack(), 43, "the urgent one was placed");
    let seen = drain(&mut g, 0, &mut lrs);
    let mut all = seen.clone();
    all.sort();
    assert_eq!(all, [40, 41, 42], "the evicted one is not lost");
}

#[test]
fn disabled_or_group_disabled_interrupts_wait() {
    let mut g = VGic::new(Version::V3, 1, 5);
    let mut lrs = FakeLrs::new(4);
    spi(&mut g, 50, 0x40);
    g.inject(0, 50).unwrap();
    g.flush(0, &mut lrs);
    assert_eq!(lrs.valid(), 0, "distributor disabled");
    let kick = w(&mut g, 0, 0, 4, 3);
    assert_eq!(kick, 1, "enabling the distributor kicks vCPU 0");
    g.flush(0, &mut lrs);
    assert_eq!(lrs.valid(), 1);
    // Disabled interrupt stays pending, visible in ISPENDR, not delivered.
    w(&mut g, 0, 0x180 + 4, 4, 1 << (51 - 32));
    g.inject(0, 51).unwrap();
    g.flush(0, &mut lrs);
    assert_eq!(lrs.valid(), 1);
    assert_ne!(r(&mut g, 0, 0x200 + 4, 4) & (1 << (51 - 32)), 0);
}

#[test]
fn hw_interrupt_uses_hw_bit_and_guest_eoi_deactivates() {
    let mut g = gic(Version::V3, 1);
    let mut lrs = FakeLrs::new(4);
    g.bind_hw(0, 27, 27).unwrap();
    rw(&mut g, SGI_BASE_OFF + 0x100, 4, Some(1 << 27));
    g.inject(0, 27).unwrap();
    g.flush(0, &mut lrs);
    let lr = lrs.lrs[0];
    assert_eq!(lr.pintid, Some(27));
    assert!(!lr.eoi);
    assert_eq!(lrs.ack(), 27);
    assert!(lrs.eoi(27));
    assert_eq!(lrs.deactivated, [27]);
    let (eois, _) = g.sync(0, &mut lrs);
    assert_eq!(eois.len, 0);
    assert!(!g.has_work(0));
}

const SGI_BASE_OFF: u64 = 0x1_0000;

#[test]
fn hw_interrupt_by_eoi_maintenance_deactivates_on_sync() {
    let mut g = gic(Version::V2, 1);
    g.set_hw_by_eoi(true);
    let mut lrs = FakeLrs::new(4);
    g.bind_hw(0, 27, 27).unwrap();
    w(&mut g, 0, 0x100, 4, 1 << 27);
    g.inject(0, 27).unwrap();
    g.flush(0, &mut lrs);
    let lr = lrs.lrs[0];
    assert_eq!(lr.pintid, None, "software LR");
    assert!(lr.eoi, "EOI maintenance");
    assert_eq!(lrs.ack(), 27);
    assert!(lrs.eoi(27));
    assert!(lrs.deactivated.is_empty(), "not by the hardware");
    let (eois, _) = g.sync(0, &mut lrs);
    assert_eq!(eois.len, 0, "not a notify-EOI interrupt");
    assert_eq!(
        lrs.deactivated,
        [27],
        "by the hypervisor at the maintenance"
    );
    assert_eq!(lrs.lrs[0], Lr::EMPTY);
}

#[test]
fn clearing_a_hw_ppi_pending_deactivates_the_physical_one() {
    let mut g = gic(Version::V3, 1);
    let mut lrs = FakeLrs::new(4);
    g.bind_hw(0, 27, 27).unwrap();
    g.inject(0, 27).unwrap(); // disabled: stays pending
    g.flush(0, &mut lrs);
    assert_eq!(lrs.valid(), 0);
    rw(&mut g, SGI_BASE_OFF + 0x280, 4, Some(1 << 27));
    g.flush(0, &mut lrs);
    assert_eq!(lrs.deactivated, [27]);
}

#[test]
fn level_interrupt_with_eoi_notification_drops_its_line() {
    let mut g = gic(Version::V3, 2);
    let mut lrs = FakeLrs::new(4);
    spi(&mut g, 36, 0x40);
    // Route to vCPU 1.
    w(&mut g, 0, 0x6000 + 36 * 8, 8, 1);
    let kick = g.set_line(0, 36, true, true).unwrap();
    assert_eq!(kick, 0b10);
    g.flush(0, &mut lrs);
    assert_eq!(lrs.valid(), 0, "vCPU 0 is not the target");
    g.flush(1, &mut lrs);
    assert!(lrs.lrs[0].eoi, "EOI maintenance requested");
    assert_eq!(lrs.ack(), 36);
    assert!(lrs.eoi(36));
    let (eois, _) = g.sync(1, &mut lrs);
    assert_eq!(eois.iter().collect::<Vec<_>>(), [36]);
    assert_eq!(lrs.lrs[0], Lr::EMPTY, "EOI bit cleared");
    assert!(!g.has_work(1), "line dropped until the owner re-asserts it");
    g.set_line(0, 36, true, true).unwrap();
    assert!(g.has_work(1));
}

#[test]
fn sgis_between_vcpus() {
    // GICv2 through GICD_SGIR.
    let mut g = gic(Version::V2, 3);
    let mut lrs = FakeLrs::new(4);
    // target list: vCPUs 1 and 2, SGI 5
    let kick = w(&mut g, 0, 0xF00, 4, (0b110 << 16) | 5);
    assert_eq!(kick, 0b110);
    g.flush(2, &mut lrs);
    assert_eq!(lrs.lrs[0].vintid, 5);
    assert_eq!(lrs.lrs[0].source, 0, "sent by vCPU 0");
    // all-but-self from vCPU 2
    let kick = w(&mut g, 2, 0xF00, 4, (1 << 24) | 3);
    assert_eq!(kick, 0b011);
    // SPENDSGIR reads the source bits
    assert_eq!(r(&mut g, 1, 0xF20, 4) >> 24, 0b100, "SGI 3 is the top byte");
    assert_eq!(r(&mut g, 1, 0xF23, 1), 0b100);
    // GICv3 through the SGI1R value path.
    let mut g = gic(Version::V3, 2);
    rw(&mut g, SGI_BASE_OFF + 0x100, 4, Some(0xffff));
    rw(&mut g, GICR_STRIDE + SGI_BASE_OFF + 0x100, 4, Some(0xffff));
    let kick = g.send_sgi(0, 7, 0b10);
    assert_eq!(kick, 0b10);
    let mut lrs = FakeLrs::new(4);
    g.flush(1, &mut lrs);
    assert_eq!(lrs.ack(), 7);
}

#[test]
fn flooding_sgis_stays_bounded() {
    let mut g = gic(Version::V2, 2);
    let mut lrs = FakeLrs::new(4);
    for _ in 0..100_000 {
        w(&mut g, 0, 0xF00, 4, (0b10 << 16) | 1);
    }
    g.flush(1, &mut lrs);
    assert_eq!(lrs.valid(), 1, "one pending SGI, however often it is sent");
    assert_eq!(drain(&mut g, 1, &mut lrs), [1]);
}

#[test]
fn hostile_register_accesses_are_contained() {
    for version in [Version::V2, Version::V3] {
        let mut g = gic(version, 2);
        let before = g.clone();
        // Every offset, every width, aligned or not, reads and writes of
        // all-ones on reserved or out-of-range registers: nothing panics,
        // reads of unaligned accesses are zero.
        for off in (0..0x1_0000u64).step_by(1) {
            for width in [1u64, 2, 4, 8] {
                let unaligned = off % width != 0;
                let v = r(&mut g, 1, off, width);
                if unaligned {
                    assert_eq!(v, 0, "{version:?} unaligned read at {off:#x}/{width}");
                }
                if unaligned {
                    let k = w(&mut g, 1, off, width, u64::MAX);
                    assert_eq!(k, 0);
                }
            }
        }
        assert_eq!(
            format!("{:?}", g.vcpus),
            format!("{:?}", before.vcpus),
            "unaligned writes change nothing"
        );
        // vCPU index out of range.
        assert_eq!(
            g.dist_access(
                9,
                Access {
                    offset: 0x100,
                    width: 4,
                    write: Some(u64::MAX)
                }
            ),
            super::dist::Outcome::default()
        );
        // Writes everywhere with all-ones: still consistent, nothing out of
        // range.
        for off in (0..0x1_0000u64).step_by(4) {
            if off == 0xF00 {
                continue;
            }
            w(&mut g, 0, off, 4, u64::MAX);
        }
        for off in (0..4 * GICR_STRIDE).step_by(4) {
            rw(&mut g, off, 4, Some(u64::MAX));
            rw(&mut g, off, 4, None);
        }
        let mut lrs = FakeLrs::new(4);
        let delivered = drain(&mut g, 0, &mut lrs);
        assert!(delivered.len() <= NR_IRQS);
        // Priorities only take the implemented bits.
        assert_eq!(r(&mut g, 0, 0x400 + 40, 1), 0xf8);
    }
}

#[test]
fn register_file_identity() {
    let mut g = gic(Version::V3, 2);
    assert_eq!(r(&mut g, 0, 0x0, 4) & 0x10, 0x10, "ARE reads as one");
    assert_eq!(r(&mut g, 0, 0x4, 4) & 0x1f, (NR_IRQS / 32 - 1) as u64);
    assert_eq!(r(&mut g, 0, 0xFFE8, 4), 0x30);
    assert_eq!(rw(&mut g, 0xFFE8, 4, None), 0x30);
    let t0 = rw(&mut g, 0x8, 8, None);
    let t1 = rw(&mut g, GICR_STRIDE + 0x8, 8, None);
    assert_eq!(t0 >> 32, 0);
    assert_eq!(t1 >> 32, 1);
    assert_eq!(t0 & 0x10, 0, "not last");
    assert_eq!(t1 & 0x10, 0x10, "last");
    assert_eq!(rw(&mut g, 0x14, 4, None), 0b110, "asleep at reset");
    rw(&mut g, 0x14, 4, Some(0));
    assert_eq!(rw(&mut g, 0x14, 4, None), 0);
    // IROUTER round trip; non-zero Aff1 is unroutable.
    w(&mut g, 0, 0x6000 + 8 * 40, 8, 1);
    assert_eq!(r(&mut g, 0, 0x6000 + 8 * 40, 8), 1);
    w(&mut g, 0, 0x6000 + 8 * 41, 8, 0x100);
    spi(&mut g, 41, 0);
    assert_eq!(g.inject(0, 41), Ok(0), "unroutable SPI kicks nobody");
    // GICv2: ITARGETSR banked bytes read as own mask.
    let mut g = gic(Version::V2, 2);
    assert_eq!(r(&mut g, 1, 0x800, 4), 0x0202_0202);
    assert_eq!(r(&mut g, 0, 0x4, 4) >> 5 & 7, 1, "CPUNumber = 2 - 1");
    w(&mut g, 0, 0x800 + 40, 1, 0xff);
    assert_eq!(r(&mut g, 0, 0x800 + 40, 1), 0b11, "only this VM's vCPUs");
    // ICFGR: SGIs edge, read-only.
    w(&mut g, 0, 0xC00, 4, 0);
    assert_eq!(r(&mut g, 0, 0xC00, 4), 0xaaaa_aaaa);
}

#[test]
fn reset_vcpu_returns_held_physical_interrupts() {
    let mut g = gic(Version::V3, 1);
    let mut lrs = FakeLrs::new(4);
    g.bind_hw(0, 27, 27).unwrap();
    rw(&mut g, SGI_BASE_OFF + 0x100, 4, Some(1 << 27));
    g.inject(0, 27).unwrap();
    g.flush(0, &mut lrs);
    let held = g.reset_vcpu(0);
    assert_eq!(held, 1 << 27);
    assert!(!g.has_work(0));
    assert_eq!(g.irq(0, 27).unwrap().hw, Some(27), "binding kept");
}

#[test]
fn sgi1r_decoding() {
    // TargetList {1, 2}, SGI 3.
    assert_eq!(sgi1r_targets((3 << 24) | 0b110, 0, 3), 0b110);
    // Beyond the VM's vCPUs: dropped.
    assert_eq!(sgi1r_targets(0xffff, 0, 2), 0b11);
    // IRM: everyone but the sender.
    assert_eq!(sgi1r_targets(1 << 40, 1, 4), 0b1101);
    // Aff1 != 0: nobody (no such vCPU).
    assert_eq!(sgi1r_targets((1 << 16) | 1, 0, 4), 0);
    // RS = 1 addresses Aff0 16..31: none in an 8-vCPU VM.
    assert_eq!(sgi1r_targets((1 << 44) | 1, 0, 8), 0);
}

#[test]
fn new_edge_while_held_is_not_lost() {
    // GICv3: SGI 1 sent again while the guest handles it: merged as
    // pending+active, delivered again after the EOI.
    let mut g = gic(Version::V3, 2);
    rw(&mut g, GICR_STRIDE + SGI_BASE_OFF + 0x100, 4, Some(0xffff));
    let mut lrs = FakeLrs::new(4);
    g.send_sgi(0, 1, 0b10);
    g.flush(1, &mut lrs);
    assert_eq!(lrs.ack(), 1);
    let kick = g.send_sgi(0, 1, 0b10);
    assert_eq!(kick, 0b10, "the holder is kicked");
    g.sync(1, &mut lrs);
    g.flush(1, &mut lrs);
    assert!(lrs.eoi(1));
    assert_eq!(lrs.ack(), 1, "second SGI delivered without another trap");
    // GICv2: same SGI from another source while held: EOI maintenance.
    let mut g = gic(Version::V2, 3);
    let mut lrs = FakeLrs::new(4);
    lrs.v2 = true;
    g.send_sgi(0, 1, 0b100);
    g.flush(2, &mut lrs);
    assert_eq!(lrs.ack(), 1);
    g.send_sgi(1, 1, 0b100);
    g.sync(2, &mut lrs);
    g.flush(2, &mut lrs);
    assert!(lrs.lrs[0].eoi, "completion will trap");
    assert!(lrs.eoi(1));
    g.sync(2, &mut lrs);
    g.flush(2, &mut lrs);
    assert_eq!(lrs.ack(), 1);
    assert_eq!(
        lrs.lrs.iter().find(|l| l.vintid == 1).map(|l| l.source),
        Some(1)
    );
}
