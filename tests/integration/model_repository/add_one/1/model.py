"""Test model: Y = X + 1, plus the numpy version the backend stub imported, so a test can tell
that the stub runs inside the project's venv (numpy 1.26) and not the base interpreter."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()  # (B, N)
            y = np.ascontiguousarray(x + 1, dtype=np.float32)
            version = np.array([[np.__version__.encode()]] * x.shape[0], dtype=object)  # (B, 1)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("Y", y), pb_utils.Tensor("NUMPY_VERSION", version)]))
        return responses
