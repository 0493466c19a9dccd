//! Bearer-token authentication and TLS, end to end on 127.0.0.1 with an ephemeral port.
//! Certificates come from rcgen at test time: a self-signed CA and a server certificate for
//! `localhost` and 127.0.0.1.

mod common;

use common::server::{spawn, LoopbackServer};

use std::path::{Path, PathBuf};
use std::process::Command;

use common::image_with;
use memcommit::hash::Digest;
use memcommit::layout::MemoryLayout;
use memcommit::service::client::{Client, ConnectOptions};
use memcommit::service::{AuthToken, ServiceConfig, TlsIdentity, SERVICE_NAME};
use memcommit::trace::{TraceEvent, TraceHeader, TraceWriter};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{verify_opening, Backend, MemoryTree, TouchedBlock};
use tonic::Code;

const TOKEN: &str = "memcommit-test-token-0123456789";

type Server = LoopbackServer;

async fn start(config: ServiceConfig) -> Server {
    spawn(config).await
}

/// A CA and a server certificate it signed, all PEM.
struct Pki {
    ca_pem: Vec<u8>,
    identity: TlsIdentity,
}

fn make_pki(common_name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{common_name} CA"));
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    Pki {
        ca_pem: ca_cert.pem().into_bytes(),
        identity: TlsIdentity {
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        },
    }
}

fn token() -> AuthToken {
    AuthToken::new(TOKEN).expect("token")
}

fn layout() -> MemoryLayout {
    MemoryLayout::from_json(
        r#"{"address_spaces": [{"cell": "u16", "num_cells": 256}, {"cell": "u8", "num_cells": 4096}]}"#,
    )
    .expect("layout")
}

