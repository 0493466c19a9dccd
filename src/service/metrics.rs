//! Prometheus metrics, served at `/metrics` on their own listener (`memcommit serve
//! --metrics-listen ADDR`; off by default). The listener needs no auth token, since the
//! scraper has none: bind it to a private interface (loopback, the pod network).
//!
//! Crate: `prometheus-client`, the Prometheus project's own Rust client. Its registry is a
//! value rather than a process-wide recorder (as `metrics` + `metrics-exporter-prometheus`
//! install), so each server, and each test server in one test process, has its own
//! counters. It has no HTTP listener; [`serve_metrics`] is a small hyper HTTP/1 one (hyper
//! is already in the tree through tonic). The exposition is OpenMetrics text, which
//! Prometheus scrapes natively.
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `memcommit_rpc_requests_total` | counter | `method`, `code` | finished `memcommit.v1` calls |
//! | `memcommit_rpc_duration_seconds` | histogram | `method`, `code` | call time, in seconds |
//! | `memcommit_trees` | gauge | | trees alive |
//! | `memcommit_host_bytes` | gauge | | host bytes the trees hold (`GetServerInfo.total_host_bytes`) |
//! | `memcommit_device_bytes` | gauge | | device bytes the trees hold (`GetServerInfo.total_device_bytes`) |
//! | `memcommit_reserved_host_bytes` | gauge | | host bytes reserved against `--max-host-bytes` |
//! | `memcommit_reserved_device_bytes` | gauge | | device bytes reserved against `--max-device-bytes` |
//! | `memcommit_permutations_total` | counter | | Poseidon2 permutations of builds, updates and openings |
//! | `memcommit_build_info` | info | `version`, `backend` | the server's version and default backend |
//!
//! `method` is the RPC name (`CreateTree` ...; `unknown` for a path outside the service) and
//! `code` the gRPC status name (`OK`, `NOT_FOUND`, `UNAUTHENTICATED` ...). Calls refused by
//! the bearer check or the message-size limit are counted too. A call whose client goes
//! away before the reply's trailers are sent counts as `CANCELLED`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry as PromRegistry;
use tonic::Code;

use crate::bench::count;
use crate::image::MemoryImage;
use crate::layout::MemoryLayout;
use crate::tree::{Backend, TouchedBlock};

use super::registry::Registry;
use super::status::code_name;

/// The `Content-Type` of the exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the duration buckets, in seconds: a `GetRoot` takes well under a
/// millisecond, a build of 2^28 cells minutes.
const DURATION_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

/// How long the listener waits for a request's headers before closing the connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The labels of the per-call metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

/// One server's metrics: the call counters and histograms, the permutation counter, and a
/// collector that reads the trees' gauges from the registry at scrape time.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: PromRegistry,
    requests: Family<RpcLabels, Counter>,
    durations: Family<RpcLabels, Histogram>,
    permutations: Counter,
}

