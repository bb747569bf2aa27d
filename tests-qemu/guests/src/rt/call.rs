//! SMCCC calls over `hvc #0` and `smc #0`.

use core::arch::asm;

/// x0..x3 of an SMCCC call's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ret(pub [u64; 4]);

impl Ret {
    /// x0 as a signed SMCCC status.
    pub fn status(&self) -> i64 {
        self.0[0] as i64
    }
}

/// An SMCCC call function through conduit instruction `$insn`.
macro_rules! smccc_call {
    ($(#[$doc:meta])* $name:ident, $insn:literal) => {
        $(#[$doc])*
        pub fn $name(id: u32, a: [u64; 7]) -> Ret {
            let (r0, r1, r2, r3);
            // SAFETY: an SMCCC call: the hypervisor may change x0-x17
            // (SMCCC 1.2), all declared clobbered; memory is not touched on
            // our behalf.
            unsafe {
                asm!(
                    $insn,
                    inout("x0") u64::from(id) => r0,
                    inout("x1") a[0] => r1,
                    inout("x2") a[1] => r2,
                    inout("x3") a[2] => r3,
                    inout("x4") a[3] => _,
                    inout("x5") a[4] => _,
                    inout("x6") a[5] => _,
                    inout("x7") a[6] => _,
                    out("x8") _, out("x9") _, out("x10") _, out("x11") _,
                    out("x12") _, out("x13") _, out("x14") _, out("x15") _,
                    out("x16") _, out("x17") _,
                    options(nostack),
                );
            }
            Ret([r0, r1, r2, r3])
        }
    };
}

smccc_call!(
    /// SMCCC call through `hvc #0`: x0 = id, x1..x7 = args.
    hvc,
    "hvc #0"
);
smccc_call!(
    /// SMCCC call through `smc #0` (trapped by the hypervisor).
    smc,
    "smc #0"
);

/// `hvc` with up to three arguments, returning x0 as a signed status.
pub fn hvc3(id: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    hvc(id, [a1, a2, a3, 0, 0, 0, 0]).status()
}
