//! `mixed`: phases from a scenario file, run one after another; the runs listed in one phase run
//! at the same time.
//!
//! ```toml
//! [[phase]]
//! name = "baseline"
//! scenario = "echo"          # a phase with one run: its options sit in the phase itself
//! connections = 50
//! duration = "5s"
//!
//! [[phase]]
//! name = "fan-out under echo load"
//! [[phase.run]]
//! scenario = "broadcast"
//! listeners = 1000
//! rate = 200
//! duration = "10s"
//! [[phase.run]]
//! scenario = "echo"
//! connections = 50
//! duration = "10s"
//! ```
//!
//! Each run's keys are the scenario's long option names (`message-size` or `message_size`), so a
//! file accepts exactly what the command line accepts: entries are turned into an argument list
//! and parsed by the same clap definitions. Target and output options (`url`, `api-key`, ...) are
//! the command line's and are refused here, so one file runs unchanged against any target.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use clap::{CommandFactory, Parser};
use serde_json::{Map, Value};

use crate::cli::{Cli, Scenario};

/// One phase of the file.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    /// Run concurrently.
    pub runs: Vec<Scenario>,
}

/// Reads and checks a scenario file (`.json`, anything else is read as TOML).
pub fn load(path: &Path) -> anyhow::Result<Vec<Phase>> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the scenario file {origin}"))?;
    let value: Value = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        serde_json::from_str(&text).map_err(|e| anyhow!("{origin}: not valid JSON: {e}"))?
    } else {
        let v: toml::Value =
            toml::from_str(&text).map_err(|e| anyhow!("{origin}: not valid TOML: {e}"))?;
        serde_json::to_value(v)?
    };
    parse(&value, &origin)
}

