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

from foveal.errors import FovealError


class ReadTimeout(FovealError):
    """The topic was not read to its end within the time allowed."""


class TopicReader:
    """A consumer kept open on every partition of `topic`, from the beginning: `poll()` returns
    the records that arrived since the last call. One reader serves a whole wait (the pipeline
    bench counts DLQ records with it): a consumer opened and closed every tick made kafka-python
    log "Metadata refresh: failed Cancelled" at ERROR whenever a close cut a refresh short (59
    times in one 2,000-frame run)."""

    def __init__(self, bootstrap: str, topic: str, max_poll_records: int = 500) -> None:
        self.topic = topic
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), enable_auto_commit=False,
                                       max_poll_records=max_poll_records)
        partitions = sorted(self._consumer.partitions_for_topic(topic) or ())
        self._tps = [TopicPartition(topic, p) for p in partitions]
        if self._tps:
            self._consumer.assign(self._tps)
            self._consumer.seek_to_beginning()

    def poll(self, timeout_ms: int = 200) -> list[ConsumerRecord]:
        if not self._tps:
            return []
        return [r for batch in self._consumer.poll(timeout_ms=timeout_ms).values() for r in batch]

    def past(self, ends: dict[TopicPartition, int]) -> bool:
        return all(self._consumer.position(tp) >= ends[tp] for tp in self._tps)

    def ends(self) -> dict[TopicPartition, int]:
        return dict(self._consumer.end_offsets(self._tps)) if self._tps else {}

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0,
               max_poll_records: int = 500) -> list[ConsumerRecord]:
    """Every record of `topic`, partition by partition in offset order."""
    with TopicReader(bootstrap, topic, max_poll_records) as reader:
        ends = reader.ends()
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while True:
            polled = reader.poll()
            records.extend(polled)
            if not polled and reader.past(ends):
                break
            if time.monotonic() > deadline:
                raise ReadTimeout(f"{topic}: read {len(records)} records in {timeout_s:.0f} s without "
                                  f"reaching the end offsets {ends}")
    records.sort(key=lambda r: (r.partition, r.offset))
    return records
