//! Per-pod volume directories: created before the first container starts, filled from Secrets,
//! ConfigMaps and the downward API, and (except claims and hostPaths) removed with the pod.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath, Pod,
    SecretProjection, Volume, VolumeProjection,
};

use super::spec::{PodDirs, PodObjects, existing, field_value};
use crate::{Error, Result};

/// Creates every volume directory of `pod` and writes the files of its secret, configMap,
/// downwardAPI and projected volumes.
pub fn prepare(pod: &Pod, dirs: &PodDirs, objects: &PodObjects) -> Result<()> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for volume in volumes.into_iter().flatten() {
        let dir = dirs.volume_source(volume)?;
        if volume.host_path.is_some() {
            continue; // the machine's own path: neither created nor changed
        }
        std::fs::create_dir_all(&dir).map_err(Error::io("create volume directory", &dir))?;
        let field = |what: &str| format!("volumes[{}].{what}", volume.name);
        let (own, mode) = own_source(volume);
        write_source(pod, &dir, objects, &own, mode, &field, "secretName")?;
        if let Some(p) = &volume.projected {
            let field = |what: &str| field(&format!("projected.{what}"));
            for source in p.sources.iter().flatten() {
                write_source(pod, &dir, objects, source, p.default_mode, &field, "name")?;
            }
        }
    }
    Ok(())
}

/// A volume's own secret, configMap or downwardAPI source as the one source of a projection
/// (the kinds are the same, but for where the Secret's name is), with its default mode.
fn own_source(volume: &Volume) -> (VolumeProjection, Option<i32>) {
    let (secret, config_map, downward) = (
        volume.secret.as_ref(),
        volume.config_map.as_ref(),
        volume.downward_api.as_ref(),
    );
    let source = VolumeProjection {
        secret: secret.map(|s| SecretProjection {
            name: s.secret_name.clone().unwrap_or_default(),
            items: s.items.clone(),
            optional: s.optional,
        }),
        config_map: config_map.map(|m| ConfigMapProjection {
            name: m.name.clone(),
            items: m.items.clone(),
            optional: m.optional,
        }),
        downward_api: downward.map(|d| DownwardAPIProjection {
            items: d.items.clone(),
        }),
        ..Default::default()
    };
    // A valid volume has one source, so at most one of these is set.
    let mode = (secret.and_then(|s| s.default_mode))
        .or(config_map.and_then(|m| m.default_mode))
        .or(downward.and_then(|d| d.default_mode));
    (source, mode)
}

/// Writes the files of one volume source into `dir`: the data of a Secret or ConfigMap (a
/// missing one is an error unless optional), downward API fields, the service account token.
/// `field` names a part of the source in errors; `secret_name` is the field naming the Secret.
fn write_source(
    pod: &Pod,
    dir: &Path,
    objects: &PodObjects,
    source: &VolumeProjection,
    mode: Option<i32>,
    field: &dyn Fn(&str) -> String,
    secret_name: &str,
) -> Result<()> {
    if let Some(s) = &source.secret {
        let missing = || {
            let expected = "an existing secret (or optional: true)";
            Error::invalid(field(&format!("secret.{secret_name}")), &s.name, expected)
        };
        let data = existing(objects.secrets.get(&s.name), s.optional, missing)?;
        write_items(dir, data, s.items.as_deref(), mode, &field("secret"))?;
    }
    if let Some(m) = &source.config_map {
        let missing = || {
            let expected = "an existing configmap (or optional: true)";
            Error::invalid(field("configMap.name"), &m.name, expected)
        };
        let data = existing(objects.config_maps.get(&m.name), m.optional, missing)?;
        write_items(dir, data, m.items.as_deref(), mode, &field("configMap"))?;
    }
    if let Some(d) = &source.downward_api {
        write_downward(pod, dir, d.items.as_deref(), mode, &field("downwardAPI"))?;
    }
    if let Some(t) = &source.service_account_token {
        // Without a token (TokenRequest refused) the file is absent, as a process that does
        // not use it never notices.
        if let Some(token) = &objects.service_account_token {
            let field = field("serviceAccountToken");
            write_file(dir, &t.path, token.as_bytes(), mode, &field)?;
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

/// Writes `data` (nothing when `None`: a missing optional object) as files: the keys `items`
/// names, or every key.
fn write_items(
    dir: &Path,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    field: &str,
) -> Result<()> {
    let Some(data) = data else {
        return Ok(());
    };
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
    use crate::testing::{claim_volume, empty_dir_volume, secret_volume};
    use k8s_openapi::api::core::v1::{DownwardAPIVolumeSource, ObjectFieldSelector, PodSpec};
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
            empty_dir_volume("scratch"),
            secret_volume(
                "secret",
                "tok",
                Some(vec![KeyToPath {
                    key: "token".into(),
                    path: "dir/token".into(),
                    mode: Some(0o600),
                    ..Default::default()
                }]),
            ),
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
            claim_volume("state", "state-p"),
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
        let mut volume = secret_volume("secret", "absent", None);
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
