//! The keyed job: per page, views and view time, from the input directory's files.
//!
//! Every worker reads every input file and applies only the lines whose page falls into one of
//! its key groups. Its source positions are kept **per key group and file** (state
//! [`POSITIONS`]: in key group `g`, key = file name, value = byte offset): every line of the file
//! before that offset whose page is in `g` is in the state, none after it. A step writes the
//! state it changed and the new positions in one batch, so a checkpoint holds both or neither.
//!
//! Why per key group: a rescale moves key groups between workers, and their state with them.
//! A worker that receives key groups from two old workers gets each group's own position with
//! it, and so resumes each group exactly where its state ends. A position per worker would not
//! survive the move: the new worker could not tell which lines its new groups already hold.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tracing::warn;

use crate::input::{self, InputFile};
use regroup::backend::{DEFAULT_STATE, StateBackend, StateBatch};
use regroup::error::{Error, Result};
use regroup::keygroup::{KeyGroupRange, key_group_for_key};
use regroup::worker::{KeyedJob, Step};

/// Named state: views per page (u64, big-endian).
pub const VIEWS: &str = "views";
/// Named state: total view time per page in milliseconds (u64, big-endian).
pub const MILLIS: &str = "millis";
/// Named state: per key group, file name → byte offset (u64, big-endian) up to which the key
/// group's lines are in the state.
pub const POSITIONS: &str = "positions";
/// Key in every key group (`default` state) written when the job first starts: a key group
/// without it after a restore was lost, and is not silently started from scratch.
pub const STARTED_KEY: &[u8] = b"pageviews-started";

/// How long a step waits when no input is pending.
const IDLE: Duration = Duration::from_millis(200);

/// The job's own settings.
#[derive(Args, Debug, Clone)]
pub struct PageViewsArgs {
    /// Directory of input files (in a pod, a volume mounted read-only).
    #[arg(long, env = "PAGEVIEWS_INPUT")]
    pub input: PathBuf,
    /// Lines read per step (one write batch: two entries per page touched plus one position
    /// per owned key group).
    #[arg(long, env = "PAGEVIEWS_LINES_PER_STEP", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub lines_per_step: u32,
}

/// Progress in one input file.
#[derive(Debug)]
struct FileProgress {
    /// Per owned key group (index `g - range.start`), the offset its lines are applied to.
    positions: Vec<u64>,
    /// Length when last listed.
    len: u64,
    /// Length at which a read found no complete line (nothing to do until the file grows).
    stalled_at: Option<u64>,
}

impl FileProgress {
    fn new(groups: usize) -> Self {
        Self {
            positions: vec![0; groups],
            len: 0,
            stalled_at: None,
        }
    }

    /// Where reading resumes: the lowest position of any owned key group.
    fn cursor(&self) -> u64 {
        self.positions.iter().copied().min().unwrap_or(0)
    }

    fn pending(&self) -> bool {
        self.cursor() < self.len && self.stalled_at != Some(self.len)
    }
}

/// The page-views job of one subtask.
pub struct PageViews {
    args: PageViewsArgs,
    max_parallelism: u32,
    range: KeyGroupRange,
    files: BTreeMap<String, FileProgress>,
    /// The file read last (files take turns).
    last: Option<String>,
}

impl PageViews {
    /// The job for the key groups `range` of `max_parallelism`.
    pub fn new(args: PageViewsArgs, max_parallelism: u32, range: KeyGroupRange) -> Self {
        Self {
            args,
            max_parallelism,
            range,
            files: BTreeMap::new(),
            last: None,
        }
    }

    fn groups(&self) -> usize {
        self.range.len() as usize
    }

    /// Lists the input directory again: new files, new lengths.
    fn rescan(&mut self) -> Result<()> {
        let groups = self.groups();
        for InputFile { name, len } in input::list(&self.args.input)? {
            let progress = self
                .files
                .entry(name.clone())
                .or_insert_with(|| FileProgress::new(groups));
            if len < progress.cursor() {
                if progress.stalled_at != Some(len) {
                    warn!(file = %name, len, position = progress.cursor(), "input file shrank: ignored until it grows again (input files must only grow)");
                }
                progress.stalled_at = Some(len);
            }
            progress.len = len;
        }
        Ok(())
    }

    /// The next file with input pending, after the one read last.
    fn next_pending(&self) -> Option<String> {
        let after = self.last.as_deref().unwrap_or("");
        let later = self
            .files
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded));
        later
            .chain(self.files.iter())
            .find(|(_, p)| p.pending())
            .map(|(n, _)| n.clone())
    }
}

fn decode_u64(bytes: &[u8], what: impl FnOnce() -> String) -> Result<u64> {
    let b: [u8; 8] = bytes.try_into().map_err(|_| Error::Corrupt {
        file: "state".into(),
        detail: format!("{} is not 8 bytes", what()),
    })?;
    Ok(u64::from_be_bytes(b))
}

