//! The one gate for what lives outside the process: the test cluster's API server, its S3
//! bucket, helm. Each comes from `eval "$(e2e/cluster env)"`; without it a test prints why and
//! passes, so `cargo test` works on a machine with no cluster. `REGROUP_REQUIRE_CLUSTER=1` (CI,
//! `./test`, `e2e/smoke`) turns a missing one into a failure: a run that lost its cluster must
//! not go green by skipping.
//!
//! Like [`poll`](super::poll), a leaf: it uses no other support module and no crate of this
//! repository, so a test outside this package can include it with `#[path]`.

use std::process::Command;

use kube::Client;

const HINT: &str =
    "start the test cluster with: e2e/build && e2e/cluster up && eval \"$(e2e/cluster env)\"";

/// Whether a missing cluster fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("REGROUP_REQUIRE_CLUSTER").as_deref() == Ok("1")
}

/// Says that `test` is skipped because of `why`; panics instead when [`required`].
pub fn skip(test: &str, why: &str) {
    assert!(
        !required(),
        "{test}: {why}, and REGROUP_REQUIRE_CLUSTER=1 forbids skipping; {HINT}"
    );
    eprintln!("skipping {test}: {why} ({HINT})");
}

/// The value of `var`, or `None` when it is unset or empty and `test` is [skipped](skip).
pub fn var(test: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            skip(test, &format!("{var} is not set"));
            None
        }
    }
}

/// A client for the test cluster (`KUBECONFIG`), or `None` when `test` is [skipped](skip).
pub async fn kube(test: &str) -> Option<Client> {
    var(test, "KUBECONFIG")?;
    // Logs go through the test harness (shown for failing tests); RUST_LOG selects them.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // Both rustls back-ends are compiled in (see Cargo.toml); kube's is ring. (What
    // `regroup::tls::install_crypto_provider` does, spelled out: see the module's note.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    Some(
        Client::try_default()
            .await
            .expect("a client from KUBECONFIG"),
    )
}

/// The test cluster's S3 bucket (`REGROUP_TEST_S3_BUCKET`, credentials in `AWS_*`), or `None`
/// when `test` is [skipped](skip).
pub fn s3_bucket(test: &str) -> Option<String> {
    var(test, "REGROUP_TEST_S3_BUCKET")
}

/// Whether `helm` (Helm 4) runs (it is on the PATH of `e2e/cluster env`); if not, `test` is
/// [skipped](skip).
pub fn helm(test: &str) -> bool {
    runs(test, "helm")
}

/// Helm 4 (`helm`) and Helm 3 (`helm3`), both on the PATH of `e2e/cluster env`; empty when
/// `test` is [skipped](skip).
pub fn helms(test: &str) -> Vec<&'static str> {
    if runs(test, "helm") && runs(test, "helm3") {
        vec!["helm", "helm3"]
    } else {
        Vec::new()
    }
}

fn runs(test: &str, program: &str) -> bool {
    let found = Command::new(program)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip(test, &format!("{program} is not on PATH"));
    }
    found
}
