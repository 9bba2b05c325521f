//! File references, retention and garbage collection.
//!
//! The store is the record: which checkpoints completed is what `_metadata.json` objects say, and
//! which files a checkpoint uses is what its handles say. From that, [`plan_gc`] (pure) decides
//! what may go: files no retained or in-flight checkpoint references, the directories of
//! subsumed and aborted checkpoints — never a file no handle names that is younger than the
//! grace period, so uploads in flight are safe.
//!
//! Which objects it looks at is the [`GcScope`]: every object (a listing), or, after a completed
//! checkpoint, what the metadata of the checkpoints retention drops names and a [`Sweep`] of the
//! places leftovers can be, without listing the job's every file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::metadata::{CheckpointMetadata, FORMAT_VERSION, SubtaskHandle};
use super::paths::{JobPaths, parse_checkpoint_dir_name, parse_handle_name};
use super::pins::{pinned_ids, pins};
use super::store::CheckpointStore;
use crate::error::{Error, Result};

/// Metadata and handles read at once.
const READS_IN_FLIGHT: usize = 16;

/// For every stored file (job-relative path), the checkpoints that reference it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileReferences {
    /// Path → (size, referencing checkpoint ids).
    pub files: BTreeMap<String, (u64, BTreeSet<u64>)>,
}

impl FileReferences {
    /// References of the given checkpoints.
    pub fn from_checkpoints<'a>(
        checkpoints: impl IntoIterator<Item = &'a CheckpointMetadata>,
    ) -> Self {
        let mut refs = Self::default();
        for c in checkpoints {
            for h in &c.handles {
                refs.add_handle(h);
            }
        }
        refs
    }

    /// Adds the references of one handle.
    pub fn add_handle(&mut self, handle: &SubtaskHandle) {
        for f in handle.files() {
            self.files
                .entry(f.path.clone())
                .or_insert_with(|| (f.size, BTreeSet::new()))
                .1
                .insert(handle.checkpoint_id);
        }
    }

    /// True when some checkpoint references `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }
}

/// How many checkpoints to keep and how old unreferenced files must be before deletion.
#[derive(Clone, Copy, Debug)]
pub struct RetentionPolicy {
    /// Completed checkpoints to keep, newest first (at least 1).
    pub retain: usize,
    /// Unreferenced objects younger than this are kept: they may belong to uploads in flight.
    pub grace: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            retain: 1,
            grace: Duration::from_secs(600),
        }
    }
}

/// The retention the operator applies to a job, recorded in the store (`_retention.json`) so
/// that `regroup checkpoints gc` run by hand keeps what the job needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedRetention {
    /// Metadata format version.
    pub format_version: u32,
    /// Completed checkpoints the job keeps (`spec.checkpointing.retain`).
    pub retain: u32,
    /// The longest checkpoint timeout the job has had, in seconds: unreferenced files younger
    /// than this may belong to a checkpoint in flight.
    pub longest_checkpoint_timeout_seconds: u64,
    /// When this record was last written.
    pub updated_at: DateTime<Utc>,
}

impl RecordedRetention {
    /// The policy this record asks for.
    pub fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            retain: self.retain.max(1) as usize,
            grace: Duration::from_secs(self.longest_checkpoint_timeout_seconds),
        }
    }
}

/// The recorded retention of the job, if the operator wrote one.
pub async fn recorded_retention(store: &CheckpointStore) -> Result<Option<RecordedRetention>> {
    store.get_json(&store.paths().retention()).await
}

/// Records `retain` and `timeout` as the job's retention (keeping the longest timeout ever
/// recorded) and returns the policy to apply now.
pub async fn record_retention(
    store: &CheckpointStore,
    retain: u32,
    timeout: Duration,
) -> Result<RetentionPolicy> {
    let previous = recorded_retention(store).await?;
    let longest = previous
        .as_ref()
        .map_or(0, |r| r.longest_checkpoint_timeout_seconds)
        .max(timeout.as_secs_f64().ceil() as u64);
    let unchanged = previous
        .as_ref()
        .is_some_and(|r| r.retain == retain && r.longest_checkpoint_timeout_seconds == longest);
    let record = match previous {
        Some(r) if unchanged => r,
        _ => {
            let r = RecordedRetention {
                format_version: FORMAT_VERSION,
                retain,
                longest_checkpoint_timeout_seconds: longest,
                updated_at: Utc::now(),
            };
            store.put_json(&store.paths().retention(), &r).await?;
            r
        }
    };
    Ok(record.policy())
}

