//! `UpdateBlocks` with an arbitrary protobuf request; the first byte picks a fixture tree.
//! A success must move `GetRoot` to `new_root`, and returned openings must verify against
//! it; a failure must leave the root unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check, check_openings, root_of, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut req) = proto::UpdateBlocksRequest::decode(rest) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        req.tree_id = f.pick(sel, req.tree_id);
        let id = req.tree_id.clone();
        let before = root_of(&f.handler, &id).await;
        let r = f.handler.update_blocks(req).await;
        let after = root_of(&f.handler, &id).await;
        match &r {
            Ok(resp) => {
                assert_eq!(resp.old_root, before);
                assert_eq!(resp.new_root, after);
                check_openings(resp.new_root.as_ref(), &resp.openings);
            }
            Err(_) => assert_eq!(before, after, "a failed update changed the root"),
        }
        check(r, |_| {});
    });
});
