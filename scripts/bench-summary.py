#!/usr/bin/env python3
"""Prints the issue-2 targets as same-run ratios from criterion's estimates.

Run after `cargo bench --bench cpu_tree`. Reads target/criterion/*/*/new/estimates.json
(medians, nanoseconds) and prints:
  - build throughput of memcommit (k=0, k=3) over p3-merkle-tree on the same leaves;
  - update cost per touched block against (tree height + 2*2^k) permutations, using the
    measured cost of one permutation (packed per lane, and scalar);
  - the update with its witness over the plain update, per batch size and k (issue 13).
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def median_ns(group, bench, param=None):
    path = root / group / bench
    if param is not None:
        path = path / str(param)
    est = path / "new" / "estimates.json"
    if not est.exists():
        return None
    return json.loads(est.read_text())["median"]["point_estimate"]


perm_scalar = median_ns("perm", "scalar")
packed = median_ns("perm", "packed")
# perm/packed times one call of 64 * LANES permutations; LANES = 8 with AVX2.
perm_packed = packed / (64 * 8) if packed else None

print("build: throughput ratio memcommit / p3-merkle-tree (higher is better; target >= 1.0)")
for log in (16, 18, 20, 22):
    p3 = median_ns("build", "p3_merkle_tree", log)
    if p3 is None:
        continue
    cells = []
    for k in (0, 3):
        ours = median_ns("build", f"memcommit_k{k}", log)
        if ours:
            cells.append(f"k={k}: {p3 / ours:.2f}x ({ours / 1e6:.1f} ms vs {p3 / 1e6:.1f} ms)")
    print(f"  2^{log} leaves  " + "  ".join(cells))

print()
if perm_scalar and perm_packed:
    print(f"perm: scalar {perm_scalar:.0f} ns, packed {perm_packed:.0f} ns per permutation")
print("update on 2^20 leaves: ns per touched block, and / (1.5 x (h + 2*2^k) perms) (target <= 1.0)")
h = 20
for k in (0, 3):
    for n in (1, 1024, 4096, 65536):
        t = median_ns("update", f"k{k}_2pow{h}", n)
        if t is None or not perm_packed:
            continue
        per_block = t / n
        budget_perms = h + 2 * 2**k
        r_packed = per_block / (1.5 * budget_perms * perm_packed)
        r_scalar = per_block / (1.5 * budget_perms * perm_scalar)
        print(f"  k={k} {n:>6} blocks: {per_block:8.0f} ns/block = {per_block / perm_packed:5.1f} packed perms;"
              f" ratio {r_packed:.2f} (packed perm), {r_scalar:.2f} (scalar perm)")

print()
print("update with its witness on 2^20 leaves: update_witness / update, same batch sizes"
      " (targets at 64Ki blocks: <= 1.1 at k=0, <= 1.9 at k=3)")
for k in (0, 3):
    for n in (1, 1024, 65536):
        plain = median_ns("update", f"k{k}_2pow{h}", n)
        witnessed = median_ns("update_witness", f"k{k}_2pow{h}", n)
        if plain and witnessed:
            print(f"  k={k} {n:>6} blocks: {witnessed / 1e6:8.3f} ms vs {plain / 1e6:8.3f} ms"
                  f" = {witnessed / plain:.2f}x")
