//! From a pod's spec to what a local process needs: the binary, the arguments, the environment
//! and where each mount path really is. Pure: the Secrets and ConfigMaps a pod refers to are
//! fetched beforehand into [`PodObjects`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use crate::{Error, Result};

/// Label that marks a pod as run by the pod runner (and skipped by kwok's status stages).
pub const RUN_LOCALLY_LABEL: &str = "regroup.dev/run-locally";

/// Label that reserves a pod for one particular runner (a test's own); the default runner
/// selector leaves such pods alone, so two runners never run the same pod.
pub const RUNNER_LABEL: &str = "regroup.dev/runner";

/// Environment variable through which a process learns where each mount path really is.
pub const MOUNTS_ENV: &str = "REGROUP_MOUNTS";

/// Local binaries that stand in for container commands: `command[0]` → an executable here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinaryTable(BTreeMap<String, PathBuf>);

impl BinaryTable {
    /// Parses `NAME=PATH` entries (the `--binary` flag).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self> {
        let mut table = BTreeMap::new();
        for entry in entries {
            let entry = entry.as_ref();
            let (name, path) = entry.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "--binary",
                    entry,
                    "NAME=PATH, e.g. regroup=/path/to/target/debug/regroup",
                )
            })?;
            if name.is_empty() || path.is_empty() {
                return Err(Error::invalid(
                    "--binary",
                    entry,
                    "a non-empty NAME and PATH on either side of '='",
                ));
            }
            if table
                .insert(name.to_string(), PathBuf::from(path))
                .is_some()
            {
                return Err(Error::invalid(
                    "--binary",
                    entry,
                    format!("each NAME once; {name} is given twice"),
                ));
            }
        }
        Ok(BinaryTable(table))
    }

    /// The local binary for a container's `command[0]`: matched as written, then by its file
    /// name (so `/usr/local/bin/regroup` finds the entry `regroup`).
    pub fn resolve(&self, command: &str) -> Result<&Path> {
        let by_name = Path::new(command)
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| self.0.get(n));
        self.0
            .get(command)
            .or(by_name)
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                Error::invalid(
                    "command[0]",
                    command,
                    format!(
                        "a command mapped with --binary NAME=PATH (mapped: {})",
                        self.names()
                    ),
                )
            })
    }

    /// The mapped names, comma-separated, for messages.
    pub fn names(&self) -> String {
        if self.0.is_empty() {
            return "none".to_string();
        }
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// The table's entries.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.0.iter().map(|(n, p)| (n.as_str(), p.as_path()))
    }
}

/// The data of the Secrets and ConfigMaps a pod refers to, fetched before its containers start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodObjects {
    /// Secret name → key → bytes.
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// ConfigMap name → key → value (`data` and `binaryData` together).
    pub config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// A token of the pod's service account, for projected `serviceAccountToken` sources.
    pub service_account_token: Option<String>,
}

/// Names of the Secrets and ConfigMaps a pod refers to (env, envFrom, volumes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRefs {
    /// Secret names.
    pub secrets: BTreeSet<String>,
    /// ConfigMap names.
    pub config_maps: BTreeSet<String>,
    /// A projected volume wants a service account token.
    pub service_account_token: bool,
}

