#!/usr/bin/env python3
"""Pure-Python BabyBear Poseidon2 (width 16) and memcommit's Merkle conventions.

Standard library only; plain integers mod p; written for clarity, not speed (a
permutation takes a fraction of a millisecond, fine for a few thousand hashes).

What it implements (docs/design.md, "Part 1: conventions"):

- ``permute(state)``: Plonky3 0.8.0 ``default_babybear_poseidon2_16()``: width 16, S-box
  x^7, 4 + 4 full (external) rounds around 13 partial (internal) rounds, Horizen Labs
  round constants.
- ``compress(left, right)`` = ``permute(left + right)[:8]`` (no feed-forward).
- ``leaf_hash(cells)`` = ``compress(cells, [0] * 8)``: one block of 8 cells is one leaf.
- ``zero_hash(h)``: root of an all-zero subtree of height h.
- ``root_of(layout, blocks)``: the commitment of a sparse image.
- ``verify_opening(opening, root, layout)``: recompute the root from a proto ``Opening``
  (or a dict with the same keys) and compare.

Run ``python3 poseidon2.py --check tests/data/poseidon2_babybear16.json`` to check it
against the shared test vectors (``cargo test --test python_poseidon2`` does that, and
adds openings made by the Rust reference tree with ``--openings FILE``).
"""

import argparse
import json
import sys

# BabyBear: p = 2^31 - 2^27 + 1. Every value here is a canonical integer 0 <= v < p.
P = 2013265921
WIDTH = 16
DIGEST_LEN = 8
BLOCK_CELLS = 8

# Round constants, copied as data from p3-baby-bear 0.8.0 src/poseidon2.rs
# (BABYBEAR_POSEIDON2_RC_16_EXTERNAL_INITIAL, _EXTERNAL_FINAL and _INTERNAL). They are
# canonical integers there too (BabyBear::new_array converts them to Montgomery form).
# fmt: off
RC16_EXTERNAL_INITIAL = [
    [
        0x69cbb6af, 0x46ad93f9, 0x60a00f4e, 0x6b1297cd, 0x23189afe, 0x732e7bef, 0x72c246de,
        0x2c941900, 0x0557eede, 0x1580496f, 0x3a3ea77b, 0x54f3f271, 0x0f49b029, 0x47872fe1,
        0x221e2e36, 0x1ab7202e,
    ],
    [
        0x487779a6, 0x3851c9d8, 0x38dc17c0, 0x209f8849, 0x268dcee8, 0x350c48da, 0x5b9ad32e,
        0x0523272b, 0x3f89055b, 0x01e894b2, 0x13ddedde, 0x1b2ef334, 0x7507d8b4, 0x6ceeb94e,
        0x52eb6ba2, 0x50642905,
    ],
    [
        0x05453f3f, 0x06349efc, 0x6922787c, 0x04bfff9c, 0x768c714a, 0x3e9ff21a, 0x15737c9c,
        0x2229c807, 0x0d47f88c, 0x097e0ecc, 0x27eadba0, 0x2d7d29e4, 0x3502aaa0, 0x0f475fd7,
        0x29fbda49, 0x018afffd,
    ],
    [
        0x0315b618, 0x6d4497d1, 0x1b171d9e, 0x52861abd, 0x2e5d0501, 0x3ec8646c, 0x6e5f250a,
        0x148ae8e6, 0x17f5fa4a, 0x3e66d284, 0x0051aa3b, 0x483f7913, 0x2cfe5f15, 0x023427ca,
        0x2cc78315, 0x1e36ea47,
    ],
]
RC16_EXTERNAL_FINAL = [
    [
        0x7290a80d, 0x6f7e5329, 0x598ec8a8, 0x76a859a0, 0x6559e868, 0x657b83af, 0x13271d3f,
        0x1f876063, 0x0aeeae37, 0x706e9ca6, 0x46400cee, 0x72a05c26, 0x2c589c9e, 0x20bd37a7,
        0x6a2d3d10, 0x20523767,
    ],
    [
        0x5b8fe9c4, 0x2aa501d6, 0x1e01ac3e, 0x1448bc54, 0x5ce5ad1c, 0x4918a14d, 0x2c46a83f,
        0x4fcf6876, 0x61d8d5c8, 0x6ddf4ff9, 0x11fda4d3, 0x02933a8f, 0x170eaf81, 0x5a9c314f,
        0x49a12590, 0x35ec52a1,
    ],
    [
        0x58eb1611, 0x5e481e65, 0x367125c9, 0x0eba33ba, 0x1fc28ded, 0x066399ad, 0x0cbec0ea,
        0x75fd1af0, 0x50f5bf4e, 0x643d5f41, 0x6f4fe718, 0x5b3cbbde, 0x1e3afb3e, 0x296fb027,
        0x45e1547b, 0x4a8db2ab,
    ],
    [
        0x59986d19, 0x30bcdfa3, 0x1db63932, 0x1d7c2824, 0x53b33681, 0x0673b747, 0x038a98a3,
        0x2c5bce60, 0x351979cd, 0x5008fb73, 0x547bca78, 0x711af481, 0x3f93bf64, 0x644d987b,
        0x3c8bcd87, 0x608758b8,
    ],
]
RC16_INTERNAL = [
    0x5a8053c0, 0x693be639, 0x3858867d, 0x19334f6b, 0x128f0fd8, 0x4e2b1ccb, 0x61210ce0, 0x3c318939,
    0x0b5b2f22, 0x2edb11d5, 0x213effdf, 0x0cac4606, 0x241af16d,
]
# fmt: on


