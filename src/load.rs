//! Load test (`memcommit load-test`): K concurrent clients, each on its own connection and
//! its own tree, send M random update batches with openings while a churn task creates
//! and drops small trees beside them. Every root and opening the server returns is checked
//! against a local [`ReferenceTree`] and [`verify_opening`].
//!
//! Bounded in count and time: each client stops after M batches or at the time limit,
//! whichever comes first; no call outlives the limit by more than [`DROP_GRACE`] (the final
//! `DropTree`s). A time-limit stop is reported in the summary, not counted as an error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::time::{timeout_at, Instant as Deadline};

use crate::bench::percentile;
use crate::error::{Error, Result};
use crate::image::MemoryImage;
use crate::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use crate::service::client::{Client, ConnectOptions};
use crate::tree::reference::ReferenceTree;
use crate::tree::{verify_opening, Backend, MemoryTree, TouchedBlock};

/// How long the final `DropTree` of a client may take once the time limit has passed.
pub const DROP_GRACE: Duration = Duration::from_secs(5);
/// Errors kept word for word in [`LoadSummary::first_errors`]; the rest are only counted.
const KEPT_ERRORS: usize = 10;

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Concurrent clients (K), each with its own connection and tree.
    pub clients: usize,
    /// Update batches per client (M).
    pub batches: u64,
    /// Distinct touched blocks per batch (capped at the client's layout's block count).
    pub blocks_per_batch: usize,
    /// Run the create/build/drop churn task beside the clients.
    pub churn: bool,
    /// Hard bound on the run, counted from its start.
    pub duration_limit: Duration,
    /// Backend of every tree.
    pub backend: Backend,
    /// Seeds every layout, image and batch: the same seed gives the same requests.
    pub seed: u64,
}

/// What a run did. `errors == 0` is a pass.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadSummary {
    /// Clients started.
    pub clients: usize,
    /// Update batches applied and checked, over all clients.
    pub batches: u64,
    /// Touched blocks in those batches.
    pub blocks: u64,
    /// Openings verified against their root and compared with the reference.
    pub openings_checked: u64,
    /// Failed calls plus mismatches (root or opening); each stops its client.
    pub errors: u64,
    /// The first few errors, each naming the client, tree and batch.
    pub first_errors: Vec<String>,
    /// True when the time limit stopped a client before its M batches.
    pub time_limited: bool,
    /// Wall time of the run, in seconds.
    pub elapsed_s: f64,
    /// `batches / elapsed_s`.
    pub batches_per_s: f64,
    /// `blocks / elapsed_s`.
    pub blocks_per_s: f64,
    /// `UpdateBlocks` round-trip latency percentiles and maximum, in milliseconds.
    pub update_ms_p50: f64,
    /// 99th percentile (nearest rank).
    pub update_ms_p99: f64,
    /// Largest.
    pub update_ms_max: f64,
    /// Churn trees created and dropped (half of them also written and built).
    pub churn_trees: u64,
}

/// State the tasks share.
struct Shared {
    options: LoadOptions,
    deadline: Deadline,
    time_limited: AtomicBool,
    batches: AtomicU64,
    blocks: AtomicU64,
    openings: AtomicU64,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
    latencies_ms: Mutex<Vec<f64>>,
}

impl Shared {
    fn error(&self, what: String) {
        tracing::error!("{what}");
        self.errors.fetch_add(1, Ordering::SeqCst);
        let mut kept = self.first_errors.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_ERRORS {
            kept.push(what);
        }
    }

    /// Runs `call` unless the time limit passes first (`None`, and the stop is recorded).
    async fn bounded<T>(&self, call: impl std::future::Future<Output = T>) -> Option<T> {
        match timeout_at(self.deadline, call).await {
            Ok(r) => Some(r),
            Err(_) => {
                self.time_limited.store(true, Ordering::SeqCst);
                None
            }
        }
    }
}

/// A small, seedable generator (SplitMix64): the run needs reproducible inputs, not
/// cryptographic ones.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn cell(&mut self, cell: CellType) -> u32 {
        (self.below(u64::from(cell.max_value()) + 1)) as u32
    }
}

