//! The pod runner of the test cluster: pods bound to kwok's fake nodes run as local processes.
//!
//! There is no container runtime on the test machines. kwok plays the kubelet of fake nodes
//! by writing pod status from stages; for pods labelled `regroup.dev/run-locally=true` the pod
//! runner does the kubelet's real work instead: it runs the init containers in order and then
//! the containers as processes of mapped local binaries ([`spec::BinaryTable`]), with the pod's
//! env (downward API, Secrets, ConfigMaps), its volumes as directories ([`spec::PodDirs`]:
//! per-pod ones removed with the pod, one per claim kept), restarts per `restartPolicy`,
//! readiness probes, and SIGTERM/SIGKILL when the pod is deleted. It owns those pods' status
//! ([`status::build_status`]); kwok only gives them their IP (see `e2e/kwok/stages.yaml`).
//!
//! Claims of the runner's StorageClass (`regroup-local`) get a `hostPath` volume on their
//! claim directory ([`claims`]), so StatefulSets with `volumeClaimTemplates` schedule and keep
//! their data across pods.
//!
//! Mounts cannot be real here (no mount namespaces), so they are carried out by rewriting: see
//! [`spec::MountTable`]. Every process's output goes to `<log dir>/<namespace>/<pod>/<container>.log`.

pub mod claims;
pub mod error;
mod runner;
pub mod spec;
pub mod status;
mod supervisor;
#[cfg(test)]
mod testing;
mod volumes;

pub use error::{Error, Result};
pub use runner::{RunnerConfig, parse_node_labels, run};
