//! `memcommit serve`: runs the gRPC server until SIGINT or SIGTERM, then exits 0 after a
//! graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use memcommit::service::{
    self, AuthToken, Limits, ServiceConfig, TlsIdentity, DEFAULT_MAX_BLOCKS_PER_BATCH,
    DEFAULT_MAX_DEVICE_BYTES, DEFAULT_MAX_HOST_BYTES, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TREES,
    DEFAULT_MAX_TREE_BYTES, DEFAULT_REQUEST_TIMEOUT,
};

/// How `memcommit serve` writes its logs (to stderr).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `tracing`'s text format.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// Arguments of `memcommit serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  # Loopback only (the default 127.0.0.1:50051), plaintext, no token:
  memcommit serve

  # Every interface, TLS and a bearer token (the token file chmod 600):
  memcommit serve --listen 0.0.0.0:50051 --tls-cert server.pem --tls-key server.key \\
    --auth-token-file /etc/memcommit/token

  # Prometheus metrics on loopback, JSON logs:
  memcommit serve --metrics-listen 127.0.0.1:9090 --log-format json

  # Tighter limits: 16 trees, 24 GiB host, 8 GiB per tree, 1 Mi blocks a batch, 64 MiB
  # messages, 10 s wait for a busy tree:
  memcommit serve --max-trees 16 --max-host-bytes 25769803776 --max-tree-bytes 8589934592 \\
    --max-blocks-per-batch 1048576 --max-message-bytes 67108864 --request-timeout-ms 10000

GetServerInfo reports every limit in force under the flag's name (max_host_bytes, ...).")]
pub struct Args {
    /// Address to listen on (IP:PORT; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (IP:PORT). Off by default. The
    /// endpoint needs no token: bind it to a private interface.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log lines as human-readable text or as JSON objects (one a line, with the
    /// `rpc` span's method and request_id).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Largest request or response message, in bytes (256 MiB).
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    max_message_bytes: u64,
    /// Most trees alive at once.
    #[arg(long, default_value_t = DEFAULT_MAX_TREES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_trees: u64,
    /// Most bytes one tree may reserve, host and device together, in bytes (16 GiB).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_TREE_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_tree_bytes: u64,
    /// Most host bytes reserved over all trees, in bytes (16 GiB). A CPU tree reserves its
    /// empty shape when created, then each page's raw bytes and nodes as writes and updates
    /// create it. Alias: --max-total-bytes.
    #[arg(long, value_name = "BYTES", alias = "max-total-bytes",
          default_value_t = DEFAULT_MAX_HOST_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_host_bytes: u64,
    /// Most device (GPU) bytes reserved over all trees, in bytes (16 GiB). CPU trees
    /// reserve none.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_DEVICE_BYTES)]
    max_device_bytes: u64,
    /// Most blocks in one UpdateBlocks batch (and positions in one GetOpenings).
    #[arg(long, value_name = "BLOCKS", default_value_t = DEFAULT_MAX_BLOCKS_PER_BATCH as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_blocks_per_batch: u64,
    /// How long a call may wait for its tree (busy with another call) before it fails with
    /// DEADLINE_EXCEEDED, in milliseconds; 0 waits forever. Work that has started (a build,
    /// a batch being applied) is never cut off.
    #[arg(long, value_name = "MS",
          default_value_t = DEFAULT_REQUEST_TIMEOUT.as_millis() as u64)]
    request_timeout_ms: u64,
    /// File holding the bearer token that every memcommit.v1.MemCommit call must send
    /// (`authorization: Bearer <token>`). One line; the trailing newline is trimmed; an
    /// empty token or a world-readable file is refused. Health and reflection stay open.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Serve TLS (rustls) with this PEM certificate chain, leaf first. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert. Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Memory budget of CreateTree's auto_omitted_levels when a request gives none, in
    /// bytes: the smallest k whose tree nodes plus raw memory fit it is chosen. Default: 90%
    /// of free device memory on cuda, of available host memory on cpu, read at each
    /// CreateTree. GetServerInfo reports the budget in force.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    memory_budget: Option<u64>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        max_message_bytes: usize::try_from(args.max_message_bytes)
            .context("--max-message-bytes does not fit this platform's usize")?,
        max_trees: usize::try_from(args.max_trees)
            .context("--max-trees does not fit this platform's usize")?,
        max_tree_bytes: args.max_tree_bytes,
        max_host_bytes: args.max_host_bytes,
        max_device_bytes: args.max_device_bytes,
        max_blocks_per_batch: usize::try_from(args.max_blocks_per_batch)
            .context("--max-blocks-per-batch does not fit this platform's usize")?,
        request_timeout: (args.request_timeout_ms > 0)
            .then(|| Duration::from_millis(args.request_timeout_ms)),
    };
    let auth_token = args
        .auth_token_file
        .as_deref()
        .map(AuthToken::from_file)
        .transpose()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_files(cert, key)?),
        (None, None) => None,
        // clap's `requires` refuses one without the other.
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let config = ServiceConfig {
        limits,
        auth_token,
        tls,
        memory_budget: args.memory_budget,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let metrics_listener = match args.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --metrics-listen {addr}"))?,
            ),
            None => None,
        };
        service::serve_with_metrics(
            config,
            listener,
            metrics_listener,
            service::shutdown_signal(),
        )
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}
