//! `--config FILE`: one TOML file per role (`ferry backend`, `ferry frontend`,
//! `ferry control`) in which every flag of that command can be set, keyed by its long name
//! (`background-rate = "100M"`, `chunk-size = "64K"`, `volume = ["db=/dev/vg0/db"]`,
//! `fs-aware = true`; `_` may stand for `-`). Flags given on the command line win over the
//! file.
//!
//! How: the file becomes command-line tokens inserted right after the subcommand, for the
//! flags the command line does not name, and clap parses the result as usual, so a value
//! from the file is checked exactly like the same flag typed (one parser, one set of
//! messages, `--help` stays the reference). Unknown keys are refused with the list of known
//! ones: a typo must not silently fall back to a default.

use std::ffi::{OsStr, OsString};
use std::path::Path;

use clap::Command;

/// Options of the root command that take a value (so a scan for the subcommand skips it).
fn global_takes_value(root: &Command, token: &str) -> bool {
    let name = token.trim_start_matches("--");
    root.get_arguments().any(|a| {
        a.get_long() == Some(name) && a.get_action().takes_values() && !token.contains('=')
    })
}

/// Index of the subcommand token in `argv`, if any.
fn subcommand_at(root: &Command, argv: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < argv.len() {
        let t = argv[i].to_string_lossy();
        if t.starts_with('-') {
            i += if global_takes_value(root, &t) { 2 } else { 1 };
            continue;
        }
        return root.find_subcommand(t.as_ref()).map(|_| i);
    }
    None
}

/// The `--config` value in `rest` (`--config F` or `--config=F`).
fn config_path(rest: &[OsString]) -> Option<OsString> {
    let mut it = rest.iter();
    while let Some(t) = it.next() {
        if t == "--" {
            return None;
        }
        if t == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = t.to_str().and_then(|s| s.strip_prefix("--config=")) {
            return Some(v.into());
        }
    }
    None
}

/// Long names given on the command line (before `--`).
fn given(rest: &[OsString]) -> Vec<String> {
    rest.iter()
        .map_while(|t| (t != "--").then(|| t.to_string_lossy().into_owned()))
        .filter_map(|t| {
            t.strip_prefix("--")
                .map(|n| n.split('=').next().unwrap_or("").to_string())
        })
        .collect()
}

/// `argv` with the flags of the subcommand's `--config` file inserted; unchanged when there
/// is no such file. Errors name the file and the key.
pub fn expand(root: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(at) = subcommand_at(root, &argv) else {
        return Ok(argv);
    };
    let sub_name = argv[at].to_string_lossy().into_owned();
    let Some(sub) = root.find_subcommand(&sub_name) else {
        return Ok(argv);
    };
    if !sub.get_arguments().any(|a| a.get_long() == Some("config")) {
        return Ok(argv);
    }
    let Some(path) = config_path(&argv[at + 1..]) else {
        return Ok(argv);
    };
    let path = Path::new(&path);
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    let mut on_cli = given(&argv[at + 1..]);
    on_cli.extend(given(&argv[1..at]));
    let tokens = tokens_for(root, sub, &sub_name, path, &text, &on_cli)?;
    let mut out: Vec<OsString> = argv[..=at].to_vec();
    out.extend(tokens);
    out.extend_from_slice(&argv[at + 1..]);
    Ok(out)
}

