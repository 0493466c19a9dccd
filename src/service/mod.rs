//! The tonic gRPC service (`proto/memcommit/v1/memcommit.proto`, package `memcommit.v1`),
//! with gRPC health and reflection (v1 and v1alpha), limits, and graceful shutdown.
//!
//! - [`serve`] runs the server on a bound listener until a shutdown future resolves.
//! - [`client::Client`] is the typed client the CLI and tests use.
//! - [`codec`] converts the packed wire forms to the core types.
//! - Errors map to status codes one to one ([`status::code`]).
//! - [`auth`]: bearer tokens on MemCommit calls; [`tls`]: rustls identities.
//! - `observe`: request ids (`x-request-id`), the `rpc{method, request_id}` span and the
//!   per-call metrics; `metrics`: the Prometheus listener ([`serve_with_metrics`]).

pub mod auth;
pub mod client;
pub mod codec;
#[doc(hidden)]
pub mod fuzzing;
mod limits;
pub mod loopback;
mod metrics;
mod observe;
mod registry;
mod server;
pub mod status;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

pub use auth::AuthToken;
pub use limits::{
    Limits, MemoryEstimate, DEFAULT_MAX_BLOCKS_PER_BATCH, DEFAULT_MAX_DEVICE_BYTES,
    DEFAULT_MAX_HOST_BYTES, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TOTAL_BYTES, DEFAULT_MAX_TREES,
    DEFAULT_MAX_TREE_BYTES, DEFAULT_REQUEST_TIMEOUT,
};
pub use loopback::LoopbackServer;
pub use observe::{MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER};
pub use tls::TlsIdentity;

use crate::tree::Backend;
use auth::RequireBearer;
use observe::Observe;
use proto::mem_commit_server::MemCommitServer;
use server::{is_message_too_large, message_limit_status, MemCommitService};

/// Generated protobuf types and the tonic client and server for `memcommit.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("memcommit.v1");

    /// The encoded `FileDescriptorSet` of `memcommit.proto`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("memcommit_descriptor");
}

/// The fully-qualified gRPC service name, as health checks and reflection list it.
pub const SERVICE_NAME: &str = proto::mem_commit_server::SERVICE_NAME;

/// Server configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Message, tree-count and memory limits.
    pub limits: Limits,
    /// When set, every `memcommit.v1.MemCommit` call needs `authorization: Bearer <token>`
    /// (else `UNAUTHENTICATED`); health and reflection stay open.
    pub auth_token: Option<AuthToken>,
    /// When set, the server speaks TLS only (rustls), with this certificate and key.
    pub tls: Option<TlsIdentity>,
    /// Budget of `CreateTree`'s `auto_omitted_levels` when the request gives none, in
    /// bytes. `None`: 90% of free device memory (cuda) or of available host memory (cpu),
    /// read at each `CreateTree` ([`crate::tree::default_memory_budget`]).
    pub memory_budget: Option<u64>,
}

/// Serves `memcommit.v1.MemCommit`, `grpc.health.v1.Health` (MemCommit marked serving) and
/// reflection v1 and v1alpha on `listener` until `shutdown` resolves, then stops accepting,
/// lets calls in flight finish, and returns.
///
/// `shutdown` is polled once before the "listening" log line, so a signal future such as
/// [`shutdown_signal`] has its handlers installed by the time the server announces itself.
///
/// # Errors
/// If the listener's address cannot be read, the TLS certificate or key does not parse,
/// reflection cannot be built from the embedded descriptors, or the transport fails.
pub async fn serve(
    config: ServiceConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_metrics(config, listener, None, shutdown).await
}

/// [`serve`], plus Prometheus metrics at `http://METRICS_ADDR/metrics` when
/// `metrics_listener` is given (no auth: bind it to a private interface). The metrics
/// listener stops when the gRPC server returns.
///
/// # Errors
/// As [`serve`], and if the metrics listener's address cannot be read.
pub async fn serve_with_metrics(
    config: ServiceConfig,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = config.limits;
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    let default_backend = Backend::Auto.resolve()?;

    let service =
        MemCommitService::new(limits, default_backend).with_memory_budget(config.memory_budget);
    // Dropping the set (when this function returns) stops the metrics listener.
    let mut background = tokio::task::JoinSet::new();
    let metrics = match metrics_listener {
        Some(l) => {
            let metrics_addr = l
                .local_addr()
                .context("reading the metrics listener's address")?;
            let m = Arc::new(metrics::Metrics::new(service.trees(), default_backend));
            background.spawn(metrics::serve_metrics(l, Arc::clone(&m)));
            tracing::info!(address = %metrics_addr, "metrics at http://{metrics_addr}/metrics");
            Some(m)
        }
        None => None,
    };
    let service = service.with_metrics(metrics.clone());

    let memcommit = MemCommitServer::new(service)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<MemCommitServer<MemCommitService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .context("loading the TLS certificate and key")?;
    }

    let mut shutdown = Box::pin(shutdown);
    if std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await {
        tracing::info!("shutdown requested before start");
        return Ok(());
    }
    tracing::info!(
        address = %addr,
        backend = default_backend.name(),
        tls = config.tls.is_some(),
        auth = config.auth_token.is_some(),
        memory_budget = ?config.memory_budget,
        ?limits,
        "memcommit listening"
    );
    builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Auth outside the size mapping: an unauthenticated call is refused before its body
        // is read. Observe outside both, so refused calls get request ids and are counted.
        .add_service(Observe {
            inner: RequireBearer {
                inner: MessageLimit {
                    inner: memcommit,
                    max_message_bytes: limits.max_message_bytes,
                },
                token: config.auth_token.clone(),
            },
            metrics,
        })
        // TCP_NODELAY: without it a reply that follows a partial segment waits for the
        // client's delayed ACK (~40 ms on Linux); the replay benchmark showed it on most
        // update steps.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .context("serving gRPC")?;
    tracing::info!("memcommit shut down");
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM. A signal whose handler cannot be
/// installed is logged and ignored, never taken as a shutdown request.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Wraps the generated server so that tonic's request-size rejection, which it reports as
/// `OUT_OF_RANGE` before our handlers run, reaches the client as `RESOURCE_EXHAUSTED`
/// naming `max_message_bytes` (docs/design.md: limits are `RESOURCE_EXHAUSTED`).
#[derive(Clone)]
struct MessageLimit<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S: NamedService> NamedService for MessageLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<http::Request<Body>> for MessageLimit<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let fut = self.inner.call(req);
        let limit = self.max_message_bytes;
        Box::pin(async move {
            let resp = fut.await?;
            // A decode failure is a trailers-only response: the status is in the headers.
            Ok(match tonic::Status::from_header_map(resp.headers()) {
                Some(s) if is_message_too_large(&s) => message_limit_status(s, limit).into_http(),
                _ => resp,
            })
        })
    }
}
