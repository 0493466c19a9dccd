//! Build script:
//! - compiles `proto/memcommit/v1/memcommit.proto` into tonic/prost code plus an encoded file
//!   descriptor set for gRPC reflection;
//! - always compiles the CUDA headers and kernel bodies for the host (`cuda/src/host_emulator.cpp`,
//!   the kernel emulator the tests drive), with the system C++ compiler.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_protos()?;
    compile_cuda_host();
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

/// The host build of the CUDA code: the same headers and kernel bodies as the device build,
/// as C++17 at -O2 whatever the profile (the emulator tests hash a lot), linked statically.
fn compile_cuda_host() {
    println!("cargo:rerun-if-changed=cuda/include");
    println!("cargo:rerun-if-changed=cuda/src");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include("cuda/include")
        .file("cuda/src/host_emulator.cpp")
        .warnings(true)
        .extra_warnings(true)
        .compile("memcommit_cuda_host");
}
