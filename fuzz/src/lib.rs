//! Shared by the fuzz targets: a runtime, small limits, a service with trees in each state,
//! the checks every response must pass, and the trace inputs.
//!
//! Every target builds a fresh [`Fixture`] per input, so an input replays the same way on
//! its own (libFuzzer needs that to minimise and reproduce).

use std::io::{BufRead, Cursor, Read};
use std::path::Path;
use std::sync::OnceLock;

use memcommit::service::codec;
use memcommit::service::fuzzing::Handler;
use memcommit::service::proto;
use memcommit::service::Limits;
use memcommit::trace::TraceReader;
use memcommit::tree::verify_opening;
use memcommit::Error;
pub use tonic::{Code, Status};

/// Small limits, so that no input can make the service allocate more than a few MiB: a
/// refusal with `RESOURCE_EXHAUSTED` is correct behaviour, an abort for memory is a finding.
pub fn limits() -> Limits {
    Limits {
        max_message_bytes: 1 << 20,
        max_trees: 8,
        max_tree_bytes: 1 << 20,
        max_host_bytes: 4 << 20,
        max_device_bytes: 4 << 20,
        max_blocks_per_batch: 1024,
        request_timeout: Some(std::time::Duration::from_secs(60)),
    }
}

/// One current-thread runtime for the process (its blocking pool runs the tree work).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
    .block_on(f)
}

/// The layout of every fixture tree: u8 (8 blocks), an empty u16 slot, field (4 blocks),
/// u16 (16 blocks); `address_height` 5 (one more than needed), `address_space_height` 2.
pub fn fixture_layout() -> proto::Layout {
    let space = |cell: proto::CellType, num_cells| proto::AddressSpace {
        cell: cell as i32,
        num_cells,
    };
    proto::Layout {
        address_spaces: vec![
            space(proto::CellType::U8, 64),
            space(proto::CellType::U16, 0),
            space(proto::CellType::Field, 32),
            space(proto::CellType::U16, 128),
        ],
        address_space_height: None,
        address_height: Some(5),
    }
}

/// A service holding one tree in each interesting state.
pub struct Fixture {
    pub handler: Handler,
    /// Tree ids: `[created (image written), built cpu k = 3, built cpu k = 0, built
    /// reference, dropped]`.
    pub ids: Vec<String>,
}

/// Non-zero initial image writes for a tree (slots 0, 2 and 3).
fn initial_chunks(id: &str) -> Vec<proto::WriteMemoryChunk> {
    let chunk = |slot, byte_offset, data: Vec<u8>| proto::WriteMemoryChunk {
        tree_id: id.into(),
        slot,
        byte_offset,
        data: data.into(),
    };
    let field: Vec<u8> = [1u32, 2, 3, 0x7800_0000]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    vec![
        chunk(0, 8, (1..=16).collect()),
        chunk(2, 16, field),
        chunk(3, 250, vec![0xff; 6]),
    ]
}

impl Fixture {
    /// Creates the trees. Panics if the fixture itself fails (a harness bug, or a
    /// regression the targets should stop on).
    pub async fn new() -> Fixture {
        let handler = Handler::new(limits());
        let mut ids = Vec::new();
        for (backend, k, build) in [
            ("cpu", None, false),
            ("cpu", Some(3), true),
            ("cpu", Some(0), true),
            ("reference", None, true),
            ("cpu", None, false),
        ] {
            let id = handler
                .create_tree(proto::CreateTreeRequest {
                    layout: Some(fixture_layout()),
                    omitted_levels: k,
                    backend: backend.into(),
                    auto_omitted_levels: false,
                    memory_budget_bytes: None,
                })
                .await
                .expect("fixture CreateTree")
                .tree_id;
            handler
                .write_memory(initial_chunks(&id))
                .await
                .expect("fixture WriteMemory");
            if build {
                handler
                    .build_tree(proto::BuildTreeRequest {
                        tree_id: id.clone(),
                    })
                    .await
                    .expect("fixture BuildTree");
            }
            ids.push(id);
        }
        let dropped = ids.last().expect("five trees").clone();
        handler
            .drop_tree(proto::DropTreeRequest { tree_id: dropped })
            .await
            .expect("fixture DropTree");
        Fixture { handler, ids }
    }

    /// The tree id a call uses: `sel` picks a fixture tree, or (past the last one) keeps
    /// the id the input decoded to.
    pub fn pick(&self, sel: u8, decoded: String) -> String {
        self.ids
            .get(sel as usize % (self.ids.len() + 1))
            .cloned()
            .unwrap_or(decoded)
    }
}

