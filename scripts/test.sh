#!/usr/bin/env bash
# The README's test command: install what the suites drive (kcat, promtool, the Python Kafka
# clients), check that each works, then run `cargo test --workspace` (extra arguments go to
# it, e.g. `scripts/test.sh -p keel-broker`).
#
# Works on a fresh Debian/Ubuntu machine as root or with passwordless sudo. What is already
# installed (at the pinned versions) is not installed again, so a second run goes straight to
# the tests. A suite that needs a tool fails, never skips, when the tool is missing: this
# script makes sure it is there first.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PYTHONDONTWRITEBYTECODE=1
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - started))"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo -n)
fi

# Pinned: the versions the suites were written against.
py_packages=(
    confluent-kafka==2.16.1
    kafka-python==3.0.12
    lz4==4.4.5
    cramjam==2.14.0
    python-snappy==0.7.3
    zstandard==0.25.0
)

python_ready() {
    python3 - "${py_packages[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

step "system packages: kcat (librdkafka), promtool (prometheus)"
if command -v kcat >/dev/null && command -v promtool >/dev/null && command -v python3 >/dev/null \
    && python3 -m pip --version >/dev/null 2>&1; then
    echo "already installed"
else
    if [ "${#as_root[@]}" -gt 0 ] && ! command -v sudo >/dev/null; then
        die "not root and no sudo: cannot apt-get install kcat prometheus"
    fi
    "${as_root[@]}" apt-get update -q </dev/null
    # `prometheus` provides promtool, which checks and unit-tests ops/alerts.yml.
    "${as_root[@]}" apt-get install -y -q --no-install-recommends \
        kcat ca-certificates prometheus python3 python3-pip </dev/null
fi

step "python packages: confluent-kafka, kafka-python and the codecs kafka-python needs"
if python_ready; then
    echo "already installed"
elif ! python3 -m pip install -q "${py_packages[@]}" </dev/null; then
    # A Debian system python refuses pip installs (PEP 668); the suites are its only user here.
    python3 -m pip install -q --break-system-packages "${py_packages[@]}" </dev/null
fi

step "verify tools"
command -v kcat >/dev/null || die "kcat is not on PATH after apt-get install kcat"
command -v promtool >/dev/null || die "promtool is not on PATH after apt-get install prometheus"
echo "kcat: $(kcat -V 2>&1 | head -n 1) — $(kcat -V 2>&1 | grep -i librdkafka | head -n 1)"
echo "promtool: $(promtool --version 2>&1 | head -n 1)"
python3 - <<'PY' || die "a Python module the suites need does not import"
import sys
import confluent_kafka, kafka, kafka.codec as codec
import lz4, snappy, zstandard  # noqa: F401
print("python:", sys.version.split()[0], sys.executable)
print("confluent-kafka:", confluent_kafka.__version__, "librdkafka:", confluent_kafka.libversion()[0])
print("kafka-python:", kafka.__version__)
missing = [name for name, ok in [("gzip", codec.has_gzip()), ("snappy", codec.has_snappy()),
                                 ("lz4", codec.has_lz4()), ("zstd", codec.has_zstd())] if not ok]
if missing:
    sys.exit("kafka-python lacks codecs: %s" % ", ".join(missing))
PY
cargo --version

step "cargo test --workspace $*"
# Bounded: a hung test fails the run instead of holding the machine.
timeout --kill-after=30s 25m cargo test --workspace "$@"

step "done"
