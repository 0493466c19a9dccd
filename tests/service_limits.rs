//! Each server limit (issue 5 item 2), end to end on 127.0.0.1 with an ephemeral port: going
//! over it gets `RESOURCE_EXHAUSTED` (the timeout: `DEADLINE_EXCEEDED`) with a message that
//! names the limit and its value, nothing changes, and the server stays healthy.

mod common;

use common::server::{err, start, TestServer};

use std::sync::Arc;
use std::time::Duration;

use common::image_with;
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::service::{Limits, SERVICE_NAME};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{node_bytes, Backend, MemoryTree, TouchedBlock};
use tonic::Code;

/// Checks that health says SERVING and MemCommit answers, then shuts down gracefully.
async fn healthy_then_stop(mut srv: TestServer) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel = tonic::transport::Endpoint::from_shared(srv.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    srv.client.list_trees().await.expect("list trees");
    drop(srv.client);
    srv.server.stop().await;
}

fn layout(json: &str) -> MemoryLayout {
    MemoryLayout::from_json(json).expect("layout")
}

fn small() -> MemoryLayout {
    layout(r#"{"address_spaces": [{"cell": "u16", "num_cells": 65536}]}"#)
}

/// Blocks 0..n of slot 0 with distinct cells.
fn batch(n: u64) -> Vec<TouchedBlock> {
    (0..n)
        .map(|b| TouchedBlock {
            slot: 0,
            block: b,
            cells: std::array::from_fn(|i| ((b * 8 + i as u64) % 65536) as u32),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_trees() {
    let mut srv = start(Limits {
        max_trees: 2,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    let a = c
        .create_tree(&small(), None, Backend::Cpu)
        .await
        .expect("a");
    c.create_tree(&small(), None, Backend::Cpu)
        .await
        .expect("b");
    err(
        c.create_tree(&small(), None, Backend::Cpu).await,
        Code::ResourceExhausted,
        &["max_trees = 2: 2 trees already exist"],
    );
    c.drop_tree(&a.tree_id).await.expect("drop");
    c.create_tree(&small(), None, Backend::Cpu)
        .await
        .expect("after a drop");
    healthy_then_stop(srv).await;
}

/// Bytes the empty `small()` tree reserves at k = 3 (its dense levels 10..=13 and the top
/// root), and what each of its 8 KiB pages adds (its raw bytes and 127 digests).
fn small_costs() -> (u64, u64) {
    let l = small();
    let empty = node_bytes(&l, &MemoryImage::zeroed(&l).expect("image"), 3);
    assert_eq!(empty, (15 + 1) * 32);
    (empty, 8192 + 127 * 32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tree_bytes() {
    let l = small();
    let (empty, page) = small_costs();
    // Two pages, and room for one page's bytes staged by an open WriteMemory stream.
    let fitted = empty + 2 * page;
    let limit = fitted + 8192;
    let mut srv = start(Limits {
        max_tree_bytes: limit,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    let t = c.create_tree(&l, None, Backend::Cpu).await.expect("empty");
    let id = &t.tree_id;
    // Two pages fit, one stream each (a stream of both would stage 16 KiB); a chunk that
    // would add a third is refused whole.
    for p in 0..2 {
        c.write_memory(id, 0, p * 8192, &vec![1; 8192])
            .await
            .expect("one page");
    }
    err(
        c.write_memory(id, 0, 2 * 8192 - 2, &[2, 0, 3, 0]).await,
        Code::ResourceExhausted,
        &[&format!(
            "max_tree_bytes = {limit}: tree {id} (4 staged WriteMemory bytes and 1 new pages of \
             slot 0) would need {} bytes ({} host, 0 device)",
            fitted + page + 4,
            fitted + page + 4
        )],
    );
    // Rewriting present pages needs nothing more once the stream has ended.
    c.write_memory(id, 0, 100, &[7, 0]).await.expect("in place");
    let info = &c.list_trees().await.expect("list")[0];
    assert_eq!((info.reserved_bytes, info.present_pages), (fitted, 2));
    let mut image = MemoryImage::zeroed(&l).expect("image");
    image.write(0, 0, &vec![1; 2 * 8192]).expect("write");
    image.write(0, 100, &[7, 0]).expect("write");
    let mut reference = ReferenceTree::build(l.clone(), Arc::new(image), 3);
    let root = c.build_tree(id).await.expect("build");
    assert_eq!(root, reference.root(), "the refused chunk wrote nothing");
    // An update that would create a page is refused whole; one inside present pages works.
    let outside = [TouchedBlock {
        slot: 0,
        block: 5 * 512,
        cells: [9; 8],
    }];
    err(
        c.update_blocks(id, &outside, false).await,
        Code::ResourceExhausted,
        &[&format!(
            "max_tree_bytes = {limit}: tree {id} (the batch's new pages)"
        )],
    );
    assert_eq!(c.get_root(id).await.expect("root"), root);
    let inside = batch(700);
    let r = c.update_blocks(id, &inside, false).await.expect("inside");
    assert_eq!(r.new_root, reference.update(&inside).expect("reference"));
    let info = &c.list_trees().await.expect("list")[0];
    assert_eq!((info.reserved_bytes, info.present_pages), (fitted, 2));
    healthy_then_stop(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_host_bytes() {
    let l = small();
    let (empty, page) = small_costs();
    let full = empty + 16 * page;
    // Two full trees and an empty one, plus one open stream's staged 16 pages.
    let staged = 131072;
    let limit = 2 * full + empty + staged;
    let mut srv = start(Limits {
        max_host_bytes: limit,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    let a = c.create_tree(&l, None, Backend::Cpu).await.expect("a");
    let b = c.create_tree(&l, None, Backend::Cpu).await.expect("b");
    for t in [&a, &b] {
        c.write_memory(&t.tree_id, 0, 0, &vec![1; 131072])
            .await
            .expect("all 16 pages");
    }
    let t = c
        .create_tree(&l, None, Backend::Cpu)
        .await
        .expect("c, empty");
    err(
        c.write_memory(&t.tree_id, 0, 0, &vec![1; staged as usize])
            .await,
        Code::ResourceExhausted,
        &[&format!(
            "max_host_bytes = {limit}: tree {} ({staged} staged WriteMemory bytes and 16 new \
             pages of slot 0) needs {} host bytes and {} are already reserved",
            t.tree_id,
            staged + 16 * page,
            limit - staged
        )],
    );
    let info = c.server_info().await.expect("info");
    assert_eq!(info.total_reserved_bytes, limit - staged);
    assert_eq!(info.max_host_bytes, limit);
    #[allow(deprecated)]
    let old_name = info.max_total_bytes;
    assert_eq!(
        old_name, limit,
        "the deprecated name still carries the value"
    );
    assert_eq!(info.total_present_pages, 32);
    c.drop_tree(&a.tree_id).await.expect("drop");
    c.write_memory(&t.tree_id, 0, 0, &[1, 0])
        .await
        .expect("after a drop");
    healthy_then_stop(srv).await;
}

/// CPU trees reserve no device bytes, so even a 1-byte device budget admits them. The
/// refusal itself is covered by the registry's unit test (`device_bytes_are_counted_apart`)
/// until a device backend reserves device bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_device_bytes_does_not_count_cpu_trees() {
    let mut srv = start(Limits {
        max_device_bytes: 1,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    for _ in 0..3 {
        c.create_tree(&small(), None, Backend::Cpu)
            .await
            .expect("cpu tree");
    }
    let info = c.server_info().await.expect("info");
    assert_eq!(info.total_device_bytes, 0);
    healthy_then_stop(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_blocks_per_batch() {
    let mut srv = start(Limits {
        max_blocks_per_batch: 1000,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    let l = small();
    let t = c.create_tree(&l, None, Backend::Cpu).await.expect("create");
    let root = c.build_tree(&t.tree_id).await.expect("build");
    let big = batch(1001);
    err(
        c.update_blocks(&t.tree_id, &big, false).await,
        Code::ResourceExhausted,
        &["max_blocks_per_batch = 1000: batch has 1001 blocks"],
    );
    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), root);
    let positions: Vec<_> = big.iter().map(|b| (b.slot, b.block)).collect();
    err(
        c.get_openings(&t.tree_id, &positions).await,
        Code::ResourceExhausted,
        &["max_blocks_per_batch = 1000: batch has 1001 positions"],
    );
    // At the limit it applies, and matches the reference.
    let r = c
        .update_blocks(&t.tree_id, &big[..1000], false)
        .await
        .expect("1000 blocks");
    let mut reference = ReferenceTree::build(l.clone(), image_with(&l, &[]), 3);
    assert_eq!(r.old_root, reference.root());
    assert_eq!(
        r.new_root,
        reference.update(&big[..1000]).expect("reference")
    );
    healthy_then_stop(srv).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_bytes() {
    const LIMIT: usize = 16 << 10;
    let mut srv = start(Limits {
        max_message_bytes: LIMIT,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    let t = c
        .create_tree(&small(), None, Backend::Cpu)
        .await
        .expect("create");
    let root = c.build_tree(&t.tree_id).await.expect("build");
    // 1000 blocks are 40 KB on the wire.
    err(
        c.update_blocks(&t.tree_id, &batch(1000), false).await,
        Code::ResourceExhausted,
        &[&format!("max_message_bytes = {LIMIT}")],
    );
    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), root);
    c.update_blocks(&t.tree_id, &batch(100), false)
        .await
        .expect("small batch");
    healthy_then_stop(srv).await;
}

/// A call that cannot get its tree (busy building) within `request_timeout` fails with
/// `DEADLINE_EXCEEDED` and changes nothing; the build it waited on is not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout() {
    let mut srv = start(Limits {
        request_timeout: Some(Duration::from_millis(100)),
        ..Limits::default()
    })
    .await;
    // 2^22 leaves, every page written: a build of a second or more on two cores.
    let big = layout(r#"{"address_spaces": [{"cell": "u8", "num_cells": 33554432}]}"#);
    let c = &mut srv.client;
    let t = c
        .create_tree(&big, None, Backend::Cpu)
        .await
        .expect("create");
    c.write_memory(&t.tree_id, 0, 0, &vec![3; 33554432])
        .await
        .expect("write the image");
    let build = {
        let mut c = c.clone();
        let id = t.tree_id.clone();
        tokio::spawn(async move { c.build_tree(&id).await })
    };
    let blocks = batch(4)
        .into_iter()
        .map(|mut b| {
            b.cells = [1; 8];
            b
        })
        .collect::<Vec<_>>();
    // Until the build holds the lock, the update finds the tree unbuilt; once it does, the
    // update waits and times out.
    let mut timed_out = None;
    while !build.is_finished() {
        match c.update_blocks(&t.tree_id, &blocks, false).await {
            Err(s) if s.code() == Code::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(s) if s.code() == Code::DeadlineExceeded => {
                timed_out = Some(s);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let s = timed_out.expect("an update should time out while the build runs");
    assert!(
        s.message()
            .starts_with("request_timeout = 100 ms: still waiting for tree "),
        "{s:?}"
    );
    let root = build.await.expect("join").expect("the build finishes");
    // The timed-out batch was never applied.
    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), root);
    let r = c
        .update_blocks(&t.tree_id, &blocks, false)
        .await
        .expect("update after the build");
    assert_eq!(r.old_root, root);
    assert_ne!(r.new_root, root);
    c.drop_tree(&t.tree_id).await.expect("drop");
    healthy_then_stop(srv).await;
}

/// `memcommit serve` takes every limit flag (and the old `--max-total-bytes` name) and
/// reports the limits it runs with.
#[cfg(unix)]
#[test]
fn serve_cli_limit_flags() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-trees",
            "7",
            "--max-tree-bytes",
            "1000001",
            "--max-total-bytes",
            "2000002",
            "--max-device-bytes",
            "3000003",
            "--max-blocks-per-batch",
            "4004",
            "--max-message-bytes",
            "5000005",
            "--request-timeout-ms",
            "1500",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memcommit serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = loop {
        let line = lines
            .next()
            .expect("server exited early")
            .expect("read stderr");
        if line.contains("memcommit listening") {
            break line;
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    for needle in [
        "max_trees: 7",
        "max_tree_bytes: 1000001",
        "max_host_bytes: 2000002",
        "max_device_bytes: 3000003",
        "max_blocks_per_batch: 4004",
        "max_message_bytes: 5000005",
        "request_timeout: Some(1.5s)",
    ] {
        assert!(line.contains(needle), "{needle:?} not in {line:?}");
    }
    assert!(status.success(), "{status:?}");

    let help = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args(["serve", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--max-trees",
        "--max-tree-bytes",
        "--max-host-bytes",
        "--max-device-bytes",
        "--max-blocks-per-batch",
        "--max-message-bytes",
        "--request-timeout-ms",
    ] {
        assert!(help.contains(flag), "{flag} not in --help");
    }
}
