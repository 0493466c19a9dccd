// Kernel bodies for an update batch (DESIGN.md "Update"): scatter the new cells into raw
// memory, recompute the distinct stored base-level nodes from raw memory, then the distinct
// parents one level per launch. The host computes every node list; all launches go on one
// stream, so each launch sees the previous one's writes.
#pragma once

#include "memcommit/leaf.h"
#include "memcommit/tasks.h"

namespace mc {

// Writes one touched block into raw memory, for t < count. Blocks are distinct (the batch
// is validated), so threads never write the same byte.
MC_HD void scatter_body(uint64_t t, uint8_t* raw, const McWriteTask* tasks, uint64_t count) {
    if (t >= count) return;
    const McWriteTask& task = tasks[t];
    write_block(raw + task.raw_byte, task.cell, 0, task.cells);
}

// Recomputes one stored node from raw memory (see McHashTask), for t < count.
MC_HD void hash_tasks_body(uint64_t t, const uint8_t* raw, const McHashTask* tasks,
                           uint64_t count, uint32_t* nodes) {
    if (t >= count) return;
    const McHashTask task = tasks[t];
    subtree_from_raw(raw + task.raw_byte, task.cell, 0, task.levels,
                     nodes + DIGEST_WORDS * task.out_node);
}

// nodes[parent] = compress(nodes[left], nodes[left + 1]) (see McPairTask), for t < count.
// One launch covers one level of every touched slot (or one top-tree level).
MC_HD void compress_pairs_body(uint64_t t, uint32_t* nodes, const McPairTask* tasks,
                               uint64_t count) {
    if (t >= count) return;
    const McPairTask task = tasks[t];
    compress(nodes + DIGEST_WORDS * task.left, nodes + DIGEST_WORDS * (task.left + 1),
             nodes + DIGEST_WORDS * task.parent);
}

}  // namespace mc
