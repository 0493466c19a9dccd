// Kernel body for openings (DESIGN.md Part 1 "Openings"): one thread writes one opening's
// siblings, address_height digests in the slot (leaf level first) then address_space_height
// in the top tree.
#pragma once

#include "memcommit/leaf.h"
#include "memcommit/tasks.h"
#include "memcommit/tree_index.h"

namespace mc {

MC_HD void copy_digest(const uint32_t* from, uint32_t* to) {
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) to[i] = from[i];
}

// Siblings for tasks[t], t < count, written to out[t * (ah + ash) digests ...]. Siblings
// below the stored base level are recomputed from raw memory (the sibling at level l < b is
// the subtree of height l next to the block's: 2^b - 1 leaf hashes in all); stored levels
// are read from `nodes`; the vertical path's siblings are zero hashes; the top tree's are
// read at `top_offset`.
MC_HD void openings_body(uint64_t t, const uint8_t* raw, const uint32_t* nodes,
                         const uint32_t* zero, const McOpenTask* tasks, uint64_t count,
                         uint64_t top_offset, uint32_t address_height,
                         uint32_t address_space_height, uint32_t* out) {
    if (t >= count) return;
    const McOpenTask task = tasks[t];
    uint32_t* o = out + (uint64_t)DIGEST_WORDS * (address_height + address_space_height) * t;
    const uint8_t* slot_raw = raw + task.raw_slot_byte;
    for (uint32_t l = 0; l < task.base; ++l, o += DIGEST_WORDS) {
        subtree_from_raw(slot_raw, task.cell, ((task.block >> l) ^ 1) << l, l, o);
    }
    for (uint32_t l = task.base; l < task.height; ++l, o += DIGEST_WORDS) {
        uint64_t index = task.slot_node + level_offset(task.height, task.base, l) +
                         ((task.block >> l) ^ 1);
        copy_digest(nodes + DIGEST_WORDS * index, o);
    }
    for (uint32_t l = task.height; l < address_height; ++l, o += DIGEST_WORDS) {
        copy_digest(zero + DIGEST_WORDS * (uint64_t)l, o);
    }
    for (uint32_t l = 0; l < address_space_height; ++l, o += DIGEST_WORDS) {
        uint64_t index = top_offset + top_level_offset(address_space_height, l) +
                         (((uint64_t)task.slot >> l) ^ 1);
        copy_digest(nodes + DIGEST_WORDS * index, o);
    }
}

}  // namespace mc
