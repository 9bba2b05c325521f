//! The Helm chart: lint (with its values schema), its CRD equals `crds/`, and an install on the
//! real API server creates what the operator needs.

mod support;

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
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
    if !cluster::helm("helm_lint_passes_and_the_schema_refuses_bad_values") {
        return;
    }
    let chart = root().join("charts/regroup");
    run(Command::new("helm").arg("lint").arg("--strict").arg(&chart));
    run(Command::new("helm")
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
    let out = Command::new("helm")
        .arg("lint")
        .arg(&chart)
        .args(["--set", "replicas=0"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "replicas=0 accepted");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("replicas"), "{text}");

    // The lease's renew deadline and retry period follow leaseDuration unless set.
    let defaults = run(Command::new("helm").arg("template").arg("r").arg(&chart));
    assert!(defaults.contains("--lease-duration=15s"), "{defaults}");
    assert!(!defaults.contains("--lease-renew-deadline"), "{defaults}");
    assert!(!defaults.contains("--lease-retry-period"), "{defaults}");
    let timed = run(Command::new("helm")
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
    let out = Command::new("helm")
        .arg("lint")
        .arg(&chart)
        .args(["--set", "leaderElection.leaseDuration=1500ms"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a lease of 1500ms accepted");

    // Namespaced mode renders Roles and no ClusterRole.
    let rendered = run(Command::new("helm")
        .arg("template")
        .arg("r")
        .arg(&chart)
        .args(["--set", "watchNamespaces={team-a}"]));
    assert!(
        rendered.contains("kind: Role") && !rendered.contains("kind: ClusterRole"),
        "{rendered}"
    );
    assert!(rendered.contains("--namespace=team-a"));

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
    assert_eq!(claims["verbs"], serde_json::json!(["list", "delete"]));
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
    if !cluster::helm("helm_install_creates_the_operator") {
        return;
    }
    let ns = TestNamespace::new(&client, "regroup-helm").await;
    // Unique per run: the ClusterRole is cluster-scoped and named after the release.
    let release = format!("op-{}", ns.name.rsplit('-').next().unwrap());
    run(Command::new("helm")
        .args(["install", &release])
        .arg(root().join("charts/regroup"))
        .args(["--namespace", &ns.name, "--wait", "--timeout", "120s"]));
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
    assert_eq!(claims.verbs, vec!["list", "delete"]);
    assert_eq!(
        claims.resources.as_deref(),
        Some(&["persistentvolumeclaims".to_owned()][..])
    );
    run(Command::new("helm").args(["uninstall", &release, "--namespace", &ns.name]));
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
