# Helpers of e2e/run and e2e/demo: install the operator, create jobs, wait for them, verify.
# Sourced; expects `eval "$(e2e/cluster env)"` done, CARGO_TARGET_DIR set and ROOT the repository.

# shellcheck source=e2e/lib/common.sh
source "$ROOT/e2e/lib/common.sh"
REGROUP=${CARGO_TARGET_DIR:-$ROOT/target}/debug/regroup
# The kubectl plugin (src/bin/kubectl-regroup.rs).
KUBECTL_REGROUP=${CARGO_TARGET_DIR:-$ROOT/target}/debug/kubectl-regroup
OPERATOR_NS=${REGROUP_E2E_OPERATOR_NS:-regroup-system}
WAIT=${REGROUP_E2E_WAIT:-240}
SUMMARY_FILE=${SUMMARY_FILE:-$(mktemp)}
# Records a line of the run's summary.
summary() { echo "$*" >>"$SUMMARY_FILE"; }

say() { echo "[$(date +%H:%M:%S)] $*" >&2; }
fail() {
  say "FAIL: $*"
  return 1
}

# Installs the CRD (from the chart's crds/) and the operator with `helm install`: two replicas
# with leader election, run by the pod runner as local processes (command [regroup], the
# run-locally label, metrics bound to the pod's IP since pods share the host's network).
# Extra arguments go to helm (e.g. --set extraEnv...).
install_operator() {
  say "helm install regroup (namespace $OPERATOR_NS)"
  # Helm installs crds/ once and never upgrades it: the CRD of this tree is applied first.
  kubectl apply -f "$ROOT/charts/regroup/crds/" >/dev/null
  helm upgrade --install regroup "$ROOT/charts/regroup" -n "$OPERATOR_NS" --create-namespace \
    --set image.repository=regroup --set 'command={regroup}' \
    --set-string 'podLabels.regroup\.dev/run-locally=true' \
    --set 'metrics.bindAddress=$(POD_IP)' --set logFormat=text \
    --set-string 'logLevel=info\,regroup=debug' --set leaderElection.leaseDuration=10s \
    --set nodeSelector.type=kwok --wait --timeout 120s "$@" >/dev/null
  wait_crds_established
  say "operator ready: $(kubectl get pods -n "$OPERATOR_NS" -o name | tr '\n' ' ')"
}

# The StatefulJob NAME in NS at PARALLELISM, storing into STORE, with the MinIO credentials in a
# Secret; the worker template is run by the pod runner (`regroup worker`, bound to its pod IP).
# Optional settings (environment): JOB_INTERVAL (10s), JOB_TIMEOUT (20s), JOB_RETAIN (3), and
# lines added as they are (indented for their place): JOB_SECRET_EXTRA (the Secret's
# stringData, 2 spaces), JOB_SPEC_EXTRA (spec, 2 spaces), JOB_POD_EXTRA (the pod spec, 6 spaces),
# JOB_CONTAINER_EXTRA (the worker container, 10 spaces), JOB_ENV_EXTRA (its env, 12 spaces).
job_manifest() {
  local ns=$1 name=$2 parallelism=$3 store=$4 rate=${5:-300} marker=${6:-a}
  cat <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: $name-s3
  namespace: $ns
type: Opaque
stringData:
  AWS_ACCESS_KEY_ID: "$AWS_ACCESS_KEY_ID"
  AWS_SECRET_ACCESS_KEY: "$AWS_SECRET_ACCESS_KEY"
  AWS_REGION: "$AWS_REGION"
  AWS_ENDPOINT: "$AWS_ENDPOINT"
  AWS_ALLOW_HTTP: "true"
${JOB_SECRET_EXTRA:-}
---
apiVersion: regroup.dev/v1alpha1
kind: StatefulJob
metadata:
  name: $name
  namespace: $ns
spec:
  parallelism: $parallelism
  maxParallelism: 128
  storage:
    url: $store
    secretRef:
      name: $name-s3
  checkpointing:
    interval: ${JOB_INTERVAL:-10s}
    timeout: ${JOB_TIMEOUT:-20s}
    retain: ${JOB_RETAIN:-3}
${JOB_SPEC_EXTRA:-}
  template:
    metadata:
      labels:
        regroup.dev/run-locally: "true"
      annotations:
        e2e.regroup.dev/marker: "$marker"
    spec:
      nodeSelector:
        type: kwok
      terminationGracePeriodSeconds: 20
${JOB_POD_EXTRA:-}
      containers:
        - name: worker
          image: regroup:e2e
          command: [regroup]
          args: [worker]
          env:
            - name: POD_IP
              valueFrom:
                fieldRef:
                  fieldPath: status.podIP
            - name: REGROUP_LISTEN
              value: \$(POD_IP):8080
            - name: REGROUP_RATE
              value: "$rate"
${JOB_ENV_EXTRA:-}
          readinessProbe:
            httpGet:
              path: /readyz
              port: 8080
            periodSeconds: 1
${JOB_CONTAINER_EXTRA:-}
EOF
}

