//! A provisioner for persistent volume claims: the test cluster has no storage, yet a
//! StatefulSet's `volumeClaimTemplates` need bound claims before the scheduler places a pod.
//! For every claim of the runner's StorageClass the runner creates a `hostPath` volume on the
//! claim's directory (`<state>/claims/<namespace>/<claim>`, the one its pods use), and the
//! controller-manager binds them. When such a claim is deleted, its volume is Released and
//! the runner deletes the volume and the claim directory (reclaim policy Delete); a Released
//! volume whose directory is another runner's is left to that runner unless the directory is
//! already gone.

use std::collections::BTreeMap;
use std::path::Path;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use tracing::{info, warn};

/// The provisioner name the runner's StorageClass names.
pub const PROVISIONER: &str = "regroup.dev/pod-runner";

/// Annotations through which the PV controller asks a provisioner for a volume.
const PROVISIONER_ANNOTATIONS: [&str; 2] = [
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
];

/// The name of the runner's second StorageClass, beside `class`: its claims are file systems of
/// exactly the requested size (a tmpfs mounted on the claim directory), so a volume can fill up.
pub fn sized_class(class: &str) -> String {
    format!("{class}-sized")
}

/// A Kubernetes storage quantity (`64Ki`, `1Mi`, `2Gi`, `500M`, `1000`) in bytes.
pub fn quantity_bytes(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// Whether a file system is mounted on `dir`.
fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let target = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(&*target))
}

/// Mounts a tmpfs of `bytes` on `dir` unless one is mounted there already.
fn mount_sized(dir: &Path, bytes: u64) -> std::io::Result<()> {
    if is_mounted(dir) {
        return Ok(());
    }
    let target = dir.to_string_lossy();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "mount -t tmpfs on {target}: {status}"
        )))
    }
}

/// The StorageClass the runner serves: immediate binding, a volume (and its directory) deleted
/// with its claim, as with cloud disks.
pub fn storage_class(name: &str, default: bool) -> StorageClass {
    let annotations = default.then(|| {
        BTreeMap::from([(
            "storageclass.kubernetes.io/is-default-class".to_string(),
            "true".to_string(),
        )])
    });
    StorageClass {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations,
            ..Default::default()
        },
        provisioner: PROVISIONER.to_string(),
        reclaim_policy: Some("Delete".to_string()),
        volume_binding_mode: Some("Immediate".to_string()),
        ..Default::default()
    }
}

