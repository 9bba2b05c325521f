//! The oracle behind `regroup verify`: downloads every subtask's state of a completed checkpoint
//! of the reference job and checks it against a recomputation from the pure event function.
//!
//! For every key group of `[0, M)`: exactly one subtask holds its position, inside that
//! subtask's range, and its state equals exactly what events `0..position` produce — no key
//! lost, none duplicated, none in the wrong subtask, no value off.

use std::collections::BTreeMap;
use std::fmt;

use clap::Args;

use super::reference::{
    COUNTS, KeySpace, POSITION_KEY, Position, SUMS, decode_u64, expected_state,
};
use crate::args::StoreArgs;
use crate::backend::{DEFAULT_STATE, StateBackend, scan_cf};
use crate::checkpoint::CheckpointStore;
use crate::error::{Error, Result};
use crate::keygroup::{KeyGroupRange, key_group_for_key};

/// `regroup verify`
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Checkpoint store and job.
    #[command(flatten)]
    pub store: StoreArgs,
    /// The completed checkpoint to verify (default: the newest completed one).
    #[arg(long)]
    pub checkpoint: Option<u64>,
}

/// What one subtask's state holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubtaskCounts {
    /// Subtask index.
    pub subtask: u32,
    /// Its key group range.
    pub range: Option<KeyGroupRange>,
    /// Distinct keys in the `counts` state.
    pub keys: u64,
    /// Key groups with a position.
    pub key_groups: u64,
    /// Events applied: the sum of the positions.
    pub events: u64,
}

/// The oracle's finding.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The checkpoint verified.
    pub checkpoint_id: u64,
    /// Its parallelism.
    pub parallelism: u32,
    /// Its number of key groups.
    pub max_parallelism: u32,
    /// Per-subtask counts.
    pub subtasks: Vec<SubtaskCounts>,
    /// Every difference found, in key-group order; empty when the state is exactly right.
    pub differences: Vec<String>,
}

impl Verdict {
    /// True when no difference was found.
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }

    /// Events over all subtasks.
    pub fn events(&self) -> u64 {
        self.subtasks.iter().map(|s| s.events).sum()
    }

    /// Keys over all subtasks.
    pub fn keys(&self) -> u64 {
        self.subtasks.iter().map(|s| s.keys).sum()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok() {
            writeln!(
                f,
                "OK: checkpoint {} (parallelism {}): all {} key groups held exactly once and equal to their replayed events; {} keys, {} events",
                self.checkpoint_id,
                self.parallelism,
                self.max_parallelism,
                self.keys(),
                self.events()
            )?;
        } else {
            writeln!(
                f,
                "FAILED: checkpoint {} (parallelism {}): {} differences; first: {}",
                self.checkpoint_id,
                self.parallelism,
                self.differences.len(),
                self.differences[0]
            )?;
        }
        for s in &self.subtasks {
            let range = s.range.map_or("?".to_owned(), |r| r.to_string());
            writeln!(
                f,
                "  subtask {:>4}  key groups {:<14} {:>6} key groups  {:>9} keys  {:>12} events",
                s.subtask, range, s.key_groups, s.keys, s.events
            )?;
        }
        for d in self.differences.iter().skip(1).take(19) {
            writeln!(f, "  also: {d}")?;
        }
        Ok(())
    }
}

/// What one key group holds in one subtask's state.
#[derive(Debug, Default)]
struct GroupState {
    position: Option<Position>,
    counts: BTreeMap<String, u64>,
    sums: BTreeMap<String, u64>,
}

