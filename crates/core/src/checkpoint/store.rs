//! The checkpoint store: checksummed, streaming transfers and create-if-absent metadata over any
//! [`ObjectStore`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path as LocalPath;
use std::sync::{Arc, Mutex, OnceLock};

use futures::{StreamExt, TryStreamExt};
use object_store::client::{ClientOptions, HttpClient, HttpConnector, ReqwestConnector};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    GetResultPayload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};
use serde::Serialize;
use tracing::debug;

use super::local_file::{CopyHelpers, LocalFile, LocalWrite, write_inline};
use super::metadata::{
    CheckpointMetadata, Checksum, FORMAT_VERSION, FileRef, SubtaskHandle, decode,
};
use super::paths::{
    JobId, JobPaths, checkpoint_dir_name, parse_checkpoint_dir_name, parse_handle_name,
};
use crate::error::{Error, Result};

/// Files up to this size are uploaded in one request; larger ones as multipart uploads.
const SINGLE_PUT_LIMIT: u64 = 8 << 20;
/// Part size of multipart uploads.
const CHUNK: usize = 8 << 20;
/// Read size of local checksums: small enough to stay in the CPU cache between the read and
/// the checksum.
const CHECKSUM_READ: usize = 256 << 10;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Handles read at once when completing a checkpoint.
const HANDLE_READS_IN_FLIGHT: usize = 64;
/// Listings (of a directory each) and small reads in flight at once: a store lists one page
/// after another, so a large directory is listed faster as its subdirectories side by side.
const LISTS_IN_FLIGHT: usize = 64;
/// Largest metadata object read: a bound on what a damaged or hostile store can make us load.
pub const METADATA_MAX_BYTES: u64 = 256 << 20;

/// URL schemes [`CheckpointStore::from_url`] accepts.
pub const SUPPORTED_SCHEMES: &[&str] = &["file", "memory", "s3", "gs", "az", "abfs", "abfss"];

/// One job's checkpoints in an object store.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    paths: JobPaths,
    job: JobId,
    url: String,
}

/// Process-wide `memory://NAME` stores, so that every component of one process sees the same one.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut stores = STORES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    stores
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// Hands every cloud store of one runtime the same HTTP client for the same client options: an
/// operator keeps a store per job, and each store's own client kept its own pool of idle
/// connections.
#[derive(Debug)]
struct SharedClients;

/// HTTP clients by runtime and the Debug form of their client options.
type ClientsByOptions = HashMap<(tokio::runtime::Id, String), HttpClient>;

impl SharedClients {
    /// The clients made so far.
    fn clients() -> std::sync::MutexGuard<'static, ClientsByOptions> {
        static CLIENTS: OnceLock<Mutex<ClientsByOptions>> = OnceLock::new();
        CLIENTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl HttpConnector for SharedClients {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        // A connection lives on the runtime that opened it: clients are shared within one.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return ReqwestConnector::default().connect(options);
        };
        // The options in their Debug form, all of them: ClientOptions has no Eq.
        let key = (runtime.id(), format!("{options:?}"));
        let mut clients = Self::clients();
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = ReqwestConnector::default().connect(options)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// An object store and the path prefix inside it for a storage URL.
///
/// `file:///dir`, `memory://name`, `s3://bucket/prefix` (credentials, region and endpoint from
/// the usual `AWS_*` variables: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
/// `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`), `gs://bucket/prefix` (`GOOGLE_*`),
/// `az://container/prefix` (`AZURE_*`).
pub fn object_store_from_url(url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    object_store_from_url_with(url, &BTreeMap::new(), Ambient::Allowed)
}

/// Whether a store may use credentials and settings from the process environment (the
/// `AWS_*`, `GOOGLE_*`, `AZURE_*` variables, instance metadata) besides explicit settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ambient {
    /// From the environment, with explicit settings on top (the CLI, the workers).
    Allowed,
    /// Explicit settings only: the operator, which must not lend its own identity to a job
    /// whose author names a bucket.
    Forbidden,
}

