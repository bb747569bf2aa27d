//! `cargo xtask pci-report`: boot the hypervisor with the hardware domain
//! enumerating a QEMU topology, and turn what the hypervisor's `pci` tracker
//! logs on PCI_ENUMERATION_DONE (`phv: pci-json {...}` lines, written by
//! hypervisor/src/pci_report.rs) into one JSON document.

use serde_json::{Map, Value, json};

use crate::scenario::{Expect, Scenario, Vm};

/// Prefix of the hypervisor's machine-readable lines.
pub const PREFIX: &str = "phv: pci-json ";

/// The run: one hardware domain running `enumerate` on `devices` (QEMU
/// arguments). `-nic none` is added unless the arguments configure networking,
/// so QEMU's default virtio-net does not appear on bus 0.
pub fn scenario(gic: u8, devices: &[String]) -> Scenario {
    let mut qemu_args = Vec::new();
    let networking = devices
        .iter()
        .any(|a| matches!(a.as_str(), "-nic" | "-net" | "-netdev" | "-nodefaults"));
    if !networking {
        qemu_args.extend(["-nic".to_string(), "none".to_string()]);
    }
    qemu_args.extend(devices.iter().cloned());
    Scenario {
        name: "pci-report".into(),
        description: "pci-report: the hwdom enumerates, the hypervisor reports".into(),
        gic: vec![gic],
        smp: 1,
        memory_mib: 1024,
        timeout_s: 60,
        qemu_args,
        hypervisor: true,
        qmp: false,
        aer_storm: None,
        disk: Vec::new(),
        test_hypervisor_bugs: false,
        vm: vec![Vm {
            label: "hwdom".into(),
            hardware_domain: true,
            memory_mib: 64,
            cpus: 1,
            image: "test-guest".into(),
            bootargs: "test=enumerate order=reverse".into(),
            memory_base: None,
            pci_devices: Vec::new(),
            pci_whole_units: false,
            pci_reset_methods: Vec::new(),
            aer_deadline_ms: None,
            initramfs: None,
        }],
        expect: Expect {
            exit_code: 0,
            lines: vec!["[hwdom] enumerate: ok".into(), PREFIX.trim_end().into()],
            ordered: false,
            absent: vec!["PANIC".into()],
            max_matching: Default::default(),
        },
        pending: None,
    }
}