impl Metrics {
    /// Metrics for a server whose trees live in `trees` and whose `auto` backend is
    /// `backend`.
    pub fn new(trees: Arc<Registry>, backend: Backend) -> Self {
        let mut registry = PromRegistry::default();
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "memcommit_rpc_requests",
            "Finished memcommit.v1 calls, by method and gRPC status code",
            requests.clone(),
        );
        let durations = Family::<RpcLabels, Histogram>::new_with_constructor(
            new_duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "memcommit_rpc_duration_seconds",
            "Time from a call's arrival to its status, in seconds",
            durations.clone(),
        );
        let permutations = Counter::default();
        registry.register(
            "memcommit_permutations",
            "Poseidon2-16 permutations done by builds, updates and openings (cpu and cuda trees)",
            permutations.clone(),
        );
        registry.register(
            "memcommit_build",
            "The server's version and default backend",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                ("backend", backend.name()),
            ]),
        );
        registry.register_collector(Box::new(TreeGauges { trees }));
        Metrics {
            registry,
            requests,
            durations,
            permutations,
        }
    }

    /// Counts one finished call of `method` with status `code` that took `elapsed`.
    pub fn record_call(&self, method: &'static str, code: Code, elapsed: Duration) {
        let labels = RpcLabels {
            method,
            code: code_name(code),
        };
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Adds `n` permutations.
    pub fn add_permutations(&self, n: u64) {
        self.permutations.inc_by(n);
    }

    /// The exposition text, ending in `# EOF`.
    ///
    /// # Errors
    /// Only if formatting into a `String` fails, which it does not.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn new_duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// The trees' gauges, read from the registry on every scrape so they are never stale.
#[derive(Debug)]
struct TreeGauges {
    trees: Arc<Registry>,
}

impl Collector for TreeGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let used = self.trees.used();
        let reserved = self.trees.reserved();
        let gauges: [(&str, &str, u64); 5] = [
            ("memcommit_trees", "Trees alive", self.trees.len() as u64),
            (
                "memcommit_host_bytes",
                "Host bytes the trees hold: stored digests and raw memory",
                used.host_node_bytes + used.host_raw_bytes,
            ),
            (
                "memcommit_device_bytes",
                "Device bytes the trees hold: stored digests and raw memory",
                used.device_node_bytes + used.device_raw_bytes,
            ),
            (
                "memcommit_reserved_host_bytes",
                "Host bytes reserved against max_host_bytes",
                reserved.host_bytes,
            ),
            (
                "memcommit_reserved_device_bytes",
                "Device bytes reserved against max_device_bytes",
                reserved.device_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            // i64 is the gauge's integer type; byte counts stay far below 2^63.
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Permutations of a build on `backend` (0 for the reference tree, a sparse test oracle
/// whose work is not the production trees').
pub(crate) fn build_permutations(
    backend: Backend,
    layout: &MemoryLayout,
    image: &MemoryImage,
) -> u64 {
    match backend {
        Backend::Cpu | Backend::Cuda => count::build_permutations(layout, image),
        Backend::Auto | Backend::Reference => 0,
    }
}

/// Permutations of one valid update batch on `backend` at `omitted_levels = k`.
pub(crate) fn update_permutations(
    backend: Backend,
    layout: &MemoryLayout,
    image: &MemoryImage,
    k: u32,
    blocks: &[TouchedBlock],
) -> u64 {
    match backend {
        Backend::Cpu | Backend::Cuda => count::update_permutations(layout, image, k, blocks),
        Backend::Auto | Backend::Reference => 0,
    }
}

/// Permutations of valid openings at `positions` on `backend` at `omitted_levels = k`.
pub(crate) fn opening_permutations(
    backend: Backend,
    layout: &MemoryLayout,
    image: &MemoryImage,
    k: u32,
    positions: &[(u32, u64)],
) -> u64 {
    count::opening_permutations(backend, layout, image, k, positions)
}

/// Serves `GET /metrics` (404 elsewhere, 405 for another method on it) on `listener`
/// until the task is dropped or aborted; connections live in a `JoinSet` owned by this
/// future, so they end with it.
pub(crate) async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // E.g. out of file descriptors: wait a moment rather than spin.
                        tracing::warn!(error = %e, "metrics listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let metrics = Arc::clone(&metrics);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let metrics = Arc::clone(&metrics);
                        async move { Ok::<_, std::convert::Infallible>(respond(&metrics, &req)) }
                    });
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "metrics connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The reply to one scrape request.
fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        resp
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    match metrics.encode() {
        Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(e) => {
            let mut text = String::new();
            let _ = writeln!(text, "encoding the metrics failed: {e}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::limits::Limits;

    #[test]
    fn exposition_names_and_units() {
        let m = Metrics::new(Arc::new(Registry::new(Limits::default())), Backend::Cpu);
        m.record_call("GetRoot", Code::NotFound, Duration::from_millis(2));
        m.add_permutations(7);
        let text = m.encode().expect("encode");
        for line in [
            "memcommit_rpc_requests_total{method=\"GetRoot\",code=\"NOT_FOUND\"} 1",
            "memcommit_rpc_duration_seconds_count{method=\"GetRoot\",code=\"NOT_FOUND\"} 1",
            "memcommit_rpc_duration_seconds_bucket{le=\"0.0025\",method=\"GetRoot\",code=\"NOT_FOUND\"} 1",
            "memcommit_rpc_duration_seconds_bucket{le=\"0.001\",method=\"GetRoot\",code=\"NOT_FOUND\"} 0",
            "memcommit_permutations_total 7",
            "memcommit_trees 0",
            "memcommit_host_bytes 0",
            "memcommit_device_bytes 0",
            &format!(
                "memcommit_build_info{{version=\"{}\",backend=\"cpu\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_code_has_its_grpc_name() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::from_i32(16)), "UNAUTHENTICATED");
        assert_eq!(code_name(Code::from_i32(8)), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Code::from_i32(4)), "DEADLINE_EXCEEDED");
    }
}
