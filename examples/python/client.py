#!/usr/bin/env python3
"""A small memcommit client in Python (grpcio), checking everything the server returns.

It walks a tree through its life and checks each answer against roots computed here with
poseidon2.py (pure Python):

1. connect (optionally with a bearer token) and read GetServerInfo;
2. CreateTree with a small layout (4 address spaces of 64..512 cells);
3. upload an image with one WriteMemory stream, retried whole if it fails (a stream is
   atomic and its writes are absolute bytes, so sending it again is always safe);
4. cancel a second WriteMemory stream after its first chunk: it must change nothing;
5. BuildTree: root step 0 must be the Python root of the image uploaded in step 3;
6. UpdateBlocks batches with return_openings: every new_root must be the Python root and
   every opening must verify against it (poseidon2.verify_opening);
7. GetOpenings of written and unwritten blocks, verified against GetRoot;
8. a safe retry: a batch with expected_old_root whose reply is lost on purpose (a channel
   whose receive limit is too small for it), then the identical request again: it must
   say already_applied, return the same roots, and the tree must count one batch;
9. the same request once the tree has moved on: FAILED_PRECONDITION, root unchanged;
10. DropTree.

Any mismatch prints ``FAILED: <what>`` and exits 1. The stubs are generated from
proto/memcommit/v1/memcommit.proto into a temporary directory at start-up.

Usage: python client.py --target 127.0.0.1:50051 [--token-file FILE]
"""

import argparse
import atexit
import importlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

import poseidon2

HERE = Path(__file__).resolve().parent
DEFAULT_PROTO_DIR = HERE.parent.parent / "proto"

# The largest message this client accepts. grpcio's default receive limit is 4 MiB; an
# UpdateBlocks reply with openings takes up to 61 + 32 x H bytes per block (H = the two
# heights added; 989 bytes on OpenVM's layout), so a 4 MiB limit fails at ~4000 blocks.
# This matches the server's default --max-message-bytes (256 MiB).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
CALL_TIMEOUT_S = 30


class CheckFailed(Exception):
    """A server answer that differs from what this client computed or expected."""


def check(ok, message):
    if not ok:
        raise CheckFailed(message)


def load_stubs(proto_dir):
    """Generate the Python stubs with grpc_tools.protoc into a temporary directory (removed
    at exit) and import them; returns (memcommit_pb2, memcommit_pb2_grpc)."""
    out = tempfile.mkdtemp(prefix="memcommit-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto_dir}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "memcommit/v1/memcommit.proto",
        ],
        check=True,
    )
    sys.path.insert(0, out)
    return (
        importlib.import_module("memcommit.v1.memcommit_pb2"),
        importlib.import_module("memcommit.v1.memcommit_pb2_grpc"),
    )


# The generated modules (memcommit_pb2 and memcommit_pb2_grpc), set by main().
pb = None
pb_grpc = None


# ---------------------------------------------------------------------------------------
# The memory image as this client knows it: plain lists of cell values.


