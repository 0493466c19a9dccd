//! `CreateTree` with an arbitrary protobuf request, on a service that already holds trees
//! (so the tree-count and memory limits are in play).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = proto::CreateTreeRequest::decode(data) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        let r = f.handler.create_tree(req.clone()).await;
        check(r, |resp| {
            assert!(!resp.tree_id.is_empty());
            assert!(resp.omitted_levels <= memcommit::tree::MAX_OMITTED_LEVELS);
            if let (Some(k), false) = (req.omitted_levels, req.auto_omitted_levels) {
                assert_eq!(resp.omitted_levels, k);
            }
        });
    });
});
