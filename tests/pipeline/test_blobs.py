"""The directory blob store: content-addressed keys, idempotent atomic puts, verified gets
(the S3 store: test_s3_blobs.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from foveal import blobs
from foveal.blobs import BlobError, DirectoryStore
from foveal.settings import load_settings

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def test_put_then_get_round_trips_under_a_content_addressed_key(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    ref = store.put(PNG, "image/png")
    digest = hashlib.sha256(PNG).hexdigest()
    assert (ref.sha256, ref.size_bytes, ref.mime_type) == (digest, len(PNG), "image/png")
    path = tmp_path / digest[:2] / f"{digest}.png"
    assert ref.uri == path.as_uri() and ref.uri.startswith("file://")
    assert path.read_bytes() == PNG
    assert store.get(ref.uri) == PNG
    assert store.get(ref.uri, expected_sha256=digest, expected_size=len(PNG)) == PNG
    assert store.put(b"other bytes", "image/jpeg").uri.endswith(".jpg")
    assert store.put(b"x", "application/x-unknown").uri.endswith(".bin")


def test_put_with_a_known_digest_stores_the_same_blob_without_hashing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DirectoryStore(tmp_path)
    expected = store.put(PNG, "image/png")
    digest = expected.sha256

    def no_hashing(data: bytes) -> str:
        raise AssertionError("hashed although the digest was given")

    monkeypatch.setattr(blobs, "sha256_hex", no_hashing)
    assert store.put(PNG, "image/png", digest.upper()) == expected  # found where it is
    other = DirectoryStore(tmp_path / "other")
    ref = other.put(PNG, "image/png", digest)  # written where it belongs
    assert ref.uri == (tmp_path / "other" / digest[:2] / f"{digest}.png").as_uri()
    assert (tmp_path / "other" / digest[:2] / f"{digest}.png").read_bytes() == PNG


def test_put_is_idempotent_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    first = store.put(PNG, "image/png")
    path = store._path(first.uri)
    before = path.stat()
    second = store.put(PNG, "image/png")
    after = path.stat()
    assert second == first
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [path.name]


def test_corruption_is_detected_and_a_damaged_file_is_replaced_by_the_next_put(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    ref = store.put(PNG, "image/png")
    path = store._path(ref.uri)
    path.write_bytes(b"\0" * len(PNG))  # same size, other bytes: only the digest tells
    with pytest.raises(BlobError, match=r"sha256 .* does not match"):
        store.get(ref.uri)  # the key names the digest, so even a bare get checks it
    with pytest.raises(BlobError, match="sha256"):
        store.get(ref.uri, expected_sha256=ref.sha256)
    path.write_bytes(PNG[:100])  # truncated
    with pytest.raises(BlobError, match=f"size 100 bytes, expected {len(PNG)}"):
        store.get(ref.uri, expected_size=len(PNG))
    assert store.put(PNG, "image/png") == ref
    assert store.get(ref.uri, ref.sha256, ref.size_bytes) == PNG


def test_missing_and_foreign_references_are_clear_errors(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "blobs")
    ref = store.put(PNG, "image/png")
    store._path(ref.uri).unlink()
    with pytest.raises(BlobError, match="not found"):
        store.get(ref.uri)
    secret = tmp_path / "secret.txt"
    secret.write_text("not a frame")
    with pytest.raises(BlobError, match="outside the blob store"):
        store.get(secret.as_uri())
    with pytest.raises(BlobError, match="outside the blob store"):
        store.get((tmp_path / "blobs" / ".." / "secret.txt").as_uri())
    with pytest.raises(BlobError, match="another host"):
        store.get("file://elsewhere/x.png")


def test_store_for_dispatches_by_scheme_and_rejects_unknown_ones(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert settings.blob_root == (tmp_path / "blobs").resolve()
    store = blobs.store_for(settings)
    assert isinstance(store, DirectoryStore) and store.root == settings.blob_root
    ref = store.put(PNG, "image/png")
    assert blobs.fetch(settings, ref.uri, ref.sha256, ref.size_bytes) == PNG
    for uri in ("http://host/x.png", "no-scheme/x.png"):
        with pytest.raises(BlobError, match=r"unsupported scheme .*supported: file, s3"):
            blobs.store_for(settings, uri)
    with pytest.raises(BlobError, match="no S3 blob store is configured here: set FOVEAL_BLOB_URL"):
        blobs.store_for(settings, "s3://bucket/ab/abc.png")  # tests/pipeline/test_s3_blobs.py: with one


def test_blob_dir_setting_moves_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOVEAL_BLOB_DIR", str(tmp_path / "elsewhere"))
    settings = load_settings(home=tmp_path / "home")
    ref = blobs.store_for(settings).put(PNG, "image/png")
    assert ref.uri.startswith((tmp_path / "elsewhere").resolve().as_uri() + "/")