/// The Secrets and ConfigMaps a pod refers to.
pub fn referenced_objects(pod: &Pod) -> ObjectRefs {
    let mut refs = ObjectRefs::default();
    let Some(spec) = &pod.spec else { return refs };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(s) = &from.secret_key_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &from.config_map_key_ref {
                refs.config_maps.insert(m.name.clone());
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(s) = &e.secret_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &e.config_map_ref {
                refs.config_maps.insert(m.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(s);
        }
        if let Some(m) = &v.config_map {
            refs.config_maps.insert(m.name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &source.secret {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &source.config_map {
                refs.config_maps.insert(m.name.clone());
            }
            refs.service_account_token |= source.service_account_token.is_some();
        }
    }
    refs
}

/// The value of a downward-API `fieldRef` path of `pod`.
pub fn field_value(pod: &Pod, field_path: &str) -> Result<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let quoted = |prefix: &str| {
        field_path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(str::to_string)
    };
    let value = match field_path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        "status.podIPs" => status.and_then(|s| s.pod_ips.as_ref()).map(|ips| {
            ips.iter()
                .map(|i| i.ip.clone())
                .collect::<Vec<_>>()
                .join(",")
        }),
        "status.hostIPs" => status.and_then(|s| s.host_ips.as_ref()).map(|ips| {
            ips.iter()
                .map(|i| i.ip.clone())
                .collect::<Vec<_>>()
                .join(",")
        }),
        _ => {
            if let Some(key) = quoted("metadata.labels['") {
                // A missing label is an empty value, as the kubelet gives it.
                Some(
                    meta.labels
                        .as_ref()
                        .and_then(|l| l.get(&key).cloned())
                        .unwrap_or_default(),
                )
            } else if let Some(key) = quoted("metadata.annotations['") {
                Some(
                    meta.annotations
                        .as_ref()
                        .and_then(|a| a.get(&key).cloned())
                        .unwrap_or_default(),
                )
            } else {
                return Err(Error::invalid(
                    "fieldRef.fieldPath",
                    field_path,
                    "one of metadata.name, metadata.namespace, metadata.uid, \
                     metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, \
                     spec.serviceAccountName, status.podIP, status.podIPs, status.hostIP, \
                     status.hostIPs",
                ));
            }
        }
    };
    Ok(value.unwrap_or_default())
}

/// Expands `$(NAME)` references to earlier variables, as Kubernetes does in env values, command
/// and args: an undefined reference stays as written, `$$` is a literal `$`.
pub fn expand(input: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(close) => {
                    let name = &inner[..close];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[close + 1..];
                }
                None => {
                    out.push_str(&rest[at..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `found`, or `None` when it is missing but `optional`; missing and not optional, the error
/// `missing` makes.
pub(crate) fn existing<T>(
    found: Option<T>,
    optional: Option<bool>,
    missing: impl FnOnce() -> Error,
) -> Result<Option<T>> {
    match found {
        Some(v) => Ok(Some(v)),
        None if optional.unwrap_or(false) => Ok(None),
        None => Err(missing()),
    }
}

fn utf8(bytes: &[u8], what: impl FnOnce() -> String) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::invalid(what(), "(binary data)", "UTF-8 text for an env value"))
}

/// The container's environment in definition order: `envFrom` sources first, then `env`
/// (later definitions win), every value `$(VAR)`-expanded against the ones before it.
/// A missing Secret, ConfigMap or key that is not `optional` is an error naming it.
pub fn resolve_env(
    pod: &Pod,
    container: &Container,
    objects: &PodObjects,
) -> Result<Vec<(String, String)>> {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut index: HashMap<String, String> = HashMap::new();
    let set = |vars: &mut Vec<(String, String)>,
               index: &mut HashMap<String, String>,
               name: String,
               value: String| {
        vars.retain(|(n, _)| *n != name);
        index.insert(name.clone(), value.clone());
        vars.push((name, value));
    };
    let field = |f: &str| format!("containers[{}].{f}", container.name);

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(s) = &source.secret_ref {
            (
                objects.secrets.get(&s.name),
                s.optional,
                format!("secret {}", s.name),
            )
        } else if let Some(m) = &source.config_map_ref {
            (
                objects.config_maps.get(&m.name),
                m.optional,
                format!("configmap {}", m.name),
            )
        } else {
            continue;
        };
        let missing = || {
            Error::invalid(
                field("envFrom"),
                &what,
                "an existing object (or optional: true)",
            )
        };
        for (k, v) in existing(data, optional, missing)?.into_iter().flatten() {
            let v = utf8(v, || field(&format!("envFrom {what} key {k}")))?;
            set(&mut vars, &mut index, format!("{prefix}{k}"), v);
        }
    }

    for e in container.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (_, Some(from)) => {
                // A key of a Secret or ConfigMap: its data, name, key, optional, reference kind.
                let key_ref = if let Some(s) = &from.secret_key_ref {
                    let data = objects.secrets.get(&s.name);
                    Some((data, &s.name, &s.key, s.optional, "secret"))
                } else if let Some(m) = &from.config_map_key_ref {
                    let data = objects.config_maps.get(&m.name);
                    Some((data, &m.name, &m.key, m.optional, "configMap"))
                } else {
                    None
                };
                if let Some(f) = &from.field_ref {
                    Some(field_value(pod, &f.field_path)?)
                } else if let Some((data, name, key, optional, kind)) = key_ref {
                    let missing = || {
                        Error::invalid(
                            field(&format!("env {}.valueFrom.{kind}KeyRef", e.name)),
                            format!("{name}/{key}"),
                            format!(
                                "an existing {} and key (or optional: true)",
                                kind.to_lowercase()
                            ),
                        )
                    };
                    let found = data.and_then(|d| d.get(key));
                    let value = existing(found, optional, missing)?;
                    value
                        .map(|v| utf8(v, || field(&format!("env {}", e.name))))
                        .transpose()?
                } else {
                    return Err(Error::invalid(
                        field(&format!("env {}.valueFrom", e.name)),
                        "resourceFieldRef/fileKeyRef",
                        "fieldRef, secretKeyRef or configMapKeyRef (all the pod runner supports)",
                    ));
                }
            }
            (Some(v), None) => Some(expand(v, &index)),
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            set(&mut vars, &mut index, e.name.clone(), value);
        }
    }
    Ok(vars)
}

