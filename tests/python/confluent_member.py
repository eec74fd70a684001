#!/usr/bin/env python3
"""One confluent-kafka group member, for tests that kill, restart and stop members.

Subscribes to a topic and polls until SIGTERM (clean close: a dynamic member leaves the
group) or SIGKILL. Prints one JSON line per event on stdout: its assignments and
revocations, and (with --commit) each offset commit the coordinator acknowledged."""

import argparse
import json
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaException


def emit(**event):
    event["t"] = round(time.time(), 3)
    print(json.dumps(event, sort_keys=True), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--instance-id")
    p.add_argument("--session-timeout-ms", type=int, default=6000)
    p.add_argument("--commit", action="store_true", help="commit each record, synchronously")
    p.add_argument("--max-records", type=int, default=0, help="exit after this many (0: never)")
    args = p.parse_args()

    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "client.id": args.name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": args.session_timeout_ms,
        "heartbeat.interval.ms": 500,
        "partition.assignment.strategy": "range",
    }
    if args.instance_id:
        conf["group.instance.id"] = args.instance_id
    consumer = Consumer(conf)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))

    def on_assign(c, parts):
        emit(event="assign", partitions=sorted(tp.partition for tp in parts))

    def on_revoke(c, parts):
        emit(event="revoke", partitions=sorted(tp.partition for tp in parts))

    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
    emit(event="started")
    seen = 0
    while not stop:
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            continue
        seen += 1
        emit(event="record", partition=msg.partition(), offset=msg.offset(),
             value=msg.value().decode())
        if args.commit:
            try:
                consumer.commit(message=msg, asynchronous=False)
                emit(event="committed", partition=msg.partition(), offset=msg.offset() + 1)
            except KafkaException as e:
                emit(event="commit_failed", error=str(e))
        if args.max_records and seen >= args.max_records:
            break
    consumer.close()
    emit(event="closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
