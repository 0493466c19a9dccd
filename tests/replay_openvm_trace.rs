//! The second bundled trace, `tests/data/sqlite3-openvm.trace.zst` (the sqlite3 workload in
//! OpenVM's default layout: `LAYOUT=openvm scripts/record-trace.sh`), replayed through the
//! gRPC server on the CPU backend at k = 3, every root checked against the trace's
//! expect_root (computed by the reference backend when it was recorded).

use std::path::{Path, PathBuf};

use memcommit::replay::{replay, Progress, ReplayOptions};
mod common;

use memcommit::service::{client::Client, ServiceConfig};
use memcommit::trace::lackey::{openvm_layout, OPENVM_MEMORY_BYTES, OPENVM_MEMORY_SLOT};
use memcommit::trace::{TraceEvent, TraceReader};
use memcommit::tree::{Backend, OmittedLevels};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sqlite3-openvm.trace.zst")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openvm_trace_matches_every_root_over_grpc_at_k3() {
    let path = bundled();
    assert!(std::fs::metadata(&path).expect("trace").len() <= 5 << 20);

    // The file: OpenVM's layout, whole pages written into slot 1 only, every step rooted.
    let reader = TraceReader::open(&path).expect("open");
    assert_eq!(reader.header().layout, openvm_layout().expect("layout"));
    let (mut pages, mut steps) = (0u64, 0u64);
    for event in reader {
        match event.expect("event") {
            TraceEvent::Write { slot, offset, data } => {
                assert_eq!(slot, OPENVM_MEMORY_SLOT);
                assert_eq!((offset % 4096, data.len()), (0, 4096));
                assert!(offset < OPENVM_MEMORY_BYTES);
                pages += 1;
            }
            TraceEvent::Update { blocks, .. } => {
                assert!(blocks.iter().all(|b| b.slot == OPENVM_MEMORY_SLOT));
                steps += 1;
            }
            TraceEvent::Build { .. } => steps += 1,
        }
    }
    assert!((100..=2000).contains(&pages), "{pages} pages");
    assert!(steps >= 50, "{steps} steps");

    let server = common::server::spawn(ServiceConfig::default()).await;
    let mut client = Client::connect(&server.url()).await.expect("connect");
    let mut seen = 0u64;
    let summary = replay(
        &mut client,
        TraceReader::open(&path).expect("open"),
        ReplayOptions {
            backend: Backend::Cpu,
            omitted_levels: Some(OmittedLevels::Fixed(3)),
            memory_budget: None,
            ..ReplayOptions::default()
        },
        |p| {
            let Progress::Step(step) = p else { return };
            assert_eq!(step.step, seen);
            assert_eq!(Some(step.root), step.expect_root, "step {}", step.step);
            seen += 1;
        },
    )
    .await
    .expect("replay");
    assert_eq!(summary.omitted_levels, 3);
    assert_eq!(summary.steps, steps);
    assert_eq!(seen, steps);
    assert_eq!(summary.checked, steps, "every step carries expect_root");
    assert_eq!(summary.bytes_written, pages * 4096);
    assert!(
        summary.blocks > 100_000,
        "{} touched blocks",
        summary.blocks
    );
    // Only the trace's pages were ever present.
    assert_eq!(summary.present_pages, pages);
    assert!(client.list_trees().await.expect("list").is_empty());
    drop(client);
    server.stop().await;
}
