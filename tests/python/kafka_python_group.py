#!/usr/bin/env python3
"""A kafka-python group consumer (default settings: range assignor, auto-commit) reads a
topic to its end; its committed offsets then equal each partition's end. Prints a JSON
summary; exit 0 when every check passed."""

import argparse
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()

    consumer = KafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap.split(","),
        group_id=args.group,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(args.timeout * 1000),
    )
    values = []
    deadline = time.monotonic() + args.timeout
    for msg in consumer:
        values.append(msg.value.decode())
        if len(values) >= args.count or time.monotonic() > deadline:
            break
    consumer.commit()
    parts = sorted(consumer.partitions_for_topic(args.topic) or [])
    tps = [TopicPartition(args.topic, p) for p in parts]
    ends = consumer.end_offsets(tps)
    committed = {tp.partition: consumer.committed(tp) for tp in tps}
    consumer.close()
    out = {
        "consumed": len(values),
        "distinct": len(set(values)),
        "committed": committed,
        "ends": {tp.partition: ends[tp] for tp in tps},
        "problems": [],
    }
    if len(values) != args.count or len(set(values)) != args.count:
        out["problems"].append("read %d records (%d distinct), expected %d"
                               % (len(values), len(set(values)), args.count))
    if out["committed"] != out["ends"]:
        out["problems"].append("committed offsets are not the partition ends")
    print(json.dumps(out, sort_keys=True))
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
