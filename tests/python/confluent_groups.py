#!/usr/bin/env python3
"""Consumer groups through confluent-kafka (librdkafka), as an application uses them.

Three consumers subscribe to one topic in one group (range assignor, explicit commits).
Once their assignments settle (disjoint, covering every partition) N records are produced
and each consumer reads and commits what it is given. Then the script checks, through the
AdminClient, the committed offsets, the group listing and description, the group going
Empty when the consumers close, and its deletion.

Prints one JSON object with what it saw; exit 0 when every check passed, 1 otherwise."""

import argparse
import json
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--count", type=int, default=600)
    p.add_argument("--timeout", type=float, default=60)
    return p.parse_args()


class Member(threading.Thread):
    """One consumer of the group, polling until told to stop."""

    def __init__(self, args, name):
        super().__init__(daemon=True)
        self.name = name
        self.assigned = []
        self.records = []
        self.errors = []
        self.stop = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "range",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500,
        })
        self.consumer.subscribe([args.topic], on_assign=self.on_assign,
                                on_revoke=self.on_revoke)

    def on_assign(self, consumer, partitions):
        self.assigned = sorted(p.partition for p in partitions)

    def on_revoke(self, consumer, partitions):
        self.assigned = []

    def run(self):
        while not self.stop.is_set():
            msg = self.consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                self.errors.append(str(msg.error()))
                continue
            self.records.append((msg.partition(), msg.offset(), msg.value().decode()))
            try:
                self.consumer.commit(message=msg, asynchronous=False)
            except KafkaException as e:
                self.errors.append("commit: %s" % e)

    def close(self):
        self.stop.set()
        self.join(10)
        self.consumer.close()


def wait_for(what, cond, timeout, problems):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    problems.append("timed out waiting for " + what)
    return False


def main():
    args = parse_args()
    out = {"problems": []}
    problems = out["problems"]
    admin = AdminClient({"bootstrap.servers": args.bootstrap})

    started = time.monotonic()
    members = [Member(args, "member-%d" % i) for i in range(3)]
    for m in members:
        m.start()

    def settled():
        got = sorted(p for m in members for p in m.assigned)
        return got == list(range(args.partitions)) and all(m.assigned for m in members)

    wait_for("disjoint assignments covering every partition", settled, args.timeout, problems)
    out["assignments"] = {m.name: m.assigned for m in members}
    out["assign_seconds"] = round(time.monotonic() - started, 2)

    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all"})
    for i in range(args.count):
        producer.produce(args.topic, value=("v-%d" % i).encode(), partition=i % args.partitions)
        producer.poll(0)
    if producer.flush(args.timeout):
        problems.append("records not delivered")

    wait_for("every record consumed",
             lambda: sum(len(m.records) for m in members) >= args.count, args.timeout, problems)
    time.sleep(1)  # anything consumed twice would show now
    values = [v for m in members for (_, _, v) in m.records]
    out["consumed"] = len(values)
    out["distinct"] = len(set(values))
    if sorted(values) != sorted("v-%d" % i for i in range(args.count)):
        problems.append("consumed %d records (%d distinct), expected each of %d once"
                        % (len(values), len(set(values)), args.count))
    for m in members:
        problems.extend("%s: %s" % (m.name, e) for e in m.errors)
        for (p, _, _) in m.records:
            if p not in m.assigned:
                problems.append("%s read partition %d it was not assigned" % (m.name, p))

    # Committed offsets, read back through the admin API: each partition's end.
    per_partition = args.count // args.partitions
    req = [TopicPartition(args.topic, p) for p in range(args.partitions)]
    from confluent_kafka import ConsumerGroupTopicPartitions
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(args.group, req)])
    committed = {tp.partition: tp.offset for tp in res[args.group].result(10).topic_partitions}
    out["committed"] = committed
    if committed != {p: per_partition for p in range(args.partitions)}:
        problems.append("committed offsets %s, expected %d each" % (committed, per_partition))

    listed = admin.list_consumer_groups().result(10)
    out["listed"] = sorted(g.group_id for g in listed.valid)
    if args.group not in out["listed"]:
        problems.append("list_consumer_groups does not show the group")
    desc = admin.describe_consumer_groups([args.group])[args.group].result(10)
    out["state"] = str(desc.state)
    out["members"] = sorted(m.client_id for m in desc.members)
    described = sorted(tp.partition for m in desc.members
                       for tp in (m.assignment.topic_partitions if m.assignment else []))
    if out["members"] != ["member-0", "member-1", "member-2"]:
        problems.append("described members %s" % out["members"])
    if described != list(range(args.partitions)):
        problems.append("described assignments cover %s" % described)

    for m in members:
        m.close()
    desc = admin.describe_consumer_groups([args.group])[args.group].result(10)
    out["state_after_close"] = str(desc.state)
    if "EMPTY" not in out["state_after_close"].upper():
        problems.append("group state after the consumers closed: %s" % desc.state)

    admin.delete_consumer_groups([args.group])[args.group].result(10)
    listed = admin.list_consumer_groups().result(10)
    if args.group in [g.group_id for g in listed.valid]:
        problems.append("the group is still listed after its deletion")

    print(json.dumps(out, sort_keys=True))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