/// Create, write, build and update with openings, every root checked against the reference.
async fn roundtrip(c: &mut Client) {
    let layout = layout();
    let initial = TouchedBlock {
        slot: 1,
        block: 3,
        cells: [1, 2, 3, 4, 5, 6, 7, 8],
    };
    let t = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create");
    c.write_memory(&t.tree_id, 1, 3 * 8, &[1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .expect("write");
    let mut reference = ReferenceTree::build(layout.clone(), image_with(&layout, &[initial]), 3);
    assert_eq!(
        c.build_tree(&t.tree_id).await.expect("build"),
        reference.root()
    );
    let batch = [
        TouchedBlock {
            slot: 0,
            block: 7,
            cells: [0xffff, 0, 1, 2, 3, 4, 5, 6],
        },
        TouchedBlock {
            slot: 1,
            block: 511,
            cells: [9; 8],
        },
    ];
    let r = c
        .update_blocks(&t.tree_id, &batch, true)
        .await
        .expect("update");
    let root = reference.update(&batch).expect("reference update");
    assert_eq!(r.new_root, root);
    for o in &r.openings {
        verify_opening(&root, &layout, o).expect("opening verifies");
    }
    c.drop_tree(&t.tree_id).await.expect("drop");
}

async fn health_serving(url: &str, tls_ca: Option<&[u8]>) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).expect("url");
    if let Some(ca) = tls_ca {
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .expect("tls");
    }
    let channel = endpoint.connect().await.expect("connect");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .expect("health check needs no token")
        .into_inner()
        .status;
    status == ServingStatus::Serving as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_memcommit_only() {
    let srv = start(ServiceConfig {
        auth_token: Some(token()),
        ..ServiceConfig::default()
    })
    .await;
    let url = format!("http://{}", srv.addr);

    // No token, a wrong token, and a wrong scheme: UNAUTHENTICATED, never the handler.
    let mut anonymous = Client::connect(&url).await.expect("connect");
    let s = anonymous.list_trees().await.expect_err("no token");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("missing authorization"), "{s:?}");
    assert!(!s.message().contains(TOKEN));
    let s = anonymous
        .create_tree(&layout(), None, Backend::Cpu)
        .await
        .expect_err("no token");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let e = memcommit::Error::from(s);
    assert!(
        e.to_string()
            .starts_with("server returned UNAUTHENTICATED: "),
        "{e}"
    );
    for wrong in [&TOKEN[1..], "memcommit-test-token-0123456788"] {
        let mut c = Client::connect_with(
            &url,
            &ConnectOptions {
                auth_token: Some(AuthToken::new(wrong).expect("token")),
                ..ConnectOptions::default()
            },
        )
        .await
        .expect("connect");
        let s = c.server_info().await.expect_err("wrong token");
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("invalid bearer token"), "{s:?}");
    }
    let mut raw = anonymous.raw().clone();
    let mut req = tonic::Request::new(memcommit::service::proto::ListTreesRequest {});
    req.metadata_mut().insert(
        "authorization",
        format!("Basic {TOKEN}").parse().expect("value"),
    );
    let s = raw.list_trees(req).await.expect_err("basic auth");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    // Health and reflection stay open.
    assert!(health_serving(&url, None).await);

    // The right token works for every call.
    let mut c = Client::connect_with(
        &url,
        &ConnectOptions {
            auth_token: Some(token()),
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("connect");
    roundtrip(&mut c).await;
    assert!(c.list_trees().await.expect("list").is_empty());
    drop((c, anonymous, raw));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_roundtrip_and_plaintext_is_refused() {
    let pki = make_pki("memcommit test");
    let srv = start(ServiceConfig {
        tls: Some(pki.identity.clone()),
        ..ServiceConfig::default()
    })
    .await;
    let port = srv.addr.rsplit(':').next().expect("port").to_string();
    let with_ca = ConnectOptions {
        tls_ca_pem: Some(pki.ca_pem.clone()),
        ..ConnectOptions::default()
    };
    // Both names on the certificate work.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{port}");
        let mut c = Client::connect_with(&url, &with_ca)
            .await
            .expect("tls connect");
        roundtrip(&mut c).await;
    }
    assert!(health_serving(&format!("https://localhost:{port}"), Some(&pki.ca_pem)).await);

    // Plaintext to a TLS server fails, at connect or at the first call.
    let plain = format!("http://{}", srv.addr);
    match Client::connect(&plain).await {
        Err(s) => assert_eq!(s.code(), Code::Unavailable, "{s:?}"),
        Ok(mut c) => {
            c.list_trees()
                .await
                .expect_err("plaintext call to a TLS server");
        }
    }
    // https needs a CA; a CA needs https.
    let s = Client::connect(&format!("https://localhost:{port}"))
        .await
        .expect_err("no CA");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("--tls-ca"), "{s:?}");
    let s = Client::connect_with(&plain, &with_ca)
        .await
        .expect_err("CA with http");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // A certificate from another CA is not trusted.
    let other = ConnectOptions {
        tls_ca_pem: Some(make_pki("other").ca_pem),
        ..ConnectOptions::default()
    };
    let s = Client::connect_with(&format!("https://localhost:{port}"), &other)
        .await
        .expect_err("untrusted certificate");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_bearer_token_together() {
    let pki = make_pki("memcommit test");
    let srv = start(ServiceConfig {
        tls: Some(pki.identity.clone()),
        auth_token: Some(token()),
        ..ServiceConfig::default()
    })
    .await;
    let url = format!(
        "https://localhost:{}",
        srv.addr.rsplit(':').next().expect("port")
    );
    let mut anonymous = Client::connect_with(
        &url,
        &ConnectOptions {
            tls_ca_pem: Some(pki.ca_pem.clone()),
            ..ConnectOptions::default()
        },
    )
    .await
    .expect("tls connect");
    let s = anonymous.list_trees().await.expect_err("no token");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    let mut c = Client::connect_with(
        &url,
        &ConnectOptions {
            tls_ca_pem: Some(pki.ca_pem.clone()),
            auth_token: Some(token()),
        },
    )
    .await
    .expect("tls connect");
    roundtrip(&mut c).await;
    assert!(health_serving(&url, Some(&pki.ca_pem)).await);
    drop((c, anonymous));
    srv.stop().await;
}

/// A small trace over [`layout`] whose steps carry the reference's roots.
fn small_trace(dir: &Path) -> PathBuf {
    let layout = layout();
    let path = dir.join("small.trace");
    let mut w = TraceWriter::create(
        &path,
        &TraceHeader {
            layout: layout.clone(),
            omitted_levels: None,
        },
    )
    .expect("create");
    let initial = TouchedBlock {
        slot: 1,
        block: 0,
        cells: [7; 8],
    };
    w.write(&TraceEvent::Write {
        slot: 1,
        offset: 0,
        data: vec![7; 8],
    })
    .expect("write");
    let mut reference = ReferenceTree::build(layout.clone(), image_with(&layout, &[initial]), 3);
    let root: Digest = reference.root();
    w.write(&TraceEvent::Build {
        expect_root: Some(root),
    })
    .expect("build");
    let blocks = vec![TouchedBlock {
        slot: 0,
        block: 2,
        cells: [3; 8],
    }];
    let root = reference.update(&blocks).expect("reference");
    w.write(&TraceEvent::Update {
        blocks,
        expect_root: Some(root),
    })
    .expect("update");
    w.finish().expect("finish");
    path
}

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create");
    f.write_all(text.as_bytes()).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    path
}

