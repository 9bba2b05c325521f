//! Pure builders of the objects a `StatefulJob` owns: the workers' StatefulSet, the headless
//! Service and the per-job token Secret. They take values and return values; the controller
//! applies them with server-side apply.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PersistentVolumeClaim, PodTemplateSpec, SeccompProfile, Secret,
    SecretEnvSource, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::crd::StatefulJob;
use crate::error::{Error, Result};

/// Label naming the job on everything regroup creates for it.
pub const JOB_LABEL: &str = "regroup.dev/job";
/// Label with the worker generation's epoch, on worker pods.
pub const EPOCH_LABEL: &str = "regroup.dev/epoch";
/// Annotation with the checkpoint the pod restored from, on worker pods.
pub const CHECKPOINT_ANNOTATION: &str = "regroup.dev/checkpoint";
/// The pod index label the StatefulSet controller sets on every pod (Kubernetes ≥ 1.28).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Port of the worker's checkpoint API.
pub const WORKER_PORT: i32 = 8080;
/// Where the state volume is mounted.
pub const STATE_DIR: &str = "/state";
/// Name of the state volume (and of its claim template).
pub const STATE_VOLUME: &str = "state";
/// Where the token Secret is mounted.
pub const TOKEN_DIR: &str = "/var/run/regroup/token";
/// Key of the bearer token in the token Secret.
pub const TOKEN_KEY: &str = "token";
/// Name of the restore init container.
pub const RESTORE_CONTAINER: &str = "regroup-restore";
/// The group the kubelet gives the state volume when the template's pod securityContext names
/// no `fsGroup`: the group of the regroup image's user (65532:65532). The kubelet also adds it
/// to every container's groups, so a worker running as another user can write /state too.
pub const STATE_FS_GROUP: i64 = 65532;
const TOKEN_VOLUME: &str = "regroup-token";
/// Field manager of every server-side apply by the operator.
pub const FIELD_MANAGER: &str = "regroup";

/// What distinguishes one generation of workers: everything else comes from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// Fencing epoch of the workers.
    pub epoch: u64,
    /// Number of workers (StatefulSet replicas).
    pub parallelism: u32,
    /// The checkpoint the workers restore (none: they start empty, and the restore container
    /// empties whatever their volumes hold).
    pub checkpoint: Option<u64>,
}

/// Names of the owned objects.
pub fn statefulset_name(job: &StatefulJob) -> String {
    job.name_any()
}

/// Name of the headless Service (also the StatefulSet's serviceName).
pub fn service_name(job: &StatefulJob) -> String {
    job.name_any()
}

/// Name of the per-job token Secret.
pub fn token_secret_name(job: &StatefulJob) -> String {
    format!("{}-token", job.name_any())
}

/// Labels every owned object carries; the first one also selects the workers.
pub fn labels(job: &StatefulJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        (JOB_LABEL.to_owned(), job.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "regroup".to_owned(),
        ),
        (
            "app.kubernetes.io/name".to_owned(),
            "regroup-worker".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), job.name_any()),
    ])
}

/// Labels selecting the job's worker pods (immutable in the StatefulSet).
pub fn selector_labels(job: &StatefulJob) -> BTreeMap<String, String> {
    BTreeMap::from([(JOB_LABEL.to_owned(), job.name_any())])
}

/// The selector as a string, for status.selector (the scale subresource's labelSelectorPath).
pub fn selector_string(job: &StatefulJob) -> String {
    format!("{JOB_LABEL}={}", job.name_any())
}

/// The controller owner reference to `job`.
pub fn owner_reference(job: &StatefulJob) -> Result<OwnerReference> {
    job.controller_owner_ref(&()).ok_or_else(|| {
        Error::invalid(
            "StatefulJob metadata",
            job.name_any(),
            "an object read from the API server (with name and uid)",
        )
    })
}

fn meta(job: &StatefulJob, name: String) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: job.namespace(),
        labels: Some(labels(job)),
        owner_references: Some(vec![owner_reference(job)?]),
        ..Default::default()
    })
}

/// `NAMESPACE/NAME` of the job, as workers and the store name it.
pub fn job_id(job: &StatefulJob) -> String {
    format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any())
}

/// A stable hash of the spec's pod template: a different value means the workers must be
/// replaced.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    // Serialised from typed structs: field order is fixed and maps are BTreeMaps.
    let json = serde_json::to_vec(template).unwrap_or_default();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
}

