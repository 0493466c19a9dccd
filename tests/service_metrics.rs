//! Prometheus metrics (`--metrics-listen`) and request ids (`x-request-id`), end to end on
//! 127.0.0.1 with ephemeral ports: exact call counts by method and status code (refused
//! calls included), the tree and byte gauges against GetServerInfo, the permutation count
//! of a small build, update and openings, and request ids echoed and carried by the logs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::server::{err, spawn_with_metrics};
use memcommit::layout::MemoryLayout;
use memcommit::service::client::{Client, ConnectOptions};
use memcommit::service::proto;
use memcommit::service::{AuthToken, Limits, ServiceConfig, MAX_REQUEST_ID_LEN};
use memcommit::tree::{Backend, TouchedBlock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const TOKEN: &str = "metrics-test-token-42";

/// Slot 0: 2^13 u8 cells (2^10 blocks, h = 10); slot 1: 2^8 u16 cells (2^5 blocks, h = 5).
/// address_height = 10, address_space_height = 1.
fn layout() -> MemoryLayout {
    MemoryLayout::from_json(
        r#"{"address_spaces": [{"cell": "u8", "num_cells": 8192}, {"cell": "u16", "num_cells": 256}]}"#,
    )
    .expect("layout")
}

/// An HTTP/1.1 GET of `path`: the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// `/metrics` as `series → value`, e.g. `memcommit_trees → 1`.
async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_string(), value.parse().expect("number"))
        })
        .collect()
}

/// The `memcommit_rpc_requests_total` series, as `(method, code) → count`.
fn calls(m: &BTreeMap<String, f64>) -> BTreeMap<(String, String), u64> {
    m.iter()
        .filter_map(|(series, v)| {
            let labels = series.strip_prefix("memcommit_rpc_requests_total{")?;
            let (method, rest) = labels.strip_prefix("method=\"")?.split_once('"')?;
            let code = rest.strip_prefix(",code=\"")?.strip_suffix("\"}")?;
            Some(((method.to_string(), code.to_string()), *v as u64))
        })
        .collect()
}

fn expect_calls(list: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
    list.iter()
        .map(|(m, c, n)| ((m.to_string(), c.to_string()), *n))
        .collect()
}

