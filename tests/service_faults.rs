//! Service fault behaviour: a `WriteMemory` stream that does not end cleanly (dropped call,
//! deadline, cut connection, RST_STREAM with any code, an invalid chunk) writes nothing,
//! and SIGTERM lets a call in flight finish before `memcommit serve` exits 0.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::{err, start};
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::service::client::Client;
use memcommit::service::{proto, Limits};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{Backend, MemoryTree};
use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn layout() -> MemoryLayout {
    MemoryLayout::from_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 65536}]}"#)
        .expect("layout")
}

fn chunk(tree_id: &str, i: u64) -> proto::WriteMemoryChunk {
    proto::WriteMemoryChunk {
        tree_id: tree_id.into(),
        slot: 0,
        byte_offset: i * 4096,
        data: Bytes::from(vec![i as u8 + 1; 4096]),
    }
}

/// A TCP relay from an ephemeral port to `to`, for one connection; aborting the returned
/// task drops both sockets at once, as when a client machine vanishes.
async fn relay(to: &str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let url = format!("http://{}", listener.local_addr().expect("relay address"));
    let to = to.to_string();
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.expect("accept");
        let mut server = tokio::net::TcpStream::connect(&to)
            .await
            .expect("connect to server");
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    });
    (url, task)
}

/// The tree's reservation now (`ListTrees`): staged chunks grow it, so it shows when the
/// server has received a stream's chunks and when it has let them go.
async fn reserved(c: &mut Client, id: &str) -> u64 {
    let trees = c.list_trees().await.expect("list");
    trees
        .iter()
        .find(|t| t.tree_id == id)
        .expect("the tree is listed")
        .reserved_bytes
}

