//! `kubectl regroup report`: a tarball for a bug report: the job and what regroup made for it,
//! its snapshots, Events, the status screen, the store's listing, and the logs of its workers
//! and of the operator. No Secret's data goes in: Secrets appear as their key names only,
//! environment values with credential-like names are replaced, and every value of the job's
//! Secrets is scrubbed from all text, logs included. Redaction is pure ([`redact`], [`scrub`]).

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use super::cluster::Cluster;
use super::status;
use crate::inventory;
use crate::operator::resources::JOB_LABEL;
use crate::operator::snapshot::StatefulJobSnapshot;

/// What replaces a redacted value.
pub const REDACTED: &str = "<redacted>";
/// Lines of each container's log.
const LOG_LINES: i64 = 5000;
/// Label selector of the operator's pods (the chart's).
const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=regroup,app.kubernetes.io/component=operator";
/// Secret values shorter than this are not scrubbed from text (they would match everywhere).
const MIN_SCRUBBED: usize = 6;

/// Whether an environment variable or key of this name holds a credential.
pub fn looks_like_credential(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "TOKEN",
        "CREDENTIAL",
        "ACCESS_KEY",
        "PRIVATE_KEY",
        "API_KEY",
        "ACCOUNT_KEY",
        "SAS",
        "AUTH",
    ]
    .iter()
    .any(|w| upper.contains(w))
}

/// Redacts an object for the report: managed fields and last-applied annotations go (they
/// repeat the spec), and every `{name, value}` pair (container env) with a credential-like
/// name gets [`REDACTED`] as its value.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
                if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                    a.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
            }
            let credential = map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(looks_like_credential);
            if credential && map.get("value").is_some_and(Value::is_string) {
                map.insert("value".to_owned(), Value::String(REDACTED.to_owned()));
            }
            for v in map.values_mut() {
                redact(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `text` with every secret value of `secrets` (long enough to be one) replaced.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= MIN_SCRUBBED) {
        out = out.replace(s.as_str(), REDACTED);
    }
    out
}

/// A Secret as the report shows it: its name, type and key names, never its data.
pub fn secret_outline(secret: &Secret) -> Value {
    let mut keys: Vec<&String> = secret
        .data
        .iter()
        .flat_map(|d| d.keys())
        .chain(secret.string_data.iter().flat_map(|d| d.keys()))
        .collect();
    keys.sort();
    keys.dedup();
    serde_json::json!({
        "name": secret.name_any(),
        "type": secret.type_,
        "keys": keys,
        "values": REDACTED,
    })
}

/// Every value of `secret`, to scrub from text.
pub fn secret_values(secret: &Secret) -> Vec<String> {
    let mut out: Vec<String> = secret
        .data
        .iter()
        .flat_map(|d| d.values())
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .chain(secret.string_data.iter().flat_map(|d| d.values().cloned()))
        .collect();
    // Longest first: a value that contains another is replaced whole.
    out.sort_by_key(|v| std::cmp::Reverse(v.len()));
    out
}

/// One file of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// Path inside the tarball's directory.
    pub path: String,
    /// Its content.
    #[serde(skip)]
    pub content: Vec<u8>,
}

/// Writes `entries` below directory `root` as a gzip-compressed tarball.
pub fn write_tarball(
    out: impl Write,
    root: &str,
    entries: &[Entry],
    mtime: u64,
) -> std::io::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for e in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(e.content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(mtime);
        header.set_cksum();
        tar.append_data(
            &mut header,
            format!("{root}/{}", e.path),
            e.content.as_slice(),
        )?;
    }
    tar.into_inner()?.finish()?.flush()
}

/// What `report` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    /// The tarball.
    pub file: String,
    /// The files in it.
    pub entries: Vec<String>,
    /// What could not be gathered, and why.
    pub missing: Vec<String>,
}

/// Collects the entries of a report, scrubbing every text with the secret values.
struct Collector {
    entries: Vec<Entry>,
    missing: Vec<String>,
    secrets: Vec<String>,
}

impl Collector {
    fn text(&mut self, path: &str, text: &str) {
        self.entries.push(Entry {
            path: path.to_owned(),
            content: scrub(text, &self.secrets).into_bytes(),
        });
    }

    fn yaml<T: Serialize>(&mut self, path: &str, objects: &[T]) {
        let mut docs = Vec::new();
        for o in objects {
            match serde_json::to_value(o) {
                Ok(mut v) => {
                    redact(&mut v);
                    match serde_saphyr::to_string(&v) {
                        Ok(y) => docs.push(y),
                        Err(e) => self.missing.push(format!("{path}: {e}")),
                    }
                }
                Err(e) => self.missing.push(format!("{path}: {e}")),
            }
        }
        self.text(path, &docs.join("---\n"));
    }

