"""The one root exception type of foveal and one subclass per concern.

Edges translate these: the CLI into a one-line message and an exit code, gRPC into a status,
the ingest worker into a DLQ record. Nothing else catches broadly.
"""

from __future__ import annotations


class FovealError(Exception):
    """Root of every error foveal raises on purpose."""


class ConfigError(FovealError):
    """Settings are missing or invalid; the message says what to set."""


class StackError(FovealError):
    """A part of the stack (kafka, postgres, triton) could not start, be reached or stop."""

    def __init__(self, part: str, message: str, log_tail: str | None = None) -> None:
        self.part = part
        self.log_tail = log_tail
        super().__init__(f"{part}: {message}")


class CodecError(FovealError):
    """A message on a topic could not be decoded or is not a valid contract message."""


class StorageError(FovealError):
    """The database rejected or could not complete an operation."""


class DashboardError(FovealError):
    """A review-dashboard request cannot be served; `status_code` is the HTTP status it becomes."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        self.status_code = status_code
        super().__init__(message)
