//! Incremental snapshots: a native RocksDB checkpoint, then an upload of only the SST and
//! OPTIONS files no completed checkpoint of this DB instance has uploaded yet.
//!
//! [`IncrementalSnapshotter::capture`] is the synchronous part (hard links of the live files,
//! milliseconds); [`IncrementalSnapshotter::upload`] runs beside processing. An SST file is
//! reused by reference only when a checkpoint that is known to be *completed* uploaded it
//! ([`IncrementalSnapshotter::notify_complete`]); uploads of pending or aborted checkpoints are
//! never reused, since an aborted checkpoint's files may be garbage-collected (FLINK-25395).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};
use rocksdb::DB;
use tracing::{debug, info};

use super::native::live_sst_order;
use super::{StateBackend, db_options};
use crate::checkpoint::metadata::{
    FORMAT_VERSION, INLINE_MAX_BYTES, InlineFile, PrivateFile, ProcessedEvents, SharedFile,
    SstOrder, SubtaskHandle, is_options_file,
};
use crate::checkpoint::paths::JobPaths;
use crate::checkpoint::store::CheckpointStore;
use crate::error::{Error, Result};
use crate::keygroup::{KeyGroupRange, read_key_group_prefix};

/// Uploads of one snapshot in flight at once.
pub const UPLOAD_PARALLELISM: usize = 4;

/// One file of a native checkpoint, with what `live_files()` says of it.
#[derive(Clone, Debug)]
pub struct LocalFile {
    /// File name in the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Column family, level and key-group span, for SST files.
    pub sst: Option<SstInfo>,
}

/// Where an SST file sits in the LSM tree, which key groups it holds and how old its data is.
#[derive(Clone, Debug)]
pub struct SstInfo {
    /// Column family name.
    pub column_family: String,
    /// LSM level.
    pub level: i32,
    /// First and last key group of the file, when its keys carry a prefix.
    pub key_groups: Option<KeyGroupRange>,
    /// Its sequence numbers and epoch number.
    pub order: SstOrder,
}

/// A native checkpoint on local disk, removed when dropped.
#[derive(Debug)]
pub struct LocalSnapshot {
    /// The checkpoint id it was taken for.
    pub checkpoint_id: u64,
    /// Directory of the native checkpoint.
    pub dir: PathBuf,
    /// Its files.
    pub files: Vec<LocalFile>,
    /// Column families of the DB.
    pub column_families: Vec<String>,
    /// Key groups of the DB.
    pub range: KeyGroupRange,
    /// Key groups of the job.
    pub max_parallelism: u32,
    /// When the worker applied its first event and its last before the capture (set by the
    /// caller, which knows its events).
    pub processed: Option<ProcessedEvents>,
}

impl Drop for LocalSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default, Debug)]
struct Uploads {
    /// SST files referenced by the newest completed checkpoint, by local name: reusable.
    confirmed: HashMap<String, SharedFile>,
    /// Its OPTIONS files, stored once per DB instance ([`is_options_file`]): reusable.
    confirmed_options: HashMap<String, PrivateFile>,
    /// Reusable files referenced by checkpoints not yet known to be complete or aborted.
    pending: BTreeMap<u64, (Vec<SharedFile>, Vec<PrivateFile>)>,
    last_completed: Option<u64>,
}

/// Takes incremental snapshots of one DB instance and remembers what may be reused.
#[derive(Debug)]
pub struct IncrementalSnapshotter {
    instance_id: String,
    subtask: u32,
    parallelism: u32,
    epoch: u64,
    uploads: Mutex<Uploads>,
}

