//! The operator: the `StatefulJob` resource, pure builders and lifecycle transitions, and the
//! controller that drives them (see docs/architecture.md, "How the parts work together").

pub mod claims;
pub mod controller;
pub mod coordinator;
pub mod crd;
pub mod diagnose;
pub mod events;
pub mod initial_state;
pub mod install_check;
pub mod lease;
pub mod lifecycle;
pub mod metrics;
pub mod progress;
pub mod reasons;
pub mod resources;
pub mod rollout;
pub mod snapshot;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use tracing::{debug, error, info, warn};

use self::controller::{Context, error_policy, pod_to_job, reconcile};
use self::coordinator::HttpWorkerClient;
use self::crd::StatefulJob;
use self::lease::{LeaseLock, LeaseTimings};
use self::metrics::OperatorMetrics;
use self::snapshot::StatefulJobSnapshot;
use crate::error::{Error, Result};

/// `regroup operator`
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespaces to watch (comma-separated or repeated); all namespaces when absent.
    #[arg(long = "namespace", env = "REGROUP_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, env = "REGROUP_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Act only while holding the leader Lease (run two replicas, one active).
    #[arg(long, env = "REGROUP_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "regroup-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease and in Events (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a leader Lease lasts without renewal, in whole seconds, e.g. 15s: a standby
    /// takes over once the Lease has not changed for this long on its own clock.
    #[arg(long, default_value = "15s", value_parser = crate::args::parse_duration)]
    pub lease_duration: Duration,
    /// Let job stores use the operator's own credentials (its AWS_*/GOOGLE_*/AZURE_* variables,
    /// instance or workload identity) besides each job's storage Secret. Off by default: a job
    /// without spec.storage.secretRef then gets no credentials, rather than the operator's.
    #[arg(long, env = "REGROUP_AMBIENT_CREDENTIALS", default_value_t = false)]
    pub ambient_credentials: bool,
    /// How long the leader keeps trying to renew before it stops acting, e.g. 10s (less than
    /// --lease-duration; default 2/3 of it).
    #[arg(long, value_parser = crate::args::parse_duration)]
    pub lease_renew_deadline: Option<Duration>,
    /// Time between two tries to acquire or renew the Lease, e.g. 2s (less than
    /// --lease-renew-deadline; default a fifth of --lease-duration, at most 2s).
    #[arg(long, value_parser = crate::args::parse_duration)]
    pub lease_retry_period: Option<Duration>,
    /// Timeout of one call to a worker's checkpoint API, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = crate::args::parse_duration)]
    pub worker_timeout: Duration,
    /// Most StatefulJob reconciles running at once; the others wait their turn in the order
    /// they came. 0 for no bound. Caps the operator's API load when many jobs need it together:
    /// unbounded, 200 jobs kept it from renewing its Lease.
    #[arg(long, env = "REGROUP_MAX_CONCURRENT_RECONCILES", default_value_t = 32)]
    pub max_concurrent_reconciles: usize,
}

fn kube_err(what: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |e| Error::Other(format!("{what}: {e}"))
}

