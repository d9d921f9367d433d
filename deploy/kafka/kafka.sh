#!/usr/bin/env bash
# deploy/kafka/kafka.sh: a real, single-node Apache Kafka broker (KRaft,
# combined broker+controller; or three of them as a cluster, and optionally
# with SASL and ACLs) from Maven Central jars. No Docker and no
# release tarball: Maven resolves the broker's jars into a cache directory once,
# and `java` runs them.
#
#   kafka.sh fetch                  download the jars into the cache (once), and
#                                   the kafka-tools jar (for acls) beside it
#   kafka.sh start [--keep-data]    start the broker and wait until it answers
#   kafka.sh stop                   stop it (SIGTERM, then SIGKILL after a deadline)
#   kafka.sh restart [--keep-data]  stop, then start
#   kafka.sh status                 exit 0 when running, 3 when not
#   kafka.sh logs [-f] [N]          the last N lines of the server log (-f: follow)
#   kafka.sh version                the pinned versions
#   kafka.sh acls JOB...            (secure mode) grant the aggregator and the
#                                   client principal what job JOB needs
#   kafka.sh kill NODE              (cluster) SIGKILL node NODE, as a crash would
#
# Secure mode (FDX_KAFKA_SECURE=1 or `start --secure`): the client listener is
# SASL_PLAINTEXT with SCRAM-SHA-256, KRaft's StandardAuthorizer denies what no
# ACL allows, and three SCRAM users exist from the format on: the super user
# (FDX_KAFKA_ADMIN_USER, also the broker's own principal), the aggregator's
# and the clients'. Their passwords (FDX_KAFKA_*_PASSWORD, else generated
# once) and ready-made Kafka client properties files live in $FDX_KAFKA_DIR/secrets/
# (aggregator.properties, client.properties; mode 0600). `acls JOB` then grants
# per job; see deploy/kafka/README.md "Secure mode". With FDX_KAFKA_TLS_CERT,
# FDX_KAFKA_TLS_KEY and FDX_KAFKA_TLS_CA a second client listener,
# SASL_SSL on FDX_KAFKA_TLS_PORT, takes the same users over TLS; its
# properties files are aggregator-tls.properties and client-tls.properties.
#
# Cluster mode (FDX_KAFKA_NODES=3): three combined broker+controller nodes on
# this machine, node i on client port FDX_KAFKA_PORT+i-1 and controller port
# FDX_KAFKA_CONTROLLER_PORT+i-1 (default FDX_KAFKA_PORT+3+i-1), state in
# $FDX_KAFKA_DIR/node-i; internal topics get 3 replicas and min ISR 2, so the
# cluster serves on with one node down. start/stop/status act on all nodes.
# FDX_KAFKA_NODE_HOSTS=h1,h2,h3 gives each node its own address (client and
# controller listeners bound there, advertised as such, the quorum's voters
# at h1..h3), and FDX_KAFKA_NODE_NETNS=ns1,ns2,ns3 runs node i, and every
# command on it, inside network namespace nsi (`ip netns exec`): nodes as
# hosts of a test network (evaluations/netbench).
#
# `start` formats a FRESH data directory every time (a test run starts from an
# empty broker). `start --keep-data` (or FDX_KAFKA_KEEP_DATA=1) reuses the data
# directory when it is already formatted: for restarting a broker mid-job and
# for a VM's broker (deploy/kafka/kafka.service), whose topics must survive.
#
# Environment (defaults in brackets):
#   FDX_KAFKA_PORT             client (PLAINTEXT) port [9092]
#   FDX_KAFKA_CONTROLLER_PORT  KRaft controller port [9093]
#   FDX_KAFKA_CONTROLLER_HOST  address the controller listener binds and the
#                              voters name [127.0.0.1]
#   FDX_KAFKA_HOST             advertised host that clients connect to [127.0.0.1]
#                              (on a VM: its internal IP)
#   FDX_KAFKA_BIND             address the client listener binds [127.0.0.1 when
#                              FDX_KAFKA_HOST is loopback, else 0.0.0.0]
#   FDX_KAFKA_DIR              state dir: data/, logs/, config/, kafka.pid
#                              [/tmp/fdxkafka-broker-$FDX_KAFKA_PORT]
#   FDX_KAFKA_CACHE            jar cache [$HOME/.cache/fdxkafka/kafka-$KAFKA_VERSION]
#   FDX_KAFKA_KEEP_DATA        1 = as --keep-data [0]
#   FDX_KAFKA_CLUSTER_ID       cluster id for a fresh format [random]
#   FDX_KAFKA_MAX_MESSAGE_BYTES  broker message.max.bytes and
#                              replica.fetch.max.bytes [16777216 = 16 MiB]
#   FDX_KAFKA_HEAP_OPTS        [-Xms256m -Xmx512m]
#   FDX_KAFKA_JVM_OPTS         extra JVM options []
#   FDX_KAFKA_EXTRA_CONFIG     a file of server properties appended to the
#                              generated server.properties []
#   FDX_KAFKA_START_TIMEOUT    seconds to wait for the broker to answer [120]
#   FDX_KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL [60]
#   FDX_KAFKA_JAVA             java binary [$JAVA_HOME/bin/java, else java]
#   FDX_MVN                    maven binary [mvn]
#   FDX_KAFKA_SECURE           1 = secure mode (SASL/SCRAM + ACLs) [0]
#   FDX_KAFKA_ADMIN_USER       super user [admin]
#   FDX_KAFKA_AGGREGATOR_USER  the aggregator's principal [fdx-aggregator]
#   FDX_KAFKA_CLIENT_USER      the clients' principal [fdx-client]
#   FDX_KAFKA_ADMIN_PASSWORD, FDX_KAFKA_AGGREGATOR_PASSWORD, FDX_KAFKA_CLIENT_PASSWORD
#                              [generated at the first secure start, kept in secrets/]
#   FDX_KAFKA_TLS_CERT, FDX_KAFKA_TLS_KEY
#                              (secure mode) PEM files of the broker's certificate
#                              (with its chain) and its unencrypted PKCS #8 key:
#                              adds the SASL_SSL listener []
#   FDX_KAFKA_TLS_CA           PEM file of the CA that signed it, for the clients'
#                              ssl.ca.location []
#   FDX_KAFKA_TLS_PORT         the SASL_SSL listener's port [FDX_KAFKA_PORT+2]
#   FDX_KAFKA_NODES            1, or 3 for a local cluster [1]
#   FDX_KAFKA_NODE_HOSTS       cluster: the nodes' addresses, h1,h2,h3 [all on
#                              FDX_KAFKA_HOST, controllers on loopback]
#   FDX_KAFKA_NODE_NETNS       cluster: the nodes' network namespaces [none]
set -euo pipefail

