//! `memcommit replay TRACE --json --witness` (docs/design.md, "Update witness"): each update
//! step's line carries its rows in the contract's JSON form, they hold together from the
//! step before's root to the step's own, and the CPU tree's rows at k = 0 and k = 3 equal
//! the reference backend's.

use std::path::{Path, PathBuf};
use std::process::Command;

use memcommit::hash::Digest;
use memcommit::trace::{TraceEvent, TraceReader, TraceWriter};
use memcommit::tree::witness::{check_witness, WitnessRow};
use serde_json::Value;

/// The bundled trace's writes, build and first `updates` updates.
fn short_trace(dir: &Path, updates: usize) -> (PathBuf, u32) {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sqlite3.trace.zst");
    let mut reader = TraceReader::open(&bundled).expect("open");
    let header = reader.header().clone();
    let height = header.layout.address_space_height() + header.layout.address_height();
    let path = dir.join("short.trace");
    let mut writer = TraceWriter::create(&path, &header).expect("create");
    let mut seen = 0;
    for event in reader.by_ref() {
        let event = event.expect("event");
        seen += usize::from(matches!(event, TraceEvent::Update { .. }));
        writer.write(&event).expect("write");
        if seen == updates {
            break;
        }
    }
    writer.finish().expect("finish");
    (path, height)
}

fn digest(v: &Value) -> Digest {
    let values: Vec<u32> = serde_json::from_value(v.clone()).expect("8 integers");
    Digest::from_canonical(values.try_into().expect("8 values")).expect("canonical")
}

/// One row from its JSON object, which must have exactly the contract's keys.
fn row(v: &Value) -> WitnessRow {
    let o = v.as_object().expect("a row is an object");
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["height", "index", "new", "old", "touched"]);
    let pair = |k: &str| [digest(&o[k][0]), digest(&o[k][1])];
    assert_eq!(o["old"].as_array().map(Vec::len), Some(2));
    let flag = |i: usize| match o["touched"][i].as_u64() {
        Some(0) => false,
        Some(1) => true,
        other => panic!("touched[{i}] is {other:?}, not 0 or 1"),
    };
    WitnessRow {
        height: o["height"].as_u64().expect("height") as u32,
        index: o["index"].as_u64().expect("index"),
        old: pair("old"),
        new: pair("new"),
        touched: [flag(0), flag(1)],
    }
}

/// Runs the replay and returns each update step's rows, checked against its roots.
fn replay_witness(trace: &Path, height: u32, args: &[&str]) -> Vec<Vec<WitnessRow>> {
    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .arg("replay")
        .arg(trace)
        .args(["--json", "--witness"])
        .args(args)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut steps = Vec::new();
    let mut root = None;
    for line in String::from_utf8(out.stdout).expect("utf-8").lines() {
        let v: Value = serde_json::from_str(line).expect("a JSON line");
        let new = digest(&v["root"]);
        match (v["step"].as_u64(), root) {
            (Some(0), _) => assert!(v.get("witness").is_none(), "the build has no witness"),
            (Some(_), Some(old)) => {
                let rows: Vec<WitnessRow> = v["witness"]
                    .as_array()
                    .expect("an update has a witness")
                    .iter()
                    .map(row)
                    .collect();
                check_witness(&rows, height, &old, &new).expect("consistent");
                steps.push(rows);
            }
            other => panic!("unexpected step {other:?}"),
        }
        root = Some(new);
    }
    steps
}

#[test]
fn replay_prints_every_updates_witness_and_backends_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (trace, height) = short_trace(dir.path(), 4);
    let want = replay_witness(&trace, height, &["--backend", "reference"]);
    assert_eq!(want.len(), 4);
    assert!(want.iter().all(|rows| !rows.is_empty()));
    for k in ["0", "3"] {
        let got = replay_witness(&trace, height, &["--backend", "cpu", "--omitted-levels", k]);
        assert_eq!(got, want, "cpu at k = {k}");
    }
}

#[test]
fn witness_needs_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args(["replay", "any.trace", "--witness"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--json"), "{stderr}");
}
