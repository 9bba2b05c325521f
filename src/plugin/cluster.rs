//! The plugin's view of the cluster: the connection kubectl's flags describe, the namespace,
//! the job, and the job's checkpoint store opened with the credentials of its Secret.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::checkpoint::store::Ambient;
use crate::checkpoint::{CheckpointStore, JobId};
use crate::operator::controller::secret_settings;
use crate::operator::crd::StatefulJob;

/// kubectl's connection flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// The namespace (default: the context's, else "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (for `status` without NAME).
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path of the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG", hide_env_values = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The store's endpoint as seen from here, when it differs from the one in the job's Secret
    /// (AWS_ENDPOINT, e.g. a cluster-internal MinIO Service reached through a port-forward).
    #[arg(long, global = true, value_name = "URL")]
    pub store_endpoint: Option<String>,
}

/// A client for the cluster and the namespace subcommands work in.
pub struct Cluster {
    /// The API client.
    pub client: Client,
    /// The namespace of `-n`, else the context's.
    pub namespace: String,
    /// `--store-endpoint`.
    pub store_endpoint: Option<String>,
}

impl Cluster {
    /// Connects as kubectl would with the same flags. A kubeconfig given by flag or
    /// environment (KUBECONFIG may list several files) wins; otherwise ~/.kube/config, then the
    /// in-cluster service account.
    pub async fn connect(args: &ConnectionArgs) -> anyhow::Result<Self> {
        let options = KubeConfigOptions {
            context: args.context.clone(),
            ..Default::default()
        };
        let config = match &args.kubeconfig {
            Some(paths) => {
                let mut merged: Option<Kubeconfig> = None;
                for path in std::env::split_paths(paths).filter(|p| !p.as_os_str().is_empty()) {
                    let one = Kubeconfig::read_from(&path).with_context(|| {
                        format!("--kubeconfig/KUBECONFIG {}: cannot read it", path.display())
                    })?;
                    merged = Some(match merged {
                        Some(m) => m.merge(one)?,
                        None => one,
                    });
                }
                let kubeconfig = merged
                    .ok_or_else(|| anyhow!("--kubeconfig/KUBECONFIG is empty: give a file"))?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await?
            }
            None if args.context.is_some() => Config::from_kubeconfig(&options).await?,
            None => Config::infer().await?,
        };
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        Ok(Self {
            client: Client::try_from(config)?,
            namespace,
            store_endpoint: args.store_endpoint.clone(),
        })
    }

    /// The namespaced API of `K` in the current namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The StatefulJob `name`, or an error that says where it was looked for.
    pub async fn job(&self, name: &str) -> anyhow::Result<StatefulJob> {
        self.api::<StatefulJob>()
            .get_opt(name)
            .await
            .with_context(|| format!("reading StatefulJob {}/{name}", self.namespace))?
            .ok_or_else(|| {
                anyhow!(
                    "no StatefulJob {name} in namespace {} (kubectl get sj -A lists them; -n NAMESPACE picks another)",
                    self.namespace
                )
            })
    }

    /// The job's checkpoint store, opened with the settings of its Secret and `--store-endpoint`.
    pub async fn store(&self, job: &StatefulJob) -> anyhow::Result<JobStore> {
        let ns = kube::ResourceExt::namespace(job).unwrap_or_else(|| self.namespace.clone());
        let name = kube::ResourceExt::name_any(job);
        let secret = job.spec.storage.secret_ref.as_ref().map(|r| r.name.clone());
        let settings = match &secret {
            Some(s) => secret_settings(&self.client, &ns, s)
                .await
                .with_context(|| format!("reading the store's Secret {ns}/{s}"))?,
            None => BTreeMap::new(),
        };
        let url = job.spec.storage.url.clone();
        let settings = with_endpoint(settings, &url, self.store_endpoint.as_deref())?;
        let endpoint = endpoint_of(&settings);
        // Ambient credentials are the user's own: a job without a Secret may rely on them.
        let store = CheckpointStore::from_url_with(
            &url,
            JobId::new(&ns, &name)?,
            &settings,
            Ambient::Allowed,
        )?;
        Ok(JobStore {
            store,
            endpoint,
            secret,
            overridden: self.store_endpoint.is_some(),
        })
    }
}

/// A job's store and where its settings came from, to explain a failure to reach it.
pub struct JobStore {
    /// The store.
    pub store: CheckpointStore,
    /// The endpoint in use, if the settings name one.
    pub endpoint: Option<String>,
    /// The Secret the settings came from.
    pub secret: Option<String>,
    /// Whether `--store-endpoint` set the endpoint.
    pub overridden: bool,
}

/// How long the overviews (`status`, `report`) wait for the store: they are also read for
/// what the cluster says, which a silent store must not hold up.
pub const OVERVIEW_STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

