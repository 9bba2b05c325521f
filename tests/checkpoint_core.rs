//! The core scenario of incremental checkpoints, run against every store backend: local file
//! system, in-memory and (when configured) S3.
//!
//! Oracle: a `BTreeMap` model of the state at each checkpoint; every restored DB must equal it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use regroup::Error;
use regroup::backend::{IncrementalSnapshotter, StateBackend};
use regroup::checkpoint::metadata::is_options_file;
use regroup::checkpoint::registry::{
    DeleteReason, GcPlan, GcScope, RetentionPolicy, Sweep, collect_garbage,
};
use regroup::checkpoint::{
    CheckpointMetadata, CheckpointStore, INLINE_MAX_BYTES, JobId, PrivateFile,
};
use regroup::keygroup::KeyGroupRange;
use support::restore::corrupt_stored_file;
use support::{cluster, regroup_cmd};

const M: u32 = 128;
type Model = BTreeMap<(String, Vec<u8>), Vec<u8>>;

fn job() -> JobId {
    "tests/core".parse().unwrap()
}

fn write(
    backend: &StateBackend,
    model: &mut Model,
    state: &str,
    keys: std::ops::Range<u32>,
    tag: &str,
) {
    let mut batch = backend.batch();
    for i in keys {
        let key = format!("key-{i:06}").into_bytes();
        let value = format!("{tag}-{i}").into_bytes();
        batch.put(state, &key, &value).unwrap();
        model.insert((state.to_owned(), key), value);
    }
    batch.commit().unwrap();
    backend.flush().unwrap();
}

fn contents(backend: &StateBackend) -> Model {
    let mut out = Model::new();
    for state in ["cold", "hot"] {
        for (g, k, v) in backend.scan(state).unwrap() {
            assert_eq!(
                g,
                backend.key_group_of(&k),
                "key stored under a wrong key group"
            );
            out.insert((state.to_owned(), k), v);
        }
    }
    out
}

/// The one worker of a scenario: a DB of all `M` key groups with `states` at `dir/db`, and its
/// snapshotter (subtask 0 of 1, epoch 1).
fn worker(dir: &Path, states: &[&str]) -> (StateBackend, IncrementalSnapshotter) {
    let range = KeyGroupRange::new(0, M - 1).unwrap();
    let backend = StateBackend::open(&dir.join("db"), M, range, states).unwrap();
    let snapshotter = IncrementalSnapshotter::new(backend.instance_id(), 0, 1, 1);
    (backend, snapshotter)
}

async fn checkpoint(
    backend: &StateBackend,
    snapshotter: &IncrementalSnapshotter,
    store: &CheckpointStore,
    id: u64,
    scratch: &Path,
) -> CheckpointMetadata {
    let snapshot = snapshotter.capture(backend, id, scratch).unwrap();
    let handle = snapshotter.upload(snapshot, store).await.unwrap();
    assert_eq!(handle.checkpoint_id, id);
    let meta = store
        .try_complete(id, 1, 1, M)
        .await
        .unwrap()
        .expect("all handles are in");
    snapshotter.notify_complete(id);
    meta
}

async fn restored_contents(store: &CheckpointStore, id: u64) -> Model {
    let meta = store.read_metadata(id).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    store.download_handle(&meta.handles[0], &db).await.unwrap();
    let backend = StateBackend::open(&db, M, meta.handles[0].key_group_range, &[]).unwrap();
    contents(&backend)
}

/// The stored files under `shared/` the checkpoint references: its SSTs and OPTIONS file.
fn shared_paths(meta: &CheckpointMetadata) -> BTreeSet<String> {
    meta.handles[0]
        .files()
        .map(|f| f.path.clone())
        .filter(|p| p.starts_with("shared/"))
        .collect()
}

/// Every stored object's job-relative path.
async fn stored(store: &CheckpointStore) -> BTreeSet<String> {
    store
        .list_all()
        .await
        .unwrap()
        .iter()
        .map(|m| store.paths().relative(&m.location))
        .collect()
}

