//! `GetRoot` with an arbitrary protobuf request; the first byte picks a fixture tree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::{codec, proto};
use memcommit_fuzz::{block_on, check, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(mut req) = proto::GetRootRequest::decode(rest) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        req.tree_id = f.pick(sel, req.tree_id);
        let r = f.handler.get_root(req).await;
        check(r, |resp| {
            codec::digest_from_proto(resp.root.as_ref(), "root").expect("a canonical root");
        });
    });
});
