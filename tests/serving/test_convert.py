"""Converters at the service's edge: a trace becomes an InspectResult (decision, evidence box,
every step with its views as PNG and their boxes normalized to the frame), a request becomes an
inspection and loop options, exceptions become status codes, log records become JSON lines."""

from __future__ import annotations

import json
import logging

import cv2
import grpc
import numpy as np
import pytest

from foveal.domain import Box, Taxonomy, Verdict
from foveal.operations import View
from foveal.reasoning.engine import EngineError, EngineUnavailable, ModelRef
from foveal.reasoning.loop import DeadlineExceeded, LoopOptions, Step, Trace
from foveal.reasoning.prompts import inspection_prompt
from foveal.rpc.convert import FrameGeometry, Timing, inspect_result, operation_name, region_box
from foveal.serving.images import InvalidInput
from foveal.serving.logs import JsonFormatter
from foveal.serving.request import (
    Product,
    catalog_from,
    default_catalog,
    inspection_for,
    loop_options,
    product_for,
)
from foveal.serving.service import failure_of
from foveal.settings import load_settings
from foveal.v1 import inspection_pb2, verdict_pb2
from tests.serving.helpers import frame, request

GEOMETRY = FrameGeometry(width=800, height=600, sequence=False)


def _trace() -> Trace:
    crop = View(np.zeros((56, 84, 3), np.uint8), (80, 60, 400, 300), 0, "crop")
    steps = [
        Step("Zoom. <tool_call>...", operation="crop_image_normalized",
             arguments={"bbox_2d": [0.2, 0.2, 0.4, 0.4], "target_image": 1}, ok=True, views=(crop,),
             latency_ms=12.5),
        Step("Wrong.", operation=None, arguments=None, ok=False, error="unknown tool 'zoom'"),
        Step("\\boxed{scratch}"),
    ]
    return Trace("x", verdict=Verdict.DEFECT, defect_type="scratch", confidence=0.9,
                 box=Box(0.1, 0.1, 0.5, 0.5), steps=steps, operations=1, model_ms=40.0, operations_ms=2.0,
                 model=ModelRef("foveal_vl", "3"))


def test_a_trace_becomes_an_inspect_result() -> None:
    result = inspect_result("f-1", _trace(), GEOMETRY, Timing(total_ms=50.0, queue_ms=1.5))
    assert result.frame_id == "f-1" and result.verdict == verdict_pb2.DECISION_DEFECT
    assert result.defect_type == "scratch" and result.confidence == pytest.approx(0.9)
    assert (result.evidence_box.x1, result.evidence_box.x2) == pytest.approx((0.1, 0.5))
    assert [s.operation for s in result.steps] == ["crop_image_normalized", "error", "answer"]
    assert [s.index for s in result.steps] == [0, 1, 2]
    assert json.loads(result.steps[0].arguments_json)["target_image"] == 1
    assert result.steps[2].arguments_json == ""
    assert result.steps[1].error == "unknown tool 'zoom'"
    [image] = result.steps[0].images
    assert (image.width, image.height, image.frame_index) == (84, 56, -1)
    assert (image.box.x1, image.box.y1, image.box.x2, image.box.y2) == pytest.approx((0.1, 0.1, 0.5, 0.5))
    assert cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR).shape == (56, 84, 3)
    assert (result.model.name, result.model.version) == ("foveal_vl", "3")
    t = result.timings
    assert (t.total_ms, t.model_ms, t.operations_ms, t.queue_ms) == (50.0, 40.0, 2.0, 1.5)
    assert result.operations == 1


def test_an_unanswered_trace_has_no_box_and_falls_back_to_the_engines_model() -> None:
    trace = Trace("y", verdict=Verdict.UNCERTAIN, confidence=1.2)
    result = inspect_result("f", trace, GEOMETRY, Timing(1.0, 0.0), ModelRef("m", "1"))
    assert result.verdict == verdict_pb2.DECISION_UNCERTAIN and result.confidence == 1.0
    assert not result.HasField("evidence_box") and result.model.name == "m"


