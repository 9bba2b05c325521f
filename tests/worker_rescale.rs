//! Worker processes through checkpoints, stop-with-checkpoint, restores with a new parallelism
//! through `regroup restore` and restarts; the oracle verifies every checkpoint against the
//! replayed events.

mod support;

use regroup::checkpoint::CheckpointMetadata;
use regroup::statedir::marker::{FileIdentity, LocalCheckpointMarker};
use regroup::statedir::restored::RestoreMarker;
use regroup::worker::oracle::verify;
use support::worker::{Cluster, files_of_earlier_instances, gc_keeping_latest, restore_into};
use support::{regroup_cmd, run};

/// Runs generations of workers at the given parallelisms, each restored from the previous
/// generation's stop-with-checkpoint.
async fn run_sequence(name: &str, ip_base: u8, parallelisms: &[u32], strategy: &str) {
    let c = Cluster::new(&format!("tests/{name}"), ip_base);
    let mut id = 0;
    let mut last: Option<CheckpointMetadata> = None;
    let mut restored_events = 0;
    // Bytes the first checkpoints after restores referenced from earlier DB instances.
    let mut referenced_from_restores = 0;
    for (generation, &p) in parallelisms.iter().enumerate() {
        let epoch = generation as u64 + 1;
        let dirs = c.state_dirs(epoch, p);
        if let Some(meta) = &last {
            for s in 0..p {
                let summary = restore_into(&c, meta, s, p, &dirs[s as usize], strategy);
                // The previous generation's workers compacted what their own restore clipped
                // before their final checkpoint: its files can be ingested, none is copied.
                if strategy == "ingest" && generation >= 2 {
                    assert!(!summary.contains(":copy"), "{summary}");
                }
            }
        }
        let workers = c.start_all(p, epoch, &dirs, &[]).await;

        // A regular checkpoint while processing.
        c.wait_processing(&workers, 200).await;
        id += 1;
        let meta = c.checkpoint(&workers, id, epoch, false).await;
        assert_eq!(meta.parallelism, p);
        let v = verify(&c.store, Some(id)).await.unwrap();
        assert!(v.ok(), "{v}");
        assert!(
            v.events() >= restored_events + 200 * u64::from(p),
            "the restored state was not continued: {v}"
        );
        if last.is_some() {
            // The restored files still in the DB are referenced where the store holds them,
            // not uploaded again.
            for h in &meta.handles {
                let db = regroup::statedir::db_dir(&dirs[h.subtask as usize]);
                let restored = RestoreMarker::read(&db).expect("the restore's marker");
                for f in &h.shared {
                    if let Some(stored) = restored.stored.get(&f.local_name) {
                        assert_eq!(f.file, stored.file, "{}", f.local_name);
                    }
                }
                referenced_from_restores += files_of_earlier_instances(h)
                    .iter()
                    .map(|f| f.file.size)
                    .sum::<u64>();
            }
            // Retention 1 deletes the restored checkpoint: what this one references of it
            // must stay (the oracle reads every file).
            gc_keeping_latest(&c);
            let v = verify(&c.store, Some(id)).await.unwrap();
            assert!(v.ok(), "{v}");
        }

        // Stop-with-checkpoint: final, processing stays paused.
        c.wait_processing(&workers, 400).await;
        id += 1;
        let stop = c.checkpoint(&workers, id, epoch, true).await;
        let v = verify(&c.store, Some(id)).await.unwrap();
        assert!(v.ok(), "{v}");
        let mut processed = 0;
        let mut markers = Vec::new();
        for w in &workers {
            processed += c.events_processed(w).await;
            let ready: serde_json::Value = c.readyz(w).await;
            assert_eq!(ready["processing"], false, "{ready}");
            let marker = LocalCheckpointMarker::read(&w.state_dir)
                .unwrap()
                .expect("a marker after stop-with-checkpoint");
            assert_eq!(marker.checkpoint_id, id);
            assert_eq!(
                marker.key_group_range,
                stop.handles[w.subtask as usize].key_group_range
            );
            assert_eq!(
                marker.instance_id,
                stop.handles[w.subtask as usize].instance_id
            );
            assert_eq!(marker.epoch, epoch);
            // It vouches for every SST file of the handle, as the checkpoint recorded it.
            let handle = &stop.handles[w.subtask as usize];
            assert!(marker.boot_id.is_some());
            // Synced before the marker: vouched for in a later boot too.
            assert!(marker.files_synced);
            assert_eq!(marker.files.len(), handle.shared.len());
            for f in &handle.shared {
                let local = &marker.files[&f.local_name];
                assert_eq!(
                    (local.identity.size, local.checksum),
                    (f.file.size, f.file.checksum)
                );
            }
            markers.push((w.state_dir.clone(), marker));
        }
        // Everything this generation processed is in the final checkpoint, nothing after it.
        assert_eq!(v.events(), restored_events + processed, "{v}");
        restored_events = v.events();
        c.stop_all(workers);
        // Stopping the workers (closing their DBs) left every file the markers vouch for as
        // it was: a restore on these volumes may reuse them without reading them.
        for (state_dir, marker) in &markers {
            for (name, local) in &marker.files {
                let path = regroup::statedir::db_dir(state_dir).join(name);
                assert_eq!(FileIdentity::read(&path).unwrap(), local.identity, "{name}");
            }
        }
        last = Some(stop);
    }
    assert!(
        referenced_from_restores > 0,
        "every first checkpoint after a restore uploaded the whole state again"
    );

    let stdout = run(regroup_cmd().args([
        "verify",
        "--store",
        &c.store_url,
        "--job",
        &c.job.to_string(),
    ]));
    assert!(
        stdout.starts_with(&format!("OK: checkpoint {id} ")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescale_2_3_1() {
    run_sequence("seq-231", 10, &[2, 3, 1], "ingest").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescale_1_4_2_by_copy() {
    run_sequence("seq-142", 20, &[1, 4, 2], "copy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_parallelism_3_3() {
    run_sequence("seq-33", 30, &[3, 3], "ingest").await;
}
