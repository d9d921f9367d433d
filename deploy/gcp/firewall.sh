#!/usr/bin/env bash
# deploy/gcp/firewall.sh: the VPC firewall rules of the FDxKafka VM.
#
#   firewall.sh create [flags]   create the rules
#   firewall.sh delete [flags]   delete them
#
# All rules admit traffic only to instances tagged $NETWORK_TAG
# (--tag, default fdx-aggregator) on $NETWORK, and never from 0.0.0.0/0:
#
#   <tag>-serverless  tcp:9092 (Kafka) and tcp:8080 (gRPC) from
#                     --source-ranges, by default the subnet's primary range:
#                     with direct VPC egress the functions' instances take
#                     their addresses from it. With --vpc-connector, pass the
#                     connector's /28 range instead.
#   <tag>-metrics     tcp:9100 (the aggregator's Prometheus metrics) from
#                     --metrics-cidr, by default the same range
#   <tag>-iap         tcp:22 and tcp:9100 from Google's IAP range
#                     (--iap-cidr), for `gcloud compute ssh/scp
#                     --tunnel-through-iap` and `gcloud compute
#                     start-iap-tunnel ... 9100`, at priority 900; not
#                     created with --no-iap
#   <tag>-deny-ssh    DENY tcp:22 from anywhere at priority 1000, so that
#                     the default network's default-allow-ssh (0.0.0.0/0,
#                     priority 65534) does not apply to the VM: ssh comes
#                     only through IAP. With --no-iap it is not created
#                     (ssh then needs a rule of your own).
#
# The broker speaks PLAINTEXT without authentication: these rules are its
# only protection, so keep the ranges narrow.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd_create() {
  subnet_range
  local common=(gcloud compute firewall-rules create)
  local target=("${GCLOUD_PROJECT[@]}" --network "$NETWORK" --direction INGRESS --action allow --target-tags "$NETWORK_TAG")
  run "${common[@]}" "$NETWORK_TAG-serverless" "${target[@]}" \
    --rules "tcp:9092,tcp:8080" --source-ranges "$SOURCE_RANGES" \
    --description "FDxKafka: Kafka and gRPC from the VPC egress range of the functions"
  run "${common[@]}" "$NETWORK_TAG-metrics" "${target[@]}" \
    --rules tcp:9100 --source-ranges "$METRICS_CIDR" \
    --description "FDxKafka: aggregator metrics"
  if ((USE_IAP)); then
    run "${common[@]}" "$NETWORK_TAG-iap" "${target[@]}" \
      --rules "tcp:22,tcp:9100" --source-ranges "$IAP_CIDR" --priority 900 \
      --description "FDxKafka: ssh and metrics through Identity-Aware Proxy"
    run "${common[@]}" "$NETWORK_TAG-deny-ssh" "${GCLOUD_PROJECT[@]}" --network "$NETWORK" \
      --direction INGRESS --action deny --target-tags "$NETWORK_TAG" \
      --rules tcp:22 --source-ranges 0.0.0.0/0 --priority 1000 \
      --description "FDxKafka: ssh only through IAP (overrides default-allow-ssh)"
  fi
}

cmd_delete() {
  local rules=("$NETWORK_TAG-serverless" "$NETWORK_TAG-metrics")
  if ((USE_IAP)); then
    rules+=("$NETWORK_TAG-iap" "$NETWORK_TAG-deny-ssh")
  fi
  run gcloud compute firewall-rules delete "${rules[@]}" "${GCLOUD_PROJECT[@]}" "${QUIET_FLAG[@]}"
}

main() {
  parse_args "$@"
  case ${ARGS[0]:-} in
    create | delete)
      ((${#ARGS[@]} == 1)) || die "unexpected arguments: ${ARGS[*]:1}"
      need_gcloud
      "cmd_${ARGS[0]}"
      ;;
    *) die "usage: firewall.sh create|delete [flags] (see --help)" ;;
  esac
}

main "$@"
