#!/usr/bin/env bash
# deploy/gcp/vm-startup.sh: the startup script of the FDxKafka VM. vm.sh
# passes it as the instance's `startup-script` metadata; GCE runs it as root
# at every boot (google-startup-scripts.service), and `vm.sh push` runs it
# again after uploading a new bundle. Every step is idempotent.
#
#  1. Installs Java 17, Maven (deploy/kafka/kafka.sh fetches the broker jars
#     with it) and Google's Ops Agent, configured to ship the broker's
#     server.log and the systemd journal to Cloud Logging.
#  2. Waits for the repo bundle at /var/lib/fdx/bundle.tar.gz, which vm.sh
#     uploads with `gcloud compute scp` (the VM needs no access to the Git
#     host), and when it is new unpacks it to /opt/fdxkafka. The bundle
#     carries bin/aggregator, built by vm.sh; only with fdx-build-on-vm=1
#     does this script install Go $fdx-go-version and build it.
#  3. Reads the secrets named by fdx-secret-KIND metadata from Secret
#     Manager (with the VM's service account) into /etc/fdx/secrets/KIND,
#     root-only; the aggregator unit loads them as systemd credentials.
#  4. Installs and starts two systemd units:
#     - fdxkafka-broker: deploy/kafka/kafka.service as that file documents
#       (kafka.sh start --keep-data as user fdxkafka), with FDX_KAFKA_HOST =
#       the VM's internal IP from the metadata server, in
#       /etc/default/fdxkafka-broker;
#     - fdx-aggregator: aggregator --broker 127.0.0.1:9092 --minclients N
#       --numrounds R --job JOB --log-to cloud --metrics-addr :9100.
#
# Settings come from instance metadata (vm.sh sets them): fdx-job,
# fdx-channel (kafka|grpc), fdx-minclients, fdx-numrounds, fdx-build-on-vm,
# fdx-go-version, fdx-aggregator-args, fdx-secret-KIND (KIND: tokens,
# tls-cert, tls-key, tls-client-ca, kafka-config, model-key; value
# SECRET:VERSION), and
# fdx-kafka-secure (1: the broker in kafka.sh's secure mode, `kafka.sh acls
# JOB` run before the aggregator starts, which logs in as its SASL user; see
# deploy/kafka/README.md "Secure mode"; the setting takes effect on a fresh
# broker data dir). Its output goes to the journal:
#   sudo journalctl -u google-startup-scripts.service
set -euo pipefail

readonly MD=http://metadata.google.internal/computeMetadata/v1
readonly ROOT=/opt/fdxkafka
readonly STATE=/var/lib/fdx
readonly BUNDLE=$STATE/bundle.tar.gz
readonly INSTALLED=$STATE/installed.sha256
readonly BUNDLE_WAIT=${FDX_BUNDLE_WAIT:-3600}
readonly KAFKA_UNIT=fdxkafka-broker
readonly KAFKA_USER=fdxkafka
readonly KAFKA_HOME=/var/lib/fdxkafka
readonly AGG_UNIT=fdx-aggregator
readonly SECRETS_DIR=/etc/fdx/secrets
readonly SECRET_KINDS=(tokens tls-cert tls-key tls-client-ca kafka-config model-key)
readonly OPS_AGENT_CONFIG=/etc/google-cloud-ops-agent/config.yaml

export HOME=/root
export GOPATH=/var/cache/fdx/go
export GOCACHE=/var/cache/fdx/go-build
export PATH=/usr/local/go/bin:$PATH
export DEBIAN_FRONTEND=noninteractive

log() { echo "fdx-startup: $*"; }
die() {
  log "error: $*"
  exit 1
}

md() { curl -fsS --retry 10 --retry-connrefused --max-time 10 -H 'Metadata-Flavor: Google' "$MD/$1"; }

# attr KEY DEFAULT prints the instance attribute KEY, or DEFAULT when unset.
attr() {
  local v
  if v=$(curl -fsS --max-time 10 -H 'Metadata-Flavor: Google' "$MD/instance/attributes/$1" 2>/dev/null); then
    printf '%s' "$v"
  else
    printf '%s' "$2"
  fi
}

