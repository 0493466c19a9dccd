// Compilation-target macros shared by every memcommit CUDA header.
//
// The headers are compiled twice: by nvcc for the device (cuda/src/*.cu, feature `cuda`) and
// by the system C++ compiler for the host emulator (cuda/src/host_emulator.cpp, always), so
// the arithmetic the GPU runs is the arithmetic the tests check.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
// Callable from host and device code.
#define MC_HD __host__ __device__ __forceinline__
#else
#define MC_HD inline
#endif

// A constant table of u32: `__constant__` memory for device code and a plain constant array
// for host code (host code may not read a `__constant__` variable). Read it through
// MC_TABLE(name), which picks the copy for the code being compiled. Without nvcc only the
// host copy exists.
#if defined(__CUDACC__)
#define MC_CONST_TABLE(name, ...)                                        \
    static __constant__ const uint32_t name##_device[] = {__VA_ARGS__}; \
    static constexpr uint32_t name##_host[] = {__VA_ARGS__};
#else
#define MC_CONST_TABLE(name, ...) static constexpr uint32_t name##_host[] = {__VA_ARGS__};
#endif
#if defined(__CUDA_ARCH__)
#define MC_TABLE(name) name##_device
#else
#define MC_TABLE(name) name##_host
#endif
