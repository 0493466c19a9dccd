//! `memcommit root` against the shared vectors, through the real binary.

mod common;

use std::process::{Command, Output};

use common::{four_spaces, vectors};

/// Writes `layout_json` and one file per `(slot, bytes)` into a temporary directory, then
/// runs `memcommit root --layout … --image SLOT=FILE … EXTRA…`.
fn run_root(layout_json: &str, images: &[(u32, Vec<u8>)], extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_path = dir.path().join("layout.json");
    std::fs::write(&layout_path, layout_json).expect("write layout");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memcommit"));
    cmd.arg("root").arg("--layout").arg(&layout_path);
    for (i, (slot, bytes)) in images.iter().enumerate() {
        let file = dir.path().join(format!("image{i}.bin"));
        std::fs::write(&file, bytes).expect("write image");
        cmd.arg("--image").arg(format!("{slot}={}", file.display()));
    }
    cmd.args(extra).output().expect("run memcommit")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn root_of_the_four_spaces_vector_for_every_backend_and_k() {
    let (layout, leaves, root) = four_spaces();
    // One image per slot, each only as long as its last written block (short files are
    // zero-padded).
    let images: Vec<(u32, Vec<u8>)> = layout
        .address_spaces()
        .iter()
        .enumerate()
        .map(|(slot, space)| {
            let w = space.cell.bytes();
            let mut bytes = Vec::new();
            for l in leaves.iter().filter(|l| l.slot as usize == slot) {
                let end = (l.block as usize + 1) * 8 * w;
                bytes.resize(bytes.len().max(end), 0);
                for (j, c) in l.cells.iter().enumerate() {
                    let at = (l.block as usize * 8 + j) * w;
                    bytes[at..at + w].copy_from_slice(&c.to_le_bytes()[..w]);
                }
            }
            (slot as u32, bytes)
        })
        .collect();
    let layout_json = serde_json::to_string(&layout).expect("json");
    let expected = format!("{}\n", serde_json::json!({ "root": root }));
    for (backend, k) in [
        ("cpu", "0"),
        ("cpu", "3"),
        ("auto", "5"),
        ("reference", "3"),
    ] {
        let out = run_root(
            &layout_json,
            &images,
            &["--backend", backend, "--omitted-levels", k],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{backend} k={k}"
        );
    }
}

#[test]
fn root_of_the_single_u8_vector() {
    let v = &vectors()["single_u8_space_1024_leaves"];
    let image = (0..8192u32).map(|k| (k % 256) as u8).collect();
    let out = run_root(&v["layout"].to_string(), &[(0, image)], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed["root"], v["root"]);
}

#[test]
fn root_rejects_long_files_bad_slots_and_bad_cells() {
    let layout = vectors()["single_u8_space_1024_leaves"]["layout"].to_string();
    let out = run_root(&layout, &[(0, vec![1u8; 8193])], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("8193 bytes is longer than slot 0 (8192 bytes)"),
        "{}",
        stderr(&out)
    );
    let out = run_root(&layout, &[(4, vec![1u8; 8])], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid --image SLOT: slot 4 does not exist"),
        "{}",
        stderr(&out)
    );
    let field = r#"{"address_spaces": [{"cell": "field", "num_cells": 8}]}"#;
    let out = run_root(field, &[(0, 2013265921u32.to_le_bytes().to_vec())], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("2013265921 is not a canonical BabyBear element"),
        "{}",
        stderr(&out)
    );
    let out = run_root(field, &[], &["--backend", "cuda"]);
    match memcommit::tree::cuda::probe_device() {
        Err(why) => {
            assert!(!out.status.success());
            assert!(stderr(&out).contains("backend cuda"), "{}", stderr(&out));
            assert!(stderr(&out).contains(&why), "{}", stderr(&out));
        }
        // With a usable GPU the cuda backend gives the CPU's root.
        Ok(_) => {
            assert!(out.status.success(), "{}", stderr(&out));
            let cpu = run_root(field, &[], &["--backend", "cpu"]);
            assert_eq!(out.stdout, cpu.stdout);
        }
    }
}

#[test]
fn root_with_auto_omitted_levels_logs_the_chosen_k_and_keeps_the_root() {
    // 1024 u8 leaves: raw 8192 bytes; nodes (2^(11−k) − 1 + 1)·32 bytes (slot + top root).
    let v = &vectors()["single_u8_space_1024_leaves"];
    let image: Vec<u8> = (0..8192u32).map(|k| (k % 256) as u8).collect();
    let layout = v["layout"].to_string();
    for (budget, k) in [("73728", 0), ("73727", 1), ("40960", 1), ("8320", 9)] {
        let out = run_root(
            &layout,
            &[(0, image.clone())],
            &["--omitted-levels", "auto", "--memory-budget", budget],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(
            printed,
            serde_json::json!({ "root": v["root"] }),
            "budget {budget}"
        );
        assert!(
            stderr(&out).contains(&format!("omitted_levels auto: chose k = {k} ")),
            "{}",
            stderr(&out)
        );
    }
    // The smallest need is at k = 9 (3 slot nodes + the top root + 8192 raw bytes).
    let out = run_root(
        &layout,
        &[(0, image)],
        &["--omitted-levels", "auto", "--memory-budget", "8319"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "resource exhausted: omitted_levels auto: nothing fits the memory budget of 8319 \
             bytes; the smallest need is 8320 bytes"
        ),
        "{}",
        stderr(&out)
    );
    let out = run_root(&layout, &[], &["--omitted-levels", "automatic"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not \"auto\" or an integer"),
        "{}",
        stderr(&out)
    );
}

/// An image file of OpenVM's 2^29-byte RAM slot, written sparse (holes) and dense (zeros on
/// disk), holding 3 scattered non-zero pages: both give the reference root of those pages,
/// and only the 3 pages become present (all-zero pages are skipped).
#[test]
fn root_skips_zero_pages_of_sparse_and_dense_ram_images() {
    use std::io::{Seek, SeekFrom, Write};
    use std::sync::Arc;

    use memcommit::image::MemoryImage;
    use memcommit::trace::lackey::openvm_layout;
    use memcommit::tree::{reference::ReferenceTree, MemoryTree};

    let layout = openvm_layout().expect("layout");
    let pages: [(u64, u8); 3] = [(7, 1), (40_000, 2), ((1 << 17) - 1, 3)];
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    let dir = tempfile::tempdir().expect("tempdir");
    let (sparse, dense) = (dir.path().join("ram.sparse"), dir.path().join("ram.dense"));
    let mut f = std::fs::File::create(&sparse).expect("create");
    f.set_len(1 << 29).expect("sparse length");
    let mut d = std::fs::File::create(&dense).expect("create");
    let mut at = 0u64;
    for (page, value) in pages {
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8 * value).collect();
        image.write(1, page * 4096, &data).expect("write");
        f.seek(SeekFrom::Start(page * 4096)).expect("seek");
        f.write_all(&data).expect("write");
        d.write_all(&vec![0; (page * 4096 - at) as usize])
            .expect("zeros");
        d.write_all(&data).expect("write");
        at = (page + 1) * 4096;
    }
    drop((f, d));
    let expected = ReferenceTree::build(layout.clone(), Arc::new(image), 0).root();
    let layout_path = dir.path().join("openvm.json");
    std::fs::write(&layout_path, serde_json::to_string(&layout).expect("json")).expect("write");
    for file in [&sparse, &dense] {
        let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
            .arg("root")
            .arg("--layout")
            .arg(&layout_path)
            .arg("--image")
            .arg(format!("1={}", file.display()))
            .args(["--backend", "cpu"])
            .output()
            .expect("run memcommit");
        assert!(out.status.success(), "{}", stderr(&out));
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(printed, serde_json::json!({ "root": expected }), "{file:?}");
        assert!(
            stderr(&out).contains(&format!(
                "image: 3 present pages, 12288 raw bytes (all-zero pages skipped; {} bytes \
                 declared)",
                layout.raw_bytes()
            )),
            "{}",
            stderr(&out)
        );
    }
}
