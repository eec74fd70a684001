#!/usr/bin/env bash
# Long-run suite (not CI): a 3-node local cluster with many partitions (default 10,000, RF 3:
# 10,000 replicas per node). Prints how long creating them took until `keel check` passes,
# the idle CPU and anonymous memory per node, the time `keel check` takes over the whole
# cluster, and partition failover after kill -9 of a broker. Exits 1 if any step fails.
#
#   scripts/long-run-partitions.sh [TOPICS] [PARTITIONS_PER_TOPIC] [KILLS]
#
# Needs a release build (cargo build --release -p keel) and an open-files limit of at least
# about 11,000 per node for 10,000 replicas (a node holds one descriptor per segment).
set -euo pipefail
TOPICS=${1:-10}
PER=${2:-1000}
KILLS=${3:-3}
KEEL=${KEEL:-$(dirname "$0")/../target/release/keel}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/keel-partitions.XXXXXX")
PID=""
# shellcheck source=scripts/common.sh
. "$(dirname "$0")/common.sh"
cleanup() { stop_pid "$PID"; rm -rf "$DIR"; }
trap cleanup EXIT
ms() { date +%s%3N; }

"$KEEL" cluster start --data-dir "$DIR/c" >"$DIR/cluster.out" 2>&1 &
PID=$!
for _ in $(seq 120); do grep -q "Ctrl-C stops" "$DIR/cluster.out" && break; sleep 0.5; done
grep -q "Ctrl-C stops" "$DIR/cluster.out" || fail "the cluster did not start"
BOOT=127.0.0.1:9092

t0=$(ms)
for t in $(seq 1 "$TOPICS"); do
    "$KEEL" topic create "scale$t" --partitions "$PER" --replication-factor 3 \
        --bootstrap-server "$BOOT" >/dev/null || fail "creating scale$t"
done
t1=$(ms)
ready=""
for _ in $(seq 120); do
    if "$KEEL" check --bootstrap-server "$BOOT" --unsynced >/dev/null 2>&1; then ready=1; break; fi
    sleep 1
done
t2=$(ms)
[ -n "$ready" ] || fail "keel check did not pass within 120 s of creating the topics"
echo "created $((TOPICS * PER)) partitions RF 3: CreateTopics answered after $((t1 - t0)) ms, keel check passed after $((t2 - t0)) ms"

nodes=$(pgrep -P "$PID" | tr '\n' ' ')
# The first checkpoint interval after creating them writes every new replica's first
# checkpoints: idle is measured after it.
sleep 120
hz=$(getconf CLK_TCK)
declare -A before
for n in $nodes; do before[$n]=$(awk '{print $14+$15}' "/proc/$n/stat"); done
sleep 120
for n in $nodes; do
    after=$(awk '{print $14+$15}' "/proc/$n/stat")
    anon=$(awk '/RssAnon/ {print $2}' "/proc/$n/status")
    fds=$(find "/proc/$n/fd" -maxdepth 1 -type l | wc -l)
    echo "node pid $n: idle CPU $(echo "scale=2; ($after - ${before[$n]}) * 100 / $hz / 120" | bc) % of one core over 120 s, anonymous memory $((anon / 1024)) MiB ($(echo "scale=1; $anon / ($TOPICS * $PER)" | bc) KiB per replica), $fds descriptors"
done

t0=$(ms)
"$KEEL" check --bootstrap-server "$BOOT" --unsynced >/dev/null || fail "keel check over the idle cluster"
echo "keel check over $((TOPICS * PER)) partitions (3 replicas each): $(($(ms) - t0)) ms"

"$KEEL" bench failover --data-dir "$DIR/c" --broker --kills "$KILLS" --topic scale1 | tail -n $((KILLS + 1))
ready=""
for _ in $(seq 120); do
    if "$KEEL" check --bootstrap-server "$BOOT" --unsynced >/dev/null 2>&1; then ready=1; break; fi
    sleep 1
done
[ -n "$ready" ] || fail "keel check did not pass after the failovers"
echo "keel check passed after the failovers"
