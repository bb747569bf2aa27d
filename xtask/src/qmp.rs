//! QEMU's QMP monitor, driven by the guests of a run.
//!
//! A scenario with `qmp = true` runs QEMU with a QMP socket. A test guest
//! asks the harness for a monitor command by printing a console line
//! `phv-hmp: <HMP command>` (behind the hypervisor's `[label] ` prefix when
//! it runs as a VM). The harness sends it as `human-monitor-command` as soon
//! as the line is complete and adds `xtask: hmp '<command>' -> <reply>` to the
//! run's log. Only the commands in [`ALLOWED`] are sent (PCIe AER injection);
//! anything else, and any failed command, is a problem of the run.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What a console line starts with (after an optional `[label] `) to ask for an HMP command.
pub const REQUEST: &str = "phv-hmp: ";

/// HMP commands a guest may ask for (each followed by its arguments).
pub const ALLOWED: &[&str] = &["pcie_aer_inject_error"];

/// How long to wait for QMP's socket after starting QEMU, and for one reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The HMP command a console line asks for: `phv-hmp: <command>`, alone or
/// behind a `[label] ` prefix (line ends stripped, command trimmed).
pub fn request(line: &str) -> Option<&str> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = match line.strip_prefix('[') {
        Some(r) => {
            let (label, after) = r.split_once("] ")?;
            if label.is_empty() || label.contains(char::is_whitespace) {
                return None;
            }
            after
        }
        None => line,
    };
    rest.strip_prefix(REQUEST).map(str::trim)
}

/// Whether the harness sends this command: an allowed command name followed
/// by arguments, no control characters.
pub fn allowed(command: &str) -> bool {
    let Some((name, args)) = command.split_once(' ') else {
        return false;
    };
    ALLOWED.contains(&name) && !args.trim().is_empty() && !command.chars().any(char::is_control)
}

/// Whether an HMP command's output says it failed. HMP reports errors as
/// output text (`Error: device 'x' not found`, `failed to inject error`,
/// `unknown command: ...`), not as QMP errors. Success lines of
/// `pcie_aer_inject_error` (`OK id: ...`) are not searched, the id could
/// contain anything.
pub fn output_failed(output: &str) -> bool {
    const MARKERS: &[&str] = &["error", "failed", "not found", "invalid", "unknown command"];
    output
        .lines()
        .map(|l| l.trim().to_ascii_lowercase())
        .filter(|l| !l.is_empty() && !l.starts_with("ok "))
        .any(|l| MARKERS.iter().any(|m| l.contains(m)))
}

/// An HMP reply on one log line: lines joined with ` | `, `(no output)` when empty.
pub fn one_line(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "(no output)".into()
    } else {
        lines.join(" | ")
    }
}

/// The log line that records a command and its reply.
pub fn note(command: &str, reply: &str) -> String {
    format!("xtask: hmp '{command}' -> {reply}")
}

/// A QMP command as sent (one line, no line end).
pub fn command_json(id: u64, execute: &str, arguments: Option<Value>) -> String {
    let mut v = json!({ "execute": execute, "id": id });
    if let Some(a) = arguments {
        v["arguments"] = a;
    }
    v.to_string()
}

/// One message QEMU sent on the QMP socket.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// `{"QMP": {...}}`, first on a new connection.
    Greeting,
    /// `{"event": NAME, ...}`: asynchronous, not an answer.
    Event(String),
    /// `{"return": VALUE, "id": ID}`.
    Return { id: Option<Value>, value: Value },
    /// `{"error": {"class": C, "desc": D}, "id": ID}`.
    Error { id: Option<Value>, message: String },
}

pub fn parse_message(line: &str) -> Result<Message, String> {
    let v: Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("QMP sent something that is not JSON ({e}): {}", line.trim()))?;
    let id = v.get("id").cloned();
    if v.get("QMP").is_some() {
        Ok(Message::Greeting)
    } else if let Some(e) = v.get("event") {
        Ok(Message::Event(e.as_str().unwrap_or("?").to_string()))
    } else if let Some(r) = v.get("return") {
        Ok(Message::Return {
            id,
            value: r.clone(),
        })
    } else if let Some(e) = v.get("error") {
        let class = e.get("class").and_then(Value::as_str).unwrap_or("?");
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("?");
        Ok(Message::Error {
            id,
            message: format!("{class}: {desc}"),
        })
    } else {
        Err(format!("unexpected QMP message: {}", line.trim()))
    }
}

