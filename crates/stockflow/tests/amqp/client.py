"""A RabbitMQ client no one on the project wrote (pika), for the tests.

    client.py URL declare QUEUE      declare QUEUE durable
    client.py URL depth QUEUE        print {"messages": n, "consumers": n}
    client.py URL delete QUEUE       delete QUEUE
    client.py URL publish            publish the messages read from stdin,
                                     one JSON object per line:
                                     {"queue", "body", "headers"?, "contentType"?}
                                     persistent, each confirmed by the broker;
                                     prints "published N" every 100

Exits non-zero with the reason on stderr when the broker refuses.
"""

import json
import sys

import pika


def main():
    url, command = sys.argv[1], sys.argv[2]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    if command == "declare":
        channel.queue_declare(queue=sys.argv[3], durable=True)
    elif command == "depth":
        q = channel.queue_declare(queue=sys.argv[3], passive=True)
        print(json.dumps({"messages": q.method.message_count,
                          "consumers": q.method.consumer_count}))
    elif command == "delete":
        channel.queue_delete(queue=sys.argv[3])
    elif command == "publish":
        channel.confirm_delivery()
        published = 0
        for line in sys.stdin:
            if not line.strip():
                continue
            message = json.loads(line)
            properties = pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                headers=message.get("headers"),
                content_type=message.get("contentType"),
            )
            # Unroutable (no such queue) is an error, not a silent drop.
            channel.basic_publish("", message["queue"], message["body"].encode(),
                                  properties, mandatory=True)
            published += 1
            if published % 100 == 0:
                print(f"published {published}", flush=True)
        print(f"published {published}", flush=True)
    else:
        sys.exit(f"unknown command {command}")
    connection.close()


if __name__ == "__main__":
    main()
