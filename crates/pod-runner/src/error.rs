//! The pod runner's errors: a pod spec or flag it cannot carry out, or a local file operation
//! that failed. Each carries its whole message: the runner reports errors, it never matches on
//! them.

use std::path::PathBuf;

/// Result with the runner's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the pod runner.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value the runner was given is not acceptable: what, the value, what is accepted.
    #[error("invalid {0}")]
    Invalid(String),
    /// A local file-system operation failed: what was attempted, on which path.
    #[error("{0} {1}: {2}")]
    Io(&'static str, PathBuf, #[source] std::io::Error),
}

impl Error {
    /// An [`Error::Invalid`] naming the field, the value and what would be accepted.
    pub fn invalid(
        field: impl AsRef<str>,
        value: impl ToString,
        expected: impl AsRef<str>,
    ) -> Self {
        let (field, value, expected) = (field.as_ref(), value.to_string(), expected.as_ref());
        Error::Invalid(format!("{field} = {value}: {expected}"))
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io(operation, path, source)
    }
}
