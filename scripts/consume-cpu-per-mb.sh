#!/usr/bin/env bash
# Benchmark (not CI): the broker's CPU per consumed megabyte, one partition against many.
# One node; the same records (1 KiB each) written to a 1-partition topic and to a topic of
# PARTITIONS partitions, in batches of the same size (16 KiB: a long linger fills them in
# both), then read back with `keel bench consume` (which fetches in a fetch
# session), RUNS times each, interleaved. Prints, per read, the CPU milliseconds per 10^6
# bytes consumed of the broker (user + system from /proc/PID/stat, which keeps the time of
# threads that have exited, such as idle blocking-pool threads) and of the consumer (user +
# system, GNU time), and the medians. The host's TCP congestion control is printed too: with
# bbr, the kernel paces large loopback answers and the broker pays for it (BENCHMARKS.md).
#
#   scripts/consume-cpu-per-mb.sh [PARTITIONS] [RECORDS] [RUNS] [--set KEY=VALUE ...]
#
# Extra arguments go to the broker, e.g. `--set max.incremental.fetch.session.cache.slots=0`
# for sessionless fetches. Needs a release build (cargo build --release -p keel).
set -euo pipefail
PARTS=${1:-1000}
RECORDS=${2:-1000000}
RUNS=${3:-3}
shift $(($# < 3 ? $# : 3))
KEEL=${KEEL:-$(dirname "$0")/../target/release/keel}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/keel-consume-cpu.XXXXXX")
BOOT=127.0.0.1:19392
PID=""
# shellcheck source=scripts/common.sh
. "$(dirname "$0")/common.sh"
cleanup() { stop_pid "$PID"; rm -rf "$DIR"; }
trap cleanup EXIT

"$KEEL" broker --listeners "$BOOT" --metrics-listener 127.0.0.1:19393 --data-dir "$DIR/data" \
    "$@" >"$DIR/out" 2>"$DIR/err" &
PID=$!
for _ in $(seq 100); do grep -q KEEL_READY "$DIR/out" && break; sleep 0.2; done
grep -q KEEL_READY "$DIR/out" || fail "the broker did not start: $(tail -5 "$DIR/err")"

for p in 1 "$PARTS"; do
    "$KEEL" bench produce --bootstrap-server "$BOOT" --topic "p$p" --partitions "$p" \
        --replication-factor 1 --records "$RECORDS" --acks 1 --batch-size 16384 \
        --linger-ms 200 --json >/dev/null \
        || fail "producing to p$p"
done

# Nanoseconds on CPU of the broker process, in clock ticks: with 10 ms ticks, read enough
# records (the default reads about 1 GB per pass) that a tick is noise.
TICK_NS=$((1000000000 / $(getconf CLK_TCK)))
cpu_ns() { awk -v t="$TICK_NS" '{printf "%.0f", ($14 + $15) * t}' /proc/"$PID"/stat; }
echo "TCP congestion control: $(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown)"
# One untimed read of each topic first: the node keeps only the newest log.cache.bytes of
# written pages, so the 1-partition topic, written first, would be read from disk once.
for p in 1 "$PARTS"; do
    "$KEEL" bench consume --bootstrap-server "$BOOT" --topic "p$p" --records "$RECORDS" \
        --json >/dev/null || fail "warming p$p"
done
declare -A broker client both
for run in $(seq "$RUNS"); do
    for p in 1 "$PARTS"; do
        before=$(cpu_ns)
        out=$(/usr/bin/time -f "TIME %U %S" -o "$DIR/time" "$KEEL" bench consume \
            --bootstrap-server "$BOOT" --topic "p$p" --records "$RECORDS" --json) \
            || fail "consuming p$p"
        after=$(cpu_ns)
        bytes=$(echo "$out" | sed -E 's/.*"bytes":([0-9]+).*/\1/')
        mbs=$(echo "$out" | sed -E 's/.*"mb_per_sec":([0-9.]+).*/\1/')
        b=$(echo "scale=4; ($after - $before) / 1000000 / ($bytes / 1000000)" | bc)
        c=$(awk -v mb="$((bytes / 1000000))" '/^TIME/ {printf "%.4f", ($2 + $3) * 1000 / mb}' "$DIR/time")
        broker[$p]="${broker[$p]:-} $b"
        client[$p]="${client[$p]:-} $c"
        both[$p]="${both[$p]:-} $(echo "$b + $c" | bc)"
        printf 'run %d, %5d partition(s): %d bytes at %.0f MB/s; CPU ms per MB: broker %s, consumer %s\n' \
            "$run" "$p" "$bytes" "$mbs" "$b" "$c"
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
for who in broker client both; do
    declare -n m=$who
    m1=$(echo "${m[1]}" | median)
    mp=$(echo "${m[$PARTS]}" | median)
    echo "median $who CPU ms per MB: 1 partition $m1, $PARTS partitions $mp ($(echo "scale=1; $mp * 100 / $m1" | bc) % of 1 partition)"
done