fn env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn subtask_env() -> EnvVar {
    EnvVar {
        name: "REGROUP_SUBTASK".to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: format!("metadata.labels['{POD_INDEX_LABEL}']"),
            }),
            ..Default::default()
        }),
    }
}

/// Adds `vars` to `target`, replacing variables of the same name (ours win: they are the
/// contract between operator and worker).
fn merge_env(target: &mut Option<Vec<EnvVar>>, vars: Vec<EnvVar>) {
    let list = target.get_or_insert_with(Vec::new);
    list.retain(|e| !vars.iter().any(|v| v.name == e.name));
    list.extend(vars);
}

fn storage_env_from(job: &StatefulJob) -> Option<EnvFromSource> {
    job.spec.storage.secret_ref.as_ref().map(|s| EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: s.name.clone(),
            optional: Some(false),
        }),
        ..Default::default()
    })
}

fn add_mount(container: &mut Container, name: &str, path: &str, read_only: bool) {
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| m.name != name && m.mount_path != path);
    mounts.push(VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    });
}

/// The restore init container: `regroup restore` builds /state for the pod's key group range
/// from `checkpoint`, or, without one, empties what a kept volume holds (never a stale DB).
pub fn restore_container(
    job: &StatefulJob,
    generation: &Generation,
    checkpoint: Option<u64>,
) -> Result<Container> {
    let image = match &job.spec.restore.image {
        Some(i) => i.clone(),
        None => worker_container(&job.spec.template)?
            .image
            .clone()
            .ok_or_else(|| {
                Error::invalid(
                    "spec.template.spec.containers[0].image",
                    "(unset)",
                    "an image containing the regroup binary, or spec.restore.image",
                )
            })?,
    };
    let worker = worker_container(&job.spec.template)?;
    let mut c = Container {
        name: RESTORE_CONTAINER.to_owned(),
        image: Some(image),
        command: Some(vec!["regroup".to_owned()]),
        args: Some(vec!["restore".to_owned()]),
        env_from: storage_env_from(job).map(|e| vec![e]),
        resources: job
            .spec
            .restore
            .resources
            .clone()
            .or_else(|| worker.resources.clone()),
        security_context: Some(
            job.spec
                .restore
                .security_context
                .clone()
                .or_else(|| worker.security_context.clone())
                .unwrap_or_else(restricted_security_context),
        ),
        // A failed restore's last log lines become its status message, which the operator
        // shows in the job's Degraded condition.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    };
    merge_env(
        &mut c.env,
        vec![
            env("REGROUP_STORE", &job.spec.storage.url),
            env("REGROUP_JOB", job_id(job)),
            match checkpoint {
                Some(id) => env("REGROUP_CHECKPOINT", id),
                None => env("REGROUP_RESTORE_EMPTY", true),
            },
            subtask_env(),
            // The restore reports its progress to the store under its epoch.
            env("REGROUP_EPOCH", generation.epoch),
            env("REGROUP_PARALLELISM", generation.parallelism),
            env("REGROUP_MAX_PARALLELISM", job.spec.max_parallelism),
            // The worker opens <state dir>/db (statedir::db_dir): restoring into the state dir
            // itself would leave the worker its old or an empty DB.
            env(
                "REGROUP_TARGET",
                crate::statedir::db_dir(std::path::Path::new(STATE_DIR)).display(),
            ),
            env(
                "REGROUP_RESTORE_STRATEGY",
                job.spec.restore.strategy.as_str(),
            ),
            env(
                "REGROUP_OVERLAP_FRACTION_THRESHOLD",
                job.spec.restore.overlap_fraction_threshold,
            ),
        ],
    );
    if job.spec.restore.compact {
        c.env
            .get_or_insert_with(Vec::new)
            .push(env("REGROUP_RESTORE_COMPACT", true));
    }
    if job.spec.restore.sync {
        c.env
            .get_or_insert_with(Vec::new)
            .push(env("REGROUP_RESTORE_SYNC", true));
    }
    add_mount(&mut c, STATE_VOLUME, STATE_DIR, false);
    Ok(c)
}

/// What the restricted Pod Security level demands of a container, and a read-only root file
/// system: the restore writes only to the state volume.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn worker_container(template: &PodTemplateSpec) -> Result<&Container> {
    template
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .ok_or_else(|| {
            Error::invalid(
                "spec.template.spec.containers",
                "[]",
                "at least one container; the first is the worker",
            )
        })
}

