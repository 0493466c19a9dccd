//! `memcommit record --layout openvm` through the real binary: OpenVM's default layout in the
//! header, pages and blocks at their real addresses mod 2^29 in slot 1, roots that match the
//! reference tree over the written image, and the collision error.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::trace::{TraceEvent, TraceHeader, TraceReader};
use memcommit::tree::{self, Backend, TouchedBlock};

/// OpenVM's default layout (openvm-circuit 2.0.2 `MemoryConfig::default()`), written out.
const OPENVM_LAYOUT: &str = r#"{"address_spaces": [
    {"cell": "u8", "num_cells": 128}, {"cell": "u8", "num_cells": 536870912},
    {"cell": "u8", "num_cells": 32}, {"cell": "field", "num_cells": 16384},
    {"cell": "field", "num_cells": 0}, {"cell": "field", "num_cells": 0},
    {"cell": "field", "num_cells": 0}, {"cell": "field", "num_cells": 0}],
  "address_space_height": 3, "address_height": 26}"#;

/// 2^29: the bytes of slot 1, and the modulus of an address.
const SLOT_BYTES: u64 = 1 << 29;

/// Accesses (0-based): 0 loads a stack page (0x1ffefff000); 1 stores into page 0x4222;
/// 2 modifies a heap page above 2^29 (0x5e0d3000); 3 loads page 0x4222 again. Plus
/// instruction and noise lines.
const LOG: &str = "\
==123== Lackey, an example Valgrind tool
I  04016a0,3
 L 1ffefffd20,8
 S 04222cac,4
I  04016a3,2
 M 5e0d3010,8
 L 04222ca8,8
==123== Exit code: 0
";

fn record(dir: &Path, log: &str, extra: &[&str]) -> Output {
    let input = dir.join("prog.lackey");
    std::fs::write(&input, log).expect("write log");
    Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .arg("record")
        .arg(&input)
        .arg("-o")
        .arg(dir.join("prog.trace.zst"))
        .args(extra)
        .output()
        .expect("run memcommit")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_trace(path: &Path) -> (TraceHeader, Vec<TraceEvent>) {
    let reader = TraceReader::open(path).expect("open");
    let header = reader.header().clone();
    let events = reader.collect::<Result<Vec<_>, _>>().expect("events");
    (header, events)
}

#[test]
fn openvm_layout_keeps_real_addresses_mod_2_29() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = record(
        dir.path(),
        LOG,
        &["--layout", "openvm", "--accesses-per-batch", "2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(summary["layout"], "openvm");
    assert_eq!(summary["slot"], 1);
    assert_eq!(summary["num_cells"], SLOT_BYTES);
    assert_eq!(summary["pages"], 3);
    assert_eq!(summary["batches"], 2);
    assert_eq!(summary["touched_blocks"], 4);

    let (header, events) = read_trace(&dir.path().join("prog.trace.zst"));
    assert_eq!(
        header.layout,
        MemoryLayout::from_json(OPENVM_LAYOUT).expect("layout")
    );
    assert_eq!(header.omitted_levels, None);

    // One write per page, in first-touch order, at (page address) mod 2^29 of slot 1; bytes
    // 0..8 hold the original page number.
    let pages = [0x1f_fefff000u64, 0x0422_2000, 0x5e0d_3000];
    let mut image = MemoryImage::zeroed(&header.layout).expect("image");
    for (i, &page) in pages.iter().enumerate() {
        let TraceEvent::Write { slot, offset, data } = &events[i] else {
            panic!("event {i} is {:?}", events[i]);
        };
        assert_eq!((*slot, *offset, data.len()), (1, page % SLOT_BYTES, 4096));
        assert_eq!(&data[..8], &(page / 4096).to_le_bytes());
        image.write(*slot, *offset, data).expect("write");
    }
    assert_eq!(
        pages.map(|p| p % SLOT_BYTES),
        [0x1eff_f000, 0x0422_2000, 0x1e0d_3000]
    );

    // Blocks in slot 1 at (address mod 2^29) / 8.
    let TraceEvent::Build { expect_root } = events[3] else {
        panic!("event 3 is {:?}", events[3]);
    };
    let updates: Vec<(&Vec<TouchedBlock>, _)> = events[4..]
        .iter()
        .map(|e| match e {
            TraceEvent::Update {
                blocks,
                expect_root,
            } => (blocks, *expect_root),
            other => panic!("{other:?}"),
        })
        .collect();
    let positions = |blocks: &Vec<TouchedBlock>| -> Vec<(u32, u64)> {
        blocks.iter().map(|b| (b.slot, b.block)).collect()
    };
    assert_eq!(updates.len(), 2);
    assert_eq!(
        positions(updates[0].0),
        vec![(1, 0x1eff_fd20 / 8), (1, 0x0422_2ca8 / 8)]
    );
    assert_eq!(
        positions(updates[1].0),
        vec![(1, 0x1e0d_3010 / 8), (1, 0x0422_2ca8 / 8)]
    );
    // The load of page 0x1ffefff keeps the initial pattern: (o / 8 + o mod 8) mod 256.
    let o = 0xd20u32;
    assert_eq!(
        updates[0].0[0].cells,
        core::array::from_fn(|c| (o / 8 + c as u32) % 256)
    );
    // Access 1 stored bytes 4..8 of block 0x4222ca8; bytes 0..4 keep the pattern.
    assert_eq!(
        &updates[0].0[1].cells[..4],
        &core::array::from_fn::<u32, 4, _>(|c| (0xca8 / 8 + c as u32) % 256)
    );

    // Every root is the reference tree's over the written image and the batches.
    let mut t = tree::build(Backend::Reference, header.layout, Arc::new(image), 0).expect("tree");
    assert_eq!(expect_root, Some(t.root()), "build root");
    for (i, (blocks, root)) in updates.iter().enumerate() {
        assert_eq!(*root, Some(t.update(blocks).expect("update")), "update {i}");
    }
    assert_eq!(
        summary["final_root"],
        serde_json::to_value(t.root()).expect("json")
    );
}

#[test]
fn openvm_layout_refuses_pages_2_29_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = "I  04016a0,3\n L 04222cac,4\n==1== noise\n S 24222cb0,4\n";
    let out = record(dir.path(), log, &["--layout", "openvm", "--no-expect-root"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "invalid line 4: the pages at 0x4222000 and 0x24222000 both map to byte offset \
             0x4222000 of slot 1"
        ),
        "{err}"
    );
    assert!(
        !dir.path().join("prog.trace.zst").exists(),
        "nothing is written"
    );
    // The same log packs without complaint.
    let out = record(dir.path(), log, &["--no-expect-root"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(
        (&summary["layout"], &summary["slot"], &summary["num_cells"]),
        (&"packed".into(), &0.into(), &8192.into())
    );
}

#[test]
fn layout_flag_lists_its_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = record(dir.path(), LOG, &["--layout", "risc0"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("invalid value 'risc0' for '--layout <MODE>'")
            && err.contains("[possible values: packed, openvm]"),
        "{err}"
    );
}
