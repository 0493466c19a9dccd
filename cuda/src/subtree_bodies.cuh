// The block-level subtree kernel (docs/design.md "CUDA", Subtrees): a block of
// SUBTREE_THREADS threads loads one node per thread (a leaf hashed from raw memory, or a
// digest of a previous launch) into shared memory, then folds level by level, every thread
// doing at most one compress per level step. Up to SUBTREE_LEVELS levels per launch; a taller
// subtree takes further launches over the previous launch's outputs (cell CELL_DIGEST).
//
// The body is written as phases: phase 0 loads, phase s (1..=SUBTREE_LEVELS) computes level
// s. The device runs `phase p; __syncthreads()` for p = 0..=levels; the host emulator runs
// phase p for every thread of a block, in a shuffled order, before phase p + 1, through a
// shared-memory accessor that bounds-checks every word and fails the launch when a word one
// thread writes is read or written by another thread in the same phase. Within a phase no
// thread touches a word another thread writes: phase s reads level s - 1 from one half of a
// ping-pong pair and writes level s to the other.
#pragma once

#include "memcommit/leaf.h"
#include "memcommit/tasks.h"

namespace mc {

// Threads per block of the subtree kernel, and the levels one launch folds (log2 of it).
constexpr uint32_t SUBTREE_LEVELS = MC_SUBTREE_LEVELS;
constexpr uint32_t SUBTREE_THREADS = 1u << SUBTREE_LEVELS;

// Shared memory, in 32-bit words: even levels (SUBTREE_THREADS digests), odd levels (half as
// many), then per thread the levels + 1 of the task whose node it loaded (0: idle thread) and
// that task's index. A level's digests are stored word-major (word w of node i at
// w * width + i), so a warp's threads touching consecutive nodes hit different banks.
constexpr uint32_t SH_EVEN = 0;
constexpr uint32_t SH_EVEN_WIDTH = SUBTREE_THREADS;
constexpr uint32_t SH_ODD = SH_EVEN + SH_EVEN_WIDTH * DIGEST_WORDS;
constexpr uint32_t SH_ODD_WIDTH = SUBTREE_THREADS / 2;
constexpr uint32_t SH_LEVELS = SH_ODD + SH_ODD_WIDTH * DIGEST_WORDS;
constexpr uint32_t SH_TASK = SH_LEVELS + SUBTREE_THREADS;
constexpr uint32_t SUBTREE_SHARED_WORDS = SH_TASK + SUBTREE_THREADS;

// Shared word of word `w` of node `i` of level `level`'s half.
MC_HD uint32_t sh_digest_word(uint32_t level, uint32_t i, uint32_t w) {
    return (level & 1) ? SH_ODD + w * SH_ODD_WIDTH + i : SH_EVEN + w * SH_EVEN_WIDTH + i;
}

// Shared memory as the device sees it: plain loads and stores.
struct DirectShared {
    uint32_t* words;
    MC_HD uint32_t load(uint32_t i) const { return words[i]; }
    MC_HD void store(uint32_t i, uint32_t v) const { words[i] = v; }
};

// A uniform launch: output t is the subtree over source nodes t * 2^levels .. of `src`
// (raw blocks of `cell`, or digests for CELL_DIGEST), for t < count. Thread g loads node g.
struct UniformJob {
    const uint8_t* src;
    uint32_t cell;
    uint32_t levels;
    uint32_t* out;
    uint64_t count;

    // The task of thread g and its levels; false for an idle thread.
    MC_HD bool find(uint64_t g, uint64_t* task, uint32_t* levels_out) const {
        if ((g >> levels) >= count) return false;
        *task = g >> levels;
        *levels_out = levels;
        return true;
    }
    MC_HD void node(uint64_t, uint64_t g, uint32_t* d) const { load_node(src, cell, g, d); }
    MC_HD uint32_t* output(uint64_t task) const { return out + DIGEST_WORDS * task; }
};

// A task-list launch (McHashTask): mixed heights, outputs anywhere in `nodes` or `fold`.
struct ListJob {
    const uint8_t* raw;
    uint32_t* fold;
    uint32_t* nodes;
    const McHashTask* tasks;
    uint64_t count;

