"""Consumer lag of an ingest group sampled from the broker, and its plot: what `foveal bench
pipeline` records while frames flow.

`LagSampler(bootstrap, group, topic).start()` samples, every `interval_s` from a daemon thread,
the topic's end offsets and the group's committed offsets (the durable watermark the workers
commit only after PostgreSQL has the rows) and keeps one `LagSample` per tick; `stop()` ends it.
`plot_lag(samples, spans, path, title)` draws lag over time and produced / committed records
(PNG).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LagSample:
    t_s: float  # seconds since the sampler started
    end: int  # records on the topic (sum of end offsets)
    committed: int  # records below the group's committed offsets

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


class LagSampler:
    """Samples end and committed offsets of `topic` for `group` until `stop()`."""

    def __init__(self, bootstrap: str, group: str, topic: str, interval_s: float = 0.5) -> None:
        self.group, self.topic, self.interval_s = group, topic, interval_s
        servers = bootstrap.split(",")
        self._consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
        self._admin = KafkaAdminClient(bootstrap_servers=servers)
        partitions = sorted(self._consumer.partitions_for_topic(topic) or ())
        self._tps = [TopicPartition(topic, p) for p in partitions]
        self.samples: list[LagSample] = []
        self.started = time.monotonic()
        self.started_epoch = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-sampler", daemon=True)

    def start(self) -> LagSampler:
        self.started, self.started_epoch = time.monotonic(), time.time()
        self._thread.start()
        return self

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def sample(self) -> LagSample:
        ends = self._consumer.end_offsets(self._tps)
        offsets = self._admin.list_group_offsets({self.group: None}).get(self.group, {})
        committed = sum(offsets[tp].offset for tp in self._tps if tp in offsets and offsets[tp].offset >= 0)
        return LagSample(round(self.now_s(), 3), sum(ends.values()), committed)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.samples.append(self.sample())
            except KafkaError as exc:  # a missed tick; the next one tries again
                log.warning("lag sample of %s / %s failed: %s", self.group, self.topic, exc)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def stop(self) -> list[LagSample]:
        """Stop sampling and close the clients (a second call only returns the samples)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=10)
            self._consumer.close()
            self._admin.close()
        return self.samples


def lag_slope_per_s(samples: Sequence[LagSample], start_s: float, end_s: float) -> float | None:
    """Least-squares slope of the lag (records/s) between two times; None with < 3 samples.

    >>> lag_slope_per_s([LagSample(t, 10 + 2 * t, 0) for t in range(5)], 0, 4)
    2.0
    """
    window = [s for s in samples if start_s <= s.t_s <= end_s]
    if len(window) < 3:
        return None
    ts = [s.t_s for s in window]
    lags = [float(s.lag) for s in window]
    t_mean, l_mean = sum(ts) / len(ts), sum(lags) / len(lags)
    spread = sum((t - t_mean) ** 2 for t in ts)
    if spread == 0:
        return None
    return round(sum((t - t_mean) * (lag - l_mean) for t, lag in zip(ts, lags, strict=True)) / spread, 3)


def plot_lag(samples: Sequence[LagSample], spans: dict[str, tuple[float, float]], path: Path,
             title: str, written_s: Sequence[float] = ()) -> Path:
    """Lag over time (top) and produced / committed records (bottom), with the inspection rows
    as PostgreSQL wrote them (`written_s`, on the sampler's clock); `spans` shade phases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [s.t_s for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, constrained_layout=True)
    top.plot(ts, [s.lag for s in samples], color="tab:red", lw=1.5)
    top.set_ylabel("consumer lag (records)")
    top.set_title(title, fontsize=10)
    bottom.plot(ts, [s.end for s in samples], label="produced (end offsets)", color="tab:blue")
    bottom.plot(ts, [s.committed for s in samples], label="committed offsets", color="tab:green")
    if written_s:
        bottom.step(sorted(written_s), range(1, len(written_s) + 1), where="post", color="tab:purple",
                    lw=1, label="inspection rows written")
    bottom.set_ylabel("records")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    for (name, (start, end)), colour in zip(spans.items(), ("#dddddd", "#cce5ff", "#ffe5cc"), strict=False):
        for axis in (top, bottom):
            axis.axvspan(start, end, color=colour, alpha=0.5, lw=0, label=f"{name} produced" if axis is top
                         else None)
    top.legend(loc="upper left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
