//! What the runner knows about a pod's processes, and the pod status it reports. Pure: the
//! supervisor updates [`PodRecord`]s, [`build_status`] turns one into a `PodStatus`.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// Condition types the runner owns; others (PodScheduled, readiness gates, DisruptionTarget)
/// are kept as the pod has them.
pub const OWNED_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

/// Waiting reason while the runner is stopped and its processes are gone.
pub const RUNNER_STOPPED: &str = "RunnerStopped";

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// Exit code; 128 + signal number when killed by a signal, as container runtimes report.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// `Completed` (exit 0), `Error`, or why it never ran.
    pub reason: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
    /// The termination message (the end of its log, for `FallbackToLogsOnError`).
    pub message: Option<String>,
}

/// Most of a log's end that becomes a termination message, as the kubelet takes it.
const MESSAGE_MAX_BYTES: usize = 2048;
const MESSAGE_MAX_LINES: usize = 80;

/// The termination message the kubelet takes from a failed container's log: its last 80 lines,
/// at most 2048 bytes (`terminationMessagePolicy: FallbackToLogsOnError`).
pub fn message_from_log(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(MESSAGE_MAX_LINES)..].join("\n");
    let mut start = tail.len().saturating_sub(MESSAGE_MAX_BYTES);
    while !tail.is_char_boundary(start) {
        start += 1;
    }
    let message = tail[start..].trim();
    (!message.is_empty()).then(|| message.to_owned())
}

impl Termination {
    /// A termination from an exit code or a signal.
    pub fn new(
        code: Option<i32>,
        signal: Option<i32>,
        started_at: Timestamp,
        finished_at: Timestamp,
    ) -> Self {
        let exit_code = match (code, signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => -1,
        };
        Termination {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            started_at,
            finished_at,
            message: None,
        }
    }

    fn to_state(&self, container_id: Option<&str>) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: container_id.map(str::to_string),
                exit_code: self.exit_code,
                signal: self.signal,
                reason: Some(self.reason.clone()),
                started_at: Some(Time(self.started_at)),
                finished_at: Some(Time(self.finished_at)),
                message: self.message.clone(),
            }),
            ..Default::default()
        }
    }
}

/// The state of one container's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Not running: not started yet, backing off before a restart, or unable to start.
    Waiting {
        /// `ContainerCreating`, `PodInitializing`, `CrashLoopBackOff`,
        /// `CreateContainerConfigError`, `RunContainerError`, `RunnerStopped`.
        reason: String,
        /// Details, such as the configuration error.
        message: Option<String>,
    },
    /// Its process runs.
    Running {
        /// Process id (reported as the container id `regroup-pod-runner://<pid>`).
        pid: u32,
        /// When it started.
        started_at: Timestamp,
    },
    /// Ended, and will not be restarted.
    Terminated(Termination),
}

impl RunState {
    /// A waiting state with a reason and no message.
    pub fn waiting(reason: &str) -> Self {
        RunState::Waiting {
            reason: reason.to_string(),
            message: None,
        }
    }
}

/// What the runner knows of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Image, reported back as given (nothing is pulled).
    pub image: String,
    /// Restarts so far.
    pub restart_count: i32,
    /// Current state.
    pub state: RunState,
    /// How the previous run ended.
    pub last_termination: Option<Termination>,
    /// Readiness: its readiness probe passes, or it runs and has no probe.
    pub ready: bool,
}

impl ContainerRecord {
    /// A container not started yet.
    pub fn new(name: &str, image: &str, reason: &str) -> Self {
        ContainerRecord {
            name: name.to_string(),
            image: image.to_string(),
            restart_count: 0,
            state: RunState::waiting(reason),
            last_termination: None,
            ready: false,
        }
    }

    fn container_id(&self) -> Option<String> {
        match &self.state {
            RunState::Running { pid, .. } => Some(format!("regroup-pod-runner://{pid}")),
            _ => None,
        }
    }

