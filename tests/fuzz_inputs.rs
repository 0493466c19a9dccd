//! The fuzz targets' inputs (`fuzz/`, docs/fuzzing.md) as a bounded proptest suite for CI:
//! layout JSON, trace lines and streams, and every `MemCommit` request as arbitrary bytes
//! and as structured-but-mutated values. No input may panic, and each error must be of the
//! documented class: `InvalidArgument` naming the field (`line N` for traces), and no
//! handler status `INTERNAL` (a caught panic) or `UNKNOWN`.

use std::io::Cursor;
use std::path::Path;

use memcommit::layout::MemoryLayout;
use memcommit::service::fuzzing::Handler;
use memcommit::service::{codec, proto, Limits};
use memcommit::trace::TraceReader;
use memcommit::Error;
use proptest::prelude::*;
use prost::Message;
use tonic::{Code, Status};

/// `default` cases per property, or `PROPTEST_CASES` when set (for longer local runs; an
/// explicit `cases` would otherwise ignore it).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- layout JSON ---------------------------------------------------------------------------

/// A layout spec field by field; `None` leaves a key out.
#[derive(Clone, Debug)]
struct Spec {
    spaces: Vec<(String, u64)>,
    ash: Option<u32>,
    ah: Option<u32>,
}

fn spec() -> impl Strategy<Value = Spec> {
    let cell = prop_oneof![
        Just("u8".to_string()),
        Just("u16".to_string()),
        Just("field".to_string()),
        "[a-z0-9]{0,5}",
    ];
    // Mostly valid sizes, with the edges: 0, non-powers, below 8, 2^35 (height 32), beyond.
    let cells = prop_oneof![
        (3u32..24).prop_map(|e| 1u64 << e),
        Just(0u64),
        0u64..20,
        (33u32..40).prop_map(|e| 1u64 << e),
        any::<u64>(),
    ];
    (
        prop::collection::vec((cell, cells), 0..6),
        prop::option::of(0u32..20),
        prop::option::of(0u32..36),
    )
        .prop_map(|(spaces, ash, ah)| Spec { spaces, ash, ah })
}