/// Where one mount path of a container really is on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The container's `mountPath`, without a trailing `/`.
    pub container_path: String,
    /// The directory (or file, with `subPath`) standing in for it.
    pub host_path: PathBuf,
}

/// The mounts of one container. Processes here share the machine's file system, so a mount
/// is carried out by rewriting: every occurrence of a mount path at the start of a path in the
/// command, the args, the env values and `workingDir` is replaced by its real directory, and
/// `REGROUP_MOUNTS` lists the pairs for paths the process builds itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountTable(Vec<Mount>);

/// Characters after which a path may begin inside an argument (`--dir=/state`, `a:/b`).
const PATH_STARTS_AFTER: &[char] = &['=', ':', ',', ' ', '\t', '"', '\''];

impl MountTable {
    /// A table from mounts; the longest mount path is tried first so nested mounts win.
    pub fn new(mut mounts: Vec<Mount>) -> Self {
        mounts.sort_by(|a, b| {
            b.container_path
                .len()
                .cmp(&a.container_path.len())
                .then_with(|| a.container_path.cmp(&b.container_path))
        });
        MountTable(mounts)
    }

    /// The mounts, longest mount path first.
    pub fn mounts(&self) -> &[Mount] {
        &self.0
    }

    /// `s` with each mount path that begins a path (at the start, or after `=`, `:`, `,`,
    /// a blank or a quote) and ends at `/`, one of those separators or the end replaced by its
    /// real directory. `/statefoo` is not under the mount `/state`.
    pub fn rewrite(&self, s: &str) -> String {
        if self.0.is_empty() {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        let mut at_start = true;
        while i < s.len() {
            if at_start && let Some((m, len)) = self.match_at(&s[i..]) {
                out.push_str(&m.host_path.to_string_lossy());
                i += len;
                at_start = false;
                continue;
            }
            let c = s[i..].chars().next().expect("i is on a char boundary");
            out.push(c);
            at_start = PATH_STARTS_AFTER.contains(&c);
            i += c.len_utf8();
        }
        out
    }

    fn match_at(&self, s: &str) -> Option<(&Mount, usize)> {
        self.0.iter().find_map(|m| {
            let rest = s.strip_prefix(m.container_path.as_str())?;
            let ends =
                rest.is_empty() || rest.starts_with('/') || rest.starts_with(PATH_STARTS_AFTER);
            ends.then_some((m, m.container_path.len()))
        })
    }

    /// The value of `REGROUP_MOUNTS`: `MOUNT_PATH=REAL_DIR` pairs separated by newlines.
    pub fn env_value(&self) -> String {
        self.0
            .iter()
            .map(|m| format!("{}={}", m.container_path, m.host_path.display()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Where the pod runner keeps pod volumes and claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDirs {
    /// The runner's state directory.
    pub state_dir: PathBuf,
    /// `<state>/pods/<namespace>_<name>_<uid>`: volumes of this pod, removed with it.
    pub pod_dir: PathBuf,
    /// The pod's namespace (claims are per namespace).
    pub namespace: String,
}

impl PodDirs {
    /// The directories of `pod` under `state_dir`.
    pub fn new(state_dir: &Path, pod: &Pod) -> Self {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        PodDirs {
            state_dir: state_dir.to_path_buf(),
            pod_dir: state_dir
                .join("pods")
                .join(format!("{namespace}_{name}_{uid}")),
            namespace,
        }
    }

    /// A pod-lifetime volume (emptyDir, secret, configMap, downwardAPI, projected).
    pub fn volume(&self, name: &str) -> PathBuf {
        self.pod_dir.join("volumes").join(name)
    }

    /// A claim's directory: `<state>/claims/<namespace>/<claim>`, kept after the pod is gone.
    pub fn claim(&self, claim: &str) -> PathBuf {
        self.state_dir
            .join("claims")
            .join(&self.namespace)
            .join(claim)
    }

    /// The real location of a volume of the pod, or an error for an unsupported kind.
    pub fn volume_source(&self, volume: &Volume) -> Result<PathBuf> {
        if volume.empty_dir.is_some()
            || volume.secret.is_some()
            || volume.config_map.is_some()
            || volume.downward_api.is_some()
            || volume.projected.is_some()
        {
            Ok(self.volume(&volume.name))
        } else if let Some(pvc) = &volume.persistent_volume_claim {
            check_name("persistentVolumeClaim.claimName", &pvc.claim_name)?;
            Ok(self.claim(&pvc.claim_name))
        } else if let Some(h) = &volume.host_path {
            Ok(PathBuf::from(&h.path))
        } else {
            Err(Error::invalid(
                format!("volumes[{}]", volume.name),
                "(volume source)",
                "emptyDir, secret, configMap, downwardAPI, projected, persistentVolumeClaim or hostPath",
            ))
        }
    }

    /// The mount table of `container`.
    pub fn mounts(&self, pod: &Pod, container: &Container) -> Result<MountTable> {
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut mounts = Vec::new();
        for vm in container.volume_mounts.iter().flatten() {
            let field = format!("containers[{}].volumeMounts[{}]", container.name, vm.name);
            let volume = volumes.iter().find(|v| v.name == vm.name).ok_or_else(|| {
                Error::invalid(&field, &vm.name, "the name of one of the pod's volumes")
            })?;
            let container_path = vm.mount_path.trim_end_matches('/').to_string();
            if !container_path.starts_with('/') {
                return Err(Error::invalid(
                    format!("{field}.mountPath"),
                    &vm.mount_path,
                    "an absolute path other than /",
                ));
            }
            let mut host_path = self.volume_source(volume)?;
            if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                let relative = Path::new(sub)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_)));
                if !relative {
                    return Err(Error::invalid(
                        format!("{field}.subPath"),
                        sub,
                        "a relative path without '..'",
                    ));
                }
                host_path = host_path.join(sub);
            }
            mounts.push(Mount {
                container_path,
                host_path,
            });
        }
        Ok(MountTable::new(mounts))
    }
}

/// Names used as directory names must be one plain path component.
fn check_name(field: &str, name: &str) -> Result<()> {
    let mut parts = Path::new(name).components();
    let plain = matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    );
    if plain {
        Ok(())
    } else {
        Err(Error::invalid(field, name, "a plain object name"))
    }
}