/// The worker pod template: the user's template plus regroup's labels, env, volumes and, when
/// restoring, the restore init container (first, so it runs before any user init container
/// could touch /state).
pub fn pod_template(job: &StatefulJob, generation: &Generation) -> Result<PodTemplateSpec> {
    worker_container(&job.spec.template)?;
    let mut template = job.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.extend(labels_for_pods(job, generation.epoch));
    if let Some(id) = generation.checkpoint {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(CHECKPOINT_ANNOTATION.to_owned(), id.to_string());
    }
    let restore = restore_container(job, generation, generation.checkpoint)?;
    let pod = template.spec.get_or_insert_with(Default::default);
    // A claim's root is owned by root: the non-root workers and restore write /state through
    // this group (the kubelet makes the volume group-writable and setgid). OnRootMismatch: a
    // volume whose root already has it is not walked file by file at every start.
    let security = pod.security_context.get_or_insert_with(Default::default);
    security.fs_group.get_or_insert(STATE_FS_GROUP);
    security
        .fs_group_change_policy
        .get_or_insert_with(|| "OnRootMismatch".to_owned());
    let worker = &mut pod.containers[0];
    merge_env(
        &mut worker.env,
        vec![
            env("REGROUP_STORE", &job.spec.storage.url),
            env("REGROUP_JOB", job_id(job)),
            subtask_env(),
            env("REGROUP_PARALLELISM", generation.parallelism),
            env("REGROUP_MAX_PARALLELISM", job.spec.max_parallelism),
            env("REGROUP_EPOCH", generation.epoch),
            env("REGROUP_STATE_DIR", STATE_DIR),
            env("REGROUP_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_KEY}")),
        ],
    );
    if let Some(from) = storage_env_from(job) {
        let list = worker.env_from.get_or_insert_with(Vec::new);
        if !list.contains(&from) {
            list.push(from);
        }
    }
    let ports = worker.ports.get_or_insert_with(Vec::new);
    if !ports.iter().any(|p| p.container_port == WORKER_PORT) {
        ports.push(ContainerPort {
            name: Some("regroup".to_owned()),
            container_port: WORKER_PORT,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        });
    }
    add_mount(worker, STATE_VOLUME, STATE_DIR, false);
    add_mount(worker, TOKEN_VOLUME, TOKEN_DIR, true);
    let inits = pod.init_containers.get_or_insert_with(Vec::new);
    inits.retain(|c| c.name != RESTORE_CONTAINER);
    inits.insert(0, restore);
    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != TOKEN_VOLUME && v.name != STATE_VOLUME);
    volumes.push(Volume {
        name: TOKEN_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(token_secret_name(job)),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    });
    if let Some(empty_dir) = &job.spec.state_volume.empty_dir {
        volumes.push(Volume {
            name: STATE_VOLUME.to_owned(),
            empty_dir: Some(empty_dir.clone()),
            ..Default::default()
        });
    }
    Ok(template)
}

/// Labels of a worker pod of `epoch`.
pub fn labels_for_pods(job: &StatefulJob, epoch: u64) -> BTreeMap<String, String> {
    let mut l = labels(job);
    l.insert(EPOCH_LABEL.to_owned(), epoch.to_string());
    l
}

/// The claim each worker gets for /state, unless the spec asks for emptyDir.
pub fn state_claim(job: &StatefulJob) -> Option<PersistentVolumeClaim> {
    if job.spec.state_volume.empty_dir.is_some() {
        return None;
    }
    // What the claim leaves out gets the documented default, as a StatefulSet needs both.
    let mut spec = job.spec.state_volume.claim.clone().unwrap_or_default();
    if spec.access_modes.as_ref().is_none_or(|m| m.is_empty()) {
        spec.access_modes = Some(vec!["ReadWriteOnce".to_owned()]);
    }
    let resources = spec.resources.get_or_insert_with(Default::default);
    resources
        .requests
        .get_or_insert_with(Default::default)
        .entry("storage".to_owned())
        .or_insert_with(|| Quantity("1Gi".to_owned()));
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(STATE_VOLUME.to_owned()),
            labels: Some(selector_labels(job)),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    })
}