/// 1–3 address spaces of 2^9..2^12 cells (64..512 blocks) of random types, the second
/// sometimes empty.
fn random_layout(rng: &mut Rng) -> Result<MemoryLayout> {
    let types = [CellType::U8, CellType::U16, CellType::Field];
    let address_spaces = (0..1 + rng.below(3))
        .map(|i| AddressSpace {
            cell: types[rng.below(3) as usize],
            num_cells: if i == 1 && rng.below(4) == 0 {
                0
            } else {
                1 << (9 + rng.below(4))
            },
        })
        .collect();
    MemoryLayout::new(LayoutSpec {
        address_spaces,
        address_space_height: None,
        address_height: None,
    })
}

/// Up to `n` distinct random blocks of `layout` with random cells.
fn random_batch(layout: &MemoryLayout, n: usize, rng: &mut Rng) -> Vec<TouchedBlock> {
    let spaces = layout.address_spaces();
    let total: u64 = spaces.iter().map(AddressSpace::num_blocks).sum();
    let n = n.min(total as usize);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // A uniform global block index, mapped to its slot.
        let mut i = rng.below(total);
        let Some((slot, space)) = spaces.iter().enumerate().find(|(_, s)| {
            let found = i < s.num_blocks();
            if !found {
                i -= s.num_blocks();
            }
            found
        }) else {
            break;
        };
        if seen.insert((slot, i)) {
            out.push(TouchedBlock {
                slot: slot as u32,
                block: i,
                cells: std::array::from_fn(|_| rng.cell(space.cell)),
            });
        }
    }
    out
}

/// A status from the server as an [`Error::Remote`] with the same code, its message led by
/// what was being done.
fn call_failed(what: &str, s: tonic::Status) -> Error {
    Error::Remote {
        code: s.code(),
        message: format!("{what}: {}", s.message()),
    }
}

fn mismatch(what: String) -> Error {
    Error::FailedPrecondition(what)
}

/// Runs `f` on the reference tree in a blocking thread (hashing is CPU work), handing the
/// tree back.
async fn on_reference<R: Send + 'static>(
    tree: ReferenceTree,
    f: impl FnOnce(&mut ReferenceTree) -> R + Send + 'static,
) -> Result<(ReferenceTree, R)> {
    tokio::task::spawn_blocking(move || {
        let mut tree = tree;
        let r = f(&mut tree);
        (tree, r)
    })
    .await
    .map_err(|e| Error::Unavailable(format!("reference tree task: {e}")))
}

/// Creates this client's tree, writes a random initial image, builds, and checks the root;
/// returns the tree id and the reference, or `None` at the time limit.
async fn set_up(
    client: &mut Client,
    shared: &Shared,
    rng: &mut Rng,
    tree_id: &mut Option<String>,
) -> Result<Option<(String, ReferenceTree)>> {
    let layout = random_layout(rng)?;
    let k = rng.below(5) as u32;
    let Some(created) = shared
        .bounded(client.create_tree(&layout, Some(k), shared.options.backend))
        .await
    else {
        return Ok(None);
    };
    let id = created.map_err(|s| call_failed("CreateTree", s))?.tree_id;
    *tree_id = Some(id.clone());
    let mut image = MemoryImage::zeroed(&layout)?;
    let blocks: u64 = layout.address_spaces().iter().map(|s| s.num_blocks()).sum();
    let batch = random_batch(&layout, (blocks / 4) as usize, rng);
    image.write_blocks(batch.iter().map(|b| (b.slot, b.block, &b.cells)))?;
    // Only the present pages: absent memory reads zero on the server too.
    for slot in 0..layout.address_spaces().len() as u32 {
        for range in image.present_ranges(slot) {
            let mut bytes = vec![0; (range.end - range.start) as usize];
            image.read(slot, range.start, &mut bytes)?;
            let Some(r) = shared
                .bounded(client.write_memory(&id, slot, range.start, &bytes))
                .await
            else {
                return Ok(None);
            };
            r.map_err(|s| call_failed(&format!("WriteMemory slot {slot}"), s))?;
        }
    }
    let Some(root) = shared.bounded(client.build_tree(&id)).await else {
        return Ok(None);
    };
    let root = root.map_err(|s| call_failed("BuildTree", s))?;
    let image = Arc::new(image);
    let (reference, ()) = on_reference(ReferenceTree::build(layout, image, k), |_| ()).await?;
    if root != reference.root() {
        return Err(mismatch(format!(
            "BuildTree root {root:?} differs from the reference's {:?}",
            reference.root()
        )));
    }
    Ok(Some((id, reference)))
}

