//! Restores with and without rescaling against an oracle: after every restore, every key of the
//! data set is present exactly once, in the subtask that owns its key group, with its value;
//! `copy` and `ingest` build DBs with identical contents.

mod support;

use regroup::backend::StateBackend;
use regroup::checkpoint::CheckpointStore;
use regroup::checkpoint::store::checksum_file;
use regroup::keygroup::KeyGroupRange;
use regroup::restore::{InputMethod, RestoreMode, RestoreRequest, Strategy, restore_subtask};
use regroup::statedir::restored::RestoreMarker;
use support::restore::*;

/// Runs a chain of rescales: workers at `parallelisms[0]` hold the data set; each step
/// restores every subtask of the next parallelism from the last checkpoint with `ingest` and
/// (where `compare_copy` says) `copy`, checks each against the oracle and both against each
/// other, then mutates the DB one of the strategies built (alternating, so both kinds of DB are
/// checkpointed and restored again) and checkpoints it for the next step. The last checkpoint
/// is restored at the same parallelism.
async fn rescale_chain(
    m: u32,
    parallelisms: &[u32],
    keys: u32,
    compare_copy: impl Fn(u32, u32) -> bool,
) {
    let root = tempdir();
    let store = store_in(root.path());
    let scratch = root.path().join("scratch");
    let mut model = initial_model(keys);
    let dirs: Vec<_> = workers(&root.path().join("gen0"), m, parallelisms[0], &model)
        .into_iter()
        .map(|b| b.dir().to_path_buf())
        .collect();
    let mut meta = mutate_and_checkpoint(&store, &dirs, &mut model, 1, 1, m, &scratch).await;
    let steps: Vec<(u32, u32)> = parallelisms
        .windows(2)
        .map(|w| (w[0], w[1]))
        .chain(std::iter::once((
            *parallelisms.last().unwrap(),
            *parallelisms.last().unwrap(),
        )))
        .collect();
    for (step, &(from, to)) in steps.iter().enumerate() {
        let id = step as u64 + 1;
        assert_eq!((meta.checkpoint_id, meta.parallelism), (id, from));
        let last = step + 1 == steps.len();
        let chain = if step % 2 == 0 {
            Strategy::Ingest
        } else {
            Strategy::Copy
        };
        let gen_dir = root.path().join(format!("gen{}", step + 1));
        let expected_all = model.clone();
        let mut seen = Model::new();
        for i in 0..to {
            let range = KeyGroupRange::for_subtask(m, to, i).unwrap();
            let expected = owned(&expected_all, m, to, i);
            let mut restored = Vec::new();
            for strategy in [Strategy::Ingest, Strategy::Copy] {
                if strategy != chain && (last || !compare_copy(to, i)) {
                    continue;
                }
                let target = gen_dir.join(format!("{strategy}-{i}"));
                let summary = restore(&store, id, i, to, &target, strategy).await;
                assert_eq!(summary.range, range);
                let rescaled = meta.handles.iter().all(|h| h.key_group_range != range);
                assert_eq!(
                    summary.mode,
                    if rescaled {
                        RestoreMode::Rescaled
                    } else {
                        RestoreMode::Unchanged
                    }
                );
                if rescaled && strategy == Strategy::Ingest {
                    assert!(
                        summary
                            .inputs
                            .iter()
                            .all(|(_, m)| *m == InputMethod::Ingest),
                        "{summary:?}"
                    );
                }
                // The files the marker names as stored are those, byte for byte.
                let restored_marker = RestoreMarker::read(&target).expect("a restore marker");
                for (name, f) in &restored_marker.stored {
                    let got = checksum_file(&target.join(name)).unwrap();
                    assert_eq!(got, (f.file.size, f.file.checksum), "{name} of {target:?}");
                }
                if strategy == Strategy::Ingest && !expected.is_empty() {
                    assert!(!restored_marker.stored.is_empty(), "{target:?}");
                }
                let backend = StateBackend::open(&target, m, range, &STATES).unwrap();
                // What the worker does once running: compact what the restore clipped.
                backend.compact_outside_range().unwrap();
                let got = assert_contents(
                    &backend,
                    &expected,
                    &format!("{from}→{to} subtask {i} ({strategy})"),
                );
                assert_files_inside_range(&backend);
                restored.push((strategy, got, backend));
            }
            if let [(_, a, _), (_, b, _)] = &restored[..] {
                assert!(a == b, "copy and ingest differ for {from}→{to} subtask {i}");
            }
            let (_, got, backend) = restored.into_iter().find(|(s, _, _)| *s == chain).unwrap();
            for (k, v) in got {
                assert!(
                    seen.insert(k, v).is_none(),
                    "a key restored into two subtasks"
                );
            }
            if !last {
                // The next checkpoint of this subtask, taken while its DB is open anyway.
                mutate(&backend, &mut model, id as u32 + 1);
                snapshot(&store, &backend, i, to, id + 1, &scratch).await;
            }
        }
        assert!(
            seen == expected_all,
            "{from}→{to}: the union of the new subtasks is not the data set"
        );
        if !last {
            meta = complete(&store, id + 1, id + 1, to, m).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescale_1_3_7_2_1() {
    rescale_chain(128, &[1, 3, 7, 2, 1], 4000, |_, _| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_parallelism_4_4() {
    rescale_chain(128, &[4, 4], 2000, |_, _| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescale_5_128() {
    // One key group per new subtask; copy is compared on every 8th to keep the test short.
    rescale_chain(128, &[5, 128], 3000, |_, i| i % 8 == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescale_3_1000_7_two_byte_prefix() {
    rescale_chain(4096, &[3, 1000, 7], 3000, |to, i| to < 1000 || i % 100 == 0).await;
}

/// A restore whose range equals a handle's range reuses its files; a second restore into the
/// same target downloads nothing; a DB a worker has opened since is restored again.
#[tokio::test]
async fn local_recovery_downloads_nothing() {
    let root = tempdir();
    let (_, store, model, meta) = two_workers_checkpointed(root.path()).await;
    let target = root.path().join("state").join("db");

    let first = restore(&store, 1, 1, 2, &target, Strategy::Ingest).await;
    assert_eq!(first.mode, RestoreMode::Unchanged);
    // Every stored file; what the handle carries is written from it.
    let stored: u64 = meta.handles[1].files().map(|f| f.size).sum();
    assert_eq!(first.downloaded_bytes, stored);
    // Every file is the stored one, under its own name: the worker need not upload it again.
    let stored: Vec<_> = RestoreMarker::read(&target)
        .unwrap()
        .stored
        .into_values()
        .collect();
    assert_eq!(stored, meta.handles[1].shared);
    println!("{}", first.line());

    let second = restore(&store, 1, 1, 2, &target, Strategy::Ingest).await;
    assert_eq!(second.mode, RestoreMode::LocalRecovery);
    assert_eq!(second.downloaded_bytes, 0);
    assert_eq!(second.downloaded_files, 0);
    {
        let b = StateBackend::open(&target, 128, second.range, &STATES).unwrap();
        assert!(contents(&b) == owned(&model, 128, 2, 1));
        b.put("counts", b"written-after-restore", b"1").ok();
    }
    // The worker opened (and wrote to) the DB: it is no longer the checkpoint's state.
    let third = restore(&store, 1, 1, 2, &target, Strategy::Ingest).await;
    assert_eq!(third.mode, RestoreMode::Unchanged);
    assert!(third.downloaded_bytes > 0);
    let b = StateBackend::open(&target, 128, third.range, &STATES).unwrap();
    assert!(
        contents(&b) == owned(&model, 128, 2, 1),
        "the post-restore write is gone"
    );
    drop(b);

    // Local recovery applies to a rescaled restore's result too, but not to another range.
    let rescaled = root.path().join("rescaled");
    let a = restore(&store, 1, 0, 3, &rescaled, Strategy::Ingest).await;
    assert_eq!(a.mode, RestoreMode::Rescaled);
    let b = restore(&store, 1, 0, 3, &rescaled, Strategy::Copy).await;
    assert_eq!(
        (b.mode, b.downloaded_bytes),
        (RestoreMode::LocalRecovery, 0)
    );
    let c = restore(&store, 1, 1, 3, &rescaled, Strategy::Ingest).await;
    assert_eq!(c.mode, RestoreMode::Rescaled);
    let backend = StateBackend::open(&rescaled, 128, c.range, &STATES).unwrap();
    assert!(contents(&backend) == owned(&model, 128, 3, 1));
    // Nothing but the targets is left beside them.
    assert_eq!(entries(&root.path().join("state")), vec![target.clone()]);
}

/// A restore that did not sync its files (the default) is trusted for local recovery only in
/// the boot of the node it ran in; a synced one (`sync`) after a reboot too. Both hold exactly
/// the checkpoint's state, before and after.
#[tokio::test]
async fn an_unsynced_restore_is_not_trusted_after_a_reboot() {
    let root = tempdir();
    let (_, store, model, _) = two_workers_checkpointed(root.path()).await;
    for sync in [false, true] {
        let target = root.path().join(format!("synced-{sync}")).join("db");
        let mut request = RestoreRequest::new(Some(1), 0, 3, &target);
        request.sync = sync;
        let first = restore_subtask(&store, &request).await.unwrap();
        assert_eq!(first.mode, RestoreMode::Rescaled);
        let again = restore_subtask(&store, &request).await.unwrap();
        assert_eq!(again.mode, RestoreMode::LocalRecovery, "same boot");

        // The node restarts: the marker names the boot before.
        let path = target.join(regroup::statedir::restored::RESTORE_MARKER_FILE);
        let mut marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(marker["synced"], sync, "{marker}");
        assert_eq!(marker.get("bootId").is_some(), !sync, "{marker}");
        marker["bootId"] = "the-boot-before".into();
        std::fs::write(&path, serde_json::to_vec(&marker).unwrap()).unwrap();

        let after = restore_subtask(&store, &request).await.unwrap();
        if sync {
            assert_eq!(
                (after.mode, after.downloaded_bytes),
                (RestoreMode::LocalRecovery, 0)
            );
        } else {
            assert_eq!(after.mode, RestoreMode::Rescaled);
            assert_eq!(after.downloaded_bytes, first.downloaded_bytes);
        }
        let b = StateBackend::open(&target, 128, after.range, &STATES).unwrap();
        assert!(contents(&b) == owned(&model, 128, 3, 0));
    }
}

/// An unsynced restore writes its downloads through the page cache (one or two of its lanes)
/// within its budget and with direct I/O otherwise; the DB is the same either way.
#[tokio::test]
async fn downloads_beyond_the_page_cache_budget_are_written_direct() {
    let root = tempdir();
    let (_, store, model, _) = two_workers_checkpointed(root.path()).await;
    let target = root.path().join("state").join("db");
    let mut request = RestoreRequest::new(Some(1), 0, 3, &target);
    request.page_cache_budget = Some(u64::MAX);
    let all = restore_subtask(&store, &request).await.unwrap();
    assert!(all.cached_bytes > 0 && all.cached_bytes <= all.downloaded_bytes);
    let half = all.downloaded_bytes / 2;
    for budget in [0, half] {
        std::fs::remove_dir_all(&target).unwrap();
        request.page_cache_budget = Some(budget);
        let s = restore_subtask(&store, &request).await.unwrap();
        assert_eq!(s.downloaded_bytes, all.downloaded_bytes);
        assert!(s.cached_bytes <= budget, "{} > {budget}", s.cached_bytes);
        assert_eq!(s.cached_bytes > 0, budget > 0, "{}", s.cached_bytes);
        let b = StateBackend::open(&target, 128, s.range, &STATES).unwrap();
        assert!(contents(&b) == owned(&model, 128, 3, 0), "budget {budget}");
    }
}

/// The overlap-fraction threshold makes `copy` start from an empty DB; contents are the same. The
/// restore compacts the clipped intervals itself (`compact`), so its files lie inside its range.
#[tokio::test]
async fn threshold_starts_from_an_empty_db() {
    let root = tempdir();
    let store = store_in(root.path());
    let model = initial_model(1500);
    first_checkpoint(&store, root.path(), 1, &model).await;
    let target = root.path().join("t");
    let mut request = RestoreRequest::new(Some(1), 1, 2, &target);
    request.strategy = Strategy::Copy;
    request.overlap_fraction_threshold = 0.9;
    // Compacted by the restore itself: its files lie inside its range at once.
    request.compact = true;
    let summary = restore_subtask(&store, &request).await.unwrap();
    assert_eq!(summary.initial, None);
    assert_eq!(summary.inputs, vec![(0, InputMethod::Copy)]);
    assert!(summary.copied_keys > 0);
    let backend = StateBackend::open(&target, 128, summary.range, &STATES).unwrap();
    assert!(contents(&backend) == owned(&model, 128, 2, 1));
    assert_files_inside_range(&backend);
}

/// A restore with the compaction deferred holds the right keys; its DB's next checkpoint
/// reaches outside its range, so the restore after that copies its handle instead of ingesting
/// it, and is still exact; once the worker compacts, its checkpoints are ingested again.
#[tokio::test]
async fn deferred_compaction_falls_back_to_copy_until_compacted() {
    let root = tempdir();
    let store = store_in(root.path());
    let scratch = root.path().join("s");
    let mut model = initial_model(3000);
    first_checkpoint(&store, root.path(), 1, &model).await;

    // 1 → 2 with the compaction left to the worker (the default).
    let mut dirs = Vec::new();
    for i in 0..2 {
        let target = root.path().join(format!("gen1-{i}"));
        let request = RestoreRequest::new(Some(1), i, 2, &target);
        let summary = restore_subtask(&store, &request).await.unwrap();
        let b = StateBackend::open(&target, 128, summary.range, &STATES).unwrap();
        assert!(contents(&b) == owned(&model, 128, 2, i));
        assert_eq!(
            all_keys(&b),
            contents(&b).len(),
            "clipped keys are invisible"
        );
        dirs.push(target);
    }
    let meta = mutate_and_checkpoint(&store, &dirs, &mut model, 2, 2, 128, &scratch).await;
    assert!(
        meta.handles
            .iter()
            .all(|h| !regroup::restore::plan::ingestible(h))
    );
    let copied = [(0, InputMethod::Copy), (1, InputMethod::Copy)];
    assert_restores_whole(&store, root.path(), 2, &copied, &model).await;

    // The worker compacts: the next checkpoint is ingestible again.
    for (i, dir) in dirs.iter().enumerate() {
        let range = KeyGroupRange::for_subtask(128, 2, i as u32).unwrap();
        let b = StateBackend::open(dir, 128, range, &STATES).unwrap();
        b.compact_outside_range().unwrap();
        assert_files_inside_range(&b);
    }
    let meta = mutate_and_checkpoint(&store, &dirs, &mut model, 3, 3, 128, &scratch).await;
    assert!(meta.handles.iter().all(regroup::restore::plan::ingestible));
    let ingested = [(0, InputMethod::Ingest), (1, InputMethod::Ingest)];
    assert_restores_whole(&store, root.path(), 3, &ingested, &model).await;
}

/// Restores checkpoint `id` whole into `root/gen{id}`, ingesting where it may, and checks how
/// each input came in (`methods`) and that the DB holds exactly `model`.
async fn assert_restores_whole(
    store: &CheckpointStore,
    root: &std::path::Path,
    id: u64,
    methods: &[(u32, InputMethod)],
    model: &Model,
) {
    let target = root.join(format!("gen{id}"));
    let summary = restore(store, id, 0, 1, &target, Strategy::Ingest).await;
    assert_eq!(summary.inputs, methods);
    let b = StateBackend::open(&target, 128, summary.range, &STATES).unwrap();
    assert!(contents(&b) == *model);
}

/// Downloads of several MiB are written in 1 MiB chunks by several writers (each file's own
/// lane and, once no file is left to start, the other lanes: `CopyHelpers`), with direct I/O
/// where the file system takes it: here on a disk-backed directory (the tests' usual
/// `/dev/shm` refuses `O_DIRECT`). Every restore of two workers to one and to three holds
/// exactly its keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_written_in_chunks_by_several_writers() {
    let root = tempfile::tempdir().unwrap();
    let store = store_in(root.path());
    let model = initial_model(600_000);
    let meta = first_checkpoint(&store, root.path(), 2, &model).await;
    let largest = meta
        .handles
        .iter()
        .flat_map(|h| &h.shared)
        .map(|f| f.file.size)
        .max()
        .unwrap();
    assert!(largest > 3 << 20, "no file of several MiB: {largest} B");
    for p in [1, 3] {
        for i in 0..p {
            let target = root.path().join(format!("p{p}-{i}")).join("db");
            let s = restore(&store, 1, i, p, &target, Strategy::Ingest).await;
            assert!(s.downloaded_bytes > 0);
            let b = StateBackend::open(&target, 128, s.range, &STATES).unwrap();
            assert!(
                contents(&b) == owned(&model, 128, p, i),
                "2→{p} subtask {i}: contents differ from the oracle"
            );
        }
    }
}