async fn stored_shared(store: &CheckpointStore) -> BTreeSet<String> {
    stored(store)
        .await
        .into_iter()
        .filter(|p| p.starts_with("shared/"))
        .collect()
}

/// Checkpoint 1; more writes and a compaction of one state; checkpoint 2 uploads only new SSTs;
/// both restore exactly; GC with retention 1 deletes exactly what only checkpoint 1 used.
async fn incremental_scenario(store: CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, snapshotter) = worker(dir.path(), &["cold", "hot"]);
    let scratch = dir.path().join("snapshots");
    let mut model = Model::new();

    write(&backend, &mut model, "cold", 0..3000, "c");
    write(&backend, &mut model, "hot", 0..3000, "h1");
    write(&backend, &mut model, "hot", 3000..4000, "h1");
    let model1 = model.clone();
    assert_eq!(contents(&backend), model1);
    let c1 = checkpoint(&backend, &snapshotter, &store, 1, &scratch).await;
    let h1 = &c1.handles[0];
    assert!(
        h1.shared.len() >= 3,
        "expected several SST files, got {:?}",
        h1.shared
    );
    assert_eq!(
        h1.bytes_uploaded, h1.bytes_total,
        "the first checkpoint uploads everything"
    );
    assert!(
        h1.shared
            .iter()
            .all(|s| s.key_groups.is_some() && s.level.is_some())
    );
    let after1 = stored_shared(&store).await;
    assert_eq!(after1, shared_paths(&c1));

    // More writes to "hot", overwriting and adding, then a full compaction of "hot" only.
    write(&backend, &mut model, "hot", 2000..5000, "h2");
    let hot = backend.db().cf_handle("hot").unwrap();
    let mut opts = rocksdb::CompactOptions::default();
    opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
    backend
        .db()
        .compact_range_cf_opt(&hot, None::<&[u8]>, None::<&[u8]>, &opts);
    drop(hot);
    let model2 = model.clone();
    let c2 = checkpoint(&backend, &snapshotter, &store, 2, &scratch).await;
    let h2 = &c2.handles[0];

    let (s1, s2) = (shared_paths(&c1), shared_paths(&c2));
    let reused: BTreeSet<_> = s1.intersection(&s2).cloned().collect();
    let new: BTreeSet<_> = s2.difference(&s1).cloned().collect();
    let only1: BTreeSet<_> = s1.difference(&s2).cloned().collect();
    assert!(
        !reused.is_empty(),
        "the cold state's SSTs are referenced again"
    );
    assert!(!new.is_empty(), "the compaction's output is uploaded");
    assert!(!only1.is_empty(), "compaction merged files away");
    // Checkpoint 2 uploaded exactly the new SSTs plus its own private files.
    let new_bytes: u64 = h2
        .shared
        .iter()
        .filter(|s| new.contains(&s.file.path))
        .map(|s| s.file.size)
        .sum();
    let own: Vec<&PrivateFile> = h2
        .private
        .iter()
        .filter(|p| p.file.path.starts_with("chk-2/"))
        .collect();
    let private_bytes: u64 = own.iter().map(|p| p.file.size).sum::<u64>()
        + h2.inline.iter().map(|i| i.size).sum::<u64>();
    assert_eq!(h2.bytes_uploaded, new_bytes + private_bytes);
    // CURRENT travels in the handle; the OPTIONS file is the one checkpoint 1 stored for the
    // DB instance; only larger private files are objects of the checkpoint's own.
    assert!(
        h2.inline.iter().any(|i| i.local_name == "CURRENT"),
        "{h2:?}"
    );
    assert!(h2.inline.iter().all(|i| i.size <= INLINE_MAX_BYTES));
    assert!(h2.private.iter().all(|p| p.file.size > INLINE_MAX_BYTES));
    let options = |h: &regroup::checkpoint::SubtaskHandle| {
        h.private
            .iter()
            .find(|p| is_options_file(&p.local_name))
            .map(|p| p.file.clone())
    };
    let o2 = options(h2).expect("an OPTIONS file");
    assert_eq!(
        Some(&o2),
        options(h1).as_ref(),
        "stored once, referenced again"
    );
    assert!(
        o2.path
            .starts_with(&format!("shared/{}/OPTIONS-", h2.instance_id)),
        "{o2:?}"
    );
    let private_dir = format!("chk-2/private/0/{}/", h2.instance_id);
    let stored_private: BTreeSet<String> = stored(&store)
        .await
        .into_iter()
        .filter(|p| p.starts_with(&private_dir))
        .collect();
    let referenced: BTreeSet<String> = own.iter().map(|p| p.file.path.clone()).collect();
    assert_eq!(
        stored_private, referenced,
        "no object for what the handle carries"
    );
    assert_eq!(
        stored_shared(&store).await,
        &after1 | &new,
        "nothing else was uploaded"
    );
    // Reused references are the very same objects as checkpoint 1's.
    for s in h2.shared.iter().filter(|s| reused.contains(&s.file.path)) {
        let before = h1
            .shared
            .iter()
            .find(|b| b.file.path == s.file.path)
            .unwrap();
        assert_eq!(before.file, s.file);
    }

    // Both retained checkpoints restore to exactly the state they captured.
    assert_eq!(restored_contents(&store, 1).await, model1);
    assert_eq!(restored_contents(&store, 2).await, model2);

    // A dry run deletes nothing.
    let policy = RetentionPolicy {
        retain: 1,
        grace: Duration::ZERO,
    };
    let before = store.list_all().await.unwrap().len();
    let everything = collect_garbage(&store, GcScope::Everything, policy, true)
        .await
        .unwrap();
    assert_eq!(store.list_all().await.unwrap().len(), before);

    // After checkpoint 2, with nothing left over, the operator's collection plans from the
    // dropped checkpoint's metadata: the same deletions a listing of every object gives.
    let plan = collect_garbage(&store, GcScope::AfterCompletion, policy, false)
        .await
        .unwrap();
    assert_eq!(plan.scope, GcScope::AfterCompletion);
    let paths =
        |p: &GcPlan| -> BTreeSet<String> { p.deletions.iter().map(|d| d.path.clone()).collect() };
    assert_eq!(paths(&plan), paths(&everything));
    assert_eq!(plan.retained, vec![2]);
    assert_eq!(plan.subsumed, vec![1]);
    let deleted_shared: BTreeSet<String> = plan
        .deletions
        .iter()
        .filter(|d| d.reason == DeleteReason::Unreferenced)
        .map(|d| d.path.clone())
        .collect();
    assert_eq!(
        deleted_shared, only1,
        "GC deletes exactly the files only checkpoint 1 used"
    );
    assert_eq!(stored_shared(&store).await, s2);
    assert_eq!(store.completed_ids().await.unwrap(), vec![2]);
    assert!(
        store
            .list_all()
            .await
            .unwrap()
            .iter()
            .all(|m| !store.paths().relative(&m.location).starts_with("chk-1/"))
    );
    assert_eq!(restored_contents(&store, 2).await, model2);

    // Checkpoint 3 aborts, leaving a handle, and two uploads no handle names are left behind,
    // one in the slice of `shared/` the collection after checkpoint 4 lists, one in another.
    write(&backend, &mut model, "hot", 5000..6000, "h3");
    let model4 = model.clone();
    store
        .put_json(&store.paths().handle(3, 0), h2)
        .await
        .unwrap();
    let sweep = Sweep::after(&[(3, false), (4, true)]).unwrap();
    let orphan = |swept: bool| {
        let name = (0..)
            .map(|i| format!("gone-{i}"))
            .find(|name| sweep.lists_shared(name) == swept)
            .unwrap();
        format!("shared/{name}/000009.sst")
    };
    let (swept, unswept) = (orphan(true), orphan(false));
    for path in [&swept, &unswept] {
        let location = store.paths().resolve(path, "test").unwrap();
        store.put_json(&location, &0).await.unwrap();
    }
    let c4 = checkpoint(&backend, &snapshotter, &store, 4, &scratch).await;
    let mut kept: BTreeSet<String> = c4.handles[0].files().map(|f| f.path.clone()).collect();
    kept.extend(["chk-4/_metadata.json".into(), "chk-4/handles/0.json".into()]);

    // Once checkpoint 4 completes, the operator's collection deletes checkpoint 2 (retention),
    // the aborted directory and the orphan of its slice; the other waits for its own turn.
    let plan = collect_garbage(&store, GcScope::AfterCompletion, policy, false)
        .await
        .unwrap();
    assert_eq!((&plan.subsumed, &plan.aborted), (&vec![2], &vec![3]));
    assert!(plan.deletions.iter().any(|d| d.path == swept));
    let mut left = kept.clone();
    left.insert(unswept.clone());
    assert_eq!(stored(&store).await, left);
    assert_eq!(restored_contents(&store, 4).await, model4);

    // A listing of every object finds the other; checkpoint 4 remains and restores exactly.
    let plan = collect_garbage(&store, GcScope::Everything, policy, false)
        .await
        .unwrap();
    let deleted: Vec<&str> = plan.deletions.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(deleted, vec![unswept.as_str()]);
    assert_eq!(stored(&store).await, kept);
    assert_eq!(restored_contents(&store, 4).await, model4);
}

