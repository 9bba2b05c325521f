//! The Helm chart: lint (with its values schema), its CRD equals `crds/`, and an install on the
//! real API server creates what the operator needs.

mod support;

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::Api;
use support::operator::{TestNamespace, kube_with_crd};
use support::{cluster, root, run};

#[test]
fn chart_crds_are_the_generated_crds() {
    for (name, generated) in regroup::operator::crd::crd_files().unwrap() {
        let chart = std::fs::read_to_string(root().join("charts/regroup/crds").join(name))
            .unwrap_or_default();
        assert!(
            chart == generated,
            "charts/regroup/crds/{name} differs from `regroup crd --dir`; copy crds/{name} there"
        );
    }
}

#[test]
fn argocd_patch_embeds_the_health_check() {
    let lua = std::fs::read_to_string(root().join("config/argocd/health.lua")).unwrap();
    let patch = std::fs::read_to_string(root().join("config/argocd/argocd-cm-patch.yaml")).unwrap();
    let value: serde_json::Value = serde_saphyr::from_str(&patch).unwrap();
    let embedded = value["data"]["resource.customizations.health.regroup.dev_StatefulJob"]
        .as_str()
        .unwrap();
    assert_eq!(embedded.trim_end(), lua.trim_end());
}

#[test]
fn helm_lint_passes_and_the_schema_refuses_bad_values() {
    for helm in cluster::helms("helm_lint_passes_and_the_schema_refuses_bad_values") {
        lint_and_template(helm);
    }
}

/// The chart's checks with one Helm major version (`helm` is Helm 4, `helm3` Helm 3).
/// `helm lint` of `chart` with one `--set VALUE`, for values the schema must refuse.
fn lint_with(helm: &str, chart: &std::path::Path, value: &str) -> std::process::Output {
    Command::new(helm)
        .arg("lint")
        .arg(chart)
        .args(["--set", value])
        .output()
        .unwrap()
}

