//! The RocksDB state backend: keyed state of one subtask, split into key groups.
//!
//! Every stored key is `key-group prefix ++ user key` (see [`crate::keygroup`]), so the state of
//! a key group range is one contiguous interval of every column family. Named states are column
//! families. The write-ahead log is off: durability comes from checkpoints, and a worker that
//! crashes restarts from its last completed checkpoint.

pub mod clip;
pub mod native;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, DB, DBCompressionType, Direction, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions,
};

use crate::error::{Error, Result};
use crate::keygroup::{
    KeyGroupRange, check_max_parallelism, key_group_for_key, prefix_len, read_key_group_prefix,
    write_key_group_prefix,
};

pub use snapshot::{IncrementalSnapshotter, LocalSnapshot};

/// One stored entry: key group, user key (without prefix), value.
pub type Entry = (u32, Vec<u8>, Vec<u8>);

/// Column family RocksDB always has; regroup keeps job bookkeeping (e.g. source positions) there.
pub const DEFAULT_STATE: &str = "default";

/// A write batch is committed once it holds this many entries...
pub const BATCH_MAX_ENTRIES: usize = 500;
/// ...or this many bytes of keys and values, whichever comes first (bounded memory).
pub const BATCH_MAX_BYTES: usize = 2 << 20;

/// A compaction output file ends at the next key-group boundary once it holds this many bytes:
/// files then rarely straddle a boundary (a restore to another range drops or skips whole files
/// instead of rewriting them), and state with many small key groups still gets files of a few
/// MiB rather than one per key group. An eighth of RocksDB's default target file size (64 MiB).
pub const PARTITION_MIN_FILE_BYTES: u64 = 8 << 20;

/// The handle of column family `name` of `db`, or an error naming it.
pub fn column_family<'a>(db: &'a DB, name: &str) -> Result<Arc<rocksdb::BoundColumnFamily<'a>>> {
    db.cf_handle(name)
        .ok_or_else(|| Error::Other(format!("column family {name} missing in the DB")))
}

/// RocksDB options used for every DB regroup opens, so restores produce DBs the worker can open:
/// among them the key-group SST partitioner ([`PARTITION_MIN_FILE_BYTES`]) for `max_parallelism`.
pub fn db_options(max_parallelism: u32) -> Options {
    options_partitioned(max_parallelism, PARTITION_MIN_FILE_BYTES)
}

/// [`db_options`] with another minimum file size for the key-group partitioner.
fn options_partitioned(max_parallelism: u32, min_file_bytes: u64) -> Options {
    let mut opts = Options::default();
    native::set_key_group_partitioner(&mut opts, prefix_len(max_parallelism), min_file_bytes);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.set_max_background_jobs(2);
    // Without a WAL, a crash loses what was not flushed; atomic flushes keep every column
    // family at the same point, so a DB reopened after a crash is a consistent prefix.
    opts.set_atomic_flush(true);
    opts
}

/// Write options for state writes: no WAL (checkpoints are the durability mechanism).
pub fn write_options() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.disable_wal(true);
    w
}

/// Keyed state of one subtask, owning one [`KeyGroupRange`].
pub struct StateBackend {
    db: Arc<DB>,
    dir: PathBuf,
    range: KeyGroupRange,
    max_parallelism: u32,
    instance_id: String,
    states: Vec<String>,
}

impl std::fmt::Debug for StateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBackend")
            .field("dir", &self.dir)
            .field("range", &self.range)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

