//! Build script: compiles `proto/memcommit/v1/memcommit.proto` into tonic/prost code plus an
//! encoded file descriptor set for gRPC reflection. Later features (e.g. `cuda`) add their
//! own steps beside `compile_protos`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_protos()?;
    Ok(())
}

/// Runs the vendored protoc, so a build needs no system protobuf compiler.
fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable; a build script is single-threaded.
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // `bytes` fields become `Bytes`, sliced from the receive buffer without a copy.
        .bytes(".memcommit.v1")
        .file_descriptor_set_path(out_dir.join("memcommit_descriptor.bin"))
        .compile_protos(&["proto/memcommit/v1/memcommit.proto"], &["proto"])?;
    Ok(())
}