/// The volume for `claim`, if the claim waits for this provisioner and has none yet.
pub fn volume_for_claim(
    claim: &PersistentVolumeClaim,
    claim_dir: &Path,
) -> Option<PersistentVolume> {
    let annotations = claim.metadata.annotations.as_ref()?;
    let ours = PROVISIONER_ANNOTATIONS
        .iter()
        .any(|a| annotations.get(*a).map(String::as_str) == Some(PROVISIONER));
    let spec = claim.spec.as_ref()?;
    let bound = spec.volume_name.as_deref().is_some_and(|v| !v.is_empty());
    if !ours || bound || claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let uid = claim.metadata.uid.clone()?;
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .unwrap_or_else(|| Quantity("1Gi".to_string()));
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(format!("pvc-{uid}")),
            annotations: Some(BTreeMap::from([(
                "pv.kubernetes.io/provisioned-by".to_string(),
                PROVISIONER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), size)])),
            access_modes: spec.access_modes.clone(),
            storage_class_name: spec.storage_class_name.clone(),
            persistent_volume_reclaim_policy: Some("Delete".to_string()),
            volume_mode: spec.volume_mode.clone(),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("PersistentVolumeClaim".to_string()),
                namespace: claim.metadata.namespace.clone(),
                name: claim.metadata.name.clone(),
                uid: Some(uid),
                ..Default::default()
            }),
            host_path: Some(HostPathVolumeSource {
                path: claim_dir.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// What to do with a Released volume of this provisioner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// Its directory is this runner's (under `<state>/claims/<namespace>/`): remove it, then
    /// delete the volume.
    OwnDirectory(std::path::PathBuf),
    /// Its directory belongs to another runner (or a state directory since removed): delete
    /// the volume only if that directory no longer exists, never touching the directory.
    ForeignDirectory(std::path::PathBuf),
}

/// How to reclaim `volume`, if it is this provisioner's, Released by its claim, with reclaim
/// policy Delete, and its claim's namespace is the runner's (if it has one). Only plain
/// directories right under `<state>/claims/<namespace>/` are ever removed.
pub fn reclaim_action(
    volume: &PersistentVolume,
    namespace: Option<&str>,
    state_dir: &Path,
) -> Option<Reclaim> {
    let ours = volume
        .metadata
        .annotations
        .as_ref()?
        .get("pv.kubernetes.io/provisioned-by")
        .map(String::as_str)
        == Some(PROVISIONER);
    let released = volume.status.as_ref()?.phase.as_deref() == Some("Released");
    let spec = volume.spec.as_ref()?;
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    let claim_ns = spec.claim_ref.as_ref()?.namespace.as_deref()?;
    let in_scope = namespace.is_none_or(|ns| ns == claim_ns);
    if !(ours && released && delete && in_scope) {
        return None;
    }
    let dir = std::path::PathBuf::from(&spec.host_path.as_ref()?.path);
    let claims = state_dir.join("claims").join(claim_ns);
    let plain = matches!(
        dir.components().next_back(),
        Some(std::path::Component::Normal(_))
    );
    Some(if plain && dir.parent() == Some(claims.as_path()) {
        Reclaim::OwnDirectory(dir)
    } else {
        Reclaim::ForeignDirectory(dir)
    })
}

/// Deletes this provisioner's Released volumes (and this runner's claim directories), until
/// the watch ends.
async fn reclaim(client: kube::Client, namespace: Option<String>, state_dir: std::path::PathBuf) {
    let volumes: Api<PersistentVolume> = Api::all(client);
    let stream = watcher(volumes.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(volume) = stream.next().await {
        let Ok(volume) = volume else { continue };
        let name = volume.metadata.name.clone().unwrap_or_default();
        let dir = match reclaim_action(&volume, namespace.as_deref(), &state_dir) {
            None => continue,
            Some(Reclaim::OwnDirectory(dir)) => {
                // A sized claim's file system goes first.
                if is_mounted(&dir) {
                    let _ = std::process::Command::new("umount")
                        .arg(&dir)
                        .stderr(std::process::Stdio::null())
                        .status();
                }
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(volume = %name, dir = %dir.display(), error = %e, "cannot remove claim directory");
                    continue;
                }
                dir
            }
            // Another runner's data: that runner reclaims it; only a volume whose directory is
            // gone (its runner's state was removed) is deleted here.
            Some(Reclaim::ForeignDirectory(dir)) if dir.exists() => continue,
            Some(Reclaim::ForeignDirectory(dir)) => dir,
        };
        match volumes.delete(&name, &Default::default()).await {
            Ok(_) => info!(volume = %name, dir = %dir.display(), "deleted released volume"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(volume = %name, error = %e, "cannot delete released volume"),
        }
    }
}

/// Ensures the StorageClass exists, then provisions volumes for its claims until the stream
/// ends (it does not: the watch retries with backoff).
pub(crate) async fn provision(
    client: kube::Client,
    namespace: Option<String>,
    class: String,
    default_class: bool,
    state_dir: std::path::PathBuf,
) {
    let classes: Api<StorageClass> = Api::all(client.clone());
    let sized = sized_class(&class);
    for sc in [
        storage_class(&class, default_class),
        storage_class(&sized, false),
    ] {
        let name = sc.metadata.name.clone().unwrap_or_default();
        match classes.create(&PostParams::default(), &sc).await {
            Ok(_) => info!(class = %name, "created StorageClass"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => warn!(class = %name, error = %e, "cannot create StorageClass"),
        }
    }
    let claims: Api<PersistentVolumeClaim> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let reclaimer = tokio::spawn(reclaim(
        client.clone(),
        namespace.clone(),
        state_dir.clone(),
    ));
    // Aborting this task (at shutdown) drops the guard, which stops the reclaimer too.
    let _reclaimer = AbortOnDrop(reclaimer);
    let volumes: Api<PersistentVolume> = Api::all(client);
    let stream = watcher(claims, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(claim) = stream.next().await {
        let claim = match claim {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "claim watch failed; retrying");
                continue;
            }
        };
        let ns = claim.metadata.namespace.clone().unwrap_or_default();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let dir = state_dir.join("claims").join(&ns).join(&name);
        let Some(volume) = volume_for_claim(&claim, &dir) else {
            continue;
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            warn!(claim = %format!("{ns}/{name}"), error = %e, "cannot create claim directory");
            continue;
        }
        let spec = claim.spec.as_ref();
        if spec.and_then(|s| s.storage_class_name.as_deref()) == Some(sized.as_str()) {
            let bytes = spec
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(quantity_bytes);
            let mounted = match bytes {
                Some(b) => mount_sized(&dir, b),
                None => Err(std::io::Error::other("no storage request in bytes")),
            };
            if let Err(e) = mounted {
                warn!(claim = %format!("{ns}/{name}"), error = %e, "cannot size the claim's file system");
                continue;
            }
        }
        match volumes.create(&PostParams::default(), &volume).await {
            Ok(_) => {
                info!(claim = %format!("{ns}/{name}"), dir = %dir.display(), "provisioned volume")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => warn!(claim = %format!("{ns}/{name}"), error = %e, "cannot create volume"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};

    fn claim(annotated: bool, volume: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("state-job-0".into()),
                namespace: Some("ns".into()),
                uid: Some("c-1".into()),
                annotations: annotated.then(|| {
                    BTreeMap::from([(
                        PROVISIONER_ANNOTATIONS[0].to_string(),
                        PROVISIONER.to_string(),
                    )])
                }),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some("regroup-local".into()),
                volume_name: volume.map(str::to_string),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity("2Gi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_waiting_claim_gets_a_host_path_volume_bound_to_it() {
        let pv =
            volume_for_claim(&claim(true, None), Path::new("/s/claims/ns/state-job-0")).unwrap();
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-c-1"));
        let spec = pv.spec.unwrap();
        assert_eq!(spec.host_path.unwrap().path, "/s/claims/ns/state-job-0");
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("ns"), Some("state-job-0"), Some("c-1"))
        );
        assert_eq!(spec.capacity.unwrap()["storage"], Quantity("2Gi".into()));
        assert_eq!(spec.storage_class_name.as_deref(), Some("regroup-local"));
    }

    #[test]
    fn other_or_bound_claims_are_left_alone() {
        assert!(volume_for_claim(&claim(false, None), Path::new("/x")).is_none());
        assert!(volume_for_claim(&claim(true, Some("pv-1")), Path::new("/x")).is_none());
    }

    #[test]
    fn only_own_released_volumes_are_reclaimed_and_only_own_directories_removed() {
        let state = Path::new("/s");
        let own = |p: &str| Some(Reclaim::OwnDirectory(p.into()));
        let foreign = |p: &str| Some(Reclaim::ForeignDirectory(p.into()));
        let mut pv =
            volume_for_claim(&claim(true, None), Path::new("/s/claims/ns/state-job-0")).unwrap();
        assert_eq!(reclaim_action(&pv, None, state), None, "not released yet");
        pv.status = Some(k8s_openapi::api::core::v1::PersistentVolumeStatus {
            phase: Some("Released".into()),
            ..Default::default()
        });
        assert_eq!(
            reclaim_action(&pv, None, state),
            own("/s/claims/ns/state-job-0")
        );
        assert_eq!(
            reclaim_action(&pv, Some("ns"), state),
            own("/s/claims/ns/state-job-0")
        );
        assert_eq!(reclaim_action(&pv, Some("other"), state), None);
        assert_eq!(
            reclaim_action(&pv, None, Path::new("/elsewhere")),
            foreign("/s/claims/ns/state-job-0")
        );
        for escaping in ["/s/claims/ns/../../etc", "/s/claims/ns/.."] {
            pv.spec.as_mut().unwrap().host_path.as_mut().unwrap().path = escaping.into();
            assert_eq!(reclaim_action(&pv, None, state), foreign(escaping));
        }
        pv.metadata.annotations = None;
        assert_eq!(reclaim_action(&pv, None, state), None);
    }

    #[test]
    fn storage_class_names_the_provisioner() {
        let c = storage_class("regroup-local", true);
        assert_eq!(c.provisioner, PROVISIONER);
        assert_eq!(c.volume_binding_mode.as_deref(), Some("Immediate"));
        assert!(
            c.metadata
                .annotations
                .unwrap()
                .contains_key("storageclass.kubernetes.io/is-default-class")
        );
    }

    #[test]
    fn quantities_in_bytes() {
        let q = |s: &str| quantity_bytes(&Quantity(s.to_owned()));
        assert_eq!(q("64Ki"), Some(65536));
        assert_eq!(q("2Gi"), Some(2 << 30));
        assert_eq!(q("500M"), Some(500_000_000));
        assert_eq!(q("1000"), Some(1000));
        assert_eq!(q("1.5Gi"), None, "fractions are not needed here");
        assert_eq!(sized_class("regroup-local"), "regroup-local-sized");
    }
}
