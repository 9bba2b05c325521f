//! Shared by the integration tests: a test file declares `mod support;` and uses what it needs
//! (`podrunner_cluster` includes only the leaves `cluster` and `poll`, with `#[path]`).
//!
//! - [`cluster`]: the one gate for the test cluster (`e2e/cluster up`, then
//!   `eval "$(e2e/cluster env)"`): a kube client, the S3 bucket, helm. Without them a test says
//!   why and passes, unless `REGROUP_REQUIRE_CLUSTER=1` (CI), which makes it fail.
//! - [`poll`]: the one polling loop (`eventually` and its variants).
//! - [`operator`]: the StatefulJob CRD, jobs, namespaces and fake workers of the operator tests.
//! - [`restore`]: the oracle data set of the restore tests, its workers and checkpoints.
//! - [`worker`]: real `regroup worker` processes on 127.0.0.x and a `file://` store.
#![allow(dead_code)]

pub mod cluster;
pub mod operator;
pub mod poll;
pub mod restore;
pub mod worker;

use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `regroup` command of the binary under test.
pub fn regroup_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_regroup"))
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
