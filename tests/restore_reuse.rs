//! Local state reused across a rescale (issue 9), against the oracle: pods that keep their
//! volumes (old subtask i's state directory, holding its DB as of a stop-with-checkpoint and
//! the worker's marker, becomes new subtask i's volume) hard-link the files they have and
//! download only the rest; fresh pods download everything. After every restore every key is
//! present once, in its owner, with its value. Plus: a tampered local file, markers of an older
//! checkpoint and of another job, and a crash in the middle of a reusing restore.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regroup::backend::StateBackend;
use regroup::checkpoint::store::checksum_file;
use regroup::checkpoint::{CheckpointMetadata, CheckpointStore};
use regroup::keygroup::KeyGroupRange;
use regroup::restore::{PlanOptions, RestoreRequest, plan_subtask, restore_subtask};
use regroup::statedir::marker::LocalCheckpointMarker;
use support::restore::*;

const M: u32 = 128;
const KEYS: u32 = 3000;

/// Old workers whose DBs live on volumes `root/vol{i}` (DB in `db/`), checkpointed as
/// checkpoint 1, each volume with the marker a stop-with-checkpoint leaves. Each worker then
/// writes (and flushes) a key the checkpoint does not hold, as a worker kept running after the
/// checkpoint would: only files named in the handle may be reused.
struct Volumes {
    root: tempfile::TempDir,
    store: CheckpointStore,
    model: Model,
    meta: CheckpointMetadata,
    /// The writes after the checkpoint, in no checkpoint yet.
    after: Model,
}

impl Volumes {
    async fn new(p: u32) -> Self {
        let root = tempdir();
        let store = store_in(root.path());
        let scratch = root.path().join("scratch");
        let mut model = initial_model(KEYS);
        let mut instances = Vec::new();
        for i in 0..p {
            let range = KeyGroupRange::for_subtask(M, p, i).unwrap();
            let b = StateBackend::open(&Self::db(root.path(), i), M, range, &STATES).unwrap();
            load(&b, &model);
            instances.push(b.instance_id().to_owned());
            drop(b);
        }
        for i in 0..p {
            let range = KeyGroupRange::for_subtask(M, p, i).unwrap();
            let b = StateBackend::open(&Self::db(root.path(), i), M, range, &STATES).unwrap();
            mutate(&b, &mut model, 1);
            snapshot(&store, &b, i, p, 1, &scratch).await;
            instances[i as usize] = b.instance_id().to_owned();
        }
        let meta = complete(&store, 1, 1, p, M).await;
        for i in 0..p {
            let vol = Self::vol(root.path(), i);
            local_marker(&meta, i, &vol).write(&vol).unwrap();
        }
        let mut v = Self {
            root,
            store,
            model,
            meta,
            after: Model::new(),
        };
        v.after = v.write_after_checkpoint(p);
        v
    }

    fn vol(root: &Path, i: u32) -> PathBuf {
        root.join(format!("vol{i}"))
    }

    fn db(root: &Path, i: u32) -> PathBuf {
        Self::vol(root, i).join("db")
    }

    /// A post-checkpoint write in every old DB, flushed into a new SST file.
    fn write_after_checkpoint(&self, p: u32) -> Model {
        let mut after = Model::new();
        for i in 0..p {
            let range = KeyGroupRange::for_subtask(M, p, i).unwrap();
            let b = StateBackend::open(&Self::db(self.root.path(), i), M, range, &STATES).unwrap();
            let owned_key = self
                .model
                .keys()
                .find(|(_, k)| range.contains(b.key_group_of(k)))
                .unwrap()
                .clone();
            let value = b"written after the checkpoint".to_vec();
            b.put(&owned_key.0, &owned_key.1, &value).unwrap();
            b.flush().unwrap();
            after.insert(owned_key, value);
        }
        after
    }

    /// Restores subtask `i` of `p` from checkpoint `id` into `target`.
    async fn restore(
        &self,
        id: u64,
        i: u32,
        p: u32,
        target: &Path,
    ) -> regroup::Result<regroup::restore::RestoreSummary> {
        let request = RestoreRequest::new(Some(id), i, p, target);
        restore_subtask(&self.store, &request).await
    }

