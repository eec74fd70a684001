#!/usr/bin/env python3
"""Round trip through confluent-kafka (librdkafka): produce N keyed records with headers
with enable.idempotence=true, consume them back with assign() from OFFSET_BEGINNING, compare
byte for byte.

Exit 0 when everything matches, 1 with the mismatches printed otherwise."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition  # noqa: E402
import confluent_kafka  # noqa: E402

from roundtrip_common import check, finish, make_records, parse_args  # noqa: E402


def produce(args, records):
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "compression.type": args.compression,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(args.timeout * 1000),
        "enable.idempotence": True,
    })
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append("delivery of %r failed: %s" % (msg.key(), err))

    deadline = time.monotonic() + args.timeout
    for key, value, headers in records:
        for _ in range(10000):
            try:
                producer.produce(args.topic, value=value, key=key, headers=headers,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                if time.monotonic() > deadline:
                    errors.append("producer queue stayed full")
                    return errors
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(max(1.0, deadline - time.monotonic()))
    if left:
        errors.append("%d records not delivered within %ss" % (left, args.timeout))
    return errors


def consume(args, count):
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        # Required by the config, unused: partitions are assigned, never subscribed,
        # and nothing is committed (Keel has no group coordinator yet).
        "group.id": "keel-tests-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
    })
    consumed = []
    try:
        md = consumer.list_topics(args.topic, timeout=args.timeout)
        topic = md.topics.get(args.topic)
        if topic is None or topic.error is not None:
            raise SystemExit("metadata for %s: %s" % (args.topic, topic and topic.error))
        partitions = sorted(topic.partitions)
        consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + args.timeout
        while len(consumed) < count and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=1000, timeout=1.0):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise SystemExit("consume error: %s" % m.error())
                consumed.append((m.partition(), m.offset(), m.key(), m.value() or b"",
                                 m.headers() or []))
    finally:
        consumer.close()
    return consumed


def main():
    args = parse_args(__doc__, ["none", "gzip", "snappy", "lz4", "zstd"])
    client = "confluent-kafka %s (librdkafka %s)" % (confluent_kafka.__version__,
                                                     confluent_kafka.libversion()[0])
    records = make_records(args.count, args.seed, args.topic)
    errors = produce(args, records)
    if errors:
        finish(client, args, len(records), [], errors)
    consumed = consume(args, len(records))
    finish(client, args, len(records), consumed, check(records, consumed))


if __name__ == "__main__":
    main()
