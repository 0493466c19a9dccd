//! Request ids, the per-call tracing span, and the per-call metrics, in one layer around
//! the whole `memcommit.v1.MemCommit` service (outside the bearer check and the message-size
//! mapping, so refused calls are seen too).
//!
//! - The request id is the `x-request-id` request metadata when it is 1 to
//!   [`MAX_REQUEST_ID_LEN`] visible ASCII characters (`!`..`~`), else a new UUID v4. It is
//!   echoed in the `x-request-id` response metadata (headers, so also on errors).
//! - Each call runs in the span `rpc{method, request_id}`, which handlers carry into their
//!   blocking work, so every log line of a call names its request id.
//! - The status code of a call is read where it is decided: from the response headers of a
//!   trailers-only reply (every error tonic or a layer returns), else from the trailers of
//!   the body (an `OK` unary reply sends `grpc-status` there). The call is counted when its
//!   status is known, which is before the client sees it; a reply dropped before its
//!   trailers (the client went away) counts as `CANCELLED`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;
use tonic::Code;
use tracing::Instrument;

use super::metrics::Metrics;

/// The metadata key of the request id, in requests and responses.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id taken from a client, in bytes; a longer one is replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The RPCs of `memcommit.v1.MemCommit`, as the `method` label and span field name them.
const METHODS: [&str; 9] = [
    "CreateTree",
    "WriteMemory",
    "BuildTree",
    "UpdateBlocks",
    "GetRoot",
    "GetOpenings",
    "DropTree",
    "ListTrees",
    "GetServerInfo",
];

/// The method of a request path `/memcommit.v1.MemCommit/NAME`; `unknown` for any other
/// path, so a client cannot add label values at will.
fn method_of(path: &str, service: &str) -> &'static str {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(service))
        .and_then(|p| p.strip_prefix('/'))
        .and_then(|name| METHODS.iter().find(|m| **m == name))
        .copied()
        .unwrap_or("unknown")
}

/// The client's request id if it is acceptable (1 to [`MAX_REQUEST_ID_LEN`] bytes of
/// visible ASCII), else a new UUID v4.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID_HEADER)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(u8::is_ascii_graphic)
        })
        .cloned()
        .unwrap_or_else(|| {
            // A hyphenated UUID is always a valid header value.
            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid-uuid"))
        })
}

/// The `grpc-status` in `headers`, if there is one.
fn status_code(headers: &HeaderMap) -> Option<Code> {
    let v = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(v))
}

/// The layer: see the module docs. `metrics` is `None` when `--metrics-listen` is off; the
/// request ids and spans are always on.
#[derive(Clone)]
pub(crate) struct Observe<S> {
    pub inner: S,
    pub metrics: Option<Arc<Metrics>>,
}

impl<S: NamedService> NamedService for Observe<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<http::Request<Body>> for Observe<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + NamedService
        + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let started = Instant::now();
        let method = method_of(req.uri().path(), S::NAME);
        let id = request_id(req.headers());
        let span = tracing::info_span!(
            "rpc",
            method,
            request_id = %String::from_utf8_lossy(id.as_bytes())
        );
        // The bearer check logs inside `call`, before any future runs.
        let fut = span.in_scope(|| self.inner.call(req));
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let Ok(mut resp) = fut.await;
                resp.headers_mut().insert(REQUEST_ID_HEADER, id);
                let Some(metrics) = metrics else {
                    return Ok(resp);
                };
                let mut recorder = Recorder {
                    metrics,
                    method,
                    started,
                    done: false,
                };
                if let Some(code) = status_code(resp.headers()) {
                    recorder.record(code);
                    return Ok(resp);
                }
                if http_body::Body::is_end_stream(resp.body()) {
                    // No status in the headers and no body to carry trailers.
                    recorder.record(Code::Unknown);
                    return Ok(resp);
                }
                Ok(resp.map(|inner| Body::new(Counted { inner, recorder })))
            }
            .instrument(span),
        )
    }
}

/// Counts one call once.
struct Recorder {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    done: bool,
}

impl Recorder {
    fn record(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.metrics
                .record_call(self.method, code, self.started.elapsed());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The reply was dropped before its status went out.
        self.record(Code::Cancelled);
    }
}

/// A reply body that counts the call when its trailers pass.
struct Counted {
    inner: Body,
    recorder: Recorder,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.recorder
                        .record(status_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.recorder.record(status.code()),
            Poll::Ready(None) => this.recorder.record(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_match_the_proto() {
        let proto = include_str!("../../proto/memcommit/v1/memcommit.proto");
        let rpcs: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        assert_eq!(rpcs, METHODS);
    }

    #[test]
    fn method_labels_are_bounded() {
        let s = "memcommit.v1.MemCommit";
        assert_eq!(method_of("/memcommit.v1.MemCommit/GetRoot", s), "GetRoot");
        assert_eq!(method_of("/memcommit.v1.MemCommit/Nope", s), "unknown");
        assert_eq!(method_of("/other.Service/GetRoot", s), "unknown");
        assert_eq!(method_of("/memcommit.v1.MemCommitX/GetRoot", s), "unknown");
    }

    fn id_for(value: Option<&[u8]>) -> String {
        let mut h = HeaderMap::new();
        if let Some(v) = value {
            h.insert(
                REQUEST_ID_HEADER,
                HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        String::from_utf8(request_id(&h).as_bytes().to_vec()).expect("ascii")
    }

    fn is_uuid_v4(s: &str) -> bool {
        uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 4)
    }

    #[test]
    fn request_ids_are_kept_or_replaced() {
        assert_eq!(id_for(Some(b"abc-123")), "abc-123");
        let longest = "x".repeat(MAX_REQUEST_ID_LEN);
        assert_eq!(id_for(Some(longest.as_bytes())), longest);
        for bad in [
            &b""[..],
            &b"has space"[..],
            &b"tab\there"[..],
            "x".repeat(MAX_REQUEST_ID_LEN + 1).as_bytes(),
            &[0xc3, 0xa9][..],
        ] {
            let id = id_for(Some(bad));
            assert!(is_uuid_v4(&id), "{bad:?} gave {id:?}");
        }
        assert!(is_uuid_v4(&id_for(None)));
        assert_ne!(id_for(None), id_for(None));
    }
}