impl IncrementalSnapshotter {
    /// A snapshotter for the DB instance `instance_id` of `subtask` of `parallelism`, at `epoch`.
    pub fn new(instance_id: &str, subtask: u32, parallelism: u32, epoch: u64) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            subtask,
            parallelism,
            epoch,
            uploads: Mutex::default(),
        }
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, Uploads> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares SST files of a completed checkpoint that the DB holds unchanged, by their names
    /// in the DB (after a restore: [`crate::statedir::restored::RestoreMarker::stored`]), so the
    /// next snapshot references them.
    pub fn seed_confirmed(&self, files: Vec<SharedFile>) {
        let mut u = self.uploads();
        for f in files {
            u.confirmed.insert(f.local_name.clone(), f);
        }
    }

    /// The newest checkpoint this snapshotter was told completed.
    pub fn last_completed(&self) -> Option<u64> {
        self.uploads().last_completed
    }

    /// Takes a native checkpoint of `backend` into `scratch/chk-<id>` (same file system as the
    /// DB, so files are hard links) and lists its files.
    pub fn capture(
        &self,
        backend: &StateBackend,
        checkpoint_id: u64,
        scratch: &Path,
    ) -> Result<LocalSnapshot> {
        std::fs::create_dir_all(scratch).map_err(Error::io("create directory", scratch))?;
        let dir = scratch.join(format!("chk-{checkpoint_id}-{}", self.instance_id));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(Error::io("remove", &dir))?;
        }
        rocksdb::checkpoint::Checkpoint::new(backend.db())
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(Error::rocks(format!(
                "native checkpoint into {}",
                dir.display()
            )))?;
        let mut snapshot = LocalSnapshot {
            checkpoint_id,
            dir,
            files: Vec::new(),
            column_families: Vec::new(),
            range: backend.range(),
            max_parallelism: backend.max_parallelism(),
            processed: None,
        };
        let (column_families, ssts) = describe_ssts(&snapshot.dir, backend.max_parallelism())?;
        snapshot.column_families = column_families;
        let entries = std::fs::read_dir(&snapshot.dir).map_err(Error::io("list", &snapshot.dir))?;
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &snapshot.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let size = entry
                .metadata()
                .map_err(Error::io("stat", entry.path()))?
                .len();
            let sst = if name.ends_with(".sst") {
                Some(ssts.get(&name).cloned().ok_or_else(|| Error::Corrupt {
                    file: entry.path().display().to_string(),
                    detail: "SST file in the native checkpoint is not a live file of the DB".into(),
                })?)
            } else {
                None
            };
            snapshot.files.push(LocalFile { name, size, sst });
        }
        snapshot.files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(snapshot)
    }

    /// Uploads what the snapshot adds, writes the handle (create-if-absent) and returns it.
    pub async fn upload(
        &self,
        snapshot: LocalSnapshot,
        store: &CheckpointStore,
    ) -> Result<SubtaskHandle> {
        let id = snapshot.checkpoint_id;
        let (confirmed, confirmed_options) = {
            let u = self.uploads();
            (u.confirmed.clone(), u.confirmed_options.clone())
        };
        let mut reused = Vec::new();
        let mut reused_private = Vec::new();
        let mut to_upload = Vec::new();
        let mut private_files = Vec::new();
        let mut inline = Vec::new();
        for f in &snapshot.files {
            match &f.sst {
                Some(info) => match confirmed.get(&f.name) {
                    Some(prev) if prev.file.size == f.size => {
                        let mut s = prev.clone();
                        s.level = Some(info.level);
                        s.column_family = Some(info.column_family.clone());
                        s.key_groups = info.key_groups.or(prev.key_groups);
                        s.order = Some(info.order);
                        reused.push(s);
                    }
                    _ => to_upload.push(f.clone()),
                },
                None if f.size <= INLINE_MAX_BYTES => {
                    let path = snapshot.dir.join(&f.name);
                    let content = tokio::fs::read(&path)
                        .await
                        .map_err(Error::io("read", &path))?;
                    inline.push(InlineFile::new(f.name.clone(), content));
                }
                None if is_options_file(&f.name) => match confirmed_options.get(&f.name) {
                    Some(prev) if prev.file.size == f.size => reused_private.push(prev.clone()),
                    _ => private_files
                        .push((f.clone(), JobPaths::shared_file(&self.instance_id, &f.name))),
                },
                None => private_files.push((
                    f.clone(),
                    JobPaths::private_file(id, self.subtask, &self.instance_id, &f.name),
                )),
            }
        }
        // Owned items keep the upload future `Send`: a stream over borrowed items trips rustc's
        // higher-ranked lifetime inference when the future is spawned.
        let dir = snapshot.dir.clone();
        let uploaded: Vec<SharedFile> = futures::stream::iter(to_upload)
            .map(|f| {
                let dir = &dir;
                async move {
                    let relative = JobPaths::shared_file(&self.instance_id, &f.name);
                    let file = store.upload_file(&dir.join(&f.name), &relative).await?;
                    let info = f.sst.as_ref().expect("only SST files are shared");
                    Ok::<_, Error>(SharedFile {
                        local_name: f.name.clone(),
                        file,
                        column_family: Some(info.column_family.clone()),
                        level: Some(info.level),
                        key_groups: info.key_groups,
                        order: Some(info.order),
                    })
                }
            })
            .buffer_unordered(UPLOAD_PARALLELISM)
            .try_collect()
            .await?;
        let private: Vec<PrivateFile> = futures::stream::iter(private_files)
            .map(|(f, relative)| {
                let dir = &dir;
                async move {
                    let file = store.upload_file(&dir.join(&f.name), &relative).await?;
                    Ok::<_, Error>(PrivateFile {
                        local_name: f.name.clone(),
                        file,
                    })
                }
            })
            .buffer_unordered(UPLOAD_PARALLELISM)
            .try_collect()
            .await?;
        // What the handle carries is uploaded with it.
        let inline_bytes = inline.iter().map(|i| i.size).sum::<u64>();
        let bytes_uploaded = uploaded.iter().map(|s| s.file.size).sum::<u64>()
            + private.iter().map(|p| p.file.size).sum::<u64>()
            + inline_bytes;
        let mut shared = reused;
        shared.extend(uploaded);
        shared.sort_by(|a, b| a.local_name.cmp(&b.local_name));
        let mut private = private;
        private.extend(reused_private);
        private.sort_by(|a, b| a.local_name.cmp(&b.local_name));
        let bytes_total = shared.iter().map(|s| s.file.size).sum::<u64>()
            + private.iter().map(|p| p.file.size).sum::<u64>()
            + inline_bytes;
        let handle = SubtaskHandle {
            format_version: FORMAT_VERSION,
            job: store.job().clone(),
            checkpoint_id: id,
            epoch: self.epoch,
            subtask: self.subtask,
            parallelism: self.parallelism,
            max_parallelism: snapshot.max_parallelism,
            key_group_range: snapshot.range,
            instance_id: self.instance_id.clone(),
            column_families: snapshot.column_families.clone(),
            shared,
            private,
            inline,
            bytes_total,
            bytes_uploaded,
            created_at: chrono::Utc::now(),
            processed: snapshot.processed,
        };
        let handle = match store.write_handle(&handle).await {
            Ok(()) => handle,
            // An earlier attempt at this checkpoint (this worker before a restart) wrote its
            // handle: that one stands, and its files are its own (per-instance paths).
            Err(Error::AlreadyExists { .. }) => return self.earlier_attempt(id, store).await,
            Err(e) => return Err(e),
        };
        let options = handle
            .private
            .iter()
            .filter(|p| is_options_file(&p.local_name))
            .cloned()
            .collect();
        self.uploads()
            .pending
            .insert(id, (handle.shared.clone(), options));
        info!(
            checkpoint = id,
            subtask = self.subtask,
            bytes_total,
            bytes_uploaded,
            files = handle.shared.len() + handle.private.len() + handle.inline.len(),
            "snapshot uploaded"
        );
        Ok(handle)
    }

    /// The handle an earlier attempt at checkpoint `id` wrote for this subtask, when it is of
    /// this generation. Its SST files are another DB instance's: never reused by this one.
    async fn earlier_attempt(&self, id: u64, store: &CheckpointStore) -> Result<SubtaskHandle> {
        let location = store
            .paths()
            .relative(&store.paths().handle(id, self.subtask));
        let stored =
            store
                .read_handle(id, self.subtask)
                .await?
                .ok_or_else(|| Error::MissingFile {
                    file: location.clone(),
                    referenced_by: format!("a create-if-absent write of checkpoint {id}"),
                })?;
        if stored.epoch != self.epoch || stored.parallelism != self.parallelism {
            return Err(Error::AlreadyExists { path: location });
        }
        info!(
            checkpoint = id,
            subtask = self.subtask,
            instance = %stored.instance_id,
            "checkpoint already taken by an earlier attempt of this worker; its handle stands"
        );
        Ok(stored)
    }

    /// This snapshotter's DB instance.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Checkpoint `id` completed: its SST and OPTIONS files become reusable; older pending
    /// entries are moot.
    pub fn notify_complete(&self, id: u64) {
        let mut u = self.uploads();
        if u.last_completed.is_some_and(|last| last >= id) {
            return;
        }
        if let Some((files, options)) = u.pending.remove(&id) {
            u.confirmed = files
                .into_iter()
                .map(|f| (f.local_name.clone(), f))
                .collect();
            u.confirmed_options = options
                .into_iter()
                .map(|f| (f.local_name.clone(), f))
                .collect();
        }
        u.last_completed = Some(id);
        u.pending.retain(|&pending, _| pending > id);
        debug!(
            checkpoint = id,
            reusable = u.confirmed.len(),
            "checkpoint confirmed"
        );
    }

    /// Checkpoint `id` was aborted: none of its uploads will ever be reused.
    pub fn notify_aborted(&self, id: u64) {
        self.uploads().pending.remove(&id);
    }
}

