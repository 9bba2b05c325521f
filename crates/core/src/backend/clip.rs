//! Clipping a DB to one key-group range: whole SST files outside it dropped, range tombstones
//! where a file straddles a boundary, and compaction of just the intervals outside.

use rocksdb::DB;
use tracing::debug;

use super::native::delete_files_in_range;
use super::{column_family as cf, write_options};
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;

/// The key intervals of the key groups outside `range`.
fn outside_intervals(
    range: KeyGroupRange,
    max_parallelism: u32,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut outside = Vec::new();
    if range.start > 0 {
        outside.push(KeyGroupRange::new(0, range.start - 1)?.key_interval(max_parallelism));
    }
    if range.end + 1 < max_parallelism {
        outside.push(
            KeyGroupRange::new(range.end + 1, max_parallelism - 1)?.key_interval(max_parallelism),
        );
    }
    Ok(outside)
}

/// Whether live file `f` holds keys in `[lower, upper)`, judged by its first and last key.
fn reaches(f: &rocksdb::LiveFile, lower: &[u8], upper: &[u8]) -> bool {
    f.start_key.as_deref().is_none_or(|s| s < upper)
        && f.end_key.as_deref().is_none_or(|e| e >= lower)
}

/// The outside intervals that some live file of column family `name` reaches into.
fn reached<'a>(
    live: &[rocksdb::LiveFile],
    name: &str,
    outside: &'a [(Vec<u8>, Vec<u8>)],
) -> Vec<&'a (Vec<u8>, Vec<u8>)> {
    outside
        .iter()
        .filter(|(lower, upper)| {
            live.iter()
                .any(|f| f.column_family_name == name && reaches(f, lower, upper))
        })
        .collect()
}

/// Removes every key outside `range` from every column family: whole files first
/// (end-exclusive `DeleteFilesInRange`), then, only where some file still reaches outside (it
/// straddles a boundary of the range), range tombstones; with `compact`, a compaction of just
/// those intervals, so neither tombstones nor clipped records survive into later checkpoints
/// (whose files can then be ingested next to other handles' files: a file reaching outside its
/// handle's range makes the next restore copy that handle instead). With the key-group
/// partitioner ([`super::PARTITION_MIN_FILE_BYTES`]) files rarely straddle, and the
/// clip is usually nothing but dropping whole files.
pub fn clip(
    db: &DB,
    column_families: &[String],
    range: KeyGroupRange,
    max_parallelism: u32,
    compact: bool,
) -> Result<()> {
    let outside = outside_intervals(range, max_parallelism)?;
    if outside.is_empty() {
        return Ok(());
    }
    let live = db
        .live_files()
        .map_err(Error::rocks("list live files of the new DB"))?;
    for name in column_families {
        let handle = cf(db, name)?;
        for (lower, upper) in reached(&live, name, &outside) {
            let context = format!("column family {name}, keys outside {range}");
            delete_files_in_range(db, &handle, lower, upper, &context)?;
        }
    }
    let live = db
        .live_files()
        .map_err(Error::rocks("list live files of the new DB"))?;
    let mut straddling = 0;
    for name in column_families {
        let reached = reached(&live, name, &outside);
        if reached.is_empty() {
            continue;
        }
        straddling += live
            .iter()
            .filter(|f| f.column_family_name == *name)
            .filter(|f| {
                reached
                    .iter()
                    .any(|(lower, upper)| reaches(f, lower, upper))
            })
            .count();
        let handle = cf(db, name)?;
        for (lower, upper) in &reached {
            db.delete_range_cf_opt(&handle, lower, upper, &write_options())
                .map_err(Error::rocks(format!(
                    "delete range of column family {name}, keys outside {range}"
                )))?;
        }
        db.flush_cf(&handle)
            .map_err(Error::rocks(format!("flush column family {name}")))?;
    }
    debug!(
        straddling,
        "files reaching outside the range after dropping whole files"
    );
    if compact && straddling > 0 {
        compact_outside(db, column_families, range, max_parallelism)?;
    }
    Ok(())
}

/// Compacts the key intervals outside `range` that some file still reaches into, in every
/// column family: drops clipped records and their range tombstones.
pub fn compact_outside(
    db: &DB,
    column_families: &[String],
    range: KeyGroupRange,
    max_parallelism: u32,
) -> Result<()> {
    let outside = outside_intervals(range, max_parallelism)?;
    let live = db.live_files().map_err(Error::rocks("list live files"))?;
    let mut compact = rocksdb::CompactOptions::default();
    compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::ForceOptimized);
    for name in column_families {
        let reached = reached(&live, name, &outside);
        if reached.is_empty() {
            continue;
        }
        let handle = cf(db, name)?;
        for (lower, upper) in reached {
            db.compact_range_cf_opt(&handle, Some(lower), Some(upper), &compact);
        }
    }
    Ok(())
}
