//! Host tests: `cargo test` of the host-testable crates, with results counted.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::util::{self, IoContext, Result};

/// One `cargo test` invocation of the host suite.
#[derive(Debug)]
pub struct Suite {
    pub name: &'static str,
    pub args: &'static [&'static str],
}

pub const SUITES: &[Suite] = &[
    Suite {
        name: "pci",
        args: &["test", "-p", "pci", "--features", "sim"],
    },
    Suite {
        name: "platform",
        args: &["test", "-p", "platform"],
    },
    Suite {
        name: "hypervisor",
        args: &["test", "-p", "hypervisor"],
    },
    Suite {
        name: "test-guests",
        args: &["test", "-p", "test-guests"],
    },
    Suite {
        name: "xtask",
        args: &["test", "-p", "xtask"],
    },
];

/// Counts from one suite.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

/// Sum of the `test result: ... N passed; M failed` lines of cargo test output.
pub fn parse_counts(output: &str) -> Counts {
    let mut c = Counts::default();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let n = |w: &str| -> Option<u64> {
                words
                    .iter()
                    .position(|x| *x == w)
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| words[i].parse().ok())
            };
            if let Some(p) = n("passed") {
                c.passed += p;
            }
            if let Some(f) = n("failed") {
                c.failed += f;
            }
        }
    }
    c
}

/// Run one suite, streaming its output; a suite that fails without reporting
/// a failed test (e.g. does not compile) counts as one failure.
pub fn run(suite: &Suite) -> Result<Counts> {
    let mut cmd = util::cargo();
    cmd.args(suite.args).stdout(Stdio::piped());
    let line = util::display(&cmd);
    eprintln!("$ {line}");
    let mut child = cmd.spawn().ctx(|| format!("cannot run `{line}`"))?;
    let mut captured = String::new();
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines() {
            let l = l.ctx(|| format!("read output of `{line}`"))?;
            println!("{l}");
            captured.push_str(&l);
            captured.push('\n');
        }
    }
    let status = child.wait().ctx(|| format!("wait for `{line}`"))?;
    let mut c = parse_counts(&captured);
    if !status.success() && c.failed == 0 {
        eprintln!("xtask: `{line}` failed ({status}) without a failing test: counted as 1 failure");
        c.failed = 1;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_result_lines() {
        let out = "running 3 tests\ntest a ... ok\n\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
                   test result: FAILED. 5 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out\n   Doc-tests x\ntest result: ok. 0 passed; 0 failed; 0 ignored\n";
        assert_eq!(
            parse_counts(out),
            Counts {
                passed: 8,
                failed: 2
            }
        );
        assert_eq!(parse_counts("nothing here"), Counts::default());
    }
}