impl Spec {
    fn json(&self) -> String {
        let spaces: Vec<String> = self
            .spaces
            .iter()
            .map(|(c, n)| format!(r#"{{"cell": "{c}", "num_cells": {n}}}"#))
            .collect();
        let mut s = format!(r#"{{"address_spaces": [{}]"#, spaces.join(", "));
        if let Some(h) = self.ash {
            s += &format!(r#", "address_space_height": {h}"#);
        }
        if let Some(h) = self.ah {
            s += &format!(r#", "address_height": {h}"#);
        }
        s + "}"
    }

    /// The field the first rule this spec breaks names (docs/design.md "Formats", Layout JSON),
    /// or `None` for a valid spec. Computed here from the rules, not from the parser.
    fn first_error(&self) -> Option<String> {
        if self
            .spaces
            .iter()
            .any(|(c, _)| !["u8", "u16", "field"].contains(&c.as_str()))
        {
            return Some("layout".into());
        }
        if self.spaces.is_empty() {
            return Some("address_spaces".into());
        }
        let mut needed = 0;
        for (i, &(_, n)) in self.spaces.iter().enumerate() {
            let ok = n == 0 || (n.is_power_of_two() && n >= 8 && (n / 8).trailing_zeros() <= 32);
            if !ok {
                return Some(format!("address_spaces[{i}].num_cells"));
            }
            if n > 0 {
                needed = needed.max((n / 8).trailing_zeros());
            }
        }
        if matches!(self.ah, Some(h) if h > 32 || h < needed) {
            return Some("address_height".into());
        }
        let top = (self.spaces.len() as u64)
            .next_power_of_two()
            .trailing_zeros();
        if matches!(self.ash, Some(h) if h > 16 || h < top) {
            return Some("address_space_height".into());
        }
        None
    }
}

/// The field of an `InvalidArgument`; any other error fails the test.
fn invalid_field(e: Error) -> String {
    match e {
        Error::InvalidArgument { field, message } => {
            assert!(!message.is_empty(), "{field}: empty message");
            field
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2048), ..ProptestConfig::default() })]

    #[test]
    fn layout_json_bytes_never_panic(text in ".{0,200}") {
        if let Err(e) = MemoryLayout::from_json(&text) {
            prop_assert_eq!(invalid_field(e), "layout");
        }
    }

    #[test]
    fn layout_specs_are_accepted_or_name_the_field(spec in spec()) {
        match (MemoryLayout::from_json(&spec.json()), spec.first_error()) {
            (Ok(l), None) => {
                prop_assert_eq!(l.address_spaces().len(), spec.spaces.len());
                let json = serde_json::to_string(&l).expect("serialise");
                prop_assert_eq!(MemoryLayout::from_json(&json).expect("round trip"), l);
            }
            (Err(e), Some(field)) => prop_assert_eq!(invalid_field(e), field),
            (r, want) => prop_assert!(false, "{}: got {:?}, expected error {:?}", spec.json(), r, want),
        }
    }
}

// ---- traces --------------------------------------------------------------------------------

const HEADER: &str = r#"{"layout": {"address_spaces": [{"cell": "u8", "num_cells": 64}, {"cell": "field", "num_cells": 32}]}, "omitted_levels": 1}"#;
const WRITE: &str = r#"{"write": {"slot": 0, "offset": 8, "hex": "0102030405060708"}}"#;
const BUILD: &str = r#"{"build": {}}"#;
const UPDATE: &str =
    r#"{"update": {"blocks": [{"slot": 1, "block": 3, "cells": [1, 2, 3, 4, 5, 6, 7, 8]}]}}"#;

/// Reads a whole trace from memory: `Ok(events)`, or the first error and the reader's line.
fn read(text: &[u8]) -> Result<usize, Error> {
    let input = Box::new(Cursor::new(text.to_vec()));
    let mut n = 0;
    for event in TraceReader::from_reader(Path::new("t.jsonl"), input)? {
        event?;
        n += 1;
    }
    Ok(n)
}

/// The line number an `InvalidArgument` from the trace reader names (`line N...`).
fn error_line(e: Error) -> u64 {
    let field = invalid_field(e);
    field
        .strip_prefix("line ")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("trace error field without a line number: {field:?}"))
}

/// A valid line with one byte replaced, inserted or removed at `at`.
fn mutate(line: &str, at: usize, op: u8, byte: u8) -> Vec<u8> {
    let mut b = line.as_bytes().to_vec();
    let at = at % (b.len() + 1);
    match op % 3 {
        0 if at < b.len() => b[at] = byte,
        1 => b.insert(at, byte),
        _ if at < b.len() => {
            b.remove(at);
        }
        _ => b.push(byte),
    }
    b
}

#[test]
fn the_valid_trace_reads() {
    let text = [HEADER, WRITE, BUILD, UPDATE, ""].join("\n");
    assert_eq!(read(text.as_bytes()).expect("valid"), 3);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2048), ..ProptestConfig::default() })]

    #[test]
    fn an_arbitrary_line_errs_with_its_number(
        line in prop::collection::vec(any::<u8>(), 1..120),
        after_build in any::<bool>(),
    ) {
        let before: &[&str] = if after_build { &[HEADER, WRITE, BUILD] } else { &[HEADER] };
        let mut text = before.join("\n").into_bytes();
        text.push(b'\n');
        text.extend_from_slice(&line);
        match read(&text) {
            Ok(_) => {}
            Err(e @ Error::Io { .. }) => prop_assert!(e.to_string().starts_with("t.jsonl")),
            // Never an earlier line: those are valid. (The input may hold newlines.)
            Err(e) => prop_assert!(error_line(e) > before.len() as u64),
        }
    }

    #[test]
    fn a_mutated_line_reads_or_names_its_line(
        which in 0usize..5, at in any::<usize>(), op in any::<u8>(), byte in any::<u8>(),
    ) {
        let lines = [HEADER, WRITE, BUILD, UPDATE, UPDATE];
        let bad = mutate(lines[which], at, op, byte);
        let mut text = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            text.extend_from_slice(if i == which { &bad } else { l.as_bytes() });
            text.push(b'\n');
        }
        match read(&text) {
            Ok(_) => {}
            Err(e @ Error::Io { .. }) => prop_assert!(e.to_string().starts_with("t.jsonl")),
            // A mutation may also turn the line into a valid one that breaks the order
            // later (e.g. a second build), or insert a newline.
            Err(e) => prop_assert!(error_line(e) > which as u64),
        }
    }
}