def _inverse(x):
    """The inverse of x mod p (p is prime)."""
    return pow(x, P - 2, P)


# The internal layer's matrix is 1 + Diag(V) (every row gets the sum of the state, plus
# V[i] times its own element). p3-baby-bear 0.8.0 src/poseidon2.rs,
# BabyBearInternalLayerParameters for width 16:
#   V = [-2, 1, 2, 1/2, 3, 4, -1/2, -3, -4, 1/2^8, 1/4, 1/8, 1/2^27, -1/2^8, -1/16, -1/2^27]
INTERNAL_DIAGONAL = [
    v % P
    for v in [
        -2,
        1,
        2,
        _inverse(2),
        3,
        4,
        -_inverse(2),
        -3,
        -4,
        _inverse(2**8),
        _inverse(4),
        _inverse(8),
        _inverse(2**27),
        -_inverse(2**8),
        -_inverse(16),
        -_inverse(2**27),
    ]
]


def _sbox(x):
    return pow(x, 7, P)


def _mat4(a, b, c, d):
    """Plonky3's MDSMat4: [[2, 3, 1, 1], [1, 2, 3, 1], [1, 1, 2, 3], [3, 1, 1, 2]]."""
    return (
        (2 * a + 3 * b + c + d) % P,
        (a + 2 * b + 3 * c + d) % P,
        (a + b + 2 * c + 3 * d) % P,
        (3 * a + b + c + 2 * d) % P,
    )


def _external_linear_layer(state):
    """The 16x16 matrix [[2M, M, M, M], [M, 2M, M, M], ...] with M = MDSMat4."""
    out = []
    for i in range(0, WIDTH, 4):
        out.extend(_mat4(*state[i : i + 4]))
    # Every element gets the sum of the elements in its column of 4x4 blocks.
    sums = [sum(out[j] for j in range(k, WIDTH, 4)) for k in range(4)]
    return [(x + sums[i % 4]) % P for i, x in enumerate(out)]


def _internal_linear_layer(state):
    total = sum(state)
    return [(total + d * x) % P for d, x in zip(INTERNAL_DIAGONAL, state)]


def _external_round(state, constants):
    state = [_sbox((x + c) % P) for x, c in zip(state, constants)]
    return _external_linear_layer(state)


