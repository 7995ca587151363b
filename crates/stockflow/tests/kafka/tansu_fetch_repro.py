"""Minimal repro: a fetch from the middle of a produced batch skips records.

tansu 0.6.0 (memory storage) answers a fetch at offset X inside a batch
that was produced as one request with the *next* batch, so a consumer
assigned at X never sees X..end-of-its-batch. stockflow's `Contiguity`
(kafka/mod.rs) notices the jump and reads again from further back; this
script shows the broker behaviour on its own. Not part of the test suite
(it documents a broker bug; a fixed broker would make it "fail").

Usage: tansu broker --listener-url tcp://127.0.0.1:19092 \
         --advertised-listener-url tcp://127.0.0.1:19092 --storage-engine memory://tansu/ &
       python3 tansu_fetch_repro.py 127.0.0.1:19092
Prints the first offset a consumer assigned at 4002 receives: Apache Kafka
gives 4002; tansu 0.6.0 gave 5000 (the next batch), and nothing at all when
assigned inside the last batch.
"""

import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = sys.argv[1]
topic = f"repro-{int(time.time())}"
admin = AdminClient({"bootstrap.servers": bootstrap})
admin.create_topics([NewTopic(topic, 1)])[topic].result()

producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
for n in range(6000):
    producer.produce(topic, value=str(n).encode(), partition=0)
    if (n + 1) % 1000 == 0:
        producer.flush(10)  # one produce request (one batch) per 1,000

consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "repro", "enable.auto.commit": False})
consumer.assign([TopicPartition(topic, 0, 4002)])
deadline = time.time() + 10
while time.time() < deadline:
    m = consumer.poll(0.5)
    if m is not None and not m.error():
        print(f"assigned at 4002, first record received: offset {m.offset()} (value {m.value().decode()})")
        sys.exit(0 if m.offset() == 4002 else 1)
sys.exit("nothing received")
