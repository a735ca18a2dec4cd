"""The ingest worker's pure parts: the per-partition watermark, the backoff, and the conversions
between the Reasoner's result, the repository's rows and the verdict message. No stack needed."""

from __future__ import annotations

import doctest
import uuid
from datetime import UTC, datetime

import pytest

from foveal import messaging
from foveal.ingest import handler, tracker
from foveal.ingest.tracker import PartitionTracker
from foveal.v1 import frame_pb2, inspection_pb2, verdict_pb2


def test_doctests() -> None:
    for module in (tracker,):
        assert doctest.testmod(module).failed == 0


def test_the_watermark_waits_for_every_earlier_record() -> None:
    t = PartitionTracker()
    for offset in (10, 11, 12, 20):  # a gap (compaction) is no hole to wait for
        t.dispatched(offset)
    t.finished(12)
    t.finished(20)
    assert t.commit_offset() is None and t.pending == 2
    t.finished(10)
    assert t.commit_offset() == 11
    t.finished(11)
    assert t.commit_offset() == 21 and t.pending == 0
    with pytest.raises(ValueError):
        t.dispatched(5)


def test_a_result_becomes_rows_and_a_valid_verdict() -> None:
    result = inspection_pb2.InspectResult(
        frame_id=str(uuid.uuid4()), verdict=verdict_pb2.DECISION_DEFECT, defect_type="scratch",
        confidence=0.75, operations=1, model=verdict_pb2.ModelRef(name="m", version="1"),
        timings=inspection_pb2.Timings(total_ms=12.5, model_ms=10.0),
        steps=[inspection_pb2.Step(index=0, operation="crop_image_normalized",
                                   arguments_json='{"bbox_2d": [0.1, 0.1, 0.5, 0.5]}', text="zoom",
                                   images=[inspection_pb2.EvidenceImage(
                                       data=b"png", mime_type="image/png", width=32, height=32,
                                       box=verdict_pb2.Box(x1=0.1, y1=0.1, x2=0.5, y2=0.5), frame_index=-1)]),
               inspection_pb2.Step(index=1, operation="answer", arguments_json="not json",
                                   text="\\boxed{scratch}")],
    )
    result.evidence_box.CopyFrom(verdict_pb2.Box(x1=0.1, y1=0.1, x2=0.5, y2=0.5))
    row = handler.new_inspection(result)
    assert (row.verdict, row.defect_type, row.latency_ms) == ("defect", "scratch", 12.5)
    assert row.steps[0].arguments == {"bbox_2d": [0.1, 0.1, 0.5, 0.5]}
    assert row.steps[1].arguments == {"raw": "not json"} and row.steps[1].error is None
    assert len(row.steps[0].crops) == 1 and row.box is not None
    envelope = frame_pb2.FrameEnvelope(frame_id=result.frame_id, line="l", station="s", camera="c",
                                       part_serial="p", product="pcb")
    envelope.captured_at.FromDatetime(datetime.now(UTC))
    verdict = handler.verdict_message(envelope, handler.decided_from_result(result), 3.0)
    decoded = messaging.decode_verdict(messaging.encode_verdict(verdict))
    assert (decoded.frame_id, decoded.defect_type, decoded.station) == (result.frame_id, "scratch", "s")
    assert decoded.HasField("evidence_box")
