//! Device health: one [`DeviceHealth`] per device context, shared by every device (stream,
//! tree) on it, so a sticky fault is recorded once, attributed, and answered by all.
//!
//! A *sticky* CUDA error (an illegal or misaligned address, an illegal instruction, a
//! launch failure, a hardware stack error, an uncorrectable ECC error, …; see
//! [`sticky_fault`]) leaves the whole context unusable: every later call on any stream of it
//! returns the same error, so the first tree to call after the fault would otherwise report
//! another tree's failure as its own. Instead:
//!
//! - each device registers as a [`HealthMember`] with a label (the server passes
//!   `tree <id>`) and records the work it has queued since its last successful
//!   synchronisation ([`HealthMember::begin`], [`HealthMember::settled`]);
//! - the first member that sees a sticky error records it as the context's [`Fault`],
//!   together with every member that had work in flight at that moment (the *suspects*).
//!   The faulting work is always among them: it was queued (marked before the driver call)
//!   and never synchronised successfully. With one suspect the attribution is exact; with
//!   several, each is named. A member whose own driver call was refused with the sticky
//!   error does not count that call: it never ran;
//! - from then on every member's calls fail before reaching the driver with
//!   [`Error::Unavailable`] naming the fault and its suspects, and saying whether this
//!   member is the one that caused it, one of several suspects, or not involved.
//!
//! The fault is permanent for the context: the server does not reset the device (see
//! docs/design.md, "CUDA", for why), so a process with a faulted context serves CPU trees
//! only until it is restarted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;

/// The name of a sticky CUDA error code, `None` for any other code. Driver (`CUresult`) and
/// runtime (`cudaError_t`) codes agree on these values, so one table serves both.
///
/// Sticky errors corrupt the context: the driver returns them from every later call in the
/// process until the context is reset.
pub fn sticky_fault(code: u32) -> Option<&'static str> {
    Some(match code {
        214 => "CUDA_ERROR_ECC_UNCORRECTABLE",
        220 => "CUDA_ERROR_NVLINK_UNCORRECTABLE",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        702 => "CUDA_ERROR_LAUNCH_TIMEOUT",
        709 => "CUDA_ERROR_CONTEXT_IS_DESTROYED",
        710 => "CUDA_ERROR_ASSERT",
        714 => "CUDA_ERROR_HARDWARE_STACK_ERROR",
        715 => "CUDA_ERROR_ILLEGAL_INSTRUCTION",
        716 => "CUDA_ERROR_MISALIGNED_ADDRESS",
        717 => "CUDA_ERROR_INVALID_ADDRESS_SPACE",
        718 => "CUDA_ERROR_INVALID_PC",
        719 => "CUDA_ERROR_LAUNCH_FAILED",
        911 => "CUDA_ERROR_EXTERNAL_DEVICE",
        _ => return None,
    })
}

/// At most this many distinct operation names are kept per member's work in flight.
const MAX_WORK_NAMES: usize = 16;

/// The health of one device context, shared by its devices ([`HealthMember`]s).
#[derive(Debug, Default)]
pub struct DeviceHealth {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_member: u64,
    members: BTreeMap<u64, Member>,
    fault: Option<Fault>,
}

#[derive(Debug)]
struct Member {
    label: String,
    /// The operations queued since the last successful sync: distinct names in first-queued
    /// order, each with how many are in flight.
    work: Vec<(&'static str, u64)>,
}

impl Member {
    fn names(&self) -> Vec<&'static str> {
        self.work.iter().map(|&(n, _)| n).collect()
    }
}

/// A sticky fault as first observed on a context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The error, e.g. `CUDA_ERROR_ILLEGAL_ADDRESS (700): an illegal memory access …`.
    pub error: String,
    /// The member that observed it first (its label).
    pub observed_by: String,
    /// Every member with work in flight when it was observed: the faulting work is among
    /// them. Empty when no tracked work was in flight (the cause is unknown).
    pub suspects: Vec<Suspect>,
}

/// A member that had work in flight when a fault was observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspect {
    /// The member's label, e.g. `tree 5e0c…`.
    pub label: String,
    /// The operations it had queued since its last successful sync, e.g.
    /// `["copy_to_device", "scatter", "hash_tasks"]`.
    pub work: Vec<&'static str>,
    member: u64,
}

impl Suspect {
    fn describe(&self) -> String {
        format!("{} of {}", self.work.join(", "), self.label)
    }
}

