//! Client-side connection flags shared by `replay` and `load-test`: the server URL, the
//! bearer token and the TLS CA, and the in-process server started when no `--server` is
//! given.

use std::path::PathBuf;

use anyhow::Context;

use memcommit::service::client::{Client, ConnectOptions};
use memcommit::service::status::code_name;
use memcommit::service::{tls::read_pem, AuthToken, LoopbackServer, ServiceConfig};

/// `--server`, `--auth-token-file` and `--tls-ca`.
#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// A running memcommit server (e.g. http://127.0.0.1:50051). Without it, the command
    /// starts one in-process on 127.0.0.1 with an ephemeral port.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// File holding the bearer token to send on every call (one line; the trailing newline
    /// is trimmed; an empty token or a world-readable file is refused). Without --server,
    /// the in-process server requires it too.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM CA certificate that the server's TLS certificate must chain to. Needed for (and
    /// only for) an https:// --server.
    #[arg(long, value_name = "FILE", requires = "server")]
    pub tls_ca: Option<PathBuf>,
}

/// Where to connect: the URL and options, and the in-process server behind them, if any.
pub struct Target {
    /// `--server`, or the in-process server's `http://127.0.0.1:PORT`.
    pub url: String,
    /// Token and TLS trust from the flags.
    pub options: ConnectOptions,
    /// Present when no `--server` was given; stop it when done.
    pub server: Option<LoopbackServer>,
}

impl Target {
    /// A new connection to [`Target::url`].
    ///
    /// # Errors
    /// The connection's status, with the URL.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Client::connect_with(&self.url, &self.options)
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", code_name(s.code()), s.message()))
            .with_context(|| format!("connecting to {}", self.url))
    }
}

impl ConnectArgs {
    /// Reads the token and CA files and, without `--server`, starts an in-process server on
    /// 127.0.0.1:0 (requiring the same token, with `memory_budget` as its `--memory-budget`).
    /// Must run inside a tokio runtime.
    ///
    /// # Errors
    /// An unreadable or refused token or CA file, or a failure to bind 127.0.0.1.
    pub async fn start(&self, memory_budget: Option<u64>) -> anyhow::Result<Target> {
        let auth_token = self
            .auth_token_file
            .as_deref()
            .map(AuthToken::from_file)
            .transpose()?;
        let options = ConnectOptions {
            auth_token: auth_token.clone(),
            tls_ca_pem: self
                .tls_ca
                .as_deref()
                .map(|p| read_pem(p, "TLS CA"))
                .transpose()?,
        };
        if let Some(url) = &self.server {
            return Ok(Target {
                url: url.clone(),
                options,
                server: None,
            });
        }
        let server = LoopbackServer::start(ServiceConfig {
            auth_token,
            memory_budget,
            ..ServiceConfig::default()
        })
        .await?;
        Ok(Target {
            url: server.url.clone(),
            options,
            server: Some(server),
        })
    }
}