/// Environment variable naming the kubeconfig a process uses (kube-rs, client-go, kubectl).
pub const KUBECONFIG_ENV: &str = "KUBECONFIG";

/// The kubeconfig that stands in for a pod's service account: the in-cluster address
/// (`kubernetes.default.svc`) does not lead anywhere here, and the token and CA files are not
/// at their fixed paths, so processes get the API server's real address, the CA file and the
/// service account's token through `KUBECONFIG`. They act with the pod's own RBAC.
pub fn service_account_kubeconfig(
    server: &str,
    ca_file: Option<&Path>,
    token: &str,
    namespace: &str,
) -> serde_json::Value {
    let mut cluster = serde_json::json!({ "server": server });
    if let Some(ca) = ca_file {
        cluster["certificate-authority"] = ca.to_string_lossy().into();
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "cluster", "cluster": cluster }],
        "users": [{ "name": "service-account", "user": { "token": token } }],
        "contexts": [{
            "name": "pod",
            "context": { "cluster": "cluster", "user": "service-account", "namespace": namespace }
        }],
        "current-context": "pod",
    })
}

/// Everything needed to start one container as a local process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The local binary.
    pub program: PathBuf,
    /// Arguments after `command[0]`, expanded and rewritten.
    pub args: Vec<String>,
    /// Environment of the process (the pod's env, rewritten, plus `REGROUP_MOUNTS`).
    pub env: Vec<(String, String)>,
    /// Working directory, rewritten; `None` for the pod's own directory.
    pub working_dir: Option<PathBuf>,
}