/// A flipped byte in an SST, a missing file and a `../` path are each refused with an error
/// naming the file; nothing is left in the target directory.
async fn fault_scenario(store: CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, snapshotter) = worker(dir.path(), &["cold", "hot"]);
    let mut model = Model::new();
    write(&backend, &mut model, "cold", 0..500, "c");
    let meta = checkpoint(&backend, &snapshotter, &store, 1, &dir.path().join("s")).await;
    let handle = meta.handles[0].clone();
    let sst = handle.shared[0].file.clone();
    let location = store.paths().resolve(&sst.path, "test").unwrap();

    // Corrupted byte.
    let original = corrupt_stored_file(&store, &sst.path, 0x40).await;
    let target = dir.path().join("restore-corrupt");
    let e = store.download_handle(&handle, &target).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains(&sst.path) && e.to_string().contains("checksum"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing is written"
    );

    // Missing file.
    store.object_store().delete(&location).await.unwrap();
    let target = dir.path().join("restore-missing");
    let e = store.download_handle(&handle, &target).await.unwrap_err();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains(&sst.path), "{e}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    store
        .object_store()
        .put(&location, original.into())
        .await
        .unwrap();

    // A handle whose path escapes the job directory, written by a rogue or buggy worker.
    let mut rogue = handle.clone();
    rogue.checkpoint_id = 7;
    rogue.private.clear();
    rogue.shared[0].file.path = "shared/../../../etc/passwd".into();
    let handle_path = store.paths().handle(7, 0);
    store
        .put_json_if_absent(&handle_path, &rogue)
        .await
        .unwrap();
    let e = store.read_handle(7, 0).await.unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
    assert!(e.to_string().contains("chk-7/handles/0.json"), "{e}");
    let target = dir.path().join("restore-escape");
    let e = store.download_handle(&rogue, &target).await.unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
    assert!(!target.exists(), "nothing is written");
    assert!(
        store.try_complete(7, 1, 1, M).await.is_err(),
        "a checkpoint with a rogue handle never completes"
    );

    // A carried file whose bytes are not the ones the handle's checksum was taken of.
    let mut altered = handle.clone();
    altered.checkpoint_id = 9;
    altered.private.clear();
    altered.inline[0].content.push(b'x');
    altered.inline[0].size += 1;
    store
        .put_json_if_absent(&store.paths().handle(9, 0), &altered)
        .await
        .unwrap();
    let e = store.read_handle(9, 0).await.unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let named = format!(
        "chk-9/handles/0.json: inline file {}",
        altered.inline[0].local_name
    );
    assert!(e.to_string().contains(&named), "{e}");
    let target = dir.path().join("restore-altered");
    let e = store.download_handle(&altered, &target).await.unwrap_err();
    assert!(e.to_string().contains(&named), "{e}");
    assert!(!target.exists(), "nothing is written");

    // Unknown format version.
    let mut v = serde_json::to_value(&handle).unwrap();
    v["formatVersion"] = 9.into();
    store
        .put_json_if_absent(&store.paths().handle(8, 0), &v)
        .await
        .unwrap();
    let e = store.read_handle(8, 0).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("unsupported format version 9 in chk-8/handles/0.json"),
        "{e}"
    );

    // Metadata is written once.
    let e = store.write_handle(&handle).await.unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    // The intact checkpoint still restores.
    let target = dir.path().join("restore-ok");
    store.download_handle(&handle, &target).await.unwrap();
}