/// The state claim of worker `ordinal` as the StatefulSet creates it from [`state_claim`]:
/// `state-<statefulset>-<ordinal>`, labelled with the selector, not owned (retention `Retain`).
pub fn worker_state_claim(job: &StatefulJob, ordinal: u32) -> Option<PersistentVolumeClaim> {
    let mut claim = state_claim(job)?;
    claim.metadata.name = Some(format!(
        "{STATE_VOLUME}-{}-{ordinal}",
        statefulset_name(job)
    ));
    claim.metadata.namespace = job.namespace();
    Some(claim)
}

/// The workers' StatefulSet for `generation`.
pub fn statefulset(job: &StatefulJob, generation: &Generation) -> Result<StatefulSet> {
    let claim = state_claim(job);
    Ok(StatefulSet {
        metadata: meta(job, statefulset_name(job))?,
        spec: StatefulSetSpec {
            replicas: Some(generation.parallelism as i32),
            selector: LabelSelector {
                match_labels: Some(selector_labels(job)),
                match_expressions: None,
            },
            service_name: Some(service_name(job)),
            // All workers of a generation start and stop together.
            pod_management_policy: Some("Parallel".to_owned()),
            // The operator replaces pods itself, generation by generation.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            // Claims outlive a scale to zero so a worker keeping its ordinal keeps its files.
            persistent_volume_claim_retention_policy: claim.as_ref().map(|_| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                }
            }),
            volume_claim_templates: claim.map(|c| vec![c]),
            template: pod_template(job, generation)?,
            ..Default::default()
        },
        status: None,
    })
}

/// The StatefulSet scaled to zero: only `replicas` is applied, the rest stays as last applied.
pub fn statefulset_scaled_to_zero(job: &StatefulJob) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": statefulset_name(job), "namespace": job.namespace()},
        "spec": {"replicas": 0}
    })
}

