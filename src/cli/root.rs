//! `memcommit root`: the root of a memory image, computed in-process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};

use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::tree::{self, Backend, OmittedLevels, DEFAULT_BUDGET_PERCENT};

/// Arguments of `memcommit root`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Prints one JSON line: {\"root\": [8 canonical integers]}.\n\n\
Example:\n  memcommit root --layout layout.json --image 0=regs.bin --image 1=ram.bin"
)]
pub struct Args {
    /// Layout JSON file (DESIGN.md "Layout JSON"); both heights optional.
    #[arg(long, value_name = "L.json")]
    layout: PathBuf,
    /// Raw little-endian cells for one slot, as SLOT=FILE. A short file is zero-padded; a
    /// longer file than the slot is an error. Slots without --image are zero.
    #[arg(long = "image", value_name = "SLOT=FILE", value_parser = parse_image)]
    images: Vec<(u32, PathBuf)>,
    /// Tree backend: auto uses CUDA when a device is usable, else CPU.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Bottom levels of each slot subtree left out of storage (0..=20), or `auto`: the
    /// smallest k whose tree nodes plus raw memory fit --memory-budget (the choice is
    /// logged). Never changes the root, only memory and time.
    #[arg(long, value_name = "K|auto", default_value = "3")]
    omitted_levels: OmittedLevels,
    /// Memory budget of --omitted-levels auto, in bytes. Default: 90% of free device memory
    /// on cuda, of available host memory (MemAvailable) otherwise.
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
}

/// The `k` to build with: `Fixed` as given; `Auto` chosen for `layout` within `budget`
/// (default [`tree::default_memory_budget`] of `backend`), logged with its numbers.
pub(crate) fn resolve_omitted_levels(
    requested: OmittedLevels,
    layout: &MemoryLayout,
    backend: Backend,
    budget: Option<u64>,
) -> anyhow::Result<u32> {
    let OmittedLevels::Fixed(k) = requested else {
        let (budget, source) = match budget {
            Some(b) => (b, "--memory-budget".to_string()),
            None => (
                tree::default_memory_budget(backend)
                    .context("--omitted-levels auto: give --memory-budget")?,
                format!(
                    "{DEFAULT_BUDGET_PERCENT}% of free {} memory",
                    if backend.resolve()? == Backend::Cuda {
                        "device"
                    } else {
                        "host"
                    }
                ),
            ),
        };
        let k = tree::choose_omitted_levels(layout, budget)?;
        tracing::info!(
            "omitted_levels auto: chose k = {k} (tree nodes {} + raw {} bytes within a budget \
             of {budget} bytes, {source})",
            tree::node_bytes(layout, k),
            layout.raw_bytes()
        );
        return Ok(k);
    };
    Ok(k)
}

fn parse_image(s: &str) -> Result<(u32, PathBuf), String> {
    let (slot, file) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SLOT=FILE"))?;
    let slot = slot
        .parse()
        .map_err(|_| format!("slot {slot:?} in {s:?} is not a non-negative integer"))?;
    Ok((slot, PathBuf::from(file)))
}

/// Loads the layout and images, builds the tree, prints `{"root": [...]}`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.layout)
        .with_context(|| format!("reading layout {}", args.layout.display()))?;
    let layout = MemoryLayout::from_json(&text)
        .with_context(|| format!("layout {}", args.layout.display()))?;
    let mut image = MemoryImage::zeroed(&layout)?;
    for (slot, file) in &args.images {
        let data =
            std::fs::read(file).with_context(|| format!("reading image {}", file.display()))?;
        let capacity = layout.space(*slot, || "--image SLOT".into())?.raw_bytes();
        if data.len() as u64 > capacity {
            bail!(
                "--image {slot}={}: {} bytes is longer than slot {slot} ({capacity} bytes)",
                file.display(),
                data.len()
            );
        }
        image
            .write(*slot, 0, &data)
            .with_context(|| format!("--image {slot}={}", file.display()))?;
    }
    let k = resolve_omitted_levels(
        args.omitted_levels,
        &layout,
        args.backend,
        args.memory_budget,
    )?;
    let tree = tree::build(args.backend, layout, Arc::new(image), k)?;
    println!("{}", serde_json::json!({ "root": tree.root() }));
    Ok(ExitCode::SUCCESS)
}
