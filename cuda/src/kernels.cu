// The __global__ kernels and extern "C" launchers (memcommit/launchers.h). Each kernel is a
// thin wrapper that computes its 64-bit thread index and calls the shared body; the host
// emulator calls the same bodies, so only this file is untested without a GPU.
#include "build_bodies.cuh"
#include "fused_bodies.cuh"
#include "opening_bodies.cuh"
#include "page_round_bodies.cuh"
#include "subtree_bodies.cuh"
#include "update_bodies.cuh"

#ifdef __CUDACC__

#include "memcommit/launchers.h"

namespace {

// Threads per block: one permutation per thread with the state in registers. The subtree
// kernels' blocks are the same size (mc::SUBTREE_THREADS).
constexpr uint32_t THREADS = 256;
static_assert(THREADS == mc::SUBTREE_THREADS, "grid_for sizes the subtree kernels' grids");

__device__ __forceinline__ uint64_t thread_index() {
    return (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
}

__global__ void zero_hashes_kernel(uint32_t* zero, uint32_t count) {
    mc::zero_hashes_body(thread_index(), zero, count);
}

// The subtree kernel's phases with a block barrier after each (subtree_bodies.cuh).
template <class Job>
__device__ __forceinline__ void run_subtree(const Job& job, uint32_t levels) {
    __shared__ uint32_t words[mc::SUBTREE_SHARED_WORDS];
    const mc::DirectShared sh{words};
    for (uint32_t phase = 0; phase <= levels; ++phase) {
        mc::subtree_phase(phase, blockIdx.x, threadIdx.x, sh, job);
        __syncthreads();
    }
}

__global__ void __launch_bounds__(mc::SUBTREE_THREADS)
    build_base_kernel(const uint8_t* src, uint32_t cell, uint32_t levels, uint32_t* out,
                      uint64_t count) {
    run_subtree(mc::UniformJob{src, cell, levels, out, count}, levels);
}

__global__ void compress_level_kernel(const uint32_t* children, uint32_t* parents,
                                      uint64_t count) {
    mc::compress_level_body(thread_index(), children, parents, count);
}

__global__ void vertical_kernel(uint32_t* nodes, const uint32_t* zero,
                                const McVerticalTask* tasks, uint64_t count) {
    mc::vertical_body(thread_index(), nodes, zero, tasks, count);
}

__global__ void scatter_kernel(uint8_t* raw, const McWriteTask* tasks, const uint8_t* bytes,
                               uint64_t count) {
    mc::scatter_body(thread_index(), raw, tasks, bytes, count);
}

__global__ void __launch_bounds__(mc::SUBTREE_THREADS)
    hash_tasks_kernel(const uint8_t* raw, uint32_t* fold, uint32_t* nodes,
                      const McHashTask* tasks, uint64_t count, uint32_t levels) {
    run_subtree(mc::ListJob{raw, fold, nodes, tasks, count}, levels);
}

__global__ void fill_digests_kernel(uint32_t* out, const uint32_t* value, uint64_t count) {
    mc::fill_digests_body(thread_index(), out, value, count);
}

__global__ void compress_pairs_kernel(const uint32_t* children, uint32_t* parents,
                                      const McPairTask* tasks, uint64_t count) {
    mc::compress_pairs_body(thread_index(), children, parents, tasks, count);
}

__global__ void openings_kernel(const uint32_t* nodes, const uint32_t* fold,
                                const uint32_t* zero, const McOpenTask* tasks,
                                const uint64_t* listed, uint64_t count, uint64_t top_offset,
                                uint32_t address_height, uint32_t address_space_height,
                                uint32_t* out) {
    mc::openings_body(thread_index(), nodes, fold, zero, tasks, listed, count, top_offset,
                      address_height, address_space_height, out);
}

__global__ void page_round_kernel(uint32_t* nodes, const McPageSlot* slots,
                                  const McPageNode* list, uint64_t count, uint32_t step) {
    mc::page_round_body(thread_index(), nodes, slots, list, count, step);
}

// Threads of the fused tail's one block: every phase of up to this many tasks runs in one
// pass. The bound caps registers at 128 a thread, so no body spills to reach it.
constexpr uint32_t FUSED_THREADS = 512;

__global__ void __launch_bounds__(FUSED_THREADS)
    fused_kernel(const McPhase* phases, uint32_t phase_count, uint32_t* nodes, uint32_t* fold,
                 const uint32_t* zero, const uint8_t* staging, const McPageSlot* page_slots,
                 const McPageNode* page_nodes) {
    for (uint32_t p = 0; p < phase_count; ++p) {
        const McPhase phase = phases[p];
        for (uint64_t t = threadIdx.x; t < phase.count; t += blockDim.x) {
            mc::fused_phase_body(t, phase, nodes, fold, zero, staging, page_slots, page_nodes);
        }
        // The next phase reads what this one wrote.
        __syncthreads();
    }
}

// Blocks for `count` threads, or 0 when the grid would exceed CUDA's 2^31 - 1 limit.
uint32_t grid_for(uint64_t count) {
    uint64_t blocks = (count + THREADS - 1) / THREADS;
    return blocks > 0x7fffffffull ? 0 : (uint32_t)blocks;
}

}  // namespace

// Launches `kernel` over `count` threads on `stream`; nothing to do for count == 0.
#define MC_LAUNCH(kernel, count, stream, ...)                          \
    do {                                                               \
        if ((count) == 0) return cudaSuccess;                          \
        uint32_t grid = grid_for(count);                               \
        if (grid == 0) return cudaErrorInvalidConfiguration;           \
        kernel<<<grid, THREADS, 0, (stream)>>>(__VA_ARGS__);           \
        return cudaGetLastError();                                     \
    } while (0)

extern "C" cudaError_t mc_launch_zero_hashes(uint32_t* zero, uint32_t count,
                                             cudaStream_t stream) {
    if (count == 0) return cudaSuccess;
    zero_hashes_kernel<<<1, 1, 0, stream>>>(zero, count);
    return cudaGetLastError();
}

extern "C" cudaError_t mc_launch_build_base(const uint8_t* src, uint32_t cell, uint32_t levels,
                                            uint32_t* out, uint64_t count,
                                            cudaStream_t stream) {
    if (levels > mc::SUBTREE_LEVELS || cell > mc::CELL_DIGEST || count > (1ull << 32)) {
        return cudaErrorInvalidValue;
    }
    MC_LAUNCH(build_base_kernel, count << levels, stream, src, cell, levels, out, count);
}

extern "C" cudaError_t mc_launch_compress_level(const uint32_t* children, uint32_t* parents,
                                                uint64_t count, cudaStream_t stream) {
    MC_LAUNCH(compress_level_kernel, count, stream, children, parents, count);
}

extern "C" cudaError_t mc_launch_vertical(uint32_t* nodes, const uint32_t* zero,
                                          const McVerticalTask* tasks, uint64_t count,
                                          cudaStream_t stream) {
    MC_LAUNCH(vertical_kernel, count, stream, nodes, zero, tasks, count);
}

extern "C" cudaError_t mc_launch_scatter(uint8_t* raw, const McWriteTask* tasks,
                                         const uint8_t* bytes, uint64_t count,
                                         cudaStream_t stream) {
    MC_LAUNCH(scatter_kernel, count, stream, raw, tasks, bytes, count);
}

extern "C" cudaError_t mc_launch_hash_tasks(const uint8_t* raw, uint32_t* fold, uint32_t* nodes,
                                            const McHashTask* tasks, uint64_t count,
                                            uint64_t threads, uint32_t levels,
                                            cudaStream_t stream) {
    if (count == 0) return cudaSuccess;
    if (levels > mc::SUBTREE_LEVELS || count > 0xffffffffull) return cudaErrorInvalidValue;
    MC_LAUNCH(hash_tasks_kernel, threads, stream, raw, fold, nodes, tasks, count, levels);
}

extern "C" cudaError_t mc_launch_fill_digests(uint32_t* out, const uint32_t* value,
                                              uint64_t count, cudaStream_t stream) {
    MC_LAUNCH(fill_digests_kernel, count, stream, out, value, count);
}

extern "C" cudaError_t mc_launch_compress_pairs(const uint32_t* children, uint32_t* parents,
                                                const McPairTask* tasks, uint64_t count,
                                                cudaStream_t stream) {
    MC_LAUNCH(compress_pairs_kernel, count, stream, children, parents, tasks, count);
}

extern "C" cudaError_t mc_launch_openings(const uint32_t* nodes, const uint32_t* fold, const uint32_t* zero,
                                          const McOpenTask* tasks, const uint64_t* listed,
                                          uint64_t count, uint64_t top_offset,
                                          uint32_t address_height,
                                          uint32_t address_space_height, uint32_t* out,
                                          cudaStream_t stream) {
    MC_LAUNCH(openings_kernel, count, stream, nodes, fold, zero, tasks, listed, count,
              top_offset, address_height, address_space_height, out);
}

extern "C" cudaError_t mc_launch_page_round(uint32_t* nodes, const McPageSlot* slots,
                                            const McPageNode* list, uint64_t count,
                                            uint32_t step, cudaStream_t stream) {
    MC_LAUNCH(page_round_kernel, count, stream, nodes, slots, list, count, step);
}

extern "C" cudaError_t mc_launch_fused(const McPhase* phases, uint32_t phase_count,
                                       uint32_t* nodes, uint32_t* fold, const uint32_t* zero,
                                       const uint8_t* staging, const McPageSlot* page_slots,
                                       const McPageNode* page_nodes, cudaStream_t stream) {
    if (phase_count == 0) return cudaSuccess;
    fused_kernel<<<1, FUSED_THREADS, 0, stream>>>(phases, phase_count, nodes, fold, zero,
                                                  staging, page_slots, page_nodes);
    return cudaGetLastError();
}

#endif  // __CUDACC__
