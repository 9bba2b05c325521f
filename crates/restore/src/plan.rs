//! Which stored handles feed which new subtask (pure: values in, values out).
//!
//! For a new subtask with range R, every handle H of the checkpoint with `H ∩ R ≠ ∅` is an input.
//! The **initial handle** is the input with the largest `|H ∩ R|`, ties broken by the larger
//! overlap fraction `|H ∩ R| / |H|` and then by the lower old subtask index (deterministic).
//! With an `overlap_fraction_threshold`, inputs below it are not eligible and the restore may
//! start from an empty DB (Flink's `restore-overlap-fraction-threshold`).
//!
//! What is downloaded depends on the strategy: `copy` opens every input as a DB, so it needs
//! every file of every input; `ingest` needs only the SST files whose key-group span intersects
//! R. A restore whose range equals a handle's range needs that handle alone, whole.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::order::l0_order_proven;
use regroup_core::checkpoint::{CheckpointMetadata, SharedFile, SubtaskHandle};
use regroup_core::error::{Error, Result};
use regroup_core::keygroup::{KeyGroupRange, check_parallelism, ranges, subtask_for_key_group};

/// How the inputs of a rescaling restore are merged into the new DB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Flink's baseline: open the initial handle, clip it, copy every other input's records in
    /// write batches (WAL off, bounded in entries and bytes).
    Copy,
    /// Ingest the downloaded SST files themselves into an empty DB (no record rewritten), then
    /// clip. Falls back to `copy` for a handle whose files cannot be ingested safely.
    Ingest,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Copy => "copy",
            Strategy::Ingest => "ingest",
        })
    }
}

impl FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "copy" => Ok(Strategy::Copy),
            "ingest" => Ok(Strategy::Ingest),
            _ => Err(Error::invalid("strategy", s, "copy or ingest")),
        }
    }
}

/// Options of the planner.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanOptions {
    /// Merge strategy; decides which files must be downloaded.
    pub strategy: Strategy,
    /// Inputs whose overlap fraction `|H ∩ R| / |H|` is below this cannot be the initial handle
    /// (0 = every input is eligible; Flink's default).
    pub overlap_fraction_threshold: f64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            strategy: Strategy::Ingest,
            overlap_fraction_threshold: 0.0,
        }
    }
}

impl PlanOptions {
    /// Checks the threshold is a fraction in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        let t = self.overlap_fraction_threshold;
        if !(0.0..=1.0).contains(&t) {
            return Err(Error::invalid(
                "overlap fraction threshold",
                t,
                "a number between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// How one new subtask gets its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreKind {
    /// The range equals one handle's range: that handle's files are the DB.
    Unchanged,
    /// The range differs from every handle's: inputs are merged and clipped.
    Rescaled,
}

/// What the restore does with one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputMethod {
    /// Its files become the new DB as they are (restore without rescaling).
    Whole,
    /// Opened as the base DB and clipped to the range (`copy`'s initial handle).
    Base,
    /// Opened read-only; the records of the intersection are copied into the new DB.
    Copy,
    /// Its SST files that intersect the range are ingested into the new DB.
    Ingest,
}

impl fmt::Display for InputMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputMethod::Whole => "whole",
            InputMethod::Base => "base",
            InputMethod::Copy => "copy",
            InputMethod::Ingest => "ingest",
        })
    }
}

/// One stored handle that holds part of a new subtask's range.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedInput {
    /// Subtask index of the handle in the checkpoint.
    pub old_subtask: u32,
    /// Key groups of the handle.
    pub handle_range: KeyGroupRange,
    /// Key groups this input contributes to the new range.
    pub intersection: KeyGroupRange,
    /// `|H ∩ R| / |H|`.
    pub overlap_fraction: f64,
    /// How it is merged.
    pub method: InputMethod,
    /// Indices into the handle's `shared` files that must be downloaded.
    pub shared_files: Vec<usize>,
    /// Whether the handle's private files (MANIFEST, CURRENT, OPTIONS) are needed, i.e. the
    /// handle is opened as a DB.
    pub private_files: bool,
    /// SST files of the handle skipped because their key groups lie outside the new range.
    pub skipped_files: usize,
    /// Bytes of the files the input needs (downloaded or reused locally).
    pub bytes: u64,
    /// True when this handle's DB is on the pod's own volume: its SST files are expected to be
    /// hard-linked from there (each verified first), only the rest downloaded.
    pub local: bool,
    /// Bytes of this input's SST files expected from the local DB (0 unless `local`).
    pub local_bytes: u64,
}