/// The policy of a garbage collection run by hand: `retain` as given, else as recorded (refused
/// when neither says); the grace period never shorter than the longest recorded timeout.
pub fn manual_policy(
    retain: Option<u64>,
    grace: Duration,
    recorded: Option<&RecordedRetention>,
    store: &str,
) -> Result<RetentionPolicy> {
    let retain = match (retain, recorded) {
        (Some(r), _) => r as usize,
        (None, Some(rec)) => rec.retain as usize,
        (None, None) => {
            return Err(Error::invalid(
                "--retain",
                "(unset)",
                format!(
                    "the number of completed checkpoints to keep: no retention is recorded in {store} (_retention.json, written by the operator), so gc does not guess"
                ),
            ));
        }
    };
    let recorded_grace = recorded.map_or(Duration::ZERO, |r| r.policy().grace);
    Ok(RetentionPolicy {
        retain: retain.max(1),
        grace: grace.max(recorded_grace),
    })
}

/// Why an object is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DeleteReason {
    /// Metadata of a completed checkpoint beyond the retention count.
    SubsumedMetadata,
    /// A file in the directory of a subsumed checkpoint.
    Subsumed,
    /// A file of a checkpoint that never completed and never will.
    Aborted,
    /// A shared SST file no retained or in-flight checkpoint references.
    Unreferenced,
}

/// One object to delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Deletion {
    /// Job-relative path.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Why.
    pub reason: DeleteReason,
}

/// Which objects a garbage collection looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum GcScope {
    /// Every object of the job, from a listing.
    #[default]
    Everything,
    /// What the operator runs after each completed checkpoint, without listing the job's every
    /// object (see [`Sweep`]): the objects of the checkpoints retention drops, as their metadata
    /// names them, and a listing of where leftovers can be.
    AfterCompletion,
}

/// A collection after a completed checkpoint lists one in this many of `shared/`'s directories:
/// every shared file is looked at within this many checkpoints.
pub const LIST_EVERY: u64 = 10;

/// What a collection of [`GcScope::AfterCompletion`] lists besides reading metadata, to find
/// what no completed checkpoint names: the directories of aborted checkpoints (a failed attempt's
/// handles and private files), and uploads that never made it into a handle, one slice of
/// `shared/` at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// Incomplete checkpoints older than the newest completed one, listed whole.
    pub incomplete: Vec<u64>,
    /// The directories of `shared/` listed are those of this slice (of [`LIST_EVERY`]).
    pub shared_slice: u64,
}

impl Sweep {
    /// The sweep after the newest completed of the store's checkpoint ids (each with whether it
    /// completed, as [`CheckpointStore::checkpoint_ids`] returns them); `None` when none
    /// completed. Pure.
    pub fn after(ids: &[(u64, bool)]) -> Option<Sweep> {
        let newest = ids
            .iter()
            .filter(|(_, done)| *done)
            .map(|(id, _)| *id)
            .max()?;
        Some(Sweep {
            incomplete: ids
                .iter()
                .filter(|&&(id, done)| !done && id < newest)
                .map(|&(id, _)| id)
                .collect(),
            shared_slice: newest % LIST_EVERY,
        })
    }

    /// Whether the `shared/` directory `name` (a DB instance's) is in this sweep's slice: the
    /// slices are fixed by the name, so consecutive checkpoints list all of them in turn.
    pub fn lists_shared(&self, name: &str) -> bool {
        u64::from(crc32c::crc32c(name.as_bytes())) % LIST_EVERY == self.shared_slice
    }
}

/// What garbage collection keeps and deletes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcPlan {
    /// The objects it looked at.
    pub scope: GcScope,
    /// Objects listed (the rest it looked at were named by metadata).
    pub listed: usize,
    /// Completed checkpoints kept.
    pub retained: Vec<u64>,
    /// Completed checkpoints dropped by retention.
    pub subsumed: Vec<u64>,
    /// Incomplete checkpoints that may still complete (kept).
    pub in_flight: Vec<u64>,
    /// Incomplete checkpoints that will never complete (deleted).
    pub aborted: Vec<u64>,
    /// Objects to delete, metadata of subsumed checkpoints first.
    pub deletions: Vec<Deletion>,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub kept_young: Vec<String>,
}

