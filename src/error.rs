//! The crate's one error type. Each variant corresponds to one gRPC status code (see
//! `service::status`), so a backend error keeps its meaning all the way to the client.

/// Errors returned by layout validation, trees, traces and the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input. `field` names the offending field (a JSON path such as
    /// `address_spaces[1].num_cells` or `blocks[3].slot`); `message` gives the value and why.
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: String, message: String },
    /// An unknown tree id.
    #[error("not found: {0}")]
    NotFound(String),
    /// A call in the wrong order (e.g. `UpdateBlocks` before `BuildTree`).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A configured limit or an allocation would be exceeded.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A device or backend is not usable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An error status a memcommit server returned (client side: replay and tests), kept
    /// with its gRPC code so it maps back to the same code. Displayed with the code's
    /// canonical name, e.g. `server returned UNAUTHENTICATED: …`.
    #[error("server returned {}: {message}", code_name(*.code))]
    Remote { code: tonic::Code, message: String },
    /// File-system or stream I/O (CLI and traces only).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::InvalidArgument`] naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Io`] with a context line such as the file path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The canonical upper-snake name of a gRPC code (`UNAUTHENTICATED`, `NOT_FOUND`, …), as
/// the gRPC spec and tools such as `grpcurl` spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
