//! `BuildTree` with an arbitrary protobuf request; the first byte picks a fixture tree.
//! A built tree's root must then be what `GetRoot` returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check, root_of, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut req) = proto::BuildTreeRequest::decode(rest) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        req.tree_id = f.pick(sel, req.tree_id);
        let id = req.tree_id.clone();
        let r = f.handler.build_tree(req).await;
        let root = root_of(&f.handler, &id).await;
        check(r, |resp| assert_eq!(resp.root, root));
    });
});
