//! The tonic gRPC service (`proto/memcommit/v1/memcommit.proto`). Filled in by the service
//! work.