/// Fails (panics) on a status no input may cause: `INTERNAL` is what a caught panic or a
/// poisoned tree becomes, `UNKNOWN` means an unmapped error.
pub fn check_status(s: &Status) {
    assert!(
        !matches!(s.code(), Code::Internal | Code::Unknown),
        "handler returned {:?}: {}",
        s.code(),
        s.message()
    );
    assert!(
        !s.message().is_empty(),
        "status {:?} without a message",
        s.code()
    );
}

/// Checks a handler's result: a response passes `check`, an error passes [`check_status`].
pub fn check<T>(r: Result<T, Status>, check: impl FnOnce(T)) {
    match r {
        Ok(v) => check(v),
        Err(s) => check_status(&s),
    }
}

/// Checks that every opening verifies against `root` in the fixture layout.
pub fn check_openings(root: Option<&proto::Digest>, openings: &[proto::Opening]) {
    let layout = codec::layout_from_proto(Some(&fixture_layout()), "layout").expect("layout");
    let root = codec::digest_from_proto(root, "root").expect("a response root is canonical");
    for (i, o) in openings.iter().enumerate() {
        let o = codec::opening_from_proto(o, &format!("openings[{i}]"))
            .expect("a response opening decodes");
        verify_opening(&root, &layout, &o).expect("a response opening verifies");
    }
}

/// The current root of a fixture tree, if it is built.
pub async fn root_of(h: &Handler, id: &str) -> Option<proto::Digest> {
    h.get_root(proto::GetRootRequest { tree_id: id.into() })
        .await
        .ok()
        .and_then(|r| r.root)
}

/// Most events read from one trace input (inputs are small; this only bounds a loop).
const MAX_EVENTS: usize = 100_000;
/// Most decompressed bytes read from a zstd input: a few KiB of zstd can expand to
/// hundreds of MiB, and a trace line is held whole (legitimately: a large batch is one
/// line), so the harness caps what it feeds.
const MAX_DECOMPRESSED: u64 = 16 << 20;

/// Reads a whole trace from `input` (zstd-decompressed first when `zstd`), checking that
/// every error is the kind the reader documents: `InvalidArgument` whose field starts with
/// `line N` (N ≥ 1), or `Io`.
pub fn read_trace(input: Vec<u8>, zstd: bool) {
    let reader: Box<dyn BufRead + Send> = if zstd {
        match zstd::stream::read::Decoder::new(Cursor::new(input)) {
            Ok(d) => Box::new(std::io::BufReader::new(d.take(MAX_DECOMPRESSED))),
            Err(_) => return,
        }
    } else {
        Box::new(Cursor::new(input))
    };
    let mut trace = match TraceReader::from_reader(Path::new("fuzz.jsonl"), reader) {
        Ok(t) => t,
        Err(e) => return check_trace_error(&e),
    };
    for event in trace.by_ref().take(MAX_EVENTS) {
        if let Err(e) = event {
            return check_trace_error(&e);
        }
    }
}

/// Fails (panics) unless `e` is an error the trace reader documents.
pub fn check_trace_error(e: &Error) {
    match e {
        Error::InvalidArgument { field, .. } => {
            let n = field
                .strip_prefix("line ")
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<u64>().ok());
            assert!(
                matches!(n, Some(n) if n >= 1),
                "trace error without a line number: {e}"
            );
        }
        Error::Io { .. } => {}
        other => panic!("unexpected trace error kind: {other:?}"),
    }
}

/// A `WriteMemory` client stream as one protobuf message: field 1, the chunks in order;
/// field 2, optionally where the stream is cut off instead of ending cleanly.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunks {
    #[prost(message, repeated, tag = "1")]
    pub chunks: Vec<proto::WriteMemoryChunk>,
    #[prost(message, optional, tag = "2")]
    pub cut: Option<Cut>,
}

/// A stream cut off after `after` chunks with the error a broken transport yields: status
/// `code` (`OK` becomes `UNKNOWN`), or, with `too_large`, tonic's message-too-large error,
/// which the server answers with `RESOURCE_EXHAUSTED` and which does not abort the tree.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Cut {
    #[prost(uint32, tag = "1")]
    pub after: u32,
    #[prost(int32, tag = "2")]
    pub code: i32,
    #[prost(bool, tag = "3")]
    pub too_large: bool,
}

