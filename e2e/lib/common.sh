# shellcheck shell=bash disable=SC2034
# Shared by e2e/build, e2e/cluster and e2e/smoke: pinned versions and where things live.
# Sourced, not executed.

# Pinned component versions. Changing one makes e2e/build build that component again
# (binaries are stored in a directory named after the version).
K8S_VERSION=v1.37.2                                       # k8s.io/kubernetes
K8S_STAGING_VERSION=v0.37.2                               # its published k8s.io/* staging twins
ETCD_VERSION=v3.6.16                                      # go.etcd.io/etcd/server/v3
KWOK_VERSION=v0.8.0                                       # sigs.k8s.io/kwok
HELM_VERSION=v3.22.0                                      # helm.sh/helm/v3
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c          # github.com/minio/minio (no semver tags upstream)

REGROUP_CACHE=${REGROUP_CACHE:-$HOME/.cache/regroup}
E2E_BIN_ROOT=$REGROUP_CACHE/bin

K8S_BIN_DIR=$E2E_BIN_ROOT/kubernetes-$K8S_VERSION
ETCD_BIN_DIR=$E2E_BIN_ROOT/etcd-$ETCD_VERSION
KWOK_BIN_DIR=$E2E_BIN_ROOT/kwok-$KWOK_VERSION
HELM_BIN_DIR=$E2E_BIN_ROOT/helm-$HELM_VERSION
MINIO_BIN_DIR=$E2E_BIN_ROOT/minio-$MINIO_VERSION

die() {
  echo "error: $*" >&2
  exit 1
}

log() {
  echo "[$(date +%H:%M:%S)] $*" >&2
}

# Seconds as "Xm YYs".
fmt_duration() {
  local s=$1
  if ((s >= 60)); then
    printf '%dm %02ds' $((s / 60)) $((s % 60))
  else
    printf '%ds' "$s"
  fi
}
