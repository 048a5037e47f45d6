"""Triton Python-backend entry point, copied as ``model.py`` into every recflow model version.

Which stage it runs is a parameter of the model's config.pbtxt (``recflow_stage``); the logic
lives in :mod:`serving.runtime`, importable and testable without Triton.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.runtime import STAGES


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        stage = config["parameters"]["recflow_stage"]["string_value"]
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.stage = STAGES[stage](version_dir)
        self.inputs = [spec["name"] for spec in config["input"]]
        self.outputs = {spec["name"]: spec["data_type"] for spec in config["output"]}

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                inputs = {
                    name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self.inputs
                }
                outputs = self.stage(inputs)
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(outputs[name]))
                    for name in self.outputs
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as error:  # noqa: BLE001 - every failure must reach the caller
                message = f"{type(error).__name__}: {error}"
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses
