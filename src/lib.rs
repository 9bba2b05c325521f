//! regroup: stateful, key-partitioned jobs on Kubernetes that rescale without losing state.
//!
//! This crate is the top floor: the in-pod worker runtime with the reference job and its oracle
//! ([`worker`]), the operator ([`operator`]) and the command line ([`cli`]; `src/main.rs` only
//! calls it). The floors below are re-exported under their usual names: [`regroup_core`]
//! (key groups, checkpoints, the state backend, the state volume) and [`regroup_restore`].
//! `docs/architecture.md` draws the whole house.

pub mod args;
pub mod cli;
pub mod inventory;
pub mod operator;
pub mod plugin;
pub mod telemetry;
pub mod tls;
pub mod worker;

pub use regroup_core::{
    Error, Result, backend, checkpoint, error, fault, keygroup, statedir, terminal,
};
pub use regroup_restore as restore;
