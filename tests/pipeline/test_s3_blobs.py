"""The S3-compatible blob store on a real S3 server (SeaweedFS, tests/seaweed.py): the same
contract as the directory store (content-addressed keys under the prefix, idempotent puts,
verified gets, nothing read outside the store), `FOVEAL_BLOB_URL` choosing it, and an
unreachable store told apart from a bad reference (retry against DLQ).
Run: `.venv/bin/python -m pytest -q tests/pipeline/test_s3_blobs.py` (≈ 15 s)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from foveal import blobs
from foveal.blobs import BlobError, BlobUnavailable, Reader, S3Location, S3Store, s3_client
from foveal.errors import ConfigError
from foveal.serving.images import InvalidInput, StoreUnavailable, fetch_blob
from foveal.settings import load_settings
from foveal.stack.process import free_ports
from foveal.v1 import frame_pb2
from tests.seaweed import CREDENTIALS, SeaweedS3

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
BUCKET = "foveal-frames"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in CREDENTIALS.items():
            env.setenv(name, value)
        with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
            server.create_bucket(BUCKET)
            yield server


@pytest.fixture
def store(s3: SeaweedS3) -> S3Store:
    return S3Store(S3Location.parse(f"s3://{BUCKET}/plant-a/line-3"), s3.client())


def test_put_then_get_round_trips_under_the_prefix_and_a_second_put_rewrites_nothing(
        store: S3Store, s3: SeaweedS3) -> None:
    ref = store.put(PNG, "image/png")
    digest = hashlib.sha256(PNG).hexdigest()
    key = f"plant-a/line-3/{digest[:2]}/{digest}.png"
    assert ref == blobs.BlobRef(uri=f"s3://{BUCKET}/{key}", sha256=digest, size_bytes=len(PNG),
                                mime_type="image/png")
    head = s3.client().head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "image/png" and head["Metadata"] == {"sha256": digest}
    assert store.get(ref.uri) == store.get(ref.uri, digest, len(PNG)) == PNG
    assert store.put(PNG, "image/png") == ref
    again = s3.client().head_object(Bucket=BUCKET, Key=key)
    assert again["ETag"] == head["ETag"] and again["LastModified"] == head["LastModified"]  # not rewritten
    assert store.put(b"other bytes", "image/jpeg").uri.endswith(".jpg")


def test_damage_is_detected_and_the_next_put_of_other_size_replaces_it(store: S3Store, s3: SeaweedS3) -> None:
    ref = store.put(PNG, "image/png")
    key = ref.uri.removeprefix(f"s3://{BUCKET}/")
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"\0" * len(PNG))  # same size, other bytes
    with pytest.raises(BlobError, match=r"sha256 .* does not match"):
        store.get(ref.uri)  # the key names the digest, so even a bare get checks it
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=PNG[:100])  # truncated
    with pytest.raises(BlobError, match=f"size 100 bytes, expected {len(PNG)}"):
        store.get(ref.uri, expected_size=len(PNG))
    assert store.put(PNG, "image/png") == ref
    assert store.get(ref.uri, ref.sha256, ref.size_bytes) == PNG


def test_references_outside_the_bucket_and_prefix_and_missing_objects_are_clear_errors(
        store: S3Store, s3: SeaweedS3) -> None:
    ref = store.put(PNG, "image/png")
    digest_key = ref.uri.removeprefix(f"s3://{BUCKET}/plant-a/line-3/")
    s3.client().put_object(Bucket=BUCKET, Key="secret/x.png", Body=b"not a frame")
    for uri in (f"s3://{BUCKET}/secret/x.png", f"s3://other-bucket/plant-a/line-3/{digest_key}",
                f"s3://{BUCKET}/plant-a/line-3/../../secret/x.png", f"s3://{BUCKET}/plant-a/line-3/"):
        with pytest.raises(BlobError, match="outside the blob store"):
            store.get(uri)
    with pytest.raises(BlobError, match="not an s3:// URI"):
        store.get("file:///tmp/x.png")
    with pytest.raises(BlobError, match="not found"):
        store.get(f"s3://{BUCKET}/plant-a/line-3/ab/{'ab' + '0' * 62}.png")


def test_blob_url_sends_new_blobs_to_s3_and_reads_both_schemes(
        s3: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOVEAL_BLOB_URL", f"s3://{BUCKET}/site")
    monkeypatch.setenv("FOVEAL_S3_ENDPOINT_URL", s3.endpoint_url)
    settings = load_settings(home=tmp_path)
    ref = blobs.store_for(settings).put(PNG, "image/png")
    assert ref.uri.startswith(f"s3://{BUCKET}/site/")
    assert blobs.fetch(settings, ref.uri, ref.sha256, ref.size_bytes) == PNG
    older = blobs.DirectoryStore(settings.blob_root).put(b"kept before the move", "image/png")
    assert blobs.fetch(settings, older.uri) == b"kept before the move"  # file:// still readable
    monkeypatch.delenv("FOVEAL_BLOB_URL")
    elsewhere = load_settings(home=tmp_path / "plain")  # no FOVEAL_BLOB_URL there
    assert isinstance(blobs.store_for(elsewhere), blobs.DirectoryStore)
    with pytest.raises(BlobError, match="no S3 blob store is configured"):
        blobs.fetch(elsewhere, ref.uri)


def test_a_missing_bucket_is_refused_with_a_clear_message_not_retried(s3: SeaweedS3) -> None:
    store = S3Store(S3Location.parse("s3://no-such-bucket-here"), s3.client())
    with pytest.raises(BlobError, match=r"bucket 'no-such-bucket-here' of the blob store .* does not exist") \
            as caught:
        store.put(PNG, "image/png")
    assert not isinstance(caught.value, BlobUnavailable)


def test_an_unreachable_store_is_unavailable_to_ingest_and_the_reasoner(
        s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    down = S3Store(S3Location.parse(f"s3://{BUCKET}"), s3_client(closed, 1.0))
    with pytest.raises(BlobUnavailable, match="unreachable"):
        down.put(PNG, "image/png")
    uri = f"s3://{BUCKET}/ab/{'ab' + '0' * 62}.png"
    with pytest.raises(BlobUnavailable):
        down.get(uri)
    ref = frame_pb2.BlobRef(uri=uri, size_bytes=10)
    with pytest.raises(StoreUnavailable):  # the service answers UNAVAILABLE: the worker retries
        fetch_blob(ref, blobs=Reader({"s3": down}))
    with pytest.raises(InvalidInput, match=r"s3:// are not supported here"):  # no S3 store given
        fetch_blob(ref, blobs=Reader({"file": blobs.DirectoryStore(Path("/tmp"))}))


def test_bad_s3_locations_are_refused_before_anything_is_sent() -> None:
    for url in ("s3://", "s3://UPPER/x", "s3://ab", "http://bucket/x", "s3://bucket/a/../b", "s3://b?x=1"):
        with pytest.raises(BlobError, match=r"S3 location|may not contain"):
            S3Location.parse(url)
    with pytest.raises(ConfigError, match="FOVEAL_BLOB_URL"):
        load_settings(blob_url="https://bucket/x")