impl GcPlan {
    /// Bytes the deletions free.
    pub fn bytes(&self) -> u64 {
        self.deletions.iter().map(|d| d.size).sum()
    }
}

/// Decides what garbage collection deletes. Pure: `objects` are the job's objects with paths
/// relative to the job root; `completed` are the metadata of *all* completed checkpoints;
/// `in_flight_handles` are the handles already written by incomplete checkpoints newer than
/// the newest completed one; `pinned` are the checkpoints snapshots hold (kept, completed or
/// not, beside the `policy.retain` newest).
pub fn plan_gc(
    objects: &[(String, u64, DateTime<Utc>)],
    completed: &[CheckpointMetadata],
    in_flight_handles: &[SubtaskHandle],
    pinned: &[u64],
    now: DateTime<Utc>,
    policy: RetentionPolicy,
) -> GcPlan {
    let (retained, subsumed) = split_by_retention(completed, pinned, policy);
    let newest_completed = completed.iter().map(|c| c.checkpoint_id).max();
    let mut refs = FileReferences::from_checkpoints(
        completed
            .iter()
            .filter(|c| retained.contains(&c.checkpoint_id)),
    );
    for h in in_flight_handles {
        refs.add_handle(h);
    }
    // A file a completed checkpoint's handle names is no upload in flight: no grace for it.
    let dropped = FileReferences::from_checkpoints(
        completed
            .iter()
            .filter(|c| subsumed.contains(&c.checkpoint_id)),
    );
    let grace = chrono::Duration::from_std(policy.grace).unwrap_or(chrono::Duration::MAX);
    let young = |t: &DateTime<Utc>| now.signed_duration_since(*t) < grace;

    // Incomplete checkpoint directories: in flight if newer than every completed checkpoint
    // and touched within the grace period; aborted otherwise.
    let mut incomplete: BTreeMap<u64, bool> = BTreeMap::new(); // id -> any young object
    for (path, _, modified) in objects {
        if let Some(id) = path.split('/').next().and_then(parse_checkpoint_dir_name)
            && !completed.iter().any(|c| c.checkpoint_id == id)
        {
            *incomplete.entry(id).or_default() |= young(modified);
        }
    }
    let mut plan = GcPlan {
        retained,
        subsumed,
        ..Default::default()
    };
    for (&id, &has_young) in &incomplete {
        // A pinned incomplete checkpoint is a snapshot's, still being taken.
        if pinned.contains(&id) || (newest_completed.is_none_or(|n| id > n) && has_young) {
            plan.in_flight.push(id);
        } else {
            plan.aborted.push(id);
        }
    }

    let mut metadata_deletions = Vec::new();
    let mut other_deletions = Vec::new();
    for (path, size, modified) in objects {
        let mut parts = path.split('/');
        let first = parts.next().unwrap_or_default();
        let deletion = |reason| Deletion {
            path: path.clone(),
            size: *size,
            reason,
        };
        if first == "shared" {
            if refs.contains(path) {
                continue;
            }
            if young(modified) && !dropped.contains(path) {
                plan.kept_young.push(path.clone());
            } else {
                other_deletions.push(deletion(DeleteReason::Unreferenced));
            }
        } else if let Some(id) = parse_checkpoint_dir_name(first) {
            if plan.subsumed.contains(&id) {
                if path.ends_with("/_metadata.json") && parts.clone().count() == 1 {
                    metadata_deletions.push(deletion(DeleteReason::SubsumedMetadata));
                } else {
                    other_deletions.push(deletion(DeleteReason::Subsumed));
                }
            } else if plan.aborted.contains(&id) {
                other_deletions.push(deletion(DeleteReason::Aborted));
            }
        }
    }
    plan.deletions = metadata_deletions;
    plan.deletions.extend(other_deletions);
    plan
}

