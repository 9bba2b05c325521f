//! Key groups: the unit of state redistribution.
//!
//! A job has a fixed `max_parallelism` M: the number of key groups. A key belongs to key group
//! `xxh3_64(key bytes) % M` (see [`key_group_for_key`]); subtask `i` of `p` owns the contiguous,
//! inclusive [`KeyGroupRange`] `[ceil(i*M/p), ((i+1)*M - 1)/p]`, exactly as Apache Flink assigns
//! them, so key group `g` belongs to subtask `g*p/M`.
//!
//! Every RocksDB key starts with its key group in big-endian: one byte when M ≤ 128, two bytes
//! otherwise. A key group range is therefore one contiguous interval of the key space.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest supported max parallelism (number of key groups), as in Flink.
pub const UPPER_BOUND_MAX_PARALLELISM: u32 = 1 << 15;

/// Largest max parallelism whose key-group prefix fits in one byte.
const ONE_BYTE_PREFIX_LIMIT: u32 = 128;

/// An inclusive, non-empty range of key groups `[start, end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyGroupRange {
    /// First key group of the range.
    pub start: u32,
    /// Last key group of the range (inclusive).
    pub end: u32,
}

impl fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}]", self.start, self.end)
    }
}

impl KeyGroupRange {
    /// The range `[start, end]`; fails when `start > end`.
    pub fn new(start: u32, end: u32) -> Result<Self> {
        if start > end {
            return Err(Error::invalid(
                "key group range",
                format!("[{start}, {end}]"),
                "start must not exceed end",
            ));
        }
        Ok(Self { start, end })
    }

    /// The range owned by `subtask` of `parallelism` when there are `max_parallelism` key groups.
    pub fn for_subtask(max_parallelism: u32, parallelism: u32, subtask: u32) -> Result<Self> {
        check_parallelism(max_parallelism, parallelism)?;
        if subtask >= parallelism {
            return Err(Error::invalid(
                "subtask",
                subtask,
                format!("a subtask index in 0..{parallelism} (parallelism {parallelism})"),
            ));
        }
        let (m, p, i) = (
            u64::from(max_parallelism),
            u64::from(parallelism),
            u64::from(subtask),
        );
        let start = (i * m).div_ceil(p);
        let end = ((i + 1) * m - 1) / p;
        Ok(Self {
            start: start as u32,
            end: end as u32,
        })
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        self.end - self.start + 1
    }

    /// Always false: ranges are never empty. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when `key_group` lies in the range.
    pub fn contains(&self, key_group: u32) -> bool {
        (self.start..=self.end).contains(&key_group)
    }

    /// True when `other` lies entirely inside this range.
    pub fn covers(&self, other: &KeyGroupRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// The key groups both ranges hold, if any.
    pub fn intersection(&self, other: &KeyGroupRange) -> Option<KeyGroupRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start <= end).then_some(KeyGroupRange { start, end })
    }

    /// Number of key groups both ranges hold.
    pub fn overlap(&self, other: &KeyGroupRange) -> u32 {
        self.intersection(other).map_or(0, |r| r.len())
    }

    /// Iterates over the key groups of the range.
    pub fn iter(&self) -> impl Iterator<Item = u32> + use<> {
        self.start..=self.end
    }

    /// The key interval `[prefix(start), prefix(end + 1))` holding exactly this range's keys.
    pub fn key_interval(&self, max_parallelism: u32) -> (Vec<u8>, Vec<u8>) {
        (
            key_group_prefix(self.start, max_parallelism),
            key_group_prefix(self.end + 1, max_parallelism),
        )
    }
}

/// Checks `1 ≤ parallelism ≤ max_parallelism ≤ 32768`, naming the value at fault.
pub fn check_parallelism(max_parallelism: u32, parallelism: u32) -> Result<()> {
    check_max_parallelism(max_parallelism)?;
    if parallelism == 0 || parallelism > max_parallelism {
        return Err(Error::invalid(
            "parallelism",
            parallelism,
            format!("1 ≤ parallelism ≤ maxParallelism ({max_parallelism})"),
        ));
    }
    Ok(())
}