fn block(slot: u32, block: u64) -> TouchedBlock {
    TouchedBlock {
        slot,
        block,
        cells: [slot + 1, 2, 3, 4, 5, 6, 7, block as u32 % 250],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_gauges_and_permutations_are_exact() {
    let token = AuthToken::new(TOKEN).expect("token");
    let (server, metrics) = spawn_with_metrics(ServiceConfig {
        limits: Limits {
            // Small enough that a 2,000-block UpdateBlocks (80 KB) is refused by tonic.
            max_message_bytes: 64 << 10,
            ..Limits::default()
        },
        auth_token: Some(token.clone()),
        ..ServiceConfig::default()
    })
    .await;
    let url = server.url();
    let mut c = Client::connect_with(
        &url,
        &ConnectOptions {
            auth_token: Some(token),
            tls_ca_pem: None,
        },
    )
    .await
    .expect("connect");
    let mut anonymous = Client::connect(&url).await.expect("connect");

    let m = scrape(metrics).await;
    assert!(calls(&m).is_empty(), "{m:?}");
    assert_eq!(m["memcommit_trees"], 0.0);
    assert_eq!(m["memcommit_permutations_total"], 0.0);
    let build_info = format!(
        "memcommit_build_info{{version=\"{}\",backend=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        Backend::Auto.resolve().expect("auto").name()
    );
    assert_eq!(m[&build_info], 1.0, "{m:?}");

    let layout = layout();
    let t = c
        .create_tree(&layout, Some(3), Backend::Cpu)
        .await
        .expect("create");
    assert_eq!(scrape(metrics).await["memcommit_trees"], 1.0);
    c.write_memory(&t.tree_id, 1, 16, &[7; 16])
        .await
        .expect("write");
    c.build_tree(&t.tree_id).await.expect("build");
    // Build: slot 0 has no page yet (0); slot 1's one page 2^6 − 1, plus 10 − 5 on its
    // vertical path; the top tree 2^1 − 1.
    let build = 63 + 5 + 1;
    assert_eq!(
        scrape(metrics).await["memcommit_permutations_total"],
        build as f64
    );

    // One block of slot 0 at k = 3 (creating its page), with its opening: the level-3 node
    // (8 leaves, 7 compressions), levels 4..=10 (7), the top tree (1); the CPU opening
    // re-hashes the 8 blocks under the level-3 node (8 + 7).
    c.update_blocks(&t.tree_id, &[block(0, 100)], true)
        .await
        .expect("update");
    let update = 15 + 7 + 1 + 15;
    // Openings in slot 0 and slot 1 (h = 5 > k, so b = 3 too): 15 each.
    c.get_openings(&t.tree_id, &[(0, 5), (1, 31)])
        .await
        .expect("openings");
    let openings = 30;
    assert_eq!(
        scrape(metrics).await["memcommit_permutations_total"],
        (build + update + openings) as f64
    );

    c.get_root(&t.tree_id).await.expect("root");
    err(
        c.get_root("no-such-tree").await,
        Code::NotFound,
        &["no-such-tree"],
    );
    err(c.get_root("").await, Code::InvalidArgument, &["tree_id"]);
    err(
        anonymous.get_root(&t.tree_id).await,
        Code::Unauthenticated,
        &["missing authorization"],
    );
    let big: Vec<_> = (0..2000).map(|b| block(0, b)).collect();
    err(
        c.update_blocks(&t.tree_id, &big, false).await,
        Code::ResourceExhausted,
        &["max_message_bytes = 65536"],
    );
    c.list_trees().await.expect("list");

    let info = c.server_info().await.expect("info");
    let m = scrape(metrics).await;
    assert!(info.total_host_bytes > 0);
    assert_eq!(m["memcommit_host_bytes"], info.total_host_bytes as f64);
    assert_eq!(m["memcommit_device_bytes"], info.total_device_bytes as f64);
    assert_eq!(
        m["memcommit_reserved_host_bytes"] + m["memcommit_reserved_device_bytes"],
        info.total_reserved_bytes as f64
    );

    c.drop_tree(&t.tree_id).await.expect("drop");
    let m = scrape(metrics).await;
    assert_eq!(m["memcommit_trees"], 0.0);
    assert_eq!(m["memcommit_host_bytes"], 0.0);
    let expected = expect_calls(&[
        ("CreateTree", "OK", 1),
        ("WriteMemory", "OK", 1),
        ("BuildTree", "OK", 1),
        ("UpdateBlocks", "OK", 1),
        ("UpdateBlocks", "RESOURCE_EXHAUSTED", 1),
        ("GetOpenings", "OK", 1),
        ("GetRoot", "OK", 1),
        ("GetRoot", "NOT_FOUND", 1),
        ("GetRoot", "INVALID_ARGUMENT", 1),
        ("GetRoot", "UNAUTHENTICATED", 1),
        ("ListTrees", "OK", 1),
        ("GetServerInfo", "OK", 1),
        ("DropTree", "OK", 1),
    ]);
    assert_eq!(calls(&m), expected);
    // The histograms saw the same calls.
    for ((method, code), n) in &expected {
        let count =
            format!("memcommit_rpc_duration_seconds_count{{method=\"{method}\",code=\"{code}\"}}");
        assert_eq!(m[&count], *n as f64, "{count}");
    }
    // Only the listener's one path.
    assert_eq!(http_get(metrics, "/").await.0, 404);
    assert_eq!(http_get(metrics, "/metrics/x").await.0, 404);

    drop((c, anonymous));
    server.stop().await;
}

/// A shared buffer the log subscriber writes into.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned();
        text.lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// The `x-request-id` a call's response (or error) carried.
fn echoed(meta: &tonic::metadata::MetadataMap) -> String {
    meta.get("x-request-id")
        .expect("x-request-id echoed")
        .to_str()
        .expect("ascii")
        .to_string()
}

/// `msg` with `x-request-id: id`.
fn with_id<T>(id: &[u8], msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "x-request-id",
        tonic::metadata::MetadataValue::try_from(id).expect("header value"),
    );
    r
}

fn is_uuid_v4(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_logged() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .expect("the only subscriber in this test binary");

    let (server, _metrics) = spawn_with_metrics(ServiceConfig::default()).await;
    let mut c = Client::connect(&server.url()).await.expect("connect");
    let layout = layout();

    let create = proto::CreateTreeRequest {
        layout: Some(memcommit::service::codec::layout_to_proto(&layout)),
        backend: "cpu".into(),
        ..Default::default()
    };
    let r = c
        .raw()
        .create_tree(with_id(b"abc-123", create))
        .await
        .expect("create");
    assert_eq!(echoed(r.metadata()), "abc-123");
    let tree_id = r.into_inner().tree_id;
    let r = c
        .raw()
        .build_tree(with_id(
            b"build-7",
            proto::BuildTreeRequest {
                tree_id: tree_id.clone(),
            },
        ))
        .await
        .expect("build");
    assert_eq!(echoed(r.metadata()), "build-7");

    // Without an id, or with one too long or not visible ASCII: a new UUID v4 each time.
    let mut seen = Vec::new();
    for id in [
        None,
        Some("x".repeat(MAX_REQUEST_ID_LEN + 1).into_bytes()),
        Some(b"has space".to_vec()),
        Some(b"tab\tinside".to_vec()),
    ] {
        let req = proto::GetRootRequest {
            tree_id: tree_id.clone(),
        };
        let req = match &id {
            Some(id) => with_id(id, req),
            None => tonic::Request::new(req),
        };
        let r = c.raw().get_root(req).await.expect("root");
        let got = echoed(r.metadata());
        assert!(is_uuid_v4(&got), "{id:?} gave {got:?}");
        seen.push(got);
    }
    seen.dedup();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let longest = "y".repeat(MAX_REQUEST_ID_LEN);
    let r = c
        .raw()
        .get_root(with_id(
            longest.as_bytes(),
            proto::GetRootRequest {
                tree_id: tree_id.clone(),
            },
        ))
        .await
        .expect("root");
    assert_eq!(echoed(r.metadata()), longest);

    // Errors carry the id too.
    let s = c
        .raw()
        .get_root(with_id(
            b"missing-1",
            proto::GetRootRequest {
                tree_id: "nope".into(),
            },
        ))
        .await
        .expect_err("unknown tree");
    assert_eq!(s.code(), Code::NotFound);
    assert_eq!(echoed(s.metadata()), "missing-1");

    // The handlers' log lines, including the build's in its blocking thread, name the call.
    let created = logs.lines_with("tree created");
    assert!(
        created
            .iter()
            .any(|l| l.contains(r#"rpc{method="CreateTree" request_id=abc-123}"#)),
        "{created:?}"
    );
    let built = logs.lines_with("tree built");
    assert!(
        built
            .iter()
            .any(|l| l.contains(r#"rpc{method="BuildTree" request_id=build-7}"#)),
        "{built:?}"
    );
    drop(c);
    server.stop().await;
}

/// Reads `memcommit serve` stderr lines (JSON) on a thread, handing each one over.
fn json_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<serde_json::Value> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("log line {line:?} is not JSON: {e}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line for which `pick` returns something, within 60 s.
fn wait_for<T>(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    pick: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let v = rx.recv_timeout(left).expect("log line before the deadline");
        if let Some(t) = pick(&v) {
            return t;
        }
    }
}

fn address_of(v: &serde_json::Value, message_prefix: &str) -> Option<SocketAddr> {
    let fields = &v["fields"];
    fields["message"]
        .as_str()?
        .starts_with(message_prefix)
        .then(|| fields["address"].as_str()?.parse().ok())?
}

/// Kills the server process when dropped, so a failing assertion leaves none behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_serves_metrics_and_json_logs() {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn memcommit serve");
    let mut child = KillOnDrop(child);
    let rx = json_lines(&mut child.0);
    let metrics = wait_for(&rx, |v| address_of(v, "metrics at"));
    let grpc = wait_for(&rx, |v| address_of(v, "memcommit listening"));

    let mut c = Client::connect(&format!("http://{grpc}"))
        .await
        .expect("connect");
    let create = proto::CreateTreeRequest {
        layout: Some(memcommit::service::codec::layout_to_proto(&layout())),
        backend: "cpu".into(),
        ..Default::default()
    };
    let r = c
        .raw()
        .create_tree(with_id(b"cli-json-1", create))
        .await
        .expect("create");
    assert_eq!(echoed(r.metadata()), "cli-json-1");
    // The handler's line carries the span's fields as JSON.
    let span = wait_for(&rx, |v| {
        (v["fields"]["message"] == "tree created").then(|| v["span"].clone())
    });
    assert_eq!(span["name"], "rpc");
    assert_eq!(span["method"], "CreateTree");
    assert_eq!(span["request_id"], "cli-json-1");

    let m = scrape(metrics).await;
    assert_eq!(m["memcommit_trees"], 1.0);
    assert_eq!(calls(&m), expect_calls(&[("CreateTree", "OK", 1)]), "{m:?}");
    drop((c, child));
}