/// Which completed checkpoints `policy` keeps (the `retain` newest and every pinned one) and
/// which it drops, each ascending.
fn split_by_retention(
    completed: &[CheckpointMetadata],
    pinned: &[u64],
    policy: RetentionPolicy,
) -> (Vec<u64>, Vec<u64>) {
    let mut ids: Vec<u64> = completed.iter().map(|c| c.checkpoint_id).collect();
    ids.sort_unstable();
    let split = ids.len().saturating_sub(policy.retain.max(1));
    let (subsumed, retained) = ids.split_at(split);
    let (held, subsumed): (Vec<u64>, Vec<u64>) =
        subsumed.iter().partition(|id| pinned.contains(id));
    let mut retained: Vec<u64> = held.into_iter().chain(retained.iter().copied()).collect();
    retained.sort_unstable();
    (retained, subsumed)
}

/// The objects of the completed checkpoints `policy` drops, as their metadata names them: the
/// metadata, every handle and every file of the handles, as [`plan_gc`] takes objects (at
/// their checkpoint's completion; metadata and handles with size 0, their size unknown
/// without a listing). Pure.
pub fn subsumed_objects(
    completed: &[CheckpointMetadata],
    pinned: &[u64],
    policy: RetentionPolicy,
) -> Vec<(String, u64, DateTime<Utc>)> {
    let (_, subsumed) = split_by_retention(completed, pinned, policy);
    let mut objects = Vec::new();
    for c in completed
        .iter()
        .filter(|c| subsumed.contains(&c.checkpoint_id))
    {
        let at = c.completed_at;
        objects.push((JobPaths::metadata_file(c.checkpoint_id), 0, at));
        for h in &c.handles {
            objects.push((JobPaths::handle_file(c.checkpoint_id, h.subtask), 0, at));
            objects.extend(h.files().map(|f| (f.path.clone(), f.size, at)));
        }
    }
    objects
}

/// What a plan needs besides the objects: the store's checkpoint ids, the metadata of every
/// completed checkpoint, the handles written so far of in-flight ones, the pinned ids.
struct GcInputs {
    ids: Vec<(u64, bool)>,
    completed: Vec<CheckpointMetadata>,
    in_flight_handles: Vec<SubtaskHandle>,
    pinned: Vec<u64>,
}

async fn read_inputs(store: &CheckpointStore) -> Result<GcInputs> {
    let ids = store.checkpoint_ids().await?;
    let completed_ids: Vec<u64> = ids
        .iter()
        .filter_map(|&(id, done)| done.then_some(id))
        .collect();
    let completed: Vec<CheckpointMetadata> = futures::stream::iter(completed_ids)
        .map(|id| store.read_metadata(id))
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let newest = completed.iter().map(|c| c.checkpoint_id).max();
    let in_flight: Vec<u64> = ids
        .iter()
        .filter(|&&(id, done)| !done && newest.is_none_or(|n| id > n))
        .map(|&(id, _)| id)
        .collect();
    let written: Vec<Vec<(u64, u32)>> = futures::stream::iter(in_flight)
        .map(|id| async move {
            let listed = store.list_under(&store.paths().handles_dir(id)).await?;
            Ok::<_, Error>(
                listed
                    .iter()
                    .filter_map(|m| m.location.filename().and_then(parse_handle_name))
                    .map(|subtask| (id, subtask))
                    .collect(),
            )
        })
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await?;
    let in_flight_handles: Vec<SubtaskHandle> = futures::stream::iter(written.concat())
        .map(|(id, subtask)| store.read_handle(id, subtask))
        .buffered(READS_IN_FLIGHT)
        .try_filter_map(|h| async move { Ok(h) })
        .try_collect()
        .await?;
    let pinned = pinned_ids(&pins(store).await?);
    Ok(GcInputs {
        ids,
        completed,
        in_flight_handles,
        pinned,
    })
}

