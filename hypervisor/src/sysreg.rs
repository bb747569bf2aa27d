//! Trapped system register accesses (ESR_EL2.EC 0x18) of the PMU, debug
//! and ID registers, and the EL2 trap controls that send them here
//! (docs/interfaces.md, "PMU, debug and ID registers").
//!
//! The PMU (and the other counting and tracing units: SPE, trace, TRBE,
//! AMU) stays the hypervisor's and is hidden: its ID fields read 0 and
//! every access is an undefined instruction, so a guest can neither count
//! cycles spent at EL2 nor arm an overflow interrupt. Self-hosted debug is
//! the guest's (breakpoints, watchpoints, MDSCR_EL1 are not trapped; with
//! MDCR_EL2.TDE clear its debug exceptions go to EL1 and cannot be taken at
//! EL2), except what acts on the physical core: the OS Lock is passed
//! through, the double lock and powerdown request are RAZ/WI, the debug
//! ROM address reads as absent. Pure decisions here; the shell reads and
//! writes the hardware.

/// One trapped MRS/MSR, decoded from its ISS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub op0: u8,
    pub op1: u8,
    pub crn: u8,
    pub crm: u8,
    pub op2: u8,
    /// The general register (31 = xzr).
    pub rt: u8,
    /// MRS (true) or MSR.
    pub read: bool,
}

impl Access {
    pub fn decode(esr: u64) -> Self {
        let iss = esr & 0x1ff_ffff;
        let f = |lsb: u32, bits: u32| ((iss >> lsb) & ((1 << bits) - 1)) as u8;
        Access {
            op0: f(20, 2),
            op2: f(17, 3),
            op1: f(14, 3),
            crn: f(10, 4),
            rt: f(5, 5),
            crm: f(1, 4),
            read: iss & 1 != 0,
        }
    }

    fn is(&self, op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> bool {
        (self.op0, self.op1, self.crn, self.crm, self.op2) == (op0, op1, crn, crm, op2)
    }
}

/// What the shell does with a trapped access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read ID register `S3_0_C0_C<crm>_<op2>` and give the guest
    /// [`sanitize_id`] of it.
    IdRead { crm: u8, op2: u8 },
    /// Write OSLAR_EL1.OSLK (bit 0 of the value): the OS Lock is the
    /// guest's (its pCPU runs no one else).
    OsLock,
    /// Read OSLSR_EL1 as the hardware has it.
    OsLockStatus,
    /// Reads 0, writes ignored.
    RazWi,
    /// An undefined instruction for the guest.
    Undefined,
}

/// The action for `a`, or `None` for an access nothing here traps (the
/// caller treats it as unexpected).
pub fn classify(a: &Access) -> Option<Action> {
    let id_space = a.op0 == 3 && a.op1 == 0 && a.crn == 0 && (1..=7).contains(&a.crm);
    if id_space {
        // Only reads trap (TID3); ID registers are read-only.
        return Some(if a.read {
            Action::IdRead {
                crm: a.crm,
                op2: a.op2,
            }
        } else {
            Action::Undefined
        });
    }
    // MDCR_EL2.TDRA: MDRAR_EL1 (read-only): no debug ROM table.
    if a.is(2, 0, 1, 0, 0) {
        return Some(if a.read {
            Action::RazWi
        } else {
            Action::Undefined
        });
    }
    // MDCR_EL2.TDOSA: OSLAR_EL1 (write-only), OSLSR_EL1 (read-only),
    // OSDLR_EL1 and DBGPRCR_EL1 (RAZ/WI: the double lock and the
    // powerdown request would act on the physical core's power and
    // external debug; ID_AA64DFR0_EL1.DoubleLock says "not implemented").
    if a.is(2, 0, 1, 0, 4) {
        return Some(if a.read {
            Action::Undefined
        } else {
            Action::OsLock
        });
    }
    if a.is(2, 0, 1, 1, 4) {
        return Some(if a.read {
            Action::OsLockStatus
        } else {
            Action::Undefined
        });
    }
    if a.is(2, 0, 1, 3, 4) || a.is(2, 0, 1, 4, 4) {
        return Some(Action::RazWi);
    }
    // The hidden units: PMU (MDCR_EL2.TPM, TPMCR: CRn 9 CRm 12-14 and the
    // event counters and filters, CRn 14 CRm 8-15), SPE and TRBE (TPMS,
    // E2PB, E2TB: CRn 9 CRm 9-11), TRFCR_EL1 (TTRF), the trace unit
    // (CPTR_EL2.TTA: op0 2 op1 1), the activity monitors (CPTR_EL2.TAM:
    // op1 3 CRn 13 CRm 2-7).
    let hidden = (a.op0 == 3 && a.crn == 9 && (9..=14).contains(&a.crm))
        || (a.op0 == 3 && a.op1 == 3 && a.crn == 14 && a.crm >= 8)
        || a.is(3, 0, 1, 2, 1)
        || (a.op0 == 2 && a.op1 == 1)
        || (a.op0 == 3 && a.op1 == 3 && a.crn == 13 && (2..=7).contains(&a.crm));
    hidden.then_some(Action::Undefined)
}