    fn is_running(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
    }

    fn completed(&self) -> bool {
        matches!(&self.state, RunState::Terminated(t) if t.exit_code == 0)
    }

    /// The Kubernetes status of this container; `init` for an init container, which is ready
    /// once it has completed.
    pub fn to_status(&self, init: bool) -> ContainerStatus {
        let id = self.container_id();
        let state = match &self.state {
            RunState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.clone()),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            RunState::Running { started_at, .. } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started_at)),
                }),
                ..Default::default()
            },
            RunState::Terminated(t) => t.to_state(None),
        };
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: String::new(),
            container_id: id,
            ready: if init { self.completed() } else { self.ready },
            started: Some(self.is_running()),
            restart_count: self.restart_count,
            state: Some(state),
            last_state: Some(
                self.last_termination
                    .as_ref()
                    .map(|t| t.to_state(None))
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }
}

/// What the runner knows of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// Init containers, in order.
    pub init: Vec<ContainerRecord>,
    /// Containers.
    pub main: Vec<ContainerRecord>,
    /// When the runner took the pod on.
    pub start_time: Timestamp,
    /// All init containers have completed.
    pub initialized: bool,
    /// An init container failed and the pod's restartPolicy is Never: the pod has failed.
    pub init_failed: bool,
    /// The pod has an IP to run with.
    pub has_ip: bool,
}

/// The pod phase of a record.
pub fn phase(record: &PodRecord) -> &'static str {
    if record.init_failed {
        return "Failed";
    }
    if !record.initialized {
        return "Pending";
    }
    let all_ended = !record.main.is_empty()
        && record
            .main
            .iter()
            .all(|c| matches!(c.state, RunState::Terminated(_)));
    if all_ended {
        return if record.main.iter().all(ContainerRecord::completed) {
            "Succeeded"
        } else {
            "Failed"
        };
    }
    let has_run = record
        .main
        .iter()
        .any(|c| c.is_running() || c.restart_count > 0 || c.last_termination.is_some());
    if has_run { "Running" } else { "Pending" }
}

/// Records that the runner stopped the pod's processes while the pod stays (runner shutdown):
/// containers wait with reason `RunnerStopped`, not ready, how they ended kept as their last
/// state. Not for a pod that had already Succeeded or Failed: a terminal phase never changes
/// back (see [`is_terminal`]).
pub fn mark_runner_stopped(record: &mut PodRecord) {
    for c in &mut record.main {
        if let RunState::Terminated(t) = &c.state {
            c.last_termination = Some(t.clone());
        }
        c.state = RunState::waiting(RUNNER_STOPPED);
        c.ready = false;
    }
}

/// True for the phases a pod never leaves.
pub fn is_terminal(phase: Option<&str>) -> bool {
    matches!(phase, Some("Succeeded" | "Failed"))
}

/// Delay before restart number `restart` (1-based): `initial` doubled per restart, at most `max`.
pub fn restart_delay(restart: i32, initial: Duration, max: Duration) -> Duration {
    let doublings = restart.saturating_sub(1).clamp(0, 20) as u32;
    initial.saturating_mul(1 << doublings).min(max)
}

fn condition(
    previous: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status really changes.
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        last_transition_time: Some(since),
        ..Default::default()
    }
}

