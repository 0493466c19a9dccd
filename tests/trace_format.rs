//! Trace files: writer → reader round trips, a clear error for each malformed case, the
//! lackey conversion on a hand-written log, and the bundled real trace replayed on the CPU
//! tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memcommit::hash::{Digest, P};
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::trace::lackey::{self, LackeyOptions};
use memcommit::trace::{TraceEvent, TraceHeader, TraceReader, TraceWriter};
use memcommit::tree::{self, Backend, MemoryTree, OmittedLevels, TouchedBlock};
use memcommit::Error;

/// A u16 slot of 64 cells (128 bytes), an empty slot and a field slot of 16 cells.
const LAYOUT: &str = r#"{"address_spaces": [{"cell": "u16", "num_cells": 64}, {"cell": "u8", "num_cells": 0}, {"cell": "field", "num_cells": 16}]}"#;

fn layout() -> MemoryLayout {
    MemoryLayout::from_json(LAYOUT).expect("layout")
}

fn digest(seed: u32) -> Digest {
    Digest::from_canonical(core::array::from_fn(|i| seed * 1000 + i as u32)).expect("canonical")
}

fn sample_events() -> Vec<TraceEvent> {
    vec![
        TraceEvent::Write {
            slot: 0,
            offset: 4,
            data: vec![1, 2, 3, 4, 0xff, 0xfe],
        },
        TraceEvent::Write {
            slot: 2,
            offset: 8,
            data: (P - 1).to_le_bytes().to_vec(),
        },
        TraceEvent::Build {
            expect_root: Some(digest(1)),
        },
        TraceEvent::Update {
            blocks: vec![
                TouchedBlock {
                    slot: 2,
                    block: 1,
                    cells: [P - 1, 0, 1, 2, 3, 4, 5, 6],
                },
                TouchedBlock {
                    slot: 0,
                    block: 7,
                    cells: [65535, 1, 2, 3, 4, 5, 6, 7],
                },
            ],
            expect_root: None,
        },
        TraceEvent::Update {
            blocks: vec![],
            expect_root: Some(digest(2)),
        },
    ]
}

fn write_trace(path: &Path, header: &TraceHeader, events: &[TraceEvent]) {
    let mut w = TraceWriter::create(path, header).expect("create");
    for e in events {
        w.write(e).expect("write");
    }
    w.finish().expect("finish");
}

fn read_trace(path: &Path) -> (TraceHeader, Vec<TraceEvent>) {
    let reader = TraceReader::open(path).expect("open");
    let header = reader.header().clone();
    let events = reader.collect::<Result<Vec<_>, _>>().expect("events");
    (header, events)
}