    // Binary search for the last task starting at or before thread g.
    MC_HD bool find(uint64_t g, uint64_t* task, uint32_t* levels_out) const {
        if (count == 0 || tasks[0].first_thread > g) return false;
        uint64_t lo = 0, hi = count;  // tasks[lo].first_thread <= g < tasks[hi].first_thread
        while (hi - lo > 1) {
            const uint64_t mid = lo + (hi - lo) / 2;
            if (tasks[mid].first_thread <= g) lo = mid; else hi = mid;
        }
        const McHashTask& t = tasks[lo];
        if (g - t.first_thread >= (1ull << t.levels)) return false;
        *task = lo;
        *levels_out = t.levels;
        return true;
    }
    MC_HD void node(uint64_t task, uint64_t g, uint32_t* d) const {
        const McHashTask& t = tasks[task];
        const uint64_t j = g - t.first_thread;
        if (t.cell == CELL_DIGEST) {
            load_node(reinterpret_cast<const uint8_t*>(fold + DIGEST_WORDS * t.src), CELL_DIGEST, j, d);
        } else {
            load_node(raw + t.src, t.cell, j, d);
        }
    }
    MC_HD uint32_t* output(uint64_t task) const {
        const McHashTask& t = tasks[task];
        return ((t.flags & MC_HASH_OUT_FOLD) ? fold : nodes) + DIGEST_WORDS * t.out_node;
    }
};

// One phase of thread `i` of block `block` (see the file comment). A task of L levels is
// done at phase L, where the thread computing its root writes it out.
template <class Job, class Shared>
MC_HD void subtree_phase(uint32_t phase, uint64_t block, uint32_t i, const Shared& sh,
                         const Job& job) {
    uint32_t d[DIGEST_WORDS];
    if (phase == 0) {
        uint64_t task = 0;
        uint32_t levels = 0;
        if (!job.find(block * SUBTREE_THREADS + i, &task, &levels)) {
            sh.store(SH_LEVELS + i, 0);
            return;
        }
        job.node(task, block * SUBTREE_THREADS + i, d);
        sh.store(SH_LEVELS + i, levels + 1);
        sh.store(SH_TASK + i, (uint32_t)task);
        if (levels == 0) {
            uint32_t* out = job.output(task);
            for (uint32_t w = 0; w < DIGEST_WORDS; ++w) out[w] = d[w];
        } else {
            for (uint32_t w = 0; w < DIGEST_WORDS; ++w) sh.store(sh_digest_word(0, i, w), d[w]);
        }
        return;
    }
    // Thread i computes node i of level `phase` from nodes 2i and 2i + 1 of the level below,
    // when that node lies in a task of at least `phase` levels; its first source node is
    // loaded by thread i << phase.
    if (i >= (SUBTREE_THREADS >> phase)) return;
    const uint32_t first = i << phase;
    const uint32_t levels = sh.load(SH_LEVELS + first);
    if (levels < phase + 1) return;
    uint32_t left[DIGEST_WORDS], right[DIGEST_WORDS];
    for (uint32_t w = 0; w < DIGEST_WORDS; ++w) {
        left[w] = sh.load(sh_digest_word(phase - 1, 2 * i, w));
        right[w] = sh.load(sh_digest_word(phase - 1, 2 * i + 1, w));
    }
    compress(left, right, d);
    if (levels == phase + 1) {
        uint32_t* out = job.output(sh.load(SH_TASK + first));
        for (uint32_t w = 0; w < DIGEST_WORDS; ++w) out[w] = d[w];
    } else {
        for (uint32_t w = 0; w < DIGEST_WORDS; ++w) sh.store(sh_digest_word(phase, i, w), d[w]);
    }
}

}  // namespace mc