/// Waits (10 s at most) until the tree's reservation satisfies `ok`; returns it.
async fn wait_reserved(c: &mut Client, id: &str, what: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = reserved(c, id).await;
        if ok(r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: reservation stuck at {r}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A tree with chunk 5 written by a clean stream: the image every abnormal stream below
/// must leave as it is. Returns the tree id, its reservation and its reference root.
async fn tree_with_one_page(c: &mut Client) -> (String, u64, memcommit::hash::Digest) {
    let layout = layout();
    let id = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create")
        .tree_id;
    let five = chunk(&id, 5);
    c.write_memory(&id, 0, five.byte_offset, &five.data)
        .await
        .expect("clean write");
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    image.write(0, five.byte_offset, &five.data).expect("write");
    let root = ReferenceTree::build(layout, Arc::new(image), 3).root();
    let base = reserved(c, &id).await;
    (id, base, root)
}

/// Sends chunks 0..3 on a stream of `client`'s and waits until the server has staged them;
/// returns the stream's sender (still open) and the call's task.
async fn stage_three(
    c: &mut Client,
    mut client: Client,
    id: &str,
    base: u64,
    timeout: Option<Duration>,
) -> (
    mpsc::Sender<proto::WriteMemoryChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<proto::WriteMemoryResponse>, tonic::Status>>,
) {
    let (send, recv) = mpsc::channel(4);
    let call = tokio::spawn(async move {
        let mut req = tonic::Request::new(ReceiverStream::new(recv));
        if let Some(t) = timeout {
            req.set_timeout(t);
        }
        client.raw().write_memory(req).await
    });
    for i in 0..3 {
        send.send(chunk(id, i)).await.expect("send chunk");
    }
    // The staged bytes alone (the pages may exist already).
    wait_reserved(c, id, "staging", |r| r >= base + 3 * 4096).await;
    (send, call)
}

/// Every way a `WriteMemory` stream can end without a clean end from its client, after the
/// server staged 3 chunks: the tonic client dropping its call (RST_STREAM CANCEL), the
/// call's deadline passing, and the connection cut (a relay dropping both sockets). Each
/// time the staged reservation is released, and at the end the tree builds to the root of
/// its image before those streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_memory_streams_that_end_abnormally_write_nothing() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let (id, base, root) = tree_with_one_page(c).await;

    // The client drops its call.
    let own = Client::connect(&srv.url).await.expect("connect");
    let (send, call) = stage_three(c, own, &id, base, None).await;
    call.abort();
    let _ = call.await;
    wait_reserved(c, &id, "after the dropped call", |r| r == base).await;
    drop(send);

    // The call's deadline (grpc-timeout) passes with the stream still open.
    let own = Client::connect(&srv.url).await.expect("connect");
    let (send, call) = stage_three(c, own, &id, base, Some(Duration::from_millis(300))).await;
    let r = call.await.expect("call task");
    let s = r.expect_err("the deadline ends the call");
    assert!(
        matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{s:?}"
    );
    wait_reserved(c, &id, "after the deadline", |r| r == base).await;
    drop(send);

    // The connection is cut.
    let (relay_url, relay_task) = relay(&srv.server.addr).await;
    let own = Client::connect(&relay_url).await.expect("connect");
    let (send, call) = stage_three(c, own, &id, base, None).await;
    relay_task.abort();
    let cut = call.await.expect("upload task");
    assert!(cut.is_err(), "the client sees its stream fail: {cut:?}");
    wait_reserved(c, &id, "after the cut", |r| r == base).await;
    drop(send);

    assert_eq!(c.build_tree(&id).await.expect("build"), root);
    srv.stop().await;
}

/// How a raw HTTP/2 stream ends after its one chunk.
#[derive(Clone, Copy, Debug)]
enum End {
    Clean,
    Reset(h2::Reason),
}

/// Sends `chunk` as one gRPC message on a raw HTTP/2 `WriteMemory` stream to `addr`, then
/// ends the stream as `end` says once the server has staged the chunk (`staged` resolves);
/// returns the gRPC status of a clean end's response.
async fn raw_write_memory(
    addr: &str,
    chunk: &proto::WriteMemoryChunk,
    end: End,
    staged: impl std::future::Future<Output = ()>,
) -> Option<String> {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/memcommit.v1.MemCommit/WriteMemory"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(req, false).expect("send request");
    let msg = chunk.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    body.send_data(Bytes::from(frame), matches!(end, End::Clean))
        .expect("send data");
    match end {
        End::Reset(reason) => {
            staged.await;
            body.send_reset(reason);
            None
        }
        End::Clean => {
            let mut response = response.await.expect("response");
            let body = response.body_mut();
            // h2 yields the trailers only once the data before them has been read.
            while let Some(data) = body.data().await {
                let n = data.expect("response data").len();
                let _ = body.flow_control().release_capacity(n);
            }
            let trailers = body.trailers().await.expect("trailers");
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .or_else(|| response.headers().get("grpc-status"))
                .map(|v| v.to_str().unwrap_or("?").to_string());
            status
        }
    }
}

/// A raw HTTP/2 client resets its `WriteMemory` stream after the server staged its chunk,
/// with CANCEL (what grpcio's `cancel()` and every gRPC client send), NO_ERROR (which hyper
/// ends the request body on, like a clean end) and INTERNAL_ERROR: none is written. A clean
/// end of the same raw stream is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_memory_reset_with_any_code_writes_nothing() {
    let mut srv = start(Limits::default()).await;
    let layout = layout();
    let (id, base, _) = tree_with_one_page(&mut srv.client).await;
    let addr = srv.server.addr.clone();
    for (i, reason) in [
        h2::Reason::CANCEL,
        h2::Reason::NO_ERROR,
        h2::Reason::INTERNAL_ERROR,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = srv.client.clone();
        let id2 = id.clone();
        let staged = async move {
            wait_reserved(&mut c, &id2, "staging", |r| r > base).await;
        };
        let status =
            raw_write_memory(&addr, &chunk(&id, i as u64), End::Reset(reason), staged).await;
        assert_eq!(status, None);
        wait_reserved(&mut srv.client, &id, &format!("after {reason:?}"), |r| {
            r == base
        })
        .await;
    }
    let clean = chunk(&id, 7);
    let status = raw_write_memory(&addr, &clean, End::Clean, async {}).await;
    assert_eq!(status.as_deref(), Some("0"), "a clean raw stream succeeds");

    let mut image = MemoryImage::zeroed(&layout).expect("image");
    for i in [5, 7] {
        let ch = chunk(&id, i);
        image.write(0, ch.byte_offset, &ch.data).expect("write");
    }
    let reference = ReferenceTree::build(layout, Arc::new(image), 3);
    assert_eq!(
        srv.client.build_tree(&id).await.expect("build"),
        reference.root()
    );
    srv.stop().await;
}

