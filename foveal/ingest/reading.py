"""Reading a whole topic back (the DLQ in `foveal bench pipeline`, the verdicts and DLQ in the
tests): every record of every partition, from the beginning.

Stopping when each partition's position reaches the end offset that ListOffsets reported is not
enough. The embedded Tansu broker reports the end of a partition whose last batch holds k > 1
records as that batch's base offset + 1 (`docs/stack.md`), and kafka-python hands a fetched
batch out `max_poll_records` at a time: when a poll stops inside that last batch, the position
is already past the reported end and the rest of the batch, fetched and buffered, was never
returned. Measured: 503 acknowledged records, the last 6 in one batch, read back as 500. So the
reader goes on until it is past the reported ends *and* a poll comes back empty.
"""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


class ReadTimeout(RuntimeError):
    """The topic was not read to its end within the time allowed."""


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0,
               max_poll_records: int = 500) -> list[ConsumerRecord]:
    """Every record of `topic`, partition by partition in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                             max_poll_records=max_poll_records)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while True:
            polled = consumer.poll(timeout_ms=200)
            for batch in polled.values():
                records.extend(batch)
            if not polled and all(consumer.position(tp) >= ends[tp] for tp in tps):
                break
            if time.monotonic() > deadline:
                raise ReadTimeout(f"{topic}: read {len(records)} records in {timeout_s:.0f} s without "
                                  f"reaching the end offsets {ends}")
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()
