//! The `MemCommit` tonic service: request handling on top of the registry and the trees.
//!
//! CPU-heavy work (writes, build, update, openings and the packed decodes) runs in
//! `spawn_blocking` holding the tree's owned mutex guard, so the reactor stays free and
//! calls on one tree stay serialised.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::error::Error;
use crate::image::MemoryImage;
use crate::tree::{self, Backend, MemoryTree};

use super::codec;
use super::limits::{self, timeout_text, Limits, MemoryEstimate};
use super::metrics::{self, Metrics};
use super::proto;
use super::proto::mem_commit_server::MemCommit;
use super::registry::{not_found, LastBatch, Registry, State, TreeHandle};

type Reply<T> = Result<Response<T>, Status>;

/// Bytes allowed for the non-opening fields of a response (two roots and framing).
const RESPONSE_OVERHEAD: u64 = 256;

/// The service state shared by every call.
pub(crate) struct MemCommitService {
    registry: Arc<Registry>,
    limits: Limits,
    /// What `auto` resolves to on this server.
    default_backend: Backend,
    /// Budget of `auto_omitted_levels` when a request gives none (`serve --memory-budget`);
    /// `None`: [`tree::default_memory_budget`] at the time of the call.
    memory_budget: Option<u64>,
    /// Where permutations are counted, when metrics are on.
    metrics: Option<Arc<Metrics>>,
}

impl MemCommitService {
    pub fn new(limits: Limits, default_backend: Backend) -> Self {
        MemCommitService {
            registry: Arc::new(Registry::new(limits)),
            limits,
            default_backend,
            memory_budget: None,
            metrics: None,
        }
    }

    /// What `auto` stands for now: the startup choice, except that a CUDA device that has
    /// become unusable since (a device fault) gives the CPU, with the reason logged.
    fn auto_backend(&self) -> Backend {
        match self.default_backend {
            Backend::Cuda => Backend::Auto.resolve().unwrap_or(Backend::Cpu),
            b => b,
        }
    }

    /// Sets the server's budget for `auto_omitted_levels`, in bytes.
    pub fn with_memory_budget(mut self, budget: Option<u64>) -> Self {
        self.memory_budget = budget;
        self
    }