def permute(state):
    """The Poseidon2 permutation of 16 canonical BabyBear integers; returns a new list."""
    if len(state) != WIDTH:
        raise ValueError(f"a state has {WIDTH} elements, got {len(state)}")
    state = [x % P for x in state]
    state = _external_linear_layer(state)
    for constants in RC16_EXTERNAL_INITIAL:
        state = _external_round(state, constants)
    for c in RC16_INTERNAL:
        state[0] = _sbox((state[0] + c) % P)
        state = _internal_linear_layer(state)
    for constants in RC16_EXTERNAL_FINAL:
        state = _external_round(state, constants)
    return state


def compress(left, right):
    """Two digests to one: the first 8 elements of permute(left || right)."""
    if len(left) != DIGEST_LEN or len(right) != DIGEST_LEN:
        raise ValueError("compress takes two digests of 8 elements")
    return permute(list(left) + list(right))[:DIGEST_LEN]


def leaf_hash(cells):
    """The leaf digest of one block: compress(cells, [0; 8])."""
    if len(cells) != BLOCK_CELLS:
        raise ValueError(f"a block has {BLOCK_CELLS} cells, got {len(cells)}")
    return compress(cells, [0] * DIGEST_LEN)


_ZERO_HASHES = []


def zero_hash(height):
    """Root of an all-zero subtree of the given height: zero[0] = leaf_hash([0; 8]),
    zero[h + 1] = compress(zero[h], zero[h])."""
    while len(_ZERO_HASHES) <= height:
        if not _ZERO_HASHES:
            _ZERO_HASHES.append(leaf_hash([0] * BLOCK_CELLS))
        else:
            z = _ZERO_HASHES[-1]
            _ZERO_HASHES.append(compress(z, z))
    return _ZERO_HASHES[height]


def zero_hashes(count):
    """zero[0] .. zero[count - 1]."""
    return [zero_hash(h) for h in range(count)]


# ---------------------------------------------------------------------------------------
# The tree: one binary tree of height H = address_space_height + address_height. The leaf
# of (slot, block) has index (slot << address_height) | block among the 2^H leaves; every
# leaf past a slot's blocks, and every slot past the list, is zero. (docs/design.md, "Memory
# layout and tree shape".)


def _field(obj, name):
    """obj[name] for a dict (JSON), obj.name for a protobuf message."""
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def heights(layout):
    """(address_height, address_space_height) of a layout: a proto Layout as the server
    returns it (both set) or a dict with both keys."""
    return int(_field(layout, "address_height")), int(_field(layout, "address_space_height"))


def root_of(layout, blocks):
    """The root of an image given as {(slot, block): [8 cells]}; absent blocks are zero.

    Sparse: only the ancestors of the given blocks are hashed, every other node is a
    zero hash, so a layout's size costs nothing.
    """
    address_height, address_space_height = heights(layout)
    total_height = address_height + address_space_height
    nodes = {}
    for (slot, block), cells in blocks.items():
        if block >= 1 << address_height or slot >= 1 << address_space_height:
            raise ValueError(f"block ({slot}, {block}) is outside the tree")
        nodes[(slot << address_height) | block] = leaf_hash(cells)
    for h in range(total_height):
        parents = {}
        for parent in sorted({i >> 1 for i in nodes}):
            left = nodes.get(2 * parent, zero_hash(h))
            right = nodes.get(2 * parent + 1, zero_hash(h))
            parents[parent] = compress(left, right)
        nodes = parents
    return nodes.get(0, zero_hash(total_height))


class OpeningError(ValueError):
    """An opening that does not verify; the message says why."""


def fold_path(node, index, siblings):
    """Fold a leaf digest up through its siblings (lowest first): at level i the node is
    the left child when bit i of index is 0 (the Rust tree::fold_path)."""
    for i, sibling in enumerate(siblings):
        if (index >> i) & 1 == 0:
            node = compress(node, sibling)
        else:
            node = compress(sibling, node)
    return node


