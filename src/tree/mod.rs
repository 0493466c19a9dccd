//! The `MemoryTree` trait and what every backend shares: touched blocks and batch
//! validation, openings and [`verify_opening`], zero hashes, and the memory-size formulas.
//!
//! Tree shape (docs/design.md Part 1): each slot has a subtree of height `address_height` whose
//! leftmost `num_cells / 8` leaves are the slot's blocks (the rest zero); the root is a
//! binary tree of height `address_space_height` over the slot roots. Leaf index of block
//! `b` in slot `s` is therefore `(s << address_height) | b` in one tree of height
//! `address_space_height + address_height`.

pub mod cpu;
pub mod cuda;
pub mod fault;
pub mod reference;
pub mod shape;
pub mod witness;

use std::sync::Arc;

use rayon::slice::ParallelSliceMut;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{compress, leaf_hash, zero_hashes, F};
use crate::image::MemoryImage;
use crate::layout::{check_cell, MemoryLayout, BLOCK_CELLS};

pub use crate::hash::Digest;
pub use shape::{node_bytes, node_bytes_per_page, stored_base_level, SlotShape};
pub use witness::WitnessRow;

/// The largest `omitted_levels` accepted: recomputing one level-k node costs 2^k leaf
/// hashes, so larger values only waste time.
pub const MAX_OMITTED_LEVELS: u32 = 20;
/// `omitted_levels` when none is given (OpenVM's GPU tree default).
pub const DEFAULT_OMITTED_LEVELS: u32 = 3;

/// One touched block of an update batch: the block's new 8 cells as canonical integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TouchedBlock {
    /// Address-space slot (index into `address_spaces`).
    pub slot: u32,
    /// Block index within the slot: cells `8·block .. 8·block + 7`.
    pub block: u64,
    /// The block's new cell values.
    pub cells: [u32; BLOCK_CELLS],
}

/// Checks a whole batch before anything changes (docs/design.md "Formats", batches are atomic):
/// the slot exists, the block is in range, each cell fits its type, and no `(slot, block)`
/// repeats. Duplicates are found by sorting packed keys rather than hashing: at 1 Mi blocks a
/// hash set spends most of its time in cache misses, and sorting has no adversarial worst case.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the first bad entry, e.g. `blocks[3].block`; for a
/// repeat, the entry where the `(slot, block)` appears the second time.
pub fn validate_batch(layout: &MemoryLayout, blocks: &[TouchedBlock]) -> Result<()> {
    validated_keys(layout, blocks).map(drop)
}

/// [`validate_batch`], returning the batch's [`block_key`]s sorted, which the checks for
/// repeats already produce: backends group and dedup touched blocks from them instead of
/// sorting the batch a second time.
///
/// # Errors
/// As [`validate_batch`].
pub fn validated_keys(layout: &MemoryLayout, blocks: &[TouchedBlock]) -> Result<Vec<u64>> {
    for (i, b) in blocks.iter().enumerate() {
        check_position(layout, b.slot, b.block, || format!("blocks[{i}]"))?;
        let cell = layout.address_spaces()[b.slot as usize].cell;
        for (j, &v) in b.cells.iter().enumerate() {
            check_cell(cell, v, || format!("blocks[{i}].cells[{j}]"))?;
        }
    }
    let mut keys: Vec<u64> = blocks.iter().map(block_key).collect();
    keys.par_sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        let (first, second) = second_occurrence(blocks, w[0]);
        let b = &blocks[second];
        return Err(Error::invalid(
            format!("blocks[{second}]"),
            format!(
                "(slot {}, block {}) appears more than once in the batch (first at blocks[{first}])",
                b.slot, b.block
            ),
        ));
    }
    Ok(keys)
}

/// `(slot << 32) | block`: blocks are below 2^32 ([`crate::layout::MAX_ADDRESS_HEIGHT`]), so
/// keys order like `(slot, block)` pairs and are distinct exactly when the pairs are.
pub fn block_key(b: &TouchedBlock) -> u64 {
    (u64::from(b.slot) << 32) | b.block
}