/// Aborted uploads are never reused; a checkpoint after an abort uploads its files again.
async fn abort_scenario(store: CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, snapshotter) = worker(dir.path(), &["cold"]);
    let scratch = dir.path().join("s");
    let mut model = Model::new();
    write(&backend, &mut model, "cold", 0..500, "c");
    let snapshot = snapshotter.capture(&backend, 1, &scratch).unwrap();
    let h1 = snapshotter.upload(snapshot, &store).await.unwrap();
    assert_eq!(store.written_handles(1, 2).await.unwrap(), 1);
    assert_eq!(
        store.written_handles(1, 0).await.unwrap(),
        0,
        "only subtasks below the parallelism count"
    );
    assert!(
        store.try_complete(1, 1, 2, M).await.unwrap().is_none(),
        "subtask 1 has not written its handle"
    );
    snapshotter.notify_aborted(1);
    let c2 = checkpoint(&backend, &snapshotter, &store, 2, &scratch).await;
    assert_eq!(
        c2.handles[0].bytes_uploaded, c2.handles[0].bytes_total,
        "nothing of the aborted checkpoint is reused"
    );
    assert_eq!(h1.shared.len(), c2.handles[0].shared.len());
    let c3 = checkpoint(&backend, &snapshotter, &store, 3, &scratch).await;
    let h3 = &c3.handles[0];
    let private: u64 = h3
        .private
        .iter()
        .filter(|p| p.file.path.starts_with("chk-3/"))
        .map(|p| p.file.size)
        .sum::<u64>()
        + h3.inline.iter().map(|i| i.size).sum::<u64>();
    assert_eq!(
        h3.bytes_uploaded, private,
        "an unchanged DB uploads only its checkpoint's own private files"
    );
    assert!(
        h3.private
            .iter()
            .any(|p| is_options_file(&p.local_name) && p.file.path.starts_with("shared/")),
        "the OPTIONS file checkpoint 2 uploaded again after the abort is referenced: {h3:?}"
    );
}

