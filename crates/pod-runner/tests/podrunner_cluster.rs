//! The pod runner against the test cluster of `e2e/` (kube-apiserver, controller-manager,
//! scheduler, kwok with fake nodes):
//!
//! ```sh
//! e2e/cluster up && eval "$(e2e/cluster env)"
//! cargo test --test podrunner_cluster
//! ```
//!
//! Each test starts its own `regroup-pod-runner` limited to a fresh namespace and to pods
//! labelled `regroup.dev/runner=<namespace>`, which a runner with the default selector leaves
//! alone: tests and a cluster-wide runner do not run each other's pods. The containers are Python's
//! `http.server` and small Python scripts, mapped with `--binary python3=...`: they serve on the
//! pod IP, so a test can reach them there; pod IPs must come from the cluster's range,
//! `REGROUP_E2E_POD_CIDR` (set by `e2e/cluster env`). Without `KUBECONFIG` the tests say why and
//! pass; `REGROUP_REQUIRE_CLUSTER=1` turns that into a failure. The pods go to nodes labelled
//! `type=kwok`, or `type=$REGROUP_PODRUNNER_TEST_NODE_TYPE` (to try other kwok stages on nodes
//! of a kwok of one's own, with `REGROUP_E2E_POD_CIDR` set to its `--cidr`; the test pods
//! tolerate every taint).

// Only the two leaf modules of `tests/support/`: this test needs neither the `regroup` binary
// nor its library, which the other support modules use.
#[allow(dead_code)]
#[path = "../../../tests/support/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../../../tests/support/poll.rs"]
mod poll;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateTerminated, ContainerStatus, Namespace, Pod, Secret,
};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use poll::eventually_ok;
use serde_json::json;

