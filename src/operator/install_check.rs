//! `regroup check`: whether an installation works (the chart's `helm test`). Helm never
//! upgrades `crds/`, so the CRDs in the cluster can lag behind the operator; this says so.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use crate::error::{Error, Result};

/// `regroup check`
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// The operator's pods as NAMESPACE/LABEL-SELECTOR, e.g.
    /// regroup-system/app.kubernetes.io/name=regroup: each one's /healthz must answer.
    #[arg(long)]
    pub operator_pods: Option<String>,
    /// The port of the operator's /healthz (its metrics port).
    #[arg(long, default_value_t = 8080)]
    pub metrics_port: u16,
    /// The leader Lease as NAMESPACE/NAME: some replica must renew it.
    #[arg(long)]
    pub lease: Option<String>,
    /// Do not compare the installed CRDs (for installs that may not read them).
    #[arg(long)]
    pub skip_crds: bool,
    /// How long to wait for the operator and a Lease renewal, e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = crate::args::parse_duration)]
    pub timeout: Duration,
}

/// Where an installed CRD differs from the one this binary was built with, as a JSON path and
/// what is there; `None` when it serves the same versions with the same schemas.
pub fn crd_drift(
    installed: &CustomResourceDefinition,
    expected: &CustomResourceDefinition,
) -> Option<String> {
    for version in &expected.spec.versions {
        let Some(found) = installed
            .spec
            .versions
            .iter()
            .find(|v| v.name == version.name)
        else {
            return Some(format!("version {} is not served", version.name));
        };
        if !found.served {
            return Some(format!("version {} has served: false", version.name));
        }
        let want = serde_json::to_value(&version.schema).unwrap_or(Value::Null);
        let have = serde_json::to_value(&found.schema).unwrap_or(Value::Null);
        if let Some(path) = first_difference(&have, &want, String::new()) {
            return Some(format!(
                "the schema of version {} differs at {path}",
                version.name
            ));
        }
    }
    None
}

/// The first path (in key order) where `have` and `want` differ, with what `have` lacks or
/// holds instead.
fn first_difference(have: &Value, want: &Value, path: String) -> Option<String> {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => {
            let mut keys: Vec<&String> = h.keys().chain(w.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let at = format!("{path}.{k}");
                match (h.get(k), w.get(k)) {
                    (Some(a), Some(b)) => first_difference(a, b, at),
                    (None, Some(_)) => Some(format!("{at} (missing in the cluster)")),
                    _ => Some(format!("{at} (unknown to this version)")),
                }
            })
        }
        (Value::Array(h), Value::Array(w)) if h.len() == w.len() => h
            .iter()
            .zip(w)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(a, b, format!("{path}[{i}]"))),
        _ if have == want => None,
        _ => Some(format!("{path} (is {have}, expected {want})")),
    }
}