/// The plan of one new subtask.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskPlan {
    /// New subtask index.
    pub subtask: u32,
    /// Its key groups.
    pub range: KeyGroupRange,
    /// Restore without or with rescaling.
    pub kind: RestoreKind,
    /// Handles intersecting the range, by old subtask index.
    pub inputs: Vec<PlannedInput>,
    /// Old subtask index of the initial handle; `None` means start from an empty DB.
    pub initial: Option<u32>,
    /// Bytes to download in all (those expected from a local DB excepted).
    pub bytes_to_download: u64,
    /// Bytes expected to be reused from a local DB instead of downloaded.
    pub bytes_local: u64,
    /// Bytes of every file of every intersecting handle: what a restore that fetches whole
    /// handles (Flink's) would download.
    pub bytes_of_handles: u64,
}

impl SubtaskPlan {
    /// The input that is the initial handle, if any.
    pub fn initial_input(&self) -> Option<&PlannedInput> {
        self.initial
            .and_then(|s| self.inputs.iter().find(|i| i.old_subtask == s))
    }
}

/// The plan of every new subtask for restoring one checkpoint at a new parallelism.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RescalePlan {
    /// The checkpoint restored.
    pub checkpoint_id: u64,
    /// Key groups of the job.
    pub max_parallelism: u32,
    /// Parallelism of the checkpoint.
    pub from_parallelism: u32,
    /// New parallelism.
    pub to_parallelism: u32,
    /// The strategy the byte counts assume.
    pub strategy: Strategy,
    /// One plan per new subtask, in order.
    pub subtasks: Vec<SubtaskPlan>,
}

impl RescalePlan {
    /// Bytes all new subtasks download together.
    pub fn bytes_to_download(&self) -> u64 {
        self.subtasks.iter().map(|s| s.bytes_to_download).sum()
    }

    /// Bytes of the whole intersecting handles, summed over the new subtasks.
    pub fn bytes_of_handles(&self) -> u64 {
        self.subtasks.iter().map(|s| s.bytes_of_handles).sum()
    }
}

/// True when an SST file may hold keys of `range` (a file without a recorded span may hold any).
pub fn file_intersects(file: &SharedFile, range: &KeyGroupRange) -> bool {
    file.key_groups
        .is_none_or(|span| span.intersection(range).is_some())
}

/// True when every SST file of `h` records its column family and level and a key-group span
/// inside the handle's range, and the handle proves the order of its L0 files
/// ([`l0_order_proven`]): only then can its files be ingested next to other handles' files
/// without overlapping them (a file whose span reaches outside, e.g. through a range tombstone,
/// could delete another handle's keys), and newer versions of a key end up above older ones.
pub fn ingestible(h: &SubtaskHandle) -> bool {
    h.shared.iter().all(|f| {
        f.column_family.is_some()
            && f.level.is_some()
            && f.key_groups
                .is_some_and(|span| h.key_group_range.covers(&span))
    }) && l0_order_proven(h)
}

/// Plans the restore of `subtask` of `parallelism` from `meta`.
pub fn plan_subtask(
    meta: &CheckpointMetadata,
    parallelism: u32,
    subtask: u32,
    options: &PlanOptions,
) -> Result<SubtaskPlan> {
    plan_subtask_with_local(meta, parallelism, subtask, options, None)
}

/// Plans the restore of `subtask` of `parallelism` from `meta` when the DB of the handle of old
/// subtask `local` is on the pod's volume: that handle, if it intersects the range, is the
/// initial handle (it costs no download) and its SST files are expected from the local DB.
pub fn plan_subtask_with_local(
    meta: &CheckpointMetadata,
    parallelism: u32,
    subtask: u32,
    options: &PlanOptions,
    local: Option<u32>,
) -> Result<SubtaskPlan> {
    options.validate()?;
    let range = KeyGroupRange::for_subtask(meta.max_parallelism, parallelism, subtask)?;
    Ok(plan_range(&meta.handles, subtask, range, options, local))
}

