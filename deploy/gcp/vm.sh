#!/usr/bin/env bash
# deploy/gcp/vm.sh: the GCE VM that runs the Kafka broker and the aggregator.
#
#   vm.sh create [flags]        create the VM and upload the repo bundle
#   vm.sh delete [flags]        delete the VM and its disk
#   vm.sh delete-nat [flags]    delete the Cloud NAT and router create made
#   vm.sh push [flags]          upload a fresh bundle to a running VM and rerun
#                               its startup script (rebuilds, restarts)
#   vm.sh bundle FILE [flags]   only write the bundle tarball to FILE
#   vm.sh status [flags]        the units' state and the startup log
#
# The VM runs Debian 12 with deploy/gcp/vm-startup.sh as its startup script,
# which installs Java 17, Maven and the Ops Agent, waits for the bundle and
# starts two systemd units: fdxkafka-broker (deploy/kafka/kafka.service,
# `kafka.sh start --keep-data`, advertised on the VM's internal IP) and
# fdx-aggregator (`aggregator --broker 127.0.0.1:9092 --minclients N
# --numrounds R --job JOB --log-to cloud --metrics-addr :9100`).
#
# The bundle is a tarball of the working tree (what you have checked out,
# including uncommitted changes; without .git, evaluations/ and the tool and
# output directories) plus bin/aggregator, built here for linux/amd64
# without cgo (a static binary; any host with Go cross-compiles it), that
# `gcloud compute scp` copies to the VM: the VM needs no Go, no module
# downloads and no access to the Git host, and boots in the time apt takes.
# Without Go here pass --build-on-vm, and the VM installs Go $GO_VERSION and
# builds at boot (minutes, and the module proxy must be reachable).
#
# Closed by default: no external IP (--external-ip to give it one); it
# reaches apt, Google's package repos and Maven Central through Cloud NAT
# (vm.sh creates fdx-router/fdx-nat unless --no-nat), ssh and scp go
# through IAP (firewall.sh opens 22 to Google's IAP range only).
#
# --minclients, --numrounds, --job, --channel and --aggregator-args become
# instance metadata (fdx-*) that the startup script reads at every boot.
# --vm-secrets puts only secret NAMES into metadata (fdx-secret-KIND); the
# startup script reads the values from Secret Manager with the VM's service
# account (it needs roles/secretmanager.secretAccessor; with
# --vm-service-account create grants it) and hands them to the aggregator as
# systemd credentials, readable by its unit only.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly REMOTE_TMP=/tmp/fdxkafka-bundle.tar.gz
readonly REMOTE_BUNDLE=/var/lib/fdx/bundle.tar.gz

# make_bundle FILE writes the repo tarball, with bin/aggregator unless
# --build-on-vm, to FILE.
make_bundle() {
  local out=$1 dir
  if ((DRY_RUN)); then
    if ((!BUILD_ON_VM)); then
      note "CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -o bin/aggregator ./aggregator  (uploaded in the bundle; the VM does not build)"
    fi
    note "deploy/gcp/vm.sh bundle $out  (tar of the working tree without .git, evaluations/, .tools/, bin/, out/; plus bin/aggregator)"
    return 0
  fi
  dir=$(mktemp -d)
  copy_repo "$dir"
  if ((!BUILD_ON_VM)); then
    build_aggregator "$dir/bin/aggregator"
  fi
  tar -C "$dir" -czf "$out.part" .
  rm -rf "$dir"
  mv "$out.part" "$out"
  log "bundle $out: $(du -h "$out" | cut -f1)"
}

# build_aggregator OUT builds the aggregator for the VM: pure Go
# (CGO_ENABLED=0), a static binary that runs on any linux/amd64 host,
# whatever machine builds it.
build_aggregator() {
  command -v go >/dev/null 2>&1 || die "go not found: install Go or pass --build-on-vm"
  log "building the aggregator for linux/amd64 with $(go version | cut -d' ' -f3)"
  (cd "$FDX_REPO" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath -o "$1" ./aggregator) ||
    die "building the aggregator failed"
}

