"""TensorRT engines: version shim (trt_api), builder, INT8 calibration, manifest/cache key, the ONNX
facts the builder needs (onnx_tools), CLI. The Q/DQ quantiser and the CPU INT8 form are ``adtr_edge.int8``.

Only ``trt_api`` imports tensorrt, and only when called; the rest imports without it.
"""
