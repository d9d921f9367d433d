#!/usr/bin/env bash
# deploy/gcp/down.sh [flags]: tear down what up.sh created, in reverse:
#
#   1. function.sh delete
#   2. vm.sh delete        (the VM and its disk: the broker's topics go too)
#   3. firewall.sh delete
#   4. vm.sh delete-nat    (the Cloud NAT and router, when the VM had no
#                          external IP and vm.sh made them)
#
# Give it the flags up.sh got. A step that fails (say, the function was never
# deployed) does not stop the later ones, so a half-finished deployment is
# still cleaned up; down.sh then exits non-zero. Add -q to skip gcloud's
# confirmation prompts.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

parse_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]} (down.sh takes flags only)"
need_gcloud

failed=()
step() {
  local name=$1
  shift
  if ! "$@"; then
    failed+=("$name")
    warn "$name failed; continuing the teardown"
  fi
}
step "function delete" "$FDX_GCP_DIR/function.sh" delete "$@"
step "vm delete" "$FDX_GCP_DIR/vm.sh" delete "$@"
step "firewall delete" "$FDX_GCP_DIR/firewall.sh" delete "$@"
step "nat delete" "$FDX_GCP_DIR/vm.sh" delete-nat "$@"
((${#failed[@]} == 0)) || die "failed steps: ${failed[*]}; check the console for leftovers"
note "down: all FDxKafka resources deleted"