/// Plans every new subtask of `parallelism` from `meta`.
pub fn plan(
    meta: &CheckpointMetadata,
    parallelism: u32,
    options: &PlanOptions,
) -> Result<RescalePlan> {
    options.validate()?;
    check_parallelism(meta.max_parallelism, parallelism)?;
    let subtasks = ranges(meta.max_parallelism, parallelism)?
        .into_iter()
        .enumerate()
        .map(|(i, range)| plan_range(&meta.handles, i as u32, range, options, None))
        .collect();
    Ok(RescalePlan {
        checkpoint_id: meta.checkpoint_id,
        max_parallelism: meta.max_parallelism,
        from_parallelism: meta.parallelism,
        to_parallelism: parallelism,
        strategy: options.strategy,
        subtasks,
    })
}

fn plan_range(
    handles: &[SubtaskHandle],
    subtask: u32,
    range: KeyGroupRange,
    options: &PlanOptions,
    local: Option<u32>,
) -> SubtaskPlan {
    let shared_bytes = |h: &SubtaskHandle, files: &[usize]| -> u64 {
        files.iter().map(|&i| h.shared[i].file.size).sum()
    };
    let bytes_of_handles = handles
        .iter()
        .filter(|h| h.key_group_range.intersection(&range).is_some())
        .map(|h| {
            h.files().map(|f| f.size).sum::<u64>() + h.inline.iter().map(|i| i.size).sum::<u64>()
        })
        .sum();
    if let Some(h) = handles.iter().find(|h| h.key_group_range == range) {
        let shared_files: Vec<usize> = (0..h.shared.len()).collect();
        let is_local = local == Some(h.subtask);
        let input = PlannedInput {
            old_subtask: h.subtask,
            handle_range: h.key_group_range,
            intersection: range,
            overlap_fraction: 1.0,
            method: InputMethod::Whole,
            private_files: true,
            skipped_files: 0,
            bytes: h.files().map(|f| f.size).sum(),
            local: is_local,
            local_bytes: if is_local {
                shared_bytes(h, &shared_files)
            } else {
                0
            },
            shared_files,
        };
        return SubtaskPlan {
            subtask,
            range,
            kind: RestoreKind::Unchanged,
            bytes_to_download: input.bytes - input.local_bytes,
            bytes_local: input.local_bytes,
            bytes_of_handles,
            initial: Some(h.subtask),
            inputs: vec![input],
        };
    }
    let mut inputs: Vec<PlannedInput> = handles
        .iter()
        .filter_map(|h| {
            let intersection = h.key_group_range.intersection(&range)?;
            let overlap_fraction =
                f64::from(intersection.len()) / f64::from(h.key_group_range.len());
            let method = match options.strategy {
                Strategy::Ingest if ingestible(h) => InputMethod::Ingest,
                _ => InputMethod::Copy,
            };
            let (shared_files, private_files): (Vec<usize>, bool) = match method {
                InputMethod::Ingest => (
                    (0..h.shared.len())
                        .filter(|&i| file_intersects(&h.shared[i], &range))
                        .collect(),
                    false,
                ),
                _ => ((0..h.shared.len()).collect(), true),
            };
            let bytes = shared_files
                .iter()
                .map(|&i| h.shared[i].file.size)
                .sum::<u64>()
                + if private_files {
                    h.private.iter().map(|p| p.file.size).sum()
                } else {
                    0
                };
            let is_local = local == Some(h.subtask);
            Some(PlannedInput {
                old_subtask: h.subtask,
                handle_range: h.key_group_range,
                intersection,
                overlap_fraction,
                method,
                skipped_files: h.shared.len() - shared_files.len(),
                local: is_local,
                local_bytes: if is_local {
                    shared_bytes(h, &shared_files)
                } else {
                    0
                },
                shared_files,
                private_files,
                bytes,
            })
        })
        .collect();
    inputs.sort_by_key(|i| i.old_subtask);
    // A local input costs no download: it is the natural initial handle (the base DB of
    // `copy`) when the threshold allows it.
    let initial = inputs
        .iter()
        .find(|i| i.local && i.overlap_fraction >= options.overlap_fraction_threshold)
        .map(|i| i.old_subtask)
        .or_else(|| choose_initial(&inputs, options.overlap_fraction_threshold));
    if options.strategy == Strategy::Copy
        && let Some(base) = inputs.iter_mut().find(|i| Some(i.old_subtask) == initial)
    {
        base.method = InputMethod::Base;
    }
    SubtaskPlan {
        subtask,
        range,
        kind: RestoreKind::Rescaled,
        bytes_to_download: inputs.iter().map(|i| i.bytes - i.local_bytes).sum(),
        bytes_local: inputs.iter().map(|i| i.local_bytes).sum(),
        bytes_of_handles,
        initial,
        inputs,
    }
}