/// Runs every check, printing one line per passed check; the first failure is the error.
pub async fn run(args: CheckArgs) -> Result<()> {
    let client = Client::try_default()
        .await
        .map_err(|e| Error::Other(format!("cannot configure the Kubernetes client: {e}")))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let version = env!("CARGO_PKG_VERSION");
    let expected = if args.skip_crds {
        Vec::new()
    } else {
        vec![
            crate::operator::crd::crd(),
            crate::operator::crd::snapshot_crd(),
        ]
    };
    for expected in expected {
        let name = expected.metadata.name.clone().unwrap_or_default();
        let installed = crds.get_opt(&name).await.map_err(|e| {
            Error::Other(format!("cannot read CustomResourceDefinition {name}: {e}"))
        })?;
        let Some(installed) = installed else {
            return Err(Error::Other(format!(
                "CustomResourceDefinition {name} is not installed: kubectl apply --server-side -f crds/ of regroup {version}"
            )));
        };
        if let Some(drift) = crd_drift(&installed, &expected) {
            return Err(Error::Other(format!(
                "CustomResourceDefinition {name} is not regroup {version}'s: {drift}. Helm does not upgrade CRDs: apply this release's crds/ (docs/install.md#upgrades)"
            )));
        }
        println!("ok: CustomResourceDefinition {name} is regroup {version}'s");
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    if let Some(pods) = &args.operator_pods {
        let n = healthz(&client, pods, args.metrics_port, deadline, args.timeout).await?;
        println!("ok: {n} operator pod(s) {pods} answer /healthz");
    }
    if let Some(lease) = &args.lease {
        let holder = renewed(&client, lease, deadline, args.timeout).await?;
        println!("ok: Lease {lease} is renewed by {holder}");
    }
    Ok(())
}

/// Waits until every pod matching `pods` (NAMESPACE/SELECTOR) answers /healthz on `port`;
/// returns how many.
async fn healthz(
    client: &Client,
    pods: &str,
    port: u16,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<usize> {
    let (ns, selector) = pods.split_once('/').ok_or_else(|| {
        Error::Other(format!(
            "--operator-pods {pods:?} is not NAMESPACE/LABEL-SELECTOR"
        ))
    })?;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Other(format!("cannot build an HTTP client: {e}")))?;
    loop {
        let listed = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| Error::Other(format!("cannot list pods {pods}: {e}")))?;
        let mut failing = Vec::new();
        for pod in &listed.items {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let answer = match &ip {
                None => Err("no pod IP yet".to_owned()),
                Some(ip) => match http.get(format!("http://{ip}:{port}/healthz")).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                },
            };
            if let Err(why) = answer {
                failing.push(format!("{}: {why}", pod.name_any()));
            }
        }
        if failing.is_empty() && !listed.items.is_empty() {
            return Ok(listed.items.len());
        }
        if tokio::time::Instant::now() >= deadline {
            let what = if listed.items.is_empty() {
                "no pod matches".to_owned()
            } else {
                failing.join("; ")
            };
            return Err(Error::Other(format!(
                "the operator pods {pods} did not all answer /healthz on port {port} within {timeout:?} ({what}): see kubectl get pods and the operator's logs"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the Lease changes (a renewal; clocks are never compared) and returns its holder.
async fn renewed(
    client: &Client,
    lease: &str,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<String> {
    let (ns, name) = lease
        .split_once('/')
        .ok_or_else(|| Error::Other(format!("--lease {lease:?} is not NAMESPACE/NAME")))?;
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let get = || async {
        api.get_opt(name)
            .await
            .map_err(|e| Error::Other(format!("cannot read Lease {lease}: {e}")))
    };
    let first = get().await?.and_then(|l| l.metadata.resource_version);
    loop {
        if let Some(l) = get().await?
            && l.metadata.resource_version != first
            && let Some(holder) = l
                .spec
                .and_then(|s| s.holder_identity)
                .filter(|h| !h.is_empty())
        {
            return Ok(holder);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Other(format!(
                "no replica renewed Lease {lease} within {timeout:?}: no operator is leading; see the operator's logs"
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::crd;

    #[test]
    fn the_generated_crd_has_no_drift_from_itself() {
        assert_eq!(crd_drift(&crd(), &crd()), None);
    }

    #[test]
    fn a_field_missing_in_the_cluster_is_named() {
        let mut old = serde_json::to_value(crd()).unwrap();
        old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            .as_object_mut()
            .unwrap()
            .remove("rollout");
        let old: CustomResourceDefinition = serde_json::from_value(old).unwrap();
        let drift = crd_drift(&old, &crd()).unwrap();
        assert!(
            drift.contains(
                ".openAPIV3Schema.properties.spec.properties.rollout (missing in the cluster)"
            ),
            "{drift}"
        );
    }

    #[test]
    fn a_version_not_served_is_named() {
        let mut old = crd();
        old.spec.versions[0].served = false;
        let drift = crd_drift(&old, &crd()).unwrap();
        assert!(drift.contains("served: false"), "{drift}");
    }
}
