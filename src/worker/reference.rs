//! The reference job behind `regroup worker`: a deterministic keyed workload whose correct state
//! is known exactly, so the [`super::oracle`] can prove a checkpoint lost or duplicated nothing.
//!
//! Every key group `g` has its own replayable source: event `n` of `g` is a pure function of
//! `(g, n)` ([`event`]) that picks one of the group's `K` keys ([`KeySpace`]) and a delta. The
//! job keeps per key a count (`counts` state) and a sum of deltas (`sums` state), and stores the
//! key group's source position (the next `n`, with `K`) in the `default` state in the same write
//! batch as the state it produced, so state and position always agree.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use super::{KeyedJob, Step, WorkerConfig};
use crate::backend::{DEFAULT_STATE, StateBackend, StateBatch};
use crate::error::{Error, Result};
use crate::keygroup::{KeyGroupRange, key_group_for_key};

/// Named state of per-key event counts (u64, big-endian).
pub const COUNTS: &str = "counts";
/// Named state of per-key sums of deltas (u64, big-endian).
pub const SUMS: &str = "sums";
/// Key (in every key group, `default` state) of the key group's source position.
pub const POSITION_KEY: &[u8] = b"position";
/// Seed of the event hash; changing it changes every event.
const EVENT_SEED: u64 = 0x7265_6772_6f75_7021;

/// `regroup worker`: the reference job on the worker runtime.
#[derive(Args, Debug, Clone)]
pub struct ReferenceWorkerArgs {
    /// Runtime configuration.
    #[command(flatten)]
    pub runtime: WorkerConfig,
    /// Workload.
    #[command(flatten)]
    pub job: ReferenceJobArgs,
}

/// The reference workload's knobs.
#[derive(Args, Debug, Clone)]
pub struct ReferenceJobArgs {
    /// Events per second of this worker; 0 = as fast as possible (still yielding between steps).
    #[arg(long, env = "REGROUP_RATE", default_value_t = 1000)]
    pub rate: u64,
    /// Distinct keys in each key group (fixed for the life of the job's state).
    #[arg(long, env = "REGROUP_KEYS_PER_GROUP", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub keys_per_group: u32,
    /// Events of one key group applied per step (one write batch).
    #[arg(long, env = "REGROUP_EVENTS_PER_STEP", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub events_per_step: u32,
    /// Apply events as fast as possible until every key of this worker's key groups exists
    /// (the first --keys-per-group events of each group), then at --rate: a large state quickly.
    #[arg(long, env = "REGROUP_PRELOAD")]
    pub preload: bool,
}

/// One event of a key group's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// Index of the key among the group's keys.
    pub key_index: u32,
    /// Amount added to the key's sum.
    pub delta: u64,
}

/// Event `n` of key group `g` when each group has `keys_per_group` keys: a pure function. The
/// first `keys_per_group` events of a group visit its keys in order, so that a preloaded state
/// holds every key; the rest pick keys by hash.
pub fn event(g: u32, n: u64, keys_per_group: u32) -> Event {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&g.to_be_bytes());
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, EVENT_SEED);
    let key_index = if n < u64::from(keys_per_group) {
        n as u32
    } else {
        (h % u64::from(keys_per_group)) as u32
    };
    Event {
        key_index,
        delta: (h >> 40) % 1000 + 1,
    }
}

/// The keys of every key group: the first `K` names `key-<c>` (c = 0, 1, ...) whose hash falls
/// into that group. Derived from `(M, K)` alone, so the oracle computes the same table.
#[derive(Debug)]
pub struct KeySpace {
    keys_per_group: u32,
    /// The first key group held.
    start: u32,
    /// The `c` of each key, group after group: one allocation however many keys, where millions
    /// of small strings were slow to allocate at start and to free at exit.
    numbers: Vec<u64>,
}