/// The initial handle among `inputs`: largest intersection, then largest overlap fraction,
/// then lowest old subtask; inputs below `threshold` are not eligible.
pub fn choose_initial(inputs: &[PlannedInput], threshold: f64) -> Option<u32> {
    inputs
        .iter()
        .filter(|i| i.overlap_fraction >= threshold)
        .max_by(|a, b| {
            a.intersection
                .len()
                .cmp(&b.intersection.len())
                .then(a.overlap_fraction.total_cmp(&b.overlap_fraction))
                .then(b.old_subtask.cmp(&a.old_subtask))
        })
        .map(|i| i.old_subtask)
}

/// The new ranges, and which old subtasks feed each, when only parallelisms are known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangePlan {
    /// Key groups of the job.
    pub max_parallelism: u32,
    /// Old parallelism, if given.
    pub from_parallelism: Option<u32>,
    /// New parallelism.
    pub to_parallelism: u32,
    /// One entry per new subtask.
    pub subtasks: Vec<RangeAssignment>,
}

/// One new subtask of a [`RangePlan`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeAssignment {
    /// New subtask index.
    pub subtask: u32,
    /// Its key groups.
    pub range: KeyGroupRange,
    /// Old subtasks whose ranges intersect it, with the key groups each contributes.
    pub sources: Vec<(u32, KeyGroupRange)>,
    /// Old subtask with the largest contribution (ties: larger overlap fraction, lower index).
    pub initial: Option<u32>,
}

/// The range-only plan: M key groups, from `from` subtasks (if known) to `to`.
pub fn plan_ranges(max_parallelism: u32, from: Option<u32>, to: u32) -> Result<RangePlan> {
    let new = ranges(max_parallelism, to)?;
    let old = match from {
        Some(p) => ranges(max_parallelism, p)?,
        None => Vec::new(),
    };
    let subtasks = new
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            let sources: Vec<(u32, KeyGroupRange)> = if old.is_empty() {
                Vec::new()
            } else {
                // Old subtasks owning the first and last key group bound the intersecting ones.
                let p = old.len() as u32;
                let first = subtask_for_key_group(max_parallelism, p, range.start);
                let last = subtask_for_key_group(max_parallelism, p, range.end);
                (first..=last)
                    .filter_map(|s| old[s as usize].intersection(&range).map(|inter| (s, inter)))
                    .collect()
            };
            let initial = sources
                .iter()
                .max_by(|(sa, a), (sb, b)| {
                    let fa = f64::from(a.len()) / f64::from(old[*sa as usize].len());
                    let fb = f64::from(b.len()) / f64::from(old[*sb as usize].len());
                    a.len()
                        .cmp(&b.len())
                        .then(fa.total_cmp(&fb))
                        .then(sb.cmp(sa))
                })
                .map(|(s, _)| *s);
            RangeAssignment {
                subtask: i as u32,
                range,
                sources,
                initial,
            }
        })
        .collect();
    Ok(RangePlan {
        max_parallelism,
        from_parallelism: from,
        to_parallelism: to,
        subtasks,
    })
}

#[cfg(test)]
mod tests {
    use super::Strategy;
    use super::*;
    use proptest::prelude::*;
    use regroup_core::checkpoint::testing::checkpoint;

    fn r(start: u32, end: u32) -> KeyGroupRange {
        KeyGroupRange { start, end }
    }

    #[test]
    fn same_parallelism_restores_unchanged() {
        let meta = checkpoint(128, 4, 3);
        let plan = plan(&meta, 4, &PlanOptions::default()).unwrap();
        for (i, s) in plan.subtasks.iter().enumerate() {
            assert_eq!(s.kind, RestoreKind::Unchanged);
            assert_eq!(s.initial, Some(i as u32));
            assert_eq!(s.inputs.len(), 1);
            assert_eq!(s.bytes_to_download, 1000 + 1001 + 1002 + 16);
        }
    }

