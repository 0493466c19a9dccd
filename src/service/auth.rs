//! Bearer-token authentication of `memcommit.v1.MemCommit` calls.
//!
//! The server wraps only the MemCommit service in [`RequireBearer`], so gRPC health and
//! reflection stay open (load balancers and `grpcurl list` need no secret). The client sends
//! `authorization: Bearer <token>` on every call through [`SendBearer`].

use std::convert::Infallible;
use std::fmt;
use std::path::Path;
use std::task::{Context, Poll};

use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::AsciiMetadataValue;
use tonic::server::NamedService;
use tonic::service::Interceptor;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// The metadata key the token travels in.
const AUTHORIZATION: &str = "authorization";

/// A bearer token shared by a server and its clients. Its `Debug` output never shows the
/// secret.
#[derive(Clone)]
pub struct AuthToken {
    token: String,
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl PartialEq for AuthToken {
    fn eq(&self, other: &Self) -> bool {
        self.matches(other.token.as_bytes())
    }
}

impl Eq for AuthToken {}

impl AuthToken {
    /// A token from its text.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `auth token` if it is empty or holds anything but
    /// visible ASCII (`!`..`~`: no spaces, no control characters), since it must travel in
    /// an HTTP header unchanged. The message never includes the token.
    pub fn new(token: impl Into<String>) -> Result<Self> {
        let token = token.into();
        if token.is_empty() {
            return Err(Error::invalid("auth token", "empty"));
        }
        if let Some(i) = token.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(Error::invalid(
                "auth token",
                format!(
                    "byte {i} is not visible ASCII (a token is one line of printable \
                     characters without spaces)"
                ),
            ));
        }
        Ok(AuthToken { token })
    }

    /// Reads a token file: one token, trailing whitespace (the final newline) trimmed.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::InvalidArgument`] naming the path
    /// if the token is empty or not visible ASCII ([`AuthToken::new`]), or (on Unix) if the
    /// file is readable by every user: a secret must not be world-readable (`chmod 600`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let field = || format!("auth token file {}", path.display());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| Error::io(field(), e))?
                .permissions()
                .mode();
            if mode & 0o004 != 0 {
                return Err(Error::invalid(
                    field(),
                    format!(
                        "is readable by every user (mode {:o}); chmod 600 it",
                        mode & 0o777
                    ),
                ));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(field(), e))?;
        AuthToken::new(text.trim_end()).map_err(|e| match e {
            Error::InvalidArgument { message, .. } => Error::invalid(field(), message),
            e => e,
        })
    }

    /// Whether `presented` equals the token, in time that depends on their lengths only.
    fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.token.as_bytes().ct_eq(presented))
    }

    /// The `authorization` header value, `Bearer <token>`.
    fn header_value(&self) -> Result<AsciiMetadataValue> {
        format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| Error::invalid("auth token", "not a valid header value"))
    }
}

/// Why a call was refused; logged, and sent without the token.
fn check(token: &AuthToken, headers: &http::HeaderMap) -> std::result::Result<(), &'static str> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or("missing authorization metadata")?;
    let value = value.as_bytes();
    // RFC 6750: the scheme is case-insensitive, followed by one space.
    let (scheme, presented) = value.split_at(value.len().min(7));
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Err("authorization is not a Bearer token");
    }
    if token.matches(presented) {
        Ok(())
    } else {
        Err("invalid bearer token")
    }
}

/// Server side: refuses a call without `authorization: Bearer <token>` with
/// `UNAUTHENTICATED`, before the request is decoded or reaches a handler. With no token
/// configured every call passes.
#[derive(Clone)]
pub(crate) struct RequireBearer<S> {
    pub inner: S,
    pub token: Option<AuthToken>,
}

impl<S: NamedService> NamedService for RequireBearer<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tonic::codegen::Service<http::Request<Body>> for RequireBearer<S>
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(token) = &self.token else {
            return Box::pin(self.inner.call(req));
        };
        match check(token, req.headers()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(reason) => {
                let peer = req
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(TcpConnectInfo::remote_addr)
                    .or_else(|| {
                        req.extensions()
                            .get::<tonic::transport::server::TlsConnectInfo<TcpConnectInfo>>()
                            .and_then(|i| i.get_ref().remote_addr())
                    });
                tracing::warn!(
                    method = req.uri().path(),
                    peer = ?peer,
                    reason,
                    "refused an unauthenticated call"
                );
                let status = Status::unauthenticated(format!(
                    "{reason}: this server needs `authorization: Bearer <token>` \
                     (memcommit --auth-token-file)"
                ));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Client side: adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone, Debug, Default)]
pub struct SendBearer {
    header: Option<AsciiMetadataValue>,
}

impl SendBearer {
    /// Sends `token` (or nothing when `None`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the token cannot be a header value (never for a token
    /// [`AuthToken::new`] accepted).
    pub fn new(token: Option<&AuthToken>) -> Result<Self> {
        Ok(SendBearer {
            header: token.map(AuthToken::header_value).transpose()?,
        })
    }
}

impl Interceptor for SendBearer {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert(AUTHORIZATION, h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(v) = value {
            h.insert(AUTHORIZATION, v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn bearer_check() {
        let t = AuthToken::new("s3cret-Token_1").expect("token");
        assert_eq!(check(&t, &headers(Some("Bearer s3cret-Token_1"))), Ok(()));
        assert_eq!(check(&t, &headers(Some("bearer s3cret-Token_1"))), Ok(()));
        assert_eq!(
            check(&t, &headers(Some("Bearer s3cret-Token_2"))),
            Err("invalid bearer token")
        );
        assert_eq!(
            check(&t, &headers(Some("Bearer s3cret"))),
            Err("invalid bearer token")
        );
        assert_eq!(
            check(&t, &headers(Some("Basic s3cret-Token_1"))),
            Err("authorization is not a Bearer token")
        );
        assert_eq!(
            check(&t, &headers(Some("Bear"))),
            Err("authorization is not a Bearer token")
        );
        assert_eq!(
            check(&t, &headers(None)),
            Err("missing authorization metadata")
        );
    }

    #[test]
    fn tokens_are_validated_and_redacted() {
        assert!(AuthToken::new("").is_err());
        let e = AuthToken::new("two words").unwrap_err();
        assert_eq!(e.to_string(), "invalid auth token: byte 3 is not visible ASCII (a token is one line of printable characters without spaces)");
        let t = AuthToken::new("abc").expect("token");
        assert_eq!(format!("{t:?}"), "AuthToken(<redacted>)");
        assert_eq!(t, AuthToken::new("abc").expect("token"));
        assert_ne!(t, AuthToken::new("abd").expect("token"));
    }

    #[cfg(unix)]
    #[test]
    fn token_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        write("tok3n\r\n", 0o600);
        assert_eq!(
            AuthToken::from_file(&path).expect("token"),
            AuthToken::new("tok3n").expect("token")
        );
        write("\n", 0o600);
        let e = AuthToken::from_file(&path).unwrap_err().to_string();
        assert!(e.ends_with(": empty"), "{e}");
        write("tok3n\n", 0o644);
        let e = AuthToken::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("readable by every user (mode 644)"), "{e}");
        write("a\nb\n", 0o600);
        assert!(AuthToken::from_file(&path).is_err());
        assert!(AuthToken::from_file(&dir.path().join("missing")).is_err());
    }
}