/// Reads every completed checkpoint, the handles of in-flight ones and lists what `scope`
/// looks at; returns the plan (see [`plan_gc`]). Any unreadable metadata fails the whole
/// collection: nothing is deleted on uncertainty.
pub async fn gc_plan_for_store(
    store: &CheckpointStore,
    scope: GcScope,
    policy: RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<GcPlan> {
    let inputs = read_inputs(store).await?;
    let sweep = match scope {
        GcScope::AfterCompletion => Sweep::after(&inputs.ids),
        GcScope::Everything => None,
    };
    // With nothing completed there is nothing to sweep after: every object is listed.
    let (scope, named, listed) = match &sweep {
        Some(sweep) => (
            GcScope::AfterCompletion,
            subsumed_objects(&inputs.completed, &inputs.pinned, policy),
            swept(store, sweep).await?,
        ),
        None => (GcScope::Everything, Vec::new(), store.list_all().await?),
    };
    // A listed object's own size and time over the metadata's (the later entry wins).
    let objects: BTreeMap<String, (u64, DateTime<Utc>)> = named
        .into_iter()
        .map(|(path, size, at)| (path, (size, at)))
        .chain(listed.iter().map(|m| {
            let path = store.paths().relative(&m.location);
            (path, (m.size, m.last_modified))
        }))
        .collect();
    let objects: Vec<(String, u64, DateTime<Utc>)> = objects
        .into_iter()
        .map(|(path, (size, at))| (path, size, at))
        .collect();
    let plan = plan_gc(
        &objects,
        &inputs.completed,
        &inputs.in_flight_handles,
        &inputs.pinned,
        now,
        policy,
    );
    Ok(GcPlan {
        scope,
        listed: listed.len(),
        ..plan
    })
}

/// The objects `sweep` lists: its incomplete checkpoints' directories and its slice of
/// `shared/`'s directories (and any object right in `shared/`).
async fn swept(store: &CheckpointStore, sweep: &Sweep) -> Result<Vec<ObjectMeta>> {
    let shared = store.list_level(&store.paths().shared_root()).await?;
    let mut dirs: Vec<Path> = shared
        .common_prefixes
        .into_iter()
        .filter(|dir| dir.filename().is_some_and(|name| sweep.lists_shared(name)))
        .collect();
    dirs.extend(
        sweep
            .incomplete
            .iter()
            .map(|&id| store.paths().checkpoint_dir(id)),
    );
    let mut listed = shared.objects;
    listed.extend(store.list_each(dirs).await?);
    Ok(listed)
}

/// Plans a collection of `scope` and, unless `dry_run`, performs it. Returns the plan.
pub async fn collect_garbage(
    store: &CheckpointStore,
    scope: GcScope,
    policy: RetentionPolicy,
    dry_run: bool,
) -> Result<GcPlan> {
    let plan = gc_plan_for_store(store, scope, policy, Utc::now()).await?;
    if !dry_run {
        delete_planned(store, &plan, &|_| {}).await?;
    }
    Ok(plan)
}

/// Deletes what `plan` deletes, calling `deleted` with the count so far after each batch.
pub async fn delete_planned(
    store: &CheckpointStore,
    plan: &GcPlan,
    deleted: &(dyn Fn(usize) + Sync),
) -> Result<()> {
    // Metadata first: a checkpoint stops being "completed" before its files go.
    let (meta, rest): (Vec<_>, Vec<_>) = plan
        .deletions
        .iter()
        .partition(|d| d.reason == DeleteReason::SubsumedMetadata);
    let mut before = 0;
    for batch in [meta, rest] {
        let locations: Result<Vec<Path>> = batch
            .iter()
            .map(|d| store.paths().resolve(&d.path, "garbage collection"))
            .collect();
        store
            .delete_counted(locations?, &|n| deleted(before + n))
            .await?;
        before += batch.len();
    }
    info!(
        job = %store.job(),
        deleted = plan.deletions.len(),
        bytes = plan.bytes(),
        retained = ?plan.retained,
        "garbage collected"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::metadata::{Checksum, FORMAT_VERSION, FileRef, PrivateFile, SharedFile};

    fn meta(id: u64, shared: &[&str]) -> CheckpointMetadata {
        let handle = SubtaskHandle {
            shared: shared
                .iter()
                .map(|s| SharedFile {
                    local_name: s.to_string(),
                    file: FileRef {
                        path: format!("shared/i/{s}"),
                        size: 1,
                        checksum: Checksum(0),
                    },
                    column_family: None,
                    level: None,
                    key_groups: None,
                    order: None,
                })
                .collect(),
            ..crate::checkpoint::testing::handle("ns/j".parse().unwrap(), id, 128, 1, 0)
        };
        CheckpointMetadata {
            format_version: FORMAT_VERSION,
            job: handle.job.clone(),
            checkpoint_id: id,
            epoch: 1,
            parallelism: 1,
            max_parallelism: 128,
            completed_at: Utc::now(),
            handles: vec![handle],
        }
    }

    #[test]
    fn retention_and_grace() {
        let now = Utc::now();
        let old = now - chrono::Duration::hours(1);
        let objects: Vec<(String, u64, DateTime<Utc>)> = [
            ("shared/i/1.sst", now), // young, but a subsumed checkpoint's: no upload
            ("shared/i/2.sst", old),
            ("shared/i/3.sst", old),
            ("shared/i/4.sst", now), // young, unreferenced: an upload in flight
            ("chk-1/_metadata.json", old),
            ("chk-1/handles/0.json", old),
            ("chk-2/_metadata.json", old),
            ("chk-2/handles/0.json", old),
            ("chk-3/handles/0.json", now), // in flight
            ("chk-0/handles/0.json", old), // never completed
            ("elsewhere/x", old),
        ]
        .iter()
        .map(|(p, t)| (p.to_string(), 1, *t))
        .collect();
        let completed = vec![meta(1, &["1.sst", "2.sst"]), meta(2, &["2.sst", "3.sst"])];
        let plan = plan_gc(
            &objects,
            &completed,
            &[],
            &[],
            now,
            RetentionPolicy {
                retain: 1,
                grace: Duration::from_secs(60),
            },
        );
        assert_eq!(plan.retained, vec![2]);
        assert_eq!(plan.subsumed, vec![1]);
        assert_eq!(plan.in_flight, vec![3]);
        assert_eq!(plan.aborted, vec![0]);
        let deleted: Vec<&str> = plan.deletions.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(deleted[0], "chk-1/_metadata.json");
        let mut sorted = deleted.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![
                "chk-0/handles/0.json",
                "chk-1/_metadata.json",
                "chk-1/handles/0.json",
                "shared/i/1.sst"
            ]
        );
        assert_eq!(plan.kept_young, vec!["shared/i/4.sst"]);
    }

    #[test]
    fn a_sweep_lists_older_incomplete_checkpoints_and_a_slice_of_shared() {
        let sweep = Sweep::after(&[(6, false), (7, true), (8, false), (12, true), (13, false)]);
        assert_eq!(
            sweep,
            Some(Sweep {
                incomplete: vec![6, 8],
                shared_slice: 2,
            }),
            "13 may still complete"
        );
        assert_eq!(Sweep::after(&[(3, false)]), None, "nothing completed");
        // Every shared directory falls in exactly one slice, and the slices share them out.
        let names: Vec<String> = (0..200).map(|i| format!("{i:032x}")).collect();
        let mut counts = vec![0; LIST_EVERY as usize];
        for name in &names {
            let slices: Vec<u64> = (0..LIST_EVERY)
                .filter(|&s| {
                    Sweep {
                        incomplete: vec![],
                        shared_slice: s,
                    }
                    .lists_shared(name)
                })
                .collect();
            assert_eq!(slices.len(), 1, "{name}");
            counts[slices[0] as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn subsumed_objects_are_what_their_metadata_names() {
        let mut one = meta(1, &["1.sst", "2.sst"]);
        one.handles[0].private.push(PrivateFile {
            local_name: "MANIFEST-000005".into(),
            file: FileRef {
                path: "chk-1/private/0/i/MANIFEST-000005".into(),
                size: 7,
                checksum: Checksum(0),
            },
        });
        let completed = vec![one, meta(2, &["2.sst"]), meta(3, &["3.sst"])];
        let policy = RetentionPolicy {
            retain: 1,
            grace: Duration::from_secs(60),
        };
        let paths = |pinned: &[u64]| -> Vec<String> {
            let mut p: Vec<String> = subsumed_objects(&completed, pinned, policy)
                .into_iter()
                .map(|(path, _, _)| path)
                .collect();
            p.sort();
            p
        };
        assert_eq!(
            paths(&[2]),
            vec![
                "chk-1/_metadata.json",
                "chk-1/handles/0.json",
                "chk-1/private/0/i/MANIFEST-000005",
                "shared/i/1.sst",
                "shared/i/2.sst",
            ],
            "checkpoint 2 is pinned"
        );
        assert_eq!(paths(&[]).len(), 8);
        // Planned from them, a file a retained checkpoint still uses stays.
        let objects = subsumed_objects(&completed, &[2], policy);
        let plan = plan_gc(&objects, &completed, &[], &[2], Utc::now(), policy);
        let mut deleted: Vec<&str> = plan.deletions.iter().map(|d| d.path.as_str()).collect();
        deleted.sort();
        assert_eq!(
            deleted,
            vec![
                "chk-1/_metadata.json",
                "chk-1/handles/0.json",
                "chk-1/private/0/i/MANIFEST-000005",
                "shared/i/1.sst",
            ]
        );
    }

    #[test]
    fn in_flight_handles_protect_their_files() {
        let now = Utc::now();
        let old = now - chrono::Duration::hours(1);
        let objects = vec![
            ("shared/i/1.sst".to_string(), 1, old),
            ("shared/i/9.sst".to_string(), 1, old),
            ("chk-1/_metadata.json".to_string(), 1, old),
            ("chk-2/handles/0.json".to_string(), 1, now),
        ];
        let inflight = meta(2, &["9.sst"]).handles;
        let plan = plan_gc(
            &objects,
            &[meta(1, &["1.sst"])],
            &inflight,
            &[],
            now,
            RetentionPolicy::default(),
        );
        assert!(plan.deletions.is_empty(), "{:?}", plan.deletions);
    }

    #[test]
    fn pinned_checkpoints_and_their_files_outlive_retention() {
        let now = Utc::now();
        let old = now - chrono::Duration::hours(1);
        let objects: Vec<(String, u64, DateTime<Utc>)> = [
            "shared/i/1.sst",
            "shared/i/2.sst",
            "shared/i/3.sst",
            "chk-1/_metadata.json",
            "chk-2/_metadata.json",
            "chk-3/_metadata.json",
            "chk-4/handles/0.json",
        ]
        .iter()
        .map(|p| (p.to_string(), 1, old))
        .collect();
        let completed = vec![
            meta(1, &["1.sst"]),
            meta(2, &["2.sst"]),
            meta(3, &["3.sst"]),
        ];
        let policy = RetentionPolicy {
            retain: 1,
            grace: Duration::from_secs(60),
        };
        let plan = plan_gc(&objects, &completed, &[], &[1, 4], now, policy);
        assert_eq!(plan.retained, vec![1, 3]);
        assert_eq!(plan.subsumed, vec![2]);
        assert_eq!(
            plan.in_flight,
            vec![4],
            "a pinned checkpoint still being taken"
        );
        let mut deleted: Vec<&str> = plan.deletions.iter().map(|d| d.path.as_str()).collect();
        deleted.sort();
        assert_eq!(deleted, vec!["chk-2/_metadata.json", "shared/i/2.sst"]);
        let unpinned = plan_gc(&objects, &completed, &[], &[], now, policy);
        assert!(unpinned.subsumed.contains(&1) && unpinned.aborted.contains(&4));
    }

    #[test]
    fn manual_gc_takes_the_recorded_retention_or_refuses() {
        let recorded = RecordedRetention {
            format_version: FORMAT_VERSION,
            retain: 3,
            longest_checkpoint_timeout_seconds: 3600,
            updated_at: Utc::now(),
        };
        let ten_min = Duration::from_secs(600);
        let e = manual_policy(None, ten_min, None, "s3://b/p").unwrap_err();
        assert!(
            e.to_string().contains("--retain") && e.to_string().contains("s3://b/p"),
            "{e}"
        );
        let p = manual_policy(None, ten_min, Some(&recorded), "s").unwrap();
        assert_eq!((p.retain, p.grace), (3, Duration::from_secs(3600)));
        let p = manual_policy(Some(1), ten_min, Some(&recorded), "s").unwrap();
        assert_eq!(
            (p.retain, p.grace),
            (1, Duration::from_secs(3600)),
            "a flag overrides the count; the grace never drops below the recorded timeout"
        );
        let p = manual_policy(Some(2), ten_min, None, "s").unwrap();
        assert_eq!((p.retain, p.grace), (2, ten_min));
    }
}
