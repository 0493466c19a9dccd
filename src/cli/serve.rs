//! `memcommit serve`: runs the gRPC server until SIGINT or SIGTERM, then exits 0 after a
//! graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use memcommit::service::{
    self, AuthToken, Limits, ServiceConfig, TlsIdentity, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_TREES,
};

/// Arguments of `memcommit serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (IP:PORT; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Largest request or response message, in bytes (default 256 MiB).
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..=u64::from(u32::MAX)))]
    max_message_bytes: u64,
    /// Most trees alive at once.
    #[arg(long, default_value_t = DEFAULT_MAX_TREES as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_trees: u64,
    /// Most bytes reserved over all trees, in bytes (default 16 GiB). Each tree reserves
    /// its node bytes plus its raw memory bytes when created.
    #[arg(long, default_value_t = DEFAULT_MAX_TOTAL_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_total_bytes: u64,
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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        max_message_bytes: usize::try_from(args.max_message_bytes)
            .context("--max-message-bytes does not fit this platform's usize")?,
        max_trees: usize::try_from(args.max_trees)
            .context("--max-trees does not fit this platform's usize")?,
        max_total_bytes: args.max_total_bytes,
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
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        service::serve(config, listener, service::shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}