/// A clean stream is written whole; a stream with an invalid middle chunk is refused naming
/// it and writes nothing, not even the valid chunk before it; a stream still open when
/// BuildTree runs finds the tree built at its end and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_streams_are_written_whole_and_refused_ones_not_at_all() {
    let mut srv = start(Limits::default()).await;
    let c = &mut srv.client;
    let layout = layout();
    let id = c
        .create_tree(&layout, None, Backend::Cpu)
        .await
        .expect("create")
        .tree_id;
    let base = reserved(c, &id).await;
    let (send, recv) = mpsc::channel(8);
    for i in 0..3 {
        send.send(chunk(&id, i)).await.expect("send");
    }
    drop(send);
    let r = c
        .raw()
        .write_memory(ReceiverStream::new(recv))
        .await
        .expect("clean stream")
        .into_inner();
    assert_eq!((r.chunks, r.bytes_written), (3, 3 * 4096));
    // Three pages written: their reservation stays, the staged bytes are released.
    let written = reserved(c, &id).await;
    assert!(written > base, "{written} > {base}");

    // Chunk 1 runs past the slot: refused, and chunk 0 (page 3) is not written either.
    let (send, recv) = mpsc::channel(8);
    send.send(chunk(&id, 3)).await.expect("send");
    let mut bad = chunk("", 0);
    bad.byte_offset = 65536;
    send.send(bad).await.expect("send");
    send.send(chunk("", 4)).await.expect("send");
    drop(send);
    err(
        c.raw().write_memory(ReceiverStream::new(recv)).await,
        Code::InvalidArgument,
        &["chunks[1].byte_offset"],
    );
    assert_eq!(reserved(c, &id).await, written);

    // A stream open across BuildTree: its end finds the tree built.
    let own = Client::connect(&srv.url).await.expect("connect");
    let (send, call) = stage_three(c, own, &id, written, None).await;
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    for i in 0..3 {
        let ch = chunk(&id, i);
        image.write(0, ch.byte_offset, &ch.data).expect("write");
    }
    let reference = ReferenceTree::build(layout, Arc::new(image), 3);
    assert_eq!(c.build_tree(&id).await.expect("build"), reference.root());
    drop(send);
    err(
        call.await.expect("call task"),
        Code::FailedPrecondition,
        &[
            &format!("tree {id} was built while this WriteMemory stream was open"),
            "nothing",
        ],
    );
    assert_eq!(c.get_root(&id).await.expect("root"), reference.root());
    srv.stop().await;
}

/// `memcommit serve` gets SIGTERM while a BuildTree of a 128 MiB tree is in flight (the
/// server has logged "tree build started"): the build still returns its root, which is
/// the reference's; new connections are refused meanwhile; and the process exits 0.
#[cfg(unix)]
#[test]
fn sigterm_lets_the_call_in_flight_finish_then_exits_zero() {
    let mut server = common::server::serve_cli(&[]);
    let url = server.url();
    // 2^27 u8 cells = 128 MiB raw and 2^24 blocks: the CPU build takes seconds.
    let layout =
        MemoryLayout::from_json(r#"{"address_spaces": [{"cell": "u8", "num_cells": 134217728}]}"#)
            .expect("layout");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = runtime.block_on(Client::connect(&url)).expect("connect");
    let id = runtime
        .block_on(c.create_tree(&layout, Some(3), Backend::Cpu))
        .expect("create")
        .tree_id;
    // Every page written, so the build takes seconds (an absent page costs nothing).
    let data: Vec<u8> = (0..1 << 27).map(|i: u32| (i % 251) as u8).collect();
    runtime
        .block_on(c.write_memory(&id, 0, 0, &data))
        .expect("write");

    let started = Instant::now();
    let build = {
        let mut c = c.clone();
        let id = id.clone();
        runtime.spawn(async move { c.build_tree(&id).await })
    };
    server.wait_for_line("tree build started", Duration::from_secs(30));
    let signalled = started.elapsed();
    server.sigterm();
    server.wait_for_line("SIGTERM received", Duration::from_secs(10));
    // The listener closes while the build still runs (polled: the log line comes just
    // before the server acts on the signal).
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        match runtime.block_on(Client::connect(&url)) {
            Err(s) => break s,
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(_) => panic!("new connections still accepted 5 s after SIGTERM"),
        }
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        !build.is_finished(),
        "the build must still be in flight when new connections are refused"
    );

    let root = runtime
        .block_on(build)
        .expect("build task")
        .expect("the build in flight finishes");
    let took = started.elapsed();
    assert!(
        took > signalled,
        "the build ({took:?}) outlived the signal sent after {signalled:?}"
    );
    // The in-process CPU tree (checked against the reference elsewhere): the reference
    // would hold 2^25 nodes here.
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    image.write(0, 0, &data).expect("image write");
    let local = memcommit::tree::build(Backend::Cpu, layout, Arc::new(image), 3).expect("build");
    assert_eq!(root, local.root());

    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    server.wait_for_line("memcommit shut down", Duration::from_secs(5));
}