/// Verifies checkpoint `checkpoint` (default: the newest completed one) of the reference job.
pub async fn verify(store: &CheckpointStore, checkpoint: Option<u64>) -> Result<Verdict> {
    let meta = store.checkpoint_or_latest(checkpoint).await?;
    let m = meta.max_parallelism;
    let read = store
        .read_handles(&meta, move |dir, h| read_state(dir, m, h.key_group_range))
        .await?;
    let mut differences = Vec::new();
    let mut subtasks = Vec::new();
    // Key group → (subtask, its state); a second holder is a difference.
    let mut groups: BTreeMap<u32, (u32, GroupState)> = BTreeMap::new();
    for (handle, per_group) in meta.handles.iter().zip(read) {
        let range = handle.key_group_range;
        let mut counts = SubtaskCounts {
            subtask: handle.subtask,
            range: Some(range),
            ..Default::default()
        };
        for (g, (state, mut diffs)) in per_group {
            differences.append(&mut diffs);
            if !range.contains(g) {
                differences.push(format!(
                    "key group {g} found in subtask {} whose range is {range}",
                    handle.subtask
                ));
            }
            counts.keys += state.counts.len() as u64;
            if let Some(p) = state.position {
                counts.key_groups += 1;
                counts.events += p.next;
            }
            match groups.get(&g) {
                Some((other, _)) => differences.push(format!(
                    "key group {g} held by subtasks {other} and {} (duplicated)",
                    handle.subtask
                )),
                None => {
                    groups.insert(g, (handle.subtask, state));
                }
            }
        }
        subtasks.push(counts);
    }
    let keys_per_group = groups
        .values()
        .find_map(|(_, s)| s.position.map(|p| p.keys_per_group));
    let key_space = keys_per_group.map(|k| KeySpace::new(m, k));
    for g in 0..m {
        let Some((subtask, state)) = groups.get(&g) else {
            differences.push(format!("key group {g} lost: no subtask holds it"));
            continue;
        };
        let (Some(position), Some(keys)) = (state.position, key_space.as_ref()) else {
            differences.push(format!(
                "key group {g} in subtask {subtask} has state but no source position"
            ));
            continue;
        };
        if position.keys_per_group != keys.keys_per_group() {
            differences.push(format!(
                "key group {g} in subtask {subtask} was built with {} keys per group, others with {}",
                position.keys_per_group,
                keys.keys_per_group()
            ));
            continue;
        }
        differences.extend(compare_group(g, *subtask, position.next, state, keys));
    }
    differences.sort_by_key(|d| first_number_after(d, "key group "));
    Ok(Verdict {
        checkpoint_id: meta.checkpoint_id,
        parallelism: meta.parallelism,
        max_parallelism: m,
        subtasks,
        differences,
    })
}

fn first_number_after(s: &str, prefix: &str) -> u64 {
    s.find(prefix)
        .map(|i| &s[i + prefix.len()..])
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(u64::MAX)
}

/// Every key group found in the DB at `dir` (the whole key space, not only `range`, so keys
/// outside the range are seen), with differences that need no recomputation.
fn read_state(
    dir: &std::path::Path,
    m: u32,
    range: KeyGroupRange,
) -> Result<BTreeMap<u32, (GroupState, Vec<String>)>> {
    let backend = StateBackend::open(dir, m, range, &[])?;
    let db = backend.db();
    let all = KeyGroupRange {
        start: 0,
        end: m - 1,
    };
    let mut out: BTreeMap<u32, (GroupState, Vec<String>)> = BTreeMap::new();
    for state in backend.states() {
        let cf = db
            .cf_handle(state)
            .ok_or_else(|| Error::Other(format!("state {state} vanished")))?;
        for (g, key, value) in scan_cf(db, &cf, all, m)? {
            let (group, diffs) = out.entry(g).or_default();
            let name = String::from_utf8_lossy(&key).into_owned();
            match state.as_str() {
                DEFAULT_STATE if key == POSITION_KEY => match Position::decode(&value) {
                    Some(p) => group.position = Some(p),
                    None => diffs.push(format!("key group {g}: position is not 12 bytes")),
                },
                COUNTS | SUMS => {
                    if key_group_for_key(&key, m) != g {
                        diffs.push(format!(
                            "key group {g}: key {name:?} in state {state} belongs to key group {}",
                            key_group_for_key(&key, m)
                        ));
                    }
                    match decode_u64(&value) {
                        Some(v) if state == COUNTS => {
                            group.counts.insert(name, v);
                        }
                        Some(v) => {
                            group.sums.insert(name, v);
                        }
                        None => diffs.push(format!(
                            "key group {g}: value of key {name:?} in state {state} is not 8 bytes"
                        )),
                    }
                }
                _ => diffs.push(format!(
                    "key group {g}: unexpected key {name:?} in state {state}"
                )),
            }
        }
    }
    Ok(out)
}

fn compare_group(
    g: u32,
    subtask: u32,
    next: u64,
    state: &GroupState,
    keys: &KeySpace,
) -> Vec<String> {
    let expected = expected_state(keys, g, next);
    let mut diffs = Vec::new();
    for (key, (count, sum)) in &expected {
        let got = (state.counts.get(key), state.sums.get(key));
        if got != (Some(count), Some(sum)) {
            diffs.push(format!(
                "key group {g}, key {key:?} in subtask {subtask}: count {}, sum {}; events 0..{next} give count {count}, sum {sum}",
                show(got.0),
                show(got.1)
            ));
        }
    }
    for key in state.counts.keys().chain(state.sums.keys()) {
        if !expected.contains_key(key) {
            diffs.push(format!(
                "key group {g}, key {key:?} in subtask {subtask}: present, but events 0..{next} never touch it"
            ));
        }
    }
    diffs
}

fn show(v: Option<&u64>) -> String {
    v.map_or("absent".to_owned(), u64::to_string)
}