/// Checks a scenario file already read into JSON form; `origin` names it in errors.
pub fn parse(value: &Value, origin: &str) -> anyhow::Result<Vec<Phase>> {
    let Some(phases) = value
        .get("phase")
        .or_else(|| value.get("phases"))
        .and_then(Value::as_array)
    else {
        bail!("{origin}: no phases; write one `[[phase]]` table (TOML) or a `\"phases\": [...]` array (JSON) per phase");
    };
    if phases.is_empty() {
        bail!("{origin}: the phase list is empty");
    }
    let mut out = Vec::with_capacity(phases.len());
    for (i, phase) in phases.iter().enumerate() {
        let Some(table) = phase.as_object() else {
            bail!("{origin}: phase {} is not a table", i + 1);
        };
        let name = table
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("phase {}", i + 1), str::to_owned);
        let entries: Vec<&Map<String, Value>> = match table.get("run") {
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(j, e)| {
                    e.as_object().ok_or_else(|| {
                        anyhow!(
                            "{origin}: phase {} (`{name}`) run {} is not a table",
                            i + 1,
                            j + 1
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            Some(Value::Object(one)) => vec![one],
            Some(_) => bail!(
                "{origin}: phase {} (`{name}`): `run` must be a list of tables",
                i + 1
            ),
            None => vec![table],
        };
        let runs = entries
            .iter()
            .enumerate()
            .map(|(j, e)| {
                to_scenario(
                    e,
                    &format!("{origin}: phase {} (`{name}`) run {}", i + 1, j + 1),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if runs.is_empty() {
            bail!("{origin}: phase {} (`{name}`) has no runs", i + 1);
        }
        out.push(Phase { name, runs });
    }
    Ok(out)
}

/// Turns one entry into a scenario by parsing it as a command line.
fn to_scenario(entry: &Map<String, Value>, place: &str) -> anyhow::Result<Scenario> {
    let Some(kind) = entry.get("scenario").and_then(Value::as_str) else {
        bail!("{place}: missing `scenario` (one of connect, echo, broadcast, publish, soak)");
    };
    if kind == "mixed" {
        bail!("{place}: a mixed scenario cannot contain another");
    }
    let command = Cli::command();
    let globals: Vec<String> = command
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    let mut argv = vec!["loadtest".to_owned(), kind.to_owned()];
    for (key, value) in entry {
        if key == "scenario" || key == "name" || key == "run" {
            continue;
        }
        let long = key.replace('_', "-");
        if globals.contains(&long) {
            bail!("{place}: `{key}` is a target/output option; give it on the command line");
        }
        let flag = format!("--{long}");
        match value {
            Value::Bool(true) => argv.push(flag),
            Value::Bool(false) => {}
            Value::Number(n) => argv.extend([flag, n.to_string()]),
            Value::String(s) => argv.extend([flag, s.clone()]),
            // `[[phase.event]]` tables: the weighted event mix (`--mix`).
            Value::Array(items) if long == "event" => {
                for (k, item) in items.iter().enumerate() {
                    let Some(table) = item.as_object() else {
                        bail!(
                            "{place}: event {} must be a table (target, type, weight)",
                            k + 1
                        );
                    };
                    let mut parts = Vec::new();
                    for (name, v) in table {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => bail!(
                                "{place}: event {}: `{name}` must be a string or a number",
                                k + 1
                            ),
                        };
                        parts.push(format!("{name}={v}"));
                    }
                    argv.extend(["--mix".to_owned(), parts.join(",")]);
                }
            }
            // A list: the option repeated (`stage = ["10s:100", "20s:100"]`).
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(s) => argv.extend([flag.clone(), s.clone()]),
                        Value::Number(n) => argv.extend([flag.clone(), n.to_string()]),
                        _ => bail!("{place}: `{key}` must list strings or numbers"),
                    }
                }
            }
            _ => bail!("{place}: `{key}` must be a number, a string, a boolean or a list"),
        }
    }
    let cli = Cli::try_parse_from(&argv).map_err(|e| {
        let first = e.to_string();
        let first = first
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        anyhow!("{place}: {first}")
    })?;
    Ok(cli.scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml(text: &str) -> anyhow::Result<Vec<Phase>> {
        let v: toml::Value = toml::from_str(text)?;
        parse(&serde_json::to_value(v)?, "test.toml")
    }

    #[test]
    fn phases_with_one_or_several_runs() {
        let phases = toml(
            r#"
            [[phase]]
            name = "warm"
            scenario = "echo"
            connections = 5
            duration = "1s"
            message_size = 10

            [[phase]]
            [[phase.run]]
            scenario = "broadcast"
            listeners = 3
            rate = "max"
            [[phase.run]]
            scenario = "connect"
            connections = 2
            "#,
        )
        .expect("valid");
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].name, "warm");
        assert!(matches!(
            &phases[0].runs[0],
            Scenario::Echo(a) if a.connections == 5 && a.message_size == 10
        ));
        assert_eq!(phases[1].name, "phase 2");
        assert_eq!(phases[1].runs.len(), 2);
    }

    #[test]
    fn errors_name_the_place() {
        let e = toml("[[phase]]\nscenario = \"echo\"\nconections = 5\n").expect_err("typo");
        assert!(e.to_string().contains("phase 1"), "{e}");
        let e = toml("[[phase]]\nscenario = \"echo\"\nurl = \"ws://x/\"\n").expect_err("global");
        assert!(e.to_string().contains("command line"), "{e}");
        let e = toml("[[phase]]\nconnections = 5\n").expect_err("no scenario");
        assert!(e.to_string().contains("missing `scenario`"), "{e}");
        assert!(toml("x = 1").is_err());
    }

    #[test]
    fn the_shipped_example_parses() {
        let phases = toml(include_str!("../../scenarios/example.toml")).expect("example is valid");
        assert_eq!(phases.len(), 3);
        assert_eq!(phases[1].runs.len(), 2);
    }

    #[test]
    fn event_tables_become_the_mix() {
        let phases = toml(
            r#"
            [[phase]]
            scenario = "publish"
            listeners = 10
            [[phase.event]]
            target = "user"
            type = 1
            weight = 3
            [[phase.event]]
            target = "all"
            [[phase.event]]
            target = "connection"
            type = 9
            "#,
        )
        .expect("valid");
        let Scenario::Publish(a) = &phases[0].runs[0] else {
            panic!("publish");
        };
        assert_eq!(
            a.delivery.mix,
            [
                "target=user,type=1,weight=3",
                "target=all",
                "target=connection,type=9"
            ]
        );
        let e = toml("[[phase]]\nscenario = \"publish\"\nevent = [1]\n").expect_err("not tables");
        assert!(e.to_string().contains("event 1 must be a table"), "{e}");
    }

    #[test]
    fn json_files_work_too() {
        let v: Value = serde_json::from_str(
            r#"{"phases":[{"name":"a","scenario":"connect","connections":3,"hold":"1s"}]}"#,
        )
        .expect("json");
        let phases = parse(&v, "x.json").expect("valid");
        assert!(matches!(&phases[0].runs[0], Scenario::Connect(a) if a.connections == 3));
    }

    #[test]
    fn pause_options_work_in_files() {
        let v: Value = serde_json::from_str(
            r#"{"phases":[{"scenario":"broadcast","listeners":20,"pause-share":0.1,"pause_for":"2s","pause-rcvbuf":4096}]}"#,
        )
        .expect("json");
        let phases = parse(&v, "x.json").expect("valid");
        let Scenario::Broadcast(a) = &phases[0].runs[0] else {
            panic!("broadcast");
        };
        assert_eq!(a.delivery.pause.paused_count(a.delivery.listeners), 2);
        assert_eq!(
            a.delivery.pause.pause_for,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(a.delivery.pause.pause_rcvbuf, Some(4096));
    }
}
