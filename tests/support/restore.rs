//! Shared by the restore tests: an oracle data set whose every key and value is known, workers
//! that hold it at some parallelism, and checkpoints of them through the real snapshotter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use regroup::backend::{IncrementalSnapshotter, StateBackend};
use regroup::checkpoint::{CheckpointMetadata, CheckpointStore, JobId};
use regroup::keygroup::{KeyGroupRange, key_group_for_key, subtask_for_key_group};
use regroup::restore::{RestoreRequest, RestoreSummary, Strategy, restore_subtask};
use regroup::statedir::marker::LocalCheckpointMarker;

/// Named states (column families) every worker declares.
pub const STATES: [&str; 2] = ["counts", "sessions"];

/// The oracle: (state, user key) → value.
pub type Model = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// Key `i` of the data set.
pub fn key(i: u32) -> Vec<u8> {
    format!("key-{i:07}").into_bytes()
}

/// Value of key `i` in `state` after `version` updates.
pub fn value(state: &str, i: u32, version: u32) -> Vec<u8> {
    format!("{state}:{i}:v{version}:{}", "x".repeat((i % 13) as usize)).into_bytes()
}

pub fn job() -> JobId {
    "tests/restore".parse().unwrap()
}

/// The initial data set: `n` keys in every state, version 0.
pub fn initial_model(n: u32) -> Model {
    let mut m = Model::new();
    for state in STATES {
        for i in 0..n {
            m.insert((state.to_owned(), key(i)), value(state, i, 0));
        }
    }
    m
}

/// Writes the part of `model` that `backend` owns, in three flushed batches followed by a full
/// compaction of the first: so the DB has files at several levels, and overwritten and deleted
/// keys whose newest version lies in a younger file.
pub fn load(backend: &StateBackend, model: &Model) {
    let owned: Vec<_> = model
        .iter()
        .filter(|((_, k), _)| backend.range().contains(backend.key_group_of(k)))
        .collect();
    let mut batch = backend.batch();
    for ((state, k), _) in &owned {
        // A stale version first: must be shadowed by the newer one written below.
        batch.put(state, k, b"stale").unwrap();
    }
    batch.commit().unwrap();
    backend.flush().unwrap();
    backend.compact().unwrap();
    let mut batch = backend.batch();
    for ((state, k), v) in &owned {
        batch.put(state, k, v).unwrap();
    }
    batch.commit().unwrap();
    backend.flush().unwrap();
}

/// Updates every 5th key (a new version) and deletes every 7th key that `backend` owns, in the
/// backend and in the model, then flushes (a younger L0 file over older levels).
pub fn mutate(backend: &StateBackend, model: &mut Model, version: u32) {
    let owned: Vec<(String, Vec<u8>)> = model
        .keys()
        .filter(|(_, k)| backend.range().contains(backend.key_group_of(k)))
        .cloned()
        .collect();
    let mut batch = backend.batch();
    for (state, k) in owned {
        let i: u32 = std::str::from_utf8(&k[4..]).unwrap().parse().unwrap();
        if (i + version).is_multiple_of(7) {
            batch
                .delete_in_group(&state, backend.key_group_of(&k), &k)
                .unwrap();
            model.remove(&(state, k));
        } else if (i + version).is_multiple_of(5) {
            let v = value(&state, i, version);
            batch.put(&state, &k, &v).unwrap();
            model.insert((state, k), v);
        }
    }
    batch.commit().unwrap();
    backend.flush().unwrap();
}

/// Every entry of every state of a backend, checking that each lies in a key group the backend
/// owns and under the right key group.
pub fn contents(backend: &StateBackend) -> Model {
    let mut out = Model::new();
    for state in STATES {
        for (g, k, v) in backend.scan_range(state, backend.range()).unwrap() {
            assert_eq!(
                g,
                backend.key_group_of(&k),
                "key stored under a wrong key group"
            );
            assert!(out.insert((state.to_owned(), k), v).is_none());
        }
    }
    out
}

/// Every key of the DB, whatever its key group, by reading the whole key space: proves the DB
/// holds nothing outside its range.
pub fn all_keys(backend: &StateBackend) -> usize {
    let db = backend.db();
    STATES
        .iter()
        .map(|s| {
            let cf = db.cf_handle(s).unwrap();
            db.iterator_cf(&cf, rocksdb::IteratorMode::Start).count()
        })
        .sum()
}

