#!/usr/bin/env bash
# The idempotent producer's cost, for BENCHMARKS.md: `keel bench produce` with the client's
# default (idempotent) producer against --no-idempotence, alternating in one run, acks=all,
# on one node and on a 3-broker cluster (RF=3, min.insync.replicas=2). Then the same with
# librdkafka through the peer kit if KIT is set (KAFKA_PRODUCER_X=enable.idempotence=true
# against the default).
#
#   scripts/bench-idempotence.sh [single] [cluster] [kit]     (default: single cluster)
#
# Knobs: REPS=5 RECORDS=1000000 PARTITIONS="1 8" BASE_PORT=19600 KIT=../shared/bench
# OUT=bench-results/<stamp>. Every process this script starts it stops by PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS="${REPS:-5}"
RECORDS="${RECORDS:-1000000}"
PARTITIONS="${PARTITIONS:-1 8}"
BASE_PORT="${BASE_PORT:-19600}"
KIT="${KIT:-../shared/bench}"
OUT="${OUT:-bench-results/idempotence-$(date +%Y%m%d-%H%M%S)}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(single cluster)

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cargo build --release -q -p keel
KEEL="$PWD/target/release/keel"
DATA="$(mktemp -d)"
CONTROLLER="127.0.0.1:$BASE_PORT"
declare -A PIDS=()

node_args() { # node_args MODE ID
    local mode=$1 id=$2
    if [ "$mode" = single ]; then
        echo "broker --data-dir $DATA/single --listeners 127.0.0.1:$((BASE_PORT + 1)) --metrics-listener none"
    elif [ "$id" = 0 ]; then
        echo "broker --node-id 0 --data-dir $DATA/node-0 --metrics-listener none --set process.roles=controller --set controller.listener=$CONTROLLER --set min.insync.replicas=2"
    else
        echo "broker --node-id $id --data-dir $DATA/node-$id --listeners 127.0.0.1:$((BASE_PORT + id)) --metrics-listener none --set process.roles=broker --set controller.quorum.voters=0@$CONTROLLER --set min.insync.replicas=2 --set default.replication.factor=3"
    fi
}
start_node() { # start_node MODE ID
    local out="$OUT/node-$2.out"
    : >"$out"
    # shellcheck disable=SC2046
    "$KEEL" $(node_args "$1" "$2") >"$out" 2>>"$OUT/node-$2.log" &
    PIDS[$2]=$!
    for _ in $(seq 1 600); do
        grep -q '^KEEL_READY' "$out" && return 0
        sleep 0.05
    done
    echo "node $2 not ready"; exit 1
}
stop_all() {
    for id in 3 2 1 0; do
        local pid=${PIDS[$id]:-}
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        unset "PIDS[$id]"
    done
}
cleanup() { stop_all; rm -rf "$DATA"; }
trap cleanup EXIT

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(round(statistics.median(v),1), round(min(v),1), round(max(v),1))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# Each run writes a GB per replica: its topic goes once measured, so the disk does not fill.
drop_topic() { "$KEEL" topic delete "$2" --bootstrap-server "$1" >/dev/null 2>&1 || true; }

compare() { # compare LABEL BOOT RF
    local label=$1 boot=$2 rf=$3
    for parts in $PARTITIONS; do
        local i=() n=() i99=() n99=() j
        for rep in $(seq 1 "$REPS"); do
            j="$(timeout 300 "$KEEL" bench produce --bootstrap-server "$boot" --topic "id-$parts-$rep" --partitions "$parts" --replication-factor "$rf" --records "$RECORDS" --acks all --json)"
            echo "$label idempotent $j" >>"$OUT/raw.txt"
            drop_topic "$boot" "id-$parts-$rep"
            i+=("$(field "$j" mb_per_sec)"); i99+=("$(field "$j" latency_p99_ms)")
            j="$(timeout 300 "$KEEL" bench produce --bootstrap-server "$boot" --topic "no-$parts-$rep" --partitions "$parts" --replication-factor "$rf" --records "$RECORDS" --acks all --no-idempotence --json)"
            echo "$label plain $j" >>"$OUT/raw.txt"
            drop_topic "$boot" "no-$parts-$rep"
            n+=("$(field "$j" mb_per_sec)"); n99+=("$(field "$j" latency_p99_ms)")
        done
        read -r im imin imax <<<"$(median "${i[@]}")"
        read -r nm nmin nmax <<<"$(median "${n[@]}")"
        local ratio; ratio="$(python3 -c "print('%.3f' % ($im/$nm))")"
        echo "| $label, $parts partition(s) | $im ($imin-$imax) | $nm ($nmin-$nmax) | $ratio | $(median "${i99[@]}" | cut -d' ' -f1) / $(median "${n99[@]}" | cut -d' ' -f1) |" | tee -a "$OUT/keel-bench.md"
    done
}

single() {
    start_node single 1
    compare "1 node" "127.0.0.1:$((BASE_PORT + 1))" 1
    [[ " ${STEPS[*]} " = *" kit "* ]] && kit "keel 1 node" "127.0.0.1:$((BASE_PORT + 1))" 1
    stop_all
}

cluster() {
    for id in 0 1 2 3; do start_node cluster $id; done
    local boot="127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2)),127.0.0.1:$((BASE_PORT + 3))"
    compare "3 brokers RF=3" "$boot" 3
    [[ " ${STEPS[*]} " = *" kit "* ]] && kit "keel 3 brokers RF=3" "$boot" 3
    stop_all
}

kit() { # kit LABEL BOOT RF: librdkafka through the peer kit, idempotent and not
    local label=$1 boot=$2 rf=$3
    (cd "$KIT" && SKIP_INSTALL=1 KAFKA_ACKS=all KAFKA_PARTITIONS="$PARTITIONS" KAFKA_RF="$rf" \
        KAFKA_BROKERS="$boot" KAFKA_LABEL="$label idempotent" KAFKA_PRODUCER_X="enable.idempotence=true" \
        RESULTS_DIR="$OUT/kit-$rf-idem" ./run.sh kafka >"$OUT/kit-$rf-idem.log" 2>&1 || true)
    (cd "$KIT" && SKIP_INSTALL=1 KAFKA_ACKS=all KAFKA_PARTITIONS="$PARTITIONS" KAFKA_RF="$rf" \
        KAFKA_BROKERS="$boot" KAFKA_LABEL="$label plain" \
        RESULTS_DIR="$OUT/kit-$rf-plain" ./run.sh kafka >"$OUT/kit-$rf-plain.log" 2>&1 || true)
}

echo "| Config | idempotent MB/s (min-max) | --no-idempotence MB/s (min-max) | ratio | ack p99 ms (idem / plain) |" | tee "$OUT/keel-bench.md"
echo "|---|---:|---:|---:|---:|" | tee -a "$OUT/keel-bench.md"
for s in "${STEPS[@]}"; do
    case "$s" in
        single|cluster) "$s" ;;
        kit) ;;
        *) echo "unknown step $s"; exit 2 ;;
    esac
done
echo "results in $OUT"
