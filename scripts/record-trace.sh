#!/usr/bin/env bash
# Re-records a bundled real trace: tests/data/sqlite3.trace.zst (LAYOUT=packed, the default)
# or tests/data/sqlite3-openvm.trace.zst (LAYOUT=openvm).
#
# What it does: runs `sqlite3 :memory:` on a small fixed SQL workload (create a 120-row
# table, index it, query, update, delete) under `valgrind --tool=lackey --trace-mem=yes`,
# then converts the lackey log with `memcommit record --layout LAYOUT` (see `memcommit
# record --help`): touched pages packed into one u8 address space (packed), or kept at their
# real addresses mod 2^29 in slot 1 of OpenVM's default layout (openvm; fails if two touched
# pages collide mod 2^29), one update batch per ACCESSES_PER_BATCH data accesses, expect_root
# on the build and on every update (reference backend; for openvm it builds a tree over the
# 512 MiB slot: about 20 s and 0.7 GB).
#
# Usage: scripts/record-trace.sh [OUT]     OUT defaults to the trace of LAYOUT above
# Env:   LAYOUT (packed or openvm; default packed), ACCESSES_PER_BATCH (default 20000),
#        ZSTD_LEVEL (default 19), CARGO_TARGET_DIR (where cargo builds; default target/)
# Needs: valgrind and sqlite3 on PATH (Debian/Ubuntu: apt-get install valgrind sqlite3),
#        and cargo. It installs nothing.
#
# The run uses a fixed environment (env -i, setarch -R) so that it is close to repeatable,
# but lackey's log still varies in a few stack accesses between runs and with the sqlite3 and
# libc builds, so a re-recording differs from the committed file. Any recording is
# self-consistent: tests/trace_format.rs checks every expect_root against the CPU tree.
# The lackey log (~130 MB) is written to a temporary directory and removed afterwards.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
layout="${LAYOUT:-packed}"
case "$layout" in
  packed) default_out="$root/tests/data/sqlite3.trace.zst" ;;
  openvm) default_out="$root/tests/data/sqlite3-openvm.trace.zst" ;;
  *)
    echo "error: LAYOUT=$layout: expected packed or openvm" >&2
    exit 1
    ;;
esac
out="${1:-$default_out}"
per_batch="${ACCESSES_PER_BATCH:-20000}"
level="${ZSTD_LEVEL:-19}"

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "error: $1 is not installed; $2" >&2
    exit 1
  fi
}
need valgrind "on Debian/Ubuntu: apt-get install valgrind"
need sqlite3 "on Debian/Ubuntu: apt-get install sqlite3"
need cargo "install a Rust toolchain (rustup)"
echo "using $(valgrind --version), sqlite3 $(sqlite3 --version | cut -d' ' -f1)" >&2

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/workload.sql" <<'SQL'
CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<120)
INSERT INTO t SELECT x, printf('name-%04d', (x*7919)%1000), (x*37)%101 FROM c;
CREATE INDEX t_name ON t(name);
SELECT count(*), sum(score) FROM t WHERE name LIKE 'name-0%';
UPDATE t SET score = score*2 WHERE id%3=0;
SELECT name, score FROM t ORDER BY score DESC, name LIMIT 5;
DELETE FROM t WHERE id%5=0;
SELECT count(*) FROM t;
SQL

setarch=()
if command -v setarch >/dev/null 2>&1; then
  setarch=(setarch "$(uname -m)" -R)
fi
echo "running sqlite3 under lackey..." >&2
env -i PATH=/usr/bin:/bin LC_ALL=C "${setarch[@]}" \
  valgrind --tool=lackey --trace-mem=yes --log-file="$tmp/sqlite3.lackey" \
  sqlite3 :memory: <"$tmp/workload.sql" >/dev/null

cd "$root"
cargo build --release --quiet --bin memcommit
mkdir -p "$(dirname "$out")"
"${CARGO_TARGET_DIR:-$root/target}/release/memcommit" record "$tmp/sqlite3.lackey" -o "$out" \
  --layout "$layout" --accesses-per-batch "$per_batch" --zstd-level "$level"
