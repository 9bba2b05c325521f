//! Leader election with a `coordination.k8s.io/v1` Lease: one active replica, the others wait.
//!
//! As in client-go's leaderelection, clocks of different machines are never compared. A
//! standby remembers the lease record it last read and when, on its own monotonic clock, that
//! record last changed ([`Sighting`]); it takes the lease over only once the record has stood
//! still for the lease duration ([`decide`]), whatever the holder's `renewTime` says. The
//! leader renews on a task of its own ([`LeaseLock::acquire`] returns a [`Leadership`]) and
//! stops acting once it could not renew within the renew deadline ([`Term`]), which is shorter
//! than the lease duration, so it stops before any standby may take over. Writes are `replace`s
//! carrying the resourceVersion read, so two replicas can never both win a round.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::error::{Error, Result};

/// How long a lease lasts unrenewed, how long its leader tries to renew it, and how often.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// A standby takes the lease over once its record has not changed for this long.
    pub duration: Duration,
    /// The leader stops acting once it has not renewed for this long (less than `duration`).
    pub renew_deadline: Duration,
    /// The time between two rounds of acquiring or renewing.
    pub retry_period: Duration,
}

impl LeaseTimings {
    /// Timings from the flags. The renew deadline defaults to 2/3 of the duration, the retry
    /// period to a fifth of it (at most 2 s and half the renew deadline).
    pub fn new(
        duration: Duration,
        renew_deadline: Option<Duration>,
        retry_period: Option<Duration>,
    ) -> Result<Self> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        let invalid = |field: &str, value: Duration, expected: String| Error::InvalidInput {
            field: field.to_owned(),
            value: show(value),
            expected,
        };
        // The Lease stores whole seconds: a fraction would shorten the lease others see.
        if duration.is_zero() || duration.subsec_nanos() != 0 {
            return Err(invalid(
                "--lease-duration",
                duration,
                "a whole number of seconds, at least 1s (the Lease stores seconds), e.g. 15s"
                    .to_owned(),
            ));
        }
        let renew_deadline = renew_deadline.unwrap_or(duration * 2 / 3);
        if renew_deadline.is_zero() || renew_deadline >= duration {
            return Err(invalid(
                "--lease-renew-deadline",
                renew_deadline,
                format!(
                    "more than 0 and less than --lease-duration ({}), e.g. 2/3 of it",
                    show(duration)
                ),
            ));
        }
        let retry_period = retry_period.unwrap_or(
            (duration / 5)
                .min(Duration::from_secs(2))
                .min(renew_deadline / 2),
        );
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(invalid(
                "--lease-retry-period",
                retry_period,
                format!(
                    "more than 0 and less than --lease-renew-deadline ({}), e.g. a fifth of it",
                    show(renew_deadline)
                ),
            ));
        }
        Ok(Self {
            duration,
            renew_deadline,
            retry_period,
        })
    }
}

/// What a standby compares between two reads of the lease; any write changes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The holder; `None` or empty when nobody holds the lease.
    pub holder: Option<String>,
    /// How long the holder's lease lasts unrenewed (`leaseDurationSeconds`).
    pub duration_seconds: Option<i32>,
    /// When the holder last renewed by its own clock: compared for change, never with ours.
    pub renew_time: Option<Timestamp>,
    /// How many times the lease changed hands.
    pub transitions: i32,
    /// The API server's version of the object, new with every write.
    pub resource_version: Option<String>,
}

impl LeaseRecord {
    /// The record of `lease` as read.
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// A lease record as last read, and since when (on this replica's monotonic clock) it has
/// not changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The record read.
    pub record: LeaseRecord,
    /// When this replica first saw the record as it is.
    pub since: Instant,
}

impl Sighting {
    /// The sighting after reading `record` at `now`: it keeps its age while the record is the
    /// same, and starts again when the record changed.
    pub fn after(previous: Option<Sighting>, record: LeaseRecord, now: Instant) -> Sighting {
        match previous {
            Some(seen) if seen.record == record => seen,
            _ => Sighting { record, since: now },
        }
    }
}

/// What to do with the lease this round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it, or its record stood still for the lease duration: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it.
    Wait,
}

/// Decides from the lease as last seen (`None`: it does not exist) at `now` on this replica's
/// monotonic clock; `duration` applies when the record names none.
pub fn decide(
    seen: Option<&Sighting>,
    identity: &str,
    duration: Duration,
    now: Instant,
) -> LeaseDecision {
    let Some(seen) = seen else {
        return LeaseDecision::Acquire;
    };
    match seen.record.holder.as_deref() {
        Some(h) if h == identity => LeaseDecision::Renew,
        None | Some("") => LeaseDecision::Acquire,
        Some(_) => {
            let lasts = seen
                .record
                .duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map_or(duration, Duration::from_secs);
            if now.saturating_duration_since(seen.since) >= lasts {
                LeaseDecision::Acquire
            } else {
                LeaseDecision::Wait
            }
        }
    }
}

