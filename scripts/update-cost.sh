#!/usr/bin/env bash
# Instructions per CPU update batch at two commits, counted by callgrind (repeatable under
# any machine load, unlike wall time). For each commit it builds examples/update_cost.rs
# (copied into the other commit's tree, so both run the same workload), runs it with R and
# 2R batches, and prints (I(2R) - I(R)) / R: the instructions of one batch, the build
# cancelled out. One rayon thread, so idle workers' spinning is not counted.
#
# Usage: scripts/update-cost.sh BASE_REV [HEAD_REV] [-- LOG_LEAVES K BATCH R ...]
#   e.g. scripts/update-cost.sh cb2bf73^ HEAD -- 16 3 64 8
# Needs valgrind. Builds in target/ (the other commit in a temporary git worktree).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: scripts/update-cost.sh BASE_REV [HEAD_REV] [-- LOG_LEAVES K BATCH R]}
shift
head=HEAD
if [ $# -gt 0 ] && [ "$1" != -- ]; then head=$1; shift; fi
[ "${1:-}" = -- ] && shift
params=("$@")
[ ${#params[@]} -gt 0 ] || params=(16 3 64 8)
command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 1; }

root=$PWD
work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# Builds update_cost at $1 into $work/$2.
build_at() {
  local rev=$1 name=$2 dir
  if [ "$(git rev-parse "$rev")" = "$(git rev-parse HEAD)" ] && git diff --quiet HEAD; then
    dir=$root
  else
    git worktree remove --force "$work/tree" >/dev/null 2>&1 || true
    git worktree add --detach "$work/tree" "$rev" >/dev/null
    cp "$root/examples/update_cost.rs" "$work/tree/examples/"
    dir=$work/tree
  fi
  (cd "$dir" && CARGO_TARGET_DIR="$root/target" cargo build --release --quiet --example update_cost)
  cp "$root/target/release/examples/update_cost" "$work/$name"
}

# Instructions of one whole run of $work/$1 with the given arguments.
instructions() {
  local bin=$1; shift
  RAYON_NUM_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$work/$bin" "$@" >/dev/null 2>"$work/cg.err"
  sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/cg.err"
}

# Instructions of one batch of binary $1 with LOG_LEAVES K BATCH R = $2..$5.
per_batch() {
  local a b
  a=$(instructions "$1" "$2" "$3" "$4" "$5")
  b=$(instructions "$1" "$2" "$3" "$4" $((2 * $5)))
  echo $(((b - a) / $5))
}

build_at "$base" base
build_at "$head" head
printf '%-10s %-3s %-7s %-14s %-14s %s\n' leaves k batch "base instr" "head instr" head/base
set -- "${params[@]}"
while [ $# -ge 4 ]; do
  pb=$(per_batch base "$1" "$2" "$3" "$4") ph=$(per_batch head "$1" "$2" "$3" "$4")
  printf '2^%-8s %-3s %-7s %-14s %-14s %s\n' "$1" "$2" "$3" "$pb" "$ph" \
    "$(awk -v h="$ph" -v b="$pb" 'BEGIN { printf "%.4f", h / b }')"
  shift 4
done
