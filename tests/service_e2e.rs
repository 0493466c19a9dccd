//! End-to-end gRPC tests: a real server on 127.0.0.1 with an ephemeral port, driven through
//! `memcommit::service::client::Client` (and the generated client where the typed one cannot
//! express a malformed request). Every root is checked against `ReferenceTree` on the same
//! data.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::server::{err, start};
use common::{four_spaces, image_with};
use memcommit::hash::{Digest, P};
use memcommit::image::MemoryImage;
use memcommit::layout::{CellType, MemoryLayout};
use memcommit::service::client::Client;
use memcommit::service::{codec, proto, Limits, SERVICE_NAME};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{node_bytes, verify_opening, Backend, MemoryTree, TouchedBlock};
use prost::bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

/// A block's cells as raw little-endian bytes of `cell`.
fn raw_cells(cell: CellType, cells: &[u32]) -> Vec<u8> {
    cells
        .iter()
        .flat_map(|v| v.to_le_bytes()[..cell.bytes()].to_vec())
        .collect()
}

fn reference(layout: &MemoryLayout, blocks: &[TouchedBlock]) -> ReferenceTree {
    ReferenceTree::build(layout.clone(), image_with(layout, blocks), 3)
}

/// A batch of `n` distinct random blocks over every non-empty slot.
fn random_batch(rng: &mut StdRng, layout: &MemoryLayout, n: usize) -> Vec<TouchedBlock> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        let slot = rng.random_range(0..layout.address_spaces().len() as u32);
        let space = layout.address_spaces()[slot as usize];
        if space.num_blocks() == 0 {
            continue;
        }
        let block = rng.random_range(0..space.num_blocks());
        if seen.insert((slot, block)) {
            out.push(TouchedBlock {
                slot,
                block,
                cells: std::array::from_fn(|_| rng.random_range(0..=space.cell.max_value())),
            });
        }
    }
    out
}

fn layout_json(json: &str) -> MemoryLayout {
    MemoryLayout::from_json(json).expect("layout")
}

