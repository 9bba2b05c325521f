//! Checkpoints in an object store: metadata types, object paths, the checksummed store and the
//! registry of file references with retention and garbage collection.

pub mod import;
pub mod local_file;
pub mod metadata;
pub mod paths;
pub mod pins;
pub mod progress;
pub mod registry;
pub mod store;
pub mod testing;

pub use metadata::{
    CheckpointMetadata, Checksum, FileRef, INLINE_MAX_BYTES, InlineFile, PrivateFile,
    ProcessedEvents, SharedFile, SstOrder, SubtaskHandle,
};
pub use paths::{JobId, JobPaths};
pub use store::CheckpointStore;