# ---- the pins: change versions here and only here --------------------------
# (deploy/kafka/docker-compose.yml uses the apache/kafka image of the same
# version: keep its tag equal to KAFKA_VERSION; `kafka.sh version` checks it.)
KAFKA_VERSION=4.1.1
# The log4j2 version of that Kafka release (its gradle/dependencies.gradle;
# kafka-server's POM brings log4j-api/log4j-core at this version). 4.0.x and
# 4.1.x use 2.24.3; 4.2.0 uses 2.25.3.
LOG4J_VERSION=2.24.3
# Kafka 4.x resolves slf4j-api 1.7.x, whose log4j2 binding is log4j-slf4j-impl
# (slf4j 2.x would need log4j-slf4j2-impl). `fetch` checks the slf4j-api jar.
LOG4J_SLF4J_BINDING=log4j-slf4j-impl
SCALA_BINARY=2.13
MAVEN_DEPENDENCY_PLUGIN_VERSION=3.8.1
# -----------------------------------------------------------------------------

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PORT=${FDX_KAFKA_PORT:-9092}
NODES=${FDX_KAFKA_NODES:-1}
case $NODES in
  1) CTRL_PORT=${FDX_KAFKA_CONTROLLER_PORT:-9093} ;;
  3) CTRL_PORT=${FDX_KAFKA_CONTROLLER_PORT:-$((PORT + 3))} ;;
  *) printf 'kafka.sh: error: FDX_KAFKA_NODES=%s: want 1 or 3\n' "$NODES" >&2; exit 1 ;;
esac
# Set by cluster mode for each node it starts (not meant to be set by hand):
# this node's id, the controller quorum and the internal topics' replicas.
NODE_ID=${FDX_KAFKA_NODE_ID:-1}
CTRL_HOST=${FDX_KAFKA_CONTROLLER_HOST:-127.0.0.1}
VOTERS=${FDX_KAFKA_VOTERS:-$NODE_ID@$CTRL_HOST:$CTRL_PORT}
REPLICAS=${FDX_KAFKA_REPLICAS:-1}
if ((REPLICAS > 1)); then MIN_ISR=2; else MIN_ISR=1; fi
NO_WAIT=${FDX_KAFKA_NO_WAIT:-0}
SECURE=${FDX_KAFKA_SECURE:-0}
ADMIN_USER=${FDX_KAFKA_ADMIN_USER:-admin}
AGGREGATOR_USER=${FDX_KAFKA_AGGREGATOR_USER:-fdx-aggregator}
CLIENT_USER=${FDX_KAFKA_CLIENT_USER:-fdx-client}
TLS_CERT=${FDX_KAFKA_TLS_CERT:-}
TLS_KEY=${FDX_KAFKA_TLS_KEY:-}
TLS_CA=${FDX_KAFKA_TLS_CA:-}
TLS_PORT=${FDX_KAFKA_TLS_PORT:-$((PORT + 2))}
HOST=${FDX_KAFKA_HOST:-127.0.0.1}
case $HOST in
  127.*|localhost|::1) DEFAULT_BIND=127.0.0.1 ;;
  *) DEFAULT_BIND=0.0.0.0 ;;