impl Fault {
    /// `<error> during <work> of <label>`, naming every suspect when there are several.
    pub fn describe(&self) -> String {
        match self.suspects.as_slice() {
            [] => format!(
                "{} (observed by {}, with no tracked work in flight: cause unknown)",
                self.error, self.observed_by
            ),
            [one] => format!("{} during {}", self.error, one.describe()),
            many => format!(
                "{} while {} devices had work in flight, any of which may have caused it: {}",
                self.error,
                many.len(),
                many.iter()
                    .map(Suspect::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }

    /// The error member `id` (labelled `label`) answers with.
    fn error_for(&self, id: u64, label: &str) -> Error {
        let guilty = self.suspects.iter().any(|s| s.member == id);
        let what = match (guilty, self.suspects.len()) {
            (true, 1) => format!(
                "CUDA device fault caused by work of {label}: {}",
                self.describe()
            ),
            (true, _) => format!(
                "CUDA device fault, {label} among the suspects: {}",
                self.describe()
            ),
            (false, _) => format!(
                "CUDA device unusable since {} (not caused by {label})",
                self.describe()
            ),
        };
        Error::Unavailable(format!(
            "{what}; the context stays unusable until the process restarts"
        ))
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent across a panic elsewhere (every update is one step).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DeviceHealth {
    /// A healthy context with no members.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a device labelled `label` (e.g. `tree <id>`); it leaves when the member drops.
    pub fn member(self: &Arc<Self>, label: impl Into<String>) -> HealthMember {
        let mut s = lock(&self.state);
        let id = s.next_member;
        s.next_member += 1;
        let label = label.into();
        s.members.insert(
            id,
            Member {
                label: label.clone(),
                work: Vec::new(),
            },
        );
        HealthMember {
            health: Arc::clone(self),
            id,
            label,
        }
    }

    /// The recorded fault, if any.
    pub fn fault(&self) -> Option<Fault> {
        lock(&self.state).fault.clone()
    }

    /// `the CUDA device is unusable since <fault>` when a fault is recorded.
    pub fn unusable_reason(&self) -> Option<String> {
        self.fault()
            .map(|f| format!("the CUDA device is unusable since {}", f.describe()))
    }
}

/// One device's registration with its context's [`DeviceHealth`].
#[derive(Debug)]
pub struct HealthMember {
    health: Arc<DeviceHealth>,
    id: u64,
    label: String,
}

impl HealthMember {
    /// The label this device registered with.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The context's health.
    pub fn health(&self) -> &Arc<DeviceHealth> {
        &self.health
    }

    /// `Ok` while the context is healthy.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the fault and whether this member caused it.
    pub fn check(&self) -> crate::error::Result<()> {
        match &lock(&self.health.state).fault {
            None => Ok(()),
            Some(f) => Err(f.error_for(self.id, &self.label)),
        }
    }

    /// Records that operation `op` is about to be queued (call it before the driver call,
    /// so a fault the operation causes always finds it in flight).
    ///
    /// # Errors
    /// As [`HealthMember::check`]; nothing is recorded then.
    pub fn begin(&self, op: &'static str) -> crate::error::Result<()> {
        let mut s = lock(&self.health.state);
        if let Some(f) = &s.fault {
            return Err(f.error_for(self.id, &self.label));
        }
        if let Some(m) = s.members.get_mut(&self.id) {
            match m.work.iter().position(|&(n, _)| n == op) {
                Some(i) => m.work[i].1 += 1,
                None if m.work.len() < MAX_WORK_NAMES => m.work.push((op, 1)),
                // Past the cap the member still counts as in flight through its other names.
                None => {}
            }
        }
        Ok(())
    }

    /// Records a successful synchronisation: nothing of this member is in flight.
    pub fn settled(&self) {
        if let Some(m) = lock(&self.health.state).members.get_mut(&self.id) {
            m.work.clear();
        }
    }

    /// Records that this member saw the sticky error `error` (text with the code's name);
    /// `refused` is the operation whose driver call returned it, if that call queued nothing
    /// (one [`HealthMember::begin`] of it is taken back). The first observation on the context becomes its [`Fault`], with every
    /// member that had work in flight as a suspect. Returns this member's error.
    pub fn observe(&self, error: String, refused: Option<&'static str>) -> Error {
        let mut s = lock(&self.health.state);
        if s.fault.is_none() {
            if let (Some(op), Some(m)) = (refused, s.members.get_mut(&self.id)) {
                if let Some((_, count)) = m.work.iter_mut().find(|(n, _)| *n == op) {
                    *count -= 1;
                }
                m.work.retain(|&(_, count)| count > 0);
            }
            let suspects = s
                .members
                .iter()
                .filter(|(_, m)| !m.work.is_empty())
                .map(|(&member, m)| Suspect {
                    label: m.label.clone(),
                    work: m.names(),
                    member,
                })
                .collect();
            let fault = Fault {
                error,
                observed_by: self.label.clone(),
                suspects,
            };
            tracing::error!(
                "CUDA context fault: {}; every device tree on it now answers UNAVAILABLE and \
                 new trees use the CPU",
                fault.describe()
            );
            s.fault = Some(fault);
        }
        match &s.fault {
            Some(f) => f.error_for(self.id, &self.label),
            None => Error::Unavailable("CUDA device fault".into()),
        }
    }
}

impl Drop for HealthMember {
    fn drop(&mut self) {
        lock(&self.health.state).members.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_codes_are_the_context_corrupting_ones() {
        assert_eq!(sticky_fault(700), Some("CUDA_ERROR_ILLEGAL_ADDRESS"));
        assert_eq!(sticky_fault(719), Some("CUDA_ERROR_LAUNCH_FAILED"));
        assert_eq!(sticky_fault(214), Some("CUDA_ERROR_ECC_UNCORRECTABLE"));
        // Out of memory, a missing kernel image, an old driver and bad arguments are not.
        for code in [1, 2, 35, 209, 222, 701, 999] {
            assert_eq!(sticky_fault(code), None, "{code}");
        }
    }

    #[test]
    fn one_suspect_is_named_as_the_cause_and_others_are_told_so() {
        let h = DeviceHealth::new();
        let (a, b) = (h.member("tree a"), h.member("tree b"));
        a.begin("scatter").unwrap();
        b.begin("vertical").unwrap();
        b.settled();
        // `b` observes first, on a launch the driver refused: it is not a suspect.
        b.begin("fill_digests").unwrap();
        let eb = b
            .observe("CUDA_ERROR_ILLEGAL_ADDRESS".into(), Some("fill_digests"))
            .to_string();
        let f = h.fault().unwrap();
        assert_eq!(f.suspects.len(), 1);
        assert_eq!(f.suspects[0].label, "tree a");
        assert_eq!(f.suspects[0].work, ["scatter"]);
        assert_eq!(f.observed_by, "tree b");
        assert!(eb.contains("unusable since CUDA_ERROR_ILLEGAL_ADDRESS during scatter of tree a"));
        assert!(eb.contains("not caused by tree b"), "{eb}");
        let ea = a.check().unwrap_err().to_string();
        assert!(ea.contains("fault caused by work of tree a"), "{ea}");
        // A later observation changes nothing; a new member is refused too.
        let _ = a.observe("CUDA_ERROR_LAUNCH_FAILED".into(), None);
        assert_eq!(h.fault().unwrap(), f);
        assert!(h.member("tree c").begin("alloc").is_err());
        assert!(h.unusable_reason().unwrap().contains("tree a"));
    }

    #[test]
    fn several_suspects_are_all_named() {
        let h = DeviceHealth::new();
        let (a, b, c) = (h.member("tree a"), h.member("tree b"), h.member("tree c"));
        a.begin("scatter").unwrap();
        b.begin("openings").unwrap();
        b.begin("openings").unwrap();
        let e = c
            .observe("CUDA_ERROR_LAUNCH_FAILED".into(), None)
            .to_string();
        let f = h.fault().unwrap();
        assert_eq!(f.suspects.len(), 2);
        assert_eq!(f.suspects[1].work, ["openings"]);
        assert!(
            e.contains("2 devices had work in flight") && e.contains("scatter of tree a"),
            "{e}"
        );
        assert!(e.contains("openings of tree b") && e.contains("not caused by tree c"));
        let ea = a.check().unwrap_err().to_string();
        assert!(ea.contains("tree a among the suspects"), "{ea}");
    }

    #[test]
    fn no_work_in_flight_means_an_unknown_cause() {
        let h = DeviceHealth::new();
        let a = h.member("tree a");
        a.begin("vertical").unwrap();
        a.settled();
        let e = a
            .observe("CUDA_ERROR_ECC_UNCORRECTABLE".into(), None)
            .to_string();
        assert!(
            e.contains("cause unknown") && e.contains("not caused by tree a"),
            "{e}"
        );
    }
}
