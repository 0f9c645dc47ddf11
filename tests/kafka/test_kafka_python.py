"""kafka-python (pure Python) against a real weir server: admin (create, describe, grow,
delete topics), produce, consume, and a consumer group that commits."""

import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import TopicAlreadyExistsError


def test_admin_creates_describes_grows_and_deletes_topics(weir, topic_name):
    a = KafkaAdminClient(bootstrap_servers=weir.bootstrap)
    try:
        a.create_topics(
            [NewTopic(topic_name, num_partitions=3, replication_factor=1, topic_configs={"retention.ms": "7200000"})]
        )
        assert topic_name in a.list_topics()
        try:
            a.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)])
            raise AssertionError("a second create must fail")
        except TopicAlreadyExistsError:
            pass
        [resp] = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)])
        entries = {e[0]: e[1] for e in resp.resources[0][4]}
        assert entries["retention.ms"] == "7200000"
        a.create_partitions({topic_name: NewPartitions(total_count=5)})
        [described] = a.describe_topics([topic_name])
        assert len(described["partitions"]) == 5
        a.delete_topics([topic_name])
        deadline = time.time() + 10
        while topic_name in a.list_topics() and time.time() < deadline:
            time.sleep(0.1)
        assert topic_name not in a.list_topics()
    finally:
        a.close()


def test_produce_consume_in_a_group_and_commit(weir, topic_name):
    a = KafkaAdminClient(bootstrap_servers=weir.bootstrap)
    a.create_topics([NewTopic(topic_name, num_partitions=4, replication_factor=1)])
    producer = KafkaProducer(bootstrap_servers=weir.bootstrap, compression_type="gzip", acks="all")
    base_ts = int(time.time() * 1000) - 1000
    n = 400
    futures = [
        producer.send(
            topic_name,
            key=f"k{i % 20}".encode(),
            value=f"v{i}".encode(),
            headers=[("i", str(i).encode())],
            timestamp_ms=base_ts + i,
        )
        for i in range(n)
    ]
    producer.flush()
    for f in futures:
        f.get(timeout=10)
    producer.close()

    group = "kp-" + topic_name
    seen = {}
    lock = threading.Lock()

    def member(name):
        c = KafkaConsumer(
            topic_name,
            bootstrap_servers=weir.bootstrap,
            group_id=group,
            client_id=name,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=8000,
        )
        for msg in c:
            i = int(msg.headers[0][1].decode())
            assert msg.value == f"v{i}".encode()
            assert msg.key == f"k{i % 20}".encode()
            assert msg.timestamp == base_ts + i
            with lock:
                seen.setdefault(i, []).append(name)
            c.commit()
        c.close()

    threads = [threading.Thread(target=member, args=(f"m{j}",)) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(seen) == list(range(n)), "every record consumed"

    offsets = a.list_consumer_group_offsets(group)
    ends = KafkaConsumer(bootstrap_servers=weir.bootstrap).end_offsets(
        [TopicPartition(topic_name, p) for p in range(4)]
    )
    assert {tp: om.offset for tp, om in offsets.items()} == ends
    assert group in [g[0] for g in a.list_consumer_groups()]
    [described] = a.describe_consumer_groups([group])
    assert described.state == "Empty"
    a.close()
