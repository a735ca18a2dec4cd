"""The ingest worker: `foveal.frames` → Reasoner.Inspect → PostgreSQL + `foveal.verdicts`.

`IngestWorker(settings, IngestConfig.from_settings(settings)).run()` consumes as group
`foveal-ingest` until `stop()`; `foveal serve ingest` runs it until SIGINT / SIGTERM. An offset
is committed only once its record and every earlier one of its partition are durably handled:
inspected, written in one transaction idempotent on frame_id, verdict produced, or on the DLQ.
`handler` holds what happens to one record, `worker` the consumer loop, `tracker` the
per-partition watermark. See services/ingest/README.md.
"""

from foveal.ingest.handler import Abandoned, FrameHandler, Limits, Poison, Topics, Transient
from foveal.ingest.worker import IngestConfig, IngestWorker

__all__ = ["Abandoned", "FrameHandler", "IngestConfig", "IngestWorker", "Limits", "Poison", "Topics",
           "Transient"]