/// Assemble the report from a console log: `{"segments":[{"segment",
/// "orphans", "functions", "units", "quarantine"}]}`. Each function keeps
/// its `quarantine` (null, or why it is never handed to a guest:
/// `no-reset-method`, `not-ready`); a segment's `quarantine` lists those
/// functions as `{"bdf","reason"}`.
///
/// Errors when there is no `pci-json` line, a line is not a JSON object,
/// or a segment's `end` line disagrees with the lines before it.
pub fn assemble(log: &str) -> Result<Value, String> {
    let mut segments = Vec::new();
    let (mut functions, mut units) = (Vec::new(), Vec::new());
    let mut seen = 0;
    for (n, line) in log.lines().enumerate() {
        // Only the hypervisor's lines: at the start of a console line (a
        // guest's output follows its `[label] ` prefix).
        let Some(text) = line.strip_prefix(PREFIX) else {
            continue;
        };
        seen += 1;
        let text = text.trim_end_matches('\r');
        let mut obj: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(format!("log line {}: not a JSON object: {text}", n + 1)),
            Err(e) => return Err(format!("log line {}: {e}: {text}", n + 1)),
        };
        let kind = obj.remove("type");
        match kind.as_ref().and_then(Value::as_str) {
            Some("function") => functions.push(Value::Object(obj)),
            Some("unit") => units.push(Value::Object(obj)),
            Some("end") => {
                let count = |k: &str| obj.get(k).and_then(Value::as_u64);
                if count("functions") != Some(functions.len() as u64)
                    || count("units") != Some(units.len() as u64)
                {
                    return Err(format!(
                        "log line {}: end of segment says {:?} functions / {:?} units, the lines before it show {} / {}",
                        n + 1,
                        count("functions"),
                        count("units"),
                        functions.len(),
                        units.len()
                    ));
                }
                // Functions never handed to a guest, and why.
                let quarantine: Vec<Value> = functions
                    .iter()
                    .filter_map(|f| {
                        let reason = f.get("quarantine").filter(|r| !r.is_null())?;
                        Some(json!({
                            "bdf": f.get("bdf").cloned().unwrap_or(Value::Null),
                            "reason": reason.clone(),
                        }))
                    })
                    .collect();
                if let Some(q) = count("quarantined")
                    && q != quarantine.len() as u64
                {
                    return Err(format!(
                        "log line {}: end of segment says {q} quarantined, the function lines show {}",
                        n + 1,
                        quarantine.len()
                    ));
                }
                segments.push(json!({
                    "segment": obj.get("segment").cloned().unwrap_or(Value::Null),
                    "orphans": obj.get("orphans").cloned().unwrap_or(Value::Null),
                    "functions": std::mem::take(&mut functions),
                    "units": std::mem::take(&mut units),
                    "quarantine": quarantine,
                }));
            }
            other => {
                return Err(format!(
                    "log line {}: unknown type {other:?}: {text}",
                    n + 1
                ));
            }
        }
    }
    if seen == 0 {
        return Err(format!(
            "the hypervisor logged no `{}` lines: it must log each line of pci_report::lines() on PCI_ENUMERATION_DONE",
            PREFIX.trim_end()
        ));
    }
    if !functions.is_empty() || !units.is_empty() {
        return Err("pci-json lines after the last `end` line (report cut short?)".into());
    }
    Ok(json!({ "segments": segments }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"phv: PCI segment 0000 enumerated: 3 functions, 0 waiting for their bridge
phv: pci-json {"type":"function","bdf":"0000:00:00.0","vendor":"1b36","device":"0008","class":"060000","header_type":0,"multifunction":false,"kind":"conventional","parent":null,"unit":"0000:00:00.0","reset_methods":[]}
phv: pci-json {"type":"function","bdf":"0000:00:01.0","vendor":"1b36","device":"000c","class":"060400","header_type":1,"multifunction":false,"kind":"root-port","parent":null,"unit":"0000:00:01.0","reset_methods":[]}
[hwdom] something else
phv: pci-json {"type":"function","bdf":"0000:01:00.0","vendor":"1b36","device":"0010","class":"010802","header_type":0,"multifunction":false,"kind":"endpoint","parent":"0000:00:01.0","unit":"0000:01:00.0","reset_methods":[{"method":"flr","scope":["0000:01:00.0"]},{"method":"bus","scope":["0000:01:00.0"]}]}
phv: pci-json {"type":"unit","id":"0000:00:00.0","members":["0000:00:00.0"]}
phv: pci-json {"type":"unit","id":"0000:00:01.0","members":["0000:00:01.0"]}
phv: pci-json {"type":"unit","id":"0000:01:00.0","members":["0000:01:00.0"]}
phv: pci-json {"type":"end","segment":"0000","functions":3,"units":3,"orphans":0}
"#;

    /// What the hypervisor logs today: every function says whether it is
    /// quarantined, the end line counts them.
    const QUARANTINE_LOG: &str = r#"phv: WARN  0000:00:00.0: no reset method can reset it: quarantined (never given to a guest)
phv: pci-json {"type":"function","bdf":"0000:00:00.0","vendor":"1b36","device":"0008","class":"060000","header_type":0,"multifunction":false,"kind":"conventional","parent":null,"unit":"0000:00:00.0","reset_methods":[],"quarantine":"no-reset-method"}
phv: pci-json {"type":"function","bdf":"0000:00:01.0","vendor":"1b36","device":"000c","class":"060400","header_type":1,"multifunction":false,"kind":"root-port","parent":null,"unit":"0000:00:01.0","reset_methods":[],"quarantine":null}
phv: pci-json {"type":"function","bdf":"0000:01:00.0","vendor":"1b36","device":"0010","class":"010802","header_type":0,"multifunction":false,"kind":"endpoint","parent":"0000:00:01.0","unit":"0000:01:00.0","reset_methods":[{"method":"flr","scope":["0000:01:00.0"]}],"quarantine":"not-ready"}
phv: pci-json {"type":"unit","id":"0000:00:00.0","members":["0000:00:00.0"]}
phv: pci-json {"type":"unit","id":"0000:00:01.0","members":["0000:00:01.0"]}
phv: pci-json {"type":"unit","id":"0000:01:00.0","members":["0000:01:00.0"]}
phv: pci-json {"type":"end","segment":"0000","functions":3,"units":3,"orphans":0,"quarantined":2}
"#;

    #[test]
    fn lists_quarantined_functions() {
        let v = assemble(QUARANTINE_LOG).unwrap();
        let seg = &v["segments"][0];
        assert_eq!(seg["functions"][0]["quarantine"], "no-reset-method");
        assert!(seg["functions"][1]["quarantine"].is_null());
        assert_eq!(
            seg["quarantine"],
            json!([
                {"bdf": "0000:00:00.0", "reason": "no-reset-method"},
                {"bdf": "0000:01:00.0", "reason": "not-ready"},
            ])
        );
        // The end line's count must agree with the function lines.
        let wrong = QUARANTINE_LOG.replace("\"quarantined\":2", "\"quarantined\":1");
        assert!(assemble(&wrong).unwrap_err().contains("quarantined"));
        // Older logs without the fields: an empty list.
        assert_eq!(
            assemble(LOG).unwrap()["segments"][0]["quarantine"],
            json!([])
        );
    }

    #[test]
    fn assembles_segments() {
        let v = assemble(LOG).unwrap();
        let seg = &v["segments"][0];
        assert_eq!(seg["segment"], "0000");
        assert_eq!(seg["orphans"], 0);
        assert_eq!(seg["functions"].as_array().unwrap().len(), 3);
        assert_eq!(seg["functions"][2]["parent"], "0000:00:01.0");
        assert!(seg["functions"][2].get("type").is_none());
        assert_eq!(seg["functions"][2]["reset_methods"][1]["method"], "bus");
        assert_eq!(seg["units"][2]["members"][0], "0000:01:00.0");
        // A guest's line imitating one is not part of the report.
        let forged = LOG.replace(
            "[hwdom] something else",
            r#"[hwdom] phv: pci-json {"type":"unit","id":"0000:09:00.0","members":[]}"#,
        );
        assert_eq!(assemble(&forged).unwrap(), v);
    }

    #[test]
    fn refuses_incomplete_or_missing_reports() {
        assert!(
            assemble("phv: nothing here\n")
                .unwrap_err()
                .contains("no `phv: pci-json`")
        );
        let cut = LOG.replace("\"functions\":3", "\"functions\":4");
        assert!(assemble(&cut).unwrap_err().contains("end of segment"));
        let no_end: String = LOG
            .lines()
            .filter(|l| !l.contains("\"end\""))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(assemble(&no_end).is_err());
        assert!(assemble("phv: pci-json {oops\n").is_err());
        assert!(assemble("phv: pci-json {\"type\":\"mystery\"}\n").is_err());
    }

    #[test]
    fn adds_nic_none_unless_networking_is_configured() {
        let s = scenario(3, &["-device".into(), "nvme,serial=x".into()]);
        assert_eq!(s.qemu_args[..2], ["-nic", "none"]);
        assert_eq!(s.gic, [3]);
        let s = scenario(2, &["-nic".into(), "user".into()]);
        assert_eq!(s.qemu_args, ["-nic", "user"]);
    }
}
