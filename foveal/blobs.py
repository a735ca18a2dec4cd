"""Content-addressed storage of encoded images: where frames too large for a Kafka record go
(the claim check of `foveal.frames`), and where the ingest worker keeps full frames.

One small interface, `BlobStore`: `put(data, mime_type)` returns a `BlobRef` (uri, sha256,
size), `get(uri, expected_sha256, expected_size)` returns the bytes after checking them. Keys
are the content's SHA-256 (`ab/abcdef….png`), so the same bytes always land on the same key and
a second put rewrites nothing. The default store is a directory (`FOVEAL_BLOB_DIR`, else
`<home>/blobs`) with atomic writes and `file://` URIs. Other backends (an S3-compatible one, say)
plug in by URI scheme through `STORES`; `store_for(settings, uri)` picks the store that can read
a reference, `store_for(settings)` the one new blobs go to.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from foveal.errors import FovealError
from foveal.settings import Settings

DEFAULT_SCHEME = "file"
EXTENSIONS: dict[str, str] = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/tiff": ".tif",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
}
FALLBACK_EXTENSION = ".bin"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class BlobError(FovealError):
    """A blob could not be stored, found or verified; the message names the URI and the cause."""


@dataclass(frozen=True)
class BlobRef:
    """Where a blob lives and how to verify it once fetched."""

    uri: str
    sha256: str  # lowercase hex of the stored bytes
    size_bytes: int
    mime_type: str


class BlobStore(Protocol):
    """What every backend offers. `put` is idempotent; `get` verifies what it returns."""

    def put(self, data: bytes, mime_type: str) -> BlobRef: ...

    def get(self, uri: str, expected_sha256: str | None = None,
            expected_size: int | None = None) -> bytes: ...


def blob_key(sha256: str, mime_type: str) -> str:
    """The content-addressed key of a blob: `ab/ab…(64 hex).png`.

    >>> blob_key("ab" + "0" * 62, "image/png")
    'ab/ab00000000000000000000000000000000000000000000000000000000000000.png'
    """
    return f"{sha256[:2]}/{sha256}{EXTENSIONS.get(mime_type, FALLBACK_EXTENSION)}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(uri: str, data: bytes, expected_sha256: str | None, expected_size: int | None) -> None:
    """Raise BlobError unless `data` has the expected size and digest (each checked when given)."""
    if expected_size is not None and len(data) != expected_size:
        raise BlobError(f"blob {uri}: size {len(data)} bytes, expected {expected_size}")
    if expected_sha256:
        actual = sha256_hex(data)
        if actual != expected_sha256.lower():
            raise BlobError(f"blob {uri}: sha256 {actual} does not match the expected {expected_sha256}")


class DirectoryStore:
    """Blobs as files under `root`, written atomically (temp file, fsync, rename)."""

    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()

    @classmethod
    def from_settings(cls, settings: Settings) -> DirectoryStore:
        return cls(settings.blob_root)

    def put(self, data: bytes, mime_type: str) -> BlobRef:
        digest = sha256_hex(data)
        path = self.root / blob_key(digest, mime_type)
        ref = BlobRef(uri=path.as_uri(), sha256=digest, size_bytes=len(data), mime_type=mime_type)
        # Same key, same bytes: a file of the right size is this blob (a torn write never gets
        # here, the rename is atomic); one of another size is damage, and is replaced.
        if path.is_file() and path.stat().st_size == len(data):
            return ref
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with temp.open("wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
        except OSError as exc:
            raise BlobError(f"cannot store blob {ref.uri}: {exc.strerror or exc}") from exc
        return ref

    def get(self, uri: str, expected_sha256: str | None = None,
            expected_size: int | None = None) -> bytes:
        path = self._path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"blob {uri} not found") from None
        except OSError as exc:
            raise BlobError(f"cannot read blob {uri}: {exc.strerror or exc}") from exc
        # The file name is the digest: a blob of ours is verified even when the caller knows nothing.
        stem = path.name.split(".", 1)[0]
        implied = stem if _SHA256_HEX.fullmatch(stem) else None
        verify(uri, data, expected_sha256 or implied, expected_size)
        return data

    def _path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme:
            raise BlobError(f"blob {uri}: not a {self.scheme}:// URI")
        if parsed.netloc not in ("", "localhost"):
            raise BlobError(f"blob {uri}: file URIs on another host ({parsed.netloc}) are not readable")
        path = Path(unquote(parsed.path)).resolve()
        # A reference comes from a producer: never let it read outside the store.
        if not path.is_relative_to(self.root):
            raise BlobError(f"blob {uri} is outside the blob store {self.root}")
        return path


# Scheme → how to build the store that reads it. An S3-compatible store would add "s3" here.
STORES: dict[str, Callable[[Settings], BlobStore]] = {
    "file": DirectoryStore.from_settings,
}


def store_for(settings: Settings, uri: str | None = None) -> BlobStore:
    """The store new blobs go to (no `uri`), or the one that reads `uri`, chosen by its scheme."""
    scheme = DEFAULT_SCHEME if uri is None else urlparse(uri).scheme
    factory = STORES.get(scheme)
    if factory is None:
        raise BlobError(f"blob {(uri or '')[:200]}: unsupported scheme {scheme!r}; "
                        f"supported: {', '.join(sorted(STORES))}")
    return factory(settings)


def fetch(settings: Settings, uri: str, expected_sha256: str | None = None,
          expected_size: int | None = None) -> bytes:
    """Read and verify the blob behind a claim check, whatever store holds it."""
    return store_for(settings, uri).get(uri, expected_sha256, expected_size)