/// Checks `1 ≤ max_parallelism ≤ 32768`.
pub fn check_max_parallelism(max_parallelism: u32) -> Result<()> {
    if max_parallelism == 0 || max_parallelism > UPPER_BOUND_MAX_PARALLELISM {
        return Err(Error::invalid(
            "maxParallelism",
            max_parallelism,
            format!("1 ≤ maxParallelism ≤ {UPPER_BOUND_MAX_PARALLELISM}"),
        ));
    }
    Ok(())
}

/// The ranges of all subtasks `0..parallelism`, in order.
pub fn ranges(max_parallelism: u32, parallelism: u32) -> Result<Vec<KeyGroupRange>> {
    check_parallelism(max_parallelism, parallelism)?;
    (0..parallelism)
        .map(|i| KeyGroupRange::for_subtask(max_parallelism, parallelism, i))
        .collect()
}

/// The subtask (of `parallelism`) that owns `key_group`.
pub fn subtask_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u32) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism)) as u32
}

/// Flink's default max parallelism for a job first started at `parallelism`:
/// `min(max(roundUpToPowerOfTwo(p + p/2), 128), 32768)`.
pub fn default_max_parallelism(parallelism: u32) -> u32 {
    let p = u64::from(parallelism);
    let wanted = (p + p / 2).max(1).next_power_of_two();
    wanted.clamp(128, u64::from(UPPER_BOUND_MAX_PARALLELISM)) as u32
}

/// The key group of a key, from its raw bytes.
///
/// The hash is XXH3-64 (seed 0) of the key bytes, reduced modulo `max_parallelism`. XXH3's output
/// is fixed by its specification, so a key's group never changes between builds or machines;
/// changing this function would make every existing checkpoint unreadable.
pub fn key_group_for_key(key: &[u8], max_parallelism: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(max_parallelism)) as u32
}

/// Bytes of the key-group prefix: 1 when `max_parallelism ≤ 128`, otherwise 2.
pub fn prefix_len(max_parallelism: u32) -> usize {
    if max_parallelism <= ONE_BYTE_PREFIX_LIMIT {
        1
    } else {
        2
    }
}

/// The big-endian key-group prefix of `key_group`. `key_group` may equal `max_parallelism`
/// (the exclusive upper bound of the last range), which still fits the prefix width.
pub fn key_group_prefix(key_group: u32, max_parallelism: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(2);
    write_key_group_prefix(&mut out, key_group, max_parallelism);
    out
}

/// Appends the key-group prefix of `key_group` to `out`.
pub fn write_key_group_prefix(out: &mut Vec<u8>, key_group: u32, max_parallelism: u32) {
    if prefix_len(max_parallelism) == 1 {
        out.push(key_group as u8);
    } else {
        out.extend_from_slice(&(key_group as u16).to_be_bytes());
    }
}

