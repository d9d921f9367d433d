#!/usr/bin/env bash
# Installs the system packages the build and tests need, from Debian's
# archive, only when missing: unzip (proto/gen.sh unpacks its pinned protoc's
# well-known types), shellcheck
# (deploy/gcp/check.sh), iproute2 (ip and tc: the network testbed). Go, gcc (cgo for confluent-kafka-go), Java 17 and
# Maven (deploy/kafka/kafka.sh) are expected on the machine.
set -euo pipefail
need=()
command -v unzip >/dev/null 2>&1 || need+=(unzip)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
{ command -v ip && command -v tc; } >/dev/null 2>&1 || need+=(iproute2)
if [ "${#need[@]}" -gt 0 ]; then
  echo "deps.sh: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
for tool in go gcc java mvn; do
  command -v "$tool" >/dev/null 2>&1 || { echo "deps.sh: $tool is required but not installed" >&2; exit 1; }
done