impl KeySpace {
    /// The key space of `max_parallelism` key groups with `keys_per_group` keys each.
    pub fn new(max_parallelism: u32, keys_per_group: u32) -> Self {
        Self::of_range(
            max_parallelism,
            keys_per_group,
            KeyGroupRange {
                start: 0,
                end: max_parallelism - 1,
            },
        )
    }

    /// The keys of the key groups of `range` only: what one worker needs (a worker of a large
    /// state keeps only its own keys in memory).
    pub fn of_range(max_parallelism: u32, keys_per_group: u32, range: KeyGroupRange) -> Self {
        let k = keys_per_group as usize;
        let groups = range.len() as usize;
        let mut numbers = vec![0; groups * k];
        let mut found = vec![0usize; groups];
        let mut missing = groups * k;
        // Every worker scans about M·K names whatever its range, before its first event: the
        // names are scanned in chunks side by side, and their hits taken in order.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8)) as u64;
        let names = u64::from(max_parallelism) * u64::from(keys_per_group);
        let chunk = (names / threads).clamp(1 << 10, 1 << 17);
        let mut next = 0;
        while missing > 0 {
            let scans: Vec<(u64, Vec<u16>)> = std::thread::scope(|s| {
                let scans: Vec<_> = (0..threads)
                    .map(|t| {
                        let first = next + t * chunk;
                        let scan =
                            s.spawn(move || scan(first..first + chunk, max_parallelism, range));
                        (first, scan)
                    })
                    .collect();
                scans
                    .into_iter()
                    .map(|(first, scan)| (first, scan.join().expect("a key scan panicked")))
                    .collect()
            });
            for (first, groups) in scans {
                for (c, i) in (first..).zip(groups) {
                    let i = usize::from(i);
                    if i != OUTSIDE && found[i] < k {
                        numbers[i * k + found[i]] = c;
                        found[i] += 1;
                        missing -= 1;
                    }
                }
            }
            next += threads * chunk;
        }
        Self {
            keys_per_group,
            start: range.start,
            numbers,
        }
    }

    /// The keys of the key groups of `range` (all held).
    pub fn of(&self, range: KeyGroupRange) -> Self {
        let k = self.keys_per_group as usize;
        let first = (range.start - self.start) as usize;
        Self {
            keys_per_group: self.keys_per_group,
            start: range.start,
            numbers: self.numbers[first * k..(first + range.len() as usize) * k].to_vec(),
        }
    }

    /// Keys per key group.
    pub fn keys_per_group(&self) -> u32 {
        self.keys_per_group
    }

    /// The keys of key group `g` (one of those held).
    pub fn keys(&self, g: u32) -> GroupKeys<'_> {
        let k = self.keys_per_group as usize;
        let i = (g - self.start) as usize;
        GroupKeys(&self.numbers[i * k..(i + 1) * k])
    }
}

/// The whole key table of `(M, K)` on the state volume: deriving it hashes about M·K names
/// whatever the worker's range, which dominated a large job's start; a worker that finds it reads
/// its own key groups. Body: each group's `c`s as little-endian u32, group after group; header:
/// magic, M, K, the xxh3 of each group's part of the body.
#[derive(Clone, Debug)]
pub struct KeyTableFile {
    path: PathBuf,
    max_parallelism: u32,
    keys_per_group: u32,
}

impl KeyTableFile {
    const MAGIC: &'static [u8; 8] = b"RGKEYS02";
    /// Larger tables are not cached: M·K names, 4 bytes each (256 MiB).
    const MAX_NAMES: u64 = 1 << 26;

    /// The table of `(max_parallelism, keys_per_group)` in `state_dir`; `None` when too large.
    pub fn new(state_dir: &Path, max_parallelism: u32, keys_per_group: u32) -> Option<Self> {
        (u64::from(max_parallelism) * u64::from(keys_per_group) <= Self::MAX_NAMES).then(|| Self {
            path: state_dir.join(format!(
                "reference-keys-m{max_parallelism}-k{keys_per_group}.bin"
            )),
            max_parallelism,
            keys_per_group,
        })
    }

