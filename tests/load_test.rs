//! The load test (issue 5): K clients × M checked batches with openings and create/drop
//! churn, in-process and through the `memcommit load-test` binary.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use memcommit::load::{load_test, LoadOptions};
use memcommit::service::client::ConnectOptions;
use memcommit::service::ServiceConfig;
use memcommit::tree::Backend;

fn options(clients: usize, batches: u64) -> LoadOptions {
    LoadOptions {
        clients,
        batches,
        blocks_per_batch: 16,
        churn: true,
        duration_limit: Duration::from_secs(60),
        backend: Backend::Cpu,
        seed: 7,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_clients_twenty_batches_with_churn_have_no_errors() {
    let server = common::server::spawn(ServiceConfig::default()).await;
    let ticks = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&ticks);
    let s = load_test(
        &server.url(),
        &ConnectOptions::default(),
        options(4, 20),
        Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .await
    .expect("load test runs");
    assert_eq!(s.errors, 0, "{:?}", s.first_errors);
    assert!(!s.time_limited);
    assert_eq!(s.clients, 4);
    assert_eq!(s.batches, 80);
    assert_eq!(s.blocks, 80 * 16);
    assert_eq!(s.openings_checked, 80 * 16);
    assert_eq!(ticks.load(Ordering::SeqCst), 80);
    assert!(s.churn_trees > 0, "churn ran beside the clients");
    assert!(s.update_ms_p50 > 0.0 && s.update_ms_p50 <= s.update_ms_p99);
    assert!(s.update_ms_p99 <= s.update_ms_max);
    // Every tree, the churn's included, was dropped.
    let mut client = memcommit::service::client::Client::connect(&server.url())
        .await
        .expect("connect");
    assert!(client.list_trees().await.expect("list").is_empty());
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn zero_clients_or_batches_are_refused() {
    let mut o = options(0, 1);
    let e = load_test(
        "http://127.0.0.1:1",
        &ConnectOptions::default(),
        o,
        Arc::new(|| {}),
    )
    .await
    .expect_err("0 clients");
    assert_eq!(e.to_string(), "invalid clients: 0: must be at least 1");
    o.clients = 1;
    o.batches = 0;
    let e = load_test(
        "http://127.0.0.1:1",
        &ConnectOptions::default(),
        o,
        Arc::new(|| {}),
    )
    .await
    .expect_err("0 batches");
    assert_eq!(e.to_string(), "invalid batches: 0: must be at least 1");
}

fn load_cli(args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args(["load-test", "--json", "--backend", "cpu"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run memcommit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_runs_and_prints_the_summary_as_json() {
    let (ok, s, stderr) = load_cli(&["--clients", "2", "--batches", "5", "--churn"]);
    assert!(ok, "{stderr}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["clients"], 2);
    assert_eq!(s["batches"], 10);
    assert_eq!(s["blocks"], 10 * 16);
    assert_eq!(s["time_limited"], false);
    assert!(s["churn_trees"].as_u64().expect("churn_trees") > 0, "{s}");
    assert!(s["update_ms_p99"].as_f64().expect("p99") > 0.0, "{s}");
}

#[test]
fn cli_stops_at_the_duration_limit_without_an_error() {
    let (ok, s, stderr) = load_cli(&[
        "--clients",
        "2",
        "--batches",
        "1000000",
        "--duration-limit",
        "0",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(s["time_limited"], true, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["batches"], 0, "{s}");
}