install_packages() {
  local pkgs=(openjdk-17-jre-headless maven ca-certificates curl) missing=() p
  for p in "${pkgs[@]}"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not ours
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "packages present"
    return 0
  fi
  log "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# write_if_changed FILE writes stdin to FILE when that changes it, and then
# sets UNITS_CHANGED so that main restarts the services.
write_if_changed() {
  local file=$1 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
    return 0
  fi
  install -m 0644 "$tmp" "$file"
  rm -f "$tmp"
  UNITS_CHANGED=1
}

install_go() {
  local version=$1 arch url tmp sum
  if [[ -x /usr/local/go/bin/go ]] && [[ $(/usr/local/go/bin/go env GOVERSION) == "go$version" ]]; then
    log "Go $version present"
    return 0
  fi
  arch=$(dpkg --print-architecture)
  url=https://dl.google.com/go/go$version.linux-$arch.tar.gz
  log "installing Go $version from $url"
  tmp=$(mktemp)
  curl -fsSL --retry 5 -o "$tmp" "$url"
  sum=$(curl -fsSL --retry 5 "$url.sha256")
  echo "$sum  $tmp" | sha256sum -c --quiet - || die "checksum mismatch for $url"
  rm -rf /usr/local/go
  tar -C /usr/local -xzf "$tmp"
  rm -f "$tmp"
}

# install_ops_agent installs Google's Ops Agent and has it ship the
# broker's server.log and the journal (the units, this script) to Cloud
# Logging; the aggregator writes there itself (--log-to cloud).
install_ops_agent() {
  local tmp
  if ! dpkg-query -W -f='${Status}' google-cloud-ops-agent 2>/dev/null | grep -q 'install ok installed'; then
    log "installing the Ops Agent"
    tmp=$(mktemp)
    curl -fsSL --retry 5 -o "$tmp" https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh
    bash "$tmp" --also-install
    rm -f "$tmp"
  fi
  local changed=$UNITS_CHANGED
  UNITS_CHANGED=0
  install -d /etc/google-cloud-ops-agent
  write_if_changed "$OPS_AGENT_CONFIG" <<EOF
# Written by deploy/gcp/vm-startup.sh; merged with the agent's defaults.
logging:
  receivers:
    fdx_kafka_server:
      type: files
      include_paths: [$KAFKA_HOME/broker/logs/server.log]
    fdx_journal:
      type: systemd_journald
  service:
    pipelines:
      fdx:
        receivers: [fdx_kafka_server, fdx_journal]
EOF
  if ((UNITS_CHANGED)); then
    systemctl restart google-cloud-ops-agent
  fi
  UNITS_CHANGED=$changed
}

# fetch_secrets writes each fdx-secret-KIND secret to $SECRETS_DIR/KIND,
# readable by root only, and removes those no longer named. It sets
# SECRETS_FOUND to the kinds it wrote. The values come from Secret
# Manager's REST API with the VM's service-account token from the metadata
# server: no SDK needed.
fetch_secrets() {
  local project=$1 kind ref name version token body data tmp
  install -d -m 0700 "$SECRETS_DIR"
  SECRETS_FOUND=""
  for kind in "${SECRET_KINDS[@]}"; do
    ref=$(attr "fdx-secret-$kind" "")
    if [[ -z $ref ]]; then
      rm -f "$SECRETS_DIR/$kind"
      continue
    fi
    name=${ref%%:*} version=${ref#*:}
    [[ $name =~ ^[A-Za-z0-9_-]+$ && $version =~ ^([1-9][0-9]*|latest)$ ]] || die "fdx-secret-$kind=$ref: want SECRET:VERSION"
    if [[ -z ${token:-} ]]; then
      token=$(md instance/service-accounts/default/token | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p')
      [[ -n $token ]] || die "no access token from the metadata server"
    fi
    body=$(curl -fsS --retry 5 -H "Authorization: Bearer $token" \
      "https://secretmanager.googleapis.com/v1/projects/$project/secrets/$name/versions/$version:access") ||
      die "reading secret $name:$version failed: does the VM's service account have roles/secretmanager.secretAccessor, and the VM the cloud-platform scope?"
    data=$(tr -d '\n ' <<<"$body" | sed -n 's/.*"data":"\([^"]*\)".*/\1/p')
    [[ -n $data ]] || die "secret $name:$version: no payload"
    tmp=$(mktemp "$SECRETS_DIR/.$kind.XXXXXX")
    base64 -d <<<"$data" >"$tmp" || die "secret $name:$version: bad payload"
    if [[ -f $SECRETS_DIR/$kind ]] && cmp -s "$tmp" "$SECRETS_DIR/$kind"; then
      rm -f "$tmp"
    else
      mv "$tmp" "$SECRETS_DIR/$kind"
      UNITS_CHANGED=1
    fi
    SECRETS_FOUND+="$kind "
  done
}

wait_for_bundle() {
  local deadline=$((SECONDS + BUNDLE_WAIT))
  if [[ ! -f $BUNDLE ]]; then
    log "waiting up to ${BUNDLE_WAIT}s for $BUNDLE (vm.sh create/push uploads it)"
  fi
  while [[ ! -f $BUNDLE ]]; do
    ((SECONDS < deadline)) || die "no bundle at $BUNDLE after ${BUNDLE_WAIT}s: run deploy/gcp/vm.sh push"
    sleep 5
  done
}

# install_bundle unpacks a bundle that differs from the installed one, and
# builds the aggregator when the bundle has no binary. It works beside the
# live tree and swaps the directories, so a failed build leaves the running
# version alone.
install_bundle() {
  local go_version=$1 sum next=$ROOT.next
  sum=$(sha256sum "$BUNDLE" | cut -d' ' -f1)
  if [[ -f $INSTALLED && $(<"$INSTALLED") == "$sum" && -x $ROOT/bin/aggregator ]]; then
    log "bundle $sum already installed"
    return 0
  fi
  log "unpacking bundle $sum"
  rm -rf "$next"
  mkdir -p "$next" "$GOPATH" "$GOCACHE"
  tar -C "$next" --no-same-owner -xzf "$BUNDLE"
  [[ -f $next/deploy/kafka/kafka.service && -x $next/deploy/kafka/kafka.sh ]] ||
    die "the bundle lacks deploy/kafka/kafka.service or kafka.sh"
  if [[ -x $next/bin/aggregator ]]; then
    log "the bundle carries bin/aggregator; not building"
  else
    [[ -n $go_version ]] || die "the bundle has no bin/aggregator and there is no fdx-go-version to build it: rerun vm.sh push (or with --build-on-vm)"
    install_go "$go_version"
    log "building the aggregator with $(go version)"
    (cd "$next" && CGO_ENABLED=0 go build -trimpath -o bin/aggregator ./aggregator) || die "building the aggregator failed"
  fi
  chmod -R a+rX "$next"
  rm -rf "$ROOT.old"
  if [[ -d $ROOT ]]; then mv "$ROOT" "$ROOT.old"; fi
  mv "$next" "$ROOT"
  rm -rf "$ROOT.old"
  echo "$sum" >"$INSTALLED"
  UNITS_CHANGED=1
}

install_kafka_unit() {
  local ip=$1 secure=$2
  if ! id -u "$KAFKA_USER" >/dev/null 2>&1; then
    useradd --system --home-dir "$KAFKA_HOME" --shell /usr/sbin/nologin "$KAFKA_USER"
  fi
  install -d -o "$KAFKA_USER" -g "$KAFKA_USER" -m 0750 "$KAFKA_HOME"
  write_if_changed "/etc/systemd/system/$KAFKA_UNIT.service" <"$ROOT/deploy/kafka/kafka.service"
  # The broker advertises this address to the functions, so it must be the
  # internal IP they reach through the VPC, never 127.0.0.1.
  printf 'FDX_KAFKA_HOST=%s\nFDX_KAFKA_SECURE=%s\n' "$ip" "$secure" | write_if_changed "/etc/default/$KAFKA_UNIT"
  # Fetch the jars outside the unit's start timeout (a no-op once cached).
  runuser -u "$KAFKA_USER" -- env HOME="$KAFKA_HOME" "$ROOT/deploy/kafka/kafka.sh" fetch
}

install_aggregator_unit() {
  local project=$1 job=$2 channel=$3 minclients=$4 numrounds=$5 extra=$6 secrets=$7 secure=$8 listen
  local creds="" secret_flags="" kind
  case $channel in
    kafka) listen="--broker 127.0.0.1:9092" ;;
    grpc) listen="--grpc --broker [::]:8080" ;;
    *) die "fdx-channel=$channel: want kafka or grpc" ;;
  esac
  # Secrets reach the DynamicUser aggregator as systemd credentials: copied
  # into a directory only its unit can read (%d), never into the
  # environment or the command line's values.
  for kind in $secrets; do
    creds+="LoadCredential=$kind:$SECRETS_DIR/$kind"$'\n'
    case $kind in
      tokens) secret_flags+=" --tokens-file %d/tokens" ;;
      tls-cert) secret_flags+=" --tls-cert %d/tls-cert" ;;
      tls-key) secret_flags+=" --tls-key %d/tls-key" ;;
      tls-client-ca) secret_flags+=" --tls-client-ca %d/tls-client-ca" ;;
      model-key) secret_flags+=" --model-key %d/model-key" ;;
      kafka-config) secret_flags+=" --kafka-config %d/kafka-config" ;;
    esac
  done
  if [[ $secure == 1 && $channel == kafka ]]; then
    # The aggregator's SASL settings, handed over by systemd (%d is the
    # unit's credentials directory): the DynamicUser cannot read the
    # broker's secrets/ itself.
    listen+=" --kafka-config %d/kafka.properties"
    creds+="LoadCredential=kafka.properties:$KAFKA_HOME/broker/secrets/aggregator.properties"$'\n'
  fi
  write_if_changed "/etc/systemd/system/$AGG_UNIT.service" <<EOF
