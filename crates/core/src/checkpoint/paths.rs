//! Every object path of a job's checkpoints, in one place.
//!
//! ```text
//! <storage url>/<namespace>/<job>/
//!   shared/<instance-id>/<NNNNNN>.sst     SST files: written once, shared by checkpoints
//!   chk-<id>/private/<subtask>/<name>     MANIFEST, CURRENT, OPTIONS of that subtask
//!   chk-<id>/handles/<subtask>.json       the subtask's handle, written by its worker
//!   chk-<id>/_metadata.json               written when all handles are in: existence = completed
//! ```
//!
//! Paths stored in metadata are relative to the job root and are checked by
//! [`check_relative_path`] before any use, so a handle can never make a restore read or write
//! outside the job's directory.

use std::fmt;
use std::str::FromStr;

use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A job's identity: its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId {
    /// Kubernetes namespace of the StatefulJob.
    pub namespace: String,
    /// Name of the StatefulJob.
    pub name: String,
}

impl JobId {
    /// A job id from its parts, each a DNS-1123 label.
    pub fn new(namespace: &str, name: &str) -> Result<Self> {
        for (field, value) in [("namespace", namespace), ("name", name)] {
            if !is_dns_label(value) {
                return Err(Error::invalid(
                    format!("job {field}"),
                    format!("{value:?}"),
                    "a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                ));
            }
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl FromStr for JobId {
    type Err = Error;

    /// Parses `NAMESPACE/NAME`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once('/') {
            Some((ns, name)) => JobId::new(ns, name),
            None => Err(Error::invalid(
                "job",
                format!("{s:?}"),
                "NAMESPACE/NAME, e.g. default/wordcount",
            )),
        }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Name of the directory of checkpoint `id`.
pub fn checkpoint_dir_name(id: u64) -> String {
    format!("chk-{id}")
}

/// The checkpoint id of a directory name `chk-<id>`, if it is one.
pub fn parse_checkpoint_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("chk-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A checkpoint directory's directory of handles.
const HANDLES: &str = "handles";
/// A checkpoint's metadata file.
const METADATA: &str = "_metadata.json";

fn handle_name(subtask: u32) -> String {
    format!("{subtask}.json")
}

/// The subtask of a handle's file name `<subtask>.json` (see [`JobPaths::handle`]), if it is one.
pub fn parse_handle_name(name: &str) -> Option<u32> {
    name.strip_suffix(".json")?.parse().ok()
}

/// Object paths of one job, relative to the store's root.
#[derive(Clone, Debug)]
pub struct JobPaths {
    root: Path,
}

impl JobPaths {
    /// Paths for `job` below `prefix` (the path part of the storage URL).
    pub fn new(prefix: &Path, job: &JobId) -> Self {
        let mut root = prefix.clone();
        root = root.join(job.namespace.as_str()).join(job.name.as_str());
        Self { root }
    }

    /// The job's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a relative path from metadata against the job root, after checking it.
    pub fn resolve(&self, relative: &str, referenced_in: &str) -> Result<Path> {
        check_relative_path(relative, referenced_in)?;
        let mut p = self.root.clone();
        for part in relative.split('/') {
            p = p.join(part);
        }
        Ok(p)
    }

    /// The path relative to the job root, as stored in metadata.
    pub fn relative(&self, path: &Path) -> String {
        path.prefix_match(&self.root)
            .map(|parts| {
                parts
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_else(|| path.to_string())
    }

    /// Directory of all shared SST files.
    pub fn shared_root(&self) -> Path {
        self.root.clone().join("shared")
    }

    /// Relative path of a shared SST file of DB instance `instance`.
    pub fn shared_file(instance: &str, file_name: &str) -> String {
        format!("shared/{instance}/{file_name}")
    }

    /// Relative path of a private file of `subtask` in checkpoint `id`, written by DB instance
    /// `instance`: a second attempt at the same checkpoint (a restarted worker) never
    /// overwrites the files a handle of the first one references.
    pub fn private_file(id: u64, subtask: u32, instance: &str, file_name: &str) -> String {
        format!(
            "{}/private/{subtask}/{instance}/{file_name}",
            checkpoint_dir_name(id)
        )
    }

    /// The retention the operator applies, recorded for garbage collection run by hand.
    pub fn retention(&self) -> Path {
        self.root.clone().join("_retention.json")
    }

    /// The directory of the pins (checkpoints that snapshots hold).
    pub fn pins_dir(&self) -> Path {
        self.root.clone().join("_pins")
    }

    /// The pin recorded under `key`.
    pub fn pin(&self, key: &str) -> Path {
        self.pins_dir().join(format!("{key}.json"))
    }

    /// The directory of the restores' progress reports.
    pub fn progress_root(&self) -> Path {
        self.root.clone().join("_progress")
    }

    /// The progress reports of the restores of `epoch`.
    pub fn progress_dir(&self, epoch: u64) -> Path {
        self.progress_root().join(format!("epoch-{epoch}"))
    }

    /// The progress report of `subtask`'s restore in `epoch`.
    pub fn progress(&self, epoch: u64, subtask: u32) -> Path {
        self.progress_dir(epoch).join(format!("{subtask}.json"))
    }

    /// The directory of checkpoint `id`.
    pub fn checkpoint_dir(&self, id: u64) -> Path {
        self.root.clone().join(checkpoint_dir_name(id))
    }

    /// Where `subtask` writes its handle for checkpoint `id`.
    pub fn handle(&self, id: u64, subtask: u32) -> Path {
        self.handles_dir(id).join(handle_name(subtask))
    }

    /// [`JobPaths::handle`] relative to the job root.
    pub fn handle_file(id: u64, subtask: u32) -> String {
        format!(
            "{}/{HANDLES}/{}",
            checkpoint_dir_name(id),
            handle_name(subtask)
        )
    }

    /// The directory of all handles of checkpoint `id`.
    pub fn handles_dir(&self, id: u64) -> Path {
        self.checkpoint_dir(id).join(HANDLES)
    }

    /// The job-level metadata of checkpoint `id`; its existence means the checkpoint completed.
    pub fn metadata(&self, id: u64) -> Path {
        self.checkpoint_dir(id).join(METADATA)
    }

    /// [`JobPaths::metadata`] relative to the job root.
    pub fn metadata_file(id: u64) -> String {
        format!("{}/{METADATA}", checkpoint_dir_name(id))
    }
}

/// Checks a relative object path taken from metadata: no absolute path, no `..` or `.`
/// segment, no empty segment, no backslash, and it must lie under `shared/` or `chk-<id>/`.
pub fn check_relative_path(path: &str, referenced_in: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::UnsafePath {
            path: path.to_owned(),
            file: referenced_in.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if path.is_empty() {
        return refuse("empty path");
    }
    if path.starts_with('/') {
        return refuse("absolute paths are not accepted; paths are relative to the job directory");
    }
    if path.contains('\\') || path.contains('\0') {
        return refuse("backslashes and NUL bytes are not accepted");
    }
    for segment in path.split('/') {
        match segment {
            "" => return refuse("empty path segment"),
            "." | ".." => {
                return refuse("'.' and '..' segments would escape the job directory");
            }
            _ => {}
        }
    }
    let first = path.split('/').next().unwrap_or_default();
    if first != "shared" && parse_checkpoint_dir_name(first).is_none() {
        return refuse("must lie under shared/ or chk-<id>/");
    }
    Ok(())
}

/// Checks a local file name taken from metadata: a plain name, no directory part.
pub fn check_local_name(name: &str, referenced_in: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
    {
        return Err(Error::UnsafePath {
            path: name.to_owned(),
            file: referenced_in.to_owned(),
            reason: "a local file name must be a plain name without directory parts".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let job: JobId = "prod/orders".parse().unwrap();
        let paths = JobPaths::new(&Path::from("bucket-prefix"), &job);
        assert_eq!(paths.root().as_ref(), "bucket-prefix/prod/orders");
        assert_eq!(
            paths.handle(7, 2).as_ref(),
            "bucket-prefix/prod/orders/chk-7/handles/2.json"
        );
        assert_eq!(
            paths.metadata(7).as_ref(),
            "bucket-prefix/prod/orders/chk-7/_metadata.json"
        );
        assert_eq!(
            JobPaths::shared_file("abc", "000012.sst"),
            "shared/abc/000012.sst"
        );
        assert_eq!(
            JobPaths::private_file(7, 1, "abc", "CURRENT"),
            "chk-7/private/1/abc/CURRENT"
        );
        let resolved = paths.resolve("shared/abc/000012.sst", "x").unwrap();
        assert_eq!(paths.relative(&resolved), "shared/abc/000012.sst");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "../other/x.sst",
            "shared/../../x",
            "/etc/passwd",
            "shared//x",
            "shared/./x",
            "elsewhere/x",
            "",
            "chk-x/private/0/CURRENT",
        ] {
            let e = check_relative_path(bad, "chk-1/handles/0.json").unwrap_err();
            assert!(
                matches!(e, Error::UnsafePath { .. }),
                "{bad:?} accepted: {e}"
            );
            assert!(e.to_string().contains("chk-1/handles/0.json"));
        }
        check_relative_path("chk-12/private/0/MANIFEST-000005", "m").unwrap();
        assert!(check_local_name("../CURRENT", "h").is_err());
        assert!(check_local_name("a/b", "h").is_err());
        check_local_name("000012.sst", "h").unwrap();
    }

    #[test]
    fn job_ids() {
        assert!("default".parse::<JobId>().is_err());
        assert!("Default/x".parse::<JobId>().is_err());
        assert!("ns/-x".parse::<JobId>().is_err());
        assert_eq!("ns/x-1".parse::<JobId>().unwrap().to_string(), "ns/x-1");
        assert_eq!(parse_checkpoint_dir_name("chk-42"), Some(42));
        assert_eq!(parse_checkpoint_dir_name("chk-"), None);
        assert_eq!(parse_checkpoint_dir_name("chk-4a"), None);
    }
}