/// Batch indices of the first two entries with `key`.
fn second_occurrence(blocks: &[TouchedBlock], key: u64) -> (usize, usize) {
    let mut hits = blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| block_key(b) == key)
        .map(|(i, _)| i);
    let first = hits.next().unwrap_or(0);
    (first, hits.next().unwrap_or(first))
}

/// Checks that `(slot, block)` names a real block of `layout`; `what` names the entry
/// (e.g. `blocks[3]`) in the error.
///
/// # Errors
/// [`Error::InvalidArgument`] for `<what>.slot` or `<what>.block`.
pub fn check_position(
    layout: &MemoryLayout,
    slot: u32,
    block: u64,
    what: impl Fn() -> String,
) -> Result<()> {
    let space = layout.space(slot, || format!("{}.slot", what()))?;
    if block >= space.num_blocks() {
        return Err(Error::invalid(
            format!("{}.block", what()),
            format!(
                "block {block} is out of range (slot {slot} has {} blocks)",
                space.num_blocks()
            ),
        ));
    }
    Ok(())
}

/// A Merkle opening of one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opening {
    /// Address-space slot.
    pub slot: u32,
    /// Block index in the slot.
    pub block: u64,
    /// The block's 8 cells, canonical.
    pub cells: [u32; BLOCK_CELLS],
    /// `address_height` digests inside the slot's subtree (leaf level first), then
    /// `address_space_height` digests in the top tree.
    pub siblings: Vec<Digest>,
}

/// Recomputes the root from `opening` and compares it with `root`.
///
/// # Errors
/// [`Error::InvalidArgument`] if the opening's shape does not fit `layout` (position, cell
/// values, sibling count) or the recomputed root differs from `root`.
pub fn verify_opening(root: &Digest, layout: &MemoryLayout, opening: &Opening) -> Result<()> {
    check_position(layout, opening.slot, opening.block, || "opening".into())?;
    let cell = layout.address_spaces()[opening.slot as usize].cell;
    for (j, &v) in opening.cells.iter().enumerate() {
        check_cell(cell, v, || format!("opening.cells[{j}]"))?;
    }
    if opening.siblings.len() != layout.opening_len() {
        return Err(Error::invalid(
            "opening.siblings",
            format!(
                "{} digests, expected address_height + address_space_height = {}",
                opening.siblings.len(),
                layout.opening_len()
            ),
        ));
    }
    let index = ((opening.slot as u64) << layout.address_height()) | opening.block;
    let computed = fold_path(
        leaf_hash(&opening.cells.map(F::new)),
        index,
        &opening.siblings,
    );
    if computed != *root {
        return Err(Error::invalid(
            "opening",
            format!(
                "recomputed root {computed:?} differs from {root:?} (slot {}, block {})",
                opening.slot, opening.block
            ),
        ));
    }
    Ok(())
}

/// Folds `node` at leaf `index` up through `siblings` (lowest first): at level `i` the node
/// is the left child when bit `i` of `index` is 0.
pub fn fold_path(mut node: Digest, index: u64, siblings: &[Digest]) -> Digest {
    for (i, s) in siblings.iter().enumerate() {
        node = if (index >> i) & 1 == 0 {
            compress(&node, s)
        } else {
            compress(s, &node)
        };
    }
    node
}

/// Bytes of memory a tree holds, split into Merkle nodes and raw memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Host bytes of stored digests.
    pub host_node_bytes: u64,
    /// Host bytes of raw memory (the `Arc`-held image).
    pub host_raw_bytes: u64,
    /// Device bytes of stored digests (0 on CPU backends).
    pub device_node_bytes: u64,
    /// Device bytes of raw memory (0 on CPU backends).
    pub device_raw_bytes: u64,
}

impl MemoryUsage {
    /// All four parts added up, in bytes.
    pub fn total(&self) -> u64 {
        self.host_node_bytes + self.host_raw_bytes + self.device_node_bytes + self.device_raw_bytes
    }
}

/// Checks `omitted_levels` against [`MAX_OMITTED_LEVELS`].
///
/// # Errors
/// [`Error::InvalidArgument`] naming `omitted_levels`.
pub fn check_omitted_levels(k: u32) -> Result<()> {
    if k > MAX_OMITTED_LEVELS {
        return Err(Error::invalid(
            "omitted_levels",
            format!("{k} exceeds the maximum {MAX_OMITTED_LEVELS}"),
        ));
    }
    Ok(())
}