/// A worker restarted in the middle of a checkpoint takes it again with a new DB instance: the
/// second attempt finds the first one's handle, returns it and leaves its files alone, so the
/// checkpoint restores what the first attempt captured.
async fn second_attempt_scenario(store: CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("s");
    let mut model = Model::new();
    let first = {
        let (backend, snapshotter) = worker(dir.path(), &["cold", "hot"]);
        write(&backend, &mut model, "cold", 0..500, "first");
        let snapshot = snapshotter.capture(&backend, 1, &scratch).unwrap();
        snapshotter.upload(snapshot, &store).await.unwrap()
    };
    let captured = model.clone();
    // The restarted worker: the same DB, another instance, more writes, the same checkpoint id.
    let (backend, snapshotter) = worker(dir.path(), &["cold", "hot"]);
    assert_ne!(backend.instance_id(), first.instance_id);
    write(&backend, &mut model, "cold", 0..800, "second");
    let snapshot = snapshotter.capture(&backend, 1, &scratch).unwrap();
    let second = snapshotter.upload(snapshot, &store).await.unwrap();
    assert_eq!(second, first, "the first attempt's handle stands");
    let meta = store.try_complete(1, 1, 1, M).await.unwrap().unwrap();
    assert_eq!(
        restored_contents(&store, meta.checkpoint_id).await,
        captured
    );
    // Its files are never reused by the second instance (another instance's names).
    snapshotter.notify_complete(1);
    let c2 = checkpoint(&backend, &snapshotter, &store, 2, &scratch).await;
    assert_eq!(c2.handles[0].bytes_uploaded, c2.handles[0].bytes_total);
    assert_eq!(restored_contents(&store, 2).await, model);
}

