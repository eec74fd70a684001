#!/usr/bin/env python3
"""Round trip through kafka-python (pure Python client): produce N keyed records with
headers with the producer's defaults (idempotent since kafka-python 3), consume them back
with assign() + seek_to_beginning() and no consumer group, compare byte for byte.

Exit 0 when everything matches, 1 with the mismatches printed otherwise."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kafka  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from roundtrip_common import check, finish, make_records, parse_args  # noqa: E402


def api_version():
    """KEEL_KAFKA_PYTHON_API_VERSION=2.5 pins the version; unset lets it probe."""
    v = os.environ.get("KEEL_KAFKA_PYTHON_API_VERSION")
    return tuple(int(x) for x in v.split(".")) if v else None


def produce(args, records):
    producer = KafkaProducer(
        bootstrap_servers=args.bootstrap,
        compression_type=None if args.compression == "none" else args.compression,
        linger_ms=5,
        api_version=api_version(),
        request_timeout_ms=int(args.timeout * 1000),
    )
    errors = []
    futures = [producer.send(args.topic, key=k, value=v, headers=h) for k, v, h in records]
    producer.flush(timeout=args.timeout)
    for (key, _, _), f in zip(records, futures):
        try:
            f.get(timeout=1)
        except Exception as e:  # noqa: BLE001 - any failure is a finding
            errors.append("delivery of %r failed: %r" % (key, e))
            if len(errors) > 20:
                break
    producer.close(timeout=10)
    return errors


def consume(args, count):
    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        api_version=api_version(),
        request_timeout_ms=int(args.timeout * 1000),
    )
    consumed = []
    try:
        deadline = time.monotonic() + args.timeout
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(args.topic)
            if partitions is None:
                time.sleep(0.1)
        if not partitions:
            raise SystemExit("no partitions for %s" % args.topic)
        tps = [TopicPartition(args.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while len(consumed) < count and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=1000, max_records=2000)
            for tp, msgs in batch.items():
                for m in msgs:
                    consumed.append((tp.partition, m.offset, m.key, m.value or b"",
                                     list(m.headers or [])))
    finally:
        consumer.close()
    return consumed


def main():
    args = parse_args(__doc__, ["none", "gzip", "snappy", "lz4", "zstd"])
    client = "kafka-python %s" % kafka.__version__
    records = make_records(args.count, args.seed, args.topic)
    errors = produce(args, records)
    if errors:
        finish(client, args, len(records), [], errors)
    consumed = consume(args, len(records))
    finish(client, args, len(records), consumed, check(records, consumed))


if __name__ == "__main__":
    main()
