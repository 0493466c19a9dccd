//! Build script:
//! - compiles `proto/memcommit/v1/memcommit.proto` into tonic/prost code plus an encoded file
//!   descriptor set for gRPC reflection;
//! - always compiles the CUDA headers and kernel bodies for the host (`cuda/src/host_emulator.cpp`,
//!   the kernel emulator the tests drive), with the system C++ compiler;
//! - with feature `cuda`, compiles `cuda/src/*.cu` with nvcc (docs/design.md "CUDA").

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile_protos()?;
    compile_cuda_host();
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_cuda_device()?;
    }
    Ok(())
}

/// Runs the vendored protoc, so a build needs no system protobuf compiler.
fn compile_protos() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable; a build script is single-threaded.
    std::env::set_var("PROTOC", protoc);
    // The cuda rerun-if-changed lines below turn off cargo's default "any file changed", and
    // tonic-prost-build emits none for the protos: list them, or a proto edit is not rebuilt.
    println!("cargo:rerun-if-changed=proto");
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

/// The device build (feature `cuda`): every `cuda/src/*.cu` through nvcc for sm_80 and sm_90,
/// plus compute_90 PTX for newer GPUs, with the CUDA runtime linked statically.
fn compile_cuda_device() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=NVCC");
    let nvcc = std::env::var_os("NVCC").unwrap_or_else(|| "nvcc".into());
    let found = std::process::Command::new(&nvcc)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        return Err(format!(
            "feature `cuda` needs nvcc, but `{}` could not be run: install the CUDA toolkit \
             (Debian: nvidia-cuda-toolkit from non-free) or set NVCC to its path",
            Path::new(&nvcc).display()
        )
        .into());
    }
    let mut sources = Vec::new();
    for entry in std::fs::read_dir("cuda/src")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "cu") {
            sources.push(path);
        }
    }
    sources.sort();
    let mut build = cc::Build::new();
    build
        .cuda(true)
        .cudart("static")
        .ccbin(false)
        .debug(false)
        .include("cuda/include")
        .files(&sources)
        .flag("-gencode=arch=compute_80,code=sm_80")
        .flag("-gencode=arch=compute_90,code=sm_90")
        .flag("-gencode=arch=compute_90,code=compute_90")
        .flag("-O3")
        .flag("--expt-relaxed-constexpr")
        .flag("-std=c++17")
        // Upstream nvcc 11.x refuses host compilers newer than it knows (e.g. gcc 12); the
        // code is plain C++17, so let it through.
        .flag("-allow-unsupported-compiler");
    build.try_compile("memcommit_cuda")?;
    Ok(())
}
