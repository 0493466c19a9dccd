//! `memcommit bench` through the real binary, on a sweep small enough for a test.

use std::process::Command;

#[test]
fn bench_writes_table_json_and_svg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args([
            "bench",
            "--min-bytes",
            "1024",
            "--max-bytes",
            "2048",
            "--cells",
            "u8,field",
            "--omitted-levels",
            "0,3",
            "--touched",
            "0.01,0.5",
            "--repeats",
            "2",
            "--backends",
            "cpu,reference",
            "--sparse",
            "0.0001",
            "--sparse-omitted-levels",
            "3",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run memcommit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("p3-merkle-tree 0.8.0 MerkleTree::new"),
        "{stdout}"
    );
    assert!(
        stdout.contains("sparse: OpenVM's default layout"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).expect("json"))
            .expect("parse");
    // 2 sizes × 2 cells baselines, each with p3's root equal to ours.
    let baselines = report["baselines"].as_array().expect("baselines");
    assert_eq!(baselines.len(), 4);
    assert!(baselines.iter().all(|b| b["root_matches"] == true));
    // 2 sizes × 2 cells × 2 backends × 2 k × 2 fractions.
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 32);
    // 1024 bytes of u8 = 128 blocks = 2^7: a build is 2^8 − 1 permutations, the 0.01
    // batch is one block, the 0.5 batch 64 blocks.
    let row = &rows[0];
    assert_eq!(
        (&row["backend"], &row["cell"], &row["bytes"], &row["k"]),
        (&"cpu".into(), &"u8".into(), &1024.into(), &0.into())
    );
    assert_eq!(row["build_perms"], 255);
    assert_eq!(row["touched_blocks"], 1);
    assert_eq!(row["update_perms"], 8); // 1 leaf + 7 compressions
    assert_eq!(rows[1]["touched_blocks"], 64);
    // k = 0 stores 255 slot digests and the 1-digest top tree; raw 1024 bytes.
    assert_eq!(row["node_bytes"], 256 * 32);
    assert_eq!(row["raw_bytes"], 1024);
    assert!(row["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0));
    assert_eq!(row["peak_device_bytes"], 0);

    // The sparse case on cpu only (the reference is left out): 0.01 % of the 131072 RAM
    // pages is 13 pages, batches of 1 % of their 6656 blocks.
    let sparse = report["sparse"].as_array().expect("sparse");
    assert_eq!(sparse.len(), 1);
    let s = &sparse[0];
    assert_eq!(
        (&s["backend"], &s["k"], &s["pages"], &s["batch_blocks"]),
        (&"cpu".into(), &3.into(), &13.into(), &66.into())
    );
    assert_eq!(s["roots_checked"], true);
    // Packed: 13 of the 16 pages of a 2^13-block slot, 127 digests each, its dense levels
    // 10..=13 (15) and the top root; 13 × 4 KiB raw.
    let packed = s["packed"]["host_bytes"].as_u64().expect("bytes");
    assert_eq!(packed, (13 * 127 + 15 + 1) * 32 + 13 * 4096);
    // Sparse: the same pages, plus OpenVM's 2047 dense digests of slot 1 and its few sparse
    // upper nodes: within 100 KiB of the packed tree, nowhere near the declared 512 MiB.
    let sparse_bytes = s["sparse"]["host_bytes"].as_u64().expect("bytes");
    assert!(
        (packed..packed + (100 << 10)).contains(&sparse_bytes),
        "{sparse_bytes} vs {packed}"
    );

    let svg = std::fs::read_to_string(dir.path().join("bench.svg")).expect("svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("cpu u8 2^10 B") && svg.contains("k=3"));
}

/// A trace over one u8 slot of 2^4 blocks with two updates, its roots from the reference
/// tree; `wrong_step` plants a wrong `expect_root` on that update.
fn small_trace(path: &std::path::Path, wrong_step: Option<usize>) {
    use memcommit::layout::MemoryLayout;
    use memcommit::trace::{TraceEvent, TraceHeader, TraceWriter};
    use memcommit::tree::reference::ReferenceTree;
    use memcommit::tree::{MemoryTree, TouchedBlock};

    let layout =
        MemoryLayout::from_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 128}]}"#)
            .expect("layout");
    let data: Vec<u8> = (0..128u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut image = memcommit::image::MemoryImage::zeroed(&layout).expect("image");
    image.write(0, 0, &data).expect("write");
    let mut reference = ReferenceTree::build(layout.clone(), std::sync::Arc::new(image), 0);
    let block = |block, v| TouchedBlock {
        slot: 0,
        block,
        cells: [v; 8],
    };
    let batches = [vec![block(3, 200)], vec![block(0, 7), block(1, 9)]];
    let mut w = TraceWriter::create(
        path,
        &TraceHeader {
            layout,
            omitted_levels: None,
        },
    )
    .expect("create");
    w.write(&TraceEvent::Write {
        slot: 0,
        offset: 0,
        data,
    })
    .expect("write");
    w.write(&TraceEvent::Build {
        expect_root: Some(reference.root()),
    })
    .expect("build");
    for (i, blocks) in batches.into_iter().enumerate() {
        let mut root = reference.update(&blocks).expect("update");
        if wrong_step == Some(i + 1) {
            root = reference.openings(&[(0, 0)]).expect("opening")[0].siblings[0];
        }
        w.write(&TraceEvent::Update {
            blocks,
            expect_root: Some(root),
        })
        .expect("update line");
    }
    w.finish().expect("finish");
}

