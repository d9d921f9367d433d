#!/usr/bin/env bash
# deploy/gcp/up.sh [flags]: bring up a whole FDxKafka deployment in one go.
#
#   1. enable the APIs it needs (idempotent)
#   2. firewall.sh create   Kafka/gRPC from the functions' range, metrics, IAP
#   3. vm.sh create         the broker + aggregator VM, with the repo bundle
#   4. function.sh deploy   the client function, wired to the VM's internal IP
#
# Every flag goes to every step (see the common flags below), e.g.
#   up.sh --project my-proj --minclients 10 --numrounds 5 --max-instances 20
#   up.sh --project my-proj --dry-run      # print the gcloud commands only
# Then start the clients with deploy/gcp/function.sh invoke (same flags) and
# tear everything down with deploy/gcp/down.sh (same flags).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]} (up.sh takes flags only)"
need_gcloud

run gcloud services enable compute.googleapis.com cloudfunctions.googleapis.com run.googleapis.com \
  cloudbuild.googleapis.com artifactregistry.googleapis.com logging.googleapis.com iap.googleapis.com \
  secretmanager.googleapis.com \
  "${GCLOUD_PROJECT[@]}"
"$FDX_GCP_DIR/firewall.sh" create "$@"
"$FDX_GCP_DIR/vm.sh" create "$@"
"$FDX_GCP_DIR/function.sh" deploy "$@"
note "up: the VM is still installing; check it with deploy/gcp/vm.sh status, then start the clients with deploy/gcp/function.sh invoke (same flags)"
