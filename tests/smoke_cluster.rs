//! Smoke tests against the test cluster of `e2e/` (a real kube-apiserver and a MinIO store):
//!
//! ```sh
//! e2e/build && e2e/cluster up && eval "$(e2e/cluster env)"
//! cargo test --test smoke_cluster
//! ```
//!
//! Without `KUBECONFIG` / `REGROUP_TEST_S3_BUCKET` the tests print why and pass without doing
//! anything, so `cargo test` works on a machine with no cluster. CI sets
//! `REGROUP_REQUIRE_CLUSTER=1`, which turns a missing variable into a failure: a CI run that
//! lost its cluster must not go green by skipping (see `tests/support/cluster.rs`).

mod support;

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use support::cluster;

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

#[tokio::test]
async fn kube_configmap_round_trip() -> anyhow::Result<()> {
    let Some(client) = cluster::kube("kube_configmap_round_trip").await else {
        return Ok(());
    };

    let namespace = format!("regroup-smoke-{}", unique_suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "regroup.dev/test".to_owned(),
                        "smoke".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .with_context(|| format!("creating namespace {namespace}"))?;

    let result = async {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let data = BTreeMap::from([
            ("greeting".to_owned(), "hello from regroup".to_owned()),
            ("parallelism".to_owned(), "3".to_owned()),
        ]);
        let created = config_maps
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("smoke".to_owned()),
                        ..ObjectMeta::default()
                    },
                    data: Some(data.clone()),
                    ..ConfigMap::default()
                },
            )
            .await
            .context("creating ConfigMap smoke")?;
        ensure!(
            created.metadata.uid.is_some(),
            "the API server gave the ConfigMap no uid"
        );

        let read = config_maps
            .get("smoke")
            .await
            .context("reading ConfigMap smoke back")?;
        ensure!(
            read.data.as_ref() == Some(&data),
            "read back {:?}, wrote {data:?}",
            read.data
        );
        ensure!(
            read.metadata.uid == created.metadata.uid,
            "read back a different object"
        );
        Ok(())
    }
    .await;

    let cleanup = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .with_context(|| format!("deleting namespace {namespace}"));
    result?;
    cleanup.map(|_| ())
}

#[tokio::test]
async fn s3_put_list_get() -> anyhow::Result<()> {
    let Some(bucket) = cluster::s3_bucket("s3_put_list_get") else {
        return Ok(());
    };
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .build()
        .context("building an S3 store from AWS_* variables")?;

    let prefix = Path::from(format!("smoke/{}", unique_suffix()));
    let location = prefix.clone().join("hello.txt");
    let content: &'static [u8] = b"hello from regroup";

    store
        .put(&location, PutPayload::from_static(content))
        .await
        .with_context(|| format!("putting s3://{bucket}/{location}"))?;

    let result = async {
        let listed: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing s3://{bucket}/{prefix}"))?;
        ensure!(
            listed.len() == 1,
            "expected one object under {prefix}, found {listed:?}"
        );
        ensure!(
            listed[0].location == location,
            "listed {}, put {location}",
            listed[0].location
        );
        ensure!(
            listed[0].size == content.len() as u64,
            "listed size {}",
            listed[0].size
        );

        let got = store
            .get(&location)
            .await
            .with_context(|| format!("getting s3://{bucket}/{location}"))?
            .bytes()
            .await?;
        ensure!(got.as_ref() == content, "got {got:?}");
        Ok(())
    }
    .await;

    let cleanup = store
        .delete(&location)
        .await
        .with_context(|| format!("deleting s3://{bucket}/{location}"));
    result?;
    cleanup
}