#[test]
fn round_trip_plain_and_zstd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let header = TraceHeader {
        layout: layout(),
        omitted_levels: Some(OmittedLevels::Fixed(3)),
    };
    let events = sample_events();
    for name in ["t.trace", "t.trace.zst"] {
        let path = dir.path().join(name);
        write_trace(&path, &header, &events);
        let (h, e) = read_trace(&path);
        assert_eq!(h, header, "{name}");
        assert_eq!(e, events, "{name}");
        let bytes = std::fs::read(&path).expect("read");
        if name.ends_with(".zst") {
            assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
        } else {
            let text = String::from_utf8(bytes).expect("utf-8");
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 6);
            assert!(lines[0].starts_with(r#"{"layout":{"address_spaces":"#));
            assert!(lines[0].ends_with(r#""omitted_levels":3}"#));
            assert_eq!(
                lines[1],
                r#"{"write":{"slot":0,"offset":4,"hex":"01020304fffe"}}"#
            );
            assert_eq!(
                lines[3],
                r#"{"build":{},"expect_root":[1000,1001,1002,1003,1004,1005,1006,1007]}"#
            );
            assert_eq!(
                lines[5],
                r#"{"update":{"blocks":[]},"expect_root":[2000,2001,2002,2003,2004,2005,2006,2007]}"#
            );
        }
    }
    // No omitted_levels: the key is left out and reads back as None.
    let path = dir.path().join("none.trace");
    let header = TraceHeader {
        layout: layout(),
        omitted_levels: None,
    };
    write_trace(&path, &header, &[TraceEvent::Build { expect_root: None }]);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(!text.contains("omitted_levels"));
    assert_eq!(
        read_trace(&path),
        (header, vec![TraceEvent::Build { expect_root: None }])
    );
    // "auto" is written as the string and reads back as Auto.
    let path = dir.path().join("auto.trace");
    let header = TraceHeader {
        layout: layout(),
        omitted_levels: Some(OmittedLevels::Auto),
    };
    write_trace(&path, &header, &[TraceEvent::Build { expect_root: None }]);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text
        .lines()
        .next()
        .is_some_and(|l| l.ends_with(r#""omitted_levels":"auto"}"#)));
    assert_eq!(
        read_trace(&path),
        (header, vec![TraceEvent::Build { expect_root: None }])
    );
}

#[test]
fn expect_root_inside_the_event_object_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = "[1,2,3,4,5,6,7,8]";
    let text = format!(
        "{{\"layout\": {LAYOUT}}}\n\n{{\"build\": {{\"expect_root\": {root}}}}}\n\
         {{\"update\": {{\"blocks\": [], \"expect_root\": {root}}}}}\n"
    );
    let path = dir.path().join("t.trace");
    std::fs::write(&path, text).expect("write");
    let d = Digest::from_canonical([1, 2, 3, 4, 5, 6, 7, 8]).expect("canonical");
    let (_, events) = read_trace(&path);
    assert_eq!(
        events,
        vec![
            TraceEvent::Build {
                expect_root: Some(d)
            },
            TraceEvent::Update {
                blocks: vec![],
                expect_root: Some(d)
            }
        ]
    );
}

/// Reads `lines` (after a header with [`LAYOUT`]) and returns the first error's field and
/// message, checking that the iterator stops after it.
fn first_error(lines: &[&str]) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.trace");
    let mut text = format!("{{\"layout\": {LAYOUT}}}\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write");
    let err = match TraceReader::open(&path) {
        Err(e) => e,
        Ok(mut reader) => {
            let err = loop {
                match reader.next() {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break e,
                    None => panic!("no error reading {lines:?}"),
                }
            };
            assert!(reader.next().is_none(), "iteration ends after an error");
            err
        }
    };
    match err {
        Error::InvalidArgument { field, message } => (field, message),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Asserts the error names exactly `field` and its message contains `needle`.
fn assert_error(lines: &[&str], field: &str, needle: &str) {
    let (f, m) = first_error(lines);
    assert_eq!(f, field, "field for {lines:?} (message: {m})");
    assert!(
        m.contains(needle),
        "message for {lines:?} is {m:?}, expected it to contain {needle:?}"
    );
}

const BUILD: &str = r#"{"build": {}}"#;

#[test]
fn malformed_traces_name_line_and_field() {
    // Unknown keys, at every level.
    assert_error(
        &[r#"{"write": {"slot": 0, "offset": 0, "hex": "0000", "size": 2}}"#],
        "line 2: write.size",
        "unknown field `size`",
    );
    assert_error(
        &[
            BUILD,
            r#"{"update": {"blocks": [{"slot": 0, "block": 1, "cells": [0,0,0,0,0,0,0,0], "x": 1}]}}"#,
        ],
        "line 3: update.blocks[0].x",
        "unknown field `x`",
    );
    assert_error(
        &[r#"{"bulid": {}}"#],
        "line 2: bulid",
        "unknown field `bulid`",
    );
    assert_error(
        &[r#"{"build": {"now": true}}"#],
        "line 2: build.now",
        "unknown field",
    );
    // Bad hex.
    assert_error(
        &[r#"{"write": {"slot": 0, "offset": 0, "hex": "00zz"}}"#],
        "line 2: write.hex",
        "not valid hex",
    );
    assert_error(
        &[r#"{"write": {"slot": 0, "offset": 0, "hex": "000"}}"#],
        "line 2: write.hex",
        "not valid hex",
    );
    // Offset and length must be multiples of the (2-byte) cell.
    assert_error(
        &[r#"{"write": {"slot": 0, "offset": 3, "hex": "0000"}}"#],
        "line 2: write.offset",
        "3 is not a multiple of the 2-byte u16 cell",
    );
    assert_error(
        &[r#"{"write": {"slot": 0, "offset": 2, "hex": "000000"}}"#],
        "line 2: write.hex",
        "3 bytes is not a multiple of the 2-byte u16 cell",
    );
    // Past the end of the 128-byte slot, and into the empty slot.
    assert_error(
        &[r#"{"write": {"slot": 0, "offset": 126, "hex": "00000000"}}"#],
        "line 2: write.offset",
        "4 bytes at offset 126 run past the end of slot 0 (128 bytes)",
    );
    assert_error(
        &[r#"{"write": {"slot": 1, "offset": 0, "hex": "00"}}"#],
        "line 2: write.offset",
        "past the end of slot 1 (0 bytes)",
    );
    assert_error(
        &[r#"{"write": {"slot": 3, "offset": 0, "hex": "00"}}"#],
        "line 2: write.slot",
        "slot 3 does not exist",
    );
    // A field cell >= p in a write.
    assert_error(
        &[r#"{"write": {"slot": 2, "offset": 4, "hex": "01000078"}}"#],
        "line 2: write.hex (cell at byte 4)",
        "not a canonical BabyBear element",
    );
    // Order: write after build, two builds, update before build, missing build.
    assert_error(
        &[
            BUILD,
            r#"{"write": {"slot": 0, "offset": 0, "hex": "0000"}}"#,
        ],
        "line 3: write",
        "write after the build on line 2",
    );
    assert_error(
        &[BUILD, r#"{"update": {"blocks": []}}"#, BUILD],
        "line 4: build",
        "second build (the first is on line 2)",
    );
    assert_error(
        &[r#"{"update": {"blocks": []}}"#],
        "line 2: update",
        "update before the build",
    );
    assert_error(
        &[r#"{"write": {"slot": 0, "offset": 0, "hex": "0000"}}"#],
        "line 2: build",
        "ends after line 2 without a build",
    );
    assert_error(&[], "line 1: build", "without a build");
    // Blocks: 7 cells, a cell too large, out of range, repeated.
    assert_error(
        &[
            BUILD,
            r#"{"update": {"blocks": [{"slot": 0, "block": 0, "cells": [0,0,0,0,0,0,0,0]}, {"slot": 0, "block": 1, "cells": [1,2,3,4,5,6,7]}]}}"#,
        ],
        "line 3: update.blocks[1].cells",
        "invalid length 7",
    );
    assert_error(
        &[
            BUILD,
            r#"{"update": {"blocks": [{"slot": 0, "block": 0, "cells": [0,0,65536,0,0,0,0,0]}]}}"#,
        ],
        "line 3: update.blocks[0].cells[2]",
        "65536 does not fit a u16 cell",
    );
    assert_error(
        &[
            BUILD,
            r#"{"update": {"blocks": [{"slot": 0, "block": 8, "cells": [0,0,0,0,0,0,0,0]}]}}"#,
        ],
        "line 3: update.blocks[0].block",
        "block 8 is out of range (slot 0 has 8 blocks)",
    );
    assert_error(
        &[
            BUILD,
            r#"{"update": {"blocks": [{"slot": 2, "block": 1, "cells": [0,0,0,0,0,0,0,0]}, {"slot": 2, "block": 1, "cells": [1,0,0,0,0,0,0,0]}]}}"#,
        ],
        "line 3: update.blocks[1]",
        "appears more than once",
    );
    assert_error(
        &[
            BUILD,
            r#"{"update": {"blocks": [{"slot": 0, "block": -1, "cells": [0,0,0,0,0,0,0,0]}]}}"#,
        ],
        "line 3: update.blocks[0].block",
        "invalid value",
    );
    assert_error(
        &[BUILD, r#"{"update": {}}"#],
        "line 3: update.blocks",
        "missing field",
    );
    // Digests: a value >= p, a short one, at the line level and inside the event.
    let p = P;
    let bad_root = format!(r#"{{"build": {{}}, "expect_root": [0,0,0,0,0,0,0,{p}]}}"#);
    assert_error(&[&bad_root], "line 2: expect_root", "has a value >= p");
    let bad_root = format!(r#"{{"update": {{"blocks": [], "expect_root": [{p},0,0,0,0,0,0,0]}}}}"#);
    assert_error(&[BUILD, &bad_root], "line 3: update.expect_root", ">= p");
    assert_error(
        &[r#"{"build": {}, "expect_root": [1,2,3]}"#],
        "line 2: expect_root",
        "invalid length 3",
    );
    assert_error(
        &[r#"{"build": {"expect_root": [1,2,3,4,5,6,7,8]}, "expect_root": [1,2,3,4,5,6,7,8]}"#],
        "line 2: expect_root",
        "given both",
    );
    assert_error(
        &[
            r#"{"write": {"slot": 0, "offset": 0, "hex": "0000"}, "expect_root": [1,2,3,4,5,6,7,8]}"#,
        ],
        "line 2: expect_root",
        "only build and update lines carry expect_root",
    );
    // Line shape: two events, none, bad JSON; blank lines are skipped but counted.
    assert_error(
        &[r#"{"build": {}, "update": {"blocks": []}}"#],
        "line 2",
        "found `build` and `update`",
    );
    assert_error(&["{}"], "line 2", "no event");
    assert_error(&[r#"{"build": {}"#], "line 2", "not valid JSON");
    assert_error(&["[1, 2]"], "line 2", "expected an object, found an array");
    assert_error(
        &["", "  ", BUILD, r#"{"update": 5}"#],
        "line 5: update",
        "expected an object, found a number",
    );
}

#[test]
fn malformed_headers_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.trace");
    let open_err = |text: &str| {
        std::fs::write(&path, text).expect("write");
        match TraceReader::open(&path) {
            Err(Error::InvalidArgument { field, message }) => (field, message),
            Err(other) => panic!("expected InvalidArgument, got {other:?}"),
            Ok(_) => panic!("header {text:?} was accepted"),
        }
    };
    let (f, m) = open_err("");
    assert_eq!(f, "line 1");
    assert!(m.contains("empty trace"), "{m}");
    let (f, m) = open_err(&format!(
        "{{\"layout\": {LAYOUT}, \"omitted\": 3}}\n{BUILD}\n"
    ));
    assert_eq!(f, "line 1: omitted");
    assert!(m.contains("unknown field `omitted`"), "{m}");
    let (f, m) = open_err(&format!(
        "{{\"layout\": {LAYOUT}, \"omitted_levels\": 21}}\n"
    ));
    assert_eq!(f, "line 1: omitted_levels");
    assert!(m.contains("21 exceeds the maximum 20"), "{m}");
    let (f, m) = open_err(&format!(
        "{{\"layout\": {LAYOUT}, \"omitted_levels\": \"often\"}}\n"
    ));
    assert_eq!(f, "line 1: omitted_levels");
    assert!(m.contains(r#""often" is not "auto""#), "{m}");
    let (f, m) = open_err(r#"{"layout": {"address_spaces": [{"cell": "u8", "num_cells": 12}]}}"#);
    assert_eq!(f, "line 1: layout");
    assert!(
        m.contains("address_spaces[0].num_cells") && m.contains("12"),
        "{m}"
    );
    let (f, m) = open_err(r#"{"omitted_levels": 3}"#);
    assert_eq!(f, "line 1: layout");
    assert!(m.contains("missing field"), "{m}");

    // I/O errors name the path; a .zst that is not zstd fails as I/O too.
    let missing = dir.path().join("missing.trace");
    match TraceReader::open(&missing) {
        Err(Error::Io { context, .. }) => assert!(context.contains("missing.trace"), "{context}"),
        other => panic!("expected Io, got {:?}", other.err()),
    }
    let fake = dir.path().join("fake.trace.zst");
    std::fs::write(&fake, "{\"layout\": {}}\n").expect("write");
    match TraceReader::open(&fake) {
        Err(Error::Io { context, .. }) => assert!(context.contains("fake.trace.zst"), "{context}"),
        other => panic!("expected Io, got {:?}", other.err()),
    }
}

#[test]
fn writer_checks_what_it_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let header = TraceHeader {
        layout: layout(),
        omitted_levels: None,
    };
    let path = dir.path().join("w.trace");
    let mut w = TraceWriter::create(&path, &header).expect("create");
    let err = w
        .write(&TraceEvent::Update {
            blocks: vec![],
            expect_root: None,
        })
        .expect_err("update before build");
    assert!(err.to_string().contains("line 2: update"), "{err}");
    let err = w
        .write(&TraceEvent::Write {
            slot: 0,
            offset: 1,
            data: vec![0, 0],
        })
        .expect_err("odd offset");
    assert!(err.to_string().contains("line 2: write.offset"), "{err}");
    // Rejected events are not written: the next line is still line 2.
    w.write(&TraceEvent::Write {
        slot: 0,
        offset: 0,
        data: vec![7, 0],
    })
    .expect("write");
    let err = w.finish().expect_err("no build");
    assert!(err.to_string().contains("line 2: build"), "{err}");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), 2);

    let header = TraceHeader {
        layout: layout(),
        omitted_levels: Some(OmittedLevels::Fixed(99)),
    };
    let err = TraceWriter::create(&path, &header)
        .err()
        .expect("bad omitted_levels");
    assert!(err.to_string().contains("line 1: omitted_levels"), "{err}");
}

// ---- lackey -----------------------------------------------------------------------------

/// The documented store value: byte `j mod 8` of splitmix64(access · 2^16 + j / 8).
fn store_byte(access: u64, j: u64) -> u8 {
    let mut z = (access << 16) + j / 8;
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    (z ^ (z >> 31)).to_le_bytes()[(j % 8) as usize]
}

/// Accesses (0-based): 0 load page 0xa block 1; 1 store 16 bytes straddling pages 5 and 6;
/// 2 modify 4 bytes of page 0xa block 2; 3 load inside page 0xa block 1; 4 store 2 bytes of
/// page 6, block 0. Plus instruction, noise and program-output lines.
const LACKEY_LOG: &str = "\
==4242== Lackey, an example Valgrind tool
==4242== Command: ./prog
I  04016a0,3
 L 0000a008,8
I  04016a3,2
 S 00005ff8,16
hello from the program
 M 0000a010,4
 L 0000a00c,2
 S 00006004,2
==4242== Exit code:       0
";

fn convert_snippet(
    options: &LackeyOptions,
) -> (lackey::LackeySummary, TraceHeader, Vec<TraceEvent>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("prog.lackey");
    std::fs::write(&log, LACKEY_LOG).expect("write log");
    let out = dir.path().join("prog.trace.zst");
    let summary = lackey::convert(&log, &out, options).expect("convert");
    let (header, events) = read_trace(&out);
    assert_eq!(
        summary.output_bytes,
        std::fs::metadata(&out).expect("meta").len()
    );
    (summary, header, events)
}

fn cells(bytes: &[u8]) -> [u32; 8] {
    core::array::from_fn(|i| u32::from(bytes[i]))
}

#[test]
fn lackey_conversion_packs_pages_and_batches_accesses() {
    let options = LackeyOptions {
        accesses_per_batch: 2,
        ..LackeyOptions::default()
    };
    let (summary, header, events) = convert_snippet(&options);
    // Pages 0xa, 0x5, 0x6 in first-touch order → packed 0, 1, 2; 3 × 4096 → 16384 cells.
    assert_eq!(
        header.layout,
        MemoryLayout::from_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 16384}]}"#)
            .expect("layout")
    );
    assert_eq!(header.layout.address_height(), 11);
    assert_eq!(header.omitted_levels, None);
    assert_eq!(
        (
            summary.pages,
            summary.num_cells,
            summary.batches,
            summary.touched_blocks
        ),
        (3, 16384, 3, 6)
    );
    assert_eq!(
        (
            summary.loads,
            summary.stores,
            summary.modifies,
            summary.instructions,
            summary.other_lines
        ),
        (2, 2, 1, 2, 1)
    );

    // One write per page: original page number in bytes 0..8, then (o/8 + o%8) mod 256.
    let mut image = vec![0u8; 16384];
    for (i, original) in [0xau64, 0x5, 0x6].into_iter().enumerate() {
        let TraceEvent::Write { slot, offset, data } = &events[i] else {
            panic!("event {i} is {:?}", events[i]);
        };
        assert_eq!((*slot, *offset, data.len()), (0, i as u64 * 4096, 4096));
        assert_eq!(&data[..8], &original.to_le_bytes());
        assert_eq!(&data[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&data[16..24], &[2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(data[4095], (4095 / 8 + 7) as u8);
        image[i * 4096..(i + 1) * 4096].copy_from_slice(data);
    }
    assert!(matches!(
        events[3],
        TraceEvent::Build {
            expect_root: Some(_)
        }
    ));
    assert_eq!(events.len(), 7);
    let update = |i: usize| match &events[i] {
        TraceEvent::Update {
            blocks,
            expect_root,
        } => {
            assert!(expect_root.is_some(), "update {i} has expect_root");
            blocks.clone()
        }
        other => panic!("event {i} is {other:?}"),
    };
    let block = |b: u64, cells: [u32; 8]| TouchedBlock {
        slot: 0,
        block: b,
        cells,
    };

    // Batch 1 (accesses 0, 1): the load keeps packed block 1; the straddling store writes
    // the last block of packed page 1 (block 1023) and the first of packed page 2 (1024).
    let mut s1 = [0u8; 16];
    for (j, b) in s1.iter_mut().enumerate() {
        *b = store_byte(1, j as u64);
    }
    assert_eq!(
        update(4),
        vec![
            block(1, [1, 2, 3, 4, 5, 6, 7, 8]),
            block(1023, cells(&s1[..8])),
            block(1024, cells(&s1[8..])),
        ]
    );
    // Batch 2 (accesses 2, 3): the modify rewrites bytes 0..4 of block 2; the load lists
    // block 1 again, unchanged.
    let m2: Vec<u8> = (0..4).map(|j| store_byte(2, j)).collect();
    assert_eq!(
        update(5),
        vec![
            block(
                2,
                [
                    m2[0].into(),
                    m2[1].into(),
                    m2[2].into(),
                    m2[3].into(),
                    6,
                    7,
                    8,
                    9
                ]
            ),
            block(1, [1, 2, 3, 4, 5, 6, 7, 8]),
        ]
    );
    // Batch 3 (access 4, a short last batch): bytes 4..6 of block 1024 change.
    let mut b1024 = cells(&s1[8..]);
    b1024[4] = store_byte(4, 0).into();
    b1024[5] = store_byte(4, 1).into();
    assert_eq!(update(6), vec![block(1024, b1024)]);

    // Every expect_root matches a CPU tree replaying the trace.
    let roots = replay_cpu(&header, &events, 3);
    assert_eq!(roots.len(), 4);
    assert_eq!(summary.final_root, Some(roots[3]));
    // The build root is that of the packed image.
    let mut img = MemoryImage::zeroed(&header.layout).expect("image");
    img.write(0, 0, &image).expect("write");
    let t = tree::build(Backend::Reference, header.layout.clone(), Arc::new(img), 0).expect("tree");
    assert_eq!(events[3].expect_root(), Some(t.root()));
}

#[test]
fn lackey_options_limit_and_disable() {
    // One access per batch, stopped after one batch: only access 0's page is packed.
    let (summary, header, events) = convert_snippet(&LackeyOptions {
        accesses_per_batch: 1,
        max_batches: Some(1),
        expect_root: false,
        ..LackeyOptions::default()
    });
    assert_eq!(
        (summary.pages, summary.num_cells, summary.batches),
        (1, 4096, 1)
    );
    assert_eq!(summary.final_root, None);
    assert_eq!(header.layout.address_spaces()[0].num_cells, 4096);
    assert_eq!(events.len(), 3);
    assert_eq!(events[1], TraceEvent::Build { expect_root: None });
    assert_eq!(
        events[2],
        TraceEvent::Update {
            blocks: vec![TouchedBlock {
                slot: 0,
                block: 1,
                cells: [1, 2, 3, 4, 5, 6, 7, 8]
            }],
            expect_root: None
        }
    );
    // All five accesses in one batch: blocks listed once each, in first-touch order.
    let (summary, _, events) = convert_snippet(&LackeyOptions {
        accesses_per_batch: 100,
        ..LackeyOptions::default()
    });
    assert_eq!(summary.batches, 1);
    let TraceEvent::Update { blocks, .. } = &events[4] else {
        panic!("{:?}", events[4]);
    };
    let order: Vec<u64> = blocks.iter().map(|b| b.block).collect();
    assert_eq!(order, vec![1, 1023, 1024, 2]);
}

#[test]
fn lackey_rejects_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("bad.lackey");
    let out = dir.path().join("bad.trace");
    let convert = |text: &str, n: u64| {
        std::fs::write(&log, text).expect("write");
        let options = LackeyOptions {
            accesses_per_batch: n,
            ..LackeyOptions::default()
        };
        match lackey::convert(&log, &out, &options) {
            Err(Error::InvalidArgument { field, message }) => format!("{field}: {message}"),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    };
    let e = convert("I  0400,3\n L 00001000,x\n", 1);
    assert!(e.starts_with("line 2: size \"x\""), "{e}");
    let e = convert("I  0400,3\n==1== done\n", 1);
    assert!(e.contains("no data access"), "{e}");
    let e = convert(" L 1000,4\n", 0);
    assert!(e.starts_with("accesses_per_batch"), "{e}");
}

#[test]
fn record_command_writes_the_trace_and_prints_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("prog.lackey");
    std::fs::write(&log, LACKEY_LOG).expect("write log");
    let out = dir.path().join("prog.trace");
    let output = assert_cmd::Command::cargo_bin("memcommit")
        .expect("binary")
        .args([
            "record",
            "--accesses-per-batch",
            "2",
            "--max-batches",
            "2",
            "-o",
        ])
        .arg(&out)
        .arg(&log)
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    assert_eq!(summary["pages"], 3);
    assert_eq!(summary["batches"], 2);
    assert_eq!(summary["touched_blocks"], 5);
    assert_eq!(summary["layout"], "packed");
    assert_eq!(summary["slot"], 0);
    let bytes = std::fs::metadata(&out).expect("trace").len();
    assert_eq!(summary["output_bytes"], bytes);
    let (_, events) = read_trace(&out);
    let steps: Vec<Digest> = events.iter().filter_map(TraceEvent::expect_root).collect();
    assert_eq!(steps.len(), 3);
    assert_eq!(
        summary["final_root"],
        serde_json::to_value(steps[2]).expect("json")
    );

    // A zero batch size is refused by the argument parser.
    let output = assert_cmd::Command::cargo_bin("memcommit")
        .expect("binary")
        .args(["record", "--accesses-per-batch", "0", "-o"])
        .arg(&out)
        .arg(&log)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--accesses-per-batch"));
}

// ---- the bundled real trace ---------------------------------------------------------------

/// Replays `events` on a CPU tree with `omitted_levels = k`, checking each expect_root, and
/// returns every step's root (step 0 = the build).
fn replay_cpu(header: &TraceHeader, events: &[TraceEvent], k: u32) -> Vec<Digest> {
    let mut image = MemoryImage::zeroed(&header.layout).expect("image");
    let mut tree: Option<Box<dyn MemoryTree>> = None;
    let mut roots = Vec::new();
    for e in events {
        match e {
            TraceEvent::Write { slot, offset, data } => {
                image.write(*slot, *offset, data).expect("write")
            }
            TraceEvent::Build { .. } => {
                let t = tree::build(
                    Backend::Cpu,
                    header.layout.clone(),
                    Arc::new(image.clone()),
                    k,
                )
                .expect("build");
                roots.push(t.root());
                tree = Some(t);
            }
            TraceEvent::Update { blocks, .. } => {
                let t = tree.as_mut().expect("built");
                roots.push(t.update(blocks).expect("update"));
            }
        }
        if let Some(expected) = e.expect_root() {
            assert_eq!(
                Some(&expected),
                roots.last(),
                "k = {k}: step {} root",
                roots.len() - 1
            );
        }
    }
    roots
}

fn bundled_trace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sqlite3.trace.zst")
}

#[test]
fn bundled_real_trace_replays_on_the_cpu_tree() {
    let path = bundled_trace();
    assert!(std::fs::metadata(&path).expect("trace").len() <= 5 << 20);
    let reader = TraceReader::open(&path).expect("open");
    let header = reader.header().clone();
    assert_eq!(header.layout.address_spaces().len(), 1);
    // Stream it with two CPU trees at once (k = 0 and 3): every step must carry
    // expect_root, and both trees must reproduce each.
    let mut image = MemoryImage::zeroed(&header.layout).expect("image");
    let mut trees: Vec<Box<dyn MemoryTree>> = Vec::new();
    let (mut steps, mut writes, mut blocks_total) = (0u64, 0u64, 0u64);
    for event in reader {
        let event = event.expect("event");
        match &event {
            TraceEvent::Write { slot, offset, data } => {
                image.write(*slot, *offset, data).expect("write");
                writes += 1;
            }
            TraceEvent::Build { .. } => {
                let image = Arc::new(image.clone());
                trees = [0, 3]
                    .into_iter()
                    .map(|k| {
                        tree::build(Backend::Cpu, header.layout.clone(), image.clone(), k)
                            .expect("build")
                    })
                    .collect();
            }
            TraceEvent::Update { blocks, .. } => {
                blocks_total += blocks.len() as u64;
                for t in &mut trees {
                    t.update(blocks).expect("update");
                }
            }
        }
        if matches!(event, TraceEvent::Write { .. }) {
            continue;
        }
        let expected = event
            .expect_root()
            .unwrap_or_else(|| panic!("step {steps} has no expect_root"));
        for t in &trees {
            assert_eq!(
                t.root(),
                expected,
                "step {steps}, k = {}",
                t.omitted_levels()
            );
        }
        steps += 1;
    }
    assert_eq!(trees.len(), 2, "the trace has a build");
    assert!(writes > 0, "the initial image is written");
    assert!((20..=500).contains(&steps), "{steps} steps");
    assert!(blocks_total > 10_000, "{blocks_total} touched blocks");
}
