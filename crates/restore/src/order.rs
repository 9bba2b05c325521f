//! The order in which a handle's SST files are ingested (pure: values in, values out).
//!
//! Files that overlap must reach RocksDB oldest data first: it places each later file above the
//! earlier ones, and a read takes the first version of a key it finds. Across levels the level
//! tells the age (a lower level holds older data). Within L0 only RocksDB's epoch number does:
//! not the file number, since a compaction inside L0 numbers its output when it writes it, after
//! a flush of newer data that ran beside it.

use std::cmp::Ordering;

use regroup_core::backend::DEFAULT_STATE;
use regroup_core::checkpoint::{SharedFile, SubtaskHandle};

/// True when `h` records enough to ingest its L0 files in their true order: every two L0 files
/// of one column family whose key-group spans may intersect both carry an epoch number. A
/// handle of format 1 records none, so only an L0 without overlapping files qualifies.
pub fn l0_order_proven(h: &SubtaskHandle) -> bool {
    let l0: Vec<&SharedFile> = h.shared.iter().filter(|f| level(f) == 0).collect();
    l0.iter().enumerate().all(|(i, a)| {
        l0[i + 1..]
            .iter()
            .all(|b| !may_overlap(a, b) || (epoch(a).is_some() && epoch(b).is_some()))
    })
}

/// Sorts the files of one ingestion call (one column family) oldest data first: the lowest
/// level (largest level number) first, within a level by epoch number, then by largest
/// sequence number, then by file number. Only files that cannot overlap are left to the last
/// two when [`l0_order_proven`] holds.
pub fn sort_for_ingestion(files: &mut [&SharedFile]) {
    files.sort_by(|a, b| oldest_first(a, b));
}

fn oldest_first(a: &SharedFile, b: &SharedFile) -> Ordering {
    level(b)
        .cmp(&level(a))
        .then_with(|| epoch(a).cmp(&epoch(b)))
        .then_with(|| largest_seqno(a).cmp(&largest_seqno(b)))
        .then_with(|| file_number(&a.local_name).cmp(&file_number(&b.local_name)))
}

/// The level a file is ingested as (a file without one counts as L0, the level that needs an
/// order).
fn level(f: &SharedFile) -> i32 {
    f.level.unwrap_or(0)
}

fn epoch(f: &SharedFile) -> Option<u64> {
    f.order.and_then(|o| o.epoch_number)
}

fn largest_seqno(f: &SharedFile) -> Option<u64> {
    f.order.map(|o| o.largest_seqno)
}

/// Whether two files may hold the same key: same column family and key-group spans that
/// intersect (a file without a span may hold any key group).
fn may_overlap(a: &SharedFile, b: &SharedFile) -> bool {
    family(a) == family(b)
        && match (a.key_groups, b.key_groups) {
            (Some(x), Some(y)) => x.intersection(&y).is_some(),
            _ => true,
        }
}

fn family(f: &SharedFile) -> &str {
    f.column_family.as_deref().unwrap_or(DEFAULT_STATE)
}

/// The file number in an SST name such as `000123.sst` (unparsable names last).
fn file_number(name: &str) -> u64 {
    name.trim_end_matches(".sst").parse().unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regroup_core::checkpoint::SstOrder;
    use regroup_core::checkpoint::testing::checkpoint;
    use regroup_core::keygroup::KeyGroupRange;

    /// An SST file of column family `state` named after `number`.
    fn sst(
        number: u64,
        level: i32,
        groups: (u32, u32),
        order: Option<(u64, u64, u64)>,
    ) -> SharedFile {
        let mut f = checkpoint(128, 1, 1).handles[0].shared[0].clone();
        f.local_name = format!("{number:06}.sst");
        f.file.path = format!("shared/inst0/{number:06}.sst");
        f.column_family = Some("state".into());
        f.level = Some(level);
        f.key_groups = Some(KeyGroupRange {
            start: groups.0,
            end: groups.1,
        });
        f.order = order.map(|(smallest_seqno, largest_seqno, epoch)| SstOrder {
            smallest_seqno,
            largest_seqno,
            epoch_number: Some(epoch),
        });
        f
    }

    fn names(files: &[&SharedFile]) -> Vec<String> {
        files.iter().map(|f| f.local_name.clone()).collect()
    }

    #[test]
    fn l0_files_follow_their_epochs_not_their_numbers() {
        // 000012 is a flush (epoch 9) that ran beside an intra-L0 compaction, whose output
        // 000013 holds older data (its oldest input's epoch, 7); 000014 a later flush.
        let flush = sst(12, 0, (0, 127), Some((201, 300, 9)));
        let compacted = sst(13, 0, (0, 127), Some((1, 200, 7)));
        let later_flush = sst(14, 0, (0, 127), Some((301, 350, 10)));
        let base = sst(5, 6, (0, 127), Some((0, 0, 1)));
        let middle = sst(8, 3, (0, 63), Some((0, 0, 2)));
        let mut files = vec![&later_flush, &flush, &compacted, &middle, &base];
        sort_for_ingestion(&mut files);
        assert_eq!(
            names(&files),
            [
                "000005.sst",
                "000008.sst",
                "000013.sst",
                "000012.sst",
                "000014.sst"
            ]
        );
    }

    #[test]
    fn without_order_files_fall_back_to_their_numbers() {
        let a = sst(14, 0, (0, 10), None);
        let b = sst(9, 0, (11, 20), None);
        let mut files = vec![&a, &b];
        sort_for_ingestion(&mut files);
        assert_eq!(names(&files), ["000009.sst", "000014.sst"]);
    }

    #[test]
    fn an_l0_order_is_proven_by_epochs_or_by_no_overlap() {
        let mut h = checkpoint(128, 1, 1).handles[0].clone();
        h.shared = vec![
            sst(12, 0, (0, 63), Some((201, 300, 9))),
            sst(13, 0, (32, 127), Some((1, 200, 7))),
            sst(5, 6, (0, 127), None),
        ];
        assert!(l0_order_proven(&h));
        // As format 1 wrote them: no order recorded.
        for f in &mut h.shared {
            f.order = None;
        }
        assert!(!l0_order_proven(&h));
        // Disjoint spans, or another column family: the order cannot matter.
        h.shared[1].key_groups = Some(KeyGroupRange {
            start: 64,
            end: 127,
        });
        assert!(l0_order_proven(&h));
        h.shared[1].key_groups = Some(KeyGroupRange { start: 0, end: 127 });
        h.shared[1].column_family = Some("other".into());
        assert!(l0_order_proven(&h));
        // A file without a span may hold any key group.
        h.shared[1].column_family = Some("state".into());
        h.shared[1].key_groups = Some(KeyGroupRange {
            start: 64,
            end: 127,
        });
        h.shared[0].key_groups = None;
        assert!(!l0_order_proven(&h));
    }
}
