# shellcheck shell=bash disable=SC2034
# Shared by e2e/build, e2e/cluster and e2e/smoke: pinned versions and where things live.
# Sourced, not executed.

# Pinned component versions. Changing one makes e2e/build build that component again
# (binaries are stored in a directory named after the version).
K8S_VERSION=v1.37.2                                       # k8s.io/kubernetes
K8S_STAGING_VERSION=v0.37.2                               # its published k8s.io/* staging twins
ETCD_VERSION=v3.6.16                                      # go.etcd.io/etcd/server/v3
KWOK_VERSION=v0.8.0                                       # sigs.k8s.io/kwok
HELM_VERSION=v4.3.2                                       # helm.sh/helm/v4 (`helm`)
HELM3_VERSION=v3.21.4                                     # helm.sh/helm/v3 (`helm3`, for Helm 3 users)
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c          # github.com/minio/minio (no semver tags upstream)
PROMETHEUS_VERSION=v0.316.0                               # github.com/prometheus/prometheus (Prometheus 3.16.0)

REGROUP_CACHE=${REGROUP_CACHE:-$HOME/.cache/regroup}
E2E_BIN_ROOT=$REGROUP_CACHE/bin

K8S_BIN_DIR=$E2E_BIN_ROOT/kubernetes-$K8S_VERSION
ETCD_BIN_DIR=$E2E_BIN_ROOT/etcd-$ETCD_VERSION
KWOK_BIN_DIR=$E2E_BIN_ROOT/kwok-$KWOK_VERSION
HELM_BIN_DIR=$E2E_BIN_ROOT/helm-$HELM_VERSION
HELM3_BIN_DIR=$E2E_BIN_ROOT/helm-$HELM3_VERSION
MINIO_BIN_DIR=$E2E_BIN_ROOT/minio-$MINIO_VERSION
PROMETHEUS_BIN_DIR=$E2E_BIN_ROOT/prometheus-$PROMETHEUS_VERSION

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

# --- processes we started, found again from their records alone ---------------------------------

# proc_start_time PID: when the process started (field 22 of /proc/PID/stat, clock ticks after
# boot). A process id can be reused; an id together with its start time cannot.
proc_start_time() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # Field 2, the command name in parentheses, may itself hold spaces and parentheses.
  read -ra fields <<<"${stat##*) }"
  [[ ${fields[19]:-} =~ ^[0-9]+$ ]] || return 1
  echo "${fields[19]}"
}

# running PID: true while the process exists and has not exited (a zombie not yet reaped has).
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  [[ ${stat##*) } != Z* ]]
}

# record_process RECORD PID BIN: writes RECORD.pid, RECORD.bin and RECORD.start for a process
# just started from BIN, so that whoever stops it later needs nothing but these files.
record_process() {
  local record=$1 pid=$2 bin=$3
  echo "$pid" >"$record.pid"
  echo "$bin" >"$record.bin"
  proc_start_time "$pid" >"$record.start" || rm -f "$record.start"
}

# recorded_live_pid RECORD [BIN]: the recorded process id, if that process still runs: its start
# time is the recorded one and its command line begins with the recorded binary. (Records of
# older scripts lack .start, and some .bin: then the binary, or BIN, alone decides, as it did.)
recorded_live_pid() {
  local record=$1 bin=${2:-} pid cmd
  [[ -f $record.bin ]] && bin=$(<"$record.bin")
  [[ -f $record.pid && -n $bin ]] || return 1
  pid=$(<"$record.pid")
  [[ $pid =~ ^[1-9][0-9]*$ && -r /proc/$pid/cmdline ]] || return 1
  cmd=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | head -n 1) || return 1
  [[ $cmd == "$bin" ]] || return 1
  if [[ -f $record.start ]]; then
    [[ $(proc_start_time "$pid") == "$(<"$record.start")" ]] || return 1
  fi
  echo "$pid"
}

# forget_process RECORD: removes the record's files.
forget_process() {
  rm -f "$1.pid" "$1.bin" "$1.start"
}

# stop_recorded LABEL WAIT_TENTHS RECORD [BIN]: SIGTERM to the recorded process if it is still
# ours (see recorded_live_pid), up to WAIT_TENTHS tenths of a second for it to end, then SIGKILL;
# forgets the record. Prints nothing when there was no live process.
stop_recorded() {
  local label=$1 wait=$2 pid i
  shift 2
  if pid=$(recorded_live_pid "$@"); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait; i++)); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      log "$label (pid $pid) did not stop in $((wait / 10)) s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $label (pid $pid)"
  fi
  forget_process "$1"
}

# ip_in_cidr IP CIDR: true when the IPv4 address IP lies in CIDR (A.B.C.D/LEN).
ip_in_cidr() {
  local ip net len mask
  ip=$(ipv4_number "$1") && net=$(ipv4_number "${2%/*}") || return 1
  len=${2#*/}
  [[ $len =~ ^[0-9]+$ ]] && ((len <= 32)) || return 1
  mask=$(((0xFFFFFFFF << (32 - len)) & 0xFFFFFFFF))
  (((ip & mask) == (net & mask)))
}

# ipv4_number A.B.C.D: the address as one number.
ipv4_number() {
  local o
  IFS=. read -ra o <<<"$1"
  ((${#o[@]} == 4)) || return 1
  [[ ${o[0]} =~ ^[0-9]{1,3}$ && ${o[1]} =~ ^[0-9]{1,3}$ && ${o[2]} =~ ^[0-9]{1,3}$ && ${o[3]} =~ ^[0-9]{1,3}$ ]] || return 1
  echo $(((o[0] << 24) | (o[1] << 16) | (o[2] << 8) | o[3]))
}

# Waits up to 60 s until regroup's CRDs are Established. `kubectl wait` alone errors out
# (".status.conditions accessor error") on a CRD created so recently that it has no
# conditions yet, so it is retried until the deadline.
wait_crds_established() {
  local deadline=$((SECONDS + 60)) out
  until out=$(kubectl wait --for condition=Established crd/statefuljobs.regroup.dev \
    crd/statefuljobsnapshots.regroup.dev --timeout=10s 2>&1); do
    ((SECONDS < deadline)) || { echo "$out" >&2; die "regroup's CRDs not Established within 60 s"; }
    sleep 0.5
  done
}
