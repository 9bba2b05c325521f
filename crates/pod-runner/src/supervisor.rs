//! One pod's processes: init containers in order, then every container with its restarts and
//! readiness probe, the status reports, and the stop when the pod is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerStatus, Pod, PodCondition, PodStatus, Probe, Secret,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::serde::de::DeserializeOwned;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::RunnerConfig;
use super::spec::{self, PodDirs, PodObjects};
use super::status::{
    ContainerRecord, OWNED_CONDITIONS, PodRecord, RUNNER_STOPPED, RunState, Termination,
    build_status, is_terminal, mark_runner_stopped, restart_delay,
};
use super::volumes;

/// What the runner shares with every pod task.
pub(crate) struct Shared {
    pub client: kube::Client,
    pub config: RunnerConfig,
}

/// Why a pod's processes stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The pod has a deletionTimestamp: stop, then finish its deletion.
    Deleted,
    /// The pod is gone from the API: stop and clean up.
    Gone,
    /// The runner shuts down: stop, and leave the pod to the next runner.
    Shutdown,
    /// The pod's node is lost (a test marks it so): its processes die at once and nothing is
    /// reported or finished for it any more, as when a node crashes.
    Lost,
}

/// Watches for a reason to stop, from the pod's updates, its node and the runner's shutdown
/// flag.
#[derive(Clone)]
pub(crate) struct StopWatch {
    pod: watch::Receiver<Option<Pod>>,
    shutdown: watch::Receiver<bool>,
    lost: watch::Receiver<bool>,
}

impl StopWatch {
    /// A watch over the pod channel, the shutdown flag and the node-lost flag.
    pub fn new(
        pod: watch::Receiver<Option<Pod>>,
        shutdown: watch::Receiver<bool>,
        lost: watch::Receiver<bool>,
    ) -> Self {
        StopWatch {
            pod,
            shutdown,
            lost,
        }
    }

    fn now(&self) -> Option<Stop> {
        if *self.lost.borrow() {
            return Some(Stop::Lost);
        }
        if *self.shutdown.borrow() {
            return Some(Stop::Shutdown);
        }
        match &*self.pod.borrow() {
            None => Some(Stop::Gone),
            Some(p) if p.metadata.deletion_timestamp.is_some() => Some(Stop::Deleted),
            Some(_) => None,
        }
    }

    async fn wait(&mut self) -> Stop {
        loop {
            if let Some(stop) = self.now() {
                return stop;
            }
            tokio::select! {
                r = self.pod.changed() => if r.is_err() { return Stop::Gone },
                r = self.shutdown.changed() => if r.is_err() { return Stop::Shutdown },
                r = self.lost.changed() => if r.is_err() { return Stop::Shutdown },
            }
        }
    }

    /// Sleeps for `d` unless a stop comes first.
    async fn sleep(&mut self, d: Duration) -> Option<Stop> {
        tokio::select! {
            _ = tokio::time::sleep(d) => None,
            stop = self.wait() => Some(stop),
        }
    }

    /// Waits for the next update of the pod, for at most `d`, unless a stop comes first.
    async fn change(&mut self, d: Duration) -> Option<Stop> {
        let closed = tokio::select! {
            _ = tokio::time::sleep(d) => None,
            r = self.pod.changed() => r.is_err().then_some(Stop::Gone),
            r = self.shutdown.changed() => r.is_err().then_some(Stop::Shutdown),
            r = self.lost.changed() => r.is_err().then_some(Stop::Shutdown),
        };
        closed.or_else(|| self.now())
    }

    fn pod(&self) -> Option<Pod> {
        self.pod.borrow().clone()
    }
}

/// A running process of a container, leader of its own process group.
struct Process {
    child: tokio::process::Child,
    pid: u32,
    started_at: Timestamp,
}

impl Process {
    fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) has no memory effects; a negative pid addresses the process group the
        // child leads (process_group(0) at spawn), so its own children get the signal too.
        unsafe {
            libc::kill(-(self.pid as i32), signal);
        }
    }

    fn termination(&self, status: std::io::Result<ExitStatus>) -> Termination {
        let (code, signal) = match status {
            Ok(s) => (s.code(), s.signal()),
            Err(_) => (None, None),
        };
        Termination::new(code, signal, self.started_at, Timestamp::now())
    }

    /// SIGTERM to the group, SIGKILL after `grace`; how the process ended.
    async fn stop(mut self, grace: Duration) -> Termination {
        self.signal_group(libc::SIGTERM);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                self.signal_group(libc::SIGKILL);
                self.child.wait().await
            }
        };
        // Whatever the process left behind in its group goes with it.
        self.signal_group(libc::SIGKILL);
        self.termination(status)
    }
}