/// Completion is idempotent (an operator that died after writing `_metadata.json` completes the
/// same checkpoint again), and a checkpoint whose handle references a file that is not in the
/// store never completes.
async fn completion_scenario(store: CheckpointStore) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, snapshotter) = worker(dir.path(), &["cold", "hot"]);
    let scratch = dir.path().join("s");
    let mut model = Model::new();
    write(&backend, &mut model, "cold", 0..300, "c");
    let meta = checkpoint(&backend, &snapshotter, &store, 1, &scratch).await;
    let again = store.try_complete(1, 1, 1, M).await.unwrap();
    assert_eq!(
        again.as_ref(),
        Some(&meta),
        "completing again returns the record"
    );

    write(&backend, &mut model, "cold", 300..600, "c");
    let snapshot = snapshotter.capture(&backend, 2, &scratch).unwrap();
    let handle = snapshotter.upload(snapshot, &store).await.unwrap();
    let gone = &handle.shared.last().unwrap().file.path;
    store
        .delete_all(vec![store.paths().resolve(gone, "test").unwrap()])
        .await
        .unwrap();
    let e = store.try_complete(2, 1, 1, M).await.unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { file, .. } if file == gone),
        "{e}"
    );
    assert_eq!(store.completed_ids().await.unwrap(), vec![1]);
}

async fn run_all(make: impl Fn(&str) -> CheckpointStore) {
    incremental_scenario(make("incremental")).await;
    fault_scenario(make("faults")).await;
    abort_scenario(make("abort")).await;
    second_attempt_scenario(make("second-attempt")).await;
    completion_scenario(make("completion")).await;
}

#[tokio::test]
async fn local_file_system() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}", root.path().display());
    run_all(|name| CheckpointStore::from_url(&format!("{url}/{name}"), job()).unwrap()).await;
}

#[tokio::test]
async fn in_memory() {
    let mem: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    run_all(|name| CheckpointStore::new(mem.clone(), ObjectPath::from(name), job())).await;
}

