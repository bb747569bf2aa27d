//! The per-VM limit on the log lines a domain can cause (faults, refused
//! calls and accesses, its resets...): the one mechanism every such line
//! goes through (`Vm::may_log` in the shell; [`domain_may_log`] for code
//! that knows the VM by index).
//!
//! A token bucket rather than a budget that ends forever: a VM may log
//! [`BURST`] lines at once and [`PER_SECOND`] a second on average after
//! that, so a domain flooding the console costs the others at most that
//! much, yet its later, maybe different problems are still seen. Lines it
//! was refused are counted and the count is logged ("N lines suppressed")
//! with its next line that is let through, or when it stops.

/// Lines a VM may log at once.
pub const BURST: u32 = 32;
/// Lines a VM may log per second after a burst.
pub const PER_SECOND: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log the line; first say that `suppressed` (if > 0) were not.
    Log {
        suppressed: u32,
    },
    Suppress,
}

#[derive(Debug)]
pub struct RateLimit {
    tokens: u32,
    /// Counter value the tokens were last counted at.
    last: u64,
    suppressed: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            tokens: BURST,
            last: 0,
            suppressed: 0,
        }
    }
}

impl RateLimit {
    /// May one more line be logged at counter value `now`, with the
    /// counter at `frequency` Hz?
    pub fn check(&mut self, now: u64, frequency: u64) -> Verdict {
        let per_token = (frequency / PER_SECOND).max(1);
        let earned = now.saturating_sub(self.last) / per_token;
        if earned > 0 {
            self.tokens = u64::from(self.tokens)
                .saturating_add(earned)
                .min(u64::from(BURST)) as u32;
            // Keep the fraction of a token already earned.
            self.last = if self.tokens == BURST {
                now
            } else {
                self.last + earned * per_token
            };
        }
        if self.tokens == 0 {
            self.suppressed = self.suppressed.saturating_add(1);
            return Verdict::Suppress;
        }
        self.tokens -= 1;
        Verdict::Log {
            suppressed: core::mem::take(&mut self.suppressed),
        }
    }

    /// Lines refused since the last one logged (and forget them: the caller
    /// reports them now).
    pub fn take_suppressed(&mut self) -> u32 {
        core::mem::take(&mut self.suppressed)
    }
}

/// Whether VM `vm` (index in the system's table) may log one more line.
#[cfg(target_os = "none")]
pub fn domain_may_log(vm: u16) -> bool {
    crate::vm::domain_may_log(vm)
}

/// Host builds (tests of the PCI shell) have no VMs to limit.
#[cfg(not(target_os = "none"))]
pub fn domain_may_log(_vm: u16) -> bool {
    true
}

/// Whether the VM whose trap this CPU handles may log one more line.
#[cfg(target_os = "none")]
pub fn caller_may_log() -> bool {
    crate::vm::caller_may_log()
}

#[cfg(not(target_os = "none"))]
pub fn caller_may_log() -> bool {
    true
}

/// Whether the hardware domain may log one more line.
#[cfg(target_os = "none")]
pub fn hwdom_may_log() -> bool {
    crate::vm::hwdom_may_log()
}

#[cfg(not(target_os = "none"))]
pub fn hwdom_may_log() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 1_000_000_000;

    #[test]
    fn a_burst_then_the_rate_then_the_count() {
        let mut r = RateLimit::default();
        for _ in 0..BURST {
            assert_eq!(r.check(0, HZ), Verdict::Log { suppressed: 0 });
        }
        for i in 0..1000 {
            assert_eq!(r.check(i, HZ), Verdict::Suppress);
        }
        // One token per 100 ms: the next line says how many were lost.
        assert_eq!(r.check(HZ / 10 - 1, HZ), Verdict::Suppress);
        assert_eq!(r.check(HZ / 10, HZ), Verdict::Log { suppressed: 1001 });
        assert_eq!(r.check(HZ / 10 + 1, HZ), Verdict::Suppress);
        // A flood from 0.1 s to 61 s logs one line per 100 ms after the
        // last one: at 0.2 s, 0.3 s, ... 60.9 s.
        let mut logged = 0;
        let mut t = HZ / 10;
        while t < 61 * HZ {
            if matches!(r.check(t, HZ), Verdict::Log { .. }) {
                logged += 1;
            }
            t += HZ / 1000;
        }
        assert_eq!(logged, 608);
    }

    #[test]
    fn a_quiet_vm_gets_its_burst_back_and_never_more() {
        let mut r = RateLimit::default();
        for _ in 0..BURST + 5 {
            r.check(0, HZ);
        }
        assert_eq!(r.take_suppressed(), 5);
        assert_eq!(r.take_suppressed(), 0);
        let later = 3600 * HZ;
        for _ in 0..BURST {
            assert_eq!(r.check(later, HZ), Verdict::Log { suppressed: 0 });
        }
        assert_eq!(r.check(later, HZ), Verdict::Suppress);
        // A counter that goes backwards (another CPU's reading) earns nothing.
        assert_eq!(r.check(later - HZ, HZ), Verdict::Suppress);
    }

    #[test]
    fn slow_counters_still_earn_tokens() {
        let mut r = RateLimit::default();
        for _ in 0..BURST {
            r.check(0, 5);
        }
        assert_eq!(r.check(0, 5), Verdict::Suppress);
        assert_eq!(r.check(1, 5), Verdict::Log { suppressed: 1 });
    }
}