/// Everything one container needs to start.
#[derive(Clone)]
struct ContainerCtx {
    shared: Arc<Shared>,
    pod: Pod,
    container: Container,
    objects: Arc<PodObjects>,
    dirs: PodDirs,
    log_file: PathBuf,
    /// The service account's kubeconfig, given as `KUBECONFIG` unless the container sets it.
    kubeconfig: Option<PathBuf>,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

impl ContainerCtx {
    fn note(&self, line: &str) {
        let line = format!(
            "--- regroup-pod-runner {} {} container {}: {line}\n",
            Timestamp::now(),
            pod_key(&self.pod),
            self.container.name
        );
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file);
        if let Ok(mut f) = file {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// The termination message from the end of the container's log, without the runner's notes.
    fn log_tail(&self) -> Option<String> {
        let log = std::fs::read(&self.log_file).ok()?;
        let start = log.len().saturating_sub(64 << 10);
        let text = String::from_utf8_lossy(&log[start..]);
        let own: String = text
            .lines()
            .filter(|l| !l.starts_with("--- regroup-pod-runner "))
            .map(|l| format!("{l}\n"))
            .collect();
        crate::status::message_from_log(&own)
    }

    /// Starts the container's process; the error says why it could not, with the waiting
    /// reason the kubelet would report.
    fn start(&self) -> Result<Process, (String, String)> {
        let cfg = &self.shared.config;
        let launch = spec::launch_spec(
            &self.pod,
            &self.container,
            &self.objects,
            &cfg.binaries,
            &self.dirs,
        )
        .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
        let run_error = |what: &str, path: &Path, e: std::io::Error| {
            (
                "RunContainerError".to_string(),
                format!("{what} {}: {e}", path.display()),
            )
        };
        let working_dir = launch
            .working_dir
            .clone()
            .unwrap_or_else(|| self.dirs.pod_dir.clone());
        std::fs::create_dir_all(&working_dir)
            .map_err(|e| run_error("create working directory", &working_dir, e))?;
        if let Some(parent) = self.log_file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| run_error("create log directory", parent, e))?;
        }
        self.note(&format!(
            "start {} {}",
            launch.program.display(),
            launch.args.join(" ")
        ));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| run_error("open log", &self.log_file, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| run_error("open log", &self.log_file, e))?;
        let mut env = launch.env.clone();
        if let Some(k) = &self.kubeconfig
            && !env.iter().any(|(name, _)| name == spec::KUBECONFIG_ENV)
        {
            env.push((
                spec::KUBECONFIG_ENV.to_string(),
                k.to_string_lossy().into_owned(),
            ));
        }
        let mut cmd = tokio::process::Command::new(&launch.program);
        cmd.args(&launch.args)
            .env_clear()
            .envs(
                cfg.pass_env
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&working_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal so
        // that a runner killed outright does not leave its pods' processes behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| run_error("start", &launch.program, e))?;
        let pid = child.id().unwrap_or_default();
        Ok(Process {
            child,
            pid,
            started_at: Timestamp::now(),
        })
    }
}

/// How long the processes get to stop: none when the node is lost (it crashed).
fn stop_grace(stop: Stop, pod: &Pod) -> Duration {
    if stop == Stop::Lost {
        Duration::ZERO
    } else {
        grace_period(pod)
    }
}

/// The grace period to stop the pod's processes: the deletion's, else the spec's (default 30 s).
fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// Readiness from a container's `readinessProbe` (httpGet or tcpSocket against the pod IP).
struct Prober {
    target: ProbeTarget,
    period: Duration,
    timeout: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    next_at: Instant,
    successes: u32,
    failures: u32,
    ready: bool,
    http: reqwest::Client,
}

enum ProbeTarget {
    Http(String),
    Tcp(String),
}

impl Prober {
    /// A prober for `container`, or `None` when it has no probe the runner can carry out (then
    /// the container is ready when it runs).
    fn new(container: &Container, pod_ip: &str) -> Option<Prober> {
        let probe: &Probe = container.readiness_probe.as_ref()?;
        let port_of = |port: &IntOrString| -> Option<i32> {
            match port {
                IntOrString::Int(p) => Some(*p),
                IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.container_port),
            }
        };
        let target = if let Some(h) = &probe.http_get {
            if h.scheme.as_deref().is_some_and(|s| s != "HTTP") {
                warn!(container = %container.name, "readinessProbe with scheme {:?} is not supported; treating as ready when running", h.scheme);
                return None;
            }
            let host = h.host.clone().unwrap_or_else(|| pod_ip.to_string());
            let path = h.path.clone().unwrap_or_else(|| "/".to_string());
            let path = if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            };
            ProbeTarget::Http(format!("http://{host}:{}{path}", port_of(&h.port)?))
        } else if let Some(t) = &probe.tcp_socket {
            let host = t.host.clone().unwrap_or_else(|| pod_ip.to_string());
            ProbeTarget::Tcp(format!("{host}:{}", port_of(&t.port)?))
        } else {
            warn!(container = %container.name, "only httpGet and tcpSocket readiness probes are carried out; treating as ready when running");
            return None;
        };
        let secs =
            |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
        let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_millis(100));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .ok()?;
        Some(Prober {
            target,
            period: secs(probe.period_seconds, 10).max(Duration::from_millis(100)),
            timeout,
            success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
            next_at: Instant::now() + secs(probe.initial_delay_seconds, 0),
            successes: 0,
            failures: 0,
            ready: false,
            http,
        })
    }

    async fn check(&self) -> bool {
        match &self.target {
            ProbeTarget::Http(url) => match self.http.get(url).send().await {
                Ok(r) => (200..400).contains(&r.status().as_u16()),
                Err(_) => false,
            },
            ProbeTarget::Tcp(addr) => matches!(
                tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
        }
    }

    /// Waits for the next probe time, probes, and returns the readiness.
    async fn next(&mut self) -> bool {
        tokio::time::sleep_until(self.next_at).await;
        if self.check().await {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= self.success_threshold {
                self.ready = true;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.failure_threshold {
                self.ready = false;
            }
        }
        self.next_at = Instant::now() + self.period;
        self.ready
    }
}

async fn probe_next(prober: &mut Option<Prober>) -> bool {
    match prober {
        Some(p) => p.next().await,
        None => std::future::pending().await,
    }
}

fn should_restart(policy: &str, term: &Termination) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => term.exit_code != 0,
        _ => true,
    }
}

