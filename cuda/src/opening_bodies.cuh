// Kernel body for openings (docs/design.md Part 1 "Formats", Openings): one thread writes one
// opening's siblings, address_height digests in the slot (leaf level first) then
// address_space_height in the top tree. The host resolves every sibling to a node index (the
// page table and the sparse levels' maps live on the host); siblings below the stored base
// level are hashed into the fold scratch beforehand by the subtree kernel.
#pragma once

#include "memcommit/leaf.h"
#include "memcommit/tasks.h"
#include "memcommit/tree_index.h"

namespace mc {

MC_HD void copy_digest(const uint32_t* from, uint32_t* to) {
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) to[i] = from[i];
}

// Siblings for tasks[t], t < count, written to out[t * (ah + ash) digests ...] (see
// McOpenTask for where each level comes from): copies only. The siblings below the stored
// base level were hashed into `fold` by subtree-kernel launches before this one.
MC_HD void openings_body(uint64_t t, const uint32_t* nodes, const uint32_t* fold,
                         const uint32_t* zero, const McOpenTask* tasks, const uint64_t* listed,
                         uint64_t count, uint64_t top_offset, uint32_t address_height,
                         uint32_t address_space_height, uint32_t* out) {
    if (t >= count) return;
    const McOpenTask task = tasks[t];
    uint32_t* o = out + (uint64_t)DIGEST_WORDS * (address_height + address_space_height) * t;
    const uint64_t* list = listed + task.first_listed;
    uint32_t l = 0;
    for (; l < task.listed_from; ++l, o += DIGEST_WORDS, ++list) {
        copy_digest(fold + DIGEST_WORDS * *list, o);
    }
    for (; l < task.height; ++l, o += DIGEST_WORDS, ++list) {
        copy_digest(nodes + DIGEST_WORDS * *list, o);
    }
    for (; l < address_height; ++l, o += DIGEST_WORDS) {
        copy_digest(zero + DIGEST_WORDS * (uint64_t)l, o);
    }
    for (l = 0; l < address_space_height; ++l, o += DIGEST_WORDS) {
        uint64_t index = top_offset + top_level_offset(address_space_height, l) +
                         (((uint64_t)task.slot >> l) ^ 1);
        copy_digest(nodes + DIGEST_WORDS * index, o);
    }
}

}  // namespace mc
