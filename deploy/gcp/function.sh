#!/usr/bin/env bash
# deploy/gcp/function.sh: the FDxKafka client as an HTTP Cloud Run function
# (2nd gen Cloud Functions).
#
#   function.sh deploy [flags]   stage the source and deploy it
#   function.sh delete [flags]   delete the function
#   function.sh invoke [flags]   start --clients clients (default
#                                --minclients), each taking part in
#                                --numrounds rounds, and wait for them
#
# deploy stages the module with stage-function.sh (a bundle whose root
# package, fdxfunction, links in function/ which registers "Handler") and runs
#
#   gcloud functions deploy NAME --gen2 --runtime go126 --source STAGE
#     --entry-point Handler --trigger-http
#     --set-env-vars FDX_BROKER=VM_IP:9092,FDX_JOB=JOB,...
#     --network N --subnet S --direct-vpc-egress=private-ranges-only
#     --memory 512Mi --timeout 540s --max-instances 10
#     --no-allow-unauthenticated
#
# The runtime is go126 (override with --runtime go127): go121 was
# decommissioned on 2026-03-03, go122/go123 since, and the module's
# dependencies need Go 1.26. FDX_BROKER defaults to the VM's internal IP
# (looked up with gcloud) and the channel's port; the function reaches it
# over direct VPC egress (or --vpc-connector). The function is private:
# callers need roles/run.invoker and an identity token. --allow-unauthenticated
# makes it public, which lets anyone start training against your broker.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# timeout_seconds prints TIMEOUT as a number of seconds.
timeout_seconds() { printf '%s\n' "${TIMEOUT%s}"; }

# resolve_broker sets BROKER, by default to the VM's internal IP and the
# channel's port (a dry run prints the lookup).
resolve_broker() {
  if [[ -z $BROKER ]]; then
    vm_internal_ip
    BROKER=$VM_IP:$SERVICE_PORT
  fi
}

cmd_deploy() {
  local src env
  if ((DRY_RUN)); then
    src=/tmp/fdx-function-src
  else
    src=$(mktemp -d)
    # shellcheck disable=SC2064  # expand $src now
    trap "rm -rf '$src'" EXIT
  fi
  note "deploy/gcp/stage-function.sh $src"
  if ((!DRY_RUN)); then
    "$FDX_GCP_DIR/stage-function.sh" "$src" --project "$PROJECT"
  fi
  resolve_broker
  env=FDX_BROKER=$BROKER,FDX_JOB=$JOB,FDX_CHANNEL=$CHANNEL,GOOGLE_CLOUD_PROJECT=$PROJECT
  local deploy=(
    gcloud functions deploy "$FUNCTION_NAME" --gen2 "${GCLOUD_PROJECT[@]}"
    --region "$REGION"
    --runtime "$RUNTIME"
    --source "$src"
    --entry-point Handler
    --trigger-http
    --set-env-vars "$env"
  )
  if [[ -n $VPC_CONNECTOR ]]; then
    deploy+=(--vpc-connector "$VPC_CONNECTOR" --egress-settings private-ranges-only)
  else
    deploy+=(--network "$NETWORK" --subnet "$SUBNET" --direct-vpc-egress=private-ranges-only)
  fi
  deploy+=(--memory "$MEMORY" --timeout "$TIMEOUT" --max-instances "$MAX_INSTANCES")
  if [[ -n $FUNCTION_SERVICE_ACCOUNT ]]; then
    deploy+=(--service-account "$FUNCTION_SERVICE_ACCOUNT")
  fi
  if ((ALLOW_UNAUTHENTICATED)); then
    warn "--allow-unauthenticated: anyone on the internet can invoke $FUNCTION_NAME and make it train against your broker"
    deploy+=(--allow-unauthenticated)
  else
    deploy+=(--no-allow-unauthenticated)
  fi
  run "${deploy[@]}"
  run gcloud functions describe "$FUNCTION_NAME" --gen2 "${GCLOUD_PROJECT[@]}" --region "$REGION" --format 'value(serviceConfig.uri)'
}

cmd_delete() {
  run gcloud functions delete "$FUNCTION_NAME" --gen2 "${GCLOUD_PROJECT[@]}" --region "$REGION" "${QUIET_FLAG[@]}"
}

# cmd_invoke POSTs one request per client, all at once, and waits. Each
# client follows --numrounds rounds within one invocation, so the job must
# fit the function's timeout; run invoke again for the remaining rounds of
# a longer job (clients resume at the newest model).
cmd_invoke() {
  local i body timeout_s dir pids=() failed=0
  timeout_s=$(($(timeout_seconds) - 10))
  ((timeout_s > 0)) || die "--timeout $TIMEOUT leaves no time for a round"
  capture URL gcloud functions describe "$FUNCTION_NAME" --gen2 "${GCLOUD_PROJECT[@]}" --region "$REGION" --format 'value(serviceConfig.uri)'
  capture TOKEN gcloud auth print-identity-token
  dir=$( ((DRY_RUN)) || mktemp -d)
  for ((i = 1; i <= CLIENTS; i++)); do
    body=$(printf '{"client_id":"%d","rounds":%d,"timeout_s":%d}' "$i" "$NUMROUNDS" "$timeout_s")
    local req=(curl -sS --fail-with-body --max-time "$(timeout_seconds)" -X POST
      -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$body" "$URL")
    if ((DRY_RUN)); then
      printf '%s &\n' "$(quote_cmd "${req[@]}")"
      continue
    fi
    "${req[@]}" >"$dir/client-$i.json" 2>&1 &
    pids+=($!)
  done
  if ((DRY_RUN)); then
    echo wait
    return 0
  fi
  log "started $CLIENTS clients of $URL; waiting"
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      failed=$((failed + 1))
      log "client $((i + 1)) failed: $(head -c 500 "$dir/client-$((i + 1)).json")"
    else
      printf 'client %d: %s\n' "$((i + 1))" "$(head -c 500 "$dir/client-$((i + 1)).json")"
    fi
  done
  rm -rf "$dir"
  ((failed == 0)) || die "$failed of $CLIENTS clients failed"
}

main() {
  parse_args "$@"
  case ${ARGS[0]:-} in
    deploy | delete | invoke)
      ((${#ARGS[@]} == 1)) || die "unexpected arguments: ${ARGS[*]:1}"
      need_gcloud
      "cmd_${ARGS[0]}"
      ;;
    *) die "usage: function.sh deploy|delete|invoke [flags] (see --help)" ;;
  esac
}

main "$@"
