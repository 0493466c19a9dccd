//! A memcommit server on 127.0.0.1 with an ephemeral port, stopped gracefully by the test.

use memcommit::service::{serve, ServiceConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server task and the means to stop it.
pub struct LoopbackServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// Binds 127.0.0.1:0 and serves `config` there until [`LoopbackServer::stop`].
pub async fn spawn(config: ServiceConfig) -> LoopbackServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(serve(config, listener, async {
        let _ = stopped.await;
    }));
    LoopbackServer { addr, stop, handle }
}

/// Binds 127.0.0.1:0 twice and serves `config` on the first with Prometheus metrics on the
/// second until [`LoopbackServer::stop`]; returns the server and the metrics address.
pub async fn spawn_with_metrics(config: ServiceConfig) -> (LoopbackServer, std::net::SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let metrics = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind metrics");
    let metrics_addr = metrics.local_addr().expect("metrics addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(memcommit::service::serve_with_metrics(
        config,
        listener,
        Some(metrics),
        async {
            let _ = stopped.await;
        },
    ));
    (LoopbackServer { addr, stop, handle }, metrics_addr)
}

impl LoopbackServer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and checks that `serve` returned `Ok`.
    pub async fn stop(self) {
        self.stop.send(()).expect("server still running");
        self.handle.await.expect("serve task").expect("serve ok");
    }
}

/// A [`LoopbackServer`] with default settings but `limits`, plus a connected client.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub client: memcommit::service::client::Client,
    pub server: LoopbackServer,
}

/// Starts a [`TestServer`] with `limits`.
pub async fn start(limits: memcommit::service::Limits) -> TestServer {
    let server = spawn(ServiceConfig {
        limits,
        ..ServiceConfig::default()
    })
    .await;
    let url = server.url();
    let client = memcommit::service::client::Client::connect(&url)
        .await
        .expect("connect");
    TestServer {
        url,
        client,
        server,
    }
}

impl TestServer {
    /// Shuts down gracefully and checks that `serve` returned `Ok`.
    pub async fn stop(self) {
        drop(self.client);
        self.server.stop().await;
    }
}

/// Asserts that `r` failed with `code` and a message containing every needle.
pub fn err<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> tonic::Status {
    let s = r.expect_err("call should fail");
    assert_eq!(s.code(), code, "{s:?}");
    for n in needles {
        assert!(s.message().contains(n), "{n:?} not in {:?}", s.message());
    }
    s
}
