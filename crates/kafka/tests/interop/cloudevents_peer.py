"""A service in another language for choreo's interop tests: it writes
events with the official CloudEvents SDK for Python (binary and structured
content mode) and raw records with confluent-kafka, and reads records back,
parsing each with the SDK as any CloudEvents consumer would.

    python cloudevents_peer.py produce BROKERS < records.json
        one JSON line per record sent: topic, partition, offset, key, value
        and headers as sent (bytes in hex, null as null)
    python cloudevents_peer.py consume BROKERS COUNT TOPIC...
        one JSON line per record read (COUNT in all, from the beginning):
        topic, partition, offset, key, value, headers, and "event": the SDK's
        reading of it, or "error": why the SDK refused it

records.json is a list of
    {"mode": "binary" | "structured", "topic": T, "attributes": {...},
     "data": ..., "specversion03": bool}
    {"mode": "raw", "topic": T, "key": HEX|null, "value": HEX,
     "headers": [[NAME, HEX|null], ...]}
"""

import json
import sys
import uuid

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v03.event import CloudEvent as CloudEvent03
from cloudevents.core.v1.event import CloudEvent
from confluent_kafka import Consumer, Producer


def hexed(b):
    if b is None:
        return None
    if isinstance(b, str):
        b = b.encode("utf-8")
    return b.hex()


def unhexed(h):
    return None if h is None else bytes.fromhex(h)


def produce(brokers):
    records = json.load(sys.stdin)
    producer = Producer({"bootstrap.servers": brokers, "acks": "all"})
    for item in records:
        topic = item["topic"]
        if item["mode"] == "raw":
            key = unhexed(item.get("key"))
            value = unhexed(item["value"])
            headers = [(name, unhexed(v)) for name, v in item["headers"]]
        else:
            factory = CloudEvent03 if item.get("specversion03") else CloudEvent
            event = factory(dict(item["attributes"]), item.get("data"))
            if item["mode"] == "binary":
                message = ce_kafka.to_binary_event(event)
            else:
                message = ce_kafka.to_structured_event(event)
            key = message.key
            if isinstance(key, str):
                key = key.encode("utf-8")
            value = message.value
            headers = list(message.headers.items())
        delivered = []
        producer.produce(
            topic,
            value=value,
            key=key,
            headers=headers,
            on_delivery=lambda err, msg: delivered.append((err, msg)),
        )
        producer.flush(60)
        if not delivered:
            raise SystemExit(f"producing to {topic}: no delivery report within 60 s")
        err, msg = delivered[0]
        if err is not None:
            raise SystemExit(f"producing to {topic}: {err}")
        print(
            json.dumps(
                {
                    "topic": topic,
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "key": hexed(key),
                    "value": hexed(value),
                    "headers": [[name, hexed(v)] for name, v in headers],
                }
            ),
            flush=True,
        )


def attributes_of(event):
    out = {}
    for name, value in event.get_attributes().items():
        out[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return out


def consume(brokers, count, topics):
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"cloudevents-peer-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": 50,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    consumer.subscribe(topics)
    seen = 0
    idle = 0
    while seen < count:
        msg = consumer.poll(1.0)
        if msg is None:
            idle += 1
            if idle > 180:
                raise SystemExit(f"read {seen} of {count} records in 3 minutes")
            continue
        if msg.error():
            print(f"consumer: {msg.error()}", file=sys.stderr)
            continue
        idle = 0
        headers = msg.headers() or []
        out = {
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "key": hexed(msg.key()),
            "value": hexed(msg.value()),
            "headers": [[name, hexed(v)] for name, v in headers],
        }
        try:
            # The SDK takes headers as a dict of bytes: the first of each
            # name, as choreo reads them.
            as_dict = {}
            for name, v in headers:
                as_dict.setdefault(name, v if v is not None else b"")
            message = ce_kafka.KafkaMessage(
                headers=as_dict, key=msg.key(), value=msg.value() or b""
            )
            event = ce_kafka.from_kafka(message, JSONFormat())
            out["event"] = {"attributes": attributes_of(event), "data": data_of(event)}
        except Exception as e:  # the SDK's refusal is what is reported
            out["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(out), flush=True)
        seen += 1
    consumer.close()


def data_of(event):
    data = event.get_data()
    if isinstance(data, bytes):
        return {"hex": data.hex()}
    return data


def main():
    command = sys.argv[1]
    if command == "produce":
        produce(sys.argv[2])
    elif command == "consume":
        consume(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
