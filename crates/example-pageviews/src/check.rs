//! Reading the job's state out of a checkpoint, and checking it against the input files.
//!
//! [`read_checkpoint`] downloads every subtask's state of a completed checkpoint (with the
//! library: [`CheckpointStore::download_handle`], [`StateBackend::open`]). [`verify`] replays
//! the input files: for each key group, the lines of each file before the key group's position
//! whose page is in that key group must give exactly the stored views and view times. With
//! `complete`, every position must also be at the end of its file: every input line counted
//! exactly once. [`totals`] is the job's output, per page.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::input;
use crate::job::{MILLIS, POSITIONS, STARTED_KEY, VIEWS};
use regroup::backend::{DEFAULT_STATE, StateBackend, scan_cf};
use regroup::checkpoint::CheckpointStore;
use regroup::error::{Error, Result};
use regroup::keygroup::{KeyGroupRange, key_group_for_key};

/// What one key group holds in a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// The subtask whose state holds it.
    pub subtask: u32,
    /// The job started this key group.
    pub started: bool,
    /// File name → offset.
    pub positions: BTreeMap<String, u64>,
    /// Page → (views, millis).
    pub pages: BTreeMap<Vec<u8>, (u64, u64)>,
}

/// The job's state in one completed checkpoint.
#[derive(Clone, Debug, Default)]
pub struct CheckpointState {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// Its parallelism.
    pub parallelism: u32,
    /// Its number of key groups.
    pub max_parallelism: u32,
    /// Every key group found, by key group.
    pub groups: BTreeMap<u32, GroupState>,
    /// What is wrong already in the stored state (a key group held twice, outside its range,
    /// malformed values).
    pub differences: Vec<String>,
}

/// Downloads checkpoint `checkpoint` (default: the newest completed one) and reads the job's
/// state from it.
pub async fn read_checkpoint(
    store: &CheckpointStore,
    checkpoint: Option<u64>,
) -> Result<CheckpointState> {
    let meta = store.checkpoint_or_latest(checkpoint).await?;
    let m = meta.max_parallelism;
    let mut out = CheckpointState {
        checkpoint_id: meta.checkpoint_id,
        parallelism: meta.parallelism,
        max_parallelism: m,
        ..Default::default()
    };
    let read = store
        .read_handles(&meta, move |dir, h| {
            read_subtask(dir, m, h.subtask, h.key_group_range)
        })
        .await?;
    for (handle, (groups, mut differences)) in meta.handles.iter().zip(read) {
        let subtask = handle.subtask;
        out.differences.append(&mut differences);
        for (g, state) in groups {
            if let Some(other) = out.groups.get(&g) {
                out.differences.push(format!(
                    "key group {g} held by subtasks {} and {subtask} (duplicated)",
                    other.subtask
                ));
            } else {
                out.groups.insert(g, state);
            }
        }
    }
    Ok(out)
}

/// Every key group in the DB at `dir` (the whole key space, so that keys outside the subtask's
/// range show up too).
fn read_subtask(
    dir: &Path,
    m: u32,
    subtask: u32,
    range: KeyGroupRange,
) -> Result<(BTreeMap<u32, GroupState>, Vec<String>)> {
    let backend = StateBackend::open(dir, m, range, &[])?;
    let db = backend.db();
    let all = KeyGroupRange::new(0, m - 1)?;
    let mut groups: BTreeMap<u32, GroupState> = BTreeMap::new();
    let mut differences = Vec::new();
    for state in backend.states() {
        let cf = db
            .cf_handle(state)
            .ok_or_else(|| Error::Other(format!("state {state} vanished")))?;
        for (g, key, value) in scan_cf(db, &cf, all, m)? {
            if !range.contains(g) {
                differences.push(format!(
                    "key group {g} found in subtask {subtask} whose range is {range}"
                ));
            }
            let group = groups.entry(g).or_insert_with(|| GroupState {
                subtask,
                ..Default::default()
            });
            let name = String::from_utf8_lossy(&key).into_owned();
            let number = <[u8; 8]>::try_from(value.as_slice()).map(u64::from_be_bytes);
            match (state.as_str(), number) {
                (DEFAULT_STATE, _) if key == STARTED_KEY => group.started = true,
                (POSITIONS, Ok(offset)) => {
                    group.positions.insert(name, offset);
                }
                (VIEWS | MILLIS, Ok(n)) => {
                    if key_group_for_key(&key, m) != g {
                        differences.push(format!(
                            "key group {g}: page {name:?} belongs to key group {}",
                            key_group_for_key(&key, m)
                        ));
                    }
                    let v = group.pages.entry(key).or_default();
                    if state == VIEWS {
                        v.0 = n;
                    } else {
                        v.1 = n;
                    }
                }
                _ => differences.push(format!(
                    "key group {g}: unexpected entry {name:?} in state {state}"
                )),
            }
        }
    }
    Ok((groups, differences))
}

