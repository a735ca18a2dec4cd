"""The domain types of foveal: verdicts, the defect taxonomy, boxes, frame metadata, models.

Plain frozen dataclasses and enums with their invariants checked on construction (a bad value
raises `ValueError`; edges translate it into their own error). No I/O, no torch, no protobuf:
everything else in foveal imports this module, and it imports nothing of foveal. Later issues
add the reasoning steps and the inspection result here.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime


class Verdict(enum.StrEnum):
    """What an inspection concluded; the values are part of the contract (JSON, SQL, UI)."""

    OK = "ok"
    DEFECT = "defect"
    UNCERTAIN = "uncertain"


NO_DEFECT = "none"
SCRATCH = "scratch"
CRACK = "crack"
PIT = "pit"
STAIN = "stain"
BURN = "burn"
DENT = "dent"

# The default taxonomy; the names are part of the contract (model answers, SQL, dashboards).
DEFECT_TYPES: tuple[str, ...] = (NO_DEFECT, SCRATCH, CRACK, PIT, STAIN, BURN, DENT)

# Names end up inside `\boxed{...}`, SQL values and URLs, so keep them to one safe alphabet.
_DEFECT_NAME = re.compile(r"[a-z0-9_]{1,64}")


def check_defect_name(name: str) -> str:
    """Return `name` if it is a well-formed defect type name, else raise ValueError.

    >>> check_defect_name("scratch")
    'scratch'
    """
    if not isinstance(name, str) or not _DEFECT_NAME.fullmatch(name):
        raise ValueError(f"defect type {name!r} must be 1-64 characters of [a-z0-9_]")
    return name


@dataclass(frozen=True)
class Taxonomy:
    """The defect types a product line inspects for; `none` is always one of them.

    >>> Taxonomy().restrict(["crack"]).extend(["porosity"]).names
    ('none', 'crack', 'porosity')
    """

    names: tuple[str, ...] = DEFECT_TYPES

    def __post_init__(self) -> None:
        for name in self.names:
            check_defect_name(name)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"taxonomy {self.names!r} names a defect type twice")
        if NO_DEFECT not in self.names:
            raise ValueError(f"taxonomy {self.names!r} must contain {NO_DEFECT!r}")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @property
    def defects(self) -> tuple[str, ...]:
        """The names that denote an actual defect (all but `none`)."""
        return tuple(n for n in self.names if n != NO_DEFECT)

    def restrict(self, names: Iterable[str]) -> Taxonomy:
        """This taxonomy cut down to `names` (plus `none`), keeping this taxonomy's order."""
        wanted = set(names)
        unknown = sorted(wanted - set(self.names))
        if unknown:
            raise ValueError(f"cannot restrict taxonomy to unknown defect types {unknown}")
        return Taxonomy(tuple(n for n in self.names if n in wanted or n == NO_DEFECT))

    def extend(self, names: Iterable[str]) -> Taxonomy:
        """This taxonomy plus the product line's own `names` (names already present are kept)."""
        added = tuple(dict.fromkeys(n for n in names if n not in self.names))
        return Taxonomy(self.names + added)


@dataclass(frozen=True)
class Box:
    """A rectangle normalized to the original frame: 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1."""

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        # Chained comparisons are False for NaN, so NaN is rejected here as well.
        if not (0.0 <= self.x1 < self.x2 <= 1.0 and 0.0 <= self.y1 < self.y2 <= 1.0):
            raise ValueError(
                f"box ({self.x1}, {self.y1}, {self.x2}, {self.y2}) must satisfy "
                "0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1"
            )

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Pixel box (left, top, right, bottom), right/bottom exclusive, as PIL's crop takes it.

        Rounds outwards so the pixels always cover the region and are never empty.

        >>> Box(0.25, 0.5, 0.5, 1.0).to_pixels(100, 10)
        (25, 5, 50, 10)
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"image size {width}x{height} must be positive")
        left = min(math.floor(self.x1 * width), width - 1)
        top = min(math.floor(self.y1 * height), height - 1)
        right = max(min(math.ceil(self.x2 * width), width), left + 1)
        bottom = max(min(math.ceil(self.y2 * height), height), top + 1)
        return left, top, right, bottom


@dataclass(frozen=True)
class ModelRef:
    """Which model produced a result: a name and a registered version."""

    name: str
    version: str


@dataclass(frozen=True)
class FrameMeta:
    """Everything known about a frame except its pixels: who made it, where, when."""

    frame_id: uuid.UUID
    line: str
    station: str
    camera: str
    part_serial: str
    product: str
    captured_at: datetime
    # Left out of the hash so a FrameMeta can still key a dict or a set.
    attributes: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.frame_id, uuid.UUID):
            raise ValueError(f"frame_id {self.frame_id!r} must be a uuid.UUID")
        # Naive datetimes are ambiguous across plants in different time zones.
        if self.captured_at.tzinfo is None or self.captured_at.utcoffset() is None:
            raise ValueError(f"captured_at {self.captured_at!r} must be timezone-aware")
