//! The pod runner's errors: bad input (a pod spec or flag it cannot carry out) or a local file
//! operation that failed.

use std::path::PathBuf;

/// Result with the runner's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the pod runner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value the runner was given is not acceptable.
    #[error("invalid {field} = {value}: {expected}")]
    InvalidInput {
        /// The field, flag or argument at fault.
        field: String,
        /// The value that was given.
        value: String,
        /// What would have been accepted.
        expected: String,
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
}