/// The finding of [`verify`].
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The checkpoint verified.
    pub checkpoint_id: u64,
    /// Its parallelism.
    pub parallelism: u32,
    /// Its number of key groups.
    pub max_parallelism: u32,
    /// Pages in the state.
    pub pages: u64,
    /// Views in the state (lines counted).
    pub views: u64,
    /// View time in the state.
    pub millis: u64,
    /// Input files.
    pub files: usize,
    /// Complete non-blank lines in the input.
    pub input_lines: u64,
    /// Every difference; empty when the state is exactly right.
    pub differences: Vec<String>,
}

impl Verdict {
    /// True when no difference was found.
    pub fn ok(&self) -> bool {
        self.differences.is_empty()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = format!(
            "checkpoint {} (parallelism {})",
            self.checkpoint_id, self.parallelism
        );
        if self.ok() {
            writeln!(
                f,
                "OK: {what}: all {} key groups held exactly once and equal to their input; {} pages, {} views of {} input lines ({} files), {} millis",
                self.max_parallelism,
                self.pages,
                self.views,
                self.input_lines,
                self.files,
                self.millis
            )?;
        } else {
            writeln!(
                f,
                "FAILED: {what}: {} differences; first: {}",
                self.differences.len(),
                self.differences[0]
            )?;
            for d in self.differences.iter().skip(1).take(19) {
                writeln!(f, "  also: {d}")?;
            }
        }
        Ok(())
    }
}

/// Checks `state` against the input files in `input_dir`; with `complete`, also that every
/// line of the input is in it.
pub fn verify(state: &CheckpointState, input_dir: &Path, complete: bool) -> Result<Verdict> {
    let m = state.max_parallelism;
    let mut differences = state.differences.clone();
    let files = input::list(input_dir)?;
    // Key group → page → (views, millis) the input gives up to the key group's positions.
    let mut expected: BTreeMap<u32, BTreeMap<Vec<u8>, (u64, u64)>> = BTreeMap::new();
    let mut input_lines = 0;
    for file in &files {
        let chunk = input::read_lines(&input_dir.join(&file.name), 0, usize::MAX)?;
        let mut line_starts = std::collections::BTreeSet::from([chunk.end]);
        for (offset, line) in &chunk.lines {
            line_starts.insert(*offset);
            let Some((page, millis)) = input::parse_line(line) else {
                continue;
            };
            input_lines += 1;
            let g = key_group_for_key(page, m);
            let position = state
                .groups
                .get(&g)
                .and_then(|s| s.positions.get(&file.name))
                .copied()
                .unwrap_or(0);
            if *offset < position {
                let e = expected
                    .entry(g)
                    .or_default()
                    .entry(page.to_vec())
                    .or_default();
                e.0 += 1;
                e.1 += millis;
            }
        }
        for (g, s) in &state.groups {
            let position = s.positions.get(&file.name).copied().unwrap_or(0);
            if !line_starts.contains(&position) {
                differences.push(format!(
                    "key group {g}: position {position} in {} is not at the start of a line (the file's complete lines end at {})",
                    file.name, chunk.end
                ));
            } else if complete && position != chunk.end {
                differences.push(format!(
                    "key group {g}: position {position} in {}, not at its end {}: input not all counted",
                    file.name, chunk.end
                ));
            }
        }
    }
    for g in 0..m {
        let Some(s) = state.groups.get(&g) else {
            differences.push(format!("key group {g} lost: no subtask holds it"));
            continue;
        };
        if !s.started {
            differences.push(format!(
                "key group {g} in subtask {} has state but no start mark",
                s.subtask
            ));
        }
        for name in s.positions.keys() {
            if !files.iter().any(|f| &f.name == name) {
                differences.push(format!(
                    "key group {g}: position in {name}, which is not in the input"
                ));
            }
        }
        let want = expected.remove(&g).unwrap_or_default();
        for (page, (views, millis)) in &want {
            let got = s.pages.get(page).copied();
            if got != Some((*views, *millis)) {
                differences.push(format!(
                    "key group {g}, page {:?} in subtask {}: {}; its input lines give {views} views, {millis} millis",
                    String::from_utf8_lossy(page),
                    s.subtask,
                    got.map_or("absent".into(), |(v, ms)| format!("{v} views, {ms} millis"))
                ));
            }
        }
        for page in s.pages.keys().filter(|p| !want.contains_key(*p)) {
            differences.push(format!(
                "key group {g}, page {:?} in subtask {}: present, but no input line before its positions names it",
                String::from_utf8_lossy(page),
                s.subtask
            ));
        }
    }
    let pages = state.groups.values().map(|s| s.pages.len() as u64).sum();
    let (views, millis) = state
        .groups
        .values()
        .flat_map(|s| s.pages.values())
        .fold((0, 0), |(v, ms), (a, b)| (v + a, ms + b));
    Ok(Verdict {
        checkpoint_id: state.checkpoint_id,
        parallelism: state.parallelism,
        max_parallelism: m,
        pages,
        views,
        millis,
        files: files.len(),
        input_lines,
        differences,
    })
}