/// The headless Service giving every worker a stable DNS name.
pub fn service(job: &StatefulJob) -> Result<Service> {
    Ok(Service {
        metadata: meta(job, service_name(job))?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(job)),
            // The operator reaches workers while they start (checkpoint API before readiness).
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("regroup".to_owned()),
                port: WORKER_PORT,
                target_port: Some(IntOrString::Int(WORKER_PORT)),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The workers' PodDisruptionBudget: no voluntary eviction (a node drain) takes a worker
/// unasked. Every worker holds key groups no other has, so losing one restarts them all from
/// the latest checkpoint; the drain waits until the job is suspended or rescaled off the node.
pub fn pod_disruption_budget(job: &StatefulJob) -> Result<PodDisruptionBudget> {
    Ok(PodDisruptionBudget {
        metadata: meta(job, statefulset_name(job))?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(0)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(job)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// The Secret holding the bearer token workers require on their checkpoint API.
pub fn token_secret(job: &StatefulJob, token: &str) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(job, token_secret_name(job))?,
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_owned(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    })
}

/// A new random bearer token (256 bits, hex).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::claims;
    use crate::operator::crd::StatefulJobSpec;
    use k8s_openapi::api::core::v1::PodSecurityContext;

    fn job(extra: serde_json::Value) -> StatefulJob {
        let mut spec = serde_json::json!({
            "parallelism": 3,
            "maxParallelism": 64,
            "template": {
                "metadata": {"labels": {"team": "a"}},
                "spec": {"containers": [{
                    "name": "worker",
                    "image": "ghcr.io/x/regroup:1",
                    "args": ["worker"],
                    "env": [{"name": "USER_VAR", "value": "1"}, {"name": "REGROUP_EPOCH", "value": "user"}]
                }]}
            },
            "storage": {"url": "s3://bucket/jobs", "secretRef": {"name": "s3-creds"}}
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        let spec: StatefulJobSpec = serde_json::from_value(spec).unwrap();
        let mut j = StatefulJob::new("orders", spec);
        j.metadata.namespace = Some("prod".into());
        j.metadata.uid = Some("uid-1".into());
        j
    }

    fn gen_(checkpoint: Option<u64>) -> Generation {
        Generation {
            epoch: 7,
            parallelism: 5,
            checkpoint,
        }
    }

    fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    fn value(env: &BTreeMap<String, EnvVar>, name: &str) -> String {
        env[name]
            .value
            .clone()
            .unwrap_or_else(|| panic!("{name} has no value"))
    }

    #[test]
    fn statefulset_shape() {
        let j = job(serde_json::json!({}));
        let sts = statefulset(&j, &gen_(Some(12))).unwrap();
        assert_eq!(sts.metadata.name.as_deref(), Some("orders"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("prod"));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("StatefulJob", "orders", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.api_version, "regroup.dev/v1alpha1");
        let spec = sts.spec;
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert_eq!(spec.service_name.as_deref(), Some("orders"));
        assert_eq!(spec.selector.match_labels, Some(selector_labels(&j)));
        let retention = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        let claims = spec.volume_claim_templates.unwrap();
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some(STATE_VOLUME));
        let requests = claims[0]
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .clone()
            .unwrap();
        assert_eq!(requests["storage"], Quantity("1Gi".into()));
        // The selector labels are a subset of the pod labels, and the pods carry the epoch.
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap();
        for (k, v) in selector_labels(&j) {
            assert_eq!(pod_labels.get(&k), Some(&v));
        }
        assert_eq!(pod_labels[EPOCH_LABEL], "7");
        assert_eq!(pod_labels["team"], "a", "user labels kept");
        assert_eq!(
            spec.template.metadata.unwrap().annotations.unwrap()[CHECKPOINT_ANNOTATION],
            "12"
        );
    }

    #[test]
    fn worker_environment() {
        let j = job(serde_json::json!({}));
        let t = pod_template(&j, &gen_(Some(12))).unwrap();
        let pod = t.spec.unwrap();
        let worker = &pod.containers[0];
        let e = env_of(worker);
        assert_eq!(value(&e, "REGROUP_PARALLELISM"), "5");
        assert_eq!(value(&e, "REGROUP_MAX_PARALLELISM"), "64");
        assert_eq!(value(&e, "REGROUP_EPOCH"), "7", "ours replaces the user's");
        assert_eq!(value(&e, "REGROUP_STORE"), "s3://bucket/jobs");
        assert_eq!(value(&e, "REGROUP_JOB"), "prod/orders");
        assert_eq!(
            value(&e, "REGROUP_TOKEN_FILE"),
            "/var/run/regroup/token/token"
        );
        assert_eq!(value(&e, "USER_VAR"), "1");
        assert_eq!(
            worker
                .env
                .as_ref()
                .unwrap()
                .iter()
                .filter(|v| v.name == "REGROUP_EPOCH")
                .count(),
            1
        );
        let subtask = e["REGROUP_SUBTASK"]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            subtask.field_path,
            "metadata.labels['apps.kubernetes.io/pod-index']"
        );
        assert_eq!(
            worker.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "s3-creds"
        );
        let mounts: BTreeMap<_, _> = worker
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(mounts[STATE_VOLUME], STATE_DIR);
        assert_eq!(mounts["regroup-token"], TOKEN_DIR);
        assert!(
            worker
                .ports
                .as_ref()
                .unwrap()
                .iter()
                .any(|p| p.container_port == 8080)
        );
        let token_volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "regroup-token")
            .unwrap();
        assert_eq!(
            token_volume.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("orders-token")
        );
        assert!(
            !pod.volumes.unwrap().iter().any(|v| v.name == STATE_VOLUME),
            "the state volume comes from the claim template"
        );
    }

    #[test]
    fn restore_init_container() {
        let j = job(
            serde_json::json!({"restore": {"strategy": "copy", "overlapFractionThreshold": 0.25}}),
        );
        let pod = pod_template(&j, &gen_(Some(12))).unwrap().spec.unwrap();
        let inits = pod.init_containers.unwrap();
        let r = &inits[0];
        assert_eq!(r.name, RESTORE_CONTAINER);
        assert_eq!(r.image.as_deref(), Some("ghcr.io/x/regroup:1"));
        assert_eq!(r.command.as_ref().unwrap(), &["regroup"]);
        assert_eq!(r.args.as_ref().unwrap(), &["restore"]);
        let e = env_of(r);
        assert_eq!(value(&e, "REGROUP_STORE"), "s3://bucket/jobs");
        assert_eq!(value(&e, "REGROUP_JOB"), "prod/orders");
        assert_eq!(value(&e, "REGROUP_CHECKPOINT"), "12");
        assert_eq!(value(&e, "REGROUP_PARALLELISM"), "5");
        assert_eq!(value(&e, "REGROUP_TARGET"), "/state/db");
        assert_eq!(value(&e, "REGROUP_RESTORE_STRATEGY"), "copy");
        assert_eq!(value(&e, "REGROUP_OVERLAP_FRACTION_THRESHOLD"), "0.25");
        assert!(
            !e.contains_key("REGROUP_RESTORE_COMPACT"),
            "the worker compacts by default"
        );
        assert!(
            !e.contains_key("REGROUP_RESTORE_SYNC"),
            "restores are not synced by default"
        );
        assert!(e["REGROUP_SUBTASK"].value_from.is_some());
        assert_eq!(r.volume_mounts.as_ref().unwrap()[0].mount_path, STATE_DIR);
        assert_eq!(
            r.env_from.as_ref().unwrap()[0]
                .secret_ref
                .as_ref()
                .unwrap()
                .name,
            "s3-creds"
        );

        let compacting = job(serde_json::json!({"restore": {"compact": true, "sync": true}}));
        let pod = pod_template(&compacting, &gen_(Some(12)))
            .unwrap()
            .spec
            .unwrap();
        let e = env_of(&pod.init_containers.unwrap()[0]);
        assert_eq!(value(&e, "REGROUP_RESTORE_COMPACT"), "true");
        assert_eq!(value(&e, "REGROUP_RESTORE_SYNC"), "true");

        // No checkpoint: the restore container still runs, to empty a kept volume; no
        // annotation.
        let t = pod_template(&j, &gen_(None)).unwrap();
        let inits = t.spec.unwrap().init_containers.unwrap();
        let e = env_of(&inits[0]);
        assert_eq!(value(&e, "REGROUP_RESTORE_EMPTY"), "true");
        assert!(!e.contains_key("REGROUP_CHECKPOINT"));
        assert!(t.metadata.unwrap().annotations.is_none());

        // An explicit image wins.
        let j = job(serde_json::json!({"restore": {"image": "regroup:restore"}}));
        let pod = pod_template(&j, &gen_(Some(1))).unwrap().spec.unwrap();
        assert_eq!(
            pod.init_containers.unwrap()[0].image.as_deref(),
            Some("regroup:restore")
        );
    }

    #[test]
    fn state_volume_group_lets_non_root_workers_write() {
        // No pod securityContext: the group of the image's user, set once per volume.
        let j = job(serde_json::json!({}));
        let pod = pod_template(&j, &gen_(Some(1))).unwrap().spec.unwrap();
        let ctx = pod.security_context.unwrap();
        assert_eq!(ctx.fs_group, Some(65532));
        assert_eq!(
            ctx.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );

        // A restricted context without fsGroup: fsGroup added, the rest kept.
        let mut j = job(serde_json::json!({}));
        j.spec.template.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            ..Default::default()
        });
        let pod = pod_template(&j, &gen_(Some(1))).unwrap().spec.unwrap();
        let ctx = pod.security_context.unwrap();
        assert_eq!(
            (ctx.run_as_non_root, ctx.run_as_user, ctx.fs_group),
            (Some(true), Some(1000), Some(65532))
        );

        // The template's own choices win.
        let mut j = job(serde_json::json!({}));
        j.spec.template.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
            fs_group: Some(2000),
            fs_group_change_policy: Some("Always".to_owned()),
            ..Default::default()
        });
        let pod = pod_template(&j, &gen_(Some(1))).unwrap().spec.unwrap();
        let ctx = pod.security_context.unwrap();
        assert_eq!(ctx.fs_group, Some(2000));
        assert_eq!(ctx.fs_group_change_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn empty_dir_state_volume() {
        let j = job(serde_json::json!({"stateVolume": {"emptyDir": {"sizeLimit": "2Gi"}}}));
        let sts = statefulset(&j, &gen_(None)).unwrap().spec;
        assert!(sts.volume_claim_templates.is_none());
        assert!(sts.persistent_volume_claim_retention_policy.is_none());
        let volumes = sts.template.spec.unwrap().volumes.unwrap();
        let state = volumes.iter().find(|v| v.name == STATE_VOLUME).unwrap();
        assert_eq!(
            state.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("2Gi".into()))
        );
    }

    #[test]
    fn custom_claim() {
        let j = job(serde_json::json!({"stateVolume": {"claim": {
            "storageClassName": "fast", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "50Gi"}}}}}));
        let claim = state_claim(&j).unwrap().spec.unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    }

    #[test]
    fn a_worker_claim_is_the_one_the_statefulset_would_create() {
        let j = job(serde_json::json!({"stateVolume": {"claim": {"storageClassName": "fast"}}}));
        let claim = worker_state_claim(&j, 7).unwrap();
        // The StatefulSet's name for ordinal 7, the template's spec, the selector's labels.
        assert_eq!(claim.metadata.name.as_deref(), Some("state-orders-7"));
        assert_eq!(
            claims::claim_ordinal("state-orders-7", STATE_VOLUME, "orders"),
            Some(7)
        );
        assert_eq!(claim.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(claim.metadata.labels, Some(selector_labels(&j)));
        assert_eq!(claim.spec, state_claim(&j).unwrap().spec);
        // Not owned: the claims outlive the job as the StatefulSet's retention says.
        assert_eq!(claim.metadata.owner_references, None);
        let empty = job(serde_json::json!({"stateVolume": {"emptyDir": {}}}));
        assert_eq!(worker_state_claim(&empty, 0), None);
    }

    #[test]
    fn a_partial_claim_gets_the_defaults_it_leaves_out() {
        let j = job(serde_json::json!({"stateVolume": {"claim": {"storageClassName": "fast"}}}));
        let claim = state_claim(&j).unwrap().spec.unwrap();
        assert_eq!(claim.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(
            claim.resources.unwrap().requests.unwrap()["storage"],
            Quantity("1Gi".into())
        );
        let j = job(serde_json::json!({"stateVolume": {"claim": {
            "accessModes": ["ReadWriteOncePod"], "resources": {"requests": {"storage": "5Gi"}}}}}));
        let claim = state_claim(&j).unwrap().spec.unwrap();
        assert_eq!(
            claim.access_modes,
            Some(vec!["ReadWriteOncePod".to_owned()])
        );
        assert_eq!(
            claim.resources.unwrap().requests.unwrap()["storage"],
            Quantity("5Gi".into())
        );
    }

    #[test]
    fn a_template_without_containers_is_refused_with_the_field() {
        let mut j = job(serde_json::json!({}));
        j.spec.template.spec.as_mut().unwrap().containers.clear();
        let e = statefulset(&j, &gen_(None)).unwrap_err();
        assert!(
            e.to_string().contains("spec.template.spec.containers"),
            "{e}"
        );
    }

    #[test]
    fn building_is_deterministic_and_idempotent() {
        let j = job(serde_json::json!({}));
        assert_eq!(
            statefulset(&j, &gen_(Some(3))).unwrap(),
            statefulset(&j, &gen_(Some(3))).unwrap()
        );
        // Building on a template that already holds our additions changes nothing more.
        let mut again = j.clone();
        again.spec.template = pod_template(&j, &gen_(Some(3))).unwrap();
        assert_eq!(
            pod_template(&again, &gen_(Some(3))).unwrap(),
            pod_template(&j, &gen_(Some(3))).unwrap()
        );
    }

    #[test]
    fn template_hash_tracks_the_template_only() {
        let a = job(serde_json::json!({}));
        let mut b = a.clone();
        b.spec.parallelism = 9;
        assert_eq!(
            template_hash(&a.spec.template),
            template_hash(&b.spec.template)
        );
        b.spec.template.spec.as_mut().unwrap().containers[0].image =
            Some("ghcr.io/x/regroup:2".into());
        assert_ne!(
            template_hash(&a.spec.template),
            template_hash(&b.spec.template)
        );
    }

    #[test]
    fn service_and_secret() {
        let j = job(serde_json::json!({}));
        let svc = service(&j).unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector, Some(selector_labels(&j)));
        assert_eq!(spec.ports.unwrap()[0].port, 8080);
        assert!(svc.metadata.owner_references.is_some());
        let token = new_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_token());
        let s = token_secret(&j, &token).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("orders-token"));
        assert_eq!(s.data.unwrap()[TOKEN_KEY].0, token.as_bytes());
        assert_eq!(selector_string(&j), "regroup.dev/job=orders");
    }

    #[test]
    fn objects_without_uid_are_refused() {
        let mut j = job(serde_json::json!({}));
        j.metadata.uid = None;
        assert!(service(&j).is_err());
    }
}
