//! A sequence of arbitrary requests (protobuf `RpcSequence`) against one service that starts
//! with the fixture trees; ids of trees created along the way can be picked by later calls.
//! No call may fail with `INTERNAL` / `UNKNOWN` (but for a cut `WriteMemory` stream, which
//! returns its transport's status), a stream that fails writes nothing, and the registry's
//! reports must add up after every call.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, check, check_status, write_checked, Fixture, Rpc, RpcSequence};
use prost::Message;

/// Most calls run from one input.
const MAX_CALLS: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Ok(seq) = RpcSequence::decode(data) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        let h = &f.handler;
        let mut ids = f.ids.clone();
        for call in seq.calls.into_iter().take(MAX_CALLS) {
            let pick = |decoded: String| match call.tree {
                0 => decoded,
                i => ids[(i as usize - 1) % ids.len()].clone(),
            };
            match call.rpc {
                None => continue,
                Some(Rpc::Create(req)) => {
                    if let Ok(r) = h.create_tree(req).await.map_err(|s| check_status(&s)) {
                        ids.push(r.tree_id);
                    }
                }
                Some(Rpc::Write(mut w)) => {
                    if let Some(first) = w.chunks.first_mut() {
                        first.tree_id = pick(std::mem::take(&mut first.tree_id));
                    }
                    write_checked(h, w).await;
                }
                Some(Rpc::Build(mut req)) => {
                    req.tree_id = pick(req.tree_id);
                    check(h.build_tree(req).await, |_| {});
                }
                Some(Rpc::Update(mut req)) => {
                    req.tree_id = pick(req.tree_id);
                    check(h.update_blocks(req).await, |_| {});
                }
                Some(Rpc::Root(mut req)) => {
                    req.tree_id = pick(req.tree_id);
                    check(h.get_root(req).await, |_| {});
                }
                Some(Rpc::Openings(mut req)) => {
                    req.tree_id = pick(req.tree_id);
                    check(h.get_openings(req).await, |_| {});
                }
                Some(Rpc::Drop(mut req)) => {
                    req.tree_id = pick(req.tree_id);
                    check(h.drop_tree(req).await, |_| {});
                }
                Some(Rpc::List(req)) => check(h.list_trees(req).await, |_| {}),
                Some(Rpc::Info(req)) => check(h.get_server_info(req).await, |_| {}),
            }
            let info = h
                .get_server_info(proto::GetServerInfoRequest {})
                .await
                .expect("GetServerInfo");
            let reserved: u64 = info.trees.iter().map(|t| t.reserved_bytes).sum();
            assert_eq!(info.total_reserved_bytes, reserved, "reservations add up");
            assert!(info.trees.len() <= memcommit_fuzz::limits().max_trees);
        }
    });
});
