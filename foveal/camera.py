"""The camera simulator: FovealBench-style frames and sequences onto `foveal.frames` at a rate.

`Camera(settings, CameraConfig(...)).run(count=200, rate_fps=5)` sends `count` records, one
every 1/rate seconds, round-robin over the configured stations, and returns a `CameraReport`;
`foveal camera` is the same with a progress bar. Each record is a valid `FrameEnvelope` (fresh
UUID, line, station, camera, part serial, product, capture time) keyed by station, sent by an
idempotent producer with acks=all. An image travels inline while the record's inline images
stay within `frame_inline_max_bytes`; the rest go to the blob store and travel as a `BlobRef`
(claim check), stored before the record is sent.

Rendering costs about 0.5 s a frame, far slower than a line, so the camera does not render
while it sends: it renders a **bank** of distinct frames and sequences once, with the plant-data
renderer, into `<home>/camera/bank-…` (keyed by seed, counts and size, reused by later runs),
and cycles through it in a seeded order with fresh frame ids. `--source DIR` replays any dataset
folder (a FovealBench split, an import) the same way instead. The files' encoded bytes are sent
as they are, so sending costs a file read, not an encode. Ground truth rides along in the
`sim.*` attributes (item, truth, difficulty), for the demo's and the load test's tallies.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from foveal import messaging
from foveal.blobs import BlobStore, store_for
from foveal.errors import FovealError
from foveal.plant.dataset import DatasetError, Label, read_labels
from foveal.settings import Settings
from foveal.v1 import frame_pb2

log = logging.getLogger(__name__)

BANK_VERSION = "v1"  # bump when the renderer changes what a seed draws
MIME_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
# A record holds at most frame_inline_max_bytes of images plus metadata well under this.
RECORD_HEADROOM_BYTES = 1 << 20
SEND_TIMEOUT_S = 30.0


class CameraError(FovealError):
    """The simulator cannot run: a bad source, a bad option, or the broker refused a record."""


@dataclass(frozen=True)
class CameraConfig:
    """What the simulated camera films and how it labels the frames."""

    line: str = "line-1"
    stations: tuple[str, ...] = ("station-1",)
    camera: str = "cam-1"
    sequence_share: float = 0.0  # share of records that are multi-frame sequences
    seed: int = 0
    source: Path | None = None  # a dataset folder to replay; None: the rendered bank
    bank_frames: int = 32  # distinct single frames in the rendered bank
    bank_sequences: int | None = None  # None: 0 without sequences, else max(2, bank_frames // 4)
    size: int | None = None  # long side of rendered frames (None: 1024–2048 drawn per frame)
    inline_max_bytes: int | None = None  # None: settings.frame_inline_max_bytes
    render_workers: int = 1  # processes rendering the bank (the machine has other work)
    topic: str = messaging.FRAMES_TOPIC  # where frames go (tests use a topic of their own)

    def __post_init__(self) -> None:
        if not self.stations or not all(self.stations):
            raise CameraError("give at least one station, and no empty station id")
        if not 0.0 <= self.sequence_share <= 1.0:
            raise CameraError(f"sequence share {self.sequence_share} must be within [0, 1]")
        if self.bank_frames < 1 or (self.bank_sequences is not None and self.bank_sequences < 0):
            raise CameraError("the bank needs at least one frame and no negative sequence count")
        if self.inline_max_bytes is not None and self.inline_max_bytes < 0:
            raise CameraError("inline max bytes must be >= 0")

    @property
    def sequences_in_bank(self) -> int:
        if self.bank_sequences is not None:
            return self.bank_sequences
        return 0 if self.sequence_share == 0 else max(2, self.bank_frames // 4)


@dataclass(frozen=True)
class BankItem:
    """One thing the camera can film: a frame, or the frames of a sequence, as encoded files."""

    label: Label
    paths: tuple[Path, ...]

    @property
    def is_sequence(self) -> bool:
        return self.label.is_sequence


@dataclass(frozen=True)
class Bank:
    folder: Path
    frames: tuple[BankItem, ...]
    sequences: tuple[BankItem, ...]

    @classmethod
    def load(cls, folder: Path) -> Bank:
        """Index a dataset folder's images (their bytes are read when sent)."""
        try:
            labels = read_labels(folder)
        except DatasetError as exc:
            raise CameraError(f"cannot replay {folder}: {exc}") from exc
        frames: list[BankItem] = []
        sequences: list[BankItem] = []
        for label in labels:
            rels = label.frames[: messaging.MAX_SEQUENCE_FRAMES] if label.frames else [label.image or ""]
            item = BankItem(label, tuple(folder / rel for rel in rels))
            for path in item.paths:
                if path.suffix.lower() not in MIME_TYPES:
                    raise CameraError(f"{path}: unsupported image type (use {', '.join(MIME_TYPES)})")
            (sequences if label.is_sequence else frames).append(item)
        return cls(folder, tuple(frames), tuple(sequences))