impl JobStore {
    /// `read`, given up after [`OVERVIEW_STORE_WAIT`]; a failure explained by [`Self::failure`].
    pub async fn within<T>(
        &self,
        read: impl std::future::Future<Output = crate::Result<T>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(OVERVIEW_STORE_WAIT, read).await {
            Ok(r) => r.map_err(|e| self.failure(e)),
            Err(_) => Err(self.failure(crate::Error::Other(format!(
                "no answer within {}s",
                OVERVIEW_STORE_WAIT.as_secs()
            )))),
        }
    }

    /// `e`, a failure to read the store, with what to check.
    pub fn failure(&self, e: crate::Error) -> anyhow::Error {
        let hint = match (&self.endpoint, self.overridden) {
            (_, true) => " (endpoint from --store-endpoint)".to_owned(),
            (Some(endpoint), false) => format!(
                " at endpoint {endpoint} (from Secret {}); if that address only resolves inside the cluster, reach the store from here and pass --store-endpoint URL",
                self.secret.as_deref().unwrap_or("-")
            ),
            (None, false) => String::new(),
        };
        anyhow!(
            "cannot read the checkpoints of {} in {}{hint}: {e}",
            self.store.job(),
            self.store.url()
        )
    }
}

/// Settings keys object_store reads as the S3 endpoint (lower case).
const ENDPOINT_KEYS: [&str; 4] = [
    "aws_endpoint",
    "aws_endpoint_url",
    "endpoint",
    "endpoint_url",
];

/// `settings` with `endpoint` replacing any endpoint they name; only S3 stores have one.
pub fn with_endpoint(
    mut settings: BTreeMap<String, String>,
    url: &str,
    endpoint: Option<&str>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(endpoint) = endpoint else {
        return Ok(settings);
    };
    if !(url.starts_with("s3://") || url.starts_with("s3a://")) {
        return Err(crate::Error::invalid(
            "--store-endpoint",
            endpoint,
            format!("only for s3:// stores; this job's store is {url}"),
        )
        .into());
    }
    if reqwest::Url::parse(endpoint).is_err() {
        return Err(crate::Error::invalid(
            "--store-endpoint",
            endpoint,
            "a URL such as http://localhost:9000",
        )
        .into());
    }
    settings.retain(|k, _| !ENDPOINT_KEYS.contains(&k.to_ascii_lowercase().as_str()));
    settings.insert("AWS_ENDPOINT".to_owned(), endpoint.to_owned());
    if endpoint.starts_with("http://") {
        settings.insert("AWS_ALLOW_HTTP".to_owned(), "true".to_owned());
    }
    Ok(settings)
}

fn endpoint_of(settings: &BTreeMap<String, String>) -> Option<String> {
    settings
        .iter()
        .find(|(k, _)| ENDPOINT_KEYS.contains(&k.to_ascii_lowercase().as_str()))
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_endpoint_replaces_the_secrets() {
        let secret = BTreeMap::from([
            (
                "aws_endpoint".to_owned(),
                "http://minio.store:9000".to_owned(),
            ),
            ("AWS_ACCESS_KEY_ID".to_owned(), "id".to_owned()),
        ]);
        let s = with_endpoint(secret.clone(), "s3://b/p", Some("http://127.0.0.1:9000")).unwrap();
        assert_eq!(endpoint_of(&s).as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s["AWS_ALLOW_HTTP"], "true");
        assert_eq!(
            with_endpoint(secret.clone(), "s3://b/p", None).unwrap(),
            secret
        );
        let e = with_endpoint(secret.clone(), "gs://b/p", Some("http://x")).unwrap_err();
        assert!(e.to_string().contains("--store-endpoint"), "{e}");
        let e = with_endpoint(secret, "s3://b/p", Some("not a url")).unwrap_err();
        assert!(e.to_string().contains("http://localhost:9000"), "{e}");
    }

    fn js(endpoint: Option<&str>, overridden: bool) -> JobStore {
        JobStore {
            store: CheckpointStore::from_url(
                "memory://plugin-failure",
                JobId::new("ns", "wc").unwrap(),
            )
            .unwrap(),
            endpoint: endpoint.map(str::to_owned),
            secret: Some("wc-s3".to_owned()),
            overridden,
        }
    }

    #[test]
    fn an_unreachable_store_says_what_to_do() {
        let e = || crate::Error::Other("connection refused".into());
        let m = js(Some("http://minio.store:9000"), false)
            .failure(e())
            .to_string();
        assert!(
            m.contains("at endpoint http://minio.store:9000 (from Secret wc-s3)"),
            "{m}"
        );
        assert!(
            m.contains("pass --store-endpoint URL") && m.ends_with("connection refused"),
            "{m}"
        );
        let m = js(Some("http://127.0.0.1:9"), true)
            .failure(e())
            .to_string();
        assert!(m.contains("(endpoint from --store-endpoint)"), "{m}");
        let m = js(None, false).failure(e()).to_string();
        assert!(
            m.starts_with("cannot read the checkpoints of ns/wc in memory://plugin-failure: "),
            "{m}"
        );
    }
}
