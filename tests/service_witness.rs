//! `UpdateBlocks.return_witness` end to end over gRPC: the packed witness decodes to the
//! reference's rows and holds together from the old root to the new; its size counts in
//! the message limit before anything is applied; a retry of a batch whose reply was lost
//! gets the same witness back.

mod common;

use common::server::{err, start};
use common::{four_spaces, image_with};
use memcommit::hash::Digest;
use memcommit::layout::MemoryLayout;
use memcommit::service::client::{Client, Returns};
use memcommit::service::{codec, proto, Limits};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::witness::{check_witness, witness_rows};
use memcommit::tree::{Backend, MemoryTree, TouchedBlock};
use prost::Message;
use tonic::Code;

const WITNESS: Returns = Returns {
    openings: false,
    witness: true,
};

/// A tree on the `four_spaces` vector's image, built, with the reference beside it.
async fn built(c: &mut Client) -> (String, MemoryLayout, ReferenceTree) {
    let (layout, leaves, root) = four_spaces();
    let t = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create");
    for l in &leaves {
        let cell = layout.address_spaces()[l.slot as usize].cell;
        let raw: Vec<u8> = l
            .cells
            .iter()
            .flat_map(|v| v.to_le_bytes()[..cell.bytes()].to_vec())
            .collect();
        let offset = l.block * 8 * cell.bytes() as u64;
        c.write_memory(&t.tree_id, l.slot, offset, &raw)
            .await
            .expect("write");
    }
    assert_eq!(c.build_tree(&t.tree_id).await.expect("build"), root);
    let reference = ReferenceTree::build(layout.clone(), image_with(&layout, &leaves), 3);
    (t.tree_id, layout, reference)
}

/// `n` distinct blocks: runs of adjacent blocks in every slot, so rows have both children
/// touched as well as one.
fn batch(layout: &MemoryLayout, n: u64, salt: u32) -> Vec<TouchedBlock> {
    let mut out = Vec::new();
    for (slot, space) in layout.address_spaces().iter().enumerate() {
        let blocks = space.num_blocks();
        for i in 0..n.min(blocks) {
            let block = (i * 7 + u64::from(salt)) % blocks;
            if out
                .iter()
                .any(|b: &TouchedBlock| b.slot == slot as u32 && b.block == block)
            {
                continue;
            }
            let max = space.cell.max_value();
            out.push(TouchedBlock {
                slot: slot as u32,
                block,
                cells: core::array::from_fn(|j| (salt + i as u32 * 31 + j as u32) % (max + 1)),
            });
        }
    }
    out
}