def test_views_of_a_sequence_keep_their_frame_index() -> None:
    trace = _trace()
    trace.steps[0].views = (View(np.zeros((28, 28, 3), np.uint8), (0, 0, 800, 600), 2, "selected"),)
    [image] = inspect_result("f", trace, FrameGeometry(800, 600, True), Timing(1.0, 0.0)).steps[0].images
    assert image.frame_index == 2 and (image.box.x1, image.box.x2) == (0.0, 1.0)


def test_region_box_and_operation_names() -> None:
    assert region_box((200, 150, 800, 600), GEOMETRY) == Box(0.25, 0.25, 1.0, 1.0)
    assert operation_name(Step("\\boxed{none}")) == "answer"


def test_the_request_picks_the_products_taxonomy_and_narrows_it() -> None:
    catalog = default_catalog()
    assert product_for("pcb", ["pit"], catalog).taxonomy.names == ("none", "pit")
    assert product_for("", [], catalog) == Product(Taxonomy(), None)
    with pytest.raises(InvalidInput, match="wobble"):
        product_for("pcb", ["wobble"], {"pcb": Product(Taxonomy().restrict(["pit"]), "pcb")})
    inspection = inspection_for(request(product="pcb", defect_types=["pit"]), [frame()], catalog)
    assert inspection.taxonomy == ("none", "pit")
    assert inspection.prompt == ("Inspect this pcb part. Which defect does it show: pit? "
                                 "Answer none if it has none.")


def test_a_product_code_the_catalog_lacks_gets_the_generic_prompt_unless_the_service_refuses_it() -> None:
    catalog = default_catalog()
    inspection = inspection_for(request(product="teapot"), [frame()], catalog)
    assert inspection.prompt == "Inspect this part. Which defect does it show? Answer none if it has none."
    assert inspection.taxonomy == Taxonomy().names
    with pytest.raises(InvalidInput, match="unknown product 'teapot'; known: brushed_metal"):
        inspection_for(request(product="teapot"), [frame()], catalog, refuse_unknown=True)


def test_a_configured_product_code_names_its_surface_and_its_own_types() -> None:
    bracket = {"defect_types": ["dent", "porosity"], "surface": "cast_part"}
    settings = load_settings(products={"bracket-a12": bracket, "P-9": {}})
    catalog = catalog_from(settings)
    assert set(default_catalog()) < set(catalog)
    inspection = inspection_for(request(product="bracket-a12"), [frame()], catalog)
    assert inspection.taxonomy == ("none", "dent", "porosity")
    assert inspection.prompt.startswith("Inspect this cast part. Which defect does it show: dent, porosity?")
    assert inspection_for(request(product="P-9"), [frame()], catalog).prompt == inspection_prompt()
    narrowed = inspection_for(request(product="P-9", defect_types=["dent"]), [frame()], catalog)
    assert narrowed.prompt.startswith("Inspect this part. Which defect does it show: dent?")
    with pytest.raises(InvalidInput, match=r"\['scratch'\] are not in the taxonomy of bracket-a12"):
        inspection_for(request(product="bracket-a12", defect_types=["scratch"]), [frame()], catalog, True)


def test_request_options_only_narrow_the_servers() -> None:
    base = LoopOptions(max_operations=4)
    assert loop_options(inspection_pb2.InspectOptions(), base) == base
    assert loop_options(inspection_pb2.InspectOptions(max_operations=2), base).max_operations == 2
    assert loop_options(inspection_pb2.InspectOptions(max_operations=9), base).max_operations == 4
    assert not loop_options(inspection_pb2.InspectOptions(disable_operations=True), base).allow_operations


@pytest.mark.parametrize(("exc", "code"), [
    (InvalidInput("bad"), grpc.StatusCode.INVALID_ARGUMENT),
    (DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (EngineUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
    (EngineError("broken"), grpc.StatusCode.INTERNAL),
    (KeyError("bug"), grpc.StatusCode.INTERNAL),
])
def test_exceptions_become_status_codes_never_unknown(exc: Exception, code: grpc.StatusCode) -> None:
    assert failure_of(exc, "f").code == code


def test_log_records_become_json_lines_with_their_fields() -> None:
    record = logging.LogRecord("foveal.serving", logging.INFO, __file__, 1, "inspect %s", ("f",), None)
    record.frame_id, record.code = "f", "OK"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "inspect f" and line["frame_id"] == "f" and line["code"] == "OK"
    assert line["level"] == "info" and "T" in line["ts"]