    /// Bytes before the body: magic, M, K and one xxh3 per key group.
    fn header_len(&self) -> usize {
        16 + 8 * self.max_parallelism as usize
    }

    /// The keys of `range` from the file, if it is there and they are intact: only the range's
    /// groups are read.
    pub fn load(&self, range: KeyGroupRange) -> Option<KeySpace> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&self.path).ok()?;
        let group_bytes = 4 * self.keys_per_group as usize;
        let header_len = self.header_len();
        let len = header_len + group_bytes * self.max_parallelism as usize;
        if file.metadata().ok()?.len() != len as u64 {
            return None;
        }
        let mut header = vec![0u8; header_len];
        file.read_exact_at(&mut header, 0).ok()?;
        let ours = [
            &Self::MAGIC[..],
            &self.max_parallelism.to_le_bytes(),
            &self.keys_per_group.to_le_bytes(),
        ]
        .concat();
        if header[..16] != ours[..] {
            return None;
        }
        let mut own = vec![0u8; group_bytes * range.len() as usize];
        let offset = header_len + group_bytes * range.start as usize;
        file.read_exact_at(&mut own, offset as u64).ok()?;
        for (i, group) in own.chunks_exact(group_bytes).enumerate() {
            let at = 16 + 8 * (range.start as usize + i);
            if header[at..at + 8] != xxhash_rust::xxh3::xxh3_64(group).to_le_bytes() {
                return None;
            }
        }
        let numbers = own
            .chunks_exact(4)
            .map(|c| u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        Some(KeySpace {
            keys_per_group: self.keys_per_group,
            start: range.start,
            numbers,
        })
    }

    /// Writes `all`, the key space of every key group (a new file renamed into place).
    pub fn write(&self, all: &KeySpace) -> std::io::Result<()> {
        let m = self.max_parallelism;
        debug_assert_eq!(all.numbers.len(), m as usize * self.keys_per_group as usize);
        // `c` < 2^32: the table holds at most MAX_NAMES names.
        let body: Vec<u8> = all
            .numbers
            .iter()
            .flat_map(|&c| (c as u32).to_le_bytes())
            .collect();
        let mut bytes = Vec::with_capacity(self.header_len() + body.len());
        bytes.extend_from_slice(Self::MAGIC);
        bytes.extend_from_slice(&m.to_le_bytes());
        bytes.extend_from_slice(&self.keys_per_group.to_le_bytes());
        for group in body.chunks_exact(4 * self.keys_per_group as usize) {
            bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(group).to_le_bytes());
        }
        bytes.extend_from_slice(&body);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = self.path.with_extension("partial");
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, &self.path)
    }
}

/// A name's key group outside the range being scanned for.
const OUTSIDE: usize = u16::MAX as usize;

/// For each name `key-<c>`, `c` in `numbers`, in order: its key group's index in `range`, or
/// [`OUTSIDE`]. Two bytes a name: collecting (group, c) pairs cost more than the hashing.
fn scan(numbers: std::ops::Range<u64>, max_parallelism: u32, range: KeyGroupRange) -> Vec<u16> {
    let mut name = KeyName::at(numbers.start);
    numbers
        .map(|_| {
            let g = key_group_for_key(name.as_bytes(), max_parallelism);
            name.advance();
            if range.contains(g) {
                // Below OUTSIDE: a range holds at most UPPER_BOUND_MAX_PARALLELISM (2^15) groups.
                (g - range.start) as u16
            } else {
                OUTSIDE as u16
            }
        })
        .collect()
}

/// The name `key-<c>`, counted up in place: formatting each of millions of names anew was
/// most of a worker's start.
struct KeyName {
    text: Vec<u8>,
}

impl KeyName {
    const PREFIX: usize = "key-".len();