fn request(id: &str, blocks: &[TouchedBlock], old: Option<&Digest>) -> proto::UpdateBlocksRequest {
    proto::UpdateBlocksRequest {
        tree_id: id.into(),
        blocks: Some(codec::encode_blocks(blocks).expect("pack")),
        return_openings: false,
        expected_old_root: old.map(codec::digest_to_proto),
        return_witness: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_witness_decodes_to_the_reference_rows() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let (id, layout, mut reference) = built(c).await;
    let h = layout.address_space_height() + layout.address_height();
    for salt in 0..4 {
        let blocks = batch(&layout, 12, salt);
        let old = reference.root();
        let (new, want) = reference.update_with_witness(&blocks).expect("reference");
        // The raw reply: decode the columns by hand.
        let reply = c
            .raw()
            .update_blocks(request(&id, &blocks, None))
            .await
            .expect("update")
            .into_inner();
        let w = reply.witness.expect("a witness was asked for");
        let n = want.len();
        assert_eq!(
            (w.heights.len(), w.indices.len(), w.old_left.len()),
            (4 * n, 8 * n, 32 * n)
        );
        assert_eq!((w.new_right.len(), w.touched.len()), (32 * n, n));
        let encoded = w.encoded_len() as u64;
        assert!(encoded >= n as u64 * codec::WITNESS_ROW_BYTES);
        assert!(encoded <= codec::witness_encoded_bound(witness_rows(&layout, &blocks)));
        let rows = codec::witness_from_proto(&w, "witness").expect("decodes");
        assert_eq!(rows, want, "batch {salt}");
        check_witness(&rows, h, &old, &new).expect("consistent");
        // Bit 0 is the left child, bit 1 the right.
        for (r, &flags) in rows.iter().zip(w.touched.iter()) {
            assert_eq!(flags, u8::from(r.touched[0]) | u8::from(r.touched[1]) << 1);
        }
        assert!(rows.iter().any(|r| r.touched == [true, true]));
        assert!(rows.iter().any(|r| r.touched == [false, true]));
        assert!(rows.iter().any(|r| r.touched == [true, false]));
    }
    // The client decodes and checks it too; an empty batch has no rows.
    let old = reference.root();
    let blocks = batch(&layout, 3, 9);
    let (new, want) = reference.update_with_witness(&blocks).expect("reference");
    let r = c
        .update_safely(&id, &blocks, WITNESS, old)
        .await
        .expect("update");
    assert_eq!((r.new_root, r.witness), (new, want));
    let r = c
        .update_safely(&id, &[], WITNESS, new)
        .await
        .expect("empty");
    assert!(r.witness.is_empty());
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_over_the_message_limit_is_refused_before_the_batch_applies() {
    const LIMIT: usize = 32 << 10;
    let mut srv = start(Limits {
        max_message_bytes: LIMIT,
        ..Limits::default()
    })
    .await;
    let c = &mut srv.client;
    let (id, layout, mut reference) = built(c).await;
    let root = reference.root();
    // 64 blocks per slot: about 600 rows, 85 KB of witness; the request is 10 KB.
    let blocks = batch(&layout, 64, 1);
    let rows = witness_rows(&layout, &blocks);
    assert!(
        rows * codec::WITNESS_ROW_BYTES > LIMIT as u64,
        "{rows} rows"
    );
    err(
        c.update_safely(&id, &blocks, WITNESS, root).await,
        Code::ResourceExhausted,
        &[
            &format!("max_message_bytes = {LIMIT}"),
            &format!("a witness of {rows} rows"),
            "nothing was changed",
        ],
    );
    assert_eq!(c.get_root(&id).await.expect("root"), root);
    let listed = &c.list_trees().await.expect("list")[0];
    assert_eq!(listed.updates, 0, "nothing was applied");
    // Without the witness it applies; a small batch's witness fits.
    let new = reference.update(&blocks).expect("reference");
    let r = c
        .update_blocks_safely(&id, &blocks, false, root)
        .await
        .expect("no witness");
    assert_eq!(r.new_root, new);
    let small = batch(&layout, 4, 2);
    let (newer, want) = reference.update_with_witness(&small).expect("reference");
    let r = c
        .update_safely(&id, &small, WITNESS, new)
        .await
        .expect("small");
    assert_eq!((r.new_root, r.witness), (newer, want));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_first_calls_witness() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let (id, layout, mut reference) = built(c).await;
    let r0 = reference.root();
    let blocks = batch(&layout, 16, 5);
    let (r1, want) = reference.update_with_witness(&blocks).expect("reference");
    // The reply (a witness of ~200 rows, ~28 KB) is lost: this client accepts 1 KiB.
    let mut small = c.raw().clone().max_decoding_message_size(1024);
    let lost = small
        .update_blocks(request(&id, &blocks, Some(&r0)))
        .await
        .expect_err("over the client's limit");
    assert!(memcommit::service::client::reply_may_be_lost(&lost));
    assert_eq!(c.get_root(&id).await.expect("root"), r1, "applied");
    let again = c
        .update_safely(&id, &blocks, WITNESS, r0)
        .await
        .expect("retry");
    assert!(again.already_applied);
    assert_eq!((again.old_root, again.new_root), (r0, r1));
    assert_eq!(again.witness, want, "the first call's witness, kept");

    // A batch applied without a witness cannot give one on its retry.
    let next = batch(&layout, 5, 6);
    let r2 = reference.update(&next).expect("reference");
    let r = c
        .update_blocks_safely(&id, &next, false, r1)
        .await
        .expect("no witness");
    assert_eq!(r.new_root, r2);
    err(
        c.update_safely(&id, &next, WITNESS, r1).await,
        Code::FailedPrecondition,
        &[
            "already applied without return_witness",
            "nothing was applied again",
        ],
    );
    assert_eq!(c.get_root(&id).await.expect("root"), r2);
    srv.stop().await;
}
