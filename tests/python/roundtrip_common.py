"""Shared parts of the Python client round trips: arguments, the records, the comparison.

Each script produces N keyed records with headers, reads every partition back from the
beginning (assign + seek, no consumer group) and exits 0 only if keys, values and headers
come back byte-identical, each exactly once, in produce order within each partition.
"""

import argparse
import random
import sys


def parse_args(description, compressions):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT of a broker")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--compression", default="none", choices=compressions)
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds for each phase")
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args()


def make_records(count, seed, topic):
    """(key, value, headers) triples: unique keys, binary values of 0..300 bytes."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        key = ("%s-%06d" % (topic, i)).encode()
        n = rng.randrange(0, 301)
        value = bytes(rng.randrange(0, 256) for _ in range(n))
        headers = [("seq", str(i).encode()), ("bin", bytes([i % 256, 0, 255]))]
        out.append((key, value, headers))
    return out


def check(expected, consumed):
    """consumed: list of (partition, offset, key, value, headers) in arrival order.

    Returns a list of problems (empty when everything matches)."""
    problems = []
    want = {k: (v, h) for k, v, h in expected}
    order = {k: i for i, (k, _, _) in enumerate(expected)}
    seen = {}
    last = {}
    for partition, offset, key, value, headers in consumed:
        if key in seen:
            problems.append("key %r consumed twice (offsets %s and %s)" % (key, seen[key], offset))
            continue
        seen[key] = offset
        if key not in want:
            problems.append("unexpected key %r at %s/%s" % (key, partition, offset))
            continue
        v, h = want[key]
        if value != v:
            problems.append("key %r: value %r, expected %r" % (key, value, v))
        if list(headers) != list(h):
            problems.append("key %r: headers %r, expected %r" % (key, headers, h))
        prev = last.get(partition)
        if prev is not None:
            if offset <= prev[0]:
                problems.append("partition %s: offset %s after %s" % (partition, offset, prev[0]))
            if order[key] < prev[1]:
                problems.append("partition %s: key %r out of produce order" % (partition, key))
        last[partition] = (offset, order[key])
        if len(problems) > 20:
            break
    missing = [k for k in want if k not in seen]
    if missing:
        problems.append("%d of %d keys never consumed, e.g. %r" % (len(missing), len(want), missing[:3]))
    return problems


def finish(client, args, produced, consumed, problems):
    if problems:
        print("MISMATCH %s topic=%s compression=%s produced=%d consumed=%d" % (
            client, args.topic, args.compression, produced, len(consumed)))
        for p in problems[:20]:
            print("  " + p)
        sys.exit(1)
    print("OK %s topic=%s compression=%s produced=%d consumed=%d" % (
        client, args.topic, args.compression, produced, len(consumed)))
    sys.exit(0)
