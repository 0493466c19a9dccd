//! `WriteMemory`: an arbitrary protobuf `Chunks` message is the client stream, ending
//! cleanly or cut off with a transport error. The first input byte picks the tree of the
//! first chunk (see `Fixture::pick`); later chunks keep their decoded ids. A refused chunk
//! leaves earlier chunks written and the tree buildable; a cut after applied chunks leaves
//! the tree aborted (no build), and it can still be dropped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check_aborted, write_checked, Chunks, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut w) = Chunks::decode(rest) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        if let Some(first) = w.chunks.first_mut() {
            first.tree_id = f.pick(sel, std::mem::take(&mut first.tree_id));
        }
        let h = &f.handler;
        match write_checked(h, w).await {
            None => {
                h.build_tree(proto::BuildTreeRequest {
                    tree_id: f.ids[0].clone(),
                })
                .await
                .expect("the created fixture tree builds after any WriteMemory");
            }
            Some(id) => {
                check_aborted(h, &id).await;
                h.drop_tree(proto::DropTreeRequest {
                    tree_id: id.clone(),
                })
                .await
                .expect("an aborted tree drops");
                let list = h
                    .list_trees(proto::ListTreesRequest {})
                    .await
                    .expect("list");
                assert!(list.trees.iter().all(|t| t.tree_id != id));
            }
        }
    });
});