fn bench_trace(trace: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args([
            "bench",
            "--no-sweep",
            "--omitted-levels",
            "0,2",
            "--repeats",
            "3",
        ])
        .args(["--backends", "cpu", "--trace"])
        .arg(trace)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run memcommit")
}

/// `bench --trace`: both modes replay the trace and check its roots; the report carries
/// exact step, block and permutation counts.
#[test]
fn bench_replays_a_trace_in_process_and_through_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("small.trace.jsonl");
    small_trace(&trace, None);
    let out = bench_trace(&trace, dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("through gRPC"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).expect("json"))
            .expect("parse");
    assert!(report["rows"].as_array().expect("rows").is_empty());
    assert!(
        !dir.path().join("bench.svg").exists(),
        "--no-sweep draws no chart"
    );
    let traces = report["traces"].as_array().expect("traces");
    assert_eq!(traces.len(), 2);
    // 2^4 blocks: the build is 2^5 − 1 = 31 permutations at every k. At k = 0, block 3
    // costs 1 leaf + 4 compressions and blocks {0, 1} 2 leaves + 4 compressions: 31+5+6.
    // At k = 2 each batch touches one level-2 node (4 leaves + 3 compressions) and its 2
    // ancestors: 31 + 9 + 9.
    for (t, k, perms) in [(&traces[0], 0, 42), (&traces[1], 2, 49)] {
        assert_eq!(t["k"], k);
        assert_eq!(t["backend"], "cpu");
        assert_eq!(
            (&t["steps"], &t["blocks"], &t["checked"]),
            (&3.into(), &3.into(), &3.into())
        );
        assert_eq!(t["perms"], perms);
        assert_eq!(t["repeats"], 3);
        for mode in ["in_process", "grpc"] {
            let m = &t[mode];
            let p50 = m["step_p50_ms"].as_f64().expect("p50");
            assert!(
                p50 > 0.0 && p50 <= m["step_p99_ms"].as_f64().expect("p99"),
                "{m}"
            );
            assert!(m["perms_per_s"].as_f64().is_some_and(|p| p > 0.0), "{m}");
        }
    }
}

#[test]
fn bench_trace_fails_naming_the_step_whose_root_differs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("bad.trace.jsonl");
    small_trace(&trace, Some(2));
    let out = bench_trace(&trace, dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step 2") && stderr.contains("does not match expect_root"),
        "{stderr}"
    );
    let missing = bench_trace(&dir.path().join("nope.jsonl"), dir.path());
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.jsonl: no such file"));
}