/// A leader's term: it may act until the start of its last successful renewal plus the renew
/// deadline. A standby starts counting no earlier than that start (it sees the write after it
/// was made), so the term ends before the lease expires for anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    renewed: Instant,
    renew_deadline: Duration,
}

impl Term {
    /// A term won by the round that started at `started`.
    pub fn new(started: Instant, renew_deadline: Duration) -> Self {
        Self {
            renewed: started,
            renew_deadline,
        }
    }

    /// Extends the term by a successful renewal round that started at `started`.
    pub fn renewed(&mut self, started: Instant) {
        self.renewed = self.renewed.max(started);
    }

    /// The instant from which this replica must no longer act as leader.
    pub fn deadline(&self) -> Instant {
        self.renewed + self.renew_deadline
    }

    /// Whether the term is over at `now`.
    pub fn is_over(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

/// The outcome of one round of acquiring or renewing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Round {
    /// This replica holds the lease: it acquired or renewed it.
    Held,
    /// Another replica holds it.
    HeldBy(String),
    /// Another replica wrote the lease between our read and our write; the next round reads
    /// it again.
    Conflict,
}

/// Why a leader stopped leading.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeadershipLost {
    /// No renewal succeeded within the renew deadline.
    #[error("the lease was not renewed within the renew deadline ({0:?})")]
    RenewDeadline(Duration),
    /// Another replica holds the lease.
    #[error("the lease is held by {0}")]
    TakenBy(String),
    /// The renewal task ended without saying why (it panicked).
    #[error("the lease renewal task ended")]
    TaskEnded,
}

/// The leader Lease as seen by one replica.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    wall_skew: SignedDuration,
    seen: Option<Sighting>,
    term: Option<Term>,
}

impl LeaseLock {
    /// The lock `namespace/name` for `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: LeaseTimings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timings,
            wall_skew: SignedDuration::ZERO,
            seen: None,
            term: None,
        }
    }

    /// This lock with its wall clock `skew` off the real one (tests: a replica with a wrong clock).
    pub fn with_wall_clock_skew(mut self, skew: SignedDuration) -> Self {
        self.wall_skew = skew;
        self
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The wall-clock time written into the lease (informational: nobody decides by it).
    fn wall_now(&self) -> Timestamp {
        let now = Timestamp::now();
        now.checked_add(self.wall_skew).unwrap_or(now)
    }

    /// One round: reads the lease, then acquires or renews it when [`decide`] says so.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Round, kube::Error> {
        let started = Instant::now();
        let current = self.api.get_opt(&self.name).await?;
        // Taken after the read: the record was written before we saw it, never after.
        let read_at = Instant::now();
        self.seen = current
            .as_ref()
            .map(|l| Sighting::after(self.seen.take(), LeaseRecord::of(l), read_at));
        let decision = decide(
            self.seen.as_ref(),
            &self.identity,
            self.timings.duration,
            read_at,
        );
        if decision == LeaseDecision::Wait {
            let holder = self.seen.as_ref().and_then(|s| s.record.holder.clone());
            return Ok(Round::HeldBy(holder.unwrap_or_default()));
        }
        let now = MicroTime(self.wall_now());
        let previous = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timings.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if decision == LeaseDecision::Renew {
                previous.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0)
                    + i32::from(decision == LeaseDecision::Acquire && current.is_some()),
            ),
            ..Default::default()
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(written) => {
                self.seen = Some(Sighting {
                    record: LeaseRecord::of(&written),
                    since: Instant::now(),
                });
                match self.term.as_mut() {
                    Some(term) => term.renewed(started),
                    None => {
                        self.term = Some(Term::new(started, self.timings.renew_deadline));
                        info!(identity = %self.identity, lease = %self.name, "became leader");
                    }
                }
                Ok(Round::Held)
            }
            // Someone else wrote the lease between our read and write: they won this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the lease, then renews it on a task of its own.
    pub async fn acquire(mut self) -> Leadership {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Round::Held) => break,
                Ok(_) => {}
                Err(e) => warn!(error = %e, "lease round failed"),
            }
            tokio::time::sleep(self.timings.retry_period).await;
        }
        let (lost_tx, lost) = watch::channel(None);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let lost = tokio::select! {
                reason = self.keep() => Some(reason),
                _ = stopped => None,
            };
            if let Some(reason) = lost {
                warn!(identity = %self.identity, %reason, "leadership lost");
                let _ = lost_tx.send(Some(reason));
            }
            self
        });
        Leadership {
            lost,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Renews every retry period until the term is over or another replica holds the lease.
    async fn keep(&mut self) -> LeadershipLost {
        let over = LeadershipLost::RenewDeadline(self.timings.renew_deadline);
        loop {
            let Some(term) = self.term else {
                return over;
            };
            let deadline = term.deadline();
            tokio::time::sleep_until((Instant::now() + self.timings.retry_period).min(deadline))
                .await;
            if term.is_over(Instant::now()) {
                return over;
            }
            // A round still under way at the deadline is abandoned: the term is over.
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Err(_) => return over,
                Ok(Ok(Round::Held)) => {}
                Ok(Ok(Round::HeldBy(holder))) => return LeadershipLost::TakenBy(holder),
                Ok(Ok(Round::Conflict)) => {
                    warn!("lease renewal conflicted with another write; retrying")
                }
                Ok(Err(e)) => warn!(error = %e, "lease renewal failed; retrying"),
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(&self.identity)
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
            }
            if let Err(e) = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                warn!(error = %e, "lease not released");
            }
        }
    }
}