fn read_u64(backend: &StateBackend, state: &str, g: u32, key: &[u8]) -> Result<u64> {
    match backend.get_in_group(state, g, key)? {
        None => Ok(0),
        Some(v) => decode_u64(&v, || {
            format!(
                "value of {:?} in state {state}",
                String::from_utf8_lossy(key)
            )
        }),
    }
}

impl KeyedJob for PageViews {
    fn states(&self) -> Vec<String> {
        vec![VIEWS.into(), MILLIS.into(), POSITIONS.into()]
    }

    fn open(&mut self, backend: &StateBackend) -> Result<()> {
        // Every owned key group was started, or none (a first start).
        let started: Vec<u32> = backend
            .scan(DEFAULT_STATE)?
            .into_iter()
            .filter(|(_, k, _)| k == STARTED_KEY)
            .map(|(g, _, _)| g)
            .collect();
        if started.is_empty() {
            let mut batch = backend.batch();
            for g in self.range.iter() {
                batch.put_in_group(DEFAULT_STATE, g, STARTED_KEY, b"1")?;
            }
            batch.commit()?;
        } else if started.len() != self.groups() {
            let missing = self
                .range
                .iter()
                .find(|g| !started.contains(g))
                .expect("some key group is missing");
            return Err(Error::Corrupt {
                file: backend.dir().display().to_string(),
                detail: format!(
                    "the restored state holds {} of the {} key groups of {}; key group {missing} is missing (lost in the restore?)",
                    started.len(),
                    self.groups(),
                    self.range
                ),
            });
        }
        let groups = self.groups();
        for (g, file, value) in backend.scan(POSITIONS)? {
            let name = String::from_utf8(file).map_err(|e| Error::Corrupt {
                file: backend.dir().display().to_string(),
                detail: format!("a position's file name is not UTF-8: {e}"),
            })?;
            let offset = decode_u64(&value, || format!("position of {name} in key group {g}"))?;
            self.files
                .entry(name)
                .or_insert_with(|| FileProgress::new(groups))
                .positions[(g - self.range.start) as usize] = offset;
        }
        self.rescan()
    }