/// A QMP connection in command mode (capabilities negotiated).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Qmp {
    /// Connect to QEMU's QMP socket at `path`, retrying while it does not
    /// exist yet (QEMU is starting) and `alive()` says QEMU still runs.
    pub fn connect(path: &Path, mut alive: impl FnMut() -> bool) -> Result<Qmp, String> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Qmp::handshake(s),
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    if !alive() {
                        return Err(format!(
                            "QEMU ended before its QMP socket {} answered",
                            path.display()
                        ));
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "no QMP socket at {} after {} s: {e}",
                            path.display(),
                            CONNECT_TIMEOUT.as_secs()
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("connect to QMP at {}: {e}", path.display())),
            }
        }
    }

    /// Read the greeting and negotiate capabilities on a fresh connection.
    pub fn handshake(stream: UnixStream) -> Result<Qmp, String> {
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| format!("QMP socket: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("QMP socket: {e}"))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
        };
        match q.read_message()? {
            Message::Greeting => {}
            other => return Err(format!("QMP: expected the greeting, got {other:?}")),
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<Message, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP: connection closed (QEMU ended?)".into()),
            Ok(_) => parse_message(&line),
            Err(e) => Err(format!("QMP: reading the reply: {e}")),
        }
    }

    /// Run a QMP command; its `return` value, or its error (and I/O
    /// problems) as a message. Events that arrive meanwhile are skipped.
    pub fn execute(&mut self, execute: &str, arguments: Option<Value>) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut text = command_json(id, execute, arguments);
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| format!("QMP: sending {execute}: {e}"))?;
        let want = Some(json!(id));
        loop {
            match self.read_message()? {
                Message::Return { id, value } if id == want => return Ok(value),
                Message::Error { id, message } if id == want => return Err(message),
                Message::Return { .. } | Message::Error { .. } => {} // not ours
                Message::Event(_) | Message::Greeting => {}
            }
        }
    }

    /// Run an HMP command through `human-monitor-command`; its output text.
    /// HMP commands report most failures in that text (see [`output_failed`]).
    pub fn hmp(&mut self, command: &str) -> Result<String, String> {
        let v = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command })),
        )?;
        match v {
            Value::String(s) => Ok(s),
            other => Err(format!("QMP: human-monitor-command returned {other}")),
        }
    }
}

/// The `phv-hmp:` requests of one run: which were sent, their replies, and
/// what went wrong.
pub struct Hmp {
    /// Whether the scenario asked for a QMP socket (`qmp = true`).
    enabled: bool,
    qmp: Option<Qmp>,
    /// Why there is no connection although `enabled`.
    no_connection: Option<String>,
    pub problems: Vec<String>,
}

impl Hmp {
    /// No QMP socket: requests are answered with a problem.
    pub fn disabled() -> Hmp {
        Hmp {
            enabled: false,
            qmp: None,
            no_connection: None,
            problems: Vec::new(),
        }
    }

    /// QMP wanted: `connected` is the outcome of [`Qmp::connect`].
    pub fn enabled(connected: Result<Qmp, String>) -> Hmp {
        let mut h = Hmp::disabled();
        h.enabled = true;
        match connected {
            Ok(q) => h.qmp = Some(q),
            Err(e) => {
                h.problems.push(e.clone());
                h.no_connection = Some(e);
            }
        }
        h
    }