// ---- requests ------------------------------------------------------------------------------

/// Small limits, as the fuzz targets use.
fn limits() -> Limits {
    Limits {
        max_message_bytes: 1 << 20,
        max_trees: 8,
        max_tree_bytes: 1 << 20,
        max_host_bytes: 4 << 20,
        max_device_bytes: 4 << 20,
        max_blocks_per_batch: 1024,
        request_timeout: None,
    }
}

fn fixture_layout() -> proto::Layout {
    let space = |cell: proto::CellType, num_cells| proto::AddressSpace {
        cell: cell as i32,
        num_cells,
    };
    proto::Layout {
        address_spaces: vec![
            space(proto::CellType::U8, 64),
            space(proto::CellType::U16, 0),
            space(proto::CellType::Field, 32),
        ],
        address_space_height: None,
        address_height: Some(4),
    }
}

/// A handler with `[created, built]` trees.
async fn fixture() -> (Handler, [String; 2]) {
    let h = Handler::new(limits());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = h
            .create_tree(proto::CreateTreeRequest {
                layout: Some(fixture_layout()),
                backend: "cpu".into(),
                ..Default::default()
            })
            .await
            .expect("create")
            .tree_id;
        ids.push(id);
    }
    h.build_tree(proto::BuildTreeRequest {
        tree_id: ids[1].clone(),
    })
    .await
    .expect("build");
    (h, [ids[0].clone(), ids[1].clone()])
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A status a client may see for bad input: never `INTERNAL` or `UNKNOWN`, always a message.
fn check_status(s: &Status) {
    assert!(
        !matches!(s.code(), Code::Internal | Code::Unknown),
        "{:?}: {}",
        s.code(),
        s.message()
    );
    assert!(!s.message().is_empty());
}

fn check<T>(r: Result<T, Status>) -> Option<T> {
    r.map_err(|s| check_status(&s)).ok()
}

/// Runs every handler on `bytes` decoded as its request, against `tree`.
async fn every_handler(h: &Handler, tree: &str, bytes: &[u8]) {
    let id = |mut s: String| {
        if s.is_empty() {
            s = tree.to_string();
        }
        s
    };
    if let Ok(r) = proto::CreateTreeRequest::decode(bytes) {
        check(h.create_tree(r).await);
    }
    if let Ok(mut c) = proto::WriteMemoryChunk::decode(bytes) {
        c.tree_id = id(c.tree_id);
        check(h.write_memory(vec![c.clone(), c]).await);
    }
    if let Ok(mut r) = proto::UpdateBlocksRequest::decode(bytes) {
        r.tree_id = id(r.tree_id);
        check(h.update_blocks(r).await);
    }
    if let Ok(mut r) = proto::GetOpeningsRequest::decode(bytes) {
        r.tree_id = id(r.tree_id);
        check(h.get_openings(r).await);
    }
    if let Ok(mut r) = proto::GetRootRequest::decode(bytes) {
        r.tree_id = id(r.tree_id);
        check(h.get_root(r).await);
    }
    if let Ok(mut r) = proto::BuildTreeRequest::decode(bytes) {
        r.tree_id = id(r.tree_id);
        check(h.build_tree(r).await);
    }
    if let Ok(r) = proto::ListTreesRequest::decode(bytes) {
        check(h.list_trees(r).await).expect("ListTrees never fails");
    }
    if let Ok(r) = proto::GetServerInfoRequest::decode(bytes) {
        check(h.get_server_info(r).await).expect("GetServerInfo never fails");
    }
    if let Ok(mut r) = proto::DropTreeRequest::decode(bytes) {
        r.tree_id = id(r.tree_id);
        check(h.drop_tree(r).await);
    }
}