    fn at(number: u64) -> Self {
        Self {
            text: format!("key-{number}").into_bytes(),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// The next name: `c + 1` in decimal.
    fn advance(&mut self) {
        for i in (Self::PREFIX..self.text.len()).rev() {
            if self.text[i] == b'9' {
                self.text[i] = b'0';
            } else {
                self.text[i] += 1;
                return;
            }
        }
        self.text.insert(Self::PREFIX, b'1');
    }
}

/// The keys of one key group, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupKeys<'a>(&'a [u64]);

impl GroupKeys<'_> {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of key `i`.
    pub fn name(&self, i: usize) -> String {
        format!("key-{}", self.0[i])
    }

    /// Every name, in order.
    pub fn names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.len()).map(|i| self.name(i))
    }
}

/// A key group's source position as stored: the next event index and `K`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Index of the next event to apply: events `0..next` are in the state.
    pub next: u64,
    /// Keys per key group the state was built with.
    pub keys_per_group: u32,
}

impl Position {
    /// 12 bytes: `next` then `keys_per_group`, big-endian.
    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&self.next.to_be_bytes());
        b[8..].copy_from_slice(&self.keys_per_group.to_be_bytes());
        b
    }

    /// Parses [`Position::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; 12] = bytes.try_into().ok()?;
        Some(Self {
            next: u64::from_be_bytes(b[..8].try_into().ok()?),
            keys_per_group: u32::from_be_bytes(b[8..].try_into().ok()?),
        })
    }
}

/// Decodes a stored u64 counter value.
pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The state events `0..next` of key group `g` produce: per key, (count, sum).
pub fn expected_state(keys: &KeySpace, g: u32, next: u64) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let names = keys.keys(g);
    for n in 0..next {
        let e = event(g, n, keys.keys_per_group());
        let v = out.entry(names.name(e.key_index as usize)).or_default();
        v.0 += 1;
        v.1 += e.delta;
    }
    out
}

/// The reference job: applies each owned key group's events, round-robin, paced to a rate.
pub struct ReferenceJob {
    args: ReferenceJobArgs,
    keys: Arc<KeySpace>,
    range: KeyGroupRange,
    positions: Vec<u64>,
    cursor: u32,
    started: Option<Instant>,
    applied: u64,
    /// Owned key groups still preloading (some of their keys do not exist yet).
    preloading: u32,
}

/// Events of one key group per preload step: two puts each, within one batch's bounds.
const PRELOAD_STEP: u64 = 200;

impl ReferenceJob {
    /// The job for the key groups of `range` out of `max_parallelism`.
    pub fn new(args: ReferenceJobArgs, max_parallelism: u32, range: KeyGroupRange) -> Self {
        let keys = KeySpace::of_range(max_parallelism, args.keys_per_group, range);
        Self::with_keys(args, range, keys)
    }

    /// The job for the key groups of `range`, whose keys are `keys`.
    pub fn with_keys(args: ReferenceJobArgs, range: KeyGroupRange, keys: KeySpace) -> Self {
        let keys = Arc::new(keys);
        Self {
            args,
            keys,
            range,
            positions: vec![0; range.len() as usize],
            cursor: 0,
            started: None,
            applied: 0,
            preloading: 0,
        }
    }

    fn elapsed(&mut self) -> f64 {
        self.started
            .get_or_insert_with(Instant::now)
            .elapsed()
            .as_secs_f64()
    }

    /// Events the rate made due by `elapsed` seconds that are not applied yet.
    fn owed(&self, elapsed: f64) -> u64 {
        let due = (elapsed * self.args.rate as f64) as u64;
        due.saturating_sub(self.applied)
    }

    /// Events the rate allows now, at most one step's worth; `Err(wait)` until enough are due
    /// for a step of reasonable size (a step costs reads and a batch write, whatever its size).
    fn budget(&mut self) -> std::result::Result<u64, Duration> {
        let per_step = u64::from(self.args.events_per_step);
        let rate = self.args.rate;
        if rate == 0 {
            return Ok(per_step);
        }
        let elapsed = self.elapsed();
        let owed = self.owed(elapsed);
        // At most 50 ms worth of events per step, so slow rates still progress smoothly.
        let min_step = per_step.min((rate / 20).max(1));
        if owed >= min_step {
            Ok(owed.min(per_step))
        } else {
            let next_due = (self.applied + min_step) as f64 / rate as f64;
            Err(Duration::from_secs_f64((next_due - elapsed).max(0.0005)))
        }
    }
}

