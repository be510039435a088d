"""TensorRT engines: version shim (trt_api), builder, INT8 calibration, manifest/cache key, CLI.

Only ``trt_api`` imports tensorrt, and only when called; the rest imports without it.
"""
