//! `regroup-bench restore` at a small scale: it runs every rescale scenario, checks each
//! restored DB's keys itself, and sets up kept volumes as a stopping worker leaves them — with a
//! marker of this boot, or of another boot whose files were synced before it, no reused file
//! is read back; with one of another boot whose files were not, every one is. `copy` against
//! `ingest` is measured in rounds too.

mod support;

/// The bytes after `label` in `line` (e.g. "reused locally" → 1234), when there.
fn bytes_after(line: &str, label: &str) -> Option<u64> {
    let rest = &line[line.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Runs `regroup-bench restore --keys 5000` with `args`; returns its report, after checking
/// that it succeeded.
fn bench(args: &[&str]) -> String {
    support::run_bench(&[&["restore", "--keys", "5000"], args].concat())
}

#[test]
fn bench_restore_sets_up_kept_volumes_with_markers_of_this_boot_and_of_others() {
    let stdout = bench(&["--rescales-only", "--rounds", "2"]);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("downloaded") && l.contains("read back"))
        .collect();
    // 2→1, 4→3, 1→2, 3→4: 10 new subtasks, each kept, kept of another boot, kept read back,
    // and fresh.
    assert_eq!(rows.len(), 40, "{stdout}");
    let (mut vouched, mut another_boot, mut read_back) = (0, 0, 0);
    for row in rows {
        let reused = bytes_after(row, "reused locally").unwrap();
        let back = bytes_after(row, "(read back").unwrap();
        // Two rounds: the median's spread is printed.
        assert!(row.contains('['), "{row}");
        if row.contains("kept, read back") {
            assert_eq!(back, reused, "{row}");
            read_back += usize::from(reused > 0);
        } else {
            assert_eq!(back, 0, "{row}");
            if row.contains("kept, another boot") {
                another_boot += usize::from(reused > 0);
            } else {
                vouched += usize::from(row.contains("kept,") && reused > 0);
            }
        }
        if row.contains("fresh") {
            assert_eq!(reused, 0, "{row}");
        }
    }
    // Every new subtask below the old parallelism reused its old volume: 1 + 3 + 1 + 3.
    assert_eq!((vouched, another_boot, read_back), (8, 8, 8), "{stdout}");
    assert!(stdout.contains("targets:"), "{stdout}");
}

#[test]
fn bench_restore_measures_copy_against_ingest_in_rounds() {
    let stdout = bench(&["--rounds", "3"]);
    assert!(
        stdout.contains("copy against ingest (3 round(s)"),
        "{stdout}"
    );
    // Scale-in: copy, ingest and the raw cp; scale-out: copy, ingest and ingest compacted for
    // each of the two new subtasks. Each gives the median of its three rounds and their spread.
    let measured: Vec<&str> = stdout
        .lines()
        .take_while(|l| !l.starts_with("rescales"))
        .filter(|l| l.contains("downloaded") || l.contains("raw cp of the same bytes"))
        .collect();
    assert_eq!(measured.len(), 9, "{stdout}");
    for line in measured {
        let (median, rest) = line
            .split_once("s [")
            .unwrap_or_else(|| panic!("no spread in {line}"));
        let median: f64 = median.rsplit(' ').next().unwrap().parse().unwrap();
        let (min, max) = rest.split_once(']').unwrap().0.split_once('–').unwrap();
        let (min, max): (f64, f64) = (min.parse().unwrap(), max.parse().unwrap());
        assert!(min <= median && median <= max, "{line}");
    }
    for ratio in [
        "scale-in: ingest is ",
        "scale-in: ingest takes ",
        "scale-out subtask 0: ingest is ",
        "scale-out subtask 1: ingest is ",
    ] {
        assert!(stdout.contains(ratio), "{ratio} missing: {stdout}");
    }
}
