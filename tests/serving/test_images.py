"""Image intake: sizes come from the header before any decoding (a bomb is refused without its
pixels being allocated), claim checks are read from file:// only and verified, and every
refusal is an `InvalidInput` that says what is wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from foveal.blobs import DirectoryStore, Reader
from foveal.serving.images import (
    ImageLimits,
    InvalidInput,
    check_size,
    decode,
    fetch_blob,
    header_size,
    read_frames,
)
from foveal.v1 import frame_pb2
from tests.serving.helpers import frame, inline, png, png_header


def test_decode_gives_the_rgb_pixels_at_full_resolution() -> None:
    pixels = frame(3, 100, 150)
    assert np.array_equal(decode(png(pixels)), pixels)


def test_grey_and_16_bit_images_become_8_bit_rgb() -> None:
    grey = np.full((60, 80), 40000, np.uint16)
    ok, buf = cv2.imencode(".png", grey)
    assert ok
    out = decode(bytes(buf))
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8


def test_the_size_comes_from_the_header_alone() -> None:
    assert header_size(png_header(10000, 6000)) == (10000, 6000)


@pytest.mark.parametrize(("width", "height", "words"), [
    (0, 10, "zero size"), (10000, 10000, "megapixels"), (20, 400, "must exceed"), (29, 6000, "aspect ratio"),
])
def test_check_size_refuses_absurd_images(width: int, height: int, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        check_size(width, height)


def test_a_header_beyond_pillows_own_bomb_limit_is_refused_too() -> None:
    with pytest.raises(InvalidInput, match="too large"):
        decode(png_header(50000, 50000), limits=ImageLimits(max_pixels=10**12))


def test_the_limit_is_configurable() -> None:
    with pytest.raises(InvalidInput, match=r"limit of 0\.01"):
        decode(png(frame(0, 200, 100)), limits=ImageLimits(max_pixels=10_000))


def test_a_file_claim_check_is_read_and_verified(tmp_path: Path) -> None:
    data = png(frame())
    path = tmp_path / "a b.png"
    path.write_bytes(data)
    good = frame_pb2.BlobRef(uri=path.as_uri(), sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    store = Reader({"file": DirectoryStore(tmp_path)})
    assert fetch_blob(good, blobs=store) == data
    with pytest.raises(InvalidInput, match="no blob store"):
        fetch_blob(good)
    with pytest.raises(InvalidInput, match="size"):
        fetch_blob(frame_pb2.BlobRef(uri=path.as_uri(), size_bytes=len(data) + 1), blobs=store)
    with pytest.raises(InvalidInput, match="more than 10"):
        fetch_blob(good, limits=ImageLimits(max_bytes=10), blobs=store)
    with pytest.raises(InvalidInput, match="another host"):
        fetch_blob(frame_pb2.BlobRef(uri="file://elsewhere/x.png"), blobs=store)
    with pytest.raises(InvalidInput, match="outside the blob store"):
        fetch_blob(frame_pb2.BlobRef(uri=Path(__file__).as_uri()), blobs=store)
    with pytest.raises(InvalidInput, match="not supported"):
        fetch_blob(frame_pb2.BlobRef(uri="https://example.com/x.png"), blobs=store)


def test_a_sequence_wins_over_the_single_image() -> None:
    frames = read_frames(inline(b""), [inline(png(frame(i))) for i in range(3)])
    assert len(frames) == 3 and np.array_equal(frames[2], frame(2))
