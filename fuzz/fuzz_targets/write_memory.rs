//! `WriteMemory`: an arbitrary protobuf `Chunks` message is the client stream, ending
//! cleanly or cut off with a transport error. The first input byte picks the tree of the
//! first chunk (see `Fixture::pick`); later chunks keep their decoded ids. A stream is
//! atomic: a refused chunk or a cut writes nothing (every tree's reservation and pages stay
//! as they were), and the created fixture tree builds after any stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, write_checked, Chunks, Fixture};
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
        write_checked(h, w).await;
        h.build_tree(proto::BuildTreeRequest {
            tree_id: f.ids[0].clone(),
        })
        .await
        .expect("the created fixture tree builds after any WriteMemory");
    });
});
