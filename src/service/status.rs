//! Mapping from [`crate::Error`] to gRPC status codes, one variant to one code.

use tonic::{Code, Status};

use crate::error::Error;

/// The gRPC code of each [`Error`] variant: `InvalidArgument` → `INVALID_ARGUMENT`,
/// `NotFound` → `NOT_FOUND`, `FailedPrecondition` → `FAILED_PRECONDITION`,
/// `ResourceExhausted` → `RESOURCE_EXHAUSTED`, `Unavailable` → `UNAVAILABLE`,
/// `Io` → `INTERNAL`.
pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Remote { code, .. } => *code,
        Error::Io { .. } => Code::Internal,
    }
}

pub use crate::error::code_name;

impl From<Status> for Error {
    /// A status received from a server, as [`Error::Remote`] with the same code.
    fn from(s: Status) -> Error {
        Error::Remote {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

impl From<Error> for Status {
    /// The status with [`code`] and the error's display text (which names the field and
    /// value for `InvalidArgument`).
    fn from(e: Error) -> Status {
        Status::new(code(&e), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_code() {
        let io = std::io::Error::other("disk");
        let cases = [
            (Error::invalid("blocks[0].slot", "9"), Code::InvalidArgument),
            (Error::NotFound("t".into()), Code::NotFound),
            (
                Error::FailedPrecondition("p".into()),
                Code::FailedPrecondition,
            ),
            (
                Error::ResourceExhausted("r".into()),
                Code::ResourceExhausted,
            ),
            (Error::Unavailable("u".into()), Code::Unavailable),
            (Error::io("file", io), Code::Internal),
            (Error::from(Status::not_found("tree t")), Code::NotFound),
        ];
        for (e, c) in cases {
            let text = e.to_string();
            let s = Status::from(e);
            assert_eq!(s.code(), c);
            assert_eq!(s.message(), text);
        }
        let remote = Error::from(Status::unauthenticated("invalid bearer token"));
        assert_eq!(
            remote.to_string(),
            "server returned UNAUTHENTICATED: invalid bearer token"
        );
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        let s = Status::from(Error::invalid("blocks[0].slot", "slot 9 does not exist"));
        assert_eq!(s.message(), "invalid blocks[0].slot: slot 9 does not exist");
    }
}