impl StateBackend {
    /// Opens (or creates) the DB at `dir` for `range`, with the named `states` as column
    /// families besides `default`. Column families already in the DB are opened too.
    pub fn open(
        dir: &Path,
        max_parallelism: u32,
        range: KeyGroupRange,
        states: &[&str],
    ) -> Result<Self> {
        check_max_parallelism(max_parallelism)?;
        if range.end >= max_parallelism {
            return Err(Error::invalid(
                "key group range",
                range,
                format!("a range inside [0, {max_parallelism})"),
            ));
        }
        let opts = db_options(max_parallelism);
        let mut names: Vec<String> = if dir.join("CURRENT").exists() {
            DB::list_cf(&opts, dir).map_err(Error::rocks(format!(
                "list column families of {}",
                dir.display()
            )))?
        } else {
            vec![DEFAULT_STATE.to_owned()]
        };
        for s in states {
            if s.is_empty() {
                return Err(Error::invalid("state name", "\"\"", "a non-empty name"));
            }
            if !names.iter().any(|n| n == s) {
                names.push((*s).to_owned());
            }
        }
        let descriptors = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, db_options(max_parallelism)));
        let db = DB::open_cf_descriptors(&opts, dir, descriptors)
            .map_err(Error::rocks(format!("open {}", dir.display())))?;
        Ok(Self {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            range,
            max_parallelism,
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            states: names,
        })
    }

    /// Compacts away what a restore without compaction clipped from this DB (records and range
    /// tombstones outside its range); a no-op when nothing is left.
    /// [`Self::stop_manual_compactions`] makes it end early.
    pub fn compact_outside_range(&self) -> Result<()> {
        clip::compact_outside(&self.db, &self.states, self.range, self.max_parallelism)
    }

    /// Makes a running [`Self::compact_outside_range`] (and any later one) end early.
    pub fn stop_manual_compactions(&self) {
        native::stop_manual_compactions(&self.db);
    }

    /// The RocksDB handle.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Directory of the DB.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Key groups this backend owns.
    pub fn range(&self) -> KeyGroupRange {
        self.range
    }

    /// Number of key groups of the job.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// Unique id of this opened DB instance; names its shared files in the store.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Names of the column families (named states), `default` included.
    pub fn states(&self) -> &[String] {
        &self.states
    }

    /// The key group of a user key.
    pub fn key_group_of(&self, key: &[u8]) -> u32 {
        key_group_for_key(key, self.max_parallelism)
    }

    fn cf(&self, state: &str) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.db.cf_handle(state).ok_or_else(|| {
            Error::invalid(
                "state",
                state,
                format!("one of the declared states: {}", self.states.join(", ")),
            )
        })
    }

    fn stored_key(&self, key_group: u32, key: &[u8]) -> Result<Vec<u8>> {
        if !self.range.contains(key_group) {
            return Err(Error::KeyGroupNotOwned {
                key_group,
                range: self.range.to_string(),
            });
        }
        let mut k = Vec::with_capacity(prefix_len(self.max_parallelism) + key.len());
        write_key_group_prefix(&mut k, key_group, self.max_parallelism);
        k.extend_from_slice(key);
        Ok(k)
    }

    /// Writes `value` for `key` (hashed to its key group) in `state`.
    pub fn put(&self, state: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_in_group(state, self.key_group_of(key), key, value)
    }

    /// Writes `value` for `key` in an explicit key group.
    pub fn put_in_group(
        &self,
        state: &str,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let mut b = self.batch();
        b.put_in_group(state, key_group, key, value)?;
        b.commit()
    }

    /// Reads `key` (hashed to its key group) from `state`.
    pub fn get(&self, state: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_in_group(state, self.key_group_of(key), key)
    }

    /// Reads `key` in an explicit key group.
    pub fn get_in_group(&self, state: &str, key_group: u32, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let k = self.stored_key(key_group, key)?;
        let cf = self.cf(state)?;
        self.db
            .get_cf(&cf, k)
            .map_err(Error::rocks(format!("get from state {state}")))
    }

    /// Deletes `key` (hashed to its key group) from `state`.
    pub fn delete(&self, state: &str, key: &[u8]) -> Result<()> {
        let mut b = self.batch();
        b.delete_in_group(state, self.key_group_of(key), key)?;
        b.commit()
    }

    /// Every `(key group, user key, value)` of `state` in the backend's range, in key order.
    pub fn scan(&self, state: &str) -> Result<Vec<Entry>> {
        self.scan_range(state, self.range)
    }

    /// Every `(key group, user key, value)` of `state` in `range` (which must be owned).
    pub fn scan_range(&self, state: &str, range: KeyGroupRange) -> Result<Vec<Entry>> {
        if !self.range.covers(&range) {
            return Err(Error::KeyGroupNotOwned {
                key_group: if self.range.contains(range.start) {
                    range.end
                } else {
                    range.start
                },
                range: self.range.to_string(),
            });
        }
        let cf = self.cf(state)?;
        scan_cf(&self.db, &cf, range, self.max_parallelism)
    }

    /// A bounded write batch over this backend.
    pub fn batch(&self) -> StateBatch<'_> {
        StateBatch {
            backend: self,
            batch: WriteBatch::default(),
            entries: 0,
            bytes: 0,
        }
    }

    /// Flushes every memtable to SST files.
    pub fn flush(&self) -> Result<()> {
        for s in &self.states {
            let cf = self.cf(s)?;
            self.db
                .flush_cf(&cf)
                .map_err(Error::rocks(format!("flush state {s}")))?;
        }
        Ok(())
    }

    /// Compacts every column family fully (bottommost level included).
    pub fn compact(&self) -> Result<()> {
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
        for s in &self.states {
            let cf = self.cf(s)?;
            self.db
                .compact_range_cf_opt(&cf, None::<&[u8]>, None::<&[u8]>, &opts);
        }
        Ok(())
    }
}