    /// Where new subtask `i` restores: the old volume `i` if kept, else a fresh one.
    fn target(&self, i: u32, from: u32, keep: bool) -> PathBuf {
        if keep && i < from {
            Self::db(self.root.path(), i)
        } else {
            self.root.path().join(format!("fresh{i}")).join("db")
        }
    }
}

/// The restored DB of subtask `i` of `p` at `target` holds exactly its part of `model`.
fn check(target: &Path, model: &Model, p: u32, i: u32) -> Model {
    let range = KeyGroupRange::for_subtask(M, p, i).unwrap();
    let backend = StateBackend::open(target, M, range, &STATES).unwrap();
    assert_contents(
        &backend,
        &owned(model, M, p, i),
        &format!("subtask {i}/{p}"),
    )
}

/// Name, size and checksum of every file of `dir`.
fn fingerprint(dir: &Path) -> BTreeMap<String, (u64, regroup::checkpoint::Checksum)> {
    entries(dir)
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                checksum_file(&p).unwrap(),
            )
        })
        .collect()
}

/// Rescales `from` → `to`, with pods keeping their volumes or fresh ones, and checks every
/// new subtask against the oracle and its bytes against the plan.
async fn rescale(from: u32, to: u32, keep: bool) {
    let v = Volumes::new(from).await;
    let mut seen = Model::new();
    let (mut reused, mut downloaded) = (0u64, 0u64);
    for i in 0..to {
        let target = v.target(i, from, keep);
        let summary = v.restore(1, i, to, &target).await.unwrap();
        println!("{from}→{to} keep={keep}: {}", summary.line());
        let remote = plan_subtask(&v.meta, to, i, &PlanOptions::default()).unwrap();
        let local = keep && i < from;
        assert_eq!(summary.local_fallbacks, 0);
        if local {
            // Every new range here intersects old subtask i's: its SSTs come from the volume.
            assert_eq!(summary.local_handle, Some(i));
            let input = remote.inputs.iter().find(|x| x.old_subtask == i).unwrap();
            assert_eq!(summary.reused_files, input.shared_files.len());
            let local_bytes: u64 = input
                .shared_files
                .iter()
                .map(|&f| v.meta.handles[i as usize].shared[f].file.size)
                .sum();
            assert!(local_bytes > 0);
            assert_eq!(summary.reused_bytes, local_bytes);
            // The marker vouches for them in this boot: none is read back.
            assert_eq!(summary.reused_read_back_bytes, 0);
            assert_eq!(
                summary.downloaded_bytes,
                remote.bytes_to_download - local_bytes
            );
            // The marker went with the old DB; nothing else is left on the volume.
            let vol = Volumes::vol(v.root.path(), i);
            assert_eq!(LocalCheckpointMarker::read(&vol).unwrap(), None);
            assert_eq!(entries(&vol), vec![target.clone()]);
        } else {
            assert_eq!(summary.local_handle, None);
            assert_eq!((summary.reused_files, summary.reused_bytes), (0, 0));
            assert_eq!(summary.downloaded_bytes, remote.bytes_to_download);
        }
        reused += summary.reused_bytes;
        downloaded += summary.downloaded_bytes;
        for (k, val) in check(&target, &v.model, to, i) {
            assert!(seen.insert(k, val).is_none(), "a key restored twice");
        }
    }
    assert!(
        seen == v.model,
        "{from}→{to}: the union is not the data set"
    );
    println!("{from}→{to} keep={keep}: reused {reused} B, downloaded {downloaded} B");
}

/// One test per rescale: `name: from, to, keep` runs [`rescale`]`(from, to, keep)`.
macro_rules! rescale_tests {
    ($($name:ident: $from:expr, $to:expr, $keep:expr;)*) => {$(
        #[tokio::test]
        async fn $name() {
            rescale($from, $to, $keep).await;
        }
    )*};
}

rescale_tests! {
    scale_in_2_1_fresh: 2, 1, false;
    scale_in_2_1_kept_volumes: 2, 1, true;
    scale_in_4_3_fresh: 4, 3, false;
    scale_in_4_3_kept_volumes: 4, 3, true;
    scale_out_1_2_fresh: 1, 2, false;
    scale_out_1_2_kept_volumes: 1, 2, true;
    scale_out_3_4_fresh: 3, 4, false;
    scale_out_3_4_kept_volumes: 3, 4, true;
}

