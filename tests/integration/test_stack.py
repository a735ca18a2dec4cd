"""The embedded stack, started once per session by `Stack.up()` (the code behind
`foveal stack up`): each real part does the job foveal needs from it."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from foveal import messaging
from foveal.stack import Stack

pytestmark = pytest.mark.slow


def test_status_reports_every_part_healthy_with_pid(embedded_stack: Stack) -> None:
    statuses = {s.part: s for s in embedded_stack.status()}
    assert set(statuses) == {"kafka", "postgres", "triton"}
    for status in statuses.values():
        assert status.state == "healthy", status
        assert status.mode == "embedded" and status.pid
    assert "serving add_one/1" in statuses["triton"].detail
    assert "schema at" in statuses["postgres"].detail


def test_topics_are_created_with_their_partitions(embedded_stack: Stack) -> None:
    admin = KafkaAdminClient(bootstrap_servers=embedded_stack.settings.kafka_address)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(
            [messaging.FRAMES_TOPIC, messaging.VERDICTS_TOPIC, messaging.DLQ_TOPIC])}
    finally:
        admin.close()
    assert described[messaging.FRAMES_TOPIC] >= 4
    assert set(described) == {messaging.FRAMES_TOPIC, messaging.VERDICTS_TOPIC, messaging.DLQ_TOPIC}


def test_broker_carries_a_record_through_a_consumer_group_with_commit(embedded_stack: Stack) -> None:
    bootstrap = embedded_stack.settings.kafka_address
    topic, group = f"test.{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    producer.send(topic, key=b"station-1", value=b"frame-bytes", headers=[("stage", b"t")]).get(10)
    producer.close()

    consumer = _group_consumer(bootstrap, group, topic)
    records = _poll_until(consumer, count=1)
    got = [(r.key, r.value, r.headers) for r in records]
    assert got == [(b"station-1", b"frame-bytes", [("stage", b"t")])]
    consumer.commit()
    tp = TopicPartition(topic, records[0].partition)
    assert consumer.committed(tp) == records[0].offset + 1
    consumer.close()

    # A new member of the same group resumes after the committed offset: nothing is re-read.
    again = _group_consumer(bootstrap, group, topic)
    assert _poll_until(again, count=1, timeout_s=8) == []
    again.close()


def test_postgres_stores_and_reads_a_row_through_sqlalchemy(embedded_stack: Stack) -> None:
    from foveal.storage.models import Frame

    engine = create_engine(embedded_stack.settings.postgres_url)
    frame_id = uuid.uuid4()
    with Session(engine) as session, session.begin():
        session.add(Frame(frame_id=frame_id, line="L1", station="S1", camera="C1",
                          part_serial="P1", product="bracket", captured_at=datetime.now(UTC),
                          mime_type="image/png",
                          width=1024, height=1024))
    with Session(engine) as session:
        row = session.scalars(select(Frame).where(Frame.frame_id == frame_id)).one()
        assert (row.line, row.station, row.width) == ("L1", "S1", 1024)
    engine.dispose()


def test_triton_answers_a_grpc_call_from_a_python_model_in_the_venv(embedded_stack: Stack) -> None:
    client = triton_grpc.InferenceServerClient(embedded_stack.settings.triton_address)
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    inp = triton_grpc.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("add_one", [inp], client_timeout=30)
    np.testing.assert_array_equal(result.as_numpy("Y"), x + 1)
    # The python backend stub must run the venv's numpy, not whatever the base Python has.
    assert result.as_numpy("NUMPY_VERSION")[0, 0].decode() == np.__version__
    client.close()


def _group_consumer(bootstrap: str, group: str, topic: str) -> KafkaConsumer:
    return KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                         enable_auto_commit=False, auto_offset_reset="earliest",
                         session_timeout_ms=6000, heartbeat_interval_ms=2000)


def _poll_until(consumer: KafkaConsumer, count: int, timeout_s: float = 30.0) -> list:
    records: list = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    return records