#[tokio::test]
async fn s3_compatible() {
    let Some(bucket) = cluster::s3_bucket("s3_compatible") else {
        return;
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    run_all(|name| {
        CheckpointStore::from_url(&format!("s3://{bucket}/core-{run}/{name}"), job()).unwrap()
    })
    .await;
}

/// `regroup checkpoints list|show --files|gc --dry-run` on a store the scenario produced.
#[tokio::test]
async fn cli_prints_the_reference_table() {
    let root = tempfile::tempdir().unwrap();
    let url = format!("file://{}/cli", root.path().display());
    let store = CheckpointStore::from_url(&url, job()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let backend = StateBackend::open(
        &dir.path().join("db"),
        M,
        KeyGroupRange::new(0, M - 1).unwrap(),
        &["cold", "hot"],
    )
    .unwrap();
    let snapshotter = IncrementalSnapshotter::new(backend.instance_id(), 0, 1, 1);
    let mut model = Model::new();
    write(&backend, &mut model, "cold", 0..300, "c");
    let c1 = checkpoint(&backend, &snapshotter, &store, 1, &dir.path().join("s")).await;
    write(&backend, &mut model, "hot", 0..300, "h");
    checkpoint(&backend, &snapshotter, &store, 2, &dir.path().join("s")).await;

    let run = |args: &[&str]| {
        support::run(regroup_cmd().args(["checkpoints"]).args(args).args([
            "--store",
            &url,
            "--job",
            "tests/core",
        ]))
    };
    let list = run(&["list"]);
    assert!(list.contains("completed"), "{list}");
    assert_eq!(list.lines().count(), 3, "{list}");
    // -o json: the same checkpoints, for scripts.
    let listed: serde_json::Value = serde_json::from_str(&run(&["list", "-o", "json"])).unwrap();
    let ids: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2], "{listed}");
    assert_eq!(listed[1]["completed"], true);
    assert!(listed[1]["bytesTotal"].as_u64().unwrap() > 0, "{listed}");
    let shown: serde_json::Value =
        serde_json::from_str(&run(&["show", "--checkpoint", "1", "--output", "json"])).unwrap();
    assert_eq!(shown["checkpoints"][0]["checkpointId"], 1, "{shown}");
    assert_eq!(
        shown["checkpoints"][0]["handles"][0]["shared"][0]["file"]["path"],
        c1.handles[0].shared[0].file.path.as_str()
    );
    let show = run(&["show", "--files"]);
    println!("{show}");
    assert!(show.contains("REFERENCED BY"), "{show}");
    let cold_file = &c1.handles[0].shared[0].file.path;
    let line = show
        .lines()
        .find(|l| l.starts_with(cold_file.as_str()))
        .expect("cold file listed");
    assert!(line.trim_end().ends_with("1,2"), "{line}");
    let gc = run(&["gc", "--dry-run", "--grace", "0s", "--retain", "1"]);
    assert!(gc.contains("would delete"), "{gc}");
    // Without --retain and without a retention recorded by the operator, gc does not guess.
    let out = regroup_cmd()
        .args(["checkpoints", "gc", "--store", &url, "--job", "tests/core"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "gc ran without a retention");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--retain") && err.contains("_retention.json"),
        "{err}"
    );
    // With the operator's record, gc keeps what the job keeps and waits as long as its timeout.
    regroup::checkpoint::registry::record_retention(&store, 2, Duration::from_secs(3600))
        .await
        .unwrap();
    let gc = run(&["gc"]);
    assert!(gc.contains("policy: retain 2, grace 1h"), "{gc}");
    assert_eq!(
        store.completed_ids().await.unwrap(),
        vec![1, 2],
        "dry run deleted nothing"
    );

    // A bad job name is refused with a clear message naming the value.
    let out = regroup_cmd()
        .args(["checkpoints", "list", "--store", &url, "--job", "no-slash"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-slash") && err.contains("NAMESPACE/NAME"),
        "{err}"
    );
}

/// Serves 403 to every request and records each request line, standing in for both an S3
/// endpoint and the instance-metadata service.
async fn recording_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let Ok(n) = conn.read(&mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..n]);
                log.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or("").to_string());
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    (url, seen)
}

/// The operator's stores (`Ambient::Forbidden`) never borrow an identity from around the
/// process: without credentials in the settings, requests go unsigned instead of to the
/// instance-metadata service.
#[tokio::test]
async fn forbidden_ambient_never_asks_instance_metadata() {
    use regroup::checkpoint::store::{Ambient, object_store_from_url_with};
    let (url, seen) = recording_server().await;
    let settings: BTreeMap<String, String> = [
        ("AWS_ENDPOINT", url.as_str()),
        ("AWS_METADATA_ENDPOINT", url.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let (store, prefix) =
        object_store_from_url_with("s3://bucket/prefix", &settings, Ambient::Forbidden).unwrap();
    let listed = store.list_with_delimiter(Some(&prefix)).await;
    assert!(listed.is_err(), "the recording server refuses everything");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|line| !line.contains("/latest/")),
        "asked the instance-metadata service: {seen:?}"
    );
    assert!(
        seen.iter().any(|line| line.contains("/bucket")),
        "the request reached the endpoint unsigned: {seen:?}"
    );
}