/// Checks one `UpdateBlocks` answer against the reference, which it advances by `batch`.
fn check_batch(
    reference: &mut ReferenceTree,
    batch: &[TouchedBlock],
    r: &crate::service::client::UpdateResult,
) -> Result<()> {
    if r.old_root != reference.root() {
        return Err(mismatch(format!(
            "old_root {:?} differs from the reference's {:?}",
            r.old_root,
            reference.root()
        )));
    }
    let expected = reference.update(batch)?;
    if r.new_root != expected {
        return Err(mismatch(format!(
            "new_root {:?} differs from the reference's {expected:?}",
            r.new_root
        )));
    }
    if r.openings.len() != batch.len() {
        return Err(mismatch(format!(
            "{} openings for a batch of {} blocks",
            r.openings.len(),
            batch.len()
        )));
    }
    let positions: Vec<(u32, u64)> = batch.iter().map(|b| (b.slot, b.block)).collect();
    let want = reference.openings(&positions)?;
    for (i, (got, want)) in r.openings.iter().zip(&want).enumerate() {
        verify_opening(&r.new_root, reference.layout(), got)
            .map_err(|e| mismatch(format!("openings[{i}] does not verify: {e}")))?;
        if got != want {
            return Err(mismatch(format!(
                "openings[{i}] (slot {}, block {}) differs from the reference's",
                got.slot, got.block
            )));
        }
    }
    Ok(())
}

/// One client: its tree, then up to M checked batches; an error is recorded in `shared`
/// and ends the client. The tree is dropped at the end either way.
async fn run_client(
    mut client: Client,
    index: usize,
    shared: Arc<Shared>,
    on_batch: Arc<dyn Fn() + Send + Sync>,
) {
    let mut rng = Rng(shared.options.seed ^ (index as u64 + 1).wrapping_mul(0xA24B_AED4));
    let mut tree_id = None;
    let result = async {
        let Some((id, mut reference)) =
            set_up(&mut client, &shared, &mut rng, &mut tree_id).await?
        else {
            return Ok(());
        };
        for b in 0..shared.options.batches {
            let batch = random_batch(
                reference.layout(),
                shared.options.blocks_per_batch,
                &mut rng,
            );
            let started = Instant::now();
            let Some(r) = shared
                .bounded(client.update_blocks(&id, &batch, true))
                .await
            else {
                return Ok(());
            };
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let r = r.map_err(|s| call_failed(&format!("UpdateBlocks batch {b}"), s))?;
            let (back, checked) = on_reference(reference, move |t| {
                check_batch(t, &batch, &r).map(|()| batch.len())
            })
            .await?;
            reference = back;
            let n = checked.map_err(|e| mismatch(format!("batch {b}: {e}")))?;
            shared.batches.fetch_add(1, Ordering::SeqCst);
            shared.blocks.fetch_add(n as u64, Ordering::SeqCst);
            shared.openings.fetch_add(n as u64, Ordering::SeqCst);
            shared
                .latencies_ms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ms);
            on_batch();
        }
        Ok::<(), Error>(())
    }
    .await;
    let name = tree_id.as_deref().unwrap_or("not created");
    if let Err(e) = result {
        shared.error(format!("client {index} (tree {name}): {e}"));
    }
    if let Some(id) = &tree_id {
        drop_tree(&mut client, id, &shared, &format!("client {index}")).await;
    }
}

/// Drops `id`, allowing [`DROP_GRACE`] past the time limit.
async fn drop_tree(client: &mut Client, id: &str, shared: &Shared, who: &str) {
    match timeout_at(shared.deadline + DROP_GRACE, client.drop_tree(id)).await {
        Ok(Ok(())) => {}
        Ok(Err(s)) => shared.error(format!("{who}: DropTree {id}: {}", Error::from(s))),
        Err(_) => shared.error(format!(
            "{who}: DropTree {id} took more than {DROP_GRACE:?} past the time limit"
        )),
    }
}