/// Checks that `backend` holds exactly `expected` and no key outside its range (`what` names it
/// in a failure); returns its contents.
pub fn assert_contents(backend: &StateBackend, expected: &Model, what: &str) -> Model {
    let got = contents(backend);
    assert_eq!(
        all_keys(backend),
        got.len(),
        "{what} holds keys outside {}",
        backend.range()
    );
    assert_eq!(got.len(), expected.len(), "{what}: wrong number of keys");
    assert!(got == *expected, "{what}: contents differ from the oracle");
    got
}

/// The key-group span of every live SST file of the DB lies inside its range (no clip range
/// tombstone survives into a later checkpoint).
pub fn assert_files_inside_range(backend: &StateBackend) {
    let m = backend.max_parallelism();
    for f in backend.db().live_files().unwrap() {
        for k in [f.start_key.as_deref(), f.end_key.as_deref()]
            .into_iter()
            .flatten()
        {
            let g = regroup::keygroup::read_key_group_prefix(k, m).unwrap();
            assert!(
                backend.range().contains(g),
                "file {} of {} holds key group {g} outside {}",
                f.name,
                backend.dir().display(),
                backend.range()
            );
        }
    }
}

/// The test job's `file://` store at `root/store`.
pub fn store_in(root: &Path) -> CheckpointStore {
    let url = format!("file://{}/store", root.display());
    CheckpointStore::from_url(&url, job()).unwrap()
}

/// Checkpoints `backends` (subtasks `0..p` in order) as checkpoint `id` at `epoch` and completes it.
pub async fn checkpoint(
    store: &CheckpointStore,
    backends: &[StateBackend],
    id: u64,
    epoch: u64,
    max_parallelism: u32,
    scratch: &Path,
) -> CheckpointMetadata {
    let p = backends.len() as u32;
    for (i, b) in backends.iter().enumerate() {
        upload(store, b, (i as u32, p), id, epoch, scratch).await;
    }
    complete(store, id, epoch, p, max_parallelism).await
}

/// Opens each worker DB in `dirs` (subtask `i` of `dirs.len()`) in turn, applies
/// [`mutate`] at `version`, snapshots it, closes it; then completes checkpoint `id` at `epoch`.
/// One DB is open at a time, so a thousand subtasks do not exhaust file descriptors.
pub async fn mutate_and_checkpoint(
    store: &CheckpointStore,
    dirs: &[PathBuf],
    model: &mut Model,
    version: u32,
    id: u64,
    max_parallelism: u32,
    scratch: &Path,
) -> CheckpointMetadata {
    let p = dirs.len() as u32;
    for (i, dir) in dirs.iter().enumerate() {
        let range = KeyGroupRange::for_subtask(max_parallelism, p, i as u32).unwrap();
        let b = StateBackend::open(dir, max_parallelism, range, &STATES).unwrap();
        mutate(&b, model, version);
        upload(store, &b, (i as u32, p), id, id, scratch).await;
    }
    complete(store, id, id, p, max_parallelism).await
}

/// Snapshots subtask `i` of `p` as checkpoint `id` (epoch `id`) and uploads its handle.
pub async fn snapshot(
    store: &CheckpointStore,
    b: &StateBackend,
    i: u32,
    p: u32,
    id: u64,
    scratch: &Path,
) {
    upload(store, b, (i, p), id, id, scratch).await;
}

/// Snapshots subtask `i` of `p` as checkpoint `id` at `epoch` and uploads its handle.
async fn upload(
    store: &CheckpointStore,
    b: &StateBackend,
    (i, p): (u32, u32),
    id: u64,
    epoch: u64,
    scratch: &Path,
) {
    let snapshotter = IncrementalSnapshotter::new(b.instance_id(), i, p, epoch);
    let snapshot = snapshotter.capture(b, id, scratch).unwrap();
    snapshotter.upload(snapshot, store).await.unwrap();
}

