# shellcheck shell=bash
# Prometheus beside the test cluster, for e2e/run's alerts track. Built by e2e/build (like the
# cluster's components), it listens on 127.0.0.1:<port base + 990>, scrapes the operator's and
# the workers' pods at their pod IPs (file_sd written every second from the API server: a
# PodMonitor needs the Prometheus Operator, which this cluster does not run) and evaluates the
# chart's own rules (e2e/prometheus/rules) with short `for` durations.
# Sourced by e2e/run after e2e/lib/regroup.sh; expects the cluster's environment.

# shellcheck source=e2e/lib/common.sh
source "$ROOT/e2e/lib/common.sh"

PROM_DIR=$REGROUP_E2E_DIR/prometheus
# MinIO listens on the port base + 900.
PROM_PORT=$((${AWS_ENDPOINT##*:} - 900 + 990))
PROM_URL=http://127.0.0.1:$PROM_PORT
PROM_BIN=$PROMETHEUS_BIN_DIR/prometheus

# prom_start NAMESPACE [HELM ARGS...]: starts Prometheus scraping the operator and the workers
# of NAMESPACE every second and evaluating the chart's rules (rendered with HELM ARGS) every 2s.
prom_start() {
  local ns=$1 pid i
  shift
  [[ -x $PROM_BIN ]] || { fail "no $PROM_BIN (run: e2e/build prometheus)"; return 1; }
  prom_stop
  rm -rf "$PROM_DIR"
  mkdir -p "$PROM_DIR/data"
  PATH=$HELM_BIN_DIR:$PATH "$ROOT/e2e/prometheus/rules" "$@" >"$PROM_DIR/rules.yaml" || return 1
  echo '[]' >"$PROM_DIR/operator.json"
  echo '[]' >"$PROM_DIR/workers.json"
  # honor_labels: per-job series carry the StatefulJob's namespace and name as the operator's
  # ServiceMonitor and the workers' PodMonitor deliver them; the operator's job is what the
  # ServiceMonitor names it (its Service), which RegroupOperatorDown selects.
  cat >"$PROM_DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 2s
rule_files: [rules.yaml]
scrape_configs:
  - job_name: regroup-metrics
    honor_labels: true
    file_sd_configs: [{files: [operator.json], refresh_interval: 1s}]
  - job_name: regroup-workers
    honor_labels: true
    file_sd_configs: [{files: [workers.json], refresh_interval: 1s}]
EOF
  (prom_targets "$ns" "$$") >"$PROM_DIR/targets.log" 2>&1 &
  record_process "$PROM_DIR/targets" $! bash
  "$PROM_BIN" --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=2h \
    >"$PROM_DIR/prometheus.log" 2>&1 &
  pid=$!
  record_process "$PROM_DIR/prometheus" "$pid" "$PROM_BIN"
  for ((i = 0; i < 60; i++)); do
    curl -fsS "$PROM_URL/-/ready" >/dev/null 2>&1 && { say "prometheus ready on $PROM_URL (rules: $PROM_DIR/rules.yaml)"; return 0; }
    running "$pid" || break
    sleep 0.5
  done
  tail -n 30 "$PROM_DIR/prometheus.log" >&2
  fail "prometheus not ready on $PROM_URL within 30s"
}

# Writes the scrape targets every second until OWNER (e2e/run) exits: the operator's pods and
# NAMESPACE's workers that have a pod IP, labelled as the chart's monitors label them.
prom_targets() {
  local ns=$1 owner=$2
  while kill -0 "$owner" 2>/dev/null; do
    kubectl get pods -n "$OPERATOR_NS" -l app.kubernetes.io/name=regroup -o json 2>/dev/null |
      jq '[.items[] | select(.status.podIP != null and .metadata.deletionTimestamp == null)
        | {targets: [.status.podIP + ":8080"], labels: {namespace: .metadata.namespace, pod: .metadata.name}}]' \
        >"$PROM_DIR/operator.json.tmp" && mv "$PROM_DIR/operator.json.tmp" "$PROM_DIR/operator.json"
    kubectl get pods -n "$ns" -l regroup.dev/job -o json 2>/dev/null |
      jq '[.items[] | select(.status.podIP != null and .metadata.deletionTimestamp == null)
        | {targets: [.status.podIP + ":8080"],
           labels: {namespace: .metadata.namespace, job: .metadata.labels["regroup.dev/job"], pod: .metadata.name}}]' \
        >"$PROM_DIR/workers.json.tmp" && mv "$PROM_DIR/workers.json.tmp" "$PROM_DIR/workers.json"
    sleep 1
  done
}

# Stops what prom_start started (by the recorded process ids).
prom_stop() {
  stop_recorded "prometheus targets" 30 "$PROM_DIR/targets"
  stop_recorded prometheus 100 "$PROM_DIR/prometheus"
}

# prom_query EXPR: the result of an instant query (a JSON array; empty when nothing matches).
prom_query() {
  curl -fsS "$PROM_URL/api/v1/query" --data-urlencode "query=$1" | jq -c '.data.result'
}

# prom_query_range EXPR START END: the series of a range query (step 2s), as a JSON array.
prom_query_range() {
  curl -fsS "$PROM_URL/api/v1/query_range" --data-urlencode "query=$1" \
    --data-urlencode "start=$2" --data-urlencode "end=$3" --data-urlencode step=2s | jq -c '.data.result'
}

# Succeeds when ALERT has fired for NS/JOB (or, without JOB, at all) within the last SECONDS
# (default 900): Prometheus' ALERTS series keeps every firing evaluation.
alert_fired() {
  local alert=$1 ns=${2:-} job=${3:-} window=${4:-900} sel
  sel="alertname=\"$alert\",alertstate=\"firing\""
  [[ -n $ns ]] && sel+=",namespace=\"$ns\""
  [[ -n $job ]] && sel+=",job=\"$job\""
  [[ $(prom_query "max_over_time(ALERTS{$sel}[${window}s])") != '[]' ]]
}

# After an alert did not fire for NS/JOB: what Prometheus had of it, to tell a scrape gap from
# a series that did not move: the targets' health, its alerts' states, SERIES over 2 minutes.
prom_explain() {
  local sel="namespace=\"$1\",job=\"$2\""
  say "prometheus targets: $(curl -fsS "$PROM_URL/api/v1/targets" | jq -c '[.data.activeTargets[] | {scrapeUrl, health, lastError}]')"
  say "alerts of $1/$2 over 2m: $(prom_query "ALERTS{$sel}[2m]")"
  say "$3 of $1/$2 over 2m: $(prom_query "$3{$sel}[2m]")"
}

# Succeeds while ALERT is firing (for NS/JOB).
alert_firing() {
  alert_fired "$1" "${2:-}" "${3:-}" 3
}

# The alerts that fired for NAMESPACE/JOB within the last SECONDS, one name per line.
alerts_fired_for() {
  prom_query "max_over_time(ALERTS{alertstate=\"firing\",namespace=\"$1\",job=\"$2\"}[${3}s])" |
    jq -r '.[].metric.alertname' | sort -u
}
