#!/usr/bin/env bash
# `memcommit root` on OpenVM's default layout with 2 MiB of data in 512 scattered 4 KiB
# pages of its 2^29-byte RAM slot, against the same 2 MiB packed side by side into one
# 2^21-cell u8 slot, in the same run: median wall time and peak RSS of each, and their
# ratios (the targets of the sparse-pages issue: <= 2x time, <= 2x + 32 MiB RSS).
#
# The RAM image is written twice: as a sparse file (holes where nothing was written) and as
# a dense file (every zero byte on disk), since a memory dump may come either way.
#
# Usage: scripts/sparse-root.sh [REPEATS] [BACKEND] [K]    defaults: 7 cpu 3
# Needs python3 and GNU time (/usr/bin/time); builds target/release/memcommit.
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-7}
backend=${2:-cpu}
k=${3:-3}
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian: apt-get install time)" >&2; exit 1; }
cargo build --release --quiet --bin memcommit
bin=${CARGO_TARGET_DIR:-target}/release/memcommit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$work" <<'PY'
import json, os, random, sys
work = sys.argv[1]
rng = random.Random(11)
PAGE, RAM, PAGES = 4096, 1 << 29, 512
pages = sorted(rng.sample(range(RAM // PAGE), PAGES))
data = [bytes(rng.getrandbits(8) for _ in range(PAGE)) for _ in pages]
openvm = {"address_space_height": 3, "address_height": 26, "address_spaces": [
    {"cell": "u8", "num_cells": 128}, {"cell": "u8", "num_cells": RAM},
    {"cell": "u8", "num_cells": 32}, {"cell": "field", "num_cells": 1 << 14}]
    + [{"cell": "field", "num_cells": 0}] * 4}
json.dump(openvm, open(f"{work}/openvm.json", "w"))
json.dump({"address_spaces": [{"cell": "u8", "num_cells": PAGES * PAGE}]},
          open(f"{work}/packed.json", "w"))
with open(f"{work}/ram.sparse", "wb") as f:
    f.truncate(RAM)
    for p, d in zip(pages, data):
        f.seek(p * PAGE)
        f.write(d)
with open(f"{work}/ram.dense", "wb") as f:
    at = 0
    for p, d in zip(pages, data):
        f.write(bytes(p * PAGE - at))
        f.write(d)
        at = (p + 1) * PAGE
    f.write(bytes(RAM - at))
with open(f"{work}/packed.bin", "wb") as f:
    f.write(b"".join(data))
PY

# Median wall seconds and median peak RSS (KiB) of `repeats` runs of `memcommit root ARGS`;
# also checks that every run printed the same root.
measure() {
  local walls=() rss=() root=
  for _ in $(seq "$repeats"); do
    /usr/bin/time -f '%e %M' -o "$work/time" "$bin" root --backend "$backend" --omitted-levels "$k" "$@" \
      >"$work/out" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    [ -z "$root" ] || [ "$root" = "$(cat "$work/out")" ] || { echo "roots differ" >&2; exit 1; }
    root=$(cat "$work/out")
    read -r w m <"$work/time"
    walls+=("$w") rss+=("$m")
  done
  printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%s ", a[int((NR+1)/2)]}'
  printf '%s\n' "${rss[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%s\n", a[int((NR+1)/2)]}'
}

read -r pw pr < <(measure --layout "$work/packed.json" --image "0=$work/packed.bin")
read -r sw sr < <(measure --layout "$work/openvm.json" --image "1=$work/ram.sparse")
read -r dw dr < <(measure --layout "$work/openvm.json" --image "1=$work/ram.dense")
echo "memcommit root, backend $backend, k $k, median of $repeats runs ($(date -u +%F), $(git rev-parse --short HEAD))"
printf '%-34s %10s %12s %10s %14s\n' case "wall s" "peak RSS MiB" "time ratio" "RSS ratio"
row() {
  awk -v n="$1" -v w="$2" -v r="$3" -v pw="$pw" -v pr="$pr" 'BEGIN {
    printf "%-34s %10.3f %12.1f %10.2f %14.2f\n", n, w, r / 1024, (pw > 0 ? w / pw : 0), r / pr }'
}
row "packed: 2^21-cell u8 slot" "$pw" "$pr"
row "OpenVM layout, sparse file" "$sw" "$sr"
row "OpenVM layout, dense 512 MiB file" "$dw" "$dr"
awk -v sr="$sr" -v dr="$dr" -v pr="$pr" 'BEGIN {
  printf "RSS target (2x packed + 32 MiB): %.1f MiB; sparse %s, dense %s\n", (2 * pr + 32768) / 1024,
    (sr <= 2 * pr + 32768 ? "met" : "MISSED"), (dr <= 2 * pr + 32768 ? "met" : "MISSED") }'