#[tokio::test]
async fn same_parallelism_kept_volume_downloads_only_private_files() {
    let v = Volumes::new(2).await;
    let target = v.target(1, 2, true);
    let s = v.restore(1, 1, 2, &target).await.unwrap();
    let h = &v.meta.handles[1];
    assert_eq!(s.reused_files, h.shared.len());
    assert_eq!(
        s.downloaded_bytes,
        h.private.iter().map(|p| p.file.size).sum::<u64>()
    );
    check(&target, &v.model, 2, 1);
}

/// A local file whose content differs from the handle's, or that is missing, is not used:
/// downloaded instead, verified.
#[tokio::test]
async fn tampered_local_file_is_downloaded_instead() {
    let v = Volumes::new(2).await;
    let name = &v.meta.handles[0].shared[0].local_name;
    let path = Volumes::db(v.root.path(), 0).join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    // A new inode: the stored copy may share the old one.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    // Another file of the handle compacted away after the checkpoint: missing locally.
    let gone = &v.meta.handles[0].shared[1].local_name;
    std::fs::remove_file(Volumes::db(v.root.path(), 0).join(gone)).unwrap();
    // A third changed in place, same size, its modification time set back: its change time
    // (which nothing sets back) tells, and reading it back finds the difference.
    let in_place = Volumes::db(v.root.path(), 0).join(&v.meta.handles[0].shared[2].local_name);
    let modified = std::fs::metadata(&in_place).unwrap().modified().unwrap();
    // Past the clock's granularity, so that the change time differs.
    std::thread::sleep(std::time::Duration::from_millis(20));
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&in_place)
            .unwrap();
        f.seek(std::io::SeekFrom::Start(100)).unwrap();
        f.write_all(b"tampered").unwrap();
        f.set_modified(modified).unwrap();
    }
    assert_eq!(
        std::fs::metadata(&in_place).unwrap().modified().unwrap(),
        modified
    );
    let target = v.target(0, 2, true);
    let s = v.restore(1, 0, 1, &target).await.unwrap();
    println!("{}", s.line());
    assert_eq!(s.local_handle, Some(0));
    assert_eq!(s.local_fallbacks, 3);
    assert_eq!(s.reused_files, v.meta.handles[0].shared.len() - 3);
    let h = &v.meta.handles[0].shared;
    assert_eq!(
        s.downloaded_bytes,
        plan_subtask(&v.meta, 1, 0, &PlanOptions::default())
            .unwrap()
            .bytes_to_download
            - s.reused_bytes
    );
    assert_eq!(
        s.reused_bytes,
        h.iter().skip(3).map(|f| f.file.size).sum::<u64>()
    );
    // The others are as the marker recorded them: none read back.
    assert_eq!(s.reused_read_back_bytes, 0);
    assert!(s.line().contains("3 local files unusable"));
    check(&target, &v.model, 1, 0);
}

/// Rewrites volume 0's marker as written in another boot of the node, its files synced
/// before it (`synced`, as the worker writes it) or not (an older worker's); returns it.
fn marker_of_another_boot(v: &Volumes, synced: bool) -> LocalCheckpointMarker {
    let vol = Volumes::vol(v.root.path(), 0);
    let mut marker = LocalCheckpointMarker::read(&vol).unwrap().unwrap();
    assert!(!marker.files_synced);
    if synced {
        marker.sync_files(&Volumes::db(v.root.path(), 0)).unwrap();
    }
    marker.boot_id = Some("another boot".into());
    marker.write(&vol).unwrap();
    marker
}

/// Restores checkpoint 1 whole (parallelism 1) onto volume 0, which it reuses without a
/// fallback, and checks the result against the oracle.
async fn restore_whole_onto_volume_0(v: &Volumes) -> regroup::restore::RestoreSummary {
    let target = v.target(0, 2, true);
    let s = v.restore(1, 0, 1, &target).await.unwrap();
    println!("{}", s.line());
    assert_eq!(s.local_handle, Some(0));
    assert_eq!(s.local_fallbacks, 0);
    assert!(s.reused_bytes > 0);
    check(&target, &v.model, 1, 0);
    s
}

