//! `regroup plan` and `regroup restore` as a user and an init container run them.

mod support;

use regroup::backend::StateBackend;
use regroup::checkpoint::CheckpointStore;
use regroup::keygroup::KeyGroupRange;
use support::restore::*;
use support::run;

fn regroup(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = support::regroup_cmd()
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

/// `regroup plan` of the checkpoints of job `tests/restore` in the store at `url`, with `args`.
fn plan_stored(url: &str, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["plan", "--store", url, "--job", "tests/restore"];
    all.extend_from_slice(args);
    regroup(&all, &[])
}

/// The row of new subtask `subtask` in `regroup plan`'s table.
fn row(out: &str, subtask: u32) -> &str {
    let prefix = format!("{subtask} ");
    out.lines()
        .find(|l| l.trim_start().starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row of subtask {subtask} in:\n{out}"))
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
    let line = row(&out, 0);
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
    let (url, _, model, meta) = two_workers_checkpointed(root.path()).await;

    let (ok, out, err) = plan_stored(&url, &["--to", "3"]);
    assert!(ok, "{err}");
    println!("{out}");
    assert!(out.starts_with("checkpoint 1: parallelism 2 → 3"), "{out}");
    // New subtask 1 = [43, 85]: 21 key groups from old 0, 22 from old 1, so old 1 is initial.
    let line = row(&out, 1);
    assert!(
        line.contains("[43, 85]") && line.contains("rescaled"),
        "{line}"
    );
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[4], "1", "initial handle: {line}");
    // Bytes to fetch beside the bytes of the whole intersecting handles (both old handles).
    assert!(out.contains("HANDLE BYTES"), "{out}");
    assert_eq!(
        cols[9],
        (meta.handles[0].bytes_total + meta.handles[1].bytes_total).to_string(),
        "bytes of the intersecting handles: {line}"
    );
    let fetched: u64 = cols[6].parse().unwrap();
    // Nothing local: everything fetched is downloaded.
    assert_eq!(cols[7], "0", "{line}");
    assert_eq!(cols[8], cols[6], "{line}");
    assert!(fetched > 0 && fetched <= meta.handles[0].bytes_total + meta.handles[1].bytes_total);
    let (ok, json, err) = plan_stored(&url, &["--to", "2", "--output", "json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["subtasks"][1]["kind"], "unchanged");
    // What the handle carries (CURRENT, the WAL) is written, not downloaded.
    let stored: u64 = meta.handles[1].files().map(|f| f.size).sum();
    assert!(stored < meta.handles[1].bytes_total);
    assert_eq!(v["subtasks"][1]["bytesToDownload"], stored);
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
    let stdout = run(support::regroup_cmd().arg("restore").envs(env));
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
    let out = support::regroup_cmd()
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

    // No checkpoint for the generation: the restore container empties the kept volume (its DB,
    // a marker and native checkpoints), so the worker never opens a stale DB.
    let state = target.parent().unwrap();
    std::fs::write(state.join("checkpoint-marker.json"), "{}").unwrap();
    std::fs::create_dir_all(state.join("snapshots/chk-9")).unwrap();
    std::fs::write(state.join("snapshots/chk-9/CURRENT"), "x").unwrap();
    let stdout = run(support::regroup_cmd()
        .arg("restore")
        .envs(env)
        .env("REGROUP_RESTORE_EMPTY", "true"));
    assert!(
        stdout.starts_with("started empty: no checkpoint to restore for subtask 1/3"),
        "{stdout}"
    );
    let removed: u64 = stdout
        .split(" removed ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        removed >= 3,
        "the DB's files, the marker and the snapshot: {stdout}"
    );
    assert!(!target.exists() && !state.join("checkpoint-marker.json").exists());
    assert!(!state.join("snapshots").exists());
    // Empty and a checkpoint at once is refused.
    let out = support::regroup_cmd()
        .arg("restore")
        .envs(env)
        .env("REGROUP_RESTORE_EMPTY", "true")
        .env("REGROUP_CHECKPOINT", "1")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "--empty with --checkpoint was accepted"
    );
}

/// `regroup plan --state-dir NEW=DIR` / `--local-subtask NEW=OLD`: the bytes a pod's local DB
/// saves, matched as the restore matches it, and why a marker is not used.
#[tokio::test]
async fn plan_counts_bytes_reused_from_local_state() {
    let root = tempdir();
    let url = format!("file://{}/store", root.path().display());
    let store = CheckpointStore::from_url(&url, job()).unwrap();
    let scratch = root.path().join("scratch");
    let vol = |i: u32| root.path().join(format!("vol{i}"));
    // Two workers whose DBs live on volumes vol0/db and vol1/db; checkpoints 1 and 2.
    let mut model = initial_model(2000);
    let backends = workers_at(128, 2, &model, |i| vol(i).join("db"));
    for (i, b) in backends.iter().enumerate() {
        snapshot(&store, b, i as u32, 2, 1, &scratch).await;
    }
    let meta1 = store.try_complete(1, 1, 2, 128).await.unwrap().unwrap();
    for (i, b) in backends.iter().enumerate() {
        mutate(b, &mut model, 2);
        snapshot(&store, b, i as u32, 2, 2, &scratch).await;
    }
    let meta2 = store.try_complete(2, 2, 2, 128).await.unwrap().unwrap();
    drop(backends);
    // vol0 stopped with checkpoint 2; vol1's marker is of the older checkpoint 1; `other`
    // holds a DB of another job.
    local_marker(&meta2, 0, &vol(0)).write(&vol(0)).unwrap();
    local_marker(&meta1, 1, &vol(1)).write(&vol(1)).unwrap();
    let other = root.path().join("other");
    std::fs::create_dir_all(other.join("db")).unwrap();
    let mut foreign = local_marker(&meta2, 0, &other);
    foreign.job = "tests/other".parse().unwrap();
    foreign.write(&other).unwrap();

    // `regroup plan` of this store's job, with `extra` arguments.
    let plan = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--to", "1", "--output", "json"];
        args.extend_from_slice(extra);
        let (ok, out, err) = plan_stored(&url, &args);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    // Scale-in 2 → 1: without local state everything is downloaded.
    let fresh = plan(&[]);
    assert_eq!(fresh["checkpointId"], 2);
    let s = &fresh["subtasks"][0];
    assert_eq!(n(&s["bytesLocal"]), 0);
    let fetch = n(&s["bytesToDownload"]);
    assert!(fetch > 0);
    assert_eq!(fresh["localStates"], serde_json::json!([]));

    // vol0 equals old subtask 0's handle: its SST files are reused, the rest downloaded.
    let vol0 = format!("0={}", vol(0).display());
    let kept = plan(&["--state-dir", &vol0]);
    let s = &kept["subtasks"][0];
    let (download, reuse) = (n(&s["bytesToDownload"]), n(&s["bytesLocal"]));
    let old0_sst: u64 = meta2.handles[0].shared.iter().map(|f| f.file.size).sum();
    assert!(reuse > 0 && reuse == old0_sst, "{s}");
    assert!(download < fetch, "{s}");
    assert_eq!(download + reuse, fetch, "fetch = download + reuse: {s}");
    assert_eq!(s["initial"], 0);
    let state = &kept["localStates"][0];
    assert_eq!(state["subtask"], 0);
    assert_eq!(state["oldSubtask"], 0);
    assert_eq!(state["unused"], serde_json::Value::Null);
    // The worker's marker, written in this boot, vouches for every SST file of the handle.
    assert_eq!(state["vouchedFiles"], meta2.handles[0].shared.len());
    // The what-if flag gives the same plan for the same handle.
    let assumed = plan(&["--local-subtask", "0=0"]);
    assert_eq!(assumed["subtasks"][0], kept["subtasks"][0]);
    // Assuming old subtask 1's DB instead reuses old 1's files.
    let assumed1 = plan(&["--local-subtask", "0=1"]);
    let old1_sst: u64 = meta2.handles[1].shared.iter().map(|f| f.file.size).sum();
    assert_eq!(n(&assumed1["subtasks"][0]["bytesLocal"]), old1_sst);

    // The text output: FETCH, REUSE, DOWNLOAD columns and a line for the local state.
    let (ok, text, err) = plan_stored(&url, &["--to", "1", "--state-dir", &vol0]);
    assert!(ok, "{err}");
    println!("{text}");
    let line = row(&text, 0);
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cols[6..9],
        [fetch.to_string(), reuse.to_string(), download.to_string()],
        "FETCH REUSE DOWNLOAD: {line}"
    );
    assert!(
        text.contains("local state of new subtask 0")
            && text.contains(&format!("old subtask 0: {reuse} bytes reused")),
        "{text}"
    );

    // An older checkpoint's marker and another job's marker are not used, and the plan says why.
    for (dir, why) in [
        (
            vol(1),
            "it equals checkpoint 1, not the restored checkpoint 2",
        ),
        (other.clone(), "it is of job tests/other, not tests/restore"),
        (root.path().join("scratch"), "no local checkpoint marker"),
    ] {
        let arg = format!("0={}", dir.display());
        let v = plan(&["--state-dir", &arg]);
        assert_eq!(v["subtasks"][0], fresh["subtasks"][0], "{why}");
        let state = &v["localStates"][0];
        assert_eq!(state["oldSubtask"], serde_json::Value::Null);
        let unused = state["unused"].as_str().unwrap();
        assert!(unused.contains(why), "{unused}");
        let (ok, text, err) = plan_stored(&url, &["--to", "1", "--state-dir", &arg]);
        assert!(ok, "{err}");
        assert!(
            text.contains("nothing reused") && text.contains(why),
            "{text}"
        );
    }
    // The older checkpoint's marker is used when that checkpoint is planned.
    let vol1 = format!("1={}", vol(1).display());
    let (ok, json, err) = plan_stored(
        &url,
        &[
            "--checkpoint",
            "1",
            "--to",
            "2",
            "--state-dir",
            &vol1,
            "--output",
            "json",
        ],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["localStates"][0]["oldSubtask"], 1);
    let old1_sst_at_1: u64 = meta1.handles[1].shared.iter().map(|f| f.file.size).sum();
    assert_eq!(n(&v["subtasks"][1]["bytesLocal"]), old1_sst_at_1);
    assert_eq!(n(&v["subtasks"][0]["bytesLocal"]), 0);

    // Bad values: a clear error naming the flag, the value and what is accepted.
    let missing = root.path().join("no-such-volume");
    let bad = [
        (
            "--state-dir",
            format!("1={}", vol(0).display()),
            "below --to 1",
        ),
        ("--state-dir", vol(0).display().to_string(), "NEW=DIR"),
        (
            "--state-dir",
            format!("0={}", missing.display()),
            "an existing directory",
        ),
        (
            "--local-subtask",
            "0=2".to_owned(),
            "below the checkpoint's parallelism 2",
        ),
        ("--local-subtask", "0=x".to_owned(), "NEW=OLD"),
        ("--local-subtask", "one=0".to_owned(), "below --to 1"),
    ];
    for (flag, value, expected) in &bad {
        let (ok, out, err) = plan_stored(&url, &["--to", "1", flag, value]);
        assert!(!ok, "{flag} {value} accepted: {out}");
        assert!(
            err.contains(&format!("invalid {flag} = {value}")) && err.contains(expected),
            "{flag} {value}: {err}"
        );
    }
    // One local state per new subtask.
    let (ok, _, err) = plan_stored(
        &url,
        &["--to", "1", "--state-dir", &vol0, "--local-subtask", "0=1"],
    );
    assert!(!ok);
    assert!(
        err.contains("invalid --local-subtask = 0=1")
            && err.contains("one --state-dir or --local-subtask per new subtask"),
        "{err}"
    );
    // The restore on the kept volume does what the plan said: it downloads and reuses exactly
    // the planned bytes.
    let target = vol(0).join("db");
    let target_s = target.display().to_string();
    let (ok, json, err) = regroup(
        &[
            "restore",
            "--store",
            &url,
            "--job",
            "tests/restore",
            "--subtask",
            "0",
            "--parallelism",
            "1",
            "--target",
            &target_s,
            "--output",
            "json",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(summary["localHandle"], 0, "{summary}");
    assert_eq!(n(&summary["reusedBytes"]), reuse, "{summary}");
    assert_eq!(n(&summary["reusedReadBackBytes"]), 0, "{summary}");
    assert_eq!(n(&summary["downloadedBytes"]), download, "{summary}");
    // Planned again before a worker opens it, the volume holds this very restore: nothing to
    // download.
    let again = plan(&["--state-dir", &vol0]);
    assert_eq!(again["localStates"][0]["localRecovery"], true, "{again}");
    assert_eq!(n(&again["subtasks"][0]["bytesToDownload"]), 0);
    assert_eq!(n(&again["subtasks"][0]["bytesLocal"]), fetch);
    let b = StateBackend::open(
        &target,
        128,
        KeyGroupRange::for_subtask(128, 1, 0).unwrap(),
        &STATES,
    )
    .unwrap();
    assert!(contents(&b) == model);
    drop(b);

    // Local state needs a stored checkpoint.
    let (ok, _, err) = regroup(
        &[
            "plan",
            "--max-parallelism",
            "128",
            "--to",
            "1",
            "--local-subtask",
            "0=0",
        ],
        &[],
    );
    assert!(!ok);
    assert!(err.contains("--store"), "{err}");
}