/// Set 4-bit field at `lsb` of `v` to `value`.
fn set_field(v: u64, lsb: u32, value: u64) -> u64 {
    (v & !(0xf << lsb)) | ((value & 0xf) << lsb)
}

/// What the guest sees of ID register `S3_0_C0_C<crm>_<op2>` whose
/// hardware value is `raw`: the hidden units' fields read "not
/// implemented", everything else unchanged.
pub fn sanitize_id(crm: u8, op2: u8, raw: u64) -> u64 {
    match (crm, op2) {
        // ID_PFR0_EL1: AMU (23:20).
        (1, 0) => set_field(raw, 20, 0),
        // ID_DFR0_EL1: CopTrc (15:12), MMapTrc (19:16), PerfMon (27:24),
        // TraceFilt (31:28).
        (1, 2) => [12, 16, 24, 28]
            .into_iter()
            .fold(raw, |v, l| set_field(v, l, 0)),
        // ID_DFR1_EL1: MTPMU (3:0), HPMN0 (7:4).
        (3, 5) => set_field(set_field(raw, 0, 0), 4, 0),
        // ID_AA64PFR0_EL1: SVE (35:32), MPAM (43:40), AMU (47:44).
        (4, 0) => [32, 40, 44]
            .into_iter()
            .fold(raw, |v, l| set_field(v, l, 0)),
        // ID_AA64PFR1_EL1: MTE (11:8), MPAM_frac (19:16), SME (27:24), NMI
        // (39:36), MTE_frac (43:40), GCS (47:44), THE (51:48), MTEX (55:52).
        (4, 1) => [8, 16, 24, 36, 40, 44, 48, 52]
            .into_iter()
            .fold(raw, |v, l| set_field(v, l, 0)),
        // ID_AA64ZFR0_EL1 (SVE's features), ID_AA64SMFR0_EL1 (SME's).
        (4, 4) | (4, 5) => 0,
        // ID_AA64DFR0_EL1: TraceVer (7:4), PMUVer (11:8), PMSS (19:16),
        // SEBEP (27:24), PMSVer (35:32), TraceFilt (43:40), TraceBuffer
        // (47:44), MTPMU (51:48), BRBE (55:52), ExtTrcBuff (59:56), HPMN0
        // (63:60) read 0; DoubleLock (39:36) 0xf: not implemented
        // (OSDLR_EL1 is RAZ/WI). DebugVer, BRPs, WRPs, CTX_CMPs unchanged.
        (5, 0) => {
            let v = [4, 8, 16, 24, 32, 40, 44, 48, 52, 56, 60]
                .into_iter()
                .fold(raw, |v, l| set_field(v, l, 0));
            set_field(v, 36, 0xf)
        }
        _ => raw,
    }
}

/// MDCR_EL2 bits.
pub mod mdcr {
    pub const TPMCR: u64 = 1 << 5;
    pub const TPM: u64 = 1 << 6;
    pub const TDOSA: u64 = 1 << 10;
    pub const TDRA: u64 = 1 << 11;
    pub const TPMS: u64 = 1 << 14;
    pub const HPMD: u64 = 1 << 17;
    pub const TTRF: u64 = 1 << 19;
    pub const HCCD: u64 = 1 << 23;
}