impl KeyedJob for ReferenceJob {
    fn states(&self) -> Vec<String> {
        vec![COUNTS.to_owned(), SUMS.to_owned()]
    }

    fn open(&mut self, backend: &StateBackend) -> Result<()> {
        let stored = backend.scan(DEFAULT_STATE)?;
        let mut found = vec![false; self.range.len() as usize];
        for (g, key, value) in &stored {
            if key.as_slice() != POSITION_KEY {
                continue;
            }
            let p = Position::decode(value).ok_or_else(|| Error::Corrupt {
                file: backend.dir().display().to_string(),
                detail: format!("position of key group {g} is not 12 bytes"),
            })?;
            if p.keys_per_group != self.args.keys_per_group {
                return Err(Error::invalid(
                    "keys per group",
                    self.args.keys_per_group,
                    format!(
                        "{} (the state was built with that many keys per key group; it is fixed for the life of the job)",
                        p.keys_per_group
                    ),
                ));
            }
            let i = (g - self.range.start) as usize;
            self.positions[i] = p.next;
            found[i] = true;
        }
        let present = found.iter().filter(|f| **f).count();
        if present == 0 {
            // First start: every owned key group begins at event 0, recorded so that a lost key
            // group is detectable later.
            let mut batch = backend.batch();
            let start = Position {
                next: 0,
                keys_per_group: self.args.keys_per_group,
            };
            for g in self.range.iter() {
                batch.put_in_group(DEFAULT_STATE, g, POSITION_KEY, &start.encode())?;
            }
            batch.commit()?;
        } else if present < found.len() {
            let missing =
                self.range.start + found.iter().position(|f| !f).expect("some are missing") as u32;
            return Err(Error::Corrupt {
                file: backend.dir().display().to_string(),
                detail: format!(
                    "the restored state holds positions of {present} of the {} key groups of {}; key group {missing} has none (lost in the restore?)",
                    found.len(),
                    self.range
                ),
            });
        }
        if self.args.preload {
            let k = u64::from(self.args.keys_per_group);
            self.preloading = self.positions.iter().filter(|&&p| p < k).count() as u32;
        }
        Ok(())
    }

    fn step(&mut self, backend: &StateBackend, batch: &mut StateBatch<'_>) -> Result<Step> {
        let budget = if self.preloading > 0 {
            PRELOAD_STEP
        } else {
            match self.budget() {
                Ok(b) => b,
                Err(wait) => {
                    return Ok(Step {
                        events: 0,
                        idle: Some(wait),
                    });
                }
            }
        };
        let g = self.range.start + self.cursor;
        self.cursor = (self.cursor + 1) % self.range.len();
        let i = (g - self.range.start) as usize;
        let first = self.positions[i];
        let names = self.keys.keys(g);
        let mut deltas: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for n in first..first + budget {
            let e = event(g, n, self.args.keys_per_group);
            let d = deltas.entry(e.key_index).or_default();
            d.0 += 1;
            d.1 += e.delta;
        }
        for (key_index, (count, sum)) in deltas {
            let key = names.name(key_index as usize);
            let key = key.as_bytes();
            let old_count = read_u64(backend, COUNTS, g, key)?;
            let old_sum = read_u64(backend, SUMS, g, key)?;
            batch.put_in_group(COUNTS, g, key, &(old_count + count).to_be_bytes())?;
            batch.put_in_group(SUMS, g, key, &(old_sum + sum).to_be_bytes())?;
        }
        let next = first + budget;
        let position = Position {
            next,
            keys_per_group: self.args.keys_per_group,
        };
        batch.put_in_group(DEFAULT_STATE, g, POSITION_KEY, &position.encode())?;
        self.positions[i] = next;
        let k = u64::from(self.args.keys_per_group);
        if self.preloading == 0 {
            self.applied += budget;
        } else if first < k && next >= k {
            self.preloading -= 1;
            if self.preloading == 0 {
                tracing::info!(
                    keys = k * u64::from(self.range.len()),
                    "preloaded: every key exists, now at --rate"
                );
                // The rate starts now: the preload owes it nothing.
                self.started = None;
            }
        }
        Ok(Step {
            events: budget,
            idle: None,
        })
    }

