//! A missing file, a checksum mismatch, a failed download and a connection dropped mid-transfer
//! each fail the restore with an error naming the file, and leave neither a target nor
//! temporary files. A store that holds back one handle's files shows that the restore ingests
//! each handle while the next downloads.

mod support;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions,
};
use regroup::Error;
use regroup::checkpoint::{CheckpointMetadata, CheckpointStore};
use regroup::restore::{RestoreRequest, Strategy, restore_subtask};
use support::restore::*;

/// An in-memory store whose `get` of one path fails, as a flaky network would (at once, or
/// after the first half of the object arrived), and whose gets of the `gate`'s paths wait until
/// its condition holds.
#[derive(Debug)]
struct FailingGets {
    inner: InMemory,
    fail: std::sync::Mutex<Option<(ObjectPath, Failure)>>,
    gate: std::sync::Mutex<Option<Gate>>,
}

/// How a get fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The request fails.
    AtOnce,
    /// The connection drops after half of the object's bytes.
    MidTransfer,
}

/// Gets of `paths` (suffixes of object locations) wait until some `.sst` file is in a restore's
/// DB directory under `state` (an input was merged), for at most a minute.
#[derive(Debug, Clone)]
struct Gate {
    paths: Vec<String>,
    state: std::path::PathBuf,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl Gate {
    fn merged_something(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.state) else {
            return false;
        };
        entries.flatten().any(|work| {
            std::fs::read_dir(work.path().join("db")).is_ok_and(|db| {
                db.flatten()
                    .any(|f| f.file_name().to_string_lossy().ends_with(".sst"))
            })
        })
    }

