// Kernel body of the fused tail of an update (McPhase in tasks.h): the narrow launches at the
// top of the tree — page rounds, pair rounds, vertical paths and top-tree levels whose task
// counts fit one CUDA block — run as the phases of one single-block launch, with a block
// barrier between phases instead of a kernel boundary. A phase's tasks obey the same rule as
// a launch's (no task reads a node another task of the phase writes), and the barrier makes
// one phase's global-memory writes visible to the next.
#pragma once

#include "build_bodies.cuh"
#include "page_round_bodies.cuh"
#include "update_bodies.cuh"

namespace mc {

// Task t of `phase`, t < phase.count. `staging` is the byte address the phases' task arrays
// are offsets from; the other pointers are as for the separate launches.
MC_HD void fused_phase_body(uint64_t t, const McPhase& phase, uint32_t* nodes, uint32_t* fold,
                            const uint32_t* zero, const uint8_t* staging,
                            const McPageSlot* page_slots, const McPageNode* page_nodes) {
    const uint8_t* tasks = staging + phase.tasks_byte;
    switch (phase.kind) {
        case MC_PHASE_PAIRS_NODES:
            compress_pairs_body(t, nodes, nodes, (const McPairTask*)tasks, phase.count);
            break;
        case MC_PHASE_PAIRS_FOLD:
            compress_pairs_body(t, fold, fold, (const McPairTask*)tasks, phase.count);
            break;
        case MC_PHASE_PAIRS_FOLD_TO_NODES:
            compress_pairs_body(t, fold, nodes, (const McPairTask*)tasks, phase.count);
            break;
        case MC_PHASE_VERTICAL:
            vertical_body(t, nodes, zero, (const McVerticalTask*)tasks, phase.count);
            break;
        case MC_PHASE_PAGE_ROUND:
            page_round_body(t, nodes, page_slots, page_nodes, phase.count, phase.step);
            break;
        default:
            break;
    }
}

}  // namespace mc