    /// The events the rate made due that are not applied yet (none at rate 0: unbounded).
    fn backlog(&self) -> Option<u64> {
        let started = self.started?;
        (self.args.rate > 0).then(|| self.owed(started.elapsed().as_secs_f64()))
    }
}

fn read_u64(backend: &StateBackend, state: &str, g: u32, key: &[u8]) -> Result<u64> {
    match backend.get_in_group(state, g, key)? {
        None => Ok(0),
        Some(v) => decode_u64(&v).ok_or_else(|| Error::Corrupt {
            file: backend.dir().display().to_string(),
            detail: format!(
                "value of {:?} in state {state} is not 8 bytes",
                String::from_utf8_lossy(key)
            ),
        }),
    }
}

/// Body of `regroup worker`.
pub async fn main(args: ReferenceWorkerArgs) -> Result<()> {
    let identity = args.runtime.identity()?;
    let (m, k, range) = (
        identity.max_parallelism,
        args.job.keys_per_group,
        identity.range,
    );
    let file = KeyTableFile::new(&identity.state_dir, m, k);
    let keys = match (file.as_ref().and_then(|f| f.load(range)), file) {
        (Some(keys), _) => keys,
        // Every group's keys cost the same names hashed as this range's alone.
        (None, Some(file)) => {
            let all = Arc::new(KeySpace::new(m, k));
            let own = all.of(range);
            // Off the start's path: the next start on this volume reads it.
            std::thread::spawn(move || {
                if let Err(e) = file.write(&all) {
                    tracing::warn!(error = %e, "cannot cache the key table");
                }
            });
            own
        }
        (None, None) => KeySpace::of_range(m, k, range),
    };
    let job = ReferenceJob::with_keys(args.job, range, keys);
    super::run(args.runtime, job, super::termination_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_key_table_holds_the_derived_keys_and_nothing_damaged_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (m, k) = (16, 5);
        let file = KeyTableFile::new(dir.path(), m, k).unwrap();
        let range = KeyGroupRange { start: 3, end: 9 };
        assert!(file.load(range).is_none(), "nothing written yet");
        file.write(&KeySpace::new(m, k)).unwrap();
        let derived = KeySpace::of_range(m, k, range);
        let part = KeySpace::new(m, k).of(range);
        let cached = file.load(range).expect("the written table");
        for g in range.start..=range.end {
            assert_eq!(cached.keys(g), derived.keys(g), "key group {g}");
            assert_eq!(part.keys(g), derived.keys(g), "key group {g}");
        }
        // Another K is another table; a changed byte or a short file is not read.
        assert!(
            KeyTableFile::new(dir.path(), m, k + 1)
                .unwrap()
                .load(range)
                .is_none()
        );
        let path = dir.path().join("reference-keys-m16-k5.bin");
        let good = std::fs::read(&path).unwrap();
        // A byte of key group 5's keys (header: 16 bytes and 8 per group; 20 bytes per group).
        let mut bad = good.clone();
        bad[16 + 8 * 16 + 20 * 5 + 3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(file.load(range).is_none(), "a damaged key group");
        let other = KeyGroupRange { start: 6, end: 15 };
        assert!(
            file.load(other).is_some(),
            "only the range's key groups are read"
        );
        std::fs::write(&path, &good[..good.len() - 4]).unwrap();
        assert!(file.load(range).is_none(), "a short table");
        // Too large to cache: not attempted.
        assert!(KeyTableFile::new(dir.path(), 32768, 1_000_000).is_none());
    }

    #[test]
    fn events_are_a_pure_function_of_group_and_index() {
        assert_eq!(event(3, 17, 8), event(3, 17, 8));
        let es: Vec<Event> = (0..1000).map(|n| event(5, n, 8)).collect();
        assert!(
            es.iter()
                .all(|e| e.key_index < 8 && (1..=1000).contains(&e.delta))
        );
        // Every key of the group is hit, and groups differ.
        let hit: std::collections::BTreeSet<u32> = es.iter().map(|e| e.key_index).collect();
        assert_eq!(hit.len(), 8);
        assert_ne!(
            (0..50).map(|n| event(5, n, 8)).collect::<Vec<_>>(),
            (0..50).map(|n| event(6, n, 8)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn key_space_keys_hash_to_their_group() {
        for (m, k) in [(128, 8), (4096, 2), (7, 3)] {
            let ks = KeySpace::new(m, k);
            for g in 0..m {
                assert_eq!(ks.keys(g).len(), k as usize);
                for key in ks.keys(g).names() {
                    assert_eq!(key_group_for_key(key.as_bytes(), m), g);
                }
            }
        }
    }

    #[test]
    fn position_round_trip() {
        let p = Position {
            next: 123_456_789,
            keys_per_group: 8,
        };
        assert_eq!(Position::decode(&p.encode()), Some(p));
        assert_eq!(Position::decode(b"short"), None);
    }

    fn args(rate: u64) -> ReferenceJobArgs {
        ReferenceJobArgs {
            rate,
            keys_per_group: 4,
            events_per_step: 16,
            preload: false,
        }
    }

    #[test]
    fn preload_creates_every_key_then_keeps_to_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::for_subtask(16, 2, 0).unwrap();
        let k = 450;
        let args = ReferenceJobArgs {
            keys_per_group: k,
            preload: true,
            ..args(1)
        };
        let mut job = ReferenceJob::new(args, 16, range);
        let backend = StateBackend::open(dir.path(), 16, range, &[COUNTS, SUMS]).unwrap();
        job.open(&backend).unwrap();
        assert_eq!(job.preloading, range.len());
        // At 1 event/s the preload alone makes progress: whole steps, no waits.
        while job.preloading > 0 {
            let mut batch = backend.batch();
            let s = job.step(&backend, &mut batch).unwrap();
            assert!(s.idle.is_none() && s.events > 0);
            batch.commit().unwrap();
        }
        let keys = KeySpace::of_range(16, k, range);
        for g in range.iter() {
            for key in keys.keys(g).names() {
                assert!(
                    backend
                        .get_in_group(COUNTS, g, key.as_bytes())
                        .unwrap()
                        .is_some(),
                    "{key} of key group {g} missing after the preload"
                );
            }
        }
        // Then the rate applies again: nothing is owed right after the preload.
        let mut batch = backend.batch();
        assert!(job.step(&backend, &mut batch).unwrap().events <= 1);
    }

    #[test]
    fn key_names_count_up_in_decimal() {
        let mut name = KeyName::at(0);
        for c in 0..120_000u64 {
            assert_eq!(name.as_bytes(), format!("key-{c}").as_bytes());
            name.advance();
        }
    }

    #[test]
    fn a_key_space_holds_the_first_names_of_each_group() {
        // The definition, written out: the first K names key-<c> hashing into each group. M·K
        // spans several rounds of chunks on up to 8 threads.
        let (m, k) = (64, 20_000);
        let range = KeyGroupRange { start: 9, end: 12 };
        let mut expected: Vec<Vec<String>> = vec![Vec::new(); range.len() as usize];
        let mut c = 0u64;
        while expected.iter().any(|keys| keys.len() < k as usize) {
            let name = format!("key-{c}");
            let g = key_group_for_key(name.as_bytes(), m);
            if range.contains(g) && expected[(g - range.start) as usize].len() < k as usize {
                expected[(g - range.start) as usize].push(name);
            }
            c += 1;
        }
        let keys = KeySpace::of_range(m, k, range);
        for g in range.start..=range.end {
            let names: Vec<String> = keys.keys(g).names().collect();
            assert_eq!(names, expected[(g - range.start) as usize], "group {g}");
        }
    }

    #[test]
    fn a_range_key_space_holds_the_same_keys() {
        let all = KeySpace::new(16, 5);
        let range = KeyGroupRange::new(5, 9).unwrap();
        let part = KeySpace::of_range(16, 5, range);
        for g in range.iter() {
            assert_eq!(part.keys(g), all.keys(g));
        }
    }

    #[test]
    fn steps_produce_the_expected_state_and_positions() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::for_subtask(16, 2, 1).unwrap();
        let mut job = ReferenceJob::new(args(0), 16, range);
        let backend = StateBackend::open(dir.path(), 16, range, &[COUNTS, SUMS]).unwrap();
        job.open(&backend).unwrap();
        for _ in 0..37 {
            let mut batch = backend.batch();
            let s = job.step(&backend, &mut batch).unwrap();
            assert_eq!(s.events, 16);
            batch.commit().unwrap();
        }
        let keys = KeySpace::new(16, 4);
        let positions = backend.scan(DEFAULT_STATE).unwrap();
        assert_eq!(positions.len(), range.len() as usize);
        let total: u64 = positions
            .iter()
            .map(|(_, _, v)| Position::decode(v).unwrap().next)
            .sum();
        assert_eq!(total, 37 * 16);
        for (g, _, v) in positions {
            let next = Position::decode(&v).unwrap().next;
            let expected = expected_state(&keys, g, next);
            for (key, (count, sum)) in expected {
                let got_c = backend
                    .get_in_group(COUNTS, g, key.as_bytes())
                    .unwrap()
                    .unwrap();
                let got_s = backend
                    .get_in_group(SUMS, g, key.as_bytes())
                    .unwrap()
                    .unwrap();
                assert_eq!(decode_u64(&got_c), Some(count));
                assert_eq!(decode_u64(&got_s), Some(sum));
            }
        }
    }

    #[test]
    fn reopen_continues_and_refuses_other_key_counts_and_partial_state() {
        let dir = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::for_subtask(16, 1, 0).unwrap();
        {
            let backend = StateBackend::open(dir.path(), 16, range, &[COUNTS, SUMS]).unwrap();
            let mut job = ReferenceJob::new(args(0), 16, range);
            job.open(&backend).unwrap();
            let mut batch = backend.batch();
            job.step(&backend, &mut batch).unwrap();
            batch.commit().unwrap();
            backend.flush().unwrap();
        }
        let backend = StateBackend::open(dir.path(), 16, range, &[]).unwrap();
        let mut job = ReferenceJob::new(args(0), 16, range);
        job.open(&backend).unwrap();
        assert_eq!(job.positions[0], 16);
        let mut other = ReferenceJob::new(
            ReferenceJobArgs {
                keys_per_group: 5,
                ..args(0)
            },
            16,
            range,
        );
        let e = other.open(&backend).unwrap_err();
        assert!(e.to_string().contains("keys per group"), "{e}");
        // A key group without a position (e.g. lost in a restore) is refused, not reset.
        let mut b = backend.batch();
        b.delete_in_group(DEFAULT_STATE, 9, POSITION_KEY).unwrap();
        b.commit().unwrap();
        let e = ReferenceJob::new(args(0), 16, range)
            .open(&backend)
            .unwrap_err();
        assert!(e.to_string().contains("key group 9 has none"), "{e}");
    }

    #[test]
    fn rate_limits_with_an_idle_wait() {
        let mut job = ReferenceJob::new(args(10), 16, KeyGroupRange::new(0, 15).unwrap());
        // At 10 events/s nothing is due at the very start: the job asks to wait.
        match job.budget() {
            Err(wait) => assert!(wait > Duration::ZERO),
            Ok(n) => assert!(n <= 1),
        }
    }
}
