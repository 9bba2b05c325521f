//! regroup's lowest floor: key groups ([`keygroup`]), checkpoints in an object store
//! ([`checkpoint`]), the RocksDB state backend with incremental snapshots ([`backend`]), the
//! worker's state volume ([`statedir`]), progress bars of commands run by hand ([`terminal`])
//! and the fault knobs of the tests ([`fault`]).
//! See `docs/architecture.md` for the whole house.

pub mod backend;
pub mod checkpoint;
pub mod error;
pub mod fault;
pub mod keygroup;
pub mod statedir;
pub mod terminal;

pub use error::{Error, Result};
