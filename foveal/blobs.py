"""Content-addressed storage of encoded images: where frames too large for a Kafka record go
(the claim check of `foveal.frames`), and where the ingest worker keeps full frames.

One small interface, `BlobStore`: `put(data, mime_type)` returns a `BlobRef` (uri, sha256,
size), `get(uri, expected_sha256, expected_size)` returns the bytes after checking them. Keys
are the content's SHA-256 (`ab/abcdef….png`), so the same bytes always land on the same key and
a second put rewrites nothing. The default store is a directory (`FOVEAL_BLOB_DIR`, else
`<home>/blobs`) with atomic writes and `file://` URIs. With `FOVEAL_BLOB_URL=s3://bucket/prefix`
new blobs go to an S3-compatible object store instead (`S3Store`, boto3: AWS S3, MinIO, Ceph,
SeaweedFS; `FOVEAL_S3_ENDPOINT_URL` names a store other than AWS, credentials come from boto3's
usual chain: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, `~/.aws`, an instance role), as
`s3://bucket/prefix/ab/ab….png`. Backends plug in by URI scheme through `STORES`;
`store_for(settings, uri)` picks the store that can read a reference, `store_for(settings)` the
one new blobs go to. Each store reads only inside its own root (directory, or bucket and
prefix): a reference comes from a producer. A store that cannot be reached raises
`BlobUnavailable` (worth a retry); every other failure `BlobError`.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
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


class BlobUnavailable(BlobError):
    """The store could not be reached, or answered with a server-side error: a retry may work."""


@dataclass(frozen=True)
class BlobRef:
    """Where a blob lives and how to verify it once fetched."""

    uri: str
    sha256: str  # lowercase hex of the stored bytes
    size_bytes: int
    mime_type: str


class BlobStore(Protocol):
    """What every backend offers. `put` is idempotent; `get` verifies what it returns."""

    def put(self, data: bytes, mime_type: str, sha256: str | None = None) -> BlobRef:
        """Store `data` (idempotent). `sha256`: its digest when the caller has just computed or
        verified it, which saves hashing MB-sized frames again; otherwise it is computed."""
        ...

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

    def put(self, data: bytes, mime_type: str, sha256: str | None = None) -> BlobRef:
        digest = sha256.lower() if sha256 else sha256_hex(data)
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


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix ('' or ending in '/'), from `s3://bucket[/prefix]`."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """
        >>> S3Location.parse("s3://frames/plant-a/line-3/")
        S3Location(bucket='frames', prefix='plant-a/line-3/')
        >>> S3Location.parse("s3://frames").prefix
        ''
        """
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not _BUCKET.fullmatch(parsed.netloc) or parsed.query or parsed.fragment:
            raise BlobError(f"{url!r} is not an S3 location: expected s3://bucket[/prefix] with a bucket "
                            "name of 3-63 lowercase letters, digits, dots and hyphens")
        prefix = parsed.path.strip("/")
        if ".." in prefix.split("/"):
            raise BlobError(f"{url!r}: a prefix may not contain '..'")
        return cls(parsed.netloc, f"{prefix}/" if prefix else "")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CLIENTS: dict[tuple[str | None, float], Any] = {}  # boto3 clients are slow to make, safe to share
_CLIENTS_LOCK = threading.Lock()
# what an S3 error code means here: gone (not found), refused (never worth a retry), else unavailable
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})
_REFUSED = frozenset({"NoSuchBucket", "AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                      "InvalidBucketName", "AllAccessDisabled", "AccountProblem"})


def s3_client(endpoint_url: str | None, connect_timeout_s: float) -> Any:
    """A shared boto3 S3 client for `endpoint_url` (None: AWS), with bounded timeouts and retries."""
    key = (endpoint_url, connect_timeout_s)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=connect_timeout_s, read_timeout=30,
                            retries={"mode": "standard", "max_attempts": 3},
                            s3={"addressing_style": "path"} if endpoint_url else None)
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            _CLIENTS[key] = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config,
                                                           region_name=region)
        return _CLIENTS[key]


class S3Store:
    """Blobs as objects under one bucket and prefix of an S3-compatible store."""

    scheme = "s3"

    def __init__(self, location: S3Location, client: Any) -> None:
        self.location, self.client = location, client
        self._bucket_seen = False

    def check_bucket(self) -> None:
        """Raise BlobError unless the bucket exists and answers (checked once per store: some
        S3-compatible stores answer a put into a missing bucket with a bare server error)."""
        if self._bucket_seen:
            return
        try:
            self.client.head_bucket(Bucket=self.location.bucket)
        except Exception as exc:
            error = _s3_error(exc, self.location.url, "use")
            if isinstance(error, _Missing):
                raise BlobError(f"the S3 bucket {self.location.bucket!r} of the blob store "
                                f"{self.location.url} does not exist; create it first") from exc
            raise error from exc
        self._bucket_seen = True

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        if not settings.blob_url or urlparse(settings.blob_url).scheme != "s3":
            raise BlobError("no S3 blob store is configured here: set FOVEAL_BLOB_URL=s3://bucket/prefix "
                            "(and FOVEAL_S3_ENDPOINT_URL for a store other than AWS S3)")
        return cls(S3Location.parse(settings.blob_url),
                   s3_client(settings.s3_endpoint_url, settings.connect_timeout_s))

    def put(self, data: bytes, mime_type: str, sha256: str | None = None) -> BlobRef:
        digest = sha256.lower() if sha256 else sha256_hex(data)
        key = self.location.prefix + blob_key(digest, mime_type)
        ref = BlobRef(uri=f"s3://{self.location.bucket}/{key}", sha256=digest, size_bytes=len(data),
                      mime_type=mime_type)
        self.check_bucket()
        # Same key, same bytes: an object of the right size is this blob (S3 writes are atomic).
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=key)
            if int(head.get("ContentLength", -1)) == len(data):
                return ref
        except Exception as exc:
            error = _s3_error(exc, ref.uri, "check")
            if not isinstance(error, _Missing):
                raise error from exc
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=key, Body=data, ContentType=mime_type,
                                   Metadata={"sha256": digest})
        except Exception as exc:
            raise _s3_error(exc, ref.uri, "store") from exc
        return ref

    def get(self, uri: str, expected_sha256: str | None = None,
            expected_size: int | None = None) -> bytes:
        key = self._key(uri)
        try:
            data = bytes(self.client.get_object(Bucket=self.location.bucket, Key=key)["Body"].read())
        except Exception as exc:
            raise _s3_error(exc, uri, "read") from exc
        stem = key.rsplit("/", 1)[-1].split(".", 1)[0]
        verify(uri, data, expected_sha256 or (stem if _SHA256_HEX.fullmatch(stem) else None), expected_size)
        return data

    def _key(self, uri: str) -> str:
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme:
            raise BlobError(f"blob {uri}: not an s3:// URI")
        key = parsed.path.lstrip("/")
        # A reference comes from a producer: never let it read outside the store's bucket and prefix.
        if parsed.netloc != self.location.bucket or not key.startswith(self.location.prefix) \
                or ".." in key.split("/") or key == self.location.prefix:
            raise BlobError(f"blob {uri} is outside the blob store {self.location.url}")
        return key


class _Missing(BlobError):
    """The object is not there (a put goes on to write it)."""


def _s3_error(exc: Exception, uri: str, doing: str) -> BlobError:
    """What a botocore exception means to a caller: not found, refused, or unavailable."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return BlobError(f"cannot {doing} blob {uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY, or configure ~/.aws)")
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{code or status}: {error.get('Message') or exc}"
        if code in _NOT_FOUND:
            return _Missing(f"blob {uri} not found")
        if code == "NoSuchBucket":
            return BlobError(f"cannot {doing} blob {uri}: the bucket does not exist (create it first)")
        retry_codes = ("SlowDown", "RequestTimeout", "Throttling", "ThrottlingException")
        if code in _REFUSED or (400 <= status < 500 and code not in retry_codes):
            return BlobError(f"cannot {doing} blob {uri}: {text}")
        return BlobUnavailable(f"cannot {doing} blob {uri}: the store answered {text}")
    return BlobUnavailable(f"cannot {doing} blob {uri}: the store is unreachable: {exc}")