def bank_folder(settings: Settings, config: CameraConfig) -> Path:
    """Where the rendered bank of this configuration is cached."""
    size = config.size if config.size is not None else "any"
    name = f"bank-{BANK_VERSION}-seed{config.seed}-f{config.bank_frames}-s{config.sequences_in_bank}-px{size}"
    return settings.home_dir / "camera" / name


def ensure_bank(settings: Settings, config: CameraConfig, *, progress: bool = False) -> Path:
    """The folder to replay: `config.source`, else the cached bank, rendered first if missing."""
    if config.source is not None:
        return config.source
    folder = bank_folder(settings, config)
    if folder.is_dir():
        return folder
    from foveal.plant.fovealbench import DEFECT_SHARE
    from foveal.plant.generate import generate

    # Render beside the cache and rename into place, so two cameras starting together never
    # read half a bank; the loser of the race keeps the winner's (identical) bank.
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}")
    log.info("rendering the camera bank (%d frames, %d sequences) into %s",
             config.bank_frames, config.sequences_in_bank, folder)
    try:
        generate(staging, n=config.bank_frames, seed=config.seed, defect_share=DEFECT_SHARE,
                 sequences=config.sequences_in_bank, workers=config.render_workers,
                 size=config.size, progress=progress)
        os.rename(staging, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


@dataclass(frozen=True)
class SentFrame:
    """A record the broker acknowledged."""

    frame_id: str
    station: str
    partition: int
    offset: int
    item: str  # the bank item filmed
    sequence: bool
    inline_images: int
    blob_images: int


@dataclass
class CameraReport:
    requested_fps: float | None
    sent: int = 0
    frames: int = 0  # single-frame records
    sequences: int = 0  # sequence records
    inline_images: int = 0
    blob_images: int = 0
    seconds: float = 0.0  # from the first send to the last acknowledgement
    send_span_s: float = 0.0  # from the first send to the last

    @property
    def achieved_fps(self) -> float:
        """The send rate over the intervals between sends (what the schedule controls)."""
        if self.sent < 2 or self.send_span_s <= 0:
            return math.nan
        return (self.sent - 1) / self.send_span_s

    def summary(self) -> str:
        wanted = f" (asked {self.requested_fps:g})" if self.requested_fps else ""
        return (f"sent {self.sent} records ({self.frames} frames, {self.sequences} sequences); "
                f"images {self.inline_images} inline, {self.blob_images} by claim check; "
                f"{self.achieved_fps:.2f} records/s{wanted} in {self.seconds:.1f} s")


@dataclass
class _Prepared:
    item: BankItem
    images: list[frame_pb2.Image] = field(default_factory=list)
    inline: int = 0
    blobs: int = 0


def is_sequence_turn(index: int, share: float) -> bool:
    """Spread sequences evenly: record `index` is one when the running share crosses a whole.

    >>> [is_sequence_turn(i, 0.25) for i in range(8)]
    [False, False, False, True, False, False, False, True]
    """
    return math.floor((index + 1) * share + 1e-9) > math.floor(index * share + 1e-9)


class Camera:
    """Sends frames from a bank to `foveal.frames`; use as a context manager or call `close()`."""

    def __init__(self, settings: Settings, config: CameraConfig | None = None, *,
                 progress: bool = False, store: BlobStore | None = None) -> None:
        self.settings = settings
        self.config = config or CameraConfig()
        self.progress = progress
        self.inline_max_bytes = (self.config.inline_max_bytes if self.config.inline_max_bytes is not None
                                 else settings.frame_inline_max_bytes)
        self.store = store or store_for(settings)
        self.bank = Bank.load(ensure_bank(settings, self.config, progress=progress))
        self._check_bank()
        self._run_id = uuid.uuid4().hex[:6]
        # the digest of each bank file sent by claim check, keyed by (path, size, mtime): the bank
        # is sent over and over, and hashing MB-sized frames each time cost the simulator a third
        # of its CPU in a 2,000-frame bench
        self._digests: dict[tuple[Path, int, int], str] = {}
        self._producer = self._connect()

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._producer.close(timeout=SEND_TIMEOUT_S)

    def run(self, count: int, rate_fps: float | None = None,
            on_sent: Callable[[SentFrame], None] | None = None) -> CameraReport:
        """Send `count` records, one every 1/rate_fps s (None or 0: as fast as possible);
        `on_sent` sees each acknowledged record, in send order, on this thread."""
        if count < 0:
            raise CameraError(f"count must be >= 0, got {count}")
        rate = rate_fps or None
        if rate is not None and rate < 0:
            raise CameraError(f"rate must be >= 0 frames/s, got {rate_fps}")
        report = CameraReport(requested_fps=rate)
        pending: deque[tuple[Any, SentFrame]] = deque()
        items = self._schedule(count)
        with self._progress_bar() as bar:
            job = bar.add_task("camera", total=count, rate="", kinds="")
            start = time.monotonic()
            for index, item in enumerate(items):
                prepared = self._prepare(item)
                if rate is not None:
                    time.sleep(max(0.0, start + index / rate - time.monotonic()))
                if index == 0:
                    start = time.monotonic()
                pending.append(self._send(index, prepared))
                report.send_span_s = time.monotonic() - start
                self._tally(report, prepared)
                self._drain(pending, report, on_sent, wait=False)
                shown = "" if math.isnan(report.achieved_fps) else f"{report.achieved_fps:.2f} records/s"
                bar.update(job, advance=1, rate=shown,
                           kinds=f"{report.inline_images} inline, {report.blob_images} claim check")
            self._producer.flush(timeout=SEND_TIMEOUT_S)
            self._drain(pending, report, on_sent, wait=True)
            report.seconds = time.monotonic() - start if count else 0.0
        log.info("camera %s: %s", self.config.line, report.summary())
        return report

    # -- what to send ---------------------------------------------------------------------
    def _check_bank(self) -> None:
        share, bank = self.config.sequence_share, self.bank
        if share > 0 and not bank.sequences:
            raise CameraError(f"{bank.folder} has no sequences; use --sequence-share 0")
        if share < 1 and not bank.frames:
            raise CameraError(f"{bank.folder} has no single frames; use --sequence-share 1")

    def _schedule(self, count: int) -> Iterator[BankItem]:
        """Items in a seeded order, cycling; sequences spread evenly at the configured share."""
        rng = np.random.default_rng(self.config.seed)
        frames = [self.bank.frames[k] for k in rng.permutation(len(self.bank.frames))]
        sequences = [self.bank.sequences[k] for k in rng.permutation(len(self.bank.sequences))]
        n_frames = n_sequences = 0
        for index in range(count):
            if is_sequence_turn(index, self.config.sequence_share):
                yield sequences[n_sequences % len(sequences)]
                n_sequences += 1
            else:
                yield frames[n_frames % len(frames)]
                n_frames += 1

    def _prepare(self, item: BankItem) -> _Prepared:
        """Read the item's images; inline while the record's budget lasts, else claim checks."""
        prepared = _Prepared(item)
        budget = self.inline_max_bytes
        for path in item.paths:
            try:
                stat = path.stat()
                data = path.read_bytes()
            except OSError as exc:
                raise CameraError(f"cannot read {path}: {exc.strerror or exc}") from exc
            mime = MIME_TYPES[path.suffix.lower()]
            image = frame_pb2.Image(mime_type=mime, width=item.label.width, height=item.label.height)
            if len(data) <= budget:
                image.inline = data
                budget -= len(data)
                prepared.inline += 1
            else:
                key = (path, stat.st_size, stat.st_mtime_ns)
                known = self._digests.get(key) if len(data) == stat.st_size else None
                ref = self.store.put(data, mime, known)
                self._digests[key] = ref.sha256
                image.blob.CopyFrom(frame_pb2.BlobRef(uri=ref.uri, sha256=ref.sha256,
                                                      size_bytes=ref.size_bytes))
                prepared.blobs += 1
            prepared.images.append(image)
        return prepared

    def _envelope(self, index: int, prepared: _Prepared, station: str) -> frame_pb2.FrameEnvelope:
        label = prepared.item.label
        envelope = frame_pb2.FrameEnvelope(
            frame_id=str(uuid.uuid4()), line=self.config.line, station=station,
            camera=self.config.camera, part_serial=f"SN-{self._run_id}-{index:07d}",
            product=label.product,
        )
        envelope.captured_at.FromDatetime(datetime.now(UTC))
        if prepared.item.is_sequence:
            envelope.sequence.extend(prepared.images)
        else:
            envelope.image.CopyFrom(prepared.images[0])
        envelope.attributes["sim.item"] = label.id
        envelope.attributes["sim.truth"] = label.defect_type
        if label.difficulty is not None:
            envelope.attributes["sim.difficulty"] = label.difficulty
        return envelope

    # -- sending --------------------------------------------------------------------------
    def _connect(self) -> KafkaProducer:
        # kafka-python retries a refused bootstrap for tens of seconds; a TCP probe fails fast.
        servers = self.settings.kafka_address.split(",")
        if not any(_reachable(server, self.settings.connect_timeout_s) for server in servers):
            raise CameraError(f"no Kafka broker answers at {self.settings.kafka_address}; "
                              "start one with `foveal stack up` or set FOVEAL_KAFKA_BOOTSTRAP")
        try:
            return KafkaProducer(
                bootstrap_servers=servers,
                client_id=f"foveal-camera-{self.config.line}",
                acks="all", enable_idempotence=True,
                max_request_size=self.inline_max_bytes + RECORD_HEADROOM_BYTES,
                linger_ms=5, request_timeout_ms=int(SEND_TIMEOUT_S * 1000),
            )
        except KafkaError as exc:
            raise CameraError(f"Kafka at {self.settings.kafka_address}: {exc}") from exc

    def _send(self, index: int, prepared: _Prepared) -> tuple[Any, SentFrame]:
        station = self.config.stations[index % len(self.config.stations)]
        envelope = self._envelope(index, prepared, station)
        value = messaging.encode_frame(envelope)
        try:
            future = self._producer.send(self.config.topic, key=messaging.frame_key(station),
                                         value=value)
        except KafkaError as exc:
            raise CameraError(f"frame {envelope.frame_id}: the producer refused it: {exc}") from exc
        return future, SentFrame(envelope.frame_id, station, -1, -1, prepared.item.label.id,
                                 prepared.item.is_sequence, prepared.inline, prepared.blobs)

    @staticmethod
    def _tally(report: CameraReport, prepared: _Prepared) -> None:
        report.sent += 1
        report.sequences += prepared.item.is_sequence
        report.frames += not prepared.item.is_sequence
        report.inline_images += prepared.inline
        report.blob_images += prepared.blobs

    @staticmethod
    def _drain(pending: deque[tuple[Any, SentFrame]], report: CameraReport,
               on_sent: Callable[[SentFrame], None] | None, *, wait: bool) -> None:
        """Hand acknowledged records to `on_sent` in order; raise on the first that failed."""
        while pending and (wait or pending[0][0].is_done):
            future, info = pending.popleft()
            try:
                meta = future.get(timeout=SEND_TIMEOUT_S)
            except KafkaError as exc:
                raise CameraError(f"frame {info.frame_id}: the broker did not take it: {exc}") from exc
            if on_sent is not None:
                on_sent(SentFrame(info.frame_id, info.station, meta.partition, meta.offset, info.item,
                                  info.sequence, info.inline_images, info.blob_images))

    def _progress_bar(self) -> Progress:
        return Progress(
            TextColumn("camera"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[kinds]}"), TimeElapsedColumn(), disable=not self.progress,
        )


def _reachable(server: str, timeout_s: float) -> bool:
    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False