/// Creates, sometimes writes and builds (checking the root), and drops small trees until
/// `stop` is set or the time limit passes. Returns the trees created and dropped.
async fn run_churn(mut client: Client, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> u64 {
    let mut rng = Rng(shared.options.seed ^ 0xC0FF_EE00);
    let mut done = 0u64;
    while !stop.load(Ordering::SeqCst) && Deadline::now() < shared.deadline {
        let layout = match random_layout(&mut rng) {
            Ok(l) => l,
            Err(e) => {
                shared.error(format!("churn: {e}"));
                return done;
            }
        };
        let build = done % 2 == 1;
        let Some(created) = shared
            .bounded(client.create_tree(&layout, None, shared.options.backend))
            .await
        else {
            break;
        };
        let id = match created {
            Ok(c) => c.tree_id,
            Err(s) => {
                shared.error(format!("churn: CreateTree: {}", Error::from(s)));
                break;
            }
        };
        if build {
            // An all-zero image: the root is the reference's over zeroed memory.
            if let Some(r) = shared.bounded(client.build_tree(&id)).await {
                match (r, MemoryImage::zeroed(&layout)) {
                    (Ok(root), Ok(image)) => {
                        let want = ReferenceTree::build(layout, Arc::new(image), 0).root();
                        if root != want {
                            shared.error(format!(
                                "churn (tree {id}): BuildTree root {root:?} differs from the \
                                 reference's {want:?}"
                            ));
                        }
                    }
                    (Err(s), _) => {
                        shared.error(format!("churn (tree {id}): BuildTree: {}", Error::from(s)))
                    }
                    (_, Err(e)) => shared.error(format!("churn: {e}")),
                }
            }
        }
        drop_tree(&mut client, &id, &shared, "churn").await;
        done += 1;
    }
    done
}

/// Runs the load test against the server at `url`. `on_batch` is called after every
/// checked batch (for a progress bar).
///
/// # Errors
/// [`Error::InvalidArgument`] for `clients`, `batches` or `blocks_per_batch` of 0, and
/// a failure to connect. Errors during the run are counted in the summary instead.
pub async fn load_test(
    url: &str,
    connect: &ConnectOptions,
    options: LoadOptions,
    on_batch: Arc<dyn Fn() + Send + Sync>,
) -> Result<LoadSummary> {
    for (field, value) in [
        ("clients", options.clients as u64),
        ("batches", options.batches),
        ("blocks_per_batch", options.blocks_per_batch as u64),
    ] {
        if value == 0 {
            return Err(Error::invalid(field, "0: must be at least 1"));
        }
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        options,
        deadline: Deadline::now() + options.duration_limit,
        time_limited: AtomicBool::new(false),
        batches: AtomicU64::new(0),
        blocks: AtomicU64::new(0),
        openings: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_errors: Mutex::new(Vec::new()),
        latencies_ms: Mutex::new(Vec::new()),
    });
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..options.clients {
        let client = Client::connect_with(url, connect).await?;
        clients.spawn(run_client(
            client,
            i,
            Arc::clone(&shared),
            Arc::clone(&on_batch),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn = if options.churn {
        let client = Client::connect_with(url, connect).await?;
        Some(tokio::spawn(run_churn(
            client,
            Arc::clone(&shared),
            Arc::clone(&stop),
        )))
    } else {
        None
    };
    while let Some(r) = clients.join_next().await {
        if let Err(e) = r {
            shared.error(format!("client task: {e}"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let churn_trees = match churn {
        Some(task) => task.await.unwrap_or_else(|e| {
            shared.error(format!("churn task: {e}"));
            0
        }),
        None => 0,
    };
    let elapsed_s = started.elapsed().as_secs_f64();
    let mut ms = std::mem::take(
        &mut *shared
            .latencies_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    ms.sort_by(f64::total_cmp);
    let first_errors = shared
        .first_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let batches = shared.batches.load(Ordering::SeqCst);
    let blocks = shared.blocks.load(Ordering::SeqCst);
    Ok(LoadSummary {
        clients: options.clients,
        batches,
        blocks,
        openings_checked: shared.openings.load(Ordering::SeqCst),
        errors: shared.errors.load(Ordering::SeqCst),
        first_errors,
        time_limited: shared.time_limited.load(Ordering::SeqCst),
        elapsed_s,
        batches_per_s: batches as f64 / elapsed_s,
        blocks_per_s: blocks as f64 / elapsed_s,
        update_ms_p50: percentile(&ms, 0.50),
        update_ms_p99: percentile(&ms, 0.99),
        update_ms_max: ms.last().copied().unwrap_or(0.0),
        churn_trees,
    })
}