/// Body of `regroup verify`: prints the verdict; failure exit status on any difference.
pub async fn main(args: VerifyArgs) -> Result<std::process::ExitCode> {
    let store = args.store.open()?;
    let which = args
        .checkpoint
        .map_or("the latest checkpoint".to_owned(), |id| {
            format!("checkpoint {id}")
        });
    let spinner = crate::terminal::spinner(format!("reading and replaying {which}"));
    let verdict = verify(&store, args.checkpoint).await;
    spinner.finish_and_clear();
    let verdict = verdict?;
    print!("{verdict}");
    Ok(if verdict.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::IncrementalSnapshotter;
    use crate::worker::KeyedJob;
    use crate::worker::reference::{ReferenceJob, ReferenceJobArgs};

    const M: u32 = 32;

    async fn checkpoint_of(
        store: &CheckpointStore,
        parallelism: u32,
        steps: usize,
        tamper: impl Fn(u32, &StateBackend),
    ) {
        let dirs = tempfile::tempdir().unwrap();
        for subtask in 0..parallelism {
            let range = KeyGroupRange::for_subtask(M, parallelism, subtask).unwrap();
            let dir = dirs.path().join(format!("db-{subtask}"));
            let backend = StateBackend::open(&dir, M, range, &[COUNTS, SUMS]).unwrap();
            let args = ReferenceJobArgs {
                rate: 0,
                keys_per_group: 3,
                events_per_step: 7,
                preload: false,
            };
            let mut job = ReferenceJob::new(args, M, range);
            job.open(&backend).unwrap();
            for _ in 0..steps {
                let mut b = backend.batch();
                job.step(&backend, &mut b).unwrap();
                b.commit().unwrap();
            }
            tamper(subtask, &backend);
            let s = IncrementalSnapshotter::new(backend.instance_id(), subtask, parallelism, 1);
            let snap = s
                .capture(&backend, 1, &dirs.path().join("scratch"))
                .unwrap();
            s.upload(snap, store).await.unwrap();
        }
        store
            .try_complete(1, 1, parallelism, M)
            .await
            .unwrap()
            .unwrap();
    }

    fn store(name: &str) -> CheckpointStore {
        CheckpointStore::from_url(&format!("memory://{name}"), "t/oracle".parse().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_correct_state_verifies() {
        let s = store("oracle-ok");
        checkpoint_of(&s, 3, 50, |_, _| {}).await;
        let v = verify(&s, None).await.unwrap();
        assert!(v.ok(), "{v}");
        assert_eq!(v.events(), 3 * 50 * 7);
        assert_eq!(
            v.subtasks.iter().map(|s| s.key_groups).sum::<u64>(),
            u64::from(M)
        );
        assert!(v.to_string().starts_with("OK: checkpoint 1"));
    }

    #[tokio::test]
    async fn a_changed_value_is_named() {
        let s = store("oracle-value");
        checkpoint_of(&s, 2, 40, |subtask, b| {
            if subtask == 1 {
                let (g, key, v) = b.scan(COUNTS).unwrap().remove(0);
                let n = decode_u64(&v).unwrap() + 1;
                b.put_in_group(COUNTS, g, &key, &n.to_be_bytes()).unwrap();
            }
        })
        .await;
        let v = verify(&s, Some(1)).await.unwrap();
        assert!(!v.ok());
        assert!(v.differences[0].contains("key \"key-"), "{v}");
        assert!(v.to_string().starts_with("FAILED"), "{v}");
    }

    #[tokio::test]
    async fn a_lost_key_group_is_found() {
        let s = store("oracle-lost");
        checkpoint_of(&s, 2, 40, |subtask, b| {
            if subtask == 0 {
                let mut batch = b.batch();
                for (g, key, _) in b
                    .scan(DEFAULT_STATE)
                    .unwrap()
                    .into_iter()
                    .filter(|(g, ..)| *g == 3)
                {
                    batch.delete_in_group(DEFAULT_STATE, g, &key).unwrap();
                }
                for state in [COUNTS, SUMS] {
                    for (g, key, _) in b.scan(state).unwrap().into_iter().filter(|(g, ..)| *g == 3)
                    {
                        batch.delete_in_group(state, g, &key).unwrap();
                    }
                }
                batch.commit().unwrap();
            }
        })
        .await;
        let v = verify(&s, None).await.unwrap();
        assert_eq!(
            v.differences,
            vec!["key group 3 lost: no subtask holds it".to_owned()],
            "{v}"
        );
    }

    #[tokio::test]
    async fn a_dropped_event_is_found() {
        let s = store("oracle-event");
        checkpoint_of(&s, 1, 30, |_, b| {
            // Claim one more event than the state holds.
            let (g, key, v) = b.scan(DEFAULT_STATE).unwrap().remove(5);
            let mut p = Position::decode(&v).unwrap();
            p.next += 1;
            b.put_in_group(DEFAULT_STATE, g, &key, &p.encode()).unwrap();
        })
        .await;
        let v = verify(&s, None).await.unwrap();
        assert_eq!(v.differences.len(), 1, "{v}");
        assert!(v.differences[0].starts_with("key group 5, key"), "{v}");
    }
}