# s3 METHOD KEY [CURL ARGS...]: a request to the test bucket signed with AWS signature version 4
# (curl signs); prints the HTTP status, the body goes to S3_OUT (default /dev/null).
s3() {
  local method=$1 key=$2
  shift 2
  # curl -X HEAD would wait for the body the Content-Length announces; --head does not.
  local how=(-X "$method")
  [[ $method == HEAD ]] && how=(--head)
  curl -sS -o "${S3_OUT:-/dev/null}" -w '%{http_code}' --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "${how[@]}" "$@" \
    "$AWS_ENDPOINT/$REGROUP_TEST_S3_BUCKET/$key"
}

# s3_put KEY DATA: writes DATA to KEY (curl 7.88 signs a body only with its hash given).
s3_put() {
  s3 PUT "$1" -H "x-amz-content-sha256: $(printf '%s' "$2" | sha256sum | cut -d' ' -f1)" --data-binary "$2"
}

# The object key of NS/NAME's directory (a store s3://BUCKET/PREFIX holds <PREFIX>/<ns>/<name>).
job_key() {
  local url
  url=$(store_url "$1" "$2")
  echo "${url#s3://"$REGROUP_TEST_S3_BUCKET"/}/$1/$2"
}

# Prints checkpoint ID's _metadata.json of NS/NAME.
checkpoint_metadata() {
  local out rc=0
  out=$(mktemp)
  [[ $(S3_OUT=$out s3 GET "$(job_key "$1" "$2")/chk-$3/_metadata.json") == 200 ]] && cat "$out" || rc=1
  rm -f "$out"
  return "$rc"
}

# Waits up to SECONDS for COMMAND... to succeed (every half second); fails naming DESC.
wait_until() {
  local desc=$1 seconds=$2 i
  shift 2
  for ((i = 0; i < seconds * 2; i++)); do
    "$@" && return 0
    sleep 0.5
  done
  fail "$desc: not within ${seconds}s"
}

# Prints "STATUS REASON MESSAGE" of condition TYPE of NS/NAME.
condition() {
  sj "$1" "$2" | jq -r --arg t "$3" '.status.conditions[]? | select(.type == $t) | "\(.status) \(.reason) \(.message)"'
}

# Succeeds when NS/NAME is Degraded for REASON with a message matching PATTERN (grep -E).
degraded_with() {
  local c
  c=$(condition "$1" "$2" Degraded)
  [[ $c == "True $3 "* ]] && grep -Eq -- "$4" <<<"$c"
}

# The notes of the Events of NS/NAME with REASON, one per line.
events_of() {
  kubectl get events -n "$1" --field-selector "involvedObject.name=$2,reason=$3" -o json |
    jq -r '.items[] | (.message // .note // "")'
}

sj() { kubectl get sj "$2" -n "$1" -o json; }

now_ms() { date +%s%3N; }
# Milliseconds as seconds with one decimal.
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

