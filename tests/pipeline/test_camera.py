"""The camera simulator: a bank rendered once and cached, and frames on the real embedded broker
(decodable, keyed by station, inline and claim-check images, sequences, the asked-for rate)."""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from foveal import blobs, messaging
from foveal.camera import Bank, Camera, CameraConfig, CameraError, SentFrame, ensure_bank
from foveal.plant.dataset import read_labels
from foveal.settings import Settings, load_settings
from foveal.stack import Stack
from foveal.v1 import frame_pb2
from tests.conftest import free_ports

SIZE_PX = 256  # small frames keep the renders (and the test) fast


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six frames and two sequences, rendered by the plant-data renderer, as `--source` takes."""
    from foveal.plant.generate import generate

    out = tmp_path_factory.mktemp("source") / "tiny"
    generate(out, n=6, seed=3, sequences=2, size=SIZE_PX, workers=1, progress=False)
    return out


@pytest.fixture
def camera_settings(embedded_stack: Stack, tmp_path: Path) -> Settings:
    """The embedded stack's broker, with this test's own home (bank cache, blob store)."""
    return embedded_stack.settings.model_copy(update={"home": tmp_path})


def test_config_and_source_mistakes_are_named(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(CameraError, match="station"):
        CameraConfig(stations=())
    with pytest.raises(CameraError, match="sequence share"):
        CameraConfig(sequence_share=1.5)
    settings = load_settings(home=tmp_path, kafka_bootstrap="")
    with pytest.raises(CameraError, match="not a dataset"):
        Camera(settings, CameraConfig(source=tmp_path))
    frames_only = tmp_path / "frames_only"
    frames_only.mkdir()
    (frames_only / "labels.jsonl").write_text(
        "".join(line for line in (tiny_dataset / "labels.jsonl").read_text().splitlines(True)
                if '"image"' in line))
    with pytest.raises(CameraError, match="no sequences"):
        Camera(settings, CameraConfig(source=frames_only.resolve(), sequence_share=0.5))
    nobody = load_settings(home=tmp_path, kafka_bootstrap="", kafka_port=free_ports(1)[0])
    with pytest.raises(CameraError, match="no Kafka broker answers"):
        Camera(nobody, CameraConfig(source=tiny_dataset))


def test_the_rendered_bank_is_cached_under_home(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    config = CameraConfig(bank_frames=2, bank_sequences=1, size=SIZE_PX, sequence_share=0.5, seed=7)
    folder = ensure_bank(settings, config)
    assert folder.parent == settings.home_dir / "camera"
    labels = read_labels(folder)
    assert sum(label.is_sequence for label in labels) == 1 and len(labels) == 3
    stamp = (folder / "labels.jsonl").stat().st_mtime_ns
    assert ensure_bank(settings, config) == folder
    assert (folder / "labels.jsonl").stat().st_mtime_ns == stamp  # reused, not rendered again
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging left behind


@pytest.mark.slow
def test_frames_reach_the_topic_keyed_by_station_inline_and_by_claim_check(
    camera_settings: Settings, tiny_dataset: Path
) -> None:
    bank = Bank.load(tiny_dataset)
    sizes = [item.paths[0].stat().st_size for item in bank.frames]
    # Half the frames fit inline, half go by claim check; sequences split within the record.
    inline_max = int(statistics.median(sizes))
    config = CameraConfig(line="line-7", stations=("st-a", "st-b", "st-c"), camera="cam-9",
                          sequence_share=0.25, seed=1, source=tiny_dataset, inline_max_bytes=inline_max)
    sent: list[SentFrame] = []
    with Camera(camera_settings, config) as cam:
        report = cam.run(count=16, rate_fps=40, on_sent=sent.append)

    assert (report.sent, report.frames, report.sequences) == (16, 12, 4)
    assert report.inline_images > 0 and report.blob_images > 0
    assert [s.station for s in sent] == ["st-a", "st-b", "st-c"] * 5 + ["st-a"]
    records = _consume(camera_settings, {s.frame_id for s in sent})
    labels = {label.id: label for label in read_labels(tiny_dataset)}
    partitions: dict[str, set[int]] = defaultdict(set)
    kinds = {"inline": 0, "blob": 0}
    for info in sent:
        record = records[info.frame_id]
        assert (record.partition, record.offset) == (info.partition, info.offset)
        envelope = messaging.decode_frame(record.value)
        assert record.key == messaging.frame_key(info.station) == envelope.station.encode()
        partitions[info.station].add(record.partition)
        assert (envelope.line, envelope.camera) == ("line-7", "cam-9")
        label = labels[envelope.attributes["sim.item"]]
        assert envelope.product == label.product
        assert envelope.attributes["sim.truth"] == label.defect_type
        assert messaging.frame_meta(envelope).part_serial
        images = list(envelope.sequence) if info.sequence else [envelope.image]
        assert info.sequence == bool(envelope.sequence) == (label.frames is not None)
        assert len(images) == len(label.frames or [label.image])
        for image, rel in zip(images, label.frames or [label.image], strict=True):
            expected = (tiny_dataset / str(rel)).read_bytes()
            assert (image.mime_type, image.width, image.height) == ("image/png", label.width, label.height)
            kinds[image.WhichOneof("source") or ""] += 1
            assert _image_bytes(camera_settings, image) == expected
    assert all(len(p) == 1 for p in partitions.values())  # a station stays on its partition
    assert kinds == {"inline": report.inline_images, "blob": report.blob_images}


def test_a_bank_file_sent_again_by_claim_check_is_not_hashed_again(
    camera_settings: Settings, tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[int] = []
    real = blobs.sha256_hex

    def counting(data: bytes) -> str:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(blobs, "sha256_hex", counting)
    config = CameraConfig(sequence_share=0.25, seed=2, source=tiny_dataset, inline_max_bytes=1024)
    sent: list[SentFrame] = []
    with Camera(camera_settings, config) as cam:
        report = cam.run(count=24, rate_fps=100, on_sent=sent.append)  # the bank of 8 items, thrice
    files = {path for item in cam.bank.frames + cam.bank.sequences for path in item.paths}
    assert report.inline_images == 0 and report.blob_images > len(files)
    assert len(hashed) == len(files)  # once per file, however often it was sent
    records = _consume(camera_settings, {s.frame_id for s in sent})
    for info in sent[-8:]:  # the last round still names verified blobs
        envelope = messaging.decode_frame(records[info.frame_id].value)
        for image in (list(envelope.sequence) if info.sequence else [envelope.image]):
            _image_bytes(camera_settings, image)


@pytest.mark.slow
def test_the_rendered_bank_is_sent_at_the_asked_rate(camera_settings: Settings) -> None:
    config = CameraConfig(bank_frames=4, size=SIZE_PX, seed=11)
    sent: list[SentFrame] = []
    with Camera(camera_settings, config) as cam:
        started = time.monotonic()
        report = cam.run(count=20, rate_fps=10, on_sent=sent.append)
        wall_s = time.monotonic() - started
    assert report.sent == 20 and report.blob_images == 0  # small frames all fit inline
    assert report.achieved_fps == pytest.approx(10, rel=0.15)
    assert 1.8 <= wall_s < 4.0  # 19 intervals of 0.1 s, then the last acknowledgement
    records = _consume(camera_settings, {s.frame_id for s in sent})
    assert len(records) == 20 and len({s.item for s in sent}) == 4  # the bank, cycled


@pytest.mark.slow
def test_the_cli_sends_frames(camera_settings: Settings, tiny_dataset: Path) -> None:
    from foveal.cli import app

    env = {"FOVEAL_HOME": str(camera_settings.home_dir), "FOVEAL_KAFKA_BOOTSTRAP": "",
           "FOVEAL_KAFKA_PORT": str(camera_settings.kafka_port)}
    result = CliRunner().invoke(app, ["camera", "--count", "3", "--rate", "0", "--station", "cli-1",
                                      "--source", str(tiny_dataset), "--sequence-share", "0.5"], env=env)
    assert result.exit_code == 0, result.output
    assert "sent 3 records (2 frames, 1 sequences)" in result.output


def _image_bytes(settings: Settings, image: frame_pb2.Image) -> bytes:
    if image.WhichOneof("source") == "inline":
        return image.inline
    data = blobs.fetch(settings, image.blob.uri, image.blob.sha256, image.blob.size_bytes)
    assert hashlib.sha256(data).hexdigest() == image.blob.sha256
    return data


def _consume(settings: Settings, frame_ids: set[str], timeout_s: float = 30.0) -> dict[str, Any]:
    """Records of `foveal.frames` by frame id, read from the start of every partition."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_address, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(messaging.FRAMES_TOPIC) or set()
        consumer.assign([TopicPartition(messaging.FRAMES_TOPIC, p) for p in partitions])
        consumer.seek_to_beginning()
        found: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    frame_id = messaging.decode_frame(record.value).frame_id
                    if frame_id in frame_ids:
                        found[frame_id] = record
            if frame_ids <= found.keys():
                return found
        raise AssertionError(f"only {len(found)} records arrived on {messaging.FRAMES_TOPIC}")
    finally:
        consumer.close()
