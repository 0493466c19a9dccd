//! The bundled real trace (sqlite3 under valgrind lackey, `scripts/record-trace.sh`)
//! replayed through the gRPC server, every root checked against the trace's expect_root
//! (computed by the reference backend when it was recorded).

use std::path::{Path, PathBuf};
use std::process::Command;

use memcommit::replay::{replay, Progress, ReplayOptions};
use memcommit::service::{self, client::Client, ServiceConfig};
use memcommit::trace::{TraceEvent, TraceHeader, TraceReader, TraceWriter};
use memcommit::tree::{Backend, OmittedLevels};
use memcommit::Error;

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sqlite3.trace.zst")
}

/// Steps in the bundled trace: the build plus one per update line.
fn bundled_steps() -> u64 {
    TraceReader::open(&bundled())
        .expect("open")
        .map(|e| e.expect("event"))
        .filter(|e| !matches!(e, TraceEvent::Write { .. }))
        .count() as u64
}

async fn serve_on_loopback() -> (Client, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(service::serve(
        ServiceConfig::default(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    (Client::connect(&url).await.expect("connect"), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_trace_matches_every_root_over_grpc_at_k0_and_k3() {
    let steps = bundled_steps();
    assert!(steps >= 50, "bundled trace has {steps} steps");
    let (mut client, stop) = serve_on_loopback().await;
    for k in [0, 3] {
        let mut seen = 0u64;
        let summary = replay(
            &mut client,
            TraceReader::open(&bundled()).expect("open"),
            ReplayOptions {
                backend: Backend::Cpu,
                omitted_levels: Some(OmittedLevels::Fixed(k)),
                memory_budget: None,
                ..ReplayOptions::default()
            },
            |p| {
                let Progress::Step(step) = p else { return };
                assert_eq!(step.step, seen);
                assert_eq!(
                    Some(step.root),
                    step.expect_root,
                    "k={k} step {}",
                    step.step
                );
                seen += 1;
            },
        )
        .await
        .expect("replay");
        assert_eq!(summary.omitted_levels, k);
        assert_eq!(summary.steps, steps);
        assert_eq!(summary.checked, steps, "every step carries expect_root");
        assert!(
            summary.blocks > 100_000,
            "{} touched blocks",
            summary.blocks
        );
    }
    // The replays dropped their trees.
    assert!(client.list_trees().await.expect("list").is_empty());
    let _ = stop.send(());
}

#[test]
fn replay_cli_prints_one_json_line_per_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .arg("replay")
        .arg(bundled())
        .args(["--json", "--backend", "cpu", "--omitted-levels", "3"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len() as u64, bundled_steps());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["step"], i as u64);
        assert_eq!(l["root"], l["expect_root"], "step {i}");
        assert_eq!(l["root"].as_array().expect("root").len(), 8);
    }
}

/// A copy of the bundled trace's header and first steps with one expect_root altered.
fn tampered_trace(dir: &Path) -> PathBuf {
    let mut reader = TraceReader::open(&bundled()).expect("open");
    let header: TraceHeader = reader.header().clone();
    let path = dir.join("tampered.trace");
    let mut writer = TraceWriter::create(&path, &header).expect("create");
    let mut updates = 0;
    for event in reader.by_ref() {
        let mut event = event.expect("event");
        if let TraceEvent::Update { expect_root, .. } = &mut event {
            updates += 1;
            if updates == 2 {
                let mut wrong = expect_root.expect("bundled steps carry roots");
                wrong.0.swap(0, 1);
                *expect_root = Some(wrong);
            }
        }
        writer.write(&event).expect("write");
        if updates == 3 {
            break;
        }
    }
    writer.finish().expect("finish");
    path
}

#[test]
fn replay_cli_fails_on_a_wrong_expect_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = tampered_trace(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .arg("replay")
        .arg(&path)
        .arg("--json")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step 2: root"), "{stderr}");
    assert!(stderr.contains("does not match expect_root"), "{stderr}");
    // Steps 0..=2 were printed before it stopped.
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reports_server_errors_with_their_code() {
    let (mut client, stop) = serve_on_loopback().await;
    let err = replay(
        &mut client,
        TraceReader::open(&bundled()).expect("open"),
        ReplayOptions {
            backend: Backend::Cuda,
            ..ReplayOptions::default()
        },
        |_| {},
    )
    .await
    .expect_err("no CUDA backend in this build");
    assert!(
        matches!(
            &err,
            Error::Remote {
                code: tonic::Code::Unavailable,
                ..
            }
        ),
        "{err}"
    );
    let _ = stop.send(());
}
