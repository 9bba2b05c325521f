//! How many bytes an unsynced restore writes through the page cache before it switches to
//! direct I/O.
//!
//! Through the page cache a write costs a memory copy, until the kernel's dirty pages pass its
//! limits: from the midpoint of the background and the hard limit on, writers are throttled to
//! the pace of the kernel's writeback, which was slower than direct writes where measured
//! (docs/benchmarks.md). So a restore writes through the
//! page cache while it stays well below that point, and with direct I/O (not synced) beyond.

use std::path::Path;

/// What the budget is computed from; every size in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyLimits {
    /// Memory the kernel counts as dirtyable (`MemAvailable`).
    pub available: u64,
    /// Dirty pages and pages under writeback now.
    pub dirty: u64,
    /// `vm.dirty_background_bytes`, or 0 to use the ratio.
    pub background_bytes: u64,
    /// `vm.dirty_background_ratio` (percent).
    pub background_ratio: u64,
    /// `vm.dirty_bytes`, or 0 to use the ratio.
    pub hard_bytes: u64,
    /// `vm.dirty_ratio` (percent).
    pub hard_ratio: u64,
    /// Memory the container may still use (cgroup v2 `memory.max` − `memory.current`), when it
    /// has a limit: the kernel applies the ratios to it as well.
    pub cgroup_headroom: Option<u64>,
}

impl DirtyLimits {
    /// The limits of this machine and container; `None` where they cannot be read (then
    /// nothing goes through the page cache).
    pub fn read() -> Option<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = meminfo.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kib * 1024)
        };
        let sysctl = |name: &str| read_number(&Path::new("/proc/sys/vm").join(name));
        let cgroup = Path::new("/sys/fs/cgroup");
        let cgroup_headroom = match (
            read_number(&cgroup.join("memory.max")),
            read_number(&cgroup.join("memory.current")),
        ) {
            (Some(max), Some(current)) => Some(max.saturating_sub(current)),
            _ => None,
        };
        Some(Self {
            available: field("MemAvailable:")?,
            dirty: field("Dirty:")? + field("Writeback:")?,
            background_bytes: sysctl("dirty_background_bytes")?,
            background_ratio: sysctl("dirty_background_ratio")?,
            hard_bytes: sysctl("dirty_bytes")?,
            hard_ratio: sysctl("dirty_ratio")?,
            cgroup_headroom,
        })
    }

    /// Bytes a restore may write through the page cache: half of what the kernel lets be dirty
    /// before it throttles writers (the midpoint of its background and hard limits, for the
    /// machine and for the container's memory alike), less what is dirty already.
    pub fn budget(&self) -> u64 {
        let unthrottled = |memory: u64| {
            let of = |bytes: u64, ratio: u64| {
                if bytes > 0 {
                    bytes
                } else {
                    memory / 100 * ratio
                }
            };
            (of(self.background_bytes, self.background_ratio)
                + of(self.hard_bytes, self.hard_ratio))
                / 2
        };
        let mut limit = unthrottled(self.available);
        if let Some(headroom) = self.cgroup_headroom {
            limit = limit.min(unthrottled(headroom));
        }
        (limit / 2).saturating_sub(self.dirty)
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The budget of an unsynced restore on this machine: 0 where the limits cannot be read.
pub fn budget() -> u64 {
    DirtyLimits::read().map_or(0, |l| l.budget())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn defaults(available: u64) -> DirtyLimits {
        DirtyLimits {
            available,
            background_ratio: 10,
            hard_ratio: 20,
            ..DirtyLimits::default()
        }
    }

    #[test]
    fn half_the_unthrottled_dirty_memory_less_what_is_dirty() {
        // 24 GB, ratios 10 and 20: writers are throttled from 3.6 GB of dirty pages on.
        assert_eq!(defaults(24 * GB).budget(), 1_800_000_000);
        let dirty = DirtyLimits {
            dirty: GB,
            ..defaults(24 * GB)
        };
        assert_eq!(dirty.budget(), 800_000_000);
        let busy = DirtyLimits {
            dirty: 5 * GB,
            ..defaults(24 * GB)
        };
        assert_eq!(busy.budget(), 0);
    }

    #[test]
    fn byte_limits_replace_the_ratios_and_a_container_limit_applies() {
        let bytes = DirtyLimits {
            background_bytes: 100_000_000,
            hard_bytes: 300_000_000,
            ..defaults(24 * GB)
        };
        assert_eq!(bytes.budget(), 100_000_000);
        let contained = DirtyLimits {
            cgroup_headroom: Some(2 * GB),
            ..defaults(24 * GB)
        };
        assert_eq!(contained.budget(), 150_000_000);
    }

    #[test]
    fn this_machine_s_limits_are_read() {
        let limits = DirtyLimits::read().expect("Linux exposes /proc/meminfo and vm.dirty_*");
        assert!(limits.available > 0, "{limits:?}");
        assert!(
            limits.background_ratio > 0 || limits.background_bytes > 0,
            "{limits:?}"
        );
    }
}
