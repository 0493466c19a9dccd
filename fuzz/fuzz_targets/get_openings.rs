//! `GetOpenings` with an arbitrary protobuf request; the first byte picks a fixture tree.
//! Every returned opening must verify against the returned root, one per position.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check, check_openings, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut req) = proto::GetOpeningsRequest::decode(rest) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        req.tree_id = f.pick(sel, req.tree_id);
        let n = req.positions.as_ref().map_or(0, |p| p.slots.len() / 4);
        let r = f.handler.get_openings(req).await;
        check(r, |resp| {
            assert_eq!(resp.openings.len(), n);
            check_openings(resp.root.as_ref(), &resp.openings);
        });
    });
});
