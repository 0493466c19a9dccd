/* C launchers for the memcommit kernels (cuda/src/kernels.cu, built with feature `cuda`).
 *
 * Every launcher takes raw device pointers and a stream, queues its kernel on that stream and
 * returns the launch's cudaError_t (cudaSuccess when nothing needed launching). Digests are 8
 * Montgomery words (uint32); node indices and array shapes are as in memcommit/tasks.h and
 * memcommit/tree_index.h. Pointers must be device allocations large enough for the shapes
 * given; raw buffers must start 16-byte aligned (cudaMalloc gives 256).
 *
 * The host emulator (cuda/src/host_emulator.cpp) exports an mc_emu_* twin of each launcher,
 * with the same arguments minus the stream, that runs the same per-thread bodies. */
#ifndef MEMCOMMIT_LAUNCHERS_H
#define MEMCOMMIT_LAUNCHERS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "memcommit/tasks.h"

#ifdef __cplusplus
extern "C" {
#endif

/* zero[0..count) zero hashes (count digests). One thread. */
cudaError_t mc_launch_zero_hashes(uint32_t* zero, uint32_t count, cudaStream_t stream);

/* out[t] = root of the height-`levels` subtree over nodes t*2^levels.. of `src`, for
 * t < count: the leaf hashes of raw blocks (cell 0..=2; a slot's raw memory) or digests
 * (cell 3: a previous launch's outputs). One launch of the block-level subtree kernel:
 * levels <= MC_SUBTREE_LEVELS and count <= 2^32, else cudaErrorInvalidValue. */
cudaError_t mc_launch_build_base(const uint8_t* src, uint32_t cell, uint32_t levels,
                                 uint32_t* out, uint64_t count, cudaStream_t stream);

/* parents[t] = compress(children[2t], children[2t+1]) for t < count. */
cudaError_t mc_launch_compress_level(const uint32_t* children, uint32_t* parents,
                                     uint64_t count, cudaStream_t stream);

/* Vertical paths and top-tree leaves: tasks[0..count). */
cudaError_t mc_launch_vertical(uint32_t* nodes, const uint32_t* zero,
                               const McVerticalTask* tasks, uint64_t count,
                               cudaStream_t stream);

/* Writes tasks[0..count) into raw memory, each block's bytes from `bytes`. */
cudaError_t mc_launch_scatter(uint8_t* raw, const McWriteTask* tasks, const uint8_t* bytes,
                              uint64_t count, cudaStream_t stream);

/* out[t] = *value (one digest) for t < count; `value` lies outside out[0..count). */
cudaError_t mc_launch_fill_digests(uint32_t* out, const uint32_t* value, uint64_t count,
                                   cudaStream_t stream);

/* Folds the subtrees tasks[0..count) (McHashTask: from raw memory or from `fold`, into
 * `nodes` or `fold`) with the block-level subtree kernel over `threads` threads (the last
 * task's first_thread + 2^levels); `levels` is the tallest task's, <= MC_SUBTREE_LEVELS. */
cudaError_t mc_launch_hash_tasks(const uint8_t* raw, uint32_t* fold, uint32_t* nodes,
                                 const McHashTask* tasks, uint64_t count, uint64_t threads,
                                 uint32_t levels, cudaStream_t stream);

/* parents[parent] = compress(children[left], children[right]) for tasks[0..count);
 * `children` and `parents` may be the same array. */
cudaError_t mc_launch_compress_pairs(const uint32_t* children, uint32_t* parents,
                                     const McPairTask* tasks, uint64_t count,
                                     cudaStream_t stream);

/* Siblings of tasks[0..count): out holds count * (address_height + address_space_height)
 * digests. `listed` holds the node indices the tasks name (into `fold`, then `nodes`); `zero`
 * is zero[0..=address_height] and `top_offset` the top tree's index in `nodes`. */
cudaError_t mc_launch_openings(const uint32_t* nodes, const uint32_t* fold,
                               const uint32_t* zero, const McOpenTask* tasks,
                               const uint64_t* listed, uint64_t count, uint64_t top_offset,
                               uint32_t address_height, uint32_t address_space_height,
                               uint32_t* out, cudaStream_t stream);

/* Step `step` of an update's page rounds (McPageNode): level b + 1 + step of each listed
 * node's slot, list[0..count) sorted by slot and block; `slots` is the McPageSlot table. */
cudaError_t mc_launch_page_round(uint32_t* nodes, const McPageSlot* slots,
                                 const McPageNode* list, uint64_t count, uint32_t step,
                                 cudaStream_t stream);

/* The fused tail: phases[0..phase_count) in order in one single-block launch (512 threads),
 * a block barrier between phases. Task arrays lie at each phase's byte offset from `staging`;
 * page rounds use `page_slots` and `page_nodes`. */
cudaError_t mc_launch_fused(const McPhase* phases, uint32_t phase_count, uint32_t* nodes,
                            uint32_t* fold, const uint32_t* zero, const uint8_t* staging,
                            const McPageSlot* page_slots, const McPageNode* page_nodes,
                            cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
