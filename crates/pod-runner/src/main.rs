//! `regroup-pod-runner`: runs the test cluster's pods labelled `regroup.dev/run-locally=true`
//! on kwok nodes as local processes, until SIGTERM or Ctrl-C. See [`regroup_pod_runner`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use regroup_pod_runner::spec::{BinaryTable, RUN_LOCALLY_LABEL, RUNNER_LABEL};
use regroup_pod_runner::{RunnerConfig, parse_node_labels, run};

/// Runs pods of kwok nodes as local processes (the test cluster has no container runtime).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A container command and the local binary that stands in for it, NAME=PATH (repeatable).
    /// `command[0]` matches NAME as written or by its file name.
    #[arg(long = "binary", value_name = "NAME=PATH", required = true)]
    binaries: Vec<String>,
    /// Directory for pod volumes (pods/) and persistent volume claims (claims/).
    #[arg(
        long,
        env = "REGROUP_POD_RUNNER_STATE_DIR",
        default_value = "/tmp/regroup-pod-runner/state"
    )]
    state_dir: PathBuf,
    /// Directory for process output: <log dir>/<namespace>/<pod>/<container>.log.
    #[arg(
        long,
        env = "REGROUP_POD_RUNNER_LOG_DIR",
        default_value = "/tmp/regroup-pod-runner/logs"
    )]
    log_dir: PathBuf,
    /// Run only pods of this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Label selector of the pods to run; kwok's stages must skip them. The default leaves
    /// pods reserved for another runner (label regroup.dev/runner) to it.
    #[arg(long, default_value_t = format!("{RUN_LOCALLY_LABEL}=true,!{RUNNER_LABEL}"))]
    selector: String,
    /// Labels the pod's node must have, key=value[,key=value...].
    #[arg(long, default_value = "type=kwok")]
    node_selector: String,
    /// Variables of the runner's environment passed on to every process (repeatable).
    #[arg(long = "pass-env", value_name = "NAME", default_values_t = ["PATH".to_string(), "HOME".to_string(), "LANG".to_string()])]
    pass_env: Vec<String>,
    /// First delay before restarting a crashed container (doubles per restart).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    backoff_initial: Duration,
    /// Longest delay before restarting a crashed container.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// StorageClass whose claims the runner provisions as claim directories (created if
    /// absent); an empty value turns provisioning off.
    #[arg(long, default_value = "regroup-local")]
    storage_class: String,
    /// Do not mark the StorageClass as the cluster's default.
    #[arg(long)]
    no_default_storage_class: bool,
    /// Log format of the runner itself.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// Log format of the runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(args.log_format);
    // rustls cannot pick a provider when a build of the workspace compiles in two.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binaries = BinaryTable::parse(&args.binaries)?;
    for (name, path) in binaries.entries() {
        anyhow::ensure!(
            path.is_file(),
            "invalid --binary {name}={}: no such file; give the path of an executable",
            path.display()
        );
    }
    let state_dir = std::path::absolute(&args.state_dir).context("--state-dir")?;
    let log_dir = std::path::absolute(&args.log_dir).context("--log-dir")?;
    let mut config = RunnerConfig {
        binaries,
        state_dir,
        log_dir,
        namespace: args.namespace,
        pod_selector: args.selector,
        node_labels: parse_node_labels(&args.node_selector)?,
        pass_env: args.pass_env,
        backoff_initial: args.backoff_initial,
        backoff_max: args.backoff_max,
        storage_class: Some(args.storage_class).filter(|c| !c.is_empty()),
        default_storage_class: !args.no_default_storage_class,
        api_server: None,
    };
    let kube_config = kube::Config::infer()
        .await
        .context("read the cluster's address and credentials (KUBECONFIG)")?;
    config.api_server = Some(
        kube_config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string(),
    );
    let client = kube::Client::try_from(kube_config).context("connect to the cluster")?;
    run(client, config, shutdown_signal()).await
}