/// Reads the key group from the start of a stored key; `None` when the key is too short.
pub fn read_key_group_prefix(key: &[u8], max_parallelism: u32) -> Option<u32> {
    match prefix_len(max_parallelism) {
        1 => key.first().map(|&b| u32::from(b)),
        _ => key
            .get(..2)
            .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u32, end: u32) -> KeyGroupRange {
        KeyGroupRange { start, end }
    }

    #[test]
    fn flink_examples() {
        assert_eq!(ranges(16, 2).unwrap(), vec![r(0, 7), r(8, 15)]);
        assert_eq!(
            ranges(16, 4).unwrap(),
            vec![r(0, 3), r(4, 7), r(8, 11), r(12, 15)]
        );
        // Flink's KeyGroupRangeAssignmentTest: M=128, p=3.
        assert_eq!(
            ranges(128, 3).unwrap(),
            vec![r(0, 42), r(43, 85), r(86, 127)]
        );
        assert_eq!(subtask_for_key_group(128, 3, 42), 0);
        assert_eq!(subtask_for_key_group(128, 3, 43), 1);
        assert_eq!(subtask_for_key_group(128, 3, 127), 2);
    }

    #[test]
    fn default_max_parallelism_follows_flink() {
        assert_eq!(default_max_parallelism(1), 128);
        assert_eq!(default_max_parallelism(85), 128);
        assert_eq!(default_max_parallelism(86), 256);
        assert_eq!(default_max_parallelism(1000), 2048);
        assert_eq!(default_max_parallelism(30000), 32768);
    }

    #[test]
    fn invalid_parallelism_names_the_value() {
        let e = ranges(128, 0).unwrap_err().to_string();
        assert!(e.contains("parallelism = 0"), "{e}");
        let e = ranges(128, 129).unwrap_err().to_string();
        assert!(e.contains("parallelism = 129") && e.contains("128"), "{e}");
        let e = ranges(40000, 2).unwrap_err().to_string();
        assert!(e.contains("maxParallelism = 40000"), "{e}");
        let e = KeyGroupRange::for_subtask(128, 4, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("subtask = 4"), "{e}");
    }

    #[test]
    fn prefix_width_and_order() {
        assert_eq!(key_group_prefix(5, 128), vec![5]);
        assert_eq!(key_group_prefix(128, 128), vec![128]);
        assert_eq!(key_group_prefix(300, 4096), vec![1, 44]);
        assert_eq!(key_group_prefix(32768, 32768), vec![0x80, 0]);
        assert_eq!(read_key_group_prefix(&[1, 44, 9], 4096), Some(300));
        assert_eq!(read_key_group_prefix(&[7], 128), Some(7));
        assert_eq!(read_key_group_prefix(&[7], 4096), None);
    }

    #[test]
    fn key_hash_is_stable() {
        // Pinned values: if these change, every stored checkpoint becomes unreadable.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06800538D394C2);
        assert_eq!(
            key_group_for_key(b"", 128),
            (0x2D06800538D394C2u64 % 128) as u32
        );
    }

    proptest! {
        #[test]
        fn ranges_partition_key_groups(m in 1u32..=32768, p_seed in any::<u32>()) {
            let p = p_seed % m + 1;
            let rs = ranges(m, p).unwrap();
            prop_assert_eq!(rs.len() as u32, p);
            prop_assert_eq!(rs[0].start, 0);
            prop_assert_eq!(rs[rs.len() - 1].end, m - 1);
            let (min, max) = rs.iter().fold((u32::MAX, 0), |(a, b), r| (a.min(r.len()), b.max(r.len())));
            prop_assert!(max - min <= 1);
            for w in rs.windows(2) {
                prop_assert_eq!(w[0].end + 1, w[1].start);
            }
            for (i, range) in rs.iter().enumerate() {
                prop_assert_eq!(subtask_for_key_group(m, p, range.start), i as u32);
                prop_assert_eq!(subtask_for_key_group(m, p, range.end), i as u32);
            }
        }

        #[test]
        fn every_key_group_maps_to_its_owner(m in 1u32..=4096, p_seed in any::<u32>(), g_seed in any::<u32>()) {
            let p = p_seed % m + 1;
            let g = g_seed % m;
            let owner = subtask_for_key_group(m, p, g);
            prop_assert!(KeyGroupRange::for_subtask(m, p, owner).unwrap().contains(g));
        }

        #[test]
        fn prefix_order_matches_key_group_order(m in 1u32..=32768, a in any::<u32>(), b in any::<u32>()) {
            let (a, b) = (a % (m + 1), b % (m + 1));
            prop_assert_eq!(key_group_prefix(a, m).cmp(&key_group_prefix(b, m)), a.cmp(&b));
            prop_assert_eq!(read_key_group_prefix(&key_group_prefix(a, m), m), Some(a));
        }

        #[test]
        fn key_groups_are_in_bounds(key in proptest::collection::vec(any::<u8>(), 0..64), m in 1u32..=32768) {
            prop_assert!(key_group_for_key(&key, m) < m);
        }
    }
}