/// Creates a tree on the `four_spaces` vector's image (written one block per stream) and
/// builds it.
async fn built_four_spaces(c: &mut Client) -> (String, MemoryLayout, Vec<TouchedBlock>, Digest) {
    let (layout, leaves, root) = four_spaces();
    let t = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create");
    for l in &leaves {
        let cell = layout.address_spaces()[l.slot as usize].cell;
        let offset = l.block * 8 * cell.bytes() as u64;
        let n = c
            .write_memory(&t.tree_id, l.slot, offset, &raw_cells(cell, &l.cells))
            .await
            .expect("write");
        assert_eq!(n, 8 * cell.bytes() as u64);
    }
    assert_eq!(c.build_tree(&t.tree_id).await.expect("build"), root);
    (t.tree_id, layout, leaves, root)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_matches_vector_and_reference() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let (layout, leaves, vector_root) = four_spaces();

    let t = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create");
    assert_eq!(t.omitted_levels, 3);
    // A new tree reserves its empty shape: no page, so no raw bytes yet.
    let empty = MemoryImage::zeroed(&layout).expect("image");
    assert_eq!(t.node_bytes, node_bytes(&layout, &empty, 3));
    assert_eq!(t.raw_bytes, 0);
    assert_eq!(t.declared_raw_bytes, layout.raw_bytes());
    assert_eq!(t.declared_raw_bytes, 128 * 2 + 8192 * 2 + 32 + 64 * 4);

    // Slot 1 as one image written in three streams, the last split at an odd block; the
    // other leaves one block each.
    let cell1 = layout.address_spaces()[1].cell;
    let mut slot1 = vec![0u8; 8192 * 2];
    for l in leaves.iter().filter(|l| l.slot == 1) {
        let at = l.block as usize * 16;
        slot1[at..at + 16].copy_from_slice(&raw_cells(cell1, &l.cells));
    }
    let mut written = 0;
    for (start, end) in [(0, 4096), (4096, 10000), (10000, 16384)] {
        written += c
            .write_memory(&t.tree_id, 1, start as u64, &slot1[start..end])
            .await
            .expect("write slot 1");
    }
    assert_eq!(written, 16384);
    for l in leaves.iter().filter(|l| l.slot != 1) {
        let cell = layout.address_spaces()[l.slot as usize].cell;
        let offset = l.block * 8 * cell.bytes() as u64;
        c.write_memory(&t.tree_id, l.slot, offset, &raw_cells(cell, &l.cells))
            .await
            .expect("write");
    }
    let root0 = c.build_tree(&t.tree_id).await.expect("build");
    assert_eq!(root0, vector_root);
    assert_eq!(
        root0.to_canonical(),
        [
            542865982, 1760990598, 1629616186, 77859462, 1640450610, 763687816, 1144923602,
            1244730107
        ]
    );
    let mut reference = reference(&layout, &leaves);
    assert_eq!(reference.root(), root0);

    // Two batches with openings, each checked against the reference and verified.
    let mut rng = StdRng::seed_from_u64(7);
    let mut root = root0;
    for step in 0..2 {
        let batch = random_batch(&mut rng, &layout, 40);
        let r = c
            .update_blocks(&t.tree_id, &batch, true)
            .await
            .expect("update");
        let expected = reference.update(&batch).expect("reference update");
        assert_eq!(r.old_root, root, "step {step}");
        assert_eq!(r.new_root, expected, "step {step}");
        assert_ne!(r.new_root, r.old_root);
        assert_eq!(r.openings.len(), batch.len());
        let positions: Vec<_> = batch.iter().map(|b| (b.slot, b.block)).collect();
        let ref_openings = reference.openings(&positions).expect("reference openings");
        for ((o, b), ro) in r.openings.iter().zip(&batch).zip(&ref_openings) {
            assert_eq!((o.slot, o.block, o.cells), (b.slot, b.block, b.cells));
            assert_eq!(o.siblings.len(), layout.opening_len());
            verify_opening(&r.new_root, &layout, o).expect("opening verifies");
            assert_eq!(o, ro);
        }
        root = r.new_root;
    }

    // Without openings, and the empty batch.
    let batch = random_batch(&mut rng, &layout, 5);
    let r = c
        .update_blocks(&t.tree_id, &batch, false)
        .await
        .expect("update");
    assert!(r.openings.is_empty());
    assert_eq!(r.old_root, root);
    root = reference.update(&batch).expect("reference");
    assert_eq!(r.new_root, root);
    let r = c.update_blocks(&t.tree_id, &[], true).await.expect("empty");
    assert_eq!((r.old_root, r.new_root), (root, root));
    assert!(r.openings.is_empty());

    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), root);

    // Openings of touched, untouched and repeated positions, in request order.
    let positions = vec![(1, 1023), (0, 0), (3, 7), (2, 3), (0, 0), (1, 512)];
    let openings = c
        .get_openings(&t.tree_id, &positions)
        .await
        .expect("openings");
    assert_eq!(
        openings,
        reference.openings(&positions).expect("reference openings")
    );
    for (o, p) in openings.iter().zip(&positions) {
        assert_eq!((o.slot, o.block), *p);
        verify_opening(&root, &layout, o).expect("verifies");
    }
    let mut tampered = openings[0].clone();
    tampered.cells[0] ^= 1;
    assert!(verify_opening(&root, &layout, &tampered).is_err());

    // A second, unbuilt tree shows up as CREATED.
    let t2 = c
        .create_tree(&layout, Some(0), Backend::Reference)
        .await
        .expect("create 2");
    assert_eq!(t2.omitted_levels, 0);
    assert_eq!(t2.node_bytes, node_bytes(&layout, &empty, 0));

    let trees = c.list_trees().await.expect("list");
    assert_eq!(trees.len(), 2);
    let info = trees.iter().find(|i| i.tree_id == t.tree_id).expect("t");
    assert_eq!(info.state, proto::TreeState::Built as i32);
    assert_eq!(info.backend, "cpu");
    assert_eq!(info.omitted_levels, 3);
    // Four batches, one of them empty: an empty batch is not an update.
    assert_eq!(info.updates, 3);
    assert_eq!(
        codec::digest_from_proto(info.root.as_ref(), "root").expect("root"),
        root
    );
    assert_eq!(
        codec::layout_from_proto(info.layout.as_ref(), "layout").expect("layout"),
        layout
    );
    // Every page was written: once built, the tree reserves exactly what it holds.
    assert_eq!(info.present_pages, 5);
    assert_eq!(info.host_raw_bytes, layout.raw_bytes());
    assert_eq!(
        info.reserved_bytes,
        info.host_node_bytes + info.host_raw_bytes,
        "{info:?}"
    );
    assert!(info.host_node_bytes >= t.node_bytes, "{info:?}");
    assert_eq!((info.device_node_bytes, info.device_raw_bytes), (0, 0));
    let info2 = trees.iter().find(|i| i.tree_id == t2.tree_id).expect("t2");
    assert_eq!(info2.state, proto::TreeState::Created as i32);
    assert_eq!(info2.backend, "reference");
    assert!(info2.root.is_none());
    assert_eq!(info2.host_node_bytes, 0);

    let si = c.server_info().await.expect("info");
    match memcommit::tree::cuda::probe_device() {
        Err(_) => {
            assert_eq!(si.backend, "cpu");
            assert_eq!(si.device, "none");
            assert_eq!(
                (si.device_memory_free_bytes, si.device_memory_total_bytes),
                (0, 0)
            );
        }
        Ok(gpu) => {
            assert_eq!(si.backend, "cuda");
            assert_eq!(si.device, gpu.name);
            assert_eq!(si.device_memory_total_bytes, gpu.total_bytes);
            assert!(si.device_memory_free_bytes <= si.device_memory_total_bytes);
        }
    }
    assert_eq!(si.trees, trees);
    assert_eq!(
        si.total_reserved_bytes,
        info.reserved_bytes + t2.node_bytes + t2.raw_bytes
    );
    assert_eq!(si.total_present_pages, 5);
    assert_eq!(
        si.total_host_bytes,
        trees
            .iter()
            .map(|i| i.host_node_bytes + i.host_raw_bytes)
            .sum::<u64>()
    );
    assert_eq!(si.total_device_bytes, 0);
    assert_eq!(si.max_trees, 64);
    assert_eq!(si.max_message_bytes, 256 << 20);
    assert_eq!(si.max_host_bytes, 16 << 30);
    assert_eq!(si.max_tree_bytes, 16 << 30);
    assert_eq!(si.max_device_bytes, 16 << 30);
    assert_eq!(si.max_blocks_per_batch, 1 << 22);
    assert_eq!(si.request_timeout_ms, 60_000);

    c.drop_tree(&t.tree_id).await.expect("drop");
    err(c.get_root(&t.tree_id).await, Code::NotFound, &[&t.tree_id]);
    err(c.drop_tree(&t.tree_id).await, Code::NotFound, &[]);
    let si = c.server_info().await.expect("info");
    assert_eq!(si.trees.len(), 1);
    assert_eq!(si.total_reserved_bytes, t2.node_bytes + t2.raw_bytes);
    c.drop_tree(&t2.tree_id).await.expect("drop 2");
    let si = c.server_info().await.expect("info");
    assert!(si.trees.is_empty());
    assert_eq!(si.total_reserved_bytes, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_memory_streams_many_chunks() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    // 2^21 field cells = 8 MiB; 5 MiB + 32 bytes of data at 1 MiB go as 2 chunks of the
    // typed client's 4 MiB.
    let layout = layout_json(r#"{"address_spaces": [{"cell": "field", "num_cells": 2097152}]}"#);
    let t = c
        .create_tree(&layout, Some(5), Backend::Cpu)
        .await
        .expect("create");
    let first_cell = (1u64 << 20) / 4;
    let cells: Vec<u32> = (0..(5u32 << 18) + 8)
        .map(|i| i.wrapping_mul(2_654_435_761) % P)
        .collect();
    let data = raw_cells(CellType::Field, &cells);
    let n = c
        .write_memory(&t.tree_id, 0, first_cell * 4, &data)
        .await
        .expect("write");
    assert_eq!(n, data.len() as u64);
    let root = c.build_tree(&t.tree_id).await.expect("build");

    let blocks: Vec<TouchedBlock> = cells
        .chunks_exact(8)
        .enumerate()
        .map(|(i, c)| TouchedBlock {
            slot: 0,
            block: first_cell / 8 + i as u64,
            cells: c.try_into().expect("8"),
        })
        .collect();
    assert_eq!(reference(&layout, &blocks).root(), root);
    srv.stop().await;
}

/// The generated client sends chunks the typed one never would: several trees' ids and a
/// bad chunk in the middle of a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_memory_stream_errors_name_the_chunk() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let layout = layout_json(r#"{"address_spaces": [{"cell": "u16", "num_cells": 64}]}"#);
    let a = c.create_tree(&layout, None, Backend::Cpu).await.expect("a");
    let b = c.create_tree(&layout, None, Backend::Cpu).await.expect("b");
    let chunk = |tree_id: &str, byte_offset: u64, data: &'static [u8]| proto::WriteMemoryChunk {
        tree_id: tree_id.into(),
        slot: 0,
        byte_offset,
        data: Bytes::from_static(data),
    };
    // Chunk 2 has an odd offset for u16 cells: the stream writes nothing, not even chunks
    // 0 and 1.
    let stream = vec![
        chunk(&a.tree_id, 0, &[1, 0, 2, 0]),
        chunk("", 16, &[3, 0, 4, 0]),
        chunk(&a.tree_id, 33, &[5, 0]),
        chunk(&a.tree_id, 40, &[6, 0]),
    ];
    err(
        c.raw().write_memory(tokio_stream::iter(stream)).await,
        Code::InvalidArgument,
        &["chunks[2].byte_offset", "33"],
    );
    // Past the end of the slot (128 bytes).
    err(
        c.raw()
            .write_memory(tokio_stream::iter(vec![chunk(
                &a.tree_id,
                126,
                &[0, 0, 0, 0],
            )]))
            .await,
        Code::InvalidArgument,
        &["chunks[0].byte_offset", "126"],
    );
    // Odd length; unknown slot.
    err(
        c.raw()
            .write_memory(tokio_stream::iter(vec![chunk(&a.tree_id, 0, &[1, 2, 3])]))
            .await,
        Code::InvalidArgument,
        &["chunks[0].data", "length 3"],
    );
    err(
        c.write_memory(&a.tree_id, 1, 0, &[0, 0]).await,
        Code::InvalidArgument,
        &["chunks[0].slot", "slot 1"],
    );
    // A second tree's id mid-stream.
    let stream = vec![chunk(&a.tree_id, 0, &[1, 0]), chunk(&b.tree_id, 0, &[9, 0])];
    err(
        c.raw().write_memory(tokio_stream::iter(stream)).await,
        Code::InvalidArgument,
        &["chunks[1].tree_id", &b.tree_id],
    );
    err(
        c.raw()
            .write_memory(tokio_stream::iter(vec![chunk("", 0, &[1, 0])]))
            .await,
        Code::InvalidArgument,
        &["tree_id"],
    );

    // Every stream above was refused, so nothing stuck.
    let root = c.build_tree(&a.tree_id).await.expect("build");
    assert_eq!(root, reference(&layout, &[]).root());
    // Tree b saw nothing.
    let root_b = c.build_tree(&b.tree_id).await.expect("build b");
    assert_eq!(root_b, reference(&layout, &[]).root());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_invalid_and_leave_the_tree_unchanged() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let (id, layout, leaves, root) = built_four_spaces(c).await;
    // Slots: 0 u16 × 16 blocks, 1 u16 × 1024, 2 u8 × 4, 3 field × 8; 4..7 exist only as
    // empty top-tree leaves.
    let tb = |slot, block, cells| TouchedBlock { slot, block, cells };
    let valid = tb(1, 5, [1, 2, 3, 4, 5, 6, 7, 8]);
    let zero = [0u32; 8];
    let cases: Vec<(Vec<TouchedBlock>, Vec<&str>)> = vec![
        (
            vec![valid, tb(4, 0, zero)],
            vec!["blocks[1].slot", "slot 4"],
        ),
        (
            vec![valid, tb(2, 4, zero)],
            vec!["blocks[1].block", "block 4"],
        ),
        (
            vec![valid, tb(0, 16, zero)],
            vec!["blocks[1].block", "block 16"],
        ),
        (
            vec![valid, tb(2, 0, [0, 0, 256, 0, 0, 0, 0, 0])],
            vec!["blocks[1].cells[2]", "256", "u8"],
        ),
        (
            vec![valid, tb(0, 1, [0, 0, 0, 0, 0, 0, 0, 65536])],
            vec!["blocks[1].cells[7]", "65536", "u16"],
        ),
        (
            vec![valid, tb(3, 1, [P, 0, 0, 0, 0, 0, 0, 0])],
            vec!["blocks[1].cells[0]", "2013265921"],
        ),
        (
            vec![valid, tb(0, 1, zero), tb(1, 5, zero)],
            vec!["blocks[2]", "(slot 1, block 5)", "more than once"],
        ),
    ];
    for (batch, needles) in cases {
        err(
            c.update_blocks(&id, &batch, true).await,
            Code::InvalidArgument,
            &needles,
        );
        assert_eq!(c.get_root(&id).await.expect("root"), root, "{needles:?}");
    }

    // Packing errors, through the generated client.
    let packed = codec::encode_blocks(&[valid, tb(0, 1, zero)]).expect("encode");
    let mut bad_lengths = Vec::new();
    let mut m = packed.clone();
    m.cells = m.cells.slice(..37);
    bad_lengths.push((m, "blocks.cells: 37 bytes is not 32 per block × 2 blocks"));
    let mut m = packed.clone();
    m.cells = m.cells.slice(..56); // 7 cells per block
    bad_lengths.push((m, "blocks.cells: 56 bytes is not 32 per block × 2 blocks"));
    let mut m = packed.clone();
    m.slots = m.slots.slice(..7);
    bad_lengths.push((m, "blocks.slots: 7 bytes is not a multiple of 4"));
    let mut m = packed.clone();
    m.blocks = m.blocks.slice(..4);
    bad_lengths.push((m, "blocks.blocks: 4 bytes is not 4 per block × 2 blocks"));
    for (m, needle) in bad_lengths {
        let r = c
            .raw()
            .update_blocks(proto::UpdateBlocksRequest {
                tree_id: id.clone(),
                blocks: Some(m),
                return_openings: false,
                expected_old_root: None,
                return_witness: false,
            })
            .await;
        err(r, Code::InvalidArgument, &[needle]);
        assert_eq!(c.get_root(&id).await.expect("root"), root, "{needle}");
    }

    // Bad positions.
    err(
        c.get_openings(&id, &[(0, 0), (3, 8)]).await,
        Code::InvalidArgument,
        &["positions[1].block", "block 8"],
    );
    err(
        c.get_openings(&id, &[(9, 0)]).await,
        Code::InvalidArgument,
        &["positions[0].slot", "slot 9"],
    );
    let r = c
        .raw()
        .get_openings(proto::GetOpeningsRequest {
            tree_id: id.clone(),
            positions: Some(proto::Positions {
                slots: Bytes::from_static(&[0; 8]),
                blocks: Bytes::from_static(&[0; 4]),
            }),
        })
        .await;
    err(
        r,
        Code::InvalidArgument,
        &["positions.blocks: 4 bytes is not 4 per position × 2"],
    );

    // No failed call counted as an update, and a valid batch still applies after them.
    let info = c.list_trees().await.expect("list");
    assert_eq!(info[0].updates, 0);
    let mut reference = reference(&layout, &leaves);
    let r = c.update_blocks(&id, &[valid], false).await.expect("update");
    assert_eq!(r.old_root, root);
    assert_eq!(r.new_root, reference.update(&[valid]).expect("reference"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_layouts_and_arguments_are_invalid() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let create =
        |layout: Option<proto::Layout>, k: Option<u32>, backend: &str| proto::CreateTreeRequest {
            layout,
            omitted_levels: k,
            backend: backend.into(),
            ..Default::default()
        };
    let space = |cell: proto::CellType, num_cells| proto::AddressSpace {
        cell: cell as i32,
        num_cells,
    };
    let layout = |spaces: Vec<proto::AddressSpace>, ash: Option<u32>, ah: Option<u32>| {
        Some(proto::Layout {
            address_spaces: spaces,
            address_space_height: ash,
            address_height: ah,
        })
    };
    let u8s = |n| space(proto::CellType::U8, n);
    let cases: Vec<(proto::CreateTreeRequest, Vec<&str>)> = vec![
        (
            create(layout(vec![u8s(12)], None, None), None, "cpu"),
            vec!["layout.address_spaces[0].num_cells", "12"],
        ),
        (
            create(layout(vec![u8s(8), u8s(4)], None, None), None, "cpu"),
            vec!["layout.address_spaces[1].num_cells", "4"],
        ),
        (
            create(layout(vec![], None, None), None, "cpu"),
            vec!["layout.address_spaces", "empty"],
        ),
        (
            create(layout(vec![u8s(1024)], None, Some(5)), None, "cpu"),
            vec!["layout.address_height", "5"],
        ),
        (
            create(layout(vec![u8s(8); 5], Some(2), None), None, "cpu"),
            vec!["layout.address_space_height", "2"],
        ),
        (
            create(
                layout(
                    vec![u8s(8), space(proto::CellType::Unspecified, 8)],
                    None,
                    None,
                ),
                None,
                "cpu",
            ),
            vec!["layout.address_spaces[1].cell", "0"],
        ),
        (
            create(
                layout(
                    vec![proto::AddressSpace {
                        cell: 7,
                        num_cells: 8,
                    }],
                    None,
                    None,
                ),
                None,
                "cpu",
            ),
            vec!["layout.address_spaces[0].cell", "7"],
        ),
        (create(None, None, "cpu"), vec!["layout", "missing"]),
        (
            create(layout(vec![u8s(8)], None, None), Some(21), "cpu"),
            vec!["omitted_levels", "21"],
        ),
        (
            create(layout(vec![u8s(8)], None, None), None, "gpu"),
            vec!["backend", "\"gpu\""],
        ),
    ];
    for (req, needles) in cases {
        err(
            c.raw().create_tree(req).await,
            Code::InvalidArgument,
            &needles,
        );
    }
    // omitted_levels auto: 2^10 u8 blocks need 2^(11−k)·32 node bytes + 8192 raw bytes once
    // written; the empty tree 64 bytes (level 10 and the top root).
    let auto = |k: Option<u32>, budget: u64| proto::CreateTreeRequest {
        auto_omitted_levels: true,
        memory_budget_bytes: Some(budget),
        ..create(layout(vec![u8s(8 << 10)], None, None), k, "cpu")
    };
    err(
        c.raw().create_tree(auto(Some(3), 1 << 30)).await,
        Code::InvalidArgument,
        &["omitted_levels", "must be unset when auto_omitted_levels"],
    );
    err(
        c.raw().create_tree(auto(None, 63)).await,
        Code::ResourceExhausted,
        &["budget of 63 bytes", "smallest need is 64 bytes"],
    );
    let created = c
        .raw()
        .create_tree(auto(None, 40960))
        .await
        .expect("auto fits")
        .into_inner();
    c.write_memory(&created.tree_id, 0, 0, &[1; 8192])
        .await
        .expect("write");
    assert_eq!(
        c.build(&created.tree_id)
            .await
            .expect("build")
            .omitted_levels,
        1
    );
    let si = c.server_info().await.expect("info");
    assert_eq!(si.trees.len(), 1);
    assert_eq!(si.trees[0].omitted_levels, 1);
    c.drop_tree(&created.tree_id).await.expect("drop");
    err(
        c.get_root("").await,
        Code::InvalidArgument,
        &["tree_id", "empty"],
    );
    let si = c.server_info().await.expect("info");
    assert!(si.trees.is_empty());
    assert_eq!(si.total_reserved_bytes, 0);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_trees_are_not_found() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let id = "0c8a5f4e-no-such-tree";
    let block = [TouchedBlock {
        slot: 0,
        block: 0,
        cells: [0; 8],
    }];
    err(c.get_root(id).await, Code::NotFound, &[id]);
    err(c.build_tree(id).await, Code::NotFound, &[id]);
    err(
        c.update_blocks(id, &block, false).await,
        Code::NotFound,
        &[id],
    );
    err(c.get_openings(id, &[(0, 0)]).await, Code::NotFound, &[id]);
    err(c.write_memory(id, 0, 0, &[1]).await, Code::NotFound, &[id]);
    err(c.drop_tree(id).await, Code::NotFound, &[id]);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_out_of_order_are_failed_precondition() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let layout = layout_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 64}]}"#);
    let t = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create");
    let block = [TouchedBlock {
        slot: 0,
        block: 1,
        cells: [1; 8],
    }];
    err(
        c.update_blocks(&t.tree_id, &block, false).await,
        Code::FailedPrecondition,
        &["not built", "BuildTree"],
    );
    err(
        c.get_root(&t.tree_id).await,
        Code::FailedPrecondition,
        &["not built"],
    );
    err(
        c.get_openings(&t.tree_id, &[(0, 0)]).await,
        Code::FailedPrecondition,
        &["not built"],
    );
    c.write_memory(&t.tree_id, 0, 8, &[1; 8])
        .await
        .expect("write");
    let root = c.build_tree(&t.tree_id).await.expect("build");
    assert_eq!(root, reference(&layout, &block).root());
    err(
        c.write_memory(&t.tree_id, 0, 0, &[2; 8]).await,
        Code::FailedPrecondition,
        &["already built"],
    );
    err(
        c.build_tree(&t.tree_id).await,
        Code::FailedPrecondition,
        &["already built"],
    );
    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), root);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_backend_is_unavailable_without_a_device() {
    if let Ok(gpu) = memcommit::tree::cuda::probe_device() {
        println!("skipped: a CUDA device is usable ({})", gpu.name);
        return;
    }
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let layout = layout_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 64}]}"#);
    err(
        c.create_tree(&layout, None, Backend::Cuda).await,
        Code::Unavailable,
        &["cuda"],
    );
    // Nothing stays reserved; auto still works and picks the CPU.
    assert_eq!(c.server_info().await.expect("info").total_reserved_bytes, 0);
    c.create_tree(&layout, None, Backend::Auto)
        .await
        .expect("auto");
    let trees = c.list_trees().await.expect("list");
    assert_eq!(trees.len(), 1);
    assert_eq!(trees[0].backend, "cpu");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_count_and_memory_limits_are_resource_exhausted() {
    // Reservations follow the pages: a tree of the four_spaces layout with every page
    // written reserves `each`, an empty one `empty`.
    let (layout, _, _) = four_spaces();
    let mut full = MemoryImage::zeroed(&layout).expect("image");
    for (slot, space) in layout.address_spaces().iter().enumerate() {
        full.write(slot as u32, 0, &vec![0; space.raw_bytes() as usize])
            .expect("write");
    }
    let empty = node_bytes(&layout, &MemoryImage::zeroed(&layout).expect("image"), 3);
    let each = node_bytes(&layout, &full, 3) + layout.raw_bytes();
    // While a stream is open its staged bytes count too: at most the largest slot's.
    let staging = layout
        .address_spaces()
        .iter()
        .map(|s| s.raw_bytes())
        .max()
        .expect("spaces");
    let limit = 2 * each + empty + staging;
    let mut srv = start(Limits {
        max_trees: 3,
        max_host_bytes: limit,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    async fn write_all(
        c: &mut Client,
        layout: &MemoryLayout,
        id: &str,
    ) -> Result<(), tonic::Status> {
        for (slot, space) in layout.address_spaces().iter().enumerate() {
            c.write_memory(id, slot as u32, 0, &vec![0; space.raw_bytes() as usize])
                .await?;
        }
        Ok(())
    }
    let a = c.create_tree(&layout, None, Backend::Cpu).await.expect("a");
    let b = c.create_tree(&layout, None, Backend::Cpu).await.expect("b");
    write_all(c, &layout, &a.tree_id).await.expect("a's pages");
    write_all(c, &layout, &b.tree_id).await.expect("b's pages");
    let third = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("third, empty");
    // Its largest slot's staged bytes and pages pass the limit: refused whole, naming it.
    let slot1 = layout.address_spaces()[1];
    assert_eq!(slot1.raw_bytes(), staging);
    let pages = staging.div_ceil(8192);
    err(
        c.write_memory(&third.tree_id, 1, 0, &vec![0; staging as usize])
            .await,
        Code::ResourceExhausted,
        &[
            &format!("max_host_bytes = {limit}"),
            &format!(
                "tree {} ({staging} staged WriteMemory bytes and {pages} new pages of slot 1) \
                 needs",
                third.tree_id
            ),
            &format!("and {} are already reserved", limit - staging),
        ],
    );
    let info = c.server_info().await.expect("info");
    assert_eq!(info.total_reserved_bytes, limit - staging);
    assert_eq!(info.total_present_pages, 10);
    c.drop_tree(&a.tree_id).await.expect("drop a");
    write_all(c, &layout, &third.tree_id)
        .await
        .expect("fits after a drop");

    // A small layout fits the bytes but not the tree count.
    let small = layout_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 8}]}"#);
    let s = c
        .create_tree(&small, None, Backend::Cpu)
        .await
        .expect("third");
    err(
        c.create_tree(&small, None, Backend::Cpu).await,
        Code::ResourceExhausted,
        &["max_trees = 3"],
    );
    for id in [&b.tree_id, &third.tree_id, &s.tree_id] {
        c.drop_tree(id).await.expect("drop");
    }
    assert_eq!(c.server_info().await.expect("info").total_reserved_bytes, 0);

    srv.stop().await;

    // A declared 16 GiB space costs nothing until written; its pages then count.
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let huge = layout_json(r#"{"address_spaces": [{"cell": "field", "num_cells": 4294967296}]}"#);
    let h = c
        .create_tree(&huge, None, Backend::Cpu)
        .await
        .expect("huge, sparse");
    // h = 29: the levels at most 1024 wide (19..=29, 2047 digests) and the top root.
    assert_eq!(h.node_bytes, 2048 * 32);
    let last = (1u64 << 34) - 4;
    c.write_memory(&h.tree_id, 0, last, &[1, 0, 0, 0])
        .await
        .expect("the last cell");
    let root = c.build_tree(&h.tree_id).await.expect("build");
    let mut one = MemoryImage::zeroed(&huge).expect("image");
    one.write(0, last, &[1, 0, 0, 0]).expect("write");
    assert_eq!(root, ReferenceTree::build(huge, Arc::new(one), 3).root());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limit_is_resource_exhausted() {
    const LIMIT: usize = 64 << 10;
    let mut srv = start(Limits {
        max_message_bytes: LIMIT,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    // One u8 slot of 8192 blocks: 13 siblings per opening.
    let layout = layout_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 65536}]}"#);
    let t = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create");
    let limit_text = format!("max_message_bytes = {LIMIT}");
    // A WriteMemory chunk over the limit.
    err(
        c.write_memory(&t.tree_id, 0, 0, &vec![1u8; 100_000]).await,
        Code::ResourceExhausted,
        &[&limit_text],
    );
    c.write_memory(&t.tree_id, 0, 0, &vec![1u8; 30_000])
        .await
        .expect("small write");
    let root = c.build_tree(&t.tree_id).await.expect("build");
    let mut reference = ReferenceTree::build(
        layout.clone(),
        {
            let mut image = memcommit::image::MemoryImage::zeroed(&layout).expect("image");
            image.write(0, 0, &vec![1u8; 30_000]).expect("write");
            Arc::new(image)
        },
        3,
    );
    assert_eq!(root, reference.root());

    // A 4096-block request is 160 KiB.
    let mut rng = StdRng::seed_from_u64(3);
    let big = random_batch(&mut rng, &layout, 4096);
    err(
        c.update_blocks(&t.tree_id, &big, false).await,
        Code::ResourceExhausted,
        &[&limit_text],
    );
    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), root);
    // 150 openings (~70 KiB) do not fit a response; the batch is refused before it applies.
    let batch = &big[..150];
    err(
        c.update_blocks(&t.tree_id, batch, true).await,
        Code::ResourceExhausted,
        &[&limit_text, "150 openings"],
    );
    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), root);
    let positions: Vec<_> = batch.iter().map(|b| (b.slot, b.block)).collect();
    err(
        c.get_openings(&t.tree_id, &positions).await,
        Code::ResourceExhausted,
        &[&limit_text],
    );
    // Under the limit both work.
    let r = c
        .update_blocks(&t.tree_id, batch, false)
        .await
        .expect("update");
    assert_eq!(r.new_root, reference.update(batch).expect("reference"));
    let openings = c
        .get_openings(&t.tree_id, &positions[..120])
        .await
        .expect("openings");
    assert_eq!(openings.len(), 120);
    for o in &openings {
        verify_opening(&r.new_root, &layout, o).expect("verifies");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_on_two_trees() {
    let srv = start(Limits::default()).await;
    let layouts = [
        four_spaces().0,
        layout_json(
            r#"{"address_spaces": [{"cell": "field", "num_cells": 4096},
                {"cell": "u8", "num_cells": 0}, {"cell": "u16", "num_cells": 1024}]}"#,
        ),
    ];
    let mut tasks = Vec::new();
    for (i, layout) in layouts.into_iter().enumerate() {
        let mut c = srv.client.clone();
        tasks.push(tokio::spawn(async move {
            let t = c
                .create_tree(&layout, Some(i as u32 * 2), Backend::Cpu)
                .await
                .expect("create");
            let mut reference = reference(&layout, &[]);
            let mut root = c.build_tree(&t.tree_id).await.expect("build");
            assert_eq!(root, reference.root());
            let mut rng = StdRng::seed_from_u64(100 + i as u64);
            for _ in 0..15 {
                let batch = random_batch(&mut rng, &layout, 30);
                let r = c
                    .update_blocks(&t.tree_id, &batch, i == 0)
                    .await
                    .expect("update");
                assert_eq!(r.old_root, root);
                root = reference.update(&batch).expect("reference");
                assert_eq!(r.new_root, root);
                for o in &r.openings {
                    verify_opening(&root, &layout, o).expect("verifies");
                }
            }
            (t.tree_id, root)
        }));
    }
    let mut c = srv.client.clone();
    for task in tasks {
        let (id, root) = task.await.expect("task");
        assert_eq!(c.get_root(&id).await.expect("root"), root);
    }
    drop(c);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_on_one_tree_are_serialised() {
    const TASKS: usize = 16;
    let srv = start(Limits::default()).await;
    let layout = layout_json(r#"{"address_spaces": [{"cell": "u16", "num_cells": 16384}]}"#);
    let mut c = srv.client.clone();
    let t = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create");
    let root0 = c.build_tree(&t.tree_id).await.expect("build");
    // Task k touches blocks 64k .. 64k+63 only, so the final root is order-independent.
    let mut rng = StdRng::seed_from_u64(11);
    let batches: Vec<Vec<TouchedBlock>> = (0..TASKS as u64)
        .map(|k| {
            (0..64)
                .map(|j| TouchedBlock {
                    slot: 0,
                    block: 64 * k + j,
                    cells: std::array::from_fn(|_| rng.random_range(1..=0xffff)),
                })
                .collect()
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = batches
        .iter()
        .cloned()
        .map(|batch| {
            let mut c = srv.client.clone();
            let id = t.tree_id.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let r = c.update_blocks(&id, &batch, false).await.expect("update");
                (r.old_root, r.new_root)
            })
        })
        .collect();
    let mut steps = HashMap::new();
    for task in tasks {
        let (old, new) = task.await.expect("task");
        assert!(
            steps.insert(old, new).is_none(),
            "two batches saw the same old root"
        );
    }
    let all: Vec<TouchedBlock> = batches.concat();
    let final_root = reference(&layout, &all).root();
    assert_eq!(c.get_root(&t.tree_id).await.expect("root"), final_root);
    // Serialised: the (old → new) pairs form one chain from the build root to the final
    // root through every batch.
    let mut root = root0;
    for _ in 0..TASKS {
        root = *steps.get(&root).expect("chain continues");
    }
    assert_eq!(root, final_root);
    let info = c.list_trees().await.expect("list");
    assert_eq!(info[0].updates, TASKS as u64);
    drop(c);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let srv = start(Limits::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(srv.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let requests = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "memcommit.v1.UpdateBlocksRequest".into(),
                )),
            },
        ];
        let mut stream = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect("reflection v1")
            .into_inner();
        let first = stream.message().await.expect("v1 response").expect("one");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("unexpected v1 response {first:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&SERVICE_NAME), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        let second = stream.message().await.expect("v1 response").expect("two");
        let Some(MessageResponse::FileDescriptorResponse(fd)) = second.message_response else {
            panic!("unexpected v1 response {second:?}");
        };
        let file = <FileDescriptorHead as prost::Message>::decode(&fd.file_descriptor_proto[0][..])
            .expect("descriptor");
        assert_eq!(file.package.as_deref(), Some("memcommit.v1"));
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let mut stream = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter(vec![ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            }]))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("v1alpha response")
            .expect("one");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("unexpected v1alpha response {first:?}");
        };
        assert!(list.service.iter().any(|s| s.name == SERVICE_NAME));
    }
    srv.stop().await;
}

