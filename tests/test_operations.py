"""Tests of foveal.operations: crops from the full-resolution original, nested crops, padding and
the 28-px rule, the factor-28 sizes, select_frames, every malformed call, property and fuzz tests.

Run: `.venv/bin/python -m pytest tests/test_operations.py -q`.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import inspect
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from foveal import operations
from foveal.domain import Box
from foveal.operations import (
    ImageBudget,
    OperationResult,
    ToolCall,
    Workspace,
    budget_size,
    execute,
    pad_and_clamp,
    parse_answer,
    parse_tool_call,
    resize_to_budget,
    smart_resize,
)

DEFAULT_BUDGET = ImageBudget()
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def call(name: str, **arguments: object) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def crop(bbox: object, target: object = 1) -> str:
    return call("crop_image_normalized", bbox_2d=bbox, target_image=target)


def select(frames: object) -> str:
    return call("select_frames", target_frames=frames)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def sequence(count: int, height: int = 120, width: int = 160) -> list[np.ndarray]:
    """Frames whose pixels all equal 10 * their 1-based number, so a view tells its source."""
    return [np.full((height, width, 3), 10 * (i + 1), np.uint8) for i in range(count)]


def assert_error(result: OperationResult, *fragments: str) -> None:
    assert not result.ok and result.views == () and result.box is None
    assert result.error is not None and result.message == "Execution error: " + result.error
    for fragment in fragments:
        assert fragment in result.error


def assert_factor28(pixels: np.ndarray, budget: ImageBudget = DEFAULT_BUDGET) -> None:
    height, width = pixels.shape[:2]
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    assert height % 28 == 0 and width % 28 == 0
    assert budget.min_pixels <= height * width <= budget.max_pixels
    # The model's own processor would leave the view as it is.
    assert smart_resize(height, width, 28, budget.min_pixels, budget.max_pixels) == (height, width)


def test_doctests_of_the_small_helpers_pass() -> None:
    assert doctest.testmod(operations).failed == 0


# ------------------------------------------------------------------- crop from the original


def test_crop_shows_one_pixel_lines_that_the_whole_frame_view_averages_away() -> None:
    frame = np.full((1500, 2000, 3), 200, np.uint8)
    frame[:400, :500:4] = 20  # 1-px dark vertical lines every 4 px, top-left corner only
    ws = Workspace([frame])
    whole = ws.views[0].pixels
    scale_y, scale_x = whole.shape[0] / 1500, whole.shape[1] / 2000
    in_whole = whole[: int(336 * scale_y), : int(448 * scale_x), 0].astype(float)
    assert in_whole.std() < 2  # the 448-px view cannot show the lines

    result = execute(crop([0.0, 0.0, 0.124, 0.124]), ws)

    assert result.ok and result.message == "Here is the cropped image (Image Size: 504x392):"
    (view,) = result.views
    assert view.region == (0, 0, 448, 336) and view.kind == "crop" and ws.views[1] is view
    assert np.array_equal(view.pixels, resize_to_budget(frame[:336, :448], ws.budget))
    row = view.pixels[view.pixels.shape[0] // 2, :, 0]
    dark = row < 110
    assert int(np.sum(dark[1:] & ~dark[:-1]) + dark[0]) == 448 // 4  # every line, un-aliased
    assert row.min() < 40 and row.max() > 190
    assert result.box == Box(0.0, 0.0, 0.224, 0.224)


def test_nested_crop_maps_back_to_the_original_pixels() -> None:
    frame = noise(1500, 2000)
    ws = Workspace([frame])
    first = execute(crop([0.3, 0.3, 0.5, 0.5]), ws)
    assert first.ok and first.views[0].region == (400, 300, 1200, 900)

    second = execute(crop([0.5, 0.5, 0.6, 0.6], target=2), ws)

    assert second.ok and len(ws.views) == 3
    (view,) = second.views
    # padded in image 2's units: [0.4, 0.7] of its 800x600 region, offset by (400, 300)
    assert view.region == (720, 540, 960, 720)
    assert np.array_equal(view.pixels, resize_to_budget(frame[540:720, 720:960], ws.budget))
    assert second.box is not None
    assert (second.box.x1, second.box.y1, second.box.x2, second.box.y2) == pytest.approx(
        (720 / 2000, 540 / 1500, 960 / 2000, 720 / 1500))
    # image 1 is still the whole frame: a crop of it ignores the crops before it
    assert execute(crop([0.3, 0.3, 0.5, 0.5], target=1), ws).views[0].region == (400, 300, 1200, 900)


# ---------------------------------------------------------------- padding, 28 px, factor 28


@pytest.mark.parametrize(("box", "padded"), [
    ((0.4, 0.4, 0.6, 0.6), (0.3, 0.3, 0.7, 0.7)),
    ((0.05, 0.0, 0.95, 1.0), (0.0, 0.0, 1.0, 1.0)),
    ((0.0, 0.92, 0.05, 0.99), (0.0, 0.82, 0.15, 1.0)),
])
def test_pad_and_clamp_grows_each_side_by_a_tenth_within_the_image(
        box: tuple[float, ...], padded: tuple[float, ...]) -> None:
    assert pad_and_clamp(box) == pytest.approx(padded)


@pytest.mark.parametrize(("bbox", "size_px"), [
    ([0.4, 0.2, 0.48, 0.8], (28, 80)),  # padded x: [0.3, 0.58] of 100 px
    ([0.2, 0.4, 0.8, 0.48], (80, 28)),
])
def test_a_crop_side_of_exactly_28_original_pixels_is_rejected(
        bbox: list[float], size_px: tuple[int, int]) -> None:
    ws = Workspace([noise(100, 100)])
    assert_error(execute(crop(bbox), ws), f"{size_px[0]}x{size_px[1]} pixels", "must exceed 28")
    assert len(ws.views) == 1


@pytest.mark.parametrize("bbox", [[0.4, 0.2, 0.49, 0.8], [0.2, 0.4, 0.8, 0.49]])
def test_a_crop_side_of_29_original_pixels_is_accepted(bbox: list[float]) -> None:
    result = execute(crop(bbox), Workspace([noise(100, 100)]))
    assert result.ok
    left, top, right, bottom = result.views[0].region
    assert sorted((right - left, bottom - top)) == [29, 80]


def test_the_28_pixel_rule_counts_original_pixels_in_a_nested_crop() -> None:
    ws = Workspace([noise(1500, 2000)])
    assert execute(crop([0.0, 0.0, 0.005, 0.2]), ws).views[0].region == (0, 0, 210, 450)
    # In image 2 (210 original px shown ~300 px wide) these boxes pad to 28 and 29 original px.
    rejected = execute(crop([0.0, 0.2, 28 / 210 - 0.1, 0.8], target=2), ws)
    assert_error(rejected, "28x")
    accepted = execute(crop([0.0, 0.2, 29 / 210 - 0.1, 0.8], target=2), ws)
    assert accepted.ok and accepted.views[0].region[2] == 29


@pytest.mark.parametrize(("height", "width"), [(1500, 2000), (2048, 1024), (100, 3000), (64, 64)])
def test_views_have_sides_of_multiples_of_28_within_the_budget(height: int, width: int) -> None:
    ws = Workspace([noise(height, width)])
    assert_factor28(ws.views[0].pixels)
    result = execute(crop([0.3, 0.3, 0.6, 0.6]), ws)
    assert result.ok
    assert_factor28(result.views[0].pixels)
    out_h, out_w = result.views[0].pixels.shape[:2]
    assert result.message == f"Here is the cropped image (Image Size: {out_w}x{out_h}):"


def test_a_small_crop_is_upscaled_to_fill_the_budget() -> None:
    assert budget_size(60, 80) == budget_size(1500, 2000) == (392, 504)
    small = ImageBudget(max_pixels=224 * 224)
    assert budget_size(60, 80, small) == (196, 252)
    with pytest.raises(ValueError, match="min_pixels"):
        ImageBudget(max_pixels=100, min_pixels=784)


def test_smart_resize_is_the_rule_of_the_installed_transformers() -> None:
    """transformers' module needs torchvision to import, so its function is read from source."""
    spec = importlib.util.find_spec("transformers")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "models" / "qwen2_vl" / "image_processing_qwen2_vl.py"
    tree = ast.parse(path.read_text())
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize"]
    namespace: dict[str, object] = {"math": math}
    exec(compile(ast.Module([func], []), str(path), "exec"), namespace)
    theirs = namespace["smart_resize"]
    assert callable(theirs)
    assert list(inspect.signature(theirs).parameters) == list(inspect.signature(smart_resize).parameters)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        height, width = (int(v) for v in rng.integers(1, 5000, 2))
        if max(height, width) / min(height, width) > 200:
            continue
        max_pixels = int(rng.choice([224 * 224, 448 * 448, 1280 * 28 * 28]))
        args = (height, width, 28, int(rng.choice([784, 3136])), max_pixels)
        assert smart_resize(*args) == theirs(*args)