    fn missed(&mut self, what: &str, e: impl std::fmt::Display) {
        self.missing.push(format!("{what}: {e}"));
    }

    /// Every container log of `pod` into `dir`/POD/CONTAINER.log, or why not.
    async fn logs(&mut self, api: &Api<Pod>, dir: &str, pod: &Pod) {
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .chain(spec.containers)
            .map(|c| c.name);
        for c in containers {
            let params = LogParams {
                container: Some(c.clone()),
                tail_lines: Some(LOG_LINES),
                ..Default::default()
            };
            let path = format!("{dir}/{}/{c}.log", pod.name_any());
            // A node that does not answer must not hold the report up.
            match tokio::time::timeout(Duration::from_secs(15), api.logs(&pod.name_any(), &params))
                .await
            {
                Ok(Ok(log)) => self.text(&path, &log),
                Ok(Err(kube::Error::Api(status))) => {
                    self.missed(&format!("log {path}"), &status.message)
                }
                Ok(Err(e)) => self.missed(&format!("log {path}"), e),
                Err(_) => self.missed(&format!("log {path}"), "no answer within 15s"),
            }
        }
    }
}

/// Gathers the report of job `name` and writes it to `file` (default:
/// `regroup-report-NS-NAME-TIME.tar.gz`).
pub async fn run(
    cluster: &Cluster,
    name: &str,
    file: Option<std::path::PathBuf>,
) -> anyhow::Result<Written> {
    let ns = cluster.namespace.clone();
    let job = cluster.job(name).await?;
    let now = Timestamp::now();
    let root = format!(
        "regroup-report-{ns}-{name}-{}",
        now.strftime("%Y%m%d-%H%M%S")
    );
    let file = file.unwrap_or_else(|| format!("{root}.tar.gz").into());
    let mut c = Collector {
        entries: Vec::new(),
        missing: Vec::new(),
        secrets: Vec::new(),
    };
    // Secrets first: their values are scrubbed from everything after.
    let secrets: Api<Secret> = cluster.api();
    let mut outlines = Vec::new();
    let names = job
        .spec
        .storage
        .secret_ref
        .iter()
        .map(|r| r.name.clone())
        .chain([crate::operator::resources::token_secret_name(&job)]);
    for s in names {
        match secrets.get_opt(&s).await {
            Ok(Some(secret)) => {
                c.secrets.extend(secret_values(&secret));
                outlines.push(secret_outline(&secret));
            }
            Ok(None) => c.missed(&format!("Secret {s}"), "not found"),
            Err(e) => c.missed(&format!("Secret {s}"), e),
        }
    }
    c.secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
    c.yaml("secrets.yaml", &outlines);
    c.yaml("statefuljob.yaml", std::slice::from_ref(&job));
    match status::one(cluster, name).await {
        Ok(s) => c.text("status.txt", &s.render()),
        Err(e) => c.missed("status.txt", format!("{e:#}")),
    }
    let by_job = ListParams::default().labels(&format!("{JOB_LABEL}={name}"));
    let pods: Vec<Pod> = match cluster.api::<Pod>().list(&by_job).await {
        Ok(l) => l.items,
        Err(e) => {
            c.missed("pods", e);
            Vec::new()
        }
    };
    c.yaml("pods.yaml", &pods);
    match cluster.api::<StatefulSet>().get_opt(name).await {
        Ok(Some(s)) => c.yaml("statefulset.yaml", &[s]),
        Ok(None) => c.missed(
            "statefulset.yaml",
            "no StatefulSet (the job runs no workers)",
        ),
        Err(e) => c.missed("statefulset.yaml", e),
    }
    match cluster.api::<PersistentVolumeClaim>().list(&by_job).await {
        Ok(l) => c.yaml("claims.yaml", &l.items),
        Err(e) => c.missed("claims.yaml", e),
    }
    let mut involved: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    involved.push(name.to_owned());
    match cluster
        .api::<StatefulJobSnapshot>()
        .list(&ListParams::default())
        .await
    {
        Ok(l) => {
            let mine: Vec<_> = l.items.into_iter().filter(|s| s.spec.job == name).collect();
            involved.extend(mine.iter().map(|s| s.name_any()));
            c.yaml("snapshots.yaml", &mine);
        }
        Err(e) => c.missed("snapshots.yaml", e),
    }
    // Events about the job and what it owns: pods, StatefulSet (its name), claims, snapshots.
    let claim_prefix = format!("{}-{name}-", crate::operator::resources::STATE_VOLUME);
    match cluster.api::<Event>().list(&ListParams::default()).await {
        Ok(l) => {
            let mut events: Vec<Event> = l
                .items
                .into_iter()
                .filter(|e| {
                    e.involved_object
                        .name
                        .as_ref()
                        .is_some_and(|n| involved.contains(n) || n.starts_with(&claim_prefix))
                })
                .collect();
            events.sort_by_key(|e| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
            c.yaml("events.yaml", &events);
        }
        Err(e) => c.missed("events.yaml", e),
    }
    match cluster.store(&job).await {
        Ok(js) => match js.within(inventory::checkpoint_rows(&js.store)).await {
            Ok(rows) => c.text(
                "checkpoints.txt",
                &inventory::rows_text(&rows, &js.store.job().to_string(), js.store.url()),
            ),
            Err(e) => c.missed("checkpoints.txt", e),
        },
        Err(e) => c.missed("checkpoints.txt", format!("{e:#}")),
    }
    let pod_api = cluster.api::<Pod>();
    for p in &pods {
        c.logs(&pod_api, "logs/workers", p).await;
    }
    let operators = Api::<Pod>::all(cluster.client.clone());
    match operators
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await
    {
        Ok(l) => {
            c.yaml("operator/pods.yaml", &l.items);
            for p in &l.items {
                let api = Api::<Pod>::namespaced(
                    cluster.client.clone(),
                    &p.namespace().unwrap_or_default(),
                );
                c.logs(&api, "logs/operator", p).await;
            }
        }
        Err(e) => c.missed("operator pods (all namespaces)", e),
    }
    let missing = c.missing.clone();
    c.text(
        "missing.txt",
        &if missing.is_empty() {
            "nothing\n".to_owned()
        } else {
            missing.join("\n") + "\n"
        },
    );
    let out =
        std::fs::File::create(&file).with_context(|| format!("creating {}", file.display()))?;
    write_tarball(out, &root, &c.entries, now.as_second().max(0) as u64)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(Written {
        file: file.display().to_string(),
        entries: c
            .entries
            .iter()
            .map(|e| format!("{root}/{}", e.path))
            .collect(),
        missing,
    })
}

impl Written {
    /// The text `report` prints.
    pub fn text(&self) -> String {
        let mut out = format!("wrote {} ({} files)\n", self.file, self.entries.len());
        if !self.missing.is_empty() {
            out.push_str("not included (also in missing.txt):\n");
            for m in &self.missing {
                out.push_str(&format!("  {m}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;
    use std::io::Read;

    #[test]
    fn credentials_are_redacted() {
        let mut pod = serde_json::json!({
            "metadata": {"name": "wc-0", "managedFields": [{"manager": "x"}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "keep": "me"}},
            "spec": {"containers": [{"name": "worker", "env": [
                {"name": "AWS_SECRET_ACCESS_KEY", "value": "s3cr3t-value"},
                {"name": "REGROUP_RATE", "value": "300"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            ]}]}
        });
        redact(&mut pod);
        let env = &pod["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["value"], REDACTED);
        assert_eq!(env[1]["value"], "300");
        assert!(env[2]["valueFrom"].is_object());
        assert!(pod["metadata"].get("managedFields").is_none());
        assert_eq!(
            pod["metadata"]["annotations"],
            serde_json::json!({"keep": "me"})
        );
    }

    #[test]
    fn secrets_show_keys_only_and_their_values_are_scrubbed() {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("wc-s3".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (
                    "AWS_SECRET_ACCESS_KEY".into(),
                    ByteString(b"very-secret-key".to_vec()),
                ),
                ("AWS_REGION".into(), ByteString(b"us".to_vec())),
            ])),
            ..Default::default()
        };
        let outline = serde_json::to_string(&secret_outline(&secret)).unwrap();
        assert!(outline.contains("AWS_SECRET_ACCESS_KEY") && !outline.contains("very-secret-key"));
        let values = secret_values(&secret);
        let text = "endpoint us; key very-secret-key in the log";
        // Short values ("us") are left: they would match everywhere.
        assert_eq!(
            scrub(text, &values),
            "endpoint us; key <redacted> in the log"
        );
    }

    #[test]
    fn tarball_holds_the_entries_below_its_root() {
        let entries = vec![
            Entry {
                path: "statefuljob.yaml".into(),
                content: b"kind: StatefulJob\n".to_vec(),
            },
            Entry {
                path: "logs/workers/wc-0/worker.log".into(),
                content: b"started\n".to_vec(),
            },
        ];
        let mut buf = Vec::new();
        write_tarball(&mut buf, "r", &entries, 0).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(buf.as_slice()));
        let mut seen = Vec::new();
        for f in archive.entries().unwrap() {
            let mut f = f.unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            seen.push((f.path().unwrap().display().to_string(), s));
        }
        assert_eq!(
            seen,
            vec![
                (
                    "r/statefuljob.yaml".to_owned(),
                    "kind: StatefulJob\n".to_owned()
                ),
                (
                    "r/logs/workers/wc-0/worker.log".to_owned(),
                    "started\n".to_owned()
                ),
            ]
        );
    }
}
