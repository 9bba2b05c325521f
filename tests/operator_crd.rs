//! The StatefulJob and StatefulJobSnapshot CRDs on a real kube-apiserver: what it accepts, what it refuses and with
//! which message, the scale subresource and the printer columns.

mod support;

use std::process::Command;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use regroup::operator::crd::StatefulJob;
use regroup::operator::snapshot::StatefulJobSnapshot;
use support::operator::{TestNamespace, job_yaml, kube_with_crd};
use support::{root, run};

fn job(value: serde_json::Value) -> StatefulJob {
    serde_json::from_value(value).expect("a StatefulJob")
}

/// Creates the job and returns the API server's refusal message.
async fn refused(api: &Api<StatefulJob>, value: serde_json::Value) -> String {
    match api.create(&PostParams::default(), &job(value)).await {
        Ok(j) => panic!("accepted an invalid StatefulJob: {:?}", j.spec),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// Like [`refused`], for a job the Rust types cannot even hold (an unknown enum value).
async fn refused_raw(client: &Client, ns: &str, value: serde_json::Value) -> String {
    let resource = ApiResource::erase::<StatefulJob>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object: DynamicObject = serde_json::from_value(value).expect("an object");
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => panic!("accepted an invalid StatefulJob"),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn the_api_server_validates_statefuljobs() {
    let Some(client) = kube_with_crd("the_api_server_validates_statefuljobs").await else {
        return;
    };
    let ns = TestNamespace::new(&client, "regroup-crd").await;
    let api: Api<StatefulJob> = Api::namespaced(client.clone(), &ns.name);

    // Parallelism 0.
    let msg = refused(&api, job_yaml("zero", 0, 16, "s3://bucket/jobs")).await;
    assert!(msg.contains("spec.parallelism"), "{msg}");
    assert!(
        msg.contains("should be greater than or equal to 1"),
        "{msg}"
    );

    // Above maxParallelism: the CEL rule's message, naming the field.
    let msg = refused(&api, job_yaml("above", 17, 16, "s3://bucket/jobs")).await;
    assert!(
        msg.contains("parallelism must not exceed maxParallelism"),
        "{msg}"
    );
    assert!(msg.contains("spec.parallelism"), "{msg}");

    // maxParallelism above the limit.
    let msg = refused(&api, job_yaml("huge", 1, 40000, "s3://bucket/jobs")).await;
    assert!(msg.contains("spec.maxParallelism"), "{msg}");
    assert!(msg.contains("32768"), "{msg}");

    // An unsupported storage URL scheme, and a bucket-less one.
    for url in [
        "http://example.com/x",
        "s3://",
        "memory://x",
        "ftp://host/dir",
    ] {
        let msg = refused(&api, job_yaml("badurl", 1, 16, url)).await;
        assert!(msg.contains("spec.storage.url"), "{url}: {msg}");
        assert!(msg.contains("s3://BUCKET"), "{url}: {msg}");
    }

    // Malformed durations.
    let mut bad = job_yaml("baddur", 1, 16, "s3://bucket/jobs");
    bad["spec"]["checkpointing"]["interval"] = "5 minutes".into();
    let msg = refused(&api, bad).await;
    assert!(msg.contains("spec.checkpointing.interval"), "{msg}");

    // Zero durations: a job that would checkpoint continuously or time out at once.
    for field in ["interval", "timeout"] {
        let mut zero = job_yaml("zerodur", 1, 16, "s3://bucket/jobs");
        zero["spec"]["checkpointing"][field] = "0s".into();
        let msg = refused(&api, zero).await;
        assert!(
            msg.contains(&format!(
                "spec.checkpointing.{field} must be a positive duration"
            )),
            "{field}: {msg}"
        );
    }
    let mut zero = job_yaml("zerorestore", 1, 16, "s3://bucket/jobs");
    zero["spec"]["restore"] = serde_json::json!({"timeout": "0ms"});
    let msg = refused(&api, zero).await;
    assert!(
        msg.contains("spec.restore.timeout must be a positive duration"),
        "{msg}"
    );

    // Initial states: each kind with (only) its own field, a job named NAMESPACE/NAME.
    for (initial, message) in [
        (
            serde_json::json!({"from": "Snapshot"}),
            "initialState.snapshot (the name of a StatefulJobSnapshot",
        ),
        (
            serde_json::json!({"from": "Checkpoint"}),
            "initialState.checkpoint ({url, job, id}",
        ),
        (
            serde_json::json!({"from": "Empty", "snapshot": "s"}),
            "initialState.snapshot goes only with from: Snapshot",
        ),
        (
            serde_json::json!({"from": "Checkpoint", "checkpoint": {"url": "s3://b/jobs", "job": "orders", "id": 3}}),
            "initialState.checkpoint.job must be NAMESPACE/NAME",
        ),
        (
            serde_json::json!({"from": "Checkpoint", "checkpoint": {"url": "http://x", "job": "prod/orders", "id": 3}}),
            "initialState.checkpoint.url must be s3://BUCKET",
        ),
        (
            serde_json::json!({"from": "Yesterday"}),
            "spec.initialState.from",
        ),
    ] {
        let mut bad = job_yaml("initial", 1, 16, "s3://bucket/jobs");
        bad["spec"]["initialState"] = initial.clone();
        let msg = refused_raw(&client, &ns.name, bad).await;
        assert!(msg.contains(message), "{initial}: {msg}");
    }
    // Schedules, rollouts and the checkpoint history.
    for (field, value, message) in [
        (
            "snapshots",
            serde_json::json!({"schedule": "0 3 * *"}),
            "spec.snapshots.schedule must be a cron schedule of five fields",
        ),
        (
            "snapshots",
            serde_json::json!({"schedule": "0 3 * * *", "maxAge": "0s"}),
            "spec.snapshots.maxAge must be a positive duration",
        ),
        (
            "rollout",
            serde_json::json!({"readinessTimeout": "0s"}),
            "spec.rollout.readinessTimeout must be a positive duration",
        ),
        (
            "checkpointing",
            serde_json::json!({"history": 21}),
            "spec.checkpointing.history",
        ),
    ] {
        let mut bad = job_yaml("fields", 1, 16, "s3://bucket/jobs");
        bad["spec"][field] = value.clone();
        let msg = refused(&api, bad).await;
        assert!(msg.contains(message), "{value}: {msg}");
    }
    let mut bad = job_yaml("deletion", 1, 16, "s3://bucket/jobs");
    bad["spec"]["deletionPolicy"] = "Keep".into();
    let msg = refused_raw(&client, &ns.name, bad).await;
    assert!(
        msg.contains("spec.deletionPolicy") && msg.contains("Snapshot"),
        "{msg}"
    );

    // Names that cannot name the workers' StatefulSet, Service and pods.
    for name in [
        "a-name-that-is-much-too-long-for-the-pods-of-its-workers",
        "9starts-with-a-digit",
    ] {
        let msg = refused(&api, job_yaml(name, 1, 16, "s3://bucket/jobs")).await;
        assert!(
            msg.contains("metadata.name must be at most 52 characters"),
            "{name}: {msg}"
        );
    }

    // Both state volume kinds at once.
    let mut both = job_yaml("both", 1, 16, "s3://bucket/jobs");
    both["spec"]["stateVolume"]["claim"] = serde_json::json!({"accessModes": ["ReadWriteOnce"]});
    let msg = refused(&api, both).await;
    assert!(msg.contains("at most one of claim and emptyDir"), "{msg}");

    // A valid job is accepted, with defaults filled in by the schema's consumer (the operator).
    let ok = api
        .create(
            &PostParams::default(),
            &job(job_yaml("ok", 2, 16, "file:///tmp/regroup")),
        )
        .await
        .expect("a valid StatefulJob is accepted");
    assert_eq!(ok.spec.parallelism, 2);

    // maxParallelism cannot change.
    let err = api
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"maxParallelism": 32}})),
        )
        .await
        .expect_err("maxParallelism changed");
    let msg = err.to_string();
    assert!(msg.contains("maxParallelism is immutable"), "{msg}");

    // Neither can the store (the workers write there) nor the state volume (the StatefulSet's
    // claim templates are immutable); each refusal says how to do it instead.
    for (patch, message) in [
        (
            serde_json::json!({"spec": {"storage": {"url": "s3://other/jobs"}}}),
            "storage is immutable",
        ),
        (
            serde_json::json!({"spec": {"storage": {"secretRef": {"name": "creds"}}}}),
            "storage is immutable",
        ),
        (
            serde_json::json!({"spec": {"stateVolume": {"emptyDir": {"sizeLimit": "1Gi"}}}}),
            "stateVolume is immutable",
        ),
    ] {
        let err = api
            .patch("ok", &PatchParams::default(), &Patch::Merge(patch.clone()))
            .await
            .expect_err("an immutable field changed");
        let msg = err.to_string();
        assert!(
            msg.contains(message) && msg.contains("delete the job"),
            "{patch}: {msg}"
        );
    }
    assert_eq!(
        api.get("ok").await.unwrap().spec.storage.url,
        "file:///tmp/regroup",
        "the stored job is untouched"
    );

    // parallelism can change, through the scale subresource too (kubectl scale, HPA).
    run(Command::new("kubectl").args(["-n", &ns.name, "scale", "sj/ok", "--replicas=5"]));
    assert_eq!(api.get("ok").await.unwrap().spec.parallelism, 5);
    let scale = api.get_scale("ok").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(5));
    // ...but not past maxParallelism.
    let out = Command::new("kubectl")
        .args(["-n", &ns.name, "scale", "sj/ok", "--replicas=17"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("parallelism must not exceed maxParallelism"),
        "{stderr}"
    );

    // The samples in config/samples are valid StatefulJobs.
    let samples = root().join("config/samples");
    let out = run(Command::new("kubectl")
        .args(["-n", &ns.name, "apply", "--dry-run=server", "-f"])
        .arg(&samples));
    assert!(
        out.contains("statefuljob.regroup.dev/wordcount created"),
        "{out}"
    );
    assert!(
        out.contains("statefuljob.regroup.dev/ephemeral created"),
        "{out}"
    );
    assert!(
        out.contains("statefuljobsnapshot.regroup.dev/wordcount-before-release created")
            && out.contains("statefuljob.regroup.dev/wordcount-replay created"),
        "{out}"
    );

    // Short name and printer columns.
    let table = run(Command::new("kubectl").args(["-n", &ns.name, "get", "sj"]));
    let header = table.lines().next().unwrap();
    for column in ["NAME", "PARALLELISM", "PHASE", "LAST CHECKPOINT", "AGE"] {
        assert!(header.contains(column), "{column} missing in {header:?}");
    }
    assert!(table.contains("ok"), "{table}");
}