/// The `type` label of the nodes the test pods go to.
fn node_type() -> String {
    std::env::var("REGROUP_PODRUNNER_TEST_NODE_TYPE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "kwok".to_string())
}

/// The cluster's pod address range, from `e2e/cluster env` (each cluster has its own).
fn pod_cidr() -> anyhow::Result<ipnet::Ipv4Net> {
    let var = "REGROUP_E2E_POD_CIDR";
    let value = std::env::var(var).with_context(|| {
        format!("{var} is not set: load the cluster's environment with eval \"$(e2e/cluster env)\"")
    })?;
    value
        .parse()
        .with_context(|| format!("{var} = {value:?} is not an IPv4 range (e.g. 127.93.0.0/16)"))
}

/// The real Python interpreter (not a pyenv shim, which needs its own environment).
fn python() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("python3 is needed for the pod runner tests")?;
    ensure!(out.status.success(), "python3 failed: {out:?}");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// A `regroup-pod-runner` for one namespace, stopped with SIGTERM when dropped.
struct Runner {
    child: Child,
    dir: tempfile::TempDir,
    namespace: String,
}

impl Runner {
    fn start(namespace: &str) -> anyhow::Result<Runner> {
        let dir = tempfile::tempdir()?;
        let child = Self::spawn(dir.path(), namespace)?;
        Ok(Runner {
            child,
            dir,
            namespace: namespace.to_string(),
        })
    }

    fn spawn(dir: &Path, namespace: &str) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("runner.log"))?;
        Command::new(env!("CARGO_BIN_EXE_regroup-pod-runner"))
            .arg("--binary")
            .arg(format!("python3={}", python()?.display()))
            .arg("--namespace")
            .arg(namespace)
            .arg("--selector")
            .arg(format!(
                "regroup.dev/run-locally=true,regroup.dev/runner={namespace}"
            ))
            .arg("--node-selector")
            .arg(format!("type={}", node_type()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--log-dir")
            .arg(dir.join("logs"))
            .args(["--backoff-initial", "500ms", "--backoff-max", "2s"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start regroup-pod-runner")
    }

    /// A new runner process on the same state and log directories (after `stop`).
    fn restart(&mut self) -> anyhow::Result<()> {
        self.child = Self::spawn(self.dir.path(), &self.namespace)?;
        Ok(())
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log_of(&self, ns: &str, pod: &str, container: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("logs")
                .join(ns)
                .join(pod)
                .join(format!("{container}.log")),
        )
        .unwrap_or_default()
    }

    /// Everything the runner and its processes wrote, for a failing test's output.
    fn dump(&self) {
        for entry in walk(self.dir.path()) {
            if entry.extension().is_some_and(|e| e == "log") {
                eprintln!("===== {} =====", entry.display());
                eprintln!("{}", std::fs::read_to_string(&entry).unwrap_or_default());
            }
        }
    }

    /// SIGTERM, and the runner's exit status.
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("the runner did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop();
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

async fn create_namespace(client: &kube::Client, prefix: &str) -> anyhow::Result<String> {
    let name = format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    // Pods are refused until the controller-manager has made the default service account.
    let accounts =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &name);
    eventually_ok(
        "service account default",
        Duration::from_secs(60),
        || async { Ok(accounts.get_opt("default").await?.map(|_| ())) },
    )
    .await?;
    Ok(name)
}

/// Deletes the namespace and waits until it is gone (its pods are finalized by the runner)
/// and the runner has reclaimed the volumes of its claims.
async fn delete_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually_ok("namespace deleted", Duration::from_secs(120), || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await?;
    let volumes = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone());
    eventually_ok(
        "volumes of the namespace's claims deleted",
        Duration::from_secs(60),
        || async {
            let left = volumes
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|v| {
                    let claim = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                    claim.and_then(|c| c.namespace.as_deref()) == Some(name)
                });
            Ok((left.count() == 0).then_some(()))
        },
    )
    .await
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn container_pid(pod: &Pod, index: usize) -> Option<i32> {
    pod.status.as_ref()?.container_statuses.as_ref()?[index]
        .container_id
        .as_deref()?
        .strip_prefix("regroup-pod-runner://")?
        .parse()
        .ok()
}

fn restart_count(pod: &Pod) -> Option<i32> {
    Some(pod.status.as_ref()?.container_statuses.as_ref()?[0].restart_count)
}

/// The first of `statuses` (a pod's init or main containers'); `what` names them in the error
/// when there is none.
fn first<'a>(
    statuses: Option<&'a Vec<ContainerStatus>>,
    what: &str,
) -> anyhow::Result<&'a ContainerStatus> {
    statuses.and_then(|s| s.first()).context(what.to_owned())
}

/// The terminated state in `state` (a container's current or last one); `what` names it in the
/// error when it is another.
fn terminated<'a>(
    state: Option<&'a ContainerState>,
    what: &str,
) -> anyhow::Result<&'a ContainerStateTerminated> {
    state
        .and_then(|s| s.terminated.as_ref())
        .context(what.to_owned())
}

/// Waits until the pod `name` is in `phase` (`Succeeded`, `Failed`) and returns it.
async fn pod_in_phase(pods: &Api<Pod>, name: &str, phase: &str) -> anyhow::Result<Pod> {
    eventually_ok(
        &format!("pod {name} {phase}"),
        Duration::from_secs(120),
        || async {
            let p = pods.get(name).await?;
            let now = p.status.as_ref().and_then(|s| s.phase.clone());
            Ok((now.as_deref() == Some(phase)).then_some(p))
        },
    )
    .await
}