fn lint_and_template(helm: &str) {
    let chart = root().join("charts/regroup");
    run(Command::new(helm).arg("lint").arg("--strict").arg(&chart));
    run(Command::new(helm)
        .arg("lint")
        .arg("--strict")
        .arg(&chart)
        .args([
            "--set",
            "watchNamespaces={a,b}",
            "--set",
            "metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.podMonitor.enabled=true",
            "--set",
            "metrics.prometheusRule.enabled=true",
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
        ]));
    let out = lint_with(helm, &chart, "replicas=0");
    assert!(!out.status.success(), "replicas=0 accepted");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("replicas"), "{text}");

    // The lease's renew deadline and retry period follow leaseDuration unless set.
    let defaults = run(Command::new(helm).arg("template").arg("r").arg(&chart));
    assert!(defaults.contains("--lease-duration=15s"), "{defaults}");
    assert!(
        defaults.contains("--max-concurrent-reconciles=32"),
        "{defaults}"
    );
    let out = lint_with(helm, &chart, "maxConcurrentReconciles=-1");
    assert!(!out.status.success(), "maxConcurrentReconciles=-1 accepted");
    assert!(!defaults.contains("--lease-renew-deadline"), "{defaults}");
    assert!(!defaults.contains("--lease-retry-period"), "{defaults}");
    let timed = run(Command::new(helm)
        .arg("template")
        .arg("r")
        .arg(&chart)
        .args([
            "--set",
            "leaderElection.renewDeadline=8s",
            "--set",
            "leaderElection.retryPeriod=1500ms",
        ]));
    assert!(timed.contains("--lease-renew-deadline=8s"), "{timed}");
    assert!(timed.contains("--lease-retry-period=1500ms"), "{timed}");
    let out = lint_with(helm, &chart, "leaderElection.leaseDuration=1500ms");
    assert!(!out.status.success(), "a lease of 1500ms accepted");

    // Namespaced mode renders Roles and no ClusterRole.
    let rendered = run(Command::new(helm)
        .arg("template")
        .arg("r")
        .arg(&chart)
        .args(["--set", "watchNamespaces={team-a}"]));
    assert!(
        rendered.contains("kind: Role") && !rendered.contains("kind: ClusterRole"),
        "{rendered}"
    );
    assert!(rendered.contains("--namespace=team-a"));
    assert!(
        rendered.contains("--skip-crds"),
        "helm test reads CRDs: {rendered}"
    );

    // config/rbac (for installs without helm) grants the jobs' namespace what the chart does.
    let config = std::fs::read_to_string(root().join("config/rbac/namespaced.yaml")).unwrap();
    let chart_rules = job_role_rules(&rendered);
    assert_eq!(chart_rules, job_role_rules(&config));
    let claims = chart_rules
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resources"] == serde_json::json!(["persistentvolumeclaims"]))
        .expect("a rule for persistentvolumeclaims");
    assert_eq!(
        claims["verbs"],
        serde_json::json!(["list", "create", "delete"])
    );

    // Two replicas get a PodDisruptionBudget, one does not; users' roles aggregate; helm test
    // checks this release's operator pods and Lease.
    let docs = |args: &[&str]| -> Vec<serde_json::Value> {
        run(Command::new(helm)
            .arg("template")
            .arg("r")
            .arg(&chart)
            .args(args))
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
    };
    let kinds = |docs: &[serde_json::Value], kind: &str| -> Vec<serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).cloned().collect()
    };
    let defaults = docs(&[]);
    let pdb = kinds(&defaults, "PodDisruptionBudget");
    assert_eq!(pdb.len(), 1, "{pdb:?}");
    assert_eq!(pdb[0]["spec"]["maxUnavailable"], 1);
    assert!(kinds(&docs(&["--set", "replicas=1"]), "PodDisruptionBudget").is_empty());
    let aggregated: Vec<String> = kinds(&defaults, "ClusterRole")
        .iter()
        .filter_map(|r| r["metadata"]["labels"].as_object())
        .flat_map(|l| {
            l.keys()
                .filter(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
                .cloned()
        })
        .collect();
    for role in ["view", "edit", "admin"] {
        assert!(
            aggregated.contains(&format!("rbac.authorization.k8s.io/aggregate-to-{role}")),
            "{aggregated:?}"
        );
    }
    let test_pod = kinds(&defaults, "Pod");
    assert_eq!(test_pod.len(), 1, "{test_pod:?}");
    assert_eq!(
        test_pod[0]["metadata"]["annotations"]["helm.sh/hook"],
        "test"
    );
    // Not one of the operator's pods (its Service, PodDisruptionBudget and the check itself
    // select those).
    assert_eq!(
        test_pod[0]["metadata"]["labels"]["app.kubernetes.io/component"],
        "test"
    );
    let args = test_pod[0]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains("--operator-pods=default/app.kubernetes.io/name=regroup,app.kubernetes.io/instance=r,app.kubernetes.io/component=operator")
            && args.contains("--lease=default/regroup-operator"),
        "{args}"
    );
    assert!(kinds(&docs(&["--set", "test.enabled=false"]), "Pod").is_empty());
}