/// The job's output: page → (views, millis), over all key groups.
pub fn totals(state: &CheckpointState) -> BTreeMap<Vec<u8>, (u64, u64)> {
    state
        .groups
        .values()
        .flat_map(|s| s.pages.iter().map(|(p, v)| (p.clone(), *v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 4;

    /// A state holding `lines` of file `a.log` fully, built by hand.
    fn state_of(lines: &[&str], end: u64) -> CheckpointState {
        let mut s = CheckpointState {
            checkpoint_id: 1,
            parallelism: 1,
            max_parallelism: M,
            ..Default::default()
        };
        for g in 0..M {
            s.groups.insert(
                g,
                GroupState {
                    started: true,
                    positions: [("a.log".to_owned(), end)].into(),
                    ..Default::default()
                },
            );
        }
        for line in lines {
            let (page, millis) = input::parse_line(line.as_bytes()).unwrap();
            let g = key_group_for_key(page, M);
            let v = s
                .groups
                .get_mut(&g)
                .unwrap()
                .pages
                .entry(page.to_vec())
                .or_default();
            v.0 += 1;
            v.1 += millis;
        }
        s
    }

    #[test]
    fn verify_accepts_the_exact_state_and_names_each_kind_of_difference() {
        let input = tempfile::tempdir().unwrap();
        let text = "/a 1\n/b 2\n/a 3\n/c 4\n";
        std::fs::write(input.path().join("a.log"), text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let exact = state_of(&lines, text.len() as u64);
        let v = verify(&exact, input.path(), true).unwrap();
        assert!(v.ok(), "{v}");
        assert_eq!((v.views, v.millis, v.input_lines), (4, 10, 4));

        // A line counted twice.
        let twice = state_of(&[lines.clone(), vec!["/b 2"]].concat(), text.len() as u64);
        let v = verify(&twice, input.path(), true).unwrap();
        assert!(!v.ok() && v.differences[0].contains("\"/b\""), "{v}");

        // A line lost: counted nowhere although the positions are past it.
        let lost = state_of(&lines[1..], text.len() as u64);
        assert!(!verify(&lost, input.path(), true).unwrap().ok());

        // Positions not at the end: fine as a checkpoint, not as complete.
        let partial = state_of(&lines[..2], 10);
        assert!(verify(&partial, input.path(), false).unwrap().ok());
        let v = verify(&partial, input.path(), true).unwrap();
        assert!(v.differences[0].contains("input not all counted"), "{v}");

        // A position inside a line; a key group missing.
        let mut bad = state_of(&lines, text.len() as u64);
        bad.groups
            .get_mut(&0)
            .unwrap()
            .positions
            .insert("a.log".into(), 3);
        bad.groups.remove(&1);
        let v = verify(&bad, input.path(), false).unwrap();
        let all = v.differences.join("\n");
        assert!(all.contains("not at the start of a line"), "{all}");
        assert!(all.contains("key group 1 lost"), "{all}");
    }
}