/// Like [`object_store_from_url`], with `settings` (e.g. a Secret's `AWS_ACCESS_KEY_ID`,
/// `AWS_ENDPOINT`; any case; keys the store does not know are ignored) applied on top of the
/// process environment for s3, gs and az URLs.
pub fn object_store_from_url_with(
    url: &str,
    settings: &BTreeMap<String, String>,
    ambient: Ambient,
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let parsed = url::Url::parse(url).map_err(|e| {
        Error::invalid(
            "storage url",
            url,
            format!("a URL with scheme {} ({e})", SUPPORTED_SCHEMES.join(", ")),
        )
    })?;
    let build_error = |e: object_store::Error| Error::invalid("storage url", url, e.to_string());
    let prefix = || {
        Path::from_url_path(parsed.path())
            .map_err(|e| Error::invalid("storage url", url, e.to_string()))
    };
    // Whether the settings name credentials (any of `keys`, case aside): without them and without
    // ambient credentials, requests go unsigned rather than under an identity found around us
    // (instance metadata, web identity).
    let given = |keys: &[&str]| {
        settings
            .iter()
            .any(|(k, v)| !v.is_empty() && keys.contains(&k.to_ascii_lowercase().as_str()))
    };
    // A cloud store from `$builder`: the operator's environment only when `ambient` allows
    // it, every setting whose (lower-cased) name the builder knows, unsigned without
    // credentials (any of `$credentials` among the settings).
    macro_rules! cloud {
        ($builder:ty, $credentials:expr) => {{
            let builder = match ambient {
                Ambient::Allowed => <$builder>::from_env(),
                Ambient::Forbidden => <$builder>::new(),
            };
            let anonymous = ambient == Ambient::Forbidden && !given($credentials);
            let configured = settings.iter().fold(builder.with_url(url), |b, (k, v)| {
                match k.to_ascii_lowercase().parse() {
                    Ok(key) => b.with_config(key, v),
                    Err(_) => b,
                }
            });
            let store = configured
                .with_http_connector(SharedClients)
                .with_skip_signature(anonymous)
                .build()
                .map_err(build_error)?;
            Ok((Arc::new(store), prefix()?))
        }};
    }
    match parsed.scheme() {
        "file" => {
            let dir = parsed
                .to_file_path()
                .map_err(|()| Error::invalid("storage url", url, "file:///ABSOLUTE/PATH"))?;
            std::fs::create_dir_all(&dir).map_err(Error::io("create directory", &dir))?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(build_error)?
                .with_automatic_cleanup(true);
            Ok((Arc::new(fs), Path::default()))
        }
        "memory" => Ok((
            memory_store(parsed.host_str().unwrap_or_default()),
            prefix()?,
        )),
        "s3" | "s3a" => cloud!(object_store::aws::AmazonS3Builder, &["aws_access_key_id"]),
        "gs" => cloud!(
            object_store::gcp::GoogleCloudStorageBuilder,
            &[
                "google_service_account",
                "google_service_account_key",
                "google_application_credentials",
            ]
        ),
        "az" | "abfs" | "abfss" | "azure" => cloud!(
            object_store::azure::MicrosoftAzureBuilder,
            &[
                "azure_storage_account_key",
                "azure_storage_access_key",
                "azure_storage_sas_key",
                "azure_storage_sas_token",
                "azure_client_secret",
                "azure_storage_token",
            ]
        ),
        other => Err(Error::invalid(
            "storage url",
            url,
            format!(
                "scheme {other:?} is not supported; use one of {}",
                SUPPORTED_SCHEMES.join(", ")
            ),
        )),
    }
}

fn store_err(operation: &'static str, path: &Path) -> impl FnOnce(object_store::Error) -> Error {
    let path = path.to_string();
    move |source| Error::Store {
        operation,
        path,
        source,
    }
}

