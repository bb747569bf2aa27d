//! Running QEMU: DTB dumps, captured runs with a timeout, interactive runs.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    /// Console (stdout) and QEMU's stderr, interleaved as they came.
    pub log: String,
    pub duration: Duration,
}

enum Chunk {
    Data(Vec<u8>),
    Eof,
}

fn pump(mut r: impl Read + Send + 'static, tx: mpsc::Sender<Chunk>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Chunk::Data(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Chunk::Eof);
    });
}

/// Run QEMU with `args`, capturing its output into `log_path`, killing it
/// after `timeout` or shortly after one of `stop_on` shows up.
pub fn run_captured(
    args: &[String],
    timeout: Duration,
    log_path: &Path,
    stop_on: &[String],
) -> Result<Outcome> {
    if let Some(d) = log_path.parent() {
        std::fs::create_dir_all(d).ctx(|| format!("create {}", d.display()))?;
    }
    let mut log_file =
        std::fs::File::create(log_path).ctx(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new(QEMU);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = util::display(&cmd);
    let _ = writeln!(log_file, "$ {line}");
    let start = Instant::now();
    let mut child = cmd.spawn().ctx(|| format!("cannot run `{line}`"))?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx.clone());
    }
    drop(tx);

    let mut log: Vec<u8> = Vec::new();
    let mut eofs = 0;
    let mut timed_out = false;
    let mut stopped_on = None;
    let mut stop_deadline: Option<Instant> = None;
    let mut exit = None;
    let mut killed = false;
    let grace = Duration::from_millis(500);
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Chunk::Data(d)) => {
                let _ = log_file.write_all(&d);
                log.extend_from_slice(&d);
                if stopped_on.is_none() {
                    let text = String::from_utf8_lossy(&log);
                    if let Some(p) = stop_on.iter().find(|p| text.contains(p.as_str())) {
                        stopped_on = Some(p.clone());
                        stop_deadline = Some(Instant::now() + grace);
                    }
                }
            }
            Ok(Chunk::Eof) => eofs += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => eofs = 2,
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
    let duration = start.elapsed();
    let _ = log_file.flush();
    Ok(Outcome {
        // Killed runs have no exit code.
        exit_code: if timed_out { None } else { exit.flatten() },
        timed_out,
        // Only report the pattern if it actually cut the run short.
        stopped_on: stopped_on.filter(|_| killed && !timed_out),
        log: String::from_utf8_lossy(&log).into_owned(),
        duration,
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
