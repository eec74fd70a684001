#!/usr/bin/env bash
# Cluster benchmarks for BENCHMARKS.md: a controller and three brokers on 127.0.0.1
# (release build, log.flush.policy=always, min.insync.replicas=2), `keel bench` with
# RF=3 and acks=all (as fast as it goes, then paced at half that rate for ack latency),
# and the catch-up rate of a broker restarted 1 GiB behind.
#
#   scripts/bench-cluster.sh [throughput] [latency] [catchup]    (default: all three)
#
# Knobs: REPS=3 RECORDS=500000 CATCHUP_MIB=1024 BASE_PORT=19500 OUT=bench-results/<stamp>
# Every process this script starts it stops by PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS="${REPS:-3}"
RECORDS="${RECORDS:-500000}"
CATCHUP_MIB="${CATCHUP_MIB:-1024}"
BASE_PORT="${BASE_PORT:-19500}"
OUT="${OUT:-bench-results/cluster-$(date +%Y%m%d-%H%M%S)}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(throughput latency catchup)

mkdir -p "$OUT"
cargo build --release -q -p keel
KEEL="$PWD/target/release/keel"
DATA="$(mktemp -d)"
CONTROLLER="127.0.0.1:$BASE_PORT"
declare -A PIDS=()

node_args() { # node_args ID
    local id=$1
    if [ "$id" = 0 ]; then
        echo "broker --node-id 0 --data-dir $DATA/node-0 --metrics-listener none --set process.roles=controller --set controller.listener=$CONTROLLER --set min.insync.replicas=2"
    else
        echo "broker --node-id $id --data-dir $DATA/node-$id --listeners 127.0.0.1:$((BASE_PORT + id)) --metrics-listener 127.0.0.1:$((BASE_PORT + 10 + id)) --set process.roles=broker --set controller.quorum.voters=0@$CONTROLLER --set min.insync.replicas=2"
    fi
}
start_node() { # start_node ID
    local id=$1 out="$OUT/node-$1.out"
    : >"$out"
    # shellcheck disable=SC2046
    "$KEEL" $(node_args "$id") >"$out" 2>>"$OUT/node-$id.log" &
    PIDS[$id]=$!
    for _ in $(seq 1 600); do
        grep -q '^KEEL_READY' "$out" && return 0
        sleep 0.05
    done
    echo "node $id not ready"; exit 1
}
stop_node() { # stop_node ID
    local pid=${PIDS[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$1]"
}
cleanup() { for id in 3 2 1 0; do stop_node $id; done; rm -rf "$DATA"; }
trap cleanup EXIT

for id in 0 1 2 3; do start_node $id; done
BOOT="127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2)),127.0.0.1:$((BASE_PORT + 3))"
for _ in $(seq 1 100); do
    [ "$("$KEEL" cluster status --bootstrap-server "$BOOT" 2>/dev/null | grep -cE '^[123] +127')" = 3 ] && break
    sleep 0.1
done

# Each run's topic goes once measured: 3 replicas of every run would fill the disk.
# The next run starts once the brokers have removed the files (unlinking gigabytes competes
# with the next run's fsyncs).
drop_topic() {
    "$KEEL" topic delete "$1" --bootstrap-server "$BOOT" >/dev/null 2>&1 || true
    for _ in $(seq 1 600); do
        compgen -G "$DATA/node-*/$1-*" >/dev/null || return 0
        sleep 0.1
    done
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(round(statistics.median(v),1), round(min(v),1), round(max(v),1))' "$@"; }
leo_of() { # leo_of NODE TOPIC
    curl -s "http://127.0.0.1:$((BASE_PORT + 10 + $1))/metrics" \
        | sed -n "s/^keel_partition_log_end_offset{topic=\"$2\",partition=\"0\"} //p"
}

throughput() {
    echo "| Config | Produce MB/s (min-max) | records/s | ack p50 ms | p99 ms | p999 ms |" | tee "$OUT/throughput.md"
    echo "|---|---:|---:|---:|---:|---:|" | tee -a "$OUT/throughput.md"
    for parts in 1 8; do
        local mb=() rs=() p50=() p99=() p999=()
        for rep in $(seq 1 "$REPS"); do
            local j
            j="$(timeout 300 "$KEEL" bench produce --bootstrap-server "$BOOT" --topic "kc-p$parts-r$rep-$$" \
                --partitions "$parts" --replication-factor 3 --records "$RECORDS" --acks all --json)"
            echo "$j" >>"$OUT/raw.jsonl"
            drop_topic "kc-p$parts-r$rep-$$"
            mb+=("$(field "$j" mb_per_sec)"); rs+=("$(field "$j" records_per_sec)")
            p50+=("$(field "$j" latency_p50_ms)"); p99+=("$(field "$j" latency_p99_ms)"); p999+=("$(field "$j" latency_p999_ms)")
        done
        read -r m lo hi <<<"$(median "${mb[@]}")"
        echo "| RF=3 acks=all, $parts partition(s) | $m ($lo-$hi) | $(median "${rs[@]}" | cut -d' ' -f1) | $(median "${p50[@]}" | cut -d' ' -f1) | $(median "${p99[@]}" | cut -d' ' -f1) | $(median "${p999[@]}" | cut -d' ' -f1) |" | tee -a "$OUT/throughput.md"
    done
}

# Ack latency at half the maximum rate: one unpaced run finds the maximum, then paced runs
# at half of it with linger 1 ms (latency from each record's due time, so stalls are not
# hidden; the first 2 s, connecting and first metadata lookups, are left out of the
# percentiles). RATES="r1 r2 ..." adds paced runs at those records/s on one partition.
latency() {
    local parts
    echo "| Config | records/s achieved | ack p50 ms (min max) | p99 ms (min max) | p999 ms (min max) |" | tee "$OUT/latency.md"
    echo "|---|---:|---:|---:|---:|" | tee -a "$OUT/latency.md"
    for parts in 1 8; do
        local j max half p50=() p99=() p999=() rs=()
        j="$(timeout 300 "$KEEL" bench produce --bootstrap-server "$BOOT" --topic "kl-max-p$parts-$$" \
            --partitions "$parts" --replication-factor 3 --records "$RECORDS" --acks all --json)"
        echo "$j" >>"$OUT/raw.jsonl"
        drop_topic "kl-max-p$parts-$$"
        max="$(field "$j" records_per_sec)"
        half="$(python3 -c "print(int(float('$max') / 2))")"
        for rep in $(seq 1 "$REPS"); do
            j="$(timeout 300 "$KEEL" bench produce --bootstrap-server "$BOOT" --topic "kl-p$parts-r$rep-$$" \
                --partitions "$parts" --replication-factor 3 --records "$((half * 20))" --duration-s 20 \
                --rate "$half" --linger-ms 1 --warmup-s 2 --acks all --json)"
            echo "$j" >>"$OUT/raw.jsonl"
            drop_topic "kl-p$parts-r$rep-$$"
            rs+=("$(field "$j" records_per_sec)")
            p50+=("$(field "$j" latency_p50_ms)"); p99+=("$(field "$j" latency_p99_ms)"); p999+=("$(field "$j" latency_p999_ms)")
        done
        echo "| RF=3 acks=all, $parts partition(s), max ${max%.*} rec/s, paced at $half | $(median "${rs[@]}" | cut -d' ' -f1) | $(median "${p50[@]}") | $(median "${p99[@]}") | $(median "${p999[@]}") |" | tee -a "$OUT/latency.md"
    done
    local rate
    for rate in ${RATES:-}; do
        j="$(timeout 300 "$KEEL" bench produce --bootstrap-server "$BOOT" --topic "kr-$rate-$$" \
            --partitions 1 --replication-factor 3 --records "$((rate * 20))" --duration-s 20 \
            --rate "$rate" --linger-ms 1 --warmup-s 2 --acks all --json)"
        echo "$j" >>"$OUT/raw.jsonl"
        drop_topic "kr-$rate-$$"
        echo "| RF=3 acks=all, 1 partition, paced at $rate | $(field "$j" records_per_sec | cut -d. -f1) | $(field "$j" latency_p50_ms) | $(field "$j" latency_p99_ms) | $(field "$j" latency_p999_ms) |" | tee -a "$OUT/latency.md"
    done
}

catchup() {
    "$KEEL" topic create catchup --partitions 1 --replication-factor 3 --bootstrap-server "$BOOT" >/dev/null
    sleep 1
    stop_node 3
    local records=$((CATCHUP_MIB * 1024))
    timeout 600 "$KEEL" bench produce --bootstrap-server "$BOOT" --topic catchup --records "$records" \
        --acks all --json >>"$OUT/raw.jsonl"
    # Every record is acknowledged (acks=all); the leader's gauge shows the log end once
    # its next refresh has run (every 100 ms here, so the catch-up time is that precise).
    local target=""
    for _ in $(seq 1 100); do
        target="$(leo_of 1 catchup)"
        [ "$target" = "$records" ] && break
        sleep 0.05
    done
    local t0 t1
    t0=$(date +%s.%N)
    start_node 3
    for _ in $(seq 1 1200); do
        [ "$(leo_of 3 catchup)" = "$target" ] && break
        sleep 0.05
    done
    t1=$(date +%s.%N)
    [ "$(leo_of 3 catchup)" = "$target" ] || { echo "broker 3 did not catch up to $target"; return 1; }
    python3 - "$t0" "$t1" "$records" "$target" <<'PY' | tee "$OUT/catchup.txt"
import sys
t0, t1, records, target = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
secs = t1 - t0
mb = records * 1024 / 1e6
print(f"restarted broker caught up {target} records ({mb:.0f} MB of payload) in {secs:.2f} s "
      f"(from process start, incl. registration and polling at 50 ms): {mb / secs:.0f} MB/s")
PY
}

for s in "${STEPS[@]}"; do "$s"; done
echo "results in $OUT"
