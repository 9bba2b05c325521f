//! `spec.initialState`: where a job's state comes from when it first starts, and again when
//! `spec.restoreNonce` changes. Pure: from the spec, what status recorded and what the store
//! holds, whether the state is in place, what to import first, and which checkpoints of the
//! job's own store count from then on.
//!
//! A snapshot or another job's checkpoint is imported (copied) into the job's store under a new
//! id first (`checkpoint::import`), so the job only ever restores, checkpoints and collects
//! garbage under its own path. `since` hides older checkpoints of the store: a job started
//! empty or from an import never falls back to state from before.

use super::crd::{AppliedState, InitialState, Phase, StateSource};

/// A completed checkpoint to import, wherever it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Its job's storage URL.
    pub url: String,
    /// Its job, NAMESPACE/NAME.
    pub job: String,
    /// Its id.
    pub id: u64,
}

/// What the round does about the initial state.
#[derive(Clone, Debug, PartialEq)]
pub enum Initial {
    /// In place: restore choices see the job's checkpoints from `since` on.
    Settled {
        /// The lowest checkpoint id that counts.
        since: u64,
    },
    /// Record `applied`; import `import` first (into `applied.checkpoint`) when given, else the
    /// state is in place and, when `reset`, every running worker restarts from it.
    Apply {
        /// What to record in status.initialState.
        applied: AppliedState,
        /// What to copy into the job's store before anything restores from it.
        import: Option<Source>,
        /// A running job restarts from the new state.
        reset: bool,
    },
    /// It cannot be applied yet, with why and what to do; nothing changes meanwhile.
    Unavailable(String),
}

/// What the round needs to know.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// spec.initialState.
    pub wanted: &'a InitialState,
    /// spec.restoreNonce.
    pub nonce: Option<&'a str>,
    /// status.initialState.
    pub applied: Option<&'a AppliedState>,
    /// The recorded phase.
    pub phase: Phase,
    /// A rescale (or start, stop, restart) is in progress.
    pub rescaling: bool,
    /// The snapshot spec.initialState names, resolved (or why it cannot be used).
    pub snapshot: Option<Result<Source, String>>,
    /// Checkpoint ids of the job's store with whether they completed.
    pub store_ids: &'a [(u64, bool)],
    /// The id a new checkpoint would get.
    pub next_id: u64,
}