fn is_alive(pid: i32) -> bool {
    // A stopped process is reaped by the runner, so it disappears from /proc.
    Path::new(&format!("/proc/{pid}")).exists()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

async fn get(url: &str) -> anyhow::Result<String> {
    let r = http().get(url).send().await?;
    ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    Ok(r.text().await?)
}

/// Waits until the pod `name` (optionally a different incarnation than `not_uid`) is Ready
/// with the runner's status, and returns it.
async fn ready_pod(pods: &Api<Pod>, name: &str, not_uid: Option<&str>) -> anyhow::Result<Pod> {
    eventually_ok(
        &format!("pod {name} Ready"),
        Duration::from_secs(120),
        || async {
            let Some(p) = pods.get_opt(name).await? else {
                return Ok(None);
            };
            let fresh = not_uid.is_none_or(|u| p.metadata.uid.as_deref() != Some(u));
            let ready = condition(&p, "Ready").as_deref() == Some("True");
            Ok((fresh && ready && container_pid(&p, 0).is_some()).then_some(p))
        },
    )
    .await
}

fn web_statefulset(ns: &str, name: &str) -> anyhow::Result<StatefulSet> {
    // Writes the page and the token into the emptyDir, and counts the pod's starts in its claim.
    let init_script = "import os, shutil, sys\n\
        www, token, data = sys.argv[1:4]\n\
        open(www + '/index.html', 'w').write(os.environ['POD_NAME'] + ':' + os.environ['GREETING'])\n\
        shutil.copy(token, www + '/token')\n\
        boots = data + '/boots'\n\
        n = int(open(boots).read()) + 1 if os.path.exists(boots) else 1\n\
        open(boots, 'w').write(str(n))\n\
        shutil.copy(boots, www + '/boots')\n";
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "regroup-local",
                    "resources": {"requests": {"storage": "1Gi"}}
                }
            }],
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "regroup.dev/run-locally": "true", "regroup.dev/runner": ns}},
                "spec": {
                    "nodeSelector": {"type": node_type()},
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": 5,
                    "volumes": [
                        {"name": "www", "emptyDir": {}},
                        {"name": "secret", "secret": {"secretName": "web-token"}}
                    ],
                    "initContainers": [{
                        "name": "prepare",
                        "image": "python:3",
                        "command": ["python3", "-c", init_script, "/www", "/secret/token", "/data"],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "greeting"}}}
                        ],
                        "volumeMounts": [
                            {"name": "www", "mountPath": "/www"},
                            {"name": "secret", "mountPath": "/secret", "readOnly": true},
                            {"name": "data", "mountPath": "/data"}
                        ]
                    }],
                    "containers": [{
                        "name": "web",
                        "image": "python:3",
                        "command": ["python3"],
                        "args": ["-m", "http.server", "--bind", "$(POD_IP)", "--directory", "/www", "8080"],
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "PYTHONUNBUFFERED", "value": "1"}
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {
                            "httpGet": {"path": "/index.html", "port": "http"},
                            "periodSeconds": 1
                        },
                        "volumeMounts": [{"name": "www", "mountPath": "/www"}]
                    }]
                }
            }
        }
    }))?)
}

/// Runs `scenario` against a runner of its own in a fresh namespace (named `prefix-…`), then
/// deletes the namespace and stops the runner: each must succeed, and the runner's logs are
/// shown when something failed. Without a cluster `test` is skipped (see `tests/support/cluster.rs`).
async fn with_runner(
    test: &str,
    prefix: &str,
    scenario: impl AsyncFnOnce(&kube::Client, &str, &mut Runner) -> anyhow::Result<()>,
) {
    let Some(client) = cluster::kube(test).await else {
        return;
    };
    let ns = create_namespace(&client, prefix).await.expect("namespace");
    let mut runner = Runner::start(&ns).expect("runner");
    let result = scenario(&client, &ns, &mut runner).await;
    // Only a running runner finishes the pods' deletion.
    if runner.child.try_wait().ok().flatten().is_some() {
        runner.restart().expect("restart runner for cleanup");
    }
    let cleanup = delete_namespace(&client, &ns).await;
    let stopped = runner.stop();
    if result.is_err() || cleanup.is_err() {
        runner.dump();
    }
    result.expect("scenario");
    cleanup.expect("namespace cleanup (pods finalized by the runner)");
    let status = stopped.expect("runner stops on SIGTERM");
    assert!(status.success(), "runner exit status {status}");
}

#[tokio::test]
async fn statefulset_pods_run_restart_and_stop() {
    with_runner(
        "statefulset_pods_run_restart_and_stop",
        "podrunner-sts",
        statefulset_scenario,
    )
    .await;
}

