//! `ListTrees` and `GetServerInfo` with arbitrary protobuf requests (both are empty messages,
//! so this mostly checks that unknown fields are ignored and the reports add up).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit::service::proto;
use memcommit_fuzz::{block_on, Fixture};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let (Ok(list), Ok(info)) = (
        proto::ListTreesRequest::decode(data),
        proto::GetServerInfoRequest::decode(data),
    ) else {
        return;
    };
    block_on(async {
        let f = Fixture::new().await;
        let trees = f.handler.list_trees(list).await.expect("ListTrees").trees;
        assert_eq!(trees.len(), f.ids.len() - 1, "the live fixture trees");
        let info = f
            .handler
            .get_server_info(info)
            .await
            .expect("GetServerInfo");
        let reserved: u64 = info.trees.iter().map(|t| t.reserved_bytes).sum();
        assert_eq!(info.total_reserved_bytes, reserved);
    });
});