    #[test]
    fn a_local_handle_is_preferred_and_not_downloaded() {
        // 3 → 2 at M = 6: new 0 = [0,2] takes [0,1] of old 0 and [2,2] of old 1; without a
        // local DB old 0 (larger intersection) is the initial handle.
        let meta = checkpoint(6, 3, 2);
        let copy = PlanOptions {
            strategy: Strategy::Copy,
            overlap_fraction_threshold: 0.0,
        };
        let remote = plan_subtask(&meta, 2, 0, &copy).unwrap();
        assert_eq!(remote.initial, Some(0));
        assert_eq!(remote.bytes_local, 0);
        assert_eq!(remote.bytes_to_download, remote.bytes_of_handles);
        // With old 1's DB on the volume, old 1 is the base and its SSTs are not downloaded.
        let local = plan_subtask_with_local(&meta, 2, 0, &copy, Some(1)).unwrap();
        assert_eq!(local.initial, Some(1));
        let base = local.initial_input().unwrap();
        assert!(base.local);
        assert_eq!(base.method, InputMethod::Base);
        assert_eq!(base.local_bytes, 1000 + 1001);
        assert_eq!(local.bytes_local, 1000 + 1001);
        assert_eq!(
            local.bytes_to_download,
            remote.bytes_to_download - local.bytes_local
        );
        // A local handle that does not intersect the range changes nothing.
        let other = plan_subtask_with_local(&meta, 2, 0, &copy, Some(2)).unwrap();
        assert_eq!(other, remote);
        // A threshold above its overlap fraction keeps it from being the initial handle, but
        // its files are still reused.
        let strict = PlanOptions {
            strategy: Strategy::Copy,
            overlap_fraction_threshold: 0.9,
        };
        let held = plan_subtask_with_local(&meta, 2, 0, &strict, Some(1)).unwrap();
        assert_eq!(held.initial, Some(0));
        assert_eq!(held.bytes_local, 1000 + 1001);
        // Unchanged ranges: the local handle's SSTs are reused, its private files downloaded.
        let same = plan_subtask_with_local(&meta, 3, 1, &PlanOptions::default(), Some(1)).unwrap();
        assert_eq!(same.kind, RestoreKind::Unchanged);
        assert_eq!(same.bytes_local, 1000 + 1001);
        assert_eq!(same.bytes_to_download, 16);
    }

    #[test]
    fn ingest_fetches_fewer_bytes_than_whole_handles() {
        // 1 → 2: each new subtask needs only the files of its half.
        let meta = checkpoint(8, 1, 4);
        let plan = plan(&meta, 2, &PlanOptions::default()).unwrap();
        for s in &plan.subtasks {
            assert_eq!(s.bytes_of_handles, 1000 + 1001 + 1002 + 1003 + 16);
        }
        assert_eq!(plan.subtasks[0].bytes_to_download, 1000 + 1001);
        assert_eq!(plan.subtasks[1].bytes_to_download, 1002 + 1003);
    }

    #[test]
    fn scale_in_picks_the_larger_intersection() {
        // M=128, 3 → 2: new [0,63] gets old 0 [0,42] (43) and old 1 [43,85] (21).
        let meta = checkpoint(128, 3, 1);
        let plan = plan(&meta, 2, &PlanOptions::default()).unwrap();
        let s0 = &plan.subtasks[0];
        assert_eq!(s0.range, r(0, 63));
        assert_eq!(s0.kind, RestoreKind::Rescaled);
        assert_eq!(s0.initial, Some(0));
        assert_eq!(
            s0.inputs.iter().map(|i| i.intersection).collect::<Vec<_>>(),
            vec![r(0, 42), r(43, 63)]
        );
        // New [64,127]: old 1 gives [64,85] (22 of 43), old 2 gives [86,127] (42 of 42).
        assert_eq!(plan.subtasks[1].initial, Some(2));
    }

    #[test]
    fn ties_are_broken_by_overlap_fraction() {
        // Hand-made handles: A = [0,9] and B = [10,13]; new range [6,13] gets 4 of each.
        let mut meta = checkpoint(16, 2, 1);
        meta.handles[0].key_group_range = r(0, 9);
        meta.handles[1].key_group_range = r(10, 15);
        let inputs = plan_range(&meta.handles, 0, r(6, 13), &PlanOptions::default(), None).inputs;
        assert_eq!(inputs[0].intersection.len(), inputs[1].intersection.len());
        // B's fraction 4/6 beats A's 4/10.
        assert_eq!(choose_initial(&inputs, 0.0), Some(1));
    }

