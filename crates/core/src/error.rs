//! The crate's one error type.
//!
//! Variants are grouped by what the caller should do about them: fix the input
//! ([`Error::InvalidInput`]), treat the stored data as damaged ([`Error::Corrupt`],
//! [`Error::MissingFile`], [`Error::UnsafePath`], [`Error::UnsupportedVersion`]) or retry
//! ([`Error::Store`], [`Error::Io`]).

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in regroup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value given by a user or a caller is not acceptable.
    #[error("invalid {field} = {value}: {expected}")]
    InvalidInput {
        /// The field, flag or argument at fault.
        field: String,
        /// The value that was given.
        value: String,
        /// What would have been accepted.
        expected: String,
    },

    /// A stored file's bytes do not match what its reference promises.
    #[error("corrupt file {file}: {detail}")]
    Corrupt {
        /// The object path or local path of the file.
        file: String,
        /// What differs (checksum, size).
        detail: String,
    },

    /// A file that metadata references is not in the store.
    #[error("missing file {file}: referenced by {referenced_by} but not found in the store")]
    MissingFile {
        /// The object path that is absent.
        file: String,
        /// The metadata that references it.
        referenced_by: String,
    },

    /// A path in metadata points outside the directory it must stay in.
    #[error("unsafe path {path:?} in {file}: {reason}")]
    UnsafePath {
        /// The offending path as written in the metadata.
        path: String,
        /// The metadata file holding it.
        file: String,
        /// Why it is refused.
        reason: String,
    },

    /// Metadata written in a format this build does not understand.
    #[error(
        "unsupported format version {found} in {file}: this build of regroup reads versions {supported}"
    )]
    UnsupportedVersion {
        /// The metadata file.
        file: String,
        /// The version found in it.
        found: u32,
        /// The versions this build reads, e.g. `1, 2`.
        supported: String,
    },

    /// A create-if-absent write found the object already present.
    #[error("{path} already exists; metadata is written once and never replaced")]
    AlreadyExists {
        /// The object path.
        path: String,
    },

    /// Metadata that is not valid JSON of the expected shape.
    #[error("cannot parse {file}: {source}")]
    Json {
        /// The metadata file.
        file: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },

    /// The object store failed an operation.
    #[error("object store: {operation} {path}: {source}")]
    Store {
        /// What was attempted (get, put, list, delete).
        operation: &'static str,
        /// The object path.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },

    /// A local file-system operation failed.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The local path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// RocksDB refused an operation.
    #[error("rocksdb: {context}: {source}")]
    RocksDb {
        /// What was attempted, and on what.
        context: String,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },

    /// A key was written to or read from a backend that does not own its key group.
    #[error(
        "key group {key_group} is outside this backend's key group range {range}; the key belongs to another subtask"
    )]
    KeyGroupNotOwned {
        /// The key's group.
        key_group: u32,
        /// The backend's range, as `KeyGroupRange` displays it (the error type is the lowest
        /// floor: it knows no domain type).
        range: String,
    },

    /// A request carried a fencing epoch other than the current one.
    #[error("fenced: request for epoch {requested}, current epoch is {current}")]
    Fenced {
        /// Epoch carried by the request.
        requested: u64,
        /// Epoch of the receiver.
        current: u64,
    },

    /// Anything else, with context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An [`Error::InvalidInput`] from its three parts.
    pub fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidInput {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            operation,
            path,
            source,
        }
    }

    /// An [`Error::RocksDb`] with context.
    pub fn rocks(context: impl Into<String>) -> impl FnOnce(rocksdb::Error) -> Self {
        let context = context.into();
        move |source| Error::RocksDb { context, source }
    }

    /// True when stored data is damaged, missing or unreadable: retrying cannot help.
    pub fn is_damaged_data(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::MissingFile { .. }
                | Error::UnsafePath { .. }
                | Error::UnsupportedVersion { .. }
                | Error::Json { .. }
        )
    }

    /// True when retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Store { .. } | Error::Io { .. })
    }
}