impl CheckpointStore {
    /// The store of `job` below `prefix` of `store`.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path, job: JobId) -> Self {
        let paths = JobPaths::new(&prefix, &job);
        Self {
            url: format!("{store}/{prefix}"),
            store,
            paths,
            job,
        }
    }

    /// The store of `job` at a storage URL (see [`object_store_from_url`]).
    pub fn from_url(url: &str, job: JobId) -> Result<Self> {
        Self::from_url_with(url, job, &BTreeMap::new(), Ambient::Allowed)
    }

    /// The store of `job` at a storage URL with extra settings (see
    /// [`object_store_from_url_with`]).
    pub fn from_url_with(
        url: &str,
        job: JobId,
        settings: &BTreeMap<String, String>,
        ambient: Ambient,
    ) -> Result<Self> {
        let (store, prefix) = object_store_from_url_with(url, settings, ambient)?;
        let mut s = Self::new(store, prefix, job);
        s.url = url.to_owned();
        Ok(s)
    }

    /// The job whose checkpoints this is.
    pub fn job(&self) -> &JobId {
        &self.job
    }

    /// The URL or description of the store, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object paths of the job.
    pub fn paths(&self) -> &JobPaths {
        &self.paths
    }

    /// The underlying object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Uploads a local file to `relative` (a job-relative path), streaming, and returns its
    /// reference with size and checksum computed from the bytes actually sent.
    pub async fn upload_file(&self, local: &LocalPath, relative: &str) -> Result<FileRef> {
        let location = self.paths.resolve(relative, "upload")?;
        let mut file = std::fs::File::open(local).map_err(Error::io("open", local))?;
        let len = file.metadata().map_err(Error::io("stat", local))?.len();
        let (size, checksum) = if len <= SINGLE_PUT_LIMIT {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf)
                .map_err(Error::io("read", local))?;
            let checksum = Checksum::of(&buf);
            let size = buf.len() as u64;
            self.store
                .put(&location, PutPayload::from(buf))
                .await
                .map_err(store_err("put", &location))?;
            (size, checksum)
        } else {
            let upload = self
                .store
                .put_multipart(&location)
                .await
                .map_err(store_err("put", &location))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            let mut checksum = Checksum::default();
            let mut size = 0u64;
            let mut buf = vec![0u8; CHUNK];
            let result: Result<()> = async {
                loop {
                    let n = read_full(&mut file, &mut buf).map_err(Error::io("read", local))?;
                    if n == 0 {
                        break;
                    }
                    checksum = checksum.update(&buf[..n]);
                    size += n as u64;
                    writer
                        .wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(store_err("put", &location))?;
                    writer.write(&buf[..n]);
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => {
                    writer.finish().await.map_err(store_err("put", &location))?;
                }
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            }
            (size, checksum)
        };
        debug!(file = %local.display(), %location, size, "uploaded");
        Ok(FileRef {
            path: relative.to_owned(),
            size,
            checksum,
        })
    }

    /// Downloads `file` to `local`, verifying size and checksum; `mode` says whether the file
    /// is durable (synced) when this returns (see [`LocalFile`]). On any failure the partial
    /// local file is removed and the error names the file and the metadata referencing it.
    /// From a store on a file system, `helpers` may write some of it (see
    /// [`LocalFile::copy_from_file`]).
    pub async fn download_file(
        &self,
        file: &FileRef,
        local: &LocalPath,
        referenced_in: &str,
        mode: LocalWrite,
        helpers: Option<&Arc<CopyHelpers>>,
    ) -> Result<()> {
        let result = self
            .download_unchecked(file, local, referenced_in, mode, helpers.cloned())
            .await;
        if result.is_err() {
            let _ = std::fs::remove_file(local);
        }
        result
    }

    async fn download_unchecked(
        &self,
        file: &FileRef,
        local: &LocalPath,
        referenced_in: &str,
        mode: LocalWrite,
        helpers: Option<Arc<CopyHelpers>>,
    ) -> Result<()> {
        let location = self.paths.resolve(&file.path, referenced_in)?;
        let got = match self.store.get(&location).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::MissingFile {
                    file: file.path.clone(),
                    referenced_by: referenced_in.to_owned(),
                });
            }
            Err(e) => return Err(store_err("get", &location)(e)),
        };
        let (local, expected_size) = (local.to_path_buf(), file.size);
        let task_failed =
            |e: tokio::task::JoinError| Error::Other(format!("download task failed: {e}"));
        let (size, checksum) = match got.payload {
            GetResultPayload::File(src, _) => tokio::task::spawn_blocking(move || {
                let mut out = LocalFile::create(&local, mode, expected_size)?;
                out.copy_from_file(&src, helpers.as_deref())?;
                out.finish()
            })
            .await
            .map_err(task_failed)??,
            GetResultPayload::Stream(mut stream) => {
                // The writes block (direct I/O waits for the disk): a blocking task takes the
                // chunks as they arrive.
                // `None` ends a complete download; a closed channel without it, one that broke
                // off (the partial file is neither finished nor synced: the caller removes it).
                let (chunks, mut arriving) = tokio::sync::mpsc::channel::<Option<bytes::Bytes>>(4);
                let writer = tokio::task::spawn_blocking(move || {
                    let mut out = LocalFile::create(&local, mode, expected_size)?;
                    while let Some(chunk) = arriving.blocking_recv() {
                        match chunk {
                            Some(chunk) => out.write_all(&chunk)?,
                            None => return out.finish(),
                        }
                    }
                    Err(Error::Other("download broke off".to_owned()))
                });
                let mut received = Ok(());
                loop {
                    let next = match stream.try_next().await {
                        Ok(next) => next,
                        Err(e) => {
                            received = Err(store_err("get", &location)(e));
                            break;
                        }
                    };
                    let end = next.is_none();
                    if chunks.send(next).await.is_err() || end {
                        break; // at the end, or the writer failed: its error is returned below
                    }
                }
                drop(chunks);
                let written = writer.await.map_err(task_failed)?;
                received?;
                written?
            }
        };
        verify(file, size, checksum)
    }

    /// Writes `value` as JSON to `location` unless an object is already there.
    pub async fn put_json_if_absent<T: Serialize>(&self, location: &Path, value: &T) -> Result<()> {
        self.put_json_as(location, value, PutMode::Create).await
    }

    /// Writes `value` as JSON to `location`, replacing what is there (settings, not records).
    pub async fn put_json<T: Serialize>(&self, location: &Path, value: &T) -> Result<()> {
        self.put_json_as(location, value, PutMode::Overwrite).await
    }

    async fn put_json_as<T: Serialize>(
        &self,
        location: &Path,
        value: &T,
        mode: PutMode,
    ) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
            file: location.to_string(),
            source,
        })?;
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .store
            .put_opts(location, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::AlreadyExists {
                path: location.to_string(),
            }),
            Err(e) => Err(store_err("put", location)(e)),
        }
    }

    /// Reads JSON metadata at `location`; `None` when absent.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        location: &Path,
    ) -> Result<Option<T>> {
        let bytes = match self.store.get(location).await {
            Ok(got) if got.meta.size > METADATA_MAX_BYTES => {
                return Err(Error::Corrupt {
                    file: self.paths.relative(location),
                    detail: format!(
                        "{} bytes; metadata larger than {METADATA_MAX_BYTES} bytes is refused",
                        got.meta.size
                    ),
                });
            }
            Ok(got) => got.bytes().await.map_err(store_err("get", location))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_err("get", location)(e)),
        };
        decode(&bytes, &self.paths.relative(location)).map(Some)
    }

    /// Writes a subtask's handle, once.
    pub async fn write_handle(&self, handle: &SubtaskHandle) -> Result<()> {
        let location = self.paths.handle(handle.checkpoint_id, handle.subtask);
        self.put_json_if_absent(&location, handle).await
    }

    /// The handle of `subtask` for checkpoint `id`, validated; `None` when not written yet.
    pub async fn read_handle(&self, id: u64, subtask: u32) -> Result<Option<SubtaskHandle>> {
        let location = self.paths.handle(id, subtask);
        let handle: Option<SubtaskHandle> = self.get_json(&location).await?;
        if let Some(h) = &handle {
            h.validate(&self.paths.relative(&location))?;
        }
        Ok(handle)
    }

    /// The validated metadata of completed checkpoint `id`.
    pub async fn read_metadata(&self, id: u64) -> Result<CheckpointMetadata> {
        let location = self.paths.metadata(id);
        let file = self.paths.relative(&location);
        let meta: CheckpointMetadata =
            self.get_json(&location)
                .await?
                .ok_or_else(|| Error::MissingFile {
                    file: file.clone(),
                    referenced_by: format!(
                        "checkpoint {id} of job {} (not completed, or removed)",
                        self.job
                    ),
                })?;
        meta.validate(&file)?;
        if meta.checkpoint_id != id || meta.job != self.job {
            return Err(Error::Corrupt {
                file,
                detail: format!(
                    "holds checkpoint {} of job {}",
                    meta.checkpoint_id, meta.job
                ),
            });
        }
        Ok(meta)
    }

    /// Ids of every checkpoint directory in the store, ascending, with whether it completed.
    pub async fn checkpoint_ids(&self) -> Result<Vec<(u64, bool)>> {
        let listing = self.list_level(self.paths.root()).await?;
        let mut ids: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(parse_checkpoint_dir_name))
            .collect();
        ids.sort_unstable();
        futures::stream::iter(ids)
            .map(|id| async move {
                match self.store.head(&self.paths.metadata(id)).await {
                    Ok(_) => Ok((id, true)),
                    Err(object_store::Error::NotFound { .. }) => Ok((id, false)),
                    Err(e) => Err(store_err("head", &self.paths.metadata(id))(e)),
                }
            })
            .buffered(LISTS_IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Ids of completed checkpoints, ascending.
    pub async fn completed_ids(&self) -> Result<Vec<u64>> {
        Ok(self
            .checkpoint_ids()
            .await?
            .into_iter()
            .filter_map(|(id, done)| done.then_some(id))
            .collect())
    }

    /// The newest completed checkpoint, if any.
    pub async fn latest_completed(&self) -> Result<Option<CheckpointMetadata>> {
        match self.completed_ids().await?.last() {
            Some(&id) => self.read_metadata(id).await.map(Some),
            None => Ok(None),
        }
    }

    /// The metadata of checkpoint `id`, or of the newest completed one when `id` is `None` (an
    /// error naming the store and job when there is none).
    pub async fn checkpoint_or_latest(&self, id: Option<u64>) -> Result<CheckpointMetadata> {
        match id {
            Some(id) => self.read_metadata(id).await,
            None => self.latest_completed().await?.ok_or_else(|| {
                Error::invalid(
                    "checkpoint",
                    "latest",
                    format!(
                        "a completed checkpoint, but {} holds none for job {}",
                        self.url(),
                        self.job()
                    ),
                )
            }),
        }
    }

    /// Completes checkpoint `id` if every subtask `0..parallelism` has written a handle of
    /// `epoch`: [`Self::completion`], then [`Self::commit`]. Returns `None` while handles are
    /// missing. Idempotent: when `_metadata.json` already holds exactly these handles (an
    /// operator that died after writing it), that record is returned; one with other content is
    /// an error.
    pub async fn try_complete(
        &self,
        id: u64,
        epoch: u64,
        parallelism: u32,
        max_parallelism: u32,
    ) -> Result<Option<CheckpointMetadata>> {
        match self
            .completion(id, epoch, parallelism, max_parallelism)
            .await?
        {
            Some(meta) => self.commit(&meta).await.map(Some),
            None => Ok(None),
        }
    }

    /// The metadata checkpoint `id` completes with, once every subtask `0..parallelism` has
    /// written a handle of `epoch` and every file they reference is in the store with its size;
    /// `None` while handles are missing. Handles of another epoch are ignored (fencing). Reads
    /// only: [`Self::commit`] makes it complete.
    pub async fn completion(
        &self,
        id: u64,
        epoch: u64,
        parallelism: u32,
        max_parallelism: u32,
    ) -> Result<Option<CheckpointMetadata>> {
        // One listing while handles are missing (the final checkpoint's poll), not a read of
        // every handle written so far.
        if self.written_handles(id, parallelism).await? < parallelism as usize {
            return Ok(None);
        }
        let read = futures::stream::iter(0..parallelism)
            .map(|subtask| self.read_handle(id, subtask))
            .buffered(HANDLE_READS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        let mut handles = Vec::with_capacity(parallelism as usize);
        for h in read {
            match h {
                Some(h)
                    if h.epoch == epoch
                        && h.parallelism == parallelism
                        && h.max_parallelism == max_parallelism =>
                {
                    handles.push(h)
                }
                _ => return Ok(None),
            }
        }
        let meta = CheckpointMetadata {
            format_version: FORMAT_VERSION,
            job: self.job.clone(),
            checkpoint_id: id,
            epoch,
            parallelism,
            max_parallelism,
            completed_at: chrono::Utc::now(),
            handles,
        };
        self.check_files_exist(id, &meta.handles).await?;
        meta.validate(&self.paths.relative(&self.paths.metadata(id)))?;
        Ok(Some(meta))
    }

    /// How many of subtasks `0..parallelism` have written a handle of checkpoint `id`, of any
    /// epoch.
    pub async fn written_handles(&self, id: u64, parallelism: u32) -> Result<usize> {
        let listed = self.list_under(&self.paths.handles_dir(id)).await?;
        Ok(listed
            .iter()
            .filter_map(|meta| parse_handle_name(meta.location.filename()?))
            .filter(|&subtask| subtask < parallelism)
            .count())
    }

    /// Writes `_metadata.json` of `meta` (create-if-absent), the point at which its checkpoint
    /// is complete, and returns the stored record: `meta`, or the same handles written before.
    pub async fn commit(&self, meta: &CheckpointMetadata) -> Result<CheckpointMetadata> {
        let location = self.paths.metadata(meta.checkpoint_id);
        let file = self.paths.relative(&location);
        if let Some(stored) = self.get_json::<CheckpointMetadata>(&location).await? {
            return completed_before(stored, meta, &file);
        }
        match self.put_json_if_absent(&location, meta).await {
            Ok(()) => Ok(meta.clone()),
            // Written between the read and the write (another operator replica's last act).
            Err(Error::AlreadyExists { .. }) => {
                completed_before(self.read_metadata(meta.checkpoint_id).await?, meta, &file)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks that every file the handles of checkpoint `id` reference is in the store with
    /// its size: a checkpoint never completes referencing a file that garbage collection
    /// already took.
    async fn check_files_exist(&self, id: u64, handles: &[SubtaskHandle]) -> Result<()> {
        // The directories the files lie in (a DB instance's shared files, the checkpoint's
        // private files), side by side: not every stored file, page after page.
        let private = format!("{}/private", checkpoint_dir_name(id));
        let dirs: BTreeSet<String> = handles
            .iter()
            .flat_map(|h| h.files())
            .map(|f| match f.path.rsplit_once('/') {
                Some((dir, _)) if dir.split('/').next() == Some("shared") => dir.to_owned(),
                _ => private.clone(),
            })
            .collect();
        let listed: Vec<Vec<object_store::ObjectMeta>> = futures::stream::iter(dirs)
            .map(|dir| async move {
                let prefix = self.paths.resolve(&dir, "checkpoint completion")?;
                self.list_under(&prefix).await
            })
            .buffer_unordered(LISTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let stored: HashMap<String, u64> = listed
            .into_iter()
            .flatten()
            .map(|meta| (self.paths.relative(&meta.location), meta.size))
            .collect();
        for h in handles {
            let referenced_by = self.paths.relative(&self.paths.handle(id, h.subtask));
            for f in h.files() {
                match stored.get(&f.path) {
                    Some(&size) if size == f.size => {}
                    Some(&size) => {
                        return Err(Error::Corrupt {
                            file: f.path.clone(),
                            detail: format!(
                                "size {size} bytes in the store, {referenced_by} says {}",
                                f.size
                            ),
                        });
                    }
                    None => {
                        return Err(Error::MissingFile {
                            file: f.path.clone(),
                            referenced_by,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Every object below the job root with its size and last-modified time. The directories
    /// below the root and below `shared/` (one per DB instance) are listed side by side.
    pub async fn list_all(&self) -> Result<Vec<object_store::ObjectMeta>> {
        let top = self.list_level(self.paths.root()).await?;
        let mut objects = top.objects;
        let mut dirs = Vec::new();
        for dir in top.common_prefixes {
            if dir == self.paths.shared_root() {
                let shared = self.list_level(&dir).await?;
                objects.extend(shared.objects);
                dirs.extend(shared.common_prefixes);
            } else {
                dirs.push(dir);
            }
        }
        objects.extend(self.list_each(dirs).await?);
        Ok(objects)
    }

    /// The objects and the directories right below `prefix` (one level, not recursive).
    pub async fn list_level(&self, prefix: &Path) -> Result<object_store::ListResult> {
        self.store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(store_err("list", prefix))
    }

    /// Every object below each of `dirs`, the directories listed side by side.
    pub async fn list_each(&self, dirs: Vec<Path>) -> Result<Vec<object_store::ObjectMeta>> {
        let listed: Vec<Vec<object_store::ObjectMeta>> = futures::stream::iter(dirs)
            .map(|dir| async move { self.list_under(&dir).await })
            .buffer_unordered(LISTS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(listed.into_iter().flatten().collect())
    }

    /// Every object below `prefix` with its size and last-modified time.
    pub async fn list_under(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_err("list", prefix))
    }

    /// The JSON documents below `prefix`, several read at once (one vanished meanwhile is left
    /// out).
    pub async fn read_json_under<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &Path,
    ) -> Result<Vec<T>> {
        futures::stream::iter(self.list_under(prefix).await?)
            .map(|meta| async move { self.get_json(&meta.location).await })
            .buffered(LISTS_IN_FLIGHT)
            .try_filter_map(|doc| async move { Ok(doc) })
            .try_collect()
            .await
    }

    /// Deletes the objects at `locations`; absent ones are fine.
    pub async fn delete_all(&self, locations: Vec<Path>) -> Result<()> {
        self.delete_counted(locations, &|_| {}).await
    }

    /// Deletes the objects at `locations` as the store deletes many (S3: a thousand a request,
    /// several requests at once; others: several objects at once), calling `deleted` with the
    /// count so far every 256 objects and at the end; absent ones are fine.
    pub async fn delete_counted(
        &self,
        locations: Vec<Path>,
        deleted: &(dyn Fn(usize) + Sync),
    ) -> Result<()> {
        let total = locations.len();
        let locations = futures::stream::iter(locations.into_iter().map(Ok)).boxed();
        let mut outcomes = self.store.delete_stream(locations);
        let mut done = 0;
        while let Some(outcome) = outcomes.next().await {
            match outcome {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err("delete", self.paths.root())(e)),
            }
            done += 1;
            if done % 256 == 0 || done == total {
                deleted(done);
            }
        }
        Ok(())
    }
}

/// An existing `_metadata.json`: the checkpoint completed when it holds what `written` would
/// have written (the completion time aside); other content is an error.
fn completed_before(
    stored: CheckpointMetadata,
    written: &CheckpointMetadata,
    file: &str,
) -> Result<CheckpointMetadata> {
    stored.validate(file)?;
    let same = stored.checkpoint_id == written.checkpoint_id
        && stored.epoch == written.epoch
        && stored.parallelism == written.parallelism
        && stored.max_parallelism == written.max_parallelism
        && stored.handles == written.handles;
    if same {
        return Ok(stored);
    }
    Err(Error::Corrupt {
        file: file.to_owned(),
        detail: format!(
            "already written with other content (epoch {}, parallelism {}, {} handles) than the handles in the store",
            stored.epoch,
            stored.parallelism,
            stored.handles.len()
        ),
    })
}

/// Checks a transfer's size and checksum against the reference.
pub fn verify(file: &FileRef, size: u64, checksum: Checksum) -> Result<()> {
    if size != file.size {
        return Err(Error::Corrupt {
            file: file.path.clone(),
            detail: format!("size {size} bytes, metadata says {}", file.size),
        });
    }
    if checksum != file.checksum {
        return Err(Error::Corrupt {
            file: file.path.clone(),
            detail: format!("checksum {checksum}, metadata says {}", file.checksum),
        });
    }
    Ok(())
}

/// Size and checksum of a local file.
pub fn checksum_file(path: &LocalPath) -> Result<(u64, Checksum)> {
    let mut f = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let mut buf = vec![0u8; CHECKSUM_READ];
    let (mut size, mut sum) = (0u64, Checksum::default());
    loop {
        let n = read_full(&mut f, &mut buf).map_err(Error::io("read", path))?;
        if n == 0 {
            return Ok((size, sum));
        }
        size += n as u64;
        sum = sum.update(&buf[..n]);
    }
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Transfers of one restore in flight at once (Flink's default is 4 as well).
pub const DOWNLOAD_PARALLELISM: usize = 4;

impl CheckpointStore {
    /// Downloads each handle of `meta` in turn into a scratch directory and gives it to `read`
    /// on a blocking thread (the directory is removed afterwards): how tools such as an oracle
    /// look inside every subtask's state of a checkpoint. The results are in handle order.
    pub async fn read_handles<T, F>(&self, meta: &CheckpointMetadata, read: F) -> Result<Vec<T>>
    where
        T: Send + 'static,
        F: Fn(&LocalPath, &SubtaskHandle) -> Result<T> + Clone + Send + 'static,
    {
        let scratch = tempfile::tempdir().map_err(Error::io(
            "create temporary directory",
            std::env::temp_dir(),
        ))?;
        let mut out = Vec::with_capacity(meta.handles.len());
        for handle in &meta.handles {
            let dir = scratch.path().join(format!("subtask-{}", handle.subtask));
            self.download_handle(handle, &dir).await?;
            let (read, handle) = (read.clone(), handle.clone());
            let read_dir = dir.clone();
            let value = tokio::task::spawn_blocking(move || read(&read_dir, &handle))
                .await
                .map_err(|e| Error::Other(format!("reading a downloaded state: {e}")))??;
            std::fs::remove_dir_all(&dir).map_err(Error::io("remove directory", &dir))?;
            out.push(value);
        }
        Ok(out)
    }

    /// Downloads every file of `handle` into `dir` (created if needed) with bounded parallelism,
    /// verifying each, and writes the files it carries, all through the page cache (not
    /// synced). The handle is validated first. On failure every file this call wrote is removed
    /// and the error names the file at fault.
    pub async fn download_handle(&self, handle: &SubtaskHandle, dir: &LocalPath) -> Result<u64> {
        let referenced_in = self
            .paths
            .relative(&self.paths.handle(handle.checkpoint_id, handle.subtask));
        handle.validate(&referenced_in)?;
        let files: Vec<(&str, &FileRef)> = handle
            .shared
            .iter()
            .map(|s| (s.local_name.as_str(), &s.file))
            .chain(
                handle
                    .private
                    .iter()
                    .map(|p| (p.local_name.as_str(), &p.file)),
            )
            .collect();
        let bytes = self.download_files(&files, dir, &referenced_in).await?;
        let written = handle.inline.iter().try_for_each(|i| {
            write_inline(
                i,
                &dir.join(&i.local_name),
                LocalWrite::Cached,
                &referenced_in,
            )
        });
        if let Err(e) = written {
            for (name, _) in &files {
                let _ = std::fs::remove_file(dir.join(name));
            }
            for i in &handle.inline {
                let _ = std::fs::remove_file(dir.join(&i.local_name));
            }
            return Err(e);
        }
        Ok(bytes)
    }

    /// Downloads `(local name, reference)` pairs into `dir` through the page cache (not synced),
    /// all or nothing; returns the bytes.
    pub async fn download_files(
        &self,
        files: &[(&str, &FileRef)],
        dir: &LocalPath,
        referenced_in: &str,
    ) -> Result<u64> {
        std::fs::create_dir_all(dir).map_err(Error::io("create directory", dir))?;
        // Every transfer runs to its end (no cancellation mid-write), then the first error wins.
        let results: Vec<Result<()>> = futures::stream::iter(files.iter())
            .map(|(name, file)| {
                let target = dir.join(name);
                async move {
                    self.download_file(file, &target, referenced_in, LocalWrite::Cached, None)
                        .await
                }
            })
            .buffer_unordered(DOWNLOAD_PARALLELISM)
            .collect()
            .await;
        match results.into_iter().collect::<Result<Vec<()>>>() {
            Ok(_) => Ok(files.iter().map(|(_, f)| f.size).sum()),
            Err(e) => {
                for (name, _) in files {
                    let _ = std::fs::remove_file(dir.join(name));
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(settings: &[(&str, &str)]) {
        let settings = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        object_store_from_url_with("s3://bucket/prefix", &settings, Ambient::Forbidden).unwrap();
    }

    /// Clients made for the stores of `runtime` (other tests may add their own meanwhile).
    fn clients_of(runtime: &tokio::runtime::Runtime) -> usize {
        let id = runtime.handle().id();
        SharedClients::clients()
            .keys()
            .filter(|(of, _)| *of == id)
            .count()
    }

    #[test]
    fn stores_share_a_client_per_runtime_and_client_options() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        };
        // With credentials: a store without builds a second client for instance metadata.
        let endpoint = [
            ("aws_endpoint", "http://127.0.0.1:9"),
            ("aws_secret_access_key", "x"),
        ];
        let (first, second) = (runtime(), runtime());
        first.block_on(async {
            s3(&[endpoint[0], endpoint[1], ("aws_access_key_id", "a")]);
            s3(&[endpoint[0], endpoint[1], ("aws_access_key_id", "b")]);
        });
        // Credentials are the store's, not the client's.
        assert_eq!(clients_of(&first), 1);
        first.block_on(async {
            s3(&[
                endpoint[0],
                endpoint[1],
                ("aws_access_key_id", "a"),
                ("aws_allow_http", "true"),
            ])
        });
        assert_eq!(clients_of(&first), 2);
        second.block_on(async { s3(&[endpoint[0], endpoint[1], ("aws_access_key_id", "a")]) });
        assert_eq!(clients_of(&second), 1);
        assert_eq!(clients_of(&first), 2);
    }
}
