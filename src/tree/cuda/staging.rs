//! Pinned host staging for `CudaDevice`'s uploads (feature `cuda`): a pool of two page-locked
//! buffers and a copy stream, kept per device and reused by every upload, so no call
//! allocates pinned memory.
//!
//! An upload runs double-buffered: the host copies piece `i` into one buffer while the DMA
//! engine copies piece `i − 1` out of the other on the copy stream, and the compute stream
//! waits, per caller chunk, only for that chunk's pieces, so the kernels queued on chunk `j`
//! run while chunk `j + 1` is in flight. Pageable uploads, by contrast, are staged by the
//! driver one piece at a time and serialise with the kernels of the same stream.

use std::sync::Arc;

use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaStream, DriverError, PinnedHostSlice,
};
use rayon::prelude::*;

/// Bytes of one pinned staging buffer (8 MiB: two of them per device).
pub const STAGING_BUFFER_BYTES: usize = 8 << 20;

/// Host bytes one rayon task copies into a staging buffer: small enough that a buffer's copy
/// spreads over the host's cores.
const HOST_COPY_PIECE: usize = 1 << 20;

/// One staging buffer and the event recorded after the last DMA that reads it.
struct Staged {
    host: PinnedHostSlice<u8>,
    copied: CudaEvent,
}

/// The pool (module docs).
pub struct StagingPool {
    copy: Arc<CudaStream>,
    buffers: [Staged; 2],
    /// The buffer the next piece goes to.
    next: usize,
}

impl StagingPool {
    /// Allocates the two pinned buffers (write-combined: the host only writes them) and the
    /// copy stream on `ctx`.
    ///
    /// # Errors
    /// The driver's error when pinned memory, the stream or an event cannot be created.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, DriverError> {
        let copy = ctx.new_stream()?;
        let staged = || -> Result<Staged, DriverError> {
            Ok(Staged {
                // SAFETY: the buffer is only written by the host before it is read by a copy.
                host: unsafe { ctx.alloc_pinned::<u8>(STAGING_BUFFER_BYTES)? },
                // Blocking sync: a host wait for a buffer sleeps instead of spinning a core.
                copied: ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))?,
            })
        };
        Ok(StagingPool {
            copy,
            buffers: [staged()?, staged()?],
            next: 0,
        })
    }

    /// Uploads `src` to device address `dst` through the buffers; after the pieces of each
    /// `chunk`-byte chunk of `src` are queued, makes `compute` wait for them and calls
    /// `then(offset, len)`. `src` is not read after this returns.
    ///
    /// # Errors
    /// The first driver error, or `then`'s; nothing more is queued after it.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` is device memory of `compute`'s context, allocated or last
    /// written in stream order on `compute`.
    pub unsafe fn upload<E>(
        &mut self,
        compute: &CudaStream,
        dst: u64,
        src: &[u8],
        chunk: usize,
        then: &mut dyn FnMut(u64, u64) -> Result<(), E>,
        driver: impl Fn(&'static str, DriverError) -> E,
    ) -> Result<(), E> {
        // The destination was allocated (stream-ordered) or written on `compute`: the copy
        // stream must not touch it before that.
        self.copy
            .join(compute)
            .map_err(|e| driver("ordering the copy stream", e))?;
        for (i, part) in src.chunks(chunk.max(1)).enumerate() {
            let offset = i * chunk.max(1);
            for (j, piece) in part.chunks(STAGING_BUFFER_BYTES).enumerate() {
                let at = offset + j * STAGING_BUFFER_BYTES;
                let b = &mut self.buffers[self.next];
                self.next ^= 1;
                // The DMA that last read this buffer (two pieces ago) must be over before the
                // host overwrites it.
                b.copied
                    .synchronize()
                    .map_err(|e| driver("waiting for a staging buffer", e))?;
                let host = b
                    .host
                    .as_mut_slice()
                    .map_err(|e| driver("mapping a staging buffer", e))?;
                host[..piece.len()]
                    .par_chunks_mut(HOST_COPY_PIECE)
                    .zip(piece.par_chunks(HOST_COPY_PIECE))
                    .for_each(|(to, from)| to.copy_from_slice(from));
                // SAFETY: the destination range lies in `dst .. dst + src.len()` (caller);
                // the pinned source stays untouched until `copied` has passed, which the
                // next use of this buffer (or the pool's drop) waits for.
                unsafe {
                    result::memcpy_htod_async(
                        dst + at as u64,
                        &host[..piece.len()],
                        self.copy.cu_stream(),
                    )
                }
                .map_err(|e| driver("host-to-device copy", e))?;
                b.copied
                    .record(&self.copy)
                    .map_err(|e| driver("recording a staging copy", e))?;
            }
            // The kernels `then` queues on `compute` read this chunk: wait for its last
            // piece (the copy stream is in order, so for all of them).
            let last = &self.buffers[self.next ^ 1].copied;
            compute
                .wait(last)
                .map_err(|e| driver("ordering the compute stream", e))?;
            then(offset as u64, part.len() as u64)?;
        }
        Ok(())
    }
}

impl Drop for StagingPool {
    fn drop(&mut self) {
        // The pinned buffers are freed next: no DMA may still read them.
        if let Err(e) = self.copy.synchronize() {
            tracing::warn!("CUDA: waiting for staged copies before freeing them failed: {e:?}");
        }
    }
}