# --------------------------------------------------------------------------- select_frames


def test_selected_frames_are_shown_whole_and_can_be_cropped() -> None:
    ws = Workspace(sequence(12))
    assert ws.views[0].kind == "overview"
    assert_factor28(ws.views[0].pixels)

    result = execute(select([2, 5, 7]), ws)

    assert result.ok and result.message == "Here are the selected frames (frames 2, 5, 7):"
    assert [v.frame_index for v in result.views] == [1, 4, 6]
    assert all(v.kind == "selected" and v.region == (0, 0, 160, 120) for v in result.views)
    assert [int(v.pixels.mean()) for v in result.views] == [20, 50, 70]
    assert result.box is None and ws.views[1:] == list(result.views)

    zoom = execute(crop([0.2, 0.2, 0.6, 0.6], target=3), ws)  # image 3 is frame 5
    assert zoom.ok and zoom.views[0].frame_index == 4 and int(zoom.views[0].pixels.mean()) == 50
    assert execute(select([9]), ws).message == "Here are the selected frames (frame 9):"


def test_the_overview_labels_each_tile_with_its_frame_number() -> None:
    ws = Workspace(sequence(5, 400, 400))  # 3 x 2 grid, tiles of the same gray but for labels
    sheet = ws.views[0].pixels
    tile_h, tile_w = sheet.shape[0] // 2, sheet.shape[1] // 3
    for i in range(5):
        row, col = divmod(i, 3)
        tile = sheet[row * tile_h: (row + 1) * tile_h, col * tile_w: (col + 1) * tile_w]
        assert tile.max() > 200 and tile.min() == 0  # white digits on a black patch
        assert np.median(tile) == 10 * (i + 1)
    assert sheet[tile_h:, 2 * tile_w:].max() == 0  # the unused sixth tile stays black