# Written by deploy/gcp/vm-startup.sh at every boot: edits here are lost;
# change the instance metadata (fdx-*) and rerun the startup script instead.
[Unit]
Description=FDxKafka aggregator (job $job, $channel channel)
Requires=$KAFKA_UNIT.service
After=$KAFKA_UNIT.service network-online.target
Wants=network-online.target

[Service]
Type=simple
DynamicUser=yes
StateDirectory=$AGG_UNIT
WorkingDirectory=/var/lib/$AGG_UNIT
Environment=GOOGLE_CLOUD_PROJECT=$project
${creds}ExecStart=$ROOT/bin/aggregator $listen --minclients $minclients --numrounds $numrounds --job $job --log-to cloud --metrics-addr :9100$secret_flags $extra
# A finished job exits 0 and stays down; a crash restarts and resumes from
# the newest model in fdx.$job.model.
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
}

main() {
  # Boot runs this script and `vm.sh push` runs it again over ssh, perhaps
  # while the boot run still waits for the bundle: one at a time.
  exec 9>/run/fdx-startup.lock
  flock 9
  local ip project job channel minclients numrounds build_on_vm go_version extra secrets secure verb=start
  ip=$(md instance/network-interfaces/0/ip) || die "no internal IP from the metadata server"
  project=$(md project/project-id) || die "no project id from the metadata server"
  job=$(attr fdx-job mnist)
  channel=$(attr fdx-channel kafka)
  minclients=$(attr fdx-minclients 2)
  numrounds=$(attr fdx-numrounds 5)
  build_on_vm=$(attr fdx-build-on-vm 0)
  go_version=$(attr fdx-go-version "")
  extra=$(attr fdx-aggregator-args "")
  secure=$(attr fdx-kafka-secure 0)
  [[ $secure == [01] ]] || die "fdx-kafka-secure=$secure: want 0 or 1"
  [[ $job =~ ^[A-Za-z0-9._-]+$ ]] || die "fdx-job=$job: not a job id"
  [[ $minclients =~ ^[1-9][0-9]*$ && $numrounds =~ ^[1-9][0-9]*$ ]] ||
    die "fdx-minclients=$minclients fdx-numrounds=$numrounds: want positive integers"
  if [[ $build_on_vm == 1 && -z $go_version ]]; then
    die "fdx-build-on-vm=1 but no fdx-go-version metadata"
  fi

  install_packages
  install_ops_agent
  mkdir -p "$STATE"
  wait_for_bundle
  install_bundle "$go_version"
  fetch_secrets "$project"
  secrets=$SECRETS_FOUND
  install_kafka_unit "$ip" "$secure"
  install_aggregator_unit "$project" "$job" "$channel" "$minclients" "$numrounds" "$extra" "$secrets" "$secure"
  systemctl daemon-reload
  systemctl enable "$KAFKA_UNIT.service" "$AGG_UNIT.service"
  # Restarting the broker restarts the aggregator too (Requires=); it
  # resumes from the newest committed model.
  if ((UNITS_CHANGED)); then verb=restart; fi
  systemctl "$verb" "$KAFKA_UNIT.service"
  if [[ $secure == 1 ]]; then
    # Idempotent: granting an existing ACL again changes nothing.
    runuser -u "$KAFKA_USER" -- env HOME="$KAFKA_HOME" FDX_KAFKA_DIR="$KAFKA_HOME/broker" FDX_KAFKA_PORT=9092 \
      "$ROOT/deploy/kafka/kafka.sh" acls "$job"
  fi
  systemctl "$verb" "$AGG_UNIT.service"
  log "broker at $ip:9092, aggregator job $job ($channel, minclients $minclients, numrounds $numrounds) started"
}

main "$@"
