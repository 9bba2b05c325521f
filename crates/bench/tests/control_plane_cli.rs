//! `regroup-bench control-plane` at a small size: it runs, and prints every measurement with
//! its target and whether it is met (not the times: no test asserts on them).

mod support;

#[test]
fn bench_control_plane_prints_every_measurement_with_its_target() {
    let stdout = support::run_bench(&[
        "control-plane",
        "--max-parallelism",
        "256",
        "--parallelism",
        "16",
        "--files-per-handle",
        "8",
        "--retain",
        "2",
        "--rounds",
        "2",
    ]);
    let measured: Vec<&str> = stdout.lines().filter(|l| l.contains("target ≤")).collect();
    for line in &measured {
        assert!(
            line.ends_with(": met") || line.ends_with(": NOT met"),
            "{line}"
        );
    }
    for (start, count) in [
        ("metadata: _metadata.json of 16 handles", 1),
        ("plan 16→15 ", 1),
        ("plan 16→17 ", 1),
        ("plan 16→8 ", 1),
        ("plan 8→16 ", 1),
        (
            "file store: checkpoint completion (try_complete: 16 handles",
            1,
        ),
        (
            "file store: completion poll while a handle is missing (15 of 16",
            1,
        ),
        (
            "file store: garbage collection after a checkpoint (retain 2",
            1,
        ),
        ("file store: restore progress (16 reports", 1),
        ("status: RollingForward 15→16", 1),
        ("status: Running (16 ready workers", 1),
    ] {
        let found = measured.iter().filter(|l| l.starts_with(start)).count();
        assert_eq!(found, count, "{start}: {stdout}");
    }
    assert_eq!(measured.len(), 11, "{stdout}");
    let met = measured.iter().filter(|l| l.ends_with(": met")).count();
    assert!(
        stdout.contains(&format!("targets: {met} of 11 met")),
        "{stdout}"
    );
    // What a user runs by hand is measured without a target.
    let by_hand: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with(", no target"))
        .collect();
    assert_eq!(by_hand.len(), 1, "{stdout}");
    assert!(
        by_hand[0].starts_with("file store: garbage collection listing every object"),
        "{stdout}"
    );
    // Both kinds of garbage collection deleted what the newest two checkpoints do not use; the
    // operator's left nothing a listing would have deleted.
    for gc in stdout.lines().filter(|l| l.contains("garbage collection")) {
        assert!(!gc.contains(" 0 deleted a round"), "{gc}");
    }
    assert!(
        measured
            .iter()
            .any(|l| l.contains("of shared/ listed, 0 left for a listing,")),
        "{stdout}"
    );
}