/// Runs one container until the pod stops: start, watch, probe, restart per `policy`.
/// `stop` turns to `Some(grace period)` when the processes must stop.
async fn run_container(
    ctx: ContainerCtx,
    index: usize,
    mut record: ContainerRecord,
    policy: String,
    events: mpsc::UnboundedSender<(usize, ContainerRecord)>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let cfg = &ctx.shared.config;
    let send = |r: &ContainerRecord| {
        let _ = events.send((index, r.clone()));
    };
    let pod_ip = ctx
        .pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let stopped = |stop: &watch::Receiver<Option<Duration>>| stop.borrow().is_some();
    let mut failed_starts = 0;
    loop {
        if stopped(&stop) {
            return;
        }
        let process = match ctx.start() {
            Ok(p) => p,
            Err((reason, message)) => {
                ctx.note(&format!("cannot start: {message}"));
                warn!(pod = %pod_key(&ctx.pod), container = %ctx.container.name, %reason, %message, "cannot start container");
                record.state = RunState::Waiting {
                    reason,
                    message: Some(message),
                };
                record.ready = false;
                send(&record);
                failed_starts += 1;
                let delay = restart_delay(failed_starts, cfg.backoff_initial, cfg.backoff_max);
                if tokio::time::timeout(delay, stop.changed()).await.is_ok() {
                    return;
                }
                continue;
            }
        };
        failed_starts = 0;
        info!(pod = %pod_key(&ctx.pod), container = %ctx.container.name, pid = process.pid, "container started");
        let mut prober = Prober::new(&ctx.container, &pod_ip);
        record.state = RunState::Running {
            pid: process.pid,
            started_at: process.started_at,
        };
        record.ready = prober.is_none();
        send(&record);

        let mut process = process;
        let exit = loop {
            tokio::select! {
                status = process.child.wait() => break Some(status),
                _ = stop.changed() => break None,
                ready = probe_next(&mut prober) => {
                    if ready != record.ready {
                        record.ready = ready;
                        send(&record);
                    }
                }
            }
        };
        let Some(status) = exit else {
            let grace = stop.borrow().unwrap_or_default();
            let term = process.stop(grace).await;
            ctx.note(&format!("stopped: exit code {}", term.exit_code));
            record.state = RunState::Terminated(term);
            record.ready = false;
            send(&record);
            return;
        };
        process.signal_group(libc::SIGKILL);
        let mut term = process.termination(status);
        if term.exit_code != 0
            && ctx.container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
        {
            term.message = ctx.log_tail();
        }
        ctx.note(&format!(
            "exited: exit code {}{}",
            term.exit_code,
            term.signal
                .map(|s| format!(" (signal {s})"))
                .unwrap_or_default()
        ));
        info!(pod = %pod_key(&ctx.pod), container = %ctx.container.name, exit_code = term.exit_code, "container exited");
        record.ready = false;
        if !should_restart(&policy, &term) {
            record.state = RunState::Terminated(term);
            send(&record);
            let _ = stop.wait_for(Option::is_some).await;
            return;
        }
        let delay = restart_delay(
            record.restart_count + 1,
            cfg.backoff_initial,
            cfg.backoff_max,
        );
        record.last_termination = Some(term);
        record.state = RunState::Waiting {
            reason: "CrashLoopBackOff".to_string(),
            message: Some(format!(
                "back-off {}s restarting failed container",
                delay.as_secs()
            )),
        };
        send(&record);
        if tokio::time::timeout(delay, stop.changed()).await.is_ok() {
            return;
        }
        record.restart_count += 1;
    }
}

