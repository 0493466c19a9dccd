//! Test-only fault injection: makes a backend fail part-way through
//! [`MemoryTree::update`](super::MemoryTree::update), after it has started changing state,
//! so tests can check that a failed batch leaves the tree, its root and its image unchanged.
//!
//! Why a cargo feature (`fault-injection`) rather than an inert hook: without the feature
//! [`point`] is an empty inline function and nothing here exists, so a production binary
//! (`cargo build --release`) has no way, from the network or otherwise, to arm a fault.
//! The tests get it through a self dev-dependency (`memcommit = { path = ".", features =
//! ["fault-injection"] }` in `[dev-dependencies]`), which with resolver 2 turns the feature
//! on only for test, bench and example builds.
//!
//! The armed point is process-global (the server runs updates on its own blocking threads,
//! where a thread-local would not reach), so tests that arm it must not run beside other
//! updates in the same process: `tests/faults.rs` keeps them in one test binary and runs
//! them one at a time.

use crate::error::Result;

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Points still to pass before the one that fails; `u64::MAX` when disarmed.
    static REMAINING: AtomicU64 = AtomicU64::new(u64::MAX);
    /// Faults injected since the process started.
    static FIRED: AtomicU64 = AtomicU64::new(0);

    /// Makes the `n`-th fault point reached from now on (0 = the next one) fail, once.
    pub fn fail_at(n: u64) {
        REMAINING.store(n, Ordering::SeqCst);
    }

    /// Disarms a pending fault.
    pub fn disarm() {
        REMAINING.store(u64::MAX, Ordering::SeqCst);
    }

    /// Faults injected so far in this process.
    pub fn fired() -> u64 {
        FIRED.load(Ordering::SeqCst)
    }

    /// True when this point must fail (and disarms).
    pub(super) fn trip() -> bool {
        let mut cur = REMAINING.load(Ordering::SeqCst);
        loop {
            if cur == u64::MAX {
                return false;
            }
            let next = if cur == 0 { u64::MAX } else { cur - 1 };
            match REMAINING.compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) if cur == 0 => {
                    FIRED.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                Ok(_) => return false,
                Err(seen) => cur = seen,
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use armed::{disarm, fail_at, fired};

/// A place in an update where a fault may be injected; `what` names it in the error.
///
/// # Errors
/// [`crate::Error::Unavailable`] (`injected fault at <what>`) when the armed point is reached;
/// never without the `fault-injection` feature.
#[inline(always)]
#[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
pub(crate) fn point(what: impl FnOnce() -> String) -> Result<()> {
    #[cfg(feature = "fault-injection")]
    if armed::trip() {
        return Err(crate::error::Error::Unavailable(format!(
            "injected fault at {}",
            what()
        )));
    }
    Ok(())
}
