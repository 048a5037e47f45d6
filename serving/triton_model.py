"""Triton Python-backend entry point, copied as ``model.py`` into every recflow model version.

Which stage it runs is a parameter of the model's config.pbtxt (``recflow_stage``); the logic
lives in :mod:`serving.runtime`, importable and testable without Triton.
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from recflow.trust import require_trusted
from serving.runtime import BadRequest, heavy_modules, load_stage


class TritonPythonModel:
    def initialize(self, args):
        started = time.monotonic()
        config = json.loads(args["model_config"])
        stage = config["parameters"]["recflow_stage"]["string_value"]
        version_dir = Path(args["model_repository"]) / args["model_version"]
        # Refused before anything is loaded from it (recflow/trust.py).
        self.stage = load_stage(stage, require_trusted(version_dir))
        # The first request must not be the one that pays for onnxruntime's first run.
        self.stage.warm_up()
        self.inputs = [spec["name"] for spec in config["input"]]
        self.outputs = [spec["name"] for spec in config["output"]]
        # Stages that score rows independently take the dynamic batcher's requests as one
        # batch; stages whose rows share per-request arguments (k) run request by request.
        self.merge = self.stage.merge_requests
        # One line per loaded version in the server log: load time, and the proof that the
        # stub stays light (tests/integration/test_serving.py reads it).
        print(
            f"recflow stub {args['model_name']} version {args['model_version']} initialized in "
            f"{time.monotonic() - started:.2f} s; heavy modules: {heavy_modules()}",
            flush=True,
        )

    def execute(self, requests):
        batches = [self._inputs(request) for request in requests]
        if self.merge and len(batches) > 1:
            try:
                return self._merged(batches)
            except Exception:  # noqa: BLE001 - run each alone so only the bad request fails
                pass
        return [self._respond(inputs) for inputs in batches]

    def _inputs(self, request):
        tensors = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:  # optional inputs may be absent
                tensors[name] = tensor.as_numpy()
        return tensors

    def _merged(self, batches):
        sizes = [len(next(iter(inputs.values()))) for inputs in batches]
        merged = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
        outputs = self.stage(merged)
        bounds = np.cumsum(sizes)[:-1]
        parts = {name: np.split(outputs[name], bounds) for name in self.outputs}
        return [
            self._response({name: parts[name][i] for name in self.outputs})
            for i in range(len(batches))
        ]

    def _respond(self, inputs):
        try:
            return self._response(self.stage(inputs))
        except BadRequest as error:
            return _error(str(error), pb_utils.TritonError.INVALID_ARG)
        except Exception as error:  # noqa: BLE001 - every failure must reach the caller
            return _error(f"{type(error).__name__}: {error}", pb_utils.TritonError.INTERNAL)

    def _response(self, outputs):
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(outputs[name])) for name in self.outputs
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
