# shellcheck shell=bash
# The settings are read by the scripts that source this file.
# shellcheck disable=SC2034
# deploy/gcp/lib.sh: settings, flag parsing and command execution shared by
# the deploy/gcp scripts. Sourced, never run.
#
# Every script accepts every flag below, so that up.sh and down.sh can pass
# their whole command line on to each step; a step ignores the settings it
# does not use. Each flag has an environment variable of the name shown; a
# flag wins over the variable, the variable over the default.
#
#   --project ID           PROJECT        [gcloud config get-value project]
#   --region R             REGION         [us-central1]
#   --zone Z               ZONE           [$REGION-a]
#   --network N            NETWORK        [default]
#   --subnet S             SUBNET         [$NETWORK]
#   --vm NAME              VM_NAME        [fdx-kafka]
#   --machine-type T       MACHINE_TYPE   [e2-standard-2]
#   --disk-size SIZE       DISK_SIZE      [20GB]
#   --vm-service-account E VM_SERVICE_ACCOUNT [Compute Engine default]
#   --external-ip          EXTERNAL_IP=1  [0: the VM has no external IP; it
#                          reaches apt, Google's package repos and Maven
#                          Central through Cloud NAT, ssh goes through IAP]
#   --no-external-ip       EXTERNAL_IP=0  (the default; kept for old scripts)
#   --no-nat               NAT=0          [1: without an external IP, vm.sh
#                          creates Cloud Router fdx-router + NAT fdx-nat in
#                          the region unless they exist; --no-nat when the
#                          network has its own NAT]
#   --build-on-vm          BUILD_ON_VM=1  [0: vm.sh builds the aggregator
#                          here (linux/amd64, static) and uploads the binary;
#                          1: the VM installs Go and builds it at boot]
#   --no-iap               USE_IAP=0      [1: ssh/scp through IAP]
#   --tag TAG              NETWORK_TAG    [fdx-aggregator] firewall target
#   --job JOB              JOB            [mnist]
#   --channel C            CHANNEL        [kafka] kafka or grpc
#   --minclients N         MINCLIENTS     [2]
#   --numrounds N          NUMROUNDS      [5]
#   --aggregator-args A    AGGREGATOR_ARGS [] extra aggregator flags
#   --go-version V         GO_VERSION     [this machine's Go, else go.mod's
#                          go line] only with --build-on-vm
#   --function NAME        FUNCTION_NAME  [fdx-client]
#   --runtime RT           RUNTIME        [go126]
#   --memory M             MEMORY         [512Mi, or Cloud Run's minimum for
#                          --cpu: 2Gi for 4, 4Gi for 6 and 8]
#   --max-instances N      MAX_INSTANCES  [10, or more to fit the job: see
#                          --concurrency]
#   --concurrency N        CONCURRENCY    [1] requests one function
#                          instance serves at once. Every client's
#                          invocation stays open for all its rounds, so a
#                          job needs max(--clients, --minclients) <=
#                          MAX_INSTANCES x CONCURRENCY: function.sh sizes
#                          --max-instances when you did not set it, and
#                          refuses a job that does not fit when you did
#   --cpu C                CPU            [CONCURRENCY (1, 2, 4, 6 or 8)
#                          when CONCURRENCY > 1, else the memory's share]
#                          one CPU per concurrent client keeps rounds at the
#                          pace of one client per instance
#   --timeout T            TIMEOUT        [540s] at most 3600s
#   --function-service-account E FUNCTION_SERVICE_ACCOUNT [runtime default]
#   --vpc-connector NAME   VPC_CONNECTOR  [] use a Serverless VPC Access
#                          connector instead of direct VPC egress
#   --allow-unauthenticated ALLOW_UNAUTHENTICATED=1 [0] public function
#   --function-secrets L   FUNCTION_SECRETS [] KIND=SECRET[:VERSION],...
#                          from Secret Manager into the function, never in
#                          --set-env-vars. KIND: grpc-token (env
#                          FDX_GRPC_TOKEN via --set-secrets: the client's
#                          gRPC bearer token and Kafka update MAC key),
#                          kafka-config, grpc-ca, grpc-cert, grpc-key,
#                          model-pubkey (mounted files under /etc/fdx/KIND/,
#                          their paths in FDX_KAFKA_CONFIG, FDX_GRPC_CA,
#                          FDX_GRPC_CERT, FDX_GRPC_KEY, FDX_MODEL_PUBKEY)
#   --vm-secrets L         VM_SECRETS     [] KIND=SECRET[:VERSION],... that
#                          the VM's startup script reads from Secret Manager
#                          at boot (metadata holds only the names) and hands
#                          to the aggregator as systemd credentials. KIND:
#                          tokens (--tokens-file), tls-cert, tls-key,
#                          tls-client-ca, kafka-config, model-key
#                          (--model-key: the Ed25519 key that signs models)
#   --clients N            CLIENTS        [$MINCLIENTS] function.sh invoke
#   --broker HOST:PORT     BROKER         [the VM's internal IP, port 9092
#                          (kafka) or 8080 (grpc)]
#   --source-ranges CIDRS  SOURCE_RANGES  [the subnet's primary range]
#   --metrics-cidr CIDRS   METRICS_CIDR   [$SOURCE_RANGES]
#   --iap-cidr CIDR        IAP_CIDR       [35.235.240.0/20, Google's IAP range]
#   --dry-run              DRY_RUN=1      print the gcloud commands, run none
#   -q, --quiet            QUIET=1        pass --quiet to gcloud deletes
#   -h, --help

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "${0##*/}: needs bash 4.4 or newer (Cloud Shell has it; on macOS: brew install bash)" >&2
  exit 1