/// The launch spec of `container`: `command[0]` through the binary table, then the rest of
/// `command` and `args`, `$(VAR)`-expanded against the container's env and rewritten by its mounts.
pub fn launch_spec(
    pod: &Pod,
    container: &Container,
    objects: &PodObjects,
    binaries: &BinaryTable,
    dirs: &PodDirs,
) -> Result<LaunchSpec> {
    let command = container.command.as_deref().unwrap_or_default();
    let Some(first) = command.first() else {
        return Err(Error::invalid(
            format!("containers[{}].command", container.name),
            "(unset)",
            "a command: the pod runner cannot read an image's entrypoint",
        ));
    };
    let program = binaries.resolve(first)?.to_path_buf();
    let mounts = dirs.mounts(pod, container)?;
    let env = resolve_env(pod, container, objects)?;
    let index: HashMap<String, String> = env.iter().cloned().collect();
    let args = command[1..]
        .iter()
        .chain(container.args.iter().flatten())
        .map(|a| mounts.rewrite(&expand(a, &index)))
        .collect();
    let mut env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            let v = mounts.rewrite(&v);
            (k, v)
        })
        .collect();
    env.push((MOUNTS_ENV.to_string(), mounts.env_value()));
    let working_dir = container
        .working_dir
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(mounts.rewrite(d)));
    Ok(LaunchSpec {
        program,
        args,
        env,
        working_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{claim_volume, empty_dir_volume, mount, secret_volume};
    use k8s_openapi::api::core::v1::{
        EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector, PodIP, PodSpec, PodStatus,
        SecretEnvSource, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("worker-1".into()),
                namespace: Some("jobs".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "wc".to_string())].into()),
                annotations: Some([("a/b".to_string(), "x y".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("kwok-node-0".into()),
                volumes: Some(vec![
                    claim_volume("state", "state-worker-1"),
                    empty_dir_volume("scratch"),
                    secret_volume("token", "tok", None),
                ]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some("127.1.0.7".into()),
                pod_ips: Some(vec![PodIP {
                    ip: "127.1.0.7".into(),
                }]),
                host_ip: Some("127.0.0.2".into()),
                ..Default::default()
            }),
        }
    }

    fn field_env(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Env var `name` from `key_ref`, a `secretKeyRef` or `configMapKeyRef` as a manifest has it.
    fn key_env(name: &str, key_ref: serde_json::Value) -> EnvVar {
        serde_json::from_value(json!({"name": name, "valueFrom": key_ref})).unwrap()
    }

    fn value_env(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    fn objects() -> PodObjects {
        PodObjects {
            secrets: [(
                "tok".to_string(),
                [("token".to_string(), b"s3cret".to_vec())].into(),
            )]
            .into(),
            config_maps: [(
                "cfg".to_string(),
                [
                    ("GREETING".to_string(), b"hello".to_vec()),
                    ("MODE".to_string(), b"fast".to_vec()),
                ]
                .into(),
            )]
            .into(),
            service_account_token: None,
        }
    }

    #[test]
    fn binary_table_parses_and_resolves_by_name_or_file_name() {
        let t = BinaryTable::parse(&["regroup=/opt/regroup", "python3=/usr/bin/python3"]).unwrap();
        assert_eq!(t.resolve("regroup").unwrap(), Path::new("/opt/regroup"));
        assert_eq!(
            t.resolve("/usr/local/bin/regroup").unwrap(),
            Path::new("/opt/regroup")
        );
        let err = t.resolve("sh").unwrap_err().to_string();
        assert!(err.contains("command[0] = sh"), "{err}");
        assert!(err.contains("python3, regroup"), "{err}");
    }

    #[test]
    fn binary_table_rejects_bad_entries() {
        for bad in ["regroup", "=x", "x=", "a=1,a=2"] {
            let entries: Vec<&str> = bad.split(',').collect();
            let err = BinaryTable::parse(&entries).unwrap_err().to_string();
            assert!(err.contains("--binary"), "{bad}: {err}");
        }
    }

    #[test]
    fn field_refs_cover_the_downward_api() {
        let p = pod();
        let cases = [
            ("metadata.name", "worker-1"),
            ("metadata.namespace", "jobs"),
            ("metadata.uid", "u-1"),
            ("metadata.labels['app']", "wc"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['a/b']", "x y"),
            ("status.podIP", "127.1.0.7"),
            ("status.podIPs", "127.1.0.7"),
            ("status.hostIP", "127.0.0.2"),
            ("spec.nodeName", "kwok-node-0"),
        ];
        for (path, want) in cases {
            assert_eq!(field_value(&p, path).unwrap(), want, "{path}");
        }
        let err = field_value(&p, "metadata.generation")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.generation"), "{err}");
    }

    #[test]
    fn expand_follows_kubernetes_rules() {
        let vars: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5", &vars), "cost $5");
        assert_eq!(expand("open $(A", &vars), "open $(A");
        assert_eq!(expand("$(A)$(A)", &vars), "11");
    }

    #[test]
    fn env_resolves_in_order_with_references() {
        let p = pod();
        let c = Container {
            name: "main".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(k8s_openapi::api::core::v1::ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                ..Default::default()
            }]),
            env: Some(vec![
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_IP", "status.podIP"),
                value_env("ADDR", "$(POD_IP):8080"),
                key_env(
                    "TOKEN",
                    json!({"secretKeyRef": {"name": "tok", "key": "token"}}),
                ),
                key_env(
                    "OPT",
                    json!({"configMapKeyRef": {"name": "cfg", "key": "absent", "optional": true}}),
                ),
                value_env("CFG_MODE", "slow"),
            ]),
            ..Default::default()
        };
        let env = resolve_env(&p, &c, &objects()).unwrap();
        let want: Vec<(String, String)> = [
            ("CFG_GREETING", "hello"),
            ("POD_NAME", "worker-1"),
            ("POD_IP", "127.1.0.7"),
            ("ADDR", "127.1.0.7:8080"),
            ("TOKEN", "s3cret"),
            ("CFG_MODE", "slow"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn missing_secret_key_is_an_error_naming_it() {
        let c = Container {
            name: "main".into(),
            env: Some(vec![key_env(
                "T",
                json!({"secretKeyRef": {"name": "tok", "key": "nope"}}),
            )]),
            ..Default::default()
        };
        let err = resolve_env(&pod(), &c, &objects()).unwrap_err().to_string();
        assert!(err.contains("tok/nope"), "{err}");
        let c = Container {
            name: "main".into(),
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "gone".into(),
                    optional: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let err = resolve_env(&pod(), &c, &objects()).unwrap_err().to_string();
        assert!(err.contains("secret gone"), "{err}");
    }

    fn table() -> MountTable {
        MountTable::new(vec![
            Mount {
                container_path: "/state".into(),
                host_path: "/r/claims/jobs/state-worker-1".into(),
            },
            Mount {
                container_path: "/state/tmp".into(),
                host_path: "/r/pods/p/volumes/scratch".into(),
            },
        ])
    }

    #[test]
    fn rewrite_replaces_path_prefixes_only() {
        let t = table();
        let cases = [
            ("/state", "/r/claims/jobs/state-worker-1"),
            ("/state/db", "/r/claims/jobs/state-worker-1/db"),
            ("/state/tmp/x", "/r/pods/p/volumes/scratch/x"),
            ("--dir=/state/db", "--dir=/r/claims/jobs/state-worker-1/db"),
            (
                "a:/state,/state/",
                "a:/r/claims/jobs/state-worker-1,/r/claims/jobs/state-worker-1/",
            ),
            ("/statefoo", "/statefoo"),
            ("x/state", "x/state"),
            ("no paths here", "no paths here"),
            ("état /state", "état /r/claims/jobs/state-worker-1"),
        ];
        for (input, want) in cases {
            assert_eq!(t.rewrite(input), want, "{input}");
        }
        assert_eq!(
            t.env_value(),
            "/state/tmp=/r/pods/p/volumes/scratch\n/state=/r/claims/jobs/state-worker-1"
        );
    }

    #[test]
    fn launch_spec_maps_command_env_and_mounts() {
        let p = pod();
        let dirs = PodDirs::new(Path::new("/run/pr"), &p);
        let c = Container {
            name: "main".into(),
            command: Some(vec!["/bin/regroup".into(), "worker".into()]),
            args: Some(vec![
                "--state=/state/db".into(),
                "--listen=$(POD_IP):9000".into(),
                "--token-file".into(),
                "/var/run/token/token".into(),
            ]),
            env: Some(vec![
                field_env("POD_IP", "status.podIP"),
                value_env("SCRATCH", "/scratch"),
            ]),
            volume_mounts: Some(vec![
                mount("state", "/state/"),
                mount("scratch", "/scratch"),
                mount("token", "/var/run/token"),
            ]),
            working_dir: Some("/state".into()),
            ..Default::default()
        };
        let binaries = BinaryTable::parse(&["regroup=/opt/regroup"]).unwrap();
        let spec = launch_spec(&p, &c, &objects(), &binaries, &dirs).unwrap();
        assert_eq!(spec.program, PathBuf::from("/opt/regroup"));
        assert_eq!(
            spec.args,
            vec![
                "worker",
                "--state=/run/pr/claims/jobs/state-worker-1/db",
                "--listen=127.1.0.7:9000",
                "--token-file",
                "/run/pr/pods/jobs_worker-1_u-1/volumes/token/token",
            ]
        );
        assert_eq!(
            spec.env[1],
            (
                "SCRATCH".to_string(),
                "/run/pr/pods/jobs_worker-1_u-1/volumes/scratch".to_string()
            )
        );
        assert_eq!(spec.env.last().unwrap().0, MOUNTS_ENV);
        assert_eq!(
            spec.working_dir,
            Some(PathBuf::from("/run/pr/claims/jobs/state-worker-1"))
        );
    }

    #[test]
    fn launch_spec_refuses_what_it_cannot_run() {
        let p = pod();
        let dirs = PodDirs::new(Path::new("/run/pr"), &p);
        let binaries = BinaryTable::parse(&["regroup=/opt/regroup"]).unwrap();
        let no_command = Container {
            name: "main".into(),
            ..Default::default()
        };
        let err = launch_spec(&p, &no_command, &objects(), &binaries, &dirs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("containers[main].command"), "{err}");
        let escaping = Container {
            name: "main".into(),
            command: Some(vec!["regroup".into()]),
            volume_mounts: Some(vec![VolumeMount {
                name: "scratch".into(),
                mount_path: "/x".into(),
                sub_path: Some("../../etc".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let err = launch_spec(&p, &escaping, &objects(), &binaries, &dirs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("subPath"), "{err}");
    }

    #[test]
    fn service_account_kubeconfig_names_server_ca_token_and_namespace() {
        let k = service_account_kubeconfig(
            "https://127.0.0.1:24443",
            Some(Path::new("/s/pods/p/ca.crt")),
            "tok",
            "jobs",
        );
        assert_eq!(
            k["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:24443"
        );
        assert_eq!(
            k["clusters"][0]["cluster"]["certificate-authority"],
            "/s/pods/p/ca.crt"
        );
        assert_eq!(k["users"][0]["user"]["token"], "tok");
        assert_eq!(k["contexts"][0]["context"]["namespace"], "jobs");
        assert_eq!(k["current-context"], "pod");
        let no_ca = service_account_kubeconfig("https://x", None, "t", "n");
        assert!(
            no_ca["clusters"][0]["cluster"]
                .get("certificate-authority")
                .is_none()
        );
    }

    #[test]
    fn referenced_objects_finds_env_and_volumes() {
        let mut p = pod();
        p.spec.as_mut().unwrap().containers = vec![Container {
            name: "c".into(),
            env: Some(vec![key_env(
                "G",
                json!({"configMapKeyRef": {"name": "cfg", "key": "GREETING"}}),
            )]),
            ..Default::default()
        }];
        let refs = referenced_objects(&p);
        assert_eq!(refs.secrets, ["tok".to_string()].into());
        assert_eq!(refs.config_maps, ["cfg".to_string()].into());
    }
}
