//! Replay: drives a memcommit server through a trace file over gRPC (docs/design.md "CLI
//! contracts", `memcommit replay`). Step 0 is the build; each update is the next step.

use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::service::client::Client;
use crate::service::client::Returns;
use crate::trace::{TraceEvent, TraceReader};
use crate::tree::{Backend, OmittedLevels, WitnessRow};

/// How to replay a trace.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayOptions {
    /// Backend the server builds the tree on.
    pub backend: Backend,
    /// Overrides the trace's `omitted_levels` (never changes a root). `auto` lets the server
    /// choose k at the build, from the pages the trace's writes made present.
    pub omitted_levels: Option<OmittedLevels>,
    /// The budget of `auto`, in bytes; `None`: the server's own.
    pub memory_budget: Option<u64>,
    /// Ask the server for every update's witness (`UpdateBlocks.return_witness`), checked
    /// against the step's roots and reported in [`StepReport::witness`].
    pub witness: bool,
}

/// One root step: the build (step 0) or an update.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// 0 for the build, then 1, 2, … per update.
    pub step: u64,
    /// The root the server returned.
    pub root: Digest,
    /// The trace's `expect_root`, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_root: Option<Digest>,
    /// Touched blocks in the step (0 for the build).
    pub blocks: usize,
    /// Wall time of the step's RPC, in milliseconds.
    pub ms: f64,
    /// The update's witness rows (docs/design.md, "Update witness"), with
    /// [`ReplayOptions::witness`]; absent for the build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<Vec<WitnessRow>>,
}

/// What [`replay`] reports as it goes.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// A `write` line was uploaded; the total raw bytes uploaded so far.
    Uploaded(u64),
    /// A root step finished.
    Step(&'a StepReport),
}

impl StepReport {
    /// False when the step had an `expect_root` and the root differs.
    pub fn matches(&self) -> bool {
        self.expect_root.is_none_or(|e| e == self.root)
    }
}

/// What a whole replay did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplaySummary {
    /// The server's tree id (dropped at the end).
    pub tree_id: String,
    /// `omitted_levels` the tree was built with (under `auto`, chosen by the server).
    pub omitted_levels: u32,
    /// Present pages of the image at the build.
    pub present_pages: u64,
    /// Root steps replayed (build included).
    pub steps: u64,
    /// Steps that carried an `expect_root`, all of which matched.
    pub checked: u64,
    /// Raw bytes uploaded before the build.
    pub bytes_written: u64,
    /// Touched blocks over all updates.
    pub blocks: u64,
    /// Per-step RPC times, milliseconds, in step order.
    pub step_ms: Vec<f64>,
    /// Batches whose reply was lost and whose resend the server answered `already_applied`.
    pub retried: u64,
}

/// Replays `trace` through `client`, calling `on_progress` after every upload and root step. Stops at the
/// first `expect_root` that does not match. The tree is dropped at the end, also on error.
///
/// # Errors
/// The trace's own errors; the server's, as [`Error`] variants; and
/// [`Error::FailedPrecondition`] naming the step, the expected and the returned root when
/// an `expect_root` does not match.
pub async fn replay(
    client: &mut Client,
    mut trace: TraceReader,
    options: ReplayOptions,
    mut on_progress: impl FnMut(Progress<'_>),
) -> Result<ReplaySummary> {
    let header = trace.header().clone();
    let created = match options.omitted_levels.or(header.omitted_levels) {
        Some(OmittedLevels::Auto) => {
            client
                .create_tree_auto(&header.layout, options.backend, options.memory_budget)
                .await
        }
        Some(OmittedLevels::Fixed(k)) => {
            client
                .create_tree(&header.layout, Some(k), options.backend)
                .await
        }
        None => {
            client
                .create_tree(&header.layout, None, options.backend)
                .await
        }
    }
    .map_err(Error::from)?;
    let mut summary = ReplaySummary {
        tree_id: created.tree_id.clone(),
        omitted_levels: created.omitted_levels,
        ..ReplaySummary::default()
    };
    let result = drive(
        client,
        &mut trace,
        &mut summary,
        options.witness,
        &mut on_progress,
    )
    .await;
    // Best effort: the tree is useless after a failed replay, and a lost drop only costs
    // server memory until the server stops.
    if let Err(e) = client.drop_tree(&created.tree_id).await {
        tracing::warn!(tree_id = %created.tree_id, "could not drop the replay tree: {e}");
    }
    result.map(|()| summary)
}

async fn drive(
    client: &mut Client,
    trace: &mut TraceReader,
    summary: &mut ReplaySummary,
    witness: bool,
    on_progress: &mut impl FnMut(Progress<'_>),
) -> Result<()> {
    let returns = Returns {
        openings: false,
        witness,
    };
    let tree_id = summary.tree_id.clone();
    // Each batch names the root it applies to, so a batch whose reply was lost is resent
    // without being applied twice (`Client::update_blocks_safely`).
    let mut current = None;
    for event in trace {
        let started = Instant::now();
        let (root, expect_root, blocks, rows) = match event? {
            TraceEvent::Write { slot, offset, data } => {
                client
                    .write_memory(&tree_id, slot, offset, &data)
                    .await
                    .map_err(Error::from)?;
                summary.bytes_written += data.len() as u64;
                on_progress(Progress::Uploaded(summary.bytes_written));
                continue;
            }
            TraceEvent::Build { expect_root } => {
                let built = client.build(&tree_id).await.map_err(Error::from)?;
                current = Some(built.root);
                summary.omitted_levels = built.omitted_levels;
                summary.present_pages = built.present_pages;
                (built.root, expect_root, 0, None)
            }
            TraceEvent::Update {
                blocks,
                expect_root,
            } => {
                let Some(old) = current else {
                    return Err(Error::FailedPrecondition(format!(
                        "step {}: an update before the trace's build event",
                        summary.steps
                    )));
                };
                let r = client
                    .update_safely(&tree_id, &blocks, returns, old)
                    .await
                    .map_err(Error::from)?;
                summary.retried += u64::from(r.already_applied);
                current = Some(r.new_root);
                (
                    r.new_root,
                    expect_root,
                    blocks.len(),
                    witness.then_some(r.witness),
                )
            }
        };
        let report = StepReport {
            step: summary.steps,
            root,
            expect_root,
            blocks,
            ms: started.elapsed().as_secs_f64() * 1e3,
            witness: rows,
        };
        on_progress(Progress::Step(&report));
        summary.steps += 1;
        summary.blocks += blocks as u64;
        summary.step_ms.push(report.ms);
        match report.expect_root {
            Some(e) if e != root => {
                return Err(Error::FailedPrecondition(format!(
                    "step {}: root {root:?} does not match expect_root {e:?}",
                    report.step
                )))
            }
            Some(_) => summary.checked += 1,
            None => {}
        }
    }
    Ok(())
}
