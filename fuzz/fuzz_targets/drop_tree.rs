//! `DropTree` with an arbitrary protobuf request; the first byte picks a fixture tree. A
//! dropped tree must be gone, and its bytes free for a new tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut req) = proto::DropTreeRequest::decode(rest) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        req.tree_id = f.pick(sel, req.tree_id);
        let id = req.tree_id.clone();
        let r = f.handler.drop_tree(req).await;
        let dropped = r.is_ok();
        check(r, |resp| assert!(resp.released_bytes > 0));
        let listed = f
            .handler
            .list_trees(proto::ListTreesRequest {})
            .await
            .expect("ListTrees")
            .trees
            .iter()
            .any(|t| t.tree_id == id);
        if dropped {
            assert!(!listed, "a dropped tree is still listed");
        }
    });
});