    fn step(&mut self, backend: &StateBackend, batch: &mut StateBatch<'_>) -> Result<Step> {
        let name = match self.next_pending() {
            Some(n) => n,
            None => {
                self.rescan()?;
                match self.next_pending() {
                    Some(n) => n,
                    None => {
                        return Ok(Step {
                            events: 0,
                            idle: Some(IDLE),
                        });
                    }
                }
            }
        };
        self.last = Some(name.clone());
        let (m, range) = (self.max_parallelism, self.range);
        let progress = self.files.get_mut(&name).expect("a listed file");
        let chunk = input::read_lines(
            &self.args.input.join(&name),
            progress.cursor(),
            self.args.lines_per_step as usize,
        )?;
        if chunk.lines.is_empty() {
            // Only an unterminated line: wait until the file grows.
            progress.stalled_at = Some(progress.len);
            return Ok(Step::default());
        }
        // Changes per (key group, page): views and millis.
        let mut deltas: BTreeMap<(u32, &[u8]), (u64, u64)> = BTreeMap::new();
        for (offset, line) in &chunk.lines {
            let Some((page, millis)) = input::parse_line(line) else {
                continue;
            };
            let g = key_group_for_key(page, m);
            // Not ours, or in the state already (a key group that was further on this file
            // when it joined this worker).
            if !range.contains(g) || *offset < progress.positions[(g - range.start) as usize] {
                continue;
            }
            let d = deltas.entry((g, page)).or_default();
            d.0 += 1;
            d.1 += millis;
        }
        let mut applied = 0;
        for ((g, page), (views, millis)) in deltas {
            let old_views = read_u64(backend, VIEWS, g, page)?;
            let old_millis = read_u64(backend, MILLIS, g, page)?;
            batch.put_in_group(VIEWS, g, page, &(old_views + views).to_be_bytes())?;
            batch.put_in_group(MILLIS, g, page, &(old_millis + millis).to_be_bytes())?;
            applied += views;
        }
        // The new positions go into the same batch as the state they describe.
        for (i, position) in progress.positions.iter_mut().enumerate() {
            if *position < chunk.end {
                *position = chunk.end;
                let g = range.start + i as u32;
                batch.put_in_group(POSITIONS, g, name.as_bytes(), &chunk.end.to_be_bytes())?;
            }
        }
        Ok(Step {
            events: applied,
            idle: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 16;

    fn job(input: &std::path::Path, range: KeyGroupRange) -> PageViews {
        PageViews::new(
            PageViewsArgs {
                input: input.to_path_buf(),
                lines_per_step: 5,
            },
            M,
            range,
        )
    }

    fn open(dir: &std::path::Path, range: KeyGroupRange) -> StateBackend {
        StateBackend::open(dir, M, range, &[VIEWS, MILLIS, POSITIONS]).unwrap()
    }

    /// Steps until the job has nothing left to read.
    fn drain(job: &mut PageViews, backend: &StateBackend) -> u64 {
        let mut events = 0;
        loop {
            let mut batch = backend.batch();
            let step = job.step(backend, &mut batch).unwrap();
            batch.commit().unwrap();
            events += step.events;
            if step.idle.is_some() {
                return events;
            }
        }
    }

    fn views(backend: &StateBackend, page: &str) -> u64 {
        read_u64(
            backend,
            VIEWS,
            backend.key_group_of(page.as_bytes()),
            page.as_bytes(),
        )
        .unwrap()
    }

    fn pages(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("/p{i}")).collect()
    }

    #[test]
    fn counts_only_owned_pages_and_resumes_from_its_positions() {
        let input = tempfile::tempdir().unwrap();
        let lines: String = pages(40).iter().map(|p| format!("{p} 10\n")).collect();
        std::fs::write(input.path().join("a.log"), &lines).unwrap();
        let state = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::for_subtask(M, 2, 0).unwrap();
        let owned = pages(40)
            .iter()
            .filter(|p| range.contains(key_group_for_key(p.as_bytes(), M)))
            .count() as u64;
        {
            let backend = open(state.path(), range);
            let mut j = job(input.path(), range);
            j.open(&backend).unwrap();
            assert_eq!(drain(&mut j, &backend), owned);
            backend.flush().unwrap();
        }
        // More input; a reopened job applies only the new lines.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(input.path().join("a.log"))
            .unwrap();
        std::io::Write::write_all(&mut f, lines.as_bytes()).unwrap();
        let backend = open(state.path(), range);
        let mut j = job(input.path(), range);
        j.open(&backend).unwrap();
        assert_eq!(drain(&mut j, &backend), owned);
        for p in pages(40) {
            let g = key_group_for_key(p.as_bytes(), M);
            if range.contains(g) {
                assert_eq!(views(&backend, &p), 2, "{p}");
            }
        }
    }

    #[test]
    fn key_groups_merged_from_different_positions_resume_each_where_it_was() {
        // Two subtasks read the same file to different offsets; their key groups are then
        // merged into one DB (what a restore does on a scale-in) and the job continues: every
        // line is counted exactly once.
        let input = tempfile::tempdir().unwrap();
        let lines: String = pages(60)
            .iter()
            .cycle()
            .take(300)
            .map(|p| format!("{p} 1\n"))
            .collect();
        std::fs::write(input.path().join("a.log"), &lines).unwrap();
        let all = KeyGroupRange::new(0, M - 1).unwrap();
        let merged_dir = tempfile::tempdir().unwrap();
        let merged = open(merged_dir.path(), all);
        for (subtask, steps) in [(0, 3), (1, 17)] {
            let range = KeyGroupRange::for_subtask(M, 2, subtask).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let backend = open(dir.path(), range);
            let mut j = job(input.path(), range);
            j.open(&backend).unwrap();
            for _ in 0..steps {
                let mut batch = backend.batch();
                j.step(&backend, &mut batch).unwrap();
                batch.commit().unwrap();
            }
            for state in [DEFAULT_STATE, VIEWS, MILLIS, POSITIONS] {
                for (g, k, v) in backend.scan(state).unwrap() {
                    merged.put_in_group(state, g, &k, &v).unwrap();
                }
            }
        }
        let mut j = job(input.path(), all);
        j.open(&merged).unwrap();
        drain(&mut j, &merged);
        for p in pages(60) {
            assert_eq!(views(&merged, &p), 5, "{p}");
        }
    }

    #[test]
    fn a_key_group_missing_from_the_restored_state_is_refused() {
        let input = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::new(0, M - 1).unwrap();
        let backend = open(state.path(), range);
        job(input.path(), range).open(&backend).unwrap();
        let mut b = backend.batch();
        b.delete_in_group(DEFAULT_STATE, 9, STARTED_KEY).unwrap();
        b.commit().unwrap();
        let e = job(input.path(), range).open(&backend).unwrap_err();
        assert!(e.to_string().contains("key group 9 is missing"), "{e}");
    }

    #[test]
    fn an_unterminated_line_waits_for_its_newline() {
        let input = tempfile::tempdir().unwrap();
        let path = input.path().join("a.log");
        std::fs::write(&path, b"/x 1\n/y 2").unwrap();
        let state = tempfile::tempdir().unwrap();
        let range = KeyGroupRange::new(0, M - 1).unwrap();
        let backend = open(state.path(), range);
        let mut j = job(input.path(), range);
        j.open(&backend).unwrap();
        assert_eq!(drain(&mut j, &backend), 1);
        std::fs::write(&path, b"/x 1\n/y 2\n").unwrap();
        assert_eq!(drain(&mut j, &backend), 1);
        assert_eq!(views(&backend, "/y"), 1);
        assert_eq!(
            read_u64(&backend, MILLIS, backend.key_group_of(b"/y"), b"/y").unwrap(),
            2
        );
    }
}