/// A marker written in another boot of the node, its files not synced before it, vouches for
/// nothing (a crash may have lost writes the kernel had not written back): every reused local
/// file is read back, and one that differs is downloaded instead, even with the identity the
/// marker recorded.
#[tokio::test]
async fn marker_of_another_boot_has_every_reused_file_read_back() {
    let v = Volumes::new(2).await;
    let marker = marker_of_another_boot(&v, false);
    assert_eq!(marker.files.len(), v.meta.handles[0].shared.len());
    let s = restore_whole_onto_volume_0(&v).await;
    assert_eq!(s.reused_read_back_bytes, s.reused_bytes);
}

/// A marker whose files were synced before it was written (as the worker writes it) vouches
/// for them in another boot too: nothing is read back. A file changed since is still caught
/// by its identity, read back and, differing, downloaded instead.
#[tokio::test]
async fn synced_marker_of_another_boot_vouches_for_its_files() {
    let v = Volumes::new(2).await;
    marker_of_another_boot(&v, true);
    let s = restore_whole_onto_volume_0(&v).await;
    assert_eq!(s.reused_read_back_bytes, 0);

    // The same volume, one vouched file changed in place (same size, its mtime set back).
    let v = Volumes::new(2).await;
    let marker = marker_of_another_boot(&v, true);
    let name = marker.files.keys().next().unwrap().clone();
    let path = Volumes::db(v.root.path(), 0).join(&name);
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let target = v.target(0, 2, true);
    let s = v.restore(1, 0, 1, &target).await.unwrap();
    println!("{}", s.line());
    assert_eq!(s.local_fallbacks, 1);
    assert_eq!(s.reused_read_back_bytes, 0);
    check(&target, &v.model, 1, 0);
}

/// A marker naming an older checkpoint than the one restored is ignored.
#[tokio::test]
async fn marker_of_an_older_checkpoint_is_ignored() {
    let mut v = Volumes::new(2).await;
    // A second checkpoint of the same DBs (with their post-checkpoint writes); the volumes
    // keep checkpoint 1's markers.
    v.model.extend(std::mem::take(&mut v.after));
    let dirs: Vec<PathBuf> = (0..2).map(|i| Volumes::db(v.root.path(), i)).collect();
    let scratch = v.root.path().join("scratch");
    let meta = mutate_and_checkpoint(&v.store, &dirs, &mut v.model, 2, 2, M, &scratch).await;
    assert_eq!(meta.checkpoint_id, 2);
    let marker = LocalCheckpointMarker::read(&Volumes::vol(v.root.path(), 0))
        .unwrap()
        .unwrap();
    assert_eq!(marker.checkpoint_id, 1);
    let target = v.target(0, 2, true);
    let s = v.restore(2, 0, 1, &target).await.unwrap();
    assert_eq!(s.local_handle, None);
    assert_eq!((s.reused_files, s.reused_bytes), (0, 0));
    assert_eq!(
        s.downloaded_bytes,
        plan_subtask(&meta, 1, 0, &PlanOptions::default())
            .unwrap()
            .bytes_to_download
    );
    check(&target, &v.model, 1, 0);
    // The DB it named was replaced: the marker is gone with it.
    assert_eq!(
        LocalCheckpointMarker::read(&Volumes::vol(v.root.path(), 0)).unwrap(),
        None
    );
}

/// A marker of another job is ignored, even with the same checkpoint id and ranges.
#[tokio::test]
async fn marker_of_another_job_is_ignored() {
    let v = Volumes::new(2).await;
    let vol = Volumes::vol(v.root.path(), 0);
    let mut marker = LocalCheckpointMarker::read(&vol).unwrap().unwrap();
    marker.job = "tests/another".parse().unwrap();
    marker.write(&vol).unwrap();
    let target = v.target(0, 2, true);
    let s = v.restore(1, 0, 1, &target).await.unwrap();
    assert_eq!(s.local_handle, None);
    assert_eq!(s.reused_bytes, 0);
    check(&target, &v.model, 1, 0);
}