# with_bundle CMD... makes a bundle in a temporary directory and runs
# CMD... BUNDLE_FILE.
with_bundle() {
  local dir
  if ((DRY_RUN)); then
    "$@" /tmp/fdxkafka-bundle.tar.gz
    return 0
  fi
  dir=$(mktemp -d)
  # shellcheck disable=SC2064  # expand $dir now
  trap "rm -rf '$dir'" EXIT
  "$@" "$dir/fdxkafka-bundle.tar.gz"
}

gcloud_ssh() {
  run gcloud compute ssh "$VM_NAME" "${GCLOUD_PROJECT[@]}" --zone "$ZONE" "${IAP_FLAG[@]}" --command "$1"
}

# upload FILE copies the bundle to the VM and moves it where the startup
# script looks, in one rename so that it never sees half a file. The first
# scp after create retries until the VM's sshd answers.
upload() {
  local file=$1
  make_bundle "$file"
  retry 30 10 gcloud compute scp "$file" "$VM_NAME:$REMOTE_TMP" "${GCLOUD_PROJECT[@]}" --zone "$ZONE" "${IAP_FLAG[@]}"
  gcloud_ssh "sudo install -D -m 0600 $REMOTE_TMP $REMOTE_BUNDLE.part && sudo mv $REMOTE_BUNDLE.part $REMOTE_BUNDLE && rm -f $REMOTE_TMP"
}

metadata_arg() {
  local kv=(
    "fdx-job=$JOB"
    "fdx-channel=$CHANNEL"
    "fdx-minclients=$MINCLIENTS"
    "fdx-numrounds=$NUMROUNDS"
    "fdx-build-on-vm=$BUILD_ON_VM"
    # 1: the broker in kafka.sh's secure mode (SASL/SCRAM + ACLs).
    "fdx-kafka-secure=${FDX_KAFKA_SECURE:-0}"
  )
  if ((BUILD_ON_VM)); then
    kv+=("fdx-go-version=$GO_VERSION")
  fi
  local kind
  for kind in tokens tls-cert tls-key tls-client-ca kafka-config model-key; do
    [[ -n ${SECRETS[$kind]:-} ]] || continue
    kv+=("fdx-secret-$kind=${SECRETS[$kind]}")
  done
  if [[ -z $AGGREGATOR_ARGS ]]; then
    local IFS=,
    printf '%s' "${kv[*]}"
    return 0
  fi
  # Flags hold commas and spaces: use gcloud's alternative delimiter syntax.
  [[ $AGGREGATOR_ARGS != *'|'* ]] || die "--aggregator-args must not contain '|'"
  kv+=("fdx-aggregator-args=$AGGREGATOR_ARGS")
  local IFS='|'
  printf '^|^%s' "${kv[*]}"
}

# ensure_nat gives a VM without an external IP its way out (apt, Google's
# package repos, Maven Central): Cloud Router fdx-router and Cloud NAT
# fdx-nat in the region, unless they already exist.
ensure_nat() {
  if ((DRY_RUN)) || ! gcloud compute routers describe fdx-router "${GCLOUD_PROJECT[@]}" --region "$REGION" >/dev/null 2>&1; then
    run gcloud compute routers create fdx-router "${GCLOUD_PROJECT[@]}" --region "$REGION" --network "$NETWORK"
  fi
  if ((DRY_RUN)) || ! gcloud compute routers nats describe fdx-nat --router fdx-router "${GCLOUD_PROJECT[@]}" --region "$REGION" >/dev/null 2>&1; then
    run gcloud compute routers nats create fdx-nat --router fdx-router "${GCLOUD_PROJECT[@]}" --region "$REGION" \
      --auto-allocate-nat-external-ips --nat-all-subnet-ip-ranges
  fi
}