fi

FDX_GCP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FDX_REPO=$(cd "$FDX_GCP_DIR/../.." && pwd)

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
warn() { log "WARNING: $*"; }
die() {
  log "error: $*"
  exit 1
}

# usage prints the calling script's header comment, then the common flags.
usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'
  echo
  echo "Common flags (every deploy/gcp script accepts all of them):"
  sed -n '/^#   --project/,/^#   -h, --help/p' "$FDX_GCP_DIR/lib.sh" | sed 's/^#//'
}

declare -A SECRETS=()

# parse_args sets the settings from the flags and leaves the positional
# arguments in ARGS.
parse_args() {
  ARGS=()
  while (($# > 0)); do
    local flag=$1 val
    case $flag in
      --*=*)
        val=${flag#*=}
        flag=${flag%%=*}
        set -- "$flag" "$val" "${@:2}"
        ;;
    esac
    case $flag in
      --dry-run) DRY_RUN=1; shift; continue ;;
      -q | --quiet) QUIET=1; shift; continue ;;
      --no-external-ip) EXTERNAL_IP=0; shift; continue ;;
      --external-ip) EXTERNAL_IP=1; shift; continue ;;
      --no-nat) NAT=0; shift; continue ;;
      --build-on-vm) BUILD_ON_VM=1; shift; continue ;;
      --no-iap) USE_IAP=0; shift; continue ;;
      --allow-unauthenticated) ALLOW_UNAUTHENTICATED=1; shift; continue ;;
      -h | --help) usage; exit 0 ;;
      --) shift; ARGS+=("$@"); break ;;
      --*) ;;
      *) ARGS+=("$1"); shift; continue ;;
    esac
    (($# >= 2)) || die "$flag needs a value"
    val=$2
    case $flag in
      --project) PROJECT=$val ;;
      --region) REGION=$val ;;
      --zone) ZONE=$val ;;
      --network) NETWORK=$val ;;
      --subnet) SUBNET=$val ;;
      --vm) VM_NAME=$val ;;
      --machine-type) MACHINE_TYPE=$val ;;
      --disk-size) DISK_SIZE=$val ;;
      --vm-service-account) VM_SERVICE_ACCOUNT=$val ;;
      --tag) NETWORK_TAG=$val ;;
      --job) JOB=$val ;;
      --channel) CHANNEL=$val ;;
      --minclients) MINCLIENTS=$val ;;
      --numrounds) NUMROUNDS=$val ;;
      --aggregator-args) AGGREGATOR_ARGS=$val ;;
      --go-version) GO_VERSION=$val ;;
      --function) FUNCTION_NAME=$val ;;
      --runtime) RUNTIME=$val ;;
      --memory) MEMORY=$val ;;
      --max-instances) MAX_INSTANCES=$val ;;
      --timeout) TIMEOUT=$val ;;
      --concurrency) CONCURRENCY=$val ;;
      --cpu) CPU=$val ;;
      --function-secrets) FUNCTION_SECRETS=$val ;;
      --vm-secrets) VM_SECRETS=$val ;;
      --function-service-account) FUNCTION_SERVICE_ACCOUNT=$val ;;
      --vpc-connector) VPC_CONNECTOR=$val ;;
      --clients) CLIENTS=$val ;;
      --broker) BROKER=$val ;;
      --source-ranges) SOURCE_RANGES=$val ;;
      --metrics-cidr) METRICS_CIDR=$val ;;
      --iap-cidr) IAP_CIDR=$val ;;
      *) die "unknown flag $flag (see --help)" ;;
    esac
    shift 2
  done
  apply_defaults
}

