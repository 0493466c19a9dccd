// Kernel body of the page rounds an update derives on the device (McPageNode in tasks.h):
// the ancestors, inside the pages, of the written stored base-level nodes, one level per
// launch, without a host-made pair list per level.
#pragma once

#include "memcommit/poseidon2.h"
#include "memcommit/tasks.h"
#include "memcommit/tree_index.h"

namespace mc {

// Step `step` (level l = b + 1 + step of node t's slot), for t < count: if t's level-l
// ancestor is not t - 1's (another slot, or another ancestor), thread t computes it from its
// two children at level l - 1. Threads whose slot has no level l inside its pages (l > q)
// do nothing. `nodes` is read and written: one launch writes level l only and reads level
// l - 1 only.
MC_HD void page_round_body(uint64_t t, uint32_t* nodes, const McPageSlot* slots,
                           const McPageNode* list, uint64_t count, uint32_t step) {
    if (t >= count) return;
    const McPageNode n = list[t];
    const McPageSlot s = slots[n.slot];
    const uint32_t l = s.base + 1 + step;
    if (l > s.top) return;
    const uint32_t up = l - s.base;
    const uint64_t c = n.coord >> up;
    if (t > 0) {
        const McPageNode before = list[t - 1];
        if (before.slot == n.slot && (before.coord >> up) == c) return;
    }
    const uint64_t children = s.page_nodes + s.pages * level_offset(s.top, s.base, l - 1);
    const uint64_t parents = s.page_nodes + s.pages * level_offset(s.top, s.base, l);
    compress(nodes + DIGEST_WORDS * (children + 2 * c), nodes + DIGEST_WORDS * (children + 2 * c + 1),
             nodes + DIGEST_WORDS * (parents + c));
}

}  // namespace mc
