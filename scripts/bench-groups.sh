#!/usr/bin/env bash
# Consumer-group benchmarks for BENCHMARKS.md, Keel beside tansu (memory://) in one run:
# `keel bench commit` (OffsetCommit/s, one group, 100 partitions), `keel bench group`
# (forming and rebalances of 10 members), consume through a group against assign(); and the
# time a coordinator takes to load 10,000 groups after a restart.
#
#   scripts/bench-groups.sh [commit] [group] [consume] [load]     (default: all)
#
# Knobs: REPS=3 COMMITS=20000 TANSU=../shared/bench/bin/tansu KEEL_PORT=19492
#        TANSU_PORT=19493 RECORDS=200000 LOAD_GROUPS=10000 OUT=bench-results/<stamp>
# Everything runs on 127.0.0.1; every process this script starts it stops by PID.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS="${REPS:-3}"
COMMITS="${COMMITS:-20000}"
RECORDS="${RECORDS:-200000}"
LOAD_GROUPS="${LOAD_GROUPS:-10000}"
GROUP_TIMEOUT="${GROUP_TIMEOUT:-120}"
KEEL_PORT="${KEEL_PORT:-19492}"
TANSU_PORT="${TANSU_PORT:-19493}"
TANSU="${TANSU:-../shared/bench/bin/tansu}"
OUT="${OUT:-bench-results/groups-$(date +%Y%m%d-%H%M%S)}"
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(commit group consume load)

mkdir -p "$OUT"
cargo build --release -q -p keel
KEEL="$PWD/target/release/keel"
[ -x "$TANSU" ] || { echo "no tansu at $TANSU (../shared/bench/run.sh deps fetches it)"; exit 1; }
KEEL_BOOT="127.0.0.1:$KEEL_PORT"
TANSU_BOOT="127.0.0.1:$TANSU_PORT"
DATA="$(mktemp -d)"
KEEL_PID=""
TANSU_PID=""

start_keel() { # start_keel [extra args...]
    : >"$OUT/keel.out"
    "$KEEL" broker --data-dir "$DATA" --listeners "$KEEL_BOOT" --metrics-listener none \
        --set group.initial.rebalance.delay.ms=0 "$@" >"$OUT/keel.out" 2>>"$OUT/keel.err" &
    KEEL_PID=$!
    for _ in $(seq 1 600); do
        grep -q '^KEEL_READY' "$OUT/keel.out" 2>/dev/null && return 0
        kill -0 "$KEEL_PID" 2>/dev/null || { echo "keel exited"; tail "$OUT/keel.err"; exit 1; }
        sleep 0.05
    done
    echo "keel not ready after 30 s"; exit 1
}
stop_keel() {
    [ -n "$KEEL_PID" ] || return 0
    kill -TERM "$KEEL_PID" 2>/dev/null || true
    wait "$KEEL_PID" 2>/dev/null || true
    KEEL_PID=""
}
start_tansu() {
    "$TANSU" broker --listener-url "tcp://$TANSU_BOOT" --advertised-listener-url "tcp://$TANSU_BOOT" \
        --storage-engine memory://tansu/ >"$OUT/tansu.log" 2>&1 &
    TANSU_PID=$!
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$TANSU_PORT") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "tansu did not open its port"; exit 1
}
stop_tansu() {
    [ -n "$TANSU_PID" ] || return 0
    kill -TERM "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
    TANSU_PID=""
}
cleanup() { stop_keel; stop_tansu; rm -rf "$DATA"; }
trap cleanup EXIT

median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(round(statistics.median(v),1), round(min(v),1), round(max(v),1))' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

commit() {
    echo "| Broker | OffsetCommit/s (min-max) | partition offsets/s | p50 ms | p99 ms |" | tee "$OUT/commit.md"
    echo "|---|---:|---:|---:|---:|" | tee -a "$OUT/commit.md"
    local k=() kp=() k50=() k99=() t=() tp=() t50=() t99=() j
    for rep in $(seq 1 "$REPS"); do
        j="$(timeout 300 "$KEEL" bench commit --bootstrap-server "$KEEL_BOOT" --group "c$rep" --topic "c$rep" --commits "$COMMITS" --json)"
        echo "keel $j" >>"$OUT/raw.txt"
        k+=("$(field "$j" commits_per_sec)"); kp+=("$(field "$j" partition_offsets_per_sec)")
        k50+=("$(field "$j" latency_p50_ms)"); k99+=("$(field "$j" latency_p99_ms)")
        j="$(timeout 300 "$KEEL" bench commit --bootstrap-server "$TANSU_BOOT" --group "c$rep" --topic "c$rep" --commits "$COMMITS" --json)"
        echo "tansu $j" >>"$OUT/raw.txt"
        t+=("$(field "$j" commits_per_sec)"); tp+=("$(field "$j" partition_offsets_per_sec)")
        t50+=("$(field "$j" latency_p50_ms)"); t99+=("$(field "$j" latency_p99_ms)")
    done
    read -r km kmin kmax <<<"$(median "${k[@]}")"
    read -r tm tmin tmax <<<"$(median "${t[@]}")"
    echo "| Keel (fsynced) | $km ($kmin-$kmax) | $(median "${kp[@]}" | cut -d' ' -f1) | $(median "${k50[@]}" | cut -d' ' -f1) | $(median "${k99[@]}" | cut -d' ' -f1) |" | tee -a "$OUT/commit.md"
    echo "| tansu memory:// | $tm ($tmin-$tmax) | $(median "${tp[@]}" | cut -d' ' -f1) | $(median "${t50[@]}" | cut -d' ' -f1) | $(median "${t99[@]}" | cut -d' ' -f1) |" | tee -a "$OUT/commit.md"
    python3 -c "print('ratio Keel/tansu (medians): %.2fx' % ($km/$tm))" | tee -a "$OUT/commit.md"
}