/// The message of a [`Cut`]'s transport error; the handler passes that status on as it is.
const CUT_MESSAGE: &str = "fuzz: the client stream was cut off";
/// tonic's error for a message over the decoding limit (`OUT_OF_RANGE`).
const TOO_LARGE_MESSAGE: &str =
    "Error, decoded message length too large: found 2097152 bytes, the limit is: 1048576 bytes";

impl Cut {
    fn status(&self) -> Status {
        if self.too_large {
            return Status::out_of_range(TOO_LARGE_MESSAGE);
        }
        match Code::from(self.code) {
            Code::Ok => Status::unknown(CUT_MESSAGE),
            code => Status::new(code, CUT_MESSAGE),
        }
    }
}

/// Runs `w` as one `WriteMemory` stream (its first chunk's tree id as given) and checks the
/// outcome: a clean stream's response counts every chunk; a stream cut off after its
/// chunks returns the cut's status (message-too-large: `RESOURCE_EXHAUSTED` naming
/// `max_message_bytes`); anything else passes [`check_status`]. A stream that does not
/// succeed writes nothing: every tree's reservation and present pages are as before.
pub async fn write_checked(h: &Handler, w: Chunks) {
    let Chunks { mut chunks, cut } = w;
    let n = chunks.len() as u64;
    let bytes: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
    let before = footprint(h).await;
    let result = match cut {
        None => {
            let r = h.write_memory(chunks).await;
            match &r {
                Ok(resp) => assert_eq!((resp.chunks, resp.bytes_written), (n, bytes)),
                Err(s) => check_status(s),
            }
            r
        }
        Some(cut) => {
            chunks.truncate(cut.after as usize);
            let mut items: Vec<_> = chunks.into_iter().map(Ok).collect();
            items.push(Err(cut.status()));
            let r = h.write_memory_stream(items).await;
            match &r {
                Ok(resp) => panic!("a cut stream succeeded: {resp:?}"),
                Err(s) if cut.too_large && s.message().ends_with(TOO_LARGE_MESSAGE) => {
                    let limit = limits().max_message_bytes;
                    let want = format!("max_message_bytes = {limit}: {TOO_LARGE_MESSAGE}");
                    assert_eq!(
                        (s.code(), s.message()),
                        (Code::ResourceExhausted, want.as_str())
                    );
                }
                Err(s) if !cut.too_large && s.message() == CUT_MESSAGE => {
                    assert_eq!(s.code(), cut.status().code());
                }
                // A chunk failed before the cut was reached.
                Err(s) => check_status(s),
            }
            r
        }
    };
    if result.is_err() {
        assert_eq!(
            footprint(h).await,
            before,
            "a failed stream wrote something"
        );
    }
}

/// `(tree id, reserved bytes, present pages)` of every tree.
async fn footprint(h: &Handler) -> Vec<(String, u64, u64)> {
    h.list_trees(proto::ListTreesRequest {})
        .await
        .expect("list")
        .trees
        .into_iter()
        .map(|t| (t.tree_id, t.reserved_bytes, t.present_pages))
        .collect()
}

/// One call of an [`RpcSequence`]. `tree` picks the tree id: 0 keeps the decoded one,
/// `i > 0` takes entry `(i − 1) mod n` of the fixture ids followed by the ids created so far.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Call {
    #[prost(uint32, tag = "1")]
    pub tree: u32,
    #[prost(oneof = "Rpc", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub rpc: Option<Rpc>,
}

/// The request of one call.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Rpc {
    #[prost(message, tag = "2")]
    Create(proto::CreateTreeRequest),
    #[prost(message, tag = "3")]
    Write(Chunks),
    #[prost(message, tag = "4")]
    Build(proto::BuildTreeRequest),
    #[prost(message, tag = "5")]
    Update(proto::UpdateBlocksRequest),
    #[prost(message, tag = "6")]
    Root(proto::GetRootRequest),
    #[prost(message, tag = "7")]
    Openings(proto::GetOpeningsRequest),
    #[prost(message, tag = "8")]
    Drop(proto::DropTreeRequest),
    #[prost(message, tag = "9")]
    List(proto::ListTreesRequest),
    #[prost(message, tag = "10")]
    Info(proto::GetServerInfoRequest),
}

/// A sequence of calls against one service (field 1).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcSequence {
    #[prost(message, repeated, tag = "1")]
    pub calls: Vec<Call>,
}