esac
BIND=${FDX_KAFKA_BIND:-$DEFAULT_BIND}
STATE_DIR=${FDX_KAFKA_DIR:-/tmp/fdxkafka-broker-$PORT}
CACHE_DIR=${FDX_KAFKA_CACHE:-${HOME:-/root}/.cache/fdxkafka/kafka-$KAFKA_VERSION}
KEEP_DATA=${FDX_KAFKA_KEEP_DATA:-0}
MAX_MESSAGE_BYTES=${FDX_KAFKA_MAX_MESSAGE_BYTES:-16777216}
HEAP_OPTS=${FDX_KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
EXTRA_JVM_OPTS=${FDX_KAFKA_JVM_OPTS:-}
EXTRA_CONFIG=${FDX_KAFKA_EXTRA_CONFIG:-}
START_TIMEOUT=${FDX_KAFKA_START_TIMEOUT:-120}
STOP_TIMEOUT=${FDX_KAFKA_STOP_TIMEOUT:-60}
if [[ -n ${FDX_KAFKA_JAVA:-} ]]; then
  JAVA=$FDX_KAFKA_JAVA
elif [[ -n ${JAVA_HOME:-} && -x ${JAVA_HOME}/bin/java ]]; then
  JAVA=$JAVA_HOME/bin/java
else
  JAVA=java
fi
MVN=${FDX_MVN:-mvn}

LIB_DIR=$CACHE_DIR/libs
# kafka-tools (AclCommand) is not part of the broker's dependencies; its one
# jar is cached apart so that the broker cache above stays as it is.
TOOLS_DIR=$CACHE_DIR-tools
CACHE_STAMP=$CACHE_DIR/.complete
STAMP="kafka_$SCALA_BINARY-$KAFKA_VERSION log4j-$LOG4J_VERSION $LOG4J_SLF4J_BINDING"
DATA_DIR=$STATE_DIR/data
LOG_DIR=$STATE_DIR/logs
CONF_DIR=$STATE_DIR/config
PID_FILE=$STATE_DIR/kafka.pid
SERVER_PROPS=$CONF_DIR/server.properties
LOG4J_CONF=$CONF_DIR/log4j2.properties
TOOLS_LOG4J_CONF=$CONF_DIR/tools-log4j2.properties
SERVER_LOG=$LOG_DIR/server.log
OUT_LOG=$LOG_DIR/kafka.out
STARTED_MESSAGE="Kafka Server started"
SECRETS_DIR=$STATE_DIR/secrets
# The broker's PEM key store: its key, then its certificate chain.
TLS_KEYSTORE=$CONF_DIR/tls-keystore.pem
ADMIN_JAVA_PROPS=$SECRETS_DIR/admin.java.properties
# The host to probe for readiness: where the client listener can be reached.
if [[ $BIND == 0.0.0.0 ]]; then PROBE_HOST=127.0.0.1; else PROBE_HOST=$BIND; fi

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (${2:-install it first})"; }

now() {
  if [[ -n ${EPOCHREALTIME:-} ]]; then printf '%s\n' "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi
}
# seconds since $1, one decimal
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
  sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---- fetch -------------------------------------------------------------------

write_pom() {
  cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/kafka/kafka.sh: the jars of an Apache Kafka broker -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fdxkafka.local</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_BINARY</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- the release tarball adds the logging backend outside the POM -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>$LOG4J_SLF4J_BINDING</artifactId>
      <version>$LOG4J_VERSION</version>
    </dependency>
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>$MAVEN_DEPENDENCY_PLUGIN_VERSION</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
EOF
}

cache_ok() { [[ -f $CACHE_STAMP && $(<"$CACHE_STAMP") == "$STAMP" ]]; }

fetch() {
  if cache_ok; then
    return 0
  fi
  need "$MVN" "Maven 3, e.g. apt-get install maven"
  need "$JAVA" "Java 17+, e.g. apt-get install openjdk-17-jre-headless"
  local parent t0 tmp n
  parent=$(dirname "$CACHE_DIR")
  mkdir -p "$parent"
  tmp=$(mktemp -d "$parent/.fetch-kafka-$KAFKA_VERSION.XXXXXX")
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  log "fetching Kafka $KAFKA_VERSION (Scala $SCALA_BINARY) + log4j $LOG4J_VERSION jars with Maven into $CACHE_DIR ..."
  t0=$(now)
  write_pom "$tmp/pom.xml"
  if ! "$MVN" -B -q -f "$tmp/pom.xml" \
      dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
    cat "$tmp/mvn.log" >&2
    die "maven could not resolve the Kafka jars"
  fi
  # The logging binding must match the slf4j-api that Kafka resolved, or the
  # broker starts without a single log line (and readiness can't be seen).
  local f slf4j=""
  for f in "$tmp"/libs/slf4j-api-*.jar; do [[ -e $f ]] && slf4j=${f##*/}; done
  case "$LOG4J_SLF4J_BINDING:$slf4j" in
    log4j-slf4j-impl:slf4j-api-1.*.jar | log4j-slf4j2-impl:slf4j-api-2.*.jar) ;;
    *) die "resolved '${slf4j:-no slf4j-api}' does not fit $LOG4J_SLF4J_BINDING: fix LOG4J_SLF4J_BINDING in $0" ;;
  esac
  [[ -f $tmp/libs/log4j-core-$LOG4J_VERSION.jar ]] ||
    die "log4j-core-$LOG4J_VERSION.jar missing from the resolved jars in $tmp/libs"
  [[ -f $tmp/libs/kafka_$SCALA_BINARY-$KAFKA_VERSION.jar ]] || die "kafka_$SCALA_BINARY-$KAFKA_VERSION.jar was not resolved"
  rm -f "$tmp/mvn.log"
  printf '%s\n' "$STAMP" >"$tmp/.complete"
  chmod 755 "$tmp"
  # Publish the finished cache in one rename; a concurrent fetch that lost the
  # race just drops its copy.
  if [[ -d $CACHE_DIR ]] && ! cache_ok; then rm -rf "${CACHE_DIR:?}"; fi
  if ! mv -T "$tmp" "$CACHE_DIR" 2>/dev/null; then
    cache_ok || die "could not move the jars into $CACHE_DIR"
  fi
  trap - EXIT
  rm -rf "$tmp"
  n=$(find "$LIB_DIR" -name '*.jar' | wc -l)
  log "fetched $n jars ($(du -sh "$LIB_DIR" | cut -f1)) in $(elapsed "$t0") s"
}

# fetch_tools puts the kafka-tools jar (without its dependencies, which the
# broker's jars provide) into $TOOLS_DIR, once.
fetch_tools() {
  local jar=$TOOLS_DIR/kafka-tools-$KAFKA_VERSION.jar tmp
  [[ -f $jar ]] && return 0
  fetch
  mkdir -p "$(dirname "$TOOLS_DIR")"
  tmp=$(mktemp -d "$(dirname "$TOOLS_DIR")/.fetch-tools-$KAFKA_VERSION.XXXXXX")
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  write_pom "$tmp/pom.xml"
  sed -i "s|<artifactId>kafka_$SCALA_BINARY</artifactId>|<artifactId>kafka-tools</artifactId>|" "$tmp/pom.xml"
  if ! "$MVN" -B -q -f "$tmp/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DexcludeTransitive=true -DincludeArtifactIds=kafka-tools -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
    cat "$tmp/mvn.log" >&2
    die "maven could not resolve kafka-tools $KAFKA_VERSION"
  fi
  [[ -f $tmp/libs/kafka-tools-$KAFKA_VERSION.jar ]] || die "kafka-tools-$KAFKA_VERSION.jar was not resolved"
  mkdir -p "$TOOLS_DIR"
  # One rename publishes the jar: a concurrent fetch just replaces it.
  mv "$tmp/libs/kafka-tools-$KAFKA_VERSION.jar" "$jar.tmp$$" && mv -f "$jar.tmp$$" "$jar"
  trap - EXIT
  rm -rf "$tmp"
  log "fetched kafka-tools-$KAFKA_VERSION.jar into $TOOLS_DIR"
}