# Waits until NS/NAME runs PARALLELISM workers of its current spec; prints the phases it saw
# with the time spent in each (the rescale time by stage) and records them in SUMMARY.
wait_running() {
  local ns=$1 name=$2 want=$3 label=${4:-} start now j phase par gen obs last="" t_last stages=""
  start=$(now_ms)
  t_last=$start
  while :; do
    now=$(now_ms)
    if j=$(sj "$ns" "$name" 2>/dev/null); then
      read -r phase par gen obs < <(jq -r '[.status.phase // "-", .status.parallelism // 0,
        .metadata.generation, .status.observedGeneration // 0] | @tsv' <<<"$j")
      if [[ $phase != "$last" ]]; then
        [[ -n $last ]] && stages+="$last $(secs $((now - t_last)))s, "
        last=$phase
        t_last=$now
      fi
      if [[ $phase == Running && $par == "$want" && $gen == "$obs" ]] &&
        [[ $(jq -r '.status.rescale // empty' <<<"$j") == "" ]]; then
        local total
        total=$(secs $((now - start)))
        say "$ns/$name Running at parallelism $want after ${total}s (${stages%, })"
        [[ -z $label ]] || summary "rescale $label: ${total}s [${stages%, }]"
        return 0
      fi
    fi
    if ((now - start > WAIT * 1000)); then
      fail "$ns/$name not Running at parallelism $want within ${WAIT}s (phase $phase, parallelism $par, generation $gen observed $obs): $(jq -c .status <<<"$j")"
      return 1
    fi
    sleep 0.5
  done
}

last_checkpoint() { sj "$1" "$2" | jq -r '.status.lastCheckpoint.id // 0'; }

# Waits for a completed checkpoint newer than AFTER (default: the current one); prints its id.
wait_checkpoint() {
  local ns=$1 name=$2 after=${3:-} id i
  [[ -n $after ]] || after=$(last_checkpoint "$ns" "$name")
  for ((i = 0; i < WAIT * 2; i++)); do
    id=$(last_checkpoint "$ns" "$name")
    if ((id > after)); then
      echo "$id"
      return 0
    fi
    sleep 0.5
  done
  fail "$ns/$name: no checkpoint completed after $after within ${WAIT}s: $(sj "$ns" "$name" | jq -c .status)"
}

store_url() { sj "$1" "$2" | jq -r .spec.storage.url; }

# Verifies checkpoint ID (default: a newer one than the current, awaited) of NS/NAME with the
# oracle, then checks status against the cluster.
verify_job() {
  local ns=$1 name=$2 id=${3:-} out
  [[ -n $id ]] || id=$(wait_checkpoint "$ns" "$name")
  if ! out=$("$REGROUP" verify --store "$(store_url "$ns" "$name")" --job "$ns/$name" --checkpoint "$id" 2>&1); then
    echo "$out" >&2
    fail "regroup verify of $ns/$name checkpoint $id"
    return 1
  fi
  say "verify $ns/$name checkpoint $id: $(head -n 1 <<<"$out")"
  # The oracle checks each key group against its own position; that no progress was lost
  # (positions never go back, e.g. a restore that left a worker an older or empty DB) is
  # checked here: the events of a newer checkpoint are at least those of an older one.
  local events seen_file=$SUMMARY_FILE.events.$ns.$name prev_id=0 prev_events=0
  events=$(head -n 1 <<<"$out" | sed -n 's/.* \([0-9][0-9]*\) events$/\1/p')
  [[ -f $seen_file ]] && read -r prev_id prev_events <"$seen_file"
  if ((id >= prev_id && events < prev_events)); then
    fail "$ns/$name lost progress: checkpoint $id holds $events events, the earlier checkpoint $prev_id held $prev_events"
    return 1
  fi
  ((id < prev_id)) || echo "$id $events" >"$seen_file"
  check_status "$ns" "$name"
}

# status.parallelism == ready worker pods, every worker pod labelled with status.epoch.
check_status() {
  local ns=$1 name=$2 j par epoch sel pods ready wrong
  j=$(sj "$ns" "$name")
  par=$(jq -r .status.parallelism <<<"$j")
  epoch=$(jq -r .status.epoch <<<"$j")
  sel=$(jq -r .status.selector <<<"$j")
  pods=$(kubectl get pods -n "$ns" -l "$sel" -o json)
  ready=$(jq '[.items[] | select(.metadata.deletionTimestamp == null)
    | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length' <<<"$pods")
  wrong=$(jq -r --arg e "$epoch" '[.items[] | select(.metadata.labels["regroup.dev/epoch"] != $e)
    | .metadata.name] | join(",")' <<<"$pods")
  if [[ $ready != "$par" || -n $wrong ]]; then
    fail "$ns/$name status disagrees with the cluster: status.parallelism $par, ready pods $ready, pods not of epoch $epoch: [$wrong]"
    return 1
  fi
  say "status of $ns/$name agrees: $par ready workers of epoch $epoch"
}

# The size of NS/NAME's checkpoints, for the summary.
checkpoint_sizes() {
  "$REGROUP" checkpoints list --store "$(store_url "$1" "$2")" --job "$1/$2" 2>&1 | tail -n 6
}

# What the restores of NS/NAME's current workers moved, from the restore containers' logs: the
# checkpoint is the pods' regroup.dev/checkpoint annotation, one line per subtask of the current
# parallelism (the last, if a restore ran twice). Prints "RESTORES DOWNLOADED_BYTES REUSED_BYTES
# READ_BACK_BYTES" (READ_BACK: reused bytes read back for their checksum, not vouched for by the
# worker's marker).
restore_bytes() {
  local ns=$1 name=$2 p id
  p=$(sj "$ns" "$name" | jq -r .status.parallelism)
  id=$(kubectl get pods -n "$ns" -l "regroup.dev/job=$name" -o json |
    jq -r '[.items[].metadata.annotations["regroup.dev/checkpoint"] // "none"] | unique | join(",")')
  cat "$REGROUP_E2E_DIR/pod-runner/logs/$ns"/*/regroup-restore.log 2>/dev/null |
    grep "^restored checkpoint $id of $ns/$name for subtask [0-9]*/$p " |
    # A pod recreated after its restore (e.g. by an operator that took over mid-rescale) finds
    # the result in place: that local recovery moved nothing and is not the rescale's restore.
    grep -v ": local recovery, " |
    sed -n 's|^restored checkpoint [0-9]* of [^ ]* for subtask \([0-9]*\)/.* downloaded [0-9]* files \([0-9]*\) bytes .* reused locally [0-9]* files \([0-9]*\) bytes (\([0-9]*\) read back).*|\1 \2 \3 \4|p' |
    awk '{d[$1] = $2; r[$1] = $3; b[$1] = $4} END {for (s in d) {n++; dt += d[s]; rt += r[s]; bt += b[s]} print n + 0, dt + 0, rt + 0, bt + 0}'
}

# Waits until NS/NAME's state claims are exactly those of ordinals 0..PARALLELISM-1 (the
# claims of removed ordinals deleted by the operator after the rescale, the others kept).
wait_claims() {
  local ns=$1 name=$2 p=$3 want have i
  want=$(for ((i = 0; i < p; i++)); do echo "state-$name-$i"; done | sort | paste -sd ' ')
  for ((i = 0; i < WAIT * 2; i++)); do
    have=$(kubectl get pvc -n "$ns" -l "regroup.dev/job=$name" -o json |
      jq -r '[.items[] | select(.metadata.deletionTimestamp == null) | .metadata.name] | sort | join(" ")')
    [[ $have == "$want" ]] && { say "claims of $ns/$name: $have"; return 0; }
    sleep 0.5
  done
  fail "claims of $ns/$name are [$have], want [$want]"
}

# After a scale-in of NS/NAME to PARALLELISM with the workers' volumes kept (LABEL names it):
# every new worker restored, the restores reused bytes from the volumes and downloaded the
# rest, and the claims of the removed ordinals are gone.
check_scale_in() {
  local ns=$1 name=$2 p=$3 label=$4 n downloaded reused read_back
  read -r n downloaded reused read_back < <(restore_bytes "$ns" "$name")
  say "$label: $n restores, $downloaded bytes downloaded, $reused bytes reused from the pods' volumes ($read_back read back)"
  summary "restores $label: $downloaded bytes downloaded, $reused bytes reused from the pods' volumes, $read_back of them read back ($n workers)"
  ((n == p)) || { fail "$label: $n restore lines of the current checkpoint in the restore logs, want $p"; return 1; }
  ((reused > 0)) || { fail "$label: the restores reused nothing from the kept volumes"; return 1; }
  ((downloaded > 0)) || { fail "$label: the restores downloaded nothing"; return 1; }
  # Same node, same boot: the stopped workers' markers vouch for every file reused.
  ((read_back == 0)) || { fail "$label: $read_back reused bytes read back, want 0 (the workers' markers vouch for them)"; return 1; }
  wait_claims "$ns" "$name" "$p"
}