/// MDCR_EL2 for running guests on a CPU whose real ID_AA64DFR0_EL1 is
/// `dfr0` and PMCR_EL0.N `counters`: PMU accesses trapped (TPM, TPMCR;
/// HPMN = N, all counters in the guest range, none reserved for EL2), EL2
/// not counted anyway (HPMD, HCCD where implemented), SPE sampling and
/// trace filter controls trapped where implemented (TPMS, TTRF; the buffer
/// controls E2PB/E2TB at 0 trap too), the OS and ROM address registers
/// trapped (TDOSA, TDRA), and debug exceptions not routed to EL2 (TDE and
/// TDA clear: the guest's breakpoints, watchpoints and MDSCR_EL1 are its
/// own). Fields of features the CPU lacks stay 0 (RES0).
pub fn mdcr_el2(dfr0: u64, counters: u64) -> u64 {
    let pmuver = (dfr0 >> 8) & 0xf;
    let pmsver = (dfr0 >> 32) & 0xf;
    let tracefilt = (dfr0 >> 40) & 0xf;
    let mut v = mdcr::TDOSA | mdcr::TDRA;
    // 0xf: an IMPLEMENTATION DEFINED PMU, not PMUv3.
    if pmuver != 0 && pmuver != 0xf {
        v |= mdcr::TPM | mdcr::TPMCR | (counters & 0x1f);
        // PMUv3p1 (4) has HPMD, PMUv3p5 (6) HCCD.
        if pmuver >= 4 {
            v |= mdcr::HPMD;
        }
        if pmuver >= 6 {
            v |= mdcr::HCCD;
        }
    }
    if pmsver != 0 {
        v |= mdcr::TPMS;
    }
    if tracefilt != 0 {
        v |= mdcr::TTRF;
    }
    v
}

/// Whether the CPU has a PMUv3 the hypervisor must quiet at boot.
pub fn has_pmuv3(dfr0: u64) -> bool {
    let pmuver = (dfr0 >> 8) & 0xf;
    pmuver != 0 && pmuver != 0xf
}

