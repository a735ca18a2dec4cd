"""The images of an Inspect request, fetched, checked and decoded before any model sees them.

An image comes inline or as a claim check (`BlobRef`); `file://` and `s3://` claim checks are
read through the blob stores this service is given (`foveal.blobs.Reader`: never outside a
store's root, size and SHA-256 verified); other schemes are refused. The dimensions are read
from the header with Pillow *before* anything is decoded, so a decompression bomb (a small file
that claims 10000x10000 pixels) is refused without allocating its pixels. Every refusal is an
`InvalidInput` whose message says what is wrong; the service answers it with INVALID_ARGUMENT.
A store that cannot be reached is `StoreUnavailable` instead (UNAVAILABLE: the caller retries).
Tests: `pytest tests/serving/test_images.py`.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from foveal.blobs import BlobError, BlobUnavailable, Reader
from foveal.errors import FovealError
from foveal.operations import MAX_ASPECT, MAX_FRAMES, MIN_SIDE_PX, RGBImage
from foveal.v1 import frame_pb2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class InvalidInput(FovealError):
    """The request cannot be inspected as sent (a bad image, sequence, product or type)."""


class StoreUnavailable(FovealError):
    """A claim check's blob store could not be reached; the same request may work later."""


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 50_000_000  # per image; the decompression-bomb guard
    max_bytes: int = 32 * 1024 * 1024  # per fetched claim check
    max_frames: int = MAX_FRAMES


def read_frames(image: frame_pb2.Image | None, sequence: Sequence[frame_pb2.Image],
                limits: ImageLimits = ImageLimits(), blobs: Reader | None = None) -> list[RGBImage]:
    """The frames to inspect: the sequence when there is one, else the single image; each
    (H, W, 3) uint8 RGB at full resolution, all of one size."""
    if sequence:
        if len(sequence) > limits.max_frames:
            raise InvalidInput(f"sequence has {len(sequence)} frames, more than {limits.max_frames}")
        named = [(f"sequence[{i}]", img) for i, img in enumerate(sequence)]
    elif image is not None:
        named = [("image", image)]
    else:
        raise InvalidInput("the request has no image and no sequence")
    frames: list[RGBImage] = []
    for where, img in named:
        frame = decode(image_bytes(img, where, limits, blobs), where, limits)
        if frames and frame.shape != frames[0].shape:
            first_h, first_w = frames[0].shape[:2]
            raise InvalidInput(f"{where} is {frame.shape[1]}x{frame.shape[0]} but sequence[0] is "
                               f"{first_w}x{first_h}; the frames of a sequence must have one size")
        frames.append(frame)
    return frames


def image_bytes(image: frame_pb2.Image, where: str = "image", limits: ImageLimits = ImageLimits(),
                blobs: Reader | None = None) -> bytes:
    """The encoded bytes of `image`, inline or from its claim check."""
    source = image.WhichOneof("source")
    if source == "inline":
        return image.inline
    if source == "blob":
        return fetch_blob(image.blob, where, limits, blobs)
    raise InvalidInput(f"{where} has neither inline bytes nor a blob reference")


def fetch_blob(blob: frame_pb2.BlobRef, where: str = "image", limits: ImageLimits = ImageLimits(),
               blobs: Reader | None = None) -> bytes:
    """Read a claim check from the blob store of its scheme (never from outside its root) and
    verify its size and SHA-256."""
    if blobs is None:
        raise InvalidInput(f"{where}: this service reads no claim checks (no blob store); "
                           "send the image inline")
    uri = urlparse(blob.uri)
    if uri.scheme not in blobs.schemes:
        shown = f"{uri.scheme}://" if uri.scheme else repr(blob.uri[:80])
        raise InvalidInput(f"{where}: blob references {shown} are not supported here; send the image "
                           f"inline or as a {' or '.join(s + '://' for s in blobs.schemes)} URI in this "
                           "service's blob store")
    if blob.size_bytes > limits.max_bytes:
        raise InvalidInput(f"{where}: blob {blob.uri} has {blob.size_bytes} bytes, "
                           f"more than {limits.max_bytes}")
    try:
        data = blobs.get(blob.uri, blob.sha256.lower() or None, blob.size_bytes or None)
    except BlobUnavailable as exc:
        raise StoreUnavailable(f"{where}: {exc}") from exc
    except BlobError as exc:
        raise InvalidInput(f"{where}: {exc}") from exc
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"{where}: blob {blob.uri} has {len(data)} bytes, more than {limits.max_bytes}")
    return data


def header_size(data: bytes, where: str = "image") -> tuple[int, int]:
    """(width, height) as the encoded image's header states them; nothing is decoded."""
    if not data:
        raise InvalidInput(f"{where} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as img:  # lazy: reads the header only
                width, height = img.size
    except PILImage.DecompressionBombError as exc:
        raise InvalidInput(f"{where} is too large: {exc}") from exc
    except UnidentifiedImageError as exc:
        zero = _png_size(data)
        if zero is not None:
            raise InvalidInput(f"{where} has zero size ({zero[0]}x{zero[1]})") from exc
        raise InvalidInput(f"{where} is not an image in a format this service decodes (PNG, JPEG, BMP, "
                           f"TIFF, WebP, ...; got {len(data)} bytes starting {data[:8]!r})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three for bad headers
        raise InvalidInput(f"{where} is not a decodable image ({len(data)} bytes): {exc}") from exc
    return int(width), int(height)


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR when one of them is zero (Pillow refuses to open those)."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (width, height) if width == 0 or height == 0 else None


def check_size(width: int, height: int, where: str = "image", limits: ImageLimits = ImageLimits()) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(f"{where} has zero size ({width}x{height})")
    if width * height > limits.max_pixels:
        raise InvalidInput(f"{where} is {width}x{height} = {width * height / 1e6:.1f} megapixels, more "
                           f"than the limit of {limits.max_pixels / 1e6:g}")
    if min(width, height) <= MIN_SIDE_PX:
        raise InvalidInput(f"{where} is {width}x{height}; both sides must exceed {MIN_SIDE_PX} px")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise InvalidInput(f"{where} is {width}x{height}; the aspect ratio must be at most {MAX_ASPECT}")


def decode(data: bytes, where: str = "image", limits: ImageLimits = ImageLimits()) -> RGBImage:
    """Encoded bytes → (H, W, 3) uint8 RGB, after the header passed `check_size`."""
    width, height = header_size(data, where)
    check_size(width, height, where, limits)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8),
                       cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise InvalidInput(f"{where} has a valid header ({width}x{height}) but its pixels cannot be decoded")
    if bgr.shape[:2] != (height, width):
        raise InvalidInput(f"{where} decodes to {bgr.shape[1]}x{bgr.shape[0]}, not the {width}x{height} "
                           "its header states")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb, dtype=np.uint8)

