"""A real tritonserver serving the repository's `foveal_vl` model (its config.pbtxt and model.py,
unchanged) with the weights of a micro model taught the protocol in seconds, started once per
test session through the same code as `foveal stack up`."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from foveal.model.loader import VLM, save
from foveal.serving.triton_engine import TritonEngine
from foveal.settings import Settings
from foveal.stack import Stack
from tests.conftest import embedded_settings

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "foveal_vl"


@pytest.fixture(scope="session")
def triton_settings(tmp_path_factory: pytest.TempPathFactory, taught_vlm: VLM) -> Settings:
    root = tmp_path_factory.mktemp("serving")
    repo = root / "models"
    (repo / "foveal_vl" / "1").mkdir(parents=True)
    shutil.copy(REPOSITORY / "config.pbtxt", repo / "foveal_vl" / "config.pbtxt")
    shutil.copy(REPOSITORY / "1" / "model.py", repo / "foveal_vl" / "1" / "model.py")
    save(taught_vlm, repo / "foveal_vl" / "1" / "weights")
    # the same weights as a checkpoint that asks for the pointer (grounded boxes, frames, answers,
    # its 8 candidate looks seen at full resolution first)
    pointing = repo / "foveal_vl_pointer"
    (pointing / "1").mkdir(parents=True)
    config = (REPOSITORY / "config.pbtxt").read_text()
    assert 'name: "foveal_vl"' in config
    renamed = config.replace('name: "foveal_vl"', 'name: "foveal_vl_pointer"', 1)
    (pointing / "config.pbtxt").write_text(renamed)
    shutil.copy(REPOSITORY / "1" / "model.py", pointing / "1" / "model.py")
    pointer_vlm = copy.copy(taught_vlm)
    pointer_vlm.meta = dict(taught_vlm.meta, pointer=True, rerank=8)
    save(pointer_vlm, pointing / "1" / "weights")
    # and as one that also looks at a single frame before its verdict, as the default does
    looking = repo / "foveal_vl_look"
    (looking / "1").mkdir(parents=True)
    (looking / "config.pbtxt").write_text(config.replace('name: "foveal_vl"', 'name: "foveal_vl_look"', 1))
    shutil.copy(REPOSITORY / "1" / "model.py", looking / "1" / "model.py")
    look_vlm = copy.copy(taught_vlm)
    look_vlm.meta = dict(pointer_vlm.meta, look_first=True)
    save(look_vlm, looking / "1" / "weights")
    return embedded_settings(root / "home", model_repository=repo,
                             model_dir=repo / "foveal_vl" / "1" / "weights")


@pytest.fixture(scope="session")
def triton(triton_settings: Settings) -> Iterator[Stack]:
    stack = Stack(triton_settings, parts=["triton"])
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


@pytest.fixture
def triton_engine(triton: Stack, taught_vlm: VLM) -> Iterator[TritonEngine]:
    engine = TritonEngine(triton.settings.triton_address, "foveal_vl", taught_vlm.chat, taught_vlm.budget)
    yield engine
    engine.close()
