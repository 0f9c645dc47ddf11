"""confluent-kafka (librdkafka inside) against a real weir server: an idempotent producer
with every compression codec, admin operations, and a consumer group of several
processes that commits and rebalances as members leave and die."""

import json
import pathlib
import queue
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka import TIMESTAMP_CREATE_TIME
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

HERE = pathlib.Path(__file__).resolve().parent


def admin(weir):
    return AdminClient({"bootstrap.servers": weir.bootstrap})


def create_topic(weir, name, partitions, config=None):
    a = admin(weir)  # kept alive until the result is in
    futures = a.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
    )
    futures[name].result(timeout=30)


def read_all(weir, topic, partitions, expected, timeout_s=60):
    """Every record of the topic, read without a group from the beginning."""
    c = Consumer(
        {
            "bootstrap.servers": weir.bootstrap,
            "group.id": "reader-unused",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    deadline = time.time() + timeout_s
    while len(got) < expected and time.time() < deadline:
        msg = c.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got.append(msg)
    c.close()
    return got


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_idempotent_producer_with_compression_round_trips(weir, topic_name, compression):
    create_topic(weir, topic_name, 3)
    producer = Producer(
        {
            "bootstrap.servers": weir.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": compression,
            "linger.ms": 20,
        }
    )
    delivered, errors = [], []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.partition(), msg.offset()))

    base_ts = int(time.time() * 1000) - 60_000
    n = 3000
    for i in range(n):
        producer.produce(
            topic_name,
            key=f"k{i % 50}".encode(),
            value=f"{compression}-{i}".encode(),
            headers=[("n", str(i).encode()), ("codec", compression.encode())],
            timestamp=base_ts + i,
            on_delivery=on_delivery,
        )
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == []
    assert len(delivered) == n
    # Offsets per partition are exactly 0..count: nothing written twice, nothing lost.
    for p in range(3):
        offsets = sorted(o for (q, o) in delivered if q == p)
        assert offsets == list(range(len(offsets)))

    got = read_all(weir, topic_name, 3, n)
    assert len(got) == n
    seen = set()
    last_per_key = {}
    for msg in got:
        i = int(msg.value().decode().split("-")[1])
        assert i not in seen, "no duplicates"
        seen.add(i)
        assert msg.key() == f"k{i % 50}".encode()
        assert dict(msg.headers()) == {"n": str(i).encode(), "codec": compression.encode()}
        assert msg.timestamp() == (TIMESTAMP_CREATE_TIME, base_ts + i)
        # One key, one partition, in the order produced.
        assert last_per_key.get(msg.key(), -1) < i
        last_per_key[msg.key()] = i


def test_admin_create_describe_grow_delete(weir, topic_name):
    a = admin(weir)
    create_topic(weir, topic_name, 2, {"retention.ms": "3600000"})
    md = a.list_topics(timeout=10)
    assert topic_name in md.topics
    assert len(md.topics[topic_name].partitions) == 2
    res = ConfigResource(ConfigResource.Type.TOPIC, topic_name)
    configs = a.describe_configs([res])[res].result(timeout=10)
    assert configs["retention.ms"].value == "3600000"
    a.create_partitions([NewPartitions(topic_name, 4)])[topic_name].result(timeout=10)
    assert len(a.list_topics(topic_name, timeout=10).topics[topic_name].partitions) == 4
    with pytest.raises(Exception):
        a.create_topics([NewTopic(topic_name, 1, 1)])[topic_name].result(timeout=10)
    a.delete_topics([topic_name])[topic_name].result(timeout=10)
    assert topic_name not in a.list_topics(timeout=10).topics


class Member:
    """A group member process (group_member.py) and what it reported."""

    def __init__(self, weir, group, topic, name):
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "group_member.py"), weir.bootstrap, group, topic, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events = queue.Queue()
        self.assigned = None
        self.consumed = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.put(json.loads(line))

    def drain(self):
        while True:
            try:
                e = self.events.get_nowait()
            except queue.Empty:
                return
            if "assigned" in e:
                self.assigned = e["assigned"]
            elif "v" in e:
                self.consumed.append(e["v"])

    def stop(self):
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=30)

    def kill(self):
        self.proc.kill()
        self.proc.wait()


def produce(weir, topic, values):
    p = Producer({"bootstrap.servers": weir.bootstrap, "enable.idempotence": True})
    for v in values:
        p.produce(topic, key=v.encode(), value=v.encode())
    assert p.flush(30) == 0


def wait_for(members, until, what, timeout_s=60):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for m in members:
            m.drain()
        if until():
            return
        time.sleep(0.1)
    state = {m.name: (m.assigned, len(m.consumed)) for m in members}
    pytest.fail(f"timed out waiting for {what}: {state}")


def test_consumer_group_of_processes_commits_and_rebalances(weir, topic_name):
    partitions = 6
    create_topic(weir, topic_name, partitions)
    group = "group-" + topic_name
    first = [f"a{i}" for i in range(600)]
    produce(weir, topic_name, first)

    members = [Member(weir, group, topic_name, f"m{i}") for i in range(3)]
    try:
        def consumed():
            return {v for m in members for v in m.consumed}

        # Three members share six partitions, two each, and consume everything.
        wait_for(
            members,
            lambda: sorted(p for m in members for p in (m.assigned or [])) == list(range(partitions))
            and all(len(m.assigned or []) == 2 for m in members)
            and set(first) <= consumed(),
            "three members sharing the partitions and consuming the first batch",
        )

        # A member leaves cleanly: the other two take over its partitions.
        members[0].stop()
        live = members[1:]
        second = [f"b{i}" for i in range(300)]
        produce(weir, topic_name, second)
        wait_for(
            live,
            lambda: sorted(p for m in live for p in (m.assigned or [])) == list(range(partitions))
            and set(second) <= consumed(),
            "two members after a clean leave",
        )

        # A member dies without leaving: its session expires and the last one takes all.
        members[1].kill()
        last = members[2:]
        third = [f"c{i}" for i in range(60)]
        produce(weir, topic_name, third)
        wait_for(
            last,
            lambda: last[0].assigned == list(range(partitions)) and set(third) <= consumed(),
            "the last member after a crash",
        )
    finally:
        for m in members:
            if m.proc.poll() is None:
                m.kill()

    # Every record was consumed, and the group's commits reach the end of every partition.
    c = Consumer({"bootstrap.servers": weir.bootstrap, "group.id": group})
    tps = [TopicPartition(topic_name, p) for p in range(partitions)]
    committed = c.committed(tps, timeout=10)
    ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
    c.close()
    assert sum(ends) == len(first) + len(second) + len(third)
    assert [tp.offset for tp in committed] == ends