# ---- secure mode ---------------------------------------------------------------

# secret ROLE: the password of ROLE (admin, aggregator, client): from
# FDX_KAFKA_<ROLE>_PASSWORD, else the one kept in secrets/, else a new one.
secret() {
  local role=$1 var file pw
  var=FDX_KAFKA_${role^^}_PASSWORD
  file=$SECRETS_DIR/$role.password
  pw=${!var:-}
  if [[ -z $pw && -f $file ]]; then pw=$(<"$file"); fi
  if [[ -z $pw ]]; then pw=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9'); fi
  [[ $pw =~ ^[A-Za-z0-9._~-]+$ ]] || die "$var: use only letters, digits and ._~- (it goes into JAAS and SCRAM configs)"
  printf '%s\n' "$pw" >"$file"
  printf '%s' "$pw"
}

# write_secrets sets ADMIN_PW, AGGREGATOR_PW and CLIENT_PW and writes the
# properties files of each principal (mode 0600 in a 0700 directory).
write_secrets() {
  local old_umask role user pw
  old_umask=$(umask)
  umask 077
  mkdir -p "$SECRETS_DIR"
  chmod 700 "$SECRETS_DIR"
  ADMIN_PW=$(secret admin)
  AGGREGATOR_PW=$(secret aggregator)
  CLIENT_PW=$(secret client)
  for role in admin aggregator client; do
    case $role in
      admin) user=$ADMIN_USER pw=$ADMIN_PW ;;
      aggregator) user=$AGGREGATOR_USER pw=$AGGREGATOR_PW ;;
      *) user=$CLIENT_USER pw=$CLIENT_PW ;;
    esac
    # The aggregator's --kafka-config, the function's FDX_KAFKA_CONFIG.
    cat >"$SECRETS_DIR/$role.properties" <<EOF
# Kafka client properties of principal User:$user (generated by kafka.sh)
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-256
sasl.username=$user
sasl.password=$pw
EOF
    rm -f "$SECRETS_DIR/$role-tls.properties"
    if tls_enabled; then
      cat >"$SECRETS_DIR/$role-tls.properties" <<EOF
# Kafka client properties of principal User:$user over TLS, port $TLS_PORT (generated by kafka.sh)
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-256
sasl.username=$user
sasl.password=$pw
ssl.ca.location=$TLS_CA
EOF
    fi
  done
  cat >"$ADMIN_JAVA_PROPS" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-256
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ADMIN_USER" password="$ADMIN_PW";
EOF
  umask "$old_umask"
}

