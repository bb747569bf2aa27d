//! Running QEMU: DTB dumps, captured runs with a timeout, interactive runs.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::qmp::{Hmp, Qmp};
use crate::util::{self, Error, IoContext, Result};

pub const QEMU: &str = "qemu-system-aarch64";

/// The machine options shared by a DTB dump and the run that uses it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub gic: u8,
    pub smp: u32,
    pub memory_mib: u64,
    /// EL2 present (the hypervisor runs); `false` boots a guest at EL1 directly.
    pub virtualization: bool,
    /// Extra arguments that shape the machine (e.g. `-device`s).
    pub extra: Vec<String>,
}

impl Machine {
    fn machine_opt(&self, dumpdtb: Option<&Path>) -> String {
        let mut m = format!("virt,gic-version={}", self.gic);
        if self.virtualization {
            m = format!("virt,virtualization=on,gic-version={}", self.gic);
        }
        if let Some(p) = dumpdtb {
            m.push_str(&format!(",dumpdtb={}", p.display()));
        }
        m
    }

    /// `-M ... -cpu max -smp S -m M <extra>`
    pub fn args(&self, dumpdtb: Option<&Path>) -> Vec<String> {
        let mut a = vec![
            "-M".into(),
            self.machine_opt(dumpdtb),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            self.smp.to_string(),
            "-m".into(),
            format!("{}M", self.memory_mib),
        ];
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Write QEMU's own DTB for this machine to `out`.
    pub fn dump_dtb(&self, out: &Path) -> Result<()> {
        if let Some(d) = out.parent() {
            std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        let mut cmd = Command::new(QEMU);
        cmd.args(self.args(Some(out))).args(["-display", "none"]);
        cmd.stdin(Stdio::null());
        let line = util::display(&cmd);
        let o = cmd.output().ctx(|| format!("cannot run `{line}`"))?;
        if !o.status.success() || !out.exists() {
            return Err(Error::Other(format!(
                "`{line}` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// How a captured run ended.
#[derive(Debug)]
pub struct Outcome {
    /// QEMU's exit status (None when killed).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The `absent` pattern that made us stop the run early, if any.
    pub stopped_on: Option<String>,
    /// Console (stdout) and QEMU's stderr, interleaved line by line as they
    /// came, with the `xtask: hmp ...` lines of `phv-hmp:` requests.
    pub log: String,
    pub duration: Duration,
    /// What went wrong with the guests' `phv-hmp:` requests (see `qmp`).
    pub problems: Vec<String>,
}

/// Which pipe a chunk came from.
const STDOUT: usize = 0;
const STDERR: usize = 1;

enum Chunk {
    Data(usize, Vec<u8>),
    Eof(usize),
}

fn pump(mut r: impl Read + Send + 'static, which: usize, tx: mpsc::Sender<Chunk>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Chunk::Data(which, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Chunk::Eof(which));
    });
}

/// The run's log: the file and the copy in memory, written line by line.
struct Log {
    file: std::fs::File,
    text: Vec<u8>,
    /// Each pipe's incomplete last line.
    partial: [Vec<u8>; 2],
}

impl Log {
    fn write(&mut self, bytes: &[u8]) {
        let _ = self.file.write_all(bytes);
        self.text.extend_from_slice(bytes);
    }

    /// Add a chunk from pipe `which`: write the lines it completes, each
    /// followed by what `after` returns for it; return those lines.
    fn add(
        &mut self,
        which: usize,
        data: &[u8],
        mut after: impl FnMut(&str) -> Option<String>,
    ) -> Vec<String> {
        self.partial[which].extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(i) = self.partial[which].iter().position(|b| *b == b'\n') {
            let bytes: Vec<u8> = self.partial[which].drain(..=i).collect();
            self.write(&bytes);
            let line = String::from_utf8_lossy(&bytes).into_owned();
            if let Some(extra) = after(&line) {
                self.write(format!("{extra}\n").as_bytes());
            }
            lines.push(line);
        }
        lines
    }

    /// Write pipe `which`'s incomplete line (it ended, or the run did).
    fn flush_partial(&mut self, which: usize) -> Option<String> {
        if self.partial[which].is_empty() {
            return None;
        }
        let line = std::mem::take(&mut self.partial[which]);
        self.write(&line);
        Some(String::from_utf8_lossy(&line).into_owned())
    }
}

/// Run QEMU with `args`, capturing its output into `log_path`, killing it
/// after `timeout` or shortly after one of `stop_on` shows up.
///
/// With `qmp` (the path of the QMP socket `args` make QEMU listen on), the
/// console's `phv-hmp:` lines are sent to QEMU's monitor as they arrive
/// (see `qmp`); without it they are answered with a problem.
pub fn run_captured(
    args: &[String],
    timeout: Duration,
    log_path: &Path,
    stop_on: &[String],
    qmp: Option<&Path>,
) -> Result<Outcome> {
    if let Some(d) = log_path.parent() {
        std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
    }
    let mut log = Log {
        file: std::fs::File::create(log_path).ctx(|| format!("create {}", log_path.display()))?,
        text: Vec::new(),
        partial: [Vec::new(), Vec::new()],
    };
    if let Some(sock) = qmp {
        if let Some(d) = sock.parent() {
            std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
        }
        // A stale socket from an earlier run would refuse connections.
        let _ = std::fs::remove_file(sock);
    }
    let mut cmd = Command::new(QEMU);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = util::display(&cmd);
    let _ = writeln!(log.file, "$ {line}");
    let start = Instant::now();
    let mut child = cmd.spawn().ctx(|| format!("cannot run `{line}`"))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, STDOUT, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, STDERR, tx.clone());
    }
    drop(tx);
    // The pipes keep filling the channel while we connect.
    let mut hmp = match qmp {
        Some(sock) => Hmp::enabled(Qmp::connect(sock, || matches!(child.try_wait(), Ok(None)))),
        None => Hmp::disabled(),
    };

    let mut eofs = 0;
    let mut timed_out = false;
    let mut stopped_on = None;
    let mut stop_deadline: Option<Instant> = None;
    let mut exit = None;
    let mut killed = false;
    let grace = Duration::from_millis(500);
    loop {
        let lines = match rx.recv_timeout(Duration::from_millis(50)) {
            // Console lines: answer `phv-hmp:` requests now, the guest is
            // waiting for what the command does.
            Ok(Chunk::Data(which, d)) => log.add(which, &d, |line| {
                if which == STDOUT {
                    hmp.line(line)
                } else {
                    None
                }
            }),
            Ok(Chunk::Eof(which)) => {
                eofs += 1;
                log.flush_partial(which).into_iter().collect()
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Vec::new(),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                eofs = 2;
                Vec::new()
            }
        };
        if stopped_on.is_none()
            && let Some(p) = stop_on.iter().find(|p| {
                lines
                    .iter()
                    .any(|l| crate::scenario::matches(p, l.trim_end_matches(['\r', '\n'])))
            })
        {
            stopped_on = Some(p.clone());
            stop_deadline = Some(Instant::now() + grace);
        }
        if exit.is_none() {
            if let Some(st) = child.try_wait().ctx(|| "wait for QEMU".into())? {
                exit = Some(st.code());
            } else {
                let now = Instant::now();
                let kill = if now.duration_since(start) >= timeout {
                    timed_out = true;
                    true
                } else {
                    stop_deadline.is_some_and(|d| now >= d)
                };
                if kill {
                    killed = true;
                    let _ = child.kill();
                    let st = child.wait().ctx(|| "wait for QEMU".into())?;
                    exit = Some(st.code());
                }
            }
        }
        if exit.is_some() && eofs >= 2 {
            break;
        }
    }
    for which in [STDOUT, STDERR] {
        log.flush_partial(which);
    }
    let duration = start.elapsed();
    let _ = log.file.flush();
    if let Some(sock) = qmp {
        let _ = std::fs::remove_file(sock);
    }
    Ok(Outcome {
        // Killed runs have no exit code.
        exit_code: if timed_out { None } else { exit.flatten() },
        timed_out,
        // Only report the pattern if it actually cut the run short.
        stopped_on: stopped_on.filter(|_| killed && !timed_out),
        log: String::from_utf8_lossy(&log.text).into_owned(),
        duration,
        problems: hmp.problems,
    })
}

/// Run QEMU attached to the terminal; returns its exit code.
pub fn run_interactive(args: &[String]) -> Result<i32> {
    let mut cmd = Command::new(QEMU);
    cmd.args(args);
    let line = util::display(&cmd);
    eprintln!("$ {line}");
    let st = cmd.status().ctx(|| format!("cannot run `{line}`"))?;
    Ok(st.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp;
    use std::path::PathBuf;

    /// A fresh directory for one test's files (short: it holds a Unix socket).
    fn scratch(name: &str) -> Option<PathBuf> {
        if Command::new(QEMU).arg("--version").output().is_err() {
            eprintln!("{QEMU} not found: skipping {name}");
            return None;
        }
        let d = std::env::temp_dir().join(format!("xtask-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Some(d)
    }

    /// Real QEMU, CPUs stopped: the AER injections a guest may ask for, through QMP.
    #[test]
    fn hmp_injects_aer_errors_in_qemu() {
        let Some(dir) = scratch("inject") else {
            return;
        };
        let sock = dir.join("q.sock");
        let mut args: Vec<String> = [
            "-M",
            "virt",
            "-cpu",
            "max",
            "-display",
            "none",
            "-S",
            "-nic",
            "none",
            "-device",
            "pcie-root-port,id=rp1,chassis=1,slot=1,addr=1.0",
            "-device",
            "nvme,bus=rp1,serial=x,id=nvme1",
        ]
        .map(String::from)
        .into();
        args.extend(crate::runner::qmp_args(&sock));
        let mut child = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut q = qmp::Qmp::connect(&sock, || matches!(child.try_wait(), Ok(None))).unwrap();
        for ok in [
            "pcie_aer_inject_error -c nvme1 0x1", // correctable: Receiver Error
            "pcie_aer_inject_error nvme1 RCVR",   // the same, by name
            "pcie_aer_inject_error nvme1 0x1000", // uncorrectable, non-fatal: Poisoned TLP
            "pcie_aer_inject_error nvme1 POISON_TLP", // the same, by name
            "pcie_aer_inject_error -a nvme1 POISON_TLP", // advisory non-fatal
            "pcie_aer_inject_error nvme1 SDN",    // uncorrectable, fatal: Surprise Down
            "pcie_aer_inject_error rp1 SDN",      // the root port itself
        ] {
            assert!(qmp::allowed(ok));
            let out = q.hmp(ok).unwrap();
            assert!(out.starts_with("OK id: "), "{ok}: {out:?}");
            assert!(!qmp::output_failed(&out), "{ok}: {out:?}");
        }
        for bad in [
            "pcie_aer_inject_error nosuch 0x1",
            "pcie_aer_inject_error -c nvme1 RCVR",
            "pcie_aer_inject_error nvme1 BOGUS",
            "pcie_aer_inject_error nvme1 0x3000",
            "pcie_aer_inject_error -c nvme1 0x2",
            "no_such_command",
        ] {
            let out = q.hmp(bad).unwrap();
            assert!(qmp::output_failed(&out), "{bad}: {out:?}");
        }
        let _ = q.execute("quit", None);
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A guest without the hypervisor (EL1, `-kernel` raw image): prints a
    /// refused request, then `phv-hmp: pcie_aer_inject_error -c nvme1 0x1`,
    /// polls the Correctable Error Detected bit of the nvme's PCIe Device
    /// Status (00:02.0, found through its capability list) for 4 s, says
    /// whether it saw it, and powers off. Built with `llvm-mc -triple=aarch64`
    /// from:
    ///
    /// ```text
    ///     movz x20, #0x0900, lsl #16      // PL011
    ///     mov  w0, #0x301
    ///     str  w0, [x20, #0x30]           // UARTCR: UARTEN | TXE | RXE
    ///     movz x21, #0x40, lsl #32
    ///     movk x21, #0x1001, lsl #16      // ECAM 0x40_1000_0000 + (2 << 15): 00:02.0
    ///     adr  x0, refused
    ///     bl   puts
    ///     ldrb w1, [x21, #0x34]           // capabilities pointer
    /// 1:  cbz  w1, fail
    ///     ldrb w2, [x21, x1]
    ///     cmp  w2, #0x10                  // PCI Express capability
    ///     b.eq 2f
    ///     add  x3, x1, #1
    ///     ldrb w1, [x21, x3]
    ///     b    1b
    /// 2:  add  x22, x21, x1
    ///     add  x22, x22, #0x0a            // Device Status
    ///     adr  x0, req
    ///     bl   puts
    ///     mrs  x4, cntfrq_el0
    ///     mrs  x5, cntvct_el0
    ///     add  x5, x5, x4, lsl #2         // 4 s
    /// 3:  ldrh w6, [x22]
    ///     tbnz w6, #0, 4f                 // Correctable Error Detected
    ///     mrs  x7, cntvct_el0
    ///     cmp  x7, x5
    ///     b.lo 3b
    /// fail: adr x0, no
    ///     bl   puts
    ///     b    off
    /// 4:  adr  x0, yes
    ///     bl   puts
    /// off: movz w0, #0x8400, lsl #16
    ///     movk w0, #0x0008                // PSCI SYSTEM_OFF
    ///     hvc  #0
    ///     b    off
    /// puts: ldrb w1, [x0], #1
    ///     cbz  w1, 5f
    /// 6:  ldr  w2, [x20, #0x18]           // UARTFR
    ///     tbnz w2, #5, 6b                 // TXFF
    ///     str  w1, [x20]
    ///     b    puts
    /// 5:  ret
    /// refused: .asciz "..."   (the strings of GUEST_TEXT, in order)
    /// ```
    const GUEST_CODE: [u32; 43] = [
        0xd2a12014, 0x52806020, 0xb9003280, 0xd2c00815, 0xf2a20035, 0x100004c0, 0x9400001e,
        0x3940d2a1, 0x34000261, 0x38616aa2, 0x7100405f, 0x54000080, 0x91000423, 0x38636aa1,
        0x17fffffa, 0x8b0102b6, 0x91002ad6, 0x70000400, 0x94000012, 0xd53be004, 0xd53be045,
        0x8b0408a5, 0x794002c6, 0x370000e6, 0xd53be047, 0xeb0500ff, 0x54ffff83, 0x300005c0,
        0x94000008, 0x14000003, 0x10000420, 0x94000005, 0x52b08000, 0x72800100, 0xd4000002,
        0x17fffffd, 0x38401401, 0x340000a1, 0xb9401a82, 0x372fffe2, 0xb9000281, 0x17fffffb,
        0xd65f03c0,
    ];
    /// The strings right after the code (the `adr`s above point into them).
    const GUEST_TEXT: &[u8] = b"[guest] phv-hmp: info pci\n\0\
        [guest] phv-hmp: pcie_aer_inject_error -c nvme1 0x1\n\0\
        [guest] aer: correctable error detected\n\0\
        [guest] aer: nothing detected\n\0";

    #[test]
    fn run_captured_sends_requests_while_the_guest_waits() {
        let Some(dir) = scratch("guest") else {
            return;
        };
        let image = dir.join("guest.bin");
        let mut bytes: Vec<u8> = GUEST_CODE.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(GUEST_TEXT);
        std::fs::write(&image, bytes).unwrap();
        let sock = dir.join("q.sock");
        let mut args: Vec<String> = [
            "-M",
            "virt",
            "-cpu",
            "max",
            "-m",
            "128M",
            "-nographic",
            "-nic",
            "none",
            "-device",
            "nvme,serial=x,id=nvme1,addr=2.0",
            "-kernel",
        ]
        .map(String::from)
        .into();
        args.push(image.display().to_string());
        args.extend(crate::runner::qmp_args(&sock));
        let o = run_captured(
            &args,
            Duration::from_secs(30),
            &dir.join("log"),
            &[],
            Some(&sock),
        )
        .unwrap();
        let lines: Vec<&str> = o.log.lines().map(|l| l.trim_end_matches('\r')).collect();
        let at = |want: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(want))
                .unwrap_or_else(|| panic!("no line `{want}` in:\n{}", o.log))
        };
        // Each answer right after its request; the guest saw the error.
        let refused = at("xtask: hmp 'info pci' -> refused");
        assert_eq!(refused, at("[guest] phv-hmp: info pci") + 1);
        let sent =
            at("xtask: hmp 'pcie_aer_inject_error -c nvme1 0x1' -> OK id: nvme1 root bus: 0000:00");
        assert_eq!(sent, at("[guest] phv-hmp: pcie_aer_inject_error") + 1);
        assert!(at("[guest] aer: correctable error detected") > sent);
        assert_eq!(o.exit_code, Some(0), "{}", o.log);
        assert!(!o.timed_out);
        assert_eq!(o.problems.len(), 1, "{:?}", o.problems);
        assert!(o.problems[0].contains("`info pci`"), "{:?}", o.problems);
        assert!(!sock.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
