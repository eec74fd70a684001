#!/usr/bin/env bash
# Single-node benchmarks for BENCHMARKS.md: `keel bench` produce/consume on one broker,
# whole-process memory, and recovery time of a large log after kill -9.
#
#   scripts/bench-single-node.sh [throughput] [recovery]     (default: both)
#
# Knobs: REPS=3 RECORDS=200000 SIZE=1024 PORT=19392 RECOVERY_MIB=2048 OUT=bench-results/<stamp>
# Everything runs on 127.0.0.1; every process this script starts it stops by PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS="${REPS:-3}"
RECORDS="${RECORDS:-200000}"
SIZE="${SIZE:-1024}"
PORT="${PORT:-19392}"
RECOVERY_MIB="${RECOVERY_MIB:-2048}"
OUT="${OUT:-bench-results/$(date +%Y%m%d-%H%M%S)}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(throughput recovery)

mkdir -p "$OUT"
cargo build --release -q -p keel
KEEL="$PWD/target/release/keel"
BOOT="127.0.0.1:$PORT"
DATA="$(mktemp -d)"
BROKER_PID=""

start_broker() { # start_broker [extra args...]
    "$KEEL" broker --data-dir "$DATA" --listeners "$BOOT" --metrics-listener none "$@" \
        >"$OUT/broker.out" 2>>"$OUT/broker.err" &
    BROKER_PID=$!
    for _ in $(seq 1 600); do
        grep -q '^KEEL_READY' "$OUT/broker.out" 2>/dev/null && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || { echo "broker exited"; tail "$OUT/broker.err"; exit 1; }
        sleep 0.05
    done
    echo "broker not ready after 30 s"; exit 1
}
stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}
cleanup() { stop_broker; rm -rf "$DATA"; }
trap cleanup EXIT

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(round(statistics.median(v),1), round(min(v),1), round(max(v),1))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

throughput() {
    start_broker
    echo "| Config | Produce MB/s (min-max) | records/s | ack p50 ms | p99 ms | p999 ms | Consume MB/s (min-max) |" | tee "$OUT/throughput.md"
    echo "|---|---:|---:|---:|---:|---:|---:|" | tee -a "$OUT/throughput.md"
    for parts in 1 8; do
        for acks in 1 all; do
            local pm=() pr=() p50=() p99=() p999=() cm=()
            for rep in $(seq 1 "$REPS"); do
                local topic="kb-p$parts-a$acks-r$rep-$$"
                local j
                j="$(timeout 300 "$KEEL" bench produce --bootstrap-server "$BOOT" --topic "$topic" \
                    --partitions "$parts" --records "$RECORDS" --record-size "$SIZE" --acks "$acks" --json)"
                echo "$j" >>"$OUT/raw.jsonl"
                pm+=("$(field "$j" mb_per_sec)"); pr+=("$(field "$j" records_per_sec)")
                p50+=("$(field "$j" latency_p50_ms)"); p99+=("$(field "$j" latency_p99_ms)"); p999+=("$(field "$j" latency_p999_ms)")
                j="$(timeout 300 "$KEEL" bench consume --bootstrap-server "$BOOT" --topic "$topic" --records "$RECORDS" --json)"
                echo "$j" >>"$OUT/raw.jsonl"
                cm+=("$(field "$j" mb_per_sec)")
            done
            read -r pmed pmin pmax <<<"$(median "${pm[@]}")"
            read -r cmed cmin cmax <<<"$(median "${cm[@]}")"
            echo "| acks=$acks, $parts partition(s) | $pmed ($pmin-$pmax) | $(median "${pr[@]}" | cut -d' ' -f1) | $(median "${p50[@]}" | cut -d' ' -f1) | $(median "${p99[@]}" | cut -d' ' -f1) | $(median "${p999[@]}" | cut -d' ' -f1) | $cmed ($cmin-$cmax) |" | tee -a "$OUT/throughput.md"
        done
    done
    local hwm anon
    hwm="$(awk '/VmHWM/ {print $2}' "/proc/$BROKER_PID/status")"
    anon="$(awk '/RssAnon/ {print $2}' "/proc/$BROKER_PID/status")"
    echo "broker peak RSS (VmHWM, includes mapped segment pages): $((hwm / 1024)) MiB; anonymous RSS at the end: $((anon / 1024)) MiB" | tee "$OUT/memory.txt"
    stop_broker
}

recovery() {
    rm -rf "$DATA"; mkdir -p "$DATA"
    start_broker
    local records=$((RECOVERY_MIB * 1024))   # 1 KiB records
    timeout 600 "$KEEL" bench produce --bootstrap-server "$BOOT" --topic recovery --partitions 1 \
        --records "$records" --record-size 1024 --acks 1 --json >>"$OUT/raw.jsonl"
    echo "log size before kill: $(du -sh "$DATA/recovery-0" | cut -f1)" | tee "$OUT/recovery.txt"
    kill -KILL "$BROKER_PID"; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""
    : >"$OUT/broker.out"
    local t0 t1
    t0=$(date +%s.%N)
    start_broker
    t1=$(date +%s.%N)
    echo "restart after kill -9 until ready: $(python3 -c "print(round(($t1-$t0)*1000))") ms (includes process start and polling at 50 ms)" | tee -a "$OUT/recovery.txt"
    grep 'opened replica' "$OUT/broker.err" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' | tee -a "$OUT/recovery.txt"
    stop_broker
}

for s in "${STEPS[@]}"; do "$s"; done
echo "results in $OUT"
