"""Evidence crops leave the service as PNG: lossless whatever the encoder settings.
Run: `.venv/bin/python -m pytest tests/rpc/test_convert.py -q`."""

from __future__ import annotations

import cv2
import numpy as np

from foveal.rpc.convert import encode_png


def test_evidence_png_decodes_to_the_exact_crop() -> None:
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (448, 336, 3), dtype=np.uint8)  # sensor-like noise
    crop[100:200, 50:250] = (12, 200, 90)  # and a flat patch
    data = encode_png(crop)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(decoded, crop)
