//! regroup: stateful, key-partitioned jobs on Kubernetes that rescale without losing state.
//!
//! The library holds all logic; `src/main.rs` only wires subcommands. See
//! `architecture.md` for the picture: key groups ([`keygroup`]), checkpoint metadata and the
//! object store ([`checkpoint`]), the RocksDB state backend with incremental snapshots
//! ([`backend`]), the in-pod worker runtime with the reference job and its oracle ([`worker`]).

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod error;
pub mod fault;
pub mod keygroup;
pub mod operator;
pub mod podrunner;
pub mod restore;
pub mod telemetry;
pub mod tls;
pub mod worker;

pub use error::{Error, Result};