/// Finds the stored copy of `relative` (a path relative to the job directory) under `store`.
fn stored(store_dir: &Path, relative: &str) -> PathBuf {
    fn walk(dir: &Path, relative: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = walk(&p, relative) {
                    return Some(f);
                }
            } else if p.to_string_lossy().ends_with(relative) {
                return Some(p);
            }
        }
        None
    }
    walk(store_dir, relative).unwrap_or_else(|| panic!("{relative} not in the store"))
}

/// A restore that fails after linking the local files (a remote file of another input is
/// missing) leaves the old local DB and its marker intact; once the file is back, a retry
/// reuses the local DB and succeeds.
#[tokio::test]
async fn crash_in_a_reusing_restore_leaves_the_old_db_and_a_retry_works() {
    let v = Volumes::new(2).await;
    let vol = Volumes::vol(v.root.path(), 0);
    let db = Volumes::db(v.root.path(), 0);
    let before = fingerprint(&db);
    let marker = LocalCheckpointMarker::read(&vol).unwrap();
    assert!(marker.is_some());
    let missing = stored(
        &v.root.path().join("store"),
        &v.meta.handles[1].shared[0].file.path,
    );
    let aside = v.root.path().join("aside");
    std::fs::rename(&missing, &aside).unwrap();

    let err = v.restore(1, 0, 1, &db).await.unwrap_err();
    println!("failed as expected: {err}");
    assert_eq!(fingerprint(&db), before, "the old local DB changed");
    assert_eq!(LocalCheckpointMarker::read(&vol).unwrap(), marker);
    assert_eq!(
        entries(&vol),
        vec![vol.join("checkpoint-marker.json"), db.clone()],
        "a failed restore left something behind"
    );

    std::fs::rename(&aside, &missing).unwrap();
    let s = v.restore(1, 0, 1, &db).await.unwrap();
    assert_eq!(s.local_handle, Some(0));
    assert_eq!(s.reused_files, v.meta.handles[0].shared.len());
    check(&db, &v.model, 1, 0);
    assert_eq!(LocalCheckpointMarker::read(&vol).unwrap(), None);
}

/// A local DB on another file system than the restore's work directory (here: the volume's
/// `db` a symbolic link to a directory elsewhere) cannot be hard-linked from: its files are
/// downloaded instead, and the restore succeeds.
#[tokio::test]
async fn local_db_on_another_device_is_downloaded_instead() {
    use std::os::unix::fs::MetadataExt;
    let v = Volumes::new(2).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let db = Volumes::db(v.root.path(), 0);
    let moved = elsewhere.path().join("db");
    // `rename` cannot cross devices: copy the DB over, then link it back.
    std::fs::create_dir(&moved).unwrap();
    for e in std::fs::read_dir(&db).unwrap().flatten() {
        std::fs::copy(e.path(), moved.join(e.file_name())).unwrap();
    }
    std::fs::remove_dir_all(&db).unwrap();
    std::os::unix::fs::symlink(&moved, &db).unwrap();
    let cross =
        std::fs::metadata(&moved).unwrap().dev() != std::fs::metadata(v.root.path()).unwrap().dev();

    let s = v.restore(1, 0, 1, &db).await.unwrap();
    println!("cross-device {cross}: {}", s.line());
    assert_eq!(s.local_handle, Some(0));
    let files = v.meta.handles[0].shared.len();
    if cross {
        assert_eq!((s.reused_files, s.local_fallbacks), (0, files));
    } else {
        assert_eq!((s.reused_files, s.local_fallbacks), (files, 0));
    }
    assert_eq!(
        s.downloaded_bytes + s.reused_bytes,
        plan_subtask(&v.meta, 1, 0, &PlanOptions::default())
            .unwrap()
            .bytes_to_download
    );
    check(&db, &v.model, 1, 0);
    // The symbolic link was replaced by the new DB; the directory it pointed to is untouched.
    assert!(!std::fs::symlink_metadata(&db).unwrap().is_symlink());
    assert!(moved.join(&v.meta.handles[0].shared[0].local_name).exists());
}
