"""The ingest worker on the real embedded broker and PostgreSQL, calling a real gRPC Reasoner
in-process (`ServerThread` on a random micro model: the answers are noise, the plumbing is what
is checked). Each test has its own topics, consumer group and empty database.

Proved here: every frame from the camera ends as exactly one inspection (steps and crops
consistent, full frame in the blob store, every frame of a sequence too, a NOTIFY, a verdict)
with offsets committed to the end; a replay by a new group adds no rows; a sequence of inline
and claim-check frames handled twice at once keeps each frame's blob key once, in order; each
kind of poison lands on the DLQ with its reason while good frames on the same partition flow; a
reasoner that is down blocks commits until it is back, then nothing is lost or duplicated;
with an S3 blob store (a real SeaweedFS) the claim checks and the kept frames live there.
Run: `.venv/bin/python -m pytest -q tests/pipeline/test_ingest.py` (≈ 1–2 min).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from foveal import blobs, messaging
from foveal.camera import Bank, Camera, CameraConfig, SentFrame
from foveal.ingest import IngestConfig, IngestWorker, Limits, Topics
from foveal.ingest.handler import FrameHandler, Record
from foveal.ingest.metrics import IngestMetrics
from foveal.ingest.reading import read_topic
from foveal.reasoning.engine import LocalEngine
from foveal.reasoning.loop import LoopOptions
from foveal.serving.service import ServerThread, ServiceConfig
from foveal.settings import Settings
from foveal.stack import Stack
from foveal.storage import migrate
from foveal.storage.database import make_engine, session_factory
from foveal.storage.models import EvidenceCrop, Frame, FrameBlob, Inspection, Step
from foveal.storage.repository import INSPECTIONS_CHANNEL
from foveal.v1 import frame_pb2, reasoner_pb2_grpc
from tests.seaweed import CREDENTIALS, SeaweedS3
from tests.serving.helpers import ControlledEngine

pytestmark = pytest.mark.slow
SIZE_PX = 256


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five frames and one sequence, rendered small, as the camera's `--source` takes them."""
    from foveal.plant.generate import generate

    out = tmp_path_factory.mktemp("ingest-source") / "tiny"
    generate(out, n=5, seed=5, sequences=1, size=SIZE_PX, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def blob_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest-blobs")


@pytest.fixture(scope="module")
def engine(micro_tokenizer: object) -> ControlledEngine:
    from foveal.model.loader import create

    return ControlledEngine(LocalEngine(create(micro_tokenizer, "micro", seed=0)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reasoner(engine: ControlledEngine, blob_dir: Path) -> Iterator[ServerThread]:
    config = ServiceConfig(port=0, metrics_port=None, blob_root=blob_dir, health_poll_s=0.05, grace_s=1.0,
                           max_concurrency=8, loop=LoopOptions(max_turn_tokens=8))
    with ServerThread(engine, config) as server:
        yield server


@pytest.fixture(autouse=True)
def _engine_up(engine: ControlledEngine) -> Iterator[None]:
    engine.reset()
    yield
    engine.reset()


@dataclass(frozen=True)
class Names:
    frames: str
    verdicts: str
    dlq: str
    group: str


def make_names(settings: Settings, frames_partitions: int = 2) -> Names:
    """Fresh topics and a fresh consumer group, so tests never see each other's records."""
    tag = uuid.uuid4().hex[:8]
    made = Names(f"t{tag}.frames", f"t{tag}.verdicts", f"t{tag}.dlq", f"t{tag}-ingest")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_address)
    try:
        admin.create_topics([NewTopic(made.frames, frames_partitions, 1), NewTopic(made.verdicts, 1, 1),
                             NewTopic(made.dlq, 1, 1)])
    finally:
        admin.close()
    return made


@pytest.fixture
def settings(embedded_stack: Stack, fresh_database_url: str, blob_dir: Path, tmp_path: Path,
             reasoner: ServerThread) -> Settings:
    migrate.upgrade(fresh_database_url)
    return embedded_stack.settings.model_copy(update=dict(
        home=tmp_path, blob_dir=blob_dir, database_url=fresh_database_url, reasoner_url=reasoner.address,
        ingest_retry_initial_s=0.1, ingest_retry_max_s=0.5, ingest_max_in_flight=4))


def config_for(settings: Settings, names: Names, group: str | None = None, **overrides: Any) -> IngestConfig:
    return IngestConfig.from_settings(
        settings, group=group or names.group, frames_topic=names.frames,
        topics=Topics(verdicts=names.verdicts, dlq=names.dlq), metrics_port=None,
        session_timeout_ms=6000, heartbeat_interval_ms=2000, lag_interval_s=1.0, shutdown_grace_s=5.0,
        **overrides)


@contextmanager
def running(settings: Settings, config: IngestConfig) -> Iterator[IngestWorker]:
    worker = IngestWorker(settings, config)
    thread = threading.Thread(target=worker.run, name="ingest-test", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the worker did not stop"


# -- helpers ----------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def sample(worker: IngestWorker, name: str, **labels: str) -> float:
    return worker.metrics.registry.get_sample_value(name, labels) or 0.0


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with Session(engine) as s:
            return {model.__tablename__: s.scalar(select(func.count()).select_from(model)) or 0
                    for model in (Frame, FrameBlob, Inspection, Step, EvidenceCrop)}
    finally:
        engine.dispose()


def committed(settings: Settings, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset per partition of `topic`, and None where it has none."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_address)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        offsets = admin.list_group_offsets({group: None}).get(group, {})
        return {p: (offsets[TopicPartition(topic, p)].offset if TopicPartition(topic, p) in offsets
                    else None) for p in parts}
    finally:
        admin.close()
        consumer.close()


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def all_committed(settings: Settings, group: str, topic: str) -> bool:
    ends = end_offsets(settings, topic)
    return committed(settings, group, topic) == {p: (end if end else None) for p, end in ends.items()}


def read_all(settings: Settings, topic: str) -> list[Any]:
    """Every record of `topic` (all partitions), from the beginning (`foveal.ingest.reading`)."""
    return read_topic(settings.kafka_address, topic)


def envelope(image: frame_pb2.Image, product: str = "pcb", station: str = "st-1") -> frame_pb2.FrameEnvelope:
    env = frame_pb2.FrameEnvelope(frame_id=str(uuid.uuid4()), line="line-1", station=station, camera="cam-1",
                                  part_serial=f"SN-{uuid.uuid4().hex[:6]}", product=product)
    env.captured_at.FromDatetime(datetime.now(UTC))
    env.image.CopyFrom(image)
    return env


def produce(settings: Settings, topic: str, values: list[tuple[bytes, list[tuple[str, bytes]]]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_address, acks="all", max_request_size=4 << 20)
    try:
        for value, headers in values:
            producer.send(topic, key=b"st-1", value=value, headers=headers).get(timeout=30)
    finally:
        producer.close()


# -- tests ------------------------------------------------------------------------------
def test_camera_frames_become_one_inspection_each_and_a_replay_adds_nothing(
        settings: Settings, tiny_dataset: Path) -> None:
    names = make_names(settings)
    sizes = [item.paths[0].stat().st_size for item in Bank.load(tiny_dataset).frames]
    camera_config = CameraConfig(stations=("st-a", "st-b", "st-c"), source=tiny_dataset, sequence_share=0.2,
                                 inline_max_bytes=int(statistics.median(sizes)), seed=2, topic=names.frames)
    sent: list[SentFrame] = []
    with Camera(settings, camera_config) as camera:
        report = camera.run(count=10, on_sent=sent.append)
    assert report.inline_images and report.blob_images and report.sequences == 2
    frame_ids = {s.frame_id for s in sent}
    sequences = {s.frame_id: s.sequence for s in sent}
    url = str(settings.database_url)

    listener = psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False),
                               autocommit=True)
    listener.execute(f"LISTEN {INSPECTIONS_CHANNEL}")
    with running(settings, config_for(settings, names)) as worker:
        wait_for(lambda: counts(url)["inspections"] == 10, 120, "10 inspections")
        wait_for(lambda: all_committed(settings, names.group, names.frames), 30, "offsets committed")
        assert sample(worker, "foveal_ingest_inspected_total") == 10
    notified = {n.payload for n in listener.notifies(timeout=1, stop_after=10)}
    listener.close()
    assert notified == frame_ids

    engine = create_engine(url)
    with Session(engine) as s:
        frames = s.scalars(select(Frame)).all()
        assert {str(f.frame_id) for f in frames} == frame_ids
        for f in frames:
            assert f.blob_key and Path(f.blob_key.removeprefix("file://")).is_file()
            assert [b.position for b in f.blobs] == list(range(f.sequence_length))  # every frame kept
            assert f.blobs[0].blob_key == f.blob_key
            assert all(Path(b.blob_key.removeprefix("file://")).is_file() for b in f.blobs)
            assert f.kafka_topic == names.frames and f.kafka_offset is not None
            assert (f.sequence_length > 1) == sequences[str(f.frame_id)]
            assert f.inspection is not None
            steps = f.inspection.steps
            assert [st.index for st in steps] == list(range(len(steps)))
            for st in steps:
                assert [c.ordinal for c in st.crops] == list(range(len(st.crops)))
    engine.dispose()
    verdicts = [messaging.decode_verdict(r.value) for r in read_all(settings, names.verdicts)]
    assert sorted(v.frame_id for v in verdicts) == sorted(frame_ids)
    before = counts(url)

    # A new group replays the topic from the start: no new rows, the verdicts are produced again.
    with running(settings, config_for(settings, names, group=names.group + "-replay")) as replay:
        wait_for(lambda: all_committed(settings, names.group + "-replay", names.frames), 90, "replay")
        assert sample(replay, "foveal_ingest_replayed_total") == 10
    assert counts(url) == before
    assert len(read_all(settings, names.verdicts)) == 20


def test_poison_goes_to_the_dlq_with_its_reason_while_good_frames_flow(
        settings: Settings, tiny_dataset: Path, blob_dir: Path) -> None:
    names = make_names(settings, frames_partitions=1)
    pngs = sorted(tiny_dataset.rglob("*.png"))
    good = [envelope(frame_pb2.Image(mime_type="image/png", inline=p.read_bytes())) for p in pngs[:4]]
    missing = frame_pb2.Image(mime_type="image/png", blob=frame_pb2.BlobRef(
        uri=(blob_dir / "ab" / ("ab" + "0" * 62 + ".png")).as_uri(), sha256="ab" + "0" * 62, size_bytes=10))
    poison = {
        "decode": b"\x00\x01 not a protobuf envelope \xff",
        "inspect": messaging.encode_frame(envelope(frame_pb2.Image(mime_type="image/png",
                                                                   inline=b"not a png at all"))),
        "fetch": messaging.encode_frame(envelope(missing)),
        "size": messaging.encode_frame(envelope(frame_pb2.Image(mime_type="image/png",
                                                                inline=b"\x89PNG" + b"\0" * 300_000))),
    }
    unknown_product = messaging.encode_frame(envelope(good[0].image, product="no-such-product"))
    trace = [("trace-id", b"t-1")]
    values: list[tuple[bytes, list[tuple[str, bytes]]]] = []
    for g, bad in zip(good, [*poison.values()], strict=True):
        values += [(messaging.encode_frame(g), []), (bad, trace)]
    values.append((unknown_product, trace))  # not poison: a line's own product code, generic prompt
    produce(settings, names.frames, values)

    with running(settings, config_for(settings, names, limits=Limits(max_frame_bytes=200_000,
                                                                      retry_initial_s=0.1, retry_max_s=0.5))):
        wait_for(lambda: all_committed(settings, names.group, names.frames), 120, "all offsets committed")
    url = str(settings.database_url)
    assert counts(url)["inspections"] == 5
    engine = create_engine(url)
    try:
        with Session(engine) as s:
            assert s.scalar(select(func.count()).select_from(Inspection).join(Frame)
                            .where(Frame.product == "no-such-product")) == 1
    finally:
        engine.dispose()
    dead = read_all(settings, names.dlq)
    by_stage: dict[str, list[Any]] = {}
    for record in dead:
        info = messaging.parse_dlq_headers(record.headers)
        by_stage.setdefault(info.stage, []).append(record)
        assert info.error and info.attempts == 1
        assert ("trace-id", b"t-1") in record.headers  # the original headers ride along
    assert sorted(by_stage) == ["decode", "fetch", "inspect", "size"]
    assert len(by_stage["inspect"]) == 1  # the undecodable image
    assert {r.value for r in dead} == {*poison.values()}
    assert "INVALID_ARGUMENT" in messaging.parse_dlq_headers(by_stage["inspect"][0].headers).error
    assert len(read_all(settings, names.verdicts)) == 5


def test_a_reasoner_outage_blocks_commits_then_recovers_without_loss_or_duplicates(
        settings: Settings, tiny_dataset: Path, engine: ControlledEngine) -> None:
    names = make_names(settings, frames_partitions=1)
    pngs = sorted(tiny_dataset.rglob("*.png"))[:4]
    sent = [envelope(frame_pb2.Image(mime_type="image/png", inline=p.read_bytes())) for p in pngs]
    produce(settings, names.frames, [(messaging.encode_frame(e), []) for e in sent])
    url = str(settings.database_url)
    engine.up = False
    with running(settings, config_for(settings, names)) as worker:
        wait_for(lambda: sample(worker, "foveal_ingest_retries_total", stage="inspect") >= 8, 60, "retries")
        assert counts(url)["inspections"] == 0
        assert committed(settings, names.group, names.frames) == {0: None}
        engine.up = True
        wait_for(lambda: all_committed(settings, names.group, names.frames), 90, "recovery")
    assert counts(url)["inspections"] == 4
    verdicts = [messaging.decode_verdict(r.value).frame_id for r in read_all(settings, names.verdicts)]
    assert sorted(verdicts) == sorted(e.frame_id for e in sent)
    assert not read_all(settings, names.dlq)


def test_a_sequence_handled_twice_at_once_keeps_each_frame_once_in_order(
        settings: Settings, tiny_dataset: Path, engine: ControlledEngine, reasoner: ServerThread,
        caplog: pytest.LogCaptureFixture) -> None:
    # Two frames inline, two by claim check; both handlers pass the lookup before either writes
    # (the model is held at its first turn until both are there), so both write.
    names = make_names(settings, frames_partitions=1)
    pngs = sorted((tiny_dataset / "sequences").rglob("*.png"))[:4]  # frames of one sequence: one size
    data = [p.read_bytes() for p in pngs]
    store = blobs.store_for(settings)
    env = envelope(frame_pb2.Image(mime_type="image/png", inline=data[0]))
    env.ClearField("image")
    for k, frame in enumerate(data):
        if k < 2:
            env.sequence.append(frame_pb2.Image(mime_type="image/png", inline=frame))
        else:
            ref = store.put(frame, "image/png")
            env.sequence.append(frame_pb2.Image(mime_type="image/png", blob=frame_pb2.BlobRef(
                uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes)))
    record = Record(names.frames, 0, 0, b"st-1", messaging.encode_frame(env), [])
    db = make_engine(str(settings.database_url))
    channel = grpc.insecure_channel(reasoner.address)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_address, acks="all")
    stub = reasoner_pb2_grpc.ReasonerStub(channel)  # type: ignore[no-untyped-call]
    handler = FrameHandler(settings, session_factory(db), stub, producer, IngestMetrics(),
                           Topics(verdicts=names.verdicts, dlq=names.dlq), Limits(retry_initial_s=0.1))
    cancelled = threading.Event()
    outcomes: list[str] = []
    try:
        engine.gate = threading.Event()
        threads = [threading.Thread(target=lambda: outcomes.append(handler.handle(record, cancelled)))
                   for _ in range(2)]
        threads[0].start()
        assert engine.entered.wait(30), "the first handler never reached the model"
        engine.entered.clear()
        threads[1].start()
        assert engine.entered.wait(30), "the second handler never reached the model"
        engine.gate.set()
        for thread in threads:
            thread.join(timeout=60)
        assert outcomes == ["inspected", "inspected"]
        with caplog.at_level(logging.INFO, logger="foveal.ingest.handler"):
            assert handler.handle(record, cancelled) == "replayed"  # and once more, after both
    finally:
        cancelled.set()
        producer.close()
        channel.close()
        db.dispose()
    url = str(settings.database_url)
    stored = counts(url)
    assert (stored["frames"], stored["frame_blobs"], stored["inspections"]) == (1, 4, 1)
    check = create_engine(url)
    try:
        with Session(check) as s:
            frame = s.get(Frame, uuid.UUID(env.frame_id))
            assert frame is not None and frame.sequence_length == 4
            assert [b.position for b in frame.blobs] == [0, 1, 2, 3]
            assert frame.blob_key == frame.blobs[0].blob_key
            for blob, original in zip(frame.blobs, data, strict=True):
                assert blob.blob_key.endswith(blobs.blob_key(blobs.sha256_hex(original), "image/png"))
                assert blobs.fetch(settings, blob.blob_key) == original
    finally:
        check.dispose()
    verdicts = read_all(settings, names.verdicts)
    assert len(verdicts) == 3
    # the log says where the broker acknowledged the verdict, and the replay's is the last one
    [said] = [getattr(r, "verdict_at", None) for r in caplog.records if "produced again" in r.getMessage()]
    last = max(verdicts, key=lambda r: r.offset)
    assert said == f"{names.verdicts}[{last.partition}]@{last.offset}"


def test_claim_checks_through_an_s3_store_end_in_rows_whose_frames_are_kept_there(
        settings: Settings, tiny_dataset: Path, engine: ControlledEngine,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """FOVEAL_BLOB_URL=s3://…: the camera's claim checks go to a real S3 server (SeaweedFS), the
    reasoner reads them there, and the worker keeps the full frames there too."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        with SeaweedS3(tmp_path_factory.mktemp("ingest-s3")) as s3:
            s3.create_bucket("plant-frames")
            on_s3 = dict(blob_url="s3://plant-frames/line-1", s3_endpoint_url=s3.endpoint_url)
            config = ServiceConfig(port=0, metrics_port=None, health_poll_s=0.05, grace_s=1.0,
                                   loop=LoopOptions(max_turn_tokens=8), **on_s3)
            with ServerThread(engine, config) as reasoner:
                here = settings.model_copy(update=dict(reasoner_url=reasoner.address, **on_s3))
                names = make_names(here)
                camera_config = CameraConfig(stations=("st-a", "st-b"), source=tiny_dataset,
                                             sequence_share=0.25, inline_max_bytes=1024, seed=4,
                                             topic=names.frames)
                with Camera(here, camera_config) as camera:
                    report = camera.run(count=4)
                assert report.blob_images and not report.inline_images  # every image by claim check
                url = str(here.database_url)
                with running(here, config_for(here, names)):
                    wait_for(lambda: counts(url)["inspections"] == 4, 120, "4 inspections")
                engine_db = create_engine(url)
                with Session(engine_db) as s:
                    kept = [b.blob_key for f in s.scalars(select(Frame)).all() for b in f.blobs]
                engine_db.dispose()
                assert len(kept) == report.blob_images
                assert all(key.startswith("s3://plant-frames/line-1/") for key in kept)
                assert all(blobs.fetch(here, key)[:8] == b"\x89PNG\r\n\x1a\n" for key in kept)
