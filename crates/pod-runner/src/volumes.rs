//! Per-pod volume directories: created before the first container starts, filled from Secrets,
//! ConfigMaps and the downward API, and (except claims and hostPaths) removed with the pod.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod};

use super::spec::{PodDirs, PodObjects, field_value};
use crate::{Error, Result};

/// Creates every volume directory of `pod` and writes the files of its secret, configMap and
/// downwardAPI volumes.
pub fn prepare(pod: &Pod, dirs: &PodDirs, objects: &PodObjects) -> Result<()> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for volume in volumes.into_iter().flatten() {
        let dir = dirs.volume_source(volume)?;
        if volume.host_path.is_some() {
            continue; // the machine's own path: neither created nor changed
        }
        std::fs::create_dir_all(&dir).map_err(Error::io("create volume directory", &dir))?;
        let field = |what: &str| format!("volumes[{}].{what}", volume.name);
        if let Some(s) = &volume.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            match objects.secrets.get(&name) {
                Some(data) => write_items(
                    &dir,
                    data,
                    s.items.as_deref(),
                    s.default_mode,
                    &field("secret"),
                )?,
                None if s.optional.unwrap_or(false) => {}
                None => {
                    return Err(Error::invalid(
                        field("secret.secretName"),
                        name,
                        "an existing secret (or optional: true)",
                    ));
                }
            }
        }
        if let Some(m) = &volume.config_map {
            match objects.config_maps.get(&m.name) {
                Some(data) => write_items(
                    &dir,
                    data,
                    m.items.as_deref(),
                    m.default_mode,
                    &field("configMap"),
                )?,
                None if m.optional.unwrap_or(false) => {}
                None => {
                    return Err(Error::invalid(
                        field("configMap.name"),
                        &m.name,
                        "an existing configmap (or optional: true)",
                    ));
                }
            }
        }
        if let Some(d) = &volume.downward_api {
            write_downward(
                pod,
                &dir,
                d.items.as_deref(),
                d.default_mode,
                &field("downwardAPI"),
            )?;
        }
        if let Some(p) = &volume.projected {
            let mode = p.default_mode;
            for source in p.sources.iter().flatten() {
                if let Some(s) = &source.secret {
                    match objects.secrets.get(&s.name) {
                        Some(data) => write_items(
                            &dir,
                            data,
                            s.items.as_deref(),
                            mode,
                            &field("projected.secret"),
                        )?,
                        None if s.optional.unwrap_or(false) => {}
                        None => {
                            return Err(Error::invalid(
                                field("projected.secret.name"),
                                &s.name,
                                "an existing secret (or optional: true)",
                            ));
                        }
                    }
                }
                if let Some(m) = &source.config_map {
                    match objects.config_maps.get(&m.name) {
                        Some(data) => write_items(
                            &dir,
                            data,
                            m.items.as_deref(),
                            mode,
                            &field("projected.configMap"),
                        )?,
                        None if m.optional.unwrap_or(false) => {}
                        None => {
                            return Err(Error::invalid(
                                field("projected.configMap.name"),
                                &m.name,
                                "an existing configmap (or optional: true)",
                            ));
                        }
                    }
                }
                if let Some(d) = &source.downward_api {
                    write_downward(
                        pod,
                        &dir,
                        d.items.as_deref(),
                        mode,
                        &field("projected.downwardAPI"),
                    )?;
                }
                if let Some(t) = &source.service_account_token {
                    // Without a token (TokenRequest refused) the file is absent, as a process
                    // that does not use it never notices.
                    if let Some(token) = &objects.service_account_token {
                        write_file(
                            &dir,
                            &t.path,
                            token.as_bytes(),
                            mode,
                            &field("projected.serviceAccountToken"),
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn write_downward(
    pod: &Pod,
    dir: &Path,
    items: Option<&[DownwardAPIVolumeFile]>,
    default_mode: Option<i32>,
    field: &str,
) -> Result<()> {
    for item in items.into_iter().flatten() {
        let Some(f) = &item.field_ref else {
            return Err(Error::invalid(
                format!("{field}.items"),
                &item.path,
                "items with fieldRef (resourceFieldRef is not supported)",
            ));
        };
        let value = field_value(pod, &f.field_path)?;
        write_file(
            dir,
            &item.path,
            value.as_bytes(),
            item.mode.or(default_mode),
            field,
        )?;
    }
    Ok(())
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    field: &str,
) -> Result<()> {
    match items {
        Some(items) => {
            for item in items {
                let value = data.get(&item.key).ok_or_else(|| {
                    Error::invalid(format!("{field}.items"), &item.key, "a key of the object")
                })?;
                write_file(dir, &item.path, value, item.mode.or(default_mode), field)?;
            }
        }
        None => {
            for (key, value) in data {
                write_file(dir, key, value, default_mode, field)?;
            }
        }
    }
    Ok(())
}

fn write_file(
    dir: &Path,
    relative: &str,
    data: &[u8],
    mode: Option<i32>,
    field: &str,
) -> Result<()> {
    let plain = !relative.is_empty()
        && Path::new(relative)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(Error::invalid(
            format!("{field} path"),
            relative,
            "a relative path without '..'",
        ));
    }
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create directory", parent))?;
    }
    // Write then rename, so a reader never sees half a file.
    let tmp = path.with_extension("regroup-tmp");
    std::fs::write(&tmp, data).map_err(Error::io("write", &tmp))?;
    let mode = mode.unwrap_or(0o644) as u32 & 0o777;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("chmod", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io("rename", &path))?;
    Ok(())
}

/// Removes the pod's own directory (emptyDir, secret, configMap and downwardAPI volumes);
/// claim directories stay for the next pod that uses the claim.
pub fn remove(dirs: &PodDirs) -> Result<()> {
    match std::fs::remove_dir_all(&dirs.pod_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("remove pod directory", &dirs.pod_dir)(e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        DownwardAPIVolumeSource, EmptyDirVolumeSource, ObjectFieldSelector,
        PersistentVolumeClaimVolumeSource, PodSpec, SecretVolumeSource, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(volumes: Vec<Volume>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(volumes),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn objects() -> PodObjects {
        PodObjects {
            secrets: [(
                "tok".to_string(),
                [
                    ("token".to_string(), b"s3cret".to_vec()),
                    ("other".to_string(), b"o".to_vec()),
                ]
                .into(),
            )]
            .into(),
            ..Default::default()
        }
    }

    #[test]
    fn volumes_are_created_filled_and_removed_except_claims() {
        let state = tempfile::tempdir().unwrap();
        let p = pod(vec![
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            Volume {
                name: "secret".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("tok".into()),
                    items: Some(vec![KeyToPath {
                        key: "token".into(),
                        path: "dir/token".into(),
                        mode: Some(0o600),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "info".into(),
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(vec![DownwardAPIVolumeFile {
                        path: "name".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "state".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "state-p".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
        let dirs = PodDirs::new(state.path(), &p);
        prepare(&p, &dirs, &objects()).unwrap();
        assert!(dirs.volume("scratch").is_dir());
        let token = dirs.volume("secret").join("dir/token");
        assert_eq!(std::fs::read(&token).unwrap(), b"s3cret");
        assert_eq!(
            std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dirs.volume("secret").join("other").exists());
        assert_eq!(
            std::fs::read(dirs.volume("info").join("name")).unwrap(),
            b"p"
        );
        let claim = dirs.claim("state-p");
        std::fs::write(claim.join("db"), b"kept").unwrap();

        remove(&dirs).unwrap();
        assert!(!dirs.pod_dir.exists());
        assert_eq!(std::fs::read(claim.join("db")).unwrap(), b"kept");
        remove(&dirs).unwrap();
    }

    #[test]
    fn missing_secret_is_an_error_unless_optional() {
        let state = tempfile::tempdir().unwrap();
        let mut volume = Volume {
            name: "secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("absent".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = pod(vec![volume.clone()]);
        let dirs = PodDirs::new(state.path(), &p);
        let err = prepare(&p, &dirs, &objects()).unwrap_err().to_string();
        assert!(
            err.contains("volumes[secret].secret.secretName = absent"),
            "{err}"
        );
        volume.secret.as_mut().unwrap().optional = Some(true);
        let p = pod(vec![volume]);
        prepare(&p, &dirs, &objects()).unwrap();
    }
}