    /// Handle one complete console line: when it is a `phv-hmp:` request,
    /// send the command (if allowed) and return the log line recording it.
    pub fn line(&mut self, line: &str) -> Option<String> {
        let command = request(line)?;
        let reply = if !self.enabled {
            self.problems.push(format!(
                "guest asked for hmp `{command}` but the scenario has no `qmp = true`"
            ));
            "not sent: the scenario has no `qmp = true`".to_string()
        } else if !allowed(command) {
            self.problems.push(format!(
                "guest asked for hmp `{command}`, which is not allowed (only {})",
                ALLOWED.join(", ")
            ));
            format!("refused: only {} is allowed", ALLOWED.join(", "))
        } else if let Some(q) = self.qmp.as_mut() {
            match q.hmp(command) {
                Ok(out) => {
                    let reply = one_line(&out);
                    if output_failed(&out) {
                        self.problems
                            .push(format!("hmp `{command}` failed: {reply}"));
                    }
                    reply
                }
                Err(e) => {
                    self.problems.push(format!("hmp `{command}`: {e}"));
                    // Later requests would fail the same way, or hang.
                    self.qmp = None;
                    self.no_connection = Some(e.clone());
                    format!("error: {e}")
                }
            }
        } else {
            let why = self.no_connection.as_deref().unwrap_or("no QMP connection");
            self.problems
                .push(format!("hmp `{command}` not sent: {why}"));
            format!("not sent: {why}")
        };
        Some(note(command, &reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let c = "pcie_aer_inject_error -c nvme1 0x1";
        assert_eq!(request(&format!("phv-hmp: {c}")), Some(c));
        assert_eq!(request(&format!("[guest] phv-hmp: {c}\r\n")), Some(c));
        assert_eq!(request(&format!("[hwdom] phv-hmp:  {c} \n")), Some(c));
        assert_eq!(request("[guest] phv-hmp: "), Some(""));
        for not in [
            "phv: hmp: x",
            "[guest] said phv-hmp: x",
            "[two words] phv-hmp: x",
            "[] phv-hmp: x",
            "[guest]phv-hmp: x",
            " phv-hmp: x",
            "xtask: hmp 'x' -> y",
            "phv-hmp:x",
        ] {
            assert_eq!(request(not), None, "{not}");
        }
    }

    #[test]
    fn allow_list() {
        assert!(allowed("pcie_aer_inject_error -c nvme1 0x1"));
        assert!(allowed("pcie_aer_inject_error nvme1 SDN"));
        for not in [
            "pcie_aer_inject_error",
            "pcie_aer_inject_error ",
            "pcie_aer_inject_errorx nvme1 0x1",
            "quit",
            "system_reset",
            "info pci",
            "pcie_aer_inject_error nvme1\u{1b}0x1",
            "",
        ] {
            assert!(!allowed(not), "{not}");
        }
    }

    #[test]
    fn failed_outputs() {
        assert!(!output_failed(""));
        assert!(!output_failed(
            "OK id: nvme1 root bus: 0000:00, bus: 0 devfn: 0.0\r\n"
        ));
        assert!(!output_failed(
            "OK id: error-not-found root bus: 0000:00\r\n"
        ));
        for bad in [
            "Error: device 'nosuch' not found\r\n",
            "Error: -c is only valid with numeric error status\r\n",
            "Error: failed to inject error\r\n",
            "unknown command: 'frob'\r\n",
            "invalid error status value. \"x\"",
        ] {
            assert!(output_failed(bad), "{bad}");
        }
        assert_eq!(one_line("a\r\n\r\nb\r\n"), "a | b");
        assert_eq!(one_line("\r\n"), "(no output)");
    }

    #[test]
    fn qmp_json() {
        let c = command_json(
            3,
            "human-monitor-command",
            Some(json!({"command-line": "pcie_aer_inject_error nvme1 \"x\""})),
        );
        let v: Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["execute"], "human-monitor-command");
        assert_eq!(v["id"], 3);
        assert_eq!(
            v["arguments"]["command-line"],
            "pcie_aer_inject_error nvme1 \"x\""
        );
        assert!(!c.contains('\n'));
        assert_eq!(
            command_json(1, "qmp_capabilities", None),
            r#"{"execute":"qmp_capabilities","id":1}"#
        );

        let greeting = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;
        assert_eq!(parse_message(greeting), Ok(Message::Greeting));
        assert_eq!(
            parse_message(r#"{"return": {}, "id": 1}"#),
            Ok(Message::Return {
                id: Some(json!(1)),
                value: json!({})
            })
        );
        assert_eq!(
            parse_message(r#"{"return": "OK id: nvme1\r\n", "id": 2}"#),
            Ok(Message::Return {
                id: Some(json!(2)),
                value: json!("OK id: nvme1\r\n")
            })
        );
        assert_eq!(
            parse_message(
                r#"{"id": 4, "error": {"class": "CommandNotFound", "desc": "The command frob has not been found"}}"#
            ),
            Ok(Message::Error {
                id: Some(json!(4)),
                message: "CommandNotFound: The command frob has not been found".into()
            })
        );
        assert_eq!(
            parse_message(
                r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", "data": {}}"#
            ),
            Ok(Message::Event("RESET".into()))
        );
        assert!(parse_message("Error: no JSON").is_err());
        assert!(parse_message(r#"{"what": 1}"#).is_err());
    }

    /// A fake QEMU on the other end of a socket pair: greeting, capabilities,
    /// then answers to each command (with an event before each answer).
    fn fake_qemu(s: UnixStream, answers: Vec<&'static str>) -> std::thread::JoinHandle<Vec<Value>> {
        std::thread::spawn(move || {
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut got = Vec::new();
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            for (i, answer) in std::iter::once(r#""return": {}"#)
                .chain(answers)
                .enumerate()
            {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                let v: Value = serde_json::from_str(&line).unwrap();
                let id = v["id"].clone();
                got.push(v);
                writeln!(w, r#"{{"event": "E{i}", "data": {{}}}}"#).unwrap();
                // An answer to someone else's id first: must be skipped.
                writeln!(w, r#"{{"return": "other", "id": 999}}"#).unwrap();
                write!(w, "{{{answer}, \"id\": {id}}}\r\n").unwrap();
            }
            got
        })
    }

    #[test]
    fn qmp_over_a_socket_pair() {
        let (a, b) = UnixStream::pair().unwrap();
        let qemu = fake_qemu(
            b,
            vec![
                r#""return": "OK id: nvme1 root bus: 0000:00, bus: 1 devfn: 0.0\r\n""#,
                r#""return": "Error: device 'nosuch' not found\r\n""#,
                r#""error": {"class": "GenericError", "desc": "boom"}"#,
            ],
        );
        let mut h = Hmp::enabled(Qmp::handshake(a));
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        assert_eq!(h.line("[guest] hello"), None);
        assert_eq!(
            h.line("[guest] phv-hmp: pcie_aer_inject_error -c nvme1 0x1\r\n")
                .as_deref(),
            Some(
                "xtask: hmp 'pcie_aer_inject_error -c nvme1 0x1' -> OK id: nvme1 root bus: 0000:00, bus: 1 devfn: 0.0"
            )
        );
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        // Refused without asking QEMU.
        assert_eq!(
            h.line("[guest] phv-hmp: quit").as_deref(),
            Some("xtask: hmp 'quit' -> refused: only pcie_aer_inject_error is allowed")
        );
        assert_eq!(h.problems.len(), 1);
        assert_eq!(
            h.line("phv-hmp: pcie_aer_inject_error nosuch 0x1")
                .as_deref(),
            Some(
                "xtask: hmp 'pcie_aer_inject_error nosuch 0x1' -> Error: device 'nosuch' not found"
            )
        );
        assert_eq!(h.problems.len(), 2);
        assert_eq!(
            h.line("phv-hmp: pcie_aer_inject_error nvme1 SDN")
                .as_deref(),
            Some("xtask: hmp 'pcie_aer_inject_error nvme1 SDN' -> error: GenericError: boom")
        );
        assert_eq!(h.problems.len(), 3, "{:?}", h.problems);
        drop(h);
        let got = qemu.join().unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0]["execute"], "qmp_capabilities");
        assert_eq!(got[1]["execute"], "human-monitor-command");
        assert_eq!(
            got[1]["arguments"]["command-line"],
            "pcie_aer_inject_error -c nvme1 0x1"
        );
        assert_eq!(
            got[3]["arguments"]["command-line"],
            "pcie_aer_inject_error nvme1 SDN"
        );
    }

    #[test]
    fn requests_without_qmp() {
        let mut h = Hmp::disabled();
        assert_eq!(h.line("[hwdom] enumerate: ok"), None);
        let n = h
            .line("[guest] phv-hmp: pcie_aer_inject_error nvme1 SDN")
            .unwrap();
        assert!(n.contains("not sent"), "{n}");
        assert_eq!(h.problems.len(), 1);
        let mut h = Hmp::enabled(Err("no QMP socket".into()));
        assert_eq!(h.problems.len(), 1);
        let n = h.line("phv-hmp: pcie_aer_inject_error nvme1 SDN").unwrap();
        assert_eq!(
            n,
            "xtask: hmp 'pcie_aer_inject_error nvme1 SDN' -> not sent: no QMP socket"
        );
        assert_eq!(h.problems.len(), 2);
    }
}
