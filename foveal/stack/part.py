"""What every part of the stack (kafka, postgres, triton) tells the stack about itself.

A part is either embedded (foveal starts its process from a pinned wheel, on loopback, data
under `<home>/<part>/`) or external (its endpoint variable is set; foveal starts nothing and
only checks it). The stack drives parts through this small interface.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from foveal.settings import Settings


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Launch:
    """How to start an embedded part's process."""

    cmd: list[str]
    env: dict[str, str] | None = None
    user: str | None = None
    ports: list[int] = field(default_factory=list)


class Part(ABC):
    name: str
    endpoint_env: str
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout_s: float = 15.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def workdir(self) -> Path:
        return self.settings.home_dir / self.name

    @property
    @abstractmethod
    def external(self) -> bool:
        """True when the endpoint variable points at a part foveal must not start."""

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients reach the part (host:port or URL without password)."""

    @abstractmethod
    def prepare(self) -> Launch:
        """Make the part's files ready (init data, link backends) and say how to start it."""

    @abstractmethod
    def check(self) -> Health:
        """One quick health probe; never raises for an unreachable part."""

    def after_start(self) -> str:
        """Bring a healthy part to the state foveal needs (topics, schema); returns a note."""
        return ""
