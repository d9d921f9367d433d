#!/usr/bin/env bash
# deploy/gcp/vm.sh: the GCE VM that runs the Kafka broker and the aggregator.
#
#   vm.sh create [flags]        create the VM and upload the repo bundle
#   vm.sh delete [flags]        delete the VM and its disk
#   vm.sh push [flags]          upload a fresh bundle to a running VM and rerun
#                               its startup script (rebuilds, restarts)
#   vm.sh bundle FILE [flags]   only write the bundle tarball to FILE
#   vm.sh status [flags]        the units' state and the startup log
#
# The VM runs Debian 12 with deploy/gcp/vm-startup.sh as its startup script,
# which installs Java 17, Maven, gcc and Go, waits for the bundle, builds the
# aggregator and starts two systemd units: fdxkafka-broker (deploy/kafka/
# kafka.service, `kafka.sh start --keep-data`, advertised on the VM's
# internal IP) and fdx-aggregator (`aggregator --broker 127.0.0.1:9092
# --minclients N --numrounds R --job JOB --log-to cloud --metrics-addr :9100`).
#
# The bundle is a tarball of the working tree (what you have checked out,
# including uncommitted changes; without .git, evaluations/ and the tool and
# output directories) that `gcloud compute scp` copies to the VM, so the VM
# needs no access to the Git host. It does need outbound internet access for
# apt, go.dev, the Go module proxy and Maven Central: an external IP (the
# default) or Cloud NAT with --no-external-ip. ssh and scp go through IAP
# (firewall.sh opens 22 to Google's IAP range) unless --no-iap.
#
# --minclients, --numrounds, --job, --channel and --aggregator-args become
# instance metadata (fdx-*) that the startup script reads at every boot.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

readonly REMOTE_TMP=/tmp/fdxkafka-bundle.tar.gz
readonly REMOTE_BUNDLE=/var/lib/fdx/bundle.tar.gz

# make_bundle FILE writes the repo tarball to FILE.
make_bundle() {
  local out=$1
  if ((DRY_RUN)); then
    note "deploy/gcp/vm.sh bundle $out  (tar of the working tree without .git, evaluations/, .tools/, bin/, out/)"
    return 0
  fi
  repo_files "$out" | (cd "$FDX_REPO" && tar --null -T - -czf -) >"$out.part"
  mv "$out.part" "$out"
  log "bundle $out: $(du -h "$out" | cut -f1)"
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
    "fdx-go-version=$GO_VERSION"
    # 1: the broker in kafka.sh's secure mode (SASL/SCRAM + ACLs).
    "fdx-kafka-secure=${FDX_KAFKA_SECURE:-0}"
  )
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

cmd_create() {
  local create=(
    gcloud compute instances create "$VM_NAME" "${GCLOUD_PROJECT[@]}"
    --zone "$ZONE"
    --machine-type "$MACHINE_TYPE"
    --image-family debian-12 --image-project debian-cloud
    --boot-disk-size "$DISK_SIZE"
    --network "$NETWORK" --subnet "$SUBNET"
    --tags "$NETWORK_TAG"
    --scopes "logging-write,monitoring-write"
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
  with_bundle upload
  note "the VM now installs Java, Maven, Go, builds the aggregator and starts the units (5-10 min); watch: deploy/gcp/vm.sh status"
}

cmd_delete() {
  run gcloud compute instances delete "$VM_NAME" "${GCLOUD_PROJECT[@]}" --zone "$ZONE" --delete-disks all "${QUIET_FLAG[@]}"
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
  [[ -n $cmd ]] || die "usage: vm.sh create|delete|push|bundle FILE|status [flags] (see --help)"
  shift
  case $cmd in
    create | delete | push | status)
      (($# == 0)) || die "$cmd: unexpected arguments $*"
      need_gcloud
      "cmd_$cmd"
      ;;
    bundle)
      (($# == 1)) || die "usage: vm.sh bundle FILE"
      make_bundle "$1"
      ;;
    *) die "unknown command $cmd (create, delete, push, bundle, status)" ;;
  esac
}

main "$@"