# go_version_from_mod prints the go directive of the repo's go.mod.
go_version_from_mod() {
  sed -n 's/^go \([0-9][0-9.]*\)$/\1/p' "$FDX_REPO/go.mod" | head -n 1
}

apply_defaults() {
  DRY_RUN=${DRY_RUN:-0}
  QUIET=${QUIET:-0}
  if [[ -z ${PROJECT:-} ]]; then
    PROJECT=${CLOUDSDK_CORE_PROJECT:-${GOOGLE_CLOUD_PROJECT:-}}
  fi
  if [[ -z $PROJECT ]] && command -v gcloud >/dev/null 2>&1; then
    PROJECT=$(gcloud config get-value project 2>/dev/null || true)
  fi
  [[ -n $PROJECT ]] || die "no project: pass --project ID or set PROJECT"
  REGION=${REGION:-us-central1}
  ZONE=${ZONE:-$REGION-a}
  NETWORK=${NETWORK:-default}
  SUBNET=${SUBNET:-$NETWORK}
  VM_NAME=${VM_NAME:-fdx-kafka}
  MACHINE_TYPE=${MACHINE_TYPE:-e2-standard-2}
  DISK_SIZE=${DISK_SIZE:-20GB}
  VM_SERVICE_ACCOUNT=${VM_SERVICE_ACCOUNT:-}
  EXTERNAL_IP=${EXTERNAL_IP:-0}
  NAT=${NAT:-1}
  BUILD_ON_VM=${BUILD_ON_VM:-0}
  USE_IAP=${USE_IAP:-1}
  NETWORK_TAG=${NETWORK_TAG:-fdx-aggregator}
  JOB=${JOB:-mnist}
  CHANNEL=${CHANNEL:-kafka}
  MINCLIENTS=${MINCLIENTS:-2}
  NUMROUNDS=${NUMROUNDS:-5}
  AGGREGATOR_ARGS=${AGGREGATOR_ARGS:-}
  # The VM builds only with --build-on-vm; then with this machine's Go
  # release (a patched one), else go.mod's minimum.
  if [[ -z ${GO_VERSION:-} ]] && command -v go >/dev/null 2>&1; then
    GO_VERSION=$(go env GOVERSION 2>/dev/null | sed -n 's/^go\([0-9][0-9.]*\)$/\1/p')
  fi
  GO_VERSION=${GO_VERSION:-$(go_version_from_mod)}
  FUNCTION_NAME=${FUNCTION_NAME:-fdx-client}
  RUNTIME=${RUNTIME:-go126}
  # Whether the caller chose --memory: then a CPU that needs more is
  # refused rather than the setting overridden.
  MEMORY_SET=0
  if [[ -n ${MEMORY:-} ]]; then MEMORY_SET=1; fi
  MEMORY=${MEMORY:-512Mi}
  # Whether the caller chose --max-instances: then a job that does not fit
  # is refused rather than the setting overridden.
  MAX_INSTANCES_SET=0
  if [[ -n ${MAX_INSTANCES:-} ]]; then MAX_INSTANCES_SET=1; fi
  MAX_INSTANCES=${MAX_INSTANCES:-10}
  CONCURRENCY=${CONCURRENCY:-1}
  CPU=${CPU:-}
  FUNCTION_SECRETS=${FUNCTION_SECRETS:-}
  VM_SECRETS=${VM_SECRETS:-}
  TIMEOUT=${TIMEOUT:-540s}
  FUNCTION_SERVICE_ACCOUNT=${FUNCTION_SERVICE_ACCOUNT:-}
  VPC_CONNECTOR=${VPC_CONNECTOR:-}
  ALLOW_UNAUTHENTICATED=${ALLOW_UNAUTHENTICATED:-0}
  CLIENTS=${CLIENTS:-$MINCLIENTS}
  BROKER=${BROKER:-}
  SOURCE_RANGES=${SOURCE_RANGES:-}
  METRICS_CIDR=${METRICS_CIDR:-}
  IAP_CIDR=${IAP_CIDR:-35.235.240.0/20}

  case $CHANNEL in
    kafka) SERVICE_PORT=9092 ;;
    grpc) SERVICE_PORT=8080 ;;
    *) die "--channel $CHANNEL: want kafka or grpc" ;;
  esac
  local n
  for n in MINCLIENTS NUMROUNDS MAX_INSTANCES CLIENTS CONCURRENCY; do
    [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n=${!n}: want a positive integer"
  done
  ((CONCURRENCY <= 1000)) || die "CONCURRENCY=$CONCURRENCY: Cloud Run functions allow at most 1000"
  if [[ -n $CPU ]] && ! [[ $CPU =~ ^(0\.[0-9]+|1|2|4|6|8)$ ]]; then
    die "CPU=$CPU: want 1, 2, 4, 6, 8 or a fraction below 1"
  fi
  [[ $TIMEOUT =~ ^[1-9][0-9]*s?$ ]] || die "TIMEOUT=$TIMEOUT: want seconds, e.g. 540s"
  # An HTTP function's request timeout is at most 60 minutes; gcloud
  # would accept more and the deploy fail.
  ((${TIMEOUT%s} <= 3600)) || die "TIMEOUT=$TIMEOUT: HTTP Cloud Run functions allow at most 3600s"
  memory_mib >/dev/null || die "MEMORY=$MEMORY: want a size such as 512Mi, 2Gi, 512M or 4G"
  [[ $JOB =~ ^[A-Za-z0-9._-]+$ ]] || die "JOB=$JOB: use letters, digits, '.', '_' and '-' (it names Kafka topics)"
  [[ $GO_VERSION =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] || die "GO_VERSION=$GO_VERSION: want e.g. 1.26.8"
  case $RUNTIME in
    go1[0-9][0-9]) ;;
    *) die "--runtime $RUNTIME: want a Go runtime id such as go126" ;;
  esac
  if [[ $RUNTIME < go126 ]]; then
    # go121 was decommissioned on 2026-03-03, go122/go123 in mid 2026, and
    # the module needs Go 1.26 (grpc, cloud.google.com/go/logging).
    die "--runtime $RUNTIME: the module needs Go 1.26; use go126 or newer"
  fi
  if [[ -n $METRICS_CIDR ]]; then
    check_cidrs "$METRICS_CIDR"
  fi
  if [[ -n $SOURCE_RANGES ]]; then
    check_cidrs "$SOURCE_RANGES"
  fi
  # The project's gcloud flags; every gcloud command gets them so a run
  # never depends on the caller's active gcloud configuration.
  GCLOUD_PROJECT=(--project "$PROJECT")
  QUIET_FLAG=()
  if ((QUIET)); then QUIET_FLAG=(--quiet); fi
  IAP_FLAG=()
  if ((USE_IAP)); then IAP_FLAG=(--tunnel-through-iap); fi
}

