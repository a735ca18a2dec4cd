"""Orchestration of the stack's parts: start in parallel, wait healthy, report, stop.

See `foveal/stack/__init__.py` for the overview. A lock file serialises concurrent `up`/`down`
calls on one home directory, which is what makes `up` twice harmless.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from foveal.errors import StackError
from foveal.settings import Settings
from foveal.stack import process
from foveal.stack.kafka import KafkaPart
from foveal.stack.part import Health, Part
from foveal.stack.postgres import PostgresPart
from foveal.stack.triton import TritonPart

log = logging.getLogger(__name__)

PART_TYPES: dict[str, type[Part]] = {"kafka": KafkaPart, "postgres": PostgresPart, "triton": TritonPart}
POLL_S = 0.25


@dataclass(frozen=True)
class PartStatus:
    part: str
    mode: str  # "embedded" | "external"
    address: str
    pid: int | None
    state: str  # "healthy" | "unhealthy" | "crashed" | "stopped" | "unreachable"
    detail: str = ""
    log_tail: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "healthy"


class Stack:
    def __init__(self, settings: Settings, parts: list[str] | None = None) -> None:
        self.settings = settings
        names = parts or list(PART_TYPES)
        unknown = [n for n in names if n not in PART_TYPES]
        if unknown:
            raise StackError(unknown[0], f"unknown part; choose from {', '.join(PART_TYPES)}")
        self.parts: dict[str, Part] = {n: PART_TYPES[n](settings) for n in names}
        self.store = process.ProcessStore(settings.home_dir)

    # -- up -------------------------------------------------------------------------------
    def up(self) -> list[PartStatus]:
        """Start every part that is not running, then wait for all; raise the first failure
        only after every part had its chance, so one broken part does not hide the others."""
        with self._locked():
            started: dict[str, process.ProcessRecord | None] = {}
            errors: list[StackError] = []
            for name, part in self.parts.items():
                try:
                    started[name] = self._start(part)
                except StackError as exc:
                    errors.append(exc)
            for name, record in started.items():
                try:
                    self._await_healthy(self.parts[name], record)
                    note = self.parts[name].after_start()
                    if note:
                        log.info("%s: %s", name, note)
                except StackError as exc:
                    errors.append(exc)
        if errors:
            raise _combine(errors)
        return self.status()

    def _start(self, part: Part) -> process.ProcessRecord | None:
        if part.external:
            return None
        record = self.store.read(part.name)
        if record is not None:
            if process.process_of(record) is not None:
                return record  # already running: `up` twice is harmless
            log.warning("%s: recorded process %d is gone; last log lines:\n%s", part.name,
                        record.pid, process.log_tail(record.log_path))
            self.store.remove(part.name)
        launch = part.prepare()
        for port in launch.ports:
            if process.port_in_use(self.settings.bind_host, port):
                raise StackError(part.name, f"port {port} on {self.settings.bind_host} is taken by "
                                            f"another process; choose another port or set "
                                            f"{part.endpoint_env} to use that server")
        log.info("%s: starting %s", part.name, launch.cmd[0])
        return process.spawn(part.name, launch.cmd, self.store, cwd=part.workdir,
                             env=launch.env, user=launch.user)

    def _await_healthy(self, part: Part, record: process.ProcessRecord | None) -> None:
        deadline = time.monotonic() + (self.settings.start_timeout_s if record else
                                       self.settings.connect_timeout_s)
        health = Health(False, "not checked")
        while time.monotonic() < deadline:
            if record is not None and process.process_of(record) is None:
                code = process.exit_code(record)
                raise StackError(part.name, f"process exited during start (code {code})",
                                 process.log_tail(record.log_path))
            health = part.check()
            if health.ok:
                return
            time.sleep(POLL_S)
        if record is None:
            raise StackError(part.name, f"external {part.name} at {part.address} is unreachable "
                                        f"({part.endpoint_env}): {health.detail}")
        raise StackError(part.name, f"not healthy after {self.settings.start_timeout_s:.0f} s: "
                                    f"{health.detail}", process.log_tail(record.log_path))

    # -- status ---------------------------------------------------------------------------
    def status(self) -> list[PartStatus]:
        return [self._status(part) for part in self.parts.values()]

    def _status(self, part: Part) -> PartStatus:
        if part.external:
            health = part.check()
            return PartStatus(part.name, "external", part.address, None,
                              "healthy" if health.ok else "unreachable", health.detail)
        record = self.store.read(part.name)
        if record is None:
            return PartStatus(part.name, "embedded", part.address, None, "stopped")
        if process.process_of(record) is None:
            return PartStatus(part.name, "embedded", part.address, record.pid, "crashed",
                              "process is gone", process.log_tail(record.log_path))
        health = part.check()
        return PartStatus(part.name, "embedded", part.address, record.pid,
                          "healthy" if health.ok else "unhealthy", health.detail,
                          None if health.ok else process.log_tail(record.log_path))

    # -- down -----------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every embedded part (reverse start order) and any straggler under <home>."""
        stopped = []
        with self._locked():
            for part in reversed(list(self.parts.values())):
                record = self.store.read(part.name)
                if record is None:
                    continue
                process.stop(record, part.stop_signal, part.stop_timeout_s)
                self.store.remove(part.name)
                stopped.append(part.name)
            if set(self.parts) == set(PART_TYPES):
                stragglers = process.processes_under(self.settings.home_dir)
                if stragglers:
                    log.warning("killing %d leftover process(es) under %s",
                                len(stragglers), self.settings.home_dir)
                    process.kill_all(stragglers)
        return stopped

    @contextmanager
    def _locked(self) -> Iterator[None]:
        home = self.settings.home_dir
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "stack.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _combine(errors: list[StackError]) -> StackError:
    if len(errors) == 1:
        return errors[0]
    message = "; ".join(str(e) for e in errors)
    tails = "\n".join(f"[{e.part}]\n{e.log_tail}" for e in errors if e.log_tail)
    return StackError("stack", message, tails or None)