/// The leader Lease held by this process, renewed by a task of its own until lost or released.
/// Dropping it stops the renewal without releasing (the lease then expires for the standbys).
pub struct Leadership {
    lost: watch::Receiver<Option<LeadershipLost>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<LeaseLock>>,
}

impl Leadership {
    /// Resolves once leadership is lost, with the reason: the caller must stop acting at once.
    pub async fn lost(&mut self) -> LeadershipLost {
        match self.lost.wait_for(Option::is_some).await {
            Ok(reason) => (*reason).clone().unwrap_or(LeadershipLost::TaskEnded),
            Err(_) => LeadershipLost::TaskEnded,
        }
    }

    /// Stops renewing and hands the lease back, so a standby takes over at once.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Ok(lock) = task.await
        {
            lock.release().await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn record(holder: Option<&str>, renewed: i64, version: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            duration_seconds: Some(15),
            renew_time: Some(Timestamp::from_second(renewed).unwrap()),
            transitions: 0,
            resource_version: Some(version.to_owned()),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_missing_or_free_lease_is_acquired_and_our_own_renewed() {
        let t0 = Instant::now();
        assert_eq!(decide(None, "a", LEASE, t0), LeaseDecision::Acquire);
        let free = Sighting::after(None, record(None, 0, "1"), t0);
        assert_eq!(decide(Some(&free), "a", LEASE, t0), LeaseDecision::Acquire);
        let empty = Sighting::after(None, record(Some(""), 0, "1"), t0);
        assert_eq!(decide(Some(&empty), "a", LEASE, t0), LeaseDecision::Acquire);
        let ours = Sighting::after(None, record(Some("a"), 0, "1"), t0);
        assert_eq!(
            decide(Some(&ours), "a", LEASE, t0 + secs(3600)),
            LeaseDecision::Renew
        );
    }

    #[test]
    fn a_holder_that_keeps_changing_the_record_is_never_taken_over_whatever_its_renew_time() {
        // Holders' clocks an hour behind, an hour ahead, at the epoch and right: renewTime never
        // decides, only whether the record keeps changing on the standby's own clock.
        let t0 = Instant::now();
        for renew_base in [-3600, 3600, -1_000_000_000, 0] {
            let mut seen = None;
            for round in 0..100u64 {
                let now = t0 + secs(round * 2);
                let rec = record(Some("b"), renew_base + round as i64 * 2, &round.to_string());
                let s = Sighting::after(seen.take(), rec, now);
                assert_eq!(
                    decide(Some(&s), "a", LEASE, now),
                    LeaseDecision::Wait,
                    "renewTime base {renew_base}, round {round}"
                );
                seen = Some(s);
            }
        }
    }

    #[test]
    fn an_unchanged_record_is_taken_over_after_the_lease_duration_on_the_standbys_clock() {
        let t0 = Instant::now();
        // renewTime far in the future: today's wall clock says "not expired" for an hour.
        let rec = record(Some("b"), Timestamp::now().as_second() + 3600, "7");
        let mut seen = Some(Sighting::after(None, rec.clone(), t0));
        for elapsed in [0, 1, 7, 14] {
            let now = t0 + secs(elapsed);
            seen = Some(Sighting::after(seen.take(), rec.clone(), now));
            assert_eq!(
                decide(seen.as_ref(), "a", LEASE, now),
                LeaseDecision::Wait,
                "{elapsed}s"
            );
        }
        assert_eq!(
            seen.as_ref().unwrap().since,
            t0,
            "an unchanged record keeps its age"
        );
        let now = t0 + LEASE;
        seen = Some(Sighting::after(seen.take(), rec.clone(), now));
        assert_eq!(
            decide(seen.as_ref(), "a", LEASE, now),
            LeaseDecision::Acquire
        );
        // A standby that has just started counts from its first read, however old the record.
        let fresh = Sighting::after(None, rec, now);
        assert_eq!(decide(Some(&fresh), "a", LEASE, now), LeaseDecision::Wait);
    }

    #[test]
    fn the_holders_lease_duration_applies_and_ours_when_it_names_none() {
        let t0 = Instant::now();
        let mut rec = record(Some("b"), 0, "1");
        rec.duration_seconds = Some(40);
        let s = Sighting::after(None, rec.clone(), t0);
        assert_eq!(
            decide(Some(&s), "a", LEASE, t0 + secs(39)),
            LeaseDecision::Wait
        );
        assert_eq!(
            decide(Some(&s), "a", LEASE, t0 + secs(40)),
            LeaseDecision::Acquire
        );
        rec.duration_seconds = None;
        let s = Sighting::after(None, rec, t0);
        assert_eq!(
            decide(Some(&s), "a", LEASE, t0 + secs(14)),
            LeaseDecision::Wait
        );
        assert_eq!(
            decide(Some(&s), "a", LEASE, t0 + secs(15)),
            LeaseDecision::Acquire
        );
    }

    #[test]
    fn the_leader_gives_up_at_the_renew_deadline_after_its_last_renewal() {
        let timings = LeaseTimings::new(LEASE, None, None).unwrap();
        let t0 = Instant::now();
        let mut term = Term::new(t0, timings.renew_deadline);
        assert!(!term.is_over(t0 + secs(9)));
        term.renewed(t0 + secs(4));
        // Failed rounds do not extend the term: it ends 10 s after the last renewal started.
        assert!(!term.is_over(t0 + secs(13)));
        assert!(term.is_over(t0 + secs(14)));
        assert_eq!(term.deadline(), t0 + secs(14));
        // A late answer of an older round never shortens it.
        term.renewed(t0 + secs(1));
        assert_eq!(term.deadline(), t0 + secs(14));
    }

    #[test]
    fn the_leader_stops_before_a_standby_may_take_over() {
        // The leader's last renewal starts at `start`; the standby reads the record it wrote
        // at some later instant and then sees it unchanged: it acquires only after the term.
        let timings = LeaseTimings::new(LEASE, None, None).unwrap();
        let start = Instant::now();
        let term = Term::new(start, timings.renew_deadline);
        let rec = record(Some("leader"), 0, "9");
        for read_delay_ms in [0, 1, 500, 5000] {
            let seen = Sighting::after(
                None,
                rec.clone(),
                start + Duration::from_millis(read_delay_ms),
            );
            for ms in (0..40_000).step_by(100) {
                let now = start + Duration::from_millis(ms);
                if now >= seen.since
                    && decide(Some(&seen), "standby", LEASE, now) == LeaseDecision::Acquire
                {
                    assert!(term.is_over(now), "both lead at +{ms} ms");
                }
            }
        }
    }

    #[test]
    fn timings_default_from_the_duration_and_bad_ones_name_the_flag() {
        let t = LeaseTimings::new(LEASE, None, None).unwrap();
        assert_eq!(t.renew_deadline, secs(10));
        assert_eq!(t.retry_period, secs(2));
        let t = LeaseTimings::new(secs(3), None, None).unwrap();
        assert_eq!(t.renew_deadline, secs(2));
        assert_eq!(t.retry_period, Duration::from_millis(600));
        let t = LeaseTimings::new(LEASE, Some(secs(3)), None).unwrap();
        assert_eq!(t.retry_period, Duration::from_millis(1500));

        let err = |r: Result<LeaseTimings>| r.unwrap_err().to_string();
        let e = err(LeaseTimings::new(Duration::from_millis(1500), None, None));
        assert!(
            e.contains("--lease-duration") && e.contains("1s 500ms"),
            "{e}"
        );
        let e = err(LeaseTimings::new(LEASE, Some(LEASE), None));
        assert!(
            e.contains("--lease-renew-deadline") && e.contains("15s"),
            "{e}"
        );
        let e = err(LeaseTimings::new(LEASE, None, Some(secs(10))));
        assert!(
            e.contains("--lease-retry-period")
                && e.contains("less than --lease-renew-deadline (10s)"),
            "{e}"
        );
        assert!(LeaseTimings::new(Duration::ZERO, None, None).is_err());
        assert!(LeaseTimings::new(LEASE, None, Some(Duration::ZERO)).is_err());
    }
}
