"""The Triton part: the `tritonserver` binary and python backend inside the nvidia-pytriton wheel.

Facts this module encodes (measured here; see docs/stack.md):
- the python backend's stub links CUDA's runtime through an `$ORIGIN`-relative path inside the
  wheel, so the backend folder foveal assembles holds symlinks to the wheel's files, not copies;
- the stub embeds `libpython3.X.so`: the running Python's LIBDIR goes first in LD_LIBRARY_PATH;
- the stub's interpreter runs isolated (it ignores PYTHONPATH) and finds its prefix by looking
  up `python3` on PATH, so the venv's `bin/` goes first in PATH: the stub then adopts the venv
  (its numpy 1.26, torch, foveal) instead of the base interpreter's site-packages.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from foveal.errors import StackError
from foveal.stack.part import Health, Launch, Part


class TritonPart(Part):
    name = "triton"
    endpoint_env = "FOVEAL_TRITON_URL"
    stop_timeout_s = 20.0

    @property
    def external(self) -> bool:
        return self.settings.triton_url is not None

    @property
    def address(self) -> str:
        return self.settings.triton_address

    def prepare(self) -> Launch:
        s = self.settings
        repository = s.model_repository_dir
        if not repository.is_dir():
            raise StackError(self.name, f"model repository {repository} does not exist "
                                        "(set FOVEAL_MODEL_REPOSITORY)")
        wheel = _wheel_dir()
        backends = self.workdir / "backends"
        # Explicit control: only folders that are complete Triton models (config.pbtxt) load, so
        # a folder still being assembled (weights before their model.py) is no load error, and
        # the model-control API is on for loading new versions.
        served = sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file())
        _link_python_backend(wheel, backends / "python")
        return Launch(
            cmd=[str(wheel / "bin" / "tritonserver"),
                 f"--model-repository={repository}",
                 f"--backend-directory={backends}",
                 f"--grpc-address={s.bind_host}", f"--grpc-port={s.triton_grpc_port}",
                 f"--http-address={s.bind_host}", f"--http-port={s.triton_http_port}",
                 f"--metrics-address={s.bind_host}", f"--metrics-port={s.triton_metrics_port}",
                 "--allow-metrics=true",
                 "--model-control-mode=explicit", *[f"--load-model={name}" for name in served],
                 # A model that fails to load keeps the server up and not ready, so `status`
                 # can name the model and its error instead of reporting a dead process.
                 "--exit-on-error=false",
                 "--exit-timeout-secs=10"],
            env=_backend_env(wheel),
            ports=[s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port],
        )

    def check(self) -> Health:
        client = triton_grpc.InferenceServerClient(self.address)
        timeout = self.settings.connect_timeout_s
        try:
            if not client.is_server_live(client_timeout=timeout):
                return Health(False, "server not live")
            index = client.get_model_repository_index(as_json=True, client_timeout=timeout)
            ready = client.is_server_ready(client_timeout=timeout)
        except InferenceServerException as exc:
            return Health(False, f"no answer over gRPC at {self.address}: {_short(exc)}")
        finally:
            client.close()
        models = [m for m in index.get("models", []) if m.get("state")]  # no state: never loaded
        broken = [f"{m['name']}: {m.get('state', '?')} {m.get('reason', '')}".strip()
                  for m in models if m.get("state") != "READY"]
        if not ready:
            return Health(False, "not ready; " + ("; ".join(broken) or "models loading"))
        names = ", ".join(f"{m['name']}/{m.get('version', '?')}" for m in models) or "no models"
        return Health(True, f"ready, serving {names}")


def _wheel_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("triton", "the nvidia-pytriton wheel is not installed (run `make venv`)")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def _link_python_backend(wheel: Path, target: Path) -> None:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = wheel / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise StackError("triton", f"the wheel ships no python backend stub for Python {version}")
    sources = [wheel / "backends" / "python" / "libtriton_python.so",
               wheel / "backends" / "python" / "triton_python_backend_utils.py", stub]
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        link = target / source.name
        if link.is_symlink() and link.resolve() == source.resolve():
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(source)


def _backend_env(wheel: Path) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    wheel_libs = wheel.parent.parent / "nvidia_pytriton.libs"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in [libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH", "")] if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _short(exc: InferenceServerException) -> str:
    return (exc.message() or str(exc)).splitlines()[0]