/// Decides what to do about the initial state (see [`Initial`]).
pub fn decide(i: &Inputs<'_>) -> Initial {
    let settled = i.applied.map_or(0, |a| a.since);
    let starting = i.phase == Phase::Pending && !i.rescaling;
    let nonce = i.nonce.map(str::to_owned);
    let needed = match i.applied {
        None => starting || nonce.is_some(),
        Some(a) => !a.ready || a.nonce != nonce,
    };
    // A reset waits for a rescale in progress to end.
    if !needed || (i.rescaling && !starting) {
        return Initial::Settled { since: settled };
    }
    let (source, import) = match i.wanted.from {
        StateSource::Latest => ("latest".to_owned(), None),
        StateSource::Empty => ("empty".to_owned(), None),
        StateSource::Snapshot => {
            let name = i.wanted.snapshot.as_deref().unwrap_or_default();
            match &i.snapshot {
                Some(Ok(s)) => (
                    format!("snapshot {name} (checkpoint {} of {})", s.id, s.job),
                    Some(s.clone()),
                ),
                Some(Err(why)) => return Initial::Unavailable(why.clone()),
                None => {
                    return Initial::Unavailable(format!(
                        "spec.initialState.snapshot {name:?} was not looked up"
                    ));
                }
            }
        }
        StateSource::Checkpoint => match &i.wanted.checkpoint {
            Some(c) => (
                format!("checkpoint {} of {} at {}", c.id, c.job, c.url),
                Some(Source {
                    url: c.url.clone(),
                    job: c.job.clone(),
                    id: c.id,
                }),
            ),
            None => {
                return Initial::Unavailable(
                    "spec.initialState.checkpoint is required with from: Checkpoint".to_owned(),
                );
            }
        },
    };
    // An import under way (recorded by an earlier round) keeps its id.
    let into = match i.applied {
        Some(a) if !a.ready && a.source == source && a.nonce == nonce => {
            a.checkpoint.unwrap_or(i.next_id)
        }
        _ => i.next_id,
    };
    let since = match i.wanted.from {
        StateSource::Latest => settled,
        StateSource::Empty => i.next_id,
        StateSource::Snapshot | StateSource::Checkpoint => into,
    };
    let ready = import.is_none() || i.store_ids.contains(&(into, true));
    Initial::Apply {
        applied: AppliedState {
            source,
            nonce,
            checkpoint: import.as_ref().map(|_| into),
            since,
            ready,
        },
        import: import.filter(|_| !ready),
        reset: ready && !starting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::CheckpointSource;

    fn inputs<'a>(wanted: &'a InitialState, store_ids: &'a [(u64, bool)]) -> Inputs<'a> {
        Inputs {
            wanted,
            nonce: None,
            applied: None,
            phase: Phase::Pending,
            rescaling: false,
            snapshot: None,
            store_ids,
            next_id: 10,
        }
    }

    #[test]
    fn latest_is_todays_behaviour_and_settles_at_once() {
        let wanted = InitialState::default();
        let Initial::Apply {
            applied,
            import,
            reset,
        } = decide(&inputs(&wanted, &[(9, true)]))
        else {
            panic!()
        };
        assert_eq!(
            (applied.since, applied.ready, import, reset),
            (0, true, None, false)
        );
        let again = Inputs {
            applied: Some(&applied),
            phase: Phase::Running,
            ..inputs(&wanted, &[])
        };
        assert_eq!(decide(&again), Initial::Settled { since: 0 });
    }

    #[test]
    fn empty_hides_every_older_checkpoint() {
        let wanted = InitialState {
            from: StateSource::Empty,
            ..Default::default()
        };
        let Initial::Apply { applied, .. } = decide(&inputs(&wanted, &[(9, true)])) else {
            panic!()
        };
        assert_eq!(applied.since, 10);
    }

    #[test]
    fn a_fork_imports_first_then_starts_from_the_import() {
        let wanted = InitialState {
            from: StateSource::Checkpoint,
            checkpoint: Some(CheckpointSource {
                url: "s3://b/jobs".into(),
                job: "prod/a".into(),
                id: 4,
            }),
            ..Default::default()
        };
        let Initial::Apply {
            applied,
            import,
            reset,
        } = decide(&inputs(&wanted, &[]))
        else {
            panic!()
        };
        assert_eq!(import.map(|s| s.id), Some(4));
        assert_eq!(
            (applied.checkpoint, applied.since, applied.ready),
            (Some(10), 10, false)
        );
        // The next round: another id would be next, the import keeps its own.
        let later = Inputs {
            applied: Some(&applied),
            next_id: 11,
            ..inputs(&wanted, &[(10, true)])
        };
        let Initial::Apply {
            applied: done,
            import,
            reset: again,
        } = decide(&later)
        else {
            panic!()
        };
        assert_eq!(
            (done.checkpoint, done.ready, import, again, reset),
            (Some(10), true, None, false, false)
        );
    }

    #[test]
    fn a_new_nonce_resets_a_running_job_but_not_mid_rescale() {
        let wanted = InitialState {
            from: StateSource::Empty,
            ..Default::default()
        };
        let applied = AppliedState {
            source: "latest".into(),
            since: 0,
            ready: true,
            ..Default::default()
        };
        let running = Inputs {
            applied: Some(&applied),
            nonce: Some("r1"),
            phase: Phase::Running,
            ..inputs(&wanted, &[(9, true)])
        };
        let Initial::Apply {
            applied: next,
            reset,
            ..
        } = decide(&running)
        else {
            panic!()
        };
        assert!(reset);
        assert_eq!((next.nonce.as_deref(), next.since), (Some("r1"), 10));
        let busy = Inputs {
            rescaling: true,
            phase: Phase::Restoring,
            ..running
        };
        assert_eq!(decide(&busy), Initial::Settled { since: 0 });
    }

    #[test]
    fn an_unusable_snapshot_holds_the_start() {
        let wanted = InitialState {
            from: StateSource::Snapshot,
            snapshot: Some("gone".into()),
            ..Default::default()
        };
        let i = Inputs {
            snapshot: Some(Err("no StatefulJobSnapshot gone".into())),
            ..inputs(&wanted, &[])
        };
        assert!(matches!(decide(&i), Initial::Unavailable(w) if w.contains("gone")));
    }
}