fn replay_cli(args: Vec<String>) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .arg("replay")
        .args(args)
        .output()
        .expect("run memcommit replay")
}

/// `memcommit replay` against a TLS server with a token: without the token it prints
/// UNAUTHENTICATED and fails; with it, every root matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cli_with_tls_and_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = small_trace(dir.path());
    let pki = make_pki("memcommit test");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write ca");
    let good = secret_file(dir.path(), "token", &format!("{TOKEN}\n"));
    let bad = secret_file(dir.path(), "wrong", "not-the-token\n");
    let srv = start(ServiceConfig {
        tls: Some(pki.identity.clone()),
        auth_token: Some(token()),
        ..ServiceConfig::default()
    })
    .await;
    let url = format!(
        "https://localhost:{}",
        srv.addr.rsplit(':').next().expect("port")
    );
    let base = |token: Option<&Path>| {
        let mut a = vec![
            trace.display().to_string(),
            "--json".into(),
            "--server".into(),
            url.clone(),
            "--tls-ca".into(),
            ca.display().to_string(),
        ];
        if let Some(t) = token {
            a.extend(["--auth-token-file".into(), t.display().to_string()]);
        }
        a
    };
    for token in [None, Some(bad.as_path())] {
        let args = base(token);
        let out = tokio::task::spawn_blocking(move || replay_cli(args))
            .await
            .expect("join");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
        assert!(!stderr.contains(TOKEN), "{stderr}");
    }
    let args = base(Some(good.as_path()));
    let out = tokio::task::spawn_blocking(move || replay_cli(args))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["root"], l["expect_root"]);
    }
    srv.stop().await;

    // Without --server, the in-process server takes the same token.
    let args = vec![
        trace.display().to_string(),
        "--auth-token-file".into(),
        good.display().to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || replay_cli(args))
        .await
        .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cli_refuses_bad_security_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = secret_file(dir.path(), "empty", "\n");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_memcommit"))
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["serve", "--listen", "127.0.0.1:0", "--tls-cert", "c.pem"]);
    assert!(e.contains("--tls-key"), "{e}");
    let e = run(&["serve", "--listen", "127.0.0.1:0", "--tls-key", "k.pem"]);
    assert!(e.contains("--tls-cert"), "{e}");
    let empty = empty.display().to_string();
    let e = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--auth-token-file",
        &empty,
    ]);
    assert!(e.contains("empty"), "{e}");
    let e = run(&["replay", "t.trace", "--tls-ca", "ca.pem"]);
    assert!(e.contains("--server"), "{e}");
    // A certificate file that holds no PEM.
    let junk = secret_file(dir.path(), "junk.pem", "not pem");
    let junk = junk.display().to_string();
    let e = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &junk,
        "--tls-key",
        &junk,
    ]);
    assert!(e.contains("holds no PEM block"), "{e}");
}
