//! `WriteMemory`: an arbitrary protobuf `Chunks` message is the client stream. The first
//! input byte picks the tree of the first chunk (see `Fixture::pick`); later chunks keep
//! their decoded ids. A failed stream must leave earlier chunks written and nothing else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check, Chunks, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(Chunks { mut chunks }) = Chunks::decode(rest) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        if let Some(first) = chunks.first_mut() {
            first.tree_id = f.pick(sel, std::mem::take(&mut first.tree_id));
        }
        let n = chunks.len() as u64;
        let bytes: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
        let r = f.handler.write_memory(chunks).await;
        check(r, |resp: proto::WriteMemoryResponse| {
            assert_eq!((resp.chunks, resp.bytes_written), (n, bytes));
        });
        // The tree still builds (or was never buildable).
        f.handler
            .build_tree(proto::BuildTreeRequest {
                tree_id: f.ids[0].clone(),
            })
            .await
            .expect("the created fixture tree builds after any WriteMemory");
    });
});