/// Column families of the DB in `dir` and, per SST file name, its column family, level,
/// key-group span and order, read from the DB itself (opened read-only).
pub fn describe_ssts(
    dir: &Path,
    max_parallelism: u32,
) -> Result<(Vec<String>, HashMap<String, SstInfo>)> {
    let opts = db_options(max_parallelism);
    let cfs = DB::list_cf(&opts, dir).map_err(Error::rocks(format!(
        "list column families of {}",
        dir.display()
    )))?;
    let db = DB::open_cf_for_read_only(&opts, dir, &cfs, false)
        .map_err(Error::rocks(format!("open {} read-only", dir.display())))?;
    let live = db.live_files().map_err(Error::rocks(format!(
        "list live files of {}",
        dir.display()
    )))?;
    let mut orders: HashMap<String, SstOrder> = live_sst_order(&db, &dir.display().to_string())?
        .into_iter()
        .map(|f| (f.name, f.order))
        .collect();
    let mut out = HashMap::with_capacity(live.len());
    for f in live {
        let name = f.name.trim_start_matches('/').to_owned();
        let order = orders.remove(&name).ok_or_else(|| Error::Corrupt {
            file: dir.join(&name).display().to_string(),
            detail: "live file without RocksDB's file metadata".into(),
        })?;
        let first = f
            .start_key
            .as_deref()
            .and_then(|k| read_key_group_prefix(k, max_parallelism));
        let last = f
            .end_key
            .as_deref()
            .and_then(|k| read_key_group_prefix(k, max_parallelism));
        let key_groups = match (first, last) {
            (Some(a), Some(b)) if a <= b => Some(KeyGroupRange { start: a, end: b }),
            _ => None,
        };
        out.insert(
            name,
            SstInfo {
                column_family: f.column_family_name,
                level: f.level,
                key_groups,
                order,
            },
        );
    }
    Ok((cfs, out))
}
