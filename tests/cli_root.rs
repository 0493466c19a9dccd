//! `memcommit root` against the shared vectors, through the real binary.

mod common;

use std::process::Command;

use common::{four_spaces, vectors};

fn memcommit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memcommit"))
}

#[test]
fn root_of_the_four_spaces_vector_for_every_backend_and_k() {
    let (layout, leaves, root) = four_spaces();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_path = dir.path().join("layout.json");
    std::fs::write(&layout_path, serde_json::to_string(&layout).expect("json")).expect("write");
    // One image file per slot, each only as long as its last written block (short files
    // are zero-padded).
    let mut args = vec![
        "root".to_string(),
        "--layout".into(),
        layout_path.display().to_string(),
    ];
    for (slot, space) in layout.address_spaces().iter().enumerate() {
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
        let file = dir.path().join(format!("slot{slot}.bin"));
        std::fs::write(&file, &bytes).expect("write");
        args.push("--image".into());
        args.push(format!("{slot}={}", file.display()));
    }
    let expected = format!("{}\n", serde_json::json!({ "root": root }));
    for (backend, k) in [
        ("cpu", "0"),
        ("cpu", "3"),
        ("auto", "5"),
        ("reference", "3"),
    ] {
        let out = memcommit()
            .args(&args)
            .args(["--backend", backend, "--omitted-levels", k])
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            expected,
            "{backend} k={k}"
        );
    }
}

#[test]
fn root_rejects_long_files_and_bad_slots() {
    let v = &vectors()["single_u8_space_1024_leaves"];
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_path = dir.path().join("layout.json");
    std::fs::write(&layout_path, v["layout"].to_string()).expect("write");
    let long = dir.path().join("long.bin");
    std::fs::write(&long, vec![1u8; 8193]).expect("write");
    let out = memcommit()
        .args(["root", "--layout"])
        .arg(&layout_path)
        .arg("--image")
        .arg(format!("0={}", long.display()))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("8193 bytes is longer than slot 0 (8192 bytes)"),
        "{err}"
    );
    let out = memcommit()
        .args(["root", "--layout"])
        .arg(&layout_path)
        .arg("--image")
        .arg(format!("4={}", long.display()))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid --image SLOT: slot 4 does not exist"),
        "{err}"
    );
}

#[test]
fn root_of_the_single_u8_vector() {
    let v = &vectors()["single_u8_space_1024_leaves"];
    let dir = tempfile::tempdir().expect("tempdir");
    let layout_path = dir.path().join("layout.json");
    std::fs::write(&layout_path, v["layout"].to_string()).expect("write");
    let img = dir.path().join("img.bin");
    std::fs::write(
        &img,
        (0..8192u32).map(|k| (k % 256) as u8).collect::<Vec<_>>(),
    )
    .expect("w");
    let out = memcommit()
        .args(["root", "--layout"])
        .arg(&layout_path)
        .arg("--image")
        .arg(format!("0={}", img.display()))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed["root"], v["root"]);
}
