// Kernel bodies for building the tree: one call computes what one CUDA thread computes, for
// thread index `t` (64-bit: a 2^32-block slot has 2^32 leaves). The __global__ wrappers in
// kernels.cu and the host emulator in host_emulator.cpp both call these, so the emulator
// tests run exactly the device's per-thread code. Subtrees from raw memory (the stored base
// level, page roots) are folded by the block-level kernel of subtree_bodies.cuh.
#pragma once

#include "memcommit/leaf.h"
#include "memcommit/tasks.h"
#include "subtree_bodies.cuh"

namespace mc {

// zero[0] = leaf_hash([0; 8]), zero[h + 1] = compress(zero[h], zero[h]) for h < count - 1.
// A sequential chain: only thread 0 works (one-thread launch).
MC_HD void zero_hashes_body(uint64_t t, uint32_t* zero, uint32_t count) {
    if (t != 0 || count == 0) return;
    const uint32_t cells[BLOCK_CELLS] = {0, 0, 0, 0, 0, 0, 0, 0};
    leaf_hash(cells, zero);
    for (uint32_t h = 1; h < count; ++h) {
        compress(zero + DIGEST_WORDS * (h - 1), zero + DIGEST_WORDS * (h - 1), zero + DIGEST_WORDS * h);
    }
}

// Dense level compress: parents[t] = compress(children[2t], children[2t + 1]), t < count.
MC_HD void compress_level_body(uint64_t t, const uint32_t* children, uint32_t* parents,
                               uint64_t count) {
    if (t >= count) return;
    compress(children + DIGEST_WORDS * (2 * t), children + DIGEST_WORDS * (2 * t + 1),
             parents + DIGEST_WORDS * t);
}

// Vertical path of one slot and its top-tree leaf (see McVerticalTask), for t < count.
MC_HD void vertical_body(uint64_t t, uint32_t* nodes, const uint32_t* zero,
                         const McVerticalTask* tasks, uint64_t count) {
    if (t >= count) return;
    const McVerticalTask task = tasks[t];
    uint32_t node[DIGEST_WORDS];
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) node[i] = nodes[DIGEST_WORDS * task.slot_root + i];
    for (uint32_t j = 0; j < task.count; ++j) {
        compress(node, zero + DIGEST_WORDS * (uint64_t)(task.height + j), node);
        for (uint32_t i = 0; i < DIGEST_WORDS; ++i) {
            nodes[DIGEST_WORDS * (task.first_vertical + j) + i] = node[i];
        }
    }
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) nodes[DIGEST_WORDS * task.top_leaf + i] = node[i];
}

}  // namespace mc
