//! The restores' progress as status shows it (pure): from the reports the restores of an
//! epoch wrote to the store (`checkpoint::progress`), one line for `kubectl get sj` and a
//! bounded per-subtask list.

use super::crd::{RestoreProgressStatus, SubtaskProgress};
use crate::checkpoint::progress::{RestorePhase, RestoreProgress};

/// Subtasks listed at most: status stays small at any parallelism.
const LISTED: usize = 32;

/// The progress of the `parallelism` new subtasks, given their `reports` (a subtask without
/// one has not started, or restores nothing).
pub fn summarize(reports: &[RestoreProgress], parallelism: u32) -> RestoreProgressStatus {
    let mut subtasks: Vec<SubtaskProgress> = (0..parallelism)
        .map(
            |subtask| match reports.iter().find(|r| r.subtask == subtask) {
                Some(r) => SubtaskProgress {
                    subtask,
                    phase: format!("{:?}", r.phase),
                    bytes_done: r.bytes_done,
                    bytes_total: r.bytes_total,
                },
                None => SubtaskProgress {
                    subtask,
                    phase: "Waiting".to_owned(),
                    ..Default::default()
                },
            },
        )
        .collect();
    let done_phase = format!("{:?}", RestorePhase::Done);
    let done = subtasks.iter().filter(|s| s.phase == done_phase).count();
    let bytes_done: u64 = subtasks.iter().map(|s| s.bytes_done).sum();
    let bytes_total: u64 = subtasks.iter().map(|s| s.bytes_total).sum();
    let percent = match bytes_done.saturating_mul(100).checked_div(bytes_total) {
        Some(p) => p,
        None if done as u32 == parallelism => 100,
        None => 0,
    };
    let summary = format!(
        "{done}/{parallelism} restored, {percent}% of {}",
        human_bytes(bytes_total)
    );
    // Unfinished first, then by subtask.
    subtasks.sort_by_key(|s| (s.phase == done_phase, s.subtask));
    subtasks.truncate(LISTED);
    RestoreProgressStatus { summary, subtasks }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(subtask: u32, phase: RestorePhase, done: u64, total: u64) -> RestoreProgress {
        RestoreProgress {
            format_version: 2,
            subtask,
            phase,
            bytes_done: done,
            bytes_total: total,
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn sums_the_reports_and_lists_the_unfinished_first() {
        let reports = [
            report(0, RestorePhase::Done, 1024 * 1024, 1024 * 1024),
            report(2, RestorePhase::Downloading, 0, 3 * 1024 * 1024),
        ];
        let p = summarize(&reports, 3);
        assert_eq!(p.summary, "1/3 restored, 25% of 4.0 MiB");
        let order: Vec<(u32, &str)> = p
            .subtasks
            .iter()
            .map(|s| (s.subtask, s.phase.as_str()))
            .collect();
        assert_eq!(order, [(1, "Waiting"), (2, "Downloading"), (0, "Done")]);
    }

    #[test]
    fn the_list_is_bounded() {
        let p = summarize(&[], 500);
        assert_eq!(p.subtasks.len(), LISTED);
        assert_eq!(p.summary, "0/500 restored, 0% of 0 B");
    }
}
