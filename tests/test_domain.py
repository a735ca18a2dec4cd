"""Tests of foveal.domain: verdict values, the defect taxonomy, boxes, frame metadata.

Run: `.venv/bin/python -m pytest tests/test_domain.py -q`.
"""

from __future__ import annotations

import dataclasses
import doctest
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foveal import domain
from foveal.domain import DEFECT_TYPES, Box, FrameMeta, ModelRef, Taxonomy, Verdict


def _meta(**changes: object) -> FrameMeta:
    fields: dict[str, object] = {
        "frame_id": uuid.uuid4(),
        "line": "line-1",
        "station": "station-3",
        "camera": "cam-a",
        "part_serial": "SN-0001",
        "product": "bracket-7",
        "captured_at": datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
        "attributes": {"lot": "L42"},
    }
    fields.update(changes)
    return FrameMeta(**fields)  # type: ignore[arg-type]


def test_doctests_pass() -> None:
    assert doctest.testmod(domain).failed == 0


def test_verdict_values_are_the_contract_strings() -> None:
    assert [v.value for v in Verdict] == ["ok", "defect", "uncertain"]
    assert Verdict("defect") is Verdict.DEFECT
    assert f"{Verdict.OK}" == "ok"


def test_default_taxonomy_is_the_contract_names() -> None:
    assert DEFECT_TYPES == ("none", "scratch", "crack", "pit", "stain", "burn", "dent")
    assert Taxonomy().names == DEFECT_TYPES
    assert Taxonomy().defects == DEFECT_TYPES[1:]


def test_taxonomy_restrict_keeps_none_and_the_taxonomy_order() -> None:
    restricted = Taxonomy().restrict(["dent", "scratch"])

    assert restricted.names == ("none", "scratch", "dent")
    assert "crack" not in restricted


def test_taxonomy_restrict_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="porosity"):
        Taxonomy().restrict(["scratch", "porosity"])


def test_taxonomy_extend_adds_product_names_once() -> None:
    extended = Taxonomy().restrict(["crack"]).extend(["porosity", "crack", "porosity"])

    assert extended.names == ("none", "crack", "porosity")
    assert "porosity" in extended


@pytest.mark.parametrize("name", ["Scratch", "", "burr-mark", "rayure_é", "a b", "x" * 65])
def test_taxonomy_rejects_malformed_names(name: str) -> None:
    with pytest.raises(ValueError, match="a-z0-9_"):
        Taxonomy().extend([name])


def test_taxonomy_requires_none() -> None:
    with pytest.raises(ValueError, match="'none'"):
        Taxonomy(("scratch", "crack"))


def test_taxonomy_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="twice"):
        Taxonomy(("none", "pit", "pit"))


def test_taxonomy_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Taxonomy().names = ("none",)  # type: ignore[misc]


@pytest.mark.parametrize(
    "coords",
    [
        (0.5, 0.0, 0.5, 1.0),  # zero width
        (0.0, 0.6, 1.0, 0.4),  # upside down
        (-0.1, 0.0, 0.5, 0.5),
        (0.0, 0.0, 1.1, 0.5),
        (0.0, 0.0, 0.5, math.nan),
        (0.0, 0.0, math.inf, 0.5),
    ],
)
def test_box_rejects_coordinates_outside_the_unit_square_or_inverted(
    coords: tuple[float, float, float, float],
) -> None:
    with pytest.raises(ValueError, match="0 <= x1 < x2 <= 1"):
        Box(*coords)


def test_box_to_pixels_of_the_whole_frame_is_the_whole_frame() -> None:
    assert Box(0.0, 0.0, 1.0, 1.0).to_pixels(640, 480) == (0, 0, 640, 480)


def test_box_to_pixels_rounds_outwards() -> None:
    assert Box(0.101, 0.101, 0.199, 0.199).to_pixels(100, 100) == (10, 10, 20, 20)


def test_box_to_pixels_rejects_an_empty_image() -> None:
    with pytest.raises(ValueError, match="positive"):
        Box(0.0, 0.0, 1.0, 1.0).to_pixels(0, 10)


_UNIT = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(
    xs=st.tuples(_UNIT, _UNIT),
    ys=st.tuples(_UNIT, _UNIT),
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
)
def test_box_to_pixels_covers_the_region_inside_the_image_and_is_never_empty(
    xs: tuple[float, float], ys: tuple[float, float], width: int, height: int
) -> None:
    if xs[0] == xs[1] or ys[0] == ys[1]:
        return
    box = Box(min(xs), min(ys), max(xs), max(ys))

    left, top, right, bottom = box.to_pixels(width, height)

    assert 0 <= left < right <= width
    assert 0 <= top < bottom <= height
    assert left <= box.x1 * width and right >= box.x2 * width
    assert top <= box.y1 * height and bottom >= box.y2 * height


def test_frame_meta_requires_a_timezone_aware_capture_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _meta(captured_at=datetime(2026, 5, 1, 12, 0))


def test_frame_meta_accepts_any_utc_offset() -> None:
    local = timezone(timedelta(hours=2))

    assert _meta(captured_at=datetime(2026, 5, 1, 14, 0, tzinfo=local)).captured_at.utcoffset()


def test_frame_meta_requires_a_uuid_frame_id() -> None:
    with pytest.raises(ValueError, match=r"uuid\.UUID"):
        _meta(frame_id="0b9f6a3e-5c1d-4e2f-9a7b-3c4d5e6f7a8b")


def test_frame_meta_is_hashable_despite_its_attributes() -> None:
    meta = _meta()

    assert {meta: 1}[meta] == 1


def test_model_ref_compares_by_value() -> None:
    assert ModelRef("foveal-reasoner", "1") == ModelRef("foveal-reasoner", "1")
