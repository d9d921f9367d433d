#!/usr/bin/env bash
# deploy/gcp/check.sh: the offline checks of the deploy scripts, for CI.
#
#   - shellcheck on every script in deploy/gcp and deploy/kafka;
#   - every deploy/gcp script's --dry-run: it must print the expected gcloud
#     commands (one per line, a runnable script), never call gcloud (a stub
#     on PATH records any call), and refuse unsafe settings: a job with
#     more clients than --max-instances x --concurrency, secrets of unknown
#     kinds; secrets go through --set-secrets / Secret Manager, never
#     --set-env-vars or plain metadata; the VM has no external IP and ssh
#     only through IAP;
#   - stage-function.sh for real into a temporary directory: the bundle root
#     holds go.mod and exactly one .go file, fn.go of package fdxfunction
#     that imports the functions framework and exports Handler, and no
#     _test.go anywhere; with Go installed the staged root also compiles
#     (FDX_CHECK_BUILD=0 skips that);
#   - vm-startup.sh installs and configures the Ops Agent and passes
#     secrets as systemd credentials;
#   - vm.sh bundle: the tarball has what the VM's startup script needs,
#     bin/aggregator included (with FDX_CHECK_BUILD=0: --build-on-vm).
#
# Needs bash, shellcheck, tar; no network, no gcloud, no credentials. Prints
# each failure and a closing "N passed, N failed" line; exits 1 on any
# failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
GCP=deploy/gcp
PROJECT_FLAG=(--project fdx-check)

