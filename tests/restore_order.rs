//! Ingest order within L0: RocksDB's own compactions inside L0 produce a handle whose L0 files
//! are numbered in another order than their data's age, and a 2 → 1 `ingest` restore of it
//! still reads the newest version of every key, by scan and by point lookup. The same
//! checkpoint as format 1 wrote it (no sequence numbers) is restored by copying that handle,
//! with the same contents.

mod support;

use std::path::Path;

use regroup::backend::{IncrementalSnapshotter, StateBackend};
use regroup::checkpoint::paths::checkpoint_dir_name;
use regroup::checkpoint::{CheckpointMetadata, CheckpointStore, SharedFile, SstOrder};
use regroup::keygroup::KeyGroupRange;
use regroup::restore::{InputMethod, Strategy};
use support::restore::*;

const M: u32 = 128;
/// Keys of the data set; their size makes the bottom level of `counts` much larger than L0,
/// which is when RocksDB compacts L0 files into L0 rather than into the level below.
const KEYS: u32 = 60_000;
/// Keys of worker 0 in the two small L0 files.
const HOT_KEYS: usize = 400;
/// Tries of "compact L0 beside a flush" before giving up.
const ATTEMPTS: u32 = 10;

/// 100 bytes LZ4 cannot shrink (hex of a 64-bit mix), tagged with the key and version.
fn payload(i: u32, version: u32) -> Vec<u8> {
    let mut x = (u64::from(i) << 32) | u64::from(version);
    let mut out = format!("{i}:v{version}:");
    while out.len() < 100 {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.push_str(&format!("{:016x}", z ^ (z >> 31)));
    }
    out.into_bytes()
}

/// The number in an SST file name such as `000123.sst`.
fn file_number(name: &str) -> u64 {
    name.trim_end_matches(".sst").parse().unwrap()
}

/// The L0 files of column family `counts` of a handle, with their order.
fn l0_of_counts(shared: &[SharedFile]) -> Vec<(&str, SstOrder, &SharedFile)> {
    shared
        .iter()
        .filter(|f| f.column_family.as_deref() == Some("counts") && f.level == Some(0))
        .map(|f| {
            (
                f.local_name.as_str(),
                f.order.expect("format 2 records the order"),
                f,
            )
        })
        .collect()
}

/// Two L0 files of `counts` whose key-group spans intersect, the one numbered first holding
/// the newer data (the larger largest sequence number): the pair, lower number first.
fn inverted_pair(shared: &[SharedFile]) -> Option<(&SharedFile, &SharedFile)> {
    let l0 = l0_of_counts(shared);
    l0.iter()
        .flat_map(|a| l0.iter().map(move |b| (a, b)))
        .find(|((na, a, fa), (nb, b, fb))| {
            file_number(na) < file_number(nb)
                && a.largest_seqno > b.largest_seqno
                && fa
                    .key_groups
                    .zip(fb.key_groups)
                    .is_some_and(|(x, y)| x.intersection(&y).is_some())
        })
        .map(|((_, _, a), (_, _, b))| (*a, *b))
}

