//! What the bench's CLI tests share: running `regroup-bench` in a temporary directory.

use std::process::Command;

/// Runs `regroup-bench` with `args` and `--dir` a temporary directory; returns its report,
/// after checking that it succeeded.
pub fn run_bench(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_regroup-bench"))
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    stdout
}
