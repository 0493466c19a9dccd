//! What the machine has and has used: host memory from `/proc`, device memory from the CUDA
//! probe. Linux only; elsewhere the readings are `None`.

/// `MemAvailable` of `/proc/meminfo`, in bytes: what the kernel estimates can be allocated
/// without swapping.
pub fn host_available_bytes() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:")
}

/// Peak resident set size of this whole process, in bytes (`VmHWM` of `/proc/self/status`):
/// the high-water mark since the process started or since the last [`reset_peak_rss`].
pub fn peak_rss_bytes() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:")
}

/// Resets the process's `VmHWM` to its current RSS (writes `5` to `/proc/self/clear_refs`,
/// Linux 4.0+), so the next [`peak_rss_bytes`] covers only what ran since. Returns whether
/// it worked; when it did not, the peak stays the process peak since start.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Free device memory in bytes (`cuMemGetInfo`, all processes), or `None` without a usable
/// CUDA device.
pub fn device_free_bytes() -> Option<u64> {
    crate::tree::cuda::probe_device()
        .ok()
        .map(|info| info.free_bytes)
}

/// Reads a `Key:   N kB` line of a `/proc` file, in bytes.
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_kib(&text, key)
}

fn parse_kib(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_lines() {
        let text = "MemTotal:       24683656 kB\nMemAvailable:   23974388 kB\n";
        assert_eq!(parse_kib(text, "MemAvailable:"), Some(23974388 * 1024));
        assert_eq!(parse_kib(text, "VmHWM:"), None);
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
            assert!(host_available_bytes().is_some_and(|b| b > 0));
        }
    }
}