/// Share of free memory an automatic budget takes: the rest is left to the process's
/// other allocations and to other processes.
pub const DEFAULT_BUDGET_PERCENT: u64 = 90;

/// An `omitted_levels` request: a fixed `k`, or `auto` for the smallest `k` whose tree fits
/// a memory budget ([`choose_omitted_levels`]). Parses from `auto` or an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OmittedLevels {
    /// The smallest `k` that fits the budget.
    Auto,
    /// This `k` (at most [`MAX_OMITTED_LEVELS`]).
    Fixed(u32),
}

impl std::str::FromStr for OmittedLevels {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(OmittedLevels::Auto);
        }
        let k = s.parse().map_err(|_| {
            Error::invalid(
                "omitted_levels",
                format!("{s:?} is not \"auto\" or an integer 0..={MAX_OMITTED_LEVELS}"),
            )
        })?;
        check_omitted_levels(k)?;
        Ok(OmittedLevels::Fixed(k))
    }
}

/// As JSON: `k` is a number, `auto` the string `"auto"` (trace headers).
impl Serialize for OmittedLevels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            OmittedLevels::Auto => s.serialize_str("auto"),
            OmittedLevels::Fixed(k) => s.serialize_u32(*k),
        }
    }
}

/// Accepts a non-negative integer or `"auto"`; the range of an integer is checked by
/// [`check_omitted_levels`] where the value is used.
impl<'de> Deserialize<'de> for OmittedLevels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            K(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::K(k) => Ok(OmittedLevels::Fixed(k)),
            Raw::S(s) if s == "auto" => Ok(OmittedLevels::Auto),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "{s:?} is not \"auto\" or a non-negative integer"
            ))),
        }
    }
}

impl std::fmt::Display for OmittedLevels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OmittedLevels::Auto => f.write_str("auto"),
            OmittedLevels::Fixed(k) => write!(f, "{k}"),
        }
    }
}

/// The smallest `k` in `0..=MAX_OMITTED_LEVELS` whose tree over `image` fits in
/// `budget_bytes`: its node bytes ([`node_bytes`], for the pages present) plus its raw bytes
/// (the present pages). Smaller `k` is faster (fewer nodes recomputed per update), so the
/// fastest tree that fits wins. Pages written later are not foreseen.
///
/// # Errors
/// [`Error::ResourceExhausted`] naming the budget and the smallest need (at
/// the `k` that stores the fewest nodes) when nothing fits.
pub fn choose_omitted_levels(
    layout: &MemoryLayout,
    image: &MemoryImage,
    budget_bytes: u64,
) -> Result<u32> {
    let raw = image.total_bytes();
    let needs: Vec<(u32, u64)> = (0..=MAX_OMITTED_LEVELS)
        .map(|k| (k, node_bytes(layout, image, k)))
        .collect();
    if let Some(&(k, _)) = needs
        .iter()
        .find(|&&(_, nodes)| nodes.saturating_add(raw) <= budget_bytes)
    {
        return Ok(k);
    }
    // A slot no taller than k is stored in full, so the need is not monotone in k: report
    // the smallest over all k.
    let (k, nodes) = needs
        .iter()
        .copied()
        .min_by_key(|&(_, n)| n)
        .unwrap_or((0, 0));
    Err(Error::ResourceExhausted(format!(
        "omitted_levels auto: nothing fits the memory budget of {budget_bytes} bytes; the \
         smallest need is {} bytes ({nodes} of tree nodes at k = {k} + {raw} of raw memory \
         in {} present pages)",
        nodes.saturating_add(raw),
        image.total_pages()
    )))
}

