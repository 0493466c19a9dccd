#!/usr/bin/env python3
"""Writes the seed corpus (fuzz/seeds/<target>/) from hand-encoded protobuf messages and
trace / layout text. Run from fuzz/: python3 make_seeds.py. Deterministic output."""
import os
import struct

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def v(tag, n):  # varint field
    return varint(tag << 3) + varint(n)

def ld(tag, payload):  # length-delimited field
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(tag << 3 | 2) + varint(len(payload)) + payload

def u32s(*xs):
    return b"".join(struct.pack("<I", x) for x in xs)

U8, U16, FIELD = 1, 2, 3

def space(cell, n):
    return v(1, cell) + v(2, n)

def layout(spaces, ash=None, ah=None):
    m = b"".join(ld(1, space(c, n)) for c, n in spaces)
    if ash is not None:
        m += v(2, ash)
    if ah is not None:
        m += v(3, ah)
    return m

FIXTURE = layout([(U8, 64), (U16, 0), (FIELD, 32), (U16, 128)], ah=5)
SMALL = layout([(U8, 16), (FIELD, 8)])

def create(lay, k=None, backend="", auto=False, budget=None):
    m = ld(1, lay)
    if k is not None:
        m += v(2, k)
    if backend:
        m += ld(3, backend)
    if auto:
        m += v(4, 1)
    if budget is not None:
        m += v(5, budget)
    return m

def chunk(slot, off, data, tree_id=""):
    m = ld(1, tree_id) if tree_id else b""
    return m + v(2, slot) + v(3, off) + ld(4, data)

def chunks(*cs):
    return b"".join(ld(1, c) for c in cs)

def blocks(entries, openings=False, tree_id=""):
    slots = u32s(*[s for s, _, _ in entries])
    idx = u32s(*[b for _, b, _ in entries])
    cells = b"".join(u32s(*c) for _, _, c in entries)
    m = (ld(1, tree_id) if tree_id else b"") + ld(2, ld(1, slots) + ld(2, idx) + ld(3, cells))
    return m + (v(3, 1) if openings else b"")

def positions(ps, tree_id=""):
    m = ld(1, u32s(*[s for s, _ in ps])) + ld(2, u32s(*[b for _, b in ps]))
    return (ld(1, tree_id) if tree_id else b"") + ld(2, m)

WRITES = chunks(chunk(0, 0, bytes(range(1, 9))), chunk(2, 4, u32s(7)), chunk(3, 2, b"\x01\x02"))

def cut(after, code=0, too_large=False):  # Chunks.cut: the stream fails after `after` chunks
    return ld(2, v(1, after) + v(2, code) + (v(3, 1) if too_large else b""))

CANCELLED, UNAVAILABLE = 1, 14  # gRPC status codes

UPDATE = blocks([(0, 1, [1] * 8), (3, 15, list(range(8))), (2, 0, [2013265920] * 8)], True)
POS = positions([(0, 0), (2, 3), (3, 15)])

def call(tree, tag, msg):
    return ld(1, v(1, tree) + ld(tag, msg))

NEW = 6  # the first tree a sequence creates: after the 5 fixture ids
SEQ = b"".join([
    call(0, 2, create(SMALL, 1, "cpu")),
    call(NEW, 3, chunks(chunk(0, 8, b"\x09" * 8), chunk(1, 0, u32s(5, 6)))),
    call(NEW, 4, b""),
    call(NEW, 5, blocks([(0, 1, [3] * 8), (1, 0, [4] * 8)], True)),
    call(NEW, 7, positions([(0, 0), (1, 0)])),
    call(NEW, 6, b""),
    call(NEW, 8, b""),
    call(0, 9, b""),
    call(0, 10, b""),
    call(2, 5, UPDATE),
    call(1, 4, b""),
    # A second created tree, cut off mid-upload, then used and dropped.
    call(0, 2, create(SMALL, 1, "cpu")),
    call(NEW + 1, 3, chunks(chunk(0, 0, b"\x01" * 8), chunk(1, 0, u32s(2))) + cut(1, UNAVAILABLE)),
    call(NEW + 1, 5, blocks([(0, 0, [1] * 8)])),
    call(NEW + 1, 8, b""),
])

HEADER = ('{"layout": {"address_spaces": [{"cell": "u8", "num_cells": 16}, '
          '{"cell": "field", "num_cells": 8}]}, "omitted_levels": 1}')
TRACE = "\n".join([
    HEADER,
    '{"write": {"slot": 0, "offset": 8, "hex": "0102030405060708"}}',
    '{"build": {}}',
    '{"update": {"blocks": [{"slot": 1, "block": 0, "cells": [1, 2, 3, 4, 5, 6, 7, 8]}]}}',
    '{"update": {"blocks": [{"slot": 0, "block": 1, "cells": [255, 0, 0, 0, 0, 0, 0, 9]}], '
    '"expect_root": [1, 2, 3, 4, 5, 6, 7, 8]}}',
]) + "\n"

SEEDS = {
    "create_tree": {
        "fixture_k2": create(FIXTURE, 2, "cpu"),
        "auto_budget": create(FIXTURE, None, "", True, 1 << 16),
        "reference": create(SMALL, None, "reference"),
    },
    "write_memory": {"created": b"\x00" + WRITES, "built": b"\x01" + WRITES,
                     "cut_after_2": b"\x00" + WRITES + cut(2, UNAVAILABLE),
                     "cut_at_start": b"\x00" + WRITES + cut(0, CANCELLED),
                     "too_large": b"\x00" + WRITES + cut(1, 0, True)},
    "build_tree": {"created": b"\x00", "built": b"\x01", "own_id": b"\x05" + ld(1, "x")},
    "update_blocks": {"k3": b"\x01" + UPDATE, "k0": b"\x02" + UPDATE, "ref": b"\x03" + UPDATE,
                      "created": b"\x00" + UPDATE},
    "get_root": {"built": b"\x01", "created": b"\x00", "dropped": b"\x04"},
    "get_openings": {"k3": b"\x01" + POS, "k0": b"\x02" + POS, "ref": b"\x03" + POS},
    "drop_tree": {"built": b"\x01", "created": b"\x00", "dropped": b"\x04"},
    "list_trees": {"empty": b""},
    "rpc_sequence": {"life": SEQ},
    "layout_json": {
        "defaults": b'{"address_spaces": [{"cell": "u8", "num_cells": 64}, {"cell": "u16", "num_cells": 0}]}',
        "heights": b'{"address_spaces": [{"cell": "field", "num_cells": 1024}], "address_space_height": 3, "address_height": 10}',
    },
    "trace_line": {
        "header": HEADER.encode(),
        "write": b'{"write": {"slot": 0, "offset": 16, "hex": "0a0b0c0d0e0f1011"}}',
        "build": b'{"build": {"expect_root": [1, 2, 3, 4, 5, 6, 7, 8]}}',
        "update": b'{"update": {"blocks": [{"slot": 2, "block": 3, "cells": [1, 2, 3, 4, 5, 6, 7, 8]}]}}',
    },
    "trace_stream": {"plain": TRACE.encode()},
}

def main():
    for target, files in SEEDS.items():
        d = os.path.join("seeds", target)
        os.makedirs(d, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)

if __name__ == "__main__":
    main()