/// The L0 files of `counts` with their sequence numbers and epochs, for messages.
fn describe(shared: &[SharedFile]) -> String {
    l0_of_counts(shared)
        .iter()
        .map(|(name, o, f)| {
            format!(
                "{name}: seqnos {}-{}, epoch {:?}, key groups {:?}",
                o.smallest_seqno, o.largest_seqno, o.epoch_number, f.key_groups
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Flushes `state` and waits for the flush.
fn flush(backend: &StateBackend, state: &str) {
    let db = backend.db();
    db.flush_cf(&db.cf_handle(state).unwrap()).unwrap();
}

/// Changes mutable RocksDB options of `state` of an open DB.
fn set_cf_options(backend: &StateBackend, state: &str, options: &[(&str, &str)]) {
    let db = backend.db();
    let cf = db.cf_handle(state).unwrap();
    db.set_options_cf(&cf, options).unwrap();
}

/// Brings worker 0's `counts` to an L0 that RocksDB itself numbered out of age order,
/// checkpoints it together with worker 1 and returns the completed checkpoint. Keeps `model`
/// current.
///
/// A flush takes its file number when it starts; a compaction numbers its output when it
/// writes it. So: two small L0 files of older versions over a much larger bottom level; a large
/// flush of newer versions starts; while it runs, automatic compactions are allowed and
/// RocksDB merges the two small files into one L0 file (an intra-L0 compaction, since the
/// bottom level is large), numbered after the flush. Each step waits for what RocksDB reports
/// (properties), not for time; an attempt whose flush ended too early is tried again.
async fn checkpoint_with_inverted_l0(
    store: &CheckpointStore,
    backends: &[StateBackend],
    model: &mut Model,
    scratch: &Path,
) -> CheckpointMetadata {
    let b = &backends[0];
    let owned: Vec<(u32, Vec<u8>)> = (0..KEYS)
        .map(|i| (i, key(i)))
        .filter(|(_, k)| b.range().contains(b.key_group_of(k)))
        .collect();
    let hot = &owned[..HOT_KEYS];
    let mut version = 0;
    let mut write = |model: &mut Model, keys: &[(u32, Vec<u8>)]| {
        version += 1;
        let mut batch = b.batch();
        for (i, k) in keys {
            let v = payload(*i, version);
            batch.put("counts", k, &v).unwrap();
            model.insert(("counts".to_owned(), k.clone()), v);
        }
        batch.commit().unwrap();
    };
    set_cf_options(
        b,
        "counts",
        &[
            ("disable_auto_compactions", "true"),
            ("level0_file_num_compaction_trigger", "2"),
        ],
    );
    let snapshotter = IncrementalSnapshotter::new(b.instance_id(), 0, 2, 1);
    let mut seen = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let id = u64::from(attempt);
        b.compact().unwrap();
        for _ in 0..2 {
            write(model, hot);
            flush(b, "counts");
        }
        write(model, &owned);
        let mut background = rocksdb::FlushOptions::default();
        background.set_wait(false);
        let db = b.db();
        db.flush_cf_opt(&db.cf_handle("counts").unwrap(), &background)
            .unwrap();
        // The flush has taken its memtable, and with it its file number.
        wait_for(b, || cf_property(b, "rocksdb.mem-table-flush-pending") == 0);
        set_cf_options(b, "counts", &[("disable_auto_compactions", "false")]);
        wait_for(b, || {
            cf_property(b, "rocksdb.compaction-pending") == 0
                && db_property(b, "rocksdb.num-running-compactions") == 0
        });
        set_cf_options(b, "counts", &[("disable_auto_compactions", "true")]);
        db.wait_for_compact(&rocksdb::WaitForCompactOptions::default())
            .unwrap();
        let snapshot = snapshotter.capture(b, id, scratch).unwrap();
        let handle = snapshotter.upload(snapshot, store).await.unwrap();
        if let Some((newer, older)) = inverted_pair(&handle.shared) {
            println!(
                "attempt {attempt}: {} holds newer data than {}; L0 of counts: {}",
                newer.local_name,
                older.local_name,
                describe(&handle.shared)
            );
            // RocksDB's own order (the epoch) agrees with the data's age.
            let epoch = |f: &SharedFile| f.order.and_then(|o| o.epoch_number).unwrap();
            assert!(epoch(newer) > epoch(older), "{}", describe(&handle.shared));
            snapshot_worker(store, &backends[1], id, scratch).await;
            return store
                .try_complete(id, 1, 2, M)
                .await
                .unwrap()
                .expect("both handles are in");
        }
        seen.push(format!("attempt {attempt}: {}", describe(&handle.shared)));
    }
    panic!(
        "no L0 file numbered after a newer one in {ATTEMPTS} attempts:\n{}",
        seen.join("\n")
    );
}

fn cf_property(b: &StateBackend, name: &str) -> u64 {
    let db = b.db();
    db.property_int_value_cf(&db.cf_handle("counts").unwrap(), name)
        .unwrap()
        .unwrap()
}

fn db_property(b: &StateBackend, name: &str) -> u64 {
    b.db().property_int_value(name).unwrap().unwrap()
}

/// Polls `done` until it holds; fails after ten seconds of polling (RocksDB's background work
/// here takes milliseconds).
fn wait_for(b: &StateBackend, mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    panic!(
        "RocksDB's background work did not settle in {}",
        b.dir().display()
    );
}

async fn snapshot_worker(store: &CheckpointStore, b: &StateBackend, id: u64, scratch: &Path) {
    let snapshotter = IncrementalSnapshotter::new(b.instance_id(), 1, 2, 1);
    let snapshot = snapshotter.capture(b, id, scratch).unwrap();
    snapshotter.upload(snapshot, store).await.unwrap();
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// The restore of every key group from `store` equals `model`: the newest version of each key.
async fn assert_restores_newest(
    store: &CheckpointStore,
    id: u64,
    target: &Path,
    model: &Model,
    methods: &[(u32, InputMethod)],
) {
    let summary = restore(store, id, 0, 1, target, Strategy::Ingest).await;
    assert_eq!(summary.inputs, methods);
    let backend =
        StateBackend::open(target, M, KeyGroupRange::new(0, M - 1).unwrap(), &STATES).unwrap();
    // A scan merges the levels by sequence number; a point lookup takes the first version it
    // finds, level by level and within L0 newest file first: only it shows a wrong order.
    let scanned = contents(&backend);
    let mut stale = Vec::new();
    for ((state, k), newest) in model {
        let scan = scanned.get(&(state.clone(), k.clone()));
        let lookup = backend.get(state, k).unwrap();
        if scan != Some(newest) || lookup.as_ref() != Some(newest) {
            stale.push(format!(
                "{state}/{}: scan {}, lookup {}, newest {}",
                String::from_utf8_lossy(k),
                version_of(scan.map(Vec::as_slice)),
                version_of(lookup.as_deref()),
                version_of(Some(newest))
            ));
        }
    }
    assert!(
        stale.is_empty() && scanned.len() == model.len(),
        "{methods:?}: {} of {} keys read back another version than the newest ({} keys \
         scanned), e.g. {:?}",
        stale.len(),
        model.len(),
        scanned.len(),
        &stale[..stale.len().min(5)]
    );
}

/// The `<key>:v<version>` tag at the start of a [`payload`].
fn version_of(value: Option<&[u8]>) -> String {
    value.map_or("none".to_owned(), |v| {
        String::from_utf8_lossy(v)
            .splitn(3, ':')
            .take(2)
            .collect::<Vec<_>>()
            .join(":")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_keeps_newer_l0_data_above_an_older_compaction_output() {
    let root = tempdir();
    let store = store_in(root.path());
    let mut model = Model::new();
    for state in STATES {
        for i in 0..KEYS {
            model.insert((state.to_owned(), key(i)), payload(i, 0));
        }
    }
    let backends = workers(&root.path().join("gen0"), M, 2, &model);
    let meta =
        checkpoint_with_inverted_l0(&store, &backends, &mut model, &root.path().join("s")).await;
    drop(backends);
    let id = meta.checkpoint_id;

    assert_restores_newest(
        &store,
        id,
        &root.path().join("ingested"),
        &model,
        &[(0, InputMethod::Ingest), (1, InputMethod::Ingest)],
    )
    .await;

    // The same checkpoint as format 1 wrote it: nothing orders handle 0's L0 files, so the
    // restore copies that handle (and still ingests handle 1, whose L0 files do not overlap).
    let old_root = root.path().join("store-format-1");
    copy_tree(&root.path().join("store"), &old_root);
    let metadata = old_root
        .join("tests/restore")
        .join(checkpoint_dir_name(id))
        .join("_metadata.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    json["formatVersion"] = 1.into();
    for h in json["handles"].as_array_mut().unwrap() {
        h["formatVersion"] = 1.into();
        for f in h["shared"].as_array_mut().unwrap() {
            assert!(f.as_object_mut().unwrap().remove("order").is_some());
        }
    }
    std::fs::write(&metadata, serde_json::to_vec(&json).unwrap()).unwrap();
    let old_store =
        CheckpointStore::from_url(&format!("file://{}", old_root.display()), job()).unwrap();
    assert_restores_newest(
        &old_store,
        id,
        &root.path().join("copied"),
        &model,
        &[(0, InputMethod::Copy), (1, InputMethod::Ingest)],
    )
    .await;
}
