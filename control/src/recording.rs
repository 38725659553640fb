//! `ferry recording info FILE`: what an access-pattern recording holds.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use dataplane::recording::format::Event;
use dataplane::recording::{EventKind, Recording};
use serde_json::json;

use crate::size::human;

#[derive(Subcommand, Debug)]
pub enum RecordingCommand {
    /// Print a recording's identity (volume size, file-system UUID) and a summary of its
    /// events; refuses (exit 1) a file that is not a readable ferry recording.
    Info(InfoArgs),
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The recording file.
    file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Also list every event (seq, t_us, kind, offset, len).
    #[arg(long)]
    events: bool,
}

pub fn run(cmd: RecordingCommand) -> Result<ExitCode> {
    match cmd {
        RecordingCommand::Info(a) => info(&a),
    }
}

#[derive(Default)]
struct KindTotals {
    events: u64,
    bytes: u64,
}

fn info(a: &InfoArgs) -> Result<ExitCode> {
    let r = Recording::open(&a.file)?;
    let id = r.identity();
    let chunk = u64::from(id.chunk_size_bytes);
    let mut by_kind: BTreeMap<EventKind, KindTotals> = BTreeMap::new();
    let mut chunks: HashSet<u64> = HashSet::new();
    for e in r.events() {
        let t = by_kind.entry(e.kind).or_default();
        t.events += 1;
        t.bytes += e.len_bytes;
        if e.len_bytes > 0 {
            chunks.extend(e.offset_bytes / chunk..=(e.offset_bytes + e.len_bytes - 1) / chunk);
        }
    }
    let duration_us = r.events().last().map(|e| e.t_us).unwrap_or(0);
    let total = |k| by_kind.get(&k).map(|t| t.bytes).unwrap_or(0);
    let (read, written) = (total(EventKind::Read), total(EventKind::Write));
    if a.json {
        let kinds: serde_json::Map<String, serde_json::Value> = EventKind::ALL
            .iter()
            .map(|k| {
                let t = by_kind.get(k);
                (
                    k.name().to_string(),
                    json!({
                        "events": t.map(|t| t.events).unwrap_or(0),
                        "bytes": t.map(|t| t.bytes).unwrap_or(0),
                    }),
                )
            })
            .collect();
        let mut v = json!({
            "file": a.file.display().to_string(),
            "identity": {
                "format": dataplane::recording::FORMAT_NAME,
                "format_version": id.format_version,
                "volume_size_bytes": id.volume_size_bytes,
                "fs_uuid": id.fs_uuid_hex(),
                "chunk_size_bytes": id.chunk_size_bytes,
                "created_at_unix_s": id.created_at_unix_s,
                "ferry_version": id.ferry_version,
            },
            "summary": {
                "events": r.events().len(),
                "events_dropped": r.events_dropped(),
                "by_kind": kinds,
                "bytes_read": read,
                "bytes_written": written,
                "chunks_touched": chunks.len(),
                "duration_us": duration_us,
            },
        });
        if a.events {
            v["events"] = r.events().iter().map(event_json).collect();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "recording   {} (format {} v{}, ferry {})",
        a.file.display(),
        dataplane::recording::FORMAT_NAME,
        id.format_version,
        id.ferry_version
    );
    println!(
        "volume      {} ({} bytes), fs UUID {}, chunks of {}",
        human(id.volume_size_bytes),
        id.volume_size_bytes,
        id.fs_uuid_hex().as_deref().unwrap_or("none"),
        human(chunk)
    );
    println!(
        "events      {} over {:.3} s{}",
        r.events().len(),
        duration_us as f64 / 1e6,
        match r.events_dropped() {
            0 => String::new(),
            n => format!(" ({n} dropped: the recording is incomplete)"),
        }
    );
    for (k, t) in &by_kind {
        println!(
            "  {:<12} {:>10} events  {}",
            k.name(),
            t.events,
            human(t.bytes)
        );
    }
    println!(
        "data        read {}  written {}  chunks touched {}",
        human(read),
        human(written),
        chunks.len()
    );
    if a.events {
        for e in r.events() {
            println!(
                "{:>8} {:>12}us {:<12} {} +{}",
                e.seq,
                e.t_us,
                e.kind.name(),
                e.offset_bytes,
                e.len_bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn event_json(e: &Event) -> serde_json::Value {
    json!({
        "seq": e.seq,
        "t_us": e.t_us,
        "kind": e.kind.name(),
        "offset": e.offset_bytes,
        "len": e.len_bytes,
    })
}
