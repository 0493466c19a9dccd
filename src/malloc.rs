//! glibc malloc tuning for a long-running tree service.
//!
//! Batches allocate and free buffers of tens of MiB each time (a witness's rows and the
//! update's scratch for it, `WriteMemory` staging). glibc serves allocations above its mmap
//! threshold (dynamic, at most 32 MiB) with fresh mappings and unmaps them on free, so every
//! batch page-faults its buffers in again: about 3.5 µs per 4 KiB page on the 2-core
//! reference machine, 35 ms for the rows of one 64 Ki-block witness, a third of the update
//! itself. Raising the mmap threshold to 256 MiB and the trim threshold to 1 GiB keeps freed
//! memory mapped for the next batch; the process's peak resident memory is unchanged, but
//! up to 1 GiB freed at the top of the heap stays resident.

/// Applies the tuning (module docs) to this process, once, before threads start: the
/// `memcommit` binary and the criterion benches call it. Skipped when the operator set
/// glibc's own `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_`, and a no-op on other C
/// libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if !set_by_operator {
            // SAFETY: mallopt only changes two of glibc's allocation parameters; it is
            // called before the process starts any thread, with valid parameter codes.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        }
    }
}
