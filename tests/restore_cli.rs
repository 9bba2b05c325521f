//! `regroup plan` and `regroup restore` as a user and an init container run them.

mod restore_support;

use std::process::Command;

use regroup::backend::StateBackend;
use regroup::checkpoint::CheckpointStore;
use restore_support::*;

fn regroup(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_regroup"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("REGROUP_STORE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn plan_prints_ranges() {
    let (ok, out, err) = regroup(
        &[
            "plan",
            "--max-parallelism",
            "128",
            "--from",
            "3",
            "--to",
            "2",
        ],
        &[],
    );
    assert!(ok, "{err}");
    println!("{out}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("0 "))
        .unwrap();
    assert!(
        line.contains("[0, 63]") && line.contains("0:[0, 42] 1:[43, 63]"),
        "{line}"
    );
    let (ok, _, err) = regroup(&["plan", "--max-parallelism", "128", "--to", "129"], &[]);
    assert!(!ok);
    assert!(err.contains("parallelism = 129"), "{err}");
    let (ok, _, err) = regroup(&["plan", "--to", "2"], &[]);
    assert!(!ok);
    assert!(err.contains("max-parallelism"), "{err}");
}

#[tokio::test]
async fn plan_and_restore_a_stored_checkpoint() {
    let root = tempdir();
    let url = format!("file://{}/store", root.path().display());
    let store = CheckpointStore::from_url(&url, job()).unwrap();
    let model = initial_model(2000);
    let backends = workers(&root.path().join("gen0"), 128, 2, &model);
    let meta = checkpoint(&store, &backends, 1, 1, 128, &root.path().join("s")).await;
    drop(backends);

    let (ok, out, err) = regroup(
        &[
            "plan",
            "--store",
            &url,
            "--job",
            "tests/restore",
            "--to",
            "3",
        ],
        &[],
    );
    assert!(ok, "{err}");
    println!("{out}");
    assert!(out.starts_with("checkpoint 1: parallelism 2 → 3"), "{out}");
    // New subtask 1 = [43, 85]: 21 key groups from old 0, 22 from old 1, so old 1 is initial.
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap();
    assert!(
        line.contains("[43, 85]") && line.contains("rescaled"),
        "{line}"
    );
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[4], "1", "initial handle: {line}");
    // Bytes to fetch beside the bytes of the whole intersecting handles (both old handles).
    assert!(out.contains("HANDLE BYTES"), "{out}");
    assert_eq!(
        cols[7],
        (meta.handles[0].bytes_total + meta.handles[1].bytes_total).to_string(),
        "bytes of the intersecting handles: {line}"
    );
    let fetched: u64 = cols[6].parse().unwrap();
    assert!(fetched > 0 && fetched <= meta.handles[0].bytes_total + meta.handles[1].bytes_total);
    let (ok, json, err) = regroup(
        &[
            "plan",
            "--store",
            &url,
            "--job",
            "tests/restore",
            "--to",
            "2",
            "--output",
            "json",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["subtasks"][1]["kind"], "unchanged");
    assert_eq!(
        v["subtasks"][1]["bytesToDownload"],
        meta.handles[1].bytes_total
    );
    assert_eq!(
        v["subtasks"][1]["bytesOfHandles"],
        meta.handles[1].bytes_total
    );
    assert_eq!(v["subtasks"][1]["bytesLocal"], 0);

    // The init container: everything from the environment.
    let target = root.path().join("pod-1").join("db");
    let target_s = target.display().to_string();
    let env = [
        ("REGROUP_STORE", url.as_str()),
        ("REGROUP_JOB", "tests/restore"),
        ("REGROUP_SUBTASK", "1"),
        ("REGROUP_PARALLELISM", "3"),
        ("REGROUP_TARGET", target_s.as_str()),
        ("REGROUP_RESTORE_STRATEGY", "copy"),
        ("REGROUP_OUTPUT", "json"),
    ];
    let out = Command::new(env!("CARGO_BIN_EXE_regroup"))
        .arg("restore")
        .envs(env)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["mode"], "rescaled");
    assert_eq!(summary["strategy"], "copy");
    assert_eq!(
        summary["checkpointId"], 1,
        "the latest completed checkpoint by default"
    );
    let range = regroup::keygroup::KeyGroupRange::for_subtask(128, 3, 1).unwrap();
    let b = StateBackend::open(&target, 128, range, &STATES).unwrap();
    assert!(contents(&b) == owned(&model, 128, 3, 1));
    drop(b);

    // A bad strategy is refused, naming the value.
    let out = Command::new(env!("CARGO_BIN_EXE_regroup"))
        .arg("restore")
        .envs(env)
        .env("REGROUP_RESTORE_STRATEGY", "rsync")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rsync") && err.contains("copy") && err.contains("ingest"),
        "{err}"
    );
}
