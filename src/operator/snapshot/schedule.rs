//! `spec.snapshots` of a job: when the next scheduled snapshot is due and which scheduled
//! snapshots to delete. Pure.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::error::{Error, Result};
use crate::operator::crd::{SnapshotSchedule, parse_duration};

/// Label on the snapshots a schedule created.
pub const SCHEDULED_LABEL: &str = "regroup.dev/scheduled";

/// A scheduled snapshot of the job, as seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created: Time,
    /// Whether its checkpoint is complete.
    pub completed: bool,
}

/// What the schedule asks for now.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    /// The slot to take a snapshot for now, if one came.
    pub take: Option<Time>,
    /// When the next slot comes.
    pub next: Time,
    /// Scheduled snapshots to delete (beyond `keep`, or older than `maxAge`).
    pub delete: Vec<String>,
}

/// The schedule's decision at `now`: the last slot acted on was `last` (none: the job's
/// creation, `created`); `existing` are the snapshots it created.
pub fn due(
    schedule: &SnapshotSchedule,
    last: Option<&Time>,
    created: &Time,
    existing: &[Scheduled],
    now: &Time,
) -> Result<Due> {
    let cron = Cron::from_str(&schedule.schedule).map_err(|e| {
        Error::invalid(
            "spec.snapshots.schedule",
            &schedule.schedule,
            format!("a cron schedule of five fields such as '0 3 * * *' ({e})"),
        )
    })?;
    let next_after = |t: DateTime<Utc>| {
        cron.find_next_occurrence(&t, false).map_err(|e| {
            Error::invalid(
                "spec.snapshots.schedule",
                &schedule.schedule,
                format!("a cron schedule that has a next time ({e})"),
            )
        })
    };
    let now_c = chrono_of(now);
    let mut slot = next_after(chrono_of(last.unwrap_or(created)))?;
    let mut take = None;
    // Missed slots are taken once, as the latest of them.
    while slot <= now_c {
        take = Some(slot);
        slot = next_after(slot)?;
    }
    let max_age = schedule
        .max_age
        .as_deref()
        .map(|a| parse_duration("spec.snapshots.maxAge", a))
        .transpose()?;
    let mut newest_first: Vec<&Scheduled> = existing.iter().collect();
    newest_first.sort_by_key(|s| std::cmp::Reverse(s.created.0));
    // Only completed snapshots count: one is deleted once `keep` newer ones completed, and
    // the newest completed one is never deleted for its age.
    let mut completed = 0;
    let mut delete = Vec::new();
    for s in newest_first {
        let old = max_age.is_some_and(|m| crate::operator::lifecycle::elapsed(&s.created, now) > m);
        if completed >= schedule.keep as usize || (old && completed > 0) {
            delete.push(s.name.clone());
        } else if s.completed {
            completed += 1;
        }
    }
    Ok(Due {
        take: take.map(time_of),
        next: time_of(slot),
        delete,
    })
}

/// The name of the snapshot of `job` for `slot`: `<job>-<yyyymmddhhmm>`.
pub fn name(job: &str, slot: &Time) -> String {
    format!("{job}-{}", chrono_of(slot).format("%Y%m%d%H%M"))
}

/// Time until `next` from `now` (at least a second).
pub fn wait(next: &Time, now: &Time) -> Duration {
    crate::operator::lifecycle::elapsed(now, next).max(Duration::from_secs(1))
}

fn chrono_of(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.0.as_millisecond()).unwrap_or_default()
}

fn time_of(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_millisecond(t.timestamp_millis()).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn hourly(keep: u32, max_age: Option<&str>) -> SnapshotSchedule {
        SnapshotSchedule {
            schedule: "0 * * * *".into(),
            keep,
            max_age: max_age.map(str::to_owned),
        }
    }

    #[test]
    fn a_slot_comes_once_and_missed_ones_are_taken_once() {
        let created = at("2026-12-06T10:20:00Z");
        let d = due(
            &hourly(3, None),
            None,
            &created,
            &[],
            &at("2026-12-06T10:59:00Z"),
        )
        .unwrap();
        assert_eq!((d.take, d.next), (None, at("2026-12-06T11:00:00Z")));
        let d = due(
            &hourly(3, None),
            None,
            &created,
            &[],
            &at("2026-12-06T13:30:00Z"),
        )
        .unwrap();
        assert_eq!(
            d.take,
            Some(at("2026-12-06T13:00:00Z")),
            "the latest missed slot"
        );
        assert_eq!(
            name("orders", d.take.as_ref().unwrap()),
            "orders-202612061300"
        );
        let last = d.take.unwrap();
        let d = due(
            &hourly(3, None),
            Some(&last),
            &created,
            &[],
            &at("2026-12-06T13:31:00Z"),
        )
        .unwrap();
        assert_eq!((d.take, d.next), (None, at("2026-12-06T14:00:00Z")));
    }

    #[test]
    fn keeps_the_newest_and_drops_the_old() {
        let s = |n: &str, t: &str, completed: bool| Scheduled {
            name: n.into(),
            created: at(t),
            completed,
        };
        let mut existing = vec![
            s("a", "2026-12-06T10:00:00Z", true),
            s("c", "2026-12-06T12:00:00Z", false),
            s("b", "2026-12-06T11:00:00Z", true),
        ];
        let now = at("2026-12-06T12:30:00Z");
        let created = at("2026-12-06T09:00:00Z");
        let last = at("2026-12-06T12:00:00Z");
        let d = due(&hourly(1, None), Some(&last), &created, &existing, &now).unwrap();
        assert_eq!(
            d.delete,
            vec!["a".to_owned()],
            "c is not complete yet: b stays"
        );
        existing[1].completed = true;
        let d = due(&hourly(1, None), Some(&last), &created, &existing, &now).unwrap();
        assert_eq!(d.delete, vec!["b".to_owned(), "a".to_owned()]);
        let d = due(
            &hourly(5, Some("90m")),
            Some(&last),
            &created,
            &existing,
            &now,
        )
        .unwrap();
        assert_eq!(d.delete, vec!["a".to_owned()], "older than maxAge");
        let d = due(
            &hourly(5, Some("1m")),
            Some(&last),
            &created,
            &existing,
            &now,
        )
        .unwrap();
        assert_eq!(
            d.delete,
            vec!["b".to_owned(), "a".to_owned()],
            "the newest completed one stays, whatever its age"
        );
    }

    #[test]
    fn a_bad_schedule_names_the_field() {
        let bad = SnapshotSchedule {
            schedule: "every hour".into(),
            keep: 1,
            max_age: None,
        };
        let e = due(
            &bad,
            None,
            &at("2026-12-06T10:00:00Z"),
            &[],
            &at("2026-12-06T10:00:00Z"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("spec.snapshots.schedule"), "{e}");
    }
}