/// The default memory budget of `omitted_levels = auto` on `backend`, in bytes:
/// [`DEFAULT_BUDGET_PERCENT`] of the device's free memory (`cuMemGetInfo`) for `cuda`, else
/// of the host's available memory (`MemAvailable` of `/proc/meminfo`). `auto` is resolved
/// first.
///
/// # Errors
/// [`Error::Unavailable`] when the free memory cannot be read (no device, or no
/// `/proc/meminfo`): give the budget explicitly.
pub fn default_memory_budget(backend: Backend) -> Result<u64> {
    let free = match backend.resolve()? {
        Backend::Cuda => cuda::probe_device()
            .map(|d| d.free_bytes)
            .map_err(|why| Error::Unavailable(format!("free device memory: {why}")))?,
        _ => crate::bench::system::host_available_bytes().ok_or_else(|| {
            Error::Unavailable("available host memory: cannot read /proc/meminfo".into())
        })?,
    };
    Ok(free / 100 * DEFAULT_BUDGET_PERCENT)
}

/// Root of an empty slot (0 cells, or past the end of the list): `zero[address_height]`.
pub fn empty_slot_root(layout: &MemoryLayout) -> Digest {
    zero_hashes()[layout.address_height() as usize]
}

/// The backends a tree can be built on.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// CUDA when a device is usable, else CPU (the default).
    #[default]
    #[value(help = "CUDA when a device is usable, else CPU")]
    Auto,
    /// The production CPU backend ([`cpu::CpuTree`]).
    #[value(help = "The production CPU tree (rayon, AVX2 packed Poseidon2)")]
    Cpu,
    /// The CUDA device backend (feature `cuda`).
    #[value(help = "The GPU tree (needs a build with --features cuda and a device)")]
    Cuda,
    /// The sparse reference ([`reference::ReferenceTree`]): slow, for checking.
    #[value(help = "The small sparse reference tree: slow, for checking")]
    Reference,
}

impl Backend {
    /// The name used on the CLI and in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Reference => "reference",
        }
    }

    /// Parses a backend name; the empty string means `auto`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `backend`.
    pub fn parse(name: &str) -> Result<Backend> {
        match name {
            "" | "auto" => Ok(Backend::Auto),
            "cpu" => Ok(Backend::Cpu),
            "cuda" => Ok(Backend::Cuda),
            "reference" => Ok(Backend::Reference),
            other => Err(Error::invalid(
                "backend",
                format!("{other:?} is not one of auto, cpu, cuda, reference"),
            )),
        }
    }

    /// The concrete backend `self` stands for on this machine: `auto` becomes `cuda` when
    /// [`cuda::probe_device`] finds a usable GPU (its kernel check passed and the context
    /// has not faulted), else `cpu` (the reason is logged: a warning when the device
    /// faulted). The probe's answer is cached, so this is cheap to call per tree.
    ///
    /// # Errors
    /// [`Error::Unavailable`] for `cuda` when no usable device backend is compiled in or no
    /// device is usable, with the reason.
    pub fn resolve(self) -> Result<Backend> {
        match self {
            Backend::Auto => match cuda::probe_device() {
                Ok(info) => {
                    tracing::debug!("backend auto: using cuda ({})", info.name);
                    Ok(Backend::Cuda)
                }
                Err(why) => {
                    if cuda::context_health().fault().is_some() {
                        tracing::warn!("backend auto: using cpu ({why})");
                    } else {
                        tracing::info!("backend auto: using cpu ({why})");
                    }
                    Ok(Backend::Cpu)
                }
            },
            Backend::Cuda => match cuda::probe_device() {
                Ok(_) => Ok(Backend::Cuda),
                Err(why) => Err(Error::Unavailable(format!("backend cuda: {why}"))),
            },
            b => Ok(b),
        }
    }
}

