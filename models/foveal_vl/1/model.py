"""Triton python backend adapter for the reasoning model: tensors in, one call into
`foveal.serving.model_host`, tensors out. Configuration in ../config.pbtxt."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from foveal.serving.model_host import Control, ModelHost


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        # every input config.pbtxt declares (a name list kept here once lost FRAMES and PROBES)
        self.inputs = [spec["name"] for spec in config["input"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"] / params.get("weights", "weights")
        self.host = ModelHost.load(folder, idle_timeout_s=float(params.get("idle_timeout_s", "120")),
                                   vision=params.get("vision", "torch"), device=params.get("device", "auto"),
                                   threads=int(params.get("threads", "0")),
                                   tower_precision=params.get("tower_precision", "auto"))

    def execute(self, requests):
        batch = []
        for request in requests:
            tensors = {}
            for name in self.inputs:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    tensors[name] = tensor.as_numpy()
            control = Control(correlation_id=int(_scalar(request, "CORRID")),
                              start=bool(_scalar(request, "START")), end=bool(_scalar(request, "END")))
            batch.append((tensors, control))
        responses = []
        for result in self.host.execute(batch):
            if isinstance(result, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(result)))
            else:
                responses.append(pb_utils.InferenceResponse(
                    [pb_utils.Tensor(name, value) for name, value in result.items()]))
        return responses


def _scalar(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