# check_cidrs rejects CIDR lists that open a port to the whole internet.
check_cidrs() {
  local c cs
  IFS=, read -ra cs <<<"$1"
  for c in "${cs[@]}"; do
    [[ $c =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] || die "$c: want an IPv4 CIDR such as 10.128.0.0/20"
    [[ $c != 0.0.0.0/0 ]] || die "$c would open the port to the whole internet; name a narrower range"
  done
}

# quote_arg prints $1 for a shell: plain when it is safe, in double quotes
# when it holds a ${VAR} placeholder from capture, else in single quotes.
quote_arg() {
  local a=$1
  # shellcheck disable=SC2016  # a literal ${
  local placeholder='${'
  if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$a"
  elif [[ $a == *"$placeholder"* && $a != *[\"\`\\]* ]]; then
    printf '"%s"' "$a"
  else
    printf "'%s'" "${a//\'/\'\\\'\'}"
  fi
}

# quote_cmd prints a command line that a shell would run as "$@".
quote_cmd() {
  local a sep=""
  for a in "$@"; do
    printf '%s' "$sep"
    quote_arg "$a"
    sep=" "
  done
}

# run executes a command, or in a dry run prints it on one line. The dry
# run's output is itself a shell script.
run() {
  if ((DRY_RUN)); then
    quote_cmd "$@"
    echo
    return 0
  fi
  printf '+ %s\n' "$(quote_cmd "$@")" >&2
  "$@"
}

# note says what a local (non-gcloud) step does; in a dry run as a comment.
note() {
  if ((DRY_RUN)); then
    printf '# %s\n' "$*"
  else
    log "$*"
  fi
}

# capture VAR CMD... sets VAR to CMD's output. A dry run prints
# VAR=$(CMD) and sets VAR to the placeholder ${VAR}, which later commands
# print in double quotes, so the printed script stays runnable.
capture() {
  local var=$1 out
  shift
  if ((DRY_RUN)); then
    # shellcheck disable=SC2016  # prints a command substitution
    printf '%s=$(%s)\n' "$var" "$(quote_cmd "$@")"
    # shellcheck disable=SC2016  # a literal ${VAR} placeholder
    printf -v "$var" '${%s}' "$var"
    return 0
  fi
  # shellcheck disable=SC2016  # prints a command substitution
  printf '+ %s=$(%s)\n' "$var" "$(quote_cmd "$@")" >&2
  out=$("$@") || die "command failed: $(quote_cmd "$@")"
  [[ -n $out ]] || die "no output from: $(quote_cmd "$@")"
  printf -v "$var" '%s' "$out"
}

# retry N SECONDS CMD... runs CMD until it succeeds, at most N times. A dry
# run prints the command once.
retry() {
  local n=$1 pause=$2 i
  shift 2
  if ((DRY_RUN)); then
    run "$@"
    return 0
  fi
  for ((i = 1; i <= n; i++)); do
    if run "$@"; then
      return 0
    fi
    ((i < n)) || break
    log "attempt $i/$n failed; retrying in ${pause}s"
    sleep "$pause"
  done
  die "gave up after $n attempts: $(quote_cmd "$@")"
}

# need_gcloud fails early when a real run has no gcloud.
need_gcloud() {
  if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
  fi
}

# subnet_range sets SOURCE_RANGES to the subnet's primary range unless set:
# with direct VPC egress a function's instances take their addresses from
# that range, so it is the narrowest source that lets them reach the VM.
subnet_range() {
  if [[ -z $SOURCE_RANGES ]]; then
    if [[ -n $VPC_CONNECTOR ]]; then
      die "with --vpc-connector, pass --source-ranges (the connector's /28 range)"
    fi
    capture SOURCE_RANGES gcloud compute networks subnets describe "$SUBNET" \
      "${GCLOUD_PROJECT[@]}" --region "$REGION" --format 'value(ipCidrRange)'
  fi
  METRICS_CIDR=${METRICS_CIDR:-$SOURCE_RANGES}
}

# vm_internal_ip sets VM_IP to the VM's internal address.
vm_internal_ip() {
  capture VM_IP gcloud compute instances describe "$VM_NAME" \
    "${GCLOUD_PROJECT[@]}" --zone "$ZONE" --format 'value(networkInterfaces[0].networkIP)'
}

# abs_path prints PATH made absolute; PATH's parent directory must exist.
abs_path() {
  local dir base
  dir=$(dirname "$1")
  base=$(basename "$1")
  dir=$(cd "$dir" && pwd) || die "no directory $(dirname "$1")"
  if [[ $base == . ]]; then
    printf '%s\n' "$dir"
  else
    printf '%s\n' "${dir%/}/$base"
  fi
}

# repo_files DST FIND-PREDICATE... prints, NUL-separated and relative to
# the repo (./-prefixed), the repo's files except those under paths that
# match the predicates (find syntax: -path ./x -o -name y). It never lists
# the version control, tool and output directories, evaluations/, or DST
# (the stage directory or bundle file being written) when DST lies inside
# the repo. find and tar only, no rsync, so it runs on a bare Cloud Shell.
repo_files() {
  local dst rel
  dst=$(abs_path "$1")
  shift
  local prune=(-path ./.git -o -path ./.tools -o -path ./bin -o -path ./out -o -path ./evaluations)
  if (($# > 0)); then
    prune+=(-o "$@")
  fi
  if [[ $dst == "$FDX_REPO"/* ]]; then
    rel=./${dst#"$FDX_REPO"/}
    prune+=(-o -path "$rel")
  fi
  (cd "$FDX_REPO" && find . \( "${prune[@]}" \) -prune -o \( -type f -o -type l \) -print0)
}

# copy_repo DST FIND-PREDICATE... copies repo_files into DST.
copy_repo() {
  local dst=$1
  repo_files "$@" | (cd "$FDX_REPO" && tar --null -T - -cf -) | tar -C "$dst" -xf -
}

# job_clients prints how many invocations a job holds open at once: every
# client stays in its invocation for all its rounds, and a round closes
# only with --minclients updates.
job_clients() {
  if ((CLIENTS > MINCLIENTS)); then echo "$CLIENTS"; else echo "$MINCLIENTS"; fi
}

# size_function checks the job against the function's capacity,
# MAX_INSTANCES x CONCURRENCY concurrent requests, before anything is
# deployed or invoked. Beyond it, Cloud Run answers 429 to the surplus
# clients, the others wait in rounds that never reach --minclients, and the
# job deadlocks. When the caller did not choose --max-instances it is sized
# to fit; a chosen one that is too small is refused. It also sets CPU.
size_function() {
  local need slots
  need=$(job_clients)
  slots=$((MAX_INSTANCES * CONCURRENCY))
  if ((need > slots)); then
    if ((MAX_INSTANCES_SET)); then
      die "the job needs $need concurrent invocations (max of --clients $CLIENTS and --minclients $MINCLIENTS), but --max-instances $MAX_INSTANCES x --concurrency $CONCURRENCY serves $slots: rounds would never close. Raise --max-instances to $(((need + CONCURRENCY - 1) / CONCURRENCY)) or --concurrency (with the CPU to match)"
    fi
    MAX_INSTANCES=$(((need + CONCURRENCY - 1) / CONCURRENCY))
    note "sized --max-instances to $MAX_INSTANCES: $need clients at --concurrency $CONCURRENCY"
  fi
  if ((CONCURRENCY > 1)) && [[ -z $CPU ]]; then
    # Concurrency above 1 needs at least one vCPU; training is CPU-bound,
    # so give each concurrent client one (Cloud Run offers 1, 2, 4, 6, 8).
    local c
    for c in 1 2 4 6 8; do
      CPU=$c
      ((c < CONCURRENCY)) || break
    done
  fi
  if ((CONCURRENCY > 1)) && [[ $CPU == 0.* ]]; then
    die "--concurrency $CONCURRENCY needs --cpu 1 or more (Cloud Run allows concurrency > 1 only with a whole vCPU)"
  fi
  if ((CONCURRENCY > 1)) && [[ -n $CPU && $CPU != 0.* ]] && ((CPU < CONCURRENCY)); then
    warn "--concurrency $CONCURRENCY on --cpu $CPU: concurrent clients share the CPU, so rounds take longer than with one client per instance"
  fi
  size_memory
}

# memory_mib prints MEMORY in MiB (Cloud Run's suffixes: Mi, Gi, M, G).
memory_mib() {
  [[ $MEMORY =~ ^([1-9][0-9]*)(Mi|Gi|M|G)$ ]] || return 1
  local n=${BASH_REMATCH[1]}
  case ${BASH_REMATCH[2]} in
    Mi) echo "$n" ;;
    Gi) echo $((n * 1024)) ;;
    M) echo $((n * 1000000 / 1048576)) ;;
    G) echo $((n * 1000000000 / 1048576)) ;;
  esac
}

# size_memory gives the CPU the memory Cloud Run requires of it: 4 vCPU
# need at least 2 GiB, 6 and 8 at least 4 GiB; a deploy with less is
# rejected. An unset --memory is raised to the minimum, a chosen one that
# is too small is refused.
size_memory() {
  local min=0 have
  case $CPU in
    4) min=2048 ;;
    6 | 8) min=4096 ;;
  esac
  have=$(memory_mib)
  ((have >= min)) && return 0
  if ((MEMORY_SET)); then
    die "--cpu $CPU needs --memory $((min / 1024))Gi or more (Cloud Run's minimum for $CPU vCPU), not $MEMORY"
  fi
  MEMORY=$((min / 1024))Gi
  note "raised --memory to $MEMORY: Cloud Run's minimum for --cpu $CPU"
}

# secret_ref checks SECRET[:VERSION] and prints SECRET:VERSION (latest by
# default).
secret_ref() {
  local name=${1%%:*} version=latest
  if [[ $1 == *:* ]]; then version=${1#*:}; fi
  [[ $name =~ ^[A-Za-z0-9_-]{1,255}$ ]] || die "secret name '$name': letters, digits, '_' and '-' only"
  [[ $version =~ ^([1-9][0-9]*|latest)$ ]] || die "secret version '$version': a number or latest"
  printf '%s:%s\n' "$name" "$version"
}

# parse_secrets LIST KINDS... checks a KIND=SECRET[:VERSION],... list
# against the allowed kinds and fills the associative array SECRETS.
parse_secrets() {
  local list=$1 item kind ref
  shift
  SECRETS=()
  [[ -n $list ]] || return 0
  local items
  IFS=, read -ra items <<<"$list"
  for item in "${items[@]}"; do
    [[ $item == *=* ]] || die "secret '$item': want KIND=SECRET[:VERSION]"
    kind=${item%%=*}
    ref=$(secret_ref "${item#*=}")
    [[ " $* " == *" $kind "* ]] || die "secret kind '$kind': want one of $*"
    [[ -z ${SECRETS[$kind]:-} ]] || die "secret kind '$kind' given twice"
    SECRETS[$kind]=$ref
  done
}
