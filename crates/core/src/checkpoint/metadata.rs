//! Versioned JSON metadata: file references, subtask handles and the job-level checkpoint.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::paths::{JobId, JobPaths, check_local_name, check_relative_path, checkpoint_dir_name};
use crate::error::{Error, Result};
use crate::keygroup::{KeyGroupRange, check_max_parallelism};

/// The metadata format this build writes. Version 2 added each SST file's [`SstOrder`], version
/// 3 the [`InlineFile`]s a handle carries (a build that ignored them would restore no CURRENT)
/// and OPTIONS files stored once per DB instance under `shared/`.
pub const FORMAT_VERSION: u32 = 3;

/// The metadata formats this build reads; any other version is refused. Handles of format 1
/// lack [`SstOrder`]: a restore ingests their files only where the order cannot matter.
pub const READABLE_FORMAT_VERSIONS: [u32; 3] = [1, 2, 3];

/// Private files up to this size travel inside their handle as [`InlineFile`]s: CURRENT, an
/// empty WAL and a young MANIFEST are each an object less to write, check and delete per
/// checkpoint and subtask, while the OPTIONS file (about 15 KiB) stays an object of its own.
pub const INLINE_MAX_BYTES: u64 = 4096;

/// Refuses a format version this build cannot read; `file` names the metadata.
fn check_version(found: u32, file: &str) -> Result<()> {
    if READABLE_FORMAT_VERSIONS.contains(&found) {
        return Ok(());
    }
    Err(Error::UnsupportedVersion {
        file: file.to_owned(),
        found,
        supported: READABLE_FORMAT_VERSIONS
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A CRC-32C (Castagnoli) checksum, written as `crc32c:xxxxxxxx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Checksum(pub u32);

impl Checksum {
    /// Checksum of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Checksum(crc32c::crc32c(bytes))
    }

    /// Extends a running checksum with `bytes`.
    pub fn update(self, bytes: &[u8]) -> Self {
        Checksum(crc32c::crc32c_append(self.0, bytes))
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "crc32c:{:08x}", self.0)
    }
}

impl FromStr for Checksum {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        s.strip_prefix("crc32c:")
            .filter(|hex| hex.len() == 8)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .map(Checksum)
            .ok_or_else(|| Error::invalid("checksum", s, "crc32c:<8 hex digits>"))
    }
}

impl Serialize for Checksum {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Checksum {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A reference to one stored file: where it is, how big, and its checksum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileRef {
    /// Object path relative to the job directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Checksum of the whole content.
    pub checksum: Checksum,
}

/// An SST file of a subtask's RocksDB, stored once under `shared/` and referenced by every
/// checkpoint whose DB still holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedFile {
    /// File name inside the DB directory, e.g. `000012.sst`.
    pub local_name: String,
    /// The stored copy.
    pub file: FileRef,
    /// Column family (named state) the file belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column_family: Option<String>,
    /// LSM level of the file when the checkpoint was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i32>,
    /// First and last key group the file holds; absent means "may hold any key group".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_groups: Option<KeyGroupRange>,
    /// Where the file's data stands in time among the DB's files (format 2; absent in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<SstOrder>,
}

/// What RocksDB knows of an SST file's age: a restore that ingests files which overlap must
/// pass them oldest first, and within L0 neither the file number nor the level tells that (an
/// intra-L0 compaction's output can hold older data than a flush numbered before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SstOrder {
    /// Smallest sequence number of the file's entries.
    pub smallest_seqno: u64,
    /// Largest sequence number of the file's entries.
    pub largest_seqno: u64,
    /// RocksDB's epoch number, its own order of L0 files (larger is newer; a compaction's output
    /// takes its oldest input's); absent when RocksDB did not know it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_number: Option<u64>,
}

/// A non-SST file (MANIFEST, CURRENT, OPTIONS) of one checkpoint of one subtask: stored in
/// the checkpoint's directory, or (an OPTIONS file) in its DB instance's `shared/` directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrivateFile {
    /// File name inside the DB directory.
    pub local_name: String,
    /// The stored copy.
    pub file: FileRef,
}

/// Whether a DB's file is an OPTIONS file: RocksDB writes each under a new number and never
/// changes it, so one stored copy under `shared/` serves every checkpoint of its DB instance.
pub fn is_options_file(name: &str) -> bool {
    name.starts_with("OPTIONS-")
}

/// A private file small enough ([`INLINE_MAX_BYTES`]) to be carried by its handle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InlineFile {
    /// File name inside the DB directory.
    pub local_name: String,
    /// Size in bytes.
    pub size: u64,
    /// Checksum of the content: checked like a download's before a restore writes it.
    pub checksum: Checksum,
    /// The bytes, base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub content: Vec<u8>,
}

impl InlineFile {
    /// The file named `local_name` holding `content`.
    pub fn new(local_name: String, content: Vec<u8>) -> Self {
        InlineFile {
            local_name,
            size: content.len() as u64,
            checksum: Checksum::of(&content),
            content,
        }
    }

    /// Refuses bytes of another size or checksum than the handle (`file`) gives for this file.
    pub fn expect(&self, size: u64, checksum: Checksum, file: &str) -> Result<()> {
        if (size, checksum) == (self.size, self.checksum) {
            return Ok(());
        }
        Err(Error::Corrupt {
            file: file.to_owned(),
            detail: format!(
                "inline file {}: {size} bytes with {checksum}, the handle says {} bytes with {}",
                self.local_name, self.size, self.checksum
            ),
        })
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// What one subtask contributed to one checkpoint: everything needed to rebuild its DB.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskHandle {
    /// Metadata format version; always [`FORMAT_VERSION`] when written by this build, one of
    /// [`READABLE_FORMAT_VERSIONS`] when read.
    pub format_version: u32,
    /// The job the state belongs to.
    pub job: JobId,
    /// The checkpoint this handle belongs to.
    pub checkpoint_id: u64,
    /// Fencing epoch of the worker generation that wrote it.
    pub epoch: u64,
    /// Subtask index at the time of the checkpoint.
    pub subtask: u32,
    /// Parallelism at the time of the checkpoint.
    pub parallelism: u32,
    /// Number of key groups of the job.
    pub max_parallelism: u32,
    /// Key groups whose state this handle holds.
    pub key_group_range: KeyGroupRange,
    /// Unique id of the DB instance that produced the files (one per opened DB).
    pub instance_id: String,
    /// Column families (named states) of the DB, `default` included.
    pub column_families: Vec<String>,
    /// SST files, shared between checkpoints.
    pub shared: Vec<SharedFile>,
    /// Its other files, stored as objects.
    pub private: Vec<PrivateFile>,
    /// Files private to this checkpoint, small enough to be carried here (format 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inline: Vec<InlineFile>,
    /// Bytes of all referenced files.
    pub bytes_total: u64,
    /// Bytes uploaded by this checkpoint (the rest was referenced from earlier ones).
    pub bytes_uploaded: u64,
    /// When the worker finished the handle.
    pub created_at: DateTime<Utc>,
    /// When the worker process that wrote it applied its first event and its last before this
    /// checkpoint (none if it applied none): a rescale's downtime, from the workers' own clocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processed: Option<ProcessedEvents>,
}

/// The wall-clock times of a worker process's first event and of its last before a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessedEvents {
    /// The first event this process applied.
    pub first: DateTime<Utc>,
    /// The last event it applied before the checkpoint was captured.
    pub last: DateTime<Utc>,
}

/// The job-level record of a completed checkpoint. Its existence in the store means
/// "completed"; it embeds every subtask's handle so that a restore reads one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointMetadata {
    /// Metadata format version.
    pub format_version: u32,
    /// The job.
    pub job: JobId,
    /// Checkpoint id, increasing over the life of the job.
    pub checkpoint_id: u64,
    /// Epoch of the workers that took it.
    pub epoch: u64,
    /// Parallelism of the workers that took it.
    pub parallelism: u32,
    /// Number of key groups of the job.
    pub max_parallelism: u32,
    /// When the last handle arrived and this record was written.
    pub completed_at: DateTime<Utc>,
    /// One handle per subtask, ordered by subtask.
    pub handles: Vec<SubtaskHandle>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionProbe {
    format_version: Option<u32>,
}

/// Parses metadata JSON, refusing a format version this build cannot read before looking at
/// anything else.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], file: &str) -> Result<T> {
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(|source| Error::Json {
        file: file.to_owned(),
        source,
    })?;
    match probe.format_version {
        Some(found) => check_version(found, file)?,
        None => {
            return Err(Error::Corrupt {
                file: file.to_owned(),
                detail: "no formatVersion field; not regroup metadata".to_owned(),
            });
        }
    }
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        file: file.to_owned(),
        source,
    })
}

impl SubtaskHandle {
    /// Every file reference of the handle, shared first.
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.shared
            .iter()
            .map(|s| &s.file)
            .chain(self.private.iter().map(|p| &p.file))
    }

    /// Checks what a restore relies on; `file` names the metadata for error messages.
    pub fn validate(&self, file: &str) -> Result<()> {
        check_version(self.format_version, file)?;
        check_max_parallelism(self.max_parallelism)?;
        if self.key_group_range.start > self.key_group_range.end
            || self.key_group_range.end >= self.max_parallelism
        {
            return Err(Error::Corrupt {
                file: file.to_owned(),
                detail: format!(
                    "key group range {} does not fit max parallelism {}",
                    self.key_group_range, self.max_parallelism
                ),
            });
        }
        let private_prefix = format!("{}/private/", checkpoint_dir_name(self.checkpoint_id));
        let mut names = BTreeSet::new();
        for s in &self.shared {
            check_local_name(&s.local_name, file)?;
            check_relative_path(&s.file.path, file)?;
            if !s.file.path.starts_with("shared/") {
                return Err(Error::UnsafePath {
                    path: s.file.path.clone(),
                    file: file.to_owned(),
                    reason: "shared files must lie under shared/".to_owned(),
                });
            }
            if !names.insert(s.local_name.as_str()) {
                return Err(Error::Corrupt {
                    file: file.to_owned(),
                    detail: format!("local file {} listed twice", s.local_name),
                });
            }
            if let Some(order) = s.order
                && order.smallest_seqno > order.largest_seqno
            {
                return Err(Error::Corrupt {
                    file: file.to_owned(),
                    detail: format!(
                        "local file {}: smallest sequence number {} above the largest, {}",
                        s.local_name, order.smallest_seqno, order.largest_seqno
                    ),
                });
            }
        }
        for p in &self.private {
            check_local_name(&p.local_name, file)?;
            check_relative_path(&p.file.path, file)?;
            let instance_copy = is_options_file(&p.local_name)
                && p.file.path == JobPaths::shared_file(&self.instance_id, &p.local_name);
            if !p.file.path.starts_with(&private_prefix) && !instance_copy {
                return Err(Error::UnsafePath {
                    path: p.file.path.clone(),
                    file: file.to_owned(),
                    reason: format!(
                        "private files must lie under {private_prefix} (an OPTIONS file: or be \
                         shared/<its instance>/<its name>)"
                    ),
                });
            }
            if !names.insert(p.local_name.as_str()) {
                return Err(Error::Corrupt {
                    file: file.to_owned(),
                    detail: format!("local file {} listed twice", p.local_name),
                });
            }
        }
        for i in &self.inline {
            check_local_name(&i.local_name, file)?;
            if !names.insert(i.local_name.as_str()) {
                return Err(Error::Corrupt {
                    file: file.to_owned(),
                    detail: format!("local file {} listed twice", i.local_name),
                });
            }
            i.expect(i.content.len() as u64, Checksum::of(&i.content), file)?;
        }
        Ok(())
    }
}

impl CheckpointMetadata {
    /// Checks every handle and that the handles' ranges partition `[0, maxParallelism)`.
    pub fn validate(&self, file: &str) -> Result<()> {
        check_version(self.format_version, file)?;
        let mut next = 0u32;
        for h in &self.handles {
            h.validate(file)?;
            if h.checkpoint_id != self.checkpoint_id || h.max_parallelism != self.max_parallelism {
                return Err(Error::Corrupt {
                    file: file.to_owned(),
                    detail: format!(
                        "handle of subtask {} belongs to checkpoint {} with max parallelism {}",
                        h.subtask, h.checkpoint_id, h.max_parallelism
                    ),
                });
            }
            if h.key_group_range.start != next {
                return Err(Error::Corrupt {
                    file: file.to_owned(),
                    detail: format!(
                        "handle ranges do not partition the key groups: expected a range starting at {next}, found {}",
                        h.key_group_range
                    ),
                });
            }
            next = h.key_group_range.end + 1;
        }
        if next != self.max_parallelism {
            return Err(Error::Corrupt {
                file: file.to_owned(),
                detail: format!(
                    "handles cover key groups [0, {next}) of [0, {})",
                    self.max_parallelism
                ),
            });
        }
        Ok(())
    }

    /// Bytes of all files of all handles.
    pub fn bytes_total(&self) -> u64 {
        self.handles.iter().map(|h| h.bytes_total).sum()
    }

    /// Bytes this checkpoint uploaded.
    pub fn bytes_uploaded(&self) -> u64 {
        self.handles.iter().map(|h| h.bytes_uploaded).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_handle() -> SubtaskHandle {
        SubtaskHandle {
            instance_id: "i1".into(),
            shared: vec![SharedFile {
                local_name: "000009.sst".into(),
                file: FileRef {
                    path: "shared/i1/000009.sst".into(),
                    size: 10,
                    checksum: Checksum(0xdeadbeef),
                },
                column_family: Some("default".into()),
                level: Some(0),
                key_groups: Some(KeyGroupRange { start: 0, end: 3 }),
                order: Some(SstOrder {
                    smallest_seqno: 5,
                    largest_seqno: 9,
                    epoch_number: Some(2),
                }),
            }],
            private: vec![PrivateFile {
                local_name: "CURRENT".into(),
                file: FileRef {
                    path: "chk-3/private/0/CURRENT".into(),
                    size: 16,
                    checksum: Checksum(1),
                },
            }],
            inline: vec![InlineFile::new(
                "MANIFEST-000005".into(),
                vec![0, 0xff, 0x10, 0x80],
            )],
            bytes_total: 30,
            bytes_uploaded: 30,
            ..crate::checkpoint::testing::handle("ns/job".parse().unwrap(), 3, 128, 1, 0)
        }
    }

    #[test]
    fn round_trip_and_version_check() {
        let h = sample_handle();
        let json = serde_json::to_vec(&h).unwrap();
        assert!(String::from_utf8_lossy(&json).contains("\"crc32c:deadbeef\""));
        let back: SubtaskHandle = decode(&json, "h.json").unwrap();
        assert_eq!(back, h);
        back.validate("h.json").unwrap();

        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["formatVersion"] = 99.into();
        let e = decode::<SubtaskHandle>(&serde_json::to_vec(&v).unwrap(), "h.json").unwrap_err();
        assert!(
            e.to_string().contains(
                "unsupported format version 99 in h.json: this build of regroup reads versions 1, 2, 3"
            ),
            "{e}"
        );
    }

    #[test]
    fn carried_files_read_back_byte_for_byte_or_not_at_all() {
        let h = sample_handle();
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"content\":\"AP8QgA==\""), "base64: {json}");
        let back: SubtaskHandle = decode(json.as_bytes(), "h.json").unwrap();
        assert_eq!(back.inline[0].content, vec![0, 0xff, 0x10, 0x80]);

        let mut altered = h.clone();
        altered.inline[0].content[1] = 0xfe;
        let e = altered
            .validate("chk-3/handles/0.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("chk-3/handles/0.json: inline file MANIFEST-000005: 4 bytes with crc32c:"),
            "{e}"
        );
        let mut twice = h.clone();
        twice.inline[0].local_name = "CURRENT".into();
        let e = twice.validate("x").unwrap_err().to_string();
        assert!(e.contains("local file CURRENT listed twice"), "{e}");
        let mut escaping = h.clone();
        escaping.inline[0].local_name = "../CURRENT".into();
        assert!(escaping.validate("x").is_err());
    }

    #[test]
    fn format_1_handles_still_read() {
        // A handle as format 1 wrote it: no `order` on its shared files.
        let mut v = serde_json::to_value(sample_handle()).unwrap();
        v["formatVersion"] = 1.into();
        v["shared"][0].as_object_mut().unwrap().remove("order");
        let back: SubtaskHandle = decode(&serde_json::to_vec(&v).unwrap(), "h.json").unwrap();
        assert_eq!(back.format_version, 1);
        assert_eq!(back.shared[0].order, None);
        back.validate("h.json").unwrap();
        let mut m = back;
        m.format_version = 0;
        let e = m.validate("h.json").unwrap_err().to_string();
        assert!(e.contains("version 0 in h.json"), "{e}");
    }

    #[test]
    fn an_inverted_sequence_range_is_refused() {
        let mut h = sample_handle();
        h.shared[0].order = Some(SstOrder {
            smallest_seqno: 10,
            largest_seqno: 9,
            epoch_number: None,
        });
        let e = h.validate("chk-3/handles/0.json").unwrap_err().to_string();
        assert!(
            e.contains("chk-3/handles/0.json") && e.contains("000009.sst") && e.contains("10"),
            "{e}"
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        let mut h = sample_handle();
        h.shared[0].file.path = "shared/../../etc/passwd".into();
        let e = h.validate("chk-3/handles/0.json").unwrap_err();
        assert!(e.to_string().contains("chk-3/handles/0.json"), "{e}");
        let mut h = sample_handle();
        h.private[0].file.path = "chk-2/private/0/CURRENT".into();
        assert!(h.validate("x").is_err());
        let mut h = sample_handle();
        h.private[0].local_name = "../CURRENT".into();
        assert!(h.validate("x").is_err());
    }

    #[test]
    fn an_options_file_may_be_its_instances_stored_copy() {
        let options = |path: &str, name: &str| {
            let mut h = sample_handle();
            h.private.push(PrivateFile {
                local_name: name.into(),
                file: FileRef {
                    path: path.into(),
                    size: 15_000,
                    checksum: Checksum(2),
                },
            });
            h.validate("chk-3/handles/0.json")
        };
        options("shared/i1/OPTIONS-000007", "OPTIONS-000007").unwrap();
        options("chk-3/private/0/i1/OPTIONS-000007", "OPTIONS-000007").unwrap();
        for (path, name) in [
            ("shared/i2/OPTIONS-000007", "OPTIONS-000007"), // another instance's
            ("shared/i1/OPTIONS-000009", "OPTIONS-000007"), // another file
            ("shared/i1/MANIFEST-000005", "MANIFEST-000005"), // not written once
        ] {
            let e = options(path, name).unwrap_err().to_string();
            assert!(
                e.contains(path) && e.contains("chk-3/handles/0.json"),
                "{e}"
            );
        }
    }

    #[test]
    fn metadata_must_partition_key_groups() {
        let h = sample_handle();
        let mut m = CheckpointMetadata {
            format_version: FORMAT_VERSION,
            job: h.job.clone(),
            checkpoint_id: 3,
            epoch: 1,
            parallelism: 1,
            max_parallelism: 128,
            completed_at: Utc::now(),
            handles: vec![h],
        };
        m.validate("m").unwrap();
        m.handles[0].key_group_range.end = 100;
        assert!(m.validate("m").unwrap_err().to_string().contains("cover"));
    }

    #[test]
    fn checksum_text() {
        assert_eq!(Checksum::of(b"123456789").to_string(), "crc32c:e3069283");
        assert_eq!(
            Checksum::default().update(b"1234").update(b"56789"),
            Checksum::of(b"123456789")
        );
        assert!("md5:00".parse::<Checksum>().is_err());
    }
}