async fn statefulset_scenario(
    client: &kube::Client,
    ns: &str,
    runner: &mut Runner,
) -> anyhow::Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "web-token"}, "stringData": {"token": "t0ken-42"}
    }))?;
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "web-config"}, "data": {"greeting": "hello"}
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await?;
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &web_statefulset(ns, "web")?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // Both replicas run, with the runner's status, and serve on their own pod IPs.
    let mut ips = BTreeMap::new();
    for name in ["web-0", "web-1"] {
        let pod = ready_pod(&pods, name, None).await?;
        let status = pod.status.clone().unwrap_or_default();
        ensure!(
            status.phase.as_deref() == Some("Running"),
            "{name} phase {:?}",
            status.phase
        );
        let ip = status.pod_ip.clone().context("pod IP")?;
        let range = pod_cidr()?;
        ensure!(
            ip.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| range.contains(&ip)),
            "{name} pod IP {ip} is not in the cluster's pod range {range}"
        );
        let init = first(status.init_container_statuses.as_ref(), "init statuses")?;
        let done = terminated(init.state.as_ref(), "init terminated")?;
        ensure!(
            done.exit_code == 0 && done.reason.as_deref() == Some("Completed"),
            "init: {done:?}"
        );
        ensure!(
            restart_count(&pod) == Some(0),
            "restarts: {:?}",
            restart_count(&pod)
        );
        let page = get(&format!("http://{ip}:8080/index.html")).await?;
        ensure!(page == format!("{name}:hello"), "{name} served {page:?}");
        let token = get(&format!("http://{ip}:8080/token")).await?;
        ensure!(token == "t0ken-42", "{name} served token {token:?}");
        let boots = get(&format!("http://{ip}:8080/boots")).await?;
        ensure!(boots == "1", "{name} boots {boots:?}");
        let log = runner.log_of(ns, name, "web");
        ensure!(
            log.contains(&format!("Serving HTTP on {ip} port 8080")),
            "web log: {log}"
        );
        ips.insert(name, ip);
    }
    ensure!(
        ips["web-0"] != ips["web-1"],
        "two pods share an IP: {ips:?}"
    );

    // A killed process is restarted, counted, and its end recorded.
    let pod = pods.get("web-0").await?;
    let pid = container_pid(&pod, 0).context("pid")?;
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let restarted = eventually_ok(
        "web-0 restarted and Ready",
        Duration::from_secs(120),
        || async {
            let p = pods.get("web-0").await?;
            let ready = condition(&p, "Ready").as_deref() == Some("True");
            let new_pid = container_pid(&p, 0).is_some_and(|n| n != pid);
            Ok((ready && new_pid && restart_count(&p) == Some(1)).then_some(p))
        },
    )
    .await?;
    let statuses = restarted
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref();
    let cs = first(statuses, "statuses")?;
    let last = terminated(cs.last_state.as_ref(), "lastState.terminated")?;
    ensure!(
        last.exit_code == 137 && last.signal == Some(9),
        "lastState: {last:?}"
    );
    ensure!(!is_alive(pid), "the killed process {pid} is still there");
    let page = get(&format!("http://{}:8080/index.html", ips["web-0"])).await?;
    ensure!(page == "web-0:hello", "after restart web-0 served {page:?}");

    // A deleted pod's processes stop, its volumes go, and it is gone from the API; the
    // StatefulSet's new web-0 runs again.
    let old = pods.get("web-1").await?;
    let old_uid = old.metadata.uid.clone().context("uid")?;
    let old_pid = container_pid(&old, 0).context("pid")?;
    let pod_dir = runner
        .state_dir()
        .join("pods")
        .join(format!("{ns}_web-1_{old_uid}"));
    ensure!(pod_dir.is_dir(), "no pod directory {}", pod_dir.display());
    pods.delete("web-1", &DeleteParams::default()).await?;
    eventually_ok("old web-1 gone", Duration::from_secs(60), || async {
        let p = pods.get_opt("web-1").await?;
        Ok(
            p.is_none_or(|p| p.metadata.uid.as_deref() != Some(&old_uid))
                .then_some(()),
        )
    })
    .await?;
    // With kwok's stages for runner pods the runner deletes the pod only after its processes
    // stopped; with kwok's generic delete stage the pod may go first, so wait for both.
    eventually_ok(
        "processes and volumes of the deleted pod gone",
        Duration::from_secs(60),
        || async { Ok((!is_alive(old_pid) && !pod_dir.exists()).then_some(())) },
    )
    .await?;
    let log = runner.log_of(ns, "web-1", "web");
    ensure!(
        log.contains("stopped: exit code 143"),
        "web-1 log has no SIGTERM stop: {log}"
    );
    let new = ready_pod(&pods, "web-1", Some(&old_uid)).await?;
    ensure!(
        restart_count(&new) == Some(0),
        "new web-1 restarts {:?}",
        restart_count(&new)
    );
    // The new pod has the old one's claim (its count goes on) and a fresh emptyDir.
    let ip = new.status.and_then(|s| s.pod_ip).context("pod IP")?;
    let boots = get(&format!("http://{ip}:8080/boots")).await?;
    ensure!(boots == "2", "new web-1 boots {boots:?}");

    // The runner stops on SIGTERM: its processes end and the pods say so (not ready). The
    // next runner starts them again, counting the restart.
    let before = pods.get("web-1").await?;
    let pid = container_pid(&before, 0).context("pid")?;
    let status = runner.stop()?;
    ensure!(status.success(), "runner exit status {status}");
    ensure!(!is_alive(pid), "process {pid} outlived the runner");
    let stopped = pods.get("web-1").await?;
    let statuses = stopped.status.as_ref().context("status")?;
    let cs = first(statuses.container_statuses.as_ref(), "statuses")?;
    let waiting = cs
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .context("waiting state")?;
    ensure!(
        waiting.reason.as_deref() == Some("RunnerStopped"),
        "state {waiting:?}"
    );
    ensure!(
        condition(&stopped, "Ready").as_deref() == Some("False"),
        "still Ready after the runner stopped"
    );
    runner.restart()?;
    let again = ready_pod(&pods, "web-1", None).await?;
    ensure!(
        restart_count(&again) == Some(1),
        "restarts after runner restart: {:?}",
        restart_count(&again)
    );
    Ok(())
}

