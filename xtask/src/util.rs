//! Paths, errors and process helpers shared by the subcommands.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// Everything that can stop an xtask subcommand.
#[derive(Debug)]
pub enum Error {
    /// A file or process operation failed.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A command ran but exited unsuccessfully.
    Command { cmd: String, status: ExitStatus },
    /// Bad user input (arguments, scenario files).
    Usage(String),
    /// A prerequisite is missing and cannot be installed from here.
    Prerequisite(String),
    /// A device tree could not be read or written.
    Dtb(String),
    /// Anything else, with a message.
    Other(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Command { cmd, status } => write!(f, "`{cmd}` failed: {status}"),
            Error::Usage(m) => write!(f, "{m}"),
            Error::Prerequisite(m) => write!(f, "missing prerequisite: {m}"),
            Error::Dtb(m) => write!(f, "device tree: {m}"),
            Error::Other(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach a description to an I/O error.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

/// The repository root (the workspace containing xtask).
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { root().join(d) }
        }
        _ => root().join("target"),
    }
}

/// Where xtask puts flat images, generated DTBs and logs.
pub fn build_dir() -> PathBuf {
    root().join("build")
}

/// A `cargo` command running in the repository root.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    cmd
}

/// The command line, for messages.
pub fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Run a command with inherited stdio, echoing it first; fail on non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let status = cmd.status().ctx(|| format!("cannot run `{line}`"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command { cmd: line, status })
    }
}

/// Run a command and return its stdout (stderr inherited); fail on non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .ctx(|| format!("cannot run `{line}`"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            cmd: line,
            status: out.status,
        })
    }
}
