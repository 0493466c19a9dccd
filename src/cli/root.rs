//! `memcommit root`: the root of a memory image, computed in-process.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
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
    /// Layout JSON file (README "Command line", docs/design.md "Formats"); both heights optional.
    #[arg(long, value_name = "L.json")]
    layout: PathBuf,
    /// Raw little-endian cells for one slot, as SLOT=FILE. A short file is zero-padded; a
    /// longer file than the slot is an error. Slots without --image are zero. All-zero
    /// pages (4 KiB of u8 cells) of the file are skipped: they cost nothing, so a sparse
    /// dump of a 2^29-byte RAM space is as cheap as its non-zero pages.
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

/// The `k` to build with: `Fixed` as given; `Auto` chosen for `image`'s present pages
/// within `budget` (default [`tree::default_memory_budget`] of `backend`), logged with its
/// numbers.
pub(crate) fn resolve_omitted_levels(
    requested: OmittedLevels,
    layout: &MemoryLayout,
    image: &MemoryImage,
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
        let k = tree::choose_omitted_levels(layout, image, budget)?;
        tracing::info!(
            "omitted_levels auto: chose k = {k} (tree nodes {} + raw {} bytes of {} present \
             pages within a budget of {budget} bytes, {source})",
            tree::node_bytes(layout, image, k),
            image.total_bytes(),
            image.total_pages()
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

/// Writes the image file `file` into `slot` of `image`, one page at a time, skipping pages
/// that are all zero (they read as zero anyway), so a sparse 2^29-byte RAM image costs its
/// non-zero pages. On Linux the holes of a sparse file are skipped without reading them.
fn load_image(image: &mut MemoryImage, slot: u32, file: &Path) -> anyhow::Result<()> {
    let mut f = File::open(file).with_context(|| format!("opening image {}", file.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading image {}", file.display()))?
        .len();
    let page = image.page_bytes(slot);
    // 128 KiB reads: few system calls, and the buffer stays in L2 between the copy out
    // of the page cache and the zero check (1 MiB reads were 2.5x slower on the dev VM).
    // Page-aligned: the kernel's copy into a misaligned buffer was 3x slower there.
    let n = (128u64 << 10).next_multiple_of(page) as usize;
    let mut storage = vec![0u8; n + 4096];
    let skip = storage.as_ptr().align_offset(4096).min(4096);
    let buf = &mut storage[skip..skip + n];
    let (mut at, mut extent_end) = (0u64, 0u64);
    while at < len {
        if at >= extent_end {
            // The next data extent (page-aligned), on Linux: holes are never read. Asked
            // once per extent: on some file systems SEEK_HOLE walks the whole extent.
            let (data, hole) = holes::data_extent(&f, at, len);
            at = data / page * page;
            extent_end = hole.next_multiple_of(page).min(len);
            if at >= len {
                break;
            }
            f.seek(SeekFrom::Start(at))?;
        }
        let want = (extent_end - at).min(buf.len() as u64) as usize;
        f.read_exact(&mut buf[..want])
            .with_context(|| format!("reading image {}", file.display()))?;
        for (i, chunk) in buf[..want].chunks(page as usize).enumerate() {
            if chunk != &ZERO_PAGE[..chunk.len()] {
                image.write(slot, at + i as u64 * page, chunk)?;
            }
        }
        at += want as u64;
    }
    Ok(())
}

/// One page of zeros, as large as the largest page (2^9 blocks of field cells): comparing a
/// page with it is one `memcmp`.
static ZERO_PAGE: [u8; 16384] = [0; 16384];

/// `SEEK_DATA` / `SEEK_HOLE` on Linux: where data and holes of a sparse file lie.
mod holes {
    use std::fs::File;

    /// `(first data at or after at, first hole after that)`: `(len, len)` when only a hole
    /// is left, and `(at, len)` when the system cannot say (not Linux, or a file system
    /// without hole reporting), so the caller reads everything.
    #[cfg(target_os = "linux")]
    pub fn data_extent(f: &File, at: u64, len: u64) -> (u64, u64) {
        use std::os::fd::AsRawFd;
        let seek = |from: u64, whence| {
            let from = i64::try_from(from).ok()?;
            // SAFETY: lseek on a descriptor `f` owns; it only moves the file offset, which
            // the caller sets again before reading.
            let r = unsafe { libc::lseek(f.as_raw_fd(), from, whence) };
            if r >= 0 {
                Some(Ok(r as u64))
            } else {
                // ENXIO: nothing of the asked kind after `from`.
                let nxio = std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
                nxio.then_some(Err(()))
            }
        };
        match seek(at, libc::SEEK_DATA) {
            Some(Ok(data)) => match seek(data, libc::SEEK_HOLE) {
                Some(Ok(hole)) => (data, hole.min(len)),
                _ => (data, len),
            },
            Some(Err(())) => (len, len),
            None => (at, len),
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn data_extent(_: &File, at: u64, len: u64) -> (u64, u64) {
        (at, len)
    }
}

/// Loads the layout and images, builds the tree, prints `{"root": [...]}`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.layout)
        .with_context(|| format!("reading layout {}", args.layout.display()))?;
    let layout = MemoryLayout::from_json(&text)
        .with_context(|| format!("layout {}", args.layout.display()))?;
    let mut image = MemoryImage::zeroed(&layout)?;
    for (slot, file) in &args.images {
        let capacity = layout.space(*slot, || "--image SLOT".into())?.raw_bytes();
        let len = std::fs::metadata(file)
            .with_context(|| format!("reading image {}", file.display()))?
            .len();
        if len > capacity {
            bail!(
                "--image {slot}={}: {len} bytes is longer than slot {slot} ({capacity} bytes)",
                file.display(),
            );
        }
        load_image(&mut image, *slot, file)
            .with_context(|| format!("--image {slot}={}", file.display()))?;
    }
    tracing::info!(
        "image: {} present pages, {} raw bytes (all-zero pages skipped; {} bytes declared)",
        image.total_pages(),
        image.total_bytes(),
        layout.raw_bytes()
    );
    let k = resolve_omitted_levels(
        args.omitted_levels,
        &layout,
        &image,
        args.backend,
        args.memory_budget,
    )?;
    let tree = tree::build(args.backend, layout, Arc::new(image), k)?;
    println!("{}", serde_json::json!({ "root": tree.root() }));
    Ok(ExitCode::SUCCESS)
}
