#!/usr/bin/env bash
# deploy/gcp/check.sh: the offline checks of the deploy scripts, for CI.
#
#   - shellcheck on every script in deploy/gcp and deploy/kafka;
#   - every deploy/gcp script's --dry-run: it must print the expected gcloud
#     commands (one per line, a runnable script), never call gcloud (a stub
#     on PATH records any call), and refuse unsafe settings;
#   - stage-function.sh for real into a temporary directory: the bundle root
#     holds go.mod and exactly one .go file, fn.go of package fdxfunction,
#     and no _test.go anywhere; with Go installed the staged root also
#     compiles (FDX_CHECK_BUILD=0 skips that);
#   - vm.sh bundle: the tarball has what the VM's startup script needs.
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
  CHANNEL MINCLIENTS NUMROUNDS CLIENTS AGGREGATOR_ARGS DRY_RUN QUIET USE_IAP EXTERNAL_IP

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
expect up "gcloud services enable" \
  "gcloud compute firewall-rules create" "--rules tcp:9092,tcp:8080" "--target-tags fdx-aggregator" \
  "gcloud compute instances create fdx-kafka" "--image-family debian-12" "--machine-type e2-standard-2" \
  "--zone us-central1-a" "startup-script=" "fdx-minclients=4" "fdx-numrounds=3" "fdx-job=mnist" \
  "gcloud compute scp" \
  "gcloud functions deploy fdx-client" "--gen2" "--runtime go126" "--entry-point Handler" "--trigger-http" \
  "--region us-central1" "FDX_BROKER=" "FDX_JOB=mnist" "--direct-vpc-egress=private-ranges-only" \
  "--memory 512Mi" "--timeout 540s" "--max-instances 10" "--no-allow-unauthenticated" "--project fdx-check"
reject up " --allow-unauthenticated" "0.0.0.0/0"
shape up

dry down "$GCP/down.sh" -q
expect down "gcloud functions delete fdx-client" "gcloud compute instances delete fdx-kafka" \
  "gcloud compute firewall-rules delete" "--quiet"
shape down

dry fw-create "$GCP/firewall.sh" create --metrics-cidr 203.0.113.7/32
expect fw-create "gcloud compute firewall-rules create" "--rules tcp:9100 --source-ranges 203.0.113.7/32" \
  "gcloud compute networks subnets describe default" "--source-ranges 35.235.240.0/20"
reject fw-create "0.0.0.0/0"
shape fw-create
dry fw-delete "$GCP/firewall.sh" delete
expect fw-delete "gcloud compute firewall-rules delete"
shape fw-delete
refuse fw-open "$GCP/firewall.sh" create --source-ranges 0.0.0.0/0
refuse fw-open-metrics "$GCP/firewall.sh" create --metrics-cidr 0.0.0.0/0

dry vm-create "$GCP/vm.sh" create --vm fdx-vm --machine-type e2-standard-4 --job j1 \
  --minclients 7 --numrounds 9 --aggregator-args "--model 2nn --round-timeout 5m"
expect vm-create "gcloud compute instances create fdx-vm" "--machine-type e2-standard-4" \
  "fdx-minclients=7" "fdx-numrounds=9" "fdx-job=j1" "fdx-aggregator-args=--model 2nn --round-timeout 5m" \
  "--metadata-from-file startup-script=" "vm-startup.sh" "gcloud compute scp" "gcloud compute ssh fdx-vm"
shape vm-create
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
    grep -qx 'import _ "github.com/fdxkafka/fdxkafka/function"' "$stage/fn.go"; then
    pass
  else
    fail "fn.go is not package fdxfunction blank-importing the function package"
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

# ---- the VM bundle ------------------------------------------------------------
if "$GCP/vm.sh" bundle "$tmp/bundle.tar.gz" "${PROJECT_FLAG[@]}" 2>"$tmp/bundle.err"; then
  pass
  tar -tzf "$tmp/bundle.tar.gz" >"$tmp/bundle.list"
  for f in ./go.mod ./aggregator/main.go ./deploy/kafka/kafka.sh ./deploy/kafka/kafka.service ./deploy/gcp/vm-startup.sh; do
    if grep -qxF "$f" "$tmp/bundle.list"; then pass; else fail "VM bundle lacks $f"; fi
  done
  if grep -q '^\./\.git/' "$tmp/bundle.list"; then fail "VM bundle has .git"; else pass; fi
else
  fail "vm.sh bundle: $(cat "$tmp/bundle.err")"
fi

echo "deploy-check: $passed passed, $failed failed"
((failed == 0))