passed=0
failed=0
pass() { passed=$((passed + 1)); }
fail() {
  failed=$((failed + 1))
  printf 'FAIL: %s\n' "$*" >&2
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A gcloud that only records that it was called: a dry run must not call it.
mkdir -p "$tmp/bin"
cat >"$tmp/bin/gcloud" <<EOF
#!/bin/sh
echo "gcloud \$*" >>"$tmp/gcloud-called"
exit 1
EOF
chmod +x "$tmp/bin/gcloud"
export PATH=$tmp/bin:$PATH
# Settings from the caller's environment must not leak into the checks.
unset PROJECT REGION ZONE NETWORK SUBNET VM_NAME MACHINE_TYPE JOB FUNCTION_NAME RUNTIME MEMORY \
  MAX_INSTANCES TIMEOUT BROKER SOURCE_RANGES METRICS_CIDR ALLOW_UNAUTHENTICATED VPC_CONNECTOR \
  CHANNEL MINCLIENTS NUMROUNDS CLIENTS AGGREGATOR_ARGS DRY_RUN QUIET USE_IAP EXTERNAL_IP \
  CONCURRENCY CPU FUNCTION_SECRETS VM_SECRETS NAT BUILD_ON_VM GO_VERSION FUNCTION_SERVICE_ACCOUNT VM_SERVICE_ACCOUNT

# ---- shellcheck ---------------------------------------------------------------
scripts=()
for f in deploy/gcp/*.sh deploy/kafka/*.sh; do
  [[ -f $f ]] && scripts+=("$f")
done
if ! command -v shellcheck >/dev/null 2>&1; then
  fail "shellcheck is not installed (apt-get install shellcheck)"
else
  for f in "${scripts[@]}"; do
    if shellcheck -x "$f"; then pass; else fail "shellcheck $f"; fi
  done
fi
for f in "${scripts[@]}"; do
  if bash -n "$f"; then pass; else fail "bash -n $f"; fi
done

# ---- dry runs -----------------------------------------------------------------

# dry NAME SCRIPT ARGS... runs a dry run into $tmp/NAME.out; it must succeed.
dry() {
  local name=$1
  shift
  if "$@" --dry-run "${PROJECT_FLAG[@]}" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
    pass
  else
    fail "$name: $* --dry-run exited non-zero: $(cat "$tmp/$name.err")"
  fi
}

# expect NAME STRING... checks that the dry run's output contains each string.
expect() {
  local name=$1 s
  shift
  for s in "$@"; do
    if grep -qF -- "$s" "$tmp/$name.out"; then pass; else fail "$name: output lacks '$s'"; fi
  done
}

# reject NAME STRING... checks that the output contains none of the strings.
reject() {
  local name=$1 s
  shift
  for s in "$@"; do
    if grep -qF -- "$s" "$tmp/$name.out"; then fail "$name: output has '$s'"; else pass; fi
  done
}

# shape NAME checks that every line is a gcloud command, a VAR=$(gcloud ...)
# lookup, a comment, or invoke's curl/wait, and that it all parses as bash.
shape() {
  local name=$1 bad
  bad=$(grep -vE '^(gcloud |[A-Z_]+=\$\(gcloud |# |curl |wait$|$)' "$tmp/$name.out" || true)
  if [[ -z $bad ]]; then pass; else fail "$name: lines that are no gcloud command: $bad"; fi
  if bash -n "$tmp/$name.out"; then pass; else fail "$name: dry-run output is not valid bash"; fi
}

# refuse NAME SCRIPT ARGS... checks that a dry run with bad settings fails.
refuse() {
  local name=$1
  shift
  if "$@" --dry-run "${PROJECT_FLAG[@]}" >"$tmp/$name.out" 2>&1; then
    fail "$name: $* --dry-run succeeded, want an error"
  else
    pass
  fi
}

dry up "$GCP/up.sh" --minclients 4 --numrounds 3
expect up "gcloud services enable" "secretmanager.googleapis.com" \
  "gcloud compute firewall-rules create" "--rules tcp:9092,tcp:8080" "--target-tags fdx-aggregator" \
  "gcloud compute instances create fdx-kafka" "--image-family debian-12" "--machine-type e2-standard-2" \
  "--zone us-central1-a" "startup-script=" "fdx-minclients=4" "fdx-numrounds=3" "fdx-job=mnist" \
  "gcloud compute scp" \
  "gcloud functions deploy fdx-client" "--gen2" "--runtime go126" "--entry-point Handler" "--trigger-http" \
  "--region us-central1" "FDX_BROKER=" "FDX_JOB=mnist" "--direct-vpc-egress=private-ranges-only" \
  "--memory 512Mi" "--timeout 540s" "--max-instances 10" "--concurrency 1" "--no-allow-unauthenticated" "--project fdx-check" \
  "--no-address" "gcloud compute routers create fdx-router" "gcloud compute routers nats create fdx-nat" \
  "--scopes logging-write,monitoring-write" "go build -trimpath -o bin/aggregator" "fdx-aggregator-deny-ssh"
reject up " --allow-unauthenticated" "--set-secrets" "fdx-go-version"
shape up
# 0.0.0.0/0 only ever as the source of the rule that DENIES ssh.
if grep -F -- "0.0.0.0/0" "$tmp/up.out" | grep -vq -- "--action deny --target-tags fdx-aggregator --rules tcp:22 "; then
  fail "up: 0.0.0.0/0 outside the deny-ssh rule"
else
  pass
fi

dry down "$GCP/down.sh" -q
expect down "gcloud functions delete fdx-client" "gcloud compute instances delete fdx-kafka" \
  "gcloud compute firewall-rules delete" "--quiet" "gcloud compute routers nats delete fdx-nat" \
  "gcloud compute routers delete fdx-router" "fdx-aggregator-deny-ssh"
shape down

dry fw-create "$GCP/firewall.sh" create --metrics-cidr 203.0.113.7/32
expect fw-create "gcloud compute firewall-rules create" "--rules tcp:9100 --source-ranges 203.0.113.7/32" \
  "gcloud compute networks subnets describe default" "--source-ranges 35.235.240.0/20 --priority 900" \
  "fdx-aggregator-deny-ssh" "--action deny --target-tags fdx-aggregator --rules tcp:22 --source-ranges 0.0.0.0/0 --priority 1000"
if [[ $(grep -cF -- "0.0.0.0/0" "$tmp/fw-create.out") == 1 ]]; then pass; else fail "fw-create: 0.0.0.0/0 outside the deny-ssh rule"; fi
shape fw-create
dry fw-noiap "$GCP/firewall.sh" create --no-iap --source-ranges 10.0.0.0/20
reject fw-noiap "0.0.0.0/0" "35.235.240.0/20"
dry fw-delete "$GCP/firewall.sh" delete
expect fw-delete "gcloud compute firewall-rules delete"
shape fw-delete
refuse fw-open "$GCP/firewall.sh" create --source-ranges 0.0.0.0/0
refuse fw-open-metrics "$GCP/firewall.sh" create --metrics-cidr 0.0.0.0/0

dry vm-create "$GCP/vm.sh" create --vm fdx-vm --machine-type e2-standard-4 --job j1 \
  --minclients 7 --numrounds 9 --aggregator-args "--model 2nn --round-timeout 5m"
expect vm-create "gcloud compute instances create fdx-vm" "--machine-type e2-standard-4" \
  "fdx-minclients=7" "fdx-numrounds=9" "fdx-job=j1" "fdx-aggregator-args=--model 2nn --round-timeout 5m" \
  "--metadata-from-file startup-script=" "vm-startup.sh" "gcloud compute scp" "gcloud compute ssh fdx-vm" \
  "--no-address" "fdx-build-on-vm=0" "go build -trimpath -o bin/aggregator ./aggregator" "--tunnel-through-iap"
reject vm-create "fdx-go-version" "fdx-secret-" "cloud-platform"
shape vm-create
dry vm-external "$GCP/vm.sh" create --external-ip
reject vm-external "--no-address" "gcloud compute routers"
dry vm-nonat "$GCP/vm.sh" create --no-nat
expect vm-nonat "--no-address"
reject vm-nonat "gcloud compute routers"
dry vm-build "$GCP/vm.sh" create --build-on-vm --go-version 1.26.8
expect vm-build "fdx-build-on-vm=1" "fdx-go-version=1.26.8"
reject vm-build "go build"
dry vm-secrets "$GCP/vm.sh" create --vm-secrets tokens=fdx-tokens,kafka-config=fdx-agg-kafka:3,tls-key=fdx-key \
  --vm-service-account agg@fdx-check.iam.gserviceaccount.com
expect vm-secrets "fdx-secret-tokens=fdx-tokens:latest" "fdx-secret-tls-key=fdx-key:latest" \
  "fdx-secret-kafka-config=fdx-agg-kafka:3" "--scopes cloud-platform" \
  "gcloud secrets add-iam-policy-binding fdx-tokens --project fdx-check --member serviceAccount:agg@fdx-check.iam.gserviceaccount.com --role roles/secretmanager.secretAccessor"
shape vm-secrets
refuse vm-badsecret "$GCP/vm.sh" create --vm-secrets grpc-token=x
# The model-signing key reaches the aggregator the same way.
dry vm-modelkey "$GCP/vm.sh" create --vm-secrets model-key=fdx-model-key
expect vm-modelkey "fdx-secret-model-key=fdx-model-key:latest"
refuse vm-badversion "$GCP/vm.sh" create --vm-secrets tokens=x:v1
dry vm-delete "$GCP/vm.sh" delete
expect vm-delete "gcloud compute instances delete fdx-kafka" "--delete-disks all"
shape vm-delete
dry vm-push "$GCP/vm.sh" push
expect vm-push "gcloud compute scp" "google_metadata_script_runner startup"
shape vm-push

dry fn-deploy "$GCP/function.sh" deploy --function fdx-fn --memory 1Gi --max-instances 50 --timeout 300s
expect fn-deploy "gcloud functions deploy fdx-fn" "--runtime go126" "--entry-point Handler" "--trigger-http" \
  "--gen2" "--source " "--memory 1Gi" "--max-instances 50" "--timeout 300s" "--network default" \
  "--subnet default" "--direct-vpc-egress=private-ranges-only" "--no-allow-unauthenticated" \
  "gcloud compute instances describe fdx-kafka" "FDX_BROKER=\${VM_IP}:9092"
reject fn-deploy " --allow-unauthenticated"
shape fn-deploy
# The capacity guard: each client holds an invocation open for all its rounds.
refuse fn-overfull "$GCP/function.sh" deploy --minclients 20 --max-instances 10
if grep -q "needs 20 concurrent invocations" "$tmp/fn-overfull.out"; then pass; else fail "fn-overfull: no capacity message: $(cat "$tmp/fn-overfull.out")"; fi
refuse fn-overfull-clients "$GCP/function.sh" deploy --clients 11 --max-instances 10
refuse inv-overfull "$GCP/function.sh" invoke --clients 30 --max-instances 10 --concurrency 2
refuse up-overfull "$GCP/up.sh" --minclients 20 --max-instances 10
dry fn-sized "$GCP/function.sh" deploy --minclients 20
expect fn-sized "--max-instances 20 --concurrency 1" "# sized --max-instances to 20"
reject fn-sized "--cpu"
dry fn-conc "$GCP/function.sh" deploy --minclients 20 --max-instances 5 --concurrency 4
expect fn-conc "--max-instances 5 --concurrency 4" "--cpu 4" "--memory 2Gi"
dry fn-conc3 "$GCP/function.sh" deploy --concurrency 3
expect fn-conc3 "--concurrency 3" "--cpu 4" "--memory 2Gi"
dry fn-conc5 "$GCP/function.sh" deploy --concurrency 5
expect fn-conc5 "--concurrency 5" "--cpu 6" "--memory 4Gi"
dry fn-conc8 "$GCP/function.sh" deploy --concurrency 8 --memory 8Gi
expect fn-conc8 "--concurrency 8" "--cpu 8" "--memory 8Gi"
refuse fn-conc-lowmem "$GCP/function.sh" deploy --concurrency 4 --memory 1Gi
refuse fn-cpu8-lowmem "$GCP/function.sh" deploy --cpu 8 --memory 2Gi
refuse fn-badmem "$GCP/function.sh" deploy --memory lots
refuse fn-longtimeout "$GCP/function.sh" deploy --timeout 3601s
dry fn-maxtimeout "$GCP/function.sh" deploy --timeout 3600
expect fn-maxtimeout "--timeout 3600"
refuse fn-conc-frac "$GCP/function.sh" deploy --concurrency 2 --cpu 0.5
dry inv-fits "$GCP/function.sh" invoke --clients 30 --max-instances 10 --concurrency 3
expect inv-fits '"client_id":"30"'

# Secrets: Secret Manager through --set-secrets, never --set-env-vars.
dry fn-secrets "$GCP/function.sh" deploy --function-secrets grpc-token=fdx-token,kafka-config=fdx-kafka:2,grpc-ca=fdx-ca \
  --function-service-account fn@fdx-check.iam.gserviceaccount.com
expect fn-secrets "--set-secrets FDX_GRPC_TOKEN=fdx-token:latest,/etc/fdx/kafka-config/kafka.properties=fdx-kafka:2,/etc/fdx/grpc-ca/ca.pem=fdx-ca:latest" \
  "FDX_KAFKA_CONFIG=/etc/fdx/kafka-config/kafka.properties" "FDX_GRPC_CA=/etc/fdx/grpc-ca/ca.pem" \
  "gcloud secrets add-iam-policy-binding fdx-token --project fdx-check --member serviceAccount:fn@fdx-check.iam.gserviceaccount.com --role roles/secretmanager.secretAccessor" \
  "gcloud secrets add-iam-policy-binding fdx-kafka" "gcloud secrets add-iam-policy-binding fdx-ca"
envvars=$(grep -o -- '--set-env-vars [^ ]*' "$tmp/fn-secrets.out" || true)
if [[ -n $envvars && $envvars != *TOKEN* && $envvars != *fdx-token* && $envvars != *fdx-kafka* ]]; then
  pass
else
  fail "fn-secrets: secret values or names in --set-env-vars: $envvars"
fi
shape fn-secrets
# Clients verify models with the aggregator's public key, mounted as a file.
dry fn-modelpub "$GCP/function.sh" deploy --function-secrets model-pubkey=fdx-model-pub
expect fn-modelpub "/etc/fdx/model-pubkey/model.pub=fdx-model-pub:latest" "FDX_MODEL_PUBKEY=/etc/fdx/model-pubkey/model.pub"
refuse fn-badsecret "$GCP/function.sh" deploy --function-secrets tokens=x
refuse fn-dupsecret "$GCP/function.sh" deploy --function-secrets grpc-ca=a,grpc-ca=b
refuse fn-badsecretname "$GCP/function.sh" deploy --function-secrets 'grpc-token=a/b'

dry fn-runtime "$GCP/function.sh" deploy --runtime go127 --broker 10.0.0.5:9092
expect fn-runtime "--runtime go127" "FDX_BROKER=10.0.0.5:9092"
reject fn-runtime "gcloud compute instances describe"
dry fn-public "$GCP/function.sh" deploy --allow-unauthenticated
expect fn-public " --allow-unauthenticated"
if grep -q WARNING "$tmp/fn-public.err"; then pass; else fail "fn-public: no warning for --allow-unauthenticated"; fi
dry fn-delete "$GCP/function.sh" delete
expect fn-delete "gcloud functions delete fdx-client"
shape fn-delete
dry fn-invoke "$GCP/function.sh" invoke --clients 3
expect fn-invoke "gcloud auth print-identity-token" "gcloud functions describe fdx-client" '"client_id":"3"'
shape fn-invoke
refuse fn-go121 "$GCP/function.sh" deploy --runtime go121
refuse fn-badflag "$GCP/function.sh" deploy --no-such-flag x
refuse vm-badcount "$GCP/vm.sh" create --minclients 0

dry stage "$GCP/stage-function.sh" "$tmp/never"
if [[ ! -e $tmp/never ]]; then pass; else fail "stage-function.sh --dry-run created its OUTDIR"; fi

if [[ -e $tmp/gcloud-called ]]; then
  fail "a dry run called gcloud: $(cat "$tmp/gcloud-called")"
else
  pass
fi

# ---- the staged function source ------------------------------------------------
stage=$tmp/stage
stage_args=()
if [[ ${FDX_CHECK_BUILD:-1} != 0 ]] && command -v go >/dev/null 2>&1; then
  stage_args+=(--check)
fi
if "$GCP/stage-function.sh" "$stage" "${stage_args[@]}" 2>"$tmp/stage.err"; then
  pass
  roots=$(cd "$stage" && find . -maxdepth 1 -name '*.go' | sort | tr '\n' ' ')
  if [[ $roots == "./fn.go " ]]; then pass; else fail "staged root Go files: $roots (want only ./fn.go)"; fi
  if grep -qx 'package fdxfunction' "$stage/fn.go" &&
    grep -qxF '	_ "github.com/GoogleCloudPlatform/functions-framework-go/functions"' "$stage/fn.go" &&
    grep -qxF '	"github.com/fdxkafka/fdxkafka/function"' "$stage/fn.go" &&
    grep -q '^func Handler(w http.ResponseWriter, r \*http.Request)' "$stage/fn.go"; then
    pass
  else
    fail "fn.go is not package fdxfunction importing the functions framework and exporting Handler"
  fi
  tests=$(find "$stage" -name '*_test.go' | head -n 3)
  if [[ -z $tests ]]; then pass; else fail "staged bundle has test files: $tests"; fi
  for f in go.mod go.sum function proto shared .gcloudignore; do
    if [[ -e $stage/$f ]]; then pass; else fail "staged bundle lacks $f"; fi
  done
  for f in .git deploy evaluations; do
    if [[ ! -e $stage/$f ]]; then pass; else fail "staged bundle has $f"; fi
  done
else
  fail "stage-function.sh: $(cat "$tmp/stage.err")"
fi

# ---- the VM's startup script ---------------------------------------------------
# shellcheck disable=SC2016  # literal text of the script, not expansions
for s in "add-google-cloud-ops-agent-repo.sh" "--also-install" "type: systemd_journald" \
  'include_paths: [$KAFKA_HOME/broker/logs/server.log]' 'LoadCredential=$kind:$SECRETS_DIR/$kind' \
  "secretmanager.googleapis.com/v1/projects/" 'tokens) secret_flags+=" --tokens-file %d/tokens"' \
  'if [[ -x $next/bin/aggregator ]]; then'; do
  if grep -qF -- "$s" "$GCP/vm-startup.sh"; then pass; else fail "vm-startup.sh lacks '$s'"; fi
done

# ---- the VM bundle ------------------------------------------------------------
bundle_args=()
bundle_files=(./go.mod ./aggregator/main.go ./deploy/kafka/kafka.sh ./deploy/kafka/kafka.service ./deploy/gcp/vm-startup.sh)
if [[ ${FDX_CHECK_BUILD:-1} == 0 ]] || ! command -v go >/dev/null 2>&1; then
  bundle_args+=(--build-on-vm)
else
  bundle_files+=(./bin/aggregator)
fi
if "$GCP/vm.sh" bundle "$tmp/bundle.tar.gz" "${PROJECT_FLAG[@]}" "${bundle_args[@]}" 2>"$tmp/bundle.err"; then
  pass
  tar -tzf "$tmp/bundle.tar.gz" >"$tmp/bundle.list"
  for f in "${bundle_files[@]}"; do
    if grep -qxF "$f" "$tmp/bundle.list"; then pass; else fail "VM bundle lacks $f"; fi
  done
  if grep -q '^\./\.git/' "$tmp/bundle.list"; then fail "VM bundle has .git"; else pass; fi
else
  fail "vm.sh bundle: $(cat "$tmp/bundle.err")"
fi

echo "deploy-check: $passed passed, $failed failed"
((failed == 0))