/// Runs the operator until SIGTERM/SIGINT (or until it loses the leader Lease).
pub async fn run(args: OperatorArgs) -> Result<()> {
    let timings = LeaseTimings::new(
        args.lease_duration,
        args.lease_renew_deadline,
        args.lease_retry_period,
    )?;
    let client = Client::try_default().await.map_err(kube_err(
        "cannot configure the Kubernetes client (in-cluster or KUBECONFIG)",
    ))?;
    // Fail fast when the CRD is missing: nothing could be watched.
    let scopes: Vec<Api<StatefulJob>> = if args.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        args.namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    for api in scopes {
        api.list(&ListParams::default().limit(1)).await.map_err(kube_err(
            "cannot list StatefulJobs; is the CRD installed (kubectl apply -f crds/) and may this service account list them?",
        ))?;
    }
    let metrics = Arc::new(OperatorMetrics::default());
    let server = tokio::spawn(serve(args.metrics_address, metrics.clone()));
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("regroup-{}", uuid::Uuid::new_v4()));
    let lock = args.leader_elect.then(|| {
        LeaseLock::new(
            client.clone(),
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            timings,
        )
    });
    let mut leadership = match lock {
        Some(lock) => {
            info!(identity = %identity, "waiting for the leader lease");
            tokio::select! {
                leadership = lock.acquire() => {
                    metrics.leader.set(1);
                    Some(leadership)
                }
                _ = shutdown_signal() => { server.abort(); return Ok(()); }
            }
        }
        None => {
            // The only replica acts: as a leader would.
            metrics.leader.set(1);
            None
        }
    };
    let workers = Arc::new(HttpWorkerClient::new(args.worker_timeout)?);
    let mut ctx = Context::new(client.clone(), workers, metrics.clone(), Some(identity));
    if args.ambient_credentials {
        ctx.ambient = crate::checkpoint::store::Ambient::Allowed;
    }
    ctx.limit_reconciles(args.max_concurrent_reconciles);
    let ctx = Arc::new(ctx);
    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    let controllers = futures::future::join_all(
        namespaces
            .into_iter()
            .map(|ns| run_controller(client.clone(), ns, ctx.clone())),
    );
    match leadership.as_mut() {
        Some(held) => {
            // Renewal runs on its own task: a busy reconcile cannot delay it, and losing the
            // lease drops the controllers (and their reconciles) at once.
            tokio::select! {
                _ = controllers => {}
                reason = held.lost() => {
                    metrics.leader.set(0);
                    error!(%reason, "lost the leader lease; exiting so that no two replicas act");
                    server.abort();
                    return Err(Error::Other(format!("lost the leader lease: {reason}")));
                }
            }
        }
        None => {
            controllers.await;
        }
    }
    if let Some(held) = leadership {
        held.release().await;
    }
    server.abort();
    info!("operator stopped");
    Ok(())
}

/// Runs the StatefulJob controller for one namespace (`None`: all) until a shutdown signal.
/// Tests run it with their own [`Context`] (and worker client) and abort it to simulate a crash.
pub async fn run_controller(client: Client, namespace: Option<String>, ctx: Arc<Context>) {
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=regroup");
    info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        "controller starting"
    );
    let jobs = Controller::new(
        api::<StatefulJob>(&client, &namespace),
        watcher::Config::default(),
    )
    .owns(api::<StatefulSet>(&client, &namespace), managed.clone())
    .owns(api::<Service>(&client, &namespace), managed)
    .watches(
        api::<Pod>(&client, &namespace),
        watcher::Config::default().labels(resources::JOB_LABEL),
        pod_to_job,
    )
    .watches(
        api::<StatefulJobSnapshot>(&client, &namespace),
        watcher::Config::default(),
        snapshot_to_job,
    )
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|result| async move {
        match result {
            Ok((obj, _)) => debug!(job = %obj, "reconciled"),
            Err(e) => warn!(error = %e, "reconcile failed"),
        }
    });
    let snapshots = Controller::new(
        api::<StatefulJobSnapshot>(&client, &namespace),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        snapshot::controller::reconcile,
        snapshot::controller::error_policy,
        ctx,
    )
    .for_each(|result| async move {
        match result {
            Ok((obj, _)) => debug!(snapshot = %obj, "reconciled"),
            Err(e) => warn!(error = %e, "snapshot reconcile failed"),
        }
    });
    futures::join!(jobs, snapshots);
}

/// Maps a snapshot to the job it names.
fn snapshot_to_job(s: StatefulJobSnapshot) -> Option<ObjectRef<StatefulJob>> {
    Some(ObjectRef::new(&s.spec.job).within(&s.metadata.namespace?))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Serves `/metrics` and `/healthz`.
async fn serve(address: SocketAddr, metrics: Arc<OperatorMetrics>) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => {
            info!(%address, "serving /metrics and /healthz");
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
            {
                error!(error = %e, "metrics server failed");
            }
        }
        Err(e) => error!(%address, error = %e, "cannot bind the metrics address"),
    }
}