/// Reads every entry of `range` from one column family of `db`.
pub fn scan_cf(
    db: &DB,
    cf: &impl rocksdb::AsColumnFamilyRef,
    range: KeyGroupRange,
    max_parallelism: u32,
) -> Result<Vec<Entry>> {
    let (lower, upper) = range.key_interval(max_parallelism);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(upper);
    let plen = prefix_len(max_parallelism);
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(cf, ro, IteratorMode::From(&lower, Direction::Forward)) {
        let (k, v) = item.map_err(Error::rocks("scan"))?;
        let g = read_key_group_prefix(&k, max_parallelism).ok_or_else(|| Error::Corrupt {
            file: "state".into(),
            detail: format!("stored key {k:?} is shorter than its key-group prefix"),
        })?;
        out.push((g, k[plen..].to_vec(), v.to_vec()));
    }
    Ok(out)
}

/// A write batch that commits itself when it reaches [`BATCH_MAX_ENTRIES`] or
/// [`BATCH_MAX_BYTES`]; call [`StateBatch::commit`] for the rest. Entries of one
/// [`StateBatch::commit`] become visible together only if the batch stayed under the bounds.
pub struct StateBatch<'a> {
    backend: &'a StateBackend,
    batch: WriteBatch,
    entries: usize,
    bytes: usize,
}