group() {
    echo "| Broker | form ms (min-max) | rebalance after a leave ms | after a join ms |" | tee "$OUT/group.md"
    echo "|---|---:|---:|---:|" | tee -a "$OUT/group.md"
    for b in keel tansu; do
        local boot f=() l=() jn=() j
        boot="$KEEL_BOOT"; [ "$b" = tansu ] && boot="$TANSU_BOOT"
        for rep in $(seq 1 "$REPS"); do
            if ! j="$(timeout "$GROUP_TIMEOUT" "$KEEL" bench group --bootstrap-server "$boot" --group "g$rep" --topic "g$rep" --members 10 --partitions 20 --json)"; then
                echo "$b rep $rep: no result within $GROUP_TIMEOUT s" | tee -a "$OUT/raw.txt"
                continue
            fi
            echo "$b $j" >>"$OUT/raw.txt"
            f+=("$(field "$j" form_ms)"); l+=("$(field "$j" leave_rebalance_ms)"); jn+=("$(field "$j" join_rebalance_ms)")
        done
        if [ ${#f[@]} -eq 0 ]; then
            echo "| $b | no group formed within $GROUP_TIMEOUT s | | |" | tee -a "$OUT/group.md"
            continue
        fi
        read -r fm fmin fmax <<<"$(median "${f[@]}")"
        echo "| $b | $fm ($fmin-$fmax) | $(median "${l[@]}") | $(median "${jn[@]}") |" | tee -a "$OUT/group.md"
    done
}

consume() {
    echo "| Broker | assign() MB/s (min-max) | group MB/s (min-max) |" | tee "$OUT/consume.md"
    echo "|---|---:|---:|" | tee -a "$OUT/consume.md"
    for b in keel tansu; do
        local boot a=() g=() j
        boot="$KEEL_BOOT"; [ "$b" = tansu ] && boot="$TANSU_BOOT"
        timeout 300 "$KEEL" bench produce --bootstrap-server "$boot" --topic "cons" --partitions 4 --records "$RECORDS" --acks 1 --json >/dev/null
        for rep in $(seq 1 "$REPS"); do
            if ! j="$(timeout 300 "$KEEL" bench consume --bootstrap-server "$boot" --topic cons --records "$RECORDS" --json 2>>"$OUT/consume.err")"; then
                echo "$b rep $rep: assign() consume failed (consume.err)" | tee -a "$OUT/raw.txt"; continue
            fi
            echo "$b assign $j" >>"$OUT/raw.txt"; a+=("$(field "$j" mb_per_sec)")
            if ! j="$(timeout 300 "$KEEL" bench consume --bootstrap-server "$boot" --topic cons --records "$RECORDS" --group "cons-$rep" --json 2>>"$OUT/consume.err")"; then
                echo "$b rep $rep: group consume failed (consume.err)" | tee -a "$OUT/raw.txt"; continue
            fi
            echo "$b group $j" >>"$OUT/raw.txt"; g+=("$(field "$j" mb_per_sec)")
        done
        if [ ${#a[@]} -eq 0 ] || [ ${#g[@]} -eq 0 ]; then
            echo "| $b | failed (see consume.err) | |" | tee -a "$OUT/consume.md"
            continue
        fi
        read -r am amin amax <<<"$(median "${a[@]}")"
        read -r gm gmin gmax <<<"$(median "${g[@]}")"
        echo "| $b | $am ($amin-$amax) | $gm ($gmin-$gmax) |" | tee -a "$OUT/consume.md"
    done
}

load() {
    # One offsets partition holds every group; restart and time its load.
    stop_keel
    rm -rf "$DATA"; DATA="$(mktemp -d)"
    start_keel --set offsets.topic.num.partitions=1
    timeout 600 "$KEEL" bench commit --bootstrap-server "$KEEL_BOOT" --group load --topic load \
        --partitions 1 --groups "$LOAD_GROUPS" --commits "$((LOAD_GROUPS * 3))" --json >>"$OUT/raw.txt"
    local t=()
    for rep in $(seq 1 "$REPS"); do
        stop_keel
        : >"$OUT/keel.err"
        start_keel --set offsets.topic.num.partitions=1
        for _ in $(seq 1 600); do
            grep -q 'loaded groups' "$OUT/keel.err" && break
            sleep 0.05
        done
        local line; line="$(grep 'loaded groups' "$OUT/keel.err" | tail -1)"
        echo "$line" >>"$OUT/raw.txt"
        t+=("$(echo "$line" | sed -E 's/.*seconds=([0-9.e-]+).*/\1/')")
    done
    echo "load of $LOAD_GROUPS groups ($((LOAD_GROUPS * 3)) commit records): $(median "${t[@]}") s (median min max)" | tee "$OUT/load.md"
}

start_keel
start_tansu
for s in "${STEPS[@]}"; do "$s"; done
echo "results in $OUT"