# tls_enabled: secure mode with the broker's certificate, key and CA given
# (all three, or none).
tls_enabled() {
  [[ $SECURE == 1 ]] || return 1
  if [[ -z $TLS_CERT && -z $TLS_KEY && -z $TLS_CA ]]; then return 1; fi
  [[ -n $TLS_CERT && -n $TLS_KEY && -n $TLS_CA ]] ||
    die "set all of FDX_KAFKA_TLS_CERT, FDX_KAFKA_TLS_KEY and FDX_KAFKA_TLS_CA, or none"
  local f
  for f in "$TLS_CERT" "$TLS_KEY" "$TLS_CA"; do
    [[ -r $f ]] || die "TLS file $f is not readable"
  done
  [[ $TLS_CA = /* ]] || die "FDX_KAFKA_TLS_CA=$TLS_CA: give an absolute path (it goes into the clients' properties)"
}

# load_secrets reads the admin password of a secure broker (status, acls).
load_secrets() {
  [[ -f $SECRETS_DIR/admin.password ]] || return 1
  ADMIN_PW=$(<"$SECRETS_DIR/admin.password")
}

# A short-lived JVM for the admin tools.
tool() {
  "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J_CONF" \
    -cp "$(java_cp):$TOOLS_DIR/*" "$@"
}

# acl USER ARGS...: add the ACLs ARGS (operations and literal resources) for
# User:USER.
acl() {
  local user=$1 out
  shift
  if ! out=$(tool org.apache.kafka.tools.AclCommand --bootstrap-server "$PROBE_HOST:$PORT" \
      --command-config "$ADMIN_JAVA_PROPS" --add --allow-principal "User:$user" \
      --resource-pattern-type literal "$@" 2>&1); then
    printf '%s\n' "$out" | tail -n 20 >&2
    log "adding ACLs for User:$user failed: $*"
    return 1
  fi
  printf '%s\n' "$out" >>"$LOG_DIR/acls.log"
}

# cmd_acls grants, for each job, exactly what it needs. The resources are
# literal: a prefix such as fdx.<job>. would also match the job "<job>.x",
# and no pattern tells a job's model topic from its updates topic.
#  - the aggregator: All on its job's two topics (create them, raise
#    max.message.bytes, read updates, write models), on its consumer group
#    fdx.<job>.aggregator, on the group id of its model reader
#    fdx.<job>.reader and on its transactional id fdx.<job>.aggregator;
#  - the clients: Write+Describe on fdx.<job>.updates and Read+Describe on
#    fdx.<job>.model. Nothing else: no group (so they cannot join the
#    aggregator's), no transactional id, no other topic.
cmd_acls() {
  (($# > 0)) || die "acls: name at least one job"
  if ! load_secrets || [[ ! -f $ADMIN_JAVA_PROPS ]]; then
    die "acls: $STATE_DIR is not a secure broker (start it with FDX_KAFKA_SECURE=1)"
  fi
  running_pid >/dev/null || die "acls: the broker of $STATE_DIR is not running"
  fetch_tools
  local job t0 pids=() p failed=0
  t0=$(now)
  for job in "$@"; do
    [[ $job =~ ^[A-Za-z0-9._-]{1,128}$ ]] || die "acls: job id '$job': want 1-128 characters of [A-Za-z0-9._-]"
    # One JVM per principal and operation set, run side by side.
    acl "$AGGREGATOR_USER" --operation All --topic "fdx.$job.model" --topic "fdx.$job.updates" \
      --group "fdx.$job.aggregator" --group "fdx.$job.reader" --transactional-id "fdx.$job.aggregator" &
    pids+=($!)
    acl "$CLIENT_USER" --operation Write --operation Describe --topic "fdx.$job.updates" &
    pids+=($!)
    acl "$CLIENT_USER" --operation Read --operation Describe --topic "fdx.$job.model" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  ((failed == 0)) || die "granting the ACLs of job(s) $* failed"
  echo "ACLs of job(s) $* granted to User:$AGGREGATOR_USER and User:$CLIENT_USER in $(elapsed "$t0") s"
}

# ---- process helpers ---------------------------------------------------------

read_pid() { [[ -f $PID_FILE ]] && tr -dc '0-9' <"$PID_FILE"; }

# Our broker is running: the pid file names a live java running kafka.Kafka with
# this state dir's server.properties.
running_pid() {
  local pid
  pid=$(read_pid) || return 1
  [[ -n $pid ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $SERVER_PROPS" || return 1
  printf '%s\n' "$pid"
}

port_open() {
  # shellcheck disable=SC2016  # $1/$2 are the inner bash's arguments
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# The server log from byte offset $1 on (what this start wrote).
log_since() {
  local off=$1 size
  [[ -f $SERVER_LOG ]] || return 0
  size=$(stat -c %s "$SERVER_LOG")
  if ((size < off)); then off=0; fi # the log rolled over
  tail -c +"$((off + 1))" "$SERVER_LOG"
}

# "Kafka Server started" logged since byte offset $1 of the server log.
# (grep reads to the end: with -q it would quit at the first match, and
# under pipefail the SIGPIPE of the still-writing tail fails the check.)
started_since() { log_since "$1" | grep -F "$STARTED_MESSAGE" >/dev/null; }

broker_answers() {
  port_open "$PROBE_HOST" "$PORT" || return 1
  # kcat is optional; when present it proves the broker serves metadata.
  if command -v kcat >/dev/null 2>&1; then
    local sasl=()
    if [[ $SECURE == 1 ]] && load_secrets; then
      sasl=(-X security.protocol=SASL_PLAINTEXT -X sasl.mechanisms=SCRAM-SHA-256 -X "sasl.username=$ADMIN_USER" -X "sasl.password=$ADMIN_PW")
    fi
    kcat -b "$PROBE_HOST:$PORT" "${sasl[@]}" -L -m 5 >/dev/null 2>&1 || return 1
  fi
}

# Wait until the broker (pid $1) logged its start since offset $2 and answers.
wait_ready() {
  local pid=$1 off=$2 deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "the broker (pid $pid) exited during start-up; last log lines:"
      tail -n 20 "$OUT_LOG" >&2 2>/dev/null || true
      log_since "$off" | grep -v '^[[:space:]]' | tail -n 20 >&2 || true
      rm -f "$PID_FILE"
      return 1
    fi
    if started_since "$off" && broker_answers; then
      return 0
    fi
    sleep 0.25
  done
  log "the broker (pid $pid) did not answer on $PROBE_HOST:$PORT within ${START_TIMEOUT}s; stopping it. Last log lines ($SERVER_LOG):"
  log_since "$off" | grep -v '^[[:space:]]' | tail -n 20 >&2 || true
  cmd_stop >&2 || true
  return 1
}

java_cp() { printf '%s\n' "$LIB_DIR/*"; }

# A short-lived JVM for kafka.tools.StorageTool.
storage_tool() {
  "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J_CONF" \
    -cp "$(java_cp)" kafka.tools.StorageTool "$@"
}

# ---- configuration -------------------------------------------------------------

write_config() {
  mkdir -p "$CONF_DIR" "$LOG_DIR"
  local tls_listener="" tls_advertised=""
  if tls_enabled; then
    tls_listener=SASL_SSL://$BIND:$TLS_PORT
    tls_advertised=SASL_SSL://$HOST:$TLS_PORT
    (umask 077 && cat "$TLS_KEY" "$TLS_CERT" >"$TLS_KEYSTORE")
  fi
  # The config holds the admin password in secure mode.
  (umask 077 && cat >"$SERVER_PROPS") <<EOF
# Generated by deploy/kafka/kafka.sh at every start: edits here are lost.
# KRaft: this process is broker and controller (node $NODE_ID of voters $VOTERS).
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
controller.listener.names=CONTROLLER
log.dirs=$DATA_DIR

# $REPLICAS replica(s) for every internal topic, with an ISR of $MIN_ISR: on one
# node anything more makes consumer groups, transactions and share groups
# fail; on three, a node may die and every acknowledged write survives.
default.replication.factor=$REPLICAS
min.insync.replicas=$MIN_ISR
offsets.topic.replication.factor=$REPLICAS
transaction.state.log.replication.factor=$REPLICAS
transaction.state.log.min.isr=$MIN_ISR
share.coordinator.state.topic.replication.factor=$REPLICAS
share.coordinator.state.topic.min.isr=$MIN_ISR

num.partitions=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0

# Large model records: the broker-wide cap; a topic may raise its own
# max.message.bytes up to this (clients need matching settings).
message.max.bytes=$MAX_MESSAGE_BYTES
replica.fetch.max.bytes=$MAX_MESSAGE_BYTES
EOF
  if [[ $SECURE == 1 ]]; then
    cat >>"$SERVER_PROPS" <<EOF

# Secure mode. Clients authenticate with SCRAM-SHA-256; the broker talks to
# itself as the super user over the same listener. The controller listener
# (loopback) takes PLAIN with the super user's password: SCRAM credentials
# live in the metadata the controller serves, so they cannot guard it.
listeners=SASL_PLAINTEXT://$BIND:$PORT,CONTROLLER://$CTRL_HOST:$CTRL_PORT${tls_listener:+,$tls_listener}
advertised.listeners=SASL_PLAINTEXT://$HOST:$PORT${tls_advertised:+,$tls_advertised}
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT${tls_listener:+,SASL_SSL:SASL_SSL}
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ADMIN_USER" password="$ADMIN_PW";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="$ADMIN_USER" password="$ADMIN_PW" user_$ADMIN_USER="$ADMIN_PW";
# Deny what no ACL allows; only the super user passes everything.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:$ADMIN_USER
EOF
    if [[ -n $tls_listener ]]; then
      cat >>"$SERVER_PROPS" <<EOF

# SASL_SSL: the same SCRAM users over TLS. The PEM key store holds the
# broker's unencrypted key and its certificate chain; clients verify it
# against FDX_KAFKA_TLS_CA. No client certificates: SCRAM authenticates.
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ADMIN_USER" password="$ADMIN_PW";
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS_KEYSTORE
listener.name.sasl_ssl.ssl.client.auth=none
EOF
    fi
  else
    cat >>"$SERVER_PROPS" <<EOF

listeners=PLAINTEXT://$BIND:$PORT,CONTROLLER://$CTRL_HOST:$CTRL_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
EOF
  fi
  if [[ -n $EXTRA_CONFIG ]]; then
    [[ -f $EXTRA_CONFIG ]] || die "FDX_KAFKA_EXTRA_CONFIG=$EXTRA_CONFIG: no such file"
    printf '\n# from %s\n' "$EXTRA_CONFIG" >>"$SERVER_PROPS"
    cat "$EXTRA_CONFIG" >>"$SERVER_PROPS"
  fi

  cat >"$LOG4J_CONF" <<'EOF'
# Generated by deploy/kafka/kafka.sh. ${sys:kafka.logs.dir} is set by the script.
status = warn
name = fdxkafka

appender.server.type = RollingFile
appender.server.name = server
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 64MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 4

rootLogger.level = info
rootLogger.appenderRef.server.ref = server

logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
EOF

  write_tools_log4j "$TOOLS_LOG4J_CONF"
}

# write_tools_log4j FILE: the logging of the short-lived tool JVMs.
write_tools_log4j() {
  cat >"$1" <<'EOF'
# Generated by deploy/kafka/kafka.sh: the tools (StorageTool, AclCommand) log warnings to stderr.
status = warn
name = fdxkafka-tools
appender.stderr.type = Console
appender.stderr.name = stderr
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = stderr
EOF
}

# ---- subcommands -----------------------------------------------------------------

report_running() {
  local pid=$1
  echo "Kafka $KAFKA_VERSION broker running at $HOST:$PORT (pid $pid, state dir $STATE_DIR)"
  echo "FDX_KAFKA_BROKERS=$HOST:$PORT"
}

cmd_start() {
  local keep=$KEEP_DATA arg
  for arg in "$@"; do
    case $arg in
      --keep-data) keep=1 ;;
      --fresh) keep=0 ;;
      --secure) SECURE=1 ;;
      *) die "start: unknown option $arg (use --keep-data, --fresh or --secure)" ;;
    esac
  done
  if [[ $NODES == 3 ]]; then
    cluster_start "$keep"
    return
  fi
  local pid
  if pid=$(running_pid); then
    # Already ours: make sure it answers (it may be starting), then report.
    if ! broker_answers; then
      log "broker pid $pid is running but not answering yet; waiting"
      wait_ready "$pid" 0 || exit 1
    fi
    report_running "$pid"
    return 0
  fi
  rm -f "$PID_FILE"
  if port_open "$PROBE_HOST" "$PORT"; then
    die "$PROBE_HOST:$PORT is already taken by another process (not the broker of $STATE_DIR)"
  fi
  if port_open "$CTRL_HOST" "$CTRL_PORT"; then
    die "controller port $CTRL_HOST:$CTRL_PORT is already taken (set FDX_KAFKA_CONTROLLER_PORT)"
  fi
  if tls_enabled && port_open "$PROBE_HOST" "$TLS_PORT"; then
    die "TLS port $PROBE_HOST:$TLS_PORT is already taken (set FDX_KAFKA_TLS_PORT)"
  fi
  need "$JAVA" "Java 17+, e.g. apt-get install openjdk-17-jre-headless"
  fetch

  local t0 data_note cluster_id scram=()
  t0=$(now)
  if [[ $SECURE == 1 ]]; then
    write_secrets
    local u
    for u in "$ADMIN_USER=$ADMIN_PW" "$AGGREGATOR_USER=$AGGREGATOR_PW" "$CLIENT_USER=$CLIENT_PW"; do
      scram+=(--add-scram "SCRAM-SHA-256=[name=${u%%=*},password=${u#*=}]")
    done
  fi
  write_config
  if [[ $keep == 1 && -f $DATA_DIR/meta.properties ]]; then
    cluster_id=$(sed -n 's/^cluster.id=//p' "$DATA_DIR/meta.properties")
    data_note="kept data in $DATA_DIR (cluster $cluster_id)"
  else
    rm -rf "${DATA_DIR:?}"
    mkdir -p "$DATA_DIR"
    cluster_id=${FDX_KAFKA_CLUSTER_ID:-}
    if [[ -z $cluster_id ]]; then
      cluster_id=$(storage_tool random-uuid 2>>"$LOG_DIR/format.log" | tail -n 1)
    fi
    [[ -n $cluster_id ]] || die "kafka.tools.StorageTool random-uuid gave no id; see $LOG_DIR/format.log"
    # Secure mode: the SCRAM users exist from the first metadata record on,
    # before the broker needs its own to talk to itself.
    if ! storage_tool format -t "$cluster_id" -c "$SERVER_PROPS" "${scram[@]}" >>"$LOG_DIR/format.log" 2>&1; then
      tail -n 20 "$LOG_DIR/format.log" >&2
      die "formatting $DATA_DIR failed"
    fi
    data_note="fresh data in $DATA_DIR (cluster $cluster_id)"
  fi

  local off=0
  [[ -f $SERVER_LOG ]] && off=$(stat -c %s "$SERVER_LOG")
  : >"$OUT_LOG"
  # shellcheck disable=SC2086  # HEAP_OPTS / EXTRA_JVM_OPTS are word lists
  nohup "$JAVA" $HEAP_OPTS \
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_CONF" -Dkafka.logs.dir="$LOG_DIR" \
    $EXTRA_JVM_OPTS \
    -cp "$(java_cp)" kafka.Kafka "$SERVER_PROPS" \
    </dev/null >>"$OUT_LOG" 2>&1 &
  pid=$!
  printf '%s\n' "$pid" >"$PID_FILE"
  if [[ $NO_WAIT == 1 ]]; then
    log "started java (pid $pid); $data_note; not waiting"
    return 0
  fi
  log "started java (pid $pid); $data_note; waiting up to ${START_TIMEOUT}s for $PROBE_HOST:$PORT"
  wait_ready "$pid" "$off" || exit 1
  echo "Kafka $KAFKA_VERSION broker ready at $HOST:$PORT in $(elapsed "$t0") s (pid $pid, state dir $STATE_DIR)"
  if [[ $SECURE == 1 ]]; then
    echo "secure mode: users $ADMIN_USER (super user), $AGGREGATOR_USER, $CLIENT_USER; Kafka client properties in $SECRETS_DIR/{aggregator,client}.properties"
    if tls_enabled; then
      echo "SASL_SSL listener at $HOST:$TLS_PORT; properties in $SECRETS_DIR/{aggregator,client}-tls.properties"
      echo "FDX_KAFKA_TLS_BROKERS=$HOST:$TLS_PORT"
    fi
  fi
  echo "FDX_KAFKA_BROKERS=$HOST:$PORT"
}

# ---- cluster mode ----------------------------------------------------------------

# Per-node addresses and namespaces (FDX_KAFKA_NODE_HOSTS, FDX_KAFKA_NODE_NETNS).
IFS=, read -r -a NODE_HOSTS <<<"${FDX_KAFKA_NODE_HOSTS:-}"
IFS=, read -r -a NODE_NETNS <<<"${FDX_KAFKA_NODE_NETNS:-}"
if ((${#NODE_HOSTS[@]} != 0 && ${#NODE_HOSTS[@]} != 3)); then
  die "FDX_KAFKA_NODE_HOSTS=${FDX_KAFKA_NODE_HOSTS:-}: want three comma-separated addresses"
fi
if ((${#NODE_NETNS[@]} != 0 && ${#NODE_NETNS[@]} != 3)); then
  die "FDX_KAFKA_NODE_NETNS=${FDX_KAFKA_NODE_NETNS:-}: want three comma-separated namespaces"
fi

# node_host I: node I's client address.
node_host() { if ((${#NODE_HOSTS[@]})); then printf '%s' "${NODE_HOSTS[$1 - 1]}"; else printf '%s' "$HOST"; fi; }

# node_env I prints the environment under which this script runs node I.
node_env() {
  local i=$1 voters="" j ctrl=127.0.0.1
  for j in 1 2 3; do
    if ((${#NODE_HOSTS[@]})); then ctrl=${NODE_HOSTS[$j - 1]}; fi
    voters+="${voters:+,}$j@$ctrl:$((CTRL_PORT + j - 1))"
  done
  printf '%s\n' FDX_KAFKA_NODES=1 "FDX_KAFKA_NODE_ID=$i" "FDX_KAFKA_PORT=$((PORT + i - 1))" \
    "FDX_KAFKA_CONTROLLER_PORT=$((CTRL_PORT + i - 1))" "FDX_KAFKA_DIR=$STATE_DIR/node-$i" \
    "FDX_KAFKA_VOTERS=$voters" FDX_KAFKA_REPLICAS=3 FDX_KAFKA_SECURE=0 \
    FDX_KAFKA_NODE_HOSTS= FDX_KAFKA_NODE_NETNS=
  if ((${#NODE_HOSTS[@]})); then
    printf '%s\n' "FDX_KAFKA_HOST=${NODE_HOSTS[$i - 1]}" "FDX_KAFKA_BIND=${NODE_HOSTS[$i - 1]}" \
      "FDX_KAFKA_CONTROLLER_HOST=${NODE_HOSTS[$i - 1]}"
  fi
}

# on_node I CMD...: run this script's CMD for node I (inside its namespace,
# when the nodes have namespaces).
on_node() {
  local i=$1 envs wrap=()
  shift
  mapfile -t envs < <(node_env "$i")
  if ((${#NODE_NETNS[@]})); then wrap=(ip netns exec "${NODE_NETNS[$i - 1]}"); fi
  "${wrap[@]}" env "${envs[@]}" bash "${BASH_SOURCE[0]}" "$@"
}

cluster_brokers() { printf '%s\n' "$(node_host 1):$PORT,$(node_host 2):$((PORT + 1)),$(node_host 3):$((PORT + 2))"; }

# cluster_start launches the three nodes, then waits for each: no node
# answers before a majority of the controllers is up.
cluster_start() {
  local keep=$1 t0 i cluster_id=${FDX_KAFKA_CLUSTER_ID:-} meta pids=() failed=0
  [[ $SECURE == 1 ]] && die "secure mode runs on one node only (unset FDX_KAFKA_SECURE or FDX_KAFKA_NODES)"
  t0=$(now)
  fetch
  mkdir -p "$STATE_DIR"
  meta=$STATE_DIR/node-1/data/meta.properties
  if [[ -z $cluster_id && $keep == 1 && -f $meta ]]; then
    cluster_id=$(sed -n 's/^cluster.id=//p' "$meta")
  fi
  if [[ -z $cluster_id ]]; then
    write_tools_log4j "$STATE_DIR/tools-log4j2.properties"
    cluster_id=$(TOOLS_LOG4J_CONF=$STATE_DIR/tools-log4j2.properties storage_tool random-uuid | tail -n 1)
  fi
  [[ -n $cluster_id ]] || die "no cluster id"
  # Nodes already up are left alone, also when another one fails: this
  # restarts a crashed node of a running cluster (with --keep-data).
  local was_up=0
  for i in 1 2 3; do
    if on_node "$i" status >/dev/null; then was_up=1; fi
  done
  for i in 1 2 3; do
    FDX_KAFKA_CLUSTER_ID=$cluster_id FDX_KAFKA_NO_WAIT=1 FDX_KAFKA_KEEP_DATA=$keep on_node "$i" start &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || failed=1; done
  for i in 1 2 3; do
    ((failed)) || on_node "$i" start >/dev/null || failed=1
  done
  if ((failed)); then
    if ((was_up == 0)); then cmd_stop_cluster >&2 || true; fi
    die "the cluster did not start (a node's client or controller port may be taken; see $STATE_DIR/node-*/logs)"
  fi
  echo "Kafka $KAFKA_VERSION cluster of 3 nodes (cluster $cluster_id) ready in $(elapsed "$t0") s, state in $STATE_DIR/node-{1,2,3}"
  echo "FDX_KAFKA_BROKERS=$(cluster_brokers)"
}

cmd_stop_cluster() {
  local i pids=() failed=0
  for i in 1 2 3; do
    on_node "$i" stop &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || failed=1; done
  return "$failed"
}

cmd_status_cluster() {
  local i up=0
  for i in 1 2 3; do
    if on_node "$i" status | sed "s/^/node $i: /"; then up=$((up + 1)); fi
  done
  echo "$up of 3 nodes running; FDX_KAFKA_BROKERS=$(cluster_brokers)"
  ((up > 0)) || return 3
}

# cmd_kill NODE: SIGKILL one node of the cluster, as a crash would.
cmd_kill() {
  local i=${1:-} pid
  [[ $NODES == 3 ]] || die "kill: only in cluster mode (FDX_KAFKA_NODES=3)"
  [[ $i =~ ^[123]$ ]] || die "kill: name a node, 1, 2 or 3"
  pid=$(tr -dc '0-9' <"$STATE_DIR/node-$i/kafka.pid" 2>/dev/null) || true
  if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then die "node $i is not running"; fi
  kill -KILL "$pid"
  echo "node $i (pid $pid) killed"
}

cmd_stop() {
  local pid t0
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    echo "Kafka broker of $STATE_DIR is not running"
    return 0
  fi
  t0=$(now)
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after ${STOP_TIMEOUT}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  kill -0 "$pid" 2>/dev/null && die "pid $pid would not die"
  rm -f "$PID_FILE"
  echo "Kafka broker (pid $pid) stopped in $(elapsed "$t0") s"
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    if broker_answers; then
      report_running "$pid"
    else
      echo "Kafka $KAFKA_VERSION broker pid $pid is running but not answering on $PROBE_HOST:$PORT (starting or stuck)"
    fi
    return 0
  fi
  echo "Kafka broker of $STATE_DIR is not running"
  return 3
}

cmd_logs() {
  local follow=0 lines=100 arg file=$SERVER_LOG
  for arg in "$@"; do
    case $arg in
      -f|--follow) follow=1 ;;
      ''|*[!0-9]*) die "logs: unknown argument $arg (use -f and/or a line count)" ;;
      *) lines=$arg ;;
    esac
  done
  [[ -f $file ]] || file=$OUT_LOG
  [[ -f $file ]] || die "no log yet in $LOG_DIR"
  if ((follow)); then exec tail -n "$lines" -F "$file"; fi
  tail -n "$lines" "$file"
}