impl StateBatch<'_> {
    /// Adds a put of `key` (hashed to its key group).
    pub fn put(&mut self, state: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_in_group(state, self.backend.key_group_of(key), key, value)
    }

    /// Adds a put in an explicit key group.
    pub fn put_in_group(
        &mut self,
        state: &str,
        key_group: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let k = self.backend.stored_key(key_group, key)?;
        let cf = self.backend.cf(state)?;
        self.bytes += k.len() + value.len();
        self.batch.put_cf(&cf, k, value);
        drop(cf);
        self.entries += 1;
        self.maybe_commit()
    }

    /// Adds a delete in an explicit key group.
    pub fn delete_in_group(&mut self, state: &str, key_group: u32, key: &[u8]) -> Result<()> {
        let k = self.backend.stored_key(key_group, key)?;
        let cf = self.backend.cf(state)?;
        self.bytes += k.len();
        self.batch.delete_cf(&cf, k);
        drop(cf);
        self.entries += 1;
        self.maybe_commit()
    }

    /// Number of entries not committed yet.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when nothing is waiting to be committed.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    fn maybe_commit(&mut self) -> Result<()> {
        if self.entries >= BATCH_MAX_ENTRIES || self.bytes >= BATCH_MAX_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<()> {
        if self.entries == 0 {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.backend
            .db
            .write_opt(batch, &write_options())
            .map_err(Error::rocks(format!(
                "write batch to {}",
                self.backend.dir.display()
            )))?;
        self.entries = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Writes what is left in the batch.
    pub fn commit(mut self) -> Result<()> {
        self.flush_batch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes 40 keys into each of M = 300 key groups (two-byte prefixes) in one flush, compacts
    /// everything, and returns per live file the key groups of its first and last key.
    fn compacted_spans(min_file_bytes: u64) -> Vec<(u32, u32)> {
        let m = 300;
        let dir = tempfile::tempdir().unwrap();
        let db = DB::open(&options_partitioned(m, min_file_bytes), dir.path()).unwrap();
        for g in 0..m {
            for i in 0..40u32 {
                let mut key = Vec::new();
                write_key_group_prefix(&mut key, g, m);
                key.extend_from_slice(format!("key-{i}").as_bytes());
                // Incompressible values, so that file sizes grow with the keys written.
                let value: Vec<u8> = (0..6)
                    .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
                    .collect();
                db.put_opt(&key, value, &write_options()).unwrap();
            }
        }
        db.flush().unwrap();
        // Rewrite every file (a lone file moved to the last level unchanged would keep its span).
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        db.compact_range_opt(None::<&[u8]>, None::<&[u8]>, &compact);
        db.live_files()
            .unwrap()
            .iter()
            .map(|f| {
                let group =
                    |k: &Option<Vec<u8>>| read_key_group_prefix(k.as_ref().unwrap(), m).unwrap();
                (group(&f.start_key), group(&f.end_key))
            })
            .collect()
    }

    #[test]
    fn compaction_output_ends_at_key_group_boundaries() {
        // Minimum 0: every key group in files of its own.
        let spans = compacted_spans(0);
        assert!(spans.iter().all(|(a, b)| a == b), "{spans:?}");
        assert_eq!(spans.len(), 300);
        // A minimum of ~10 key groups' bytes: files hold several whole key groups, cut only
        // at boundaries.
        let spans = compacted_spans(40_000);
        assert!(spans.len() > 1 && spans.len() < 300, "{spans:?}");
        let mut sorted = spans.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert!(
                pair[0].1 < pair[1].0,
                "a key group split across files: {sorted:?}"
            );
        }
        // Without the partitioner (it never reaches its minimum): one file spans them all.
        assert_eq!(compacted_spans(u64::MAX), vec![(0, 299)]);
    }

    #[test]
    fn put_get_delete_scan_in_range() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::for_subtask(128, 2, 0).unwrap();
        let b = StateBackend::open(dir.path(), 128, range, &["counts"]).unwrap();
        let owned: Vec<String> = (0..2000)
            .map(|i| format!("k{i}"))
            .filter(|k| range.contains(b.key_group_of(k.as_bytes())))
            .collect();
        let mut batch = b.batch();
        for k in &owned {
            batch.put("counts", k.as_bytes(), k.as_bytes()).unwrap();
        }
        batch.commit().unwrap();
        assert_eq!(
            b.get("counts", owned[0].as_bytes()).unwrap().unwrap(),
            owned[0].as_bytes()
        );
        b.delete("counts", owned[0].as_bytes()).unwrap();
        assert_eq!(b.get("counts", owned[0].as_bytes()).unwrap(), None);
        let all = b.scan("counts").unwrap();
        assert_eq!(all.len(), owned.len() - 1);
        assert!(all.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(all.iter().all(|(g, k, v)| range.contains(*g) && k == v));
    }

    #[test]
    fn keys_of_other_subtasks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::for_subtask(128, 2, 1).unwrap();
        let b = StateBackend::open(dir.path(), 128, range, &["s"]).unwrap();
        let e = b.put_in_group("s", 3, b"k", b"v").unwrap_err();
        assert!(
            matches!(e, Error::KeyGroupNotOwned { key_group: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("[64, 127]"));
        let e = b.put("nope", b"k", b"v");
        assert!(e.is_err());
    }

    #[test]
    fn reopen_keeps_states_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::new(0, 4095).unwrap();
        {
            let b = StateBackend::open(dir.path(), 4096, range, &["a", "b"]).unwrap();
            b.put_in_group("b", 300, b"x", b"1").unwrap();
            b.flush().unwrap();
        }
        let b = StateBackend::open(dir.path(), 4096, range, &[]).unwrap();
        assert!(b.states().iter().any(|s| s == "b"));
        assert_eq!(b.get_in_group("b", 300, b"x").unwrap().unwrap(), b"1");
        let scanned = b
            .scan_range("b", KeyGroupRange::new(300, 300).unwrap())
            .unwrap();
        assert_eq!(scanned, vec![(300, b"x".to_vec(), b"1".to_vec())]);
    }
}