class Reader:
    """Reads references of several schemes, each through its own store (and that store's root
    guard): the reasoning service's view of the blob stores it may read claim checks from."""

    def __init__(self, stores: dict[str, BlobStore]) -> None:
        self.stores = dict(stores)

    @classmethod
    def of(cls, root: Path | None, blob_url: str | None = None, s3_endpoint_url: str | None = None,
           connect_timeout_s: float = 5.0) -> Reader | None:
        """The directory `root` (file://) and the S3 location `blob_url` (s3://), each if given;
        None when neither is."""
        stores: dict[str, BlobStore] = {}
        if root is not None:
            stores["file"] = DirectoryStore(root)
        if blob_url:
            stores["s3"] = S3Store(S3Location.parse(blob_url), s3_client(s3_endpoint_url, connect_timeout_s))
        return cls(stores) if stores else None

    @property
    def schemes(self) -> list[str]:
        return sorted(self.stores)

    def get(self, uri: str, expected_sha256: str | None = None,
            expected_size: int | None = None) -> bytes:
        scheme = urlparse(uri).scheme
        if scheme not in self.stores:
            raise BlobError(f"blob {uri[:200]}: unsupported scheme {scheme!r}; supported here: "
                            f"{', '.join(self.schemes)}")
        return self.stores[scheme].get(uri, expected_sha256, expected_size)


# Scheme → how to build the store that reads it.
STORES: dict[str, Callable[[Settings], BlobStore]] = {
    "file": DirectoryStore.from_settings,
    "s3": S3Store.from_settings,
}


def store_for(settings: Settings, uri: str | None = None) -> BlobStore:
    """The store new blobs go to (no `uri`: `FOVEAL_BLOB_URL`'s, else the directory), or the one
    that reads `uri`, chosen by its scheme."""
    target = settings.blob_url if uri is None else uri
    scheme = urlparse(target).scheme if target else DEFAULT_SCHEME
    factory = STORES.get(scheme)
    if factory is None:
        raise BlobError(f"blob {(uri or '')[:200]}: unsupported scheme {scheme!r}; "
                        f"supported: {', '.join(sorted(STORES))}")
    return factory(settings)


def fetch(settings: Settings, uri: str, expected_sha256: str | None = None,
          expected_size: int | None = None) -> bytes:
    """Read and verify the blob behind a claim check, whatever store holds it."""
    return store_for(settings, uri).get(uri, expected_sha256, expected_size)