/// The status to build on: `base` (the pod's own) for the conditions others own, with the
/// runner's conditions as last `sent`. Only the runner's own conditions are taken from `sent`:
/// the others in it came from an earlier `base` and would pile up, report after report.
fn previous_status(mut base: PodStatus, sent: Option<&PodStatus>) -> PodStatus {
    let Some(sent) = sent else { return base };
    let owned = |c: &PodCondition| OWNED_CONDITIONS.contains(&c.type_.as_str());
    let mut conditions: Vec<PodCondition> = base
        .conditions
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !owned(c))
        .collect();
    conditions.extend(
        sent.conditions
            .iter()
            .flatten()
            .filter(|c| owned(c))
            .cloned(),
    );
    base.conditions = Some(conditions);
    base.start_time = sent.start_time.clone().or(base.start_time);
    base
}

/// Writes the pod status the runner owns, skipping writes that would change nothing.
struct Reporter {
    api: Api<Pod>,
    name: String,
    uid: String,
    gates: Vec<String>,
    last_sent: Option<PodStatus>,
}

impl Reporter {
    /// The status to build on: the pod's own (for conditions others own), with the runner's
    /// conditions as last written (the watch may not have caught up yet).
    fn previous(&self, current: Option<&Pod>) -> PodStatus {
        previous_status(
            current.and_then(|p| p.status.clone()).unwrap_or_default(),
            self.last_sent.as_ref(),
        )
    }

    async fn report(&mut self, record: &PodRecord, current: Option<&Pod>) {
        let previous = self.previous(current);
        let status = build_status(record, Some(&previous), &self.gates, Timestamp::now());
        if self.last_sent.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({ "metadata": { "uid": self.uid }, "status": status });
        for attempt in 1..=5 {
            match self
                .api
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.last_sent = Some(status);
                    return;
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                Err(e) => {
                    warn!(pod = %self.name, attempt, error = %e, "cannot write pod status");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
    }
}

async fn fetch_objects(client: &kube::Client, pod: &Pod) -> Result<PodObjects, String> {
    let mut objects = fetch_data(client, pod).await?;
    if spec::referenced_objects(pod).service_account_token {
        objects.service_account_token = service_account_token(client, pod).await;
    }
    Ok(objects)
}

/// The Secrets and ConfigMaps `pod` refers to (no service account token).
async fn fetch_data(client: &kube::Client, pod: &Pod) -> Result<PodObjects, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let refs = spec::referenced_objects(pod);
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let secrets = fetch_each(secrets, ns, &refs.secrets, |s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    })
    .await?;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let config_maps = fetch_each(config_maps, ns, &refs.config_maps, |m| {
        let text = m.data.unwrap_or_default().into_iter();
        let binary = m.binary_data.unwrap_or_default().into_iter();
        (text.map(|(k, v)| (k, v.into_bytes())))
            .chain(binary.map(|(k, v)| (k, v.0)))
            .collect()
    })
    .await?;
    Ok(PodObjects {
        secrets,
        config_maps,
        service_account_token: None,
    })
}

