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

/// A `memcommit serve` child process on 127.0.0.1 with an ephemeral port.
#[cfg(unix)]
pub struct ServeCli {
    pub child: std::process::Child,
    /// The port it listens on, read from its "memcommit listening" log line.
    pub port: u16,
    /// Its stderr lines after the "listening" line, read on a background thread.
    pub lines: std::sync::mpsc::Receiver<String>,
}

/// Spawns `memcommit serve --listen 127.0.0.1:0 ARGS…` with `RUST_LOG=info` and waits for
/// its "memcommit listening" line.
#[cfg(unix)]
pub fn serve_cli(args: &[&str]) -> ServeCli {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_memcommit"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn memcommit serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    // The log line carries `address=127.0.0.1:PORT`.
    let port = loop {
        let line = lines
            .next()
            .expect("server exited early")
            .expect("read stderr");
        if line.contains("memcommit listening") {
            let at = line.find("127.0.0.1:").expect("address in log line") + "127.0.0.1:".len();
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            break digits.parse::<u16>().expect("port");
        }
    };
    let (send, recv) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    ServeCli {
        child,
        port,
        lines: recv,
    }
}

#[cfg(unix)]
impl ServeCli {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits up to `timeout` for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stderr line with {needle:?} within {timeout:?}: {e}"),
            }
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit; kills it and panics past that.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("memcommit serve did not exit within {timeout:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
