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

    let svg = std::fs::read_to_string(dir.path().join("bench.svg")).expect("svg");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("cpu u8 2^10 B") && svg.contains("k=3"));
}
