"""model.py of the ``python`` flavour: one adtr-edge graph on ONNX Runtime inside Triton's python backend.

``adtr-edge export-triton --flavour python`` copies this file next to ``model.onnx`` in each member
model's version folder. It runs in the server's Python (the python backend stub), never in the
adtr-edge process, so it needs only numpy and onnxruntime there, and imports nothing of adtr_edge.

Dynamic batching hands ``execute`` several requests at once: they run as one ONNX Runtime call
over their concatenation, and each request gets its own rows back.
"""

from __future__ import annotations

import json
import os

import numpy as np


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils  # provided by the python backend

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads") or 0)
        if threads > 0:
            opts.intra_op_num_threads = threads
        # Entries the graphs need to compute what they mean (a TensorRT-form INT8 graph: Q/DQ unfused).
        for key, value in json.loads(params.get("onnxruntime_session_config") or "{}").items():
            opts.add_session_config_entry(key, value)
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]

    def execute(self, requests):
        pb = self.pb
        parts = {name: [pb.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs}
        sizes = [p.shape[0] for p in parts[self.inputs[0]]]
        feeds = {name: (np.concatenate(p) if len(p) > 1 else p[0]) for name, p in parts.items()}
        try:
            results = self.session.run(self.outputs, feeds)
        except Exception as e:  # a bad request fails its responses, not the server
            error = pb.TritonError(f"onnxruntime: {str(e).splitlines()[0]}")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [pb.Tensor(name, np.ascontiguousarray(out[start:start + n])) for name, out in zip(self.outputs, results)]
            responses.append(pb.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