/// Whether ID_AA64PFR0_EL1 `pfr0` says the activity monitors exist
/// (CPTR_EL2.TAM is RES0 otherwise).
pub fn has_amu(pfr0: u64) -> bool {
    (pfr0 >> 44) & 0xf != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ISS of an MRS/MSR with these fields (EC 0x18, IL).
    fn esr(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, rt: u64, read: bool) -> u64 {
        (0x18 << 26)
            | (1 << 25)
            | (op0 << 20)
            | (op2 << 17)
            | (op1 << 14)
            | (crn << 10)
            | (rt << 5)
            | (crm << 1)
            | u64::from(read)
    }

    fn action(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64, read: bool) -> Option<Action> {
        classify(&Access::decode(esr(op0, op1, crn, crm, op2, 3, read)))
    }

    #[test]
    fn decodes_fields() {
        let a = Access::decode(esr(3, 3, 9, 12, 0, 17, true));
        assert_eq!(
            a,
            Access {
                op0: 3,
                op1: 3,
                crn: 9,
                crm: 12,
                op2: 0,
                rt: 17,
                read: true
            }
        );
    }

    #[test]
    fn whole_id_space_is_read_and_sanitized() {
        for crm in 1..=7 {
            for op2 in 0..=7 {
                assert_eq!(
                    action(3, 0, 0, crm, op2, true),
                    Some(Action::IdRead {
                        crm: crm as u8,
                        op2: op2 as u8
                    })
                );
                assert_eq!(action(3, 0, 0, crm, op2, false), Some(Action::Undefined));
            }
        }
        // MIDR/MPIDR (CRm 0) are not in the TID3 group.
        assert_eq!(action(3, 0, 0, 0, 0, true), None);
    }

    #[test]
    fn pmu_hidden_debug_kept() {
        // QEMU max: DebugVer 0xa, PMUVer 6, BRPs 5, WRPs 3, CTX_CMPs 1, HPMN0 1.
        let dfr0 = 0x1000_0000_1030_560a;
        let s = sanitize_id(5, 0, dfr0);
        assert_eq!((s >> 8) & 0xf, 0, "PMUVer");
        assert_eq!(s & 0xf, 0xa, "DebugVer");
        assert_eq!((s >> 12) & 0xf, 5, "BRPs");
        assert_eq!((s >> 20) & 0xf, 3, "WRPs");
        assert_eq!((s >> 28) & 0xf, 1, "CTX_CMPs");
        assert_eq!((s >> 36) & 0xf, 0xf, "DoubleLock");
        assert_eq!(s >> 60, 0, "HPMN0");
        assert_eq!((sanitize_id(1, 2, 0x600_000a) >> 24) & 0xf, 0, "PerfMon");
        assert_eq!(sanitize_id(1, 2, 0x600_000a) & 0xf, 0xa, "CopDbg");
        assert_eq!(sanitize_id(3, 5, 0x10), 0, "ID_DFR1");
        // QEMU 10 `-cpu max`: SVE (1), MPAM (1), the rest kept (EL0-3,
        // FP, AdvSIMD, GIC, RAS, CSV2, CSV3...).
        let pfr0 = 0x1101_0011_2111_0222 | (1 << 32) | (1 << 40);
        assert_eq!(sanitize_id(4, 0, pfr0), 0x1101_0010_2111_0222);
        assert_eq!(
            sanitize_id(4, 0, pfr0 | (1 << 44)),
            0x1101_0010_2111_0222,
            "AMU hidden"
        );
        // ID_AA64PFR1_EL1 of `-cpu max`: BT (1), SSBS (2), MTE (3), SME
        // (2), NMI (1): BT and SSBS kept.
        let pfr1 = 0x10_0200_0321;
        assert_eq!(sanitize_id(4, 1, pfr1), 0x21);
        assert_eq!(sanitize_id(4, 4, 0x1234), 0, "ZFR0");
        assert_eq!(sanitize_id(4, 5, 0x1234), 0, "SMFR0");
        // Everything else as the hardware says (MMU, ISA fields).
        assert_eq!(
            sanitize_id(7, 0, 0x2100_0323_1020_1126),
            0x2100_0323_1020_1126
        );
        assert_eq!(sanitize_id(6, 0, 0x1234), 0x1234);
    }

    #[test]
    fn pmu_and_hidden_units_undefined() {
        // PMCR_EL0, PMCCNTR_EL0, PMINTENSET_EL1, PMEVTYPER0_EL0,
        // PMCCFILTR_EL0, PMSCR_EL1, TRBLIMITR_EL1, TRFCR_EL1, a trace
        // register, AMCNTENSET0_EL0.
        for (op0, op1, crn, crm, op2) in [
            (3, 3, 9, 12, 0),
            (3, 3, 9, 13, 0),
            (3, 0, 9, 14, 1),
            (3, 3, 14, 12, 0),
            (3, 3, 14, 15, 7),
            (3, 0, 9, 9, 0),
            (3, 0, 9, 11, 0),
            (3, 0, 1, 2, 1),
            (2, 1, 0, 1, 0),
            (3, 3, 13, 2, 5),
        ] {
            for read in [true, false] {
                assert_eq!(
                    action(op0, op1, crn, crm, op2, read),
                    Some(Action::Undefined),
                    "{op0} {op1} {crn} {crm} {op2}"
                );
            }
        }
    }

    #[test]
    fn os_registers() {
        assert_eq!(action(2, 0, 1, 0, 4, false), Some(Action::OsLock));
        assert_eq!(action(2, 0, 1, 0, 4, true), Some(Action::Undefined));
        assert_eq!(action(2, 0, 1, 1, 4, true), Some(Action::OsLockStatus));
        assert_eq!(action(2, 0, 1, 3, 4, false), Some(Action::RazWi));
        assert_eq!(action(2, 0, 1, 4, 4, true), Some(Action::RazWi));
        assert_eq!(action(2, 0, 1, 0, 0, true), Some(Action::RazWi));
        // MDSCR_EL1 and the breakpoint registers are not trapped.
        assert_eq!(action(2, 0, 0, 2, 2, true), None);
        assert_eq!(action(2, 0, 0, 0, 4, false), None);
    }

    #[test]
    fn mdcr_follows_features() {
        let qemu = 0x1000_0000_1030_560a;
        let v = mdcr_el2(qemu, 31);
        assert_eq!(v & 0x1f, 31, "HPMN = N");
        for bit in [mdcr::TPM, mdcr::TPMCR, mdcr::TDOSA, mdcr::TDRA, mdcr::HPMD] {
            assert_ne!(v & bit, 0, "{bit:#x}");
        }
        assert_eq!(v & (1 << 8 | 1 << 9), 0, "TDE, TDA clear");
        assert_eq!(v & (mdcr::TPMS | mdcr::TTRF), 0, "no SPE, no TRF");
        // No PMU: no PMU controls (RES0).
        assert_eq!(mdcr_el2(0x6, 0), mdcr::TDOSA | mdcr::TDRA);
        assert!(!has_pmuv3(0xf06));
        // SPE and TraceFilt present.
        let v = mdcr_el2((1 << 32) | (1 << 40) | (1 << 8), 6);
        assert_ne!(v & mdcr::TPMS, 0);
        assert_ne!(v & mdcr::TTRF, 0);
        assert_eq!(v & mdcr::HPMD, 0, "PMUv3 without v3p1");
    }
}