fn bare_pod(
    ns: &str,
    name: &str,
    node: &str,
    restart_policy: &str,
    init_script: &str,
) -> anyhow::Result<Pod> {
    // The claim `data` is a name only (no PersistentVolumeClaim object): the runner maps
    // claims by name. nodeName is set directly, as the scheduler would wait for the claim.
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"regroup.dev/run-locally": "true", "regroup.dev/runner": ns}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 2,
            "volumes": [
                {"name": "work", "emptyDir": {}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}
            ],
            "initContainers": [{
                "name": "count",
                "image": "python:3",
                "command": ["python3", "-c", init_script, "/work", "/data"],
                "volumeMounts": [
                    {"name": "work", "mountPath": "/work"},
                    {"name": "data", "mountPath": "/data"}
                ]
            }],
            "containers": [{
                "name": "serve",
                "image": "python:3",
                "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", "--directory", "/data", "8081"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "readinessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }]
        }
    }))?)
}

/// A pod that lists Secrets with its service account's kubeconfig (which may not: 403).
fn whoami_pod(ns: &str, node: &str) -> anyhow::Result<Pod> {
    let script = "import json, os, ssl, urllib.request, urllib.error\n\
        k = json.load(open(os.environ['KUBECONFIG']))\n\
        c = k['clusters'][0]['cluster']\n\
        token = k['users'][0]['user']['token']\n\
        ns = k['contexts'][0]['context']['namespace']\n\
        ctx = ssl.create_default_context(cafile=c['certificate-authority'])\n\
        url = c['server'] + '/api/v1/namespaces/' + ns + '/secrets'\n\
        req = urllib.request.Request(url, headers={'Authorization': 'Bearer ' + token})\n\
        try:\n    print('status', urllib.request.urlopen(req, context=ctx).status)\n\
        except urllib.error.HTTPError as e:\n    print('status', e.code, e.read().decode())\n";
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "whoami", "labels": {"regroup.dev/run-locally": "true", "regroup.dev/runner": ns}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "restartPolicy": "Never",
            "containers": [{
                "name": "ask",
                "image": "python:3",
                "command": ["python3", "-c", script],
                "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}]
            }]
        }
    }))?)
}

