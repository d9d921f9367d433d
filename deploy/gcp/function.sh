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
# package, fdxfunction, imports the functions framework and links in
# function/, which registers "Handler") and runs
#
#   gcloud functions deploy NAME --gen2 --runtime go126 --source STAGE
#     --entry-point Handler --trigger-http
#     --set-env-vars FDX_BROKER=VM_IP:9092,FDX_JOB=JOB,...
#     [--set-secrets FDX_GRPC_TOKEN=S:V,/etc/fdx/kafka-config/kafka.properties=S:V,...]
#     --network N --subnet S --direct-vpc-egress=private-ranges-only
#     --memory 512Mi --timeout 540s --max-instances 10 --concurrency 1
#     --no-allow-unauthenticated
#
# Capacity: an instance serves --concurrency requests at once (1 by
# default), and each client's invocation stays open for all its rounds. A
# job of N clients (the larger of --clients and --minclients) needs
# N <= --max-instances x --concurrency, or the surplus clients get 429 and
# no round ever closes. deploy and invoke size --max-instances to fit when
# you did not set it, and refuse when you did and it is too small.
#
# Secrets (--function-secrets) come from Secret Manager: the gRPC token as
# an environment variable that Cloud Run fills from the secret at start
# (--set-secrets, so the value is not in the function's configuration), the
# Kafka properties and TLS files as secret volumes. The function's service
# account needs roles/secretmanager.secretAccessor on each secret; with
# --function-service-account deploy grants it.
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
  size_function
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
  function_secrets
  resolve_broker
  env=FDX_BROKER=$BROKER,FDX_JOB=$JOB,FDX_CHANNEL=$CHANNEL,GOOGLE_CLOUD_PROJECT=$PROJECT$SECRET_ENV
  local deploy=(
    gcloud functions deploy "$FUNCTION_NAME" --gen2 "${GCLOUD_PROJECT[@]}"
    --region "$REGION"
    --runtime "$RUNTIME"
    --source "$src"
    --entry-point Handler
    --trigger-http
    --set-env-vars "$env"
  )
  if [[ -n $SECRET_FLAGS ]]; then
    deploy+=(--set-secrets "$SECRET_FLAGS")
  fi
  if [[ -n $VPC_CONNECTOR ]]; then
    deploy+=(--vpc-connector "$VPC_CONNECTOR" --egress-settings private-ranges-only)
  else
    deploy+=(--network "$NETWORK" --subnet "$SUBNET" --direct-vpc-egress=private-ranges-only)
  fi
  deploy+=(--memory "$MEMORY" --timeout "$TIMEOUT" --max-instances "$MAX_INSTANCES" --concurrency "$CONCURRENCY")
  if [[ -n $CPU ]]; then
    deploy+=(--cpu "$CPU")
  fi
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

# function_secrets turns --function-secrets into SECRET_FLAGS (the value of
# --set-secrets) and SECRET_ENV (",VAR=path" for the mounted files), and
# grants the function's service account access when it is named.
function_secrets() {
  local kind ref mount var
  parse_secrets "$FUNCTION_SECRETS" grpc-token kafka-config grpc-ca grpc-cert grpc-key model-pubkey
  SECRET_FLAGS=""
  SECRET_ENV=""
  for kind in grpc-token kafka-config grpc-ca grpc-cert grpc-key model-pubkey; do
    ref=${SECRETS[$kind]:-}
    [[ -n $ref ]] || continue
    case $kind in
      grpc-token) SECRET_FLAGS+=",FDX_GRPC_TOKEN=$ref"; continue ;;
      kafka-config) mount=/etc/fdx/kafka-config/kafka.properties var=FDX_KAFKA_CONFIG ;;
      grpc-ca) mount=/etc/fdx/grpc-ca/ca.pem var=FDX_GRPC_CA ;;
      grpc-cert) mount=/etc/fdx/grpc-cert/cert.pem var=FDX_GRPC_CERT ;;
      grpc-key) mount=/etc/fdx/grpc-key/key.pem var=FDX_GRPC_KEY ;;
      model-pubkey) mount=/etc/fdx/model-pubkey/model.pub var=FDX_MODEL_PUBKEY ;;
    esac
    # One directory per secret: a Cloud Run secret volume owns its
    # directory. Only the path goes into the environment.
    SECRET_FLAGS+=",$mount=$ref"
    SECRET_ENV+=",$var=$mount"
    [[ $kind != kafka-config ]] || warn_kafka_files
  done
  SECRET_FLAGS=${SECRET_FLAGS#,}
  if [[ -n $FUNCTION_SERVICE_ACCOUNT ]]; then
    for kind in grpc-token kafka-config grpc-ca grpc-cert grpc-key model-pubkey; do
      [[ -n ${SECRETS[$kind]:-} ]] || continue
      run gcloud secrets add-iam-policy-binding "${SECRETS[$kind]%%:*}" "${GCLOUD_PROJECT[@]}" \
        --member "serviceAccount:$FUNCTION_SERVICE_ACCOUNT" --role roles/secretmanager.secretAccessor
    done
  elif ((${#SECRETS[@]} > 0)); then
    note "grant the function's runtime service account roles/secretmanager.secretAccessor on: ${FUNCTION_SECRETS}"
  fi
}

# warn_kafka_files: a Kafka properties file that names other files
# (ssl.ca.location=...) would need those mounted too.
warn_kafka_files() {
  note "kafka-config secret: put TLS material inline (ssl.ca.pem=..., ssl.certificate.pem=...), not as file paths"
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
  size_function
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