/// The pod status the runner reports for `record`: phase, start time, the conditions it owns
/// (keeping the others of `previous`), and init and container statuses. `podIP`/`hostIP` are
/// not touched: kwok assigned them and they stay. `Ready` also needs every condition named in
/// `readiness_gates` (the pod's `spec.readinessGates`) to be True.
pub fn build_status(
    record: &PodRecord,
    previous: Option<&PodStatus>,
    readiness_gates: &[String],
    now: Timestamp,
) -> PodStatus {
    let prev_conditions = previous
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let phase = phase(record);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let unready: Vec<&str> = record
        .main
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let uninitialized: Vec<&str> = record
        .init
        .iter()
        .filter(|c| !c.completed())
        .map(|c| c.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && !terminal;
    let gates_ready = readiness_gates.iter().all(|gate| {
        prev_conditions
            .iter()
            .any(|c| c.type_ == *gate && c.status == "True")
    });
    let not_ready_reason = if terminal {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let unready_msg = (!terminal && !unready.is_empty())
        .then(|| format!("containers with unready status: [{}]", unready.join(" ")));

    let mut conditions: Vec<PodCondition> = prev_conditions
        .iter()
        .filter(|c| !OWNED_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    conditions.push(condition(
        &prev_conditions,
        "PodReadyToStartContainers",
        record.has_ip && !terminal,
        None,
        None,
        now,
    ));
    conditions.push(condition(
        &prev_conditions,
        "Initialized",
        record.initialized,
        Some("ContainersNotInitialized"),
        Some(format!(
            "containers with incomplete status: [{}]",
            uninitialized.join(" ")
        )),
        now,
    ));
    conditions.push(condition(
        &prev_conditions,
        "ContainersReady",
        containers_ready,
        Some(not_ready_reason),
        unready_msg.clone(),
        now,
    ));
    conditions.push(condition(
        &prev_conditions,
        "Ready",
        containers_ready && gates_ready,
        Some(not_ready_reason),
        unready_msg,
        now,
    ));

    PodStatus {
        phase: Some(phase.to_string()),
        start_time: Some(
            previous
                .and_then(|s| s.start_time.clone())
                .unwrap_or(Time(record.start_time)),
        ),
        conditions: Some(conditions),
        init_container_statuses: (!record.init.is_empty())
            .then(|| record.init.iter().map(|c| c.to_status(true)).collect()),
        container_statuses: Some(record.main.iter().map(|c| c.to_status(false)).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn record() -> PodRecord {
        PodRecord {
            init: vec![ContainerRecord::new(
                "restore",
                "regroup",
                "PodInitializing",
            )],
            main: vec![
                ContainerRecord::new("worker", "regroup", "PodInitializing"),
                ContainerRecord::new("sidecar", "regroup", "PodInitializing"),
            ],
            start_time: t(0),
            initialized: false,
            init_failed: false,
            has_ip: true,
        }
    }

    fn running(c: &mut ContainerRecord, pid: u32, ready: bool) {
        c.state = RunState::Running {
            pid,
            started_at: t(5),
        };
        c.ready = ready;
    }

    fn cond<'a>(s: &'a PodStatus, type_: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no condition {type_}"))
    }

    #[test]
    fn pending_while_initializing() {
        let mut r = record();
        running(&mut r.init[0], 10, false);
        let s = build_status(&r, None, &[], t(1));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized").status, "False");
        assert_eq!(
            cond(&s, "Initialized").message.as_deref(),
            Some("containers with incomplete status: [restore]")
        );
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "PodReadyToStartContainers").status, "True");
        let init = &s.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            init.container_id.as_deref(),
            Some("regroup-pod-runner://10")
        );
        assert!(!init.ready);
    }

    #[test]
    fn running_and_ready_when_every_container_is() {
        let mut r = record();
        r.init[0].state = RunState::Terminated(Termination::new(Some(0), None, t(1), t(2)));
        r.initialized = true;
        running(&mut r.main[0], 11, true);
        running(&mut r.main[1], 12, false);
        let s = build_status(&r, None, &[], t(3));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("containers with unready status: [sidecar]")
        );
        assert!(s.init_container_statuses.as_ref().unwrap()[0].ready);

        r.main[1].ready = true;
        let s2 = build_status(&r, Some(&s), &[], t(9));
        assert_eq!(cond(&s2, "Ready").status, "True");
        assert_eq!(cond(&s2, "Ready").last_transition_time, Some(Time(t(9))));
        // Unchanged conditions keep their transition time.
        assert_eq!(
            cond(&s2, "Initialized").last_transition_time,
            Some(Time(t(3)))
        );
        assert_eq!(s2.start_time, Some(Time(t(0))));
    }

    #[test]
    fn crash_is_reported_with_restart_count_and_last_state() {
        let mut r = record();
        r.initialized = true;
        running(&mut r.main[1], 12, true);
        r.main[0].restart_count = 1;
        r.main[0].last_termination = Some(Termination::new(None, Some(9), t(5), t(6)));
        r.main[0].state = RunState::waiting("CrashLoopBackOff");
        let s = build_status(&r, None, &[], t(7));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let worker = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(worker.restart_count, 1);
        let last = worker
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap();
        assert_eq!(last.exit_code, 137);
        assert_eq!(last.signal, Some(9));
        assert_eq!(last.reason.as_deref(), Some("Error"));
        assert_eq!(
            worker
                .state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(cond(&s, "ContainersReady").status, "False");
    }

    #[test]
    fn terminal_phases() {
        let mut r = record();
        r.initialized = true;
        r.main[0].state = RunState::Terminated(Termination::new(Some(0), None, t(1), t(2)));
        r.main[1].state = RunState::Terminated(Termination::new(Some(0), None, t(1), t(2)));
        let s = build_status(&r, None, &[], t(3));
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        r.main[1].state = RunState::Terminated(Termination::new(Some(3), None, t(1), t(2)));
        assert_eq!(phase(&r), "Failed");

        let mut r = record();
        r.init[0].state = RunState::Terminated(Termination::new(Some(1), None, t(1), t(2)));
        r.init_failed = true;
        assert_eq!(phase(&r), "Failed");
    }

    #[test]
    fn other_conditions_are_kept_and_gate_readiness() {
        let mut r = record();
        r.init.clear();
        r.initialized = true;
        running(&mut r.main[0], 1, true);
        running(&mut r.main[1], 2, true);
        let previous = PodStatus {
            conditions: Some(vec![
                PodCondition {
                    type_: "PodScheduled".into(),
                    status: "True".into(),
                    ..Default::default()
                },
                PodCondition {
                    type_: "example.com/gate".into(),
                    status: "False".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let s = build_status(&r, Some(&previous), &["example.com/gate".to_string()], t(1));
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False");
        assert!(s.init_container_statuses.is_none());
    }

    #[test]
    fn runner_stop_marks_containers_not_ready() {
        let mut r = record();
        r.initialized = true;
        running(&mut r.main[0], 1, true);
        r.main[1].state = RunState::Terminated(Termination::new(None, Some(15), t(1), t(2)));
        mark_runner_stopped(&mut r);
        assert_eq!(phase(&r), "Running");
        for c in &r.main {
            assert_eq!(c.state, RunState::waiting(RUNNER_STOPPED));
            assert!(!c.ready);
        }
        assert_eq!(r.main[1].last_termination.as_ref().unwrap().exit_code, 143);
        let s = build_status(&r, None, &[], t(3));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert!(is_terminal(Some("Succeeded")) && is_terminal(Some("Failed")));
        assert!(!is_terminal(Some("Running")) && !is_terminal(None));
    }

    #[test]
    fn restart_delay_doubles_up_to_the_cap() {
        let one = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=6)
            .map(|n| restart_delay(n, one, cap).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(restart_delay(10_000, one, cap), cap);
    }

    #[test]
    fn termination_messages_are_the_end_of_the_log() {
        assert_eq!(message_from_log(" \n"), None);
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let m = message_from_log(&log).unwrap();
        assert!(m.starts_with("line 20\n") && m.ends_with("line 99"), "{m}");
        let long = format!("{}\nerror: the end", "x".repeat(5000));
        let m = message_from_log(&long).unwrap();
        assert!(m.len() <= 2048 && m.ends_with("error: the end"));
    }
}
