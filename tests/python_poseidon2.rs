//! The Python example's hash (`examples/python/poseidon2.py`, standard library only)
//! against the shared vectors, and its `verify_opening` against openings made by the Rust
//! reference tree: `python3 poseidon2.py --check VECTORS --openings FILE` must pass every
//! check and reject every tampered opening. Without `python3` the test prints
//! `skipped: no python3 (<reason>)` and passes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{four_spaces, image_with, vectors};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{verify_opening, MemoryTree, TouchedBlock};
use serde_json::json;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/poseidon2_babybear16.json"
);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/poseidon2.py");

/// `python3 --version`, or why there is no usable `python3`.
fn python3() -> Result<String, String> {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Ok(o) => Err(format!(
            "`python3 --version` exited with {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `python3`: {e}")),
    }
}

/// Runs poseidon2.py with `args`; returns its stdout, panicking with its output on failure.
fn run_script(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run python3 examples/python/poseidon2.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "poseidon2.py {args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `four_spaces` image plus blocks spread over every slot, so that the openings carry
/// non-zero siblings at many levels, both as left and as right children.
fn openings_case() -> Vec<TouchedBlock> {
    let (_, mut blocks, _) = four_spaces();
    let more = [
        (0, 0),
        (0, 2),
        (1, 0),
        (1, 5),
        (1, 64),
        (1, 700),
        (1, 1022),
        (2, 1),
        (3, 6),
    ];
    for (i, &(slot, block)) in more.iter().enumerate() {
        // Non-zero values that fit every cell type (u8 included), distinct per block.
        let cells = core::array::from_fn(|j| ((31 * i + 7 * j + 1) % 256) as u32);
        blocks.push(TouchedBlock { slot, block, cells });
    }
    blocks
}

#[test]
fn python_poseidon2_matches_vectors_and_verifies_rust_openings() {
    let version = match python3() {
        Ok(v) => v,
        Err(why) => {
            println!("skipped: no python3 ({why})");
            return;
        }
    };

    // Vectors alone: permutation, Montgomery form, leaf hash, zero hashes, two roots.
    let stdout = run_script(&["--check", VECTORS]);
    assert!(
        stdout.contains("poseidon2.py: ok: 17 hash and root checks, 0 openings verified"),
        "{version}: unexpected summary:\n{stdout}"
    );

    // Openings of the Rust reference tree, written as JSON for Python to verify.
    let layout_json = vectors()["four_spaces"]["layout"].clone();
    let layout = common::layout(&layout_json);
    let blocks = openings_case();
    let tree = ReferenceTree::build(layout.clone(), image_with(&layout, &blocks), 3);
    let root = tree.root();
    let mut positions: Vec<(u32, u64)> = blocks.iter().map(|b| (b.slot, b.block)).collect();
    // Zero blocks too: the last block of a slot, and blocks next to written ones.
    positions.extend([(0, 15), (1, 1), (1, 701), (2, 3), (3, 0)]);
    let openings = tree.openings(&positions).expect("openings");
    for o in &openings {
        verify_opening(&root, &layout, o).expect("the Rust verifier accepts its own opening");
    }
    let doc = json!({
        "layout": layout_json,
        "root": root.to_canonical(),
        "blocks": blocks
            .iter()
            .map(|b| json!({"slot": b.slot, "block": b.block, "cells": b.cells}))
            .collect::<Vec<_>>(),
        "openings": openings
            .iter()
            .map(|o| json!({
                "slot": o.slot,
                "block": o.block,
                "cells": o.cells,
                "siblings": o.siblings.iter().flat_map(|d| d.to_canonical()).collect::<Vec<_>>(),
            }))
            .collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("openings.json");
    std::fs::write(&path, doc.to_string()).expect("write openings.json");

    let stdout = run_script(&["--check", VECTORS, "--openings", path_str(&path)]);
    // 18 = the 17 vector checks plus the root of `blocks`. Each opening has 13 siblings
    // (address_height 10 + address_space_height 3), so 16 tampered copies always fail: one
    // per sibling, a changed cell, a sibling missing, another root. A 17th, the position
    // block ^ 1, fails where that block holds other cells than the opened one.
    let cells_at = |slot: u32, block: u64| {
        blocks
            .iter()
            .find(|b| (b.slot, b.block) == (slot, block))
            .map_or([0; 8], |b| b.cells)
    };
    let n = openings.len();
    let moved = positions
        .iter()
        .filter(|&&(s, b)| cells_at(s, b ^ 1) != cells_at(s, b))
        .count();
    assert_eq!((n, moved), (18, 15), "positions changed: update the counts");
    let want = format!(
        "poseidon2.py: ok: 18 hash and root checks, {n} openings verified, {} tampered \
         openings rejected",
        16 * n + moved
    );
    assert!(
        stdout.contains(&want),
        "{version}: want {want:?}, got:\n{stdout}"
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}