/// Only the fields of `google.protobuf.FileDescriptorProto` the reflection test reads.
#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptorHead {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_returns_ok_and_closes_the_listener() {
    let srv = start(Limits::default()).await;
    let url = srv.url.clone();
    srv.stop().await;
    // The listener is closed once serve has returned.
    assert!(Client::connect(&url).await.is_err());
}

/// `memcommit serve` on an ephemeral port answers, then exits 0 on SIGTERM.
#[cfg(unix)]
#[test]
fn serve_cli_exits_zero_on_sigterm() {
    use std::time::Duration;

    let mut cli = common::server::serve_cli(&["--max-trees", "5"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let max_trees = runtime.block_on(async {
        let mut c = Client::connect(&cli.url()).await.expect("connect");
        c.server_info().await.expect("info").max_trees
    });
    assert_eq!(max_trees, 5);

    cli.sigterm();
    let status = cli.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    cli.wait_for_line("SIGTERM received", Duration::from_secs(5));
}

/// `serve --memory-budget`: the server's budget drives `auto_omitted_levels` when a request
/// gives none, a request's own budget wins, and GetServerInfo reports the budget and which
/// trees had k chosen for them. k is chosen at BuildTree, from the pages present then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_memory_budget_drives_auto_omitted_levels_and_is_reported() {
    // 2^10 u8 blocks, both pages written: 2^(11−k)·32 node bytes + 8192 raw bytes, so
    // 40960 bytes fit k = 1 (32768 + 8192) but not k = 0 (65536 + 8192), and 10240 fit k = 5
    // (2048 + 8192).
    let layout = layout_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 8192}]}"#);
    let auto = |budget: Option<u64>| proto::CreateTreeRequest {
        layout: Some(codec::layout_to_proto(&layout)),
        backend: "cpu".into(),
        auto_omitted_levels: true,
        memory_budget_bytes: budget,
        ..proto::CreateTreeRequest::default()
    };
    let image: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
    // Creates an auto tree, writes the image and builds it: (create response, build).
    async fn create_and_build(
        c: &mut Client,
        req: proto::CreateTreeRequest,
        image: &[u8],
    ) -> (
        proto::CreateTreeResponse,
        Result<memcommit::service::client::BuiltTree, tonic::Status>,
    ) {
        let created = c.raw().create_tree(req).await.expect("create").into_inner();
        c.write_memory(&created.tree_id, 0, 0, image)
            .await
            .expect("write");
        let built = c.build(&created.tree_id).await;
        (created, built)
    }
    for (server_budget, expect_k) in [(40960u64, 1u32), (73728, 0), (10240, 5)] {
        let server = common::server::spawn(memcommit::service::ServiceConfig {
            memory_budget: Some(server_budget),
            ..Default::default()
        })
        .await;
        let mut c = Client::connect(&server.url()).await.expect("connect");
        let (chosen, built) = create_and_build(&mut c, auto(None), &image).await;
        // Until the build, the provisional default k.
        assert_eq!(chosen.omitted_levels, 3);
        assert_eq!(
            built.expect("build").omitted_levels,
            expect_k,
            "budget {server_budget}"
        );
        // The request's budget wins over the server's.
        let (own, built) = create_and_build(&mut c, auto(Some(1 << 30)), &image).await;
        assert_eq!(built.expect("own budget").omitted_levels, 0);
        let fixed = c
            .create_tree(
                &layout_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 8}]}"#),
                Some(2),
                Backend::Cpu,
            )
            .await
            .expect("fixed k");
        let si = c.server_info().await.expect("info");
        assert_eq!(si.memory_budget_bytes, server_budget);
        assert!(si.memory_budget_configured);
        let info = |id: &str| {
            si.trees
                .iter()
                .find(|t| t.tree_id == id)
                .expect("listed")
                .clone()
        };
        let (a, b, f) = (
            info(&chosen.tree_id),
            info(&own.tree_id),
            info(&fixed.tree_id),
        );
        assert_eq!((a.omitted_levels, a.omitted_levels_auto), (expect_k, true));
        assert_eq!((b.omitted_levels, b.omitted_levels_auto), (0, true));
        assert_eq!((f.omitted_levels, f.omitted_levels_auto), (2, false));
        assert_eq!((a.present_pages, f.present_pages), (2, 0));
        drop(c);
        server.stop().await;
    }
    // Below the smallest need of the written image (8320 bytes: 3 node digests at k = 9,
    // the top root and 8192 raw bytes): BuildTree is RESOURCE_EXHAUSTED naming the server's budget, and the tree stays
    // unbuilt.
    let server = common::server::spawn(memcommit::service::ServiceConfig {
        memory_budget: Some(8319),
        ..Default::default()
    })
    .await;
    let mut c = Client::connect(&server.url()).await.expect("connect");
    let (created, built) = create_and_build(&mut c, auto(None), &image).await;
    err(
        built,
        Code::ResourceExhausted,
        &[
            "budget of 8319 bytes",
            "smallest need is 8320 bytes",
            "2 present pages",
        ],
    );
    let info = &c.list_trees().await.expect("list")[0];
    assert_eq!(info.tree_id, created.tree_id);
    assert_eq!(info.state, proto::TreeState::Created as i32);
    // Not even the empty tree (the top root and level 10: 64 bytes) fits 63 bytes.
    err(
        c.raw().create_tree(auto(Some(63))).await,
        Code::ResourceExhausted,
        &["budget of 63 bytes", "smallest need is 64 bytes"],
    );
    drop(c);
    server.stop().await;
    // Without --memory-budget the default is read from the host and reported as such.
    let mut srv = start(Limits::default()).await;
    let si = srv.client.server_info().await.expect("info");
    assert!(!si.memory_budget_configured);
    assert!(
        si.memory_budget_bytes > 0,
        "MemAvailable is readable on Linux"
    );
    srv.stop().await;
}

