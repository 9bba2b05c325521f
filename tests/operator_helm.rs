//! The Helm chart: lint (with its values schema), its CRD equals `crds/`, and an install on the
//! real API server creates what the operator needs.

mod operator_support;

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::Api;
use operator_support::{TestNamespace, cluster, root, run};

#[test]
fn chart_crd_is_the_generated_crd() {
    let chart =
        std::fs::read_to_string(root().join("charts/regroup/crds/statefuljob.yaml")).unwrap();
    let generated = regroup::operator::crd::crd_yaml().unwrap();
    assert!(
        chart == generated,
        "charts/regroup/crds/statefuljob.yaml differs from `regroup crd`; copy crds/statefuljob.yaml there"
    );
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

fn helm_available(test: &str) -> bool {
    let found = Command::new("helm")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !std::env::var("REGROUP_REQUIRE_CLUSTER").is_ok_and(|v| v == "1"),
            "{test}: helm is not on PATH (eval \"$(e2e/cluster env)\")"
        );
        eprintln!("{test}: skipped, helm is not on PATH");
    }
    found
}

#[test]
fn helm_lint_passes_and_the_schema_refuses_bad_values() {
    if !helm_available("helm_lint_passes_and_the_schema_refuses_bad_values") {
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
}

#[tokio::test]
async fn helm_install_creates_the_operator() {
    let Some(client) = cluster("helm_install_creates_the_operator").await else {
        return;
    };
    if !helm_available("helm_install_creates_the_operator") {
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
    // Least privilege: no wildcard, secrets only get/create, pods read-only.
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
    assert_eq!(secrets.verbs, vec!["get", "create"]);
    run(Command::new("helm").args(["uninstall", &release, "--namespace", &ns.name]));
}