#[tokio::test]
async fn the_api_server_validates_snapshots() {
    let Some(client) = kube_with_crd("the_api_server_validates_snapshots").await else {
        return;
    };
    let ns = TestNamespace::new(&client, "regroup-crd-snap").await;
    let api: Api<StatefulJobSnapshot> = Api::namespaced(client.clone(), &ns.name);
    let snapshot = |name: &str, spec: serde_json::Value| -> StatefulJobSnapshot {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "regroup.dev/v1alpha1",
            "kind": "StatefulJobSnapshot",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap()
    };
    let err = api
        .create(
            &PostParams::default(),
            &snapshot(
                "old",
                serde_json::json!({"job": "orders", "retain": {"maxAge": "0s"}}),
            ),
        )
        .await
        .expect_err("a zero maxAge");
    assert!(
        err.to_string()
            .contains("spec.retain.maxAge must be a positive duration"),
        "{err}"
    );
    api.create(
        &PostParams::default(),
        &snapshot("s", serde_json::json!({"job": "orders"})),
    )
    .await
    .expect("a valid snapshot");
    let err = api
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"job": "other"}})),
        )
        .await
        .expect_err("spec.job changed");
    assert!(err.to_string().contains("spec.job is immutable"), "{err}");
    let table = run(Command::new("kubectl").args(["-n", &ns.name, "get", "sjsnap"]));
    for column in [
        "JOB",
        "PHASE",
        "CHECKPOINT",
        "PARALLELISM",
        "BYTES",
        "TAKEN",
    ] {
        assert!(table.contains(column), "{table}");
    }
}
