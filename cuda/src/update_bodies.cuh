// Kernel bodies for an update batch (docs/design.md "The stored tree", Update): scatter the new
// cells into raw memory, give pages the batch created their zero-hash nodes, recompute the
// distinct stored base-level nodes from raw memory (subtree-kernel task lists,
// subtree_bodies.cuh), then the distinct parents one level per
// launch. The host computes every node list; all launches go on one stream, so each launch sees
// the previous one's writes.
#pragma once

#include "memcommit/leaf.h"
#include "memcommit/tasks.h"

namespace mc {

// Writes one touched block into raw memory from the packed block bytes `bytes`, for
// t < count. Blocks are distinct (the batch is validated), so threads never write the same
// byte. Both offsets are multiples of 8 from 16-byte aligned buffers: the device moves whole
// 8-byte words; the host copies bytes, which needs no alignment.
MC_HD void scatter_body(uint64_t t, uint8_t* raw, const McWriteTask* tasks, const uint8_t* bytes,
                        uint64_t count) {
    if (t >= count) return;
    const McWriteTask task = tasks[t];
    const uint64_t n = block_bytes(task.cell);
#if defined(__CUDA_ARCH__)
    uint64_t* to = reinterpret_cast<uint64_t*>(raw + task.raw_byte);
    const uint64_t* from = reinterpret_cast<const uint64_t*>(bytes + task.src_byte);
    for (uint64_t i = 0; i < n / 8; ++i) to[i] = from[i];
#else
    for (uint64_t i = 0; i < n; ++i) raw[task.raw_byte + i] = bytes[task.src_byte + i];
#endif
}

// out[t] = *value (one digest), for t < count: a new page's level, or a dense upper level at
// build, starts as the level's zero hash. `value` must not lie in out[0..count).
MC_HD void fill_digests_body(uint64_t t, uint32_t* out, const uint32_t* value, uint64_t count) {
    if (t >= count) return;
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) out[DIGEST_WORDS * t + i] = value[i];
}

// parents[parent] = compress(children[left], children[right]) (see McPairTask), for
// t < count. `children` and `parents` may be the same array; one launch covers one level
// step of every touched slot, so no task reads another task's parent.
MC_HD void compress_pairs_body(uint64_t t, const uint32_t* children, uint32_t* parents,
                               const McPairTask* tasks, uint64_t count) {
    if (t >= count) return;
    const McPairTask task = tasks[t];
    compress(children + DIGEST_WORDS * task.left, children + DIGEST_WORDS * task.right,
             parents + DIGEST_WORDS * task.parent);
}

}  // namespace mc
