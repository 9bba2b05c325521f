//! Importing a completed checkpoint of one job into another job's store (a fork, or a snapshot
//! restored into a job): every file is copied below the destination's root under a new
//! checkpoint id, so that neither job's garbage collection ever touches the other's files and
//! the source is only read.

use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::metadata::{CheckpointMetadata, FileRef, SubtaskHandle};
use super::paths::checkpoint_dir_name;
use super::store::CheckpointStore;
use crate::error::{Error, Result};

/// Files copied at once.
const LANES: usize = 8;

/// Copies completed checkpoint `id` of `source` into `dest` as checkpoint `new_id` and
/// completes it there; returns its metadata. Run again (after a crash), it copies what is
/// missing and returns the same checkpoint.
pub async fn import(
    source: &CheckpointStore,
    id: u64,
    dest: &CheckpointStore,
    new_id: u64,
) -> Result<CheckpointMetadata> {
    if let Some(done) = dest
        .get_json::<CheckpointMetadata>(&dest.paths().metadata(new_id))
        .await?
    {
        return dest.read_metadata(done.checkpoint_id).await;
    }
    let meta = source.read_metadata(id).await?;
    let imported = renamed(&meta, dest, new_id);
    // Owned pairs: a stream over borrowed ones is not `Send` for every lifetime.
    let copies: Vec<(FileRef, FileRef)> = meta
        .handles
        .iter()
        .zip(&imported.handles)
        .flat_map(|(from, to)| from.files().cloned().zip(to.files().cloned()))
        .collect();
    futures::stream::iter(copies)
        .map(|(from, to)| async move { copy_file(source, &from, dest, &to).await })
        .buffer_unordered(LANES)
        .try_collect::<Vec<()>>()
        .await?;
    for h in &imported.handles {
        match dest.write_handle(h).await {
            Ok(()) | Err(Error::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    dest.commit(&imported).await
}

/// `meta` as checkpoint `new_id` of `dest`'s job: private files move to the new checkpoint's
/// directory, shared files keep their names.
fn renamed(meta: &CheckpointMetadata, dest: &CheckpointStore, new_id: u64) -> CheckpointMetadata {
    let from_dir = format!("{}/", checkpoint_dir_name(meta.checkpoint_id));
    let to_dir = format!("{}/", checkpoint_dir_name(new_id));
    let handles = meta
        .handles
        .iter()
        .map(|h| {
            let mut h: SubtaskHandle = h.clone();
            h.job = dest.job().clone();
            h.checkpoint_id = new_id;
            for p in &mut h.private {
                if let Some(rest) = p.file.path.strip_prefix(&from_dir) {
                    p.file.path = format!("{to_dir}{rest}");
                }
            }
            h
        })
        .collect();
    CheckpointMetadata {
        job: dest.job().clone(),
        checkpoint_id: new_id,
        completed_at: Utc::now(),
        handles,
        ..meta.clone()
    }
}

/// Copies one file: inside one store by the store's own copy, across stores through memory;
/// a destination already holding the file with its size is left as it is.
async fn copy_file(
    source: &CheckpointStore,
    from: &FileRef,
    dest: &CheckpointStore,
    to: &FileRef,
) -> Result<()> {
    let from_path = source
        .paths()
        .resolve(&from.path, "the imported checkpoint")?;
    let to_path = dest.paths().resolve(&to.path, "the imported checkpoint")?;
    if size_at(dest, &to_path).await? == Some(to.size) {
        return Ok(());
    }
    let err = |operation: &'static str, path: &Path| {
        let path = path.to_string();
        move |source| Error::Store {
            operation,
            path,
            source,
        }
    };
    if source.url() == dest.url() {
        dest.object_store()
            .copy(&from_path, &to_path)
            .await
            .map_err(err("copy", &from_path))?;
    } else {
        let bytes = source
            .object_store()
            .get(&from_path)
            .await
            .map_err(err("get", &from_path))?
            .bytes()
            .await
            .map_err(err("get", &from_path))?;
        dest.object_store()
            .put(&to_path, bytes.into())
            .await
            .map_err(err("put", &to_path))?;
    }
    match size_at(dest, &to_path).await? {
        Some(size) if size == to.size => Ok(()),
        other => Err(Error::Corrupt {
            file: to.path.clone(),
            detail: format!(
                "copied from {} of {}: {} bytes expected, {other:?} found",
                from.path,
                source.url(),
                to.size
            ),
        }),
    }
}

async fn size_at(store: &CheckpointStore, path: &Path) -> Result<Option<u64>> {
    match store.object_store().head(path).await {
        Ok(meta) => Ok(Some(meta.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(source) => Err(Error::Store {
            operation: "head",
            path: path.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;
    use crate::checkpoint::testing;

    #[tokio::test]
    async fn a_checkpoint_imported_into_another_job_reads_back_whole() {
        let memory = Arc::new(InMemory::new());
        let prefix = Path::from("jobs");
        let source =
            CheckpointStore::new(memory.clone(), prefix.clone(), "ns/job".parse().unwrap());
        let dest = CheckpointStore::new(memory, prefix, "prod/b".parse().unwrap());
        let meta = testing::checkpoint(8, 2, 3);
        for f in meta.handles.iter().flat_map(|h| h.files()) {
            let at = source.paths().resolve(&f.path, "test").unwrap();
            let bytes = vec![7u8; f.size as usize];
            source.object_store().put(&at, bytes.into()).await.unwrap();
        }
        for h in &meta.handles {
            source.write_handle(h).await.unwrap();
        }
        source.commit(&meta).await.unwrap();
        let imported = import(&source, 5, &dest, 3).await.unwrap();
        assert_eq!(imported.checkpoint_id, 3);
        assert_eq!(imported.job, *dest.job());
        assert_eq!(dest.completed_ids().await.unwrap(), vec![3]);
        assert_eq!(dest.read_metadata(3).await.unwrap(), imported);
        for (from, to) in meta.handles.iter().zip(&imported.handles) {
            assert_eq!(from.key_group_range, to.key_group_range);
            for f in to.files() {
                assert!(
                    f.path.starts_with("shared/") || f.path.starts_with("chk-3/"),
                    "{}",
                    f.path
                );
            }
        }
        assert_eq!(
            source.completed_ids().await.unwrap(),
            vec![5],
            "the source is only read"
        );
        let again = import(&source, 5, &dest, 3).await.unwrap();
        assert_eq!(again, imported, "run again, the same checkpoint");
    }
}