def verify_opening(opening, root, layout):
    """Check that ``opening`` opens its block against ``root``; raise OpeningError if not.

    ``opening``: a proto ``Opening`` or a dict with keys slot, block, cells (8 integers)
    and siblings (8 x (address_height + address_space_height) integers, flattened: the
    sibling digests inside the slot's subtree leaf level first, then the top tree).
    ``root``: 8 integers (or a proto ``Digest``'s ``elements``). ``layout``: anything
    ``heights`` accepts; when it lists address_spaces, the slot and block must be in it.
    """
    address_height, address_space_height = heights(layout)
    slot = int(_field(opening, "slot"))
    block = int(_field(opening, "block"))
    cells = [int(c) for c in _field(opening, "cells")]
    flat = [int(s) for s in _field(opening, "siblings")]
    root = [int(r) for r in root]
    where = f"opening of (slot {slot}, block {block})"

    if len(root) != DIGEST_LEN:
        raise OpeningError(f"{where}: the root has {len(root)} elements, not 8")
    spaces = _field(layout, "address_spaces") if _has(layout, "address_spaces") else None
    if spaces is not None:
        if slot >= len(spaces):
            raise OpeningError(f"{where}: the layout has {len(spaces)} address spaces")
        num_blocks = int(_field(spaces[slot], "num_cells")) // BLOCK_CELLS
        if block >= num_blocks:
            raise OpeningError(f"{where}: slot {slot} has {num_blocks} blocks")
    if slot >= 1 << address_space_height or block >= 1 << address_height:
        raise OpeningError(
            f"{where}: outside a tree of heights {address_height} + {address_space_height}"
        )
    if len(cells) != BLOCK_CELLS:
        raise OpeningError(f"{where}: {len(cells)} cells, expected {BLOCK_CELLS}")
    expected = DIGEST_LEN * (address_height + address_space_height)
    if len(flat) != expected:
        raise OpeningError(
            f"{where}: {len(flat)} sibling elements, expected 8 x "
            f"(address_height {address_height} + address_space_height "
            f"{address_space_height}) = {expected}"
        )
    if any(v >= P for v in cells + flat + root):
        raise OpeningError(f"{where}: an element is not a canonical BabyBear integer")

    siblings = [flat[i : i + DIGEST_LEN] for i in range(0, len(flat), DIGEST_LEN)]
    index = (slot << address_height) | block
    computed = fold_path(leaf_hash(cells), index, siblings)
    if computed != root:
        raise OpeningError(f"{where}: recomputed root {computed} differs from {root}")


def _has(obj, name):
    return name in obj if isinstance(obj, dict) else hasattr(obj, name)


# ---------------------------------------------------------------------------------------
# Self-check against the shared test vectors: python3 poseidon2.py --check VECTORS.json


class _Checker:
    """Counts checks and collects failures, so one run reports every mismatch."""

    def __init__(self):
        self.passed = 0
        self.failures = []

    def equal(self, name, got, want):
        if got == want:
            self.passed += 1
        else:
            self.failures.append(f"{name}: got {got}, want {want}")

    def true(self, name, ok, why=""):
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{name}: {why}")


def _check_vectors(v, check):
    check.equal("internal_diagonal_canonical", INTERNAL_DIAGONAL, v["internal_diagonal_canonical"])
    check.equal("perm_zero", permute([0] * WIDTH), v["perm_zero"])
    perm = permute(list(range(WIDTH)))
    check.equal("perm_0_to_15", perm, v["perm_0_to_15"])
    # The same output in Montgomery form (x * 2^32 mod p), as the vectors also give it.
    mont = [int(h, 16) for h in v["montgomery"]["perm_0_to_15_montgomery_hex"].split()]
    check.equal("perm_0_to_15_montgomery_hex", [(x << 32) % P for x in perm], mont)
    check.equal("leaf_hash_0_to_7", leaf_hash(list(range(8))), v["leaf_hash_0_to_7"])
    for h, z in enumerate(v["zero_hashes_0_to_8"]):
        check.equal(f"zero_hashes_0_to_8[{h}]", zero_hash(h), z)
    check.equal("zero_hash_28", zero_hash(28), v["zero_hash_28"])

    four = v["four_spaces"]
    blocks = {(leaf["slot"], leaf["block"]): leaf["cells"] for leaf in four["leaves"]}
    check.equal("four_spaces.root", root_of(four["layout"], blocks), four["root"])

    # "cell k = k mod 256": block b holds cells 8b .. 8b + 7.
    single = v["single_u8_space_1024_leaves"]
    blocks = {(0, b): [(8 * b + j) % 256 for j in range(8)] for b in range(1024)}
    check.equal(
        "single_u8_space_1024_leaves.root", root_of(single["layout"], blocks), single["root"]
    )


