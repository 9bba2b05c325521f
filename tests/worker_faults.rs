//! Refused requests change nothing; a worker killed in the middle of a checkpoint leaves it
//! incomplete, the next one completes, and restoring from it verifies. A status asked to wait
//! answers when the handle is written. A worker restarted after its restore keeps referencing
//! the restored files.

mod support;

use std::time::Duration;

use regroup::backend::{IncrementalSnapshotter, StateBackend};
use regroup::statedir::db_dir;
use regroup::worker::checkpoints::{CheckpointRecord, CheckpointStatus};
use regroup::worker::oracle::verify;
use regroup::worker::reference::{COUNTS, decode_u64};
use serde_json::json;
use support::worker::{
    Cluster, M, TOKEN, WorkerOptions, files_of_earlier_instances, gc_keeping_latest, restore_into,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_change_nothing() {
    let c = Cluster::new("tests/auth", 40);
    let epoch = 3;
    let (_, workers) = c.start_fresh(1, epoch, 100).await;
    let w = &workers[0];

    let body = |e: u64| json!({ "id": 1, "epoch": e, "stop": true });
    let cases = [
        (None, body(epoch), 401, "missing bearer token"),
        (
            Some("not-the-token"),
            body(epoch),
            401,
            "wrong bearer token",
        ),
        (Some(TOKEN), body(epoch - 1), 403, "epoch 2"),
        (Some(TOKEN), body(epoch + 1), 403, "epoch 4"),
    ];
    for (token, body, expected, message) in cases {
        let (status, reply) = c.post_checkpoint(w, token, body.clone()).await;
        assert_eq!(status, expected, "{body} with {token:?}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains(message),
            "{reply}"
        );
        // Nothing happened: no handle, nothing at all in the store, no record, still processing.
        assert_eq!(c.store.read_handle(1, 0).await.unwrap(), None);
        assert!(c.store.list_all().await.unwrap().is_empty());
        assert_eq!(c.checkpoint_status(w, 1).await.0, 404);
        let ready: serde_json::Value = c.readyz(w).await;
        assert_eq!(
            ready["processing"], true,
            "a refused stop paused processing: {ready}"
        );
    }
    // A malformed body with a valid token is a 400 naming the problem.
    let (status, reply) = c
        .post_checkpoint(w, Some(TOKEN), json!({ "id": "one" }))
        .await;
    assert_eq!(status, 400, "{reply}");
    // Status and notices need the token too.
    let r = c
        .client
        .get(format!("{}/v1/checkpoints/1", w.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .client
        .post(format!("{}/v1/checkpoints/1/complete", w.url))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The real request works; a repeat is idempotent, a changed repeat conflicts.
    let mut reply = serde_json::Value::Null;
    for (stop, expected) in [(false, 202), (false, 202), (true, 409)] {
        let body = json!({ "id": 1, "epoch": epoch, "stop": stop });
        let status;
        (status, reply) = c.post_checkpoint(w, Some(TOKEN), body).await;
        assert_eq!(status, expected, "stop {stop}: {reply}");
    }
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("already requested"),
        "{reply}"
    );
    let done = c.wait_handle(w, 1).await;
    let CheckpointStatus::Completed { handle } = done.status else {
        unreachable!("wait_handle returns completed records")
    };
    assert_eq!(handle.checkpoint_id, 1);
    assert_eq!(
        c.store.read_handle(1, 0).await.unwrap().as_ref(),
        Some(&*handle)
    );
    // A notice for another epoch is refused and does not complete anything.
    assert_eq!(c.notify(w, 1, "complete", epoch + 1).await, 403);
    assert_eq!(
        c.checkpoint_status(w, 1).await.1["notice"],
        serde_json::Value::Null
    );
    c.store.try_complete(1, epoch, 1, M).await.unwrap().unwrap();
    assert_eq!(c.notify(w, 1, "complete", epoch).await, 200);
    assert_eq!(c.checkpoint_status(w, 1).await.1["notice"], "complete");
    let v = verify(&c.store, Some(1)).await.unwrap();
    assert!(v.ok(), "{v}");
    let metrics = c.metrics_text(w).await;
    for line in [
        "regroup_worker_checkpoints_completed_total 1",
        "regroup_worker_checkpoint_duration_seconds_count 1",
        "regroup_worker_epoch 3",
        "regroup_worker_key_groups 128",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing in:\n{metrics}"
        );
    }
    // The worker processed events, so it was busy some of the time, and the reference job
    // knows its backlog.
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    assert!(
        value("regroup_worker_busy_seconds_total").is_some_and(|v| v > 0.0),
        "{metrics}"
    );
    assert!(
        value("regroup_worker_backlog_events").is_some(),
        "{metrics}"
    );
    c.stop_all(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_asked_to_wait_answers_once_the_handle_is_written() {
    let c = Cluster::new("tests/status-wait", 80);
    let dirs = c.state_dirs(1, 2);
    let slow = |d| WorkerOptions {
        upload_delay: Some(d),
    };
    let workers = c.start_all(2, 1, &dirs, &[slow("5s"), slow("10m")]).await;
    c.wait_processing(&workers, 100).await;
    c.trigger(&workers, 1, 1, true).await;
    let status = |w: usize, wait| c.api.status_after(&workers[w].url, 1, wait);
    let running = |r: &CheckpointRecord| matches!(r.status, CheckpointStatus::InProgress);
    // Asked without waiting, both answer while their uploads are held back.
    for w in 0..2 {
        let r = status(w, Duration::ZERO).await.unwrap().unwrap();
        assert!(running(&r), "{r:?}");
    }
    // Asked to wait, the first answers when its handle is written, the second when the wait
    // is over.
    let written = status(0, Duration::from_secs(9)).await.unwrap().unwrap();
    let CheckpointStatus::Completed { handle } = written.status else {
        panic!("{written:?}")
    };
    assert_eq!(
        c.store.read_handle(1, 0).await.unwrap().as_ref(),
        Some(&*handle)
    );
    let r = status(1, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert!(running(&r), "{r:?}");
    // A malformed wait is refused, naming it.
    let r = c
        .client
        .get(format!("{}/v1/checkpoints/1?waitMs=soon", workers[1].url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("waitMs"));
    c.stop_all(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_checkpoint_leaves_it_incomplete() {
    let c = Cluster::new("tests/kill", 50);
    let p = 2;

    // Generation 1: a completed checkpoint, then a plain restart (SIGTERM).
    let (_, workers) = c.start_fresh(p, 1, 200).await;
    let first = c.checkpoint(&workers, 1, 1, false).await;
    c.stop_all(workers);

    // Generation 2, restored from checkpoint 1; subtask 1 uploads slowly and is killed while
    // its upload is pending.
    let dirs = c.state_dirs(2, p);
    for s in 0..p {
        restore_into(&c, &first, s, p, &dirs[s as usize], "ingest");
    }
    let slow = WorkerOptions {
        upload_delay: Some("10m"),
    };
    let workers = c
        .start_all(p, 2, &dirs, &[WorkerOptions::default(), slow])
        .await;
    c.wait_processing(&workers, 200).await;
    c.trigger(&workers, 2, 2, false).await;
    c.wait_handle(&workers[0], 2).await;
    let (_, status) = c.checkpoint_status(&workers[1], 2).await;
    assert_eq!(status["status"], "in_progress", "{status}");
    // Processing goes on beside the pending upload.
    let during = c.events_processed(&workers[1]).await;
    c.wait_processing(&workers[1..], during + 300).await;
    assert_eq!(
        c.checkpoint_status(&workers[1], 2).await.1["status"],
        "in_progress"
    );
    let mut workers = workers;
    workers.pop().unwrap().kill();
    // The operator gives up on checkpoint 2 and replaces the generation.
    assert_eq!(c.notify(&workers[0], 2, "abort", 2).await, 200);
    c.stop_all(workers);

    assert_eq!(c.store.read_handle(2, 1).await.unwrap(), None);
    assert_eq!(c.store.try_complete(2, 2, p, M).await.unwrap(), None);
    let ids = c.store.checkpoint_ids().await.unwrap();
    assert_eq!(ids, vec![(1, true), (2, false)]);
    let latest = c.store.latest_completed().await.unwrap().unwrap();
    assert_eq!(latest.checkpoint_id, 1);

    // Generation 3 recovers from the latest completed checkpoint; the next checkpoint completes.
    let dirs = c.state_dirs(3, p);
    for s in 0..p {
        restore_into(&c, &latest, s, p, &dirs[s as usize], "ingest");
    }
    let workers = c.start_all(p, 3, &dirs, &[]).await;
    c.wait_processing(&workers, 200).await;
    let third = c.checkpoint(&workers, 3, 3, true).await;
    let v = verify(&c.store, Some(3)).await.unwrap();
    assert!(v.ok(), "{v}");
    c.stop_all(workers);

    // Restoring from it (rescaled to 3) and checkpointing again verifies too.
    let dirs = c.state_dirs(4, 3);
    for s in 0..3 {
        restore_into(&c, &third, s, 3, &dirs[s as usize], "ingest");
    }
    let workers = c.start_all(3, 4, &dirs, &[]).await;
    c.wait_processing(&workers, 100).await;
    c.checkpoint(&workers, 4, 4, false).await;
    let v = verify(&c.store, None).await.unwrap();
    assert_eq!(v.checkpoint_id, 4);
    assert!(v.ok(), "{v}");
    assert!(v.events() > verify(&c.store, Some(3)).await.unwrap().events());
    c.stop_all(workers);
}

/// A worker killed after its restore and started again on the same DB (a container restart: no
/// new restore) still references the files the restore took from the store; they outlive the
/// restored checkpoint, and a restore from the new checkpoint verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_files_stay_referenced_across_a_restart() {
    let c = Cluster::new("tests/restart-after-restore", 90);
    let (_, workers) = c.start_fresh(2, 1, 200).await;
    let first = c.checkpoint(&workers, 1, 1, false).await;
    c.stop_all(workers);

    // Scale-in 2→1: the DB is the two handles' files, nothing clipped.
    let dirs = c.state_dirs(2, 1);
    restore_into(&c, &first, 0, 1, &dirs[0], "ingest");
    let workers = c.start_all(1, 2, &dirs, &[]).await;
    c.wait_processing(&workers, 100).await;
    let mut workers = workers;
    workers.pop().unwrap().kill();
    let workers = c.start_all(1, 2, &dirs, &[]).await;
    c.wait_processing(&workers, 100).await;
    let second = c.checkpoint(&workers, 2, 2, false).await;
    let restored = files_of_earlier_instances(&second.handles[0]);
    assert!(!restored.is_empty(), "{:#?}", second.handles[0].shared);
    // Each is a file of checkpoint 1, as stored.
    for f in &restored {
        assert!(
            first
                .handles
                .iter()
                .flat_map(|old| &old.shared)
                .any(|old| old.file == f.file),
            "{f:?}"
        );
    }
    c.stop_all(workers);

    // Retention 1 drops checkpoint 1; what checkpoint 2 references of it stays.
    gc_keeping_latest(&c);
    let v = verify(&c.store, Some(2)).await.unwrap();
    assert!(v.ok(), "{v}");
    let dirs = c.state_dirs(3, 2);
    for s in 0..2 {
        restore_into(&c, &second, s, 2, &dirs[s as usize], "ingest");
    }
    let workers = c.start_all(2, 3, &dirs, &[]).await;
    c.wait_processing(&workers, 100).await;
    c.checkpoint(&workers, 3, 3, false).await;
    let v = verify(&c.store, Some(3)).await.unwrap();
    assert!(v.ok(), "{v}");
    c.stop_all(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_naming_the_first_differing_key() {
    let c = Cluster::new("tests/tampered", 60);
    let (_, workers) = c.start_fresh(1, 1, 200).await;
    let first = c.checkpoint(&workers, 1, 1, true).await;
    c.stop_all(workers);

    // Checkpoint 2: the state of checkpoint 1 with one count off by one.
    let dir = c.state_dir(2, 0);
    restore_into(&c, &first, 0, 1, &dir, "ingest");
    let range = first.handles[0].key_group_range;
    let backend = StateBackend::open(&db_dir(&dir), M, range, &[]).unwrap();
    let (g, key, value) = backend.scan(COUNTS).unwrap().remove(10);
    let wrong = decode_u64(&value).unwrap() + 1;
    backend
        .put_in_group(COUNTS, g, &key, &wrong.to_be_bytes())
        .unwrap();
    let s = IncrementalSnapshotter::new(backend.instance_id(), 0, 1, 2);
    let snapshot = s.capture(&backend, 2, &dir.join("snapshots")).unwrap();
    s.upload(snapshot, &c.store).await.unwrap();
    c.store.try_complete(2, 2, 1, M).await.unwrap().unwrap();

    let run = |checkpoint: Option<&str>| {
        let mut cmd = support::regroup_cmd();
        cmd.args([
            "verify",
            "--store",
            &c.store_url,
            "--job",
            &c.job.to_string(),
        ]);
        if let Some(id) = checkpoint {
            cmd.args(["--checkpoint", id]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, stdout) = run(None);
    assert!(!ok, "{stdout}");
    let key = String::from_utf8(key).unwrap();
    assert!(stdout.starts_with("FAILED: checkpoint 2 "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "key group {g}, key {key:?} in subtask 0: count {wrong}"
        )),
        "{stdout}"
    );
    let (ok, stdout) = run(Some("1"));
    assert!(ok, "{stdout}");
    assert!(stdout.starts_with("OK: checkpoint 1 "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_every_committed_step_in_the_local_db() {
    let c = Cluster::new("tests/sigterm", 70);
    let p = 2;
    let (dirs, workers) = c.start_fresh(p, 1, 300).await;
    let mut before = 0;
    for w in &workers {
        before += c.events_processed(w).await;
    }
    // No checkpoint was taken: everything since the start lives only in the memtables, which
    // a clean stop must flush when it closes the DB.
    c.stop_all(workers);

    // The next generation opens the same local DBs (no restore) and continues from them.
    let workers = c.start_all(p, 2, &dirs, &[]).await;
    c.wait_processing(&workers, 100).await;
    c.checkpoint(&workers, 1, 2, true).await;
    let mut after = 0;
    for w in &workers {
        after += c.events_processed(w).await;
    }
    let v = verify(&c.store, Some(1)).await.unwrap();
    assert!(v.ok(), "{v}");
    assert!(
        v.events() >= before + after,
        "steps committed before SIGTERM were lost: {} events checkpointed, {before} before the stop + {after} after the restart",
        v.events()
    );
    c.stop_all(workers);
}