/// Safe retries (`expected_old_root`): a batch whose reply is lost on the client (a receive
/// limit too small for its openings, as grpcio's 4 MiB default is for large batches) has
/// been applied; resending the identical request returns the same roots with
/// `already_applied`, the openings from the current state, and applies nothing twice. A
/// stale `expected_old_root` is refused naming both roots, with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_retried_without_applying_the_batch_twice() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let (id, layout, leaves, r0) = built_four_spaces(c).await;
    let mut reference = reference(&layout, &leaves);
    let mut rng = StdRng::seed_from_u64(12);
    let b1 = random_batch(&mut rng, &layout, 40);
    let r1 = reference.update(&b1).expect("reference b1");
    let request = proto::UpdateBlocksRequest {
        tree_id: id.clone(),
        blocks: Some(codec::encode_blocks(&b1).expect("pack")),
        return_openings: true,
        expected_old_root: Some(codec::digest_to_proto(&r0)),
        return_witness: false,
    };

    // The reply (40 openings, ~18 KB) is lost: this client accepts 1 KiB.
    let mut small = c.raw().clone().max_decoding_message_size(1024);
    let lost = small
        .update_blocks(request.clone())
        .await
        .expect_err("the reply is over the client's limit");
    assert!(
        memcommit::service::client::reply_may_be_lost(&lost),
        "{lost:?}"
    );
    assert_eq!(
        c.get_root(&id).await.expect("root"),
        r1,
        "the server applied it"
    );

    // The identical request again: already applied, same roots, openings of the new root.
    let again = c
        .update_blocks_safely(&id, &b1, true, r0)
        .await
        .expect("retry");
    assert!(again.already_applied);
    assert_eq!((again.old_root, again.new_root), (r0, r1));
    assert_eq!(again.openings.len(), b1.len());
    for (o, b) in again.openings.iter().zip(&b1) {
        assert_eq!((o.slot, o.block, o.cells), (b.slot, b.block, b.cells));
        verify_opening(&r1, &layout, o).expect("the opening verifies against new_root");
    }
    let info = &c.list_trees().await.expect("list")[0];
    assert_eq!(info.updates, 1, "the retry is not a second update");

    // A second client's batch meant for r0 finds r1: refused, naming both roots.
    let b2 = random_batch(&mut rng, &layout, 5);
    err(
        c.update_blocks_safely(&id, &b2, false, r0).await,
        Code::FailedPrecondition,
        &[
            &format!("expected_old_root {r0:?} differs from the tree's root {r1:?}"),
            "nothing was applied",
        ],
    );
    assert_eq!(c.get_root(&id).await.expect("root"), r1);
    // The same batch with the right root applies; from then on b1's retry is stale.
    let r2 = reference.update(&b2).expect("reference b2");
    let applied = c
        .update_blocks_safely(&id, &b2, false, r1)
        .await
        .expect("b2");
    assert!(!applied.already_applied);
    assert_eq!((applied.old_root, applied.new_root), (r1, r2));
    err(
        c.update_blocks_safely(&id, &b1, false, r0).await,
        Code::FailedPrecondition,
        &[&format!("differs from the tree's root {r2:?}")],
    );
    // A different batch under the last batch's old root is not mistaken for its retry.
    let mut b2_changed = b2.clone();
    b2_changed[0].cells[0] ^= 1;
    err(
        c.update_blocks_safely(&id, &b2_changed, false, r1).await,
        Code::FailedPrecondition,
        &["expected_old_root"],
    );
    // An empty batch under the right root changes nothing and counts no update.
    let empty = c
        .update_blocks_safely(&id, &[], false, r2)
        .await
        .expect("empty");
    assert_eq!((empty.new_root, empty.already_applied), (r2, false));
    let info = &c.list_trees().await.expect("list")[0];
    assert_eq!(info.updates, 2);
    srv.stop().await;
}
