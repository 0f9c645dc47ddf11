"""One member of a confluent-kafka consumer group, run as its own process by
test_confluent_kafka.py.

    python3 group_member.py BOOTSTRAP GROUP TOPIC NAME

Prints one JSON object per line on stdout: {"assigned": [partitions]} after every
rebalance, {"p": partition, "o": offset, "v": value} for every record it consumed and
committed. Commits each record synchronously before reporting it. Exits cleanly (closing
the consumer, which leaves the group) when a line "stop" arrives on stdin.
"""

import json
import select
import sys

from confluent_kafka import Consumer, KafkaException


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    bootstrap, group, topic, name = sys.argv[1:5]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
            "partition.assignment.strategy": "range",
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    owned = set()

    def on_assign(c, partitions):
        owned.clear()
        owned.update(p.partition for p in partitions)
        say({"assigned": sorted(owned)})

    def on_revoke(c, partitions):
        owned.clear()
        say({"assigned": []})

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    try:
        while True:
            ready, _, _ = select.select([sys.stdin], [], [], 0)
            if ready and sys.stdin.readline().strip() == "stop":
                break
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                say({"error": str(msg.error())})
                continue
            try:
                consumer.commit(message=msg, asynchronous=False)
            except KafkaException as e:
                # A commit refused during a rebalance: the record will be redelivered.
                say({"commit_error": str(e)})
                continue
            say({"p": msg.partition(), "o": msg.offset(), "v": msg.value().decode()})
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