fn tokens_for(
    root: &Command,
    sub: &Command,
    sub_name: &str,
    path: &Path,
    text: &str,
    on_cli: &[String],
) -> Result<Vec<OsString>, String> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    let args: Vec<&clap::Arg> = sub
        .get_arguments()
        .chain(root.get_arguments().filter(|a| a.is_global_set()))
        .filter(|a| {
            a.get_long()
                .is_some_and(|l| l != "config" && l != "help" && l != "version")
        })
        .collect();
    let mut out = Vec::new();
    for (key, value) in &table {
        let name = key.replace('_', "-");
        let Some(arg) = args.iter().find(|a| {
            a.get_long() == Some(name.as_str())
                || a.get_all_aliases()
                    .is_some_and(|al| al.contains(&name.as_str()))
        }) else {
            let mut known: Vec<&str> = args.iter().filter_map(|a| a.get_long()).collect();
            known.sort_unstable();
            return Err(format!(
                "config file {}: unknown key `{key}` for `ferry {sub_name}` (known keys: {})",
                path.display(),
                known.join(", ")
            ));
        };
        let long = arg.get_long().unwrap_or_default();
        let mut names = vec![long.to_string()];
        names.extend(
            arg.get_all_aliases()
                .into_iter()
                .flatten()
                .map(String::from),
        );
        if names.iter().any(|n| on_cli.contains(n)) {
            continue; // the command line wins
        }
        let flag = OsString::from(format!("--{long}"));
        let bad = |what: &str| format!("config file {}: key `{key}`: {what}", path.display());
        let takes_values = arg.get_action().takes_values();
        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        for v in items {
            match v {
                toml::Value::Boolean(b) if !takes_values => {
                    if *b {
                        out.push(flag.clone());
                    }
                }
                _ if !takes_values => {
                    return Err(bad("expected true or false (a switch)"));
                }
                toml::Value::String(s) => out.extend([flag.clone(), OsStr::new(s).into()]),
                toml::Value::Integer(n) => out.extend([flag.clone(), n.to_string().into()]),
                toml::Value::Float(f) => out.extend([flag.clone(), f.to_string().into()]),
                toml::Value::Boolean(b) => out.extend([flag.clone(), b.to_string().into()]),
                _ => {
                    return Err(bad(
                        "expected a string, a number, a boolean or a list of them",
                    ))
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn cmd() -> Command {
        Command::new("ferry")
            .arg(Arg::new("log").long("log-level").global(true))
            .subcommand(
                Command::new("frontend")
                    .arg(Arg::new("config").long("config"))
                    .arg(Arg::new("rate").long("background-rate"))
                    .arg(Arg::new("chunk").long("chunk-size"))
                    .arg(Arg::new("vol").long("volume").action(ArgAction::Append))
                    .arg(Arg::new("nd").long("no-dedup").action(ArgAction::SetTrue)),
            )
    }

    fn run(file: &str, cli: &[&str]) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("f.toml");
        std::fs::write(&p, file).expect("write");
        let mut argv: Vec<OsString> = vec!["ferry".into(), "frontend".into()];
        argv.push("--config".into());
        argv.push(p.into_os_string());
        argv.extend(cli.iter().map(OsString::from));
        expand(&cmd(), argv).map(|v| {
            v.into_iter()
                .skip(2)
                .map(|s| s.to_string_lossy().into_owned())
                .take_while(|s| s != "--config")
                .collect()
        })
    }

    #[test]
    fn file_then_cli_wins() {
        let got = run(
            "background-rate = \"10M\"\nchunk_size = 65536\nno-dedup = true\nvolume = [\"a=1\", \"b=2\"]\nlog-level = \"debug\"\n",
            &["--chunk-size", "4K"],
        )
        .expect("ok");
        assert_eq!(
            got,
            [
                "--background-rate",
                "10M",
                "--log-level",
                "debug",
                "--no-dedup",
                "--volume",
                "a=1",
                "--volume",
                "b=2"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused() {
        let e = run("backgrund-rate = 1\n", &[]).expect_err("typo");
        assert!(
            e.contains("unknown key `backgrund-rate`") && e.contains("background-rate"),
            "{e}"
        );
        let e = run("no-dedup = \"yes\"\n", &[]).expect_err("switch");
        assert!(e.contains("true or false"), "{e}");
        let e = run("x = [\n", &[]).expect_err("syntax");
        assert!(e.contains("f.toml"), "{e}");
    }
}