class Image:
    """Cell values of every address space, kept in step with what the server was sent."""

    def __init__(self, spaces):
        # spaces: [(CellType, num_cells)] in slot order.
        self.spaces = spaces
        self.cells = [[0] * num_cells for _, num_cells in spaces]

    def cell_bytes(self, slot):
        return {pb.CELL_TYPE_U8: 1, pb.CELL_TYPE_U16: 2, pb.CELL_TYPE_FIELD: 4}[
            self.spaces[slot][0]
        ]

    def write_bytes(self, slot, byte_offset, data):
        """Apply a WriteMemory chunk: little-endian cells from a byte offset."""
        size = self.cell_bytes(slot)
        first = byte_offset // size
        for i in range(len(data) // size):
            self.cells[slot][first + i] = int.from_bytes(data[i * size : (i + 1) * size], "little")

    def set_block(self, slot, block, cells):
        self.cells[slot][8 * block : 8 * block + 8] = cells

    def block(self, slot, block):
        return self.cells[slot][8 * block : 8 * block + 8]

    def blocks(self):
        """{(slot, block): cells} of the non-zero blocks."""
        out = {}
        for slot, cells in enumerate(self.cells):
            for b in range(len(cells) // 8):
                if any(cells[8 * b : 8 * b + 8]):
                    out[(slot, b)] = cells[8 * b : 8 * b + 8]
        return out

    def root(self, layout):
        return poseidon2.root_of(layout, self.blocks())


def random_cell(rng, cell_type):
    """A random value that fits the cell type, often at the top of its range."""
    top = {pb.CELL_TYPE_U8: 255, pb.CELL_TYPE_U16: 65535, pb.CELL_TYPE_FIELD: poseidon2.P - 1}[
        cell_type
    ]
    return top if rng.random() < 0.1 else rng.randint(1, top)


def pack_u32(values):
    return struct.pack(f"<{len(values)}I", *values)


def digest(elements):
    return pb.Digest(elements=list(elements))


def show(root):
    return "[" + ", ".join(str(x) for x in root[:2]) + ", ...]"


# ---------------------------------------------------------------------------------------
# The client


class Client:
    """The MemCommit stub plus the call metadata (bearer token) and a timeout on every
    call."""

    def __init__(self, target, token=None, options=CHANNEL_OPTIONS):
        self.target = target
        self.token = token
        self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.MemCommitStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def wait_ready(self, timeout_s=10):
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise CheckFailed(f"no server answers at {self.target} after {timeout_s} s")

    def call(self, method, request):
        """A unary call by name, e.g. call("GetRoot", GetRootRequest(...))."""
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=CALL_TIMEOUT_S)

    def write_memory(self, chunks, attempts=3):
        """Send the chunks as one WriteMemory stream; on a transport failure send the same
        stream again. Safe because a stream is applied whole or not at all (a failed or
        cancelled stream changes nothing) and its writes are absolute bytes."""
        for attempt in range(1, attempts + 1):
            try:
                return self.stub.WriteMemory(
                    iter(chunks), metadata=self.metadata, timeout=CALL_TIMEOUT_S
                )
            except grpc.RpcError as e:
                retryable = e.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not retryable or attempt == attempts:
                    raise
                print(f"  WriteMemory attempt {attempt}: {e.code().name}; sending it again")

    def close(self):
        self.channel.close()


def touched_blocks(batch):
    """[(slot, block, cells)] to the packed TouchedBlocks message."""
    return pb.TouchedBlocks(
        slots=pack_u32([s for s, _, _ in batch]),
        blocks=pack_u32([b for _, b, _ in batch]),
        cells=pack_u32([c for _, _, cells in batch for c in cells]),
    )


def check_openings(openings, positions, image, root, layout, what):
    """Each opening is of the asked position, carries the image's cells, and verifies
    against root."""
    check(
        len(openings) == len(positions),
        f"{what}: {len(openings)} openings for {len(positions)} positions",
    )
    for o, (slot, block) in zip(openings, positions):
        check(
            (o.slot, o.block) == (slot, block),
            f"{what}: opening of ({o.slot}, {o.block}), asked ({slot}, {block})",
        )
        check(
            list(o.cells) == image.block(slot, block),
            f"{what}: opening ({slot}, {block}) has cells {list(o.cells)}, "
            f"sent {image.block(slot, block)}",
        )
        try:
            poseidon2.verify_opening(o, root, layout)
        except poseidon2.OpeningError as e:
            raise CheckFailed(f"{what}: {e}")
    return len(openings)


# ---------------------------------------------------------------------------------------
# The walk-through


def run(client):
    rng = random.Random(20240601)
    summary = []

    info = client.call("GetServerInfo", pb.GetServerInfoRequest())
    summary.append(
        f"server {info.version}: backend {info.backend}, "
        f"max_message_bytes {info.max_message_bytes}, "
        f"max_blocks_per_batch {info.max_blocks_per_batch}"
    )

    # Slot 3 stays empty in the upload: the cancelled stream writes there.
    spaces = [
        (pb.CELL_TYPE_U8, 512),
        (pb.CELL_TYPE_U16, 256),
        (pb.CELL_TYPE_FIELD, 256),
        (pb.CELL_TYPE_U8, 64),
    ]
    created = client.call(
        "CreateTree",
        pb.CreateTreeRequest(
            layout=pb.Layout(
                address_spaces=[pb.AddressSpace(cell=c, num_cells=n) for c, n in spaces]
            )
        ),
    )
    tree_id, layout = created.tree_id, created.layout
    heights = poseidon2.heights(layout)
    check(heights == (6, 2), f"CreateTree resolved heights {heights}, expected (6, 2)")
    summary.append(f"tree {tree_id} ({created.backend}): 4 address spaces, heights 6 + 2")
    try:
        run_tree(client, tree_id, layout, spaces, rng, summary)
    finally:
        client.call("DropTree", pb.DropTreeRequest(tree_id=tree_id))
    return summary


def run_tree(client, tree_id, layout, spaces, rng, summary):
    image = Image(spaces)

    # --- Upload: one stream of 64-byte chunks over slots 0, 1 and 2.
    chunks = []
    for slot, first_cell, count in [(0, 0, 256), (1, 32, 128), (2, 0, 64), (2, 200, 16)]:
        size = image.cell_bytes(slot)
        values = [random_cell(rng, spaces[slot][0]) for _ in range(count)]
        data = b"".join(v.to_bytes(size, "little") for v in values)
        for at in range(0, len(data), 64):
            offset = first_cell * size + at
            chunks.append(
                pb.WriteMemoryChunk(
                    tree_id=tree_id, slot=slot, byte_offset=offset, data=data[at : at + 64]
                )
            )
            image.write_bytes(slot, offset, data[at : at + 64])
    sent = sum(len(c.data) for c in chunks)
    written = client.write_memory(chunks)
    check(
        (written.bytes_written, written.chunks) == (sent, len(chunks)),
        f"WriteMemory applied {written.chunks} chunks / {written.bytes_written} bytes, "
        f"sent {len(chunks)} / {sent}",
    )
    summary.append(f"upload: {len(chunks)} chunks, {sent} bytes in one WriteMemory stream")

    # --- A cancelled stream changes nothing.
    cancelled_stream(client, tree_id)
    summary.append("cancelled WriteMemory stream (1 chunk sent, then cancel()): nothing applied")

    # --- Build: root step 0 is the root of the uploaded image.
    built = client.call("BuildTree", pb.BuildTreeRequest(tree_id=tree_id))
    want = image.root(layout)
    check(
        list(built.root.elements) == want,
        f"BuildTree root {list(built.root.elements)} differs from the Python root {want} of the "
        "image before the cancelled stream (was the cancelled chunk applied?)",
    )
    # One page per written slot (a slot smaller than a page is one page); the cancelled
    # stream's slot 3 must not have become present.
    check(
        built.present_pages == 3,
        f"BuildTree says {built.present_pages} present pages, expected 3 (slots 0, 1, 2)",
    )
    summary.append(f"build: root {show(want)} = Python root, 3 present pages")
    root = want

    # --- Update batches with openings.
    openings_checked = 0
    for n in (5, 12, 20):
        batch = random_batch(rng, spaces, n)
        resp = client.call(
            "UpdateBlocks",
            pb.UpdateBlocksRequest(
                tree_id=tree_id,
                blocks=touched_blocks(batch),
                return_openings=True,
                expected_old_root=digest(root),
            ),
        )
        for slot, block, cells in batch:
            image.set_block(slot, block, cells)
        want = image.root(layout)
        check(
            list(resp.old_root.elements) == root,
            f"UpdateBlocks old_root {list(resp.old_root.elements)}, expected {root}",
        )
        check(
            list(resp.new_root.elements) == want,
            f"UpdateBlocks new_root {list(resp.new_root.elements)} differs from the Python "
            f"root {want}",
        )
        check(not resp.already_applied, "a first attempt came back already_applied")
        openings_checked += check_openings(
            resp.openings,
            [(s, b) for s, b, _ in batch],
            image,
            want,
            layout,
            f"UpdateBlocks ({n} blocks)",
        )
        root = want
    summary.append(
        f"updates: 3 batches, new_root = Python root each time, "
        f"{openings_checked} returned openings verified"
    )

    # --- GetOpenings of written and never-written blocks.
    positions = [(0, 0), (0, 63), (1, 4), (2, 31), (3, 0), (3, 7)]
    got = client.call(
        "GetOpenings",
        pb.GetOpeningsRequest(
            tree_id=tree_id,
            positions=pb.Positions(
                slots=pack_u32([s for s, _ in positions]),
                blocks=pack_u32([b for _, b in positions]),
            ),
        ),
    )
    current = list(client.call("GetRoot", pb.GetRootRequest(tree_id=tree_id)).root.elements)
    check(
        current == root == list(got.root.elements),
        f"GetRoot {current} / GetOpenings root {list(got.root.elements)}, expected {root}",
    )
    n = check_openings(got.openings, positions, image, root, layout, "GetOpenings")
    summary.append(f"GetOpenings: {n} openings verified against GetRoot")

    # --- Safe retry, then a stale expected_old_root.
    safe_retry(client, tree_id, layout, spaces, image, root, rng, summary)


def random_batch(rng, spaces, n):
    """n distinct random (slot, block, cells) over every slot."""
    positions = set()
    while len(positions) < n:
        slot = rng.randrange(len(spaces))
        positions.add((slot, rng.randrange(spaces[slot][1] // 8)))
    return [
        (s, b, [random_cell(rng, spaces[s][0]) for _ in range(8)])
        for s, b in sorted(positions, key=lambda p: rng.random())
    ]


def cancelled_stream(client, tree_id):
    """Start a WriteMemory stream, let it send one chunk, cancel it: nothing is applied.

    The request generator yields one chunk into slot 3 (empty so far), then blocks.
    grpcio pulls the next request only once the previous one is written to the transport,
    so when the generator is asked again the chunk has left; a short pause lets the
    server receive it before cancel() sends RST_STREAM(CANCEL).
    """
    first_sent = threading.Event()
    release = threading.Event()

    def requests():
        yield pb.WriteMemoryChunk(tree_id=tree_id, slot=3, byte_offset=0, data=bytes(range(1, 65)))
        first_sent.set()
        release.wait(CALL_TIMEOUT_S)

    future = client.stub.WriteMemory.future(
        requests(), metadata=client.metadata, timeout=CALL_TIMEOUT_S
    )
    try:
        check(
            first_sent.wait(10), "the WriteMemory stream did not take its first chunk within 10 s"
        )
        time.sleep(0.5)
        if not future.cancel():
            # The call had already ended: the server answered before the stream did.
            raise CheckFailed(
                f"cancel() came too late: the stream had ended ({future.exception()!r})"
            )
    finally:
        release.set()
    try:
        future.result(timeout=CALL_TIMEOUT_S)
        raise CheckFailed("a cancelled WriteMemory stream returned a result")
    except grpc.FutureCancelledError:
        pass


def safe_retry(client, tree_id, layout, spaces, image, root, rng, summary):
    """A batch whose reply is lost, retried; then the same request after the tree moved."""
    batch = random_batch(rng, spaces, 4)
    request = pb.UpdateBlocksRequest(
        tree_id=tree_id,
        blocks=touched_blocks(batch),
        return_openings=True,
        expected_old_root=digest(root),
    )
    updates_before = tree_updates(client, tree_id)

    # The reply (4 openings, about 1.3 KB) is larger than this channel accepts: grpcio
    # fails the call with RESOURCE_EXHAUSTED after the server has applied the batch.
    tiny = Client(client.target, client.token, options=[("grpc.max_receive_message_length", 256)])
    try:
        tiny.call("UpdateBlocks", request)
        raise CheckFailed("the UpdateBlocks reply fit in 256 bytes; it was meant to be lost")
    except grpc.RpcError as e:
        check(
            e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the lost reply gave {e.code().name} ({e.details()}), expected RESOURCE_EXHAUSTED",
        )
    finally:
        tiny.close()

    # The identical request again, on the normal channel.
    retry = client.call("UpdateBlocks", request)
    for slot, block, cells in batch:
        image.set_block(slot, block, cells)
    want = image.root(layout)
    check(retry.already_applied, "the retry of an applied batch did not say already_applied")
    check(
        list(retry.old_root.elements) == root,
        f"retry old_root {list(retry.old_root.elements)}, expected {root}",
    )
    check(
        list(retry.new_root.elements) == want,
        f"retry new_root {list(retry.new_root.elements)}, expected the Python root {want}",
    )
    check_openings(
        retry.openings, [(s, b) for s, b, _ in batch], image, want, layout, "retried UpdateBlocks"
    )
    updates = tree_updates(client, tree_id)
    check(
        updates == updates_before + 1,
        f"the tree counts {updates - updates_before} batches for one batch sent twice",
    )
    summary.append(
        f"safe retry: reply lost (RESOURCE_EXHAUSTED), identical request -> already_applied, "
        f"same new_root {show(want)}, counted once"
    )

    # Another batch moves the tree on; the same request is now stale.
    moved = random_batch(rng, spaces, 3)
    resp = client.call(
        "UpdateBlocks",
        pb.UpdateBlocksRequest(
            tree_id=tree_id, blocks=touched_blocks(moved), expected_old_root=digest(want)
        ),
    )
    for slot, block, cells in moved:
        image.set_block(slot, block, cells)
    now = image.root(layout)
    check(
        list(resp.new_root.elements) == now,
        f"UpdateBlocks new_root {list(resp.new_root.elements)}, expected {now}",
    )
    try:
        client.call("UpdateBlocks", request)
        raise CheckFailed("a batch with a stale expected_old_root was accepted")
    except grpc.RpcError as e:
        details = e.details()
        check(
            e.code() == grpc.StatusCode.FAILED_PRECONDITION,
            f"stale expected_old_root gave {e.code().name} ({details}), "
            "expected FAILED_PRECONDITION",
        )
    # The message names both roots, as lists of canonical integers.
    check(
        str(root) in details and str(now) in details,
        f"FAILED_PRECONDITION does not name the expected root {root} and the tree's root "
        f"{now}: {details}",
    )
    current = list(client.call("GetRoot", pb.GetRootRequest(tree_id=tree_id)).root.elements)
    check(current == now, f"the root changed to {current} after a refused batch; expected {now}")
    summary.append(
        "stale expected_old_root (the same request after another batch): FAILED_PRECONDITION "
        "naming both roots; root unchanged"
    )


def tree_updates(client, tree_id):
    """TreeInfo.updates of one tree (ListTrees)."""
    for t in client.call("ListTrees", pb.ListTreesRequest()).trees:
        if t.tree_id == tree_id:
            return t.updates
    raise CheckFailed(f"ListTrees does not list tree {tree_id}")


def main():
    global pb, pb_grpc
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("MEMCOMMIT_TARGET", "127.0.0.1:50051"),
        help="HOST:PORT of `memcommit serve` (env MEMCOMMIT_TARGET)",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("MEMCOMMIT_TOKEN_FILE"),
        help="file holding the bearer token of `serve --auth-token-file` "
        "(env MEMCOMMIT_TOKEN_FILE)",
    )
    parser.add_argument(
        "--proto-dir",
        default=str(DEFAULT_PROTO_DIR),
        help="directory holding memcommit/v1/memcommit.proto",
    )
    args = parser.parse_args()

    pb, pb_grpc = load_stubs(args.proto_dir)
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    client = Client(args.target, token)
    try:
        client.wait_ready()
        summary = run(client)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"FAILED: unexpected gRPC error {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print("memcommit Python client: all checks passed")
    for line in summary:
        print(f"  - {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
