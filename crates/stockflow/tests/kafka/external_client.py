"""A client no one on the stockflow team wrote: Python's confluent-kafka.

Produces inventory events in the `inventory-event` dialect (the Kafka
Streams inventory service's format: signed quantityDelta) to the raw topic,
one of them invalid, then reads the compacted stock-levels topic and the
DLQ until it has the levels it expects, and prints what it read as JSON:

    {"levels": {"sku:location": {...}}, "dlq": [{"reason": ..., "payload": ...}]}

Usage: external_client.py BOOTSTRAP RUN_ID
Exits non-zero (with the reason on stderr) if the levels do not come.
"""

import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition

bootstrap, run = sys.argv[1], sys.argv[2]
raw_topic = "inventory.events.raw.inventory-event"

# (type, sku, location, quantityDelta)
events = [
    ("RECEIPT", "PY-1", "S1", 40),
    ("SALE", "PY-1", "S1", -3),
    ("SALE", "PY-1", "S1", -2),
    ("RESERVATION", "PY-1", "S1", -5),
    ("RECEIPT", "PY-2", "S2", 7),
    ("ADJUSTMENT", "PY-2", "S2", -1),
    ("TRANSFER_OUT", "PY-2", "S2", -2),
]
expected = {
    "PY-1:S1": {"onHand": 35, "reserved": 5, "available": 30},
    "PY-2:S2": {"onHand": 4, "reserved": 0, "available": 4},
}

producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
for n, (kind, sku, location, delta) in enumerate(events):
    message = {
        "eventId": f"py-{run}-{n}",
        "eventType": kind,
        "sku": sku,
        "locationId": location,
        "quantityDelta": delta,
        "sourceSystem": "python-confluent-kafka",
        "timestamp": "2026-11-30T10:00:00",
    }
    producer.produce(raw_topic, key=f"{sku}:{location}", value=json.dumps(message))
# A sale with a positive delta contradicts its type: dead-lettered.
producer.produce(
    raw_topic,
    key="PY-1:S1",
    value=json.dumps({
        "eventId": f"py-{run}-bad",
        "eventType": "SALE",
        "sku": "PY-1",
        "locationId": "S1",
        "quantityDelta": 4,
    }),
)
# Sent again: a redelivery, which must change nothing.
producer.produce(raw_topic, key="PY-1:S1", value=json.dumps({
    "eventId": f"py-{run}-1", "eventType": "SALE", "sku": "PY-1", "locationId": "S1",
    "quantityDelta": -3, "timestamp": "2026-11-30T10:00:00",
}))
left = producer.flush(30)
if left:
    sys.exit(f"{left} messages not acknowledged by the broker")


def read(topic, done, timeout):
    """Every record of `topic` from the start, until `done(records)`."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"py-reader-{run}-{topic}",
        "enable.auto.commit": False,
    })
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records = []
    deadline = time.time() + timeout
    while time.time() < deadline and not done(records):
        message = consumer.poll(0.2)
        if message is None or message.error():
            continue
        records.append(message)
    consumer.close()
    return records


def latest(records):
    levels = {}
    for m in records:
        if m.key() is not None and m.value() is not None:
            levels[m.key().decode()] = json.loads(m.value())
    return levels


def levels_done(records):
    levels = latest(records)
    return all(
        key in levels and all(levels[key][f] == v for f, v in want.items())
        for key, want in expected.items()
    )


stock_levels = read("inventory.stock-levels", levels_done, 90)
levels = latest(stock_levels)


def ours(m):
    return f"py-{run}-bad".encode() in (m.value() or b"")


dlq = [
    {
        "reason": dict((k, (v or b"").decode()) for k, v in (m.headers() or [])).get("reason", ""),
        "payload": (m.value() or b"").decode(),
    }
    for m in read("inventory.dlq", lambda rs: any(ours(m) for m in rs), 60)
    if ours(m)
]
print(json.dumps({"levels": {k: levels.get(k) for k in expected}, "dlq": dlq}))
if not levels_done(stock_levels):
    sys.exit(f"stock-levels never showed the expected levels: {levels}")