/// A Merkle tree over one memory image. Implemented by every backend; all must give the
/// same roots and openings as [`reference::ReferenceTree`].
pub trait MemoryTree: Send + Sync {
    /// The concrete backend (never `Auto`).
    fn backend(&self) -> Backend;
    /// The layout the tree was built for.
    fn layout(&self) -> &MemoryLayout;
    /// Levels left out at the bottom of each slot subtree (`k`).
    fn omitted_levels(&self) -> u32;
    /// The current root.
    fn root(&self) -> Digest;
    /// The raw memory the tree commits to.
    fn image(&self) -> &Arc<MemoryImage>;
    /// Applies one batch atomically and returns the new root. An empty batch returns the
    /// current root.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] from [`validate_batch`]; the tree is then unchanged.
    fn update(&mut self, blocks: &[TouchedBlock]) -> Result<Digest>;
    /// Applies one batch as [`MemoryTree::update`] does and also returns its witness: one
    /// [`WitnessRow`] per parent of a touched node, heights 1..=H, ordered by height then
    /// index (docs/design.md, "Update witness"; OpenVM's `MemoryMerkleChip` rows). Every
    /// backend gives the rows of [`reference::ReferenceTree::update_with_witness`]. The
    /// default takes openings before and after the batch ([`witness::from_openings`]).
    ///
    /// # Errors
    /// As [`MemoryTree::update`]; the tree is then unchanged.
    fn update_with_witness(
        &mut self,
        blocks: &[TouchedBlock],
    ) -> Result<(Digest, Vec<WitnessRow>)> {
        witness::from_openings(self, blocks)
    }
    /// Openings of `(slot, block)` positions against the current root, in request order.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `positions[i]` for a position outside the layout.
    fn openings(&self, positions: &[(u32, u64)]) -> Result<Vec<Opening>>;
    /// Bytes held, from the real allocations.
    fn memory_usage(&self) -> MemoryUsage;
}

/// Builds a tree for `layout` over `image` on `backend`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a bad `omitted_levels` or an image that does not match
/// the layout; [`Error::Unavailable`] when the backend cannot run here;
/// [`Error::ResourceExhausted`] when memory runs out.
pub fn build(
    backend: Backend,
    layout: MemoryLayout,
    image: Arc<MemoryImage>,
    omitted_levels: u32,
) -> Result<Box<dyn MemoryTree>> {
    build_labelled(backend, layout, image, omitted_levels, None)
}

/// [`build`], with the device tree's fault reports naming it `label` (the server passes
/// `tree <id>`): a device fault is attributed to the tree whose work caused it, and every
/// other device tree says which tree that was. `None` gives the device a generated name.
///
/// # Errors
/// As [`build`].
pub fn build_labelled(
    backend: Backend,
    layout: MemoryLayout,
    image: Arc<MemoryImage>,
    omitted_levels: u32,
    label: Option<&str>,
) -> Result<Box<dyn MemoryTree>> {
    check_omitted_levels(omitted_levels)?;
    check_image(&layout, &image)?;
    #[cfg(not(feature = "cuda"))]
    let _ = label;
    Ok(match backend.resolve()? {
        Backend::Cpu => Box::new(cpu::CpuTree::build(layout, image, omitted_levels)?),
        Backend::Reference => Box::new(reference::ReferenceTree::build(
            layout,
            image,
            omitted_levels,
        )),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Box::new(cuda::CudaTree::build(
            match label {
                Some(label) => cuda::CudaDevice::labelled(label)?,
                None => cuda::CudaDevice::new()?,
            },
            layout,
            image,
            omitted_levels,
        )?),
        b => return Err(Error::Unavailable(format!("backend {}", b.name()))),
    })
}

/// Checks that `image` has `layout`'s slots, cell types and sizes.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `image`.
pub(crate) fn check_image(layout: &MemoryLayout, image: &MemoryImage) -> Result<()> {
    let ok = image.cell_types().len() == layout.address_spaces().len()
        && layout.address_spaces().iter().enumerate().all(|(i, s)| {
            image.cell_types()[i] == s.cell && image.num_blocks(i as u32) == s.num_blocks()
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("image", "does not match the layout"))
    }
}