    async fn wait(&self, location: &ObjectPath) -> object_store::Result<()> {
        if !self
            .paths
            .iter()
            .any(|p| location.as_ref().ends_with(p.as_str()))
        {
            return Ok(());
        }
        self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..6000 {
            if self.merged_something() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(object_store::Error::Generic {
            store: "FailingGets",
            source: "held back for a minute: nothing was merged before this download".into(),
        })
    }
}

impl fmt::Display for FailingGets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingGets({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailingGets {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.wait(location).await?;
        }
        let failure = self
            .fail
            .lock()
            .unwrap()
            .as_ref()
            .filter(|(path, _)| path == location)
            .map(|(_, failure)| *failure);
        let reset = || object_store::Error::Generic {
            store: "FailingGets",
            source: "connection reset by peer".into(),
        };
        match failure {
            None => self.inner.get_opts(location, options).await,
            Some(Failure::AtOnce) => Err(reset()),
            Some(Failure::MidTransfer) => {
                let bytes = self
                    .inner
                    .get_opts(location, options.clone())
                    .await?
                    .bytes()
                    .await?;
                let half = bytes.slice(..bytes.len() / 2);
                let chunks = futures::stream::iter([Ok(half), Err(reset())]);
                Ok(GetResult {
                    payload: GetResultPayload::Stream(chunks.boxed()),
                    ..self.inner.get_opts(location, options).await?
                })
            }
        }
    }
    async fn get_ranges(
        &self,
        location: &ObjectPath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&ObjectPath>,
        offset: &ObjectPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
    async fn rename_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// An empty store whose gets can be made to fail or wait.
fn faulty_store() -> (Arc<FailingGets>, CheckpointStore) {
    let faulty = Arc::new(FailingGets {
        inner: InMemory::new(),
        fail: Default::default(),
        gate: Default::default(),
    });
    let store = CheckpointStore::new(faulty.clone(), ObjectPath::from("faults"), job());
    (faulty, store)
}

/// A checkpoint at parallelism 2 in a store whose gets can be made to fail.
async fn setup(root: &std::path::Path) -> (Arc<FailingGets>, CheckpointStore, CheckpointMetadata) {
    let (faulty, store) = faulty_store();
    let model = initial_model(1500);
    let meta = first_checkpoint(&store, root, 2, &model).await;
    (faulty, store, meta)
}

/// Restores subtask 1 of 3 (fed by both handles) with `strategy` into `root/state/db`,
/// expecting a failure; checks nothing is left in `root/state`.
async fn failing_restore(
    store: &CheckpointStore,
    root: &std::path::Path,
    strategy: Strategy,
) -> Error {
    let parent = root.join("state");
    std::fs::create_dir_all(&parent).unwrap();
    let mut request = RestoreRequest::new(Some(1), 1, 3, &parent.join("db"));
    request.strategy = strategy;
    let e = restore_subtask(store, &request).await.unwrap_err();
    assert_eq!(
        entries(&parent),
        Vec::<std::path::PathBuf>::new(),
        "restore left files behind after: {e}"
    );
    e
}

/// An SST file of handle 1 that the restore of subtask 1 of 3 needs.
fn needed_file(meta: &CheckpointMetadata) -> String {
    meta.handles[1]
        .shared
        .iter()
        .map(|s| s.file.path.clone())
        .next_back()
        .unwrap()
}

#[tokio::test]
async fn missing_file() {
    let root = tempdir();
    let (_, store, meta) = setup(root.path()).await;
    let path = needed_file(&meta);
    let location = store.paths().resolve(&path, "test").unwrap();
    store.object_store().delete(&location).await.unwrap();
    for strategy in [Strategy::Ingest, Strategy::Copy] {
        let e = failing_restore(&store, root.path(), strategy).await;
        assert!(matches!(e, Error::MissingFile { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&path) && text.contains("chk-1/handles/1.json"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn checksum_mismatch() {
    let root = tempdir();
    let (_, store, meta) = setup(root.path()).await;
    let path = needed_file(&meta);
    corrupt_stored_file(&store, &path, 0x01).await;
    for strategy in [Strategy::Ingest, Strategy::Copy] {
        let e = failing_restore(&store, root.path(), strategy).await;
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(&path) && text.contains("checksum"), "{text}");
    }
}

#[tokio::test]
async fn failed_download() {
    failed_get(Failure::AtOnce).await;
}

/// Half of a file arrived (written, direct I/O for `ingest`, page cache for `copy`) when the
/// connection dropped: the partial file is removed with everything else.
#[tokio::test]
async fn download_dropped_mid_transfer() {
    failed_get(Failure::MidTransfer).await;
}

/// A get of a needed file fails as `failure` says: both strategies fail with a retryable
/// error naming the object and leave nothing behind; once the store recovers, the restore
/// succeeds.
async fn failed_get(failure: Failure) {
    let root = tempdir();
    let (faulty, store, meta) = setup(root.path()).await;
    let path = needed_file(&meta);
    let location = store.paths().resolve(&path, "test").unwrap();
    *faulty.fail.lock().unwrap() = Some((location.clone(), failure));
    for strategy in [Strategy::Ingest, Strategy::Copy] {
        let e = failing_restore(&store, root.path(), strategy).await;
        assert!(matches!(e, Error::Store { .. }), "{e}");
        assert!(e.is_retryable());
        let text = e.to_string();
        assert!(
            text.contains(location.as_ref()) && text.contains("connection reset"),
            "{text}"
        );
    }
    // Once the store recovers, the same restore succeeds and an old target is replaced only
    // by a complete DB.
    *faulty.fail.lock().unwrap() = None;
    let target = root.path().join("state").join("db");
    let summary = restore(&store, 1, 1, 3, &target, Strategy::Ingest).await;
    assert!(summary.downloaded_bytes > 0);
    assert_eq!(entries(&root.path().join("state")), vec![target]);
}

#[tokio::test]
async fn bad_requests_name_the_value() {
    let root = tempdir();
    let (_, store, _) = setup(root.path()).await;
    let target = root.path().join("t");
    let e = restore_subtask(&store, &RestoreRequest::new(Some(1), 3, 3, &target))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("subtask = 3"), "{e}");
    let e = restore_subtask(&store, &RestoreRequest::new(Some(1), 0, 129, &target))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("parallelism = 129"), "{e}");
    let e = restore_subtask(&store, &RestoreRequest::new(Some(9), 0, 1, &target))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("chk-9/_metadata.json"), "{e}");
    let mut request = RestoreRequest::new(Some(1), 0, 1, &target);
    request.overlap_fraction_threshold = -1.0;
    let e = restore_subtask(&store, &request).await.unwrap_err();
    assert!(
        e.to_string().contains("overlap fraction threshold = -1"),
        "{e}"
    );
    assert!(!target.exists());
}

/// Scale-in 2→1 with handle 1's files held back until something was merged: the restore can
/// only finish if it ingests handle 0 while handle 1's downloads wait (overlapped I/O). The
/// result holds exactly the model.
#[tokio::test]
async fn each_handle_is_ingested_while_the_next_downloads() {
    let root = tempdir();
    let (faulty, store) = faulty_store();
    let model = initial_model(1500);
    let meta = first_checkpoint(&store, root.path(), 2, &model).await;
    let state = root.path().join("state");
    let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    *faulty.gate.lock().unwrap() = Some(Gate {
        paths: meta.handles[1]
            .shared
            .iter()
            .map(|f| f.file.path.clone())
            .collect(),
        state: state.clone(),
        held: held.clone(),
    });
    let target = state.join("db");
    let summary = restore(&store, 1, 0, 1, &target, Strategy::Ingest).await;
    assert!(
        held.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "no get was held back"
    );
    assert_eq!(
        summary.ingested_files,
        meta.handles.iter().map(|h| h.shared.len()).sum::<usize>()
    );
    let b = regroup::backend::StateBackend::open(&target, 128, summary.range, &STATES).unwrap();
    assert!(contents(&b) == model);
}