/// Fails on its first run in a pod (a marker in the pod's emptyDir), then counts its
/// successful runs in the claim.
const FLAKY_COUNTER: &str = "import os, sys\n\
    marker = sys.argv[1] + '/tried'\n\
    if not os.path.exists(marker):\n    open(marker, 'w').close()\n    sys.exit(3)\n\
    path = sys.argv[2] + '/count'\n\
    n = int(open(path).read()) if os.path.exists(path) else 0\n\
    open(path, 'w').write(str(n + 1))\n";

#[tokio::test]
async fn init_failures_retry_or_fail_and_claims_outlive_pods() {
    with_runner(
        "init_failures_retry_or_fail_and_claims_outlive_pods",
        "podrunner-init",
        async |client, ns, runner| init_scenario(client, ns, runner).await,
    )
    .await;
}

async fn kwok_node(client: &kube::Client) -> anyhow::Result<String> {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&kube::api::ListParams::default().labels(&format!("type={}", node_type())))
        .await?;
    nodes
        .items
        .first()
        .and_then(|n| n.metadata.name.clone())
        .with_context(|| format!("no node labelled type={}", node_type()))
}

async fn init_scenario(client: &kube::Client, ns: &str, runner: &Runner) -> anyhow::Result<()> {
    let node = kwok_node(client).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);

    // restartPolicy Always: the failed init container is retried, then the pod runs.
    for round in 1..=2 {
        let name = format!("counter-{round}");
        pods.create(
            &PostParams::default(),
            &bare_pod(ns, &name, &node, "Always", FLAKY_COUNTER)?,
        )
        .await?;
        let pod = ready_pod(&pods, &name, None).await?;
        let status = pod.status.clone().unwrap_or_default();
        let init = first(status.init_container_statuses.as_ref(), "init statuses")?;
        ensure!(
            init.restart_count == 1,
            "init restarts {}",
            init.restart_count
        );
        let last = terminated(init.last_state.as_ref(), "init lastState")?;
        ensure!(last.exit_code == 3, "init lastState {last:?}");
        // The claim keeps what every pod that used it wrote.
        let ip = status.pod_ip.context("pod IP")?;
        let count = get(&format!("http://{ip}:8081/count")).await?;
        ensure!(count == round.to_string(), "round {round}: count {count:?}");
        pods.delete(&name, &DeleteParams::default()).await?;
        eventually_ok("pod deleted", Duration::from_secs(60), || async {
            Ok(pods.get_opt(&name).await?.is_none().then_some(()))
        })
        .await?;
    }

    // A process talks to the API server as the pod's service account, through the kubeconfig
    // the runner gives it; it ends with exit 0, so the pod (restartPolicy Never) Succeeds.
    pods.create(&PostParams::default(), &whoami_pod(ns, &node)?)
        .await?;
    pod_in_phase(&pods, "whoami", "Succeeded").await?;
    let log = runner.log_of(ns, "whoami", "ask");
    ensure!(
        log.contains("status 403") && log.contains(&format!("system:serviceaccount:{ns}:default")),
        "the API server did not see the pod's service account: {log}"
    );

    // restartPolicy Never: the first init failure fails the pod, and nothing else runs.
    pods.create(
        &PostParams::default(),
        &bare_pod(ns, "once", &node, "Never", FLAKY_COUNTER)?,
    )
    .await?;
    let failed = pod_in_phase(&pods, "once", "Failed").await?;
    let status = failed.status.unwrap_or_default();
    let init = first(status.init_container_statuses.as_ref(), "init statuses")?;
    let term = terminated(init.state.as_ref(), "init terminated")?;
    ensure!(
        term.exit_code == 3 && term.reason.as_deref() == Some("Error"),
        "init {term:?}"
    );
    let main = first(status.container_statuses.as_ref(), "container statuses")?;
    ensure!(
        main.state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_none(),
        "main ran: {main:?}"
    );
    ensure!(
        condition_is(&status, "Initialized", "False"),
        "Initialized should be False"
    );
    Ok(())
}

fn condition_is(status: &k8s_openapi::api::core::v1::PodStatus, type_: &str, value: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == value)
}