cmd_create() {
  parse_secrets "$VM_SECRETS" tokens tls-cert tls-key tls-client-ca kafka-config model-key
  local scopes=logging-write,monitoring-write
  if ((${#SECRETS[@]} > 0)); then
    # Secret Manager has no narrower scope; IAM on each secret limits it.
    scopes=cloud-platform
  fi
  if ((!EXTERNAL_IP && NAT)); then
    ensure_nat
  fi
  local create=(
    gcloud compute instances create "$VM_NAME" "${GCLOUD_PROJECT[@]}"
    --zone "$ZONE"
    --machine-type "$MACHINE_TYPE"
    --image-family debian-12 --image-project debian-cloud
    --boot-disk-size "$DISK_SIZE"
    --network "$NETWORK" --subnet "$SUBNET"
    --tags "$NETWORK_TAG"
    --scopes "$scopes"
    --metadata "$(metadata_arg)"
    --metadata-from-file "startup-script=$FDX_GCP_DIR/vm-startup.sh"
  )
  if [[ -n $VM_SERVICE_ACCOUNT ]]; then
    create+=(--service-account "$VM_SERVICE_ACCOUNT")
  fi
  if ((!EXTERNAL_IP)); then
    create+=(--no-address)
  fi
  run "${create[@]}"
  if [[ -n $VM_SERVICE_ACCOUNT ]]; then
    local kind
    for kind in tokens tls-cert tls-key tls-client-ca kafka-config model-key; do
      [[ -n ${SECRETS[$kind]:-} ]] || continue
      run gcloud secrets add-iam-policy-binding "${SECRETS[$kind]%%:*}" "${GCLOUD_PROJECT[@]}" \
        --member "serviceAccount:$VM_SERVICE_ACCOUNT" --role roles/secretmanager.secretAccessor
    done
  elif ((${#SECRETS[@]} > 0)); then
    note "grant the VM's service account (Compute Engine default) roles/secretmanager.secretAccessor on: $VM_SECRETS"
  fi
  with_bundle upload
  note "the VM now installs Java, Maven and the Ops Agent and starts the units (a few minutes); watch: deploy/gcp/vm.sh status"
}

cmd_delete() {
  run gcloud compute instances delete "$VM_NAME" "${GCLOUD_PROJECT[@]}" --zone "$ZONE" --delete-disks all "${QUIET_FLAG[@]}"
}

# cmd_delete_nat removes what ensure_nat created (down.sh calls it).
cmd_delete_nat() {
  if ((EXTERNAL_IP || !NAT)); then
    return 0
  fi
  run gcloud compute routers nats delete fdx-nat --router fdx-router "${GCLOUD_PROJECT[@]}" --region "$REGION" "${QUIET_FLAG[@]}"
  run gcloud compute routers delete fdx-router "${GCLOUD_PROJECT[@]}" --region "$REGION" "${QUIET_FLAG[@]}"
}

cmd_push() {
  with_bundle upload
  # Rerun the startup script now rather than at the next boot; its output
  # streams back over ssh.
  gcloud_ssh "sudo google_metadata_script_runner startup"
}

cmd_status() {
  gcloud_ssh "sudo systemctl --no-pager status fdxkafka-broker fdx-aggregator; sudo journalctl --no-pager -n 30 -u google-startup-scripts.service"
}

main() {
  parse_args "$@"
  set -- "${ARGS[@]}"
  local cmd=${1:-}
  [[ -n $cmd ]] || die "usage: vm.sh create|delete|delete-nat|push|bundle FILE|status [flags] (see --help)"
  shift
  case $cmd in
    create | delete | delete-nat | push | status)
      (($# == 0)) || die "$cmd: unexpected arguments $*"
      need_gcloud
      "cmd_${cmd//-/_}"
      ;;
    bundle)
      (($# == 1)) || die "usage: vm.sh bundle FILE"
      make_bundle "$1"
      ;;
    *) die "unknown command $cmd (create, delete, delete-nat, push, bundle, status)" ;;
  esac
}

main "$@"