def _tampered(opening, num_blocks):
    """Copies of a good opening, each changed in one way that must make it fail."""
    out = []

    def changed(name, **fields):
        o = dict(opening)
        o.update(fields)
        out.append((name, o))

    cells = list(opening["cells"])
    changed("cells[0] + 1", cells=[(cells[0] + 1) % P] + cells[1:])
    siblings = list(opening["siblings"])
    for level in range(len(siblings) // DIGEST_LEN):
        s = list(siblings)
        s[DIGEST_LEN * level] = (s[DIGEST_LEN * level] + 1) % P
        changed(f"sibling {level} + 1", siblings=s)
    changed("one sibling missing", siblings=siblings[:-DIGEST_LEN])
    # The neighbour's position: wrong unless the neighbour holds the same cells (then the
    # opening is a valid opening of it too).
    if opening["block"] ^ 1 < num_blocks and siblings[:DIGEST_LEN] != leaf_hash(cells):
        changed("block ^ 1", block=opening["block"] ^ 1)
    return out


def _check_openings(doc, check):
    """doc's blocks (if given) have doc's root; every opening in doc verifies against it;
    every tampered copy does not. Returns (openings verified, tampered copies rejected)."""
    layout, root = doc["layout"], doc["root"]
    if "blocks" in doc:
        blocks = {(b["slot"], b["block"]): b["cells"] for b in doc["blocks"]}
        check.equal("root of the openings file's blocks", root_of(layout, blocks), root)
    rejected = 0
    for o in doc["openings"]:
        name = f"opening (slot {o['slot']}, block {o['block']})"
        try:
            verify_opening(o, root, layout)
            check.true(name, True)
        except OpeningError as e:
            check.true(name, False, str(e))
        num_blocks = layout["address_spaces"][o["slot"]]["num_cells"] // BLOCK_CELLS
        wrong_root = [(root[0] + 1) % P] + root[1:]
        for what, bad in _tampered(o, num_blocks) + [("another root", o)]:
            try:
                verify_opening(bad, wrong_root if what == "another root" else root, layout)
                check.true(f"{name}, {what}", False, "verified but must not")
            except OpeningError:
                check.true(f"{name}, {what}", True)
                rejected += 1
    return len(doc["openings"]), rejected


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check",
        metavar="VECTORS_JSON",
        required=True,
        help="tests/data/poseidon2_babybear16.json",
    )
    parser.add_argument(
        "--openings",
        metavar="JSON",
        help='{"layout", "root", "openings": [{"slot", "block", "cells", '
        '"siblings"}]}: each must verify, tampered copies must not',
    )
    args = parser.parse_args(argv)
    check = _Checker()
    with open(args.check) as f:
        _check_vectors(json.load(f), check)
    vectors_checked = check.passed
    good = rejected = 0
    if args.openings:
        with open(args.openings) as f:
            good, rejected = _check_openings(json.load(f), check)
        vectors_checked = check.passed - good - rejected
    for failure in check.failures:
        print(f"MISMATCH {failure}", file=sys.stderr)
    if check.failures:
        print(f"poseidon2.py: {len(check.failures)} check(s) failed", file=sys.stderr)
        return 1
    print(
        f"poseidon2.py: ok: {vectors_checked} hash and root checks, {good} openings verified, "
        f"{rejected} tampered openings rejected"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