def test_select_frames_respects_the_per_inspection_image_limit() -> None:
    ws = Workspace(sequence(16))
    assert execute(select(list(range(1, 9))), ws).ok  # 9 images
    assert_error(execute(select(list(range(9, 17))), ws), "limit of 16", "select at most 7")
    assert execute(select(list(range(9, 16))), ws).ok and len(ws.views) == 16
    assert_error(execute(crop([0.1, 0.1, 0.5, 0.5], target=2), ws), "already shows 16 images")
    assert_error(execute(select([1]), ws), "select at most 0")
    assert len(ws.views) == 16


# -------------------------------------------------------------------------- malformed calls

BAD_SINGLE = [
    ("<tool_call>not json</tool_call>", "not valid JSON"),
    ("<tool_call></tool_call>", "not valid JSON"),
    ("<tool_call>[1, 2]</tool_call>", "must be a JSON object"),
    ('<tool_call>{"arguments": {}}</tool_call>', 'needs "name"'),
    ('<tool_call>{"name": 5, "arguments": {}}</tool_call>', 'needs "name"'),
    ('<tool_call>{"name": "crop_image_normalized"}</tool_call>', 'needs "arguments"'),
    ('<tool_call>{"name": "crop_image_normalized", "arguments": "[0,0,1,1]"}</tool_call>',
     'needs "arguments"'),
    (call("zoom_in", bbox_2d=[0, 0, 1, 1], target_image=1), "unknown operation \"zoom_in\""),
    (call("crop_image_normalized", target_image=1), "missing bbox_2d"),
    (call("crop_image_normalized", bbox_2d=[0, 0, 1, 1]), "missing target_image"),
    (call("crop_image_normalized", bbox_2d=[0, 0, 1, 1], target_image=1, why="x"), "unknown \"why\""),
    (call("crop_image_normalized", bbox=[0, 0, 1, 1], target_image=1),
     "missing bbox_2d and unknown \"bbox\""),
    (crop("0.1, 0.1, 0.5, 0.5"), "4 numbers"),
    (crop([0.1, 0.1, 0.5]), "4 numbers"),
    (crop([0.1, 0.1, 0.5, 0.5, 0.6]), "4 numbers"),
    (crop(["0.1", 0.1, 0.5, 0.5]), "4 numbers"),
    (crop([True, 0.1, 0.5, 0.5]), "4 numbers"),
    (crop([None, 0.1, 0.5, 0.5]), "4 numbers"),
    ('<tool_call>{"name": "crop_image_normalized", "arguments": '
     '{"bbox_2d": [NaN, 0.1, 0.5, 0.5], "target_image": 1}}</tool_call>', "not pixels"),
    ('<tool_call>{"name": "crop_image_normalized", "arguments": '
     '{"bbox_2d": [0.1, 0.1, Infinity, 0.5], "target_image": 1}}</tool_call>', "not pixels"),
    ('<tool_call>{"name": "crop_image_normalized", "arguments": '
     '{"bbox_2d": [0.1, 0.1, 1e999, 0.5], "target_image": 1}}</tool_call>', "not pixels"),
    (crop([0.5, 0.1, 0.5, 0.6]), "empty or its corners are swapped"),
    (crop([0.6, 0.1, 0.5, 0.6]), "empty or its corners are swapped"),
    (crop([0.1, 0.6, 0.5, 0.6]), "empty or its corners are swapped"),
    (crop([0.1, 0.7, 0.5, 0.6]), "empty or its corners are swapped"),
    (crop([-0.1, 0.1, 0.5, 0.5]), "not pixels"),
    (crop([0.1, 0.1, 1.2, 0.5]), "not pixels"),
    (crop([10, 20, 300, 400]), "not pixels"),
    (crop([0.1, 0.1, 0.5, 0.5], target=0), "from 1 to 1, got 0"),
    (crop([0.1, 0.1, 0.5, 0.5], target=-1), "from 1 to 1, got -1"),
    (crop([0.1, 0.1, 0.5, 0.5], target=2), "from 1 to 1, got 2"),
    (crop([0.1, 0.1, 0.5, 0.5], target=True), "got true"),
    (crop([0.1, 0.1, 0.5, 0.5], target=1.0), "got 1.0"),
    (crop([0.1, 0.1, 0.5, 0.5], target="1"), 'got "1"'),
    (crop([0.1, 0.1, 0.5, 0.5], target=None), "got null"),
    (select([1]), "single image"),
    (call("select_frames"), "missing target_frames"),
    ("the crop <tool_call>\n" + "[" * 100_000 + "\n</tool_call>", "not valid JSON"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_SINGLE)
def test_a_malformed_call_on_an_image_returns_an_execution_error(text: str, fragment: str) -> None:
    ws = Workspace([noise(300, 400)])
    assert_error(execute(text, ws), fragment)
    assert len(ws.views) == 1


BAD_SEQUENCE = [
    (select([]), "1 to 8 distinct frame numbers from 1 to 10"),
    (select([0]), "got [0]"),
    (select([11]), "got [11]"),
    (select([-1, 2]), "got [-1, 2]"),
    (select([2, 2]), "distinct"),
    (select(list(range(1, 10))), "1 to 8"),
    (select(3), "got 3"),
    (select(["1"]), "got [\"1\"]"),
    (select([1.0]), "got [1.0]"),
    (select([True]), "got [true]"),
    (call("select_frames", target_frames=[1], extra=2), "unknown \"extra\""),
    (crop([0.1, 0.1, 0.5, 0.5]), "image 1 is the overview of all 10 frames"),
    (crop([0.1, 0.1, 0.5, 0.5], target=2), "from 1 to 1, got 2"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_SEQUENCE)
def test_a_malformed_call_on_a_sequence_returns_an_execution_error(text: str, fragment: str) -> None:
    ws = Workspace(sequence(10))
    assert_error(execute(text, ws), fragment)
    assert len(ws.views) == 1


def test_long_values_are_shortened_in_error_messages() -> None:
    result = execute(crop("x" * 10_000), Workspace([noise(300, 400)]))
    assert_error(result, "...")
    assert len(result.message) < 300


def test_a_turn_without_a_tool_call_is_a_final_answer() -> None:
    assert parse_tool_call(r"The crop shows a scratch. \boxed{scratch}") is None
    assert_error(execute("no call here", Workspace([noise(300, 400)])), "no <tool_call> found")


def test_the_parser_tolerates_whitespace_a_missing_end_tag_and_ignores_later_calls() -> None:
    body = {"name": "select_frames", "arguments": {"target_frames": [1]}}
    expected = ToolCall("select_frames", {"target_frames": [1]})
    assert parse_tool_call(f"look <tool_call>\n  {json.dumps(body)}\n</tool_call> ok") == expected
    assert parse_tool_call(f"<tool_call>{json.dumps(body)}") == expected
    twice = select([2]) + select([3])
    result = execute(twice, Workspace(sequence(4)))
    assert result.ok and [v.frame_index for v in result.views] == [1]


@pytest.mark.parametrize(("text", "answer"), [
    (r"\boxed{scratch}", "scratch"),
    (r"first \boxed{pit} then \boxed{ dent }", "dent"),
    (r"\boxed{\text{crack}}", r"\text{crack}"),
    (r"\boxed{burn} and a cut-off \boxed{sta", "burn"),
    (r"\boxed{}", ""),
    ("no box", None),
    (r"\boxed{never closed", None),
])
def test_parse_answer_takes_the_last_complete_boxed_answer(text: str, answer: str | None) -> None:
    assert parse_answer(text) == answer


@pytest.mark.parametrize(("frames", "message"), [
    ([], "1 to 16 frames"),
    (sequence(17), "1 to 16 frames"),
    ([np.zeros((100, 100), np.uint8)], "RGB uint8"),
    ([np.zeros((100, 100, 3), np.float32)], "RGB uint8"),
    ([np.zeros((28, 100, 3), np.uint8)], "must exceed 28"),
    ([np.zeros((29, 6000, 3), np.uint8)], "aspect ratio"),
    ([np.zeros((100, 100, 3), np.uint8), np.zeros((100, 120, 3), np.uint8)], "same size"),
])
def test_bad_frames_are_the_callers_error(frames: list[np.ndarray], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Workspace(frames)


# ------------------------------------------------------------------------- property tests

unit = st.floats(0.0, 1.0)


span = st.tuples(unit, unit).map(sorted)  # mostly well-ordered; equal ends stay possible


@PROPERTY
@given(height=st.integers(64, 4096), width=st.integers(64, 4096),
       boxes=st.lists(st.tuples(span, span, st.integers(1, 3)), min_size=1, max_size=3))
def test_crops_stay_in_the_frame_obey_factor_28_and_cover_the_requested_box(
        height: int, width: int, boxes: list[tuple[list[float], list[float], int]]) -> None:
    assume(max(height, width) / min(height, width) <= 200)
    ws = Workspace([np.zeros((height, width, 3), np.uint8)])
    for (x1, x2), (y1, y2), target in boxes:
        before = list(ws.views)
        result = execute(crop([x1, y1, x2, y2], target), ws)
        if not result.ok:
            assert result.message.startswith("Execution error: ") and ws.views == before
            continue
        (view,) = result.views
        left, top, right, bottom = view.region
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert right - left > 28 and bottom - top > 28
        assert_factor28(view.pixels)
        assert result.box is not None
        assert 0.0 <= result.box.x1 < result.box.x2 <= 1.0 and 0.0 <= result.box.y1 < result.box.y2 <= 1.0
        tx1, ty1, tx2, ty2 = before[target - 1].region
        px1, py1, px2, py2 = pad_and_clamp((x1, y1, x2, y2))
        wanted = (tx1 + px1 * (tx2 - tx1), ty1 + py1 * (ty2 - ty1),
                  tx1 + px2 * (tx2 - tx1), ty1 + py2 * (ty2 - ty1))
        tol = 1e-6
        assert result.box.x1 * width <= wanted[0] + tol and result.box.y1 * height <= wanted[1] + tol
        assert result.box.x2 * width >= wanted[2] - tol and result.box.y2 * height >= wanted[3] - tol
        # the region is the requested box rounded outwards: never more than a pixel larger
        assert wanted[0] - left < 1 and wanted[1] - top < 1
        assert right - wanted[2] < 1 and bottom - wanted[3] < 1


@settings(max_examples=500, deadline=None)
@given(height=st.integers(29, 4096), width=st.integers(29, 4096),
       budget_side=st.sampled_from([224, 448, 896]))
@example(height=29, width=1925, budget_side=224)  # smart_resize alone would give 28x1820 > 224**2
def test_budget_size_always_gives_a_fixed_point_of_smart_resize(height: int, width: int,
                                                                 budget_side: int) -> None:
    assume(max(height, width) / min(height, width) <= 200)
    budget = ImageBudget(max_pixels=budget_side * budget_side)
    out_h, out_w = budget_size(height, width, budget)
    assert out_h % 28 == 0 and out_w % 28 == 0
    assert budget.min_pixels <= out_h * out_w <= budget.max_pixels
    assert smart_resize(out_h, out_w, 28, budget.min_pixels, budget.max_pixels) == (out_h, out_w)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=4),
    max_leaves=12)
call_like = st.fixed_dictionaries(
    {"name": st.sampled_from(["crop_image_normalized", "select_frames", "zoom", ""]) | json_values,
     "arguments": st.fixed_dictionaries({}, optional={
         "bbox_2d": st.lists(st.floats() | st.integers(-2, 2) | json_values, max_size=5),
         "target_image": st.integers(-2, 5) | json_values,
         "target_frames": st.lists(st.integers(-1, 12), max_size=10) | json_values,
     }) | json_values})


def _mangle(text: str, cut: int, junk: str) -> str:
    cut %= len(text) + 1
    return text[:cut] + junk + text[cut:]


tool_texts = st.one_of(
    st.text(),
    st.builds(lambda a, b, c: f"{a}<tool_call>{b}</tool_call>{c}", st.text(), st.text(), st.text()),
    st.builds(lambda v: f"<tool_call>{json.dumps(v)}</tool_call>", json_values | call_like),
    st.builds(lambda v, cut, junk: "<tool_call>" + _mangle(json.dumps(v), cut, junk) + "</tool_call>",
              call_like, st.integers(0, 200), st.text(max_size=3)),
)


SINGLE = Workspace([noise(120, 160)])
SEQUENCE = Workspace(sequence(6))


@settings(max_examples=400, deadline=None)
@given(text=tool_texts)
def test_the_parser_and_execute_never_raise_on_any_model_text(text: str) -> None:
    parsed = parse_tool_call(text)
    assert parsed is None or isinstance(parsed, ToolCall) or (
        isinstance(parsed, OperationResult) and not parsed.ok
        and parsed.message.startswith("Execution error: "))
    for ws in (SINGLE, SEQUENCE):
        before = len(ws.views)
        result = execute(text, ws)
        assert result.ok or result.message.startswith("Execution error: ")
        del ws.views[before:]  # keep the shared workspaces below the image limit


def test_each_image_keeps_the_order_of_its_items_and_runs_them_once() -> None:
    seen: list[int] = []
    assert operations.each_image(lambda i: seen.append(i) or i * i, range(12)) == [i * i for i in range(12)]
    assert sorted(seen) == list(range(12))
    assert operations.each_image(lambda i: i + 1, [7]) == [8] and operations.each_image(str, []) == []


def test_a_sequence_resized_on_several_threads_gives_the_same_pixels_as_in_turn() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8) for _ in range(9)]
    ws = Workspace(frames)
    shown = execute(select([1, 4, 9]), ws)
    budget = ws.budget
    assert all(np.array_equal(v.pixels, resize_to_budget(frames[n - 1], budget))
               for v, n in zip(shown.views, [1, 4, 9], strict=True))
    sheet = ws.views[0].pixels
    height, width = sheet.shape[:2]
    for i, frame in enumerate(frames):  # below each tile's label, the tile is the frame resized alone
        row, col = divmod(i, 3)
        top, bottom = row * height // 3, (row + 1) * height // 3
        left, right = col * width // 3, (col + 1) * width // 3
        alone = cv2.resize(frame, (right - left, bottom - top), interpolation=cv2.INTER_AREA)
        assert np.array_equal(sheet[top + 20: bottom, left: right], alone[20:])