/// Each object of `names` in `ns` that exists, by name, its data as `data` takes it out.
async fn fetch_each<K>(
    api: Api<K>,
    ns: &str,
    names: &BTreeSet<String>,
    data: impl Fn(K) -> BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, String>
where
    K: k8s_openapi::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = BTreeMap::new();
    for name in names {
        let found = api.get_opt(name).await.map_err(|e| {
            let kind = K::KIND.to_lowercase();
            format!("get {kind} {ns}/{name}: {e}")
        })?;
        if let Some(object) = found {
            out.insert(name.clone(), data(object));
        }
    }
    Ok(out)
}

/// A token of `pod`'s service account, valid for a day.
async fn service_account_token(client: &kube::Client, pod: &Pod) -> Option<String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_string());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(24 * 3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    match accounts
        .create_token_request(&account, &PostParams::default(), &request)
        .await
    {
        Ok(t) => t.status.and_then(|s| s.token),
        Err(e) => {
            warn!(%account, error = %e, "no service account token for a projected volume");
            None
        }
    }
}

/// Writes `<pod dir>/kubeconfig` (and `ca.crt`) for the pod's service account when the pod
/// has a token (a projected serviceAccountToken volume) and the runner knows the API server.
fn write_kubeconfig(
    cfg: &RunnerConfig,
    pod: &Pod,
    dirs: &PodDirs,
    objects: &PodObjects,
) -> crate::Result<Option<PathBuf>> {
    let (Some(server), Some(token)) = (&cfg.api_server, &objects.service_account_token) else {
        return Ok(None);
    };
    std::fs::create_dir_all(&dirs.pod_dir)
        .map_err(crate::Error::io("create pod directory", &dirs.pod_dir))?;
    // The cluster's CA as every namespace has it (published by the controller-manager).
    let ca = objects
        .config_maps
        .get("kube-root-ca.crt")
        .and_then(|m| m.get("ca.crt"));
    let ca_file = match ca {
        Some(pem) => {
            let path = dirs.pod_dir.join("ca.crt");
            std::fs::write(&path, pem).map_err(crate::Error::io("write", &path))?;
            Some(path)
        }
        None => None,
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let config = spec::service_account_kubeconfig(server, ca_file.as_deref(), token, namespace);
    let path = dirs.pod_dir.join("kubeconfig");
    std::fs::write(&path, config.to_string()).map_err(crate::Error::io("write", &path))?;
    Ok(Some(path))
}

/// True when a container status says an earlier runner ran the container (kwok's stages write
/// statuses too, without a process behind them).
fn written_by_runner(status: &ContainerStatus) -> bool {
    let state = status.state.as_ref();
    let running = status
        .container_id
        .as_deref()
        .is_some_and(|id| id.starts_with("regroup-pod-runner://"));
    let stopped = state
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref())
        == Some(RUNNER_STOPPED);
    running || stopped
}

/// A record for the pod's containers, carrying restart counts over from an earlier runner:
/// a container it ran is being started again, which is a restart.
fn initial_record(pod: &Pod) -> PodRecord {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let carry = |c: &Container, previous: &Option<Vec<ContainerStatus>>, reason: &str| {
        let mut r = ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or_default(), reason);
        let earlier = previous
            .iter()
            .flatten()
            .find(|p| p.name == c.name && written_by_runner(p));
        if let Some(p) = earlier {
            r.restart_count = p.restart_count + 1;
        }
        r
    };
    PodRecord {
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| carry(c, &status.init_container_statuses, "PodInitializing"))
            .collect(),
        main: spec
            .containers
            .iter()
            .map(|c| carry(c, &status.container_statuses, "PodInitializing"))
            .collect(),
        start_time: Timestamp::now(),
        initialized: false,
        init_failed: false,
        has_ip: status.pod_ip.is_some(),
    }
}

/// Runs one pod from its first sight until it stops; the uid is sent on `done` at the end.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    mut stops: StopWatch,
    done: mpsc::UnboundedSender<String>,
) {
    let Some(pod) = stops.pod() else { return };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &ns);
    let dirs = PodDirs::new(&shared.config.state_dir, &pod);
    let mut reporter = Reporter {
        api: api.clone(),
        name: name.clone(),
        uid: uid.clone(),
        gates: pod
            .spec
            .iter()
            .flat_map(|s| s.readiness_gates.iter().flatten())
            .map(|g| g.condition_type.clone())
            .collect(),
        last_sent: None,
    };
    let mut record = initial_record(&pod);
    let terminal = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let stop = if terminal {
        // Already finished (by an earlier runner): nothing to run, only its deletion to finish.
        stops.wait().await
    } else {
        run_pod(&shared, &mut stops, &mut reporter, &mut record, &dirs).await
    };
    finish(stop, &api, &mut reporter, &mut record, &dirs, &stops).await;
    let _ = done.send(uid);
}

