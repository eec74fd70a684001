# Shared by the benchmark scripts (sourced, not run): a failure message, and stopping a
# process the script started, by its PID.

fail() { echo "FAIL: $*"; exit 1; }

# stop_pid PID: SIGTERM, then up to 60 s for the process to exit (a broker flushes and
# closes its logs first). Nothing to do for an empty PID or one already gone.
stop_pid() {
    if [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; then
        kill -TERM "$1"
        for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.2; done
    fi
}