    #[test]
    fn threshold_can_leave_no_initial_handle() {
        // 1 → 2: each new subtask gets half of the single handle (fraction 0.5).
        let meta = checkpoint(128, 1, 4);
        let opts = PlanOptions {
            strategy: Strategy::Copy,
            overlap_fraction_threshold: 0.75,
        };
        let plan = plan(&meta, 2, &opts).unwrap();
        assert!(plan.subtasks.iter().all(|s| s.initial.is_none()));
        let opts = PlanOptions {
            overlap_fraction_threshold: 0.5,
            ..opts
        };
        let plan = super::plan(&meta, 2, &opts).unwrap();
        assert!(plan.subtasks.iter().all(|s| s.initial == Some(0)));
        let bad = PlanOptions {
            overlap_fraction_threshold: 1.5,
            ..opts
        };
        let e = super::plan(&meta, 2, &bad).unwrap_err().to_string();
        assert!(e.contains("overlap fraction threshold = 1.5"), "{e}");
    }

    #[test]
    fn ingest_downloads_only_files_that_intersect() {
        // 1 → 2 with four SSTs of 32 key groups each: each new subtask needs two.
        let meta = checkpoint(128, 1, 4);
        let ingest = plan(&meta, 2, &PlanOptions::default()).unwrap();
        assert_eq!(ingest.subtasks[0].inputs[0].shared_files, vec![0, 1]);
        assert_eq!(ingest.subtasks[1].inputs[0].shared_files, vec![2, 3]);
        assert_eq!(ingest.subtasks[0].bytes_to_download, 1000 + 1001);
        assert_eq!(ingest.subtasks[1].inputs[0].skipped_files, 2);
        let copy = plan(
            &meta,
            2,
            &PlanOptions {
                strategy: Strategy::Copy,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            copy.subtasks[0].bytes_to_download,
            1000 + 1001 + 1002 + 1003 + 16
        );
    }

    #[test]
    fn unsafe_handles_fall_back_to_copy() {
        let mut meta = checkpoint(128, 2, 2);
        // A span reaching into the other handle's key groups (e.g. a clip's range tombstone).
        meta.handles[1].shared[0].key_groups = Some(r(0, 80));
        let plan = plan(&meta, 3, &PlanOptions::default()).unwrap();
        let s1 = &plan.subtasks[1];
        assert_eq!(s1.range, r(43, 85));
        let methods: Vec<_> = s1.inputs.iter().map(|i| i.method).collect();
        assert_eq!(methods, vec![InputMethod::Ingest, InputMethod::Copy]);
        assert!(s1.inputs[1].private_files);
        assert_eq!(s1.inputs[1].shared_files, vec![0, 1]);
    }

    #[test]
    fn format_1_handles_with_overlapping_l0_files_are_copied() {
        // 2 → 3: new subtask 1 takes part of both handles. Handle 0 holds two L0 files with
        // intersecting spans and, as format 1 wrote it, nothing that orders them.
        let mut meta = checkpoint(128, 2, 2);
        for h in &mut meta.handles {
            h.format_version = 1;
        }
        let old = &mut meta.handles[0];
        old.shared[0].level = Some(0);
        old.shared[1].level = Some(0);
        old.shared[1].key_groups = Some(r(20, 63));
        let methods = |meta: &CheckpointMetadata| -> Vec<InputMethod> {
            plan(meta, 3, &PlanOptions::default()).unwrap().subtasks[1]
                .inputs
                .iter()
                .map(|i| i.method)
                .collect()
        };
        assert_eq!(methods(&meta), [InputMethod::Copy, InputMethod::Ingest]);
        // The same files with their epoch numbers (format 2) are ingested.
        for (f, epoch) in meta.handles[0].shared.iter_mut().zip([4, 3]) {
            f.order = Some(regroup_core::checkpoint::SstOrder {
                smallest_seqno: epoch * 10,
                largest_seqno: epoch * 10 + 5,
                epoch_number: Some(epoch),
            });
        }
        meta.handles[0].format_version = 2;
        assert_eq!(methods(&meta), [InputMethod::Ingest, InputMethod::Ingest]);
        // Format 1 with L0 files that cannot overlap is ingested too.
        meta.handles[0].format_version = 1;
        meta.handles[0].shared[1].key_groups = Some(r(32, 63));
        for f in &mut meta.handles[0].shared {
            f.order = None;
        }
        assert_eq!(methods(&meta), [InputMethod::Ingest, InputMethod::Ingest]);
    }

    #[test]
    fn range_plan_matches_flink_example() {
        let p = plan_ranges(16, Some(2), 4).unwrap();
        assert_eq!(
            p.subtasks.iter().map(|s| s.range).collect::<Vec<_>>(),
            vec![r(0, 3), r(4, 7), r(8, 11), r(12, 15)]
        );
        assert_eq!(p.subtasks[2].sources, vec![(1, r(8, 11))]);
        let p = plan_ranges(128, Some(3), 2).unwrap();
        assert_eq!(p.subtasks[0].sources, vec![(0, r(0, 42)), (1, r(43, 63))]);
        assert_eq!(p.subtasks[0].initial, Some(0));
        assert!(plan_ranges(128, None, 0).is_err());
        assert!(
            plan_ranges(128, None, 3).unwrap().subtasks[0]
                .sources
                .is_empty()
        );
    }

    proptest! {
        #[test]
        fn inputs_partition_every_new_range(
            m in 1u32..=4096, p_seed in any::<u32>(), n_seed in any::<u32>(),
            files in 1u32..5, ingest in any::<bool>(), threshold in 0.0f64..=1.0,
        ) {
            let (p, n) = (p_seed % m.min(64) + 1, n_seed % m.min(300) + 1);
            let meta = checkpoint(m, p, files);
            let opts = PlanOptions {
                strategy: if ingest { Strategy::Ingest } else { Strategy::Copy },
                overlap_fraction_threshold: threshold,
            };
            let plan = plan(&meta, n, &opts).unwrap();
            prop_assert_eq!(plan.subtasks.len() as u32, n);
            let mut fed = vec![0u32; m as usize];
            for s in &plan.subtasks {
                // Every key group of the new range is fed by exactly one input.
                let mut covered = Vec::new();
                for i in &s.inputs {
                    prop_assert!(s.range.covers(&i.intersection));
                    let h = &meta.handles[i.old_subtask as usize];
                    prop_assert_eq!(h.key_group_range.intersection(&s.range), Some(i.intersection));
                    covered.extend(i.intersection.iter());
                    // Files needed hold every key group of the intersection.
                    for g in i.intersection.iter() {
                        let holders = i.shared_files.iter()
                            .filter(|&&f| h.shared[f].key_groups.unwrap().contains(g))
                            .count();
                        prop_assert_eq!(holders, 1);
                    }
                    let bytes: u64 = i.shared_files.iter().map(|&f| h.shared[f].file.size).sum::<u64>()
                        + if i.private_files { 16 } else { 0 };
                    prop_assert_eq!(i.bytes, bytes);
                }
                covered.sort_unstable();
                prop_assert_eq!(covered, s.range.iter().collect::<Vec<_>>());
                for g in s.range.iter() {
                    fed[g as usize] += 1;
                }
                prop_assert_eq!(s.bytes_to_download, s.inputs.iter().map(|i| i.bytes).sum::<u64>());
                // The initial handle has the largest intersection among eligible inputs.
                match s.initial_input() {
                    Some(init) => {
                        prop_assert!(init.overlap_fraction >= threshold || s.kind == RestoreKind::Unchanged);
                        for i in &s.inputs {
                            if i.overlap_fraction >= threshold {
                                prop_assert!(i.intersection.len() <= init.intersection.len());
                            }
                        }
                    }
                    None => prop_assert!(s.inputs.iter().all(|i| i.overlap_fraction < threshold)),
                }
                let bases: Vec<_> = s.inputs.iter().filter(|i| i.method == InputMethod::Base).map(|i| i.old_subtask).collect();
                if !ingest && s.kind == RestoreKind::Rescaled {
                    prop_assert_eq!(bases, s.initial.into_iter().collect::<Vec<_>>());
                } else {
                    prop_assert!(bases.is_empty());
                }
                if s.kind == RestoreKind::Unchanged {
                    prop_assert_eq!(s.inputs.len(), 1);
                    prop_assert_eq!(s.inputs[0].handle_range, s.range);
                }
            }
            prop_assert!(fed.iter().all(|&c| c == 1));
            // The range-only plan agrees with the handle plan.
            let rp = plan_ranges(m, Some(p), n).unwrap();
            for (a, b) in rp.subtasks.iter().zip(&plan.subtasks) {
                prop_assert_eq!(a.range, b.range);
                let sources: Vec<_> = b.inputs.iter().map(|i| (i.old_subtask, i.intersection)).collect();
                prop_assert_eq!(&a.sources, &sources);
                if b.kind == RestoreKind::Rescaled && threshold == 0.0 {
                    prop_assert_eq!(a.initial, b.initial);
                }
            }
        }
    }
}
