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
    #[error("server returned {}: {message}", crate::service::status::code_name(*.code))]
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

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