async fn root(h: &Handler, id: &str) -> Option<proto::Digest> {
    h.get_root(proto::GetRootRequest { tree_id: id.into() })
        .await
        .expect("a built tree has a root")
        .root
}

/// One packed `(slot, block, cells)` batch with columns that may disagree in length.
fn packed() -> impl Strategy<Value = (proto::TouchedBlocks, usize)> {
    let entry = (
        0u32..4,
        0u32..10,
        prop::array::uniform8(prop_oneof![0u32..300, any::<u32>()]),
    );
    (prop::collection::vec(entry, 0..12), 0usize..4, 0usize..40).prop_map(|(es, cut, by)| {
        let mut m = codec::encode_blocks(
            &es.iter()
                .map(|&(slot, block, cells)| memcommit::tree::TouchedBlock {
                    slot,
                    block: block.into(),
                    cells,
                })
                .collect::<Vec<_>>(),
        )
        .expect("encode");
        // Shorten one column (or none) by `by` bytes.
        let shorten = |b: &mut prost::bytes::Bytes| b.truncate(b.len().saturating_sub(by));
        match cut {
            1 => shorten(&mut m.slots),
            2 => shorten(&mut m.blocks),
            3 => shorten(&mut m.cells),
            _ => {}
        }
        (m, cut)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_request_bytes_never_fail_internally(
        bytes in prop::collection::vec(any::<u8>(), 0..64), built in any::<bool>(),
    ) {
        run(async {
            let (h, ids) = fixture().await;
            every_handler(&h, &ids[usize::from(built)], &bytes).await;
        });
    }

    #[test]
    fn mutated_updates_apply_whole_or_name_the_field(
        (blocks, cut) in packed(), openings in any::<bool>(), witness in any::<bool>(),
    ) {
        let (old, r, new) = run(async {
            let (h, ids) = fixture().await;
            let old = root(&h, &ids[1]).await;
            let r = h
                .update_blocks(proto::UpdateBlocksRequest {
                    tree_id: ids[1].clone(),
                    blocks: Some(blocks.clone()),
                    return_openings: openings,
                    expected_old_root: None,
                    return_witness: witness,
                })
                .await;
            (old, r, root(&h, &ids[1]).await)
        });
        let decoded = codec::decode_blocks(&blocks, "blocks");
        let valid = decoded.as_ref().is_ok_and(|b| {
            let layout = codec::layout_from_proto(Some(&fixture_layout()), "layout").expect("layout");
            memcommit::tree::validate_batch(&layout, b).is_ok()
        });
        match r {
            Ok(resp) => {
                prop_assert!(valid, "accepted an invalid batch");
                prop_assert_eq!(&resp.old_root, &old);
                prop_assert_eq!(&resp.new_root, &new);
                let blocks = decoded.expect("decoded");
                let n = if openings { blocks.len() } else { 0 };
                prop_assert_eq!(resp.openings.len(), n);
                prop_assert_eq!(resp.witness.is_some(), witness);
                if let Some(w) = &resp.witness {
                    let rows = codec::witness_from_proto(w, "witness").expect("decodes");
                    let layout = codec::layout_from_proto(Some(&fixture_layout()), "layout").expect("layout");
                    let h = layout.address_space_height() + layout.address_height();
                    prop_assert_eq!(rows.len() as u64, memcommit::tree::witness::witness_rows(&layout, &blocks));
                    let digest = |d: &Option<proto::Digest>| codec::digest_from_proto(d.as_ref(), "root").expect("root");
                    let consistent = memcommit::tree::witness::check_witness(&rows, h, &digest(&resp.old_root), &digest(&resp.new_root));
                    prop_assert!(consistent.is_ok(), "{:?}", consistent);
                }
            }
            Err(s) => {
                check_status(&s);
                prop_assert!(!valid, "refused a valid batch: {}", s.message());
                prop_assert_eq!(s.code(), Code::InvalidArgument);
                prop_assert!(s.message().contains("blocks"), "{}", s.message());
                if cut != 0 && decoded.is_err() {
                    prop_assert!(s.message().contains("blocks."), "{}", s.message());
                }
                prop_assert_eq!(old, new, "a refused batch changed the root");
            }
        }
    }

    #[test]
    fn mutated_writes_are_checked_whole(
        slot in 0u32..4, offset in 0u64..300, data in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let (r, list) = run(async {
            let (h, ids) = fixture().await;
            let chunk = proto::WriteMemoryChunk {
                tree_id: ids[0].clone(),
                slot,
                byte_offset: offset,
                data: data.clone().into(),
            };
            let r = h.write_memory(vec![chunk]).await;
            h.build_tree(proto::BuildTreeRequest { tree_id: ids[0].clone() })
                .await
                .expect("the tree still builds");
            (r, h.list_trees(proto::ListTreesRequest {}).await.expect("list"))
        });
        prop_assert_eq!(list.trees.len(), 2);
        match r {
            Ok(resp) => prop_assert_eq!(resp.bytes_written, data.len() as u64),
            Err(s) => {
                check_status(&s);
                prop_assert_eq!(s.code(), Code::InvalidArgument);
                prop_assert!(s.message().contains("chunks[0]."), "{}", s.message());
            }
        }
    }

    #[test]
    fn write_streams_that_do_not_end_cleanly_write_nothing(
        n in 0usize..4, after in 0usize..5, bad_at in prop::option::of(0usize..4),
        code in 1i32..17,
    ) {
        // `n` chunks to the created tree, one of them (`bad_at`) naming a slot that does not
        // exist, then a transport error after `after` of them.
        let mut items: Vec<Result<proto::WriteMemoryChunk, Status>> = (0..n)
            .map(|i| {
                Ok(proto::WriteMemoryChunk {
                    tree_id: String::new(),
                    slot: if bad_at == Some(i) { 9 } else { 0 },
                    byte_offset: 8 * i as u64,
                    data: vec![i as u8 + 1; 8].into(),
                })
            })
            .take(after)
            .collect();
        let sent = items.len();
        let refused = bad_at.is_some_and(|b| b < sent);
        let cut = Status::new(Code::from(code), "stream cut off");
        items.push(Err(cut.clone()));
        let (r, build, empty, reserved) = run(async {
            let (h, ids) = fixture().await;
            let before = h.list_trees(proto::ListTreesRequest {}).await.expect("list");
            if let Some(Ok(first)) = items.first_mut() {
                first.tree_id = ids[0].clone();
            }
            let r = h.write_memory_stream(items).await;
            let after = h.list_trees(proto::ListTreesRequest {}).await.expect("list");
            let reserved: Vec<_> = [before, after]
                .iter()
                .map(|l| l.trees.iter().map(|t| t.reserved_bytes).collect::<Vec<_>>())
                .collect();
            let build = h.build_tree(proto::BuildTreeRequest { tree_id: ids[0].clone() }).await;
            // The built tree of the fixture has the empty image.
            (r, build, root(&h, &ids[1]).await, reserved)
        });
        let s = r.expect_err("a cut stream cannot succeed");
        if refused {
            prop_assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        } else {
            prop_assert_eq!((s.code(), s.message()), (cut.code(), cut.message()));
        }
        prop_assert_eq!(&reserved[0], &reserved[1], "the staged chunks' reservation is released");
        let build = build.map_err(|b| TestCaseError::fail(format!("{:?}: {}", b.code(), b.message())))?;
        prop_assert_eq!(build.root, empty, "nothing of the stream was written");
    }
}