/// Positions validated against `layout`, shared by every backend's `openings`.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `positions[i]`.
pub fn check_positions(layout: &MemoryLayout, positions: &[(u32, u64)]) -> Result<()> {
    for (i, &(slot, block)) in positions.iter().enumerate() {
        check_position(layout, slot, block, || format!("positions[{i}]"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{AddressSpace, CellType, LayoutSpec};

    /// One u8 slot of 2^20 blocks: raw 8 MiB, nodes (2^(21−k) − 1)·32 bytes.
    fn layout() -> MemoryLayout {
        MemoryLayout::new(LayoutSpec {
            address_spaces: vec![AddressSpace {
                cell: CellType::U8,
                num_cells: 8 << 20,
            }],
            address_space_height: None,
            address_height: None,
        })
        .unwrap()
    }

    /// The slot fully written: every page present.
    fn full(l: &MemoryLayout) -> MemoryImage {
        let mut image = MemoryImage::zeroed(l).unwrap();
        image.write(0, 0, &vec![1; 8 << 20]).unwrap();
        image
    }

    fn need(k: u32) -> u64 {
        ((1u64 << (21 - k)) - 1) * 32 + (8 << 20) + 32
    }

    #[test]
    fn auto_picks_the_smallest_k_that_fits() {
        let l = layout();
        let img = full(&l);
        // node_bytes adds the 1-digest top tree.
        assert_eq!(node_bytes(&l, &img, 0) + img.total_bytes(), need(0));
        let choose = |budget| choose_omitted_levels(&l, &img, budget).unwrap();
        assert_eq!(choose(u64::MAX), 0);
        assert_eq!(choose(need(0)), 0);
        assert_eq!(choose(need(0) - 1), 1);
        assert_eq!(choose(need(3)), 3);
        assert_eq!(choose(need(2) - 1), 3);
        // k = 19 stores 3 nodes of the 2^20-block slot; k = 20 would store it in full.
        assert_eq!(choose(need(19)), 19);
    }

    #[test]
    fn auto_decides_from_the_pages_present() {
        let l = layout();
        let mut img = MemoryImage::zeroed(&l).unwrap();
        // Nothing present: the dense upper levels (2^11 − 1 digests), the top root, no raw.
        let empty = ((1 << 11) - 1 + 1) * 32;
        assert_eq!(choose_omitted_levels(&l, &img, empty).unwrap(), 0);
        // One 4 KiB page: its 2^(10−k) − 1 digests join, and its raw bytes.
        img.write(0, 4096, &[1]).unwrap();
        let one = |k: u32| empty + ((1 << (10 - k)) - 1) * 32 + 4096;
        assert_eq!(choose_omitted_levels(&l, &img, one(0)).unwrap(), 0);
        assert_eq!(choose_omitted_levels(&l, &img, one(3)).unwrap(), 3);
    }

    #[test]
    fn auto_with_nothing_fitting_is_resource_exhausted() {
        let l = layout();
        let img = full(&l);
        let smallest = need(19);
        match choose_omitted_levels(&l, &img, smallest - 1) {
            Err(Error::ResourceExhausted(m)) => {
                assert!(
                    m.contains(&format!("budget of {} bytes", smallest - 1)),
                    "{m}"
                );
                assert!(
                    m.contains(&format!("smallest need is {smallest} bytes")),
                    "{m}"
                );
                assert!(m.contains("at k = 19"), "{m}");
                assert!(m.contains("in 2048 present pages"), "{m}");
            }
            other => panic!("expected ResourceExhausted, got {other:?}"),
        }
        assert!(matches!(
            choose_omitted_levels(&l, &img, 0),
            Err(Error::ResourceExhausted(_))
        ));
    }

    #[test]
    fn omitted_levels_parses_auto_and_integers() {
        assert_eq!(
            "auto".parse::<OmittedLevels>().unwrap(),
            OmittedLevels::Auto
        );
        assert_eq!(
            "5".parse::<OmittedLevels>().unwrap(),
            OmittedLevels::Fixed(5)
        );
        assert_eq!(OmittedLevels::Fixed(5).to_string(), "5");
        assert_eq!(OmittedLevels::Auto.to_string(), "auto");
        for bad in ["21", "-1", "Auto", ""] {
            assert!(matches!(
                bad.parse::<OmittedLevels>(),
                Err(Error::InvalidArgument { .. })
            ));
        }
    }

    #[test]
    fn default_budget_is_a_share_of_host_memory_on_cpu() {
        if let Some(avail) = crate::bench::system::host_available_bytes() {
            let budget = default_memory_budget(Backend::Cpu).unwrap();
            assert!(budget > 0 && budget <= avail, "{budget} of {avail}");
        }
    }
}
