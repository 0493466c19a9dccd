//! `memcommit replay --omitted-levels auto` on the bundled real trace, through the binary.

use std::process::Command;

use memcommit::image::MemoryImage;
use memcommit::trace::{TraceEvent, TraceReader};
use memcommit::tree::{choose_omitted_levels, node_bytes};

const TRACE: &str = "tests/data/sqlite3.trace.zst";

/// Runs `memcommit replay TRACE ARGS…`, asserts it succeeded, and returns its stdout.
fn replay_ok(trace: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .arg("replay")
        .arg(trace)
        .args(args)
        .output()
        .expect("run memcommit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn replay_auto_reports_the_chosen_k_and_all_roots_match() {
    let trace = TraceReader::open(TRACE.as_ref()).expect("trace");
    let layout = trace.header().layout.clone();
    // The image at the build: the pages the trace's writes make present.
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    for event in trace {
        if let TraceEvent::Write { slot, offset, data } = event.expect("event") {
            image.write(slot, offset, &data).expect("write");
        }
    }
    let raw = image.total_bytes();
    assert_eq!(image.total_pages(), 311, "the bundled trace's pages");
    // A budget between the k = 2 and k = 3 needs picks 3.
    let budget = node_bytes(&layout, &image, 3) + raw + 1;
    assert!(budget < node_bytes(&layout, &image, 2) + raw);
    assert_eq!(
        choose_omitted_levels(&layout, &image, budget).expect("fits"),
        3
    );
    let budget = budget.to_string();
    let stdout = replay_ok(
        TRACE.as_ref(),
        &[
            "--backend",
            "cpu",
            "--omitted-levels",
            "auto",
            "--memory-budget",
            &budget,
        ],
    );
    assert!(stdout.contains("omitted_levels 3 (auto)"), "{stdout}");
    assert!(
        stdout.contains("92 expect_root checked, all matched"),
        "{stdout}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args([
            "replay",
            TRACE,
            "--omitted-levels",
            "auto",
            "--memory-budget",
            "1000",
        ])
        .output()
        .expect("run memcommit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "resource exhausted: omitted_levels auto: nothing fits the memory budget of 1000 bytes"
        ),
        "{stderr}"
    );
}

#[test]
fn replay_of_a_trace_whose_header_says_auto() {
    use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
    use memcommit::trace::{TraceEvent, TraceHeader, TraceWriter};
    use memcommit::tree::OmittedLevels;

    // One u8 slot of 2^10 blocks: raw 8192 bytes, nodes 2^(11−k)·32 bytes with the top root.
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell: CellType::U8,
            num_cells: 8 << 10,
        }],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("auto.trace");
    let mut w = TraceWriter::create(
        &path,
        &TraceHeader {
            layout,
            omitted_levels: Some(OmittedLevels::Auto),
        },
    )
    .expect("create");
    // Both pages written: k is chosen from the pages present at the build.
    w.write(&TraceEvent::Write {
        slot: 0,
        offset: 0,
        data: vec![5; 8192],
    })
    .expect("write");
    w.write(&TraceEvent::Build { expect_root: None })
        .expect("write");
    w.finish().expect("finish");
    // 40960 = 2^10·32 nodes (k = 1) + 8192 raw: k = 0 does not fit.
    let stdout = replay_ok(&path, &["--backend", "cpu", "--memory-budget", "40960"]);
    assert!(stdout.contains("omitted_levels 1 (auto)"), "{stdout}");
    // The flag overrides the header.
    let stdout = replay_ok(&path, &["--backend", "cpu", "--omitted-levels", "4"]);
    assert!(stdout.contains("omitted_levels 4)"), "{stdout}");
}