/// How often a running pod's Secret and ConfigMap volumes are brought up to date.
const VOLUME_REFRESH: Duration = Duration::from_secs(5);

/// Waits for the pod's IP, which kwok's address stage assigns: the update that brings it starts
/// the pod at once (its init containers are on a rescale's critical path).
async fn wait_for_address(stops: &mut StopWatch) -> Result<Pod, Stop> {
    let waited = Instant::now();
    let mut warned = false;
    loop {
        if let Some(stop) = stops.now() {
            return Err(stop);
        }
        let pod = stops.pod().expect("checked by now()");
        if pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_ref())
            .is_some()
        {
            return Ok(pod);
        }
        if !warned && waited.elapsed() > Duration::from_secs(15) {
            warn!(pod = %pod_key(&pod), "no pod IP after 15 s: is kwok's regroup-pod-address stage installed? (see e2e/kwok/stages.yaml)");
            warned = true;
        }
        if let Some(stop) = stops.change(Duration::from_secs(1)).await {
            return Err(stop);
        }
    }
}

async fn run_pod(
    shared: &Arc<Shared>,
    stops: &mut StopWatch,
    reporter: &mut Reporter,
    record: &mut PodRecord,
    dirs: &PodDirs,
) -> Stop {
    let cfg = &shared.config;
    // 1. The pod IP, assigned by kwok's address stage.
    let pod = match wait_for_address(stops).await {
        Ok(pod) => pod,
        Err(stop) => return stop,
    };
    record.has_ip = true;
    let key = pod_key(&pod);
    info!(pod = %key, ip = ?pod.status.as_ref().and_then(|s| s.pod_ip.clone()), "running pod");

    // 2. Secrets, ConfigMaps and volumes.
    let mut attempt = 0;
    let objects = loop {
        let prepared = match fetch_objects(&shared.client, &pod).await {
            Ok(objects) => volumes::prepare(&pod, dirs, &objects)
                .map(|()| objects)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match prepared {
            Ok(objects) => break Arc::new(objects),
            Err(message) => {
                warn!(pod = %key, %message, "cannot prepare pod");
                for c in record.init.iter_mut().chain(record.main.iter_mut()) {
                    c.state = RunState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(message.clone()),
                    };
                }
                reporter.report(record, stops.pod().as_ref()).await;
                attempt += 1;
                let delay = restart_delay(attempt, cfg.backoff_initial, cfg.backoff_max);
                if let Some(stop) = stops.sleep(delay).await {
                    return stop;
                }
            }
        }
    };
    let kubeconfig = match write_kubeconfig(cfg, &pod, dirs, &objects) {
        Ok(k) => k,
        Err(e) => {
            warn!(pod = %key, error = %e, "cannot write the service account's kubeconfig");
            None
        }
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let ctx_for = |container: &Container| ContainerCtx {
        shared: shared.clone(),
        pod: pod.clone(),
        container: container.clone(),
        objects: objects.clone(),
        dirs: dirs.clone(),
        log_file: cfg
            .log_dir
            .join(pod.metadata.namespace.as_deref().unwrap_or_default())
            .join(pod.metadata.name.as_deref().unwrap_or_default())
            .join(format!("{}.log", container.name)),
        kubeconfig: kubeconfig.clone(),
    };

    // 3. Init containers, one after the other, each until it succeeds.
    for (i, container) in spec.init_containers.iter().flatten().enumerate() {
        let ctx = ctx_for(container);
        loop {
            let process = match ctx.start() {
                Ok(p) => p,
                Err((reason, message)) => {
                    ctx.note(&format!("cannot start: {message}"));
                    record.init[i].state = RunState::Waiting {
                        reason,
                        message: Some(message),
                    };
                    reporter.report(record, stops.pod().as_ref()).await;
                    attempt += 1;
                    let delay = restart_delay(attempt, cfg.backoff_initial, cfg.backoff_max);
                    if let Some(stop) = stops.sleep(delay).await {
                        return stop;
                    }
                    continue;
                }
            };
            record.init[i].state = RunState::Running {
                pid: process.pid,
                started_at: process.started_at,
            };
            reporter.report(record, stops.pod().as_ref()).await;
            let mut process = process;
            let status = tokio::select! {
                status = process.child.wait() => status,
                stop = stops.wait() => {
                    let grace = stop_grace(stop, &stops.pod().unwrap_or_else(|| pod.clone()));
                    let term = process.stop(grace).await;
                    record.init[i].state = RunState::Terminated(term);
                    return stop;
                }
            };
            process.signal_group(libc::SIGKILL);
            let mut term = process.termination(status);
            if term.exit_code != 0
                && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError")
            {
                term.message = ctx.log_tail();
            }
            ctx.note(&format!("exited: exit code {}", term.exit_code));
            if term.exit_code == 0 {
                record.init[i].state = RunState::Terminated(term);
                break;
            }
            info!(pod = %key, container = %container.name, exit_code = term.exit_code, "init container failed");
            if policy == "Never" {
                record.init[i].state = RunState::Terminated(term);
                record.init_failed = true;
                reporter.report(record, stops.pod().as_ref()).await;
                return stops.wait().await;
            }
            let c = &mut record.init[i];
            let delay = restart_delay(c.restart_count + 1, cfg.backoff_initial, cfg.backoff_max);
            c.last_termination = Some(term);
            c.state = RunState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {}s restarting failed init container",
                    delay.as_secs()
                )),
            };
            reporter.report(record, stops.pod().as_ref()).await;
            if let Some(stop) = stops.sleep(delay).await {
                return stop;
            }
            record.init[i].restart_count += 1;
        }
    }
    record.initialized = true;
    for c in &mut record.main {
        c.state = RunState::waiting("ContainerCreating");
    }

    // 4. The containers, side by side, until the pod stops; started before the report of the
    // init containers' end, as a kubelet does (status writes are not on a restore's path).
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        tasks.spawn(run_container(
            ctx_for(container),
            i,
            record.main[i].clone(),
            policy.clone(),
            events_tx.clone(),
            stop_rx.clone(),
        ));
    }
    drop(events_tx);
    reporter.report(record, stops.pod().as_ref()).await;
    let mut objects = objects;
    let mut refresh = tokio::time::interval(VOLUME_REFRESH);
    refresh.tick().await;
    let stop = loop {
        tokio::select! {
            Some((i, r)) = events.recv() => {
                record.main[i] = r;
                while let Ok((i, r)) = events.try_recv() {
                    record.main[i] = r;
                }
                reporter.report(record, stops.pod().as_ref()).await;
            }
            _ = refresh.tick() => {
                // As the kubelet does: a changed Secret or ConfigMap reaches mounted volumes.
                if let Ok(mut fresh) = fetch_data(&shared.client, &pod).await
                    && (fresh.secrets != objects.secrets || fresh.config_maps != objects.config_maps)
                {
                    fresh.service_account_token = objects.service_account_token.clone();
                    match volumes::prepare(&pod, dirs, &fresh) {
                        Ok(()) => {
                            info!(pod = %key, "updated secret and configMap volumes");
                            objects = Arc::new(fresh);
                        }
                        Err(e) => warn!(pod = %key, error = %e, "cannot update volumes"),
                    }
                }
            }
            stop = stops.wait() => break stop,
        }
    };
    let grace = stop_grace(stop, &stops.pod().unwrap_or_else(|| pod.clone()));
    let _ = stop_tx.send(Some(grace));
    while let Some((i, r)) = events.recv().await {
        record.main[i] = r;
    }
    while tasks.join_next().await.is_some() {}
    stop
}