    /// The trees, for the metrics' gauges.
    pub fn trees(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Counts permutations into `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The body of `WriteMemory`, atomic per stream: each chunk of `stream` is checked
    /// against its tree (the first chunk names it) and staged with its memory reserved;
    /// the staged chunks reach the image together only when the stream ends cleanly. An
    /// error, a broken stream or this future being dropped (the client reset the stream or
    /// went away) drops the [`Upload`], which releases its reservation: nothing changes.
    /// The tonic method passes its `Streaming`; the fuzzers pass a plain stream.
    pub async fn write_chunks(
        &self,
        mut stream: impl Stream<Item = Result<proto::WriteMemoryChunk, Status>> + Unpin,
    ) -> Result<proto::WriteMemoryResponse, Status> {
        let limit = self.limits.max_message_bytes;
        let mut upload: Option<Upload> = None;
        while let Some(chunk) = stream
            .next()
            .await
            .transpose()
            .map_err(|s| message_limit_status(s, limit))?
        {
            let mut up = match upload.take() {
                None => Upload::new(
                    self.registry.get(&chunk.tree_id)?,
                    Arc::clone(&self.registry),
                ),
                Some(up) => up,
            };
            let i = up.chunks.len() as u64;
            if !chunk.tree_id.is_empty() && chunk.tree_id != up.tree.id {
                return Err(Error::invalid(
                    format!("chunks[{i}].tree_id"),
                    format!(
                        "{:?} differs from the stream's tree {:?}",
                        chunk.tree_id, up.tree.id
                    ),
                )
                .into());
            }
            // Per chunk, so a long upload is never cut off between chunks.
            let deadline = Deadline::new(&self.limits);
            upload = Some(
                with_tree(Arc::clone(&up.tree), deadline, move |t, state| {
                    up.stage(t, state, chunk, i)?;
                    Ok(up)
                })
                .await?,
            );
        }
        let Some(up) = upload else {
            return Ok(proto::WriteMemoryResponse::default());
        };
        // hyper sees an RST_STREAM only while this handler is pending, and ends the request
        // body on RST_STREAM(NO_ERROR) as on a clean end: yield once so that a reset stream
        // drops this future (and the upload) before anything is written.
        tokio::task::yield_now().await;
        let deadline = Deadline::new(&self.limits);
        with_tree(Arc::clone(&up.tree), deadline, move |t, state| {
            up.commit(t, state)
        })
        .await
    }
}

/// The chunks of one `WriteMemory` stream, checked and held until the stream ends, with
/// what they added to their tree's reservation: their own bytes (staging memory, on the
/// host) and the raw bytes and nodes of the pages they will create. Dropped before
/// [`Upload::commit`], it releases that reservation and the image never sees the chunks.
struct Upload {
    tree: Arc<TreeHandle>,
    registry: Arc<Registry>,
    chunks: Vec<proto::WriteMemoryChunk>,
    /// Staged data bytes.
    bytes: u64,
    /// `(slot, page)` of the pages absent from the image when staged, each counted once.
    new_pages: HashSet<(u32, u64)>,
    /// What this stream added to the tree's reservation so far.
    reserved: MemoryEstimate,
}

impl Upload {
    fn new(tree: Arc<TreeHandle>, registry: Arc<Registry>) -> Self {
        Upload {
            tree,
            registry,
            chunks: Vec::new(),
            bytes: 0,
            new_pages: HashSet::new(),
            reserved: MemoryEstimate::default(),
        }
    }

    /// Checks chunk `i` whole against the unbuilt tree's image and reserves its bytes and
    /// the pages it would create; on error nothing is reserved.
    fn stage(
        &mut self,
        t: &TreeHandle,
        state: &State,
        chunk: proto::WriteMemoryChunk,
        i: u64,
    ) -> Result<(), Status> {
        let field = || format!("chunks[{i}]");
        let image = created_image(t, state)?;
        let (slot, len) = (chunk.slot, chunk.data.len() as u64);
        let pages = image
            .check_write_data(slot, chunk.byte_offset, &chunk.data)
            .map_err(|e| within(e, &field()))?;
        let fresh: Vec<u64> = pages
            .filter(|&p| image.page_id(slot, p).is_none() && !self.new_pages.contains(&(slot, p)))
            .collect();
        let k = t.summary().omitted_levels;
        let staging = MemoryEstimate {
            host_bytes: len,
            device_bytes: 0,
        };
        let extra = pages_estimate(t, image, slot, fresh.len() as u64, k).plus(staging);
        self.registry.grow(
            t,
            extra,
            &format!(
                "{} staged WriteMemory bytes and {} new pages of slot {slot}",
                self.bytes + len,
                self.new_pages.len() + fresh.len()
            ),
        )?;
        self.reserved = self.reserved.plus(extra);
        self.new_pages.extend(fresh.into_iter().map(|p| (slot, p)));
        self.bytes += len;
        self.chunks.push(chunk);
        Ok(())
    }

    /// Writes every staged chunk into the image at once ([`MemoryImage::write_all`]) and
    /// keeps, of the stream's reservation, only the pages it created.
    fn commit(
        mut self,
        t: &TreeHandle,
        state: &mut State,
    ) -> Result<proto::WriteMemoryResponse, Status> {
        let image = match state {
            State::Created { image } => image,
            State::Built(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "tree {} was built while this WriteMemory stream was open; nothing from \
                     the stream was written",
                    t.id
                ))
                .into())
            }
            other => return Err(not_built(t, other)),
        };
        // Pages counted as new that another stream created meanwhile are released too.
        let k = t.summary().omitted_levels;
        let mut release = MemoryEstimate {
            host_bytes: self.bytes,
            device_bytes: 0,
        };
        for &(slot, page) in &self.new_pages {
            if image.page_id(slot, page).is_some() {
                release = release.plus(pages_estimate(t, image, slot, 1, k));
            }
        }
        let writes: Vec<(u32, u64, &[u8])> = self
            .chunks
            .iter()
            .map(|c| (c.slot, c.byte_offset, &c.data[..]))
            .collect();
        Arc::make_mut(image).write_all(&writes)?;
        self.registry.shrink(t, release);
        self.reserved = MemoryEstimate::default();
        let mut s = t.summary();
        s.pages = image.total_pages();
        s.usage.host_raw_bytes = image.total_bytes();
        t.set_summary(s);
        tracing::debug!(tree_id = %t.id, chunks = self.chunks.len(), bytes = self.bytes, "WriteMemory stream applied");
        Ok(proto::WriteMemoryResponse {
            bytes_written: self.bytes,
            chunks: self.chunks.len() as u64,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.reserved.total() > 0 {
            tracing::info!(
                tree_id = %self.tree.id,
                chunks = self.chunks.len(),
                bytes = self.bytes,
                "a WriteMemory stream ended without a clean end (reset, cancelled, cut off or \
                 refused); none of its chunks were written"
            );
            self.registry.shrink(&self.tree, self.reserved);
        }
    }
}

/// The image of an unbuilt tree, or the status saying why there is none.
fn created_image<'a>(t: &TreeHandle, state: &'a State) -> Result<&'a MemoryImage, Status> {
    match state {
        State::Created { image } => Ok(image),
        State::Built(_) => Err(Error::FailedPrecondition(format!(
            "tree {} is already built: WriteMemory writes the initial image, before BuildTree",
            t.id
        ))
        .into()),
        other => Err(not_built(t, other)),
    }
}

/// Adds `count()` permutations when metrics are on; the count is not computed otherwise.
fn count_permutations(m: Option<&Metrics>, count: impl FnOnce() -> u64) {
    if let Some(m) = m {
        m.add_permutations(count());
    }
}

/// Turns tonic's "message length too large" (`OUT_OF_RANGE`) into `RESOURCE_EXHAUSTED`
/// naming the limit; any other status passes through.
pub(crate) fn message_limit_status(s: Status, max_message_bytes: usize) -> Status {
    if is_message_too_large(&s) {
        Status::resource_exhausted(format!(
            "max_message_bytes = {max_message_bytes}: {}",
            s.message()
        ))
    } else {
        s
    }
}

/// Whether `s` is tonic's rejection of a message over its size limit.
pub(crate) fn is_message_too_large(s: &Status) -> bool {
    s.code() == Code::OutOfRange && s.message().contains("message length too large")
}

/// Puts `prefix.` in front of an `InvalidArgument`'s field (e.g. `chunks[2].byte_offset`).
fn within(e: Error, prefix: &str) -> Error {
    match e {
        Error::InvalidArgument { field, message } => Error::InvalidArgument {
            field: format!("{prefix}.{field}"),
            message,
        },
        e => e,
    }
}

/// The status for a call that needs a built tree but found `state`.
fn not_built(t: &TreeHandle, state: &State) -> Status {
    match state {
        State::Created { .. } => Error::FailedPrecondition(format!(
            "tree {} is not built yet: call BuildTree first",
            t.id
        ))
        .into(),
        State::Dropped => not_found(&t.id).into(),
        State::Poisoned | State::Built(_) => poisoned(t),
    }
}

fn poisoned(t: &TreeHandle) -> Status {
    Status::internal(format!(
        "tree {} is unusable after an internal panic; drop it",
        t.id
    ))
}

/// The built tree in `state`, or the status saying why there is none.
fn built<'a>(t: &TreeHandle, state: &'a mut State) -> Result<&'a mut dyn MemoryTree, Status> {
    match state {
        State::Built(tree) => Ok(tree.as_mut()),
        other => Err(not_built(t, other)),
    }
}

/// What `pages` new pages of `slot` add to tree `t`'s reservation at `omitted_levels = k`:
/// their raw bytes and at most [`tree::node_bytes_per_page`] of nodes each, on the host or
/// the device as [`limits::estimate`] splits them.
fn pages_estimate(
    t: &TreeHandle,
    image: &MemoryImage,
    slot: u32,
    pages: u64,
    k: u32,
) -> MemoryEstimate {
    limits::estimate(
        t.backend,
        pages.saturating_mul(tree::node_bytes_per_page(&t.layout, slot, k)),
        pages.saturating_mul(image.page_bytes(slot)),
    )
}

/// Grows tree `t`'s reservation by `extra` (for `what`), runs `f`, and shrinks it back if
/// `f` fails, so a refused batch leaves the reservation as it was.
fn with_growth<R>(
    registry: &Registry,
    t: &TreeHandle,
    extra: MemoryEstimate,
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> Result<R, Status>,
) -> Result<R, Status> {
    if extra.total() == 0 {
        return f();
    }
    registry.grow(t, extra, &what())?;
    let r = f();
    if r.is_err() {
        registry.shrink(t, extra);
    }
    r
}

/// The status of a batch the backend failed to apply after validation (a device error,
/// memory, an injected fault): it names the tree and says the batch was not applied.
/// Backends undo a part-applied batch (the CUDA tree keeps its last good root and image
/// and marks itself lost instead).
fn batch_failed(t: &TreeHandle, e: Error) -> Status {
    let not_applied = |m: String| format!("tree {}: the batch was not applied: {m}", t.id);
    match e {
        Error::Unavailable(m) => Error::Unavailable(not_applied(m)).into(),
        Error::ResourceExhausted(m) => Error::ResourceExhausted(not_applied(m)).into(),
        e => e.into(),
    }
}

/// A hash of a batch's packed columns, with their lengths, as they came on the wire: what
/// identifies a retry of it.
fn batch_hash(msg: &proto::TouchedBlocks) -> [u8; 32] {
    let mut h = Sha256::new();
    for column in [&msg.slots, &msg.blocks, &msg.cells] {
        h.update((column.len() as u64).to_le_bytes());
        h.update(column);
    }
    h.finalize().into()
}

/// Openings of `positions` on the wire, counting their permutations when metrics are on.
fn openings_reply(
    t: &TreeHandle,
    mt: &dyn MemoryTree,
    metrics: Option<&Metrics>,
    positions: &[(u32, u64)],
) -> Result<Vec<proto::Opening>, Status> {
    let openings = mt.openings(positions)?;
    count_permutations(metrics, || {
        metrics::opening_permutations(
            t.backend,
            &t.layout,
            mt.image(),
            mt.omitted_levels(),
            positions,
        )
    });
    Ok(openings.iter().map(codec::opening_to_proto).collect())
}

/// The positions of a batch's blocks, in batch order.
fn positions_of(blocks: &[tree::TouchedBlock]) -> Vec<(u32, u64)> {
    blocks.iter().map(|b| (b.slot, b.block)).collect()
}

/// The reply to a retry of the tree's last batch `b`, whose reply was lost: that batch's
/// roots, nothing applied again, the openings from the current state (unchanged since, as
/// the root is still `b.new_root`) and the witness kept from the first call.
fn retried(
    t: &TreeHandle,
    mt: &dyn MemoryTree,
    metrics: Option<&Metrics>,
    b: LastBatch,
    blocks: &[tree::TouchedBlock],
    wants: Wants,
) -> Result<proto::UpdateBlocksResponse, Status> {
    tracing::info!(tree_id = %t.id, blocks = blocks.len(), "retry of the last batch: already applied");
    let witness = match (wants.witness, b.witness) {
        (false, _) => None,
        (true, Some(w)) => Some(w),
        (true, None) => {
            return Err(Error::FailedPrecondition(format!(
                "tree {}: this batch was already applied without return_witness, so its \
                 witness was not kept; nothing was applied again",
                t.id
            ))
            .into())
        }
    };
    let openings = match wants.openings {
        true => openings_reply(t, mt, metrics, &positions_of(blocks))?,
        false => Vec::new(),
    };
    Ok(proto::UpdateBlocksResponse {
        old_root: Some(codec::digest_to_proto(&b.old_root)),
        new_root: Some(codec::digest_to_proto(&b.new_root)),
        openings,
        already_applied: true,
        witness,
    })
}

/// What an `UpdateBlocks` call asks to get back besides the roots.
#[derive(Clone, Copy, Debug)]
struct Wants {
    openings: bool,
    witness: bool,
}

/// Refuses a reply of `openings` openings and, when given, a witness of `witness_rows`
/// rows that could not be sent under the message limit, before anything changes.
fn check_reply_fits(
    openings: usize,
    witness_rows: Option<u64>,
    t: &TreeHandle,
    limits: &Limits,
) -> Result<(), Status> {
    let mut bound = RESPONSE_OVERHEAD;
    let mut parts = Vec::new();
    if openings > 0 {
        bound += codec::openings_encoded_bound(openings, t.layout.opening_len());
        parts.push(format!("{openings} openings"));
    }
    if let Some(rows) = witness_rows {
        bound = bound.saturating_add(codec::witness_encoded_bound(rows));
        parts.push(format!("a witness of {rows} rows"));
    }
    if bound > limits.max_message_bytes as u64 {
        return Err(Error::ResourceExhausted(format!(
            "max_message_bytes = {}: {} need up to {bound} bytes; nothing was changed: ask \
             for fewer (split the batch)",
            limits.max_message_bytes,
            parts.join(" and ")
        ))
        .into());
    }
    Ok(())
}

/// When a call must have started its work (`Limits::request_timeout`), counted from when
/// its handler (or, for `WriteMemory`, each chunk) began.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Option<(tokio::time::Instant, Duration)>,
}

impl Deadline {
    fn new(limits: &Limits) -> Self {
        Deadline {
            at: limits
                .request_timeout
                .map(|t| (tokio::time::Instant::now() + t, t)),
        }
    }

    /// `DEADLINE_EXCEEDED` naming the limit and what the call was waiting for.
    fn exceeded(timeout: Duration, waiting_for: &str) -> Status {
        Status::deadline_exceeded(format!(
            "request_timeout = {}: still waiting for {waiting_for}; nothing was changed",
            timeout_text(timeout)
        ))
    }

    /// Fails once the deadline has passed; called before work that changes the tree.
    fn check(&self, waiting_for: &str) -> Result<(), Status> {
        match self.at {
            Some((at, t)) if tokio::time::Instant::now() >= at => {
                Err(Self::exceeded(t, waiting_for))
            }
            _ => Ok(()),
        }
    }

    /// Locks the tree's state, waiting no longer than the deadline.
    async fn lock<T>(
        &self,
        t: &TreeHandle,
        lock: impl std::future::Future<Output = T>,
    ) -> Result<T, Status> {
        match self.at {
            None => Ok(lock.await),
            Some((at, timeout)) => tokio::time::timeout_at(at, lock).await.map_err(|_| {
                tracing::debug!(tree_id = %t.id, "request timed out waiting for the tree");
                Self::exceeded(timeout, &format!("tree {}, busy with another call", t.id))
            }),
        }
    }
}

/// Runs `f` on the tree's state in a blocking thread, holding the tree's mutex, once it is
/// had before `deadline`.
///
/// The state is moved out while `f` runs, so a panic inside a backend leaves `Poisoned`
/// behind rather than a half-updated tree. Once `f` runs it finishes, even if the client
/// has gone.
async fn with_tree<R, F>(tree: Arc<TreeHandle>, deadline: Deadline, f: F) -> Result<R, Status>
where
    R: Send + 'static,
    F: FnOnce(&TreeHandle, &mut State) -> Result<R, Status> + Send + 'static,
{
    let guard = deadline
        .lock(&tree, Arc::clone(&tree.state).lock_owned())
        .await?;
    let id = tree.id.clone();
    // The call's `rpc{method, request_id}` span, so the blocking work's logs carry it.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut guard = guard;
        let mut state = std::mem::replace(&mut *guard, State::Poisoned);
        let r = f(&tree, &mut state);
        *guard = state;
        r
    })
    .await
    .map_err(|e| {
        tracing::error!(tree_id = %id, error = %e, "tree call panicked");
        Status::internal(format!("tree {id}: internal error: {e}"))
    })?
}

fn tree_info(t: &TreeHandle) -> proto::TreeInfo {
    let s = t.summary();
    let state = if s.root.is_some() {
        proto::TreeState::Built
    } else {
        proto::TreeState::Created
    };
    proto::TreeInfo {
        tree_id: t.id.clone(),
        backend: t.backend.name().into(),
        omitted_levels: s.omitted_levels,
        layout: Some(codec::layout_to_proto(&t.layout)),
        state: state as i32,
        root: s.root.as_ref().map(codec::digest_to_proto),
        updates: s.updates,
        reserved_bytes: t.reserved().total(),
        host_node_bytes: s.usage.host_node_bytes,
        host_raw_bytes: s.usage.host_raw_bytes,
        device_node_bytes: s.usage.device_node_bytes,
        device_raw_bytes: s.usage.device_raw_bytes,
        omitted_levels_auto: t.omitted_levels_auto,
        present_pages: s.pages,
    }
}

#[tonic::async_trait]
impl MemCommit for MemCommitService {
    async fn create_tree(
        &self,
        req: Request<proto::CreateTreeRequest>,
    ) -> Reply<proto::CreateTreeResponse> {
        let req = req.into_inner();
        let layout = codec::layout_from_proto(req.layout.as_ref(), "layout")?;
        let backend = match Backend::parse(&req.backend)? {
            Backend::Auto => self.auto_backend(),
            b => b.resolve()?,
        };
        let image = crate::image::MemoryImage::zeroed(&layout)?;
        // Under auto, k is chosen at BuildTree from the pages present then; until then
        // reservations use the default k. The empty tree must fit the budget already.
        let (k, auto) = if req.auto_omitted_levels {
            if req.omitted_levels.is_some() {
                return Err(Error::invalid(
                    "omitted_levels",
                    "must be unset when auto_omitted_levels is true",
                )
                .into());
            }
            let budget = match req.memory_budget_bytes.or(self.memory_budget) {
                Some(b) => b,
                None => tree::default_memory_budget(backend)?,
            };
            tree::choose_omitted_levels(&layout, &image, budget)?;
            (tree::DEFAULT_OMITTED_LEVELS, Some(req.memory_budget_bytes))
        } else {
            (
                req.omitted_levels.unwrap_or(tree::DEFAULT_OMITTED_LEVELS),
                None,
            )
        };
        tree::check_omitted_levels(k)?;
        let node_bytes = tree::node_bytes(&layout, &image, k);
        let reserved = limits::estimate(backend, node_bytes, 0);
        let reservation = self.registry.reserve(reserved)?;
        let id = uuid::Uuid::new_v4().to_string();
        let handle = Registry::handle(
            id.clone(),
            layout.clone(),
            backend,
            (k, auto),
            reserved,
            image,
        );
        self.registry.insert(reservation, handle);
        tracing::info!(
            tree_id = %id,
            backend = backend.name(),
            omitted_levels = k,
            omitted_levels_auto = req.auto_omitted_levels,
            node_bytes,
            declared_raw_bytes = layout.raw_bytes(),
            "tree created"
        );
        Ok(Response::new(proto::CreateTreeResponse {
            tree_id: id,
            omitted_levels: k,
            node_bytes,
            raw_bytes: 0,
            backend: backend.name().into(),
            declared_raw_bytes: layout.raw_bytes(),
            layout: Some(codec::layout_to_proto(&layout)),
        }))
    }

    async fn write_memory(
        &self,
        req: Request<Streaming<proto::WriteMemoryChunk>>,
    ) -> Reply<proto::WriteMemoryResponse> {
        self.write_chunks(req.into_inner()).await.map(Response::new)
    }

    async fn build_tree(
        &self,
        req: Request<proto::BuildTreeRequest>,
    ) -> Reply<proto::BuildTreeResponse> {
        let deadline = Deadline::new(&self.limits);
        let tree = self.registry.get(&req.get_ref().tree_id)?;
        let metrics = self.metrics.clone();
        let registry = Arc::clone(&self.registry);
        let server_budget = self.memory_budget;
        let resp = with_tree(tree, deadline, move |t, state| {
            let image = match state {
                State::Created { image } => Arc::clone(image),
                State::Built(_) => {
                    return Err(Error::FailedPrecondition(format!(
                        "tree {} is already built",
                        t.id
                    ))
                    .into())
                }
                other => return Err(not_built(t, other)),
            };
            let mut summary = t.summary();
            let k = if t.omitted_levels_auto {
                let budget = match t.memory_budget.or(server_budget) {
                    Some(b) => b,
                    None => tree::default_memory_budget(t.backend)?,
                };
                let k = tree::choose_omitted_levels(&t.layout, &image, budget)?;
                tracing::info!(tree_id = %t.id, omitted_levels = k, budget, pages = image.total_pages(), "omitted_levels auto");
                k
            } else {
                summary.omitted_levels
            };
            // The reservation becomes the built tree's exact need.
            let need = limits::estimate(
                t.backend,
                tree::node_bytes(&t.layout, &image, k),
                image.total_bytes(),
            );
            let before = t.reserved();
            registry.resize(t, need, &format!("the build at omitted_levels {k}"))?;
            let started = Instant::now();
            tracing::info!(tree_id = %t.id, backend = t.backend.name(), "tree build started");
            let label = format!("tree {}", t.id);
            let built = match tree::build_labelled(
                t.backend,
                t.layout.clone(),
                Arc::clone(&image),
                k,
                Some(&label),
            ) {
                Ok(b) => b,
                Err(e) => {
                    let _ = registry.resize(t, before, "a failed build");
                    return Err(e.into());
                }
            };
            count_permutations(metrics.as_deref(), || {
                metrics::build_permutations(t.backend, &t.layout, &image)
            });
            let root = built.root();
            summary.root = Some(root);
            summary.updates = 0;
            summary.usage = built.memory_usage();
            summary.omitted_levels = k;
            t.set_summary(summary);
            // Dropping `Created` drops its image handle, so the tree's `Arc` is the only one
            // and updates write the image in place.
            drop(image);
            *state = State::Built(built);
            tracing::info!(
                tree_id = %t.id,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "tree built"
            );
            Ok(proto::BuildTreeResponse {
                root: Some(codec::digest_to_proto(&root)),
                omitted_levels: k,
                present_pages: summary.pages,
            })
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn update_blocks(
        &self,
        req: Request<proto::UpdateBlocksRequest>,
    ) -> Reply<proto::UpdateBlocksResponse> {
        let deadline = Deadline::new(&self.limits);
        let req = req.into_inner();
        let limits = self.limits;
        let msg = req.blocks.unwrap_or_default();
        // From the column length, before any decoding or waiting.
        limits.check_batch(codec::packed_entries(&msg.slots), "blocks")?;
        let tree = self.registry.get(&req.tree_id)?;
        let wants = Wants {
            openings: req.return_openings,
            witness: req.return_witness,
        };
        let expected = req
            .expected_old_root
            .as_ref()
            .map(|d| codec::digest_from_proto(Some(d), "expected_old_root"))
            .transpose()?;
        let metrics = self.metrics.clone();
        let registry = Arc::clone(&self.registry);
        let resp = with_tree(tree, deadline, move |t, state| {
            let mt = built(t, state)?;
            let blocks = codec::decode_blocks(&msg, "blocks")?;
            check_reply_fits(
                if wants.openings { blocks.len() } else { 0 },
                wants
                    .witness
                    .then(|| tree::witness::witness_rows(&t.layout, &blocks)),
                t,
                &limits,
            )?;
            // Only a batch that names its old root can be retried, so only it is hashed.
            let contents = expected.map(|_| batch_hash(&msg));
            drop(msg);
            if let Some(want) = expected {
                let root = mt.root();
                if root != want {
                    let last = t.last_batch().filter(|b| {
                        Some(b.contents) == contents && b.old_root == want && b.new_root == root
                    });
                    return match last {
                        Some(b) => retried(t, mt, metrics.as_deref(), b, &blocks, wants),
                        None => Err(Error::FailedPrecondition(format!(
                            "tree {}: expected_old_root {want:?} differs from the tree's root \
                             {root:?}; nothing was applied (another batch changed the tree)",
                            t.id
                        ))
                        .into()),
                    };
                }
            }
            // The last point where the call may give up: from here the batch is applied
            // whole, however long it takes.
            deadline.check("the batch to be decoded")?;
            let started = Instant::now();
            let old_root = mt.root();
            let k = mt.omitted_levels();
            // Pages the batch creates are reserved before anything is written.
            let image = mt.image();
            let extra = image
                .pages_created_by_blocks(blocks.iter().map(|b| (b.slot, b.block)))
                .iter()
                .enumerate()
                .fold(MemoryEstimate::default(), |e, (slot, &n)| {
                    e.plus(pages_estimate(t, image, slot as u32, n, k))
                });
            let new_pages = extra.total() > 0;
            let (new_root, witness) = with_growth(
                &registry,
                t,
                extra,
                || "the batch's new pages".into(),
                || {
                    let applied = match wants.witness {
                        true => mt
                            .update_with_witness(&blocks)
                            .map(|(root, rows)| (root, Some(codec::witness_to_proto(&rows)))),
                        false => mt.update(&blocks).map(|root| (root, None)),
                    };
                    applied.map_err(|e| batch_failed(t, e))
                },
            )?;
            let (backend, layout) = (t.backend, &t.layout);
            count_permutations(metrics.as_deref(), || {
                metrics::update_permutations(backend, layout, mt.image(), k, &blocks)
            });
            let openings = match wants.openings {
                true => openings_reply(t, mt, metrics.as_deref(), &positions_of(&blocks))?,
                false => Vec::new(),
            };
            let mut s = t.summary();
            s.root = Some(new_root);
            if !blocks.is_empty() {
                // An empty batch changes nothing: no update, and the last batch stays.
                s.updates += 1;
                t.set_last_batch(contents.map(|contents| LastBatch {
                    contents,
                    old_root,
                    new_root,
                    witness: witness.clone(),
                }));
            }
            s.usage = mt.memory_usage();
            if new_pages {
                s.pages = mt.image().total_pages();
            }
            t.set_summary(s);
            tracing::debug!(
                tree_id = %t.id,
                blocks = blocks.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "batch applied"
            );
            Ok(proto::UpdateBlocksResponse {
                old_root: Some(codec::digest_to_proto(&old_root)),
                new_root: Some(codec::digest_to_proto(&new_root)),
                openings,
                already_applied: false,
                witness,
            })
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn get_root(&self, req: Request<proto::GetRootRequest>) -> Reply<proto::GetRootResponse> {
        let deadline = Deadline::new(&self.limits);
        let tree = self.registry.get(&req.get_ref().tree_id)?;
        let state = deadline.lock(&tree, tree.state.lock()).await?;
        let root = match &*state {
            State::Built(t) => t.root(),
            other => return Err(not_built(&tree, other)),
        };
        Ok(Response::new(proto::GetRootResponse {
            root: Some(codec::digest_to_proto(&root)),
        }))
    }

    async fn get_openings(
        &self,
        req: Request<proto::GetOpeningsRequest>,
    ) -> Reply<proto::GetOpeningsResponse> {
        let deadline = Deadline::new(&self.limits);
        let req = req.into_inner();
        let limits = self.limits;
        let msg = req.positions.unwrap_or_default();
        limits.check_batch(codec::packed_entries(&msg.slots), "positions")?;
        let tree = self.registry.get(&req.tree_id)?;
        let metrics = self.metrics.clone();
        let resp = with_tree(tree, deadline, move |t, state| {
            let mt = built(t, state)?;
            let positions = codec::decode_positions(&msg, "positions")?;
            check_reply_fits(positions.len(), None, t, &limits)?;
            Ok(proto::GetOpeningsResponse {
                root: Some(codec::digest_to_proto(&mt.root())),
                openings: openings_reply(t, mt, metrics.as_deref(), &positions)?,
            })
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn drop_tree(
        &self,
        req: Request<proto::DropTreeRequest>,
    ) -> Reply<proto::DropTreeResponse> {
        let id = &req.get_ref().tree_id;
        let released_bytes = self.registry.remove(id).await?;
        tracing::info!(tree_id = %id, released_bytes, "tree dropped");
        Ok(Response::new(proto::DropTreeResponse { released_bytes }))
    }

    async fn list_trees(
        &self,
        _req: Request<proto::ListTreesRequest>,
    ) -> Reply<proto::ListTreesResponse> {
        Ok(Response::new(proto::ListTreesResponse {
            trees: self.registry.trees().iter().map(|t| tree_info(t)).collect(),
        }))
    }

    async fn get_server_info(
        &self,
        _req: Request<proto::GetServerInfoRequest>,
    ) -> Reply<proto::GetServerInfoResponse> {
        let trees: Vec<_> = self.registry.trees().iter().map(|t| tree_info(t)).collect();
        let total_host_bytes = trees
            .iter()
            .map(|t| t.host_node_bytes + t.host_raw_bytes)
            .sum();
        let total_device_bytes = trees
            .iter()
            .map(|t| t.device_node_bytes + t.device_raw_bytes)
            .sum();
        // The GPU when the cuda backend is usable here (free memory read now); after a
        // device fault "unusable: <the fault and the tree that caused it>"; else "none".
        let probe = tree::cuda::probe_device();
        // What `auto` gives now, without logging the fallback on every poll.
        let backend = match (self.default_backend, &probe) {
            (Backend::Cuda, Err(_)) => Backend::Cpu,
            (b, _) => b,
        };
        let (device, free, total) = match probe {
            Ok(d) => (d.name, d.free_bytes, d.total_bytes),
            Err(why) if tree::cuda::context_health().fault().is_some() => {
                (format!("unusable: {why}"), 0, 0)
            }
            Err(_) => ("none".into(), 0, 0),
        };
        let memory_budget_bytes = match self.memory_budget {
            Some(b) => b,
            None => tree::default_memory_budget(backend).unwrap_or(0),
        };
        Ok(Response::new(proto::GetServerInfoResponse {
            backend: backend.name().into(),
            device,
            device_memory_free_bytes: free,
            device_memory_total_bytes: total,
            total_reserved_bytes: self.registry.reserved_bytes(),
            total_present_pages: self.registry.pages(),
            total_host_bytes,
            total_device_bytes,
            trees,
            max_message_bytes: self.limits.max_message_bytes as u64,
            max_trees: self.limits.max_trees as u64,
            #[allow(deprecated)]
            max_total_bytes: self.limits.max_host_bytes,
            max_host_bytes: self.limits.max_host_bytes,
            max_tree_bytes: self.limits.max_tree_bytes,
            max_device_bytes: self.limits.max_device_bytes,
            max_blocks_per_batch: self.limits.max_blocks_per_batch as u64,
            request_timeout_ms: self
                .limits
                .request_timeout
                .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            version: env!("CARGO_PKG_VERSION").into(),
            memory_budget_bytes,
            memory_budget_configured: self.memory_budget.is_some(),
        }))
    }
}