cmd_version() {
  echo "kafka_$SCALA_BINARY $KAFKA_VERSION, log4j $LOG4J_VERSION ($LOG4J_SLF4J_BINDING)"
  echo "jar cache: $CACHE_DIR ($(cache_ok && echo complete || echo not fetched))"
  local compose=$SCRIPT_DIR/docker-compose.yml
  if [[ -f $compose ]] && ! grep -q "image: apache/kafka:$KAFKA_VERSION\$" "$compose"; then
    log "warning: $compose does not use apache/kafka:$KAFKA_VERSION"
    return 1
  fi
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
    fetch)
      fetch
      fetch_tools
      echo "jars in $LIB_DIR ($(find "$LIB_DIR" -name '*.jar' | wc -l) jars, $(du -sh "$LIB_DIR" | cut -f1)) and $TOOLS_DIR"
      ;;
    start) cmd_start "$@" ;;
    stop) if [[ $NODES == 3 ]]; then cmd_stop_cluster; else cmd_stop; fi ;;
    restart)
      if [[ $NODES == 3 ]]; then cmd_stop_cluster; else cmd_stop; fi
      cmd_start "$@"
      ;;
    status) if [[ $NODES == 3 ]]; then cmd_status_cluster; else cmd_status; fi ;;
    acls) cmd_acls "$@" ;;
    kill) cmd_kill "$@" ;;
    logs) cmd_logs "$@" ;;
    version) cmd_version ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