/// How long, and with which delays, the final deletion of a pod is retried when the API server
/// does not answer or answers with a server error.
const DELETE_RETRY_FOR: Duration = Duration::from_secs(60);
const DELETE_RETRY_INITIAL: Duration = Duration::from_millis(100);
const DELETE_RETRY_MAX: Duration = Duration::from_secs(5);

/// A failure worth retrying: no answer (connection, timeout), too many requests, or a server
/// error; not a refusal.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

async fn finish(
    stop: Stop,
    api: &Api<Pod>,
    reporter: &mut Reporter,
    record: &mut PodRecord,
    dirs: &PodDirs,
    stops: &StopWatch,
) {
    let name = reporter.name.clone();
    match stop {
        Stop::Deleted => {
            // Like a kubelet: the final container states, then the deletion with no grace left.
            reporter.report(record, stops.pod().as_ref()).await;
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(reporter.uid.clone()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            // A kubelet retries this until it gets through: a pod left Terminating would hold
            // its StatefulSet (and the operator waiting for it) forever.
            let retry_until = Instant::now() + DELETE_RETRY_FOR;
            let mut attempt = 0;
            loop {
                match api.delete(&name, &params).await {
                    Ok(_) => info!(pod = %name, "pod stopped and deleted"),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) if is_transient(&e) && Instant::now() < retry_until => {
                        attempt += 1;
                        let delay = restart_delay(attempt, DELETE_RETRY_INITIAL, DELETE_RETRY_MAX);
                        warn!(pod = %name, error = %e, ?delay, "cannot finish the pod's deletion; retrying");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    Err(e) => warn!(pod = %name, error = %e, "cannot finish the pod's deletion"),
                }
                break;
            }
            if let Err(e) = volumes::remove(dirs) {
                warn!(pod = %name, error = %e, "cannot remove the pod's volumes");
            }
        }
        Stop::Gone => {
            info!(pod = %name, "pod gone; processes stopped");
            if let Err(e) = volumes::remove(dirs) {
                warn!(pod = %name, error = %e, "cannot remove the pod's volumes");
            }
        }
        Stop::Lost => info!(pod = %name, "node lost: processes killed, the pod left as it is"),
        Stop::Shutdown => {
            // The processes are gone while the pod stays: say so, so nobody reads it as ready.
            // Judged by the phase last reported: stopping made every process end just now.
            let reported = reporter.last_sent.as_ref().and_then(|s| s.phase.as_deref());
            if !is_terminal(reported) && !record.init_failed {
                mark_runner_stopped(record);
                reporter.report(record, stops.pod().as_ref()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[tokio::test(start_paused = true)]
    async fn the_update_bringing_the_pod_ip_starts_the_pod_at_once() {
        let scheduled = Pod::default();
        let (pod, pod_rx) = watch::channel(Some(scheduled.clone()));
        let (_shutdown, shutdown_rx) = watch::channel(false);
        let (_lost, lost_rx) = watch::channel(false);
        let mut stops = StopWatch::new(pod_rx, shutdown_rx, lost_rx);
        let started = Instant::now();
        let addressed = Pod {
            status: Some(PodStatus {
                pod_ip: Some("127.117.0.9".into()),
                ..Default::default()
            }),
            ..scheduled
        };
        let (got, ()) = tokio::join!(wait_for_address(&mut stops), async {
            tokio::task::yield_now().await;
            pod.send_replace(Some(addressed.clone()));
        });
        assert_eq!(got.ok(), Some(addressed));
        // The clock is paused: time passes only when a timer is what wakes the wait.
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A deletion while waiting stops the wait.
        pod.send_replace(Some(Pod::default()));
        let (got, ()) = tokio::join!(wait_for_address(&mut stops), async {
            tokio::task::yield_now().await;
            pod.send_modify(|p| {
                p.as_mut().unwrap().metadata.deletion_timestamp = Some(Time(Timestamp::now()))
            });
        });
        assert_eq!(got.err(), Some(Stop::Deleted));
    }

    #[test]
    fn lost_connections_and_server_errors_are_retried_refusals_are_not() {
        let api = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert!(is_transient(&api(503)));
        assert!(is_transient(&api(429)));
        assert!(!is_transient(&api(403)));
        assert!(!is_transient(&api(422)));
        assert!(is_transient(&kube::Error::Service(
            "client error (SendRequest)".into()
        )));
    }

    #[test]
    fn conditions_of_others_do_not_pile_up_report_after_report() {
        let condition = |t: &str| PodCondition {
            type_: t.to_owned(),
            status: "True".to_owned(),
            ..Default::default()
        };
        // The pod as the API server has it: the scheduler's condition and ours.
        let mut pod = PodStatus {
            conditions: Some(vec![condition("PodScheduled"), condition("Ready")]),
            ..Default::default()
        };
        let mut sent: Option<PodStatus> = None;
        for _ in 0..20 {
            let previous = previous_status(pod.clone(), sent.as_ref());
            // What the runner writes keeps the conditions of others it built on.
            sent = Some(previous.clone());
            pod = previous;
        }
        let types: Vec<String> = pod
            .conditions
            .unwrap()
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, ["PodScheduled", "Ready"]);
    }
}