/// The rules of the Role for the jobs' namespace (not the leader election's) in a YAML stream.
#[test]
fn the_dashboard_configmap_holds_the_dashboard() {
    if !cluster::helm("the_dashboard_configmap_holds_the_dashboard") {
        return;
    }
    let chart = root().join("charts/regroup");
    let rendered = run(Command::new("helm")
        .arg("template")
        .arg("r")
        .arg(&chart)
        .args([
            "--set",
            "metrics.grafanaDashboard.enabled=true",
            "--show-only",
            "templates/grafana-dashboard.yaml",
        ]));
    let cm: serde_json::Value = serde_saphyr::from_str(&rendered).unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{cm}");
    let embedded: serde_json::Value =
        serde_json::from_str(cm["data"]["regroup.json"].as_str().unwrap()).unwrap();
    let file = std::fs::read_to_string(chart.join("dashboards/regroup.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert_eq!(embedded, file);
    // Every panel but a row queries regroup's metrics (e2e/run alerts runs each query).
    let panels = file["panels"].as_array().unwrap();
    let queries = panels.iter().filter(|p| p["type"] != "row");
    for p in queries {
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        assert!(
            !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t["expr"].as_str().is_some_and(|e| e.contains("regroup_"))),
            "{p}"
        );
    }
}

fn job_role_rules(yaml: &str) -> serde_json::Value {
    yaml.split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .find(|v| {
            v["kind"] == "Role"
                && !v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("leader-election")
        })
        .map(|v| v["rules"].clone())
        .unwrap_or_else(|| panic!("no Role in {yaml}"))
}

#[tokio::test]
async fn helm_install_creates_the_operator() {
    let Some(client) = kube_with_crd("helm_install_creates_the_operator").await else {
        return;
    };
    if cluster::helms("helm_install_creates_the_operator").is_empty() {
        return;
    }
    let ns = TestNamespace::new(&client, "regroup-helm").await;
    // Unique per run: the ClusterRole is cluster-scoped and named after the release.
    let release = format!("op-{}", ns.name.rsplit('-').next().unwrap());
    // Installed with Helm 3, upgraded with Helm 4: the path of a user who moves to Helm 4.
    run(Command::new("helm3")
        .args(["install", &release])
        .arg(root().join("charts/regroup"))
        .args(["--namespace", &ns.name, "--wait", "--timeout", "120s"]));
    let upgraded = run(Command::new("helm")
        .args(["upgrade", &release])
        .arg(root().join("charts/regroup"))
        .args(["--namespace", &ns.name, "--wait", "--timeout", "120s"]));
    assert!(upgraded.contains("helm test"), "no NOTES: {upgraded}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = deployments
        .get(&format!("{release}-regroup"))
        .await
        .unwrap();
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(2));
    let args = spec.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.contains(&"--leader-elect".to_owned()), "{args:?}");
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = roles.get(&format!("{release}-regroup")).await.unwrap();
    let rules = role.rules.unwrap();
    // Least privilege: no wildcard, secrets only get/create/patch (the job's token Secret is
    // refilled when emptied), pods read-only.
    for r in &rules {
        assert!(!r.verbs.contains(&"*".to_owned()), "{r:?}");
        assert!(
            !r.resources.as_ref().unwrap().contains(&"*".to_owned()),
            "{r:?}"
        );
    }
    let secrets = rules
        .iter()
        .find(|r| {
            r.resources
                .as_ref()
                .unwrap()
                .contains(&"secrets".to_owned())
        })
        .unwrap();
    assert_eq!(secrets.verbs, vec!["get", "create", "patch"]);
    // State claims: listed and deleted after a scale-in, never watched, created or updated.
    let claims = rules
        .iter()
        .find(|r| {
            r.resources
                .as_ref()
                .unwrap()
                .contains(&"persistentvolumeclaims".to_owned())
        })
        .expect("a rule for persistentvolumeclaims");
    assert_eq!(claims.verbs, vec!["list", "create", "delete"]);
    assert_eq!(
        claims.resources.as_deref(),
        Some(&["persistentvolumeclaims".to_owned()][..])
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let pdb = pdbs.get(&format!("{release}-regroup")).await.unwrap();
    assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    users_roles_aggregate(&client, &ns.name).await;
    run(Command::new("helm").args(["uninstall", &release, "--namespace", &ns.name]));
}

/// The built-in view role reads StatefulJobs but does not scale them; edit does.
async fn users_roles_aggregate(client: &kube::Client, ns: &str) {
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    for (user, role) in [("viewer", "view"), ("editor", "edit")] {
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": { "name": user },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }],
        }))
        .unwrap();
        bindings
            .create(&Default::default(), &binding)
            .await
            .unwrap();
    }
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    let allowed = |user: &'static str, verb: &'static str, subresource: &'static str| {
        let reviews = reviews.clone();
        let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
            "spec": { "user": user, "resourceAttributes": {
                "namespace": ns, "verb": verb, "group": "regroup.dev",
                "resource": "statefuljobs", "subresource": subresource,
            }},
        }))
        .unwrap();
        async move {
            let r = reviews.create(&Default::default(), &review).await.unwrap();
            r.status.is_some_and(|s| s.allowed)
        }
    };
    // The aggregation controller fills the built-in roles shortly after the install.
    let mut aggregated = false;
    for _ in 0..60 {
        if allowed("viewer", "list", "").await && allowed("editor", "patch", "scale").await {
            aggregated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(
        aggregated,
        "view/edit never granted regroup's resources within 30s"
    );
    assert!(!allowed("viewer", "patch", "scale").await, "view may scale");
    assert!(!allowed("viewer", "delete", "").await, "view may delete");
}

/// A JSON value as a Lua table constructor.
fn lua(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "nil".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => format!("{s:?}"),
        serde_json::Value::Array(items) => {
            format!(
                "{{{}}}",
                items.iter().map(lua).collect::<Vec<_>>().join(", ")
            )
        }
        serde_json::Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the Argo CD health check on `obj` with a Lua interpreter; `None` when there is none.
fn health(obj: serde_json::Value) -> Option<(String, String)> {
    let script = root().join("config/argocd/health.lua");
    let program = format!(
        "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status, '|', hs.message)",
        lua(&obj),
        script.display().to_string()
    );
    let out = Command::new("lua5.4")
        .arg("-e")
        .arg(&program)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('|').unwrap();
    Some((status.to_owned(), message.to_owned()))
}

#[test]
fn argocd_health_check_reads_the_conditions() {
    let condition = |t: &str, s: &str, reason: &str, message: &str| serde_json::json!({"type": t, "status": s, "reason": reason, "message": message});
    let job = |generation: i64, status: serde_json::Value| serde_json::json!({"metadata": {"generation": generation}, "status": status});
    let Some(fresh) = health(serde_json::json!({"metadata": {"generation": 1}})) else {
        eprintln!("argocd_health_check_reads_the_conditions: skipped, no lua5.4 on PATH");
        return;
    };
    assert_eq!(fresh.0, "Progressing");
    let running = job(
        2,
        serde_json::json!({"observedGeneration": 2, "phase": "Running", "conditions": [
            condition("Ready", "True", "WorkersReady", "3 workers of epoch 1 ready"),
            condition("Progressing", "False", "Stable", "no rescale in progress"),
            condition("Degraded", "False", "AsExpected", "no problem observed"),
        ]}),
    );
    assert_eq!(
        health(running.clone()).unwrap(),
        ("Healthy".into(), "3 workers of epoch 1 ready".into())
    );
    // A spec the operator has not seen yet is not healthy yet.
    let mut stale = running.clone();
    stale["metadata"]["generation"] = 3.into();
    assert_eq!(health(stale).unwrap().0, "Progressing");
    let rescaling = job(
        2,
        serde_json::json!({"observedGeneration": 2, "phase": "Restoring", "conditions": [
            condition("Ready", "False", "Restoring", "phase Restoring"),
            condition("Progressing", "True", "Restoring", "Scale: 3 -> 5 workers"),
            condition("Degraded", "False", "AsExpected", "no problem observed"),
        ]}),
    );
    assert_eq!(
        health(rescaling).unwrap(),
        ("Progressing".into(), "Scale: 3 -> 5 workers".into())
    );
    let degraded = job(
        2,
        serde_json::json!({"observedGeneration": 2, "phase": "Running", "conditions": [
            condition("Ready", "True", "WorkersReady", "ready"),
            condition("Degraded", "True", "CheckpointAborted", "checkpoint 7 aborted"),
        ]}),
    );
    assert_eq!(
        health(degraded).unwrap(),
        (
            "Degraded".into(),
            "CheckpointAborted: checkpoint 7 aborted".into()
        )
    );
    let suspended = job(
        2,
        serde_json::json!({"observedGeneration": 2, "phase": "Suspended", "conditions": []}),
    );
    assert_eq!(health(suspended).unwrap().0, "Suspended");
}