/// Completes checkpoint `id` of `p` subtasks at `epoch`; every handle must be in.
pub async fn complete(
    store: &CheckpointStore,
    id: u64,
    epoch: u64,
    p: u32,
    max_parallelism: u32,
) -> CheckpointMetadata {
    store
        .try_complete(id, epoch, p, max_parallelism)
        .await
        .unwrap()
        .expect("every handle is in")
}

/// Opens fresh workers at `p` holding `model`.
pub fn workers(dir: &Path, max_parallelism: u32, p: u32, model: &Model) -> Vec<StateBackend> {
    workers_at(max_parallelism, p, model, |i| dir.join(format!("w{i}")))
}

/// Opens fresh workers at `p` holding `model`, worker `i`'s DB at `db(i)`.
pub fn workers_at(
    max_parallelism: u32,
    p: u32,
    model: &Model,
    db: impl Fn(u32) -> PathBuf,
) -> Vec<StateBackend> {
    (0..p)
        .map(|i| {
            let range = KeyGroupRange::for_subtask(max_parallelism, p, i).unwrap();
            let b = StateBackend::open(&db(i), max_parallelism, range, &STATES).unwrap();
            load(&b, model);
            b
        })
        .collect()
}

/// The marker a stop-with-checkpoint leaves in `state_dir` beside the DB (`db/`) of old
/// subtask `i` of `meta`: it says the DB equals that handle, and vouches for its files as they
/// are now.
pub fn local_marker(meta: &CheckpointMetadata, i: u32, state_dir: &Path) -> LocalCheckpointMarker {
    LocalCheckpointMarker::of_local_db(&meta.handles[i as usize], &state_dir.join("db"))
}

/// Restores subtask `i` of `p` with `strategy` into `target`.
pub async fn restore(
    store: &CheckpointStore,
    id: u64,
    i: u32,
    p: u32,
    target: &Path,
    strategy: Strategy,
) -> RestoreSummary {
    let mut request = RestoreRequest::new(Some(id), i, p, target);
    request.strategy = strategy;
    restore_subtask(store, &request).await.unwrap()
}

/// Writes `model` into `p` workers under `root/gen0` (M = 128) and stores their checkpoint 1
/// (epoch 1); the workers' DBs are closed afterwards.
pub async fn first_checkpoint(
    store: &CheckpointStore,
    root: &Path,
    p: u32,
    model: &Model,
) -> CheckpointMetadata {
    let backends = workers(&root.join("gen0"), 128, p, model);
    checkpoint(store, &backends, 1, 1, 128, &root.join("s")).await
}

/// A `file://` store under `root` holding checkpoint 1 of two workers with 2000 keys: its URL,
/// the store, the model and the checkpoint's metadata.
pub async fn two_workers_checkpointed(
    root: &Path,
) -> (String, CheckpointStore, Model, CheckpointMetadata) {
    let url = format!("file://{}/store", root.display());
    let store = store_in(root);
    let model = initial_model(2000);
    let meta = first_checkpoint(&store, root, 2, &model).await;
    (url, store, model, meta)
}

/// The part of `model` that subtask `i` of `p` owns.
pub fn owned(model: &Model, max_parallelism: u32, p: u32, i: u32) -> Model {
    model
        .iter()
        .filter(|((_, k), _)| {
            subtask_for_key_group(max_parallelism, p, key_group_for_key(k, max_parallelism)) == i
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Flips the bits `mask` of the middle byte of the stored file `path` (relative to the job's
/// directory), as a bad disk or network would; returns the file as it was.
pub async fn corrupt_stored_file(store: &CheckpointStore, path: &str, mask: u8) -> Bytes {
    let location = store.paths().resolve(path, "test").unwrap();
    let original = store
        .object_store()
        .get(&location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut bad = original.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= mask;
    store
        .object_store()
        .put(&location, bad.into())
        .await
        .unwrap();
    original
}

/// Every entry of a directory (names only), for "nothing left behind" checks.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// A temporary directory for a test: under `REGROUP_TEST_TMPDIR` if set, else in `/dev/shm`
/// when it exists (RocksDB's and the store's fsyncs make a disk-backed directory several times
/// slower on a shared VM disk), else the system's temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    let base = std::env::var_os("REGROUP_TEST_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("regroup-restore-test-")
        .tempdir_in(base)
        .unwrap()
}
